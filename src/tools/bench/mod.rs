//! `webshop bench`: throughput and latency percentiles of the shop, end to
//! end, next to reference limits measured on the same machine.
//!
//! Layout:
//! - `shop.rs`: the shop under test (in this process, as node processes,
//!   or a running one);
//! - `load.rs`: closed- and open-loop load of catalog reads, orders and
//!   cancels; `observe.rs`: seeing statuses on the bus; `record.rs`:
//!   histograms;
//! - `reference.rs`: SQLite, broker and single-process baselines;
//! - `procfs.rs`: machine facts, CPU and memory per process;
//! - `report.rs` and `svg.rs`: the table, `result.json` and `report.svg`.

mod http;
mod load;
mod observe;
mod procfs;
mod record;
mod reference;
mod report;
mod shop;
mod svg;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use load::{Load, Watch, Work};
use report::{BenchResult, PhaseResult, References, Settings};
use shop::Shop;

/// What to measure, in the order it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Reference: SQLite commits/s, 1 and 100 rows per commit.
    Sqlite,
    /// Reference: the embedded broker's QoS 1 messages/s.
    Broker,
    /// Reference: the handlers' database work per order, no messaging.
    Baseline,
    /// Catalog reads through the front, closed loop.
    Catalog,
    /// Orders until confirmed, closed loop.
    Closed,
    /// Orders until confirmed as polling clients see it: GET
    /// /api/orders/{id} every --poll-every-ms (one phase per interval).
    Poll,
    /// Orders until confirmed as long-polling clients see it: POST with
    /// `Prefer: wait`, then `?wait=&version=` while pending.
    LongPoll,
    /// Cancels of confirmed orders until cancelled, closed loop.
    Cancel,
    /// Server carts filled with a line and checked out until confirmed
    /// (long polls), closed loop.
    Cart,
    /// Orders until confirmed, open loop at --rate (last: an overloaded
    /// shop may not recover in time for another phase).
    Open,
}

/// Where a shop the bench starts keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Store {
    /// SQLite files in a temp directory, at --synchronous.
    Sqlite,
    /// Schemas of their own in the --db-url database.
    Postgres,
}

