//! DPDK through the real ethdev API on `net_ring` (a port whose TX queue feeds its own RX
//! queue), and the errors of bad configurations: no such port, a vdev that fails to probe, the
//! EAL already initialised with other arguments, a mempool too small or too large.
//!
//! One EAL per process (DPDK initialises once): every test here uses [`eal`], whichever runs
//! first starts it (with a vdev that cannot probe, to show the EAL starts anyway). The no-
//! hugepages path has its own binary (tests/dpdk_nohuge.rs). Needs root for hugepages; under
//! `scripts/test.sh` as root a skip is a failure.

mod common;

#[cfg(not(feature = "dpdk"))]
#[test]
fn dpdk_ring_needs_the_dpdk_feature() {
    common::skip("built without the `dpdk` feature (cargo test --features dpdk)");
}

#[cfg(feature = "dpdk")]
mod dpdk {
    use std::sync::{Mutex, MutexGuard};

    use super::common::skip;
    use ustack::dev::dpdk::{
        probe, DpdkConfig, DpdkDevice, DpdkError, Eal, EalConfig, EalError, PortSelect,
    };
    use ustack::{Batch, Instant, PacketDevice};

    /// The vdev given at EAL start that cannot probe (memif has no role "wizard").
    const BAD_VDEV: &str = "net_memif9,role=wizard";

    fn eal() -> EalConfig {
        EalConfig {
            // At most 256 MiB: the too-large pool below fails inside the EAL's own memory
            // instead of taking every free hugepage of the machine for a moment.
            memory_mb: Some(256),
            vdevs: vec!["net_ring0".into(), BAD_VDEV.into()],
            ..EalConfig::default()
        }
    }

