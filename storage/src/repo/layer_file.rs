//! Layer files: immutable, self-describing, checksummed.
//!
//! A **delta layer** holds every version (records and images) of the keys in
//! its key range whose LSN lies in its LSN range `[lsn_start, lsn_end)`. An
//! **image layer** holds the materialized value of every key of its key range
//! that exists at one LSN `L`; its LSN range is `[L, L + 1)`.
//!
//! ## File name
//!
//! ```text
//! delta: D<level>_<key start>-<key end>_<lsn start>-<lsn end>_<seq>
//! image: I_<key start>-<key end>_<lsn>_<seq>
//! ```
//!
//! Keys are 36 hexadecimal digits (see [`Key`]'s `Display`), LSNs and `seq`
//! 16. `seq` is unique within the timeline, so a rewritten layer never
//! takes the name of one a reader may still hold. `level` is 0 for layers
//! flushed from memory and 1 for layers written by compaction.
//!
//! ## File format (version 1; integers little-endian, keys big-endian)
//!
//! ```text
//! header, 64 bytes at offset 0:
//!    0  magic            b"PSLAYER\0"
//!    8  format version   u16 = 1
//!   10  kind             u8: 1 delta, 2 image
//!   11  level            u8
//!   12  key start        [18]
//!   30  key end          [18]   (exclusive)
//!   48  lsn start        u64
//!   56  lsn end          u64    (exclusive)
//! blocks, one after another from offset 64:
//!    payload length      u32
//!    crc32c(payload)     u32
//!    payload: entries sorted by (key, lsn), each
//!       key [18] | lsn u64 | flags u8 | length u32 | bytes
//!       flags bit 0: bytes = uncompressed length u32 | zstd frame of the encoded value
//!       otherwise:   bytes = the encoded value (see `crate::value`)
//! block index, one 48-byte entry per block (the seek structure):
//!    first key [18] | last key [18] | block offset u64 | payload length u32
//! trailer, the last 40 bytes:
//!    index offset u64 | block count u32 | entry count u64 |
//!    crc32c(header) u32 | crc32c(block index) u32 | crc32c(previous 28 trailer bytes) u32 |
//!    magic b"PSLTRAIL"
//! ```
//!
//! Page images are stored zstd-compressed. A block is closed at the first
//! entry that brings its payload to 8 KiB or more; all versions of a key are contiguous but may span
//! blocks, so a lookup reads every block whose `[first key, last key]`
//! contains the key. Every byte of the file is covered by a checksum, so a
//! damaged byte fails the read that touches it with [`RepoError::Corrupt`]
//! naming the file — never a panic or wrong data.
//!
//! Writing: the file is written under `<name>.tmp`, fsynced, renamed to its
//! name, and the directory fsynced. Only then may an index reference it.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::{io_error, CrashPoints, RepoError, Result};
use crate::key::{Key, KeyRange, KEY_SIZE};
use crate::lsn::Lsn;
use crate::value::Value;

pub const LAYER_FORMAT_VERSION: u16 = 1;
const HEADER_MAGIC: &[u8; 8] = b"PSLAYER\0";
const TRAILER_MAGIC: &[u8; 8] = b"PSLTRAIL";
const HEADER_SIZE: usize = 64;
const TRAILER_SIZE: usize = 40;
const INDEX_ENTRY_SIZE: usize = 48;
const BLOCK_HEADER_SIZE: usize = 8;
const ENTRY_HEADER_SIZE: usize = KEY_SIZE + 8 + 1 + 4;
/// A block is closed once its payload reaches this size.
pub const BLOCK_TARGET_SIZE: usize = 8 * 1024;
const FLAG_COMPRESSED: u8 = 0x01;
/// Images at least this long are compressed.
const COMPRESS_MIN_LEN: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum LayerKind {
    Delta,
    Image,
}

/// A half-open LSN range `[start, end)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct LsnRange {
    pub start: Lsn,
    pub end: Lsn,
}

