//! The key space: every file PostgreSQL keeps, as fixed-width keys.
//!
//! A [`Key`] is 18 bytes, six fields compared in order (big-endian on disk,
//! so byte order equals key order):
//!
//! | field | width | meaning |
//! |---|---|---|
//! | `kind` | u8 | which family of file (the `KIND_*` constants) |
//! | `field2` | u32 | tablespace OID, or SLRU kind |
//! | `field3` | u32 | database OID |
//! | `field4` | u32 | relfilenode, or SLRU segment number |
//! | `field5` | u8 | fork number, or a sub-kind |
//! | `field6` | u32 | block number, xid, or a sub-kind |
//!
//! The families and how they fill the fields:
//!
//! | key | kind | field2 | field3 | field4 | field5 | field6 |
//! |---|---|---|---|---|---|---|
//! | relation block | 0x00 | spc | db | rel | fork | blkno |
//! | relation size (nblocks) | 0x00 | spc | db | rel | fork | 0xFFFFFFFF |
//! | relation directory of a database | 0x01 | spc | db | 0 | 0 | 0 |
//! | database directory | 0x02 | 0 | 0 | 0 | 0 | 0 |
//! | relmapper file (`pg_filenode.map`) | 0x03 | spc | db | 0 | 0 | 0 |
//! | SLRU directory | 0x10 | slru kind | 0 | 0 | 0 | 0 |
//! | SLRU block | 0x10 | slru kind | 0 | segno | 1 | blkno |
//! | SLRU segment size (blocks) | 0x10 | slru kind | 0 | segno | 1 | 0xFFFFFFFF |
//! | two-phase directory | 0x20 | 0 | 0 | 0 | 0 | 0 |
//! | two-phase state file | 0x20 | 0 | 0 | 0 | 1 | xid |
//! | `pg_control` | 0x30 | 0 | 0 | 0 | 0 | 0 |
//! | last checkpoint | 0x30 | 0 | 0 | 0 | 0 | 1 |
//! | latest commit (time lookups) | 0x30 | 0 | 0 | 0 | 0 | 2 |
//!
//! `0xFFFFFFFF` is `InvalidBlockNumber` in PostgreSQL, so a size key never
//! collides with a block. All blocks of one relation fork are contiguous,
//! followed by its size key, so a relation is one [`KeyRange`].

use std::fmt;
use std::ops::Range;

/// Width of an encoded key in bytes.
pub const KEY_SIZE: usize = 18;

/// `kind` of relation block and relation size keys.
pub const KIND_REL: u8 = 0x00;
/// `kind` of a database's relation directory.
pub const KIND_REL_DIR: u8 = 0x01;
/// `kind` of the database directory.
pub const KIND_DB_DIR: u8 = 0x02;
/// `kind` of a relmapper file.
pub const KIND_RELMAP: u8 = 0x03;
/// `kind` of SLRU keys.
pub const KIND_SLRU: u8 = 0x10;
/// `kind` of two-phase keys.
pub const KIND_TWOPHASE: u8 = 0x20;
/// `kind` of `pg_control` and the checkpoint.
pub const KIND_CONTROL: u8 = 0x30;

/// `field6` of a relation or SLRU segment size key.
const SIZE_MARKER: u32 = u32::MAX;

/// Tablespaces (`pg_default` is `base/`, `pg_global` is `global/`: the
/// shared catalogs, database 0) and fork numbers.
pub use pg_constants::{DEFAULTTABLESPACE_OID, FSM_FORKNUM, GLOBALTABLESPACE_OID, INIT_FORKNUM, MAIN_FORKNUM, VISIBILITYMAP_FORKNUM};

/// One relation fork, as PostgreSQL names its file (`RelFileNode` + fork).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct RelTag {
    pub spc_node: u32,
    pub db_node: u32,
    pub rel_node: u32,
    pub fork: u8,
}

