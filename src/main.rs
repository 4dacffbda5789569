//! `webshop`: the whole shop in one command, for a laptop.
//!
//! `webshop up` starts the embedded broker and the inventory, order and
//! public-front nodes in one process, with their SQLite files under the
//! data directory. Operators running nodes on separate machines use the
//! per-node binaries (`broker`, `inventory`, `order`, `public-front`) with
//! the files in `config/` instead.

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shared::dead_letter::DeadLetter;
use shared::topics::Role;
use tokio_util::sync::CancellationToken;

/// The process allocates with jemalloc, Rust and (unprefixed) C alike:
/// the allocator is the binary's choice, not its libraries'. Why jemalloc:
/// docs/PERFORMANCE.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Start a scaled-out shop on this machine: PostgreSQL, the broker,
    /// several instances of each node (processes) and haproxy
    /// (docs/SCALING.md).
    Cluster(webshop::cluster::Args),
    /// Run one node from its config file, as operators do on separate
    /// machines (environment variables override the file).
    Node {
        #[arg(value_enum)]
        node: NodeKind,
        /// Config file; default `config/<node>.toml` if it exists.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Check the shop's books (stock conservation, order/inventory
    /// agreement, nothing stuck); exits 1 when an invariant is broken.
    Audit {
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        inventory_url: String,
        #[arg(long, default_value = "http://127.0.0.1:8082")]
        order_url: String,
        /// Seconds after which unsettled work counts as stuck.
        #[arg(long, default_value_t = 60.0)]
        horizon_secs: f64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// For https:// node URLs: trust only the CAs in this PEM file
        /// (default: the system's root certificates).
        #[arg(long, value_name = "FILE")]
        ca_path: Option<PathBuf>,
    },
    /// Publish a message (a file, or stdin) to a topic N times.
    Inject {
        /// Topic below the prefix, e.g. `orders/send`.
        #[arg(long)]
        topic: String,
        /// Payload file; `-` or absent reads stdin.
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        times: usize,
        /// Give every copy a fresh message_id.
        #[arg(long)]
        fresh_ids: bool,
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        login: Login,
    },
    /// Record everything on the bus to a JSON-lines file.
    Capture {
        #[arg(long)]
        out: PathBuf,
        /// How long to record (Ctrl-C stops early).
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        login: Login,
    },
    /// Publish a capture again: all of it, or a selection, in any order.
    Replay {
        #[arg(long)]
        file: PathBuf,
        /// Only these topics (repeatable), e.g. `--topic inventory/in-stock`.
        #[arg(long)]
        topic: Vec<String>,
        /// Only messages about this order.
        #[arg(long)]
        order_id: Option<String>,
        /// Shuffle with this seed.
        #[arg(long)]
        shuffle: Option<u64>,
        /// Replay last to first.
        #[arg(long)]
        reverse: bool,
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        login: Login,
    },
    /// A fault-injecting MQTT proxy: point nodes at --listen instead of the
    /// broker.
    Chaos {
        #[arg(long, default_value = "127.0.0.1:1884")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:1883")]
        upstream: SocketAddr,
        /// Probability to duplicate a client PUBLISH.
        #[arg(long, default_value_t = 0.1)]
        duplicate: f64,
        /// Probability to delay a client PUBLISH (by up to --max-delay-ms).
        #[arg(long, default_value_t = 0.1)]
        delay: f64,
        #[arg(long, default_value_t = 200)]
        max_delay_ms: u64,
        /// Probability to hold a PUBLISH back behind the next one.
        #[arg(long, default_value_t = 0.1)]
        reorder: f64,
        /// Probability to cut the connection at a PUBLISH.
        #[arg(long, default_value_t = 0.0)]
        cut: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Once per client: keep back the PUBACK of its first QoS 1 publish,
        /// then cut its connection after N more publishes (or after
        /// --max-delay-ms if it stops sending).
        #[arg(long, value_name = "N")]
        withhold_ack: Option<u32>,
    },
    /// Publish random and malformed messages (and copies of real ones) at
    /// every topic of the shop, seeded and rate-limited.
    Fuzz {
        /// How long to publish (Ctrl-C stops early).
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Stop after this many messages instead (or whichever comes first
        /// with --seconds).
        #[arg(long)]
        count: Option<u64>,
        /// Most messages per second.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Largest payload in bytes (keep it below the broker's and the
        /// nodes' packet limit, 4 MiB).
        #[arg(long, default_value_t = webshop::tools::fuzz::DEFAULT_MAX_BYTES)]
        max_bytes: usize,
        /// MQTT username, when the broker requires one.
        #[arg(long)]
        username: Option<String>,
        #[arg(long, env = "WEBSHOP_FUZZ_PASSWORD", hide_env_values = true, requires = "username")]
        password: Option<String>,
        #[command(flatten)]
        bus: BusArgs,
    },
    /// List a node's dead letters, or publish one again.
    DeadLetters {
        /// The node's base URL (inventory or order).
        #[arg(long, default_value = "http://127.0.0.1:8082")]
        node: String,
        /// Publish the dead letter with this id again (after a fix).
        #[arg(long)]
        replay: Option<i64>,
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        login: Login,
    },
    /// Measure throughput and latency percentiles (catalog reads, orders and
    /// cancels end to end) next to reference limits of this machine.
    Bench(Box<webshop::tools::bench::Args>),
    /// Print an haproxy (2.6) configuration that balances several fronts
    /// (docs/SCALING.md, "Fronts behind haproxy").
    HaproxyConfig {
        /// Where haproxy listens, host:port (`*:80`: every address).
        #[arg(long)]
        listen: webshop::haproxy::Addr,
        /// A public-front instance, host:port (repeat for each).
        #[arg(long = "front", required = true)]
        fronts: Vec<webshop::haproxy::Addr>,
        /// Where haproxy serves its stats page and Prometheus metrics
        /// (default: none).
        #[arg(long)]
        stats: Option<webshop::haproxy::Addr>,
        /// An internal listener for several inventory instances (the
        /// fronts' inventory_url), host:port.
        #[arg(long, requires = "inventories")]
        inventory_listen: Option<webshop::haproxy::Addr>,
        /// An inventory instance, host:port (repeat for each).
        #[arg(long = "inventory", requires = "inventory_listen")]
        inventories: Vec<webshop::haproxy::Addr>,
        /// An internal listener for several order instances (the fronts'
        /// order_url), host:port.
        #[arg(long, requires = "orders")]
        order_listen: Option<webshop::haproxy::Addr>,
        /// An order instance, host:port (repeat for each).
        #[arg(long = "order", requires = "order_listen")]
        orders: Vec<webshop::haproxy::Addr>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load a node's config file (plus its environment overrides) as the
    /// node would, and report the first bad key or print the result.
    Check {
        file: PathBuf,
        /// Which node the file is for; default: from the file name.
        #[arg(long, value_enum)]
        node: Option<NodeKind>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum NodeKind {
    Broker,
    Inventory,
    Order,
    Front,
}

/// A login on the broker for the tester tools: a user with the tester role
/// where the broker has users (`webshop up` lets clients without a login in
/// as testers).
#[derive(clap::Args)]
struct Login {
    /// MQTT user name.
    #[arg(long, env = "WEBSHOP_MQTT_USERNAME")]
    username: Option<String>,
    #[arg(long, env = "WEBSHOP_MQTT_PASSWORD", hide_env_values = true, requires = "username")]
    password: Option<String>,
}

impl Login {
    fn credentials(self) -> Option<(String, String)> {
        self.username.map(|u| (u, self.password.unwrap_or_default()))
    }
}

#[derive(clap::Args)]
struct BusArgs {
    /// The broker, host:port.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    #[arg(long, default_value = shared::topics::DEFAULT_PREFIX)]
    prefix: String,
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
    /// Keep the services' data in this PostgreSQL database instead of
    /// SQLite files (postgres://user@host:port/database; each service in
    /// its own schema). The password from PGPASSWORD, not the URL.
    #[arg(long, value_name = "URL", env = "WEBSHOP_DB_URL", hide_env_values = true)]
    db_url: Option<String>,
    /// Bearer token for the front's /admin routes (unset: admin disabled).
    #[arg(long, env = "WEBSHOP_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// How long inventory holds a cart's stock after the cart last changed,
    /// in seconds (inventory's `hold_secs`).
    #[arg(long, default_value_t = 900.0)]
    hold_secs: f64,
    /// Log filter (`RUST_LOG` wins).
    #[arg(long, default_value = "info,rumqttd=warn")]
    log: String,
    /// Export spans to this OTLP/HTTP collector (base URL, e.g.
    /// http://127.0.0.1:4318); `OTEL_EXPORTER_OTLP_ENDPOINT` works too.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Up(up) => run_up(up).await,
        Command::Cluster(args) => {
            let shutdown = CancellationToken::new();
            shared::shutdown::cancel_on_signal(shutdown.clone());
            webshop::cluster::run(args, shutdown).await
        }
        Command::Bench(args) => webshop::tools::bench::run(*args).await.map(drop),
        Command::Node { node, config } => node.run(config).await,
        Command::Config { command: ConfigCommand::Check { file, node } } => check_config(&file, node),
        Command::Audit { inventory_url, order_url, horizon_secs, json, ca_path } => {
            audit(&inventory_url, &order_url, horizon_secs, json, ca_path.as_deref()).await
        }
        Command::Inject { topic, file, times, fresh_ids, bus, login } => {
            inject(topic, file, times, fresh_ids, bus, login).await
        }
        Command::Capture { out, seconds, bus, login } => {
            let (secs, credentials) = (shared::config::secs(seconds), login.credentials());
            let n = webshop::tools::capture::capture(&bus.broker, credentials, &bus.prefix, secs, &out).await?;
            println!("captured {n} message(s) to {}", out.display());
            Ok(())
        }
        Command::Replay { file, topic, order_id, shuffle, reverse, bus, login } => {
            use webshop::tools::capture;
            let msgs = capture::read_capture(&file)?;
            let total = msgs.len();
            let sel = capture::Selection { topics: topic, order_id, shuffle_seed: shuffle, reverse };
            let msgs = capture::select(msgs, &sel);
            let n = capture::replay(&bus.broker, login.credentials(), msgs).await?;
            println!("replayed {n} of {total} captured message(s)");
            Ok(())
        }
        Command::Chaos { listen, upstream, duplicate, delay, max_delay_ms, reorder, cut, seed, withhold_ack } => {
            let faults = webshop::tools::chaos::Faults {
                duplicate,
                delay,
                max_delay: Duration::from_millis(max_delay_ms),
                reorder,
                cut,
                seed,
                withhold_ack,
            };
            chaos(listen, upstream, faults).await
        }
        Command::Fuzz { seconds, count, rate, seed, max_bytes, username, password, bus } => {
            let cfg = webshop::tools::fuzz::Fuzz {
                broker: bus.broker,
                prefix: bus.prefix,
                credentials: username.map(|u| (u, password.unwrap_or_default())),
                seed,
                duration: Some(shared::config::secs(seconds)),
                count,
                rate,
                max_bytes,
            };
            let shutdown = CancellationToken::new();
            shared::shutdown::cancel_on_signal(shutdown.clone());
            print!("{}", webshop::tools::fuzz::run(cfg, shutdown).await?);
            Ok(())
        }
        Command::DeadLetters { node, replay, bus, login } => dead_letters(&node, replay, &bus, login).await,
        Command::HaproxyConfig { listen, fronts, stats, inventory_listen, inventories, order_listen, orders } => {
            let internal = [("inventory", inventory_listen, inventories), ("order", order_listen, orders)]
                .into_iter()
                .filter_map(|(service, listen, servers)| {
                    Some(webshop::haproxy::Internal { service, listen: listen?, servers })
                })
                .collect();
            print!("{}", webshop::haproxy::render(&webshop::haproxy::Balancer { listen, fronts, stats, internal }));
            Ok(())
        }
    }
}

impl NodeKind {
    /// The config file a node reads when none is named, if it exists.
    fn default_config(self) -> &'static str {
        match self {
            NodeKind::Broker => "config/broker.toml",
            NodeKind::Inventory => "config/inventory.toml",
            NodeKind::Order => "config/order.toml",
            NodeKind::Front => "config/front.toml",
        }
    }

    /// The node a config file is for, by its name (`front.toml`, ...).
    fn from_file_name(file: &Path) -> Option<NodeKind> {
        match file.file_stem().and_then(|s| s.to_str()).unwrap_or("") {
            "broker" => Some(NodeKind::Broker),
            "inventory" => Some(NodeKind::Inventory),
            "order" => Some(NodeKind::Order),
            "front" | "public-front" => Some(NodeKind::Front),
            _ => None,
        }
    }

    /// Runs the node as its own binary would.
    async fn run(self, config: Option<PathBuf>) -> anyhow::Result<()> {
        let path = config.or_else(|| Some(PathBuf::from(self.default_config())).filter(|p| p.exists()));
        let file = path.as_deref();
        match self {
            NodeKind::Broker => broker::main_with_config(file).await,
            NodeKind::Inventory => inventory::main_with_config(file).await,
            NodeKind::Order => order::main_with_config(file).await,
            NodeKind::Front => public_front::main_with_config(file).await,
        }
    }
}

/// A node's config as `config check` sees it: loaded from the file and the
/// environment (keys prefixed `ENV_PREFIX`).
trait NodeConfig: serde::de::DeserializeOwned + serde::Serialize + Default + std::fmt::Debug {
    const ENV_PREFIX: &'static str;
    fn opens(&self) -> Opens<'_>;
}

/// What a node opens at start, besides reading its keys.
struct Opens<'a> {
    tls: &'a shared::config::TlsConfig,
    /// The bus connection (the broker has none).
    bus: Option<&'a shared::config::BusConfig>,
    log: &'a shared::config::LogConfig,
    /// CAs trusted for the nodes' HTTPS (the front's `downstream_ca_path`).
    ca_path: Option<&'a Path>,
}

impl NodeConfig for broker::BrokerConfig {
    const ENV_PREFIX: &'static str = broker::ENV_PREFIX;
    fn opens(&self) -> Opens<'_> {
        Opens { tls: &self.tls, bus: None, log: &self.log, ca_path: None }
    }
}

