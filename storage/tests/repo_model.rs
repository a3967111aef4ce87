//! Acceptance 1: thousands of random operations against a BTreeMap reference.
//!
//! Puts at increasing LSNs, reads at random LSNs, branch creation, freeze and
//! flush, compaction, image creation, GC and restarts; every read inside the
//! retention window must return exactly the reference's value, every read
//! below the GC cutoff a "too old" error.
//!
//! Compaction and GC go through the layer-swap protocol both ways: in-process
//! (planned on the live timeline) and as the layers worker does it, planned on
//! a read-only view opened from the same directory and applied by the owner.
//! Some of the worker's swaps are held back while another change lands (a
//! compaction, a GC, a branch or a restart): the owner must refuse exactly
//! those whose generation or branch points no longer match, and leave no file
//! of theirs behind.

mod repo_common;

use repo_common::*;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use storage::lsn::Lsn;
use storage::repo::{LayerKind, LayerSwap, LayerWork, RepoConfig, RepoError, Repository, TimelineId};

/// How a worker-side step of layer work ended.
enum WorkerOutcome {
    Applied(usize),
    /// The owner refused the swap (expected after a change in between).
    Refused,
    /// The view could not do it now (an ancestor not yet on disk up to the branch point).
    NotYet,
}

/// The layers worker's view: the indexes as they are on disk now.
fn open_view(dir: &Path, conf: RepoConfig) -> Repository {
    let conf = RepoConfig { ancestor_wait_timeout: Duration::ZERO, ..conf };
    Repository::open_read_only(dir, conf, Arc::new(TestRedo)).expect("open read-only view")
}

/// Plans compaction (or GC at `gc_cutoff`) of `id` on a fresh view, calls
/// `meanwhile` between planning and the swap, then has the owner apply it.
/// Returns L1 + image layers written, or GC'd layers.
fn worker_step(
    dir: &Path,
    conf: RepoConfig,
    repo: &Repository,
    id: TimelineId,
    gc_cutoff: Option<Lsn>,
    meanwhile: &mut dyn FnMut(),
) -> WorkerOutcome {
    let grant = repo.begin_layer_work(id, SystemTime::now()).unwrap();
    let view_repo = open_view(dir, conf);
    let view = view_repo.get_timeline(id).unwrap();
    let mut work = LayerWork::new(&view, &grant);
    let planned: Result<Vec<(LayerSwap, usize)>, RepoError> = (|| {
        Ok(match gc_cutoff {
            Some(cutoff) => {
                let (swap, stats) = work.plan_gc(cutoff, &grant.branch_points)?;
                vec![(swap, stats.layers_removed)]
            }
            None => {
                let level0 = work.plan_level0()?.map(|(swap, stats)| (swap, stats.l1_written));
                level0.into_iter().collect()
            }
        })
    })();
    let planned = match planned {
        Ok(planned) => planned,
        Err(RepoError::WaitTimeout { .. }) => return WorkerOutcome::NotYet,
        Err(e) => panic!("planning on the view failed: {e}"),
    };
    meanwhile();
    let mut done = 0;
    for (swap, count) in planned {
        match work.commit(&swap, &|swap| repo.apply_layer_swap(id, swap)) {
            Ok(()) => done += count,
            Err(RepoError::SwapRefused(_)) => {
                for (name, _) in &swap.add {
                    assert!(!dir_has(repo, id, &name.file_name()), "a refused swap left {}", name.file_name());
                }
                return WorkerOutcome::Refused;
            }
            Err(e) => panic!("swap failed: {e}"),
        }
    }
    if gc_cutoff.is_none() {
        match work.plan_image_layers() {
            Ok(Some((swap, images))) => match work.commit(&swap, &|swap| repo.apply_layer_swap(id, swap)) {
                Ok(()) => done += images,
                Err(RepoError::SwapRefused(_)) => return WorkerOutcome::Refused,
                Err(e) => panic!("image swap failed: {e}"),
            },
            Ok(None) => {}
            Err(RepoError::WaitTimeout { .. }) => return WorkerOutcome::NotYet,
            Err(e) => panic!("image creation on the view failed: {e}"),
        }
    }
    WorkerOutcome::Applied(done)
}

fn dir_has(repo: &Repository, id: TimelineId, file: &str) -> bool {
    repo.get_timeline(id).unwrap().dir().join(file).exists()
}

