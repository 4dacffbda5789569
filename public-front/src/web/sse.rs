//! `GET /api/orders/{id}/events`: an order's status as Server-Sent Events,
//! so the order page updates without polling.
//!
//! The stream first sends the current status (a synchronous read from the
//! order service), then every newer status from the `orders/status` events
//! the front already receives. The front keeps no state: a page that
//! reconnects simply gets the current status again. Events carry the order
//! version as their id; stale or repeated bus events (the bus may redeliver)
//! are dropped by version.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::HeaderName;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures_util::Stream;
use serde::Serialize;
use shared::http::{ApiError, ErrorCode, PathParam};
use shared::ids::OrderId;
use shared::message::{OrderStatus, StatusChanged};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::downstream::Downstream;
use crate::state::AppState;

/// A stream ends after this long and the browser reconnects by itself
/// (`EventSource` does), getting the current status first. Status events
/// are not durable (the front may miss one while the bus reconnects), so
/// this also bounds how long a page can show a stale status; and it bounds
/// how long an open page can hold up the server's graceful shutdown when
/// nothing calls `StatusWaiters::close_live`.
const MAX_STREAM_AGE: Duration = Duration::from_secs(30);
/// How soon the browser reconnects after a stream ends.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);
/// Comment lines that keep proxies and idle timeouts from closing the stream.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// One `status` event's data.
#[derive(Clone, Debug, Serialize)]
pub struct StatusEvent {
    pub order_id: OrderId,
    pub status: OrderStatus,
    pub version: i64,
    pub reason: Option<String>,
}

impl StatusEvent {
    fn from_change(order_id: OrderId, c: StatusChanged) -> Self {
        Self { order_id, status: c.status, version: c.version, reason: c.reason }
    }

    /// No status follows these (a confirmed order can still be cancelled).
    fn is_final(&self) -> bool {
        matches!(self.status, OrderStatus::Rejected | OrderStatus::Cancelled)
    }

    fn to_event(&self) -> Event {
        Event::default()
            .event("status")
            .id(self.version.to_string())
            .json_data(self)
            .unwrap_or_else(|_| Event::default().comment("unserializable status"))
    }
}

pub async fn order_events(
    State(s): State<AppState>,
    PathParam(order_id): PathParam<OrderId>,
) -> Result<impl IntoResponse, ApiError> {
    // Subscribe before reading, so a change between the two is not lost.
    let live = s.waiters.subscribe();
    let order = s
        .downstream
        .order(order_id)
        .await?
        .ok_or_else(|| ApiError::not_found(ErrorCode::UnknownOrder, format!("There is no order {order_id}.")))?;
    let current = StatusEvent { order_id, status: order.status, version: order.version, reason: order.reason.clone() };
    let feed = Feed {
        downstream: s.downstream.clone(),
        live,
        closing: s.waiters.closing(),
        until: Instant::now() + MAX_STREAM_AGE,
        first: Some(current.clone()),
        last: current,
    };
    let stream = events(feed);
    Ok((
        // Tells nginx-style proxies not to buffer the stream.
        [(HeaderName::from_static("x-accel-buffering"), "no")],
        Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)),
    ))
}

/// The state of one order's live stream.
struct Feed {
    downstream: Downstream,
    live: broadcast::Receiver<(OrderId, StatusChanged)>,
    closing: CancellationToken,
    until: Instant,
    /// The current status, not sent yet.
    first: Option<StatusEvent>,
    /// The newest status sent.
    last: StatusEvent,
}

impl Feed {
    /// The next status to send, or `None` when the stream should end.
    async fn next(&mut self) -> Option<StatusEvent> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if self.last.is_final() {
            return None;
        }
        loop {
            let received = tokio::select! {
                _ = self.closing.cancelled() => return None,
                _ = tokio::time::sleep_until(self.until) => return None,
                r = self.live.recv() => r,
            };
            let next = match received {
                Ok((id, change)) if id == self.last.order_id => StatusEvent::from_change(id, change),
                Ok(_) => continue,
                // Events were dropped while this stream was slow: the order
                // service has the truth.
                Err(RecvError::Lagged(_)) => match self.downstream.order(self.last.order_id).await {
                    Ok(Some(o)) => {
                        StatusEvent { order_id: o.order_id, status: o.status, version: o.version, reason: o.reason }
                    }
                    _ => continue,
                },
                Err(RecvError::Closed) => return None,
            };
            if next.version > self.last.version {
                self.last = next.clone();
                return Some(next);
            }
        }
    }
}

fn events(feed: Feed) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold((feed, true), |(mut feed, first)| async move {
        let status = feed.next().await?;
        let mut event = status.to_event();
        if first {
            event = event.retry(RECONNECT_AFTER);
        }
        Some((Ok(event), (feed, false)))
    })
}
