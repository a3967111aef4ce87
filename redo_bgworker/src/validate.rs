//! Checks done in Rust before any PostgreSQL redo code sees a record or a
//! page, because a wrong record or base page can PANIC the host. Pure: no
//! PostgreSQL calls, tested with plain `cargo test`.
//!
//! What is checked: the record's framing and CRC-32C (PostgreSQL's
//! `ValidXLogRecord` is static), that its resource manager is page-level
//! (XLOG only for full-page-image records), that its LSNs make sense, that
//! the base page is a sane page of the kind the resource manager writes, and
//! that the page is older than the record.

pub use pg_constants::BLCKSZ;
use pg_constants::{INIT_FORKNUM, MAIN_FORKNUM};
const SIZE_OF_XLOG_RECORD: usize = 24;
const SIZE_OF_PAGE_HEADER: u16 = pg_constants::SIZE_OF_PAGE_HEADER as u16;
const PAGE_SIZE_VERSION: u16 = (BLCKSZ as u16) | 4;

/// LSNs print as PostgreSQL prints them (`16/B374D848`).
pub use storage::lsn::Lsn;
/// Resource manager ids and names (`rmgrlist.h`), shared with the decoder.
pub use storage::wal::rmgr;

const XLR_INFO_MASK: u8 = 0x0F;
const XLOG_FPI_FOR_HINT: u8 = 0xA0;
const XLOG_FPI: u8 = 0xB0;

