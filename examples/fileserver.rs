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
use std::sync::{Arc, Mutex};

use clap::Parser;
use common::server::{print_memory, ServeArgs};
use common::{open_device, stack_on, Backend, Cidr, DevArgs, MemifRoleArg, StoreSpec};
use ustack::chunk::{ChunkServer, ChunkStore, DirStore, DirStoreConfig, ServerConfig};
use ustack::dev::auto::AnyDevice;
use ustack::net::KernelServer;
use ustack::serve::{ServeLoop, StackService};
use ustack::stack::{CoreShards, Stack};

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
    #[command(flatten)]
    serve: ServeArgs,
    /// Directory store: check every chunk against its stored checksums, report, and exit (0:
    /// clean, 1: damage found, 2: the scrub failed) without serving.
    #[arg(long)]
    scrub: bool,
    /// Like `--scrub`, and move each damaged chunk file to `<dir>/quarantine/`.
    #[arg(long)]
    scrub_quarantine: bool,
    /// Serve from these cores, one per-core shard each (e.g. `0,1` or `0-3`): a thread pinned
    /// to each, with its own device queue, stack and socket memory; the store is shared.
    /// memif (the client proposes the queue pairs: `chunkctl --memif-queues N`) and af-xdp
    /// (queues 0..N of --iface; the interface steers flows to them).
    /// `--connections-max` is per core.
    #[arg(long)]
    cores: Option<common::Cores>,
    /// Let `--cores` name a core more than once (shards then share it): for tests on
    /// machines with fewer cores than shards; slower, never for serving.
    #[arg(long)]
    cores_oversubscribe: bool,
}

const NAME: &str = "fileserver";

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
    common::exit_code(NAME, run(&args))
}

/// `--scrub`: checks every chunk of the directory store; returns whether all were intact.
fn scrub(args: &Args) -> Result<bool, String> {
    let StoreSpec::Dir(path) = &args.serve.store else {
        return Err("--scrub needs a directory store: --store dir:PATH".into());
    };
    if !path.is_dir() {
        return Err(format!("store directory {} does not exist", path.display()));
    }
    let cfg = DirStoreConfig {
        sync: args.serve.sync.policy(),
        chunk_len_max: args.serve.chunk_max.0,
        ..DirStoreConfig::default()
    };
    let store = DirStore::open(path, cfg).map_err(|e| e.to_string())?;
    let recovery = store.recovery();
    println!(
        "fileserver: scrub dir:{} (recovery at open: {recovery})",
        path.display()
    );
    let report = store
        .scrub(args.scrub_quarantine)
        .map_err(|e| e.to_string())?;
    for f in &report.damaged {
        let moved = (f.quarantined.as_ref())
            .map_or(String::new(), |to| format!(" (moved to {})", to.display()));
        println!(
            "fileserver: scrub: DAMAGED chunk {}: {}{moved}",
            f.id, f.detail
        );
    }
    let (damaged, quarantined) = (report.damaged.len(), report.quarantined());
    let advice = if damaged == 0 {
        ": all intact"
    } else if args.scrub_quarantine {
        ""
    } else {
        " (--scrub-quarantine moves them aside)"
    };
    println!(
        "fileserver: scrub: {} chunks checked ({:.1} MiB in the intact ones), {damaged} damaged, \
         {quarantined} quarantined{advice}",
        report.chunks,
        report.bytes as f64 / 1048576.0,
    );
    println!(
        "FILESERVER scrub chunks={} bytes={} damaged={damaged} quarantined={quarantined}",
        report.chunks, report.bytes
    );
    Ok(damaged == 0)
}

