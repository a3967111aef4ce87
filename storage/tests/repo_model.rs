//! Acceptance 1: thousands of random operations against a BTreeMap reference.
//!
//! Puts at increasing LSNs, reads at random LSNs, branch creation, freeze and
//! flush, compaction, image creation, GC and restarts; every read inside the
//! retention window must return exactly the reference's value, every read
//! below the GC cutoff a "too old" error.

mod repo_common;

use repo_common::*;
use storage::lsn::Lsn;
use storage::repo::{LayerKind, TimelineId};

fn run(seed: u64, ops: usize) -> (usize, [usize; 4]) {
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
    // L0 flushed, L1 written, images written, layers GC'd
    let mut counts = [0usize; 4];
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
            85..=88 => {
                let stats = timeline.compact().unwrap();
                counts[1] += stats.l1_written;
                counts[2] += stats.images_written;
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
            92..=95 => {
                let model_tl = model.timelines.get_mut(&id).unwrap();
                let cutoff = model_tl.last_lsn.saturating_sub(rng.range(0, 600)).max(model_tl.cutoff);
                let stats = repo.gc_timeline_at(id, cutoff).unwrap();
                assert_eq!(stats.cutoff, cutoff);
                model_tl.cutoff = cutoff;
                counts[3] += stats.layers_removed;
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
    // Reads ahead of last_record_lsn are refused, not answered.
    let t = repo.get_timeline(root).unwrap();
    assert!(t.get(keys[0], t.last_record_lsn() + 1).is_err());
    (reads, counts)
}

#[test]
fn random_operations_match_reference() {
    let mut total = [0usize; 4];
    let mut reads = 0;
    for seed in 0..4 {
        let (r, counts) = run(seed, 2000);
        reads += r;
        for i in 0..4 {
            total[i] += counts[i];
        }
    }
    eprintln!("reads {reads}, L0 flushed {}, L1 written {}, images {}, GC'd {}", total[0], total[1], total[2], total[3]);
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
