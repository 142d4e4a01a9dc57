//! What the master keeps for automatic certificates, shared by every edge: the ACME account, each
//! domain's certificate, the challenges being answered, and each domain's ordering status.
//!
//! One edge at a time orders (it holds the master lock [`LOCK`]); every edge serves the
//! certificates and answers the challenges, because the CA may reach any of them.

use serde::{Deserialize, Serialize};

use crate::error::FieldError;

/// The master lock held by the edge that orders certificates.
pub const LOCK: &str = "_acme";

/// One record, as stored by the master and sent on its watch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AcmeRecord {
    Cert(StoredCert),
    Challenge(Challenge),
    Status(CertStatus),
}

impl AcmeRecord {
    /// The record's key: `certs/<domain>`, `challenges/<token>`, `status/<domain>`.
    pub fn key(&self) -> String {
        match self {
            AcmeRecord::Cert(c) => format!("certs/{}", c.domain),
            AcmeRecord::Challenge(c) => format!("challenges/{}", c.token),
            AcmeRecord::Status(s) => format!("status/{}", s.domain),
        }
    }
}

/// A certificate the CA issued for one domain, with its private key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredCert {
    pub domain: String,
    /// The leaf first, then the intermediates.
    pub chain_pem: String,
    pub key_pem: String,
    /// Unix seconds.
    pub not_after: i64,
    pub issued_at: i64,
}

impl std::fmt::Debug for StoredCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCert")
            .field("domain", &self.domain)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A challenge being answered: HTTP-01 by `token` on port 80, TLS-ALPN-01 by `domain` on 443.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    pub domain: String,
    pub token: String,
    pub key_authorization: String,
}

/// How ordering went for a domain: what users and operators see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertStatus {
    pub domain: String,
    /// The served certificate's expiry (unix seconds), when there is one.
    #[serde(default)]
    pub not_after: Option<i64>,
    /// The last failure, cleared by a success.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Failures in a row.
    #[serde(default)]
    pub failures: u32,
    /// No new order before this (unix seconds): the back-off after failures.
    #[serde(default)]
    pub next_attempt: Option<i64>,
    pub updated_at: i64,
}

/// Checks a record's kind and name from a URL (`/acme/{kind}/{name}`).
pub fn check_key(kind: &str, name: &str) -> Result<(), FieldError> {
    if !matches!(kind, "certs" | "challenges" | "status") {
        return Err(FieldError::new(
            "kind",
            format!("unknown ACME record kind {kind:?}: use certs, challenges or status"),
        ));
    }
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(FieldError::new(
            "name",
            "an ACME record name is a domain or token: 1 to 253 letters, digits, '-', '_' or '.'",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_and_debug_hides_the_key() {
        assert!(check_key("certs", "app.example").is_ok());
        assert_eq!(check_key("keys", "a").unwrap_err().field, "kind");
        assert_eq!(check_key("certs", "../x").unwrap_err().field, "name");
        let c = StoredCert {
            domain: "a".into(),
            chain_pem: String::new(),
            key_pem: "PRIVATE".into(),
            not_after: 1,
            issued_at: 0,
        };
        assert!(!format!("{c:?}").contains("PRIVATE"));
        assert_eq!(AcmeRecord::Cert(c).key(), "certs/a");
    }
}
