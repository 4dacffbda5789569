//! The shop under test: started in this process (like `webshop up`), as
//! separate `webshop node` processes (so each node's memory and CPU can be
//! read from /proc), or a running shop given by its URLs.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Stock each product gets in a shop the bench starts: enough that no
/// order is ever rejected for lack of stock.
pub const BENCH_STOCK: i64 = 1_000_000_000;

/// How the bench sets up a shop it starts itself.
#[derive(Debug, Clone)]
pub struct Settings {
    pub synchronous: String,
    pub log: String,
    pub admin_token: String,
    /// PostgreSQL instead of SQLite files.
    pub postgres: Option<BenchDb>,
    /// `db.retention.*` of both services, seconds; `None`: their defaults.
    pub retention_secs: Option<f64>,
}

/// A PostgreSQL database for a bench run: the services get schemas of
/// their own, named after the run, dropped when the shop stops.
#[derive(Debug, Clone)]
pub struct BenchDb {
    pub url: String,
    pub run: String,
}

impl Settings {
    /// Where the services keep their data, for the report.
    pub fn store(&self) -> String {
        match &self.postgres {
            Some(_) => "PostgreSQL, synchronous_commit as the server sets it (default on)".into(),
            None => format!("SQLite, synchronous={}", self.synchronous),
        }
    }

    /// The schema `service` uses on PostgreSQL.
    fn schema(&self, service: &str) -> String {
        self.postgres.as_ref().map_or_else(|| service.to_owned(), |p| format!("bench_{}_{service}", p.run))
    }

    /// A service's database settings.
    fn db(&self, dir: &std::path::Path, service: &str, schema: &str) -> anyhow::Result<shared::config::DbConfig> {
        Ok(shared::config::DbConfig {
            path: dir.join(format!("{service}.db")),
            synchronous: self.synchronous.parse()?,
            url: self.postgres.as_ref().map(|p| p.url.clone()),
            schema: self.schema(schema),
            retention: self.retention_secs.map_or_else(Default::default, |s| shared::config::Retention {
                sent_events_secs: s,
                inbox_secs: s,
                timeline_secs: s,
                carts_secs: s.max(3600.0),
            }),
            ..Default::default()
        })
    }

    /// The `WEBSHOP_<NODE>__DB__*` variables of a node process.
    fn db_env(&self, dir: &std::path::Path, node: &str, schema: &str) -> Vec<(String, String)> {
        let upper = node.to_ascii_uppercase();
        let mut env = vec![
            (format!("WEBSHOP_{upper}__DB__PATH"), dir.join(format!("{node}.db")).display().to_string()),
            (format!("WEBSHOP_{upper}__DB__SYNCHRONOUS"), self.synchronous.clone()),
        ];
        if let Some(s) = self.retention_secs {
            for key in ["SENT_EVENTS_SECS", "INBOX_SECS", "TIMELINE_SECS"] {
                env.push((format!("WEBSHOP_{upper}__DB__RETENTION__{key}"), s.to_string()));
            }
        }
        if let Some(p) = &self.postgres {
            env.push((format!("WEBSHOP_{upper}__DB__URL"), p.url.clone()));
            env.push((format!("WEBSHOP_{upper}__DB__SCHEMA"), self.schema(schema)));
        }
        env
    }

    /// Drops the run's schemas (PostgreSQL).
    pub async fn clean_up(&self) {
        use sqlx::Connection;
        let Some(p) = &self.postgres else { return };
        let Ok(mut conn) = sqlx::PgConnection::connect(&p.url).await else { return };
        for schema in [self.schema("inventory"), self.schema("orders")] {
            if let Err(e) = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&mut conn).await {
                eprintln!("could not drop the bench schema {schema}: {e}");
            }
        }
        let _ = conn.close().await;
    }
}

/// A node whose resource use can be read from /proc.
#[derive(Debug, Clone)]
pub struct Pid {
    pub node: String,
    pub pid: u32,
}

pub struct Shop {
    pub front: String,
    pub inventory: Option<String>,
    pub order: Option<String>,
    /// The broker, `host:port`, when the bench may observe the bus.
    pub broker: Option<String>,
    /// What /proc can tell about the shop's processes.
    pub pids: Vec<Pid>,
    /// How the shop runs, for the report.
    pub kind: &'static str,
    running: Running,
    dir: Option<tempfile::TempDir>,
}

impl Shop {
    /// The node processes the bench started that have exited.
    pub fn exited(&self) -> Vec<String> {
        if !matches!(self.running, Running::Processes(_)) {
            return Vec::new();
        }
        self.pids
            .iter()
            .filter(|p| p.pid != std::process::id() && !super::procfs::running(p.pid))
            .map(|p| p.node.clone())
            .collect()
    }

