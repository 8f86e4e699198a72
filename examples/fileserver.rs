//! The example chunk file server: serves chunk WRITE/READ/DELETE/STAT over a ustack backend or
//! over kernel TCP, from memory or a directory.
//!
//! ```text
//! fileserver --backend kernel --listen 127.0.0.1:7000 --store dir:/var/lib/chunks --create
//! fileserver --backend auto --iface eth1 --ip 10.0.0.2/24 --store dir:/var/lib/chunks --create
//! fileserver --backend tap --ip 10.213.0.2/24 --tap-peer 10.213.0.1/24 --store mem
//! fileserver --store dir:/var/lib/chunks --scrub               # check every chunk, serve nothing
//! fileserver --store dir:/var/lib/chunks --scrub-quarantine    # and move damaged ones aside
//! ```
//! It prints the backend it runs on and why, logs with tracing (RUST_LOG), and shuts down
//! cleanly on SIGINT/SIGTERM: it stops taking requests, sends the answers already due (every
//! WRITE it acknowledged is in the store), and exits.
//!
//! Besides its human-readable counters it prints one line of `key=value` counters for scripts
//! and tests, `FILESERVER stats ...` with every `--stats-every-s` report and `FILESERVER final
//! ...` at exit: the server's connections, and on ustack backends the sockets in use against
//! their maximum and the stack's counters (half-open connections evicted or unreachable, idle
//! connections reaped, SYNs dropped, retransmissions, challenge ACKs). `corrupt=` counts requests
//! answered `Corrupt` (the store found the chunk's bytes damaged on disk).
//!
//! For operators (docs/MONITORING.md): `--metrics ADDR` serves Prometheus metrics (`GET
//! /metrics`) on an admin address over kernel TCP, and `--admin-socket PATH` creates an
//! owner-only unix socket on which `chunkctl admin --socket PATH ...` prints every counter in
//! words, lists the connections like `ss -ti`, and starts and stops packet captures to pcap
//! files while the server runs. The periodic (`--stats-every-s`) and final reports print every
//! counter in words too, layer by layer, with the errors broken down by cause.
//!
//! `--scrub` (a directory store only) opens the store (recovering it as for serving), checks
//! every block of every chunk against its stored CRC32C, prints one `fileserver: scrub:
//! DAMAGED ...` line per damaged chunk, a summary line, and a `FILESERVER scrub key=value` line,
//! and exits: 0 if every chunk is intact, 1 if damage was found, 2 if the scrub itself failed.
//! `--scrub-quarantine` does the same and moves each damaged chunk file to
//! `<dir>/quarantine/` (the chunk then reads as absent and can be written again). The store's
//! directory lock keeps a scrub from running beside a server on the same directory: stop the
//! server first.

#[path = "common/mod.rs"]
mod common;

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use common::{
    open_device, open_store, stack_on, Backend, Cidr, DevArgs, IdleSpin, MemifRoleArg, Size,
    StoreSpec,
};
use ustack::chunk::{
    ChunkServer, ChunkStore, DirStore, DirStoreConfig, ServerConfig, ServerStats, StorageConfig,
    StorageMode, SyncPolicy, WorkerConfig,
};
use ustack::dev::auto::AnyDevice;
use ustack::metrics::{
    human_lines, AdminServer, Hub, KernelServerView, MetricsEndpoint, Observed, StackServerView,
};
use ustack::net::KernelServer;
use ustack::proto::Limits;
use ustack::stack::Stack;
use ustack::sys::signal;
use ustack::Instant;

#[derive(Copy, Clone, Debug, ValueEnum)]
enum Sync {
    /// fdatasync before acknowledging a WRITE (safe).
    Always,
    /// Leave data in the page cache (fast; a power loss loses acknowledged writes).
    Never,
}

