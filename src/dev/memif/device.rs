//! The memif device: connection lifecycle (listen or connect with backoff, handshake, teardown)
//! and the [`PacketDevice`] data path over the rings.

use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::dev::{
    fill_checksums, Batch, ChecksumCaps, DeviceCaps, Frame, PacketDevice, ETH_HEADER_LEN,
};
use crate::mem::shm::SharedRegion;
use crate::mem::{BufPool, HugeRegion, PoolBuf};
use crate::sys::socket::{self as poll_sys, PollFd, POLLIN};
use crate::sys::unix_ipc::{self as sys, SeqPacket, SeqPacketListener, UnixAddr};
use crate::time::Instant;

use super::control::{
    ClientHandshake, ClientParams, ClientStep, ControlError, Established, ServerHandshake,
    ServerParams, ServerStep,
};
use super::frame::MemifFrame;
use super::proto::{
    secret_field, Disconnect, Msg, Name, CAP_RX_CHECKSUMS_TRUSTED, MSG_LEN, SECRET_LEN,
};
use super::ring::{
    self, Carry, ClientRx, ClientTx, CopyIn, Parts, PendingCopy, RingFault, ServerRx, ServerTx,
    RING_FLAG_MASK_INT,
};
use super::share::QueueShare;
use super::{MemifConfig, MemifError, MemifRole, MemifState, MemifStats};

/// Control messages read per service call (a handshake needs about ten).
const CONTROL_MSGS_PER_CALL: usize = 16;
/// Extra frames in a client's pool beyond two per ring slot, for frames the stack holds.
const CLIENT_POOL_SPARE: usize = 1024;
/// Buffer memory a client keeps posted per receive ring when `rx_posted_max` is `None`.
const RX_POSTED_BYTES: usize = 2 << 20;
/// The fewest buffers a client posts per receive ring when `rx_posted_max` is `None`.
const RX_POSTED_MIN: usize = 64;
/// Most frames in a server's private pool by default.
const SERVER_POOL_FRAMES: usize = 4096;
/// Fewest frames in a server's private pool by default.
const SERVER_POOL_FRAMES_MIN: usize = 512;
/// Bytes a server's private pool takes by default at most, beyond its minimum of frames
/// (4096 frames of 1536 bytes, but 1032 of 64 KiB).
const SERVER_POOL_BYTES: usize = 64 << 20;
/// Smallest buffer a client posts (bytes per descriptor).
const BUFFER_SIZE_MIN: usize = 128;
/// Largest shared buffer region of a client: buffer offsets are 32-bit, and rounding the region
/// up to whole hugepages must not take it past that.
const POOL_LEN_MAX: usize = 1 << 31;

/// The control connection and where its handshake stands.
struct Conn {
    sock: SeqPacket,
    phase: Phase,
    /// The handshake must finish by then.
    deadline: Instant,
}

enum Phase {
    Server(ServerHandshake),
    Client(Box<ClientHandshake>),
    Up,
}

/// The rings of an established connection.
enum DataPath {
    Client {
        /// Region 0: our rings (region 1, the buffers, is the pool and outlives connections).
        rings: Arc<SharedRegion>,
        tx: Vec<ClientTx>,
        rx: Vec<ClientRx>,
    },
    Server {
        /// The client's regions, mapped (frames lent in place keep theirs mapped).
        regions: Vec<Arc<SharedRegion>>,
        rx: Vec<ServerRx>,
        tx: Vec<ServerTx>,
    },
}

/// A server whose queue pairs are served by several devices, each on a thread of its own
/// ([`MemifDevice::open_shared`]; the module `share` has the hand-over).
enum Share {
    /// Runs the control socket and serves queue pair 0 (and any pair beyond what members take).
    Owner(Arc<QueueShare<Handoff>>),
    /// Serves queue pair `index` of the owner's connection.
    Member {
        share: Arc<QueueShare<Handoff>>,
        index: usize,
        seen: u64,
    },
}

/// What a member gets of a connection: its queue pair, and what the handshake learned.
struct Handoff {
    link: DataPath,
    peer_trusts_checksums: bool,
    peer: (Name, Name),
}

/// The identity of the socket file a server created, so only that file is removed at the end.
struct SocketFile {
    path: std::path::PathBuf,
    dev: u64,
    ino: u64,
}

/// A memif interface (see the [module documentation](super)).
///
/// `F` is its frame type: [`PoolBuf`] ([`MemifDevice::open`]: every frame in the device's own
/// pool), or [`MemifFrame`] ([`MemifDevice::open_in_place`]: a server builds outgoing frames
/// in the buffers its client posted).
pub struct MemifDevice<F = PoolBuf> {
    role: MemifRole,
    addr: UnixAddr,
    caps: DeviceCaps,
    /// Most bytes per descriptor a client posts or sends (its configured buffer size).
    piece: usize,
    /// Most buffers a client keeps posted per receive ring.
    rx_posted: u16,
    pool: BufPool,
    /// A client's shared pool: the memory file and its length, sent as region 1.
    pool_file: Option<(OwnedFd, u64)>,
    listener: Option<SeqPacketListener>,
    socket_file: Option<SocketFile>,
    conn: Option<Conn>,
    link: Option<DataPath>,
    server_params: ServerParams,
    client_params: ClientParams,
    stats: MemifStats,
    peer: Option<(Name, Name)>,
    /// Leave checksums out of frames for a peer that announced it does not verify them.
    elide_tx_checksums: bool,
    /// The connected peer announced that: frames go out without checksums.
    peer_trusts_checksums: bool,
    control_interval: Duration,
    handshake_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    backoff: Duration,
    next_control: Instant,
    next_connect: Instant,
    rx_next: usize,
    last_error: Option<String>,
    /// Reused by `wait` (control socket, listener, ring eventfds).
    poll_fds: Vec<PollFd>,
    /// Queue pairs served by other devices (threads), if opened so.
    share: Option<Share>,
    /// A server lends its client's posted buffers to the stack (in place): set by
    /// `open_in_place` only. Devices that share a connection's regions between threads copy
    /// instead, so no thread holds a reference into memory another one copies through, and
    /// the regions' lease registry (a lock) is never consulted.
    lend: bool,
    _frame: PhantomData<fn() -> F>,
}

fn invalid(field: &'static str, value: impl ToString, reason: &'static str) -> MemifError {
    MemifError::InvalidConfig {
        field,
        value: value.to_string(),
        reason,
    }
}

