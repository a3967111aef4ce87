//! Shared helpers of the `wal_*` tests (included with `#[path]`; as its own
//! test target it holds no tests): reading WAL segment files of a running
//! primary, feeding them to the decoder in random-sized chunks, and parsing
//! `pg_waldump --bkp-details` output to compare with.
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{anyhow, bail, Context};
use pageserver_harness::{pg_bin, PgCluster};
use storage::lsn::Lsn;
use storage::wal::{DecodedRecord, WalStreamDecoder, DEFAULT_WAL_SEG_SIZE};

pub const SEG: u64 = DEFAULT_WAL_SEG_SIZE;

/// A small deterministic PRNG (xorshift64*), seeded per test and printed so a
/// failing chunking can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn from_time() -> Rng {
        let seed = std::env::var("WAL_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
        eprintln!("rng seed {seed} (set WAL_TEST_SEED to replay)");
        Rng::new(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    /// A chunk size: mostly mid-sized, sometimes tiny, sometimes large.
    pub fn chunk_len(&mut self) -> usize {
        match self.below(10) {
            0 => 1 + self.below(8) as usize,
            1..=6 => 1 + self.below(9000) as usize,
            _ => 1 + self.below(200_000) as usize,
        }
    }
}

pub fn lsn_of(s: &str) -> Lsn {
    s.trim().parse().unwrap_or_else(|e| panic!("{e}"))
}

/// `SELECT <expr>` returning an LSN.
pub fn sql_lsn(pg: &PgCluster, expr: &str) -> anyhow::Result<Lsn> {
    let v = pg.sql_one(&format!("SELECT {expr}"))?.ok_or_else(|| anyhow!("{expr} is NULL"))?;
    Ok(lsn_of(&v))
}

/// Path of the segment file holding `lsn` on timeline 1.
pub fn segment_path(wal_dir: &Path, lsn: Lsn) -> PathBuf {
    wal_dir.join(storage::wal::segment_file_name(1, lsn.segment_number(SEG), SEG))
}

/// Bytes of WAL from `start` (inclusive) to `end` (exclusive), read from the
/// segment files in `wal_dir` in pieces of at most `piece` bytes.
pub struct WalFileReader {
    dir: PathBuf,
    pos: Lsn,
    end: Lsn,
    file: Option<(u64, File)>,
}

impl WalFileReader {
    pub fn new(dir: &Path, start: Lsn, end: Lsn) -> WalFileReader {
        WalFileReader { dir: dir.to_path_buf(), pos: start, end, file: None }
    }
    /// Reads up to `max` bytes; an empty vector at the end.
    pub fn read(&mut self, max: usize) -> anyhow::Result<Vec<u8>> {
        use std::io::{Seek, SeekFrom};
        if self.pos >= self.end {
            return Ok(Vec::new());
        }
        let segno = self.pos.0 / SEG;
        if self.file.as_ref().map(|(s, _)| *s) != Some(segno) {
            let path = segment_path(&self.dir, self.pos);
            let mut f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            f.seek(SeekFrom::Start(self.pos.0 % SEG))?;
            self.file = Some((segno, f));
        }
        let in_seg = SEG - self.pos.0 % SEG;
        let n = (max as u64).min(in_seg).min(self.end.0 - self.pos.0) as usize;
        let mut buf = vec![0u8; n];
        self.file.as_mut().unwrap().1.read_exact(&mut buf)?;
        self.pos.0 += n as u64;
        Ok(buf)
    }
}

/// Decodes every record starting in `[start, end)` from the files in
/// `wal_dir`, feeding random-sized chunks; calls `each` per record.
/// `start` may be a segment start (a leading continuation is skipped).
/// Returns the number of bytes fed.
pub fn decode_wal_dir(
    wal_dir: &Path,
    start: Lsn,
    end: Lsn,
    rng: &mut Rng,
    mut each: impl FnMut(DecodedRecord) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    // Read past `end` into the WAL that follows it (the caller made sure it
    // exists, e.g. with pg_switch_wal), to complete the last record.
    let mut reader = WalFileReader::new(wal_dir, start, Lsn(end.0.div_ceil(SEG) * SEG + 1));
    let mut dec = WalStreamDecoder::new(start);
    let mut fed = 0u64;
    loop {
        while let Some(rec) = dec.next_record().map_err(|e| anyhow!("decoder: {e}"))? {
            if rec.start_lsn >= end {
                return Ok(fed);
            }
            each(rec)?;
        }
        let chunk = reader.read(rng.chunk_len())?;
        if chunk.is_empty() {
            bail!("WAL ended at {} before {end}", dec.consumed_lsn());
        }
        fed += chunk.len() as u64;
        dec.feed(&chunk);
    }
}

/// One record as pg_waldump describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpRecord {
    pub rmgr: String,
    pub rec_len: u32,
    pub tot_len: u32,
    pub xid: u32,
    pub lsn: Lsn,
    pub prev: Lsn,
    pub desc: String,
    pub blocks: Vec<DumpBlock>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpBlock {
    pub id: u8,
    pub rel: (u32, u32, u32),
    pub fork: String,
    pub blk: u32,
    /// `None` without image; else (apply, hole offset, hole length, method).
    pub image: Option<(bool, u16, u16, String)>,
}

/// Streams `pg_waldump --bkp-details` output record by record.
pub struct WaldumpReader {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    pending: Option<String>,
    pub line_no: u64,
}

impl WaldumpReader {
    pub fn spawn(wal_dir: &Path, start: Lsn, end: Lsn) -> anyhow::Result<WaldumpReader> {
        let mut child = Command::new(pg_bin("pg_waldump"))
            .arg("--bkp-details")
            .arg("--path")
            .arg(wal_dir)
            .arg("--start")
            .arg(start.to_string())
            .arg("--end")
            .arg(end.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning pg_waldump")?;
        let stdout = child.stdout.take().unwrap();
        Ok(WaldumpReader { child, lines: BufReader::with_capacity(1 << 20, stdout).lines(), pending: None, line_no: 0 })
    }

    fn next_line(&mut self) -> anyhow::Result<Option<String>> {
        if let Some(l) = self.pending.take() {
            return Ok(Some(l));
        }
        match self.lines.next() {
            None => Ok(None),
            Some(l) => {
                self.line_no += 1;
                Ok(Some(l?))
            }
        }
    }

    pub fn next_record(&mut self) -> anyhow::Result<Option<DumpRecord>> {
        let Some(line) = self.next_line()? else { return Ok(None) };
        let mut rec = parse_record_line(&line).with_context(|| format!("pg_waldump line {}: {line}", self.line_no))?;
        while let Some(l) = self.next_line()? {
            if let Some(rest) = l.strip_prefix("\tblkref #") {
                rec.blocks.push(parse_block(rest).with_context(|| format!("pg_waldump line {}: {l}", self.line_no))?);
            } else {
                self.pending = Some(l);
                break;
            }
        }
        Ok(Some(rec))
    }

    /// Waits for pg_waldump; fails if it failed.
    pub fn finish(mut self) -> anyhow::Result<()> {
        while self.next_line()?.is_some() {}
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut err)?;
        }
        let status = self.child.wait()?;
        if !status.success() {
            bail!("pg_waldump failed with {status}: {err}");
        }
        Ok(())
    }
}

