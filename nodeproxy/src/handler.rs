//! The node's HTTP entry: picks the task by Host, gets it a running app, forwards.
//!
//! Requests whose Host is no task's domain are the node's own: `/healthz` (for edges),
//! `/metrics` and the master's `/_shadow/` routes ([`crate::control`]); anything else is a 404
//! that says why.

use std::{net::SocketAddr, sync::Arc};

use http::{header, uri::Scheme, HeaderValue, Request, Response, StatusCode};
use shadow_common::proxy::RequestBody;
use shadow_common::{
    follower::{Follower, NEW_DOMAIN_GRACE},
    proxy::{self, ForwardContext, Forwarder, ProxyBody},
    task::{ColdStart, Task},
};

use crate::{
    lifecycle::{Apps, Kick, StartError, Unavailable},
    metrics::Metrics,
    pages,
};

/// Everything a request needs; shared by all connections.
pub struct Node {
    pub apps: Arc<Apps>,
    pub follower: Follower,
    pub forwarder: Forwarder,
    pub metrics: Metrics,
    pub logs: Arc<crate::logs::LogStore>,
    /// The master's token, which it sends on the `/_shadow/` routes; `None`: no check.
    pub api_token: Option<String>,
}

pub use shadow_common::lease::{HOLDER_DOWN_HEADER, HOLDER_HEADER};

#[allow(clippy::manual_async_fn)] // on purpose: see the comment in the body
pub fn handle(
    node: Arc<Node>,
    mut req: Request<RequestBody>,
    peer: SocketAddr,
) -> impl std::future::Future<Output = Response<ProxyBody>> {
    // An `async move` block, not an `async fn`: see `Forwarder::try_forward`.
    async move {
        let host = match proxy::checked_domain(&mut req) {
            Ok(h) => h,
            Err(e) => return pages::text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        };
        let request_id = proxy::request_id(req.headers());
        let task = node.follower.read().task_by_domain(&host);
        let task = match task {
            Some(task) => task,
            None => match own_route(&node, &req) {
                Some(answer) => return answer,
                // Boxed: the request path's future does not carry this rare wait.
                None => {
                    match Box::pin(node.follower.task_by_domain_within(&host, NEW_DOMAIN_GRACE))
                        .await
                    {
                        Some(task) => task,
                        None => return no_app(&host),
                    }
                }
            },
        };
        let span = tracing::info_span!("request", task = %task.id, app = %task.spec.name, request_id = %request_id);
        shadow_common::telemetry::continue_trace(&span, req.headers());
        let counted = task.clone();
        let serving = std::pin::pin!(serve_app(&node, task, req, peer, request_id));
        let resp = shadow_common::telemetry::in_span(&span, serving).await;
        node.metrics.request(&counted, resp.status());
        resp
    }
}

