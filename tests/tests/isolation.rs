//! Hostile tenants on one node, end to end with real Docker: an app cannot reach another app's
//! container, and a fork bomb or a memory hog in one app leaves its neighbour answering, because
//! every app runs under limits (the node's defaults when its task sets none) and their memory
//! limits may not add up to more than the node's budget.

use std::net::SocketAddr;

use shadow_nodeproxy::lifecycle::start::LABEL_TASK;
use shadow_tests::{
    fixtures::{counter_task, domain},
    http::Client,
    image::counter_image,
    master::{self, MasterOptions},
    node::{self, NodeHandle},
};

/// The IP of the task's container on the app network.
async fn container_ip(n: &NodeHandle, task: &str) -> String {
    let c = n
        .containers()
        .await
        .into_iter()
        .find(|c| c.labels.get(LABEL_TASK).map(String::as_str) == Some(task))
        .expect("the task's container");
    let out = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &c.id,
        ])
        .output()
        .expect("docker inspect");
    let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!ip.is_empty(), "no IP for {}", c.name);
    ip
}

async fn get(addr: SocketAddr, d: &str, path: &str) -> (u16, String) {
    let r = Client::new(addr).get(d, path).await.expect("answer");
    (r.status, r.body.trim().to_string())
}

#[tokio::test]
async fn apps_cannot_reach_or_starve_their_neighbours() {
    counter_image().await.expect("image");
    let m = master::spawn(MasterOptions::default()).await;
    let n = node::spawn(&m, |c| {
        c.default_memory_mb = 128;
        c.default_pids = 64;
        c.memory_budget_mb = 300;
    })
    .await;
    let (da, db, dc) = (domain("tenant-a"), domain("tenant-b"), domain("tenant-c"));
    let a = counter_task(&m, &da, "none", |_| {}).await;
    let b = counter_task(&m, &db, "none", |_| {}).await;
    let c = counter_task(&m, &dc, "none", |_| {}).await;
    assert_eq!(get(n.addr, &da, "/").await.0, 200);
    assert_eq!(get(n.addr, &db, "/").await.0, 200);

    // A cannot open a connection to B's container; it can to its own (the probe works).
    let (ip_a, ip_b) = (container_ip(&n, &a.id).await, container_ip(&n, &b.id).await);
    let (_, to_b) = get(n.addr, &da, &format!("/connect?to={ip_b}:8000")).await;
    assert!(to_b.starts_with("failed"), "A reached B: {to_b}");
    let (_, to_self) = get(n.addr, &da, &format!("/connect?to={ip_a}:8000")).await;
    assert_eq!(to_self, "connected");

    // A fork bomb in A stops at the default process limit; B keeps answering.
    let (status, bomb) = get(n.addr, &da, "/threads?n=100000").await;
    assert_eq!(status, 200, "{bomb}");
    let started: u64 = bomb
        .split(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{bomb}"));
    assert!(started < 64, "the pids limit held: {bomb}");
    assert_eq!(get(n.addr, &db, "/").await.0, 200);

    // A memory hog in A is killed at the default memory limit; B keeps answering.
    let hog = Client::new(n.addr).get(&da, "/hog?n=1024").await;
    assert!(
        !matches!(&hog, Ok(r) if r.status == 200),
        "1 GiB allocated under a 128 MiB limit: {hog:?}"
    );
    assert_eq!(get(n.addr, &db, "/").await.0, 200);

    // A and B hold 256 of the 300 MiB budget: C is refused and nothing of it is made.
    let (status, _) = get(n.addr, &dc, "/").await;
    assert_eq!(status, 503);
    assert!(
        !n.containers()
            .await
            .iter()
            .any(|x| x.labels.get(LABEL_TASK) == Some(&c.id)),
        "no container for a start past the budget"
    );
    // Once B is gone, C fits.
    m.client.delete_task(&b.id).await.expect("delete");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = get(n.addr, &dc, "/").await;
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "C never started: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    n.stop().await;
}

#[tokio::test]
async fn a_node_can_require_a_non_root_user_and_a_read_only_root() {
    counter_image().await.expect("image");
    let m = master::spawn(MasterOptions::default()).await;
    let n = node::spawn(&m, |c| {
        c.require_non_root = true;
        c.require_read_only = true;
    })
    .await;
    // A task that names no user is refused before anything is made.
    let (loose, strict) = (domain("as-root"), domain("least"));
    let refused = counter_task(&m, &loose, "local", |_| {}).await;
    assert_eq!(get(n.addr, &loose, "/").await.0, 503);
    assert!(
        !n.containers()
            .await
            .iter()
            .any(|x| x.labels.get(LABEL_TASK) == Some(&refused.id)),
        "no container for a refused task"
    );
    // One that complies runs as its user, writes /data and /tmp, and nothing else.
    counter_task(&m, &strict, "local", |s| {
        s["user"] = serde_json::json!("1000:1000");
        s["read_only"] = serde_json::json!(true);
    })
    .await;
    let r = Client::new(n.addr)
        .post(&strict, "/count", "")
        .await
        .expect("answer");
    assert_eq!(
        (r.status, r.body.trim()),
        (200, "1"),
        "the count is written to /data"
    );
    assert_eq!(get(n.addr, &strict, "/whoami").await.1, "uid=1000 gid=1000");
    assert_eq!(get(n.addr, &strict, "/write?path=/tmp/x").await.1, "ok");
    let (_, root) = get(n.addr, &strict, "/write?path=/x").await;
    assert!(
        root.starts_with("failed") && root.contains("Read-only"),
        "{root}"
    );
    n.stop().await;
}

#[tokio::test]
async fn secret_env_reaches_the_app_and_never_the_api() {
    counter_image().await.expect("image");
    let m = master::spawn(MasterOptions::default()).await;
    let n = node::spawn(&m, |_| {}).await;
    let d = domain("secrets");
    let t = counter_task(&m, &d, "none", |s| {
        s["secret_env"] = serde_json::json!({"DB_PASSWORD": "hunter2"});
    })
    .await;
    assert_eq!(
        get(n.addr, &d, "/env?name=DB_PASSWORD").await,
        (200, "hunter2".into())
    );

    // Every API answer shows the name with a null value.
    let raw = m.raw();
    let (status, shown) = raw.send("GET", &format!("/tasks/{}", t.id), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        shown["secret_env"],
        serde_json::json!({"DB_PASSWORD": null})
    );
    let (_, all) = raw.send("GET", "/tasks", None).await;
    assert!(!all.to_string().contains("hunter2"), "{all}");
    let (_, by_domain) = raw
        .send("GET", &format!("/tasks/by-domain/{d}"), None)
        .await;
    assert!(!by_domain.to_string().contains("hunter2"), "{by_domain}");

    // Putting back what GET showed (a changed env beside it) keeps the secret: the restarted app
    // still sees it, and the new plain value too.
    let mut back = shown.clone();
    back.as_object_mut().unwrap().remove("id");
    back["env"] = serde_json::json!({"MODE": "2"});
    let (status, updated) = raw
        .send("PUT", &format!("/tasks/{}", t.id), Some(&back.to_string()))
        .await;
    assert_eq!(status, 200, "{updated}");
    assert!(!updated.to_string().contains("hunter2"), "{updated}");
    assert_eq!(get(n.addr, &d, "/env?name=MODE").await, (200, "2".into()));
    assert_eq!(
        get(n.addr, &d, "/env?name=DB_PASSWORD").await,
        (200, "hunter2".into())
    );

    // A null for a name that has no stored value is refused and changes nothing.
    back["secret_env"]["API_KEY"] = serde_json::Value::Null;
    let (status, err) = raw
        .send("PUT", &format!("/tasks/{}", t.id), Some(&back.to_string()))
        .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["field"], "secret_env.API_KEY");
    assert_eq!(get(n.addr, &d, "/env?name=API_KEY").await.0, 404);
}

