//! Header rewriting: what a proxy must drop, add and keep (RFC 9110 §7.6).
//!
//! Hop-by-hop headers describe one connection and must not travel past it; everything else is
//! end-to-end and is kept value by value (copied or kept with `append`, never `insert`, so
//! repeated headers such as `Set-Cookie` all survive).
//!
//! This runs on every request through both proxies: it looks at what a message carries rather
//! than removing every name that might be there (a hashed lookup each), and copies no header
//! name or value it can share.

use bytes::Bytes;
use http::header::{self, GetAll, HeaderMap, HeaderName, HeaderValue};
use http::uri::Scheme;

use super::{addr_text, ForwardContext};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Whether `name` is one of the headers that belong to one connection only, dropped in both
/// directions whatever `Connection` says. Matched on the name's text: it runs for every field of
/// every message, and nine `HeaderName` comparisons cost several times one match on a string.
pub(crate) fn is_fixed_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Whether the `Connection` header values `connection` name `name` (compared without copying:
/// header names are lower-case already, tokens may be any case). `Host` is never named: it is
/// end-to-end whatever a client says (routing depends on it).
fn named_by_connection(connection: &GetAll<'_, HeaderValue>, name: &HeaderName) -> bool {
    *name != header::HOST && has_token(connection, name.as_str())
}

/// Whether any of the comma-separated `Connection` values is `token`, in any case.
pub(crate) fn has_token(connection: &GetAll<'_, HeaderValue>, token: &str) -> bool {
    connection
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether the headers ask to switch protocols: `Connection: upgrade` and an `Upgrade` header.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && has_token(&headers.get_all(header::CONNECTION), "upgrade")
}

/// Removes the hop-by-hop headers: the fixed list and every header the `Connection` header names,
/// except `Host`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Look first: most messages carry none, and a removal costs a hash and a probe per name.
    let doomed: Vec<HeaderName> = {
        let connection = headers.get_all(header::CONNECTION);
        headers
            .keys()
            .filter(|name| is_fixed_hop_by_hop(name) || named_by_connection(&connection, name))
            .cloned()
            .collect()
    };
    for name in &doomed {
        headers.remove(name);
    }
}

/// Strips hop-by-hop headers, but for an upgrade keeps what the next hop needs to switch too:
/// `Connection: upgrade` and the `Upgrade` values.
fn strip_keeping_upgrade(headers: &mut HeaderMap, upgrade: bool) {
    let protocols: Vec<HeaderValue> = if upgrade {
        headers.get_all(header::UPGRADE).iter().cloned().collect()
    } else {
        Vec::new()
    };
    strip_hop_by_hop(headers);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        for protocol in protocols {
            headers.append(header::UPGRADE, protocol);
        }
    }
}

/// Where the header fields of a request going upstream are written: a [`HeaderMap`] (for
/// hyper's client) or straight into the request head's bytes (the bodiless exchange, which then
/// builds no map at all). Each name is written once, or repeatedly in a row for a repeated
/// field; nothing written is replaced later.
pub(crate) trait FieldSink {
    /// Adds one field, copying or sharing `name` and `value` as the sink needs.
    fn field(&mut self, name: &HeaderName, value: &HeaderValue);
    /// Adds one field the caller no longer needs.
    fn owned_field(&mut self, name: HeaderName, value: HeaderValue) {
        self.field(&name, &value);
    }
    /// Adds one field whose value is text, if it is a valid header value (else nothing): a
    /// sink that writes bytes needs no [`HeaderValue`] (a copy) for it.
    fn text_field(&mut self, name: &HeaderName, value: &str) {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.field(name, &value);
        }
    }
    /// Adds one field whose value is `parts` joined, if that is a valid header value (else
    /// nothing): a sink that writes bytes copies the parts as they are, where a
    /// [`HeaderValue`] would first be built (an allocation) and then copied.
    fn joined_field(&mut self, name: &HeaderName, parts: &[&[u8]]) {
        if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(parts.concat())) {
            self.owned_field(name.clone(), value);
        }
    }
}

/// Whether `value` is a valid header value as [`HeaderValue::from_str`] judges it: no control
/// characters but the tab (bytes of UTF-8 past ASCII are allowed).
pub(crate) fn is_valid_text_value(value: &str) -> bool {
    is_valid_value(value.as_bytes())
}

/// Whether `value` is valid in a header value: what [`HeaderValue::from_bytes`] checks.
pub(crate) fn is_valid_value(value: &[u8]) -> bool {
    // Folded rather than short-circuited: valid values are the rule, and the fold vectorizes.
    value
        .iter()
        .fold(true, |ok, &b| ok & ((b >= 32 && b != 127) | (b == b'\t')))
}

