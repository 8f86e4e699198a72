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
//! (issue 11, [`lossy`]); when the results hold no bench runs (only the lossy path ran), only
//! that section of the existing report is replaced, and no plot is drawn.
//!
//! Medians and min-max are over the repetitions. A ratio against the kernel (memif and
//! dpdk-memif against kernel-lo, af-xdp-veth against kernel-veth) is computed pair by pair, one
//! per repetition (the ustack run and the kernel run of the same repetition), and the report
//! gives the median of those ratios and their range.
//!
//! [`input`] reads the raw results, [`stats`] indexes the runs and computes medians, ranges
//! and ratios, [`targets`] judges them against the issues' targets, [`format`](mod@format)
//! writes numbers and workloads, [`report`] (with [`lossy`]) writes the Markdown and [`plot`]
//! the SVG.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

mod format;
mod input;
mod lossy;
mod plot;
mod report;
mod stats;
mod targets;

use input::{read_meta, read_results};
use plot::{draw_svg, register_font};
use report::markdown;
use stats::Data;

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
