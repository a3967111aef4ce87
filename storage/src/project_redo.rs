//! Redo of project records ([`ProjectRecord`]) in Rust.
//!
//! WAL ingest (`crate::wal::ingest`) turns the changes PostgreSQL's redo would
//! make to pages that are not block references of a record — `pg_xact`
//! status bits, visibility-map bit clears, `pg_multixact` offsets and
//! members — into small project records stored on the key of the page they
//! change. [`apply_project_record`] applies one of them to the current
//! version of that page, changing exactly the bytes PostgreSQL 15's redo
//! changes:
//!
//! - **`ClogSetStatus`** on a `pg_xact` page: two bits per xid
//!   (`CLOG_XACTS_PER_PAGE` = 32768 xids per page; xid `x` is in byte
//!   `(x % 32768) / 4`, bits `(x % 4) * 2`), as `TransactionIdSetStatusBit`
//!   does during recovery. Xids of other pages are skipped (ingest splits a
//!   commit's xids per page; a record without an xid on this page is an
//!   error). During recovery a sub-committed status never overwrites a
//!   committed one; every other status replaces what is there. Replaying a
//!   commit or abort tree page by page, in any order, leaves every xid with
//!   the final status, as `TransactionIdSetTreeStatus` does (the intermediate
//!   sub-committed marks it sets on the primary are overwritten in the same
//!   call and never reach the page image of a later LSN).
//! - **`VmClearBits`** on a visibility-map page: the heap blocks whose bits
//!   lie on this map page (`HEAPBLK_TO_MAPBLOCK`; 32672 heap blocks per map
//!   page, two bits each after the 24-byte page header) get `flags` cleared,
//!   as `visibilitymap_clear` does. A new (all-zero) page is first
//!   initialised with `PageInit`, as `vm_readbuf` does for a page beyond the
//!   end of the map or never written. **`pd_lsn` is not changed**:
//!   `visibilitymap_clear` only clears bits and marks the buffer dirty, in
//!   normal running and in the heap redo routines that call it alike (the
//!   map page's LSN is only advanced by `visibilitymap_set`, i.e. by
//!   `XLOG_HEAP2_VISIBLE` records, which go to the redo workers). The LSN
//!   argument is used in error messages only.
//! - **`VmTruncate`** on a visibility-map page: the relation was truncated to
//!   `heap_blocks` heap blocks; the bits of every heap block at or past it
//!   that lie on this map page are cleared, the bits before it kept, as
//!   `visibilitymap_prepare_truncate` does to the last map page that stays
//!   (a new page is initialised first, as `vm_readbuf` does; `pd_lsn` is not
//!   changed: with `wal_log_hints` or checksums the primary logs the page as
//!   a full-page image before the truncation record, and that image arrives
//!   as its own version).
//! - **`MultixactOffsets`** on a `pg_multixact/offsets` page: 4-byte
//!   starting offsets of multixacts (`MULTIXACT_OFFSETS_PER_PAGE` = 2048
//!   per page). `RecordNewMultiXact` writes the new multixact's own offset
//!   and, in PostgreSQL 15.15 and later, the next multixact's too; both go in
//!   one record when they share a page.
//! - **`MultixactMembers`** on a `pg_multixact/members` page: members at
//!   offsets `first_offset, first_offset + 1, ...` that fall on this page, in
//!   the member-group layout of `RecordNewMultiXact`: groups of 20 bytes (4
//!   flag bytes, one per member, then 4 xids), 409 groups (1636 members) per
//!   page; a member's status goes into its flag byte, the other flag bytes
//!   of the group are kept.
//!
//! Not covered here (see `ingest.rs`): page zeroing (`CLOG_ZEROPAGE`,
//! `XLOG_MULTIXACT_ZERO_*_PAGE`) arrives as a zero image, not as a project
//! record.
//!
//! All multi-byte values are little-endian, as PostgreSQL writes them on the
//! platforms it runs on here (x86-64, aarch64).

use crate::checksum;
use crate::key::{Key, KeyClass, SlruKind, VISIBILITYMAP_FORKNUM};
use crate::lsn::Lsn;
use crate::value::{
    MultiXactMember, ProjectRecord, TRANSACTION_STATUS_ABORTED, TRANSACTION_STATUS_COMMITTED, TRANSACTION_STATUS_SUB_COMMITTED,
};
use crate::wal::ingest::{
    CLOG_XACTS_PER_PAGE, HEAPBLOCKS_PER_VM_PAGE, MULTIXACT_MEMBERS_PER_PAGE, MULTIXACT_OFFSETS_PER_PAGE, SLRU_PAGES_PER_SEGMENT,
};
use crate::wal::BLCKSZ;

