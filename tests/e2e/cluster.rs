//! `webshop cluster`, as a new user runs it: it starts PostgreSQL, the
//! broker, two of each node and haproxy, prints where they listen, takes
//! orders through haproxy, starts a killed node again while the other
//! instance takes its partitions over, and stops everything on Ctrl-C.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

/// The lines the command printed so far, read on a thread of their own.
struct Output {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Output {
    fn find(&self, prefix: &str) -> Option<String> {
        self.lines.lock().unwrap().iter().find(|l| l.trim_start().starts_with(prefix)).cloned()
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

/// The URL on a printed line (`  name   http://...`).
fn url_of(line: &str) -> String {
    line.split_whitespace().find(|w| w.starts_with("http://")).expect("a URL").trim_end_matches('/').to_owned()
}

/// The pid on a printed line (`... (pid 123)`).
fn pid_of(line: &str) -> String {
    line.rsplit("(pid ").next().unwrap().trim_end_matches(')').to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_one_machine_takes_orders_survives_a_kill_and_stops_on_ctrl_c() {
    let pg = std::fs::read_dir("/usr/lib/postgresql").is_ok();
    let haproxy = ["/usr/sbin/haproxy", "/usr/bin/haproxy"].iter().any(|p| std::path::Path::new(p).exists());
    for (present, var, what) in
        [(pg, "WEBSHOP_REQUIRE_POSTGRES", "PostgreSQL"), (haproxy, "WEBSHOP_REQUIRE_HAPROXY", "haproxy")]
    {
        if !present {
            assert_ne!(std::env::var(var).as_deref(), Ok("1"), "{what} is required ({var}) but not installed");
            eprintln!("{what} not installed: skipping the cluster command test");
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_webshop"))
        .args(["cluster", "--port", "0", "--broker-port", "0", "--pg-port", "0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("webshop cluster starts");
    let out = Output { lines: Default::default() };
    let lines = out.lines.clone();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
    // Stopped if the test fails: Ctrl-C first, which stops the nodes (they
    // run in process groups of their own, which a SIGKILL of the command
    // would leave running), then SIGKILL if it hasn't exited in time.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            let _ = Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                if self.0.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
        }
    }
    let id = child.id().to_string();
    let mut child = Guard(child);

    let up = tokio::time::timeout(Duration::from_secs(150), async {
        while out.find("public API").is_none() {
            assert!(child.0.try_wait().unwrap().is_none(), "webshop cluster exited:\n{}", out.text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(up.is_ok(), "webshop cluster never came up:\n{}", out.text());
    let api = url_of(&out.find("public API").unwrap()).trim_end_matches("/api/catalog").to_owned();
    let order_1 = out.find("order-1").expect("order-1 printed");
    let order_2 = url_of(&out.find("order-2").expect("order-2 printed"));
    let http = http_client(None);

    let place = |key: &'static str| {
        let (http, api) = (http.clone(), api.clone());
        async move {
            let body = json!({"customer_email": "ada@example.com", "items": [{"sku": "APRON-CNV-001", "quantity": 1}]});
            eventually(&format!("{key} to be accepted"), || async {
                let r = http
                    .post(format!("{api}/api/orders"))
                    .header("Idempotency-Key", key)
                    .json(&body)
                    .send()
                    .await
                    .ok()?;
                let v: Value = r.json().await.ok()?;
                v["order_id"].as_str().map(str::to_owned)
            })
            .await
        }
    };
    let confirmed = |id: String| {
        let (http, api) = (http.clone(), api.clone());
        async move {
            eventually(&format!("order {id} to be confirmed"), || async {
                let v: Value = http.get(format!("{api}/api/orders/{id}")).send().await.ok()?.json().await.ok()?;
                (v["status"] == "confirmed").then_some(())
            })
            .await
        }
    };
    confirmed(place("cluster-1").await).await;

    // kill -9 order-1: orders go on (order-2 takes the partitions over, or
    // order-1, started again by the command within a second, takes its
    // share back first), and in the end the two own every partition once.
    let killed = Command::new("kill").args(["-KILL", &pid_of(&order_1)]).status().unwrap();
    assert!(killed.success());
    confirmed(place("cluster-2").await).await;
    eventually("order-1 to be started again", || async { out.find("order-1 is pid").map(drop) }).await;
    let order_1 = url_of(&order_1);
    eventually("order-1 and order-2 to own every partition once", || async {
        let mut owned = Vec::new();
        for node in [&order_1, &order_2] {
            let v: Value = http.get(format!("{node}/stats")).send().await.ok()?.json().await.ok()?;
            owned.extend(v["partitions"].as_array()?.iter().filter_map(Value::as_u64));
        }
        owned.sort_unstable();
        (owned == (0..8).collect::<Vec<u64>>()).then_some(())
    })
    .await;

    // Ctrl-C: everything stops, in order, and the command says so.
    let sent = Command::new("kill").args(["-INT", &id]).status().unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("webshop cluster did not stop:\n{}", out.text()));
    assert!(status.success(), "webshop cluster exited with {status}:\n{}", out.text());
    eventually("the stop to be reported", || async { out.find("webshop cluster stopped cleanly").map(drop) }).await;
    let gone = reqwest::get(format!("{api}/healthz")).await;
    assert!(gone.is_err(), "haproxy still answers after the stop");
}
