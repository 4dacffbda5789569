//! What every request handler reads: the front's connections (bus, HTTP
//! client to the nodes, status waiters) and settings.

use std::sync::Arc;
use std::time::Duration;

use shared::bus::Bus;
use tokio_util::sync::CancellationToken;

use crate::downstream::Downstream;
use crate::status::StatusWaiters;

/// The front's state as handlers extract it. axum clones the state for
/// each extractor of each request, so it is one reference count to clone.
#[derive(Clone)]
pub struct AppState(Arc<Front>);

impl AppState {
    pub fn new(front: Front) -> Self {
        Self(Arc::new(front))
    }
}

impl std::ops::Deref for AppState {
    type Target = Front;
    fn deref(&self) -> &Front {
        &self.0
    }
}

/// The front's connections and settings, behind [`AppState`] (not to be
/// confused with the `shared` crate).
pub struct Front {
    pub bus: Bus,
    pub downstream: Downstream,
    pub waiters: StatusWaiters,
    pub commit_timeout: Duration,
    /// How long an order read may be answered from memory (`known.rs`).
    pub order_cache: Duration,
    pub admin_token: Option<shared::config::Secret>,
    pub audit_horizon: Duration,
    pub max_concurrent_requests: usize,
    pub cors_origins: Vec<axum::http::HeaderValue>,
    /// Cancelled when the front begins to shut down: from then on
    /// `/readyz` answers 503 while requests are still served (the drain
    /// grace, `drain_grace_secs`).
    pub shutdown: CancellationToken,
}

impl shared::http::AdminToken for AppState {
    fn admin_token(&self) -> Option<&shared::config::Secret> {
        self.0.admin_token.as_ref()
    }
}
