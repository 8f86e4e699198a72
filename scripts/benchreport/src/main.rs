//! Turns the raw results of `scripts/compare.sh` into the benchmark report: docs/BENCHMARKS.md
//! (method, machine, settings, tables, the issue-7 targets with met / not met) and
//! docs/benchmarks.svg (ops/s relative to the kernel baseline of the same path, and connection
//! scaling).
//!
//! ```text
//! benchreport --results target/compare/results.tsv --meta target/compare/meta.tsv \
//!     --markdown docs/BENCHMARKS.md --svg docs/benchmarks.svg
//! ```
//!
//! With `--lossy` (compare.sh's `lossy.tsv`) the report also has the lossy-path section
//! (issue 11, `lossy.rs`); when the results hold no bench runs (only the lossy
//! path ran), only that section of the existing report is replaced, and no plot is drawn.
//!
//! Medians and min-max are over the repetitions. A ratio against the kernel (memif and
//! dpdk-memif against kernel-lo, af-xdp-veth against kernel-veth) is computed pair by pair, one
//! per repetition (the ustack run and the kernel run of the same repetition), and the report
//! gives the median of those ratios and their range.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

mod lossy;

#[derive(Parser, Debug)]
#[command(
    about = "Writes docs/BENCHMARKS.md and docs/benchmarks.svg from scripts/compare.sh results"
)]
struct Args {
    /// Raw results (one line per run), as scripts/compare.sh writes them.
    #[arg(long, default_value = "target/compare/results.tsv")]
    results: PathBuf,
    /// The run's record of machine and settings (`key<TAB>value` lines).
    #[arg(long, default_value = "target/compare/meta.tsv")]
    meta: PathBuf,
    /// The Markdown report to write.
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    markdown: PathBuf,
    /// The plot to write.
    #[arg(long, default_value = "docs/benchmarks.svg")]
    svg: PathBuf,
    /// The TrueType font the plot's text is measured with (package fonts-dejavu-core).
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
    /// A Markdown file appended to the report as its closing notes (analysis, profiles).
    #[arg(long)]
    notes: Option<PathBuf>,
    /// The lossy path's results (compare.sh --paths lossy writes lossy.tsv).
    #[arg(long)]
    lossy: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchreport: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let lossy = match &args.lossy {
        Some(p) => Some(lossy::LossyData::new(lossy::read(p)?)).filter(|d| !d.is_empty()),
        None => None,
    };
    let runs = if lossy.is_none() || args.results.exists() {
        read_results(&args.results)?
    } else {
        Vec::new()
    };
    let meta = read_meta(&args.meta)?;
    if runs.is_empty() {
        let Some(l) = &lossy else {
            return Err(format!("{}: no runs in it", args.results.display()));
        };
        // Only the lossy path ran: replace its section, keep the rest of the report.
        let doc = match std::fs::read_to_string(&args.markdown) {
            Ok(doc) => doc,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                "# Benchmarks: ustack against kernel TCP\n".to_string()
            }
            Err(e) => return Err(format!("{}: {e}", args.markdown.display())),
        };
        let md = lossy::splice(&doc, &lossy::section(l, &meta));
        write_file(&args.markdown, md.as_bytes())?;
        println!(
            "benchreport: updated the lossy-path section of {} ({} transfers)",
            args.markdown.display(),
            l.len()
        );
        return Ok(());
    }
    let data = Data::new(runs);
    let notes = match &args.notes {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    let svg_name = args
        .svg
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "benchmarks.svg".into());
    let md = markdown(&data, &meta, &svg_name, notes.as_deref(), lossy.as_ref());
    write_file(&args.markdown, md.as_bytes())?;
    register_font(&args.font)?;
    draw_svg(&args.svg, &data)?;
    println!(
        "benchreport: wrote {} and {} ({} runs, {} failed)",
        args.markdown.display(),
        args.svg.display(),
        data.runs.len(),
        data.runs.iter().filter(|r| !r.ok).count()
    );
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::write(path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))
}

// --- input ----------------------------------------------------------------------------------

/// One chunkctl bench run (one line of results.tsv).
#[derive(Clone, Debug)]
struct Run {
    rep: u32,
    path: String,
    workload: String,
    op: String,
    size_bytes: u64,
    connections: u32,
    depth: u32,
    idle: u32,
    ok: bool,
    ops_s: Option<f64>,
    mb_s: Option<f64>,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    p999_us: Option<f64>,
    total_bytes: Option<f64>,
    client_cpu_s: Option<f64>,
    server_cpu_s: Option<f64>,
    server_rss_max_kb: Option<f64>,
    /// Hugepage memory mapped (not in VmRSS).
    server_hugetlb_max_kb: Option<f64>,
    /// CPU seconds the rest of the machine used during the run.
    other_cpu_s: Option<f64>,
    /// The hypervisor's steal time during the run, seconds.
    steal_s: Option<f64>,
}

fn read_results(path: &Path) -> Result<Vec<Run>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "{}: {e} (run scripts/compare.sh first, or pass --results)",
            path.display()
        )
    })?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| format!("{}: empty", path.display()))?
        .split('\t')
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| format!("{}: no column {name:?}", path.display()))
    };
    let c = [
        "rep",
        "path",
        "workload",
        "op",
        "size_bytes",
        "connections",
        "depth",
        "idle",
        "status",
        "ops_s",
        "mb_s",
        "p50_us",
        "p99_us",
        "p999_us",
        "total_bytes",
        "client_cpu_s",
        "server_cpu_s",
        "server_rss_max_kb",
    ]
    .map(col);
    let mut idx = [0usize; 18];
    for (i, r) in c.into_iter().enumerate() {
        idx[i] = r?;
    }
    // Optional columns (results written before they were recorded lack them).
    let opt_col = |name: &str| header.iter().position(|h| *h == name);
    let (hugetlb_col, other_col, steal_col) = (
        opt_col("server_hugetlb_max_kb"),
        opt_col("other_cpu_s"),
        opt_col("steal_s"),
    );
    let mut runs = Vec::new();
    for (no, line) in lines.enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        let at = |i: usize| f.get(idx[i]).copied().unwrap_or("NA");
        let num = |i: usize| at(i).parse::<f64>().ok().filter(|v| v.is_finite());
        let int = |i: usize, what: &str| {
            at(i)
                .parse::<u64>()
                .map_err(|_| format!("{} line {}: bad {what} {:?}", path.display(), no + 2, at(i)))
        };
        let ok = at(8) == "ok";
        let opt = |col: Option<usize>| {
            col.and_then(|i| f.get(i))
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| ok && v.is_finite())
        };
        runs.push(Run {
            rep: int(0, "rep")? as u32,
            path: at(1).to_string(),
            workload: at(2).to_string(),
            op: at(3).to_string(),
            // A failed run may carry the size as written on the command line (4KiB).
            size_bytes: int(4, "size")
                .or_else(|_| parse_size(at(4)).ok_or(()))
                .unwrap_or(0),
            connections: int(5, "connections")? as u32,
            depth: int(6, "depth")? as u32,
            idle: int(7, "idle")? as u32,
            ok,
            ops_s: num(9).filter(|_| ok),
            mb_s: num(10).filter(|_| ok),
            p50_us: num(11).filter(|_| ok),
            p99_us: num(12).filter(|_| ok),
            p999_us: num(13).filter(|_| ok),
            total_bytes: num(14).filter(|_| ok),
            client_cpu_s: num(15).filter(|_| ok),
            server_cpu_s: num(16).filter(|_| ok),
            server_rss_max_kb: num(17).filter(|v| ok && *v > 0.0),
            server_hugetlb_max_kb: opt(hugetlb_col),
            other_cpu_s: opt(other_col),
            steal_s: opt(steal_col),
        });
    }
    Ok(runs)
}

