//! Whether a process is alive, as the queues and `pageserver.status()` need
//! to know it: a slot or a worker whose process is gone must be failed or
//! shown `dead`, but a process that merely cannot be signalled (another
//! user's, `EPERM`) or that is a zombie not yet reaped by its parent (the
//! postmaster reaps its children at once) still counts as alive.

/// True unless `pid` is certainly not a live process (`kill(pid, 0)` says
/// `ESRCH`). Our own pid always exists; pids 0 and below never do.
pub fn process_exists(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    if pid as u32 == std::process::id() {
        return true;
    }
    // SAFETY: signal 0 sends nothing; kill only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_dead_and_invalid_pids() {
        assert!(process_exists(std::process::id() as i32));
        assert!(process_exists(1), "init cannot be signalled by everyone, but exists");
        assert!(!process_exists(0));
        assert!(!process_exists(-5));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap(); // reaped: gone
        assert!(!process_exists(pid));
    }
}
