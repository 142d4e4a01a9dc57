//! An upstream answer's header fields passed to the client as they came, without a header map.
//!
//! Why: for the answer nearly every request gets (a status with a body of known length, no
//! hop-by-hop field), parsing each field into a `HeaderMap` and writing the map out again cost
//! about 3 800 of a hop's ~19 000 instructions for a three-field answer; passing the lines on
//! saves ~2 000 of them (`docs/benchmarks.md`, issue 18). Those fields
//! go to the client unchanged anyway, so the proxies' own HTTP/1.1 loop (`h1`) copies their
//! lines from the upstream's head instead: the bytes `httparse` already checked, one slice of
//! the buffer they were read into.
//!
//! Only a plain answer qualifies (see [`plain`]); any other keeps the map and every rule that
//! comes with it (hop-by-hop removal, length fixes, trailers). The map path also serves every
//! request hyper's server answers, since hyper writes only the map: the forwarder asks for raw
//! fields only for requests the lean loop read.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

/// Field lines, `name: value\r\n` each, as the upstream sent them, to be written after the
/// answer's (usually empty) header map. Their one `Content-Length` frames the body.
#[derive(Clone, Debug)]
pub(crate) struct RawFields {
    bytes: Bytes,
    /// One of them is `Date` (else the writer adds one, as for any answer).
    has_date: bool,
    /// The body's length, from their `Content-Length`.
    length: u64,
}

impl RawFields {
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub(crate) fn has_date(&self) -> bool {
        self.has_date
    }

    pub(crate) fn length(&self) -> u64 {
        self.length
    }

    /// Adds the fields to `headers`, for a writer that knows only the map (hyper's). The
    /// forwarder keeps fields unparsed only for requests the lean loop read, so this is a
    /// safeguard; the length stays with the body's size.
    pub(crate) fn append_to(&self, headers: &mut HeaderMap) {
        for (name, value) in self.pairs() {
            if name.eq_ignore_ascii_case(b"content-length") {
                continue;
            }
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name),
                HeaderValue::from_maybe_shared(self.bytes.slice_ref(value)),
            ) {
                headers.append(name, value);
            }
        }
    }

    /// The fields as `(name, value)` pairs.
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.bytes
            .split(|&b| b == b'\n')
            .filter_map(|line| line.strip_suffix(b"\r"))
            .filter_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                Some((&line[..colon], line[colon + 1..].trim_ascii()))
            })
    }
}

/// What a field's name makes of an answer, for [`plain`].
enum Kind {
    ContentLength,
    Date,
    /// A fixed hop-by-hop field (RFC 9110 §7.6.1, as `headers::is_fixed_hop_by_hop`),
    /// `Transfer-Encoding` among them: no plain answer carries one.
    HopByHop,
    Other,
}

/// The name's kind; by length first, as a walk over every name compared would cost more than
/// the rest of [`plain`].
fn kind(name: &str) -> Kind {
    let is = |other: &str| name.eq_ignore_ascii_case(other);
    match name.len() {
        4 if is("date") => Kind::Date,
        14 if is("content-length") => Kind::ContentLength,
        2 if is("te") => Kind::HopByHop,
        7 if is("trailer") || is("upgrade") => Kind::HopByHop,
        10 if is("connection") || is("keep-alive") => Kind::HopByHop,
        16 if is("proxy-connection") => Kind::HopByHop,
        17 if is("transfer-encoding") => Kind::HopByHop,
        18 if is("proxy-authenticate") => Kind::HopByHop,
        19 if is("proxy-authorization") => Kind::HopByHop,
        _ => Kind::Other,
    }
}

