//! A headless Chromium driven through chromedriver's W3C WebDriver protocol (the
//! protocol Selenium speaks), from Rust: no Python and no downloads. The browser is
//! Debian's `chromium` and `chromium-driver`, kept off the network; a missing one
//! fails the test with the command that installs it.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: Client<HttpConnector, Full<Bytes>>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless session.
    pub async fn start() -> Browser {
        for (bin, pkg) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(bin).is_file(),
                "{bin} is missing: these tests need a real browser \
                 (Debian: apt-get install --no-install-recommends {pkg}; ./test.sh installs it)"
            );
        }
        let port = crate::common::free_port();
        // A process group of its own: the browser it starts is stopped with it, even
        // when a failed assertion skips the orderly quit.
        let driver = Command::new(CHROMEDRIVER)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let http = Client::builder(TokioExecutor::new()).build_http();
        let profile = tempfile::tempdir().expect("tempdir");
        let mut b = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            http,
            _profile: profile,
        };
        let t = Instant::now();
        loop {
            if let Ok(v) = b.raw(Method::GET, "/status", None).await {
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let args = json!([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--window-size=1280,900",
            format!("--user-data-dir={}", b._profile.path().display()),
        ]);
        let v = b
            .raw(
                Method::POST,
                "/session",
                Some(json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
                }}})),
            )
            .await
            .expect("a browser session");
        b.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        b
    }

    async fn raw(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(bytes))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), self.http.request(req))
            .await
            .map_err(|_| "webdriver timeout".to_string())?
            .map_err(|e| e.to_string())?;
        let ok = resp.status().is_success();
        let data = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&data).map_err(|e| e.to_string())?;
        if ok {
            Ok(v)
        } else {
            Err(v["value"]["message"].as_str().unwrap_or("").to_string())
        }
    }

    async fn cmd(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let p = format!("/session/{}{path}", self.session);
        match self.raw(method, &p, body).await {
            Ok(v) => v["value"].clone(),
            Err(e) => panic!("webdriver {p}: {e}"),
        }
    }

    pub async fn goto(&self, url: &str) {
        self.cmd(Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    pub async fn url(&self) -> String {
        self.cmd(Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// The element matching `css`, if there is one now.
    pub async fn find(&self, css: &str) -> Option<String> {
        let p = format!("/session/{}/element", self.session);
        let v = self
            .raw(
                Method::POST,
                &p,
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .ok()?;
        v["value"][ELEMENT].as_str().map(str::to_string)
    }

    /// Waits (at most `limit`) for an element matching `css`.
    pub async fn wait_for(&self, css: &str, limit: Duration) -> String {
        let t = Instant::now();
        loop {
            if let Some(e) = self.find(css).await {
                return e;
            }
            if t.elapsed() >= limit {
                let src = self.cmd(Method::GET, "/source", None).await;
                panic!(
                    "no {css} within {limit:?} at {}; page: {}",
                    self.url().await,
                    src.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `suffix` (`/click`, `/value`, ...) on the element matching `css`, found
    /// afresh when the page's live update replaced it meanwhile ("stale element").
    async fn on_element(
        &self,
        css: &str,
        method: Method,
        suffix: &str,
        body: Option<Value>,
    ) -> Value {
        for _ in 0..20 {
            let e = self.wait_for(css, Duration::from_secs(10)).await;
            let p = format!("/session/{}/element/{e}{suffix}", self.session);
            match self.raw(method.clone(), &p, body.clone()).await {
                Ok(v) => return v["value"].clone(),
                Err(msg) if msg.contains("stale element") => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(msg) => panic!("webdriver {p}: {msg}"),
            }
        }
        panic!("{css}: the element kept going stale");
    }

    pub async fn click(&self, css: &str) {
        self.on_element(css, Method::POST, "/click", Some(json!({})))
            .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, Method::POST, "/value", Some(json!({ "text": text })))
            .await;
    }

    /// The visible text of the first element matching `css` ("" if none); read again
    /// when the page's live update replaced the element meanwhile.
    pub async fn text(&self, css: &str) -> String {
        for _ in 0..20 {
            let p = format!("/session/{}/element", self.session);
            let Ok(v) = self
                .raw(
                    Method::POST,
                    &p,
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await
            else {
                return String::new();
            };
            let Some(e) = v["value"][ELEMENT].as_str() else {
                return String::new();
            };
            let p = format!("/session/{}/element/{e}/text", self.session);
            match self.raw(Method::GET, &p, None).await {
                Ok(v) => return v["value"].as_str().unwrap_or_default().to_string(),
                Err(msg) if msg.contains("stale element") => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => return String::new(),
            }
        }
        String::new()
    }

    pub async fn attr(&self, css: &str, name: &str) -> String {
        self.on_element(css, Method::GET, &format!("/attribute/{name}"), None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub async fn script(&self, script: &str) -> Value {
        self.cmd(
            Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    pub async fn cookie(&self, name: &str) -> Option<Value> {
        let p = format!("/session/{}/cookie/{name}", self.session);
        self.raw(Method::GET, &p, None)
            .await
            .ok()
            .map(|v| v["value"].clone())
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.cmd(
            Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// Saves a PNG screenshot of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let v = self.cmd(Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or(""))
            .expect("base64 screenshot");
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Closes the session; dropping stops the driver and whatever is left of the browser.
    pub async fn quit(self) {
        let p = format!("/session/{}", self.session);
        let _ = self.raw(Method::DELETE, &p, None).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group is the driver's own (its id is the driver's pid): the driver, the
        // browser and its helpers, nothing else.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}
