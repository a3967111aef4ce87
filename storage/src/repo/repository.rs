//! The repository: the timelines of one tenant in one directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};

use super::gc::GcStats;
use super::index::{IndexFile, INDEX_FILE_NAME};
use super::layer_file::sync_dir;
use super::layer_work::{LayerSwap, LayerWork, LayerWorkGrant};
use super::timeline::{Shared, Timeline};
use super::{io_error, CrashPoints, Redo, RepoConfig, RepoError, Result, TimelineId};
use crate::lsn::Lsn;

const TIMELINES_DIR: &str = "timelines";
const NEW_TIMELINE_SUFFIX: &str = ".new";

pub struct Repository {
    root: PathBuf,
    shared: Arc<Shared>,
    timelines: RwLock<BTreeMap<TimelineId, Arc<Timeline>>>,
    /// Held by GC and branch creation, so a new branch point is never missed by a GC.
    gc_lock: Mutex<()>,
    /// Serializes timeline creation (without blocking lookups during its fsyncs).
    create_lock: Mutex<()>,
}

impl Repository {
    /// Opens (creating if needed) the repository in `root`, loading every
    /// timeline from its index and removing files no index names.
    pub fn open(root: &Path, conf: RepoConfig, redo: Arc<dyn Redo>) -> Result<Repository> {
        Repository::load(root, conf, redo, false)
    }

    /// Opens a read-only view of a repository that another process owns
    /// (the layers worker's view of the main worker's tenants): timelines
    /// as their indexes on disk say now, with `last_record_lsn` =
    /// `disk_consistent_lsn`; nothing is removed and no index is written.
    /// Layer work planned on it ([`LayerWork`](super::LayerWork)) is applied
    /// by the owner.
    pub fn open_read_only(root: &Path, conf: RepoConfig, redo: Arc<dyn Redo>) -> Result<Repository> {
        Repository::load(root, conf, redo, true)
    }

