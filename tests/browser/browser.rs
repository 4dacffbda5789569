//! A headless Chromium driven over WebDriver (chromedriver on a free port,
//! started here and killed on drop), with waits that poll the DOM against a
//! deadline and screenshots under `target/screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// How long a page may take to reach an expected state.
pub const DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

const CHROMIUM: &[&str] = &["/usr/bin/chromium", "/usr/bin/chromium-browser"];
const CHROMEDRIVER: &[&str] = &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"];

fn find(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// Where screenshots go: `$CARGO_TARGET_DIR/screenshots` or the repo's
/// `target/screenshots`.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("screenshots")
}

/// chromedriver (and the Chromium it starts) in its own process group, so
/// a drop mid-test kills them all.
struct Driver {
    child: Child,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group id is the child's pid (see `process_group(0)`).
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Browser {
    pub client: Client,
    test: &'static str,
    // Dropped after the client: the driver, then the profile directory.
    _driver: Driver,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A fresh browser for `test` (the name prefixes its screenshots).
    /// `None` when Chromium or chromedriver isn't installed, unless
    /// `WEBSHOP_REQUIRE_BROWSER` is set (as in CI): then that is a failure.
    pub async fn start(test: &'static str) -> Option<Browser> {
        let (Some(chromium), Some(chromedriver)) = (find(CHROMIUM), find(CHROMEDRIVER)) else {
            let help = "browser tests need Chromium and chromedriver: apt-get install -y chromium chromium-driver";
            if std::env::var_os("WEBSHOP_REQUIRE_BROWSER").is_some_and(|v| v != "0") {
                panic!("{help} (WEBSHOP_REQUIRE_BROWSER is set, so they may not be skipped)");
            }
            eprintln!("note: skipping {test}: {help}");
            return None;
        };
        let port = crate::helpers::free_port();
        let mut cmd = Command::new(&chromedriver);
        cmd.arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let driver =
            Driver { child: cmd.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display())) };
        crate::helpers::eventually("chromedriver to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await;

        let profile = tempfile::tempdir().expect("temp dir");
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-component-update".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-sync".to_owned(),
            "--window-size=1280,900".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args },
        });
        let Value::Object(caps) = caps else { unreachable!("a JSON object") };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("starting a Chromium session through chromedriver: {e}"));
        std::fs::create_dir_all(screenshot_dir()).expect("creating the screenshot dir");
        Some(Browser { client, test, _driver: driver, _profile: profile })
    }

    /// Ends the session (Chromium exits); the driver dies on drop.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    /// Saves `target/screenshots/<test>-<name>.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = screenshot_dir().join(format!("{}-{name}.png", self.test));
        std::fs::write(&path, png).expect("writing the screenshot");
        path
    }

    /// Like `screenshot`, of the whole page: the window grows to the
    /// page's height for the shot.
    pub async fn screenshot_page(&self, name: &str) -> PathBuf {
        let (width, height) = self.client.get_window_size().await.expect("window size");
        let page = self.js("return document.documentElement.scrollHeight", vec![]).await.as_u64().unwrap_or(height);
        // Chrome's own window frame, if any, comes on top of the page.
        let frame = self.js("return window.outerHeight - window.innerHeight", vec![]).await.as_u64().unwrap_or(0);
        self.resize(width as u32, (page + frame).clamp(height, 6000) as u32).await;
        let path = self.screenshot(name).await;
        self.resize(width as u32, height as u32).await;
        path
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.unwrap_or_else(|e| panic!("running {script}: {e}"))
    }

    /// Polls `script` until it returns something truthy, and returns that.
    /// On timeout: a screenshot, then a panic naming `what` and the page.
    pub async fn wait_until(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let start = tokio::time::Instant::now();
        let mut last_error = None;
        loop {
            match self.client.execute(script, args.clone()).await {
                Ok(v) if truthy(&v) => return v,
                Ok(_) => {}
                // A navigation in progress makes scripts fail briefly.
                Err(e) => last_error = Some(e.to_string()),
            }
            if start.elapsed() > DEADLINE {
                self.fail(what, last_error).await;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn fail(&self, what: &str, error: Option<String>) -> ! {
        let shot = self.screenshot(&format!("FAILED-{}", what.replace(|c: char| !c.is_alphanumeric(), "-"))).await;
        let url = self.client.current_url().await.map(|u| u.to_string()).unwrap_or_default();
        let text = self
            .client
            .execute("return document.body ? document.body.innerText : ''", vec![])
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let text: String = text.chars().take(3000).collect();
        panic!(
            "timed out after {DEADLINE:?} waiting for {what}\nurl: {url}\nlast script error: {}\nscreenshot: {}\npage text:\n{text}",
            error.unwrap_or_else(|| "none".into()),
            shot.display()
        );
    }

    /// Waits for the element `css` to exist and be shown.
    pub async fn wait_visible(&self, css: &str) {
        self.wait_until(
            &format!("{css} to be visible"),
            "const el = document.querySelector(arguments[0]); return !!el && el.offsetParent !== null;",
            vec![json!(css)],
        )
        .await;
    }

    /// The text of `css` once it is visible (read in one step in the page,
    /// so a re-render can't leave a stale element in between).
    pub async fn text(&self, css: &str) -> String {
        let found = self
            .wait_until(
                &format!("{css} to be visible"),
                "const el = document.querySelector(arguments[0]); \
                 return el && el.offsetParent !== null ? {text: el.innerText} : null;",
                vec![json!(css)],
            )
            .await;
        found["text"].as_str().unwrap_or_default().to_owned()
    }

    /// Runs `act` on the element `css` once it is visible, again if the page
    /// re-rendered it in between (a stale element).
    async fn on_element<F, Fut>(&self, css: &str, what: &str, act: F)
    where
        F: Fn(fantoccini::elements::Element) -> Fut,
        Fut: std::future::Future<Output = Result<(), fantoccini::error::CmdError>>,
    {
        let start = tokio::time::Instant::now();
        loop {
            self.wait_visible(css).await;
            let result = match self.client.find(Locator::Css(css)).await {
                Ok(el) => act(el).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return,
                Err(e) if start.elapsed() < DEADLINE && is_stale(&e) => tokio::time::sleep(POLL).await,
                Err(e) => panic!("{what} {css}: {e}"),
            }
        }
    }

    /// Clicks `css` like a user would (scrolled to the middle of the view so
    /// the sticky header can't be in the way).
    pub async fn click(&self, css: &str) {
        self.wait_visible(css).await;
        self.js("document.querySelector(arguments[0]).scrollIntoView({block: 'center'})", vec![json!(css)]).await;
        self.on_element(css, "clicking", |el| async move { el.click().await }).await;
    }

    /// Replaces the value of the input `css` by typing `text`.
    pub async fn fill(&self, css: &str, text: &str) {
        self.on_element(css, "typing into", |el| async move {
            el.clear().await?;
            el.send_keys(text).await
        })
        .await;
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.client.set_window_size(width, height).await.expect("resizing the window");
    }
}

/// The page replaced the element between finding and using it.
fn is_stale(e: &fantoccini::error::CmdError) -> bool {
    e.is_stale_element_reference() || e.is_no_such_element() || e.is_element_not_interactable()
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}
