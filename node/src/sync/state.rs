//! The anti-entropy state a node keeps between messages (when it last asked, answered, pulled),
//! held in `Shared`; the loops and handlers that use it are in the parent module.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lanpatch_protocol::Hash32;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A message is sent again at most this often. Gossipsub drops a message it saw within its
/// duplicate cache time (60 s), and its peer scoring keeps a delivery record of every message id
/// for 120 s (libp2p-gossipsub's `TIME_CACHE_DURATION`): a copy arriving between the two is
/// delivered again and logged at WARN ("Unexpected delivery trace") by every receiver. Past both,
/// a re-send is a fresh delivery and silent. Asks for a digest are limited to the same rate.
pub const RESEND_GAP: Duration = Duration::from_secs(150);

/// This node's anti-entropy state.
#[derive(Default)]
pub struct Sync {
    /// Notified when this node made a report or an inventory: its digest changed.
    pub changed: Arc<Notify>,
    /// Notified when a digest was asked for (the loop waits a random spread first).
    pub(super) asked: Notify,
    /// When a peer's arrival and a pull of everyone last asked for a digest.
    pub(super) peer_asked: Mutex<Option<Instant>>,
    pub(super) everyone_asked: Mutex<Option<Instant>>,
    /// When this collector last asked everyone for a digest.
    pub(super) pulled_everyone: Mutex<Option<Instant>>,
    /// When each of this node's messages was last sent again because it was pulled.
    answered: Mutex<HashMap<Answer, Instant>>,
    /// Releases whose latest report gossip did not send (no subscribed peer then).
    pub unsent: Arc<Mutex<std::collections::HashSet<Hash32>>>,
    /// Notified when a collector pulled the inventory: the inventory loop sends a fresh one.
    pub inventory_pulled: Notify,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sets `last` to now and returns true if it was unset or at least [`RESEND_GAP`] ago.
pub(super) fn take_turn(last: &Mutex<Option<Instant>>) -> bool {
    let mut last = lock(last);
    let now = Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < RESEND_GAP) {
        return false;
    }
    *last = Some(now);
    true
}

impl Sync {
    /// A peer became ready: it may be a collector or a ring peer that was away.
    pub fn peer_arrived(&self) {
        if take_turn(&self.peer_asked) {
            self.asked.notify_one();
        }
    }
}

/// What a pull can have sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Answer {
    Report(Hash32),
    Inventory,
}

/// True (and recorded) when `what` was not sent again within [`RESEND_GAP`].
pub(super) fn may_send_again(sync: &Sync, what: Answer) -> bool {
    let mut answered = lock(&sync.answered);
    let now = Instant::now();
    answered.retain(|_, t| now.duration_since(*t) < RESEND_GAP);
    if answered.contains_key(&what) {
        return false;
    }
    answered.insert(what, now);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_sent_again_at_most_once_per_resend_gap() {
        let sync = Sync::default();
        let (a, b) = (Answer::Report(Hash32([1; 32])), Answer::Report(Hash32([2; 32])));
        assert!(may_send_again(&sync, a));
        assert!(!may_send_again(&sync, a), "a second pull within the gap is not answered");
        assert!(may_send_again(&sync, b), "another message has its own turn");
        assert!(may_send_again(&sync, Answer::Inventory));
        assert!(!may_send_again(&sync, Answer::Inventory));
    }

    #[test]
    fn asks_for_a_digest_are_limited_to_one_per_resend_gap() {
        let last = Mutex::new(None);
        assert!(take_turn(&last));
        assert!(!take_turn(&last));
        *lock(&last) = Some(Instant::now() - RESEND_GAP);
        assert!(take_turn(&last), "past the gap a new ask is taken");
    }
}
