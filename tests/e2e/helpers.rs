//! Test harness: a whole shop (embedded broker, inventory, order,
//! public-front) on free ports with temp-dir databases, plus a raw MQTT
//! client for injecting messages the way a tester would.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use shared::ids::OrderId;
use shared::message::Envelope;
use shared::test_pki::TestPki;
use shared::topics::{Role, Topic};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound for every wait; tests move on as soon as the condition holds.
/// Generous because CI runs all suites at once on two cores.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// The front's admin bearer token in tests.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// Logs of the in-process nodes, installed once per test binary (and kept:
/// the guard lives as long as the process).
pub fn init_logs() {
    static TELEMETRY: std::sync::OnceLock<shared::telemetry::Telemetry> = std::sync::OnceLock::new();
    TELEMETRY.get_or_init(|| {
        let log = shared::config::LogConfig { filter: "warn,rumqttd=off".into(), ..Default::default() };
        shared::telemetry::init("e2e", &log).expect("logging starts")
    });
}

/// A port for a node or broker that a test starts as a process.
///
/// Not from `bind(0)`: a node that crashes and restarts must find its port
/// free again, and while it was down a `bind(0)` of another test in this
/// process (or an outgoing connection) could take it. The ports handed out
/// here lie below the kernel's ephemeral range, where neither looks, and
/// none is handed out twice by one test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, span) = (ephemeral_low / 2, ephemeral_low - ephemeral_low / 2);
    // Test processes started at once begin at different places.
    let start = std::process::id() % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < span, "no free port left below the ephemeral range");
        let port = (low + (start + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after the deadline.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > DEADLINE {
            panic!("timed out after {DEADLINE:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One running node: stop it by cancelling its token.
pub struct Running {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Graceful stop: finish the batch in hand, flush the outbox, close.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("node task").expect("node stopped cleanly");
        }
    }
}

/// Which MQTT broker the shop runs on.
#[derive(Clone, Copy, Debug)]
pub enum BrokerKind {
    Embedded,
    Mosquitto,
    /// RabbitMQ's MQTT plugin: one node per test process ([`rabbitmq::shared`]),
    /// each shop on it with a topic prefix and client ids of its own.
    RabbitMq,
}

/// A Mosquitto process on a free port, killed on drop.
pub struct Mosquitto {
    child: std::process::Child,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mosquitto_binary() -> Option<std::path::PathBuf> {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

/// Starts Mosquitto on `port` (with `tls`: MQTT over TLS with its server
/// certificate); `None` if it isn't installed (an error when
/// `WEBSHOP_REQUIRE_MOSQUITTO` is set, as in CI).
pub async fn start_mosquitto(dir: &std::path::Path, port: u16, tls: Option<&TestPki>) -> Option<Mosquitto> {
    start_mosquitto_with(dir, port, tls, None).await
}

/// [`start_mosquitto`]; with `logins`, only those users get in, each held
/// to its role by an `acl_file` written from `shared::topics::Role`.
pub async fn start_mosquitto_with(
    dir: &std::path::Path,
    port: u16,
    tls: Option<&TestPki>,
    logins: Option<&Logins>,
) -> Option<Mosquitto> {
    let Some(bin) = mosquitto_binary() else {
        if std::env::var("WEBSHOP_REQUIRE_MOSQUITTO").as_deref() == Ok("1") {
            panic!("mosquitto is required (WEBSHOP_REQUIRE_MOSQUITTO) but not installed");
        }
        eprintln!("mosquitto not installed: skipping the Mosquitto run (apt-get install mosquitto)");
        return None;
    };
    let conf = dir.join("mosquitto.conf");
    let tls = tls.map_or(String::new(), |pki| {
        format!("certfile {}\nkeyfile {}\ncafile {}\n", pki.cert.display(), pki.key.display(), pki.ca.display())
    });
    let access = match logins {
        None => "allow_anonymous true\n".to_owned(),
        Some(logins) => {
            let passwords = dir.join("mosquitto.passwd");
            for (i, role) in Role::ALL.into_iter().enumerate() {
                let status = std::process::Command::new("mosquitto_passwd")
                    .args(if i == 0 { vec!["-c", "-b"] } else { vec!["-b"] })
                    .arg(&passwords)
                    .args([role.name(), logins.password(role)])
                    .status()
                    .expect("mosquitto_passwd runs");
                assert!(status.success(), "mosquitto_passwd failed");
            }
            let acl = dir.join("mosquitto.acl");
            let users: Vec<(&str, Role)> = Role::ALL.iter().map(|r| (r.name(), *r)).collect();
            std::fs::write(&acl, shared::topics::mosquitto_acl(shared::topics::DEFAULT_PREFIX, &users, None)).unwrap();
            format!("allow_anonymous false\npassword_file {}\nacl_file {}\n", passwords.display(), acl.display())
        }
    };
    std::fs::write(
        &conf,
        // Mosquitto accepts any size by default; `max_packet_size` bounds
        // whole packets at the nodes' `bus.max_packet_bytes` (4 MiB).
        // (`message_size_limit` bounds only the payload: a packet over
        // the nodes' limit could still get through.)
        format!(
            "listener {port} 127.0.0.1\n{tls}{access}persistence false\nmax_queued_messages 100000\nmax_packet_size 4194304\n"
        ),
    )
    .unwrap();
    let child = std::process::Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mosquitto starts");
    let m = Mosquitto { child };
    eventually("mosquitto to listen", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
    })
    .await;
    Some(m)
}

pub struct Shop {
    pub dir: tempfile::TempDir,
    pub broker_port: u16,
    /// Where nodes connect: the broker, or the chaos proxy in front of it.
    pub node_port: u16,
    pub chaos: Option<webshop::tools::chaos::Chaos>,
    /// Kept so the broker process lives as long as the shop.
    pub _mosquitto: Option<Mosquitto>,
    pub inventory: Running,
    pub order: Running,
    pub front: Running,
    pub http: reqwest::Client,
    /// `https` when the shop runs with TLS everywhere ([`Shop::start_tls`]).
    pub scheme: &'static str,
    /// The CA and certificate of a TLS shop.
    pub pki: Option<TestPki>,
    /// Where the services keep their data.
    pub store: StoreAt,
    /// The broker's users, when it has some ([`Shop::start_with_logins`]).
    pub logins: Option<Logins>,
    /// The shop's topic prefix and client ids on its broker.
    pub bus_at: BusAt,
    /// Inventory's `hold_secs`, when not the default ([`Shop::start_holding`]).
    pub hold_secs: Option<f64>,
}

/// Where on its broker a shop lives: the topic prefix of every node and
/// tester, and a suffix to the nodes' client ids. A shop on a broker of
/// its own uses the defaults; shops sharing one broker each get their own,
/// so they neither see each other's messages nor take over each other's
/// sessions.
#[derive(Clone, Debug)]
pub struct BusAt {
    pub topic_prefix: String,
    pub client_suffix: String,
    /// The CA of a TLS shop's broker.
    pub ca_path: Option<std::path::PathBuf>,
}

impl BusAt {
    fn own_broker(pki: Option<&TestPki>) -> BusAt {
        BusAt {
            topic_prefix: shared::topics::DEFAULT_PREFIX.into(),
            client_suffix: String::new(),
            ca_path: pki.map(|p| p.ca.clone()),
        }
    }

    /// A namespace no other shop of this test process has. No `.` in it:
    /// RabbitMQ maps MQTT's `/` to AMQP's `.` and back.
    fn shared_broker(pki: Option<&TestPki>) -> BusAt {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        BusAt {
            topic_prefix: format!("shop{n}/webshop/v1/"),
            client_suffix: format!("-shop{n}"),
            ..Self::own_broker(pki)
        }
    }

    /// `bus` of a node in `role`, in this namespace, logged in from `logins`.
    fn node(
        &self,
        role: Role,
        logins: Option<&Logins>,
        mut bus: shared::config::BusConfig,
    ) -> shared::config::BusConfig {
        bus.topic_prefix = self.topic_prefix.clone();
        // An empty id is the front's: it picks a unique one itself.
        if !bus.client_id.is_empty() {
            bus.client_id.push_str(&self.client_suffix);
        }
        bus.ca_path = self.ca_path.clone();
        if let Some(logins) = logins {
            logins.apply(role, &mut bus);
        }
        bus
    }
}

/// A password per role, for a broker that holds each user to its role:
/// the user named after the role logs in with it.
#[derive(Clone, Debug)]
pub struct Logins(std::collections::HashMap<Role, String>);

impl Logins {
    pub fn generate() -> Logins {
        Logins(Role::ALL.into_iter().map(|r| (r, uuid::Uuid::new_v4().simple().to_string())).collect())
    }

    pub fn password(&self, role: Role) -> &str {
        &self.0[&role]
    }

    /// `role`'s login on a node's bus.
    pub fn apply(&self, role: Role, bus: &mut shared::config::BusConfig) {
        bus.username = Some(role.name().to_owned());
        bus.password = Some(self.password(role).to_owned());
    }

    /// The embedded broker's `users`.
    pub fn users(&self) -> std::collections::HashMap<String, String> {
        self.0.iter().map(|(r, p)| (r.name().to_owned(), p.clone())).collect()
    }
}

/// HTTPS with `pki`'s certificate, for a node's `tls` section.
pub fn server_tls(pki: &TestPki) -> shared::config::TlsConfig {
    shared::config::TlsConfig { cert_path: Some(pki.cert.clone()), key_path: Some(pki.key.clone()) }
}

/// An HTTP client; with `pki`, one that trusts only its CA.
pub fn http_client(pki: Option<&TestPki>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().pool_idle_timeout(shared::http::CLIENT_POOL_IDLE_TIMEOUT);
    if let Some(pki) = pki {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap();
        builder = builder.tls_built_in_root_certs(false).add_root_certificate(ca);
    }
    builder.build().unwrap()
}

fn bus(port: u16, id: &str) -> shared::config::BusConfig {
    shared::config::BusConfig { port, client_id: id.into(), ..Default::default() }
}

pub fn inventory_config(store: &StoreAt, dir: &std::path::Path, broker_port: u16) -> inventory::Config {
    inventory::Config {
        admin_token: Some(shared::config::Secret::new(ADMIN_TOKEN)),
        listen: "127.0.0.1:0".parse().unwrap(),
        bus: bus(broker_port, "test-inventory"),
        db: db_config(store, dir, "inventory"),
        ..Default::default()
    }
}

pub fn order_config(store: &StoreAt, dir: &std::path::Path, broker_port: u16) -> order::Config {
    order::Config {
        admin_token: Some(shared::config::Secret::new(ADMIN_TOKEN)),
        listen: "127.0.0.1:0".parse().unwrap(),
        bus: bus(broker_port, "test-order"),
        db: db_config(store, dir, "order"),
        follow_up_secs: 1.0,
        ..Default::default()
    }
}

pub async fn start_inventory(cfg: inventory::Config) -> Running {
    let shutdown = CancellationToken::new();
    let app = inventory::App::build(cfg, shutdown.clone()).await.expect("inventory starts");
    let addr = app.local_addr();
    Running { addr, shutdown, task: Some(tokio::spawn(app.run())) }
}

pub async fn start_order(cfg: order::Config) -> Running {
    let shutdown = CancellationToken::new();
    let app = order::App::build(cfg, shutdown.clone()).await.expect("order starts");
    let addr = app.local_addr();
    Running { addr, shutdown, task: Some(tokio::spawn(app.run())) }
}

impl Shop {
    /// The whole shop on `kind`; `None` when that broker isn't installed.
    pub async fn start(kind: BrokerKind) -> Option<Shop> {
        Self::start_with(kind, None).await
    }

    /// The shop with its nodes connected through a chaos proxy, when given.
    pub async fn start_with(kind: BrokerKind, faults: Option<webshop::tools::chaos::Faults>) -> Option<Shop> {
        Self::launch(kind, StoreAt::sqlite(), faults, None, None, None).await
    }

    /// The shop behind a chaos proxy with inventory's holds lasting
    /// `hold_secs`.
    pub async fn start_with_holding(
        kind: BrokerKind,
        faults: webshop::tools::chaos::Faults,
        hold_secs: f64,
    ) -> Option<Shop> {
        Self::launch(kind, StoreAt::sqlite(), Some(faults), None, None, Some(hold_secs)).await
    }

    /// The shop on the embedded broker with its data on PostgreSQL; `None`
    /// when PostgreSQL isn't installed.
    pub async fn start_postgres() -> Option<Shop> {
        Self::start_on(StoreAt::postgres().await?).await
    }

    /// The shop on the embedded broker with its data in `store`.
    pub async fn start_on(store: StoreAt) -> Option<Shop> {
        Self::launch(BrokerKind::Embedded, store, None, None, None, None).await
    }

    /// The shop on the embedded broker with its data in `store`, and
    /// inventory's holds lasting `hold_secs`.
    pub async fn start_holding(store: StoreAt, hold_secs: f64) -> Option<Shop> {
        Self::launch(BrokerKind::Embedded, store, None, None, None, Some(hold_secs)).await
    }

    /// The shop on a broker with a user per role and no anonymous access:
    /// each node logs in as its role, [`Shop::tester`] as the tester.
    pub async fn start_with_logins(kind: BrokerKind) -> Option<Shop> {
        Self::launch(kind, StoreAt::sqlite(), None, None, Some(Logins::generate()), None).await
    }

    /// The shop with TLS everywhere, from a fresh test CA: MQTT over TLS,
    /// and HTTPS on every node (the front calls the nodes over HTTPS).
    pub async fn start_tls(kind: BrokerKind) -> Option<Shop> {
        Self::launch(kind, StoreAt::sqlite(), None, Some(TestPki::generate()), None, None).await
    }

    async fn launch(
        kind: BrokerKind,
        store: StoreAt,
        faults: Option<webshop::tools::chaos::Faults>,
        pki: Option<TestPki>,
        logins: Option<Logins>,
        hold_secs: Option<f64>,
    ) -> Option<Shop> {
        init_logs();
        let dir = tempfile::tempdir().unwrap();
        let mut broker_port = free_port();
        let (mosquitto, bus_at) = match kind {
            BrokerKind::Embedded => {
                broker::spawn(&broker::BrokerConfig {
                    listen: SocketAddr::from(([127, 0, 0, 1], broker_port)),
                    tls: pki.as_ref().map(server_tls).unwrap_or_default(),
                    users: logins.as_ref().map(Logins::users).unwrap_or_default(),
                    ..Default::default()
                })
                .expect("broker starts");
                (None, BusAt::own_broker(pki.as_ref()))
            }
            BrokerKind::Mosquitto => {
                let m = match &logins {
                    None => start_mosquitto(dir.path(), broker_port, pki.as_ref()).await?,
                    Some(l) => start_mosquitto_with(dir.path(), broker_port, pki.as_ref(), Some(l)).await?,
                };
                (Some(m), BusAt::own_broker(pki.as_ref()))
            }
            BrokerKind::RabbitMq => {
                assert!(pki.is_none() && logins.is_none(), "the RabbitMQ shop has neither TLS nor logins");
                let node = tokio::task::spawn_blocking(rabbitmq::shared).await.unwrap()?;
                broker_port = node.mqtt_port;
                (None, BusAt::shared_broker(None))
            }
        };
        let chaos = match faults {
            Some(faults) => Some(
                webshop::tools::chaos::start(
                    "127.0.0.1:0".parse().unwrap(),
                    SocketAddr::from(([127, 0, 0, 1], broker_port)),
                    faults,
                    CancellationToken::new(),
                )
                .await
                .unwrap(),
            ),
            None => None,
        };
        // Nodes talk to the proxy when there is one; testers to the broker.
        let node_port = chaos.as_ref().map_or(broker_port, |c| c.addr.port());
        let scheme = if pki.is_some() { "https" } else { "http" };
        let tls = pki.as_ref().map(server_tls).unwrap_or_default();
        let ca_path = pki.as_ref().map(|p| p.ca.clone());
        let mut inventory_cfg = inventory_config(&store, dir.path(), node_port);
        inventory_cfg.tls = tls.clone();
        inventory_cfg.bus = bus_at.node(Role::Inventory, logins.as_ref(), inventory_cfg.bus);
        inventory_cfg.hold_secs = hold_secs.unwrap_or(inventory_cfg.hold_secs);
        let inventory = start_inventory(inventory_cfg).await;
        let mut order_cfg = order_config(&store, dir.path(), node_port);
        order_cfg.tls = tls.clone();
        order_cfg.bus = bus_at.node(Role::Order, logins.as_ref(), order_cfg.bus);
        let order = start_order(order_cfg).await;
        let shutdown = CancellationToken::new();
        let front_app = public_front::App::build(
            public_front::Config {
                listen: "127.0.0.1:0".parse().unwrap(),
                tls,
                bus: bus_at.node(Role::Front, logins.as_ref(), bus(node_port, "")),
                inventory_url: format!("{scheme}://{}", inventory.addr),
                order_url: format!("{scheme}://{}", order.addr),
                downstream_ca_path: ca_path.clone(),
                commit_timeout_secs: 5.0,
                admin_token: Some(shared::config::Secret::new(ADMIN_TOKEN)),
                ..Default::default()
            },
            shutdown.clone(),
        )
        .await
        .expect("front starts");
        let front = Running { addr: front_app.local_addr(), shutdown, task: Some(tokio::spawn(front_app.run())) };
        let shop = Shop {
            dir,
            broker_port,
            node_port,
            chaos,
            _mosquitto: mosquitto,
            inventory,
            order,
            front,
            http: http_client(pki.as_ref()),
            scheme,
            pki,
            store,
            logins,
            bus_at,
            hold_secs,
        };
        shop.wait_ready().await;
        Some(shop)
    }

    /// The inventory node's config as the shop started it (on the same
    /// database, broker session and namespace), for a restart.
    pub fn inventory_config(&self) -> inventory::Config {
        let mut cfg = inventory_config(&self.store, self.dir.path(), self.node_port);
        cfg.tls = self.pki.as_ref().map(server_tls).unwrap_or_default();
        cfg.bus = self.bus_at.node(Role::Inventory, self.logins.as_ref(), cfg.bus);
        cfg.hold_secs = self.hold_secs.unwrap_or(cfg.hold_secs);
        cfg
    }

    /// The order node's config as the shop started it, for a restart.
    pub fn order_config(&self) -> order::Config {
        let mut cfg = order_config(&self.store, self.dir.path(), self.node_port);
        cfg.tls = self.pki.as_ref().map(server_tls).unwrap_or_default();
        cfg.bus = self.bus_at.node(Role::Order, self.logins.as_ref(), cfg.bus);
        cfg
    }

    pub async fn wait_ready(&self) {
        for addr in [self.inventory.addr, self.order.addr, self.front.addr] {
            let url = self.node_url(addr, "/readyz");
            eventually(&format!("{url} to be ready"), || async {
                let r = self.http.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            })
            .await;
        }
    }

    pub fn front_url(&self, path: &str) -> String {
        self.node_url(self.front.addr, path)
    }

    /// `path` on the node at `addr`, over HTTPS in a TLS shop.
    pub fn node_url(&self, addr: SocketAddr, path: &str) -> String {
        format!("{}://{addr}{path}", self.scheme)
    }

    pub async fn get(&self, url: String) -> (u16, Value) {
        let r = self.http.get(url).send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POST /api/orders; returns the status, the body and the Location.
    pub async fn place(&self, key: &str, body: Value) -> (u16, Value, Option<String>) {
        self.place_at(self.front.addr, key, body, "location").await
    }

    /// POST /api/orders to the front at `front`; returns the status, the
    /// body and the response header `header`.
    pub async fn place_at(
        &self,
        front: SocketAddr,
        key: &str,
        body: Value,
        header: &str,
    ) -> (u16, Value, Option<String>) {
        let r = self
            .http
            .post(self.node_url(front, "/api/orders"))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let value = r.headers().get(header).map(|v| v.to_str().unwrap().to_owned());
        (status, r.json().await.unwrap_or(Value::Null), value)
    }

    pub async fn wait_status(&self, id: &str, want: &str) -> Value {
        eventually(&format!("order {id} to be {want}"), || async {
            let (code, body) = self.get(self.front_url(&format!("/api/orders/{id}"))).await;
            (code == 200 && body["status"] == want).then_some(body)
        })
        .await
    }

    pub async fn available(&self, sku: &str) -> i64 {
        let (_, body) = self.get(self.front_url(&format!("/api/catalog/{sku}"))).await;
        body["available"].as_i64().expect("available")
    }

    /// Inventory's record of an order (404 → None).
    pub async fn reservation(&self, id: &str) -> Option<Value> {
        let (code, body) = self.get(self.node_url(self.inventory.addr, &format!("/reservations/{id}"))).await;
        (code == 200).then_some(body)
    }

    pub async fn stats(&self, node: SocketAddr) -> Value {
        self.get(self.node_url(node, "/stats")).await.1
    }

    pub async fn dead_letters(&self, node: SocketAddr) -> Vec<Value> {
        self.get(self.node_url(node, "/dead-letters")).await.1.as_array().cloned().unwrap_or_default()
    }

    /// Runs the books audit (`public_front::audit`) until nothing is in
    /// flight any more, and asserts it passes.
    pub async fn audit(&self) -> public_front::audit::Report {
        let down = public_front::downstream::Downstream::with_ca_path(
            &self.node_url(self.inventory.addr, ""),
            &self.node_url(self.order.addr, ""),
            Duration::from_secs(10),
            self.pki.as_ref().map(|p| p.ca.as_path()),
        )
        .unwrap();
        let report = eventually("the audit to find nothing in flight", || async {
            let r = public_front::audit::run(&down, Duration::from_secs(60)).await.ok()?;
            assert!(r.passed, "audit failed:\n{r}");
            r.in_flight.is_empty().then_some(r)
        })
        .await;
        assert!(report.passed, "audit failed:\n{report}");
        report
    }

    /// A raw MQTT client on the shop's broker (over TLS in a TLS shop),
    /// logged in as the tester where the broker has users.
    pub async fn tester(&self) -> Tester {
        self.client_as(Role::Tester).await
    }

    /// A raw MQTT client logged in as `role` (without a login on a broker
    /// without users).
    pub async fn client_as(&self, role: Role) -> Tester {
        let mut tester = match &self.logins {
            None => Tester::connect_with(self.broker_port, self.pki.as_ref()).await,
            Some(l) => {
                Tester::connect_as(self.broker_port, self.pki.as_ref(), Some((role.name(), l.password(role)))).await
            }
        };
        tester.prefix = self.bus_at.topic_prefix.clone();
        tester
    }
}

pub struct Tester {
    client: AsyncClient,
    _task: JoinHandle<()>,
    /// The topic prefix it publishes under.
    pub prefix: String,
}

impl Tester {
    /// A raw MQTT client on `port`; with `pki`, over TLS trusting its CA.
    pub async fn connect_with(port: u16, pki: Option<&TestPki>) -> Tester {
        Self::connect_as(port, pki, None).await
    }

    /// [`Tester::connect_with`], logged in with `login` (user, password).
    pub async fn connect_as(port: u16, pki: Option<&TestPki>, login: Option<(&str, &str)>) -> Tester {
        let mut opts = MqttOptions::new(format!("tester-{}", uuid::Uuid::new_v4().simple()), "127.0.0.1", port);
        opts.set_max_packet_size(8 << 20, 8 << 20);
        if let Some((user, password)) = login {
            opts.set_credentials(user, password);
        }
        if let Some(pki) = pki {
            let bus = shared::config::BusConfig { ca_path: Some(pki.ca.clone()), ..Default::default() };
            opts.set_transport(shared::tls::bus_transport(&bus).unwrap());
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        tokio::time::timeout(DEADLINE, rx).await.expect("tester connects").unwrap();
        Tester { client, _task: task, prefix: shared::topics::DEFAULT_PREFIX.into() }
    }

    pub async fn publish_raw(&self, topic: Topic, payload: Vec<u8>) {
        self.client.publish(topic.path(&self.prefix), QoS::AtLeastOnce, false, payload).await.unwrap();
    }

    pub async fn publish<B: serde::Serialize>(&self, topic: Topic, env: &Envelope<B>) {
        self.publish_raw(topic, env.to_json()).await;
    }
}

/// The price of `sku` in the sample catalog (1000 for a SKU it lacks).
pub fn catalog_price(sku: &str) -> i64 {
    let catalog: Vec<Value> = serde_json::from_str(inventory::SAMPLE_CATALOG).expect("the sample catalog parses");
    catalog.iter().find(|p| p["sku"] == sku).and_then(|p| p["price_cents"].as_i64()).unwrap_or(1000)
}

/// An `orders/send` body for one line at its catalog price, as the front
/// would publish it.
pub fn send_body(sku: &str, qty: i64, fingerprint: &str) -> shared::message::SendOrder {
    send_body_at(sku, qty, fingerprint, catalog_price(sku))
}

/// An `orders/send` body for one line at `unit_price_cents`.
pub fn send_body_at(sku: &str, qty: i64, fingerprint: &str, unit_price_cents: i64) -> shared::message::SendOrder {
    shared::message::SendOrder {
        customer_email: shared::ids::Email::parse("tester@example.com").unwrap(),
        items: vec![shared::message::OrderLine {
            sku: shared::ids::Sku::parse(sku).unwrap(),
            quantity: shared::ids::Quantity::new(qty).unwrap(),
            unit_price_cents,
        }],
        currency: "EUR".into(),
        fingerprint: fingerprint.into(),
        cart_id: None,
    }
}

pub fn new_order_id() -> OrderId {
    OrderId(uuid::Uuid::new_v4())
}

/// What a load of customers saw.
#[derive(Default)]
pub struct Tally {
    pub accepted: std::sync::atomic::AtomicU64,
    pub retries_after_503: std::sync::atomic::AtomicU64,
    pub cancels: std::sync::atomic::AtomicU64,
}

/// POST with the same key until it is accepted (a 503 is retried, as the
/// API asks); returns the order id.
pub async fn place_until_accepted(shop: &Shop, key: &str, body: serde_json::Value, tally: &Tally) -> String {
    for _ in 0..20 {
        let (code, resp, _) = shop.place(key, body.clone()).await;
        match code {
            202 => return resp["order_id"].as_str().unwrap().to_owned(),
            503 => {
                tally.retries_after_503.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("unexpected {other}: {resp}"),
        }
    }
    panic!("order {key} never accepted");
}

/// A customer's checkout through a server-side cart at the front `base`
/// (`http://host:port`): creates a cart, sets one line, and checks it out
/// with `key`, each step sent again through 503s and refused connections
/// (a retried create makes another, empty cart; setting a line is
/// absolute; the key names the order). The order id once accepted, or
/// `None` after `deadline`.
pub async fn checkout_cart_until_accepted(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    sku: &str,
    quantity: u32,
    deadline: Duration,
) -> Option<String> {
    let start = tokio::time::Instant::now();
    let mut cart: Option<String> = None;
    let mut filled = false;
    while start.elapsed() < deadline {
        let r = match (&cart, filled) {
            (None, _) => http.post(format!("{base}/api/carts")).send().await,
            (Some(id), false) => {
                http.put(format!("{base}/api/carts/{id}/items/{sku}"))
                    .json(&serde_json::json!({"quantity": quantity}))
                    .send()
                    .await
            }
            (Some(id), true) => {
                http.post(format!("{base}/api/carts/{id}/checkout"))
                    .header("Idempotency-Key", key)
                    .json(&serde_json::json!({"customer_email": "cart@example.com"}))
                    .send()
                    .await
            }
        };
        match r {
            Ok(r) if r.status().is_success() => {
                let body: Value = r.json().await.ok()?;
                match (&cart, filled) {
                    (None, _) => cart = body["cart_id"].as_str().map(str::to_owned),
                    (Some(_), false) => filled = true,
                    (Some(_), true) => return body["order_id"].as_str().map(str::to_owned),
                }
                continue;
            }
            Ok(r) => assert_eq!(r.status(), 503, "cart checkout {key}: {}", r.text().await.unwrap_or_default()),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// A service's database settings for a test shop: a SQLite file in `dir`,
/// or a fresh PostgreSQL database of its own (both services share it, each
/// in its own schema, as in production).
pub fn db_config(store: &StoreAt, dir: &std::path::Path, service: &str) -> shared::config::DbConfig {
    let schema = if service == "order" { "orders" } else { service };
    shared::config::DbConfig {
        path: dir.join(format!("{service}.db")),
        synchronous: shared::config::Synchronous::Normal,
        url: store.url.clone(),
        schema: schema.into(),
        ..Default::default()
    }
}

/// Where a test shop keeps its data: SQLite files in its directory, or
/// the PostgreSQL database it was given.
#[derive(Debug, Clone)]
pub struct StoreAt {
    /// `postgres://...` of the shop's own database; `None`: SQLite.
    pub url: Option<String>,
}

impl StoreAt {
    pub fn sqlite() -> StoreAt {
        StoreAt { url: None }
    }

    /// A fresh database on the test cluster; `None` (the test is skipped)
    /// when PostgreSQL isn't installed, unless `WEBSHOP_REQUIRE_POSTGRES=1`.
    pub async fn postgres() -> Option<StoreAt> {
        let cluster = postgres::cluster()?;
        Some(StoreAt { url: Some(cluster.fresh_database().await) })
    }

    /// The `WEBSHOP_<NODE>__DB__*` variables for a node process.
    pub fn env(&self, node: &str, dir: &std::path::Path) -> Vec<(String, String)> {
        let upper = node.to_ascii_uppercase();
        let cfg = db_config(self, dir, node);
        let mut env = vec![(format!("WEBSHOP_{upper}__DB__PATH"), cfg.path.display().to_string())];
        if let Some(url) = &cfg.url {
            env.push((format!("WEBSHOP_{upper}__DB__URL"), url.clone()));
            env.push((format!("WEBSHOP_{upper}__DB__SCHEMA"), cfg.schema));
        }
        env
    }
}

/// A throwaway PostgreSQL cluster for the whole test process, started on
/// first use and stopped when the process exits.
pub mod postgres {
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::OnceLock;

    pub struct Cluster {
        pub port: u16,
        data: PathBuf,
        bin: PathBuf,
        as_postgres: bool,
    }

    /// The server binaries of the newest installed PostgreSQL.
    fn bin_dir() -> Option<PathBuf> {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
            .collect();
        versions.sort();
        versions.pop()
    }

    fn run(c: &Cluster, tool: &str, args: &[&str]) -> std::process::Output {
        let exe = c.bin.join(tool);
        let mut cmd = if c.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(exe);
            cmd
        } else {
            Command::new(exe)
        };
        cmd.args(args).output().unwrap_or_else(|e| panic!("running {tool}: {e}"))
    }

    /// The cluster the test process shares.
    pub fn cluster() -> Option<&'static Cluster> {
        static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
        CLUSTER.get_or_init(start).as_ref()
    }

    /// A cluster of the caller's own, for a test that restarts it.
    pub fn own() -> Option<Cluster> {
        start()
    }

    fn start() -> Option<Cluster> {
        let Some(bin) = bin_dir() else {
            if std::env::var("WEBSHOP_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("PostgreSQL is required (WEBSHOP_REQUIRE_POSTGRES) but not installed");
            }
            eprintln!("PostgreSQL not installed: skipping the PostgreSQL run (apt-get install postgresql)");
            return None;
        };
        // Kept past the tempdir guard: removed by `stop` at exit.
        let root = tempfile::Builder::new().prefix("webshop-pg").tempdir().unwrap().keep();
        let data = root.join("data");
        // initdb refuses to run as root: the cluster belongs to `postgres`.
        let as_postgres = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if as_postgres {
            let ok = Command::new("chown").args(["postgres:", &root.display().to_string()]).status();
            assert!(ok.is_ok_and(|s| s.success()), "chown of the cluster directory to postgres");
        }
        let port = super::free_port();
        let c = Cluster { port, data, bin, as_postgres };
        let data = c.data.display().to_string();
        let out = run(&c, "initdb", &["-D", &data, "-U", "postgres", "-A", "trust", "--no-sync"]);
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c max_connections=300 -c fsync=off -c full_page_writes=off",
            root.display()
        );
        let log = root.join("log").display().to_string();
        let out = run(&c, "pg_ctl", &["-D", &data, "-l", &log, "-w", "-o", &opts, "start"]);
        assert!(out.status.success(), "pg_ctl start failed: {}", String::from_utf8_lossy(&out.stderr));
        // Stopped, and its files removed, once this test process is gone.
        let stop = format!(
            "tail --pid={pid} -f /dev/null; {runuser}{pg_ctl} -D {data} -m immediate -w stop; rm -rf {root}",
            pid = std::process::id(),
            runuser = if as_postgres { "runuser -u postgres -- " } else { "" },
            pg_ctl = c.bin.join("pg_ctl").display(),
            root = root.display(),
        );
        // In the background of a shell that exits at once: the reaper
        // outlives this process, and nothing is left to wait for.
        let started = Command::new("sh")
            .args(["-c", &format!("({stop}) >/dev/null 2>&1 &")])
            .status()
            .expect("the cluster's reaper starts");
        assert!(started.success(), "the cluster's reaper did not start");
        Some(c)
    }

    impl Cluster {
        /// Restarts the server as a crash would (`immediate`: no
        /// shutdown checkpoint; it recovers from its WAL), and waits until
        /// it accepts connections again.
        pub fn crash_restart(&self) {
            let data = self.data.display().to_string();
            // A log file, or the server would hold our output pipe open.
            let log = self.data.with_file_name("log").display().to_string();
            let out = run(self, "pg_ctl", &["-D", &data, "-l", &log, "-m", "immediate", "-w", "restart"]);
            assert!(out.status.success(), "pg_ctl restart failed: {}", String::from_utf8_lossy(&out.stderr));
        }

        pub fn url(&self, database: &str) -> String {
            format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
        }

        /// A new, empty database.
        pub async fn fresh_database(&self) -> String {
            use sqlx::Connection;
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let name = format!("shop_{}_{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            let mut admin =
                sqlx::PgConnection::connect(&self.url("postgres")).await.expect("connect to the test cluster");
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create database");
            let _ = admin.close().await;
            self.url(&name)
        }
    }
}

/// SKUs the load helpers order, one line each.
pub const LOAD_SKUS: [&str; 4] = ["FUEL-230G-001", "BOTL-STL-750", "TOOL-SPAT-001", "CAND-SOY-001"];

/// `clients` customers place orders until `until` says stop; returns the
/// ids of every order that got a 202.
pub async fn load(
    shop: &std::sync::Arc<Shop>,
    clients: usize,
    tag: &str,
    until: impl Fn() -> bool + Send + Sync + 'static,
) -> Vec<String> {
    let until = std::sync::Arc::new(until);
    let tally = std::sync::Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (shop, tally, until, tag) = (shop.clone(), tally.clone(), until.clone(), tag.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut i = 0;
            while !until() {
                let body = serde_json::json!({"customer_email": format!("c{c}@example.com"),
                                  "items": [{"sku": LOAD_SKUS[(c + i) % LOAD_SKUS.len()], "quantity": 1}]});
                ids.push(place_until_accepted(&shop, &format!("{tag}-{c}-{i}"), body, &tally).await);
                i += 1;
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    println!(
        "{tag}: {} orders accepted, {} POSTs retried after 503",
        ids.len(),
        tally.retries_after_503.load(std::sync::atomic::Ordering::Relaxed)
    );
    ids
}

pub async fn all_settle(shop: &Shop, ids: &[String]) {
    for id in ids {
        eventually(&format!("order {id} to settle"), || async {
            let (code, body) = shop.get(shop.front_url(&format!("/api/orders/{id}"))).await;
            (code == 200 && body["status"] != "pending").then_some(())
        })
        .await;
    }
}

/// A throwaway RabbitMQ node with its MQTT plugin, started by the test
/// process on free ports with everything (data, logs, config, Erlang
/// cookie) in a temp dir.
pub mod rabbitmq {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    /// RabbitMQ 3.10 has no MQTT packet limit; its `max_message_size`
    /// bounds the payload only. A topic adds at most 64 KiB, so payloads
    /// up to the nodes' `bus.max_packet_bytes` less 64 KiB keep every
    /// packet it forwards within what the nodes take.
    pub const MAX_MESSAGE_SIZE: usize = shared::config::DEFAULT_MAX_PACKET_BYTES - 65536;

    /// A node takes seconds to boot: more than the deadline for a test's
    /// conditions when CI runs everything at once on two cores.
    const BOOT_DEADLINE: Duration = Duration::from_secs(180);

    /// A running node, killed with its whole process group on drop.
    pub struct Node {
        pub mqtt_port: u16,
        pub name: String,
        pub dir: PathBuf,
        child: Child,
    }

    impl Drop for Node {
        fn drop(&mut self) {
            kill_group(self.child.id());
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// SIGKILL to the group the node leads (beam.smp and its helpers;
    /// `epmd` daemonizes on its own and is shared by every Erlang node,
    /// so it stays: a dead node's name is gone from it with its socket).
    fn kill_group(pid: u32) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).stderr(Stdio::null()).status();
    }

    fn server_script() -> Option<PathBuf> {
        // Not /usr/sbin/rabbitmq-server: as root, that one switches to the
        // `rabbitmq` user, which can't write the test's temp dir.
        ["/usr/lib/rabbitmq/bin/rabbitmq-server"].iter().map(PathBuf::from).find(|p| p.exists())
    }

    /// The node every RabbitMQ shop of this test process shares, started
    /// on first use and stopped (its files removed) once the process is
    /// gone; `None` when RabbitMQ isn't installed (an error when
    /// `WEBSHOP_REQUIRE_RABBITMQ=1`, as in CI). Blocks while it boots.
    pub fn shared() -> Option<&'static Node> {
        static NODE: OnceLock<Option<Node>> = OnceLock::new();
        let node = NODE
            .get_or_init(|| {
                let node = start()?;
                // A static is never dropped: a reaper outliving this
                // process stops the node (as for the PostgreSQL cluster).
                let reap = format!(
                    // (dash's `kill` takes no `--`.)
                    "tail --pid={pid} -f /dev/null; kill -KILL -{group}; rm -rf {dir}",
                    pid = std::process::id(),
                    group = node.child.id(),
                    dir = node.dir.display(),
                );
                let started = Command::new("sh")
                    .args(["-c", &format!("({reap}) >/dev/null 2>&1 &")])
                    .status()
                    .expect("the RabbitMQ node's reaper starts");
                assert!(started.success(), "the RabbitMQ node's reaper did not start");
                Some(node)
            })
            .as_ref()?;
        Some(node)
    }

    /// A node of the caller's own, stopped when it is dropped.
    pub fn start() -> Option<Node> {
        let Some(script) = server_script() else {
            if std::env::var("WEBSHOP_REQUIRE_RABBITMQ").as_deref() == Ok("1") {
                panic!("RabbitMQ is required (WEBSHOP_REQUIRE_RABBITMQ) but not installed");
            }
            eprintln!("RabbitMQ not installed: skipping the RabbitMQ run (apt-get install rabbitmq-server)");
            return None;
        };
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("webshop-test-{}-{}@localhost", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let dir = tempfile::Builder::new().prefix("webshop-rabbitmq").tempdir().unwrap().keep();
        let (mqtt_port, amqp_port, dist_port) = (super::free_port(), super::free_port(), super::free_port());
        let conf = dir.join("rabbitmq.conf");
        std::fs::write(&conf, config(mqtt_port, amqp_port)).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[rabbitmq_mqtt].\n").unwrap();
        let log = std::fs::File::create(dir.join("console.log")).unwrap();
        let child = Command::new(script)
            .env("RABBITMQ_NODENAME", &name)
            .env("RABBITMQ_NODE_PORT", amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", &conf)
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            // The Erlang cookie is created in $HOME.
            .env("HOME", &dir)
            // The script then execs the VM instead of keeping a shell in
            // front of it: the child is beam.smp itself.
            .env("RUNNING_UNDER_SYSTEMD", "true")
            .env_remove("NOTIFY_SOCKET")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("rabbitmq-server starts");
        let mut node = Node { mqtt_port, name, dir, child };
        let start = Instant::now();
        while !mqtt_connects(mqtt_port) {
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("RabbitMQ exited ({status}) while booting:\n{}", tail(&node.dir));
            }
            assert!(
                start.elapsed() < BOOT_DEADLINE,
                "RabbitMQ did not take MQTT connections within {BOOT_DEADLINE:?}:\n{}",
                tail(&node.dir)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("RabbitMQ node {} took MQTT connections after {:?}", node.name, start.elapsed());
        Some(node)
    }

    /// The node's rabbitmq.conf: what the shop needs of it (docs/SCALING.md,
    /// "RabbitMQ as the broker", explains each line).
    fn config(mqtt_port: u16, amqp_port: u16) -> String {
        format!(
            "listeners.tcp.default = 127.0.0.1:{amqp_port}\n\
             mqtt.listeners.tcp.default = 127.0.0.1:{mqtt_port}\n\
             mqtt.allow_anonymous = true\n\
             mqtt.durable_queue_type = quorum\n\
             mqtt.subscription_ttl = infinity\n\
             mqtt.prefetch = {prefetch}\n\
             max_message_size = {MAX_MESSAGE_SIZE}\n\
             log.console = false\n\
             log.file.level = warning\n",
            prefetch = shared::consumer::MAX_BATCH,
        )
    }

    /// Whether the broker answers an MQTT CONNECT on `port` with an
    /// accepting CONNACK (a listening port alone can precede the plugin).
    fn mqtt_connects(port: u16) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        // CONNECT, MQTT 3.1.1, clean session, keep-alive 30 s, client id "boot-probe".
        let id = b"boot-probe";
        let mut packet = vec![0x10, (10 + 2 + id.len()) as u8, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30];
        packet.extend_from_slice(&(id.len() as u16).to_be_bytes());
        packet.extend_from_slice(id);
        let mut connack = [0u8; 4];
        let ok = s.write_all(&packet).is_ok() && s.read_exact(&mut connack).is_ok() && connack == [0x20, 2, 0, 0];
        // DISCONNECT.
        let _ = s.write_all(&[0xe0, 0]);
        ok
    }

    /// The end of the node's logs, for a failure message.
    fn tail(dir: &Path) -> String {
        let mut out = String::new();
        let logs = std::fs::read_dir(dir.join("log")).into_iter().flatten().flatten().map(|e| e.path());
        for path in std::iter::once(dir.join("console.log")).chain(logs) {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out += &format!("--- {}\n{}\n", path.display(), lines[lines.len().saturating_sub(30)..].join("\n"));
        }
        out
    }
}
