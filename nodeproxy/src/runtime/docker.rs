//! [`DockerRuntime`]: the [`ContainerRuntime`] over the Docker Engine API (bollard).
//!
//! Works with daemons as old as API 1.41 (Docker 20.10): the client version is negotiated down
//! at connect time, since an old daemon rejects requests made with a newer version.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, HostConfig, Mount, MountTypeEnum, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tracing::{debug, info, warn};

use super::registry_auth;
use super::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ContainerStatus, OutputLine, RunningContainer,
    RuntimeError, DATA_DIR,
};

/// Where Docker listens when neither the caller nor `DOCKER_HOST` says otherwise.
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// How long a call to the daemon may take, except a stop, which may take its grace period more.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// How many log lines an [`RuntimeError::ExitedAtStart`] carries.
const START_LOG_LINES: usize = 20;

/// A Docker daemon, reached over its socket (or `DOCKER_HOST`).
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    endpoint: String,
    /// `SHADOW_REGISTRY_AUTH_FILE`: credentials for pulls, read at each pull.
    auth_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// The bridge driver's option for traffic between containers on one network.
const ICC_OPTION: &str = "com.docker.network.bridge.enable_icc";
/// The bridge driver's option naming the host interface.
const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

impl DockerRuntime {
    /// The networks whose name is exactly `name` (Docker's filter matches substrings).
    async fn networks_named(
        &self,
        name: &str,
    ) -> Result<Vec<bollard::models::Network>, RuntimeError> {
        let options = bollard::query_parameters::ListNetworksOptionsBuilder::new()
            .filters(&HashMap::from([("name".to_owned(), vec![name.to_owned()])]))
            .build();
        let nets = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(|e| self.fail(format!("list networks named {name}"), e))?;
        Ok(nets
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .collect())
    }

