//! Sequence tracking of room deliveries, per (sender, receiver): what is new, duplicated,
//! reordered — and lost, which is never a guess.
//!
//! The baseline: every sender lives in this process, so when a receiver joins its room it
//! reads each member's last sent sequence ([`Tracker::expect_from`]); what they send after it
//! is expected, what they sent before is not. A member added to the room later is expected
//! from when it was added.
//!
//! Nothing a server sends is believed beyond what this process knows: a delivery from a sender
//! that is not a member (a real user sharing the room, another fleet on the same server) is
//! foreign — counted, never tracked, so it costs no memory per sender; a sequence beyond the
//! last one its sender issued is invalid, not a gap of billions of lost messages. Gaps are
//! counted arithmetically, never walked one by one.
//!
//! After the baseline, a missing sequence is a *gap*; it counts as lost once a later sequence
//! has arrived and the gap is older than the grace period, or when the receiving session ends.
//! A gap filled in time counts as reordered, not lost.
//!
//! A sender in several rooms numbers its messages once; a receiver keeps one track per room
//! it shares with the sender, a [`Lane`] of the sender's sequence, and judges each apart.
//!
//! The tail: a message whose copy to this receiver was the last one dropped is followed by no
//! later sequence, so no gap ever shows it. At the end of a run each receiver learns every
//! member's last sent sequence ([`Tracker::expect_until`]); what has not arrived a grace
//! period later, or when the session ends, is lost too.
//!
//! Across a gap: a receiver that went away on purpose, to a server that stores what it
//! missed, keeps its books; when it comes back ([`Tracker::back`]) everything its members sent
//! since its last delivery (and every gap still open) is its *backlog*, expected through the
//! server's sync. A first arrival from it is an offline delivery, a second one a duplicate of
//! the sync path; what has not come once the sync made no progress for the grace period (or
//! when the session ends) is lost on the sync path. When the last of it arrives, the receiver
//! has caught up: the time since its return is the catch-up time.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::Tick;
use crate::roster::Slot;
use crate::topology::Lane;

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
    /// From a sender that is not a member of this receiver's room in this process.
    Foreign,
    /// A sequence its sender never issued: the frame is wrong, not the books.
    Invalid,
    /// First arrival of a message the receiver missed while away (its backlog): through the
    /// server's sync.
    Offline,
    /// A message of the backlog seen again (sent twice by the sync, or live and in the sync).
    SyncDuplicate,
}

impl Delivery {
    /// Whether this is the first arrival of a message this receiver expected: the only kind
    /// whose latency is a sample (a duplicate's would count one message many times).
    pub fn is_first_arrival(self) -> bool {
        matches!(
            self,
            Delivery::New | Delivery::Reordered | Delivery::Offline
        )
    }
}

/// What one receiver knows of one sender's messages to one room they share. Sequences here
/// are numbers within the lane (the sender's sequence itself for a sender in one room).
#[derive(Debug)]
struct Sender {
    /// The sender's public state: the last sequence it issued bounds what may arrive.
    slot: Arc<Slot>,
    lane: Lane,
    baseline: u64,
    /// The sender's last sent sequence, once the end of the run announced it (0 before).
    until: u64,
    highest: u64,
    /// Bit i set: sequence `highest - i` was received.
    seen: u128,
    awaited: Awaited,
}

/// What a track awaits beyond its window: missing sequences and when they were found
/// missing, oldest first, and what the receiver missed while away and awaits from the sync.
/// Boxed when the first gap opens or the receiver returns: most tracks never see either, and
/// pay a pointer for both (a track is 64 bytes; nine of them fit a 768-byte block).
#[derive(Debug, Default)]
struct Awaited(Option<Box<AwaitedParts>>);

#[derive(Debug, Default)]
struct AwaitedParts {
    gaps: VecDeque<(u64, Instant)>,
    backlog: Option<Backlog>,
}

impl Awaited {
    fn first_gap(&self) -> Option<&(u64, Instant)> {
        self.0.as_ref()?.gaps.front()
    }

    fn close_first_gap(&mut self) -> Option<(u64, Instant)> {
        self.0.as_mut()?.gaps.pop_front()
    }

    fn has_no_gaps(&self) -> bool {
        self.0.as_ref().is_none_or(|parts| parts.gaps.is_empty())
    }

    /// Opens gaps for `missing`, found now.
    fn open_gaps(&mut self, missing: std::ops::Range<u64>, now: Instant) {
        if !missing.is_empty() {
            let parts = self.0.get_or_insert_with(Box::default);
            parts.gaps.extend(missing.map(|seq| (seq, now)));
        }
    }

