//! The statistics: every run indexed, medians and ranges over the repetitions, and ratios
//! taken pair by pair per repetition.

use std::collections::BTreeSet;

use crate::input::Run;

/// Values over the repetitions: median and range.
#[derive(Clone, Debug)]
pub struct Spread {
    pub values: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `value(rep)` over the repetitions that have one.
    pub fn over(reps: &BTreeSet<u32>, value: impl FnMut(u32) -> Option<f64>) -> Option<Spread> {
        let mut value = value;
        Spread::of(reps.iter().filter_map(|&rep| value(rep)).collect())
    }

    pub fn of(mut values: Vec<f64>) -> Option<Spread> {
        values.retain(|v| v.is_finite());
        if values.is_empty() {
            return None;
        }
        let mut s = values.clone();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Spread {
            values,
            median,
            min: s[0],
            max: s[n - 1],
        })
    }
}

/// The paths in report order: (name, what it is, its kernel baseline).
pub const PATHS: [(&str, &str, Option<&str>); 5] = [
    (
        "memif",
        "ustack at both ends, native memif (shared memory, two processes)",
        Some("kernel-lo"),
    ),
    (
        "dpdk-memif",
        "ustack at both ends on DPDK's net_memif PMD (two processes, two EALs)",
        Some("kernel-lo"),
    ),
    (
        "af-xdp-veth",
        "ustack at both ends on AF_XDP (native XDP, copy mode) across a veth pair between two network namespaces",
        Some("kernel-veth"),
    ),
    (
        "kernel-lo",
        "kernel TCP on 127.0.0.1 (same chunk protocol and store, std::net, TCP_NODELAY)",
        None,
    ),
    (
        "kernel-veth",
        "kernel TCP across the same veth pair (offloads on)",
        None,
    ),
];

pub fn baseline_of(path: &str) -> Option<&'static str> {
    PATHS.iter().find(|p| p.0 == path).and_then(|p| p.2)
}

pub const SCALE_BASE: &str = "scale-idle0";

/// Every run, indexed.
pub struct Data {
    pub runs: Vec<Run>,
    /// Workloads in the order they first appear.
    pub workloads: Vec<String>,
    /// Paths present, in report order.
    pub paths: Vec<String>,
    pub reps: BTreeSet<u32>,
}

impl Data {
    pub fn new(runs: Vec<Run>) -> Data {
        let mut workloads: Vec<String> = Vec::new();
        for r in &runs {
            if !workloads.contains(&r.workload) {
                workloads.push(r.workload.clone());
            }
        }
        let mut paths: Vec<String> = PATHS
            .iter()
            .map(|p| p.0.to_string())
            .filter(|p| runs.iter().any(|r| &r.path == p))
            .collect();
        for r in &runs {
            if !paths.contains(&r.path) {
                paths.push(r.path.clone());
            }
        }
        let reps = runs.iter().map(|r| r.rep).collect();
        Data {
            runs,
            workloads,
            paths,
            reps,
        }
    }

    /// The successful run of `path` x `workload` in repetition `rep`.
    pub fn get(&self, path: &str, workload: &str, rep: u32) -> Option<&Run> {
        self.runs
            .iter()
            .find(|r| r.ok && r.rep == rep && r.path == path && r.workload == workload)
    }

    /// Any run of `workload` (for its description).
    pub fn any(&self, workload: &str) -> Option<&Run> {
        self.runs.iter().find(|r| r.workload == workload)
    }

    pub fn has(&self, workload: &str) -> bool {
        self.workloads.iter().any(|w| w == workload)
    }

    /// `metric` of `path` x `workload` over the repetitions.
    pub fn spread(
        &self,
        path: &str,
        workload: &str,
        metric: fn(&Run) -> Option<f64>,
    ) -> Option<Spread> {
        Spread::over(&self.reps, |rep| {
            self.get(path, workload, rep).and_then(metric)
        })
    }

    /// `metric(a) / metric(b)` per repetition, where both ran.
    fn paired(
        &self,
        a: (&str, &str),
        b: (&str, &str),
        metric: fn(&Run) -> Option<f64>,
    ) -> Option<Spread> {
        Spread::over(&self.reps, |rep| {
            let x = self.get(a.0, a.1, rep).and_then(metric)?;
            let y = self.get(b.0, b.1, rep).and_then(metric)?;
            (y > 0.0).then(|| x / y)
        })
    }

    /// `metric` of `path` against the same workload on its kernel baseline, pair by pair.
    pub fn vs_kernel(
        &self,
        path: &str,
        workload: &str,
        metric: fn(&Run) -> Option<f64>,
    ) -> Option<Spread> {
        let base = baseline_of(path)?;
        self.paired((path, workload), (base, workload), metric)
    }

    /// ops/s of `workload` (with idle connections) over ops/s of the run without, pair by pair.
    pub fn scaling(&self, path: &str, workload: &str) -> Option<Spread> {
        self.paired((path, workload), (path, SCALE_BASE), m_ops)
    }

    /// Server memory per idle connection, bytes: the growth of the server's peak resident set
    /// from the run without idle connections to `workload`, divided by its idle connections.
    pub fn bytes_per_conn(&self, path: &str, workload: &str) -> Option<Spread> {
        Spread::over(&self.reps, |rep| {
            let r = self.get(path, workload, rep)?;
            let base = self.get(path, SCALE_BASE, rep)?;
            let delta = m_mem_mib(r)? - m_mem_mib(base)?;
            (r.idle > 0).then(|| delta * 1048576.0 / f64::from(r.idle))
        })
    }

    pub fn failed(&self) -> Vec<&Run> {
        self.runs.iter().filter(|r| !r.ok).collect()
    }
}

