//! The proxies' own HTTP/1.1 server loop for the request nearly every client sends: a head
//! without a body (GET, HEAD, a DELETE…).
//!
//! Why: hyper's server side cost about 12 000 of the 26 000 instructions a warm request spent
//! in the node proxy (its dispatcher's state machine, buffered reads, a header timer re-armed per
//! request; `docs/benchmarks.md`, issue 18). This loop reads the head with `httparse` (hyper's
//! own parser, same configuration), calls the handler in the connection's task, and writes the
//! answer's head and body itself, by hyper's rules (see `response`).
//!
//! Anything else it hands to hyper's server, untouched, from the first byte of that request on:
//! a body (`Content-Length` above 0, `Transfer-Encoding`), an upgrade or CONNECT, `Expect`,
//! `TE`, HTTP/1.0, HTTP/2's preface, a malformed head, or a head not whole within 16 KiB. hyper
//! then serves the rest of the connection, so every answer to a doubtful request (400, 431, a
//! smuggling shape) stays hyper's.
//!
//! What it keeps of hyper's server: the header timeout (a head, or an idle keep-alive
//! connection, gets `header_timeout`), a client that closes while its request is handled or its
//! answer streams ends that work (the handler's future or the body is dropped), pipelined
//! requests are answered in order, and a graceful stop closes idle connections at once and the
//! busy ones after their answer (`Connection: close`).

mod date;
mod head;
mod prefixed;
mod response;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tracing::debug;

pub(crate) use prefixed::Prefixed;
use response::{BodyLength, Framing};

use super::body::RequestBody;
use super::error::BoxError;
use super::{spare_maps, ProxyBody};

/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;
/// A head not whole within this many bytes goes to hyper (which allows more, and answers 431
/// past its own limit).
const MAX_HEAD: usize = 16 * 1024;
/// Body data up to this size is copied behind what is waiting to be written (one system call
/// for a small answer's head and body); larger data is written on its own.
const COPY_LIMIT: usize = 16 * 1024;

/// How the loop ended.
pub(crate) enum Served<S> {
    /// The connection is over (closed by either side, timed out, or stopped).
    Done,
    /// hyper's server is to serve the rest of the connection, starting with these bytes.
    Hyper(Prefixed<S>),
}

/// Serves requests on `io` until the connection ends or a request needs hyper.
pub(crate) async fn serve<S, H, F>(
    mut io: S,
    peer: SocketAddr,
    handler: &H,
    stop: &watch::Receiver<bool>,
    header_timeout: Duration,
) -> Served<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Request<RequestBody>, SocketAddr) -> F,
    F: Future<Output = Response<ProxyBody>>,
{
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fields = Vec::new();
    // Where each request's head is built, and whence it goes straight to the handler.
    let mut slot = None;
    // One timer for the connection's life: moved only when it fires before the current
    // deadline, not re-armed per request (each re-arm can cost the runtime a wake-up).
    let timer = tokio::time::sleep(header_timeout);
    tokio::pin!(timer);
    // One wait for the stop for the connection's life too, rather than one per request.
    let mut stop_seen = stop.clone();
    let stopped = async move {
        let _ = stop_seen.changed().await;
    };
    tokio::pin!(stopped);
    loop {
        let waits = Waits {
            header_timeout,
            timer: timer.as_mut(),
            stop,
            stopped: stopped.as_mut(),
        };
        let head::Head { close, head_method } =
            match next_head(&mut io, &mut buf, &mut fields, &mut slot, waits).await {
                Next::Head(head) => head,
                Next::Hyper => return Served::Hyper(Prefixed::new(buf, io)),
                Next::Closed => return Served::Done,
            };
        let Some(request) = slot.take() else {
            // `Next::Head` is returned only with the request in the slot.
            return Served::Done;
        };
        // Pinned where it is made: a handler's future is large, and moving it costs a copy.
        let handling = std::pin::pin!(handler(request, peer));
        let response = tokio::select! {
            biased;
            response = handling => response,
            () = client_gone(&mut io, &mut buf) => return Served::Done,
        };
        let keep_alive = !close && !*stop.borrow();
        match respond(
            &mut io,
            &mut buf,
            &mut out,
            response,
            head_method,
            keep_alive,
        )
        .await
        {
            Ok(true) => {}
            Ok(false) => {
                // The answer said this is the last one: close as hyper does, in bounded time.
                let _ = tokio::time::timeout(header_timeout, io.shutdown()).await;
                return Served::Done;
            }
            Err(Broken) => return Served::Done,
        }
    }
}

/// What the client sent next.
enum Next {
    Head(head::Head),
    Hyper,
    Closed,
}

/// What a wait for the next head may end on besides bytes.
struct Waits<'a, W> {
    header_timeout: Duration,
    timer: Pin<&'a mut Sleep>,
    stop: &'a watch::Receiver<bool>,
    /// Ends when the server stops (polled only while no head has begun, so never after).
    stopped: Pin<&'a mut W>,
}