    fn load(root: &Path, conf: RepoConfig, redo: Arc<dyn Redo>, read_only: bool) -> Result<Repository> {
        let timelines_dir = root.join(TIMELINES_DIR);
        if !read_only {
            std::fs::create_dir_all(&timelines_dir).map_err(io_error(&timelines_dir))?;
        }
        let page_cache = super::page_cache::PageCache::new(conf.page_cache_bytes);
        let tuned = parking_lot::RwLock::new(conf.clone());
        let shared = Arc::new(Shared { conf, tuned, redo, crash: Arc::new(CrashPoints::default()), page_cache });
        let mut indexes = BTreeMap::new();
        for entry in std::fs::read_dir(&timelines_dir).map_err(io_error(&timelines_dir))? {
            let entry = entry.map_err(io_error(&timelines_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(NEW_TIMELINE_SUFFIX) {
                // A timeline creation that did not finish.
                if !read_only {
                    std::fs::remove_dir_all(entry.path()).map_err(io_error(entry.path()))?;
                }
                continue;
            }
            let id: TimelineId = name.parse()?;
            let index = IndexFile::read(&entry.path())?;
            if index.timeline_id != id {
                return Err(RepoError::Corrupt {
                    path: entry.path().join(INDEX_FILE_NAME),
                    msg: format!("index names timeline {}", index.timeline_id),
                });
            }
            indexes.insert(id, index);
        }
        let mut timelines: BTreeMap<TimelineId, Arc<Timeline>> = BTreeMap::new();
        while !indexes.is_empty() {
            let ready: Vec<TimelineId> = indexes
                .iter()
                .filter(|(_, index)| index.ancestor.is_none_or(|(a, _)| timelines.contains_key(&a)))
                .map(|(id, _)| *id)
                .collect();
            if ready.is_empty() {
                let id = *indexes.keys().next().unwrap();
                return Err(RepoError::Corrupt {
                    path: timelines_dir.join(id.to_string()).join(INDEX_FILE_NAME),
                    msg: "ancestor timeline missing".into(),
                });
            }
            for id in ready {
                let index = indexes.remove(&id).unwrap();
                let ancestor = index.ancestor.map(|(a, _)| timelines[&a].clone());
                let dir = timelines_dir.join(id.to_string());
                timelines.insert(id, Arc::new(Timeline::load(dir, index, ancestor, shared.clone(), read_only)?));
            }
        }
        Ok(Repository {
            root: root.to_path_buf(),
            shared,
            timelines: RwLock::new(timelines),
            gc_lock: Mutex::new(()),
            create_lock: Mutex::new(()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &RepoConfig {
        &self.shared.conf
    }

    /// The settings in force now: [`config`](Self::config) as
    /// [`retune`](Self::retune) last changed it.
    pub fn tuned(&self) -> RepoConfig {
        self.shared.tuned.read().clone()
    }

    /// Changes, from now on, the settings a tenant may set while it runs:
    /// `checkpoint_distance`, `checkpoint_timeout` (and with it the
    /// in-memory bound), `compaction_threshold`, `image_creation_threshold`,
    /// `image_layer_distance`, `gc_horizon` and `pitr_interval` are taken
    /// from `conf`; its other fields are ignored.
    pub fn retune(&self, conf: &RepoConfig) {
        let mut tuned = self.shared.tuned.write();
        tuned.checkpoint_distance = conf.checkpoint_distance;
        tuned.checkpoint_timeout = conf.checkpoint_timeout;
        tuned.max_inmem_bytes = conf.max_inmem_bytes;
        tuned.compaction_threshold = conf.compaction_threshold;
        tuned.image_creation_threshold = conf.image_creation_threshold;
        tuned.image_layer_distance = conf.image_layer_distance;
        tuned.gc_horizon = conf.gc_horizon;
        tuned.pitr_interval = conf.pitr_interval;
    }

    /// Simulated crashes (tests).
    pub fn crash_points(&self) -> &CrashPoints {
        &self.shared.crash
    }

    pub fn timeline_ids(&self) -> Vec<TimelineId> {
        self.timelines.read().keys().copied().collect()
    }

    pub fn get_timeline(&self, id: TimelineId) -> Result<Arc<Timeline>> {
        self.timelines.read().get(&id).cloned().ok_or(RepoError::TimelineNotFound(id))
    }

    /// Creates an empty timeline without ancestor; ingest starts at any LSN.
    pub fn create_timeline(&self, id: TimelineId) -> Result<Arc<Timeline>> {
        self.create(
            IndexFile {
                timeline_id: id,
                ancestor: None,
                disk_consistent_lsn: Lsn(0),
                gc_cutoff: Lsn(0),
                next_layer_seq: 0,
                layers: Vec::new(),
                lsn_history: Vec::new(),
            },
            None,
        )
    }

    /// Creates `child` as a branch of `parent` at `lsn`: metadata only. `lsn`
    /// must be at or below the parent's `last_record_lsn`, at or above its GC
    /// cutoff and at or above its own branch point.
    pub fn branch_timeline(&self, parent: TimelineId, child: TimelineId, lsn: Lsn) -> Result<Arc<Timeline>> {
        let _gc = self.gc_lock.lock();
        let parent = self.get_timeline(parent)?;
        let last = parent.last_record_lsn();
        let cutoff = parent.gc_cutoff();
        let invalid = |why: String| Err(RepoError::Invalid(format!("cannot branch timeline {} at {lsn}: {why}", parent.id())));
        if lsn > last {
            return invalid(format!("ahead of its last_record_lsn {last}"));
        }
        if lsn < cutoff {
            return invalid(format!("below its GC cutoff {cutoff}"));
        }
        if let Some((_, ancestor_lsn)) = parent.ancestor() {
            if lsn < ancestor_lsn {
                return invalid(format!("below its own branch point {ancestor_lsn}"));
            }
        }
        let index = IndexFile {
            timeline_id: child,
            ancestor: Some((parent.id(), lsn)),
            disk_consistent_lsn: lsn,
            gc_cutoff: Lsn(0),
            next_layer_seq: 0,
            layers: Vec::new(),
            lsn_history: Vec::new(),
        };
        self.create(index, Some(parent))
    }

    fn create(&self, index: IndexFile, ancestor: Option<Arc<Timeline>>) -> Result<Arc<Timeline>> {
        let id = index.timeline_id;
        let _create = self.create_lock.lock();
        let timelines_dir = self.root.join(TIMELINES_DIR);
        let dir = timelines_dir.join(id.to_string());
        if self.timelines.read().contains_key(&id) || dir.exists() {
            return Err(RepoError::TimelineExists(id));
        }
        let new_dir = timelines_dir.join(format!("{id}{NEW_TIMELINE_SUFFIX}"));
        if new_dir.exists() {
            std::fs::remove_dir_all(&new_dir).map_err(io_error(&new_dir))?;
        }
        std::fs::create_dir(&new_dir).map_err(io_error(&new_dir))?;
        index.write(&new_dir, self.shared.conf.fsync, &self.shared.crash)?;
        std::fs::rename(&new_dir, &dir).map_err(io_error(&dir))?;
        if self.shared.conf.fsync {
            sync_dir(&timelines_dir)?;
        }
        self.shared.crash.hit("timeline created")?;
        let timeline = Arc::new(Timeline::load(dir, index, ancestor, self.shared.clone(), false)?);
        self.timelines.write().insert(id, timeline.clone());
        Ok(timeline)
    }

    /// Deletes a timeline that has no branches: its directory is renamed
    /// away first (so a crash leaves either the whole timeline or a
    /// `.new`-suffixed directory that the next open removes), then removed.
    pub fn delete_timeline(&self, id: TimelineId) -> Result<()> {
        let _gc = self.gc_lock.lock();
        let _create = self.create_lock.lock();
        if self.timelines.read().values().any(|t| t.ancestor().is_some_and(|(a, _)| a.id() == id)) {
            return Err(RepoError::Invalid(format!("timeline {id} has branches; delete them first")));
        }
        let timeline = self.timelines.write().remove(&id).ok_or(RepoError::TimelineNotFound(id))?;
        let timelines_dir = self.root.join(TIMELINES_DIR);
        let dir = timeline.dir().to_path_buf();
        let doomed = timelines_dir.join(format!("{id}{NEW_TIMELINE_SUFFIX}"));
        std::fs::rename(&dir, &doomed).map_err(io_error(&dir))?;
        if self.shared.conf.fsync {
            sync_dir(&timelines_dir)?;
        }
        std::fs::remove_dir_all(&doomed).map_err(io_error(&doomed))?;
        Ok(())
    }

    /// The branch LSNs of the children of `id`.
    pub fn branch_points(&self, id: TimelineId) -> Vec<Lsn> {
        let timelines = self.timelines.read();
        let mut points: Vec<Lsn> =
            timelines.values().filter_map(|t| t.ancestor().filter(|(a, _)| a.id() == id).map(|(_, lsn)| lsn)).collect();
        points.sort();
        points.dedup();
        points
    }

    /// The GC cutoff `timeline` would get now: `min(last_record_lsn - gc_horizon,
    /// LSN at now - pitr_interval)`, never below its current cutoff.
    pub fn gc_cutoff_for(&self, timeline: &Timeline, now: SystemTime) -> Lsn {
        let conf = self.shared.tuned.read();
        let last = timeline.last_record_lsn();
        let by_horizon = last.saturating_sub(conf.gc_horizon);
        let by_time = if conf.pitr_interval.is_zero() {
            last
        } else {
            now.checked_sub(conf.pitr_interval).and_then(|t| timeline.lsn_at_time(t)).unwrap_or(Lsn(0))
        };
        by_horizon.min(by_time).max(timeline.gc_cutoff())
    }

    /// GC of one timeline with the cutoff of [`gc_cutoff_for`](Self::gc_cutoff_for).
    pub fn gc_timeline(&self, id: TimelineId, now: SystemTime) -> Result<GcStats> {
        let timeline = self.get_timeline(id)?;
        let cutoff = self.gc_cutoff_for(&timeline, now);
        self.gc_timeline_at(id, cutoff)
    }

    /// GC of one timeline with an explicit cutoff (raised to the current one
    /// if lower), in-process: planned on the timeline itself and applied
    /// through a layer swap, as the layers worker does from its view.
    pub fn gc_timeline_at(&self, id: TimelineId, cutoff: Lsn) -> Result<GcStats> {
        let _gc = self.gc_lock.lock();
        let timeline = self.get_timeline(id)?;
        let _compaction = timeline.compaction_lock.lock();
        let grant = timeline.begin_layer_work(cutoff, self.branch_points(id))?;
        let mut work = LayerWork::new(&timeline, &grant);
        let (swap, stats) = work.plan_gc(cutoff, &grant.branch_points)?;
        work.commit(&swap, &|swap| self.apply_swap_holding_gc_lock(&timeline, swap))?;
        Ok(stats)
    }

    /// Owner side of layer work on timeline `id`: a grant whose GC cutoff is
    /// [`gc_cutoff_for`](Self::gc_cutoff_for) at `now` and whose branch
    /// points are the timeline's children's.
    pub fn begin_layer_work(&self, id: TimelineId, now: SystemTime) -> Result<LayerWorkGrant> {
        let timeline = self.get_timeline(id)?;
        let cutoff = self.gc_cutoff_for(&timeline, now);
        timeline.begin_layer_work(cutoff, self.branch_points(id))
    }

    /// Owner side: applies a swap planned on a view of timeline `id` (see
    /// [`Timeline::apply_layer_swap`]); a GC swap is refused if the
    /// timeline's branch points are no longer the ones it was planned for.
    pub fn apply_layer_swap(&self, id: TimelineId, swap: &LayerSwap) -> Result<u64> {
        let _gc = self.gc_lock.lock();
        let timeline = self.get_timeline(id)?;
        self.apply_swap_holding_gc_lock(&timeline, swap)
    }

    fn apply_swap_holding_gc_lock(&self, timeline: &Timeline, swap: &LayerSwap) -> Result<u64> {
        if let Some(gc) = &swap.gc {
            let now = self.branch_points(timeline.id());
            if gc.branch_points != now {
                return Err(RepoError::SwapRefused(format!(
                    "timeline {}: GC was planned for branch points {:?} but they are now {:?}",
                    timeline.id(),
                    gc.branch_points,
                    now
                )));
            }
        }
        timeline.apply_layer_swap(swap)
    }

    /// Freezes and flushes the in-memory layers of every timeline (waits for each writer).
    pub fn flush_all(&self) -> Result<()> {
        for id in self.timeline_ids() {
            let timeline = self.get_timeline(id)?;
            timeline.writer().freeze()?;
            timeline.flush_frozen_layers()?;
        }
        Ok(())
    }

    /// GC of every timeline.
    pub fn gc(&self, now: SystemTime) -> Result<Vec<(TimelineId, GcStats)>> {
        self.timeline_ids().into_iter().map(|id| Ok((id, self.gc_timeline(id, now)?))).collect()
    }
}
