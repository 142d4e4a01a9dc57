//! `/usage`: nodes report what their apps used (`POST`), people and scripts read it per app
//! and hour (`GET ?task=&from=&to=`, unix seconds, `from` inclusive, `to` exclusive).

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use http::StatusCode;
use shadow_common::{
    error::{parse_json, ErrorBody, FieldError},
    usage::{UsageReport, UsageRow},
};
use warp::{filters::BoxedFilter, Filter};

use super::{json_body, reply, AppState};
use crate::usage::UsageLedger;

pub fn routes(state: Arc<AppState>) -> BoxedFilter<(warp::reply::Response,)> {
    let s = state.clone();
    let report = warp::path!("usage")
        .and(warp::post())
        .and(json_body())
        .then(move |body: Bytes| {
            let s = s.clone();
            async move { report(&s, &body).await }
        });
    let get = warp::path!("usage")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .then(move |q: HashMap<String, String>| {
            let s = state.clone();
            async move { query(&s, &q).await }
        });
    report.or(get).unify().boxed()
}

fn store_failed(e: impl std::fmt::Display) -> warp::reply::Response {
    reply::error_reply(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorBody::new(format!(
            "cannot use the usage database: {e}; retry, and check the master's disk"
        )),
    )
}

async fn report(s: &AppState, body: &[u8]) -> warp::reply::Response {
    let report: UsageReport = match parse_json(body) {
        Ok(r) => r,
        Err(e) => return reply::invalid(e),
    };
    if let Err(e) = UsageLedger::check(&report) {
        return reply::invalid(e);
    }
    if !s.registry.list_nodes().iter().any(|n| n.id == report.node) {
        return reply::error_reply(
            StatusCode::NOT_FOUND,
            ErrorBody::new(format!(
                "node {:?} is not registered; register it with POST /nodes/ first",
                report.node
            )),
        );
    }
    match s.usage.apply(report).await {
        Ok(added) => reply::json(StatusCode::OK, &serde_json::json!({ "added": added })),
        Err(e) => store_failed(e),
    }
}

fn seconds(q: &HashMap<String, String>, name: &str) -> Result<Option<u64>, FieldError> {
    q.get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                FieldError::new(
                    name,
                    format!("{name} must be unix seconds, e.g. 1764201600"),
                )
            })
        })
        .transpose()
}

async fn query(s: &AppState, q: &HashMap<String, String>) -> warp::reply::Response {
    let (from, to) = match (seconds(q, "from"), seconds(q, "to")) {
        (Ok(f), Ok(t)) => (f.unwrap_or(0), t.unwrap_or(u64::MAX)),
        (Err(e), _) | (_, Err(e)) => return reply::invalid(e),
    };
    let task = q.get("task").filter(|t| !t.is_empty()).cloned();
    let names: HashMap<String, String> = s
        .registry
        .list_tasks()
        .into_iter()
        .map(|t| (t.id, t.spec.name))
        .collect();
    // A name is accepted for a task that still exists.
    let task = task.map(|t| {
        if names.contains_key(&t) {
            return t;
        }
        names
            .iter()
            .find(|(_, name)| **name == t)
            .map_or(t.clone(), |(id, _)| id.clone())
    });
    let rows = match s.usage.query(task, from, to).await {
        Ok(rows) => rows,
        Err(e) => return store_failed(e),
    };
    let rows: Vec<UsageRow> = rows
        .iter()
        .map(|d| UsageRow::from_delta(d, names.get(&d.task_id).cloned()))
        .collect();
    reply::json(StatusCode::OK, &rows)
}
