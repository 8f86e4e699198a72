//! The plot (docs/benchmarks.svg): ops/s against the kernel baseline of the same path, and
//! connection scaling.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::format::size_text;
use crate::stats::{baseline_of, m_ops, Data, Spread, SCALE_BASE};
use crate::targets::RATIO_TARGETS;

pub fn register_font(path: &Path) -> Result<(), String> {
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
        let SeriesBars {
            rects,
            whiskers,
            labels,
        } = series_bars(groups, name, si, slot, floor, fmt);
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
    let dashes = target_dashes(groups, series, slot);
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

/// The bars of one series (`name`, the `si`-th) in every group: a bar from `floor` to the median,
/// whiskers over min–max, and the median's label above.
struct SeriesBars {
    rects: Vec<Rectangle<(f64, f64)>>,
    whiskers: Vec<PathElement<(f64, f64)>>,
    labels: Vec<(f64, f64, String)>,
}

/// [`SeriesBars`] of `name` in `groups`; each group has `slot` of its width per series.
fn series_bars(
    groups: &[Group],
    name: &str,
    si: usize,
    slot: f64,
    floor: f64,
    fmt: fn(f64) -> String,
) -> SeriesBars {
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
    SeriesBars {
        rects,
        whiskers,
        labels,
    }
}

/// The targets of `groups`: a black dash across the bar of the series they apply to.
fn target_dashes(groups: &[Group], series: &[String], slot: f64) -> Vec<PathElement<(f64, f64)>> {
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
    dashes
}

pub fn draw_svg(path: &Path, d: &Data) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_ticks() {
        assert_eq!(tick(0.6000000000000001), "0.6");
        assert_eq!(tick(10.0), "10");
    }
}
