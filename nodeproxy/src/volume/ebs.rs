//! The `ebs` backend's cloud part: EC2 volumes through aws-sdk-ec2.
//!
//! A task's volume is the one tagged `shadow-task=<task id>` (created gp3, `volume.size_gb`,
//! in this node's availability zone when there is none). EBS volumes attach only within their
//! zone, so a volume in another zone is moved: snapshot, a new volume from the snapshot here
//! (tagged `shadow-moved-from=<old id>`), then the old volume and the snapshot are deleted.
//! A volume still attached to another instance belongs to a node whose lease lapsed (this node
//! holds the lease now; the fence is checked again first), so it is force-detached.
//!
//! The instance id and zone come from the instance metadata (IMDSv2) unless set
//! (`SHADOW_AWS_INSTANCE_ID`, `SHADOW_AWS_AZ`); region and credentials from the SDK's usual
//! chain (`SHADOW_AWS_REGION`, `SHADOW_AWS_ENDPOINT` override).
//!
//! The device shows up as `<device dir>/nvme-Amazon_Elastic_Block_Store_vol<hex>` on Nitro
//! instances, as the requested name (`/dev/sdf` → `/dev/xvdf`) on Xen ones.

use std::{path::PathBuf, time::Duration};

use async_trait::async_trait;
use aws_sdk_ec2::{
    error::{DisplayErrorContext, SdkError},
    types::{
        Filter, ResourceType, SnapshotState, Tag, TagSpecification, Volume, VolumeAttachmentState,
        VolumeState, VolumeType,
    },
    Client,
};
use shadow_common::task::Task;

use super::{
    block::{poll, BlockCloud, BlockVolumes, CloudAttachment},
    Fence, VolumeError,
};
use crate::config::NodeConfig;

/// The tag naming a volume's task.
pub const TASK_TAG: &str = "shadow-task";
/// The tag a moved volume carries: the volume it was made from.
pub const MOVED_FROM_TAG: &str = "shadow-moved-from";
/// Where IMDSv2 answers; never reached when the instance id and zone are set.
const IMDS: &str = "http://169.254.169.254";

const CREATE_WAIT: Duration = Duration::from_secs(300);
const SNAPSHOT_WAIT: Duration = Duration::from_secs(3600);
const ATTACH_WAIT: Duration = Duration::from_secs(300);
const DETACH_WAIT: Duration = Duration::from_secs(300);
/// Device letters AWS recommends for data volumes: /dev/sd[f-p].
const LETTERS: std::ops::RangeInclusive<char> = 'f'..='p';

/// `ebs` volumes: [`BlockVolumes`] on EC2.
pub type EbsVolumes = BlockVolumes<Ec2Cloud>;

/// This instance and its EC2 client.
pub struct Ec2Cloud {
    client: Client,
    instance_id: String,
    az: String,
    device_dir: PathBuf,
}

fn unavailable(task: &Task, message: String) -> VolumeError {
    VolumeError::Unavailable {
        task: task.id.clone(),
        message,
    }
}

fn io(task: &Task, message: String) -> VolumeError {
    VolumeError::Io {
        task: task.id.clone(),
        message,
    }
}

/// An SDK error: a network failure is `Unavailable` (retry), an API refusal is `Io`.
fn sdk<E, R>(task: &Task, call: &str, e: SdkError<E, R>) -> VolumeError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let net = matches!(
        e,
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_)
    );
    let message = format!("EC2 {call}: {}", DisplayErrorContext(&e));
    if net {
        unavailable(task, message)
    } else {
        io(
            task,
            format!("{message}; check the node's IAM permissions for EC2 volumes"),
        )
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// The Nitro device name of a volume: `vol-0abc` → `nvme-Amazon_Elastic_Block_Store_vol0abc`.
pub fn nitro_device_name(volume_id: &str) -> String {
    format!(
        "nvme-Amazon_Elastic_Block_Store_{}",
        volume_id.replacen("vol-", "vol", 1)
    )
}

/// Whether the volume's attachment to `instance` is in `state`.
fn attached_to<'a>(v: &'a Volume, instance: &str) -> Option<&'a VolumeAttachmentState> {
    v.attachments()
        .iter()
        .find(|a| a.instance_id() == Some(instance))
        .and_then(|a| a.state())
}

/// The instance the volume is attached to (in any state but detached), if any.
fn holder(v: &Volume) -> Option<(String, String)> {
    v.attachments()
        .iter()
        .filter(|a| a.state() != Some(&VolumeAttachmentState::Detached))
        .find_map(|a| Some((a.instance_id()?.to_string(), a.device()?.to_string())))
}

