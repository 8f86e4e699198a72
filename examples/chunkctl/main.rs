//! The chunk client tool: put and get files, single requests, a verified round trip of many
//! chunks (`verify`, the main job), and a benchmark (`bench`), over kernel TCP or a ustack backend.
//!
//! ```text
//! chunkctl --backend sim verify --total 256MiB           # ustack <-> ustack in this process
//! chunkctl --backend kernel --server 127.0.0.1:7000 bench --op read --size 4KiB --depth 1
//! chunkctl --backend kernel --server 127.0.0.1:7000 put FILE > manifest
//! chunkctl --backend kernel --server 127.0.0.1:7000 get manifest --out FILE
//! chunkctl --backend kernel --server 127.0.0.1:7000 ls                       # every chunk
//! chunkctl --backend kernel --server 127.0.0.1:7000 gc --keep *.manifest     # delete orphans
//! ```

mod admin;
mod bench;
mod clients;
#[path = "../common/mod.rs"]
mod common;
mod driver;
mod files;
mod listing;
mod verify;

use std::net::{SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::time::Duration;

use admin::admin;
use bench::bench;
use clap::{Parser, Subcommand, ValueEnum};
use clients::{single, spawn_sim_server, wait_connected, KernelClients, SIM_CLIENT, SIM_SERVER};
use common::{
    open_device, stack_config, stack_on, Backend, Cidr, ClientSet, DevArgs, MemifRoleArg, Size,
    StackClients,
};
use files::{get, put};
use listing::{gc, ls};
use ustack::chunk::{ChunkOp, ClientConfig, Staging};
use ustack::dev::sim::{SimConfig, SimLink};
use ustack::net::KernelClient;
use ustack::proto::{ChunkId, Limits};
use ustack::stack::Stack;
use verify::verify;

#[derive(Parser, Debug)]
#[command(
    name = "chunkctl",
    version,
    about = "ustack chunk client: put/get/ls/gc/verify/bench"
)]
struct Args {
    /// Network backend.
    #[arg(long, value_enum, default_value_t = Backend::Kernel)]
    backend: Backend,
    /// The chunk server, HOST:PORT. The kernel backend takes a host name or an IPv6 address
    /// too (`[::1]:7000`); ustack backends take IPv4:PORT on --ip's subnet.
    #[arg(long, default_value = "127.0.0.1:7000")]
    server: String,
    /// Connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Largest payload of one request (must match the server's).
    #[arg(long, default_value = "4MiB")]
    payload_max: Size,
    /// Seconds a request may take.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
    /// ustack client backends: our address.
    #[arg(long, default_value = "10.213.0.3/24")]
    ip: Cidr,
    #[command(flatten)]
    dev: DevArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Write random chunks (sizes log-uniform from 1 B to the payload limit) totalling --total,
    /// read every one back, check every byte and every STAT checksum, delete them.
    Verify {
        #[arg(long, default_value = "256MiB")]
        total: Size,
        /// Requests in flight per connection.
        #[arg(long, default_value_t = 8)]
        depth: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Leave the chunks on the server.
        #[arg(long)]
        keep: bool,
    },
    /// Measure one operation: ops/s, MB/s, latency percentiles; every READ is verified.
    Bench {
        #[arg(long, value_enum, default_value_t = BenchOp::Read)]
        op: BenchOp,
        /// Bytes per request.
        #[arg(long, default_value = "4KiB")]
        size: Size,
        /// Requests in flight per connection.
        #[arg(long, default_value_t = 1)]
        depth: usize,
        /// Seconds to measure (after one second of warm-up).
        #[arg(long, default_value_t = 5)]
        duration_s: u64,
        /// Distinct chunks the requests spread over.
        #[arg(long, default_value_t = 64)]
        chunks: u64,
        /// Extra connections held open and idle during the run (connection scaling).
        #[arg(long, default_value_t = 0)]
        idle: usize,
    },
    /// Split a file into chunks, write them, print the manifest (one line per chunk:
    /// `ID OFFSET LENGTH CRC32C`).
    Put {
        file: std::path::PathBuf,
        #[arg(long, default_value = "4MiB")]
        chunk_size: Size,
    },
    /// Read the chunks of a manifest, check each CRC32C, write the file.
    Get {
        manifest: std::path::PathBuf,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// List every chunk on the server (LIST, page by page): `ID SIZE` per line (32 hex digits,
    /// bytes), in the server's listing order; a count on standard error.
    Ls {
        /// Only the chunks none of these manifests names (what `gc --keep` would delete).
        #[arg(long, num_args = 1.., value_name = "MANIFEST")]
        orphans: Vec<std::path::PathBuf>,
    },
    /// Delete every chunk on the server that none of the given manifests names: the chunks an
    /// interrupted put left behind. Reads every manifest first and deletes nothing if any fails
    /// to parse. Do not run it while a put is in progress: its chunks are in no manifest yet.
    Gc {
        /// The manifests of the files to keep.
        #[arg(long, num_args = 1.., required = true, value_name = "MANIFEST")]
        keep: Vec<std::path::PathBuf>,
        /// Print what would be deleted, and delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// STAT a chunk (hex id).
    Stat { id: String },
    /// DELETE a chunk (hex id).
    Delete { id: String },
    /// PING the server.
    Ping,
    /// Ask a running file server through its admin socket (`fileserver --admin-socket PATH`):
    /// `stats` (every counter in words), `metrics` (the Prometheus exposition),
    /// `connections` (like `ss -ti`), `capture start FILE --packets N | --bytes N`,
    /// `capture stop`, `capture status`, `help`. Connects to no chunk server.
    Admin {
        /// The server's admin socket.
        #[arg(long, value_name = "PATH")]
        socket: std::path::PathBuf,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 10)]
        wait_s: u64,
        /// The command and its arguments (a relative capture file is taken from the current
        /// directory).
        #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum BenchOp {
    Read,
    Write,
}

fn main() -> ExitCode {
    common::init_logging();
    common::exit_code("chunkctl", run(&Args::parse()))
}

fn client_config(args: &Args) -> Result<ClientConfig, String> {
    let mut cfg = ClientConfig {
        request_timeout: Duration::from_secs(args.timeout_s),
        ..ClientConfig::default()
    };
    cfg.limits = Limits {
        payload_len_max: u32::try_from(args.payload_max.0)
            .map_err(|_| "--payload-max must be below 4 GiB")?,
        ..Limits::default()
    };
    // Enough staging for every connection to keep its requests in flight.
    cfg.staging.small_count = (64 * args.connections).max(128);
    cfg.staging.large_count = (4 * args.connections).clamp(8, 64);
    Ok(cfg)
}

/// The server's addresses: every address of a host name (or an IPv6 address) for the kernel
/// backend, tried in order; one IPv4 address for ustack backends, which have no resolver and
/// speak IPv4.
fn server_addrs(args: &Args) -> Result<Vec<SocketAddr>, String> {
    let s = args.server.as_str();
    match args.backend {
        Backend::Kernel => {
            use std::net::ToSocketAddrs;
            let addrs: Vec<SocketAddr> = s
                .to_socket_addrs()
                .map_err(|e| {
                    format!(
                        "--server {s}: {e} (expected HOST:PORT, e.g. 127.0.0.1:7000, \
                         localhost:7000 or [::1]:7000)"
                    )
                })?
                .collect();
            if addrs.is_empty() {
                return Err(format!("--server {s}: the name has no address"));
            }
            Ok(addrs)
        }
        Backend::Sim => Ok(vec![SocketAddr::V4(SocketAddrV4::new(SIM_SERVER, 7000))]),
        _ => s
            .parse::<SocketAddrV4>()
            .map(|a| vec![SocketAddr::V4(a)])
            .map_err(|_| {
                format!(
                    "--server {s}: ustack backends take an IPv4 address and port (e.g. \
                     10.214.0.1:7000); host names and IPv6 work with --backend kernel"
                )
            }),
    }
}

fn run(args: &Args) -> Result<(), String> {
    if let Cmd::Admin {
        socket,
        wait_s,
        command,
    } = &args.cmd
    {
        return admin(socket, *wait_s, command);
    }
    let cfg = client_config(args)?;
    let addrs = server_addrs(args)?;
    // Sockets for the working connections, the idle ones of a scaling run, and one spare.
    let idle = match args.cmd {
        Cmd::Bench { idle, .. } => idle,
        _ => 0,
    };
    let sockets = args.connections + idle + 1;
    let mut sim_server = None;
    let (mut clients, server): (Box<dyn ClientSet>, SocketAddr) = match args.backend {
        Backend::Kernel => kernel_clients(args, &cfg, &addrs)?,
        Backend::Sim => {
            let (clients, server) = sim_clients(args, &cfg, idle, sockets)?;
            sim_server = Some(server);
            (clients, addrs[0])
        }
        backend => (
            stack_clients(args, backend, &cfg, addrs[0], sockets)?,
            addrs[0],
        ),
    };
    if let Some(n) = args.dev.spin_polls {
        clients.set_spin_polls(n);
    }
    // On stderr: stdout carries the manifest (put) and the results.
    eprintln!("chunkctl: {}", clients.describe());
    wait_connected(clients.as_mut())?;
    let result = command(args, clients.as_mut(), server);
    // FINs, so the server frees its connections now rather than when they time out.
    clients.close(Duration::from_millis(500));
    if let Some(tcp) = clients.tcp_report() {
        // Standard error: standard output carries a put's manifest.
        eprintln!("chunkctl: tcp {tcp}");
    }
    drop(clients);
    if let Some(s) = sim_server {
        let stats = s.finish()?;
        eprintln!(
            "chunkctl: sim server: {} writes, {} reads, {} errors, {:.1} MiB in, {:.1} MiB out",
            stats.writes,
            stats.reads,
            stats.errors,
            stats.bytes_written as f64 / 1048576.0,
            stats.bytes_read as f64 / 1048576.0
        );
    }
    result
}

/// Kernel TCP connections to the first of `addrs` that takes one.
fn kernel_clients(
    args: &Args,
    cfg: &ClientConfig,
    addrs: &[SocketAddr],
) -> Result<(Box<dyn ClientSet>, SocketAddr), String> {
    let staging = Staging::new(&cfg.staging, cfg.limits.payload_len_max as usize)
        .map_err(|e| e.to_string())?;
    // The first address that takes a connection serves them all.
    let mut server = addrs[0];
    let mut first = Err(String::new());
    for &a in addrs {
        first =
            KernelClient::connect_with_staging(a, cfg, staging.clone()).map_err(|e| e.to_string());
        if first.is_ok() {
            server = a;
            break;
        }
    }
    let mut clients = vec![first?];
    for _ in 1..args.connections {
        clients.push(
            KernelClient::connect_with_staging(server, cfg, staging.clone())
                .map_err(|e| e.to_string())?,
        );
    }
    let what = format!("kernel TCP to {server} (no bypass)");
    Ok((Box::new(KernelClients::new(clients, what)), server))
}

/// A ustack client on the in-process simulated link, and the server thread at its other end.
fn sim_clients(
    args: &Args,
    cfg: &ClientConfig,
    idle: usize,
    sockets: usize,
) -> Result<(Box<dyn ClientSet>, clients::SimServer), String> {
    let (_link, a, b) = SimLink::new(SimConfig {
        latency: Duration::ZERO,
        ..SimConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let server = spawn_sim_server(b, args.connections + idle, cfg.limits);
    let stack = Stack::new(
        a,
        stack_config(
            Cidr {
                addr: SIM_CLIENT,
                prefix: 24,
            },
            None,
            sockets,
        ),
    )
    .map_err(|e| e.to_string())?;
    let clients = StackClients::connect(
        stack,
        SocketAddrV4::new(SIM_SERVER, 7000),
        args.connections,
        cfg,
        "ustack <-> ustack over the in-process simulated link (server thread + client thread, memory store)".into(),
    )?;
    Ok((Box::new(clients), server))
}

/// A ustack client on `backend` to `server`, which must be on `--ip`'s subnet.
fn stack_clients(
    args: &Args,
    backend: Backend,
    cfg: &ClientConfig,
    server: SocketAddr,
    sockets: usize,
) -> Result<Box<dyn ClientSet>, String> {
    // server_addrs gives ustack backends one IPv4 address.
    let SocketAddr::V4(server_v4) = server else {
        return Err(format!(
            "--server {server}: ustack backends speak IPv4 only"
        ));
    };
    let mask = u32::MAX << (32 - u32::from(args.ip.prefix));
    if u32::from(*server_v4.ip()) & mask != u32::from(args.ip.addr) & mask {
        return Err(format!(
            "--server {} is not on --ip {}'s subnet, and a ustack client reaches only \
             its own subnet: give an --ip in the server's subnet",
            server_v4.ip(),
            args.ip
        ));
    }
    let (dev, _netns) = open_device(backend, &args.dev, args.ip.addr, MemifRoleArg::Client)?;
    let what = format!(
        "ustack client on {}: {}, to {}",
        dev.kind(),
        dev.reason(),
        server_v4
    );
    let stack = stack_on(dev, &args.dev, args.ip, None, sockets, |_| {})?;
    let clients = StackClients::connect(stack, server_v4, args.connections, cfg, what)?;
    Ok(Box::new(clients))
}

/// Runs the subcommand on connected `clients`.
fn command(args: &Args, clients: &mut dyn ClientSet, server: SocketAddr) -> Result<(), String> {
    match &args.cmd {
        Cmd::Verify {
            total,
            depth,
            seed,
            keep,
        } => verify(clients, total.0, *depth, *seed, *keep, args.payload_max.0),
        Cmd::Bench {
            op,
            size,
            depth,
            duration_s,
            chunks,
            idle,
        } => clients
            .open_idle(*idle, server)
            .and_then(|()| bench(clients, *op, size.0, *depth, *duration_s, *chunks, *idle)),
        Cmd::Put { file, chunk_size } => put(clients, file, chunk_size.0, args.payload_max.0),
        Cmd::Get { manifest, out } => get(clients, manifest, out),
        Cmd::Ls { orphans } => ls(clients, orphans),
        Cmd::Gc { keep, dry_run } => gc(clients, keep, *dry_run),
        Cmd::Stat { id } => single(clients, ChunkOp::Stat { id: parse_id(id)? }),
        Cmd::Delete { id } => single(clients, ChunkOp::Delete { id: parse_id(id)? }),
        Cmd::Ping => single(clients, ChunkOp::Ping),
        // Answered at the start of `run`, without a chunk connection.
        Cmd::Admin { .. } => unreachable!("admin is handled before connecting"),
    }
}

fn parse_id(s: &str) -> Result<ChunkId, String> {
    u128::from_str_radix(s.trim_start_matches("0x"), 16)
        .map(ChunkId)
        .map_err(|_| format!("{s:?} is not a hex chunk id"))
}