    /// Kills (if running) and removes a container; one that is already gone is not an error.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(false)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            // Another caller's removal is under way: the container goes all the same.
            Err(BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("already in progress") => {}
            Err(e) => return Err(self.fail(format!("remove container {id}"), e)),
        }
        info!(container = id, "container stopped and removed");
        Ok(())
    }

    /// Connects to `host` (`unix:///path`, `tcp://host:port` or `http://host:port`), or when
    /// `None` to `DOCKER_HOST` or the local socket, and agrees on an API version with the daemon.
    /// Fails when the daemon does not answer, so a node with no usable Docker stops at start-up.
    pub async fn connect(host: Option<&str>) -> Result<Self, RuntimeError> {
        let endpoint = host
            .map(str::to_owned)
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| DEFAULT_HOST.to_owned());
        let unreachable = |e: BollardError| RuntimeError::Unreachable {
            endpoint: endpoint.clone(),
            message: e.to_string(),
        };
        let timeout = CALL_TIMEOUT.as_secs();
        let docker = if endpoint.starts_with("unix://") {
            Docker::connect_with_unix(&endpoint, timeout, bollard::API_DEFAULT_VERSION)
        } else if endpoint.starts_with("tcp://") || endpoint.starts_with("http://") {
            Docker::connect_with_http(&endpoint, timeout, bollard::API_DEFAULT_VERSION)
        } else {
            return Err(RuntimeError::Unreachable {
                endpoint,
                message: "only unix://, tcp:// and http:// addresses are supported".to_owned(),
            });
        }
        .map_err(unreachable)?;
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        let version = docker.client_version();
        let api = format!("{}.{}", version.major_version, version.minor_version);
        info!(%endpoint, %api, "connected to Docker");
        Ok(Self {
            docker,
            endpoint,
            auth_file: None,
        })
    }

    /// Pulls with the credentials in `file` (a Docker `config.json`).
    pub fn with_registry_auth(mut self, file: Option<std::path::PathBuf>) -> Self {
        self.auth_file = file;
        self
    }

    /// Turns a bollard error into ours: a dead connection says so, anything else names the action.
    fn fail(&self, action: impl Into<String>, e: BollardError) -> RuntimeError {
        match e {
            BollardError::DockerResponseServerError { message, .. } => RuntimeError::Docker {
                action: action.into(),
                message,
            },
            BollardError::SocketNotFoundError(_)
            | BollardError::HyperLegacyError { .. }
            | BollardError::HyperResponseError { .. }
            | BollardError::IOError { .. }
            | BollardError::RequestTimeoutError => RuntimeError::Unreachable {
                endpoint: self.endpoint.clone(),
                message: e.to_string(),
            },
            e => RuntimeError::Docker {
                action: action.into(),
                message: e.to_string(),
            },
        }
    }

    async fn pull(&self, image: &str) -> Result<(), RuntimeError> {
        let (repository, tag) = split_reference(image);
        let mut options = CreateImageOptionsBuilder::new().from_image(repository);
        // Without a tag the daemon would pull every tag of the repository.
        if let Some(tag) = tag {
            options = options.tag(tag);
        }
        let registry = registry_auth::registry_of(image);
        let credentials = match &self.auth_file {
            Some(file) => {
                registry_auth::credentials(file, image).map_err(|message| RuntimeError::Pull {
                    image: image.to_owned(),
                    message,
                })?
            }
            None => None,
        };
        info!(
            image,
            registry,
            with_credentials = credentials.is_some(),
            "pulling image"
        );
        let mut progress = self
            .docker
            .create_image(Some(options.build()), None, credentials);
        while let Some(item) = progress.next().await {
            let item = item.map_err(|e| match e {
                BollardError::DockerResponseServerError { message, .. }
                | BollardError::DockerStreamError { error: message } => RuntimeError::Pull {
                    image: image.to_owned(),
                    message: format!(
                        "{} (registry {registry}: {message})",
                        registry_auth::classify(&message)
                    ),
                },
                e => self.fail(format!("pull the image {image}"), e),
            })?;
            let status = item.status.unwrap_or_default();
            let layer = item.id.unwrap_or_default();
            // Byte counts arrive many times a second per layer: keep them out of the info log.
            match item.progress {
                Some(bar) => debug!(image, layer, status, bar, "pull progress"),
                None => info!(image, layer, status, "pull progress"),
            }
        }
        info!(image, "pulled image");
        Ok(())
    }

    /// Removes a container that was created but cannot be used; a failure here is only logged,
    /// since the caller is already reporting the error that led to it.
    async fn discard(&self, id: &str, name: &str) {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        if let Err(e) = self.docker.remove_container(id, Some(options)).await {
            if !is_not_found(&e) {
                warn!(container = name, error = %e, "cannot remove a container that failed to start; remove it by hand");
            }
        }
    }

    /// The host address of `port/tcp`, from an inspect, or `None` when it is not published (the
    /// container is not running).
    /// The published address of `port`, and the id (digest) of the image the container runs.
    async fn published_addr(
        &self,
        id: &str,
        port: u16,
    ) -> Result<(Option<SocketAddr>, bool, Option<String>), RuntimeError> {
        let inspect = self
            .docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(|e| self.fail(format!("inspect container {id}"), e))?;
        let image = inspect.image.clone();
        let running = inspect
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false);
        let bindings = inspect
            .network_settings
            .and_then(|n| n.ports)
            .and_then(|mut ports| ports.remove(&format!("{port}/tcp")))
            .flatten()
            .unwrap_or_default();
        let addr = bindings.iter().find_map(|binding| {
            let ip = binding
                .host_ip
                .as_deref()
                .and_then(|ip| ip.parse().ok())
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            let port = binding.host_port.as_deref()?.parse().ok()?;
            Some(SocketAddr::new(ip, port))
        });
        Ok((addr, running, image))
    }
}

