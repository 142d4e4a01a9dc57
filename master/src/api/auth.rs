//! Bearer-token authentication for every route but `/healthz` and `/metrics`.

use warp::{Filter, Rejection};

#[derive(Debug)]
pub struct Unauthorized;
impl warp::reject::Reject for Unauthorized {}

/// Passes requests carrying `Authorization: Bearer <token>`; all requests if there is no token.
pub fn require(token: Option<String>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and_then(move |given: Option<String>| {
            let ok = match &token {
                None => true,
                Some(t) => given
                    .as_deref()
                    .and_then(|g| g.strip_prefix("Bearer "))
                    .is_some_and(|g| constant_time_eq(g.trim().as_bytes(), t.as_bytes())),
            };
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(warp::reject::custom(Unauthorized))
                }
            }
        })
        .untuple_one()
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
