//! Keeps a running app's lease alive, and signals the app to stop the moment it is lost.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use shadow_common::client::{ClientError, MasterClient};
use tokio::time::Instant;

use crate::{apps::AppContext, start::Running, volume::FenceCheck};

pub async fn keep(ctx: Arc<AppContext>, running: Arc<Running>, token: u64) {
    let ttl = ctx.config.lease_ttl();
    let task = &running.task.id;
    // Renew at a third of the TTL: two renewals may fail before the lease lapses.
    let every = ttl / 3;
    let mut valid_until = Instant::now() + ttl;
    loop {
        tokio::time::sleep(every).await;
        match ctx.master.renew_lease(task, token, ttl).await {
            Ok(_) => valid_until = Instant::now() + ttl,
            Err(ClientError::LeaseConflict { message, .. }) => {
                tracing::error!(task = %task, token, %message, "lease lost; stopping the app at once");
                running.lost.notify_one();
                return;
            }
            Err(e) => {
                // Leave a margin: our clock and the master's are not the same clock.
                if Instant::now() + Duration::from_millis(200) >= valid_until {
                    tracing::error!(task = %task, error = %e, "could not renew the lease before it lapsed; stopping the app");
                    running.lost.notify_one();
                    return;
                }
                tracing::warn!(task = %task, error = %e, "lease renewal failed; retrying");
            }
        }
    }
}

/// Fencing by the master: renewing the lease with our token succeeds only while it is the newest.
pub struct MasterFence {
    pub master: MasterClient,
    pub ttl: Duration,
}

#[async_trait]
impl FenceCheck for MasterFence {
    async fn still_current(&self, task_id: &str, token: u64) -> Result<(), String> {
        self.master
            .renew_lease(task_id, token, self.ttl)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}