#[async_trait]
impl ContainerRuntime for DockerRuntime {
    async fn ensure_image(&self, image: &str, always: bool) -> Result<(), RuntimeError> {
        let present = match self.docker.inspect_image(image).await {
            Ok(_) => true,
            Err(e) if is_not_found(&e) => false,
            Err(e) => return Err(self.fail(format!("look up the image {image}"), e)),
        };
        if present && !always {
            return Ok(());
        }
        // With `always` the registry says whether the tag moved; Docker fetches only what
        // changed. A registry that cannot be reached then leaves the app on the copy it has.
        match self.pull(image).await {
            Err(e) if present => {
                warn!(image, error = %e, "cannot check the registry for a newer image; starting the one this node has");
                Ok(())
            }
            r => r,
        }
    }

    async fn create_and_start(
        &self,
        spec: &ContainerSpec,
    ) -> Result<RunningContainer, RuntimeError> {
        let name = spec.name.clone();
        let config = container_config(spec)?;
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = self
            .docker
            .create_container(Some(options), config)
            .await
            .map_err(|e| match e {
                BollardError::DockerResponseServerError {
                    status_code: 404, ..
                } => RuntimeError::ImageMissing {
                    name: name.clone(),
                    image: spec.image.clone(),
                },
                BollardError::DockerResponseServerError {
                    status_code: 409, ..
                } => RuntimeError::NameInUse { name: name.clone() },
                BollardError::DockerResponseServerError { message, .. } => RuntimeError::Create {
                    name: name.clone(),
                    image: spec.image.clone(),
                    message,
                },
                e => self.fail(format!("create container {name}"), e),
            })?;
        let id = created.id;
        for warning in created.warnings {
            warn!(container = %name, warning, "Docker warns about the new container");
        }

        if let Err(e) = self
            .docker
            .start_container(
                &id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            self.discard(&id, &name).await;
            return Err(match e {
                BollardError::DockerResponseServerError { message, .. } => {
                    RuntimeError::Start { name, message }
                }
                e => self.fail(format!("start container {name}"), e),
            });
        }

        // The port is assigned at start; it is gone again once the container has exited. In a
        // sandbox the port is the sandbox's, there while the app's container runs.
        let (addr, running, image_digest) =
            match self.published_addr(&id, spec.container_port).await {
                Ok(found) => found,
                Err(e) => {
                    self.discard(&id, &name).await;
                    return Err(e);
                }
            };
        let addr = match &spec.sandbox {
            Some(sandbox) => running.then_some(sandbox.host_addr),
            None => addr,
        };
        let Some(host_addr) = addr else {
            let exit_code = self
                .inspect(&id)
                .await
                .ok()
                .flatten()
                .and_then(|s| s.exit_code);
            let logs = self
                .logs_tail(&id, START_LOG_LINES)
                .await
                .unwrap_or_else(|e| format!("(no logs: {e})"));
            self.discard(&id, &name).await;
            return Err(RuntimeError::ExitedAtStart {
                name,
                exit_code,
                logs,
            });
        };
        info!(container = %name, %host_addr, image = %spec.image, "container started");
        Ok(RunningContainer {
            id,
            name,
            host_addr,
            image_digest,
        })
    }

    async fn ensure_built(&self, tag: &str, context: Vec<u8>) -> Result<(), RuntimeError> {
        match self.docker.inspect_image(tag).await {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(self.fail(format!("look up the image {tag}"), e)),
        }
        let options = bollard::query_parameters::BuildImageOptionsBuilder::new()
            .dockerfile("Dockerfile")
            .t(tag)
            .rm(true)
            .build();
        let mut build =
            self.docker
                .build_image(options, None, Some(bollard::body_full(context.into())));
        while let Some(item) = build.next().await {
            let info = item.map_err(|e| self.fail(format!("build the image {tag}"), e))?;
            if let Some(message) = info.error_detail.and_then(|d| d.message).or(info.error) {
                return Err(RuntimeError::Docker {
                    action: format!("build the image {tag}"),
                    message,
                });
            }
        }
        info!(image = tag, "built the image");
        Ok(())
    }

