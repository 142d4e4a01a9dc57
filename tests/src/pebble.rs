//! A real ACME CA for tests: Debian's `pebble` on loopback, with its validation ports pointed at
//! an edge and its DNS lookups answered by a stub that says every name is 127.0.0.1. Killed when
//! the handle drops.
//!
//! Install it with `apt-get install pebble` (`.ci/run` does).

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;
use tokio::{net::UdpSocket, task::JoinHandle, time::Instant};

/// Where the CA validates: the edge's plain HTTP port (HTTP-01) and its HTTPS port (TLS-ALPN-01).
pub struct Ports {
    pub http: u16,
    pub tls: u16,
}

pub struct Pebble {
    /// `https://127.0.0.1:<port>/dir`
    pub directory: String,
    /// The CA of Pebble's own HTTPS listener (give it to the ACME client).
    pub listener_ca: PathBuf,
    management: SocketAddr,
    _dir: TempDir,
    child: Child,
    dns: JoinHandle<()>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A Pebble about to start: its address and listener CA are known, so the edge that will use
/// it can be configured (and its ports learnt) first.
pub struct Prepared {
    pub directory: String,
    pub listener_ca: PathBuf,
    listen: u16,
    management: u16,
    dir: TempDir,
}

/// Makes Pebble's listener certificate and picks its ports.
pub fn prepare() -> Prepared {
    let dir = tempfile::tempdir().expect("temp dir");
    // Pebble's own HTTPS listener needs a certificate; Debian ships none.
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pebble listener test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    let listener_ca = dir.path().join("ca.pem");
    std::fs::write(&listener_ca, ca.pem()).expect("write CA");
    std::fs::write(dir.path().join("cert.pem"), leaf.pem()).expect("write cert");
    std::fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem()).expect("write key");
    let listen = free_port();
    Prepared {
        directory: format!("https://127.0.0.1:{listen}/dir"),
        listener_ca,
        listen,
        management: free_port(),
        dir,
    }
}

/// Starts Pebble validating against `ports`, issuing certificates valid for `validity_s` seconds
/// (0: Pebble's default of five years), refusing the domains in `blocked`.
pub async fn spawn(p: Prepared, ports: Ports, validity_s: u64, blocked: &[&str]) -> Pebble {
    let Prepared {
        directory,
        listener_ca,
        listen,
        management,
        dir,
    } = p;
    let dns_socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind DNS stub");
    let dns_addr = dns_socket.local_addr().expect("addr");
    let dns = tokio::spawn(dns_stub(dns_socket));

    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{listen}"),
        "managementListenAddress": format!("127.0.0.1:{management}"),
        "certificate": dir.path().join("cert.pem"),
        "privateKey": dir.path().join("key.pem"),
        "httpPort": ports.http,
        "tlsPort": ports.tls,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
        "domainBlocklist": blocked,
        "certificateValidityPeriod": validity_s,
    }});
    let config_path = dir.path().join("pebble.json");
    std::fs::write(&config_path, config.to_string()).expect("write config");
    let log = std::fs::File::create(dir.path().join("pebble.log")).expect("log file");
    let child = Command::new("pebble")
        .arg("-config")
        .arg(&config_path)
        .arg("-dnsserver")
        .arg(dns_addr.to_string())
        // No random sleeps before validating, no random nonce rejections, no reused
        // authorizations: every order really validates, and promptly.
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .env("PEBBLE_AUTHZREUSE", "0")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start pebble ({e}); install it with `apt-get install pebble`")
        });
    let pebble = Pebble {
        directory,
        listener_ca,
        management: SocketAddr::from(([127, 0, 0, 1], management)),
        _dir: dir,
        child,
        dns,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    for port in [listen, management] {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "pebble did not listen on {port} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    pebble
}

impl Pebble {
    /// The root that signs the certificates Pebble issues (new on every start), PEM.
    pub async fn issuing_root(&self) -> String {
        let ca = std::fs::read(&self.listener_ca).expect("listener CA");
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA pem"))
            .build()
            .expect("client");
        client
            .get(format!("https://{}/roots/0", self.management))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("pebble's management interface answers")
            .text()
            .await
            .expect("root PEM")
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dns.abort();
    }
}

/// Answers every A query with 127.0.0.1 and everything else (AAAA, CAA, TXT) with an empty
/// NOERROR, which is all Pebble asks. UDP only, as Pebble's client is.
async fn dns_stub(socket: UdpSocket) {
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            return;
        };
        if let Some(answer) = dns_answer(&buf[..n]) {
            let _ = socket.send_to(&answer, peer).await;
        }
    }
}

fn dns_answer(query: &[u8]) -> Option<Vec<u8>> {
    // Header (12 bytes), then one question: labels up to a zero byte, type, class.
    let mut i = 12;
    while *query.get(i)? != 0 {
        i += 1 + usize::from(query[i]);
    }
    let question_end = i + 5;
    let qtype = u16::from_be_bytes([*query.get(i + 1)?, *query.get(i + 2)?]);
    let a = qtype == 1;
    let mut r = Vec::with_capacity(question_end + 16);
    r.extend_from_slice(&query[0..2]); // the query's id
    r.extend_from_slice(&[0x84 | (query[2] & 0x01), 0x00]); // response, authoritative, RD copied
    r.extend_from_slice(&[0, 1, 0, u8::from(a), 0, 0, 0, 0]); // 1 question, 0 or 1 answer
    r.extend_from_slice(query.get(12..question_end)?);
    if a {
        // The name by pointer to the question, type A, class IN, TTL 5, 127.0.0.1.
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 127, 0, 0, 1]);
    }
    Some(r)
}
