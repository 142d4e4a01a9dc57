//! Helpers for Shadow's end-to-end tests: start the real programs in-process on loopback
//! sockets, build the test app's image, and wait for events instead of sleeping.
//!
//! # Layout
//! - [`master`]: a master on `127.0.0.1:0` with its own data dir, restartable.
//! - [`browser`]: headless Chromium driven through DevTools, for the dashboard.
//! - [`block`]: loop devices standing in for cloud block volumes (`ebs`, `do`).
//! - [`do_fake`]: a fake of DigitalOcean's volume API.
//! - [`moto`]: a moto server (fake AWS APIs) on a free loopback port, for the EC2 provider.
//! - [`node`]: a node proxy on `127.0.0.1:0` with the real Docker runtime and a unique node id.
//! - [`fixtures`]: the counter app as a task, unique domains, waiting until a stop finished.
//! - [`http`]: a small client that sets Host and streams bodies.
//! - [`image`]: the counter test app packed into a local `FROM scratch` image.
//! - [`postgres`]: a throwaway PostgreSQL cluster, for masters on `SHADOW_DATABASE_URL`.
//! - [`relay`]: a TCP relay that refuses or blackholes a link to the master on command.
//! - [`docker_events`]: Docker's record of a task's containers, to prove one ran at a time.

pub mod block;
pub mod browser;
pub mod do_fake;
pub mod docker_events;
pub mod edge;
pub mod fixtures;
pub mod http;
pub mod image;
pub mod master;
pub mod moto;
pub mod node;
pub mod pebble;
pub mod postgres;
pub mod procs;
pub mod registry;
pub mod relay;
pub mod s3;