fn parse_size(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mul = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        _ => return None,
    };
    Some(n * mul)
}

/// The run's record: `key<TAB>value` lines; a later line wins.
type Meta = BTreeMap<String, String>;

fn read_meta(path: &Path) -> Result<Meta, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

// --- statistics -----------------------------------------------------------------------------

/// Values over the repetitions: median and range.
#[derive(Clone, Debug)]
struct Spread {
    values: Vec<f64>,
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    /// `value(rep)` over the repetitions that have one.
    fn over(reps: &BTreeSet<u32>, value: impl FnMut(u32) -> Option<f64>) -> Option<Spread> {
        let mut value = value;
        Spread::of(reps.iter().filter_map(|&rep| value(rep)).collect())
    }

    fn of(mut values: Vec<f64>) -> Option<Spread> {
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
const PATHS: [(&str, &str, Option<&str>); 5] = [
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

fn baseline_of(path: &str) -> Option<&'static str> {
    PATHS.iter().find(|p| p.0 == path).and_then(|p| p.2)
}

const SCALE_BASE: &str = "scale-idle0";

/// Every run, indexed.
struct Data {
    runs: Vec<Run>,
    /// Workloads in the order they first appear.
    workloads: Vec<String>,
    /// Paths present, in report order.
    paths: Vec<String>,
    reps: BTreeSet<u32>,
}

impl Data {
    fn new(runs: Vec<Run>) -> Data {
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
    fn get(&self, path: &str, workload: &str, rep: u32) -> Option<&Run> {
        self.runs
            .iter()
            .find(|r| r.ok && r.rep == rep && r.path == path && r.workload == workload)
    }

    /// Any run of `workload` (for its description).
    fn any(&self, workload: &str) -> Option<&Run> {
        self.runs.iter().find(|r| r.workload == workload)
    }

    fn has(&self, workload: &str) -> bool {
        self.workloads.iter().any(|w| w == workload)
    }

    /// `metric` of `path` x `workload` over the repetitions.
    fn spread(
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
    fn vs_kernel(
        &self,
        path: &str,
        workload: &str,
        metric: fn(&Run) -> Option<f64>,
    ) -> Option<Spread> {
        let base = baseline_of(path)?;
        self.paired((path, workload), (base, workload), metric)
    }

    /// ops/s of `workload` (with idle connections) over ops/s of the run without, pair by pair.
    fn scaling(&self, path: &str, workload: &str) -> Option<Spread> {
        self.paired((path, workload), (path, SCALE_BASE), m_ops)
    }

    /// Server memory per idle connection, bytes: the growth of the server's peak resident set
    /// from the run without idle connections to `workload`, divided by its idle connections.
    fn bytes_per_conn(&self, path: &str, workload: &str) -> Option<Spread> {
        Spread::over(&self.reps, |rep| {
            let r = self.get(path, workload, rep)?;
            let base = self.get(path, SCALE_BASE, rep)?;
            let delta = m_mem_mib(r)? - m_mem_mib(base)?;
            (r.idle > 0).then(|| delta * 1048576.0 / f64::from(r.idle))
        })
    }

    fn failed(&self) -> Vec<&Run> {
        self.runs.iter().filter(|r| !r.ok).collect()
    }
}

fn m_ops(r: &Run) -> Option<f64> {
    r.ops_s
}
fn m_mbs(r: &Run) -> Option<f64> {
    r.mb_s
}
fn m_p50(r: &Run) -> Option<f64> {
    r.p50_us
}
fn m_p99(r: &Run) -> Option<f64> {
    r.p99_us
}
fn m_p999(r: &Run) -> Option<f64> {
    r.p999_us
}
fn m_client_cpu_gb(r: &Run) -> Option<f64> {
    let gb = r.total_bytes? / 1e9;
    let cpu = r.client_cpu_s?;
    (gb > 0.0).then(|| cpu / gb)
}
fn m_server_cpu_gb(r: &Run) -> Option<f64> {
    let gb = r.total_bytes? / 1e9;
    let cpu = r.server_cpu_s?;
    (gb > 0.0).then(|| cpu / gb)
}
/// The server's peak memory: resident set plus hugepages, MiB.
fn m_mem_mib(r: &Run) -> Option<f64> {
    Some((r.server_rss_max_kb? + r.server_hugetlb_max_kb.unwrap_or(0.0)) / 1024.0)
}
fn m_huge_mib(r: &Run) -> Option<f64> {
    r.server_hugetlb_max_kb.map(|kb| kb / 1024.0)
}

// --- formatting -----------------------------------------------------------------------------

/// 1234567 -> "1,234,567".
fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A number with sensible precision for its size.
fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        thousands(v)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// "median (min–max)", or just the value for one repetition.
fn spread_text(s: &Option<Spread>, f: fn(f64) -> String) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.values.len() == 1 || f(s.min) == f(s.max) => f(s.median),
        Some(s) => format!("{} ({}–{})", f(s.median), f(s.min), f(s.max)),
    }
}

fn ratio_fmt(v: f64) -> String {
    format!("{v:.2}x")
}

fn pct_fmt(v: f64) -> String {
    format!("{:.0}%", v * 100.0)
}

fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

/// "READ 4 KiB, 32 conn x depth 4, +1,024 idle".
fn workload_text(d: &Data, w: &str) -> String {
    match d.any(w) {
        Some(r) => {
            let mut s = format!(
                "{} {}, {} conn x depth {}",
                r.op.to_uppercase(),
                size_text(r.size_bytes),
                r.connections,
                r.depth
            );
            if r.workload.starts_with("scale-") {
                let _ = write!(s, ", +{} idle", thousands(f64::from(r.idle)));
            }
            if r.workload.starts_with("dir-") {
                s.push_str(", DirStore");
            }
            s
        }
        None => w.to_string(),
    }
}

/// Two short lines for the plot's axis.
fn workload_label(d: &Data, w: &str) -> (String, String) {
    match d.any(w) {
        Some(r) => {
            let mut first = format!("{} {}", r.op.to_uppercase(), size_text(r.size_bytes));
            if r.workload.starts_with("dir-") {
                first.push_str(" dir");
            }
            let second = if r.workload.starts_with("scale-") {
                format!("{}x{} +{} idle", r.connections, r.depth, r.idle)
            } else {
                format!("{}x{}", r.connections, r.depth)
            };
            (first, second)
        }
        None => (w.to_string(), String::new()),
    }
}

// --- targets --------------------------------------------------------------------------------

enum Verdict {
    /// The median meets the target; `reps_below` of `reps` repetitions did not.
    Met {
        reps: usize,
        reps_below: usize,
    },
    NotMet {
        reps: usize,
        reps_meeting: usize,
    },
    NotMeasured,
}

struct TargetLine {
    text: String,
    measured: String,
    verdict: Verdict,
}

/// Whether `s` meets `threshold` (at least when `at_least`, else at most).
fn judge(s: &Option<Spread>, threshold: f64, at_least: bool) -> Verdict {
    let Some(s) = s else {
        return Verdict::NotMeasured;
    };
    let meets = |v: f64| {
        if at_least {
            v >= threshold
        } else {
            v <= threshold
        }
    };
    let meeting = s.values.iter().filter(|&&v| meets(v)).count();
    if meets(s.median) {
        Verdict::Met {
            reps: s.values.len(),
            reps_below: s.values.len() - meeting,
        }
    } else {
        Verdict::NotMet {
            reps: s.values.len(),
            reps_meeting: meeting,
        }
    }
}

fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Met {
            reps,
            reps_below: 0,
        } => format!("**met** (all {reps} repetitions)"),
        Verdict::Met { reps, reps_below } => {
            format!("**met** by the median ({reps_below} of {reps} repetitions below)")
        }
        Verdict::NotMet {
            reps,
            reps_meeting: 0,
        } => format!("**not met** (no repetition of {reps})"),
        Verdict::NotMet { reps, reps_meeting } => {
            format!("**not met** by the median ({reps_meeting} of {reps} repetitions met it)")
        }
        Verdict::NotMeasured => "not measured".into(),
    }
}

