//! `/tasks/`: the ancestor's task routes.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use shadow_common::task::TaskSpec;
use warp::{filters::BoxedFilter, Filter};

use super::{json_body, reply, AppState};

pub fn routes(state: Arc<AppState>) -> BoxedFilter<(warp::reply::Response,)> {
    let s = state.clone();
    let list = warp::path!("tasks")
        .and(warp::get())
        .map(move || reply::json(StatusCode::OK, &s.registry.list_tasks()));
    let s = state.clone();
    let create = warp::path!("tasks")
        .and(warp::post())
        .and(json_body())
        .map(move |body: Bytes| match TaskSpec::from_json(&body) {
            Ok(spec) => reply::from_result(StatusCode::CREATED, s.registry.create_task(spec)),
            Err(e) => reply::invalid(e),
        });
    let s = state.clone();
    let by_domain = warp::path!("tasks" / "by-domain" / String)
        .and(warp::get())
        .map(move |d: String| reply::from_result(StatusCode::OK, s.registry.task_by_domain(&d)));
    let s = state.clone();
    let get = warp::path!("tasks" / String)
        .and(warp::get())
        .map(move |id: String| reply::from_result(StatusCode::OK, s.registry.get_task(&id)));
    let s = state.clone();
    let update = warp::path!("tasks" / String)
        .and(warp::put())
        .and(json_body())
        .map(
            move |id: String, body: Bytes| match TaskSpec::from_json(&body) {
                Ok(spec) => reply::from_result(StatusCode::OK, s.registry.update_task(&id, spec)),
                Err(e) => reply::invalid(e),
            },
        );
    let s = state;
    let delete = warp::path!("tasks" / String)
        .and(warp::delete())
        .map(move |id: String| match s.registry.delete_task(&id) {
            Ok(()) => reply::no_content(),
            Err(e) => reply::registry_error(e),
        });
    list.or(create)
        .unify()
        .or(by_domain)
        .unify()
        .or(get)
        .unify()
        .or(update)
        .unify()
        .or(delete)
        .unify()
        .boxed()
}
