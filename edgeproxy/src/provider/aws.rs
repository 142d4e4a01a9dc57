//! The `aws` provider: EC2 instances from a launch template.
//!
//! Replacing a dead node:
//! 1. `RunInstances` with the launch template's `$Latest` version, one instance, tagged
//!    `shadow-node=true`, `Name=shadow-node-<8 hex>` and `shadow-replaces=<dead node id>`.
//! 2. Find the dead node's instance among those tagged `shadow-node=true` and not terminated:
//!    first by the tag `shadow-node-id=<node id>` (set it in the launch template's user data or by
//!    Terraform when the node id is not the instance's private DNS name); if none has it, by the
//!    node's address: its host as `private-ip-address` (an IP) or `private-dns-name` (a name).
//!    More than one match is an error and nothing is terminated.
//! 3. `TerminateInstances` of that instance. None found means it is already gone: not an error.

use std::net::IpAddr;

use async_trait::async_trait;
use aws_sdk_ec2::{
    config::http::HttpResponse,
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    types::{Filter, LaunchTemplateSpecification, ResourceType, Tag, TagSpecification},
    Client,
};
use shadow_common::node::NodeStatus;

use super::{
    address_host, new_node_name, AwsConfig, NodeProvider, ProviderError, Replacement, NODE_TAG,
};

const NAME: &str = "aws";
/// The tag that names the node id an instance runs, for finding a dead node's instance.
pub const NODE_ID_TAG: &str = "shadow-node-id";
/// States of an instance that may still cost money.
const NOT_TERMINATED: [&str; 4] = ["pending", "running", "stopping", "stopped"];

/// Starts and terminates EC2 instances.
#[derive(Debug, Clone)]
pub struct AwsProvider {
    client: Client,
    template: LaunchTemplateSpecification,
}

impl AwsProvider {
    /// A provider on a ready EC2 client; `launch_template` is an id (`lt-…`) or a name.
    pub fn new(client: Client, launch_template: &str) -> Self {
        let spec = LaunchTemplateSpecification::builder().version("$Latest");
        let spec = if launch_template.starts_with("lt-") {
            spec.launch_template_id(launch_template)
        } else {
            spec.launch_template_name(launch_template)
        };
        Self {
            client,
            template: spec.build(),
        }
    }

    /// Loads region and credentials the SDK's usual way; `region` and `endpoint` override.
    pub async fn from_config(config: &AwsConfig) -> Result<Self, ProviderError> {
        if config.launch_template.trim().is_empty() {
            return Err(ProviderError::Config {
                provider: NAME,
                message: "set SHADOW_AWS_LAUNCH_TEMPLATE to the launch template (name or lt-… id) new nodes start from".into(),
            });
        }
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https_client());
        if let Some(region) = &config.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint.clone());
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(ProviderError::Config {
                provider: NAME,
                message: "no AWS region: set SHADOW_AWS_REGION (or AWS_REGION)".into(),
            });
        }
        Ok(Self::new(Client::new(&sdk), &config.launch_template))
    }

    async fn launch(&self, dead: &NodeStatus) -> Result<String, ProviderError> {
        let name = new_node_name();
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .tags(tag(NODE_TAG, "true"))
            .tags(tag("Name", &name))
            .tags(tag("shadow-replaces", &dead.id))
            .build();
        let out = self
            .client
            .run_instances()
            .launch_template(self.template.clone())
            .min_count(1)
            .max_count(1)
            .tag_specifications(tags)
            .send()
            .await
            .map_err(|e| api_error("RunInstances", e))?;
        out.instances()
            .first()
            .and_then(|i| i.instance_id())
            .map(str::to_string)
            .ok_or_else(|| ProviderError::Api {
                provider: NAME,
                action: "RunInstances",
                status: None,
                message: "the answer names no instance".into(),
            })
    }

    /// Ids of the not-terminated `shadow-node` instances matching `filter`.
    async fn instances(&self, filter: Filter) -> Result<Vec<String>, ProviderError> {
        let pages = self
            .client
            .describe_instances()
            .filters(tag_filter(NODE_TAG, "true"))
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .set_values(Some(NOT_TERMINATED.map(String::from).to_vec()))
                    .build(),
            )
            .filters(filter)
            .into_paginator()
            .send()
            .try_collect()
            .await
            .map_err(|e| api_error("DescribeInstances", e))?;
        Ok(pages
            .iter()
            .flat_map(|p| p.reservations())
            .flat_map(|r| r.instances())
            .filter_map(|i| i.instance_id().map(str::to_string))
            .collect())
    }

    /// The dead node's instance: by its `shadow-node-id` tag, else by its address.
    async fn find_dead(
        &self,
        dead: &NodeStatus,
        launched: &str,
    ) -> Result<Option<String>, ProviderError> {
        let mut ids = self.instances(tag_filter(NODE_ID_TAG, &dead.id)).await?;
        if ids.is_empty() {
            let host = address_host(&dead.address);
            let by = if host.parse::<IpAddr>().is_ok() {
                "private-ip-address"
            } else {
                "private-dns-name"
            };
            ids = self
                .instances(Filter::builder().name(by).values(host).build())
                .await?;
        }
        ids.retain(|id| id != launched);
        match ids.len() {
            0 => Ok(None),
            1 => Ok(ids.pop()),
            count => Err(ProviderError::Ambiguous {
                provider: NAME,
                node: dead.id.clone(),
                count,
                ids: ids.join(", "),
            }),
        }
    }

    async fn remove(
        &self,
        dead: &NodeStatus,
        launched: &str,
    ) -> Result<Option<String>, ProviderError> {
        let Some(id) = self.find_dead(dead, launched).await? else {
            tracing::warn!(node = %dead.id, address = %dead.address, "found no instance of the dead node (tag {NODE_ID_TAG} or private address); it seems gone already");
            return Ok(None);
        };
        self.client
            .terminate_instances()
            .instance_ids(&id)
            .send()
            .await
            .map_err(|e| api_error("TerminateInstances", e))?;
        Ok(Some(id))
    }
}

#[async_trait]
impl NodeProvider for AwsProvider {
    async fn replace(&self, dead: &NodeStatus) -> Result<Replacement, ProviderError> {
        let launched = self.launch(dead).await?;
        tracing::info!(node = %dead.id, instance = %launched, "started an instance to replace the dead node");
        let removed = self
            .remove(dead, &launched)
            .await
            .map_err(|e| ProviderError::Partial {
                launched: launched.clone(),
                node: dead.id.clone(),
                source: Box::new(e),
            })?;
        Ok(Replacement {
            new_instance: Some(launched),
            removed,
        })
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

/// The HTTPS client the workspace's AWS clients share: rustls with ring.
pub fn https_client() -> aws_sdk_ec2::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{key}"))
        .values(value)
        .build()
}

fn api_error<E>(action: &'static str, e: SdkError<E, HttpResponse>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = e.raw_response().map(|r| r.status().as_u16());
    let message = match (e.code(), e.message()) {
        (Some(code), Some(msg)) => format!("{code}: {msg}"),
        (Some(code), None) => code.to_string(),
        _ => DisplayErrorContext(&e).to_string(),
    };
    ProviderError::Api {
        provider: NAME,
        action,
        status,
        message,
    }
}