#[derive(Parser, Debug)]
#[command(
    name = "fileserver",
    version,
    about = "ustack example chunk file server"
)]
struct Args {
    /// Network backend.
    #[arg(long, value_enum, default_value_t = Backend::Kernel)]
    backend: Backend,
    /// Kernel backend: address to listen on (IPv4 or IPv6, e.g. `[::1]:7000`).
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: std::net::SocketAddr,
    /// ustack backends: our address and prefix.
    #[arg(long, default_value = "10.213.0.2/24")]
    ip: Cidr,
    /// ustack backends: TCP port.
    #[arg(long, default_value_t = 7000)]
    port: u16,
    /// ustack backends: default gateway.
    #[arg(long)]
    gateway: Option<Ipv4Addr>,
    #[command(flatten)]
    dev: DevArgs,
    /// Chunk store: `mem` or `dir:PATH`.
    #[arg(long, default_value = "mem")]
    store: StoreSpec,
    /// Directory store: create the directory if it does not exist (without this, a missing
    /// directory is an error, so a mistyped path cannot open a new, empty store).
    #[arg(long)]
    create: bool,
    /// Directory store: when WRITEs are made durable.
    #[arg(long, value_enum, default_value_t = Sync::Always)]
    sync: Sync,
    /// Memory store: byte budget.
    #[arg(long, default_value = "4GiB")]
    mem_budget: Size,
    /// Connections served at once (more are refused and counted).
    #[arg(long, default_value_t = 64)]
    connections_max: usize,
    /// Connections the listener keeps ready to be accepted. On ustack backends this many
    /// sockets listen (spread over the socket shards, at least one each), each with room for
    /// one more half-open connection (a SYN that finds them all taken evicts the oldest past its grace); the
    /// stack has `--connections-max` + this many sockets.
    #[arg(long, default_value_t = 16)]
    backlog: usize,
    /// ustack backends: reset connections on which no request or answer moved for this many
    /// seconds (0: never), so that peers which connect and then say nothing, or vanish, cannot
    /// hold every socket. 60 s, like the keep-alive timeouts of common servers, keeps a
    /// client's pooled connection between bursts of work; a client idle for longer reconnects.
    #[arg(long, default_value_t = 60)]
    idle_timeout_s: u64,
    /// Largest payload of one request.
    #[arg(long, default_value = "4MiB")]
    payload_max: Size,
    /// Largest chunk.
    #[arg(long, default_value = "64MiB")]
    chunk_max: Size,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 64)]
    in_flight_max: u32,
    /// Print counters every this many seconds (0: only at exit).
    #[arg(long, default_value_t = 0)]
    stats_every_s: u64,
    /// Seconds shutdown may take to send the answers already due.
    #[arg(long, default_value_t = 5)]
    grace_s: u64,
    /// Storage worker threads that run the store's calls off the serving loop (0: call the
    /// store inline on the loop). Default: 2 for `dir:`, inline for `mem` (memory never waits).
    #[arg(long)]
    storage_workers: Option<usize>,
    /// Jobs each storage worker's queue holds; a full queue makes the server stop reading the
    /// connection (its TCP window closes) until there is room.
    #[arg(long, default_value_t = 32)]
    storage_queue: usize,
    /// A request whose store call takes longer than this many seconds is answered `Timeout`
    /// (the connection and the server go on).
    #[arg(long, default_value_t = 10)]
    storage_timeout_s: u64,
    /// Directory store: check every chunk against its stored checksums, report, and exit (0:
    /// clean, 1: damage found, 2: the scrub failed) without serving.
    #[arg(long)]
    scrub: bool,
    /// Like `--scrub`, and move each damaged chunk file to `<dir>/quarantine/`.
    #[arg(long)]
    scrub_quarantine: bool,
    /// Serve Prometheus metrics (`GET /metrics`, OpenMetrics text) on this address over kernel
    /// TCP, e.g. `127.0.0.1:9464` (port 0: any free port, printed at start). The serving loop
    /// only answers when a scrape asks: one atomic load per turn otherwise.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Create an admin socket (owner-only unix socket) at this path: `chunkctl admin --socket
    /// PATH stats|connections|capture start FILE --packets N|capture stop|...`.
    #[arg(long, value_name = "PATH")]
    admin_socket: Option<std::path::PathBuf>,
}

/// Idle turns the serving loop spins through before it sleeps (in the device, or in epoll for
/// kernel TCP) unless `--spin-polls` says otherwise: a request that comes within this is seen
/// at once.
const SERVER_SPIN_POLLS: u32 = 1000;

fn server_spin(args: &Args) -> IdleSpin {
    IdleSpin::new(args.dev.spin_polls.unwrap_or(SERVER_SPIN_POLLS))
}

fn main() -> ExitCode {
    common::init_logging();
    let args = Args::parse();
    if args.scrub || args.scrub_quarantine {
        return match scrub(&args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("fileserver: scrub failed: {e}");
                ExitCode::from(2)
            }
        };
    }
    common::exit_code("fileserver", run(&args))
}

