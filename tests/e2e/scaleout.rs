//! Several instances of every node, Jepsen style: two inventories, two
//! order services and two fronts (processes) share one PostgreSQL database
//! and a Mosquitto broker, with 8 partitions, behind haproxy. Clients place
//! orders (hot SKUs, retries of the same key through either front) and
//! cancel some, while a nemesis kills -9, stops (SIGSTOP, then SIGCONT: a
//! zombie), terminates (SIGTERM) and restarts instances and restarts the
//! broker. Every HTTP
//! operation is recorded as ok, failed or indeterminate (a 5xx or no
//! answer); after healing, the indeterminate ones are retried with their
//! keys. Then: no accepted order lost, nothing applied twice, no stock
//! oversold or leaked (from the clients' own view of their orders, and by
//! the audit), statuses never fork, and every partition has exactly one
//! owner.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::crash::Proc;
use crate::helpers::*;

const PARTITIONS: u16 = 8;
/// SKUs the clients fight over, with the stock each starts with.
const HOT: [&str; 3] = ["FUEL-230G-001", "BOTL-STL-750", "CAND-SOY-001"];

/// A process that isn't the webshop binary (Mosquitto, haproxy),
/// restartable with the same arguments.
struct Plain {
    program: String,
    args: Vec<String>,
    child: Option<std::process::Child>,
}

impl Plain {
    fn spawn(program: &str, args: &[String]) -> Plain {
        let mut p = Plain { program: program.into(), args: args.to_vec(), child: None };
        p.start();
        p
    }

    fn start(&mut self) {
        let child = std::process::Command::new(&self.program)
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", self.program));
        self.child = Some(child);
    }

    /// SIGTERM (Mosquitto saves its sessions), wait, start again.
    fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
        self.start();
    }
}

impl Drop for Plain {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn binary(names: &[&str]) -> Option<String> {
    names.iter().find(|p| std::path::Path::new(p).exists()).map(|p| p.to_string())
}

/// Skips (or, with `var` set to 1, fails) when `what` isn't installed.
fn required(found: Option<String>, var: &str, what: &str) -> Option<String> {
    if found.is_none() {
        if std::env::var(var).as_deref() == Ok("1") {
            panic!("{what} is required ({var}) but not installed");
        }
        eprintln!("{what} not installed: skipping the scale-out test");
    }
    found
}

struct Scaled {
    dir: tempfile::TempDir,
    /// Mosquitto, ours to restart; `None` on the RabbitMQ node the test
    /// process shares.
    broker: Option<Plain>,
    _haproxy: Plain,
    inventories: Vec<Proc>,
    orders: Vec<Proc>,
    fronts: Vec<Proc>,
    /// haproxy's public, inventory and order ports.
    lb: [u16; 3],
    node_ports: HashMap<&'static str, u16>,
}

/// The broker the scaled-out shop runs on.
#[derive(Clone, Copy, PartialEq)]
enum Broker {
    /// A Mosquitto of the test's own, with persistence (restartable).
    Mosquitto,
    /// The RabbitMQ node the test process shares (its MQTT plugin, quorum
    /// queues), under a topic prefix and client ids of the test's own.
    RabbitMq,
}

impl Scaled {
    async fn start(store: &StoreAt, kind: Broker) -> Option<Scaled> {
        let haproxy =
            required(binary(&["/usr/sbin/haproxy", "/usr/bin/haproxy"]), "WEBSHOP_REQUIRE_HAPROXY", "haproxy")?;
        let dir = tempfile::tempdir().unwrap();
        let (broker, broker_port, bus_env) = match kind {
            Broker::Mosquitto => {
                let (broker, port) = Self::start_mosquitto(dir.path()).await?;
                (Some(broker), port, Vec::new())
            }
            Broker::RabbitMq => {
                let node = tokio::task::spawn_blocking(crate::helpers::rabbitmq::shared).await.unwrap()?;
                let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
                let env = vec![("TOPIC_PREFIX".to_owned(), format!("scaleout-{run}/v1/")), ("RUN".to_owned(), run)];
                (None, node.mqtt_port, env)
            }
        };
        let scaled = Self::start_nodes(store, dir, broker, broker_port, &bus_env, haproxy);
        Some(scaled)
    }

