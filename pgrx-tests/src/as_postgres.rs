//! Running PostgreSQL programs as the `postgres` OS user.
//!
//! `initdb`, `pg_ctl` and `postgres` refuse to run as root, and tests here
//! run as root. This module owns that switch: [`command`] builds a
//! [`Command`] that runs a program as `postgres` (through `runuser`, or
//! `sudo -n` when `runuser` is missing) with an explicit environment, and
//! [`chown_to_postgres`] hands directories over to that user. When the test
//! process is not root, programs run directly as the current user, which
//! then owns the clusters.

use std::ffi::{CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context};

/// The OS user that owns and runs clusters when the tests run as root.
pub const POSTGRES_USER: &str = "postgres";

/// How programs get run as the cluster owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switch {
    /// Run directly: the current user is not root (maybe `postgres` itself).
    Direct,
    /// `runuser -u postgres -- env K=V... program args`.
    Runuser(PathBuf),
    /// `sudo -n -u postgres -- env K=V... program args`.
    Sudo(PathBuf),
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// How this process runs PostgreSQL programs (decided once).
pub fn switch() -> &'static Switch {
    static SWITCH: OnceLock<Switch> = OnceLock::new();
    SWITCH.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Switch::Direct;
        }
        // runuser first: no sudoers policy, no `use_pty`, no PAM prompts.
        if let Some(p) = find_in_path("runuser") {
            Switch::Runuser(p)
        } else if let Some(p) = find_in_path("sudo") {
            Switch::Sudo(p)
        } else {
            // Nothing to switch with; initdb will say it refuses root.
            Switch::Direct
        }
    })
}

/// A command running `program` as the cluster owner, with exactly the
/// variables in `env` added to a minimal environment (`PATH` includes the
/// PostgreSQL binary directory; `LC_ALL=C`). Add arguments with `.arg()`;
/// do not use `.env()` on the result, it would not reach the program when
/// the user is switched.
pub fn command(program: impl AsRef<OsStr>, env: &[(&str, &str)]) -> Command {
    let bin_dir = crate::pg_bin_dir();
    let path_var = format!("PATH={}:/usr/local/bin:/usr/bin:/bin", bin_dir.display());
    let mut vars: Vec<String> = vec![path_var, "LC_ALL=C".to_string()];
    vars.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    match switch() {
        Switch::Direct => {
            let mut cmd = Command::new(program);
            for v in &vars {
                if let Some((k, val)) = v.split_once('=') {
                    cmd.env(k, val);
                }
            }
            cmd
        }
        Switch::Runuser(runuser) => {
            let mut cmd = Command::new(runuser);
            cmd.args(["-u", POSTGRES_USER, "--", "/usr/bin/env"]).args(&vars).arg(program);
            cmd
        }
        Switch::Sudo(sudo) => {
            let mut cmd = Command::new(sudo);
            cmd.args(["-n", "-u", POSTGRES_USER, "--", "/usr/bin/env"]).args(&vars).arg(program);
            cmd
        }
    }
}

/// uid and gid of the cluster owner: `postgres` when switching users, the
/// current user otherwise.
pub fn owner_ids() -> anyhow::Result<(libc::uid_t, libc::gid_t)> {
    if *switch() == Switch::Direct {
        // SAFETY: no preconditions.
        return Ok(unsafe { (libc::geteuid(), libc::getegid()) });
    }
    let name = CString::new(POSTGRES_USER).expect("no NUL");
    // SAFETY: passwd is plain C data (integers and pointers); all-zero is a
    // valid value, and getpwnam_r fills it before we read it.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers point to live, correctly sized buffers.
    let rc = unsafe { libc::getpwnam_r(name.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        bail!(
            "looking up OS user `{POSTGRES_USER}`: not found (rc {rc}); install PostgreSQL 15 \
             (scripts/setup.sh) or run the tests as a non-root user"
        );
    }
    Ok((pwd.pw_uid, pwd.pw_gid))
}

/// Makes `path` owned by the cluster owner (no-op when not switching users).
pub fn chown_to_postgres(path: &Path) -> anyhow::Result<()> {
    if *switch() == Switch::Direct {
        return Ok(());
    }
    let (uid, gid) = owner_ids()?;
    let c = CString::new(path.as_os_str().as_bytes()).with_context(|| format!("path {} contains NUL", path.display()))?;
    // SAFETY: c is a valid NUL-terminated string.
    if unsafe { libc::chown(c.as_ptr(), uid, gid) } != 0 {
        let err = std::io::Error::last_os_error();
        bail!("chown {} to {POSTGRES_USER}: {err}", path.display());
    }
    Ok(())
}

/// The name of the effective user of this process (for messages).
pub fn current_user() -> String {
    // SAFETY: getpwuid returns a pointer to static storage or NULL; we copy
    // the name out immediately.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() {
            return format!("uid {}", libc::geteuid());
        }
        CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_runs_as_owner() {
        let out = crate::run_checked(command("id", &[("PS_X", "1")]).arg("-un"), "id").unwrap();
        let who = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if *switch() == Switch::Direct {
            assert_eq!(who, current_user());
        } else {
            assert_eq!(who, POSTGRES_USER);
        }
        let out = crate::run_checked(command("sh", &[("PS_X", "a b")]).args(["-c", "echo \"$PS_X\""]), "env").unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "a b");
    }
}
