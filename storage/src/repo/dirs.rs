//! Directory-like values and the reads built on them.
//!
//! Some keys hold small lists instead of pages. Their values are images in
//! these formats (integers little-endian; entries sorted, no duplicates):
//!
//! | key | value |
//! |---|---|
//! | [`Key::rel_size`] | `nblocks u32` |
//! | [`Key::slru_segment_size`] | `nblocks u32` |
//! | [`Key::rel_dir`] | `version u8 = 1 \| count u32 \| count × (rel_node u32, fork u8)` |
//! | [`Key::db_dir`] | `version u8 = 1 \| count u32 \| count × (spc_node u32, db_node u32)` |
//! | [`Key::slru_dir`] | `version u8 = 1 \| count u32 \| count × segno u32` |
//! | [`Key::twophase_dir`] | `version u8 = 1 \| count u32 \| count × xid u32` |
//!
//! Ingest rewrites a directory value as a whole image when it changes.

use std::collections::BTreeSet;

use bytes::Bytes;

use super::timeline::Timeline;
use super::{RepoError, Result};
use crate::key::{Key, RelTag, SlruKind};
use crate::lsn::Lsn;

const DIR_FORMAT_VERSION: u8 = 1;
/// PostgreSQL's block size, as a `u64` for byte counts.
pub const BLCKSZ: u64 = pg_constants::BLCKSZ as u64;

/// Encodes a sorted list of fixed-width entries.
fn encode_list<T>(items: &BTreeSet<T>, entry: impl Fn(&T, &mut Vec<u8>)) -> Bytes {
    let mut out = vec![DIR_FORMAT_VERSION];
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for item in items {
        entry(item, &mut out);
    }
    Bytes::from(out)
}

fn decode_list<T: Ord>(key: Key, bytes: &[u8], width: usize, entry: impl Fn(&[u8]) -> T) -> Result<BTreeSet<T>> {
    let bad = |msg: &str| RepoError::Invalid(format!("directory value of {key:?}: {msg}"));
    if bytes.len() < 5 || bytes[0] != DIR_FORMAT_VERSION {
        return Err(bad("bad header"));
    }
    let count = u32::from_le_bytes(bytes[1..5].try_into().unwrap()) as usize;
    if bytes.len() != 5 + count * width {
        return Err(bad("length does not match count"));
    }
    Ok(bytes[5..].chunks_exact(width).map(entry).collect())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// The relation forks of one database: (rel_node, fork).
pub fn encode_rel_dir(rels: &BTreeSet<(u32, u8)>) -> Bytes {
    encode_list(rels, |(rel, fork), out| {
        out.extend_from_slice(&rel.to_le_bytes());
        out.push(*fork);
    })
}

pub fn decode_rel_dir(bytes: &[u8]) -> Result<BTreeSet<(u32, u8)>> {
    decode_list(Key::rel_dir(0, 0), bytes, 5, |e| (u32_at(e, 0), e[4]))
}

/// True if an encoded relation directory lists (rel_node, fork); a binary
/// search over the sorted entries, without decoding the whole list.
pub fn rel_dir_contains(bytes: &[u8], rel_node: u32, fork: u8) -> Result<bool> {
    if bytes.len() < 5 || bytes[0] != DIR_FORMAT_VERSION || !bytes[5..].chunks_exact(5).remainder().is_empty() {
        return Err(RepoError::Invalid("relation directory value is malformed".into()));
    }
    let entries = &bytes[5..];
    let count = entries.len() / 5;
    if count != u32_at(bytes, 1) as usize {
        return Err(RepoError::Invalid("relation directory value: length does not match count".into()));
    }
    let (mut lo, mut hi) = (0, count);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let entry = (u32_at(entries, mid * 5), entries[mid * 5 + 4]);
        match entry.cmp(&(rel_node, fork)) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Ok(true),
        }
    }
    Ok(false)
}

/// The databases: (spc_node, db_node).
pub fn encode_db_dir(dbs: &BTreeSet<(u32, u32)>) -> Bytes {
    encode_list(dbs, |(spc, db), out| {
        out.extend_from_slice(&spc.to_le_bytes());
        out.extend_from_slice(&db.to_le_bytes());
    })
}

pub fn decode_db_dir(bytes: &[u8]) -> Result<BTreeSet<(u32, u32)>> {
    decode_list(Key::db_dir(), bytes, 8, |e| (u32_at(e, 0), u32_at(e, 4)))
}

/// A set of u32 (SLRU segment numbers, two-phase xids).
pub fn encode_u32_dir(items: &BTreeSet<u32>) -> Bytes {
    encode_list(items, |item, out| out.extend_from_slice(&item.to_le_bytes()))
}

pub fn decode_u32_dir(bytes: &[u8]) -> Result<BTreeSet<u32>> {
    decode_list(Key::twophase_dir(), bytes, 4, |e| u32_at(e, 0))
}

pub fn encode_nblocks(nblocks: u32) -> Bytes {
    Bytes::copy_from_slice(&nblocks.to_le_bytes())
}

