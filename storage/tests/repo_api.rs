//! The timeline API: waiting for LSNs, directory reads, branch rules,
//! checkpoint triggers, PITR cutoff, and readers running against a writer,
//! flushes, compaction and GC on other threads.

mod repo_common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use repo_common::*;
use storage::key::{Key, RelTag, SlruKind};
use storage::lsn::Lsn;
use storage::repo::dirs::{encode_db_dir, encode_nblocks, encode_rel_dir, encode_u32_dir};
use storage::repo::{RepoConfig, RepoError, TimelineId};
use storage::value::Value;

#[test]
fn wait_lsn_wakes_up_and_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let repo = open(dir.path(), small_config());
    let timeline = repo.create_timeline(TimelineId(1)).unwrap();
    let err = timeline.wait_lsn(Lsn(0x100), Duration::from_millis(20)).unwrap_err();
    assert!(matches!(err, RepoError::WaitTimeout { .. }), "{err}");
    std::thread::scope(|s| {
        let waiter = s.spawn(|| timeline.wait_lsn(Lsn(0x100), Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        let mut writer = timeline.writer();
        writer.put(Key::checkpoint(), Lsn(0x100), Value::Image(Bytes::from_static(b"cp"))).unwrap();
        writer.finish_lsn(Lsn(0x100)).unwrap();
        drop(writer);
        waiter.join().unwrap().unwrap();
    });
    assert_eq!(timeline.get(Key::checkpoint(), Lsn(0x100)).unwrap().unwrap(), Bytes::from_static(b"cp"));
    assert_eq!(timeline.get(Key::checkpoint(), Lsn(0xff)).unwrap(), None);
}

#[test]
fn directory_reads() {
    let dir = tempfile::tempdir().unwrap();
    let repo = open(dir.path(), small_config());
    let timeline = repo.create_timeline(TimelineId(1)).unwrap();
    let rel = RelTag::new(1663, 5, 16384, 0);
    let fsm = rel.with_fork(1);
    let put = |lsn: u64, versions: Vec<(Key, Bytes)>| {
        let mut writer = timeline.writer();
        for (key, value) in versions {
            writer.put(key, Lsn(lsn), Value::Image(value)).unwrap();
        }
        writer.finish_lsn(Lsn(lsn)).unwrap();
    };
    put(0x10, vec![(Key::db_dir(), encode_db_dir(&BTreeSet::from([(1663, 5)])))]);
    put(0x20, vec![(Key::rel_dir(1663, 5), encode_rel_dir(&BTreeSet::from([(16384, 0)]))), (Key::rel_size(rel), encode_nblocks(3))]);
    put(
        0x30,
        vec![
            (Key::rel_dir(1663, 5), encode_rel_dir(&BTreeSet::from([(16384, 0), (16384, 1)]))),
            (Key::rel_size(fsm), encode_nblocks(1)),
            (Key::rel_size(rel), encode_nblocks(5)),
        ],
    );
    put(
        0x40,
        vec![
            (Key::slru_dir(SlruKind::Clog), encode_u32_dir(&BTreeSet::from([0]))),
            (Key::slru_segment_size(SlruKind::Clog, 0), encode_nblocks(2)),
            (Key::slru_block(SlruKind::Clog, 0, 1), Bytes::from(vec![0x55; 8192])),
        ],
    );
    timeline.writer().freeze().unwrap();
    timeline.flush_frozen_layers().unwrap();

    assert_eq!(timeline.list_dbs(Lsn(0x10)).unwrap(), vec![(1663, 5)]);
    assert_eq!(timeline.list_dbs(Lsn(0x0f)).unwrap(), vec![]);
    assert!(!timeline.rel_exists(rel, Lsn(0x1f)).unwrap());
    assert!(timeline.rel_exists(rel, Lsn(0x20)).unwrap());
    assert!(!timeline.rel_exists(fsm, Lsn(0x2f)).unwrap());
    assert!(timeline.rel_exists(fsm, Lsn(0x30)).unwrap());
    assert_eq!(timeline.list_rels(1663, 5, Lsn(0x30)).unwrap(), vec![rel, fsm]);
    assert_eq!(timeline.get_rel_size(rel, Lsn(0x2f)).unwrap(), Some(3));
    assert_eq!(timeline.get_rel_size(rel, Lsn(0x30)).unwrap(), Some(5));
    assert_eq!(timeline.db_size(1663, 5, Lsn(0x20)).unwrap(), 3 * 8192);
    assert_eq!(timeline.db_size(1663, 5, Lsn(0x30)).unwrap(), 6 * 8192);
    assert_eq!(timeline.list_slru_segments(SlruKind::Clog, Lsn(0x40)).unwrap(), vec![0]);
    let segment = timeline.get_slru_segment(SlruKind::Clog, 0, Lsn(0x40)).unwrap().unwrap();
    assert_eq!(segment.len(), 2 * 8192);
    assert!(segment[..8192].iter().all(|b| *b == 0) && segment[8192..].iter().all(|b| *b == 0x55));
    assert_eq!(timeline.get_slru_segment(SlruKind::Clog, 0, Lsn(0x3f)).unwrap(), None);
    // A dropped fork has no size, though its size key stays behind.
    put(0x50, vec![(Key::rel_dir(1663, 5), encode_rel_dir(&BTreeSet::from([(16384, 0)])))]);
    assert_eq!(timeline.get_rel_size(fsm, Lsn(0x4f)).unwrap(), Some(1));
    assert_eq!(timeline.get_rel_size(fsm, Lsn(0x50)).unwrap(), None);
    assert_eq!(timeline.db_size(1663, 5, Lsn(0x50)).unwrap(), 5 * 8192);
}

#[test]
fn writer_rules_and_checkpoint_triggers() {
    let dir = tempfile::tempdir().unwrap();
    let conf = RepoConfig { checkpoint_timeout: Duration::ZERO, ..small_config() };
    let repo = open(dir.path(), conf);
    let timeline = repo.create_timeline(TimelineId(1)).unwrap();
    let mut writer = timeline.writer();
    writer.put(Key::db_dir(), Lsn(0x20), Value::Image(Bytes::from_static(b"a"))).unwrap();
    // Versions at the pending LSN are visible to the writer, not yet to readers.
    assert_eq!(writer.get_latest(Key::db_dir()).unwrap().unwrap(), Bytes::from_static(b"a"));
    assert!(timeline.get(Key::db_dir(), Lsn(0x20)).is_err(), "read ahead of last_record_lsn answered");
    assert!(writer.freeze().is_err(), "froze in the middle of a record");
    assert!(writer.put(Key::db_dir(), Lsn(0x10), Value::Image(Bytes::new())).is_err());
    assert!(writer.finish_lsn(Lsn(0x20)).unwrap(), "checkpoint_timeout 0 did not freeze");
    assert!(writer.put(Key::db_dir(), Lsn(0x20), Value::Image(Bytes::new())).is_err(), "put at a finished LSN");
    // checkpoint_timeout 0: every finished LSN freezes.
    assert_eq!(timeline.frozen_layer_count(), 1);
    // WAL that changes nothing still moves disk_consistent_lsn.
    writer.finish_lsn(Lsn(0x80)).unwrap();
    writer.freeze().unwrap();
    drop(writer);
    timeline.flush_frozen_layers().unwrap();
    assert_eq!(timeline.disk_consistent_lsn(), Lsn(0x80));
    assert_eq!(timeline.layer_names().len(), 1);
}

#[test]
fn branch_rules_and_pitr() {
    let dir = tempfile::tempdir().unwrap();
    let conf = RepoConfig { pitr_interval: Duration::from_secs(3600), gc_horizon: 0x10, ..small_config() };
    let repo = open(dir.path(), conf);
    let timeline = repo.create_timeline(TimelineId(1)).unwrap();
    ingest(&timeline, Lsn(0x100), &[(Key::db_dir(), Value::Image(Bytes::from_static(b"x")))]).unwrap();
    // No ingest is an hour old: PITR keeps everything.
    assert_eq!(repo.gc_cutoff_for(&timeline, SystemTime::now()), Lsn(0));
    // An hour from now the horizon decides.
    let later = SystemTime::now() + Duration::from_secs(3601);
    assert_eq!(repo.gc_cutoff_for(&timeline, later), Lsn(0xf0));
    // The samples survive a restart (they are in the index).
    timeline.writer().freeze().unwrap();
    timeline.flush_frozen_layers().unwrap();
    drop(timeline);
    drop(repo);
    let repo = open(dir.path(), RepoConfig { pitr_interval: Duration::from_secs(3600), gc_horizon: 0x10, ..small_config() });
    let timeline = repo.get_timeline(TimelineId(1)).unwrap();
    assert_eq!(repo.gc_cutoff_for(&timeline, SystemTime::now()), Lsn(0));
    assert_eq!(repo.gc_cutoff_for(&timeline, later), Lsn(0xf0));
    assert!(repo.branch_timeline(TimelineId(1), TimelineId(2), Lsn(0x101)).is_err(), "branch ahead of the parent");
    assert!(repo.branch_timeline(TimelineId(9), TimelineId(2), Lsn(0x10)).is_err(), "branch of a missing timeline");
    repo.gc_timeline_at(TimelineId(1), Lsn(0x50)).unwrap();
    assert!(repo.branch_timeline(TimelineId(1), TimelineId(2), Lsn(0x4f)).is_err(), "branch below the GC cutoff");
    let child = repo.branch_timeline(TimelineId(1), TimelineId(2), Lsn(0x50)).unwrap();
    assert!(repo.branch_timeline(TimelineId(1), TimelineId(2), Lsn(0x60)).is_err(), "duplicate timeline id");
    assert!(repo.branch_timeline(TimelineId(2), TimelineId(3), Lsn(0x40)).is_err(), "below the parent's branch point");
    assert_eq!(child.last_record_lsn(), Lsn(0x50));
    assert_eq!(child.get(Key::db_dir(), Lsn(0x50)).unwrap(), None);
    let grandchild = repo.branch_timeline(TimelineId(1), TimelineId(3), Lsn(0x100)).unwrap();
    assert_eq!(grandchild.get(Key::db_dir(), Lsn(0x100)).unwrap().unwrap(), Bytes::from_static(b"x"));
    assert_eq!(repo.branch_points(TimelineId(1)), vec![Lsn(0x50), Lsn(0x100)]);
    // Reads on the child below the parent's cutoff are too old.
    assert!(matches!(child.get(Key::db_dir(), Lsn(0x40)), Err(RepoError::TooOld { .. })));
}

/// Readers on several threads while one thread ingests and another flushes,
/// compacts and collects garbage: every answer is the reference's or "too old"
/// (only below the cutoff in force after the read).
#[test]
fn concurrent_readers_writer_and_background_work() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_pool();
    let mut rng = Rng::new(5);
    let mut model = Model::default();
    let root = TimelineId(1);
    model.timelines.insert(root, ModelTimeline::default());
    // Build the whole WAL in the model first (a scratch repository takes the puts).
    {
        let scratch = tempfile::tempdir().unwrap();
        let scratch_repo = open(scratch.path(), small_config());
        scratch_repo.create_timeline(root).unwrap();
        for _ in 0..1500 {
            model.random_put(&mut rng, &scratch_repo, root, &keys).unwrap();
        }
    }
    let repo = open(dir.path(), small_config());
    let timeline = repo.create_timeline(root).unwrap();
    let done = AtomicBool::new(false);
    let model = Arc::new(model);
    std::thread::scope(|s| {
        s.spawn(|| {
            for (lsn, versions) in &model.timelines[&root].wal {
                ingest(&timeline, *lsn, versions).unwrap();
            }
            done.store(true, Ordering::SeqCst);
        });
        s.spawn(|| {
            let mut rng = Rng::new(6);
            while !done.load(Ordering::SeqCst) {
                timeline.flush_frozen_layers().unwrap();
                timeline.compact().unwrap();
                let cutoff = timeline.last_record_lsn().saturating_sub(rng.range(200, 3000));
                repo.gc_timeline_at(root, cutoff).unwrap();
            }
        });
        for reader in 0..2 {
            let (timeline, model, keys, done) = (&timeline, &model, &keys, &done);
            s.spawn(move || {
                let mut rng = Rng::new(100 + reader);
                let mut checked = 0;
                while !done.load(Ordering::SeqCst) || checked < 2000 {
                    let last = timeline.last_record_lsn();
                    let lsn = Lsn(rng.range(0, last.0 + 1));
                    let key = keys[rng.range(0, keys.len() as u64) as usize];
                    let want = match model.expected(root, key, lsn) {
                        Expected::Value(v) => v,
                        Expected::TooOld => unreachable!(),
                    };
                    match timeline.get(key, lsn) {
                        Ok(have) => assert_eq!(have, want, "{key:?} at {lsn}"),
                        Err(RepoError::TooOld { cutoff, .. }) => {
                            assert!(lsn < cutoff && cutoff <= timeline.gc_cutoff())
                        }
                        Err(e) => panic!("{e}"),
                    }
                    checked += 1;
                }
            });
        }
    });
    assert!(timeline.layer_names().len() > 1);
}