impl LsnRange {
    pub fn contains(&self, lsn: &Lsn) -> bool {
        self.start <= *lsn && *lsn < self.end
    }
}

impl From<Range<Lsn>> for LsnRange {
    fn from(range: Range<Lsn>) -> LsnRange {
        LsnRange { start: range.start, end: range.end }
    }
}

impl std::fmt::Display for LsnRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// Everything a layer file's name says about it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct LayerName {
    pub kind: LayerKind,
    /// 0: flushed from memory; 1: written by compaction. Always 0 for images.
    pub level: u8,
    pub key_range: KeyRange,
    /// `[start, end)`; for an image at `L`, `[L, L + 1)`.
    pub lsn_range: LsnRange,
    pub seq: u64,
}

impl LayerName {
    /// The LSN of an image layer.
    pub fn image_lsn(&self) -> Lsn {
        self.lsn_range.start
    }

    pub fn is_image(&self) -> bool {
        self.kind == LayerKind::Image
    }

    pub fn file_name(&self) -> String {
        let KeyRange { start, end } = self.key_range;
        match self.kind {
            LayerKind::Delta => {
                format!("D{}_{start}-{end}_{:016X}-{:016X}_{:016X}", self.level, self.lsn_range.start.0, self.lsn_range.end.0, self.seq)
            }
            LayerKind::Image => format!("I_{start}-{end}_{:016X}_{:016X}", self.lsn_range.start.0, self.seq),
        }
    }

    /// Parses a name [`file_name`](Self::file_name) made; `None` for any other file.
    pub fn parse(name: &str) -> Option<LayerName> {
        let hex64 = |s: &str| if s.len() == 16 { u64::from_str_radix(s, 16).ok() } else { None };
        let key_range = |s: &str| {
            let (a, b) = s.split_once('-')?;
            Some(KeyRange::new(a.parse().ok()?, b.parse().ok()?))
        };
        let parts: Vec<&str> = name.split('_').collect();
        match parts.as_slice() {
            [kind, keys, lsns, seq] if kind.len() == 2 && kind.starts_with('D') => {
                let level: u8 = kind[1..].parse().ok()?;
                let (a, b) = lsns.split_once('-')?;
                Some(LayerName {
                    kind: LayerKind::Delta,
                    level,
                    key_range: key_range(keys)?,
                    lsn_range: (Lsn(hex64(a)?)..Lsn(hex64(b)?)).into(),
                    seq: hex64(seq)?,
                })
            }
            ["I", keys, lsn, seq] => {
                let lsn = hex64(lsn)?;
                Some(LayerName {
                    kind: LayerKind::Image,
                    level: 0,
                    key_range: key_range(keys)?,
                    lsn_range: (Lsn(lsn)..Lsn(lsn.checked_add(1)?)).into(),
                    seq: hex64(seq)?,
                })
            }
            _ => None,
        }
    }
}

thread_local! {
    // Contexts are expensive to create (hundreds of KiB): one per thread.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

fn compress(data: &[u8]) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Compressor::new(1)?);
        }
        slot.as_mut().unwrap().compress(data)
    })
}

fn decompress(data: &[u8], len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        slot.as_mut().unwrap().decompress(data, len)
    })
}

