//! Process-wide logging and, when configured, span export over OTLP/HTTP.
//! Call [`init`] once from `main` and keep the [`Telemetry`] it returns
//! until the end: dropping it flushes the spans not yet exported.
//!
//! Export is on when `log.otlp_endpoint` is set, or else when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is
//! (the exporter then also reads `OTEL_EXPORTER_OTLP_HEADERS` and the other
//! `OTEL_*` variables, e.g. `OTEL_BSP_SCHEDULE_DELAY`). Spans go through a
//! batch processor on its own thread, so a slow collector never blocks a
//! request or a message. Without export nothing of this is installed and
//! [`exporting`] is one relaxed atomic load.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::bail;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::config::LogConfig;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Our own crates' spans are exported at `info` and above, whatever the log
/// filter says (a quiet log must not mean no traces); dependencies' spans
/// are not.
const EXPORTED_TARGETS: [&str; 6] = ["shared", "inventory", "order", "public_front", "broker", "webshop"];

/// Whether spans are exported (an OTLP exporter is installed).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Keeps the span exporter alive; dropping it flushes and stops it.
#[must_use = "dropping the Telemetry guard stops the span export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            EXPORTING.store(false, Ordering::Relaxed);
            // Blocks until the batch in hand is sent (bounded by the
            // exporter's timeout); this runs once, at exit.
            if let Err(e) = provider.shutdown() {
                eprintln!("could not flush the last spans to the OTLP collector: {e}");
            }
        }
    }
}

/// Installs the global `tracing` subscriber, and the OTLP span exporter
/// when configured, naming this process `service` (`service.name`, unless
/// `OTEL_SERVICE_NAME` is set). `RUST_LOG` overrides the configured
/// filter. Calling it twice is harmless (the second call installs
/// nothing), so the all-in-one `webshop up` can start several nodes in one
/// process. Fails on a malformed `log.otlp_endpoint`.
pub fn init(service: &str, cfg: &LogConfig) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.filter));
    let endpoint = cfg.otlp_endpoint.as_deref().filter(|e| !e.is_empty());
    let from_env = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    if endpoint.is_none() && !from_env {
        // Without export, the plain subscriber with one global filter:
        // callsites the filter rejects cost nothing.
        let builder = fmt().with_env_filter(filter).with_target(true);
        let _ =
            if cfg.format == crate::config::LogFormat::Json { builder.json().try_init() } else { builder.try_init() };
        return Ok(Telemetry { provider: None });
    }
    let provider = build_provider(service, endpoint)?;
    // With export, each layer filters for itself: the log keeps its filter,
    // the export takes our crates' spans at `info` whatever the log says.
    let targets = Targets::new().with_targets(EXPORTED_TARGETS.map(|t| (t, LevelFilter::INFO)));
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("webshop")).with_filter(targets);
    let logs = fmt::layer().with_target(true);
    let logs = if cfg.format == crate::config::LogFormat::Json {
        logs.json().with_filter(filter).boxed()
    } else {
        logs.with_filter(filter).boxed()
    };
    if tracing_subscriber::registry().with(otel).with(logs).try_init().is_err() {
        // Already initialised in this process: that subscriber stays.
        let _ = provider.shutdown();
        return Ok(Telemetry { provider: None });
    }
    EXPORTING.store(true, Ordering::Relaxed);
    tracing::info!(endpoint = endpoint.unwrap_or("from OTEL_EXPORTER_OTLP_*"), "exporting spans over OTLP/HTTP");
    Ok(Telemetry { provider: Some(provider) })
}

/// Checks `log.otlp_endpoint` as [`init`] would, without installing
/// anything (for `webshop config check`).
pub fn check(cfg: &LogConfig) -> anyhow::Result<()> {
    match cfg.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        Some(url) => check_endpoint(url),
        None => Ok(()),
    }
}

fn check_endpoint(url: &str) -> anyhow::Result<()> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("log.otlp_endpoint must be an http:// or https:// URL, e.g. http://127.0.0.1:4318 (got `{url}`)");
    }
    traces_url(url).parse::<axum::http::Uri>().map_err(|e| anyhow::anyhow!("log.otlp_endpoint `{url}`: {e}"))?;
    Ok(())
}

/// Same rule as `OTEL_EXPORTER_OTLP_ENDPOINT`: a base URL, the signal's
/// path appended.
fn traces_url(base: &str) -> String {
    format!("{}/v1/traces", base.trim_end_matches('/'))
}

fn build_provider(service: &str, endpoint: Option<&str>) -> anyhow::Result<SdkTracerProvider> {
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http().with_protocol(Protocol::HttpBinary);
    if let Some(url) = endpoint {
        check_endpoint(url)?;
        exporter = exporter.with_endpoint(traces_url(url));
    }
    let exporter = exporter.build().map_err(|e| match endpoint {
        Some(url) => anyhow::anyhow!("log.otlp_endpoint `{url}`: {e}"),
        None => anyhow::anyhow!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"),
    })?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build())
}

/// See [`crate::trace::link`]; only called while exporting.
pub(crate) fn link(span: &tracing::Span, incoming: Option<String>) -> Option<String> {
    if let Some(parent) = incoming.as_deref().and_then(span_context) {
        // Fails only for a span filtered out of the export; it then has
        // no context of its own either, and `incoming` goes on as is.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
    let cx = span.context();
    let own = cx.span().span_context().clone();
    if !own.is_valid() {
        return incoming;
    }
    Some(format!("00-{}-{}-{:02x}", own.trace_id(), own.span_id(), own.trace_flags().to_u8()))
}

/// A W3C `traceparent` as an OpenTelemetry remote span context.
fn span_context(traceparent: &str) -> Option<SpanContext> {
    let mut parts = crate::trace::parse(traceparent)?.split('-').skip(1);
    let trace_id = TraceId::from_hex(parts.next()?).ok()?;
    let span_id = SpanId::from_hex(parts.next()?).ok()?;
    let flags = u8::from_str_radix(parts.next()?, 16).ok()?;
    let cx = SpanContext::new(trace_id, span_id, TraceFlags::new(flags), true, TraceState::default());
    cx.is_valid().then_some(cx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = span_context(tp).unwrap();
        assert_eq!(format!("{}", cx.trace_id()), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(format!("{}", cx.span_id()), "00f067aa0ba902b7");
        assert!(cx.is_sampled());
        // All-zero ids are invalid in W3C trace context.
        assert!(span_context("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(span_context("garbage").is_none());
    }

    #[test]
    fn a_bad_endpoint_names_the_key() {
        let cfg = LogConfig { otlp_endpoint: Some("collector:4318".into()), ..Default::default() };
        let e = init("test", &cfg).err().expect("refused").to_string();
        assert!(e.contains("log.otlp_endpoint"), "{e}");
    }
}
