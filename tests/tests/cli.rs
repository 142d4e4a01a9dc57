//! The `shadow` command line as a user runs it: the real binary against a real master (and a
//! node with real Docker for logs), its tables, its `--json`, its exit codes and messages.

use std::{path::Path, process::Output};

use shadow_tests::{
    http::Client,
    image::{counter_image, COUNTER_IMAGE},
    master::{self, MasterHandle, MasterOptions, TOKEN},
    node, procs,
};

/// Runs `shadow args…` against `master` with `token`, with a HOME of its own (no config file).
async fn shadow(home: &Path, master: &str, token: &str, args: &[&str]) -> Output {
    let bin = procs::binaries().await.join("shadow");
    tokio::process::Command::new(bin)
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("SHADOW_MASTER_URL", master)
        .env("SHADOW_API_TOKEN", token)
        .output()
        .await
        .expect("shadow runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn ok(home: &Path, m: &MasterHandle, args: &[&str]) -> String {
    let o = shadow(home, &m.url, TOKEN, args).await;
    assert!(o.status.success(), "shadow {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn create_list_set_logs_and_delete_an_app_from_a_toml_file() {
    counter_image().await.expect("image");
    let m = master::spawn(MasterOptions::default()).await;
    let n = node::spawn(&m, |_| {}).await;
    let home = tempfile::tempdir().expect("home");
    let h = home.path();
    let domain = shadow_tests::fixtures::domain("cli");
    let spec = h.join("app.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"cli-counter\"\ndomains = [\"{domain}\"]\nimage = \"{COUNTER_IMAGE}\"\n\n[env]\nGREETING = \"hi\"\n"
        ),
    )
    .expect("spec");

    let created = ok(
        h,
        &m,
        &["apps", "create", "-f", spec.to_str().expect("path")],
    )
    .await;
    assert!(created.starts_with("created cli-counter ("), "{created}");

    let list: serde_json::Value =
        serde_json::from_str(&ok(h, &m, &["apps", "list", "--json"]).await).expect("JSON");
    assert_eq!(list[0]["name"], "cli-counter");
    assert_eq!(list[0]["state"], "idle");
    let table = ok(h, &m, &["apps", "list"]).await;
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("cli-counter") && table.contains("idle"),
        "{table}"
    );

    ok(
        h,
        &m,
        &[
            "apps",
            "set",
            "cli-counter",
            "idle_timeout_s=42",
            "env.MODE=fast",
            "env.GREETING=null",
        ],
    )
    .await;
    let shown: serde_json::Value =
        serde_json::from_str(&ok(h, &m, &["apps", "show", "cli-counter", "--json"]).await)
            .expect("JSON");
    assert_eq!(shown["task"]["idle_timeout_s"], 42);
    assert_eq!(shown["task"]["env"], serde_json::json!({"MODE": "fast"}));

    // Its output, through the master, once it ran.
    assert_eq!(
        Client::new(n.addr)
            .get(&domain, "/")
            .await
            .expect("answer")
            .status,
        200
    );
    let logs = ok(h, &m, &["apps", "logs", "cli-counter", "--tail", "5"]).await;
    assert!(logs.contains("counter listening"), "{logs}");
    let nodes: serde_json::Value =
        serde_json::from_str(&ok(h, &m, &["nodes", "list", "--json"]).await).expect("JSON");
    assert_eq!(nodes[0]["id"], n.id.as_str());

    ok(h, &m, &["apps", "delete", "cli-counter"]).await;
    let gone = shadow(h, &m.url, TOKEN, &["apps", "show", "cli-counter"]).await;
    assert_eq!(gone.status.code(), Some(1), "{}", text(&gone));
    assert!(
        text(&gone).contains("no app named \"cli-counter\""),
        "{}",
        text(&gone)
    );
}

