//! In-order ack release. Messages settle in any order (Kafka partitions ack
//! independently); acks leave strictly in arrival order, as MQTT requires.

use std::collections::VecDeque;
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use crate::connectors::AckToken;

struct Slot {
    token: AckToken,
    received: Instant,
    settled: bool,
    permit: Option<OwnedSemaphorePermit>,
}

/// Tracks un-acked messages by sequence number.
#[derive(Default)]
pub struct Tracker {
    base: u64,
    slots: VecDeque<Slot>,
}

/// A message whose ack may now be sent.
pub struct Released {
    /// The source's ack token.
    pub token: AckToken,
    /// When the message was received.
    pub received: Instant,
    /// Its slot of the in-flight window.
    pub permit: Option<OwnedSemaphorePermit>,
}

impl Tracker {
    /// Registers a newly received message; returns its sequence number. The
    /// permit (a slot of the in-flight window) is held until release.
    pub fn push(&mut self, token: AckToken, permit: Option<OwnedSemaphorePermit>) -> u64 {
        let seq = self.base + self.slots.len() as u64;
        self.slots.push_back(Slot {
            token,
            received: Instant::now(),
            settled: false,
            permit,
        });
        seq
    }

    /// Marks `seq` settled and returns every ack that is now releasable, in
    /// arrival order. Unknown or repeated sequence numbers are ignored.
    pub fn settle(&mut self, seq: u64, out: &mut Vec<Released>) {
        if seq < self.base {
            return;
        }
        if let Some(slot) = self.slots.get_mut((seq - self.base) as usize) {
            slot.settled = true;
        }
        while self.slots.front().is_some_and(|s| s.settled) {
            if let Some(s) = self.slots.pop_front() {
                self.base += 1;
                out.push(Released {
                    token: s.token,
                    received: s.received,
                    permit: s.permit,
                });
            }
        }
    }

    /// Messages not yet released.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;

    #[test]
    fn acks_wait_for_every_earlier_message() {
        let mut t = Tracker::default();
        for i in 0..3 {
            assert_eq!(t.push(100 + i, None), i);
        }
        let mut out = Vec::new();
        t.settle(2, &mut out);
        t.settle(1, &mut out);
        assert!(out.is_empty());
        t.settle(0, &mut out);
        let tokens: Vec<u64> = out.iter().map(|r| r.token).collect();
        assert_eq!(tokens, vec![100, 101, 102]);
        assert!(t.is_empty());
    }

    proptest::proptest! {
        /// Random completion orders (with repeats) never release an ack
        /// early or out of order: after each settle, exactly the longest
        /// fully settled prefix has been released.
        #[test]
        fn random_settle_orders_release_in_arrival_order_only_when_settled(
            order in (1usize..200).prop_flat_map(|n| {
                proptest::collection::vec(0..n as u64, n..n * 2)
                    .prop_map(move |v| (n, v))
            })
        ) {
            let (n, settles) = order;
            let mut t = Tracker::default();
            for i in 0..n {
                t.push(i as u64, None);
            }
            let mut settled = vec![false; n];
            let mut released = Vec::new();
            for s in settles.iter().copied().chain(0..n as u64) {
                settled[s as usize] = true;
                t.settle(s, &mut released);
                let tokens: Vec<u64> = released.iter().map(|r| r.token).collect();
                let prefix = settled.iter().take_while(|s| **s).count();
                proptest::prop_assert_eq!(tokens, (0..prefix as u64).collect::<Vec<_>>());
            }
            proptest::prop_assert!(t.is_empty());
        }
    }
}