    async fn start_mosquitto(dir: &std::path::Path) -> Option<(Plain, u16)> {
        let mosquitto =
            required(binary(&["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]), "WEBSHOP_REQUIRE_MOSQUITTO", "mosquitto")?;
        let broker_port = free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
                 max_queued_messages 100000\nmax_inflight_messages 500\nmax_packet_size 4194304\n",
                dir.display()
            ),
        )
        .unwrap();
        let broker = Plain::spawn(&mosquitto, &["-c".into(), conf.display().to_string()]);
        eventually("mosquitto to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", broker_port)).await.ok().map(|_| ())
        })
        .await;
        Some((broker, broker_port))
    }

    /// The nodes and haproxy. `bus` holds `TOPIC_PREFIX` and `RUN` (a
    /// suffix for the services' client ids) on a shared broker.
    fn start_nodes(
        store: &StoreAt,
        dir: tempfile::TempDir,
        broker: Option<Plain>,
        broker_port: u16,
        bus: &[(String, String)],
        haproxy: String,
    ) -> Scaled {
        let setting = |k: &str| bus.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());

        let mut node_ports = HashMap::new();
        let names = ["inventory-a", "inventory-b", "order-a", "order-b", "front-a", "front-b"];
        for n in names {
            node_ports.insert(n, free_port());
        }
        let lb = [free_port(), free_port(), free_port()];
        let addr = |port: u16| webshop::haproxy::Addr::parse(&format!("127.0.0.1:{port}")).unwrap();
        let instances = |prefix: &str| -> Vec<webshop::haproxy::Addr> {
            names.iter().filter(|n| n.starts_with(prefix)).map(|n| addr(node_ports[n])).collect()
        };
        let cfg = webshop::haproxy::render(&webshop::haproxy::Balancer {
            listen: addr(lb[0]),
            fronts: instances("front"),
            stats: None,
            internal: vec![
                webshop::haproxy::Internal {
                    service: "inventory",
                    listen: addr(lb[1]),
                    servers: instances("inventory"),
                },
                webshop::haproxy::Internal { service: "order", listen: addr(lb[2]), servers: instances("order") },
            ],
        });
        let hcfg = dir.path().join("haproxy.cfg");
        std::fs::write(&hcfg, cfg).unwrap();
        let haproxy = Plain::spawn(&haproxy, &["-f".into(), hcfg.display().to_string(), "-db".into()]);

        let e = |pairs: Vec<(String, String)>| -> HashMap<String, String> { pairs.into_iter().collect() };
        let node = |name: &'static str, kind: &'static str, extra: Vec<(String, String)>| {
            let upper = if kind == "front" { "FRONT".to_owned() } else { kind.to_ascii_uppercase() };
            let mut env = vec![
                (format!("WEBSHOP_{upper}__LISTEN"), format!("127.0.0.1:{}", node_ports[name])),
                (format!("WEBSHOP_{upper}__BUS__PORT"), broker_port.to_string()),
                (format!("WEBSHOP_{upper}__BUS__PARTITIONS"), PARTITIONS.to_string()),
                ("RUST_LOG".into(), "warn,shared::ownership=info,rumqttd=off".into()),
            ];
            if let Some(prefix) = setting("TOPIC_PREFIX") {
                env.push((format!("WEBSHOP_{upper}__BUS__TOPIC_PREFIX"), prefix));
            }
            if let (Some(run), false) = (setting("RUN"), kind == "front") {
                // Every instance of a service shares its base client id.
                env.push((format!("WEBSHOP_{upper}__BUS__CLIENT_ID"), format!("scaleout-{kind}-{run}")));
            }
            env.extend(extra);
            if kind != "front" {
                env.extend(store.env(kind, dir.path()));
            }
            Proc::spawn(dir.path(), name, kind, e(env), None)
        };
        let inventories = vec![node("inventory-a", "inventory", vec![]), node("inventory-b", "inventory", vec![])];
        let follow_up = || vec![("WEBSHOP_ORDER__FOLLOW_UP_SECS".to_owned(), "1".to_owned())];
        let orders = vec![node("order-a", "order", follow_up()), node("order-b", "order", follow_up())];
        let front_env = || {
            vec![
                ("WEBSHOP_FRONT__INVENTORY_URL".to_owned(), format!("http://127.0.0.1:{}", lb[1])),
                ("WEBSHOP_FRONT__ORDER_URL".to_owned(), format!("http://127.0.0.1:{}", lb[2])),
                ("WEBSHOP_FRONT__COMMIT_TIMEOUT_SECS".to_owned(), "2".to_owned()),
            ]
        };
        let fronts = vec![node("front-a", "front", front_env()), node("front-b", "front", front_env())];
        Scaled { dir, broker, _haproxy: haproxy, inventories, orders, fronts, lb, node_ports }
    }

    fn public(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.lb[0])
    }

    fn node(&self, name: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.node_ports[name])
    }

    fn procs(&mut self) -> impl Iterator<Item = &mut Proc> {
        self.inventories.iter_mut().chain(self.orders.iter_mut()).chain(self.fronts.iter_mut())
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for p in self.inventories.iter().chain(&self.orders).chain(&self.fronts) {
            out.push_str(&format!("--- {} ---\n{}\n", p.name, p.tail()));
        }
        out
    }

    /// Every instance answers /readyz, and every partition of each service
    /// is owned by exactly one of its instances.
    async fn settled_ownership(&self, http: &reqwest::Client) -> Option<()> {
        for names in [["inventory-a", "inventory-b"], ["order-a", "order-b"]] {
            let mut owners: BTreeMap<u64, usize> = BTreeMap::new();
            for n in names {
                let stats: Value = http.get(self.node(n, "/stats")).send().await.ok()?.json().await.ok()?;
                for p in stats["partitions"].as_array()? {
                    *owners.entry(p.as_u64()?).or_default() += 1;
                }
            }
            if owners.len() != usize::from(PARTITIONS) || owners.values().any(|&n| n != 1) {
                return None;
            }
        }
        for n in ["front-a", "front-b"] {
            let r = http.get(self.node(n, "/readyz")).send().await.ok()?;
            r.status().is_success().then_some(())?;
        }
        // And haproxy sees them.
        for url in [self.public("/readyz"), self.public("/api/catalog?limit=1")] {
            let r = http.get(url).send().await.ok()?;
            r.status().is_success().then_some(())?;
        }
        Some(())
    }
}

