//! `pageserver-clone`: live clones of a page server's timelines for a
//! stock PostgreSQL 15 (see the crate docs and the README).
//!
//! `mount` creates the clone at its first call (a branch on the page
//! server pins the LSN) and starts the serving process in the background;
//! later calls resume the clone with its local writes. `unmount` stops
//! serving and keeps the clone; `destroy` also drops the branch and deletes
//! the clone. `start` mounts and starts PostgreSQL on it. `serve` is the
//! serving process itself.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use pageserver_clone::admin::{self, Target};
use pageserver_clone::fetcher::{FetchTarget, Fetcher};
use pageserver_clone::fs::CloneFs;
use pageserver_clone::layout::{remove_if_present, CloneDir, CloneSpec};
use pageserver_clone::lazy::Registry;
use pageserver_clone::pagestream_client::{self, BlockingClient, ClientError, ConnectOptions};
use pageserver_clone::stats::{Stats, StatsReport};
use storage::pagestream::ProtocolVersion;

/// The page service's token (a JWT), if it needs one.
const TOKEN_VAR: &str = "PAGESERVER_CLONE_TOKEN";

#[derive(Parser)]
#[command(name = "pageserver-clone", version, about = "Live clones: a stock PostgreSQL 15 on a FUSE view of a timeline at an LSN")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone)]
struct MountArgs {
    /// The clone directory (created if missing). Its owner runs PostgreSQL:
    /// every file of the clone belongs to that user.
    dir: PathBuf,
    /// libpq connection string of the page server's host, as a role with
    /// pageserver_admin (first mount only: it creates the clone's branch).
    #[arg(long)]
    admin: Option<String>,
    /// Tenant id (first mount only).
    #[arg(long)]
    tenant: Option<String>,
    /// Timeline id (first mount only).
    #[arg(long)]
    timeline: Option<String>,
    /// The LSN to show (first mount only; default: the timeline's last).
    #[arg(long, conflicts_with = "time")]
    lsn: Option<String>,
    /// Or a time: the state after the last commit at or before it.
    #[arg(long)]
    time: Option<String>,
    /// Where to mount the data directory (first mount only; default <dir>/data).
    #[arg(long)]
    mountpoint: Option<PathBuf>,
    /// The page service, host:port (default: from pageserver.listen_addr).
    #[arg(long)]
    pageserver: Option<String>,
    /// User name for the page service; a token, if it needs one, comes from
    /// the environment variable PAGESERVER_CLONE_TOKEN.
    #[arg(long, default_value = "pageserver_clone")]
    user: String,
    /// How long reads wait for an unreachable page server before they fail with EIO.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mounts the clone at <dir>/data or --mountpoint (creating the clone at the first mount).
    Mount(MountArgs),
    /// Mounts the clone and starts a stock PostgreSQL 15 on it.
    Start {
        #[command(flatten)]
        mount: MountArgs,
        /// The TCP port PostgreSQL listens on (127.0.0.1).
        #[arg(long)]
        port: u16,
        /// Directory of pg_ctl (default: pg_config --bindir, else /usr/lib/postgresql/15/bin).
        #[arg(long)]
        pg_bin: Option<PathBuf>,
    },
    /// Unmounts the clone, keeping it for a later mount. Refused while processes run on it.
    Unmount { dir: PathBuf },
    /// Unmounts the clone, drops its branch on the page server and deletes it.
    Destroy { dir: PathBuf },
    /// Shows the clone, whether it is mounted and its fetch and cache counters.
    Status { dir: PathBuf },
    /// The serving process (started by mount).
    #[command(hide = true)]
    Serve {
        dir: PathBuf,
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Mount(args) => mount(&args),
        Cmd::Start { mount: args, port, pg_bin } => start(&args, port, pg_bin),
        Cmd::Unmount { dir } => unmount(&CloneDir::new(&dir).and_then(existing)),
        Cmd::Destroy { dir } => destroy(&dir),
        Cmd::Status { dir } => status(&dir),
        Cmd::Serve { dir, timeout_s } => serve(&dir, Duration::from_secs(timeout_s)),
    };
    if let Err(e) = result {
        eprintln!("pageserver-clone: error: {e:#}");
        std::process::exit(1);
    }
}

