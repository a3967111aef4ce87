//! The extension's settings (GUCs), all in the `pageserver.` namespace.
//!
//! Every setting here is read by the postmaster or by workers at start, so
//! all are `PGC_POSTMASTER`: changing one needs a restart of the host
//! (`SET` and a reload refuse it). Values are read only on PostgreSQL's own
//! threads; tokio tasks receive copies.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

pub static LISTEN_ADDR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"127.0.0.1:6400"));
pub static DATA_DIR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
pub static REDO_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(2);
pub static REDO_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);
pub static REMOTE_STORAGE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));

/// Most redo workers: the worker table holds main, layers, backup and these.
pub const MAX_REDO_WORKERS: i32 = shared_mem::MAX_WORKERS as i32 - 3;

pub fn define() {
    GucRegistry::define_string_guc(
        c"pageserver.listen_addr",
        c"Address (host:port) of the page service's libpq listener.",
        c"Compute nodes connect here for pagestream, basebackup and fullbackup. Needs a restart.",
        &LISTEN_ADDR,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pageserver.data_dir",
        c"Directory of tenants, timelines and layer files; empty means $PGDATA/pageserver.",
        c"Needs a restart.",
        &DATA_DIR,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pageserver.redo_workers",
        c"Number of WAL redo background workers.",
        c"Each runs the host's resource-manager redo routines on scratch buffers. Needs a restart.",
        &REDO_WORKERS,
        1,
        MAX_REDO_WORKERS,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pageserver.redo_timeout",
        c"How long a redo request may wait for a redo worker, in milliseconds.",
        c"Includes waiting for a free queue slot. Superusers may change it per session.",
        &REDO_TIMEOUT_MS,
        1,
        3_600_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"pageserver.remote_storage",
        c"Object storage for layer backups; empty means none.",
        c"Needs a restart.",
        &REMOTE_STORAGE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

pub fn string(setting: &GucSetting<Option<CString>>) -> String {
    setting.get().map(|c| c.to_string_lossy().into_owned()).unwrap_or_default()
}

/// `pageserver.data_dir`, or `$PGDATA/pageserver` when empty.
pub fn data_dir() -> std::path::PathBuf {
    let configured = string(&DATA_DIR);
    if !configured.is_empty() {
        return configured.into();
    }
    // SAFETY: DataDir is set by the postmaster before any library is loaded
    // and never changes; it is a NUL-terminated C string.
    let pgdata = unsafe { std::ffi::CStr::from_ptr(pgrx::pg_sys::DataDir) };
    std::path::Path::new(&*pgdata.to_string_lossy()).join("pageserver")
}
