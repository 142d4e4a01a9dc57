//! TLS on the edge: certificate/key pairs from PEM files, the one presented picked per
//! connection by SNI (the first pair whose certificate is valid for the requested name; the first
//! pair when none is, or when the client sent no name).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

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
    #[error("TLS is asked for but no certificate was given: set SHADOW_EDGE_TLS_CERT and SHADOW_EDGE_TLS_KEY (comma-separated lists, pairwise)")]
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

/// A TLS acceptor presenting the given pairs (HTTP/1.1 only, like the rest of the edge).
pub fn acceptor(
    certs: &[PathBuf],
    keys: &[PathBuf],
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    if certs.is_empty() {
        return Err(TlsError::NoCertificates);
    }
    if certs.len() != keys.len() {
        return Err(TlsError::Mismatch {
            certs: certs.len(),
            keys: keys.len(),
        });
    }
    let pairs = certs
        .iter()
        .zip(keys)
        .map(|(c, k)| load_pair(c, k))
        .collect::<Result<Vec<_>, _>>()?;
    let resolver = Arc::new(SniResolver {
        pairs,
        chosen: Mutex::new(HashMap::new()),
    });
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    // HTTP/2 when the client offers it, else HTTP/1.1 (WebSocket clients ask for 1.1).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
