//! What the forwarder needs to know about the client side of one request.

use std::any::Any;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::Scheme;

/// A token the proxy keeps alive for as long as the exchange is in progress.
///
/// The node proxy reaps apps that have been idle for a while, and an open WebSocket or SSE stream
/// must count as activity even though no new request arrives. The caller wraps whatever marks
/// "busy" on its side (an RAII counter, an `Arc` whose strong count is watched, a oneshot sender…)
/// and passes it in [`ForwardContext::activity`]. The proxy drops it:
///
/// - when the response body has been sent to its end, has failed, or was dropped (the client
///   went away);
/// - for an upgrade, when the tunnel between client and upstream closes;
/// - on an error, when the error is returned (or, for a retryable connect error, it travels back
///   with [`Unsent`](super::Unsent) so the retry keeps it).
pub struct ActivityGuard(Held);

enum Held {
    // Never read: it is held only so that its `Drop` runs at the right moment.
    Boxed(#[allow(dead_code)] Box<dyn Any + Send + Sync>),
    Shared(Arc<dyn ActivityEnd>),
}

/// A shared record of exchanges in progress, told when one ends (see [`ActivityGuard::shared`]).
pub trait ActivityEnd: Send + Sync {
    /// One exchange counted as begun is over.
    fn end(&self);
}

impl ActivityGuard {
    /// Wraps any value; its `Drop` marks the end of the activity.
    pub fn new<T: Send + Sync + 'static>(token: T) -> Self {
        Self(Held::Boxed(Box::new(token)))
    }

    /// For an exchange already counted as begun in `activity`: the guard calls
    /// [`ActivityEnd::end`] when it drops. Unlike [`ActivityGuard::new`] it allocates nothing,
    /// which matters on a path every request takes.
    pub fn shared(activity: Arc<dyn ActivityEnd>) -> Self {
        Self(Held::Shared(activity))
    }
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        if let Held::Shared(activity) = &self.0 {
            activity.end();
        }
    }
}

impl fmt::Debug for ActivityGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ActivityGuard")
    }
}

/// The client side of one forwarded request.
#[derive(Debug)]
pub struct ForwardContext {
    /// The address of the peer that sent the request; its IP is appended to `X-Forwarded-For`.
    pub peer: SocketAddr,
    /// The scheme the client used (`http` or `https`), sent as `X-Forwarded-Proto`.
    pub scheme: Scheme,
    /// Sent as `X-Request-Id` when the request carries none; empty means "don't add one".
    pub request_id: String,
    /// Keep `X-Forwarded-Proto` and `X-Forwarded-Host` that arrive with the request.
    ///
    /// `false` (the default) is for the public edge: a client could forge them, so they are
    /// overwritten. `true` is for a hop behind a trusted proxy (the node proxy behind the edge),
    /// which must not replace the edge's `https` with its own `http`. `X-Forwarded-For` is appended
    /// to either way.
    pub trust_forwarded: bool,
    /// Kept alive until the exchange is over; see [`ActivityGuard`].
    pub activity: Option<ActivityGuard>,
    /// Answers after which the request is handed back rather than passed on, when its body was
    /// never read (see [`super::ForwardFailure::answer`]): the edge uses it to follow a node that
    /// says "the app runs elsewhere".
    pub hand_back_if: Option<fn(&http::response::Parts) -> bool>,
    /// Cut the request body (answering 408 if no answer started yet) when the client sends no
    /// part of it for this long; `None` waits as long as the client likes (the node, behind a
    /// trusted edge).
    pub body_stall: Option<BodyStall>,
    /// Where the body bytes of the exchange are added up, both ways (upgraded tunnels too).
    pub byte_counts: Option<std::sync::Arc<ByteCounts>>,
    /// Lets a plain answer's header fields go to the client unparsed, when the proxies' own
    /// HTTP/1.1 loop read the request (it writes them; see `raw_fields`): the response's map
    /// is then empty but for what the caller adds. The list names, in lower case, the fields
    /// the caller reads or changes in the answer's map; an answer carrying any of them is
    /// parsed whole. `None` (the default): every answer is parsed into the map.
    pub raw_answer_fields: Option<&'static [&'static str]>,
}

/// Body bytes a proxy passed, for accounting: `received` from the client, `sent` to it.
#[derive(Debug, Default)]
pub struct ByteCounts {
    pub received: std::sync::atomic::AtomicU64,
    pub sent: std::sync::atomic::AtomicU64,
}

impl ByteCounts {
    pub(crate) fn add_received(this: Option<&Self>, n: usize) {
        if let Some(c) = this {
            c.received
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
    pub(crate) fn add_sent(this: Option<&Self>, n: usize) {
        if let Some(c) = this {
            c.sent
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A limit on how long a client's request body may pause, and where cut bodies are counted.
#[derive(Debug, Clone)]
pub struct BodyStall {
    pub limit: std::time::Duration,
    pub stalls: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

// The builders are `#[inline]`: a request's context is built by a chain of them, and each call
// out of line would copy the whole context once more.
impl ForwardContext {
    /// A context for a request from `peer` over `scheme`, untrusted, with no activity guard.
    pub fn new(peer: SocketAddr, scheme: Scheme, request_id: impl Into<String>) -> Self {
        Self {
            peer,
            scheme,
            request_id: request_id.into(),
            trust_forwarded: false,
            activity: None,
            hand_back_if: None,
            body_stall: None,
            byte_counts: None,
            raw_answer_fields: None,
        }
    }

    /// Keeps incoming `X-Forwarded-Proto`/`-Host` (see [`ForwardContext::trust_forwarded`]).
    #[inline]
    pub fn trusting_forwarded(mut self) -> Self {
        self.trust_forwarded = true;
        self
    }

    /// Hands the request back (see [`ForwardContext::hand_back_if`]) on answers matching `pred`.
    #[inline]
    pub fn handing_back_if(mut self, pred: fn(&http::response::Parts) -> bool) -> Self {
        self.hand_back_if = Some(pred);
        self
    }

    /// Cuts a request body that stalls (see [`ForwardContext::body_stall`]).
    #[inline]
    pub fn with_body_stall(mut self, stall: BodyStall) -> Self {
        self.body_stall = Some(stall);
        self
    }

    /// Adds the exchange's body bytes to `counts` (see [`ForwardContext::byte_counts`]).
    #[inline]
    pub fn counting_bytes(mut self, counts: std::sync::Arc<ByteCounts>) -> Self {
        self.byte_counts = Some(counts);
        self
    }

    /// Attaches a token held until the exchange is over (see [`ActivityGuard`]).
    #[inline]
    pub fn with_activity(mut self, token: impl Send + Sync + 'static) -> Self {
        self.activity = Some(ActivityGuard::new(token));
        self
    }

    /// Attaches a guard held until the exchange is over.
    #[inline]
    pub fn with_guard(mut self, guard: ActivityGuard) -> Self {
        self.activity = Some(guard);
        self
    }

    /// Lets plain answers' fields go to the client unparsed, unless they carry one of `reads`
    /// (see [`ForwardContext::raw_answer_fields`]).
    #[inline]
    pub fn passing_answer_fields_unread(mut self, reads: &'static [&'static str]) -> Self {
        self.raw_answer_fields = Some(reads);
        self
    }
}
