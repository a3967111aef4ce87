//! Benchmark of the page service: GetPage requests over pagestream v2/v3.
//!
//! Opens `--connections` pagestream sessions to the page server at `--addr`,
//! keeps `--depth` GetPage requests in flight on each (pipelined; answers come
//! in request order), and after `--warmup` seconds measures for `--duration`
//! seconds: pages per second and the latency of each request (from queueing
//! it to reading its answer) as p50/p99/p99.9 from an HDR histogram.
//!
//! Blocks come from the relations given by `--rel spc/db/rel[_fsm|_vm|_init]:nblocks`
//! (repeatable), chosen by `--pattern`: `random` (uniform over all blocks),
//! `sequential` (each connection walks all blocks from its own starting point)
//! or `hot:N` (uniform over the first N blocks). Every request reads at
//! `--request-lsn` (`X/Y`, or `latest` for the largest LSN) with
//! `not_modified_since` = `--not-modified-since`, by default the request LSN
//! (required with `latest`). With `--lsn-from <primary conninfo>` the LSNs
//! move as a compute's do while its primary writes: a thread polls the
//! primary's `pg_current_wal_lsn()` every 5 ms, and each request carries the
//! newest one as `request_lsn` and, as `not_modified_since`, the one of
//! `--not-modified-lag-ms` ago (a compute's last-written LSN for a page it
//! has not written lately), so the server need not wait for WAL that did not
//! touch the page.
//!
//! `--floor` starts a trivial page server on 127.0.0.1 (startup, trust,
//! CopyBoth, and a fixed 8 KiB page for every GetPage; built on the page
//! service's own protocol code, `service::page_service::pq`, and the
//! pagestream codec) in a child process
//! (`pagebench --serve-floor`, a two-worker tokio runtime like the page
//! server's) and runs the same client against it: the cost of the protocol,
//! framing, client, loopback TCP and the cross-process wake-ups alone. The
//! real server's figures are compared with it. (A server inside the client's
//! own process would answer without any process being woken: at depth 1 that
//! measured 15 µs against 60 µs for the separate process on the 2-core
//! benchmark machine, a floor no page server in another process can reach.)
//!
//! Prints the result as text, or with `--json` as one JSON line on stdout
//! (the text then goes to stderr). Any error (a pagestream Error response, a
//! malformed response, a dropped connection) ends the run with a message and
//! exit code 1.
//!
//! ```text
//! pagebench --addr 127.0.0.1:6400 --tenant T --timeline L --rel 1663/5/16384:12800 \
//!           --request-lsn 0/16B3748 --connections 8 --depth 32 --duration 10 --json
//! pagebench --floor --connections 8 --depth 32 --duration 10 --json
//! ```

use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use storage::key::{RelTag, FSM_FORKNUM, INIT_FORKNUM, MAIN_FORKNUM, VISIBILITYMAP_FORKNUM};
use storage::lsn::Lsn;
use storage::pagestream::{ProtocolVersion, Request, RequestHeader, Response};
use tools::pagestream_client::{ConnectOptions, PagestreamClient};

const FLOOR_REL: &str = "1663/5/16384:131072";
const FLOOR_LSN: &str = "0/16B3748";
const FLOOR_ID: &str = "00000000000000000000000000000000";

