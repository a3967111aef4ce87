//! The pure-Rust storage engine of pageserver_ext.
//!
//! Nothing in this crate calls PostgreSQL: it decodes WAL, maps records onto
//! the key space and keeps page versions in layers. It is tested with plain
//! `cargo test`.

#![forbid(unsafe_code)]

pub mod backup;
pub mod checksum;
pub mod commit_time;
pub mod import;
pub mod key;
pub mod lsn;
pub mod pagestream;
pub mod pg_control;
pub mod project_redo;
pub mod repo;
pub mod value;
pub mod wal;
pub mod walingest;