fn field<'a>(s: &'a str, key: &str) -> anyhow::Result<&'a str> {
    let at = s.find(key).ok_or_else(|| anyhow!("no {key:?}"))?;
    Ok(&s[at + key.len()..])
}

fn parse_record_line(line: &str) -> anyhow::Result<DumpRecord> {
    // rmgr: Heap        len (rec/tot):     54/   150, tx:        735, lsn: 0/01516D48, prev 0/01516D10, desc: INSERT ...
    let rest = field(line, "rmgr: ")?;
    let rmgr = rest.split_whitespace().next().ok_or_else(|| anyhow!("no rmgr"))?.to_string();
    let rest = field(rest, "len (rec/tot):")?;
    let (rec_len, rest) = rest.split_once('/').ok_or_else(|| anyhow!("no rec/tot"))?;
    let (tot_len, rest) = rest.split_once(',').ok_or_else(|| anyhow!("no tot"))?;
    let rest = field(rest, "tx:")?;
    let (xid, rest) = rest.split_once(',').ok_or_else(|| anyhow!("no tx"))?;
    let rest = field(rest, "lsn: ")?;
    let (lsn, rest) = rest.split_once(',').ok_or_else(|| anyhow!("no lsn"))?;
    let rest = field(rest, "prev ")?;
    let (prev, rest) = rest.split_once(',').ok_or_else(|| anyhow!("no prev"))?;
    let desc = field(rest, "desc: ")?.to_string();
    Ok(DumpRecord {
        rmgr,
        rec_len: rec_len.trim().parse()?,
        tot_len: tot_len.trim().parse()?,
        xid: xid.trim().parse()?,
        lsn: lsn.trim().parse()?,
        prev: prev.trim().parse()?,
        desc,
        blocks: Vec::new(),
    })
}

