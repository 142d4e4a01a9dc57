//! Why a forward failed, and the status and public text that goes with each reason.
//!
//! The variants follow who is at fault (the upstream could not be reached, the upstream broke,
//! the client broke), so the 4xx/5xx choice is made here once. Messages are for logs and say what
//! to do; the client only ever sees [`ProxyError::public_message`], which names no address.

use std::error::Error as StdError;
use std::net::SocketAddr;

use http::{header, HeaderValue, Response, StatusCode};

use super::body::{full, ProxyBody};

/// Any error, boxed; what hyper and hyper-util hand back.
pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// A failed forward.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No connection to the upstream: refused, unreachable, timed out, or closed before a byte
    /// of the request was written. Nothing reached the app, so retrying is safe.
    #[error(
        "could not connect to upstream {upstream}: {}; nothing was sent, so retry once the app \
         listens or on another upstream",
        chain(.cause)
    )]
    Connect {
        upstream: SocketAddr,
        cause: BoxError,
    },
    /// The upstream failed after (part of) the request was sent, or sent a broken response.
    #[error(
        "upstream {upstream} failed after the request was sent: {}; check the app's logs (not \
         retried: the app may have acted on it)",
        chain(.cause)
    )]
    Upstream {
        upstream: SocketAddr,
        cause: BoxError,
    },
    /// The upstream switched protocols although the request asked for no upgrade.
    #[error(
        "upstream {upstream} answered 101 Switching Protocols to a request without `Upgrade`; \
         the app must switch protocols only when asked"
    )]
    UnexpectedUpgrade { upstream: SocketAddr },
    /// Reading the client's request body failed while it was being sent upstream.
    #[error(
        "the client's request body failed while being sent to {upstream}: {}; the client most \
         likely went away, nothing to fix on the server",
        chain(.cause)
    )]
    ClientBody {
        upstream: SocketAddr,
        cause: BoxError,
    },
    /// The client stopped sending its request body part way (no frame for the stall limit).
    #[error(
        "the client's request body stalled while being sent to {upstream}: {}; the connection was \
         closed (a slow or hostile client)",
        chain(.cause)
    )]
    ClientBodyStalled {
        upstream: SocketAddr,
        cause: BoxError,
    },
    /// The upstream's answer asked for the request to go elsewhere, and its body was unread, so
    /// the request came back for that (see `ForwardContext::hand_back_if`).
    #[error(
        "upstream {upstream} answered {status} and handed the request back to be sent elsewhere"
    )]
    HandedBack {
        upstream: SocketAddr,
        status: StatusCode,
    },
    /// The request can't be forwarded as it is (for example a target that is not a path).
    #[error(
        "the request can't be forwarded: {reason}; send an origin-form target such as `/path`"
    )]
    BadRequest { reason: &'static str },
}

impl ProxyError {
    /// Whether the request can be sent again (elsewhere or later) without risk of doing twice.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::HandedBack { .. })
    }

    /// The status to answer the client with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Connect { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::HandedBack { status, .. } => *status,
            Self::Upstream { .. } | Self::UnexpectedUpgrade { .. } => StatusCode::BAD_GATEWAY,
            Self::ClientBody { .. } | Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::ClientBodyStalled { .. } => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// A short text for the client that leaks nothing internal (no address, no cause).
    pub fn public_message(&self) -> &'static str {
        match self {
            Self::Connect { .. } | Self::HandedBack { .. } => {
                "The app is not reachable right now. Please try again shortly."
            }
            Self::Upstream { .. } | Self::UnexpectedUpgrade { .. } => {
                "The app failed to answer this request."
            }
            Self::ClientBody { .. } => "The request body could not be read.",
            Self::ClientBodyStalled { .. } => {
                "The request body stopped arriving; send it without pausing."
            }
            Self::BadRequest { .. } => "This request can't be forwarded.",
        }
    }

    /// The plain-text response for this error: [`ProxyError::status`] and
    /// [`ProxyError::public_message`].
    pub fn to_response(&self) -> Response<ProxyBody> {
        error_response(self.status(), self.public_message())
    }
}

/// A short plain-text response such as `503 Service Unavailable: <message>`, never cached.
pub fn error_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let text = format!("{} {reason}: {message}\n", status.as_u16());
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An error and its causes on one line: hyper-util's top error alone ("client error (Connect)")
/// doesn't say what happened.
fn chain(error: &BoxError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn addr() -> SocketAddr {
        SocketAddr::from(([10, 1, 2, 3], 8000))
    }

    #[tokio::test]
    async fn error_response_names_no_internal_detail() {
        let cause: BoxError = "connection refused by 10.1.2.3".into();
        let error = ProxyError::Connect {
            upstream: addr(),
            cause,
        };
        assert!(error.is_retryable());
        assert!(error.to_string().contains("10.1.2.3:8000"));
        let response = error.to_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = response.into_body().collect().await.map(|b| b.to_bytes());
        let text = String::from_utf8(body.unwrap_or_default().to_vec()).unwrap_or_default();
        assert!(text.starts_with("503 Service Unavailable: "), "{text}");
        assert!(!text.contains("10.1.2.3"), "{text}");
    }

    #[test]
    fn only_connect_errors_are_retryable() {
        let upstream = ProxyError::Upstream {
            upstream: addr(),
            cause: "reset".into(),
        };
        assert!(!upstream.is_retryable());
        assert_eq!(upstream.status(), StatusCode::BAD_GATEWAY);
        let bad = ProxyError::BadRequest { reason: "x" };
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    }
}
