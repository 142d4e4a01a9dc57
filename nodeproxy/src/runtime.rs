//! The container runtime seam: what the node proxy asks of Docker, as a trait it owns.
//!
//! The node creates an app's container when a request needs it, learns where its port 8000 is
//! published, stops and removes it when idle, and at start-up finds the containers it made
//! earlier by their labels (it never touches any other). [`ContainerRuntime`] is that contract;
//! [`DockerRuntime`] (in [`docker`]) is the one real implementation, over bollard. Tests and
//! fault-injection wrappers implement the trait too, which is why the errors carry messages
//! rather than bollard's types.
//!
//! Containers are made locked down: not privileged, all capabilities dropped,
//! `no-new-privileges`, the spec's memory, CPU and process limits, and the app port published on
//! 127.0.0.1 only, on an ephemeral host port.

pub mod docker;
pub mod registry_auth;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

pub use self::docker::DockerRuntime;

/// The port apps listen on inside their container.
pub const APP_PORT: u16 = 8000;

/// Where the app's volume is mounted inside its container.
pub const DATA_DIR: &str = "/data";

/// What to run: everything the node decides about one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// The container's name, unique on this Docker daemon.
    pub name: String,
    /// The image reference, e.g. `ghcr.io/org/app:1.2` (no tag means `latest`).
    pub image: String,
    /// Arguments that replace the image's `CMD` (its `ENTRYPOINT` stays), as `docker run IMAGE
    /// ARGS...` does; `None` keeps the image's own.
    pub command: Option<Vec<String>>,
    /// Environment variables, added to the image's.
    pub env: BTreeMap<String, String>,
    /// Labels; the node marks its containers with these to find them again.
    pub labels: BTreeMap<String, String>,
    /// The port the app listens on inside the container, published on 127.0.0.1.
    pub container_port: u16,
    /// A host directory (absolute path) bind-mounted read-write at `/data`.
    pub data_mount: Option<PathBuf>,
    /// Memory limit in MiB (no limit when `None`).
    pub memory_mb: Option<u64>,
    /// CPU limit in cores, e.g. `0.5` (no limit when `None`).
    pub cpus: Option<f64>,
    /// The user (and group) to run as; `None`: the image's.
    pub user: Option<String>,
    /// A read-only root filesystem, with a small writable tmpfs at `/tmp`.
    pub read_only: bool,
    /// The Docker network to attach to (the node's app network); `None`: Docker's default bridge.
    pub network: Option<String>,
    /// Limit on the number of processes and threads (no limit when `None`).
    pub pids: Option<i64>,
    /// A sandbox whose network namespace (and published port) the container joins instead of
    /// getting its own; `network` and `container_port` are then the sandbox's.
    pub sandbox: Option<Sandbox>,
}

/// A container made ahead to hold a network namespace and a published port for one app run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub id: String,
    /// Where its port 8000 is published, on 127.0.0.1.
    pub host_addr: SocketAddr,
}

impl ContainerSpec {
    /// A spec with the defaults: port 8000, no command override, env, labels, volume or limits.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            image: image.into(),
            command: None,
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            container_port: APP_PORT,
            data_mount: None,
            memory_mb: None,
            cpus: None,
            pids: None,
            network: None,
            sandbox: None,
            user: None,
            read_only: false,
        }
    }
}

/// A container that was started, and where its app port is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningContainer {
    pub id: String,
    pub name: String,
    /// The host side of the published app port, on 127.0.0.1. Started is not ready: the caller
    /// must wait until the app answers there.
    pub host_addr: SocketAddr,
    /// The id of the image it runs (`sha256:…`, a digest of its content).
    pub image_digest: Option<String>,
}

/// What a container has used, as its cgroup counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerStats {
    /// CPU time since the container started, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use now, in bytes.
    pub memory_bytes: u64,
    /// The most it has used (cgroup v1 keeps it; on v2 it is the current use).
    pub memory_peak_bytes: u64,
}

/// One line of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    pub stderr: bool,
    /// RFC 3339, as Docker stamped it.
    pub ts: String,
    pub text: String,
}

/// A container found by its labels, in any state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    /// The host side of its first published TCP port, while it is running.
    pub host_addr: Option<SocketAddr>,
}

/// A container's state, from an inspect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub running: bool,
    /// Docker's word for the state: `created`, `running`, `exited`, ...
    pub status: String,
    /// The exit code once it has exited.
    pub exit_code: Option<i64>,
    /// Whether the kernel killed it for using more memory than its limit.
    pub oom_killed: bool,
    /// Its first process's pid on the host, while it runs.
    pub pid: Option<u32>,
}

