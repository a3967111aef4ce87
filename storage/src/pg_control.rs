//! PostgreSQL 15's control file and checkpoint formats
//! (`catalog/pg_control.h`).
//!
//! This module owns the byte layouts of `global/pg_control`
//! (`ControlFileData`, [`ControlFile`]) and of the checkpoint it and the
//! checkpoint WAL records carry (`CheckPoint`, [`CheckPoint`]), the checks a
//! control file must pass, its CRC, and the counter arithmetic of a
//! checkpoint's next transaction ID (epoch included) and next multixact.
//! Import ([`crate::import`]) reads control files, WAL ingest
//! ([`crate::walingest`], [`crate::wal::ingest`]) keeps the checkpoint
//! current, backups ([`crate::backup`]) rewrite both.
//!
//! Layouts are those of 64-bit platforms (8-byte alignment of `uint64`,
//! `pg_time_t` and `double`), little-endian, as `offsetof` gives them with
//! the PostgreSQL 15 server headers.
//!
//! `CheckPoint`, 88 bytes ([`SIZE_OF_CHECKPOINT`]); padding is written as
//! zeros, as `CreateCheckPoint` leaves it:
//!
//! ```text
//!  0 redo u64            8 ThisTimeLineID u32   12 PrevTimeLineID u32
//! 16 fullPageWrites u8  24 nextXid u64 (epoch << 32 | xid)
//! 32 nextOid  36 nextMulti  40 nextMultiOffset  44 oldestXid  48 oldestXidDB
//! 52 oldestMulti  56 oldestMultiDB  64 time i64
//! 72 oldestCommitTsXid  76 newestCommitTsXid  80 oldestActiveXid
//! ```
//!
//! `ControlFileData`, 296 bytes ([`SIZE_OF_CONTROL_FILE_DATA`]) at the start
//! of the 8192-byte file ([`PG_CONTROL_FILE_SIZE`], zeros after it); the
//! fields [`ControlFile`] reads are marked `*`, the others are kept as they
//! are when a control file is rewritten ([`ControlFile::write_to`]):
//!
//! ```text
//!   0 system_identifier u64 *     8 pg_control_version u32 *  12 catalog_version_no u32 *
//!  16 state u32 (DBState) *      24 time i64 *               32 checkPoint u64 *
//!  40 checkPointCopy CheckPoint * (88 bytes)                128 unloggedLSN u64
//! 136 minRecoveryPoint u64 *    144 minRecoveryPointTLI u32 * 152 backupStartPoint u64 *
//! 160 backupEndPoint u64 *      168 backupEndRequired u8 *  172 wal_level i32 *
//! 176 wal_log_hints u8 *        180 MaxConnections          184 max_worker_processes
//! 188 max_wal_senders           192 max_prepared_xacts *    196 max_locks_per_xact
//! 200 track_commit_timestamp u8 204 maxAlign                208 floatFormat f64
//! 216 blcksz *  220 relseg_size *  224 xlog_blcksz *  228 xlog_seg_size *
//! 232 nameDataLen  236 indexMaxKeys  240 toast_max_chunk_size  244 loblksize
//! 248 float8ByVal u8            252 data_checksum_version * 256 mock_authentication_nonce [u8; 32]
//! 288 crc u32: CRC-32C of bytes 0..288
//! ```

use crate::lsn::Lsn;
use crate::wal::record::{u32_at, u64_at};
use crate::wal::{is_valid_segment_size, BLCKSZ, XLOG_BLCKSZ};

/// `PG_CONTROL_VERSION` of PostgreSQL 15.
pub const PG_CONTROL_VERSION: u32 = 1300;
/// `PG_CONTROL_FILE_SIZE`: bytes of `global/pg_control` on disk.
pub const PG_CONTROL_FILE_SIZE: usize = 8192;
/// `sizeof(ControlFileData)`.
pub const SIZE_OF_CONTROL_FILE_DATA: usize = 296;
/// `sizeof(CheckPoint)`.
pub const SIZE_OF_CHECKPOINT: usize = 88;

