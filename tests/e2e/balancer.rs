//! Fronts behind haproxy: the broker, inventory and order as processes, two
//! fronts as processes, and haproxy with the configuration `webshop
//! haproxy-config` generates. Orders and status streams go through
//! haproxy; one front gets SIGTERM under load and no request fails.
//!
//! Needs haproxy (`apt-get install haproxy`): skipped when it is missing,
//! unless `WEBSHOP_REQUIRE_HAPROXY=1`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use webshop::haproxy::{Addr, Balancer};

use crate::crash::Proc;
use crate::helpers::*;

fn haproxy_binary() -> Option<PathBuf> {
    let found = ["/usr/sbin/haproxy", "/usr/bin/haproxy", "/usr/local/sbin/haproxy"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        if std::env::var("WEBSHOP_REQUIRE_HAPROXY").as_deref() == Ok("1") {
            panic!("haproxy is required (WEBSHOP_REQUIRE_HAPROXY) but not installed");
        }
        eprintln!("haproxy not installed: skipping the balancer test (apt-get install haproxy)");
    }
    found
}

fn local(port: u16) -> Addr {
    Addr::parse(&format!("127.0.0.1:{port}")).unwrap()
}

/// haproxy in the foreground with `cfg`, its output in `dir/haproxy.log`;
/// killed on drop.
struct Haproxy {
    child: Child,
    log: PathBuf,
    stats: u16,
    http: reqwest::Client,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One server's line of haproxy's stats.
#[derive(Debug)]
struct ServerStats {
    status: String,
    /// 2xx answers it gave.
    answered_2xx: u64,
    /// Requests haproxy sent again, and sent to another server.
    retries: u64,
    redispatches: u64,
}

impl Haproxy {
    fn start(bin: &Path, dir: &Path, balancer: &Balancer) -> Haproxy {
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, webshop::haproxy::render(balancer)).unwrap();
        let check = Command::new(bin).arg("-c").arg("-f").arg(&file).output().expect("haproxy -c runs");
        assert!(
            check.status.success(),
            "haproxy refuses the generated config:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let log = dir.join("haproxy.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg("-f")
            .arg(&file)
            .arg("-db")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("haproxy starts");
        let stats = balancer.stats.as_ref().expect("the test reads haproxy's stats");
        let stats = stats.as_str().rsplit_once(':').unwrap().1.parse().unwrap();
        Haproxy { child, log, stats, http: reqwest::Client::new() }
    }

    /// Each server's stats line, by name (`front1`, ...); empty while
    /// haproxy doesn't answer yet.
    async fn servers(&self) -> HashMap<String, ServerStats> {
        let Ok(r) = self.http.get(format!("http://127.0.0.1:{}/;csv", self.stats)).send().await else {
            return HashMap::new();
        };
        let text = r.text().await.unwrap_or_default();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").trim_start_matches("# ").split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no {name} in {text}"));
        let (px, sv, status, ok, retr, redis) =
            (col("pxname"), col("svname"), col("status"), col("hrsp_2xx"), col("wretr"), col("wredis"));
        let num = |row: &[&str], i: usize| row[i].parse().unwrap_or(0);
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|row| row.len() > redis && row[px] == "fronts" && row[sv].starts_with("front"))
            .map(|row| {
                let s = ServerStats {
                    status: row[status].to_owned(),
                    answered_2xx: num(&row, ok),
                    retries: num(&row, retr),
                    redispatches: num(&row, redis),
                };
                (row[sv].to_owned(), s)
            })
            .collect()
    }