/// `CLOG_BITS_PER_XACT`.
const CLOG_BITS_PER_XACT: u32 = 2;
/// `CLOG_XACTS_PER_BYTE`.
const CLOG_XACTS_PER_BYTE: u32 = 4;
/// `CLOG_XACT_BITMASK`.
const CLOG_XACT_BITMASK: u8 = (1 << CLOG_BITS_PER_XACT) - 1;

/// `MAXALIGN(SizeOfPageHeaderData)`: where `PageGetContents` starts.
const PAGE_HEADER_SIZE: usize = 24;
/// Heap blocks per byte of the visibility map (`HEAPBLOCKS_PER_BYTE`).
const VM_HEAPBLOCKS_PER_BYTE: u32 = 4;
/// `BITS_PER_HEAPBLOCK`.
const VM_BITS_PER_HEAPBLOCK: u32 = 2;
/// `VISIBILITYMAP_VALID_BITS`.
const VISIBILITYMAP_VALID_BITS: u8 = 0x03;
/// `PG_PAGE_LAYOUT_VERSION`.
const PG_PAGE_LAYOUT_VERSION: u16 = 4;

/// `MULTIXACT_MEMBERS_PER_MEMBERGROUP`.
const MULTIXACT_MEMBERS_PER_MEMBERGROUP: u32 = 4;
/// `MULTIXACT_FLAGBYTES_PER_GROUP`.
const MULTIXACT_FLAGBYTES_PER_GROUP: u32 = 4;
/// `MULTIXACT_MEMBERGROUP_SIZE`: 4 flag bytes and 4 xids.
const MULTIXACT_MEMBERGROUP_SIZE: u32 = 4 * MULTIXACT_MEMBERS_PER_MEMBERGROUP + MULTIXACT_FLAGBYTES_PER_GROUP;
/// `MULTIXACT_MEMBERGROUPS_PER_PAGE`.
const MULTIXACT_MEMBERGROUPS_PER_PAGE: u32 = BLCKSZ as u32 / MULTIXACT_MEMBERGROUP_SIZE;
/// `MXACT_MEMBER_BITS_PER_XACT`: one flag byte per member.
const MXACT_MEMBER_BITS_PER_XACT: u32 = 8;
/// `MultiXactStatusUpdate`, the largest member status.
const MULTIXACT_STATUS_MAX: u8 = 5;

const _: () = assert!(MULTIXACT_MEMBERGROUPS_PER_PAGE * MULTIXACT_MEMBERS_PER_MEMBERGROUP == MULTIXACT_MEMBERS_PER_PAGE);
const _: () = assert!((BLCKSZ - PAGE_HEADER_SIZE) as u32 * VM_HEAPBLOCKS_PER_BYTE == HEAPBLOCKS_PER_VM_PAGE);
const _: () = assert!(BLCKSZ as u32 * CLOG_XACTS_PER_BYTE == CLOG_XACTS_PER_PAGE);

/// Applies one project record to `page` (8192 bytes; the current version of
/// `key`, or zeroes when there is none) exactly as PostgreSQL 15 would change
/// that page. See the module docs for what each record does.
///
/// Fails, leaving `page` unchanged, when the record does not belong on `key`
/// (wrong kind of page, or nothing of it on this page), the page is not 8192
/// bytes, or a field is out of range (status, flags).
pub fn apply_project_record(key: Key, lsn: Lsn, page: &mut [u8], rec: &ProjectRecord) -> Result<(), String> {
    if page.len() != BLCKSZ {
        return Err(format!("{} at {lsn}: page of {} bytes, expected {BLCKSZ}", kind_name(rec), page.len()));
    }
    let result = match rec {
        ProjectRecord::ClogSetStatus { status, xids } => clog_set_status(key, page, *status, xids),
        ProjectRecord::VmClearBits { flags, new_heap_blkno, old_heap_blkno } => {
            vm_clear_bits(key, page, *flags, [*new_heap_blkno, *old_heap_blkno])
        }
        ProjectRecord::VmTruncate { heap_blocks } => vm_truncate(key, page, *heap_blocks),
        ProjectRecord::MultixactOffsets { entries } => multixact_offsets(key, page, entries),
        ProjectRecord::MultixactMembers { first_offset, members } => multixact_members(key, page, *first_offset, members),
    };
    result.map_err(|e| format!("{} at {lsn} on {key:?}: {e}", kind_name(rec)))
}

