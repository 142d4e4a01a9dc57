//! ACME records: what edges store for automatic certificates (see `shadow_common::acme`), kept
//! durable and sent on the watch so every edge serves the same certificates and challenges.

use shadow_common::{
    acme::{check_key, AcmeRecord, CertStatus},
    error::FieldError,
    watch::WatchEvent,
};

use super::{Registry, RegistryError};

impl Registry {
    /// Stores `record` under `/acme/{kind}/{name}`; the URL must name the record it carries.
    pub async fn put_acme(
        &self,
        kind: &str,
        name: &str,
        record: AcmeRecord,
    ) -> Result<AcmeRecord, RegistryError> {
        check_key(kind, name).map_err(RegistryError::Invalid)?;
        let key = format!("{kind}/{name}");
        if record.key() != key {
            return Err(RegistryError::Invalid(FieldError::new(
                "body",
                format!(
                    "the body is the record {}, not {key}; PUT each record at its own URL",
                    record.key()
                ),
            )));
        }
        self.change(
            |_| Ok(record.clone()),
            |s, r| s.put_acme(r),
            |g, record| {
                g.acme.insert(key, record.clone());
                g.emit(
                    &self.revision_tx,
                    WatchEvent::AcmePut {
                        record: Box::new(record.clone()),
                    },
                );
                record
            },
        )
        .await
    }

    pub async fn delete_acme(&self, kind: &str, name: &str) -> Result<(), RegistryError> {
        check_key(kind, name).map_err(RegistryError::Invalid)?;
        let key = format!("{kind}/{name}");
        self.change(
            |g| {
                if g.acme.contains_key(&key) {
                    Ok(key.clone())
                } else {
                    Err(RegistryError::NotFound(format!("no ACME record {key}")))
                }
            },
            |s, key| s.delete_acme(key),
            |g, key| {
                g.acme.remove(&key);
                g.emit(&self.revision_tx, WatchEvent::AcmeDeleted { key });
            },
        )
        .await
    }

    pub fn get_acme(&self, kind: &str, name: &str) -> Result<AcmeRecord, RegistryError> {
        check_key(kind, name).map_err(RegistryError::Invalid)?;
        let key = format!("{kind}/{name}");
        self.lock()
            .acme
            .get(&key)
            .cloned()
            .ok_or_else(|| RegistryError::NotFound(format!("no ACME record {key}")))
    }

    /// Every domain's ordering status, for people: no keys, no challenges.
    pub fn cert_statuses(&self) -> Vec<CertStatus> {
        self.lock()
            .acme
            .values()
            .filter_map(|r| match r {
                AcmeRecord::Status(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn acme_account(&self) -> Result<serde_json::Value, RegistryError> {
        self.lock().acme_account.clone().ok_or_else(|| {
            RegistryError::NotFound(
                "no ACME account yet; the ordering edge makes one on its first order".into(),
            )
        })
    }

    /// Stores the account's credentials. The first writer wins: an edge that made a second
    /// account meanwhile gets 409 and must use the stored one, so every edge orders as one.
    pub async fn put_acme_account(
        &self,
        credentials: serde_json::Value,
        replace: bool,
    ) -> Result<serde_json::Value, RegistryError> {
        self.change(
            |g| {
                if let (Some(existing), false) = (&g.acme_account, replace) {
                    if *existing != credentials {
                        return Err(RegistryError::Conflict {
                            message: "an ACME account is stored already; GET /acme/account and use it (or PUT with ?replace=true to change accounts)".into(),
                            field: None,
                        });
                    }
                }
                Ok(credentials.clone())
            },
            |s, c| s.put_acme_account(c),
            |g, credentials| {
                g.acme_account = Some(credentials.clone());
                credentials
            },
        )
        .await
    }
}
