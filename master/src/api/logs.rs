//! `GET /tasks/{id}/logs`: the app's output, relayed from the node that runs it or ran it last
//! (clients never talk to nodes). JSON lines; `follow=true` keeps the answer open for new ones.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use futures_util::StreamExt;
use http::StatusCode;
use shadow_common::error::ErrorBody;
use warp::{filters::BoxedFilter, Filter, Reply};

use super::{reply, AppState};

/// Chunks from the node, through a channel: warp wants a `Sync` stream, reqwest's is not.
struct Chunks(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures_util::Stream for Chunks {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

pub fn routes(state: Arc<AppState>) -> BoxedFilter<(warp::reply::Response,)> {
    warp::path!("tasks" / String / "logs")
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .then(move |id: String, q: HashMap<String, String>| {
            let state = state.clone();
            async move { relay(&state, &id, &q).await }
        })
        .boxed()
}

pub(super) async fn relay(
    state: &AppState,
    id: &str,
    q: &HashMap<String, String>,
) -> warp::reply::Response {
    let tail: usize = match q.get("tail").map(|t| t.parse()) {
        None => 100,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return reply::error_reply(
                StatusCode::BAD_REQUEST,
                ErrorBody {
                    error: "tail must be a number of lines".into(),
                    field: Some("tail".into()),
                    holder: None,
                },
            )
        }
    };
    let follow = q.get("follow").is_some_and(|f| f == "true");
    let address = match state.registry.log_source(id) {
        Ok(a) => a,
        Err(e) => return reply::registry_error(e),
    };
    let url = format!("http://{address}/_shadow/logs/{id}?tail={tail}&follow={follow}");
    let mut req = state.http.get(&url);
    if let Some(t) = &state.api_token {
        req = req.bearer_auth(t);
    }
    let resp = match req
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(task = id, node = %address, error = %e, "cannot relay the app's logs");
            return reply::error_reply(
                StatusCode::BAD_GATEWAY,
                ErrorBody::new(format!(
                    "the node that has the app's output ({address}) did not answer; try again, or check GET /nodes/"
                )),
            );
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(std::io::Error::other);
            let failed = chunk.is_err();
            // The client went away: stop reading from the node.
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
        }
    });
    let mut r = warp::reply::stream(Chunks(rx)).into_response();
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    r
}
