//! `/tasks/`: the ancestor's task routes. Every answer is redacted: secret values never leave
//! the master here (only the watch stream carries them, to nodes).

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use http::StatusCode;
use shadow_common::{
    error::{parse_json, FieldError},
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

/// Stores a new spec from a PUT or PATCH (`?migrate=true` lets the volume kind change).
async fn updated(
    s: &AppState,
    id: &str,
    q: &HashMap<String, String>,
    spec: Result<TaskSpec, FieldError>,
) -> warp::reply::Response {
    let migrate = q.get("migrate").is_some_and(|v| v == "true");
    match spec {
        Ok(spec) => reply::from_result(
            StatusCode::OK,
            s.registry
                .update_task(id, spec, migrate)
                .await
                .map(Task::redacted),
        ),
        Err(e) => reply::invalid(e),
    }
}

/// A PUT body: a TaskSpec, or the Task a GET answered (its `id` must be this one's).
fn put_spec(id: &str, body: &[u8]) -> Result<TaskSpec, FieldError> {
    let mut value: serde_json::Value = parse_json(body)?;
    without_id(id, &mut value)?;
    TaskSpec::from_json(&serde_json::to_vec(&value).unwrap_or_default())
}

fn without_id(id: &str, value: &mut serde_json::Value) -> Result<(), FieldError> {
    if let Some(sent) = value.as_object_mut().and_then(|o| o.remove("id")) {
        if sent.as_str() != Some(id) {
            return Err(FieldError::new(
                "id",
                format!(
                    "the body is task {sent}, not {id}; send it to its own URL or leave id out"
                ),
            ));
        }
    }
    Ok(())
}

/// `PATCH`: the task's spec with the body merged in (RFC 7396: a member replaces, `null`
/// removes, so a field goes back to its default), validated as a whole.
fn patched_spec(current: &Task, body: &[u8]) -> Result<TaskSpec, FieldError> {
    let mut patch: serde_json::Value = parse_json(body)?;
    without_id(&current.id, &mut patch)?;
    let mut spec =
        serde_json::to_value(&current.spec).map_err(|e| FieldError::new("body", e.to_string()))?;
    json_patch::merge(&mut spec, &patch);
    TaskSpec::from_json(&serde_json::to_vec(&spec).unwrap_or_default())
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
        .then(move |body: Bytes| {
            let s = s.clone();
            async move {
                match TaskSpec::from_json(&body) {
                    Ok(spec) => reply::from_result(
                        StatusCode::CREATED,
                        s.registry.create_task(spec).await.map(Task::redacted),
                    ),
                    Err(e) => reply::invalid(e),
                }
            }
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
        .then(move |id: String, q: HashMap<String, String>, body: Bytes| {
            let s = s.clone();
            async move { updated(&s, &id, &q, put_spec(&id, &body)).await }
        });
    let s = state.clone();
    let patch = warp::path!("tasks" / String)
        .and(warp::patch())
        .and(warp::query::<HashMap<String, String>>())
        .and(json_body())
        .then(move |id: String, q: HashMap<String, String>, body: Bytes| {
            let s = s.clone();
            async move {
                match s.registry.get_task(&id) {
                    Ok(t) => updated(&s, &id, &q, patched_spec(&t.redacted(), &body)).await,
                    Err(e) => reply::registry_error(e),
                }
            }
        });
    let s = state.clone();
    let restart = warp::path!("tasks" / String / "restart")
        .and(warp::post())
        .then(move |id: String| {
            let s = s.clone();
            async move {
                reply::from_result(
                    StatusCode::OK,
                    s.registry.restart_task(&id).await.map(Task::redacted),
                )
            }
        });
    let s = state.clone();
    let migrated = warp::path!("tasks" / String / "migrated")
        .and(warp::post())
        .and(json_body())
        .then(move |id: String, body: Bytes| {
            let s = s.clone();
            async move {
                match parse_json::<Migrated>(&body) {
                    Ok(m) => reply::from_result(
                        StatusCode::OK,
                        s.registry
                            .task_migrated(&id, m.token)
                            .await
                            .map(Task::redacted),
                    ),
                    Err(e) => reply::invalid(e),
                }
            }
        });
    let s = state;
    let delete = warp::path!("tasks" / String)
        .and(warp::delete())
        .then(move |id: String| {
            let s = s.clone();
            async move {
                match s.registry.delete_task(&id).await {
                    Ok(()) => reply::no_content(),
                    Err(e) => reply::registry_error(e),
                }
            }
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
        .or(patch)
        .unify()
        .or(restart)
        .unify()
        .or(status)
        .unify()
        .or(delete)
        .unify()
        .boxed()
}
