//! The EAL: started once per process ([`Eal::init`]), and virtual devices hot-plugged into it
//! and removed ([`vdev_attach`], [`vdev_detach`]).

use std::ffi::{c_char, c_int, CString};
use std::sync::OnceLock;

use super::args::{EalConfig, MemoryMode};
use super::error::{rte_errno, strerror, CallError, EalError};
use super::ffi;

/// The process's running EAL. Obtained from [`Eal::init`]; every port and pool call takes one
/// as proof that DPDK is initialised.
#[derive(Debug)]
pub struct Eal {
    args: Vec<String>,
    identity: EalConfig,
    memory: MemoryMode,
    failed_vdevs: Vec<String>,
}

/// A failed `rte_eal_init`, remembered because it cannot be retried.
#[derive(Clone, Debug)]
struct InitFailure {
    args: Vec<String>,
    errno: i32,
    reason: String,
}

static EAL: OnceLock<Result<Eal, InitFailure>> = OnceLock::new();

impl Eal {
    /// Starts the EAL with `config`, or returns the running one when its settings match
    /// (vdevs aside). See the module docs for the arguments always added.
    pub fn init(config: &EalConfig) -> Result<&'static Eal, EalError> {
        if let Some(done) = EAL.get() {
            return Eal::check(done, config, false);
        }
        let memory = config.plan_memory()?;
        let args = config.args(&memory)?;
        let mut ran_here = false;
        let done = EAL.get_or_init(|| {
            ran_here = true;
            eal_init(args, config.identity(), memory, &config.vdevs)
        });
        Eal::check(done, config, ran_here)
    }

    /// The running EAL, if [`Eal::init`] succeeded in this process.
    pub fn get() -> Option<&'static Eal> {
        EAL.get().and_then(|r| r.as_ref().ok())
    }

    fn check(
        done: &'static Result<Eal, InitFailure>,
        config: &EalConfig,
        ran_here: bool,
    ) -> Result<&'static Eal, EalError> {
        match done {
            Ok(eal) if eal.identity == config.identity() => Ok(eal),
            Ok(eal) => Err(EalError::AlreadyInitialised {
                running: eal.args.clone(),
                requested: config
                    .plan_memory()
                    .and_then(|m| config.args(&m))
                    .unwrap_or_else(|_| vec!["(invalid)".into()]),
            }),
            Err(f) if ran_here => Err(EalError::InitFailed {
                args: f.args.clone(),
                errno: f.errno,
                reason: f.reason.clone(),
            }),
            Err(f) => Err(EalError::FailedEarlier {
                args: f.args.clone(),
                reason: f.reason.clone(),
            }),
        }
    }

    /// The arguments the EAL was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Hugepages or not, and why.
    pub fn memory(&self) -> &MemoryMode {
        &self.memory
    }

    /// Vdevs given at start-up that did not turn into a port (EAL goes on without them).
    pub fn failed_vdevs(&self) -> &[String] {
        &self.failed_vdevs
    }
}

/// Runs `rte_eal_init` (once: called from the `OnceLock` initialiser only).
fn eal_init(
    args: Vec<String>,
    identity: EalConfig,
    memory: MemoryMode,
    vdevs: &[String],
) -> Result<Eal, InitFailure> {
    if let Err(e) = check_abi() {
        return Err(InitFailure {
            args,
            errno: 0,
            reason: e.to_string(),
        });
    }
    match &memory {
        MemoryMode::NoHugeFallback { free_mb, needed_mb } => tracing::warn!(
            free_mb,
            needed_mb,
            "not enough free hugepages for DPDK: EAL runs on 4 KiB pages (--no-huge); reserve \
             hugepages with scripts/hugepages.sh for full speed"
        ),
        MemoryMode::NoHugeConfigured => tracing::info!("DPDK EAL on 4 KiB pages (--no-huge)"),
        MemoryMode::Hugepages { free_mb } => {
            tracing::debug!(free_mb, "DPDK EAL on hugepages")
        }
    }
    // The EAL may keep pointers into argv (and reorders it): the strings live for the process.
    let owned: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_str()).expect("checked for NUL in EalConfig::args"))
        .collect();
    let leaked: &'static mut [*mut c_char] = Box::leak(
        owned
            .into_iter()
            .map(CString::into_raw)
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    tracing::info!(args = ?args, "starting DPDK EAL");
    // SAFETY: argv holds argc valid NUL-terminated strings that are never freed (leaked
    // above), so EAL may keep or permute them; rte_eal_init runs at most once per process
    // because this function is only called from EAL's OnceLock initialiser.
    let rc = unsafe { ffi::rte_eal_init(leaked.len() as c_int, leaked.as_mut_ptr()) };
    if rc < 0 {
        let errno = rte_errno();
        return Err(InitFailure {
            args,
            errno,
            reason: strerror(errno),
        });
    }
    let failed_vdevs: Vec<String> = vdevs
        .iter()
        .filter(|spec| port_id_by_name(vdev_name(spec)).is_none())
        .cloned()
        .collect();
    for spec in &failed_vdevs {
        tracing::warn!(vdev = %spec, "DPDK vdev did not probe (EAL carries on without it)");
    }
    Ok(Eal {
        args,
        identity,
        memory,
        failed_vdevs,
    })
}

