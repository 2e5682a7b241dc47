//! lanpatch's integration tests: they drive the real binaries. One test binary (matklad's
//! "one integration test crate"), one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod demo;
mod fleet;
mod lab;
mod signer;
mod support;
mod swarm;