pub fn decode_nblocks(key: Key, bytes: &[u8]) -> Result<u32> {
    let bytes: [u8; 4] =
        bytes.try_into().map_err(|_| RepoError::Invalid(format!("size value of {key:?} is {} bytes, not 4", bytes.len())))?;
    Ok(u32::from_le_bytes(bytes))
}

impl Timeline {
    /// The size in blocks of a relation fork at `lsn`; `None` if the fork is
    /// not in its database's relation directory (never created, or dropped:
    /// a drop leaves the size key behind).
    pub fn get_rel_size(&self, rel: RelTag, lsn: Lsn) -> Result<Option<u32>> {
        if !self.rel_exists(rel, lsn)? {
            return Ok(None);
        }
        let key = Key::rel_size(rel);
        self.get(key, lsn)?.map(|v| decode_nblocks(key, &v)).transpose()
    }

    /// True if the relation fork is in its database's directory at `lsn`.
    pub fn rel_exists(&self, rel: RelTag, lsn: Lsn) -> Result<bool> {
        match self.get(Key::rel_dir(rel.spc_node, rel.db_node), lsn)? {
            Some(dir) => rel_dir_contains(&dir, rel.rel_node, rel.fork),
            None => Ok(false),
        }
    }

    /// The relation forks of a database at `lsn`.
    pub fn list_rels(&self, spc_node: u32, db_node: u32, lsn: Lsn) -> Result<Vec<RelTag>> {
        Ok(match self.get(Key::rel_dir(spc_node, db_node), lsn)? {
            Some(dir) => decode_rel_dir(&dir)?.into_iter().map(|(rel_node, fork)| RelTag { spc_node, db_node, rel_node, fork }).collect(),
            None => Vec::new(),
        })
    }

    /// The databases (spc_node, db_node) at `lsn`.
    pub fn list_dbs(&self, lsn: Lsn) -> Result<Vec<(u32, u32)>> {
        Ok(match self.get(Key::db_dir(), lsn)? {
            Some(dir) => decode_db_dir(&dir)?.into_iter().collect(),
            None => Vec::new(),
        })
    }

    /// Bytes of all relation forks of a database at `lsn`.
    pub fn db_size(&self, spc_node: u32, db_node: u32, lsn: Lsn) -> Result<u64> {
        let mut total = 0;
        for rel in self.list_rels(spc_node, db_node, lsn)? {
            total += u64::from(self.get_rel_size(rel, lsn)?.unwrap_or(0)) * BLCKSZ;
        }
        Ok(total)
    }

    /// The segments of an SLRU at `lsn`.
    pub fn list_slru_segments(&self, kind: SlruKind, lsn: Lsn) -> Result<Vec<u32>> {
        Ok(match self.get(Key::slru_dir(kind), lsn)? {
            Some(dir) => decode_u32_dir(&dir)?.into_iter().collect(),
            None => Vec::new(),
        })
    }

    /// A whole SLRU segment at `lsn` (its blocks concatenated), `None` if it does not exist.
    pub fn get_slru_segment(&self, kind: SlruKind, segno: u32, lsn: Lsn) -> Result<Option<Bytes>> {
        let size_key = Key::slru_segment_size(kind, segno);
        let Some(size) = self.get(size_key, lsn)? else { return Ok(None) };
        let nblocks = decode_nblocks(size_key, &size)?;
        let mut segment = Vec::with_capacity(nblocks as usize * BLCKSZ as usize);
        for blkno in 0..nblocks {
            match self.get(Key::slru_block(kind, segno, blkno), lsn)? {
                Some(page) => segment.extend_from_slice(&page),
                None => segment.resize(segment.len() + BLCKSZ as usize, 0),
            }
        }
        Ok(Some(Bytes::from(segment)))
    }

    /// The prepared transactions at `lsn`.
    pub fn list_twophase(&self, lsn: Lsn) -> Result<Vec<u32>> {
        Ok(match self.get(Key::twophase_dir(), lsn)? {
            Some(dir) => decode_u32_dir(&dir)?.into_iter().collect(),
            None => Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let rels: BTreeSet<(u32, u8)> = [(16384, 0), (16384, 1), (16390, 0)].into();
        assert_eq!(decode_rel_dir(&encode_rel_dir(&rels)).unwrap(), rels);
        let dbs: BTreeSet<(u32, u32)> = [(1663, 1), (1663, 5)].into();
        assert_eq!(decode_db_dir(&encode_db_dir(&dbs)).unwrap(), dbs);
        let segs: BTreeSet<u32> = [0, 1, 7].into();
        assert_eq!(decode_u32_dir(&encode_u32_dir(&segs)).unwrap(), segs);
        assert_eq!(decode_nblocks(Key::db_dir(), &encode_nblocks(42)).unwrap(), 42);
        assert!(decode_rel_dir(&encode_rel_dir(&rels)[..7]).is_err());
        let encoded = encode_rel_dir(&rels);
        for rel in [16380u32, 16384, 16385, 16390, 16391] {
            for fork in 0..3u8 {
                assert_eq!(rel_dir_contains(&encoded, rel, fork).unwrap(), rels.contains(&(rel, fork)), "{rel} {fork}");
            }
        }
        assert!(rel_dir_contains(&encoded[..7], 16384, 0).is_err());
    }
}
