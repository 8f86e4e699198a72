//! AF_XDP sockets: a safe wrapper ([`Xsk`]) around the socket, its UMEM and its four rings
//! (the rings themselves are [`super::xsk_ring`]), plus wake-ups whose errors we want to see,
//! `XDP_OPTIONS`, busy-poll options, interface index and `RLIMIT_MEMLOCK`.
//!
//! # Memory
//!
//! The UMEM (the memory the kernel copies frames into and out of) is a [`UmemArea`]: one
//! mapping split into frames of equal size (2048 or 4096 bytes, a power of two as the kernel's
//! aligned mode wants), in ustack the memory of a `mem::BufPool`, each pool buffer one UMEM
//! frame. [`Xsk`] keeps a handle to the area (a clone), which keeps the memory mapped for as
//! long as the socket and its rings live: registering memory with the kernel is only sound for
//! memory whose lifetime something guarantees, and the area's implementation promises that
//! (`UmemArea` is an `unsafe` trait). So `sys` names no type of the layers above it.
//!
//! Which frame belongs to whom is the caller's business: a frame may only be given to the fill
//! or TX ring after it was taken out of the area's owner (`BufPool::lend`), and frames coming
//! back from the RX or completion ring go back to it through a check of every address the kernel
//! returns (`BufPool::reclaim`). The kernel never writes a frame it was not given.
//!
//! # Rings
//!
//! Each ring operation takes a bound (`max`) and a closure, so the caller moves frames without
//! allocating and without seeing ring indices: [`Xsk::rx_pop`], [`Xsk::fill_push`],
//! [`Xsk::complete_pop`], [`Xsk::tx_push`]. Producer operations reserve slots first and ask the
//! closure for at most that many entries, so an entry the closure hands out is never dropped
//! for want of a slot.
//!
//! # Setting up
//!
//! [`Xsk::new`] follows the kernel's order (Documentation/networking/af_xdp.rst): `socket`,
//! `setsockopt(XDP_UMEM_REG)`, the fill and completion ring sizes (`XDP_UMEM_FILL_RING`,
//! `XDP_UMEM_COMPLETION_RING`), the RX and TX ring sizes (`XDP_RX_RING`, `XDP_TX_RING`), then
//! `getsockopt(XDP_MMAP_OFFSETS)` and one `mmap` of the socket per ring at the ring's fixed page
//! offset. [`Xsk::bind`] comes after, so binding can be retried with other flags.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use super::xsk_ring::{ConsumerRing, ProducerRing, RingArea, RingEntry, RingOffsets, XdpDesc};

/// Bind flag `XDP_COPY`: force copy mode.
pub const XDP_COPY: u16 = libc::XDP_COPY;
/// Bind flag `XDP_ZEROCOPY`: force zero-copy mode (fails with `EOPNOTSUPP` where the driver
/// cannot).
pub const XDP_ZEROCOPY: u16 = libc::XDP_ZEROCOPY;
/// Bind flag `XDP_USE_NEED_WAKEUP`: the kernel says, through a ring flag, when it needs a system
/// call to make progress; otherwise the rings run without any.
pub const XDP_USE_NEED_WAKEUP: u16 = libc::XDP_USE_NEED_WAKEUP;

/// Bind flag `XDP_USE_SG`: multi-buffer packets. A packet larger than one UMEM frame comes on
/// the RX ring as several descriptors, every one but the last with [`XDP_PKT_CONTD`], and may
/// be sent the same way. Without it the kernel drops such packets (counted in the socket's
/// `rx_dropped`). Copy mode has it from Linux 6.6 (older kernels: `EINVAL`); zero-copy only
/// where the driver does (`EOPNOTSUPP` otherwise).
pub const XDP_USE_SG: u16 = libc::XDP_USE_SG;

/// Descriptor option `XDP_PKT_CONTD`: the packet continues in the next descriptor.
pub const XDP_PKT_CONTD: u32 = libc::XDP_PKT_CONTD;

/// Most descriptors one packet may take on the TX ring: copy mode accepts
/// `CONFIG_MAX_SKB_FRAGS + 1` and that option is at least 17, so 18 works on every kernel.
pub const TX_FRAGS_MAX: usize = 18;

