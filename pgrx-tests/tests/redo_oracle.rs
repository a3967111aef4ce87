//! PostgreSQL's own oracle for WAL redo: a stock primary (data checksums on)
//! with `wal_consistency_checking = all` runs the end-to-end workload of
//! every WAL-writing feature (`workloads/every_wal_feature.sql`) and
//! pgbench, and writes, with every page-level record, the
//! image each block must have after redo. The host's redo (through
//! `pageserver.redo_apply`) must produce exactly that page, both masked by
//! the resource manager's `rm_mask`. Also checks that redo flat out leaves
//! the host unharmed: its CHECKPOINT succeeds, its log has no errors, and no
//! file appears outside the scratch relations.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

mod common;

/// Records compared at least (issue: 100,000).
const MIN_COMPARED: u64 = 100_000;
const SCRATCH_DB_DIR: &str = "base/4000000000";

type BlockKey = (u32, u32, u32, u8, u32);

/// Relation files of the host outside the scratch database.
fn relation_files(data_dir: &Path) -> Result<BTreeSet<String>> {
    let mut files = BTreeSet::new();
    for top in ["base", "global"] {
        for entry in walk(&data_dir.join(top))? {
            let rel = entry.strip_prefix(data_dir)?.to_string_lossy().into_owned();
            if !rel.starts_with(SCRATCH_DB_DIR) && !rel.contains("pgsql_tmp") && !rel.ends_with("pg_internal.init") {
                files.insert(rel);
            }
        }
    }
    Ok(files)
}

fn walk(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

#[test]
fn redo_matches_wal_consistency_checking_images() -> Result<()> {
    // Data checksums on both: redo then stamps LSNs on hint-bit changes and
    // writes full-page images for hints, as PostgreSQL does.
    let primary = common::e2e::start_primary(
        true,
        &[("wal_consistency_checking", "all"), ("full_page_writes", "on"), ("max_wal_size", "4GB"), ("checkpoint_timeout", "1h")],
    )?;
    let host = common::e2e::start_host(true, &[])?;
    let files_before = relation_files(host.data_dir())?;

    let start = common::start_capture(&primary)?;
    // Every WAL-writing feature, as the end-to-end tests run it.
    common::e2e::run_workload(&primary, common::e2e::WORKLOAD)?;
    primary.run_as_postgres_checked("pgbench", &["-i", "-s", "3", "-q", "postgres"])?;
    primary.run_as_postgres_checked("pgbench", &["-c", "4", "-j", "2", "-T", "10", "postgres"])?;
    primary.sql("VACUUM")?;
    let end = common::end_capture(&primary)?;

    let mut client = host.client("postgres")?;
    let apply = client.prepare(
        "SELECT pageserver.mask_page($1, pageserver.redo_apply($2, $3, $4, $5, $6, $7, ARRAY[$8::bytea], ARRAY[$9::int8], ARRAY[$10::int8], true), $6), \
                pageserver.mask_page($1, $11, $6)",
    )?;

    // The latest known image of every block: the base for its next record.
    let mut pages: HashMap<BlockKey, Box<[u8; 8192]>> = HashMap::new();
    let mut compared: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut skipped_no_base, mut records) = (0u64, 0u64);
    let mut mismatches = Vec::new();
    common::for_each_record(&primary, start, end, |rec| {
        records += 1;
        for b in &rec.blocks {
            if b.image.is_none() {
                continue;
            }
            let key: BlockKey = (b.rel.spc_node, b.rel.db_node, b.rel.rel_node, b.fork(), b.blkno);
            let mut image = Box::new([0u8; 8192]);
            rec.restore_image(b, &mut image).map_err(|e| anyhow::anyhow!("{e}"))?;
            if !b.apply_image() {
                // A consistency-check image: the page as it must be after redo.
                let base = pages.get(&key);
                if base.is_none() && !b.will_init() {
                    skipped_no_base += 1;
                } else {
                    let row = client
                        .query_one(
                            &apply,
                            &[
                                &(rec.xl_rmid as i32),
                                &b.rel.spc_node,
                                &b.rel.db_node,
                                &b.rel.rel_node,
                                &(b.fork() as i32),
                                &(b.blkno as i64),
                                &base.map(|p| &p[..]),
                                &&rec.raw[..],
                                &(rec.start_lsn.0 as i64),
                                &(rec.end_lsn.0 as i64),
                                &&image[..],
                            ],
                        )
                        .with_context(|| {
                            format!("redo of {} record at {} block {key:?}", storage::wal::rmgr::name(rec.xl_rmid), rec.start_lsn)
                        })?;
                    let (ours, theirs): (Vec<u8>, Vec<u8>) = (row.get(0), row.get(1));
                    if ours != theirs {
                        let at = ours.iter().zip(&theirs).position(|(a, b)| a != b).unwrap_or(0);
                        mismatches.push(format!(
                            "{} at {} block {key:?}: first difference at byte {at}",
                            storage::wal::rmgr::name(rec.xl_rmid),
                            rec.start_lsn
                        ));
                    }
                    *compared.entry(storage::wal::rmgr::name(rec.xl_rmid)).or_default() += 1;
                    if compared.values().sum::<u64>() % 25_000 == 0 {
                        // The host checkpoints while redo runs flat out.
                        host.sql("CHECKPOINT")?;
                    }
                }
            }
            pages.insert(key, image);
        }
        Ok(())
    })?;

    let total: u64 = compared.values().sum();
    eprintln!("records decoded: {records}; block images compared per resource manager: {compared:?}; total {total}; skipped (no base yet): {skipped_no_base}");
    if !mismatches.is_empty() {
        bail!("{} mismatches, first: {:#?}", mismatches.len(), &mismatches[..mismatches.len().min(10)]);
    }
    assert!(total >= MIN_COMPARED, "only {total} images compared, want at least {MIN_COMPARED}");
    for rmgr in ["Heap", "Heap2", "Btree", "Hash", "Gin", "Gist", "SPGist", "BRIN", "Sequence"] {
        assert!(compared.get(rmgr).copied().unwrap_or(0) > 0, "no {rmgr} record compared: {compared:?}");
    }

    // The host is unharmed.
    host.sql("CHECKPOINT")?;
    let log = host.log();
    for bad in ["xlog flush request", "ERROR", "PANIC", "FATAL", "terminated by signal"] {
        let hits: Vec<&str> = log.lines().filter(|l| l.contains(bad)).collect();
        assert!(hits.is_empty(), "host log has {bad:?}: {hits:#?}");
    }
    let files_after = relation_files(host.data_dir())?;
    let new: Vec<_> = files_after.difference(&files_before).collect();
    assert!(new.is_empty(), "redo created files outside {SCRATCH_DB_DIR}: {new:?}");
    Ok(())
}