pub fn m_ops(r: &Run) -> Option<f64> {
    r.ops_s
}
pub fn m_mbs(r: &Run) -> Option<f64> {
    r.mb_s
}
pub fn m_p50(r: &Run) -> Option<f64> {
    r.p50_us
}
pub fn m_p99(r: &Run) -> Option<f64> {
    r.p99_us
}
pub fn m_p999(r: &Run) -> Option<f64> {
    r.p999_us
}
pub fn m_client_cpu_gb(r: &Run) -> Option<f64> {
    let gb = r.total_bytes? / 1e9;
    let cpu = r.client_cpu_s?;
    (gb > 0.0).then(|| cpu / gb)
}
pub fn m_server_cpu_gb(r: &Run) -> Option<f64> {
    let gb = r.total_bytes? / 1e9;
    let cpu = r.server_cpu_s?;
    (gb > 0.0).then(|| cpu / gb)
}
/// The server's peak memory: resident set plus hugepages, MiB.
pub fn m_mem_mib(r: &Run) -> Option<f64> {
    Some((r.server_rss_max_kb? + r.server_hugetlb_max_kb.unwrap_or(0.0)) / 1024.0)
}
pub fn m_huge_mib(r: &Run) -> Option<f64> {
    r.server_hugetlb_max_kb.map(|kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::read_results;

    const HEADER: &str = "rep\tpath\tworkload\top\tsize_bytes\tconnections\tdepth\tidle\tstatus\tops_s\tmb_s\tp50_us\tp99_us\tp999_us\terrors\ttotal_bytes\tclient_cpu_s\tserver_cpu_s\tserver_rss_max_kb\tserver_hugetlb_max_kb\tother_cpu_s\tsteal_s";

    fn line(rep: u32, path: &str, workload: &str, ops: f64, p99: f64) -> String {
        format!(
            "{rep}\t{path}\t{workload}\tread\t4096\t1\t1\t0\tok\t{ops}\t{:.1}\t5.0\t{p99}\t{p99}\t0\t2000000000\t1.5\t2.5\t1024\t2048\t0.25\t0.0",
            ops * 4096.0 / 1e6
        )
    }

    fn data(lines: &[String]) -> Data {
        let dir = std::env::temp_dir().join(format!("benchreport-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("r{}.tsv", lines.len()));
        std::fs::write(&file, format!("{HEADER}\n{}\n", lines.join("\n"))).unwrap();
        let runs = read_results(&file).unwrap();
        std::fs::remove_file(&file).unwrap();
        Data::new(runs)
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Spread::of(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of(vec![4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Spread::of(vec![]).is_none());
        assert!(Spread::of(vec![f64::NAN]).is_none());
    }

    #[test]
    fn ratios_pair_runs_of_the_same_repetition() {
        // Sorted independently the medians would give 200/100 = 2; pair by pair the ratios
        // are 10, 0.5 and 1.5, median 1.5.
        let d = data(&[
            line(1, "memif", "read-4k-c1-d1", 1000.0, 10.0),
            line(1, "kernel-lo", "read-4k-c1-d1", 100.0, 40.0),
            line(2, "memif", "read-4k-c1-d1", 100.0, 10.0),
            line(2, "kernel-lo", "read-4k-c1-d1", 200.0, 40.0),
            line(3, "memif", "read-4k-c1-d1", 200.0, 10.0),
            line(3, "kernel-lo", "read-4k-c1-d1", 133.333333, 40.0),
        ]);
        let r = d.vs_kernel("memif", "read-4k-c1-d1", m_ops).unwrap();
        assert!((r.median - 1.5).abs() < 1e-3, "{r:?}");
        assert!(
            (r.min - 0.5).abs() < 1e-9 && (r.max - 10.0).abs() < 1e-9,
            "{r:?}"
        );
        let p99 = d.vs_kernel("memif", "read-4k-c1-d1", m_p99).unwrap();
        assert_eq!(p99.median, 0.25);
        // Kernel paths have no baseline; af-xdp-veth has one but it did not run.
        assert!(d.vs_kernel("kernel-lo", "read-4k-c1-d1", m_ops).is_none());
        assert!(d.vs_kernel("af-xdp-veth", "read-4k-c1-d1", m_ops).is_none());
    }

    #[test]
    fn a_failed_run_is_left_out_and_its_pair_too() {
        let mut failed = line(2, "kernel-lo", "read-4k-c1-d1", 0.0, 0.0);
        failed = failed.replace("\tok\t", "\tfail\t");
        let d = data(&[
            line(1, "memif", "read-4k-c1-d1", 600.0, 10.0),
            line(1, "kernel-lo", "read-4k-c1-d1", 100.0, 40.0),
            line(2, "memif", "read-4k-c1-d1", 100.0, 10.0),
            failed,
        ]);
        let r = d.vs_kernel("memif", "read-4k-c1-d1", m_ops).unwrap();
        assert_eq!(r.values, vec![6.0]);
        assert_eq!(d.failed().len(), 1);
        assert_eq!(
            d.spread("kernel-lo", "read-4k-c1-d1", m_ops)
                .unwrap()
                .values
                .len(),
            1
        );
    }

    #[test]
    fn cpu_and_memory_per_unit() {
        let d = data(&[line(1, "memif", "scale-idle0", 100.0, 1.0)]);
        let r = d.get("memif", "scale-idle0", 1).unwrap();
        // 1.5 client CPU seconds over 2 GB; 1 MiB resident + 2 MiB hugepages.
        assert_eq!(m_client_cpu_gb(r), Some(0.75));
        assert_eq!(m_server_cpu_gb(r), Some(1.25));
        assert_eq!(m_mem_mib(r), Some(3.0));
        assert_eq!((r.other_cpu_s, r.steal_s), (Some(0.25), Some(0.0)));
    }
}