/// `DBState` values (`ControlFileData.state`).
pub const DB_STARTUP: u32 = 0;
pub const DB_SHUTDOWNED: u32 = 1;
pub const DB_SHUTDOWNED_IN_RECOVERY: u32 = 2;
pub const DB_SHUTDOWNING: u32 = 3;
pub const DB_IN_CRASH_RECOVERY: u32 = 4;
pub const DB_IN_ARCHIVE_RECOVERY: u32 = 5;
pub const DB_IN_PRODUCTION: u32 = 6;

/// XLOG record types (`info & XLR_RMGR_INFO_MASK`) that carry or change the checkpoint.
pub const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
pub const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
pub const XLOG_NEXTOID: u8 = 0x30;

/// `FirstNormalTransactionId`.
pub const FIRST_NORMAL_TRANSACTION_ID: u32 = 3;

/// Offsets of the fields of `ControlFileData` (see the module docs).
pub mod offsets {
    pub const SYSTEM_IDENTIFIER: usize = 0;
    pub const PG_CONTROL_VERSION: usize = 8;
    pub const CATALOG_VERSION_NO: usize = 12;
    pub const STATE: usize = 16;
    pub const TIME: usize = 24;
    pub const CHECKPOINT: usize = 32;
    pub const CHECKPOINT_COPY: usize = 40;
    pub const MIN_RECOVERY_POINT: usize = 136;
    pub const MIN_RECOVERY_POINT_TLI: usize = 144;
    pub const BACKUP_START_POINT: usize = 152;
    pub const BACKUP_END_POINT: usize = 160;
    pub const BACKUP_END_REQUIRED: usize = 168;
    pub const WAL_LEVEL: usize = 172;
    pub const WAL_LOG_HINTS: usize = 176;
    pub const MAX_PREPARED_XACTS: usize = 192;
    pub const BLCKSZ: usize = 216;
    pub const RELSEG_SIZE: usize = 220;
    pub const XLOG_BLCKSZ: usize = 224;
    pub const XLOG_SEG_SIZE: usize = 228;
    pub const DATA_CHECKSUM_VERSION: usize = 252;
    /// `offsetof(ControlFileData, crc)`: the CRC covers everything before it.
    pub const CRC: usize = 288;
}

fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
    b[at..at + bytes.len()].copy_from_slice(bytes);
}

/// PostgreSQL 15's `CheckPoint` (layout in the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckPoint {
    pub redo: Lsn,
    pub this_timeline_id: u32,
    pub prev_timeline_id: u32,
    pub full_page_writes: bool,
    /// `FullTransactionId`: epoch in the high 32 bits.
    pub next_xid: u64,
    pub next_oid: u32,
    pub next_multi: u32,
    pub next_multi_offset: u32,
    pub oldest_xid: u32,
    pub oldest_xid_db: u32,
    pub oldest_multi: u32,
    pub oldest_multi_db: u32,
    /// `pg_time_t`: seconds since the Unix epoch.
    pub time: i64,
    pub oldest_commit_ts_xid: u32,
    pub newest_commit_ts_xid: u32,
    pub oldest_active_xid: u32,
}

impl CheckPoint {
    /// Parses the struct; `bytes` must be exactly [`SIZE_OF_CHECKPOINT`] long.
    pub fn decode(bytes: &[u8]) -> Result<CheckPoint, String> {
        if bytes.len() != SIZE_OF_CHECKPOINT {
            return Err(format!("CheckPoint is {} bytes, not {SIZE_OF_CHECKPOINT}", bytes.len()));
        }
        let b = bytes;
        Ok(CheckPoint {
            redo: Lsn(u64_at(b, 0)),
            this_timeline_id: u32_at(b, 8),
            prev_timeline_id: u32_at(b, 12),
            full_page_writes: b[16] != 0,
            next_xid: u64_at(b, 24),
            next_oid: u32_at(b, 32),
            next_multi: u32_at(b, 36),
            next_multi_offset: u32_at(b, 40),
            oldest_xid: u32_at(b, 44),
            oldest_xid_db: u32_at(b, 48),
            oldest_multi: u32_at(b, 52),
            oldest_multi_db: u32_at(b, 56),
            time: u64_at(b, 64) as i64,
            oldest_commit_ts_xid: u32_at(b, 72),
            newest_commit_ts_xid: u32_at(b, 76),
            oldest_active_xid: u32_at(b, 80),
        })
    }

