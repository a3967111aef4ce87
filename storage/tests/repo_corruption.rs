//! Acceptance 3: a damaged byte in a layer file makes the reads that touch it
//! fail with an error naming the file — never a panic, never wrong data.

mod repo_common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use repo_common::*;
use storage::repo::{LayerName, RepoError, TimelineId};

#[test]
fn flipped_bytes_are_reported_with_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let keys = key_pool();
    let mut rng = Rng::new(7);
    let mut model = Model::default();
    let root = TimelineId(1);
    {
        let mut conf = small_config();
        conf.image_creation_threshold = 1000; // deltas only: every entry is visited by some read
        let repo = open(dir.path(), conf);
        repo.create_timeline(root).unwrap();
        model.timelines.insert(root, ModelTimeline::default());
        let timeline = repo.get_timeline(root).unwrap();
        for round in 0..5 {
            for _ in 0..40 {
                model.random_put(&mut rng, &repo, root, &keys).unwrap();
            }
            timeline.writer().freeze().unwrap();
            timeline.flush_frozen_layers().unwrap();
            if round == 2 {
                assert!(timeline.compact().unwrap().l1_written > 0);
            }
        }
        model.check_all(&repo, &keys);
    }
    let tl_dir = dir.path().join("timelines").join(root.to_string());
    let layer_files: Vec<_> =
        std::fs::read_dir(&tl_dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.file_name().unwrap() != "index").collect();
    assert!(layer_files.len() >= 3);
    let mut failed_reads = 0;
    for trial in 0..60 {
        let path = &layer_files[trial % layer_files.len()];
        let len = std::fs::metadata(path).unwrap().len();
        // Header, trailer and block index too, not only block payloads.
        let offset = match trial % 4 {
            0 => rng.range(0, 64),
            1 => rng.range(len - 40, len),
            _ => rng.range(0, len),
        };
        let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, offset).unwrap();
        let flipped = [byte[0] ^ (1 << rng.range(0, 8))];
        file.write_all_at(&flipped, offset).unwrap();

        let repo = open(dir.path(), small_config());
        let timeline = repo.get_timeline(root).unwrap();
        let mut errors = 0;
        // At the top of the file's LSN range the walk visits every block of the
        // file holding the key read; add random LSNs for the "no wrong data" check.
        let name = LayerName::parse(&path.file_name().unwrap().to_string_lossy()).unwrap();
        let mut lsns = vec![name.lsn_range.end.saturating_sub(1u64).min(timeline.last_record_lsn())];
        let wal = &model.timelines[&root].wal;
        lsns.extend((0..10).map(|_| wal[rng.range(0, wal.len() as u64) as usize].0));
        for lsn in &lsns {
            for key in &keys {
                let expected = model.expected(root, *key, *lsn);
                match timeline.get(*key, *lsn) {
                    Ok(value) => {
                        assert_eq!(Expected::Value(value), expected, "wrong data after flipping byte {offset} of {}", path.display())
                    }
                    Err(RepoError::Corrupt { path: named, msg }) => {
                        assert_eq!(&named, path, "error names another file: {msg}");
                        let text = timeline.get(*key, *lsn).unwrap_err().to_string();
                        assert!(text.contains(&path.display().to_string()), "message does not name the file: {text}");
                        errors += 1;
                    }
                    Err(e) => panic!("unexpected error after flipping byte {offset} of {}: {e}", path.display()),
                }
            }
        }
        assert!(errors > 0, "flipping byte {offset} of {} went unnoticed", path.display());
        failed_reads += errors;
        drop(timeline);
        drop(repo);
        file.write_all_at(&byte, offset).unwrap();
    }
    eprintln!("{failed_reads} reads failed over 60 corruptions");
    // Restored files read correctly again.
    let repo = open(dir.path(), small_config());
    model.check_all(&repo, &keys);
}
