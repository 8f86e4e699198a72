//! The objbench section of the benchmark report (issue 16): JuiceFS's `juicefs objbench`
//! against the S3 object server (`examples/objectserver.rs`) on AF_XDP and on kernel TCP, from
//! `scripts/compare.sh --paths objbench` (its `objbench.tsv`).
//!
//! Each repetition runs objbench twice, AF_XDP first, then kernel TCP, each against a fresh
//! server with a fresh data directory. objbench.tsv has one line per benchmark item of each
//! run, with the run's status, the server's CPU seconds and the run's wall time repeated on
//! each. A ratio is AF_XDP over kernel TCP, taken per repetition.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use crate::format::{num, ratio_fmt, spread_text};
use crate::input::{meta_get, Meta};
use crate::stats::Spread;

/// Where the section starts and ends in BENCHMARKS.md, so a run of only this path can replace
/// it in place.
pub const BEGIN: &str = "<!-- objbench:begin -->";
/// See [`BEGIN`].
pub const END: &str = "<!-- objbench:end -->";

/// objbench's benchmark items, in its order.
const ITEMS: [&str; 7] = [
    "upload objects",
    "download objects",
    "put small objects",
    "get small objects",
    "list objects",
    "head objects",
    "delete objects",
];

/// The two transports: name in objbench.tsv, name in the report.
const AF_XDP: (&str, &str) = ("af-xdp", "AF_XDP");
const KERNEL: (&str, &str) = ("kernel", "kernel TCP");

/// One benchmark figure of one run (one line of objbench.tsv).
#[derive(Clone, Debug)]
pub struct ObjbenchRow {
    rep: u32,
    transport: String,
    ok: bool,
    item: String,
    value: Option<f64>,
    unit: String,
    server_cpu_s: Option<f64>,
    wall_s: Option<f64>,
    note: String,
}

/// Reads objbench.tsv.
pub fn read(path: &Path) -> Result<Vec<ObjbenchRow>, String> {
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
    let [rep, transport, status, item, value, unit, cpu, wall, note] = [
        "rep",
        "transport",
        "status",
        "item",
        "value",
        "unit",
        "server_cpu_s",
        "wall_s",
        "note",
    ]
    .map(col);
    let (rep, transport, status, item, value) = (rep?, transport?, status?, item?, value?);
    let (unit, cpu, wall, note) = (unit?, cpu?, wall?, note?);
    let mut rows = Vec::new();
    for (no, line) in lines.enumerate() {
        let f: Vec<&str> = line.split('\t').collect();
        let at = |i: usize| f.get(i).copied().unwrap_or("NA");
        let ok = at(status) == "ok";
        let num = |i: usize| at(i).parse::<f64>().ok().filter(|v| ok && v.is_finite());
        rows.push(ObjbenchRow {
            rep: at(rep).parse().map_err(|_| {
                format!("{} line {}: bad rep {:?}", path.display(), no + 2, at(rep))
            })?,
            transport: at(transport).to_string(),
            ok,
            item: at(item).to_string(),
            value: num(value),
            unit: at(unit).to_string(),
            server_cpu_s: num(cpu),
            wall_s: num(wall),
            note: f.get(note).copied().unwrap_or("").trim().to_string(),
        });
    }
    Ok(rows)
}

/// The figures, indexed.
pub struct ObjbenchData {
    rows: Vec<ObjbenchRow>,
    reps: BTreeSet<u32>,
}

impl ObjbenchData {
    /// Indexes the rows of objbench.tsv.
    pub fn new(rows: Vec<ObjbenchRow>) -> ObjbenchData {
        let reps = rows.iter().map(|r| r.rep).collect();
        ObjbenchData { rows, reps }
    }

    /// No rows at all.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The objbench runs (one per repetition and transport).
    pub fn runs(&self) -> usize {
        self.rows
            .iter()
            .map(|r| (r.rep, r.transport.as_str()))
            .collect::<BTreeSet<_>>()
            .len()
    }

    fn get(&self, transport: &str, item: &str, rep: u32) -> Option<&ObjbenchRow> {
        self.rows
            .iter()
            .find(|r| r.ok && r.rep == rep && r.transport == transport && r.item == item)
    }

