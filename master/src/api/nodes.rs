//! `/nodes/`: node registration, heartbeats, the node list, removing dead nodes, and the apps'
//! states the nodes report.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use shadow_common::{
    error::parse_json,
    node::{Heartbeat, NodeRegistration},
    status::AppStatus,
};
use warp::{filters::BoxedFilter, Filter};

use super::{json_body, reply, AppState};

pub fn routes(state: Arc<AppState>) -> BoxedFilter<(warp::reply::Response,)> {
    let s = state.clone();
    let list = warp::path!("nodes")
        .and(warp::get())
        .map(move || reply::json(StatusCode::OK, &s.registry.list_nodes()));
    let s = state.clone();
    let register = warp::path!("nodes")
        .and(warp::post())
        .and(json_body())
        .then(move |body: Bytes| {
            let s = s.clone();
            async move {
                match parse_json::<NodeRegistration>(&body) {
                    Ok(reg) => {
                        reply::from_result(StatusCode::OK, s.registry.register_node(reg).await)
                    }
                    Err(e) => reply::invalid(e),
                }
            }
        });
    let s = state.clone();
    let delete = warp::path!("nodes" / String)
        .and(warp::delete())
        .then(move |id: String| {
            let s = s.clone();
            async move {
                match s.registry.delete_node(&id).await {
                    Ok(()) => reply::no_content(),
                    Err(e) => reply::registry_error(e),
                }
            }
        });
    let s = state.clone();
    let report = warp::path!("nodes" / String / "apps" / String)
        .and(warp::put())
        .and(json_body())
        .then(move |node: String, task: String, body: Bytes| {
            let s = s.clone();
            async move {
                match parse_json::<AppStatus>(&body) {
                    Ok(st) => match s.registry.report_app(&node, &task, st).await {
                        Ok(()) => reply::no_content(),
                        Err(e) => reply::registry_error(e),
                    },
                    Err(e) => reply::invalid(e),
                }
            }
        });
    let s = state;
    let heartbeat = warp::path!("nodes" / String / "heartbeat")
        .and(warp::put())
        .and(json_body())
        .then(move |id: String, body: Bytes| {
            let s = s.clone();
            async move {
                match parse_json::<Heartbeat>(&body) {
                    Ok(hb) => {
                        reply::from_result(StatusCode::OK, s.registry.heartbeat(&id, hb).await)
                    }
                    Err(e) => reply::invalid(e),
                }
            }
        });
    list.or(register)
        .unify()
        .or(delete)
        .unify()
        .or(heartbeat)
        .unify()
        .or(report)
        .unify()
        .boxed()
}
