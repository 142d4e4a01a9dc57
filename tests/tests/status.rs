//! What the people who host an app see when it fails, end to end with real Docker: the app's
//! status on the master (state, last error, the container's last log lines, effective limits),
//! a crash-loop back-off instead of a container per request, and an error page instead of an
//! endless loading page.

use std::time::Duration;

use shadow_common::{logs::LogLine, status::AppState};
use shadow_nodeproxy::lifecycle::start::LABEL_TASK;
use shadow_tests::{
    fixtures::{counter_task, domain, status_until},
    http::Client,
    image::counter_image,
    master::{self, MasterOptions},
    node,
};

#[tokio::test]
async fn a_crashing_app_shows_why_backs_off_and_gets_an_error_page() {
    counter_image().await.expect("image");
    let m = master::spawn(MasterOptions::default()).await;
    let n = node::spawn(&m, |_| {}).await;
    let d = domain("crashy");
    let t = counter_task(&m, &d, "none", |s| {
        s["env"] = serde_json::json!({"FAIL_START": "1"});
    })
    .await;
    let c = Client::new(n.addr);

    let first = c.get(&d, "/").await.expect("answer");
    assert_eq!(first.status, 503, "{}", first.body);
    let s = status_until(&m, &t.id, "the failure reported", |s| {
        s.nodes.first().is_some_and(|a| a.last_error.is_some())
    })
    .await;
    assert_eq!(s.state, AppState::Backoff, "{s:?}");
    let app = &s.nodes[0];
    let error = app.last_error.as_ref().expect("last error");
    assert!(error.message.contains("exited"), "{}", error.message);
    // The app's own last words, kept although its container is gone.
    assert!(
        error.logs.iter().any(|l| l.contains("FAIL_START=1 is set")),
        "{:?}",
        error.logs
    );
    assert!(
        !n.containers()
            .await
            .iter()
            .any(|x| x.labels.get(LABEL_TASK) == Some(&t.id)),
        "the failed container was removed"
    );

    // Ten requests in a row start it at most a few more times: the others are refused at once
    // with Retry-After while the back-off runs (1 s, then 2 s, ...).
    for _ in 0..10 {
        let r = c.get(&d, "/").await.expect("answer");
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
    }
    let s = m.client.task_status(&t.id).await.expect("status");
    let failures = s.nodes[0].failures;
    assert!(
        (1..=3).contains(&failures),
        "{failures} starts for 11 requests"
    );
    assert!(s.nodes[0].backoff_until_ms.is_some());

    // A browser on a page-mode app that keeps failing gets a page saying so, not the loading
    // page (which would reload into a new start every second).
    let p = domain("crashy-page");
    let pt = counter_task(&m, &p, "none", |s| {
        s["env"] = serde_json::json!({"FAIL_START": "1"});
        s["cold_start"] = serde_json::json!("page");
    })
    .await;
    let html = [("accept", "text/html")];
    let loading = c
        .request("GET", &p, "/", &html, shadow_tests::http::empty())
        .await
        .expect("answer");
    assert!(loading.body.contains("Starting"), "{}", loading.body);
    status_until(&m, &pt.id, "the page-mode app backing off", |s| {
        s.state == AppState::Backoff
    })
    .await;
    let page = c
        .request("GET", &p, "/", &html, shadow_tests::http::empty())
        .await
        .expect("answer");
    assert_eq!(page.status, 503);
    assert!(page.body.contains("failed to start"), "{}", page.body);
    assert!(page.headers.contains_key("retry-after"));

    // Fixing the task (a new spec) ends the back-off at once: the next request starts it.
    let mut fixed = m.client.get_task(&t.id).await.expect("task").spec;
    fixed.env.clear();
    m.client.update_task(&t.id, &fixed).await.expect("update");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // The node learns of the update through its watch, a moment after the master has it.
        let r = c.get(&d, "/").await.expect("answer");
        if r.status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = status_until(&m, &t.id, "running", |s| s.state == AppState::Running).await;
    assert_eq!(s.nodes[0].failures, 0);
    assert_eq!(s.nodes[0].cold_starts, 1);
}