    /// The items in objbench's order, then any others the file has.
    fn items(&self) -> Vec<&str> {
        let mut items: Vec<&str> = ITEMS
            .iter()
            .copied()
            .filter(|i| self.rows.iter().any(|r| r.item == *i))
            .collect();
        for r in &self.rows {
            if !items.contains(&r.item.as_str()) {
                items.push(&r.item);
            }
        }
        items
    }

    /// The unit objbench gave `item` in.
    fn unit(&self, item: &str) -> &str {
        self.rows
            .iter()
            .find(|r| r.ok && r.item == item)
            .map_or("", |r| r.unit.as_str())
    }

    fn spread(&self, transport: &str, item: &str) -> Option<Spread> {
        Spread::over(&self.reps, |rep| {
            self.get(transport, item, rep).and_then(|r| r.value)
        })
    }

    /// AF_XDP's figure over kernel TCP's, per repetition.
    fn ratio(&self, item: &str) -> Option<Spread> {
        Spread::over(&self.reps, |rep| {
            let x = self.get(AF_XDP.0, item, rep)?.value?;
            let y = self.get(KERNEL.0, item, rep)?.value?;
            (y > 0.0).then(|| x / y)
        })
    }

    /// A per-run figure (the same on every row of a run), over the repetitions.
    fn per_run(&self, transport: &str, f: fn(&ObjbenchRow) -> Option<f64>) -> Option<Spread> {
        Spread::over(&self.reps, |rep| self.run(transport, rep).and_then(f))
    }

    fn run(&self, transport: &str, rep: u32) -> Option<&ObjbenchRow> {
        self.rows
            .iter()
            .find(|r| r.ok && r.rep == rep && r.transport == transport)
    }

    fn per_run_ratio(&self, f: fn(&ObjbenchRow) -> Option<f64>) -> Option<Spread> {
        Spread::over(&self.reps, |rep| {
            let x = self.run(AF_XDP.0, rep).and_then(f)?;
            let y = self.run(KERNEL.0, rep).and_then(f)?;
            (y > 0.0).then(|| x / y)
        })
    }

    /// The failed runs: (rep, transport, why).
    fn failed(&self) -> Vec<(u32, &str, &str)> {
        let mut out: Vec<(u32, &str, &str)> = Vec::new();
        for r in self.rows.iter().filter(|r| !r.ok) {
            if !out
                .iter()
                .any(|(rep, t, _)| *rep == r.rep && *t == r.transport)
            {
                out.push((r.rep, &r.transport, &r.note));
            }
        }
        out
    }
}

fn cpu_of(r: &ObjbenchRow) -> Option<f64> {
    r.server_cpu_s
}

fn wall_of(r: &ObjbenchRow) -> Option<f64> {
    r.wall_s
}