/// One packet for the TX ring ([`Xsk::tx_push`]): up to [`TX_FRAGS_MAX`] `(addr, len)`
/// descriptors in order; all but the last go with [`XDP_PKT_CONTD`].
#[derive(Clone, Debug)]
pub struct TxPacket {
    descs: [(u64, u32); TX_FRAGS_MAX],
    n: usize,
}

impl Default for TxPacket {
    fn default() -> TxPacket {
        TxPacket {
            descs: [(0, 0); TX_FRAGS_MAX],
            n: 0,
        }
    }
}

impl TxPacket {
    /// Appends a descriptor; `false` (and nothing changes) when the packet has
    /// [`TX_FRAGS_MAX`] already.
    #[inline]
    pub fn push(&mut self, addr: u64, len: u32) -> bool {
        if self.n == TX_FRAGS_MAX {
            return false;
        }
        self.descs[self.n] = (addr, len);
        self.n += 1;
        true
    }

    /// Descriptors so far.
    #[inline]
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether there are none.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The descriptors so far.
    #[inline]
    pub fn descs(&self) -> &[(u64, u32)] {
        &self.descs[..self.n]
    }

    #[inline]
    fn clear(&mut self) {
        self.n = 0;
    }
}

/// The headroom the kernel keeps in front of received data in every UMEM frame
/// (`XDP_PACKET_HEADROOM`), before the UMEM's own headroom.
pub const XDP_PACKET_HEADROOM: usize = 256;

/// Ring sizes of one socket (each a power of two).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct XskRings {
    /// Fill ring: frames offered to the kernel for receiving.
    pub fill_len: u32,
    /// Completion ring: transmitted frames handed back.
    pub completion_len: u32,
    /// RX ring: received frames.
    pub rx_len: u32,
    /// TX ring: frames to transmit.
    pub tx_len: u32,
}

/// The step of the AF_XDP socket's setup (`Xsk::new`) that failed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum XskStep {
    /// `socket(AF_XDP)`.
    Socket,
    /// Registering the UMEM (`XDP_UMEM_REG`), which locks the memory.
    UmemRegister,
    /// Creating and mapping the fill and completion rings.
    FillCompletionRings,
    /// Creating the RX and TX rings.
    RxTxRings,
    /// Mapping the RX and TX rings.
    MapRings,
}

impl std::fmt::Display for XskStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XskStep::Socket => "creating the AF_XDP socket",
            XskStep::UmemRegister => "registering the UMEM (XDP_UMEM_REG)",
            XskStep::FillCompletionRings => "creating the fill and completion rings",
            XskStep::RxTxRings => "creating the RX and TX rings",
            XskStep::MapRings => "mapping the RX and TX rings",
        })
    }
}

/// A failed step of [`Xsk::new`].
#[derive(Debug)]
pub struct XskSetupError {
    /// What was being done.
    pub step: XskStep,
    /// The OS error.
    pub source: io::Error,
}

/// The kernel's counters of one socket (`XDP_STATISTICS`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct XskStatistics {
    /// Frames dropped for reasons other than a full RX ring or an empty fill ring.
    pub rx_dropped: u64,
    /// Invalid descriptors on the fill ring.
    pub rx_invalid_descs: u64,
    /// Invalid descriptors on the TX ring.
    pub tx_invalid_descs: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the kernel found the TX ring empty when woken.
    pub tx_ring_empty_descs: u64,
}

impl XskStatistics {
    /// Adds `other`'s counters to these (several sockets as one).
    pub fn add(&mut self, other: &XskStatistics) {
        add_counters!(XskStatistics, self, other; rx_dropped, rx_invalid_descs, tx_invalid_descs, rx_ring_full, rx_fill_ring_empty_descs, tx_ring_empty_descs);
    }
}

/// Index of interface `name` in the calling thread's network namespace.
///
/// `NotFound` (`ENODEV`) when there is no such interface; `InvalidInput` for a name with a NUL.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name holds a NUL"))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(idx)
}

