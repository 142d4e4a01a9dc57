//! `/acme/`: the records edges keep for automatic certificates (account, certificates,
//! challenges, ordering status); `/certificates`: each domain's status, for people.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use http::StatusCode;
use shadow_common::{acme::AcmeRecord, error::parse_json};
use warp::{filters::BoxedFilter, Filter};

use super::{json_body, reply, AppState};

pub fn routes(state: Arc<AppState>) -> BoxedFilter<(warp::reply::Response,)> {
    let s = state.clone();
    let statuses = warp::path!("certificates")
        .and(warp::get())
        .map(move || reply::json(StatusCode::OK, &s.registry.cert_statuses()));
    let s = state.clone();
    let get_account = warp::path!("acme" / "account")
        .and(warp::get())
        .map(move || reply::from_result(StatusCode::OK, s.registry.acme_account()));
    let s = state.clone();
    let put_account = warp::path!("acme" / "account")
        .and(warp::put())
        .and(warp::query::<HashMap<String, String>>())
        .and(json_body())
        .then(move |q: HashMap<String, String>, body: Bytes| {
            let s = s.clone();
            async move {
                match parse_json::<serde_json::Value>(&body) {
                    Ok(creds) => {
                        let replace = q.get("replace").is_some_and(|v| v == "true");
                        reply::from_result(
                            StatusCode::OK,
                            s.registry.put_acme_account(creds, replace).await,
                        )
                    }
                    Err(e) => reply::invalid(e),
                }
            }
        });
    let s = state.clone();
    let get = warp::path!("acme" / String / String).and(warp::get()).map(
        move |kind: String, name: String| {
            reply::from_result(StatusCode::OK, s.registry.get_acme(&kind, &name))
        },
    );
    let s = state.clone();
    let put = warp::path!("acme" / String / String)
        .and(warp::put())
        .and(json_body())
        .then(move |kind: String, name: String, body: Bytes| {
            let s = s.clone();
            async move {
                match parse_json::<AcmeRecord>(&body) {
                    Ok(r) => reply::from_result(
                        StatusCode::OK,
                        s.registry.put_acme(&kind, &name, r).await,
                    ),
                    Err(e) => reply::invalid(e),
                }
            }
        });
    let s = state;
    let delete = warp::path!("acme" / String / String)
        .and(warp::delete())
        .then(move |kind: String, name: String| {
            let s = s.clone();
            async move {
                match s.registry.delete_acme(&kind, &name).await {
                    Ok(()) => reply::no_content(),
                    Err(e) => reply::registry_error(e),
                }
            }
        });
    statuses
        .or(get_account)
        .unify()
        .or(put_account)
        .unify()
        .or(get)
        .unify()
        .or(put)
        .unify()
        .or(delete)
        .unify()
        .boxed()
}
