//! Node providers: how the edge replaces a dead node (start a new one, then remove the dead one).
//!
//! One implementation is chosen at start-up from [`ProviderConfig`] by [`build`]:
//! - [`static_provider`]: no cloud API; logs what an operator should do and counts it.
//! - [`aws`]: EC2 `RunInstances` from a launch template, then `TerminateInstances` of the dead one.
//! - [`digitalocean`]: `POST /v2/droplets`, then `DELETE /v2/droplets/{id}` of the dead one.
//!
//! The [`crate::replacer`] decides when a node is dead enough and calls [`NodeProvider::replace`].

pub mod aws;
pub mod digitalocean;
pub mod static_provider;

use std::{fmt, sync::Arc};

use async_trait::async_trait;
use shadow_common::node::NodeStatus;

/// Tag (AWS: tag key with value `true`; DigitalOcean: tag name) on every machine Shadow starts.
/// Only machines carrying it are ever removed.
pub const NODE_TAG: &str = "shadow-node";

/// Starts a machine to take a dead node's place and removes the dead one.
#[async_trait]
pub trait NodeProvider: Send + Sync {
    /// Starts a new node, then removes the dead one. A dead machine that cannot be found any
    /// more (already gone) is not an error: `removed` is then `None`.
    async fn replace(&self, dead: &NodeStatus) -> Result<Replacement, ProviderError>;

    /// The provider's name, as in the config and the metrics' `provider` label.
    fn name(&self) -> &'static str;
}

/// What a replacement did, in the provider's own ids (EC2 instance id, droplet id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replacement {
    /// The machine started in the dead node's place.
    pub new_instance: Option<String>,
    /// The dead node's machine, now terminating.
    pub removed: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("the {provider} node provider is misconfigured: {message}")]
    Config {
        provider: &'static str,
        message: String,
    },
    #[error("{provider}: {action} failed{}: {message}", .status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Api {
        provider: &'static str,
        action: &'static str,
        status: Option<u16>,
        message: String,
    },
    #[error("{provider}: {count} machines match dead node {node} ({ids}); removed none of them, remove the right one by hand")]
    Ambiguous {
        provider: &'static str,
        node: String,
        count: usize,
        ids: String,
    },
    #[error("started {launched} to replace node {node}, but could not remove the dead machine: {source}")]
    Partial {
        launched: String,
        node: String,
        #[source]
        source: Box<ProviderError>,
    },
}

/// Which provider replaces dead nodes, and its settings.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum ProviderConfig {
    /// `SHADOW_NODE_PROVIDER=static` (the default): log and count, replace nothing.
    #[default]
    Static,
    /// `SHADOW_NODE_PROVIDER=aws`.
    Aws(AwsConfig),
    /// `SHADOW_NODE_PROVIDER=digitalocean`.
    DigitalOcean(DigitalOceanConfig),
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProviderConfig::Static => f.write_str("Static"),
            ProviderConfig::Aws(c) => f.debug_tuple("Aws").field(c).finish(),
            ProviderConfig::DigitalOcean(c) => f.debug_tuple("DigitalOcean").field(c).finish(),
        }
    }
}

/// Settings of the `aws` provider. Credentials come from the SDK's usual chain (environment,
/// profile, web identity, ECS, instance metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConfig {
    /// `SHADOW_AWS_LAUNCH_TEMPLATE` (required): the launch template new nodes start from, by id
    /// when it starts with `lt-`, else by name; always its `$Latest` version.
    pub launch_template: String,
    /// `SHADOW_AWS_REGION` [default: the SDK's chain: `AWS_REGION`, profile, instance metadata].
    pub region: Option<String>,
    /// `SHADOW_AWS_ENDPOINT` [default: AWS's own]: another EC2 endpoint, e.g. moto in tests.
    pub endpoint: Option<String>,
}

/// Settings of the `digitalocean` provider.
#[derive(Clone, PartialEq, Eq)]
pub struct DigitalOceanConfig {
    /// `SHADOW_DO_TOKEN` (required): an API token with droplet read/create/delete scopes.
    pub token: String,
    /// `SHADOW_DO_API_BASE` [default: `https://api.digitalocean.com`].
    pub api_base: String,
    /// `SHADOW_DO_REGION` (required), e.g. `fra1`.
    pub region: String,
    /// `SHADOW_DO_SIZE` (required), e.g. `s-2vcpu-4gb`.
    pub size: String,
    /// `SHADOW_DO_IMAGE` (required): an image slug, or a snapshot's numeric id.
    pub image: String,
    /// `SHADOW_DO_USER_DATA` [default: none]: cloud-init user data that starts the node proxy.
    pub user_data: Option<String>,
    /// `SHADOW_DO_TAG` [default: `shadow-node`]: the tag on every node droplet; only droplets
    /// with it are ever deleted.
    pub tag: String,
}

impl DigitalOceanConfig {
    /// The default API base.
    pub const API_BASE: &'static str = "https://api.digitalocean.com";
}

impl fmt::Debug for DigitalOceanConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigitalOceanConfig")
            .field("token", &"<redacted>")
            .field("api_base", &self.api_base)
            .field("region", &self.region)
            .field("size", &self.size)
            .field("image", &self.image)
            .field("user_data", &self.user_data.as_ref().map(|u| u.len()))
            .field("tag", &self.tag)
            .finish()
    }
}

/// Builds the configured provider; AWS loads its region and credentials chain here.
pub async fn build(config: &ProviderConfig) -> Result<Arc<dyn NodeProvider>, ProviderError> {
    Ok(match config {
        ProviderConfig::Static => Arc::new(static_provider::StaticProvider),
        ProviderConfig::Aws(c) => Arc::new(aws::AwsProvider::from_config(c).await?),
        ProviderConfig::DigitalOcean(c) => {
            Arc::new(digitalocean::DigitalOceanProvider::new(c.clone())?)
        }
    })
}

/// The host part of a node's `host:port` address, without IPv6 brackets.
pub(crate) fn address_host(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A fresh name for a new node machine: `shadow-node-` and 8 hex digits.
pub(crate) fn new_node_name() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{NODE_TAG}-{}", &id[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_host_strips_port_and_brackets() {
        assert_eq!(address_host("10.0.0.5:7071"), "10.0.0.5");
        assert_eq!(address_host("[fd00::5]:7071"), "fd00::5");
        assert_eq!(address_host("node-a.internal:7071"), "node-a.internal");
        assert_eq!(address_host("bare"), "bare");
    }

    #[test]
    fn new_names_are_unique_and_shaped() {
        let (a, b) = (new_node_name(), new_node_name());
        assert_ne!(a, b);
        assert!(a.starts_with("shadow-node-") && a.len() == 20, "{a}");
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let c = ProviderConfig::DigitalOcean(DigitalOceanConfig {
            token: "dop_v1_secret".into(),
            api_base: DigitalOceanConfig::API_BASE.into(),
            region: "fra1".into(),
            size: "s-1vcpu-1gb".into(),
            image: "ubuntu-24-04-x64".into(),
            user_data: None,
            tag: NODE_TAG.into(),
        });
        assert!(!format!("{c:?}").contains("secret"));
    }
}
