//! A master of a fleet killed with SIGKILL under steady API traffic and steady app traffic: two
//! `shadow-master` processes on one PostgreSQL database, a real node process and CLI-style client
//! given both masters, a stateful app on a real S3 server and real Docker. Nothing may be lost or
//! granted twice, no app request may fail, and every API call must succeed (after at most one
//! move to the other master).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use shadow_common::{client::MasterClient, follower::Follower, task::TaskSpec};
use shadow_tests::{
    fixtures::docker_rm_node, http::Client, image::counter_image, image::COUNTER_IMAGE,
    master::TOKEN, node::unique_id, postgres, procs, s3,
};
use tokio::{sync::watch, time::Instant};

/// What one side of the traffic saw: (sent, latency, ok, detail).
type Log = Arc<Mutex<Vec<(Instant, Duration, bool, String)>>>;

/// Runs `one` every 50 ms until told to stop; counts successes.
fn steady<F, Fut>(one: F) -> (Log, watch::Receiver<usize>, watch::Sender<bool>)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<String, String>> + Send,
{
    let log: Log = Arc::default();
    let (ok_tx, ok) = watch::channel(0usize);
    let (stop, mut stopped) = watch::channel(false);
    let out = log.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        for i in 0.. {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.wait_for(|s| *s) => break,
            }
            let sent = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(30), one(i)).await;
            let (good, detail) = match r {
                Ok(Ok(d)) => (true, d),
                Ok(Err(e)) => (false, e),
                Err(_) => (false, "no answer in 30 s".into()),
            };
            if good {
                ok_tx.send_modify(|n| *n += 1);
            }
            out.lock()
                .unwrap()
                .push((sent, sent.elapsed(), good, detail));
        }
    });
    (log, ok, stop)
}

async fn more(ok: &mut watch::Receiver<usize>, n: usize, what: &str) {
    let now = *ok.borrow();
    tokio::time::timeout(Duration::from_secs(60), ok.wait_for(|s| *s >= now + n))
        .await
        .unwrap_or_else(|_| panic!("fewer than {n} {what} succeeded within 60 s"))
        .expect("the traffic loop ended");
}