impl NodeConfig for inventory::Config {
    const ENV_PREFIX: &'static str = inventory::config::ENV_PREFIX;
    fn opens(&self) -> Opens<'_> {
        Opens { tls: &self.tls, bus: Some(&self.bus), log: &self.log, ca_path: None }
    }
}

impl NodeConfig for order::Config {
    const ENV_PREFIX: &'static str = order::config::ENV_PREFIX;
    fn opens(&self) -> Opens<'_> {
        Opens { tls: &self.tls, bus: Some(&self.bus), log: &self.log, ca_path: None }
    }
}

impl NodeConfig for public_front::Config {
    const ENV_PREFIX: &'static str = public_front::config::ENV_PREFIX;
    fn opens(&self) -> Opens<'_> {
        Opens { tls: &self.tls, bus: Some(&self.bus), log: &self.log, ca_path: self.downstream_ca_path.as_deref() }
    }
}

/// `webshop config check`: loads `file` as its node would and reports the
/// first bad key or file, or prints the result.
fn check_config(file: &Path, node: Option<NodeKind>) -> anyhow::Result<()> {
    let node = node
        .or_else(|| NodeKind::from_file_name(file))
        .context("can't tell the node from the file name; pass --node")?;
    let shown = match node {
        NodeKind::Broker => loaded::<broker::BrokerConfig>(file)?,
        NodeKind::Inventory => loaded::<inventory::Config>(file)?,
        NodeKind::Order => loaded::<order::Config>(file)?,
        NodeKind::Front => loaded::<public_front::Config>(file)?,
    };
    println!("{shown}");
    println!("ok: {} is a valid configuration", file.display());
    Ok(())
}

