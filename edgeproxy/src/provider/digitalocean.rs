//! The `digitalocean` provider: droplets through the DigitalOcean API v2 (JSON over HTTPS).
//!
//! Replacing a dead node:
//! 1. `POST /v2/droplets` `{name, region, size, image, user_data, tags: [tag]}`, named
//!    `shadow-node-<8 hex>`.
//! 2. Find the dead node's droplet among `GET /v2/droplets?tag_name=<tag>` (all pages): the one
//!    whose name is the node id (the node proxy's default id is the hostname, which is the
//!    droplet's name), or whose public or private IPv4 address is the host of the node's address.
//!    More than one match is an error and nothing is deleted.
//! 3. `DELETE /v2/droplets/{id}`. None found (or a 404 on delete) means it is already gone.
//!
//! API errors surface as the HTTP status with the API's `id` and `message`.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use shadow_common::node::NodeStatus;

use super::{
    address_host, new_node_name, DigitalOceanConfig, NodeProvider, ProviderError, Replacement,
};

const NAME: &str = "digitalocean";
/// The most droplets the API lists per page.
const PER_PAGE: usize = 200;
const TIMEOUT: Duration = Duration::from_secs(30);

/// Creates and deletes droplets.
#[derive(Debug, Clone)]
pub struct DigitalOceanProvider {
    http: reqwest::Client,
    config: DigitalOceanConfig,
}

/// `POST /v2/droplets` body.
#[derive(Debug, Serialize)]
struct CreateDroplet<'a> {
    name: &'a str,
    region: &'a str,
    size: &'a str,
    image: Image<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_data: Option<&'a str>,
    tags: [&'a str; 1],
}

/// An image slug, or a snapshot's numeric id.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Image<'a> {
    Id(u64),
    Slug(&'a str),
}

#[derive(Debug, Deserialize)]
struct DropletOne {
    droplet: Droplet,
}

#[derive(Debug, Deserialize)]
struct DropletList {
    #[serde(default)]
    droplets: Vec<Droplet>,
    #[serde(default)]
    links: Links,
}

#[derive(Debug, Default, Deserialize)]
struct Links {
    #[serde(default)]
    pages: Option<Pages>,
}

#[derive(Debug, Default, Deserialize)]
struct Pages {
    next: Option<String>,
}

/// The parts of a droplet object this provider reads.
#[derive(Debug, Deserialize)]
struct Droplet {
    id: u64,
    name: String,
    #[serde(default)]
    networks: Networks,
}

#[derive(Debug, Default, Deserialize)]
struct Networks {
    #[serde(default)]
    v4: Vec<NetworkV4>,
}

#[derive(Debug, Deserialize)]
struct NetworkV4 {
    ip_address: String,
}