/// One issue-7 target on a ratio against the kernel baseline of the same path.
struct RatioTarget {
    text: &'static str,
    path: &'static str,
    workload: &'static str,
    /// On p99 latency (at most), else on ops/s (at least).
    p99: bool,
    threshold: f64,
}

const fn ops_target(
    text: &'static str,
    path: &'static str,
    workload: &'static str,
    threshold: f64,
) -> RatioTarget {
    RatioTarget {
        text,
        path,
        workload,
        p99: false,
        threshold,
    }
}

/// The issue-7 targets on ratios (1 MiB throughput is judged on ops/s: at a fixed size the
/// same ratio as MB/s).
/// The targets of issue 12 (memif and AF_XDP against the kernel on the same path; the 4-connection
/// bulk rows keep issue 7's).
const RATIO_TARGETS: [RatioTarget; 15] = [
    ops_target(
        "4 KiB READ, depth 1: memif ops/s >= 2x kernel TCP on loopback",
        "memif",
        "read-4k-c1-d1",
        2.0,
    ),
    RatioTarget {
        text: "4 KiB READ, depth 1: memif p99 <= 1/2 of kernel TCP on loopback",
        path: "memif",
        workload: "read-4k-c1-d1",
        p99: true,
        threshold: 0.5,
    },
    ops_target(
        "4 KiB READ, depth 1: AF_XDP ops/s >= 0.9x kernel TCP on the same veth",
        "af-xdp-veth",
        "read-4k-c1-d1",
        0.9,
    ),
    ops_target(
        "4 KiB READ, 32 connections x depth 4: memif >= 1.5x kernel loopback",
        "memif",
        "read-4k-c32-d4",
        1.5,
    ),
    ops_target(
        "4 KiB READ, 32 connections x depth 4: AF_XDP >= 1.5x kernel veth",
        "af-xdp-veth",
        "read-4k-c32-d4",
        1.5,
    ),
    ops_target(
        "1 MiB READ, 1 connection: memif >= 1.3x kernel loopback",
        "memif",
        "read-1m-c1-d4",
        1.3,
    ),
    ops_target(
        "1 MiB READ, 1 connection: AF_XDP >= 0.8x kernel veth",
        "af-xdp-veth",
        "read-1m-c1-d4",
        0.8,
    ),
    ops_target(
        "1 MiB WRITE, 1 connection: memif >= 1.3x kernel loopback",
        "memif",
        "write-1m-c1-d4",
        1.3,
    ),
    ops_target(
        "1 MiB WRITE, 1 connection: AF_XDP >= 0.8x kernel veth",
        "af-xdp-veth",
        "write-1m-c1-d4",
        0.8,
    ),
    ops_target(
        "1 MiB READ, DirStore, 1 connection: memif >= 1.3x kernel loopback",
        "memif",
        "dir-read-1m-c1-d4",
        1.3,
    ),
    ops_target(
        "1 MiB WRITE, DirStore, 1 connection: memif >= 1.3x kernel loopback",
        "memif",
        "dir-write-1m-c1-d4",
        1.3,
    ),
    ops_target(
        "1 MiB READ, 4 connections: memif >= 1.2x kernel loopback",
        "memif",
        "read-1m-c4-d4",
        1.2,
    ),
    ops_target(
        "1 MiB READ, 4 connections: AF_XDP >= 0.8x kernel veth",
        "af-xdp-veth",
        "read-1m-c4-d4",
        0.8,
    ),
    ops_target(
        "1 MiB WRITE, 4 connections: memif >= 1.2x kernel loopback",
        "memif",
        "write-1m-c4-d4",
        1.2,
    ),
    ops_target(
        "1 MiB WRITE, 4 connections: AF_XDP >= 0.8x kernel veth",
        "af-xdp-veth",
        "write-1m-c4-d4",
        0.8,
    ),
];

