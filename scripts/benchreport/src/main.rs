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
//! (issue 11, [`lossy`]), and with `--objbench` (`objbench.tsv`) the section on JuiceFS's
//! objbench against the object server (issue 16, [`objbench`]); when the results hold no bench
//! runs (only those paths ran), only those sections of the existing report are replaced, and no
//! plot is drawn.
//!
//! Medians and min-max are over the repetitions. A ratio against the kernel (memif and
//! dpdk-memif against kernel-lo, af-xdp-veth against kernel-veth) is computed pair by pair, one
//! per repetition (the ustack run and the kernel run of the same repetition), and the report
//! gives the median of those ratios and their range.
//!
//! [`input`] reads the raw results, [`stats`] indexes the runs and computes medians, ranges
//! and ratios, [`targets`] judges them against the issues' targets, [`format`](mod@format)
//! writes numbers and workloads, [`report`] (with [`lossy`] and [`objbench`]) writes the
//! Markdown and [`plot`]
//! the SVG.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

mod format;
mod input;
mod lossy;
mod objbench;
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
    /// The objbench path's results (compare.sh --paths objbench writes objbench.tsv).
    #[arg(long)]
    objbench: Option<PathBuf>,
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
    let objbench = match &args.objbench {
        Some(p) => Some(objbench::ObjbenchData::new(objbench::read(p)?)).filter(|d| !d.is_empty()),
        None => None,
    };
    let runs = if (lossy.is_none() && objbench.is_none()) || args.results.exists() {
        read_results(&args.results)?
    } else {
        Vec::new()
    };
    let meta = read_meta(&args.meta)?;
    if runs.is_empty() {
        if lossy.is_none() && objbench.is_none() {
            return Err(format!("{}: no runs in it", args.results.display()));
        }
        // Only the lossy or objbench paths ran: replace their sections, keep the rest.
        return update_sections(args, &meta, lossy.as_ref(), objbench.as_ref());
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
    let md = markdown(
        &data,
        &meta,
        &svg_name,
        notes.as_deref(),
        lossy.as_ref(),
        objbench.as_ref(),
    );
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

/// Replaces the lossy-path and objbench sections of the existing report (those there are
/// results for), leaving the rest as it is.
fn update_sections(
    args: &Args,
    meta: &input::Meta,
    lossy: Option<&lossy::LossyData>,
    objbench: Option<&objbench::ObjbenchData>,
) -> Result<(), String> {
    let mut md = match std::fs::read_to_string(&args.markdown) {
        Ok(doc) => doc,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "# Benchmarks: ustack against kernel TCP\n".to_string()
        }
        Err(e) => return Err(format!("{}: {e}", args.markdown.display())),
    };
    if let Some(l) = lossy {
        md = lossy::splice(&md, &lossy::section(l, meta));
        println!(
            "benchreport: updated the lossy-path section of {} ({} transfers)",
            args.markdown.display(),
            l.len()
        );
    }
    if let Some(o) = objbench {
        md = objbench::splice(&md, &objbench::section(o, meta));
        println!(
            "benchreport: updated the objbench section of {} ({} runs)",
            args.markdown.display(),
            o.runs()
        );
    }
    write_file(&args.markdown, md.as_bytes())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::write(path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))
}
