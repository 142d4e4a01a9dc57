//! The task (app) definition: what the master stores and the nodes run, and its validation.
//!
//! A [`TaskSpec`] is what a user sends; a [`Task`] is a spec with the id the master gave it.
//! [`TaskSpec::from_json`] parses untrusted JSON and names the field at fault, so the master can
//! answer `400 {"error", "field"}` without further work.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{parse_json, FieldError};

/// The longest HSTS max-age accepted: two years, what browsers' preload lists ask for.
pub const MAX_HSTS_S: u64 = 63_072_000;

/// The port an app listens on inside its container unless the task says otherwise.
pub const DEFAULT_PORT: u16 = 8000;
/// Where a task's volume is mounted inside its container.
pub const DATA_MOUNT: &str = "/data";

/// A stored task: the spec plus its server-made id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    #[serde(flatten)]
    pub spec: TaskSpec,
}

/// What a user asks Shadow to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// A human name, for logs and container names.
    pub name: String,
    /// The hostnames routed to this task; unique across all tasks.
    pub domains: Vec<String>,
    /// The container image, e.g. `ghcr.io/me/app:1`.
    pub image: String,
    /// When a node asks the registry for the image: `if_missing` (only when it has none) or
    /// `always` (at each cold start, so a re-pushed tag is picked up).
    #[serde(default)]
    pub pull: PullPolicy,
    /// Overrides the image's command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values are write-only: the API answers them as `null`, logs
    /// never show them, and only the watch stream carries them, to the nodes that start the app.
    /// Sending `null` back keeps the stored value, so a read-modify-write loses nothing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, Secret>,
    /// The port the app listens on inside the container.
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub volume: VolumeSpec,
    /// Seconds without a request, an open connection or a busy CPU before the app is frozen
    /// (its container paused, memory kept, thawed by the next request in milliseconds), or
    /// stopped when it does not freeze.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_s: u64,
    /// Seconds an app stays frozen before it is stopped (volume written back, lease released);
    /// 0 = never frozen, stopped at once when idle; unset = the node's default
    /// (`SHADOW_FROZEN_TIMEOUT_S`). A node short of memory stops frozen apps sooner, least
    /// recently used first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_timeout_s: Option<u64>,
    /// Keeps the app running even without requests (started by the node the edges route it
    /// to, never stopped for being idle): for those who pay for no cold start.
    #[serde(default)]
    pub min_running: bool,
    /// Seconds a cold start may take before waiting requests get 503.
    #[serde(default = "default_start_timeout")]
    pub start_timeout_s: u64,
    #[serde(default)]
    pub health: HealthSpec,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub cold_start: ColdStart,
    /// Answer plain-HTTP requests with a 308 to the same URL on HTTPS (edges with TLS only).
    #[serde(default)]
    pub https_redirect: bool,
    /// Send `Strict-Transport-Security: max-age=N` on HTTPS answers; 0 sends none.
    #[serde(default)]
    pub hsts_max_age_s: u64,
    /// The user (and group) the app runs as: `name`, `uid` or `uid:gid`; unset: the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Run with a read-only root filesystem; `/data` and a small `/tmp` stay writable.
    #[serde(default)]
    pub read_only: bool,
    /// Set by the master (`POST /tasks/{id}/restart` adds one): a new value restarts the app
    /// and ends its back-off, as any change of the spec does.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A write-only value: `None` once redacted for an API answer, or in a request that keeps what is
/// stored. Its `Debug` never shows the value, so a logged spec leaks nothing.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(Option<String>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Some(value.into()))
    }
    /// Stands for "keep the stored value" in a request; what a redacted answer shows.
    pub fn kept() -> Self {
        Self(None)
    }
    pub fn value(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Secret(..)"
        } else {
            "Secret(kept)"
        })
    }
}

impl Task {
    /// The task as the API shows it: secret values left out.
    pub fn redacted(mut self) -> Self {
        for v in self.spec.secret_env.values_mut() {
            *v = Secret::kept();
        }
        self
    }
}

impl TaskSpec {
    /// Whether an app started with `self` runs as one started with `other` would: the same spec
    /// but for the master's migration bookkeeping, which a running app need not restart for.
    pub fn runs_like(&self, other: &TaskSpec) -> bool {
        let mut a = self.clone();
        a.volume.migrating_from = other.volume.migrating_from;
        a == *other
    }