/// `--scrub`: checks every chunk of the directory store; returns whether all were intact.
fn scrub(args: &Args) -> Result<bool, String> {
    let StoreSpec::Dir(path) = &args.store else {
        return Err("--scrub needs a directory store: --store dir:PATH".into());
    };
    if !path.is_dir() {
        return Err(format!("store directory {} does not exist", path.display()));
    }
    let cfg = DirStoreConfig {
        sync: match args.sync {
            Sync::Always => SyncPolicy::Always,
            Sync::Never => SyncPolicy::Never,
        },
        chunk_len_max: args.chunk_max.0,
        ..DirStoreConfig::default()
    };
    let store = DirStore::open(path, cfg).map_err(|e| e.to_string())?;
    println!(
        "fileserver: scrub dir:{} (recovery at open: {})",
        path.display(),
        store.recovery()
    );
    let quarantine = args.scrub_quarantine;
    let report = store.scrub(quarantine).map_err(|e| e.to_string())?;
    for f in &report.damaged {
        match &f.quarantined {
            Some(to) => println!(
                "fileserver: scrub: DAMAGED chunk {}: {} (moved to {})",
                f.id,
                f.detail,
                to.display()
            ),
            None => println!("fileserver: scrub: DAMAGED chunk {}: {}", f.id, f.detail),
        }
    }
    let quarantined = report
        .damaged
        .iter()
        .filter(|f| f.quarantined.is_some())
        .count();
    println!(
        "fileserver: scrub: {} chunks checked ({:.1} MiB in the intact ones), {} damaged, {} quarantined{}",
        report.chunks,
        report.bytes as f64 / 1048576.0,
        report.damaged.len(),
        quarantined,
        if report.damaged.is_empty() {
            ": all intact"
        } else if quarantine {
            ""
        } else {
            " (--scrub-quarantine moves them aside)"
        }
    );
    println!(
        "FILESERVER scrub chunks={} bytes={} damaged={} quarantined={}",
        report.chunks,
        report.bytes,
        report.damaged.len(),
        quarantined
    );
    Ok(report.damaged.is_empty())
}

fn run(args: &Args) -> Result<(), String> {
    signal::install_stop_handlers().map_err(|e| format!("installing signal handlers: {e}"))?;
    let limits = Limits {
        payload_len_max: u32::try_from(args.payload_max.0)
            .map_err(|_| "--payload-max must be below 4 GiB".to_string())?,
        chunk_len_max: args.chunk_max.0,
        in_flight_max: args.in_flight_max,
    };
    limits.validate().map_err(|e| e.to_string())?;
    let sync = match args.sync {
        Sync::Always => SyncPolicy::Always,
        Sync::Never => SyncPolicy::Never,
    };
    let (store, store_line) = open_store(
        &args.store,
        args.mem_budget.0,
        args.chunk_max.0,
        sync,
        args.create,
    )?;
    if args.storage_timeout_s == 0 {
        return Err("--storage-timeout-s must be at least 1".into());
    }
    let storage = StorageConfig {
        mode: match args.storage_workers {
            None => StorageMode::Auto,
            Some(0) => StorageMode::Inline,
            Some(_) => StorageMode::Workers,
        },
        workers: WorkerConfig {
            threads: args.storage_workers.unwrap_or(2).max(1),
            queue_len: args.storage_queue.max(1),
        },
        timeout: Duration::from_secs(args.storage_timeout_s),
    };
    let storage_line = if storage.mode.on_workers(store.may_block()) {
        format!(
            "{} worker threads, {} jobs queued each, timeout {} s",
            storage.workers.threads, storage.workers.queue_len, args.storage_timeout_s
        )
    } else {
        "inline on the serving loop (the store answers from memory)".to_string()
    };
    let cfg = ServerConfig {
        limits,
        connections_max: args.connections_max,
        backlog: args.backlog,
        shutdown_grace: Duration::from_secs(args.grace_s),
        storage,
        ..ServerConfig::default()
    };
    println!("fileserver: store {store_line}");
    println!("fileserver: store calls {storage_line}");
    match args.backend {
        Backend::Kernel => {
            println!("fileserver: backend kernel (kernel TCP, no bypass) because --backend kernel");
            serve_kernel(args, store, cfg)
        }
        Backend::Sim => {
            Err("--backend sim runs both ends in one process: use `chunkctl --backend sim`".into())
        }
        backend => {
            let (dev, _netns) =
                open_device(backend, &args.dev, args.ip.addr, MemifRoleArg::Server)?;
            serve_stack(args, dev, store, cfg)
        }
    }
}