#[test]
fn image_creation_counts_only_deltas_that_hold_a_partitions_keys() {
    let dir = tempfile::tempdir().unwrap();
    // No L0 → L1 merge here: image creation alone, over L0 layers.
    let repo = open(dir.path(), RepoConfig { compaction_threshold: 1000, ..small_config() });
    let timeline = repo.create_timeline(TimelineId(1)).unwrap();
    let rel = RelTag::new(1663, 5, 16384, 0);
    // 48 KiB partitions of 8 KiB pages: 6 keys each, 10 partitions.
    let keys: Vec<Key> = (0..60).map(|blkno| Key::rel_block(rel, blkno)).collect();
    let page = |lsn: u64, key: usize| Bytes::from(vec![(lsn >> 8) as u8 ^ key as u8; 64]);
    let write_layer = |lsn: u64, which: &[usize]| {
        let versions: Vec<(Key, Value)> = which.iter().map(|&k| (keys[k], Value::Image(page(lsn, k)))).collect();
        ingest(&timeline, Lsn(lsn), &versions).unwrap();
        timeline.writer().freeze().unwrap();
        timeline.flush_frozen_layers().unwrap();
    };
    let all: Vec<usize> = (0..keys.len()).collect();
    write_layer(0x100, &all);
    write_layer(0x200, &all);
    assert_eq!(timeline.create_image_layers().unwrap(), 10, "two full deltas reach depth 2 everywhere");

    // A new key that sorts first moves every partition's boundaries by one
    // key; the images at 0x200 still cover each, two of them together.
    let first = Key::rel_block(RelTag::new(1663, 5, 16383, 0), 0);
    ingest(&timeline, Lsn(0x280), &[(first, Value::Image(Bytes::from_static(b"new")))]).unwrap();
    timeline.writer().freeze().unwrap();
    timeline.flush_frozen_layers().unwrap();
    assert_eq!(timeline.create_image_layers().unwrap(), 0, "one new delta is below the threshold everywhere");

    // Three small layers, each changing the first and the last key: each
    // one's key range (and its single block) spans every partition.
    for lsn in [0x300, 0x400, 0x500] {
        write_layer(lsn, &[0, 59]);
    }
    let spanning = timeline.layer_names().iter().filter(|n| !n.is_image() && n.lsn_range.start > Lsn(0x280)).count();
    assert_eq!(spanning, 3, "{:#?}", timeline.layer_names());
    assert_eq!(timeline.create_image_layers().unwrap(), 2, "only the first and the last partition have new versions");
    assert_eq!(timeline.get(first, Lsn(0x500)).unwrap(), Some(Bytes::from_static(b"new")));
    for (k, key) in keys.iter().enumerate() {
        let lsn = if k == 0 || k == 59 { 0x500 } else { 0x200 };
        assert_eq!(timeline.get(*key, Lsn(0x500)).unwrap(), Some(page(lsn, k)), "key {k}");
    }
}

