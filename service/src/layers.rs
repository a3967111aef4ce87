//! What the layers worker runs: passes of compaction (L0 → L1), image-layer
//! creation and GC over every active timeline and branch, planned on
//! read-only views of the tenants' repositories and applied by the main
//! worker, which owns the timelines, through the layer-work protocol of
//! `storage::repo::layer_work` (a [`LayerOwner`]; across processes the
//! `QueueOwner` of module `mgmt`).
//!
//! Per timeline a pass asks the owner for a grant, opens a fresh view (the
//! indexes as they are on disk now), writes L1 layers and swaps them in,
//! writes image layers and swaps them in, then chooses the layers GC may
//! drop and swaps that. A refused swap means the view was stale: the pass
//! starts that timeline over from a fresh grant and view (a few times),
//! then leaves it to the next pass. Redo for image layers goes through the
//! same redo queue as the main worker's reads.

use crate::error::ServiceError;
use crate::timeline_handle::TenantId;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage::repo::{CompactionStats, GcStats, LayerSwap, LayerWork, LayerWorkGrant, Redo, RepoConfig, RepoError, Repository, TimelineId};

/// The owner of the timelines, as the layers worker sees it.
pub trait LayerOwner {
    /// The timelines to work on: active ones and branches.
    fn timelines(&self) -> Result<Vec<(TenantId, TimelineId)>, ServiceError>;
    fn begin(&self, tenant: TenantId, timeline: TimelineId) -> Result<LayerWorkGrant, ServiceError>;
    /// Applies a swap; [`RepoError::SwapRefused`] if it no longer fits.
    fn swap(&self, tenant: TenantId, timeline: TimelineId, swap: &LayerSwap) -> Result<u64, RepoError>;
    /// Reports a finished pass on a timeline (for `pageserver.timelines()`).
    fn finish(&self, tenant: TenantId, timeline: TimelineId, summary: &str) -> Result<(), ServiceError>;
}

/// Layers one GC swap drops at most, so that a swap fits in one command.
const GC_LAYERS_PER_SWAP: usize = 200;
/// Attempts per timeline and pass when the owner refuses a swap.
const ATTEMPTS: usize = 3;

/// Where a test makes the worker panic (`pageserver.layers_fault`): after
/// the L1 layers, the image layers or the GC choice, before their swap.
pub const FAULT_POINTS: [&str; 3] = ["l1_written", "images_written", "gc_planned"];

/// What one pass did on one timeline.
#[derive(Debug, Default, Clone)]
pub struct TimelinePass {
    pub compaction: CompactionStats,
    pub gc: GcStats,
    /// Swaps the owner refused (each made the timeline start over).
    pub refused: usize,
}

impl TimelinePass {
    /// One line, as `pageserver.timelines()` shows it.
    pub fn describe(&self, took: Duration) -> String {
        let c = &self.compaction;
        let compaction = if c.l0_merged == 0 && c.images_written == 0 {
            "nothing to compact".to_string()
        } else {
            format!(
                "merged {} L0 layers ({} MiB) into {} L1 layers, wrote {} image layers",
                c.l0_merged,
                c.l0_bytes >> 20,
                c.l1_written,
                c.images_written
            )
        };
        let gc = if self.gc.layers_removed == 0 {
            "nothing to remove".to_string()
        } else {
            format!("GC removed {} layers ({} MiB)", self.gc.layers_removed, self.gc.bytes_removed >> 20)
        };
        let refused = if self.refused > 0 { format!("; {} swaps refused and redone", self.refused) } else { String::new() };
        format!("{compaction}; {gc}{refused}; took {:.1} s", took.as_secs_f64())
    }
}

/// The layers worker's state between passes.
pub struct LayersWorker<'a> {
    /// `<pageserver.data_dir>/tenants`.
    pub tenants_dir: PathBuf,
    /// The tenants' repository settings.
    pub conf: RepoConfig,
    pub redo: Arc<dyn Redo>,
    pub owner: &'a dyn LayerOwner,
    /// Told what the worker is doing now (shown by `pageserver.status()`).
    pub activity: &'a dyn Fn(&str),
    /// A fault point (one of [`FAULT_POINTS`]) where the worker panics: tests only.
    pub fault: Option<String>,
    /// Merge L0 layers however few (`pageserver.compact`).
    pub force_l0: bool,
}