impl RelTag {
    pub fn new(spc_node: u32, db_node: u32, rel_node: u32, fork: u8) -> RelTag {
        RelTag { spc_node, db_node, rel_node, fork }
    }

    /// The same relation, another fork.
    pub fn with_fork(self, fork: u8) -> RelTag {
        RelTag { fork, ..self }
    }
}

impl fmt::Display for RelTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.spc_node, self.db_node, self.rel_node)?;
        match self.fork {
            MAIN_FORKNUM => Ok(()),
            FSM_FORKNUM => write!(f, "_fsm"),
            VISIBILITYMAP_FORKNUM => write!(f, "_vm"),
            INIT_FORKNUM => write!(f, "_init"),
            other => write!(f, "_fork{other}"),
        }
    }
}

/// The SLRUs whose segments the page server keeps.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum SlruKind {
    /// `pg_xact`
    Clog = 0,
    /// `pg_multixact/offsets`
    MultiXactOffsets = 1,
    /// `pg_multixact/members`
    MultiXactMembers = 2,
}

impl SlruKind {
    pub const ALL: [SlruKind; 3] = [SlruKind::Clog, SlruKind::MultiXactOffsets, SlruKind::MultiXactMembers];

    pub fn from_u32(value: u32) -> Option<SlruKind> {
        match value {
            0 => Some(SlruKind::Clog),
            1 => Some(SlruKind::MultiXactOffsets),
            2 => Some(SlruKind::MultiXactMembers),
            _ => None,
        }
    }

    /// The directory of the data directory holding this SLRU.
    pub fn dir_name(self) -> &'static str {
        match self {
            SlruKind::Clog => "pg_xact",
            SlruKind::MultiXactOffsets => "pg_multixact/offsets",
            SlruKind::MultiXactMembers => "pg_multixact/members",
        }
    }
}

/// A fixed-width key; see the module docs for the layout.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub kind: u8,
    pub field2: u32,
    pub field3: u32,
    pub field4: u32,
    pub field5: u8,
    pub field6: u32,
}

/// What a key names, decoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KeyClass {
    RelBlock { rel: RelTag, blkno: u32 },
    RelSize { rel: RelTag },
    RelDir { spc_node: u32, db_node: u32 },
    DbDir,
    RelMapFile { spc_node: u32, db_node: u32 },
    SlruDir { kind: SlruKind },
    SlruBlock { kind: SlruKind, segno: u32, blkno: u32 },
    SlruSegmentSize { kind: SlruKind, segno: u32 },
    TwoPhaseDir,
    TwoPhaseFile { xid: u32 },
    ControlFile,
    Checkpoint,
    LatestCommit,
}

impl Key {
    /// The smallest key.
    pub const MIN: Key = Key { kind: 0, field2: 0, field3: 0, field4: 0, field5: 0, field6: 0 };
    /// The largest key; no real key uses it, so it can end a half-open range.
    pub const MAX: Key = Key { kind: u8::MAX, field2: u32::MAX, field3: u32::MAX, field4: u32::MAX, field5: u8::MAX, field6: u32::MAX };

    const fn new(kind: u8, field2: u32, field3: u32, field4: u32, field5: u8, field6: u32) -> Key {
        Key { kind, field2, field3, field4, field5, field6 }
    }

    /// Block `blkno` of a relation fork.
    pub fn rel_block(rel: RelTag, blkno: u32) -> Key {
        debug_assert_ne!(blkno, SIZE_MARKER, "InvalidBlockNumber is not a block");
        Key::new(KIND_REL, rel.spc_node, rel.db_node, rel.rel_node, rel.fork, blkno)
    }

    /// The size (in blocks) of a relation fork; its value is a little-endian u32.
    pub fn rel_size(rel: RelTag) -> Key {
        Key::new(KIND_REL, rel.spc_node, rel.db_node, rel.rel_node, rel.fork, SIZE_MARKER)
    }