/// Reads until a whole head is buffered, within the header timeout from now.
async fn next_head<S: AsyncRead + Unpin, W: Future<Output = ()>>(
    io: &mut S,
    buf: &mut BytesMut,
    fields: &mut Vec<head::Field>,
    slot: &mut Option<Request<RequestBody>>,
    waits: Waits<'_, W>,
) -> Next {
    let Waits {
        header_timeout,
        mut timer,
        stop,
        mut stopped,
    } = waits;
    let deadline = Instant::now() + header_timeout;
    loop {
        if !buf.is_empty() {
            match head::parse(buf, fields, slot) {
                head::Parsed::Request(head) => return Next::Head(head),
                head::Parsed::Other => return Next::Hyper,
                head::Parsed::Partial if buf.len() >= MAX_HEAD => return Next::Hyper,
                head::Parsed::Partial => {}
            }
        } else if *stop.borrow() {
            return Next::Closed;
        }
        let idle = buf.is_empty();
        if buf.capacity() - buf.len() < READ_CHUNK / 2 {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            biased;
            read = io.read_buf(buf) => match read {
                Ok(0) | Err(_) => return Next::Closed,
                Ok(_) => {}
            },
            // Stopping closes a connection between requests, not one halfway through a head.
            () = stopped.as_mut(), if idle => return Next::Closed,
            () = timer.as_mut() => {
                if Instant::now() >= deadline {
                    return Next::Closed;
                }
                timer.as_mut().reset(deadline);
            }
        }
    }
}

/// Resolves when the client closes its side (or its connection fails) while a request is
/// handled or its answer waits for the body. Bytes that arrive instead (a pipelined request)
/// are kept for later, and then, like hyper, it stops looking.
async fn client_gone<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut) {
    if buf.is_empty() {
        buf.reserve(READ_CHUNK);
        if let Ok(0) | Err(_) = io.read_buf(buf).await {
            return;
        }
    }
    std::future::pending::<()>().await;
}

/// The connection can't carry on: a write failed, the client left, or the answer broke off.
struct Broken;

/// Writes `response`; true when the connection may carry another request.
async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    response: Response<ProxyBody>,
    head_method: bool,
    keep_alive: bool,
) -> Result<bool, Broken> {
    let (parts, mut body) = response.into_parts();
    let raw = body.take_fields();
    let length = if body.is_end_stream() {
        BodyLength::None
    } else {
        body.size_hint()
            .exact()
            .map_or(BodyLength::Unknown, BodyLength::Known)
    };
    out.clear();
    let plan = match response::encode(&parts, raw.as_ref(), length, head_method, keep_alive, out) {
        Ok(plan) => plan,
        Err(response::InvalidHead) => {
            debug!(status = %parts.status, "an answer head with conflicting lengths; closing");
            return Err(Broken);
        }
    };
    spare_maps::give_back(parts.headers);

    if plan.framing != Framing::Length(0) {
        let mut sent = 0u64;
        loop {
            // The next frame if it is there now; otherwise what is written so far goes out
            // first, and the wait watches the client.
            let frame = match std::future::poll_fn(|cx| {
                Poll::Ready(Pin::new(&mut body).poll_frame(cx))
            })
            .await
            {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    flush(io, out).await?;
                    tokio::select! {
                        biased;
                        frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)) => frame,
                        () = client_gone(io, buf) => return Err(Broken),
                    }
                }
            };
            let data = match frame {
                None => break,
                Some(Err(error)) => {
                    let error: BoxError = error;
                    debug!(%error, "the answer's body failed; closing the connection");
                    let _ = flush(io, out).await;
                    return Err(Broken);
                }
                // Trailers: hyper sends them only to a client that asked (`TE: trailers`), and
                // those requests are hyper's.
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
            };
            if !data.is_empty() {
                match plan.framing {
                    Framing::Length(n) => {
                        // Past the promised length hyper writes nothing more, and neither does this.
                        let take = (n - sent).min(data.len() as u64) as usize;
                        put(io, out, data.slice(..take)).await?;
                        sent += take as u64;
                        if sent == n {
                            break;
                        }
                    }
                    Framing::Chunked => {
                        push_hex(out, data.len());
                        out.extend_from_slice(b"\r\n");
                        put(io, out, data).await?;
                        out.extend_from_slice(b"\r\n");
                    }
                    Framing::Close => put(io, out, data).await?,
                }
            }
            if body.is_end_stream() {
                break;
            }
        }
        match plan.framing {
            Framing::Length(n) if sent < n => {
                debug!(sent, promised = n, "the answer's body ended short; closing");
                let _ = flush(io, out).await;
                return Err(Broken);
            }
            Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
            _ => {}
        }
    }
    drop(body);
    flush(io, out).await?;
    Ok(!plan.last)
}

/// Adds `data` to what waits in `out`, or writes both when it is large.
async fn put<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut Vec<u8>,
    data: Bytes,
) -> Result<(), Broken> {
    if out.len() + data.len() <= COPY_LIMIT {
        out.extend_from_slice(&data);
        return Ok(());
    }
    flush(io, out).await?;
    io.write_all(&data).await.map_err(|_| Broken)
}

/// Writes what waits in `out`.
async fn flush<S: AsyncWrite + Unpin>(io: &mut S, out: &mut Vec<u8>) -> Result<(), Broken> {
    if !out.is_empty() {
        io.write_all(out).await.map_err(|_| Broken)?;
        out.clear();
    }
    io.flush().await.map_err(|_| Broken)
}

/// Appends a chunk size in hex, as hyper writes it (upper case).
fn push_hex(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789ABCDEF"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}