impl Store {
    /// What a phase on this store adds to its name (none for the first
    /// store, so a single-store report reads as before).
    fn suffix(self, first: bool) -> String {
        match (first, self) {
            (true, _) => String::new(),
            (false, Store::Sqlite) => "@sqlite".into(),
            (false, Store::Postgres) => "@postgres".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Observe {
    /// Subscribe to `orders/status` on the broker (no load on the shop).
    Bus,
    /// Poll `GET /api/orders/{id}` (when the broker is out of reach).
    Poll,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Seconds each load phase is measured, after its warm-up.
    #[arg(long, default_value_t = 5.0)]
    pub duration_secs: f64,
    /// Seconds of load before each phase starts counting.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_secs: f64,
    /// Seconds each reference limit is measured.
    #[arg(long, default_value_t = 2.0)]
    pub reference_secs: f64,
    /// How long the shop the bench starts keeps sent events, inbox ids and
    /// timeline notes (`db.retention.*`, at least 60 s); default: the
    /// shop's own (24 h, 7 days). A run longer than this shows the files'
    /// size at a steady rate.
    #[arg(long)]
    pub retention_secs: Option<f64>,
    /// Concurrent clients of the closed-loop order and cancel phases (256:
    /// with the MQTT window of 500, enough to keep both writers' batches
    /// full on 2 cores; 128 left them waiting on round trips whenever the
    /// disk's fsyncs slowed down).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Concurrent clients of the catalog phase.
    #[arg(long, default_value_t = 64)]
    pub catalog_concurrency: usize,
    /// Orders per second offered by the open-loop phase; several
    /// (comma-separated) run one phase each, slowest first.
    #[arg(long, value_delimiter = ',', default_value = "250,1000")]
    pub rate: Vec<f64>,
    /// Most open-loop requests in flight; beyond, requests count as errors.
    #[arg(long, default_value_t = 20_000)]
    pub max_inflight: usize,
    /// SQLite `synchronous` of a shop the bench starts, and of the
    /// references: FULL (durable: fsync per commit) or NORMAL.
    #[arg(long, default_value = "FULL")]
    pub synchronous: String,
    /// A PostgreSQL database to run the load phases on too
    /// (postgres://user@host:port/database, password from PGPASSWORD), in
    /// schemas of its own that the bench drops afterwards: the phases run
    /// on SQLite, then again on PostgreSQL, in one report.
    #[arg(long, value_name = "URL", env = "WEBSHOP_DB_URL", hide_env_values = true)]
    pub db_url: Option<String>,
    /// The stores the load phases run on, in order (default: SQLite, and
    /// PostgreSQL after it when --db-url is given).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub stores: Vec<Store>,
    /// Run broker and nodes as separate `webshop node` processes, to see
    /// each node's CPU and memory.
    #[arg(long)]
    pub processes: bool,
    /// Benchmark a running shop at this front URL instead of starting one.
    #[arg(long)]
    pub front_url: Option<String>,
    /// The running shop's inventory (readiness; restock with --admin-token).
    #[arg(long, requires = "front_url")]
    pub inventory_url: Option<String>,
    /// The running shop's order node (readiness).
    #[arg(long, requires = "front_url")]
    pub order_url: Option<String>,
    /// The running shop's broker, host:port, to observe statuses on.
    #[arg(long, requires = "front_url")]
    pub broker: Option<String>,
    /// Inventory admin token of a running shop: restock the products used.
    #[arg(long, env = "WEBSHOP_BENCH_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    #[arg(long, default_value = shared::topics::DEFAULT_PREFIX)]
    pub prefix: String,
    /// How clients see an order's status.
    #[arg(long, value_enum, default_value = "bus")]
    pub observe: Observe,
    /// Poll interval with `--observe poll`, ms.
    #[arg(long, default_value_t = 5)]
    pub poll_ms: u64,
    /// Poll intervals of the `poll` phases, ms (one phase each, in order).
    #[arg(long, value_delimiter = ',', default_value = "20,5")]
    pub poll_every_ms: Vec<u64>,
    /// Per-stage timings: the observer also subscribes to orders/send,
    /// orders/cancel, inventory/in-stock and inventory/released (more load
    /// on the broker).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub stages: bool,
    /// Log filter of a shop the bench starts (`info` logs every order).
    #[arg(long, default_value = "warn,rumqttd=off")]
    pub log: String,
    /// Phases to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sqlite,broker,baseline,catalog,closed,poll,long-poll,cancel,cart,open"
    )]
    pub phases: Vec<Phase>,
    /// Where result.json and report.svg go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
}

/// Runs the bench, prints the summary and writes the result files.
pub async fn run(args: Args) -> anyhow::Result<BenchResult> {
    let _telemetry = shared::telemetry::init(
        "webshop-bench",
        &shared::config::LogConfig { filter: args.log.clone(), ..Default::default() },
    )?;
    let started_at =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let synchronous = args.synchronous.to_ascii_uppercase();
    let has = |p: Phase| args.phases.contains(&p);
    let secs = args.reference_secs;

    let load_phases =
        [Phase::Catalog, Phase::Closed, Phase::Poll, Phase::LongPoll, Phase::Cancel, Phase::Cart, Phase::Open];
    let wants_load = load_phases.iter().any(|p| has(*p));
    let reference_phases: Vec<Phase> =
        [Phase::Sqlite, Phase::Broker, Phase::Baseline].into_iter().filter(|p| has(*p)).collect();
    // References first, while nothing else runs. With a shop to follow they
    // run in a child process: the reference broker can't be stopped and
    // keeps its messages in memory, which would count as the shop's.
    let references = if reference_phases.is_empty() {
        References::default()
    } else if wants_load {
        references_in_child(&args, &reference_phases).await?
    } else {
        references(&args, &synchronous).await?
    };

    let mut phases = Vec::new();
    let mut memory: Vec<procfs::Usage> = Vec::new();
    let mut shop_kind = String::from("not started (reference phases only)");
    let mut stores = Vec::new();
    let mut disk = None;
    if wants_load {
        for (i, store) in stores_to_run(&args)?.into_iter().enumerate() {
            let settings = shop_settings(&args, &synchronous, store);
            let shop = start_shop(&args, &settings).await?;
            shop_kind = shop.kind.to_owned();
            stores.push(settings.store());
            let result = run_load(&args, &shop, &store.suffix(i == 0), &mut phases, &mut memory).await;
            if result.is_ok() && disk.is_none() {
                disk = shop.disk(args.retention_secs).await;
            }
            shop.stop().await;
            settings.clean_up().await;
            result?;
        }
    }

    let mut result = BenchResult {
        started_at,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine: procfs::machine(),
        settings: Settings {
            shop: shop_kind,
            store: stores.join("; then "),
            synchronous,
            log_filter: args.log.clone(),
            observe: match args.observe {
                Observe::Bus => "bus (orders/status subscriber)".into(),
                Observe::Poll => format!("poll every {} ms", args.poll_ms),
            },
            stages: args.stages && args.observe == Observe::Bus,
            consumer_batch: shared::consumer::MAX_BATCH,
            relay_batch: shared::outbox::BATCH as usize,
            concurrency: args.concurrency,
            catalog_concurrency: args.catalog_concurrency,
            open_rates_per_s: args.rate.clone(),
            warmup_secs: args.warmup_secs,
            duration_secs: args.duration_secs,
            reference_secs: secs,
        },
        references,
        phases,
        ratios: Vec::new(),
        targets: Vec::new(),
        memory,
        disk,
    };
    result.compute_ratios();
    result.compute_targets();
    println!("{}", result.table());
    result.write(&args.out)?;
    println!("wrote {} and {}", args.out.join("result.json").display(), args.out.join("report.svg").display());
    Ok(result)
}

/// Measures the reference limits asked for in `args.phases`.
async fn references(args: &Args, synchronous: &str) -> anyhow::Result<References> {
    let has = |p: Phase| args.phases.contains(&p);
    let secs = args.reference_secs;
    let mut r = References::default();
    if has(Phase::Sqlite) {
        eprintln!("reference: SQLite commits ({secs} s each)...");
        r.sqlite_single = Some(reference::sqlite(synchronous, 1, false, secs).await?);
        r.sqlite_batched = Some(reference::sqlite(synchronous, reference::BATCH, false, secs).await?);
        r.sqlite_one_statement = Some(reference::sqlite(synchronous, reference::BATCH, true, secs).await?);
    }
    if has(Phase::Broker) {
        eprintln!("reference: broker QoS 1 ({secs} s)...");
        r.broker = Some(reference::broker(secs).await?);
    }
    if has(Phase::Baseline) {
        eprintln!("reference: single-process baseline ({secs} s)...");
        r.baseline = Some(reference::baseline(synchronous, secs).await?);
    }
    Ok(r)
}

/// [`references`] in a `webshop bench` child process; reads its result.
async fn references_in_child(args: &Args, phases: &[Phase]) -> anyhow::Result<References> {
    use clap::ValueEnum;
    let dir = tempfile::tempdir()?;
    let names: Vec<String> =
        phases.iter().filter_map(|p| p.to_possible_value()).map(|v| v.get_name().to_owned()).collect();
    let exe = std::env::current_exe().context("finding the webshop binary")?;
    let status = tokio::process::Command::new(exe)
        .args(["bench", "--synchronous", &args.synchronous, "--phases", &names.join(",")])
        .args(["--reference-secs", &args.reference_secs.to_string(), "--log", &args.log])
        .arg("--out")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .context("running the reference measurements")?;
    anyhow::ensure!(status.success(), "the reference measurements failed ({status})");
    let result: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("result.json"))?)?;
    Ok(serde_json::from_value(result["references"].clone())?)
}