#[test]
fn images_come_at_least_every_image_layer_distance_of_wal() {
    let dir = tempfile::tempdir().unwrap();
    // Never by depth here: by distance alone.
    let conf = RepoConfig { compaction_threshold: 1000, image_creation_threshold: 1000, image_layer_distance: 0x300, ..small_config() };
    let repo = open(dir.path(), conf);
    let timeline = repo.create_timeline(TimelineId(1)).unwrap();
    let rel = RelTag::new(1663, 5, 16384, 0);
    let keys: Vec<Key> = (0..12).map(|blkno| Key::rel_block(rel, blkno)).collect();
    let write_layer = |lsn: u64, which: &[usize]| {
        let versions: Vec<(Key, Value)> = which.iter().map(|&k| (keys[k], Value::Image(Bytes::from(vec![lsn as u8; 64])))).collect();
        ingest(&timeline, Lsn(lsn), &versions).unwrap();
        timeline.writer().freeze().unwrap();
        timeline.flush_frozen_layers().unwrap();
    };
    let all: Vec<usize> = (0..keys.len()).collect();
    write_layer(0x100, &all);
    write_layer(0x200, &all);
    assert_eq!(timeline.create_image_layers().unwrap(), 0, "0x100 of WAL since the oldest delta");
    write_layer(0x400, &all);
    assert_eq!(timeline.create_image_layers().unwrap(), 2, "0x300 since the oldest delta: both partitions");
    write_layer(0x500, &[0]);
    write_layer(0x600, &[0]);
    assert_eq!(timeline.create_image_layers().unwrap(), 0, "0x200 since the images");
    write_layer(0x700, &[0]);
    assert_eq!(timeline.create_image_layers().unwrap(), 1, "0x300 since the images, new versions in the first partition only");
    let images: Vec<Lsn> = timeline.layer_names().iter().filter(|n| n.is_image()).map(|n| n.image_lsn()).collect();
    assert_eq!(images.iter().filter(|l| **l == Lsn(0x700)).count(), 1, "{images:?}");
    for (k, key) in keys.iter().enumerate() {
        let lsn = if k == 0 { 0x700 } else { 0x400 };
        assert_eq!(timeline.get(*key, Lsn(0x700)).unwrap(), Some(Bytes::from(vec![lsn as u8; 64])), "key {k}");
    }
}