    /// The size of the SQLite files of a shop the bench started (none on
    /// PostgreSQL or for a running shop), and how many orders it holds
    /// (the order node's `orders` gauge).
    pub async fn disk(&self, retention_secs: Option<f64>) -> Option<super::report::Disk> {
        let dir = self.dir.as_ref()?.path();
        let mut bytes = 0;
        let mut sqlite = false;
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".db") || name.ends_with(".db-wal") || name.ends_with(".db-shm") {
                sqlite |= name.ends_with(".db");
                bytes += entry.metadata().ok()?.len();
            }
        }
        if !sqlite {
            return None;
        }
        let metrics = reqwest::get(format!("{}/metrics", self.order.as_ref()?)).await.ok()?.text().await.ok()?;
        let orders: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("orders{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        let keep = match retention_secs {
            Some(s) => format!("sent events, inbox ids and timeline notes kept {s:.0} s"),
            None => "sent events kept 24 h, inbox ids and timeline notes 7 days".into(),
        };
        Some(super::report::Disk {
            bytes,
            orders: orders as u64,
            note: format!("SQLite files and WALs of both services, {keep}, warm-ups included"),
        })
    }
}

enum Running {
    InProcess { shutdown: CancellationToken, tasks: JoinSet<anyhow::Result<()>> },
    Processes(Children),
    Remote,
}

/// Child processes, killed when dropped (also when the bench fails midway).
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The sample catalog, every product with plenty of stock.
pub fn bench_products() -> anyhow::Result<Vec<inventory::store::SeedProduct>> {
    let mut products: Vec<inventory::store::SeedProduct> = serde_json::from_str(inventory::SAMPLE_CATALOG)?;
    for p in &mut products {
        p.stock = BENCH_STOCK;
    }
    Ok(products)
}

/// [`bench_products`] as a catalog file in `dir`.
fn bench_catalog(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("catalog.json");
    std::fs::write(&path, serde_json::to_vec(&bench_products()?)?)?;
    Ok(path)
}

impl Shop {
    /// Broker and the three nodes in this process, on free ports, with
    /// their databases in a temp dir.
    pub async fn in_process(s: &Settings) -> anyhow::Result<Shop> {
        let dir = tempfile::tempdir()?;
        let catalog = bench_catalog(dir.path())?;
        let broker_addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        broker::spawn(&broker::BrokerConfig { listen: broker_addr, ..Default::default() })?;
        let bus = |id: &str| shared::config::BusConfig {
            port: broker_addr.port(),
            client_id: id.to_owned(),
            ..Default::default()
        };
        let any_port: SocketAddr = "127.0.0.1:0".parse()?;
        let token = Some(shared::config::Secret::new(&s.admin_token));
        let shutdown = CancellationToken::new();
        let inventory = inventory::App::build(
            inventory::Config {
                listen: any_port,
                bus: bus("bench-inventory"),
                db: s.db(dir.path(), "inventory", "inventory")?,
                admin_token: token.clone(),
                catalog: Some(catalog),
                ..Default::default()
            },
            shutdown.clone(),
        )
        .await
        .context("starting inventory")?;
        let order = order::App::build(
            order::Config {
                listen: any_port,
                bus: bus("bench-order"),
                db: s.db(dir.path(), "order", "orders")?,
                admin_token: token.clone(),
                ..Default::default()
            },
            shutdown.clone(),
        )
        .await
        .context("starting order")?;
        let (inventory_url, order_url) =
            (format!("http://{}", inventory.local_addr()), format!("http://{}", order.local_addr()));
        let front = public_front::App::build(
            public_front::Config {
                listen: any_port,
                bus: bus(""),
                inventory_url: inventory_url.clone(),
                order_url: order_url.clone(),
                admin_token: token,
                // No load balancer to move traffic away first.
                drain_grace_secs: 0.0,
                ..Default::default()
            },
            shutdown.clone(),
        )
        .await
        .context("starting public-front")?;
        let front_url = format!("http://{}", front.local_addr());
        let mut tasks = JoinSet::new();
        tasks.spawn(inventory.run());
        tasks.spawn(order.run());
        tasks.spawn(front.run());
        let shop = Shop {
            front: front_url,
            inventory: Some(inventory_url),
            order: Some(order_url),
            broker: Some(broker_addr.to_string()),
            pids: vec![Pid { node: "all nodes + bench client (one process)".into(), pid: std::process::id() }],
            kind: "in-process (broker, inventory, order, front and the load generator share one process)",
            running: Running::InProcess { shutdown, tasks },
            dir: Some(dir),
        };
        shop.wait_ready().await?;
        Ok(shop)
    }

