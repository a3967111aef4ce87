//! PostgreSQL 15's compile-time constants that the page server depends on,
//! in one place: page and WAL geometry, fork numbers, tablespace OIDs, SLRU
//! segment size. The tenant's clusters and the host must be built with
//! exactly these (redo runs the host's code on the tenant's pages).
//!
//! This crate has no dependencies, so the pure crates can use it; the
//! extension crate checks every value against `pgrx::pg_sys` at compile time
//! (`pageserver_ext/src/lib.rs`), so a build against a PostgreSQL with other
//! values fails instead of silently misreading pages.
#![forbid(unsafe_code)]

/// `PG_MAJORVERSION_NUM`.
pub const PG_MAJORVERSION_NUM: u32 = 15;
/// `BLCKSZ`: bytes of a relation page and of an SLRU page.
pub const BLCKSZ: usize = 8192;
/// `XLOG_BLCKSZ`: bytes of a WAL page.
pub const XLOG_BLCKSZ: usize = 8192;
/// `DEFAULT_XLOG_SEG_SIZE`: bytes of a WAL segment (the only size the page server takes).
pub const WAL_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;
/// `RELSEG_SIZE`: blocks per relation segment file.
pub const RELSEG_SIZE: u32 = 131_072;
/// `XLOG_PAGE_MAGIC` of PostgreSQL 15 WAL.
pub const XLOG_PAGE_MAGIC: u16 = 0xD110;
/// `SizeOfPageHeaderData`: the page header before the line pointers (already MAXALIGNed).
pub const SIZE_OF_PAGE_HEADER: usize = 24;
/// `SLRU_PAGES_PER_SEGMENT` (not in pgrx's bindings; the end-to-end tests compare
/// whole segment files with PostgreSQL's).
pub const SLRU_PAGES_PER_SEGMENT: u32 = 32;

/// `DEFAULTTABLESPACE_OID` (`pg_default`, `base/`).
pub const DEFAULTTABLESPACE_OID: u32 = 1663;
/// `GLOBALTABLESPACE_OID` (`pg_global`, `global/`).
pub const GLOBALTABLESPACE_OID: u32 = 1664;

/// `ForkNumber` values.
pub const MAIN_FORKNUM: u8 = 0;
pub const FSM_FORKNUM: u8 = 1;
pub const VISIBILITYMAP_FORKNUM: u8 = 2;
pub const INIT_FORKNUM: u8 = 3;