    /// Closes the gap of `seq`, if one is open.
    fn fill_gap(&mut self, seq: u64) {
        if let Some(parts) = &mut self.0
            && let Some(at) = parts.gaps.iter().position(|&(missing, _)| missing == seq)
        {
            parts.gaps.remove(at);
        }
    }

    /// Every open gap, oldest first; none is left open (nor its memory held, unless a
    /// backlog is).
    fn take_gaps(&mut self) -> Vec<u64> {
        let Some(parts) = &mut self.0 else {
            return Vec::new();
        };
        let gaps = std::mem::take(&mut parts.gaps);
        if parts.backlog.is_none() {
            self.0 = None;
        }
        gaps.into_iter().map(|(seq, _)| seq).collect()
    }

    fn backlog_mut(&mut self) -> Option<&mut Backlog> {
        self.0.as_mut()?.backlog.as_mut()
    }

    fn take_backlog(&mut self) -> Option<Backlog> {
        self.0.as_mut()?.backlog.take()
    }

    fn set_backlog(&mut self, backlog: Backlog) {
        self.0.get_or_insert_with(Box::default).backlog = Some(backlog);
    }
}

/// Most sequences of one sender a backlog tracks (a bit each: 512 KiB): older ones are lost
/// at once, counted without waiting for them.
const MAX_BACKLOG: u64 = 1 << 22;

/// The sequences `from..=until` of one sender, missed while away: which have arrived.
#[derive(Debug)]
struct Backlog {
    from: u64,
    until: u64,
    /// Bit i of word i / 64: sequence `from + i` arrived.
    seen: Vec<u64>,
    arrived: u64,
    /// The sync stalled: what had not arrived was counted lost.
    given_up: bool,
}

impl Backlog {
    fn new(from: u64, until: u64) -> Backlog {
        let len = until + 1 - from;
        Backlog {
            from,
            until,
            seen: vec![0; len.div_ceil(64) as usize],
            arrived: 0,
            given_up: false,
        }
    }

    fn len(&self) -> u64 {
        self.until + 1 - self.from
    }

    fn contains(&self, seq: u64) -> bool {
        (self.from..=self.until).contains(&seq)
    }

    /// Marks `seq` (inside) arrived; false if it had already.
    fn mark(&mut self, seq: u64) -> bool {
        let i = seq - self.from;
        let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        let first = self.seen[word] & bit == 0;
        self.seen[word] |= bit;
        self.arrived += u64::from(first);
        first
    }

    /// What is still awaited (nothing once given up).
    fn missing(&self) -> u64 {
        if self.given_up {
            0
        } else {
            self.len() - self.arrived
        }
    }

    /// Whether `seq` is inside and arrived.
    fn has(&self, seq: u64) -> bool {
        self.contains(seq) && {
            let i = seq - self.from;
            self.seen[(i / 64) as usize] & (1u64 << (i % 64)) != 0
        }
    }
}

/// A receiver back from time away: when it returned, and how its sync goes.
#[derive(Debug)]
struct Return {
    at: Instant,
    /// The last arrival from a backlog (the return itself before one): the sync is given
    /// up a grace period after it.
    progress: Instant,
    /// Backlogs still open.
    open: usize,
    /// Losses of the sync path not yet collected.
    lost: u64,
    /// The catch-up time, once every backlog arrived, until collected.
    caught_up: Option<std::time::Duration>,
}

/// Losses found since the last collection, by the path the message should have taken.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Losses {
    pub live: u64,
    pub sync: u64,
}

impl Sender {
    /// Counts the announced sequences that never arrived as lost; returns how many.
    fn give_up_tail(&mut self) -> u64 {
        let missing = self.until.saturating_sub(self.highest);
        if missing > 0 {
            // As if they had arrived unseen: late copies are then reordered, not new.
            self.seen = if missing >= 128 {
                0
            } else {
                self.seen << missing
            };
            self.highest = self.until;
        }
        missing
    }
}

/// Where `sender`'s tracks are in `tracks` (sorted by sender): an empty range where they
/// would go if it has none.
fn run_of(tracks: &[(Box<str>, Sender)], sender: &str) -> std::ops::Range<usize> {
    let start = tracks.partition_point(|(s, _)| &**s < sender);
    let len = tracks[start..]
        .iter()
        .take_while(|(s, _)| &**s == sender)
        .count();
    start..start + len
}

/// The track `seq` of `sender` belongs to, with its number there.
fn track_of<'a>(
    tracks: &'a mut [(Box<str>, Sender)],
    sender: &str,
    seq: u64,
) -> Option<(&'a mut Sender, u64)> {
    let run = run_of(tracks, sender);
    tracks[run]
        .iter_mut()
        .find_map(|(_, t)| t.lane.index(seq).map(|index| (t, index)))
}