/// The hardware (MAC) address of Ethernet interface `name` in the calling thread's network
/// namespace (`SIOCGIFHWADDR`).
pub fn hw_addr(name: &str) -> io::Result<[u8; 6]> {
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name longer than 15 bytes or holding a NUL",
        ));
    }
    // SAFETY: ifreq is a plain C struct of arrays, integers and a union of those; all-zero is a
    // valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: socket takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket just returned this descriptor and nothing else owns it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: SIOCGIFHWADDR reads the name from and writes `ifru_hwaddr` into the ifreq, which
    // is valid and exclusively borrowed for the call; the descriptor is live.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR succeeded and filled the `ifru_hwaddr` member of the union.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    if sa.sa_family != libc::ARPHRD_ETHER {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an Ethernet interface",
        ));
    }
    let mut mac = [0u8; 6];
    for (dst, &src) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *dst = src as u8;
    }
    Ok(mac)
}

/// The soft `RLIMIT_MEMLOCK` in bytes, `None` when unlimited.
pub fn memlock_limit() -> io::Result<Option<u64>> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur))
}

/// Whether this process may create an AF_XDP socket: creates one and closes it at once.
///
/// Typical errors: `EPERM` without `CAP_NET_RAW`, `EAFNOSUPPORT` on a kernel without
/// `CONFIG_XDP_SOCKETS`.
pub fn probe_socket() -> io::Result<()> {
    // SAFETY: socket takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created here and is closed once.
    unsafe { libc::close(fd) };
    Ok(())
}

/// Memory an AF_XDP socket can use as its UMEM: one mapping, split into frames of equal size.
///
/// # Safety
///
/// An implementation promises that [`memory`](UmemArea::memory) names one mapping, page
/// aligned, readable and writable, of the length it gives, and that the mapping stays valid for
/// as long as this value or any clone of it lives: [`Xsk`] registers it with the kernel and keeps
/// a clone until the socket is closed. The kernel writes only into frames the caller lends it
/// (fill ring), so memory the owner has not lent is not written.
pub unsafe trait UmemArea: Send + Sync + 'static {
    /// The whole area as (start, length in bytes).
    fn memory(&self) -> (*mut u8, usize);
    /// Bytes per frame: frame `i` starts `i * frame_len()` bytes into the area. The kernel
    /// takes 2048 or 4096.
    fn frame_len(&self) -> usize;
}

/// One AF_XDP socket with its own UMEM (a [`UmemArea`]) and all four rings, bound (after
/// [`Xsk::bind`]) to one queue of one interface.
///
/// Dropping it unmaps the rings and closes the socket, which unbinds it (the kernel releases the
/// queue a few tens of milliseconds later: a new bind to the same queue may see `EBUSY` until
/// then), and only then releases its handle to the UMEM.
pub struct Xsk {
    // Field order is drop order: rings (unmapped) and socket first, the memory they refer to
    // last.
    fill: ProducerRing<u64>,
    completion: ConsumerRing<u64>,
    rx: ConsumerRing<XdpDesc>,
    tx: ProducerRing<XdpDesc>,
    fd: OwnedFd,
    ifindex: u32,
    queue_id: u32,
    stride: u64,
    /// Keeps the UMEM mapped while the kernel may use it; never read.
    _umem: Box<dyn UmemArea>,
}

