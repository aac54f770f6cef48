//! Counters in the Prometheus text format (version 0.0.4), published without locks.
//!
//! A server describes each exported value once, as a [`Metric`] over a snapshot type of
//! its own (its core's stats, table sizes): a name, a help line, a [`Kind`], optional
//! labels, and a function that reads the value from the snapshot. Its driver calls
//! [`Metrics::publish`] after each turn of its loop: one relaxed atomic store per metric,
//! no lock and no allocation on the packet path. [`Metrics::render`] (the HTTP task, on a
//! scrape) reads the atomics; a scrape sees the values of the last published turn.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What a metric's value means to Prometheus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// Only grows (until the process restarts).
    Counter,
    /// Goes up and down (a table's size).
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One exported value: a sample of a metric family. Samples of one family (same name,
/// different labels) must be adjacent in a table; [`Metrics::new`] checks it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Metric<S> {
    /// Family name (`[a-zA-Z_:][a-zA-Z0-9_:]*`; counters end in `_total`).
    pub name: &'static str,
    /// One line of help text.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// Label pairs of this sample (values must not need escaping).
    pub labels: &'static [(&'static str, &'static str)],
    /// Reads the value from a snapshot.
    pub read: fn(&S) -> u64,
}

impl<S> Metric<S> {
    /// A metric without labels.
    pub const fn new(
        name: &'static str,
        help: &'static str,
        kind: Kind,
        read: fn(&S) -> u64,
    ) -> Self {
        Self {
            name,
            help,
            kind,
            labels: &[],
            read,
        }
    }

    /// The same metric with labels (one sample of a family).
    pub const fn with_labels(mut self, labels: &'static [(&'static str, &'static str)]) -> Self {
        self.labels = labels;
        self
    }
}

/// The published values of a table of metrics, and the server's readiness.
#[derive(Debug)]
pub struct Metrics<S: 'static> {
    table: &'static [Metric<S>],
    values: Box<[AtomicU64]>,
    ready: AtomicBool,
}

impl<S> Metrics<S> {
    /// Values for `table`, all zero, not ready.
    ///
    /// # Panics
    ///
    /// If a name is not a valid metric name, or the samples of one family are not
    /// adjacent: a programming error in the static table, caught by any test that builds
    /// it.
    pub fn new(table: &'static [Metric<S>]) -> Self {
        for (i, metric) in table.iter().enumerate() {
            assert!(valid_name(metric.name), "bad metric name {}", metric.name);
            for (label, _) in metric.labels {
                assert!(valid_name(label), "bad label name {label}");
            }
            let earlier = table[..i].iter().rposition(|m| m.name == metric.name);
            assert!(
                earlier.is_none_or(|at| at + 1 == i),
                "samples of {} are not adjacent",
                metric.name
            );
        }
        Self {
            table,
            values: table.iter().map(|_| AtomicU64::new(0)).collect(),
            ready: AtomicBool::new(false),
        }
    }

    /// Stores every value of `snapshot` (relaxed: each value is atomic on its own; a
    /// scrape may mix two consecutive turns, which Prometheus tolerates).
    pub fn publish(&self, snapshot: &S) {
        for (metric, value) in self.table.iter().zip(self.values.iter()) {
            value.store((metric.read)(snapshot), Ordering::Relaxed);
        }
    }

    /// The value of the first sample named `name` (tests, logs).
    pub fn get(&self, name: &str) -> Option<u64> {
        let at = self.table.iter().position(|m| m.name == name)?;
        Some(self.values[at].load(Ordering::Relaxed))
    }

    /// Marks the server ready (socket bound, storage open) or not (shutting down).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the server said it is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The text exposition: `# HELP` and `# TYPE` once per family, then its samples.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(self.table.len() * 96);
        let mut family = "";
        for (metric, value) in self.table.iter().zip(self.values.iter()) {
            if metric.name != family {
                family = metric.name;
                let _ = writeln!(out, "# HELP {} {}", metric.name, metric.help);
                let _ = writeln!(out, "# TYPE {} {}", metric.name, metric.kind.as_str());
            }
            out.push_str(metric.name);
            if !metric.labels.is_empty() {
                out.push('{');
                for (i, (label, label_value)) in metric.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{label}=\"{label_value}\"");
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", value.load(Ordering::Relaxed));
        }
        out
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Snap {
        a: u64,
        b: u64,
        c: u64,
    }

    static TABLE: &[Metric<Snap>] = &[
        Metric::new("x_total", "X things.", Kind::Counter, |s| s.a),
        Metric::new("refused_total", "Refusals.", Kind::Counter, |s: &Snap| s.b)
            .with_labels(&[("reason", "rate")]),
        Metric::new("refused_total", "Refusals.", Kind::Counter, |s: &Snap| s.c)
            .with_labels(&[("reason", "full")]),
    ];

    #[test]
    fn renders_families_once_with_their_samples() {
        let metrics = Metrics::new(TABLE);
        metrics.publish(&Snap { a: 1, b: 2, c: 3 });
        assert_eq!(
            metrics.render(),
            "# HELP x_total X things.\n# TYPE x_total counter\nx_total 1\n\
             # HELP refused_total Refusals.\n# TYPE refused_total counter\n\
             refused_total{reason=\"rate\"} 2\nrefused_total{reason=\"full\"} 3\n"
        );
        assert_eq!(metrics.get("refused_total"), Some(2));
        assert_eq!(metrics.get("nope"), None);
    }

    #[test]
    fn readiness_is_off_until_set() {
        let metrics = Metrics::new(TABLE);
        assert!(!metrics.is_ready());
        metrics.set_ready(true);
        assert!(metrics.is_ready());
    }

    static SPLIT: &[Metric<Snap>] = &[
        Metric::new("a_total", "A.", Kind::Counter, |s| s.a),
        Metric::new("b_total", "B.", Kind::Counter, |s| s.b),
        Metric::new("a_total", "A.", Kind::Counter, |s| s.c),
    ];

    #[test]
    #[should_panic(expected = "not adjacent")]
    fn a_split_family_is_refused() {
        let _ = Metrics::new(SPLIT);
    }

    static BAD: &[Metric<Snap>] = &[Metric::new("1bad", "B.", Kind::Gauge, |s| s.a)];

    #[test]
    #[should_panic(expected = "bad metric name")]
    fn a_bad_name_is_refused() {
        let _ = Metrics::new(BAD);
    }
}