/// One receiving session's view of every sender it hears.
#[derive(Debug, Default)]
pub struct Tracker {
    /// One track per (sender, shared room), sorted by sender; a sender's rooms in the order
    /// they were added. Held at its exact length: a receiver tracks its room's members from
    /// when it joins, and a hash map's spare buckets were most of what an `im` user held.
    tracks: Box<[(Box<str>, Sender)]>,
    /// Gaps that became losses and have not been collected by [`Tracker::take_lost`].
    lost: u64,
    /// When the senders' final sequences were announced: the tail's grace runs from then.
    tail_since: Tick,
    /// Set when the receiver came back from time away with its books kept ([`Tracker::back`]).
    back: Option<Box<Return>>,
}

impl Tracker {
    /// Expects from `sender` (whose public state is `slot`) every message of `lane` after
    /// the last one it sent by now. A lane already known keeps its baseline.
    #[cfg(test)]
    pub fn expect_from(&mut self, sender: &str, slot: Arc<Slot>, lane: Lane) {
        self.expect_from_all([(sender.into(), slot, lane)]);
    }

    /// [`Tracker::expect_from`] for many senders at once (a room's members when a receiver
    /// joins): the tracks are sorted and cut to their exact length once, not once per sender,
    /// which in a room of thousands would move the whole slice per member. The senders given
    /// are distinct (sender, lane) pairs.
    pub fn expect_from_all(
        &mut self,
        senders: impl IntoIterator<Item = (Box<str>, Arc<Slot>, Lane)>,
    ) {
        let mut tracks = std::mem::take(&mut self.tracks).into_vec();
        let known = tracks.len();
        for (sender, slot, lane) in senders {
            let run = run_of(&tracks[..known], &sender);
            if tracks[run].iter().any(|(_, t)| t.lane == lane) {
                continue;
            }
            let sent = lane.count(slot.sent());
            let track = Sender {
                slot,
                lane,
                baseline: sent + 1,
                until: 0,
                highest: sent,
                // Everything up to the baseline counts as seen; it is below the baseline anyway.
                seen: u128::MAX,
                awaited: Awaited::default(),
            };
            tracks.push((sender, track));
        }
        if tracks.len() > known {
            // Stable: a sender's rooms stay in the order they were added.
            tracks.sort_by(|(a, _), (b, _)| a.cmp(b));
        }
        self.tracks = tracks.into_boxed_slice();
    }

    /// Expects `sender`'s messages up to `sent`, its final sequence, in every room shared
    /// with it. Only senders with a baseline are judged: for the others this receiver cannot
    /// tell what it should have had.
    pub fn expect_until(&mut self, sender: &str, sent: u64, now: Instant) {
        let run = run_of(&self.tracks, sender);
        for (_, track) in &mut self.tracks[run.clone()] {
            track.until = track.until.max(track.lane.count(sent));
        }
        if !run.is_empty() && self.tail_since == Tick::NONE {
            self.tail_since = Tick::at(now);
        }
    }

    /// Every track: one per (sender, shared room).
    fn tracks(&self) -> impl Iterator<Item = &Sender> {
        self.tracks.iter().map(|(_, t)| t)
    }

    fn tracks_mut(&mut self) -> impl Iterator<Item = &mut Sender> {
        self.tracks.iter_mut().map(|(_, t)| t)
    }

    /// The receiver is back from time away, its books kept since: everything each member
    /// sent since the last delivery from it, and every gap still open, is its backlog,
    /// expected through the server's sync from `now`.
    pub fn back(&mut self, now: Instant) {
        let (mut open, mut lost) = (0, 0);
        for track in self.tracks_mut() {
            let sent = track.lane.count(track.slot.sent()).max(track.highest);
            // From the window of what arrived live (a copy of that in the sync is the sync's
            // duplicate), the first gap still open, or an earlier return's backlog still
            // awaited.
            let window = (track.highest + 1)
                .saturating_sub(WINDOW)
                .max(track.baseline);
            let earlier = track.awaited.take_backlog();
            let awaited = earlier.as_ref().filter(|e| e.missing() > 0);
            let first_gap = track.awaited.first_gap().map(|&(seq, _)| seq);
            let mut from = [first_gap, awaited.map(|e| e.from)]
                .into_iter()
                .flatten()
                .fold(window, u64::min);
            let gaps = track.awaited.take_gaps();
            if sent < from {
                continue;
            }
            if sent + 1 - from > MAX_BACKLOG {
                lost += sent + 1 - MAX_BACKLOG - from;
                from = sent + 1 - MAX_BACKLOG;
            }
            let mut backlog = Backlog::new(from, sent);
            // Up to the highest sequence, only the open gaps (and what an earlier backlog
            // still awaits) are awaited: the rest arrived, or was counted lost already.
            for seq in from..=track.highest {
                let settled = match &earlier {
                    Some(e) if e.contains(seq) => e.has(seq) || e.given_up,
                    _ => gaps.binary_search(&seq).is_err(),
                };
                if settled {
                    backlog.mark(seq);
                }
            }
            if sent > track.highest {
                // The backlog is judged by its own bits (every sequence in it goes there
                // first); the window moves past it.
                let shift = sent - track.highest;
                track.seen = if shift >= 128 { 0 } else { track.seen << shift };
                track.highest = sent;
            }
            open += usize::from(backlog.missing() > 0);
            // Kept once complete too: a second copy is still the sync's duplicate.
            track.awaited.set_backlog(backlog);
        }
        self.back = Some(Box::new(Return {
            at: now,
            progress: now,
            open,
            lost,
            caught_up: (open == 0).then_some(std::time::Duration::ZERO),
        }));
    }

