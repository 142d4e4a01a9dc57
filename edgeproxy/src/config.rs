//! The edge proxy's configuration: flags, `SHADOW_*` variables and an optional TOML file.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    provider::{AwsConfig, DigitalOceanConfig, ProviderConfig, NODE_TAG},
    replacer::ReplacerConfig,
};

/// Command line; every option can also come from the environment or the config file.
#[derive(Debug, clap::Parser, Serialize)]
#[command(
    name = "shadow-edgeproxy",
    version,
    about = "Shadow's edge proxy: routes each app's domain, sticky, to a healthy node"
)]
pub struct Cli {
    /// TOML config file (keys as the long flags, with '_').
    #[arg(long, env = "SHADOW_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on for HTTP [default: 127.0.0.1:8080].
    #[arg(long, env = "SHADOW_EDGE_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Address of the admin listener: the edge's own /healthz and /metrics, never served on the
    /// public listeners [default: 127.0.0.1:7080].
    #[arg(long, env = "SHADOW_EDGE_ADMIN_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    /// Seconds a client may take to send a request head (also the idle keep-alive limit) [default: 10].
    #[arg(long, env = "SHADOW_CLIENT_HEADER_TIMEOUT_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_header_timeout_s: Option<u64>,
    /// Seconds a request body may go without a byte before it is cut with 408 [default: 30].
    #[arg(long, env = "SHADOW_CLIENT_BODY_STALL_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_body_stall_s: Option<u64>,
    /// Open connections per client IP address; more get 429 [default: 256].
    #[arg(long, env = "SHADOW_CLIENT_MAX_PER_IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_max_per_ip: Option<usize>,
    /// Open client connections in all; more get 503 [default: 20000].
    #[arg(long, env = "SHADOW_CLIENT_MAX_TOTAL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_max_total: Option<usize>,
    /// Addresses (CIDRs, comma-separated) of proxies in front of this edge whose X-Forwarded-*
    /// and Forwarded headers are kept and appended to; from anyone else they are replaced
    /// [default: none].
    #[arg(long, env = "SHADOW_EDGE_TRUSTED_PROXIES", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_proxies: Option<Vec<String>>,
    /// Seconds between checks of the certificate and key files; changed files are loaded
    /// without a restart [default: 10].
    #[arg(long, env = "SHADOW_EDGE_TLS_RELOAD_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_reload_s: Option<u64>,
    /// ACME directory URL (e.g. https://acme-v02.api.letsencrypt.org/directory); set, the edges
    /// obtain and renew a certificate for every task domain; unset = ACME off [default: unset].
    #[arg(long, env = "SHADOW_EDGE_ACME_DIRECTORY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme_directory: Option<String>,
    /// Contact addresses for the ACME account, comma-separated (e.g. mailto:ops@example.com).
    #[arg(long, env = "SHADOW_EDGE_ACME_CONTACT", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme_contact: Option<Vec<String>>,
    /// PEM file of the CA that signed the ACME server's own TLS certificate, for a private ACME
    /// server [default: the system's roots].
    #[arg(long, env = "SHADOW_EDGE_ACME_CA_ROOT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme_ca_root: Option<PathBuf>,
    /// The challenge answered: http-01 (port 80) or tls-alpn-01 (port 443) [default: http-01].
    #[arg(long, env = "SHADOW_EDGE_ACME_CHALLENGE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme_challenge: Option<String>,
    /// Renew a certificate this many seconds before it expires (30 days) [default: 2592000].
    #[arg(long, env = "SHADOW_EDGE_ACME_RENEW_BEFORE_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme_renew_before_s: Option<u64>,
    /// Seconds between looks for domains that need a certificate [default: 60].
    #[arg(long, env = "SHADOW_EDGE_ACME_CHECK_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme_check_s: Option<u64>,
    /// This edge's id, for logs and the replacement lock [default: the hostname].
    #[arg(long, env = "SHADOW_EDGE_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_id: Option<String>,
    /// The master's URL [default: http://127.0.0.1:7070].
    #[arg(long, env = "SHADOW_MASTER_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// Interval of active health checks of every node [default: 1000].
    #[arg(long, env = "SHADOW_HEALTH_INTERVAL_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_interval_ms: Option<u64>,
    /// Failed checks (or refused/reset connections) before a node is unhealthy [default: 3].
    #[arg(long, env = "SHADOW_HEALTH_FAILS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_fails: Option<u32>,
    /// Threads serving connections, each with its own event loop; 0 = one per CPU [default: 0].
    #[arg(long, env = "SHADOW_WORKERS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Passed checks before an unhealthy node gets traffic again [default: 2].
    #[arg(long, env = "SHADOW_HEALTH_PASSES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_passes: Option<u32>,
    /// Address for HTTPS; unset = no TLS listener.
    #[arg(long, env = "SHADOW_EDGE_TLS_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chains, comma-separated; the one presented is picked by SNI.
    #[arg(long, env = "SHADOW_EDGE_TLS_CERT", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<Vec<PathBuf>>,
    /// PEM private keys, comma-separated, one per certificate in the same order.
    #[arg(long, env = "SHADOW_EDGE_TLS_KEY", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<Vec<PathBuf>>,
    /// Who replaces dead nodes: static (log only), aws or digitalocean [default: static].
    #[arg(long, env = "SHADOW_NODE_PROVIDER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_provider: Option<String>,
    /// Seconds a node must stay unhealthy before it is replaced [default: 10].
    #[arg(long, env = "SHADOW_REPLACE_GRACE_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replace_grace_s: Option<u64>,
    /// At most one replacement attempt per node per this many seconds [default: 300].
    #[arg(long, env = "SHADOW_REPLACE_COOLDOWN_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replace_cooldown_s: Option<u64>,
    /// Nodes dead longer than this are left alone [default: 3600].
    #[arg(long, env = "SHADOW_REPLACE_MAX_DEAD_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replace_max_dead_s: Option<u64>,
    /// aws: the node launch template, by name or lt- id.
    #[arg(long, env = "SHADOW_AWS_LAUNCH_TEMPLATE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_launch_template: Option<String>,
    /// aws: region [default: the SDK's chain].
    #[arg(long, env = "SHADOW_AWS_REGION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_region: Option<String>,
    /// aws: EC2 endpoint override [default: AWS].
    #[arg(long, env = "SHADOW_AWS_ENDPOINT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_endpoint: Option<String>,
    /// digitalocean: API base [default: https://api.digitalocean.com].
    #[arg(long, env = "SHADOW_DO_API_BASE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_api_base: Option<String>,
    /// digitalocean: region of new node droplets, e.g. fra1.
    #[arg(long, env = "SHADOW_DO_REGION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_region: Option<String>,
    /// digitalocean: size slug of new node droplets.
    #[arg(long, env = "SHADOW_DO_SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_size: Option<String>,
    /// digitalocean: image slug or snapshot id of new node droplets.
    #[arg(long, env = "SHADOW_DO_IMAGE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_image: Option<String>,
    /// digitalocean: cloud-init user data for new node droplets.
    #[arg(long, env = "SHADOW_DO_USER_DATA")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_user_data: Option<String>,
    /// digitalocean: tag on node droplets [default: shadow-node].
    #[arg(long, env = "SHADOW_DO_TAG")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_tag: Option<String>,
    /// digitalocean: API token. Env only (SHADOW_DO_TOKEN).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_token: Option<String>,
    /// Bearer token for the master. Env only (SHADOW_API_TOKEN), so it never shows in `ps`.
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default = "default_tls_reload_s")]
    pub tls_reload_s: u64,
    #[serde(default = "default_client_header_timeout_s")]
    pub client_header_timeout_s: u64,
    #[serde(default = "default_client_body_stall_s")]
    pub client_body_stall_s: u64,
    #[serde(default = "default_client_max_per_ip")]
    pub client_max_per_ip: usize,
    #[serde(default = "default_client_max_total")]
    pub client_max_total: usize,
    #[serde(default)]
    pub acme_directory: Option<String>,
    #[serde(default)]
    pub acme_contact: Vec<String>,
    #[serde(default)]
    pub acme_ca_root: Option<PathBuf>,
    #[serde(default = "default_acme_challenge")]
    pub acme_challenge: String,
    #[serde(default = "default_acme_renew_before_s")]
    pub acme_renew_before_s: u64,
    #[serde(default = "default_acme_check_s")]
    pub acme_check_s: u64,
    #[serde(default = "default_edge_id")]
    pub edge_id: String,
    #[serde(default = "default_master")]
    pub master: String,
    #[serde(default = "default_health_interval_ms")]
    pub health_interval_ms: u64,
    #[serde(default = "default_health_fails")]
    pub health_fails: u32,
    #[serde(default = "default_health_passes")]
    pub health_passes: u32,
    #[serde(default)]
    pub workers: usize,
    #[serde(default)]
    pub tls_listen: Option<SocketAddr>,
    #[serde(default)]
    pub tls_cert: Vec<PathBuf>,
    #[serde(default)]
    pub tls_key: Vec<PathBuf>,
    #[serde(default)]
    pub api_token: Option<String>,
    #[serde(default = "default_provider")]
    pub node_provider: String,
    #[serde(default = "default_grace_s")]
    pub replace_grace_s: u64,
    #[serde(default = "default_cooldown_s")]
    pub replace_cooldown_s: u64,
    #[serde(default = "default_max_dead_s")]
    pub replace_max_dead_s: u64,
    #[serde(default)]
    pub aws_launch_template: Option<String>,
    #[serde(default)]
    pub aws_region: Option<String>,
    #[serde(default)]
    pub aws_endpoint: Option<String>,
    #[serde(default)]
    pub do_api_base: Option<String>,
    #[serde(default)]
    pub do_region: Option<String>,
    #[serde(default)]
    pub do_size: Option<String>,
    #[serde(default)]
    pub do_image: Option<String>,
    #[serde(default)]
    pub do_user_data: Option<String>,
    #[serde(default)]
    pub do_tag: Option<String>,
    #[serde(default)]
    pub do_token: Option<String>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_edge_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| format!("edge-{}", h.trim()))
        .unwrap_or_else(|| "edge".into())
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7080))
}
fn default_acme_challenge() -> String {
    "http-01".into()
}
fn default_acme_renew_before_s() -> u64 {
    30 * 24 * 3600
}
fn default_acme_check_s() -> u64 {
    60
}
fn default_tls_reload_s() -> u64 {
    10
}
fn default_client_header_timeout_s() -> u64 {
    10
}
fn default_client_body_stall_s() -> u64 {
    30
}
fn default_client_max_per_ip() -> usize {
    256
}
fn default_client_max_total() -> usize {
    20_000
}
fn default_master() -> String {
    "http://127.0.0.1:7070".into()
}
fn default_health_interval_ms() -> u64 {
    1000
}
fn default_health_fails() -> u32 {
    3
}
fn default_health_passes() -> u32 {
    2
}
fn default_provider() -> String {
    "static".into()
}
fn default_grace_s() -> u64 {
    10
}
fn default_cooldown_s() -> u64 {
    300
}
fn default_max_dead_s() -> u64 {
    3600
}

