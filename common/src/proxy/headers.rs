//! Header rewriting: what a proxy must drop, add and keep (RFC 9110 §7.6).
//!
//! Hop-by-hop headers describe one connection and must not travel past it; everything else is
//! end-to-end and is kept value by value (the map is edited in place, never rebuilt with
//! `insert`, so repeated headers such as `Set-Cookie` all survive).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::{addr_text, ForwardContext};

/// Headers that belong to one connection only, dropped in both directions.
const HOP_BY_HOP: [HeaderName; 9] = [
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

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The comma-separated tokens of every `Connection` header, lower-cased.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
}

/// Whether the headers ask to switch protocols: `Connection: upgrade` and an `Upgrade` header.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_tokens(headers).any(|t| t == "upgrade")
}

/// Removes the hop-by-hop headers: the fixed list and every header the `Connection` header names,
/// except `Host`, which is end-to-end whatever a client says (routing depends on it).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .filter(|name| *name != header::HOST)
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
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

/// Rewrites the client's request headers for the upstream.
///
/// From an untrusted client (the edge's default), every forwarding header it sent is dropped and
/// set afresh (`X-Forwarded-For`, `-Proto`, `-Host`, `Forwarded`; `X-Real-IP` is dropped), so
/// an app can believe them. Behind a trusted hop they are kept and the peer is appended.
pub(crate) fn prepare_request(headers: &mut HeaderMap, ctx: &ForwardContext, upgrade: bool) {
    strip_keeping_upgrade(headers, upgrade);
    crate::telemetry::inject(headers);
    if !ctx.trust_forwarded {
        for name in [&X_FORWARDED_FOR, &header::FORWARDED, &X_REAL_IP] {
            headers.remove(name);
        }
        set_forwarded(headers, ctx);
    }
    append_forwarded_for(headers, ctx);

    if !(ctx.trust_forwarded && headers.contains_key(X_FORWARDED_PROTO)) {
        if let Ok(proto) = HeaderValue::from_str(ctx.scheme.as_str()) {
            headers.insert(X_FORWARDED_PROTO, proto);
        }
    }
    if !(ctx.trust_forwarded && headers.contains_key(X_FORWARDED_HOST)) {
        match headers.get(header::HOST).cloned() {
            Some(host) => headers.insert(X_FORWARDED_HOST, host),
            // An untrusted client's own value must not pass for ours.
            None => headers.remove(X_FORWARDED_HOST),
        };
    }
    // The id the proxy logs under: the client's when it was usable, else a new one that
    // replaces what the client sent. A trusted hop's id is kept.
    let keep_trusted = ctx.trust_forwarded && headers.contains_key(X_REQUEST_ID);
    if !ctx.request_id.is_empty() && !keep_trusted {
        if let Ok(id) = HeaderValue::from_str(&ctx.request_id) {
            headers.insert(X_REQUEST_ID, id);
        }
    }
}

/// `Forwarded: for=…;proto=…;host=…` (RFC 7239), from what this proxy saw itself.
fn set_forwarded(headers: &mut HeaderMap, ctx: &ForwardContext) {
    let ip = ctx.peer.ip();
    let for_ = match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut value = format!("for={for_};proto={}", ctx.scheme.as_str());
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        // A host is a token or a quoted string; quote it so a port's ':' is allowed.
        if host
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            value.push_str(&format!(";host=\"{host}\""));
        }
    }
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(header::FORWARDED, v);
    }
}

/// Rewrites the upstream's response headers for the client.
pub(crate) fn prepare_response(headers: &mut HeaderMap, upgrade: bool) {
    strip_keeping_upgrade(headers, upgrade);
}

/// Joins every `X-Forwarded-For` value and appends the peer's IP: `a, b, <peer>`.
fn append_forwarded_for(headers: &mut HeaderMap, ctx: &ForwardContext) {
    let peer = addr_text::forwarded_ip(ctx.peer.ip());
    let mut earlier = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    if earlier.peek().is_none() {
        // The usual case at the edge: nothing to join, the remembered value goes in as it is.
        headers.insert(X_FORWARDED_FOR, peer);
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for value in earlier {
        joined.extend_from_slice(value.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(peer.as_bytes());
    // Valid header bytes joined by ", " stay valid; the fallback only guards the impossible.
    let value = HeaderValue::from_bytes(&joined).unwrap_or(peer);
    headers.insert(X_FORWARDED_FOR, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::uri::Scheme;

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
        prepare_request(&mut headers, &ctx(), true);
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
        prepare_request(&mut headers, &ctx(), false);
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
        prepare_request(&mut headers, &ctx(), false);
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
        prepare_request(&mut headers, &ctx, false);
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "public.example");
        assert_eq!(headers["x-request-id"], "from-edge");
        assert_eq!(headers["x-forwarded-for"], "192.0.2.9");
        assert!(
            !headers.contains_key("forwarded"),
            "the edge's, if any, is kept"
        );
    }
}
