//! A private container registry for tests: Debian's `docker-registry` on a loopback port with
//! htpasswd auth, and the docker CLI logged in to it with its own config dir (nothing of the
//! machine's docker config is touched). Killed when the handle drops.
//!
//! Install with `apt-get install docker-registry apache2-utils` (`.ci/run` does).

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;
use tokio::time::Instant;

pub const USER: &str = "shadow";
pub const PASSWORD: &str = "registry-secret-42";

pub struct Registry {
    /// `127.0.0.1:<port>`
    pub host: String,
    dir: TempDir,
    child: Child,
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub async fn spawn() -> Registry {
    let dir = tempfile::tempdir().expect("temp dir");
    let htpasswd = Command::new("htpasswd")
        .args(["-Bbn", USER, PASSWORD])
        .output()
        .expect("htpasswd (apt-get install apache2-utils)");
    std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).expect("write htpasswd");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: shadow-test\n    path: {}\n",
        dir.path().join("data").display(),
        dir.path().join("htpasswd").display()
    );
    let config_path = dir.path().join("config.yml");
    std::fs::write(&config_path, config).expect("write config");
    let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config_path)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("docker-registry (apt-get install docker-registry)");
    let registry = Registry {
        host: format!("127.0.0.1:{port}"),
        dir,
        child,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the registry did not listen within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut login = Command::new("docker");
    login
        .env("DOCKER_CONFIG", registry.docker_config())
        .args(["login", &registry.host, "-u", USER, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = login.spawn().expect("docker login");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(PASSWORD.as_bytes()).expect("password");
    }
    let out = child.wait_with_output().expect("docker login");
    assert!(
        out.status.success(),
        "docker login: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    registry
}

impl Registry {
    /// The docker CLI's config dir for this registry; its `config.json` holds the credentials,
    /// as a node's `SHADOW_REGISTRY_AUTH_FILE` would.
    pub fn docker_config(&self) -> PathBuf {
        self.dir.path().join("docker")
    }

    pub fn auth_file(&self) -> PathBuf {
        self.docker_config().join("config.json")
    }

    /// Pushes the local image `local` as `<registry>/<name>` and removes that tag locally, so a
    /// node must pull it. Returns the pushed reference.
    pub fn push(&self, local: &str, name: &str) -> String {
        let remote = format!("{}/{name}", self.host);
        run(
            Command::new("docker").args(["tag", local, &remote]),
            "docker tag",
        );
        run(
            Command::new("docker")
                .env("DOCKER_CONFIG", self.docker_config())
                .args(["push", "--quiet", &remote]),
            "docker push",
        );
        run(Command::new("docker").args(["rmi", &remote]), "docker rmi");
        remote
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
