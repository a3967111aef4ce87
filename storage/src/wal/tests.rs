//! Unit tests of the decoder on WAL laid out by [`super::encode`]. Real WAL
//! from PostgreSQL is tested in `storage/tests/wal_*.rs`.

use super::encode::{BlockSpec, RecordBuilder, WalWriter};
use super::*;
use crate::lsn::Lsn;

const SEG1M: u64 = 1 << 20;
const SYSID: u64 = 7_000_000_000_000_000_001;

fn heap_record(i: u32, data_len: usize, blocks: usize) -> RecordBuilder {
    RecordBuilder {
        xid: 1000 + i,
        info: 0x00,
        rmid: rmgr::HEAP,
        blocks: (0..blocks)
            .map(|b| BlockSpec {
                id: b as u8,
                fork_flags: if b == 1 { BKPBLOCK_WILL_INIT } else { 0 },
                rel: (1663, 5, 16384 + (b as u32 / 2)),
                blkno: i + b as u32,
                data: vec![b as u8; if b == 0 { data_len.min(60_000) } else { 3 }],
                image: None,
            })
            .collect(),
        origin: if i.is_multiple_of(5) { Some(7) } else { None },
        toplevel_xid: if i.is_multiple_of(7) { Some(999) } else { None },
        main_data: (0..(i % 300) as usize + data_len.saturating_sub(60_000)).map(|x| x as u8).collect(),
    }
}

/// A stream of varied records from `start` (a segment start).
/// (start, end, record bytes as built) of each record.
type Laid = Vec<(Lsn, Lsn, Vec<u8>)>;

fn sample_stream(start: Lsn, n: u32) -> (Vec<u8>, Laid) {
    let mut w = WalWriter::new(start, Lsn(start.0 - 40), SYSID, 1, SEG1M);
    let mut recs = Vec::new();
    for i in 0..n {
        let size = match i % 10 {
            0 => 20_000,  // spans pages
            1 => 100_000, // spans many pages
            2 => 8100,
            _ => (i as usize * 37) % 600,
        };
        let rb = heap_record(i, size, (i % 4) as usize);
        let (s, e) = w.append(&rb.build());
        recs.push((s, e, rb.build()));
    }
    (w.into_bytes(), recs)
}

fn decode_all(start: Lsn, bytes: &[u8], chunk: usize) -> Result<Vec<DecodedRecord>, WalDecodeError> {
    let mut d = WalStreamDecoder::with_segment_size(start, SEG1M);
    let mut out = Vec::new();
    for c in bytes.chunks(chunk.max(1)) {
        d.feed(c);
        while let Some(r) = d.next_record()? {
            out.push(r);
        }
    }
    Ok(out)
}

#[test]
fn round_trip_in_any_chunking() {
    let start = Lsn(3 * SEG1M);
    let (bytes, recs) = sample_stream(start, 120);
    assert!(bytes.len() as u64 > SEG1M, "should cross a segment boundary");
    for chunk in [1, 7, 24, 8192, 10_000, bytes.len()] {
        let got = decode_all(start, &bytes, chunk).unwrap();
        assert_eq!(got.len(), recs.len(), "chunk {chunk}");
        for (g, (s, e, built)) in got.iter().zip(&recs) {
            assert_eq!(g.start_lsn, *s);
            assert_eq!(g.end_lsn, *e);
            assert_eq!(g.raw.len(), built.len());
            // Body identical to what was built (header fields fixed up).
            assert_eq!(&g.raw[24..], &built[24..]);
            assert_eq!(g.xl_rmid, rmgr::HEAP);
        }
    }
    let got = decode_all(start, &bytes, 4096).unwrap();
    let r = &got[3];
    assert_eq!(r.blocks.len(), 3);
    assert_eq!(r.blocks[1].rel.rel_node, 16384);
    assert!(r.blocks[1].same_rel());
    assert!(r.blocks[1].will_init());
    assert_eq!(r.block_data(&r.blocks[2]), &[2, 2, 2]);
    assert_eq!(r.main_data(), &(0..3).map(|x| x as u8).collect::<Vec<_>>()[..]);
    assert_eq!(got[5].origin, Some(7));
    assert_eq!(got[7].toplevel_xid, Some(999));
    assert_eq!(got[1].xl_prev, got[0].start_lsn);
}