fn existing(dir: CloneDir) -> Result<CloneDir> {
    if dir.read_spec()?.is_none() {
        bail!("{} is not a clone directory (no clone.json)", dir.root.display());
    }
    Ok(dir)
}

/// FUSE needs /dev/fuse and fusermount3 (Debian's fuse3).
fn check_fuse() -> Result<()> {
    if !Path::new("/dev/fuse").exists() {
        bail!("FUSE is not available: /dev/fuse is missing on this machine (live clones need the fuse kernel module; in a container, pass --device /dev/fuse)");
    }
    let found = std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join("fusermount3").exists()));
    if !found {
        bail!("fusermount3 is not installed (Debian package fuse3; scripts/setup.sh installs it)");
    }
    Ok(())
}

fn fusermount(args: &[&str], mountpoint: &Path) -> Result<()> {
    let out = Command::new("fusermount3").args(args).arg(mountpoint).output().context("running fusermount3")?;
    if !out.status.success() {
        bail!("fusermount3 {} {}: {}", args.join(" "), mountpoint.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn mount(args: &MountArgs) -> Result<()> {
    check_fuse()?;
    let dir = CloneDir::new(&args.dir)?;
    std::fs::create_dir_all(&dir.root).with_context(|| format!("creating {}", dir.root.display()))?;
    match (dir.server_pid(), dir.is_mounted()) {
        (Some(_), true) => {
            println!("{} is already mounted", dir.mountpoint().display());
            return Ok(());
        }
        (Some(pid), false) => bail!("a serving process of this clone (pid {pid}) is still starting; see {}", dir.log_path().display()),
        _ => {}
    }
    if dir.is_mounted() {
        // A serving process that died: clear its dead mount first.
        fusermount(&["-u", "-z"], &dir.mountpoint())?;
    }
    let mut created = false;
    let spec = match dir.read_spec()? {
        Some(spec) => {
            let differs = |given: &Option<String>, have: &str| given.as_deref().is_some_and(|g| g != have);
            if differs(&args.tenant, &spec.tenant_id) || differs(&args.timeline, &spec.parent_timeline_id) || differs(&args.lsn, &spec.lsn)
            {
                bail!(
                    "{} is a clone of {} {} at {}; give another directory for another clone",
                    dir.root.display(),
                    spec.tenant_id,
                    spec.parent_timeline_id,
                    spec.lsn
                );
            }
            spec
        }
        None => {
            created = true;
            create_clone(&dir, args)?
        }
    };
    let started = Instant::now();
    if let Err(e) = start_serving(&dir, args) {
        if !created {
            return Err(e);
        }
        // A first mount that failed leaves no clone behind: nothing to
        // destroy, and the next mount of this directory starts afresh.
        return Err(match undo_create(&dir, &spec) {
            Ok(()) => e.context(format!("the clone was not created (its branch {} is dropped again)", spec.branch_timeline_id)),
            Err(undo) => e.context(format!(
                "the clone was not created, and undoing it failed: {undo:#}; run pageserver-clone destroy {}",
                dir.root.display()
            )),
        });
    }
    println!(
        "mounted {} (tenant {}, timeline {} at {}, branch {}) in {:.2}s",
        dir.mountpoint().display(),
        spec.tenant_id,
        spec.parent_timeline_id,
        spec.lsn,
        spec.branch_timeline_id,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Starts the serving process and waits until its mount is ready.
fn start_serving(dir: &CloneDir, args: &MountArgs) -> Result<()> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.log_path())?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .arg(&dir.root)
        .arg("--timeout-s")
        .arg(args.timeout_s.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the serving process")?;
    let started = Instant::now();
    loop {
        if dir.is_mounted() {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the serving process ended ({status}) before the mount was ready; its log {}:\n{}",
                dir.log_path().display(),
                log_tail(dir, 20)
            );
        }
        if started.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the mount was not ready after 10 minutes; log {}:\n{}", dir.log_path().display(), log_tail(dir, 20));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Undoes [`create_clone`] after a first mount failed: drops the branch and
/// removes what the serving process made, keeping `clone.log`.
fn undo_create(dir: &CloneDir, spec: &CloneSpec) -> Result<()> {
    let default_mountpoint = dir.root.join("data");
    if dir.is_mounted() {
        // A serving process killed just as it mounted.
        fusermount(&["-u", "-z"], &dir.mountpoint())?;
    }
    admin::drop_branch(&spec.admin_conninfo, &spec.tenant_id, &spec.branch_timeline_id)?;
    for path in [dir.store(), dir.lazy(), dir.wal(), dir.store_ready(), dir.pid_path(), dir.stats_path(), dir.spec_path()] {
        remove_if_present(&path)?;
    }
    // Only if the serving process made it, so only if empty.
    let _ = std::fs::remove_dir(default_mountpoint);
    Ok(())
}

fn log_tail(dir: &CloneDir, lines: usize) -> String {
    let text = std::fs::read_to_string(dir.log_path()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The first mount: the branch that pins the LSN, then `clone.json`.
fn create_clone(dir: &CloneDir, args: &MountArgs) -> Result<CloneSpec> {
    let (Some(conninfo), Some(tenant), Some(timeline)) = (&args.admin, &args.tenant, &args.timeline) else {
        bail!("{} is not a clone yet: give --admin, --tenant and --timeline (and --lsn or --time)", dir.root.display());
    };
    let pageserver = match &args.pageserver {
        Some(addr) => addr.clone(),
        None => admin::page_service_addr(conninfo, &admin::conninfo_host(conninfo).unwrap_or_else(|| "127.0.0.1".into()))?,
    };
    // Before the branch: a page service that refuses us must not leave one.
    check_page_service(&pageserver, tenant, timeline, &connect_options(&args.user))?;
    let target = match (&args.lsn, &args.time) {
        (_, Some(t)) => Target::Time(t.clone()),
        (Some(lsn), None) => Target::Lsn(lsn.clone()),
        (None, None) => Target::Lsn(String::new()),
    };
    let (branch, lsn) = match &target {
        Target::Lsn(l) if l.is_empty() => admin::create_branch_at_latest(conninfo, tenant, timeline)?,
        t => admin::create_branch(conninfo, tenant, timeline, t)?,
    };
    let spec = CloneSpec {
        tenant_id: tenant.clone(),
        parent_timeline_id: timeline.clone(),
        branch_timeline_id: branch,
        lsn,
        pageserver,
        admin_conninfo: conninfo.clone(),
        user: args.user.clone(),
        mountpoint: match &args.mountpoint {
            Some(m) if m.is_absolute() => Some(m.clone()),
            Some(m) => Some(std::env::current_dir()?.join(m)),
            None => None,
        },
    };
    dir.write_spec(&spec)?;
    Ok(spec)
}

fn connect_options(user: &str) -> ConnectOptions {
    ConnectOptions {
        user: user.to_string(),
        password: std::env::var(TOKEN_VAR).ok(),
        application_name: "pageserver-clone".into(),
        connect_timeout: Duration::from_secs(30),
    }
}

/// Opens (and closes) a pagestream on the timeline to be cloned: whether the
/// page service lets us in, with the token of PAGESERVER_CLONE_TOKEN if any,
/// and grants that token the tenant.
fn check_page_service(addr: &str, tenant: &str, timeline: &str, options: &ConnectOptions) -> Result<()> {
    let client = match BlockingClient::connect_with(addr, ProtocolVersion::V3, tenant, timeline, options) {
        Ok(client) => client,
        Err(ClientError::PasswordRequired) => bail!(
            "authentication to the page service at {addr} failed: it asks for a token (JWT) and {TOKEN_VAR} is not set; set it to a token for tenant {tenant}"
        ),
        Err(ClientError::Server(_, e)) if e.code.starts_with("28") => {
            bail!("authentication to the page service at {addr} failed with the token in {TOKEN_VAR}: {e}")
        }
        Err(ClientError::Server(_, e)) if e.code == "42501" => {
            bail!("the page service at {addr} refused access to tenant {tenant} with the token in {TOKEN_VAR}: {e}")
        }
        Err(e) => bail!("cannot open a pagestream on tenant {tenant} timeline {timeline} at {addr}: {e}"),
    };
    let _ = client.close();
    Ok(())
}

/// The serving process: populates the store at the first mount, then serves
/// the file system until it is unmounted.
fn serve(dir: &Path, timeout: Duration) -> Result<()> {
    let dir = existing(CloneDir::new(dir)?)?;
    let spec = dir.read_spec()?.expect("checked");
    std::fs::write(dir.pid_path(), std::process::id().to_string())?;
    let lsn: storage::lsn::Lsn = spec.lsn.parse().map_err(|_| anyhow::anyhow!("bad LSN {} in clone.json", spec.lsn))?;
    let options = connect_options(&spec.user);
    if !dir.store_ready().exists() {
        let started = Instant::now();
        let query = format!("clonebackup {} {} {}", spec.tenant_id, spec.branch_timeline_id, spec.lsn);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let tar = runtime
            .block_on(pagestream_client::copy_out(spec.pageserver.as_str(), &query, &options))
            .with_context(|| format!("fetching \"{query}\" from {}", spec.pageserver))?;
        let done = pageserver_clone::store::populate(&dir, &tar)?;
        eprintln!(
            "pageserver-clone: store populated: {} files ({} bytes of clonebackup), {} relation files of {} blocks left on the page server ({:.2}s)",
            done.files,
            done.tar_bytes,
            done.rel_files,
            done.rel_blocks,
            started.elapsed().as_secs_f64()
        );
    }
    raise_open_files_limit();
    let registry = Arc::new(Registry::load(&dir.store(), &dir.lazy())?);
    let stats = Arc::new(Stats::default());
    let target = FetchTarget {
        addr: spec.pageserver.clone(),
        tenant: spec.tenant_id.clone(),
        timeline: spec.branch_timeline_id.clone(),
        lsn,
        options,
    };
    let fetcher = Arc::new(Fetcher::new(target, timeout, stats.clone()));
    let fs = CloneFs::new(&dir.store(), registry.clone(), fetcher, stats.clone())?;

    let mountpoint = dir.mountpoint();
    std::fs::create_dir_all(&mountpoint)?;
    let owner = std::fs::metadata(&dir.root)?;
    std::os::unix::fs::lchown(&mountpoint, Some(owner.uid()), Some(owner.gid()))?;
    std::fs::set_permissions(&mountpoint, std::fs::Permissions::from_mode(0o700))?;

    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (dir, registry, stats, stop) = (dir.clone(), registry.clone(), stats.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut tick = 0u64;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                tick += 1;
                write_stats(&dir, &registry, &stats);
                if tick.is_multiple_of(5) {
                    if let Err(e) = registry.sync_all() {
                        eprintln!("pageserver-clone: persisting the remote-block maps failed (retried): {e}");
                    }
                }
            }
        })
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("pageserver_clone:{}", spec.branch_timeline_id)),
        fuser::MountOption::Subtype("pageserver_clone".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::RW,
        fuser::MountOption::NoAtime,
    ];
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(16);
    config.clone_fd = true;
    eprintln!("pageserver-clone: serving {} (pid {})", mountpoint.display(), std::process::id());
    let served = fuser::mount(fs, &mountpoint, &config);
    stop.store(true, Ordering::Relaxed);
    let _ = background.join();
    registry.sync_all()?;
    write_stats(&dir, &registry, &stats);
    let _ = std::fs::remove_file(dir.pid_path());
    served.context("serving the FUSE mount")?;
    eprintln!("pageserver-clone: unmounted {}", mountpoint.display());
    Ok(())
}

fn write_stats(dir: &CloneDir, registry: &Registry, stats: &Stats) {
    let (remote, total) = registry.remote_and_total();
    let report = stats.report(remote, total);
    if let Ok(bytes) = serde_json::to_vec_pretty(&report) {
        let tmp = dir.stats_path().with_extension("tmp");
        if std::fs::write(&tmp, bytes).is_ok() {
            let _ = std::fs::rename(&tmp, dir.stats_path());
        }
    }
}

fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Processes whose working directory is under the mount point (a
/// PostgreSQL server and its backends run in their data directory).
fn processes_on(mountpoint: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| pageserver_clone::layout::pid_alive(*pid))
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(mountpoint)))
        .collect()
}

fn unmount(dir: &Result<CloneDir>) -> Result<()> {
    let dir = dir.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let mountpoint = dir.mountpoint();
    let users = processes_on(&mountpoint);
    if !users.is_empty() {
        bail!(
            "processes still run on the clone (pids {users:?}; PostgreSQL?): stop them first, e.g. pg_ctl -D {} stop -m fast",
            mountpoint.display()
        );
    }
    let server = dir.server_pid();
    if dir.is_mounted() {
        match server {
            Some(_) => fusermount(&["-u"], &mountpoint).context("unmounting (a file may still be open on it)")?,
            // The serving process is gone: its mount is dead; detach it.
            None => fusermount(&["-u", "-z"], &mountpoint)?,
        }
    }
    if let Some(pid) = server {
        let started = Instant::now();
        while pageserver_clone::layout::pid_alive(pid) {
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the serving process {pid} did not end within 60 s of the unmount");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    println!("unmounted {}; the clone is kept (mount it again, or destroy it)", mountpoint.display());
    Ok(())
}

fn destroy(path: &Path) -> Result<()> {
    let dir = existing(CloneDir::new(path)?)?;
    let spec = dir.read_spec()?.expect("checked");
    unmount(&Ok(dir.clone()))?;
    admin::drop_branch(&spec.admin_conninfo, &spec.tenant_id, &spec.branch_timeline_id)?;
    std::fs::remove_dir_all(&dir.root).with_context(|| format!("deleting {}", dir.root.display()))?;
    println!("destroyed the clone {} and dropped its branch {}", dir.root.display(), spec.branch_timeline_id);
    Ok(())
}

fn status(path: &Path) -> Result<()> {
    let dir = existing(CloneDir::new(path)?)?;
    let spec = dir.read_spec()?.expect("checked");
    let mut out = std::io::stdout().lock();
    writeln!(out, "clone {}", dir.root.display())?;
    writeln!(out, "  tenant {} timeline {} at {} (branch {})", spec.tenant_id, spec.parent_timeline_id, spec.lsn, spec.branch_timeline_id)?;
    writeln!(out, "  page service {}", spec.pageserver)?;
    let state = match (dir.is_mounted(), dir.server_pid()) {
        (true, Some(pid)) => format!("mounted on {} (serving process {pid})", dir.mountpoint().display()),
        (true, None) => "dead mount (the serving process is gone): unmount, then mount again".to_string(),
        (false, _) => "not mounted".to_string(),
    };
    writeln!(out, "  {state}")?;
    if let Ok(bytes) = std::fs::read(dir.stats_path()) {
        let r: StatsReport = serde_json::from_slice(&bytes)?;
        writeln!(
            out,
            "  blocks fetched {} ({} MiB, {} read ahead) in {} batches; {} retries, {} failed reads",
            r.blocks_fetched,
            r.bytes_fetched >> 20,
            r.blocks_read_ahead,
            r.fetch_batches,
            r.fetch_retries,
            r.fetch_failures
        )?;
        writeln!(out, "  relation reads served locally: {:.1}%", r.hit_ratio * 100.0)?;
        writeln!(out, "  blocks still remote: {} of {}", r.blocks_remote, r.blocks_total)?;
        writeln!(out, "  writes {} ({} MiB)", r.writes, r.write_bytes >> 20)?;
    }
    Ok(())
}

fn pg_bin_dir(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .filter(|p| p.join("pg_ctl").exists())
            .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
    })
}

fn start(args: &MountArgs, port: u16, pg_bin: Option<PathBuf>) -> Result<()> {
    mount(args)?;
    let dir = CloneDir::new(&args.dir)?;
    let owner = std::fs::metadata(&dir.root)?;
    let pg_ctl = pg_bin_dir(pg_bin).join("pg_ctl");
    let options = format!("-p {port} -c listen_addresses=127.0.0.1 -k {}", dir.root.display());
    let mut cmd = Command::new(&pg_ctl);
    cmd.arg("-D").arg(dir.mountpoint()).arg("-l").arg(dir.root.join("postgres.log")).arg("-o").arg(&options).arg("-w").arg("start");
    if nix::unistd::geteuid().is_root() && owner.uid() != 0 {
        cmd.uid(owner.uid()).gid(owner.gid());
    }
    let status = cmd.status().with_context(|| format!("running {}", pg_ctl.display()))?;
    if !status.success() {
        bail!("{} start failed ({status}); see {}", pg_ctl.display(), dir.root.join("postgres.log").display());
    }
    println!("PostgreSQL runs on the clone: host=127.0.0.1 port={port} dbname=postgres");
    Ok(())
}
