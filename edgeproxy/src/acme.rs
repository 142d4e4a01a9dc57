//! Automatic certificates: every domain of every task gets one from an ACME CA, renewed before
//! it expires, with failures backed off.
//!
//! The account, the certificates and the challenges live in the master ([`shadow_common::acme`]),
//! so every edge serves the same certificates ([`crate::tls`]) and answers the CA wherever it
//! connects (HTTP-01 in [`crate::handler`], TLS-ALPN-01 in [`crate::tls`]). Only the edge that
//! holds the master lock [`LOCK`] orders; it renews the lock while it works, and stops ordering
//! when a renewal fails. What to order is decided by [`due`], a pure function of the time, the
//! registered domains and what the master stores, so it is tested without a clock or a CA.

pub mod order;

use std::{path::PathBuf, sync::Arc, time::Duration};

use prometheus::{IntCounterVec, Opts};
use shadow_common::{
    acme::{AcmeRecord, CertStatus, LOCK},
    client::{ClientError, MasterClient},
    follower::Follower,
    state::ClusterState,
};
use tokio_util::sync::CancellationToken;

/// Which challenge the CA is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// A token answered over plain HTTP on port 80.
    Http01,
    /// A special certificate presented on port 443 to a client asking for ALPN `acme-tls/1`.
    TlsAlpn01,
}

#[derive(Debug, Clone)]
pub struct AcmeConfig {
    pub directory: String,
    pub contact: Vec<String>,
    /// The CA of the ACME server's own TLS certificate (a private CA such as Pebble).
    pub ca_root: Option<PathBuf>,
    pub challenge: ChallengeKind,
    pub renew_before: Duration,
    pub check_every: Duration,
    /// Back-off after the first failure, doubled per failure up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// TTL of the ordering lock, renewed every third of it.
    pub lock_ttl: Duration,
    /// The longest one order may take, challenges and polling included.
    pub order_timeout: Duration,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        Self {
            directory: String::new(),
            contact: vec![],
            ca_root: None,
            challenge: ChallengeKind::Http01,
            renew_before: Duration::from_secs(30 * 24 * 3600),
            check_every: Duration::from_secs(60),
            backoff_min: Duration::from_secs(60),
            backoff_max: Duration::from_secs(6 * 3600),
            lock_ttl: Duration::from_secs(60),
            order_timeout: Duration::from_secs(180),
        }
    }
}

/// The registered domains that need an order at `now` (unix seconds): those without a
/// certificate, or whose certificate expires within `renew_before`, unless their back-off runs.
pub fn due(state: &ClusterState, now: i64, renew_before: Duration) -> Vec<String> {
    let renew_before = i64::try_from(renew_before.as_secs()).unwrap_or(i64::MAX);
    let mut domains: Vec<String> = state
        .tasks()
        .flat_map(|t| t.spec.domains.iter().cloned())
        .filter(|d| {
            let fresh = state
                .cert(d)
                .is_some_and(|c| c.not_after.saturating_sub(now) > renew_before);
            let waiting = state
                .cert_status(d)
                .and_then(|s| s.next_attempt)
                .is_some_and(|t| t > now);
            !fresh && !waiting
        })
        .collect();
    domains.sort();
    domains
}

/// How long to wait after `failures` failures in a row.
pub fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
    shadow_common::backoff::after_failures(failures, min, max)
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `shadow_edge_acme_orders_total{result}`: orders by outcome (`issued`, `failed`).
pub fn metric() -> IntCounterVec {
    IntCounterVec::new(
        Opts::new(
            "shadow_edge_acme_orders_total",
            "Certificate orders this edge made, by result (issued, failed)",
        ),
        &["result"],
    )
    .expect("static metric definition")
}

/// The ordering loop of one edge.
pub struct Acme {
    pub config: AcmeConfig,
    pub master: MasterClient,
    pub follower: Follower,
    pub edge_id: String,
    pub orders: IntCounterVec,
}

