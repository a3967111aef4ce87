//! Tests of the redo queue: threads of one process on a heap queue, and
//! processes sharing an anonymous shared mapping across `fork()`.

use super::*;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicBool;
use std::thread;

const LONG: Duration = Duration::from_secs(20);
/// Block number for which the fake worker replies with a redo error.
const ERROR_BLOCK: u32 = 0xdead;

/// What the fake worker does instead of PostgreSQL redo: XOR each record's
/// bytes into the page at an offset derived from its LSN (order matters, so
/// chunks applied out of order would show), stamp its end LSN like
/// `PageSetLSN`, mix in the target block; the mask flag clears the LSN.
fn fake_apply(request: &RedoRequestView<'_>) -> [u8; PAGE_SIZE] {
    let mut page = request.base_image.copied().unwrap_or([0; PAGE_SIZE]);
    for record in request.records() {
        let offset = record.start_lsn as usize % PAGE_SIZE;
        for (i, byte) in record.raw.iter().enumerate() {
            page[(offset + i) % PAGE_SIZE] ^= byte;
        }
        page[8..16].copy_from_slice(&record.end_lsn.to_le_bytes());
        for (p, t) in page[24..28].iter_mut().zip(request.target.blkno.to_le_bytes()) {
            *p ^= t;
        }
    }
    if request.flags & FLAG_MASK_RESULT != 0 {
        page[8..16].fill(0);
    }
    page
}

/// The page one call of the fake worker would return for `request`, however large.
fn expected_page(request: &RedoRequest) -> [u8; PAGE_SIZE] {
    fake_apply(&decode_request(&encode_request(request)).unwrap())
}

/// Serves one job the way a healthy fake worker does.
fn serve_job(job: Job<'_>) {
    if wire::is_batch(job.request_bytes()) {
        let pages: Vec<Result<[u8; PAGE_SIZE], u64>> = wire::decode_batch(job.request_bytes())
            .expect("the caller sent a well-formed batch")
            .iter()
            .map(|r| if r.target.blkno == ERROR_BLOCK { Err(r.records().next().map_or(0, |r| r.start_lsn)) } else { Ok(fake_apply(r)) })
            .collect();
        let replies: Vec<BatchItemReply<'_>> = pages.iter().map(|p| p.as_ref().map_err(|lsn| (*lsn, 10, "invalid lp", false))).collect();
        let _ = job.reply_batch(&replies);
        return;
    }
    let request = job.request().expect("the caller sent a well-formed request");
    if request.target.blkno == ERROR_BLOCK {
        let lsn = request.records().next().map_or(0, |r| r.start_lsn);
        let _ = job.reply_err(lsn, 10, "invalid lp", false);
        return;
    }
    let page = fake_apply(&request);
    let _ = job.reply_ok(&page);
}

