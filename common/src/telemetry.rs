//! Tracing set-up shared by the three programs: `SHADOW_LOG` (or `RUST_LOG`) picks the levels,
//! `SHADOW_LOG_FORMAT` the shape: `text` (the default; colours only on a terminal) or `json`
//! (one object per line, spans and their fields included, for log shippers).
//!
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, the spans
//! also go to that OpenTelemetry collector over OTLP/HTTP (JSON), and the request spans carry
//! W3C trace context from hop to hop ([`continue_trace`] on the way in, [`inject`] into what is
//! forwarded): one trace shows edge → node → app.

use std::{
    io::IsTerminal,
    sync::atomic::{AtomicBool, Ordering},
};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{fmt, layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};

/// The output shape `SHADOW_LOG_FORMAT` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Reads `SHADOW_LOG_FORMAT`; anything but `json` or `text` is an error naming both.
pub fn format_from_env() -> Result<Format, String> {
    match std::env::var("SHADOW_LOG_FORMAT").as_deref() {
        Err(_) | Ok("text") | Ok("") => Ok(Format::Text),
        Ok("json") => Ok(Format::Json),
        Ok(other) => Err(format!("SHADOW_LOG_FORMAT is {other:?}; use text or json")),
    }
}

/// Polls `fut` inside `span`, where the future lies. What `.instrument(span)` does, without
/// moving the future: `instrument` takes it by value into a wrapper, and awaiting the wrapper
/// moves it once more. A request's handling future is kilobytes (2.2 KB at the node), so on
/// the path every request takes each move was a copy of that size (issue 18). Unlike
/// `Instrumented`, the future is dropped outside the span.
pub fn in_span<'a, F: std::future::Future>(
    span: &'a tracing::Span,
    mut fut: std::pin::Pin<&'a mut F>,
) -> impl std::future::Future<Output = F::Output> + 'a {
    std::future::poll_fn(move |cx| {
        let _entered = span.enter();
        fut.as_mut().poll(cx)
    })
}

/// Whether spans are exported (so trace context is worth carrying).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Flushes the exported spans when dropped: keep it until the program ends.
#[must_use = "dropping it stops the span export"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()))
}

fn provider(service: &str) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpJson)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build())
}

/// Installs the global subscriber for program `service` (`shadow-edgeproxy`…); harmless if one
/// is installed already (tests). A bad `SHADOW_LOG_FORMAT` falls back to text and says so.
pub fn init(default_filter: &str, service: &str) -> Telemetry {
    let filter = std::env::var("SHADOW_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default_filter.to_string());
    let (format, bad) = match format_from_env() {
        Ok(f) => (f, None),
        Err(e) => (Format::Text, Some(e)),
    };
    let output = match format {
        Format::Json => fmt::layer()
            .with_target(false)
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        // Escape codes only where a person reads them, not in journald or a file.
        Format::Text => fmt::layer()
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal() && std::io::stdout().is_terminal())
            .boxed(),
    };
    let (provider, otlp_error) = if otlp_configured() {
        match provider(service) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    let otel = provider.as_ref().map(|p| {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing_opentelemetry::layer().with_tracer(p.tracer(service.to_owned()))
    });
    let installed = tracing_subscriber::registry()
        .with(EnvFilter::new(filter))
        .with(output)
        .with(otel)
        .try_init()
        .is_ok();
    if installed && provider.is_some() {
        EXPORTING.store(true, Ordering::Relaxed);
        tracing::info!("exporting spans over OTLP");
    }
    if let Some(e) = otlp_error {
        tracing::warn!("cannot export spans over OTLP ({e}); check OTEL_EXPORTER_OTLP_ENDPOINT");
    }
    if let Some(e) = bad {
        tracing::warn!("{e}");
    }
    Telemetry { provider }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(key), HeaderValue::from_str(&value)) {
            self.0.insert(k, v);
        }
    }
}

/// Whether spans are exported (and so forwarded requests carry this process's trace context).
pub fn is_exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Makes `span` part of the trace the request's `traceparent` names (when exporting).
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    if !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    let _ = span.set_parent(cx);
}

/// Writes the current span's trace context (`traceparent`) into headers being forwarded
/// (when exporting; otherwise a client's own `traceparent` passes through untouched).
pub fn inject(headers: &mut HeaderMap) {
    if !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeadersMut(headers));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// The span is the current one on every poll of the future, not only the first, and is
    /// left again between polls and after the end.
    #[tokio::test]
    async fn in_span_enters_the_span_on_every_poll() {
        let _default = tracing::subscriber::set_default(
            tracing_subscriber::registry().with(tracing_subscriber::filter::LevelFilter::INFO),
        );
        let current = || tracing::Span::current().metadata().map(|m| m.name());
        let span = tracing::info_span!("request");
        let work = std::pin::pin!(async {
            let first = current();
            tokio::task::yield_now().await;
            (first, current())
        });
        let polls = in_span(&span, work);
        assert_eq!(polls.await, (Some("request"), Some("request")));
        assert_eq!(current(), None, "the span is left once the future is done");
    }
}
