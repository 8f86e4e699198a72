//! The lossy-path section of the benchmark report (issue 11): ustack against kernel TCP through
//! the fault relay, from `scripts/compare.sh --paths lossy` (its `lossy.tsv`).
//!
//! Each repetition of a fault setting has three transfers through the same relay and seed:
//! `kernel-ustack` (kernel client, ustack server), `ustack-kernel` (ustack client, kernel
//! server) and `kernel-kernel`. A ratio compares a ustack endpoint with the kernel endpoint in
//! the same place in the same repetition's `kernel-kernel` transfer: time against time, and the
//! frames that endpoint sent (the server's, in B, for `kernel-ustack`; the client's, in A, for
//! `ustack-kernel`).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use crate::format::{ratio_fmt, spread_text, thousands};
use crate::input::{meta_get, Meta};
use crate::stats::Spread;
use crate::targets::{judge, verdict_text};

/// Where the section starts and ends in BENCHMARKS.md, so a run of only the lossy path can
/// replace it in place.
pub const BEGIN: &str = "<!-- lossy-path:begin -->";
/// See [`BEGIN`].
pub const END: &str = "<!-- lossy-path:end -->";

/// The fault settings compare.sh knows, in report order: name, what it is, the issue-11 time
/// target (ustack time / kernel time at most).
const SETTINGS: [(&str, &str, f64); 4] = [
    ("loss-0.1", "0.1% loss", 1.2),
    ("loss-1", "1% loss", 1.5),
    ("loss-3", "3% loss", 1.5),
    (
        "mix",
        "1% loss, 1% duplication, 5% reordering, 0.1% corruption",
        1.5,
    ),
];

/// The issue-11 target on frames: the ustack endpoint sends at most this many times the frames
/// the kernel endpoint sends for the same transfer.
const FRAMES_TARGET: f64 = 1.1;

/// The two ustack ways: name, what it is, which endpoint is ustack (true: the server in B).
const WAYS: [(&str, &str, bool); 2] = [
    (
        "kernel-ustack",
        "kernel client -> ustack server (AF_XDP)",
        true,
    ),
    (
        "ustack-kernel",
        "ustack client (AF_XDP) -> kernel server",
        false,
    ),
];

const BASE: &str = "kernel-kernel";

/// One transfer (one line of lossy.tsv).
#[derive(Clone, Debug)]
pub struct LossyRun {
    rep: u32,
    setting: String,
    faults: String,
    way: String,
    ok: bool,
    elapsed_s: Option<f64>,
    frames_a: Option<f64>,
    frames_b: Option<f64>,
    dropped: Option<f64>,
    kernel_drops: Option<f64>,
}

/// Reads lossy.tsv.
pub fn read(path: &Path) -> Result<Vec<LossyRun>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = match lines.next() {
        Some(h) => h.split('\t').collect(),
        None => return Ok(Vec::new()),
    };
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| format!("{}: no column {name:?}", path.display()))
    };
    let [rep, setting, loss, duplicate, reorder, corrupt, way, status, elapsed, fa, fb, dropped, kdrops] =
        [
            "rep",
            "setting",
            "loss",
            "duplicate",
            "reorder",
            "corrupt",
            "way",
            "status",
            "elapsed_s",
            "frames_a",
            "frames_b",
            "dropped",
            "kernel_drops",
        ]
        .map(col);
    let (rep, setting, way, status) = (rep?, setting?, way?, status?);
    let faults = [loss?, duplicate?, reorder?, corrupt?];
    let (elapsed, fa, fb, dropped, kdrops) = (elapsed?, fa?, fb?, dropped?, kdrops?);
    let mut runs = Vec::new();
    for (no, line) in lines.enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        let at = |i: usize| f.get(i).copied().unwrap_or("NA");
        let ok = at(status) == "ok";
        let num = |i: usize| at(i).parse::<f64>().ok().filter(|v| ok && v.is_finite());
        runs.push(LossyRun {
            rep: at(rep).parse().map_err(|_| {
                format!("{} line {}: bad rep {:?}", path.display(), no + 2, at(rep))
            })?,
            setting: at(setting).to_string(),
            faults: format!(
                "loss {}, duplicate {}, reorder {}, corrupt {}",
                at(faults[0]),
                at(faults[1]),
                at(faults[2]),
                at(faults[3])
            ),
            way: at(way).to_string(),
            ok,
            elapsed_s: num(elapsed),
            frames_a: num(fa),
            frames_b: num(fb),
            dropped: num(dropped),
            kernel_drops: num(kdrops),
        });
    }
    Ok(runs)
}