impl LayersWorker<'_> {
    /// One pass over every timeline; `stopping` ends it early. Returns the
    /// number of timelines worked on and the errors met (each also reported
    /// to the owner as the timeline's pass summary).
    pub fn pass(&self, stopping: &dyn Fn() -> bool) -> Result<(usize, Vec<String>), ServiceError> {
        let mut errors = Vec::new();
        let timelines = self.owner.timelines()?;
        let mut done = 0;
        for (tenant, timeline) in timelines {
            if stopping() {
                break;
            }
            (self.activity)(&format!("compacting tenant {tenant} timeline {timeline}"));
            let started = Instant::now();
            let summary = match self.timeline_pass(tenant, timeline) {
                Ok(pass) => pass.describe(started.elapsed()),
                Err(e) => {
                    let message = format!("timeline {tenant}/{timeline}: layer work failed: {e}");
                    errors.push(message.clone());
                    message
                }
            };
            // The owner may have dropped the timeline meanwhile: nothing to report then.
            let _ = self.owner.finish(tenant, timeline, &summary);
            done += 1;
        }
        Ok((done, errors))
    }

    /// Compaction, images and GC of one timeline, starting over after a refusal.
    pub fn timeline_pass(&self, tenant: TenantId, timeline: TimelineId) -> Result<TimelinePass, ServiceError> {
        let mut refused = 0;
        loop {
            match self.attempt(tenant, timeline) {
                Ok(mut pass) => {
                    pass.refused = refused;
                    return Ok(pass);
                }
                Err(RepoError::SwapRefused(_)) if refused + 1 < ATTEMPTS => refused += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn attempt(&self, tenant: TenantId, timeline: TimelineId) -> Result<TimelinePass, RepoError> {
        let grant = self.owner.begin(tenant, timeline).map_err(|e| RepoError::Owner(e.to_string()))?;
        let tenant_dir = self.tenants_dir.join(tenant.to_string());
        // The tenant's own settings (`pageserver.tenant_config`) over the host's.
        let mut tenant_conf =
            crate::tenant_settings::TenantSettings::read(&tenant_dir).map_err(|e| RepoError::Owner(e.to_string()))?.apply(&self.conf);
        if self.force_l0 {
            tenant_conf.compaction_threshold = 1;
        }
        let view_conf = RepoConfig {
            // The view never ingests: reading an ancestor past what is on
            // disk fails at once and the next pass tries again.
            ancestor_wait_timeout: Duration::ZERO,
            page_cache_bytes: self.conf.page_cache_bytes.min(16 << 20),
            // Image creation rebuilds pages on half the threads a fullbackup
            // uses: the redo workers keep room for GetPage.
            read_parallelism: (self.conf.read_parallelism / 2).max(1),
            ..tenant_conf
        };
        let repo = Repository::open_read_only(&tenant_dir, view_conf, self.redo.clone())?;
        let view = repo.get_timeline(timeline)?;
        let mut work = LayerWork::new(&view, &grant);
        let owner = |swap: &LayerSwap| self.owner.swap(tenant, timeline, swap);
        let mut pass = TimelinePass::default();
        if let Some((swap, stats)) = work.plan_level0()? {
            self.fault_point("l1_written");
            work.commit(&swap, &owner)?;
            pass.compaction = stats;
        }
        if let Some((swap, images)) = work.plan_image_layers()? {
            self.fault_point("images_written");
            work.commit(&swap, &owner)?;
            pass.compaction.images_written = images;
        }
        let (swap, gc) = work.plan_gc(grant.gc_cutoff, &grant.branch_points)?;
        self.fault_point("gc_planned");
        // In pieces that fit in a command; each piece is a valid GC on its own.
        let mut pieces: Vec<&[storage::repo::LayerName]> = swap.remove.chunks(GC_LAYERS_PER_SWAP).collect();
        if pieces.is_empty() {
            pieces.push(&[]);
        }
        for piece in pieces {
            let piece = LayerSwap { generation: work.generation(), remove: piece.to_vec(), add: Vec::new(), gc: swap.gc.clone() };
            work.commit(&piece, &owner)?;
        }
        pass.gc = gc;
        Ok(pass)
    }

    fn fault_point(&self, name: &str) {
        if self.fault.as_deref() == Some(name) {
            panic!("fault injected by pageserver.layers_fault at {name}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use parking_lot::Mutex;
    use std::collections::BTreeMap;
    use storage::key::Key;
    use storage::lsn::Lsn;
    use storage::value::{Value, WalRecordValue};

    /// Values are images only: no redo is ever needed.
    struct NoRedo;
    impl Redo for NoRedo {
        fn apply(&self, _: Key, _: Option<Bytes>, _: &[(Lsn, WalRecordValue)]) -> Result<Bytes, storage::repo::RedoError> {
            Err(storage::repo::RedoError::Invalid("no redo in this test".into()))
        }
    }

    /// Runs before each swap is applied.
    type BeforeSwap = Box<dyn FnMut(&Repository) + Send>;

    /// The owner in-process: the repository itself, as the main worker holds it.
    struct LocalOwner {
        repo: Repository,
        finished: Mutex<Vec<String>>,
        /// Called before each swap is applied (to make some refused).
        before_swap: Mutex<BeforeSwap>,
    }

    impl LayerOwner for LocalOwner {
        fn timelines(&self) -> Result<Vec<(TenantId, TimelineId)>, ServiceError> {
            Ok(self.repo.timeline_ids().into_iter().map(|id| (tenant(), id)).collect())
        }
        fn begin(&self, _: TenantId, timeline: TimelineId) -> Result<LayerWorkGrant, ServiceError> {
            Ok(self.repo.begin_layer_work(timeline, std::time::SystemTime::now())?)
        }
        fn swap(&self, _: TenantId, timeline: TimelineId, swap: &LayerSwap) -> Result<u64, RepoError> {
            (self.before_swap.lock())(&self.repo);
            self.repo.apply_layer_swap(timeline, swap)
        }
        fn finish(&self, _: TenantId, _: TimelineId, summary: &str) -> Result<(), ServiceError> {
            self.finished.lock().push(summary.to_string());
            Ok(())
        }
    }

    fn tenant() -> TenantId {
        TenantId(0xabc)
    }

    fn conf() -> RepoConfig {
        RepoConfig {
            checkpoint_distance: 1 << 30,
            target_file_size: 64 * 1024,
            compaction_threshold: 3,
            image_creation_threshold: 1,
            gc_horizon: 0,
            pitr_interval: Duration::ZERO,
            fsync: false,
            ..RepoConfig::default()
        }
    }

    fn page(n: u64) -> Bytes {
        Bytes::from(vec![n as u8; pg_constants::BLCKSZ])
    }

    #[test]
    fn a_pass_compacts_images_and_collects_garbage_through_swaps() {
        let root = tempfile::tempdir().unwrap();
        let tenant_dir = root.path().join(tenant().to_string());
        let repo = Repository::open(&tenant_dir, conf(), Arc::new(NoRedo)).unwrap();
        let id = TimelineId(1);
        let timeline = repo.create_timeline(id).unwrap();
        let keys: Vec<Key> = (0..40).map(|n| Key { field6: n, ..Key::MIN }).collect();
        let mut expected = BTreeMap::new();
        let mut lsn = 0x100;
        let mut write_rounds = |rounds: std::ops::Range<u64>| {
            for round in rounds {
                let mut w = timeline.writer();
                for key in &keys {
                    lsn += 8;
                    w.put(*key, Lsn(lsn), Value::Image(page(round))).unwrap();
                    w.finish_lsn(Lsn(lsn)).unwrap();
                    expected.insert(*key, page(round));
                }
                w.freeze().unwrap();
                drop(w);
                timeline.flush_frozen_layers().unwrap();
            }
        };
        write_rounds(0..6);
        let layers_before = timeline.layer_names().len();
        assert_eq!(layers_before, 6);
        let owner = LocalOwner { repo, finished: Mutex::new(Vec::new()), before_swap: Mutex::new(Box::new(|_| {})) };
        let activity = Mutex::new(Vec::new());
        let worker = LayersWorker {
            tenants_dir: root.path().to_path_buf(),
            conf: conf(),
            redo: Arc::new(NoRedo),
            owner: &owner,
            activity: &|text| activity.lock().push(text.to_string()),
            fault: None,
            force_l0: false,
        };
        let (done, errors) = worker.pass(&|| false).unwrap();
        assert_eq!((done, errors.len()), (1, 0), "{errors:?}");
        let summary = owner.finished.lock()[0].clone();
        assert!(summary.starts_with("merged 6 L0 layers (0 MiB) into 1 L1 layers, wrote 5 image layers"), "{summary}");
        // The next pass, once more WAL came: GC drops what the images cover.
        write_rounds(6..7);
        worker.pass(&|| false).unwrap();
        let summary = owner.finished.lock()[1].clone();
        assert!(summary.contains("GC removed"), "{summary}");
        assert!(activity.lock()[0].starts_with("compacting tenant"), "{:?}", activity.lock());
        let timeline = owner.repo.get_timeline(id).unwrap();
        let names = timeline.layer_names();
        assert!(names.iter().any(|n| n.is_image()), "{names:?}");
        assert_eq!(timeline.gc_cutoff(), timeline.last_record_lsn());
        for (key, value) in &expected {
            assert_eq!(timeline.get(*key, timeline.last_record_lsn()).unwrap().as_ref(), Some(value));
        }

        // A change landing between planning and every swap: each attempt is
        // refused, the timeline starts over, and the pass reports the failure.
        *owner.before_swap.lock() = Box::new(|repo: &Repository| {
            let t = repo.get_timeline(TimelineId(1)).unwrap();
            let grant = repo.begin_layer_work(t.id(), std::time::SystemTime::now()).unwrap();
            let empty = LayerSwap { generation: grant.generation, ..LayerSwap::default() };
            t.apply_layer_swap(&empty).unwrap();
        });
        let (_, errors) = worker.pass(&|| false).unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("refused"), "{errors:?}");
        for (key, value) in &expected {
            assert_eq!(timeline.get(*key, timeline.last_record_lsn()).unwrap().as_ref(), Some(value));
        }
    }
}
