//! Log sequence numbers.
//!
//! An [`Lsn`] is a byte position in a PostgreSQL WAL stream. It prints and
//! parses the way PostgreSQL does: the high and low 32 bits in upper-case
//! hexadecimal separated by a slash (`16/B374D848`).

use std::fmt;
use std::str::FromStr;

/// A position in the WAL (PostgreSQL's `XLogRecPtr`).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `InvalidXLogRecPtr`: no position.
    pub const INVALID: Lsn = Lsn(0);
    /// The largest position; "latest" in reads.
    pub const MAX: Lsn = Lsn(u64::MAX);

    pub fn is_valid(self) -> bool {
        self != Lsn::INVALID
    }

    /// `self - other`, or `None` if `other` is greater.
    pub fn checked_sub(self, other: impl Into<u64>) -> Option<Lsn> {
        self.0.checked_sub(other.into()).map(Lsn)
    }

    /// `self - other`, clamped at 0.
    pub fn saturating_sub(self, other: impl Into<u64>) -> Lsn {
        Lsn(self.0.saturating_sub(other.into()))
    }

    /// The distance in bytes from `earlier` up to `self` (0 if `earlier` is later).
    pub fn distance_from(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The offset of this position inside a WAL segment of `seg_size` bytes.
    pub fn segment_offset(self, seg_size: u64) -> u64 {
        self.0 % seg_size
    }

    /// The number of the WAL segment of `seg_size` bytes holding this position.
    pub fn segment_number(self, seg_size: u64) -> u64 {
        self.0 / seg_size
    }

    pub fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    pub fn from_be_bytes(bytes: [u8; 8]) -> Lsn {
        Lsn(u64::from_be_bytes(bytes))
    }
}

impl From<u64> for Lsn {
    fn from(value: u64) -> Self {
        Lsn(value)
    }
}

impl From<Lsn> for u64 {
    fn from(lsn: Lsn) -> Self {
        lsn.0
    }
}

impl std::ops::Add<u64> for Lsn {
    type Output = Lsn;
    fn add(self, rhs: u64) -> Lsn {
        Lsn(self.0.checked_add(rhs).expect("Lsn overflow"))
    }
}

impl std::ops::AddAssign<u64> for Lsn {
    fn add_assign(&mut self, rhs: u64) {
        *self = *self + rhs;
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The text was not `HI/LO` with hexadecimal halves of at most 32 bits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers separated by '/', like 16/B374D848")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;
    fn from_str(s: &str) -> Result<Lsn, ParseLsnError> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let parse = |half: &str| {
            if half.is_empty() || half.len() > 8 {
                return Err(err());
            }
            u32::from_str_radix(half, 16).map_err(|_| err())
        };
        Ok(Lsn((u64::from(parse(hi)?) << 32) | u64::from(parse(lo)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_like_postgres() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parses_round_trip() {
        for v in [0u64, 1, 0x1_0000_0000, 0x16_B374_D848, u64::MAX] {
            assert_eq!(Lsn(v).to_string().parse::<Lsn>().unwrap(), Lsn(v));
        }
        assert_eq!("0/16b374d8".parse::<Lsn>().unwrap(), Lsn(0x16b3_74d8));
        for bad in ["", "1", "/1", "1/", "x/1", "1/123456789", "1/2/3"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }
}