/// A fake worker loop: serves until `stop` is set.
fn serve_until(queue: &RedoQueue, worker: usize, stop: &AtomicBool) {
    let end = queue.attach_worker(worker);
    while !stop.load(Ordering::Acquire) {
        if let Some(job) = end.next(Duration::from_millis(5)) {
            serve_job(job);
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn request_with(rng: &mut Rng, blkno: u32, records: usize, record_len: usize, with_base: bool, flags: u32) -> RedoRequest {
    let mut lsn = 0x0100_0000 + rng.next() % 0x10_0000;
    RedoRequest {
        target: RelBlock { spc_node: 1663, db_node: 5, rel_node: 16384, fork: 0, blkno },
        base_image: with_base.then(|| Box::new(std::array::from_fn(|i| (i as u8).wrapping_mul(31) ^ blkno as u8))),
        records: (0..records)
            .map(|_| {
                let start_lsn = lsn;
                lsn += record_len as u64 + 8;
                RedoRecord { start_lsn, end_lsn: lsn, raw: rng.bytes(record_len) }
            })
            .collect(),
        flags,
    }
}

fn random_request(rng: &mut Rng, blkno: u32) -> RedoRequest {
    let records = (rng.next() % 6) as usize;
    let record_len = 24 + (rng.next() % 300) as usize;
    let with_base = rng.next() & 3 != 0;
    let flags = (rng.next() % 2) as u32;
    request_with(rng, blkno, records, record_len, with_base, flags)
}

#[test]
fn many_callers_and_workers_get_their_own_pages() {
    const WORKERS: usize = 3;
    const CALLERS: usize = 6;
    const CALLS: usize = 150;
    let queue = RedoQueue::new_boxed(WORKERS);
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        for worker in 0..WORKERS {
            let (queue, stop) = (&*queue, &stop);
            s.spawn(move || serve_until(queue, worker, stop));
        }
        let callers: Vec<_> = (0..CALLERS)
            .map(|caller| {
                let queue = &*queue;
                s.spawn(move || {
                    let mut rng = Rng(0x9E37_79B9 + caller as u64);
                    for call in 0..CALLS {
                        let request = random_request(&mut rng, (caller * 1000 + call) as u32);
                        let page = queue.call(&request, LONG).unwrap();
                        assert!(page == expected_page(&request), "caller {caller} call {call}: wrong page");
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.join().unwrap();
        }
        stop.store(true, Ordering::Release);
    });
    let served: u64 = (0..WORKERS).map(|w| queue.served_by(w)).sum();
    assert_eq!(served, (CALLERS * CALLS) as u64);
    assert!((0..WORKERS).all(|w| queue.served_by(w) > 0), "round robin uses every worker");
    assert_eq!(queue.free_slots(), REDO_SLOTS);
    let stats = queue.stats();
    assert_eq!(stats.calls, (CALLERS * CALLS) as u64);
    assert_eq!(stats.retries, 0);
}

#[test]
fn batches_get_every_page_and_every_error_in_order() {
    let queue = RedoQueue::new_boxed(2);
    let stop = AtomicBool::new(false);
    let mut rng = Rng(42);
    let requests: Vec<RedoRequest> = (0..24u32)
        .map(|i| if i == 5 { request_with(&mut rng, ERROR_BLOCK, 2, 40, true, 0) } else { random_request(&mut rng, i) })
        .map(|r| RedoRequest { flags: 0, ..r })
        .collect();
    let items: Vec<BatchItem<'_>> =
        requests.iter().map(|r| BatchItem { target: r.target, base_image: r.base_image.as_deref(), records: &r.records }).collect();
    assert!(RedoQueue::batch_fits(&items));
    thread::scope(|s| {
        s.spawn(|| serve_until(&queue, 0, &stop));
        s.spawn(|| serve_until(&queue, 1, &stop));
        for round in 0..20 {
            let replies = queue.call_batch(&items, LONG).unwrap();
            assert_eq!(replies.len(), requests.len());
            for (i, (request, reply)) in requests.iter().zip(&replies).enumerate() {
                match reply {
                    RedoReply::Ok(page) => assert!(**page == expected_page(request), "round {round} item {i}: wrong page"),
                    RedoReply::Err { message, .. } => assert!(i == 5 && message == "invalid lp", "round {round} item {i}: {message}"),
                }
            }
        }
        stop.store(true, Ordering::Release);
    });
    // Too many pages for one slot: refused before anything is sent.
    let big: Vec<RedoRequest> = (0..40).map(|i| request_with(&mut rng, i, 1, 30, true, 0)).collect();
    let big_items: Vec<BatchItem<'_>> =
        big.iter().map(|r| BatchItem { target: r.target, base_image: r.base_image.as_deref(), records: &r.records }).collect();
    assert!(!RedoQueue::batch_fits(&big_items));
    assert!(matches!(queue.call_batch(&big_items, LONG), Err(RedoCallError::TooLarge { .. })));
    assert_eq!(queue.free_slots(), REDO_SLOTS);
    assert_eq!(queue.served_by(0) + queue.served_by(1), 20);
}

#[test]
fn redo_error_reaches_the_caller_without_retry() {
    let queue = RedoQueue::new_boxed(1);
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| serve_until(&queue, 0, &stop));
        let request = request_with(&mut Rng(7), ERROR_BLOCK, 2, 40, true, 0);
        let err = queue.call(&request, LONG).unwrap_err();
        assert_eq!(err, RedoCallError::Redo { lsn: request.records[0].start_lsn, rmgr: 10, message: "invalid lp".into(), rejected: false });
        assert!(err.to_string().contains("invalid lp"));
        stop.store(true, Ordering::Release);
    });
    assert_eq!(queue.stats().retries, 0);
    assert_eq!(queue.free_slots(), REDO_SLOTS);
}

#[test]
fn times_out_without_workers_and_frees_the_slot() {
    let queue = RedoQueue::new_boxed(2);
    let request = request_with(&mut Rng(1), 1, 1, 50, true, 0);
    let started = Instant::now();
    let err = queue.call(&request, Duration::from_millis(30)).unwrap_err();
    assert!(matches!(err, RedoCallError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(30));
    assert_eq!(queue.free_slots(), REDO_SLOTS);
    assert_eq!(queue.stats().timeouts, 1);
}

#[test]
fn no_workers_configured_is_an_error() {
    let queue = RedoQueue::new_boxed(0);
    let request = request_with(&mut Rng(1), 1, 1, 50, true, 0);
    assert_eq!(queue.call(&request, LONG).unwrap_err(), RedoCallError::NoWorkers);
}

#[test]
fn caller_timeout_while_the_worker_holds_the_job_makes_the_reply_stale() {
    let queue = RedoQueue::new_boxed(1);
    let end = queue.attach_worker(0);
    let request = request_with(&mut Rng(3), 3, 1, 50, false, 0);
    thread::scope(|s| {
        let caller = s.spawn(|| queue.call(&request, Duration::from_millis(50)));
        let job = end.next(LONG).expect("the caller's request");
        assert_eq!(job.request().unwrap().to_request(), request);
        let err = caller.join().unwrap().unwrap_err();
        assert!(matches!(err, RedoCallError::Timeout { .. }), "{err:?}");
        // The slot stays with the worker until it replies; the reply is refused.
        assert_eq!(queue.free_slots(), REDO_SLOTS - 1);
        assert_eq!(job.reply_ok(&[1; PAGE_SIZE]), Err(StaleJob));
    });
    assert_eq!(queue.free_slots(), REDO_SLOTS);
}

#[test]
fn dropped_job_is_retried_on_another_worker() {
    let queue = RedoQueue::new_boxed(2);
    let dropper = queue.attach_worker(0);
    let request = request_with(&mut Rng(4), 4, 3, 100, true, 0);
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let caller = s.spawn(|| queue.call(&request, LONG));
        drop(dropper.next(LONG).expect("first attempt goes to worker 0"));
        s.spawn(|| serve_until(&queue, 1, &stop));
        assert_eq!(caller.join().unwrap().unwrap(), expected_page(&request));
        stop.store(true, Ordering::Release);
    });
    assert_eq!(queue.stats().retries, 1);
    assert_eq!(queue.served_by(1), 1);
    assert_eq!(queue.free_slots(), REDO_SLOTS);
}

#[test]
fn reattached_worker_fails_in_flight_calls_and_the_retry_succeeds_elsewhere() {
    let queue = RedoQueue::new_boxed(2);
    let old_incarnation = queue.attach_worker(0);
    let request = request_with(&mut Rng(5), 5, 4, 200, true, FLAG_MASK_RESULT);
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        let caller = s.spawn(|| queue.call(&request, LONG));
        let held = old_incarnation.next(LONG).expect("first attempt goes to worker 0");
        s.spawn(|| serve_until(&queue, 1, &stop));
        // Worker 0 "crashes" and its successor attaches.
        let new_incarnation = queue.attach_worker(0);
        assert_eq!(new_incarnation.generation(), 2);
        assert!(!old_incarnation.is_current());
        assert_eq!(caller.join().unwrap().unwrap(), expected_page(&request));
        // The dead incarnation's late reply is refused and changes nothing.
        assert_eq!(held.reply_ok(&[0xEE; PAGE_SIZE]), Err(StaleJob));
        assert!(old_incarnation.next(Duration::ZERO).is_none());
        stop.store(true, Ordering::Release);
    });
    assert_eq!(queue.stats().retries, 1);
    assert_eq!(queue.served_by(1), 1);
    assert_eq!(queue.worker_generation(0), 2);
    assert_eq!(queue.free_slots(), REDO_SLOTS);
}

