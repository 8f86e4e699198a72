//! How the EAL is started: [`EalConfig`] and the EAL arguments it turns into, and the choice
//! between hugepages and 4 KiB pages ([`Hugepages`], [`MemoryMode`]).

use std::path::{Path, PathBuf};

use super::error::EalError;

/// Whether the EAL runs on hugepages.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Hugepages {
    /// Hugepages when enough are free, else 4 KiB pages (`--no-huge`) with a warning.
    #[default]
    Auto,
    /// Hugepages or [`EalError::NoHugepages`].
    Require,
    /// 4 KiB pages (`--no-huge`) always.
    Off,
}

/// How the EAL is started. [`EalConfig::args`] turns it into EAL arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EalConfig {
    /// EAL cores: an `-l` list (`"0"`, `"0-1"`), or an `--lcores` map when it holds `@` or `(`.
    /// `None` (the default) makes lcore 0 float over every CPU the calling thread may use
    /// (`--lcores 0@(...)`), so the EAL does not pin the caller's thread to one CPU.
    pub cores: Option<String>,
    /// Memory for the EAL in MiB: preallocated (`-m`) and, on hugepages, also the most it may
    /// grow to (`--socket-limit`; DPDK's dynamic memory would otherwise take every free
    /// hugepage when a large pool is asked for). `None`: grow on demand with hugepages,
    /// 256 MiB with `--no-huge`.
    pub memory_mb: Option<usize>,
    /// Hugepage policy.
    pub hugepages: Hugepages,
    /// Virtual devices (`--vdev`), e.g. `net_memif0,role=server,socket=/tmp/x.sock`. When the
    /// EAL runs already, vdevs that are not there yet are hot-plugged.
    pub vdevs: Vec<String>,
    /// PCI devices to use (`-a 0000:03:00.0`). Empty (the default) means `--no-pci`.
    pub pci_allow: Vec<String>,
    /// `--file-prefix`; `None` means `ustack-<pid>`.
    pub file_prefix: Option<String>,
    /// `--log-level` (e.g. `"notice"`, `"pmd.net.memif:debug"`); `None` keeps DPDK's default.
    pub log_level: Option<String>,
    /// Further EAL arguments, passed as they are.
    pub extra_args: Vec<String>,
    /// Where free hugepages are counted (`hugepages-<size>kB/free_hugepages` below it).
    /// `/sys/kernel/mm/hugepages` normally; tests point it at a fake tree.
    pub hugepage_sysfs: PathBuf,
}

impl Default for EalConfig {
    fn default() -> EalConfig {
        EalConfig {
            cores: None,
            memory_mb: None,
            hugepages: Hugepages::Auto,
            vdevs: Vec::new(),
            pci_allow: Vec::new(),
            file_prefix: None,
            log_level: Some("notice".into()),
            extra_args: Vec::new(),
            hugepage_sysfs: PathBuf::from(HUGEPAGE_SYSFS),
        }
    }
}

/// The kernel's hugepage counters.
const HUGEPAGE_SYSFS: &str = "/sys/kernel/mm/hugepages";
/// Hugepage memory the EAL needs at least when no `-m` is given: the default mbuf pool
/// (8191 x 2.3 KiB) plus rings, queues and the EAL's own tables, with room to spare.
const HUGE_NEEDED_MB_DEFAULT: u64 = 64;
/// `-m` with `--no-huge` when none is given.
const NO_HUGE_MEMORY_MB_DEFAULT: usize = 256;

/// Which memory the EAL runs on, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemoryMode {
    /// Hugepages.
    Hugepages {
        /// Hugepage memory free when the EAL started, MiB.
        free_mb: u64,
    },
    /// 4 KiB pages (`--no-huge`): configured so.
    NoHugeConfigured,
    /// 4 KiB pages (`--no-huge`): not enough hugepages were free.
    NoHugeFallback {
        /// Free hugepage memory, MiB.
        free_mb: u64,
        /// What was needed, MiB.
        needed_mb: u64,
    },
}

impl MemoryMode {
    /// True when the EAL runs on hugepages.
    pub fn is_hugepages(&self) -> bool {
        matches!(self, MemoryMode::Hugepages { .. })
    }
}

