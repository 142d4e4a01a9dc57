//! A typed client for the master's REST API, used by the node proxy, the edge, the CLI and tests.
//!
//! It takes several masters (`http://m1:7070,http://m2:7070`): a call that cannot reach one, or
//! that one answers with a 5xx, is sent to the next at once, and the client stays there; after
//! a while it tries the first again, so a fleet comes back to the masters in the operator's
//! order once they are up.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use reqwest::{Method, StatusCode};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    acme::{AcmeRecord, CertStatus},
    error::ErrorBody,
    lease::{Lease, LeaseGrant, LeaseRenewal, LeaseRequest, SessionRenewal, SessionRenewed},
    node::{Heartbeat, NodeRegistration, NodeStatus},
    status::{AppStatus, TaskStatus},
    task::{Task, TaskSpec},
    watch::WatchResponse,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the master at {url}: {source}; is it running and is SHADOW_MASTER_URL right?"
    )]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the master refused the API token (401); set SHADOW_API_TOKEN to the master's token")]
    Unauthorized,
    #[error("lease is held by {holder:?}: {message}")]
    LeaseConflict {
        holder: Option<String>,
        message: String,
    },
    #[error("master answered {status}: {}{}", .body.error, .body.field.as_ref().map(|f| format!(" (field {f})")).unwrap_or_default())]
    Api { status: StatusCode, body: ErrorBody },
    #[error("master sent a response this client cannot read ({0}); are master and client the same version?")]
    Decode(String),
}

impl ClientError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::Unauthorized => Some(StatusCode::UNAUTHORIZED),
            ClientError::LeaseConflict { .. } => Some(StatusCode::CONFLICT),
            _ => None,
        }
    }

    /// Whether asking again later may work: the master was unreachable or failed on its side.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Api { status, .. } => status.is_server_error(),
            _ => false,
        }
    }
}

/// Cheap to clone; shares one connection pool and the choice of master.
#[derive(Clone, Debug)]
pub struct MasterClient {
    masters: Arc<Masters>,
    token: Option<String>,
    http: reqwest::Client,
}

/// The masters a client may use, and which one it uses now.
#[derive(Debug)]
struct Masters {
    urls: Vec<String>,
    current: AtomicUsize,
    /// When the client last moved away from the first master.
    moved_at: Mutex<Option<tokio::time::Instant>>,
}

/// How long a client stays on another master before it tries the first again (plus up to
/// half as much again, so a fleet does not come back in one moment).
const COME_BACK: Duration = Duration::from_secs(30);

/// A random duration in `[0, max)`, to spread retries of many clients.
pub fn jitter(max: Duration) -> Duration {
    let nanos = max.as_nanos().max(1);
    Duration::from_nanos((uuid::Uuid::new_v4().as_u128() % nanos) as u64)
}

impl Masters {
    fn new(list: &str) -> Self {
        let urls: Vec<String> = list
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        Self {
            urls: if urls.is_empty() {
                vec![list.trim().to_string()]
            } else {
                urls
            },
            current: AtomicUsize::new(0),
            moved_at: Mutex::new(None),
        }
    }

    /// The master to ask first: the current one, or the first again after a while away.
    fn pick(&self) -> usize {
        let cur = self.current.load(Ordering::Relaxed);
        if cur != 0 {
            let mut moved = self.moved_at.lock().unwrap_or_else(|e| e.into_inner());
            if moved.is_some_and(|at| at.elapsed() >= COME_BACK + jitter(COME_BACK / 2)) {
                *moved = None;
                self.current.store(0, Ordering::Relaxed);
                return 0;
            }
        }
        cur
    }

    /// Moves from `from` to the next master (unless another call moved already).
    fn move_on(&self, from: usize) -> usize {
        let next = (from + 1) % self.urls.len();
        if self
            .current
            .compare_exchange(from, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            *self.moved_at.lock().unwrap_or_else(|e| e.into_inner()) =
                (next != 0).then(tokio::time::Instant::now);
        }
        next
    }
}