/// The section, between [`BEGIN`] and [`END`].
pub fn section(d: &ObjbenchData, meta: &Meta) -> String {
    let m = |k: &str| meta_get(meta, k);
    let mut md = String::new();
    let _ = writeln!(md, "{BEGIN}");
    let _ = writeln!(
        md,
        "## JuiceFS objbench: the object server on AF_XDP and on kernel TCP (issue 16)\n"
    );
    let _ = writeln!(
        md,
        "`scripts/compare.sh --paths objbench` (run {} at commit `{}`, CPU: {}). The S3 object \
         server (`examples/objectserver.rs`, `--sync never`: chunks are left in the page cache, \
         not synced before a PUT is answered) in namespace A of a veth pair (MTU {}), the real \
         JuiceFS client ({}) in B: `juicefs objbench --storage s3 http://ADDR:9000/objbench \
         --big-object-size {} --small-objects {} -p {}` (block size {} KiB, small objects of \
         {} KiB, {} threads). Per repetition AF_XDP first (ustack, native XDP; veth offloads: \
         {}), then kernel TCP (the same server with `--backend kernel` on A's kernel address; \
         veth offloads: {}); each time a fresh server with a fresh data directory ({}), server \
         on core {} and objbench on core {}. A run counts only if every functional check of \
         objbench passes, but for the three \"change ...\" checks (\"not support\": S3 has no \
         file attributes) and \"get partial object\" (a range that starts past the object's \
         end: the server answers 416 InvalidRange, as S3 does, and objbench reports that as a \
         failure against S3 too). Median over {} repetition(s), range in brackets; the ratio \
         AF_XDP / kernel TCP is taken per repetition (above 1: AF_XDP did more per second; for \
         the server's CPU seconds and objbench's wall time, above 1: AF_XDP took more).\n",
        m("date"),
        m("commit"),
        m("machine.cpu"),
        m("objbench.veth_mtu"),
        m("objbench.juicefs"),
        m("objbench.big_object_mib"),
        m("objbench.small_objects"),
        m("objbench.threads"),
        m("objbench.block_kib"),
        m("objbench.small_object_kib"),
        m("objbench.threads"),
        m("offloads.objbench-af-xdp"),
        m("offloads.objbench-kernel"),
        m("objbench.store"),
        m("server_cpu"),
        m("client_cpu"),
        d.reps.len(),
    );
    let _ = writeln!(
        md,
        "| item | unit | {} | {} | {} / {} |",
        AF_XDP.1, KERNEL.1, AF_XDP.1, KERNEL.1
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|");
    for item in d.items() {
        let _ = writeln!(
            md,
            "| {item} | {} | {} | {} | {} |",
            d.unit(item),
            spread_text(&d.spread(AF_XDP.0, item), num),
            spread_text(&d.spread(KERNEL.0, item), num),
            spread_text(&d.ratio(item), ratio_fmt)
        );
    }
    for (what, f) in [
        (
            "server CPU (utime + stime, start to the end of objbench)",
            cpu_of as fn(&ObjbenchRow) -> Option<f64>,
        ),
        ("objbench's wall time", wall_of),
    ] {
        let _ = writeln!(
            md,
            "| {what} | s | {} | {} | {} |",
            spread_text(&d.per_run(AF_XDP.0, f), num),
            spread_text(&d.per_run(KERNEL.0, f), num),
            spread_text(&d.per_run_ratio(f), ratio_fmt)
        );
    }
    let _ = writeln!(md);
    let failed = d.failed();
    if !failed.is_empty() {
        let _ = writeln!(
            md,
            "Failed runs (logs in `target/compare/logs/rep<N>-objbench-<transport>*.log`), left \
             out: {}.\n",
            failed
                .iter()
                .map(|(rep, t, why)| format!("repetition {rep} {t} ({why})"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    md.push_str(&per_repetition(d));
    let _ = writeln!(md, "{END}");
    md
}

/// Every run's figures, in a collapsed table.
fn per_repetition(d: &ObjbenchData) -> String {
    let mut md = String::new();
    let items = d.items();
    let _ = writeln!(
        md,
        "<details><summary>Every run: each item's figure, the server's CPU seconds and \
         objbench's wall time</summary>\n"
    );
    let _ = write!(md, "| rep | transport |");
    for item in &items {
        let _ = write!(md, " {item} |");
    }
    let _ = writeln!(md, " server CPU s | wall s |");
    let _ = writeln!(md, "|---:|---|{}---:|---:|", "---:|".repeat(items.len()));
    for &rep in &d.reps {
        for (t, name) in [AF_XDP, KERNEL] {
            let Some(run) = d.rows.iter().find(|r| r.rep == rep && r.transport == t) else {
                continue;
            };
            let _ = write!(md, "| {rep} | {name} |");
            for item in &items {
                let v = d.get(t, item, rep).and_then(|r| r.value);
                let _ = write!(md, " {} |", v.map_or("–".into(), num));
            }
            let opt = |v: Option<f64>| v.map_or("–".into(), num);
            if run.ok {
                let _ = writeln!(md, " {} | {} |", opt(run.server_cpu_s), opt(run.wall_s));
            } else {
                let _ = writeln!(md, " failed | failed |");
            }
        }
    }
    let _ = writeln!(md, "\n</details>\n");
    md
}

/// `doc` with its objbench section replaced by `section` (appended when it has none).
pub fn splice(doc: &str, section: &str) -> String {
    crate::format::splice(doc, BEGIN, END, section)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "rep\ttransport\tstatus\titem\tvalue\tunit\tserver_cpu_s\twall_s\tnote";

    /// The seven rows of one run: upload `mib` MiB/s, the other items `x` times fixed figures.
    fn run(rep: u32, transport: &str, status: &str, mib: f64, x: f64, cpu: f64) -> Vec<String> {
        ITEMS
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let (v, unit) = match i {
                    0 => (mib, "MiB/s"),
                    1 => (400.0 * x, "MiB/s"),
                    _ => (1000.0 * x * i as f64, "objects/s"),
                };
                let note = if status == "ok" {
                    ""
                } else {
                    "objbench exited with 1"
                };
                format!("{rep}\t{transport}\t{status}\t{item}\t{v}\t{unit}\t{cpu}\t30.5\t{note}")
            })
            .collect()
    }

    fn data(name: &str, lines: &[Vec<String>]) -> ObjbenchData {
        let dir = std::env::temp_dir().join(format!("benchreport-objbench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{name}.tsv"));
        let body: Vec<String> = lines.iter().flatten().cloned().collect();
        std::fs::write(&file, format!("{HEADER}\n{}\n", body.join("\n"))).unwrap();
        let rows = read(&file).unwrap();
        std::fs::remove_file(&file).unwrap();
        ObjbenchData::new(rows)
    }

    #[test]
    fn parses_the_rows_and_takes_ratios_per_repetition() {
        let d = data(
            "parse",
            &[
                run(1, "af-xdp", "ok", 100.0, 1.0, 10.0),
                run(1, "kernel", "ok", 200.0, 2.0, 5.0),
                run(2, "af-xdp", "ok", 150.0, 1.0, 12.0),
                run(2, "kernel", "ok", 150.0, 1.0, 6.0),
            ],
        );
        assert_eq!(d.rows.len(), 28);
        assert_eq!(d.runs(), 4);
        assert_eq!(d.items(), ITEMS.to_vec());
        assert_eq!(d.unit("upload objects"), "MiB/s");
        assert_eq!(d.unit("head objects"), "objects/s");
        let up = d.spread("af-xdp", "upload objects").unwrap();
        assert_eq!(up.values, vec![100.0, 150.0]);
        let r = d.ratio("upload objects").unwrap();
        assert_eq!(r.values, vec![0.5, 1.0]);
        assert_eq!(r.median, 0.75);
        let cpu = d.per_run_ratio(cpu_of).unwrap();
        assert_eq!(cpu.values, vec![2.0, 2.0]);
    }

    #[test]
    fn renders_the_section() {
        let d = data(
            "render",
            &[
                run(1, "af-xdp", "ok", 100.0, 1.0, 10.0),
                run(1, "kernel", "ok", 200.0, 2.0, 5.0),
                run(2, "af-xdp", "ok", 150.0, 1.0, 12.0),
                run(2, "kernel", "fail", 0.0, 0.0, 6.0),
            ],
        );
        let mut meta = Meta::new();
        meta.insert("machine.cpu".into(), "AMD EPYC".into());
        meta.insert("objbench.big_object_mib".into(), "256".into());
        meta.insert("objbench.small_objects".into(), "200".into());
        meta.insert("objbench.threads".into(), "4".into());
        let md = section(&d, &meta);
        assert!(
            md.starts_with(BEGIN) && md.trim_end().ends_with(END),
            "{md}"
        );
        assert!(md.contains("(issue 16)"), "{md}");
        assert!(md.contains("CPU: AMD EPYC"), "{md}");
        assert!(
            md.contains("--big-object-size 256 --small-objects 200 -p 4"),
            "{md}"
        );
        assert!(md.contains("`--sync never`"), "{md}");
        assert!(md.contains("2 repetition(s)"), "{md}");
        // Repetition 2's kernel run failed: its ratio is left out, its AF_XDP figure counts.
        assert!(
            md.contains("| upload objects | MiB/s | 125 (100–150) | 200 | 0.50x |"),
            "{md}"
        );
        assert!(
            md.contains("| head objects | objects/s | 5,000 | 10,000 | 0.50x |"),
            "{md}"
        );
        assert!(md.contains("| server CPU (utime + stime, start to the end of objbench) | s | 11.0 (10.0–12.0) | 5.00 | 2.00x |"), "{md}");
        assert!(
            md.contains("repetition 2 kernel (objbench exited with 1)"),
            "{md}"
        );
        assert!(md.contains("| 2 | kernel TCP |"), "{md}");
        // Spliced after a document without the section; replaced in place the second time.
        let doc = splice("# T\n\n## Other\n", &md);
        assert_eq!(splice(&doc, &md), doc);
        assert!(doc.starts_with("# T\n\n## Other\n\n<!-- objbench:begin -->"));
    }
}
