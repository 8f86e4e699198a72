//! [`XdpConfig`] and the modes it chooses between.

use std::net::Ipv4Addr;

use crate::dev::ETH_HEADER_LEN;
use crate::mem::PageSize;
use crate::sys::xdp as sys;

use super::XdpError;

/// Largest queue id accepted (the XSKMAP has `queue_id + 1` slots).
const QUEUE_ID_MAX: u32 = 1023;
/// Largest ring accepted.
const RING_LEN_MAX: u32 = 1 << 18;

/// Where the XDP program runs.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// Native if the driver has it, else generic (logged).
    #[default]
    Auto,
    /// Native (driver) XDP only.
    Native,
    /// Generic (socket-buffer) XDP only: works on any interface, slower.
    Generic,
}

/// Whether the socket shares the UMEM with the NIC (zero-copy) or the kernel copies.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum ZeroCopy {
    /// Zero-copy if the driver has it, else copy (logged).
    #[default]
    Auto,
    /// Zero-copy only.
    On,
    /// Copy mode only.
    Off,
}

/// How the program was attached (the outcome of [`XdpMode`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// On socket buffers (`XDP_FLAGS_SKB_MODE`).
    Generic,
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        })
    }
}

/// How the socket was bound (the outcome of [`ZeroCopy`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BindMode {
    /// `XDP_ZEROCOPY`.
    ZeroCopy,
    /// `XDP_COPY`.
    Copy,
}

impl std::fmt::Display for BindMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BindMode::ZeroCopy => "zero-copy",
            BindMode::Copy => "copy",
        })
    }
}

/// Busy polling of the device queue from the socket's system calls.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BusyPoll {
    /// `SO_BUSY_POLL`: how long one system call may busy-poll, microseconds.
    pub timeout_us: u32,
    /// `SO_BUSY_POLL_BUDGET`: most frames one busy poll processes.
    pub budget: u32,
}

/// How to open an [`XdpDevice`](super::XdpDevice).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpConfig {
    /// Interface name, in the calling thread's network namespace.
    pub ifname: String,
    /// Queue (channel) to bind. Default 0.
    pub queue_id: u32,
    /// Native or generic XDP. Default [`XdpMode::Auto`].
    pub mode: XdpMode,
    /// Zero-copy or copy. Default [`ZeroCopy::Auto`].
    pub zero_copy: ZeroCopy,
    /// UMEM frame size: 2048 or 4096 bytes. Default 2048 (holds a 1500-byte MTU).
    pub frame_len: usize,
    /// UMEM frames (the pool's size; rounded up to fill whole pages). Default 16384 (32 MiB).
    /// Must be at least `fill_ring_len + tx_ring_len + 2 * burst_max`.
    pub frames: usize,
    /// Fill ring entries (power of two). Default 8192.
    pub fill_ring_len: u32,
    /// Completion ring entries (power of two, at least `tx_ring_len`). Default 4096.
    pub completion_ring_len: u32,
    /// RX ring entries (power of two). Default 4096.
    pub rx_ring_len: u32,
    /// TX ring entries (power of two). Default 2048.
    pub tx_ring_len: u32,
    /// Extra UMEM headroom in front of each received frame, bytes, beyond the kernel's
    /// 256-byte `XDP_PACKET_HEADROOM`. Default 0.
    pub headroom: usize,
    /// Send only IPv4 packets to this address and ARP for it to ustack, the rest to the kernel;
    /// `None` sends everything of the queue to ustack. Default `None`; set it to the stack's
    /// address.
    pub filter_ipv4: Option<Ipv4Addr>,
    /// Use the kernel's need_wakeup flags to skip system calls it does not need. Default on.
    pub need_wakeup: bool,
    /// Busy-poll the device queue from this socket. Default off.
    pub busy_poll: Option<BusyPoll>,
    /// Most frames moved by one `rx_burst` or `tx_burst`. Default 64.
    pub burst_max: usize,
    /// Page size wanted for the UMEM. Default 2 MiB (falls back to 4 KiB with a warning).
    pub page_size: PageSize,
}

impl XdpConfig {
    /// The defaults for interface `ifname`.
    pub fn new(ifname: impl Into<String>) -> XdpConfig {
        XdpConfig {
            ifname: ifname.into(),
            queue_id: 0,
            mode: XdpMode::Auto,
            zero_copy: ZeroCopy::Auto,
            frame_len: 2048,
            frames: 16384,
            fill_ring_len: 8192,
            completion_ring_len: 4096,
            rx_ring_len: 4096,
            tx_ring_len: 2048,
            headroom: 0,
            filter_ipv4: None,
            need_wakeup: true,
            busy_poll: None,
            burst_max: 64,
            page_size: PageSize::Huge2M,
        }
    }

