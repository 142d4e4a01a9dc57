//! Automatic certificates end to end against a real ACME CA (Pebble, on loopback, validating
//! against the edge's own ports): a new task's domain gets a certificate that a client trusting
//! only Pebble's root accepts, from every edge, ordered once; a domain the CA refuses backs off
//! and shows why; a certificate close to expiry is renewed without a restart.

use std::{sync::Arc, time::Duration};

use shadow_common::{
    acme::{CertStatus, StoredCert},
    follower::Follower,
};
use shadow_edgeproxy::EdgeConfig;
use shadow_tests::{
    edge::{self, EdgeHandle},
    fixtures::domain,
    master::{self, MasterHandle, MasterOptions},
    pebble::{self, Ports, Prepared},
};
use tokio_rustls::rustls::{
    self,
    pki_types::{pem::PemObject, CertificateDer, ServerName},
};

fn acme_edge(p: &Prepared, challenge: &str) -> impl FnOnce(&mut EdgeConfig) {
    let (directory, root, challenge) = (
        p.directory.clone(),
        p.listener_ca.clone(),
        challenge.to_owned(),
    );
    move |cfg: &mut EdgeConfig| {
        cfg.tls_listen = Some("127.0.0.1:0".parse().expect("addr"));
        cfg.acme_directory = Some(directory);
        cfg.acme_ca_root = Some(root);
        cfg.acme_challenge = challenge;
        cfg.acme_check_s = 1;
    }
}

fn ports(e: &EdgeHandle) -> Ports {
    Ports {
        http: e.addr.port(),
        tls: e.tls_addr.expect("an HTTPS listener").port(),
    }
}

async fn register(m: &MasterHandle, domains: &[&str]) {
    let spec = serde_json::from_value(serde_json::json!({
        "name": "site", "domains": domains, "image": "site:1"
    }))
    .expect("spec");
    m.client.create_task(&spec).await.expect("create task");
}

/// Waits (on the master's watch, 90 s at most) until `pred` holds.
async fn until(
    m: &MasterHandle,
    what: &str,
    pred: impl FnMut(&shadow_common::state::ClusterState) -> bool,
) {
    let f = Follower::spawn(m.client.clone(), std::future::pending());
    tokio::time::timeout(Duration::from_secs(90), f.wait_until(pred))
        .await
        .unwrap_or_else(|_| panic!("{what} within 90 s"));
}

/// Connects to `e`'s HTTPS listener asking for `name`, trusting only `root_pem`; the leaf the
/// edge presented, or the handshake's error.
async fn handshake(e: &EdgeHandle, name: &str, root_pem: &str) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c.expect("root PEM")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(e.tls_addr.expect("tls"))
        .await
        .expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(name.to_owned()).expect("name"), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec();
    Ok(leaf)
}

