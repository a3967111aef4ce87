//! Data-page checksums, as PostgreSQL computes them (`storage/checksum_impl.h`).
//!
//! PostgreSQL sets `pd_checksum` only when it writes a page out of shared
//! buffers; a page in a WAL record (a full-page image) or rebuilt by redo
//! carries whatever the buffer held, usually a stale value. A tenant with
//! `data_checksums = on` must get pages whose checksum verifies, so every
//! relation page the repository hands out is stamped by [`set_page_checksum`]
//! (see `Timeline::get`).
//!
//! The algorithm: 32 parallel FNV-1a-style lanes over the page read as
//! little-endian `u32`s (with `pd_checksum` taken as 0), two extra rounds of
//! zeros, the lanes XORed together, XORed with the block number, folded to
//! 1..=65535. New pages (`pd_upper == 0`) get no checksum, as
//! `PageSetChecksumInplace` leaves them and `PageIsVerified` accepts them.

use crate::wal::BLCKSZ;

/// Parallel lanes (`N_SUMS`).
const LANES: usize = 32;
/// The FNV-1a prime (`FNV_PRIME`).
const FNV_PRIME: u32 = 16_777_619;
/// Starting value of each lane (`checksumBaseOffsets`).
const LANE_OFFSETS: [u32; LANES] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C, 0xF8D4474F, 0xE39EB970, 0x42C6AE16,
    0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB, 0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2,
    0x304A0979, 0x85AA43D4, 0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];
/// Byte offset of `pd_checksum` (u16) in the page header.
const PD_CHECKSUM: usize = 8;
/// Byte offset of `pd_upper` (u16) in the page header.
const PD_UPPER: usize = 14;

#[inline(always)]
fn mix(lane: u32, value: u32) -> u32 {
    let t = lane ^ value;
    t.wrapping_mul(FNV_PRIME) ^ (t >> 17)
}

/// `PageIsNew`: a page never initialised (`pd_upper == 0`), all zeros included.
pub fn page_is_new(page: &[u8]) -> bool {
    page.len() >= PD_UPPER + 2 && page[PD_UPPER] == 0 && page[PD_UPPER + 1] == 0
}

/// `pg_checksum_page`: the checksum of an 8 KiB page stored as block `blkno`
/// of its fork (the block number within the fork, not within a segment file).
pub fn page_checksum(page: &[u8; BLCKSZ], blkno: u32) -> u16 {
    let mut lanes = LANE_OFFSETS;
    for (row_index, row) in page.chunks_exact(4 * LANES).enumerate() {
        for (lane, word) in lanes.iter_mut().zip(row.chunks_exact(4)) {
            *lane = mix(*lane, u32::from_le_bytes([word[0], word[1], word[2], word[3]]));
        }
        if row_index == 0 {
            // pd_checksum (bytes 8..10 = the low half of word 2) counts as zero:
            // undo its contribution by recomputing lane 2 from the masked word.
            let word = u32::from_le_bytes([row[8], row[9], row[10], row[11]]) & 0xFFFF_0000;
            lanes[2] = mix(LANE_OFFSETS[2], word);
        }
    }
    for _ in 0..2 {
        for lane in lanes.iter_mut() {
            *lane = mix(*lane, 0);
        }
    }
    let folded = lanes.iter().fold(0u32, |acc, lane| acc ^ lane) ^ blkno;
    (folded % 65535 + 1) as u16
}

/// Stamps `page` (block `blkno` of its fork) with its checksum, unless it is
/// new, as `PageSetChecksumInplace` does.
pub fn set_page_checksum(page: &mut [u8; BLCKSZ], blkno: u32) {
    if page_is_new(page) {
        return;
    }
    store_checksum(page, page_checksum(page, blkno));
}

/// Writes `sum` into the page header's `pd_checksum`.
pub fn store_checksum(page: &mut [u8; BLCKSZ], sum: u16) {
    page[PD_CHECKSUM..PD_CHECKSUM + 2].copy_from_slice(&sum.to_le_bytes());
}

/// The checksum stored in the page header.
pub fn stored_checksum(page: &[u8]) -> u16 {
    u16::from_le_bytes([page[PD_CHECKSUM], page[PD_CHECKSUM + 1]])
}

/// What `PageIsVerified` accepts with checksums on: a new page that is all
/// zeros, or an initialised page whose stored checksum matches.
pub fn page_checksum_is_valid(page: &[u8; BLCKSZ], blkno: u32) -> bool {
    if page_is_new(page) {
        return page.iter().all(|b| *b == 0);
    }
    stored_checksum(page) == page_checksum(page, blkno)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A straightforward transcription of `pg_checksum_block` (lanes over
    /// words, pd_checksum zeroed in a copy), to check the fast path against.
    fn reference(page: &[u8; BLCKSZ], blkno: u32) -> u16 {
        let mut copy = *page;
        copy[PD_CHECKSUM] = 0;
        copy[PD_CHECKSUM + 1] = 0;
        let words: Vec<u32> = copy.chunks_exact(4).map(|w| u32::from_le_bytes(w.try_into().unwrap())).collect();
        let mut sums = LANE_OFFSETS;
        for i in 0..BLCKSZ / (4 * LANES) {
            for j in 0..LANES {
                sums[j] = mix(sums[j], words[i * LANES + j]);
            }
        }
        for _ in 0..2 {
            for s in sums.iter_mut() {
                *s = mix(*s, 0);
            }
        }
        let r = sums.iter().fold(0, |a, s| a ^ s) ^ blkno;
        (r % 65535 + 1) as u16
    }

    fn sample_page(seed: u32) -> Box<[u8; BLCKSZ]> {
        let mut page = Box::new([0u8; BLCKSZ]);
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        for b in page.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        page[PD_UPPER..PD_UPPER + 2].copy_from_slice(&4000u16.to_le_bytes());
        page
    }

    #[test]
    fn matches_the_reference_and_ignores_the_stored_checksum() {
        for seed in 0..20 {
            let mut page = sample_page(seed);
            let blkno = seed * 977;
            let expected = reference(&page, blkno);
            assert_eq!(page_checksum(&page, blkno), expected);
            page[PD_CHECKSUM] ^= 0x5A;
            assert_eq!(page_checksum(&page, blkno), expected, "pd_checksum must not count");
            assert!(!page_checksum_is_valid(&page, blkno) || stored_checksum(&page[..]) == expected);
            set_page_checksum(&mut page, blkno);
            assert!(page_checksum_is_valid(&page, blkno));
            assert!(!page_checksum_is_valid(&page, blkno + 1), "the block number is part of the checksum");
            assert_ne!(page_checksum(&page, blkno), 0);
        }
    }

    #[test]
    fn new_pages_are_left_alone() {
        let mut zero = Box::new([0u8; BLCKSZ]);
        set_page_checksum(&mut zero, 7);
        assert!(zero.iter().all(|b| *b == 0));
        assert!(page_checksum_is_valid(&zero, 7));
        zero[100] = 1; // new but not all zeros: PageIsVerified rejects it
        assert!(!page_checksum_is_valid(&zero, 7));
    }
}