fn kind_name(rec: &ProjectRecord) -> &'static str {
    match rec {
        ProjectRecord::ClogSetStatus { .. } => "ClogSetStatus",
        ProjectRecord::VmClearBits { .. } => "VmClearBits",
        ProjectRecord::VmTruncate { .. } => "VmTruncate",
        ProjectRecord::MultixactOffsets { .. } => "MultixactOffsets",
        ProjectRecord::MultixactMembers { .. } => "MultixactMembers",
    }
}

/// The SLRU page number (`segno * 32 + blkno`) of an SLRU block key of `kind`.
fn slru_pageno(key: Key, kind: SlruKind) -> Result<u32, String> {
    match key.classify() {
        Some(KeyClass::SlruBlock { kind: k, segno, blkno }) if k == kind && blkno < SLRU_PAGES_PER_SEGMENT => segno
            .checked_mul(SLRU_PAGES_PER_SEGMENT)
            .and_then(|p| p.checked_add(blkno))
            .ok_or_else(|| format!("SLRU segment {segno} out of range")),
        _ => Err(format!("not a block of {}", kind.dir_name())),
    }
}

/// `TransactionIdSetStatusBit` during recovery, for the xids on this page.
fn clog_set_status(key: Key, page: &mut [u8], status: u8, xids: &[u32]) -> Result<(), String> {
    let pageno = slru_pageno(key, SlruKind::Clog)?;
    if !matches!(status, TRANSACTION_STATUS_COMMITTED | TRANSACTION_STATUS_ABORTED | TRANSACTION_STATUS_SUB_COMMITTED) {
        return Err(format!("invalid transaction status {status}"));
    }
    if xids.contains(&0) {
        return Err("InvalidTransactionId among the xids".into());
    }
    let mut on_page = xids.iter().filter(|&&xid| xid / CLOG_XACTS_PER_PAGE == pageno).peekable();
    if on_page.peek().is_none() {
        return Err(format!("none of {} xids is on CLOG page {pageno}", xids.len()));
    }
    for &xid in on_page {
        let byteno = ((xid % CLOG_XACTS_PER_PAGE) / CLOG_XACTS_PER_BYTE) as usize;
        let bshift = (xid % CLOG_XACTS_PER_BYTE) * CLOG_BITS_PER_XACT;
        let current = (page[byteno] >> bshift) & CLOG_XACT_BITMASK;
        // Recovery replays the two phases of a subtransaction commit; the
        // second must not undo a commit already replayed.
        if status == TRANSACTION_STATUS_SUB_COMMITTED && current == TRANSACTION_STATUS_COMMITTED {
            continue;
        }
        page[byteno] = (page[byteno] & !(CLOG_XACT_BITMASK << bshift)) | (status << bshift);
    }
    Ok(())
}

/// `visibilitymap_pin` + `visibilitymap_clear` for each heap block on this map page.
fn vm_clear_bits(key: Key, page: &mut [u8], flags: u8, heap_blocks: [Option<u32>; 2]) -> Result<(), String> {
    let map_block = match key.classify() {
        Some(KeyClass::RelBlock { rel, blkno }) if rel.fork == VISIBILITYMAP_FORKNUM => blkno,
        _ => return Err("not a visibility-map block".into()),
    };
    // visibilitymap_clear asserts `flags & VALID_BITS` and never clears
    // all-visible alone (that would leave all-frozen set).
    if flags & !VISIBILITYMAP_VALID_BITS != 0 || flags == 0 || flags == 0x01 {
        return Err(format!("invalid visibility-map flags {flags:#x}"));
    }
    let on_page: Vec<u32> = heap_blocks.into_iter().flatten().filter(|blk| blk / HEAPBLOCKS_PER_VM_PAGE == map_block).collect();
    if on_page.is_empty() {
        return Err(format!("no heap block of {heap_blocks:?} maps to visibility-map block {map_block}"));
    }
    if checksum::page_is_new(page) {
        page_init(page);
    }
    for heap_blk in on_page {
        let map_byte = ((heap_blk % HEAPBLOCKS_PER_VM_PAGE) / VM_HEAPBLOCKS_PER_BYTE) as usize;
        let map_offset = (heap_blk % VM_HEAPBLOCKS_PER_BYTE) * VM_BITS_PER_HEAPBLOCK;
        page[PAGE_HEADER_SIZE + map_byte] &= !(flags << map_offset);
    }
    Ok(())
}