/// The node's own routes, for a Host no task serves; `None` for any other path.
fn own_route(node: &Node, req: &Request<RequestBody>) -> Option<Response<ProxyBody>> {
    if let Some(rest) = req.uri().path().strip_prefix("/_shadow/") {
        return Some(crate::control::route(node, req, rest));
    }
    Some(match req.uri().path() {
        "/healthz" => {
            if node.follower.is_synced() {
                pages::text(StatusCode::OK, "ok\n".into())
            } else {
                pages::unavailable("this node has not reached the master yet\n".into(), 1)
            }
        }
        "/metrics" => {
            let mut r = pages::text(StatusCode::OK, node.metrics.render());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        _ => return None,
    })
}

fn no_app(host: &str) -> Response<ProxyBody> {
    pages::text(
        StatusCode::NOT_FOUND,
        format!(
            "no app serves the host {host:?} here; register a task with this domain (POST /tasks/ on the master) or check the Host header\n"
        ),
    )
}

/// A route to the app once it runs: started (told which lease holder the edge found down),
/// thawed, or awaited.
async fn start_route(
    node: &Node,
    task: &Arc<Task>,
    req: &Request<RequestBody>,
) -> Result<crate::lifecycle::Route, Unavailable> {
    let holder_down = req
        .headers()
        .get(HOLDER_DOWN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    node.apps.route(task, holder_down.as_deref()).await
}

fn wants_html(req: &Request<RequestBody>) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

#[allow(clippy::manual_async_fn)] // on purpose: see the comment in the body
fn serve_app(
    node: &Node,
    task: Arc<Task>,
    req: Request<RequestBody>,
    peer: SocketAddr,
    request_id: String,
) -> impl std::future::Future<Output = Response<ProxyBody>> + '_ {
    // An `async move` block, not an `async fn`: see `Forwarder::try_forward`.
    async move {
        if task.spec.cold_start == ColdStart::Page && req.method() == http::Method::GET {
            if req.headers().contains_key(pages::LOADING_HEADER) {
                return Box::pin(loading_poll(node, &task)).await;
            }
            // Only a browser's page load gets the page; any other request (a form POST, an API
            // call) waits for the start, so nothing it sends is lost.
            if wants_html(&req) {
                match node.apps.kick(&task) {
                    Kick::Running => {}
                    Kick::Starting => {
                        let (phase, elapsed) = starting(node, &task);
                        return pages::loading(&task.spec.name, phase, elapsed);
                    }
                    Kick::BackingOff(wait, _) => {
                        return pages::failed(&task.spec.name, retry_after(wait))
                    }
                }
            }
        }
        let route = match node.apps.running_route(&task) {
            Some(route) => route,
            // Boxed: starting, thawing or waiting is the rare way, and its future is large.
            None => match Box::pin(start_route(node, &task, &req)).await {
                Ok(r) => r,
                Err(e) => return unavailable(&task, &request_id, e),
            },
        };
        // The node reads nothing of the answer but its status: its fields may pass unparsed.
        let ctx = ForwardContext::new(peer, Scheme::HTTP, request_id)
            .trusting_forwarded()
            .counting_bytes(route.meter.bytes.clone())
            .with_guard(route.token.into_guard())
            .passing_answer_fields_unread(&[]);
        // `try_forward` rather than `forward`: one future less to build and copy per request.
        match node.forwarder.try_forward(req, route.addr, ctx).await {
            Ok(resp) => resp,
            Err(failure) => {
                let e = proxy::ProxyError::from(failure);
                tracing::warn!(error = %e, upstream = %route.addr, "forwarding to the app failed");
                e.to_response()
            }
        }
    }
}

/// The start's phase and how long it has run, from the app's status.
fn starting(node: &Node, task: &Task) -> (&'static str, u64) {
    let status = node.apps.status(&task.id);
    let phase = status
        .as_ref()
        .and_then(|s| s.phase)
        .map_or("starting", pages::phase_words);
    let elapsed = status.map_or(0, |s| {
        shadow_common::status::now_ms().saturating_sub(s.since_ms) / 1000
    });
    (phase, elapsed)
}

/// The loading page's question: is the app up yet? Answers within a second: `running` (the
/// page reloads into the app), `failed` (it reloads into the error page) or `starting` with
/// the phase.
async fn loading_poll(node: &Node, task: &Arc<Task>) -> Response<ProxyBody> {
    let state = match node.apps.kick(task) {
        Kick::Running => "running",
        Kick::BackingOff(..) => "failed",
        Kick::Starting => {
            let wait = std::time::Duration::from_secs(1);
            match tokio::time::timeout(wait, node.apps.route(task, None)).await {
                Ok(Ok(_)) => "running",
                Ok(Err(_)) => "failed",
                Err(_) => "starting",
            }
        }
    };
    let (phase, elapsed) = starting(node, task);
    let body = serde_json::json!({"state": state, "phase": phase, "elapsed_s": elapsed});
    let mut r = pages::text(StatusCode::OK, body.to_string());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Whole seconds to wait, at least one.
fn retry_after(wait: std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

fn unavailable(task: &Task, request_id: &str, e: Unavailable) -> Response<ProxyBody> {
    tracing::warn!(error = %e, "request not served");
    let retry = 1;
    match e {
        Unavailable::StartFailed(err) => {
            if let StartError::LeaseHeld { holder } = &*err {
                // The header is for the edge, which removes it; the body names no node.
                let mut r = pages::unavailable(
                    format!(
                        "app {} is running on another server right now; retry shortly\n",
                        task.spec.name
                    ),
                    retry,
                );
                if let Ok(v) = HeaderValue::from_str(holder) {
                    r.headers_mut().insert(HOLDER_HEADER, v);
                }
                return r;
            }
            pages::unavailable(
                format!(
                    "app {} could not start; retry later. If it keeps failing, its owner can find the reason under request id {request_id}\n",
                    task.spec.name
                ),
                retry,
            )
        }
        Unavailable::StartTimeout(limit) => pages::unavailable(
            format!(
                "app {} did not become ready within {}s; retry shortly\n",
                task.spec.name,
                limit.as_secs()
            ),
            retry,
        ),
        Unavailable::BackingOff { wait, .. } => pages::unavailable(
            format!(
                "app {} failed to start and tries again in {} s; if it keeps failing, its owner can see why in its status\n",
                task.spec.name,
                retry_after(wait)
            ),
            retry_after(wait),
        ),
        Unavailable::ShuttingDown => pages::unavailable(
            "this node is shutting down; retry on another\n".into(),
            retry,
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shadow_common::proxy::ForwarderConfig;

    use super::*;
    use crate::lifecycle::fakes::{self, Call};

    fn node_on(fake: &fakes::Node) -> Arc<Node> {
        Arc::new(Node {
            apps: fake.apps.clone(),
            follower: fake.ctx.follower.clone(),
            forwarder: Forwarder::new(&ForwarderConfig::default()),
            metrics: Metrics::new(),
            logs: fake.ctx.logs.clone(),
            api_token: None,
        })
    }

    fn get(host: &str) -> Request<RequestBody> {
        Request::builder()
            .uri("/")
            .header(header::HOST, host)
            .body(RequestBody::Empty)
            .expect("a request")
    }

    const PEER: ([u8; 4], u16) = ([127, 0, 0, 1], 5000);

    #[tokio::test(start_paused = true)]
    async fn a_host_learned_within_the_grace_is_served_not_refused() {
        let fake = fakes::Node::new(1024, |_| {});
        let node = node_on(&fake);
        let t = fakes::task("a", 128, false);
        let asking = tokio::spawn(handle(node, get("a.test"), PEER.into()));
        // The request arrived before the watch brought the task.
        tokio::time::sleep(NEW_DOMAIN_GRACE / 5).await;
        assert!(!asking.is_finished(), "answered before the task was known");
        fake.publish(&t);
        let answer = asking.await.expect("handled");
        assert_ne!(answer.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            fake.journal.count(|c| matches!(c, Call::Create(_))),
            1,
            "the app was started for it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_host_no_task_serves_is_refused_after_the_grace() {
        let fake = fakes::Node::new(1024, |_| {});
        let node = node_on(&fake);
        let started = tokio::time::Instant::now();
        let answer = handle(node, get("nobody.test"), PEER.into()).await;
        assert_eq!(answer.status(), StatusCode::NOT_FOUND);
        assert_eq!(started.elapsed(), NEW_DOMAIN_GRACE);
        // The node's own routes answer at once, whatever the Host.
        let fake = fakes::Node::new(1024, |_| {});
        let started = tokio::time::Instant::now();
        let mut health = get("nobody.test");
        *health.uri_mut() = "/healthz".parse().expect("a path");
        let answer = handle(node_on(&fake), health, PEER.into()).await;
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
