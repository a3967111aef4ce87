//! pageserver_ext: a page server in the style of Neon's, as a PostgreSQL 15
//! extension. This crate is the thin PostgreSQL glue: `_PG_init`, settings,
//! shared-memory hooks, background-worker entry points and the SQL functions
//! of schema `pageserver`. The engine lives in the pure crates.

use pgrx::prelude::*;

mod guc;
mod inspect_sql;
mod mgmt_sql;
mod redo_sql;
mod shmem;
mod sql;
mod workers;

// The project's PostgreSQL 15 constants (`pg_constants`, used by the pure
// crates) are the ones of the PostgreSQL this extension is built against.
const _: () = {
    use pg_constants as c;
    use pgrx::pg_sys as s;
    assert!(c::PG_MAJORVERSION_NUM == s::PG_MAJORVERSION_NUM);
    assert!(c::BLCKSZ == s::BLCKSZ as usize);
    assert!(c::XLOG_BLCKSZ == s::XLOG_BLCKSZ as usize);
    assert!(c::WAL_SEGMENT_SIZE == s::DEFAULT_XLOG_SEG_SIZE as u64);
    assert!(c::RELSEG_SIZE == s::RELSEG_SIZE);
    assert!(c::XLOG_PAGE_MAGIC as u32 == s::XLOG_PAGE_MAGIC);
    assert!(c::SIZE_OF_PAGE_HEADER == std::mem::offset_of!(s::PageHeaderData, pd_linp));
    assert!(c::DEFAULTTABLESPACE_OID == s::DEFAULTTABLESPACE_OID.to_u32());
    assert!(c::GLOBALTABLESPACE_OID == s::GLOBALTABLESPACE_OID.to_u32());
    assert!(c::MAIN_FORKNUM as i32 == s::ForkNumber::MAIN_FORKNUM);
    assert!(c::FSM_FORKNUM as i32 == s::ForkNumber::FSM_FORKNUM);
    assert!(c::VISIBILITYMAP_FORKNUM as i32 == s::ForkNumber::VISIBILITYMAP_FORKNUM);
    assert!(c::INIT_FORKNUM as i32 == s::ForkNumber::INIT_FORKNUM);
};

::pgrx::pg_module_magic!(name, version);

// Comments on every function, and who may call what: the last statements
// of CREATE EXTENSION.
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
#[allow(non_snake_case)]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: a plain global that PostgreSQL sets while loading preload libraries.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        error!(
            "pageserver_ext must be loaded at server start: add pageserver_ext to \
             shared_preload_libraries in postgresql.conf and restart PostgreSQL"
        );
    }
    guc::define();
    check_remote_storage();
    shmem::install_hooks();
    workers::register_all();
}

/// Refuses to start with a malformed `pageserver.remote_storage` (or
/// options): the message names the setting and what is wrong, and never
/// shows an option's value.
fn check_remote_storage() {
    let url = guc::string(&guc::REMOTE_STORAGE);
    if url.is_empty() {
        return;
    }
    if let Err(e) = remote::RemoteStorageConfig::parse(&url, &guc::string(&guc::REMOTE_STORAGE_OPTIONS)) {
        error!("pageserver_ext: {e}");
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;
    use std::time::Duration;

    fn status_rows() -> Vec<(String, i32, String, i64)> {
        Spi::connect(|client| {
            client
                .select(
                    "SELECT kind, number, state, extract(epoch from last_heartbeat)::float8 * 1e6 \
                     FROM pageserver.status() ORDER BY kind, number",
                    None,
                    &[],
                )
                .unwrap()
                .map(|row| {
                    (
                        row.get::<String>(1).unwrap().unwrap(),
                        row.get::<i32>(2).unwrap().unwrap(),
                        row.get::<String>(3).unwrap().unwrap(),
                        row.get::<f64>(4).unwrap().unwrap() as i64,
                    )
                })
                .collect()
        })
    }

    /// Waits until every worker reports "running" (they start with the host).
    fn wait_all_running() -> Vec<(String, i32, String, i64)> {
        for _ in 0..100 {
            let rows = status_rows();
            if rows.iter().all(|r| r.2 == "running") {
                return rows;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("workers not running after 10s: {:?}", status_rows());
    }

    #[pg_test]
    fn status_lists_every_worker_running_with_advancing_heartbeats() {
        let before = wait_all_running();
        let kinds: Vec<(&str, i32)> = before.iter().map(|r| (r.0.as_str(), r.1)).collect();
        assert_eq!(kinds, vec![("backup", 0), ("layers", 0), ("main", 0), ("redo", 0), ("redo", 1)]);
        std::thread::sleep(Duration::from_millis(2500));
        let after = wait_all_running();
        for (b, a) in before.iter().zip(&after) {
            assert!(a.3 > b.3, "heartbeat of {} {} did not advance: {} -> {}", a.0, a.1, b.3, a.3);
        }
    }

    #[pg_test]
    fn status_says_what_each_worker_is_doing() {
        wait_all_running();
        let activity = |kind: &str| {
            Spi::get_one::<String>(&format!("SELECT activity FROM pageserver.status() WHERE kind = '{kind}' AND number = 0"))
                .unwrap()
                .unwrap()
        };
        let main = activity("main");
        assert!(main.starts_with("serving 0 tenants; page service on 127.0.0.1:0") && main.ends_with("(auth trust)"), "{main}");
        assert_eq!(activity("redo"), "serving redo requests");
        let layers = activity("layers");
        assert!(layers.starts_with("idle: next pass in ") && layers.ends_with(" s (last pass: none yet)"), "{layers}");
        assert!(activity("backup").starts_with("idle: "), "{}", activity("backup"));
    }

    #[pg_test(error = "parameter \"pageserver.redo_workers\" cannot be changed without restarting the server")]
    fn redo_workers_cannot_be_set_without_restart() {
        Spi::run("SET pageserver.redo_workers = 3").unwrap();
    }

    #[pg_test]
    fn settings_have_their_documented_defaults() {
        let get = |name: &str| Spi::get_one::<String>(&format!("SELECT current_setting('{name}')")).unwrap().unwrap();
        assert_eq!(get("pageserver.redo_workers"), "2");
        assert_eq!(get("pageserver.remote_storage"), "");
        assert_eq!(get("pageserver.compaction_period"), "20s");
        assert_eq!(get("pageserver.image_layer_distance"), "1GB");
        assert_eq!(get("pageserver.layers_fault"), "");
        assert_eq!(get("pageserver.auth"), "trust");
        assert_eq!(get("pageserver.auth_public_keys"), "");
        assert_eq!(get("pageserver.ssl_cert_file"), "");
        assert_eq!(get("pageserver.ssl_key_file"), "");
        assert_eq!(get("pageserver.ssl_required"), "off");
    }
}

/// Required by `cargo pgrx test`: the managed host preloads the library.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        // Port 0: the managed test host must not collide with anything on 6400.
        vec!["shared_preload_libraries = 'pageserver_ext'", "pageserver.listen_addr = '127.0.0.1:0'"]
    }
}
