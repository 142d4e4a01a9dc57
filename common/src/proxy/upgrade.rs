//! The tunnel behind a `101 Switching Protocols`: WebSocket or any other upgraded protocol.
//!
//! The 101 goes back to the client first; only then does hyper hand over the client's
//! connection, so the splice runs in its own task. That task owns the [`ActivityGuard`], which is
//! how a caller learns the tunnel has closed: the guard drops when the task ends.

use std::net::SocketAddr;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::{ActivityGuard, ByteCounts};

/// Spawns the task that waits for both sides to upgrade and copies bytes between them until both
/// directions are closed. No timeout: an idle WebSocket is legitimately open.
pub(crate) fn spawn_tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    upstream_addr: SocketAddr,
    request_id: String,
    guard: Option<ActivityGuard>,
    counts: Option<std::sync::Arc<ByteCounts>>,
) {
    tokio::spawn(async move {
        // Owned here so it drops exactly when the tunnel is over, however it ends.
        let _guard = guard;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(error) => {
                // Usually the client left before the 101 reached it; dropping the other side
                // closes it.
                debug!(%upstream_addr, %request_id, %error, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((sent, received)) => {
                // Client to upstream is what the proxy received; upstream to client, sent.
                ByteCounts::add_received(counts.as_deref(), sent as usize);
                ByteCounts::add_sent(counts.as_deref(), received as usize);
                debug!(%upstream_addr, %request_id, sent, received, "upgraded tunnel closed");
            }
            Err(error) => {
                // A reset from either side is how many tunnels end; nothing to act on.
                debug!(%upstream_addr, %request_id, %error, "upgraded tunnel ended with an error");
            }
        }
    });
}
