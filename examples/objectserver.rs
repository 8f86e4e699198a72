//! The example S3-compatible object server: a data node for file systems that keep their data
//! in an object store (JuiceFS first among them), over a ustack backend or over kernel TCP.
//!
//! ```text
//! OBJECTSERVER_KEYS=AKID:SECRET objectserver --data /var/lib/objects --create
//! objectserver --backend auto --iface eth1 --ip 10.0.0.2/24 --port 9000 --data /var/lib/objects
//! juicefs format --storage s3 --bucket http://10.0.0.2:9000/jfs --access-key AKID \
//!     --secret-key SECRET sqlite3://jfs.db jfs
//! ```
//! Objects are stored as chunks of a directory store under `DATA/chunks`, with their key index
//! in `DATA/index.redb`; both survive a kill -9 consistently (no object visible whose bytes
//! are not all stored; chunks of unfinished writes are swept at the next start). Requests must
//! be signed (AWS Signature V4) with one of the access keys given by `OBJECTSERVER_KEYS`
//! (`AKID:SECRET[,AKID2:SECRET2]`) or `--keys-file` (one `AKID:SECRET` per line); keys are never
//! printed. Buckets are path-style: `http://HOST:PORT/BUCKET/KEY`.
//!
//! It prints `OBJECTSERVER final key=value ...` at exit (SIGINT/SIGTERM: it stops accepting,
//! finishes the answers in progress and exits), and the same as `OBJECTSERVER stats` every
//! `--stats-every-s`.

#[path = "common/mod.rs"]
mod common;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::{open_device, stack_on, Backend, Cidr, DevArgs, MemifRoleArg, Size};
use ustack::chunk::{DirStore, DirStoreConfig, SyncPolicy};
use ustack::s3::conn::{Engine, Limits, S3Stats};
use ustack::s3::objects::{Objects, ObjectsConfig};
use ustack::s3::sigv4::Keys;
use ustack::s3::transport::{ConnCounts, S3OnKernel, S3OnStack};
use ustack::serve::{Event, ServeLoop, Service};

#[derive(Parser, Debug)]
#[command(
    name = "objectserver",
    version,
    about = "ustack example S3-compatible object server"
)]
struct Args {
    /// Network backend.
    #[arg(long, value_enum, default_value_t = Backend::Kernel)]
    backend: Backend,
    /// Kernel backend: address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: std::net::SocketAddr,
    /// ustack backends: our address and prefix.
    #[arg(long, default_value = "10.213.0.2/24")]
    ip: Cidr,
    /// ustack backends: TCP port.
    #[arg(long, default_value_t = 9000)]
    port: u16,
    /// ustack backends: default gateway.
    #[arg(long)]
    gateway: Option<Ipv4Addr>,
    #[command(flatten)]
    dev: DevArgs,
    /// Directory of the objects: chunks in DATA/chunks, the key index in DATA/index.redb.
    #[arg(long)]
    data: PathBuf,
    /// Create the data directory if it does not exist.
    #[arg(long)]
    create: bool,
    /// Whether each stored chunk is synced to disk before the PUT is answered.
    #[arg(long, value_enum, default_value_t = SyncArg::Always)]
    sync: SyncArg,
    /// A file of access keys, one `AKID:SECRET` per line (or set OBJECTSERVER_KEYS).
    #[arg(long)]
    keys_file: Option<PathBuf>,
    /// Buckets to create at start if they do not exist.
    #[arg(long = "bucket")]
    buckets: Vec<String>,
    /// Bytes per chunk: an object is stored as chunks of this size.
    #[arg(long, default_value = "4MiB")]
    chunk: Size,
    /// Connections served at once.
    #[arg(long, default_value_t = 256)]
    connections_max: usize,
    /// Print counters every this many seconds (0: only at exit).
    #[arg(long, default_value_t = 0)]
    stats_every_s: u64,
}

#[derive(Copy, Clone, Debug, clap::ValueEnum)]
enum SyncArg {
    /// fdatasync each chunk write (a power loss loses nothing acknowledged).
    Always,
    /// Leave chunks in the page cache (a kill -9 loses nothing; a power loss may).
    Never,
}

const NAME: &str = "objectserver";

fn main() -> std::process::ExitCode {
    common::init_logging();
    let args = Args::parse();
    common::exit_code(NAME, run(&args))
}

