//! Full-page images: where they sit in a record and how to restore them.
//!
//! [`restore_image`] does what PostgreSQL's `RestoreBlockImage` does: it
//! decompresses the stored bytes (pglz, lz4 or zstd, as `bimg_info` says) to
//! `BLCKSZ - hole_length` bytes and puts the zero-filled "hole" back, giving
//! exactly 8192 bytes. pglz is implemented here (`src/common/pg_lzcompress.c`
//! semantics, with every read and back-reference bounds-checked); lz4 uses
//! `lz4_flex` block decompression and zstd the `zstd` crate, both writing into
//! a fixed 8 KiB buffer so no input can make them allocate more.

use super::*;

/// A full-page image of one block reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FpiImage {
    /// Offset of the stored image bytes in the record.
    pub offset: u32,
    /// `bimg_len`: stored (possibly compressed) length.
    pub length: u16,
    /// Bytes of the page before the hole.
    pub hole_offset: u16,
    /// Length of the hole (zero bytes not stored).
    pub hole_length: u16,
    /// `bimg_info` flags.
    pub bimg_info: u8,
}

/// Compression of a stored image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageCompression {
    None,
    Pglz,
    Lz4,
    Zstd,
}

impl FpiImage {
    /// `BKPIMAGE_APPLY`: redo restores this image.
    pub fn apply(&self) -> bool {
        self.bimg_info & BKPIMAGE_APPLY != 0
    }
    pub fn has_hole(&self) -> bool {
        self.bimg_info & BKPIMAGE_HAS_HOLE != 0
    }
    pub fn compression(&self) -> ImageCompression {
        if self.bimg_info & BKPIMAGE_COMPRESS_PGLZ != 0 {
            ImageCompression::Pglz
        } else if self.bimg_info & BKPIMAGE_COMPRESS_LZ4 != 0 {
            ImageCompression::Lz4
        } else if self.bimg_info & BKPIMAGE_COMPRESS_ZSTD != 0 {
            ImageCompression::Zstd
        } else {
            ImageCompression::None
        }
    }
}

/// Restores `image`, whose bytes lie in `record`, to a whole page in `page`.
pub fn restore_image(record: &[u8], image: &FpiImage, page: &mut [u8; BLCKSZ]) -> Result<(), String> {
    let start = image.offset as usize;
    let stored = record
        .get(start..start + image.length as usize)
        .ok_or_else(|| format!("image bytes {start}+{} lie outside the record", image.length))?;
    let hole_offset = image.hole_offset as usize;
    let hole_length = image.hole_length as usize;
    if hole_offset + hole_length > BLCKSZ {
        return Err(format!("hole at {hole_offset} of {hole_length} bytes exceeds the page"));
    }
    let expected = BLCKSZ - hole_length;
    let mut tmp = [0u8; BLCKSZ];
    let body: &[u8] = match image.compression() {
        ImageCompression::None => {
            if stored.len() != expected {
                return Err(format!("image of {} bytes, expected {expected}", stored.len()));
            }
            stored
        }
        ImageCompression::Pglz => {
            let n = pglz_decompress(stored, &mut tmp[..expected], true).map_err(|e| format!("pglz: {e}"))?;
            if n != expected {
                return Err(format!("pglz: decompressed {n} bytes, expected {expected}"));
            }
            &tmp[..expected]
        }
        ImageCompression::Lz4 => {
            let n = lz4_flex::block::decompress_into(stored, &mut tmp[..expected]).map_err(|e| format!("lz4: {e}"))?;
            if n != expected {
                return Err(format!("lz4: decompressed {n} bytes, expected {expected}"));
            }
            &tmp[..expected]
        }
        ImageCompression::Zstd => {
            let n = zstd_decompress(stored, &mut tmp[..expected])?;
            if n != expected {
                return Err(format!("zstd: decompressed {n} bytes, expected {expected}"));
            }
            &tmp[..expected]
        }
    };
    if hole_length == 0 {
        page.copy_from_slice(body);
    } else {
        page[..hole_offset].copy_from_slice(&body[..hole_offset]);
        page[hole_offset..hole_offset + hole_length].fill(0);
        page[hole_offset + hole_length..].copy_from_slice(&body[hole_offset..]);
    }
    Ok(())
}