/// After a grant (which removes what earlier grants left), a timeline's
/// directory holds its index and exactly the files of its layer map.
fn assert_no_leftovers(repo: &Repository) {
    for id in repo.timeline_ids() {
        repo.begin_layer_work(id, SystemTime::now()).unwrap();
        let timeline = repo.get_timeline(id).unwrap();
        let mut expected: Vec<String> = timeline.layer_names().iter().map(|n| n.file_name()).collect();
        expected.push("index".into());
        expected.sort();
        let mut on_disk: Vec<String> =
            std::fs::read_dir(timeline.dir()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        on_disk.sort();
        assert_eq!(on_disk, expected, "timeline {id}: files on disk are not those of the layer map");
    }
}

fn run(seed: u64, ops: usize) -> (usize, [usize; 6]) {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_pool();
    let mut rng = Rng::new(seed);
    // Odd seeds without the page cache, so that every read walks the layers.
    let config = || storage::repo::RepoConfig { page_cache_bytes: if seed % 2 == 1 { 0 } else { 64 * 1024 }, ..small_config() };
    let mut repo = open(dir.path(), config());
    let mut model = Model::default();
    let root = TimelineId(1);
    repo.create_timeline(root).unwrap();
    model.timelines.insert(root, ModelTimeline::default());
    let mut reads = 0;
    // L0 flushed, L1 written, images written, layers GC'd (in-process),
    // layers written by worker-side compaction, worker swaps refused
    let mut counts = [0usize; 6];
    for _ in 0..ops {
        let ids: Vec<TimelineId> = model.timelines.keys().copied().collect();
        let id = ids[rng.range(0, ids.len() as u64) as usize];
        let timeline = repo.get_timeline(id).unwrap();
        match rng.range(0, 100) {
            0..=44 => model.random_put(&mut rng, &repo, id, &keys).unwrap(),
            45..=79 => {
                let last = timeline.last_record_lsn();
                let lsn = Lsn(rng.range(0, last.0 + 1));
                for _ in 0..4 {
                    let key = keys[rng.range(0, keys.len() as u64) as usize];
                    check_read(&model, &timeline, key, lsn);
                    reads += 1;
                }
            }
            80..=84 => {
                let before = timeline.layer_names().len();
                timeline.writer().freeze().unwrap();
                timeline.flush_frozen_layers().unwrap();
                counts[0] += timeline.layer_names().len() - before;
            }
            85..=86 => {
                let stats = timeline.compact().unwrap();
                counts[1] += stats.l1_written;
                counts[2] += stats.images_written;
            }
            87..=88 => {
                // As the layers worker does it; sometimes another compaction lands first.
                let interfere = rng.chance(25);
                let generation = timeline.layer_generation();
                let outcome = worker_step(dir.path(), config(), &repo, id, None, &mut || {
                    if interfere {
                        timeline.compact().unwrap();
                    }
                });
                match outcome {
                    WorkerOutcome::Applied(n) => counts[4] += n,
                    WorkerOutcome::Refused => {
                        assert_ne!(timeline.layer_generation(), generation, "a swap was refused although nothing changed");
                        counts[5] += 1;
                    }
                    WorkerOutcome::NotYet => {}
                }
            }
            89..=91 if model.timelines.len() < 6 => {
                let parent = model.timelines[&id].clone();
                let low = parent.cutoff.max(parent.ancestor.map(|(_, bp)| bp).unwrap_or_default());
                let bp = Lsn(rng.range(low.0, parent.last_lsn.0 + 1));
                let child = TimelineId(ids.iter().max().unwrap().0 + 1);
                repo.branch_timeline(id, child, bp).unwrap();
                model.timelines.insert(child, ModelTimeline { ancestor: Some((id, bp)), last_lsn: bp, ..Default::default() });
                // Branching below the parent's cutoff must be refused.
                if parent.cutoff.0 > 0 {
                    assert!(repo.branch_timeline(id, TimelineId(child.0 + 1000), Lsn(parent.cutoff.0 - 1)).is_err());
                }
            }
            92..=93 => {
                let model_tl = model.timelines.get_mut(&id).unwrap();
                let cutoff = model_tl.last_lsn.saturating_sub(rng.range(0, 600)).max(model_tl.cutoff);
                let stats = repo.gc_timeline_at(id, cutoff).unwrap();
                assert_eq!(stats.cutoff, cutoff);
                model_tl.cutoff = cutoff;
                counts[3] += stats.layers_removed;
            }
            94..=95 => {
                // GC as the layers worker does it; sometimes a branch at the
                // current cutoff is created in between, which must make the
                // owner refuse the swap (the branch point would be lost).
                let model_tl = model.timelines[&id].clone();
                let cutoff = model_tl.last_lsn.saturating_sub(rng.range(0, 600)).max(model_tl.cutoff);
                let branch_between = rng.chance(30) && model.timelines.len() < 6 && cutoff > timeline.gc_cutoff();
                let child = TimelineId(ids.iter().max().unwrap().0 + 1);
                let bp = timeline.gc_cutoff();
                let mut branched = false;
                let outcome = worker_step(dir.path(), config(), &repo, id, Some(cutoff), &mut || {
                    if branch_between && repo.branch_timeline(id, child, bp).is_ok() {
                        branched = true;
                    }
                });
                if branched {
                    model.timelines.insert(child, ModelTimeline { ancestor: Some((id, bp)), last_lsn: bp, ..Default::default() });
                }
                match outcome {
                    WorkerOutcome::Applied(n) => {
                        assert!(!branched, "a GC planned before a branch was created was applied");
                        model.timelines.get_mut(&id).unwrap().cutoff = cutoff;
                        assert_eq!(timeline.gc_cutoff(), cutoff);
                        counts[3] += n;
                    }
                    WorkerOutcome::Refused => {
                        assert!(branched, "a GC swap was refused although nothing changed");
                        counts[5] += 1;
                    }
                    WorkerOutcome::NotYet => unreachable!("GC reads no pages"),
                }
            }
            96..=97 => {
                // Restart: in-memory state is lost, ingest resumes from disk_consistent_lsn.
                drop(timeline);
                drop(repo);
                repo = open(dir.path(), config());
                model.reingest(&repo).unwrap();
                for (id, m) in &model.timelines {
                    assert_eq!(repo.get_timeline(*id).unwrap().gc_cutoff(), m.cutoff);
                }
            }
            _ if rng.chance(25) => {
                // Flush everything, then a wide check.
                for id in &ids {
                    let t = repo.get_timeline(*id).unwrap();
                    t.writer().freeze().unwrap();
                    t.flush_frozen_layers().unwrap();
                }
                reads += model.check_sampled(&repo, &keys, 30, &mut rng);
            }
            _ => {}
        }
    }
    reads += model.check_sampled(&repo, &keys, 150, &mut rng);
    assert_no_leftovers(&repo);
    // Reads ahead of last_record_lsn are refused, not answered.
    let t = repo.get_timeline(root).unwrap();
    assert!(t.get(keys[0], t.last_record_lsn() + 1).is_err());
    (reads, counts)
}

#[test]
fn random_operations_match_reference() {
    let mut total = [0usize; 6];
    let mut reads = 0;
    for seed in 0..4 {
        let (r, counts) = run(seed, 2000);
        reads += r;
        for i in 0..6 {
            total[i] += counts[i];
        }
    }
    eprintln!(
        "reads {reads}, L0 flushed {}, L1 written {}, images {}, GC'd {}, worker-side layers {}, refused swaps {}",
        total[0], total[1], total[2], total[3], total[4], total[5]
    );
    // The workload must have exercised every mechanism.
    assert!(total.iter().all(|c| *c > 0), "some mechanism never ran: {total:?}");
    assert!(reads > 100_000, "only {reads} reads");
}

#[test]
fn gc_keeps_branch_point_and_drops_unneeded_layers() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_pool();
    let mut rng = Rng::new(99);
    let repo = open(dir.path(), small_config());
    let mut model = Model::default();
    let root = TimelineId(1);
    repo.create_timeline(root).unwrap();
    model.timelines.insert(root, ModelTimeline::default());
    let timeline = repo.get_timeline(root).unwrap();
    let flush = || {
        timeline.writer().freeze().unwrap();
        timeline.flush_frozen_layers().unwrap();
    };
    for _ in 0..60 {
        model.random_put(&mut rng, &repo, root, &keys).unwrap();
    }
    flush();
    let bp = model.timelines[&root].last_lsn;
    repo.branch_timeline(root, TimelineId(2), bp).unwrap();
    model.timelines.insert(TimelineId(2), ModelTimeline { ancestor: Some((root, bp)), last_lsn: bp, ..Default::default() });
    for round in 0..8 {
        for _ in 0..60 {
            model.random_put(&mut rng, &repo, root, &keys).unwrap();
        }
        flush();
        timeline.compact().unwrap();
        let cutoff = model.timelines[&root].last_lsn;
        model.timelines.get_mut(&root).unwrap().cutoff = cutoff;
        let stats = repo.gc_timeline_at(root, cutoff).unwrap();
        if round > 3 {
            assert!(stats.layers_removed > 0 || stats.layers_kept < 12, "GC removes nothing: {stats:?}");
        }
    }
    let names = timeline.layer_names();
    assert!(names.iter().any(|n| n.kind == LayerKind::Image));
    // The branch still reads everything at its branch point, through the parent.
    model.check_all(&repo, &keys);
    // Reads of the parent below its cutoff are refused.
    let cutoff = timeline.gc_cutoff();
    assert!(matches!(timeline.get(keys[0], Lsn(cutoff.0 - 1)), Err(storage::repo::RepoError::TooOld { .. })));
    // Layer files on disk are exactly those of the index (GC'd ones are gone).
    let on_disk = std::fs::read_dir(timeline.dir()).unwrap().count();
    assert_eq!(on_disk, names.len() + 1);
}