/// What became of one HTTP operation.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// 2xx: the body.
    Ok(Value),
    /// A definite refusal (4xx): nothing happened.
    Failed(u16),
    /// 5xx or no answer: it may or may not have happened.
    Info,
}

#[derive(Clone, Debug)]
struct Place {
    key: String,
    body: Value,
    outcome: Outcome,
}

#[derive(Default)]
struct History {
    places: Vec<Place>,
    /// Order ids a client asked to cancel, and the last outcome.
    cancels: HashMap<String, Outcome>,
    /// Every (version, status) a client saw of each order.
    seen: HashMap<String, Vec<(i64, String)>>,
}

impl History {
    fn saw(&mut self, order: &Value) {
        if let (Some(id), Some(version), Some(status)) =
            (order["order_id"].as_str(), order["version"].as_i64(), order["status"].as_str())
        {
            self.seen.entry(id.to_owned()).or_default().push((version, status.to_owned()));
        }
    }
}

async fn post(http: &reqwest::Client, url: String, key: Option<&str>, body: &Value) -> Outcome {
    let mut req = http.post(url).json(body);
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => Outcome::Ok(r.json().await.unwrap_or(Value::Null)),
        Ok(r) if r.status().is_client_error() => Outcome::Failed(r.status().as_u16()),
        _ => Outcome::Info,
    }
}

fn order_body(rng: &mut impl Rng) -> Value {
    let lines = rng.gen_range(1..=2);
    let mut skus = HOT.to_vec();
    let items: Vec<Value> = (0..lines)
        .map(|_| {
            let sku = skus.remove(rng.gen_range(0..skus.len()));
            json!({"sku": sku, "quantity": rng.gen_range(1..=3)})
        })
        .collect();
    json!({"customer_email": "jepsen@example.com", "items": items})
}

