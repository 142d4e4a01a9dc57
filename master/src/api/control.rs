//! `POST /tasks/{id}/wake` and `POST /tasks/{id}/sleep`: start an app ahead of its first
//! request, or stop it before its idle timeout, through the node that runs it (clients never
//! talk to nodes). Both answer at once; `GET /tasks/{id}/status` shows the progress.

use std::sync::Arc;

use http::StatusCode;
use shadow_common::error::ErrorBody;
use warp::{filters::BoxedFilter, Filter};

use super::{reply, AppState};

/// What `wake` answers.
#[derive(serde::Serialize)]
pub(super) struct Woken {
    task_id: String,
    node: String,
    /// `starting` or `running`.
    state: String,
}

/// What `sleep` answers.
#[derive(serde::Serialize)]
pub(super) struct Slept {
    task_id: String,
    /// The nodes told to stop the app (none: it was not running).
    nodes: Vec<String>,
}

pub fn routes(state: Arc<AppState>) -> BoxedFilter<(warp::reply::Response,)> {
    let wake = {
        let state = state.clone();
        warp::path!("tasks" / String / "wake")
            .and(warp::post())
            .then(move |id: String| {
                let state = state.clone();
                async move { wake(&state, &id).await }
            })
    };
    let sleep = warp::path!("tasks" / String / "sleep")
        .and(warp::post())
        .then(move |id: String| {
            let state = state.clone();
            async move { sleep(&state, &id).await }
        });
    wake.or(sleep).unify().boxed()
}

/// Posts to a node's `/_shadow/` route with the cluster's token.
async fn post_node(
    state: &AppState,
    address: &str,
    path: &str,
) -> Result<(StatusCode, serde_json::Value), String> {
    let mut req = state
        .http
        .post(format!("http://{address}/_shadow/{path}"))
        .timeout(std::time::Duration::from_secs(10));
    if let Some(t) = &state.api_token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    if status.is_server_error() || status == StatusCode::UNAUTHORIZED {
        return Err(format!("{status}: {}", body.trim()));
    }
    Ok((
        status,
        serde_json::from_str(&body).unwrap_or_else(|_| serde_json::json!({"error": body.trim()})),
    ))
}

/// Why a wake or sleep did not happen: the status to answer and what to tell the user.
pub(super) struct Refused {
    pub status: StatusCode,
    pub message: String,
}

impl Refused {
    fn unreachable(node: &str, e: &str) -> Self {
        Self {
            status: StatusCode::BAD_GATEWAY,
            message: format!(
                "node {node} did not take the request ({e}); check GET /nodes/ and retry"
            ),
        }
    }

    fn reply(self) -> warp::reply::Response {
        reply::error_reply(self.status, ErrorBody::new(self.message))
    }
}

fn registry_refused(e: crate::registry::RegistryError) -> Refused {
    let status = reply::registry_error_status(&e);
    Refused {
        status,
        message: e.to_string(),
    }
}

async fn wake(state: &AppState, id: &str) -> warp::reply::Response {
    match wake_app(state, id).await {
        Ok(w) => reply::json(StatusCode::ACCEPTED, &w),
        Err(r) => r.reply(),
    }
}

async fn sleep(state: &AppState, id: &str) -> warp::reply::Response {
    match sleep_app(state, id).await {
        Ok(s) => reply::json(StatusCode::ACCEPTED, &s),
        Err(r) => r.reply(),
    }
}

/// Has the app started on the node its requests go to.
pub(super) async fn wake_app(state: &AppState, id: &str) -> Result<Woken, Refused> {
    let (node, address) = state.registry.wake_target(id).map_err(registry_refused)?;
    let (status, body) = post_node(state, &address, &format!("apps/{id}/wake"))
        .await
        .map_err(|e| {
            tracing::warn!(task = id, %node, error = %e, "cannot wake the app");
            Refused::unreachable(&node, &e)
        })?;
    let word = body["state"].as_str().unwrap_or_default().to_owned();
    match (status, word.as_str()) {
        (_, "starting" | "running") => Ok(Woken {
            task_id: id.to_owned(),
            node,
            state: word,
        }),
        (StatusCode::CONFLICT, _) => Err(Refused {
            status: StatusCode::CONFLICT,
            message: body["error"]
                .as_str()
                .unwrap_or("the app is backing off")
                .to_owned(),
        }),
        _ => Err(Refused::unreachable(&node, &format!("{status}: {body}"))),
    }
}

/// Has every node where the app runs or starts stop it.
pub(super) async fn sleep_app(state: &AppState, id: &str) -> Result<Slept, Refused> {
    let targets = state.registry.awake_on(id).map_err(registry_refused)?;
    let mut told = Vec::new();
    for (node, address) in targets {
        if let Err(e) = post_node(state, &address, &format!("apps/{id}/sleep")).await {
            tracing::warn!(task = id, %node, error = %e, "cannot put the app to sleep");
            return Err(Refused::unreachable(&node, &e));
        }
        told.push(node);
    }
    Ok(Slept {
        task_id: id.to_owned(),
        nodes: told,
    })
}