/// Compares the sizes of the structures passed by pointer with what the C compiler sees.
fn check_abi() -> Result<(), EalError> {
    let mut c = ffi::ustack_abi_sizes {
        eth_conf: 0,
        eth_dev_info: 0,
        eth_stats: 0,
        eth_link: 0,
    };
    // SAFETY: the shim writes the four fields of the struct it is given, a valid local.
    unsafe { ffi::ustack_abi_sizes(&mut c) };
    let checks = [
        (
            "rte_eth_conf",
            c.eth_conf,
            std::mem::size_of::<ffi::rte_eth_conf>(),
        ),
        (
            "rte_eth_dev_info",
            c.eth_dev_info,
            std::mem::size_of::<ffi::rte_eth_dev_info>(),
        ),
        (
            "rte_eth_stats",
            c.eth_stats,
            std::mem::size_of::<ffi::rte_eth_stats>(),
        ),
        (
            "rte_eth_link",
            c.eth_link,
            std::mem::size_of::<ffi::rte_eth_link>(),
        ),
    ];
    for (what, c_size, rust_size) in checks {
        if c_size as usize != rust_size {
            return Err(EalError::AbiMismatch {
                what,
                c_size: c_size as usize,
                rust_size,
            });
        }
    }
    Ok(())
}

/// The ethdev name a vdev spec creates: the part before the first comma.
pub fn vdev_name(spec: &str) -> &str {
    spec.split(',').next().unwrap_or(spec).trim()
}

/// Hot-plugs a virtual device (`net_memif0,role=client,...`) into the running EAL.
pub fn vdev_attach(_eal: &Eal, spec: &str) -> Result<(), CallError> {
    let (name, args) = match spec.split_once(',') {
        Some((n, a)) => (n.trim(), a),
        None => (spec.trim(), ""),
    };
    let bus = c"vdev";
    let (Ok(cname), Ok(cargs)) = (CString::new(name), CString::new(args)) else {
        return Err(CallError {
            op: "rte_eal_hotplug_add",
            errno: libc::EINVAL,
            reason: "vdev spec contains a NUL byte".into(),
        });
    };
    // SAFETY: the EAL runs (an &Eal exists); the three strings are valid and NUL-terminated
    // for the call, and DPDK copies what it keeps.
    let rc = unsafe { ffi::rte_eal_hotplug_add(bus.as_ptr(), cname.as_ptr(), cargs.as_ptr()) };
    if rc == -1 {
        // Most drivers' probe functions return a bare -1, which the EAL passes on.
        return Err(CallError {
            op: "rte_eal_hotplug_add",
            errno: 0,
            reason: "the driver refused the device (no such driver, or bad arguments)".into(),
        });
    }
    if rc == -libc::EFAULT {
        // What rte_dev_probe says when the name matches no bus or driver.
        return Err(CallError {
            op: "rte_eal_hotplug_add",
            errno: libc::EFAULT,
            reason: format!("no driver for a device named {name:?}"),
        });
    }
    if rc < 0 {
        return Err(CallError::from_ret("rte_eal_hotplug_add", rc));
    }
    Ok(())
}

/// Removes a virtual device by name (its port must be closed).
pub fn vdev_detach(_eal: &Eal, name: &str) -> Result<(), CallError> {
    let Ok(cname) = CString::new(name) else {
        return Err(CallError {
            op: "rte_eal_hotplug_remove",
            errno: libc::EINVAL,
            reason: "vdev name contains a NUL byte".into(),
        });
    };
    // SAFETY: the EAL runs; both strings are valid and NUL-terminated for the call.
    let rc = unsafe { ffi::rte_eal_hotplug_remove(c"vdev".as_ptr(), cname.as_ptr()) };
    if rc < 0 {
        return Err(CallError::from_ret("rte_eal_hotplug_remove", rc));
    }
    Ok(())
}

pub(super) fn port_id_by_name(name: &str) -> Option<u16> {
    let cname = CString::new(name).ok()?;
    let mut id = 0u16;
    // SAFETY: only called once the EAL runs (from eal_init after rte_eal_init succeeded, or
    // with an &Eal); the name is NUL-terminated and id a valid out-pointer for the call.
    let rc = unsafe { ffi::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut id) };
    (rc == 0).then_some(id)
}

extern "C" {
    // rte_lcore.h (stable since DPDK 22.11; not in the generated bindings).
    fn rte_thread_register() -> c_int;
}

/// Registers the calling thread with the EAL as a non-EAL lcore (`rte_thread_register`), so
/// mempool caches, which are per lcore, serve it instead of every allocation and free going to
/// the pool's shared ring. Returns the thread's lcore id; a thread already registered (or an
/// EAL thread) keeps its own.
pub fn register_thread(_eal: &Eal) -> Result<u32, CallError> {
    // SAFETY: plain query of thread-local state; the EAL runs.
    let id = unsafe { ffi::ustack_lcore_id() };
    if id != ffi::USTACK_LCORE_ID_ANY {
        return Ok(id);
    }
    // SAFETY: the EAL runs (we hold a reference to it); the call registers the calling thread.
    let rc = unsafe { rte_thread_register() };
    if rc < 0 {
        return Err(CallError::new("rte_thread_register", rte_errno()));
    }
    // SAFETY: as above.
    Ok(unsafe { ffi::ustack_lcore_id() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vdev_names() {
        assert_eq!(vdev_name("net_memif0,role=server,socket=/x"), "net_memif0");
        assert_eq!(vdev_name("net_ring0"), "net_ring0");
    }

    #[test]
    fn bindings_match_the_headers() {
        check_abi().expect("bindings and C agree");
    }
}