    /// Fills every `null` secret from `stored` (the task's current spec); a `null` for a name
    /// that has no stored value is refused, since it would start the app without it.
    pub fn keep_secrets(&mut self, stored: Option<&TaskSpec>) -> Result<(), FieldError> {
        for (k, v) in &mut self.secret_env {
            if v.0.is_some() {
                continue;
            }
            match stored.and_then(|s| s.secret_env.get(k)).and_then(|s| s.0.clone()) {
                Some(old) => v.0 = Some(old),
                None => {
                    return Err(FieldError::new(
                        format!("secret_env.{k}"),
                        format!("secret_env.{k} is null but no value is stored for it; send its value (values are write-only: the API shows them as null)"),
                    ))
                }
            }
        }
        Ok(())
    }
}

fn default_port() -> u16 {
    DEFAULT_PORT
}
fn default_idle_timeout() -> u64 {
    300
}
fn default_start_timeout() -> u64 {
    60
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    #[default]
    IfMissing,
    Always,
}

/// Where the task's `/data` lives between runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    #[serde(default)]
    pub kind: VolumeKind,
    /// Size for block volumes, in GB.
    #[serde(default = "default_size_gb")]
    pub size_gb: u32,
    /// S3 key of an archive to start from the first time (the ancestor's `source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
    /// Set by the master (never by a request) after `kind` changed with `?migrate=true`: the
    /// backend the data is still in. The next start copies it into `kind`'s backend, writes it
    /// there, and tells the master, which clears this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrating_from: Option<VolumeKind>,
}

fn default_size_gb() -> u32 {
    1
}