    /// The 88 bytes, padding zeroed.
    pub fn encode(&self) -> [u8; SIZE_OF_CHECKPOINT] {
        let mut b = [0u8; SIZE_OF_CHECKPOINT];
        put(&mut b, 0, &self.redo.0.to_le_bytes());
        put(&mut b, 8, &self.this_timeline_id.to_le_bytes());
        put(&mut b, 12, &self.prev_timeline_id.to_le_bytes());
        b[16] = u8::from(self.full_page_writes);
        put(&mut b, 24, &self.next_xid.to_le_bytes());
        put(&mut b, 32, &self.next_oid.to_le_bytes());
        put(&mut b, 36, &self.next_multi.to_le_bytes());
        put(&mut b, 40, &self.next_multi_offset.to_le_bytes());
        put(&mut b, 44, &self.oldest_xid.to_le_bytes());
        put(&mut b, 48, &self.oldest_xid_db.to_le_bytes());
        put(&mut b, 52, &self.oldest_multi.to_le_bytes());
        put(&mut b, 56, &self.oldest_multi_db.to_le_bytes());
        put(&mut b, 64, &self.time.to_le_bytes());
        put(&mut b, 72, &self.oldest_commit_ts_xid.to_le_bytes());
        put(&mut b, 76, &self.newest_commit_ts_xid.to_le_bytes());
        put(&mut b, 80, &self.oldest_active_xid.to_le_bytes());
        b
    }

    /// The 32-bit xid of `next_xid`.
    pub fn next_xid_u32(&self) -> u32 {
        self.next_xid as u32
    }

    /// The epoch of `next_xid`.
    pub fn next_xid_epoch(&self) -> u32 {
        (self.next_xid >> 32) as u32
    }

    /// `AdvanceNextFullTransactionIdPastXid`: makes `next_xid` follow `xid`,
    /// moving to the next epoch when the 32-bit counter wraps.
    pub fn advance_next_xid_past(&mut self, xid: u32) {
        let next = self.next_xid_u32();
        if !transaction_id_follows_or_equals(xid, next) {
            return;
        }
        // TransactionIdAdvance: skip the special xids after a wrap.
        let new = xid.wrapping_add(1).max(FIRST_NORMAL_TRANSACTION_ID);
        let mut epoch = self.next_xid_epoch();
        if new < next {
            epoch = epoch.wrapping_add(1);
        }
        self.next_xid = (u64::from(epoch) << 32) | u64::from(new);
    }

    /// `MultiXactAdvanceNextMXact`.
    pub fn advance_next_multi(&mut self, multi: u32, offset: u32) {
        if multixact_id_precedes(self.next_multi, multi) {
            self.next_multi = multi;
        }
        if multixact_id_precedes(self.next_multi_offset, offset) {
            self.next_multi_offset = offset;
        }
    }
}

/// `TransactionIdPrecedes`: modulo-2^32 comparison of normal xids, plain
/// comparison if either is a special xid.
pub fn transaction_id_precedes(a: u32, b: u32) -> bool {
    if a < FIRST_NORMAL_TRANSACTION_ID || b < FIRST_NORMAL_TRANSACTION_ID {
        return a < b;
    }
    (a.wrapping_sub(b) as i32) < 0
}

/// `TransactionIdFollowsOrEquals`.
pub fn transaction_id_follows_or_equals(a: u32, b: u32) -> bool {
    !transaction_id_precedes(a, b)
}

/// `MultiXactIdPrecedes` (also `MultiXactOffsetPrecedes`).
pub fn multixact_id_precedes(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// CRC-32C of `ControlFileData` up to its `crc` field, as `update_controlfile` computes it.
pub fn control_file_crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(&bytes[..offsets::CRC])
}

