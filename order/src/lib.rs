//! The order service: orders and their statuses.
//!
//! Layout:
//! - `domain.rs`: the pure lifecycle (`decide`);
//! - `carts/`: server-side carts (`decide`, `held`) and their table;
//! - `handlers/`: one file per consumed topic;
//! - `follow_up.rs`: the timer that chases inventory for unsettled orders;
//! - `store.rs`: the tables and SQL; `http.rs`: the read API;
//! - `config.rs`; `main.rs` is a thin binary over [`App`].

pub mod carts;
pub mod config;
pub mod domain;
pub mod follow_up;
pub mod handlers;
pub mod http;
pub mod store;

use anyhow::Context;
use shared::consumer::ParkingPolicy;
use shared::db::Db;
use shared::node::{Node, Service};
use shared::topics::Consumes;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// A built order node, listening but not yet serving; see
/// [`shared::node::Service`] for `local_addr`, `node` and `run`.
pub struct App(Service);

impl std::ops::Deref for App {
    type Target = Service;
    fn deref(&self) -> &Service {
        &self.0
    }
}

impl App {
    pub async fn build(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<App> {
        // Bad TLS files stop the node before it touches anything.
        let tls = shared::tls::acceptor("tls", &cfg.tls)?;
        cfg.db.validate()?;
        let db = Db::open(&cfg.db, &store::migrations()).await?;
        let listener = TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
        let follow_up_ms = (cfg.follow_up_secs * 1000.0).max(10.0) as i64;
        let mut tasks = JoinSet::new();
        let policy =
            ParkingPolicy { retry_ms: follow_up_ms.min(1000), horizon_ms: (cfg.parked_horizon_secs * 1000.0) as i64 };
        let handler = handlers::OrderHandler { follow_up_ms };
        let node = Node::start(
            "order",
            db,
            cfg.bus.clone(),
            shared::topics::OrderConsumes::TOPICS,
            handler,
            policy,
            &shutdown,
            &mut tasks,
        )?
        .with_admin_token(cfg.admin_token.clone())
        .with_gauges(std::sync::Arc::new(|db: Db| Box::pin(store::update_gauges(db))));
        tasks.spawn(follow_up::run(node.db.clone(), node.wakeup.clone(), follow_up_ms, shutdown.clone()));
        let router = http::router(node.clone());
        Ok(App(Service::new(listener, tls, node, router, tasks, shutdown)))
    }

    pub async fn run(self) -> anyhow::Result<()> {
        self.0.run().await
    }
}

/// What the binary does: load the config, serve until a signal, drain.
pub async fn main_with_config(file: Option<&std::path::Path>) -> anyhow::Result<()> {
    shared::node::main_with_config(
        "order",
        file,
        config::ENV_PREFIX,
        |c: &Config| c.log.clone(),
        |cfg, shutdown| async { Ok(App::build(cfg, shutdown).await?.0) },
    )
    .await
}