/// Why a record or page was refused before redo.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("record is {len} bytes, shorter than a record header")]
    TooShort { len: usize },
    #[error("record header says {tot_len} bytes but {len} were given")]
    LengthMismatch { tot_len: u32, len: usize },
    #[error("record CRC {computed:08x} does not match {stored:08x}")]
    BadCrc { computed: u32, stored: u32 },
    #[error("resource manager {name} ({rmid}) is not page-level: it is never run through the host's redo")]
    NotPageLevel { rmid: u8, name: &'static str },
    #[error("XLOG record with info {info:#04x} is not a full-page image: it is never run through the host's redo")]
    XlogNotFpi { info: u8 },
    #[error("record end LSN {} is not after its start LSN {}", Lsn(*end), Lsn(*start))]
    BadLsnRange { start: u64, end: u64 },
    #[error("base page LSN {} is not below the record's end LSN {}: the record is already applied", Lsn(*page), Lsn(*end))]
    PageNotOlder { page: u64, end: u64 },
    #[error("base page header is not a valid page: {0}")]
    BadPageHeader(&'static str),
    #[error("base page is not a {expected} page: {found}")]
    WrongPageKind { expected: &'static str, found: String },
}

/// The fixed header of a WAL record, parsed by the decoder's own code.
pub use storage::wal::record::RecordHeader;

/// Checks framing and CRC; returns the header.
pub fn check_record(rec: &[u8]) -> Result<RecordHeader, Invalid> {
    if rec.len() < SIZE_OF_XLOG_RECORD {
        return Err(Invalid::TooShort { len: rec.len() });
    }
    let header = RecordHeader::parse(rec);
    if header.xl_tot_len as usize != rec.len() {
        return Err(Invalid::LengthMismatch { tot_len: header.xl_tot_len, len: rec.len() });
    }
    let computed = storage::wal::record::record_crc(rec);
    if computed != header.xl_crc {
        return Err(Invalid::BadCrc { computed, stored: header.xl_crc });
    }
    Ok(header)
}

/// Only page-level resource managers, and XLOG only for full-page images.
pub fn check_rmgr(header: &RecordHeader) -> Result<(), Invalid> {
    use rmgr::*;
    match header.xl_rmid {
        XLOG => match header.xl_info & !XLR_INFO_MASK {
            XLOG_FPI | XLOG_FPI_FOR_HINT => Ok(()),
            info => Err(Invalid::XlogNotFpi { info }),
        },
        HEAP2 | HEAP | BTREE | HASH | GIN | GIST | SEQ | SPGIST | BRIN | GENERIC => Ok(()),
        rmid => Err(Invalid::NotPageLevel { rmid, name: rmgr::name(rmid) }),
    }
}

pub fn check_lsns(start: u64, end: u64) -> Result<(), Invalid> {
    if end <= start {
        return Err(Invalid::BadLsnRange { start, end });
    }
    Ok(())
}

/// `pd_lsn` of a page, as PostgreSQL stores it (two 32-bit halves).
pub fn page_lsn(page: &[u8; BLCKSZ]) -> u64 {
    let hi = u32::from_le_bytes(page[0..4].try_into().expect("4 bytes")) as u64;
    let lo = u32::from_le_bytes(page[4..8].try_into().expect("4 bytes")) as u64;
    (hi << 32) | lo
}

/// An all-zero page, as PostgreSQL finds at the end of a relation.
pub fn page_is_new(page: &[u8; BLCKSZ]) -> bool {
    page.iter().all(|b| *b == 0)
}

/// The special-area layout each resource manager's pages have.
fn expected_special(rmid: u8) -> Option<(&'static str, u16, Option<&'static [u16]>)> {
    use rmgr::*;
    // (name, MAXALIGNed special size, page-type ids found in the last two bytes)
    match rmid {
        HEAP | HEAP2 => Some(("heap", 0, None)),
        BTREE => Some(("btree", 16, None)),
        HASH => Some(("hash", 16, Some(&[0xFF80]))),
        GIN => Some(("GIN", 8, None)),
        GIST => Some(("GiST", 16, Some(&[0xFF81]))),
        SEQ => Some(("sequence", 8, None)),
        SPGIST => Some(("SP-GiST", 8, Some(&[0xFF82]))),
        BRIN => Some(("BRIN", 8, Some(&[0xF091, 0xF092, 0xF093]))),
        _ => None, // generic WAL and FPIs may touch any page
    }
}

/// Checks that `page` (the base image for `rmid`'s record on `fork`) is a
/// sane page, of the kind that resource manager writes, older than `end_lsn`.
/// New (all-zero) pages pass: redo initialises or overwrites them, and
/// PostgreSQL's own redo reports a missing page as an ERROR, not a PANIC.
pub fn check_base_page(page: &[u8; BLCKSZ], rmid: u8, fork: u8, end_lsn: u64) -> Result<(), Invalid> {
    if page_is_new(page) {
        return Ok(());
    }
    let u16_at = |o: usize| u16::from_le_bytes(page[o..o + 2].try_into().expect("2 bytes"));
    let (lower, upper, special, size_version) = (u16_at(12), u16_at(14), u16_at(16), u16_at(18));
    if size_version != PAGE_SIZE_VERSION {
        return Err(Invalid::BadPageHeader("page size or layout version is not 8192/4"));
    }
    if !(SIZE_OF_PAGE_HEADER <= lower && lower <= upper && upper <= special && special as usize <= BLCKSZ) {
        return Err(Invalid::BadPageHeader("pd_lower, pd_upper and pd_special are out of order"));
    }
    if special % 8 != 0 {
        return Err(Invalid::BadPageHeader("pd_special is not MAXALIGNed"));
    }
    let lsn = page_lsn(page);
    if lsn >= end_lsn {
        return Err(Invalid::PageNotOlder { page: lsn, end: end_lsn });
    }
    if fork != MAIN_FORKNUM && fork != INIT_FORKNUM {
        return Ok(()); // FSM and VM pages belong to no index type
    }
    let Some((name, size, ids)) = expected_special(rmid) else { return Ok(()) };
    let found_size = BLCKSZ as u16 - special;
    if found_size != size {
        return Err(Invalid::WrongPageKind { expected: name, found: format!("special space is {found_size} bytes, expected {size}") });
    }
    if let Some(ids) = ids {
        let id = u16_at(BLCKSZ - 2);
        if !ids.contains(&id) {
            return Err(Invalid::WrongPageKind { expected: name, found: format!("page type id {id:#06x}") });
        }
    }
    if rmid == rmgr::SEQ && u32::from_le_bytes(page[special as usize..special as usize + 4].try_into().expect("4")) != 0x1717 {
        return Err(Invalid::WrongPageKind { expected: name, found: "no sequence magic".into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-formed record: header + `payload`, CRC filled in.
    fn record(rmid: u8, info: u8, payload: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; SIZE_OF_XLOG_RECORD];
        r.extend_from_slice(payload);
        let len = r.len() as u32;
        r[0..4].copy_from_slice(&len.to_le_bytes());
        r[4..8].copy_from_slice(&777u32.to_le_bytes());
        r[16] = info;
        r[17] = rmid;
        let crc = storage::wal::record::record_crc(&r);
        r[20..24].copy_from_slice(&crc.to_le_bytes());
        r
    }

    /// A header with only the resource manager and info set.
    fn header(rmid: u8, info: u8) -> RecordHeader {
        let mut b = [0u8; SIZE_OF_XLOG_RECORD];
        b[16] = info;
        b[17] = rmid;
        RecordHeader::parse(&b)
    }

    fn page(special_size: u16, id: Option<u16>, lsn: u64) -> [u8; BLCKSZ] {
        let mut p = [0u8; BLCKSZ];
        p[0..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
        p[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
        let special = BLCKSZ as u16 - special_size;
        p[12..14].copy_from_slice(&24u16.to_le_bytes());
        p[14..16].copy_from_slice(&special.to_le_bytes());
        p[16..18].copy_from_slice(&special.to_le_bytes());
        p[18..20].copy_from_slice(&PAGE_SIZE_VERSION.to_le_bytes());
        if let Some(id) = id {
            p[BLCKSZ - 2..].copy_from_slice(&id.to_le_bytes());
        }
        p
    }

    #[test]
    fn a_good_record_passes_and_any_flipped_byte_fails() {
        let rec = record(rmgr::HEAP, 0, b"some heap insert payload");
        let h = check_record(&rec).unwrap();
        assert_eq!((h.xl_rmid, h.xl_xid, h.xl_tot_len as usize), (rmgr::HEAP, 777, rec.len()));
        for i in 0..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x40;
            assert!(check_record(&bad).is_err(), "flip at byte {i} accepted");
        }
        assert!(matches!(check_record(&rec[..10]), Err(Invalid::TooShort { .. })));
        assert!(matches!(check_record(&rec[..rec.len() - 1]), Err(Invalid::LengthMismatch { .. })));
    }

    #[test]
    fn only_page_level_rmgrs_and_xlog_fpis_are_run() {
        for rmid in [9, 10, 11, 12, 13, 14, 15, 16, 17, 20] {
            assert!(check_rmgr(&header(rmid, 0)).is_ok(), "{rmid}");
        }
        for rmid in [1, 2, 3, 4, 5, 6, 7, 8, 18, 19, 21, 200] {
            let err = check_rmgr(&header(rmid, 0)).unwrap_err();
            assert!(err.to_string().contains("not page-level"), "{err}");
        }
        assert!(check_rmgr(&header(0, XLOG_FPI)).is_ok());
        assert!(check_rmgr(&header(0, XLOG_FPI_FOR_HINT | 1)).is_ok());
        // XLOG_CHECKPOINT_SHUTDOWN = 0x00 would change the host itself.
        assert!(matches!(check_rmgr(&header(0, 0)), Err(Invalid::XlogNotFpi { .. })));
    }

    #[test]
    fn page_kinds_are_recognised() {
        let lsn = 0x1_0000_0000;
        assert!(check_base_page(&page(0, None, lsn), rmgr::HEAP, 0, lsn + 8).is_ok());
        assert!(check_base_page(&page(16, None, lsn), rmgr::BTREE, 0, lsn + 8).is_ok());
        assert!(check_base_page(&page(16, Some(0xFF80), lsn), rmgr::HASH, 0, lsn + 8).is_ok());
        assert!(check_base_page(&page(16, Some(0xFF81), lsn), rmgr::GIST, 0, lsn + 8).is_ok());
        assert!(check_base_page(&page(8, Some(0xFF82), lsn), rmgr::SPGIST, 0, lsn + 8).is_ok());
        assert!(check_base_page(&page(8, Some(0xF093), lsn), rmgr::BRIN, 0, lsn + 8).is_ok());
        // A btree page handed to heap redo, a heap page to btree, a GiST page to hash.
        assert!(matches!(check_base_page(&page(16, None, lsn), rmgr::HEAP, 0, lsn + 8), Err(Invalid::WrongPageKind { .. })));
        assert!(matches!(check_base_page(&page(0, None, lsn), rmgr::BTREE, 0, lsn + 8), Err(Invalid::WrongPageKind { .. })));
        assert!(matches!(check_base_page(&page(16, Some(0xFF81), lsn), rmgr::HASH, 0, lsn + 8), Err(Invalid::WrongPageKind { .. })));
        // Visibility-map pages of a heap have no special space and pass for any fork but main.
        assert!(check_base_page(&page(0, None, lsn), rmgr::BTREE, 2, lsn + 8).is_ok());
        // New pages pass; generic WAL accepts any sane page.
        assert!(check_base_page(&[0u8; BLCKSZ], rmgr::HEAP, 0, 1).is_ok());
        assert!(check_base_page(&page(16, None, lsn), rmgr::GENERIC, 0, lsn + 8).is_ok());
    }

    #[test]
    fn pages_newer_than_the_record_or_with_broken_headers_are_refused() {
        let lsn = 0x2_0000_0010;
        assert!(matches!(check_base_page(&page(0, None, lsn), rmgr::HEAP, 0, lsn), Err(Invalid::PageNotOlder { .. })));
        let mut p = page(0, None, 1);
        p[12..14].copy_from_slice(&9000u16.to_le_bytes());
        assert!(matches!(check_base_page(&p, rmgr::HEAP, 0, 100), Err(Invalid::BadPageHeader(_))));
        let mut p = page(0, None, 1);
        p[18] = 0;
        assert!(matches!(check_base_page(&p, rmgr::HEAP, 0, 100), Err(Invalid::BadPageHeader(_))));
        assert!(check_lsns(10, 10).is_err());
        assert!(check_lsns(10, 11).is_ok());
    }
}