/// The stores the load phases run on: as asked, or SQLite and, with
/// --db-url, PostgreSQL after it.
fn stores_to_run(args: &Args) -> anyhow::Result<Vec<Store>> {
    if args.front_url.is_some() {
        return Ok(vec![Store::Sqlite]);
    }
    let stores = match (args.stores.is_empty(), &args.db_url) {
        (false, _) => args.stores.clone(),
        (true, Some(_)) => vec![Store::Sqlite, Store::Postgres],
        (true, None) => vec![Store::Sqlite],
    };
    anyhow::ensure!(
        args.db_url.is_some() || !stores.contains(&Store::Postgres),
        "--stores postgres needs --db-url (or WEBSHOP_DB_URL)"
    );
    Ok(stores)
}

fn shop_settings(args: &Args, synchronous: &str, store: Store) -> shop::Settings {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let postgres = match store {
        Store::Sqlite => None,
        Store::Postgres => args.db_url.clone().map(|url| shop::BenchDb { url, run: run[..8].to_owned() }),
    };
    shop::Settings {
        synchronous: synchronous.to_owned(),
        log: args.log.clone(),
        admin_token: format!("bench-{run}"),
        postgres,
        retention_secs: args.retention_secs,
    }
}

async fn start_shop(args: &Args, settings: &shop::Settings) -> anyhow::Result<Shop> {
    match &args.front_url {
        Some(front) => {
            eprintln!("benchmarking the shop at {front}...");
            Shop::remote(front.clone(), args.inventory_url.clone(), args.order_url.clone(), args.broker.clone()).await
        }
        None if args.processes => {
            eprintln!("starting the shop as node processes ({})...", settings.store());
            Shop::processes(settings).await
        }
        None => {
            eprintln!("starting the shop in this process ({})...", settings.store());
            Shop::in_process(settings).await
        }
    }
}

