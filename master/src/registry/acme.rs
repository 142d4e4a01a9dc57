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
    pub fn put_acme(
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
        let mut g = self.lock();
        g.store.put_acme(&record)?;
        g.acme.insert(key, record.clone());
        g.emit(
            &self.revision_tx,
            WatchEvent::AcmePut {
                record: Box::new(record.clone()),
            },
        );
        Ok(record)
    }

    pub fn delete_acme(&self, kind: &str, name: &str) -> Result<(), RegistryError> {
        check_key(kind, name).map_err(RegistryError::Invalid)?;
        let key = format!("{kind}/{name}");
        let mut g = self.lock();
        if !g.acme.contains_key(&key) {
            return Err(RegistryError::NotFound(format!("no ACME record {key}")));
        }
        g.store.delete_acme(&key)?;
        g.acme.remove(&key);
        g.emit(&self.revision_tx, WatchEvent::AcmeDeleted { key });
        Ok(())
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
    pub fn put_acme_account(
        &self,
        credentials: serde_json::Value,
        replace: bool,
    ) -> Result<serde_json::Value, RegistryError> {
        let mut g = self.lock();
        if let (Some(existing), false) = (&g.acme_account, replace) {
            if *existing != credentials {
                return Err(RegistryError::Conflict {
                    message: "an ACME account is stored already; GET /acme/account and use it (or PUT with ?replace=true to change accounts)".into(),
                    field: None,
                });
            }
        }
        g.store.put_acme_account(&credentials)?;
        g.acme_account = Some(credentials.clone());
        Ok(credentials)
    }
}
