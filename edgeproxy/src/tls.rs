//! TLS on the edge: which certificate a connection gets.
//!
//! 1. A client asking for ALPN `acme-tls/1` is the CA validating a TLS-ALPN-01 challenge: it
//!    gets the challenge certificate for the name it asked for (built from the key authorization
//!    the ordering edge published through the master), or nothing.
//! 2. A name some task serves with a certificate from ACME ([`crate::acme`]) gets that one.
//! 3. Else the certificate/key pairs from PEM files: the first pair whose certificate is valid
//!    for the requested name; the first pair when none is, or when the client sent no name. The
//!    files are checked every few seconds and loaded again when they change (a renewed
//!    certificate needs no restart).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use shadow_common::follower::Follower;
use tokio_rustls::rustls::{
    self,
    crypto::ring,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate chain {path}: {message}; give a PEM file with the certificate first")]
    Cert { path: PathBuf, message: String },
    #[error("cannot read the TLS private key {path}: {message}; give a PEM file with a PKCS#8, PKCS#1 or SEC1 key")]
    Key { path: PathBuf, message: String },
    #[error("TLS is asked for but no certificate was given: set SHADOW_EDGE_TLS_CERT and SHADOW_EDGE_TLS_KEY (comma-separated lists, pairwise), or SHADOW_EDGE_ACME_DIRECTORY for automatic ones")]
    NoCertificates,
    #[error("SHADOW_EDGE_TLS_CERT lists {certs} files but SHADOW_EDGE_TLS_KEY {keys}; give one key per certificate, in the same order")]
    Mismatch { certs: usize, keys: usize },
    #[error("TLS set-up failed: {0}")]
    Rustls(#[from] rustls::Error),
}

struct Pair {
    key: Arc<CertifiedKey>,
    leaf: CertificateDer<'static>,
}

/// Picks a certificate by SNI, remembering the answer per name.
struct SniResolver {
    pairs: Vec<Pair>,
    chosen: Mutex<HashMap<String, usize>>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SniResolver({} certificates)", self.pairs.len())
    }
}

impl SniResolver {
    fn pick(&self, name: Option<&str>) -> usize {
        let Some(name) = name else { return 0 };
        let mut chosen = self.chosen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = chosen.get(name) {
            return *i;
        }
        let i = ServerName::try_from(name.to_string())
            .ok()
            .and_then(|server_name| {
                self.pairs.iter().position(|p| {
                    webpki::EndEntityCert::try_from(&p.leaf).is_ok_and(|cert| {
                        cert.verify_is_valid_for_subject_name(&server_name).is_ok()
                    })
                })
            })
            .unwrap_or(0);
        // Bounded: names come from clients, so don't remember arbitrarily many.
        if chosen.len() < 10_000 {
            chosen.insert(name.to_string(), i);
        }
        i
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let i = self.pick(hello.server_name());
        self.pairs.get(i).map(|p| p.key.clone())
    }
}

fn load_pair(cert: &Path, key: &Path) -> Result<Pair, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.to_path_buf(),
            message: e.to_string(),
        })?;
    let leaf = chain.first().cloned().ok_or_else(|| TlsError::Cert {
        path: cert.to_path_buf(),
        message: "no certificate in the file".into(),
    })?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        message: e.to_string(),
    })?;
    let signing = ring::sign::any_supported_type(&key_der).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(Pair {
        key: Arc::new(CertifiedKey::new(chain, signing)),
        leaf,
    })
}

/// The certificates presented now, replaced whole when their files change on disk.
pub struct Certificates {
    files: Vec<(PathBuf, PathBuf)>,
    current: RwLock<Arc<SniResolver>>,
    /// The files' modification times at the last load.
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Certificates({} pairs)", self.files.len())
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        current.resolve(hello)
    }
}

impl Certificates {
    fn stamps(&self) -> Vec<Option<SystemTime>> {
        self.files
            .iter()
            .flat_map(|(c, k)| [c, k])
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// Loads the files again if any changed since the last load. A file that does not load
    /// (half written, say) keeps the certificates served now, and is tried again next time.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = self.stamps();
        if *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) == now {
            return Ok(false);
        }
        let resolver = load_all(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(resolver);
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = now;
        Ok(true)
    }

    /// Checks the files every `every`, forever (abort the task to stop).
    pub async fn reload_forever(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            match self.reload_if_changed() {
                Ok(true) => {
                    failing = false;
                    tracing::info!(pairs = self.files.len(), "TLS certificates reloaded");
                }
                Ok(false) => {}
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot reload the TLS certificates; still serving the previous ones");
                    }
                    failing = true;
                }
            }
        }
    }
}

fn load_all(files: &[(PathBuf, PathBuf)]) -> Result<SniResolver, TlsError> {
    let pairs = files
        .iter()
        .map(|(c, k)| load_pair(c, k))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SniResolver {
        pairs,
        chosen: Mutex::new(HashMap::new()),
    })
}

