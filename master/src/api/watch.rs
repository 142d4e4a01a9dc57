//! `GET /watch`: the long poll clients follow to keep a local copy of the state.

use std::{sync::Arc, time::Duration};

use http::StatusCode;
use serde::Deserialize;
use warp::{filters::BoxedFilter, Filter};

use super::{reply, AppState};

#[derive(Deserialize)]
struct WatchQuery {
    #[serde(default)]
    since: u64,
    epoch: Option<String>,
    timeout_ms: Option<u64>,
}

/// Longer polls would outlive common proxy and client timeouts.
const MAX_WAIT_MS: u64 = 60_000;
const DEFAULT_WAIT_MS: u64 = 25_000;

pub fn routes(state: Arc<AppState>) -> BoxedFilter<(warp::reply::Response,)> {
    warp::path!("watch")
        .and(warp::get())
        .and(warp::query::<WatchQuery>())
        .then(move |q: WatchQuery| {
            let s = state.clone();
            async move {
                let wait =
                    Duration::from_millis(q.timeout_ms.unwrap_or(DEFAULT_WAIT_MS).min(MAX_WAIT_MS));
                let _counted = s.metrics.watching();
                let resp = s.registry.watch(q.epoch.as_deref(), q.since, wait).await;
                reply::json(StatusCode::OK, &resp)
            }
        })
        .boxed()
}
