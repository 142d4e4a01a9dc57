//! Why a start failed, and whether trying again at once would fail the same way.

use std::time::Duration;

use shadow_common::client::ClientError;

use crate::{lease::AcquireError, runtime::RuntimeError, volume::VolumeError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("node {holder} holds the task's volume lease; its requests belong there")]
    LeaseHeld { holder: String },
    #[error("cannot take the task's lease: {0}")]
    Master(#[from] ClientError),
    #[error("cannot take the task's lease: {0}")]
    Acquire(#[from] AcquireError),
    #[error(
        "the task's lease ran out during the start (the master did not answer renewals in time)"
    )]
    LeaseLost,
    #[error(transparent)]
    OverBudget(#[from] crate::budget::OverBudget),
    #[error("this node's policy refuses the task: {0}")]
    Policy(String),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("the container exited before it answered ({status}); its last log lines:\n{logs}")]
    Exited { status: String, logs: String },
    #[error("the app did not answer on port {port} within start_timeout_s ({limit:?}); check that it listens on 0.0.0.0:{port} (the task's port, also in $PORT)")]
    Timeout { limit: Duration, port: u16 },
    #[error("moving the app's data to its new volume failed: {0}")]
    Migration(String),
    #[error("the app listens on port {listening} but not on port {port}, the task's port (also in $PORT); set the task's port to the one the app uses, or make the app listen on $PORT")]
    WrongPort { port: u16, listening: String },
}

impl StartError {
    /// Whether the app (its image, spec or data) made the start fail, so trying again at once
    /// would fail the same way: such failures back off. Not so for a lease held elsewhere, an
    /// unreachable master or a full node.
    pub fn backs_off(&self) -> bool {
        !matches!(
            self,
            StartError::LeaseHeld { .. }
                | StartError::Master(_)
                | StartError::Acquire(_)
                | StartError::LeaseLost
                | StartError::OverBudget(_)
        )
    }

    /// The last lines the app wrote before it failed, when the error carries them.
    pub fn logs(&self) -> Option<&str> {
        match self {
            StartError::Exited { logs, .. }
            | StartError::Runtime(RuntimeError::ExitedAtStart { logs, .. }) => Some(logs),
            _ => None,
        }
    }
}
