//! An HTTP/1.1 exchange for a request without a body, driven inside the request's own task.
//!
//! Most requests through the proxies carry no body (GET, HEAD, a DELETE…). For those, hyper's
//! client connection was a second task, with a channel, a oneshot and a `want` signal between it
//! and the handler: about 15 000 of the 39 000 instructions a node hop cost
//! (`docs/benchmarks.md`, issue 18). Here the handler writes the request head to a kept TCP
//! connection itself and reads the answer's head, and [`RawBody`] reads the rest from the socket
//! as the client takes it: one task, no channel. Requests with a body, and upgrades, still go
//! through hyper's client ([`super::upstream`]), which sends a body up while the answer comes
//! down.
//!
//! What it carries of HTTP/1.1 (RFC 9112):
//! - bodies framed by `Content-Length`, by `chunked` (extensions ignored, trailers passed on) or
//!   by the connection's close; none for HEAD, 1xx, 204 and 304;
//! - interim 1xx answers (100, 103) are skipped, as hyper's client does; a 101 to a request that
//!   asked for no upgrade is an error;
//! - `Connection: close`, an HTTP/1.0 answer without `keep-alive`, a close-delimited body, or
//!   bytes past the end of the answer end the connection's reuse;
//! - `Transfer-Encoding` beside `Content-Length` (a smuggling shape, RFC 9112 §6.3): the length
//!   is dropped, the encoding wins, and the connection is not reused; differing lengths, a
//!   malformed head or chunk, a head over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] fields are errors
//!   (the caller answers 502).
//!
//! A kept connection the upstream closed while it idled is noticed before use when the reactor
//! saw it readable; otherwise the write fails or the answer is an immediate end of stream, and an
//! idempotent request is sent again on another connection (RFC 9110 §9.2.2), as nginx does.

use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::BoxError;
use super::headers::{self, FieldSink};
use super::raw_fields::{self, RawFields};
use super::spare_maps;
use super::upstream::Pool;

/// The largest answer head (and trailer section) accepted, in bytes. nginx's default is 4 KiB;
/// hyper's client allowed about 400 KiB, more than any app's cookies need.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The most header fields an answer head may carry (hyper's default).
pub(crate) const MAX_HEADERS: usize = 100;
/// The longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;

/// A connection to an upstream, with the bytes read past the last message (none when idle) and
/// a buffer the request heads are written from.
pub(crate) struct Conn {
    io: TcpStream,
    buf: BytesMut,
    out: Vec<u8>,
}

