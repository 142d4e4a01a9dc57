//! The life cycle's state machine on in-memory fakes, under a paused clock: every test runs in
//! virtual time, so a 10-minute frozen timeout takes microseconds and the same steps happen in
//! the same order on every run.

use std::{sync::atomic::Ordering, sync::Arc, time::Duration};

use shadow_common::status::AppState;
use tokio::time::sleep;

use super::{
    apps::Unavailable,
    fakes::{task, Call, Node, LEASE_TTL},
};

const IDLE: Duration = Duration::from_secs(60);
/// A little past a deadline: every timer due by then has fired and its work is done.
const PAST: Duration = Duration::from_millis(500);

fn state(node: &Node, id: &str) -> Option<AppState> {
    node.apps.status(id).map(|s| s.state)
}

fn is_create(c: &Call) -> bool {
    matches!(c, Call::Create(_))
}

#[tokio::test(start_paused = true)]
async fn a_herd_of_requests_shares_one_start() {
    let node = Node::new(1024, |_| {});
    let t = task("a", 128, true);
    node.publish(&t);
    let mut herd = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (apps, t) = (node.apps.clone(), t.clone());
        herd.spawn(async move { apps.route(&t, None).await.map(|r| r.addr) });
    }
    let addrs: Vec<_> = herd
        .join_all()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(addrs.iter().all(|a| *a == addrs[0]), "{addrs:?}");
    assert_eq!(node.journal.count(is_create), 1);
    assert_eq!(node.journal.count(|c| matches!(c, Call::Attach(_))), 1);
    assert_eq!(state(&node, "a"), Some(AppState::Running));
}

#[tokio::test(start_paused = true)]
async fn the_running_route_is_taken_only_to_a_running_app_and_holds_it_busy() {
    let node = Node::new(1024, |_| {});
    let t = task("a", 128, true);
    node.publish(&t);
    // Not running: no route, and nothing is started by asking.
    assert!(node.apps.running_route(&t).is_none());
    assert_eq!(node.journal.count(is_create), 0);
    assert_eq!(state(&node, "a"), None);

    let started = node.apps.route(&t, None).await.unwrap();
    let fast = node
        .apps
        .running_route(&t)
        .expect("a route to the running app");
    assert_eq!(fast.addr, started.addr);
    drop(started.token);
    // The fast route's token keeps the app from going idle, as a routed request's does.
    sleep(IDLE + PAST).await;
    assert_eq!(state(&node, "a"), Some(AppState::Running));
    drop(fast.token);
    sleep(IDLE + PAST).await;
    assert_eq!(state(&node, "a"), Some(AppState::Frozen));
    // Frozen is not running: the request takes the slow way, which thaws it.
    assert!(node.apps.running_route(&t).is_none());
}

#[tokio::test(start_paused = true)]
async fn an_idle_app_is_frozen_and_a_request_thaws_the_same_container() {
    let node = Node::new(1024, |_| {});
    let t = task("a", 128, true);
    node.publish(&t);
    let first = node.apps.route(&t, None).await.unwrap();
    let addr = first.addr;
    drop(first.token);
    sleep(IDLE + PAST).await;
    assert_eq!(state(&node, "a"), Some(AppState::Frozen));
    assert_eq!(node.runtime.containers(), vec![("c1".into(), true)]);
    // Frozen: paused, then the volume checkpointed (the copy is consistent), lease kept.
    let calls = node.journal.all();
    let pause = calls
        .iter()
        .position(|c| *c == Call::Pause("c1".into()))
        .unwrap();
    let checkpoint = calls
        .iter()
        .position(|c| *c == Call::Checkpoint("a".into()))
        .unwrap();
    assert!(pause < checkpoint, "{calls:?}");
    assert_eq!(node.journal.count(|c| matches!(c, Call::Release(_))), 0);
    assert_eq!(node.apps.running(), vec!["a".to_string()]);

    let again = node.apps.route(&t, None).await.unwrap();
    assert_eq!(again.addr, addr, "the same container answers");
    assert_eq!(node.runtime.containers(), vec![("c1".into(), false)]);
    assert_eq!(node.journal.count(is_create), 1, "no cold start");
    assert_eq!(state(&node, "a"), Some(AppState::Running));
    // The idle timer starts again from the thaw.
    drop(again.token);
    sleep(IDLE - Duration::from_secs(1)).await;
    assert_eq!(state(&node, "a"), Some(AppState::Running));
    sleep(Duration::from_secs(1) + PAST).await;
    assert_eq!(state(&node, "a"), Some(AppState::Frozen));
}

