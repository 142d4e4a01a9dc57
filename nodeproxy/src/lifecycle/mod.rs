//! The node's app life cycle: idle → starting → running ⇄ frozen → stopping → idle.
//!
//! Imports point one way, from the top down:
//! - [`apps`]: what the request path and the node ask of the apps (route, kick, sleep,
//!   reconcile, stop all);
//! - [`run`]: one run of an app, its start task and its supervisor; [`slot`]: an app's state;
//! - [`start`], [`freeze`], [`stop`]: the phases; [`migrate`], [`ready`], [`busy`],
//!   [`activity`], [`sandbox`] (network namespaces made ahead): what they use;
//! - [`context`]: what every phase needs; [`keepalive`]: how every phase races the lease;
//!   [`error`]: why a start failed.
//!
//! The container runtime and the volume backends are traits, so the state machine is tested
//! here with in-memory fakes and a paused clock; the end-to-end tests run it on Docker.

pub mod activity;
pub mod apps;
pub mod busy;
pub mod context;
pub mod error;
pub mod freeze;
pub mod keepalive;
pub mod migrate;
pub mod ready;
mod run;
pub mod sandbox;
mod slot;
pub mod start;
pub mod stop;

#[cfg(test)]
pub(crate) mod fakes;
#[cfg(test)]
mod tests;

pub use apps::{Apps, Kick, Route, Unavailable};
pub use context::AppContext;
pub use error::StartError;
