//! Management commands from SQL functions to the main worker, carried as
//! JSON through the shared-memory command queue
//! ([`shared_mem::command_queue`]). This module owns the message format and
//! the main worker's side (a plain thread that serves the queue and calls
//! the [`Manager`]); the SQL side is in `mgmt_sql`.

use crate::error::ServiceError;
use crate::tenants::{Manager, TimelineRow};
use serde::{Deserialize, Serialize};
use shared_mem::CommandQueue;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    CreateTenant {
        tenant: Option<String>,
    },
    CreateTimeline {
        tenant: String,
        timeline: Option<String>,
        conninfo: String,
        slot: Option<String>,
        #[serde(default)]
        basebackup_tar: Option<String>,
    },
    Branch {
        tenant: String,
        parent: String,
        lsn: Option<String>,
        timeline: Option<String>,
    },
    ListTimelines,
    ListTenants,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Id(String),
    Branch {
        timeline: String,
        lsn: String,
    },
    Timelines(Vec<TimelineRow>),
    Tenants(Vec<String>),
    /// The command failed: the SQLSTATE its SQL function raises, and the message.
    Error {
        sqlstate: String,
        message: String,
    },
}

impl Reply {
    pub fn error(e: ServiceError) -> Reply {
        Reply::Error { sqlstate: e.sqlstate().to_string(), message: e.to_string() }
    }
}

fn parse_id(what: &str, s: &str) -> Result<storage::repo::TimelineId, ServiceError> {
    s.trim().parse().map_err(|_| ServiceError::InvalidArgument(format!("invalid {what} \"{s}\": expected 32 hexadecimal digits")))
}

fn parse_opt_id(what: &str, s: &Option<String>) -> Result<Option<storage::repo::TimelineId>, ServiceError> {
    s.as_deref().map(|s| parse_id(what, s)).transpose()
}

/// Runs one command against the manager.
pub fn execute(manager: &Arc<Manager>, command: Command) -> Reply {
    let result = match command {
        Command::CreateTenant { tenant } => {
            parse_opt_id("tenant id", &tenant).and_then(|id| manager.create_tenant(id)).map(|id| Reply::Id(id.to_string()))
        }
        Command::CreateTimeline { tenant, timeline, conninfo, slot, basebackup_tar } => (|| {
            let tenant = parse_id("tenant id", &tenant)?;
            let timeline = parse_opt_id("timeline id", &timeline)?;
            manager.create_timeline(tenant, timeline, &conninfo, slot, basebackup_tar).map(|id| Reply::Id(id.to_string()))
        })(),
        Command::Branch { tenant, parent, lsn, timeline } => (|| {
            let tenant = parse_id("tenant id", &tenant)?;
            let parent = parse_id("parent timeline id", &parent)?;
            let child = parse_opt_id("timeline id", &timeline)?;
            let lsn = match lsn {
                Some(s) => Some(
                    s.trim()
                        .parse()
                        .map_err(|_| ServiceError::InvalidArgument(format!("invalid LSN \"{s}\": expected the form 16/B374D848")))?,
                ),
                None => None,
            };
            let (id, lsn) = manager.branch(tenant, parent, lsn, child)?;
            Ok(Reply::Branch { timeline: id.to_string(), lsn: lsn.to_string() })
        })(),
        Command::ListTimelines => Ok(Reply::Timelines(manager.list())),
        Command::ListTenants => Ok(Reply::Tenants(manager.tenant_ids().iter().map(|t| t.to_string()).collect())),
    };
    result.unwrap_or_else(Reply::error)
}

/// Serves the command queue until the manager stops (a thread of the main worker).
pub fn serve(queue: &'static CommandQueue, manager: Arc<Manager>) {
    let server = queue.attach_server();
    while !manager.is_stopping() {
        let Some(job) = server.next(Duration::from_millis(250)) else { continue };
        let reply = match serde_json::from_slice::<Command>(job.request()) {
            Ok(command) => execute(&manager, command),
            Err(e) => Reply::error(ServiceError::Internal(format!("malformed management command: {e}"))),
        };
        let mut bytes = serde_json::to_vec(&reply).unwrap_or_default();
        if bytes.len() > shared_mem::command_queue::COMMAND_BUFFER {
            let too_large = ServiceError::Internal("the reply is too large for the command queue".into());
            bytes = serde_json::to_vec(&Reply::error(too_large)).unwrap_or_default();
        }
        job.reply(&bytes);
    }
}
