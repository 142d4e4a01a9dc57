//! The [`Forwarder`]: sends one client request to one upstream over a kept HTTP/1.1 connection
//! (this worker thread's [`upstream::Pool`]) and turns the answer into the client's response.
//! A request without a body goes through [`exchange`] in its own task; one with a body, or an
//! upgrade, through hyper's client.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Body;
use thread_local::ThreadLocal;
use tokio::sync::oneshot;

use super::body::{self, ClientBodyFailure, Guarded, Outbound, RequestBody};
use super::error::BoxError;
use super::exchange::{self, Answer, Failed, HeadBytes};
use super::headers::FieldSink;
use super::upstream::{self, SendError};
use super::{addr_text, headers, spare_maps, upgrade, ForwardContext, ProxyBody, ProxyError};
use crate::telemetry;

/// Tuning of the [`Forwarder`]'s client.
#[derive(Clone, Debug)]
pub struct ForwarderConfig {
    /// How long a TCP connect may take before it counts as a (retryable) connect failure.
    /// Default 5 s: a dead host otherwise takes minutes of SYN retries to give up on.
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept. Default 20 s: below the 30 s after which
    /// [`serve`](super::serve) (hyper's header-read timeout) closes idle connections, so the edge
    /// rarely reuses a connection the node proxy is closing.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per upstream. Default 64.
    pub pool_max_idle_per_host: usize,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(20),
            pool_max_idle_per_host: 64,
        }
    }
}

/// Forwards requests to upstreams over kept HTTP/1.1 connections.
///
/// Cheap to clone: clones share their pools. There is one pool per thread: each connection is
/// driven by a task on the runtime that opened it, so a request on one of the proxy's
/// [`Workers`](super::Workers) reusing a connection opened on another would cross threads twice
/// per exchange. There is no response timeout on purpose (SSE and long polls); bound the wait at
/// the caller if a route needs one.
#[derive(Clone)]
pub struct Forwarder {
    config: ForwarderConfig,
    pools: Arc<ThreadLocal<Arc<upstream::Pool>>>,
}

impl fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Forwarder")
    }
}

impl Default for Forwarder {
    fn default() -> Self {
        Self::new(&ForwarderConfig::default())
    }
}

/// A request that never left, handed back by [`Forwarder::try_forward`] for a retry.
#[derive(Debug)]
pub struct Unsent {
    /// The client's request, as it arrived (headers not yet rewritten, body unread).
    pub request: Request<RequestBody>,
    /// The context it came with, activity guard included.
    pub ctx: ForwardContext,
}

/// Why [`Forwarder::try_forward`] failed, with the request when it can be sent again.
#[derive(Debug)]
pub struct ForwardFailure {
    /// What went wrong.
    pub error: ProxyError,
    /// The request and its context, when nothing of it reached the upstream and its body is
    /// untouched. Set for a retryable [`ProxyError::Connect`] and [`ProxyError::HandedBack`].
    pub unsent: Option<Unsent>,
    /// For [`ProxyError::HandedBack`]: the head of the answer that made the proxy hand back.
    pub answer: Option<http::response::Parts>,
}

impl From<Box<ForwardFailure>> for ProxyError {
    fn from(failure: Box<ForwardFailure>) -> Self {
        failure.error
    }
}

impl Forwarder {
    /// A forwarder with its own connection pools.
    pub fn new(config: &ForwarderConfig) -> Self {
        Self {
            config: config.clone(),
            pools: Arc::new(ThreadLocal::new()),
        }
    }

    /// This thread's pool, made on first use.
    fn pool(&self) -> &Arc<upstream::Pool> {
        self.pools.get_or(|| {
            Arc::new(upstream::Pool::new(
                self.config.connect_timeout,
                self.config.pool_idle_timeout,
                self.config.pool_max_idle_per_host,
            ))
        })
    }

