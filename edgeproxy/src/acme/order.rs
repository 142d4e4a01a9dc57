//! One ACME order for one domain, with instant-acme: the account (made once and kept in the
//! master), the challenge published through the master so any edge can answer it, then
//! finalising and fetching the certificate.

use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use shadow_common::{
    acme::{AcmeRecord, Challenge, StoredCert},
    client::{ClientError, MasterClient},
    follower::Follower,
};

use super::{unix_now, AcmeConfig, ChallengeKind};

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("the ACME server {directory} failed: {message}; check SHADOW_EDGE_ACME_DIRECTORY and that the server is reachable")]
    Account { directory: String, message: String },
    #[error("the CA refused or failed the order: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("the CA offers no {0} challenge for this domain; set SHADOW_EDGE_ACME_CHALLENGE to the other kind")]
    NoChallenge(&'static str),
    #[error("the CA did not validate the domain ({0}): check that its DNS points at the edges and that ports 80/443 reach them")]
    Invalid(String),
    #[error("the order took longer than {0} s; the CA may be slow or unreachable")]
    Timeout(u64),
    #[error("the master did not store the challenge: {0}")]
    Master(#[from] ClientError),
    #[error("the CA sent a certificate this edge cannot read: {0}")]
    BadCertificate(String),
}

fn builder(config: &AcmeConfig) -> Result<instant_acme::AccountBuilder, OrderError> {
    let fail = |e: instant_acme::Error| OrderError::Account {
        directory: config.directory.clone(),
        message: e.to_string(),
    };
    match &config.ca_root {
        Some(root) => Account::builder_with_root(root).map_err(fail),
        None => Account::builder().map_err(fail),
    }
}

/// The cluster's ACME account: the one stored in the master, or a new one stored there. When
/// two edges make one at once the master keeps the first, and the other uses it.
pub async fn account(config: &AcmeConfig, master: &MasterClient) -> Result<Account, OrderError> {
    let fail = |e: instant_acme::Error| OrderError::Account {
        directory: config.directory.clone(),
        message: e.to_string(),
    };
    for _ in 0..2 {
        if let Some(stored) = master.acme_account().await? {
            let creds: AccountCredentials =
                serde_json::from_value(stored).map_err(|e| OrderError::Account {
                    directory: config.directory.clone(),
                    message: format!("the stored account cannot be read ({e}); PUT /acme/account?replace=true with a new one"),
                })?;
            return builder(config)?.from_credentials(creds).await.map_err(fail);
        }
        let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
        let (account, creds) = builder(config)?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                config.directory.clone(),
                None,
            )
            .await
            .map_err(fail)?;
        let value = serde_json::to_value(&creds).map_err(|e| OrderError::Account {
            directory: config.directory.clone(),
            message: e.to_string(),
        })?;
        match master.put_acme_account(&value).await {
            Ok(()) => return Ok(account),
            // Another edge stored one first: use that (the loop reads it).
            Err(e) if e.status() == Some(http::StatusCode::CONFLICT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(OrderError::Account {
        directory: config.directory.clone(),
        message: "the master keeps refusing to store the account".into(),
    })
}

/// Orders a certificate for `domain` and returns it; the challenges it published are removed
/// again whatever the outcome.
pub async fn order(
    account: &Account,
    domain: &str,
    kind: ChallengeKind,
    master: &MasterClient,
    follower: &Follower,
) -> Result<StoredCert, OrderError> {
    let mut published = Vec::new();
    let result = run_order(account, domain, kind, master, follower, &mut published).await;
    for key in published {
        if let Err(e) = master.delete_acme(&key).await {
            tracing::warn!(%domain, error = %e, "could not remove a finished challenge");
        }
    }
    result
}

async fn run_order(
    account: &Account,
    domain: &str,
    kind: ChallengeKind,
    master: &MasterClient,
    follower: &Follower,
    published: &mut Vec<String>,
) -> Result<StoredCert, OrderError> {
    let (challenge_type, name) = match kind {
        ChallengeKind::Http01 => (ChallengeType::Http01, "http-01"),
        ChallengeKind::TlsAlpn01 => (ChallengeType::TlsAlpn01, "tls-alpn-01"),
    };
    let identifiers = [Identifier::Dns(domain.to_owned())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(OrderError::Invalid(format!("authorization {other:?}"))),
        }
        let mut challenge = authz
            .challenge(challenge_type.clone())
            .ok_or(OrderError::NoChallenge(name))?;
        let record = Challenge {
            domain: domain.to_owned(),
            token: challenge.token.clone(),
            key_authorization: challenge.key_authorization().as_str().to_owned(),
        };
        let record = AcmeRecord::Challenge(record);
        master.put_acme(&record).await?;
        published.push(record.key());
        // This edge must be able to answer before the CA is told to look.
        let token = challenge.token.clone();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            follower.wait_until(|s| s.challenge(&token).is_some()),
        )
        .await;
        challenge.set_ready().await?;
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(Duration::from_secs(90));
    let status = order.poll_ready(&retry).await?;
    if status != OrderStatus::Ready {
        return Err(OrderError::Invalid(format!("order {status:?}")));
    }
    let key_pem = order.finalize().await?;
    let chain_pem = order.poll_certificate(&retry).await?;
    let not_after = not_after(&chain_pem)?;
    Ok(StoredCert {
        domain: domain.to_owned(),
        chain_pem,
        key_pem,
        not_after,
        issued_at: unix_now(),
    })
}

/// The leaf's expiry, in unix seconds.
pub fn not_after(chain_pem: &str) -> Result<i64, OrderError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes())
        .map_err(|e| OrderError::BadCertificate(e.to_string()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| OrderError::BadCertificate(e.to_string()))?;
    Ok(cert.validity().not_after.timestamp())
}
