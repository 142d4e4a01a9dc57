//! A moto server (a fake of the AWS APIs, from PyPI `moto[server]`) on a free loopback port,
//! killed when dropped.

use std::{
    fs::File,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tempfile::NamedTempFile;

/// The command that installs moto's server.
pub const INSTALL: &str = "pip install 'moto[server]'";

/// A running `moto_server`; answers AWS API calls at [`Moto::url`].
pub struct Moto {
    /// `http://127.0.0.1:<port>`, the endpoint for the SDK clients.
    pub url: String,
    child: Child,
    log: NamedTempFile,
}

impl Moto {
    /// Starts moto and waits until it answers; panics with the install command if it is missing.
    pub async fn start() -> Moto {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            l.local_addr().expect("local addr").port()
        };
        let log = NamedTempFile::new().expect("temp file for moto's log");
        let out = log.reopen().expect("moto log");
        let err: File = log.reopen().expect("moto log");
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start moto_server ({e}); install it with: {INSTALL}")
            });
        let mut moto = Moto {
            url: format!("http://127.0.0.1:{port}"),
            child,
            log,
        };
        moto.wait_ready(port).await;
        moto
    }

    async fn wait_ready(&mut self, port: u16) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "moto_server exited ({status}) before answering; is it installed ({INSTALL})? its log:\n{}",
                    self.log_text()
                );
            }
            let url = format!("{}/moto-api/", self.url);
            if reqwest::get(&url).await.is_ok() {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "moto_server did not answer on port {port} within 60 s; its log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What moto printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
