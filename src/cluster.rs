//! `webshop cluster`: a scaled-out shop on one machine, to try fail-over.
//!
//! PostgreSQL (the server `--db-url` names, or a cluster of its own under
//! the data directory), the broker, N instances of each node as processes
//! of this binary, and haproxy in front of the fronts (and, internally, of
//! the inventory and order instances). A node that exits is started again
//! after a second, so killing one shows a fail-over and then a rebalance.
//! Ctrl-C stops everything: fronts first, then the services, the broker,
//! haproxy and PostgreSQL.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::haproxy::{Addr, Balancer, Internal};

/// What `webshop cluster` takes.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Instances of each node (front, inventory, order).
    #[arg(long, default_value_t = 2)]
    pub instances: u16,
    /// Partitions the services' topics are split into (`bus.partitions`).
    #[arg(long, default_value_t = 8)]
    pub partitions: u16,
    /// Where haproxy takes the shop's traffic; the nodes listen on the
    /// ports above it (see what is printed). 0: every listener on a free
    /// port.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// 0: a free port.
    #[arg(long, default_value_t = 1883)]
    pub broker_port: u16,
    /// Directory for the logs, haproxy's configuration and (without
    /// `--db-url`) the PostgreSQL cluster. Created if missing.
    #[arg(long, default_value = "data-cluster")]
    pub data_dir: PathBuf,
    /// Use this PostgreSQL database (postgres://user@host:port/database;
    /// the password from PGPASSWORD) instead of a cluster of its own.
    #[arg(long, value_name = "URL", env = "WEBSHOP_DB_URL", hide_env_values = true)]
    pub db_url: Option<String>,
    /// The port of its own PostgreSQL cluster (without `--db-url`); 0: a
    /// free port.
    #[arg(long, default_value_t = 55432)]
    pub pg_port: u16,
}

/// One process of the shop, restarted when it exits by itself.
struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Child,
}

impl Proc {
    fn spawn(
        name: String,
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        logs: &Path,
    ) -> anyhow::Result<Proc> {
        let log = logs.join(format!("{name}.log"));
        let child = start(&program, &args, &env, &log)?;
        Ok(Proc { name, program, args, env, log, child })
    }

    fn pid(&self) -> String {
        self.child.id().map_or("-".into(), |p| p.to_string())
    }

    /// Started again if it exited; says so.
    fn tend(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            println!("{} exited ({status}); starting it again (log: {})", self.name, self.log.display());
            self.child = start(&self.program, &self.args, &self.env, &self.log)?;
            println!("{} is pid {}", self.name, self.pid());
        }
        Ok(())
    }

    /// SIGTERM: the process drains and exits.
    fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
    }

    /// Up to `grace` to exit, then SIGKILL.
    async fn wait(&mut self, grace: Duration) {
        if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
            println!("{} did not stop within {grace:?}; killing it", self.name);
            let _ = self.child.kill().await;
        }
    }
}

