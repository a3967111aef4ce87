//! The main worker: owns the tenants ([`service::tenants::Manager`]: the
//! repositories, WAL receivers, layer flushes, and the owner side of the
//! layers worker's swaps), the
//! tokio runtime of the page service, and the thread that serves
//! management commands from SQL functions. Its PostgreSQL main thread stays
//! in the latch loop, writes log lines that other threads hand it, keeps
//! reloadable settings current for them (the page service's public keys
//! and TLS certificate are read again on every reload), and is the only thread of
//! this process that calls PostgreSQL.

use super::{with_signals_blocked, WorkerContext};
use pgrx::prelude::*;
use service::page_service::auth::{self, AuthConfig, SharedAuth};
use service::page_service::tls::{SharedTlsPolicy, TlsPolicy};
use service::page_service::{self, commands::ServiceContext};
use service::tenants::{HostSettings, Manager};
use shared_mem::WorkerState;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The main thread wakes this often to flush log lines from tokio threads.
const LOG_FLUSH_INTERVAL: Duration = Duration::from_millis(250);
/// Tokio worker threads: page service connections are I/O bound.
const RUNTIME_THREADS: usize = 2;

pub fn run(ctx: &WorkerContext) {
    let listen_addr = crate::guc::string(&crate::guc::LISTEN_ADDR);
    if let Err(e) = page_service::parse_listen_addr(&listen_addr) {
        // A configuration error: stay alive (status shows it) but do not serve.
        warning!("{e}; the page service is not started");
    }
    let data_dir = crate::guc::data_dir();
    if let Err(e) = std::fs::create_dir_all(&data_dir) {
        error!("cannot create pageserver.data_dir \"{}\": {e}", data_dir.display());
    }

    let runtime = with_signals_blocked(|| {
        tokio::runtime::Builder::new_multi_thread().worker_threads(RUNTIME_THREADS).thread_name("pageserver-tokio").enable_all().build()
    })
    .unwrap_or_else(|e| error!("cannot start the tokio runtime: {e}"));
    let log_lines = service::log::install().unwrap_or_else(|e| error!("{e}"));
    let shared = crate::shmem::state();
    let redo_timeout = Duration::from_millis(crate::guc::REDO_TIMEOUT_MS.get() as u64);
    let redo = Arc::new(service::redo_client::QueueRedo::new(&shared.redo, redo_timeout));
    // With object storage, primaries are told what is safe in the bucket.
    let remote = (!crate::guc::string(&crate::guc::REMOTE_STORAGE).is_empty()).then_some(&shared.remote);
    let host = HostSettings { data_checksums: setting("data_checksums"), wal_log_hints: setting("wal_log_hints"), remote };
    let conf = crate::guc::repo_config();
    // Threads the manager starts must not receive PostgreSQL's signals.
    let manager = with_signals_blocked(|| Manager::start(&data_dir, conf, redo, host, runtime.handle().clone()))
        .unwrap_or_else(|e| error!("cannot open the tenants in \"{}\": {e}", data_dir.display()));
    let wait_lsn_timeout_ms = Arc::new(AtomicU64::new(crate::guc::WAIT_LSN_TIMEOUT_MS.get() as u64));
    let service = ServiceContext {
        timelines: manager.clone(),
        stats: manager.page_service_stats.clone(),
        wait_lsn_timeout_ms: wait_lsn_timeout_ms.clone(),
    };
    let (auth_config, mut auth_summary) = load_auth_config();
    let auth = SharedAuth::new(auth_config);
    let tls = SharedTlsPolicy::new(tls_policy(None));
    if page_service::parse_listen_addr(&listen_addr).is_ok() {
        let addr = listen_addr.clone();
        let (auth, tls) = (auth.clone(), tls.clone());
        manager.spawn(|cancel| page_service::run(addr, Some(service), auth, tls, cancel));
    }
    let commands_manager = manager.clone();
    with_signals_blocked(|| {
        std::thread::Builder::new()
            .name("pageserver-commands".into())
            .spawn(move || service::mgmt::serve(&shared.commands, commands_manager))
    })
    .unwrap_or_else(|e| error!("cannot start the command thread: {e}"));
    let listener = if page_service::parse_listen_addr(&listen_addr).is_ok() {
        format!("page service on {listen_addr}")
    } else {
        "page service not started: bad pageserver.listen_addr".to_string()
    };
    let activity = |auth: &str| format!("serving {} tenants; {listener} ({auth})", manager.tenant_ids().len());
    ctx.slot.set_activity(&activity(&auth_summary));
    ctx.slot.set_state(WorkerState::Running);

    let mut reloads_applied = ctx.reloads();
    while ctx.wait(LOG_FLUSH_INTERVAL) {
        if ctx.reloads() != reloads_applied {
            // Files named by settings are read again, as PostgreSQL does.
            reloads_applied = ctx.reloads();
            let (config, summary) = load_auth_config();
            auth.set(config);
            auth_summary = summary;
            tls.set(tls_policy(Some(tls.get())));
        }
        ctx.slot.set_activity(&activity(&auth_summary));
        wait_lsn_timeout_ms.store(crate::guc::WAIT_LSN_TIMEOUT_MS.get() as u64, Ordering::Relaxed);
        super::write_log_lines(&log_lines);
    }
    ctx.slot.set_state(WorkerState::Stopping);
    manager.stop();
    let left = manager.wait_tasks(Duration::from_secs(2));
    if left > 0 {
        log!("pageserver main worker: {left} tasks still running at exit");
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
}

/// The page service's authentication from `pageserver.auth` and
/// `pageserver.auth_public_keys` (whose keys are read here, on the
/// PostgreSQL thread), and a few words on it for the worker's activity.
/// Key files that hold no usable key get a WARNING naming them (never their
/// content); JWT authentication without any key gets a WARNING that every
/// connection will be refused.
fn load_auth_config() -> (AuthConfig, String) {
    if crate::guc::AUTH.get() == crate::guc::AuthMethod::Trust {
        return (AuthConfig::Trust, "auth trust".into());
    }
    let path = crate::guc::string(&crate::guc::AUTH_PUBLIC_KEYS);
    let keys = match auth::load_keys(std::path::Path::new(&path)) {
        Ok(loaded) => {
            for skipped in &loaded.skipped {
                warning!("{skipped}");
            }
            loaded.keys
        }
        Err(e) => {
            warning!("{e}");
            auth::KeySet::default()
        }
    };
    let summary = if keys.is_empty() {
        warning!(
            "pageserver.auth is jwt but no Ed25519 public key was loaded from pageserver.auth_public_keys: \
             the page service refuses every connection"
        );
        "auth jwt, no public key: every connection refused".to_string()
    } else {
        log!("page service: JWT authentication with {} public key(s) from pageserver.auth_public_keys", keys.len());
        format!("auth jwt, {} public key(s)", keys.len())
    };
    (AuthConfig::Jwt(std::sync::Arc::new(keys)), summary)
}

/// The page service's TLS policy from `pageserver.ssl_cert_file`,
/// `ssl_key_file` and `ssl_required`, the files read now. If they cannot be
/// used, a WARNING names the problem and, on a reload (`previous` given),
/// the previous certificate stays in use, as PostgreSQL keeps its own.
fn tls_policy(previous: Option<TlsPolicy>) -> TlsPolicy {
    let cert = crate::guc::string(&crate::guc::SSL_CERT_FILE);
    let key = crate::guc::string(&crate::guc::SSL_KEY_FILE);
    let required = crate::guc::SSL_REQUIRED.get();
    let config = match page_service::tls::load_server_config(&cert, &key) {
        Ok(config) => {
            if config.is_some() {
                log!("page service TLS certificate loaded from \"{cert}\"");
            }
            config
        }
        Err(e) => match previous {
            Some(previous) => {
                warning!("page service TLS configuration not reloaded: {e}; the previous one stays in use");
                previous.config
            }
            None => {
                warning!("page service TLS is off: {e}");
                None
            }
        },
    };
    if required && config.is_none() {
        warning!("pageserver.ssl_required is on but the page service has no TLS certificate: every connection is refused");
    }
    TlsPolicy { config, required }
}

/// The current value of a PostgreSQL setting, as SHOW prints it.
fn setting(name: &str) -> String {
    let c_name = std::ffi::CString::new(name).expect("setting names have no NUL");
    // SAFETY: called on the worker's main thread; GetConfigOption returns a
    // pointer into GUC memory (or NULL), valid until the setting changes,
    // and we copy it at once.
    unsafe {
        let value = pg_sys::GetConfigOption(c_name.as_ptr(), true, false);
        if value.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(value).to_string_lossy().into_owned()
        }
    }
}
