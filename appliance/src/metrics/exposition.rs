//! The Prometheus text exposition format (version 0.0.4): a registry of metric
//! families, each with its name, HELP text, TYPE and samples, rendered with the
//! format's escaping. Samples of one family are kept together whatever order they are
//! added in. It knows nothing of weft; it never panics on a name or label it is given
//! (a name outside the format's alphabet is rewritten to fit).

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

/// The `Content-Type` of the rendered text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A family's TYPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only ever grows (its name ends in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// A sample's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    Int(u64),
    Float(f64),
}

/// Label names and values of one sample, in order.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone)]
struct Family {
    name: String,
    help: String,
    kind: Kind,
    samples: Vec<(Labels, Sample)>,
}

/// Metric families in the order they were first added.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    families: Vec<Family>,
    index: BTreeMap<String, usize>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds a sample to family `name` (created with `help` and `kind` on its first
    /// sample; later ones keep the first help and kind).
    pub fn add(&mut self, name: &str, help: &str, kind: Kind, labels: Labels, value: Sample) {
        let name = sanitize(name);
        let i = match self.index.get(&name) {
            Some(i) => *i,
            None => {
                self.families.push(Family {
                    name: name.clone(),
                    help: help.into(),
                    kind,
                    samples: Vec::new(),
                });
                self.index.insert(name, self.families.len() - 1);
                self.families.len() - 1
            }
        };
        self.families[i].samples.push((labels, value));
    }

    pub fn counter(&mut self, name: &str, help: &str, labels: Labels, value: u64) {
        self.add(name, help, Kind::Counter, labels, Sample::Int(value));
    }

    pub fn gauge(&mut self, name: &str, help: &str, labels: Labels, value: u64) {
        self.add(name, help, Kind::Gauge, labels, Sample::Int(value));
    }

    pub fn gauge_f64(&mut self, name: &str, help: &str, labels: Labels, value: f64) {
        self.add(name, help, Kind::Gauge, labels, Sample::Float(value));
    }

    /// The families' names, kinds and help texts, in order.
    pub fn families(&self) -> impl Iterator<Item = (&str, Kind, &str)> {
        self.families
            .iter()
            .map(|f| (f.name.as_str(), f.kind, f.help.as_str()))
    }

    /// The value of the sample of `name` whose labels include every pair of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<Sample> {
        let f = &self.families[*self.index.get(name)?];
        f.samples
            .iter()
            .find(|(have, _)| {
                labels
                    .iter()
                    .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
            })
            .map(|(_, v)| *v)
    }

    /// Appends the exposition text.
    pub fn render_into(&self, out: &mut String) {
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(&f.help));
            let kind = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# TYPE {} {kind}", f.name);
            for (labels, value) in &f.samples {
                out.push_str(&f.name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{}=\"{}\"", sanitize(k), escape_label(v));
                    }
                    out.push('}');
                }
                let _ = match value {
                    Sample::Int(n) => writeln!(out, " {n}"),
                    Sample::Float(x) if x.is_finite() => writeln!(out, " {x}"),
                    Sample::Float(x) if x.is_nan() => writeln!(out, " NaN"),
                    Sample::Float(x) if *x > 0.0 => writeln!(out, " +Inf"),
                    Sample::Float(_) => writeln!(out, " -Inf"),
                };
            }
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        self.render_into(&mut s);
        s
    }
}

/// A metric or label name in the format's alphabet (`[a-zA-Z_][a-zA-Z0-9_]*`; `:` is
/// for recording rules): anything else becomes `_`.
fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

/// HELP text: `\` and newlines escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A label value: `\`, `"` and newlines escaped.
fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn families_render_together_with_help_type_and_escaping() {
        let mut r = Registry::new();
        let l = |v: &str| vec![("nic", String::from(v))];
        r.counter("weft_rx_total", "Frames\nreceived \\ all", l("uplink"), 3);
        r.gauge_f64("weft_uptime_seconds", "Since boot.", vec![], 1.5);
        r.counter("weft_rx_total", "ignored", l("li\"nk\\\n"), u64::MAX);
        r.gauge("bad-name", "x", vec![("9x", "v".into())], 0);
        assert_eq!(
            r.render(),
            "# HELP weft_rx_total Frames\\nreceived \\\\ all\n\
             # TYPE weft_rx_total counter\n\
             weft_rx_total{nic=\"uplink\"} 3\n\
             weft_rx_total{nic=\"li\\\"nk\\\\\\n\"} 18446744073709551615\n\
             # HELP weft_uptime_seconds Since boot.\n\
             # TYPE weft_uptime_seconds gauge\n\
             weft_uptime_seconds 1.5\n\
             # HELP bad_name x\n\
             # TYPE bad_name gauge\n\
             bad_name{_9x=\"v\"} 0\n"
        );
        assert_eq!(
            r.value("weft_rx_total", &[("nic", "uplink")]),
            Some(Sample::Int(3))
        );
    }
}