fn targets(d: &Data) -> Vec<TargetLine> {
    let mut out = Vec::new();
    for t in &RATIO_TARGETS {
        let metric = if t.p99 { m_p99 } else { m_ops };
        let s = if d.has(t.workload) {
            d.vs_kernel(t.path, t.workload, metric)
        } else {
            None
        };
        out.push(TargetLine {
            text: t.text.to_string(),
            measured: spread_text(&s, ratio_fmt),
            verdict: judge(&s, t.threshold, !t.p99),
        });
    }
    for path in ["memif", "dpdk-memif", "af-xdp-veth"] {
        let s = if d.has("scale-idle1024") {
            d.scaling(path, "scale-idle1024")
        } else {
            None
        };
        out.push(TargetLine {
            text: format!(
                "Scaling ({path}): ops/s with 1,024 idle connections >= 80% of the figure with none"
            ),
            measured: spread_text(&s, pct_fmt),
            verdict: judge(&s, 0.8, true),
        });
    }
    out
}

// --- the report -----------------------------------------------------------------------------

fn meta_get<'a>(meta: &'a Meta, key: &str) -> &'a str {
    meta.get(key)
        .map(String::as_str)
        .unwrap_or("(not recorded)")
}

fn markdown(
    d: &Data,
    meta: &Meta,
    svg_name: &str,
    notes: Option<&str>,
    lossy: Option<&lossy::LossyData>,
) -> String {
    let mut md = String::new();
    let m = |k: &str| meta_get(meta, k);
    let reps = d.reps.len();
    let quick = m("quick") == "1";

    let _ = writeln!(
        md,
        "# Benchmarks: ustack against kernel TCP, backend by backend\n"
    );
    let _ = writeln!(
        md,
        "Generated by `scripts/benchreport` from the raw results of `scripts/compare.sh` \
         (run {} at commit `{}`). Do not edit by hand: re-run the script.\n",
        m("date"),
        m("commit")
    );
    if quick {
        let _ = writeln!(
            md,
            "> **Smoke run (`--quick`)**: one repetition of 1 s per workload, fewer workloads. \
             The numbers only show that every path works.\n"
        );
    }

    // Headline.
    let _ = writeln!(md, "## Summary\n");
    let _ = writeln!(
        md,
        "ops/s of ustack relative to kernel TCP on the same path (memif and dpdk-memif against \
         kernel TCP on loopback, AF_XDP against kernel TCP on the same veth pair); median of the \
         per-repetition ratios, range in brackets; {reps} repetition(s).\n"
    );
    let ustack_paths: Vec<&String> = d
        .paths
        .iter()
        .filter(|p| baseline_of(p).is_some())
        .collect();
    let _ = write!(md, "| workload |");
    for p in &ustack_paths {
        let _ = write!(md, " {p} / {} |", baseline_of(p).unwrap_or("?"));
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "|---|{}", "---:|".repeat(ustack_paths.len()));
    for w in &d.workloads {
        let _ = write!(md, "| {} |", workload_text(d, w));
        for p in &ustack_paths {
            let _ = write!(
                md,
                " {} |",
                spread_text(&d.vs_kernel(p, w, m_ops), ratio_fmt)
            );
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(
        md,
        "\n![ops/s relative to the kernel baseline; connection scaling]({svg_name})\n"
    );

    // Targets.
    let _ = writeln!(md, "## Targets (issues 7 and 12)\n");
    let _ = writeln!(
        md,
        "A target is met when the median of the per-repetition ratios meets it; the verdict also \
         says how many repetitions fell on the other side. Throughput targets for 1 MiB are \
         judged on ops/s (at a fixed size the same ratio as MB/s). In the plot, a black dash \
         on a bar marks its target.\n"
    );
    let _ = writeln!(md, "| target | measured (median, range) | verdict |");
    let _ = writeln!(md, "|---|---:|---|");
    for t in targets(d) {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            t.text,
            t.measured,
            verdict_text(&t.verdict)
        );
    }
    // Memory.
    let _ = writeln!(
        md,
        "| Memory bounded and stated: bytes per connection, total at 1,024 connections | see \
         [Memory](#memory) | stated (measured: the server's peak resident set) |\n"
    );

    // Full table.
    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(
        md,
        "Medians over {reps} repetition(s), min–max in brackets. Latency is per request, from \
         submission to the verified completion, in microseconds. CPU s/GB: CPU seconds of that \
         side per GB (10^9 bytes) of payload the client moved (prefill and warm-up included, \
         as the CPU time is). vs kernel: ops/s against the same repetition's kernel run on the \
         same path.\n"
    );
    let _ = writeln!(
        md,
        "| workload | path | ops/s | MB/s | p50 us | p99 us | p999 us | client CPU s/GB | server CPU s/GB | vs kernel |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for w in &d.workloads {
        for p in &d.paths {
            let ops = d.spread(p, w, m_ops);
            if ops.is_none() && !d.runs.iter().any(|r| &r.path == p && &r.workload == w) {
                continue;
            }
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                workload_text(d, w),
                p,
                spread_text(&ops, thousands),
                spread_text(&d.spread(p, w, m_mbs), num),
                spread_text(&d.spread(p, w, m_p50), num),
                spread_text(&d.spread(p, w, m_p99), num),
                spread_text(&d.spread(p, w, m_p999), num),
                spread_text(&d.spread(p, w, m_client_cpu_gb), num),
                spread_text(&d.spread(p, w, m_server_cpu_gb), num),
                if baseline_of(p).is_some() {
                    spread_text(&d.vs_kernel(p, w, m_ops), ratio_fmt)
                } else {
                    "baseline".into()
                },
            );
        }
    }
    let _ = writeln!(md);

    // Spread.
    let mut wide = Vec::new();
    for w in &d.workloads {
        for p in &d.paths {
            let Some(s) = d.spread(p, w, m_ops) else {
                continue;
            };
            if s.values.len() > 1 && s.min > 0.0 && s.max / s.min >= 1.5 {
                let low = d
                    .reps
                    .iter()
                    .filter_map(|&rep| d.get(p, w, rep))
                    .find(|r| r.ops_s == Some(s.min));
                let other = low
                    .and_then(|r| r.other_cpu_s)
                    .map(|o| format!(", other CPU {:.1} s", o.max(0.0)))
                    .unwrap_or_default();
                wide.push(format!(
                    "{p} {w} ({:.1}x; lowest: repetition {}, {} ops/s against a median of {}{other})",
                    s.max / s.min,
                    low.map_or("?".into(), |r| r.rep.to_string()),
                    thousands(s.min),
                    thousands(s.median)
                ));
            }
        }
    }
    if !wide.is_empty() {
        let _ = writeln!(
            md,
            "Runs whose ops/s varied by 1.5x or more between repetitions: {}. The median leaves \
             such a repetition out; the ranges and the verdicts' counts keep it visible. Other \
             CPU is what the rest of the machine ran during that low repetition: a large value \
             points at other work on the two shared cores (both processes are pinned, so a third \
             busy process takes time from one of them); near zero, the cause lies elsewhere (the \
             hypervisor, or the processes themselves).\n",
            wide.join("; ")
        );
    }

    // Latency ratios at depth 1.
    for w in ["read-4k-c1-d1", "write-4k-c1-d1"] {
        if !d.has(w) {
            continue;
        }
        let _ = writeln!(
            md,
            "Latency against the kernel, {} (ratio of the same repetition's percentiles; below 1 \
             is faster):\n",
            workload_text(d, w)
        );
        let _ = writeln!(md, "| path | p50 | p99 | p999 |");
        let _ = writeln!(md, "|---|---:|---:|---:|");
        for p in ustack_paths.iter() {
            let _ = writeln!(
                md,
                "| {p} / {} | {} | {} | {} |",
                baseline_of(p).unwrap_or("?"),
                spread_text(&d.vs_kernel(p, w, m_p50), ratio_fmt),
                spread_text(&d.vs_kernel(p, w, m_p99), ratio_fmt),
                spread_text(&d.vs_kernel(p, w, m_p999), ratio_fmt),
            );
        }
        let _ = writeln!(md);
    }

    // Scaling.
    let scale_ws: Vec<&String> = d
        .workloads
        .iter()
        .filter(|w| w.starts_with("scale-") && w.as_str() != SCALE_BASE)
        .collect();
    if d.has(SCALE_BASE) {
        let _ = writeln!(md, "## Connection scaling\n");
        let _ = writeln!(
            md,
            "32 active connections (4 KiB READ, depth 1) while more connections are open and idle. \
             Ratio: ops/s with the idle connections over ops/s with none, pair by pair per \
             repetition.\n"
        );
        let _ = write!(md, "| path | ops/s, 0 idle |");
        for w in &scale_ws {
            let idle = d.any(w).map_or(0, |r| r.idle);
            let _ = write!(md, " ops/s, {} idle | ratio |", thousands(f64::from(idle)));
        }
        let _ = writeln!(md);
        let _ = writeln!(md, "|---|---:|{}", "---:|---:|".repeat(scale_ws.len()));
        for p in &d.paths {
            let _ = write!(
                md,
                "| {p} | {} |",
                spread_text(&d.spread(p, SCALE_BASE, m_ops), thousands)
            );
            for w in &scale_ws {
                let _ = write!(
                    md,
                    " {} | {} |",
                    spread_text(&d.spread(p, w, m_ops), thousands),
                    spread_text(&d.scaling(p, w), pct_fmt)
                );
            }
            let _ = writeln!(md);
        }
        let _ = writeln!(md);

        let _ = writeln!(md, "## Memory\n");
        let conns_max: f64 = m("connections_max").parse().unwrap_or(f64::NAN);
        let _ = writeln!(
            md,
            "The server's peak memory during the run: resident set (VmRSS) plus mapped \
             hugepages (HugetlbPages, not part of VmRSS), sampled every 0.2 s. It includes the \
             chunk store (64 chunks of the run's size), the packet buffers and, for ustack, the \
             socket memory the stack reserves at start for every socket it may have \
             (`--connections-max` {cm} plus the accept backlog): that reservation is the bound, \
             so idle connections add next to nothing. Kernel paths: the kernel's own socket \
             buffers are not in the process's memory and not counted here; the server's \
             user-space buffers per connection are. Per idle connection: the growth over the \
             run without idle connections, divided by the idle connections. Per connection \
             slot: the peak with 1,024 idle connections divided by `--connections-max`.\n",
            cm = m("connections_max")
        );
        let _ = write!(md, "| path | MiB, 0 idle | of which hugepages |");
        for w in &scale_ws {
            let idle = d.any(w).map_or(0, |r| r.idle);
            let _ = write!(
                md,
                " MiB, {} idle | bytes per idle connection |",
                thousands(f64::from(idle))
            );
        }
        let _ = writeln!(md, " KiB per connection slot |");
        let _ = writeln!(
            md,
            "|---|---:|---:|{}---:|",
            "---:|---:|".repeat(scale_ws.len())
        );
        let last = scale_ws.last().map(|w| w.as_str()).unwrap_or(SCALE_BASE);
        for p in &d.paths {
            let _ = write!(
                md,
                "| {p} | {} | {} |",
                spread_text(&d.spread(p, SCALE_BASE, m_mem_mib), num),
                spread_text(&d.spread(p, SCALE_BASE, m_huge_mib), num)
            );
            for w in &scale_ws {
                let _ = write!(
                    md,
                    " {} | {} |",
                    spread_text(&d.spread(p, w, m_mem_mib), num),
                    spread_text(&d.bytes_per_conn(p, w), thousands)
                );
            }
            let per_slot = d
                .spread(p, last, m_mem_mib)
                .map(|s| s.median * 1024.0 / conns_max)
                .filter(|v| v.is_finite());
            let _ = writeln!(md, " {} |", per_slot.map_or("–".into(), num));
        }
        let _ = writeln!(md);
    }

    if let Some(l) = lossy {
        let _ = writeln!(md, "{}", lossy::section(l, meta));
    }

    // Machine and settings.
    let _ = writeln!(md, "## Machine and settings\n");
    let _ = writeln!(md, "| | |");
    let _ = writeln!(md, "|---|---|");
    for (label, key) in [
        ("CPU", "machine.cpu"),
        ("cores", "machine.cores"),
        ("memory", "machine.memory"),
        ("kernel", "machine.kernel"),
        ("OS", "machine.os"),
        ("virtualization", "machine.virtualization"),
        ("commit", "commit"),
        ("date (UTC)", "date"),
        ("Rust", "rustc"),
        ("glibc", "glibc"),
        ("DPDK", "dpdk"),
        ("build", "build"),
        ("hugepages", "hugepages"),
        ("load average at start (1, 5, 15 min)", "loadavg.start"),
        ("load average at end", "loadavg.end"),
        ("measuring time", "elapsed_s"),
    ] {
        let mut v = m(key).to_string();
        if key == "elapsed_s" && meta.contains_key(key) {
            v = format!("{v} s");
        }
        let _ = writeln!(md, "| {label} | {v} |");
    }
    let glibc = match m("glibc_tunables") {
        "unset" => "unset for both sides (`env -u GLIBC_TUNABLES`; glibc's default memcpy, which \
                    uses `rep movsb` for large copies: slow on this CPU, see PLATFORM.md)"
            .to_string(),
        v => format!("`{v}` for both sides (`--glibc-tunables`)"),
    };
    let _ = writeln!(md, "| GLIBC_TUNABLES | {glibc} |");
    if let Some(c) = meta.get("glibc_tunables.caller") {
        let _ = writeln!(
            md,
            "| GLIBC_TUNABLES of the caller | `{c}` (replaced as above for the runs) |"
        );
    }
    let _ = writeln!(
        md,
        "| cores | server on core {}, client on core {} (`taskset`) |",
        m("server_cpu"),
        m("client_cpu")
    );
    let _ = writeln!(
        md,
        "| repetitions | {}, {} s measured per run after chunkctl's 1 s warm-up |",
        m("reps"),
        m("duration_s")
    );
    let _ = writeln!(
        md,
        "| server | `fileserver --store mem --connections-max {} --grace-s 2` |",
        m("connections_max")
    );
    if let Some(mtu) = meta.get("shm_mtu") {
        let _ = writeln!(
            md,
            "| IP MTU | memif {mtu} (`--mtu`); dpdk-memif 1500 (DPDK 22.11's net_memif takes frames up to 1518 bytes); kernel loopback 65536; veth 1500 |"
        );
    }
    for p in ["af-xdp-veth", "kernel-veth"] {
        if let Some(v) = meta.get(&format!("offloads.{p}")) {
            let _ = writeln!(md, "| veth offloads for {p} | {v} |");
        }
    }
    let _ = writeln!(md, "| command | `{}` |", m("command").trim());
    let _ = writeln!(md);

    // Paths.
    let _ = writeln!(md, "## Method\n");
    let _ = writeln!(md, "Paths:\n");
    for (name, what, base) in PATHS {
        let skipped = meta.get(&format!("skipped.{name}"));
        let _ = write!(md, "- `{name}`: {what}");
        if let Some(b) = base {
            let _ = write!(md, "; baseline `{b}`");
        }
        match skipped {
            Some(why) => {
                let _ = writeln!(md, ". **Skipped: {why}.**");
            }
            None if !d.paths.iter().any(|p| p == name) => {
                let _ = writeln!(md, ". Not run.");
            }
            None => {
                let _ = writeln!(md, ".");
            }
        }
    }
    let _ = writeln!(
        md,
        "\nThe server is `examples/fileserver.rs`, the client `examples/chunkctl bench`, the \
         same two programs for every path (kernel paths: `--backend kernel`, std::net sockets \
         with TCP_NODELAY, 256 KiB buffers, one thread polling every socket; ustack paths: smoltcp \
         TCP/IP with Nagle and delayed ACKs off). Both run the same chunk protocol against the \
         same in-memory store. Each run:\n\n\
         1. a fresh server process, pinned to its core, started and waited for (its \"listening\" \
         line); for every workload of every path of every repetition;\n\
         2. one `chunkctl bench` process pinned to the other core: it connects, opens the idle \
         connections if any, writes the 64 chunks the workload reads (prefill), runs 1 s of \
         warm-up, then measures for the stated time; every READ is checked byte for byte;\n\
         3. the server's CPU time (utime + stime from /proc/PID/stat) is read before and after \
         the client, and its resident set sampled during the run; then it gets SIGTERM.\n\n\
         Within a repetition the paths run one after the other, so a ratio compares a ustack run \
         and a kernel run made minutes apart on the same machine state; the ratio is taken per \
         repetition and its median reported. The machine is a VM with 2 vCPUs shared with other \
         work (see the load average): run-to-run spread is large, and the min–max ranges show it.\n"
    );

    // Failures.
    let failed = d.failed();
    if !failed.is_empty() {
        let _ = writeln!(md, "## Failed runs\n");
        let _ = writeln!(
            md,
            "These runs produced no result (their logs are in `target/compare/logs/`, named \
             `rep<N>-<path>-<workload>.log` and `...-server.log`); they are left out of the \
             medians.\n"
        );
        for r in failed {
            let _ = writeln!(md, "- repetition {}, {}, {}", r.rep, r.path, r.workload);
        }
        let _ = writeln!(md);
    }

    // Raw values.
    let _ = writeln!(md, "## Per-repetition values\n");
    let _ = writeln!(
        md,
        "<details><summary>ops/s, p99 (us) and the CPU seconds the rest of the machine used \
         during every run</summary>\n\n\
         Other CPU s: the machine's busy CPU time (/proc/stat) during the run minus the server's \
         and the client's; it holds other work on the shared cores and kernel work charged to \
         neither process (softirq), and the hypervisor's steal time when there was some. /proc/stat \
         is sampled on timer ticks, so this is approximate (about ±0.5 s; negative values show \
         as 0).\n"
    );
    let _ = write!(md, "| workload | path |");
    for rep in &d.reps {
        let _ = write!(
            md,
            " rep {rep} ops/s | rep {rep} p99 | rep {rep} other CPU s |"
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "|---|---|{}", "---:|---:|---:|".repeat(d.reps.len()));
    for w in &d.workloads {
        for p in &d.paths {
            let _ = write!(md, "| {w} | {p} |");
            for &rep in &d.reps {
                match d.get(p, w, rep) {
                    Some(r) => {
                        let other = match (r.other_cpu_s, r.steal_s) {
                            (Some(o), Some(st)) if st >= 0.05 => {
                                format!("{:.1} (steal {st:.1})", o.max(0.0))
                            }
                            (Some(o), _) => format!("{:.1}", o.max(0.0)),
                            (None, _) => "–".into(),
                        };
                        let _ = write!(
                            md,
                            " {} | {} | {other} |",
                            r.ops_s.map_or("–".into(), thousands),
                            r.p99_us.map_or("–".into(), num)
                        );
                    }
                    None => {
                        let _ = write!(md, " failed | | |");
                    }
                }
            }
            let _ = writeln!(md);
        }
    }
    let _ = writeln!(md, "\n</details>\n");

    // Reproduce.
    let _ = writeln!(md, "## How to reproduce\n");
    let _ = writeln!(
        md,
        "```sh\n\
         sudo scripts/compare.sh                      # every path and workload, 3 repetitions (~20 min on 2 vCPUs)\n\
         sudo scripts/compare.sh --quick              # smoke run: 1 repetition, 1 s, report in target/compare/\n\
         scripts/compare.sh --paths memif,kernel-lo   # no root needed for these two\n\
         sudo scripts/compare.sh --glibc-tunables     # both sides with the faster memcpy settings\n\
         sudo scripts/compare.sh --paths lossy        # loss recovery through the fault relay (issue 11; not in the default set)\n\
         # re-render this report from the raw results:\n\
         cargo run --release -p benchreport -- --results target/compare/results.tsv \\\n\
         \x20   --meta target/compare/meta.tsv --markdown docs/BENCHMARKS.md --svg docs/benchmarks.svg\n\
         ```\n\n\
         The script builds the examples (`--features dpdk` when libdpdk-dev is installed) and \
         the report tool, installs what is missing as root (fonts-dejavu-core, ethtool, libdpdk-dev), reserves \
         hugepages if fewer than 800 are free (and gives them back), creates the veth namespaces \
         with `scripts/netns.sh` and removes them on every exit. `--help` lists every option.\n"
    );

    if let Some(n) = notes {
        let _ = writeln!(md, "## Notes\n");
        let _ = writeln!(md, "{}", n.trim_end());
    }
    md
}

// --- the plot -------------------------------------------------------------------------------

fn register_font(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "reading the plot's font {}: {e} (install it: apt-get install fonts-dejavu-core, or pass --font)",
            path.display()
        )
    })?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{}: not a usable TrueType font", path.display()))
}