impl Default for VolumeSpec {
    fn default() -> Self {
        Self {
            kind: VolumeKind::None,
            size_gb: default_size_gb(),
            seed: None,
            migrating_from: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    /// No persistent data: `/data` is not mounted.
    #[default]
    None,
    /// A directory on the node (development, single node).
    Local,
    /// A snapshot in S3 restored on attach and written back on detach.
    S3,
    /// An AWS EBS volume attached to the node.
    Ebs,
    /// A DigitalOcean block volume attached to the droplet.
    Do,
}

impl VolumeKind {
    /// Whether the task has data that must have a single writer (and so needs a lease).
    pub fn is_stateful(self) -> bool {
        self != VolumeKind::None
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// An HTTP path that answers 2xx when the app is ready; unset = TCP connect is enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The longest wait between readiness probes during a start (they begin 1 ms apart and
    /// back off to this).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
}

fn default_interval_ms() -> u64 {
    100
}

impl Default for HealthSpec {
    fn default() -> Self {
        Self {
            path: None,
            interval_ms: default_interval_ms(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
}

/// What a request for a stopped app gets while it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColdStart {
    /// Hold the request until the app is ready (bounded by `start_timeout_s`).
    #[default]
    Hold,
    /// Answer browsers at once with a self-refreshing loading page.
    Page,
}

/// Limits enforced on specs; generous, but they stop typos such as a 10^9 s timeout.
pub mod limits {
    pub const MAX_DOMAINS: usize = 64;
    pub const MAX_NAME: usize = 128;
    pub const MAX_IDLE_TIMEOUT_S: u64 = 7 * 24 * 3600;
    pub const MAX_START_TIMEOUT_S: u64 = 3600;
    pub const MAX_SIZE_GB: u32 = 16 * 1024;
    pub const MIN_MEMORY_MB: u64 = 6;
    pub const MAX_MEMORY_MB: u64 = 1024 * 1024;
    pub const MAX_CPUS: f64 = 256.0;
    pub const MAX_PIDS: i64 = 1 << 22;
    pub const MIN_INTERVAL_MS: u64 = 10;
    pub const MAX_INTERVAL_MS: u64 = 60_000;
}

impl TaskSpec {
    /// Parses and validates untrusted JSON, naming the field at fault on error.
    pub fn from_json(body: &[u8]) -> Result<TaskSpec, FieldError> {
        let mut spec: TaskSpec = parse_json(body)?;
        spec.normalize();
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every field; the first fault wins.
    pub fn validate(&self) -> Result<(), FieldError> {
        use limits::*;
        let name = self.name.trim();
        if name.is_empty() || self.name.chars().count() > MAX_NAME {
            return Err(FieldError::new(
                "name",
                format!("name must be 1 to {MAX_NAME} characters"),
            ));
        }
        if self.domains.is_empty() {
            return Err(FieldError::new(
                "domains",
                "domains must list at least one hostname",
            ));
        }
        if self.domains.len() > MAX_DOMAINS {
            return Err(FieldError::new(
                "domains",
                format!("at most {MAX_DOMAINS} domains per task"),
            ));
        }
        for (i, d) in self.domains.iter().enumerate() {
            if let Err(why) = check_hostname(d) {
                return Err(FieldError::new(
                    format!("domains[{i}]"),
                    format!("{d:?} is not a valid hostname: {why}"),
                ));
            }
            if is_reserved(d) {
                return Err(FieldError::new(
                    format!("domains[{i}]"),
                    format!("{d:?} is under .invalid, which Shadow reserves for its own requests (node health checks); use the app's real hostname"),
                ));
            }
            if self.domains[..i]
                .iter()
                .any(|o| canonical_host(o) == canonical_host(d))
            {
                return Err(FieldError::new(
                    format!("domains[{i}]"),
                    format!("{d:?} is listed twice"),
                ));
            }
        }
        if self.image.trim().is_empty() || self.image.chars().any(char::is_whitespace) {
            return Err(FieldError::new(
                "image",
                "image must be a non-empty image reference without spaces, e.g. \"nginx:1.27\"",
            ));
        }
        if let Some(cmd) = &self.command {
            if cmd.is_empty() {
                return Err(FieldError::new(
                    "command",
                    "command, when given, must have at least one element; omit it to use the image's",
                ));
            }
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(FieldError::new(
                    format!("env.{k}"),
                    "environment variable names must be non-empty and contain no '=' or NUL",
                ));
            }
        }
        for (k, v) in &self.secret_env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(FieldError::new(
                    format!("secret_env.{k}"),
                    "environment variable names must be non-empty and contain no '=' or NUL",
                ));
            }
            if self.env.contains_key(k) {
                return Err(FieldError::new(
                    format!("secret_env.{k}"),
                    format!("{k} is in both env and secret_env; keep it in one of them"),
                ));
            }
            if v.value().is_some_and(|v| v.contains('\0')) {
                return Err(FieldError::new(
                    format!("secret_env.{k}"),
                    "environment variable values cannot contain NUL",
                ));
            }
        }
        if self.port == 0 {
            return Err(FieldError::new("port", "port must be 1 to 65535"));
        }
        if self.volume.size_gb == 0 || self.volume.size_gb > MAX_SIZE_GB {
            return Err(FieldError::new(
                "volume.size_gb",
                format!("volume.size_gb must be 1 to {MAX_SIZE_GB}"),
            ));
        }
        if self
            .volume
            .seed
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            return Err(FieldError::new(
                "volume.seed",
                "volume.seed, when given, must be an S3 key",
            ));
        }
        if self.idle_timeout_s == 0 || self.idle_timeout_s > MAX_IDLE_TIMEOUT_S {
            return Err(FieldError::new(
                "idle_timeout_s",
                format!("idle_timeout_s must be 1 to {MAX_IDLE_TIMEOUT_S}"),
            ));
        }
        if self
            .frozen_timeout_s
            .is_some_and(|s| s > MAX_IDLE_TIMEOUT_S)
        {
            return Err(FieldError::new(
                "frozen_timeout_s",
                format!("frozen_timeout_s must be 0 (never frozen) to {MAX_IDLE_TIMEOUT_S}, or unset for the node's default"),
            ));
        }
        if self.start_timeout_s == 0 || self.start_timeout_s > MAX_START_TIMEOUT_S {
            return Err(FieldError::new(
                "start_timeout_s",
                format!("start_timeout_s must be 1 to {MAX_START_TIMEOUT_S}"),
            ));
        }
        if let Some(p) = &self.health.path {
            if !p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(FieldError::new(
                    "health.path",
                    "health.path must be an absolute path such as \"/healthz\"",
                ));
            }
        }
        if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&self.health.interval_ms) {
            return Err(FieldError::new(
                "health.interval_ms",
                format!("health.interval_ms must be {MIN_INTERVAL_MS} to {MAX_INTERVAL_MS}"),
            ));
        }
        if let Some(m) = self.resources.memory_mb {
            if !(MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&m) {
                return Err(FieldError::new(
                    "resources.memory_mb",
                    format!("resources.memory_mb must be {MIN_MEMORY_MB} to {MAX_MEMORY_MB}"),
                ));
            }
        }
        if let Some(c) = self.resources.cpus {
            if !(c > 0.0 && c <= MAX_CPUS) {
                return Err(FieldError::new(
                    "resources.cpus",
                    format!("resources.cpus must be above 0 and at most {MAX_CPUS}"),
                ));
            }
        }
        if let Some(u) = &self.user {
            let ok = !u.is_empty()
                && u.len() <= 64
                && u.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
            if !ok {
                return Err(FieldError::new(
                    "user",
                    "user must be a name, a uid or uid:gid (letters, digits, '_', '-', '.', ':'; at most 64)",
                ));
            }
        }
        if self.hsts_max_age_s > MAX_HSTS_S {
            return Err(FieldError::new(
                "hsts_max_age_s",
                format!("hsts_max_age_s must be at most {MAX_HSTS_S} (two years)"),
            ));
        }
        if let Some(p) = self.resources.pids {
            if !(1..=MAX_PIDS).contains(&p) {
                return Err(FieldError::new(
                    "resources.pids",
                    format!("resources.pids must be 1 to {MAX_PIDS}"),
                ));
            }
        }
        Ok(())
    }

