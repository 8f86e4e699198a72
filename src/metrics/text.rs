//! A [`Snapshot`] in words: the lines the example servers print periodically and at exit, and
//! the admin socket's `stats` answer.

use std::fmt::Write;

use crate::chunk::meter::{op_label, OP_OTHER, OP_SLOTS};
use crate::chunk::ServerStats;
use crate::mem::PoolStats;

use super::prom::status_label;
use super::snapshot::{DeviceDetail, DeviceView, Snapshot, StackView};

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

/// A duration in the unit that reads best (`850 ns`, `15 us`, `2.3 ms`, `1.2 s`).
fn dur(d: std::time::Duration) -> String {
    let ns = d.as_nanos();
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{} us", ns / 1_000)
    } else if ns < 1_000_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else {
        format!("{:.2} s", ns as f64 / 1e9)
    }
}

/// The errors a server answered, broken down by cause: `0`, or `14 (not found 10, corrupt 2,
/// malformed 2)`, most frequent first.
pub fn errors_breakdown(s: &ServerStats) -> String {
    let by = s.requests.errors_by_status();
    if by.is_empty() {
        return s.errors.to_string();
    }
    let parts: Vec<String> = by
        .iter()
        .map(|(st, n)| format!("{} {n}", status_label(*st).replace('_', " ")))
        .collect();
    format!("{} ({})", s.errors, parts.join(", "))
}

fn pool_words(name: &str, p: &PoolStats) -> String {
    format!(
        "{name} {} of {} in use (high {}, {} failed allocations)",
        p.in_use, p.capacity, p.high_water, p.alloc_failed
    )
}

/// The snapshot as lines of words, one per layer (server, requests, errors, latency, stack,
/// TCP, device, memory).
pub fn human_lines(s: &Snapshot) -> Vec<String> {
    let mut lines = Vec::new();
    server_lines(s, &mut lines);
    if let Some(lat) = latency_line(&s.server.stats) {
        lines.push(lat);
    }
    if let Some(k) = &s.stack {
        stack_lines(k, &mut lines);
    }
    if let Some(d) = &s.device {
        device_lines(d, &mut lines);
    }
    lines.push(memory_line(s));
    lines
}

/// Connections, requests answered, errors and waits.
fn server_lines(s: &Snapshot, lines: &mut Vec<String>) {
    let sv = &s.server;
    let st = &sv.stats;
    lines.push(format!(
        "server ({}): connections {} open of {} ({} accepted, {} refused, {} closed, {} for protocol errors); {} requests in flight, {} store calls outstanding",
        s.backend,
        sv.connections,
        sv.connections_max,
        st.connections_accepted,
        st.connections_refused,
        st.connections_closed,
        st.connections_closed_for_errors,
        sv.in_flight,
        sv.storage_outstanding
    ));
    let by_op: Vec<String> = (0..OP_SLOTS)
        .filter(|&op| op < OP_OTHER || st.requests.answers_to(op) > 0)
        .map(|op| format!("{} {}", op_label(op), st.requests.answers_to(op)))
        .collect();
    lines.push(format!(
        "requests answered: {}; payload in {} out {}",
        by_op.join(" "),
        mib(st.bytes_written),
        mib(st.bytes_read)
    ));
    lines.push(format!(
        "errors: {}; waits for staging {} for the storage queue {}; storage timeouts {} late results {}",
        errors_breakdown(st),
        st.staging_waits,
        st.storage_waits,
        st.storage_timeouts,
        st.storage_late
    ));
}

/// Service time quantiles per op (`None` before the first answer).
fn latency_line(st: &ServerStats) -> Option<String> {
    let mut lat = String::new();
    for op in 0..OP_SLOTS {
        let h = st.requests.service(op);
        if h.count() == 0 {
            continue;
        }
        let q = |x: f64| {
            h.quantile(x)
                .map_or("> 10 s".to_string(), |d| format!("<= {}", dur(d)))
        };
        let _ = write!(
            lat,
            "{}{} p50 {} p99 {} (mean {})",
            if lat.is_empty() { "" } else { "; " },
            op_label(op),
            q(0.5),
            q(0.99),
            match h.sum() / u32::try_from(h.count()).unwrap_or(u32::MAX).max(1) {
                d if d < std::time::Duration::from_micros(1) => "< 1 us".to_string(),
                d => dur(d),
            }
        );
    }
    (!lat.is_empty()).then(|| format!("service time: {lat}"))
}

