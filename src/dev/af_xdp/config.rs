//! [`XdpConfig`] and the modes it chooses between.

use std::net::Ipv4Addr;

use crate::dev::ETH_HEADER_LEN;
use crate::mem::PageSize;
use crate::sys::xdp as sys;

use super::mode::{XdpMode, ZeroCopy};
use super::XdpError;

/// Largest queue id accepted (the XSKMAP has `queue_id + 1` slots).
pub(super) const QUEUE_ID_MAX: u32 = 1023;
/// Largest ring accepted.
const RING_LEN_MAX: u32 = 1 << 18;

/// Preferred busy polling of the device queue from the socket's system calls
/// (`SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL`, `SO_BUSY_POLL_BUDGET`).
///
/// With it, the application drives the queue's NAPI context itself: an `rx_burst` that finds
/// the RX ring empty makes one `recvfrom(MSG_DONTWAIT)`, which runs the NAPI poll (the driver's
/// receive and XDP program) on the calling thread, and every TX burst is kicked with `sendto`;
/// with `SO_PREFER_BUSY_POLL` the kernel leaves the queue to those calls instead of its softirq
/// while they keep coming. It takes effect only where the socket learns the queue's NAPI
/// context ([`XdpStats::napi_id`](super::XdpStats::napi_id)): native XDP on a driver that
/// registers it, not generic XDP, and not veth on Linux 6.18 (measured: the id stays 0, veth
/// registers its XDP queue before the kernel numbers the NAPI context), where the kicks are
/// plain system calls. On a real NIC set the interface's `napi_defer_hard_irqs` and
/// `gro_flush_timeout` too (see the module docs).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum BusyPoll {
    /// The wakeup path only (need_wakeup flags, `poll()`); no socket options set.
    #[default]
    Off,
    /// Busy polling where the kernel grants the options; where it refuses them (`EPERM`
    /// without `CAP_NET_ADMIN`, `ENOPROTOOPT` without `CONFIG_NET_RX_BUSY_POLL`, `EINVAL`), the
    /// wakeup path, with one warning and the reason in [`XdpModeInfo::busy_poll`](super::XdpModeInfo::busy_poll).
    Auto,
    /// Busy polling or an error from `open`.
    On,
}

impl std::fmt::Display for BusyPoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BusyPoll::Off => "off",
            BusyPoll::Auto => "auto",
            BusyPoll::On => "on",
        })
    }
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
    /// UMEM frame size: 2048 or 4096 bytes. Default 2048 (holds a 1500-byte MTU). Frames
    /// larger than one UMEM frame (after its headroom) need [`XdpConfig::multi_buffer`].
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
    /// Preferred busy polling. Default [`BusyPoll::Off`].
    pub busy_poll: BusyPoll,
    /// `SO_BUSY_POLL`: how long one system call may busy-poll, microseconds (1 or more).
    /// Default 20.
    pub busy_poll_timeout_us: u32,
    /// `SO_BUSY_POLL_BUDGET`: most packets one busy poll processes (1 or more). Default 64.
    pub busy_poll_budget: u32,
    /// When the interface's MTU does not fit one UMEM frame, carry each frame in several (AF_XDP
    /// multi-buffer: the program loaded with `BPF_F_XDP_HAS_FRAGS`, the socket bound with
    /// `XDP_USE_SG`), copied through a staging buffer of [`XdpConfig::jumbo_frames`]; `open`
    /// fails with advice where the kernel refuses. Off: such an MTU is refused. Default on.
    pub multi_buffer: bool,
    /// Staging buffers (each the interface's MTU + 14 bytes) for frames larger than a UMEM
    /// frame, used only with multi-buffer: received chains are copied into one, and in that
    /// mode every frame the stack sends is written into one and copied to UMEM frames. Default
    /// 1024.
    pub jumbo_frames: usize,
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
            busy_poll: BusyPoll::Off,
            busy_poll_timeout_us: 20,
            busy_poll_budget: 64,
            multi_buffer: true,
            jumbo_frames: 1024,
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
        if self.busy_poll != BusyPoll::Off {
            if self.busy_poll_timeout_us == 0 || self.busy_poll_timeout_us > 1_000_000 {
                return bad(
                    "busy_poll_timeout_us",
                    u64::from(self.busy_poll_timeout_us),
                    "must be 1 to 1000000 microseconds",
                );
            }
            if self.busy_poll_budget == 0 || self.busy_poll_budget > 65535 {
                return bad(
                    "busy_poll_budget",
                    u64::from(self.busy_poll_budget),
                    "must be 1 to 65535",
                );
            }
        }
        if self.multi_buffer
            && (self.jumbo_frames < 2 * self.burst_max || self.jumbo_frames > 1 << 20)
        {
            return bad(
                "jumbo_frames",
                self.jumbo_frames as u64,
                "must be from 2 * burst_max to 1048576",
            );
        }
        Ok(())
    }

    /// How frames of an interface with IP MTU `mtu` travel through UMEM frames of this
    /// configuration: in one each, or (multi-buffer) in up to `frags` each. `Err` is the
    /// reason the MTU cannot work (for [`XdpError::MtuTooLarge`]).
    pub(super) fn frame_plan(&self, mtu: usize) -> Result<FramePlan, &'static str> {
        let frame_len_max = mtu + ETH_HEADER_LEN;
        let capacity = self.frame_capacity();
        if frame_len_max <= capacity {
            return Ok(FramePlan {
                multi_buffer: false,
                frags: 1,
            });
        }
        if !self.multi_buffer {
            return Err("multi-buffer is off (XdpConfig::multi_buffer)");
        }
        let frags = frame_len_max.div_ceil(capacity);
        if frags > sys::TX_FRAGS_MAX {
            return Err("a frame would take more UMEM frames than AF_XDP multi-buffer allows (18)");
        }
        Ok(FramePlan {
            multi_buffer: true,
            frags: frags as u32,
        })
    }
}