    /// The domains in the canonical form used for routing: lower case, no trailing dot, and
    /// internationalised names in their ASCII (IDNA, `xn--`) form, which is what clients send as
    /// Host. A name IDNA refuses is left for [`TaskSpec::validate`] to name.
    pub fn normalize(&mut self) {
        for d in &mut self.domains {
            *d = canonical_host(d);
        }
    }
}

/// A hostname as routing compares it: IDNA to ASCII (which also lower-cases), no trailing dot.
pub fn canonical_host(host: &str) -> String {
    let trimmed = host.trim_end_matches('.');
    match idna::domain_to_ascii(trimmed) {
        Ok(ascii) if !ascii.is_empty() => ascii,
        _ => trimmed.to_ascii_lowercase(),
    }
}

/// Hostnames Shadow uses itself (RFC 6761's `.invalid`: edges send node health checks to
/// `shadow-health.invalid`), which no task may claim.
pub fn is_reserved(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "invalid" || h.ends_with(".invalid")
}

/// RFC 1123 hostname check (letters, digits, hyphens; labels of 1-63; 253 total).
/// A leading `*.` is not accepted: routing is by exact host.
pub fn check_hostname(host: &str) -> Result<(), &'static str> {
    if host.is_empty() || host.len() > 253 {
        return Err("must be 1 to 253 characters");
    }
    for label in host.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated label must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("only letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label may not start or end with '-'");
        }
    }
    Ok(())
}

