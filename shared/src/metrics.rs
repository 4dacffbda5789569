//! Prometheus metrics, one recorder per process. The all-in-one `webshop
//! up` runs every node in one process, so series written by code the nodes
//! share carry a `node` label (the bus's own carry `client`, its client
//! id); series only one node writes carry none. Names:
//!
//! - `http_requests_total{node,route,status}`, `http_request_duration_seconds{node,route}`;
//! - `messages_total{node,topic,outcome}`, outcome one of received, applied,
//!   deduplicated, parked, unparked, ignored, dead_lettered;
//! - `outbox_unsent{node}`, `outbox_oldest_unsent_age_seconds{node}`,
//!   `parked_messages{node}`, `dead_letters{node}`;
//! - `consumer_batch_messages{node}`, `consumer_batch_seconds{node}`: how
//!   many deliveries each consumer transaction took, and how long it held
//!   the writer (apply and commit);
//! - `bus_connected{node}`, `bus_reconnects_total{client}`,
//!   `bus_stalls_total{client}` (the connection made no progress);
//! - order node: `orders{status}`, `orders_release_pending`, `carts{status}`;
//! - inventory: `stock_available_units`, `stock_reserved_units`,
//!   `stock_held_units` (held for carts), `reservations_live`,
//!   `holds_live` (hold rows, one per cart and SKU);
//! - front: `orders_stale_priced_total{node}` (orders taken at last known
//!   prices while inventory was unreachable), `order_reads_total{node,source}`
//!   (`source` memory or order), `order_long_polls_waiting{node}`;
//! - the embedded broker: `broker_connections`, `broker_subscriptions`,
//!   `broker_publishes_total`, `broker_failed_publishes_total`,
//!   `broker_refused_total{user,action,topic}`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histogram samples are folded into their buckets (the
/// exporter's own default when it runs its upkeep itself).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process's recorder, installed on first use, with its upkeep: the
/// recorder keeps every histogram sample until upkeep or a scrape folds it
/// into the buckets, so without it a node nobody scrapes grows by a few
/// bytes per request and per consumer batch, for as long as it runs.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            .expect("static buckets are valid")
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("consumer_batch_messages".into()),
                &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0],
            )
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may exist (tests); ours then only renders.
        let _ = metrics::set_global_recorder(recorder);
        let upkeep = handle.clone();
        // A thread, not a task: the recorder outlives any one runtime (tests
        // start several), and this is a few microseconds every 5 s.
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            })
            .expect("spawning the metrics upkeep thread");
        handle
    })
}

/// Renders every series in the Prometheus text format.
pub fn render() -> String {
    handle().render()
}

/// Axum middleware counting requests and timing them per route.
pub async fn track_http(node: &'static str, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "node" => node, "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("http_request_duration_seconds", "node" => node, "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp
}
