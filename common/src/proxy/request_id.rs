//! Request ids: the client's `X-Request-Id` when it sent a usable one, else a new id.
//!
//! A new id is this process's random prefix and a counter, 32 hex digits like a UUID's simple
//! form: unique across processes (the prefix) and within one (the counter), and cheap. A random
//! UUID per request cost a `getrandom` syscall on every request of the warm path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-sent id that is kept; longer ones are replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The request's id: its `X-Request-Id` if it is 1 to [`MAX_REQUEST_ID_LEN`] bytes of letters,
/// digits, `-`, `_`, `.` and `:` (safe in a log line and a header), else a new one.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        })
        .map_or_else(new_request_id, str::to_string)
}

/// A new id, unique to this process and request.
pub fn new_request_id() -> String {
    // The prefix's digits are written once; a request writes only its counter's.
    static PREFIX: OnceLock<[u8; 16]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let (high, _) = uuid::Uuid::new_v4().as_u64_pair();
        hex(high)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(prefix);
    out[16..].copy_from_slice(&hex(n));
    // Hex digits are ASCII: the conversion cannot fail (and no `fmt` on the request path).
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// `word`'s 16 hex digits, most significant first.
fn hex(word: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = DIGITS[((word >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn new_ids_are_32_hex_digits_and_differ() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        // Same process: same prefix, the counter moves on.
        assert_eq!(a[..16], b[..16]);
        let counter = |id: &str| u64::from_str_radix(&id[16..], 16).expect("hex");
        assert!(counter(&b) > counter(&a));
    }

    #[test]
    fn hex_digits_are_most_significant_first() {
        assert_eq!(&hex(0x0123_4567_89ab_cdef), b"0123456789abcdef");
        assert_eq!(&hex(u64::MAX), b"ffffffffffffffff");
        assert_eq!(&hex(1), b"0000000000000001");
    }

    #[test]
    fn a_usable_client_id_is_kept_an_unusable_one_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert("x-request-id", HeaderValue::from_static(""));
        assert_eq!(request_id(&headers).len(), 32);
        let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        headers.insert("x-request-id", HeaderValue::from_str(&long).expect("ascii"));
        assert_eq!(request_id(&headers).len(), 32);
        assert_eq!(request_id(&HeaderMap::new()).len(), 32);
        for forged in ["a b", "a\tb", "x\"y", "<script>", "a=b;c"] {
            headers.insert(
                "x-request-id",
                HeaderValue::from_str(forged).expect("valid"),
            );
            assert_eq!(request_id(&headers).len(), 32, "{forged:?} replaced");
        }
    }
}
