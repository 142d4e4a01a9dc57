//! The few answers the node writes itself: not found, unavailable, loading.

use http::{header, Response, StatusCode};
use shadow_common::proxy::{full, ProxyBody};

pub fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// 503 with `Retry-After`, so clients and edges know to come back.
pub fn unavailable(message: String, retry_after_s: u64) -> Response<ProxyBody> {
    let mut r = text(StatusCode::SERVICE_UNAVAILABLE, message);
    if let Ok(v) = header::HeaderValue::from_str(&retry_after_s.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// The self-refreshing page a browser gets while the app starts (`cold_start: "page"`).
pub fn loading(name: &str) -> Response<ProxyBody> {
    let name = name.replace(['<', '>', '&', '"'], "");
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"1\">\
         <title>Starting {name}…</title><style>body{{font-family:sans-serif;display:grid;place-items:center;height:90vh;color:#444}}</style>\
         </head><body><p>Starting <b>{name}</b>… this page reloads by itself.</p></body></html>"
    );
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    h.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
}

/// The page a browser gets while a failing app waits before its next start: it says so, instead
/// of a loading page that would start a container per reload.
pub fn failed(name: &str, retry_after_s: u64) -> Response<ProxyBody> {
    let name = name.replace(['<', '>', '&', '"'], "");
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{name} failed to start</title>\
         <style>body{{font-family:sans-serif;display:grid;place-items:center;height:90vh;color:#444}}</style>\
         </head><body><div><h1>{name} failed to start</h1><p>It will be tried again in {retry_after_s} s. \
         If this keeps happening, the app's owner can see why in its status and logs.</p></div></body></html>"
    );
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&retry_after_s.to_string()) {
        h.insert(header::RETRY_AFTER, v);
    }
    r
}