    /// Forwards `req` to `upstream` and returns the response to send to the client.
    ///
    /// The response body streams from the upstream as the client reads it; `ctx.activity` is
    /// held until it ends (or, after a 101, until the tunnel closes). On a connect failure the
    /// request is dropped; use [`Forwarder::try_forward`] to get it back for a retry.
    pub async fn forward(
        &self,
        req: Request<RequestBody>,
        upstream: SocketAddr,
        ctx: ForwardContext,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        self.try_forward(req, upstream, ctx)
            .await
            .map_err(ProxyError::from)
    }

    /// Like [`Forwarder::forward`], but a failure that left the request unsent carries it back in
    /// [`ForwardFailure::unsent`], so the caller may send it again (for example once the app it
    /// just started listens, or to another upstream).
    ///
    /// The failure is boxed: it holds the whole request and its context, and the unboxed
    /// `Result` (576 bytes) was copied at every step of the answer's way back, on the path every
    /// request takes.
    ///
    /// A plain function returning an `async move` block, not an `async fn`: an `async fn`
    /// moves its arguments once more, into its body's locals, when first polled (the request
    /// and its context, 424 bytes, on every request).
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub fn try_forward(
        &self,
        req: Request<RequestBody>,
        upstream: SocketAddr,
        ctx: ForwardContext,
    ) -> impl Future<Output = Result<Response<ProxyBody>, Box<ForwardFailure>>> + '_ {
        async move {
            let (parts, body) = req.into_parts();
            // One walk over the few fields a request has, rather than two hashed lookups.
            let (has_host, asks_upgrade) =
                parts
                    .headers
                    .keys()
                    .fold((false, false), |(host, upgrade), name| {
                        (
                            host || *name == header::HOST,
                            upgrade || *name == header::UPGRADE,
                        )
                    });
            let upgrade = asks_upgrade && headers::is_upgrade_request(&parts.headers);
            let target = match origin_target(&parts.uri) {
                Ok(target) => target,
                Err(error) => return Err(failure(error, None, None)),
            };
            // An HTTP/2 client names the host in the request target, not a header.
            let missing_host = if has_host {
                None
            } else {
                match parts.uri.authority() {
                    Some(a) => HeaderValue::from_str(a.as_str()).ok(),
                    None => HeaderValue::from_str(addr_text::authority(upstream).as_str()).ok(),
                }
            };

            if !upgrade && body.is_end_stream() {
                // Only the exchange's future joins this one's state: the request's parts, body and
                // context stay where they are (each move into a callee's future is a copy).
                let pool = self.pool();
                // Unparsed fields only for a request the lean loop read: it writes the answer, and
                // hyper's server (which wrote the rest) knows only the map.
                let raw = match &body {
                    RequestBody::Empty => ctx.raw_answer_fields,
                    RequestBody::Hyper(_) => None,
                };
                let answer = if telemetry::is_exporting() {
                    // The trace context replaces the client's: built as a map, then written.
                    let mut headers = headers::request_headers(&parts.headers, &ctx, false);
                    if let Some(host) = &missing_host {
                        headers.insert(header::HOST, host.clone());
                    }
                    let fields = |head: &mut HeadBytes<'_>| {
                        for (name, value) in &headers {
                            head.field(name, value);
                        }
                    };
                    exchange::exchange(pool, upstream, &parts.method, target, &fields, raw).await
                } else {
                    // The usual case: the rewritten fields go straight into the head's bytes.
                    let fields = |head: &mut HeadBytes<'_>| {
                        headers::write_request_fields(&parts.headers, &ctx, false, head);
                        if let Some(host) = &missing_host {
                            head.field(&header::HOST, host);
                        }
                    };
                    exchange::exchange(pool, upstream, &parts.method, target, &fields, raw).await
                };
                return bodiless_answer(answer, parts, body, upstream, ctx);
            }
            // Boxed: hyper's client future is large, and a caller's future holds this one's. Most
            // requests take the branch above, and every move of their future up the chain would
            // copy room for this one (try_forward's future was 2.5 KB with it inline).
            Box::pin(self.forward_with_hyper(parts, body, upstream, ctx, upgrade, missing_host))
                .await
        }
    }

    /// [`Forwarder::try_forward`] for a request with a body or an upgrade: through hyper's
    /// client, which sends the body up while the answer comes down.
    async fn forward_with_hyper(
        &self,
        parts: http::request::Parts,
        body: RequestBody,
        upstream: SocketAddr,
        ctx: ForwardContext,
        upgrade: bool,
        missing_host: Option<HeaderValue>,
    ) -> Result<Response<ProxyBody>, Box<ForwardFailure>> {
        // The original parts stay here untouched: a retry needs them as they came, and an
        // upgrade needs their `OnUpgrade` extension once the upstream agrees.
        let mut headers = headers::request_headers(&parts.headers, &ctx, upgrade);
        if let Some(host) = missing_host {
            headers.insert(header::HOST, host);
        }
        let uri = upstream_uri(&parts.uri);
        let (reclaim_tx, mut reclaim_rx) = oneshot::channel();
        let client_failed = Arc::new(ClientBodyFailure::default());
        let mut outbound = Request::new(Outbound::new(
            body,
            reclaim_tx,
            client_failed.clone(),
            ctx.body_stall.clone(),
            ctx.byte_counts.clone(),
        ));
        *outbound.method_mut() = parts.method.clone();
        *outbound.uri_mut() = uri;
        // Always 1.1 upstream, so keep-alive and chunked framing work whatever the client spoke.
        *outbound.version_mut() = Version::HTTP_11;
        *outbound.headers_mut() = headers;

        let (mut response, lent) = match self.pool().send(upstream, outbound).await {
            Ok(sent) => sent,
            Err(SendError::Connect(error, unsent_request)) => {
                // Dropping the request sends its untouched body back.
                drop(unsent_request);
                let unsent = reclaim_rx.try_recv().ok().map(|body| Unsent {
                    request: Request::from_parts(parts, body),
                    ctx,
                });
                return Err(failure(
                    ProxyError::Connect {
                        upstream,
                        cause: error.into(),
                    },
                    unsent,
                    None,
                ));
            }
            Err(SendError::Exchange(error)) => {
                let cause = error.into();
                let error = if client_failed.stalled.load(Ordering::Relaxed) {
                    ProxyError::ClientBodyStalled { upstream, cause }
                } else if client_failed.failed.load(Ordering::Relaxed) {
                    ProxyError::ClientBody { upstream, cause }
                } else {
                    ProxyError::Upstream { upstream, cause }
                };
                return Err(failure(error, None, None));
            }
        };

        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            if !upgrade {
                return Err(failure(
                    ProxyError::UnexpectedUpgrade { upstream },
                    None,
                    None,
                ));
            }
            let upstream_io = hyper::upgrade::on(&mut response);
            // The connection is the tunnel's now: never back in the pool.
            drop(lent);
            let client_io = hyper::upgrade::on(Request::from_parts(parts, ()));
            let (mut head, _empty) = response.into_parts();
            headers::prepare_response(&mut head.headers, true);
            head.version = Version::HTTP_11;
            upgrade::spawn_tunnel(
                client_io,
                upstream_io,
                upstream,
                ctx.request_id,
                ctx.activity,
                ctx.byte_counts,
            );
            return Ok(Response::from_parts(head, body::empty()));
        }

        let (mut head, body) = response.into_parts();
        if ctx.hand_back_if.is_some_and(|pred| pred(&head)) {
            // Only a request whose body hyper never touched can go elsewhere.
            if let Ok(unread) = reclaim_rx.try_recv() {
                return Err(failure(
                    ProxyError::HandedBack {
                        upstream,
                        status: head.status,
                    },
                    Some(Unsent {
                        request: Request::from_parts(parts, unread),
                        ctx,
                    }),
                    Some(head),
                ));
            }
        }
        headers::prepare_response(&mut head.headers, false);
        // hyper answers an HTTP/1.0 client in kind; 1.1 here only says "the server's default".
        head.version = Version::HTTP_11;
        let body = Guarded::new(body, ctx.activity, ctx.byte_counts).with_connection(lent);
        Ok(Response::from_parts(
            head,
            ProxyBody::new(body.map_err(BoxError::from)),
        ))
    }
}