fn path_color(path: &str) -> RGBColor {
    match path {
        "memif" => RGBColor(31, 119, 180),
        "dpdk-memif" => RGBColor(255, 127, 14),
        "af-xdp-veth" => RGBColor(44, 160, 44),
        "kernel-lo" => RGBColor(127, 127, 127),
        "kernel-veth" => RGBColor(70, 70, 70),
        _ => RGBColor(148, 103, 189),
    }
}

/// One bar group: a label and one (series, spread) per bar.
struct Group {
    label: (String, String),
    bars: Vec<(String, Option<Spread>)>,
    /// Targets drawn on bars: (series, value).
    targets: Vec<(String, f64)>,
}

fn plot_err<E: std::fmt::Debug>(e: E) -> String {
    format!("drawing the plot: {e:?}")
}

/// The plot's y axis: linear from 0, or logarithmic.
#[derive(Copy, Clone, PartialEq)]
enum Scale {
    Linear,
    Log,
}

/// An axis tick: at most two decimals, trailing zeros dropped.
fn tick(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// One panel of the plot: a grouped bar chart with min–max whiskers and a reference line.
struct Panel<'a> {
    title: &'a str,
    y_desc: &'a str,
    groups: Vec<Group>,
    series: &'a [String],
    /// The line drawn across: value, legend label, colour.
    reference: (f64, &'a str, RGBColor),
    scale: Scale,
    /// How a bar's value is printed on top of it.
    fmt: fn(f64) -> String,
}

/// Draws `p` on `area`.
fn bar_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    p: &Panel<'_>,
) -> Result<(), String> {
    let spreads = || {
        p.groups
            .iter()
            .flat_map(|g| g.bars.iter().filter_map(|(_, s)| s.as_ref()))
    };
    let top = spreads().map(|s| s.max).fold(p.reference.0, f64::max);
    let bottom = spreads().map(|s| s.min).fold(p.reference.0, f64::min);
    match p.scale {
        Scale::Linear => {
            let y_max = (top * 1.45).max(p.reference.0 * 1.3);
            bar_chart(area, p, 0f64..y_max, 0.0)
        }
        Scale::Log => {
            let y_min = (bottom * 0.6).min(p.reference.0 * 0.5);
            let y_max = (top * 2.2).max(p.reference.0 * 2.0);
            let keys: Vec<f64> = [
                0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
            ]
            .into_iter()
            .filter(|v| (y_min..=y_max).contains(v))
            .collect();
            bar_chart(
                area,
                p,
                (y_min..y_max).log_scale().with_key_points(keys),
                y_min,
            )
        }
    }
}

