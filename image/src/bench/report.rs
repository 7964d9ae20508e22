//! The benchmark table: one [`Row`] per figure with weft's and Linux's samples, their
//! median and min–max, the ratio weft/Linux, rendered as text and as JSON. It only
//! summarises numbers it is given; it never measures and never drops a row: a figure
//! that could not be measured stays in the table as `missing` or `failed` with why.

use serde_json::{json, Value};

/// Which way is better for a figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

impl Better {
    pub fn as_str(self) -> &'static str {
        match self {
            Better::Lower => "lower",
            Better::Higher => "higher",
        }
    }
}

/// One side of a row (weft or Linux).
#[derive(Clone, Debug, PartialEq)]
pub enum Side {
    /// One value per run.
    Measured(Vec<f64>),
    /// The feature does not exist (yet) on this side; why.
    Missing(String),
    /// It exists but the measurement failed; why.
    Failed(String),
    /// The figure has no meaning on this side (e.g. weft's heap for Linux).
    NotApplicable,
}

impl Side {
    pub fn empty() -> Side {
        Side::Measured(Vec::new())
    }

    /// Adds a run's value (a missing/failed side stays as it is).
    pub fn push(&mut self, v: f64) {
        if let Side::Measured(vs) = self {
            vs.push(v);
        }
    }

    /// Records a failed run: the side fails unless some run succeeded (then the
    /// successful runs stand and `failures` in the JSON says how many did not).
    pub fn fail(&mut self, why: String) {
        if matches!(self, Side::Measured(vs) if vs.is_empty()) {
            *self = Side::Failed(why);
        }
    }

    pub fn values(&self) -> &[f64] {
        match self {
            Side::Measured(v) => v,
            _ => &[],
        }
    }

    pub fn median(&self) -> Option<f64> {
        median(self.values())
    }

    pub fn min_max(&self) -> Option<(f64, f64)> {
        let v = self.values();
        let min = v.iter().copied().reduce(f64::min)?;
        let max = v.iter().copied().reduce(f64::max)?;
        Some((min, max))
    }

    fn status(&self) -> &'static str {
        match self {
            Side::Measured(v) if v.is_empty() => "not_run",
            Side::Measured(_) => "ok",
            Side::Missing(_) => "missing",
            Side::Failed(_) => "failed",
            Side::NotApplicable => "n/a",
        }
    }

    fn reason(&self) -> Option<&str> {
        match self {
            Side::Missing(r) | Side::Failed(r) => Some(r),
            _ => None,
        }
    }

    fn cell(&self, digits: usize) -> String {
        match self.median() {
            Some(m) => fmt_num(m, digits),
            None => self.status().to_string(),
        }
    }

    fn range_cell(&self, digits: usize) -> String {
        match self.min_max() {
            Some((a, b)) => format!("{}–{}", fmt_num(a, digits), fmt_num(b, digits)),
            None => "-".into(),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut o = json!({ "status": self.status() });
        if let Side::Measured(v) = self {
            if !v.is_empty() {
                o["values"] = json!(v);
                o["median"] = json!(self.median());
                let (a, b) = self.min_max().unwrap_or((0.0, 0.0));
                o["min"] = json!(a);
                o["max"] = json!(b);
            }
        }
        if let Some(r) = self.reason() {
            o["reason"] = json!(r);
        }
        o
    }
}

/// Median (mean of the middle two for an even count); `None` for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn fmt_num(x: f64, digits: usize) -> String {
    format!("{x:.digits$}")
}

/// One line of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Stable id (`boot`, `idle_cpu`, `vxlan_tcp`, ...), the `--only` name.
    pub id: String,
    pub title: String,
    pub unit: String,
    pub better: Better,
    /// Decimals shown in the text table.
    pub digits: usize,
    pub weft: Side,
    pub linux: Side,
    pub note: Option<String>,
}

impl Row {
    pub fn new(id: &str, title: &str, unit: &str, better: Better, digits: usize) -> Row {
        Row {
            id: id.into(),
            title: title.into(),
            unit: unit.into(),
            better,
            digits,
            weft: Side::empty(),
            linux: Side::empty(),
            note: None,
        }
    }

    /// weft median / Linux median, when both exist and Linux's is not zero.
    pub fn ratio(&self) -> Option<f64> {
        let (w, l) = (self.weft.median()?, self.linux.median()?);
        (l != 0.0).then_some(w / l)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "scenario": self.title,
            "unit": self.unit,
            "better": self.better.as_str(),
            "weft": self.weft.to_json(),
            "linux": self.linux.to_json(),
            "ratio_weft_over_linux": self.ratio(),
            "note": self.note,
        })
    }
}