#[test]
fn owner_refuses_swaps_that_no_longer_fit() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_pool();
    let mut rng = Rng::new(7);
    let mut repo = open(dir.path(), small_config());
    let mut model = Model::default();
    let root = TimelineId(1);
    repo.create_timeline(root).unwrap();
    model.timelines.insert(root, ModelTimeline::default());
    for _ in 0..4 {
        for _ in 0..40 {
            model.random_put(&mut rng, &repo, root, &keys).unwrap();
        }
        let timeline = repo.get_timeline(root).unwrap();
        timeline.writer().freeze().unwrap();
        timeline.flush_frozen_layers().unwrap();
    }
    let plan = |repo: &Repository| {
        let grant = repo.begin_layer_work(root, SystemTime::now()).unwrap();
        let view_repo = open_view(dir.path(), small_config());
        let view = view_repo.get_timeline(root).unwrap();
        let (swap, _) = LayerWork::new(&view, &grant).plan_level0().unwrap().expect("enough L0 layers to compact");
        swap
    };
    let refused = |repo: &Repository, swap: &LayerSwap| matches!(repo.apply_layer_swap(root, swap), Err(RepoError::SwapRefused(_)));

    let swap = plan(&repo);
    let mut wrong_size = swap.clone();
    wrong_size.add[0].1 += 1;
    assert!(refused(&repo, &wrong_size), "a file of another size was accepted");
    let mut not_granted = swap.clone();
    not_granted.add[0].0.seq = 1;
    assert!(refused(&repo, &not_granted), "a sequence number the owner did not grant was accepted");
    let mut gone = swap.clone();
    gone.remove[0].seq += 1_000_000;
    assert!(refused(&repo, &gone), "a swap dropping a layer not in the map was accepted");
    let layers_before = repo.get_timeline(root).unwrap().layer_names();

    // A restart of the owner in between: another generation, and the files are gone.
    drop(repo);
    repo = open(dir.path(), small_config());
    model.reingest(&repo).unwrap();
    assert!(refused(&repo, &swap), "a swap planned before the owner restarted was accepted");
    assert_eq!(repo.get_timeline(root).unwrap().layer_names().len(), layers_before.len(), "a refused swap changed the layer map");

    // Planned afresh, it fits; applying it twice does not.
    let swap = plan(&repo);
    repo.apply_layer_swap(root, &swap).unwrap();
    assert!(refused(&repo, &swap), "the same swap was accepted twice");
    model.check_all(&repo, &keys);
    assert_no_leftovers(&repo);
}