/// The fields of `ControlFileData` the page server reads or rewrites
/// (marked `*` in the module docs); the rest stays in the file's bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControlFile {
    pub system_identifier: u64,
    pub pg_control_version: u32,
    pub catalog_version_no: u32,
    /// `DBState` ([`DB_SHUTDOWNED`], [`DB_IN_PRODUCTION`], ...).
    pub state: u32,
    /// `pg_time_t` of the last update.
    pub time: i64,
    /// `checkPoint`: the last checkpoint record's position.
    pub checkpoint: Lsn,
    /// `checkPointCopy`: the `CheckPoint` of that record.
    pub checkpoint_copy: CheckPoint,
    pub min_recovery_point: Lsn,
    pub min_recovery_point_tli: u32,
    pub backup_start_point: Lsn,
    pub backup_end_point: Lsn,
    pub backup_end_required: bool,
    pub wal_level: i32,
    pub wal_log_hints: bool,
    pub max_prepared_xacts: u32,
    pub blcksz: u32,
    pub relseg_size: u32,
    pub xlog_blcksz: u32,
    pub xlog_seg_size: u32,
    /// 0 without data checksums.
    pub data_checksum_version: u32,
}

impl ControlFile {
    /// Parses and checks a control file as PostgreSQL 15's `ReadControlFile`
    /// would: its length, `pg_control_version`, the CRC, 8 KiB data and WAL
    /// blocks, a valid WAL segment size (a power of two from 1 MiB to 1 GiB)
    /// and a non-zero `relseg_size`.
    pub fn parse(bytes: &[u8]) -> Result<ControlFile, String> {
        use offsets as o;
        if bytes.len() < SIZE_OF_CONTROL_FILE_DATA {
            return Err(format!("{} bytes, too short for ControlFileData", bytes.len()));
        }
        let version = u32_at(bytes, o::PG_CONTROL_VERSION);
        if version != PG_CONTROL_VERSION {
            return Err(format!("pg_control version {version} is not PostgreSQL 15's {PG_CONTROL_VERSION}"));
        }
        let stored = u32_at(bytes, o::CRC);
        let computed = control_file_crc(bytes);
        if stored != computed {
            return Err(format!("incorrect CRC: stored {stored:08X}, computed {computed:08X}"));
        }
        let cf = ControlFile {
            system_identifier: u64_at(bytes, o::SYSTEM_IDENTIFIER),
            pg_control_version: version,
            catalog_version_no: u32_at(bytes, o::CATALOG_VERSION_NO),
            state: u32_at(bytes, o::STATE),
            time: u64_at(bytes, o::TIME) as i64,
            checkpoint: Lsn(u64_at(bytes, o::CHECKPOINT)),
            checkpoint_copy: CheckPoint::decode(&bytes[o::CHECKPOINT_COPY..o::CHECKPOINT_COPY + SIZE_OF_CHECKPOINT])?,
            min_recovery_point: Lsn(u64_at(bytes, o::MIN_RECOVERY_POINT)),
            min_recovery_point_tli: u32_at(bytes, o::MIN_RECOVERY_POINT_TLI),
            backup_start_point: Lsn(u64_at(bytes, o::BACKUP_START_POINT)),
            backup_end_point: Lsn(u64_at(bytes, o::BACKUP_END_POINT)),
            backup_end_required: bytes[o::BACKUP_END_REQUIRED] != 0,
            wal_level: u32_at(bytes, o::WAL_LEVEL) as i32,
            wal_log_hints: bytes[o::WAL_LOG_HINTS] != 0,
            max_prepared_xacts: u32_at(bytes, o::MAX_PREPARED_XACTS),
            blcksz: u32_at(bytes, o::BLCKSZ),
            relseg_size: u32_at(bytes, o::RELSEG_SIZE),
            xlog_blcksz: u32_at(bytes, o::XLOG_BLCKSZ),
            xlog_seg_size: u32_at(bytes, o::XLOG_SEG_SIZE),
            data_checksum_version: u32_at(bytes, o::DATA_CHECKSUM_VERSION),
        };
        if cf.blcksz as usize != BLCKSZ || u64::from(cf.xlog_blcksz) != XLOG_BLCKSZ {
            return Err(format!("block size {} / WAL block size {} is not 8192", cf.blcksz, cf.xlog_blcksz));
        }
        if !is_valid_segment_size(u64::from(cf.xlog_seg_size)) {
            return Err(format!("WAL segment size {} is not a power of two from 1 MiB to 1 GiB", cf.xlog_seg_size));
        }
        if cf.relseg_size == 0 {
            return Err("relseg_size is 0".into());
        }
        Ok(cf)
    }

