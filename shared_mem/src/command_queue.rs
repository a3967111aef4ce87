//! The command queue: SQL functions in ordinary backends hand management
//! commands (create a tenant, create a timeline, list timelines …) to the
//! main worker and wait for its reply.
//!
//! The queue carries opaque bytes; the extension decides what they mean.
//! It has [`COMMAND_SLOTS`] slots of [`COMMAND_BUFFER`] bytes, each holding a
//! request and then its reply, and a single server (a thread of the main
//! worker). Nobody calls PostgreSQL here: waiting is a futex on the slot's
//! state word (the server waits on a doorbell word). Commands are rare and
//! may take a while, so there is no spinning.
//!
//! Each slot's state word packs a 4-bit state and a 28-bit ticket bumped by
//! every claim; every transition is a compare-and-swap on the whole word, so
//! a late actor holding an old ticket can never move a reused slot:
//!
//! ```text
//! FREE ─claim─▶ FILLING ─submit─▶ SUBMITTED ─server takes─▶ IN_PROGRESS ─reply─▶ DONE ─caller reads─▶ FREE
//!                                     │ caller gives up: FREE          │ caller gives up: ABANDONED ─server replies─▶ FREE
//!                                     │                                │ server restarts: FAILED ─caller reads─▶ FREE
//! ```
//!
//! A server that restarts ([`CommandQueue::attach_server`]) fails the
//! commands its previous incarnation had taken: their callers get
//! [`CommandError::ServerRestarted`] and decide whether to retry.
//!
//! A caller that dies while its command is in a slot (a worker that exits
//! in the middle of a call, from another thread) cannot free the slot
//! itself: each slot records its caller's pid, and a slot whose caller is
//! gone is freed by the server's reply, or reclaimed by the next caller that
//! finds no free slot.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::futex;
use crate::process_exists;

/// Commands in flight at once; more callers wait for a free slot.
pub const COMMAND_SLOTS: usize = 8;
/// Bytes of one request or reply.
pub const COMMAND_BUFFER: usize = 64 * 1024;
/// How often a waiting caller re-checks that the server process is alive.
const LIVENESS_CHECK: Duration = Duration::from_millis(100);

const FREE: u32 = 0;
const FILLING: u32 = 1;
const SUBMITTED: u32 = 2;
const IN_PROGRESS: u32 = 3;
const DONE: u32 = 4;
const ABANDONED: u32 = 5;
const FAILED: u32 = 6;

fn pack(ticket: u32, state: u32) -> u32 {
    (ticket << 4) | state
}
fn state_of(word: u32) -> u32 {
    word & 0xF
}
fn ticket_of(word: u32) -> u32 {
    word >> 4
}

#[repr(C)]
struct Slot {
    word: AtomicU32,
    /// The process that claimed the slot.
    caller_pid: AtomicI32,
    len: AtomicU32,
    buffer: UnsafeCell<[u8; COMMAND_BUFFER]>,
}

/// The queue as it lives in shared memory; all-zero bytes are a valid empty queue.
#[repr(C)]
pub struct CommandQueue {
    /// Bumped by every submit; the server sleeps on it.
    doorbell: AtomicU32,
    /// Bumped by every free; callers waiting for a slot sleep on it.
    free_seq: AtomicU32,
    /// The server process, 0 when none is attached.
    server_pid: AtomicI32,
    /// Bumped by every `attach_server`.
    server_generation: AtomicU32,
    slots: [Slot; COMMAND_SLOTS],
}

// SAFETY: the buffers are only touched by the single owner the state word
// names (module docs); everything else is atomics.
unsafe impl Sync for CommandQueue {}

/// Why a command got no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    NoServer,
    TooLarge { len: usize },
    Timeout { waited: Duration },
    ServerRestarted,
    Cancelled,
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::NoServer => write!(f, "the pageserver main worker is not running (see pageserver.status())"),
            CommandError::TooLarge { len } => {
                write!(f, "command of {len} bytes is larger than a command slot ({COMMAND_BUFFER} bytes)")
            }
            CommandError::Timeout { waited } => {
                write!(f, "the pageserver main worker did not answer within {:.1} s", waited.as_secs_f64())
            }
            CommandError::ServerRestarted => write!(f, "the pageserver main worker restarted while running the command"),
            CommandError::Cancelled => write!(f, "command cancelled"),
        }
    }
}

impl std::error::Error for CommandError {}

