//! The clone directory: what lives where, and `clone.json`, the clone's
//! identity (which timeline, which LSN, which branch pins it).
//!
//! ```text
//! <dir>/clone.json     what the clone is (written once, at the first mount)
//! <dir>/data/          the mount point, PostgreSQL's data directory (or --mountpoint)
//! <dir>/store/         the local copy-on-write store behind data/
//! <dir>/store.ready    present once store/ is fully populated
//! <dir>/wal/           the clone's pg_wal: store/pg_wal is a symlink to it,
//!                      so PostgreSQL writes its WAL past FUSE, to local disk
//! <dir>/lazy/<n>.pending  for each relation file with blocks not yet local
//! <dir>/clone.pid      the serving process
//! <dir>/clone.log      its log
//! <dir>/stats.json     its counters, rewritten every second
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// What a clone is; written at the first mount, read by every later command.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CloneSpec {
    pub tenant_id: String,
    /// The timeline the clone was asked for.
    pub parent_timeline_id: String,
    /// The branch created for the clone (at `lsn`): it is read, and it keeps
    /// the page server from collecting the pages while the clone exists.
    pub branch_timeline_id: String,
    /// The LSN the clone shows.
    pub lsn: String,
    /// The page service, `host:port`.
    pub pageserver: String,
    /// libpq connection string of the page server's host, for the branch.
    pub admin_conninfo: String,
    /// The user name sent to the page service.
    pub user: String,
    /// Where the data directory is mounted, if not `<dir>/data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mountpoint: Option<PathBuf>,
}

/// The paths of one clone directory.
#[derive(Clone, Debug)]
pub struct CloneDir {
    pub root: PathBuf,
}

impl CloneDir {
    pub fn new(root: &Path) -> Result<CloneDir> {
        let root = if root.is_absolute() { root.to_path_buf() } else { std::env::current_dir()?.join(root) };
        Ok(CloneDir { root })
    }
    pub fn spec_path(&self) -> PathBuf {
        self.root.join("clone.json")
    }
    /// The mount point: `clone.json`'s, else `<dir>/data`.
    pub fn mountpoint(&self) -> PathBuf {
        self.read_spec().ok().flatten().and_then(|s| s.mountpoint).unwrap_or_else(|| self.root.join("data"))
    }
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }
    /// The clone's WAL directory, outside the mount (`store/pg_wal` links here).
    pub fn wal(&self) -> PathBuf {
        self.root.join("wal")
    }
    pub fn store_ready(&self) -> PathBuf {
        self.root.join("store.ready")
    }
    pub fn lazy(&self) -> PathBuf {
        self.root.join("lazy")
    }
    pub fn pid_path(&self) -> PathBuf {
        self.root.join("clone.pid")
    }
    pub fn log_path(&self) -> PathBuf {
        self.root.join("clone.log")
    }
    pub fn stats_path(&self) -> PathBuf {
        self.root.join("stats.json")
    }

    pub fn read_spec(&self) -> Result<Option<CloneSpec>> {
        match std::fs::read(self.spec_path()) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("reading {}", self.spec_path().display()))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.spec_path().display())),
        }
    }

    pub fn write_spec(&self, spec: &CloneSpec) -> Result<()> {
        Ok(write_durably(&self.spec_path(), &serde_json::to_vec_pretty(spec)?)?)
    }

    /// The pid of the serving process, if one is alive.
    pub fn server_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_path()).ok()?.trim().parse().ok()?;
        pid_alive(pid).then_some(pid)
    }

    /// Whether something is mounted on `data/` (from `/proc/self/mountinfo`).
    pub fn is_mounted(&self) -> bool {
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
        let target = self.mountpoint();
        let target = target.to_string_lossy();
        // Field 5 is the mount point, with spaces and such octal-escaped.
        info.lines().any(|line| line.split(' ').nth(4).is_some_and(|m| unescape_mountinfo(m) == target))
    }
}

/// Whether `pid` runs: it exists and is not a zombie (a killed serving
/// process stays one until its new parent reaps it, which pid 1 of a
/// container may never do).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(b) = u8::from_str_radix(&code, 8) {
                out.push(b as char);
                continue;
            }
            out.push(c);
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

/// Writes `path` as a whole: a temporary file, fsync, rename, fsync of the
/// directory. An error names the file it is about.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    fn about(p: &Path) -> impl Fn(std::io::Error) -> std::io::Error + '_ {
        move |e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display()))
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(about(&tmp))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(about(&tmp))?;
    std::fs::rename(&tmp, path).map_err(about(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(about(dir))?;
    }
    Ok(())
}

/// Removes the file or directory tree at `path`, if there is one (a
/// symlink itself, not what it points to). An error names the path.
pub fn remove_if_present(path: &Path) -> std::io::Result<()> {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(std::io::Error::new(e.kind(), format!("deleting {}: {e}", path.display())))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