#[tokio::test]
async fn a_running_app_shows_its_limits_image_and_requests_and_a_wrong_port_is_named() {
    counter_image().await.expect("image");
    let m = master::spawn(MasterOptions::default()).await;
    let n = node::spawn(&m, |c| {
        c.default_memory_mb = 192;
        c.default_pids = 77;
    })
    .await;
    let d = domain("shown");
    let t = counter_task(&m, &d, "none", |_| {}).await;
    let c = Client::new(n.addr);
    assert_eq!(c.get(&d, "/").await.expect("answer").status, 200);
    let s = status_until(&m, &t.id, "running with a request seen", |s| {
        s.nodes
            .first()
            .is_some_and(|a| a.state == AppState::Running && a.last_request_ms.is_some())
    })
    .await;
    assert_eq!(s.name, "counter");
    let app = &s.nodes[0];
    assert_eq!(app.node, n.id);
    // No resources in the task: the node's defaults are what it runs under.
    let limits = app.limits.expect("limits");
    assert_eq!((limits.memory_mb, limits.pids), (192, 77));
    assert!(app
        .image_digest
        .as_deref()
        .is_some_and(|d| d.starts_with("sha256:")));
    let (_, list) = m.raw().send("GET", "/tasks/", None).await;
    assert_eq!(list[0]["state"], "running");

    // An app listening on another port than the task's: the start fails before its timeout,
    // naming both ports.
    let w = domain("wrong-port");
    let wt = counter_task(&m, &w, "none", |s| {
        s["env"] = serde_json::json!({"PORT": "8081"});
        s["start_timeout_s"] = serde_json::json!(60);
    })
    .await;
    assert_eq!(c.get(&w, "/").await.expect("answer").status, 503);
    let s = status_until(&m, &wt.id, "the timeout reported", |s| {
        s.nodes.first().is_some_and(|a| a.last_error.is_some())
    })
    .await;
    let message = &s.nodes[0].last_error.as_ref().expect("error").message;
    assert!(message.contains("listens on port 8081"), "{message}");
    assert!(message.contains("not on port 8000"), "{message}");
}

/// Reads JSON lines from a streaming answer until `pred` accepts one; 30 s at most.
async fn next_line_where(
    resp: &mut reqwest::Response,
    buf: &mut String,
    what: &str,
    pred: impl Fn(&LogLine) -> bool,
) -> LogLine {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        while let Some(i) = buf.find('\n') {
            let line: String = buf.drain(..=i).collect();
            let parsed: LogLine = serde_json::from_str(line.trim()).expect("a JSON log line");
            if pred(&parsed) {
                return parsed;
            }
        }
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("{what} within 30 s"))
            .expect("the stream goes on")
            .unwrap_or_else(|| panic!("the stream ended before {what}"));
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn logs_outlive_their_container_and_follow_across_a_reap_and_a_new_start() {
    counter_image().await.expect("image");
    let m = master::spawn(MasterOptions::default()).await;
    let n = node::spawn(&m, |_| {}).await;
    let c = Client::new(n.addr);

    // A crashed start: its output is kept although the container is gone.
    let bad = domain("logs-crash");
    let bt = counter_task(&m, &bad, "none", |s| {
        s["env"] = serde_json::json!({"FAIL_START": "1"});
    })
    .await;
    assert_eq!(c.get(&bad, "/").await.expect("answer").status, 503);
    let text = m
        .raw()
        .http
        .get(format!("{}/tasks/{}/logs?tail=10", m.url, bt.id))
        .bearer_auth(shadow_tests::master::TOKEN)
        .send()
        .await
        .expect("logs")
        .text()
        .await
        .expect("text");
    let lines: Vec<LogLine> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.line.contains("FAIL_START=1 is set") && l.run.starts_with("shadow-")),
        "{text}"
    );

    // A healthy app reaped after a second idle and started again: one follow sees both runs.
    let d = domain("logs-follow");
    let t = counter_task(&m, &d, "none", |s| {
        s["idle_timeout_s"] = serde_json::json!(1)
    })
    .await;
    assert_eq!(c.get(&d, "/").await.expect("answer").status, 200);
    let mut resp = m
        .raw()
        .http
        .get(format!(
            "{}/tasks/{}/logs?tail=100&follow=true",
            m.url, t.id
        ))
        .bearer_auth(shadow_tests::master::TOKEN)
        .send()
        .await
        .expect("follow");
    assert_eq!(resp.status(), 200);
    let mut buf = String::new();
    let first = next_line_where(&mut resp, &mut buf, "the first run's start line", |l| {
        l.line.contains("counter listening")
    })
    .await;
    let stopped = next_line_where(
        &mut resp,
        &mut buf,
        "the first run's stop line (the reap)",
        |l| l.line.contains("counter stopping"),
    )
    .await;
    assert_eq!(stopped.run, first.run);
    status_until(&m, &t.id, "the app idle after its reap", |s| {
        s.state == AppState::Idle
    })
    .await;
    assert_eq!(c.get(&d, "/").await.expect("answer").status, 200);
    let second = next_line_where(&mut resp, &mut buf, "the second run's start line", |l| {
        l.line.contains("counter listening")
    })
    .await;
    assert_ne!(second.run, first.run);
    assert!(second.seq > stopped.seq);
    assert!(!second.ts.is_empty());
}