/// The whole run: rows plus what produced them.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    /// Free-form facts about the run (rounds, accel, kernel version, ...).
    pub meta: Vec<(String, Value)>,
    /// Lines printed after the table (e.g. what each VM negotiated).
    pub notes: Vec<String>,
}

impl Report {
    pub fn row_mut(&mut self, id: &str) -> Option<&mut Row> {
        self.rows.iter_mut().find(|r| r.id == id)
    }

    pub fn to_json(&self) -> Value {
        let meta: serde_json::Map<String, Value> = self.meta.iter().cloned().collect();
        json!({
            "weft_bench": 1,
            "meta": meta,
            "rows": self.rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        })
    }

    /// The text table, then one line per note and per missing/failed side.
    pub fn render(&self) -> String {
        let mut cells = vec![[
            "scenario",
            "unit",
            "weft",
            "linux",
            "weft/linux",
            "weft min–max",
            "linux min–max",
        ]
        .map(String::from)];
        for r in &self.rows {
            let unit = format!(
                "{} ({})",
                r.unit,
                if r.better == Better::Higher {
                    "↑"
                } else {
                    "↓"
                }
            );
            cells.push([
                r.title.clone(),
                unit,
                r.weft.cell(r.digits),
                r.linux.cell(r.digits),
                r.ratio()
                    .map(|x| format!("{x:.2}"))
                    .unwrap_or_else(|| "-".into()),
                r.weft.range_cell(r.digits),
                r.linux.range_cell(r.digits),
            ]);
        }
        let mut out = table(&cells);
        for r in &self.rows {
            for (side, s) in [("weft", &r.weft), ("linux", &r.linux)] {
                if let Some(why) = s.reason() {
                    out.push_str(&format!("{} ({side}): {}: {why}\n", r.title, s.status()));
                }
            }
            if let Some(n) = &r.note {
                out.push_str(&format!("{}: note: {n}\n", r.title));
            }
        }
        for n in &self.notes {
            out.push_str(n);
            out.push('\n');
        }
        out
    }
}

fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut width = [0usize; N];
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        let s = Side::Measured(vec![7.0, 2.0, 9.0]);
        assert_eq!(s.min_max(), Some((2.0, 9.0)));
    }

    #[test]
    fn a_failed_run_does_not_hide_good_ones() {
        let mut s = Side::empty();
        s.fail("boom".into());
        assert_eq!(s, Side::Failed("boom".into()));
        let mut s = Side::empty();
        s.push(1.0);
        s.fail("boom".into());
        assert_eq!(s.values(), &[1.0]);
    }

    #[test]
    fn table_and_json_carry_every_row_and_reason() {
        let mut r = Report::default();
        let mut boot = Row::new("boot", "boot to ready", "ms", Better::Lower, 0);
        boot.weft = Side::Measured(vec![200.0, 100.0, 300.0]);
        boot.linux = Side::Measured(vec![4000.0]);
        let mut dns = Row::new("dns", "DNS queries/s", "q/s", Better::Higher, 0);
        dns.weft = Side::Missing("apply refused: unknown field `dns`".into());
        dns.linux = Side::Measured(vec![1000.0, 3000.0]);
        dns.note = Some("dnsmasq".into());
        r.rows = vec![boot, dns];
        let text = r.render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("scenario"));
        assert!(lines[2].starts_with("boot to ready"));
        let boot_cols: Vec<&str> = lines[2].split("  ").filter(|c| !c.is_empty()).collect();
        assert_eq!(boot_cols[2].trim(), "200");
        assert_eq!(boot_cols[3].trim(), "4000");
        assert_eq!(boot_cols[4].trim(), "0.05");
        assert_eq!(boot_cols[5].trim(), "100–300");
        assert!(lines[3].contains("missing") && lines[3].contains("2000"));
        assert!(text.contains("DNS queries/s (weft): missing: apply refused"));
        assert!(text.contains("DNS queries/s: note: dnsmasq"));

        let j = r.to_json();
        let back: Value = serde_json::from_str(&j.to_string()).unwrap();
        let rows = back["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["id"], "boot");
        assert_eq!(rows[0]["weft"]["median"], 200.0);
        assert_eq!(rows[0]["ratio_weft_over_linux"], 0.05);
        assert_eq!(rows[1]["weft"]["status"], "missing");
        assert!(rows[1]["ratio_weft_over_linux"].is_null());
        assert_eq!(rows[1]["linux"]["median"], 2000.0);
    }
}
