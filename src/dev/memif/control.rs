//! The memif connection handshake, one state machine per role, without I/O: messages (and the
//! descriptor that came with each) in, the reply or the finished connection out.
//!
//! ```text
//! client                                  server
//!   connect() ------------------------------> accept()
//!            <------------------------------- HELLO (limits)
//!   INIT (id, mode, secret) ----------------> ACK
//!   ADD_REGION 0 + memfd (rings) -----------> ACK   (mapped)
//!   ADD_REGION 1 + memfd (buffers) ---------> ACK   (mapped)
//!   ADD_RING c2s i + eventfd ---------------> ACK   (checked to fit its region)
//!   ADD_RING s2c i + eventfd ---------------> ACK
//!   CONNECT (if name) ----------------------> CONNECTED (cookies checked, rings reset)
//! ```
//!
//! The client sends one message and waits for the ACK before the next, as DPDK's net_memif and
//! libmemif do. Anything out of order, out of range or missing its descriptor ends the handshake
//! with a [`ControlError`], whose text is the reason sent to the peer in a DISCONNECT message.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::mem::shm::SharedRegion;
use crate::mem::{MemError, PageSize};
use crate::sys::unix_ipc as sys;

use super::proto::{
    AddRegion, AddRing, Hello, Init, Msg, Name, ADD_RING_FLAG_C2S, LOG2_RING_SIZE_MAX,
    MODE_ETHERNET, SECRET_LEN, VERSION,
};
use super::ring::{ring_len, RingLoc, RingView, BUFFER_REGION, RING_FLAG_MASK_INT, RING_REGION};

