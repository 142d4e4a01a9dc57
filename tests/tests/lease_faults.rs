//! One writer per volume under faults, end to end: a real master, real node proxies (in-process
//! behind a relay that refuses or blackholes their link to the master, or as processes killed
//! with SIGKILL), the real edge, a real S3 server and real Docker. Docker's own event log is the
//! judge of "never two containers of one task at once". `docs/leases.md` has the arithmetic
//! these tests hold the code to.
//!
//! The cases run one at a time (a lock): they measure failover, and two of them side by side on
//! two CPUs would measure each other.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use shadow_common::{follower::Follower, task::Task};
use shadow_nodeproxy::{lifecycle::start::LABEL_TASK, runtime::ContainerRuntime};
use shadow_tests::{
    docker_events::{self, Span},
    edge::{self, EdgeHandle},
    fixtures::{counter_task, docker_rm_node, domain, until_released},
    http::Client,
    image::counter_image,
    master::{self, MasterHandle, MasterOptions},
    node::{self, unique_id, NodeHandle},
    procs,
    relay::{Mode, Relay},
    s3::{self, S3Server},
};
use tokio::{sync::watch, task::JoinSet, time::Instant};

/// The node's defaults (docs/leases.md): TTL 4 s, renewals every second, kill 1 s early.
const TTL: Duration = Duration::from_millis(4_000);
const PERIOD: Duration = Duration::from_millis(1_000);
const MARGIN: Duration = Duration::from_millis(1_000);

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn fast_master() -> MasterOptions {
    // Nodes heartbeat every 100 ms; three missed 300 ms intervals make a node unhealthy.
    MasterOptions {
        heartbeat_interval: Duration::from_millis(300),
        ..Default::default()
    }
}

/// One request of the steady traffic.
#[derive(Debug, Clone)]
struct Outcome {
    sent: Instant,
    done_ns: u128,
    status: Option<u16>,
    body: String,
}

/// POST /count through the edge at a steady rate, each request on its own, so a slow one does
/// not hold the others back.
struct Traffic {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    successes: watch::Receiver<usize>,
    stop: watch::Sender<bool>,
    join: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(edge: SocketAddr, domain: &str, every: Duration) -> Traffic {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let (ok_tx, successes) = watch::channel(0usize);
        let (stop, mut stopped) = watch::channel(false);
        let (out, d) = (outcomes.clone(), domain.to_string());
        let join = tokio::spawn(async move {
            let ok_tx = Arc::new(ok_tx);
            let mut inflight = JoinSet::new();
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
                let (out, d, ok_tx) = (out.clone(), d.clone(), ok_tx.clone());
                inflight.spawn(async move {
                    let sent = Instant::now();
                    let r = tokio::time::timeout(
                        Duration::from_secs(45),
                        Client::new(edge).post(&d, "/count", ""),
                    )
                    .await;
                    let (status, body) = match r {
                        Ok(Ok(r)) => (Some(r.status), r.body.trim().to_string()),
                        Ok(Err(e)) => (None, e),
                        Err(_) => (None, "no answer in 45 s".into()),
                    };
                    if status == Some(200) {
                        ok_tx.send_modify(|n| *n += 1);
                    }
                    out.lock().unwrap().push(Outcome {
                        sent,
                        done_ns: docker_events::now_ns(),
                        status,
                        body,
                    });
                });
            }
            while inflight.join_next().await.is_some() {}
        });
        Traffic {
            outcomes,
            successes,
            stop,
            join,
        }
    }

    /// Waits until `n` more requests than now have succeeded (at most `limit`).
    async fn more_successes(&mut self, n: usize, limit: Duration) {
        let now = *self.successes.borrow();
        tokio::time::timeout(limit, self.successes.wait_for(|s| *s >= now + n))
            .await
            .unwrap_or_else(|_| panic!("fewer than {n} requests succeeded within {limit:?}"))
            .expect("traffic runs");
    }

    async fn finish(self) -> Vec<Outcome> {
        self.stop.send_replace(true);
        self.join.await.expect("traffic task");
        let mut v = self.outcomes.lock().unwrap().clone();
        v.sort_by_key(|o| o.done_ns);
        v
    }
}