/// Sockets, frames and drops; connection events; TCP.
fn stack_lines(k: &StackView, lines: &mut Vec<String>) {
    let ss = &k.stats;
    let drops = [
        ("runt", ss.rx_runt),
        ("oversize", ss.rx_oversize),
        ("not ours", ss.rx_not_ours),
        ("unsupported", ss.rx_unsupported),
        ("bad IPv4", ss.rx_bad_ipv4),
        ("fragment", ss.rx_fragment),
        ("bad checksum", ss.rx_bad_checksum),
        ("SYN backlog full", ss.rx_syn_backlog_full),
        ("receive queue full", ss.rx_queue_full),
        ("misdirected to this core", ss.rx_misdirected),
        ("ARP copy to a full core", ss.arp_fanout_dropped),
        ("no transmit buffer", ss.tx_nobuf),
    ];
    let total: u64 = drops.iter().map(|d| d.1).sum();
    let why: Vec<String> = drops
        .iter()
        .filter(|d| d.1 > 0)
        .map(|(n, c)| format!("{n} {c}"))
        .collect();
    let states: Vec<String> = k
        .states
        .iter()
        .filter(|&(_, n)| n > 0)
        .map(|(state, n)| format!("{} {n}", state.name()))
        .collect();
    lines.push(format!(
        "stack: sockets {} of {} in use ({}); frames in {} out {}; dropped {}{}",
        k.sockets_in_use,
        k.sockets_max,
        if states.is_empty() {
            "none open".to_string()
        } else {
            states.join(" ")
        },
        ss.rx_frames,
        ss.tx_frames,
        total,
        if why.is_empty() {
            String::new()
        } else {
            format!(" ({})", why.join(", "))
        }
    ));
    lines.push(format!(
        "connections: {} accepted, {} connected; half-open evicted {} unreachable {}; idle reaped {}; close timeouts {}; no socket to re-arm {}",
        ss.accepted,
        ss.connected,
        ss.half_open_evicted,
        ss.half_open_unreachable,
        ss.idle_reaped,
        ss.close_timeouts,
        ss.sockets_exhausted
    ));
    lines.push(format!(
        "tcp: {}{}",
        k.tcp,
        match k.srtt {
            Some((lo, mean, hi)) => format!(
                "; smoothed RTT min {} mean {} max {}",
                dur(lo),
                dur(mean),
                dur(hi)
            ),
            None => String::new(),
        }
    ));
}

/// The link's counters and the backend's own.
fn device_lines(d: &DeviceView, lines: &mut Vec<String>) {
    let l = &d.link;
    let mut line = format!(
        "device {}: link {}; in {} frames ({}), out {} frames ({}); dropped in {} out {}; errors in {} out {}",
        d.kind,
        if d.link_up { "up" } else { "down" },
        l.rx_packets,
        mib(l.rx_bytes),
        l.tx_packets,
        mib(l.tx_bytes),
        l.rx_dropped,
        l.tx_dropped,
        l.rx_errors,
        l.tx_errors
    );
    if let Some(p) = &d.pool {
        let _ = write!(line, "; {}", pool_words("frames", p));
    }
    lines.push(line);
    match &d.detail {
        DeviceDetail::None => {}
        DeviceDetail::Memif { stats, state } => lines.push(format!(
            "memif: {state:?}; {} connects ({} again), {} disconnects, {} failed handshakes; peer faults: {} bad descriptors, {} bad ring indexes; {} frames built in place, {} copied",
            stats.connects,
            stats.reconnects,
            stats.disconnects,
            stats.handshake_failures,
            stats.rejected_desc,
            stats.bad_ring_index,
            stats.tx_in_place,
            mib(stats.tx_copied_bytes)
        )),
        DeviceDetail::AfXdp { stats, mode } => lines.push(format!(
            "af-xdp: {} attach, {} bind, busy polling {}; TX ring full {}, fill ring starved {}; kicks TX {} RX {}; bad descriptors {}",
            mode.attach,
            mode.bind,
            mode.busy_poll,
            stats.tx_ring_full,
            stats.fill_starved,
            stats.tx_kicks,
            stats.rx_kicks,
            stats.bad_descriptors
        )),
        DeviceDetail::Dpdk {
            missed,
            rx_errors,
            rx_nombuf,
            pool_free,
            pool_in_use,
            tx_alloc_failures,
        } => lines.push(format!(
            "dpdk: port missed {missed}, errors {rx_errors}, no mbuf {rx_nombuf}; mbufs {pool_in_use} in use, {pool_free} free; {tx_alloc_failures} failed TX allocations"
        )),
    }
}

/// Staging, socket buffers, device frames, hugepages, resident memory.
fn memory_line(s: &Snapshot) -> String {
    let sv = &s.server;
    let mut pools = vec![pool_words("large", &sv.staging_large)];
    if let Some(p) = &sv.staging_small {
        pools.insert(0, pool_words("small", p));
    }
    let mut mem = format!(
        "memory: staging {} ({})",
        mib(sv.staging_bytes as u64),
        pools.join(", ")
    );
    if let Some(k) = &s.stack {
        let _ = write!(
            mem,
            "; socket buffers {}",
            mib(k.socket_buffer_bytes as u64)
        );
    }
    if let Some(d) = &s.device {
        if d.pool_bytes > 0 {
            let _ = write!(mem, "; device frames {}", mib(d.pool_bytes as u64));
        }
    }
    if let Some(h) = s.process.hugetlb_bytes {
        let _ = write!(mem, "; hugepages mapped {}", mib(h));
    }
    if let Some(r) = s.process.resident_bytes {
        let _ = write!(mem, "; resident {}", mib(r));
    }
    mem
}