/// The fields of the answer head `head[..len]` (parsed by `httparse` into `fields`), when they
/// can go to the client unparsed: exactly one `Content-Length` of plain digits, no hop-by-hop
/// field, none of `reads` (the fields the caller looks at or changes in the answer's map), and
/// every line ending in CRLF. The caller checks the status and method (a HEAD, 1xx, 204 or 304
/// answer is never plain).
pub(crate) fn plain(
    head: &Bytes,
    len: usize,
    fields: &[httparse::Header<'_>],
    reads: &[&str],
) -> Option<RawFields> {
    let offset = |name: &str| (name.as_ptr() as usize).checked_sub(head.as_ptr() as usize);
    let start = offset(fields.first()?.name)?;
    // The lines run from the first field's name to the CRLF before the empty line.
    let end = len.checked_sub(2)?;
    if start >= end || !head[..len].ends_with(b"\r\n\r\n") {
        return None;
    }
    let mut length = None;
    let mut has_date = false;
    for (i, field) in fields.iter().enumerate() {
        match kind(field.name) {
            Kind::ContentLength => {
                let value = field.value;
                if length.is_some() || value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                length = Some(std::str::from_utf8(value).ok()?.parse::<u64>().ok()?);
            }
            Kind::Date => has_date = true,
            Kind::HopByHop => return None,
            Kind::Other => {
                if reads.iter().any(|r| field.name.eq_ignore_ascii_case(r)) {
                    return None;
                }
            }
        }
        // httparse also takes a bare LF as a line's end; those heads keep the map (which
        // writes CRLF), so nothing odd is passed on. A line ends where the next one begins.
        let next = match fields.get(i + 1) {
            Some(next) => offset(next.name)?,
            None => end,
        };
        if next < 2 || head.get(next - 2..next)? != b"\r\n" {
            return None;
        }
    }
    Some(RawFields {
        bytes: head.slice(start..end),
        has_date,
        length: length?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::MaybeUninit;

    /// `plain` on `text`, parsed as `exchange` parses an answer head.
    fn plain_of(text: &str, reads: &[&str]) -> Option<RawFields> {
        let head = Bytes::copy_from_slice(text.as_bytes());
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 16];
        let mut response = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            &head,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!("not a whole head: {other:?}"),
        };
        plain(&head, len, response.headers, reads)
    }

    #[test]
    fn a_plain_answer_passes_its_lines_whole_with_its_length() {
        let p = plain_of(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nContent-Length: 12\r\nX-Odd:  spaced  \r\n\r\nhello, world",
            &[],
        )
        .expect("plain");
        assert_eq!(p.length(), 12);
        assert_eq!(
            p.bytes(),
            b"Content-Type: text/plain\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nContent-Length: 12\r\nX-Odd:  spaced  \r\n"
        );
        assert!(!p.has_date());
        let pairs: Vec<(String, String)> = p
            .pairs()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into(),
                    String::from_utf8_lossy(v).into(),
                )
            })
            .collect();
        assert_eq!(pairs[1], ("Set-Cookie".into(), "a=1".into()));
        assert_eq!(pairs[4], ("X-Odd".into(), "spaced".into()));
        assert_eq!(pairs.len(), 5);
    }

    #[test]
    fn the_fields_go_into_a_map_for_hyper_without_the_length() {
        let p = plain_of(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\nContent-Length: 12\r\n\r\n",
            &[],
        )
        .expect("plain");
        let mut map = HeaderMap::new();
        p.append_to(&mut map);
        assert_eq!(map.len(), 3, "{map:?}");
        assert_eq!(map["content-type"], "text/plain");
        let cookies: Vec<_> = map.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert!(!map.contains_key("content-length"));
    }

    #[test]
    fn a_date_is_noted() {
        let p = plain_of(
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nDATE: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n",
            &[],
        )
        .expect("plain");
        assert!(p.has_date());
        assert_eq!(p.length(), 0);
    }

    #[test]
    fn anything_but_a_plain_answer_keeps_the_map() {
        for (why, head) in [
            ("no length", "HTTP/1.1 200 OK\r\ncontent-type: a\r\n\r\n"),
            ("no field", "HTTP/1.1 200 OK\r\n\r\n"),
            (
                "two lengths",
                "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n",
            ),
            ("a list", "HTTP/1.1 200 OK\r\ncontent-length: 1, 1\r\n\r\n"),
            ("a sign", "HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n"),
            (
                "too long",
                "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
            ),
            (
                "chunked",
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 1\r\n\r\n",
            ),
            (
                "connection",
                "HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 1\r\n\r\n",
            ),
            (
                "keep-alive",
                "HTTP/1.1 200 OK\r\nkeep-alive: timeout=5\r\ncontent-length: 1\r\n\r\n",
            ),
            (
                "trailer",
                "HTTP/1.1 200 OK\r\nTrailer: x\r\ncontent-length: 1\r\n\r\n",
            ),
            (
                "upgrade",
                "HTTP/1.1 200 OK\r\nUpgrade: h2c\r\ncontent-length: 1\r\n\r\n",
            ),
            (
                "bare LF",
                "HTTP/1.1 200 OK\r\ncontent-type: a\ncontent-length: 1\r\n\r\n",
            ),
            (
                "bare LF heads",
                "HTTP/1.1 200 OK\ncontent-type: a\ncontent-length: 1\n\n",
            ),
        ] {
            assert!(plain_of(head, &[]).is_none(), "{why}: {head:?}");
        }
    }

    #[test]
    fn a_field_the_caller_reads_keeps_the_map() {
        let head = "HTTP/1.1 200 OK\r\nX-Shadow-Lease-Holder: n1\r\ncontent-length: 0\r\n\r\n";
        assert!(plain_of(head, &["x-shadow-lease-holder"]).is_none());
        assert!(plain_of(head, &["strict-transport-security"]).is_some());
    }
}
