//! The node proxy's configuration: flags, `SHADOW_*` variables and an optional TOML file.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// What `shadow-nodeproxy` does besides running the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Kill and remove every container of this node (by its id), then exit. systemd runs it
    /// after the node process ends, however it ended (ExecStopPost), so no app outlives it.
    Cleanup,
    /// Make the app network and install its firewall rules (apps fenced from this machine and
    /// the metadata service), then exit. For a node proxy that runs without root: systemd runs
    /// it as root first (ExecStartPre=+).
    Firewall,
}

/// Command line; every option can also come from the environment or the config file.
#[derive(Debug, clap::Parser, Serialize)]
#[command(
    name = "shadow-nodeproxy",
    version,
    about = "Shadow's node proxy: starts apps on demand, proxies to them, stops them when idle"
)]
pub struct Cli {
    /// What to do; without one, run the node.
    #[command(subcommand)]
    #[serde(skip)]
    pub command: Option<Command>,
    /// TOML config file (keys as the long flags, with '_').
    #[arg(long, env = "SHADOW_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7071].
    #[arg(long, env = "SHADOW_NODE_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// host:port edges use to reach this node [default: the listen address].
    #[arg(long, env = "SHADOW_NODE_ADVERTISE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// The master's URL [default: http://127.0.0.1:7070].
    #[arg(long, env = "SHADOW_MASTER_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// This node's id [default: the hostname].
    #[arg(long, env = "SHADOW_NODE_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Where volumes and state live [default: ./shadow-data].
    #[arg(long, env = "SHADOW_DATA_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Containers this node runs at once at most [default: 100].
    #[arg(long, env = "SHADOW_NODE_CAPACITY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// Threads serving connections, each with its own event loop; 0 = one per CPU [default: 0].
    #[arg(long, env = "SHADOW_WORKERS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Heartbeat interval to the master [default: 1000].
    #[arg(long, env = "SHADOW_HEARTBEAT_INTERVAL_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Volume lease time to live, counted from when each renewal is sent; all leases are renewed
    /// together every quarter of it. Bounds both a dead node's failover and how long the master
    /// may be unreachable before stateful apps stop (docs/leases.md) [default: 4000].
    #[arg(long, env = "SHADOW_LEASE_TTL_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ttl_ms: Option<u64>,
    /// How long before its lease's deadline an app is killed: the time a kill may take; less
    /// than half the TTL [default: a quarter of the TTL].
    #[arg(long, env = "SHADOW_LEASE_STOP_MARGIN_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_stop_margin_ms: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL when stopping an app [default: 10].
    #[arg(long, env = "SHADOW_STOP_GRACE_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_grace_s: Option<u64>,
    /// Docker daemon address, e.g. unix:///var/run/docker.sock [default: DOCKER_HOST or the local socket].
    #[arg(long, env = "SHADOW_DOCKER_HOST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_host: Option<String>,
    /// S3 endpoint for `s3` volumes; empty = AWS [default: empty].
    #[arg(long, env = "SHADOW_S3_ENDPOINT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,
    /// Bucket holding `s3` volume snapshots (unset = no `s3` backend on this node).
    #[arg(long, env = "SHADOW_S3_BUCKET")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_bucket: Option<String>,
    /// S3 region [default: us-east-1].
    #[arg(long, env = "SHADOW_S3_REGION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_region: Option<String>,
    /// Path-style addressing (MinIO and most self-hosted servers need it) [default: false].
    #[arg(long, env = "SHADOW_S3_PATH_STYLE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_path_style: Option<bool>,
    /// Docker network the apps run on, made with traffic between its containers off, so no app
    /// can reach another [default: shadow-apps].
    #[arg(long, env = "SHADOW_APP_NETWORK")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_network: Option<String>,
    /// A Docker config.json with registry credentials for pulls ({"auths": {...}}, as `docker
    /// login` writes it); read at each pull [default: unset].
    #[arg(long, env = "SHADOW_REGISTRY_AUTH_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_auth_file: Option<PathBuf>,
    /// Sandboxes kept ready for cold starts (a network namespace and a published port each,
    /// made ahead); 0 = off [default: 2].
    #[arg(long, env = "SHADOW_SANDBOX_POOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox_pool: Option<usize>,
    /// The static shadow-pause binary the node makes its sandbox image from [default:
    /// /usr/lib/shadow/shadow-pause].
    #[arg(long, env = "SHADOW_PAUSE_BINARY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_binary: Option<PathBuf>,
    /// Bytes of each app's output kept on the node (twice this at most, in two files) [default: 1048576].
    #[arg(long, env = "SHADOW_APP_LOG_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_log_bytes: Option<u64>,
    /// Seconds between the node's usage reports to the master (what a node's sudden death can
    /// lose at most) [default: 60].
    #[arg(long, env = "SHADOW_USAGE_REPORT_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_report_s: Option<u64>,
    /// Host firewall rules (iptables) so apps cannot open connections to this machine or to
    /// the cloud metadata service: auto (warn when they cannot be made), on, off [default: auto].
    #[arg(long, env = "SHADOW_APP_FIREWALL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_firewall: Option<String>,
    /// Memory limit (MiB) of an app whose task sets none [default: 512].
    #[arg(long, env = "SHADOW_DEFAULT_MEMORY_MB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_memory_mb: Option<u64>,
    /// CPU limit (cores) of an app whose task sets none [default: 1].
    #[arg(long, env = "SHADOW_DEFAULT_CPUS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_cpus: Option<f64>,
    /// Process and thread limit of an app whose task sets none [default: 256].
    #[arg(long, env = "SHADOW_DEFAULT_PIDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_pids: Option<i64>,
    /// Memory (MiB) the apps' limits may add up to; a start past it is refused; 0 = 90 % of the
    /// machine's memory [default: 0].
    #[arg(long, env = "SHADOW_MEMORY_BUDGET_MB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_budget_mb: Option<u64>,
    /// Refuse to start apps that do not name a non-root user [default: false].
    #[arg(long, env = "SHADOW_REQUIRE_NON_ROOT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_non_root: Option<bool>,
    /// Refuse to start apps that do not ask for a read-only root filesystem [default: false].
    #[arg(long, env = "SHADOW_REQUIRE_READ_ONLY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_read_only: Option<bool>,
    /// S3 key prefix volume seeds must be under (never another task's snapshots) [default: seeds/].
    #[arg(long, env = "SHADOW_SEED_PREFIX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed_prefix: Option<String>,
    /// Disk (MiB) a restore must leave free on the node; a larger archive is refused [default: 1024].
    #[arg(long, env = "SHADOW_DISK_RESERVE_MB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_reserve_mb: Option<u64>,
    /// Seconds between snapshots of a running `s3` app; 0 = off [default: 300].
    #[arg(long, env = "SHADOW_CHECKPOINT_INTERVAL_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_interval_s: Option<u64>,
    /// An app whose container used more than this percent of one CPU over the last busy window
    /// is not idle, even without requests; 0 = off [default: 10].
    #[arg(long, env = "SHADOW_BUSY_CPU_PERCENT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy_cpu_percent: Option<f64>,
    /// Milliseconds over which an app's CPU use is measured for the busy check [default: 5000].
    #[arg(long, env = "SHADOW_BUSY_WINDOW_MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy_window_ms: Option<u64>,
    /// Seconds an idle app stays frozen (paused, memory kept) before it is stopped, for tasks
    /// that do not set frozen_timeout_s; 0 = apps are stopped when idle, never frozen
    /// [default: 600].
    #[arg(long, env = "SHADOW_FROZEN_TIMEOUT_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frozen_timeout_s: Option<u64>,
    /// Snapshots kept per task after a commit [default: 2].
    #[arg(long, env = "SHADOW_SNAPSHOT_KEEP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_keep: Option<u32>,
    /// S3 access key. Env only (SHADOW_S3_ACCESS_KEY); unset = the SDK's credential chain.
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_access_key: Option<String>,
    /// S3 secret key. Env only (SHADOW_S3_SECRET_KEY).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_secret_key: Option<String>,
    /// Where attached block volumes show up (symlinks named by the cloud) [default: /dev/disk/by-id].
    #[arg(long, env = "SHADOW_BLOCK_DEVICE_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_device_dir: Option<PathBuf>,
    /// Enable `ebs` volumes: this node is an EC2 instance, or names one below [default: false].
    #[arg(long, env = "SHADOW_EBS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ebs: Option<bool>,
    /// This node's EC2 instance id for `ebs` volumes [default: from the instance metadata (IMDSv2)].
    #[arg(long, env = "SHADOW_AWS_INSTANCE_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_instance_id: Option<String>,
    /// This node's availability zone for `ebs` volumes [default: from the instance metadata (IMDSv2)].
    #[arg(long, env = "SHADOW_AWS_AZ")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_az: Option<String>,
    /// AWS region for `ebs` volumes [default: the SDK's chain, else the zone's region].
    #[arg(long, env = "SHADOW_AWS_REGION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_region: Option<String>,
    /// EC2 API endpoint for `ebs` volumes; empty = AWS [default: empty].
    #[arg(long, env = "SHADOW_AWS_ENDPOINT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_endpoint: Option<String>,
    /// DigitalOcean API base for `do` volumes [default: https://api.digitalocean.com].
    #[arg(long, env = "SHADOW_DO_API")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_api: Option<String>,
    /// This node's droplet id for `do` volumes [default: from the droplet metadata service].
    #[arg(long, env = "SHADOW_DO_DROPLET_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_droplet_id: Option<String>,
    /// This node's DigitalOcean region for `do` volumes [default: from the droplet metadata service].
    #[arg(long, env = "SHADOW_DO_REGION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub do_region: Option<String>,
    /// DigitalOcean API token. Env only (SHADOW_DO_TOKEN); set = `do` volumes on this node.
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
pub struct NodeConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default)]
    pub advertise: Option<String>,
    #[serde(default = "default_master")]
    pub master: String,
    #[serde(default = "default_node_id")]
    pub node_id: String,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    #[serde(default)]
    pub workers: usize,
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    #[serde(default)]
    pub lease_stop_margin_ms: Option<u64>,
    #[serde(default = "default_stop_grace_s")]
    pub stop_grace_s: u64,
    #[serde(default)]
    pub docker_host: Option<String>,
    #[serde(default)]
    pub api_token: Option<String>,
    #[serde(default)]
    pub s3_endpoint: Option<String>,
    #[serde(default)]
    pub s3_bucket: Option<String>,
    #[serde(default)]
    pub s3_region: Option<String>,
    #[serde(default)]
    pub s3_path_style: bool,
    #[serde(default = "default_checkpoint_s")]
    pub checkpoint_interval_s: u64,
    #[serde(default = "default_busy_cpu_percent")]
    pub busy_cpu_percent: f64,
    #[serde(default = "default_busy_window_ms")]
    pub busy_window_ms: u64,
    #[serde(default = "default_frozen_timeout_s")]
    pub frozen_timeout_s: u64,
    #[serde(default)]
    pub require_non_root: bool,
    #[serde(default)]
    pub require_read_only: bool,
    #[serde(default = "default_seed_prefix")]
    pub seed_prefix: String,
    #[serde(default = "default_disk_reserve_mb")]
    pub disk_reserve_mb: u64,
    #[serde(default = "default_app_network")]
    pub app_network: String,
    #[serde(default = "default_app_firewall")]
    pub app_firewall: String,
    #[serde(default = "default_app_log_bytes")]
    pub app_log_bytes: u64,
    #[serde(default = "default_usage_report_s")]
    pub usage_report_s: u64,
    #[serde(default)]
    pub registry_auth_file: Option<PathBuf>,
    #[serde(default = "default_sandbox_pool")]
    pub sandbox_pool: usize,
    #[serde(default)]
    pub pause_binary: Option<PathBuf>,
    #[serde(default = "default_memory_mb")]
    pub default_memory_mb: u64,
    #[serde(default = "default_cpus")]
    pub default_cpus: f64,
    #[serde(default = "default_pids")]
    pub default_pids: i64,
    #[serde(default)]
    pub memory_budget_mb: u64,
    #[serde(default = "default_snapshot_keep")]
    pub snapshot_keep: u32,
    #[serde(default)]
    pub s3_access_key: Option<String>,
    #[serde(default)]
    pub s3_secret_key: Option<String>,
    #[serde(default = "default_block_device_dir")]
    pub block_device_dir: PathBuf,
    #[serde(default)]
    pub ebs: bool,
    #[serde(default)]
    pub aws_instance_id: Option<String>,
    #[serde(default)]
    pub aws_az: Option<String>,
    #[serde(default)]
    pub aws_region: Option<String>,
    #[serde(default)]
    pub aws_endpoint: Option<String>,
    #[serde(default = "default_do_api")]
    pub do_api: String,
    #[serde(default)]
    pub do_droplet_id: Option<String>,
    #[serde(default)]
    pub do_region: Option<String>,
    #[serde(default)]
    pub do_token: Option<String>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7071))
}
fn default_master() -> String {
    "http://127.0.0.1:7070".into()
}
fn default_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./shadow-data")
}
fn default_capacity() -> u32 {
    100
}
fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_lease_ttl_ms() -> u64 {
    4_000
}
fn default_stop_grace_s() -> u64 {
    10
}
fn default_seed_prefix() -> String {
    crate::volume::s3::DEFAULT_SEED_PREFIX.into()
}
fn default_disk_reserve_mb() -> u64 {
    1024
}
fn default_app_log_bytes() -> u64 {
    1 << 20
}
fn default_usage_report_s() -> u64 {
    60
}
fn default_app_firewall() -> String {
    "auto".into()
}
fn default_app_network() -> String {
    "shadow-apps".into()
}
fn default_memory_mb() -> u64 {
    512
}
fn default_cpus() -> f64 {
    1.0
}
fn default_pids() -> i64 {
    256
}
fn default_busy_cpu_percent() -> f64 {
    10.0
}