impl CommandQueue {
    /// Sends `request` to the server and waits up to `timeout` for its reply.
    /// `is_cancelled` is asked at least every 100 ms while waiting (a backend
    /// passes a read of `InterruptPending`).
    pub fn call(&self, request: &[u8], timeout: Duration, is_cancelled: &mut dyn FnMut() -> bool) -> Result<Vec<u8>, CommandError> {
        if request.len() > COMMAND_BUFFER {
            return Err(CommandError::TooLarge { len: request.len() });
        }
        let started = Instant::now();
        let deadline = started + timeout;
        let (slot_index, ticket) = self.claim(started, deadline, is_cancelled)?;
        let slot = &self.slots[slot_index];
        // SAFETY: FILLING under our ticket: we are the buffer's only user.
        let buffer = unsafe { &mut *slot.buffer.get() };
        buffer[..request.len()].copy_from_slice(request);
        slot.len.store(request.len() as u32, Ordering::Relaxed);
        slot.word.store(pack(ticket, SUBMITTED), Ordering::Release);
        self.doorbell.fetch_add(1, Ordering::Release);
        futex::wake(&self.doorbell, 1);
        let generation = self.server_generation.load(Ordering::Acquire);
        loop {
            let word = slot.word.load(Ordering::Acquire);
            match state_of(word) {
                DONE => {
                    let len = slot.len.load(Ordering::Relaxed) as usize;
                    // SAFETY: DONE under our ticket: the server handed the buffer back.
                    let reply = unsafe { &*slot.buffer.get() }[..len.min(COMMAND_BUFFER)].to_vec();
                    self.free(slot, ticket);
                    return Ok(reply);
                }
                FAILED => {
                    self.free(slot, ticket);
                    return Err(CommandError::ServerRestarted);
                }
                _ => {}
            }
            let now = Instant::now();
            let pid = self.server_pid.load(Ordering::Acquire);
            let gone = pid == 0 || !process_exists(pid) || self.server_generation.load(Ordering::Acquire) != generation;
            let failure = if now >= deadline {
                Some(CommandError::Timeout { waited: now - started })
            } else if is_cancelled() {
                Some(CommandError::Cancelled)
            } else if gone && state_of(word) == IN_PROGRESS {
                Some(CommandError::ServerRestarted)
            } else if gone && pid == 0 && state_of(word) == SUBMITTED && now - started > Duration::from_secs(5) {
                Some(CommandError::NoServer)
            } else {
                None
            };
            if let Some(error) = failure {
                if self.give_up(slot, ticket) {
                    return Err(error);
                }
                continue; // the reply arrived meanwhile
            }
            futex::wait(&slot.word, word, (deadline - now).min(LIVENESS_CHECK));
        }
    }

    fn claim(&self, started: Instant, deadline: Instant, is_cancelled: &mut dyn FnMut() -> bool) -> Result<(usize, u32), CommandError> {
        loop {
            let seq = self.free_seq.load(Ordering::Acquire);
            for (index, slot) in self.slots.iter().enumerate() {
                let word = slot.word.load(Ordering::Relaxed);
                if state_of(word) != FREE {
                    continue;
                }
                let ticket = (ticket_of(word) + 1) & 0x0FFF_FFFF;
                if slot.word.compare_exchange(word, pack(ticket, FILLING), Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    slot.caller_pid.store(std::process::id() as i32, Ordering::Release);
                    return Ok((index, ticket));
                }
            }
            if self.reclaim_slots_of_dead_callers() {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(CommandError::Timeout { waited: now - started });
            }
            if is_cancelled() {
                return Err(CommandError::Cancelled);
            }
            futex::wait(&self.free_seq, seq, (deadline - now).min(LIVENESS_CHECK));
        }
    }

