//! Commands to the main worker, carried as JSON through the shared-memory
//! command queue ([`shared_mem::command_queue`]): management commands from
//! SQL functions (their side is in `mgmt_sql`) and the layers worker's
//! layer-work protocol ([`QueueOwner`], the client the layers worker uses;
//! see [`crate::layers`]). This module owns the message format, the main
//! worker's side (a plain thread that serves the queue and calls the
//! [`Manager`]) and that client.

use crate::error::ServiceError;
use crate::inspect::{self, LayerRow, LsnForTimeRow, RelationRow};
use crate::layers::LayerOwner;
use crate::tenants::{DetachStep, DropStep, Manager, ReceiverRow, TimelineRow};
use crate::timeline_handle::{TenantId, TimelineState};
use serde::{Deserialize, Serialize};
use shared_mem::CommandQueue;
use std::sync::Arc;
use std::time::Duration;
use storage::key::RelTag;
use storage::lsn::Lsn;
use storage::repo::{GcChange, LayerName, LayerSwap, LayerWorkGrant, RepoError, TimelineId};
use tokio_util::sync::CancellationToken;

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
    /// `pageserver.stat_wal_receiver`.
    WalReceivers,
    /// `pageserver.stat_page_service`.
    PageServiceStats,
    /// `pageserver.timeline_sizes`.
    TimelineSizes,
    /// `pageserver.tenant_config`: `changes` is a JSON object.
    TenantConfig {
        tenant: String,
        changes: serde_json::Value,
    },
    /// Every tenant's settings in force.
    TenantSettings,
    /// Load a tenant whose directory the backup worker has just downloaded.
    AttachTenant {
        tenant: String,
    },
    /// One step of a detach (see `tenants::detach`): begins it, or reports
    /// what it waits for, or finishes it.
    DetachTenant {
        tenant: String,
    },
    /// One step of dropping a timeline (see `tenants::dropping`).
    DropTimeline {
        tenant: String,
        timeline: String,
    },
    /// Abandon a drop under way: the timeline streams again.
    ResumeTimeline {
        tenant: String,
        timeline: String,
    },
    /// Whether the backup worker has yet to delete a dropped timeline's objects.
    RemovalPending {
        tenant: String,
        timeline: String,
    },
    /// Drops a tenant that has no timelines left.
    DropTenant {
        tenant: String,
    },
    /// Abandon a detach under way: the tenant streams and takes changes again.
    ResumeTenant {
        tenant: String,
    },
    /// Inspection (`crate::inspect`): a page, a fork's size, the relations.
    /// `lsn` None reads at the last ingested LSN.
    GetPage {
        relation: RelationArg,
        blkno: u32,
    },
    RelSize {
        relation: RelationArg,
    },
    ListRelations {
        tenant: String,
        timeline: String,
        lsn: Option<String>,
        /// Continue after this (spc, db, rel, fork) (the previous page's last).
        after: Option<(u32, u32, u32, u8)>,
    },
    /// `pageserver.lsn_for_time`: `time` is a `TimestampTz`.
    LsnForTime {
        tenant: String,
        timeline: String,
        time: i64,
    },
    /// The timeline's layer files, after the file name `after`.
    ListLayers {
        tenant: String,
        timeline: String,
        after: Option<String>,
    },
    /// One step of `pageserver.checkpoint`: freeze what is in memory so the
    /// flush thread writes it, until `disk_consistent_lsn` reaches `until`
    /// (None on the first step: the last ingested LSN, returned as the target).
    Checkpoint {
        tenant: String,
        timeline: String,
        until: Option<String>,
    },
    /// The layers worker starts a pass on a timeline.
    BeginLayerWork {
        tenant: String,
        timeline: String,
    },
    /// The layers worker asks for a swap it planned.
    SwapLayers {
        tenant: String,
        timeline: String,
        swap: SwapWire,
    },
    /// The layers worker finished a pass on a timeline (for `pageserver.timelines()`).
    FinishLayerWork {
        tenant: String,
        timeline: String,
        summary: String,
    },
}

/// A relation fork of a timeline at an LSN, as the inspection functions name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationArg {
    pub tenant: String,
    pub timeline: String,
    pub spc_node: u32,
    pub db_node: u32,
    pub rel_node: u32,
    pub fork: String,
    pub lsn: Option<String>,
}