/// Checks `cfg` and works out the frame pool size.
fn check_config(cfg: &MemifConfig) -> Result<usize, MemifError> {
    if !(1..=super::proto::LOG2_RING_SIZE_MAX).contains(&cfg.ring_size_log2) {
        return Err(invalid(
            "ring_size_log2",
            cfg.ring_size_log2,
            "must be within 1..=14",
        ));
    }
    if !(1..=255).contains(&cfg.queues) {
        return Err(invalid("queues", cfg.queues, "must be within 1..=255"));
    }
    if cfg.mtu < 68 || cfg.mtu > 65535 - ETH_HEADER_LEN {
        return Err(invalid("mtu", cfg.mtu, "must be within 68..=65521"));
    }
    if cfg.role == MemifRole::Client && !(BUFFER_SIZE_MIN..=65535).contains(&cfg.buffer_size) {
        return Err(invalid(
            "buffer_size",
            cfg.buffer_size,
            "at least 128, at most 65535 (frames longer than one buffer are chained)",
        ));
    }
    if cfg.burst_max == 0 {
        return Err(invalid("burst_max", 0, "must be at least 1"));
    }
    if cfg.rx_posted_max == Some(0) {
        return Err(invalid("rx_posted_max", 0, "must be at least 1"));
    }
    if let Some(s) = &cfg.secret {
        if secret_field(s).is_none() {
            return Err(invalid(
                "secret",
                format!("{} bytes", s.len()),
                "at most 24 bytes, no NUL",
            ));
        }
    }
    if !(1..=256).contains(&cfg.regions_max) {
        return Err(invalid(
            "regions_max",
            cfg.regions_max,
            "must be within 1..=256",
        ));
    }
    if cfg.reconnect_backoff_min.is_zero() || cfg.reconnect_backoff_max < cfg.reconnect_backoff_min
    {
        return Err(invalid(
            "reconnect_backoff_min",
            format!("{:?}", cfg.reconnect_backoff_min),
            "must be non-zero and at most reconnect_backoff_max",
        ));
    }
    let slots = cfg.queues << cfg.ring_size_log2;
    let frames =
        match (cfg.role, cfg.pool_frames) {
            (MemifRole::Client, None) => 2 * slots + CLIENT_POOL_SPARE,
            (MemifRole::Server, None) => (SERVER_POOL_BYTES
                / (cfg.mtu + ETH_HEADER_LEN).next_multiple_of(64))
            .clamp(SERVER_POOL_FRAMES_MIN, SERVER_POOL_FRAMES),
            (MemifRole::Client, Some(n)) if n <= slots => return Err(invalid(
                "pool_frames",
                n,
                "a client needs more frames than its receive ring slots (queues << ring_size_log2)",
            )),
            (_, Some(0)) => return Err(invalid("pool_frames", 0, "must be at least 1")),
            (_, Some(n)) => n,
        };
    if cfg.role == MemifRole::Client
        && frames.saturating_mul(client_buf_len(cfg).next_multiple_of(64)) > POOL_LEN_MAX
    {
        return Err(invalid(
            "pool_frames",
            frames,
            "the shared buffer region must stay within 2 GiB (memif offsets are 32-bit)",
        ));
    }
    Ok(frames)
}

/// Bytes per buffer of a client's pool: a whole frame, and at least one posted buffer.
fn client_buf_len(cfg: &MemifConfig) -> usize {
    cfg.buffer_size.max(cfg.mtu + ETH_HEADER_LEN)
}

/// How many buffers a client keeps posted on each receive ring (`MemifConfig::rx_posted_max`);
/// the ring's size caps it further.
fn rx_posted(cfg: &MemifConfig) -> u16 {
    let n = cfg.rx_posted_max.unwrap_or_else(|| {
        (RX_POSTED_BYTES / client_buf_len(cfg).next_multiple_of(64)).max(RX_POSTED_MIN)
    });
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// A flow's queue: a hash of the IPv4 addresses and ports, so one flow stays in order.
fn flow_queue(frame: &[u8], queues: usize) -> usize {
    if queues <= 1 || frame.len() < ETH_HEADER_LEN + 20 || frame[12..14] != [0x08, 0x00] {
        return 0;
    }
    let ip = &frame[ETH_HEADER_LEN..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let mut h = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]])
        ^ u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
    if (ip[9] == 6 || ip[9] == 17) && ip.len() >= ihl + 4 {
        h ^= u32::from_be_bytes([ip[ihl], ip[ihl + 1], ip[ihl + 2], ip[ihl + 3]]);
    }
    h = h.wrapping_mul(0x9E37_79B1);
    (h >> 16) as usize % queues
}

impl MemifDevice {
    /// Opens the device: builds the frame pool, and for a server binds the socket. It does not
    /// wait for the peer: the connection is made by later calls (`rx_burst`, `tx_burst`,
    /// `wait`), and [`PacketDevice::link_up`] tells when it is up.
    ///
    /// Every frame is a buffer of the device's pool: a server copies its outgoing frames into
    /// the buffers its client posted (see [`MemifDevice::open_in_place`] for the other way).
    pub fn open(cfg: &MemifConfig) -> Result<MemifDevice, MemifError> {
        Self::open_as(cfg)
    }

    /// A server whose queue pairs are served by `devices` devices, each meant for a thread of
    /// its own (one per core): the first binds the socket, runs the control channel and serves
    /// queue pair 0; device `i` serves queue pair `i` of the same connection. Each has its own
    /// frame pool (of [`MemifConfig::pool_frames`] or the default size) and its own counters.
    ///
    /// The client chooses the queue pair of each flow and gets its answers on the same pair,
    /// so a flow stays with the device that received its first frame. A client that proposes
    /// fewer pairs than `devices` leaves the last devices idle (their link stays down); pairs
    /// beyond `devices` are served by the first device. `cfg.queues` must be at least
    /// `devices`.
    pub fn open_shared(cfg: &MemifConfig, devices: usize) -> Result<Vec<MemifDevice>, MemifError> {
        Self::open_shared_as(cfg, devices)
    }
}

impl MemifDevice<MemifFrame> {
    /// Like [`MemifDevice::open`], but a server hands the stack, for each outgoing frame, the
    /// buffer its client posted (or a run of adjacent posted buffers holding a whole frame),
    /// so frames are built in place and sent without a copy. When no posted buffer (run) can
    /// hold a whole frame, the frame is built in a pool buffer and copied, as with `open`.
    /// A client is the same either way (it sends and receives its own buffers, no copy).
    pub fn open_in_place(cfg: &MemifConfig) -> Result<MemifDevice<MemifFrame>, MemifError> {
        let mut dev = Self::open_as(cfg)?;
        dev.lend = true;
        Ok(dev)
    }

    /// [`MemifDevice::open_shared`] with the frame type of [`MemifDevice::open_in_place`]. The
    /// devices still copy each outgoing frame into a posted buffer, as `open` does: lending
    /// posted buffers to several threads would need the regions' lease registry, a lock, on
    /// every frame (and let a client that posts one buffer on two queues put two threads of
    /// ours on the same bytes, one holding a reference).
    pub fn open_in_place_shared(
        cfg: &MemifConfig,
        devices: usize,
    ) -> Result<Vec<MemifDevice<MemifFrame>>, MemifError> {
        Self::open_shared_as(cfg, devices)
    }
}

impl<F> MemifDevice<F> {
    fn open_as(cfg: &MemifConfig) -> Result<MemifDevice<F>, MemifError> {
        Self::build(cfg, true)
    }