    async fn wait_status(&self, server: &str, want: &str) {
        eventually(&format!("haproxy to see {server} {want}"), || async {
            (self.servers().await.get(server)?.status == want).then_some(())
        })
        .await;
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

/// The shop as processes: broker, inventory, order, and two fronts with
/// the default `drain_grace_secs`.
struct Fleet {
    dir: tempfile::TempDir,
    _broker: Proc,
    _inventory: Proc,
    _order: Proc,
    fronts: Vec<Proc>,
    front_ports: Vec<u16>,
    http: reqwest::Client,
}

impl Fleet {
    async fn start() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let [broker, inventory, order] = [free_port(), free_port(), free_port()];
        let store = StoreAt::sqlite();
        let b = Proc::broker(dir.path(), broker);
        let i = Proc::node(dir.path(), "inventory", "inventory", inventory, broker, &store, &[], None);
        let o = Proc::node(dir.path(), "order", "order", order, broker, &store, &[], None);
        let front_ports = vec![free_port(), free_port()];
        let settings = [
            ("INVENTORY_URL", format!("http://127.0.0.1:{inventory}")),
            ("ORDER_URL", format!("http://127.0.0.1:{order}")),
        ];
        let fronts = front_ports
            .iter()
            .zip(["front1", "front2"])
            .map(|(port, name)| Proc::node(dir.path(), name, "front", *port, broker, &store, &settings, None))
            .collect();
        let fleet = Fleet { dir, _broker: b, _inventory: i, _order: o, fronts, front_ports, http: http_client(None) };
        for port in [inventory, order].iter().chain(&fleet.front_ports) {
            let url = format!("http://127.0.0.1:{port}/readyz");
            eventually(&format!("{url} to be ready"), || async {
                let r = fleet.http.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            })
            .await;
        }
        fleet
    }

    fn balancer(&self, listen: u16, stats: u16) -> Balancer {
        Balancer {
            listen: local(listen),
            fronts: self.front_ports.iter().map(|p| local(*p)).collect(),
            stats: Some(local(stats)),
            internal: Vec::new(),
        }
    }

    /// Accepted orders (`POST /api/orders` answered 202) counted by the
    /// front on `port` itself.
    async fn accepted_by(&self, port: u16) -> u64 {
        let text =
            self.http.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| {
                l.starts_with("http_requests_total{")
                    && l.contains("route=\"/api/orders\"")
                    && l.contains("status=\"202\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum()
    }

    fn logs(&self) -> String {
        self.fronts.iter().map(|f| format!("--- {} ---\n{}", f.name, f.tail())).collect::<Vec<_>>().join("\n")
    }
}

/// A client of the shop through haproxy.
#[derive(Clone)]
struct Shopper {
    http: reqwest::Client,
    base: String,
}

impl Shopper {
    /// `POST /api/orders` once (no retry here: haproxy's are the point).
    async fn place(&self, key: &str, sku: &str) -> Result<(u16, Value), String> {
        let body = json!({"customer_email": "lb@example.com", "items": [{"sku": sku, "quantity": 1}]});
        let r = self
            .http
            .post(format!("{}/api/orders", self.base))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("{key}: {e}"))?;
        let code = r.status().as_u16();
        Ok((code, r.json().await.unwrap_or(Value::Null)))
    }

    async fn status(&self, id: &str) -> Option<String> {
        let r = self.http.get(format!("{}/api/orders/{id}", self.base)).send().await.ok()?;
        let v: Value = r.json().await.ok()?;
        v["status"].as_str().map(str::to_owned)
    }

    async fn wait_status(&self, id: &str, want: &str) {
        eventually(&format!("order {id} to be {want}"), || async {
            (self.status(id).await.as_deref() == Some(want)).then_some(())
        })
        .await;
    }
}

/// Reads an SSE response until an event with `"status":"<want>"` arrives;
/// what it read so far.
async fn read_events_until(r: &mut reqwest::Response, seen: &mut String, want: &str) {
    let needle = format!("\"status\":\"{want}\"");
    tokio::time::timeout(DEADLINE, async {
        while !seen.contains(&needle) {
            match r.chunk().await {
                Ok(Some(bytes)) => seen.push_str(&String::from_utf8_lossy(&bytes)),
                other => panic!("the stream ended before {want}: {other:?}; read:\n{seen}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {want} event within {DEADLINE:?}; read:\n{seen}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fronts_behind_haproxy_share_the_load_and_one_leaves_without_a_failed_request() {
    let Some(bin) = haproxy_binary() else { return };
    let mut fleet = Fleet::start().await;
    let (listen, stats) = (free_port(), free_port());
    let haproxy = Haproxy::start(&bin, fleet.dir.path(), &fleet.balancer(listen, stats));
    haproxy.wait_status("front1", "UP").await;
    haproxy.wait_status("front2", "UP").await;
    let shop = Shopper { http: http_client(None), base: format!("http://127.0.0.1:{listen}") };

    // Orders placed through haproxy are confirmed, and a request id the
    // client sends comes back.
    for i in 0..4 {
        let (code, body) = shop.place(&format!("lb-{i}"), "FUEL-230G-001").await.unwrap();
        assert_eq!(code, 202, "{body}");
        shop.wait_status(body["order_id"].as_str().unwrap(), "confirmed").await;
    }
    let r =
        shop.http.get(format!("{}/api/catalog?limit=1", shop.base)).header("x-request-id", "lb-trace-1").send().await;
    let r = r.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("x-request-id").unwrap(), "lb-trace-1");
    // Without one, haproxy makes one up (and the front answers with it).
    let r = shop.http.get(format!("{}/api/catalog?limit=1", shop.base)).send().await.unwrap();
    assert!(r.headers().get("x-request-id").is_some_and(|v| v.len() >= 32), "{:?}", r.headers());

    // A status stream through haproxy: the current status first, then a
    // change made after it opened.
    let (_, body) = shop.place("lb-sse", "CAND-SOY-001").await.unwrap();
    let id = body["order_id"].as_str().unwrap().to_owned();
    shop.wait_status(&id, "confirmed").await;
    let mut stream = shop.http.get(format!("{}/api/orders/{id}/events", shop.base)).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    assert!(stream.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut seen = String::new();
    read_events_until(&mut stream, &mut seen, "confirmed").await;
    let r = shop.http.post(format!("{}/api/orders/{id}/cancel", shop.base)).send().await.unwrap();
    assert_eq!(r.status(), 202);
    read_events_until(&mut stream, &mut seen, "cancelled").await;
    drop(stream);

    // Round robin: the same Idempotency-Key twice in a row reaches both
    // fronts, and both answer with the same order.
    let before = [fleet.accepted_by(fleet.front_ports[0]).await, fleet.accepted_by(fleet.front_ports[1]).await];
    let (c1, b1) = shop.place("lb-twice", "BOTL-STL-750").await.unwrap();
    let (c2, b2) = shop.place("lb-twice", "BOTL-STL-750").await.unwrap();
    assert_eq!((c1, c2), (202, 202), "{b1} {b2}");
    assert_eq!(b1["order_id"], b2["order_id"]);
    let after = [fleet.accepted_by(fleet.front_ports[0]).await, fleet.accepted_by(fleet.front_ports[1]).await];
    assert_eq!((after[0] - before[0], after[1] - before[1]), (1, 1), "one POST on each front");
    shop.wait_status(b1["order_id"].as_str().unwrap(), "confirmed").await;

    // A steady stream of orders through haproxy while front1 gets SIGTERM:
    // every POST is accepted.
    let accepted = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let ids = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = CancellationToken::new();
    let mut clients = Vec::new();
    for c in 0..4 {
        let (shop, accepted, failures, ids, stop) =
            (shop.clone(), accepted.clone(), failures.clone(), ids.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.is_cancelled() {
                let key = format!("lb-load-{c}-{i}");
                match shop.place(&key, LOAD_SKUS[(c + i) % LOAD_SKUS.len()]).await {
                    Ok((202, body)) => {
                        ids.lock().unwrap().push(body["order_id"].as_str().unwrap().to_owned());
                        accepted.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok((code, body)) => failures.lock().unwrap().push(format!("{key}: {code} {body}")),
                    Err(e) => failures.lock().unwrap().push(e),
                }
                i += 1;
            }
        }));
    }
    accepted_reach(&accepted, 20).await;
    let served = haproxy.servers().await;
    assert!(served["front1"].answered_2xx > 0 && served["front2"].answered_2xx > 0, "{served:?}");

    // SIGTERM: front1 says it isn't ready at once but keeps serving, then
    // drains and exits cleanly.
    let front1_port = fleet.front_ports[0];
    let http = fleet.http.clone();
    let draining = async {
        let readyz = eventually("front1 to report shutting down", || async {
            let r = http.get(format!("http://127.0.0.1:{front1_port}/readyz")).send().await.ok()?;
            (r.status() == 503).then_some(())?;
            r.json::<Value>().await.ok()
        })
        .await;
        assert_eq!((readyz["code"].as_str(), readyz["detail"].as_str()), (Some("not_ready"), Some("shutting down")));
        let r = http.get(format!("http://127.0.0.1:{front1_port}/api/catalog?limit=1")).send().await.unwrap();
        assert_eq!(r.status(), 200, "a draining front still serves");
    };
    let (status, ()) = tokio::join!(fleet.fronts[0].terminate(), draining);
    assert!(status.success(), "front1 exited with {status}:\n{}", fleet.fronts[0].tail());
    haproxy.wait_status("front1", "DOWN").await;
    let at_exit = haproxy.servers().await;
    let accepted_at_exit = accepted.load(Ordering::SeqCst);
    accepted_reach(&accepted, accepted_at_exit + 30).await;
    stop.cancel();
    for c in clients {
        c.await.unwrap();
    }
    let end = haproxy.servers().await;
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed request(s): {failures:#?}\nhaproxy:\n{}\n{}",
        failures.len(),
        haproxy.log_tail(),
        fleet.logs()
    );
    // After front1 left, all traffic went to front2.
    assert_eq!(end["front1"].answered_2xx, at_exit["front1"].answered_2xx, "{end:?}");
    assert!(end["front2"].answered_2xx >= at_exit["front2"].answered_2xx + 30, "{end:?}");
    let ids = ids.lock().unwrap().clone();
    for id in &ids {
        eventually(&format!("order {id} to settle"), || async {
            shop.status(id).await.filter(|s| s != "pending").map(drop)
        })
        .await;
    }
    println!(
        "{} orders through haproxy under load, 0 failed; front1 answered {} and front2 {} (2xx); \
         haproxy retried {} request(s), {} on another front",
        ids.len(),
        end["front1"].answered_2xx,
        end["front2"].answered_2xx,
        end.values().map(|s| s.retries).sum::<u64>(),
        end.values().map(|s| s.redispatches).sum::<u64>(),
    );
}

async fn accepted_reach(accepted: &AtomicU64, n: u64) {
    eventually(&format!("{n} orders accepted under load"), || async {
        (accepted.load(Ordering::SeqCst) >= n).then_some(())
    })
    .await
}

/// In process: after shutdown begins, a front answers `/readyz` with 503
/// and still serves for its grace; then it ends its status streams, stops
/// accepting and exits well before the drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_front_is_not_ready_but_serves_until_its_grace_ends() {
    let shop = Shop::start(BrokerKind::Embedded).await.unwrap();
    let grace = Duration::from_secs(2);
    let shutdown = CancellationToken::new();
    let app = public_front::App::build(
        public_front::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            bus: shared::config::BusConfig { port: shop.node_port, ..Default::default() },
            inventory_url: shop.node_url(shop.inventory.addr, ""),
            order_url: shop.node_url(shop.order.addr, ""),
            drain_grace_secs: grace.as_secs_f64(),
            ..Default::default()
        },
        shutdown.clone(),
    )
    .await
    .expect("front starts");
    let addr = app.local_addr();
    let task = tokio::spawn(app.run());
    let url = |path: &str| format!("http://{addr}{path}");
    eventually("the front to be ready", || async {
        shop.http.get(url("/readyz")).send().await.ok()?.status().is_success().then_some(())
    })
    .await;
    let (code, body, _) = shop
        .place_at(
            addr,
            "drain-1",
            json!({"customer_email": "a@example.com",
        "items": [{"sku": "FUEL-230G-001", "quantity": 1}]}),
            "location",
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let id = body["order_id"].as_str().unwrap().to_owned();
    shop.wait_status(&id, "confirmed").await;
    let mut stream = shop.http.get(url(&format!("/api/orders/{id}/events"))).send().await.unwrap();
    let mut seen = String::new();
    read_events_until(&mut stream, &mut seen, "confirmed").await;

    let began = tokio::time::Instant::now();
    shutdown.cancel();
    let r = shop.http.get(url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let problem: Value = r.json().await.unwrap();
    assert_eq!((problem["code"].as_str(), problem["detail"].as_str()), (Some("not_ready"), Some("shutting down")));
    // Still serving, on new connections too.
    let r = http_client(None).get(url("/api/catalog?limit=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(began.elapsed() < grace, "the checks took longer than the grace");

    // The stream ends when the grace does, and with it the drain.
    let ended = tokio::time::timeout(DEADLINE, async { while let Ok(Some(_)) = stream.chunk().await {} }).await;
    assert!(ended.is_ok(), "the status stream outlived the shutdown");
    assert!(began.elapsed() >= grace, "the stream ended after {:?}, before the grace", began.elapsed());
    tokio::time::timeout(DEADLINE, task).await.expect("the front stops").unwrap().unwrap();
    let stopped = began.elapsed();
    assert!(stopped < grace + Duration::from_secs(5), "stopped {stopped:?} after shutdown began");
    assert!(shop.http.get(url("/healthz")).send().await.is_err(), "still accepting after the drain");
}