/// The config in `file` (plus its environment overrides), checked, as the
/// node would print it. Besides the keys, the files a node loads at start
/// (TLS) and the OTLP endpoint, so a bad one is named here too.
fn loaded<C: NodeConfig>(file: &Path) -> anyhow::Result<String> {
    let cfg = shared::config::load::<C>(Some(file), C::ENV_PREFIX)?;
    let opens = cfg.opens();
    shared::tls::server_config("tls", opens.tls)?;
    if let Some(bus) = opens.bus {
        shared::tls::bus_transport(bus)?;
    }
    if let Some(ca) = opens.ca_path {
        shared::tls::load_certs("downstream_ca_path", ca)?;
    }
    shared::telemetry::check(opens.log)?;
    Ok(format!("{cfg:#?}"))
}

/// `webshop audit`: exits 1 when an invariant is broken.
async fn audit(
    inventory_url: &str,
    order_url: &str,
    horizon_secs: f64,
    json: bool,
    ca_path: Option<&Path>,
) -> anyhow::Result<()> {
    let down =
        public_front::downstream::Downstream::with_ca_path(inventory_url, order_url, Duration::from_secs(30), ca_path)?;
    let report = public_front::audit::run(&down, shared::config::secs(horizon_secs))
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.detail))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    std::process::exit(if report.passed { 0 } else { 1 });
}

