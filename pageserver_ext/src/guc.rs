//! The extension's settings (GUCs), all in the `pageserver.` namespace.
//!
//! Settings read by the postmaster or by workers at start are
//! `PGC_POSTMASTER`: changing one needs a restart of the host (`SET` and a
//! reload refuse it). `wait_lsn_timeout`, `auth`, `auth_public_keys` and the page service's TLS
//! settings (`ssl_cert_file`, `ssl_key_file`, `ssl_required`) take effect
//! on reload and `redo_timeout` per session. Values are read only on PostgreSQL's own
//! threads; tokio tasks receive copies.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use std::ffi::CString;

pub static LISTEN_ADDR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"127.0.0.1:6400"));
pub static DATA_DIR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
pub static REDO_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(2);
pub static REDO_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);
pub static REMOTE_STORAGE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
pub static REMOTE_STORAGE_OPTIONS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));

pub static WAIT_LSN_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(60_000);
pub static CHECKPOINT_DISTANCE_MB: GucSetting<i32> = GucSetting::<i32>::new(256);
pub static CHECKPOINT_TIMEOUT_S: GucSetting<i32> = GucSetting::<i32>::new(600);
pub static COMPACTION_THRESHOLD: GucSetting<i32> = GucSetting::<i32>::new(10);
pub static IMAGE_CREATION_THRESHOLD: GucSetting<i32> = GucSetting::<i32>::new(3);
pub static IMAGE_LAYER_DISTANCE_MB: GucSetting<i32> = GucSetting::<i32>::new(1024);
pub static GC_HORIZON_MB: GucSetting<i32> = GucSetting::<i32>::new(64);
pub static PITR_INTERVAL_S: GucSetting<i32> = GucSetting::<i32>::new(7 * 24 * 3600);
pub static PAGE_CACHE_SIZE_MB: GucSetting<i32> = GucSetting::<i32>::new(64);
pub static COMPACTION_PERIOD_S: GucSetting<i32> = GucSetting::<i32>::new(20);
pub static LAYERS_FAULT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
pub static AUTH: GucSetting<AuthMethod> = GucSetting::<AuthMethod>::new(AuthMethod::Trust);
pub static AUTH_PUBLIC_KEYS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));

