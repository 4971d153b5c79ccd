//! Prometheus metrics for both binaries, in the text exposition format 0.0.4.
//!
//! This module owns the metric types — [`Counter`], [`Gauge`], [`FloatGauge`],
//! [`Histogram`] (static bucket bounds) and labelled [`Family`]s of them — and the
//! [`Registry`] that renders them: HELP and TYPE headers, label-value escaping, families
//! sorted by name and series by label values (as the `prometheus` crate did), and the
//! `process_*` metrics read from `/proc/self`, with the names, types and HELP texts of
//! the `prometheus` crate's process collector (upstream's Go binaries export process
//! metrics too).
//!
//! Values are atomics, so counting (per packet, on the hot path) takes no lock; only
//! resolving a family's label set does, and callers that count per packet resolve it
//! once. A family renders a label set only once it has been touched (no zero series up
//! front), as upstream's vectors do.
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::ops::Deref;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use konnectivity_tunnel::budget::MemoryBudget;

/// A metric type a [`Registry`] renders, alone or in a [`Family`].
pub trait Metric: Send + Sync + 'static {
    /// The `# TYPE` word.
    const TYPE: &'static str;
    /// What a new one needs: `()`, or a histogram's bucket bounds.
    type Config: Copy + std::fmt::Debug + Send + Sync + 'static;
    /// A zero metric.
    fn new(c: Self::Config) -> Self;
    /// Writes its samples; `labels` is empty or `name="value",` pairs, escaped.
    fn write(&self, o: &mut String, name: &str, labels: &str);
}

/// A counter. It derefs to its atomic for code that counts with `fetch_add` directly.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.inc_by(1);
    }
    /// Adds `n`.
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// An integer gauge. It derefs to its atomic, like [`Counter`].
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Relaxed);
    }
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }
    /// The value.
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// A gauge with a fractional value.
#[derive(Debug, Default)]
pub struct FloatGauge(AtomicU64);

impl FloatGauge {
    /// Sets the value.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Relaxed);
    }
    /// The value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }
}

/// [`Metric`] for a label-less value type (and `Deref` to its atomic).
macro_rules! scalar {
    ($t:ident, $kind:literal, |$m:ident| $value:expr $(, deref $atomic:ty)?) => {
        impl Metric for $t {
            const TYPE: &'static str = $kind;
            type Config = ();
            fn new((): ()) -> Self {
                Self::default()
            }
            fn write(&self, o: &mut String, name: &str, labels: &str) {
                let $m = self;
                sample(o, name, "", labels, $value);
            }
        }
        $(impl Deref for $t {
            type Target = $atomic;
            fn deref(&self) -> &$atomic {
                &self.0
            }
        })?
    };
}

scalar!(Counter, "counter", |m| m.get(), deref AtomicU64);
scalar!(Gauge, "gauge", |m| m.get(), deref AtomicI64);
scalar!(FloatGauge, "gauge", |m| Float(m.get()));

/// The `prometheus` crate's (and Go client's) default buckets, in seconds.
pub const DEFAULT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram over static bucket bounds (ascending; `+Inf` is implied).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket, not cumulative; the last slot counts values above every bound.
    counts: Box<[AtomicU64]>,
    /// The sum of observations, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Relaxed);
        }
        let _ = self.sum.fetch_update(Relaxed, Relaxed, |s| {
            Some((f64::from_bits(s) + v).to_bits())
        });
    }
}

impl Metric for Histogram {
    const TYPE: &'static str = "histogram";
    type Config = &'static [f64];
    fn new(bounds: &'static [f64]) -> Self {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            bounds,
            counts,
            sum: AtomicU64::new(0),
        }
    }
    fn write(&self, o: &mut String, name: &str, labels: &str) {
        let mut total = 0;
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or("+Inf".into(), |b| Float(*b).to_string());
            sample(o, name, "_bucket", &format!("{labels}le=\"{le}\","), total);
        }
        sample(
            o,
            name,
            "_sum",
            labels,
            Float(f64::from_bits(self.sum.load(Relaxed))),
        );
        sample(o, name, "_count", labels, total);
    }
}