    async fn ensure_network(&self, name: &str) -> Result<String, RuntimeError> {
        if self.networks_named(name).await?.is_empty() {
            let request = bollard::models::NetworkCreateRequest {
                name: name.to_owned(),
                driver: Some("bridge".to_owned()),
                options: Some(HashMap::from([(ICC_OPTION.to_owned(), "false".to_owned())])),
                labels: Some(HashMap::from([(
                    "shadow.network".to_owned(),
                    "apps".to_owned(),
                )])),
                ..Default::default()
            };
            match self.docker.create_network(request).await {
                Ok(_) => info!(
                    network = name,
                    "created the app network (no traffic between apps)"
                ),
                // Another node on this daemon made it meanwhile.
                Err(BollardError::DockerResponseServerError {
                    status_code: 409, ..
                }) => {}
                Err(e) => return Err(self.fail(format!("create network {name}"), e)),
            }
        }
        // Docker does not make names unique: nodes starting together on one daemon can each
        // create one, and then the name is ambiguous. Every node keeps the lowest id, so all
        // agree, and removes the rest (none has containers yet: they were made a moment ago).
        let mut nets = self.networks_named(name).await?;
        nets.sort_by(|a, b| a.id.cmp(&b.id));
        for extra in nets.iter().skip(1) {
            if let Some(id) = &extra.id {
                if let Err(e) = self.docker.remove_network(id).await {
                    if !is_not_found(&e) {
                        warn!(network = name, id, error = %e, "could not remove a duplicate app network");
                    }
                }
            }
        }
        let icc = nets
            .first()
            .and_then(|n| n.options.as_ref())
            .and_then(|o| o.get(ICC_OPTION))
            .map(String::as_str);
        if icc != Some("false") {
            warn!(network = name, "the app network allows traffic between containers; remove it (docker network rm) and restart the node to have it made with that off");
        }
        let net = nets.first().ok_or_else(|| RuntimeError::Docker {
            action: format!("make the app network {name}"),
            message: "it vanished while it was being made; restart the node".into(),
        })?;
        // Docker names a bridge br-<first 12 of the id> unless the network says otherwise.
        let bridge = net
            .options
            .as_ref()
            .and_then(|o| o.get(BRIDGE_NAME_OPTION).cloned())
            .or_else(|| {
                net.id
                    .as_deref()
                    .map(|id| format!("br-{}", &id[..id.len().min(12)]))
            })
            .ok_or_else(|| RuntimeError::Docker {
                action: format!("inspect the app network {name}"),
                message: "it has no id".into(),
            })?;
        Ok(bridge)
    }

