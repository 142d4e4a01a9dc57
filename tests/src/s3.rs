//! A real S3 server for tests: `s3s-fs` on a loopback port, storing into a temp dir, with
//! fixed keys. Killed when the handle drops.
//!
//! Install it once with `cargo install s3s-fs --version 0.14.1 --features binary` (about 90 s).

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use shadow_nodeproxy::{config::NodeConfig, volume::s3::S3Volumes};
use tempfile::TempDir;
use tokio::time::Instant;

pub const ACCESS_KEY: &str = "shadow-test-access";
pub const SECRET_KEY: &str = "shadow-test-secret-0123456789";
pub const BUCKET: &str = "shadow-test";
/// The region tests sign for.
pub const REGION: &str = "us-east-1";

const INSTALL: &str = "cargo install s3s-fs --version 0.14.1 --features binary";

pub struct S3Server {
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    pub dir: TempDir,
    child: Child,
}

/// The `s3s-fs` binary: `$S3S_FS`, else on `PATH`, else in cargo's bin dir.
fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("S3S_FS") {
        return PathBuf::from(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    dirs.extend(cargo_home.map(|c| c.join("bin")));
    dirs.into_iter()
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("the s3s-fs binary is missing (tests run a real S3 server); install it with `{INSTALL}` or set S3S_FS to its path")
        })
}

/// Starts a server and waits until it accepts connections.
pub async fn spawn() -> S3Server {
    let bin = binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("s3 data dir");
    // The port is free when we let go of it; if another process takes it first, try again.
    let mut last_log = String::new();
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let log = std::fs::File::create(dir.path().join("s3s-fs.log")).expect("log file");
        let mut child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e}; install it with `{INSTALL}`",
                    bin.display()
                )
            });
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                last_log =
                    std::fs::read_to_string(dir.path().join("s3s-fs.log")).unwrap_or_default();
                eprintln!("s3s-fs exited early ({status}); trying another port");
                break;
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return S3Server {
                    endpoint: format!("http://{addr}"),
                    access_key: ACCESS_KEY.into(),
                    secret_key: SECRET_KEY.into(),
                    bucket: BUCKET.into(),
                    dir,
                    child,
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("s3s-fs did not answer on {addr} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("s3s-fs would not start; its last words:\n{last_log}");
}

impl S3Server {
    /// Points a node's S3 settings at this server.
    pub fn configure(&self, config: &mut NodeConfig) {
        config.s3_endpoint = Some(self.endpoint.clone());
        config.s3_bucket = Some(self.bucket.clone());
        config.s3_region = Some(REGION.into());
        config.s3_path_style = true;
        config.s3_access_key = Some(self.access_key.clone());
        config.s3_secret_key = Some(self.secret_key.clone());
    }

    /// The same settings as environment variables, for a node proxy run as a process.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SHADOW_S3_ENDPOINT", self.endpoint.clone()),
            ("SHADOW_S3_BUCKET", self.bucket.clone()),
            ("SHADOW_S3_REGION", REGION.into()),
            ("SHADOW_S3_PATH_STYLE", "true".into()),
            ("SHADOW_S3_ACCESS_KEY", self.access_key.clone()),
            ("SHADOW_S3_SECRET_KEY", self.secret_key.clone()),
        ]
    }

    /// The directory where the server keeps `bucket`'s objects, one file per key.
    pub fn bucket_dir(&self) -> PathBuf {
        self.dir.path().join("data").join(&self.bucket)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real S3 server with its bucket made, and a client of it for looking at the task pointers.
pub async fn spawn_with_bucket() -> (S3Server, S3Volumes) {
    let s3 = spawn().await;
    let mut config = NodeConfig::new("probe", "http://127.0.0.1:1", s3.dir.path().join("probe"));
    s3.configure(&mut config);
    let probe = S3Volumes::from_config(&config)
        .await
        .expect("an S3 client")
        .expect("a bucket is set");
    probe.ensure_bucket().await.expect("make the bucket");
    (s3, probe)
}

/// Milliseconds since the Unix epoch, the clock snapshot pointers are stamped with.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Waits until two snapshots of `task` committed after `after_ms` were seen: checkpoints run one
/// after the other, so the second began after `after_ms` and holds everything written before it.
pub async fn two_checkpoints_after(probe: &S3Volumes, task: &str, after_ms: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no two checkpoints of task {task} within 30 s"
        );
        if let Some((p, _)) = probe.pointer(task).await.expect("read the pointer") {
            if p.created_ms > after_ms && !seen.contains(&p.key) {
                seen.push(p.key);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
