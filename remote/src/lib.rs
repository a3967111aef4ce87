//! Object storage for the page server: which store a URL names
//! ([`config`]), the object names in it ([`layout`]), the remote timeline
//! index ([`index`]), and [`RemoteStorage`], whose transfers check what they
//! move: a layer upload returns its size and CRC32C for the index, and a
//! download is verified against them before it takes the local name; and
//! the bucket checker ([`check`]).
//!
//! Everything here is async (`object_store` on tokio) and calls no
//! PostgreSQL code; the backup worker drives it.

pub mod backoff;
pub mod check;
pub mod config;
pub mod error;
pub mod index;
pub mod layout;
pub mod transfer;

pub use config::RemoteStorageConfig;
pub use error::{RemoteError, Result};
pub use index::{RemoteIndex, RemoteLayer};
pub use layout::Generation;
pub use object_store::path::Path as ObjectPath;
pub use transfer::{ObjectInfo, RemoteStorage, Transferred};
