//! The node's routes for the master, under `/_shadow/`, each checked against the API token:
//! an app's logs (`logs/<task>?tail=N&follow=true`, relaying `GET /tasks/{id}/logs`) and its
//! wake-up and sleep (`POST apps/<task>/wake|sleep`, relaying the same on `/tasks/{id}/`).

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use shadow_common::proxy::ProxyBody;
use shadow_common::proxy::RequestBody;

use crate::{handler::Node, lifecycle::Kick, pages};

pub fn route(node: &Node, req: &Request<RequestBody>, rest: &str) -> Response<ProxyBody> {
    if let Some(refused) = unauthorized(node, req) {
        return refused;
    }
    if let Some(task) = rest.strip_prefix("logs/") {
        return if valid_id(task) {
            logs(node, req, task)
        } else {
            bad_id()
        };
    }
    let Some((task, action)) = rest.strip_prefix("apps/").and_then(|r| r.split_once('/')) else {
        return pages::text(
            StatusCode::NOT_FOUND,
            "no such node route; the master uses /_shadow/logs/<task> and /_shadow/apps/<task>/wake|sleep\n".into(),
        );
    };
    if !valid_id(task) {
        return bad_id();
    }
    if req.method() != Method::POST {
        return pages::text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into());
    }
    match action {
        "wake" => wake(node, task),
        "sleep" => {
            let stopping = node.apps.sleep(task);
            json(
                StatusCode::ACCEPTED,
                serde_json::json!({ "stopping": stopping }),
            )
        }
        _ => pages::text(
            StatusCode::NOT_FOUND,
            format!("{action:?} is not an app action; use wake or sleep\n"),
        ),
    }
}

fn unauthorized(node: &Node, req: &Request<RequestBody>) -> Option<Response<ProxyBody>> {
    let token = node.api_token.as_ref()?;
    let sent = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    (sent != Some(token.as_str())).then(|| {
        pages::text(
            StatusCode::UNAUTHORIZED,
            "send the cluster's API token (Authorization: Bearer $SHADOW_API_TOKEN)\n".into(),
        )
    })
}

fn valid_id(task: &str) -> bool {
    !task.is_empty() && task.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn bad_id() -> Response<ProxyBody> {
    pages::text(StatusCode::BAD_REQUEST, "name a task id\n".into())
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<ProxyBody> {
    let mut r = pages::text(status, body.to_string());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Starts the app in the background; the caller follows its status to see it come up.
fn wake(node: &Node, id: &str) -> Response<ProxyBody> {
    let Some(task) = node.follower.read().task(id) else {
        return pages::text(
            StatusCode::NOT_FOUND,
            format!("this node does not know task {id} (yet); retry in a moment\n"),
        );
    };
    match node.apps.kick(&task) {
        Kick::Running => json(StatusCode::OK, serde_json::json!({ "state": "running" })),
        Kick::Starting => json(
            StatusCode::ACCEPTED,
            serde_json::json!({ "state": "starting" }),
        ),
        Kick::BackingOff(wait, error) => json(
            StatusCode::CONFLICT,
            serde_json::json!({
                "state": "backoff",
                "error": format!(
                    "the app's last start failed ({error}); the next may begin in {} s, or now after `shadow apps restart`",
                    wait.as_secs().max(1)
                ),
            }),
        ),
    }
}

/// `logs/<task>?tail=N&follow=true`: JSON lines.
fn logs(node: &Node, req: &Request<RequestBody>, task: &str) -> Response<ProxyBody> {
    let query = req.uri().query().unwrap_or("");
    let param = |name: &str| {
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    };
    let tail = param("tail").and_then(|v| v.parse().ok()).unwrap_or(100);
    let follow = param("follow") == Some("true");
    let mut r = Response::new(crate::logs::answer(&node.logs, task, tail, follow));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r
}
