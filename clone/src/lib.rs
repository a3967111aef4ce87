//! Live clones: a stock PostgreSQL 15 running on a timeline of the page
//! server as of an LSN, without copying the database first.
//!
//! The `pageserver-clone` tool mounts a FUSE file system that looks like the
//! data directory a `fullbackup` at that LSN would give. Everything but
//! relation data comes once, at the first mount, from the page service's
//! `clonebackup` command; relation files have their sizes as of the LSN and
//! each block is fetched with GetPage@LSN (pagestream v3) when first read.
//! Fetched blocks and everything PostgreSQL writes go to the clone's local
//! store, so the page server's data is never changed and two clones of one
//! LSN are independent. A branch created at the first mount holds the pages
//! on the page server for as long as the clone exists.
//!
//! Modules, in the order data flows:
//! * [`pagestream_client`]: the libpq/pagestream client (also used by the
//!   benchmarks and tests).
//! * [`admin`]: the SQL side on the page server's host: the branch that
//!   pins the clone's LSN, and the page service's address.
//! * [`layout`]: the clone directory and its `clone.json`.
//! * [`store`]: the first population of the local store from a `clonebackup`.
//! * [`lazy`]: relation segment files whose blocks still come from the page
//!   server, with their persistent "still remote" bitmaps.
//! * [`fetcher`]: the page fetches, with retries up to a timeout.
//! * [`fs`]: the FUSE file system over the store.
//! * [`stats`]: counters shown by `pageserver-clone status`.

pub mod admin;
pub mod fetcher;
pub mod fs;
pub mod layout;
pub mod lazy;
pub mod pagestream_client;
pub mod stats;
pub mod store;
