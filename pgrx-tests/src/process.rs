//! Finding, killing and waiting for OS processes through `/proc` (Linux).
//!
//! Clusters are not children of the test process (`pg_ctl` detaches the
//! postmaster), so liveness is read from `/proc/<pid>/stat`, where a zombie
//! counts as gone. A cluster's processes are found by their working
//! directory: the postmaster `chdir`s into its data directory and every
//! backend and background worker inherits it, also after the postmaster died.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// True if `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ..." -- comm may contain spaces and parentheses.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => {
                let zombie = matches!(stat[i + 1..].trim_start().chars().next(), Some('Z') | Some('X'));
                // A killed multi-threaded process shows its leader as a
                // zombie while other threads still exit (and keep its memory,
                // shared memory included, attached): alive until they are gone.
                !zombie || other_threads_left(pid)
            }
            None => true,
        },
        Err(_) => false,
    }
}

/// Pids of live processes whose working directory is `dir` or below it.
/// True if the thread group of `pid` has threads besides its (zombie) leader.
fn other_threads_left(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|tasks| tasks.flatten().count() > 1).unwrap_or(false)
}

pub fn processes_in_dir(dir: &Path) -> Vec<i32> {
    let dir: PathBuf = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        // A zombie leader has no cwd any more; its exiting threads still do.
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).or_else(|e| {
            std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten().find_map(|t| std::fs::read_link(t.path().join("cwd")).ok()).ok_or(e)
        });
        let Ok(cwd) = cwd else {
            continue;
        };
        // A removed directory shows up as "/path (deleted)".
        let cwd_str = cwd.to_string_lossy();
        let cwd = PathBuf::from(cwd_str.strip_suffix(" (deleted)").unwrap_or(&cwd_str));
        if cwd.starts_with(&dir) && pid_alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Sends `signal` to `pid`; errors (e.g. already gone) are ignored.
pub fn signal(pid: i32, signal: libc::c_int) {
    if pid > 0 {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Polls until none of `pids` is alive; false if `timeout` passed first.
pub fn wait_gone(pids: &[i32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut sleep = Duration::from_millis(5);
    loop {
        if pids.iter().all(|&p| !pid_alive(p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(sleep);
        sleep = (sleep * 2).min(Duration::from_millis(100));
    }
}

/// SIGKILLs every live process whose working directory is under `dir`, over
/// and over until none is left or `timeout` passes (a dying postmaster may
/// still fork). Returns the pids still alive at the end (empty on success).
pub fn kill_all_in_dir(dir: &Path, timeout: Duration) -> Vec<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let pids = processes_in_dir(dir);
        if pids.is_empty() {
            return pids;
        }
        for &p in &pids {
            signal(p, libc::SIGKILL);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        wait_gone(&pids, left.min(Duration::from_secs(2)));
        if Instant::now() >= deadline {
            return processes_in_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn alive_and_cwd_and_kill() {
        assert!(pid_alive(std::process::id() as i32));
        assert!(!pid_alive(-1));
        let dir = std::env::temp_dir().join(format!("ps-harness-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new("sleep").arg("30").current_dir(&dir).spawn().unwrap();
        let pid = child.id() as i32;
        assert!(pid_alive(pid));
        assert_eq!(processes_in_dir(&dir), vec![pid]);
        assert!(kill_all_in_dir(&dir, Duration::from_secs(5)).is_empty() || !pid_alive(pid));
        // Our own child stays a zombie until waited for: counts as gone.
        assert!(!pid_alive(pid));
        child.wait().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
