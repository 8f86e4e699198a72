// Heads up! Before working on this file you should read, at least,
// the parts of RFC 1122 that discuss ARP.

use heapless::LinearMap;

use crate::config::IFACE_NEIGHBOR_CACHE_COUNT;
use crate::time::{Duration, Instant};
use crate::wire::{HardwareAddress, IpAddress};

/// A cached neighbor.
///
/// A neighbor mapping translates from a protocol address to a hardware address,
/// and contains the timestamp past which the mapping should be discarded.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Neighbor {
    hardware_addr: HardwareAddress,
    expires_at: Instant,
    /// A connection with it made progress since it was resolved (patch 12): a peer in use,
    /// evicted last. Traffic alone does not confirm: a flood of SYNs is traffic too.
    confirmed: bool,
}

/// An answer to a neighbor cache lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub(crate) enum Answer {
    /// The neighbor address is in the cache and not expired.
    Found(HardwareAddress),
    /// The neighbor address is not in the cache, or has expired.
    NotFound,
    /// The neighbor address is not in the cache, or has expired,
    /// and a lookup has been made recently (or the request budget is spent).
    RateLimited,
    /// Every request for the neighbor went unanswered: it is unreachable for now.
    Unreachable,
}

impl Answer {
    /// Returns whether a valid address was found.
    pub(crate) fn found(&self) -> bool {
        match self {
            Answer::Found(_) => true,
            _ => false,
        }
    }
}

/// A resolution under way (patch 7): requests sent for an address not in the cache.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
struct Pending {
    /// When the first request went out.
    since: Instant,
    /// When the next request may go (or, after the last one, when it is deemed unreachable).
    next_at: Instant,
    /// Requests sent.
    tries: u8,
}

/// A neighbor cache backed by a map.
///
/// Discovery is rate-limited per address (a request every `RETRY_TIME`, at most `TRIES` of
/// them, then the address is unreachable for `UNREACHABLE_TIME`) and in total (a budget of
/// `REQUESTS_PER_SECOND`); at most `PENDING_COUNT` addresses are being resolved at once. The
/// cache itself only evicts an entry to make room for an answer to one of our requests, so a
/// flood of unsolicited requests cannot push out the neighbors in use.
#[derive(Debug)]
pub struct Cache {
    storage: LinearMap<IpAddress, Neighbor, IFACE_NEIGHBOR_CACHE_COUNT>,
    pending: LinearMap<IpAddress, Pending, { Cache::PENDING_COUNT }>,
    /// Requests that may still go before `refill_at`.
    budget: u32,
    refill_at: Instant,
}

impl Cache {
    /// Minimum delay between discovery requests for one address.
    pub(crate) const RETRY_TIME: Duration = Duration::from_millis(250);

    /// Requests sent for an address before it is deemed unreachable.
    pub(crate) const TRIES: u8 = 3;

    /// How long an address stays unreachable (no more requests) after its last try.
    pub(crate) const UNREACHABLE_TIME: Duration = Duration::from_millis(3_000);

    /// Addresses resolved at once.
    pub(crate) const PENDING_COUNT: usize = 32;

    /// Discovery requests sent per second, all addresses together.
    pub(crate) const REQUESTS_PER_SECOND: u32 = 100;

    /// Neighbor entry lifetime, in milliseconds.
    pub(crate) const ENTRY_LIFETIME: Duration = Duration::from_millis(60_000);

    /// Create a cache.
    pub fn new() -> Self {
        Self {
            storage: LinearMap::new(),
            pending: LinearMap::new(),
            budget: Self::REQUESTS_PER_SECOND,
            refill_at: Instant::from_millis(0),
        }
    }

    pub fn reset_expiry_if_existing(
        &mut self,
        protocol_addr: IpAddress,
        source_hardware_addr: HardwareAddress,
        timestamp: Instant,
    ) {
        if let Some(Neighbor {
            expires_at,
            hardware_addr,
            ..
        }) = self.storage.get_mut(&protocol_addr)
            && source_hardware_addr == *hardware_addr
        {
            *expires_at = timestamp + Self::ENTRY_LIFETIME;
        }
    }

    /// Marks a neighbor as in use (patch 12): an upper layer saw a connection with it make
    /// progress (a synchronized TCP connection took a segment from it).
    pub(crate) fn confirm(&mut self, protocol_addr: &IpAddress) {
        if let Some(neighbor) = self.storage.get_mut(protocol_addr) {
            neighbor.confirmed = true;
        }
    }

