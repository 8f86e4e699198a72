//! What a serving example's command line shares: the flags of the store, the server, its
//! storage workers and its operator interfaces, and the reports it prints while
//! `ustack::serve::ServeLoop` runs it.

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use ustack::chunk::{
    ChunkStore, ServerConfig, ServerStats, StorageConfig, StorageMode, SyncPolicy, WorkerConfig,
};
use ustack::dev::auto::AnyDevice;
use ustack::metrics::{human_lines, AdminServer, Hub, MetricsEndpoint};
use ustack::proto::Limits;
use ustack::serve::{Event, ServeLoop, Service};
use ustack::stack::Stack;
use ustack::Instant;

use super::{open_store, Size, StoreSpec};

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum SyncArg {
    /// fdatasync before acknowledging a WRITE (safe).
    Always,
    /// Leave data in the page cache (fast; a power loss loses acknowledged writes).
    Never,
}

impl SyncArg {
    pub fn policy(self) -> SyncPolicy {
        match self {
            SyncArg::Always => SyncPolicy::Always,
            SyncArg::Never => SyncPolicy::Never,
        }
    }
}

/// The store, the server and the operator flags.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Chunk store: `mem` or `dir:PATH`.
    #[arg(long, default_value = "mem")]
    pub store: StoreSpec,
    /// Directory store: create the directory if it does not exist (without this, a missing
    /// directory is an error, so a mistyped path cannot open a new, empty store).
    #[arg(long)]
    pub create: bool,
    /// Directory store: when WRITEs are made durable.
    #[arg(long, value_enum, default_value_t = SyncArg::Always)]
    pub sync: SyncArg,
    /// Memory store: byte budget.
    #[arg(long, default_value = "4GiB")]
    pub mem_budget: Size,
    /// Connections served at once (more are refused and counted).
    #[arg(long, default_value_t = 64)]
    pub connections_max: usize,
    /// Connections the listener keeps ready to be accepted. On ustack backends this many
    /// sockets listen (spread over the socket shards, at least one each), each with room for
    /// one more half-open connection (a SYN that finds them all taken evicts the oldest past
    /// its grace); the stack has `--connections-max` + this many sockets.
    #[arg(long, default_value_t = 16)]
    pub backlog: usize,
    /// ustack backends: reset connections on which no request or answer moved for this many
    /// seconds (0: never), so that peers which connect and then say nothing, or vanish, cannot
    /// hold every socket. 60 s, like the keep-alive timeouts of common servers, keeps a
    /// client's pooled connection between bursts of work; a client idle for longer reconnects.
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_s: u64,
    /// Largest payload of one request.
    #[arg(long, default_value = "4MiB")]
    pub payload_max: Size,
    /// Largest chunk.
    #[arg(long, default_value = "64MiB")]
    pub chunk_max: Size,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 64)]
    pub in_flight_max: u32,
    /// Print counters every this many seconds (0: only at exit).
    #[arg(long, default_value_t = 0)]
    pub stats_every_s: u64,
    /// Seconds shutdown may take to send the answers already due.
    #[arg(long, default_value_t = 5)]
    pub grace_s: u64,
    /// Storage worker threads that run the store's calls off the serving loop (0: call the
    /// store inline on the loop). Default: 2 for `dir:`, inline for `mem` (memory never waits).
    #[arg(long)]
    pub storage_workers: Option<usize>,
    /// Jobs each storage worker's queue holds; a full queue makes the server stop reading the
    /// connection (its TCP window closes) until there is room.
    #[arg(long, default_value_t = 32)]
    pub storage_queue: usize,
    /// A request whose store call takes longer than this many seconds is answered `Timeout`
    /// (the connection and the server go on).
    #[arg(long, default_value_t = 10)]
    pub storage_timeout_s: u64,
    /// Serve Prometheus metrics (`GET /metrics`, OpenMetrics text) on this address over kernel
    /// TCP, e.g. `127.0.0.1:9464` (port 0: any free port, printed at start). The serving loop
    /// only answers when a scrape asks: one atomic load per turn otherwise.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Create an admin socket (owner-only unix socket) at this path: `chunkctl admin --socket
    /// PATH stats|connections|capture start FILE --packets N|capture stop|...`.
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<std::path::PathBuf>,
}

