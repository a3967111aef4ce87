//! The live-clone tool (`pageserver-clone`) in tests: building it, clone
//! directories and their commands, and stock PostgreSQL 15 started on a
//! clone.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use pageserver_harness::{as_postgres, ClusterConfig, PgCluster};
use storage::lsn::Lsn;

/// The environment variable the tool takes the page service's token from.
pub const TOKEN_VAR: &str = "PAGESERVER_CLONE_TOKEN";

/// The tool's binary, built for this test run if needed.
pub fn tool() -> Result<PathBuf> {
    ensure!(
        Path::new("/dev/fuse").exists(),
        "live clone tests need FUSE: /dev/fuse is missing on this machine (load the fuse module, or give the container --device /dev/fuse)"
    );
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").exists()));
    ensure!(found, "live clone tests need fusermount3: install Debian's fuse3 (scripts/setup.sh does)");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace")?.to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-q", "-p", "pageserver_clone", "--bin", "pageserver-clone"])
        .current_dir(&workspace)
        .status()?;
    ensure!(status.success(), "building pageserver-clone failed");
    // The test runs as target/<profile>/deps/<test>-<hash>.
    let bin = std::env::current_exe()?.parent().and_then(Path::parent).context("target dir")?.join("pageserver-clone");
    ensure!(bin.exists(), "{} was not built", bin.display());
    Ok(bin)
}

/// A clone directory owned by postgres, with the tool's commands. The tool
/// runs with `token` in PAGESERVER_CLONE_TOKEN, or without that variable.
pub struct CloneDir {
    tool: PathBuf,
    dir: tempfile::TempDir,
    token: Option<String>,
}

impl CloneDir {
    pub fn new(tool: &Path) -> Result<CloneDir> {
        let dir = tempfile::Builder::new().prefix("clone-test.").tempdir()?;
        as_postgres::chown_to_postgres(dir.path())?;
        Ok(CloneDir { tool: tool.to_path_buf(), dir, token: None })
    }

    /// The tool's commands on this clone pass `token` to the page service.
    pub fn with_token(mut self, token: &str) -> CloneDir {
        self.token = Some(token.to_string());
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the tool, whatever its exit status.
    pub fn output(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(&self.tool);
        cmd.args(args).env_remove(TOKEN_VAR);
        if let Some(token) = &self.token {
            cmd.env(TOKEN_VAR, token);
        }
        Ok(cmd.output()?)
    }

    /// Runs the tool; its output, or an error with its output and the clone's log.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let out = self.output(args)?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            let log = std::fs::read_to_string(self.path().join("clone.log")).unwrap_or_default();
            bail!("pageserver-clone {}: {text}\nclone.log:\n{log}", args.join(" "));
        }
        Ok(text)
    }

    pub fn dir_arg(&self) -> String {
        self.path().display().to_string()
    }

    /// The arguments of the first mount, at `mountpoint`.
    pub fn mount_args(&self, host: &PgCluster, tenant: &str, timeline: &str, at: &At, mountpoint: &Path) -> Vec<String> {
        let mut args = vec![
            "mount".to_string(),
            self.dir_arg(),
            "--admin".into(),
            host.connstr("postgres"),
            "--tenant".into(),
            tenant.into(),
            "--timeline".into(),
            timeline.into(),
            "--mountpoint".into(),
            mountpoint.display().to_string(),
            "--timeout-s".into(),
            "20".into(),
        ];
        match at {
            At::Lsn(lsn) => args.extend(["--lsn".into(), lsn.to_string()]),
            At::Time(t) => args.extend(["--time".into(), t.clone()]),
            At::Latest => {}
        }
        args
    }

    /// The first mount, at `mountpoint`.
    pub fn create(&self, host: &PgCluster, tenant: &str, timeline: &str, at: &At, mountpoint: &Path) -> Result<String> {
        let args = self.mount_args(host, tenant, timeline, at, mountpoint);
        self.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    pub fn status(&self) -> Result<String> {
        self.run(&["status", &self.dir_arg()])
    }

    pub fn stats(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_slice(&std::fs::read(self.path().join("stats.json"))?)?)
    }

    pub fn serving_pid(&self) -> Result<i32> {
        Ok(std::fs::read_to_string(self.path().join("clone.pid"))?.trim().parse()?)
    }

    /// A stock PostgreSQL 15 on this clone, new, of `timeline` at `at`.
    pub fn start(self, host: &PgCluster, tenant: &str, timeline: &str, at: At) -> Result<(CloneDir, PgCluster)> {
        let started = Instant::now();
        // fsync on: a killed tool, like a power loss, keeps only what was fsynced.
        let pg = PgCluster::start_on_data_dir(ClusterConfig::default().setting("fsync", "on"), |data| {
            self.create(host, tenant, timeline, &at, data)?;
            Ok(())
        })?;
        eprintln!("clone of {timeline} at {at:?}: mounted and started in {:.1}s", started.elapsed().as_secs_f64());
        Ok((self, pg))
    }
}

/// A clone still served when its test ends (the test failed before
/// `destroy`): its log goes to the test's output, and it is unmounted, so
/// that no mount or serving process outlives the test.
impl Drop for CloneDir {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.path().join("clone.pid")).unwrap_or_default();
        let Ok(pid) = pid.trim().parse::<i32>() else { return };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        let log = std::fs::read_to_string(self.path().join("clone.log")).unwrap_or_default();
        eprintln!("clone {} is still served; its log:\n{log}", self.path().display());
        if let Err(e) = self.run(&["unmount", &self.dir_arg()]) {
            eprintln!("unmounting it failed: {e}");
        }
    }
}

/// Whether anything is mounted at `path` (from `/proc/self/mountinfo`).
pub fn is_mount_point(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let target = path.display().to_string();
    info.lines().any(|line| line.split(' ').nth(4) == Some(target.as_str()))
}

/// Which point of a timeline a clone shows.
#[derive(Debug)]
pub enum At {
    Lsn(Lsn),
    Time(String),
    Latest,
}

/// A stock PostgreSQL 15 on a new clone of `timeline` at `at`.
pub fn start_clone(tool: &Path, host: &PgCluster, tenant: &str, timeline: &str, at: At) -> Result<(CloneDir, PgCluster)> {
    CloneDir::new(tool)?.start(host, tenant, timeline, at)
}

/// Stops the clone's PostgreSQL and destroys the clone (its branch too).
pub fn destroy(clone: CloneDir, mut pg: PgCluster) -> Result<()> {
    pg.stop()?;
    clone.run(&["destroy", &clone.dir_arg()])?;
    Ok(())
}
