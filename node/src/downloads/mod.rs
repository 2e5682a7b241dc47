//! Downloads: one owner for the queue, the running set and their progress.
//!
//! - [`handle`]: the [`Downloads`](handle::Downloads) handle other tasks hold, and the
//!   [`View`](handle::View) they read. It imports nothing of the node, so `Shared` holds it.
//! - [`owner`]: the task that admits releases ([`admission`]: quota, free disk), queues them and
//!   starts them, most severe first.
//! - [`release`]: one release's swarm download (the [`Scheduler`](crate::sched::Scheduler)
//!   decides, it does the I/O), which reports its progress to the owner: a `Download` state
//!   with one method per event (a finished chunk request, a have-map answer, a round).
//! - [`origins`]: how a download sees its origins (which are still used, backoff, congestion
//!   told from failure): pure policy, unit-tested.

pub mod admission;
pub mod handle;
pub mod origins;
pub mod owner;
pub mod release;
