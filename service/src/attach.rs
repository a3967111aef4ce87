//! Attaching a tenant from object storage, the backup worker's half: its
//! command queue (`SharedState::backup_commands`; SQL functions are the
//! callers) and [`download_tenant`], which rebuilds a tenant directory from
//! the bucket alone. The main worker then loads the directory like one it
//! found at start (`Manager::attach_tenant`) and streams on from each
//! timeline's `disk_consistent_lsn`, which is the remote index's, through
//! the slot the index names.
//!
//! A download goes to `<data_dir>/attaching/<tenant>/` (timelines, their
//! layer files checked by size and CRC32C, the local index written from the
//! remote one, the WAL sources), is fsynced, and is renamed to
//! `<data_dir>/tenants/<tenant>` only when complete: a crash leaves either
//! nothing under `tenants/` or the whole tenant, and the staging directory
//! is removed by the next attach.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use remote::layout::{self, Generation};
use remote::{RemoteError, RemoteIndex, RemoteStorage, Transferred};
use serde::{Deserialize, Serialize};
use shared_mem::CommandQueue;
use storage::repo::index::IndexFile;
use storage::repo::{CrashPoints, LayerName, TimelineId};
use tokio_util::sync::CancellationToken;

use crate::error::ServiceError;
use crate::timeline_handle::{SourceMeta, SourceState, TenantId};

/// Layer downloads in flight at once.
pub const DOWNLOAD_CONCURRENCY: usize = 4;

/// A request to the backup worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum BackupCommand {
    /// Rebuild the tenant's directory from the bucket. `conninfo`, if
    /// given, replaces the connection string the index holds (which has no
    /// password) for every timeline with a WAL source.
    DownloadTenant { tenant: String, conninfo: Option<String> },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupReply {
    Downloaded(DownloadReport),
    Error { sqlstate: String, message: String },
}

/// What a download brought.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadReport {
    pub timelines: usize,
    pub layers: usize,
    pub bytes: u64,
}

impl From<RemoteError> for ServiceError {
    fn from(e: RemoteError) -> ServiceError {
        match e {
            RemoteError::BadConfig { .. } => ServiceError::InvalidArgument(e.to_string()),
            RemoteError::NotFound { .. } => ServiceError::NotFound(e.to_string()),
            RemoteError::Store { .. } => ServiceError::Connection(e.to_string()),
            RemoteError::Corrupt { .. } | RemoteError::BadIndex { .. } => ServiceError::Corrupt(e.to_string()),
            RemoteError::Local { .. } => ServiceError::Io(e.to_string()),
        }
    }
}

/// Serves the backup worker's command queue until `cancel` (a thread of
/// the backup worker; downloads run on `runtime`).
pub fn serve(
    queue: &'static CommandQueue,
    runtime: tokio::runtime::Handle,
    storage: RemoteStorage,
    data_dir: PathBuf,
    activity: &(dyn Fn(&str) + Sync),
    cancel: CancellationToken,
) {
    let server = queue.attach_server();
    while !cancel.is_cancelled() {
        let Some(job) = server.next(Duration::from_millis(250)) else { continue };
        let reply = match serde_json::from_slice::<BackupCommand>(job.request()) {
            Ok(BackupCommand::DownloadTenant { tenant, conninfo }) => {
                let result = tenant
                    .trim()
                    .parse::<TenantId>()
                    .map_err(ServiceError::InvalidArgument)
                    .and_then(|id| runtime.block_on(download_tenant(&storage, &data_dir, id, conninfo.as_deref(), activity)));
                match result {
                    Ok(report) => BackupReply::Downloaded(report),
                    Err(e) => BackupReply::Error { sqlstate: e.sqlstate().to_string(), message: e.to_string() },
                }
            }
            Err(e) => BackupReply::Error {
                sqlstate: ServiceError::Internal(String::new()).sqlstate().to_string(),
                message: format!("malformed backup worker command: {e}"),
            },
        };
        job.reply(&serde_json::to_vec(&reply).unwrap_or_default());
    }
}

