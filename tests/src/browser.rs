//! Headless Chromium (Debian's package) driven through its DevTools protocol: load pages,
//! run script in them, wait for what a user would see, take screenshots.
//!
//! Each browser has a profile of its own and is killed when dropped. Every wait has a deadline.

use std::{
    process::Stdio,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

pub struct Browser {
    _child: Child,
    _profile: TempDir,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next: AtomicU64,
}

impl Browser {
    /// Starts Chromium on a blank page and connects to that page.
    pub async fn start() -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium (apt-get install chromium)");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let browser_ws = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_owned();
                }
            }
            panic!("chromium ended without its DevTools address");
        })
        .await
        .expect("chromium printed its DevTools address within 30 s");
        // Chromium keeps writing to stderr; keep reading so it never blocks.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let port = browser_ws
            .trim_start_matches("ws://")
            .split(['/', ':'])
            .nth(1)
            .expect("port")
            .to_owned();
        let list: Vec<Value> = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .expect("DevTools answers")
            .json()
            .await
            .expect("target list");
        let page = list
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        let (ws, _) = tokio_tungstenite::connect_async(page)
            .await
            .expect("connect to the page");
        Browser {
            _child: child,
            _profile: profile,
            ws,
            next: AtomicU64::new(1),
        }
    }

    /// Sends a DevTools command and answers its result (events meanwhile are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params).await {
            Ok(result) => result,
            Err(error) => panic!("{method}: {error}"),
        }
    }

    /// Sends a DevTools command; its result, or the error DevTools answered.
    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(Message::Text(msg.into()))
            .await
            .expect("send to DevTools");
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let m = self.ws.next().await.expect("DevTools open").expect("frame");
                if let Message::Text(t) = m {
                    let v: Value = serde_json::from_str(&t).expect("JSON");
                    if v["id"] == id {
                        return v;
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{method} answered within 30 s"));
        if answer["error"].is_null() {
            Ok(answer["result"].clone())
        } else {
            Err(answer["error"].clone())
        }
    }

    /// Like [`Browser::eval`], but `None` when the page navigated while the expression ran
    /// (a redirect): the caller looks again.
    async fn eval_unless_navigating(&mut self, expression: &str) -> Option<Value> {
        let params = json!({"expression": expression, "returnByValue": true, "awaitPromise": true});
        match self.try_call("Runtime.evaluate", params).await {
            Ok(r) => Some(r["result"]["value"].clone()),
            Err(e) => {
                let message = e["message"].as_str().unwrap_or_default();
                let navigated = message.contains("navigated or closed")
                    || message.contains("context was destroyed");
                assert!(navigated, "Runtime.evaluate: {e}");
                None
            }
        }
    }

    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    /// The value of a script expression in the page (promises awaited).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page: 30 s at most.
    pub async fn wait_for(&mut self, expression: &str, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let seen = self
                .eval_unless_navigating(&format!("!!({expression})"))
                .await;
            if seen == Some(json!(true)) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                let body = self
                    .eval("document.body ? document.body.innerText : ''")
                    .await;
                panic!("{what} within 30 s; the page shows: {body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A phone's screen from now on.
    pub async fn phone(&mut self) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
        )
        .await;
    }

    /// A PNG of the page as shown.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("image data"))
            .expect("base64")
    }
}