    /// Writes these fields into `bytes` (at least [`SIZE_OF_CONTROL_FILE_DATA`]
    /// long) and recomputes the CRC; the other fields stay as they are.
    pub fn write_to(&self, bytes: &mut [u8]) {
        use offsets as o;
        let b = bytes;
        put(b, o::SYSTEM_IDENTIFIER, &self.system_identifier.to_le_bytes());
        put(b, o::PG_CONTROL_VERSION, &self.pg_control_version.to_le_bytes());
        put(b, o::CATALOG_VERSION_NO, &self.catalog_version_no.to_le_bytes());
        put(b, o::STATE, &self.state.to_le_bytes());
        put(b, o::TIME, &self.time.to_le_bytes());
        put(b, o::CHECKPOINT, &self.checkpoint.0.to_le_bytes());
        put(b, o::CHECKPOINT_COPY, &self.checkpoint_copy.encode());
        put(b, o::MIN_RECOVERY_POINT, &self.min_recovery_point.0.to_le_bytes());
        put(b, o::MIN_RECOVERY_POINT_TLI, &self.min_recovery_point_tli.to_le_bytes());
        put(b, o::BACKUP_START_POINT, &self.backup_start_point.0.to_le_bytes());
        put(b, o::BACKUP_END_POINT, &self.backup_end_point.0.to_le_bytes());
        b[o::BACKUP_END_REQUIRED] = u8::from(self.backup_end_required);
        put(b, o::WAL_LEVEL, &self.wal_level.to_le_bytes());
        b[o::WAL_LOG_HINTS] = u8::from(self.wal_log_hints);
        put(b, o::MAX_PREPARED_XACTS, &self.max_prepared_xacts.to_le_bytes());
        put(b, o::BLCKSZ, &self.blcksz.to_le_bytes());
        put(b, o::RELSEG_SIZE, &self.relseg_size.to_le_bytes());
        put(b, o::XLOG_BLCKSZ, &self.xlog_blcksz.to_le_bytes());
        put(b, o::XLOG_SEG_SIZE, &self.xlog_seg_size.to_le_bytes());
        put(b, o::DATA_CHECKSUM_VERSION, &self.data_checksum_version.to_le_bytes());
        let crc = control_file_crc(b);
        put(b, o::CRC, &crc.to_le_bytes());
    }

    /// A whole `global/pg_control` ([`PG_CONTROL_FILE_SIZE`] bytes) holding
    /// these fields, zeros elsewhere, with its CRC.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; PG_CONTROL_FILE_SIZE];
        self.write_to(&mut b);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> CheckPoint {
        CheckPoint {
            redo: Lsn(0x1_2345_6788),
            this_timeline_id: 1,
            prev_timeline_id: 1,
            full_page_writes: true,
            next_xid: (3 << 32) | 740,
            next_oid: 16400,
            next_multi: 1,
            oldest_xid: 716,
            oldest_xid_db: 1,
            oldest_multi: 1,
            oldest_multi_db: 1,
            time: -5,
            oldest_commit_ts_xid: 7,
            oldest_active_xid: 739,
            ..CheckPoint::default()
        }
    }

    fn control_file() -> ControlFile {
        ControlFile {
            system_identifier: 0x1234_5678_9abc_def0,
            pg_control_version: PG_CONTROL_VERSION,
            catalog_version_no: 202209061,
            state: DB_IN_PRODUCTION,
            time: 1_700_000_000,
            checkpoint: Lsn(0x0300_0060),
            checkpoint_copy: checkpoint(),
            backup_start_point: Lsn(0x100),
            wal_level: 1,
            wal_log_hints: true,
            blcksz: 8192,
            relseg_size: 131_072,
            xlog_blcksz: 8192,
            xlog_seg_size: 16 << 20,
            ..ControlFile::default()
        }
    }

