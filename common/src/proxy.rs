//! The streaming HTTP/1.1 reverse-proxy core shared by the edge proxy and the node proxy.
//!
//! Both proxies do the same thing once they have picked an upstream: copy the client's request to
//! it, copy the answer back, and for an `Upgrade` (WebSocket or anything else) splice the two
//! connections together. This module does that once, with the invariants both rely on:
//!
//! - bodies stream in both directions and are never buffered whole; nothing here puts a timeout on
//!   a response, so SSE and long polls stay open as long as the app keeps them open;
//! - every end-to-end header is kept (several `Set-Cookie` included), hop-by-hop headers are
//!   dropped both ways (`Host` never is, whatever `Connection` names), `X-Forwarded-*`,
//!   `Forwarded` and `X-Request-Id` are set (an untrusted client's own are replaced), `Host`
//!   passes unchanged;
//! - an [`ActivityGuard`] lives until the response body is over or the upgraded tunnel closes, so a
//!   caller that counts activity (the node proxy's idle reaper) sees open streams as busy;
//! - errors are classified ([`ProxyError`]) so the caller picks the status in one place, and
//!   a connect failure hands the unsent request back ([`Forwarder::try_forward`]) for a retry.
//!
//! ```text
//!  client ──▶ serve() ──▶ caller's handler ──▶ Forwarder::forward ──▶ upstream
//!                          (routing, waking)     │ headers::request_headers
//!                                                │ body: streamed, ActivityGuard held
//!                                                └ 101: upgrade::spawn_tunnel (copy_bidirectional)
//! ```
//!
//! # Layout
//! - `context`: [`ForwardContext`] (who asked, how, request id) and the [`ActivityGuard`] token.
//! - `forward`: the pooled [`Forwarder`] and its [`ForwarderConfig`]; `upstream`: each worker
//!   thread's kept connections; `exchange`: a bodiless request's exchange, driven in its own task.
//! - `headers`: hop-by-hop removal, `X-Forwarded-*`, upgrade detection; `addr_text`: the
//!   addresses in them, formatted once per thread, and [`parsed_socket_addr`], addresses parsed
//!   once per thread.
//! - `request_id`: [`request_id`], the client's `X-Request-Id` (in a safe charset) or a new one.
//! - `host`: [`checked_domain`], the request's host, refused when ambiguous.
//! - `spare_maps`: header maps kept per thread for the next message.
//! - `raw_fields`: a plain upstream answer's header fields, passed on unparsed.
//! - `body`: the [`ProxyBody`] type and the body wrappers that stream and hold the guard.
//! - `upgrade`: the tunnel spawned after a `101 Switching Protocols`.
//! - `error`: [`ProxyError`] and the plain-text [`error_response`].
//! - `serve`: [`serve`] / [`serve_with`], the accept loop both proxies (and tests) run their
//!   handler with; `h1`: its lean HTTP/1.1 loop for requests without a body (hyper's server
//!   takes the rest).
//! - `workers`: [`Workers`], the single-threaded runtimes connections run on.

mod addr_text;
mod body;
mod context;
mod error;
mod exchange;
mod forward;
mod h1;
mod headers;
mod host;
mod raw_fields;
mod request_id;
mod serve;
mod spare_maps;
mod upgrade;
mod upstream;
mod workers;

pub use addr_text::parsed_socket_addr;
pub use body::{empty, full, ProxyBody, RequestBody};
pub use context::{ActivityEnd, ActivityGuard, BodyStall, ByteCounts, ForwardContext};
pub use error::{error_response, ProxyError};
pub use forward::{ForwardFailure, Forwarder, ForwarderConfig, Unsent};
pub use headers::{is_upgrade_request, strip_hop_by_hop};
pub use host::{checked_domain, HostError};
pub use request_id::{new_request_id, request_id, MAX_REQUEST_ID_LEN};
pub use serve::{
    serve, serve_with, ClientLimits, ServeOptions, ACME_TLS_ALPN, DEFAULT_DRAIN_TIMEOUT,
};
pub use workers::Workers;