impl FieldSink for HeaderMap {
    fn field(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.append(name.clone(), value.clone());
    }

    fn owned_field(&mut self, name: HeaderName, value: HeaderValue) {
        self.append(name, value);
    }
}

/// The headers to send upstream for a client request with headers `src`, as a map; with
/// telemetry exporting, the current span's `traceparent` replaces the client's.
///
/// The rules are [`write_request_fields`]'s.
pub(crate) fn request_headers(src: &HeaderMap, ctx: &ForwardContext, upgrade: bool) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(src.keys_len() + 6);
    write_request_fields(src, ctx, upgrade, &mut out);
    crate::telemetry::inject(&mut out);
    out
}

/// Writes the header fields to send upstream for a client request with headers `src`.
///
/// One pass, leaving `src` as it came (a retry needs it). From an untrusted client (the edge's
/// default), every forwarding header it sent is dropped and set afresh (`X-Forwarded-For`,
/// `-Proto`, `-Host`, `Forwarded`; `X-Real-IP` is dropped), so an app can believe them. Behind a
/// trusted hop they are kept and the peer is appended to `X-Forwarded-For`. Hop-by-hop headers
/// are dropped, but an upgrade keeps `Connection: upgrade` and its `Upgrade` values. Telemetry's
/// `traceparent` is not written here (see [`request_headers`]).
pub(crate) fn write_request_fields(
    src: &HeaderMap,
    ctx: &ForwardContext,
    upgrade: bool,
    out: &mut impl FieldSink,
) {
    let seen = Survey::of(src);
    let connection = seen.connection.then(|| src.get_all(header::CONNECTION));
    let dropped = |name: &HeaderName| {
        is_fixed_hop_by_hop(name)
            || connection
                .as_ref()
                .is_some_and(|c| named_by_connection(c, name))
    };
    let trusted = ctx.trust_forwarded;
    // A trusted hop's value counts only if this hop's `Connection` did not name it away.
    let kept = |present: bool, name: &HeaderName| trusted && present && !dropped(name);
    let keep_proto = kept(seen.forwarded_proto, &X_FORWARDED_PROTO);
    let keep_host = kept(seen.forwarded_host, &X_FORWARDED_HOST);
    // The id the proxy logs under: the client's when it was usable, else a new one that
    // replaces what the client sent. A trusted hop's id is kept.
    let our_id = !(ctx.request_id.is_empty() || kept(seen.request_id, &X_REQUEST_ID));
    let earlier_for = kept(seen.forwarded_for, &X_FORWARDED_FOR);

    // Every name set below is left out here, so the sink never has to replace a field.
    for (name, value) in src {
        let replaced = *name == X_FORWARDED_FOR
            || (*name == X_FORWARDED_PROTO && !keep_proto)
            || (*name == X_FORWARDED_HOST && !keep_host)
            || (*name == X_REQUEST_ID && our_id)
            || (!trusted && (*name == header::FORWARDED || *name == X_REAL_IP));
        if !replaced && !dropped(name) {
            out.field(name, value);
        }
    }
    if upgrade {
        out.owned_field(header::CONNECTION, HeaderValue::from_static("upgrade"));
        for protocol in src.get_all(header::UPGRADE) {
            out.field(&header::UPGRADE, protocol);
        }
    }
    // Looked up once for both fields that carry it.
    let peer_ip = addr_text::forwarded_ip(ctx.peer.ip());
    if !trusted {
        set_forwarded(out, seen.host, ctx, &peer_ip);
    }
    let earlier = earlier_for.then(|| src.get_all(&X_FORWARDED_FOR));
    append_forwarded_for(out, earlier, peer_ip);
    if !keep_proto {
        out.owned_field(X_FORWARDED_PROTO, scheme_value(&ctx.scheme));
    }
    if !keep_host {
        if let Some(host) = seen.host {
            out.field(&X_FORWARDED_HOST, host);
        }
    }
    if our_id {
        out.text_field(&X_REQUEST_ID, &ctx.request_id);
    }
}

/// What [`write_request_fields`] needs to know of a request's headers before it writes any,
/// found in one walk over them instead of a hashed lookup per name (most requests carry only a
/// few headers, and none of the forwarding ones).
#[derive(Default)]
struct Survey<'a> {
    /// The first `Host` value.
    host: Option<&'a HeaderValue>,
    connection: bool,
    forwarded_for: bool,
    forwarded_proto: bool,
    forwarded_host: bool,
    request_id: bool,
}

