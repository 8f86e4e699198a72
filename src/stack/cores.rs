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
//! - **Who took each flow.** A table of 65,536 words, one per flow hash, says which shard took
//!   the flow's SYN (or opened it), with 24 more bits of the hash as a tag. It is written once
//!   per connection, never per packet, and read only for a segment of a flow no socket of this
//!   shard serves (not a SYN). If another shard took the flow (steering changed, RSS
//!   misconfigured, a peer choosing another queue mid-flow), the segment is dropped and counted
//!   (`rx_misdirected`): a reset would kill that shard's connection. If no shard did (a flow
//!   from before a restart, a stray segment), or this one did and has closed it, it is
//!   answered as a lone stack answers it, with a reset. A flow is never served by two shards,
//!   since only the shard that received its SYN has a socket for it. Two flows with the same
//!   slot and tag (one in 2^40 pairs) share an entry: the later one's shard wins.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use super::adapter::{FlowKey, ARP_FRAME_LEN};

/// Slots of the owner table (a power of two).
const OWNER_SLOTS: usize = 1 << 16;

/// Who took a flow, as the owner table says.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    /// No shard (or the table forgot it: its slot was taken by another flow).
    Nobody,
    /// This shard.
    Me,
    /// Another shard.
    Other,
}
/// ARP copies an inbox holds; more are dropped (ARP is rare: a peer asks once per cache
/// lifetime).
pub(crate) const INBOX_LEN: usize = 64;

/// One per-core shard's link to the others of its set ([`CoreShards::new`]); give each
/// shard's stack its own with [`Stack::join_cores`](super::Stack::join_cores).
#[derive(Debug)]
pub struct CoreShards {
    inboxes: Arc<[ArrayQueue<[u8; ARP_FRAME_LEN]>]>,
    owners: Arc<[AtomicU32]>,
    index: usize,
}

impl CoreShards {
    /// The links of a set of `count` shards, one for each (index `i` is shard `i`'s).
    ///
    /// At most 255 shards (the owner table keeps a byte per flow for the shard).
    pub fn new(count: usize) -> Vec<CoreShards> {
        let count = count.clamp(1, 255);
        let inboxes: Arc<[_]> = (0..count).map(|_| ArrayQueue::new(INBOX_LEN)).collect();
        let owners: Arc<[_]> = (0..OWNER_SLOTS).map(|_| AtomicU32::new(0)).collect();
        (0..count)
            .map(|index| CoreShards {
                inboxes: Arc::clone(&inboxes),
                owners: Arc::clone(&owners),
                index,
            })
            .collect()
    }

    /// The slot of `flow` and the word that says this shard took it.
    fn slot(&self, flow: &FlowKey) -> (usize, u32) {
        let mut h = u64::from(flow.remote_ip) << 32
            | u64::from(flow.remote_port) << 16
            | u64::from(flow.local_port);
        // SplitMix64's finaliser: every bit of the flow moves the slot and the tag.
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        let tag = (h >> 16) as u32 & 0x00ff_ffff;
        (
            h as usize & (OWNER_SLOTS - 1),
            tag << 8 | (self.index as u32 + 1),
        )
    }

    /// Records that this shard takes `flow` (its SYN came here, or it opened it).
    pub(crate) fn claim(&self, flow: &FlowKey) {
        let (i, word) = self.slot(flow);
        self.owners[i].store(word, Ordering::Relaxed);
    }

    /// Who took `flow`, as far as the table knows.
    pub(crate) fn owner(&self, flow: &FlowKey) -> Owner {
        let (i, mine) = self.slot(flow);
        let word = self.owners[i].load(Ordering::Relaxed);
        if word == mine {
            Owner::Me
        } else if word >> 8 == mine >> 8 && word & 0xff != 0 {
            Owner::Other
        } else {
            Owner::Nobody
        }
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
    fn the_owner_table_tells_me_another_shard_or_nobody() {
        let set = CoreShards::new(2);
        let flow = |port| FlowKey {
            remote_ip: 0x0a00_0002,
            remote_port: port,
            local_port: 7000,
        };
        assert_eq!(set[0].owner(&flow(1)), Owner::Nobody);
        set[1].claim(&flow(1));
        assert_eq!(set[1].owner(&flow(1)), Owner::Me);
        assert_eq!(set[0].owner(&flow(1)), Owner::Other);
        assert_eq!(set[0].owner(&flow(2)), Owner::Nobody);
        // A later claim (the flow came back after a restart, to another queue) wins.
        set[0].claim(&flow(1));
        assert_eq!(set[0].owner(&flow(1)), Owner::Me);
        assert_eq!(set[1].owner(&flow(1)), Owner::Other);
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