impl ServeArgs {
    /// Opens the store and builds the server's configuration; prints what it chose.
    pub fn open(&self, program: &str) -> Result<(Arc<dyn ChunkStore>, ServerConfig), String> {
        let limits = Limits {
            payload_len_max: u32::try_from(self.payload_max.0)
                .map_err(|_| "--payload-max must be below 4 GiB".to_string())?,
            chunk_len_max: self.chunk_max.0,
            in_flight_max: self.in_flight_max,
        };
        limits.validate().map_err(|e| e.to_string())?;
        if self.storage_timeout_s == 0 {
            return Err("--storage-timeout-s must be at least 1".into());
        }
        let (store, store_line) = open_store(
            &self.store,
            self.mem_budget.0,
            self.chunk_max.0,
            self.sync.policy(),
            self.create,
        )?;
        let storage = StorageConfig {
            mode: match self.storage_workers {
                None => StorageMode::Auto,
                Some(0) => StorageMode::Inline,
                Some(_) => StorageMode::Workers,
            },
            workers: WorkerConfig {
                threads: self.storage_workers.unwrap_or(2).max(1),
                queue_len: self.storage_queue.max(1),
            },
            timeout: Duration::from_secs(self.storage_timeout_s),
        };
        println!("{program}: store {store_line}");
        if storage.mode.on_workers(store.may_block()) {
            println!(
                "{program}: store calls on {} worker threads, {} jobs queued each, timeout {} s",
                storage.workers.threads, storage.workers.queue_len, self.storage_timeout_s
            );
        } else {
            println!(
                "{program}: store calls inline on the serving loop (the store answers from memory)"
            );
        }
        let cfg = ServerConfig {
            limits,
            connections_max: self.connections_max,
            backlog: self.backlog,
            shutdown_grace: Duration::from_secs(self.grace_s),
            storage,
            ..ServerConfig::default()
        };
        Ok((store, cfg))
    }

    /// The idle timeout for the stack's TCP configuration (`None`: never).
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_s > 0).then(|| Duration::from_secs(self.idle_timeout_s))
    }

    /// The serving loop these flags ask for. Its signal handlers are installed now, before
    /// the server starts: a SIGTERM from then on is a graceful shutdown.
    pub fn serve_loop(&self, spin_polls: u32) -> Result<ServeLoop, String> {
        ServeLoop::new()
            .spin_polls(spin_polls)
            .report_every(Some(Duration::from_secs(self.stats_every_s)))
            .stop_on_signals()
            .map_err(|e| format!("installing signal handlers: {e}"))
    }

    /// Runs `service` on `serve` until a signal, with the operator threads these flags ask
    /// for (started now, when the loop is about to answer them), printing the reports;
    /// `stack` gives a ustack service's stack for the report line.
    pub fn run<S: Service>(
        &self,
        program: &str,
        serve: ServeLoop,
        service: &mut S,
        stack: impl Fn(&mut S) -> Option<&mut Stack<AnyDevice>>,
    ) -> Result<(), String> {
        let ops = Operators::start(self, program)?;
        let serve = serve.hub(ops.hub.clone());
        let started = Instant::now();
        let report = |label: &str, service: &mut S| {
            ops.print_stats(program, label, service);
            let (s, served) = (service.stats(), Instant::now() - started);
            let line = report_line(
                program,
                label,
                served,
                &s,
                self.connections_max,
                stack(service),
            );
            println!("{line}");
        };
        serve.run(service, |e, service| match e {
            Event::Report => report("stats", service),
            Event::Stopping(cause) => println!("{program}: {cause}: shutting down"),
        });
        report("final", service);
        Ok(())
    }
}