/// A family's label values (sorted by label name) and their metric.
type Child<M> = (Box<[Box<str>]>, Arc<M>);

/// One metric per label set, created when a label set is first touched.
#[derive(Debug)]
pub struct Family<M: Metric> {
    /// The label names, sorted (the order they are rendered in).
    names: Box<[&'static str]>,
    /// For each sorted name, where its value is in the caller's `values`.
    order: Box<[usize]>,
    config: M::Config,
    /// Children by label values (in `names` order), sorted.
    children: Mutex<Vec<Child<M>>>,
}

impl<M: Metric + std::fmt::Debug> Family<M> {
    fn new(labels: &[&'static str], config: M::Config) -> Self {
        let mut order: Vec<usize> = (0..labels.len()).collect();
        order.sort_by_key(|i| labels[*i]);
        Self {
            names: order.iter().map(|i| labels[*i]).collect(),
            order: order.into(),
            config,
            children: Mutex::new(Vec::new()),
        }
    }

    /// The position of `values` (in declaration order) among the children.
    fn find(children: &[Child<M>], order: &[usize], values: &[&str]) -> Result<usize, usize> {
        let wanted = || order.iter().map(|i| values.get(*i).copied().unwrap_or(""));
        children.binary_search_by(|(k, _)| k.iter().map(|v| &**v).cmp(wanted()))
    }

    /// The metric for `values` (in the order the labels were declared; a missing value
    /// is empty), created at first use.
    pub fn with(&self, values: &[&str]) -> Arc<M> {
        let mut children = self.children.lock().unwrap_or_else(PoisonError::into_inner);
        match Self::find(&children, &self.order, values) {
            Ok(i) => children[i].1.clone(),
            Err(i) => {
                let key = self
                    .order
                    .iter()
                    .map(|j| values.get(*j).copied().unwrap_or("").into());
                let m = Arc::new(M::new(self.config));
                children.insert(i, (key.collect(), m.clone()));
                m
            }
        }
    }

    /// The metric for `values` if that label set has been touched.
    pub fn get(&self, values: &[&str]) -> Option<Arc<M>> {
        let children = self.children.lock().unwrap_or_else(PoisonError::into_inner);
        let i = Self::find(&children, &self.order, values).ok()?;
        Some(children[i].1.clone())
    }

    fn write(&self, o: &mut String, name: &str) {
        let children = self.children.lock().unwrap_or_else(PoisonError::into_inner);
        for (values, m) in children.iter() {
            let mut labels = String::new();
            for (n, v) in self.names.iter().zip(values) {
                let _ = write!(labels, "{n}=\"{}\",", escape(v, true));
            }
            m.write(o, name, &labels);
        }
    }
}

/// Writes a family's samples under its name.
type Render = Box<dyn Fn(&mut String, &str) + Send + Sync>;

/// How a family's samples are produced.
enum Source {
    Metric(Render),
    /// A `process_*` value, read when rendering; no family without it.
    Process(fn(&Process) -> Option<f64>),
}

/// Which binary a [`Registry`] serves ([`Registry::shared`] words its HELP texts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    /// proxy-server.
    Server,
    /// proxy-agent.
    Agent,
}

/// A set of metric families and their rendering.
#[derive(Default)]
pub struct Registry {
    /// By name: HELP, TYPE and the samples.
    families: BTreeMap<String, (Cow<'static, str>, &'static str, Source)>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.families.keys()).finish()
    }
}

impl Registry {
    fn add(
        &mut self,
        name: String,
        help: impl Into<Cow<'static, str>>,
        kind: &'static str,
        s: Source,
    ) {
        debug_assert!(
            !self.families.contains_key(&name),
            "{name} registered twice"
        );
        self.families.insert(name, (help.into(), kind, s));
    }

    /// A metric without labels.
    pub fn metric<M: Metric>(
        &mut self,
        name: impl Into<String>,
        help: &'static str,
        c: M::Config,
    ) -> Arc<M> {
        let m = Arc::new(M::new(c));
        let w = m.clone();
        let write = Box::new(move |o: &mut String, name: &str| w.write(o, name, ""));
        self.add(name.into(), help, M::TYPE, Source::Metric(write));
        m
    }

