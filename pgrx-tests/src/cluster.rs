//! [`PgCluster`]: one throwaway PostgreSQL 15 cluster and its whole life.
//!
//! This module owns a cluster's directory layout, its configuration
//! ([`ClusterConfig`] and how it is rendered into `postgresql.conf`), start-up
//! (with retries when the port turns out to be taken), restarts, crashes
//! (SIGKILL), SQL access, and clean-up on drop.
//!
//! Layout of one cluster, all owned by the `postgres` OS user:
//!
//! ```text
//! /tmp/ps-harness-<pid>-<n>-<nanos>/   0700; the socket directory
//!     data/                            0700; the data directory (initdb)
//!     server.log                       pg_ctl -l
//! ```
//!
//! Settings are appended to the `postgresql.conf` written by initdb, so they
//! win over its defaults; `listen_addresses`, `port` and
//! `unix_socket_directories` are always the harness's own and come last.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};

use crate::as_postgres;
use crate::process::{self, pid_alive};
use crate::{free_port, pg_bin, run_checked};

/// The database superuser every cluster is created with.
pub const SUPERUSER: &str = "postgres";

/// Environment variable: when `1`, dropped clusters keep their directory.
pub const KEEP_ENV: &str = "PS_KEEP_CLUSTERS";

/// How many times start-up picks a new port after "could not bind".
const START_ATTEMPTS: usize = 5;

/// Lines of the server log quoted in error messages.
const LOG_TAIL_LINES: usize = 40;

/// What to create. Build one with [`ClusterConfig::primary`],
/// [`ClusterConfig::host`], or `ClusterConfig { .., ..Default::default() }`.
///
/// Every cluster gets `fsync = off` (override it in `settings`), trust
/// authentication for local and loopback connections including
/// `replication`, superuser `postgres`, encoding UTF8 and locale C.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `postgresql.conf` settings, in order (later wins). Values are quoted
    /// for you unless already quoted: `("shared_buffers", "16MB")`,
    /// `("search_path", "'a', 'b'")`.
    pub settings: Vec<(String, String)>,
    /// Load the extension: `shared_preload_libraries` gets `pageserver_ext`
    /// (merged with any given), and `pageserver.listen_addr` is set to
    /// `127.0.0.1:<free port>` unless given. Start-up fails early, naming
    /// `cargo pgrx install`, if `pageserver_ext.so` is not installed.
    pub preload_pageserver: bool,
    /// Extra `initdb` arguments, e.g. `--data-checksums`, after the
    /// harness's own (`-U postgres -A trust -E UTF8 --locale=C --no-sync`).
    pub initdb_args: Vec<String>,
    /// Environment variables of the server (`PGPASSFILE`, ...).
    pub env: Vec<(String, String)>,
    /// `pg_hba.conf` lines put in front of the harness's own and initdb's
    /// (the first match wins), e.g. `hostssl all all 127.0.0.1/32 trust`
    /// and `hostnossl all all 0.0.0.0/0 reject` for a TLS-only server.
    pub hba: Vec<String>,
}