    fn open_shared_as(
        cfg: &MemifConfig,
        devices: usize,
    ) -> Result<Vec<MemifDevice<F>>, MemifError> {
        if cfg.role != MemifRole::Server {
            return Err(invalid(
                "role",
                "Client",
                "only a server's queue pairs can be served by several devices",
            ));
        }
        if devices == 0 || devices > cfg.queues {
            return Err(invalid(
                "queues",
                cfg.queues,
                "must be at least the number of devices serving them (one queue pair each)",
            ));
        }
        let share = Arc::new(QueueShare::new(devices - 1));
        let mut owner = Self::build(cfg, true)?;
        owner.share = Some(Share::Owner(Arc::clone(&share)));
        let mut all = vec![owner];
        for index in 1..devices {
            let mut m = Self::build(cfg, false)?;
            m.share = Some(Share::Member {
                share: Arc::clone(&share),
                index,
                seen: 0,
            });
            all.push(m);
        }
        Ok(all)
    }

    /// The device, with its pool; binds the socket if a server and `bind`.
    fn build(cfg: &MemifConfig, bind: bool) -> Result<MemifDevice<F>, MemifError> {
        let frames = check_config(cfg)?;
        let addr = if cfg.socket_abstract {
            UnixAddr::Abstract(cfg.socket_path.as_os_str().as_encoded_bytes().to_vec())
        } else {
            UnixAddr::Path(cfg.socket_path.clone())
        };
        if let Err(e) = addr.check() {
            return Err(invalid(
                "socket_path",
                cfg.socket_path.display(),
                if e.to_string().contains("107") {
                    "at most 107 bytes"
                } else {
                    "must be a non-empty path without NUL bytes"
                },
            ));
        }
        let frame_len_max = cfg.mtu + ETH_HEADER_LEN;
        let (pool, pool_file) = match cfg.role {
            MemifRole::Client => {
                let buf_len = client_buf_len(cfg);
                let stride = buf_len.next_multiple_of(64);
                let (region, fd) =
                    HugeRegion::map_memfd(frames * stride, cfg.page_size, "memif-buffers")?;
                let len = region.len() as u64;
                (BufPool::new(region, buf_len, 0)?, Some((fd, len)))
            }
            MemifRole::Server => (
                BufPool::with_capacity(
                    frames,
                    frame_len_max.next_multiple_of(64),
                    0,
                    cfg.page_size,
                )?,
                None,
            ),
        };
        // Our name carries ustack's capability mark (see `Name::capabilities`).
        let caps_flags = if cfg.trust_rx_checksums {
            CAP_RX_CHECKSUMS_TRUSTED
        } else {
            0
        };
        let name = Name::with_capabilities(&cfg.name, caps_flags);
        let secret = cfg.secret.as_deref().filter(|s| !s.is_empty());
        let server_params = ServerParams {
            id: cfg.interface_id,
            secret: secret.and_then(secret_field),
            queues: cfg.queues as u16,
            regions_max: cfg.regions_max as u16,
            region_len_max: cfg.region_len_max,
            name,
        };
        let client_params = ClientParams {
            id: cfg.interface_id,
            secret: secret.and_then(secret_field).unwrap_or([0; SECRET_LEN]),
            queues: cfg.queues as u16,
            log2_ring_size: cfg.ring_size_log2,
            name,
            if_name: name,
        };
        let mut dev = MemifDevice {
            role: cfg.role,
            addr,
            piece: cfg.buffer_size.min(65535),
            rx_posted: rx_posted(cfg),
            caps: DeviceCaps {
                mtu: cfg.mtu,
                burst_max: cfg.burst_max,
                checksum: ChecksumCaps {
                    rx_ipv4: cfg.trust_rx_checksums,
                    rx_l4: cfg.trust_rx_checksums,
                    // The device fills them in (`fill_checksums`), or leaves them out for a
                    // peer that does not verify them.
                    tx_ipv4: true,
                    tx_l4: true,
                },
            },
            pool,
            pool_file,
            listener: None,
            socket_file: None,
            conn: None,
            link: None,
            server_params,
            client_params,
            stats: MemifStats::default(),
            peer: None,
            elide_tx_checksums: cfg.elide_tx_checksums,
            peer_trusts_checksums: false,
            control_interval: cfg.control_poll_interval,
            handshake_timeout: cfg.handshake_timeout,
            backoff_min: cfg.reconnect_backoff_min,
            backoff_max: cfg.reconnect_backoff_max,
            backoff: cfg.reconnect_backoff_min,
            next_control: Instant::ZERO,
            next_connect: Instant::ZERO,
            rx_next: 0,
            last_error: None,
            poll_fds: Vec::with_capacity(2 + cfg.queues),
            share: None,
            lend: false,
            _frame: PhantomData,
        };
        if cfg.role == MemifRole::Server && bind {
            dev.bind()?;
        }
        tracing::info!(
            socket = %dev.addr,
            role = ?cfg.role,
            id = cfg.interface_id,
            pool_frames = dev.pool.capacity(),
            page = %dev.pool.page_size(),
            "opened memif device"
        );
        Ok(dev)
    }