/// What went wrong, said so that whoever reads the log knows what to do.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "cannot reach the Docker daemon at {endpoint}: {message}. Is it running, and may this \
         user use it (e.g. member of the `docker` group)? Set DOCKER_HOST to use another daemon"
    )]
    Unreachable { endpoint: String, message: String },

    #[error(
        "cannot pull the image {image}: {message}. Check the name and tag, that this node can \
         reach its registry (and has credentials if it is private), or load the image on the \
         node beforehand"
    )]
    Pull { image: String, message: String },

    #[error(
        "the image {image} is not on this node, so container {name} cannot be created: pull it \
         first (ensure_image)"
    )]
    ImageMissing { name: String, image: String },

    #[error(
        "a container named {name} already exists; remove it (docker rm -f {name}) or let the node \
         adopt it at start-up"
    )]
    NameInUse { name: String },

    #[error("invalid container spec for {name}: {message}")]
    InvalidSpec { name: String, message: String },

    #[error("cannot create container {name} from {image}: {message}")]
    Create {
        name: String,
        image: String,
        message: String,
    },

    #[error("container {name} was created but did not start (it has been removed): {message}")]
    Start { name: String, message: String },

    #[error(
        "container {name} exited at once (code {exit_code:?}; it has been removed). Its last \
         log lines:\n{logs}"
    )]
    ExitedAtStart {
        name: String,
        exit_code: Option<i64>,
        logs: String,
    },

    #[error("no container {id} on this node")]
    NotFound { id: String },

    #[error("Docker failed to {action}: {message}")]
    Docker { action: String, message: String },
}

/// The node's view of a container engine. Object-safe: the node holds an
/// `Arc<dyn ContainerRuntime>` chosen at start-up.
#[async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// Makes sure `image` is on this node: nothing to do when it is (a locally built image needs
    /// no registry), otherwise pulls it, logging progress as it arrives.
    /// With `always`, asks the registry even when the image is here (a moved tag is pulled).
    async fn ensure_image(&self, image: &str, always: bool) -> Result<(), RuntimeError>;

    /// Creates and starts a container, and returns where its app port is published. On failure
    /// nothing is left behind: a container that was created but did not start is removed.
    async fn create_and_start(
        &self,
        spec: &ContainerSpec,
    ) -> Result<RunningContainer, RuntimeError>;

    /// Makes the image `tag` from `context` (a tar holding a Dockerfile and its files) unless
    /// this node has it: for the images the node makes itself, which no registry has.
    async fn ensure_built(&self, tag: &str, context: Vec<u8>) -> Result<(), RuntimeError>;

    /// Makes sure the bridge network `name` exists, with traffic between its containers
    /// disabled (inter-container communication off): apps on it cannot reach each other.
    /// Answers the bridge's interface on the host, for the node's firewall rules.
    async fn ensure_network(&self, name: &str) -> Result<String, RuntimeError>;

    /// Sends SIGTERM, waits up to `grace`, kills, and removes the container (its volumes stay).
    /// A container that is already gone is not an error.
    async fn stop_and_remove(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;

    /// Freezes every process of the container (the cgroup freezer): its memory stays, it gets
    /// no CPU, and it answers nothing until [`ContainerRuntime::unpause`].
    async fn pause(&self, id: &str) -> Result<(), RuntimeError>;

    /// Thaws a paused container; one that is not paused is not an error.
    async fn unpause(&self, id: &str) -> Result<(), RuntimeError>;

    /// The containers, in any state, that carry the label `key=value`.
    async fn list_labelled(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<ContainerInfo>, RuntimeError>;

    /// The last `lines` lines the container wrote to stdout and stderr, interleaved.
    async fn logs_tail(&self, id: &str, lines: usize) -> Result<String, RuntimeError>;

    /// Sends every line the container writes, from its start, to `sink` until its output ends
    /// (the container stopped) or `sink` is closed.
    async fn follow_logs(
        &self,
        id: &str,
        sink: tokio::sync::mpsc::Sender<OutputLine>,
    ) -> Result<(), RuntimeError>;

    /// The CPU time and memory the container has used so far.
    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError>;

    /// The CPU time the container has used so far, in nanoseconds: what the busy check samples
    /// every window, so implementations answer it as cheaply as they can.
    async fn cpu_ns(&self, id: &str) -> Result<u64, RuntimeError> {
        Ok(self.stats(id).await?.cpu_ns)
    }

    /// The container's state, or `None` when there is no such container.
    async fn inspect(&self, id: &str) -> Result<Option<ContainerStatus>, RuntimeError>;

    /// Whether the app answers HTTP at `addr` (its published port) within `timeout`: any
    /// answer counts, or a 2xx/3xx from `path` when one is given.
    async fn probe(&self, addr: SocketAddr, path: Option<&str>, timeout: Duration) -> bool {
        crate::lifecycle::ready::probe(addr, path, timeout).await
    }

    /// Whether the container exists and is running.
    async fn is_running(&self, id: &str) -> Result<bool, RuntimeError> {
        Ok(self.inspect(id).await?.is_some_and(|status| status.running))
    }
}