fn owned(settings: &[(&str, &str)]) -> Vec<(String, String)> {
    settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl ClusterConfig {
    /// A replication source: `wal_level = replica`, `max_wal_senders = 10`,
    /// `max_replication_slots = 10`, then `settings`.
    pub fn primary(settings: &[(&str, &str)]) -> ClusterConfig {
        let mut all = owned(&[("wal_level", "replica"), ("max_wal_senders", "10"), ("max_replication_slots", "10")]);
        all.extend(owned(settings));
        ClusterConfig { settings: all, ..Default::default() }
    }

    /// A page-server host: `settings` plus the extension preloaded (see
    /// [`ClusterConfig::preload_pageserver`]).
    pub fn host(settings: &[(&str, &str)]) -> ClusterConfig {
        ClusterConfig { settings: owned(settings), preload_pageserver: true, ..Default::default() }
    }

    /// Adds an environment variable of the server (builder style).
    pub fn env(mut self, name: &str, value: &str) -> ClusterConfig {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Appends one setting (builder style).
    pub fn setting(mut self, name: &str, value: &str) -> ClusterConfig {
        self.settings.push((name.to_string(), value.to_string()));
        self
    }

    /// Appends one `pg_hba.conf` line (builder style); see [`ClusterConfig::hba`].
    pub fn hba_line(mut self, line: &str) -> ClusterConfig {
        self.hba.push(line.to_string());
        self
    }

    /// Appends one initdb argument (builder style), e.g. `--data-checksums`.
    pub fn initdb_arg(mut self, arg: &str) -> ClusterConfig {
        self.initdb_args.push(arg.to_string());
        self
    }

    /// The settings a cluster started from this config gets, before the
    /// harness's listen/port/socket lines: `fsync = off`, `settings`, and for
    /// `preload_pageserver` the merged `shared_preload_libraries` and a
    /// `pageserver.listen_addr` (a fresh free port each call unless given).
    /// Values are unquoted here; [`render_settings`] quotes them.
    pub fn resolved_settings(&self) -> Vec<(String, String)> {
        let mut out = owned(&[("fsync", "off")]);
        out.extend(self.settings.iter().cloned());
        if self.preload_pageserver {
            let given = last_value(&out, "shared_preload_libraries").map(|v| unquote(&v)).unwrap_or_default();
            let mut libs: Vec<String> =
                given.split(',').map(|s| s.trim().trim_matches('"').to_string()).filter(|s| !s.is_empty()).collect();
            if !libs.iter().any(|l| l == "pageserver_ext") {
                libs.insert(0, "pageserver_ext".to_string());
            }
            out.retain(|(k, _)| !k.eq_ignore_ascii_case("shared_preload_libraries"));
            out.push(("shared_preload_libraries".to_string(), libs.join(",")));
            if last_value(&out, "pageserver.listen_addr").is_none() {
                out.push(("pageserver.listen_addr".to_string(), format!("127.0.0.1:{}", free_port())));
            }
        }
        out
    }
}

/// The last value given for `name` (case-insensitive), as written.
fn last_value(settings: &[(String, String)], name: &str) -> Option<String> {
    settings.iter().rev().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
}

/// Removes one level of single quotes (and their `''` escapes) if present.
fn unquote(v: &str) -> String {
    let t = v.trim();
    if t.len() >= 2 && t.starts_with('\'') && t.ends_with('\'') {
        t[1..t.len() - 1].replace("''", "'")
    } else {
        t.to_string()
    }
}

/// A `postgresql.conf` value: kept as is if already single-quoted,
/// otherwise quoted with `'` and `\` escaped. PostgreSQL accepts quoted
/// values for every type (`'10'`, `'on'`, `'16MB'`).
pub fn quote_conf_value(value: &str) -> String {
    let t = value.trim();
    if t.len() >= 2 && t.starts_with('\'') && t.ends_with('\'') {
        return t.to_string();
    }
    format!("'{}'", t.replace('\\', "\\\\").replace('\'', "''"))
}

/// The block the harness appends to initdb's `postgresql.conf`: `settings`
/// in order, then `listen_addresses = '127.0.0.1'`, `port` and
/// `unix_socket_directories`, which always win.
pub fn render_settings(settings: &[(String, String)], port: u16, socket_dir: &Path) -> String {
    let mut s = String::from("\n# ---- added by pageserver_harness ----\n");
    for (k, v) in settings {
        let _ = writeln!(s, "{k} = {}", quote_conf_value(v));
    }
    let _ = writeln!(s, "listen_addresses = '127.0.0.1'");
    let _ = writeln!(s, "port = {port}");
    let _ = writeln!(s, "unix_socket_directories = {}", quote_conf_value(&socket_dir.display().to_string()));
    s
}

/// The `pg_hba.conf` line every cluster gets (initdb's trust defaults
/// already allow this; stated explicitly so replication never depends on
/// initdb's template).
pub const REPLICATION_HBA_LINE: &str = "host replication all 127.0.0.1/32 trust";

/// `$(pg_config --pkglibdir)` of the PostgreSQL 15 installation.
pub fn pkglibdir() -> anyhow::Result<PathBuf> {
    let out = run_checked(Command::new(pg_bin("pg_config")).arg("--pkglibdir"), "asking pg_config for the library directory")?;
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Fails with instructions unless `pageserver_ext.so` is in `pkglibdir`.
pub fn check_pageserver_installed_in(pkglibdir: &Path) -> anyhow::Result<()> {
    let so = pkglibdir.join("pageserver_ext.so");
    if !so.is_file() {
        bail!(
            "starting a page-server host: {} is missing. Build and install the extension first: \
             `cd pageserver_ext && cargo pgrx install --pg-config {}` (tests that only need stock \
             PostgreSQL should use PgCluster::start_primary)",
            so.display(),
            pg_bin("pg_config").display()
        );
    }
    Ok(())
}

/// Fails with instructions unless the extension is installed (see
/// [`check_pageserver_installed_in`]).
pub fn check_pageserver_installed() -> anyhow::Result<()> {
    check_pageserver_installed_in(&pkglibdir()?)
}

fn new_root_dir() -> anyhow::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    for _ in 0..100 {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/ps-harness-{}-{n}-{nanos:x}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                let setup = || -> anyhow::Result<()> {
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
                    as_postgres::chown_to_postgres(&dir)?;
                    Ok(())
                };
                if let Err(e) = setup() {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e.context(format!("preparing cluster directory {}", dir.display())));
                }
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(anyhow!(e).context(format!("creating {}", dir.display()))),
        }
    }
    bail!("could not create a fresh cluster directory under /tmp")
}

