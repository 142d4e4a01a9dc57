//! The REST layer: routes, authentication and the mapping of errors to JSON.
//!
//! Handlers parse into a call on the [`Registry`] and turn its answer into a reply; nothing else
//! happens here. One file per resource.

mod acme;
mod auth;
mod control;
mod leases;
mod logs;
mod nodes;
mod reply;
mod tasks;
mod ui;
mod usage;
mod watch;

use std::{convert::Infallible, sync::Arc};

use http::StatusCode;
use warp::{filters::BoxedFilter, Filter, Rejection, Reply};

use crate::{metrics::Metrics, registry::Registry};

pub use reply::error_reply;

/// Shared by every handler.
pub struct AppState {
    pub registry: Arc<Registry>,
    /// `None` = no token required (the master then listens on loopback only).
    pub api_token: Option<String>,
    pub metrics: Metrics,
    /// For relaying an app's logs from its node.
    pub http: reqwest::Client,
    /// What each app used, per hour.
    pub usage: Arc<crate::usage::UsageLedger>,
}

/// Largest JSON body accepted; task specs are small.
const MAX_BODY: u64 = 1 << 20;

/// The whole API, ready for `warp::serve`; tests call it without a socket too.
pub fn routes(state: Arc<AppState>) -> BoxedFilter<(warp::reply::Response,)> {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| "ok\n".into_response());
    let metrics = {
        let state = state.clone();
        warp::path!("metrics")
            .and(warp::get())
            .map(move || state.metrics.render(&state.registry, &state.usage))
    };
    let api = auth::require(state.api_token.clone()).and(
        tasks::routes(state.clone())
            .or(nodes::routes(state.clone()))
            .unify()
            .or(leases::routes(state.clone()))
            .unify()
            .or(watch::routes(state.clone()))
            .unify()
            .or(acme::routes(state.clone()))
            .unify()
            .or(logs::routes(state.clone()))
            .unify()
            .or(control::routes(state.clone()))
            .unify()
            .or(usage::routes(state.clone()))
            .unify(),
    );
    let m = state.metrics.clone();
    healthz
        .or(metrics)
        .unify()
        .or(ui::routes(state.clone()))
        .unify()
        .or(api)
        .unify()
        .recover(recover)
        .unify()
        .with(warp::log::custom(move |info| {
            m.observe(info.method().as_str(), info.status().as_u16())
        }))
        .map(Reply::into_response)
        .boxed()
}

/// A JSON body, bounded in size, as raw bytes for [`shadow_common::error::parse_json`].
fn json_body() -> impl Filter<Extract = (bytes::Bytes,), Error = Rejection> + Clone {
    warp::body::content_length_limit(MAX_BODY).and(warp::body::bytes())
}

async fn recover(r: Rejection) -> Result<warp::reply::Response, Infallible> {
    use warp::reject::{InvalidQuery, LengthRequired, MethodNotAllowed, PayloadTooLarge};
    let (status, msg) = if r.find::<auth::Unauthorized>().is_some() {
        (
            StatusCode::UNAUTHORIZED,
            "missing or wrong API token: send Authorization: Bearer $SHADOW_API_TOKEN",
        )
    } else if r.is_not_found() {
        (
            StatusCode::NOT_FOUND,
            "no such route; see docs/openapi.json for the API",
        )
    } else if r.find::<PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body larger than 1 MiB",
        )
    } else if r.find::<LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "send the body with a Content-Length header",
        )
    } else if r.find::<MethodNotAllowed>().is_some() {
        // After the body checks: warp reports every other route's method refusal too, and a
        // 405 would hide that the body was the problem on the route that matched.
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this route; see docs/openapi.json",
        )
    } else if r.find::<InvalidQuery>().is_some() {
        (
            StatusCode::BAD_REQUEST,
            "invalid query string; see docs/openapi.json for the parameters",
        )
    } else {
        tracing::debug!(rejection = ?r, "unhandled rejection");
        (StatusCode::BAD_REQUEST, "bad request")
    };
    Ok(error_reply(
        status,
        shadow_common::error::ErrorBody::new(msg),
    ))
}
