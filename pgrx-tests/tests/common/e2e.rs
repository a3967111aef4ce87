//! End-to-end checks shared by the e2e tests: a primary and a host with data
//! checksums on or off, the workload of `workloads/every_wal_feature.sql`,
//! and the two oracles that nobody here wrote:
//!
//! - [`compare_pages`]: after `CHECKPOINT` on the primary, every block of
//!   every WAL-logged fork (main, visibility map, init) in its data directory
//!   equals GetPage at the checkpoint's LSN (masked by the resource manager's
//!   `rm_mask` where raw bytes differ: hint bits); Exists and Nblocks agree
//!   for every fork; the SLRU segments read through GetSlruSegment equal the
//!   primary's `pg_xact`, `pg_multixact/offsets` and `pg_multixact/members`
//!   files; with checksums on, every page served carries a valid checksum
//!   (and so does every page of the primary, checking the checksum code).
//!   Differences PostgreSQL itself allows are counted per named rule, never
//!   masked away silently.
//! - [`check_fullbackup`]: the `fullbackup` tar at an LSN passes
//!   `pg_checksums --check` (checksums on), a stock PostgreSQL 15 starts from
//!   it, `pg_amcheck --heapallindexed` is clean and `pg_dumpall` equals the
//!   primary's taken at that LSN.
#![allow(dead_code)]

use anyhow::{bail, ensure, Context, Result};
use pageserver_harness::{ClusterConfig, PgCluster};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use storage::checksum::page_checksum_is_valid;
use storage::key::{RelTag, SlruKind};
use storage::lsn::Lsn;
use storage::pagestream::{ProtocolVersion, Request, RequestHeader, Response};
use tools::pagestream_client::BlockingClient;

pub const WORKLOAD: &str = include_str!("../../workloads/every_wal_feature.sql");
/// Databases the workload creates with `CREATE DATABASE ... STRATEGY
/// wal_log`: PostgreSQL copies their visibility maps into the WAL as standard
/// pages (`log_newpage_buffer(.., true)`), whose "hole" between `pd_lower`
/// and `pd_upper` is the whole map, so the bits never reach the WAL and its
/// own redo yields maps with no bit set. The page server's map pages there
/// must hold a subset of the primary's bits and nothing else different.
const WAL_LOG_DATABASES: [&str; 1] = ["db_wal_log"];
const BLCKSZ: usize = 8192;
const BLOCKS_PER_SEGMENT: u32 = 131072;
/// The SP-GiST resource manager, and where its metapage keeps the
/// `lastUsedPages` cache (after the page header and the magic number: 8
/// entries of block number and free space).
const SPGIST: i32 = 16;
const SPGIST_LUP_CACHE: std::ops::Range<usize> = 28..28 + 8 * 8;

/// Settings every e2e primary gets: no autovacuum (its truncations would race
/// the comparisons), prepared transactions for the workload.
const PRIMARY_SETTINGS: [(&str, &str); 3] = [("autovacuum", "off"), ("max_prepared_transactions", "10"), ("max_wal_size", "1GB")];

/// An integer from the environment (test scale knobs), or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A primary with `data_checksums` as asked, plus `settings`.
pub fn start_primary(checksums: bool, settings: &[(&str, &str)]) -> Result<PgCluster> {
    let mut config = ClusterConfig::primary(&PRIMARY_SETTINGS);
    for (k, v) in settings {
        config = config.setting(k, v);
    }
    if checksums {
        config = config.initdb_arg("--data-checksums");
    }
    PgCluster::start(config)
}

/// A host with `data_checksums` as asked (it must equal the primary's) and
/// the extension created.
pub fn start_host(checksums: bool, settings: &[(&str, &str)]) -> Result<PgCluster> {
    start_host_with_env(checksums, settings, &[])
}

