//! Relation segment files whose blocks still come from the page server.
//!
//! A lazy file is a sparse file of the store with the segment's full size
//! and a bitmap of the blocks still remote. A read fetches the remote
//! blocks it touches (and, when it continues one of the file's recent
//! streams of reads, up to 1024 blocks after them: the kernel's own
//! read-ahead, several processes of a parallel scan and several threads
//! of the file system read one file at once), writes them into the sparse file and clears their bits; a write
//! clears the bits of the blocks it covers (a block it covers only in part
//! is fetched first); a truncation clears the bits past the new end. A
//! fetched block is written only if its bit is still set, under the
//! file's lock, so a fetch that loses a race with a write or a truncation
//! changes nothing. Blocks being fetched are marked in flight: another
//! reader of them waits for that fetch instead of fetching them again.
//!
//! The bitmap is persisted in `lazy/<id>.pending` (a header line in the
//! format of a `clonebackup` manifest line, then the bits) whenever the file
//! is fsynced, and by the flusher every few seconds: the bits are taken
//! first, then the data is synced, then the bits are written, so a cleared
//! bit on disk always has its block on disk. A bit lost in a crash only
//! means a block is fetched again, over a copy that was not durable. When
//! no bit is left, the `.pending` file goes and the file is a plain one.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};
use storage::backup::CloneFile;
use storage::key::RelTag;

use crate::fetcher::{FetchError, Fetcher};
use crate::layout::{remove_if_present, write_durably};
use crate::stats::{add, Stats};

pub const BLCKSZ: u64 = 8192;

const PENDING_MAGIC: &str = "pageserver_clone pending v1";

/// Blocks fetched ahead of a sequential reader: the first read-ahead, and
/// the most it doubles to while the reader goes on.
const MIN_READ_AHEAD: u32 = 32;
const MAX_READ_AHEAD: u32 = 1024;

/// A fetch of more blocks than this is split into parts fetched at once
/// (at most [`MAX_PARTS`]).
const PART_BLOCKS: usize = 128;
const MAX_PARTS: usize = 8;

/// Streams remembered per file (parallel scans read several at once).
const STREAMS: usize = 8;

/// A read starting at most this many blocks past where a stream's last
/// fetch ended continues that stream.
const STREAM_GAP: u32 = 64;

/// Where a run of fetches has got to: the block after its last fetch, and
/// its read-ahead.
#[derive(Clone, Copy, Default)]
struct Stream {
    end: u32,
    read_ahead: u32,
}

/// Why a lazy file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

struct Bits {
    /// One bit per block of the segment as of the LSN: 1 = still remote.
    words: Vec<u64>,
    nblocks: u32,
    remote: u32,
}

impl Bits {
    fn all_remote(nblocks: u32) -> Bits {
        let mut words = vec![u64::MAX; (nblocks as usize).div_ceil(64)];
        if !nblocks.is_multiple_of(64) {
            *words.last_mut().expect("nblocks > 0") = (1u64 << (nblocks % 64)) - 1;
        }
        Bits { words, nblocks, remote: nblocks }
    }
    fn is_remote(&self, b: u32) -> bool {
        b < self.nblocks && self.words[(b / 64) as usize] & (1 << (b % 64)) != 0
    }
    fn clear(&mut self, b: u32) -> bool {
        if self.is_remote(b) {
            self.words[(b / 64) as usize] &= !(1 << (b % 64));
            self.remote -= 1;
            true
        } else {
            false
        }
    }
    fn to_bytes(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        out.truncate((self.nblocks as usize).div_ceil(8));
        out
    }
    fn from_bytes(nblocks: u32, bytes: &[u8]) -> Option<Bits> {
        if bytes.len() != (nblocks as usize).div_ceil(8) {
            return None;
        }
        let mut words = vec![0u64; (nblocks as usize).div_ceil(64)];
        for (i, b) in bytes.iter().enumerate() {
            words[i / 8] |= u64::from(*b) << ((i % 8) * 8);
        }
        let mut bits = Bits { words, nblocks, remote: 0 };
        bits.remote = (0..nblocks).filter(|b| bits.is_remote(*b)).count() as u32;
        Some(bits)
    }
}

struct State {
    path: String,
    bits: Bits,
    /// Bits changed since they were last persisted.
    dirty: bool,
    /// Unlinked: nothing more is persisted.
    deleted: bool,
    /// Blocks some reader is fetching now.
    in_flight: HashSet<u32>,
    /// Recent sequential runs of reads, newest last.
    streams: Vec<Stream>,
}