impl EalConfig {
    /// Decides hugepages or `--no-huge` from the free hugepage count under
    /// [`EalConfig::hugepage_sysfs`].
    pub fn plan_memory(&self) -> Result<MemoryMode, EalError> {
        if self.hugepages == Hugepages::Off {
            return Ok(MemoryMode::NoHugeConfigured);
        }
        let free_mb = free_hugepage_mb(&self.hugepage_sysfs);
        let needed_mb = self.memory_mb.map_or(HUGE_NEEDED_MB_DEFAULT, |m| m as u64);
        match plan(self.hugepages, free_mb, needed_mb) {
            Some(mode) => Ok(mode),
            None => Err(EalError::NoHugepages { free_mb, needed_mb }),
        }
    }

    /// The EAL arguments (the program name first) for this configuration on `memory`.
    pub fn args(&self, memory: &MemoryMode) -> Result<Vec<String>, EalError> {
        let mut a = vec!["ustack".to_string()];
        match &self.cores {
            Some(c) if c.contains('@') || c.contains('(') => {
                a.extend(["--lcores".into(), c.clone()])
            }
            Some(c) => a.extend(["-l".into(), c.clone()]),
            None => a.extend([
                "--lcores".into(),
                format!("0@({})", cpus_allowed().unwrap_or_else(|| "0".into())),
            ]),
        }
        match memory {
            MemoryMode::Hugepages { .. } => {
                if let Some(m) = self.memory_mb {
                    a.extend([
                        "-m".into(),
                        m.to_string(),
                        "--socket-limit".into(),
                        m.to_string(),
                    ]);
                }
            }
            MemoryMode::NoHugeConfigured | MemoryMode::NoHugeFallback { .. } => {
                let m = self.memory_mb.unwrap_or(NO_HUGE_MEMORY_MB_DEFAULT);
                a.extend(["--no-huge".into(), "-m".into(), m.to_string()]);
            }
        }
        // No hugepage files and no runtime directory left behind. --in-memory cannot go with
        // --no-huge (which implies legacy memory): --no-shconf does the same there.
        if memory.is_hugepages() {
            a.push("--in-memory".into());
        } else {
            a.push("--no-shconf".into());
        }
        let prefix = self
            .file_prefix
            .clone()
            .unwrap_or_else(|| format!("ustack-{}", std::process::id()));
        a.extend(["--file-prefix".into(), prefix]);
        if self.pci_allow.is_empty() {
            a.push("--no-pci".into());
        }
        for pci in &self.pci_allow {
            a.extend(["-a".into(), pci.clone()]);
        }
        for vdev in &self.vdevs {
            a.extend(["--vdev".into(), vdev.clone()]);
        }
        a.push("--no-telemetry".into());
        if let Some(level) = &self.log_level {
            a.extend(["--log-level".into(), level.clone()]);
        }
        a.extend(self.extra_args.iter().cloned());
        for arg in &a {
            if arg.contains('\0') {
                return Err(EalError::BadArgument {
                    arg: arg.clone(),
                    reason: "contains a NUL byte",
                });
            }
        }
        Ok(a)
    }

    /// The settings that must match between two users of one process's EAL: everything but
    /// the vdevs, which can be hot-plugged later.
    pub(super) fn identity(&self) -> EalConfig {
        EalConfig {
            vdevs: Vec::new(),
            ..self.clone()
        }
    }
}

/// The decision of [`EalConfig::plan_memory`]; `None` means hugepages are required and short.
fn plan(policy: Hugepages, free_mb: u64, needed_mb: u64) -> Option<MemoryMode> {
    match policy {
        Hugepages::Off => Some(MemoryMode::NoHugeConfigured),
        _ if free_mb >= needed_mb => Some(MemoryMode::Hugepages { free_mb }),
        Hugepages::Require => None,
        Hugepages::Auto => Some(MemoryMode::NoHugeFallback { free_mb, needed_mb }),
    }
}