/// ... with environment variables for the host's server (`PGPASSFILE`).
pub fn start_host_with_env(checksums: bool, settings: &[(&str, &str)], env: &[(&str, &str)]) -> Result<PgCluster> {
    let mut config = ClusterConfig::host(settings);
    for (k, v) in env {
        config = config.env(k, v);
    }
    if checksums {
        config = config.initdb_arg("--data-checksums");
    }
    let host = PgCluster::start(config)?;
    host.sql("CREATE EXTENSION pageserver_ext")?;
    Ok(host)
}

/// Settings of a host that backs up to object storage at `url` (with
/// `options`) and makes small layers (`checkpoint_distance` 2MB, frozen
/// after 2 s) and a layers-worker pass every second, so that uploads,
/// compaction and the deletions it causes all happen within a test. Later
/// entries a test appends override these.
pub fn remote_host_settings<'a>(url: &'a str, options: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("pageserver.remote_storage", url),
        ("pageserver.remote_storage_options", options),
        ("pageserver.checkpoint_distance", "2MB"),
        ("pageserver.checkpoint_timeout", "2s"),
        ("pageserver.compaction_threshold", "3"),
        ("pageserver.compaction_period", "1s"),
    ]
}

/// ... and GC that keeps only the last 4 MB of WAL (no PITR window), so
/// that GC drops layers too.
pub fn remote_host_settings_with_gc<'a>(url: &'a str, options: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut settings = remote_host_settings(url, options);
    settings.extend([("pageserver.gc_horizon", "4MB"), ("pageserver.pitr_interval", "0")]);
    settings
}

/// A new tenant and a timeline streaming from `primary`.
pub fn create_timeline(host: &PgCluster, primary: &PgCluster) -> Result<(String, String)> {
    let tenant = host.sql_one("SELECT pageserver.create_tenant()")?.context("tenant")?;
    let timeline =
        host.sql_one(&format!("SELECT pageserver.create_timeline('{tenant}', '{}')", primary.connstr("postgres")))?.context("timeline")?;
    Ok((tenant, timeline))
}

pub fn lsn_of(pg: &PgCluster, sql: &str) -> Result<Lsn> {
    pg.sql_one(sql)?.context("no LSN")?.parse().map_err(|_| anyhow::anyhow!("bad LSN"))
}

