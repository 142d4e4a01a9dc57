//! Body types: what the proxy hands to hyper in each direction.
//!
//! Both wrappers forward frames one at a time as they arrive, so nothing is ever buffered whole,
//! and delegate `size_hint`/`is_end_stream` so hyper keeps `Content-Length` framing when it can.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
use tokio::sync::oneshot;

use super::{
    context::{BodyStall, ByteCounts},
    raw_fields::RawFields,
    ActivityGuard,
};

/// A streaming response body, usable as a hyper server response body.
///
/// It may also carry an upstream answer's header fields unparsed ([`RawFields`]), which only
/// the proxies' own HTTP/1.1 loop writes; see `raw_fields` for when. They live in the body's
/// box: a response is moved many times on its way out, and a larger `ProxyBody` made every move
/// copy more.
pub struct ProxyBody(Pin<Box<dyn Boxed>>);

/// What a [`ProxyBody`] boxes: a body, and maybe fields (see [`Inner`]).
trait Boxed: Body<Data = Bytes, Error = BoxError> + Send + Sync {
    fn take_fields(self: Pin<&mut Self>) -> Option<RawFields>;
}

pin_project_lite::pin_project! {
    /// A body, and the unparsed fields of the answer it belongs to, if any.
    struct Inner<B> {
        #[pin]
        body: B,
        fields: Option<RawFields>,
    }
}

impl<B> Boxed for Inner<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Send + Sync,
{
    fn take_fields(self: Pin<&mut Self>) -> Option<RawFields> {
        self.project().fields.take()
    }
}

impl<B> Body for Inner<B>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl ProxyBody {
    /// Boxes `body`.
    pub fn new<B>(body: B) -> Self
    where
        B: Body<Data = Bytes, Error = BoxError> + Send + Sync + 'static,
    {
        Self(Box::pin(Inner { body, fields: None }))
    }

    /// `body`, after whose head the answer's `fields` are to be written as they came.
    pub(crate) fn with_fields<B>(body: B, fields: RawFields) -> Self
    where
        B: Body<Data = Bytes, Error = BoxError> + Send + Sync + 'static,
    {
        Self(Box::pin(Inner {
            body,
            fields: Some(fields),
        }))
    }

    /// The unparsed fields this body carries, if any; the writer takes them before the body.
    pub(crate) fn take_fields(&mut self) -> Option<RawFields> {
        self.0.as_mut().take_fields()
    }
}

impl fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProxyBody")
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut().0.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// The body of a request the proxies serve: none (a head the proxies' own HTTP/1.1 loop read,
/// see `h1`), or hyper's, streaming from the client.
#[derive(Debug)]
pub enum RequestBody {
    /// The request has no body (no `Content-Length` nor `Transfer-Encoding`). Only the lean
    /// loop makes these, and it writes their answers: so the forwarder may leave a plain
    /// answer's fields unparsed for them (see `raw_fields`).
    Empty,
    /// The body as hyper's server reads it from the client.
    Hyper(Incoming),
}

impl From<Incoming> for RequestBody {
    fn from(body: Incoming) -> Self {
        Self::Hyper(body)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Hyper(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Hyper(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Hyper(body) => body.size_hint(),
        }
    }
}

/// A body holding `data` whole (for small answers such as errors).
pub fn full(data: impl Into<Bytes>) -> ProxyBody {
    ProxyBody::new(Full::new(data.into()).map_err(|never: Infallible| match never {}))
}

/// An empty body.
pub fn empty() -> ProxyBody {
    ProxyBody::new(Empty::<Bytes>::new().map_err(|never: Infallible| match never {}))
}

/// A response body that holds an [`ActivityGuard`] until the body is over.
///
/// The guard goes as soon as the last frame is produced or the body fails; if the client goes
/// away first, hyper drops the body and the guard with it.
pub(crate) struct Guarded<B: Body> {
    inner: B,
    guard: Option<ActivityGuard>,
    counts: Option<Arc<ByteCounts>>,
    /// The upstream connection the body comes from, given back for the next exchange once the
    /// body has ended.
    lent: Option<super::upstream::Lent>,
}

impl<B: Body> Guarded<B> {
    pub(crate) fn new(
        inner: B,
        guard: Option<ActivityGuard>,
        counts: Option<Arc<ByteCounts>>,
    ) -> Self {
        Self {
            inner,
            guard,
            counts,
            lent: None,
        }
    }