fn start(program: &Path, args: &[String], env: &[(String, String)], log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    Command::new(program)
        .args(args)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        // A group of its own: Ctrl-C in the terminal reaches only this
        // command, which stops the processes in order (a second signal
        // would make a node exit without draining).
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

/// A port nothing listens on now (the system's choice).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `port`, or a free one for 0.
fn or_free(port: u16) -> anyhow::Result<u16> {
    if port == 0 {
        free_port()
    } else {
        Ok(port)
    }
}

fn local(port: u16) -> Addr {
    Addr::parse(&format!("127.0.0.1:{port}")).expect("a loopback address")
}

/// An installed program, by the paths Debian puts it at.
fn installed(paths: &[&str]) -> Option<PathBuf> {
    paths.iter().map(PathBuf::from).find(|p| p.exists())
}

/// Runs the scaled-out shop until Ctrl-C (or `shutdown`).
pub async fn run(args: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    if args.instances == 0 {
        bail!("--instances must be at least 1");
    }
    shared::topics::Partitions::new(args.partitions)?;
    let haproxy = installed(&["/usr/sbin/haproxy", "/usr/bin/haproxy"])
        .context("haproxy is not installed (Debian: apt-get install haproxy)")?;
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let logs = data_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let exe = std::env::current_exe().context("finding this program")?;

    let postgres = match &args.db_url {
        Some(url) => Postgres::External(url.clone()),
        None => Postgres::own(&data_dir.join("postgres"), or_free(args.pg_port)?).await?,
    };
    let result = run_shop(&args, &exe, &haproxy, &logs, &data_dir, postgres.url(), shutdown).await;
    postgres.stop();
    result
}

async fn run_shop(
    args: &Args,
    exe: &Path,
    haproxy: &Path,
    logs: &Path,
    data_dir: &Path,
    db_url: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let n = args.instances;
    let public = or_free(args.port)?;
    let broker_port = or_free(args.broker_port)?;
    let port = |offset: u16| match args.port {
        0 => free_port(),
        base => base.checked_add(offset).context("--port is too high for the ports above it"),
    };
    let (inventory_lb, order_lb, stats) = (port(1)?, port(2)?, port(4)?);
    let common = |upper: &str, listen: u16| {
        vec![
            (format!("WEBSHOP_{upper}__LISTEN"), format!("127.0.0.1:{listen}")),
            (format!("WEBSHOP_{upper}__BUS__PORT"), broker_port.to_string()),
            (format!("WEBSHOP_{upper}__BUS__PARTITIONS"), args.partitions.to_string()),
            ("RUST_LOG".into(), "info,rumqttd=warn".into()),
        ]
    };
    let node = |name: String, kind: &str, env: Vec<(String, String)>| {
        Proc::spawn(name, exe.to_owned(), vec!["node".into(), kind.into()], env, logs)
    };

    let mut broker = node(
        "broker".into(),
        "broker",
        vec![
            ("WEBSHOP_BROKER__LISTEN".into(), format!("127.0.0.1:{broker_port}")),
            ("WEBSHOP_BROKER__METRICS_LISTEN".into(), format!("127.0.0.1:{}", port(3)?)),
            ("RUST_LOG".into(), "info,rumqttd=warn".into()),
        ],
    )?;
    let mut services = Vec::new();
    let mut ports: HashMap<&str, Vec<u16>> = HashMap::new();
    for (kind, upper, schema, base) in [("inventory", "INVENTORY", "inventory", 20), ("order", "ORDER", "orders", 30)] {
        for i in 0..n {
            let listen = port(base + i)?;
            let mut env = common(upper, listen);
            env.push((format!("WEBSHOP_{upper}__DB__URL"), db_url.clone()));
            env.push((format!("WEBSHOP_{upper}__DB__SCHEMA"), schema.into()));
            services.push(node(format!("{kind}-{}", i + 1), kind, env)?);
            ports.entry(kind).or_default().push(listen);
        }
    }
    let mut fronts = Vec::new();
    for i in 0..n {
        let listen = port(10 + i)?;
        let mut env = common("FRONT", listen);
        env.push(("WEBSHOP_FRONT__INVENTORY_URL".into(), format!("http://127.0.0.1:{inventory_lb}")));
        env.push(("WEBSHOP_FRONT__ORDER_URL".into(), format!("http://127.0.0.1:{order_lb}")));
        fronts.push(node(format!("front-{}", i + 1), "front", env)?);
        ports.entry("front").or_default().push(listen);
    }
    let servers = |kind: &str| ports[kind].iter().map(|p| local(*p)).collect::<Vec<_>>();
    let config = crate::haproxy::render(&Balancer {
        listen: local(public),
        fronts: servers("front"),
        stats: Some(local(stats)),
        internal: vec![
            Internal { service: "inventory", listen: local(inventory_lb), servers: servers("inventory") },
            Internal { service: "order", listen: local(order_lb), servers: servers("order") },
        ],
    });
    let config_path = data_dir.join("haproxy.cfg");
    std::fs::write(&config_path, config)?;
    let mut balancer = Proc::spawn(
        "haproxy".into(),
        haproxy.to_owned(),
        vec!["-f".into(), config_path.display().to_string(), "-db".into()],
        Vec::new(),
        logs,
    )?;

    // Ready when haproxy reaches a ready front (which reaches inventory
    // and order through haproxy).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .pool_idle_timeout(shared::http::CLIENT_POOL_IDLE_TIMEOUT)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let ready_url = format!("http://127.0.0.1:{public}/readyz");
    loop {
        if http.get(&ready_url).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        for p in services.iter_mut().chain(&mut fronts).chain([&mut broker, &mut balancer]) {
            if let Ok(Some(status)) = p.child.try_wait() {
                bail!("{} exited ({status}) while starting; its log: {}", p.name, p.log.display());
            }
        }
        if Instant::now() > deadline || shutdown.is_cancelled() {
            bail!("the shop was not ready within 120 s; the logs are in {}", logs.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    println!("webshop cluster is up (Ctrl-C to stop): {n} of each node, {} partitions", args.partitions);
    println!("  storefront    http://127.0.0.1:{public}/ (haproxy)");
    println!("  public API    http://127.0.0.1:{public}/api/catalog");
    println!("  haproxy stats http://127.0.0.1:{stats}/");
    println!("  inventory     http://127.0.0.1:{inventory_lb} (haproxy, internal)");
    println!("  order         http://127.0.0.1:{order_lb} (haproxy, internal)");
    println!("  broker        mqtt://127.0.0.1:{broker_port} (embedded, pid {})", broker.pid());
    println!("  data          {} (PostgreSQL, schemas inventory and orders)", shared::config::redact_url(&db_url));
    for p in services.iter().chain(&fronts) {
        let listen = p.env.iter().find(|(k, _)| k.ends_with("__LISTEN")).map_or("", |(_, v)| v.as_str());
        println!("  {:<13} http://{listen} (pid {})", p.name, p.pid());
    }
    println!("  logs          {}", logs.display());
    println!("Try: kill -9 one of the pids above; the other instance takes its partitions over,");
    println!("it is started again, and the partitions rebalance (GET /stats on each shows them).");

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        for p in services.iter_mut().chain(&mut fronts).chain([&mut broker, &mut balancer]) {
            p.tend()?;
        }
    }
    println!("stopping: fronts, then inventory and order, the broker and haproxy");
    for group in [&mut fronts, &mut services] {
        group.iter().for_each(Proc::terminate);
        for p in group.iter_mut() {
            p.wait(Duration::from_secs(15)).await;
        }
    }
    for p in [&mut broker, &mut balancer] {
        p.terminate();
        p.wait(Duration::from_secs(5)).await;
    }
    println!("webshop cluster stopped cleanly");
    Ok(())
}

/// The database the services share.
enum Postgres {
    External(String),
    /// A cluster of the command's own, stopped at the end.
    Own {
        bin: PathBuf,
        data: PathBuf,
        port: u16,
        as_postgres: bool,
    },
}

impl Postgres {
    /// Starts the cluster under `dir` (made with `initdb` on first use) on
    /// `port`.
    async fn own(dir: &Path, port: u16) -> anyhow::Result<Postgres> {
        let bin = pg_bin().context(
            "PostgreSQL's server programs are not installed (Debian: apt-get install postgresql), \
             or pass --db-url",
        )?;
        // initdb refuses root: as root the cluster belongs to `postgres`.
        let as_postgres =
            std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        std::fs::create_dir_all(dir)?;
        if as_postgres {
            let ok = std::process::Command::new("chown").args(["-R", "postgres:", &dir.display().to_string()]).status();
            if !ok.is_ok_and(|s| s.success()) {
                bail!("could not give {} to the postgres user", dir.display());
            }
        }
        let pg = Postgres::Own { bin, data: dir.join("data"), port, as_postgres };
        let Postgres::Own { data, .. } = &pg else { unreachable!() };
        let data_s = data.display().to_string();
        if !data.join("PG_VERSION").exists() {
            println!("creating a PostgreSQL cluster in {data_s}");
            pg.tool("initdb", &["-D", &data_s, "-U", "postgres", "-A", "trust"])?;
        }
        let opts = format!("-c listen_addresses=127.0.0.1 -p {port} -k {}", dir.display());
        let log = dir.join("postgres.log").display().to_string();
        pg.tool("pg_ctl", &["-D", &data_s, "-l", &log, "-w", "-o", &opts, "start"])
            .with_context(|| format!("starting PostgreSQL (its log: {log})"))?;
        // The shop's own database, made once.
        let admin = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await?;
        let exists =
            sqlx::query("SELECT 1 FROM pg_database WHERE datname = 'webshop'").fetch_optional(&mut conn).await?;
        if exists.is_none() {
            sqlx::query("CREATE DATABASE webshop").execute(&mut conn).await?;
        }
        Ok(pg)
    }

    fn url(&self) -> String {
        match self {
            Postgres::External(url) => url.clone(),
            Postgres::Own { port, .. } => format!("postgres://postgres@127.0.0.1:{port}/webshop"),
        }
    }

    fn tool(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let Postgres::Own { bin, as_postgres, .. } = self else { return Ok(()) };
        let exe = bin.join(tool);
        let mut cmd = if *as_postgres {
            let mut cmd = std::process::Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(exe);
            cmd
        } else {
            std::process::Command::new(exe)
        };
        let out = cmd.args(args).output().with_context(|| format!("running {tool}"))?;
        if !out.status.success() {
            bail!("{tool} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    fn stop(&self) {
        if let Postgres::Own { data, .. } = self {
            let data = data.display().to_string();
            if let Err(e) = self.tool("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]) {
                eprintln!("stopping PostgreSQL: {e}");
            }
        }
    }
}

/// The server programs of the newest installed PostgreSQL.
fn pg_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        .collect();
    found.sort();
    found.pop()
}