/// [`as_postgres::chown_to_postgres`] on `dir` and everything below it
/// (symbolic links are left alone).
fn chown_tree_to_postgres(dir: &Path) -> anyhow::Result<()> {
    as_postgres::chown_to_postgres(dir)?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            chown_tree_to_postgres(&entry.path())?;
        } else if !kind.is_symlink() {
            as_postgres::chown_to_postgres(&entry.path())?;
        }
    }
    Ok(())
}

fn quote_conninfo(v: &str) -> String {
    if !v.is_empty() && !v.contains([' ', '\'', '\\', '\t', '\n']) {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// A throwaway PostgreSQL 15 cluster under `/tmp`, started on loopback.
///
/// Dropping it stops the server (`pg_ctl stop -m immediate`), SIGKILLs any
/// process still running in its data directory, and removes the directory
/// unless `PS_KEEP_CLUSTERS=1`. Drop never panics.
#[derive(Debug)]
pub struct PgCluster {
    root: PathBuf,
    data: PathBuf,
    log_path: PathBuf,
    port: u16,
    settings: Vec<(String, String)>,
    /// The server's extra environment ([`ClusterConfig::env`]).
    env: Vec<(String, String)>,
    /// initdb's postgresql.conf, which each start-up re-renders on top of.
    base_conf: String,
}

impl PgCluster {
    /// A stock primary ([`ClusterConfig::primary`]): `wal_level = replica`,
    /// 10 WAL senders and slots, replication trust from 127.0.0.1,
    /// `fsync = off`, plus `settings`.
    pub fn start_primary(settings: &[(&str, &str)]) -> anyhow::Result<PgCluster> {
        PgCluster::start(ClusterConfig::primary(settings))
    }

    /// A page-server host ([`ClusterConfig::host`]): the extension in
    /// `shared_preload_libraries`, `pageserver.listen_addr =
    /// '127.0.0.1:<free port>'`, plus `settings`. Fails with a message naming
    /// `cargo pgrx install` if the extension is not installed.
    pub fn start_host(settings: &[(&str, &str)]) -> anyhow::Result<PgCluster> {
        PgCluster::start(ClusterConfig::host(settings))
    }

    /// initdb a fresh cluster from `config` and start it (`pg_ctl start -w
    /// -t 60`), retrying with another port if the chosen one is taken.
    pub fn start(config: ClusterConfig) -> anyhow::Result<PgCluster> {
        PgCluster::start_impl(config, None)
    }

    /// Starts a cluster on a data directory that `fill` writes instead of
    /// initdb (a restored backup, a prepared copy of another cluster).
    ///
    /// `fill` gets the empty `data/` directory (mode 0700). Afterwards the
    /// harness makes everything under it owned by the cluster owner, sets
    /// `data/` back to 0700, appends its settings (`config.settings`, then
    /// listen address, port and socket directory) to the `postgresql.conf`
    /// found there (created if missing; `pg_hba.conf` is used as filled) and
    /// starts the server like [`PgCluster::start`]. `config.initdb_args`
    /// are not used. A failed start-up returns an error with the log tail;
    /// the directory is removed on drop as for any cluster.
    pub fn start_on_data_dir(config: ClusterConfig, fill: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<PgCluster> {
        let mut cluster = PgCluster::in_fresh_root(&config, None)?;
        let data = cluster.data.clone();
        std::fs::create_dir(&data).with_context(|| format!("creating {}", data.display()))?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
        fill(&data).with_context(|| format!("filling data directory {}", data.display()))?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
        chown_tree_to_postgres(&data)?;
        let conf = data.join("postgresql.conf");
        cluster.base_conf = match std::fs::read_to_string(&conf) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(anyhow!(e).context(format!("reading {}", conf.display()))),
        };
        cluster.write_conf()?;
        as_postgres::chown_to_postgres(&conf)?;
        cluster.start_server()?;
        Ok(cluster)
    }

    fn start_impl(config: ClusterConfig, first_port: Option<u16>) -> anyhow::Result<PgCluster> {
        let mut cluster = PgCluster::in_fresh_root(&config, first_port)?;
        cluster.initdb(&config)?;
        cluster.start_server()?;
        Ok(cluster)
    }

    /// A cluster (not started, no data directory yet) in a new root
    /// directory; from here on, Drop cleans up whatever happens.
    fn in_fresh_root(config: &ClusterConfig, port: Option<u16>) -> anyhow::Result<PgCluster> {
        if config.preload_pageserver {
            check_pageserver_installed()?;
        }
        let root = new_root_dir()?;
        Ok(PgCluster {
            data: root.join("data"),
            log_path: root.join("server.log"),
            root,
            port: port.unwrap_or_else(free_port),
            settings: config.resolved_settings(),
            env: config.env.clone(),
            base_conf: String::new(),
        })
    }

    fn initdb(&mut self, config: &ClusterConfig) -> anyhow::Result<()> {
        let mut cmd = self.pg_command(&pg_bin("initdb").display().to_string());
        cmd.arg("-D").arg(&self.data).args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]);
        cmd.args(&config.initdb_args);
        run_checked(&mut cmd, &format!("initdb of cluster {}", self.root.display()))?;
        let conf = self.data.join("postgresql.conf");
        self.base_conf = std::fs::read_to_string(&conf).with_context(|| format!("reading {} after initdb", conf.display()))?;
        let hba = self.data.join("pg_hba.conf");
        let mut hba_text = std::fs::read_to_string(&hba).with_context(|| format!("reading {} after initdb", hba.display()))?;
        // First match wins: put ours in front of initdb's lines, the test's first.
        let given: String = config.hba.iter().map(|line| format!("{line}\n")).collect();
        hba_text = format!("# added by pageserver_harness\n{given}{REPLICATION_HBA_LINE}\n{hba_text}");
        std::fs::write(&hba, hba_text).with_context(|| format!("writing {}", hba.display()))?;
        Ok(())
    }

    fn write_conf(&self) -> anyhow::Result<()> {
        let conf = self.data.join("postgresql.conf");
        let text = format!("{}{}", self.base_conf, render_settings(&self.settings, self.port, &self.root));
        // Truncating an existing file keeps its owner (postgres).
        std::fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))
    }

    /// pg_ctl start, with up to START_ATTEMPTS ports.
    fn start_server(&mut self) -> anyhow::Result<()> {
        let mut tried = Vec::new();
        for attempt in 0..START_ATTEMPTS {
            if attempt > 0 {
                self.port = free_port();
            }
            tried.push(self.port);
            self.write_conf()?;
            let log_before = std::fs::metadata(&self.log_path).map(|m| m.len() as usize).unwrap_or(0);
            let mut cmd = self.pg_command(&pg_bin("pg_ctl").display().to_string());
            cmd.args(["start", "-w", "-t", "60", "-D"]).arg(&self.data).arg("-l").arg(&self.log_path);
            let result = run_checked(&mut cmd, "pg_ctl start");
            match result {
                Ok(_) => {
                    return Ok(());
                }
                Err(e) => {
                    let log = self.log();
                    let new_part = log.get(log_before..).unwrap_or(&log);
                    let bind_failed = new_part.contains("could not bind") || new_part.contains("could not create any TCP/IP sockets");
                    if bind_failed && attempt + 1 < START_ATTEMPTS && !self.postmaster_running() {
                        continue;
                    }
                    return Err(e.context(self.context(&format!("starting PostgreSQL (ports tried: {tried:?})"))));
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// A command running `program` as the cluster owner in the cluster's
    /// directory, with PGHOST/PGPORT/PGUSER/PGDATABASE/PGDATA for this cluster.
    fn pg_command(&self, program: &str) -> Command {
        let port = self.port.to_string();
        let data = self.data.display().to_string();
        let mut env = vec![
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", port.as_str()),
            ("PGUSER", SUPERUSER),
            ("PGDATABASE", "postgres"),
            ("PGDATA", data.as_str()),
        ];
        env.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut cmd = as_postgres::command(program, &env);
        cmd.current_dir(&self.root);
        cmd
    }

    /// "`what` (cluster <dir>, port <p>)" plus the tail of the server log.
    fn context(&self, what: &str) -> String {
        format!(
            "{what} (cluster {}, port {})\n--- last {LOG_TAIL_LINES} lines of {} ---\n{}",
            self.root.display(),
            self.port,
            self.log_path.display(),
            self.log_tail(LOG_TAIL_LINES)
        )
    }

    /// The TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The unix socket directory (the cluster's temp directory).
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// The cluster's temp directory, holding `data/` and `server.log`.
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    /// Takes a base backup with `pg_basebackup -Ft -X none -c fast
    /// --no-manifest` into `<root>/<name>/` and returns the path of its
    /// `base.tar` (the format `pageserver.create_timeline` imports).
    pub fn base_backup_tar(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.root.join(name);
        self.run_as_postgres_checked(
            "pg_basebackup",
            &["-D", &dir.display().to_string(), "-Ft", "-X", "none", "-c", "fast", "--no-manifest"],
        )?;
        Ok(dir.join("base.tar"))
    }

    /// The server log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The settings written to `postgresql.conf` (unquoted; without the
    /// harness's listen/port/socket lines).
    pub fn settings(&self) -> &[(String, String)] {
        &self.settings
    }

    /// The value given for setting `name` (unquoted), if any.
    pub fn setting(&self, name: &str) -> Option<String> {
        last_value(&self.settings, name).map(|v| unquote(&v))
    }

    /// `pageserver.listen_addr` for hosts; `None` for clusters without it.
    pub fn listener_addr(&self) -> Option<SocketAddr> {
        self.setting("pageserver.listen_addr")?.parse().ok()
    }

    /// `host=127.0.0.1 port=<port> user=postgres dbname=<db>`; append e.g.
    /// ` replication=true` as needed.
    pub fn connstr(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user={SUPERUSER} dbname={}", self.port, quote_conninfo(db))
    }

    /// A new connection to database `db` (30 s connect timeout).
    pub fn client(&self, db: &str) -> anyhow::Result<postgres::Client> {
        let connect = || -> anyhow::Result<postgres::Client> {
            let mut config: postgres::Config = self.connstr(db).parse()?;
            config.connect_timeout(Duration::from_secs(30));
            Ok(config.connect(postgres::NoTls)?)
        };
        connect().with_context(|| self.context(&format!("connecting to database {db}")))
    }

    /// Runs `query` (one or more statements, simple-query protocol) on
    /// database `postgres`; returns the rows of all results as text.
    pub fn sql(&self, query: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
        self.sql_db("postgres", query)
    }

    /// [`PgCluster::sql`] on database `db`.
    pub fn sql_db(&self, db: &str, query: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
        let mut client = self.client(db)?;
        let messages = client.simple_query(query).map_err(|e| {
            let detail = match e.as_db_error() {
                Some(db_err) => format!("{db_err}"),
                None => format!("{e}"),
            };
            anyhow!("{detail}").context(self.context(&format!("running SQL on database {db}: {query}")))
        })?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                postgres::SimpleQueryMessage::Row(row) => Some((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect()),
                _ => None,
            })
            .collect())
    }

    /// The first column of the first row of `query`, for one-value queries
    /// such as `SHOW wal_level`. Fails if there is no row.
    pub fn sql_one(&self, query: &str) -> anyhow::Result<Option<String>> {
        let rows = self.sql(query)?;
        let row = rows.into_iter().next().ok_or_else(|| anyhow!("{}", self.context(&format!("no rows from {query}"))))?;
        Ok(row.into_iter().next().flatten())
    }

    /// Runs `program` (a name in the PostgreSQL bin directory, such as
    /// `pgbench`, `psql`, `pg_waldump`, or any program on `PATH` or path) as
    /// the cluster owner, in the cluster's directory, with `PGHOST`,
    /// `PGPORT`, `PGUSER`, `PGDATABASE` and `PGDATA` set for this cluster.
    /// Returns its output whatever the exit status; see
    /// [`PgCluster::run_as_postgres_checked`].
    pub fn run_as_postgres(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let resolved =
            if program.contains('/') || !pg_bin(program).is_file() { program.to_string() } else { pg_bin(program).display().to_string() };
        let mut cmd = self.pg_command(&resolved);
        cmd.args(args);
        cmd.output().with_context(|| self.context(&format!("running {program} {args:?}")))
    }

    /// [`PgCluster::run_as_postgres`] that fails (with stdout, stderr and
    /// the server log tail) unless the program exits with status 0.
    pub fn run_as_postgres_checked(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let out = self.run_as_postgres(program, args)?;
        if !out.status.success() {
            bail!(
                "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.context(&format!("{program} {args:?} failed with {}", out.status)),
                String::from_utf8_lossy(&out.stdout).trim_end(),
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        }
        Ok(out)
    }

    /// The postmaster's pid, from `postmaster.pid` (which may name a dead
    /// process after a crash).
    pub fn postmaster_pid(&self) -> anyhow::Result<i32> {
        let path = self.data.join("postmaster.pid");
        let text = std::fs::read_to_string(&path)
            .with_context(|| self.context(&format!("reading {} (is the server running?)", path.display())))?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| anyhow!("{}", self.context(&format!("no pid in {}: {text:?}", path.display()))))
    }

    /// True if `postmaster.pid` names a live process.
    pub fn postmaster_running(&self) -> bool {
        self.postmaster_pid().map(pid_alive).unwrap_or(false)
    }

    /// Fast shutdown (`pg_ctl stop -m fast -w -t 60`), returning once every
    /// process of the cluster has exited. Ok if not running (orphans of a
    /// killed postmaster are then SIGKILLed).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if !self.postmaster_running() {
            let left = process::kill_all_in_dir(&self.data, Duration::from_secs(30));
            if !left.is_empty() {
                bail!("{}", self.context(&format!("processes {left:?} survived SIGKILL")));
            }
            return Ok(());
        }
        let pid = self.postmaster_pid()?;
        let mut cmd = self.pg_command(&pg_bin("pg_ctl").display().to_string());
        cmd.args(["stop", "-m", "fast", "-w", "-t", "60", "-D"]).arg(&self.data);
        let result = run_checked(&mut cmd, "pg_ctl stop -m fast");
        if let Err(e) = result {
            if pid_alive(pid) {
                return Err(e.context(self.context("stopping PostgreSQL")));
            }
        }
        // pg_ctl returns once postmaster.pid is gone, which the postmaster
        // removes while it is still exiting: wait for the process itself.
        let gone = self.wait_for("the stopped cluster's processes to exit", Duration::from_secs(30), || {
            (!pid_alive(pid) && self.processes().is_empty()).then_some(())
        });
        gone?;
        Ok(())
    }

    /// Starts the server again after [`stop`](PgCluster::stop) or a kill
    /// (crash recovery happens here); a no-op if it is running. Processes
    /// left over from a killed postmaster are SIGKILLed first. Keeps the
    /// port unless it has been taken meanwhile.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.postmaster_running() {
            return Ok(());
        }
        let left = process::kill_all_in_dir(&self.data, Duration::from_secs(30));
        if !left.is_empty() {
            bail!("{}", self.context(&format!("leftover processes {left:?} would not die")));
        }
        self.remove_stale_lock_files();
        self.start_server()
    }

    /// Removes `postmaster.pid` and the socket lock files of a dead
    /// postmaster. Needed because the dead postmaster may stay an unreaped
    /// zombie (it is not our child, and pid 1 of a container may not reap):
    /// a zombie still answers `kill(pid, 0)`, so the next postmaster would
    /// think it is running. Safe: the old System V segment is found again by
    /// its key and removed by PostgreSQL when nothing is attached to it.
    fn remove_stale_lock_files(&self) {
        let Ok(pid) = self.postmaster_pid() else {
            return;
        };
        if pid_alive(pid) {
            return;
        }
        let _ = std::fs::remove_file(self.data.join("postmaster.pid"));
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(".s.PGSQL.") && name.ends_with(".lock") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Crashes the server: SIGKILL to the postmaster, wait until it is
    /// gone, then SIGKILL every process left in the data directory (like a
    /// power loss; the next [`start_again`](PgCluster::start_again) runs
    /// crash recovery). Fails if the postmaster is not running.
    pub fn kill_postmaster(&mut self) -> anyhow::Result<()> {
        self.kill_postmaster_only()?;
        let left = process::kill_all_in_dir(&self.data, Duration::from_secs(30));
        if !left.is_empty() {
            bail!("{}", self.context(&format!("processes {left:?} survived SIGKILL")));
        }
        Ok(())
    }

    /// SIGKILL to the postmaster alone and wait until it is gone; its
    /// children are left to notice postmaster death themselves. Returns
    /// the killed pid.
    pub fn kill_postmaster_only(&mut self) -> anyhow::Result<i32> {
        let pid = self.postmaster_pid()?;
        if !pid_alive(pid) {
            bail!("{}", self.context(&format!("kill_postmaster: postmaster {pid} is not running")));
        }
        process::signal(pid, libc::SIGKILL);
        if !process::wait_gone(&[pid], Duration::from_secs(30)) {
            bail!("{}", self.context(&format!("postmaster {pid} still alive 30 s after SIGKILL")));
        }
        Ok(pid)
    }

    /// Pids of the processes running in this cluster's data directory
    /// (postmaster, backends, background workers).
    pub fn processes(&self) -> Vec<i32> {
        process::processes_in_dir(&self.data)
    }

    /// The whole server log so far ("" if there is none yet).
    pub fn log(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(_) => String::new(),
        }
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Calls `f` until it returns `Some`, sleeping 10 ms growing to 200 ms
    /// between calls; after `timeout` fails with "timed out ... waiting for
    /// `what`" and the server log tail.
    pub fn wait_for<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
        let start = Instant::now();
        let mut sleep = Duration::from_millis(10);
        loop {
            if let Some(v) = f() {
                return Ok(v);
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                bail!("{}", self.context(&format!("timed out after {elapsed:.1?} waiting for {what}")));
            }
            std::thread::sleep(sleep.min(timeout - elapsed));
            sleep = (sleep * 2).min(Duration::from_millis(200));
        }
    }

    fn shutdown_for_drop(&mut self) {
        if self.postmaster_running() {
            let mut cmd = self.pg_command(&pg_bin("pg_ctl").display().to_string());
            cmd.args(["stop", "-m", "immediate", "-w", "-t", "30", "-D"]).arg(&self.data);
            if let Err(e) = run_checked(&mut cmd, "pg_ctl stop -m immediate") {
                eprintln!("pageserver_harness: {e:#}");
                if let Ok(pid) = self.postmaster_pid() {
                    process::signal(pid, libc::SIGKILL);
                }
            }
        }
        let left = process::kill_all_in_dir(&self.data, Duration::from_secs(30));
        if !left.is_empty() {
            eprintln!("pageserver_harness: processes {left:?} of cluster {} survived SIGKILL", self.root.display());
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Nothing in here may panic (it may run while unwinding).
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.shutdown_for_drop();
            if std::env::var(KEEP_ENV).map(|v| v == "1").unwrap_or(false) {
                eprintln!("pageserver_harness: {KEEP_ENV}=1, keeping cluster {} (log: {})", self.root.display(), self.log_path.display());
            } else if let Err(e) = std::fs::remove_dir_all(&self.root) {
                if self.root.exists() {
                    eprintln!("pageserver_harness: could not remove {}: {e}", self.root.display());
                }
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

    #[test]
    fn quoting() {
        assert_eq!(quote_conf_value("16MB"), "'16MB'");
        assert_eq!(quote_conf_value("'already'"), "'already'");
        assert_eq!(quote_conf_value("it's"), "'it''s'");
        assert_eq!(quote_conf_value(r"a\b"), r"'a\\b'");
        assert_eq!(unquote("'a''b'"), "a'b");
        assert_eq!(quote_conninfo("postgres"), "postgres");
        assert_eq!(quote_conninfo("my db"), "'my db'");
    }

    #[test]
    fn primary_config() {
        let c = ClusterConfig::primary(&[("work_mem", "8MB"), ("max_wal_senders", "3")]);
        assert!(!c.preload_pageserver);
        let s = c.resolved_settings();
        assert_eq!(s[0], ("fsync".to_string(), "off".to_string()));
        assert_eq!(last_value(&s, "wal_level").as_deref(), Some("replica"));
        assert_eq!(last_value(&s, "max_wal_senders").as_deref(), Some("3"));
        assert_eq!(last_value(&s, "max_replication_slots").as_deref(), Some("10"));
        assert!(last_value(&s, "shared_preload_libraries").is_none());
        let text = render_settings(&s, 5433, Path::new("/tmp/x"));
        assert!(text.contains("wal_level = 'replica'\n"), "{text}");
        assert!(text.contains("work_mem = '8MB'\n"), "{text}");
        assert!(text.ends_with("listen_addresses = '127.0.0.1'\nport = 5433\nunix_socket_directories = '/tmp/x'\n"));
        // later wins: ours come after the user's 3
        let pos3 = text.find("max_wal_senders = '3'").unwrap();
        let pos10 = text.find("max_wal_senders = '10'").unwrap();
        assert!(pos10 < pos3);
    }

    #[test]
    fn host_config() {
        let c = ClusterConfig::host(&[("shared_buffers", "16MB")]);
        assert!(c.preload_pageserver);
        let s = c.resolved_settings();
        assert_eq!(last_value(&s, "shared_preload_libraries").as_deref(), Some("pageserver_ext"));
        let addr: SocketAddr = last_value(&s, "pageserver.listen_addr").unwrap().parse().unwrap();
        assert_eq!(addr.ip(), std::net::IpAddr::from(Ipv4Addr::LOCALHOST));
        assert_ne!(addr.port(), 0);
        assert_eq!(last_value(&s, "shared_buffers").as_deref(), Some("16MB"));
        let text = render_settings(&s, 1, Path::new("/s"));
        assert!(text.contains("shared_preload_libraries = 'pageserver_ext'\n"), "{text}");
        assert!(text.contains(&format!("pageserver.listen_addr = '{addr}'\n")), "{text}");

        // merging with given libraries, and keeping a given listen address
        let c = ClusterConfig::host(&[("shared_preload_libraries", "'pg_stat_statements'"), ("pageserver.listen_addr", "127.0.0.1:6400")]);
        let s = c.resolved_settings();
        assert_eq!(last_value(&s, "shared_preload_libraries").as_deref(), Some("pageserver_ext,pg_stat_statements"));
        assert_eq!(s.iter().filter(|(k, _)| k == "shared_preload_libraries").count(), 1);
        assert_eq!(last_value(&s, "pageserver.listen_addr").as_deref(), Some("127.0.0.1:6400"));
        let c = ClusterConfig::host(&[]).setting("shared_preload_libraries", "pageserver_ext");
        assert_eq!(last_value(&c.resolved_settings(), "shared_preload_libraries").as_deref(), Some("pageserver_ext"));
    }

    #[test]
    fn missing_extension_names_cargo_pgrx_install() {
        let dir = PathBuf::from(format!("/tmp/ps-harness-empty-libdir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = check_pageserver_installed_in(&dir).unwrap_err().to_string();
        std::fs::write(dir.join("pageserver_ext.so"), b"").unwrap();
        let ok = check_pageserver_installed_in(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("cargo pgrx install"), "{err}");
        assert!(err.contains("pageserver_ext.so"), "{err}");
        ok.unwrap();
        // The real check: either installed, or the same message.
        if let Err(e) = check_pageserver_installed() {
            assert!(e.to_string().contains("cargo pgrx install"), "{e:#}");
        }
    }

    /// Start-up retries with another port when the first one is taken.
    #[test]
    fn retries_when_port_taken() {
        let blocker = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let taken = blocker.local_addr().unwrap().port();
        let cluster = PgCluster::start_impl(ClusterConfig::primary(&[]), Some(taken)).unwrap();
        assert_ne!(cluster.port(), taken);
        assert!(cluster.log().contains("could not bind"), "{}", cluster.log());
        assert_eq!(cluster.sql_one("SHOW port").unwrap(), Some(cluster.port().to_string()));
        drop(blocker);
    }
}