fn run(args: &Args) -> Result<(), String> {
    let spin = args.dev.spin_polls.unwrap_or(ServeLoop::SPIN_POLLS);
    let serve = args.serve.serve_loop(spin)?;
    let (store, cfg) = args.serve.open(NAME)?;
    match args.backend {
        Backend::Kernel => {
            println!("fileserver: backend kernel (kernel TCP, no bypass) because --backend kernel");
            let mut server =
                KernelServer::bind(args.listen, store, cfg).map_err(|e| e.to_string())?;
            println!("fileserver: listening on {}", server.local_addr());
            args.serve.run(NAME, serve, &mut server, |_| None)
        }
        Backend::Sim => {
            Err("--backend sim runs both ends in one process: use `chunkctl --backend sim`".into())
        }
        backend if args.cores.is_some() => serve_on_cores(args, backend, serve, store, cfg),
        backend => {
            let (dev, _netns) =
                open_device(backend, &args.dev, args.ip.addr, MemifRoleArg::Server)?;
            println!("fileserver: backend {}: {}", dev.kind(), dev.reason());
            let mut stack = server_stack(args, dev, &cfg)?;
            print_memory(NAME, &stack, &cfg);
            let idle = stack.config().tcp.idle_timeout;
            println!(
                "fileserver: {} sockets: {} connections and a backlog of {}; idle \
                 connections reset after {}",
                stack.config().sockets_max,
                cfg.connections_max,
                cfg.backlog,
                idle.map_or("never".into(), |t| format!("{} s", t.as_secs()))
            );
            let server =
                ChunkServer::bind(&mut stack, args.port, store, cfg).map_err(|e| e.to_string())?;
            println!("fileserver: listening on {}:{}", stack.ipv4(), args.port);
            let mut service = StackService::new(stack, server);
            args.serve
                .run(NAME, serve, &mut service, |s| Some(&mut s.stack))
        }
    }
}

/// The stack of a file server on `dev`: a socket for every connection and backlog slot, the
/// idle timeout asked for.
fn server_stack(
    args: &Args,
    dev: AnyDevice,
    cfg: &ServerConfig,
) -> Result<Stack<AnyDevice>, String> {
    let sockets = cfg.connections_max + cfg.backlog;
    stack_on(dev, &args.dev, args.ip, args.gateway, sockets, |c| {
        c.tcp.idle_timeout = args.serve.idle_timeout();
    })
}

/// `--cores`: one per-core shard per listed core, each with its device queue and stack.
fn serve_on_cores(
    args: &Args,
    backend: Backend,
    serve: ServeLoop,
    store: Arc<dyn ChunkStore>,
    cfg: ServerConfig,
) -> Result<(), String> {
    let cores = args.cores.as_ref().map_or(&[][..], |c| &c.0[..]);
    ustack::serve::check_cores(cores, args.cores_oversubscribe).map_err(|e| e.to_string())?;
    let devs = common::open_devices_for_cores(backend, &args.dev, args.ip.addr, cores.len())?;
    println!(
        "fileserver: backend {backend:?}, {} per-core shards on cores {cores:?}",
        devs.len()
    );
    let devs = Mutex::new(devs.into_iter().map(Some).collect::<Vec<_>>());
    let links = Mutex::new(
        CoreShards::new(cores.len())
            .into_iter()
            .map(Some)
            .collect::<Vec<_>>(),
    );
    let build = |i: usize| {
        let dev = devs.lock().unwrap()[i]
            .take()
            .ok_or("no device for this core")?;
        dev.adopt_current_thread().map_err(|e| e.to_string())?;
        let mut stack = server_stack(args, dev, &cfg)?;
        stack.join_cores(
            links.lock().unwrap()[i]
                .take()
                .ok_or("no link for this core")?,
        );
        let server = ChunkServer::bind(&mut stack, args.port, Arc::clone(&store), cfg.clone())
            .map_err(|e| e.to_string())?;
        Ok(StackService::new(stack, server))
    };
    println!("fileserver: listening on {}:{}", args.ip.addr, args.port);
    let cores = (cores, args.cores_oversubscribe);
    common::server::run_cores(&args.serve, NAME, serve, cores, build)
}
