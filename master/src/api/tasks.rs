//! `/tasks/`: the ancestor's task routes. Every answer is redacted: secret values never leave
//! the master here (only the watch stream carries them, to nodes).

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use http::StatusCode;
use shadow_common::{
    error::parse_json,
    task::{Task, TaskSpec},
};
use warp::{filters::BoxedFilter, Filter};

use super::{json_body, reply, AppState};

/// A task in the list, with its one-word state.
#[derive(serde::Serialize)]
struct Listed {
    #[serde(flatten)]
    task: Task,
    state: shadow_common::status::AppState,
}

/// `POST /tasks/{id}/migrated`: the node holding lease `token` moved the data.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Migrated {
    token: u64,
}

pub fn routes(state: Arc<AppState>) -> BoxedFilter<(warp::reply::Response,)> {
    let s = state.clone();
    let list = warp::path!("tasks").and(warp::get()).map(move || {
        let tasks: Vec<Listed> = s
            .registry
            .list_tasks()
            .into_iter()
            .map(|t| Listed {
                state: s.registry.task_state(&t.id),
                task: t.redacted(),
            })
            .collect();
        reply::json(StatusCode::OK, &tasks)
    });
    let s = state.clone();
    let status = warp::path!("tasks" / String / "status")
        .and(warp::get())
        .map(move |id: String| reply::from_result(StatusCode::OK, s.registry.task_status(&id)));
    let s = state.clone();
    let create = warp::path!("tasks")
        .and(warp::post())
        .and(json_body())
        .map(move |body: Bytes| match TaskSpec::from_json(&body) {
            Ok(spec) => reply::from_result(
                StatusCode::CREATED,
                s.registry.create_task(spec).map(Task::redacted),
            ),
            Err(e) => reply::invalid(e),
        });
    let s = state.clone();
    let by_domain = warp::path!("tasks" / "by-domain" / String)
        .and(warp::get())
        .map(move |d: String| {
            reply::from_result(
                StatusCode::OK,
                s.registry.task_by_domain(&d).map(Task::redacted),
            )
        });
    let s = state.clone();
    let get = warp::path!("tasks" / String)
        .and(warp::get())
        .map(move |id: String| {
            reply::from_result(StatusCode::OK, s.registry.get_task(&id).map(Task::redacted))
        });
    let s = state.clone();
    let update = warp::path!("tasks" / String)
        .and(warp::put())
        .and(warp::query::<HashMap<String, String>>())
        .and(json_body())
        .map(move |id: String, q: HashMap<String, String>, body: Bytes| {
            let migrate = q.get("migrate").is_some_and(|v| v == "true");
            match TaskSpec::from_json(&body) {
                Ok(spec) => reply::from_result(
                    StatusCode::OK,
                    s.registry
                        .update_task(&id, spec, migrate)
                        .map(Task::redacted),
                ),
                Err(e) => reply::invalid(e),
            }
        });
    let s = state.clone();
    let migrated = warp::path!("tasks" / String / "migrated")
        .and(warp::post())
        .and(json_body())
        .map(
            move |id: String, body: Bytes| match parse_json::<Migrated>(&body) {
                Ok(m) => reply::from_result(
                    StatusCode::OK,
                    s.registry.task_migrated(&id, m.token).map(Task::redacted),
                ),
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
        .or(migrated)
        .unify()
        .or(status)
        .unify()
        .or(delete)
        .unify()
        .boxed()
}