impl EdgeConfig {
    /// The bounds on clients of the public listeners.
    pub fn client_limits(&self) -> std::sync::Arc<shadow_common::proxy::ClientLimits> {
        shadow_common::proxy::ClientLimits::new(
            std::time::Duration::from_secs(self.client_header_timeout_s.max(1)),
            self.client_max_per_ip.max(1),
            self.client_max_total.max(1),
        )
    }

    /// The trusted proxies' networks; an error names the entry that is not an address or CIDR.
    pub fn trusted_proxies(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.trusted_proxies
            .iter()
            .map(|t| {
                let t = t.trim();
                t.parse::<ipnet::IpNet>()
                    .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        format!("SHADOW_EDGE_TRUSTED_PROXIES: {t:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)")
                    })
            })
            .collect()
    }

    pub fn client_body_stall(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.client_body_stall_s.max(1))
    }

    /// Defaults with a given id and master, for tests and embedding.
    pub fn new(edge_id: impl Into<String>, master: impl Into<String>) -> Self {
        Self {
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            trusted_proxies: vec![],
            tls_reload_s: default_tls_reload_s(),
            acme_directory: None,
            acme_contact: vec![],
            acme_ca_root: None,
            acme_challenge: default_acme_challenge(),
            acme_renew_before_s: default_acme_renew_before_s(),
            acme_check_s: default_acme_check_s(),
            client_header_timeout_s: default_client_header_timeout_s(),
            client_body_stall_s: default_client_body_stall_s(),
            client_max_per_ip: default_client_max_per_ip(),
            client_max_total: default_client_max_total(),
            edge_id: edge_id.into(),
            master: master.into(),
            health_interval_ms: default_health_interval_ms(),
            health_fails: default_health_fails(),
            health_passes: default_health_passes(),
            workers: 0,
            tls_listen: None,
            tls_cert: vec![],
            tls_key: vec![],
            api_token: None,
            node_provider: default_provider(),
            replace_grace_s: default_grace_s(),
            replace_cooldown_s: default_cooldown_s(),
            replace_max_dead_s: default_max_dead_s(),
            aws_launch_template: None,
            aws_region: None,
            aws_endpoint: None,
            do_api_base: None,
            do_region: None,
            do_size: None,
            do_image: None,
            do_user_data: None,
            do_tag: None,
            do_token: None,
        }
    }
    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms.max(10))
    }
}