async fn inject(
    topic: String,
    file: Option<PathBuf>,
    times: usize,
    fresh_ids: bool,
    bus: BusArgs,
    login: Login,
) -> anyhow::Result<()> {
    let payload = match file.filter(|f| f.as_os_str() != "-") {
        Some(f) => std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?,
        None => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            buf
        }
    };
    let n = webshop::tools::inject::run(webshop::tools::inject::Inject {
        broker: bus.broker,
        prefix: bus.prefix,
        topic,
        payload,
        times,
        fresh_ids,
        credentials: login.credentials(),
    })
    .await?;
    println!("published {n} message(s), all acknowledged by the broker");
    Ok(())
}

/// `webshop chaos`: the proxy until Ctrl-C, with its counts every 5 s.
async fn chaos(listen: SocketAddr, upstream: SocketAddr, faults: webshop::tools::chaos::Faults) -> anyhow::Result<()> {
    let _telemetry = shared::telemetry::init("webshop-chaos", &Default::default())?;
    let shutdown = CancellationToken::new();
    let chaos = webshop::tools::chaos::start(listen, upstream, faults, shutdown.clone()).await?;
    println!("chaos proxy on mqtt://{} -> {upstream} (Ctrl-C to stop)", chaos.addr);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => println!("{}", chaos.stats.report()),
        }
    }
    shutdown.cancel();
    println!("final: {}", chaos.stats.report());
    Ok(())
}