    /// The list of relation forks of one database.
    pub fn rel_dir(spc_node: u32, db_node: u32) -> Key {
        Key::new(KIND_REL_DIR, spc_node, db_node, 0, 0, 0)
    }

    /// The list of databases.
    pub fn db_dir() -> Key {
        Key::new(KIND_DB_DIR, 0, 0, 0, 0, 0)
    }

    /// The relmapper file (`pg_filenode.map`) of a database, or the global one (spc 1664, db 0).
    pub fn relmap_file(spc_node: u32, db_node: u32) -> Key {
        Key::new(KIND_RELMAP, spc_node, db_node, 0, 0, 0)
    }

    /// Block `blkno` of SLRU segment `segno`.
    pub fn slru_block(kind: SlruKind, segno: u32, blkno: u32) -> Key {
        debug_assert_ne!(blkno, SIZE_MARKER, "InvalidBlockNumber is not a block");
        Key::new(KIND_SLRU, kind as u32, 0, segno, 1, blkno)
    }

    /// The size in blocks of SLRU segment `segno`.
    pub fn slru_segment_size(kind: SlruKind, segno: u32) -> Key {
        Key::new(KIND_SLRU, kind as u32, 0, segno, 1, SIZE_MARKER)
    }

    /// The list of segments of an SLRU.
    pub fn slru_dir(kind: SlruKind) -> Key {
        Key::new(KIND_SLRU, kind as u32, 0, 0, 0, 0)
    }

    /// The two-phase state file of transaction `xid`.
    pub fn twophase_file(xid: u32) -> Key {
        Key::new(KIND_TWOPHASE, 0, 0, 0, 1, xid)
    }

    /// The list of prepared transactions.
    pub fn twophase_dir() -> Key {
        Key::new(KIND_TWOPHASE, 0, 0, 0, 0, 0)
    }

    /// `global/pg_control`.
    pub fn control_file() -> Key {
        Key::new(KIND_CONTROL, 0, 0, 0, 0, 0)
    }

    /// The last checkpoint record's `CheckPoint` struct.
    pub fn checkpoint() -> Key {
        Key::new(KIND_CONTROL, 0, 0, 0, 0, 1)
    }

    /// The newest commit record and the latest commit time so far
    /// ([`crate::commit_time::CommitMark`]): not a PostgreSQL file.
    pub fn latest_commit() -> Key {
        Key::new(KIND_CONTROL, 0, 0, 0, 0, 2)
    }

    /// All blocks and the size key of one relation fork.
    pub fn rel_range(rel: RelTag) -> KeyRange {
        KeyRange::new(Key::rel_block(rel, 0), Key::rel_size(rel).next())
    }

    /// All blocks of all forks of all relations of one database.
    pub fn db_rel_range(spc_node: u32, db_node: u32) -> KeyRange {
        KeyRange::new(Key::new(KIND_REL, spc_node, db_node, 0, 0, 0), Key::new(KIND_REL, spc_node, db_node + 1, 0, 0, 0))
    }

    /// The smallest key greater than `self` (`Key::MAX` stays `Key::MAX`).
    pub fn next(self) -> Key {
        let mut bytes = self.to_bytes();
        for byte in bytes.iter_mut().rev() {
            if *byte == u8::MAX {
                *byte = 0;
            } else {
                *byte += 1;
                return Key::from_bytes(bytes);
            }
        }
        Key::MAX
    }

    /// Big-endian encoding; byte order equals key order.
    pub fn to_bytes(self) -> [u8; KEY_SIZE] {
        let mut out = [0u8; KEY_SIZE];
        out[0] = self.kind;
        out[1..5].copy_from_slice(&self.field2.to_be_bytes());
        out[5..9].copy_from_slice(&self.field3.to_be_bytes());
        out[9..13].copy_from_slice(&self.field4.to_be_bytes());
        out[13] = self.field5;
        out[14..18].copy_from_slice(&self.field6.to_be_bytes());
        out
    }

