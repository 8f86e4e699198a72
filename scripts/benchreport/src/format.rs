//! How numbers, ranges and workloads are written in the report.

use std::fmt::Write as _;

use crate::stats::{Data, Spread};

/// 1234567 -> "1,234,567".
pub fn thousands(v: f64) -> String {
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
pub fn num(v: f64) -> String {
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
pub fn spread_text(s: &Option<Spread>, f: fn(f64) -> String) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.values.len() == 1 || f(s.min) == f(s.max) => f(s.median),
        Some(s) => format!("{} ({}–{})", f(s.median), f(s.min), f(s.max)),
    }
}

pub fn ratio_fmt(v: f64) -> String {
    format!("{v:.2}x")
}

pub fn pct_fmt(v: f64) -> String {
    format!("{:.0}%", v * 100.0)
}

pub fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

/// "READ 4 KiB, 32 conn x depth 4, +1,024 idle".
pub fn workload_text(d: &Data, w: &str) -> String {
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

/// `doc` with the part from marker `begin` to marker `end` (both included) replaced by
/// `section`; `section` appended when `doc` has no such part.
pub fn splice(doc: &str, begin: &str, end: &str, section: &str) -> String {
    match doc.find(begin) {
        Some(b) => match doc[b..].find(end) {
            Some(e) => {
                let after = &doc[b + e + end.len()..];
                let after = after.strip_prefix('\n').unwrap_or(after);
                format!("{}{section}{after}", &doc[..b])
            }
            None => append(doc, section),
        },
        None => append(doc, section),
    }
}

fn append(doc: &str, section: &str) -> String {
    let mut out = doc.trim_end().to_string();
    if !out.is_empty() {
        out.push_str("\n\n");
    }
    out.push_str(section);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(
            spread_text(&Spread::of(vec![1.0, 2.0, 3.0]), ratio_fmt),
            "2.00x (1.00x–3.00x)"
        );
    }
}