    async fn stop_and_remove(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        if grace.is_zero() {
            // A kill: one forced removal (SIGKILL and remove), even while a graceful stop of
            // the same container is still under way.
            return self.remove(id).await;
        }
        // Docker takes whole seconds; round up so the app gets at least its grace period.
        let seconds = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let options = StopContainerOptionsBuilder::new()
            .t(i32::try_from(seconds).unwrap_or(i32::MAX))
            .build();
        // The stop call lasts as long as the app takes to exit: give it the grace on top.
        let docker = self.docker.clone().with_timeout(CALL_TIMEOUT + grace);
        match docker.stop_container(id, Some(options)).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(self.fail(format!("stop container {id}"), e)),
        }
        self.remove(id).await
    }

    async fn list_labelled(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let filters = HashMap::from([("label", vec![format!("{key}={value}")])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.fail(format!("list containers labelled {key}={value}"), e))?;
        Ok(summaries
            .into_iter()
            .filter_map(|summary| {
                let labels: BTreeMap<String, String> =
                    summary.labels.unwrap_or_default().into_iter().collect();
                // The daemon filtered already; checking again costs nothing and keeps the promise
                // to touch only our own containers even if a filter were ignored.
                if labels.get(key).map(String::as_str) != Some(value) {
                    return None;
                }
                let host_addr = summary.ports.unwrap_or_default().iter().find_map(|port| {
                    let public = port.public_port?;
                    let ip = port
                        .ip
                        .as_deref()
                        .and_then(|ip| ip.parse().ok())
                        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
                    Some(SocketAddr::new(ip, public))
                });
                Some(ContainerInfo {
                    id: summary.id?,
                    name: summary
                        .names
                        .and_then(|names| names.into_iter().next())
                        .map(|name| name.trim_start_matches('/').to_owned())
                        .unwrap_or_default(),
                    labels,
                    running: summary.state == Some(ContainerSummaryStateEnum::RUNNING),
                    host_addr,
                })
            })
            .collect())
    }

    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        match self.docker.pause_container(id).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Err(RuntimeError::NotFound { id: id.to_owned() }),
            Err(e) => Err(self.fail(format!("pause container {id}"), e)),
        }
    }

    async fn unpause(&self, id: &str) -> Result<(), RuntimeError> {
        match self.docker.unpause_container(id).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Err(RuntimeError::NotFound { id: id.to_owned() }),
            // Docker answers 409 for a container that is not paused: already thawed.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(self.fail(format!("unpause container {id}"), e)),
        }
    }

    async fn cpu_ns(&self, id: &str) -> Result<u64, RuntimeError> {
        // The cgroup's own counter, read in microseconds; Docker's stats call took a second here.
        match cgroup_cpu_ns(id).await {
            Some(ns) => Ok(ns),
            None => Ok(self.stats(id).await?.cpu_ns),
        }
    }

    async fn stats(&self, id: &str) -> Result<super::ContainerStats, RuntimeError> {
        // One sample, without the second one Docker waits a second for to compute a rate.
        let options = bollard::query_parameters::StatsOptionsBuilder::new()
            .stream(false)
            .one_shot(true)
            .build();
        let mut stream = self.docker.stats(id, Some(options));
        let sample = match stream.next().await {
            Some(Ok(s)) => s,
            Some(Err(e)) if is_not_found(&e) => {
                return Err(RuntimeError::NotFound { id: id.to_owned() })
            }
            Some(Err(e)) => return Err(self.fail(format!("read the stats of container {id}"), e)),
            None => return Ok(super::ContainerStats::default()),
        };
        let cpu_ns = sample
            .cpu_stats
            .and_then(|c| c.cpu_usage)
            .and_then(|u| u.total_usage)
            .unwrap_or(0);
        let memory = sample.memory_stats.unwrap_or_default();
        let memory_bytes = memory.usage.unwrap_or(0);
        // cgroup v1 reports the peak; on v2 Docker does not, but the cgroup's file has it.
        let peak = match memory.max_usage {
            Some(p) => p,
            None => cgroup_v2_peak(id).await.unwrap_or(0),
        };
        Ok(super::ContainerStats {
            cpu_ns,
            memory_bytes,
            memory_peak_bytes: peak.max(memory_bytes),
        })
    }

    async fn logs_tail(&self, id: &str, lines: usize) -> Result<String, RuntimeError> {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let mut stream = self.docker.logs(id, Some(options));
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(output) => text.push_str(&String::from_utf8_lossy(&output.into_bytes())),
                Err(e) if is_not_found(&e) => {
                    return Err(RuntimeError::NotFound { id: id.to_owned() })
                }
                Err(e) => return Err(self.fail(format!("read the logs of container {id}"), e)),
            }
        }
        Ok(text)
    }

    async fn follow_logs(
        &self,
        id: &str,
        sink: tokio::sync::mpsc::Sender<OutputLine>,
    ) -> Result<(), RuntimeError> {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .follow(true)
            .timestamps(true)
            .build();
        let mut stream = self.docker.logs(id, Some(options));
        while let Some(chunk) = stream.next().await {
            let (stderr, bytes) = match chunk {
                Ok(LogOutput::StdErr { message }) => (true, message),
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                    (false, message)
                }
                Ok(_) => continue,
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) => return Err(self.fail(format!("follow the logs of container {id}"), e)),
            };
            // Docker stores output per line and stamps each: "<RFC 3339> <text>\n".
            let text = String::from_utf8_lossy(&bytes);
            for line in text.lines() {
                let (ts, text) = line.split_once(' ').unwrap_or(("", line));
                let out = OutputLine {
                    stderr,
                    ts: ts.to_owned(),
                    text: text.to_owned(),
                };
                if sink.send(out).await.is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerStatus>, RuntimeError> {
        let inspect = match self
            .docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(inspect) => inspect,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.fail(format!("inspect container {id}"), e)),
        };
        let state = inspect.state.unwrap_or_default();
        Ok(Some(ContainerStatus {
            running: state.running.unwrap_or(false),
            status: state.status.map(|s| s.to_string()).unwrap_or_default(),
            // Docker reports 0 for a container that has not exited yet.
            exit_code: state.exit_code.filter(|_| state.running != Some(true)),
            oom_killed: state.oom_killed.unwrap_or(false),
            pid: state
                .pid
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| *p > 0),
        }))
    }
}

