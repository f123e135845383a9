//! What each user publishes about itself to the rest of the fleet: the sequence of the last
//! message it sent, and whether it is connected. Every sender lives in this process, so a
//! receiver can tell exactly which room messages it should have had: those its room's members
//! sent between its join and the end of the run (see [`crate::scenario::tracking`]).
//!
//! The supervisor grows the roster as it spawns users and never shrinks it, so a user ramped
//! down and spawned again continues its sequence and receivers never see it restart.
//!
//! [`Books`] counts the conversations whose books are still open, for the drain at the end of
//! a run: it waits until every connected user has had its acks and deliveries (or given up on
//! them after their timeouts).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use std::sync::{Arc, RwLock};

use tokio::sync::Notify;

/// Conversations with open books: each counts from its start until it ends or, during a
/// drain, until nothing it awaits is outstanding.
#[derive(Debug, Default)]
pub struct Books {
    open: AtomicUsize,
    all_closed: Notify,
}

impl Books {
    pub fn open(&self) {
        self.open.fetch_add(1, Ordering::AcqRel);
    }

    /// Called once per [`Books::open`].
    pub fn close(&self) {
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.all_closed.notify_waiters();
        }
    }

    pub fn unsettled(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Returns once no conversation has open books.
    pub async fn settled(&self) {
        loop {
            let closed = self.all_closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.unsettled() == 0 {
                return;
            }
            closed.await;
        }
    }
}

/// One user's public state. Only that user's task writes it, except `generation`: the
/// supervisor reaches the task through the slot (see [`Ticket`]), so a user needs no channel
/// or cancellation token of its own.
#[derive(Debug, Default)]
pub struct Slot {
    /// Bumped by the supervisor to end the task running this user: a task runs while the
    /// generation is the one it was spawned under.
    generation: AtomicU32,
    /// The waker of the task running this user, rung to end it or to tell it that its
    /// group's desired state changed (it reads the change from its watch receiver).
    bell: AtomicWaker,
    /// Last sequence number taken for a message (whether or not its write succeeded).
    issued: AtomicU64,
    /// Last sequence number written to the socket successfully.
    sent: AtomicU64,
    /// Connected and logged in: closing it is a ramp-down step; otherwise it goes at once.
    connected: AtomicBool,
    /// A task runs this user: its number may not go to another arrival until it ends.
    running: AtomicBool,
}

impl Slot {
    /// The sequence number of the next message.
    pub fn next_seq(&self) -> u64 {
        self.issued.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Message `seq` left through the socket.
    pub fn mark_sent(&self, seq: u64) {
        self.sent.store(seq, Ordering::Relaxed);
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// The last sequence number taken: no message of this user has a higher one.
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    /// A slot that has issued `issued` sequences and sent the first `sent` of them.
    #[cfg(test)]
    pub fn at(sent: u64, issued: u64) -> Arc<Slot> {
        let slot = Slot::default();
        slot.issued.store(issued, Ordering::Relaxed);
        slot.sent.store(sent, Ordering::Relaxed);
        Arc::new(slot)
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::Release);
    }

    /// Whether a task still runs this user.
    pub fn running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// A ticket for a task spawned now to run this user.
    pub fn ticket(self: &Arc<Slot>) -> Ticket {
        Ticket {
            slot: Arc::clone(self),
            generation: self.generation.load(Ordering::Acquire),
        }
    }

    /// Wakes the task running this user: its group's desired state changed.
    pub fn ring(&self) {
        self.bell.wake();
    }

    /// Registers the running task's waker, to be woken by [`Slot::ring`] or a stop.
    pub fn listen(&self, cx: &std::task::Context<'_>) {
        self.bell.register(cx.waker());
    }
}

/// The supervisor's hold on one task it spawned for a user: stopping it ends that task (and
/// only that one: a task spawned later for the same user holds a newer ticket).
#[derive(Debug, Clone)]
pub struct Ticket {
    slot: Arc<Slot>,
    generation: u32,
}

impl Ticket {
    pub fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    /// Ends the task holding this ticket (at its next poll); stopping twice is stopping once.
    pub fn stop(&self) {
        let next = self.generation.wrapping_add(1);
        let _ = (self.slot.generation).compare_exchange(
            self.generation,
            next,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.slot.ring();
    }

    pub fn is_stopped(&self) -> bool {
        self.slot.generation.load(Ordering::Acquire) != self.generation
    }

    /// Resolves once the ticket is stopped.
    pub async fn stopped(&self) {
        std::future::poll_fn(|cx| {
            if self.is_stopped() {
                return Poll::Ready(());
            }
            self.slot.listen(cx);
            if self.is_stopped() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// Every user's [`Slot`], by user number.
#[derive(Debug, Default)]
pub struct Roster {
    slots: RwLock<Vec<Arc<Slot>>>,
}

impl Roster {
    /// The slot of user `user`, created (with every slot below it) if new.
    pub fn slot(&self, user: u32) -> Arc<Slot> {
        let index = user as usize;
        if let Some(slot) = self
            .slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(index)
        {
            return Arc::clone(slot);
        }
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        while slots.len() <= index {
            slots.push(Arc::default());
        }
        Arc::clone(&slots[index])
    }

    /// The last sequence sent by each user in `users` (0 for users never spawned).
    #[cfg(test)]
    pub fn sent(&self, users: std::ops::Range<u32>) -> Vec<u64> {
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        users
            .map(|user| slots.get(user as usize).map_or(0, |slot| slot.sent()))
            .collect()
    }

    /// How many of `users` are connected now.
    pub fn connected_among(&self, users: impl Iterator<Item = u32>) -> usize {
        let slots = self.slots.read().unwrap_or_else(|e| e.into_inner());
        users
            .filter(|&user| {
                slots
                    .get(user as usize)
                    .is_some_and(|slot| slot.connected())
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_respawned_user_continues_its_sequence() {
        let roster = Roster::default();
        let first = roster.slot(3);
        for _ in 0..5 {
            let seq = first.next_seq();
            first.mark_sent(seq);
        }
        drop(first);
        let again = roster.slot(3);
        assert_eq!(again.next_seq(), 6);
        assert_eq!(roster.sent(2..5), vec![0, 5, 0]);
        assert_eq!(roster.sent(10..12), vec![0, 0], "never spawned");
    }
}