impl<'a> Survey<'a> {
    fn of(src: &'a HeaderMap) -> Self {
        let mut seen = Survey::default();
        for (name, value) in src {
            if *name == header::HOST {
                seen.host.get_or_insert(value);
            } else if *name == header::CONNECTION {
                seen.connection = true;
            } else if *name == X_FORWARDED_FOR {
                seen.forwarded_for = true;
            } else if *name == X_FORWARDED_PROTO {
                seen.forwarded_proto = true;
            } else if *name == X_FORWARDED_HOST {
                seen.forwarded_host = true;
            } else if *name == X_REQUEST_ID {
                seen.request_id = true;
            }
        }
        seen
    }
}

/// `X-Forwarded-Proto`'s value for `scheme`, without a copy for the two usual ones.
fn scheme_value(scheme: &Scheme) -> HeaderValue {
    if *scheme == Scheme::HTTPS {
        HeaderValue::from_static("https")
    } else if *scheme == Scheme::HTTP {
        HeaderValue::from_static("http")
    } else {
        HeaderValue::from_str(scheme.as_str()).unwrap_or(HeaderValue::from_static("http"))
    }
}

/// `Forwarded: for=…;proto=…;host=…` (RFC 7239), from what this proxy saw itself; `ip` is the
/// peer's, as [`addr_text::forwarded_ip`] writes it.
fn set_forwarded(
    out: &mut impl FieldSink,
    host: Option<&HeaderValue>,
    ctx: &ForwardContext,
    ip: &HeaderValue,
) {
    let host = host
        .map(HeaderValue::as_bytes)
        // A host is a token or a quoted string; quote it so a port's ':' is allowed.
        .filter(|h| {
            h.iter()
                .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        });
    let (open, close): (&[u8], &[u8]) = if ctx.peer.ip().to_canonical().is_ipv6() {
        (b"\"[", b"]\"")
    } else {
        (b"", b"")
    };
    let (ip, proto) = (ip.as_bytes(), ctx.scheme.as_str().as_bytes());
    match host {
        Some(host) => out.joined_field(
            &header::FORWARDED,
            &[
                b"for=",
                open,
                ip,
                close,
                b";proto=",
                proto,
                b";host=\"",
                host,
                b"\"",
            ],
        ),
        None => out.joined_field(
            &header::FORWARDED,
            &[b"for=", open, ip, close, b";proto=", proto],
        ),
    }
}

/// Rewrites the upstream's response headers for the client.
pub(crate) fn prepare_response(headers: &mut HeaderMap, upgrade: bool) {
    strip_keeping_upgrade(headers, upgrade);
}