#[derive(Parser, Debug)]
#[command(name = "pagebench", about = "Benchmark of the page service's GetPage over pagestream v2/v3")]
struct Args {
    /// The page server's libpq address, host:port.
    #[arg(long, required_unless_present_any = ["floor", "serve_floor"])]
    addr: Option<String>,
    /// Tenant id (as the pagestream command takes it).
    #[arg(long, required_unless_present_any = ["floor", "serve_floor"])]
    tenant: Option<String>,
    /// Timeline id.
    #[arg(long, required_unless_present_any = ["floor", "serve_floor"])]
    timeline: Option<String>,
    /// Pagestream protocol version: v2 or v3.
    #[arg(long, default_value = "v3", value_parser = parse_version)]
    protocol: ProtocolVersion,
    /// Relation fork to read and its size: spc/db/rel[_fsm|_vm|_init]:nblocks. Repeatable.
    #[arg(long = "rel", value_parser = parse_rel, required_unless_present_any = ["floor", "serve_floor"])]
    rels: Vec<(RelTag, u32)>,
    /// random | sequential | hot:N (the first N blocks of the relation set).
    #[arg(long, default_value = "random")]
    pattern: Pattern,
    /// The request LSN: X/Y, or `latest` (the largest LSN).
    #[arg(long, alias = "lsn", value_parser = parse_request_lsn, required_unless_present_any = ["floor", "serve_floor", "lsn_from"])]
    request_lsn: Option<Lsn>,
    /// not_modified_since, X/Y; defaults to the request LSN.
    #[arg(long, value_parser = parse_lsn)]
    not_modified_since: Option<Lsn>,
    /// Take both LSNs of each request from this primary (libpq conninfo),
    /// polled every 5 ms, instead of --request-lsn/--not-modified-since.
    #[arg(long, conflicts_with_all = ["request_lsn", "not_modified_since"])]
    lsn_from: Option<String>,
    /// With --lsn-from: how far behind the newest LSN not_modified_since is.
    #[arg(long, default_value_t = 1000)]
    not_modified_lag_ms: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Seconds measured (after the warmup).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds run before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Stop issuing after this many requests in all (warmup included).
    #[arg(long)]
    max_requests: Option<u64>,
    /// Seconds to wait for any one response before failing.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Seed of the block choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// User name in the startup message.
    #[arg(long, default_value = "pagebench")]
    user: String,
    /// Password (e.g. a JWT) if the server asks for one.
    #[arg(long, env = "PAGEBENCH_PASSWORD")]
    password: Option<String>,
    /// Print one JSON line on stdout (the text goes to stderr).
    #[arg(long)]
    json: bool,
    /// Benchmark a trivial page server instead of --addr: the floor.
    #[arg(long)]
    floor: bool,
    /// Run only the floor server: print its address on stdout, serve until
    /// stdin closes. `--floor` starts one of these.
    #[arg(long, hide = true)]
    serve_floor: bool,
}

fn parse_version(s: &str) -> Result<ProtocolVersion, String> {
    match s {
        "v2" | "2" => Ok(ProtocolVersion::V2),
        "v3" | "3" => Ok(ProtocolVersion::V3),
        _ => Err(format!("unknown protocol version {s:?}: expected v2 or v3")),
    }
}

fn parse_lsn(s: &str) -> Result<Lsn, String> {
    Lsn::from_str(s).map_err(|e| e.to_string())
}

fn parse_request_lsn(s: &str) -> Result<Lsn, String> {
    if s == "latest" {
        Ok(Lsn::MAX)
    } else {
        parse_lsn(s)
    }
}

fn parse_rel(s: &str) -> Result<(RelTag, u32), String> {
    let err = |why: &str| format!("invalid --rel {s:?}: {why} (expected spc/db/rel[_fsm|_vm|_init]:nblocks, like 1663/5/16384:1000)");
    let (rel, nblocks) = s.rsplit_once(':').ok_or_else(|| err("no ':nblocks'"))?;
    let nblocks: u32 = nblocks.parse().map_err(|_| err("nblocks is not a number"))?;
    if nblocks == 0 {
        return Err(err("nblocks must be at least 1"));
    }
    let (rel, fork) = match rel.rsplit_once('_') {
        Some((rel, "fsm")) => (rel, FSM_FORKNUM),
        Some((rel, "vm")) => (rel, VISIBILITYMAP_FORKNUM),
        Some((rel, "init")) => (rel, INIT_FORKNUM),
        Some(_) => return Err(err("unknown fork suffix")),
        None => (rel, MAIN_FORKNUM),
    };
    let oids: Vec<u32> = rel.split('/').map(|p| p.parse::<u32>()).collect::<Result<_, _>>().map_err(|_| err("an OID is not a number"))?;
    let [spc, db, rel] = oids[..] else { return Err(err("not three OIDs")) };
    Ok((RelTag::new(spc, db, rel, fork), nblocks))
}