    /// Counts what every backlog still awaits as lost on the sync path.
    fn give_up_sync(&mut self) {
        let mut lost = 0;
        for track in self.tracks_mut() {
            if let Some(backlog) = track.awaited.backlog_mut() {
                lost += backlog.missing();
                backlog.given_up = true;
            }
        }
        if let Some(back) = &mut self.back {
            back.lost += lost;
            back.open = 0;
        }
    }

    /// Whether a backlog is still awaited from the sync.
    fn syncing(&self) -> Option<&Return> {
        self.back.as_deref().filter(|back| back.open > 0)
    }

    /// The time from the return to the last message of the backlog, once it has all
    /// arrived (zero when nothing was missed); given once.
    pub fn take_caught_up(&mut self) -> Option<std::time::Duration> {
        self.back.as_mut()?.caught_up.take()
    }

    /// Whether nothing is awaited: no open gap or backlog, every announced final sequence
    /// arrived.
    pub fn is_settled(&self) -> bool {
        self.syncing().is_none()
            && self
                .tracks()
                .all(|t| t.awaited.has_no_gaps() && t.until <= t.highest)
    }

    /// When the next open gap or tail turns into a loss, `grace` after it opened, if any is
    /// open.
    pub fn next_expiry(&self, grace: Duration) -> Option<Instant> {
        let tail = self
            .tail_since
            .get()
            .filter(|_| self.tracks().any(|t| t.until > t.highest));
        let sync = self.syncing().map(|back| back.progress);
        self.tracks()
            .filter_map(|t| t.awaited.first_gap().map(|&(_, found)| found))
            .chain(tail)
            .chain(sync)
            .min()
            .map(|since| crate::clock::later(since, grace))
    }

