//! Builds the S3 client from the node's settings: rustls (ring) over hyper for HTTPS and plain
//! HTTP alike, the configured endpoint (empty = AWS), path-style addressing when asked, and the
//! access/secret key when both are given, else the SDK's usual credential chain (environment,
//! profile files, web identity, ECS, EC2 instance metadata).

use aws_config::BehaviorVersion;
use aws_sdk_s3::{
    config::{Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation},
    Client,
};
use aws_smithy_http_client::{
    tls::{rustls_provider::CryptoMode, Provider},
    Builder,
};

/// The S3 settings of a node, as in [`crate::config::NodeConfig`].
#[derive(Clone, Default)]
pub struct S3Settings {
    /// Empty or `None` = AWS.
    pub endpoint: Option<String>,
    /// `None` = us-east-1.
    pub region: Option<String>,
    pub path_style: bool,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key", &self.access_key.as_ref().map(|_| "<set>"))
            .field("secret_key", &self.secret_key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl S3Settings {
    pub fn region(&self) -> String {
        self.region
            .clone()
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| "us-east-1".into())
    }
}

pub async fn build(s: &S3Settings) -> Result<Client, String> {
    let http = Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(s.region()));
    match (&s.access_key, &s.secret_key) {
        (Some(ak), Some(sk)) => {
            loader = loader.credentials_provider(Credentials::new(
                ak.clone(),
                sk.clone(),
                None,
                None,
                "shadow-node-config",
            ));
        }
        (None, None) => {}
        _ => {
            return Err(
                "set both SHADOW_S3_ACCESS_KEY and SHADOW_S3_SECRET_KEY, or neither to use the \
                 SDK's credential chain"
                    .into(),
            )
        }
    }
    let shared = loader.load().await;
    let mut conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(s.path_style)
        // Checksums only where S3 requires them: many S3-compatible servers reject the newer
        // default ones, and snapshots carry their own checksum.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if let Some(endpoint) = s.endpoint.as_deref().filter(|e| !e.trim().is_empty()) {
        conf = conf.endpoint_url(endpoint.trim());
    }
    Ok(Client::from_conf(conf.build()))
}
