//! Several stacks on one link, one per core (per-core shards): what they share.
//!
//! Each per-core shard runs its own [`Stack`](super::Stack) over its own device queue, with the
//! same address, and owns the connections whose frames its queue receives: the shard that gets
//! a connection's SYN serves it. Two things cross shards, and neither takes a lock:
//!
//! - **ARP.** The link delivers ARP to one queue (a NIC's RSS and memif's flow hash send
//!   everything that is not IPv4 TCP/UDP to queue 0), but every shard needs its peers' hardware
//!   addresses to answer. The shard that receives an ARP frame for our address answers it as
//!   usual and posts a copy to every other shard's inbox, a bounded lock-free queue; the others
//!   take it at their next poll and learn the sender from it. The copy is marked as a reply, so
//!   they learn without answering again (one reply per request leaves the host). A full inbox
//!   drops the copy (counted in `arp_fanout_dropped`); the shard then asks again itself when it
//!   needs the address.
//! - **Nothing else.** A TCP segment of a flow no socket of this shard serves, but for a
//!   SYN, is not this shard's business: the flow may belong to another shard (steering changed,
//!   RSS misconfigured, a peer choosing another queue mid-flow). It is dropped and counted
//!   (`rx_misdirected`) rather than answered with a reset, which could kill the owning shard's
//!   connection; a flow is never served by two shards, since only the shard that received its
//!   SYN has a socket for it.

use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

/// Bytes of an Ethernet ARP frame for IPv4 (14 of header, 28 of ARP).
pub(crate) const ARP_FRAME_LEN: usize = 42;
/// ARP copies an inbox holds; more are dropped (ARP is rare: a peer asks once per cache
/// lifetime).
pub(crate) const INBOX_LEN: usize = 64;

/// One per-core shard's link to the others of its set ([`CoreShards::new`]); give each
/// shard's stack its own with [`Stack::join_cores`](super::Stack::join_cores).
#[derive(Debug)]
pub struct CoreShards {
    inboxes: Arc<[ArrayQueue<[u8; ARP_FRAME_LEN]>]>,
    index: usize,
}

impl CoreShards {
    /// The links of a set of `count` shards, one for each (index `i` is shard `i`'s).
    pub fn new(count: usize) -> Vec<CoreShards> {
        let inboxes: Arc<[_]> = (0..count.max(1))
            .map(|_| ArrayQueue::new(INBOX_LEN))
            .collect();
        (0..count.max(1))
            .map(|index| CoreShards {
                inboxes: Arc::clone(&inboxes),
                index,
            })
            .collect()
    }

    /// This shard's index in its set.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Shards in the set.
    pub fn count(&self) -> usize {
        self.inboxes.len()
    }

    /// Posts a copy of the ARP frame `frame` (at least [`ARP_FRAME_LEN`] bytes) to every other
    /// shard, marked as a reply; returns how many copies found a full inbox.
    pub(crate) fn fan_out_arp(&self, frame: &[u8]) -> u64 {
        let Some(head) = frame.get(..ARP_FRAME_LEN) else {
            return 0;
        };
        let mut copy = [0u8; ARP_FRAME_LEN];
        copy.copy_from_slice(head);
        // The ARP operation (bytes 6-7 of the ARP header): 2, a reply, taught but not answered.
        copy[20..22].copy_from_slice(&2u16.to_be_bytes());
        let mut dropped = 0;
        for (i, inbox) in self.inboxes.iter().enumerate() {
            if i != self.index && inbox.push(copy).is_err() {
                dropped += 1;
            }
        }
        dropped
    }

    /// The next ARP copy another shard posted to this one.
    #[inline]
    pub(crate) fn take_arp(&self) -> Option<[u8; ARP_FRAME_LEN]> {
        self.inboxes[self.index].pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arp_request() -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[..6].fill(0xff);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f
    }

    #[test]
    fn every_other_shard_gets_one_copy_marked_as_a_reply() {
        let set = CoreShards::new(3);
        assert_eq!(set[1].fan_out_arp(&arp_request()), 0);
        assert!(set[1].take_arp().is_none(), "no copy to the sender");
        for s in [&set[0], &set[2]] {
            let c = s.take_arp().expect("a copy");
            assert_eq!(&c[20..22], &[0, 2]);
            assert_eq!(&c[..20], &arp_request()[..20]);
            assert!(s.take_arp().is_none());
        }
    }

    #[test]
    fn full_inboxes_drop_and_count_and_short_frames_are_ignored() {
        let set = CoreShards::new(2);
        for _ in 0..INBOX_LEN {
            assert_eq!(set[0].fan_out_arp(&arp_request()), 0);
        }
        assert_eq!(set[0].fan_out_arp(&arp_request()), 1);
        assert_eq!(set[0].fan_out_arp(&[0u8; 20]), 0);
        assert_eq!(
            (0..).take_while(|_| set[1].take_arp().is_some()).count(),
            INBOX_LEN
        );
    }
}
