//! A typed client for the master's REST API, used by the node proxy, the edge and tests.

use std::time::Duration;

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

/// Cheap to clone; shares one connection pool.
#[derive(Clone, Debug)]
pub struct MasterClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl MasterClient {
    /// `base` is the master's URL, e.g. `http://127.0.0.1:7070`.
    pub fn new(base: impl Into<String>, token: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()
            .unwrap_or_default();
        Self {
            base: base.into().trim_end_matches('/').to_string(),
            token,
            http,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let url = format!("{}{}", self.base, path);
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
        let url = format!("{}/tasks/{id}/logs?tail={tail}&follow={follow}", self.base);
        let mut req = self.http.get(&url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| ClientError::Transport { url, source })?;
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