/// Rebuilds `<data_dir>/tenants/<tenant>` from the bucket (see the module
/// documentation). Fails if the tenant is on this host already or the
/// bucket has no timeline of it.
pub async fn download_tenant(
    storage: &RemoteStorage,
    data_dir: &Path,
    tenant: TenantId,
    conninfo: Option<&str>,
    activity: &(dyn Fn(&str) + Sync),
) -> Result<DownloadReport, ServiceError> {
    let target = data_dir.join("tenants").join(tenant.to_string());
    if target.exists() {
        return Err(ServiceError::AlreadyExists(format!("tenant {tenant} is on this host already ({})", target.display())));
    }
    let io = |what: String| move |e: std::io::Error| ServiceError::Io(format!("{what}: {e}"));
    let staging = data_dir.join("attaching").join(tenant.to_string());
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(format!("removing the unfinished attach {}", staging.display())))?;
    }
    let timelines_dir = layout::tenant_prefix(tenant).join("timelines");
    let mut timelines = Vec::new();
    for prefix in storage.list_dirs(&timelines_dir).await? {
        let name = prefix.filename().unwrap_or_default().to_string();
        match name.parse::<TimelineId>() {
            Ok(id) => timelines.push(id),
            Err(_) => tracing::warn!("attach of tenant {tenant}: ignoring {prefix} in the bucket"),
        }
    }
    if timelines.is_empty() {
        return Err(ServiceError::NotFound(format!("tenant {tenant} has no timeline in {}", storage.description())));
    }
    let mut indexes = Vec::new();
    for &timeline in &timelines {
        let path = layout::index_path(tenant, timeline, Generation::FIRST);
        let bytes = storage.get_bytes(&path).await.map_err(|e| ServiceError::from(e).context(format!("timeline {timeline}")))?;
        let index = RemoteIndex::from_json(&bytes, path.as_ref())?;
        if index.tenant() != tenant || index.timeline() != timeline {
            return Err(ServiceError::Corrupt(format!("{path} describes tenant {} timeline {}", index.tenant(), index.timeline())));
        }
        indexes.push(index);
    }
    let total_layers: usize = indexes.iter().map(|i| i.layers.len()).sum();
    let total_bytes: u64 = indexes.iter().flat_map(|i| i.layers.values()).map(|l| l.size).sum();
    let mut report = DownloadReport { timelines: indexes.len(), ..DownloadReport::default() };

    std::fs::create_dir_all(staging.join("sources")).map_err(io(format!("creating {}", staging.display())))?;
    for index in &indexes {
        let timeline = index.timeline();
        let dir = staging.join("timelines").join(timeline.to_string());
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let mut layers = Vec::new();
        for (name, layer) in &index.layers {
            let parsed =
                LayerName::parse(name).ok_or_else(|| ServiceError::Corrupt(format!("the index of timeline {timeline} names {name:?}")))?;
            layers.push((parsed, *layer));
        }
        let downloads = futures::stream::iter(layers.iter().map(|(name, layer)| {
            let remote_path = layout::layer_path(tenant, timeline, name, layer.generation);
            let local_path = dir.join(name.file_name());
            let expected = Transferred { size: layer.size, crc32c: layer.crc32c };
            async move { storage.download_file(&remote_path, &local_path, Some(expected)).await }
        }))
        .buffer_unordered(DOWNLOAD_CONCURRENCY);
        let mut downloads = std::pin::pin!(downloads);
        while let Some(result) = downloads.next().await {
            let got = result.map_err(|e| ServiceError::from(e).context(format!("timeline {timeline}")))?;
            report.layers += 1;
            report.bytes += got.size;
            activity(&format!(
                "attaching tenant {tenant}: {}/{total_layers} layer files, {} of {} MiB",
                report.layers,
                report.bytes >> 20,
                total_bytes >> 20
            ));
        }
        let local = IndexFile {
            timeline_id: timeline,
            ancestor: index.ancestor.as_ref().map(|a| (TimelineId(a.timeline_id), a.lsn)),
            disk_consistent_lsn: index.disk_consistent_lsn,
            gc_cutoff: index.gc_cutoff,
            next_layer_seq: index.next_layer_seq,
            layers: layers.iter().map(|(name, layer)| (*name, layer.size)).collect(),
            lsn_history: index.lsn_history.iter().map(|s| (s.unix_secs, s.lsn)).collect(),
        };
        local.write(&dir, true, &CrashPoints::default()).map_err(|e| ServiceError::Io(format!("timeline {timeline}: {e}")))?;
        if let Some(source) = &index.source {
            let meta = SourceMeta {
                conninfo: conninfo.map_or_else(|| source.conninfo.clone(), str::to_string),
                slot: source.slot.clone(),
                system_id: source.system_id,
                pg_timeline: source.pg_timeline,
                start_lsn: 0,
                basebackup_tar: None,
                state: SourceState::Active,
            };
            let path = staging.join("sources").join(format!("{timeline}.json"));
            let text = serde_json::to_vec_pretty(&meta).expect("a source serializes");
            write_durably(&path, &text).map_err(io(format!("writing {}", path.display())))?;
        }
        sync_dir(&dir).map_err(io(format!("syncing {}", dir.display())))?;
    }
    for dir in [staging.join("sources"), staging.join("timelines"), staging.clone()] {
        sync_dir(&dir).map_err(io(format!("syncing {}", dir.display())))?;
    }
    let tenants = data_dir.join("tenants");
    std::fs::create_dir_all(&tenants).map_err(io(format!("creating {}", tenants.display())))?;
    std::fs::rename(&staging, &target).map_err(io(format!("moving {} to {}", staging.display(), target.display())))?;
    sync_dir(&tenants).map_err(io(format!("syncing {}", tenants.display())))?;
    activity(&format!(
        "attached tenant {tenant}: {} timelines, {} layer files, {} MiB",
        report.timelines,
        report.layers,
        report.bytes >> 20
    ));
    Ok(report)
}

fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The SQL side: asks the backup worker to download a tenant.
pub fn call_download(
    queue: &'static CommandQueue,
    tenant: &str,
    conninfo: Option<&str>,
    timeout: Duration,
    is_cancelled: &mut dyn FnMut() -> bool,
) -> Result<DownloadReport, (String, String)> {
    let command = BackupCommand::DownloadTenant { tenant: tenant.to_string(), conninfo: conninfo.map(str::to_string) };
    let request = serde_json::to_vec(&command).expect("a command serializes");
    let internal = ServiceError::Internal(String::new()).sqlstate().to_string();
    let unavailable = ServiceError::Unavailable(String::new()).sqlstate().to_string();
    let bytes = queue.call(&request, timeout, is_cancelled).map_err(|e| (unavailable, format!("the backup worker did not answer: {e}")))?;
    match serde_json::from_slice::<BackupReply>(&bytes) {
        Ok(BackupReply::Downloaded(report)) => Ok(report),
        Ok(BackupReply::Error { sqlstate, message }) => Err((sqlstate, message)),
        Err(e) => Err((internal, format!("malformed reply from the backup worker: {e}"))),
    }
}