    /// Withdraws a submitted command or abandons a taken one; false when the
    /// reply is already there (the caller then reads it).
    fn give_up(&self, slot: &Slot, ticket: u32) -> bool {
        let submitted = pack(ticket, SUBMITTED);
        if slot.word.compare_exchange(submitted, pack(ticket, FREE), Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.announce_free();
            return true;
        }
        let taken = pack(ticket, IN_PROGRESS);
        slot.word.compare_exchange(taken, pack(ticket, ABANDONED), Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Frees the slots whose caller process is gone (a command it was
    /// filling, had submitted, or whose reply it never read) and abandons
    /// those the server is working on. True if a slot became free.
    fn reclaim_slots_of_dead_callers(&self) -> bool {
        let mut freed = false;
        for slot in &self.slots {
            let word = slot.word.load(Ordering::Acquire);
            let state = state_of(word);
            if state == FREE || state == ABANDONED {
                continue;
            }
            let pid = slot.caller_pid.load(Ordering::Acquire);
            if pid == 0 || process_exists(pid) || slot.word.load(Ordering::Acquire) != word {
                continue;
            }
            let ticket = ticket_of(word);
            let next = if state == IN_PROGRESS { ABANDONED } else { FREE };
            if slot.word.compare_exchange(word, pack(ticket, next), Ordering::AcqRel, Ordering::Relaxed).is_ok() && next == FREE {
                freed = true;
            }
        }
        if freed {
            self.announce_free();
        }
        freed
    }

    fn free(&self, slot: &Slot, ticket: u32) {
        slot.word.store(pack(ticket, FREE), Ordering::Release);
        self.announce_free();
    }

    fn announce_free(&self) {
        self.free_seq.fetch_add(1, Ordering::Release);
        futex::wake_all(&self.free_seq);
    }

    /// Makes the calling process the server, failing whatever a previous
    /// server had taken. There is one server at a time.
    pub fn attach_server(&self) -> CommandServer<'_> {
        self.server_generation.fetch_add(1, Ordering::AcqRel);
        self.server_pid.store(std::process::id() as i32, Ordering::Release);
        for slot in &self.slots {
            let word = slot.word.load(Ordering::Acquire);
            let ticket = ticket_of(word);
            match state_of(word) {
                IN_PROGRESS if slot.word.compare_exchange(word, pack(ticket, FAILED), Ordering::AcqRel, Ordering::Relaxed).is_ok() => {
                    futex::wake_all(&slot.word);
                }
                ABANDONED if slot.word.compare_exchange(word, pack(ticket, FREE), Ordering::AcqRel, Ordering::Relaxed).is_ok() => {
                    self.announce_free();
                }
                _ => {}
            }
        }
        CommandServer { queue: self }
    }
}

/// The server's end: takes commands, replies to them.
pub struct CommandServer<'q> {
    queue: &'q CommandQueue,
}

/// A command taken by the server; reply with [`CommandJob::reply`].
pub struct CommandJob<'q> {
    queue: &'q CommandQueue,
    slot: usize,
    ticket: u32,
    request: Vec<u8>,
}

