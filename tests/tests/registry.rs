//! Private images end to end: a real registry (Debian's `docker-registry`, htpasswd auth, on
//! loopback), real Docker pulls by the node with the credentials of `SHADOW_REGISTRY_AUTH_FILE`,
//! a clear refusal without them, and `pull: always` picking up a re-pushed tag.

use shadow_common::status::AppState;
use shadow_tests::{
    fixtures::{counter_task, domain, status_until},
    http::Client,
    image::{counter_image, COUNTER_IMAGE},
    master::{self, MasterOptions},
    node, registry,
};

fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The status of `GET /` on `host` once the node has heard of the task (a task just created
/// reaches the node through its watch a moment later; until then it answers 404).
async fn status_once_known(node: std::net::SocketAddr, host: &str) -> u16 {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = Client::new(node)
            .get(host, "/")
            .await
            .expect("answer")
            .status;
        if status != 404 || tokio::time::Instant::now() >= deadline {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn private_images_pull_with_credentials_and_always_follows_a_moved_tag() {
    counter_image().await.expect("image");
    let reg = registry::spawn().await;
    let m = master::spawn(MasterOptions::default()).await;
    let with = node::spawn(&m, |c| c.registry_auth_file = Some(reg.auth_file())).await;
    let without = node::spawn(&m, |_| {}).await;

    // With the credentials: pulled and running.
    let image = reg.push(COUNTER_IMAGE, "shadow/counter:v1");
    let d = domain("private");
    counter_task(&m, &d, "none", |s| s["image"] = serde_json::json!(image)).await;
    assert_eq!(status_once_known(with.addr, &d).await, 200);

    // Without: refused, and the status says it was the credentials, naming the registry.
    let other = reg.push(COUNTER_IMAGE, "shadow/counter:v2");
    let e = domain("private-denied");
    let t = counter_task(&m, &e, "none", |s| s["image"] = serde_json::json!(other)).await;
    assert_eq!(status_once_known(without.addr, &e).await, 503);
    let s = status_until(&m, &t.id, "the pull failure reported", |s| {
        s.nodes.iter().any(|a| a.last_error.is_some())
    })
    .await;
    let message = &s.nodes[0].last_error.as_ref().expect("error").message;
    assert!(message.contains("credentials"), "{message}");
    assert!(message.contains(&reg.host), "{message}");

    // `pull: always`: a tag re-pushed with another image is picked up at the next cold start,
    // although the node still has the old one under that tag.
    let moving = reg.push(COUNTER_IMAGE, "shadow/counter:moving");
    let f = domain("always");
    let t = counter_task(&m, &f, "none", |s| {
        s["image"] = serde_json::json!(moving);
        s["pull"] = serde_json::json!("always");
        s["idle_timeout_s"] = serde_json::json!(1);
    })
    .await;
    let c = Client::new(with.addr);
    // A task just created reaches the node through its watch a moment later.
    assert_eq!(status_once_known(with.addr, &f).await, 200);
    let first = status_until(&m, &t.id, "the expected status", |s| {
        s.state == AppState::Running
    })
    .await;
    let old = first.nodes[0].image_digest.clone().expect("digest");

    let build = tempfile::tempdir().expect("dir");
    std::fs::write(
        build.path().join("Dockerfile"),
        format!("FROM {COUNTER_IMAGE}\nLABEL shadow.test.revision=\"2\"\n"),
    )
    .expect("Dockerfile");
    let rev2 = format!("{}-rev2", COUNTER_IMAGE.replace(":latest", ""));
    docker(&["build", "-q", "-t", &rev2, &build.path().to_string_lossy()]);
    reg.push(&rev2, "shadow/counter:moving");
    // The node's copy of the tag is still the old image.
    docker(&["tag", &old, &moving]);

    status_until(&m, &t.id, "the expected status", |s| {
        s.state == AppState::Idle
    })
    .await;
    assert_eq!(c.get(&f, "/").await.expect("answer").status, 200);
    let second = status_until(&m, &t.id, "the second start running", |s| {
        s.state == AppState::Running && s.nodes[0].cold_starts == 2
    })
    .await;
    let new = second.nodes[0].image_digest.clone().expect("digest");
    assert_ne!(new, old, "the re-pushed image runs");
    assert_eq!(new, docker(&["image", "inspect", "-f", "{{.Id}}", &rev2]));
    // The pulled tags name this run's registry port: remove them (the images stay cached).
    for tag in [&image, &moving, &rev2] {
        let _ = std::process::Command::new("docker")
            .args(["rmi", tag])
            .output();
    }
}