/// [`bar_panel`] on a given y axis; bars start at `floor`.
fn bar_chart<Y>(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    p: &Panel<'_>,
    y_range: Y,
    floor: f64,
) -> Result<(), String>
where
    Y: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    Y::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let Panel {
        title,
        y_desc,
        ref groups,
        series,
        reference,
        fmt,
        ..
    } = *p;
    let n = groups.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 17))
        .margin(12)
        .margin_bottom(4)
        .x_label_area_size(46)
        .y_label_area_size(58)
        .build_cartesian_2d(0f64..n, y_range)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .x_label_formatter(&|_| String::new())
        .y_desc(y_desc)
        .y_label_formatter(&|v| tick(*v))
        .light_line_style(BLACK.mix(0.04))
        .y_label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 13))
        .draw()
        .map_err(plot_err)?;
    let k = series.len().max(1) as f64;
    let slot = 0.84 / k;
    for (si, name) in series.iter().enumerate() {
        let color = path_color(name);
        let mut rects = Vec::new();
        let mut whiskers = Vec::new();
        let mut labels = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            let Some((_, Some(s))) = g.bars.iter().find(|(n, _)| n == name) else {
                continue;
            };
            let x0 = gi as f64 + 0.08 + si as f64 * slot;
            let x1 = x0 + slot * 0.86;
            let xc = (x0 + x1) / 2.0;
            rects.push(Rectangle::new(
                [(x0, floor), (x1, s.median)],
                color.filled(),
            ));
            if s.max > s.min {
                let w = (x1 - x0) * 0.25;
                whiskers.push(PathElement::new(
                    vec![(xc, s.min), (xc, s.max)],
                    BLACK.stroke_width(1),
                ));
                whiskers.push(PathElement::new(
                    vec![(xc - w, s.min), (xc + w, s.min)],
                    BLACK.stroke_width(1),
                ));
                whiskers.push(PathElement::new(
                    vec![(xc - w, s.max), (xc + w, s.max)],
                    BLACK.stroke_width(1),
                ));
            }
            labels.push((xc, s.max.max(s.median), fmt(s.median)));
        }
        chart
            .draw_series(rects)
            .map_err(plot_err)?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart.draw_series(whiskers).map_err(plot_err)?;
        let style = TextStyle::from(("sans-serif", 10).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        chart
            .draw_series(
                labels
                    .into_iter()
                    .map(|(x, y, t)| Text::new(t, (x, y), style.clone())),
            )
            .map_err(plot_err)?;
    }
    // Targets: a black dash across the bar they apply to.
    let mut dashes = Vec::new();
    for (gi, g) in groups.iter().enumerate() {
        for (name, t) in &g.targets {
            if let Some(si) = series.iter().position(|s| s == name) {
                let x0 = gi as f64 + 0.08 + si as f64 * slot - slot * 0.08;
                let x1 = x0 + slot;
                dashes.push(PathElement::new(
                    vec![(x0, *t), (x1, *t)],
                    BLACK.stroke_width(3),
                ));
            }
        }
    }
    if !dashes.is_empty() {
        chart
            .draw_series(dashes)
            .map_err(plot_err)?
            .label("issue-7 target")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], BLACK.stroke_width(3)));
    }
    let (ref_y, ref_label, ref_color) = reference;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(0.0, ref_y), (n, ref_y)],
            ref_color.stroke_width(2),
        )))
        .map_err(plot_err)?
        .label(ref_label)
        .legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 12, y)], ref_color.stroke_width(2))
        });
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 12))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(plot_err)?;
    // The group labels, two short lines under each group.
    let style = TextStyle::from(("sans-serif", 11).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Top));
    for (gi, g) in groups.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(gi as f64 + 0.5, 0.0));
        let (ax, ay) = area.get_base_pixel();
        let at = (px - ax, py - ay);
        area.draw(&Text::new(
            g.label.0.clone(),
            (at.0, at.1 + 6),
            style.clone(),
        ))
        .map_err(plot_err)?;
        area.draw(&Text::new(
            g.label.1.clone(),
            (at.0, at.1 + 20),
            style.clone(),
        ))
        .map_err(plot_err)?;
    }
    Ok(())
}

