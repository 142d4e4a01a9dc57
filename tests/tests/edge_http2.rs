//! HTTP/2 to clients: over TLS when the client offers `h2` (ALPN), and in the clear with prior
//! knowledge; the same streaming both ways and SSE as HTTP/1.1, with the node behind the edge
//! still spoken to in HTTP/1.1. A real master, node and edge, the counter app in Docker.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use shadow_tests::{
    edge,
    fixtures::{counter_task, domain},
    image::counter_image,
    master::{self, MasterOptions},
    node,
};
use tokio_rustls::rustls::{
    self,
    pki_types::{CertificateDer, ServerName},
};

type Sender = hyper::client::conn::http2::SendRequest<shadow_tests::http::Body>;

/// A TLS client trusting only `root`, offering `alpn`.
fn trusting(root: &[u8], alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(root.to_vec()))
        .expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn h2<T>(io: T) -> Sender
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    sender
}

fn uri(scheme: &str, host: &str, path: &str) -> String {
    format!("{scheme}://{host}{path}")
}

/// GET /headers, a 4 MiB upload echoed back in chunks, and three SSE events one by one.
async fn exercise(mut s: Sender, scheme: &str, d: &str) {
    let resp = s
        .send_request(
            http::Request::get(uri(scheme, d, "/headers"))
                .body(shadow_tests::http::empty())
                .expect("req"),
        )
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let h: Value =
        serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes())
            .expect("json");
    assert_eq!(
        h["host"], d,
        "the node and the app see the authority as Host: {h}"
    );
    assert_eq!(h["x-forwarded-proto"], scheme, "{h}");

    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let chunks = (0..64).map(move |_| Ok::<_, std::io::Error>(Frame::data(chunk.clone())));
    let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
    let resp = s
        .send_request(
            http::Request::post(uri(scheme, d, "/echo"))
                .body(body)
                .expect("req"),
        )
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    let echoed = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(echoed.len(), 64 * 64 * 1024);
    assert!(echoed.iter().all(|b| *b == 7));

    let resp = s
        .send_request(
            http::Request::get(uri(scheme, d, "/sse?n=3"))
                .body(shadow_tests::http::empty())
                .expect("req"),
        )
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut events = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            // Each event arrives on its own, not buffered to the end.
            events.push(String::from_utf8_lossy(&data).into_owned());
        }
    }
    let all = events.concat();
    assert_eq!(all, "data: 0\n\ndata: 1\n\ndata: 2\n\n");
    assert!(events.len() >= 3, "streamed event by event: {events:?}");
}

#[tokio::test]
async fn http2_over_tls_and_in_the_clear_streams_like_http1() {
    counter_image().await.expect("image");
    let m = master::spawn(MasterOptions::default()).await;
    let _n = node::spawn(&m, |_| {}).await;
    let dir = tempfile::tempdir().expect("tmp");
    let d = domain("h2");
    counter_task(&m, &d, "none", |_| {}).await;
    let ck = rcgen::generate_simple_self_signed(vec![d.clone()]).expect("certificate");
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&c, ck.cert.pem()).expect("write");
    std::fs::write(&k, ck.signing_key.serialize_pem()).expect("write");
    let e = edge::spawn(&m, |cfg| {
        cfg.tls_cert = vec![c];
        cfg.tls_key = vec![k];
    })
    .await;

    let tcp = tokio::net::TcpStream::connect(e.tls_addr.expect("tls"))
        .await
        .expect("connect");
    let tls = trusting(ck.cert.der(), &[b"h2"])
        .connect(ServerName::try_from(d.clone()).expect("name"), tcp)
        .await
        .expect("handshake");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "the edge chose h2"
    );
    exercise(h2(tls).await, "https", &d).await;

    // In the clear, with prior knowledge (h2c).
    let tcp = tokio::net::TcpStream::connect(e.addr)
        .await
        .expect("connect");
    exercise(h2(tcp).await, "http", &d).await;
}

/// The leaf certificate the edge presents for `name` on a fresh TLS connection.
async fn presented(addr: std::net::SocketAddr, name: &str) -> Vec<u8> {
    #[derive(Debug)]
    struct AnyCert;
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCert))
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(name.to_string()).expect("name"), tcp)
        .await
        .expect("handshake");
    tls.get_ref().1.peer_certificates().expect("certs")[0].to_vec()
}

#[tokio::test]
async fn https_redirect_hsts_and_a_certificate_replaced_on_disk_without_a_restart() {
    counter_image().await.expect("image");
    let m = master::spawn(MasterOptions::default()).await;
    let _n = node::spawn(&m, |_| {}).await;
    let dir = tempfile::tempdir().expect("tmp");
    let d = domain("redirect");
    counter_task(&m, &d, "none", |s| {
        s["https_redirect"] = serde_json::json!(true);
        s["hsts_max_age_s"] = serde_json::json!(300);
    })
    .await;
    let first = rcgen::generate_simple_self_signed(vec![d.clone()]).expect("certificate");
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&c, first.cert.pem()).expect("write");
    std::fs::write(&k, first.signing_key.serialize_pem()).expect("write");
    let e = edge::spawn(&m, |cfg| {
        cfg.tls_cert = vec![c.clone()];
        cfg.tls_key = vec![k.clone()];
        cfg.tls_reload_s = 1;
    })
    .await;
    let tls_addr = e.tls_addr.expect("tls");

    // Plain HTTP: a 308 to the same path and query on the HTTPS port.
    let r = e.client().get(&d, "/count?x=1").await.expect("answer");
    assert_eq!(r.status, 308, "{r:?}");
    assert_eq!(
        r.headers["location"],
        format!("https://{d}:{}/count?x=1", tls_addr.port()).as_str()
    );

    // HTTPS: served, with HSTS.
    let tcp = tokio::net::TcpStream::connect(tls_addr)
        .await
        .expect("connect");
    let tls = trusting(first.cert.der(), &[b"http/1.1"])
        .connect(ServerName::try_from(d.clone()).expect("name"), tcp)
        .await
        .expect("handshake");
    let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("http");
    tokio::spawn(conn);
    let resp = s
        .send_request(
            http::Request::get("/")
                .header("host", d.as_str())
                .body(shadow_tests::http::empty())
                .expect("req"),
        )
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["strict-transport-security"], "max-age=300");

    // A renewed certificate written over the files is presented without a restart.
    assert_eq!(presented(tls_addr, &d).await, first.cert.der().to_vec());
    let second = rcgen::generate_simple_self_signed(vec![d.clone()]).expect("certificate");
    std::fs::write(&k, second.signing_key.serialize_pem()).expect("write");
    std::fs::write(&c, second.cert.pem()).expect("write");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while presented(tls_addr, &d).await != second.cert.der().to_vec() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