/// One client: places orders, now and then retries a key it used (which
/// haproxy's round robin sends to the other front), and cancels some of
/// what it got.
async fn client(c: usize, base: String, http: reqwest::Client, history: Arc<Mutex<History>>, until: Instant) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(c as u64);
    let mut mine: Vec<(String, Value)> = Vec::new();
    let mut n = 0;
    while Instant::now() < until {
        let (key, body) = if !mine.is_empty() && rng.gen_bool(0.1) {
            mine[rng.gen_range(0..mine.len())].clone()
        } else {
            n += 1;
            (format!("jepsen-{c}-{n}"), order_body(&mut rng))
        };
        let outcome = post(&http, format!("{base}/api/orders"), Some(&key), &body).await;
        let mut h = history.lock().await;
        if let Outcome::Ok(order) = &outcome {
            h.saw(order);
        }
        h.places.push(Place { key: key.clone(), body: body.clone(), outcome: outcome.clone() });
        drop(h);
        if !mine.iter().any(|(k, _)| *k == key) {
            mine.push((key, body));
        }
        if let Outcome::Ok(order) = outcome {
            if rng.gen_bool(0.15) {
                let id = order["order_id"].as_str().unwrap_or_default().to_owned();
                let outcome = post(&http, format!("{base}/api/orders/{id}/cancel"), None, &json!({})).await;
                let mut h = history.lock().await;
                if let Outcome::Ok(order) = &outcome {
                    h.saw(order);
                }
                h.cancels.insert(id, outcome);
            }
        }
    }
}