fn draw_svg(path: &Path, d: &Data) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let root = SVGBackend::new(path, (1400, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (left, right) = root.split_horizontally(1000);

    let ustack: Vec<String> = d
        .paths
        .iter()
        .filter(|p| baseline_of(p).is_some())
        .cloned()
        .collect();
    let groups: Vec<Group> = d
        .workloads
        .iter()
        .map(|w| Group {
            label: workload_label(d, w),
            bars: ustack
                .iter()
                .map(|p| (p.clone(), d.vs_kernel(p, w, m_ops)))
                .collect(),
            targets: RATIO_TARGETS
                .iter()
                .filter(|t| t.workload == w.as_str() && !t.p99)
                .map(|t| (t.path.to_string(), t.threshold))
                .collect(),
        })
        .filter(|g| g.bars.iter().any(|(_, s)| s.is_some()))
        .collect();
    bar_panel(
        &left,
        &Panel {
            title: "ops/s relative to kernel TCP on the same path (median, min–max)",
            y_desc: "x kernel, log scale (memif, DPDK: loopback; AF_XDP: veth)",
            groups,
            series: &ustack,
            reference: (1.0, "kernel = 1", RGBColor(200, 30, 30)),
            scale: Scale::Log,
            fmt: |v| format!("{v:.1}"),
        },
    )?;

    let scale_ws: Vec<&String> = d
        .workloads
        .iter()
        .filter(|w| w.starts_with("scale-") && w.as_str() != SCALE_BASE)
        .collect();
    let groups: Vec<Group> = scale_ws
        .iter()
        .map(|w| Group {
            label: (
                format!("+{} idle", d.any(w).map_or(0, |r| r.idle)),
                "32 active".into(),
            ),
            bars: d
                .paths
                .iter()
                .map(|p| (p.clone(), d.scaling(p, w)))
                .collect(),
            targets: Vec::new(),
        })
        .collect();
    if groups
        .iter()
        .any(|g| g.bars.iter().any(|(_, s)| s.is_some()))
    {
        bar_panel(
            &right,
            &Panel {
                title: "Scaling: ops/s with idle connections / without",
                y_desc: "fraction of ops/s with 0 idle",
                groups,
                series: &d.paths,
                reference: (0.8, "target 80%", RGBColor(200, 30, 30)),
                scale: Scale::Linear,
                fmt: |v| format!("{:.0}%", v * 100.0),
            },
        )?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn verdicts_count_repetitions_on_each_side() {
        let s = Spread::of(vec![4.0, 6.0, 7.0]);
        assert!(matches!(
            judge(&s, 5.0, true),
            Verdict::Met {
                reps: 3,
                reps_below: 1
            }
        ));
        assert!(matches!(
            judge(&s, 6.5, true),
            Verdict::NotMet {
                reps: 3,
                reps_meeting: 1
            }
        ));
        assert!(matches!(
            judge(&Spread::of(vec![0.2]), 0.25, false),
            Verdict::Met { reps_below: 0, .. }
        ));
        assert!(matches!(judge(&None, 1.0, true), Verdict::NotMeasured));
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

    #[test]
    fn number_formats() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(tick(0.6000000000000001), "0.6");
        assert_eq!(tick(10.0), "10");
        assert_eq!(parse_size("4KiB"), Some(4096));
        assert_eq!(
            spread_text(&Spread::of(vec![1.0, 2.0, 3.0]), ratio_fmt),
            "2.00x (1.00x–3.00x)"
        );
    }
}