    /// Broker and nodes as `webshop node ...` processes of this binary.
    pub async fn processes(s: &Settings) -> anyhow::Result<Shop> {
        let dir = tempfile::tempdir()?;
        let catalog = bench_catalog(dir.path())?;
        let exe = std::env::current_exe().context("finding the webshop binary")?;
        let [b, i, o, f, m] = [free_port()?, free_port()?, free_port()?, free_port()?, free_port()?];
        let nodes: [(&str, Vec<(String, String)>); 4] = [
            (
                "broker",
                vec![
                    ("WEBSHOP_BROKER__LISTEN".into(), format!("127.0.0.1:{b}")),
                    // Not the default 9042, which a shop already running here holds.
                    ("WEBSHOP_BROKER__METRICS_LISTEN".into(), format!("127.0.0.1:{m}")),
                ],
            ),
            (
                "inventory",
                vec![
                    ("WEBSHOP_INVENTORY__LISTEN".into(), format!("127.0.0.1:{i}")),
                    ("WEBSHOP_INVENTORY__BUS__PORT".into(), b.to_string()),
                    ("WEBSHOP_INVENTORY__CATALOG".into(), catalog.display().to_string()),
                    ("WEBSHOP_INVENTORY__ADMIN_TOKEN".into(), s.admin_token.clone()),
                ]
                .into_iter()
                .chain(s.db_env(dir.path(), "inventory", "inventory"))
                .collect(),
            ),
            (
                "order",
                vec![
                    ("WEBSHOP_ORDER__LISTEN".into(), format!("127.0.0.1:{o}")),
                    ("WEBSHOP_ORDER__BUS__PORT".into(), b.to_string()),
                ]
                .into_iter()
                .chain(s.db_env(dir.path(), "order", "orders"))
                .collect(),
            ),
            (
                "front",
                vec![
                    ("WEBSHOP_FRONT__LISTEN".into(), format!("127.0.0.1:{f}")),
                    ("WEBSHOP_FRONT__BUS__PORT".into(), b.to_string()),
                    ("WEBSHOP_FRONT__INVENTORY_URL".into(), format!("http://127.0.0.1:{i}")),
                    ("WEBSHOP_FRONT__ORDER_URL".into(), format!("http://127.0.0.1:{o}")),
                ],
            ),
        ];
        let mut children = Children(Vec::new());
        let mut pids = Vec::new();
        for (node, env) in nodes {
            // An empty config file: only the built-in defaults and the
            // environment apply, wherever the bench is started from.
            let config = dir.path().join(format!("{node}.toml"));
            std::fs::write(&config, "")?;
            let child = Command::new(&exe)
                .args(["node", node, "--config"])
                .arg(&config)
                .envs(env)
                .env("RUST_LOG", &s.log)
                .stdout(Stdio::null())
                .spawn()
                .with_context(|| format!("starting the {node} process"))?;
            pids.push(Pid { node: node.to_owned(), pid: child.id() });
            children.0.push(child);
            if node == "broker" {
                wait_for_port(b).await?;
            }
        }
        pids.push(Pid { node: "bench client".into(), pid: std::process::id() });
        let shop = Shop {
            front: format!("http://127.0.0.1:{f}"),
            inventory: Some(format!("http://127.0.0.1:{i}")),
            order: Some(format!("http://127.0.0.1:{o}")),
            broker: Some(format!("127.0.0.1:{b}")),
            pids,
            kind: "separate processes (one per node, as `webshop node ...`), the load generator in its own",
            running: Running::Processes(children),
            dir: Some(dir),
        };
        shop.wait_ready().await?;
        Ok(shop)
    }

    /// A shop that is already running.
    pub async fn remote(
        front: String,
        inventory: Option<String>,
        order: Option<String>,
        broker: Option<String>,
    ) -> anyhow::Result<Shop> {
        let trim = |u: String| u.trim_end_matches('/').to_owned();
        let shop = Shop {
            front: trim(front),
            inventory: inventory.map(trim),
            order: order.map(trim),
            broker,
            pids: Vec::new(),
            kind: "a running shop (started elsewhere)",
            running: Running::Remote,
            dir: None,
        };
        shop.wait_ready().await?;
        Ok(shop)
    }

    /// Waits until every known node answers `/readyz` with 200.
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let urls = [Some(&self.front), self.inventory.as_ref(), self.order.as_ref()];
        let deadline = Instant::now() + Duration::from_secs(30);
        for base in urls.into_iter().flatten() {
            let url = format!("{base}/readyz");
            loop {
                if let Ok(r) = http.get(&url).send().await {
                    if r.status().is_success() {
                        break;
                    }
                }
                if Instant::now() > deadline {
                    bail!("{url} did not answer 200 within 30 s");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Stops what the bench started.
    pub async fn stop(self) {
        match self.running {
            Running::InProcess { shutdown, mut tasks } => {
                shutdown.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(10), async {
                    while let Some(r) = tasks.join_next().await {
                        if let Ok(Err(e)) = r {
                            tracing::warn!(error = %e, "a node stopped with an error");
                        }
                    }
                })
                .await;
            }
            // Their data is thrown away: a kill is enough.
            Running::Processes(children) => drop(children),
            Running::Remote => {}
        }
    }
}

async fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            bail!("the broker process did not listen on port {port} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