#[test]
fn starts_mid_stream_and_skips_a_leading_continuation() {
    let start = Lsn(3 * SEG1M);
    let (bytes, recs) = sample_stream(start, 60);
    // Start at a record boundary in the middle of a page.
    let (s, ..) = recs[5];
    let got = decode_all(s, &bytes[(s.0 - start.0) as usize..], 100).unwrap();
    assert_eq!(got.len(), recs.len() - 5);
    // Start at a page boundary inside a long record: its tail is skipped.
    let (s1, e1, _) = &recs[11]; // 100 KB record
    let page = Lsn((s1.0 / 8192 + 3) * 8192);
    assert!(page < *e1);
    let got = decode_all(page, &bytes[(page.0 - start.0) as usize..], 333).unwrap();
    assert_eq!(got[0].start_lsn, recs[12].0);
    assert_eq!(got.len(), recs.len() - 12);
}

#[test]
fn switch_record_skips_to_segment_end() {
    let start = Lsn(SEG1M);
    let mut w = WalWriter::new(start, Lsn(SEG1M - 40), SYSID, 1, SEG1M);
    w.append(&heap_record(1, 10, 1).build());
    let sw = RecordBuilder { rmid: rmgr::XLOG, info: XLOG_SWITCH, ..Default::default() }.build();
    let (sw_start, _) = w.append(&sw);
    // Rest of the segment: zero pages with headers would do; zeros must be skipped.
    let mut bytes = w.into_bytes();
    bytes.resize(SEG1M as usize, 0);
    let mut w2 = WalWriter::new(Lsn(2 * SEG1M), sw_start, SYSID, 1, SEG1M);
    let (after, _) = w2.append(&heap_record(2, 10, 1).build());
    bytes.extend_from_slice(w2.bytes());
    let got = decode_all(start, &bytes, 5000).unwrap();
    assert_eq!(got.len(), 3);
    assert!(got[1].is_switch());
    assert_eq!(got[1].end_lsn, Lsn(2 * SEG1M));
    assert_eq!(got[2].start_lsn, after);
}

#[track_caller]
fn first_error(start: Lsn, bytes: &[u8]) -> WalDecodeError {
    match decode_all(start, bytes, 777) {
        Ok(recs) => panic!("decoded {} records without error", recs.len()),
        Err(e) => e,
    }
}

#[test]
fn malformed_input_names_lsn_and_reason() {
    let start = Lsn(3 * SEG1M);
    let (bytes, recs) = sample_stream(start, 30);
    let off = |l: Lsn| (l.0 - start.0) as usize;

    let mut b = bytes.clone();
    b[0] = 0x11;
    let e = first_error(start, &b);
    assert!(matches!(e, WalDecodeError::PageHeader { lsn, .. } if lsn == start), "{e}");
    assert!(e.to_string().contains("magic"), "{e}");

    let mut b = bytes.clone();
    b[8192 + 8] ^= 1; // pageaddr of the second page
    let e = first_error(start, &b);
    assert!(matches!(e, WalDecodeError::PageHeader { lsn, .. } if lsn == Lsn(start.0 + 8192)), "{e}");

    let mut b = bytes.clone();
    b[8192 + 2] &= !(XLP_FIRST_IS_CONTRECORD as u8); // record 1 (100 KB) continues there
    let e = first_error(start, &b);
    assert!(matches!(e, WalDecodeError::Continuation { lsn, .. } if lsn == recs[1].0), "{e}");

    let mut b = bytes.clone();
    b[8192 + 16] ^= 4; // xlp_rem_len
    assert!(matches!(first_error(start, &b), WalDecodeError::Continuation { .. }));

    let mut b = bytes.clone();
    let at = off(recs[4].0) + 25;
    b[at] ^= 0x40;
    let e = first_error(start, &b);
    assert!(matches!(e, WalDecodeError::Crc { lsn, .. } if lsn == recs[4].0), "{e}");

    let mut b = bytes.clone();
    b[off(recs[4].0) + 8] ^= 8; // xl_prev
    let e = first_error(start, &b);
    assert!(matches!(e, WalDecodeError::RecordHeader { lsn, .. } if lsn == recs[4].0), "{e}");
    assert!(e.to_string().contains("prev-link"), "{e}");

    let mut b = bytes.clone();
    b[off(recs[4].0)..off(recs[4].0) + 4].copy_from_slice(&3u32.to_le_bytes());
    assert!(matches!(first_error(start, &b), WalDecodeError::RecordHeader { .. }));

    let mut b = bytes.clone();
    b[off(recs[4].0) + 17] = 100; // rmid
    assert!(first_error(start, &b).to_string().contains("resource manager"));

    // The error is sticky.
    let mut d = WalStreamDecoder::with_segment_size(start, SEG1M);
    d.feed(&b);
    let mut n = 0;
    let e1 = loop {
        match d.next_record() {
            Ok(Some(_)) => n += 1,
            Ok(None) => panic!("should fail"),
            Err(e) => break e,
        }
    };
    assert_eq!(n, 4);
    assert_eq!(d.next_record().unwrap_err(), e1);

    // Bad start positions.
    assert!(WalStreamDecoder::new(Lsn(8192 + 8)).next_record().is_err());
    assert!(WalStreamDecoder::new(Lsn(8192 + 30)).next_record().is_err());
}