fn zstd_decompress(src: &[u8], dst: &mut [u8]) -> Result<usize, String> {
    use std::cell::RefCell;
    thread_local! {
        // One decompression context per thread: creating one costs more than
        // decompressing a page.
        static DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    }
    DCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?);
        }
        let d = slot.as_mut().expect("just set");
        d.decompress_to_buffer(src, dst).map_err(|e| format!("zstd: {e}"))
    })
}

/// pglz decompression into `dst` (`pglz_decompress`). Returns the number of
/// bytes written. With `check_complete`, the source must be consumed and the
/// destination filled exactly. Corrupt input (a tag past the end of the
/// source, a back-reference before the start of the output) is an error.
pub fn pglz_decompress(src: &[u8], dst: &mut [u8], check_complete: bool) -> Result<usize, String> {
    let mut sp = 0usize;
    let mut dp = 0usize;
    let slen = src.len();
    let dlen = dst.len();
    while sp < slen && dp < dlen {
        let mut ctrl = src[sp];
        sp += 1;
        let mut ctrlc = 0;
        while ctrlc < 8 && sp < slen && dp < dlen {
            if ctrl & 1 != 0 {
                // A tag: 4 bits length-3, 12 bits offset, optional extra length byte.
                if sp + 2 > slen {
                    return Err(format!("truncated tag at source offset {sp}"));
                }
                let mut len = (src[sp] & 0x0f) as usize + 3;
                let off = (((src[sp] & 0xf0) as usize) << 4) | src[sp + 1] as usize;
                sp += 2;
                if len == 18 {
                    if sp >= slen {
                        return Err(format!("truncated tag length at source offset {sp}"));
                    }
                    len += src[sp] as usize;
                    sp += 1;
                }
                if off == 0 || off > dp {
                    return Err(format!("back-reference offset {off} at output offset {dp}"));
                }
                let len = len.min(dlen - dp);
                if off >= len {
                    dst.copy_within(dp - off..dp - off + len, dp);
                    dp += len;
                } else {
                    // Overlapping: the copy repeats the last `off` bytes.
                    for _ in 0..len {
                        dst[dp] = dst[dp - off];
                        dp += 1;
                    }
                }
            } else {
                dst[dp] = src[sp];
                dp += 1;
                sp += 1;
            }
            ctrl >>= 1;
            ctrlc += 1;
        }
    }
    if check_complete && (dp != dlen || sp != slen) {
        return Err(format!("decompressed {dp} of {dlen} bytes, consumed {sp} of {slen} source bytes"));
    }
    Ok(dp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small pglz compressor for tests: literals plus greedy back-references
    /// found by brute force within the 4095-byte window.
    fn pglz_compress_for_test(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < input.len() {
            let ctrl_pos = out.len();
            out.push(0u8);
            let mut ctrl = 0u8;
            for bit in 0..8 {
                if i >= input.len() {
                    break;
                }
                let mut best = (0usize, 0usize);
                let lo = i.saturating_sub(4095);
                for s in lo..i {
                    let mut l = 0;
                    while i + l < input.len() && l < 273 && input[s + l] == input[i + l] {
                        l += 1;
                    }
                    if l > best.1 {
                        best = (i - s, l);
                    }
                }
                if best.1 >= 3 {
                    let (off, len) = best;
                    ctrl |= 1 << bit;
                    if len >= 18 {
                        out.push((((off >> 4) & 0xf0) | 0x0f) as u8);
                        out.push((off & 0xff) as u8);
                        out.push((len - 18) as u8);
                    } else {
                        out.push((((off >> 4) & 0xf0) | (len - 3)) as u8);
                        out.push((off & 0xff) as u8);
                    }
                    i += len;
                } else {
                    out.push(input[i]);
                    i += 1;
                }
            }
            out[ctrl_pos] = ctrl;
        }
        out
    }

    fn sample_page() -> Vec<u8> {
        let mut page = vec![0u8; BLCKSZ];
        for (i, b) in page.iter_mut().enumerate().take(3000) {
            *b = (i % 7) as u8;
        }
        for (i, b) in page.iter_mut().enumerate().skip(6000) {
            *b = ((i * 31) % 251) as u8;
        }
        page
    }

    #[test]
    fn pglz_round_trip_with_overlapping_matches() {
        let page = sample_page();
        let c = pglz_compress_for_test(&page);
        assert!(c.len() < page.len() / 2);
        let mut out = vec![0u8; BLCKSZ];
        assert_eq!(pglz_decompress(&c, &mut out, true).unwrap(), BLCKSZ);
        assert_eq!(out, page);
    }

    #[test]
    fn pglz_rejects_corruption() {
        let mut out = [0u8; 64];
        // A tag first: nothing to refer back to.
        assert!(pglz_decompress(&[0x01, 0x00, 0x01], &mut out, false).is_err());
        // Truncated tag.
        assert!(pglz_decompress(&[0x02, b'a', 0x00], &mut out, false).is_err());
        // Incomplete output with check_complete.
        assert!(pglz_decompress(&[0x00, b'a'], &mut out, true).is_err());
        assert_eq!(pglz_decompress(&[0x00, b'a'], &mut out, false).unwrap(), 1);
    }

    fn image_record(stored: &[u8], hole_offset: u16, hole_length: u16, info: u8) -> (Vec<u8>, FpiImage) {
        let rec = stored.to_vec();
        let img = FpiImage { offset: 0, length: stored.len() as u16, hole_offset, hole_length, bimg_info: info };
        (rec, img)
    }

    #[test]
    fn restores_every_compression_with_hole() {
        let mut page = sample_page();
        let (hole_offset, hole_length) = (3000usize, 3000usize);
        page[hole_offset..hole_offset + hole_length].fill(0);
        let mut body = page[..hole_offset].to_vec();
        body.extend_from_slice(&page[hole_offset + hole_length..]);
        let cases: Vec<(u8, Vec<u8>)> = vec![
            (0, body.clone()),
            (BKPIMAGE_COMPRESS_PGLZ, pglz_compress_for_test(&body)),
            (BKPIMAGE_COMPRESS_LZ4, lz4_flex::block::compress(&body)),
            (BKPIMAGE_COMPRESS_ZSTD, zstd::bulk::compress(&body, 3).unwrap()),
        ];
        for (flag, stored) in cases {
            let (rec, img) = image_record(&stored, hole_offset as u16, hole_length as u16, BKPIMAGE_HAS_HOLE | flag);
            let mut out = [0xAAu8; BLCKSZ];
            restore_image(&rec, &img, &mut out).unwrap();
            assert_eq!(&out[..], &page[..], "compression flag {flag:#x}");
            // One byte short of the stored image must fail, not panic.
            let (rec, mut img) =
                image_record(&stored[..stored.len() - 1], hole_offset as u16, hole_length as u16, BKPIMAGE_HAS_HOLE | flag);
            img.length = rec.len() as u16;
            assert!(restore_image(&rec, &img, &mut out).is_err(), "flag {flag:#x}");
        }
    }

    #[test]
    fn rejects_hole_outside_page_and_image_outside_record() {
        let mut out = [0u8; BLCKSZ];
        let img =
            FpiImage { offset: 0, length: 10, hole_offset: 8000, hole_length: 8000, bimg_info: BKPIMAGE_HAS_HOLE | BKPIMAGE_COMPRESS_LZ4 };
        assert!(restore_image(&[0u8; 10], &img, &mut out).is_err());
        let img = FpiImage { offset: 5, length: 10, hole_offset: 0, hole_length: 0, bimg_info: BKPIMAGE_COMPRESS_LZ4 };
        assert!(restore_image(&[0u8; 10], &img, &mut out).is_err());
    }
}
