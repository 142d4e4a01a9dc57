//! Writing an answer's head and framing its body, by hyper's server rules (its
//! `role::Server::encode` and `Conn::enforce_version`) for the requests the lean loop serves:
//! HTTP/1.1, never CONNECT, never asking for trailers.

use std::iter::Peekable;

use http::{header, response::Parts, HeaderName, HeaderValue, StatusCode, Version};

use super::date;
use crate::proxy::raw_fields::RawFields;

/// How the body after a head is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// Exactly this many bytes (0: no body at all, as for HEAD, 204 and 304).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (a body of unknown length where chunks can't be used).
    Close,
}

/// What the head promised: the body's framing, and whether the connection ends after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Plan {
    pub(super) framing: Framing,
    pub(super) last: bool,
}

/// What the body says of its length before it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyLength {
    /// It is already over (hyper: `is_end_stream`).
    None,
    Known(u64),
    Unknown,
}

/// An answer head hyper would refuse to write (conflicting or invalid lengths); the connection
/// is closed without an answer, as hyper closes it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct InvalidHead;

/// Whether a body may be chunked (and so carry any body at all, for a non-CONNECT request).
fn can_chunk(head_method: bool, status: StatusCode) -> bool {
    !(head_method
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

fn can_have_content_length(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// Writes the head of `parts` into `out` and says how to frame the body. `keep_alive` is false
/// when the request asked to close or the server is stopping. `raw` fields (a forwarded plain
/// answer's, see `raw_fields`) follow the map's, and their `Content-Length` frames the body.
pub(super) fn encode(
    parts: &Parts,
    raw: Option<&RawFields>,
    body: BodyLength,
    head_method: bool,
    keep_alive: bool,
    out: &mut Vec<u8>,
) -> Result<Plan, InvalidHead> {
    let start = out.len();
    if parts.status.is_informational() && parts.status != StatusCode::SWITCHING_PROTOCOLS {
        // hyper can't send a 1xx as the answer: it sends a bare 500 and closes.
        out.extend_from_slice(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\ndate: ");
        date::extend(out);
        out.extend_from_slice(b"\r\n\r\n");
        return Ok(Plan {
            framing: Framing::Length(0),
            last: true,
        });
    }
    let mut last = !keep_alive || parts.status == StatusCode::SWITCHING_PROTOCOLS;

    let http10 = parts.version == Version::HTTP_10;
    if parts.version == Version::HTTP_11
        && parts.status == StatusCode::OK
        && parts.extensions.get::<hyper::ext::ReasonPhrase>().is_none()
    {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        out.extend_from_slice(parts.status.as_str().as_bytes());
        out.push(b' ');
        match parts.extensions.get::<hyper::ext::ReasonPhrase>() {
            Some(reason) => out.extend_from_slice(reason.as_bytes()),
            None => out.extend_from_slice(
                parts
                    .status
                    .canonical_reason()
                    .unwrap_or("<none>")
                    .as_bytes(),
            ),
        }
        out.extend_from_slice(b"\r\n");
    }

    let chunkable = !http10 && can_chunk(head_method, parts.status);
    let mut framing = Framing::Length(0);
    // hyper's `wrote_len`: a length or a transfer coding has been written.
    let mut wrote_len = false;
    let mut wrote_date = false;
    let mut wrote_connection = false;

    // Map order keeps a field's values together, as hyper's `drain` does.
    let mut fields = parts.headers.iter().peekable();
    while let Some((name, first)) = fields.next() {
        let mut values = Values {
            name,
            first: Some(first),
            rest: &mut fields,
        };
        match *name {
            header::CONTENT_LENGTH => {
                if wrote_len {
                    return invalid(out, start);
                }
                match body {
                    BodyLength::Known(known) => {
                        // hyper trusts the body's own length and writes the field's first value.
                        if let Some(value) = values.next() {
                            line(out, b"content-length", value.as_bytes());
                        }
                        framing = Framing::Length(known);
                        wrote_len = true;
                    }
                    BodyLength::Unknown => {
                        let mut first = None;
                        for value in values {
                            match (parse_length(value.as_bytes()), first) {
                                (None, _) => return invalid(out, start),
                                (Some(len), Some((prev, _))) if len != prev => {
                                    return invalid(out, start)
                                }
                                (Some(len), None) => first = Some((len, value)),
                                (Some(_), Some(_)) => {}
                            }
                        }
                        if let Some((len, value)) = first {
                            line(out, b"content-length", value.as_bytes());
                            framing = Framing::Length(len);
                            wrote_len = true;
                        }
                    }
                    // A HEAD answer keeps the length a GET would have had.
                    BodyLength::None if head_method => {
                        for value in values {
                            line(out, b"content-length", value.as_bytes());
                        }
                        wrote_len = true;
                    }
                    // No body: the implicit `content-length: 0` below says so.
                    BodyLength::None => {}
                }
            }
            header::TRANSFER_ENCODING => {
                if wrote_len {
                    return invalid(out, start);
                }
                if !chunkable {
                    continue;
                }
                let mut chunked_last = false;
                let mut first = true;
                for value in values {
                    chunked_last = is_chunked(value.as_bytes());
                    if first {
                        out.extend_from_slice(b"transfer-encoding: ");
                        first = false;
                    } else {
                        out.extend_from_slice(b", ");
                    }
                    out.extend_from_slice(value.as_bytes());
                }
                // `chunked` must be the last coding; hyper adds it.
                out.extend_from_slice(if chunked_last {
                    b"\r\n"
                } else {
                    b", chunked\r\n"
                });
                framing = Framing::Chunked;
                wrote_len = true;
            }
            header::CONNECTION => {
                let mut close = false;
                let mut first = true;
                for value in values {
                    close |= has_token(value.as_bytes(), b"close");
                    out.extend_from_slice(if first { b"connection: " } else { b", " });
                    first = false;
                    out.extend_from_slice(value.as_bytes());
                }
                if !keep_alive && !close {
                    // hyper says why the connection ends.
                    out.extend_from_slice(b", close");
                }
                out.extend_from_slice(b"\r\n");
                last |= close;
                wrote_connection = true;
            }
            header::TRAILER => {
                if !chunkable {
                    continue;
                }
                let mut first = true;
                for value in values {
                    out.extend_from_slice(if first { b"trailer: " } else { b", " });
                    first = false;
                    out.extend_from_slice(value.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
            _ => {
                wrote_date |= *name == header::DATE;
                for value in values {
                    line(out, name.as_str().as_bytes(), value.as_bytes());
                }
            }
        }
    }
    if let Some(raw) = raw {
        // Only lengths in the map could conflict: the raw lines carry no other framing field.
        if wrote_len {
            return invalid(out, start);
        }
        out.extend_from_slice(raw.bytes());
        framing = Framing::Length(raw.length());
        wrote_len = true;
        wrote_date |= raw.has_date();
    }
    if !keep_alive && !wrote_connection {
        out.extend_from_slice(b"connection: close\r\n");
    }

    if !wrote_len {
        framing = match body {
            BodyLength::Unknown if chunkable => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
            BodyLength::Unknown => Framing::Close,
            BodyLength::None | BodyLength::Known(0) => {
                if can_have_content_length(parts.status) && !head_method {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            BodyLength::Known(len) if can_have_content_length(parts.status) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
                out.extend_from_slice(b"\r\n");
                Framing::Length(len)
            }
            BodyLength::Known(_) => Framing::Length(0),
        };
    }
    if !can_chunk(head_method, parts.status) {
        framing = Framing::Length(0);
    }
    last |= framing == Framing::Close;
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        date::extend(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Plan { framing, last })
}

/// Takes back what was written of a head hyper would refuse.
/// The values of one field name, taken from a walk over the whole map (which yields a name's
/// values in a row) instead of a hashed lookup per name. Dropping it skips what was not read,
/// so the walk goes on at the next name.
struct Values<'a, 'w> {
    name: &'a HeaderName,
    first: Option<&'a HeaderValue>,
    rest: &'w mut Peekable<header::Iter<'a, HeaderValue>>,
}

impl<'a> Iterator for Values<'a, '_> {
    type Item = &'a HeaderValue;

    fn next(&mut self) -> Option<&'a HeaderValue> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        let name = self.name;
        self.rest.next_if(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

impl Drop for Values<'_, '_> {
    fn drop(&mut self) {
        for _ in self.by_ref() {}
    }
}

fn invalid(out: &mut Vec<u8>, start: usize) -> Result<Plan, InvalidHead> {
    out.truncate(start);
    Err(InvalidHead)
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// hyper's `content_length_parse` for one value: digits only, or a list of equal ones.
fn parse_length(value: &[u8]) -> Option<u64> {
    let mut result: Option<u64> = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = std::str::from_utf8(part).ok()?.parse::<u64>().ok()?;
        match result {
            Some(prev) if prev != n => return None,
            _ => result = Some(n),
        }
    }
    result
}

/// Whether `chunked` is the last coding of a `Transfer-Encoding` value.
fn is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Whether a comma-separated field value names `token` (any case).
pub(super) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}
