//! public-front: the only HTTP surface customers see. Stateless: reads go
//! to inventory and order over HTTP; placing and cancelling orders go over
//! the bus, and are answered once the order service has committed.
//!
//! Layout, from the root down (each layer uses only the ones below it):
//! - `router.rs`: every route merged, the probes and the outer layers;
//! - routes: `api.rs` (the customer API), `admin.rs` (the operator API),
//!   `openapi.rs` (the contract), `web/` (pages and the status stream);
//! - `state.rs`: what handlers read ([`state::AppState`]); `poll.rs`
//!   (ETags, long polls) reads orders through it;
//! - clients and feeds: `downstream.rs` (HTTP client to the nodes),
//!   `status.rs` (waiting for `orders/status`), `known.rs` (recent orders,
//!   for reads from memory);
//! - `audit.rs` (the books audit), `config.rs`.

pub mod admin;
pub mod api;
pub mod audit;
pub mod carts;
pub mod config;
pub mod downstream;
pub mod known;
pub mod openapi;
pub mod poll;
pub mod router;
pub mod state;
pub mod status;
pub mod web;

use std::net::SocketAddr;

use anyhow::Context;
use shared::bus::{Bus, BusOptions};
use shared::topics::{Consumes, FrontConsumes};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::Config;

pub struct App {
    listener: TcpListener,
    tls: Option<shared::tls::TlsAcceptor>,
    state: state::AppState,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
    bus_shutdown: CancellationToken,
    drain_grace: std::time::Duration,
}

impl App {
    pub async fn build(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<App> {
        let mut bus_cfg = cfg.bus.clone();
        if bus_cfg.client_id.is_empty() {
            bus_cfg.client_id = format!("webshop-front-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        }
        // Bad TLS files stop the front before it binds or connects.
        let tls = shared::tls::acceptor("tls", &cfg.tls)?;
        shared::metrics::handle();
        let listener = TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
        let downstream = downstream::Downstream::with_ca_path(
            &cfg.inventory_url,
            &cfg.order_url,
            shared::config::secs(cfg.read_timeout_secs),
            cfg.downstream_ca_path.as_deref(),
        )?
        .with_cache(shared::config::secs(cfg.catalog_cache_secs), shared::config::secs(cfg.stale_price_max_secs));
        // The bus stops after the HTTP server has drained, so in-flight
        // requests can still publish.
        let bus_shutdown = CancellationToken::new();
        let (bus, deliveries, bus_task) = Bus::start(
            BusOptions {
                subscriptions: FrontConsumes::TOPICS.iter().map(|t| t.path(&bus_cfg.topic_prefix)).collect(),
                // Each front gets every status: `orders/status` has no partitions.
                ..BusOptions::publisher(bus_cfg)
            },
            bus_shutdown.clone(),
        )?;
        let waiters = status::StatusWaiters::default();
        let mut tasks = JoinSet::new();
        tasks.spawn(waiters.clone().run(bus.prefix().to_owned(), deliveries, bus_shutdown.clone()));
        tasks.spawn(async move {
            let _ = bus_task.await;
        });
        let state = state::AppState::new(state::Front {
            bus,
            downstream,
            waiters,
            commit_timeout: shared::config::secs(cfg.commit_timeout_secs),
            order_cache: shared::config::secs(cfg.order_cache_secs),
            admin_token: cfg.admin_token.clone(),
            audit_horizon: shared::config::secs(cfg.audit_horizon_secs),
            max_concurrent_requests: cfg.max_concurrent_requests,
            cors_origins: cfg
                .cors_origins
                .iter()
                .map(|o| o.parse().with_context(|| format!("cors_origins: `{o}` is not a valid origin")))
                .collect::<anyhow::Result<_>>()?,
            shutdown: shutdown.clone(),
        });
        let drain_grace = shared::config::secs(cfg.drain_grace_secs);
        Ok(App { listener, tls, state, tasks, shutdown, bus_shutdown, drain_grace })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// Serves until shutdown. Shutdown has two steps: for `drain_grace`
    /// the front keeps serving while `/readyz` answers 503 (a load balancer
    /// moves traffic away); then it stops accepting, ends the live status
    /// streams and drains the requests in flight.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let router = router::router(self.state.clone());
        let stop_accepting = CancellationToken::new();
        let (shutdown, stop, grace) = (self.shutdown.clone(), stop_accepting.clone(), self.drain_grace);
        // Live status streams would hold the HTTP drain open: end them
        // when it begins. A page then reconnects through the balancer,
        // which has moved it to another front by then.
        let waiters = self.state.waiters.clone();
        self.tasks.spawn(async move {
            shutdown.cancelled().await;
            if !grace.is_zero() {
                tracing::info!(grace_secs = grace.as_secs_f64(), "shutting down: not ready, still serving");
                tokio::time::sleep(grace).await;
            }
            waiters.close_live();
            stop.cancel();
        });
        shared::http::serve(self.listener, router, self.tls, stop_accepting).await?;
        self.bus_shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// What the binary does: load the config (`file`, then the environment),
/// set up logging, serve until SIGTERM/Ctrl-C, drain, exit.
pub async fn main_with_config(file: Option<&std::path::Path>) -> anyhow::Result<()> {
    shared::node::main_with_config("public-front", file, config::ENV_PREFIX, |c: &Config| c.log.clone(), App::build)
        .await
}

impl shared::node::Runnable for App {
    fn addr(&self) -> SocketAddr {
        self.local_addr()
    }
    fn serve(self) -> impl std::future::Future<Output = anyhow::Result<()>> {
        self.run()
    }
}