/// The lifecycle's allowed steps, by version: a status may only follow one
/// it can come from.
fn allowed(from: &str, to: &str) -> bool {
    from == to || matches!((from, to), ("pending", "confirmed" | "rejected" | "cancelled") | ("confirmed", "cancelled"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_each_node_survive_kills_stops_and_a_broker_restart() {
    jepsen(Broker::Mosquitto).await;
}

/// The same on RabbitMQ's MQTT plugin: each partition's session is a
/// quorum queue. The node is shared by the test process, so the broker is
/// not restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_each_node_survive_kills_and_stops_on_rabbitmq() {
    jepsen(Broker::RabbitMq).await;
}

async fn jepsen(kind: Broker) {
    let Some(store) = StoreAt::postgres().await else { return };
    let Some(mut shop) = Scaled::start(&store, kind).await else { return };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_idle_timeout(shared::http::CLIENT_POOL_IDLE_TIMEOUT)
        .build()
        .unwrap();
    let ready = tokio::time::timeout(DEADLINE, async {
        while shop.settled_ownership(&http).await.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "the shop never settled its partitions:\n{}", shop.logs());
    let mut initial = HashMap::new();
    for sku in HOT {
        let available = eventually(&format!("{sku}'s stock"), || async {
            let v: Value =
                http.get(shop.public(&format!("/api/catalog/{sku}"))).send().await.ok()?.json().await.ok()?;
            v["available"].as_i64()
        })
        .await;
        initial.insert(sku, available);
    }

    // The load, in the background.
    let history = Arc::new(Mutex::new(History::default()));
    let load_for =
        Duration::from_secs(std::env::var("WEBSHOP_SCALEOUT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(40));
    let until = Instant::now() + load_for;
    let clients: Vec<_> =
        (0..6).map(|c| tokio::spawn(client(c, shop.public(""), http.clone(), history.clone(), until))).collect();

    // The watcher: how long each service had partitions no live instance
    // consumed (an instance that doesn't answer consumes nothing).
    let watching = tokio_util::sync::CancellationToken::new();
    let watcher = {
        let (http, watching) = (http.clone(), watching.clone());
        let urls: Vec<(usize, String)> = ["inventory-a", "inventory-b", "order-a", "order-b"]
            .iter()
            .enumerate()
            .map(|(i, n)| (i / 2, shop.node(n, "/stats")))
            .collect();
        tokio::spawn(async move {
            let mut gaps: [Vec<Duration>; 2] = Default::default();
            let mut since: [Option<Instant>; 2] = [None, None];
            while !watching.is_cancelled() {
                let mut covered: [std::collections::BTreeSet<u64>; 2] = Default::default();
                for (service, url) in &urls {
                    let stats = async {
                        http.get(url).timeout(Duration::from_millis(300)).send().await.ok()?.json::<Value>().await.ok()
                    };
                    if let Some(stats) = stats.await {
                        covered[*service]
                            .extend(stats["partitions"].as_array().into_iter().flatten().filter_map(Value::as_u64));
                    }
                }
                for s in 0..2 {
                    match (covered[s].len() == usize::from(PARTITIONS), since[s]) {
                        (false, None) => since[s] = Some(Instant::now()),
                        (true, Some(t)) => {
                            gaps[s].push(t.elapsed());
                            since[s] = None;
                        }
                        _ => {}
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            gaps
        })
    };

    // The nemesis, in the foreground: a fixed plan, scaled to the run.
    let step = load_for / 8;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    for round in 0..7 {
        tokio::time::sleep(step).await;
        let which = rng.gen_range(0..2);
        match round {
            0 | 4 => {
                eprintln!("nemesis: kill -9 order-{which}");
                shop.orders[which].restart();
            }
            1 => {
                eprintln!("nemesis: kill -9 inventory-{which}");
                shop.inventories[which].restart();
            }
            5 => {
                // A graceful hand-over: it commits, acks and lets go.
                eprintln!("nemesis: SIGTERM inventory-{which}, then start it again");
                let status = shop.inventories[which].terminate().await;
                assert!(status.success(), "inventory-{which} exited with {status} on SIGTERM");
                shop.inventories[which].start(None);
            }
            2 => {
                // A zombie: stopped past the takeover, then woken.
                eprintln!("nemesis: SIGSTOP order-{which} for 8 s");
                shop.orders[which].signal("STOP");
                tokio::time::sleep(Duration::from_secs(8)).await;
                shop.orders[which].signal("CONT");
                eprintln!("nemesis: SIGCONT order-{which}");
            }
            3 => match shop.broker.as_mut() {
                Some(broker) => {
                    eprintln!("nemesis: restart the broker");
                    broker.restart();
                }
                None => {
                    eprintln!("nemesis: kill -9 inventory-{which} (the shared broker stays up)");
                    shop.inventories[which].restart();
                }
            },
            _ => {
                eprintln!("nemesis: kill -9 front-{which}");
                shop.fronts[which].restart();
            }
        }
    }
    for c in clients {
        c.await.unwrap();
    }
    watching.cancel();
    let gaps = watcher.await.unwrap();
    for (service, gaps) in ["inventory", "order"].iter().zip(gaps) {
        let ms: Vec<u128> = gaps.iter().map(|g| g.as_millis()).collect();
        eprintln!("scale-out: {service} had partitions without a consumer for {ms:?} ms");
    }

    // Heal: everything running, partitions owned again.
    for p in shop.procs() {
        if let Some(status) = p.exit_status() {
            panic!("{} exited ({status}):\n{}", p.name, p.tail());
        }
    }
    let healed = tokio::time::timeout(DEADLINE, async {
        while shop.settled_ownership(&http).await.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(healed.is_ok(), "the shop never healed:\n{}", shop.logs());

    // Retry what is indeterminate, with its key, until it is determinate.
    let mut h = history.lock().await;
    let info: Vec<Place> = h.places.iter().filter(|p| p.outcome == Outcome::Info).cloned().collect();
    let mut decided: HashMap<String, Outcome> = HashMap::new();
    for p in &h.places {
        if p.outcome != Outcome::Info {
            decided.insert(p.key.clone(), p.outcome.clone());
        }
    }
    for p in &info {
        if decided.contains_key(&p.key) {
            continue;
        }
        let outcome = eventually(&format!("{} to be decided", p.key), || async {
            match post(&http, shop.public("/api/orders"), Some(&p.key), &p.body).await {
                Outcome::Info => None,
                decided => Some(decided),
            }
        })
        .await;
        if let Outcome::Ok(order) = &outcome {
            h.saw(order);
        }
        decided.insert(p.key.clone(), outcome);
    }
    let undecided_cancels: Vec<String> =
        h.cancels.iter().filter(|(_, o)| **o == Outcome::Info).map(|(id, _)| id.clone()).collect();
    for id in undecided_cancels {
        let outcome = eventually(&format!("the cancel of {id} to be decided"), || async {
            match post(&http, shop.public(&format!("/api/orders/{id}/cancel")), None, &json!({})).await {
                Outcome::Info => None,
                decided => Some(decided),
            }
        })
        .await;
        h.cancels.insert(id, outcome);
    }

    // Every accepted order exists and settles; read each one's final state.
    let mut finals: HashMap<String, Value> = HashMap::new();
    for outcome in decided.values() {
        let Outcome::Ok(order) = outcome else { continue };
        let id = order["order_id"].as_str().expect("an accepted order has an id").to_owned();
        if finals.contains_key(&id) {
            continue;
        }
        let settled = eventually(&format!("order {id} to settle"), || async {
            let r = http.get(shop.public(&format!("/api/orders/{id}"))).send().await.ok()?;
            let v: Value = r.json().await.ok()?;
            let status = v["status"].as_str()?;
            (status != "pending" && !v["release_pending"].as_bool().unwrap_or(false)).then_some(v)
        })
        .await;
        h.saw(&settled);
        finals.insert(id, settled);
    }
    let accepted = finals.len();
    let failed = decided.values().filter(|o| matches!(o, Outcome::Failed(_))).count();
    let confirmed = finals.values().filter(|o| o["status"] == "confirmed").count();
    let cancelled = finals.values().filter(|o| o["status"] == "cancelled").count();
    eprintln!(
        "scale-out: {} operations, {} indeterminate and retried, {accepted} orders accepted \
         ({confirmed} confirmed, {cancelled} cancelled), {failed} refused",
        h.places.len() + h.cancels.len(),
        info.len(),
    );
    assert!(accepted > 20, "too few orders to mean anything: {accepted}\n{}", shop.logs());
    assert_eq!(failed, 0, "a place was refused (4xx): {decided:?}");

    // A cancel that was accepted ends cancelled.
    for (id, outcome) in &h.cancels {
        if let Outcome::Ok(_) = outcome {
            assert_eq!(finals[id]["status"], "cancelled", "order {id} was cancelled but ended {}", finals[id]);
        }
    }

    // Statuses never fork: one status per version, and by version each
    // step is one the lifecycle allows.
    for (id, seen) in &h.seen {
        let mut by_version: BTreeMap<i64, &str> = BTreeMap::new();
        for (v, s) in seen {
            let was = by_version.insert(*v, s);
            assert!(was.is_none_or(|w| w == s), "order {id} was {was:?} and {s} at version {v}");
        }
        let steps: Vec<&str> = by_version.values().copied().collect();
        for w in steps.windows(2) {
            assert!(allowed(w[0], w[1]), "order {id} went {} → {} (seen {seen:?})", w[0], w[1]);
        }
    }

    // Stock: what each SKU started with, less what the confirmed orders
    // hold (from the clients' own view), is what is available.
    for sku in HOT {
        let held: i64 = finals
            .values()
            .filter(|o| o["status"] == "confirmed")
            .flat_map(|o| o["items"].as_array().cloned().unwrap_or_default())
            .filter(|l| l["sku"] == sku)
            .map(|l| l["quantity"].as_i64().unwrap())
            .sum();
        let available = eventually(&format!("{sku}'s stock to add up"), || async {
            let v: Value =
                http.get(shop.public(&format!("/api/catalog/{sku}"))).send().await.ok()?.json().await.ok()?;
            let available = v["available"].as_i64()?;
            (available == initial[sku] - held).then_some(available)
        })
        .await;
        assert!(available >= 0, "{sku} oversold: {available}");
    }

    // The books balance and nothing is dead-lettered.
    let down = public_front::downstream::Downstream::new(
        &format!("http://127.0.0.1:{}", shop.lb[1]),
        &format!("http://127.0.0.1:{}", shop.lb[2]),
        Duration::from_secs(10),
    )
    .unwrap();
    let report = eventually("the audit to find nothing in flight", || async {
        let r = public_front::audit::run(&down, Duration::from_secs(120)).await.ok()?;
        assert!(r.passed, "audit failed:\n{r}");
        r.in_flight.is_empty().then_some(r)
    })
    .await;
    assert!(report.passed);
    for n in ["inventory-a", "inventory-b", "order-a", "order-b"] {
        let stats: Value = http.get(shop.node(n, "/stats")).send().await.unwrap().json().await.unwrap();
        assert_eq!(stats["dead_letters"], 0, "{n} dead-lettered messages: {stats}");
    }
    drop(h);
    // What fail-over looked like, from the instances' own logs.
    for name in ["inventory-a", "inventory-b", "order-a", "order-b"] {
        let log = std::fs::read_to_string(shop.dir.path().join(format!("{name}.log"))).unwrap_or_default();
        let claimed = log.lines().filter(|l| l.contains("claimed partition")).count();
        let released = log.lines().filter(|l| l.contains("released partition")).count();
        eprintln!("scale-out: {name} claimed {claimed} partitions and released {released} over the run");
    }
}
