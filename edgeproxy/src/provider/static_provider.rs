//! The `static` provider: machines are managed by hand, so it only says what to do.

use async_trait::async_trait;
use shadow_common::node::NodeStatus;

use super::{NodeProvider, ProviderError, Replacement};

/// Logs a warning naming the dead node; the replacer counts the call in its metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct StaticProvider;

#[async_trait]
impl NodeProvider for StaticProvider {
    async fn replace(&self, dead: &NodeStatus) -> Result<Replacement, ProviderError> {
        tracing::warn!(
            node = %dead.id,
            address = %dead.address,
            "node {} at {} is dead and the static provider starts no machines: start a node proxy on \
             another machine (it registers itself) and retire {}; or set SHADOW_NODE_PROVIDER to aws \
             or digitalocean to have the edge do it",
            dead.id,
            dead.address,
            dead.address,
        );
        Ok(Replacement::default())
    }

    fn name(&self) -> &'static str {
        "static"
    }
}