impl<'q> CommandServer<'q> {
    /// The next submitted command, waiting at most `wait`.
    pub fn next(&self, wait: Duration) -> Option<CommandJob<'q>> {
        let deadline = Instant::now() + wait;
        loop {
            let bell = self.queue.doorbell.load(Ordering::Acquire);
            for (index, slot) in self.queue.slots.iter().enumerate() {
                let word = slot.word.load(Ordering::Acquire);
                if state_of(word) != SUBMITTED {
                    continue;
                }
                let ticket = ticket_of(word);
                if slot.word.compare_exchange(word, pack(ticket, IN_PROGRESS), Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                    let len = (slot.len.load(Ordering::Relaxed) as usize).min(COMMAND_BUFFER);
                    // SAFETY: IN_PROGRESS under this ticket: the server owns the buffer.
                    let request = unsafe { &*slot.buffer.get() }[..len].to_vec();
                    return Some(CommandJob { queue: self.queue, slot: index, ticket, request });
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            futex::wait(&self.queue.doorbell, bell, deadline - now);
        }
    }
}

impl CommandJob<'_> {
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// Hands `reply` to the caller (cut to [`COMMAND_BUFFER`] bytes: build
    /// replies that fit). A caller that gave up meanwhile gets nothing; the
    /// slot is freed either way.
    pub fn reply(self, reply: &[u8]) {
        let slot = &self.queue.slots[self.slot];
        let taken = pack(self.ticket, IN_PROGRESS);
        let len = reply.len().min(COMMAND_BUFFER);
        if slot.word.load(Ordering::Acquire) == taken {
            // SAFETY: IN_PROGRESS under our ticket: we own the buffer until we publish DONE.
            let buffer = unsafe { &mut *slot.buffer.get() };
            buffer[..len].copy_from_slice(&reply[..len]);
            slot.len.store(len as u32, Ordering::Relaxed);
            if slot.word.compare_exchange(taken, pack(self.ticket, DONE), Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                futex::wake_all(&slot.word);
                // A caller that died waiting will never read it.
                let pid = slot.caller_pid.load(Ordering::Acquire);
                let done = pack(self.ticket, DONE);
                if pid != 0
                    && !process_exists(pid)
                    && slot.word.compare_exchange(done, pack(self.ticket, FREE), Ordering::AcqRel, Ordering::Relaxed).is_ok()
                {
                    self.queue.announce_free();
                }
                return;
            }
        }
        let abandoned = pack(self.ticket, ABANDONED);
        if slot.word.compare_exchange(abandoned, pack(self.ticket, FREE), Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.queue.announce_free();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn queue() -> Arc<CommandQueue> {
        let mem = Box::<CommandQueue>::new_zeroed();
        // SAFETY: all-zero bytes are a valid empty queue (atomics, integers, byte arrays).
        let queue: Box<CommandQueue> = unsafe { mem.assume_init() };
        Arc::from(queue)
    }

    #[test]
    fn commands_get_their_own_replies_from_many_threads() {
        let q = queue();
        let server_q = q.clone();
        let server = std::thread::spawn(move || {
            let server = server_q.attach_server();
            let mut served = 0;
            while served < 400 {
                if let Some(job) = server.next(Duration::from_millis(50)) {
                    let mut reply = b"echo:".to_vec();
                    reply.extend_from_slice(job.request());
                    job.reply(&reply);
                    served += 1;
                }
            }
        });
        let callers: Vec<_> = (0..20)
            .map(|t| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..20 {
                        let msg = format!("{t}/{i}");
                        let reply = q.call(msg.as_bytes(), Duration::from_secs(10), &mut || false).unwrap();
                        assert_eq!(reply, format!("echo:{msg}").into_bytes());
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
        server.join().unwrap();
    }

    #[test]
    fn a_caller_that_times_out_leaves_the_slot_usable() {
        let q = queue();
        let server = q.attach_server();
        let err = q.call(b"slow", Duration::from_millis(50), &mut || false).unwrap_err();
        assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
        // The withdrawn command is gone; a new one is served.
        let q2 = q.clone();
        let caller = std::thread::spawn(move || q2.call(b"fast", Duration::from_secs(5), &mut || false));
        let job = server.next(Duration::from_secs(5)).expect("a command");
        assert_eq!(job.request(), b"fast");
        job.reply(b"ok");
        assert_eq!(caller.join().unwrap().unwrap(), b"ok");
    }

    #[test]
    fn an_abandoned_command_is_freed_by_the_reply_and_a_restart_fails_taken_ones() {
        let q = queue();
        let server = q.attach_server();
        let q2 = q.clone();
        let caller = std::thread::spawn(move || q2.call(b"one", Duration::from_millis(200), &mut || false));
        let job = server.next(Duration::from_secs(5)).unwrap();
        assert!(matches!(caller.join().unwrap(), Err(CommandError::Timeout { .. })));
        job.reply(b"late");
        assert!(q.slots.iter().all(|s| state_of(s.word.load(Ordering::Relaxed)) == FREE));

        let q3 = q.clone();
        let caller = std::thread::spawn(move || q3.call(b"two", Duration::from_secs(5), &mut || false));
        let _taken = server.next(Duration::from_secs(5)).unwrap();
        let _restarted = q.attach_server();
        assert_eq!(caller.join().unwrap(), Err(CommandError::ServerRestarted));
    }

    /// The pid of a process that has exited.
    fn dead_pid() -> i32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        pid
    }

    #[test]
    fn slots_of_dead_callers_are_freed_by_the_reply_or_reclaimed() {
        let q = queue();
        let server = q.attach_server();
        let dead = dead_pid();
        // Every slot taken by callers that died: one with its command taken
        // by the server, the others submitted, filling or replied to.
        for (i, slot) in q.slots.iter().enumerate() {
            let state = if i == 0 { IN_PROGRESS } else { [SUBMITTED, FILLING, DONE][i % 3] };
            slot.caller_pid.store(dead, Ordering::Relaxed);
            slot.word.store(pack(1, state), Ordering::Relaxed);
        }
        let taken = CommandJob { queue: &q, slot: 0, ticket: 1, request: Vec::new() };
        // A new caller finds no free slot, reclaims them and is served.
        let q2 = q.clone();
        let caller = std::thread::spawn(move || q2.call(b"alive", Duration::from_secs(5), &mut || false));
        // Let the caller find no free slot (and reclaim) before the server runs.
        std::thread::sleep(Duration::from_millis(200));
        let job = loop {
            let job = server.next(Duration::from_secs(5)).expect("a command");
            if job.request() == b"alive" {
                break job;
            }
            job.reply(b"to nobody");
        };
        job.reply(b"ok");
        assert_eq!(caller.join().unwrap().unwrap(), b"ok");
        // The reply to the dead caller's taken command frees its slot.
        taken.reply(b"late");
        let states: Vec<u32> = q.slots.iter().map(|s| state_of(s.word.load(Ordering::Relaxed))).collect();
        assert!(states.iter().all(|s| *s == FREE), "{states:?}");
    }

    #[test]
    fn oversized_and_cancelled_commands_are_refused() {
        let q = queue();
        let big = vec![0u8; COMMAND_BUFFER + 1];
        assert!(matches!(q.call(&big, Duration::from_secs(1), &mut || false), Err(CommandError::TooLarge { .. })));
        let _server = q.attach_server();
        assert_eq!(q.call(b"x", Duration::from_secs(5), &mut || true), Err(CommandError::Cancelled));
    }
}