impl Conn {
    pub(crate) fn new(io: TcpStream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
        }
    }

    /// Whether an idle connection can carry a request: the upstream has neither closed it nor
    /// sent anything unasked. No system call unless the reactor saw the socket turn readable.
    pub(crate) fn is_usable(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

#[cfg(test)]
impl Conn {
    /// Waits until the reactor has seen the socket turn readable (its peer closed it, say).
    pub(crate) async fn readable(&self) {
        self.io.readable().await.expect("readiness");
    }
}

/// Why an upstream's answer could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AnswerError {
    #[error("the upstream closed the connection before its answer's head was complete")]
    ClosedBeforeHead,
    #[error(
        "the upstream closed the connection after an interim (1xx) answer, before the final one"
    )]
    ClosedAfterInterim,
    #[error("the upstream closed the connection before the end of its answer's body")]
    ClosedInBody,
    #[error("the upstream's answer head is over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the upstream's answer has over {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("the upstream's answer is not valid HTTP/1.1 ({0})")]
    Malformed(&'static str),
    #[error("the upstream's chunked body is malformed ({0})")]
    BadChunk(&'static str),
    #[error("reading the upstream's answer failed: {0}")]
    Io(#[from] std::io::Error),
}

/// How an exchange failed.
pub(crate) enum Failed {
    /// No connection could be made, or the request could not be written on a new one: nothing
    /// reached the app, so the request may go again (elsewhere).
    Connect(std::io::Error),
    /// The upstream answered 101 to a request that asked for no upgrade.
    UnexpectedUpgrade,
    /// The request was sent and the answer failed.
    Upstream(AnswerError),
}

/// The head of the upstream's answer and the body to stream after it.
pub(crate) struct Answer {
    pub(crate) head: http::response::Parts,
    pub(crate) body: RawBody,
    /// Whether the head has hop-by-hop fields to strip before it goes to the client.
    pub(crate) hop_by_hop: bool,
    /// A plain answer's fields, unparsed (then `head` has an empty map); see [`raw_fields`].
    pub(crate) fields: Option<RawFields>,
}

/// RFC 9110 §9.2.2: the methods a client may repeat with the same effect.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Sends a request without a body to `upstream` on this thread's kept connections (or a new one)
/// and reads the answer's head. `target` is the origin-form path and query; `fields` writes the
/// header fields (already rewritten for the hop), again for each connection tried. With `raw`
/// (the answer fields the caller reads), a plain answer's fields stay unparsed
/// ([`Answer::fields`]).
pub(crate) async fn exchange(
    pool: &Arc<Pool>,
    upstream: SocketAddr,
    method: &Method,
    target: &str,
    fields: &impl Fn(&mut HeadBytes<'_>),
    raw: Option<&[&str]>,
) -> Result<Answer, Failed> {
    let head_only = *method == Method::HEAD;
    loop {
        let (mut conn, reused) = match pool.checkout_conn(upstream) {
            Some(conn) => (conn, true),
            // Boxed: connecting is the rare path, and its future would otherwise make every
            // exchange's future larger.
            None => match Box::pin(pool.connect_tcp(upstream)).await {
                Ok(io) => (Conn::new(io), false),
                Err(e) => return Err(Failed::Connect(e)),
            },
        };
        encode_head(&mut conn.out, method, target, fields);
        if let Err(e) = conn.io.write_all(&conn.out).await {
            if reused {
                // A kept connection the upstream had closed: it never read this request.
                continue;
            }
            return Err(Failed::Connect(e));
        }
        let mut head = None;
        match read_head(&mut conn, head_only, raw, &mut head).await {
            Ok(()) => {
                let Some(Head {
                    parts,
                    framing,
                    reusable,
                    hop_by_hop,
                    fields,
                }) = head.take()
                else {
                    // `read_head` returns `Ok` only with the head in its slot.
                    return Err(Failed::Upstream(AnswerError::Malformed("no answer head")));
                };
                if parts.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(Failed::UnexpectedUpgrade);
                }
                let body = RawBody {
                    conn: Some(conn),
                    state: framing,
                    reusable,
                    home: Some((pool.clone(), upstream)),
                };
                return Ok(Answer {
                    head: parts,
                    body,
                    hop_by_hop,
                    fields,
                });
            }
            // The upstream closed a kept connection as the request went out. An idempotent
            // request goes again; anything else may have been acted on.
            Err(AnswerError::ClosedBeforeHead) if reused && is_idempotent(method) => continue,
            Err(e) => return Err(Failed::Upstream(e)),
        }
    }
}

/// A request head's header fields, written as bytes as they come (see [`FieldSink`]).
pub(crate) struct HeadBytes<'a> {
    out: &'a mut Vec<u8>,
    content_length: bool,
}

impl FieldSink for HeadBytes<'_> {
    fn field(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.content_length |= *name == header::CONTENT_LENGTH;
        self.out.extend_from_slice(name.as_str().as_bytes());
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(value.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn text_field(&mut self, name: &HeaderName, value: &str) {
        if headers::is_valid_text_value(value) {
            self.out.extend_from_slice(name.as_str().as_bytes());
            self.out.extend_from_slice(b": ");
            self.out.extend_from_slice(value.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
    }

    fn joined_field(&mut self, name: &HeaderName, parts: &[&[u8]]) {
        if parts.iter().all(|p| headers::is_valid_value(p)) {
            self.content_length |= *name == header::CONTENT_LENGTH;
            self.out.extend_from_slice(name.as_str().as_bytes());
            self.out.extend_from_slice(b": ");
            for part in parts {
                self.out.extend_from_slice(part);
            }
            self.out.extend_from_slice(b"\r\n");
        }
    }
}

/// The request line and header fields, into `out`. A POST, PUT or PATCH without a body says so
/// with `content-length: 0`, as hyper's client did.
fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    fields: &impl Fn(&mut HeadBytes<'_>),
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut head = HeadBytes {
        out: &mut *out,
        content_length: false,
    };
    fields(&mut head);
    let content_length = head.content_length;
    if matches!(*method, Method::POST | Method::PUT | Method::PATCH) && !content_length {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// What httparse found wrong, in words.
fn describe(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status line",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "not an HTTP/1.x answer",
    }
}

/// A final answer's head, how its body is framed, and whether the connection may carry another
/// exchange after it.
struct Head {
    parts: http::response::Parts,
    framing: State,
    reusable: bool,
    /// Whether the head has a hop-by-hop field (else there is nothing to strip for the client).
    hop_by_hop: bool,
    /// A plain answer's fields, unparsed (`parts` then has an empty map).
    fields: Option<RawFields>,
}

/// What an answer head's fields include, as far as framing and reuse care.
#[derive(Default)]
struct Seen<'a> {
    hop_by_hop: bool,
    transfer_encoding: bool,
    connection: bool,
    /// How many `Content-Length` fields, and the first one's value: the usual single field is
    /// then read without a lookup.
    content_lengths: usize,
    first_length: &'a [u8],
}

/// Reads until a final (non-1xx, or 101) answer head is complete, and puts it in `slot` (a
/// head returned was moved through each caller's future on its way: four copies an answer).
async fn read_head(
    conn: &mut Conn,
    head_only: bool,
    raw: Option<&[&str]>,
    slot: &mut Option<Head>,
) -> Result<(), AnswerError> {
    // After an interim answer the upstream has read the request: a close is no longer one
    // that a retry may paper over.
    let mut interim = false;
    loop {
        if !conn.buf.is_empty() {
            if parse_head_into(&mut conn.buf, head_only, raw, slot)? {
                let informational = slot.as_ref().is_some_and(|head| {
                    head.parts.status.is_informational()
                        && head.parts.status != StatusCode::SWITCHING_PROTOCOLS
                });
                if !informational {
                    return Ok(());
                }
                *slot = None;
                interim = true;
                continue;
            }
            if conn.buf.len() >= MAX_HEAD {
                return Err(AnswerError::HeadTooLarge);
            }
        }
        conn.buf.reserve(READ_CHUNK);
        if conn.io.read_buf(&mut conn.buf).await? == 0 {
            return Err(if interim {
                AnswerError::ClosedAfterInterim
            } else {
                AnswerError::ClosedBeforeHead
            });
        }
    }
}

/// [`parse_head_into`], returning the head.
#[cfg(test)]
fn parse_head(
    buf: &mut BytesMut,
    head_only: bool,
    raw: Option<&[&str]>,
) -> Result<Option<Head>, AnswerError> {
    let mut slot = None;
    parse_head_into(buf, head_only, raw, &mut slot)?;
    Ok(slot)
}

/// Parses one answer head off the front of `buf` into `slot`, or returns false when more bytes
/// are needed. With `raw`, a plain answer's fields are kept unparsed (see
/// [`raw_fields::plain`]).
///
/// Header values share the bytes read (no copy): the buffer is frozen, values are sliced from
/// it, and what follows the head goes back into `buf`.
fn parse_head_into(
    buf: &mut BytesMut,
    head_only: bool,
    raw: Option<&[&str]>,
    slot: &mut Option<Head>,
) -> Result<bool, AnswerError> {
    let read = buf.split().freeze();
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        &read,
        &mut slots,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            // Nothing consumed: put the bytes back (shared, not copied) for the next read.
            *buf = BytesMut::from(read);
            return Ok(false);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(AnswerError::TooManyHeaders),
        Err(e) => return Err(AnswerError::Malformed(describe(e))),
    };
    let status = response
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(AnswerError::Malformed("invalid status code"))?;
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let plain = match raw {
        Some(reads) if !head_only && has_plain_status(status) => {
            raw_fields::plain(&read, len, response.headers, reads)
        }
        _ => None,
    };
    if let Some(plain) = plain {
        if read.len() > len {
            buf.extend_from_slice(&read[len..]);
        }
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = status;
        parts.version = version;
        *slot = Some(Head {
            parts,
            framing: State::Length(plain.length()),
            // An HTTP/1.0 answer keeps the connection only with `Connection: keep-alive`,
            // which a plain answer does not carry.
            reusable: version == Version::HTTP_11,
            hop_by_hop: false,
            fields: Some(plain),
        });
        return Ok(true);
    }
    let mut map = spare_maps::take(response.headers.len());
    // Noted on the way, so the usual answer (none of these) costs no lookup after.
    let mut seen = Seen::default();
    for field in response.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| AnswerError::Malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(read.slice_ref(field.value))
            .map_err(|_| AnswerError::Malformed("invalid header value"))?;
        if headers::is_fixed_hop_by_hop(&name) {
            seen.hop_by_hop = true;
            seen.transfer_encoding |= name == header::TRANSFER_ENCODING;
            seen.connection |= name == header::CONNECTION;
        }
        if name == header::CONTENT_LENGTH {
            if seen.content_lengths == 0 {
                seen.first_length = field.value;
            }
            seen.content_lengths += 1;
        }
        map.append(name, value);
    }
    if read.len() > len {
        buf.extend_from_slice(&read[len..]);
    }
    let (framing, mut reusable) = framing(head_only, status, &mut map, &seen)?;
    // Looked up only when there is one: most answers carry no `Connection`.
    let has =
        |token| seen.connection && headers::has_token(&map.get_all(header::CONNECTION), token);
    reusable &= match version {
        Version::HTTP_10 => has("keep-alive"),
        _ => !has("close"),
    };
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    parts.headers = map;
    *slot = Some(Head {
        parts,
        framing,
        reusable,
        hop_by_hop: seen.hop_by_hop,
        fields: None,
    });
    Ok(true)
}

/// Whether an answer with `status` may be plain: one with a body (not 1xx, 204 or 304).
fn has_plain_status(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// How the body after `status` is framed (RFC 9112 §6.3), and whether the framing leaves the
/// connection reusable. May rewrite `headers`: a length beside a transfer coding is dropped, a
/// repeated length becomes one.
fn framing(
    head_only: bool,
    status: StatusCode,
    headers: &mut HeaderMap,
    seen: &Seen,
) -> Result<(State, bool), AnswerError> {
    if head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((State::Length(0), true));
    }
    if seen.transfer_encoding {
        let chunked_last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        // A length beside a coding is a smuggling shape: the coding wins and the connection
        // is not trusted with another exchange.
        let with_length =
            seen.content_lengths > 0 && headers.remove(header::CONTENT_LENGTH).is_some();
        return Ok(if chunked_last {
            (State::ChunkSize, !with_length)
        } else {
            (State::Close, false)
        });
    }
    let mut length: Option<u64> = None;
    let mut fields = 0;
    let mut add = |value: &[u8]| -> Result<(), AnswerError> {
        for part in value.split(|&b| b == b',') {
            let part = part.trim_ascii();
            fields += 1;
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(AnswerError::Malformed("invalid content-length"));
            }
            let n = std::str::from_utf8(part)
                .ok()
                .and_then(|p| p.parse::<u64>().ok())
                .ok_or(AnswerError::Malformed("invalid content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(AnswerError::Malformed("differing content-lengths"));
            }
            length = Some(n);
        }
        Ok(())
    };
    match seen.content_lengths {
        0 => return Ok((State::Close, false)),
        1 => add(seen.first_length)?,
        _ => {
            for value in headers.get_all(header::CONTENT_LENGTH) {
                add(value.as_bytes())?;
            }
        }
    }
    match length {
        Some(n) => {
            if fields > 1 {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            Ok((State::Length(n), true))
        }
        None => Ok((State::Close, false)),
    }
}

/// Where a body's reading is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// This many bytes left of a `Content-Length` body.
    Length(u64),
    /// Before a chunk-size line.
    ChunkSize,
    /// This many bytes left of the current chunk.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// After the last chunk: trailer fields or the final CRLF.
    Trailers,
    /// Everything until the upstream closes.
    Close,
    /// Over.
    Done,
}

/// What the bytes buffered so far give.
enum Step {
    Frame(Frame<Bytes>),
    End,
    NeedMore,
}

/// Advances `state` over what `buf` holds.
fn step(state: &mut State, buf: &mut BytesMut) -> Result<Step, AnswerError> {
    loop {
        match *state {
            State::Done | State::Length(0) => {
                *state = State::Done;
                return Ok(Step::End);
            }
            State::Length(left) | State::ChunkData(left) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let take = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
                let rest = left - take as u64;
                *state = match *state {
                    State::Length(_) if rest == 0 => State::Done,
                    State::Length(_) => State::Length(rest),
                    _ if rest == 0 => State::ChunkEnd,
                    _ => State::ChunkData(rest),
                };
                return Ok(Step::Frame(Frame::data(buf.split_to(take).freeze())));
            }
            State::Close => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                return Ok(Step::Frame(Frame::data(buf.split().freeze())));
            }
            State::ChunkSize => {
                if buf.first().is_some_and(|b| !b.is_ascii_hexdigit()) {
                    return Err(AnswerError::BadChunk("the chunk size is not hexadecimal"));
                }
                match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        *state = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                        return Err(AnswerError::BadChunk("the chunk-size line is too long"));
                    }
                    Ok(httparse::Status::Partial) => return Ok(Step::NeedMore),
                    Err(_) => return Err(AnswerError::BadChunk("invalid chunk size")),
                }
            }
            State::ChunkEnd => {
                if buf.len() < 2 {
                    return Ok(Step::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(AnswerError::BadChunk("no CRLF after the chunk's data"));
                }
                buf.advance(2);
                *state = State::ChunkSize;
            }
            State::Trailers => {
                if buf.len() < 2 {
                    return Ok(Step::NeedMore);
                }
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    *state = State::Done;
                    return Ok(Step::End);
                }
                return match parse_trailers(buf)? {
                    Some(trailers) => {
                        *state = State::Done;
                        Ok(Step::Frame(Frame::trailers(trailers)))
                    }
                    None if buf.len() > MAX_HEAD => Err(AnswerError::HeadTooLarge),
                    None => Ok(Step::NeedMore),
                };
            }
        }
    }
}