/// Waits until the timeline has ingested `lsn`.
pub fn wait_ingested(host: &PgCluster, timeline: &str, lsn: Lsn) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let row = host.sql(&format!(
            "SELECT last_record_lsn, state, coalesce(last_error, '') FROM pageserver.timelines() WHERE timeline_id = '{timeline}'"
        ))?;
        let row = row.first().context("timeline not listed")?;
        let at: Lsn = row[0].as_deref().unwrap_or("0/0").parse().map_err(|_| anyhow::anyhow!("bad LSN"))?;
        if at >= lsn {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timeline {timeline} at {at} ({:?}) did not reach {lsn}\n{}", &row[1..], host.log_tail(40));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs the workload script on `primary` (see the script's header for its
/// directives). Returns the number of statements run.
pub fn run_workload(primary: &PgCluster, script: &str) -> Result<usize> {
    let mut clients: HashMap<String, postgres::Client> = HashMap::new();
    let mut db = "postgres".to_string();
    let mut statement = String::new();
    let mut count = 0;
    for line in script.lines() {
        let trimmed = line.trim();
        if statement.is_empty() && (trimmed.is_empty() || trimmed.starts_with("--")) {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix("\\connect ") {
            db = name.trim().to_string();
            continue;
        }
        if let Some(args) = trimmed.strip_prefix("\\concurrent_key_share ") {
            let (table, id) = args.split_once(' ').context("\\concurrent_key_share TABLE ID")?;
            concurrent_key_share(primary, &db, table, &format!("id = {id}"))?;
            count += 1;
            continue;
        }
        statement.push_str(line);
        statement.push('\n');
        if trimmed.ends_with(';') {
            let client = match clients.entry(db.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(primary.client(&db)?),
            };
            client.batch_execute(&statement).with_context(|| format!("workload statement on {db}: {statement}"))?;
            statement.clear();
            count += 1;
        }
    }
    ensure!(statement.trim().is_empty(), "workload ends inside a statement: {statement}");
    Ok(count)
}

/// Two sessions lock the rows of `table` matching `condition` FOR KEY
/// SHARE at the same time: PostgreSQL records both lockers of each row in
/// a new multixact.
pub fn concurrent_key_share(primary: &PgCluster, db: &str, table: &str, condition: &str) -> Result<()> {
    let lock = format!("SELECT 1 FROM {table} WHERE {condition} FOR KEY SHARE");
    let mut first = primary.client(db)?;
    first.batch_execute(&format!("BEGIN; {lock}"))?;
    primary.client(db)?.batch_execute(&lock)?;
    first.batch_execute("COMMIT")?;
    Ok(())
}

/// `rm_mask` resource manager per relation kind and access method.
fn rmgr_for(am: Option<&str>, relkind: &str) -> i32 {
    match (am, relkind) {
        (_, "S") => 15,
        (Some("btree"), _) => 11,
        (Some("hash"), _) => 12,
        (Some("gin"), _) => 13,
        (Some("gist"), _) => 14,
        (Some("spgist"), _) => 16,
        (Some("brin"), _) => 17,
        _ => 10,
    }
}

/// One relation of the primary, with the forks it has on disk (blocks per fork).
struct Relation {
    spc: u32,
    db: u32,
    node: u32,
    forks: BTreeMap<u8, u32>,
    dir: PathBuf,
    rmgr: i32,
    /// `pg_class.relkind`, `?` if the catalog does not name the file.
    relkind: char,
    /// Its database was created with `STRATEGY wal_log` (see [`WAL_LOG_DATABASES`]).
    in_wal_log_database: bool,
}

impl Relation {
    fn tag(&self, fork: u8) -> RelTag {
        RelTag::new(self.spc, self.db, self.node, fork)
    }
    fn unlogged(&self) -> bool {
        self.forks.contains_key(&3)
    }
    fn path(&self, fork: u8) -> PathBuf {
        let suffix = ["", "_fsm", "_vm", "_init"][fork as usize];
        self.dir.join(format!("{}{suffix}", self.node))
    }
}

/// Every relation in the primary's data directory (default tablespaces).
fn relations(primary: &PgCluster) -> Result<Vec<Relation>> {
    let data = primary.data_dir();
    let mut kinds: HashMap<(u32, u32, u32), (i32, char)> = HashMap::new();
    let mut wal_log_dbs = HashSet::new();
    for db in primary.sql("SELECT oid, datname FROM pg_database WHERE datallowconn")? {
        let (oid, name) = (db[0].clone().unwrap(), db[1].clone().unwrap());
        if WAL_LOG_DATABASES.contains(&name.as_str()) {
            wal_log_dbs.insert(oid.parse::<u32>()?);
        }
        let rows = primary.sql_db(
            &name,
            "SELECT pg_relation_filenode(c.oid), c.relisshared, c.relkind::text, am.amname::text \
             FROM pg_class c LEFT JOIN pg_am am ON am.oid = c.relam WHERE pg_relation_filenode(c.oid) IS NOT NULL",
        )?;
        for r in rows {
            let node: u32 = r[0].as_deref().unwrap().parse()?;
            let shared = r[1].as_deref() == Some("t");
            let (spc, dbo) = if shared { (1664, 0) } else { (1663, oid.parse()?) };
            let relkind = r[2].as_deref().unwrap_or("r");
            kinds.insert((spc, dbo, node), (rmgr_for(r[3].as_deref(), relkind), relkind.chars().next().unwrap_or('?')));
        }
    }
    let mut dirs = vec![(1664u32, 0u32, data.join("global"))];
    for entry in std::fs::read_dir(data.join("base"))? {
        let entry = entry?;
        if let Ok(db) = entry.file_name().to_string_lossy().parse::<u32>() {
            dirs.push((1663, db, entry.path()));
        }
    }
    let mut out = Vec::new();
    for (spc, db, dir) in dirs {
        let mut rels: BTreeMap<u32, BTreeMap<u8, u64>> = BTreeMap::new();
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let base = name.split('.').next().unwrap();
            let (node, fork) = match base.split_once('_') {
                None => (base, 0u8),
                Some((n, "fsm")) => (n, 1),
                Some((n, "vm")) => (n, 2),
                Some((n, "init")) => (n, 3),
                _ => continue,
            };
            let Ok(node) = node.parse::<u32>() else { continue };
            *rels.entry(node).or_default().entry(fork).or_default() += std::fs::metadata(dir.join(&name))?.len();
        }
        for (node, forks) in rels {
            let (rmgr, relkind) = kinds.get(&(spc, db, node)).copied().unwrap_or((10, '?'));
            let forks = forks.into_iter().map(|(f, bytes)| (f, (bytes / BLCKSZ as u64) as u32)).collect();
            out.push(Relation { spc, db, node, forks, dir: dir.clone(), rmgr, relkind, in_wal_log_database: wal_log_dbs.contains(&db) });
        }
    }
    Ok(out)
}

fn read_block(prefix: &Path, blkno: u32) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let seg = blkno / BLOCKS_PER_SEGMENT;
    let path = if seg == 0 { prefix.to_path_buf() } else { PathBuf::from(format!("{}.{seg}", prefix.display())) };
    let mut f = std::fs::File::open(&path).with_context(|| path.display().to_string())?;
    f.seek(SeekFrom::Start((blkno % BLOCKS_PER_SEGMENT) as u64 * BLCKSZ as u64))?;
    let mut page = vec![0u8; BLCKSZ];
    f.read_exact(&mut page)?;
    Ok(page)
}

