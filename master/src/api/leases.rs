//! `/leases/`: taking, renewing and releasing a task's volume lease; `/nodes/{id}/renew`: a
//! node's session, renewing all its leases in one call.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use shadow_common::{
    error::{parse_json, FieldError},
    lease::{LeaseRenewal, LeaseRequest, SessionRenewal},
};
use warp::{filters::BoxedFilter, Filter};

use super::{json_body, reply, AppState};

/// Read by hand rather than by `warp::query::<T>()`: a failed typed query on this path would be
/// reported as 405 (another method's rejection wins), where the client needs a 400 naming `token`.
#[derive(Deserialize)]
struct ReleaseQuery {
    token: Option<String>,
}

fn release_token(q: &ReleaseQuery) -> Result<u64, FieldError> {
    q.token
        .as_deref()
        .and_then(|t| t.parse::<u64>().ok())
        .ok_or_else(|| {
            FieldError::new(
                "token",
                "pass the lease's token as ?token=N (the number acquire returned)",
            )
        })
}

pub fn routes(state: Arc<AppState>) -> BoxedFilter<(warp::reply::Response,)> {
    let s = state.clone();
    let list = warp::path!("leases")
        .and(warp::get())
        .map(move || reply::json(StatusCode::OK, &s.registry.list_leases()));
    let s = state.clone();
    let get = warp::path!("leases" / String)
        .and(warp::get())
        .map(move |task: String| reply::from_result(StatusCode::OK, s.registry.get_lease(&task)));
    let s = state.clone();
    let acquire = warp::path!("leases" / String)
        .and(warp::post())
        .and(json_body())
        .then(move |task: String, body: Bytes| {
            let s = s.clone();
            async move {
                match parse_json::<LeaseRequest>(&body) {
                    Ok(req) => reply::from_result(
                        StatusCode::OK,
                        s.registry.acquire_lease(&task, req).await,
                    ),
                    Err(e) => reply::invalid(e),
                }
            }
        });
    let s = state.clone();
    let renew = warp::path!("leases" / String)
        .and(warp::put())
        .and(json_body())
        .then(move |task: String, body: Bytes| {
            let s = s.clone();
            async move {
                match parse_json::<LeaseRenewal>(&body) {
                    Ok(req) => {
                        reply::from_result(StatusCode::OK, s.registry.renew_lease(&task, req).await)
                    }
                    Err(e) => reply::invalid(e),
                }
            }
        });
    let s = state.clone();
    let session = warp::path!("nodes" / String / "renew")
        .and(warp::post())
        .and(json_body())
        .then(move |node: String, body: Bytes| {
            let s = s.clone();
            async move {
                match parse_json::<SessionRenewal>(&body) {
                    Ok(req) => reply::from_result(
                        StatusCode::OK,
                        s.registry.renew_session(&node, req).await,
                    ),
                    Err(e) => reply::invalid(e),
                }
            }
        });
    let s = state;
    let release = warp::path!("leases" / String)
        .and(warp::delete())
        .and(warp::query::<ReleaseQuery>())
        .then(move |task: String, q: ReleaseQuery| {
            let s = s.clone();
            async move {
                let token = match release_token(&q) {
                    Ok(t) => t,
                    Err(e) => return reply::invalid(e),
                };
                match s.registry.release_lease(&task, token).await {
                    Ok(()) => reply::no_content(),
                    Err(e) => reply::registry_error(e),
                }
            }
        });
    list.or(get)
        .unify()
        .or(acquire)
        .unify()
        .or(renew)
        .unify()
        .or(release)
        .unify()
        .or(session)
        .unify()
        .boxed()
}
