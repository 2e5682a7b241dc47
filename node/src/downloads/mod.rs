//! Downloads: one owner for the queue, the running set and their progress.
//!
//! - [`handle`]: the [`Downloads`](handle::Downloads) handle other tasks hold, and the
//!   [`View`](handle::View) they read. It imports nothing of the node, so `Shared` holds it.
//! - [`owner`]: the task that admits releases ([`admission`]: quota, free disk), queues them and
//!   starts them, most severe first.
//! - [`release`]: one release's swarm download (the [`Scheduler`](crate::sched::Scheduler)
//!   decides, it does the I/O), driven by events, which reports its progress to the owner;
//!   [`maps`]: the peers' have-maps (subscriptions, pushed; polls for earlier versions and
//!   other sites); [`upstream`]: the site's origin work and the origin's health; [`fetch`]: one
//!   chunk request and its check against the manifest.
//! - [`holders`]: while this node seeds a release it published, it follows its peers' have-maps
//!   so the seed names only holders that announced a chunk.

pub mod admission;
pub mod fetch;
pub mod handle;
pub mod holders;
pub mod maps;
pub mod owner;
pub mod release;
pub mod upstream;