    pub fn fill(
        &mut self,
        protocol_addr: IpAddress,
        hardware_addr: HardwareAddress,
        timestamp: Instant,
    ) {
        debug_assert!(protocol_addr.is_unicast());
        debug_assert!(hardware_addr.is_unicast());

        self.pending.remove(&protocol_addr);
        let expires_at = timestamp + Self::ENTRY_LIFETIME;
        self.fill_with_expiration(protocol_addr, hardware_addr, expires_at);
    }

    /// Fills the cache from a mapping nobody asked for (an ARP request aimed at us, a
    /// neighbor solicitation): it updates an entry or takes a free one, and never evicts one,
    /// unless we were resolving that address ourselves.
    pub fn fill_unsolicited(
        &mut self,
        protocol_addr: IpAddress,
        hardware_addr: HardwareAddress,
        timestamp: Instant,
    ) {
        if self.pending.contains_key(&protocol_addr)
            || self.storage.contains_key(&protocol_addr)
            || self.storage.len() < self.storage.capacity()
        {
            self.fill(protocol_addr, hardware_addr, timestamp);
        }
    }

    pub fn fill_with_expiration(
        &mut self,
        protocol_addr: IpAddress,
        hardware_addr: HardwareAddress,
        expires_at: Instant,
    ) {
        debug_assert!(protocol_addr.is_unicast());
        debug_assert!(hardware_addr.is_unicast());

        // A peer that keeps its address stays confirmed.
        let confirmed = self
            .storage
            .get(&protocol_addr)
            .is_some_and(|n| n.confirmed && n.hardware_addr == hardware_addr);
        let neighbor = Neighbor {
            expires_at,
            hardware_addr,
            confirmed,
        };
        match self.storage.insert(protocol_addr, neighbor) {
            Ok(Some(old_neighbor)) => {
                if old_neighbor.hardware_addr != hardware_addr {
                    net_trace!(
                        "replaced {} => {} (was {})",
                        protocol_addr,
                        hardware_addr,
                        old_neighbor.hardware_addr
                    );
                }
            }
            Ok(None) => {
                net_trace!("filled {} => {} (was empty)", protocol_addr, hardware_addr);
            }
            Err((protocol_addr, neighbor)) => {
                // If we're going down this branch, it means the cache is full, and we need to evict an entry.
                // The one to expire first, among those that never sent us traffic if any
                // (patch 12): answers to requests for made-up addresses (a SYN flood's) then
                // churn among themselves, and the peers in use stay.
                let old_protocol_addr = *self
                    .storage
                    .iter()
                    .min_by_key(|(_, neighbor)| (neighbor.confirmed, neighbor.expires_at))
                    .expect("empty neighbor cache storage")
                    .0;

                let _old_neighbor = self.storage.remove(&old_protocol_addr).unwrap();
                match self.storage.insert(protocol_addr, neighbor) {
                    Ok(None) => {
                        net_trace!(
                            "filled {} => {} (evicted {} => {})",
                            protocol_addr,
                            hardware_addr,
                            old_protocol_addr,
                            _old_neighbor.hardware_addr
                        );
                    }
                    // We've covered everything else above.
                    _ => unreachable!(),
                }
            }
        }
    }

    pub(crate) fn lookup(&self, protocol_addr: &IpAddress, timestamp: Instant) -> Answer {
        assert!(protocol_addr.is_unicast());

        if let Some(&Neighbor {
            expires_at,
            hardware_addr,
            ..
        }) = self.storage.get(protocol_addr)
            && timestamp < expires_at
        {
            return Answer::Found(hardware_addr);
        }

        match self.pending.get(protocol_addr) {
            Some(p) if p.tries >= Self::TRIES && timestamp >= p.next_at => {
                if timestamp < p.next_at + Self::UNREACHABLE_TIME {
                    Answer::Unreachable
                } else {
                    // Long enough: ask again.
                    self.budget_answer(timestamp)
                }
            }
            Some(p) if timestamp < p.next_at => Answer::RateLimited,
            Some(_) => self.budget_answer(timestamp),
            None if self.pending.len() == self.pending.capacity()
                && !self.pending.values().any(|p| self.evictable(p, timestamp)) =>
            {
                Answer::RateLimited
            }
            None => self.budget_answer(timestamp),
        }
    }

    /// `NotFound` (a request may go) if the budget allows one now, else `RateLimited`.
    fn budget_answer(&self, timestamp: Instant) -> Answer {
        if self.budget > 0 || timestamp >= self.refill_at {
            Answer::NotFound
        } else {
            Answer::RateLimited
        }
    }

