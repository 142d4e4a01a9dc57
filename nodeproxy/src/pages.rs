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

/// The header the loading page's script sends to ask whether the app is up.
pub const LOADING_HEADER: &str = "x-shadow-loading";

/// A start phase in words, for people.
pub fn phase_words(phase: shadow_common::status::StartPhase) -> &'static str {
    use shadow_common::status::StartPhase;
    match phase {
        StartPhase::Lease => "waiting for its data to be free",
        StartPhase::Volume => "attaching its data",
        StartPhase::Image => "fetching its image",
        StartPhase::Container => "starting its container",
        StartPhase::Ready => "waiting for it to answer",
    }
}

/// The page a browser gets while the app starts (`cold_start: "page"`): the phase and the
/// time so far; its script asks the node (a request held up to a second, not a page reload)
/// until the app is up, then loads it. No external resources.
pub fn loading(name: &str, phase: &str, elapsed_s: u64) -> Response<ProxyBody> {
    let name = name.replace(['<', '>', '&', '"', '\'', '\\'], "");
    let body = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>Starting {name}…</title>
<style>
body{{margin:0;font:16px/1.5 system-ui,sans-serif;background:#f4f5f7;color:#222;display:grid;place-items:center;min-height:100vh}}
main{{background:#fff;padding:2rem 2.5rem;border-radius:12px;box-shadow:0 2px 12px #0001;text-align:center;max-width:28rem}}
h1{{font-size:1.25rem;margin:0 0 .5rem}}
.spin{{width:2rem;height:2rem;margin:0 auto 1rem;border:3px solid #ddd;border-top-color:#4a6cf7;border-radius:50%;animation:s 1s linear infinite}}
@keyframes s{{to{{transform:rotate(360deg)}}}}
#phase{{color:#555}} #t{{color:#888;font-size:.9rem}}
</style></head><body><main>
<div class="spin"></div>
<h1>Starting {name}</h1>
<div id="phase">{phase}…</div>
<div id="t"><span id="s">{elapsed_s}</span> s</div>
<noscript><p>Reload this page in a few seconds.</p></noscript>
</main>
<script>
(function(){{
var s={elapsed_s},el=document.getElementById("s"),ph=document.getElementById("phase");
setInterval(function(){{el.textContent=++s;}},1000);
function ask(){{
fetch(location.href,{{headers:{{"{header}":"1"}},cache:"no-store"}})
.then(function(r){{return r.json();}})
.then(function(a){{
if(a.state==="running"||a.state==="failed"){{location.reload();return;}}
ph.textContent=a.phase+"…";ask();
}})
.catch(function(){{setTimeout(ask,1000);}});
}}
ask();
}})();
</script></body></html>"#,
        header = LOADING_HEADER
    );
    html_unavailable(body, 1)
}

/// A 503 HTML page, not to be cached, with `Retry-After`.
fn html_unavailable(body: String, retry_after_s: u64) -> Response<ProxyBody> {
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
    html_unavailable(body, retry_after_s)
}