/// Waits on the master's watch until `pred` holds (at most `limit`).
async fn until(
    m: &MasterHandle,
    what: &str,
    limit: Duration,
    pred: impl FnMut(&shadow_common::state::ClusterState) -> bool,
) {
    let f = Follower::spawn(m.client.clone(), std::future::pending());
    tokio::time::timeout(limit, async {
        f.synced().await;
        f.wait_until(pred).await;
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"));
}

async fn lease_of(m: &MasterHandle, task: &str) -> shadow_common::lease::Lease {
    m.client
        .list_leases()
        .await
        .expect("leases")
        .into_iter()
        .find(|l| l.task_id == task)
        .expect("the task holds a lease")
}

/// Changes the task's idle timeout (a running app stops, writing its volume back).
async fn set_idle(m: &MasterHandle, t: &Task, secs: u64) {
    let mut spec = t.spec.clone();
    spec.idle_timeout_s = secs;
    m.client.update_task(&t.id, &spec).await.expect("update");
}

/// Like [`count_on`], for a task the node may not have heard of yet (its watch of the master
/// may be waiting out a backoff after a cut): retries while the node answers 404.
async fn first_count_on(addr: SocketAddr, d: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = Client::new(addr)
            .post(d, "/count", "")
            .await
            .expect("request");
        if r.status != 404 {
            assert_eq!(r.status, 200, "{r:?}");
            return r.body.trim().parse().expect("a count");
        }
        assert!(
            Instant::now() < deadline,
            "the node never heard of the task: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The count the app answers to one POST on `node`, which must serve it.
async fn count_on(addr: SocketAddr, d: &str) -> u64 {
    let r = Client::new(addr)
        .post(d, "/count", "")
        .await
        .expect("request");
    assert_eq!(r.status, 200, "{r:?}");
    r.body.trim().parse().expect("a count")
}

/// Checks Docker's record: one container at a time, and `old`'s last one died before `new`
/// was granted the lease at `granted_ms`.
fn assert_handover(spans: &[Span], old: &str, new: &str, granted_ms: u64) -> Duration {
    docker_events::assert_one_at_a_time(spans);
    let last_old = spans
        .iter()
        .rev()
        .find(|s| s.node == old)
        .expect("the old node ran the app");
    let died = last_old.died.expect("the old node's container died");
    let granted_ns = u128::from(granted_ms) * 1_000_000;
    assert!(
        died < granted_ns,
        "the old node's container died {} ms after the new node's lease was granted",
        (died - granted_ns) / 1_000_000
    );
    assert!(
        spans
            .iter()
            .any(|s| s.node == new && s.started > granted_ns),
        "the new node ran the app after its grant: {spans:#?}"
    );
    Duration::from_nanos((granted_ns - died) as u64)
}

/// A node with `s3` volumes whose link to the master goes through `relay`.
async fn node_behind(
    m: &MasterHandle,
    relay: &Relay,
    s3: &S3Server,
    checkpoint_s: u64,
) -> NodeHandle {
    let url = relay.url();
    node::spawn(m, |c| {
        s3.configure(c);
        c.master = url;
        c.checkpoint_interval_s = checkpoint_s;
    })
    .await
}

struct PartitionCluster {
    _s3: S3Server,
    m: MasterHandle,
    relay: Relay,
    a: NodeHandle,
    b: NodeHandle,
    edge: EdgeHandle,
}

async fn partition_cluster() -> PartitionCluster {
    counter_image().await.expect("image");
    let s3 = s3::spawn_with_bucket().await.0;
    let m = master::spawn(fast_master()).await;
    let relay = Relay::start(m.addr()).await;
    // Periodic checkpoints off: the only snapshot is the one committed at a clean stop, so what
    // the new node must restore is known exactly.
    let a = node_behind(&m, &relay, &s3, 0).await;
    let b = node::spawn(&m, |c| {
        s3.configure(c);
        c.checkpoint_interval_s = 0;
    })
    .await;
    let edge = edge::spawn(&m, |_| {}).await;
    PartitionCluster {
        _s3: s3,
        m,
        relay,
        a,
        b,
        edge,
    }
}

/// Cuts node A's link to the master `offset` after one of its renewals passed, while steady
/// traffic reaches the app on A through the edge, and checks the handover to B.
async fn partition_case(cl: &PartitionCluster, mode: Mode, offset: Duration) {
    let PartitionCluster { m, relay, a, b, .. } = cl;
    let d = domain("cut");
    let mut passed = relay.requests();
    let counting = Instant::now();
    let t: Task = counter_task(m, &d, "s3", |s| s["idle_timeout_s"] = json!(1)).await;
    // A commits a snapshot holding 2 at a clean stop, then runs on from it, uncommitted.
    assert_eq!(first_count_on(a.addr, &d).await, 1);
    assert_eq!(count_on(a.addr, &d).await, 2);
    until_released(m, &t.id).await;
    // From now on only the cut may stop it: the edge stops sending to A once the master calls
    // A unhealthy, and an idle reap would stop the app before its lease runs out.
    set_idle(m, &t, 600).await;
    let since = docker_events::now_ns();
    assert_eq!(count_on(a.addr, &d).await, 3);
    assert_eq!(lease_of(m, &t.id).await.node, a.id);
    let mut traffic = Traffic::start(cl.edge.addr, &d, Duration::from_millis(50));
    traffic.more_successes(3, Duration::from_secs(20)).await;

    let renewal = relay.next_request("/renew", PERIOD * 3).await;
    tokio::time::sleep_until(renewal + offset).await;
    relay.set(mode);
    let cut = Instant::now();
    let cut_ns = docker_events::now_ns();
    let mut renewals = 0u32;
    while let Ok((at, line)) = passed.try_recv() {
        renewals += u32::from(line.contains("/renew") && at < cut);
    }
    let renewals_per_s = f64::from(renewals) / (cut - counting).as_secs_f64();

    let b_id = b.id.clone();
    until(m, "B holds the lease", Duration::from_secs(30), |s| {
        s.lease(&t.id).is_some_and(|l| l.node == b_id)
    })
    .await;
    let granted = lease_of(m, &t.id).await;
    let handover = cut.elapsed();
    traffic.more_successes(1, Duration::from_secs(30)).await;

    relay.set(Mode::Pass);
    let a_id = a.id.clone();
    until(m, "A is healthy again", Duration::from_secs(20), |s| {
        s.node(&a_id).is_some_and(|n| n.healthy)
    })
    .await;
    let outcomes = traffic.finish().await;
    // A changed task is stopped at once: B writes its count back and lets the lease go.
    set_idle(m, &t, 1).await;
    until_released(m, &t.id).await;

    let spans = docker_events::spans(&t.id, since);
    let gap = assert_handover(&spans, &a.id, &b.id, granted.granted_at);
    let a_died = spans
        .iter()
        .rev()
        .find(|s| s.node == a.id)
        .and_then(|s| s.died)
        .expect("A's container died");
    // B restored the snapshot committed at the clean stop (2), not what A wrote after it.
    let granted_ns = u128::from(granted.granted_at) * 1_000_000;
    let mut on_b: Vec<u64> = outcomes
        .iter()
        .filter(|o| o.status == Some(200) && o.done_ns > granted_ns)
        .map(|o| o.body.parse().expect("a count"))
        .collect();
    on_b.sort_unstable();
    let want: Vec<u64> = (3..3 + on_b.len() as u64).collect();
    assert_eq!(
        on_b, want,
        "B's answers continue from the committed snapshot"
    );
    // B's stop committed its count, and nothing of A's overwrote it.
    assert_eq!(count_on(cl.edge.addr, &d).await, 3 + on_b.len() as u64);
    let failed = outcomes.iter().filter(|o| o.status != Some(200)).count();
    println!(
        "FIGURE partition mode={mode:?} offset_ms={} a_killed_after_cut_ms={} b_granted_after_cut_ms={} a_dead_before_grant_ms={} requests={} failed={failed} renewal_calls_per_s={renewals_per_s:.2}",
        offset.as_millis(),
        (a_died - cut_ns) / 1_000_000,
        handover.as_millis(),
        gap.as_millis(),
        outcomes.len(),
    );
    // The kill came within the arithmetic: no earlier than the last renewal could carry the
    // app (T - margin - period after the cut), no later than T - margin plus a kill.
    let killed_after = Duration::from_nanos((a_died - cut_ns) as u64);
    assert!(
        killed_after + Duration::from_millis(100) >= TTL - MARGIN - PERIOD,
        "A's app was killed {killed_after:?} after the cut, before its lease could have run out"
    );
    assert!(
        killed_after <= TTL - MARGIN + Duration::from_millis(500),
        "A's app was killed {killed_after:?} after the cut: after its deadline less the margin"
    );
}

#[tokio::test]
async fn a_blackholed_node_kills_its_app_before_another_node_may_take_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cl = partition_cluster().await;
    for offset in [Duration::ZERO, PERIOD / 3, PERIOD * 2 / 3] {
        partition_case(&cl, Mode::Blackhole, offset).await;
    }
}

#[tokio::test]
async fn a_refused_node_kills_its_app_before_another_node_may_take_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cl = partition_cluster().await;
    for offset in [Duration::ZERO, PERIOD / 3, PERIOD * 2 / 3] {
        partition_case(&cl, Mode::Refuse, offset).await;
    }
}

/// What `ExecStopPost=shadow-nodeproxy cleanup` does after the process died.
async fn cleanup_like_systemd(node_id: &str) {
    let status = tokio::process::Command::new(procs::binaries().await.join("shadow-nodeproxy"))
        .arg("cleanup")
        .env("SHADOW_NODE_ID", node_id)
        .env("SHADOW_LOG", "warn")
        .status()
        .await
        .expect("shadow-nodeproxy cleanup runs");
    assert!(status.success(), "cleanup failed: {status}");
}

#[tokio::test]
async fn a_killed_node_s_app_answers_from_another_node_and_no_waiting_request_fails() {
    let _one = ONE_AT_A_TIME.lock().await;
    counter_image().await.expect("image");
    let (s3, probe) = s3::spawn_with_bucket().await;
    let m = master::spawn(fast_master()).await;
    let b = node::spawn(&m, |c| s3.configure(c)).await;
    let edge = edge::spawn(&m, |_| {}).await;
    let dir = tempfile::tempdir().expect("tmp");
    let mut env: Vec<(&str, String)> = s3.env();
    env.push(("SHADOW_CHECKPOINT_INTERVAL_S", "1".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut failovers = vec![];
    for run in 0..3 {
        let a_id = unique_id("victim");
        let mut a = procs::spawn_node(&m.url, &a_id, &dir.path().join(&a_id), &env).await;
        let d = domain("kill");
        let t = counter_task(&m, &d, "s3", |_| {}).await;
        let since = docker_events::now_ns();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // The process may still be registering.
            match Client::new(a.addr).post(&d, "/count", "").await {
                Ok(r) if r.status == 200 => break,
                other => assert!(Instant::now() < deadline, "A never served: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let a_id2 = a_id.clone();
        until(&m, "the edge can see A", Duration::from_secs(10), |s| {
            s.node(&a_id2).is_some_and(|n| n.healthy)
        })
        .await;
        s3::two_checkpoints_after(&probe, &t.id, s3::now_ms()).await;
        let mut traffic = Traffic::start(edge.addr, &d, Duration::from_millis(50));
        traffic.more_successes(5, Duration::from_secs(20)).await;

        a.kill9();
        let killed = Instant::now();
        let killed_ns = docker_events::now_ns();
        cleanup_like_systemd(&a_id).await;
        let b_id = b.id.clone();
        until(&m, "B holds the lease", Duration::from_secs(30), |s| {
            s.lease(&t.id).is_some_and(|l| l.node == b_id)
        })
        .await;
        let granted = lease_of(&m, &t.id).await;
        traffic.more_successes(5, Duration::from_secs(30)).await;
        let outcomes = traffic.finish().await;

        let spans = docker_events::spans(&t.id, since);
        assert_handover(&spans, &a_id, &b.id, granted.granted_at);
        let late: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.status != Some(200) && o.sent >= killed)
            .collect();
        assert!(
            late.is_empty(),
            "requests sent after the kill failed: {late:#?}"
        );
        let first_after = outcomes
            .iter()
            .filter(|o| o.status == Some(200) && o.sent >= killed)
            .map(|o| o.done_ns)
            .min()
            .expect("a request sent after the kill succeeded");
        let failover = Duration::from_nanos((first_after.saturating_sub(killed_ns)) as u64);
        let failed = outcomes.iter().filter(|o| o.status != Some(200)).count();
        println!(
            "FIGURE kill run={run} failover_ms={} requests={} failed={failed} (all sent before the kill)",
            failover.as_millis(),
            outcomes.len()
        );
        failovers.push(failover);
        m.client.delete_task(&t.id).await.expect("delete");
        until_released(&m, &t.id).await;
        docker_rm_node(&a_id);
    }
    failovers.sort();
    println!(
        "FIGURE kill median_failover_ms={}",
        failovers[1].as_millis()
    );
    assert!(
        failovers[1] < Duration::from_secs(6),
        "a dead node's app answered again only after {:?} (median); the goal is 6 s",
        failovers[1]
    );
    b.stop().await;
}

#[tokio::test]
async fn a_stopped_master_stops_stateful_apps_at_their_deadline_and_cold_starts_wait_for_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    counter_image().await.expect("image");
    let (s3, probe) = s3::spawn_with_bucket().await;
    let m = master::spawn(fast_master()).await;
    let relay = Relay::start(m.addr()).await;
    let a = node_behind(&m, &relay, &s3, 1).await;
    let d1 = domain("outage");
    let t1 = counter_task(&m, &d1, "s3", |_| {}).await;
    let d2 = domain("coldwait");
    counter_task(&m, &d2, "s3", |_| {}).await;
    let since = docker_events::now_ns();
    assert_eq!(count_on(a.addr, &d1).await, 1);
    assert_eq!(count_on(a.addr, &d1).await, 2);
    s3::two_checkpoints_after(&probe, &t1.id, s3::now_ms()).await;

    // The master goes away at once (its address refuses), then stops for good.
    relay.set(Mode::Refuse);
    let stopped = Instant::now();
    let stopped_ns = docker_events::now_ns();
    let dir = m.stop().await;
    // A cold start while the master is away waits for it instead of failing.
    let a_addr = a.addr;
    let d2c = d2.clone();
    let cold = tokio::spawn(async move { Client::new(a_addr).post(&d2c, "/count", "").await });
    // The running app is killed at its lease's deadline.
    let deadline = Instant::now() + TTL + Duration::from_secs(2);
    while a
        .runtime
        .list_labelled(LABEL_TASK, &t1.id)
        .await
        .expect("list")
        .iter()
        .any(|c| c.running)
    {
        assert!(Instant::now() < deadline, "the app outlived its lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let spans = docker_events::spans(&t1.id, since);
    let died = spans
        .last()
        .and_then(|s| s.died)
        .expect("the app's container died");
    let after = Duration::from_nanos((died - stopped_ns) as u64);
    println!(
        "FIGURE master_down app_killed_after_ms={}",
        after.as_millis()
    );
    assert!(
        after + Duration::from_millis(100) >= TTL - MARGIN - PERIOD,
        "killed {after:?} into the outage: an outage shorter than TTL - margin - period must be harmless"
    );
    assert!(
        after <= TTL - MARGIN + Duration::from_millis(500),
        "killed {after:?} into the outage: later than its deadline less the margin"
    );
    // Down for longer than a TTL (the outage is this test's input), then back on another port
    // behind the same address.
    tokio::time::sleep_until(stopped + TTL + Duration::from_millis(500)).await;
    assert!(
        !cold.is_finished(),
        "the cold start did not wait for the master"
    );
    let m = master::spawn_in(dir, fast_master()).await;
    relay.retarget(m.addr());
    relay.set(Mode::Pass);
    let r = cold.await.expect("task").expect("the cold start answered");
    assert_eq!((r.status, r.body.trim()), (200, "1"), "{r:?}");
    // The app starts again from its last checkpoint (2).
    assert_eq!(count_on(a.addr, &d1).await, 3);
    docker_events::assert_one_at_a_time(&docker_events::spans(&t1.id, since));
    a.stop().await;
}