/// `(last_value, log_cnt, is_called)` of a sequence page's one tuple.
fn sequence_values(page: &[u8]) -> Option<(i64, i64, bool)> {
    let lp = u32::from_le_bytes(page.get(24..28)?.try_into().ok()?);
    let off = (lp & 0x7FFF) as usize;
    let hoff = *page.get(off + 22)? as usize;
    let data = page.get(off + hoff..off + hoff + 17)?;
    Some((i64::from_le_bytes(data[0..8].try_into().ok()?), i64::from_le_bytes(data[8..16].try_into().ok()?), data[16] != 0))
}

/// True if two visibility-map pages differ only in `pd_checksum` and in map
/// bits that `ours` lacks.
fn vm_bits_are_a_subset(ours: &[u8], theirs: &[u8]) -> bool {
    const MAP_START: usize = 24;
    let header_equal = (0..MAP_START).filter(|i| !(8..10).contains(i)).all(|i| ours[i] == theirs[i]);
    header_equal && ours[MAP_START..].iter().zip(&theirs[MAP_START..]).all(|(o, t)| o & !t == 0)
}

/// What [`compare_pages`] saw.
#[derive(Default, Debug)]
pub struct PageReport {
    pub forks: u64,
    pub blocks: u64,
    pub raw_equal: u64,
    pub masked_equal: u64,
    /// Differences PostgreSQL allows, per rule.
    pub allowed: BTreeMap<&'static str, u64>,
    pub checksums_checked: u64,
    pub slru_pages: u64,
    pub mismatches: Vec<String>,
}

impl PageReport {
    fn mismatch(&mut self, what: String) {
        if self.mismatches.len() < 200 {
            self.mismatches.push(what);
        }
    }
    fn allow(&mut self, rule: &'static str) {
        *self.allowed.entry(rule).or_default() += 1;
    }
    pub fn ensure_clean(&self) -> Result<()> {
        eprintln!(
            "{} forks, {} blocks: {} equal, {} equal after masking, allowed differences {:?}; {} checksums verified; {} SLRU pages",
            self.forks, self.blocks, self.raw_equal, self.masked_equal, self.allowed, self.checksums_checked, self.slru_pages
        );
        ensure!(
            self.mismatches.is_empty(),
            "{} mismatches:\n{}",
            self.mismatches.len(),
            self.mismatches.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
        );
        Ok(())
    }
}

fn rel_name(rel: &RelTag) -> String {
    format!("{}/{}/{} fork {}", rel.spc_node, rel.db_node, rel.rel_node, rel.fork)
}