/// `pageserver.auth`: how page-service clients authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PostgresGucEnum)]
pub enum AuthMethod {
    /// Anyone who can connect reads every tenant.
    #[name = c"trust"]
    Trust,
    /// The password is a JWT signed by one of `pageserver.auth_public_keys`.
    #[name = c"jwt"]
    Jwt,
}
pub static SSL_CERT_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
pub static SSL_KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));
pub static SSL_REQUIRED: GucSetting<bool> = GucSetting::<bool>::new(false);

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
        c"pageserver.ssl_cert_file",
        c"PEM file of the page service's TLS certificate (and its chain); empty means no TLS.",
        c"With pageserver.ssl_key_file set too, an SSLRequest is answered with a TLS handshake. A relative path is \
          relative to the data directory. The files are read again on every reload.",
        &SSL_CERT_FILE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pageserver.ssl_key_file",
        c"PEM file of the private key of pageserver.ssl_cert_file.",
        c"A relative path is relative to the data directory. Read again on every reload.",
        &SSL_KEY_FILE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"pageserver.ssl_required",
        c"Refuse page service connections that do not use TLS.",
        c"A client that did not complete a TLS handshake gets a FATAL error (SQLSTATE 28000). Takes effect on reload.",
        &SSL_REQUIRED,
        GucContext::Sighup,
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
    GucRegistry::define_int_guc(
        c"pageserver.wait_lsn_timeout",
        c"How long a page request at an LSN not yet ingested waits, in milliseconds.",
        c"Applies to pagestream requests and basebackup/fullbackup at an LSN. Takes effect on reload.",
        &WAIT_LSN_TIMEOUT_MS,
        1,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    let repo_int = |name: &'static std::ffi::CStr,
                    short: &'static std::ffi::CStr,
                    setting: &'static GucSetting<i32>,
                    min: i32,
                    max: i32,
                    unit: GucFlags| {
        GucRegistry::define_int_guc(name, short, c"Needs a restart.", setting, min, max, GucContext::Postmaster, unit);
    };
    repo_int(
        c"pageserver.checkpoint_distance",
        c"WAL after which a timeline's in-memory layer is frozen and written as an L0 delta layer.",
        &CHECKPOINT_DISTANCE_MB,
        1,
        16 * 1024,
        GucFlags::UNIT_MB,
    );
    repo_int(
        c"pageserver.checkpoint_timeout",
        c"Age after which a timeline's in-memory layer is frozen even if small.",
        &CHECKPOINT_TIMEOUT_S,
        1,
        24 * 3600,
        GucFlags::UNIT_S,
    );
    repo_int(
        c"pageserver.compaction_threshold",
        c"Number of L0 delta layers that triggers compaction into L1 layers.",
        &COMPACTION_THRESHOLD,
        2,
        1000,
        GucFlags::default(),
    );
    repo_int(
        c"pageserver.image_creation_threshold",
        c"Delta layers above a key range's latest image that trigger a new image layer.",
        &IMAGE_CREATION_THRESHOLD,
        1,
        1000,
        GucFlags::default(),
    );
    repo_int(
        c"pageserver.image_layer_distance",
        c"WAL above a key range's latest image after which it gets a new image layer (0: only by image_creation_threshold).",
        &IMAGE_LAYER_DISTANCE_MB,
        0,
        1024 * 1024,
        GucFlags::UNIT_MB,
    );
    repo_int(
        c"pageserver.gc_horizon",
        c"WAL kept readable behind each timeline's last record LSN.",
        &GC_HORIZON_MB,
        0,
        1024 * 1024,
        GucFlags::UNIT_MB,
    );
    repo_int(
        c"pageserver.pitr_interval",
        c"Time kept readable behind now (GC keeps the older of this and gc_horizon).",
        &PITR_INTERVAL_S,
        0,
        i32::MAX,
        GucFlags::UNIT_S,
    );
    repo_int(
        c"pageserver.page_cache_size",
        c"Memory for pages rebuilt by redo, kept for later reads.",
        &PAGE_CACHE_SIZE_MB,
        0,
        1024 * 1024,
        GucFlags::UNIT_MB,
    );
    GucRegistry::define_int_guc(
        c"pageserver.compaction_period",
        c"Pause between two passes of the layers worker (compaction, image layers, GC).",
        c"Takes effect on reload.",
        &COMPACTION_PERIOD_S,
        1,
        24 * 3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_string_guc(
        c"pageserver.layers_fault",
        c"For tests only: the layers worker panics at this point of its pass.",
        c"One of l1_written, images_written, gc_planned (after writing the files, before their swap); empty for none. \
          Takes effect on reload.",
        &LAYERS_FAULT,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"pageserver.auth",
        c"How page-service clients authenticate: trust or jwt.",
        c"jwt: the password of the connection is a JWT signed with Ed25519 by a key of pageserver.auth_public_keys, \
          with scope tenant (and tenant_id) or admin. Takes effect on reload, for new connections.",
        &AUTH,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pageserver.auth_public_keys",
        c"PEM file, or directory of PEM files, of the Ed25519 public keys that page-service JWTs are checked against.",
        c"Every key is tried. Read again on reload (key rotation without restart). \
          Visible to superusers only.",
        &AUTH_PUBLIC_KEYS,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"pageserver.remote_storage",
        c"Object storage the backup worker copies layers and indexes to; empty means none.",
        c"file:///absolute/dir, s3://bucket/prefix, az://container/prefix or gs://bucket/prefix. \
          With it set, primaries keep WAL until it is in the bucket. Checked at start; needs a restart.",
        &REMOTE_STORAGE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pageserver.remote_storage_options",
        c"Options of the object storage: comma-separated key=value (endpoint, region, access_key_id, ...).",
        c"object_store's option names for the URL's backend; added to the provider's environment variables. \
          Visible to superusers only (not in pg_settings or SHOW ALL). Needs a restart.",
        &REMOTE_STORAGE_OPTIONS,
        GucContext::Postmaster,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
}

/// The repository settings from the GUCs above (and the host's
/// `data_checksums`). Call on a PostgreSQL thread.
pub fn repo_config() -> storage::repo::RepoConfig {
    let mb = |v: i32| v.max(0) as u64 * 1024 * 1024;
    let secs = |v: i32| std::time::Duration::from_secs(v.max(0) as u64);
    storage::repo::RepoConfig {
        checkpoint_distance: mb(CHECKPOINT_DISTANCE_MB.get()),
        checkpoint_timeout: secs(CHECKPOINT_TIMEOUT_S.get()),
        compaction_threshold: COMPACTION_THRESHOLD.get() as usize,
        image_creation_threshold: IMAGE_CREATION_THRESHOLD.get() as usize,
        image_layer_distance: mb(IMAGE_LAYER_DISTANCE_MB.get()),
        gc_horizon: mb(GC_HORIZON_MB.get()),
        pitr_interval: secs(PITR_INTERVAL_S.get()),
        page_cache_bytes: mb(PAGE_CACHE_SIZE_MB.get()),
        // Timeline creation checks that every primary's data_checksums
        // equals the host's, so the host's setting is the tenants' too.
        // SAFETY: reads the control file's value, set at startup; called on
        // the main worker's PostgreSQL thread.
        data_checksums: unsafe { pgrx::pg_sys::DataChecksumsEnabled() },
        // Four batches of a bulk read in flight per redo worker keep them busy.
        read_parallelism: (REDO_WORKERS.get().max(1) as usize) * 4,
        ..Default::default()
    }
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