/// [`LayerWorkGrant`] on the wire (LSNs as integers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantWire {
    pub generation: u64,
    pub seq_start: u64,
    pub seq_end: u64,
    pub last_record_lsn: u64,
    pub disk_consistent_lsn: u64,
    pub gc_cutoff: u64,
    pub branch_points: Vec<u64>,
}

impl From<&LayerWorkGrant> for GrantWire {
    fn from(g: &LayerWorkGrant) -> GrantWire {
        GrantWire {
            generation: g.generation,
            seq_start: g.seqs.start,
            seq_end: g.seqs.end,
            last_record_lsn: g.last_record_lsn.0,
            disk_consistent_lsn: g.disk_consistent_lsn.0,
            gc_cutoff: g.gc_cutoff.0,
            branch_points: g.branch_points.iter().map(|l| l.0).collect(),
        }
    }
}

impl From<GrantWire> for LayerWorkGrant {
    fn from(g: GrantWire) -> LayerWorkGrant {
        LayerWorkGrant {
            generation: g.generation,
            seqs: g.seq_start..g.seq_end,
            last_record_lsn: Lsn(g.last_record_lsn),
            disk_consistent_lsn: Lsn(g.disk_consistent_lsn),
            gc_cutoff: Lsn(g.gc_cutoff),
            branch_points: g.branch_points.into_iter().map(Lsn).collect(),
        }
    }
}

/// [`LayerSwap`] on the wire: layers by file name, GC as (cutoff, branch points).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapWire {
    pub generation: u64,
    pub remove: Vec<String>,
    pub add: Vec<(String, u64)>,
    pub gc: Option<(u64, Vec<u64>)>,
}

impl From<&LayerSwap> for SwapWire {
    fn from(s: &LayerSwap) -> SwapWire {
        SwapWire {
            generation: s.generation,
            remove: s.remove.iter().map(|n| n.file_name()).collect(),
            add: s.add.iter().map(|(n, size)| (n.file_name(), *size)).collect(),
            gc: s.gc.as_ref().map(|gc| (gc.cutoff.0, gc.branch_points.iter().map(|l| l.0).collect())),
        }
    }
}