impl MasterClient {
    /// `base` is the master's URL, e.g. `http://127.0.0.1:7070`, or several separated by
    /// commas (masters sharing one database).
    pub fn new(base: impl Into<String>, token: Option<String>) -> Self {
        let masters = Masters::new(&base.into());
        // With another master to go to, a dead one must not hold a call for long.
        let connect = if masters.urls.len() > 1 {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        let http = reqwest::Client::builder()
            .connect_timeout(connect)
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        Self {
            masters: Arc::new(masters),
            token,
            http,
        }
    }

    /// The master the client uses now.
    pub fn base_url(&self) -> &str {
        &self.masters.urls[self.masters.current.load(Ordering::Relaxed) % self.masters.urls.len()]
    }

    /// Every master the client may use, in order.
    pub fn masters(&self) -> &[String] {
        &self.masters.urls
    }

    /// Calls the current master, and the next ones while they cannot answer (unreachable, or
    /// a 5xx): each at most once.
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let n = self.masters.urls.len();
        let mut at = self.masters.pick();
        let mut tried = 1;
        loop {
            let base = &self.masters.urls[at];
            match self
                .call_one(base, method.clone(), path, body, timeout)
                .await
            {
                Err(e) if e.is_transient() && tried < n => {
                    let next = self.masters.move_on(at);
                    tracing::warn!(error = %e, from = %base, to = %self.masters.urls[next], "master failed; moving to the next");
                    at = next;
                    tried += 1;
                }
                done => return done,
            }
        }
    }

