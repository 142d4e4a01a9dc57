//! The one rule every step of an app's life follows under its lease: when the lease runs out
//! (renewals did not get through in time) or is lost, the step ends at once, whatever it was
//! waiting for, so a node that may no longer hold the volume stops touching it.
//!
//! The renewals themselves are the node's [`crate::lease::LeaseSession`]; this module is how
//! the life cycle races its work against them.

use std::future::Future;

use crate::lease::Held;

/// Resolves when the app under `lease` must be killed; never for a task without one.
pub async fn runs_out(lease: Option<&Held>) {
    match lease {
        Some(l) => l.must_stop().await,
        None => std::future::pending().await,
    }
}

/// The lease ran out before the work under it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RanOut;

/// Runs `work` unless `lease` runs out first (a task without a lease always runs it to the end).
pub async fn under_lease<T>(
    lease: Option<&Held>,
    work: impl Future<Output = T>,
) -> Result<T, RanOut> {
    tokio::select! {
        v = work => Ok(v),
        () = runs_out(lease) => Err(RanOut),
    }
}
