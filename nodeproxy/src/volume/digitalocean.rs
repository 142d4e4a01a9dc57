//! The `do` backend's cloud part: DigitalOcean block storage volumes through its REST API.
//!
//! A task's volume is named `shadow-<task id>` (created with `volume.size_gb` in this droplet's
//! region when there is none). Attach and detach are actions, polled until `completed`. A volume
//! still attached to another droplet belongs to a node whose lease lapsed (this node holds the
//! lease now; the fence is checked again first), so it is detached from that droplet first.
//! DigitalOcean cannot move a volume between regions, so a volume in another region is an error
//! that says where the app can run.
//!
//! The droplet id and region come from the metadata service unless set
//! (`SHADOW_DO_DROPLET_ID`, `SHADOW_DO_REGION`); the token from `SHADOW_DO_TOKEN`; the API base
//! from `SHADOW_DO_API`. The device shows up as `<device dir>/scsi-0DO_Volume_<name>`.

use std::{path::PathBuf, time::Duration};

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use shadow_common::task::Task;

use super::{
    block::{poll, BlockCloud, BlockVolumes, CloudAttachment},
    Fence, VolumeError,
};
use crate::config::NodeConfig;

/// The droplet metadata service; never reached when the droplet id and region are set.
const METADATA: &str = "http://169.254.169.254/metadata/v1";
const ACTION_WAIT: Duration = Duration::from_secs(300);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `do` volumes: [`BlockVolumes`] on DigitalOcean.
pub type DoVolumes = BlockVolumes<DoCloud>;