#[tokio::test(start_paused = true)]
async fn a_frozen_app_is_stopped_after_its_frozen_timeout() {
    let node = Node::new(1024, |c| c.frozen_timeout_s = 600);
    let t = task("a", 128, true);
    node.publish(&t);
    drop(node.apps.route(&t, None).await.unwrap());
    sleep(IDLE + PAST).await;
    assert_eq!(state(&node, "a"), Some(AppState::Frozen));
    sleep(Duration::from_secs(599)).await;
    assert_eq!(state(&node, "a"), Some(AppState::Frozen));
    sleep(Duration::from_secs(1) + PAST).await;
    assert_eq!(state(&node, "a"), Some(AppState::Idle));
    assert!(node.runtime.containers().is_empty());
    // Thawed before a graceful stop (a paused app cannot act on SIGTERM), then written back
    // and the lease let go, in that order.
    let tail: Vec<Call> = node.journal.all().into_iter().rev().take(4).rev().collect();
    assert_eq!(
        tail,
        vec![
            Call::Unpause("c1".into()),
            Call::Remove("c1".into(), true),
            Call::Detach("a".into()),
            Call::Release("a".into()),
        ]
    );
    assert_eq!(node.ctx.budget.used_mb(), 0, "the memory is given back");
}

#[tokio::test(start_paused = true)]
async fn a_task_may_opt_out_of_freezing() {
    let node = Node::new(1024, |_| {});
    let mut t = (*task("a", 128, false)).clone();
    t.spec.frozen_timeout_s = Some(0);
    let t = Arc::new(t);
    node.publish(&t);
    drop(node.apps.route(&t, None).await.unwrap());
    sleep(IDLE + PAST).await;
    assert_eq!(state(&node, "a"), Some(AppState::Idle));
    assert_eq!(node.journal.count(|c| matches!(c, Call::Pause(_))), 0);
    assert_eq!(
        node.journal.all().last(),
        Some(&Call::Remove("c1".into(), true))
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_exchange_keeps_the_app_from_freezing_and_a_request_during_a_stop_starts_afresh() {
    let node = Node::new(1024, |c| c.frozen_timeout_s = 0);
    *node.runtime.stop_delay.lock().unwrap() = Duration::from_secs(5);
    let t = task("a", 128, false);
    node.publish(&t);
    let held = node.apps.route(&t, None).await.unwrap();
    sleep(IDLE * 3).await;
    assert_eq!(
        state(&node, "a"),
        Some(AppState::Running),
        "an open exchange is activity"
    );
    drop(held.token);
    // Idle from here: the stop begins at 60 s and takes 5 s.
    sleep(IDLE + PAST).await;
    assert_eq!(state(&node, "a"), Some(AppState::Stopping));
    let during = node.apps.route(&t, None).await.unwrap();
    assert_ne!(
        during.addr, held.addr,
        "it waited for the stop and started a new container"
    );
    assert_eq!(node.journal.count(is_create), 2);
    let calls = node.journal.all();
    let removed = calls
        .iter()
        .position(|c| *c == Call::Remove("c1".into(), true))
        .unwrap();
    let created = calls
        .iter()
        .position(|c| *c == Call::Create("c2".into()))
        .unwrap();
    assert!(removed < created, "{calls:?}");
}

#[tokio::test(start_paused = true)]
async fn a_spec_change_during_a_start_restarts_the_app_with_the_new_spec() {
    let node = Node::new(1024, |_| {});
    let old = task("a", 128, false);
    node.publish(&old);
    node.runtime.hold_create.store(true, Ordering::SeqCst);
    let first = {
        let (apps, t) = (node.apps.clone(), old.clone());
        tokio::spawn(async move { apps.route(&t, None).await.map(|r| r.addr) })
    };
    sleep(Duration::from_millis(10)).await;
    let mut changed = (*old).clone();
    changed.spec.env.insert("COLOUR".into(), "blue".into());
    let changed = Arc::new(changed);
    node.publish(&changed);
    let second = {
        let (apps, t) = (node.apps.clone(), changed.clone());
        tokio::spawn(async move { apps.route(&t, None).await.map(|r| r.addr) })
    };
    sleep(Duration::from_millis(10)).await;
    node.runtime.hold_create.store(false, Ordering::SeqCst);
    node.runtime.create_gate.notify_one();
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert!(
        first.is_ok(),
        "the old request was served by the start it joined"
    );
    assert_ne!(
        second.unwrap(),
        first.unwrap(),
        "the new spec runs in a new container"
    );
    assert_eq!(node.journal.count(is_create), 2);
    assert!(node
        .journal
        .all()
        .contains(&Call::Remove("c1".into(), true)));
    assert_eq!(node.runtime.containers().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_kills_the_app_and_leaves_the_volume_unwritten() {
    for freeze_first in [false, true] {
        let node = Node::new(1024, |_| {});
        let t = task("a", 128, true);
        node.publish(&t);
        drop(node.apps.route(&t, None).await.unwrap());
        if freeze_first {
            sleep(IDLE + PAST).await;
            assert_eq!(state(&node, "a"), Some(AppState::Frozen));
        }
        node.leases.lose.store(true, Ordering::SeqCst);
        sleep(LEASE_TTL).await;
        assert_eq!(
            state(&node, "a"),
            Some(AppState::Idle),
            "frozen first: {freeze_first}"
        );
        let calls = node.journal.all();
        assert!(
            calls.contains(&Call::Remove("c1".into(), false)),
            "killed: {calls:?}"
        );
        assert!(calls.contains(&Call::Abandon("a".into())));
        assert!(
            !calls.contains(&Call::Detach("a".into())),
            "no write-back: {calls:?}"
        );
        assert!(!calls.contains(&Call::Release("a".into())));
        assert!(
            !calls.contains(&Call::Unpause("c1".into())),
            "no thaw before a kill"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_is_undone_and_backs_off() {
    let node = Node::new(1024, |_| {});
    let t = task("a", 128, true);
    node.publish(&t);
    *node.runtime.fail_create.lock().unwrap() = Some("no such image".into());
    let err = node.apps.route(&t, None).await.err().unwrap();
    assert!(matches!(err, Unavailable::StartFailed(_)), "{err}");
    // Whatever the create may have left is removed by name, then the volume attached before
    // it is let go of, and so is the lease.
    let calls = node.journal.all();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(matches!(&calls[1], Call::Remove(name, false) if name.starts_with("shadow-a-a-")));
    assert_eq!(
        [&calls[0], &calls[2], &calls[3]],
        [
            &Call::Attach("a".into()),
            &Call::Detach("a".into()),
            &Call::Release("a".into())
        ]
    );
    assert_eq!(state(&node, "a"), Some(AppState::Backoff));
    assert_eq!(node.ctx.budget.used_mb(), 0);
    let err = node.apps.route(&t, None).await.err().unwrap();
    assert!(matches!(err, Unavailable::BackingOff { .. }), "{err}");
    *node.runtime.fail_create.lock().unwrap() = None;
    sleep(Duration::from_secs(1) + PAST).await;
    assert!(
        node.apps.route(&t, None).await.is_ok(),
        "tried again after the back-off"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_running_and_frozen_apps_and_refuses_new_starts() {
    let node = Node::new(1024, |_| {});
    let (a, b) = (task("a", 128, true), task("b", 128, true));
    node.publish(&a);
    node.publish(&b);
    drop(node.apps.route(&a, None).await.unwrap());
    sleep(IDLE + PAST).await;
    let b_token = node.apps.route(&b, None).await.unwrap();
    assert_eq!(state(&node, "a"), Some(AppState::Frozen));
    node.apps.stop_all().await;
    drop(b_token);
    assert!(node.runtime.containers().is_empty());
    let calls = node.journal.all();
    for (c, t) in [("c1", "a"), ("c2", "b")] {
        assert!(
            calls.contains(&Call::Remove(c.into(), true)),
            "{c} stopped gracefully"
        );
        assert!(calls.contains(&Call::Detach(t.into())), "{t} written back");
        assert!(calls.contains(&Call::Release(t.into())));
    }
    assert!(
        calls.contains(&Call::Unpause("c1".into())),
        "the frozen one was thawed first"
    );
    let err = node.apps.route(&a, None).await.err().unwrap();
    assert!(matches!(err, Unavailable::ShuttingDown), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_start_short_of_memory_stops_the_least_recently_used_frozen_app() {
    let node = Node::new(300, |_| {});
    let (a, b, c) = (
        task("a", 128, false),
        task("b", 128, false),
        task("c", 128, false),
    );
    for t in [&a, &b, &c] {
        node.publish(t);
    }
    drop(node.apps.route(&a, None).await.unwrap());
    sleep(Duration::from_secs(10)).await;
    drop(node.apps.route(&b, None).await.unwrap());
    sleep(IDLE + PAST).await;
    assert_eq!(state(&node, "a"), Some(AppState::Frozen));
    assert_eq!(state(&node, "b"), Some(AppState::Frozen));
    // c needs 128 of the 44 MiB left: a, used longest ago, makes room; b stays frozen.
    assert!(node.apps.route(&c, None).await.is_ok());
    assert_eq!(state(&node, "a"), Some(AppState::Idle));
    assert_eq!(state(&node, "b"), Some(AppState::Frozen));
    assert_eq!(state(&node, "c"), Some(AppState::Running));
    assert_eq!(node.ctx.budget.used_mb(), 256);
    // Nothing frozen is left to make room for a fourth: refused, and b is kept.
    let d = task("d", 200, false);
    node.publish(&d);
    let err = node.apps.route(&d, None).await.err().unwrap();
    assert!(err.to_string().contains("memory budget"), "{err}");
    assert_eq!(state(&node, "b"), Some(AppState::Frozen));
}

#[tokio::test(start_paused = true)]
async fn a_busy_app_is_not_frozen() {
    let node = Node::new(1024, |c| {
        c.busy_cpu_percent = 10.0;
        c.busy_window_ms = 5_000;
    });
    // Half a CPU between two samples 5 s apart.
    node.runtime
        .cpu_per_stats_ns
        .store(2_500_000_000, Ordering::SeqCst);
    let t = task("a", 128, false);
    node.publish(&t);
    drop(node.apps.route(&t, None).await.unwrap());
    sleep(IDLE * 3).await;
    assert_eq!(state(&node, "a"), Some(AppState::Running));
    assert_eq!(node.journal.count(|c| matches!(c, Call::Pause(_))), 0);
    // Its work done, it is idle again and frozen an idle timeout later.
    node.runtime.cpu_per_stats_ns.store(0, Ordering::SeqCst);
    sleep(IDLE + Duration::from_secs(10)).await;
    assert_eq!(state(&node, "a"), Some(AppState::Frozen));
}

#[tokio::test(start_paused = true)]
async fn a_failed_checkpoint_at_freeze_stops_the_app_instead() {
    let node = Node::new(1024, |_| {});
    node.volume.fail_checkpoint.store(true, Ordering::SeqCst);
    let t = task("a", 128, true);
    node.publish(&t);
    drop(node.apps.route(&t, None).await.unwrap());
    sleep(IDLE + PAST).await;
    assert_eq!(state(&node, "a"), Some(AppState::Idle));
    let tail: Vec<Call> = node.journal.all().into_iter().rev().take(5).rev().collect();
    assert_eq!(
        tail,
        vec![
            Call::Pause("c1".into()),
            Call::Unpause("c1".into()),
            Call::Remove("c1".into(), true),
            Call::Detach("a".into()),
            Call::Release("a".into()),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn sleep_stops_a_frozen_app_and_a_deleted_task_is_forgotten() {
    let node = Node::new(1024, |_| {});
    let t = task("a", 128, false);
    node.publish(&t);
    drop(node.apps.route(&t, None).await.unwrap());
    sleep(IDLE + PAST).await;
    assert!(node.apps.sleep("a"));
    sleep(PAST).await;
    assert_eq!(state(&node, "a"), Some(AppState::Idle));
    assert!(node.runtime.containers().is_empty());
    node.feed
        .apply(&shadow_common::watch::WatchEvent::TaskDeleted { id: "a".into() });
    node.apps.reconcile(&node.ctx.follower.read());
    assert_eq!(state(&node, "a"), None, "what the node kept for it is gone");
}
