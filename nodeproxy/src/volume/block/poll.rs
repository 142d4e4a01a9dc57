//! Waiting on a cloud's state (a volume available, an action done) with backoff and a limit.

use std::{future::Future, time::Duration};

use tokio::time::Instant;

const FIRST: Duration = Duration::from_millis(100);
const MAX: Duration = Duration::from_secs(3);

/// Calls `check` until it yields `Some`, an error, or `limit` passes (an error naming `what`).
pub async fn until<T, E, F, Fut>(
    what: &str,
    limit: Duration,
    timeout: impl FnOnce(String) -> E,
    mut check: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    let deadline = Instant::now() + limit;
    let mut waits = shadow_common::backoff::Backoff::new(FIRST, MAX);
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(timeout(format!("{what} did not happen within {limit:?}")));
        }
        tokio::time::sleep(waits.next_delay()).await;
    }
}