    /// A labelled family; label sets are rendered once touched.
    pub fn family<M: Metric + std::fmt::Debug>(
        &mut self,
        name: impl Into<String>,
        help: &'static str,
        labels: &[&'static str],
        c: M::Config,
    ) -> Arc<Family<M>> {
        let f = Arc::new(Family::new(labels, c));
        let w = f.clone();
        let write = Box::new(move |o: &mut String, name: &str| w.write(o, name));
        self.add(name.into(), help, M::TYPE, Source::Metric(write));
        f
    }

    /// A counter.
    pub fn counter(&mut self, name: impl Into<String>, help: &'static str) -> Arc<Counter> {
        self.metric(name, help, ())
    }

    /// An integer gauge.
    pub fn gauge(&mut self, name: impl Into<String>, help: &'static str) -> Arc<Gauge> {
        self.metric(name, help, ())
    }

    /// A label-less metric of type `M` kept elsewhere (`r.read::<Counter, _>(…)`),
    /// read by `value` when rendering.
    pub fn read<M: Metric, V: Display>(
        &mut self,
        name: impl Into<String>,
        help: impl Into<Cow<'static, str>>,
        value: impl Fn() -> V + Send + Sync + 'static,
    ) {
        let write = Box::new(move |o: &mut String, name: &str| sample(o, name, "", "", value()));
        self.add(name.into(), help, M::TYPE, Source::Metric(write));
    }

    /// What both binaries export beside their own metrics: `process_*`, and under
    /// `prefix` the certificate reload counters (kept by `konnectivity_tls` for the whole
    /// process) and the process-wide buffer budget, read from `budget` when rendered
    /// (`buffered_bytes`, `buffer_budget_bytes`, `stream_pauses_total`,
    /// `stalled_connections_total`). `binary` picks the words of their HELP texts.
    pub fn shared(&mut self, prefix: &str, binary: Binary, budget: &Arc<MemoryBudget>) {
        let (certificate, here, consumers, peer) = match binary {
            Binary::Agent => ("the client certificate", "agent", "destinations", "server"),
            Binary::Server => (
                "a serving certificate",
                "server",
                "frontends (and, between our peers, for agents)",
                "agent",
            ),
        };
        self.process();
        self.read::<Counter, _>(
            format!("{prefix}certificate_reloads_total"),
            format!(
                "Times {certificate} was re-read after its files changed; new connections use it."
            ),
            || konnectivity_tls::reloads().0,
        );
        self.read::<Counter, _>(
            format!("{prefix}certificate_reload_failures_total"),
            "Changed certificate files that did not load; the previous certificate stays in use.",
            || konnectivity_tls::reloads().1,
        );
        let b = budget.clone();
        self.read::<Gauge, _>(
            format!("{prefix}buffered_bytes"),
            format!("Data queued on the {here} for {consumers} that have not taken it yet, summed over connections."),
            move || b.used() as i64,
        );
        let limit = budget.limit() as i64;
        self.read::<Gauge, _>(
            format!("{prefix}buffer_budget_bytes"),
            format!("The process-wide budget of queued bytes (--max-buffered-bytes); {peer} streams pause above it. 0 is unlimited."),
            move || limit,
        );
        let b = budget.clone();
        self.read::<Counter, _>(
            format!("{prefix}stream_pauses_total"),
            format!("Times the reader of a {peer} stream paused because a connection or the process was over its buffer budget ({peer}s without flow control)."),
            move || b.pauses(),
        );
        let b = budget.clone();
        self.read::<Counter, _>(
            format!("{prefix}stalled_connections_total"),
            "Connections closed because the side receiving their data made no progress within --stall-timeout while over its buffer budget.",
            move || b.stalled(),
        );
    }

    /// A family of counters.
    pub fn counters(
        &mut self,
        name: impl Into<String>,
        help: &'static str,
        labels: &[&'static str],
    ) -> Arc<Family<Counter>> {
        self.family(name, help, labels, ())
    }

    /// The `process_*` metrics, read from `/proc/self` at each render.
    pub fn process(&mut self) {
        for (name, help, kind, read) in PROCESS {
            self.add(name.into(), help, kind, Source::Process(read));
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(16 << 10);
        let mut process = None;
        for (name, (help, kind, source)) in &self.families {
            let header = |o: &mut String| {
                let _ = write!(
                    o,
                    "# HELP {name} {}\n# TYPE {name} {kind}\n",
                    escape(help, false)
                );
            };
            match source {
                Source::Metric(write) => {
                    header(&mut o);
                    write(&mut o, name);
                }
                Source::Process(read) => {
                    if let Some(v) = read(process.get_or_insert_with(Process::read)) {
                        header(&mut o);
                        sample(&mut o, name, "", "", Float(v));
                    }
                }
            }
        }
        o
    }
}

/// Writes `name{suffix}{labels} value`; `labels` is empty or ends in a comma.
fn sample(o: &mut String, name: &str, suffix: &str, labels: &str, v: impl Display) {
    let _ = match labels.strip_suffix(',') {
        Some(l) => writeln!(o, "{name}{suffix}{{{l}}} {v}"),
        None => writeln!(o, "{name}{suffix} {v}"),
    };
}

/// A float as the exposition writes it (`+Inf`, `-Inf`, `NaN`; never an exponent).
struct Float(f64);

impl Display for Float {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            v if v.is_nan() => f.write_str("NaN"),
            v if v == f64::INFINITY => f.write_str("+Inf"),
            v if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            v => write!(f, "{v}"),
        }
    }
}

/// Escapes `\` and newlines, and `"` in label values.
fn escape(v: &str, quote: bool) -> Cow<'_, str> {
    if !(v.contains(['\\', '\n']) || quote && v.contains('"')) {
        return v.into();
    }
    let mut o = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '"' if quote => o.push_str("\\\""),
            c => o.push(c),
        }
    }
    o.into()
}