impl EbsVolumes {
    /// The backend when the node's settings enable it (`--ebs`), else `None`. Resolves this
    /// instance's id and zone now (IMDSv2 unless set), so a node misconfigured for EBS fails
    /// at start, not at an app's first request.
    pub async fn from_config(config: &NodeConfig) -> Result<Option<Self>, VolumeError> {
        if !config.ebs {
            return Ok(None);
        }
        let setup = |message: String| VolumeError::Unavailable {
            task: "*".into(),
            message,
        };
        let given = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let (instance_id, az) = match (given(&config.aws_instance_id), given(&config.aws_az)) {
            (Some(i), Some(z)) => (i, z),
            (i, z) => {
                let (mi, mz) = imds_identity().await.map_err(|e| {
                    setup(format!(
                        "cannot read this instance's id and zone from the instance metadata \
                         ({e}); on a host that is not EC2, set SHADOW_AWS_INSTANCE_ID and SHADOW_AWS_AZ"
                    ))
                })?;
                (i.unwrap_or(mi), z.unwrap_or(mz))
            }
        };
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https(),
        );
        // The zone's region ("us-east-1a" → "us-east-1") when neither the settings nor the
        // environment name one: on EC2 the zone is always known, the region not always.
        let region = given(&config.aws_region).or_else(|| {
            let env_has_one = std::env::var_os("AWS_REGION").is_some()
                || std::env::var_os("AWS_DEFAULT_REGION").is_some();
            (!env_has_one).then(|| {
                az.trim_end_matches(|c: char| c.is_ascii_lowercase())
                    .to_string()
            })
        });
        if let Some(r) = region {
            loader = loader.region(aws_config::Region::new(r));
        }
        if let Some(e) = given(&config.aws_endpoint) {
            loader = loader.endpoint_url(e);
        }
        let sdk = loader.load().await;
        tracing::info!(instance = %instance_id, az = %az, region = ?sdk.region(), "ebs volumes enabled");
        Ok(Some(BlockVolumes::new(
            Ec2Cloud {
                client: Client::new(&sdk),
                instance_id,
                az,
                device_dir: config.block_device_dir.clone(),
            },
            &config.data_dir,
        )))
    }
}

/// This instance's id and zone from IMDSv2 (a session token, then two reads).
async fn imds_identity() -> Result<(String, String), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    let token = http
        .put(format!("{IMDS}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    let get = |path: &'static str| {
        let (http, token) = (http.clone(), token.clone());
        async move {
            http.get(format!("{IMDS}/latest/meta-data/{path}"))
                .header("X-aws-ec2-metadata-token", token)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map(|t| t.trim().to_string())
                .map_err(|e| e.to_string())
        }
    };
    Ok((
        get("instance-id").await?,
        get("placement/availability-zone").await?,
    ))
}

impl Ec2Cloud {
    /// The task's volume: the newest tagged one that is not being deleted.
    async fn find(&self, task: &Task) -> Result<Option<Volume>, VolumeError> {
        let out = self
            .client
            .describe_volumes()
            .filters(filter(&format!("tag:{TASK_TAG}"), &task.id))
            .send()
            .await
            .map_err(|e| sdk(task, "DescribeVolumes", e))?;
        let mut vols: Vec<Volume> = out
            .volumes()
            .iter()
            .filter(|v| {
                !matches!(
                    v.state(),
                    Some(VolumeState::Deleting | VolumeState::Deleted | VolumeState::Error)
                )
            })
            .cloned()
            .collect();
        vols.sort_by_key(|v| v.create_time().map(|t| t.as_nanos()).unwrap_or_default());
        let newest = vols.pop();
        if let (Some(v), false) = (&newest, vols.is_empty()) {
            // A move cut off after the new volume was made: the newest has the data.
            let others: Vec<&str> = vols.iter().filter_map(|v| v.volume_id()).collect();
            tracing::warn!(using = ?v.volume_id(), ?others, "several volumes carry this task's tag; using the newest; delete the others once you checked them");
        }
        Ok(newest)
    }

    async fn describe(&self, task: &Task, id: &str) -> Result<Option<Volume>, VolumeError> {
        let out = self
            .client
            .describe_volumes()
            .volume_ids(id)
            .send()
            .await
            .map_err(|e| sdk(task, "DescribeVolumes", e))?;
        Ok(out.volumes().first().cloned())
    }