impl State {
    /// The read-ahead for a read of `first..=last` that must fetch: a read
    /// continuing a stream (reaching its end, or starting a little past it) doubles
    /// its read-ahead; any other starts a new stream without read-ahead.
    /// The stream's end moves past the blocks the fetch will cover.
    fn read_ahead(&mut self, first: u32, last: u32) -> u32 {
        let continued = self.streams.iter().position(|s| last.saturating_add(1) >= s.end && first <= s.end.saturating_add(STREAM_GAP));
        let mut stream = match continued {
            Some(i) => {
                let mut s = self.streams.remove(i);
                s.read_ahead = (s.read_ahead * 2).clamp(MIN_READ_AHEAD, MAX_READ_AHEAD);
                s
            }
            None => Stream::default(),
        };
        stream.end = last.saturating_add(1).saturating_add(stream.read_ahead);
        if self.streams.len() == STREAMS {
            self.streams.remove(0);
        }
        self.streams.push(stream);
        stream.read_ahead
    }
}

/// One relation segment file of the store with remote blocks.
pub struct LazyFile {
    source: RelTag,
    first_block: u32,
    /// The store's file, open for reading and writing.
    file: File,
    state: Mutex<State>,
    /// Signalled when fetches end (blocks leave `in_flight`).
    fetched: Condvar,
    /// Serialises persisting, so bit snapshots reach the disk in order.
    persisting: Mutex<()>,
    pending_path: PathBuf,
}

impl LazyFile {
    pub fn remote_blocks(&self) -> u32 {
        self.state.lock().bits.remote
    }

    pub fn total_blocks(&self) -> u32 {
        self.state.lock().bits.nblocks
    }

    /// Makes blocks `first..=last` local; for a read (`sequential_hint`),
    /// also the blocks after them when the read continues a stream of
    /// reads (see [`State::read_ahead`]). Returns the number of blocks this
    /// call fetched. A block another reader is fetching is waited for, not
    /// fetched twice (and fetched here if that reader's fetch failed).
    pub fn ensure(&self, first: u32, last: u32, sequential_hint: bool, fetcher: &Fetcher, stats: &Stats) -> Result<usize, LazyError> {
        let mut fetched = 0;
        loop {
            let (wanted, ahead, waiting) = {
                let mut s = self.state.lock();
                let end = last.min(s.bits.nblocks.saturating_sub(1));
                let remote: Vec<u32> = (first..=end).filter(|b| s.bits.is_remote(*b)).collect();
                let (waiting, mut wanted): (Vec<u32>, Vec<u32>) = remote.into_iter().partition(|b| s.in_flight.contains(b));
                let mut ahead = 0;
                if !wanted.is_empty() && sequential_hint {
                    let read_ahead = s.read_ahead(first, last);
                    let stop = last.saturating_add(read_ahead).min(s.bits.nblocks.saturating_sub(1));
                    for b in last.saturating_add(1)..=stop {
                        if s.bits.is_remote(b) && !s.in_flight.contains(&b) {
                            wanted.push(b);
                            ahead += 1;
                        }
                    }
                }
                s.in_flight.extend(&wanted);
                (wanted, ahead, waiting)
            };
            if !wanted.is_empty() {
                self.fetch_and_install(&wanted, fetcher)?;
                add(&stats.blocks_read_ahead, ahead);
                fetched += wanted.len();
            }
            if waiting.is_empty() {
                return Ok(fetched);
            }
            let mut s = self.state.lock();
            while waiting.iter().any(|b| s.in_flight.contains(b)) {
                self.fetched.wait(&mut s);
            }
            if !waiting.iter().any(|b| s.bits.is_remote(*b)) {
                return Ok(fetched);
            }
            // The other reader's fetch failed: try ourselves.
        }
    }

    /// Fetches `blocks`, which the caller marked in flight, and writes
    /// those still remote into the file; they leave `in_flight` either way.
    /// Many blocks are fetched in parts at once, each on its own connection
    /// (the page server answers one connection's requests in order, one
    /// batch at a time) and installed as it arrives, so that a reader
    /// waiting for the first blocks does not wait for the last.
    fn fetch_and_install(&self, blocks: &[u32], fetcher: &Fetcher) -> Result<(), LazyError> {
        if blocks.len() <= PART_BLOCKS {
            return self.fetch_and_install_part(blocks, fetcher);
        }
        let part = blocks.len().div_ceil(MAX_PARTS).max(PART_BLOCKS);
        std::thread::scope(|scope| {
            let parts: Vec<_> = blocks.chunks(part).map(|part| scope.spawn(move || self.fetch_and_install_part(part, fetcher))).collect();
            parts.into_iter().try_for_each(|part| part.join().expect("a fetch thread panicked"))
        })
    }

