//! Sequence tracking of room deliveries, per (sender, receiver): what is new, duplicated,
//! reordered — and lost, which is never a guess.
//!
//! A receiver's first delivery from a sender sets the baseline: earlier messages were sent
//! before it joined (or while it was away) and are not expected. After that, a missing
//! sequence is a *gap*; it counts as lost only once a later sequence has arrived and the gap
//! is older than the grace period, or when the receiving session ends. A gap filled in time
//! counts as reordered, not lost.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// Sequences tracked behind the highest one; a gap that falls further behind is lost at once.
const WINDOW: u64 = 128;

/// What one delivery turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// First time seen, in order.
    New,
    /// First time seen, but after a later sequence (it filled a gap).
    Reordered,
    /// Seen before.
    Duplicate,
    /// From before this receiver's baseline: not tracked.
    Untracked,
}

#[derive(Debug)]
struct Sender {
    baseline: u64,
    highest: u64,
    /// Bit i set: sequence `highest - i` was received.
    seen: u128,
    /// Missing sequences and when they were found missing, oldest first.
    gaps: VecDeque<(u64, Instant)>,
}

/// One receiving session's view of every sender it hears.
#[derive(Debug)]
pub struct Tracker {
    grace: Duration,
    senders: HashMap<Box<str>, Sender>,
    /// Gaps that became losses and have not been collected by [`Tracker::take_lost`].
    lost: u64,
}

impl Tracker {
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            senders: HashMap::new(),
            lost: 0,
        }
    }

    /// Records one delivery of `seq` from `sender`.
    pub fn observe(&mut self, sender: &str, seq: u64, now: Instant) -> Delivery {
        let Some(track) = self.senders.get_mut(sender) else {
            self.senders.insert(
                sender.into(),
                Sender {
                    baseline: seq,
                    highest: seq,
                    seen: 1,
                    gaps: VecDeque::new(),
                },
            );
            return Delivery::New;
        };
        if seq < track.baseline {
            return Delivery::Untracked;
        }
        if seq > track.highest {
            let shift = seq - track.highest;
            for missing in (track.highest + 1)..seq {
                // Only sequences that stay inside the window can still arrive in time.
                if seq - missing < WINDOW {
                    track.gaps.push_back((missing, now));
                } else {
                    self.lost += 1;
                }
            }
            track.seen = if shift >= 128 {
                1
            } else {
                (track.seen << shift) | 1
            };
            track.highest = seq;
            while let Some(&(missing, _)) = track.gaps.front() {
                if seq - missing < WINDOW {
                    break;
                }
                track.gaps.pop_front();
                self.lost += 1;
            }
            return Delivery::New;
        }
        let behind = track.highest - seq;
        if behind >= WINDOW {
            // Older than anything tracked: it was already counted lost; it is a late arrival.
            return Delivery::Reordered;
        }
        let bit = 1u128 << behind;
        if track.seen & bit != 0 {
            return Delivery::Duplicate;
        }
        track.seen |= bit;
        if let Some(at) = track.gaps.iter().position(|&(missing, _)| missing == seq) {
            track.gaps.remove(at);
        }
        Delivery::Reordered
    }

    /// Turns gaps older than the grace period into losses.
    pub fn expire(&mut self, now: Instant) {
        for track in self.senders.values_mut() {
            while let Some(&(_, found)) = track.gaps.front() {
                if now.duration_since(found) < self.grace {
                    break;
                }
                track.gaps.pop_front();
                self.lost += 1;
            }
        }
    }

    /// Ends tracking (the session is over): every open gap is lost.
    pub fn finish(&mut self) {
        for track in self.senders.values_mut() {
            self.lost += track.gaps.len() as u64;
            track.gaps.clear();
        }
    }

    /// Losses found since the last call.
    pub fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(1);

    fn feed(tracker: &mut Tracker, seqs: &[u64], now: Instant) -> Vec<Delivery> {
        seqs.iter().map(|&s| tracker.observe("a", s, now)).collect()
    }

    #[test]
    fn in_order_deliveries_are_new_and_nothing_is_lost() {
        let now = Instant::now();
        let mut t = Tracker::new(GRACE);
        assert!(
            feed(&mut t, &[5, 6, 7, 8], now)
                .iter()
                .all(|d| *d == Delivery::New)
        );
        t.finish();
        assert_eq!(t.take_lost(), 0);
    }

    #[test]
    fn a_late_joiner_expects_nothing_before_its_first_delivery() {
        let now = Instant::now();
        let mut t = Tracker::new(GRACE);
        feed(&mut t, &[100, 101], now);
        assert_eq!(t.observe("a", 50, now), Delivery::Untracked);
        t.finish();
        assert_eq!(t.take_lost(), 0);
    }

    #[test]
    fn a_gap_is_lost_only_after_the_grace_period() {
        let start = Instant::now();
        let mut t = Tracker::new(GRACE);
        feed(&mut t, &[1, 2, 4], start);
        t.expire(start + Duration::from_millis(999));
        assert_eq!(t.take_lost(), 0, "still within grace");
        t.expire(start + GRACE);
        assert_eq!(t.take_lost(), 1);
    }

    #[test]
    fn a_gap_filled_in_time_is_reordered_not_lost() {
        let start = Instant::now();
        let mut t = Tracker::new(GRACE);
        feed(&mut t, &[1, 3], start);
        assert_eq!(t.observe("a", 2, start), Delivery::Reordered);
        t.expire(start + 10 * GRACE);
        t.finish();
        assert_eq!(t.take_lost(), 0);
    }

    #[test]
    fn duplicates_are_recognised_in_and_out_of_order() {
        let now = Instant::now();
        let mut t = Tracker::new(GRACE);
        feed(&mut t, &[1, 2, 3], now);
        assert_eq!(t.observe("a", 3, now), Delivery::Duplicate);
        assert_eq!(t.observe("a", 1, now), Delivery::Duplicate);
        assert_eq!(
            t.observe("b", 3, now),
            Delivery::New,
            "senders are separate"
        );
    }

    #[test]
    fn open_gaps_are_lost_when_the_session_ends() {
        let now = Instant::now();
        let mut t = Tracker::new(GRACE);
        feed(&mut t, &[1, 4], now);
        t.finish();
        assert_eq!(t.take_lost(), 2);
    }

    #[test]
    fn gaps_pushed_out_of_the_window_are_lost_at_once() {
        let now = Instant::now();
        let mut t = Tracker::new(GRACE);
        feed(&mut t, &[1, 3], now);
        t.observe("a", 3 + WINDOW, now);
        assert_eq!(t.take_lost(), 1, "seq 2 left the window");
        t.observe("a", 1000, now);
        // 4..=130 left the window with the jump, and so did 132..=872; 873..=999 stay open.
        assert_eq!(t.take_lost(), (3 + WINDOW - 4) + (872 - 132 + 1));
        t.finish();
        assert_eq!(t.take_lost(), 999 - 873 + 1);
    }
}