    /// Tests run one at a time: the pool that exhausts the EAL's memory would starve the
    /// others for a moment.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn config(vdev: &str) -> DpdkConfig {
        let mut eal = eal();
        eal.vdevs.push(vdev.into());
        DpdkConfig {
            eal,
            port: Some(PortSelect::Name(
                vdev.split(',').next().unwrap_or(vdev).into(),
            )),
            mempool_mbufs: 4095,
            rx_ring_len: 512,
            tx_ring_len: 512,
            ..DpdkConfig::default()
        }
    }

    fn root() -> bool {
        // The effective uid, from /proc.
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|v| v.split_whitespace().nth(1)?.parse::<u32>().ok())
            });
        if uid == Some(0) {
            return true;
        }
        skip("DPDK's EAL needs root (hugepages, /dev access)");
        false
    }

    /// A frame of `len` bytes whose content depends on `seq`.
    fn fill(frame: &mut [u8], seq: u32) {
        frame[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
        frame[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental ethertype
        frame[14..18].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in frame[18..].iter_mut().enumerate() {
            *b = (i as u32).wrapping_mul(31).wrapping_add(seq) as u8;
        }
    }

    fn check(frame: &[u8], seq: u32) -> bool {
        let mut want = vec![0u8; frame.len()];
        fill(&mut want, seq);
        want == frame
    }

    #[test]
    fn ring_loop_frames_go_out_and_come_back() {
        let _serial = serial();
        if !root() {
            return;
        }
        let mut dev = DpdkDevice::open(&config("net_ring0")).expect("open net_ring0");
        assert_eq!(dev.info().driver, "net_ring");
        assert!(dev.link_up(), "net_ring's link is up once started");
        assert!(
            !dev.tx_checksum_offload(),
            "net_ring offers no checksum offload"
        );
        let caps = dev.caps();
        let mut out = Batch::with_capacity(64);
        let mut back = Batch::with_capacity(64);
        let (mut sent, mut received, mut bytes) = (0u32, 0u32, 0u64);
        let total = 2000u32;
        let now = Instant::ZERO;
        let start = std::time::Instant::now();
        while received < total {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "{received} of {total} frames back"
            );
            while sent < total && !out.is_full() {
                let len = [60, 64, 200, 1000, caps.frame_len_max()][sent as usize % 5];
                let mut m = dev.tx_alloc().expect("mbuf");
                assert!(m.set_len(len));
                fill(m.data_mut(), sent);
                bytes += len as u64;
                out.push(m).unwrap();
                sent += 1;
            }
            dev.tx_burst(now, &mut out);
            dev.rx_burst(now, &mut back);
            while let Some(m) = back.pop() {
                assert!(
                    check(m.data(), received),
                    "frame {received} came back different"
                );
                received += 1;
            }
        }
        let s = dev.stats();
        assert_eq!((s.tx_packets, s.rx_packets), (2000, 2000), "{s:?}");
        assert_eq!((s.tx_bytes, s.rx_bytes), (bytes, bytes), "{s:?}");
        assert_eq!(s.rx_dropped + s.rx_errors + s.tx_errors, 0, "{s:?}");
        let p = dev.port_stats();
        assert_eq!((p.opackets, p.ipackets), (2000, 2000), "{p:?}");
        // Every mbuf is back in the pool once the frames are dropped.
        assert!(out.is_empty() && back.is_empty());
        let (_, in_use) = dev.pool_usage();
        assert_eq!(in_use, 0, "mbufs leaked");
        println!("net_ring loop: {s:?}; port {p:?}");
    }

    #[test]
    fn oversized_frames_are_refused_and_counted() {
        let _serial = serial();
        if !root() {
            return;
        }
        let mut dev = DpdkDevice::open(&config("net_ring1")).expect("open net_ring1");
        let max = dev.caps().frame_len_max();
        let mut out = Batch::with_capacity(4);
        let mut m = dev.tx_alloc().unwrap();
        assert!(m.set_len(max + 1), "an mbuf holds more than a frame");
        out.push(m).unwrap();
        let mut ok = dev.tx_alloc().unwrap();
        assert!(ok.set_len(100));
        fill(ok.data_mut(), 7);
        out.push(ok).unwrap();
        assert_eq!(dev.tx_burst(Instant::ZERO, &mut out), 2);
        let mut back = Batch::with_capacity(4);
        let start = std::time::Instant::now();
        while back.is_empty() && start.elapsed() < std::time::Duration::from_secs(5) {
            dev.rx_burst(Instant::ZERO, &mut back);
        }
        assert_eq!(back.len(), 1);
        assert!(check(back.pop().unwrap().data(), 7));
        let s = dev.stats();
        assert_eq!((s.tx_errors, s.tx_packets), (1, 1), "{s:?}");
    }

    #[test]
    fn no_port_found_is_a_clear_error() {
        let _serial = serial();
        if !root() {
            return;
        }
        let cfg = DpdkConfig {
            port: Some(PortSelect::Name("net_nothing0".into())),
            eal: eal(),
            ..DpdkConfig::default()
        };
        let e = DpdkDevice::open(&cfg).unwrap_err();
        println!("no port: {e}");
        assert!(matches!(e, DpdkError::NoPort { ref name, .. } if name == "net_nothing0"));
        let text = e.to_string();
        assert!(
            text.contains("no DPDK port named \"net_nothing0\""),
            "{text}"
        );
        assert!(
            text.contains("net_ring0"),
            "lists the ports present: {text}"
        );
        let by_id = DpdkConfig {
            port: Some(PortSelect::Id(31)),
            eal: eal(),
            ..DpdkConfig::default()
        };
        assert!(matches!(
            DpdkDevice::open(&by_id),
            Err(DpdkError::NoPortId { id: 31, .. })
        ));
    }

    #[test]
    fn vdev_that_fails_to_probe_is_a_clear_error() {
        let _serial = serial();
        if !root() {
            return;
        }
        // Given at EAL start: the EAL starts anyway (it has, or this would fail with Eal(..)),
        // and opening the port says what happened.
        let cfg = DpdkConfig {
            eal: eal(),
            port: Some(PortSelect::Name("net_memif9".into())),
            ..DpdkConfig::default()
        };
        let e = DpdkDevice::open(&cfg).unwrap_err();
        println!("bad vdev at start: {e}");
        assert!(matches!(e, DpdkError::VdevProbeFailed { .. }), "{e:?}");
        assert!(e.to_string().contains("failed to probe"), "{e}");
        assert!(Eal::get()
            .unwrap()
            .failed_vdevs()
            .contains(&BAD_VDEV.to_string()));
        // Hot-plugged into the running EAL: an unknown driver, and bad arguments.
        for spec in ["net_nosuchdriver0", "net_ring7,nodeaction=bogus"] {
            let e = DpdkDevice::open(&config(spec)).unwrap_err();
            println!("bad vdev {spec}: {e}");
            assert!(
                matches!(e, DpdkError::VdevProbeFailed { spec: ref s, .. } if s == spec),
                "{e:?}"
            );
        }
        // probe() (for backend auto-selection) says the same, and finds good ports.
        assert!(matches!(
            probe(&config("net_nosuchdriver1")),
            Err(DpdkError::VdevProbeFailed { .. })
        ));
        let info = probe(&config("net_ring0")).expect("probe net_ring0");
        assert_eq!(info.name, "net_ring0");
    }

    #[test]
    fn eal_already_initialised_with_other_args_is_a_clear_error() {
        let _serial = serial();
        if !root() {
            return;
        }
        let running = Eal::init(&eal()).expect("EAL");
        // Same settings: the running EAL.
        assert!(std::ptr::eq(running, Eal::init(&eal()).unwrap()));
        let other = EalConfig {
            cores: Some("1".into()),
            ..eal()
        };
        let e = Eal::init(&other).unwrap_err();
        println!("second init: {e}");
        assert!(matches!(e, EalError::AlreadyInitialised { .. }), "{e:?}");
        assert!(e.to_string().contains("already initialised"), "{e}");
        let mut cfg = config("net_ring5");
        cfg.eal.memory_mb = Some(512);
        let e = DpdkDevice::open(&cfg).unwrap_err();
        assert!(
            matches!(e, DpdkError::Eal(EalError::AlreadyInitialised { .. })),
            "{e:?}"
        );
    }

    #[test]
    fn a_port_is_driven_by_one_device_and_reopens_after_drop() {
        let _serial = serial();
        if !root() {
            return;
        }
        let dev = DpdkDevice::open(&config("net_ring2")).expect("open");
        let e = DpdkDevice::open(&config("net_ring2")).unwrap_err();
        assert!(matches!(e, DpdkError::PortBusy { .. }), "{e:?}");
        drop(dev);
        // The vdev was removed on close and is probed afresh.
        let again = DpdkDevice::open(&config("net_ring2")).expect("reopen");
        assert!(again.link_up());
    }

    #[test]
    fn mempool_limits_are_clear_errors_and_back_pressure() {
        let _serial = serial();
        if !root() {
            return;
        }
        // Smaller than the rings need.
        let mut cfg = config("net_ring3");
        cfg.mempool_mbufs = 600;
        let e = DpdkDevice::open(&cfg).unwrap_err();
        println!("small pool: {e}");
        assert!(matches!(e, DpdkError::MempoolExhausted { .. }), "{e:?}");
        // Larger than the EAL's memory (-m 256).
        cfg.mempool_mbufs = 1 << 20;
        let e = DpdkDevice::open(&cfg).unwrap_err();
        println!("huge pool: {e}");
        assert!(matches!(e, DpdkError::MempoolCreate { .. }), "{e:?}");
        assert!(e.to_string().contains("memory"), "{e}");
        // Running dry at run time is back-pressure: tx_alloc says None and counts it.
        cfg.mempool_mbufs = 4095;
        let mut dev = DpdkDevice::open(&cfg).expect("open");
        let mut held = Vec::new();
        while let Some(m) = dev.tx_alloc() {
            held.push(m);
            assert!(held.len() <= 4095, "more mbufs than the pool has");
        }
        assert!(held.len() > 2000, "{} mbufs", held.len());
        assert_eq!(dev.tx_alloc_failures(), 1);
        drop(held);
        assert!(dev.tx_alloc().is_some());
    }

    #[test]
    fn mbufs_outlive_their_device() {
        let _serial = serial();
        if !root() {
            return;
        }
        // A stack drops its device before the frames it still queues: the pool must stay
        // until they are back.
        let mut dev = DpdkDevice::open(&config("net_ring4")).expect("open");
        let mut kept = Vec::new();
        for i in 0..100u8 {
            let mut m = dev.tx_alloc().expect("mbuf");
            assert!(m.set_len(64));
            m.data_mut().fill(i);
            kept.push(m);
        }
        drop(dev);
        for (i, m) in kept.iter_mut().enumerate() {
            assert!(m.data().iter().all(|&b| b == i as u8), "mbuf {i} intact");
            m.data_mut().fill(0xee);
        }
        drop(kept);
        // The parked pool is freed on the next pool creation; the port opens again.
        let again = DpdkDevice::open(&config("net_ring4")).expect("reopen");
        assert_eq!(again.pool_usage().1, 0);
    }
}