/// Certificates from ACME, as the master stores them, parsed once per issue.
struct AcmeCerts {
    follower: Follower,
    /// Parsed certificates by domain, with the `issued_at` they were parsed from.
    served: Mutex<HashMap<String, (i64, Arc<CertifiedKey>)>>,
    /// TLS-ALPN-01 challenge certificates by domain, with their key authorization.
    challenges: Mutex<HashMap<String, (String, Arc<CertifiedKey>)>>,
}

impl AcmeCerts {
    fn served(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let state = self.follower.read();
        // Only registered domains: a certificate outlives its task in the store for a while.
        state.task_by_domain(name)?;
        let stored = state.cert(name)?;
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((issued, key)) = served.get(name) {
            if *issued == stored.issued_at {
                return Some(key.clone());
            }
        }
        match parse_stored(&stored.chain_pem, &stored.key_pem) {
            Ok(key) => {
                served.insert(name.to_owned(), (stored.issued_at, key.clone()));
                Some(key)
            }
            Err(e) => {
                tracing::warn!(domain = name, error = %e, "cannot use the stored ACME certificate");
                None
            }
        }
    }

    fn challenge(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let key_authorization = self
            .follower
            .read()
            .alpn_challenge(name)?
            .key_authorization
            .clone();
        let mut made = self.challenges.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((ka, key)) = made.get(name) {
            if *ka == key_authorization {
                return Some(key.clone());
            }
        }
        match challenge_cert(name, &key_authorization) {
            Ok(key) => {
                // A handful at a time: challenges are removed once their order ends.
                if made.len() > 1000 {
                    made.clear();
                }
                made.insert(name.to_owned(), (key_authorization, key.clone()));
                Some(key)
            }
            Err(e) => {
                tracing::warn!(domain = name, error = %e, "cannot make the TLS-ALPN-01 certificate");
                None
            }
        }
    }
}

fn parse_stored(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let signing = ring::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// The self-signed certificate of RFC 8737: the one name, and the SHA-256 of the key
/// authorization in the critical acmeIdentifier extension.
fn challenge_cert(name: &str, key_authorization: &str) -> Result<Arc<CertifiedKey>, String> {
    let digest = ::ring::digest::digest(&::ring::digest::SHA256, key_authorization.as_bytes());
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest.as_ref()));
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = ring::sign::any_supported_type(&key_der).map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// What every TLS connection asks: ACME first, then the files.
struct EdgeResolver {
    acme: Option<AcmeCerts>,
    files: Option<Arc<Certificates>>,
}

impl std::fmt::Debug for EdgeResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EdgeResolver(acme: {}, files: {:?})",
            self.acme.is_some(),
            self.files
        )
    }
}

impl ResolvesServerCert for EdgeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(acme) = &self.acme {
            let name = hello.server_name().map(str::to_ascii_lowercase);
            let validating = hello
                .alpn()
                .is_some_and(|mut p| p.any(|p| p == shadow_common::proxy::ACME_TLS_ALPN));
            if validating {
                return acme.challenge(name.as_deref()?);
            }
            if let Some(key) = name.as_deref().and_then(|n| acme.served(n)) {
                return Some(key);
            }
        }
        self.files.as_ref()?.resolve(hello)
    }
}

/// A TLS acceptor presenting the given pairs (HTTP/2 or HTTP/1.1 by ALPN), and the certificates
/// from files, for reloading them when they change (`None` when no files are given). With
/// `acme`, certificates and TLS-ALPN-01 challenges the master stores come first.
pub fn acceptor(
    certs: &[PathBuf],
    keys: &[PathBuf],
    acme: Option<Follower>,
) -> Result<(tokio_rustls::TlsAcceptor, Option<Arc<Certificates>>), TlsError> {
    let files = if certs.is_empty() && keys.is_empty() {
        if acme.is_none() {
            return Err(TlsError::NoCertificates);
        }
        None
    } else {
        Some(file_certificates(certs, keys)?)
    };
    let resolver = EdgeResolver {
        acme: acme.map(|follower| AcmeCerts {
            follower,
            served: Mutex::default(),
            challenges: Mutex::default(),
        }),
        files: files.clone(),
    };
    let with_acme = resolver.acme.is_some();
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
    // HTTP/2 when the client offers it, else HTTP/1.1 (WebSocket clients ask for 1.1); the CA
    // validating TLS-ALPN-01 offers only acme-tls/1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if with_acme {
        config
            .alpn_protocols
            .push(shadow_common::proxy::ACME_TLS_ALPN.to_vec());
    }
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), files))
}

fn file_certificates(certs: &[PathBuf], keys: &[PathBuf]) -> Result<Arc<Certificates>, TlsError> {
    if certs.is_empty() {
        return Err(TlsError::NoCertificates);
    }
    if certs.len() != keys.len() {
        return Err(TlsError::Mismatch {
            certs: certs.len(),
            keys: keys.len(),
        });
    }
    let files: Vec<(PathBuf, PathBuf)> = certs.iter().cloned().zip(keys.iter().cloned()).collect();
    let certificates = Arc::new(Certificates {
        current: RwLock::new(Arc::new(load_all(&files)?)),
        files,
        stamps: Mutex::new(Vec::new()),
    });
    *certificates
        .stamps
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = certificates.stamps();
    Ok(certificates)
}