/// The trailer section at the front of `buf` (consumed), or `None` when incomplete.
fn parse_trailers(buf: &mut BytesMut) -> Result<Option<HeaderMap>, AnswerError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (used, fields) = match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(done)) => done,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(AnswerError::TooManyHeaders),
        Err(e) => return Err(AnswerError::Malformed(describe(e))),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| AnswerError::Malformed("invalid trailer name"))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| AnswerError::Malformed("invalid trailer value"))?;
        map.append(name, value);
    }
    buf.advance(used);
    Ok(Some(map))
}

/// An answer's body, read from the upstream connection as it is polled. At its end the
/// connection goes back to the pool it came from, if the answer allows reuse and nothing follows
/// it; dropped early, the connection is closed (its unread rest would be the next answer).
pub(crate) struct RawBody {
    conn: Option<Conn>,
    state: State,
    reusable: bool,
    home: Option<(Arc<Pool>, SocketAddr)>,
}

impl RawBody {
    fn finish(&mut self) {
        self.state = State::Done;
        let Some(conn) = self.conn.take() else { return };
        if self.reusable && conn.buf.is_empty() {
            if let Some((pool, upstream)) = self.home.take() {
                pool.give_back_conn(upstream, conn);
            }
        }
    }

    fn fail(&mut self, e: AnswerError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state = State::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e.into())))
    }
}