    /// Binds the server socket, replacing a stale socket file nobody listens on.
    fn bind(&mut self) -> Result<(), MemifError> {
        let socket = self.addr.to_string();
        let listener = match SeqPacketListener::bind(&self.addr, 4) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let UnixAddr::Path(path) = &self.addr else {
                    return Err(MemifError::AddressInUse { socket });
                };
                let is_socket = std::fs::symlink_metadata(path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
                if !is_socket {
                    return Err(MemifError::Bind {
                        socket,
                        source: std::io::Error::new(
                            std::io::ErrorKind::AlreadyExists,
                            "the path exists and is not a socket",
                        ),
                    });
                }
                match SeqPacket::connect(&self.addr) {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        tracing::info!(socket = %socket, "removing a stale memif socket file");
                        std::fs::remove_file(path).map_err(|source| MemifError::Bind {
                            socket: socket.clone(),
                            source,
                        })?;
                        SeqPacketListener::bind(&self.addr, 4)
                            .map_err(|source| MemifError::Bind { socket, source })?
                    }
                    _ => return Err(MemifError::AddressInUse { socket }),
                }
            }
            Err(source) => return Err(MemifError::Bind { socket, source }),
        };
        if let UnixAddr::Path(path) = &self.addr {
            if let Ok(m) = std::fs::symlink_metadata(path) {
                self.socket_file = Some(SocketFile {
                    path: path.clone(),
                    dev: m.dev(),
                    ino: m.ino(),
                });
            }
        }
        self.listener = Some(listener);
        Ok(())
    }

    /// Counters.
    pub fn memif_stats(&self) -> MemifStats {
        self.stats
    }

    /// Where the connection stands.
    pub fn state(&self) -> MemifState {
        match &self.conn {
            _ if self.link.is_some() => MemifState::Up,
            Some(_) => MemifState::Handshake,
            None => MemifState::Idle,
        }
    }

    /// The role.
    pub fn role(&self) -> MemifRole {
        self.role
    }

    /// The peer's application name and interface name, while connected.
    pub fn peer_names(&self) -> Option<(String, String)> {
        self.peer
            .as_ref()
            .map(|(a, b)| (a.to_string_lossy(), b.to_string_lossy()))
    }

    /// True while the connected peer is one that does not verify checksums (a ustack peer that
    /// announced it), so frames go to it without IPv4 and TCP checksums.
    pub fn tx_checksums_elided(&self) -> bool {
        self.peer_trusts_checksums
    }

    /// Why the last connection or handshake ended, for diagnostics.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Shared regions mapped for the current connection (0 when there is none): the peer's
    /// regions for a server; the ring region and the buffer region for a client.
    pub fn mapped_regions(&self) -> usize {
        match &self.link {
            None => 0,
            Some(DataPath::Client { .. }) => 2,
            Some(DataPath::Server { regions, .. }) => regions.len(),
        }
    }

    /// Buffers of the pool currently lent to the rings (client; always 0 for a server).
    pub fn lent_buffers(&self) -> usize {
        match &self.link {
            Some(DataPath::Client { tx, rx, .. }) => {
                tx.iter().map(ClientTx::lent).sum::<usize>()
                    + rx.iter().map(ClientRx::lent).sum::<usize>()
            }
            _ => 0,
        }
    }

    /// The frame pool (shared with the peer for a client, private for a server).
    pub fn pool(&self) -> &BufPool {
        &self.pool
    }

    /// Ring queue pairs in use (receive, transmit), while connected.
    pub fn queues(&self) -> Option<(usize, usize)> {
        match &self.link {
            Some(DataPath::Client { tx, rx, .. }) => Some((rx.len(), tx.len())),
            Some(DataPath::Server { rx, tx, .. }) => Some((rx.len(), tx.len())),
            None => None,
        }
    }

    /// Ends the current connection (if any) with a DISCONNECT carrying `reason`; a client
    /// reconnects after its backoff. For tests and operators.
    pub fn disconnect(&mut self, reason: &str) {
        let now = Instant::now();
        self.teardown(now, Some(reason), reason.to_string());
    }

    /// Runs the control plane: accepts or connects, reads control messages, advances the
    /// handshake, notices a peer that hung up. Rate-limited while the link is up.
    fn service(&mut self, now: Instant) {
        if matches!(self.share, Some(Share::Member { .. })) {
            self.member_service();
            return;
        }
        if self.link.is_some() && now < self.next_control {
            return;
        }
        self.next_control = now + self.control_interval;
        if let Some(Share::Owner(share)) = &self.share {
            if share.take_fault() {
                self.stats.bad_ring_index += 1;
                self.teardown(
                    now,
                    Some("Corrupt ring index"),
                    "corrupt ring index on a queue pair served by another thread".into(),
                );
            }
        }
        match self.role {
            MemifRole::Server => self.accept(now),
            MemifRole::Client => {
                if self.conn.is_none() && now >= self.next_connect {
                    self.connect(now);
                }
            }
        }
        self.read_control(now);
        if let Some(c) = &self.conn {
            if !matches!(c.phase, Phase::Up) && now >= c.deadline {
                self.stats.handshake_failures += 1;
                self.teardown(now, Some("Handshake timeout"), "handshake timed out".into());
            }
        }
    }

    /// A member's control turn: pick up or drop its queue pair when the owner's link changed.
    fn member_service(&mut self) {
        let Some(Share::Member { share, index, seen }) = &mut self.share else {
            return;
        };
        if !share.changed(seen) {
            return;
        }
        let index = *index;
        let part = share.take(index);
        if self.link.take().is_some() {
            self.stats.disconnects += 1;
            self.peer = None;
            self.peer_trusts_checksums = false;
            tracing::info!(socket = %self.addr, queue = index, "memif queue pair down");
        }
        if let Some(h) = part {
            self.link = Some(h.link);
            self.peer_trusts_checksums = h.peer_trusts_checksums;
            self.peer = Some(h.peer);
            self.stats.connects += 1;
            if self.stats.connects > 1 {
                self.stats.reconnects += 1;
            }
            tracing::info!(socket = %self.addr, queue = index, "memif queue pair up");
        }
    }

    fn accept(&mut self, now: Instant) {
        let Some(l) = &self.listener else { return };
        loop {
            match l.accept() {
                Ok(Some(sock)) if self.conn.is_none() => {
                    let peer = sock.peer_cred().ok();
                    tracing::debug!(socket = %self.addr, ?peer, "memif client connected");
                    let hello = self.server_params.hello();
                    if let Err(e) = sock.send(&hello.to_bytes(), None) {
                        tracing::debug!("memif: sending HELLO failed: {e}");
                        continue;
                    }
                    self.conn = Some(Conn {
                        sock,
                        phase: Phase::Server(ServerHandshake::default()),
                        deadline: now + self.handshake_timeout,
                    });
                }
                Ok(Some(sock)) => {
                    // One client at a time: turn the newcomer away, as DPDK does.
                    self.stats.connections_refused += 1;
                    let bye = Msg::Disconnect(Disconnect::new(0, "Already connected"));
                    let _ = sock.send(&bye.to_bytes(), None);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("memif: accept failed: {e}");
                    break;
                }
            }
        }
    }

    fn connect(&mut self, now: Instant) {
        self.stats.connect_attempts += 1;
        match SeqPacket::connect(&self.addr) {
            Ok(sock) => {
                tracing::debug!(socket = %self.addr, "memif: connected, waiting for HELLO");
                self.conn = Some(Conn {
                    sock,
                    phase: Phase::Client(Box::default()),
                    deadline: now + self.handshake_timeout,
                });
            }
            Err(e) => {
                let hint = match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        "no such socket: is the server running, and is the path right?"
                    }
                    std::io::ErrorKind::PermissionDenied => {
                        "permission denied: the socket's owner or mode does not let this user \
                         connect (run as the server's user, or change the socket's mode)"
                    }
                    std::io::ErrorKind::ConnectionRefused => {
                        "nothing listens on it: the server stopped (a stale socket file?)"
                    }
                    _ => "",
                };
                self.last_error = Some(format!(
                    "connecting to memif socket {}: {e}{}{hint}",
                    self.addr,
                    if hint.is_empty() { "" } else { "; " }
                ));
                if self.stats.connect_attempts == 1
                    || !matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    )
                {
                    tracing::debug!(socket = %self.addr, "memif: no server yet ({e}); retrying");
                }
                self.next_connect = now + self.backoff;
                self.backoff = (self.backoff * 2).min(self.backoff_max);
            }
        }
    }

    fn read_control(&mut self, now: Instant) {
        for _ in 0..CONTROL_MSGS_PER_CALL {
            let Some(conn) = &self.conn else { return };
            let mut buf = [0u8; MSG_LEN];
            let got = match conn.sock.recv(&mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.lost(now, format!("control socket error: {e}"));
                    return;
                }
            };
            if got.len == 0 {
                self.lost(now, "the peer closed the control socket".into());
                return;
            }
            let msg = if got.truncated {
                Err(super::proto::MsgError::BadLength(got.len))
            } else {
                Msg::parse(&buf[..got.len])
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    self.fail(now, ControlError::Unexpected { got: 0 }, e.to_string());
                    return;
                }
            };
            if let Err(e) = self.on_message(now, msg, got.fd) {
                let detail = format!("{e:?}");
                self.fail(now, e, detail);
                return;
            }
        }
    }

    fn on_message(
        &mut self,
        now: Instant,
        msg: Msg,
        fd: Option<OwnedFd>,
    ) -> Result<(), ControlError> {
        let Some(conn) = &mut self.conn else {
            return Ok(());
        };
        match &mut conn.phase {
            Phase::Server(hs) => match hs.handle(msg, fd, &self.server_params)? {
                ServerStep::Reply(m) => self.send(&m, None),
                ServerStep::Connected(est) => {
                    let reply = Msg::Connected(self.server_params.name);
                    self.send(&reply, None)?;
                    self.up(now, est);
                    Ok(())
                }
            },
            Phase::Client(hs) => {
                let Some((pool_fd, pool_len)) = &self.pool_file else {
                    return Err(ControlError::PeerLimits);
                };
                match hs.handle(msg, &self.client_params, (pool_fd.as_fd(), *pool_len))? {
                    ClientStep::Send(m, fd) => self.send(&m, fd),
                    ClientStep::Connected(est) => {
                        self.up(now, est);
                        Ok(())
                    }
                }
            }
            Phase::Up => match msg {
                Msg::Disconnect(d) => Err(ControlError::PeerDisconnect {
                    reason: d.reason_lossy(),
                }),
                Msg::Ack => Ok(()),
                other => Err(ControlError::Unexpected {
                    got: other.type_id(),
                }),
            },
        }
    }

    fn send(&mut self, msg: &Msg, fd: Option<OwnedFd>) -> Result<(), ControlError> {
        let Some(conn) = &self.conn else {
            return Ok(());
        };
        match conn
            .sock
            .send(&msg.to_bytes(), fd.as_ref().map(|f| f.as_fd()))
        {
            Ok(_) => Ok(()),
            Err(e) => Err(ControlError::Local(crate::mem::MemError::SharedFile {
                op: "sending a control message",
                source: e,
            })),
        }
    }

    /// The handshake finished: start the data path.
    fn up(&mut self, now: Instant, est: Established) {
        let Established {
            regions,
            c2s,
            s2c,
            peer_name,
            peer_if_name,
        } = est;
        let link = match self.role {
            MemifRole::Client => {
                let rings = regions.into_iter().next();
                let Some(rings) = rings else { return };
                let tx: Vec<ClientTx> = c2s.into_iter().map(ClientTx::new).collect();
                let mut rx: Vec<ClientRx> = s2c.into_iter().map(ClientRx::new).collect();
                let slice = std::slice::from_ref(&rings);
                for r in &mut rx {
                    if let Some(view) = r.loc.view(slice) {
                        r.refill(&view, &self.pool, self.piece, self.rx_posted);
                    }
                }
                DataPath::Client { rings, tx, rx }
            }
            MemifRole::Server => {
                // Room for every S2C slot to be lent at once, in any region (allocated here,
                // once per connection).
                let slots: usize = s2c.iter().map(|l| 1usize << l.log2).sum();
                if self.lend {
                    for r in &regions {
                        r.prepare_leases(slots);
                    }
                }
                DataPath::Server {
                    regions,
                    rx: c2s.into_iter().map(ServerRx::new).collect(),
                    tx: s2c.into_iter().map(ServerTx::new).collect(),
                }
            }
        };
        self.peer_trusts_checksums =
            self.elide_tx_checksums && peer_name.capabilities() & CAP_RX_CHECKSUMS_TRUSTED != 0;
        let link = match (link, &self.share) {
            (DataPath::Server { regions, rx, tx }, Some(Share::Owner(share))) => {
                let (own, parts) = split_server_link(regions, rx, tx, share.members());
                let trusts = self.peer_trusts_checksums;
                share.publish(parts.into_iter().map(|p| {
                    p.map(|link| Handoff {
                        link,
                        peer_trusts_checksums: trusts,
                        peer: (peer_name, peer_if_name),
                    })
                }));
                own
            }
            (link, _) => link,
        };
        self.link = Some(link);
        if let Some(c) = &mut self.conn {
            c.phase = Phase::Up;
        }
        self.stats.connects += 1;
        if self.stats.connects > 1 {
            self.stats.reconnects += 1;
        }
        self.backoff = self.backoff_min;
        self.next_control = now + self.control_interval;
        tracing::info!(
            socket = %self.addr,
            role = ?self.role,
            peer = %peer_name.to_string_lossy(),
            peer_if = %peer_if_name.to_string_lossy(),
            queues = ?self.queues(),
            "memif link up"
        );
        tracing::debug!(
            elided = self.peer_trusts_checksums,
            "memif transmit checksums (left out only for a peer that does not verify them)"
        );
        self.peer = Some((peer_name, peer_if_name));
    }

    /// A control error: tell the peer why and drop the connection.
    fn fail(&mut self, now: Instant, e: ControlError, detail: String) {
        let reason = e.to_string();
        let send = !matches!(e, ControlError::PeerDisconnect { .. });
        if self.link.is_none() {
            self.stats.handshake_failures += 1;
        }
        let why = match &e {
            // The peer's own words say it all; "Already connected" is what a server (ours,
            // DPDK's) answers a second client.
            ControlError::PeerDisconnect { reason: r } if r == "Already connected" => format!(
                "{reason}: the server is serving another client on this socket and interface \
                 id (memif has one client per interface); wait for it, or start another server"
            ),
            ControlError::PeerDisconnect { .. } => reason.clone(),
            _ => format!("{reason} ({detail})"),
        };
        self.teardown(now, send.then_some(reason.as_str()), why);
    }

    /// The peer went away without a word.
    fn lost(&mut self, now: Instant, why: String) {
        if self.link.is_none() {
            self.stats.handshake_failures += 1;
        }
        self.teardown(now, None, why);
    }

    /// The peer wrote ring indexes no correct peer writes.
    fn fault(&mut self, now: Instant, f: RingFault) {
        self.stats.bad_ring_index += 1;
        if let Some(Share::Member { share, .. }) = &self.share {
            // The control socket is the owner's: it ends the connection.
            share.report_fault();
        }
        tracing::warn!(socket = %self.addr, fault = ?f, "memif: corrupt ring index from the peer; disconnecting");
        self.teardown(
            now,
            Some("Corrupt ring index"),
            format!("corrupt ring: {f:?}"),
        );
    }

    /// Drops the connection: sends DISCONNECT if asked, returns lent buffers, unmaps the regions.
    fn teardown(&mut self, now: Instant, reason: Option<&str>, why: String) {
        if let Some(conn) = self.conn.take() {
            if let Some(r) = reason {
                let _ = conn
                    .sock
                    .send(&Msg::Disconnect(Disconnect::new(0, r)).to_bytes(), None);
            }
        }
        if let Some(Share::Owner(share)) = &self.share {
            share.retract();
        }
        if let Some(link) = self.link.take() {
            if let DataPath::Client { mut tx, mut rx, .. } = link {
                for r in &mut tx {
                    r.release_all(&self.pool);
                }
                for r in &mut rx {
                    r.release_all(&self.pool);
                }
            }
            // Dropping the data path unmaps its regions and closes the eventfds.
            self.stats.disconnects += 1;
            tracing::info!(socket = %self.addr, role = ?self.role, "memif link down: {why}");
        } else {
            tracing::debug!(socket = %self.addr, "memif handshake ended: {why}");
        }
        self.peer = None;
        self.peer_trusts_checksums = false;
        self.last_error = Some(why);
        if self.role == MemifRole::Client {
            self.next_connect = now + self.backoff;
            self.backoff = (self.backoff * 2).min(self.backoff_max);
        }
    }
}