impl TryFrom<SwapWire> for LayerSwap {
    type Error = ServiceError;
    fn try_from(s: SwapWire) -> Result<LayerSwap, ServiceError> {
        let name = |n: &str| LayerName::parse(n).ok_or_else(|| ServiceError::InvalidArgument(format!("\"{n}\" is not a layer file name")));
        Ok(LayerSwap {
            generation: s.generation,
            remove: s.remove.iter().map(|n| name(n)).collect::<Result<_, _>>()?,
            add: s.add.iter().map(|(n, size)| Ok((name(n)?, *size))).collect::<Result<_, ServiceError>>()?,
            gc: s.gc.map(|(cutoff, points)| GcChange { cutoff: Lsn(cutoff), branch_points: points.into_iter().map(Lsn).collect() }),
        })
    }
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
    WalReceivers(Vec<ReceiverRow>),
    PageServiceStats(Vec<crate::page_service::stats::StatRow>),
    Sizes(Vec<inspect::SizeRow>),
    Settings(Vec<(String, crate::tenant_settings::SettingRow)>),
    Tenants(Vec<String>),
    /// The tenant is loaded; its timelines, and how many stream from a primary.
    Attached {
        timelines: usize,
        streaming: usize,
    },
    Detach(DetachStep),
    Drop(DropStep),
    Pending(bool),
    /// A page and the LSN it was read at.
    Page {
        page: Vec<u8>,
        lsn: String,
    },
    /// A count (blocks) and the LSN it holds at.
    Count {
        n: u64,
        lsn: String,
    },
    /// A page of `pageserver.layers`.
    Layers(Vec<LayerRow>),
    LsnForTime(LsnForTimeRow),
    /// How far a checkpoint is: its target, `disk_consistent_lsn`, and the
    /// timeline's last error (a flush that fails).
    Checkpoint {
        target: String,
        disk_consistent_lsn: String,
        error: Option<String>,
    },
    /// A page of `list_relations` and the LSN it was read at.
    Relations {
        rows: Vec<RelationRow>,
        lsn: String,
    },
    /// Whether a detach was under way (and is now abandoned).
    Resumed(bool),
    Grant(GrantWire),
    /// The swap is in the layer map and the index; the timeline's new generation.
    Swapped {
        generation: u64,
    },
    /// The swap no longer fits (see `storage::repo::layer_work`).
    Refused {
        reason: String,
    },
    Done,
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

/// Unix milliseconds as a `TimestampTz`.
fn unix_ms_to_timestamptz(ms: u64) -> i64 {
    storage::commit_time::from_system_time(std::time::UNIX_EPOCH + Duration::from_millis(ms))
}

/// A tenant or timeline id from a command.
fn parse_id<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, ServiceError> {
    s.trim().parse().map_err(|_| ServiceError::InvalidArgument(format!("invalid {what} \"{s}\": expected 32 hexadecimal digits")))
}

fn parse_opt_id<T: std::str::FromStr>(what: &str, s: &Option<String>) -> Result<Option<T>, ServiceError> {
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
        Command::WalReceivers => Ok(Reply::WalReceivers(manager.wal_receivers())),
        Command::PageServiceStats => Ok(Reply::PageServiceStats(manager.page_service_stats.rows())),
        Command::TenantConfig { tenant, changes } => parse_id("tenant id", &tenant).and_then(|id| {
            let rows = manager.tenant_config(id, &changes)?;
            Ok(Reply::Settings(rows.into_iter().map(|r| (id.to_string(), r)).collect()))
        }),
        Command::TenantSettings => manager.tenant_settings().map(Reply::Settings),
        Command::TimelineSizes => manager
            .all_timelines_by_tenant()
            .iter()
            .filter(|(_, handle)| *handle.status.state.lock() != TimelineState::Importing)
            .map(|(tenant, handle)| inspect::sizes(&tenant.to_string(), &handle.timeline))
            .collect::<Result<Vec<_>, _>>()
            .map(Reply::Sizes),
        Command::ListTenants => Ok(Reply::Tenants(manager.tenant_ids().iter().map(|t| t.to_string()).collect())),
        Command::AttachTenant { tenant } => parse_id("tenant id", &tenant)
            .and_then(|id| manager.attach_tenant(id))
            .map(|(timelines, streaming)| Reply::Attached { timelines, streaming }),
        Command::DetachTenant { tenant } => parse_id("tenant id", &tenant).and_then(|id| manager.detach_step(id)).map(Reply::Detach),
        Command::DropTimeline { tenant, timeline } => (|| {
            let (tenant, timeline) = (parse_id("tenant id", &tenant)?, parse_id("timeline id", &timeline)?);
            manager.drop_timeline_step(tenant, timeline).map(Reply::Drop)
        })(),
        Command::ResumeTimeline { tenant, timeline } => {
            (|| Ok(Reply::Resumed(manager.resume_timeline(parse_id("tenant id", &tenant)?, parse_id("timeline id", &timeline)?)?)))()
        }
        Command::RemovalPending { tenant, timeline } => {
            (|| Ok(Reply::Pending(manager.removal_pending(parse_id("tenant id", &tenant)?, parse_id("timeline id", &timeline)?))))()
        }
        Command::DropTenant { tenant } => parse_id("tenant id", &tenant).and_then(|id| manager.drop_tenant(id)).map(|()| Reply::Done),
        Command::ResumeTenant { tenant } => parse_id("tenant id", &tenant).and_then(|id| manager.resume_tenant(id)).map(Reply::Resumed),
        Command::GetPage { relation, blkno } => (|| {
            let (timeline, rel, lsn) = resolve_relation(manager, &relation)?;
            Ok(Reply::Page { page: inspect::get_page(&timeline, rel, blkno, lsn)?, lsn: lsn.to_string() })
        })(),
        Command::RelSize { relation } => (|| {
            let (timeline, rel, lsn) = resolve_relation(manager, &relation)?;
            Ok(Reply::Count { n: u64::from(inspect::rel_size(&timeline, rel, lsn)?), lsn: lsn.to_string() })
        })(),
        Command::ListRelations { tenant, timeline, lsn, after } => (|| {
            let handle = manager.timeline(parse_id("tenant id", &tenant)?, parse_id("timeline id", &timeline)?)?;
            let lsn = inspect::read_lsn(&handle.timeline, lsn.as_deref())?;
            let after = after.map(|(spc, db, rel, fork)| RelTag::new(spc, db, rel, fork));
            Ok(Reply::Relations { rows: inspect::list_relations(&handle.timeline, lsn, after)?, lsn: lsn.to_string() })
        })(),
        Command::LsnForTime { tenant, timeline, time } => (|| {
            let handle = manager.timeline(parse_id("tenant id", &tenant)?, parse_id("timeline id", &timeline)?)?;
            // A streaming timeline's history ends where its primary's WAL
            // was when ingest last caught up with it.
            let caught_up = handle.source.lock().is_some().then(|| {
                let ingested = handle.timeline.last_record_lsn().0;
                handle.status.receiver.caught_up_unix_ms(ingested).map_or(i64::MIN, unix_ms_to_timestamptz)
            });
            Ok(Reply::LsnForTime(inspect::lsn_for_time(&handle.timeline, time, caught_up)?))
        })(),
        Command::ListLayers { tenant, timeline, after } => (|| {
            let (tenant, timeline) = (parse_id("tenant id", &tenant)?, parse_id("timeline id", &timeline)?);
            let handle = manager.timeline(tenant, timeline)?;
            let remote = manager
                .host
                .remote
                .filter(|table| table.enabled())
                .map(|_| crate::backup::remote_layers(&manager.backup_state_dir(), tenant, timeline).unwrap_or_default());
            Ok(Reply::Layers(inspect::list_layers(&handle.timeline, after.as_deref(), remote.as_ref())))
        })(),
        Command::Checkpoint { tenant, timeline, until } => (|| {
            let handle = manager.timeline(parse_id("tenant id", &tenant)?, parse_id("timeline id", &timeline)?)?;
            let tl = &handle.timeline;
            let target = match until {
                Some(text) => text.parse().map_err(|_| ServiceError::InvalidArgument(format!("invalid LSN \"{text}\"")))?,
                None => tl.last_record_lsn(),
            };
            let disk = tl.disk_consistent_lsn();
            if disk < target && tl.frozen_layer_count() == 0 {
                tl.writer().freeze().map_err(|e| ServiceError::from(e).context(format!("timeline {timeline}")))?;
            }
            let error = handle.status.error.lock().clone();
            Ok(Reply::Checkpoint { target: target.to_string(), disk_consistent_lsn: disk.to_string(), error })
        })(),
        Command::BeginLayerWork { tenant, timeline } => (|| {
            let (tenant, timeline) = (parse_id("tenant id", &tenant)?, parse_id("timeline id", &timeline)?);
            Ok(Reply::Grant(GrantWire::from(&manager.begin_layer_work(tenant, timeline)?)))
        })(),
        Command::SwapLayers { tenant, timeline, swap } => (|| {
            let (tenant, timeline) = (parse_id("tenant id", &tenant)?, parse_id("timeline id", &timeline)?);
            Ok(match manager.swap_layers(tenant, timeline, &LayerSwap::try_from(swap)?) {
                Ok(generation) => Reply::Swapped { generation },
                Err(RepoError::SwapRefused(reason)) => Reply::Refused { reason },
                Err(e) => return Err(e.into()),
            })
        })(),
        Command::FinishLayerWork { tenant, timeline, summary } => (|| {
            let (tenant, timeline) = (parse_id("tenant id", &tenant)?, parse_id("timeline id", &timeline)?);
            manager.finish_layer_work(tenant, timeline, summary)?;
            Ok(Reply::Done)
        })(),
    };
    result.unwrap_or_else(Reply::error)
}