/// With `data_checksums`, every relation page a read returns verifies, be it
/// a stored image (a full-page image carries a stale checksum) or a page
/// rebuilt by redo; other keys and new pages are returned as stored.
#[test]
fn reads_stamp_relation_pages_with_valid_checksums() {
    use storage::checksum::{page_checksum_is_valid, stored_checksum};
    let dir = tempfile::tempdir().unwrap();
    let repo = open(dir.path(), RepoConfig { data_checksums: true, ..small_config() });
    let timeline = repo.create_timeline(TimelineId(1)).unwrap();
    let rel = RelTag::new(1663, 5, 16384, 0);
    let mut image = vec![0u8; 8192];
    image[12..14].copy_from_slice(&24u16.to_le_bytes()); // pd_lower
    image[14..16].copy_from_slice(&8000u16.to_le_bytes()); // pd_upper: not a new page
    image[8] = 0x6d; // a stale pd_checksum
    image[8000..8010].copy_from_slice(b"tuple data");
    let mut writer = timeline.writer();
    writer.put(Key::rel_block(rel, 3), Lsn(0x100), Value::Image(Bytes::from(image.clone()))).unwrap();
    writer.put(Key::rel_block(rel, 4), Lsn(0x100), Value::Image(Bytes::from(vec![0u8; 8192]))).unwrap();
    writer.put(Key::relmap_file(1663, 5), Lsn(0x100), Value::Image(Bytes::from(image.clone()))).unwrap();
    writer.finish_lsn(Lsn(0x100)).unwrap();
    writer.put(Key::rel_block(rel, 3), Lsn(0x200), test_record(false, 8100, b"redo")).unwrap();
    writer.finish_lsn(Lsn(0x200)).unwrap();
    drop(writer);
    // A bulk read (first, so that nothing comes from the page cache) stamps
    // them: the stored image (no redo) and the page rebuilt by redo alike.
    let keys = [Key::rel_block(rel, 3), Key::rel_block(rel, 4)];
    for lsn in [Lsn(0x100), Lsn(0x200)] {
        let pages = timeline.get_many(&keys, lsn).unwrap();
        let page: &[u8; 8192] = pages[0].as_deref().unwrap().try_into().unwrap();
        assert!(page_checksum_is_valid(page, 3), "block 3 at {lsn}, bulk read");
        assert!(pages[1].as_ref().unwrap().iter().all(|b| *b == 0));
    }
    for lsn in [Lsn(0x100), Lsn(0x200), Lsn(0x200)] {
        let page = timeline.get(Key::rel_block(rel, 3), lsn).unwrap().unwrap();
        let page: &[u8; 8192] = page.as_ref().try_into().unwrap();
        assert!(page_checksum_is_valid(page, 3), "block 3 at {lsn}");
        assert_eq!(page[8000..8010], image[8000..8010]);
    }
    assert_eq!(timeline.get(Key::rel_block(rel, 3), Lsn(0x200)).unwrap().unwrap()[8100..8104], *b"redo");
    assert!(timeline.get(Key::rel_block(rel, 4), Lsn(0x200)).unwrap().unwrap().iter().all(|b| *b == 0));
    let relmap = timeline.get(Key::relmap_file(1663, 5), Lsn(0x200)).unwrap().unwrap();
    assert_eq!(stored_checksum(&relmap), 0x6d, "not a relation page: returned as stored");
}