/// The API's error body.
#[derive(Debug, Default, Deserialize)]
struct ApiError {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl DigitalOceanProvider {
    pub fn new(config: DigitalOceanConfig) -> Result<Self, ProviderError> {
        for (value, var) in [
            (&config.token, "SHADOW_DO_TOKEN"),
            (&config.api_base, "SHADOW_DO_API_BASE"),
            (&config.region, "SHADOW_DO_REGION"),
            (&config.size, "SHADOW_DO_SIZE"),
            (&config.image, "SHADOW_DO_IMAGE"),
            (&config.tag, "SHADOW_DO_TAG"),
        ] {
            if value.trim().is_empty() {
                return Err(ProviderError::Config {
                    provider: NAME,
                    message: format!("{var} is empty; set it to replace nodes with droplets"),
                });
            }
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| ProviderError::Config {
                provider: NAME,
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(Self { http, config })
    }

    /// One API call; `None` for an empty success body (e.g. 204 on delete).
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        action: &'static str,
        method: Method,
        path_and_query: &str,
        body: Option<&B>,
    ) -> Result<Option<T>, ProviderError> {
        let url = format!(
            "{}{path_and_query}",
            self.config.api_base.trim_end_matches('/')
        );
        let mut req = self
            .http
            .request(method, &url)
            .bearer_auth(&self.config.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let transport = |e: reqwest::Error| ProviderError::Api {
            provider: NAME,
            action,
            status: None,
            message: format!("cannot reach {url}: {e}"),
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport)?;
        if !status.is_success() {
            let err: ApiError = serde_json::from_slice(&bytes).unwrap_or_default();
            let message = match (err.id, err.message) {
                (Some(id), Some(m)) => format!("{id}: {m}"),
                (None, Some(m)) => m,
                _ => String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            };
            return Err(ProviderError::Api {
                provider: NAME,
                action,
                status: Some(status.as_u16()),
                message,
            });
        }
        if bytes.is_empty() || status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ProviderError::Api {
                provider: NAME,
                action,
                status: Some(status.as_u16()),
                message: format!("unexpected answer: {e}"),
            })
    }

    async fn create(&self) -> Result<Droplet, ProviderError> {
        let name = new_node_name();
        let image = match self.config.image.parse::<u64>() {
            Ok(id) => Image::Id(id),
            Err(_) => Image::Slug(&self.config.image),
        };
        let body = CreateDroplet {
            name: &name,
            region: &self.config.region,
            size: &self.config.size,
            image,
            user_data: self.config.user_data.as_deref(),
            tags: [&self.config.tag],
        };
        let created: Option<DropletOne> = self
            .call("create droplet", Method::POST, "/v2/droplets", Some(&body))
            .await?;
        created.map(|c| c.droplet).ok_or(ProviderError::Api {
            provider: NAME,
            action: "create droplet",
            status: None,
            message: "the answer has no droplet".into(),
        })
    }

    /// All droplets with the node tag, following the pages.
    async fn tagged(&self) -> Result<Vec<Droplet>, ProviderError> {
        let mut all = Vec::new();
        for page in 1.. {
            let path = format!(
                "/v2/droplets?tag_name={}&per_page={PER_PAGE}&page={page}",
                self.config.tag
            );
            let list: DropletList = self
                .call::<(), _>("list droplets", Method::GET, &path, None)
                .await?
                .unwrap_or(DropletList {
                    droplets: vec![],
                    links: Links::default(),
                });
            let n = list.droplets.len();
            all.extend(list.droplets);
            let more = list.links.pages.and_then(|p| p.next).is_some();
            if !more || n == 0 {
                break;
            }
        }
        Ok(all)
    }

    async fn find_dead(
        &self,
        dead: &NodeStatus,
        launched: u64,
    ) -> Result<Option<u64>, ProviderError> {
        let host = address_host(&dead.address);
        let mut ids: Vec<u64> = self
            .tagged()
            .await?
            .into_iter()
            .filter(|d| d.id != launched)
            .filter(|d| d.name == dead.id || d.networks.v4.iter().any(|n| n.ip_address == host))
            .map(|d| d.id)
            .collect();
        match ids.len() {
            0 => Ok(None),
            1 => Ok(ids.pop()),
            count => Err(ProviderError::Ambiguous {
                provider: NAME,
                node: dead.id.clone(),
                count,
                ids: ids
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    async fn remove(
        &self,
        dead: &NodeStatus,
        launched: u64,
    ) -> Result<Option<String>, ProviderError> {
        let Some(id) = self.find_dead(dead, launched).await? else {
            tracing::warn!(node = %dead.id, address = %dead.address, tag = %self.config.tag, "found no droplet of the dead node (by name or IP); it seems gone already");
            return Ok(None);
        };
        let path = format!("/v2/droplets/{id}");
        match self
            .call::<(), serde_json::Value>("delete droplet", Method::DELETE, &path, None)
            .await
        {
            Ok(_) => {}
            Err(ProviderError::Api {
                status: Some(404), ..
            }) => {
                tracing::info!(node = %dead.id, droplet = id, "the dead node's droplet was deleted meanwhile");
            }
            Err(e) => return Err(e),
        }
        Ok(Some(id.to_string()))
    }
}

#[async_trait]
impl NodeProvider for DigitalOceanProvider {
    async fn replace(&self, dead: &NodeStatus) -> Result<Replacement, ProviderError> {
        let created = self.create().await?;
        tracing::info!(node = %dead.id, droplet = created.id, name = %created.name, "created a droplet to replace the dead node");
        let removed = self
            .remove(dead, created.id)
            .await
            .map_err(|e| ProviderError::Partial {
                launched: format!("droplet {}", created.id),
                node: dead.id.clone(),
                source: Box::new(e),
            })?;
        Ok(Replacement {
            new_instance: Some(created.id.to_string()),
            removed,
        })
    }

    fn name(&self) -> &'static str {
        NAME
    }
}