fn parse_block(rest: &str) -> anyhow::Result<DumpBlock> {
    // 0: rel 1663/5/16404 fork main blk 122 (FPW); hole: offset: 1492, length: 812, compression saved: 3218, method: lz4
    let (id, rest) = rest.split_once(':').ok_or_else(|| anyhow!("no id"))?;
    let rest = field(rest, "rel ")?;
    let mut words = rest.split_whitespace();
    let rel = words.next().ok_or_else(|| anyhow!("no rel"))?;
    let parts: Vec<u32> = rel.split('/').map(|p| p.parse()).collect::<Result<_, _>>()?;
    if parts.len() != 3 {
        bail!("bad rel {rel}");
    }
    let fork = field(rest, " fork ")?.split_whitespace().next().unwrap_or("").to_string();
    let blk: u32 = field(rest, " blk ")?.split_whitespace().next().unwrap_or("").trim_end_matches(';').parse()?;
    let image = if rest.contains("(FPW") {
        let apply = !rest.contains("for WAL verification");
        let hole_off: u16 = field(rest, "hole: offset: ")?.split(',').next().unwrap().trim().parse()?;
        let hole_len: u16 = field(rest, "length: ")?.split(',').next().unwrap().trim().parse()?;
        let method = match rest.find("method: ") {
            Some(_) => field(rest, "method: ")?.trim().to_string(),
            None => "none".to_string(),
        };
        Some((apply, hole_off, hole_len, method))
    } else {
        None
    };
    Ok(DumpBlock { id: id.trim().parse()?, rel: (parts[0], parts[1], parts[2]), fork, blk, image })
}

pub fn fork_name(fork: u8) -> &'static str {
    match fork {
        0 => "main",
        1 => "fsm",
        2 => "vm",
        3 => "init",
        _ => "?",
    }
}

/// Differences between our record and pg_waldump's, empty if they agree.
pub fn compare(ours: &DecodedRecord, theirs: &DumpRecord) -> Vec<String> {
    use storage::wal::fpi::ImageCompression;
    let mut d = Vec::new();
    let name = storage::wal::rmgr::name(ours.xl_rmid);
    if name != theirs.rmgr {
        d.push(format!("rmgr {name} vs {}", theirs.rmgr));
    }
    if ours.start_lsn != theirs.lsn {
        d.push(format!("lsn {} vs {}", ours.start_lsn, theirs.lsn));
    }
    if ours.xl_prev != theirs.prev {
        d.push(format!("prev {} vs {}", ours.xl_prev, theirs.prev));
    }
    if ours.xl_tot_len != theirs.tot_len {
        d.push(format!("tot_len {} vs {}", ours.xl_tot_len, theirs.tot_len));
    }
    if ours.xl_tot_len - ours.fpi_len() != theirs.rec_len {
        d.push(format!("rec_len {} vs {}", ours.xl_tot_len - ours.fpi_len(), theirs.rec_len));
    }
    if ours.xl_xid != theirs.xid {
        d.push(format!("xid {} vs {}", ours.xl_xid, theirs.xid));
    }
    if ours.blocks.len() != theirs.blocks.len() {
        d.push(format!("{} block refs vs {}", ours.blocks.len(), theirs.blocks.len()));
    }
    for (a, b) in ours.blocks.iter().zip(&theirs.blocks) {
        let rel = (a.rel.spc_node, a.rel.db_node, a.rel.rel_node);
        let image = a.image.map(|i| {
            let method = match i.compression() {
                ImageCompression::None => "none",
                ImageCompression::Pglz => "pglz",
                ImageCompression::Lz4 => "lz4",
                ImageCompression::Zstd => "zstd",
            };
            (i.apply(), i.hole_offset, i.hole_length, method.to_string())
        });
        if a.id != b.id || rel != b.rel || fork_name(a.fork()) != b.fork || a.blkno != b.blk || image != b.image {
            d.push(format!(
                "block #{} rel {:?} fork {} blk {} image {:?} vs block #{} rel {:?} fork {} blk {} image {:?}",
                a.id,
                rel,
                fork_name(a.fork()),
                a.blkno,
                image,
                b.id,
                b.rel,
                b.fork,
                b.blk,
                b.image
            ));
        }
    }
    d
}