async fn run_load(
    args: &Args,
    shop: &Shop,
    suffix: &str,
    phases: &mut Vec<PhaseResult>,
    memory: &mut Vec<procfs::Usage>,
) -> anyhow::Result<()> {
    let watch = match (&shop.broker, args.observe) {
        (Some(broker), Observe::Bus) => Watch::Bus(observe::Observer::start(broker, &args.prefix, args.stages).await?),
        (None, Observe::Bus) => {
            eprintln!("no --broker to observe statuses on: polling GET /api/orders/{{id}} instead");
            Watch::Poll(Duration::from_millis(args.poll_ms))
        }
        (_, Observe::Poll) => Watch::Poll(Duration::from_millis(args.poll_ms)),
    };
    let skus = products(args, shop).await?;
    let load = Arc::new(Load::new(&shop.front, watch, skus)?);
    let warmup = Duration::from_secs_f64(args.warmup_secs);
    let duration = Duration::from_secs_f64(args.duration_secs);
    let mut rates = args.rate.clone();
    rates.sort_by(f64::total_cmp);
    let mut specs: Vec<(Phase, String, String, Work, Option<f64>)> = vec![
        (
            Phase::Catalog,
            "catalog".into(),
            "GET /api/catalog?limit=20 through the front (front → inventory → SQLite read)".into(),
            Work::Catalog,
            None,
        ),
        (
            Phase::Closed,
            "order-closed".into(),
            "POST /api/orders until status confirmed is observed on the bus; each client waits for its order before the next".into(),
            Work::Order,
            None,
        ),
    ];
    for ms in &args.poll_every_ms {
        specs.push((
            Phase::Poll,
            format!("order-poll-{ms}ms"),
            format!("POST /api/orders, then GET /api/orders/{{id}} every {ms} ms until the client sees confirmed"),
            Work::PollOrder(Duration::from_millis(*ms)),
            None,
        ));
    }
    specs.extend([
        (
            Phase::LongPoll,
            "order-long-poll".into(),
            "POST /api/orders with Prefer: wait=5, then GET ?wait=5s&version=N while pending, until the client sees confirmed".into(),
            Work::LongPollOrder,
            None,
        ),
        (
            Phase::Cancel,
            "cancel".into(),
            "POST /api/orders/{id}/cancel on a confirmed order until status cancelled is observed".into(),
            Work::Cancel,
            None,
        ),
        (
            Phase::Cart,
            "cart-checkout".into(),
            "POST /api/carts, PUT one line (held by inventory), POST checkout with Prefer: wait=5, long polls until the client sees confirmed".into(),
            Work::Cart,
            None,
        ),
    ]);
    for rate in rates {
        specs.push((
            Phase::Open,
            "order-open".into(),
            "POST /api/orders until confirmed observed, on a fixed schedule; latency from the scheduled start".into(),
            Work::Order,
            Some(rate),
        ));
    }
    for (phase, name, description, work, rate) in specs {
        if !args.phases.contains(&phase) {
            continue;
        }
        if work == Work::Cancel && load.confirmed_count() == 0 {
            eprintln!("skipping the cancel phase: no confirmed orders to cancel (run an order phase first)");
            continue;
        }
        let concurrency = if work == Work::Catalog { args.catalog_concurrency } else { args.concurrency };
        let (mode, conc) = match rate {
            Some(r) => (format!("open, {r:.0}/s"), None),
            None => (format!("closed, {concurrency} clients"), Some(concurrency)),
        };
        eprintln!("phase {name} ({mode}): {:.0} s warm-up, {:.0} s measured...", args.warmup_secs, args.duration_secs);
        let sampler = procfs::Sampler::start(&shop.pids);
        let measured = match rate {
            Some(r) => load::open(&load, work, r, warmup, duration, args.max_inflight).await,
            None => load::closed(&load, work, concurrency, warmup, duration).await,
        };
        // A node that died makes the phase's figures those of a broken shop.
        let exited = shop.exited();
        if !exited.is_empty() {
            anyhow::bail!(
                "the {} process exited during phase {name}: no figures for a broken shop (what it printed is above)",
                exited.join(" and ")
            );
        }
        let resources: Vec<procfs::Usage> = sampler
            .finish()
            .await
            .into_iter()
            .map(|u| procfs::Usage { node: format!("{}{suffix}", u.node), ..u })
            .collect();
        for u in &resources {
            match memory.iter_mut().find(|m| m.node == u.node) {
                Some(m) => {
                    m.rss_peak_mib = m.rss_peak_mib.max(u.rss_peak_mib);
                    m.hwm_mib = m.hwm_mib.max(u.hwm_mib);
                    m.cpu_s += u.cpu_s;
                }
                None => memory.push(u.clone()),
            }
        }
        let name = format!("{name}{suffix}");
        phases.push(PhaseResult { name, description, mode, concurrency: conc, rate_per_s: rate, measured, resources });
    }
    Ok(())
}