/// Kernel clock ticks per second in `/proc` (`USER_HZ`, 100 on every Linux ABI we run
/// on; reading it needs `sysconf`, which needs `unsafe`).
const USER_HZ: f64 = 100.0;

/// One reading of `/proc/self`; a value that could not be read is `None`.
#[derive(Debug, Default)]
struct Process {
    cpu_seconds: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
    virtual_bytes: Option<f64>,
    resident_bytes: Option<f64>,
    start_time: Option<f64>,
    threads: Option<f64>,
}

type ProcessFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Process) -> Option<f64>,
);

/// The `prometheus` crate's process collector's families, names and HELP texts.
const PROCESS: [ProcessFamily; 7] = [
    (
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        "counter",
        |p| p.cpu_seconds,
    ),
    (
        "process_open_fds",
        "Number of open file descriptors.",
        "gauge",
        |p| p.open_fds,
    ),
    (
        "process_max_fds",
        "Maximum number of open file descriptors.",
        "gauge",
        |p| p.max_fds,
    ),
    (
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        "gauge",
        |p| p.virtual_bytes,
    ),
    (
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        "gauge",
        |p| p.resident_bytes,
    ),
    (
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        "gauge",
        |p| p.start_time,
    ),
    (
        "process_threads",
        "Number of OS threads in the process.",
        "gauge",
        |p| p.threads,
    ),
];