/// What the server reserves at start (all of it: nothing grows with traffic).
fn print_memory(stack: &ustack::stack::Stack<AnyDevice>, cfg: &ServerConfig) {
    let sc = stack.config();
    let per_conn = sc.tcp.rx_buf_len + sc.tcp.tx_buf_len;
    let sockets = sc.socket_memory_len();
    let staging = cfg.staging.memory_len(cfg.limits.payload_len_max as usize);
    let mib = |b: usize| b as f64 / 1048576.0;
    println!(
        "fileserver: memory reserved: socket buffers {:.1} MiB ({} sockets x {} KiB), payload staging {:.1} MiB, \
         {:.1} MiB in all; per connection {} KiB of socket buffers (a connection's share of staging is bounded by \
         large_per_connection_max)",
        mib(sockets),
        sc.sockets_max,
        per_conn >> 10,
        mib(staging),
        mib(sockets + staging),
        per_conn >> 10
    );
}

/// The operator-facing threads (metrics endpoint, admin socket) the flags ask for; they stop
/// when this is dropped.
struct Operators {
    hub: Hub,
    _metrics: Option<MetricsEndpoint>,
    _admin: Option<AdminServer>,
}

fn operators(args: &Args) -> Result<Operators, String> {
    let hub = Hub::new();
    let metrics = match args.metrics {
        Some(addr) => {
            let m = MetricsEndpoint::start(addr, hub.clone()).map_err(|e| e.to_string())?;
            println!("fileserver: metrics at http://{}/metrics", m.local_addr());
            Some(m)
        }
        None => None,
    };
    let admin = match &args.admin_socket {
        Some(path) => {
            let a = AdminServer::start(path, hub.clone()).map_err(|e| e.to_string())?;
            println!(
                "fileserver: admin socket {} (chunkctl admin --socket {} help)",
                a.path().display(),
                a.path().display()
            );
            Some(a)
        }
        None => None,
    };
    Ok(Operators {
        hub,
        _metrics: metrics,
        _admin: admin,
    })
}

/// Prints every counter in words, each line prefixed with `fileserver: LABEL:`.
fn print_stats(label: &str, hub: &Hub, obs: &mut dyn Observed) {
    let snap = hub.publish(Instant::now(), obs).with_process();
    for line in human_lines(&snap) {
        println!("fileserver: {label}: {line}");
    }
}

/// The machine-readable counters: `FILESERVER <label> key=value ...` (see the module docs).
/// `stack` is `None` for kernel TCP.
fn report_line(
    label: &str,
    since: Instant,
    s: &ServerStats,
    connections_max: usize,
    stack: Option<&mut Stack<AnyDevice>>,
) -> String {
    let mut line = format!(
        "FILESERVER {label} t_ms={} connections_max={connections_max} connections_open={} \
         accepted={} refused={} closed={} errors={} storage_waits={} storage_timeouts={} \
         storage_late={} corrupt={}",
        (Instant::now() - since).as_millis(),
        s.connections_accepted - s.connections_closed,
        s.connections_accepted,
        s.connections_refused,
        s.connections_closed,
        s.errors,
        s.storage_waits,
        s.storage_timeouts,
        s.storage_late,
        s.corrupt
    );
    if let Some(stack) = stack {
        let st = stack.stats();
        let tcp = stack.tcp_stats();
        let max = stack.config().sockets_max;
        line += &format!(
            " sockets_max={max} sockets_in_use={} half_open_evicted={} half_open_unreachable={} \
             idle_reaped={} syn_backlog_full={} sockets_exhausted={} close_timeouts={} \
             rx_frames={} rx_dropped={} tx_frames={} tx_nobuf={} retransmits={} \
             rto_expirations={} challenge_acks={}",
            max - stack.sockets_free(),
            st.half_open_evicted,
            st.half_open_unreachable,
            st.idle_reaped,
            st.rx_syn_backlog_full,
            st.sockets_exhausted,
            st.close_timeouts,
            st.rx_frames,
            st.rx_dropped(),
            st.tx_frames,
            st.tx_nobuf,
            tcp.retransmits(),
            tcp.rto_expirations,
            tcp.challenge_acks
        );
    }
    line
}