#[test]
fn a_branch_knows_when_its_ancestor_is_behind_its_branch_point_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_pool();
    let mut rng = Rng::new(7);
    let mut model = Model::default();
    let (root, child) = (TimelineId(1), TimelineId(2));
    let bp = {
        let repo = open(dir.path(), small_config());
        repo.create_timeline(root).unwrap();
        model.timelines.insert(root, ModelTimeline::default());
        for _ in 0..3 {
            model.random_put(&mut rng, &repo, root, &keys).unwrap();
        }
        // Not flushed: after a reopen the root is back at its disk-consistent LSN.
        let bp = model.timelines[&root].last_lsn;
        let branch = repo.branch_timeline(root, child, bp).unwrap();
        assert!(branch.ancestors_caught_up(bp), "before the reopen the root has everything");
        bp
    };
    let repo = open(dir.path(), small_config());
    let (parent, branch) = (repo.get_timeline(root).unwrap(), repo.get_timeline(child).unwrap());
    let behind = parent.last_record_lsn();
    assert!(behind < bp, "the root re-ingests from {behind}, below the branch point {bp}");
    assert!(!branch.ancestors_caught_up(bp) && !branch.ancestors_caught_up(Lsn(bp.0 + 100)));
    assert!(branch.ancestors_caught_up(behind), "a read at or below what the root has needs no wait");
    assert!(parent.ancestors_caught_up(bp), "a timeline without ancestors never waits for one");
}