    async fn wait_available(
        &self,
        task: &Task,
        id: &str,
        limit: Duration,
    ) -> Result<Volume, VolumeError> {
        poll::until(
            &format!("volume {id} becoming available"),
            limit,
            |m| unavailable(task, m),
            || async {
                let v = self
                    .describe(task, id)
                    .await?
                    .ok_or_else(|| io(task, format!("volume {id} vanished; someone deleted it")))?;
                match v.state() {
                    Some(VolumeState::Available) => Ok(Some(v)),
                    Some(VolumeState::Error) => Err(io(
                        task,
                        format!("volume {id} is in state error; see the EC2 console"),
                    )),
                    _ => Ok(None),
                }
            },
        )
        .await
    }

    async fn create(
        &self,
        task: &Task,
        snapshot: Option<(&str, &str)>,
    ) -> Result<Volume, VolumeError> {
        let mut tags = TagSpecification::builder()
            .resource_type(ResourceType::Volume)
            .tags(tag(TASK_TAG, &task.id))
            .tags(tag("Name", &format!("shadow-{}", task.id)));
        if let Some((_, from)) = snapshot {
            tags = tags.tags(tag(MOVED_FROM_TAG, from));
        }
        let mut req = self
            .client
            .create_volume()
            .availability_zone(&self.az)
            .volume_type(VolumeType::Gp3)
            .size(task.spec.volume.size_gb.max(1) as i32)
            .tag_specifications(tags.build());
        if let Some((snap, _)) = snapshot {
            req = req.snapshot_id(snap);
        }
        let out = req.send().await.map_err(|e| sdk(task, "CreateVolume", e))?;
        let id = out
            .volume_id()
            .ok_or_else(|| io(task, "CreateVolume returned no volume id".into()))?
            .to_string();
        tracing::info!(volume = %id, az = %self.az, size_gb = task.spec.volume.size_gb, "created the task's volume");
        self.wait_available(task, &id, CREATE_WAIT).await
    }

    /// Snapshot → new volume here → delete the old volume and the snapshot.
    async fn move_here(&self, task: &Task, old: &Volume) -> Result<Volume, VolumeError> {
        let old_id = old.volume_id().unwrap_or_default().to_string();
        tracing::warn!(volume = %old_id, from = ?old.availability_zone(), to = %self.az, "the volume lives in another availability zone; moving it here by snapshot: this takes minutes");
        let snap = self
            .client
            .create_snapshot()
            .volume_id(&old_id)
            .description(format!("shadow: moving task {} to {}", task.id, self.az))
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Snapshot)
                    .tags(tag(TASK_TAG, &task.id))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk(task, "CreateSnapshot", e))?;
        let snap_id = snap
            .snapshot_id()
            .ok_or_else(|| io(task, "CreateSnapshot returned no snapshot id".into()))?
            .to_string();
        poll::until(
            &format!("snapshot {snap_id} completing"),
            SNAPSHOT_WAIT,
            |m| unavailable(task, m),
            || async {
                let out = self
                    .client
                    .describe_snapshots()
                    .snapshot_ids(&snap_id)
                    .send()
                    .await
                    .map_err(|e| sdk(task, "DescribeSnapshots", e))?;
                match out.snapshots().first().and_then(|s| s.state()) {
                    Some(SnapshotState::Completed) => Ok(Some(())),
                    Some(SnapshotState::Error) => Err(io(task, format!("snapshot {snap_id} failed; the old volume {old_id} is untouched, retry"))),
                    _ => Ok(None),
                }
            },
        )
        .await?;
        let new = self.create(task, Some((&snap_id, &old_id))).await?;
        if let Err(e) = self.client.delete_volume().volume_id(&old_id).send().await {
            tracing::warn!(volume = %old_id, error = %DisplayErrorContext(&e), "cannot delete the old volume after the move; delete it by hand");
        }
        if let Err(e) = self
            .client
            .delete_snapshot()
            .snapshot_id(&snap_id)
            .send()
            .await
        {
            tracing::warn!(snapshot = %snap_id, error = %DisplayErrorContext(&e), "cannot delete the move's snapshot; delete it by hand");
        }
        tracing::info!(old = %old_id, new = ?new.volume_id(), "volume moved");
        Ok(new)
    }

    async fn wait_detached(&self, task: &Task, id: &str, from: &str) -> Result<(), VolumeError> {
        poll::until(
            &format!("volume {id} detaching from {from}"),
            DETACH_WAIT,
            |m| unavailable(task, m),
            || async {
                let Some(v) = self.describe(task, id).await? else {
                    return Ok(Some(()));
                };
                let gone =
                    attached_to(&v, from).is_none_or(|s| *s == VolumeAttachmentState::Detached);
                Ok((gone && v.state() == Some(&VolumeState::Available)).then_some(()))
            },
        )
        .await
    }

    /// A device name no other volume on this instance uses.
    async fn free_device(&self, task: &Task) -> Result<String, VolumeError> {
        let out = self
            .client
            .describe_volumes()
            .filters(filter("attachment.instance-id", &self.instance_id))
            .send()
            .await
            .map_err(|e| sdk(task, "DescribeVolumes", e))?;
        let used: Vec<String> = out
            .volumes()
            .iter()
            .flat_map(|v| v.attachments())
            .filter_map(|a| a.device().map(str::to_string))
            .collect();
        LETTERS
            .map(|l| format!("/dev/sd{l}"))
            .find(|d| {
                !used
                    .iter()
                    .any(|u| u == d || *u == d.replace("/dev/sd", "/dev/xvd"))
            })
            .ok_or_else(|| {
                io(
                    task,
                    "no free device name /dev/sd[f-p] on this instance; detach volumes nobody uses"
                        .into(),
                )
            })
    }

    /// Where the device may show up: the Nitro name, then the Xen one.
    fn devices(&self, volume_id: &str, requested: &str) -> Vec<PathBuf> {
        let xen = requested.replace("/dev/sd", "xvd");
        let xen = if self.device_dir == std::path::Path::new("/dev/disk/by-id") {
            PathBuf::from("/dev").join(xen)
        } else {
            self.device_dir.join(xen)
        };
        vec![self.device_dir.join(nitro_device_name(volume_id)), xen]
    }
}

