//! The host a request is for, checked before it is routed: the request's own word on where it
//! goes must be unambiguous, or a client could route by one host and reach another.
//!
//! Refused with 400: two `Host` headers, a `Host` that is not text, and an absolute-form target
//! (`GET http://a.example/ HTTP/1.1`) whose host is not the `Host` header's. An absolute-form
//! target without a `Host` header gets one from the target, so the next hop sees the host the
//! request was routed by (not the upstream's address).

use http::{header, HeaderValue, Request};

use crate::task::host_without_port;

/// Why a request's host was refused, said to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the request has more than one Host header; send exactly one")]
    Repeated,
    #[error("the Host header is not valid text; send the app's hostname")]
    NotText,
    #[error(
        "the Host header and the request target name different hosts; send the same host in both"
    )]
    Disagrees,
}

/// The request's domain, as tasks are looked up by: its `Host` header (else the host of an
/// absolute-form target), lower case, without port or trailing dot, empty when it has neither;
/// after the checks above. Adds the `Host` header an absolute-form request lacks.
pub fn checked_domain<B>(req: &mut Request<B>) -> Result<String, HostError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Repeated);
    }
    let host = match first {
        Some(v) => Some(v.to_str().map_err(|_| HostError::NotText)?),
        None => None,
    };
    let domain = match (host, req.uri().authority()) {
        (Some(h), Some(authority)) => {
            let domain = host_without_port(h);
            if domain != host_without_port(authority.host()) {
                return Err(HostError::Disagrees);
            }
            domain
        }
        (Some(h), None) => host_without_port(h),
        (None, Some(authority)) => {
            let v = HeaderValue::from_str(authority.as_str()).map_err(|_| HostError::NotText)?;
            let domain = host_without_port(authority.as_str());
            req.headers_mut().insert(header::HOST, v);
            domain
        }
        (None, None) => String::new(),
    };
    Ok(domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for h in hosts {
            b = b.header("host", *h);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn one_host_and_an_agreeing_target_pass() {
        assert_eq!(
            checked_domain(&mut req("/x", &["App.example:80"])),
            Ok("app.example".into())
        );
        assert_eq!(
            checked_domain(&mut req("http://app.example/x", &["app.example"])),
            Ok("app.example".into())
        );
        assert_eq!(
            checked_domain(&mut req("/x", &["app.example."])),
            Ok("app.example".into())
        );
    }

    #[test]
    fn the_domain_comes_from_host_else_the_absolute_target() {
        assert_eq!(
            checked_domain(&mut req("/x", &["App.Example.com:8080"])),
            Ok("app.example.com".into())
        );
        assert_eq!(
            checked_domain(&mut req("http://Other.example/x", &[])),
            Ok("other.example".into())
        );
        assert_eq!(checked_domain(&mut req("/x", &[])), Ok(String::new()));
    }

    #[test]
    fn an_absolute_target_without_host_gets_its_host_forwarded() {
        let mut r = req("http://app.example:8080/metrics", &[]);
        assert_eq!(checked_domain(&mut r), Ok("app.example".into()));
        assert_eq!(r.headers()["host"], "app.example:8080");
    }

    #[test]
    fn ambiguous_hosts_are_refused() {
        assert_eq!(
            checked_domain(&mut req("/", &["a.example", "b.example"])),
            Err(HostError::Repeated)
        );
        assert_eq!(
            checked_domain(&mut req("/", &["a.example", "a.example"])),
            Err(HostError::Repeated)
        );
        assert_eq!(
            checked_domain(&mut req("http://a.example/", &["b.example"])),
            Err(HostError::Disagrees)
        );
    }
}