/// The leaf `e` presents for `name` once it equals `want` (an edge's copy of the master's state
/// may lag its watch by a moment); fails after 10 s.
async fn until_served(e: &EdgeHandle, name: &str, root: &str, want: &[u8]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = handshake(e, name, root).await;
        if got.as_deref() == Ok(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the edge did not present the stored certificate: {:?}",
            got.map(|_| "another certificate")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn leaf_of(cert: &StoredCert) -> Vec<u8> {
    CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("PEM")
        .to_vec()
}

fn orders(metrics: &str, result: &str) -> u64 {
    let line = format!("shadow_edge_acme_orders_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

#[tokio::test]
async fn every_edge_serves_the_certificate_one_edge_ordered_and_refusals_back_off() {
    let m = master::spawn(MasterOptions::default()).await;
    let p = pebble::prepare();
    let e1 = edge::spawn(&m, acme_edge(&p, "http-01")).await;
    let e2 = edge::spawn(&m, acme_edge(&p, "http-01")).await;
    let (good, blocked) = (domain("acme-good"), domain("acme-blocked"));
    // The CA validates on the first edge's port 80; the challenge may have been published by
    // either edge, so this also shows every edge answers every challenge.
    let ca = pebble::spawn(p, ports(&e1), 0, &[blocked.as_str()]).await;
    let root = ca.issuing_root().await;
    // Before the domain is registered nothing is ordered, and a TLS client gets no certificate.
    assert!(handshake(&e1, &good, &root).await.is_err());

    register(&m, &[&good, &blocked]).await;
    until(
        &m,
        "a certificate for the good domain and a failure for the blocked one",
        |s| s.cert(&good).is_some() && s.cert_status(&blocked).is_some_and(|st| st.failures >= 1),
    )
    .await;

    // Both edges present the same certificate, which verifies against Pebble's root.
    let f = Follower::spawn(m.client.clone(), std::future::pending());
    f.synced().await;
    let stored = f.read().cert(&good).cloned().expect("stored");
    for e in [&e1, &e2] {
        until_served(e, &good, &root, &leaf_of(&stored)).await;
    }
    // The refused domain has no certificate: no TLS for it.
    assert!(handshake(&e1, &blocked, &root).await.is_err());

    // One order was issued in all, by one of the edges.
    let (m1, m2) = (e1.metrics().await, e2.metrics().await);
    assert_eq!(
        orders(&m1, "issued") + orders(&m2, "issued"),
        1,
        "{m1}\n{m2}"
    );

    // The status says what happened, for people: expiry for one, the CA's refusal and when it
    // is tried again for the other.
    let statuses: Vec<CertStatus> = m.client.cert_statuses().await.expect("statuses");
    let by = |d: &str| statuses.iter().find(|s| s.domain == d).cloned().expect(d);
    assert_eq!(by(&good).not_after, Some(stored.not_after));
    assert_eq!(by(&good).last_error, None);
    let refused = by(&blocked);
    let error = refused.last_error.clone().expect("an error");
    assert!(
        error.contains("rejectedIdentifier") || error.contains("blocked"),
        "{error}"
    );
    assert!(refused.next_attempt.expect("a retry time") > refused.updated_at);
    // Nothing retried it inside its back-off (a minute): one failure, not one per second.
    let failed = orders(&e1.metrics().await, "failed") + orders(&e2.metrics().await, "failed");
    assert_eq!(failed, 1);
    drop(ca);
}

#[tokio::test]
async fn a_certificate_near_expiry_is_renewed_and_served_without_a_restart() {
    let m = master::spawn(MasterOptions::default()).await;
    let p = pebble::prepare();
    let e = edge::spawn(&m, |cfg| {
        acme_edge(&p, "tls-alpn-01")(cfg);
        // Pebble issues 40-second certificates below: renew when 30 s are left.
        cfg.acme_renew_before_s = 30;
    })
    .await;
    let ca = pebble::spawn(p, ports(&e), 40, &[]).await;
    let root = ca.issuing_root().await;
    let d = domain("acme-renew");
    register(&m, &[&d]).await;
    until(&m, "a first certificate", |s| s.cert(&d).is_some()).await;
    let f = Follower::spawn(m.client.clone(), std::future::pending());
    f.synced().await;
    let first = f.read().cert(&d).cloned().expect("first");
    until_served(&e, &d, &root, &leaf_of(&first)).await;
    tokio::time::timeout(
        Duration::from_secs(90),
        f.wait_until(|s| s.cert(&d).is_some_and(|c| c.chain_pem != first.chain_pem)),
    )
    .await
    .expect("a renewed certificate within 90 s");
    let second = f.read().cert(&d).cloned().expect("second");
    assert!(second.not_after > first.not_after);
    // The edge serves the new one, no restart.
    until_served(&e, &d, &root, &leaf_of(&second)).await;
    drop(ca);
}

#[tokio::test]
async fn a_challenge_answers_only_its_own_token_on_its_own_domain() {
    use shadow_common::acme::{AcmeRecord, Challenge};
    let m = master::spawn(MasterOptions::default()).await;
    let p = pebble::prepare();
    // No CA runs: the challenge is put in the master by hand, as an ordering edge would.
    let e = edge::spawn(&m, acme_edge(&p, "http-01")).await;
    let (a, b) = (domain("acme-a"), domain("acme-b"));
    register(&m, &[&a, &b]).await;
    m.client
        .put_acme(&AcmeRecord::Challenge(Challenge {
            domain: a.clone(),
            token: "tok-123".into(),
            key_authorization: "tok-123.thumbprint".into(),
        }))
        .await
        .expect("challenge stored");
    let c = e.client();
    let path = "/.well-known/acme-challenge/tok-123";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // The edge learns of the challenge through its watch.
        let r = c.get(&a, path).await.expect("answer");
        if r.status == 200 {
            assert_eq!(r.body, "tok-123.thumbprint");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never answered: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another registered domain, an unknown token, a path around the token: not answered by
    // the edge (they go to the app, which has no node here).
    for (host, p) in [
        (b.as_str(), path),
        (a.as_str(), "/.well-known/acme-challenge/other"),
        (a.as_str(), "/.well-known/acme-challenge/tok-123/x"),
    ] {
        let r = c.get(host, p).await.expect("answer");
        assert!(!r.body.contains("thumbprint"), "{host}{p}: {r:?}");
    }
    // Removed after its order: no longer answered.
    m.client
        .delete_acme("challenges/tok-123")
        .await
        .expect("removed");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while c
        .get(&a, path)
        .await
        .expect("answer")
        .body
        .contains("thumbprint")
    {
        assert!(tokio::time::Instant::now() < deadline, "still answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
