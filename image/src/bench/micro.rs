//! Host micro-benchmarks of the packet path: runs the crates' bench examples (overlay
//! encap/decap, sleeve seal/open, NAT/LB, DNS) in release mode and turns every line that
//! reports a time per operation into a row (ns/op, and ops/s per core in the note).
//! It parses their text output; the examples stay the source of truth.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::report::{Better, Row, Side};
use crate::build::cargo_program;
use crate::paths;

/// (package, example) pairs, in the order they run.
pub const EXAMPLES: &[(&str, &str)] = &[
    ("weft-netstack", "overlay_bench"),
    ("weft-netstack", "sleeve_bench"),
    ("weft-netstack", "nat_bench"),
    ("weft-appliance", "dns_bench"),
];

/// Units a figure may carry, in nanoseconds per unit.
fn unit_ns(unit: &str) -> Option<f64> {
    let u = unit.trim_end_matches([')', ',']);
    match u {
        "ns" | "ns/packet" | "ns/op" | "ns/query" | "ns/flow" => Some(1.0),
        "us" | "µs" => Some(1e3),
        "ms" => Some(1e6),
        _ => None,
    }
}

/// Whether `unit` ends a figure's name (a rate or a time).
fn is_figure_unit(unit: &str) -> bool {
    unit_ns(unit).is_some() || unit.ends_with("/s")
}

/// (name, ns per op) for each line of an example's output that reports a time per op.
/// A line indented under a header (`nat: 10000 established flows ...`) is named after it.
pub fn parse_example_output(example: &str, text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let mut header = String::new();
    for line in text.lines() {
        if !line.starts_with(' ') {
            header = line.split(" (").next().unwrap_or(line).trim().to_string();
        }
        let toks: Vec<&str> = line.split_whitespace().collect();
        let num = |t: &str| t.trim_start_matches('(').parse::<f64>().ok();
        // The time: the first number followed by a time unit.
        let Some(ns) = toks
            .windows(2)
            .find_map(|w| Some(num(w[0])? * unit_ns(w[1])?))
        else {
            continue;
        };
        // The name: everything before the first number followed by a figure unit.
        let end = toks
            .windows(2)
            .position(|w| num(w[0]).is_some() && is_figure_unit(w[1]))
            .unwrap_or(0);
        let name = toks[..end].join(" ");
        let full = if line.starts_with(' ') && !header.is_empty() {
            format!("{example}: {header} / {name}")
        } else {
            format!("{example}: {name}")
        };
        out.push((full, ns));
    }
    out
}

/// Runs one example in release mode; its stdout.
fn run_example(package: &str, example: &str) -> Result<String> {
    let out = Command::new(cargo_program())
        .current_dir(paths::repo_root())
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            package,
            "--example",
            example,
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running cargo run --example {example}"))?;
    if !out.status.success() {
        bail!("example {example} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs every example; one row per figure (weft only: Linux has no counterpart here).
pub fn run(log: &mut dyn FnMut(&str)) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (package, example) in EXAMPLES {
        log(&format!("micro: {example}"));
        let text = run_example(package, example)?;
        let figures = parse_example_output(example, &text);
        if figures.is_empty() {
            bail!("example {example} reported no ns/op figure:\n{text}");
        }
        for (i, (name, ns)) in figures.into_iter().enumerate() {
            let mut r = Row::new(&format!("{example}_{i}"), &name, "ns/op", Better::Lower, 1);
            r.weft = Side::Measured(vec![ns]);
            r.linux = Side::NotApplicable;
            r.note = Some(format!("{:.0} ops/s per core", 1e9 / ns));
            rows.push(r);
        }
    }
    Ok(rows)
}

/// The micro table: benchmark, ns/op, ops/s per core (Linux has no column here).
pub fn render(rows: &[Row]) -> String {
    let name_w = rows
        .iter()
        .map(|r| r.title.chars().count())
        .max()
        .unwrap_or(9);
    let mut out = format!(
        "{:<name_w$}  {:>12}  {:>16}\n",
        "benchmark", "ns/op", "ops/s per core"
    );
    out.push_str(&format!(
        "{}  {}  {}\n",
        "-".repeat(name_w),
        "-".repeat(12),
        "-".repeat(16)
    ));
    for r in rows {
        if let Some(ns) = r.weft.median() {
            let pad = name_w - r.title.chars().count();
            out.push_str(&format!(
                "{}{}  {:>12.1}  {:>16.0}\n",
                r.title,
                " ".repeat(pad),
                ns,
                1e9 / ns
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_micro_table_has_ns_and_ops_per_second() {
        let mut r = Row::new("x_0", "x: seal", "ns/op", Better::Lower, 1);
        r.weft = Side::Measured(vec![250.0]);
        let t = render(&[r]);
        let line = t.lines().nth(2).unwrap();
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols, ["x:", "seal", "250.0", "4000000"]);
    }

    #[test]
    fn every_kind_of_example_line_is_read() {
        let text = [
            "2000000 packets per case, one core",
            "wire encap 64B inner, udp csum off               51.6 ns/packet    19.38 Mpps",
            "raw aead seal             64 B     3145.7 ns/op       20.3 MB/s    0.16 Gbit/s",
            "nat: 10000 established flows (published-port DNAT)",
            "  new-flow setup           4677459 flows/s (214 ns/flow)",
            "  lookup + rewrite           116.7 ns/packet (8.57 Mpps/core)",
            "  memory                      85.2 bytes/flow (RSS growth)",
            "maglev: table of 65537 slots, 100 backends",
            "  table lookup                 2.9 ns",
            "  rebuild,   10 backends       2.20 ms",
            "container A (app7-db-1.testgrid.kontena.local)      1988 ns/query       503079 queries/s",
        ]
        .join("\n");
        let got = parse_example_output("x", &text);
        let want: Vec<(&str, f64)> = vec![
            ("x: wire encap 64B inner, udp csum off", 51.6),
            ("x: raw aead seal 64 B", 3145.7),
            ("x: nat: 10000 established flows / new-flow setup", 214.0),
            ("x: nat: 10000 established flows / lookup + rewrite", 116.7),
            (
                "x: maglev: table of 65537 slots, 100 backends / table lookup",
                2.9,
            ),
            (
                "x: maglev: table of 65537 slots, 100 backends / rebuild, 10 backends",
                2.2e6,
            ),
            ("x: container A (app7-db-1.testgrid.kontena.local)", 1988.0),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for ((n, v), (wn, wv)) in got.iter().zip(want) {
            assert_eq!(n, wn);
            assert!((v - wv).abs() < 1e-6 * wv.max(1.0), "{n}: {v} != {wv}");
        }
    }
}
