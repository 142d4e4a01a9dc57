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

use shadow_nodeproxy::config::NodeConfig;
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