#[tokio::test]
async fn bad_input_a_wrong_token_and_no_master_say_what_to_do_with_their_own_exit_codes() {
    let m = master::spawn(MasterOptions::default()).await;
    let home = tempfile::tempdir().expect("home");
    let h = home.path();

    let refused = shadow(h, &m.url, "wrong-token", &["apps", "list"]).await;
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    assert!(
        text(&refused).contains("SHADOW_API_TOKEN"),
        "{}",
        text(&refused)
    );

    let unreachable = shadow(
        h,
        &format!("http://{}", procs::free_addr()),
        TOKEN,
        &["status"],
    )
    .await;
    assert_eq!(unreachable.status.code(), Some(3), "{}", text(&unreachable));
    assert!(
        text(&unreachable).contains("cannot reach the master"),
        "{}",
        text(&unreachable)
    );

    let spec = h.join("bad.toml");
    std::fs::write(
        &spec,
        "name = \"x\"\ndomains = [\"not a host\"]\nimage = \"x\"\n",
    )
    .expect("spec");
    let bad = shadow(
        h,
        &m.url,
        TOKEN,
        &["apps", "create", "-f", spec.to_str().expect("path")],
    )
    .await;
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(text(&bad).contains("domains[0]"), "{}", text(&bad));
    assert!(
        m.client.list_tasks().await.expect("tasks").is_empty(),
        "nothing was created"
    );

    // A named context of the config file gives the master and token.
    let config = h.join(".config/shadow");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::write(
        config.join("config.toml"),
        format!("current = \"nowhere\"\n[contexts.nowhere]\nmaster = \"http://{}\"\n[contexts.test]\nmaster = \"{}\"\ntoken = \"{TOKEN}\"\n", procs::free_addr(), m.url),
    )
    .expect("config");
    let bin = procs::binaries().await.join("shadow");
    let run = |args: Vec<&'static str>| {
        let bin = bin.clone();
        let home = h.to_path_buf();
        async move {
            tokio::process::Command::new(bin)
                .args(args)
                .env_clear()
                .env("HOME", home)
                .output()
                .await
                .expect("shadow runs")
        }
    };
    let by_context = run(vec!["status", "--context", "test"]).await;
    assert!(by_context.status.success(), "{}", text(&by_context));
    assert!(
        text(&by_context).contains("apps:  0"),
        "{}",
        text(&by_context)
    );
    let current = run(vec!["status"]).await;
    assert_eq!(
        current.status.code(),
        Some(3),
        "the current context has no master: {}",
        text(&current)
    );
}

#[tokio::test]
async fn wake_shows_the_start_until_the_app_answers_sleep_stops_it_and_usage_counts_it() {
    counter_image().await.expect("image");
    let m = master::spawn(MasterOptions::default()).await;
    let n = node::spawn(&m, |c| c.usage_report_s = 1).await;
    let home = tempfile::tempdir().expect("home");
    let h = home.path();
    let domain = shadow_tests::fixtures::domain("wake");
    let spec = h.join("app.json");
    std::fs::write(
        &spec,
        serde_json::json!({"name": "sleepy", "domains": [domain], "image": COUNTER_IMAGE, "idle_timeout_s": 600})
            .to_string(),
    )
    .expect("spec");
    ok(
        h,
        &m,
        &["apps", "create", "-f", spec.to_str().expect("path")],
    )
    .await;

    let woke = ok(h, &m, &["apps", "wake", "sleepy"]).await;
    assert!(
        woke.starts_with(&format!("waking sleepy on {}\n", n.id)),
        "{woke}"
    );
    assert!(
        woke.contains(&format!("sleepy is running on {}", n.id)),
        "{woke}"
    );
    // Up before any request: the container is there, and a request is served without a start.
    let containers = n.containers().await;
    assert_eq!(containers.len(), 1, "{containers:?}");
    let reply = Client::new(n.addr).get(&domain, "/").await.expect("answer");
    assert_eq!(reply.status, 200);
    let status = m
        .client
        .task_status(&m.client.list_tasks().await.expect("tasks")[0].id)
        .await
        .expect("status");
    assert_eq!(status.nodes[0].cold_starts, 1, "{status:?}");
    // Waking a running app says so at once.
    let again: serde_json::Value =
        serde_json::from_str(&ok(h, &m, &["apps", "wake", "sleepy", "--json"]).await)
            .expect("JSON");
    assert_eq!(again["state"], "running");

    let slept = ok(h, &m, &["apps", "sleep", "sleepy"]).await;
    assert!(slept.contains("sleepy is asleep"), "{slept}");
    assert!(n.containers().await.is_empty(), "the container is gone");
    let idle = ok(h, &m, &["apps", "sleep", "sleepy"]).await;
    assert_eq!(idle, "sleepy was not running\n");

    // Its usage: one cold start, the one request.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let table = ok(h, &m, &["usage"]).await;
        let row = table.lines().find(|l| l.starts_with("sleepy"));
        if let Some(row) = row.filter(|r| r.split_whitespace().nth(3) == Some("1")) {
            assert_eq!(row.split_whitespace().nth(2), Some("1"), "{table}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no usage within 30 s:\n{table}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let hourly: serde_json::Value =
        serde_json::from_str(&ok(h, &m, &["usage", "sleepy", "--json", "--since", "2h"]).await)
            .expect("JSON");
    assert_eq!(hourly[0]["name"], "sleepy");

    let missing = shadow(h, &m.url, TOKEN, &["apps", "wake", "nothing"]).await;
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    let bad = shadow(h, &m.url, TOKEN, &["usage", "--since", "last week"]).await;
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
}