    /// Whether a pending resolution may make room for another: it was given up, or the
    /// whole round of requests is over.
    fn evictable(&self, p: &Pending, timestamp: Instant) -> bool {
        p.tries >= Self::TRIES && timestamp >= p.next_at
    }

    /// Records that a discovery request for `protocol_addr` was sent at `timestamp`.
    pub(crate) fn requested(&mut self, protocol_addr: IpAddress, timestamp: Instant) {
        if timestamp >= self.refill_at {
            self.budget = Self::REQUESTS_PER_SECOND;
            self.refill_at = timestamp + Duration::from_secs(1);
        }
        self.budget = self.budget.saturating_sub(1);

        if let Some(p) = self.pending.get_mut(&protocol_addr) {
            if p.tries >= Self::TRIES {
                // A new round after the unreachable time.
                *p = Pending {
                    since: timestamp,
                    next_at: timestamp,
                    tries: 0,
                };
            }
            p.tries += 1;
            p.next_at = timestamp + Self::RETRY_TIME;
            return;
        }
        if self.pending.len() == self.pending.capacity() {
            // Room from the oldest resolution that is over (lookup checked there is one).
            let victim = self
                .pending
                .iter()
                .filter(|(_, p)| self.evictable(p, timestamp))
                .min_by_key(|(_, p)| p.since)
                .map(|(addr, _)| *addr);
            match victim {
                Some(addr) => {
                    self.pending.remove(&addr);
                }
                None => return,
            }
        }
        let _ = self.pending.insert(
            protocol_addr,
            Pending {
                since: timestamp,
                next_at: timestamp + Self::RETRY_TIME,
                tries: 1,
            },
        );
    }

    /// Whether every discovery request for `protocol_addr` went unanswered (and the last one
    /// was given its time).
    pub(crate) fn unreachable(&self, protocol_addr: &IpAddress, timestamp: Instant) -> bool {
        self.lookup(protocol_addr, timestamp) == Answer::Unreachable
    }

    pub(crate) fn flush(&mut self) {
        self.storage.clear();
        self.pending.clear();
    }
}

#[cfg(feature = "medium-ethernet")]
#[cfg(test)]
mod test {
    use super::*;
    #[cfg(all(feature = "proto-ipv4", not(feature = "proto-ipv6")))]
    use crate::wire::ipv4::test::{MOCK_IP_ADDR_1, MOCK_IP_ADDR_2, MOCK_IP_ADDR_3, MOCK_IP_ADDR_4};
    #[cfg(feature = "proto-ipv6")]
    use crate::wire::ipv6::test::{MOCK_IP_ADDR_1, MOCK_IP_ADDR_2, MOCK_IP_ADDR_3, MOCK_IP_ADDR_4};

    use crate::wire::EthernetAddress;

    const HADDR_A: HardwareAddress = HardwareAddress::Ethernet(EthernetAddress([0, 0, 0, 0, 0, 1]));
    const HADDR_B: HardwareAddress = HardwareAddress::Ethernet(EthernetAddress([0, 0, 0, 0, 0, 2]));
    const HADDR_C: HardwareAddress = HardwareAddress::Ethernet(EthernetAddress([0, 0, 0, 0, 0, 3]));
    const HADDR_D: HardwareAddress = HardwareAddress::Ethernet(EthernetAddress([0, 0, 0, 0, 0, 4]));

    #[test]
    fn test_fill() {
        let mut cache = Cache::new();

        assert!(
            !cache
                .lookup(&MOCK_IP_ADDR_1.into(), Instant::from_millis(0))
                .found()
        );
        assert!(
            !cache
                .lookup(&MOCK_IP_ADDR_2.into(), Instant::from_millis(0))
                .found()
        );

        cache.fill(MOCK_IP_ADDR_1.into(), HADDR_A, Instant::from_millis(0));
        assert_eq!(
            cache.lookup(&MOCK_IP_ADDR_1.into(), Instant::from_millis(0)),
            Answer::Found(HADDR_A)
        );
        assert!(
            !cache
                .lookup(&MOCK_IP_ADDR_2.into(), Instant::from_millis(0))
                .found()
        );
        assert!(
            !cache
                .lookup(
                    &MOCK_IP_ADDR_1.into(),
                    Instant::from_millis(0) + Cache::ENTRY_LIFETIME * 2
                )
                .found(),
        );

        cache.fill(MOCK_IP_ADDR_1.into(), HADDR_A, Instant::from_millis(0));
        assert!(
            !cache
                .lookup(&MOCK_IP_ADDR_2.into(), Instant::from_millis(0))
                .found()
        );
    }