    /// Longest Ethernet frame a UMEM frame holds after the headroom.
    pub fn frame_capacity(&self) -> usize {
        self.frame_len
            .saturating_sub(sys::XDP_PACKET_HEADROOM + self.headroom)
    }

    /// Frames kept back from the fill ring for transmitting.
    pub(super) fn tx_reserve(&self) -> usize {
        self.tx_ring_len as usize + 2 * self.burst_max
    }

    /// Checks every value; the first one out of range is the error.
    pub fn validate(&self) -> Result<(), XdpError> {
        let bad = |field, value: u64, reason| {
            Err(XdpError::InvalidConfig {
                field,
                value,
                reason,
            })
        };
        if self.frame_len != 2048 && self.frame_len != 4096 {
            return bad(
                "frame_len",
                self.frame_len as u64,
                "must be 2048 or 4096 (the kernel's aligned mode needs a power of two; 8192 is refused)",
            );
        }
        if self.frame_capacity() < ETH_HEADER_LEN + 576 {
            return bad(
                "headroom",
                self.headroom as u64,
                "leaves no room for a 576-byte IPv4 packet in a frame",
            );
        }
        if self.queue_id > QUEUE_ID_MAX {
            return bad("queue_id", u64::from(self.queue_id), "must be at most 1023");
        }
        for (field, len) in [
            ("fill_ring_len", self.fill_ring_len),
            ("completion_ring_len", self.completion_ring_len),
            ("rx_ring_len", self.rx_ring_len),
            ("tx_ring_len", self.tx_ring_len),
        ] {
            if !len.is_power_of_two() || !(64..=RING_LEN_MAX).contains(&len) {
                return bad(
                    field,
                    u64::from(len),
                    "must be a power of two from 64 to 262144",
                );
            }
        }
        if self.completion_ring_len < self.tx_ring_len {
            return bad(
                "completion_ring_len",
                u64::from(self.completion_ring_len),
                "must be at least tx_ring_len, or sent frames cannot all be handed back",
            );
        }
        if self.burst_max == 0 || self.burst_max > 1024 {
            return bad("burst_max", self.burst_max as u64, "must be 1 to 1024");
        }
        if self.frames < self.fill_ring_len as usize + self.tx_reserve() {
            return bad(
                "frames",
                self.frames as u64,
                "must be at least fill_ring_len + tx_ring_len + 2 * burst_max",
            );
        }
        if self.frames > u32::MAX as usize / 2 {
            return bad("frames", self.frames as u64, "too many");
        }
        if let Some(bp) = self.busy_poll {
            if bp.budget == 0 || bp.timeout_us == 0 {
                return bad(
                    "busy_poll",
                    u64::from(bp.budget.min(bp.timeout_us)),
                    "budget and timeout_us must be at least 1",
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_fit_a_1500_mtu() {
        let c = XdpConfig::new("eth0");
        c.validate().unwrap();
        assert!(c.frame_capacity() >= 1500 + ETH_HEADER_LEN);
        assert_eq!(c.frame_capacity(), 2048 - 256);
        assert!(c.fill_ring_len >= 8192, "PLATFORM.md: fill ring 8192+");
    }

    #[test]
    fn bad_values_name_the_field() {
        let field = |c: XdpConfig| match c.validate() {
            Err(XdpError::InvalidConfig { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let base = XdpConfig::new("eth0");
        assert_eq!(
            field(XdpConfig {
                frame_len: 8192,
                ..base.clone()
            }),
            "frame_len"
        );
        assert_eq!(
            field(XdpConfig {
                rx_ring_len: 1000,
                ..base.clone()
            }),
            "rx_ring_len"
        );
        assert_eq!(
            field(XdpConfig {
                frames: 4096,
                ..base.clone()
            }),
            "frames"
        );
        assert_eq!(
            field(XdpConfig {
                completion_ring_len: 1024,
                ..base.clone()
            }),
            "completion_ring_len"
        );
        assert_eq!(
            field(XdpConfig {
                headroom: 1300,
                ..base.clone()
            }),
            "headroom"
        );
        assert_eq!(
            field(XdpConfig {
                burst_max: 0,
                ..base.clone()
            }),
            "burst_max"
        );
        assert_eq!(
            field(XdpConfig {
                queue_id: 5000,
                ..base
            }),
            "queue_id"
        );
    }
}