#[async_trait]
impl BlockCloud for Ec2Cloud {
    fn name(&self) -> &'static str {
        "ebs"
    }

    async fn attach(&self, task: &Task, fence: &Fence) -> Result<CloudAttachment, VolumeError> {
        let mut vol = match self.find(task).await? {
            Some(v) => v,
            None => self.create(task, None).await?,
        };
        let mut id = vol.volume_id().unwrap_or_default().to_string();
        if let Some((other, _)) = holder(&vol).filter(|(i, _)| *i != self.instance_id) {
            // This node holds the lease, so the other node's lapsed: it is dead or cut off.
            fence.verify(&task.id).await?;
            tracing::warn!(volume = %id, instance = %other, "the volume is still attached to another instance whose lease lapsed; force-detaching it");
            self.client
                .detach_volume()
                .volume_id(&id)
                .instance_id(&other)
                .force(true)
                .send()
                .await
                .map_err(|e| sdk(task, "DetachVolume (force)", e))?;
            self.wait_detached(task, &id, &other).await?;
            vol = self
                .describe(task, &id)
                .await?
                .ok_or_else(|| io(task, format!("volume {id} vanished after the detach")))?;
        }
        if vol.availability_zone() != Some(self.az.as_str()) {
            vol = self.move_here(task, &vol).await?;
            id = vol.volume_id().unwrap_or_default().to_string();
        }
        let device = match holder(&vol) {
            // Still attached here (an earlier life of this node): reuse it.
            Some((i, device)) if i == self.instance_id => device,
            _ => {
                let device = self.free_device(task).await?;
                self.client
                    .attach_volume()
                    .volume_id(&id)
                    .instance_id(&self.instance_id)
                    .device(&device)
                    .send()
                    .await
                    .map_err(|e| sdk(task, "AttachVolume", e))?;
                device
            }
        };
        poll::until(
            &format!("volume {id} attaching to {}", self.instance_id),
            ATTACH_WAIT,
            |m| unavailable(task, m),
            || async {
                let v = self
                    .describe(task, &id)
                    .await?
                    .ok_or_else(|| io(task, format!("volume {id} vanished while attaching")))?;
                Ok(
                    (attached_to(&v, &self.instance_id) == Some(&VolumeAttachmentState::Attached))
                        .then_some(()),
                )
            },
        )
        .await?;
        Ok(CloudAttachment {
            devices: self.devices(&id, &device),
            volume_id: id,
        })
    }

    async fn detach(&self, task: &Task, volume_id: &str) -> Result<(), VolumeError> {
        let Some(v) = self.describe(task, volume_id).await? else {
            return Ok(());
        };
        if attached_to(&v, &self.instance_id).is_some_and(|s| {
            *s != VolumeAttachmentState::Detached && *s != VolumeAttachmentState::Detaching
        }) {
            self.client
                .detach_volume()
                .volume_id(volume_id)
                .instance_id(&self.instance_id)
                .send()
                .await
                .map_err(|e| sdk(task, "DetachVolume", e))?;
        }
        self.wait_detached(task, volume_id, &self.instance_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nitro_names_drop_the_dash_after_vol() {
        assert_eq!(
            nitro_device_name("vol-0123abcd"),
            "nvme-Amazon_Elastic_Block_Store_vol0123abcd"
        );
    }
}