/// `setsockopt(fd, SOL_XDP, opt, &value)` for a plain value.
///
/// # Safety
///
/// `T` must be the type the kernel reads for `opt`. For `XDP_UMEM_REG` the memory it names must
/// stay mapped, and be written by no one but through frames lent to the kernel, for as long as
/// the socket or its rings live: the kernel writes into it.
unsafe fn set_xdp_option<T>(fd: BorrowedFd<'_>, opt: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live, readable T of the size given; the fd is open for the borrow.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (value as *const T).cast::<libc::c_void>(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `getsockopt(fd, SOL_XDP, opt, &mut value)`; returns the length the kernel wrote, which is
/// less than `size_of::<T>()` where an older kernel has a shorter struct.
///
/// # Safety
///
/// `T` must be plain data valid for any bit pattern (the kernel's struct for `opt`).
unsafe fn get_xdp_option<T>(
    fd: BorrowedFd<'_>,
    opt: libc::c_int,
    value: &mut T,
) -> io::Result<usize> {
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a live, writable T and `len` its size, both exclusively borrowed for
    // the call; the kernel writes at most `len` bytes. The fd is open for the borrow.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (value as *mut T).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(len as usize)
}

/// Where the four rings lie in their mappings (`XDP_MMAP_OFFSETS`). Kernels before 5.4 answer
/// with the shorter `struct xdp_mmap_offsets_v1` (no flags word; `libc::xdp_mmap_offsets_v1`),
/// as the kernel's AF_XDP documentation says to expect: their rings get no flags.
struct MmapOffsets {
    rx: RingOffsets,
    tx: RingOffsets,
    fill: RingOffsets,
    completion: RingOffsets,
}

fn mmap_offsets(fd: BorrowedFd<'_>) -> io::Result<MmapOffsets> {
    // SAFETY: xdp_mmap_offsets is a plain struct of u64s; all-zero is a valid value.
    let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
    // SAFETY: xdp_mmap_offsets is plain u64s, the kernel's struct for this option.
    let len = unsafe { get_xdp_option(fd, libc::XDP_MMAP_OFFSETS, &mut off) }?;
    if len == size_of::<libc::xdp_mmap_offsets>() {
        let ring = |r: &libc::xdp_ring_offset| RingOffsets {
            producer: r.producer,
            consumer: r.consumer,
            desc: r.desc,
            flags: Some(r.flags),
        };
        return Ok(MmapOffsets {
            rx: ring(&off.rx),
            tx: ring(&off.tx),
            fill: ring(&off.fr),
            completion: ring(&off.cr),
        });
    }
    if len != size_of::<libc::xdp_mmap_offsets_v1>() {
        return Err(io::Error::other(format!(
            "XDP_MMAP_OFFSETS answered {len} bytes, neither the old nor the new struct"
        )));
    }
    // SAFETY: xdp_mmap_offsets_v1 is a plain struct of u64s; all-zero is a valid value.
    let mut v1: libc::xdp_mmap_offsets_v1 = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel wrote exactly a v1 struct (len says so) at the start of `off`; copy
    // those bytes into a v1 struct of that size. Both are plain data.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (&off as *const libc::xdp_mmap_offsets).cast::<u8>(),
            (&mut v1 as *mut libc::xdp_mmap_offsets_v1).cast::<u8>(),
            size_of::<libc::xdp_mmap_offsets_v1>(),
        )
    };
    let ring = |r: &libc::xdp_ring_offset_v1| RingOffsets {
        producer: r.producer,
        consumer: r.consumer,
        desc: r.desc,
        flags: None,
    };
    Ok(MmapOffsets {
        rx: ring(&v1.rx),
        tx: ring(&v1.tx),
        fill: ring(&v1.fr),
        completion: ring(&v1.cr),
    })
}

/// Maps one ring of `size` entries of `T` at page offset `pgoff` of the socket.
fn map_ring<T: RingEntry>(
    fd: BorrowedFd<'_>,
    off: &RingOffsets,
    size: u32,
    pgoff: u64,
) -> io::Result<Arc<RingArea>> {
    let len = usize::try_from(off.desc)
        .ok()
        .and_then(|d| d.checked_add(size as usize * size_of::<T>()))
        .ok_or_else(|| io::Error::other("ring mapping length overflows"))?;
    // SAFETY: a new shared mapping chosen by the kernel (null hint) of the socket's ring; no
    // existing memory is touched. The fd is open for the borrow.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            pgoff as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let p = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("ring mapped at 0"))?;
    // SAFETY: `p..p + len` is the mapping just made, readable and writable, and nothing else
    // knows of it.
    Ok(Arc::new(unsafe { RingArea::from_mmap(p, len) }))
}

