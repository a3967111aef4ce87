//! The redo worker: applies WAL records of a tenant to page images by
//! calling the host's own resource-manager redo routines on private scratch
//! buffers (see DESIGN.md, "Redo in a host backend").
//!
//! * [`validate`]: pure checks done before PostgreSQL sees a record or page;
//! * [`engine`]: the scratch-buffer recipe and the `rm_redo` calls.

pub mod engine;
pub mod validate;

pub use engine::{mask_page, BlockTag, Record, RedoEngine, RedoFailure};
pub use validate::BLCKSZ;