/// Splits a server's data path by queue pair for a share with `members` members: member `i`
/// gets pair `i` (receive ring `i` and transmit ring `i`) when the client made both; the owner
/// keeps pair 0 and every ring no member takes. Every part holds the regions.
fn split_server_link(
    regions: Vec<Arc<SharedRegion>>,
    rx: Vec<ServerRx>,
    tx: Vec<ServerTx>,
    members: usize,
) -> (DataPath, Vec<Option<DataPath>>) {
    let pairs = rx.len().min(tx.len());
    // Pair i > 0 goes to member i (slot i - 1) when the client made it and a member exists.
    let member_of = |i: usize| {
        (i < pairs && i <= members)
            .then(|| i.checked_sub(1))
            .flatten()
    };
    let mut parts: Vec<(Option<ServerRx>, Option<ServerTx>)> =
        (0..members).map(|_| (None, None)).collect();
    let mut own_rx = Vec::new();
    for (i, r) in rx.into_iter().enumerate() {
        match member_of(i) {
            Some(m) => parts[m].0 = Some(r),
            None => own_rx.push(r),
        }
    }
    let mut own_tx = Vec::new();
    for (i, t) in tx.into_iter().enumerate() {
        match member_of(i) {
            Some(m) => parts[m].1 = Some(t),
            None => own_tx.push(t),
        }
    }
    let parts = parts
        .into_iter()
        .map(|p| match p {
            (Some(r), Some(t)) => Some(DataPath::Server {
                regions: regions.clone(),
                rx: vec![r],
                tx: vec![t],
            }),
            _ => None,
        })
        .collect();
    let own = DataPath::Server {
        regions,
        rx: own_rx,
        tx: own_tx,
    };
    (own, parts)
}

