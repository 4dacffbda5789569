//! W3C trace context across the bus. The front starts a trace per request
//! (or continues the caller's `traceparent`) and puts it in the envelope;
//! a consumer applies each message with the message's trace context on its
//! transaction (`Tx::traceparent`), and [`crate::outbox::enqueue`] stamps
//! that context on every event the handler writes. One order's path, front → order and
//! inventory → front, is therefore one trace id in every log line.
//!
//! When spans are exported ([`crate::telemetry`]), [`link`] also makes each
//! hop's span the child of the span that sent the message, and stamps that
//! span as the parent on what it sends on: the exported trace is the
//! order's whole path as one tree.

/// A new root `traceparent` (version 00, sampled).
pub fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

/// `traceparent` if it is well-formed W3C, else `None`.
pub fn parse(traceparent: &str) -> Option<&str> {
    let parts: Vec<&str> = traceparent.split('-').collect();
    let ok = parts.len() == 4
        && parts[0] == "00"
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts[3].len() == 2
        && parts[1..].iter().all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then_some(traceparent)
}

/// Continues `incoming` (the envelope's or the caller's `traceparent`) in
/// `span`, when spans are exported: `span` becomes its child, and the
/// returned `traceparent` (same trace id) names `span` as the parent of
/// whatever it causes. Without export, `incoming` is returned as is, at
/// no cost.
pub fn link(span: &tracing::Span, incoming: Option<String>) -> Option<String> {
    if !crate::telemetry::exporting() {
        return incoming;
    }
    crate::telemetry::link(span, incoming)
}

/// The trace id part of a `traceparent`, for log fields.
pub fn trace_id(traceparent: Option<&str>) -> &str {
    traceparent.and_then(|tp| tp.split('-').nth(1)).unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_traceparents_parse_and_malformed_ones_dont() {
        let tp = new_traceparent();
        assert!(parse(&tp).is_some());
        assert_eq!(trace_id(Some(&tp)).len(), 32);
        assert!(parse("00-xyz-1-01").is_none());
    }
}