impl EdgeConfig {
    /// The node provider's settings, checked: what is missing is named with its variable.
    pub fn provider(&self) -> Result<ProviderConfig, String> {
        fn need(v: &Option<String>, var: &str, provider: &str) -> Result<String, String> {
            v.clone()
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| format!("SHADOW_NODE_PROVIDER={provider} needs {var}"))
        }
        match self.node_provider.as_str() {
            "static" => Ok(ProviderConfig::Static),
            "aws" => Ok(ProviderConfig::Aws(AwsConfig {
                launch_template: need(
                    &self.aws_launch_template,
                    "SHADOW_AWS_LAUNCH_TEMPLATE",
                    "aws",
                )?,
                region: self.aws_region.clone(),
                endpoint: self.aws_endpoint.clone(),
            })),
            "digitalocean" => Ok(ProviderConfig::DigitalOcean(DigitalOceanConfig {
                token: need(&self.do_token, "SHADOW_DO_TOKEN", "digitalocean")?,
                api_base: self
                    .do_api_base
                    .clone()
                    .unwrap_or_else(|| DigitalOceanConfig::API_BASE.to_string()),
                region: need(&self.do_region, "SHADOW_DO_REGION", "digitalocean")?,
                size: need(&self.do_size, "SHADOW_DO_SIZE", "digitalocean")?,
                image: need(&self.do_image, "SHADOW_DO_IMAGE", "digitalocean")?,
                user_data: self.do_user_data.clone(),
                tag: self.do_tag.clone().unwrap_or_else(|| NODE_TAG.to_string()),
            })),
            other => Err(format!(
                "SHADOW_NODE_PROVIDER={other:?} is not a provider; use static, aws or digitalocean"
            )),
        }
    }

    /// The ACME settings, when a directory is set; a bad challenge name is an error.
    pub fn acme(&self) -> Result<Option<crate::acme::AcmeConfig>, String> {
        let Some(directory) = self.acme_directory.clone() else {
            return Ok(None);
        };
        let challenge = match self.acme_challenge.as_str() {
            "http-01" => crate::acme::ChallengeKind::Http01,
            "tls-alpn-01" => crate::acme::ChallengeKind::TlsAlpn01,
            other => {
                return Err(format!(
                    "SHADOW_EDGE_ACME_CHALLENGE is {other:?}; use http-01 or tls-alpn-01"
                ))
            }
        };
        if challenge == crate::acme::ChallengeKind::TlsAlpn01 && self.tls_listen.is_none() {
            return Err("SHADOW_EDGE_ACME_CHALLENGE=tls-alpn-01 needs the HTTPS listener: set SHADOW_EDGE_TLS_LISTEN (port 443), or use http-01".into());
        }
        Ok(Some(crate::acme::AcmeConfig {
            directory,
            contact: self.acme_contact.clone(),
            ca_root: self.acme_ca_root.clone(),
            challenge,
            renew_before: Duration::from_secs(self.acme_renew_before_s),
            check_every: Duration::from_secs(self.acme_check_s.max(1)),
            ..crate::acme::AcmeConfig::default()
        }))
    }

    pub fn replacer(&self) -> ReplacerConfig {
        ReplacerConfig {
            grace: Duration::from_secs(self.replace_grace_s),
            cooldown: Duration::from_secs(self.replace_cooldown_s),
            max_dead: Duration::from_secs(self.replace_max_dead_s),
            ..ReplacerConfig::default()
        }
    }
}