#[derive(Clone, Copy, Debug)]
enum Pattern {
    Random,
    Sequential,
    Hot(u64),
}

impl FromStr for Pattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Pattern, String> {
        match s {
            "random" => Ok(Pattern::Random),
            "sequential" => Ok(Pattern::Sequential),
            _ => match s.strip_prefix("hot:").map(str::parse::<u64>) {
                Some(Ok(n)) if n > 0 => Ok(Pattern::Hot(n)),
                _ => Err(format!("unknown pattern {s:?}: expected random, sequential or hot:N with N > 0")),
            },
        }
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Random => write!(f, "random"),
            Pattern::Sequential => write!(f, "sequential"),
            Pattern::Hot(n) => write!(f, "hot:{n}"),
        }
    }
}

/// All blocks of the relation set, numbered 0..total in --rel order.
struct Blocks {
    rels: Vec<(RelTag, u32)>,
    starts: Vec<u64>,
    total: u64,
}

impl Blocks {
    fn new(rels: Vec<(RelTag, u32)>) -> Blocks {
        let mut starts = Vec::with_capacity(rels.len());
        let mut total = 0u64;
        for (_, n) in &rels {
            starts.push(total);
            total += u64::from(*n);
        }
        Blocks { rels, starts, total }
    }

    fn at(&self, global: u64) -> (RelTag, u32) {
        let i = self.starts.partition_point(|&s| s <= global) - 1;
        (self.rels[i].0, (global - self.starts[i]) as u32)
    }
}

/// Chooses the blocks of one connection.
struct Picker {
    rng: u64,
    limit: u64,
    sequential: Option<u64>,
}

