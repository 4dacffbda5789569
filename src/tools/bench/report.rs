//! The bench's result: one serializable value, printed as a summary table,
//! written as `result.json`, and drawn as `report.svg` (latency and
//! throughput over time per phase, and a percentile plot of all phases).

use std::fmt::Write;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::procfs::{Machine, Usage};
use super::record::Measured;
use super::reference::Rate;
use super::svg::{self, Panel, Series, COLORS};

/// The targets the shop is held to (issue: performance).
pub const TARGET_ORDERS_PER_S: f64 = 5000.0;
pub const TARGET_OPEN_RATE: f64 = 1000.0;
pub const TARGET_OPEN_P99_MS: f64 = 50.0;
pub const TARGET_CATALOG_PER_S: f64 = 30_000.0;
pub const TARGET_NODE_MEMORY_BYTES: f64 = 100e6;
/// Clients that poll: confirmed orders/s and p99 POST → confirmed as the
/// client sees it, polling every 20 ms; and with long polls.
pub const TARGET_POLL_PER_S: f64 = 6000.0;
pub const TARGET_POLL_P99_MS: f64 = 100.0;
pub const TARGET_LONG_POLL_PER_S: f64 = 8000.0;

#[derive(Debug, Serialize)]
pub struct BenchResult {
    pub started_at: String,
    /// The command line that produced this result.
    pub command: String,
    pub machine: Machine,
    pub settings: Settings,
    pub references: References,
    pub phases: Vec<PhaseResult>,
    pub ratios: Vec<Ratio>,
    pub targets: Vec<Target>,
    /// Peak memory of each process over the whole run.
    pub memory: Vec<Usage>,
    /// The SQLite files of the first shop the bench started, at its end.
    pub disk: Option<Disk>,
}

#[derive(Debug, Serialize)]
pub struct Settings {
    pub shop: String,
    /// The services' database: SQLite (with `synchronous`) or PostgreSQL.
    pub store: String,
    pub synchronous: String,
    pub log_filter: String,
    /// How order status is observed (`bus` or `poll`).
    pub observe: String,
    pub stages: bool,
    /// Messages a consumer applies per transaction, at most.
    pub consumer_batch: usize,
    /// Outbox events a relay publishes per round, at most.
    pub relay_batch: usize,
    pub concurrency: usize,
    pub catalog_concurrency: usize,
    pub open_rates_per_s: Vec<f64>,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    pub reference_secs: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct References {
    pub sqlite_single: Option<Rate>,
    pub sqlite_batched: Option<Rate>,
    /// The same rows in one statement per commit: SQLite without sqlx's
    /// per-statement round trip.
    pub sqlite_one_statement: Option<Rate>,
    pub broker: Option<Rate>,
    pub baseline: Option<Rate>,
}

#[derive(Debug, Serialize)]
pub struct PhaseResult {
    pub name: String,
    pub description: String,
    /// `closed, 64 clients` or `open, 1000/s`.
    pub mode: String,
    pub concurrency: Option<usize>,
    pub rate_per_s: Option<f64>,
    #[serde(flatten)]
    pub measured: Measured,
    /// CPU and memory of each process during the phase.
    pub resources: Vec<Usage>,
}

#[derive(Debug, Serialize)]
pub struct Ratio {
    pub ours: String,
    pub ours_per_s: f64,
    pub reference: String,
    pub reference_per_s: f64,
    pub fraction: f64,
    pub note: String,
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub target: String,
    pub measured: String,
    /// `None` when this run could not tell (phase skipped, other settings).
    pub met: Option<bool>,
    pub note: String,
}

impl BenchResult {
    pub fn phase(&self, name: &str) -> Option<&PhaseResult> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// Our throughput as a fraction of each reference limit.
    pub fn compute_ratios(&mut self) {
        let Some(orders) = self.phase("order-closed").map(|p| p.measured.throughput_per_s) else { return };
        let r = &self.references;
        let mut out = Vec::new();
        let mut add = |reference: &Option<Rate>, note: &str| {
            if let Some(rf) = reference {
                out.push(Ratio {
                    ours: "confirmed orders/s (closed loop)".into(),
                    ours_per_s: orders,
                    reference: rf.what.clone(),
                    reference_per_s: rf.per_s,
                    fraction: orders / rf.per_s.max(1e-9),
                    note: note.into(),
                });
            }
        };
        add(
            &r.sqlite_single,
            "an order takes 4 consumer messages and 4 outbox rows over 2 databases; batching is what lets it exceed 1",
        );
        add(&r.sqlite_batched, "rows/s of one database at 100 rows per commit");
        add(
            &r.broker,
            "each order is 4 publishes and 5 deliveries (orders/send to 2 services, 2 status events to the front, in-stock), \
             plus 5 to the bench's observer",
        );
        add(&r.baseline, "the same database work per order, with no broker and no HTTP");
        self.ratios = out;
    }