/// `CHECKPOINT` on the primary, waits until the host has ingested up to
/// there, and compares every block ([`compare_pages`]); fails on any
/// mismatch or if fewer than 100 blocks were compared.
pub fn compare_after_checkpoint(
    primary: &PgCluster,
    host: &PgCluster,
    tenant: &str,
    timeline: &str,
    checksums: bool,
) -> Result<PageReport> {
    primary.sql("CHECKPOINT")?;
    let end = lsn_of(primary, "SELECT pg_current_wal_lsn()")?;
    wait_ingested(host, timeline, end)?;
    let report = compare_pages(primary, host, tenant, timeline, end, checksums)?;
    report.ensure_clean()?;
    ensure!(report.blocks > 100, "only {} blocks compared", report.blocks);
    Ok(report)
}

/// Compares the primary's files, right after its `CHECKPOINT` at `lsn` (no
/// writes since), with the page server's answers at `lsn`.
pub fn compare_pages(primary: &PgCluster, host: &PgCluster, tenant: &str, timeline: &str, lsn: Lsn, checksums: bool) -> Result<PageReport> {
    let addr = host.listener_addr().context("listener")?.to_string();
    let mut client = BlockingClient::connect(&addr, ProtocolVersion::V3, tenant, timeline)?;
    let mut masker = host.client("postgres")?;
    let hdr = RequestHeader { reqid: 0, request_lsn: lsn, not_modified_since: lsn };
    let mut report = PageReport::default();
    for rel in relations(primary)? {
        for fork in 0u8..=3 {
            let tag = rel.tag(fork);
            let on_primary = rel.forks.get(&fork).copied();
            let exists = match client.request(Request::Exists { hdr, rel: tag })? {
                Response::Exists { exists, .. } => exists,
                other => bail!("Exists {}: {other:?}", rel_name(&tag)),
            };
            // Forks PostgreSQL does not WAL-log: the FSM (a hint, created
            // and extended without WAL) and every fork of an unlogged
            // relation but its init fork.
            if fork == 1 {
                if exists != on_primary.is_some() {
                    report.allow("FSM fork existence (the FSM is not WAL-logged)");
                }
                continue;
            }
            if rel.unlogged() && fork != 3 {
                if exists != on_primary.is_some() {
                    report.allow("unlogged relation's main or VM fork (not WAL-logged)");
                }
                continue;
            }
            if fork == 2 && !exists && on_primary.is_some() && rel.relkind == 'm' {
                // REFRESH MATERIALIZED VIEW inserts frozen tuples and sets
                // their map bits without WAL (XLH_INSERT_ALL_FROZEN_SET
                // redo sets only PD_ALL_VISIBLE): a standby has no map either.
                report.allow("materialized view's VM set without WAL by REFRESH");
                continue;
            }
            if exists != on_primary.is_some() {
                report.mismatch(format!("{}: exists {} on the primary, {exists} on the page server", rel_name(&tag), on_primary.is_some()));
                continue;
            }
            let Some(nblocks) = on_primary else { continue };
            let n = match client.request(Request::Nblocks { hdr, rel: tag })? {
                Response::Nblocks { n, .. } => n,
                other => bail!("Nblocks {}: {other:?}", rel_name(&tag)),
            };
            if n != nblocks {
                report.mismatch(format!("{}: {nblocks} blocks on the primary, {n} on the page server", rel_name(&tag)));
                continue;
            }
            report.forks += 1;
            compare_fork(&mut client, &mut masker, &rel, fork, hdr, checksums, &mut report)?;
        }
    }
    compare_slrus(primary, &mut client, hdr, &mut report)?;
    let _ = client.close();
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn compare_fork(
    client: &mut BlockingClient,
    masker: &mut postgres::Client,
    rel: &Relation,
    fork: u8,
    hdr: RequestHeader,
    checksums: bool,
    report: &mut PageReport,
) -> Result<()> {
    const DEPTH: u32 = 32;
    let tag = rel.tag(fork);
    let n = rel.forks[&fork];
    let (mut next, mut done) = (0u32, 0u32);
    while done < n {
        while next < n && next - done < DEPTH {
            client.queue(Request::GetPage { hdr, rel: tag, blkno: next });
            next += 1;
        }
        client.flush()?;
        let page = match client.recv()? {
            Response::GetPage { page, .. } => page,
            other => bail!("GetPage {} {done}: {other:?}", rel_name(&tag)),
        };
        let blkno = done;
        done += 1;
        report.blocks += 1;
        let expected = read_block(&rel.path(fork), blkno)?;
        if checksums {
            let (ours, theirs): (&[u8; BLCKSZ], &[u8; BLCKSZ]) = (page.as_ref().try_into()?, expected.as_slice().try_into()?);
            ensure!(
                page_checksum_is_valid(theirs, blkno),
                "the primary's {} block {blkno} fails our checksum check: the checksum code is wrong",
                rel_name(&tag)
            );
            if !page_checksum_is_valid(ours, blkno) {
                report.mismatch(format!("{} block {blkno}: invalid checksum from the page server", rel_name(&tag)));
            }
            report.checksums_checked += 1;
        }
        if expected[..] == page[..] {
            report.raw_equal += 1;
            continue;
        }
        let rmgr = if fork == 2 { 10 } else { rel.rmgr };
        let row = masker.query_one(
            "SELECT pageserver.mask_page($1, $2, $4) = pageserver.mask_page($1, $3, $4)",
            &[&rmgr, &expected, &page.to_vec(), &(blkno as i64)],
        )?;
        if row.get::<_, bool>(0) && fork != 2 {
            report.masked_equal += 1;
            continue;
        }
        if rmgr == SPGIST && blkno == 0 {
            // The SP-GiST metapage's cache of last-used pages is a hint that
            // PostgreSQL updates without WAL (SpGistUpdateMetaPage): the
            // pages must agree on everything else.
            let mut patched = page.to_vec();
            patched[SPGIST_LUP_CACHE.clone()].copy_from_slice(&expected[SPGIST_LUP_CACHE.clone()]);
            let row = masker.query_one(
                "SELECT pageserver.mask_page($1, $2, $4) = pageserver.mask_page($1, $3, $4)",
                &[&rmgr, &expected, &patched, &(blkno as i64)],
            )?;
            if row.get::<_, bool>(0) {
                report.allow("SP-GiST metapage's last-used-page cache (not WAL-logged)");
                continue;
            }
        }
        if fork == 2 && rel.in_wal_log_database && vm_bits_are_a_subset(&page, &expected) {
            report.allow("VM bits of a STRATEGY wal_log database (not in the WAL)");
            continue;
        }
        // A sequence is WAL-logged up to 32 values ahead of what it has
        // handed out (log_cnt counts down on the primary's page).
        if rel.relkind == 'S' {
            if let (Some((ours, 0, true)), Some((theirs, _, _))) = (sequence_values(&page), sequence_values(&expected)) {
                if ours >= theirs {
                    report.allow("sequence page WAL-logged ahead of its last value");
                    continue;
                }
            }
        }
        let differing: Vec<usize> = expected.iter().zip(page.iter()).enumerate().filter(|(_, (a, b))| a != b).map(|(i, _)| i).collect();
        report.mismatch(format!(
            "{} block {blkno} differs (rmgr {rmgr}): {} bytes, at {:?}…; primary {:02x?}, page server {:02x?}",
            rel_name(&tag),
            differing.len(),
            &differing[..differing.len().min(6)],
            differing.iter().take(6).map(|i| expected[*i]).collect::<Vec<_>>(),
            differing.iter().take(6).map(|i| page[*i]).collect::<Vec<_>>()
        ));
    }
    Ok(())
}

/// SLRU segments through GetSlruSegment against the primary's files.
fn compare_slrus(primary: &PgCluster, client: &mut BlockingClient, hdr: RequestHeader, report: &mut PageReport) -> Result<()> {
    for kind in SlruKind::ALL {
        let dir = primary.data_dir().join(kind.dir_name());
        let mut segments: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| u32::from_str_radix(&e.file_name().to_string_lossy(), 16).ok().map(|s| (s, e.path())))
            .collect();
        segments.sort();
        ensure!(!segments.is_empty(), "no {} segment on the primary", kind.dir_name());
        for (segno, path) in segments {
            let theirs = std::fs::read(&path)?;
            let ours = match client.request(Request::GetSlruSegment { hdr, kind, segno })? {
                Response::GetSlruSegment { segment, kind: k, .. } => {
                    ensure!(k == kind, "GetSlruSegment for {kind:?} answered {k:?}");
                    segment
                }
                other => {
                    report.mismatch(format!("{}/{segno:04X}: {other:?}", kind.dir_name()));
                    continue;
                }
            };
            report.slru_pages += (theirs.len() / BLCKSZ) as u64;
            if ours[..] != theirs[..] {
                let first = theirs.iter().zip(ours.iter()).position(|(a, b)| a != b);
                report.mismatch(format!(
                    "{}/{segno:04X}: {} bytes on the primary, {} from the page server, first difference at {first:?}",
                    kind.dir_name(),
                    theirs.len(),
                    ours.len()
                ));
            }
        }
    }
    Ok(())
}