/// The client's response to a bodiless request's [`exchange`], or why there is none (with the
/// untouched request for a retry when that is safe).
fn bodiless_answer(
    answer: Result<Answer, Failed>,
    parts: http::request::Parts,
    body: RequestBody,
    upstream: SocketAddr,
    ctx: ForwardContext,
) -> Result<Response<ProxyBody>, Box<ForwardFailure>> {
    match answer {
        Ok(Answer {
            mut head,
            body: answer_body,
            hop_by_hop,
            fields,
        }) => {
            if ctx.hand_back_if.is_some_and(|pred| pred(&head)) {
                let error = ProxyError::HandedBack {
                    upstream,
                    status: head.status,
                };
                let unsent = Unsent {
                    request: Request::from_parts(parts, body),
                    ctx,
                };
                return Err(failure(error, Some(unsent), Some(head)));
            }
            if hop_by_hop {
                headers::prepare_response(&mut head.headers, false);
            }
            head.version = Version::HTTP_11;
            // The request's fields are written upstream: its map serves the next message.
            spare_maps::give_back(parts.headers);
            let body = Guarded::new(answer_body, ctx.activity, ctx.byte_counts);
            let body = match fields {
                Some(fields) => ProxyBody::with_fields(body, fields),
                None => ProxyBody::new(body),
            };
            Ok(Response::from_parts(head, body))
        }
        Err(Failed::Connect(cause)) => {
            let error = ProxyError::Connect {
                upstream,
                cause: cause.into(),
            };
            let unsent = Unsent {
                request: Request::from_parts(parts, body),
                ctx,
            };
            Err(failure(error, Some(unsent), None))
        }
        Err(Failed::UnexpectedUpgrade) => Err(failure(
            ProxyError::UnexpectedUpgrade { upstream },
            None,
            None,
        )),
        Err(Failed::Upstream(cause)) => Err(failure(
            ProxyError::Upstream {
                upstream,
                cause: cause.into(),
            },
            None,
            None,
        )),
    }
}

