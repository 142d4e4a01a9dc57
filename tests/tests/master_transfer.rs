//! `shadow-master export` and `import`: the whole state out as JSON and into an empty data dir,
//! exactly (an export of the imported state is the same file), secrets included but the file
//! private; an import into a data dir that holds state is refused and changes nothing.

use std::{path::Path, process::Output};

use serde_json::json;
use shadow_tests::{
    master::{self, MasterOptions},
    procs,
};

/// The database a data dir stands for when the masters run on PostgreSQL (as
/// `shadow_tests::master` keeps it), made on first use.
async fn database_of(data_dir: &Path) -> Option<String> {
    if !shadow_tests::postgres::wanted() {
        return None;
    }
    let file = data_dir.join("test-database-url");
    if let Ok(url) = std::fs::read_to_string(&file) {
        return Some(url);
    }
    let url = shadow_tests::postgres::database().await;
    std::fs::write(&file, &url).expect("remember the database");
    Some(url)
}

async fn master_cmd(args: &[&str], data_dir: &Path) -> Output {
    let mut cmd = tokio::process::Command::new(procs::binaries().await.join("shadow-master"));
    cmd.args(args).env_clear().env("SHADOW_DATA_DIR", data_dir);
    if let Some(url) = database_of(data_dir).await {
        cmd.env("SHADOW_DATABASE_URL", url);
    }
    cmd.output().await.expect("shadow-master runs")
}

fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[tokio::test]
async fn the_state_round_trips_exactly_and_an_import_never_overwrites() {
    let m = master::spawn(MasterOptions::default()).await;
    let raw = m.raw();
    let spec = json!({
        "name": "kept", "domains": ["kept.test"], "image": "shadow-test/counter:latest",
        "volume": {"kind": "local"}, "secret_env": {"DB_PASSWORD": "s3cret"}
    });
    let (st, task) = raw.send("POST", "/tasks/", Some(&spec.to_string())).await;
    assert_eq!(st, 201, "{task}");
    let id = task["id"].as_str().expect("id").to_owned();
    let node = r#"{"id": "node-a", "address": "127.0.0.1:9", "capacity": 7}"#;
    assert_eq!(raw.send("POST", "/nodes/", Some(node)).await.0, 200);
    let (st, grant) = raw
        .send(
            "POST",
            &format!("/leases/{id}"),
            Some(r#"{"node": "node-a", "ttl_ms": 60000}"#),
        )
        .await;
    assert_eq!(st, 200, "{grant}");
    let report = json!({"node": "node-a", "boot": "b", "seq": 4, "deltas": [
        {"task_id": id, "hour": 7200, "requests": 9, "running_ms": 1200, "peak_memory_bytes": 5}]});
    assert_eq!(
        raw.send("POST", "/usage", Some(&report.to_string()))
            .await
            .0,
        200
    );
    let (_, tasks_before) = raw.send("GET", "/tasks/", None).await;
    let dir = m.stop().await;

    let files = tempfile::tempdir().expect("files");
    let first = files.path().join("first.json");
    ok(
        &master_cmd(
            &["export", "--out", first.to_str().expect("path")],
            dir.path(),
        )
        .await,
        "export",
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&first).expect("file").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the export holds secrets");
    let text = std::fs::read_to_string(&first).expect("export");
    assert!(text.contains("s3cret"), "a backup keeps the secrets");

    let fresh = tempfile::tempdir().expect("fresh");
    ok(
        &master_cmd(&["import", first.to_str().expect("path")], fresh.path()).await,
        "import",
    );
    let second = files.path().join("second.json");
    ok(
        &master_cmd(
            &["export", "--out", second.to_str().expect("path")],
            fresh.path(),
        )
        .await,
        "export again",
    );
    assert_eq!(
        std::fs::read_to_string(&second).expect("second"),
        text,
        "export → import → export is the same file"
    );

    // The imported master serves the same state, its tokens go on growing, and a resent usage
    // report still counts once.
    let m2 = master::spawn_in(fresh, MasterOptions::default()).await;
    let raw = m2.raw();
    assert_eq!(raw.send("GET", "/tasks/", None).await.1, tasks_before);
    let (_, lease) = raw.send("GET", &format!("/leases/{id}"), None).await;
    assert_eq!(lease["token"], grant["token"], "{lease}");
    let (st, regrant) = raw
        .send(
            "POST",
            &format!("/leases/{id}"),
            Some(r#"{"node": "node-a", "ttl_ms": 60000}"#),
        )
        .await;
    assert_eq!(st, 200, "{regrant}");
    assert!(
        regrant["token"].as_u64() > grant["token"].as_u64(),
        "tokens only grow: {grant} then {regrant}"
    );
    let (_, again) = raw.send("POST", "/usage", Some(&report.to_string())).await;
    assert_eq!(again["added"], false, "{again}");
    let (_, rows) = raw.send("GET", "/usage", None).await;
    assert_eq!(rows[0]["requests"], 9, "{rows}");

    // Into a data dir that holds state: refused, nothing changed.
    let dir2 = m2.stop().await;
    let refused = master_cmd(&["import", first.to_str().expect("path")], dir2.path()).await;
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("import into an empty data dir"), "{said}");
    let not_export = files.path().join("other.json");
    std::fs::write(&not_export, "{\"tasks\": []}").expect("write");
    let wrong = master_cmd(
        &["import", not_export.to_str().expect("path")],
        tempfile::tempdir().expect("d").path(),
    )
    .await;
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("not a shadow-master export"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
}

#[tokio::test]
async fn sqlite_state_moves_to_postgresql_and_back_unchanged() {
    let m = master::spawn(MasterOptions {
        sqlite: true,
        ..Default::default()
    })
    .await;
    let raw = m.raw();
    let spec = json!({"name": "moving", "domains": ["moving.test"], "image": "x", "volume": {"kind": "local"}});
    let (_, task) = raw.send("POST", "/tasks/", Some(&spec.to_string())).await;
    let node = r#"{"id": "node-m", "address": "127.0.0.1:9"}"#;
    raw.send("POST", "/nodes/", Some(node)).await;
    let id = task["id"].as_str().expect("id");
    raw.send(
        "POST",
        &format!("/leases/{id}"),
        Some(r#"{"node": "node-m", "ttl_ms": 60000}"#),
    )
    .await;
    let dir = m.stop().await;

    let bin = procs::binaries().await.join("shadow-master");
    let run = |args: Vec<String>, env: Vec<(&'static str, String)>| {
        let bin = bin.clone();
        async move {
            let o = tokio::process::Command::new(bin)
                .args(args)
                .env_clear()
                .envs(env)
                .output()
                .await
                .expect("shadow-master runs");
            ok(&o, "shadow-master");
        }
    };
    let files = tempfile::tempdir().expect("files");
    let from_sqlite = files.path().join("sqlite.json");
    let sqlite = vec![("SHADOW_DATA_DIR", dir.path().display().to_string())];
    run(
        vec![
            "export".into(),
            "--out".into(),
            from_sqlite.display().to_string(),
        ],
        sqlite,
    )
    .await;
    let url = shadow_tests::postgres::database().await;
    let pg = vec![("SHADOW_DATABASE_URL", url.clone())];
    run(
        vec!["import".into(), from_sqlite.display().to_string()],
        pg.clone(),
    )
    .await;
    let from_pg = files.path().join("pg.json");
    run(
        vec![
            "export".into(),
            "--out".into(),
            from_pg.display().to_string(),
        ],
        pg,
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(&from_pg).expect("pg"),
        std::fs::read_to_string(&from_sqlite).expect("sqlite"),
        "SQLite → PostgreSQL → export is the same file"
    );
    // And a master on that database serves it.
    let m = master::spawn(MasterOptions {
        database_url: Some(url),
        ..Default::default()
    })
    .await;
    let tasks = m.client.list_tasks().await.expect("tasks");
    assert_eq!(tasks[0].spec.name, "moving");
    assert_eq!(
        m.client.list_leases().await.expect("leases")[0].node,
        "node-m"
    );
}