/// Writes `bytes` to `path` durably: temp file, fsync, rename, directory fsync.
pub(crate) fn write_file_durably(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    fsync: bool,
    crash: &CrashPoints,
    crash_prefix: &'static str,
) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp).map_err(io_error(&tmp))?;
    file.write_all(bytes).map_err(io_error(&tmp))?;
    if fsync {
        file.sync_all().map_err(io_error(&tmp))?;
    }
    drop(file);
    crash.hit(crash_prefix)?;
    let path = dir.join(name);
    fs::rename(&tmp, &path).map_err(io_error(&path))?;
    if fsync {
        sync_dir(dir)?;
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

struct BlockIndexEntry {
    first_key: Key,
    last_key: Key,
    offset: u64,
    len: u32,
}

/// Writes one layer file; entries must come in increasing (key, lsn) order.
pub struct LayerWriter {
    name: LayerName,
    dir: PathBuf,
    tmp_path: PathBuf,
    file: BufWriter<File>,
    offset: u64,
    block: Vec<u8>,
    block_first_key: Option<Key>,
    last: Option<(Key, Lsn)>,
    index: Vec<BlockIndexEntry>,
    entry_count: u64,
    fsync: bool,
    finished: bool,
}

impl Drop for LayerWriter {
    /// An abandoned write (an error on the way) leaves no temp file behind.
    fn drop(&mut self) {
        if !self.finished {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

fn encode_header(name: &LayerName) -> [u8; HEADER_SIZE] {
    let mut header = [0u8; HEADER_SIZE];
    header[0..8].copy_from_slice(HEADER_MAGIC);
    header[8..10].copy_from_slice(&LAYER_FORMAT_VERSION.to_le_bytes());
    header[10] = match name.kind {
        LayerKind::Delta => 1,
        LayerKind::Image => 2,
    };
    header[11] = name.level;
    header[12..30].copy_from_slice(&name.key_range.start.to_bytes());
    header[30..48].copy_from_slice(&name.key_range.end.to_bytes());
    header[48..56].copy_from_slice(&name.lsn_range.start.0.to_le_bytes());
    header[56..64].copy_from_slice(&name.lsn_range.end.0.to_le_bytes());
    header
}

impl LayerWriter {
    pub fn new(dir: &Path, name: LayerName, fsync: bool) -> Result<LayerWriter> {
        let tmp_path = dir.join(format!("{}.tmp", name.file_name()));
        let file = File::create(&tmp_path).map_err(io_error(&tmp_path))?;
        let mut writer = LayerWriter {
            name,
            dir: dir.to_path_buf(),
            tmp_path,
            file: BufWriter::with_capacity(256 * 1024, file),
            offset: 0,
            block: Vec::with_capacity(BLOCK_TARGET_SIZE * 2),
            block_first_key: None,
            last: None,
            index: Vec::new(),
            entry_count: 0,
            fsync,
            finished: false,
        };
        writer.write(&[0u8; HEADER_SIZE])?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write_all(bytes).map_err(io_error(&self.tmp_path))?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Adds a value; page images are compressed.
    pub fn put_value(&mut self, key: Key, lsn: Lsn, value: &Value) -> Result<()> {
        let encoded = value.encode();
        if value.is_image() && encoded.len() >= COMPRESS_MIN_LEN {
            let compressed = compress(&encoded).map_err(io_error(&self.tmp_path))?;
            if compressed.len() + 4 < encoded.len() {
                let mut bytes = Vec::with_capacity(compressed.len() + 4);
                bytes.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
                bytes.extend_from_slice(&compressed);
                return self.put_raw(key, lsn, FLAG_COMPRESSED, &bytes);
            }
        }
        self.put_raw(key, lsn, 0, &encoded)
    }

    /// Adds an entry as stored in another layer file (no recompression).
    pub(crate) fn put_raw(&mut self, key: Key, lsn: Lsn, flags: u8, bytes: &[u8]) -> Result<()> {
        if let Some(last) = self.last {
            if last >= (key, lsn) {
                return Err(RepoError::Invalid(format!(
                    "layer {}: entry ({key}, {lsn}) after ({}, {})",
                    self.name.file_name(),
                    last.0,
                    last.1
                )));
            }
        }
        if !self.name.key_range.contains(key) || !self.name.lsn_range.contains(&lsn) {
            return Err(RepoError::Invalid(format!("layer {}: entry ({key}, {lsn}) outside its ranges", self.name.file_name())));
        }
        self.last = Some((key, lsn));
        self.block_first_key.get_or_insert(key);
        self.block.extend_from_slice(&key.to_bytes());
        self.block.extend_from_slice(&lsn.0.to_le_bytes());
        self.block.push(flags);
        self.block.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.block.extend_from_slice(bytes);
        self.entry_count += 1;
        if self.block.len() >= BLOCK_TARGET_SIZE {
            self.finish_block()?;
        }
        Ok(())
    }

    fn finish_block(&mut self) -> Result<()> {
        let Some(first_key) = self.block_first_key.take() else { return Ok(()) };
        let block = std::mem::take(&mut self.block);
        let entry = BlockIndexEntry {
            first_key,
            last_key: self.last.expect("a block has entries").0,
            offset: self.offset,
            len: block.len() as u32,
        };
        self.write(&(block.len() as u32).to_le_bytes())?;
        self.write(&crc32c::crc32c(&block).to_le_bytes())?;
        self.write(&block)?;
        self.index.push(entry);
        self.block = block;
        self.block.clear();
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.offset + self.block.len() as u64
    }

    pub fn entry_count(&self) -> u64 {
        self.entry_count
    }

    /// The last key added.
    pub fn last_key(&self) -> Option<Key> {
        self.last.map(|(key, _)| key)
    }

    /// Narrows the end of the key range (before [`finish`](Self::finish)); every
    /// key added must stay inside.
    pub fn set_key_end(&mut self, end: Key) -> Result<()> {
        if self.last.is_some_and(|(key, _)| key >= end) || end <= self.name.key_range.start {
            return Err(RepoError::Invalid(format!("key range end {end} would exclude written keys")));
        }
        self.name.key_range.end = end;
        Ok(())
    }

    /// Finishes the file durably under its final name; returns its name and size.
    pub fn finish(mut self, crash: &CrashPoints) -> Result<(LayerName, u64)> {
        self.finish_block()?;
        let header = encode_header(&self.name);
        let index_offset = self.offset;
        let mut index = Vec::with_capacity(self.index.len() * INDEX_ENTRY_SIZE);
        for entry in &self.index {
            index.extend_from_slice(&entry.first_key.to_bytes());
            index.extend_from_slice(&entry.last_key.to_bytes());
            index.extend_from_slice(&entry.offset.to_le_bytes());
            index.extend_from_slice(&entry.len.to_le_bytes());
        }
        self.write(&index)?;
        let mut trailer = Vec::with_capacity(TRAILER_SIZE);
        trailer.extend_from_slice(&index_offset.to_le_bytes());
        trailer.extend_from_slice(&(self.index.len() as u32).to_le_bytes());
        trailer.extend_from_slice(&self.entry_count.to_le_bytes());
        trailer.extend_from_slice(&crc32c::crc32c(&header).to_le_bytes());
        trailer.extend_from_slice(&crc32c::crc32c(&index).to_le_bytes());
        let trailer_crc = crc32c::crc32c(&trailer);
        trailer.extend_from_slice(&trailer_crc.to_le_bytes());
        trailer.extend_from_slice(TRAILER_MAGIC);
        self.write(&trailer)?;
        self.file.flush().map_err(io_error(&self.tmp_path))?;
        self.file.get_ref().write_all_at(&header, 0).map_err(io_error(&self.tmp_path))?;
        if self.fsync {
            self.file.get_ref().sync_all().map_err(io_error(&self.tmp_path))?;
        }
        if let Err(crash) = crash.hit("layer: written under temp name") {
            // A killed process leaves its temp file: so does a simulated crash.
            self.finished = true;
            return Err(crash);
        }
        let path = self.dir.join(self.name.file_name());
        fs::rename(&self.tmp_path, &path).map_err(io_error(&path))?;
        self.finished = true;
        if self.fsync {
            sync_dir(&self.dir)?;
        }
        crash.hit("layer: renamed")?;
        Ok((self.name, self.offset))
    }
}

/// One entry as stored: the value still encoded (and maybe compressed).
pub(crate) struct RawEntry {
    pub key: Key,
    pub lsn: Lsn,
    pub flags: u8,
    pub bytes: Bytes,
}

/// An open layer file: header, trailer and block index checked and in memory.
pub struct LayerReader {
    path: PathBuf,
    name: LayerName,
    file: File,
    blocks: Vec<BlockIndexEntry>,
    entry_count: u64,
}

impl LayerReader {
    /// Opens and checks a layer file; its header must agree with `name`.
    pub fn open(path: &Path, name: &LayerName) -> Result<LayerReader> {
        let corrupt = |msg: String| RepoError::Corrupt { path: path.to_path_buf(), msg };
        let file = OpenOptions::new().read(true).open(path).map_err(io_error(path))?;
        let size = file.metadata().map_err(io_error(path))?.len();
        if size < (HEADER_SIZE + TRAILER_SIZE) as u64 {
            return Err(corrupt(format!("{size} bytes is too short for a layer file")));
        }
        let mut header = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut header, 0).map_err(io_error(path))?;
        let mut trailer = [0u8; TRAILER_SIZE];
        file.read_exact_at(&mut trailer, size - TRAILER_SIZE as u64).map_err(io_error(path))?;
        if &trailer[32..40] != TRAILER_MAGIC {
            return Err(corrupt("bad trailer magic".into()));
        }
        let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        if crc32c::crc32c(&trailer[..28]) != u32_at(&trailer, 28) {
            return Err(corrupt("trailer checksum mismatch".into()));
        }
        if crc32c::crc32c(&header) != u32_at(&trailer, 20) {
            return Err(corrupt("header checksum mismatch".into()));
        }
        if &header[0..8] != HEADER_MAGIC {
            return Err(corrupt("bad header magic".into()));
        }
        let version = u16::from_le_bytes([header[8], header[9]]);
        if version != LAYER_FORMAT_VERSION {
            return Err(corrupt(format!("unsupported layer format version {version}")));
        }
        let kind = match header[10] {
            1 => LayerKind::Delta,
            2 => LayerKind::Image,
            other => return Err(corrupt(format!("unknown layer kind {other}"))),
        };
        let key_range = KeyRange::new(Key::from_slice(&header[12..30]).unwrap(), Key::from_slice(&header[30..48]).unwrap());
        let lsn_range = LsnRange { start: Lsn(u64_at(&header, 48)), end: Lsn(u64_at(&header, 56)) };
        if kind != name.kind || header[11] != name.level || key_range != name.key_range || lsn_range != name.lsn_range {
            return Err(corrupt(format!("header ({kind:?}, level {}, {key_range}, {lsn_range}) does not match the file name", header[11])));
        }
        let index_offset = u64_at(&trailer, 0);
        let block_count = u32_at(&trailer, 8) as u64;
        let entry_count = u64_at(&trailer, 12);
        let index_len = block_count * INDEX_ENTRY_SIZE as u64;
        if index_offset < HEADER_SIZE as u64 || index_offset + index_len != size - TRAILER_SIZE as u64 {
            return Err(corrupt("block index out of bounds".into()));
        }
        let mut index = vec![0u8; index_len as usize];
        file.read_exact_at(&mut index, index_offset).map_err(io_error(path))?;
        if crc32c::crc32c(&index) != u32_at(&trailer, 24) {
            return Err(corrupt("block index checksum mismatch".into()));
        }
        let mut blocks = Vec::with_capacity(block_count as usize);
        let mut expected_offset = HEADER_SIZE as u64;
        for chunk in index.chunks_exact(INDEX_ENTRY_SIZE) {
            let entry = BlockIndexEntry {
                first_key: Key::from_slice(&chunk[0..18]).unwrap(),
                last_key: Key::from_slice(&chunk[18..36]).unwrap(),
                offset: u64_at(chunk, 36),
                len: u32_at(chunk, 44),
            };
            if entry.offset != expected_offset || entry.first_key > entry.last_key {
                return Err(corrupt("block index inconsistent".into()));
            }
            expected_offset += BLOCK_HEADER_SIZE as u64 + entry.len as u64;
            blocks.push(entry);
        }
        if expected_offset != index_offset {
            return Err(corrupt("blocks do not end where the block index starts".into()));
        }
        Ok(LayerReader { path: path.to_path_buf(), name: *name, file, blocks, entry_count })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn name(&self) -> &LayerName {
        &self.name
    }

    pub fn entry_count(&self) -> u64 {
        self.entry_count
    }

    fn corrupt(&self, msg: String) -> RepoError {
        RepoError::Corrupt { path: self.path.clone(), msg }
    }

    fn read_block(&self, index: usize) -> Result<Bytes> {
        let entry = &self.blocks[index];
        let mut buf = vec![0u8; BLOCK_HEADER_SIZE + entry.len as usize];
        self.file.read_exact_at(&mut buf, entry.offset).map_err(io_error(&self.path))?;
        let len = u32::from_le_bytes(buf[0..4].try_into().unwrap());
        let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap());
        if len != entry.len {
            return Err(self.corrupt(format!("block at offset {} has length {len}, index says {}", entry.offset, entry.len)));
        }
        if crc32c::crc32c(&buf[BLOCK_HEADER_SIZE..]) != crc {
            return Err(self.corrupt(format!("checksum mismatch in block at offset {}", entry.offset)));
        }
        Ok(Bytes::from(buf).slice(BLOCK_HEADER_SIZE..))
    }

    /// Parses a checked block into its entries.
    fn parse_block(&self, index: usize, block: &Bytes, mut visit: impl FnMut(RawEntry) -> Result<bool>) -> Result<()> {
        let mut pos = 0;
        while pos < block.len() {
            if block.len() - pos < ENTRY_HEADER_SIZE {
                return Err(self.corrupt(format!("truncated entry in block {index}")));
            }
            let key = Key::from_slice(&block[pos..]).unwrap();
            let lsn = Lsn(u64::from_le_bytes(block[pos + 18..pos + 26].try_into().unwrap()));
            let flags = block[pos + 26];
            let len = u32::from_le_bytes(block[pos + 27..pos + 31].try_into().unwrap()) as usize;
            pos += ENTRY_HEADER_SIZE;
            if block.len() - pos < len {
                return Err(self.corrupt(format!("truncated value in block {index}")));
            }
            let bytes = block.slice(pos..pos + len);
            pos += len;
            if !visit(RawEntry { key, lsn, flags, bytes })? {
                break;
            }
        }
        Ok(())
    }

    /// Decodes a stored entry into a value.
    pub(crate) fn decode_value(&self, entry: &RawEntry) -> Result<Value> {
        let encoded = if entry.flags & FLAG_COMPRESSED != 0 {
            if entry.bytes.len() < 4 {
                return Err(self.corrupt(format!("compressed value of {} at {} truncated", entry.key, entry.lsn)));
            }
            let len = u32::from_le_bytes(entry.bytes[0..4].try_into().unwrap()) as usize;
            let out =
                decompress(&entry.bytes[4..], len).map_err(|e| self.corrupt(format!("value of {} at {}: {e}", entry.key, entry.lsn)))?;
            if out.len() != len {
                return Err(self.corrupt(format!("value of {} at {} decompressed to the wrong length", entry.key, entry.lsn)));
            }
            Bytes::from(out)
        } else if entry.flags == 0 {
            entry.bytes.clone()
        } else {
            return Err(self.corrupt(format!("unknown entry flags {:#x}", entry.flags)));
        };
        Value::decode(&encoded).map_err(|e| self.corrupt(format!("value of {} at {}: {e}", entry.key, entry.lsn)))
    }

    /// Appends the versions of `key` with LSN in `lsns`, in increasing LSN order.
    pub fn get_versions(&self, key: Key, lsns: Range<Lsn>, out: &mut Vec<(Lsn, Value)>) -> Result<()> {
        let first = self.blocks.partition_point(|b| b.last_key < key);
        for index in first..self.blocks.len() {
            if self.blocks[index].first_key > key {
                break;
            }
            let block = self.read_block(index)?;
            let mut raw = Vec::new();
            self.parse_block(index, &block, |entry| {
                if entry.key > key || entry.lsn >= lsns.end && entry.key == key {
                    return Ok(false);
                }
                if entry.key == key && entry.lsn >= lsns.start {
                    raw.push(entry);
                }
                Ok(true)
            })?;
            for entry in raw {
                out.push((entry.lsn, self.decode_value(&entry)?));
            }
        }
        Ok(())
    }

    /// [`get_versions`](Self::get_versions) for a read of many neighbouring
    /// keys: blocks come from `cache`, so each block is read, checked and
    /// parsed once per bulk read however many of its keys are asked for.
    pub(crate) fn get_versions_cached(
        self: &Arc<Self>,
        key: Key,
        lsns: Range<Lsn>,
        out: &mut Vec<(Lsn, Value)>,
        cache: &mut BlockCache,
    ) -> Result<()> {
        let first = self.blocks.partition_point(|b| b.last_key < key);
        for index in first..self.blocks.len() {
            if self.blocks[index].first_key > key {
                break;
            }
            let entries = cache.block(self, index)?;
            let start = entries.partition_point(|e| (e.key, e.lsn) < (key, lsns.start));
            for entry in entries[start..].iter().take_while(|e| e.key == key && e.lsn < lsns.end) {
                out.push((entry.lsn, self.decode_value(entry)?));
            }
        }
        Ok(())
    }

    /// True if the block index says `key` may be in this file (no I/O).
    pub fn may_contain(&self, key: Key) -> bool {
        let first = self.blocks.partition_point(|b| b.last_key < key);
        first < self.blocks.len() && self.blocks[first].first_key <= key
    }

    /// True if the file holds a version of some key of `range`. The block
    /// index settles it unless one block spans the whole range; then that
    /// block is read (at most one).
    pub fn has_key_in(&self, range: &KeyRange) -> Result<bool> {
        let index = self.blocks.partition_point(|b| b.last_key < range.start);
        let Some(block) = self.blocks.get(index) else { return Ok(false) };
        if block.first_key >= range.end {
            return Ok(false);
        }
        if block.first_key >= range.start || block.last_key < range.end {
            return Ok(true); // its first or its last key is in the range
        }
        let mut found = false;
        self.parse_block(index, &self.read_block(index)?, |entry| {
            found = entry.key >= range.start && entry.key < range.end;
            Ok(!found && entry.key < range.end)
        })?;
        Ok(found)
    }

    /// Every entry in (key, lsn) order, one block in memory at a time.
    pub(crate) fn for_each_entry(&self, mut visit: impl FnMut(RawEntry) -> Result<()>) -> Result<()> {
        for index in 0..self.blocks.len() {
            let block = self.read_block(index)?;
            self.parse_block(index, &block, |entry| visit(entry).map(|()| true))?;
        }
        Ok(())
    }

    /// An iterator over all entries, for merging; reads a block at a time.
    pub(crate) fn iter(self: &Arc<Self>) -> LayerIter {
        LayerIter { reader: self.clone(), next_block: 0, pending: Vec::new().into_iter() }
    }
}

/// The parsed blocks of layer files that one bulk read has visited (see
/// [`LayerReader::get_versions_cached`]). A block is keyed by its reader,
/// which the cache holds, so a key can never name another file's block.
/// Once the blocks held exceed `limit_bytes` the cache starts over.
pub(crate) struct BlockCache {
    /// (reader address, block number) → the reader (kept alive) and the block's entries.
    blocks: HashMap<(usize, usize), CachedBlock>,
    bytes: usize,
    limit_bytes: usize,
}

type CachedBlock = (Arc<LayerReader>, Arc<[RawEntry]>);

impl BlockCache {
    pub fn new(limit_bytes: usize) -> BlockCache {
        BlockCache { blocks: HashMap::new(), bytes: 0, limit_bytes }
    }

    fn block(&mut self, reader: &Arc<LayerReader>, index: usize) -> Result<Arc<[RawEntry]>> {
        let id = (Arc::as_ptr(reader) as usize, index);
        if let Some((_, entries)) = self.blocks.get(&id) {
            return Ok(entries.clone());
        }
        let block = reader.read_block(index)?;
        let mut entries = Vec::new();
        reader.parse_block(index, &block, |entry| {
            entries.push(entry);
            Ok(true)
        })?;
        let entries: Arc<[RawEntry]> = entries.into();
        if self.bytes + block.len() > self.limit_bytes {
            self.blocks.clear();
            self.bytes = 0;
        }
        self.bytes += block.len();
        self.blocks.insert(id, (reader.clone(), entries.clone()));
        Ok(entries)
    }
}

pub(crate) struct LayerIter {
    reader: Arc<LayerReader>,
    next_block: usize,
    pending: std::vec::IntoIter<RawEntry>,
}

impl LayerIter {
    pub fn next_entry(&mut self) -> Result<Option<RawEntry>> {
        loop {
            if let Some(entry) = self.pending.next() {
                return Ok(Some(entry));
            }
            if self.next_block >= self.reader.blocks.len() {
                return Ok(None);
            }
            let index = self.next_block;
            self.next_block += 1;
            let block = self.reader.read_block(index)?;
            let mut entries = Vec::new();
            self.reader.parse_block(index, &block, |entry| {
                entries.push(entry);
                Ok(true)
            })?;
            self.pending = entries.into_iter();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::RelTag;

    fn name() -> LayerName {
        LayerName { kind: LayerKind::Delta, level: 1, key_range: KeyRange::ALL, lsn_range: (Lsn(0x10)..Lsn(0x1000)).into(), seq: 7 }
    }

    #[test]
    fn name_round_trip() {
        let n = name();
        assert_eq!(LayerName::parse(&n.file_name()), Some(n));
        let image = LayerName { kind: LayerKind::Image, level: 0, lsn_range: (Lsn(5)..Lsn(6)).into(), ..n };
        assert_eq!(LayerName::parse(&image.file_name()), Some(image));
        assert_eq!(LayerName::parse("index"), None);
        assert_eq!(LayerName::parse(&format!("{}.tmp", n.file_name())), None);
    }

    #[test]
    fn write_then_read_every_version() {
        let dir = tempfile::tempdir().unwrap();
        let crash = CrashPoints::default();
        let mut writer = LayerWriter::new(dir.path(), name(), false).unwrap();
        let rel = RelTag::new(1663, 1, 100, 0);
        let mut expected = Vec::new();
        for blk in 0..50u32 {
            for lsn in [0x20u64, 0x30, 0x40] {
                let value = Value::Image(Bytes::from(vec![(blk as u8) ^ (lsn as u8); 8192]));
                writer.put_value(Key::rel_block(rel, blk), Lsn(lsn), &value).unwrap();
                expected.push((blk, lsn, value));
            }
        }
        let (written, size) = writer.finish(&crash).unwrap();
        assert!(size < 50 * 3 * 8192 / 10, "images were not compressed: {size} bytes");
        let reader = LayerReader::open(&dir.path().join(written.file_name()), &written).unwrap();
        assert_eq!(reader.entry_count(), 150);
        for (blk, lsn, value) in expected {
            let mut out = Vec::new();
            reader.get_versions(Key::rel_block(rel, blk), Lsn(lsn)..Lsn(lsn + 1), &mut out).unwrap();
            assert_eq!(out, vec![(Lsn(lsn), value)]);
        }
        let mut out = Vec::new();
        reader.get_versions(Key::rel_block(rel, 60), Lsn(0)..Lsn::MAX, &mut out).unwrap();
        assert!(out.is_empty());
        assert!(dir.path().read_dir().unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
    }

    #[test]
    fn out_of_order_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = LayerWriter::new(dir.path(), name(), false).unwrap();
        let key = Key::db_dir();
        writer.put_value(key, Lsn(0x20), &Value::Image(Bytes::new())).unwrap();
        assert!(writer.put_value(key, Lsn(0x20), &Value::Image(Bytes::new())).is_err());
        assert!(writer.put_value(key, Lsn(0x2000), &Value::Image(Bytes::new())).is_err());
    }
}