impl<F> std::fmt::Debug for MemifDevice<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemifDevice")
            .field("socket", &self.addr.to_string())
            .field("role", &self.role)
            .field("state", &self.state())
            .field("stats", &self.stats)
            .finish()
    }
}

// Private methods only (`Carry` is the crate's own business); the public face is the two
// `PacketDevice` impls below.
#[allow(private_bounds)]
impl<F: Carry> MemifDevice<F> {
    fn rx_burst_impl(&mut self, now: Instant, batch: &mut Batch<F>) -> usize {
        self.service(now);
        let want = batch.free().min(self.caps.burst_max);
        let frame_len_max = self.caps.frame_len_max();
        let mut got = 0;
        let mut fault = None;
        match &mut self.link {
            None => return 0,
            Some(DataPath::Client { rings, rx, .. }) => {
                let n = rx.len();
                let slice = std::slice::from_ref(&*rings);
                for i in 0..n {
                    let r = &mut rx[(self.rx_next + i) % n];
                    let Some(view) = r.loc.view(slice) else {
                        fault = Some(RingFault::Unmapped);
                        break;
                    };
                    match r.receive(
                        &view,
                        &self.pool,
                        batch,
                        want - got,
                        frame_len_max,
                        self.piece,
                        &mut self.stats,
                    ) {
                        Ok(k) => got += k,
                        Err(f) => {
                            fault = Some(f);
                            break;
                        }
                    }
                    r.refill(&view, &self.pool, self.piece, self.rx_posted);
                    if got >= want {
                        break;
                    }
                }
                self.rx_next = (self.rx_next + 1) % n;
            }
            Some(DataPath::Server { regions, rx, .. }) => {
                let n = rx.len();
                for i in 0..n {
                    let r = &mut rx[(self.rx_next + i) % n];
                    let Some(view) = r.loc.view(regions) else {
                        fault = Some(RingFault::Unmapped);
                        break;
                    };
                    match r.receive(
                        &view,
                        regions,
                        &self.pool,
                        batch,
                        want - got,
                        frame_len_max,
                        &mut self.stats,
                    ) {
                        Ok(k) => got += k,
                        Err(f) => {
                            fault = Some(f);
                            break;
                        }
                    }
                    if got >= want {
                        break;
                    }
                }
                self.rx_next = (self.rx_next + 1) % n;
            }
        }
        if let Some(f) = fault {
            self.fault(now, f);
        }
        got
    }

    fn tx_alloc_impl(&mut self) -> Option<F> {
        if F::IN_PLACE && self.lend {
            let frame_len_max = self.caps.frame_len_max();
            if let Some(DataPath::Server { regions, tx, .. }) = &mut self.link {
                // In place on a single S2C ring only: with several, the ring is chosen by the
                // flow, which is not known before the frame is written.
                if let [r] = tx.as_mut_slice() {
                    if let Some(view) = r.loc.view(regions) {
                        // A bad ring index shows up again in tx_burst, which ends the link.
                        if let Ok(Some(f)) = r.lend(&view, regions, frame_len_max, &mut self.stats)
                        {
                            return F::from_slot(f);
                        }
                    }
                    let buf = self.pool.alloc()?;
                    return Some(F::pending(buf, PendingCopy::new(r.slots())));
                }
            }
        }
        self.pool.alloc().map(F::from_pool)
    }

    fn tx_burst_impl(&mut self, now: Instant, batch: &mut Batch<F>) -> usize {
        self.service(now);
        let frame_len_max = self.caps.frame_len_max();
        let burst = self.caps.burst_max;
        let Some((_, queues)) = self.queues() else {
            // Link down: the frames are lost, and counted.
            let n = batch.len().min(burst);
            for _ in 0..n {
                drop(batch.pop());
            }
            self.stats.link.tx_dropped += n as u64;
            return n;
        };
        if self.role == MemifRole::Server {
            return self.tx_server(now, batch);
        }
        let mut taken = 0;
        while taken < burst {
            let Some(front) = batch.front() else { break };
            let len = front.data().len();
            if !(ETH_HEADER_LEN..=frame_len_max).contains(&len) {
                drop(batch.pop());
                self.stats.link.tx_errors += 1;
                taken += 1;
                continue;
            }
            let q = flow_queue(front.data(), queues);
            // The run of frames for the same queue, all of sane length.
            let run = batch
                .iter()
                .take(burst - taken)
                .take_while(|f| {
                    (ETH_HEADER_LEN..=frame_len_max).contains(&f.data().len())
                        && flow_queue(f.data(), queues) == q
                })
                .count();
            match self.tx_run_client(q, run, batch) {
                Ok(0) => break, // ring full: the rest waits
                Ok(k) => taken += k,
                Err(f) => {
                    self.fault(now, f);
                    break;
                }
            }
        }
        taken
    }

