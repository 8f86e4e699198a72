//! faultwire: a layer-2 relay with seeded faults, for testing TCP loss recovery on a real path
//! where `tc netem` is not available.
//!
//! ```text
//! faultwire --left IFACE --right IFACE --seed N --loss P --duplicate P --reorder P --corrupt P \
//!     [--reorder-delay-us N] [--stats-file PATH]
//! ```
//!
//! It forwards every Ethernet frame that arrives on `--left` out of `--right` and the other way
//! round (AF_PACKET sockets, promiscuous, batches of up to 32 frames per system call), deciding
//! per frame and per direction, from the seed, whether to drop it, duplicate it, hold it back
//! for `--reorder-delay-us` so later frames overtake it, or flip one bit of its IPv4 packet (so
//! the IP or TCP checksum catches it): see `ustack::dev::faults`. The same seed and the same
//! frames in the same order give the same decisions; the two directions have independent
//! streams. Probabilities are fractions (`0.01`) or percentages (`1%`).
//!
//! It counts per direction the frames seen, forwarded, dropped, duplicated, reordered and
//! corrupted, and the frames and bytes per source MAC address. On SIGTERM or SIGINT it writes
//! them as one line `FAULTWIRE key=value ...` to `--stats-file` (or standard output) and exits 0.
//! Memory is fixed at start (the hold queue is bounded: when full, a frame to be held goes at
//! once and is counted as `reorder_overflow`); nothing is allocated per frame.
//!
//! It waits in poll(2) when idle after a short spin (`--spin-polls`), since it shares the
//! machine with the endpoints. Run it in the namespace that holds both interfaces (see
//! `scripts/netns.sh lossy-up` and `ustack::host::lossy`); needs CAP_NET_RAW.

#[path = "common/mod.rs"]
mod common;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use common::Size;
use ustack::dev::faults::{FaultDice, FaultLane, Faults, LaneConfig, WireReport};
use ustack::host::lossy::RELAY_READY;
use ustack::host::packet::{FrameBatch, PacketSocket};
use ustack::host::signal;
use ustack::host::socket::{poll, PollFd, POLLIN, POLLOUT};
use ustack::Instant;

/// A probability: `0.01` or `1%`.
fn probability(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, scale) = match t.strip_suffix('%') {
        Some(n) => (n, 0.01),
        None => (t, 1.0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a probability (0.01 or 1%)"))?;
    let p = v * scale;
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("{s:?} is not between 0 and 1 (0%..100%)"));
    }
    Ok(p)
}

#[derive(Parser, Debug)]
#[command(
    about = "layer-2 relay between two interfaces with seeded loss, duplication, reordering and corruption"
)]
struct Args {
    /// One interface (in this network namespace).
    #[arg(long)]
    left: String,
    /// The other interface.
    #[arg(long)]
    right: String,
    /// Seed of the fault decisions: the same seed and frames give the same decisions.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Probability that a frame is dropped.
    #[arg(long, default_value = "0", value_parser = probability)]
    loss: f64,
    /// Probability that a frame is sent twice.
    #[arg(long, default_value = "0", value_parser = probability)]
    duplicate: f64,
    /// Probability that a frame is held back for --reorder-delay-us.
    #[arg(long, default_value = "0", value_parser = probability)]
    reorder: f64,
    /// Probability that one bit of a frame's IPv4 packet is flipped.
    #[arg(long, default_value = "0", value_parser = probability)]
    corrupt: f64,
    /// How long a reordered frame is held back, microseconds.
    #[arg(long, default_value_t = 100)]
    reorder_delay_us: u64,
    /// The most frames held back at once (per direction); more go at once.
    #[arg(long, default_value_t = 256)]
    hold_frames: usize,
    /// Where to write the counters on exit (default: standard output).
    #[arg(long)]
    stats_file: Option<PathBuf>,
    /// The largest IP MTU forwarded: longer frames are dropped and counted (`truncated`).
    #[arg(long, default_value_t = 9216)]
    mtu: usize,
    /// Frames per receive and send system call (at most 64).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Idle turns to busy-poll before waiting in poll(2).
    #[arg(long, default_value_t = 50)]
    spin_polls: u32,
    /// Receive and send buffer of each socket: room for bursts while the relay is descheduled.
    #[arg(long, default_value = "8MiB")]
    socket_buf: Size,
}

