//! Reading a request head for the lean loop: the requests it serves itself, and the rest left
//! for hyper untouched.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request, Uri, Version};

use super::response::has_token;
use crate::proxy::body::RequestBody;
use crate::proxy::spare_maps;

/// The most header fields a head may carry here (hyper's default, which answers 431 past it).
const MAX_HEADERS: usize = 100;

/// What the buffered bytes hold.
pub(super) enum Parsed {
    /// A whole head of a request this loop serves, now in the caller's slot.
    Request(Head),
    /// The head is not complete yet.
    Partial,
    /// Anything else (a body, an upgrade, `Expect`, HTTP/1.0, HTTP/2's preface, a malformed
    /// head): hyper's server takes the connection from these bytes on, with its own answers.
    Other,
}

/// What the answer to a request the loop serves must know of its head.
#[derive(Clone, Copy)]
pub(super) struct Head {
    /// The client asked to close after this exchange (`Connection: close`).
    pub(super) close: bool,
    /// The answer has no body (HEAD).
    pub(super) head_method: bool,
}

/// Byte ranges of one field in the head (a connection keeps a list of them to reuse).
#[derive(Clone, Copy)]
pub(super) struct Field {
    name: (usize, usize),
    value: (usize, usize),
}

/// Parses the head at the start of `buf`. A [`Parsed::Request`] takes its bytes out of `buf`
/// (what follows, a pipelined request, stays) and puts the request in `slot`; otherwise `buf`
/// is left as it was. `fields` is scratch space.
///
/// The request is written to the caller's slot rather than returned: returned, it was moved
/// through each enum and function on its way to the handler (264 bytes, nine copies a request).
pub(super) fn parse(
    buf: &mut BytesMut,
    fields: &mut Vec<Field>,
    slot: &mut Option<Request<RequestBody>>,
) -> Parsed {
    fields.clear();
    let (len, method, path, close) = {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_request_with_uninit_headers(&mut req, buf, &mut slots)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Other,
        };
        if req.version != Some(1) {
            return Parsed::Other;
        }
        let Some(Ok(method)) = req.method.map(|m| Method::from_bytes(m.as_bytes())) else {
            return Parsed::Other;
        };
        if method == Method::CONNECT {
            return Parsed::Other;
        }
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| s.as_ptr() as usize - base;
        let Some(path) = req.path.map(|p| (offset(p.as_bytes()), p.len())) else {
            return Parsed::Other;
        };
        let mut close = false;
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                // A declared empty body is no body; any other length is hyper's to read.
                if h.value != b"0" {
                    return Parsed::Other;
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"upgrade")
                || name.eq_ignore_ascii_case(b"expect")
                || name.eq_ignore_ascii_case(b"te")
            {
                return Parsed::Other;
            } else if name.eq_ignore_ascii_case(b"connection") && has_token(h.value, b"close") {
                close = true;
            }
            fields.push(Field {
                name: (offset(name), name.len()),
                value: (offset(h.value), h.value.len()),
            });
        }
        (len, method, path, close)
    };

    // A copy of the head (small) that the request's target and fields share, rather than a
    // split of the read buffer: the buffer then stays the connection's own and is reused,
    // where a split would leave it shared and cost a fresh allocation for the next read.
    let head = Bytes::copy_from_slice(&buf[..len]);
    let method_is_head = method == Method::HEAD;
    if !build(&head, method, path, fields, slot) {
        // Rare (a target `Uri` refuses): hyper gets the bytes as they were.
        return Parsed::Other;
    }
    buf.advance(len);
    Parsed::Request(Head {
        head_method: method_is_head,
        close,
    })
}

/// The request from the head's bytes, into `slot`; its target and field values share them.
/// False (and `slot` untouched) when the target or a field is refused.
fn build(
    head: &Bytes,
    method: Method,
    path: (usize, usize),
    fields: &[Field],
    slot: &mut Option<Request<RequestBody>>,
) -> bool {
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path.0..path.0 + path.1)) else {
        return false;
    };
    let mut headers = spare_maps::take(fields.len());
    for f in fields {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&head[f.name.0..f.name.0 + f.name.1]),
            HeaderValue::from_maybe_shared(head.slice(f.value.0..f.value.0 + f.value.1)),
        ) else {
            spare_maps::give_back(headers);
            return false;
        };
        headers.append(name, value);
    }
    let request = slot.insert(Request::new(RequestBody::Empty));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> (Parsed, BytesMut, Option<Request<RequestBody>>) {
        let mut buf = BytesMut::from(raw);
        let mut slot = None;
        let p = parse(&mut buf, &mut Vec::new(), &mut slot);
        (p, buf, slot)
    }

    #[test]
    fn a_bodiless_head_is_read_and_the_pipelined_rest_stays() {
        let (p, rest, request) = parsed(
            "GET /a?b=c HTTP/1.1\r\nHost: x.test\r\nX-A: 1\r\nx-a: 2\r\n\r\nGET /next HTTP/1.1\r\n",
        );
        let Parsed::Request(head) = p else {
            panic!("not served here")
        };
        let request = request.expect("the request is in the slot");
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri(), "/a?b=c");
        assert_eq!(request.headers()["host"], "x.test");
        assert_eq!(request.headers().get_all("x-a").iter().count(), 2);
        assert!(!head.close && !head.head_method);
        assert_eq!(&rest[..], b"GET /next HTTP/1.1\r\n");
    }

    #[test]
    fn close_head_and_an_empty_length_are_noted() {
        let (p, _, request) =
            parsed("HEAD / HTTP/1.1\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n");
        let Parsed::Request(head) = p else {
            panic!("not served here")
        };
        assert!(head.close && head.head_method);
        assert_eq!(request.expect("in the slot").method(), Method::HEAD);
    }

    #[test]
    fn everything_else_is_left_for_hyper_untouched() {
        for raw in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nTE: trailers\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "CONNECT x.test:443 HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\n\r\n",
        ] {
            let (p, rest, request) = parsed(raw);
            assert!(matches!(p, Parsed::Other), "served here: {raw:?}");
            assert_eq!(&rest[..], raw.as_bytes(), "bytes changed: {raw:?}");
            assert!(request.is_none(), "a request left in the slot: {raw:?}");
        }
        let (p, rest, request) = parsed("GET / HTTP/1.1\r\nHost: x");
        assert!(matches!(p, Parsed::Partial));
        assert!(request.is_none());
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\nHost: x");
    }

    #[test]
    fn more_fields_than_hyper_allows_go_to_hyper() {
        let mut raw = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            raw.push_str(&format!("x-{i}: v\r\n"));
        }
        raw.push_str("\r\n");
        assert!(matches!(parsed(&raw).0, Parsed::Other));
    }
}