    fn fetch_and_install_part(&self, blocks: &[u32], fetcher: &Fetcher) -> Result<(), LazyError> {
        let absolute: Vec<u32> = blocks.iter().map(|b| self.first_block + b).collect();
        let pages = fetcher.fetch(self.source, &absolute);
        let mut s = self.state.lock();
        for b in blocks {
            s.in_flight.remove(b);
        }
        self.fetched.notify_all();
        let pages = pages?;
        // Runs of consecutive blocks still remote, one pwritev each.
        let mut i = 0;
        while i < blocks.len() {
            if !s.bits.is_remote(blocks[i]) {
                i += 1;
                continue;
            }
            let mut end = i + 1;
            while end < blocks.len() && blocks[end] == blocks[end - 1] + 1 && s.bits.is_remote(blocks[end]) {
                end += 1;
            }
            write_all_vectored_at(&self.file, &pages[i..end], u64::from(blocks[i]) * BLCKSZ)?;
            for &b in &blocks[i..end] {
                s.bits.clear(b);
            }
            s.dirty = true;
            i = end;
        }
        Ok(())
    }

    /// For a read of `first..=last` that reaches the last window a stream
    /// fetched ahead: the stream's next window (twice as long, up to the
    /// most), its remote blocks marked in flight, for
    /// [`prefetch`](Self::prefetch) to fetch while the reader goes on. A
    /// sequential reader thus has one to two windows fetched ahead of it:
    /// the fetch of a window overlaps the reading of the one before.
    pub fn next_window(&self, first: u32, last: u32) -> Vec<u32> {
        let mut s = self.state.lock();
        let nblocks = s.bits.nblocks;
        let Some(i) = s.streams.iter().position(|st| {
            st.read_ahead > 0 && st.end < nblocks && first <= st.end && last.saturating_add(1).saturating_add(st.read_ahead) >= st.end
        }) else {
            return Vec::new();
        };
        let mut stream = s.streams[i];
        stream.read_ahead = (stream.read_ahead * 2).clamp(MIN_READ_AHEAD, MAX_READ_AHEAD);
        let (start, end) = (stream.end, stream.end.saturating_add(stream.read_ahead).min(nblocks));
        stream.end = end;
        s.streams[i] = stream;
        let blocks: Vec<u32> = (start..end).filter(|b| s.bits.is_remote(*b) && !s.in_flight.contains(b)).collect();
        s.in_flight.extend(&blocks);
        blocks
    }

    /// Fetches a window [`next_window`](Self::next_window) marked (on a
    /// thread of its own). A failure only leaves the blocks remote: the
    /// reader fetches them itself when it gets there.
    pub fn prefetch(&self, blocks: &[u32], fetcher: &Fetcher, stats: &Stats) {
        match self.fetch_and_install(blocks, fetcher) {
            Ok(()) => add(&stats.blocks_read_ahead, blocks.len() as u64),
            Err(e) => eprintln!(
                "pageserver-clone: read-ahead of {} blocks of {} failed (the reader will fetch them): {e}",
                blocks.len(),
                self.source
            ),
        }
    }