    /// Gives `lent` back to its pool when the body has ended.
    pub(crate) fn with_connection(mut self, lent: super::upstream::Lent) -> Self {
        self.lent = Some(lent);
        self
    }
}

impl<B: Body> Drop for Guarded<B> {
    fn drop(&mut self) {
        // hyper may drop a body it knows has ended without polling it to the end.
        if let Some(lent) = self.lent.take() {
            if self.inner.is_end_stream() {
                lent.give_back();
            }
        }
    }
}

impl<B> Body for Guarded<B>
where
    B: Body + Unpin,
    B::Data: bytes::Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                ByteCounts::add_sent(self.counts.as_deref(), bytes::Buf::remaining(data));
            }
        }
        match &polled {
            Poll::Ready(None) => {
                self.guard = None;
                if let Some(lent) = self.lent.take() {
                    lent.give_back();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                self.guard = None;
                // A broken exchange: the connection is not reused.
                self.lent = None;
            }
            // hyper may stop polling once `is_end_stream` says so; release the guard with the
            // last frame instead of waiting for the body to be dropped.
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => {
                self.guard = None;
                if let Some(lent) = self.lent.take() {
                    lent.give_back();
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's request body on its way upstream.
///
/// If the request never left (the connection to the upstream could not be made), the unread
/// body is sent back through `reclaim` when hyper drops the request, so the caller can retry it
/// elsewhere. `failed` records that an error came from the client's side, not upstream's, and
/// whether it was a stall (no frame for the stall limit).
pub(crate) struct Outbound {
    inner: Option<RequestBody>,
    polled: bool,
    reclaim: Option<oneshot::Sender<RequestBody>>,
    failed: Arc<ClientBodyFailure>,
    stall: Option<Stall>,
    counts: Option<Arc<ByteCounts>>,
}

/// How the client's side of a forwarded body failed, for the forwarder's choice of status.
#[derive(Default)]
pub(crate) struct ClientBodyFailure {
    /// Reading the client's body failed (it went away, or sent a broken body).
    pub failed: AtomicBool,
    /// The client's body made no progress for the stall limit and was cut.
    pub stalled: AtomicBool,
}

/// A limit on how long a request body may go without a frame.
struct Stall {
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    stalls: Arc<AtomicU64>,
}

/// The error a stalled client body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no part of its request body for {0:?}")]
pub(crate) struct BodyStalled(Duration);

impl Outbound {
    pub(crate) fn new(
        inner: RequestBody,
        reclaim: oneshot::Sender<RequestBody>,
        failed: Arc<ClientBodyFailure>,
        stall: Option<BodyStall>,
        counts: Option<Arc<ByteCounts>>,
    ) -> Self {
        Self {
            counts,
            inner: Some(inner),
            polled: false,
            reclaim: Some(reclaim),
            failed,
            stall: stall.map(|s| Stall {
                limit: s.limit,
                timer: Box::pin(tokio::time::sleep(s.limit)),
                stalls: s.stalls,
            }),
        }
    }
}

impl Body for Outbound {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let first = !self.polled;
        self.polled = true;
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        match (&polled, this.stall.as_mut()) {
            (Poll::Pending, Some(stall)) => {
                if first {
                    // The clock starts when the upstream asks for the body, not at accept.
                    let at = tokio::time::Instant::now() + stall.limit;
                    stall.timer.as_mut().reset(at);
                }
                if stall.timer.as_mut().poll(cx).is_ready() {
                    this.failed.failed.store(true, Ordering::Relaxed);
                    this.failed.stalled.store(true, Ordering::Relaxed);
                    stall.stalls.fetch_add(1, Ordering::Relaxed);
                    // Dropping the client's body lets hyper close that connection.
                    this.inner = None;
                    return Poll::Ready(Some(Err(BodyStalled(stall.limit).into())));
                }
            }
            (Poll::Ready(Some(Ok(_))), Some(stall)) => {
                let at = tokio::time::Instant::now() + stall.limit;
                stall.timer.as_mut().reset(at);
            }
            _ => {}
        }
        match &polled {
            Poll::Ready(Some(Err(_))) => this.failed.failed.store(true, Ordering::Relaxed),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    ByteCounts::add_received(this.counts.as_deref(), data.len());
                }
            }
            _ => {}
        }
        polled.map(|f| f.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        // A body that was read from can't be replayed; only an untouched one goes back.
        if self.polled {
            return;
        }
        if let (Some(inner), Some(reclaim)) = (self.inner.take(), self.reclaim.take()) {
            // Nobody waiting means the request was sent; dropping the body is then right.
            let _ = reclaim.send(inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends on drop, so a test can tell exactly when the guard went.
    struct Flag(Option<oneshot::Sender<()>>);
    impl Drop for Flag {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }

    fn guarded(data: &'static str) -> (Guarded<Full<Bytes>>, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let guard = ActivityGuard::new(Flag(Some(tx)));
        (
            Guarded::new(Full::new(Bytes::from(data)), Some(guard), None),
            rx,
        )
    }

    #[tokio::test]
    async fn guard_is_released_with_the_last_frame_not_before() {
        let (mut body, mut released) = guarded("hello");
        assert!(
            released.try_recv().is_err(),
            "released before the body was sent"
        );
        let frame = body.frame().await.and_then(Result::ok);
        assert_eq!(
            frame.and_then(|f| f.into_data().ok()),
            Some(Bytes::from("hello"))
        );
        // The body is still alive here: the guard went with its last frame.
        assert!(released.try_recv().is_ok());
        drop(body);
    }

    #[tokio::test]
    async fn guard_is_released_when_the_body_is_dropped_unread() {
        let (body, released) = guarded("never read");
        drop(body);
        assert!(released.await.is_ok());
    }
}
