//! Tests of the harness against real PostgreSQL 15 servers (stock only: the
//! extension is not needed). Each test starts its own primary.

use std::path::PathBuf;
use std::time::Duration;

use pageserver_harness::process::{pid_alive, processes_in_dir};
use pageserver_harness::{pg_bin, ClusterConfig, PgCluster};

fn keep_clusters() -> bool {
    std::env::var("PS_KEEP_CLUSTERS").map(|v| v == "1").unwrap_or(false)
}

fn one(rows: Vec<Vec<Option<String>>>) -> String {
    assert_eq!(rows.len(), 1, "expected one row: {rows:?}");
    assert_eq!(rows[0].len(), 1, "expected one column: {rows:?}");
    rows[0][0].clone().expect("non-NULL")
}

#[test]
fn primary_select_and_settings() {
    let pg = PgCluster::start_primary(&[("work_mem", "8MB"), ("application_name", "it's quoted")]).unwrap();
    assert_eq!(pg.sql("SELECT 1").unwrap(), vec![vec![Some("1".to_string())]]);
    assert_eq!(one(pg.sql("SHOW wal_level").unwrap()), "replica");
    assert_eq!(one(pg.sql("SHOW max_wal_senders").unwrap()), "10");
    assert_eq!(one(pg.sql("SHOW max_replication_slots").unwrap()), "10");
    assert_eq!(one(pg.sql("SHOW fsync").unwrap()), "off");
    assert_eq!(one(pg.sql("SHOW work_mem").unwrap()), "8MB");
    assert_eq!(one(pg.sql("SHOW listen_addresses").unwrap()), "127.0.0.1");
    assert_eq!(one(pg.sql("SHOW port").unwrap()), pg.port().to_string());
    assert_eq!(one(pg.sql("SHOW data_directory").unwrap()), pg.data_dir().display().to_string());
    assert_eq!(one(pg.sql("SHOW unix_socket_directories").unwrap()), pg.socket_dir().display().to_string());
    assert!(pg.socket_dir().join(format!(".s.PGSQL.{}", pg.port())).exists());
    assert_eq!(pg.listener_addr(), None);

    // rows as text, NULLs, several statements, another database
    let rows = pg.sql("SELECT 1 AS a, NULL::text AS b UNION ALL SELECT 2, 'x'; SELECT 'y'").unwrap();
    assert_eq!(rows, vec![vec![Some("1".into()), None], vec![Some("2".into()), Some("x".into())], vec![Some("y".into())]]);
    assert_eq!(one(pg.sql_db("template1", "SELECT current_database()").unwrap()), "template1");
    let mut client = pg.client("postgres").unwrap();
    let n: i64 = client.query_one("SELECT $1::int8 + 1", &[&41i64]).unwrap().get(0);
    assert_eq!(n, 42);

    // SQL errors say what failed, with the server's message
    let err = format!("{:#}", pg.sql("SELECT * FROM no_such_table").unwrap_err());
    assert!(err.contains("no_such_table"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(err.contains("server.log"), "{err}");
}

#[test]
fn replication_connection_and_tools() {
    let pg = PgCluster::start_primary(&[]).unwrap();
    let conn = format!("{} replication=true", pg.connstr("postgres"));
    let out = pg.run_as_postgres_checked("psql", &["-X", "-At", "-d", &conn, "-c", "IDENTIFY_SYSTEM"]).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // systemid|timeline|xlogpos|dbname
    let fields: Vec<&str> = stdout.trim().split('|').collect();
    assert_eq!(fields.len(), 4, "{stdout}");
    assert_eq!(fields[1], "1", "{stdout}");
    assert!(fields[2].contains('/'), "{stdout}");
    let sysid = one(pg.sql("SELECT system_identifier::text FROM pg_control_system()").unwrap());
    assert_eq!(fields[0], sysid);

    // a physical slot through the replication protocol
    pg.run_as_postgres_checked("psql", &["-X", "-d", &conn, "-c", "CREATE_REPLICATION_SLOT harness_slot PHYSICAL RESERVE_WAL"]).unwrap();
    assert_eq!(one(pg.sql("SELECT slot_name FROM pg_replication_slots").unwrap()), "harness_slot");

    // PGHOST/PGPORT are set: pgbench finds the server without arguments
    pg.run_as_postgres_checked("pgbench", &["-i", "-s", "1", "-q"]).unwrap();
    let out = pg.run_as_postgres_checked("pgbench", &["-t", "20", "-c", "2", "-n"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("number of transactions actually processed"));
    // PGDATA is set too
    let out = pg.run_as_postgres_checked("pg_controldata", &[]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&sysid));
    // unchecked variant returns failures
    let out = pg.run_as_postgres("psql", &["-X", "-c", "SELECT syntax error here"]).unwrap();
    assert!(!out.status.success());
    let err = format!("{:#}", pg.run_as_postgres_checked("psql", &["-X", "-c", "SELEC"]).unwrap_err());
    assert!(err.contains("syntax error"), "{err}");
}

#[test]
fn kill_postmaster_then_start_again() {
    let mut pg = PgCluster::start_primary(&[]).unwrap();
    pg.sql("CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 1000)").unwrap();
    // a second client keeps a backend around
    let _idle = pg.client("postgres").unwrap();
    let old_pid = pg.postmaster_pid().unwrap();
    assert!(pid_alive(old_pid));
    assert!(pg.processes().contains(&old_pid));
    assert!(pg.processes().len() > 2, "{:?}", pg.processes());

    pg.kill_postmaster().unwrap();
    assert!(!pid_alive(old_pid));
    assert!(pg.processes().is_empty(), "{:?}", pg.processes());
    assert!(pg.sql("SELECT 1").is_err());
    assert!(pg.kill_postmaster().is_err(), "killing a dead postmaster should fail");

    pg.start_again().unwrap();
    let new_pid = pg.postmaster_pid().unwrap();
    assert_ne!(new_pid, old_pid);
    assert_eq!(one(pg.sql("SELECT count(*) FROM t").unwrap()), "1000");
    let log = pg.log();
    assert!(log.contains("not properly shut down") || log.contains("was interrupted"), "no crash recovery in log:\n{log}");

    // kill only the postmaster: start_again copes with the orphans
    pg.kill_postmaster_only().unwrap();
    pg.start_again().unwrap();
    assert_eq!(one(pg.sql("SELECT count(*) FROM t").unwrap()), "1000");
}

#[test]
fn stop_is_idempotent_and_start_again_after_stop() {
    let mut pg = PgCluster::start_primary(&[]).unwrap();
    let port = pg.port();
    pg.sql("CREATE TABLE u AS SELECT 7 AS v").unwrap();
    pg.stop().unwrap();
    assert!(pg.processes().is_empty());
    assert!(!pg.postmaster_running());
    pg.stop().unwrap();
    assert!(pg.log().contains("database system is shut down"));
    pg.start_again().unwrap();
    pg.start_again().unwrap(); // no-op while running
    assert_eq!(pg.port(), port);
    assert_eq!(one(pg.sql("SELECT v FROM u").unwrap()), "7");

    // wait_for: success after some polls, and a timeout naming what
    let mut n = 0;
    let got = pg
        .wait_for("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            (n >= 3).then_some(n)
        })
        .unwrap();
    assert_eq!(got, 3);
    let err = pg.wait_for("the impossible", Duration::from_millis(100), || None::<()>).unwrap_err().to_string();
    assert!(err.contains("waiting for the impossible"), "{err}");
    assert!(err.contains("server.log"), "{err}");
}

#[test]
fn drop_removes_directory_and_processes() {
    let pg = PgCluster::start(ClusterConfig::primary(&[("shared_buffers", "16MB")]).initdb_arg("--data-checksums")).unwrap();
    assert_eq!(one(pg.sql("SHOW data_checksums").unwrap()), "on");
    let _client = pg.client("postgres").unwrap(); // a backend is alive at drop time
    let root: PathBuf = pg.root_dir().to_path_buf();
    let data: PathBuf = pg.data_dir().to_path_buf();
    let pid = pg.postmaster_pid().unwrap();
    let procs = pg.processes();
    assert!(procs.len() >= 4, "postmaster + auxiliary processes + backend: {procs:?}");
    assert!(root.starts_with("/tmp"));
    drop(pg);
    assert!(!pid_alive(pid), "postmaster {pid} survived drop");
    for p in procs {
        assert!(!pid_alive(p), "process {p} survived drop");
    }
    if keep_clusters() {
        assert!(data.exists());
    } else {
        assert!(!root.exists(), "{} not removed", root.display());
    }
    assert!(processes_in_dir(&data).is_empty());
}

#[test]
fn failed_start_reports_log_and_cleans_up() {
    let before: Vec<PathBuf> = harness_dirs();
    let err = PgCluster::start_primary(&[("shared_buffers", "lots")]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("starting PostgreSQL"), "{msg}");
    assert!(msg.contains("invalid value for parameter \"shared_buffers\""), "{msg}");
    if !keep_clusters() {
        // its directory is gone (other tests may create theirs meanwhile)
        let dir = msg
            .split("(cluster ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .map(PathBuf::from)
            .expect("message names the cluster directory");
        assert!(!dir.exists(), "{} left behind", dir.display());
        assert!(!before.contains(&dir));
    }
}

fn harness_dirs() -> Vec<PathBuf> {
    std::fs::read_dir("/tmp")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("ps-harness-")))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn binaries_are_there() {
    for name in ["initdb", "pg_ctl", "postgres", "psql", "pgbench", "pg_waldump"] {
        assert!(pg_bin(name).is_file(), "{} missing", pg_bin(name).display());
    }
}

#[test]
fn panicking_test_still_cleans_up() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let pg = PgCluster::start_primary(&[]).unwrap();
        tx.send((pg.root_dir().to_path_buf(), pg.data_dir().to_path_buf(), pg.processes())).unwrap();
        panic!("deliberate test failure");
    })
    .join();
    assert!(result.is_err());
    let (root, data, procs) = rx.recv().unwrap();
    assert!(!procs.is_empty());
    for p in procs {
        assert!(!pid_alive(p), "process {p} survived the panic");
    }
    assert!(processes_in_dir(&data).is_empty());
    if !keep_clusters() {
        assert!(!root.exists(), "{} not removed", root.display());
    }
}