    pub fn from_bytes(bytes: [u8; KEY_SIZE]) -> Key {
        let u32_at = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        Key::new(bytes[0], u32_at(1), u32_at(5), u32_at(9), bytes[13], u32_at(14))
    }

    /// Decodes from the first [`KEY_SIZE`] bytes of `slice`.
    pub fn from_slice(slice: &[u8]) -> Option<Key> {
        let bytes: [u8; KEY_SIZE] = slice.get(..KEY_SIZE)?.try_into().ok()?;
        Some(Key::from_bytes(bytes))
    }

    /// What this key names, or `None` for a key no constructor makes.
    pub fn classify(self) -> Option<KeyClass> {
        let Key { kind, field2, field3, field4, field5, field6 } = self;
        match kind {
            KIND_REL => {
                let rel = RelTag::new(field2, field3, field4, field5);
                Some(if field6 == SIZE_MARKER { KeyClass::RelSize { rel } } else { KeyClass::RelBlock { rel, blkno: field6 } })
            }
            KIND_REL_DIR if (field4, field5, field6) == (0, 0, 0) => Some(KeyClass::RelDir { spc_node: field2, db_node: field3 }),
            KIND_DB_DIR if self == Key::db_dir() => Some(KeyClass::DbDir),
            KIND_RELMAP if (field4, field5, field6) == (0, 0, 0) => Some(KeyClass::RelMapFile { spc_node: field2, db_node: field3 }),
            KIND_SLRU if field3 == 0 => {
                let kind = SlruKind::from_u32(field2)?;
                match (field5, field6) {
                    (0, 0) if field4 == 0 => Some(KeyClass::SlruDir { kind }),
                    (1, SIZE_MARKER) => Some(KeyClass::SlruSegmentSize { kind, segno: field4 }),
                    (1, blkno) => Some(KeyClass::SlruBlock { kind, segno: field4, blkno }),
                    _ => None,
                }
            }
            KIND_TWOPHASE if (field2, field3, field4) == (0, 0, 0) => match field5 {
                0 if field6 == 0 => Some(KeyClass::TwoPhaseDir),
                1 => Some(KeyClass::TwoPhaseFile { xid: field6 }),
                _ => None,
            },
            KIND_CONTROL if (field2, field3, field4, field5) == (0, 0, 0, 0) => match field6 {
                0 => Some(KeyClass::ControlFile),
                1 => Some(KeyClass::Checkpoint),
                2 => Some(KeyClass::LatestCommit),
                _ => None,
            },
            _ => None,
        }
    }

    /// True for relation block and SLRU block keys: 8 KiB pages that the
    /// layers store compressed and image layers materialize.
    pub fn is_page(self) -> bool {
        matches!(self.classify(), Some(KeyClass::RelBlock { .. } | KeyClass::SlruBlock { .. }))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.to_bytes() {
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.classify() {
            Some(class) => write!(f, "{class:?}"),
            None => write!(f, "Key({self})"),
        }
    }
}

/// Parse the 36 hexadecimal digits [`Display`](fmt::Display) prints.
impl std::str::FromStr for Key {
    type Err = String;
    fn from_str(s: &str) -> Result<Key, String> {
        if s.len() != KEY_SIZE * 2 || !s.is_ascii() {
            return Err(format!("invalid key {s:?}: expected {} hexadecimal digits", KEY_SIZE * 2));
        }
        let mut bytes = [0u8; KEY_SIZE];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|e| format!("invalid key {s:?}: {e}"))?;
        }
        Ok(Key::from_bytes(bytes))
    }
}

/// A half-open range of keys `[start, end)`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct KeyRange {
    pub start: Key,
    pub end: Key,
}

impl KeyRange {
    /// Every key (`Key::MAX` itself is never used).
    pub const ALL: KeyRange = KeyRange { start: Key::MIN, end: Key::MAX };

    pub fn new(start: Key, end: Key) -> KeyRange {
        KeyRange { start, end }
    }