fn main() -> ExitCode {
    common::init_logging();
    common::exit_code("faultwire", run(&Args::parse()))
}

/// One interface: its socket and the batch frames are received into.
struct Port {
    sock: PacketSocket,
    rx: FrameBatch,
}

impl Port {
    fn open(iface: &str, args: &Args, slot_len: usize) -> Result<Port, String> {
        let sock = PacketSocket::open(iface).map_err(|e| e.to_string())?;
        sock.set_promiscuous(true).map_err(|e| e.to_string())?;
        sock.set_ignore_outgoing(true).map_err(|e| e.to_string())?;
        let buf = usize::try_from(args.socket_buf.0).unwrap_or(usize::MAX);
        sock.set_buffers(buf, buf).map_err(|e| e.to_string())?;
        Ok(Port {
            sock,
            rx: FrameBatch::new(args.batch, slot_len),
        })
    }
}

/// One direction: the fault lane and the batch of frames waiting to be sent.
struct Direction {
    lane: FaultLane,
    tx: FrameBatch,
    /// Frames the output interface refused (kept apart from the lane while it is borrowed).
    send_failed: u64,
    /// The first send error, logged once.
    send_error_logged: bool,
}

/// Sends everything in `tx` out of `sock`; waits for room up to 1 ms once, then gives up on
/// the rest (counted as failed). Frames the kernel refuses outright are skipped and counted.
fn flush(tx: &mut FrameBatch, sock: &PacketSocket, failed: &mut u64, logged: &mut bool) -> bool {
    if tx.is_empty() {
        return false;
    }
    let mut sent = 0;
    let mut waited = false;
    while sent < tx.len() {
        match sock.send_batch(tx, sent) {
            Ok(0) if !waited => {
                waited = true;
                let mut fds = [PollFd::new(std::os::fd::AsRawFd::as_raw_fd(sock), POLLOUT)];
                let _ = poll(&mut fds, Duration::from_millis(1));
            }
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(e) => {
                if !*logged {
                    *logged = true;
                    eprintln!(
                        "faultwire: sending on {} failed ({e}); such frames are counted as send_failed",
                        sock.iface()
                    );
                }
                sent += 1;
                *failed += 1;
            }
        }
    }
    *failed += (tx.len() - sent) as u64;
    tx.clear();
    true
}

/// Moves what is due in one direction: held frames whose time has come, then what arrived on
/// `src`. Returns whether anything moved.
fn pump(dir: &mut Direction, src: &mut Port, dst: &PacketSocket, now: Instant) -> bool {
    let Direction {
        lane,
        tx,
        send_failed,
        send_error_logged,
    } = dir;
    let mut emit = |frame: &[u8]| {
        if tx.is_full() {
            flush(tx, dst, send_failed, send_error_logged);
        }
        // Every frame fits: the batches' slots are as long as the longest frame received.
        let _ = tx.push(frame);
    };
    let mut busy = lane.release(now, &mut emit) > 0;
    let n = match src.sock.recv_batch(&mut src.rx) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("faultwire: receiving on {}: {e}", src.sock.iface());
            0
        }
    };
    for i in 0..n {
        if src.rx.wire_len(i) > src.rx.slot_len() {
            lane.stats_mut().truncated += 1;
            continue;
        }
        lane.offer(now, src.rx.frame_mut(i), &mut emit);
    }
    busy |= n > 0;
    flush(tx, dst, send_failed, send_error_logged);
    busy
}

