//! Polling an order cheaply: its current state from memory when that is
//! fresh (`known.rs`), else from the order node; conditional reads
//! (`ETag` is the order's version, `If-None-Match` → 304); long polls that
//! answer as soon as the version passes the one the client has
//! (`?wait=5s&version=N`, or `Prefer: wait=5` with `If-None-Match`).
//!
//! The header and query parsing is pure; [`Front::current_order`] and
//! [`Front::order_after`] do the I/O.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue};
use shared::http::{ApiError, ErrorCode};
use shared::ids::OrderId;
use shared::view::Order;
use tokio::time::Instant;

use crate::state::Front;

/// Longest a long poll may wait: well inside the front's request timeout
/// (30 s), so the answer after the wait still has time for a read.
pub const MAX_WAIT: Duration = Duration::from_secs(25);

/// While a long poll waits, it looks at the order at least this often even
/// without a status event (events may be missed): a missed change is seen
/// within the order cache age, or this when that is shorter.
const MIN_RECHECK: Duration = Duration::from_millis(100);

/// `wait` of `GET /api/orders/{id}`: `5s`, `500ms` or `5` (seconds), at
/// most [`MAX_WAIT`].
pub fn parse_wait(s: &str) -> Result<Duration, ApiError> {
    let bad = || {
        ApiError::bad_request(
            ErrorCode::InvalidWait,
            format!("wait must be a duration of at most {}s, like wait=5s or wait=500ms", MAX_WAIT.as_secs()),
        )
    };
    let (digits, unit_ms) = match s.strip_suffix("ms") {
        Some(d) => (d, 1),
        None => (s.strip_suffix('s').unwrap_or(s), 1000),
    };
    if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let wait = Duration::from_millis(n * unit_ms);
    if wait > MAX_WAIT {
        return Err(bad());
    }
    Ok(wait)
}

/// `version` of `GET /api/orders/{id}`: a whole number, 0 or more.
pub fn parse_version(s: &str) -> Result<i64, ApiError> {
    s.parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .ok_or_else(|| ApiError::bad_request(ErrorCode::InvalidVersion, "version must be a whole number, 0 or more"))
}

/// The RFC 7240 `wait` preference in `Prefer` headers, in seconds, capped
/// at [`MAX_WAIT`]. A preference is a hint: one that doesn't parse is
/// ignored, never an error.
pub fn prefer_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|pref| {
            let (name, value) = pref.split(';').next()?.split_once('=')?;
            name.trim().eq_ignore_ascii_case("wait").then_some(())?;
            let secs: u64 = value.trim().trim_matches('"').parse().ok()?;
            Some(Duration::from_secs(secs).min(MAX_WAIT))
        })
        .next()
}

/// The order's entity tag: its version, weak (the body of one version is
/// the same status, though `updated_at` may move without a new version).
pub fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("W/\"{version}\"")).expect("a number is a valid header value")
}

/// The versions named by `If-None-Match` (`W/"3"` or `"3"`); tags that
/// aren't ours are skipped. `*` is `Some(vec![])` with `any` set.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct IfNoneMatch {
    pub versions: Vec<i64>,
    pub any: bool,
}

impl IfNoneMatch {
    pub fn parse(headers: &HeaderMap) -> Option<IfNoneMatch> {
        let mut out = IfNoneMatch::default();
        let mut present = false;
        for value in headers.get_all(header::IF_NONE_MATCH) {
            present = true;
            let Ok(value) = value.to_str() else { continue };
            for tag in value.split(',').map(str::trim) {
                if tag == "*" {
                    out.any = true;
                    continue;
                }
                let opaque = tag.strip_prefix("W/").unwrap_or(tag);
                if let Some(v) = opaque.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                    if let Ok(v) = v.parse::<i64>() {
                        out.versions.push(v);
                    }
                }
            }
        }
        present.then_some(out)
    }

    /// Whether a response with this version is "not modified" (weak
    /// comparison, as RFC 9110 asks for `If-None-Match`).
    pub fn matches(&self, version: i64) -> bool {
        self.any || self.versions.contains(&version)
    }

    /// The newest version the client says it has.
    pub fn newest(&self) -> Option<i64> {
        self.versions.iter().copied().max()
    }
}

