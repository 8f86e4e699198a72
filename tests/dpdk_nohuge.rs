//! DPDK without hugepages: with [`Hugepages::Require`] a clear error before DPDK is touched,
//! with [`Hugepages::Auto`] the `--no-huge` fallback (logged), and the port works on 4 KiB
//! pages. Its own binary, because the EAL starts once per process and this one runs without
//! hugepages.
//!
//! The machine's hugepages are left alone (other tests use them): the free count is read from
//! a fake sysfs tree that says none are free ([`EalConfig::hugepage_sysfs`]).

mod common;

#[cfg(not(feature = "dpdk"))]
#[test]
fn dpdk_nohuge_needs_the_dpdk_feature() {
    common::skip("built without the `dpdk` feature (cargo test --features dpdk)");
}

#[cfg(feature = "dpdk")]
#[test]
fn no_hugepages_is_an_error_or_a_logged_fallback() {
    use ustack::dev::dpdk::{
        DpdkConfig, DpdkDevice, DpdkError, Eal, EalConfig, EalError, Hugepages, MemoryMode,
    };
    use ustack::{Batch, Instant, PacketDevice};

    let uid_root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1)?.parse::<u32>().ok())
        })
        == Some(0);
    if !uid_root {
        common::skip("DPDK's EAL needs root");
        return;
    }
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();

    // A sysfs tree with 2 MiB pages, none free.
    let fake = std::env::temp_dir().join(format!("ustack-nohuge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&fake);
    std::fs::create_dir_all(fake.join("hugepages-2048kB")).unwrap();
    std::fs::write(fake.join("hugepages-2048kB/free_hugepages"), "0\n").unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(fake.clone());

    let eal = |hugepages| EalConfig {
        hugepages,
        hugepage_sysfs: fake.clone(),
        memory_mb: Some(128),
        vdevs: vec!["net_ring0".into()],
        ..EalConfig::default()
    };

    // Required and missing: a clear error, and DPDK is not started (so it can start below).
    let e = Eal::init(&eal(Hugepages::Require)).unwrap_err();
    println!("required: {e}");
    assert_eq!(
        e,
        EalError::NoHugepages {
            free_mb: 0,
            needed_mb: 128
        }
    );
    let text = e.to_string();
    assert!(text.contains("no hugepages"), "{text}");
    assert!(
        text.contains("nr_hugepages"),
        "says how to reserve them: {text}"
    );
    let cfg = DpdkConfig {
        eal: eal(Hugepages::Require),
        ..DpdkConfig::default()
    };
    assert!(matches!(
        DpdkDevice::open(&cfg),
        Err(DpdkError::Eal(EalError::NoHugepages { .. }))
    ));
    assert!(Eal::get().is_none(), "the EAL was not started");

    // Auto: falls back to --no-huge, says so, and works.
    let cfg = DpdkConfig {
        eal: eal(Hugepages::Auto),
        mempool_mbufs: 4095,
        rx_ring_len: 512,
        tx_ring_len: 512,
        ..DpdkConfig::default()
    };
    let mut dev = DpdkDevice::open(&cfg).expect("net_ring0 on 4 KiB pages");
    let running = Eal::get().expect("EAL running");
    assert_eq!(
        running.memory(),
        &MemoryMode::NoHugeFallback {
            free_mb: 0,
            needed_mb: 128
        }
    );
    assert_eq!(dev.memory_mode(), Some(running.memory()));
    assert!(
        running
            .args()
            .windows(3)
            .any(|w| w == ["--no-huge", "-m", "128"]),
        "{:?}",
        running.args()
    );
    let mut out = Batch::with_capacity(32);
    for i in 0..32u8 {
        let mut m = dev.tx_alloc().expect("mbuf");
        assert!(m.set_len(60 + usize::from(i)));
        m.data_mut().fill(i);
        out.push(m).unwrap();
    }
    assert_eq!(dev.tx_burst(Instant::ZERO, &mut out), 32);
    let mut back = Batch::with_capacity(32);
    let start = std::time::Instant::now();
    while back.len() < 32 && start.elapsed() < std::time::Duration::from_secs(10) {
        dev.rx_burst(Instant::ZERO, &mut back);
    }
    for i in 0..32u8 {
        let m = back.pop().expect("frame back");
        assert_eq!(m.data().len(), 60 + usize::from(i));
        assert!(m.data().iter().all(|&b| b == i));
    }
    println!("--no-huge fallback: EAL {:?}", running.args());
}