/// The create request for a spec: the app port on loopback only, locked down, limited.
fn container_config(spec: &ContainerSpec) -> Result<ContainerCreateBody, RuntimeError> {
    let invalid = |message: String| RuntimeError::InvalidSpec {
        name: spec.name.clone(),
        message,
    };
    let port_key = format!("{}/tcp", spec.container_port);
    let mounts = match &spec.data_mount {
        Some(path) if !path.is_absolute() => {
            return Err(invalid(format!(
                "the data mount {} is not an absolute path",
                path.display()
            )))
        }
        Some(path) => Some(vec![Mount {
            target: Some(DATA_DIR.to_owned()),
            source: Some(path.to_string_lossy().into_owned()),
            typ: Some(MountTypeEnum::BIND),
            read_only: Some(false),
            ..Default::default()
        }]),
        None => None,
    };
    let memory = spec
        .memory_mb
        .map(|mb| {
            mb.checked_mul(1024 * 1024)
                .and_then(|bytes| i64::try_from(bytes).ok())
                .ok_or_else(|| invalid(format!("a memory limit of {mb} MiB is too large")))
        })
        .transpose()?;
    let nano_cpus = spec
        .cpus
        .map(|cpus| {
            if cpus.is_finite() && cpus > 0.0 {
                Ok((cpus * 1e9).round() as i64)
            } else {
                Err(invalid(format!(
                    "a CPU limit of {cpus} is not a positive number"
                )))
            }
        })
        .transpose()?;
    // In a sandbox, the network and the published port are the sandbox's.
    let (network_mode, ports, exposed) = match &spec.sandbox {
        Some(sandbox) => (Some(format!("container:{}", sandbox.id)), None, None),
        None => (
            spec.network.clone(),
            // Loopback only and an ephemeral port: the node proxy is the app's only way in.
            Some(HashMap::from([(
                port_key.clone(),
                Some(vec![PortBinding {
                    host_ip: Some(Ipv4Addr::LOCALHOST.to_string()),
                    host_port: Some(String::new()),
                }]),
            )])),
            Some(HashMap::from([(port_key, HashMap::new())])),
        ),
    };
    let host_config = HostConfig {
        port_bindings: ports,
        mounts,
        memory,
        nano_cpus,
        pids_limit: spec.pids,
        network_mode,
        readonly_rootfs: Some(spec.read_only),
        // With a read-only root, scratch space the app may need, neither executable nor setuid.
        tmpfs: spec.read_only.then(|| {
            HashMap::from([(
                "/tmp".to_owned(),
                "rw,noexec,nosuid,nodev,size=64m".to_owned(),
            )])
        }),
        privileged: Some(false),
        cap_drop: Some(vec!["ALL".to_owned()]),
        security_opt: Some(vec!["no-new-privileges".to_owned()]),
        ..Default::default()
    };
    Ok(ContainerCreateBody {
        image: Some(spec.image.clone()),
        user: spec.user.clone(),
        cmd: spec.command.clone(),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        exposed_ports: exposed,
        host_config: Some(host_config),
        ..Default::default()
    })
}