impl Xsk {
    /// Creates the socket, registers `umem`'s whole memory as its UMEM with frames of
    /// `umem.frame_len()` bytes and `umem_headroom` bytes of headroom (in front of the kernel's
    /// [`XDP_PACKET_HEADROOM`]), and creates and maps the rings. The socket is not bound yet; it
    /// keeps a clone of `umem`.
    pub fn new<U: UmemArea + Clone>(
        umem: &U,
        umem_headroom: u32,
        ifindex: u32,
        queue_id: u32,
        rings: &XskRings,
    ) -> Result<Xsk, XskSetupError> {
        let fail = |step| move |source| XskSetupError { step, source };
        let stride = umem.frame_len();
        if !stride.is_power_of_two() || !(2048..=4096).contains(&stride) {
            return Err(XskSetupError {
                step: XskStep::UmemRegister,
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "UMEM frames must be 2048 or 4096 bytes (the pool's stride)",
                ),
            });
        }
        let ring = |n: u32| {
            if n.is_power_of_two() {
                Ok(n)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "ring sizes must be powers of two",
                ))
            }
        };
        let (rx_len, tx_len) = (
            ring(rings.rx_len).map_err(fail(XskStep::RxTxRings))?,
            ring(rings.tx_len).map_err(fail(XskStep::RxTxRings))?,
        );
        let (fill_len, completion_len) = (
            ring(rings.fill_len).map_err(fail(XskStep::FillCompletionRings))?,
            ring(rings.completion_len).map_err(fail(XskStep::FillCompletionRings))?,
        );

        // SAFETY: socket takes no pointers.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(fail(XskStep::Socket)(io::Error::last_os_error()));
        }
        // SAFETY: socket just returned this descriptor and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let b = std::os::fd::AsFd::as_fd(&fd);

        let (ptr, len) = umem.memory();
        if ptr.is_null() {
            return Err(fail(XskStep::UmemRegister)(io::Error::other(
                "UMEM memory is null",
            )));
        }
        // SAFETY: xdp_umem_reg is a plain struct of integers; all-zero is a valid value (and
        // the fields this kernel may not know, flags and tx_metadata_len, must be 0).
        let mut reg: libc::xdp_umem_reg = unsafe { std::mem::zeroed() };
        reg.addr = ptr as u64;
        reg.len = len as u64;
        reg.chunk_size = stride as u32;
        reg.headroom = umem_headroom;
        // SAFETY: `reg` is the kernel's struct xdp_umem_reg. It names the area's whole mapping:
        // page aligned, `len` bytes long, readable and writable, and kept mapped for as long as
        // the socket can use it by the clone of `umem` stored in the returned Xsk (UmemArea's
        // contract), which is dropped after the rings and the socket (field order). The kernel
        // writes only into frames the caller lends it through the fill ring (see the module
        // docs), so it never writes memory the area's owner has not lent.
        unsafe { set_xdp_option(b, libc::XDP_UMEM_REG, &reg) }
            .map_err(fail(XskStep::UmemRegister))?;

        // SAFETY: each of the four ring-size options takes a u32 entry count.
        unsafe {
            set_xdp_option(b, libc::XDP_UMEM_FILL_RING, &fill_len)
                .map_err(fail(XskStep::FillCompletionRings))?;
            set_xdp_option(b, libc::XDP_UMEM_COMPLETION_RING, &completion_len)
                .map_err(fail(XskStep::FillCompletionRings))?;
            set_xdp_option(b, libc::XDP_RX_RING, &rx_len).map_err(fail(XskStep::RxTxRings))?;
            set_xdp_option(b, libc::XDP_TX_RING, &tx_len).map_err(fail(XskStep::RxTxRings))?;
        }

        let off = mmap_offsets(b).map_err(fail(XskStep::FillCompletionRings))?;
        let fill_area = map_ring::<u64>(b, &off.fill, fill_len, libc::XDP_UMEM_PGOFF_FILL_RING)
            .map_err(fail(XskStep::FillCompletionRings))?;
        let completion_area = map_ring::<u64>(
            b,
            &off.completion,
            completion_len,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
        )
        .map_err(fail(XskStep::FillCompletionRings))?;
        let rx_area = map_ring::<XdpDesc>(b, &off.rx, rx_len, libc::XDP_PGOFF_RX_RING as u64)
            .map_err(fail(XskStep::MapRings))?;
        let tx_area = map_ring::<XdpDesc>(b, &off.tx, tx_len, libc::XDP_PGOFF_TX_RING as u64)
            .map_err(fail(XskStep::MapRings))?;
        // SAFETY: each area is the kernel's mapping of that ring, laid out as XDP_MMAP_OFFSETS
        // said, with as many entries as we asked for; the kernel is the other side of each
        // ring and accesses the indices atomically, and each view below is the only one of
        // its side (they live in this Xsk alone).
        let (fill, completion, rx, tx) = unsafe {
            (
                ProducerRing::new(fill_area, &off.fill, fill_len),
                ConsumerRing::new(completion_area, &off.completion, completion_len),
                ConsumerRing::new(rx_area, &off.rx, rx_len),
                ProducerRing::new(tx_area, &off.tx, tx_len),
            )
        };
        Ok(Xsk {
            fill,
            completion,
            rx,
            tx,
            fd,
            ifindex,
            queue_id,
            stride: stride as u64,
            _umem: Box::new(umem.clone()),
        })
    }

    /// Binds the socket to its interface queue with `flags` ([`XDP_COPY`], [`XDP_ZEROCOPY`],
    /// [`XDP_USE_NEED_WAKEUP`], [`XDP_USE_SG`]). A failed bind leaves the socket unbound, so it can be tried
    /// again (with other flags, or after `EBUSY`).
    ///
    /// Typical errors: `EOPNOTSUPP` for zero-copy on a driver without it, `EBUSY` while another
    /// socket holds the queue (also for ~50 ms after one closed), `EINVAL` for a queue the
    /// interface does not have.
    pub fn bind(&self, flags: u16) -> io::Result<()> {
        let addr = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: self.ifindex,
            sxdp_queue_id: self.queue_id,
            // Each Xsk has its own UMEM: no XDP_SHARED_UMEM, no other socket's fd.
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: addr is a valid sockaddr_xdp, live and readable for its size during the call;
        // the fd is owned by self.
        let rc = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_xdp).cast::<libc::sockaddr>(),
                size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the bound socket runs in zero-copy mode (`XDP_OPTIONS`).
    pub fn zero_copy(&self) -> io::Result<bool> {
        let mut opts = libc::xdp_options { flags: 0 };
        // SAFETY: xdp_options is one u32, the kernel's struct for this option.
        unsafe { get_xdp_option(self.as_fd(), libc::XDP_OPTIONS, &mut opts) }?;
        Ok(opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0)
    }

    /// Asks the kernel for preferred busy polling of the device queue from this socket's system
    /// calls: `SO_PREFER_BUSY_POLL` = 1, `SO_BUSY_POLL` = `timeout_us`, `SO_BUSY_POLL_BUDGET` =
    /// `budget`, in that order. On failure it returns the option refused with its error and
    /// sets the two first back to 0 (the socket is as before).
    ///
    /// Typical errors: `EPERM` without `CAP_NET_ADMIN` (preferring busy polling, or a timeout
    /// or budget above the `net.core.busy_read` default), `ENOPROTOOPT` on a kernel without
    /// `CONFIG_NET_RX_BUSY_POLL`, `EINVAL` for a value the kernel does not take.
    pub fn set_busy_poll(
        &self,
        timeout_us: u32,
        budget: u32,
    ) -> Result<(), (&'static str, io::Error)> {
        let options = [
            ("SO_PREFER_BUSY_POLL", libc::SO_PREFER_BUSY_POLL, 1u32),
            ("SO_BUSY_POLL", libc::SO_BUSY_POLL, timeout_us),
            ("SO_BUSY_POLL_BUDGET", libc::SO_BUSY_POLL_BUDGET, budget),
        ];
        for (name, opt, value) in options {
            if let Err(e) = self.set_int_option(opt, value as libc::c_int) {
                let _ = self.set_int_option(libc::SO_BUSY_POLL, 0);
                let _ = self.set_int_option(libc::SO_PREFER_BUSY_POLL, 0);
                return Err((name, e));
            }
        }
        Ok(())
    }

    fn set_int_option(&self, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
        // SAFETY: `v` is a readable c_int for the call; the fd is owned by self.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The NAPI context the kernel marked the socket with (`SO_INCOMING_NAPI_ID`), 0 for none:
    /// busy polling has something to drive only when this is set. The mark comes at bind when
    /// the queue has a NAPI context, or with the first packet received through one (native
    /// XDP); generic XDP has none.
    pub fn napi_id(&self) -> io::Result<u32> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` is a writable c_int and `len` its size, both live for the call; the fd is
        // owned by self.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_INCOMING_NAPI_ID,
                &mut v as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(v as u32)
    }

    /// The socket's file descriptor (for `poll`, and as the XSKMAP value).
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }

    /// UMEM frame size (the area's frame length): `addr / frame_len` is a frame's index.
    pub fn frame_len(&self) -> u64 {
        self.stride
    }

    /// Takes up to `max` received descriptors off the RX ring, calling `f(addr, len, options)`
    /// for each, and releases their slots. Returns how many.
    #[inline]
    pub fn rx_pop(&mut self, max: u32, mut f: impl FnMut(u64, u32, u32)) -> u32 {
        let n = self.rx.peek(max);
        for i in 0..n {
            let d = self.rx.read(i);
            f(d.addr, d.len, d.options);
        }
        self.rx.release(n);
        n
    }

    /// Received descriptors waiting on the RX ring (an advisory, relaxed read).
    #[inline]
    pub fn rx_available(&self) -> u32 {
        self.rx.available()
    }

    /// Puts up to `max` frame addresses on the fill ring, asking `next` for each (it returns
    /// `None` to stop early); no more are asked for than there are free slots. Returns how many
    /// were put.
    #[inline]
    pub fn fill_push(&mut self, max: u32, mut next: impl FnMut() -> Option<u64>) -> u32 {
        let cap = self.fill.reserve(max);
        let mut n = 0;
        while n < cap {
            let Some(addr) = next() else { break };
            self.fill.write(n, addr);
            n += 1;
        }
        self.fill.submit(n);
        self.fill.cancel();
        n
    }

    /// Frames on the fill ring the kernel has not taken yet.
    #[inline]
    pub fn fill_pending(&self) -> u32 {
        self.fill.pending()
    }

    /// Whether the kernel asks for a system call to go on receiving (need_wakeup mode only).
    #[inline]
    pub fn fill_needs_wakeup(&self) -> bool {
        self.fill.needs_wakeup()
    }

    /// Takes up to `max` addresses of transmitted frames off the completion ring, calling `f`
    /// for each, and releases their slots. Returns how many.
    #[inline]
    pub fn complete_pop(&mut self, max: u32, mut f: impl FnMut(u64)) -> u32 {
        let n = self.completion.peek(max);
        for i in 0..n {
            f(self.completion.read(i));
        }
        self.completion.release(n);
        n
    }

    /// Completions waiting (an advisory, relaxed read).
    #[inline]
    pub fn complete_available(&self) -> u32 {
        self.completion.available()
    }

    /// Puts packets on the TX ring, using at most `max` descriptors: `next(free, packet)` is
    /// called with the slots still free and an empty `packet`, fills in that packet's
    /// descriptors (at most `free` of them) and returns `true`, or returns `false` to stop.
    /// Every descriptor but a packet's last goes with [`XDP_PKT_CONTD`] (which needs a socket
    /// bound with [`XDP_USE_SG`]). Returns how many descriptors were put, all published at once
    /// at the end. They go out after a kick ([`Xsk::kick_tx`]) when the kernel wants one.
    ///
    /// `free` is counted from the kernel's consumer index (read again when the cached one shows
    /// fewer than `max` slots), so a packet of `free` descriptors always fits.
    ///
    /// Panics if `next` returns `true` with an empty packet or more descriptors than `free`
    /// (a packet cut in two would be sent broken).
    #[inline]
    pub fn tx_push(&mut self, max: u32, mut next: impl FnMut(u32, &mut TxPacket) -> bool) -> u32 {
        let room = self.tx.reserve(max);
        let mut n = 0;
        let mut packet = TxPacket::default();
        while n < room {
            packet.clear();
            if !next(room - n, &mut packet) {
                break;
            }
            assert!(
                !packet.is_empty() && packet.len() as u32 <= room - n,
                "TX packet of {} descriptors for {} free slots",
                packet.len(),
                room - n
            );
            let last = packet.len() - 1;
            for (i, &(addr, len)) in packet.descs().iter().enumerate() {
                self.tx.write(
                    n,
                    XdpDesc {
                        addr,
                        len,
                        options: if i < last { XDP_PKT_CONTD } else { 0 },
                    },
                );
                n += 1;
            }
        }
        self.tx.submit(n);
        self.tx.cancel();
        n
    }

    /// Descriptors on the TX ring the kernel has not taken yet.
    #[inline]
    pub fn tx_pending(&self) -> u32 {
        self.tx.pending()
    }

    /// Whether the kernel asks for a system call to transmit (need_wakeup mode; always set in
    /// copy mode).
    #[inline]
    pub fn tx_needs_wakeup(&self) -> bool {
        self.tx.needs_wakeup()
    }

    /// Kicks transmission: `sendto(fd, NULL, 0, MSG_DONTWAIT)`. In copy mode one kick sends at
    /// most 32 frames and returns `EAGAIN` when more are left; `EBUSY` and `ENOBUFS` mean
    /// "later" too.
    #[inline]
    pub fn kick_tx(&self) -> io::Result<()> {
        // SAFETY: a zero-length send with null buffer and address reads no memory; the fd is
        // owned by self.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Kicks reception (or runs one busy poll): `recvfrom(fd, NULL, 0, MSG_DONTWAIT)`.
    #[inline]
    pub fn kick_rx(&self) -> io::Result<()> {
        // SAFETY: a zero-length receive with null buffer and address writes no memory; the fd
        // is owned by self.
        let rc = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until received frames are ready or `timeout` passes (`ppoll` for `POLLIN`).
    pub fn poll_readable(&self, timeout: Duration) -> io::Result<bool> {
        super::tap::poll_readable(self.as_fd(), timeout)
    }

    /// The kernel's counters for this socket.
    ///
    /// A kernel older than 5.9 knows only the first three counters (`struct
    /// xdp_statistics_v1`); the others are then 0.
    pub fn statistics(&self) -> io::Result<XskStatistics> {
        // SAFETY: xdp_statistics is a plain struct of u64s; all-zero is a valid value.
        let mut s: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        // SAFETY: xdp_statistics is plain u64s, the kernel's struct for this option.
        unsafe { get_xdp_option(self.as_fd(), libc::XDP_STATISTICS, &mut s) }?;
        Ok(XskStatistics {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        })
    }
}

