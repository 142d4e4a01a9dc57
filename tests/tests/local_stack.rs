//! The newcomer's one command, `contrib/local/up.sh`, started, curled through the edge, and
//! stopped with Ctrl-C (SIGINT), leaving no container behind.

use std::process::Stdio;

use shadow_tests::{http::Client, node::unique_id, procs::free_addr};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn the_local_stack_starts_serves_and_stops_clean() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root")
        .to_path_buf();
    let data = tempfile::tempdir().expect("tmp");
    let (master, node, edge, admin) = (free_addr(), free_addr(), free_addr(), free_addr());
    let node_id = unique_id("local");
    let mut child = tokio::process::Command::new("bash")
        .arg(root.join("contrib/local/up.sh"))
        .current_dir(&root)
        .env("PROFILE", "debug")
        .env("MASTER_ADDR", master.to_string())
        .env("NODE_ADDR", node.to_string())
        .env("EDGE_ADDR", edge.to_string())
        .env("EDGE_ADMIN_ADDR", admin.to_string())
        .env("NODE_ID", &node_id)
        .env("SHADOW_LOCAL_DATA", data.path())
        .env("SHADOW_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run contrib/local/up.sh");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut printed = String::new();
    while let Some(line) = lines.next_line().await.expect("read") {
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("Ctrl-C stops everything") {
            break;
        }
    }
    assert!(printed.contains("Shadow is running."), "{printed}");
    assert!(
        printed.contains(&format!("http://{edge}/count")),
        "it prints the URL to curl: {printed}"
    );

    let c = Client::new(edge);
    let r = c
        .post("counter.localhost", "/count", "")
        .await
        .expect("the edge answers");
    assert_eq!((r.status, r.body.trim()), (200, "1"), "{r:?}");
    let r = c
        .post("counter.localhost", "/count", "")
        .await
        .expect("the edge answers");
    assert_eq!(r.body.trim(), "2");

    let pid = child.id().expect("pid");
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = child.wait().await.expect("the script ends");
    while let Ok(Some(line)) = lines.next_line().await {
        printed.push_str(&line);
        printed.push('\n');
    }
    assert!(printed.contains("stopped."), "{printed}");
    let _ = exit;
    let left = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=shadow.node={node_id}"),
        ])
        .output()
        .expect("docker");
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "no container left behind"
    );
}