/// This droplet and an API client.
pub struct DoCloud {
    http: reqwest::Client,
    api: String,
    token: String,
    droplet_id: u64,
    region: String,
    device_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DoVolume {
    pub id: String,
    pub name: String,
    pub region: Region,
    #[serde(default)]
    pub droplet_ids: Vec<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Region {
    pub slug: String,
}

#[derive(Debug, Deserialize)]
struct Action {
    id: u64,
    status: String,
}

/// The volume name of a task: lowercase, as DigitalOcean requires.
pub fn volume_name(task_id: &str) -> String {
    format!("shadow-{}", task_id.to_ascii_lowercase())
}

impl DoVolumes {
    /// The backend when `SHADOW_DO_TOKEN` is set, else `None`. Resolves this droplet's id and
    /// region now (metadata service unless set), so a misconfigured node fails at start.
    pub async fn from_config(config: &NodeConfig) -> Result<Option<Self>, VolumeError> {
        let Some(token) = config.do_token.clone().filter(|t| !t.trim().is_empty()) else {
            return Ok(None);
        };
        let setup = |message: String| VolumeError::Unavailable {
            task: "*".into(),
            message,
        };
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| setup(format!("cannot build an HTTP client: {e}")))?;
        let given = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let droplet = match given(&config.do_droplet_id) {
            Some(d) => d,
            None => metadata(&http, "id").await.map_err(|e| {
                setup(format!("cannot read this droplet's id from the metadata service ({e}); set SHADOW_DO_DROPLET_ID"))
            })?,
        };
        let droplet_id: u64 = droplet.trim().parse().map_err(|_| {
            setup(format!(
                "droplet id {droplet:?} is not a number; check SHADOW_DO_DROPLET_ID"
            ))
        })?;
        let region = match given(&config.do_region) {
            Some(r) => r,
            None => metadata(&http, "region").await.map_err(|e| {
                setup(format!("cannot read this droplet's region from the metadata service ({e}); set SHADOW_DO_REGION"))
            })?,
        };
        tracing::info!(droplet = droplet_id, region = %region, api = %config.do_api, "do volumes enabled");
        Ok(Some(BlockVolumes::new(
            DoCloud {
                http,
                api: config.do_api.trim_end_matches('/').to_string(),
                token,
                droplet_id,
                region,
                device_dir: config.block_device_dir.clone(),
            },
            &config.data_dir,
        )))
    }
}

async fn metadata(http: &reqwest::Client, what: &str) -> Result<String, String> {
    http.get(format!("{METADATA}/{what}"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map(|t| t.trim().to_string())
        .map_err(|e| e.to_string())
}

impl DoCloud {
    /// One API call; a network failure, 429 or 5xx is `Unavailable` (retry), any other
    /// refusal `Io` with DigitalOcean's message.
    async fn call(
        &self,
        task: &Task,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, VolumeError> {
        let what = format!("DigitalOcean {method} {path}");
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| VolumeError::Unavailable {
            task: task.id.clone(),
            message: format!("{what}: {e}"),
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| VolumeError::Unavailable {
            task: task.id.clone(),
            message: format!("{what}: reading the answer: {e}"),
        })?;
        if status.is_success() {
            return if text.trim().is_empty() {
                Ok(Value::Null)
            } else {
                serde_json::from_str(&text).map_err(|e| VolumeError::Io {
                    task: task.id.clone(),
                    message: format!("{what}: unexpected answer ({e}): {text}"),
                })
            };
        }
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or(text);
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            Err(VolumeError::Unavailable {
                task: task.id.clone(),
                message: format!("{what}: {status}: {message}"),
            })
        } else {
            Err(VolumeError::Io {
                task: task.id.clone(),
                message: format!("{what}: {status}: {message}; check SHADOW_DO_TOKEN (it needs read and write on volumes)"),
            })
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(
        task: &Task,
        v: &Value,
        field: &str,
    ) -> Result<T, VolumeError> {
        serde_json::from_value(v[field].clone()).map_err(|e| VolumeError::Io {
            task: task.id.clone(),
            message: format!("DigitalOcean answered without a valid {field:?} ({e}): {v}"),
        })
    }

    async fn find(&self, task: &Task) -> Result<Option<DoVolume>, VolumeError> {
        let name = volume_name(&task.id);
        let v = self
            .call(task, Method::GET, &format!("/v2/volumes?name={name}"), None)
            .await?;
        let mut vols: Vec<DoVolume> = Self::parse(task, &v, "volumes")?;
        vols.retain(|v| v.name == name);
        if let Some(here) = vols.iter().position(|v| v.region.slug == self.region) {
            return Ok(Some(vols.swap_remove(here)));
        }
        match vols.first() {
            None => Ok(None),
            Some(v) => Err(VolumeError::Io {
                task: task.id.clone(),
                message: format!(
                    "volume {name} lives in region {}, this node in {}; DigitalOcean cannot move \
                     volumes between regions: run the app on a node in {}",
                    v.region.slug, self.region, v.region.slug
                ),
            }),
        }
    }

    async fn volume(&self, task: &Task, id: &str) -> Result<DoVolume, VolumeError> {
        let v = self
            .call(task, Method::GET, &format!("/v2/volumes/{id}"), None)
            .await?;
        Self::parse(task, &v, "volume")
    }

    async fn create(&self, task: &Task) -> Result<DoVolume, VolumeError> {
        let body = json!({
            "size_gigabytes": task.spec.volume.size_gb.max(1),
            "name": volume_name(&task.id),
            "region": self.region,
            "description": format!("Shadow: data of task {}", task.id),
            "tags": ["shadow"],
        });
        let v = self
            .call(task, Method::POST, "/v2/volumes", Some(body))
            .await?;
        let vol: DoVolume = Self::parse(task, &v, "volume")?;
        tracing::info!(volume = %vol.id, region = %self.region, size_gb = task.spec.volume.size_gb, "created the task's volume");
        Ok(vol)
    }

    /// Runs an attach/detach action for `droplet` and polls it until done.
    async fn action(
        &self,
        task: &Task,
        vol: &DoVolume,
        kind: &str,
        droplet: u64,
    ) -> Result<(), VolumeError> {
        let body = json!({"type": kind, "droplet_id": droplet, "region": vol.region.slug});
        let v = self
            .call(
                task,
                Method::POST,
                &format!("/v2/volumes/{}/actions", vol.id),
                Some(body),
            )
            .await?;
        let action: Action = Self::parse(task, &v, "action")?;
        let path = format!("/v2/volumes/{}/actions/{}", vol.id, action.id);
        let mut status = action.status;
        poll::until(
            &format!("the {kind} of volume {} (droplet {droplet})", vol.name),
            ACTION_WAIT,
            |m| VolumeError::Unavailable { task: task.id.clone(), message: m },
            || {
                let done = std::mem::take(&mut status);
                let path = path.clone();
                async move {
                    let status = if done.is_empty() {
                        let v = self.call(task, Method::GET, &path, None).await?;
                        Self::parse::<Action>(task, &v, "action")?.status
                    } else {
                        done
                    };
                    match status.as_str() {
                        "completed" => Ok(Some(())),
                        "errored" => Err(VolumeError::Io {
                            task: task.id.clone(),
                            message: format!("DigitalOcean's {kind} action {} of volume {} errored; see the control panel, then retry", action.id, vol.name),
                        }),
                        _ => Ok(None),
                    }
                }
            },
        )
        .await
    }
}

#[async_trait]
impl BlockCloud for DoCloud {
    fn name(&self) -> &'static str {
        "do"
    }

    async fn attach(&self, task: &Task, fence: &Fence) -> Result<CloudAttachment, VolumeError> {
        let mut vol = match self.find(task).await? {
            Some(v) => v,
            None => self.create(task).await?,
        };
        for other in vol
            .droplet_ids
            .clone()
            .into_iter()
            .filter(|d| *d != self.droplet_id)
        {
            // This node holds the lease, so the other node's lapsed: it is dead or cut off.
            fence.verify(&task.id).await?;
            tracing::warn!(volume = %vol.id, droplet = other, "the volume is still attached to another droplet whose lease lapsed; detaching it from there");
            self.action(task, &vol, "detach", other).await?;
        }
        if !vol.droplet_ids.contains(&self.droplet_id) {
            self.action(task, &vol, "attach", self.droplet_id).await?;
            vol = self.volume(task, &vol.id).await?;
            if !vol.droplet_ids.contains(&self.droplet_id) {
                return Err(VolumeError::Io {
                    task: task.id.clone(),
                    message: format!("the attach of volume {} completed but DigitalOcean does not list droplet {} on it; retry", vol.name, self.droplet_id),
                });
            }
        }
        Ok(CloudAttachment {
            devices: vec![self
                .device_dir
                .join(format!("scsi-0DO_Volume_{}", vol.name))],
            volume_id: vol.id,
        })
    }

    async fn detach(&self, task: &Task, volume_id: &str) -> Result<(), VolumeError> {
        let vol = self.volume(task, volume_id).await?;
        if vol.droplet_ids.contains(&self.droplet_id) {
            self.action(task, &vol, "detach", self.droplet_id).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names_are_lowercase() {
        assert_eq!(volume_name("Blog-1"), "shadow-blog-1");
    }
}