/// `pg_dumpall` of every database (unlogged tables' data left out: a
/// restored cluster starts them empty, as after a crash).
pub fn dump_all(pg: &PgCluster) -> Result<String> {
    let out = pg.run_as_postgres_checked("pg_dumpall", &["--restrict-key=e2e", "--no-unlogged-table-data", "--no-role-passwords"])?;
    Ok(String::from_utf8(out.stdout)?)
}

/// The value a `setval` line of a dump sets, if the line is one.
fn setval_value(line: &str) -> Option<(String, i64)> {
    let rest = line.strip_prefix("SELECT pg_catalog.setval(")?;
    let mut parts = rest.splitn(3, ", ");
    let name = parts.next()?.to_string();
    let value = parts.next()?.trim_end_matches([')', ';']).parse().ok()?;
    Some((name, value))
}

/// Compares dumps line by line. A sequence's value may be ahead in the
/// restored cluster by what the primary WAL-logged ahead (up to 32 calls
/// of `nextval`): counted, not a difference.
pub fn compare_dumps(got: &str, expected: &str, what: &str) -> Result<u64> {
    let (got_lines, expected_lines): (Vec<&str>, Vec<&str>) = (got.lines().collect(), expected.lines().collect());
    ensure!(
        got_lines.len() == expected_lines.len(),
        "{what}: pg_dumpall has {} lines, the primary's {}",
        got_lines.len(),
        expected_lines.len()
    );
    let mut ahead = 0;
    for (g, e) in got_lines.iter().zip(&expected_lines) {
        if g == e {
            continue;
        }
        match (setval_value(g), setval_value(e)) {
            (Some((gn, gv)), Some((en, ev))) if gn == en && gv >= ev => ahead += 1,
            _ => bail!("{what}: pg_dumpall differs:\n  restored: {g}\n  primary:  {e}"),
        }
    }
    Ok(ahead)
}

