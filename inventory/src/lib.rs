//! The inventory service: products, prices, stock and reservations.
//!
//! Layout:
//! - `domain.rs`: the pure reservation rules (reserve all or nothing,
//!   release once, tombstones) and hold rules (hold what there is, give
//!   it back on expiry or checkout);
//! - `handlers/`: one file per consumed topic;
//! - `expiry.rs`: the timer that gives back the holds that ran out;
//! - `store.rs`: the tables and SQL; `http.rs`: the read API;
//! - `config.rs`; `main.rs` is a thin binary over [`App`].

pub mod config;
pub mod domain;
pub mod expiry;
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

/// The sample catalog loaded into an empty database by default.
pub const SAMPLE_CATALOG: &str = include_str!("../catalog.json");

/// A built inventory node, listening but not yet serving; see
/// [`shared::node::Service`] for `local_addr`, `node` and `run`.
pub struct App(Service);

impl std::ops::Deref for App {
    type Target = Service;
    fn deref(&self) -> &Service {
        &self.0
    }
}

impl App {
    /// Opens the database (seeding the catalog on first start), connects to
    /// the bus and binds the HTTP listener.
    pub async fn build(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<App> {
        // Bad TLS files stop the node before it touches anything.
        let tls = shared::tls::acceptor("tls", &cfg.tls)?;
        cfg.validate()?;
        let db = Db::open(&cfg.db, &store::migrations()).await?;
        let catalog = match &cfg.catalog {
            Some(path) => {
                std::fs::read_to_string(path).with_context(|| format!("reading catalog {}", path.display()))?
            }
            None => SAMPLE_CATALOG.to_owned(),
        };
        let products: Vec<store::SeedProduct> = serde_json::from_str(&catalog).context("parsing the catalog")?;
        let seeded = store::seed_if_empty(&db, &products).await?;
        if seeded > 0 {
            tracing::info!(products = seeded, "loaded the catalog into an empty database");
        }
        let listener = TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
        let mut tasks = JoinSet::new();
        // Inventory never parks: everything it receives can be decided.
        let policy = ParkingPolicy { retry_ms: 1000, horizon_ms: 600_000 };
        let handler = handlers::InventoryHandler::new(&cfg);
        let node = Node::start(
            "inventory",
            db,
            cfg.bus.clone(),
            shared::topics::InventoryConsumes::TOPICS,
            handler,
            policy,
            &shutdown,
            &mut tasks,
        )?
        .with_admin_token(cfg.admin_token.clone())
        .with_gauges(std::sync::Arc::new(|db: Db| Box::pin(store::update_gauges(db))));
        tasks.spawn(expiry::run(node.db.clone(), node.wakeup.clone(), shutdown.clone()));
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
        "inventory",
        file,
        config::ENV_PREFIX,
        |c: &Config| c.log.clone(),
        |cfg, shutdown| async { Ok(App::build(cfg, shutdown).await?.0) },
    )
    .await
}
