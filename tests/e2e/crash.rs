//! Crash tests with real processes: the broker and the three nodes run as
//! `webshop node ...` processes (built with crash points), orders flow, and
//! a node is killed, by a crash point (between receive and commit, commit
//! and ack, commit and publish, publish and marking sent) or by SIGKILL,
//! then restarted. Every order that got a 202 must settle, and the audit
//! must pass.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Mutex;

use crate::helpers::*;

/// One node process; restarted with the same environment (minus failpoints).
pub(crate) struct Proc {
    pub(crate) name: &'static str,
    /// stderr of every run, appended, for post-mortems.
    log: std::path::PathBuf,
    args: Vec<String>,
    env: HashMap<String, String>,
    child: Option<Child>,
}

/// Environment variables from `(name, value)` pairs.
pub(crate) fn env(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

impl Proc {
    /// The broker as a process listening on `port` (its metrics on a free
    /// port).
    pub(crate) fn broker(dir: &std::path::Path, port: u16) -> Proc {
        let settings = env(&[
            ("WEBSHOP_BROKER__LISTEN", format!("127.0.0.1:{port}")),
            ("WEBSHOP_BROKER__METRICS_LISTEN", format!("127.0.0.1:{}", free_port())),
        ]);
        Proc::spawn(dir, "broker", "broker", settings, None)
    }

    /// Service node `kind` (`inventory`, `order` or `front`) as process
    /// `name`, listening on `port`, on the broker at `broker`; inventory and
    /// order keep their data in `store`. `settings` are more of the node's
    /// keys, below its `WEBSHOP_<NODE>__` prefix.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn node(
        dir: &std::path::Path,
        name: &'static str,
        kind: &'static str,
        port: u16,
        broker: u16,
        store: &StoreAt,
        settings: &[(&str, String)],
        failpoints: Option<&str>,
    ) -> Proc {
        let prefix = format!("WEBSHOP_{}__", kind.to_ascii_uppercase());
        let mut vars = env(&[
            (&format!("{prefix}LISTEN"), format!("127.0.0.1:{port}")),
            (&format!("{prefix}BUS__PORT"), broker.to_string()),
        ]);
        vars.extend(settings.iter().map(|(k, v)| (format!("{prefix}{k}"), v.clone())));
        if kind != "front" {
            vars.extend(store.env(kind, dir));
        }
        Proc::spawn(dir, name, kind, vars, failpoints)
    }

    pub(crate) fn spawn(
        dir: &std::path::Path,
        name: &'static str,
        node: &str,
        env: HashMap<String, String>,
        failpoints: Option<&str>,
    ) -> Proc {
        Self::spawn_args(dir, name, vec!["node".into(), node.into()], env, failpoints)
    }

    /// `webshop <args>`, e.g. `up ...`.
    pub(crate) fn spawn_args(
        dir: &std::path::Path,
        name: &'static str,
        args: Vec<String>,
        env: HashMap<String, String>,
        failpoints: Option<&str>,
    ) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let mut p = Proc { name, log, args, env, child: None };
        p.start(failpoints);
        p
    }

    /// SIGTERM, as an operator stops a node, and the exit status once it
    /// has drained and exited.
    pub(crate) async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let start = tokio::time::Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                return status;
            }
            assert!(start.elapsed() < DEADLINE, "{} still running {DEADLINE:?} after SIGTERM", self.name);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub(crate) fn start(&mut self, failpoints: Option<&str>) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_webshop"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        cmd.args(&self.args)
            .env("RUST_LOG", "warn,rumqttd=off")
            .envs(&self.env)
            .env("RUST_BACKTRACE", "0")
            .stdout(log.try_clone().expect("log file handle"))
            .stderr(log);
        if let Some(fp) = failpoints {
            cmd.env("FAILPOINTS", fp);
        }
        self.child = Some(cmd.spawn().expect("node process starts"));
    }

    pub(crate) fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the process.
    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let sent = Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("kill runs");
        assert!(sent.success(), "kill -{signal} {pid} failed");
    }

    pub(crate) fn has_exited(&mut self) -> bool {
        self.exit_status().is_some()
    }

    pub(crate) fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    pub(crate) fn restart(&mut self) {
        self.kill9();
        self.start(None);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Cluster {
    _dir: tempfile::TempDir,
    broker: Proc,
    inventory: Proc,
    order: Proc,
    front: Proc,
    ports: [u16; 4],
    http: reqwest::Client,
}

#[derive(Clone, Copy, PartialEq)]
enum Victim {
    Broker,
    Inventory,
    Order,
    Front,
}

impl Cluster {
    fn start(victim: Victim, failpoints: Option<&str>, store: &StoreAt) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let [broker, inventory, order, front] = [free_port(), free_port(), free_port(), free_port()];
        let fp = |v| if v == victim { failpoints } else { None };
        let b = Proc::broker(dir.path(), broker);
        // Holds run out while the carts' customers check out, so the expiry
        // timer runs through the crash too.
        let hold = [("HOLD_SECS", "1".to_owned())];
        let i =
            Proc::node(dir.path(), "inventory", "inventory", inventory, broker, store, &hold, fp(Victim::Inventory));
        let follow_up = [("FOLLOW_UP_SECS", "1".to_owned())];
        let o = Proc::node(dir.path(), "order", "order", order, broker, store, &follow_up, fp(Victim::Order));
        let front_settings = [
            ("INVENTORY_URL", format!("http://127.0.0.1:{inventory}")),
            ("ORDER_URL", format!("http://127.0.0.1:{order}")),
            ("COMMIT_TIMEOUT_SECS", "3".to_owned()),
        ];
        let f = Proc::node(dir.path(), "front", "front", front, broker, store, &front_settings, fp(Victim::Front));
        Cluster {
            _dir: dir,
            broker: b,
            inventory: i,
            order: o,
            front: f,
            ports: [broker, inventory, order, front],
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_idle_timeout(shared::http::CLIENT_POOL_IDLE_TIMEOUT)
                .build()
                .unwrap(),
        }
    }

    fn url(&self, port_index: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[port_index])
    }

    async fn wait_ready(&self) {
        for i in 1..4 {
            let url = self.url(i, "/readyz");
            eventually(&format!("{url} ready"), || async {
                let r = self.http.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            })
            .await;
        }
    }

    fn proc(&mut self, v: Victim) -> &mut Proc {
        match v {
            Victim::Broker => &mut self.broker,
            Victim::Inventory => &mut self.inventory,
            Victim::Order => &mut self.order,
            Victim::Front => &mut self.front,
        }
    }

    async fn audit(&self) -> public_front::audit::Report {
        let down =
            public_front::downstream::Downstream::new(&self.url(1, ""), &self.url(2, ""), Duration::from_secs(10))
                .unwrap();
        eventually("the audit to find nothing in flight", || async {
            let r = public_front::audit::run(&down, Duration::from_secs(120)).await.ok()?;
            assert!(r.passed, "audit failed:\n{r}");
            r.in_flight.is_empty().then_some(r)
        })
        .await
    }
}