/// Loads `url` in headless Chromium (Debian's package), every name resolving to 127.0.0.1,
/// and answers the DOM once the page has settled (15 s of page time, 60 s in all at most).
fn chromium_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    // `timeout`: a browser that hangs fails the test instead of holding it forever.
    let out = std::process::Command::new("timeout")
        .args([
            "60",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--host-resolver-rules=MAP * 127.0.0.1",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("chromium (apt-get install chromium)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_loading_page_shows_the_phase_and_reaches_the_app_by_itself() {
    counter_image().await.expect("image");
    let m = master::spawn(MasterOptions::default()).await;
    let n = node::spawn(&m, |_| {}).await;
    let c = Client::new(n.addr);
    let slow = |s: &mut serde_json::Value| {
        s["env"] = serde_json::json!({"START_DELAY_MS": "2500"});
        s["cold_start"] = serde_json::json!("page");
    };

    // A browser's page load gets the page, with the phase in words; a form POST to the same
    // sleeping app is held until the app answers it, not answered with a page.
    let d = domain("loading");
    counter_task(&m, &d, "none", slow).await;
    let html = [("accept", "text/html")];
    let page = c
        .request("GET", &d, "/", &html, shadow_tests::http::empty())
        .await
        .expect("answer");
    assert_eq!(page.status, 503);
    assert!(page.body.contains("Starting"), "{}", page.body);
    assert!(
        !page.body.contains("http-equiv=\"refresh\""),
        "no reload per second"
    );
    assert!(!page.body.contains("src=\"http"), "no external resources");
    let posted = c
        .request("POST", &d, "/count", &html, shadow_tests::http::full("n=1"))
        .await
        .expect("answer");
    assert_eq!((posted.status, posted.body.trim()), (200, "1"));

    // A real browser on a sleeping app: the page asks the node until the app is up, then
    // shows the app, by itself.
    let e = domain("loading-browser");
    counter_task(&m, &e, "none", slow).await;
    let url = format!("http://{e}:{}/", n.addr.port());
    let dom = tokio::task::spawn_blocking(move || chromium_dom(&url))
        .await
        .expect("chromium ran");
    assert!(!dom.contains("Starting"), "still the loading page: {dom}");
    assert!(
        dom.contains("<pre"),
        "the app's answer (text, in a <pre>): {dom}"
    );
}