/// Why a handshake or connection ended. The `Display` text is what goes to the peer in the
/// DISCONNECT message (DPDK's wording where one exists); the fields are for logs.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The peer speaks another protocol version.
    #[error("Incompatible memif version")]
    Version {
        /// The version (or lowest version) the peer announced.
        got: u16,
    },
    /// No interface with this id on the socket.
    #[error("ID not found")]
    UnknownId {
        /// The id asked for.
        id: u32,
    },
    /// Only Ethernet mode is supported.
    #[error("Only ethernet mode supported")]
    Mode {
        /// The mode asked for.
        mode: u8,
    },
    /// The interface has a secret and the peer sent none.
    #[error("Secret required")]
    SecretRequired,
    /// The peer's secret differs.
    #[error("Incorrect secret")]
    BadSecret,
    /// A message that does not belong at this point of the handshake.
    #[error("Unexpected message")]
    Unexpected {
        /// Its type number.
        got: u16,
    },
    /// ADD_REGION came without a memory file descriptor.
    #[error("Missing region fd")]
    MissingRegionFd,
    /// Regions must be announced in order, within the limit.
    #[error("Invalid region index")]
    RegionIndex {
        /// The index announced.
        index: u16,
    },
    /// A region whose memory file was already announced as another region.
    #[error("Region file already mapped")]
    RegionDuplicate {
        /// The index announced.
        index: u16,
    },
    /// A region of zero bytes or more than the limit.
    #[error("Invalid region size")]
    RegionSize {
        /// The size announced.
        size: u64,
    },
    /// The region's file could not be mapped (e.g. shorter than announced).
    #[error("Failed to map region")]
    RegionMap(#[source] MemError),
    /// ADD_RING came without an eventfd.
    #[error("Missing interrupt fd")]
    MissingRingFd,
    /// A ring index beyond our queues, or announced twice.
    #[error("Invalid ring index")]
    RingIndex {
        /// The index.
        index: u16,
        /// Its direction.
        c2s: bool,
    },
    /// A ring that does not fit its region, or with a size or header we do not take.
    #[error("Invalid ring")]
    Ring {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A ring without the memif cookie at connect time.
    #[error("Wrong ring")]
    Cookie {
        /// Ring index.
        index: usize,
        /// Its direction.
        c2s: bool,
    },
    /// CONNECT before at least one ring in each direction was announced, with no gaps.
    #[error("Missing rings")]
    MissingRings,
    /// The server's limits leave no room for ustack's layout (it needs two regions).
    #[error("Unsupported server limits")]
    PeerLimits,
    /// Setting up our side failed (shared memory, eventfds).
    #[error("Device error")]
    Local(#[source] MemError),
    /// The peer sent DISCONNECT.
    #[error("Disconnect received: {reason}")]
    PeerDisconnect {
        /// The peer's reason.
        reason: String,
    },
}

/// The result of a successful handshake: what the data path needs.
#[derive(Debug)]
pub(crate) struct Established {
    /// Mapped regions: the peer's (server), or our ring region (client; index 0).
    pub(crate) regions: Vec<Arc<SharedRegion>>,
    /// Client-to-server rings, by index.
    pub(crate) c2s: Vec<RingLoc>,
    /// Server-to-client rings, by index.
    pub(crate) s2c: Vec<RingLoc>,
    /// The peer application's name.
    pub(crate) peer_name: Name,
    /// The peer's interface name.
    pub(crate) peer_if_name: Name,
}

fn eventfd() -> Result<OwnedFd, ControlError> {
    sys::eventfd().map_err(|source| {
        ControlError::Local(MemError::SharedFile {
            op: "eventfd",
            source,
        })
    })
}

/// What the server side is configured with.
#[derive(Clone, Debug)]
pub(crate) struct ServerParams {
    pub(crate) id: u32,
    pub(crate) secret: Option<[u8; SECRET_LEN]>,
    pub(crate) queues: u16,
    pub(crate) regions_max: u16,
    pub(crate) region_len_max: u64,
    pub(crate) name: Name,
}

impl ServerParams {
    /// The HELLO sent to every client that connects.
    pub(crate) fn hello(&self) -> Msg {
        Msg::Hello(Hello {
            name: self.name,
            min_version: VERSION,
            max_version: VERSION,
            max_region: self.regions_max - 1,
            max_s2c_ring: self.queues - 1,
            max_c2s_ring: self.queues - 1,
            max_log2_ring_size: LOG2_RING_SIZE_MAX,
        })
    }
}

/// What a server handshake step produced.
#[derive(Debug)]
pub(crate) enum ServerStep {
    /// Send this reply.
    Reply(Msg),
    /// The connection is up: send CONNECTED with our name and start the data path.
    Connected(Established),
}

/// The server's half of the handshake.
#[derive(Debug, Default)]
pub(crate) struct ServerHandshake {
    initialised: bool,
    regions: Vec<SharedRegion>,
    c2s: Vec<Option<RingLoc>>,
    s2c: Vec<Option<RingLoc>>,
    peer_name: Option<Name>,
}

impl ServerHandshake {
    /// Takes one message from the client.
    pub(crate) fn handle(
        &mut self,
        msg: Msg,
        fd: Option<OwnedFd>,
        p: &ServerParams,
    ) -> Result<ServerStep, ControlError> {
        match msg {
            Msg::Init(init) if !self.initialised => {
                self.init(&init, p)?;
                Ok(ServerStep::Reply(Msg::Ack))
            }
            Msg::AddRegion(r) if self.initialised => {
                self.add_region(r, fd, p)?;
                Ok(ServerStep::Reply(Msg::Ack))
            }
            Msg::AddRing(r) if self.initialised => {
                self.add_ring(r, fd, p)?;
                Ok(ServerStep::Reply(Msg::Ack))
            }
            Msg::Connect(if_name) if self.initialised => self.connect(if_name),
            Msg::Disconnect(d) => Err(ControlError::PeerDisconnect {
                reason: d.reason_lossy(),
            }),
            other => Err(ControlError::Unexpected {
                got: other.type_id(),
            }),
        }
    }

    fn init(&mut self, i: &Init, p: &ServerParams) -> Result<(), ControlError> {
        if i.version != VERSION {
            return Err(ControlError::Version { got: i.version });
        }
        if i.id != p.id {
            return Err(ControlError::UnknownId { id: i.id });
        }
        if i.mode != MODE_ETHERNET {
            return Err(ControlError::Mode { mode: i.mode });
        }
        if let Some(ours) = &p.secret {
            let theirs = i.secret_bytes();
            if theirs.is_empty() {
                return Err(ControlError::SecretRequired);
            }
            let ours_len = ours.iter().position(|&c| c == 0).unwrap_or(SECRET_LEN);
            // Compare every byte, whatever matches, so timing says nothing about the secret.
            let diff = ours
                .iter()
                .zip(&i.secret)
                .take(ours_len.max(theirs.len()))
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff != 0 || theirs.len() != ours_len {
                return Err(ControlError::BadSecret);
            }
        }
        self.peer_name = Some(i.name);
        self.initialised = true;
        self.c2s = (0..p.queues).map(|_| None).collect();
        self.s2c = (0..p.queues).map(|_| None).collect();
        Ok(())
    }

    fn add_region(
        &mut self,
        r: AddRegion,
        fd: Option<OwnedFd>,
        p: &ServerParams,
    ) -> Result<(), ControlError> {
        let fd = fd.ok_or(ControlError::MissingRegionFd)?;
        if usize::from(r.index) != self.regions.len() || r.index >= p.regions_max {
            return Err(ControlError::RegionIndex { index: r.index });
        }
        if r.size == 0 || r.size > p.region_len_max {
            return Err(ControlError::RegionSize { size: r.size });
        }
        let region = SharedRegion::map_fd(fd, r.size as usize).map_err(ControlError::RegionMap)?;
        // One file announced twice would map the same bytes at two addresses: a buffer could
        // then be lent twice, or overlap a ring, without the regions seeing it.
        if self.regions.iter().any(|m| m.file_id() == region.file_id()) {
            return Err(ControlError::RegionDuplicate { index: r.index });
        }
        self.regions.push(region);
        Ok(())
    }

    fn add_ring(
        &mut self,
        r: AddRing,
        fd: Option<OwnedFd>,
        _p: &ServerParams,
    ) -> Result<(), ControlError> {
        let fd = fd.ok_or(ControlError::MissingRingFd)?;
        if r.private_hdr_size != 0 {
            return Err(ControlError::Ring {
                reason: "private header not supported",
            });
        }
        if r.log2_ring_size == 0 || r.log2_ring_size > LOG2_RING_SIZE_MAX {
            return Err(ControlError::Ring {
                reason: "ring size out of range",
            });
        }
        let c2s = r.is_c2s();
        let list = if c2s { &mut self.c2s } else { &mut self.s2c };
        let slot = list
            .get_mut(usize::from(r.index))
            .filter(|s| s.is_none())
            .ok_or(ControlError::RingIndex {
                index: r.index,
                c2s,
            })?;
        let region = self
            .regions
            .get(usize::from(r.region))
            .ok_or(ControlError::Ring {
                reason: "no such region",
            })?;
        if RingView::new(region, r.offset as usize, r.log2_ring_size).is_none() {
            return Err(ControlError::Ring {
                reason: "ring does not fit its region or is misaligned",
            });
        }
        // The interrupt line must never block us, whatever the peer passed.
        if let Err(e) = sys::set_nonblocking(fd.as_fd()) {
            tracing::debug!("memif: cannot make the peer's eventfd non-blocking: {e}");
        }
        *slot = Some(RingLoc {
            region: r.region,
            offset: r.offset as usize,
            log2: r.log2_ring_size,
            eventfd: fd,
        });
        Ok(())
    }

    fn connect(&mut self, if_name: Name) -> Result<ServerStep, ControlError> {
        let take = |list: &mut Vec<Option<RingLoc>>| -> Result<Vec<RingLoc>, ControlError> {
            let n = list.iter().take_while(|r| r.is_some()).count();
            if n == 0 || list[n..].iter().any(|r| r.is_some()) {
                return Err(ControlError::MissingRings);
            }
            Ok(list.drain(..n).flatten().collect())
        };
        let c2s = take(&mut self.c2s)?;
        let s2c = take(&mut self.s2c)?;
        for (list, is_c2s) in [(&c2s, true), (&s2c, false)] {
            for (index, loc) in list.iter().enumerate() {
                let view = self
                    .regions
                    .get(usize::from(loc.region))
                    .and_then(|r| RingView::new(r, loc.offset, loc.log2))
                    .ok_or(ControlError::Ring {
                        reason: "ring does not fit its region",
                    })?;
                if view.cookie() != super::proto::COOKIE {
                    return Err(ControlError::Cookie { index, c2s: is_c2s });
                }
                // Start from empty rings, as DPDK's server does; we poll what we receive.
                view.set_head(0, Ordering::Relaxed);
                view.set_tail(0, Ordering::Relaxed);
                if is_c2s {
                    view.set_flags(RING_FLAG_MASK_INT);
                }
            }
        }
        Ok(ServerStep::Connected(Established {
            regions: std::mem::take(&mut self.regions)
                .into_iter()
                .map(Arc::new)
                .collect(),
            c2s,
            s2c,
            peer_name: self.peer_name.unwrap_or(Name([0; 32])),
            peer_if_name: if_name,
        }))
    }
}

/// What the client side is configured with.
#[derive(Clone, Debug)]
pub(crate) struct ClientParams {
    pub(crate) id: u32,
    pub(crate) secret: [u8; SECRET_LEN],
    pub(crate) queues: u16,
    pub(crate) log2_ring_size: u8,
    pub(crate) name: Name,
    pub(crate) if_name: Name,
}

/// What a client handshake step produced.
#[derive(Debug)]
pub(crate) enum ClientStep {
    /// Send this message, with this descriptor.
    Send(Msg, Option<OwnedFd>),
    /// The connection is up: start the data path.
    Connected(Established),
}

/// The client's half of the handshake.
#[derive(Debug, Default)]
pub(crate) struct ClientHandshake {
    /// Messages still to send, each after the previous one's ACK.
    pending: VecDeque<(Msg, Option<OwnedFd>)>,
    /// Our rings and their region, built when HELLO arrives.
    built: Option<(SharedRegion, Vec<RingLoc>, Vec<RingLoc>)>,
    peer_name: Option<Name>,
    connect_sent: bool,
}

impl ClientHandshake {
    /// Takes one message from the server. `buffers` is the memory file of our buffer pool and
    /// its length (region 1).
    pub(crate) fn handle(
        &mut self,
        msg: Msg,
        p: &ClientParams,
        buffers: (BorrowedFd<'_>, u64),
    ) -> Result<ClientStep, ControlError> {
        match msg {
            Msg::Hello(h) if self.built.is_none() => self.hello(&h, p, buffers),
            Msg::Ack if self.built.is_some() && !self.connect_sent => {
                let (m, fd) = self.pending.pop_front().ok_or(ControlError::Unexpected {
                    got: Msg::Ack.type_id(),
                })?;
                self.connect_sent = matches!(m, Msg::Connect(_));
                Ok(ClientStep::Send(m, fd))
            }
            Msg::Connected(if_name) if self.connect_sent => {
                let (region, c2s, s2c) = self
                    .built
                    .take()
                    .ok_or(ControlError::Unexpected { got: msg.type_id() })?;
                for (list, is_c2s) in [(&c2s, true), (&s2c, false)] {
                    for loc in list {
                        if let Some(view) = RingView::new(&region, loc.offset, loc.log2) {
                            view.set_head(0, Ordering::Relaxed);
                            view.set_tail(0, Ordering::Relaxed);
                            if !is_c2s {
                                view.set_flags(RING_FLAG_MASK_INT);
                            }
                        }
                    }
                }
                Ok(ClientStep::Connected(Established {
                    regions: vec![Arc::new(region)],
                    c2s,
                    s2c,
                    peer_name: self.peer_name.unwrap_or(Name([0; 32])),
                    peer_if_name: if_name,
                }))
            }
            Msg::Disconnect(d) => Err(ControlError::PeerDisconnect {
                reason: d.reason_lossy(),
            }),
            other => Err(ControlError::Unexpected {
                got: other.type_id(),
            }),
        }
    }

    fn hello(
        &mut self,
        h: &Hello,
        p: &ClientParams,
        (buf_fd, buf_len): (BorrowedFd<'_>, u64),
    ) -> Result<ClientStep, ControlError> {
        if h.min_version > VERSION || h.max_version < VERSION {
            return Err(ControlError::Version { got: h.min_version });
        }
        if h.max_region < 1 {
            return Err(ControlError::PeerLimits);
        }
        let c2s_n = (u32::from(h.max_c2s_ring) + 1).min(u32::from(p.queues)) as usize;
        let s2c_n = (u32::from(h.max_s2c_ring) + 1).min(u32::from(p.queues)) as usize;
        let log2 = h.max_log2_ring_size.min(p.log2_ring_size);
        if log2 == 0 {
            return Err(ControlError::PeerLimits);
        }
        self.peer_name = Some(h.name);

        // Region 0: every ring, C2S first, as DPDK lays them out.
        let one = ring_len(log2);
        let region = SharedRegion::create((c2s_n + s2c_n) * one, PageSize::Base4K, "memif-rings")
            .map_err(ControlError::Local)?;
        let mut c2s = Vec::with_capacity(c2s_n);
        let mut s2c = Vec::with_capacity(s2c_n);
        for i in 0..c2s_n + s2c_n {
            let offset = i * one;
            let view = RingView::new(&region, offset, log2).ok_or(ControlError::Ring {
                reason: "internal ring layout",
            })?;
            let is_c2s = i < c2s_n;
            view.init(if is_c2s { 0 } else { RING_FLAG_MASK_INT });
            let loc = RingLoc {
                region: RING_REGION,
                offset,
                log2,
                eventfd: eventfd()?,
            };
            if is_c2s {
                c2s.push(loc);
            } else {
                s2c.push(loc);
            }
        }

        let dup = |fd: BorrowedFd<'_>| {
            fd.try_clone_to_owned().map_err(|source| {
                ControlError::Local(MemError::SharedFile {
                    op: "dup of a descriptor to send",
                    source,
                })
            })
        };
        let ring_fd = region.fd().ok_or(ControlError::Ring {
            reason: "ring region without a file",
        })?;
        let mut pending = VecDeque::with_capacity(4 + c2s_n + s2c_n);
        pending.push_back((
            Msg::AddRegion(AddRegion {
                index: RING_REGION,
                size: region.len() as u64,
            }),
            Some(dup(ring_fd)?),
        ));
        pending.push_back((
            Msg::AddRegion(AddRegion {
                index: BUFFER_REGION,
                size: buf_len,
            }),
            Some(dup(buf_fd)?),
        ));
        for (list, flags) in [(&c2s, ADD_RING_FLAG_C2S), (&s2c, 0)] {
            for (i, loc) in list.iter().enumerate() {
                pending.push_back((
                    Msg::AddRing(AddRing {
                        flags,
                        index: i as u16,
                        region: RING_REGION,
                        offset: loc.offset as u32,
                        log2_ring_size: log2,
                        private_hdr_size: 0,
                    }),
                    Some(dup(loc.eventfd.as_fd())?),
                ));
            }
        }
        pending.push_back((Msg::Connect(p.if_name), None));
        self.pending = pending;
        self.built = Some((region, c2s, s2c));
        Ok(ClientStep::Send(
            Msg::Init(Init {
                version: VERSION,
                id: p.id,
                mode: MODE_ETHERNET,
                secret: p.secret,
                name: p.name,
            }),
            None,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::memif::proto::{secret_field, Disconnect};
    use crate::mem::HugeRegion;

    fn server_params(secret: Option<&str>) -> ServerParams {
        ServerParams {
            id: 7,
            secret: secret.map(|s| secret_field(s).unwrap()),
            queues: 2,
            regions_max: 16,
            region_len_max: 1 << 32,
            name: Name::new("server"),
        }
    }

    fn client_params(id: u32, secret: &str) -> ClientParams {
        ClientParams {
            id,
            secret: secret_field(secret).unwrap(),
            queues: 4,
            log2_ring_size: 12,
            name: Name::new("client"),
            if_name: Name::new("memif0"),
        }
    }

    /// Runs the two machines against each other, as the device does over the socket.
    fn run(
        sp: &ServerParams,
        cp: &ClientParams,
    ) -> Result<(Established, Established), ControlError> {
        let (buf_region, buf_fd) =
            HugeRegion::map_memfd(1 << 20, PageSize::Base4K, "ustack-ctl-test").unwrap();
        let mut s = ServerHandshake::default();
        let mut c = ClientHandshake::default();
        let mut to_client = sp.hello();
        let mut messages = 0;
        loop {
            messages += 1;
            assert!(messages < 50, "handshake does not end");
            let (m, fd) =
                match c.handle(to_client, cp, (buf_fd.as_fd(), buf_region.len() as u64))? {
                    ClientStep::Send(m, fd) => (m, fd),
                    ClientStep::Connected(_) => unreachable!("connected before CONNECTED"),
                };
            match s.handle(m, fd, sp)? {
                ServerStep::Reply(r) => to_client = r,
                ServerStep::Connected(server) => {
                    let ClientStep::Connected(client) =
                        c.handle(Msg::Connected(sp.name), cp, (buf_fd.as_fd(), 0))?
                    else {
                        panic!("client did not connect");
                    };
                    return Ok((server, client));
                }
            }
        }
    }

    #[test]
    fn handshake_negotiates_and_connects() {
        let (server, client) = run(&server_params(Some("pw")), &client_params(7, "pw")).unwrap();
        // min(server's 2 queues, client's 4), min(14, 12) slots.
        assert_eq!((server.c2s.len(), server.s2c.len()), (2, 2));
        assert_eq!((client.c2s.len(), client.s2c.len()), (2, 2));
        assert_eq!(server.regions.len(), 2);
        assert_eq!(server.c2s[1].log2, 12);
        assert_eq!(server.peer_name.to_string_lossy(), "client");
        assert_eq!(server.peer_if_name.to_string_lossy(), "memif0");
        assert_eq!(client.peer_name.to_string_lossy(), "server");
        // Both see the same rings: the server polls C2S, the client polls S2C.
        let sv = server.c2s[0].view(&server.regions).unwrap();
        assert_eq!(sv.flags(), RING_FLAG_MASK_INT);
        let cv = client.s2c[1].view(&client.regions).unwrap();
        assert_eq!(cv.flags(), RING_FLAG_MASK_INT);
        cv.set_head(3, Ordering::Release);
        assert_eq!(
            server.s2c[1]
                .view(&server.regions)
                .unwrap()
                .head(Ordering::Acquire),
            3
        );
    }

    #[test]
    fn wrong_id_secret_and_mode_are_refused() {
        assert!(matches!(
            run(&server_params(None), &client_params(8, "")),
            Err(ControlError::UnknownId { id: 8 })
        ));
        assert!(matches!(
            run(&server_params(Some("pw")), &client_params(7, "")),
            Err(ControlError::SecretRequired)
        ));
        assert!(matches!(
            run(&server_params(Some("pw")), &client_params(7, "pwx")),
            Err(ControlError::BadSecret)
        ));
        assert!(matches!(
            run(&server_params(Some("pwx")), &client_params(7, "pw")),
            Err(ControlError::BadSecret)
        ));
        // No secret on the server: any client secret is fine (as in DPDK).
        assert!(run(&server_params(None), &client_params(7, "x")).is_ok());
        let mut s = ServerHandshake::default();
        let init = Init {
            version: VERSION,
            id: 7,
            mode: 1,
            secret: [0; 24],
            name: Name::new("x"),
        };
        assert!(matches!(
            s.handle(Msg::Init(init), None, &server_params(None)),
            Err(ControlError::Mode { mode: 1 })
        ));
        let old = Init {
            version: 0x0100,
            mode: 0,
            ..init
        };
        assert!(matches!(
            s.handle(Msg::Init(old), None, &server_params(None)),
            Err(ControlError::Version { got: 0x0100 })
        ));
        assert_eq!(ControlError::BadSecret.to_string(), "Incorrect secret");
    }

    fn initialised() -> ServerHandshake {
        let mut s = ServerHandshake::default();
        let init = Init {
            version: VERSION,
            id: 7,
            mode: 0,
            secret: [0; 24],
            name: Name::new("x"),
        };
        s.handle(Msg::Init(init), None, &server_params(None))
            .unwrap();
        s
    }

    fn memfd(len: u64) -> OwnedFd {
        let fd = sys::memfd_create("ustack-ctl", None).unwrap();
        std::fs::File::from(fd.try_clone().unwrap())
            .set_len(len)
            .unwrap();
        fd
    }

    #[test]
    fn server_checks_regions_and_rings() {
        let p = server_params(None);
        let mut s = initialised();
        let region = |index, size| Msg::AddRegion(AddRegion { index, size });
        assert!(matches!(
            s.handle(region(0, 4096), None, &p),
            Err(ControlError::MissingRegionFd)
        ));
        assert!(matches!(
            s.handle(region(1, 4096), Some(memfd(4096)), &p),
            Err(ControlError::RegionIndex { index: 1 })
        ));
        assert!(matches!(
            s.handle(region(0, 0), Some(memfd(4096)), &p),
            Err(ControlError::RegionSize { size: 0 })
        ));
        assert!(matches!(
            s.handle(region(0, 8192), Some(memfd(4096)), &p),
            Err(ControlError::RegionMap(MemError::FileTooShort { .. }))
        ));
        s.handle(region(0, 4096), Some(memfd(4096)), &p).unwrap();
        let ring = |index, offset, log2| {
            Msg::AddRing(AddRing {
                flags: ADD_RING_FLAG_C2S,
                index,
                region: 0,
                offset,
                log2_ring_size: log2,
                private_hdr_size: 0,
            })
        };
        let efd = || Some(sys::eventfd().unwrap());
        assert!(matches!(
            s.handle(ring(0, 0, 4), None, &p),
            Err(ControlError::MissingRingFd)
        ));
        assert!(matches!(
            s.handle(ring(2, 0, 4), efd(), &p),
            Err(ControlError::RingIndex {
                index: 2,
                c2s: true
            })
        ));
        assert!(matches!(
            s.handle(ring(0, 4000, 4), efd(), &p),
            Err(ControlError::Ring { .. })
        ));
        assert!(matches!(
            s.handle(ring(0, 2, 2), efd(), &p),
            Err(ControlError::Ring { .. })
        ));
        assert!(matches!(
            s.handle(ring(0, 0, 15), efd(), &p),
            Err(ControlError::Ring { .. })
        ));
        s.handle(ring(0, 0, 4), efd(), &p).unwrap();
        assert!(matches!(
            s.handle(ring(0, 1024, 4), efd(), &p),
            Err(ControlError::RingIndex {
                index: 0,
                c2s: true
            })
        ));
        // No S2C ring yet.
        assert!(matches!(
            s.handle(Msg::Connect(Name::new("x")), None, &p),
            Err(ControlError::MissingRings)
        ));
    }

    #[test]
    fn a_ring_without_cookie_is_refused_at_connect() {
        let p = server_params(None);
        let mut s = initialised();
        s.handle(
            Msg::AddRegion(AddRegion {
                index: 0,
                size: 4096,
            }),
            Some(memfd(4096)),
            &p,
        )
        .unwrap();
        for (flags, offset) in [(ADD_RING_FLAG_C2S, 0), (0, 1024)] {
            s.handle(
                Msg::AddRing(AddRing {
                    flags,
                    index: 0,
                    region: 0,
                    offset,
                    log2_ring_size: 2,
                    private_hdr_size: 0,
                }),
                Some(sys::eventfd().unwrap()),
                &p,
            )
            .unwrap();
        }
        assert!(matches!(
            s.handle(Msg::Connect(Name::new("x")), None, &p),
            Err(ControlError::Cookie {
                index: 0,
                c2s: true
            })
        ));
    }

    #[test]
    fn out_of_order_messages_end_the_handshake() {
        let p = server_params(None);
        let mut s = ServerHandshake::default();
        assert!(matches!(
            s.handle(Msg::Connect(Name::new("x")), None, &p),
            Err(ControlError::Unexpected { got: 6 })
        ));
        let cp = client_params(7, "");
        let mut c = ClientHandshake::default();
        let buf = memfd(4096);
        assert!(matches!(
            c.handle(Msg::Ack, &cp, (buf.as_fd(), 4096)),
            Err(ControlError::Unexpected { got: 1 })
        ));
        assert!(matches!(
            c.handle(
                Msg::Disconnect(Disconnect::new(0, "bye")),
                &cp,
                (buf.as_fd(), 4096)
            ),
            Err(ControlError::PeerDisconnect { reason }) if reason == "bye"
        ));
        let bad_hello = Hello {
            name: Name::new("s"),
            min_version: 0x0300,
            max_version: 0x0300,
            max_region: 255,
            max_s2c_ring: 0,
            max_c2s_ring: 0,
            max_log2_ring_size: 10,
        };
        assert!(matches!(
            c.handle(Msg::Hello(bad_hello), &cp, (buf.as_fd(), 4096)),
            Err(ControlError::Version { got: 0x0300 })
        ));
        let one_region = Hello {
            min_version: VERSION,
            max_version: VERSION,
            max_region: 0,
            ..bad_hello
        };
        assert!(matches!(
            c.handle(Msg::Hello(one_region), &cp, (buf.as_fd(), 4096)),
            Err(ControlError::PeerLimits)
        ));
    }
}