    /// Writes `data` at `offset` of the file.
    pub fn write(&self, offset: u64, data: &[u8], fetcher: &Fetcher, stats: &Stats) -> Result<(), LazyError> {
        if data.is_empty() {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        let (first, last) = ((offset / BLCKSZ) as u32, ((end - 1) / BLCKSZ) as u32);
        // Blocks covered in part keep the rest of their remote contents.
        if !offset.is_multiple_of(BLCKSZ) {
            self.ensure(first, first, false, fetcher, stats)?;
        }
        if !end.is_multiple_of(BLCKSZ) {
            self.ensure(last, last, false, fetcher, stats)?;
        }
        let mut s = self.state.lock();
        self.file.write_all_at(data, offset)?;
        for b in first..=last {
            s.dirty |= s.bits.clear(b);
        }
        Ok(())
    }

    /// Truncates (or extends) the file to `size` bytes.
    pub fn set_len(&self, size: u64, fetcher: &Fetcher, stats: &Stats) -> Result<(), LazyError> {
        if !size.is_multiple_of(BLCKSZ) {
            let b = (size / BLCKSZ) as u32;
            self.ensure(b, b, false, fetcher, stats)?;
        }
        let mut s = self.state.lock();
        self.file.set_len(size)?;
        for b in size.div_ceil(BLCKSZ) as u32..s.bits.nblocks {
            s.dirty |= s.bits.clear(b);
        }
        Ok(())
    }

    /// Makes the file's data and its bitmap durable (see the module docs).
    pub fn sync(&self) -> io::Result<()> {
        let _order = self.persisting.lock();
        let snapshot = {
            let mut s = self.state.lock();
            if s.deleted {
                return Ok(());
            }
            let snap = s.dirty.then(|| (s.path.clone(), s.bits.to_bytes(), s.bits.remote));
            s.dirty = false;
            snap
        };
        self.file.sync_data()?;
        let Some((path, bytes, remote)) = snapshot else { return Ok(()) };
        let written = if remote == 0 { remove_if_present(&self.pending_path) } else { self.write_pending(&path, &bytes) };
        if written.is_err() {
            self.state.lock().dirty = true;
        }
        written
    }

    fn write_pending(&self, path: &str, bits: &[u8]) -> io::Result<()> {
        let nblocks = self.state.lock().bits.nblocks;
        let file = CloneFile { path: path.to_string(), source: self.source, first_block: self.first_block, nblocks };
        write_durably(&self.pending_path, &pending_bytes(&file, bits))
    }
}

/// Writes `pages` one after another at `offset` of `file`, with as few
/// `pwritev` calls as the kernel allows.
fn write_all_vectored_at(file: &File, pages: &[bytes::Bytes], mut offset: u64) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = pages.iter().map(|p| io::IoSlice::new(p)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let chunk = rest.len().min(IOV_MAX);
        let written = nix::sys::uio::pwritev(file, &rest[..chunk], offset as i64)?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        offset += written as u64;
        io::IoSlice::advance_slices(&mut rest, written);
    }
    Ok(())
}

/// The most buffers one `pwritev` takes (Linux's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// A `.pending` file's contents: the magic line, the file's manifest line,
/// then the bitmap of its blocks still remote.
fn pending_bytes(file: &CloneFile, bits: &[u8]) -> Vec<u8> {
    let mut out = format!("{PENDING_MAGIC}\n{}\n", file.to_line()).into_bytes();
    out.extend_from_slice(bits);
    out
}

/// The lazy files of a store, by path relative to the store.
pub struct Registry {
    files: RwLock<HashMap<String, Arc<LazyFile>>>,
    total_blocks: u64,
}

impl Registry {
    /// Writes the `.pending` files for a freshly populated store.
    pub fn create(lazy_dir: &Path, files: &[CloneFile]) -> io::Result<()> {
        std::fs::create_dir_all(lazy_dir)?;
        for (id, f) in files.iter().enumerate().filter(|(_, f)| f.nblocks > 0) {
            let out = pending_bytes(f, &Bits::all_remote(f.nblocks).to_bytes());
            std::fs::write(lazy_dir.join(format!("{id}.pending")), out)?;
        }
        File::open(lazy_dir)?.sync_all()
    }

