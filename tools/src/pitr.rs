//! The set-up the point-in-time benchmarks share: a primary archiving its
//! WAL with pgBackRest (a full backup, then about a chosen amount of WAL),
//! the point X they race to (a marker row committed just before it, a
//! table created just after), and pgBackRest's own race to X.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use pageserver_harness::{as_postgres, PgCluster};
use storage::lsn::Lsn;

use crate::bench_copy::{race, run_as_postgres};
use crate::bench_host::{first_text, primary_lsn};

pub const STANZA: &str = "bench";
pub const MARKER: i32 = 42;

/// pgBackRest with its own configuration, repository and spool directory.
pub struct PgBackRest {
    dir: tempfile::TempDir,
}

impl PgBackRest {
    pub fn new() -> Result<PgBackRest> {
        let version = Command::new("pgbackrest").arg("version").output();
        match version {
            Ok(out) if out.status.success() => eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim()),
            _ => bail!("pgbackrest is not installed: scripts/bench.sh installs it (apt-get install pgbackrest)"),
        }
        let dir = tempfile::Builder::new().prefix("pitr-bench-").tempdir()?;
        for sub in ["repo", "spool", "log", "lock"] {
            std::fs::create_dir(dir.path().join(sub))?;
        }
        let this = PgBackRest { dir };
        as_postgres::chown_to_postgres(this.dir.path())?;
        for sub in ["repo", "spool", "log", "lock"] {
            as_postgres::chown_to_postgres(&this.dir.path().join(sub))?;
        }
        Ok(this)
    }

    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("pgbackrest.conf")
    }

    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    pub fn archive_command(&self) -> String {
        format!("pgbackrest --config={} --stanza={STANZA} archive-push %p", self.conf().display())
    }

    pub fn write_conf(&self, primary: &PgCluster) -> Result<()> {
        let d = self.dir.path().display();
        let text = format!(
            "[global]\nrepo1-path={d}/repo\nrepo1-retention-full=1\ncompress-type=zst\nprocess-max=2\narchive-async=y\n\
             spool-path={d}/spool\nlog-path={d}/log\nlock-path={d}/lock\nlog-level-console=warn\nlog-level-file=off\n\
             start-fast=y\n\n[{STANZA}]\npg1-path={}\npg1-port={}\npg1-socket-path={}\n",
            primary.data_dir().display(),
            primary.port(),
            primary.socket_dir().display(),
        );
        std::fs::write(self.conf(), text)?;
        as_postgres::chown_to_postgres(&self.conf())
    }

    pub fn run(&self, args: &[&str]) -> Result<Output> {
        let conf = format!("--config={}", self.conf().display());
        let stanza = format!("--stanza={STANZA}");
        let mut all = vec![conf.as_str(), stanza.as_str()];
        all.extend_from_slice(args);
        run_as_postgres("pgbackrest", &all)
    }

    /// Seconds from nothing to the first query at `x`: `pgbackrest restore
    /// --type=lsn --target=x --target-action=promote` into an empty
    /// directory, a stock server started on it, replay to `x`.
    pub fn race_to(&self, x: Lsn) -> Result<f64> {
        let conf = self.conf();
        race(
            "pgbackrest restore + replay",
            |dir| {
                as_postgres::chown_to_postgres(dir)?;
                let target = format!("--target={x}");
                let pg1 = format!("--pg1-path={}", dir.display());
                let config = format!("--config={}", conf.display());
                let stanza = format!("--stanza={STANZA}");
                run_as_postgres("pgbackrest", &[&config, &stanza, &pg1, "--type=lsn", &target, "--target-action=promote", "restore"])
                    .map(|_| ())
            },
            marker_at_x,
        )
    }
}

/// The copy holds the database as of X: the marker row committed before X
/// is there and the table created after X is not.
pub fn marker_at_x(client: &mut postgres::Client) -> Result<()> {
    let marker = first_text(client, "SELECT v FROM pitr_marker")?;
    ensure!(marker.as_deref() == Some(&MARKER.to_string()), "pitr_marker holds {marker:?}, not {MARKER}");
    let later = first_text(client, "SELECT to_regclass('pitr_after') IS NULL")?;
    ensure!(later.as_deref() == Some("t"), "pitr_after exists: the copy is past X");
    Ok(())
}

/// The point the races go to, and the end of the WAL written.
pub struct Window {
    pub x: Lsn,
    pub end: Lsn,
}

/// pgbench until `wal_bytes` of WAL lie after `backup_start`, then the
/// marker row, X, a little more WAL (and the table that must not exist at
/// X), a WAL switch, and a wait until the archive has it all.
pub fn write_window(primary: &PgCluster, pc: &mut postgres::Client, backup_start: Lsn, wal_bytes: u64) -> Result<Window> {
    let started = Instant::now();
    loop {
        let lsn = primary_lsn(pc)?;
        let written = lsn.0 - backup_start.0;
        if written >= wal_bytes {
            eprintln!("pgbench: {} MiB of WAL after the backup in {:.1} s", written >> 20, started.elapsed().as_secs_f64());
            break;
        }
        primary.run_as_postgres_checked("pgbench", &["-c", "4", "-j", "2", "-T", "10", "-n", "postgres"])?;
    }
    primary.sql(&format!("CREATE TABLE pitr_marker (v int); INSERT INTO pitr_marker VALUES ({MARKER})"))?;
    let x = primary_lsn(pc)?;
    primary.run_as_postgres_checked("pgbench", &["-c", "2", "-j", "2", "-T", "2", "-n", "postgres"])?;
    primary.sql("CREATE TABLE pitr_after (v int)")?;
    let end = primary_lsn(pc)?;
    let end_segment = first_text(pc, &format!("SELECT pg_walfile_name('{end}')"))?.context("no segment")?;
    primary.sql("SELECT pg_switch_wal()")?;
    primary.wait_for("the WAL up to the end to be archived", Duration::from_secs(300), || {
        let archived = primary.sql_one("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").ok()??;
        (archived.len() >= 24 && archived[..24] >= *end_segment).then_some(())
    })?;
    Ok(Window { x, end })
}