    pub fn compute_targets(&mut self) {
        let mut t = Vec::new();
        match self.phase("order-closed") {
            Some(p) => {
                let m = &p.measured;
                t.push(Target {
                    target: format!("≥ {TARGET_ORDERS_PER_S:.0} confirmed orders/s sustained, end to end"),
                    measured: format!("{:.0} orders/s ({}), {} errors", m.throughput_per_s, p.mode, errors(m)),
                    met: Some(m.throughput_per_s >= TARGET_ORDERS_PER_S),
                    note: String::new(),
                });
            }
            None => t.push(skipped(format!("≥ {TARGET_ORDERS_PER_S:.0} confirmed orders/s"), "order-closed")),
        }
        let mut open = self.phases.iter().filter(|p| p.name == "order-open");
        let at_target = open.clone().find(|p| p.rate_per_s.is_some_and(|r| (r - TARGET_OPEN_RATE).abs() < 1e-6));
        match at_target.or(open.next_back()) {
            Some(p) => {
                let m = &p.measured;
                let rate = p.rate_per_s.unwrap_or(0.0);
                let at_target_rate = (rate - TARGET_OPEN_RATE).abs() < 1e-6;
                t.push(Target {
                    target: format!(
                        "p99 POST → confirmed ≤ {TARGET_OPEN_P99_MS:.0} ms at {TARGET_OPEN_RATE:.0} orders/s, open loop"
                    ),
                    measured: if m.ok == 0 {
                        format!("no order confirmed at {rate:.0}/s offered, {} errors", errors(m))
                    } else {
                        format!(
                            "p99 {:.1} ms at {rate:.0}/s offered, {:.0}/s done, {} errors",
                            m.latency.p99_ms,
                            m.throughput_per_s,
                            errors(m)
                        )
                    },
                    met: at_target_rate.then_some(m.latency.p99_ms <= TARGET_OPEN_P99_MS && m.errors.is_empty()),
                    note: if at_target_rate { String::new() } else { "run at --rate 1000 to check".into() },
                });
            }
            None => t.push(skipped(format!("p99 ≤ {TARGET_OPEN_P99_MS:.0} ms open loop"), "order-open")),
        }
        let poll_20 = format!(
            "≥ {TARGET_POLL_PER_S:.0} confirmed orders/s and p99 POST → confirmed seen ≤ {TARGET_POLL_P99_MS:.0} ms, clients polling every 20 ms"
        );
        match self.phase("order-poll-20ms") {
            Some(p) => {
                let m = &p.measured;
                t.push(Target {
                    target: poll_20,
                    measured: format!(
                        "{:.0} orders/s, p99 {:.1} ms ({}), {} errors",
                        m.throughput_per_s,
                        m.latency.p99_ms,
                        p.mode,
                        errors(m)
                    ),
                    met: Some(m.throughput_per_s >= TARGET_POLL_PER_S && m.latency.p99_ms <= TARGET_POLL_P99_MS),
                    note: String::new(),
                });
            }
            None => t.push(skipped(poll_20, "order-poll-20ms")),
        }
        let long = format!("≥ {TARGET_LONG_POLL_PER_S:.0} confirmed orders/s with long polls");
        match self.phase("order-long-poll") {
            Some(p) => {
                let m = &p.measured;
                t.push(Target {
                    target: long,
                    measured: format!(
                        "{:.0} orders/s, p99 {:.1} ms ({}), {} errors",
                        m.throughput_per_s,
                        m.latency.p99_ms,
                        p.mode,
                        errors(m)
                    ),
                    met: Some(m.throughput_per_s >= TARGET_LONG_POLL_PER_S),
                    note: String::new(),
                });
            }
            None => t.push(skipped(long, "order-long-poll")),
        }
        match self.phase("catalog") {
            Some(p) => t.push(Target {
                target: format!("≥ {TARGET_CATALOG_PER_S:.0} catalog reads/s"),
                measured: format!("{:.0} reads/s, {} errors", p.measured.throughput_per_s, errors(&p.measured)),
                met: Some(p.measured.throughput_per_s >= TARGET_CATALOG_PER_S),
                note: String::new(),
            }),
            None => t.push(skipped(format!("≥ {TARGET_CATALOG_PER_S:.0} catalog reads/s"), "catalog")),
        }
        let nodes: Vec<&Usage> = self.memory.iter().filter(|u| u.node != "bench client").collect();
        let peak = nodes.iter().map(|u| u.hwm_mib.max(u.rss_peak_mib)).fold(0.0, f64::max);
        let bytes = peak * 1024.0 * 1024.0;
        let one_process = nodes.len() == 1;
        t.push(Target {
            target: "< 100 MB of memory per node at those rates".into(),
            measured: nodes
                .iter()
                .map(|u| format!("{} {:.0} MB", u.node, u.hwm_mib.max(u.rss_peak_mib) * 1.048_576))
                .collect::<Vec<_>>()
                .join(", "),
            met: match (nodes.is_empty(), one_process) {
                (true, _) => None,
                // All nodes in one process under the limit: each one is too.
                (false, true) if bytes < TARGET_NODE_MEMORY_BYTES => Some(true),
                (false, true) => None,
                (false, false) => Some(bytes < TARGET_NODE_MEMORY_BYTES),
            },
            note: if one_process {
                "in-process run: one RSS for all nodes and the load generator (an upper bound per node); \
                 --processes measures each node"
                    .into()
            } else {
                "peak resident memory (VmHWM) of each node process".into()
            },
        });
        let steady = "order-closed: the last minute within 10 % of the first (runs of 3 minutes or more)".to_owned();
        match self.phase("order-closed").and_then(|p| steadiness(&p.measured.timeline)) {
            Some((first, last)) => t.push(Target {
                target: steady,
                measured: format!(
                    "first minute {first:.0}/s, last minute {last:.0}/s ({:+.1} %)",
                    100.0 * (last / first.max(1e-9) - 1.0)
                ),
                met: Some((last / first.max(1e-9) - 1.0).abs() <= 0.10),
                note: String::new(),
            }),
            None => t.push(Target {
                target: steady,
                measured: "run shorter than 3 minutes".into(),
                met: None,
                note: "--phases closed --duration-secs 600 --stages false checks it".into(),
            }),
        }
        if let Some(d) = &self.disk {
            t.push(Target {
                target: "the database files' size, per million orders placed".into(),
                measured: format!(
                    "{:.0} MiB for {} orders: {:.0} MiB per million",
                    d.bytes as f64 / MIB,
                    d.orders,
                    d.bytes as f64 / MIB / (d.orders.max(1) as f64) * 1e6
                ),
                met: None,
                note: d.note.clone(),
            });
        }
        if let (Some(sqlite), Some(postgres)) = (self.phase("order-closed"), self.phase("order-closed@postgres")) {
            let (a, b) = (sqlite.measured.throughput_per_s, postgres.measured.throughput_per_s);
            t.push(Target {
                target: "PostgreSQL ≥ half of SQLite's confirmed orders/s, closed loop".into(),
                measured: format!(
                    "{b:.0} against {a:.0} orders/s ({:.0} %), p99 {:.0} against {:.0} ms",
                    100.0 * b / a.max(1e-9),
                    postgres.measured.latency.p99_ms,
                    sqlite.measured.latency.p99_ms
                ),
                met: Some(b >= a / 2.0),
                note: "same run, one store after the other".into(),
            });
        }
        self.targets = t;
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let st = &self.settings;
        let _ = writeln!(s, "\nwebshop bench, {}", self.started_at);
        let _ = writeln!(s, "  command   {}", self.command);
        let _ = writeln!(
            s,
            "  machine   {} CPUs ({}), {:.1} GiB RAM, Linux {}, temp dir {}",
            m.cpus, m.cpu_model, m.memory_gib, m.kernel, m.temp_dir
        );
        let _ = writeln!(s, "  shop      {}", st.shop);
        let _ = writeln!(s, "  store     {}", st.store);
        let _ = writeln!(
            s,
            "  settings  synchronous={} (SQLite durability {}), consumer batch ≤{} msgs/commit, relay batch ≤{}, log \"{}\"",
            st.synchronous,
            if st.synchronous.eq_ignore_ascii_case("FULL") { "on: fsync per commit" } else { "relaxed" },
            st.consumer_batch,
            st.relay_batch,
            st.log_filter
        );
        let _ = writeln!(
            s,
            "  load      {} clients (catalog {}), open loop {:?}/s, {:.0} s per phase after {:.0} s warm-up; status seen by {}{}",
            st.concurrency,
            st.catalog_concurrency,
            st.open_rates_per_s,
            st.duration_secs,
            st.warmup_secs,
            st.observe,
            if st.stages { " (+ per-stage topics)" } else { "" }
        );
        let _ = writeln!(
            s,
            "\n  {:<22} {:<16} {:>8} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8}",
            "phase", "mode", "ok", "errors", "per s", "p50 ms", "p90 ms", "p99 ms", "max ms"
        );
        for p in &self.phases {
            let me = &p.measured;
            let l = &me.latency;
            let _ = writeln!(
                s,
                "  {:<22} {:<16} {:>8} {:>7} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.1}",
                p.name,
                p.mode,
                me.ok,
                errors(me),
                me.throughput_per_s,
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.max_ms
            );
        }
        for p in &self.phases {
            if !p.measured.errors.is_empty() {
                let kinds: Vec<String> = p.measured.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                let _ = writeln!(s, "  errors in {}: {}", p.name, kinds.join(", "));
            }
        }
        for p in self.phases.iter().filter(|p| !p.measured.stages.is_empty()) {
            let _ =
                writeln!(s, "\n  where the time goes, {} ({}): {:>8} {:>8} {:>8}", p.name, p.mode, "p50", "p99", "max");
            for (name, l) in &p.measured.stages {
                let _ = writeln!(s, "    {:<52} {:>8.2} {:>8.2} {:>8.1}", name, l.p50_ms, l.p99_ms, l.max_ms);
            }
        }
        let r = &self.references;
        let refs = [&r.sqlite_single, &r.sqlite_batched, &r.sqlite_one_statement, &r.broker, &r.baseline];
        if refs.iter().any(|r| r.is_some()) {
            let _ = writeln!(s, "\n  reference limits (same machine)");
            for rf in refs.into_iter().flatten() {
                let _ = writeln!(
                    s,
                    "    {:<92} {:>9.0} {:<8} ({} p50 {:.2} ms, p99 {:.2} ms)",
                    rf.what, rf.per_s, rf.unit, rf.latency_of, rf.latency.p50_ms, rf.latency.p99_ms
                );
            }
        }
        if !self.ratios.is_empty() {
            let _ = writeln!(s, "\n  our throughput as a fraction of each");
            for ra in &self.ratios {
                let _ = writeln!(
                    s,
                    "    {:.0} orders/s = {:>6.1}% of {} ({:.0}/s)",
                    ra.ours_per_s,
                    ra.fraction * 100.0,
                    ra.reference,
                    ra.reference_per_s
                );
            }
        }
        let _ = writeln!(s, "\n  CPU (cores busy, of {}) and memory (peak RSS) per phase", m.cpus);
        for p in self.phases.iter().filter(|p| !p.resources.is_empty()) {
            let cells: Vec<String> = p
                .resources
                .iter()
                .map(|u| format!("{} {:.2} cores {:.0} MiB", u.node, u.cpu_cores, u.rss_peak_mib))
                .collect();
            let _ = writeln!(s, "    {:<14} {}", p.name, cells.join(" | "));
        }
        let _ = writeln!(s, "\n  targets");
        for t in &self.targets {
            let verdict = match t.met {
                Some(true) => "MET    ",
                Some(false) => "NOT MET",
                None => "n/a    ",
            };
            let _ = writeln!(s, "    [{verdict}] {}: {}", t.target, t.measured);
            if !t.note.is_empty() {
                let _ = writeln!(s, "              {}", t.note);
            }
        }
        s
    }

