//! A [`Snapshot`] in the OpenMetrics text format, through `prometheus-client`.
//!
//! Names carry the `ustack_` prefix and base units (`_bytes`, `_seconds`); counters end in
//! `_total` (added by the encoder). Label values come from fixed sets only (ops, statuses,
//! drop reasons, TCP states, pools, the backend): nothing a peer sends becomes a label, so the
//! number of series is bounded whatever the traffic.

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::chunk::meter::{op_label, Histogram, OP_SLOTS};
use crate::mem::PoolStats;
use crate::proto::Status;

use super::snapshot::{DeviceDetail, Snapshot};
use crate::dev::af_xdp::{AttachMode, BindMode, XdpModeInfo, XdpStats};
use crate::dev::memif::{MemifState, MemifStats};

/// Encodes `snap` (and `process`, read now) as an OpenMetrics exposition, `# EOF` included.
pub fn encode_openmetrics(snap: &Snapshot, age: Duration) -> String {
    let mut reg = Registry::with_prefix("ustack");
    reg.register_collector(Box::new(SnapshotCollector {
        snap: snap.clone(),
        age,
    }));
    let mut out = String::with_capacity(64 * 1024);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
    out
}

/// The exposition in Prometheus's classic text format (version 0.0.4), for clients that do not
/// ask for OpenMetrics (`promtool check metrics`, `curl`): `prometheus-client` writes only
/// OpenMetrics, and the classic format differs in three ways a line rewrite covers: a counter's
/// `# HELP` and `# TYPE` name it with its `_total` suffix, there are no `# UNIT` lines, and no
/// `# EOF`.
pub fn openmetrics_to_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (*p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(p);
                    out.push_str(name);
                    out.push_str("_total ");
                    out.push_str(tail);
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[derive(Debug)]
struct SnapshotCollector {
    snap: Snapshot,
    age: Duration,
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// Writes families: one descriptor, then one sample per label set.
struct Out<'e, 'w> {
    enc: &'e mut DescriptorEncoder<'w>,
}

impl Out<'_, '_> {
    fn family(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        ty: MetricType,
        samples: &[(Labels<'_>, f64)],
    ) -> Result<(), std::fmt::Error> {
        let unit = unit.as_ref();
        let mut m = self.enc.encode_descriptor(name, help, unit, ty)?;
        if let [(labels, v)] = samples {
            if labels.is_empty() {
                // A lone sample without labels: `name value`, not `name{} value`.
                return put(ty, *v, m);
            }
        }
        for (labels, v) in samples {
            put(ty, *v, m.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn counter(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: &[(Labels<'_>, f64)],
    ) -> Result<(), std::fmt::Error> {
        self.family(name, help, unit, MetricType::Counter, samples)
    }

    fn gauge(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        samples: &[(Labels<'_>, f64)],
    ) -> Result<(), std::fmt::Error> {
        self.family(name, help, unit, MetricType::Gauge, samples)
    }

    fn histograms(
        &mut self,
        name: &str,
        help: &str,
        samples: &[(Labels<'_>, &Histogram)],
    ) -> Result<(), std::fmt::Error> {
        let unit = Unit::Seconds;
        let mut m = self
            .enc
            .encode_descriptor(name, help, Some(&unit), MetricType::Histogram)?;
        let mut buckets = Vec::with_capacity(32);
        for (labels, h) in samples {
            buckets.clear();
            let mut prev = 0;
            for (bound, acc) in h.cumulative() {
                let b = bound.map_or(f64::MAX, |d| d.as_secs_f64());
                buckets.push((b, acc - prev));
                prev = acc;
            }
            let mut fam = m.encode_family(labels)?;
            fam.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                h.sum().as_secs_f64(),
                h.count(),
                &buckets,
                None,
            )?;
        }
        Ok(())
    }
}

fn put(ty: MetricType, v: f64, e: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
    match ty {
        MetricType::Counter => ConstCounter::new(v as u64).encode(e),
        _ => ConstGauge::new(v).encode(e),
    }
}

fn one(v: f64) -> Vec<(Labels<'static>, f64)> {
    vec![(Vec::new(), v)]
}

fn u(v: u64) -> f64 {
    v as f64
}

fn pools<'a>(list: &[(&'static str, PoolStats)]) -> [Vec<(Labels<'a>, f64)>; 4] {
    let mut out: [Vec<(Labels<'a>, f64)>; 4] = Default::default();
    for (name, p) in list {
        let l = || vec![("pool", *name)];
        out[0].push((l(), p.capacity as f64));
        out[1].push((l(), p.in_use as f64));
        out[2].push((l(), p.high_water as f64));
        out[3].push((l(), u(p.alloc_failed)));
    }
    out
}

impl Collector for SnapshotCollector {
    fn encode(&self, enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut enc = enc;
        let mut o = Out { enc: &mut enc };
        let s = &self.snap;
        encode_meta(&mut o, s, self.age)?;
        encode_chunk(&mut o, s)?;
        encode_device(&mut o, s)?;
        encode_pools(&mut o, s)?;
        encode_stack(&mut o, s)?;
        encode_memory(&mut o, s)
    }
}

/// The build, the uptime and how old the snapshot is.
fn encode_meta(o: &mut Out<'_, '_>, s: &Snapshot, age: Duration) -> Result<(), std::fmt::Error> {
    let backend = s.backend;

    o.gauge(
        "build_info",
        "The crate version and the transport this server runs on (always 1).",
        None,
        &[(
            vec![("version", env!("CARGO_PKG_VERSION")), ("backend", backend)],
            1.0,
        )],
    )?;
    o.gauge(
        "uptime",
        "Time since the server's metrics hub started.",
        Some(Unit::Seconds),
        &one(s.uptime.as_secs_f64()),
    )?;
    o.gauge(
            "snapshot_age",
            "How old the counters served are: 0 unless the serving loop did not answer the scrape in time.",
            Some(Unit::Seconds),
            &one(age.as_secs_f64()),
        )?;

    Ok(())
}

/// The chunk server: requests, bytes, latency histograms, connections, waits.
fn encode_chunk(o: &mut Out<'_, '_>, s: &Snapshot) -> Result<(), std::fmt::Error> {
    let st = &s.server.stats;
    let m = &st.requests;
    let mut by_op_status = Vec::new();
    for op in 0..OP_SLOTS {
        for status in Status::ALL {
            let n = m.answers(op, status);
            if n > 0 {
                by_op_status.push((
                    vec![("op", op_label(op)), ("status", status_label(status))],
                    u(n),
                ));
            }
        }
    }
    o.counter(
            "chunk_requests",
            "Chunk requests answered, by op and answer status (other: frames rejected before their op was known).",
            None,
            &by_op_status,
        )?;
    o.counter(
        "chunk_payload",
        "Payload bytes stored by WRITEs and sent by READs.",
        Some(Unit::Bytes),
        &[
            (vec![("op", "write")], u(st.bytes_written)),
            (vec![("op", "read")], u(st.bytes_read)),
        ],
    )?;
    let service: Vec<_> = (0..OP_SLOTS)
        .filter(|&op| m.service(op).count() > 0)
        .map(|op| (vec![("op", op_label(op))], m.service(op)))
        .collect();
    o.histograms(
        "chunk_service",
        "Time from a request's header to its answer being ready to send, by op.",
        &service,
    )?;
    let storage: Vec<_> = (0..OP_SLOTS)
        .filter(|&op| m.storage(op).count() > 0)
        .map(|op| (vec![("op", op_label(op))], m.storage(op)))
        .collect();
    o.histograms(
        "chunk_storage",
        "Time of the store call alone (not its wait in a queue), by op.",
        &storage,
    )?;
    o.gauge(
        "chunk_in_flight",
        "Requests taken and not yet fully answered.",
        None,
        &one(s.server.in_flight as f64),
    )?;
    o.gauge(
        "chunk_storage_outstanding",
        "Store calls queued on or running on the storage workers.",
        None,
        &one(s.server.storage_outstanding as f64),
    )?;
    o.gauge(
        "chunk_connections",
        "Chunk connections open, and the most served at once.",
        None,
        &[
            (vec![("kind", "open")], s.server.connections as f64),
            (vec![("kind", "max")], s.server.connections_max as f64),
        ],
    )?;
    o.counter(
            "chunk_connection_events",
            "Chunk connections accepted, refused (at connections_max or shutting down), closed, and closed because the peer broke the protocol.",
            None,
            &[
                (vec![("event", "accepted")], u(st.connections_accepted)),
                (vec![("event", "refused")], u(st.connections_refused)),
                (vec![("event", "closed")], u(st.connections_closed)),
                (
                    vec![("event", "closed_for_errors")],
                    u(st.connections_closed_for_errors),
                ),
            ],
        )?;
    o.counter(
        "chunk_waits",
        "Times a request waited: for a staging buffer, for room in a storage worker's queue.",
        None,
        &[
            (vec![("for", "staging")], u(st.staging_waits)),
            (vec![("for", "storage_queue")], u(st.storage_waits)),
        ],
    )?;
    o.counter(
        "chunk_storage_timeouts",
        "Requests answered Timeout because their store call ran too long.",
        None,
        &one(u(st.storage_timeouts)),
    )?;
    o.counter(
        "chunk_storage_late",
        "Store results that came after their request timed out or its connection went.",
        None,
        &one(u(st.storage_late)),
    )?;
    Ok(())
}

/// The device and its backend's own counters.
fn encode_device(o: &mut Out<'_, '_>, s: &Snapshot) -> Result<(), std::fmt::Error> {
    if let Some(d) = &s.device {
        let l = &d.link;
        o.counter(
            "device_frames",
            "Frames the device received and sent.",
            None,
            &[
                (vec![("direction", "rx")], u(l.rx_packets)),
                (vec![("direction", "tx")], u(l.tx_packets)),
            ],
        )?;
        o.counter(
            "device",
            "Bytes in the frames the device received and sent.",
            Some(Unit::Bytes),
            &[
                (vec![("direction", "rx")], u(l.rx_bytes)),
                (vec![("direction", "tx")], u(l.tx_bytes)),
            ],
        )?;
        o.counter(
                "device_drops",
                "Frames the device dropped (dropped: no buffer, ring full or link down; error: broken or refused).",
                None,
                &[
                    (vec![("direction", "rx"), ("reason", "dropped")], u(l.rx_dropped)),
                    (vec![("direction", "rx"), ("reason", "error")], u(l.rx_errors)),
                    (vec![("direction", "tx"), ("reason", "dropped")], u(l.tx_dropped)),
                    (vec![("direction", "tx"), ("reason", "error")], u(l.tx_errors)),
                ],
            )?;
        o.gauge(
            "device_link_up",
            "Whether the device's link is up.",
            None,
            &one(if d.link_up { 1.0 } else { 0.0 }),
        )?;
        match &d.detail {
            DeviceDetail::None => {}
            DeviceDetail::Memif { stats, state } => encode_memif(o, stats, *state)?,
            DeviceDetail::AfXdp { stats, mode } => encode_af_xdp(o, stats, mode)?,
            DeviceDetail::Dpdk {
                missed,
                rx_errors,
                rx_nombuf,
                pool_free,
                pool_in_use,
                tx_alloc_failures,
            } => {
                o.counter(
                    "dpdk_port_drops",
                    "Frames the DPDK port dropped: missed (RX queue full), errors, no mbuf.",
                    None,
                    &[
                        (vec![("reason", "missed")], u(*missed)),
                        (vec![("reason", "error")], u(*rx_errors)),
                        (vec![("reason", "no_mbuf")], u(*rx_nombuf)),
                    ],
                )?;
                o.gauge(
                    "dpdk_mbufs",
                    "Mbufs of the port's pool, free and handed out.",
                    None,
                    &[
                        (vec![("kind", "free")], u(*pool_free)),
                        (vec![("kind", "in_use")], u(*pool_in_use)),
                    ],
                )?;
                o.counter(
                    "dpdk_tx_alloc_failures",
                    "Transmit allocations that found the mbuf pool empty.",
                    None,
                    &one(u(*tx_alloc_failures)),
                )?;
            }
        }
    }

    Ok(())
}

/// A memif device's connection state and peer counters.
fn encode_memif(
    o: &mut Out<'_, '_>,
    stats: &MemifStats,
    state: MemifState,
) -> Result<(), std::fmt::Error> {
    o.gauge(
        "memif_state",
        "The memif connection's state (1 for the current one).",
        None,
        &[(vec![("state", memif_state_label(state))], 1.0)],
    )?;
    o.counter(
            "memif_connection_events",
            "memif connections made, made again after one ended, ended, handshakes failed, attempts, peers refused.",
            None,
            &[
                (vec![("event", "connect")], u(stats.connects)),
                (vec![("event", "reconnect")], u(stats.reconnects)),
                (vec![("event", "disconnect")], u(stats.disconnects)),
                (vec![("event", "handshake_failure")], u(stats.handshake_failures)),
                (vec![("event", "connect_attempt")], u(stats.connect_attempts)),
                (vec![("event", "refused")], u(stats.connections_refused)),
            ],
        )?;
    o.counter(
            "memif_peer_faults",
            "Protocol violations by the memif peer: descriptors outside its regions or of impossible length (rejected), ring indexes moved beyond the protocol (connection ended).",
            None,
            &[
                (vec![("fault", "bad_descriptor")], u(stats.rejected_desc)),
                (vec![("fault", "bad_ring_index")], u(stats.bad_ring_index)),
            ],
        )?;
    o.counter(
        "memif_tx_in_place_frames",
        "Frames built in place in buffers the client posted (no copy).",
        None,
        &one(u(stats.tx_in_place)),
    )?;
    o.counter(
        "memif_tx_copied",
        "Bytes copied into buffers the client posted.",
        Some(Unit::Bytes),
        &one(u(stats.tx_copied_bytes)),
    )?;
    o.counter(
        "memif_chained_frames",
        "Frames carried over several descriptors.",
        None,
        &[
            (vec![("direction", "rx")], u(stats.rx_chains)),
            (vec![("direction", "tx")], u(stats.tx_chains)),
        ],
    )?;
    Ok(())
}

/// An AF_XDP device's mode and ring counters.
fn encode_af_xdp(
    o: &mut Out<'_, '_>,
    stats: &XdpStats,
    mode: &XdpModeInfo,
) -> Result<(), std::fmt::Error> {
    let attach = match mode.attach {
        AttachMode::Native => "native",
        AttachMode::Generic => "generic",
    };
    let bind = match mode.bind {
        BindMode::ZeroCopy => "zerocopy",
        BindMode::Copy => "copy",
    };
    let busy = if mode.busy_poll.is_on() { "on" } else { "off" };
    o.gauge(
            "xdp_mode_info",
            "How the AF_XDP socket runs: attach mode, bind mode, busy polling, multi-buffer (always 1).",
            None,
            &[(
                vec![
                    ("attach", attach),
                    ("bind", bind),
                    ("busy_poll", busy),
                    ("multi_buffer", if mode.multi_buffer { "on" } else { "off" }),
                ],
                1.0,
            )],
        )?;
    o.counter(
            "xdp_ring_full",
            "Times a ring was full: tx (frames left for the next burst), fill (refills that left the fill ring under a quarter full: the kernel then drops).",
            None,
            &[
                (vec![("ring", "tx")], u(stats.tx_ring_full)),
                (vec![("ring", "fill")], u(stats.fill_starved)),
            ],
        )?;
    o.counter(
        "xdp_kicks",
        "Wakeups of the kernel (sendto for TX, recvfrom for RX), and TX kicks that failed.",
        None,
        &[
            (vec![("direction", "tx")], u(stats.tx_kicks)),
            (vec![("direction", "rx")], u(stats.rx_kicks)),
            (vec![("direction", "tx_failed")], u(stats.tx_kick_errors)),
        ],
    )?;
    o.counter(
        "xdp_empty_polls",
        "Receive polls that found the RX ring empty.",
        None,
        &one(u(stats.rx_empty_polls)),
    )?;
    o.counter(
        "xdp_bad_descriptors",
        "Ring entries that were not a frame lent to the kernel (refused).",
        None,
        &one(u(stats.bad_descriptors)),
    )?;
    o.counter(
            "xdp_multi_buffer_frames",
            "Frames carried in several UMEM frames, and chains dropped as broken or for want of a staging buffer.",
            None,
            &[
                (vec![("kind", "rx")], u(stats.rx_multi_buffer_frames)),
                (vec![("kind", "tx")], u(stats.tx_multi_buffer_frames)),
                (vec![("kind", "rx_bad_chain")], u(stats.rx_bad_chains)),
                (vec![("kind", "rx_no_staging")], u(stats.rx_no_staging)),
            ],
        )?;
    Ok(())
}

/// Every buffer pool: the device's and the staging pools.
fn encode_pools(o: &mut Out<'_, '_>, s: &Snapshot) -> Result<(), std::fmt::Error> {
    let (small, large) = (s.server.staging_small, s.server.staging_large);
    let mut pool_list = vec![("staging_large", large)];
    if let Some(p) = small {
        pool_list.push(("staging_small", p));
    }
    if let Some(p) = s.device.as_ref().and_then(|d| d.pool) {
        pool_list.push(("device", p));
    }
    let [cap, in_use, high, failed] = pools(&pool_list);
    o.gauge("pool_buffers", "Buffers in each pool.", None, &cap)?;
    o.gauge(
        "pool_in_use",
        "Buffers of each pool handed out now.",
        None,
        &in_use,
    )?;
    o.gauge(
        "pool_high_water",
        "The most buffers of each pool ever in use at once.",
        None,
        &high,
    )?;
    o.counter(
        "pool_alloc_failures",
        "Allocations that found the pool empty.",
        None,
        &failed,
    )?;

    Ok(())
}

/// The stack: frames, drops, connections, TCP.
fn encode_stack(o: &mut Out<'_, '_>, s: &Snapshot) -> Result<(), std::fmt::Error> {
    if let Some(k) = &s.stack {
        let ss = &k.stats;
        o.counter(
            "stack_rx_frames",
            "Frames the stack accepted and handed to TCP/IP.",
            None,
            &one(u(ss.rx_frames)),
        )?;
        o.counter(
            "stack_tx_frames",
            "Frames the stack handed to the device.",
            None,
            &one(u(ss.tx_frames)),
        )?;
        o.counter(
            "stack_drops",
            "Frames the stack dropped, by reason.",
            None,
            &[
                (vec![("reason", "runt")], u(ss.rx_runt)),
                (vec![("reason", "oversize")], u(ss.rx_oversize)),
                (vec![("reason", "not_ours")], u(ss.rx_not_ours)),
                (vec![("reason", "unsupported")], u(ss.rx_unsupported)),
                (vec![("reason", "bad_ipv4")], u(ss.rx_bad_ipv4)),
                (vec![("reason", "fragment")], u(ss.rx_fragment)),
                (vec![("reason", "bad_checksum")], u(ss.rx_bad_checksum)),
                (
                    vec![("reason", "syn_backlog_full")],
                    u(ss.rx_syn_backlog_full),
                ),
                (vec![("reason", "rx_queue_full")], u(ss.rx_queue_full)),
                (vec![("reason", "misdirected")], u(ss.rx_misdirected)),
                (
                    vec![("reason", "arp_fanout_full")],
                    u(ss.arp_fanout_dropped),
                ),
                (vec![("reason", "tx_no_buffer")], u(ss.tx_nobuf)),
            ],
        )?;
        o.counter(
            "stack_tx_queue_full",
            "Times the transmit queue was full and TCP was told to wait.",
            None,
            &one(u(ss.tx_queue_full)),
        )?;
        o.counter(
                "stack_connection_events",
                "Connection events of the stack: accepted, connected, half-open evicted (SYN backlog full) or unreachable (no ARP answer), idle reaped, close timeouts, listeners that found no socket to re-arm.",
                None,
                &[
                    (vec![("event", "accepted")], u(ss.accepted)),
                    (vec![("event", "connected")], u(ss.connected)),
                    (vec![("event", "half_open_evicted")], u(ss.half_open_evicted)),
                    (vec![("event", "half_open_unreachable")], u(ss.half_open_unreachable)),
                    (vec![("event", "idle_reaped")], u(ss.idle_reaped)),
                    (vec![("event", "close_timeout")], u(ss.close_timeouts)),
                    (vec![("event", "sockets_exhausted")], u(ss.sockets_exhausted)),
                ],
            )?;
        o.gauge(
            "stack_sockets",
            "The stack's TCP sockets: in use, and all.",
            None,
            &[
                (vec![("kind", "in_use")], k.sockets_in_use as f64),
                (vec![("kind", "max")], k.sockets_max as f64),
            ],
        )?;
        let states: Vec<_> = k
            .states
            .iter()
            .map(|(state, n)| (vec![("state", state.name())], n as f64))
            .collect();
        o.gauge(
            "tcp_connections",
            "TCP sockets by state (ss's names: LISTEN, SYN-RECV, ESTAB, ...).",
            None,
            &states,
        )?;
        let t = &k.tcp;
        o.counter(
            "tcp_segments_sent",
            "Data segments sent for the first time.",
            None,
            &one(u(t.segments_sent)),
        )?;
        o.counter(
                "tcp_retransmits",
                "Segments sent again, by cause: rto (timer), fast (duplicate ACKs), sack (SACK/RACK showed them lost), tlp (tail loss probes).",
                None,
                &[
                    (vec![("cause", "rto")], u(t.retransmits_rto)),
                    (vec![("cause", "fast")], u(t.retransmits_fast)),
                    (vec![("cause", "sack")], u(t.retransmits_sack)),
                    (vec![("cause", "tlp")], u(t.tail_loss_probes)),
                ],
            )?;
        o.counter(
                "tcp_events",
                "TCP events: retransmission timeouts, fast recoveries, recoveries undone, spurious retransmissions, duplicates received, challenge ACKs (RFC 5961), SACK blocks ignored, handshakes timed out.",
                None,
                &[
                    (vec![("event", "rto_expiration")], u(t.rto_expirations)),
                    (vec![("event", "fast_recovery")], u(t.fast_recoveries)),
                    (vec![("event", "recovery_undone")], u(t.recoveries_undone)),
                    (vec![("event", "spurious_retransmit")], u(t.spurious_retransmits)),
                    (vec![("event", "duplicate_received")], u(t.duplicates_received)),
                    (vec![("event", "challenge_ack")], u(t.challenge_acks)),
                    (vec![("event", "sack_block_ignored")], u(t.sack_blocks_ignored)),
                    (vec![("event", "handshake_timeout")], u(t.handshake_timeouts)),
                ],
            )?;
        if let Some((lo, mean, hi)) = k.srtt {
            o.gauge(
                "tcp_smoothed_rtt",
                "Smoothed round-trip time over the connections open now: min, mean, max.",
                Some(Unit::Seconds),
                &[
                    (vec![("stat", "min")], lo.as_secs_f64()),
                    (vec![("stat", "mean")], mean.as_secs_f64()),
                    (vec![("stat", "max")], hi.as_secs_f64()),
                ],
            )?;
        }
    }

    Ok(())
}

/// Memory reserved and the process's own figures.
fn encode_memory(o: &mut Out<'_, '_>, s: &Snapshot) -> Result<(), std::fmt::Error> {
    let mut reserved = vec![(vec![("area", "staging")], s.server.staging_bytes as f64)];
    if let Some(k) = &s.stack {
        reserved.push((
            vec![("area", "socket_buffers")],
            k.socket_buffer_bytes as f64,
        ));
    }
    if let Some(d) = &s.device {
        if d.pool_bytes > 0 {
            reserved.push((vec![("area", "device_frames")], d.pool_bytes as f64));
        }
    }
    o.gauge(
        "memory_reserved",
        "Memory reserved at start, by area (nothing grows with traffic).",
        Some(Unit::Bytes),
        &reserved,
    )?;
    if let Some(b) = s.process.hugetlb_bytes {
        o.gauge(
            "process_hugepages",
            "Hugepage memory the process has mapped.",
            Some(Unit::Bytes),
            &one(b as f64),
        )?;
    }
    if let Some(b) = s.process.resident_bytes {
        o.gauge(
            "process_resident",
            "Resident set size of the process.",
            Some(Unit::Bytes),
            &one(b as f64),
        )?;
    }
    Ok(())
}

/// The label value of a status: its name in snake case (`ok`, `not_found`, ...).
pub(crate) fn status_label(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::NotFound => "not_found",
        Status::BadChecksum => "bad_checksum",
        Status::BadHeaderChecksum => "bad_header_checksum",
        Status::TooLarge => "too_large",
        Status::OutOfRange => "out_of_range",
        Status::ChunkTooLarge => "chunk_too_large",
        Status::UnknownOp => "unknown_op",
        Status::UnsupportedVersion => "unsupported_version",
        Status::Malformed => "malformed",
        Status::TooManyInFlight => "too_many_in_flight",
        Status::DuplicateRequestId => "duplicate_request_id",
        Status::Io => "io",
        Status::NoSpace => "no_space",
        Status::ShuttingDown => "shutting_down",
        Status::Busy => "busy",
        Status::Internal => "internal",
        Status::Timeout => "timeout",
        Status::Corrupt => "corrupt",
        Status::TooManyConnections => "too_many_connections",
        Status::Unsupported => "unsupported",
    }
}

fn memif_state_label(s: crate::dev::memif::MemifState) -> &'static str {
    use crate::dev::memif::MemifState;
    match s {
        MemifState::Idle => "idle",
        MemifState::Handshake => "handshake",
        MemifState::Up => "up",
    }
}
