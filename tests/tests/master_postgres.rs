//! The master on PostgreSQL (Debian's server, a throwaway cluster): migrations applied once
//! when masters start together (`tests/tests/master_fleet.rs` has masters serving one fleet
//! together). The whole API suite
//! runs against PostgreSQL too: `SHADOW_TEST_STORE=postgres cargo test -p shadow-tests --test
//! master_api --test openapi --test master_transfer --test usage` (CI does).

use shadow_master::store::postgres::{PostgresStore, MIGRATIONS};
use shadow_tests::postgres;

#[tokio::test]
async fn migrations_run_once_when_masters_start_together() {
    let url = postgres::database().await;
    let opened: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PostgresStore::open(&url).map(drop))
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

/// Whether the connection `url` opens is encrypted (as the server sees it).
fn encrypted(url: &str) -> Result<bool, String> {
    let mut c = shadow_master::store::postgres::connect(url).map_err(|e| e.to_string())?;
    let row = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test]
async fn tls_to_the_database_as_libpq_does_it() {
    let url = postgres::database().await;
    let ca = postgres::cluster().await.ca.display().to_string();
    tokio::task::spawn_blocking(move || {
        // Verified against the CA the server's certificate was signed with.
        let verified = format!("{url}?sslmode=require&sslrootcert={ca}");
        assert_eq!(encrypted(&verified), Ok(true));
        // `require` without a CA: encrypted, not verified (libpq's meaning).
        assert_eq!(encrypted(&format!("{url}?sslmode=require")), Ok(true));
        assert_eq!(encrypted(&format!("{url}?sslmode=disable")), Ok(false));
        // A CA that did not sign the server's certificate: refused, and the error says where
        // to look.
        let dir = tempfile::tempdir().expect("dir");
        let other = dir.path().join("other.pem");
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
        std::fs::write(&other, ck.cert.pem()).expect("write");
        let e = encrypted(&format!(
            "{url}?sslmode=require&sslrootcert={}",
            other.display()
        ))
        .expect_err("a server the CA does not vouch for");
        assert!(e.contains("SHADOW_DATABASE_URL"), "{e}");
        let e = encrypted(&format!(
            "{url}?sslmode=require&sslrootcert=/nonexistent.pem"
        ))
        .expect_err("no CA file");
        assert!(e.contains("/nonexistent.pem"), "{e}");
        // A whole master runs on a verified connection.
        shadow_master::store::postgres::PostgresStore::open(&verified).expect("store");
    })
    .await
    .expect("join");
}