    /// Records one delivery of `seq` from `sender`: a message of a room this receiver does
    /// not share with the sender is foreign.
    pub fn observe(&mut self, sender: &str, seq: u64, now: Instant) -> Delivery {
        let Some((track, seq)) = track_of(&mut self.tracks, sender, seq) else {
            return Delivery::Foreign;
        };
        if let Some(backlog) = track.awaited.backlog_mut().filter(|b| b.contains(seq)) {
            if !backlog.mark(seq) {
                return Delivery::SyncDuplicate;
            }
            if backlog.given_up {
                // Already counted lost: a late arrival.
                return Delivery::Reordered;
            }
            if let Some(back) = &mut self.back {
                back.progress = now;
                if backlog.missing() == 0 {
                    back.open = back.open.saturating_sub(1);
                    if back.open == 0 {
                        back.caught_up = Some(now.saturating_duration_since(back.at));
                    }
                }
            }
            return Delivery::Offline;
        }
        if seq < track.baseline {
            return Delivery::Untracked;
        }
        if seq > track.highest {
            // Read only for a new highest sequence: one relaxed load of the sender's slot.
            if seq > track.lane.count(track.slot.issued()) {
                return Delivery::Invalid;
            }
            let shift = seq - track.highest;
            // Of the sequences skipped, only those that stay inside the window can still
            // arrive in time; the others are lost at once, counted without walking them.
            let first_open = (seq + 1).saturating_sub(WINDOW).max(track.highest + 1);
            self.lost += first_open - (track.highest + 1);
            track.awaited.open_gaps(first_open..seq, now);
            track.seen = if shift >= 128 {
                1
            } else {
                (track.seen << shift) | 1
            };
            track.highest = seq;
            while let Some(&(missing, _)) = track.awaited.first_gap() {
                if seq - missing < WINDOW {
                    break;
                }
                track.awaited.close_first_gap();
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
        track.awaited.fill_gap(seq);
        Delivery::Reordered
    }

    /// Turns gaps and tails older than the grace period into losses, and a backlog whose
    /// sync made no progress for as long.
    pub fn expire(&mut self, now: Instant, grace: Duration) {
        if self
            .syncing()
            .is_some_and(|back| now.duration_since(back.progress) >= grace)
        {
            self.give_up_sync();
        }
        let tail_due = self
            .tail_since
            .get()
            .is_some_and(|since| now.duration_since(since) >= grace);
        let mut lost = 0;
        for track in self.tracks_mut() {
            while let Some(&(_, found)) = track.awaited.first_gap() {
                if now.duration_since(found) < grace {
                    break;
                }
                track.awaited.close_first_gap();
                lost += 1;
            }
            if tail_due {
                lost += track.give_up_tail();
            }
        }
        self.lost += lost;
    }

    /// Ends tracking (the session is over): every open gap, backlog and missing tail is lost.
    pub fn finish(&mut self) {
        self.give_up_sync();
        let mut lost = 0;
        for track in self.tracks_mut() {
            lost += track.awaited.take_gaps().len() as u64;
            lost += track.give_up_tail();
        }
        self.lost += lost;
    }

    /// Losses found since the last call.
    pub fn take_lost(&mut self) -> Losses {
        Losses {
            live: std::mem::take(&mut self.lost),
            sync: self
                .back
                .as_mut()
                .map_or(0, |back| std::mem::take(&mut back.lost)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(1);
    /// What the test senders have issued: any sequence a test feeds is one they sent.
    const ISSUED: u64 = 1 << 40;

    /// A tracker expecting senders "a" and "b" from after `sent`.
    fn tracker(sent: u64) -> Tracker {
        let mut t = Tracker::default();
        t.expect_from("a", Slot::at(sent, ISSUED), Lane::ALL);
        t.expect_from("b", Slot::at(sent, ISSUED), Lane::ALL);
        t
    }

    fn feed(tracker: &mut Tracker, seqs: &[u64], now: Instant) -> Vec<Delivery> {
        seqs.iter().map(|&s| tracker.observe("a", s, now)).collect()
    }

    #[test]
    fn in_order_deliveries_are_new_and_nothing_is_lost() {
        let now = Instant::now();
        let mut t = tracker(4);
        assert!(
            feed(&mut t, &[5, 6, 7, 8], now)
                .iter()
                .all(|d| *d == Delivery::New)
        );
        t.finish();
        assert_eq!(t.take_lost().live, 0);
    }

    #[test]
    fn what_was_sent_before_the_join_is_not_expected() {
        let now = Instant::now();
        let mut t = tracker(99);
        feed(&mut t, &[100, 101], now);
        assert_eq!(t.observe("a", 50, now), Delivery::Untracked);
        t.finish();
        assert_eq!(t.take_lost().live, 0);
    }

    #[test]
    fn a_gap_is_lost_only_after_the_grace_period() {
        let start = Instant::now();
        let mut t = tracker(0);
        feed(&mut t, &[1, 2, 4], start);
        t.expire(start + Duration::from_millis(999), GRACE);
        assert_eq!(t.take_lost().live, 0, "still within grace");
        t.expire(start + GRACE, GRACE);
        assert_eq!(t.take_lost().live, 1);
    }

    #[test]
    fn a_gap_filled_in_time_is_reordered_not_lost() {
        let start = Instant::now();
        let mut t = tracker(0);
        feed(&mut t, &[1, 3], start);
        assert_eq!(t.observe("a", 2, start), Delivery::Reordered);
        t.expire(start + 10 * GRACE, GRACE);
        t.finish();
        assert_eq!(t.take_lost().live, 0);
    }

    #[test]
    fn duplicates_are_recognised_in_and_out_of_order() {
        let now = Instant::now();
        let mut t = tracker(0);
        feed(&mut t, &[1, 2, 3], now);
        assert_eq!(t.observe("a", 3, now), Delivery::Duplicate);
        assert_eq!(t.observe("a", 1, now), Delivery::Duplicate);
        assert!(!Delivery::Duplicate.is_first_arrival());
        assert_eq!(
            t.observe("b", 3, now),
            Delivery::New,
            "senders are separate"
        );
    }

    #[test]
    fn open_gaps_are_lost_when_the_session_ends() {
        let now = Instant::now();
        let mut t = tracker(0);
        feed(&mut t, &[1, 4], now);
        t.finish();
        assert_eq!(t.take_lost().live, 2);
    }

    #[test]
    fn messages_sent_after_the_join_are_expected_from_the_first() {
        let now = Instant::now();
        let mut t = tracker(10);
        assert_eq!(t.observe("a", 10, now), Delivery::Untracked, "sent before");
        // 11 and 12 were dropped: the first delivery no longer hides them.
        assert_eq!(t.observe("a", 13, now), Delivery::New);
        t.finish();
        assert_eq!(t.take_lost().live, 2);
    }

    #[test]
    fn a_dropped_last_message_is_lost_once_the_final_sequence_is_known() {
        let start = Instant::now();
        let mut t = tracker(0);
        feed(&mut t, &[1, 2], start);
        t.observe("b", 1, start);
        // Final sequences: a sent 4 (3 and 4 missing so far), b sent 1 (complete).
        t.expect_until("a", 4, start);
        t.expect_until("b", 1, start);
        assert!(!t.is_settled());
        assert_eq!(t.next_expiry(GRACE), Some(start + GRACE));
        assert_eq!(
            t.observe("a", 3, start),
            Delivery::New,
            "in flight, not reordered"
        );
        t.expire(start + GRACE, GRACE);
        assert_eq!(t.take_lost().live, 1, "4 never came");
        assert!(t.is_settled());
        assert_eq!(t.next_expiry(GRACE), None);
        assert_eq!(
            t.observe("a", 4, start + GRACE),
            Delivery::Reordered,
            "too late"
        );
    }

    #[test]
    fn a_session_that_ends_loses_its_missing_tail() {
        let now = Instant::now();
        let mut t = tracker(5);
        t.expect_until("a", 8, now);
        t.expect_until("stranger", 8, now);
        t.finish();
        assert_eq!(
            t.take_lost().live,
            3,
            "6, 7, 8 of a; b sent nothing more; a stranger is not judged"
        );
    }

    #[test]
    fn gaps_pushed_out_of_the_window_are_lost_at_once() {
        let now = Instant::now();
        let mut t = tracker(0);
        feed(&mut t, &[1, 3], now);
        t.observe("a", 3 + WINDOW, now);
        assert_eq!(t.take_lost().live, 1, "seq 2 left the window");
        t.observe("a", 1000, now);
        // 4..=130 left the window with the jump, and so did 132..=872; 873..=999 stay open.
        assert_eq!(t.take_lost().live, (3 + WINDOW - 4) + (872 - 132 + 1));
        t.finish();
        assert_eq!(t.take_lost().live, 999 - 873 + 1);
    }

    #[test]
    fn a_sequence_its_sender_never_issued_is_invalid_and_costs_nothing() {
        let now = Instant::now();
        let mut t = Tracker::default();
        t.expect_from("a", Slot::at(44, 44), Lane::ALL);
        assert_eq!(t.observe("a", 40, now), Delivery::Untracked);
        // One frame with a sequence of 2^63: before, a loop of 2^63 steps; now refused.
        assert_eq!(t.observe("a", 1 << 63, now), Delivery::Invalid);
        assert_eq!(t.observe("a", u64::MAX, now), Delivery::Invalid);
        assert_eq!(t.observe("a", 45, now), Delivery::Invalid, "not issued yet");
        t.finish();
        assert_eq!(t.take_lost().live, 0, "nothing it sent is missing");
    }

    #[test]
    fn a_jump_of_billions_is_counted_at_once() {
        let now = Instant::now();
        let mut t = tracker(0);
        assert_eq!(t.observe("a", 3_000_000_001, now), Delivery::New);
        assert_eq!(t.take_lost().live, 3_000_000_000 - (WINDOW - 1));
        t.finish();
        assert_eq!(t.take_lost().live, WINDOW - 1);
    }

    #[test]
    fn senders_that_are_not_members_are_foreign_and_not_kept() {
        let now = Instant::now();
        let mut t = tracker(0);
        for i in 0..10_000 {
            assert_eq!(t.observe(&format!("x{i}"), 1, now), Delivery::Foreign);
        }
        assert_eq!(t.tracks.len(), 2, "only the members are tracked");
        assert!(!Delivery::Foreign.is_first_arrival());
    }

    #[test]
    fn a_room_joined_at_once_is_tracked_sorted_and_known_lanes_are_kept() {
        let now = Instant::now();
        let lane = |phase| Lane { stride: 2, phase };
        let mut t = Tracker::default();
        t.expect_from_all([
            ("c".into(), Slot::at(0, ISSUED), lane(0)),
            ("a".into(), Slot::at(0, ISSUED), lane(1)),
            ("c".into(), Slot::at(0, ISSUED), lane(1)),
        ]);
        // Known (sender, lane) pairs are not tracked twice, nor do they lose their baseline.
        assert_eq!(t.observe("c", 1, now), Delivery::New);
        t.expect_from_all([
            ("c".into(), Slot::at(5, ISSUED), lane(0)),
            ("b".into(), Slot::at(0, ISSUED), lane(0)),
        ]);
        let senders: Vec<&str> = t.tracks.iter().map(|(s, _)| &**s).collect();
        assert_eq!(senders, ["a", "b", "c", "c"]);
        assert_eq!(
            t.tracks[2].1.lane,
            lane(0),
            "a sender's rooms in the order added"
        );
        assert_eq!(t.observe("c", 1, now), Delivery::Duplicate);
    }

    #[test]
    fn a_sender_in_several_rooms_is_judged_room_by_room() {
        let now = Instant::now();
        let slot = Slot::at(0, ISSUED);
        // Rooms in turn: odd sequences to the first room, even ones to the second.
        let (first, second) = (
            Lane {
                stride: 2,
                phase: 0,
            },
            Lane {
                stride: 2,
                phase: 1,
            },
        );
        let mut both = Tracker::default();
        both.expect_from("a", Arc::clone(&slot), first);
        both.expect_from("a", Arc::clone(&slot), second);
        both.expect_from("a", Arc::clone(&slot), second);
        let mut one = Tracker::default();
        one.expect_from("a", Arc::clone(&slot), second);
        for seq in [1, 2, 4, 6] {
            assert_eq!(both.observe("a", seq, now), Delivery::New, "seq {seq}");
        }
        assert_eq!(one.observe("a", 1, now), Delivery::Foreign, "not our room");
        assert_eq!(one.observe("a", 2, now), Delivery::New);
        assert_eq!(one.observe("a", 6, now), Delivery::New, "4 is a gap");
        assert_eq!(both.observe("a", 4, now), Delivery::Duplicate);
        both.expect_until("a", 6, now);
        one.expect_until("a", 6, now);
        both.finish();
        one.finish();
        assert_eq!(both.take_lost().live, 2, "3 and 5 of the first room");
        assert_eq!(one.take_lost().live, 1, "4 of the second room");
    }

    /// Books across a gap: a receiver that saw 1..=3 of "a" goes away; "a" sends 4..=9
    /// meanwhile (its slot says so at the return).
    fn back_after_gap(
        sent_before: u64,
        seen: &[u64],
        sent_at_return: u64,
    ) -> (Tracker, Arc<Slot>, Instant) {
        let start = Instant::now();
        let slot = Slot::at(sent_before, ISSUED);
        let mut t = Tracker::default();
        t.expect_from("a", Arc::clone(&slot), Lane::ALL);
        for &seq in seen {
            t.observe("a", seq, start);
        }
        for seq in sent_before + 1..=sent_at_return {
            slot.mark_sent(seq);
        }
        t.back(start + Duration::from_secs(30));
        (t, slot, start + Duration::from_secs(30))
    }

    #[test]
    fn what_was_sent_while_away_is_expected_through_the_sync_and_times_the_catch_up() {
        let (mut t, _slot, back) = back_after_gap(0, &[1, 2, 3], 9);
        assert!(!t.is_settled(), "4..=9 are awaited");
        assert_eq!(t.next_expiry(GRACE), Some(back + GRACE));
        let at = |ms| back + Duration::from_millis(ms);
        for (seq, ms) in [(4, 10), (5, 20), (6, 30), (7, 40), (8, 50)] {
            assert_eq!(t.observe("a", seq, at(ms)), Delivery::Offline, "seq {seq}");
        }
        assert_eq!(t.take_caught_up(), None, "9 is still missing");
        assert_eq!(
            t.observe("a", 3, at(55)),
            Delivery::SyncDuplicate,
            "seen live before going away, again in the sync"
        );
        assert_eq!(t.observe("a", 9, at(60)), Delivery::Offline);
        assert_eq!(t.take_caught_up(), Some(Duration::from_millis(60)));
        assert_eq!(t.take_caught_up(), None, "given once");
        assert!(t.is_settled());
        assert_eq!(t.observe("a", 10, at(70)), Delivery::New, "live again");
        t.finish();
        assert_eq!(t.take_lost(), Losses::default());
    }

    #[test]
    fn a_backlog_sent_twice_is_counted_twice_on_the_sync_path() {
        let (mut t, _slot, back) = back_after_gap(0, &[1], 4);
        for seq in [2, 3, 4] {
            assert_eq!(t.observe("a", seq, back), Delivery::Offline);
        }
        for seq in [2, 3, 4] {
            assert_eq!(t.observe("a", seq, back), Delivery::SyncDuplicate);
        }
        assert!(!Delivery::SyncDuplicate.is_first_arrival());
        assert!(Delivery::Offline.is_first_arrival());
        t.finish();
        assert_eq!(t.take_lost(), Losses::default());
    }

    #[test]
    fn a_truncated_backlog_is_lost_on_the_sync_path_once_the_sync_stalls() {
        let (mut t, _slot, back) = back_after_gap(0, &[1, 2], 10);
        // The server sends the first 3 of 8 and stops.
        for (seq, ms) in [(3, 100), (4, 200), (5, 300)] {
            t.observe("a", seq, back + Duration::from_millis(ms));
        }
        let last = back + Duration::from_millis(300);
        assert_eq!(
            t.next_expiry(GRACE),
            Some(last + GRACE),
            "from the last progress"
        );
        t.expire(last + GRACE - Duration::from_millis(1), GRACE);
        assert_eq!(t.take_lost(), Losses::default(), "still within grace");
        t.expire(last + GRACE, GRACE);
        assert_eq!(t.take_lost(), Losses { live: 0, sync: 5 }, "6..=10");
        assert!(t.is_settled());
        assert_eq!(t.take_caught_up(), None, "it never caught up");
        assert_eq!(
            t.observe("a", 7, last + GRACE),
            Delivery::Reordered,
            "too late: already lost"
        );
    }

    #[test]
    fn a_gap_open_when_the_receiver_left_joins_its_backlog_and_a_return_with_nothing_missed_is_caught_up_at_once()
     {
        let (mut t, _slot, back) = back_after_gap(0, &[1, 3], 4);
        // 2 was a gap when it left: expected through the sync with 4.
        assert_eq!(t.observe("a", 2, back), Delivery::Offline);
        assert_eq!(t.observe("a", 4, back), Delivery::Offline);
        assert_eq!(t.take_caught_up(), Some(Duration::ZERO));
        let (mut quiet, _slot, _) = back_after_gap(0, &[1, 2], 2);
        assert!(quiet.is_settled());
        assert_eq!(
            quiet.take_caught_up(),
            Some(Duration::ZERO),
            "nothing to catch up"
        );
    }

    #[test]
    fn what_never_came_when_the_session_ends_is_lost_by_its_path() {
        let (mut t, slot, back) = back_after_gap(0, &[1], 5);
        t.observe("a", 2, back);
        // Live again: 6 and 8 arrive, 7 does not.
        for seq in 6..=8 {
            slot.mark_sent(seq);
        }
        assert_eq!(t.observe("a", 6, back), Delivery::New);
        assert_eq!(t.observe("a", 8, back), Delivery::New);
        t.finish();
        assert_eq!(
            t.take_lost(),
            Losses { live: 1, sync: 3 },
            "7 live; 3, 4, 5 sync"
        );
    }

    #[test]
    fn coming_back_again_before_the_sync_ended_keeps_what_was_still_awaited() {
        let (mut t, slot, back) = back_after_gap(0, &[1], 4);
        t.observe("a", 2, back);
        for seq in 5..=6 {
            slot.mark_sent(seq);
        }
        t.back(back + Duration::from_millis(500));
        for seq in [3, 4, 5, 6] {
            assert_eq!(t.observe("a", seq, back), Delivery::Offline, "seq {seq}");
        }
        assert_eq!(t.observe("a", 2, back), Delivery::SyncDuplicate);
        t.finish();
        assert_eq!(t.take_lost(), Losses::default());
    }

    #[test]
    fn a_gap_already_counted_lost_before_going_away_is_not_awaited_again() {
        let start = Instant::now();
        let slot = Slot::at(0, ISSUED);
        let mut t = Tracker::default();
        t.expect_from("a", Arc::clone(&slot), Lane::ALL);
        for seq in 1..=5 {
            slot.mark_sent(seq);
        }
        for seq in [1, 2, 4, 5] {
            t.observe("a", seq, start);
        }
        t.expire(start + GRACE, GRACE);
        assert_eq!(t.take_lost().live, 1, "3 was lost live");
        for seq in 6..=7 {
            slot.mark_sent(seq);
        }
        t.back(start + 2 * GRACE);
        assert_eq!(t.observe("a", 6, start), Delivery::Offline);
        assert_eq!(t.observe("a", 7, start), Delivery::Offline);
        assert_eq!(
            t.take_caught_up(),
            Some(Duration::ZERO),
            "3 is not awaited again"
        );
        t.finish();
        assert_eq!(t.take_lost(), Losses::default(), "counted once");
    }

    #[test]
    fn a_track_stays_within_its_budget() {
        // An `im` receiver holds one per room member: nine of 80 bytes fit jemalloc's
        // 768-byte class, nine of 96 took 896.
        let track = std::mem::size_of::<(Box<str>, Sender)>();
        assert!(track <= 80, "a track is {track} bytes (was 80)");
    }
}
