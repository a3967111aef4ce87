//! Acceptance 2: crash consistency.
//!
//! Each run arms a simulated crash at a random crash point (inside layer
//! writes, index replacement, flush, compaction, image creation, GC, branch
//! creation), runs a random workload until the crash, drops all in-memory
//! state, reopens from disk, re-ingests from `disk_consistent_lsn` and checks
//! every read against the reference; then runs on without a crash and checks
//! again. No temp file may survive a reopen, and every file the index names
//! must exist.

mod repo_common;

use repo_common::*;
use storage::lsn::Lsn;
use storage::repo::index::IndexFile;
use storage::repo::{RepoError, Repository, TimelineId};

/// One step of the workload; returns a simulated crash as an error.
fn step(rng: &mut Rng, repo: &Repository, model: &mut Model, keys: &[storage::key::Key]) -> Result<(), RepoError> {
    let ids: Vec<TimelineId> = model.timelines.keys().copied().collect();
    let id = ids[rng.range(0, ids.len() as u64) as usize];
    let timeline = repo.get_timeline(id)?;
    match rng.range(0, 100) {
        0..=59 => model.random_put(rng, repo, id, keys)?,
        60..=74 => {
            timeline.writer().freeze()?;
            timeline.flush_frozen_layers()?;
        }
        75..=84 => {
            timeline.compact()?;
        }
        85..=94 => {
            let m = &model.timelines[&id];
            let cutoff = m.last_lsn.saturating_sub(rng.range(0, 400)).max(m.cutoff);
            // The model takes the new cutoff only once GC returned; a crash
            // inside leaves either cutoff, which `verify` accepts.
            model.timelines.get_mut(&id).unwrap().pending_cutoff = Some(cutoff);
            repo.gc_timeline_at(id, cutoff)?;
            let m = model.timelines.get_mut(&id).unwrap();
            m.cutoff = cutoff;
            m.pending_cutoff = None;
        }
        _ if model.timelines.len() < 4 => {
            let parent = &model.timelines[&id];
            let bp = Lsn(rng.range(parent.cutoff.max(parent.ancestor.map(|a| a.1).unwrap_or_default()).0, parent.last_lsn.0 + 1));
            let child = TimelineId(ids.iter().max().unwrap().0 + 1);
            model.pending_branch = Some((child, ModelTimeline { ancestor: Some((id, bp)), last_lsn: bp, ..Default::default() }));
            repo.branch_timeline(id, child, bp)?;
            let (child, m) = model.pending_branch.take().unwrap();
            model.timelines.insert(child, m);
        }
        _ => {}
    }
    Ok(())
}

/// After a reopen: the directory is clean, and the engine agrees with the model.
/// Odd runs without the page cache, so that every read walks the layers.
fn config(run: u64) -> storage::repo::RepoConfig {
    storage::repo::RepoConfig { page_cache_bytes: if run % 2 == 1 { 0 } else { 64 * 1024 }, ..small_config() }
}

fn recover_and_verify(dir: &std::path::Path, model: &mut Model, keys: &[storage::key::Key], rng: &mut Rng, run: u64) -> Repository {
    let repo = open(dir, config(run));
    // A branch whose creation was interrupted either exists completely or not at all.
    if let Some((child, m)) = model.pending_branch.take() {
        if repo.get_timeline(child).is_ok() {
            model.timelines.insert(child, m);
        }
    }
    let timelines_dir = dir.join("timelines");
    for entry in std::fs::read_dir(&timelines_dir).unwrap() {
        let tl_dir = entry.unwrap().path();
        let index = IndexFile::read(&tl_dir).unwrap();
        let mut files: Vec<String> =
            std::fs::read_dir(&tl_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(files.iter().all(|f| !f.ends_with(".tmp")), "temp files left in {}: {files:?}", tl_dir.display());
        files.retain(|f| f != "index");
        let mut named: Vec<String> = index.layers.iter().map(|(n, _)| n.file_name()).collect();
        files.sort();
        named.sort();
        assert_eq!(files, named, "files on disk differ from the index");
        for (name, size) in &index.layers {
            assert_eq!(std::fs::metadata(tl_dir.join(name.file_name())).unwrap().len(), *size);
        }
    }
    for (id, m) in model.timelines.iter_mut() {
        let cutoff = repo.get_timeline(*id).unwrap().gc_cutoff();
        match m.pending_cutoff.take() {
            Some(pending) if cutoff == pending => m.cutoff = pending,
            _ => assert_eq!(cutoff, m.cutoff, "GC cutoff of {id} after reopen"),
        }
    }
    model.reingest(&repo).unwrap();
    model.check_sampled(&repo, keys, 25, rng);
    repo
}

#[test]
fn crashes_lose_nothing() {
    let keys = key_pool();
    let runs = 220;
    let mut crashed_at = std::collections::BTreeMap::<String, usize>::new();
    for run in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng::new(1000 + run);
        let mut model = Model::default();
        let repo = open(dir.path(), config(run));
        repo.create_timeline(TimelineId(1)).unwrap();
        model.timelines.insert(TimelineId(1), ModelTimeline::default());
        // Warm up without crashes so that there is something to compact and GC.
        for _ in 0..rng.range(0, 60) {
            step(&mut rng, &repo, &mut model, &keys).unwrap();
        }
        repo.crash_points().arm(Some(rng.range(1, 25)));
        let mut crash = None;
        for _ in 0..200 {
            match step(&mut rng, &repo, &mut model, &keys) {
                Ok(()) => {}
                Err(RepoError::SimulatedCrash(point)) => {
                    crash = Some(point);
                    break;
                }
                Err(e) => panic!("run {run}: {e}"),
            }
        }
        if let Some(point) = crash {
            *crashed_at.entry(point.to_string()).or_default() += 1;
        }
        drop(repo);
        let repo = recover_and_verify(dir.path(), &mut model, &keys, &mut rng, run);
        for _ in 0..20 {
            step(&mut rng, &repo, &mut model, &keys).unwrap();
        }
        drop(repo);
        recover_and_verify(dir.path(), &mut model, &keys, &mut rng, run);
    }
    eprintln!("crash points hit: {crashed_at:?}");
    let crashes: usize = crashed_at.values().sum();
    assert!(crashes >= 200, "only {crashes} runs crashed");
    for point in [
        "layer: written under temp name",
        "layer: renamed",
        "index: written under temp name",
        "compaction: L1 layers written",
        "gc: layers chosen",
    ] {
        assert!(crashed_at.contains_key(point), "never crashed at {point}: {crashed_at:?}");
    }
}
