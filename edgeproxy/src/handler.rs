//! The edge's request path: Host → task → node plan → forward, retrying on the next node when a
//! connection fails before anything was sent, and following a node that says the app's lease is
//! held elsewhere (once).

use std::{net::SocketAddr, sync::Arc};

use http::{header, uri::Scheme, HeaderValue, Request, Response, StatusCode};
use shadow_common::proxy::RequestBody;
use shadow_common::{
    follower::{Follower, NEW_DOMAIN_GRACE},
    node::NodeStatus,
    proxy::{self, error_response, full, ForwardContext, Forwarder, ProxyBody, ProxyError},
    task::Task,
};

use crate::{health::Health, metrics::Metrics, placement};

pub use shadow_common::lease::{HOLDER_DOWN_HEADER, HOLDER_HEADER};

/// At most this many nodes are tried for one request.
const MAX_TRIES: usize = 3;

pub struct Edge {
    /// The caps on client connections, shared by the public listeners (for metrics).
    pub limits: Arc<proxy::ClientLimits>,
    /// The port of this edge's HTTPS listener, for tasks that redirect HTTP to HTTPS.
    pub https_port: Option<u16>,
    /// Proxies in front of the edge whose forwarding headers are kept (appended to).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How long a request body may stall before it is cut (408), and the count of cut ones.
    pub body_stall: proxy::BodyStall,
    pub edge_id: String,
    pub follower: Follower,
    pub health: Arc<Health>,
    pub sticky: placement::Sticky,
    pub forwarder: Forwarder,
    pub metrics: Metrics,
}

/// The CA validating an HTTP-01 challenge of the ACME orderer: the key authorization for a
/// token the master holds, for a registered domain; anything else goes to the app as usual.
fn acme_challenge<B>(edge: &Edge, req: &Request<B>, host: &str) -> Option<Response<ProxyBody>> {
    let token = req
        .uri()
        .path()
        .strip_prefix("/.well-known/acme-challenge/")?;
    let state = edge.follower.read();
    let challenge = state.challenge(token)?;
    (challenge.domain == host).then(|| text(StatusCode::OK, challenge.key_authorization.clone()))
}

/// Serves one request that arrived over `scheme` (http or https).
#[allow(clippy::manual_async_fn)] // on purpose: see the comment in the body
pub fn handle(
    edge: Arc<Edge>,
    mut req: Request<RequestBody>,
    peer: SocketAddr,
    scheme: Scheme,
) -> impl std::future::Future<Output = Response<ProxyBody>> {
    // An `async move` block, not an `async fn`: see `Forwarder::try_forward`.
    async move {
        let host = match proxy::checked_domain(&mut req) {
            Ok(h) => h,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        };
        let request_id = proxy::request_id(req.headers());
        if let Some(answer) = acme_challenge(&edge, &req, &host) {
            return answer;
        }
        let task = edge.follower.read().task_by_domain(&host);
        let task = match task {
            Some(task) => task,
            // Boxed: the request path's future does not carry this rare wait.
            None => {
                match Box::pin(edge.follower.task_by_domain_within(&host, NEW_DOMAIN_GRACE)).await {
                    Some(task) => task,
                    None => return no_app(&host),
                }
            }
        };
        if scheme == Scheme::HTTP && task.spec.https_redirect {
            if let Some(port) = edge.https_port {
                return to_https(&req, &host, port);
            }
        }
        let hsts = (scheme == Scheme::HTTPS && task.spec.hsts_max_age_s > 0)
            .then(|| HeaderValue::from_str(&format!("max-age={}", task.spec.hsts_max_age_s)).ok())
            .flatten();
        let span = tracing::info_span!("request", task = %task.id, app = %task.spec.name, request_id = %request_id);
        shadow_common::telemetry::continue_trace(&span, req.headers());
        let counted = task.clone();
        let routing = std::pin::pin!(route(&edge, task, req, peer, request_id, scheme));
        let mut resp = shadow_common::telemetry::in_span(&span, routing).await;
        if let Some(v) = hsts {
            resp.headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, v);
        }
        // Between nodes and this edge only: which node holds a lease is nobody else's business.
        // (An answer whose fields pass unparsed has an empty map, and none of this field: see
        // `ANSWER_FIELDS_READ`. The check spares that common case a hashed lookup.)
        if !resp.headers().is_empty() {
            resp.headers_mut().remove(HOLDER_HEADER);
        }
        edge.metrics.request(&counted, resp.status());
        resp
    }
}

