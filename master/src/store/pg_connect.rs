//! Connecting to PostgreSQL as libpq does: `sslmode=disable|prefer|require` in the URL, and
//! `sslrootcert=FILE` to verify the server's certificate against the CA(s) in that PEM file
//! (AWS RDS and DigitalOcean's managed databases sign with their own CAs). `require` without
//! `sslrootcert` encrypts without verifying, as libpq's `require` does.

use std::{path::Path, sync::Arc};

use postgres::{config::SslMode, Client, Config, NoTls};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::StoreError;

/// Opens a connection to the database `url` names.
pub fn open(url: &str) -> Result<Client, StoreError> {
    let bad = |e: String| {
        StoreError::Db(format!(
            "cannot connect to PostgreSQL ({e}); check SHADOW_DATABASE_URL and that the server is up"
        ))
    };
    let (url, root_cert) = split_root_cert(url);
    let config: Config = url
        .parse()
        .map_err(|e: postgres::Error| bad(e.to_string()))?;
    if config.get_ssl_mode() == SslMode::Disable {
        return config.connect(NoTls).map_err(|e| bad(e.to_string()));
    }
    if config.get_ssl_mode() == SslMode::Require && root_cert.is_none() {
        tracing::warn!("the database connection is encrypted but its certificate is not checked; add sslrootcert=/path/to/ca.pem to SHADOW_DATABASE_URL");
    }
    let tls = tls_config(root_cert.as_deref())?;
    config
        .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
        .map_err(|e| bad(e.to_string()))
}

/// The URL without its `sslrootcert` parameter (which the client library does not know), and
/// that parameter's file.
fn split_root_cert(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut cert = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.strip_prefix("sslrootcert=") {
            Some(path) => {
                cert = Some(path.to_owned());
                false
            }
            None => true,
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, cert)
}

fn tls_config(root_cert: Option<&str>) -> Result<ClientConfig, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Db(format!("TLS set-up: {e}")))?;
    Ok(match root_cert {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(Path::new(path))? {
                roots.add(cert).map_err(|e| {
                    StoreError::Db(format!(
                        "sslrootcert {path}: a certificate cannot be used as a CA ({e})"
                    ))
                })?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth(),
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            StoreError::Db(format!(
                "sslrootcert {}: cannot read PEM certificates ({e}); point it at the database's CA file",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(StoreError::Db(format!(
            "sslrootcert {}: no certificate in the file; point it at the database's CA file",
            path.display()
        )));
    }
    Ok(certs)
}

/// `sslmode=require` without a CA: any certificate, but a real handshake (signatures checked).
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::split_root_cert;

    #[test]
    fn sslrootcert_is_taken_out_of_the_url() {
        assert_eq!(
            split_root_cert("postgres://u:p@h/db?sslmode=require&sslrootcert=/etc/ca.pem"),
            (
                "postgres://u:p@h/db?sslmode=require".to_owned(),
                Some("/etc/ca.pem".to_owned())
            )
        );
        assert_eq!(
            split_root_cert("postgres://u@h/db?sslrootcert=/ca.pem"),
            ("postgres://u@h/db".to_owned(), Some("/ca.pem".to_owned()))
        );
        assert_eq!(
            split_root_cert("postgres://u@h/db"),
            ("postgres://u@h/db".to_owned(), None)
        );
    }
}