impl Picker {
    fn new(pattern: Pattern, blocks: &Blocks, conn: usize, conns: usize, seed: u64) -> Picker {
        let rng = (seed ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(conn as u64 * 2 + 1) | 1;
        match pattern {
            Pattern::Random => Picker { rng, limit: blocks.total, sequential: None },
            Pattern::Hot(n) => Picker { rng, limit: n.min(blocks.total), sequential: None },
            Pattern::Sequential => {
                let start = blocks.total * conn as u64 / conns as u64;
                Picker { rng, limit: blocks.total, sequential: Some(start) }
            }
        }
    }

    fn next(&mut self) -> u64 {
        if let Some(cursor) = &mut self.sequential {
            let g = *cursor;
            *cursor = (*cursor + 1) % self.limit;
            return g;
        }
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % self.limit
    }
}

struct Plan {
    addr: String,
    tenant: String,
    timeline: String,
    version: ProtocolVersion,
    blocks: Blocks,
    pattern: Pattern,
    request_lsn: Lsn,
    not_modified_since: Lsn,
    /// With `--lsn-from`: the LSNs to use instead of the two above.
    live: Option<Arc<LiveLsns>>,
    depth: usize,
    measure_start: Instant,
    end: Instant,
    max_requests: Option<u64>,
    issued: AtomicU64,
    timeout: Duration,
    options: ConnectOptions,
    connections: usize,
    seed: u64,
}

struct ConnResult {
    hist: Histogram<u64>,
    last_done: Option<Instant>,
}

fn new_histogram() -> Histogram<u64> {
    // Nanoseconds, 1 ns .. 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

async fn run_connection(plan: Arc<Plan>, conn: usize, mut client: PagestreamClient) -> anyhow::Result<ConnResult> {
    let mut picker = Picker::new(plan.pattern, &plan.blocks, conn, plan.connections, plan.seed);
    let mut hist = new_histogram();
    let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(plan.depth);
    let mut last_done = None;
    let mut reqid = (conn as u64) << 48;
    loop {
        let may_issue = |plan: &Plan| {
            Instant::now() < plan.end && plan.max_requests.is_none_or(|max| plan.issued.fetch_add(1, Ordering::Relaxed) < max)
        };
        while client.in_flight() < plan.depth && may_issue(&plan) {
            let (rel, blkno) = plan.blocks.at(picker.next());
            reqid += 1;
            let (request_lsn, not_modified_since) = match &plan.live {
                Some(live) => live.get(),
                None => (plan.request_lsn, plan.not_modified_since),
            };
            let hdr = RequestHeader { reqid, request_lsn, not_modified_since };
            client.queue(Request::GetPage { hdr, rel, blkno });
            sent_at.push_back(Instant::now());
        }
        if client.in_flight() == 0 {
            break;
        }
        let response =
            tokio::time::timeout(plan.timeout, client.recv()).await.map_err(|_| anyhow!("no response within {:?}", plan.timeout))??;
        let done = Instant::now();
        let sent = sent_at.pop_front().expect("one timestamp per request in flight");
        match response {
            Response::GetPage { .. } => {}
            Response::Error { message, .. } => bail!("the server answered a GetPage request with an error: {message}"),
            other => bail!("GetPage answered by a {} response", other.kind_name()),
        }
        if sent >= plan.measure_start && done <= plan.end {
            hist.saturating_record(done.duration_since(sent).as_nanos() as u64);
            last_done = Some(done);
        }
    }
    client.close().await?;
    Ok(ConnResult { hist, last_done })
}

/// The LSNs of a primary as a compute would send them (`--lsn-from`).
struct LiveLsns {
    request_lsn: AtomicU64,
    not_modified_since: AtomicU64,
    stop: std::sync::atomic::AtomicBool,
}

impl LiveLsns {
    fn get(&self) -> (Lsn, Lsn) {
        // Read `not_modified_since` first: it is never above a later `request_lsn`.
        let since = Lsn(self.not_modified_since.load(Ordering::Acquire));
        (Lsn(self.request_lsn.load(Ordering::Acquire)), since)
    }

    /// Connects to the primary, takes its first LSN (for both), and starts
    /// the thread that keeps them moving until `stop`.
    fn start(conninfo: &str, lag: Duration) -> anyhow::Result<(Arc<LiveLsns>, std::thread::JoinHandle<anyhow::Result<()>>)> {
        let mut client = postgres::Client::connect(conninfo, postgres::NoTls).context("connecting to --lsn-from")?;
        let mut poll = move || -> anyhow::Result<Lsn> {
            let row = client.query_one("SELECT pg_current_wal_lsn()::text", &[])?;
            row.get::<_, String>(0).parse().map_err(|e| anyhow!("bad LSN from the primary: {e}"))
        };
        let first = poll()?;
        let live = Arc::new(LiveLsns {
            request_lsn: AtomicU64::new(first.0),
            not_modified_since: AtomicU64::new(first.0),
            stop: std::sync::atomic::AtomicBool::new(false),
        });
        let shared = live.clone();
        let thread = std::thread::spawn(move || {
            let mut history: VecDeque<(Instant, Lsn)> = VecDeque::new();
            while !shared.stop.load(Ordering::Relaxed) {
                let lsn = poll()?;
                let now = Instant::now();
                history.push_back((now, lsn));
                while history.len() > 1 && now.duration_since(history[1].0) >= lag {
                    history.pop_front();
                }
                if now.duration_since(history[0].0) >= lag {
                    shared.not_modified_since.store(history[0].1 .0, Ordering::Release);
                }
                shared.request_lsn.store(lsn.0, Ordering::Release);
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        });
        Ok((live, thread))
    }
}

async fn run(plan: Arc<Plan>) -> anyhow::Result<(Histogram<u64>, Duration)> {
    // Connect everything first, so the warmup and measurement see a steady set.
    let mut clients = Vec::with_capacity(plan.connections);
    for conn in 0..plan.connections {
        let client = PagestreamClient::connect_with(plan.addr.as_str(), plan.version, &plan.tenant, &plan.timeline, &plan.options)
            .await
            .with_context(|| format!("connection {conn} to {}", plan.addr))?;
        clients.push(client);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (conn, client) in clients.into_iter().enumerate() {
        let plan = plan.clone();
        tasks.spawn(async move { run_connection(plan, conn, client).await.with_context(|| format!("connection {conn}")) });
    }
    let mut hist = new_histogram();
    let mut last_done: Option<Instant> = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.context("a connection task panicked")??;
        hist.add(&result.hist).expect("histograms of equal bounds");
        last_done = last_done.max(result.last_done);
    }
    let measured = last_done.map_or(Duration::ZERO, |t| t.min(plan.end).duration_since(plan.measure_start));
    Ok((hist, measured))
}

fn main() {
    let args = Args::parse();
    if let Err(e) = real_main(args) {
        eprintln!("pagebench: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(args: Args) -> anyhow::Result<()> {
    if args.serve_floor {
        return floor::serve_until_stdin_closes();
    }
    if args.connections == 0 || args.depth == 0 {
        bail!("--connections and --depth must be at least 1");
    }
    if !(args.duration > 0.0 && args.warmup >= 0.0 && args.timeout > 0.0) {
        bail!("--duration and --timeout must be positive, --warmup not negative");
    }
    let rels = if args.rels.is_empty() { vec![parse_rel(FLOOR_REL).map_err(|e| anyhow!(e))?] } else { args.rels.clone() };
    let request_lsn = match args.request_lsn {
        Some(lsn) => lsn,
        None => parse_lsn(FLOOR_LSN).map_err(|e| anyhow!(e))?,
    };
    let not_modified_since = match args.not_modified_since {
        Some(lsn) => lsn,
        None if request_lsn == Lsn::MAX && args.lsn_from.is_none() => {
            bail!("--request-lsn latest needs --not-modified-since X/Y (the protocol wants a real LSN there)")
        }
        None => request_lsn,
    };
    if not_modified_since > request_lsn {
        bail!("--not-modified-since {not_modified_since} is after --request-lsn {request_lsn}");
    }

    let live = match &args.lsn_from {
        Some(conninfo) => Some(LiveLsns::start(conninfo, Duration::from_millis(args.not_modified_lag_ms))?),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async {
        // Kept until the run ends: the floor server process lives as long.
        let mut floor_server = None;
        let addr = if args.floor {
            let (child, addr) = floor::spawn_process().context("starting the floor server")?;
            floor_server = Some(child);
            addr
        } else {
            args.addr.clone().expect("clap requires --addr without --floor")
        };
        let blocks = Blocks::new(rels);
        let describe = format!(
            "pagebench: {} {}, pagestream {}, {} connection(s) x depth {}, {} over {} block(s) of {} relation(s), \
             request_lsn {} not_modified_since {}, {:.1} s after {:.1} s warmup",
            if args.floor { "floor server" } else { "page server" },
            addr,
            args.protocol,
            args.connections,
            args.depth,
            args.pattern,
            blocks.total,
            blocks.rels.len(),
            if live.is_some() { "from the primary".to_string() } else { request_lsn.to_string() },
            if live.is_some() { format!("{} ms behind", args.not_modified_lag_ms) } else { not_modified_since.to_string() },
            args.duration,
            args.warmup,
        );
        let start = Instant::now();
        let measure_start = start + Duration::from_secs_f64(args.warmup);
        let plan = Arc::new(Plan {
            addr,
            tenant: args.tenant.clone().unwrap_or_else(|| FLOOR_ID.into()),
            timeline: args.timeline.clone().unwrap_or_else(|| FLOOR_ID.into()),
            version: args.protocol,
            blocks,
            pattern: args.pattern,
            request_lsn,
            not_modified_since,
            live: live.as_ref().map(|(live, _)| live.clone()),
            depth: args.depth,
            measure_start,
            end: measure_start + Duration::from_secs_f64(args.duration),
            max_requests: args.max_requests,
            issued: AtomicU64::new(0),
            timeout: Duration::from_secs_f64(args.timeout),
            options: ConnectOptions {
                user: args.user.clone(),
                password: args.password.clone(),
                application_name: "pagebench".into(),
                connect_timeout: Duration::from_secs_f64(args.timeout),
            },
            connections: args.connections,
            seed: args.seed,
        });
        let outcome = run(plan.clone()).await;
        if let Some((live, thread)) = live {
            live.stop.store(true, Ordering::Relaxed);
            thread.join().map_err(|_| anyhow!("the --lsn-from thread panicked"))?.context("polling --lsn-from")?;
        }
        let (hist, measured) = outcome?;
        report(&args, &describe, &hist, measured);
        if let Some(mut child) = floor_server {
            drop(child.stdin.take()); // its signal to exit
            child.wait().context("waiting for the floor server to exit")?;
        }
        Ok(())
    })
}

fn report(args: &Args, describe: &str, hist: &Histogram<u64>, measured: Duration) {
    let pages = hist.len();
    let secs = measured.as_secs_f64();
    let rate = if secs > 0.0 { pages as f64 / secs } else { 0.0 };
    let us = |q: f64| if pages == 0 { 0.0 } else { hist.value_at_quantile(q) as f64 / 1000.0 };
    let (p50, p99, p999) = (us(0.5), us(0.99), us(0.999));
    let max = if pages == 0 { 0.0 } else { hist.max() as f64 / 1000.0 };
    let mean = if pages == 0 { 0.0 } else { hist.mean() / 1000.0 };
    let text = format!(
        "{describe}\npages: {pages} in {secs:.3} s = {rate:.0} pages/s\nlatency (us): p50 {p50:.1}  p99 {p99:.1}  p99.9 {p999:.1}  max {max:.1}  mean {mean:.1}"
    );
    if args.json {
        eprintln!("{text}");
        let line = serde_json::json!({
            "bench": "pagebench",
            "mode": if args.floor { "floor" } else { "server" },
            "protocol": args.protocol.to_string(),
            "connections": args.connections,
            "depth": args.depth,
            "pattern": args.pattern.to_string(),
            "duration_s": secs,
            "pages": pages,
            "pages_per_s": rate,
            "p50_us": p50,
            "p99_us": p99,
            "p999_us": p999,
            "max_us": max,
            "mean_us": mean,
        });
        println!("{line}");
    } else {
        println!("{text}");
    }
}

/// The floor: a page server that does nothing but speak the protocol, in a
/// process of its own as the real page server is (so both pay the same
/// cross-process wake-ups on every round trip).
mod floor {
    use std::io::{self, BufRead, Read};
    use std::net::SocketAddr;
    use std::process::{Child, Command, Stdio};

    use anyhow::Context;

    use bytes::{Bytes, BytesMut};
    use service::page_service::pq::{self, BackendWriter, FrontendMessage};
    use storage::pagestream::{ProtocolVersion, Request, Response};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const NBLOCKS: u32 = 131072;

    /// Starts `pagebench --serve-floor`; returns it and its address. It
    /// exits when its stdin closes.
    pub fn spawn_process() -> anyhow::Result<(Child, String)> {
        let exe = std::env::current_exe().context("finding pagebench's own executable")?;
        let mut child = Command::new(exe)
            .arg("--serve-floor")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting pagebench --serve-floor")?;
        let mut line = String::new();
        io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        let addr = line.trim().to_string();
        if addr.parse::<SocketAddr>().is_err() {
            let _ = child.kill();
            anyhow::bail!("the floor server did not print its address (got {line:?})");
        }
        Ok((child, addr))
    }

    /// The `--serve-floor` process: the floor server on a tokio runtime
    /// shaped like the page server's (multi-threaded, two workers).
    pub fn serve_until_stdin_closes() -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let addr = runtime.block_on(start())?;
        println!("{addr}");
        let mut sink = Vec::new();
        io::stdin().read_to_end(&mut sink)?;
        Ok(())
    }

    /// Binds 127.0.0.1:0 and serves every connection on its own task.
    pub async fn start() -> io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let page = Bytes::from((0..8192u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let page = page.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, page).await {
                        eprintln!("pagebench: floor server: {e}");
                    }
                });
            }
        });
        Ok(addr)
    }

    /// The floor's answer: a constant page, every relation exists with
    /// [`NBLOCKS`] blocks.
    fn answer(request: &Request, page: &Bytes) -> Response {
        let hdr = *request.header();
        match *request {
            Request::Exists { rel, .. } => Response::Exists { hdr, rel, exists: true },
            Request::Nblocks { rel, .. } => Response::Nblocks { hdr, rel, n: NBLOCKS },
            Request::GetPage { rel, blkno, .. } => Response::GetPage { hdr, rel, blkno, page: page.clone() },
            Request::DbSize { db_oid, .. } => Response::DbSize { hdr, db_oid, bytes: i64::from(NBLOCKS) * 8192 },
            Request::GetSlruSegment { kind, segno, .. } => Response::GetSlruSegment { hdr, kind, segno, segment: page.clone() },
        }
    }

    fn invalid(e: impl std::fmt::Display) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e.to_string())
    }

    /// One connection, with the page service's own protocol code
    /// (`service::page_service::pq`): startup (SSL refused), trust, simple
    /// queries up to `pagestream_vN`, then every complete request in the
    /// buffer is answered and all answers are written at once.
    async fn serve(mut stream: TcpStream, page: Bytes) -> io::Result<()> {
        stream.set_nodelay(true)?;
        let mut out = BytesMut::with_capacity(64 * 1024);
        match pq::read_startup(&mut stream).await {
            Ok(pq::Startup::Session(_)) => {}
            Ok(pq::Startup::Cancel) | Err(pq::ProtocolError::Closed) => return Ok(()),
            Err(e) => return Err(invalid(e)),
        }
        let mut w = BackendWriter(&mut out);
        w.authentication_ok();
        w.ready_for_query();
        stream.write_all(&out).await?;
        out.clear();

        let version = loop {
            let query = match pq::read_message(&mut stream).await {
                Ok(FrontendMessage::Query(query)) => query,
                Ok(FrontendMessage::Terminate) | Err(pq::ProtocolError::Closed) => return Ok(()),
                Ok(_) => {
                    let mut w = BackendWriter(&mut out);
                    w.error("0A000", "floor server: only simple queries are supported", None);
                    w.ready_for_query();
                    stream.write_all(&out).await?;
                    out.clear();
                    continue;
                }
                Err(e) => return Err(invalid(e)),
            };
            let command = query.split_whitespace().next().unwrap_or_default();
            match ProtocolVersion::from_command(command) {
                Some(v) if query.split_whitespace().count() == 3 => {
                    BackendWriter(&mut out).copy_both_response();
                    stream.write_all(&out).await?;
                    out.clear();
                    break v;
                }
                _ => {
                    let mut w = BackendWriter(&mut out);
                    w.error("42601", &format!("floor server: unsupported query {query:?}"), None);
                    w.ready_for_query();
                    stream.write_all(&out).await?;
                    out.clear();
                }
            }
        };

        let mut rbuf = BytesMut::with_capacity(64 * 1024);
        loop {
            while let Some((tag, body)) = pq::take_message(&mut rbuf).map_err(invalid)? {
                match tag {
                    b'd' => match Request::parse(version, &body) {
                        Ok(request) => BackendWriter(&mut out).copy_data_with(|buf| answer(&request, &page).encode(version, buf)),
                        Err(e) => {
                            BackendWriter(&mut out).error("08P01", &format!("floor server: {e}"), None);
                            stream.write_all(&out).await?;
                            return Ok(());
                        }
                    },
                    b'c' | b'X' => {
                        stream.write_all(&out).await?;
                        return Ok(());
                    }
                    other => {
                        let message = format!("floor server: unexpected message {other} in the pagestream");
                        BackendWriter(&mut out).error("08P01", &message, None);
                        stream.write_all(&out).await?;
                        return Ok(());
                    }
                }
            }
            if !out.is_empty() {
                stream.write_all(&out).await?;
                out.clear();
            }
            rbuf.reserve(64 * 1024);
            if stream.read_buf(&mut rbuf).await? == 0 {
                return Ok(());
            }
        }
    }
}