/// The timeline, fork and LSN an inspection command names.
fn resolve_relation(manager: &Manager, r: &RelationArg) -> Result<(Arc<storage::repo::Timeline>, RelTag, Lsn), ServiceError> {
    let handle = manager.timeline(parse_id("tenant id", &r.tenant)?, parse_id("timeline id", &r.timeline)?)?;
    let fork = inspect::parse_fork(&r.fork)?;
    let lsn = inspect::read_lsn(&handle.timeline, r.lsn.as_deref())?;
    Ok((handle.timeline.clone(), RelTag::new(r.spc_node, r.db_node, r.rel_node, fork), lsn))
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

/// How long the layers worker waits for the main worker to answer.
const OWNER_TIMEOUT: Duration = Duration::from_secs(60);

/// The layers worker's side of the layer-work protocol: commands through
/// the shared-memory queue to the main worker, which owns the timelines.
pub struct QueueOwner {
    queue: &'static CommandQueue,
    cancel: CancellationToken,
}

impl QueueOwner {
    /// A call stops waiting once `cancel` is cancelled.
    pub fn new(queue: &'static CommandQueue, cancel: CancellationToken) -> QueueOwner {
        QueueOwner { queue, cancel }
    }

    fn call(&self, command: &Command) -> Result<Reply, ServiceError> {
        let request = serde_json::to_vec(command).map_err(|e| ServiceError::Internal(format!("cannot encode a command: {e}")))?;
        let reply = self
            .queue
            .call(&request, OWNER_TIMEOUT, &mut || self.cancel.is_cancelled())
            .map_err(|e| ServiceError::Connection(format!("the main worker did not answer: {e}")))?;
        let reply: Reply =
            serde_json::from_slice(&reply).map_err(|e| ServiceError::Internal(format!("malformed reply from the main worker: {e}")))?;
        match reply {
            Reply::Error { sqlstate, message } => Err(ServiceError::from_sqlstate(&sqlstate, message)),
            reply => Ok(reply),
        }
    }
}

fn unexpected(reply: Reply) -> ServiceError {
    ServiceError::Internal(format!("unexpected reply from the main worker: {reply:?}"))
}

impl LayerOwner for QueueOwner {
    fn timelines(&self) -> Result<Vec<(TenantId, TimelineId)>, ServiceError> {
        match self.call(&Command::ListTimelines)? {
            Reply::Timelines(rows) => Ok(rows
                .into_iter()
                .filter(|r| matches!(r.state, TimelineState::Active | TimelineState::Branch))
                .filter_map(|r| Some((r.tenant.parse().ok()?, r.timeline.parse().ok()?)))
                .collect()),
            other => Err(unexpected(other)),
        }
    }

    fn begin(&self, tenant: TenantId, timeline: TimelineId) -> Result<LayerWorkGrant, ServiceError> {
        match self.call(&Command::BeginLayerWork { tenant: tenant.to_string(), timeline: timeline.to_string() })? {
            Reply::Grant(grant) => Ok(grant.into()),
            other => Err(unexpected(other)),
        }
    }

    fn swap(&self, tenant: TenantId, timeline: TimelineId, swap: &LayerSwap) -> Result<u64, RepoError> {
        let command = Command::SwapLayers { tenant: tenant.to_string(), timeline: timeline.to_string(), swap: SwapWire::from(swap) };
        match self.call(&command) {
            Ok(Reply::Swapped { generation }) => Ok(generation),
            Ok(Reply::Refused { reason }) => Err(RepoError::SwapRefused(reason)),
            Ok(other) => Err(RepoError::Owner(unexpected(other).to_string())),
            Err(e) => Err(RepoError::Owner(e.to_string())),
        }
    }

    fn finish(&self, tenant: TenantId, timeline: TimelineId, summary: &str) -> Result<(), ServiceError> {
        let command = Command::FinishLayerWork { tenant: tenant.to_string(), timeline: timeline.to_string(), summary: summary.to_string() };
        match self.call(&command)? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::key::{Key, KeyRange};
    use storage::repo::{LayerKind, LsnRange};

    #[test]
    fn grants_and_swaps_survive_the_wire() {
        let grant = LayerWorkGrant {
            generation: 77,
            seqs: 10..20,
            last_record_lsn: Lsn(0x500),
            disk_consistent_lsn: Lsn(0x400),
            gc_cutoff: Lsn(0x100),
            branch_points: vec![Lsn(0x200), Lsn(0x300)],
        };
        let json = serde_json::to_string(&Reply::Grant(GrantWire::from(&grant))).unwrap();
        let Reply::Grant(back) = serde_json::from_str(&json).unwrap() else { panic!("not a grant: {json}") };
        assert_eq!(LayerWorkGrant::from(back), grant);

        let name = |seq| LayerName {
            kind: LayerKind::Delta,
            level: 1,
            key_range: KeyRange::new(Key::MIN, Key::MAX),
            lsn_range: LsnRange { start: Lsn(1), end: Lsn(0x400) },
            seq,
        };
        let swap = LayerSwap {
            generation: 77,
            remove: vec![name(1), name(2)],
            add: vec![(name(11), 4096)],
            gc: Some(GcChange { cutoff: Lsn(0x100), branch_points: vec![Lsn(0x200)] }),
        };
        let command = Command::SwapLayers { tenant: "t".into(), timeline: "l".into(), swap: SwapWire::from(&swap) };
        let json = serde_json::to_string(&command).unwrap();
        let Command::SwapLayers { swap: back, .. } = serde_json::from_str(&json).unwrap() else { panic!("not a swap: {json}") };
        assert_eq!(LayerSwap::try_from(back.clone()).unwrap(), swap);
        let bad = SwapWire { remove: vec!["index".into()], ..back };
        assert!(matches!(LayerSwap::try_from(bad), Err(ServiceError::InvalidArgument(_))));
    }
}