/// `webshop dead-letters`: lists a node's dead letters, or publishes one
/// again.
async fn dead_letters(node: &str, replay: Option<i64>, bus: &BusArgs, login: Login) -> anyhow::Result<()> {
    let url = format!("{}/dead-letters?limit=1000", node.trim_end_matches('/'));
    let letters: Vec<DeadLetter> =
        reqwest::get(&url).await.with_context(|| format!("reading {url}"))?.error_for_status()?.json().await?;
    let Some(id) = replay else {
        for d in &letters {
            println!(
                "#{} {} {} bytes order={} reason: {}",
                d.id,
                d.topic,
                d.payload_bytes,
                d.order_id.as_deref().unwrap_or("-"),
                d.reason
            );
        }
        println!("{} dead letter(s)", letters.len());
        return Ok(());
    };
    let d = letters
        .into_iter()
        .find(|d| d.id == id)
        .with_context(|| format!("no dead letter #{id} among the latest 1000"))?;
    if d.payload_bytes != d.payload.len() as i64 {
        anyhow::bail!("dead letter #{id} was stored truncated; it can't be replayed");
    }
    let messages = vec![(d.topic.clone(), d.payload.into_bytes())];
    webshop::tools::mqtt::publish_all(&bus.broker, login.credentials(), messages).await?;
    println!("dead letter #{id} published again to {}", d.topic);
    Ok(())
}

/// `webshop up`: the broker (unless external) and the three nodes, until
/// Ctrl-C or SIGTERM.
async fn run_up(up: Up) -> anyhow::Result<()> {
    let log = shared::config::LogConfig {
        filter: up.log.clone(),
        otlp_endpoint: up.otlp_endpoint.clone(),
        ..Default::default()
    };
    // One subscriber and one exporter for all three nodes; spans tell the
    // nodes apart by their `node` attribute. Dropped at the end: flushes.
    let _telemetry = shared::telemetry::init("webshop", &log)?;
    let broker = start_broker(&up)?;
    let shutdown = CancellationToken::new();
    shared::shutdown::cancel_on_signal(shutdown.clone());
    let nodes = Nodes::build(&up, &broker, &log, shutdown).await?;
    print_addresses(&up, &nodes);
    nodes.run().await?;
    println!("webshop stopped cleanly");
    // rumqttd has no shutdown API; leaving main ends its thread.
    Ok(())
}

/// Where the nodes reach the broker, and how each role logs in.
struct BrokerAccess {
    host: String,
    port: u16,
    /// Each role's password; empty for an external broker (no logins).
    logins: HashMap<Role, String>,
}

impl BrokerAccess {
    /// The bus settings of a node that logs in as `role`.
    fn bus(&self, client_id: &str, role: Role) -> shared::config::BusConfig {
        shared::config::BusConfig {
            host: self.host.clone(),
            port: self.port,
            client_id: client_id.to_owned(),
            username: self.logins.get(&role).map(|_| role.name().to_owned()),
            password: self.logins.get(&role).cloned(),
            ..Default::default()
        }
    }
}