#[test]
fn new_incarnation_serves_requests_still_waiting_for_it() {
    let queue = RedoQueue::new_boxed(1);
    let request = request_with(&mut Rng(6), 6, 2, 64, true, 0);
    thread::scope(|s| {
        let caller = s.spawn(|| queue.call(&request, LONG));
        while queue.free_slots() == REDO_SLOTS {
            thread::yield_now();
        }
        // Submitted before any worker attached: the first one serves it.
        let end = queue.attach_worker(0);
        serve_job(end.next(LONG).expect("the waiting request"));
        assert_eq!(caller.join().unwrap().unwrap(), expected_page(&request));
    });
    assert_eq!(queue.stats().retries, 0);
}

#[test]
fn a_worker_dying_twice_is_reported() {
    let queue = RedoQueue::new_boxed(1);
    let end = queue.attach_worker(0);
    let request = request_with(&mut Rng(8), 8, 1, 30, false, 0);
    thread::scope(|s| {
        let caller = s.spawn(|| queue.call(&request, LONG));
        drop(end.next(LONG).expect("first attempt"));
        drop(end.next(LONG).expect("the retry"));
        let err = caller.join().unwrap().unwrap_err();
        assert!(matches!(err, RedoCallError::WorkerDied { worker: 0, .. }), "{err:?}");
    });
    assert_eq!(queue.stats().retries, 1);
    assert_eq!(queue.free_slots(), REDO_SLOTS);
}