/// The app network's gateway: this machine's address on the apps' bridge.
fn gateway(network: &str) -> std::net::IpAddr {
    let out = std::process::Command::new("docker")
        .args([
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
            network,
        ])
        .output()
        .expect("docker network inspect");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("no gateway for {network}: {e}"))
}

#[tokio::test]
async fn apps_cannot_open_connections_to_the_node_or_the_metadata_service() {
    counter_image().await.expect("image");
    let m = master::spawn(MasterOptions::default()).await;
    let n = node::spawn(&m, |c| c.app_firewall = "on".into()).await;
    let d = domain("fenced");
    counter_task(&m, &d, "none", |_| {}).await;
    assert_eq!(get(n.addr, &d, "/").await.0, 200);

    // A service of this machine's, listening on its address on the apps' bridge (where an app
    // finds its host): the app's connection is refused, while the node reaches the app fine.
    let service = tokio::net::TcpListener::bind((gateway("shadow-apps"), 0))
        .await
        .expect("bind on the bridge's gateway");
    let to = service.local_addr().expect("addr");
    let (_, answer) = get(n.addr, &d, &format!("/connect?to={to}")).await;
    assert!(
        answer.starts_with("failed"),
        "the app reached the host: {answer}"
    );
    assert_eq!(get(n.addr, &d, "/").await.0, 200);

    // The metadata service is off limits too: its rules are in place (no traffic is sent there
    // from a test).
    let out = std::process::Command::new("docker")
        .args(["network", "inspect", "-f", "{{.Id}}", "shadow-apps"])
        .output()
        .expect("docker network inspect");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let bridge = format!("br-{}", &id[..12]);
    for (chain, spec) in shadow_nodeproxy::firewall::rules(&bridge) {
        let status = std::process::Command::new("iptables")
            .args(["-w", "-C", chain])
            .args(&spec)
            .status()
            .expect("iptables");
        assert!(
            status.success(),
            "missing: iptables -A {chain} {}",
            spec.join(" ")
        );
    }
}