impl Acme {
    /// Looks for work every `check_every` and when the tasks change, until `stop`.
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut changes = self.follower.changes();
        let mut tick = tokio::time::interval(self.config.check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => {}
                r = changes.changed() => if r.is_err() { return },
            }
            let work = due(&self.follower.read(), unix_now(), self.config.renew_before);
            if work.is_empty() {
                continue;
            }
            if let Err(e) = self.order_under_lock(work).await {
                tracing::warn!(error = %e, "certificate ordering stopped; trying again later");
            }
        }
    }

    async fn order_under_lock(&self, work: Vec<String>) -> Result<(), ClientError> {
        let grant = match self
            .master
            .acquire_lease(LOCK, &self.edge_id, self.config.lock_ttl)
            .await
        {
            Ok(g) => g,
            // Another edge orders; its certificates reach this edge through the watch.
            Err(ClientError::LeaseConflict { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let lost = CancellationToken::new();
        let keeper = {
            let (master, ttl, token, lost) = (
                self.master.clone(),
                self.config.lock_ttl,
                grant.token,
                lost.clone(),
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    if let Err(e) = master.renew_lease(LOCK, token, ttl).await {
                        tracing::warn!(error = %e, "lost the certificate-ordering lock");
                        lost.cancel();
                        return;
                    }
                }
            })
        };
        let result = self.order_all(work, &lost).await;
        keeper.abort();
        let _ = self.master.release_lease(LOCK, grant.token).await;
        result
    }

    async fn order_all(
        &self,
        work: Vec<String>,
        lost: &CancellationToken,
    ) -> Result<(), ClientError> {
        let account = match order::account(&self.config, &self.master).await {
            Ok(a) => a,
            Err(e) => {
                // Every due domain shows why nothing happened.
                for d in &work {
                    self.record_failure(d, &e.to_string()).await?;
                }
                return Ok(());
            }
        };
        for domain in work {
            if lost.is_cancelled() {
                break;
            }
            // Still registered, and still due (another edge may have ordered meanwhile)?
            if !due(&self.follower.read(), unix_now(), self.config.renew_before).contains(&domain) {
                continue;
            }
            let outcome = tokio::time::timeout(
                self.config.order_timeout,
                order::order(
                    &account,
                    &domain,
                    self.config.challenge,
                    &self.master,
                    &self.follower,
                ),
            )
            .await
            .unwrap_or_else(|_| {
                Err(order::OrderError::Timeout(
                    self.config.order_timeout.as_secs(),
                ))
            });
            match outcome {
                Ok(cert) => {
                    let not_after = cert.not_after;
                    self.master.put_acme(&AcmeRecord::Cert(cert)).await?;
                    let status = CertStatus {
                        domain: domain.clone(),
                        not_after: Some(not_after),
                        last_error: None,
                        failures: 0,
                        next_attempt: None,
                        updated_at: unix_now(),
                    };
                    self.master.put_acme(&AcmeRecord::Status(status)).await?;
                    self.orders.with_label_values(&["issued"]).inc();
                    tracing::info!(%domain, not_after, "certificate issued");
                }
                Err(e) => self.record_failure(&domain, &e.to_string()).await?,
            }
        }
        Ok(())
    }

    async fn record_failure(&self, domain: &str, error: &str) -> Result<(), ClientError> {
        let previous = self.follower.read().cert_status(domain).cloned();
        let failures = previous.as_ref().map_or(0, |s| s.failures) + 1;
        let wait = backoff(failures, self.config.backoff_min, self.config.backoff_max);
        let now = unix_now();
        let status = CertStatus {
            domain: domain.to_owned(),
            not_after: self.follower.read().cert(domain).map(|c| c.not_after),
            last_error: Some(error.to_owned()),
            failures,
            next_attempt: Some(now + i64::try_from(wait.as_secs()).unwrap_or(i64::MAX / 2)),
            updated_at: now,
        };
        self.orders.with_label_values(&["failed"]).inc();
        tracing::warn!(%domain, failures, retry_in_s = wait.as_secs(), %error, "certificate order failed");
        self.master.put_acme(&AcmeRecord::Status(status)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadow_common::{
        acme::StoredCert,
        task::{Task, TaskSpec},
        watch::WatchEvent,
    };

    const DAY: i64 = 24 * 3600;

    fn state(domains: &[&str]) -> ClusterState {
        let mut s = ClusterState::default();
        let spec: TaskSpec = serde_json::from_value(
            serde_json::json!({"name": "a", "domains": domains, "image": "x"}),
        )
        .unwrap();
        s.apply(&WatchEvent::TaskPut {
            task: Box::new(Task {
                id: "t".into(),
                spec,
            }),
        });
        s
    }

    fn put(s: &mut ClusterState, r: AcmeRecord) {
        s.apply(&WatchEvent::AcmePut {
            record: Box::new(r),
        });
    }

    fn cert(domain: &str, not_after: i64) -> AcmeRecord {
        AcmeRecord::Cert(StoredCert {
            domain: domain.into(),
            chain_pem: String::new(),
            key_pem: String::new(),
            not_after,
            issued_at: 0,
        })
    }

    #[test]
    fn due_are_the_domains_without_a_fresh_certificate_and_not_backing_off() {
        let now = 1_000 * DAY;
        let renew = Duration::from_secs(30 * 24 * 3600);
        let mut s = state(&["a.example", "b.example", "c.example", "d.example"]);
        put(&mut s, cert("a.example", now + 60 * DAY)); // fresh
        put(&mut s, cert("b.example", now + 29 * DAY)); // inside the renewal window
        put(
            &mut s,
            AcmeRecord::Status(CertStatus {
                domain: "c.example".into(),
                not_after: None,
                last_error: Some("refused".into()),
                failures: 1,
                next_attempt: Some(now + 10),
                updated_at: now,
            }),
        );
        put(&mut s, cert("gone.example", now)); // no task has it: never ordered
        assert_eq!(due(&s, now, renew), vec!["b.example", "d.example"]);
        // Once c's back-off has run out, it is due again.
        assert_eq!(
            due(&s, now + 11, renew),
            vec!["b.example", "c.example", "d.example"]
        );
        // a enters its renewal window 30 days before its expiry.
        assert!(due(&s, now + 30 * DAY, renew).contains(&"a.example".to_string()));
        assert!(!due(&s, now + 30 * DAY - 1, renew).contains(&"a.example".to_string()));
    }

    #[test]
    fn backoff_doubles_from_the_minimum_up_to_the_maximum() {
        let (min, max) = (Duration::from_secs(60), Duration::from_secs(3600));
        let waits: Vec<u64> = (1..=8).map(|n| backoff(n, min, max).as_secs()).collect();
        assert_eq!(waits, vec![60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff(1000, min, max), max);
    }
}