/// Sets `X-Forwarded-For` to the `earlier` values joined and the peer's IP: `a, b, <peer>`.
fn append_forwarded_for(
    out: &mut impl FieldSink,
    earlier: Option<GetAll<'_, HeaderValue>>,
    peer: HeaderValue,
) {
    let mut earlier = earlier.into_iter().flatten().peekable();
    if earlier.peek().is_none() {
        // The usual case at the edge: nothing to join, the remembered value goes in as it is.
        out.owned_field(X_FORWARDED_FOR, peer);
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for value in earlier {
        joined.extend_from_slice(value.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(peer.as_bytes());
    // Valid header bytes joined by ", " stay valid; the fallback only guards the impossible.
    let value = HeaderValue::from_maybe_shared(Bytes::from(joined)).unwrap_or(peer);
    out.owned_field(X_FORWARDED_FOR, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    fn ctx() -> ForwardContext {
        ForwardContext::new(([192, 0, 2, 9], 4711).into(), Scheme::HTTPS, "req-1")
    }

    #[test]
    fn the_fixed_hop_by_hop_names_are_these_nine() {
        let fixed = [
            header::CONNECTION,
            HeaderName::from_static("keep-alive"),
            HeaderName::from_static("proxy-connection"),
            header::PROXY_AUTHENTICATE,
            header::PROXY_AUTHORIZATION,
            header::TE,
            header::TRAILER,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
        ];
        for name in &fixed {
            assert!(is_fixed_hop_by_hop(name), "{name}");
        }
        for name in [
            "host",
            "content-length",
            "keep-alive2",
            "x-upgrade",
            "t",
            "tee",
        ] {
            let name = HeaderName::from_static(name);
            assert!(!is_fixed_hop_by_hop(&name), "{name}");
        }
    }

    #[test]
    fn text_values_are_judged_as_header_value_judges_them() {
        for text in [
            "abc-123",
            "a b\tc",
            "",
            "x\u{7f}",
            "caf\u{e9}",
            "a\nb",
            "\u{1f}",
        ] {
            assert_eq!(
                is_valid_text_value(text),
                HeaderValue::from_str(text).is_ok(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn drops_fixed_and_connection_named_headers_keeps_the_rest() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "h2c"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ]);
        strip_hop_by_hop(&mut headers);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["set-cookie"]);
        assert_eq!(headers.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn an_upgrade_keeps_connection_upgrade_and_its_protocol() {
        let mut headers = map(&[
            ("connection", "Upgrade, x-secret"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(is_upgrade_request(&headers));
        headers = request_headers(&headers, &ctx(), true);
        assert_eq!(headers["connection"], "upgrade");
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["sec-websocket-key"], "k");
        assert!(!headers.contains_key("x-secret"));
    }

    #[test]
    fn upgrade_needs_both_headers() {
        assert!(!is_upgrade_request(&map(&[("upgrade", "websocket")])));
        assert!(!is_upgrade_request(&map(&[("connection", "upgrade")])));
    }

    #[test]
    fn an_untrusted_client_s_forwarding_headers_are_replaced() {
        let mut headers = map(&[
            ("host", "app.example"),
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "203.0.113.2"),
            ("x-forwarded-proto", "forged"),
            ("x-forwarded-host", "forged.example"),
            ("forwarded", "for=203.0.113.3"),
            ("x-real-ip", "203.0.113.4"),
            ("x-request-id", "client-id"),
        ]);
        headers = request_headers(&headers, &ctx(), false);
        assert_eq!(headers["x-forwarded-for"], "192.0.2.9");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "app.example");
        assert_eq!(
            headers["forwarded"],
            "for=192.0.2.9;proto=https;host=\"app.example\""
        );
        assert!(!headers.contains_key("x-real-ip"));
        assert_eq!(headers["x-request-id"], "req-1");
        assert_eq!(headers["host"], "app.example");
    }

    #[test]
    fn connection_cannot_strip_host() {
        let mut headers = map(&[
            ("host", "app.example"),
            ("connection", "close, host, x-forwarded-for"),
        ]);
        headers = request_headers(&headers, &ctx(), false);
        assert_eq!(headers["host"], "app.example");
        assert_eq!(headers["x-forwarded-for"], "192.0.2.9");
    }

    #[test]
    fn a_trusted_hop_keeps_the_edge_values_and_request_id() {
        let mut headers = map(&[
            ("host", "app.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "public.example"),
            ("x-request-id", "from-edge"),
        ]);
        let mut ctx = ctx().trusting_forwarded();
        ctx.scheme = Scheme::HTTP;
        headers = request_headers(&headers, &ctx, false);
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "public.example");
        assert_eq!(headers["x-request-id"], "from-edge");
        assert_eq!(headers["x-forwarded-for"], "192.0.2.9");
        assert!(
            !headers.contains_key("forwarded"),
            "the edge's, if any, is kept"
        );
    }

    #[test]
    fn a_trusted_hop_s_list_is_joined_and_what_connection_names_is_set_afresh() {
        let mut headers = map(&[
            ("host", "app.example"),
            ("connection", "X-Forwarded-Proto"),
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "https"),
        ]);
        let ctx = ctx().trusting_forwarded();
        headers = request_headers(&headers, &ctx, false);
        assert_eq!(
            headers["x-forwarded-for"],
            "203.0.113.1, 198.51.100.2, 192.0.2.9"
        );
        // The hop named it as its own: not the edge's word, so this hop says what it saw.
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers.get_all("x-forwarded-proto").iter().count(), 1);
        assert!(!headers.contains_key("connection"));
    }

    #[test]
    fn an_ipv6_peer_is_quoted_in_forwarded_and_a_mapped_one_shown_as_ipv4() {
        let mut ctx = ctx();
        ctx.peer = "[2001:db8::7]:1".parse().expect("addr");
        let headers = request_headers(&map(&[("host", "a.example:8443")]), &ctx, false);
        assert_eq!(
            headers["forwarded"],
            "for=\"[2001:db8::7]\";proto=https;host=\"a.example:8443\""
        );
        ctx.peer = "[::ffff:192.0.2.1]:1".parse().expect("addr");
        let headers = request_headers(&map(&[("host", "a.example")]), &ctx, false);
        assert_eq!(
            headers["forwarded"],
            "for=192.0.2.1;proto=https;host=\"a.example\""
        );
        assert_eq!(headers["x-forwarded-for"], "192.0.2.1");
    }

    #[test]
    fn a_response_keeps_repeated_headers_and_loses_keep_alive() {
        let mut headers = map(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("content-length", "3"),
        ]);
        prepare_response(&mut headers, false);
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "set-cookie"]);
        assert_eq!(headers.get_all("set-cookie").iter().count(), 2);
    }
}