    /// A server's transmission: frames built in place are finished in their slots; frames in
    /// pool buffers are copied into posted buffers. Then every ring publishes what is written.
    fn tx_server(&mut self, now: Instant, batch: &mut Batch<F>) -> usize {
        let frame_len_max = self.caps.frame_len_max();
        let burst = self.caps.burst_max;
        let elide = self.peer_trusts_checksums;
        let Some(DataPath::Server { regions, tx, .. }) = &mut self.link else {
            return 0;
        };
        let queues = tx.len();
        let mut taken = 0;
        let mut fault = None;
        while taken < burst {
            let Some(front) = batch.front() else { break };
            let len = front.data().len();
            if !(ETH_HEADER_LEN..=frame_len_max).contains(&len) {
                // (A frame lent in place goes back to the client empty.)
                drop(batch.pop());
                self.stats.link.tx_errors += 1;
                taken += 1;
                continue;
            }
            if front.is_slot() {
                let Some(mut frame) = batch.pop() else { break };
                taken += 1;
                if !elide {
                    fill_checksums(frame.data_mut());
                }
                if let Parts::Slot(f) = frame.into_parts() {
                    if tx.len() == 1 && f.is_of(tx[0].slots()) {
                        self.stats.link.tx_packets += 1;
                        self.stats.link.tx_bytes += len as u64;
                        self.stats.tx_in_place += 1;
                        if f.pieces() > 1 {
                            self.stats.tx_chains += 1;
                        }
                        f.finish();
                    } else {
                        // Lent by an earlier connection's ring: nowhere to go.
                        self.stats.link.tx_dropped += 1;
                    }
                }
                continue;
            }
            let r = &mut tx[flow_queue(front.data(), queues)];
            let Some(view) = r.loc.view(regions) else {
                fault = Some(RingFault::Unmapped);
                break;
            };
            let Some(mut frame) = batch.pop() else { break };
            if !elide {
                // (Again if the frame waits for room below: the sums come out the same.)
                fill_checksums(frame.data_mut());
            }
            match r.copy_in(&view, regions, frame.data(), &mut self.stats) {
                Ok(CopyIn::Sent | CopyIn::Cut) => taken += 1,
                Ok(CopyIn::NoRoom) => {
                    // The rest waits for posted buffers.
                    let _ = batch.push_front(frame);
                    break;
                }
                Err(f) => {
                    let _ = batch.push_front(frame);
                    fault = Some(f);
                    break;
                }
            }
        }
        if fault.is_none() {
            for r in tx.iter_mut() {
                match r.loc.view(regions) {
                    Some(view) => r.publish(&view),
                    None => fault = Some(RingFault::Unmapped),
                }
            }
        }
        if let Some(f) = fault {
            self.fault(now, f);
        }
        taken
    }

    /// Sends the frames at the front of `batch` that map to queue `q` (at most `max`), from a
    /// client: each frame's own shared buffer goes on the ring (a chain of descriptors of at
    /// most `piece` bytes each).
    fn tx_run_client(
        &mut self,
        q: usize,
        max: usize,
        batch: &mut Batch<F>,
    ) -> Result<usize, RingFault> {
        let frame_len_max = self.caps.frame_len_max();
        let piece = self.piece;
        let elide = self.peer_trusts_checksums;
        let queues = self.queues().map_or(1, |(_, t)| t);
        let Some(DataPath::Client { rings, tx, .. }) = &mut self.link else {
            return Ok(0);
        };
        let r = &mut tx[q];
        let slice = std::slice::from_ref(&*rings);
        let view = r.loc.view(slice).ok_or(RingFault::Unmapped)?;
        r.reclaim(&view, &self.pool)?;
        let (base, len) = self.pool.memory();
        let mut taken = 0;
        while taken < max {
            let Some(front) = batch.front() else { break };
            if flow_queue(front.data(), queues) != q {
                break;
            }
            let n = front.data().len();
            if r.room(&view) < ClientTx::pieces(n, piece) {
                break;
            }
            let Some(frame) = batch.pop() else { break };
            taken += 1;
            if !(ETH_HEADER_LEN..=frame_len_max).contains(&n) {
                self.stats.link.tx_errors += 1;
                continue;
            }
            let Parts::Pool(frame) = frame.into_parts() else {
                self.stats.link.tx_errors += 1; // a client never lends in place
                continue;
            };
            let p = frame.data().as_ptr() as usize;
            let mut frame = if p >= base as usize && p < base as usize + len {
                frame
            } else {
                // Not one of our shared buffers: copy it into one.
                let Some(mut copy) = self.pool.alloc() else {
                    self.stats.link.tx_dropped += 1;
                    continue;
                };
                let _ = copy.set_len(n);
                copy.as_mut_slice().copy_from_slice(frame.data());
                crate::copies::count(crate::copies::Pass::Device, n);
                copy
            };
            if !elide {
                fill_checksums(frame.as_mut_slice());
            }
            if ClientTx::pieces(n, piece) > 1 {
                self.stats.tx_chains += 1;
            }
            r.push(&view, &self.pool, frame, piece);
            self.stats.link.tx_packets += 1;
            self.stats.link.tx_bytes += n as u64;
        }
        r.publish(&view);
        Ok(taken)
    }
}