    #[test]
    fn checkpoint_round_trips_and_xids_wrap_into_the_next_epoch() {
        let cp = checkpoint();
        assert_eq!(CheckPoint::decode(&cp.encode()).unwrap(), cp);
        assert!(CheckPoint::decode(&[0; 87]).is_err());
        let mut cp = CheckPoint { next_xid: 0xFFFF_FFF0, ..CheckPoint::default() };
        cp.advance_next_xid_past(0xFFFF_FFF5);
        assert_eq!(cp.next_xid, 0xFFFF_FFF6);
        cp.advance_next_xid_past(0xFFFF_FFF0); // behind: nothing
        assert_eq!(cp.next_xid, 0xFFFF_FFF6);
        cp.advance_next_xid_past(0xFFFF_FFFF); // wraps, skipping the special xids
        assert_eq!(cp.next_xid, (1 << 32) | 3);
        cp.advance_next_xid_past(5);
        assert_eq!(cp.next_xid, (1 << 32) | 6);
        cp.advance_next_xid_past(0xFFFF_FFF9); // far behind in modulo-2^32 terms
        assert_eq!(cp.next_xid, (1 << 32) | 6);
        cp.advance_next_xid_past(0); // InvalidTransactionId
        assert_eq!(cp.next_xid, (1 << 32) | 6);
        assert!(transaction_id_precedes(0xFFFF_FFF0, 5) && !transaction_id_precedes(5, 0xFFFF_FFF0));
        assert!(transaction_id_precedes(2, 100) && multixact_id_precedes(u32::MAX, 1));
        assert!(transaction_id_follows_or_equals(5, 5) && transaction_id_follows_or_equals(100, 2));
        let mut cp = CheckPoint { next_multi: 10, next_multi_offset: 20, ..CheckPoint::default() };
        cp.advance_next_multi(5, 30);
        assert_eq!((cp.next_multi, cp.next_multi_offset), (10, 30));
    }

    #[test]
    fn control_file_round_trips_and_keeps_other_fields() {
        let cf = control_file();
        let mut bytes = cf.encode();
        assert_eq!(bytes.len(), PG_CONTROL_FILE_SIZE);
        assert_eq!(ControlFile::parse(&bytes).unwrap(), cf);
        assert_eq!(&bytes[offsets::CHECKPOINT_COPY..offsets::CHECKPOINT_COPY + SIZE_OF_CHECKPOINT], &checkpoint().encode());
        // MaxConnections (180) is not a field here: a rewrite keeps it.
        bytes[180] = 100;
        let shut = ControlFile { state: DB_SHUTDOWNED, backup_start_point: Lsn(0), ..cf.clone() };
        shut.write_to(&mut bytes);
        assert_eq!(bytes[180], 100);
        assert_eq!(ControlFile::parse(&bytes).unwrap(), shut);
    }

    #[test]
    fn bad_control_files_are_refused() {
        let bytes = control_file().encode();
        let err = |b: &[u8]| ControlFile::parse(b).unwrap_err();
        let mut bad = bytes.clone();
        bad[100] ^= 1;
        assert!(err(&bad).contains("incorrect CRC"), "{}", err(&bad));
        assert!(err(&bytes[..200]).contains("too short"));
        for (cf, msg) in [
            (ControlFile { pg_control_version: 1201, ..control_file() }, "version 1201"),
            (ControlFile { blcksz: 16384, ..control_file() }, "block size"),
            (ControlFile { xlog_blcksz: 4096, ..control_file() }, "block size"),
            (ControlFile { xlog_seg_size: 3 << 20, ..control_file() }, "segment size"),
            (ControlFile { xlog_seg_size: 2 << 30, ..control_file() }, "segment size"),
            (ControlFile { relseg_size: 0, ..control_file() }, "relseg_size"),
        ] {
            assert!(err(&cf.encode()).contains(msg), "{msg}: {}", err(&cf.encode()));
        }
    }
}
