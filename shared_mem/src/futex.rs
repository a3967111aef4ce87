//! Cross-process wake-ups on 32-bit atomics: Linux futexes, shared variant.
//!
//! The waiters live in different processes that map the same segment at
//! different addresses, so these use `FUTEX_WAIT`/`FUTEX_WAKE` without
//! `FUTEX_PRIVATE_FLAG`: the kernel keys a shared futex by the underlying
//! page, not by the virtual address. (On private memory, as in the
//! single-process tests, the shared variant works too.)

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// How many times a waiter polls before it sleeps in the kernel. On this
/// machine a cross-process round trip costs 7 µs when both sides sleep and
/// 1.3 µs with a 2,000-poll spin (DESIGN.md, "main worker"). A poll is one
/// `PAUSE` (about 25 ns here), so the spin lasts about 50 µs.
pub const SPIN_POLLS: u32 = 2_000;

/// Every this many polls the spinner yields the CPU (`sched_yield`): when
/// the process it waits for is runnable on the same core (hosts with fewer
/// cores than busy processes), a pure spin would keep it off the CPU for the
/// whole spin; a yield lets it run at once. On an idle core a yield returns
/// immediately.
pub const POLLS_PER_YIELD: u32 = 64;
const _: () = assert!(POLLS_PER_YIELD.is_power_of_two());

/// The spin-before-sleep policy: call [`Spinner::spin`] between polls; when
/// it returns false, sleep on the futex.
#[derive(Debug, Default)]
pub struct Spinner {
    polls: u32,
}

impl Spinner {
    pub fn new() -> Spinner {
        Spinner { polls: 0 }
    }

    /// Pauses briefly (now and then yields the CPU); false once the spin is over.
    pub fn spin(&mut self) -> bool {
        self.spin_up_to(SPIN_POLLS)
    }

    /// As [`Spinner::spin`] with a shorter or longer budget.
    pub fn spin_up_to(&mut self, max_polls: u32) -> bool {
        if self.polls >= max_polls {
            return false;
        }
        self.polls += 1;
        if self.polls & (POLLS_PER_YIELD - 1) == 0 {
            // SAFETY: sched_yield takes no arguments and only reschedules us.
            unsafe { libc::sched_yield() };
        } else {
            std::hint::spin_loop();
        }
        true
    }
}

/// Sleeps while `word` holds `expected`, at most `timeout`. Returns on a
/// wake-up, on a timeout, on a signal, or at once if the value differs:
/// callers always re-check their condition.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let timeout =
        libc::timespec { tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t, tv_nsec: timeout.subsec_nanos() as libc::c_long };
    // SAFETY: FUTEX_WAIT only reads the aligned 32-bit word, which the
    // reference keeps alive for the call, and the timespec on our stack; the
    // two unused arguments are ignored by FUTEX_WAIT. The kernel compares the
    // value atomically, so there is no lost wake-up between our check and the sleep.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &timeout as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes up to `count` sleepers on `word`.
pub fn wake(word: &AtomicU32, count: i32) {
    // SAFETY: FUTEX_WAKE does not access memory at the address (the kernel
    // only uses it as a key); the remaining arguments are ignored.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            count,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes every sleeper on `word`.
pub fn wake_all(word: &AtomicU32) {
    wake(word, i32::MAX)
}