/// Splits `repo[:tag]` or `repo@digest` into what the pull API wants: the tag apart, or
/// `latest` when there is none, and a digest left in the repository part.
fn split_reference(image: &str) -> (&str, Option<&str>) {
    if image.contains('@') {
        return (image, None);
    }
    // A colon before the last slash belongs to a registry's port, not to a tag.
    let name_start = image.rfind('/').map_or(0, |slash| slash + 1);
    match image[name_start..].rfind(':') {
        Some(colon) => {
            let colon = name_start + colon;
            (&image[..colon], Some(&image[colon + 1..]))
        }
        None => (image, Some("latest")),
    }
}

fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// `memory.peak` of a container's cgroup v2, under systemd's or cgroupfs' layout.
/// The container's CPU time from its cgroup (v1 `cpuacct.usage` in ns, v2 `cpu.stat`'s
/// `usage_usec`), under Docker's cgroupfs or systemd driver; `None` when the node cannot see it.
async fn cgroup_cpu_ns(id: &str) -> Option<u64> {
    for path in [
        format!("/sys/fs/cgroup/cpuacct/docker/{id}/cpuacct.usage"),
        format!("/sys/fs/cgroup/cpu,cpuacct/docker/{id}/cpuacct.usage"),
        format!("/sys/fs/cgroup/cpuacct/system.slice/docker-{id}.scope/cpuacct.usage"),
        format!("/sys/fs/cgroup/cpu,cpuacct/system.slice/docker-{id}.scope/cpuacct.usage"),
    ] {
        if let Ok(text) = tokio::fs::read_to_string(&path).await {
            return text.trim().parse().ok();
        }
    }
    for path in [
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.stat"),
        format!("/sys/fs/cgroup/docker/{id}/cpu.stat"),
    ] {
        if let Ok(text) = tokio::fs::read_to_string(&path).await {
            return text
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|us| us.saturating_mul(1000));
        }
    }
    None
}

async fn cgroup_v2_peak(id: &str) -> Option<u64> {
    for path in [
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/memory.peak"),
        format!("/sys/fs/cgroup/docker/{id}/memory.peak"),
    ] {
        if let Ok(text) = tokio::fs::read_to_string(&path).await {
            return text.trim().parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_repository_and_tag() {
        assert_eq!(split_reference("app"), ("app", Some("latest")));
        assert_eq!(split_reference("app:1.2"), ("app", Some("1.2")));
        assert_eq!(
            split_reference("registry:5000/org/app"),
            ("registry:5000/org/app", Some("latest"))
        );
        assert_eq!(
            split_reference("registry:5000/org/app:v1"),
            ("registry:5000/org/app", Some("v1"))
        );
        assert_eq!(split_reference("app@sha256:abc"), ("app@sha256:abc", None));
    }

    #[test]
    fn the_config_is_locked_down_and_limited() {
        let mut spec = ContainerSpec::new("c", "img");
        spec.memory_mb = Some(64);
        spec.cpus = Some(0.5);
        spec.pids = Some(32);
        spec.data_mount = Some("/var/lib/shadow/v1".into());
        spec.env.insert("A".into(), "1".into());
        let config = container_config(&spec).unwrap();
        let host = config.host_config.unwrap();
        assert_eq!(host.memory, Some(64 * 1024 * 1024));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.pids_limit, Some(32));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(host.privileged, Some(false));
        let binding = &host.port_bindings.unwrap()["8000/tcp"].clone().unwrap()[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding.host_port.as_deref(), Some(""));
        assert_eq!(config.env, Some(vec!["A=1".to_owned()]));
    }

    #[test]
    fn bad_specs_are_refused_before_docker_sees_them() {
        let mut spec = ContainerSpec::new("c", "img");
        spec.data_mount = Some("relative/dir".into());
        assert!(matches!(
            container_config(&spec),
            Err(RuntimeError::InvalidSpec { .. })
        ));
        let mut spec = ContainerSpec::new("c", "img");
        spec.cpus = Some(f64::NAN);
        assert!(container_config(&spec).is_err());
    }
}