    /// The range holding only `key`.
    pub fn single(key: Key) -> KeyRange {
        KeyRange { start: key, end: key.next() }
    }

    pub fn contains(&self, key: Key) -> bool {
        self.start <= key && key < self.end
    }

    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    pub fn overlaps(&self, other: &KeyRange) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// True if every key of `other` is in `self`.
    pub fn covers(&self, other: &KeyRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }

    pub fn as_range(&self) -> Range<Key> {
        self.start..self.end
    }
}

impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Key> {
        let rel = RelTag::new(1663, 5, 16384, MAIN_FORKNUM);
        vec![
            Key::rel_block(rel, 0),
            Key::rel_block(rel, 7),
            Key::rel_block(rel.with_fork(VISIBILITYMAP_FORKNUM), 1),
            Key::rel_size(rel),
            Key::rel_dir(1663, 5),
            Key::db_dir(),
            Key::relmap_file(1664, 0),
            Key::slru_dir(SlruKind::Clog),
            Key::slru_block(SlruKind::MultiXactMembers, 3, 31),
            Key::slru_segment_size(SlruKind::MultiXactOffsets, 2),
            Key::twophase_dir(),
            Key::twophase_file(1234),
            Key::control_file(),
            Key::checkpoint(),
            Key::latest_commit(),
        ]
    }

    #[test]
    fn bytes_round_trip_and_order_matches_bytes() {
        let keys = samples();
        for key in &keys {
            assert_eq!(Key::from_bytes(key.to_bytes()), *key);
            assert_eq!(key.to_string().parse::<Key>().unwrap(), *key);
            assert!(key.classify().is_some(), "{key} does not classify");
        }
        for a in &keys {
            for b in &keys {
                assert_eq!(a.cmp(b), a.to_bytes().cmp(&b.to_bytes()));
            }
        }
    }

    #[test]
    fn distinct_constructors_make_distinct_keys() {
        let keys = samples();
        let set: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(set.len(), keys.len());
    }

    #[test]
    fn classify_inverts_constructors() {
        let rel = RelTag::new(1663, 5, 16384, FSM_FORKNUM);
        assert_eq!(Key::rel_block(rel, 9).classify(), Some(KeyClass::RelBlock { rel, blkno: 9 }));
        assert_eq!(Key::rel_size(rel).classify(), Some(KeyClass::RelSize { rel }));
        assert_eq!(
            Key::slru_block(SlruKind::Clog, 4, 2).classify(),
            Some(KeyClass::SlruBlock { kind: SlruKind::Clog, segno: 4, blkno: 2 })
        );
        assert_eq!(Key::twophase_file(77).classify(), Some(KeyClass::TwoPhaseFile { xid: 77 }));
        assert_eq!(Key::checkpoint().classify(), Some(KeyClass::Checkpoint));
        assert_eq!(Key::latest_commit().classify(), Some(KeyClass::LatestCommit));
    }

    #[test]
    fn relation_is_one_range() {
        let rel = RelTag::new(1663, 5, 16384, MAIN_FORKNUM);
        let range = Key::rel_range(rel);
        assert!(range.contains(Key::rel_block(rel, 0)));
        assert!(range.contains(Key::rel_block(rel, u32::MAX - 1)));
        assert!(range.contains(Key::rel_size(rel)));
        assert!(!range.contains(Key::rel_block(rel.with_fork(FSM_FORKNUM), 0)));
        assert!(Key::db_rel_range(1663, 5).contains(Key::rel_size(rel)));
        assert!(!Key::db_rel_range(1663, 5).contains(Key::rel_dir(1663, 5)));
    }

    #[test]
    fn next_carries() {
        let key = Key { field6: u32::MAX, ..Key::MIN };
        assert_eq!(key.next(), Key { field5: 1, ..Key::MIN });
        assert_eq!(Key::MAX.next(), Key::MAX);
        assert!(Key::db_dir() < Key::db_dir().next());
    }
}