impl AsRawFd for Xsk {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl std::fmt::Debug for Xsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xsk")
            .field("fd", &self.fd.as_raw_fd())
            .field("ifindex", &self.ifindex)
            .field("queue_id", &self.queue_id)
            .field("frame_len", &self.stride)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_interface_is_enodev() {
        let e = ifindex("ust-no-such-if").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "{e}");
        assert!(ifindex("a\0b").is_err());
        assert!(ifindex("lo").unwrap() > 0);
        assert!(hw_addr("ust-no-such-if").is_err());
        // Loopback is not Ethernet.
        assert!(hw_addr("lo").is_err());
    }

    /// Plain memory as a UMEM: an anonymous mapping, unmapped when the last clone is dropped.
    #[derive(Clone)]
    struct PlainUmem {
        map: Arc<memmap2::MmapRaw>,
        frame_len: usize,
    }

    impl PlainUmem {
        fn new(frames: usize, frame_len: usize) -> PlainUmem {
            let map = memmap2::MmapMut::map_anon(frames * frame_len).expect("anonymous mapping");
            PlainUmem {
                map: Arc::new(map.into()),
                frame_len,
            }
        }
    }

    // SAFETY: one anonymous mapping (page aligned, read-write) of the length given, unmapped
    // only when the last clone's Arc is dropped.
    unsafe impl UmemArea for PlainUmem {
        fn memory(&self) -> (*mut u8, usize) {
            (self.map.as_mut_ptr(), self.map.len())
        }
        fn frame_len(&self) -> usize {
            self.frame_len
        }
    }

    #[test]
    fn bad_frame_sizes_are_refused_before_any_syscall() {
        let umem = PlainUmem::new(4, 1024);
        let rings = XskRings {
            fill_len: 4,
            completion_len: 4,
            rx_len: 4,
            tx_len: 4,
        };
        let e = Xsk::new(&umem, 0, 1, 0, &rings).unwrap_err();
        assert_eq!(e.step, XskStep::UmemRegister);
        assert_eq!(e.source.kind(), io::ErrorKind::InvalidInput);
        let umem = PlainUmem::new(4, 2048);
        let bad = XskRings { rx_len: 3, ..rings };
        let e = Xsk::new(&umem, 0, 1, 0, &bad).unwrap_err();
        assert_eq!(e.step, XskStep::RxTxRings);
    }
}