fn default_busy_window_ms() -> u64 {
    5_000
}

fn default_frozen_timeout_s() -> u64 {
    600
}

fn default_sandbox_pool() -> usize {
    2
}

fn default_checkpoint_s() -> u64 {
    300
}
fn default_snapshot_keep() -> u32 {
    2
}
fn default_block_device_dir() -> PathBuf {
    PathBuf::from("/dev/disk/by-id")
}
fn default_do_api() -> String {
    "https://api.digitalocean.com".into()
}

impl NodeConfig {
    /// Defaults with a given id, master and data dir, for tests and embedding.
    pub fn new(node_id: impl Into<String>, master: impl Into<String>, data_dir: PathBuf) -> Self {
        Self {
            listen: default_listen(),
            advertise: None,
            master: master.into(),
            node_id: node_id.into(),
            data_dir,
            capacity: default_capacity(),
            workers: 0,
            heartbeat_interval_ms: default_heartbeat_ms(),
            lease_ttl_ms: default_lease_ttl_ms(),
            lease_stop_margin_ms: None,
            stop_grace_s: default_stop_grace_s(),
            docker_host: None,
            api_token: None,
            s3_endpoint: None,
            s3_bucket: None,
            s3_region: None,
            s3_path_style: false,
            checkpoint_interval_s: default_checkpoint_s(),
            busy_cpu_percent: default_busy_cpu_percent(),
            busy_window_ms: default_busy_window_ms(),
            frozen_timeout_s: default_frozen_timeout_s(),
            require_non_root: false,
            require_read_only: false,
            seed_prefix: default_seed_prefix(),
            disk_reserve_mb: default_disk_reserve_mb(),
            app_network: default_app_network(),
            app_firewall: default_app_firewall(),
            app_log_bytes: default_app_log_bytes(),
            usage_report_s: default_usage_report_s(),
            registry_auth_file: None,
            sandbox_pool: default_sandbox_pool(),
            pause_binary: None,
            default_memory_mb: default_memory_mb(),
            default_cpus: default_cpus(),
            default_pids: default_pids(),
            memory_budget_mb: 0,
            snapshot_keep: default_snapshot_keep(),
            s3_access_key: None,
            s3_secret_key: None,
            block_device_dir: default_block_device_dir(),
            ebs: false,
            aws_instance_id: None,
            aws_az: None,
            aws_region: None,
            aws_endpoint: None,
            do_api: default_do_api(),
            do_droplet_id: None,
            do_region: None,
            do_token: None,
        }
    }
    pub fn usage_report_interval(&self) -> Duration {
        Duration::from_secs(self.usage_report_s.max(1))
    }
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.max(10))
    }
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms.max(300))
    }
    /// The TTL, the renewal period and the stop margin; an error says which setting to change.
    pub fn lease_timing(&self) -> Result<crate::lease::LeaseTiming, String> {
        let ttl = self.lease_ttl();
        let margin = self
            .lease_stop_margin_ms
            .map_or(ttl / 4, Duration::from_millis);
        if margin * 2 >= ttl {
            return Err(format!(
                "SHADOW_LEASE_STOP_MARGIN_MS ({} ms) must be less than half of SHADOW_LEASE_TTL_MS ({} ms), or apps would be killed before their first renewal; lower the margin or raise the TTL",
                margin.as_millis(),
                ttl.as_millis()
            ));
        }
        Ok(crate::lease::LeaseTiming::new(ttl, margin))
    }
    /// The static binary of the sandboxes' process: the setting, else where the package puts it.
    pub fn pause_binary(&self) -> PathBuf {
        self.pause_binary
            .clone()
            .unwrap_or_else(|| PathBuf::from("/usr/lib/shadow/shadow-pause"))
    }

    /// The memory the apps' limits may add up to: the setting, else 90 % of the machine's.
    pub fn memory_budget_mb(&self) -> u64 {
        if self.memory_budget_mb > 0 {
            return self.memory_budget_mb;
        }
        let total_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .unwrap_or(4 * 1024 * 1024);
        total_kib / 1024 * 9 / 10
    }
    /// How long `task` stays frozen before it is stopped; zero means it is never frozen.
    pub fn frozen_timeout(&self, task: &shadow_common::task::Task) -> Duration {
        Duration::from_secs(task.spec.frozen_timeout_s.unwrap_or(self.frozen_timeout_s))
    }

    /// How often a running app's CPU use is sampled for the busy check (at least 100 ms).
    pub fn busy_window(&self) -> Duration {
        Duration::from_millis(self.busy_window_ms.max(100))
    }
    /// Zero means no periodic checkpoints.
    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_secs(self.checkpoint_interval_s)
    }
    pub fn stop_grace(&self) -> Duration {
        Duration::from_secs(self.stop_grace_s)
    }
}