/// Strips the port from a Host header value and lower-cases it, for domain lookups.
pub fn host_without_port(host: &str) -> String {
    let h = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        // The port is the digits after the last ':'. Scanned from the end by hand: this runs on
        // every request, and `rsplit_once`'s `memrchr` cost ~150 instructions on a short host.
        let bytes = host.as_bytes();
        let digits = bytes
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_digit())
            .count();
        match (bytes.len() - digits).checked_sub(1) {
            Some(colon) if bytes[colon] == b':' => &host[..colon],
            _ => host,
        }
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<TaskSpec, FieldError> {
        TaskSpec::from_json(v.to_string().as_bytes())
    }

    fn minimal() -> serde_json::Value {
        serde_json::json!({"name": "app", "domains": ["app.example.com"], "image": "app:1"})
    }

    #[test]
    fn defaults_fill_a_minimal_spec() {
        let s = parse(minimal()).expect("valid");
        assert_eq!(s.port, 8000);
        assert_eq!(s.idle_timeout_s, 300);
        assert_eq!(s.start_timeout_s, 60);
        assert_eq!(s.volume.kind, VolumeKind::None);
        assert_eq!(s.cold_start, ColdStart::Hold);
    }

    #[test]
    fn unicode_domains_become_their_idna_ascii_form() {
        let s =
            parse(serde_json::json!({"name": "a", "domains": ["Bücher.Example."], "image": "x"}))
                .expect("valid");
        assert_eq!(s.domains, vec!["xn--bcher-kva.example"]);
        let twice = parse(serde_json::json!(
            {"name": "a", "domains": ["bücher.example", "xn--bcher-kva.example"], "image": "x"}
        ))
        .expect_err("the same name twice");
        assert_eq!(twice.field, "domains[1]");
    }

    #[test]
    fn secrets_are_redacted_kept_and_never_debug_printed() {
        let mut v = minimal();
        v["secret_env"] = serde_json::json!({"DB_PASSWORD": "hunter2"});
        let stored = parse(v).expect("valid");
        assert!(!format!("{stored:?}").contains("hunter2"));
        let task = Task {
            id: "t".into(),
            spec: stored.clone(),
        };
        let shown = serde_json::to_value(task.redacted()).unwrap();
        assert_eq!(
            shown["secret_env"],
            serde_json::json!({"DB_PASSWORD": null})
        );

        // Sending back what GET showed keeps the value.
        let mut back: TaskSpec =
            serde_json::from_value(serde_json::json!({"name": "app", "domains": ["app.example.com"], "image": "app:1", "secret_env": {"DB_PASSWORD": null}})).unwrap();
        back.keep_secrets(Some(&stored)).expect("kept");
        assert_eq!(back.secret_env["DB_PASSWORD"].value(), Some("hunter2"));
        // A null with nothing stored is refused, naming the key.
        let mut fresh = back.clone();
        fresh.secret_env.insert("NEW".into(), Secret::kept());
        let e = fresh
            .keep_secrets(Some(&stored))
            .expect_err("nothing stored");
        assert_eq!(e.field, "secret_env.NEW");
    }

    #[test]
    fn a_name_in_env_and_secret_env_is_refused() {
        let mut v = minimal();
        v["env"] = serde_json::json!({"A": "1"});
        v["secret_env"] = serde_json::json!({"A": "2"});
        assert_eq!(parse(v).expect_err("twice").field, "secret_env.A");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                serde_json::json!({"domains": ["a.b"], "image": "x"}),
                "name",
            ),
            (
                serde_json::json!({"name": "a", "domains": ["bad host"], "image": "x"}),
                "domains[0]",
            ),
            (
                serde_json::json!({"name": "a", "domains": ["a.b"], "image": ""}),
                "image",
            ),
            (
                serde_json::json!({"name": "a", "domains": ["shadow-health.invalid"], "image": "x"}),
                "domains[0]",
            ),
            (
                serde_json::json!({"name": "a", "domains": ["a.b", "A.b."], "image": "x"}),
                "domains[1]",
            ),
            (
                serde_json::json!({"name": "a", "domains": ["a.b"], "image": "x", "volume": {"kind": "nfs"}}),
                "volume.kind",
            ),
            (
                serde_json::json!({"name": "a", "domains": ["a.b"], "image": "x", "volume": {"sizegb": 1}}),
                "volume.sizegb",
            ),
            (
                serde_json::json!({"name": "a", "domains": ["a.b"], "image": "x", "colour": 1}),
                "colour",
            ),
            (
                serde_json::json!({"name": "a", "domains": ["a.b"], "image": "x", "resources": {"memory_mb": 1}}),
                "resources.memory_mb",
            ),
            (
                serde_json::json!({"name": "a", "domains": ["a.b"], "image": "x", "port": 70000}),
                "port",
            ),
            (
                serde_json::json!({"name": "a", "domains": ["a.b"], "image": "x", "idle_timeout_s": 0}),
                "idle_timeout_s",
            ),
        ];
        for (body, field) in cases {
            let err = parse(body.clone()).expect_err(&body.to_string());
            assert_eq!(err.field, field, "{body}: {}", err.message);
        }
    }

    #[test]
    fn host_header_forms() {
        assert_eq!(host_without_port("App.Example.com:8080"), "app.example.com");
        assert_eq!(host_without_port("app.example.com."), "app.example.com");
        assert_eq!(host_without_port("[::1]:80"), "::1");
    }

    #[test]
    fn host_without_port_agrees_with_the_plain_rule() {
        // The rule as first written (`rsplit_once`), against the hand-scanned one.
        fn plain(host: &str) -> String {
            let h = if let Some(rest) = host.strip_prefix('[') {
                rest.split(']').next().unwrap_or(rest)
            } else {
                host.rsplit_once(':')
                    .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
                    .map_or(host, |(h, _)| h)
            };
            h.trim_end_matches('.').to_ascii_lowercase()
        }
        for host in [
            "",
            ":",
            "::",
            ":80",
            "a:",
            "a:80",
            "a:8x",
            "a:b:80",
            "a:80:b",
            "80",
            "A.B..:443",
            "app.example.com",
            "App.Example.COM.",
            "[::1]",
            "[::1]:80",
            "[::1",
            "x:-1",
            "é:80",
            "a.b:0000000000000000000080",
        ] {
            assert_eq!(host_without_port(host), plain(host), "{host:?}");
        }
    }
}
