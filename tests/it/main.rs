//! lanpatch's integration tests: they drive the real binaries. One test binary (matklad's
//! "one integration test crate"), one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod console;
mod debian;
mod demo;
mod feeds;
mod fleet;
mod hardening;
mod hostile;
mod lab;
mod lifecycle;
mod membership;
mod metrics;
mod notify;
mod origin_server;
mod package;
mod rollout;
mod service;
mod signer;
mod sites;
mod support;
mod swarm;
mod tidy;
mod wan;
mod waves;