fn body_error(rb: &RecordBuilder, patch: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut raw = rb.build();
    patch(&mut raw);
    let len = raw.len() as u32;
    raw[0..4].copy_from_slice(&len.to_le_bytes());
    let crc = record::record_crc(&raw);
    raw[20..24].copy_from_slice(&crc.to_le_bytes());
    match decode_record(bytes::Bytes::from(raw), Lsn(0x100_0000), Lsn(0)) {
        Ok(r) => panic!("decoded {r:?}"),
        Err(e) => {
            assert!(matches!(e, WalDecodeError::Record { .. }), "{e}");
            e.to_string()
        }
    }
}

#[test]
fn malformed_bodies_are_errors() {
    let rb = heap_record(3, 10, 2);
    // Block 0's header starts at 24: id, fork_flags, data_len.
    assert!(body_error(&rb, |r| r[24] = 40).contains("invalid block_id"));
    assert!(body_error(&rb, |r| r[25] &= !BKPBLOCK_HAS_DATA).contains("BKPBLOCK_HAS_DATA"));
    assert!(body_error(&rb, |r| r[25] |= 0x07).contains("fork"));
    assert!(body_error(&rb, |r| r[26] = 200).contains("length"));
    assert!(body_error(&rb, |r| r.truncate(40)).contains("short"));
    assert!(body_error(&rb, |r| r[25] |= BKPBLOCK_SAME_REL).contains("SAME_REL"));
    // Second block header id equal to the first: out of order.
    let second = 24 + 4 + 12 + 4;
    assert!(body_error(&rb, |r| r[second] = 0).contains("out-of-order"));
    // Image with an impossible hole.
    let mut img = heap_record(3, 10, 1);
    img.blocks[0].image = Some((vec![1u8; 100], 0, 8092, BKPIMAGE_HAS_HOLE | BKPIMAGE_COMPRESS_LZ4));
    assert!(body_error(&img, |_| {}).contains("HAS_HOLE"));
    img.blocks[0].image = Some((vec![1u8; 100], 0, 0, 0));
    assert!(body_error(&img, |_| {}).contains("BKPIMAGE_HAS_HOLE not set"));
}