    #[test]
    fn test_expire() {
        let mut cache = Cache::new();

        cache.fill(MOCK_IP_ADDR_1.into(), HADDR_A, Instant::from_millis(0));
        assert_eq!(
            cache.lookup(&MOCK_IP_ADDR_1.into(), Instant::from_millis(0)),
            Answer::Found(HADDR_A)
        );
        assert!(
            !cache
                .lookup(
                    &MOCK_IP_ADDR_1.into(),
                    Instant::from_millis(0) + Cache::ENTRY_LIFETIME * 2
                )
                .found(),
        );
    }

    #[test]
    fn test_replace() {
        let mut cache = Cache::new();

        cache.fill(MOCK_IP_ADDR_1.into(), HADDR_A, Instant::from_millis(0));
        assert_eq!(
            cache.lookup(&MOCK_IP_ADDR_1.into(), Instant::from_millis(0)),
            Answer::Found(HADDR_A)
        );
        cache.fill(MOCK_IP_ADDR_1.into(), HADDR_B, Instant::from_millis(0));
        assert_eq!(
            cache.lookup(&MOCK_IP_ADDR_1.into(), Instant::from_millis(0)),
            Answer::Found(HADDR_B)
        );
    }

    #[test]
    fn test_evict() {
        let mut cache = Cache::new();

        cache.fill(MOCK_IP_ADDR_1.into(), HADDR_A, Instant::from_millis(100));
        cache.fill(MOCK_IP_ADDR_2.into(), HADDR_B, Instant::from_millis(50));
        cache.fill(MOCK_IP_ADDR_3.into(), HADDR_C, Instant::from_millis(200));
        assert_eq!(
            cache.lookup(&MOCK_IP_ADDR_2.into(), Instant::from_millis(1000)),
            Answer::Found(HADDR_B)
        );
        assert!(
            !cache
                .lookup(&MOCK_IP_ADDR_4.into(), Instant::from_millis(1000))
                .found()
        );

        cache.fill(MOCK_IP_ADDR_4.into(), HADDR_D, Instant::from_millis(300));
        assert!(
            !cache
                .lookup(&MOCK_IP_ADDR_2.into(), Instant::from_millis(1000))
                .found()
        );
        assert_eq!(
            cache.lookup(&MOCK_IP_ADDR_4.into(), Instant::from_millis(1000)),
            Answer::Found(HADDR_D)
        );
    }

    #[test]
    fn test_hush() {
        let mut cache = Cache::new();

        assert_eq!(
            cache.lookup(&MOCK_IP_ADDR_1.into(), Instant::from_millis(0)),
            Answer::NotFound
        );

        cache.requested(MOCK_IP_ADDR_1.into(), Instant::from_millis(0));
        assert_eq!(
            cache.lookup(&MOCK_IP_ADDR_1.into(), Instant::from_millis(100)),
            Answer::RateLimited
        );
        // Another address is not held back by it.
        assert_eq!(
            cache.lookup(&MOCK_IP_ADDR_2.into(), Instant::from_millis(100)),
            Answer::NotFound
        );
        assert_eq!(
            cache.lookup(&MOCK_IP_ADDR_1.into(), Instant::from_millis(250)),
            Answer::NotFound
        );
    }

    #[test]
    fn test_unanswered_address_becomes_unreachable() {
        let mut cache = Cache::new();
        let addr: IpAddress = MOCK_IP_ADDR_1.into();
        let mut t = Instant::from_millis(0);
        for _ in 0..Cache::TRIES {
            assert_eq!(cache.lookup(&addr, t), Answer::NotFound);
            cache.requested(addr, t);
            assert_eq!(cache.lookup(&addr, t), Answer::RateLimited);
            t += Cache::RETRY_TIME;
        }
        assert_eq!(cache.lookup(&addr, t), Answer::Unreachable);
        assert!(cache.unreachable(&addr, t));
        // For a while; then it is asked for again.
        t += Cache::UNREACHABLE_TIME;
        assert_eq!(cache.lookup(&addr, t), Answer::NotFound);
        cache.requested(addr, t);
        assert_eq!(cache.lookup(&addr, t), Answer::RateLimited);
        // An answer ends it.
        cache.fill(addr, HADDR_A, t);
        assert_eq!(cache.lookup(&addr, t), Answer::Found(HADDR_A));
    }