/// Decodes `[start, end)` of `wal_dir` and compares every record with
/// pg_waldump. Returns (records, bytes fed, records per rmgr name, FPIs).
pub struct CompareStats {
    pub records: u64,
    pub bytes: u64,
    pub fpis: u64,
    pub per_rmgr: std::collections::BTreeMap<&'static str, u64>,
    pub with_toplevel_xid: u64,
    pub with_origin: u64,
    pub multi_page: u64,
}

pub fn compare_with_waldump(
    wal_dir: &Path,
    start: Lsn,
    end: Lsn,
    rng: &mut Rng,
    mut extra: impl FnMut(&DecodedRecord) -> anyhow::Result<()>,
) -> anyhow::Result<CompareStats> {
    let mut dump = WaldumpReader::spawn(wal_dir, start, end)?;
    let mut stats =
        CompareStats { records: 0, bytes: 0, fpis: 0, per_rmgr: Default::default(), with_toplevel_xid: 0, with_origin: 0, multi_page: 0 };
    let mut mismatches = Vec::new();
    let bytes = decode_wal_dir(wal_dir, start, end, rng, |rec| {
        let theirs = dump.next_record()?.ok_or_else(|| anyhow!("pg_waldump ended before our record at {}", rec.start_lsn))?;
        let diff = compare(&rec, &theirs);
        if !diff.is_empty() && mismatches.len() < 20 {
            mismatches.push(format!("record at {}: {}", rec.start_lsn, diff.join("; ")));
        }
        stats.records += 1;
        stats.fpis += rec.blocks.iter().filter(|b| b.has_image()).count() as u64;
        *stats.per_rmgr.entry(storage::wal::rmgr::name(rec.xl_rmid)).or_default() += 1;
        stats.with_toplevel_xid += u64::from(rec.toplevel_xid.is_some());
        stats.with_origin += u64::from(rec.origin.is_some());
        stats.multi_page += u64::from(rec.start_lsn.0 / 8192 != (rec.start_lsn.0 + u64::from(rec.xl_tot_len) - 1) / 8192);
        extra(&rec)
    })?;
    stats.bytes = bytes;
    if let Some(r) = dump.next_record()? {
        mismatches.push(format!("pg_waldump has more records than we decoded, next at {}", r.lsn));
    }
    dump.finish()?;
    if !mismatches.is_empty() {
        bail!("{} mismatches with pg_waldump:\n{}", mismatches.len(), mismatches.join("\n"));
    }
    Ok(stats)
}

/// Checks that a restored page looks like a PostgreSQL page: all zeros, or a
/// page header with the 8 KiB / layout 4 version, sane pd_lower/upper/special
/// and an LSN not after the start of the record that carries it.
pub fn check_page_sane(page: &[u8; 8192], rec: &DecodedRecord) -> Result<(), String> {
    if page.iter().all(|&b| b == 0) {
        return Ok(());
    }
    let lsn = (u64::from(u32::from_le_bytes(page[0..4].try_into().unwrap())) << 32)
        | u64::from(u32::from_le_bytes(page[4..8].try_into().unwrap()));
    let lower = u16::from_le_bytes([page[12], page[13]]);
    let upper = u16::from_le_bytes([page[14], page[15]]);
    let special = u16::from_le_bytes([page[16], page[17]]);
    let version = u16::from_le_bytes([page[18], page[19]]);
    if version != 0x2004 {
        return Err(format!("pd_pagesize_version {version:#x}"));
    }
    if !(24 <= lower && lower <= upper && upper <= special && special as usize <= 8192) {
        return Err(format!("pd_lower {lower} pd_upper {upper} pd_special {special}"));
    }
    // pd_lsn is the end of the last record that changed the page, at most
    // the start of this one.
    if lsn > rec.start_lsn.0 {
        return Err(format!("pd_lsn {} after the record", Lsn(lsn)));
    }
    Ok(())
}