#[test]
fn images_restore_through_the_record() {
    let mut page = [0u8; BLCKSZ];
    for (i, b) in page.iter_mut().enumerate() {
        *b = if (100..4000).contains(&i) { 0 } else { (i % 251) as u8 };
    }
    let mut body = page[..100].to_vec();
    body.extend_from_slice(&page[4000..]);
    let mut rb = heap_record(1, 0, 0);
    rb.blocks = vec![
        BlockSpec {
            id: 0,
            fork_flags: 0,
            rel: (1663, 5, 1),
            blkno: 9,
            data: vec![],
            image: Some((body.clone(), 100, 3900, BKPIMAGE_HAS_HOLE | BKPIMAGE_APPLY)),
        },
        BlockSpec {
            id: 3,
            fork_flags: 2,
            rel: (1663, 5, 1),
            blkno: 10,
            data: vec![5; 9],
            image: Some((lz4_flex::block::compress(&body), 100, 3900, BKPIMAGE_HAS_HOLE | BKPIMAGE_COMPRESS_LZ4)),
        },
    ];
    let mut w = WalWriter::new(Lsn(SEG1M), Lsn(1), SYSID, 1, SEG1M);
    w.append(&rb.build());
    let got = decode_all(Lsn(SEG1M), w.bytes(), 1000).unwrap();
    let r = &got[0];
    assert_eq!(r.fpi_len(), (body.len() + lz4_flex::block::compress(&body).len()) as u32);
    let mut out = [0u8; BLCKSZ];
    for b in &r.blocks {
        r.restore_image(b, &mut out).unwrap();
        assert_eq!(out, page);
    }
    assert!(r.blocks[0].apply_image() && !r.blocks[1].apply_image());
    assert_eq!(r.blocks[1].fork(), 2);
    assert_eq!(r.block_data(&r.blocks[1]), &[5; 9]);
}

#[test]
fn overwritten_contrecord_is_abandoned() {
    // A, then B cut off at a page boundary (the primary crashed), then a page
    // flagged XLP_FIRST_IS_OVERWRITE_CONTRECORD starting with C (prev = A).
    let start = Lsn(SEG1M);
    let mut w = WalWriter::new(start, Lsn(1), SYSID, 1, SEG1M);
    let (a, _) = w.append(&heap_record(1, 10, 1).build());
    let (b, _) = w.append(&heap_record(2, 30_000, 1).build());
    let cut = (b.0 / XLOG_BLCKSZ + 1) * XLOG_BLCKSZ;
    let mut bytes = w.into_bytes();
    bytes.truncate((cut - start.0) as usize);
    let mut w2 = WalWriter::new(Lsn(cut), a, SYSID, 1, SEG1M);
    let (c, _) = w2.append(&heap_record(3, 10, 1).build());
    let mut tail = w2.into_bytes();
    tail[2] |= XLP_FIRST_IS_OVERWRITE_CONTRECORD as u8;
    bytes.extend_from_slice(&tail);
    for chunk in [1, 100, 9000] {
        let got = decode_all(start, &bytes, chunk).unwrap();
        assert_eq!(got.iter().map(|r| r.start_lsn).collect::<Vec<_>>(), vec![a, c], "chunk {chunk}");
    }
    // Without the flag the missing continuation is an error naming B.
    let mut plain = bytes.clone();
    plain[(cut - start.0) as usize + 2] &= !(XLP_FIRST_IS_OVERWRITE_CONTRECORD as u8);
    let e = first_error(start, &plain);
    assert!(matches!(e, WalDecodeError::Continuation { lsn, .. } if lsn == b), "{e}");
}

#[test]
fn segment_file_names_page_headers_and_segment_sizes() {
    assert_eq!(segment_file_name(1, 1, 16 << 20), "000000010000000000000001");
    assert_eq!(segment_file_name(2, 0x1_23, 16 << 20), "000000020000000100000023");
    assert_eq!(segment_file_name(1, 0x1_23, 1 << 30), "000000010000004800000003");
    assert_eq!(page_header_size(Lsn(0x0100_0000), 16 << 20), SIZE_OF_LONG_PAGE_HEADER);
    assert_eq!(page_header_size(Lsn(0x0100_1fff), 16 << 20), SIZE_OF_LONG_PAGE_HEADER);
    assert_eq!(page_header_size(Lsn(0x0100_2000), 16 << 20), SIZE_OF_SHORT_PAGE_HEADER);
    assert!(is_valid_segment_size(1 << 20) && is_valid_segment_size(1 << 30));
    assert!(
        !is_valid_segment_size(0) && !is_valid_segment_size(1 << 19) && !is_valid_segment_size(3 << 20) && !is_valid_segment_size(1 << 31)
    );
}