/// How frames fit UMEM frames ([`XdpConfig::frame_plan`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) struct FramePlan {
    /// Frames larger than one UMEM frame: multi-buffer on.
    pub multi_buffer: bool,
    /// UMEM frames the largest frame takes on the RX ring (1 without multi-buffer).
    pub frags: u32,
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
                busy_poll: BusyPoll::Auto,
                busy_poll_budget: 0,
                ..base.clone()
            }),
            "busy_poll_budget"
        );
        assert_eq!(
            field(XdpConfig {
                busy_poll: BusyPoll::On,
                busy_poll_timeout_us: 0,
                ..base.clone()
            }),
            "busy_poll_timeout_us"
        );
        // Off ignores the busy-poll values.
        XdpConfig {
            busy_poll_budget: 0,
            ..base.clone()
        }
        .validate()
        .unwrap();
        assert_eq!(
            field(XdpConfig {
                jumbo_frames: 10,
                ..base.clone()
            }),
            "jumbo_frames"
        );
        assert_eq!(
            field(XdpConfig {
                queue_id: 5000,
                ..base
            }),
            "queue_id"
        );
    }

    #[test]
    fn frame_plans() {
        let k4 = XdpConfig {
            frame_len: 4096,
            ..XdpConfig::new("eth0")
        };
        let one = FramePlan {
            multi_buffer: false,
            frags: 1,
        };
        // 4096 - 256 = 3840 bytes: MTU 3826 fits one frame, 3827 takes two.
        assert_eq!(k4.frame_plan(1500), Ok(one));
        assert_eq!(k4.frame_plan(3826), Ok(one));
        assert_eq!(
            k4.frame_plan(3827),
            Ok(FramePlan {
                multi_buffer: true,
                frags: 2
            })
        );
        // 9014 bytes in 3840-byte pieces: 3; in 1792-byte pieces (2048 frames): 6.
        assert_eq!(k4.frame_plan(9000).map(|p| p.frags), Ok(3));
        let k2 = XdpConfig::new("eth0");
        assert_eq!(k2.frame_plan(9000).map(|p| p.frags), Ok(6));
        assert_eq!(k2.frame_plan(1778).map(|p| p.frags), Ok(1));
        // 18 pieces at most: 18 * 1792 = 32256 bytes of frame.
        assert_eq!(k2.frame_plan(32256 - 14).map(|p| p.frags), Ok(18));
        assert!(k2.frame_plan(32256 - 13).unwrap_err().contains("18"));
        let off = XdpConfig {
            multi_buffer: false,
            ..k4
        };
        assert!(off.frame_plan(9000).unwrap_err().contains("multi_buffer"));
        assert_eq!(off.frame_plan(3826), Ok(one));
    }
}