/// Fetches `fullbackup` at `lsn` with psql, checks its checksums
/// (`pg_checksums --check`, checksums on), starts a stock PostgreSQL 15 on
/// it, and checks `pg_amcheck --heapallindexed` and `pg_dumpall` against
/// `expected_dump`.
pub fn check_fullbackup(
    host: &PgCluster,
    tenant: &str,
    timeline: &str,
    lsn: Option<Lsn>,
    expected_dump: &str,
    checksums: bool,
    what: &str,
) -> Result<()> {
    let started = Instant::now();
    let addr = host.listener_addr().context("listener")?;
    let command = match lsn {
        Some(lsn) => format!("fullbackup {tenant} {timeline} {lsn}"),
        None => format!("fullbackup {tenant} {timeline}"),
    };
    let conn = format!("host={} port={} user=compute", addr.ip(), addr.port());
    let out = host.run_as_postgres_checked("psql", &["-X", "-w", "-d", &conn, "-c", &command])?;
    let tar = std::env::temp_dir().join(format!("e2e-fullbackup-{}-{timeline}.tar", std::process::id()));
    std::fs::write(&tar, &out.stdout)?;
    let size = out.stdout.len();
    let mut checksum_report = String::new();
    let restored = PgCluster::start_on_data_dir(ClusterConfig::default().setting("max_prepared_transactions", "10"), |dir| {
        let status = std::process::Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(dir).status()?;
        ensure!(status.success(), "tar -x failed");
        if checksums {
            let out = std::process::Command::new(pageserver_harness::pg_bin("pg_checksums")).args(["--check", "-D"]).arg(dir).output()?;
            checksum_report = String::from_utf8_lossy(&out.stdout).into_owned();
            ensure!(
                out.status.success(),
                "{what}: pg_checksums --check failed:\n{}{}",
                checksum_report,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    });
    let _ = std::fs::remove_file(&tar);
    let restored = restored.with_context(|| format!("{what}: stock PostgreSQL did not start from the fullbackup"))?;
    let ahead = compare_dumps(&dump_all(&restored)?, expected_dump, what)?;
    let amcheck = restored.run_as_postgres("pg_amcheck", &["--all", "--heapallindexed", "--install-missing"])?;
    let report = format!("{}{}", String::from_utf8_lossy(&amcheck.stdout), String::from_utf8_lossy(&amcheck.stderr));
    ensure!(amcheck.status.success() && report.trim().is_empty(), "{what}: pg_amcheck reported: {report}");
    let blocks = checksum_report.lines().find(|l| l.starts_with("Blocks scanned")).unwrap_or("").trim().to_string();
    eprintln!(
        "{what}: {size} byte fullbackup {}started, pg_dumpall equal ({ahead} sequences logged ahead), amcheck clean ({:.1}s)",
        if checksums { format!("passed pg_checksums ({blocks}), ") } else { String::new() },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The host log has no PANIC and no ERROR.
pub fn ensure_log_clean(host: &PgCluster) -> Result<()> {
    ensure_log_clean_but(host, &[])
}

/// ... but for ERRORs that contain one of `expected` (a test's refused calls).
pub fn ensure_log_clean_but(host: &PgCluster, expected: &[&str]) -> Result<()> {
    let log = host.log();
    for bad in ["PANIC", "WAL gap", "ERROR:  "] {
        let unexpected = |l: &&str| l.contains(bad) && !(bad == "ERROR:  " && expected.iter().any(|e| l.contains(e)));
        if let Some(line) = log.lines().find(unexpected) {
            bail!("host log has \"{line}\"");
        }
    }
    Ok(())
}

/// Every relation's set of forks on the primary (for tests that look at one).
pub fn forks_of(primary: &PgCluster, db: &str, relation: &str) -> Result<(RelTag, HashSet<u8>)> {
    let row = primary.sql_db(
        db,
        &format!(
            "SELECT CASE WHEN c.relisshared THEN 1664 ELSE 1663 END, CASE WHEN c.relisshared THEN 0 ELSE d.oid END, pg_relation_filenode(c.oid) \
             FROM pg_class c, pg_database d WHERE c.oid = '{relation}'::regclass AND d.datname = current_database()"
        ),
    )?;
    let r = row.first().context("no such relation")?;
    let num = |i: usize| -> Result<u32> { Ok(r[i].as_deref().context("NULL")?.parse()?) };
    let rel = RelTag::new(num(0)?, num(1)?, num(2)?, 0);
    let base = primary.sql_db(db, &format!("SELECT pg_relation_filepath('{relation}')"))?[0][0].clone().context("path")?;
    let mut forks = HashSet::new();
    for (fork, suffix) in [(0u8, ""), (1, "_fsm"), (2, "_vm"), (3, "_init")] {
        if primary.data_dir().join(format!("{base}{suffix}")).exists() {
            forks.insert(fork);
        }
    }
    Ok((rel, forks))
}