/// The public listener serves apps and nothing else: the edge's own routes are on the admin
/// listener.
fn no_app(host: &str) -> Response<ProxyBody> {
    text(
        StatusCode::NOT_FOUND,
        format!("no app is registered for {host:?}; check the address\n"),
    )
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// 308 to the same URL on this edge's HTTPS port (the method and body are kept on a 308).
fn to_https<B>(req: &Request<B>, host: &str, port: u16) -> Response<ProxyBody> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let authority = if port == 443 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    let location = format!("https://{authority}{path}");
    let mut r = text(
        StatusCode::PERMANENT_REDIRECT,
        format!("this app is served over HTTPS: {location}\n"),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The admin listener: the edge's health and metrics, whatever the Host.
pub fn admin<B>(edge: &Edge, req: &Request<B>) -> Response<ProxyBody> {
    match req.uri().path() {
        "/healthz" if edge.follower.is_synced() => text(StatusCode::OK, "ok\n".into()),
        "/healthz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not yet in contact with the master\n".into(),
        ),
        "/metrics" => {
            let (up, known) = edge.health.up_count();
            text(
                StatusCode::OK,
                edge.metrics
                    .render(up, known, &edge.limits, &edge.body_stall),
            )
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "the admin listener serves /healthz and /metrics\n".into(),
        ),
    }
}

/// The answer fields this handler reads or changes (the lease holder's, to follow it and to
/// remove it; HSTS, set per task): an answer carrying one is parsed whole, any other's fields
/// reach the client unparsed.
const ANSWER_FIELDS_READ: &[&str] = &["x-shadow-lease-holder", "strict-transport-security"];

fn usable(edge: &Edge) -> impl Fn(&NodeStatus) -> bool + '_ {
    |n| n.healthy && edge.health.is_up(&n.id)
}