impl Front {
    /// The order now: from memory if fresh, else read from the order node
    /// (and remembered). `None`: no such order.
    pub async fn current_order(&self, id: OrderId) -> Result<Option<Arc<Order>>, ApiError> {
        let known = self.waiters.known();
        if !self.order_cache.is_zero() {
            if let Some(order) = known.get(id).and_then(|k| k.fresh(self.order_cache, std::time::Instant::now())) {
                metrics::counter!("order_reads_total", "node" => "public-front", "source" => "memory").increment(1);
                return Ok(Some(order));
            }
        }
        metrics::counter!("order_reads_total", "node" => "public-front", "source" => "order").increment(1);
        let sent = std::time::Instant::now();
        Ok(self.downstream.order(id).await?.map(|o| known.read(o, sent)))
    }

    /// The order once its version is above `after`, or when `wait` is up,
    /// whichever comes first (then as it is). `None`: no such order.
    pub async fn order_after(&self, id: OrderId, after: i64, wait: Duration) -> Result<Option<Arc<Order>>, ApiError> {
        let deadline = Instant::now() + wait;
        let recheck = self.order_cache.max(MIN_RECHECK);
        let _waiting = Waiting::start();
        loop {
            // Register first, then look: a status event is recorded before
            // waiters are woken, so no change falls in between.
            let mut waiting = self.waiters.register(id, None);
            let order = self.current_order(id).await?;
            let now = Instant::now();
            match &order {
                Some(o) if o.version <= after && now < deadline => {}
                _ => return Ok(order),
            }
            let _ = tokio::time::timeout_at(deadline.min(now + recheck), waiting.recv()).await;
        }
    }
}

/// Counts a long poll in `order_long_polls_waiting` while it lives.
struct Waiting;

impl Waiting {
    fn start() -> Waiting {
        metrics::gauge!("order_long_polls_waiting", "node" => "public-front").increment(1.0);
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        metrics::gauge!("order_long_polls_waiting", "node" => "public-front").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn waits_parse_with_units_and_a_cap() {
        assert_eq!(parse_wait("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_wait("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_wait("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_wait("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_wait("25s").unwrap(), MAX_WAIT);
        for bad in ["", "s", "ms", "-1s", "26s", "1.5s", "5m", "abc", "99999999999999999999", " 5s"] {
            assert_eq!(parse_wait(bad).unwrap_err().code, "invalid_wait", "{bad:?}");
        }
    }

    #[test]
    fn versions_are_whole_and_not_negative() {
        assert_eq!(parse_version("0").unwrap(), 0);
        assert_eq!(parse_version("12").unwrap(), 12);
        for bad in ["", "-1", "1.0", "x", "99999999999999999999"] {
            assert_eq!(parse_version(bad).unwrap_err().code, "invalid_version", "{bad:?}");
        }
    }

    #[test]
    fn prefer_wait_is_read_leniently_and_capped() {
        assert_eq!(prefer_wait(&headers("prefer", &["wait=5"])), Some(Duration::from_secs(5)));
        assert_eq!(prefer_wait(&headers("prefer", &["respond-async, Wait = 7"])), Some(Duration::from_secs(7)));
        assert_eq!(prefer_wait(&headers("prefer", &["return=minimal", "wait=100"])), Some(MAX_WAIT));
        assert_eq!(prefer_wait(&headers("prefer", &["wait=soon"])), None);
        assert_eq!(prefer_wait(&HeaderMap::new()), None);
    }

    #[test]
    fn if_none_match_takes_weak_and_strong_tags_and_star() {
        let inm = IfNoneMatch::parse(&headers("if-none-match", &["W/\"3\", \"4\"", "\"x\""])).unwrap();
        assert_eq!(inm.versions, vec![3, 4]);
        assert!(inm.matches(3) && inm.matches(4) && !inm.matches(5));
        assert_eq!(inm.newest(), Some(4));
        let star = IfNoneMatch::parse(&headers("if-none-match", &["*"])).unwrap();
        assert!(star.matches(1) && star.newest().is_none());
        assert_eq!(IfNoneMatch::parse(&HeaderMap::new()), None);
        assert_eq!(etag(7), "W/\"7\"");
    }
}