/// A [`ForwardFailure`] from its three parts.
fn failure(
    error: ProxyError,
    unsent: Option<Unsent>,
    answer: Option<http::response::Parts>,
) -> Box<ForwardFailure> {
    Box::new(ForwardFailure {
        error,
        unsent,
        answer,
    })
}

/// The target sent upstream: the path and query only (origin form), whatever form the client
/// used; an absolute-form target keeps only its path.
fn origin_target(target: &Uri) -> Result<&str, ProxyError> {
    match target.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => Ok(pq.as_str()),
        None => Ok("/"),
        Some(_) => Err(ProxyError::BadRequest {
            reason: "the request target is not a path",
        }),
    }
}

/// [`origin_target`] as a URI, for hyper's client.
fn upstream_uri(target: &Uri) -> Uri {
    Uri::from(
        target
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_sent_upstream_is_the_path_and_query_only() {
        assert_eq!(
            origin_target(&Uri::from_static("/a/b?c=d")).ok(),
            Some("/a/b?c=d")
        );
        let absolute = Uri::from_static("http://evil.example/x?y");
        assert_eq!(origin_target(&absolute).ok(), Some("/x?y"));
        assert_eq!(upstream_uri(&absolute).to_string(), "/x?y");
        assert!(origin_target(&Uri::from_static("*")).is_err());
    }
}