    #[test]
    fn test_request_budget_and_pending_table_are_bounded() {
        let mut cache = Cache::new();
        let t = Instant::from_millis(0);
        let addr = |i: u32| -> IpAddress {
            #[cfg(feature = "proto-ipv4")]
            {
                crate::wire::Ipv4Address::from_bits(0x0a00_0000 + i).into()
            }
            #[cfg(not(feature = "proto-ipv4"))]
            {
                crate::wire::Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, i as u16 + 1).into()
            }
        };
        // As many addresses as the pending table holds get a request at once...
        for i in 0..Cache::PENDING_COUNT as u32 {
            assert_eq!(cache.lookup(&addr(i), t), Answer::NotFound);
            cache.requested(addr(i), t);
        }
        // ...then no more until one of them is over.
        let next = addr(Cache::PENDING_COUNT as u32);
        assert_eq!(cache.lookup(&next, t), Answer::RateLimited);
        let over = t + Cache::RETRY_TIME * Cache::TRIES as u32;
        for i in 0..Cache::PENDING_COUNT as u32 {
            for k in 1..Cache::TRIES as u32 {
                cache.requested(addr(i), t + Cache::RETRY_TIME * k);
            }
        }
        assert_eq!(cache.lookup(&addr(0), over), Answer::Unreachable);
        // 32 x 3 = 96 requests: 4 left in this second's budget.
        assert_eq!(cache.lookup(&next, over), Answer::NotFound);
        for i in 0..4 {
            cache.requested(addr(100 + i), over);
        }
        assert_eq!(cache.lookup(&addr(200), over), Answer::RateLimited);
        // The budget refills after a second.
        assert_eq!(
            cache.lookup(&addr(200), t + Duration::from_secs(1)),
            Answer::NotFound
        );
    }

    #[test]
    fn test_peers_in_use_are_evicted_last() {
        let mut cache = Cache::new();
        let t = Instant::from_millis(0);
        let addr = |i: u32| -> IpAddress {
            #[cfg(feature = "proto-ipv4")]
            {
                crate::wire::Ipv4Address::from_bits(0x0a00_0000 + i).into()
            }
            #[cfg(not(feature = "proto-ipv4"))]
            {
                crate::wire::Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, i as u16 + 1).into()
            }
        };
        // A peer resolved first, with a connection that made progress (long ago)...
        cache.fill(addr(0), HADDR_A, t);
        cache.confirm(&addr(0));
        // ...and a flood of answers to our own requests, much fresher.
        for i in 1..1000u32 {
            let at = t + Duration::from_millis(i as u64);
            cache.requested(addr(i), at);
            cache.fill(addr(i), HADDR_B, at);
        }
        assert_eq!(cache.lookup(&addr(0), t), Answer::Found(HADDR_A));
    }

    #[test]
    fn test_unsolicited_fill_does_not_evict() {
        let mut cache = Cache::new();
        let t = Instant::from_millis(0);
        let addr = |i: u32| -> IpAddress {
            #[cfg(feature = "proto-ipv4")]
            {
                crate::wire::Ipv4Address::from_bits(0x0a00_0000 + i).into()
            }
            #[cfg(not(feature = "proto-ipv4"))]
            {
                crate::wire::Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, i as u16 + 1).into()
            }
        };
        let cap = IFACE_NEIGHBOR_CACHE_COUNT as u32;
        for i in 0..cap {
            cache.fill_unsolicited(addr(i), HADDR_A, t);
        }
        // Full: a flood of unsolicited mappings pushes nobody out...
        for i in cap..cap + 100 {
            cache.fill_unsolicited(addr(i), HADDR_B, t + Duration::from_millis(1));
        }
        for i in 0..cap {
            assert_eq!(cache.lookup(&addr(i), t), Answer::Found(HADDR_A));
        }
        // ...but the answer to our own request does.
        let asked = addr(cap + 200);
        cache.requested(asked, t);
        cache.fill_unsolicited(asked, HADDR_C, t);
        assert_eq!(cache.lookup(&asked, t), Answer::Found(HADDR_C));
    }

    #[test]
    fn test_flush() {
        let mut cache = Cache::new();

        cache.fill(MOCK_IP_ADDR_1.into(), HADDR_A, Instant::from_millis(0));
        assert_eq!(
            cache.lookup(&MOCK_IP_ADDR_1.into(), Instant::from_millis(0)),
            Answer::Found(HADDR_A)
        );
        assert!(
            !cache
                .lookup(&MOCK_IP_ADDR_2.into(), Instant::from_millis(0))
                .found()
        );

        cache.flush();
        assert!(
            !cache
                .lookup(&MOCK_IP_ADDR_1.into(), Instant::from_millis(0))
                .found()
        );
        assert!(
            !cache
                .lookup(&MOCK_IP_ADDR_1.into(), Instant::from_millis(0))
                .found()
        );
    }
}
