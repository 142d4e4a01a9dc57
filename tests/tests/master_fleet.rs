//! Several masters serving one fleet from one PostgreSQL database (Debian's server, a throwaway
//! cluster): what one master writes, every other master reads and watches, with the same
//! revisions; a lease is granted once however the requests are spread over masters; renewals
//! and heartbeats taken by one master count on every other; and clients given several masters
//! move to the next when one dies (see also `master_fleet_kill.rs`).

use std::time::Duration;

use serde_json::json;
use shadow_common::{
    client::{ClientError, MasterClient},
    follower::Follower,
    node::{Heartbeat, NodeRegistration},
    task::{Task, TaskSpec},
    watch::WatchEvent,
};
use shadow_tests::{
    master::{self, MasterHandle, MasterOptions, TOKEN},
    postgres,
};
use tokio::time::Instant;

/// Two masters on one new database.
async fn two_masters(heartbeat: Duration) -> (MasterHandle, MasterHandle) {
    let url = postgres::database().await;
    let opts = MasterOptions {
        database_url: Some(url),
        heartbeat_interval: heartbeat,
        ..Default::default()
    };
    let a = master::spawn(opts.clone()).await;
    let b = master::spawn(opts).await;
    (a, b)
}

fn spec(name: &str, domain: &str) -> TaskSpec {
    serde_json::from_value(json!({
        "name": name, "domains": [domain], "image": "shadow-test/counter:latest"
    }))
    .expect("spec")
}

async fn register(m: &MasterClient, id: &str) {
    m.register_node(&NodeRegistration {
        id: id.into(),
        address: "127.0.0.1:9".into(),
        capacity: 10,
        volume_kinds: None,
    })
    .await
    .expect("register");
}

/// Waits (on `m`'s watch) until master `m` has the task: a master may lease only a task it has.
async fn until_known(m: &MasterClient, task: &str) {
    let f = Follower::spawn(m.clone(), std::future::pending());
    tokio::time::timeout(
        Duration::from_secs(10),
        f.wait_until(|s| s.task(task).is_some()),
    )
    .await
    .expect("the master has the task");
}

/// Long-polls `m` from `since` until an event satisfies `pred`; answers the revision it came
/// at. Fails after 10 s.
async fn watch_until(
    m: &MasterClient,
    epoch: &str,
    mut since: u64,
    mut pred: impl FnMut(&WatchEvent) -> bool,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the event did not come within 10 s");
        let r = m
            .watch(Some(epoch), since, left.min(Duration::from_secs(5)))
            .await
            .expect("watch");
        assert!(!r.reset, "a watch from a known revision starts over: {r:?}");
        if r.events.iter().any(&mut pred) {
            return r.revision;
        }
        since = r.revision;
    }
}

#[tokio::test]
async fn what_one_master_writes_another_reads_and_watches_with_the_same_revisions() {
    let (a, b) = two_masters(Duration::from_secs(1)).await;
    let start = b
        .client
        .watch(None, 0, Duration::ZERO)
        .await
        .expect("watch");
    assert!(start.reset);
    let a_start = a
        .client
        .watch(None, 0, Duration::ZERO)
        .await
        .expect("watch");
    assert_eq!(a_start.epoch, start.epoch, "one fleet, one epoch");

    let mut latencies = vec![];
    let mut since = start.revision;
    for i in 0..20 {
        let sent = Instant::now();
        let t = a
            .client
            .create_task(&spec(&format!("app{i}"), &format!("app{i}.fleet.test")))
            .await
            .expect("create through A");
        since = watch_until(
            &b.client,
            &start.epoch,
            since,
            |e| matches!(e, WatchEvent::TaskPut { task } if task.id == t.id),
        )
        .await;
        latencies.push(sent.elapsed());
        assert_eq!(b.client.get_task(&t.id).await.expect("read through B"), t);
    }
    latencies.sort();
    println!(
        "FIGURE fleet watch_latency_ms median={:.1} max={:.1} (create through A, seen on B's watch)",
        latencies[10].as_secs_f64() * 1e3,
        latencies[19].as_secs_f64() * 1e3
    );

    // Changed through B, read through A; a domain taken through one master is refused by the
    // other however fresh the change.
    let tasks = b.client.list_tasks().await.expect("list");
    let first = tasks.iter().find(|t| t.spec.name == "app0").expect("app0");
    let mut s = first.spec.clone();
    s.domains.push("extra.fleet.test".into());
    b.client
        .update_task(&first.id, &s)
        .await
        .expect("update through B");
    let e = a
        .client
        .create_task(&spec("thief", "extra.fleet.test"))
        .await
        .expect_err("a domain another master just gave away");
    assert_eq!(e.status().map(|s| s.as_u16()), Some(409), "{e}");
    let seen: Task = a.client.get_task(&first.id).await.expect("read through A");
    assert!(seen.spec.domains.contains(&"extra.fleet.test".to_string()));

    // A watcher moves from A to B mid-stream and resumes from its revision: no start-over,
    // and the next change arrives.
    let r = a
        .client
        .watch(Some(&start.epoch), since, Duration::ZERO)
        .await
        .expect("watch A");
    assert!(!r.reset);
    let t = a
        .client
        .create_task(&spec("later", "later.fleet.test"))
        .await
        .expect("create");
    watch_until(
        &b.client,
        &start.epoch,
        r.revision,
        |e| matches!(e, WatchEvent::TaskPut { task } if task.id == t.id),
    )
    .await;
    // Deleted through B: gone on A's watch too.
    b.client.delete_task(&t.id).await.expect("delete through B");
    watch_until(
        &a.client,
        &start.epoch,
        r.revision,
        |e| matches!(e, WatchEvent::TaskDeleted { id } if *id == t.id),
    )
    .await;
    assert_eq!(
        a.client.get_task(&t.id).await.expect_err("gone").status(),
        Some(reqwest::StatusCode::NOT_FOUND)
    );
}