/// `visibilitymap_prepare_truncate` on the map page holding the new end:
/// bits of heap blocks `heap_blocks..` on this page cleared, earlier ones kept.
fn vm_truncate(key: Key, page: &mut [u8], heap_blocks: u32) -> Result<(), String> {
    let map_block = match key.classify() {
        Some(KeyClass::RelBlock { rel, blkno }) if rel.fork == VISIBILITYMAP_FORKNUM => blkno,
        _ => return Err("not a visibility-map block".into()),
    };
    if heap_blocks / HEAPBLOCKS_PER_VM_PAGE != map_block {
        return Err(format!("heap block {heap_blocks} does not map to visibility-map block {map_block}"));
    }
    if checksum::page_is_new(page) {
        page_init(page);
    }
    let first_byte = PAGE_HEADER_SIZE + ((heap_blocks % HEAPBLOCKS_PER_VM_PAGE) / VM_HEAPBLOCKS_PER_BYTE) as usize;
    let kept_bits = (heap_blocks % VM_HEAPBLOCKS_PER_BYTE) * VM_BITS_PER_HEAPBLOCK;
    page[first_byte] &= ((1u16 << kept_bits) - 1) as u8;
    page[first_byte + 1..].fill(0);
    Ok(())
}

/// `PageInit(page, BLCKSZ, 0)`: zeroes, then `pd_lower` = header size,
/// `pd_upper` = `pd_special` = 8192, size and layout version.
fn page_init(page: &mut [u8]) {
    page.fill(0);
    page[12..14].copy_from_slice(&(PAGE_HEADER_SIZE as u16).to_le_bytes());
    page[14..16].copy_from_slice(&(BLCKSZ as u16).to_le_bytes());
    page[16..18].copy_from_slice(&(BLCKSZ as u16).to_le_bytes());
    page[18..20].copy_from_slice(&(BLCKSZ as u16 | PG_PAGE_LAYOUT_VERSION).to_le_bytes());
}

/// The offsets part of `RecordNewMultiXact`: every entry must be on this
/// page; nothing is written unless all are.
fn multixact_offsets(key: Key, page: &mut [u8], entries: &[(u32, u32)]) -> Result<(), String> {
    let pageno = slru_pageno(key, SlruKind::MultiXactOffsets)?;
    if entries.is_empty() {
        return Err("no multixact offsets".into());
    }
    if let Some((multi, _)) = entries.iter().find(|(multi, _)| multi / MULTIXACT_OFFSETS_PER_PAGE != pageno) {
        return Err(format!("multixact {multi} is not on offsets page {pageno}"));
    }
    for (multi, offset) in entries {
        let at = (multi % MULTIXACT_OFFSETS_PER_PAGE) as usize * 4;
        page[at..at + 4].copy_from_slice(&offset.to_le_bytes());
    }
    Ok(())
}

