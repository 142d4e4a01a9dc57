//! The master on PostgreSQL (Debian's server, a throwaway cluster): migrations applied once
//! when masters start together, and a second master on one database refused (until masters
//! share a database as one fleet, two would each grant the same lease). The whole API suite
//! runs against PostgreSQL too: `SHADOW_TEST_STORE=postgres cargo test -p shadow-tests --test
//! master_api --test openapi --test master_transfer --test usage` (CI does).

use shadow_master::store::postgres::{PostgresStore, MIGRATIONS};
use shadow_tests::{
    master::{self, MasterOptions},
    postgres,
};

#[tokio::test]
async fn migrations_run_once_when_masters_start_together() {
    let url = postgres::database().await;
    let opened: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PostgresStore::open_shared(&url).map(drop))
        })
        .collect();
    for o in opened {
        o.join()
            .expect("thread")
            .expect("every master opens the database");
    }
    let c = postgres::cluster().await;
    let out = std::process::Command::new("psql")
        .args([
            "-qtA",
            "-h",
            "127.0.0.1",
            "-p",
            &c.port.to_string(),
            "-U",
            "shadow",
        ])
        .arg(url.rsplit('/').next().expect("name"))
        .args(["-c", "SELECT count(*) FROM schema_migrations"])
        .output()
        .expect("psql");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        MIGRATIONS.len().to_string(),
        "each migration applied once"
    );
}

#[tokio::test]
async fn a_second_master_on_one_database_is_refused_and_the_first_keeps_serving() {
    let url = postgres::database().await;
    let first = master::spawn(MasterOptions {
        database_url: Some(url.clone()),
        ..Default::default()
    })
    .await;
    // Answering means it has opened the database (and holds it).
    first
        .client
        .list_tasks()
        .await
        .expect("the first master serves");
    let dir = tempfile::tempdir().expect("dir");
    let mut config = shadow_master::MasterConfig::new(dir.path().to_path_buf());
    config.database_url = Some(url);
    config.api_token = Some(master::TOKEN.into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let second = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        shadow_master::run(config, listener, std::future::pending()),
    )
    .await
    .expect("the second master gave up instead of serving");
    let e = second.expect_err("a second master on the same database");
    assert!(e.to_string().contains("another shadow-master"), "{e}");
    assert!(
        first.client.list_tasks().await.is_ok(),
        "the first still serves"
    );
}