impl<F> MemifDevice<F> {
    fn wait_impl(&mut self, timeout: Duration) {
        let now = Instant::now();
        self.service(now);
        let mut timeout = timeout;
        self.poll_fds.clear();
        if let Some(c) = &self.conn {
            self.poll_fds.push(PollFd::new(c.sock.as_raw_fd(), POLLIN));
        } else if let Some(l) = &self.listener {
            self.poll_fds.push(PollFd::new(l.as_raw_fd(), POLLIN));
        } else if self.role == MemifRole::Client {
            // Nothing to watch until the next connection attempt.
            timeout = timeout.min(self.next_connect.saturating_duration_since(now));
        }
        if self
            .conn
            .as_ref()
            .is_some_and(|c| !matches!(c.phase, Phase::Up))
        {
            timeout = timeout.min(self.control_interval);
        }
        // Ask the peer for interrupts on our receive rings for the time of the wait, then look
        // once more: a frame that came before the flag was seen would not be signalled.
        let mut pending = false;
        match &self.link {
            Some(DataPath::Client { rings, rx, .. }) => {
                for r in rx {
                    if let Some(v) = r.loc.view(std::slice::from_ref(rings)) {
                        v.set_flags(0);
                    }
                    self.poll_fds
                        .push(PollFd::new(r.loc.eventfd.as_raw_fd(), POLLIN));
                }
                fence(Ordering::SeqCst);
                pending = rx
                    .iter()
                    .any(|r| ring::has_input(rings, r.loc.offset, r.loc.log2, false, r.last()));
            }
            Some(DataPath::Server { regions, rx, .. }) => {
                for r in rx {
                    if let Some(v) = r.loc.view(regions) {
                        v.set_flags(0);
                    }
                    self.poll_fds
                        .push(PollFd::new(r.loc.eventfd.as_raw_fd(), POLLIN));
                }
                fence(Ordering::SeqCst);
                pending = rx.iter().any(|r| {
                    regions.get(usize::from(r.loc.region)).is_some_and(|reg| {
                        ring::has_input(reg, r.loc.offset, r.loc.log2, true, r.last())
                    })
                });
            }
            None => {}
        }
        if !pending && !timeout.is_zero() {
            if let Err(e) = poll_sys::poll(&mut self.poll_fds, timeout) {
                tracing::debug!("memif: poll failed: {e}");
            }
        }
        // Back to polling.
        match &self.link {
            Some(DataPath::Client { rings, rx, .. }) => {
                for r in rx {
                    let _ = sys::eventfd_drain(r.loc.eventfd.as_fd());
                    if let Some(v) = r.loc.view(std::slice::from_ref(rings)) {
                        v.set_flags(RING_FLAG_MASK_INT);
                    }
                }
            }
            Some(DataPath::Server { regions, rx, .. }) => {
                for r in rx {
                    let _ = sys::eventfd_drain(r.loc.eventfd.as_fd());
                    if let Some(v) = r.loc.view(regions) {
                        v.set_flags(RING_FLAG_MASK_INT);
                    }
                }
            }
            None => {}
        }
        // The control socket may have news (a hang-up wakes the poll): look at once.
        self.next_control = Instant::ZERO;
    }
}

/// The same [`PacketDevice`] for both frame types.
macro_rules! packet_device {
    ($frame:ty) => {
        impl PacketDevice for MemifDevice<$frame> {
            type Frame = $frame;

            fn caps(&self) -> DeviceCaps {
                self.caps
            }

            fn rx_burst(&mut self, now: Instant, batch: &mut Batch<$frame>) -> usize {
                self.rx_burst_impl(now, batch)
            }

            fn tx_alloc(&mut self) -> Option<$frame> {
                self.tx_alloc_impl()
            }

            fn tx_burst(&mut self, now: Instant, batch: &mut Batch<$frame>) -> usize {
                self.tx_burst_impl(now, batch)
            }

            fn stats(&self) -> crate::dev::LinkStats {
                self.stats.link
            }

            fn link_up(&self) -> bool {
                self.link.is_some()
            }

            fn link_problem(&self) -> Option<String> {
                self.last_error.clone()
            }

            fn wait(&mut self, timeout: Duration) {
                self.wait_impl(timeout)
            }
        }
    };
}

packet_device!(PoolBuf);
packet_device!(MemifFrame);

impl<F> Drop for MemifDevice<F> {
    fn drop(&mut self) {
        if self.conn.is_some() || self.link.is_some() {
            self.teardown(
                Instant::now(),
                Some("Device closed"),
                "device closed".into(),
            );
        }
        if let Some(f) = &self.socket_file {
            // Remove the socket file only if it is still the one we made.
            if let Ok(m) = std::fs::symlink_metadata(&f.path) {
                if m.dev() == f.dev && m.ino() == f.ino {
                    let _ = std::fs::remove_file(&f.path);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked() {
        let base = MemifConfig::new("/tmp/x.sock", MemifRole::Client);
        assert!(check_config(&base).is_ok());
        let bad = |f: &dyn Fn(&mut MemifConfig)| {
            let mut c = base.clone();
            f(&mut c);
            check_config(&c).is_err()
        };
        assert!(bad(&|c| c.ring_size_log2 = 0));
        assert!(bad(&|c| c.ring_size_log2 = 15));
        assert!(bad(&|c| c.queues = 0));
        assert!(bad(&|c| c.queues = 256));
        assert!(bad(&|c| c.buffer_size = 100));
        assert!(bad(&|c| c.buffer_size = 65536));
        assert!(!bad(&|c| c.buffer_size = 1500), "frames are chained");
        assert!(bad(&|c| c.secret = Some("x".repeat(25))));
        assert!(bad(&|c| c.pool_frames = Some(1024)));
        assert!(bad(&|c| c.burst_max = 0));
        assert!(bad(&|c| c.rx_posted_max = Some(0)));
        assert!(bad(&|c| c.mtu = 40));
        assert!(bad(&|c| c.reconnect_backoff_min = Duration::ZERO));
        assert!(bad(&|c| {
            c.buffer_size = 65535;
            c.pool_frames = Some(100_000);
        }));
        // A server's buffer size is the client's business.
        let mut s = base.clone();
        s.role = MemifRole::Server;
        s.buffer_size = 100;
        assert_eq!(check_config(&s).unwrap(), SERVER_POOL_FRAMES);
        s.mtu = 65000;
        assert_eq!(check_config(&s).unwrap(), 1032, "64 MiB of 64 KiB frames");
        assert_eq!(check_config(&base).unwrap(), 2 * 1024 + CLIENT_POOL_SPARE);
        // Buffers posted per receive ring: about 2 MiB of them, at least 64.
        let posted = |mtu: usize, max: Option<usize>| {
            rx_posted(&MemifConfig {
                mtu,
                buffer_size: (mtu + 14).max(2048),
                rx_posted_max: max,
                ..base.clone()
            })
        };
        assert_eq!(posted(1500, None), 1024);
        assert_eq!(posted(9000, None), 232);
        assert_eq!(posted(65000, None), 64);
        assert_eq!(posted(9000, Some(16)), 16);
        let e =
            MemifDevice::open(&MemifConfig::new("x".repeat(200), MemifRole::Server)).unwrap_err();
        assert!(
            matches!(
                e,
                MemifError::InvalidConfig {
                    field: "socket_path",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn the_device_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<MemifDevice>();
    }

    #[test]
    fn flows_stay_on_one_queue() {
        let mut f = vec![0u8; 64];
        f[12] = 0x08;
        f[14] = 0x45;
        f[23] = 6;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..38].copy_from_slice(&[0x1b, 0x58, 0xc0, 0x01]);
        let q = flow_queue(&f, 4);
        assert!(q < 4);
        assert_eq!(flow_queue(&f, 4), q);
        assert_eq!(flow_queue(&f, 1), 0);
        assert_eq!(flow_queue(&[0u8; 20], 4), 0);
        // Different ports spread over queues.
        let spread: std::collections::HashSet<usize> = (0..64u16)
            .map(|p| {
                f[36..38].copy_from_slice(&p.to_be_bytes());
                flow_queue(&f, 4)
            })
            .collect();
        assert!(spread.len() > 1);
    }
}