fn keys(args: &Args) -> Result<Keys, String> {
    let spec = match (&args.keys_file, std::env::var("OBJECTSERVER_KEYS")) {
        (Some(path), _) => std::fs::read_to_string(path)
            .map_err(|e| format!("reading --keys-file {}: {e}", path.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join(","),
        (None, Ok(v)) => v,
        (None, Err(_)) => {
            return Err("no access keys: set OBJECTSERVER_KEYS=AKID:SECRET or give \
                        --keys-file PATH (one AKID:SECRET per line)"
                .into())
        }
    };
    let keys = Keys::parse(&spec)?;
    if keys.is_empty() {
        return Err("the access key list is empty".into());
    }
    Ok(keys)
}

fn engine(args: &Args) -> Result<Engine<Arc<DirStore>>, String> {
    let keys = keys(args)?;
    if !args.create && !args.data.is_dir() {
        return Err(format!(
            "data directory {} does not exist: check the path, or add --create",
            args.data.display()
        ));
    }
    let chunk = u32::try_from(args.chunk.0).map_err(|_| "--chunk must be below 4 GiB")?;
    let store_cfg = DirStoreConfig {
        sync: match args.sync {
            SyncArg::Always => SyncPolicy::Always,
            SyncArg::Never => SyncPolicy::Never,
        },
        chunk_len_max: u64::from(chunk),
        ..DirStoreConfig::default()
    };
    let store = DirStore::open(args.data.join("chunks"), store_cfg).map_err(|e| e.to_string())?;
    println!(
        "{NAME}: chunks in {} ({})",
        args.data.join("chunks").display(),
        store.recovery()
    );
    let cfg = ObjectsConfig {
        chunk_bytes: chunk,
        ..ObjectsConfig::new(&args.data)
    };
    let (objects, recovered) = Objects::open(Arc::new(store), cfg).map_err(|e| e.to_string())?;
    println!(
        "{NAME}: index {}: {} objects, {} uploads in progress, {} unreferenced chunks swept",
        args.data.join("index.redb").display(),
        recovered.objects,
        recovered.uploads,
        recovered.chunks_swept
    );
    for b in &args.buckets {
        match objects.create_bucket(b) {
            Ok(()) => println!("{NAME}: bucket {b} created"),
            Err(e) if e.s3_code() == "BucketAlreadyOwnedByYou" => {}
            Err(e) => return Err(format!("creating bucket {b}: {e}")),
        }
    }
    println!("{NAME}: {keys:?}");
    Ok(Engine::new(objects, keys, Limits::default()))
}

fn run(args: &Args) -> Result<(), String> {
    let engine = engine(args)?;
    let spin = args.dev.spin_polls.unwrap_or(ServeLoop::SPIN_POLLS);
    let serve = ServeLoop::new()
        .spin_polls(spin)
        .report_every(Some(Duration::from_secs(args.stats_every_s)))
        .stop_on_signals()
        .map_err(|e| format!("installing signal handlers: {e}"))?;
    match args.backend {
        Backend::Kernel => {
            println!("{NAME}: backend kernel (kernel TCP, no bypass) because --backend kernel");
            let mut s = S3OnKernel::bind(args.listen, engine, args.connections_max)
                .map_err(|e| format!("listening on {}: {e}", args.listen))?;
            println!("{NAME}: listening on {}", args.listen);
            serve_until_stopped(serve, &mut s, |s| Line(s.counts(), s.engine.stats()));
        }
        Backend::Sim => {
            return Err("--backend sim has no peer here: use kernel or a NIC backend".into())
        }
        backend => {
            let (dev, _netns) =
                open_device(backend, &args.dev, args.ip.addr, MemifRoleArg::Server)?;
            println!("{NAME}: backend {}: {}", dev.kind(), dev.reason());
            let sockets = args.connections_max + 16;
            let stack = stack_on(dev, &args.dev, args.ip, args.gateway, sockets, |_| {})?;
            let mut s = S3OnStack::new(stack, engine, args.port, args.connections_max)
                .map_err(|e| e.to_string())?;
            println!("{NAME}: listening on {}:{}", s.stack.ipv4(), args.port);
            serve_until_stopped(serve, &mut s, |s| Line(s.counts(), s.engine.stats()));
        }
    }
    Ok(())
}

/// Runs `service` until a signal, printing the counters `stats` reads from it.
fn serve_until_stopped<S: Service>(serve: ServeLoop, service: &mut S, stats: impl Fn(&S) -> Line) {
    let report = |label: &str, l: Line| {
        let (c, s) = (l.0, l.1);
        println!(
            "OBJECTSERVER {label} accepted={} refused={} closed={} requests={} gets={} puts={} \
             deletes={} lists={} errors={} auth_failures={} bad_requests={} timeouts={} \
             bytes_in={} bytes_out={}",
            c.accepted,
            c.refused,
            c.closed,
            s.requests,
            s.gets,
            s.puts,
            s.deletes,
            s.lists,
            s.errors,
            s.auth_failures,
            s.bad_requests,
            s.timeouts,
            s.bytes_in,
            s.bytes_out
        );
    };
    serve.run(service, |e, service| match e {
        Event::Report => report("stats", stats(service)),
        Event::Stopping(cause) => println!("{NAME}: {cause}: shutting down"),
    });
    report("final", stats(service));
}

/// A transport's connection counts and the engine's counters.
struct Line(ConnCounts, S3Stats);