#[test]
fn detached_worker_fails_requests_instead_of_hanging_them() {
    let queue = RedoQueue::new_boxed(1);
    drop(queue.attach_worker(0)); // started once, then exited
    let request = request_with(&mut Rng(9), 9, 1, 30, false, 0);
    let started = Instant::now();
    let err = queue.call(&request, LONG).unwrap_err();
    assert!(matches!(err, RedoCallError::WorkerDied { worker: 0, .. }), "{err:?}");
    assert!(started.elapsed() < LONG / 2);
    assert_eq!(queue.free_slots(), REDO_SLOTS);
}

#[test]
fn detaching_fails_requests_submitted_to_the_worker() {
    let queue = RedoQueue::new_boxed(1);
    let end = queue.attach_worker(0);
    let request = request_with(&mut Rng(10), 10, 1, 30, false, 0);
    thread::scope(|s| {
        let caller = s.spawn(|| queue.call(&request, LONG));
        while queue.free_slots() == REDO_SLOTS {
            thread::yield_now();
        }
        drop(end);
        let err = caller.join().unwrap().unwrap_err();
        assert!(matches!(err, RedoCallError::WorkerDied { worker: 0, .. }), "{err:?}");
    });
    assert_eq!(queue.free_slots(), REDO_SLOTS);
}

#[test]
fn callers_wait_for_a_free_slot() {
    let queue = RedoQueue::new_boxed(2);
    let stop = AtomicBool::new(false);
    let callers = REDO_SLOTS + 8;
    let requests: Vec<_> = (0..callers).map(|i| request_with(&mut Rng(100 + i as u64), i as u32, 2, 100, true, 0)).collect();
    thread::scope(|s| {
        let handles: Vec<_> = requests.iter().map(|r| s.spawn(|| queue.call(r, LONG))).collect();
        // No worker yet: every slot fills up and the rest of the callers wait.
        let deadline = Instant::now() + LONG;
        while queue.free_slots() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(queue.free_slots(), 0);
        for worker in 0..2 {
            let (queue, stop) = (&*queue, &stop);
            s.spawn(move || serve_until(queue, worker, stop));
        }
        for (handle, request) in handles.into_iter().zip(&requests) {
            assert_eq!(handle.join().unwrap().unwrap(), expected_page(request));
        }
        stop.store(true, Ordering::Release);
    });
    assert_eq!(queue.free_slots(), REDO_SLOTS);
}

/// A fake worker that records the flags of each chunk it serves.
fn serve_recording_flags(queue: &RedoQueue, stop: &AtomicBool, flags_seen: &std::sync::Mutex<Vec<u32>>) {
    let end = queue.attach_worker(0);
    while !stop.load(Ordering::Acquire) {
        if let Some(job) = end.next(Duration::from_millis(5)) {
            flags_seen.lock().unwrap().push(job.request().unwrap().flags);
            serve_job(job);
        }
    }
}