impl Process {
    fn read() -> Self {
        let file = |f: &str| std::fs::read_to_string(format!("/proc/{f}")).ok();
        // The fields after the command name, which may hold spaces and parentheses.
        let stat = file("self/stat");
        let stat: Vec<&str> = stat
            .as_deref()
            .and_then(|s| s.rsplit_once(')'))
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // `man 5 proc`: field n (from 1) is stat[n - 3].
        let field = |n: usize| stat.get(n - 3)?.parse::<f64>().ok();
        let line_value = |text: Option<String>, prefix: &str, at: usize| {
            let text = text?;
            let line = text.lines().find(|l| l.starts_with(prefix))?;
            line.split_whitespace().nth(at)?.parse::<f64>().ok()
        };
        let boot = line_value(file("stat"), "btime ", 1);
        Self {
            cpu_seconds: field(14).zip(field(15)).map(|(u, s)| (u + s) / USER_HZ),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as f64),
            max_fds: line_value(file("self/limits"), "Max open files", 3),
            virtual_bytes: field(23),
            resident_bytes: line_value(file("self/status"), "VmRSS:", 1).map(|kb| kb * 1024.0),
            start_time: boot.zip(field(22)).map(|(b, t)| b + t / USER_HZ),
            threads: field(20),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_metrics_render_the_budgets_limit_and_usage_with_the_binarys_words() {
        let mut r = Registry::default();
        let budget = MemoryBudget::new(4096, std::time::Duration::from_secs(1));
        r.shared("x_", Binary::Agent, &budget);
        let text = r.render();
        for line in [
            "x_buffer_budget_bytes 4096",
            "x_buffered_bytes 0",
            "x_stream_pauses_total 0",
            "x_stalled_connections_total 0",
            "# TYPE x_buffered_bytes gauge",
            "# TYPE x_stream_pauses_total counter",
            "# HELP x_buffered_bytes Data queued on the agent for destinations that have not taken it yet, summed over connections.",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
        assert!(text.contains("server streams pause above it"));
    }

    #[test]
    fn families_render_sorted_with_touched_label_sets_only() {
        let mut r = Registry::default();
        let c = r.counter("b_total", "B.");
        let f = r.counters("a_total", "A \\ help.\nmore", &["zone", "code"]);
        let g = r.metric::<FloatGauge>("c", "C.", ());
        r.read::<Counter, _>("e_total", "E.", || 7);
        let h = r.family::<Histogram>("d_seconds", "D.", &["code"], &[0.000001, 0.5, 2.0]);
        c.inc_by(3);
        f.with(&["z\"1\n", "500"]).inc();
        f.with(&["a\\", "500"]).inc_by(2);
        f.with(&["z\"1\n", "200"]).inc();
        g.set(1.5);
        let d = h.with(&["200"]);
        d.observe(0.000001);
        d.observe(1.0);
        d.observe(f64::INFINITY);
        assert_eq!(f.get(&["nope", "500"]).map(|c| c.get()), None);
        assert_eq!(f.get(&["a\\", "500"]).map(|c| c.get()), Some(2));
        assert_eq!(
            r.render(),
            "# HELP a_total A \\\\ help.\\nmore\n# TYPE a_total counter\n\
             a_total{code=\"200\",zone=\"z\\\"1\\n\"} 1\n\
             a_total{code=\"500\",zone=\"a\\\\\"} 2\n\
             a_total{code=\"500\",zone=\"z\\\"1\\n\"} 1\n\
             # HELP b_total B.\n# TYPE b_total counter\nb_total 3\n\
             # HELP c C.\n# TYPE c gauge\nc 1.5\n\
             # HELP d_seconds D.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{code=\"200\",le=\"0.000001\"} 1\n\
             d_seconds_bucket{code=\"200\",le=\"0.5\"} 1\n\
             d_seconds_bucket{code=\"200\",le=\"2\"} 2\n\
             d_seconds_bucket{code=\"200\",le=\"+Inf\"} 3\n\
             d_seconds_sum{code=\"200\"} +Inf\n\
             d_seconds_count{code=\"200\"} 3\n\
             # HELP e_total E.\n# TYPE e_total counter\ne_total 7\n"
        );
    }

    #[test]
    fn process_metrics_are_read_from_proc() {
        let mut r = Registry::default();
        r.process();
        let text = r.render();
        for (name, help, kind, _) in PROCESS {
            assert!(
                text.contains(&format!(
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} "
                )),
                "{name}:\n{text}"
            );
        }
        let p = Process::read();
        assert!(p.threads.is_some_and(|t| t >= 1.0), "{p:?}");
        assert!(p.resident_bytes.is_some_and(|b| b > 1e5), "{p:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        assert!(
            p.start_time
                .is_some_and(|s| s <= now + 1.0 && s > now - 86400.0 * 365.0),
            "{p:?}"
        );
    }
}