    async fn call_one<B: Serialize, T: DeserializeOwned>(
        &self,
        base: &str,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let url = format!("{base}{path}");
        let mut req = self.http.request(method, &url).timeout(timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Transport { url, source })?;
        if status.is_success() {
            let bytes = if bytes.is_empty() {
                &b"null"[..]
            } else {
                &bytes[..]
            };
            return serde_json::from_slice(bytes).map_err(|e| ClientError::Decode(e.to_string()));
        }
        let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            ErrorBody::new(
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(200)
                    .collect::<String>(),
            )
        });
        Err(match status {
            StatusCode::UNAUTHORIZED => ClientError::Unauthorized,
            StatusCode::CONFLICT if path.starts_with("/leases/") => ClientError::LeaseConflict {
                holder: body.holder,
                message: body.error,
            },
            _ => ClientError::Api { status, body },
        })
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    pub async fn create_task(&self, spec: &TaskSpec) -> Result<Task, ClientError> {
        self.call(Method::POST, "/tasks/", Some(spec), Self::TIMEOUT)
            .await
    }
    pub async fn update_task(&self, id: &str, spec: &TaskSpec) -> Result<Task, ClientError> {
        self.call(
            Method::PUT,
            &format!("/tasks/{id}"),
            Some(spec),
            Self::TIMEOUT,
        )
        .await
    }
    /// Replaces the spec, letting `volume.kind` change: the next start moves the data.
    pub async fn update_task_migrating(
        &self,
        id: &str,
        spec: &TaskSpec,
    ) -> Result<Task, ClientError> {
        self.call(
            Method::PUT,
            &format!("/tasks/{id}?migrate=true"),
            Some(spec),
            Self::TIMEOUT,
        )
        .await
    }
    /// Merges `patch` (RFC 7396) into the task's spec.
    pub async fn patch_task(
        &self,
        id: &str,
        patch: &serde_json::Value,
    ) -> Result<Task, ClientError> {
        self.call(
            Method::PATCH,
            &format!("/tasks/{id}"),
            Some(patch),
            Self::TIMEOUT,
        )
        .await
    }
    /// Restarts the app and ends its back-off.
    pub async fn restart_task(&self, id: &str) -> Result<Task, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/tasks/{id}/restart"),
            None,
            Self::TIMEOUT,
        )
        .await
    }
    /// Starts the app ahead of its first request; answers at once (`{"node", "state"}`), and
    /// [`Self::task_status`] shows the start's progress.
    pub async fn wake_task(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/tasks/{id}/wake"),
            None,
            Self::TIMEOUT,
        )
        .await
    }
    /// Stops the app now wherever it runs (`{"nodes": [...]}`: the nodes told to).
    pub async fn sleep_task(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.call::<(), _>(
            Method::POST,
            &format!("/tasks/{id}/sleep"),
            None,
            Self::TIMEOUT,
        )
        .await
    }
    /// The app's output as it arrives: JSON lines (`shadow_common::logs::LogLine`), kept open
    /// with `follow`. No timeout: a follow lasts as long as the caller reads.
    pub async fn task_logs(
        &self,
        id: &str,
        tail: usize,
        follow: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let mut at = self.masters.pick();
        let mut tried = 1;
        let resp = loop {
            let url = format!(
                "{}/tasks/{id}/logs?tail={tail}&follow={follow}",
                self.masters.urls[at]
            );
            let mut req = self.http.get(&url);
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            match req.send().await {
                Ok(resp) => break resp,
                Err(_) if tried < self.masters.urls.len() => {
                    at = self.masters.move_on(at);
                    tried += 1;
                }
                Err(source) => return Err(ClientError::Transport { url, source }),
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body: ErrorBody = resp
            .json()
            .await
            .unwrap_or_else(|_| ErrorBody::new(format!("the master answered {status}")));
        Err(match status {
            StatusCode::UNAUTHORIZED => ClientError::Unauthorized,
            _ => ClientError::Api { status, body },
        })
    }
    /// Tells the master the data of task `id` was moved into its new backend, under lease
    /// `token`: the migration is done.
    pub async fn task_migrated(&self, id: &str, token: u64) -> Result<Task, ClientError> {
        self.call(
            Method::POST,
            &format!("/tasks/{id}/migrated"),
            Some(&serde_json::json!({ "token": token })),
            Self::TIMEOUT,
        )
        .await
    }
    pub async fn get_task(&self, id: &str) -> Result<Task, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/tasks/{id}"), None, Self::TIMEOUT)
            .await
    }
    pub async fn list_tasks(&self) -> Result<Vec<Task>, ClientError> {
        self.call::<(), _>(Method::GET, "/tasks/", None, Self::TIMEOUT)
            .await
    }
    pub async fn delete_task(&self, id: &str) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            Method::DELETE,
            &format!("/tasks/{id}"),
            None,
            Self::TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// Reports one app's status on this node (`PUT /nodes/{node}/apps/{task}`).
    pub async fn report_app(&self, status: &AppStatus) -> Result<(), ClientError> {
        self.call::<_, serde_json::Value>(
            Method::PUT,
            &format!("/nodes/{}/apps/{}", status.node, status.task_id),
            Some(status),
            Self::TIMEOUT,
        )
        .await
        .map(drop)
    }
    /// Sends what the node's apps used since its last report (`POST /usage`).
    pub async fn report_usage(
        &self,
        report: &crate::usage::UsageReport,
    ) -> Result<(), ClientError> {
        self.call::<_, serde_json::Value>(Method::POST, "/usage", Some(report), Self::TIMEOUT)
            .await
            .map(drop)
    }
    /// What apps used, hour by hour (`GET /usage`); `task` alone, `from`/`to` in unix seconds.
    pub async fn usage(
        &self,
        task: Option<&str>,
        from: Option<u64>,
        to: Option<u64>,
    ) -> Result<Vec<crate::usage::UsageRow>, ClientError> {
        let mut q = Vec::new();
        if let Some(t) = task {
            q.push(format!("task={t}"));
        }
        if let Some(f) = from {
            q.push(format!("from={f}"));
        }
        if let Some(t) = to {
            q.push(format!("to={t}"));
        }
        let path = if q.is_empty() {
            "/usage".to_owned()
        } else {
            format!("/usage?{}", q.join("&"))
        };
        self.call::<(), _>(Method::GET, &path, None, Self::TIMEOUT)
            .await
    }
    /// The task's state on every node that has it.
    pub async fn task_status(&self, id: &str) -> Result<TaskStatus, ClientError> {
        self.call::<(), _>(
            Method::GET,
            &format!("/tasks/{id}/status"),
            None,
            Self::TIMEOUT,
        )
        .await
    }
    /// Stores an ACME record (certificate, challenge, status) for every edge.
    pub async fn put_acme(&self, record: &AcmeRecord) -> Result<(), ClientError> {
        self.call::<_, serde_json::Value>(
            Method::PUT,
            &format!("/acme/{}", record.key()),
            Some(record),
            Self::TIMEOUT,
        )
        .await
        .map(drop)
    }
    /// Removes the ACME record with this key (`challenges/<token>`, ...); gone already is fine.
    pub async fn delete_acme(&self, key: &str) -> Result<(), ClientError> {
        match self
            .call::<(), serde_json::Value>(
                Method::DELETE,
                &format!("/acme/{key}"),
                None,
                Self::TIMEOUT,
            )
            .await
        {
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(()),
            r => r.map(drop),
        }
    }
    /// The stored ACME account's credentials, if an edge made one.
    pub async fn acme_account(&self) -> Result<Option<serde_json::Value>, ClientError> {
        match self
            .call::<(), serde_json::Value>(Method::GET, "/acme/account", None, Self::TIMEOUT)
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }
    /// Stores the account's credentials; 409 ([`ClientError::Api`]) when another is stored.
    pub async fn put_acme_account(
        &self,
        credentials: &serde_json::Value,
    ) -> Result<(), ClientError> {
        self.call::<_, serde_json::Value>(
            Method::PUT,
            "/acme/account",
            Some(credentials),
            Self::TIMEOUT,
        )
        .await
        .map(drop)
    }
    pub async fn cert_statuses(&self) -> Result<Vec<CertStatus>, ClientError> {
        self.call::<(), _>(Method::GET, "/certificates", None, Self::TIMEOUT)
            .await
    }

    pub async fn register_node(&self, reg: &NodeRegistration) -> Result<NodeStatus, ClientError> {
        self.call(Method::POST, "/nodes/", Some(reg), Self::TIMEOUT)
            .await
    }
    pub async fn heartbeat(&self, node: &str, hb: &Heartbeat) -> Result<NodeStatus, ClientError> {
        self.call(
            Method::PUT,
            &format!("/nodes/{node}/heartbeat"),
            Some(hb),
            Self::TIMEOUT,
        )
        .await
    }
    /// Removes a node that is no longer healthy (replaced or retired) from the master's list.
    pub async fn delete_node(&self, id: &str) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            Method::DELETE,
            &format!("/nodes/{id}"),
            None,
            Self::TIMEOUT,
        )
        .await
        .map(drop)
    }

    pub async fn list_nodes(&self) -> Result<Vec<NodeStatus>, ClientError> {
        self.call::<(), _>(Method::GET, "/nodes/", None, Self::TIMEOUT)
            .await
    }

    pub async fn acquire_lease(
        &self,
        task_id: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<LeaseGrant, ClientError> {
        let req = LeaseRequest {
            node: node.to_string(),
            ttl_ms: ttl.as_millis() as u64,
        };
        self.call(
            Method::POST,
            &format!("/leases/{task_id}"),
            Some(&req),
            Self::TIMEOUT,
        )
        .await
    }
    pub async fn renew_lease(
        &self,
        task_id: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<LeaseGrant, ClientError> {
        let req = LeaseRenewal {
            token,
            ttl_ms: ttl.as_millis() as u64,
        };
        self.call(
            Method::PUT,
            &format!("/leases/{task_id}"),
            Some(&req),
            Self::TIMEOUT,
        )
        .await
    }
    /// Renews every lease the node holds in one call (its session); see [`SessionRenewal`].
    pub async fn renew_session(
        &self,
        node: &str,
        req: &SessionRenewal,
    ) -> Result<SessionRenewed, ClientError> {
        self.call(
            Method::POST,
            &format!("/nodes/{node}/renew"),
            Some(req),
            Self::TIMEOUT,
        )
        .await
    }
    pub async fn release_lease(&self, task_id: &str, token: u64) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            Method::DELETE,
            &format!("/leases/{task_id}?token={token}"),
            None,
            Self::TIMEOUT,
        )
        .await
        .map(drop)
    }
    pub async fn list_leases(&self) -> Result<Vec<Lease>, ClientError> {
        self.call::<(), _>(Method::GET, "/leases/", None, Self::TIMEOUT)
            .await
    }

    /// One long poll: returns as soon as there are changes after `since`, or after `wait`.
    pub async fn watch(
        &self,
        epoch: Option<&str>,
        since: u64,
        wait: Duration,
    ) -> Result<WatchResponse, ClientError> {
        let epoch = epoch.map(|e| format!("&epoch={e}")).unwrap_or_default();
        let path = format!(
            "/watch?since={since}&timeout_ms={}{epoch}",
            wait.as_millis()
        );
        self.call::<(), _>(Method::GET, &path, None, wait + Self::TIMEOUT)
            .await
    }
}