/// `--cores`: serves one per-core shard per core, each built by `build(shard)` on its own
/// pinned thread, and prints each shard's final line and their sum.
pub fn run_cores<B>(
    args: &ServeArgs,
    program: &str,
    serve: ServeLoop,
    (cores, oversubscribe): (&[usize], bool),
    build: B,
) -> Result<(), String>
where
    B: Fn(usize) -> Result<ustack::serve::StackService<AnyDevice, Arc<dyn ChunkStore>>, String>
        + Sync,
{
    let ops = Operators::start(args, program)?;
    let serve = serve.hub(ops.hub.clone());
    let started = Instant::now();
    let runs = ustack::serve::run_cores(&serve, cores, oversubscribe, build, |shard, e, _| {
        if let (0, Event::Stopping(cause)) = (shard, e) {
            println!("{program}: {cause}: shutting down");
        }
    })
    .map_err(|e| e.to_string())?;
    let served = Instant::now() - started;
    let mut total = ServerStats::default();
    let (mut misdirected, mut frames) = (0, 0);
    for run in runs {
        let service = run.service;
        let s = service.server.stats();
        total.add(&s);
        let st = service.stack.stats();
        misdirected += st.rx_misdirected;
        frames += st.rx_frames;
        let label = format!(
            "final core={} rx_misdirected={}",
            run.core, st.rx_misdirected
        );
        let line = report_line(program, &label, served, &s, args.connections_max, None);
        println!("{line}");
    }
    let label = format!(
        "final cores={} rx_frames={frames} rx_misdirected={misdirected}",
        cores.len()
    );
    let line = report_line(program, &label, served, &total, args.connections_max, None);
    println!("{line}");
    Ok(())
}

/// The operator-facing threads (metrics endpoint, admin socket) the flags ask for; they stop
/// when this is dropped.
pub struct Operators {
    pub hub: Hub,
    _metrics: Option<MetricsEndpoint>,
    _admin: Option<AdminServer>,
}

impl Operators {
    pub fn start(args: &ServeArgs, program: &str) -> Result<Operators, String> {
        let hub = Hub::new();
        let metrics = match args.metrics {
            Some(addr) => {
                let m = MetricsEndpoint::start(addr, hub.clone()).map_err(|e| e.to_string())?;
                println!("{program}: metrics at http://{}/metrics", m.local_addr());
                Some(m)
            }
            None => None,
        };
        let admin = match &args.admin_socket {
            Some(path) => {
                let a = AdminServer::start(path, hub.clone()).map_err(|e| e.to_string())?;
                let p = a.path().display();
                println!("{program}: admin socket {p} (chunkctl admin --socket {p} help)");
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

    /// Prints every counter in words, each line prefixed with `PROGRAM: LABEL:`.
    pub fn print_stats(&self, program: &str, label: &str, service: &mut impl Service) {
        let hub = &self.hub;
        let mut snap = None;
        service.observe(&mut |obs| snap = Some(hub.publish(Instant::now(), obs)));
        if let Some(snap) = snap {
            for line in human_lines(&snap.with_process()) {
                println!("{program}: {label}: {line}");
            }
        }
    }
}

/// What the server reserves at start (all of it: nothing grows with traffic).
pub fn print_memory(program: &str, stack: &Stack<AnyDevice>, cfg: &ServerConfig) {
    let sc = stack.config();
    let per_conn = (sc.tcp.rx_buf_len + sc.tcp.tx_buf_len) >> 10;
    let sockets = sc.socket_memory_len();
    let staging = cfg.staging.memory_len(cfg.limits.payload_len_max as usize);
    let mib = |b: usize| b as f64 / 1048576.0;
    println!(
        "{program}: memory reserved: socket buffers {:.1} MiB ({} sockets x {per_conn} KiB), \
         payload staging {:.1} MiB, {:.1} MiB in all; per connection {per_conn} KiB of socket \
         buffers (a connection's share of staging is bounded by large_per_connection_max)",
        mib(sockets),
        sc.sockets_max,
        mib(staging),
        mib(sockets + staging),
    );
}

/// The machine-readable counters: `PROGRAM <label> key=value ...` (the program's name in
/// capitals). `stack` is `None` for kernel TCP.
pub fn report_line(
    program: &str,
    label: &str,
    served: Duration,
    s: &ServerStats,
    connections_max: usize,
    stack: Option<&mut Stack<AnyDevice>>,
) -> String {
    let mut line = format!(
        "{} {label} t_ms={} connections_max={connections_max} connections_open={} \
         accepted={} refused={} closed={} errors={} storage_waits={} storage_timeouts={} \
         storage_late={} corrupt={}",
        program.to_uppercase(),
        served.as_millis(),
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