/// The members part of `RecordNewMultiXact`, for the members on this page.
fn multixact_members(key: Key, page: &mut [u8], first_offset: u32, members: &[MultiXactMember]) -> Result<(), String> {
    let pageno = slru_pageno(key, SlruKind::MultiXactMembers)?;
    if let Some(bad) = members.iter().find(|m| m.status > MULTIXACT_STATUS_MAX) {
        return Err(format!("invalid member status {} of xid {}", bad.status, bad.xid));
    }
    let mut written = 0;
    for (i, member) in members.iter().enumerate() {
        let offset = first_offset.wrapping_add(i as u32);
        if offset / MULTIXACT_MEMBERS_PER_PAGE != pageno {
            continue;
        }
        let group = (offset / MULTIXACT_MEMBERS_PER_MEMBERGROUP) % MULTIXACT_MEMBERGROUPS_PER_PAGE;
        let flags_off = (group * MULTIXACT_MEMBERGROUP_SIZE) as usize;
        let in_group = offset % MULTIXACT_MEMBERS_PER_MEMBERGROUP;
        let member_off = flags_off + (MULTIXACT_FLAGBYTES_PER_GROUP + in_group * 4) as usize;
        page[member_off..member_off + 4].copy_from_slice(&member.xid.to_le_bytes());
        let bshift = in_group * MXACT_MEMBER_BITS_PER_XACT;
        let mut flags = u32::from_le_bytes(page[flags_off..flags_off + 4].try_into().unwrap());
        flags &= !(((1u32 << MXACT_MEMBER_BITS_PER_XACT) - 1) << bshift);
        flags |= u32::from(member.status) << bshift;
        page[flags_off..flags_off + 4].copy_from_slice(&flags.to_le_bytes());
        written += 1;
    }
    if written == 0 {
        return Err(format!("none of {} members from offset {first_offset} is on members page {pageno}", members.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::RelTag;

    const LSN: Lsn = Lsn(0x0100_0000);

    fn clog_key(pageno: u32) -> Key {
        Key::slru_block(SlruKind::Clog, pageno / SLRU_PAGES_PER_SEGMENT, pageno % SLRU_PAGES_PER_SEGMENT)
    }

    fn clog_status_of(page: &[u8], xid: u32) -> u8 {
        let byte = page[((xid % CLOG_XACTS_PER_PAGE) / 4) as usize];
        (byte >> ((xid % 4) * 2)) & 3
    }

    fn set(page: &mut [u8], key: Key, status: u8, xids: &[u32]) -> Result<(), String> {
        apply_project_record(key, LSN, page, &ProjectRecord::ClogSetStatus { status, xids: xids.to_vec() })
    }

    #[test]
    fn clog_bits_land_where_postgres_puts_them() {
        let mut page = vec![0u8; BLCKSZ];
        // xid 5: byte 1, bits 2-3; xid 32767: last byte, bits 6-7.
        set(&mut page, clog_key(0), TRANSACTION_STATUS_COMMITTED, &[5, 32767]).unwrap();
        assert_eq!(page[1], 0x04);
        assert_eq!(page[BLCKSZ - 1], 0x40);
        assert_eq!(page.iter().filter(|b| **b != 0).count(), 2);
        set(&mut page, clog_key(0), TRANSACTION_STATUS_ABORTED, &[4, 6, 7]).unwrap();
        assert_eq!(page[1], 0b1010_0110);
        // Re-applying is idempotent.
        let before = page.clone();
        set(&mut page, clog_key(0), TRANSACTION_STATUS_ABORTED, &[4, 6, 7]).unwrap();
        assert_eq!(page, before);
        // A page further on: xid 32768 * 33 + 9 is on page 33 (segment 1, block 1).
        let mut page = vec![0u8; BLCKSZ];
        let xid = CLOG_XACTS_PER_PAGE * 33 + 9;
        set(&mut page, clog_key(33), TRANSACTION_STATUS_COMMITTED, &[xid]).unwrap();
        assert_eq!(clog_key(33), Key::slru_block(SlruKind::Clog, 1, 1));
        assert_eq!(page[2], 0x04);
    }

    #[test]
    fn clog_touches_only_this_page_and_rejects_records_for_others() {
        let mut page = vec![0u8; BLCKSZ];
        let next_page_xid = CLOG_XACTS_PER_PAGE + 3;
        set(&mut page, clog_key(0), TRANSACTION_STATUS_COMMITTED, &[3, next_page_xid]).unwrap();
        assert_eq!(page[0], 0x40);
        assert_eq!(page.iter().filter(|b| **b != 0).count(), 1, "xid of page 1 written on page 0");
        let before = page.clone();
        assert!(set(&mut page, clog_key(0), TRANSACTION_STATUS_COMMITTED, &[next_page_xid]).is_err());
        assert!(set(&mut page, clog_key(0), TRANSACTION_STATUS_COMMITTED, &[]).is_err());
        assert!(set(&mut page, clog_key(0), 0, &[3]).is_err(), "status 0 accepted");
        assert!(set(&mut page, clog_key(0), 4, &[3]).is_err(), "status 4 accepted");
        assert!(set(&mut page, clog_key(0), TRANSACTION_STATUS_COMMITTED, &[0]).is_err());
        let offsets_key = Key::slru_block(SlruKind::MultiXactOffsets, 0, 0);
        assert!(set(&mut page, offsets_key, TRANSACTION_STATUS_COMMITTED, &[3]).is_err(), "CLOG record on offsets page");
        assert!(set(&mut [0u8; 100], clog_key(0), TRANSACTION_STATUS_COMMITTED, &[3]).is_err());
        assert_eq!(page, before, "a failed record changed the page");
    }

    #[test]
    fn clog_subcommitted_follows_recovery_rules() {
        let mut page = vec![0u8; BLCKSZ];
        // 0 -> sub-committed -> committed: the two phases of a commit.
        set(&mut page, clog_key(0), TRANSACTION_STATUS_SUB_COMMITTED, &[10, 11]).unwrap();
        assert_eq!((clog_status_of(&page, 10), clog_status_of(&page, 11)), (3, 3));
        set(&mut page, clog_key(0), TRANSACTION_STATUS_COMMITTED, &[10]).unwrap();
        assert_eq!(clog_status_of(&page, 10), TRANSACTION_STATUS_COMMITTED);
        // Sub-committed never overwrites committed during recovery ...
        set(&mut page, clog_key(0), TRANSACTION_STATUS_SUB_COMMITTED, &[10]).unwrap();
        assert_eq!(clog_status_of(&page, 10), TRANSACTION_STATUS_COMMITTED);
        // ... but sub-committed becomes aborted, and aborted stays what it is told.
        set(&mut page, clog_key(0), TRANSACTION_STATUS_ABORTED, &[11]).unwrap();
        assert_eq!(clog_status_of(&page, 11), TRANSACTION_STATUS_ABORTED);
        assert_eq!(clog_status_of(&page, 9), 0);
        assert_eq!(clog_status_of(&page, 12), 0);
    }

    fn vm_key(blkno: u32) -> Key {
        Key::rel_block(RelTag::new(1663, 5, 16384, VISIBILITYMAP_FORKNUM), blkno)
    }

    fn vm_clear(page: &mut [u8], key: Key, flags: u8, new: Option<u32>, old: Option<u32>) -> Result<(), String> {
        apply_project_record(key, LSN, page, &ProjectRecord::VmClearBits { flags, new_heap_blkno: new, old_heap_blkno: old })
    }

    /// An initialised VM page with every bit set and some pd_lsn.
    fn full_vm_page() -> Vec<u8> {
        let mut page = vec![0u8; BLCKSZ];
        page_init(&mut page);
        page[PAGE_HEADER_SIZE..].fill(0xFF);
        page[0..8].copy_from_slice(&[0, 0, 0, 0, 0x28, 0x00, 0x00, 0x01]);
        page
    }

    #[test]
    fn vm_clear_maps_heap_blocks_like_visibilitymap_c() {
        let mut page = full_vm_page();
        let lsn_before = page[0..8].to_vec();
        // Heap block 6: byte 1 of the map (24 + 1), bits 4-5.
        vm_clear(&mut page, vm_key(0), VISIBILITYMAP_VALID_BITS, Some(6), None).unwrap();
        assert_eq!(page[PAGE_HEADER_SIZE + 1], 0b1100_1111);
        // All-frozen only for heap block 7: bit 7 of the same byte.
        vm_clear(&mut page, vm_key(0), 0x02, None, Some(7)).unwrap();
        assert_eq!(page[PAGE_HEADER_SIZE + 1], 0b0100_1111);
        // Both blocks of an update on the same map page.
        vm_clear(&mut page, vm_key(0), VISIBILITYMAP_VALID_BITS, Some(0), Some(HEAPBLOCKS_PER_VM_PAGE - 1)).unwrap();
        assert_eq!(page[PAGE_HEADER_SIZE], 0b1111_1100);
        assert_eq!(page[BLCKSZ - 1], 0b0011_1111);
        assert_eq!(page[0..8], lsn_before[..], "visibilitymap_clear does not set pd_lsn");
        let changed = page[PAGE_HEADER_SIZE..].iter().filter(|b| **b != 0xFF).count();
        assert_eq!(changed, 3);
    }

    #[test]
    fn vm_clear_skips_blocks_of_other_map_pages_and_initialises_new_pages() {
        // Update from heap block 3 (map page 0) to HEAPBLOCKS_PER_VM_PAGE + 5 (map page 1).
        let new_blk = HEAPBLOCKS_PER_VM_PAGE + 5;
        let mut page = full_vm_page();
        vm_clear(&mut page, vm_key(1), VISIBILITYMAP_VALID_BITS, Some(new_blk), Some(3)).unwrap();
        assert_eq!(page[PAGE_HEADER_SIZE + 1], 0b1111_0011);
        assert_eq!(page[PAGE_HEADER_SIZE], 0xFF, "heap block 3 of map page 0 cleared on map page 1");
        let before = page.clone();
        assert!(vm_clear(&mut page, vm_key(2), VISIBILITYMAP_VALID_BITS, Some(new_blk), Some(3)).is_err());
        assert!(vm_clear(&mut page, vm_key(1), 0x01, Some(new_blk), None).is_err(), "all-visible alone");
        assert!(vm_clear(&mut page, vm_key(1), 0x04, Some(new_blk), None).is_err());
        assert!(vm_clear(&mut page, vm_key(1), VISIBILITYMAP_VALID_BITS, None, None).is_err());
        let heap_key = Key::rel_block(RelTag::new(1663, 5, 16384, 0), 1);
        assert!(vm_clear(&mut page, heap_key, VISIBILITYMAP_VALID_BITS, Some(new_blk), None).is_err());
        assert_eq!(page, before);
        // A page that does not exist yet becomes an empty initialised page.
        let mut page = vec![0u8; BLCKSZ];
        vm_clear(&mut page, vm_key(0), VISIBILITYMAP_VALID_BITS, Some(1), None).unwrap();
        let mut expected = vec![0u8; BLCKSZ];
        expected[12..20].copy_from_slice(&[24, 0, 0x00, 0x20, 0x00, 0x20, 0x04, 0x20]);
        assert_eq!(page, expected);
    }

    fn offsets_key(pageno: u32) -> Key {
        Key::slru_block(SlruKind::MultiXactOffsets, pageno / SLRU_PAGES_PER_SEGMENT, pageno % SLRU_PAGES_PER_SEGMENT)
    }

    fn members_key(pageno: u32) -> Key {
        Key::slru_block(SlruKind::MultiXactMembers, pageno / SLRU_PAGES_PER_SEGMENT, pageno % SLRU_PAGES_PER_SEGMENT)
    }

    #[test]
    fn multixact_offsets_are_four_bytes_per_multi() {
        let mut page = vec![0u8; BLCKSZ];
        let rec = |multi, offset| ProjectRecord::MultixactOffsets { entries: vec![(multi, offset)] };
        apply_project_record(offsets_key(0), LSN, &mut page, &rec(1, 1)).unwrap();
        apply_project_record(offsets_key(0), LSN, &mut page, &rec(2047, 0xA0B0C0D0)).unwrap();
        assert_eq!(page[4..8], [1, 0, 0, 0]);
        assert_eq!(page[BLCKSZ - 4..], [0xD0, 0xC0, 0xB0, 0xA0]);
        assert_eq!(page.iter().filter(|b| **b != 0).count(), 5);
        // Multi 2048 is on page 1; 2048 * 32 + 2 on segment 1 page 0.
        assert!(apply_project_record(offsets_key(0), LSN, &mut page, &rec(2048, 7)).is_err());
        let mut page = vec![0u8; BLCKSZ];
        apply_project_record(offsets_key(32), LSN, &mut page, &rec(2048 * 32 + 2, 7)).unwrap();
        assert_eq!(page[8..12], [7, 0, 0, 0]);
        assert!(apply_project_record(clog_key(0), LSN, &mut page, &rec(1, 1)).is_err());
    }

    #[test]
    fn a_new_multixact_writes_its_own_and_the_next_offset() {
        // Multixact 1 with two members at offset 1: words 1 and 2 become 1 and 3.
        let mut page = vec![0u8; BLCKSZ];
        let both = ProjectRecord::MultixactOffsets { entries: vec![(1, 1), (2, 3)] };
        apply_project_record(offsets_key(0), LSN, &mut page, &both).unwrap();
        let words: Vec<u32> = page[..16].chunks(4).map(|w| u32::from_le_bytes(w.try_into().unwrap())).collect();
        assert_eq!(words, [0, 1, 3, 0]);
        // An entry off the page fails the whole record and changes nothing.
        let mut page = vec![0u8; BLCKSZ];
        let split = ProjectRecord::MultixactOffsets { entries: vec![(2047, 5), (2048, 6)] };
        assert!(apply_project_record(offsets_key(0), LSN, &mut page, &split).is_err());
        assert!(page.iter().all(|b| *b == 0));
    }

    #[test]
    fn vm_truncate_keeps_the_bits_of_remaining_heap_blocks() {
        let truncate = |page: &mut [u8], key, heap_blocks| apply_project_record(key, LSN, page, &ProjectRecord::VmTruncate { heap_blocks });
        // 1001 heap blocks remain: bytes 0..250 kept, byte 250 keeps heap block 1000 (bits 0-1).
        let mut page = full_vm_page();
        let lsn_before = page[0..8].to_vec();
        truncate(&mut page, vm_key(0), 1001).unwrap();
        assert!(page[PAGE_HEADER_SIZE..PAGE_HEADER_SIZE + 250].iter().all(|b| *b == 0xFF));
        assert_eq!(page[PAGE_HEADER_SIZE + 250], 0b0000_0011);
        assert!(page[PAGE_HEADER_SIZE + 251..].iter().all(|b| *b == 0));
        assert_eq!(page[0..8], lsn_before[..], "pd_lsn unchanged");
        // On the second map page: its first heap block is HEAPBLOCKS_PER_VM_PAGE.
        let mut page = full_vm_page();
        truncate(&mut page, vm_key(1), HEAPBLOCKS_PER_VM_PAGE + 2).unwrap();
        assert_eq!(page[PAGE_HEADER_SIZE], 0b0000_1111);
        assert!(page[PAGE_HEADER_SIZE + 1..].iter().all(|b| *b == 0));
        // A new page is initialised; a heap end on another map page is refused.
        let mut page = vec![0u8; BLCKSZ];
        truncate(&mut page, vm_key(0), 5).unwrap();
        assert!(!checksum::page_is_new(&page));
        assert!(truncate(&mut full_vm_page(), vm_key(1), 5).is_err());
        assert!(truncate(&mut full_vm_page(), clog_key(0), 5).is_err());
    }

    #[test]
    fn multixact_members_use_member_groups() {
        let member = |xid, status| MultiXactMember { xid, status };
        let mut page = vec![0u8; BLCKSZ];
        // Offsets 3..=5: member 3 is the last of group 0, 4 and 5 open group 1.
        let rec = ProjectRecord::MultixactMembers { first_offset: 3, members: vec![member(100, 1), member(101, 2), member(102, 5)] };
        apply_project_record(members_key(0), LSN, &mut page, &rec).unwrap();
        // Group 0: flags at 0..4 (member 3's flag byte is byte 3), xids at 4..20 (member 3 at 16).
        assert_eq!(page[0..4], [0, 0, 0, 1]);
        assert_eq!(page[16..20], 100u32.to_le_bytes());
        // Group 1 starts at 20: flags 20..24, xids at 24, 28, ...
        assert_eq!(page[20..24], [2, 5, 0, 0]);
        assert_eq!(page[24..28], 101u32.to_le_bytes());
        assert_eq!(page[28..32], 102u32.to_le_bytes());
        // Another member of group 1 keeps the flags of its neighbours.
        let rec = ProjectRecord::MultixactMembers { first_offset: 7, members: vec![member(103, 4)] };
        apply_project_record(members_key(0), LSN, &mut page, &rec).unwrap();
        assert_eq!(page[20..24], [2, 5, 0, 4]);
        assert_eq!(page[36..40], 103u32.to_le_bytes());
        // The last member of a page: offset 1635 is in group 408 (bytes 8160..8180), slot 3.
        let rec = ProjectRecord::MultixactMembers { first_offset: 1635, members: vec![member(200, 3), member(201, 3)] };
        apply_project_record(members_key(0), LSN, &mut page, &rec).unwrap();
        assert_eq!(page[8163], 3);
        assert_eq!(page[8176..8180], 200u32.to_le_bytes());
        assert!(page[8180..].iter().all(|b| *b == 0), "the unused tail of the page was written");
        // ... and offset 1636, on page 1, went there and only there.
        let mut next = vec![0u8; BLCKSZ];
        apply_project_record(members_key(1), LSN, &mut next, &rec).unwrap();
        assert_eq!(next[0..8], [3, 0, 0, 0, 201, 0, 0, 0]);
        assert_eq!(next.iter().filter(|b| **b != 0).count(), 2);
        let before = page.clone();
        let bad = ProjectRecord::MultixactMembers { first_offset: 9, members: vec![member(1, 6)] };
        assert!(apply_project_record(members_key(0), LSN, &mut page, &bad).is_err(), "status 6 accepted");
        let elsewhere = ProjectRecord::MultixactMembers { first_offset: 1636 * 2, members: vec![member(1, 1)] };
        assert!(apply_project_record(members_key(0), LSN, &mut page, &elsewhere).is_err());
        assert!(apply_project_record(offsets_key(0), LSN, &mut page, &rec).is_err());
        assert_eq!(page, before);
    }

    #[test]
    fn multixact_members_wrap_around_the_offset_space() {
        let member = |xid| MultiXactMember { xid, status: 1 };
        let first_offset = u32::MAX;
        let last_page = u32::MAX / MULTIXACT_MEMBERS_PER_PAGE;
        let rec = ProjectRecord::MultixactMembers { first_offset, members: vec![member(50), member(51)] };
        let mut last = vec![0u8; BLCKSZ];
        apply_project_record(members_key(last_page), LSN, &mut last, &rec).unwrap();
        let group = (u32::MAX / 4) % MULTIXACT_MEMBERGROUPS_PER_PAGE;
        let at = (group * 20) as usize;
        assert_eq!(last[at + 3], 1);
        assert_eq!(last[at + 16..at + 20], 50u32.to_le_bytes());
        let mut first = vec![0u8; BLCKSZ];
        apply_project_record(members_key(0), LSN, &mut first, &rec).unwrap();
        assert_eq!(first[0..8], [1, 0, 0, 0, 51, 0, 0, 0]);
    }
}