/// The transfers, indexed.
pub struct LossyData {
    runs: Vec<LossyRun>,
    settings: Vec<String>,
    reps: BTreeSet<u32>,
}

/// A figure of one transfer.
type Metric = fn(&LossyRun) -> Option<f64>;

fn m_time(r: &LossyRun) -> Option<f64> {
    r.elapsed_s
}
fn m_frames_a(r: &LossyRun) -> Option<f64> {
    r.frames_a
}
fn m_frames_b(r: &LossyRun) -> Option<f64> {
    r.frames_b
}

impl LossyData {
    pub fn new(runs: Vec<LossyRun>) -> LossyData {
        let mut settings: Vec<String> = SETTINGS
            .iter()
            .map(|s| s.0.to_string())
            .filter(|s| runs.iter().any(|r| &r.setting == s))
            .collect();
        for r in &runs {
            if !settings.contains(&r.setting) {
                settings.push(r.setting.clone());
            }
        }
        let reps = runs.iter().map(|r| r.rep).collect();
        LossyData {
            runs,
            settings,
            reps,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.runs.len()
    }

    fn get(&self, setting: &str, way: &str, rep: u32) -> Option<&LossyRun> {
        self.runs
            .iter()
            .find(|r| r.ok && r.rep == rep && r.setting == setting && r.way == way)
    }

    fn spread(&self, setting: &str, way: &str, metric: Metric) -> Option<Spread> {
        Spread::over(&self.reps, |rep| {
            self.get(setting, way, rep).and_then(metric)
        })
    }

    /// `metric` of `way` over `metric` of the kernel-kernel transfer, per repetition.
    fn vs_kernel(&self, setting: &str, way: &str, metric: Metric) -> Option<Spread> {
        Spread::over(&self.reps, |rep| {
            let x = self.get(setting, way, rep).and_then(metric)?;
            let y = self.get(setting, BASE, rep).and_then(metric)?;
            (y > 0.0).then(|| x / y)
        })
    }

    /// Frames of the ustack endpoint of `way` against the kernel endpoint in its place.
    fn frames_vs_kernel(&self, setting: &str, way: &str) -> Option<Spread> {
        let server = WAYS.iter().find(|w| w.0 == way).is_some_and(|w| w.2);
        self.vs_kernel(setting, way, if server { m_frames_b } else { m_frames_a })
    }
}

fn setting_text(name: &str) -> &str {
    SETTINGS.iter().find(|s| s.0 == name).map_or(name, |s| s.1)
}

fn time_target(name: &str) -> Option<f64> {
    SETTINGS.iter().find(|s| s.0 == name).map(|s| s.2)
}

fn secs(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn count(v: f64) -> String {
    thousands(v)
}

/// The section, between [`BEGIN`] and [`END`].
pub fn section(d: &LossyData, meta: &Meta) -> String {
    let m = |k: &str| meta_get(meta, k);
    let mut md = String::new();
    let _ = writeln!(md, "{BEGIN}");
    let _ = writeln!(
        md,
        "## Lossy path: loss recovery against kernel TCP (issue 11)\n"
    );
    let _ = writeln!(
        md,
        "`scripts/compare.sh --paths lossy` (run {} at commit `{}`, CPU: {}). Two namespaces, A \
         and B, joined through a third, M, where `examples/faultwire.rs` forwards every Ethernet \
         frame with seeded faults, each direction with its own stream (seed {}; a fresh relay per \
         transfer, so every transfer meets the same decisions from its first frame). Offloads: \
         {}. Relay: {}. Each transfer is `chunkctl verify --total {}` from A to B (writes, reads \
         every byte back and checks it, STAT, DELETE), three ways: kernel client -> ustack \
         server (AF_XDP, native XDP), ustack client (AF_XDP) -> kernel server, kernel -> kernel. \
         Time: chunkctl's own, writes to deletes. Frames: those the ustack endpoint sent, counted \
         by the relay by source MAC, over those the kernel endpoint in the same place (server in \
         B, or client in A) sent in the same repetition's kernel -> kernel transfer. Ratios are \
         taken per repetition; median, range in brackets; {} repetition(s).\n",
        m("date"),
        m("commit"),
        m("machine.cpu"),
        m("lossy.seed"),
        m("lossy.offloads"),
        m("lossy.relay"),
        m("lossy.total"),
        d.reps.len(),
    );
    let _ = writeln!(
        md,
        "| faults | kernel -> kernel s | kernel -> ustack server s | time ratio | server frames ratio | ustack client -> kernel s | time ratio | client frames ratio |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let secs_of = |s: &str, w: &str| spread_text(&d.spread(s, w, m_time), secs);
    for s in &d.settings {
        let _ = write!(md, "| {} | {} |", setting_text(s), secs_of(s, BASE));
        for (way, _, _) in WAYS {
            let _ = write!(
                md,
                " {} | {} | {} |",
                secs_of(s, way),
                spread_text(&d.vs_kernel(s, way, m_time), ratio_fmt),
                spread_text(&d.frames_vs_kernel(s, way), ratio_fmt)
            );
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md);

    let _ = writeln!(md, "### Issue-11 targets\n");
    let _ = writeln!(md, "| target | measured (median, range) | verdict |");
    let _ = writeln!(md, "|---|---:|---|");
    for s in &d.settings {
        for (way, what, _) in WAYS {
            if let Some(t) = time_target(s) {
                let r = d.vs_kernel(s, way, m_time);
                let _ = writeln!(
                    md,
                    "| {}, {what}: time <= {t}x kernel | {} | {} |",
                    setting_text(s),
                    spread_text(&r, ratio_fmt),
                    verdict_text(&judge(&r, t, false))
                );
            }
            let r = d.frames_vs_kernel(s, way);
            let _ = writeln!(
                md,
                "| {}, {what}: frames sent <= {FRAMES_TARGET}x kernel | {} | {} |",
                setting_text(s),
                spread_text(&r, ratio_fmt),
                verdict_text(&judge(&r, FRAMES_TARGET, false))
            );
        }
    }
    let _ = writeln!(md);

    let failed: Vec<&LossyRun> = d.runs.iter().filter(|r| !r.ok).collect();
    if !failed.is_empty() {
        let _ = writeln!(
            md,
            "Failed transfers (logs in `target/compare/logs/rep<N>-lossy-<setting>-<way>*.log`), \
             left out of the ratios: {}.\n",
            failed
                .iter()
                .map(|r| format!("repetition {} {} {}", r.rep, r.setting, r.way))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }

    let _ = writeln!(
        md,
        "<details><summary>Every transfer: time, frames from A and B, frames the relay dropped \
         (the loss fault) and frames the kernel dropped before the relay read them (losses the \
         seed did not decide; should be 0)</summary>\n"
    );
    let _ = writeln!(
        md,
        "| rep | setting | faults | way | s | frames from A | frames from B | dropped | kernel drops |"
    );
    let _ = writeln!(md, "|---:|---|---|---|---:|---:|---:|---:|---:|");
    for r in &d.runs {
        let opt = |v: Option<f64>, f: fn(f64) -> String| v.map_or("–".into(), f);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.rep,
            r.setting,
            r.faults,
            r.way,
            if r.ok {
                opt(r.elapsed_s, secs)
            } else {
                "failed".into()
            },
            opt(r.frames_a, count),
            opt(r.frames_b, count),
            opt(r.dropped, count),
            opt(r.kernel_drops, count),
        );
    }
    let _ = writeln!(md, "\n</details>\n");
    let _ = writeln!(md, "{END}");
    md
}

/// `doc` with its lossy section replaced by `section` (appended when it has none).
pub fn splice(doc: &str, section: &str) -> String {
    crate::format::splice(doc, BEGIN, END, section)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "rep\tsetting\tloss\tduplicate\treorder\tcorrupt\tway\tclient\tserver\tstatus\telapsed_s\twall_s\ttotal_bytes\tframes_a\tframes_b\tbytes_a\tbytes_b\tdropped\tduplicated\treordered\tcorrupted\tkernel_drops\tsend_failed";

    fn line(rep: u32, setting: &str, way: &str, s: f64, fa: u64, fb: u64) -> String {
        format!("{rep}\t{setting}\t0.01\t0\t0\t0\t{way}\tk\tk\tok\t{s}\t{s}\t1000\t{fa}\t{fb}\t1\t1\t5\t0\t0\t0\t0\t0")
    }

    fn data(lines: &[String]) -> LossyData {
        let dir = std::env::temp_dir().join(format!("benchreport-lossy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("l{}.tsv", lines.len()));
        std::fs::write(&file, format!("{HEADER}\n{}\n", lines.join("\n"))).unwrap();
        let runs = read(&file).unwrap();
        std::fs::remove_file(&file).unwrap();
        LossyData::new(runs)
    }

    #[test]
    fn ratios_compare_the_ustack_endpoint_with_the_kernel_one_in_its_place() {
        let d = data(&[
            line(1, "loss-1", "kernel-kernel", 2.0, 1000, 2000),
            line(1, "loss-1", "kernel-ustack", 3.0, 1100, 3000),
            line(1, "loss-1", "ustack-kernel", 4.0, 1500, 2100),
            line(2, "loss-1", "kernel-kernel", 1.0, 1000, 2000),
            line(2, "loss-1", "kernel-ustack", 1.0, 1000, 2000),
            line(2, "loss-1", "ustack-kernel", 1.0, 1000, 2000),
        ]);
        let t = d.vs_kernel("loss-1", "kernel-ustack", m_time).unwrap();
        assert_eq!(t.values, vec![1.5, 1.0]);
        // kernel-ustack: the server (B) is ustack: 3000 / 2000.
        let f = d.frames_vs_kernel("loss-1", "kernel-ustack").unwrap();
        assert_eq!(f.values, vec![1.5, 1.0]);
        // ustack-kernel: the client (A): 1500 / 1000.
        let f = d.frames_vs_kernel("loss-1", "ustack-kernel").unwrap();
        assert_eq!(f.values, vec![1.5, 1.0]);
        let md = section(&d, &Meta::new());
        assert!(md.starts_with(BEGIN) && md.trim_end().ends_with(END));
        assert!(md.contains("| 1% loss, kernel client -> ustack server (AF_XDP): time <= 1.5x kernel | 1.25x (1.00x–1.50x) | **met**"), "{md}");
        assert!(
            md.contains("frames sent <= 1.1x kernel | 1.25x (1.00x–1.50x) | **not met**"),
            "{md}"
        );
    }

    #[test]
    fn a_failed_transfer_leaves_its_repetition_out() {
        let failed = line(1, "mix", "kernel-kernel", 0.0, 0, 0).replace("\tok\t", "\tfail\t");
        let d = data(&[failed, line(1, "mix", "kernel-ustack", 3.0, 1, 1)]);
        assert!(d.vs_kernel("mix", "kernel-ustack", m_time).is_none());
        assert!(section(&d, &Meta::new()).contains("Failed transfers"));
    }

    #[test]
    fn splice_replaces_or_appends() {
        let s = format!("{BEGIN}\nnew\n{END}\n");
        let doc = format!("# T\n\nbefore\n\n{BEGIN}\nold\n{END}\n\n## After\n");
        assert_eq!(
            splice(&doc, &s),
            format!("# T\n\nbefore\n\n{BEGIN}\nnew\n{END}\n\n## After\n")
        );
        assert_eq!(splice("# T\n", &s), format!("# T\n\n{s}"));
        assert_eq!(splice("", &s), s);
    }
}