fn run(args: &Args) -> Result<(), String> {
    signal::install_stop_handlers().map_err(|e| format!("installing signal handlers: {e}"))?;
    let faults = Faults {
        loss: args.loss,
        duplicate: args.duplicate,
        reorder: args.reorder,
        corrupt: args.corrupt,
    };
    faults.check().map_err(|e| e.to_string())?;
    if args.left == args.right {
        return Err("--left and --right name the same interface".into());
    }
    let slot_len = args.mtu + 14;
    let mut ports = [
        Port::open(&args.left, args, slot_len)?,
        Port::open(&args.right, args, slot_len)?,
    ];
    let lane_cfg = LaneConfig {
        faults,
        reorder_delay: Duration::from_micros(args.reorder_delay_us),
        hold_frames: args.hold_frames,
        frame_len_max: slot_len,
        ..LaneConfig::default()
    };
    let mut dirs = FaultDice::pair(args.seed).map(|dice| Direction {
        lane: FaultLane::new(dice, lane_cfg).expect("probabilities were checked"),
        tx: FrameBatch::new(args.batch, slot_len),
        send_failed: 0,
        send_error_logged: false,
    });
    let started = Instant::now();
    println!(
        "{RELAY_READY} {} <-> {} (seed {}, loss {}, duplicate {}, reorder {} with {} us delay, corrupt {})",
        args.left, args.right, args.seed, faults.loss, faults.duplicate, faults.reorder,
        args.reorder_delay_us, faults.corrupt
    );
    let mut idle = 0u32;
    while !signal::stop_requested() {
        let now = Instant::now();
        let [left, right] = &mut ports;
        let [l2r, r2l] = &mut dirs;
        let busy = pump(l2r, left, &right.sock, now) | pump(r2l, right, &left.sock, now);
        if busy {
            idle = 0;
            continue;
        }
        idle = idle.saturating_add(1);
        if idle <= args.spin_polls {
            std::hint::spin_loop();
            continue;
        }
        // Sleep until a frame arrives, or the next held frame is due (at most 100 ms, to look
        // at the stop flag; a signal also ends the wait).
        let wait = dirs
            .iter()
            .filter_map(|d| d.lane.next_release())
            .min()
            .map_or(Duration::from_millis(100), |t| {
                t.saturating_duration_since(now)
                    .min(Duration::from_millis(100))
            });
        let mut fds = ports
            .each_ref()
            .map(|p| PollFd::new(std::os::fd::AsRawFd::as_raw_fd(&p.sock), POLLIN));
        poll(&mut fds, wait).map_err(|e| format!("poll: {e}"))?;
    }
    let elapsed = Instant::now() - started;
    for (dir, port) in dirs.iter_mut().zip(&ports) {
        let failed = dir.send_failed;
        let stats = dir.lane.stats_mut();
        stats.send_failed = failed;
        // The input socket's drops: frames of this direction the relay never saw.
        stats.kernel_drops = port.sock.statistics().map(|s| s.drops).unwrap_or(0);
    }
    let mut line = format!(
        "{} seed={} loss={} duplicate={} reorder={} corrupt={} reorder_delay_us={} left={} right={} elapsed_s={:.3} signal={}",
        WireReport::TAG,
        args.seed,
        faults.loss,
        faults.duplicate,
        faults.reorder,
        faults.corrupt,
        args.reorder_delay_us,
        args.left,
        args.right,
        elapsed.as_secs_f64(),
        signal::stop_signal()
    );
    dirs[0].lane.write_kv("l2r", &mut line);
    dirs[1].lane.write_kv("r2l", &mut line);
    line.push('\n');
    match &args.stats_file {
        Some(path) => {
            // Written whole, then renamed: a reader never sees half a report.
            let tmp = path.with_extension("partial");
            std::fs::write(&tmp, &line)
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(line.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| format!("writing the report: {e}"))?;
        }
    }
    eprintln!(
        "faultwire: stopped by signal {}: {} frames left to right, {} right to left",
        signal::stop_signal(),
        dirs[0].lane.stats().seen,
        dirs[1].lane.stats().seen
    );
    Ok(())
}