/// Places `n` orders from 4 concurrent clients while `victim` crashes (by
/// its failpoint, or by `kill` after a few orders), restarts it, and checks
/// that everything accepted settles and the books balance.
async fn crash_and_recover(victim: Victim, failpoints: Option<&'static str>, n: usize, store: Option<StoreAt>) {
    let Some(store) = store else { return };
    let cluster = Arc::new(Mutex::new(Cluster::start(victim, failpoints, &store)));
    cluster.lock().await.wait_ready().await;
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    let client = cluster.lock().await.place_handle();
    for c in 0..4 {
        let (client, accepted) = (client.clone(), accepted.clone());
        clients.push(tokio::spawn(async move {
            for i in 0..n / 4 {
                let key = format!("crash-{c}-{i}");
                // One customer in four checks out through a server cart.
                let id = if c == 3 { client.checkout_cart(&key).await } else { client.place(&key).await };
                accepted.lock().await.push(id.unwrap_or_else(|| panic!("{key} never accepted")));
            }
        }));
    }
    // The restarter: a failpoint aborts the victim; a plain kill happens
    // once a few orders were accepted.
    // The tender, in the background until the end: a failpoint aborts the
    // victim, or it is killed once a few orders were accepted; either way it
    // is started again. Anything else that dies (say its port was taken by
    // a parallel test while it was down) is reported and started again.
    let crashes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tending = tokio_util::sync::CancellationToken::new();
    let tender = {
        let (cluster, accepted, crashes, tending) =
            (cluster.clone(), accepted.clone(), crashes.clone(), tending.clone());
        tokio::spawn(async move {
            use std::sync::atomic::Ordering::SeqCst;
            while !tending.is_cancelled() {
                {
                    let mut cl = cluster.lock().await;
                    let name = cl.proc(victim).name;
                    let crashed = crashes.load(SeqCst) > 0;
                    if failpoints.is_some() && !crashed && cl.proc(victim).has_exited() {
                        eprintln!("{name} crashed at its failpoint; restarting");
                        cl.proc(victim).restart();
                        crashes.fetch_add(1, SeqCst);
                    } else if failpoints.is_none() && !crashed && accepted.lock().await.len() >= n / 4 {
                        eprintln!("kill -9 {name} with orders in flight; restarting");
                        cl.proc(victim).restart();
                        crashes.fetch_add(1, SeqCst);
                    }
                    for v in [Victim::Broker, Victim::Inventory, Victim::Order, Victim::Front] {
                        let p = cl.proc(v);
                        if let Some(status) = p.exit_status() {
                            eprintln!("{} exited unexpectedly ({status}); restarting. Its log:\n{}", p.name, p.tail());
                            p.restart();
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut failed = false;
    for c in clients {
        failed |= c.await.is_err();
    }
    // Batching can make the failpoint's count come late: keep ordering
    // until the victim has crashed.
    for i in 0..100 {
        if crashes.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            break;
        }
        let key = format!("crash-extra-{i}");
        let id = client.place(&key).await.unwrap_or_else(|| panic!("{key} never accepted"));
        accepted.lock().await.push(id);
    }
    let cl = cluster.lock().await;
    if failed {
        for p in [&cl.broker, &cl.inventory, &cl.order, &cl.front] {
            eprintln!("--- {} log ---\n{}", p.name, p.tail());
        }
        panic!("some orders were never accepted");
    }
    // The tender needs the lock while orders settle.
    drop(cl);
    let ids = accepted.lock().await.clone();
    for id in &ids {
        let settled = tokio::time::timeout(DEADLINE, async {
            loop {
                let status = async {
                    let r = client.http.get(format!("{}/api/orders/{id}", client.base)).send().await.ok()?;
                    let v: serde_json::Value = r.json().await.ok()?;
                    v["status"].as_str().map(str::to_owned)
                };
                if status.await.is_some_and(|s| s != "pending") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
        .await;
        if settled.is_err() {
            let cl = cluster.lock().await;
            let get = |url: String| async move {
                let r = reqwest::get(url).await.ok()?;
                r.text().await.ok()
            };
            eprintln!("order: {:?}", get(cl.url(2, &format!("/orders/{id}"))).await);
            eprintln!("reservation: {:?}", get(cl.url(1, &format!("/reservations/{id}"))).await);
            eprintln!("order timeline: {:?}", get(cl.url(2, &format!("/timeline/{id}"))).await);
            eprintln!("inventory timeline: {:?}", get(cl.url(1, &format!("/timeline/{id}"))).await);
            eprintln!("order stats: {:?}", get(cl.url(2, "/stats")).await);
            for p in [&cl.broker, &cl.inventory, &cl.order, &cl.front] {
                eprintln!("--- {} log ---\n{}", p.name, p.tail());
            }
            panic!("order {id} did not settle");
        }
    }
    let report = cluster.lock().await.audit().await;
    tending.cancel();
    tender.await.unwrap();
    assert_eq!(crashes.load(std::sync::atomic::Ordering::SeqCst), 1, "the victim should have crashed exactly once");
    eprintln!("{} orders accepted across a crash; audit: {:?}", ids.len(), report.orders_by_status);
    assert!(ids.len() >= n / 4 * 4);
}

/// What clients need to place orders without holding the cluster lock.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
}

impl Cluster {
    fn place_handle(&self) -> Client {
        Client { http: self.http.clone(), base: self.url(3, "") }
    }
}

impl Client {
    /// Checks a cart of one line out into an order (see
    /// [`checkout_cart_until_accepted`]).
    async fn checkout_cart(&self, key: &str) -> Option<String> {
        checkout_cart_until_accepted(&self.http, &self.base, key, "FUEL-230G-001", 1, Duration::from_secs(60)).await
    }

    /// Places an order, retrying with the same key through 503s and
    /// refused connections until accepted or the deadline.
    async fn place(&self, key: &str) -> Option<String> {
        let body = json!({"customer_email": "crash@example.com", "items": [{"sku": "FUEL-230G-001", "quantity": 1}]});
        let start = tokio::time::Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            let r = self
                .http
                .post(format!("{}/api/orders", self.base))
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await;
            if let Ok(r) = r {
                if r.status() == 202 {
                    let v: serde_json::Value = r.json().await.ok()?;
                    return v["order_id"].as_str().map(str::to_owned);
                }
                assert!(r.status() == 503, "unexpected {} for {key}", r.status());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}

macro_rules! crash_tests {
    ($($name:ident: $victim:expr, $fp:expr;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                crash_and_recover($victim, $fp, 24, Some(StoreAt::sqlite())).await;
            }
        )*
    };
}

/// The same crashes with the services' data on PostgreSQL (skipped when it
/// isn't installed, unless `WEBSHOP_REQUIRE_POSTGRES=1`).
macro_rules! crash_tests_on_postgres {
    ($($name:ident: $victim:expr, $fp:expr;)*) => {
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crash_and_recover($victim, $fp, 24, StoreAt::postgres().await).await;
                }
            )*
        }
    };
}

crash_tests! {
    inventory_crashes_between_receive_and_commit: Victim::Inventory, Some("consumer::before_commit=3*off->1*return");
    inventory_crashes_between_commit_and_ack: Victim::Inventory, Some("consumer::before_ack=3*off->1*return");
    inventory_crashes_between_commit_and_publish: Victim::Inventory, Some("outbox::before_publish=3*off->1*return");
    inventory_crashes_between_publish_and_marking_sent: Victim::Inventory, Some("outbox::before_mark_sent=3*off->1*return");
    order_crashes_between_receive_and_commit: Victim::Order, Some("consumer::before_commit=5*off->1*return");
    order_crashes_between_commit_and_ack: Victim::Order, Some("consumer::before_ack=5*off->1*return");
    order_crashes_between_commit_and_publish: Victim::Order, Some("outbox::before_publish=5*off->1*return");
    order_crashes_between_publish_and_marking_sent: Victim::Order, Some("outbox::before_mark_sent=5*off->1*return");
    front_is_killed_with_requests_in_flight: Victim::Front, None;
    broker_is_killed_with_orders_in_flight: Victim::Broker, None;
    inventory_is_killed: Victim::Inventory, None;
    order_is_killed: Victim::Order, None;
}

crash_tests_on_postgres! {
    inventory_crashes_between_receive_and_commit: Victim::Inventory, Some("consumer::before_commit=3*off->1*return");
    inventory_crashes_between_commit_and_ack: Victim::Inventory, Some("consumer::before_ack=3*off->1*return");
    order_crashes_between_receive_and_commit: Victim::Order, Some("consumer::before_commit=5*off->1*return");
    order_crashes_between_commit_and_publish: Victim::Order, Some("outbox::before_publish=5*off->1*return");
    inventory_is_killed: Victim::Inventory, None;
    order_is_killed: Victim::Order, None;
}