    /// Latency and throughput over time per phase, and a percentile plot.
    pub fn svg(&self) -> String {
        let mut panels = Vec::new();
        for p in &self.phases {
            let tl = &p.measured.timeline;
            let series = |name: &str, color, f: fn(&super::record::Second) -> f64| Series {
                name: name.into(),
                color,
                points: tl.iter().map(|s| (f64::from(s.t), f(s))).collect(),
            };
            // Seconds in which nothing succeeded have no latency to draw.
            let latency = |name: &str, color, f: fn(&super::record::Second) -> f64| Series {
                name: name.into(),
                color,
                points: tl.iter().filter(|s| s.max_ms > 0.0).map(|s| (f64::from(s.t), f(s))).collect(),
            };
            panels.push(Some(Panel {
                title: format!("{} ({}): latency over time", p.name, p.mode),
                x_label: "second of the run (by request start)".into(),
                y_label: "ms (log)".into(),
                series: vec![
                    latency("p50", COLORS[0], |s| s.p50_ms),
                    latency("p99", COLORS[1], |s| s.p99_ms),
                    latency("max", COLORS[3], |s| s.max_ms),
                ],
                y_log: true,
                x_ticks: None,
            }));
            panels.push(Some(Panel {
                title: format!("{} ({}): completed and failed per second", p.name, p.mode),
                x_label: "second of the run".into(),
                y_label: "requests / s".into(),
                series: vec![
                    series("completed", COLORS[2], |s| s.completed as f64),
                    series("failed (by start)", COLORS[1], |s| s.failed as f64),
                ],
                y_log: false,
                x_ticks: None,
            }));
        }
        // Percentiles on the "nines" scale: x = -log10(1 - p).
        let nines = |p: f64| -(1.0 - (p / 100.0).min(0.99999)).log10();
        let series = self
            .phases
            .iter()
            .enumerate()
            .filter(|(_, p)| p.measured.ok > 0)
            .map(|(i, p)| Series {
                name: format!("{} ({})", p.name, p.mode),
                color: COLORS[i % COLORS.len()],
                points: p.measured.percentiles.iter().map(|&(q, ms)| (nines(q), ms)).collect(),
            })
            .collect();
        let ticks = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"];
        panels.push(Some(Panel {
            title: "latency by percentile, every phase".into(),
            x_label: "percentile".into(),
            y_label: "ms (log)".into(),
            series,
            y_log: true,
            x_ticks: Some(ticks.iter().enumerate().map(|(i, l)| (i as f64, (*l).to_owned())).collect()),
        }));
        let st = &self.settings;
        let subtitle = format!(
            "{} CPUs ({}); {}; {}; {}",
            self.machine.cpus, self.machine.cpu_model, st.shop, st.store, self.started_at
        );
        svg::document("webshop bench", &subtitle, 2, &panels)
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("result.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(dir.join("report.svg"), self.svg())?;
        Ok(())
    }
}

fn errors(m: &Measured) -> u64 {
    m.errors.values().sum()
}

const MIB: f64 = 1024.0 * 1024.0;

/// Completions per second in the first and the last minute of a timeline
/// of at least three minutes.
fn steadiness(timeline: &[super::record::Second]) -> Option<(f64, f64)> {
    if timeline.len() < 180 {
        return None;
    }
    let rate = |s: &[super::record::Second]| s.iter().map(|s| s.completed as f64).sum::<f64>() / s.len() as f64;
    // The last second may be cut short by the end of the run.
    let end = timeline.len() - 1;
    Some((rate(&timeline[..60]), rate(&timeline[end - 60..end])))
}

/// The SQLite files of the shop the bench started, after its order phases.
#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    pub bytes: u64,
    /// Orders the shop took (every order phase of this store).
    pub orders: u64,
    pub note: String,
}

fn skipped(target: String, phase: &str) -> Target {
    Target { target, measured: format!("phase {phase} not run"), met: None, note: String::new() }
}