#[allow(clippy::manual_async_fn)] // on purpose: see the comment in the body
fn route(
    edge: &Edge,
    task: Arc<Task>,
    mut req: Request<RequestBody>,
    peer: SocketAddr,
    mut request_id: String,
    scheme: Scheme,
) -> impl std::future::Future<Output = Response<ProxyBody>> + '_ {
    // An `async move` block, not an `async fn`: see `Forwarder::try_forward`.
    async move {
        // Usually the first node answers: rank the others only if it does not.
        let first = {
            let state = edge.follower.read();
            placement::first_choice(&state, &edge.sticky, &task.id, usable(edge))
        };
        let Some(first) = first else {
            tracing::warn!("no healthy node for the app");
            let mut r = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "No server can run this app right now. Please try again shortly.",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            return r;
        };
        // A success on the node the sticky map already names needs no write to it (a lock).
        let already_sticky = first.sticky;
        let mut plan = vec![first.node];
        let mut ranked = false;
        let mut unreachable: Vec<String> = Vec::new();
        let mut followed = false;
        let mut i = 0;
        loop {
            let node = plan[i].clone();
            let Some(addr) = resolve(&node.address).await else {
                tracing::error!(node = %node.id, address = %node.address, "node address does not resolve");
                return error_response(
                    StatusCode::BAD_GATEWAY,
                    "The app's server is misconfigured.",
                );
            };
            mark_holder_down(edge, &task.id, &node.id, &unreachable, req.headers_mut());
            // The id moves into the context and comes back with an unsent request: no copy per try.
            let mut ctx =
                ForwardContext::new(peer, scheme.clone(), std::mem::take(&mut request_id))
                    .with_body_stall(edge.body_stall.clone())
                    .handing_back_if(|head| {
                        head.status == StatusCode::SERVICE_UNAVAILABLE
                            && head.headers.contains_key(HOLDER_HEADER)
                    })
                    .passing_answer_fields_unread(ANSWER_FIELDS_READ);
            if edge.trusted_proxies.iter().any(|n| n.contains(&peer.ip())) {
                ctx = ctx.trusting_forwarded();
            }
            match edge.forwarder.try_forward(req, addr, ctx).await {
                Ok(resp) => {
                    if !(i == 0 && already_sticky) {
                        edge.sticky.set(&task.id, &node.id);
                    }
                    return resp;
                }
                Err(failure) => {
                    let retry_on = match &failure.error {
                        ProxyError::Connect { .. } => {
                            edge.health.record(&node.id, false);
                            unreachable.push(node.id.clone());
                            tracing::warn!(node = %node.id, error = %failure.error, "node unreachable; trying the next");
                            edge.metrics.retry("connect");
                            if !ranked {
                                ranked = true;
                                let state = edge.follower.read();
                                for n in placement::candidates(
                                    &state,
                                    &edge.sticky,
                                    &task.id,
                                    usable(edge),
                                ) {
                                    if !plan.iter().any(|p| p.id == n.id) {
                                        plan.push(n);
                                    }
                                }
                            }
                            plan.get(i + 1).cloned()
                        }
                        ProxyError::HandedBack { .. } if !followed => {
                            followed = true;
                            let holder = failure
                                .answer
                                .as_ref()
                                .and_then(|a| a.headers.get(HOLDER_HEADER))
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            edge.metrics.retry("lease-holder");
                            let state = edge.follower.read();
                            holder
                                .and_then(|h| state.node(&h).cloned())
                                .filter(|n| usable(edge)(n))
                        }
                        ProxyError::Upstream { .. } => {
                            // A reset after sending: the app may have acted, so no retry, but it is
                            // evidence against the node.
                            edge.health.record(&node.id, false);
                            None
                        }
                        _ => None,
                    };
                    match (retry_on, failure.unsent) {
                        (Some(next), Some(unsent)) if i + 1 < MAX_TRIES => {
                            req = unsent.request;
                            request_id = unsent.ctx.request_id;
                            i += 1;
                            if plan.get(i).map(|n| &n.id) != Some(&next.id) {
                                plan.insert(i, next);
                            }
                        }
                        _ => {
                            tracing::warn!(node = %node.id, error = %failure.error, "request failed");
                            let mut r = failure.error.to_response();
                            if r.status() == StatusCode::SERVICE_UNAVAILABLE {
                                r.headers_mut()
                                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                            }
                            return r;
                        }
                    }
                }
            }
        }
    }
}

/// Tells `target` that the task's lease holder is down, when it is another node that this
/// request could not reach or that is not usable: the target then waits for the lease to lapse
/// and serves the request, instead of sending it back to a node that cannot answer. Otherwise
/// the header is removed, a client's own included: only this edge may say a holder is down
/// (nodes trust the header), and this runs before every attempt.
fn mark_holder_down(
    edge: &Edge,
    task_id: &str,
    target: &str,
    unreachable: &[String],
    headers: &mut http::HeaderMap,
) {
    let down = {
        let state = edge.follower.read();
        state
            .lease(task_id)
            .filter(|l| l.node != target)
            .filter(|l| {
                unreachable.contains(&l.node)
                    || !state.node(&l.node).is_some_and(|n| usable(edge)(n))
            })
            .and_then(|l| HeaderValue::from_str(&l.node).ok())
    };
    match down {
        Some(v) => headers.insert(HOLDER_DOWN_HEADER, v),
        None => headers.remove(HOLDER_DOWN_HEADER),
    };
}

/// Node addresses are `host:port`; most are IPs (parsed once per thread), names are resolved
/// per request (the system resolver caches).
async fn resolve(address: &str) -> Option<SocketAddr> {
    if let Some(a) = proxy::parsed_socket_addr(address) {
        return Some(a);
    }
    tokio::net::lookup_host(address).await.ok()?.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fields_read_are_the_ones_the_handler_touches() {
        for name in [HOLDER_HEADER, header::STRICT_TRANSPORT_SECURITY] {
            assert!(
                ANSWER_FIELDS_READ.contains(&name.as_str()),
                "{name} must be parsed into the answer's map"
            );
        }
    }
}
