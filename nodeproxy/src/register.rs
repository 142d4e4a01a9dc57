//! Registration with the master and the heartbeat that tells it what runs here.

use std::sync::Arc;

use shadow_common::{
    client::{ClientError, MasterClient},
    node::{Heartbeat, NodeRegistration},
};

use crate::lifecycle::Apps;

pub async fn heartbeat_loop(
    master: MasterClient,
    reg: NodeRegistration,
    apps: Arc<Apps>,
    every: std::time::Duration,
) {
    let mut registered = false;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if !registered {
            match master.register_node(&reg).await {
                Ok(_) => {
                    tracing::info!(node = %reg.id, address = %reg.address, master = %master.base_url(), "registered with the master");
                    registered = true;
                }
                Err(e) => tracing::warn!(error = %e, "cannot register with the master; retrying"),
            }
            continue;
        }
        let running = apps.running();
        let hb = Heartbeat {
            load: running.len() as f64 / f64::from(reg.capacity.max(1)),
            running,
        };
        match master.heartbeat(&reg.id, &hb).await {
            Ok(_) => {}
            Err(ClientError::Api { status, .. }) if status == 404 => {
                tracing::warn!("the master forgot this node; registering again");
                registered = false;
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat to the master failed"),
        }
    }
}
