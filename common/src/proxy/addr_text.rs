//! Addresses as the text a forwarded request carries (the upstream URI's authority, the peer's
//! IP in `X-Forwarded-For`), and addresses parsed from text (the edge's node addresses),
//! remembered per thread.
//!
//! A proxy sends most requests to few upstreams and gets them from few peers (a node's peers are
//! the edges), yet formatting an address costs `fmt` machinery and an allocation on every request:
//! the warm-path profile showed `Ipv4Addr`/`SocketAddrV4` `Display` at about 1.5 % of the edge.
//! Each thread keeps what it formatted, up to [`LIMIT`] entries (then starts over), so there is
//! no lock and no unbounded growth.

use foldhash::{HashMap, HashMapExt};
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};

use http::uri::Authority;
use http::HeaderValue;

/// Entries kept per thread and kind before the memo is cleared.
const LIMIT: usize = 1024;

thread_local! {
    static AUTHORITIES: RefCell<HashMap<SocketAddr, Authority>> = RefCell::new(HashMap::new());
    static PEER_IPS: RefCell<HashMap<IpAddr, HeaderValue>> = RefCell::new(HashMap::new());
    static PARSED: RefCell<HashMap<Box<str>, SocketAddr>> = RefCell::new(HashMap::new());
}

fn remembered<K: Copy + Eq + std::hash::Hash, V: Clone>(
    memo: &'static std::thread::LocalKey<RefCell<HashMap<K, V>>>,
    key: K,
    make: impl FnOnce(K) -> V,
) -> V {
    memo.with(|m| {
        let mut m = m.borrow_mut();
        if let Some(v) = m.get(&key) {
            return v.clone();
        }
        if m.len() >= LIMIT {
            m.clear();
        }
        let v = make(key);
        m.insert(key, v.clone());
        v
    })
}

/// `ip:port` (`[ip]:port` for IPv6) as a URI authority.
pub(crate) fn authority(addr: SocketAddr) -> Authority {
    remembered(&AUTHORITIES, addr, |a| {
        Authority::try_from(a.to_string()).expect("a socket address is a valid authority")
    })
}

/// The peer's IP as it goes into `X-Forwarded-For` (IPv4-mapped IPv6 shown as IPv4).
pub(crate) fn forwarded_ip(ip: IpAddr) -> HeaderValue {
    remembered(&PEER_IPS, ip, |ip| {
        HeaderValue::try_from(ip.to_canonical().to_string()).expect("an IP is a valid header value")
    })
}

/// `text` (`ip:port`, `[ip]:port`) as a socket address, or `None` when it is not one (a name to
/// resolve, say). A lookup costs a fraction of a parse, which the edge did per request.
pub fn parsed_socket_addr(text: &str) -> Option<SocketAddr> {
    PARSED.with(|m| {
        let mut m = m.borrow_mut();
        if let Some(addr) = m.get(text) {
            return Some(*addr);
        }
        let addr: SocketAddr = text.parse().ok()?;
        if m.len() >= LIMIT {
            m.clear();
        }
        m.insert(text.into(), addr);
        Some(addr)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_display_and_remembers() {
        let v4: SocketAddr = "127.0.0.1:8000".parse().expect("addr");
        let v6: SocketAddr = "[::1]:9".parse().expect("addr");
        assert_eq!(authority(v4).as_str(), "127.0.0.1:8000");
        assert_eq!(authority(v4).as_str(), "127.0.0.1:8000");
        assert_eq!(authority(v6).as_str(), "[::1]:9");
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().expect("ip");
        assert_eq!(forwarded_ip(mapped), "192.0.2.9");
        assert_eq!(
            forwarded_ip("2001:db8::1".parse().expect("ip")),
            "2001:db8::1"
        );
    }

    #[test]
    fn the_memo_stays_bounded() {
        for port in 0..(LIMIT as u16 + 10) {
            let a = SocketAddr::from(([10, 0, 0, 1], port));
            assert_eq!(authority(a).port_u16(), Some(port));
        }
        AUTHORITIES.with(|m| assert!(m.borrow().len() <= LIMIT));
        for port in 0..(LIMIT as u16 + 10) {
            let text = format!("10.0.0.1:{port}");
            assert_eq!(parsed_socket_addr(&text).map(|a| a.port()), Some(port));
        }
        PARSED.with(|m| assert!(m.borrow().len() <= LIMIT));
    }

    #[test]
    fn parses_like_from_str_and_remembers() {
        for text in ["127.0.0.1:9000", "[::1]:80", "127.0.0.1:9000"] {
            assert_eq!(parsed_socket_addr(text), text.parse().ok());
        }
        for text in ["node-1.internal:9000", "127.0.0.1", ""] {
            assert_eq!(parsed_socket_addr(text), None, "{text:?}");
        }
    }
}