/// The broker the nodes use: `--external-broker`, or the embedded one,
/// started here.
fn start_broker(up: &Up) -> anyhow::Result<BrokerAccess> {
    if let Some(addr) = &up.external_broker {
        let (host, port) = addr.rsplit_once(':').context("--external-broker must be host:port")?;
        let port = port.parse().context("--external-broker port must be a number")?;
        return Ok(BrokerAccess { host: host.to_owned(), port, logins: HashMap::new() });
    }
    // Each node logs in to the embedded broker as its role, with a password
    // made up for this run, so the broker holds it to its role's topics.
    let logins: HashMap<Role, String> = [Role::Front, Role::Order, Role::Inventory]
        .into_iter()
        .map(|r| (r, uuid::Uuid::new_v4().simple().to_string()))
        .collect();
    // The nodes run in this process: the broker stays on loopback whatever
    // --host says (beyond loopback it would need users). Clients without a
    // login are testers (every topic).
    let loopback = IpAddr::from([127, 0, 0, 1]);
    broker::spawn(&broker::BrokerConfig {
        listen: SocketAddr::new(loopback, up.broker_port),
        users: logins.iter().map(|(r, p)| (r.name().to_owned(), p.clone())).collect(),
        anonymous_tester: true,
        ..Default::default()
    })?;
    Ok(BrokerAccess { host: loopback.to_string(), port: up.broker_port, logins })
}

/// A service's database under `webshop up`: `<data dir>/<name>.db`, or its
/// schema in the PostgreSQL database of `--db-url`.
fn node_db(up: &Up, name: &str, schema: &str) -> shared::config::DbConfig {
    shared::config::DbConfig {
        path: up.data_dir.join(format!("{name}.db")),
        url: up.db_url.clone(),
        schema: schema.to_owned(),
        ..Default::default()
    }
}

/// The three nodes, listening but not yet running.
struct Nodes {
    inventory: inventory::App,
    order: order::App,
    front: public_front::App,
}

impl Nodes {
    /// Builds inventory and order, then the front pointed at them.
    async fn build(
        up: &Up,
        broker: &BrokerAccess,
        log: &shared::config::LogConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Nodes> {
        let admin_token = || up.admin_token.clone().map(shared::config::Secret::new);
        let inventory = inventory::App::build(
            inventory::Config {
                listen: SocketAddr::new(up.host, up.inventory_port),
                bus: broker.bus("webshop-inventory", Role::Inventory),
                db: node_db(up, "inventory", "inventory"),
                log: log.clone(),
                admin_token: admin_token(),
                hold_secs: up.hold_secs,
                ..Default::default()
            },
            shutdown.clone(),
        )
        .await
        .context("starting inventory")?;
        let order = order::App::build(
            order::Config {
                listen: SocketAddr::new(up.host, up.order_port),
                bus: broker.bus("webshop-order", Role::Order),
                db: node_db(up, "order", "orders"),
                log: log.clone(),
                admin_token: admin_token(),
                ..Default::default()
            },
            shutdown.clone(),
        )
        .await
        .context("starting order")?;
        let front = public_front::App::build(
            public_front::Config {
                listen: SocketAddr::new(up.host, up.front_port),
                bus: broker.bus("", Role::Front),
                inventory_url: format!("http://{}", inventory.local_addr()),
                order_url: format!("http://{}", order.local_addr()),
                admin_token: admin_token(),
                log: log.clone(),
                // One front and no load balancer to move traffic away first.
                drain_grace_secs: 0.0,
                ..Default::default()
            },
            shutdown,
        )
        .await
        .context("starting public-front")?;
        Ok(Nodes { inventory, order, front })
    }

    /// Runs all three until shutdown; the first failure, named by node.
    async fn run(self) -> anyhow::Result<()> {
        let (inventory, order, front) = tokio::join!(self.inventory.run(), self.order.run(), self.front.run());
        inventory.context("inventory")?;
        order.context("order")?;
        front.context("public-front")?;
        Ok(())
    }
}

/// What `webshop up` started, and where.
fn print_addresses(up: &Up, nodes: &Nodes) {
    println!("webshop is up (Ctrl-C to stop)");
    match &up.external_broker {
        Some(addr) => println!("  broker        mqtt://{addr} (external)"),
        None => println!(
            "  broker        mqtt://127.0.0.1:{} (embedded, in memory; nodes log in with their roles, \
             clients without a login are testers)",
            up.broker_port
        ),
    }
    println!("  storefront    http://{}/", nodes.front.local_addr());
    println!("  public API    http://{}/api/catalog", nodes.front.local_addr());
    println!("  inventory     http://{}", nodes.inventory.local_addr());
    println!("  order         http://{}", nodes.order.local_addr());
    match &up.db_url {
        Some(url) => {
            println!("  data          {} (PostgreSQL, schemas inventory and orders)", shared::config::redact_url(url))
        }
        None => println!("  data          {} (SQLite)", up.data_dir.display()),
    }
}