/// Free hugepage memory in MiB, all page sizes, read from `dir/hugepages-<N>kB/free_hugepages`
/// (0 when the directory is missing).
fn free_hugepage_mb(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut kib = 0u64;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(size_kb) = name
            .to_str()
            .and_then(|n| n.strip_prefix("hugepages-"))
            .and_then(|n| n.strip_suffix("kB"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let free = std::fs::read_to_string(e.path().join("free_hugepages"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        kib = kib.saturating_add(free.saturating_mul(size_kb));
    }
    kib / 1024
}

/// The CPUs the calling thread may run on, as the kernel lists them (`0-1`, `0,2-3`).
fn cpus_allowed() -> Option<String> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    (!list.is_empty()).then(|| list.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_plan() {
        assert_eq!(
            plan(Hugepages::Auto, 2048, 64),
            Some(MemoryMode::Hugepages { free_mb: 2048 })
        );
        assert_eq!(
            plan(Hugepages::Auto, 10, 64),
            Some(MemoryMode::NoHugeFallback {
                free_mb: 10,
                needed_mb: 64
            })
        );
        assert_eq!(plan(Hugepages::Require, 10, 64), None);
        assert_eq!(
            plan(Hugepages::Off, 4096, 64),
            Some(MemoryMode::NoHugeConfigured)
        );
    }

    #[test]
    fn hugepages_are_counted_from_sysfs() {
        let dir = std::env::temp_dir().join(format!("ustack-hp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("hugepages-2048kB")).unwrap();
        std::fs::create_dir_all(dir.join("hugepages-1048576kB")).unwrap();
        std::fs::create_dir_all(dir.join("unrelated")).unwrap();
        std::fs::write(dir.join("hugepages-2048kB/free_hugepages"), "10\n").unwrap();
        std::fs::write(dir.join("hugepages-1048576kB/free_hugepages"), "1\n").unwrap();
        assert_eq!(free_hugepage_mb(&dir), 20 + 1024);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(free_hugepage_mb(Path::new("/nonexistent/ustack")), 0);
    }

    #[test]
    fn eal_args() {
        let mut c = EalConfig {
            cores: Some("1".into()),
            file_prefix: Some("t".into()),
            vdevs: vec!["net_ring0".into()],
            ..EalConfig::default()
        };
        let a = c.args(&MemoryMode::Hugepages { free_mb: 100 }).unwrap();
        assert_eq!(
            a,
            [
                "ustack",
                "-l",
                "1",
                "--in-memory",
                "--file-prefix",
                "t",
                "--no-pci",
                "--vdev",
                "net_ring0",
                "--no-telemetry",
                "--log-level",
                "notice"
            ]
        );
        c.pci_allow = vec!["0000:03:00.0".into()];
        c.cores = None;
        let a = c
            .args(&MemoryMode::NoHugeFallback {
                free_mb: 0,
                needed_mb: 64,
            })
            .unwrap();
        assert!(!a.contains(&"--no-pci".to_string()), "{a:?}");
        assert!(a.contains(&"--no-shconf".to_string()), "{a:?}");
        assert!(!a.contains(&"--in-memory".to_string()), "{a:?}");
        assert!(a.windows(2).any(|w| w == ["-a", "0000:03:00.0"]), "{a:?}");
        assert!(
            a.windows(3).any(|w| w == ["--no-huge", "-m", "256"]),
            "{a:?}"
        );
        assert!(a[1] == "--lcores" && a[2].starts_with("0@("), "{a:?}");
        c.memory_mb = Some(128);
        let a = c.args(&MemoryMode::Hugepages { free_mb: 1000 }).unwrap();
        assert!(
            a.windows(4)
                .any(|w| w == ["-m", "128", "--socket-limit", "128"]),
            "{a:?}"
        );
        c.extra_args = vec!["bad\0arg".into()];
        assert!(matches!(
            c.args(&MemoryMode::NoHugeConfigured),
            Err(EalError::BadArgument { .. })
        ));
    }

    #[test]
    fn identity_ignores_vdevs() {
        let a = EalConfig {
            vdevs: vec!["net_ring0".into()],
            ..EalConfig::default()
        };
        let b = EalConfig::default();
        assert_eq!(a.identity(), b.identity());
        let c = EalConfig {
            cores: Some("1".into()),
            ..EalConfig::default()
        };
        assert_ne!(a.identity(), c.identity());
    }
}
