//! What the proxies keep per task (request series on `/metrics`, sticky choices, the node's
//! slots and meters) goes when the task is deleted, so it does not grow with every task ever
//! served; the usage already counted is still reported.

use std::time::Duration;

use shadow_tests::{
    edge,
    fixtures::{counter_task, domain},
    http::Client,
    image::counter_image,
    master::{self, MasterOptions},
    node,
};

async fn metrics(c: &Client) -> String {
    c.get("metrics.invalid", "/metrics")
        .await
        .expect("metrics")
        .body
}

#[tokio::test]
async fn a_deleted_tasks_series_leave_the_node_and_the_edge() {
    counter_image().await.expect("image");
    let m = master::spawn(MasterOptions::default()).await;
    let n = node::spawn(&m, |c| c.usage_report_s = 1).await;
    let e = edge::spawn(&m, |_| {}).await;
    let host = domain("forgotten");
    let kept = domain("kept");
    let gone = counter_task(&m, &host, "none", |s| s["idle_timeout_s"] = 1.into()).await;
    let stays = counter_task(&m, &kept, "none", |s| s["name"] = "stays".into()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !e
        .client()
        .get(&host, "/")
        .await
        .is_ok_and(|r| r.status == 200)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answer through the edge"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(e.client().get(&kept, "/").await.expect("kept").status, 200);
    let node_metrics = Client::new(n.addr);
    assert!(metrics(&node_metrics).await.contains(&gone.id));
    assert!(metrics(&e.admin()).await.contains(&gone.id));

    m.client.delete_task(&gone.id).await.expect("delete");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (nm, em) = (metrics(&node_metrics).await, metrics(&e.admin()).await);
        if !nm.contains(&gone.id) && !em.contains(&gone.id) {
            assert!(
                nm.contains(&stays.id) && em.contains(&stays.id),
                "the other task's series stay"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deleted task's series are still there after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its usage was reported before its meter went.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows = m
            .client
            .usage(Some(&gone.id), None, None)
            .await
            .expect("usage");
        if rows.iter().map(|r| r.requests).sum::<u64>() >= 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no usage for the deleted task"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
