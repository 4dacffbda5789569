//! Recording one phase: every latency goes into an HdrHistogram (in
//! microseconds, 3 significant digits), and into one histogram per second
//! of the run for the latency-over-time chart. Requests that started (or,
//! open loop, were scheduled) before the end of the warm-up are not counted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Longest latency a histogram holds; longer ones are clamped to it.
const MAX_US: u64 = 300_000_000;

/// Percentiles drawn in the percentile plot and kept in the JSON result.
pub const PERCENTILES: [f64; 16] =
    [0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 97.5, 99.0, 99.5, 99.9, 99.95, 99.99, 99.995, 99.999, 100.0];

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("static histogram bounds are valid")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).clamp(1, MAX_US));
}

/// What one phase measured, before it is summarized.
pub struct Recorder {
    /// The end of the warm-up: second 0 of the timeline.
    origin: Instant,
    total: Histogram<u64>,
    /// Latency by the second the request started (or was scheduled).
    by_start: Vec<Histogram<u64>>,
    /// Completions by the second they completed.
    done: Vec<u64>,
    /// Failures by the second the request started.
    failed: Vec<u64>,
    errors: BTreeMap<String, u64>,
    /// Per-stage timings of the order path, by stage name.
    stages: BTreeMap<&'static str, Histogram<u64>>,
    last_done: Option<Instant>,
}

impl Recorder {
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            total: histogram(),
            by_start: Vec::new(),
            done: Vec::new(),
            failed: Vec::new(),
            errors: BTreeMap::new(),
            stages: BTreeMap::new(),
            last_done: None,
        }
    }

    /// Whether a request started at `t0` is measured (not warm-up).
    pub fn counts(&self, t0: Instant) -> bool {
        t0 >= self.origin
    }

    /// A request started (or scheduled) at `t0` succeeded at `end`.
    pub fn ok(&mut self, t0: Instant, end: Instant) {
        if !self.counts(t0) {
            return;
        }
        let latency = end.saturating_duration_since(t0);
        record(&mut self.total, latency);
        let s = t0.duration_since(self.origin).as_secs() as usize;
        if self.by_start.len() <= s {
            self.by_start.resize_with(s + 1, || Histogram::new_with_bounds(1, MAX_US, 2).expect("static bounds"));
        }
        record(&mut self.by_start[s], latency);
        let c = end.saturating_duration_since(self.origin).as_secs() as usize;
        if self.done.len() <= c {
            self.done.resize(c + 1, 0);
        }
        self.done[c] += 1;
        self.last_done = Some(self.last_done.map_or(end, |l| l.max(end)));
    }

    pub fn error(&mut self, t0: Instant, kind: impl Into<String>) {
        if self.counts(t0) {
            *self.errors.entry(kind.into()).or_default() += 1;
            let s = t0.duration_since(self.origin).as_secs() as usize;
            if self.failed.len() <= s {
                self.failed.resize(s + 1, 0);
            }
            self.failed[s] += 1;
        }
    }

    /// One stage of a measured request took `d`.
    pub fn stage(&mut self, t0: Instant, name: &'static str, d: Duration) {
        if self.counts(t0) {
            record(self.stages.entry(name).or_insert_with(histogram), d);
        }
    }

    /// Summarizes the phase; `window` is how long it offered load after the
    /// warm-up (throughput is completions over that window, or over the time
    /// to the last completion if the tail ran longer). A zero `window` means
    /// the load stopped early: the time to the last completion counts.
    pub fn summarize(&self, window: Duration) -> Measured {
        let tail = self.last_done.map_or(Duration::ZERO, |l| l.saturating_duration_since(self.origin));
        let secs = window.max(tail).as_secs_f64().max(1e-9);
        let seconds = self.by_start.len().max(self.done.len()).max(self.failed.len());
        let empty = Histogram::<u64>::new(2).expect("static precision");
        let timeline = (0..seconds)
            .map(|t| {
                let h = self.by_start.get(t).unwrap_or(&empty);
                Second {
                    t: t as u32,
                    completed: self.done.get(t).copied().unwrap_or(0),
                    failed: self.failed.get(t).copied().unwrap_or(0),
                    p50_ms: ms(h.value_at_quantile(0.5)),
                    p99_ms: ms(h.value_at_quantile(0.99)),
                    max_ms: ms(h.max()),
                }
            })
            .collect();
        Measured {
            ok: self.total.len(),
            errors: self.errors.clone(),
            throughput_per_s: self.total.len() as f64 / secs,
            latency: Latency::of(&self.total),
            stages: self.stages.iter().map(|(k, h)| ((*k).to_owned(), Latency::of(h))).collect(),
            timeline,
            percentiles: PERCENTILES
                .iter()
                .map(|&p| (p, if self.total.is_empty() { 0.0 } else { ms(self.total.value_at_percentile(p)) }))
                .collect(),
        }
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Latency percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// One second of a phase's timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub t: u32,
    /// Requests that completed in this second.
    pub completed: u64,
    /// Requests started in this second that failed.
    pub failed: u64,
    /// Latency of requests started in this second.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// A phase's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    pub throughput_per_s: f64,
    pub latency: Latency,
    pub stages: BTreeMap<String, Latency>,
    pub timeline: Vec<Second>,
    /// (percentile, latency ms) pairs for the percentile plot.
    pub percentiles: Vec<(f64, f64)>,
}