#[test]
fn a_request_larger_than_a_slot_is_chunked_with_the_same_result() {
    for with_base in [true, false] {
        let queue = RedoQueue::new_boxed(1);
        let stop = AtomicBool::new(false);
        let flags_seen = std::sync::Mutex::new(Vec::new());
        // ~600 KiB of records: three chunks of a 256 KiB slot.
        let request = request_with(&mut Rng(11), 11, 300, 2000, with_base, FLAG_MASK_RESULT);
        assert!(encoded_request_len(with_base, &request.records) > 2 * REDO_SLOT_BUFFER);
        thread::scope(|s| {
            s.spawn(|| serve_recording_flags(&queue, &stop, &flags_seen));
            assert!(queue.call(&request, LONG).unwrap() == expected_page(&request));
            stop.store(true, Ordering::Release);
        });
        let flags = flags_seen.into_inner().unwrap();
        assert_eq!(flags.len(), 3, "chunks");
        assert_eq!(flags, vec![0, 0, FLAG_MASK_RESULT], "only the last chunk masks");
        assert_eq!(queue.stats().round_trips, 3);
    }
}

#[test]
fn a_record_larger_than_a_slot_is_refused_and_the_largest_fits() {
    let queue = RedoQueue::new_boxed(1);
    let mut too_large = request_with(&mut Rng(12), 12, 1, 10, true, 0);
    too_large.records[0].raw = vec![7; max_record_len() + 1];
    match queue.call(&too_large, LONG) {
        Err(RedoCallError::TooLarge { message }) => {
            assert!(message.contains(&format!("{} bytes", max_record_len() + 1)), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(queue.free_slots(), REDO_SLOTS);

    let stop = AtomicBool::new(false);
    let mut largest = request_with(&mut Rng(13), 13, 3, 10, true, 0);
    largest.records[1].raw = vec![9; max_record_len()];
    thread::scope(|s| {
        s.spawn(|| serve_until(&queue, 0, &stop));
        assert!(queue.call(&largest, LONG).unwrap() == expected_page(&largest));
        stop.store(true, Ordering::Release);
    });
    assert_eq!(queue.stats().round_trips, 3, "the big record travels alone");
}

#[test]
fn records_may_borrow_their_bytes() {
    let queue = RedoQueue::new_boxed(1);
    let stop = AtomicBool::new(false);
    let owned = request_with(&mut Rng(19), 19, 5, 120, true, 0);
    let borrowed: RedoRequest<&[u8]> = RedoRequest {
        target: owned.target,
        base_image: owned.base_image.clone(),
        records: owned.records.iter().map(|r| RedoRecord { start_lsn: r.start_lsn, end_lsn: r.end_lsn, raw: r.raw.as_slice() }).collect(),
        flags: owned.flags,
    };
    assert_eq!(encode_request(&borrowed), encode_request(&owned));
    thread::scope(|s| {
        s.spawn(|| serve_until(&queue, 0, &stop));
        assert!(queue.call(&borrowed, LONG).unwrap() == expected_page(&owned));
        stop.store(true, Ordering::Release);
    });
}

#[test]
fn an_empty_request_returns_the_base_image() {
    let queue = RedoQueue::new_boxed(1);
    let stop = AtomicBool::new(false);
    let request = request_with(&mut Rng(14), 14, 0, 0, true, 0);
    thread::scope(|s| {
        s.spawn(|| serve_until(&queue, 0, &stop));
        assert!(queue.call(&request, LONG).unwrap() == **request.base_image.as_ref().unwrap());
        stop.store(true, Ordering::Release);
    });
}

// ------------------------------------------------------------ across processes

/// An anonymous shared mapping holding a queue and a stop word, inherited by
/// forked children; unmapped on drop.
struct SharedQueue {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is only accessed through &RedoQueue and &AtomicU32,
// both Sync.
unsafe impl Sync for SharedQueue {}

impl SharedQueue {
    const STOP_OFFSET: usize = RedoQueue::size().next_multiple_of(64);

    fn new(worker_count: usize) -> SharedQueue {
        let len = Self::STOP_OFFSET + 64;
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0)
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        let shared = SharedQueue { base: base as *mut u8, len };
        shared.queue().set_worker_count(worker_count);
        shared
    }

    fn queue(&self) -> &RedoQueue {
        // SAFETY: the mapping is page-aligned, large enough, zero-filled by
        // the kernel (a valid empty RedoQueue) and lives as long as self.
        unsafe { &*(self.base as *const RedoQueue) }
    }

    fn stop_word(&self) -> &AtomicU32 {
        // SAFETY: in bounds, 64-byte aligned, zero-initialised, lives as long as self.
        unsafe { &*(self.base.add(Self::STOP_OFFSET) as *const AtomicU32) }
    }
}

impl Drop for SharedQueue {
    fn drop(&mut self) {
        // SAFETY: we mapped exactly this range; children that shared it have
        // been reaped by their guards, which borrow self and drop first.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

/// A forked child running `body`; killed and reaped on drop if still there.
struct Child {
    pid: libc::pid_t,
    reaped: bool,
}

impl Child {
    /// Forks; the child runs `body` and `_exit`s with its result (101 on a
    /// panic), never returning into the test harness.
    fn fork(body: impl FnOnce() -> i32) -> Child {
        // SAFETY: the child only touches the shared mapping, atomics, futexes
        // and its own stack, then `_exit`s; it never returns to the harness
        // or runs the parent's atexit handlers.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = std::panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or(101);
            // SAFETY: ends the child without unwinding or atexit handlers.
            unsafe { libc::_exit(code) };
        }
        Child { pid, reaped: false }
    }

    /// Waits for the child; returns its exit code.
    fn wait(&mut self) -> i32 {
        let mut status = 0;
        // SAFETY: waits for our own child; status is a valid out pointer.
        let rc = unsafe { libc::waitpid(self.pid, &mut status, 0) };
        assert_eq!(rc, self.pid, "waitpid: {}", std::io::Error::last_os_error());
        self.reaped = true;
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: signals and reaps our own child process.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// Child body: a fake worker serving until the stop word is set. No heap
/// allocation on this path (the parent is multi-threaded at fork time).
fn child_worker(shared: &SharedQueue, worker: usize) -> i32 {
    let end = shared.queue().attach_worker(worker);
    while shared.stop_word().load(Ordering::Acquire) == 0 {
        if let Some(job) = end.next(Duration::from_millis(5)) {
            serve_job(job);
        }
    }
    0
}

fn wait_for_generation(queue: &RedoQueue, worker: usize, generation: u32) {
    let deadline = Instant::now() + LONG;
    while queue.worker_generation(worker) < generation {
        assert!(Instant::now() < deadline, "worker {worker} never attached");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn cross_process_worker_serves_a_parent_caller() {
    let shared = SharedQueue::new(1);
    let mut child = Child::fork(|| child_worker(&shared, 0));
    let mut rng = Rng(0xC0FFEE);
    for call in 0..200 {
        let request = random_request(&mut rng, call);
        assert!(shared.queue().call(&request, LONG).unwrap() == expected_page(&request), "call {call}");
    }
    let big = request_with(&mut rng, 7, 300, 2000, true, FLAG_MASK_RESULT);
    assert!(shared.queue().call(&big, LONG).unwrap() == expected_page(&big));
    let err = shared.queue().call(&request_with(&mut rng, ERROR_BLOCK, 1, 30, true, 0), LONG).unwrap_err();
    assert!(matches!(err, RedoCallError::Redo { rmgr: 10, .. }), "{err:?}");
    shared.stop_word().store(1, Ordering::Release);
    assert_eq!(child.wait(), 0);
    assert_eq!(shared.queue().served_by(0), 200 + 3 + 1, "the big request took three chunks");
    assert_eq!(shared.queue().free_slots(), REDO_SLOTS);
}

#[test]
fn cross_process_worker_death_is_detected_and_retried() {
    let shared = SharedQueue::new(2);
    // Worker 0 takes one request and dies holding it.
    let mut doomed = Child::fork(|| {
        let end = shared.queue().attach_worker(0);
        let job = end.next(LONG);
        std::mem::forget(job); // no reply, no drop: the process just ends
        3
    });
    let mut healthy = Child::fork(|| child_worker(&shared, 1));
    wait_for_generation(shared.queue(), 0, 1);
    wait_for_generation(shared.queue(), 1, 1);
    let request = request_with(&mut Rng(15), 15, 3, 500, true, 0);
    thread::scope(|s| {
        // Round robin starts at worker 0, the doomed one.
        let caller = s.spawn(|| shared.queue().call(&request, LONG));
        assert_eq!(doomed.wait(), 3); // reaped: kill(pid, 0) now says ESRCH
        assert!(caller.join().unwrap().unwrap() == expected_page(&request));
    });
    assert_eq!(shared.queue().stats().retries, 1);
    assert_eq!(shared.queue().served_by(1), 1);
    shared.stop_word().store(1, Ordering::Release);
    assert_eq!(healthy.wait(), 0);
    assert_eq!(shared.queue().free_slots(), REDO_SLOTS);
}

fn slots_in_state(queue: &RedoQueue, state: u32) -> usize {
    queue.headers.iter().filter(|h| state_of(h.word.load(Ordering::Acquire)) == state).count()
}

#[test]
fn slots_of_a_dead_caller_process_are_reclaimed() {
    let shared = SharedQueue::new(1);
    let queue = shared.queue();
    let end = queue.attach_worker(0); // the worker is this (parent) process
    let requests = [request_with(&mut Rng(16), 16, 1, 40, true, 0), request_with(&mut Rng(17), 17, 1, 40, true, 0)];
    // The child submits two requests from two threads, then is killed while
    // the worker holds one and the other is still waiting.
    let mut caller = Child::fork(|| {
        thread::scope(|s| {
            for request in &requests {
                s.spawn(|| queue.call(request, LONG));
            }
        });
        0
    });
    let job = end.next(LONG).expect("a request from the child");
    let deadline = Instant::now() + LONG;
    while slots_in_state(queue, SUBMITTED) < 1 {
        assert!(Instant::now() < deadline, "the child never submitted its second request");
        thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: kills our own child.
    unsafe { libc::kill(caller.pid, libc::SIGKILL) };
    assert_eq!(caller.wait(), -1);
    assert_eq!(queue.reap_slots_of_dead_callers(), 2);
    assert_eq!(queue.free_slots(), REDO_SLOTS - 1, "the taken one waits for its worker");
    assert_eq!(job.reply_ok(&[0; PAGE_SIZE]), Err(StaleJob));
    assert_eq!(queue.free_slots(), REDO_SLOTS);
}

#[test]
fn a_slot_held_by_a_dead_worker_for_a_dead_caller_is_reclaimed() {
    let shared = SharedQueue::new(1);
    let queue = shared.queue();
    let mut worker = Child::fork(|| {
        let end = queue.attach_worker(0);
        let _job = end.next(LONG);
        loop {
            thread::sleep(Duration::from_secs(1)); // holds the job until killed
        }
    });
    let request = request_with(&mut Rng(20), 20, 1, 40, true, 0);
    let mut caller = Child::fork(|| queue.call(&request, LONG).map_or(1, |_| 0));
    let deadline = Instant::now() + LONG;
    while slots_in_state(queue, IN_PROGRESS) < 1 {
        assert!(Instant::now() < deadline, "the worker never took the request");
        thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: kills our own children.
    unsafe { libc::kill(caller.pid, libc::SIGKILL) };
    assert_eq!(caller.wait(), -1);
    assert_eq!(queue.reap_slots_of_dead_callers(), 1);
    assert_eq!(slots_in_state(queue, ABANDONED), 1, "left for its live worker to free");
    // SAFETY: as above.
    unsafe { libc::kill(worker.pid, libc::SIGKILL) };
    assert_eq!(worker.wait(), -1);
    assert_eq!(queue.reap_slots_of_dead_callers(), 1);
    assert_eq!(queue.free_slots(), REDO_SLOTS);
}

#[test]
fn cancelled_call_gives_up_and_frees_its_slot() {
    let queue = RedoQueue::new_boxed(1);
    let request = request_with(&mut Rng(18), 18, 1, 40, true, 0);
    let mut asked = 0;
    let err = queue
        .call_cancellable(&request, LONG, &mut || {
            asked += 1;
            asked == 3
        })
        .unwrap_err();
    assert_eq!(err, RedoCallError::Cancelled);
    assert_eq!(asked, 3);
    assert_eq!(queue.free_slots(), REDO_SLOTS);
}

/// Round-trip latency between two processes, with the caller and the worker
/// on two cores, then sharing one (as on a host with more busy processes
/// than cores), each next to a bare futex ping-pong with the same spin
/// policy. Run with
/// `cargo test --release -p shared_mem -- --ignored --nocapture round_trip_benchmark`.
#[test]
#[ignore = "benchmark"]
fn round_trip_benchmark() {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let placements: &[(&str, usize, usize)] =
        if cpus >= 2 { &[("two cores", 0, 1), ("one shared core", 0, 0)] } else { &[("one shared core", 0, 0)] };
    for &(placement, caller_cpu, worker_cpu) in placements {
        let restore = pin_to_cpu(caller_cpu);
        bench_queue(placement, worker_cpu);
        bench_bare_ping_pong(placement, worker_cpu);
        restore_affinity(&restore);
    }
}

const BENCH_WARMUP: usize = 2_000;
const BENCH_CALLS: usize = 20_000;

fn bench_queue(placement: &str, worker_cpu: usize) {
    let shared = SharedQueue::new(1);
    let mut child = Child::fork(|| {
        pin_to_cpu(worker_cpu);
        child_worker(&shared, 0)
    });
    let mut rng = Rng(99);
    let cases = [
        ("empty request (no base, no records)", request_with(&mut rng, 1, 0, 0, false, 0)),
        ("base image + 1 record of 100 B", request_with(&mut rng, 1, 1, 100, true, 0)),
        ("base image + 8 records of 200 B", request_with(&mut rng, 1, 8, 200, true, 0)),
    ];
    for (name, request) in &cases {
        for _ in 0..BENCH_WARMUP {
            shared.queue().call(request, LONG).unwrap();
        }
        let mut latencies = Vec::with_capacity(BENCH_CALLS);
        for _ in 0..BENCH_CALLS {
            let started = Instant::now();
            shared.queue().call(request, LONG).unwrap();
            latencies.push(started.elapsed());
        }
        println!("queue round trip, {placement}, {name}: {}", summary(&mut latencies));
    }
    shared.stop_word().store(1, Ordering::Release);
    assert_eq!(child.wait(), 0);
}

/// Baseline: two processes passing a counter through two futex words.
fn bench_bare_ping_pong(placement: &str, worker_cpu: usize) {
    let ping = SharedQueue::new(0);
    let (to_child, to_parent) = (ping.queue().ports[0].doorbell_word(), ping.queue().ports[1].doorbell_word());
    let rounds = (BENCH_WARMUP + BENCH_CALLS) as u32;
    let mut child = Child::fork(|| {
        pin_to_cpu(worker_cpu);
        for i in 1..=rounds {
            wait_for_value(to_child, i);
            to_parent.store(i, Ordering::SeqCst);
            futex::wake(to_parent, 1);
        }
        0
    });
    let mut latencies = Vec::with_capacity(BENCH_CALLS);
    for i in 1..=rounds {
        let started = Instant::now();
        to_child.store(i, Ordering::SeqCst);
        futex::wake(to_child, 1);
        wait_for_value(to_parent, i);
        if i as usize > BENCH_WARMUP {
            latencies.push(started.elapsed());
        }
    }
    println!("bare futex ping-pong, {placement}: {}", summary(&mut latencies));
    assert_eq!(child.wait(), 0);
}

/// Pins the calling thread to `cpu`; returns the previous affinity.
fn pin_to_cpu(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain data for which all-zero is the empty set;
    // sched_{get,set}affinity(0, ...) act on the calling thread and only
    // read/write the set we pass with its exact size.
    unsafe {
        let mut previous: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut previous);
        let mut only: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut only);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &only);
        previous
    }
}

fn restore_affinity(set: &libc::cpu_set_t) {
    // SAFETY: as in pin_to_cpu.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
}

/// "median 1.23 µs, p90 …, p99 …, mean …" of a set of latencies.
fn summary(latencies: &mut [Duration]) -> String {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    let us = |d: Duration| d.as_nanos() as f64 / 1000.0;
    format!("median {:.2} µs, p90 {:.2} µs, p99 {:.2} µs, mean {:.2} µs", us(at(0.5)), us(at(0.9)), us(at(0.99)), us(mean))
}

/// Spins as the queue does ([`futex::Spinner`]), then sleeps on the futex, until `word == value`.
fn wait_for_value(word: &AtomicU32, value: u32) {
    let mut spinner = futex::Spinner::new();
    loop {
        let current = word.load(Ordering::Acquire);
        if current == value {
            return;
        }
        if !spinner.spin() {
            futex::wait(word, current, Duration::from_millis(100));
        }
    }
}

impl WorkerPort {
    fn doorbell_word(&self) -> &AtomicU32 {
        &self.doorbell
    }
}
