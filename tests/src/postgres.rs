//! A throwaway PostgreSQL cluster (Debian's `postgresql`) on a free loopback port, one per test
//! process, with a fresh database per master. `initdb` refuses root, so as root the cluster
//! runs as the `postgres` user. A watchdog stops the server when the test process is gone.
//!
//! `SHADOW_TEST_STORE=postgres` makes [`crate::master`] put every master on PostgreSQL.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use tokio::sync::OnceCell;

pub struct Cluster {
    pub port: u16,
    /// The CA that signed the server's certificate (for `sslrootcert`).
    pub ca: PathBuf,
    _dir: tempfile::TempDir,
    /// The watchdog shell holding the server; it ends with this process.
    _server: tokio::process::Child,
}

/// Whether the tests were asked to run the masters on PostgreSQL.
pub fn wanted() -> bool {
    std::env::var("SHADOW_TEST_STORE").is_ok_and(|v| v == "postgres")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Debian keeps the server programs out of PATH, under /usr/lib/postgresql/<version>/bin.
fn bin(name: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| PathBuf::from(name))
}

/// `program args…`, as the `postgres` user when we are root.
fn as_postgres(program: PathBuf) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| {
        panic!("{what}: {e}; install Debian's postgresql (apt-get install postgresql)")
    });
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cluster of this test process, started on first use.
pub async fn cluster() -> &'static Cluster {
    static CLUSTER: OnceCell<Cluster> = OnceCell::const_new();
    CLUSTER.get_or_init(start).await
}

async fn start() -> Cluster {
    let (dir, data) = tokio::task::spawn_blocking(init).await.expect("initdb");
    let port = crate::procs::free_addr().port();
    // The server runs until this process is gone: a watchdog checks for it every second.
    let script = format!(
        "{} -D '{}' -p {port} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400 -c ssl=on >'{}/log' 2>&1 & pid=$!; \
         while [ -d /proc/{} ] && kill -0 $pid 2>/dev/null; do sleep 1; done; kill -INT $pid 2>/dev/null",
        bin("postgres").display(),
        data.display(),
        dir.path().display(),
        dir.path().display(),
        std::process::id()
    );
    let mut sh = tokio::process::Command::from(as_postgres(PathBuf::from("sh")));
    sh.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = sh.spawn().expect("start postgres");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = tokio::process::Command::new("pg_isready")
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .await
            .is_ok_and(|s| s.success());
        if ready {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "PostgreSQL did not start within 30 s; see {}/log",
            dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Cluster {
        port,
        ca: dir.path().join("ca.pem"),
        _dir: dir,
        _server: server,
    }
}

/// A test CA, and a certificate for 127.0.0.1 signed by it in the data dir (the server's
/// `server.crt` and `server.key`), so connections can be encrypted and verified.
fn certificates(dir: &std::path::Path, data: &std::path::Path) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "shadow test PostgreSQL CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("leaf");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write CA");
    std::fs::write(data.join("server.crt"), leaf.pem()).expect("write cert");
    let key_file = data.join("server.key");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    if is_root() {
        for f in ["server.crt", "server.key"] {
            let mut c = Command::new("chown");
            c.arg("postgres").arg(data.join(f));
            run(c, "chown the server's certificate");
        }
    }
}

/// A new cluster's directory (owned by `postgres` when we are root) and its data dir.
fn init() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("dir");
    if is_root() {
        run(
            {
                let mut c = Command::new("chown");
                c.arg("postgres").arg(dir.path());
                c
            },
            "chown the cluster's directory",
        );
    }
    let data = dir.path().join("data");
    let mut init = as_postgres(bin("initdb"));
    init.arg("-D")
        .arg(&data)
        .args(["-U", "shadow", "--auth=trust", "-E", "UTF8", "--no-sync"]);
    run(init, "initdb");
    certificates(dir.path(), &data);
    (dir, data)
}

/// A new, empty database on the cluster: its URL.
pub async fn database() -> String {
    let c = cluster().await;
    let name = format!("shadow_{}", uuid::Uuid::new_v4().simple());
    let port = c.port;
    let create = name.clone();
    tokio::task::spawn_blocking(move || {
        let mut psql = Command::new("psql");
        psql.args([
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "shadow",
            "-d",
            "postgres",
            "-c",
        ])
        .arg(format!("CREATE DATABASE {create}"));
        run(psql, "create a database");
    })
    .await
    .expect("psql");
    format!("postgres://shadow@127.0.0.1:{port}/{name}")
}