/// The SKUs orders use: the catalog's, most stock first. A running shop's
/// products are restocked when the bench has its inventory admin token.
async fn products(args: &Args, shop: &Shop) -> anyhow::Result<Vec<String>> {
    let http = reqwest::Client::new();
    let page: serde_json::Value = http
        .get(format!("{}/api/catalog?limit=100", shop.front))
        .send()
        .await?
        .error_for_status()
        .context("reading the catalog")?
        .json()
        .await?;
    let mut items: Vec<(String, i64)> = page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["sku"].as_str()?.to_owned(), p["available"].as_i64().unwrap_or(0))))
        .collect();
    items.sort_by_key(|(_, available)| std::cmp::Reverse(*available));
    let skus: Vec<String> = items.into_iter().take(20).map(|(sku, _)| sku).collect();
    if skus.is_empty() {
        anyhow::bail!("the catalog at {} is empty: nothing to order", shop.front);
    }
    if let (Some(inventory), Some(token), true) = (&shop.inventory, &args.admin_token, args.front_url.is_some()) {
        for sku in &skus {
            http.patch(format!("{inventory}/admin/products/{sku}"))
                .bearer_auth(token)
                .json(&serde_json::json!({ "available": shop::BENCH_STOCK }))
                .send()
                .await?
                .error_for_status()
                .with_context(|| format!("restocking {sku}"))?;
        }
        eprintln!("restocked {} products to {} each", skus.len(), shop::BENCH_STOCK);
    } else if args.front_url.is_some() {
        eprintln!("no --admin-token: orders may be rejected once the shop's stock runs out");
    }
    Ok(skus)
}
