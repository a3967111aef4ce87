//! What the page server's main worker runs, with no PostgreSQL call
//! anywhere (this crate does not depend on pgrx, so the compiler keeps it
//! that way): tokio tasks and plain threads that may run on any thread of
//! the main worker.
//!
//! - [`tenants`]: the tenant and timeline manager (repositories on disk,
//!   timeline creation and import, the flusher thread, the owner side of
//!   layer work);
//! - [`timeline_handle`]: one timeline as its tasks share it (storage
//!   timeline, WAL source, live status);
//! - [`log`]: log lines from threads that must not call PostgreSQL;
//! - [`error`]: the service's error kinds and their SQLSTATEs, in one place;
//! - [`walreceiver`]: the replication client and the per-timeline WAL
//!   receiver feeding ingest;
//! - [`page_service`]: the libpq listener, pagestream and backups;
//! - [`tls`]: the crypto provider and PEM files both the page service and
//!   the replication client use;
//! - [`redo_client`]: the repository's redo through the shared-memory queue
//!   to the host's redo workers (project records in Rust);
//! - [`layers`]: what the layers worker runs (compaction, image layers and
//!   GC planned on read-only views, swapped in by the manager);
//! - [`backup`]: what the backup worker runs (layers and indexes copied to
//!   object storage, `remote_consistent_lsn` published in shared memory);
//! - [`attach`]: the backup worker's command queue and the download of a
//!   tenant from object storage (the main worker then loads it);
//! - [`mgmt`]: the command format between SQL functions (and the layers
//!   worker) and the manager, the thread serving the command queue, and the
//!   layers worker's client of it.
//!
//! The extension crate (`pageserver_ext`) keeps only the glue: `_PG_init`,
//! GUCs, shared memory, worker entry points and SQL functions.
#![deny(unsafe_code)]

// Dependencies run one way, top to bottom (`tests/module_graph.rs` checks it):
// mgmt → {tenants, layers}; tenants → {walreceiver, page_service};
// all → timeline_handle, log, error; walreceiver and page_service → tls; redo_client stands alone; backup →
// timeline_handle.
pub mod attach;
pub mod backup;
pub mod error;
pub mod inspect;
pub mod layers;
pub mod log;
pub mod mgmt;
pub mod page_service;
pub mod redo_client;
pub mod tenant_settings;
pub mod tenants;
pub mod timeline_handle;
pub mod tls;
pub mod walreceiver;