#[test]
fn retuned_settings_take_effect_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let conf = RepoConfig { checkpoint_timeout: Duration::from_secs(3600), checkpoint_distance: 1 << 30, ..small_config() };
    let repo = open(dir.path(), conf.clone());
    let timeline = repo.create_timeline(TimelineId(1)).unwrap();
    let put = |lsn: u64| {
        let mut writer = timeline.writer();
        writer.put(Key::db_dir(), Lsn(lsn), Value::Image(Bytes::from_static(b"a"))).unwrap();
        writer.finish_lsn(Lsn(lsn)).unwrap()
    };
    assert!(!put(0x20), "froze under a 1 GiB checkpoint distance");
    // A tenant's override: freeze after 16 bytes of WAL, keep no history.
    repo.retune(&RepoConfig { checkpoint_distance: 16, gc_horizon: 0, ..conf.clone() });
    assert_eq!(repo.tuned().checkpoint_distance, 16);
    assert_eq!(repo.config().checkpoint_distance, 1 << 30, "the base settings stay");
    assert!(put(0x40), "the new checkpoint distance did not freeze");
    assert_eq!(repo.gc_cutoff_for(&timeline, SystemTime::now()), Lsn(0x40));
    repo.retune(&conf);
    assert!(!put(0x60));
}