    /// Loads every `.pending` file. A bitmap longer than its file (the file
    /// was truncated and the tool stopped before persisting) loses the bits
    /// past the end.
    pub fn load(store: &Path, lazy_dir: &Path) -> io::Result<Registry> {
        let mut files = HashMap::new();
        let mut total_blocks = 0u64;
        for entry in std::fs::read_dir(lazy_dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                std::fs::remove_file(entry.path())?;
                continue;
            }
            if name.strip_suffix(".pending").is_none_or(|id| id.parse::<u64>().is_err()) {
                continue;
            }
            let bytes = std::fs::read(entry.path())?;
            let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", entry.path().display()));
            let mut parts = bytes.splitn(3, |b| *b == b'\n');
            let (Some(magic), Some(header), Some(bits)) = (parts.next(), parts.next(), parts.next()) else { return Err(bad("truncated")) };
            if magic != PENDING_MAGIC.as_bytes() {
                return Err(bad("not a pending-blocks file"));
            }
            let cf = CloneFile::parse_line(std::str::from_utf8(header).map_err(|_| bad("header is not UTF-8"))?).map_err(|e| bad(&e))?;
            let mut bits = Bits::from_bytes(cf.nblocks, bits).ok_or_else(|| bad("bitmap of the wrong length"))?;
            let file = match std::fs::OpenOptions::new().read(true).write(true).open(store.join(&cf.path)) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Unlinked before the tool stopped.
                    std::fs::remove_file(entry.path())?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let len_blocks = file.metadata()?.len().div_ceil(BLCKSZ);
            for b in len_blocks.min(u64::from(cf.nblocks)) as u32..cf.nblocks {
                bits.clear(b);
            }
            total_blocks += u64::from(cf.nblocks);
            let lazy = LazyFile {
                source: cf.source,
                first_block: cf.first_block,
                file,
                state: Mutex::new(State {
                    path: cf.path.clone(),
                    bits,
                    dirty: false,
                    deleted: false,
                    in_flight: HashSet::new(),
                    streams: Vec::new(),
                }),
                fetched: Condvar::new(),
                persisting: Mutex::new(()),
                pending_path: entry.path(),
            };
            files.insert(cf.path, Arc::new(lazy));
        }
        Ok(Registry { files: RwLock::new(files), total_blocks })
    }

    pub fn get(&self, path: &str) -> Option<Arc<LazyFile>> {
        self.files.read().get(path).cloned()
    }

    /// The file at `path` was unlinked (or replaced by a rename).
    pub fn remove(&self, path: &str) -> io::Result<()> {
        let Some(lazy) = self.files.write().remove(path) else { return Ok(()) };
        let _order = lazy.persisting.lock();
        lazy.state.lock().deleted = true;
        remove_if_present(&lazy.pending_path)
    }

    /// `from` was renamed to `to` (a directory: every file under it).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let moved: Vec<(String, String)> = {
            let files = self.files.read();
            files
                .keys()
                .filter_map(|p| {
                    if p == from {
                        Some((p.clone(), to.to_string()))
                    } else {
                        p.strip_prefix(from).filter(|rest| rest.starts_with('/')).map(|rest| (p.clone(), format!("{to}{rest}")))
                    }
                })
                .collect()
        };
        for (old, new) in moved {
            let lazy = self.files.write().remove(&old).expect("listed above");
            {
                let mut s = lazy.state.lock();
                s.path = new.clone();
                s.dirty = true;
            }
            lazy.sync()?;
            self.files.write().insert(new, lazy);
        }
        Ok(())
    }

    /// Persists every file with changed bits.
    pub fn sync_all(&self) -> io::Result<()> {
        let files: Vec<Arc<LazyFile>> = self.files.read().values().cloned().collect();
        for f in files {
            if f.state.lock().dirty {
                f.sync()?;
            }
        }
        Ok(())
    }

    /// (blocks still remote, blocks at the first mount).
    pub fn remote_and_total(&self) -> (u64, u64) {
        let remote = self.files.read().values().map(|f| u64::from(f.remote_blocks())).sum();
        (remote, self.total_blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            path: String::new(),
            bits: Bits::all_remote(10_000),
            dirty: false,
            deleted: false,
            in_flight: HashSet::new(),
            streams: Vec::new(),
        }
    }

    #[test]
    fn sequential_reads_grow_their_read_ahead_and_random_ones_get_none() {
        let mut s = state();
        // A scan from block 0 in reads of 16 blocks: none, then 32, 64, ... 1024.
        assert_eq!(s.read_ahead(0, 15), 0);
        let mut at = 16;
        let mut seen = Vec::new();
        for _ in 0..7 {
            let ahead = s.read_ahead(at, at + 15);
            seen.push(ahead);
            at += 16 + ahead;
        }
        assert_eq!(seen, [32, 64, 128, 256, 512, 1024, 1024]);
        // A read overlapping the end of what was fetched continues it too.
        let ahead = s.read_ahead(at - 4, at + 11);
        assert_eq!(ahead, 1024);
        // Random reads far apart start streams of their own, without read-ahead.
        let mut s = state();
        for b in [5000, 100, 9000, 2500, 7000] {
            assert_eq!(s.read_ahead(b, b), 0);
        }
        // Two interleaved scans (a parallel scan's workers) keep their own streams.
        let mut s = state();
        assert_eq!((s.read_ahead(0, 7), s.read_ahead(4000, 4007)), (0, 0));
        assert_eq!((s.read_ahead(8, 15), s.read_ahead(4008, 4015)), (32, 32));
        assert_eq!((s.read_ahead(48, 55), s.read_ahead(4048, 4055)), (64, 64));
    }

    #[test]
    fn a_reader_reaching_a_window_fetched_ahead_gets_the_next_one() {
        let mut st = state();
        assert_eq!(st.read_ahead(0, 15), 0);
        assert_eq!(st.read_ahead(16, 31), 32); // fetched 16..64, 32..64 ahead
        let lazy = LazyFile {
            source: RelTag::new(1663, 5, 16384, 0),
            first_block: 0,
            file: tempfile::tempfile().unwrap(),
            state: Mutex::new(st),
            fetched: Condvar::new(),
            persisting: Mutex::new(()),
            pending_path: PathBuf::from("/nonexistent"),
        };
        // Before the window fetched ahead: nothing yet.
        assert!(lazy.next_window(0, 15).is_empty());
        // Reaching it: the next 64 blocks, marked in flight.
        let next = lazy.next_window(16, 31);
        assert_eq!((next.first(), next.last(), next.len()), (Some(&64), Some(&127), 64));
        assert!(lazy.state.lock().in_flight.contains(&100));
        // Not twice; the one after comes when the reader reaches 64..128.
        assert!(lazy.next_window(32, 47).is_empty());
        let after = lazy.next_window(64, 71);
        assert_eq!((after.first(), after.len()), (Some(&128), 128));
    }

    #[test]
    fn pending_files_survive_a_rename_and_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (store, lazy_dir) = (dir.path().join("store"), dir.path().join("lazy"));
        std::fs::create_dir_all(store.join("base/1")).unwrap();
        std::fs::File::create(store.join("base/1/100")).unwrap().set_len(4 * BLCKSZ).unwrap();
        let file = CloneFile { path: "base/1/100".into(), source: RelTag::new(1663, 1, 100, 0), first_block: 0, nblocks: 4 };
        Registry::create(&lazy_dir, &[file]).unwrap();
        let registry = Registry::load(&store, &lazy_dir).unwrap();
        assert_eq!(registry.remote_and_total(), (4, 4));

        std::fs::rename(store.join("base/1/100"), store.join("base/1/200")).unwrap();
        registry.rename("base/1/100", "base/1/200").unwrap();
        let reloaded = Registry::load(&store, &lazy_dir).unwrap();
        assert!(reloaded.get("base/1/100").is_none());
        let moved = reloaded.get("base/1/200").expect("the renamed file keeps its pending blocks");
        assert_eq!((moved.remote_blocks(), moved.source), (4, RelTag::new(1663, 1, 100, 0)));
        let names: Vec<String> =
            std::fs::read_dir(&lazy_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["0.pending"], "no temporary file is left behind");
    }

    #[test]
    fn vectored_writes_put_every_page_in_place_past_the_iovec_limit() {
        let file = tempfile::tempfile().unwrap();
        let pages: Vec<bytes::Bytes> = (0..IOV_MAX + 300).map(|i| bytes::Bytes::from(vec![(i % 251) as u8; BLCKSZ as usize])).collect();
        write_all_vectored_at(&file, &pages, BLCKSZ).unwrap();
        assert_eq!(file.metadata().unwrap().len(), (pages.len() as u64 + 1) * BLCKSZ);
        let mut page = vec![0u8; BLCKSZ as usize];
        for i in [0, 1, IOV_MAX - 1, IOV_MAX, pages.len() - 1] {
            file.read_exact_at(&mut page, (i as u64 + 1) * BLCKSZ).unwrap();
            assert!(page.iter().all(|b| *b == (i % 251) as u8), "page {i}");
        }
    }

    #[test]
    fn bits_round_trip_and_count() {
        for n in [1u32, 63, 64, 65, 131072] {
            let mut b = Bits::all_remote(n);
            assert_eq!(b.remote, n);
            assert!(b.is_remote(n - 1) && !b.is_remote(n));
            assert!(b.clear(0) && !b.clear(0));
            let back = Bits::from_bytes(n, &b.to_bytes()).unwrap();
            assert_eq!((back.remote, back.is_remote(0), back.is_remote(n - 1)), (n - 1, false, n > 1));
        }
        assert!(Bits::from_bytes(9, &[0]).is_none());
    }
}
