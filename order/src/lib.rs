//! The order service: orders and their statuses.
//!
//! Layout:
//! - `domain.rs`: the pure lifecycle (`decide`);
//! - `handlers/`: one file per consumed topic;
//! - `follow_up.rs`: the timer that chases inventory for unsettled orders;
//! - `store.rs`: the tables and SQL; `http.rs`: the read API;
//! - `config.rs`; `main.rs` is a thin binary over [`App`].

pub mod config;
pub mod domain;
pub mod follow_up;
pub mod handlers;
pub mod http;
pub mod store;

use std::net::SocketAddr;

use anyhow::Context;
use shared::bus::BusOptions;
use shared::consumer::ParkingPolicy;
use shared::db::Db;
use shared::node::Node;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// A built order node, listening but not yet serving.
pub struct App {
    listener: TcpListener,
    node: Node,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
}

impl App {
    pub async fn build(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<App> {
        let db = Db::open(&cfg.db, store::SCHEMA).await?;
        let listener = TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
        let follow_up_ms = (cfg.follow_up_secs * 1000.0).max(10.0) as i64;
        let mut tasks = JoinSet::new();
        let bus = BusOptions {
            config: cfg.bus.clone(),
            subscriptions: handlers::SUBSCRIPTIONS.to_vec(),
            manual_acks: true,
            clean_session: false,
        };
        let policy =
            ParkingPolicy { retry_ms: follow_up_ms.min(1000), horizon_ms: (cfg.parked_horizon_secs * 1000.0) as i64 };
        let handler = handlers::OrderHandler { follow_up_ms };
        let node = Node::start("order", db, bus, handler, policy, &shutdown, &mut tasks)
            .with_admin_token(cfg.admin_token.clone())
            .with_gauges(std::sync::Arc::new(|db: Db| Box::pin(store::update_gauges(db))));
        tasks.spawn(follow_up::run(node.db.clone(), node.wakeup.clone(), follow_up_ms, shutdown.clone()));
        Ok(App { listener, node, tasks, shutdown })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Serves until shutdown, then waits for the background tasks.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let router = http::router(self.node.clone());
        shared::http::serve(self.listener, router, self.shutdown.clone()).await?;
        while self.tasks.join_next().await.is_some() {}
        self.node.db.close().await;
        Ok(())
    }
}

/// What the binary does: load the config (`file`, then the environment),
/// set up logging, serve until SIGTERM/Ctrl-C, drain, exit.
pub async fn main_with_config(file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let cfg: Config = shared::config::load(file, config::ENV_PREFIX)?;
    shared::telemetry::init(&cfg.log);
    shared::failpoints::setup();
    let shutdown = CancellationToken::new();
    shared::shutdown::cancel_on_signal(shutdown.clone());
    let app = App::build(cfg, shutdown).await?;
    tracing::info!(addr = %app.local_addr(), "order listening");
    app.run().await
}