fn serve_stack(
    args: &Args,
    dev: AnyDevice,
    store: Arc<dyn ChunkStore>,
    cfg: ServerConfig,
) -> Result<(), String> {
    println!("fileserver: backend {}: {}", dev.kind(), dev.reason());
    let mut stack = stack_on(
        dev,
        &args.dev,
        args.ip,
        args.gateway,
        cfg.connections_max + cfg.backlog,
        |c| {
            c.tcp.idle_timeout =
                (args.idle_timeout_s > 0).then(|| Duration::from_secs(args.idle_timeout_s));
        },
    )?;
    let grace = cfg.shutdown_grace;
    let connections_max = cfg.connections_max;
    print_memory(&stack, &cfg);
    println!(
        "fileserver: {} sockets: {connections_max} connections and a backlog of {}; idle \
         connections reset after {}",
        stack.config().sockets_max,
        cfg.backlog,
        match stack.config().tcp.idle_timeout {
            Some(t) => format!("{} s", t.as_secs()),
            None => "never".into(),
        }
    );
    let mut server =
        ChunkServer::bind(&mut stack, args.port, store, cfg).map_err(|e| e.to_string())?;
    println!("fileserver: listening on {}:{}", stack.ipv4(), args.port);
    let ops = operators(args)?;
    let mut spin = server_spin(args);
    let mut deadline = None;
    let started = Instant::now();
    let mut last_stats = started;
    loop {
        let now = Instant::now();
        let busy = stack.poll(now) | server.poll(&mut stack);
        // Answers scrapes and admin commands; a relaxed load while none are asked.
        let busy = busy
            | ops.hub.serve(
                now,
                &mut StackServerView {
                    stack: &mut stack,
                    server: &server,
                },
            );
        if signal::stop_requested() && deadline.is_none() {
            println!(
                "fileserver: signal {}: shutting down",
                signal::stop_signal()
            );
            server.begin_shutdown(&mut stack);
            deadline = Some(now + grace);
        }
        if let Some(d) = deadline {
            if server.is_idle() || now >= d {
                break;
            }
        }
        if args.stats_every_s > 0 && now - last_stats >= Duration::from_secs(args.stats_every_s) {
            let s = server.stats();
            let mut view = StackServerView {
                stack: &mut stack,
                server: &server,
            };
            print_stats("stats", &ops.hub, &mut view);
            let line = report_line("stats", started, &s, connections_max, Some(&mut stack));
            println!("{line}");
            last_stats = now;
        }
        if !busy && server.storage_outstanding() > 0 {
            // Store calls run and nothing else moved: give the CPU to a worker that may share
            // this core at once, rather than spin (their results come without a packet to wake
            // a device wait, so the loop does not sleep either).
            std::thread::yield_now();
            spin.turn(true);
        } else if spin.turn(busy) {
            stack.wait(now, Duration::from_millis(1));
        }
    }
    // Let the last FINs and ACKs out.
    let end = Instant::now() + Duration::from_millis(100);
    while Instant::now() < end {
        stack.poll(Instant::now());
    }
    let s = server.stats();
    let mut view = StackServerView {
        stack: &mut stack,
        server: &server,
    };
    print_stats("final", &ops.hub, &mut view);
    let line = report_line("final", started, &s, connections_max, Some(&mut stack));
    println!("{line}");
    Ok(())
}

fn serve_kernel(args: &Args, store: Arc<dyn ChunkStore>, cfg: ServerConfig) -> Result<(), String> {
    let grace = cfg.shutdown_grace;
    let connections_max = cfg.connections_max;
    let mut server = KernelServer::bind(args.listen, store, cfg).map_err(|e| e.to_string())?;
    println!("fileserver: listening on {}", server.local_addr());
    let ops = operators(args)?;
    let mut deadline = None;
    let started = Instant::now();
    let mut last_stats = started;
    // Busy-polls like the ustack loop (the kernel baseline gets the same chance at latency),
    // then sleeps in epoll once idle for a while.
    let mut spin = server_spin(args);
    loop {
        let now = Instant::now();
        let wait = if spin.spun() {
            Duration::from_millis(5)
        } else {
            Duration::ZERO
        };
        let busy = server.poll(wait);
        let busy = busy
            | ops
                .hub
                .serve(now, &mut KernelServerView { server: &server });
        spin.turn(busy);
        if signal::stop_requested() && deadline.is_none() {
            println!(
                "fileserver: signal {}: shutting down",
                signal::stop_signal()
            );
            server.begin_shutdown();
            deadline = Some(now + grace);
        }
        if let Some(d) = deadline {
            if server.is_idle() || now >= d {
                break;
            }
        }
        if args.stats_every_s > 0 && now - last_stats >= Duration::from_secs(args.stats_every_s) {
            let s = server.stats();
            print_stats("stats", &ops.hub, &mut KernelServerView { server: &server });
            println!(
                "{}",
                report_line("stats", started, &s, connections_max, None)
            );
            last_stats = now;
        }
    }
    let s = server.stats();
    print_stats("final", &ops.hub, &mut KernelServerView { server: &server });
    println!(
        "{}",
        report_line("final", started, &s, connections_max, None)
    );
    Ok(())
}
