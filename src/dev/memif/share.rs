//! One memif connection's queue pairs served by several threads (per-core shards).
//!
//! The device that owns the control socket (the *owner*) runs the handshake. When the link comes
//! up it splits the data path by queue pair, keeps the first, and publishes the others here, one
//! slot per *member* device; each member runs on a thread of its own and serves only its queue
//! pair. Members look at [`QueueShare::changed`] once per burst: one load of a word that is
//! written only when the link comes up or goes down, so in steady state the line stays in every
//! core's cache and nothing on the packet path is locked. The slots' mutexes are taken only on
//! those changes.
//!
//! Teardown: the owner takes back what members did not pick up and bumps the generation;
//! each member drops its part at its next burst. Until then it may still touch the peer's rings,
//! which stay mapped because every part holds its own references to the regions. A member that
//! finds its peer writing corrupt ring indexes cannot end the connection itself (the control
//! socket is the owner's): it drops its part and raises [`QueueShare::report_fault`], and the
//! owner disconnects at its next control turn.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Parts of a connection handed from the owner to its members (see the module docs).
pub(super) struct QueueShare<T> {
    generation: AtomicU64,
    /// Slot `i - 1` is member `i`'s (the owner is member 0 and keeps its part).
    slots: Box<[Mutex<Option<T>>]>,
    fault: AtomicBool,
}

impl<T> QueueShare<T> {
    /// A share for the owner and `members` members.
    pub(super) fn new(members: usize) -> QueueShare<T> {
        QueueShare {
            generation: AtomicU64::new(0),
            slots: (0..members).map(|_| Mutex::new(None)).collect(),
            fault: AtomicBool::new(false),
        }
    }

    fn slot(&self, member: usize) -> MutexGuard<'_, Option<T>> {
        // A panic while holding the lock leaves an Option, which is always consistent.
        self.slots[member - 1]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Members, the owner not counted.
    pub(super) fn members(&self) -> usize {
        self.slots.len()
    }

    /// Hands `parts[i]` to member `i + 1` (None: nothing for it this time) and tells them.
    pub(super) fn publish(&self, parts: impl IntoIterator<Item = Option<T>>) {
        for (i, p) in parts.into_iter().enumerate().take(self.slots.len()) {
            *self.slot(i + 1) = p;
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Takes back every part not picked up yet and tells the members to drop theirs.
    pub(super) fn retract(&self) {
        for m in 1..=self.slots.len() {
            drop(self.slot(m).take());
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// True once per publish or retract since `seen` (which it updates): the member must then
    /// drop its part and [`take`](Self::take) its new one.
    #[inline]
    pub(super) fn changed(&self, seen: &mut u64) -> bool {
        let g = self.generation.load(Ordering::Acquire);
        if g == *seen {
            return false;
        }
        *seen = g;
        true
    }

    /// Member `member`'s part, if the owner published one and did not take it back.
    pub(super) fn take(&self, member: usize) -> Option<T> {
        self.slot(member).take()
    }

    /// A member saw its peer break the protocol: the owner should end the connection.
    pub(super) fn report_fault(&self) {
        self.fault.store(true, Ordering::Release);
    }

    /// For the owner: whether a member reported a fault since the last call.
    #[inline]
    pub(super) fn take_fault(&self) -> bool {
        self.fault.load(Ordering::Relaxed) && self.fault.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn members_see_each_publish_and_retract_once() {
        let s = QueueShare::<u32>::new(2);
        let mut seen = [0u64; 2];
        assert!(!s.changed(&mut seen[0]));
        s.publish([Some(10), None]);
        assert!(s.changed(&mut seen[0]));
        assert!(!s.changed(&mut seen[0]));
        assert_eq!(s.take(1), Some(10));
        assert_eq!(s.take(1), None);
        assert!(s.changed(&mut seen[1]));
        assert_eq!(s.take(2), None);
        s.retract();
        assert!(s.changed(&mut seen[0]));
        assert!(s.changed(&mut seen[1]));
    }

    #[test]
    fn a_part_not_picked_up_before_a_retract_is_never_picked_up() {
        let s = QueueShare::<u32>::new(1);
        let mut seen = 0;
        s.publish([Some(1)]);
        s.retract();
        assert!(s.changed(&mut seen));
        assert_eq!(s.take(1), None);
    }

    #[test]
    fn a_fault_is_reported_once() {
        let s = QueueShare::<u32>::new(1);
        assert!(!s.take_fault());
        s.report_fault();
        assert!(s.take_fault());
        assert!(!s.take_fault());
    }

    #[test]
    fn a_member_thread_picks_up_what_the_owner_publishes() {
        let s = Arc::new(QueueShare::<Vec<u64>>::new(1));
        let m = Arc::clone(&s);
        let member = std::thread::spawn(move || {
            let mut seen = 0;
            let mut got = Vec::new();
            while got.len() < 3 {
                if m.changed(&mut seen) {
                    if let Some(v) = m.take(1) {
                        got.push(v);
                    }
                }
                std::hint::spin_loop();
            }
            got
        });
        let mut sent = 0u64;
        while !member.is_finished() {
            s.publish([Some(vec![sent; 8])]);
            sent += 1;
            std::thread::yield_now();
        }
        let got = member.join().unwrap();
        // Every part seen whole (no torn hand-over), in publishing order.
        assert!(got
            .iter()
            .all(|v| v.len() == 8 && v.iter().all(|&b| b == v[0])));
        assert!(got.windows(2).all(|w| w[0][0] < w[1][0]));
    }
}
