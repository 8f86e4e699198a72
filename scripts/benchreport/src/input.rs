//! The raw results: results.tsv (one line per run) and meta.tsv (the run's record).

use std::collections::BTreeMap;
use std::path::Path;

/// One chunkctl bench run (one line of results.tsv).
#[derive(Clone, Debug)]
pub struct Run {
    pub rep: u32,
    pub path: String,
    pub workload: String,
    pub op: String,
    pub size_bytes: u64,
    pub connections: u32,
    pub depth: u32,
    pub idle: u32,
    pub ok: bool,
    pub ops_s: Option<f64>,
    pub mb_s: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    pub total_bytes: Option<f64>,
    pub client_cpu_s: Option<f64>,
    pub server_cpu_s: Option<f64>,
    pub server_rss_max_kb: Option<f64>,
    /// Hugepage memory mapped (not in VmRSS).
    pub server_hugetlb_max_kb: Option<f64>,
    /// CPU seconds the rest of the machine used during the run.
    pub other_cpu_s: Option<f64>,
    /// The hypervisor's steal time during the run, seconds.
    pub steal_s: Option<f64>,
}

pub fn read_results(path: &Path) -> Result<Vec<Run>, String> {
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
pub type Meta = BTreeMap<String, String>;

/// The run's record of `key`, or "(not recorded)".
pub fn meta_get<'a>(meta: &'a Meta, key: &str) -> &'a str {
    meta.get(key)
        .map(String::as_str)
        .unwrap_or("(not recorded)")
}

pub fn read_meta(path: &Path) -> Result<Meta, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_written_on_the_command_line() {
        assert_eq!(parse_size("4KiB"), Some(4096));
    }
}
