//! `webshop`: the whole shop in one command, for a laptop.
//!
//! `webshop up` starts the embedded broker and the inventory, order and
//! public-front nodes in one process, with their SQLite files under the
//! data directory. Operators running nodes on separate machines use the
//! per-node binaries (`broker`, `inventory`, `order`, `public-front`) with
//! the files in `config/` instead.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(version, about = "A distributed webshop over MQTT")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the broker and all three nodes in this process.
    Up(Up),
}

#[derive(clap::Args)]
struct Up {
    /// Directory for the SQLite databases (created if missing).
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Address every listener binds to.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    #[arg(long, default_value_t = 1883)]
    broker_port: u16,
    #[arg(long, default_value_t = 8080)]
    front_port: u16,
    #[arg(long, default_value_t = 8081)]
    inventory_port: u16,
    #[arg(long, default_value_t = 8082)]
    order_port: u16,
    /// Use this MQTT broker (host:port) instead of starting the embedded one.
    #[arg(long)]
    external_broker: Option<String>,
    /// Log filter (`RUST_LOG` wins).
    #[arg(long, default_value = "info,rumqttd=warn")]
    log: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Up(up) => run_up(up).await,
    }
}

async fn run_up(up: Up) -> anyhow::Result<()> {
    let log = shared::config::LogConfig { filter: up.log.clone(), ..Default::default() };
    shared::telemetry::init(&log);
    let (broker_host, broker_port) = match &up.external_broker {
        Some(addr) => {
            let (h, p) = addr.rsplit_once(':').context("--external-broker must be host:port")?;
            (h.to_owned(), p.parse().context("--external-broker port must be a number")?)
        }
        None => {
            let cfg = broker::BrokerConfig { listen: SocketAddr::new(up.host, up.broker_port), ..Default::default() };
            broker::spawn(&cfg)?;
            (up.host.to_string(), up.broker_port)
        }
    };
    let bus = |client_id: &str| shared::config::BusConfig {
        host: broker_host.clone(),
        port: broker_port,
        client_id: client_id.to_owned(),
        ..Default::default()
    };
    let db = |name: &str| shared::config::DbConfig { path: up.data_dir.join(name), ..Default::default() };

    let shutdown = CancellationToken::new();
    shared::shutdown::cancel_on_signal(shutdown.clone());

    let inventory = inventory::App::build(
        inventory::Config {
            listen: SocketAddr::new(up.host, up.inventory_port),
            bus: bus("webshop-inventory"),
            db: db("inventory.db"),
            log: log.clone(),
            ..Default::default()
        },
        shutdown.clone(),
    )
    .await
    .context("starting inventory")?;
    let order = order::App::build(
        order::Config {
            listen: SocketAddr::new(up.host, up.order_port),
            bus: bus("webshop-order"),
            db: db("order.db"),
            log: log.clone(),
            ..Default::default()
        },
        shutdown.clone(),
    )
    .await
    .context("starting order")?;
    let front = public_front::App::build(
        public_front::Config {
            listen: SocketAddr::new(up.host, up.front_port),
            bus: bus(""),
            inventory_url: format!("http://{}", inventory.local_addr()),
            order_url: format!("http://{}", order.local_addr()),
            log: log.clone(),
            ..Default::default()
        },
        shutdown.clone(),
    )
    .await
    .context("starting public-front")?;

    println!("webshop is up (Ctrl-C to stop)");
    match &up.external_broker {
        Some(addr) => println!("  broker        mqtt://{addr} (external)"),
        None => println!("  broker        mqtt://{}:{} (embedded, in memory)", up.host, up.broker_port),
    }
    println!("  storefront    http://{}/", front.local_addr());
    println!("  public API    http://{}/api/catalog", front.local_addr());
    println!("  inventory     http://{}", inventory.local_addr());
    println!("  order         http://{}", order.local_addr());
    println!("  data          {}", up.data_dir.display());

    let (a, b, c) = tokio::join!(inventory.run(), order.run(), front.run());
    a.context("inventory")?;
    b.context("order")?;
    c.context("public-front")?;
    println!("webshop stopped cleanly");
    // rumqttd has no shutdown API; leaving main ends its thread.
    Ok(())
}