impl Drop for RawBody {
    fn drop(&mut self) {
        // hyper drops a body that says it has ended (an empty one, say) without polling it.
        if self.is_end_stream() {
            self.finish();
        }
    }
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                this.state = State::Done;
                return Poll::Ready(None);
            };
            match step(&mut this.state, &mut conn.buf) {
                Ok(Step::Frame(frame)) => {
                    if this.state == State::Done {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Step::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
                Err(e) => return this.fail(e),
            }
            conn.buf.reserve(READ_CHUNK);
            let read = loop {
                if let Err(e) = ready!(conn.io.poll_read_ready(cx)) {
                    break Err(e);
                }
                match conn.io.try_read_buf(&mut conn.buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    other => break other,
                }
            };
            match read {
                Ok(0) if this.state == State::Close => {
                    // The end of a close-delimited body; the connection goes with it.
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(AnswerError::ClosedInBody),
                Ok(_) => {}
                Err(e) => return this.fail(AnswerError::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<Head>, AnswerError> {
        let mut buf = BytesMut::from(text);
        parse_head(&mut buf, false, None)
    }

    fn body_of(
        state: State,
        wire: &str,
    ) -> Result<(Vec<u8>, Option<HeaderMap>, State), AnswerError> {
        let mut state = state;
        let mut buf = BytesMut::from(wire);
        let (mut data, mut trailers) = (Vec::new(), None);
        loop {
            match step(&mut state, &mut buf)? {
                Step::Frame(f) => match f.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Step::End | Step::NeedMore => return Ok((data, trailers, state)),
            }
        }
    }

    #[test]
    fn a_head_is_parsed_whole_with_what_follows_kept() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\r\nhel",
        );
        let head = parse_head(&mut buf, false, None)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.parts.status, StatusCode::OK);
        assert_eq!(
            head.parts
                .headers
                .get_all(header::SET_COOKIE)
                .iter()
                .count(),
            2
        );
        assert_eq!(head.framing, State::Length(5));
        assert!(head.reusable);
        assert_eq!(&buf[..], b"hel");
    }

    #[test]
    fn a_plain_answer_keeps_its_fields_unparsed_when_asked() {
        let wire = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\n\r\nhel";
        let mut buf = BytesMut::from(wire);
        let head = parse_head(&mut buf, false, Some(&[]))
            .expect("valid")
            .expect("complete");
        assert!(
            head.parts.headers.is_empty(),
            "no map: {:?}",
            head.parts.headers
        );
        let fields = head.fields.expect("raw fields");
        assert_eq!(fields.bytes(), b"Content-Length: 5\r\nSet-Cookie: a=1\r\n");
        assert_eq!(head.framing, State::Length(5));
        assert!(head.reusable);
        assert_eq!(&buf[..], b"hel");

        // The same answer to a HEAD, a 204 or 304, with a field the caller reads, or from an
        // HTTP/1.0 server keeping the connection, goes through the map.
        for (head_only, reads, wire) in [
            (true, &[][..], wire),
            (false, &["set-cookie"][..], wire),
            (
                false,
                &[][..],
                "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
            ),
            (
                false,
                &[][..],
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            ),
            (
                false,
                &[][..],
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\n",
            ),
        ] {
            let mut buf = BytesMut::from(wire);
            let head = parse_head(&mut buf, head_only, Some(reads))
                .expect("valid")
                .expect("complete");
            assert!(head.fields.is_none(), "{wire:?}");
            assert!(!head.parts.headers.is_empty(), "{wire:?}");
        }
        // A plain HTTP/1.0 answer is plain, and its connection is not kept.
        let mut buf = BytesMut::from("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        let head = parse_head(&mut buf, false, Some(&[]))
            .expect("valid")
            .expect("complete");
        assert!(head.fields.is_some());
        assert!(!head.reusable);
    }

    #[test]
    fn a_partial_head_waits_for_more() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Len");
        assert!(parse_head(&mut buf, false, None).expect("valid").is_none());
        assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\nContent-Len");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing_of = |text: &str| head(text).expect("valid").expect("complete");
        let no_length = framing_of("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(
            (no_length.framing, no_length.reusable),
            (State::Close, false)
        );
        let no_content = framing_of("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n");
        assert_eq!(no_content.framing, State::Length(0));
        let chunked = framing_of("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(
            (chunked.framing, chunked.reusable),
            (State::ChunkSize, true)
        );
        // Both: the coding wins, the length goes, the connection is not reused.
        let both = framing_of(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!((both.framing, both.reusable), (State::ChunkSize, false));
        assert!(!both.parts.headers.contains_key(header::CONTENT_LENGTH));
        let repeated = framing_of("HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\n");
        assert_eq!(repeated.framing, State::Length(4));
        assert_eq!(repeated.parts.headers[header::CONTENT_LENGTH], "4");
        let two_fields =
            framing_of("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length:  4 \r\n\r\n");
        assert_eq!(two_fields.framing, State::Length(4));
        assert_eq!(
            two_fields
                .parts
                .headers
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .count(),
            1
        );
        let closing =
            framing_of("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: Close\r\n\r\n");
        assert!(!closing.reusable);
        let old = framing_of("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
        assert!(!old.reusable);
        let old_kept =
            framing_of("HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n");
        assert!(old_kept.reusable);
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n");
        let for_head = parse_head(&mut buf, true, None)
            .expect("valid")
            .expect("complete");
        assert_eq!(for_head.framing, State::Length(0));
    }

    #[test]
    fn broken_heads_are_errors_that_say_what_was_wrong() {
        for (text, says) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                "differing",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
                "content-length",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
                "content-length",
            ),
            ("HTTP/1.1 2000 OK\r\n\r\n", "status"),
            ("HTTX/1.1 200 OK\r\n\r\n", "not an HTTP/1.x"),
        ] {
            let error = head(text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains(says), "{text:?}: {error:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let error = head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).err();
        assert!(matches!(error, Some(AnswerError::TooManyHeaders)));
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let (data, trailers, state) = body_of(
            State::ChunkSize,
            "5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n",
        )
        .expect("valid");
        assert_eq!(data, b"hello world");
        assert_eq!(trailers.expect("trailers")["x-checksum"], "42");
        assert_eq!(state, State::Done);
        let (data, trailers, state) =
            body_of(State::ChunkSize, "3\r\nabc\r\n0\r\n\r\n").expect("valid");
        assert_eq!(
            (data.as_slice(), trailers.is_none(), state),
            (&b"abc"[..], true, State::Done)
        );
        // Cut anywhere, it waits for more rather than failing.
        let (data, _, state) = body_of(State::ChunkSize, "3\r\nab").expect("valid");
        assert_eq!((data.as_slice(), state), (&b"ab"[..], State::ChunkData(1)));
    }

    #[test]
    fn broken_chunks_are_errors() {
        for wire in ["\r\n", "zz\r\n", "3\r\nabcX\r\n", "-1\r\n"] {
            assert!(
                matches!(
                    body_of(State::ChunkSize, wire),
                    Err(AnswerError::BadChunk(_))
                ),
                "{wire:?}"
            );
        }
        let long = format!("1;{}", "e".repeat(MAX_CHUNK_LINE));
        assert!(body_of(State::ChunkSize, &long).is_err());
    }

    #[test]
    fn a_length_body_ends_exactly_at_its_length() {
        let (data, _, state) = body_of(State::Length(3), "abcNEXT").expect("valid");
        assert_eq!((data.as_slice(), state), (&b"abc"[..], State::Done));
    }

    #[test]
    fn the_head_carries_exactly_the_fields_the_map_would() {
        use crate::proxy::ForwardContext;
        let mut src = HeaderMap::new();
        for (name, value) in [
            ("host", "app.example:8080"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "dropped"),
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=forged"),
            ("accept", "text/html"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("te", "trailers"),
        ] {
            src.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let peers = [
            SocketAddr::from(([192, 0, 2, 7], 4000)),
            SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 7], 4000)),
        ];
        for (trusted, peer) in [false, true]
            .into_iter()
            .flat_map(|t| peers.map(|p| (t, p)))
        {
            let mut ctx = ForwardContext::new(peer, http::uri::Scheme::HTTPS, "req-1");
            ctx.trust_forwarded = trusted;
            let map = headers::request_headers(&src, &ctx, false);
            let mut out = Vec::new();
            encode_head(&mut out, &Method::GET, "/", &|head: &mut HeadBytes<'_>| {
                headers::write_request_fields(&src, &ctx, false, head)
            });
            let mut slots = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut slots);
            assert!(request.parse(&out).expect("a valid head").is_complete());
            let written: Vec<(String, Vec<u8>)> = request
                .headers
                .iter()
                .map(|h| (h.name.to_owned(), h.value.to_vec()))
                .collect();
            let expected: Vec<(String, Vec<u8>)> = map
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect();
            assert_eq!(written, expected, "trusted: {trusted}, peer {peer}");
            assert!(written.iter().all(|(n, _)| n != "x-hop" && n != "te"));
            if !trusted {
                let forwarded = written.iter().find(|(n, _)| n == "forwarded");
                let by = if peer.is_ipv6() {
                    "for=\"[2001:db8::7]\""
                } else {
                    "for=192.0.2.7"
                };
                let ours = format!("{by};proto=https;host=\"app.example:8080\"");
                assert_eq!(forwarded.map(|(_, v)| &v[..]), Some(ours.as_bytes()));
            }
        }
    }

    #[test]
    fn the_request_head_says_what_a_bodiless_post_carries() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("app.example"));
        fn fields_of(headers: &HeaderMap) -> impl Fn(&mut HeadBytes<'_>) + '_ {
            move |head| {
                for (name, value) in headers {
                    head.field(name, value);
                }
            }
        }
        let mut out = Vec::new();
        encode_head(&mut out, &Method::POST, "/count?x=1", &fields_of(&headers));
        assert_eq!(
            out,
            b"POST /count?x=1 HTTP/1.1\r\nhost: app.example\r\ncontent-length: 0\r\n\r\n"
        );
        encode_head(&mut out, &Method::GET, "/", &fields_of(&headers));
        assert_eq!(out, b"GET / HTTP/1.1\r\nhost: app.example\r\n\r\n");
        // A length the client sent is not doubled.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        encode_head(&mut out, &Method::PUT, "/", &fields_of(&headers));
        assert_eq!(
            out,
            b"PUT / HTTP/1.1\r\nhost: app.example\r\ncontent-length: 0\r\n\r\n"
        );
    }
}