#[tokio::test]
async fn two_nodes_racing_for_one_lease_through_two_masters_get_one_grant() {
    let (a, b) = two_masters(Duration::from_secs(1)).await;
    register(&a.client, "n1").await;
    register(&b.client, "n2").await;
    let t = a
        .client
        .create_task(&spec("race", "race.fleet.test"))
        .await
        .expect("create");
    // The task must be on B before B may lease it.
    until_known(&b.client, &t.id).await;
    let mut last_token = 0;
    for round in 0..30 {
        let ttl = Duration::from_secs(30);
        let (r1, r2) = tokio::join!(
            a.client.acquire_lease(&t.id, "n1", ttl),
            b.client.acquire_lease(&t.id, "n2", ttl)
        );
        let (winner, grant, loser) = match (r1, r2) {
            (Ok(g), Err(e)) => ("n1", g, e),
            (Err(e), Ok(g)) => ("n2", g, e),
            other => panic!("round {round}: one grant expected, got {other:?}"),
        };
        assert!(
            matches!(loser, ClientError::LeaseConflict { .. }),
            "round {round}: the loser is told who holds it: {loser}"
        );
        assert!(
            grant.token > last_token,
            "tokens only grow: {} after {last_token}",
            grant.token
        );
        last_token = grant.token;
        // Both masters agree on the holder.
        for m in [&a, &b] {
            let leases = m.client.list_leases().await.expect("leases");
            let l = leases.iter().find(|l| l.task_id == t.id).expect("lease");
            assert_eq!((l.node.as_str(), l.token), (winner, grant.token));
        }
        // Released through the other master, so the next round starts free everywhere.
        let other = if winner == "n1" { &b } else { &a };
        other
            .client
            .release_lease(&t.id, grant.token)
            .await
            .expect("release");
    }
}

#[tokio::test]
async fn renewals_and_heartbeats_taken_by_one_master_count_on_the_other() {
    let hb = Duration::from_millis(200);
    let (a, b) = two_masters(hb).await;
    register(&a.client, "n1").await;
    register(&a.client, "n2").await;
    let t = a
        .client
        .create_task(&spec("renewed", "renewed.fleet.test"))
        .await
        .expect("create");
    until_known(&b.client, &t.id).await;
    let ttl = Duration::from_millis(1_000);
    let grant = a
        .client
        .acquire_lease(&t.id, "n1", ttl)
        .await
        .expect("grant through A");
    // For three TTLs n1 renews and heartbeats only through B; A must not hand the lease to n2
    // nor call n1 unhealthy, though A itself hears nothing from n1.
    let until = Instant::now() + ttl * 3;
    let mut tick = tokio::time::interval(Duration::from_millis(150));
    while Instant::now() < until {
        tick.tick().await;
        b.client
            .renew_lease(&t.id, grant.token, ttl)
            .await
            .expect("renew through B");
        b.client
            .heartbeat(
                "n1",
                &Heartbeat {
                    running: vec![],
                    load: 0.1,
                },
            )
            .await
            .expect("heartbeat through B");
        let e = a
            .client
            .acquire_lease(&t.id, "n2", ttl)
            .await
            .expect_err("A knows n1 renewed through B");
        assert!(matches!(e, ClientError::LeaseConflict { .. }), "{e}");
    }
    let nodes = a.client.list_nodes().await.expect("nodes");
    let n1 = nodes.iter().find(|n| n.id == "n1").expect("n1");
    assert!(n1.healthy, "A judges n1 by the heartbeats B took: {n1:?}");
    let n2 = nodes.iter().find(|n| n.id == "n2").expect("n2");
    assert!(!n2.healthy, "n2 sent nothing since it registered: {n2:?}");
    // n1 stops renewing: after its TTL and the grace, n2 gets it through A, with a larger token.
    let deadline = Instant::now() + Duration::from_secs(10);
    let next = loop {
        match a.client.acquire_lease(&t.id, "n2", ttl).await {
            Ok(g) => break g,
            Err(ClientError::LeaseConflict { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("n2 never got the lapsed lease: {e}"),
        }
    };
    assert!(next.token > grant.token);
    let e = b
        .client
        .renew_lease(&t.id, grant.token, ttl)
        .await
        .expect_err("the old token is dead on every master");
    assert!(matches!(e, ClientError::LeaseConflict { .. }), "{e}");
}

#[tokio::test]
async fn a_client_given_two_masters_moves_when_the_first_stops_and_loses_nothing() {
    let (a, b) = two_masters(Duration::from_secs(1)).await;
    let both = MasterClient::new(format!("{},{}", a.url, b.url), Some(TOKEN.into()));
    let f = Follower::spawn(both.clone(), std::future::pending());
    f.synced().await;
    let before = both
        .create_task(&spec("before", "before.fleet.test"))
        .await
        .expect("create");
    assert_eq!(both.base_url(), a.url, "the first master while it serves");
    a.stop().await;
    let moved = Instant::now();
    let after = both
        .create_task(&spec("after", "after.fleet.test"))
        .await
        .expect("the call moves to B");
    println!(
        "FIGURE fleet client_move_ms={:.1} (a stopped master, refused connection)",
        moved.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(both.base_url(), b.url);
    // The follower resumes on B from its revision and sees both tasks.
    tokio::time::timeout(
        Duration::from_secs(10),
        f.wait_until(|s| s.task(&before.id).is_some() && s.task(&after.id).is_some()),
    )
    .await
    .expect("the watch resumed on B");
}