#[tokio::test]
async fn a_killed_master_loses_nothing_and_no_app_or_api_request_fails() {
    counter_image().await.expect("image");
    let (s3, _probe) = s3::spawn_with_bucket().await;
    let url = postgres::database().await;
    let mut m1 = procs::spawn_master(&url, 300).await;
    let m2 = procs::spawn_master(&url, 300).await;
    let masters = format!("http://{},http://{}", m1.addr, m2.addr);
    let both = MasterClient::new(masters.clone(), Some(TOKEN.into()));
    let only_m2 = MasterClient::new(format!("http://{}", m2.addr), Some(TOKEN.into()));

    let dir = tempfile::tempdir().expect("dir");
    let node_id = unique_id("fleet");
    let env: Vec<(&str, String)> = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let node = procs::spawn_node(&masters, &node_id, &dir.path().join(&node_id), &env).await;
    let domain = format!("{}.test", unique_id("fleet"));
    let spec: TaskSpec = serde_json::from_value(json!({
        "name": "counter", "domains": [domain], "image": COUNTER_IMAGE,
        "volume": {"kind": "s3"}, "start_timeout_s": 30,
    }))
    .expect("spec");
    let app = both.create_task(&spec).await.expect("create the app");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // The node may still be registering, or hearing of the task.
        match Client::new(node.addr).post(&domain, "/count", "").await {
            Ok(r) if r.status == 200 => break,
            other => assert!(
                Instant::now() < deadline,
                "the node never served: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lease = both
        .list_leases()
        .await
        .expect("leases")
        .into_iter()
        .find(|l| l.task_id == app.id)
        .expect("the app's lease");

    let follower = Follower::spawn(both.clone(), std::future::pending());
    follower.synced().await;
    let (node_addr, d) = (node.addr, domain.clone());
    let (app_log, mut app_ok, app_stop) = steady(move |_| {
        let d = d.clone();
        async move {
            match Client::new(node_addr).post(&d, "/count", "").await {
                Ok(r) if r.status == 200 => Ok(r.body.trim().to_string()),
                Ok(r) => Err(format!("{} {}", r.status, r.body)),
                Err(e) => Err(e),
            }
        }
    });
    let api = both.clone();
    let (api_log, mut api_ok, api_stop) = steady(move |i| {
        let api = api.clone();
        async move {
            let spec: TaskSpec = serde_json::from_value(json!({
                "name": format!("api{i}"), "domains": [format!("api{i}.fleet.test")],
                "image": COUNTER_IMAGE,
            }))
            .expect("spec");
            let t = api.create_task(&spec).await.map_err(|e| e.to_string())?;
            api.list_tasks().await.map_err(|e| e.to_string())?;
            Ok(t.id)
        }
    });
    more(&mut app_ok, 10, "app requests").await;
    more(&mut api_ok, 10, "API calls").await;

    m1.kill9();
    let killed = Instant::now();
    let probe = both
        .create_task(
            &serde_json::from_value(json!({
                "name": "probe", "domains": ["probe.fleet.test"], "image": COUNTER_IMAGE,
            }))
            .expect("spec"),
        )
        .await
        .expect("a call right after the kill");
    tokio::time::timeout(
        Duration::from_secs(30),
        follower.wait_until(|s| s.task(&probe.id).is_some()),
    )
    .await
    .expect("the watch moved to the other master");
    let watch_moved = killed.elapsed();
    more(&mut app_ok, 40, "app requests after the kill").await;
    more(&mut api_ok, 20, "API calls after the kill").await;
    app_stop.send_replace(true);
    api_stop.send_replace(true);
    // The loops end with their last request.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let app_log = app_log.lock().unwrap().clone();
    let api_log = api_log.lock().unwrap().clone();
    let failed: Vec<_> = app_log.iter().filter(|o| !o.2).collect();
    assert!(failed.is_empty(), "app requests failed: {failed:#?}");
    let failed: Vec<_> = api_log.iter().filter(|o| !o.2).collect();
    assert!(failed.is_empty(), "API calls failed: {failed:#?}");
    // One writer, and nothing lost: the count only goes up by one.
    let counts: Vec<u64> = app_log
        .iter()
        .map(|o| o.3.parse().expect("a count"))
        .collect();
    assert!(
        counts.windows(2).all(|w| w[1] == w[0] + 1),
        "the count skipped or went back: {counts:?}"
    );
    // Every task any call created is there, on the surviving master.
    let tasks = only_m2.list_tasks().await.expect("list on m2");
    for (_, _, _, id) in &api_log {
        assert!(tasks.iter().any(|t| &t.id == id), "task {id} was lost");
    }
    // The app's lease was never granted again: same node, same token.
    let now = only_m2
        .list_leases()
        .await
        .expect("leases")
        .into_iter()
        .find(|l| l.task_id == app.id)
        .expect("still leased");
    assert_eq!(
        (now.node.as_str(), now.token),
        (node_id.as_str(), lease.token)
    );
    let nodes = only_m2.list_nodes().await.expect("nodes");
    assert!(nodes.iter().any(|n| n.id == node_id && n.healthy));

    let slowest = |log: &[(Instant, Duration, bool, String)]| {
        log.iter()
            .filter(|o| o.0 + o.1 >= killed)
            .map(|o| o.1)
            .max()
            .unwrap_or_default()
    };
    println!(
        "FIGURE fleet_kill api_calls={} app_requests={} slowest_api_call_after_kill_ms={} slowest_app_request_after_kill_ms={} watch_moved_ms={}",
        api_log.len(),
        app_log.len(),
        slowest(&api_log).as_millis(),
        slowest(&app_log).as_millis(),
        watch_moved.as_millis()
    );
    drop(node);
    docker_rm_node(&node_id);
}
