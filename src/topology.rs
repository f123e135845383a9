//! Who is in which room: a group's users laid out into rooms from their numbers alone, so
//! two runs of one config have the same rooms and every process agrees on them.
//!
//! A user is in one room of each *layer*. The simple form has `rooms_per_user` (k) layers of
//! `room_size`; a `rooms` table gives each layer its own size (a DM, a team room, a big room).
//! Users are laid out in *blocks* — the least common multiple of the layers' `size × repeats`
//! (`room_size × k` in the simple form) — and every layer cuts each block into whole rooms:
//! layer 0 into consecutive ones (with one layer this is today's `room-{i / room_size}`), every
//! further layer after a fixed shuffle of the block (multiplying the position by a number
//! prime to the block), so a user's rooms hold mostly different people. A block is the unit
//! shards deal out ([`Shard`]): every room of every layer stays inside one process. A short
//! last block (the users do not fill it) has smaller rooms.
//!
//! A sender's messages go to its rooms in turn: message `seq` goes to layer `(seq - 1) mod k`.
//! So one sequence per sender serves every room (acks and `{{msg_id}}` stay as they are), and
//! a receiver tells a message of one room from another's by the sequence alone — its books are
//! kept per (sender, layer) as [`Lane`]s, exact whichever rooms two users share.

use std::ops::Range;

use crate::shard::Shard;

/// Most rooms one user may be in.
pub const MAX_ROOMS_PER_USER: u32 = 16;

/// Largest block of users laid out together (a room of a million, sixteen times).
pub const MAX_BLOCK: u32 = 16_000_000;

/// How a group's users are laid out into rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// Each layer's room size; the first `layers` are used.
    sizes: [u32; MAX_ROOMS_PER_USER as usize],
    layers: u32,
    block: u32,
}

/// Where a group's rooms come from: the live `room_size` (with a fixed number of rooms per
/// user), or a table of sizes fixed at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rooms {
    Uniform { rooms_per_user: u32 },
    Table(Topology),
}

impl Rooms {
    /// The layout under the live `room_size` (which a table does not use).
    pub fn topology(&self, room_size: u32) -> Topology {
        match *self {
            Rooms::Uniform { rooms_per_user } => Topology::new(room_size, rooms_per_user),
            Rooms::Table(topology) => topology,
        }
    }

    /// Whether `room_size` changes nothing here.
    pub fn is_table(&self) -> bool {
        matches!(self, Rooms::Table(_))
    }
}

/// One of a sender's rooms as a receiver sees it: the sender's messages with
/// `(seq - 1) mod stride == phase`, numbered 1, 2, 3… within that room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lane {
    pub stride: u32,
    pub phase: u32,
}

impl Lane {
    /// Every message of the sender (a sender in one room).
    pub const ALL: Lane = Lane {
        stride: 1,
        phase: 0,
    };

    /// The lane of message `seq` of a sender with `stride` rooms.
    pub fn of(seq: u64, stride: u32) -> Lane {
        let stride = stride.max(1);
        Lane {
            stride,
            phase: (seq.saturating_sub(1) % u64::from(stride)) as u32,
        }
    }

    /// Message `seq`'s number within this lane; `None` for a message of another lane.
    pub fn index(&self, seq: u64) -> Option<u64> {
        if self.stride <= 1 {
            return Some(seq);
        }
        let stride = u64::from(self.stride);
        (seq >= 1 && (seq - 1) % stride == u64::from(self.phase)).then(|| (seq - 1) / stride + 1)
    }

    /// How many of a sender's first `last` messages went to this lane.
    pub fn count(&self, last: u64) -> u64 {
        if self.stride <= 1 {
            return last;
        }
        let phase = u64::from(self.phase);
        if last <= phase {
            0
        } else {
            (last - 1 - phase) / u64::from(self.stride) + 1
        }
    }
}

impl Topology {
    /// `rooms_per_user` rooms of `room_size` each (both at least 1; at most
    /// [`MAX_ROOMS_PER_USER`] rooms).
    pub fn new(room_size: u32, rooms_per_user: u32) -> Topology {
        let size = room_size.max(1);
        let layers = rooms_per_user.clamp(1, MAX_ROOMS_PER_USER);
        let mut sizes = [size; MAX_ROOMS_PER_USER as usize];
        sizes[layers as usize..].fill(0);
        Topology {
            sizes,
            layers,
            block: size.saturating_mul(layers),
        }
    }

    /// One room of each `(size, repeats)` per user, `repeats` times: a table's layers in
    /// order. The error says what is out of bounds.
    pub fn table(rows: &[(u32, u32)]) -> Result<Topology, String> {
        let mut sizes = [0; MAX_ROOMS_PER_USER as usize];
        let mut layers = 0usize;
        let mut block: u64 = 1;
        for &(size, repeats) in rows {
            if size == 0 || repeats == 0 {
                return Err("every room size and repeat count must be at least 1".into());
            }
            if layers + repeats as usize > sizes.len() {
                return Err(format!(
                    "a user may be in at most {MAX_ROOMS_PER_USER} rooms; the table gives {}",
                    rows.iter().map(|&(_, r)| u64::from(r)).sum::<u64>()
                ));
            }
            sizes[layers..layers + repeats as usize].fill(size);
            layers += repeats as usize;
            let unit = u64::from(size) * u64::from(repeats);
            block = block / gcd(block, unit) * unit;
            if block > u64::from(MAX_BLOCK) {
                return Err(format!(
                    "these sizes lay users out in blocks of more than {MAX_BLOCK} (the least common multiple of size × repeats); pick sizes that divide one another"
                ));
            }
        }
        if layers == 0 {
            return Err("the table needs at least one row".into());
        }
        Ok(Topology {
            sizes,
            layers: layers as u32,
            block: block as u32,
        })
    }

    /// Each layer's room size.
    pub fn sizes(&self) -> &[u32] {
        &self.sizes[..self.layers as usize]
    }

    pub fn rooms_per_user(&self) -> u32 {
        self.layers
    }

    /// A user's room sizes for a person: `10`, `3×10`, `2×2 + 30 + 2000`.
    pub fn describe(&self) -> String {
        let mut runs: Vec<(u32, usize)> = Vec::new();
        for &size in self.sizes() {
            match runs.last_mut() {
                Some((last, count)) if *last == size => *count += 1,
                _ => runs.push((size, 1)),
            }
        }
        runs.iter()
            .map(|&(size, count)| match count {
                1 => size.to_string(),
                _ => format!("{count}×{size}"),
            })
            .collect::<Vec<_>>()
            .join(" + ")
    }

    /// Users laid out together: whole rooms of every layer.
    pub fn block(&self) -> u32 {
        self.block
    }

    /// Rooms of layer `layer` in a full block.
    fn rooms_in_block(&self, layer: u32) -> u64 {
        u64::from(self.block / self.sizes[layer as usize])
    }

    /// Rooms of `users` users (every layer).
    pub fn rooms(&self, users: u32) -> u64 {
        let block = u64::from(self.block);
        let users = u64::from(users);
        let per_block: u64 = (0..self.layers).map(|l| self.rooms_in_block(l)).sum();
        let rest = users % block;
        // A short block has every room some of its users fall in.
        let partial = (0..self.layers)
            .map(|layer| {
                let mut seen = vec![false; self.rooms_in_block(layer) as usize];
                for position in 0..rest {
                    seen[self.room_in_block(position, layer) as usize] = true;
                }
                seen.iter().filter(|&&s| s).count() as u64
            })
            .sum::<u64>();
        users / block * per_block + partial
    }

    /// This shard's part of a group of `total` users.
    pub fn local_users(&self, shard: &Shard, total: u32) -> u32 {
        shard.users(total, self.block)
    }

    /// The fleet-wide number of this shard's user `local`.
    pub fn global(&self, shard: &Shard, local: u32) -> u32 {
        shard.global(local, self.block)
    }

    /// The number of user `user`'s room in layer `layer`, unique across layers (with one
    /// layer, `user / room_size`). Users and rooms are numbered in one numbering: fleet-wide
    /// ids give the room's fleet-wide name.
    pub fn room(&self, user: u32, layer: u32) -> u64 {
        let per_block: u64 = (0..self.layers).map(|l| self.rooms_in_block(l)).sum();
        let before: u64 = (0..layer).map(|l| self.rooms_in_block(l)).sum();
        let position = u64::from(user % self.block);
        u64::from(user / self.block) * per_block + before + self.room_in_block(position, layer)
    }

    /// The members of user `user`'s room in layer `layer` whose numbers fall in `among`
    /// (the users there are), in no particular order; `user` is one of them if it is there.
    pub fn members(&self, user: u32, layer: u32, among: Range<u32>) -> impl Iterator<Item = u32> {
        let block = u64::from(self.block);
        let base = user / self.block * self.block;
        let room = self.room_in_block(u64::from(user % self.block), layer);
        let size = u64::from(self.sizes[layer as usize]);
        let unshuffle = self.unshuffle(layer);
        (room * size..(room + 1) * size)
            .map(move |x| x * unshuffle % block)
            .filter_map(move |position| u32::try_from(position).ok())
            .map(move |position| base.saturating_add(position))
            .filter(move |member| among.contains(member))
    }

    /// How many members user `user`'s room in layer `layer` has among the first `users`.
    pub fn room_members(&self, user: u32, layer: u32, users: u32) -> u32 {
        if layer == 0 {
            // Consecutive: no walk.
            let size = self.sizes[0];
            let first = user / size * size;
            return first
                .saturating_add(size)
                .min(users.max(first))
                .saturating_sub(first);
        }
        self.members(user, layer, 0..users).count() as u32
    }

    /// The layer message `seq` goes to.
    pub fn layer_of(&self, seq: u64) -> u32 {
        Lane::of(seq, self.layers).phase
    }

    /// The lane a receiver keeps for a sender's messages to their room in layer `layer`.
    pub fn lane(&self, layer: u32) -> Lane {
        Lane {
            stride: self.layers,
            phase: layer,
        }
    }

    /// Which room of its block (within its layer) the user at `position` is in.
    fn room_in_block(&self, position: u64, layer: u32) -> u64 {
        position * self.shuffle(layer) % u64::from(self.block)
            / u64::from(self.sizes[layer as usize])
    }

    /// The multiplier that shuffles a block for layer `layer`: 1 for layer 0, then the
    /// numbers after the layer's room size prime to the block, one per layer (the same again
    /// if the block has too few).
    fn shuffle(&self, layer: u32) -> u64 {
        let block = u64::from(self.block);
        if layer == 0 || block <= 2 {
            return 1;
        }
        let from = u64::from(self.sizes[layer as usize]) + 1;
        let mut units = (from..from + block)
            .map(|g| g % block)
            .filter(|&g| g > 1 && gcd(g, block) == 1);
        let first = units.clone().next().unwrap_or(1);
        units.nth(layer as usize - 1).unwrap_or(first)
    }

    /// The inverse of [`Topology::shuffle`] modulo the block.
    fn unshuffle(&self, layer: u32) -> u64 {
        inverse(self.shuffle(layer), u64::from(self.block))
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `a⁻¹ mod m` for `a` prime to `m` (extended Euclid).
fn inverse(a: u64, m: u64) -> u64 {
    if m <= 1 {
        return 0;
    }
    let (mut old_r, mut r) = (a as i128, m as i128);
    let (mut old_s, mut s) = (1i128, 0i128);
    while r != 0 {
        let q = old_r / r;
        (old_r, r) = (r, old_r - q * r);
        (old_s, s) = (s, old_s - q * s);
    }
    old_s.rem_euclid(m as i128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// Every room of every layer, as sets of users, among the first `users`.
    fn rooms_of(topology: Topology, users: u32) -> BTreeMap<u64, BTreeSet<u32>> {
        let mut rooms: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
        for user in 0..users {
            for layer in 0..topology.rooms_per_user() {
                rooms
                    .entry(topology.room(user, layer))
                    .or_default()
                    .insert(user);
            }
        }
        rooms
    }

    #[test]
    fn one_room_per_user_is_todays_layout() {
        let topology = Topology::new(10, 1);
        assert_eq!(topology.room(0, 0), 0);
        assert_eq!(topology.room(19, 0), 1);
        assert_eq!(
            topology.members(13, 0, 0..15).collect::<Vec<_>>(),
            (10..15).collect::<Vec<_>>()
        );
        assert_eq!(topology.room_members(13, 0, 15), 5);
        assert_eq!(topology.rooms(25), 3);
        assert_eq!(topology.lane(0), Lane::ALL);
        assert_eq!(topology.layer_of(7), 0);
    }

    #[test]
    fn every_layer_cuts_a_full_block_into_whole_rooms_of_different_people() {
        for (size, k) in [(2, 2), (2, 3), (3, 3), (10, 3), (30, 2), (7, 16)] {
            let topology = Topology::new(size, k);
            let users = topology.block() * 3;
            let rooms = rooms_of(topology, users);
            assert_eq!(rooms.len() as u64, topology.rooms(users), "{size}x{k}");
            assert!(
                rooms.values().all(|members| members.len() == size as usize),
                "{size}x{k}"
            );
            for user in 0..users {
                let mut mine = BTreeSet::new();
                for layer in 0..k {
                    let members: BTreeSet<u32> = topology.members(user, layer, 0..users).collect();
                    assert_eq!(
                        members,
                        rooms[&topology.room(user, layer)],
                        "{size}x{k} u{user} l{layer}"
                    );
                    assert!(
                        mine.insert(topology.room(user, layer)),
                        "a user's rooms are distinct"
                    );
                }
            }
            if size > 2 {
                // Layer 1 does not repeat layer 0: some room-mates of user 0 differ.
                let first: BTreeSet<u32> = topology.members(0, 0, 0..users).collect();
                let second: BTreeSet<u32> = topology.members(0, 1, 0..users).collect();
                assert_ne!(first, second, "{size}x{k}");
            }
        }
    }

    #[test]
    fn a_short_last_block_has_smaller_rooms_and_they_are_counted() {
        let topology = Topology::new(10, 3);
        let users = 30 + 14;
        let rooms = rooms_of(topology, users);
        assert_eq!(rooms.len() as u64, topology.rooms(users));
        let counted: u32 = (0..users).map(|u| topology.room_members(u, 2, users)).sum();
        let walked: usize = (0..users)
            .map(|u| topology.members(u, 2, 0..users).count())
            .sum();
        assert_eq!(counted as usize, walked);
        assert!(rooms.values().all(|m| m.len() <= 10));
    }

    #[test]
    fn lanes_number_a_senders_messages_room_by_room() {
        let lane = Lane {
            stride: 3,
            phase: 1,
        };
        assert_eq!(Lane::of(5, 3), lane);
        assert_eq!(lane.index(2), Some(1));
        assert_eq!(lane.index(5), Some(2));
        assert_eq!(lane.index(4), None);
        assert_eq!(lane.index(0), None);
        assert_eq!(lane.count(0), 0);
        assert_eq!(lane.count(1), 0);
        assert_eq!(lane.count(2), 1);
        assert_eq!(lane.count(7), 2);
        assert_eq!(Lane::ALL.index(0), Some(0));
        assert_eq!(Lane::ALL.count(9), 9);
    }

    #[test]
    fn shards_hold_whole_blocks() {
        let topology = Topology::new(4, 2);
        let shards: Vec<Shard> = (0..3).map(|i| Shard::new(i, 3).expect("a shard")).collect();
        let total = 8 * 5 + 3;
        let mut globals = BTreeSet::new();
        for shard in &shards {
            let local = topology.local_users(shard, total);
            for user in 0..local {
                let global = topology.global(shard, user);
                assert!(globals.insert(global));
                for layer in 0..2 {
                    // A local room maps onto the global room of the same members.
                    let members: BTreeSet<u32> = topology
                        .members(user, layer, 0..local)
                        .map(|m| topology.global(shard, m))
                        .collect();
                    let expected: BTreeSet<u32> =
                        topology.members(global, layer, 0..total).collect();
                    assert_eq!(members, expected);
                }
            }
        }
        assert_eq!(globals, (0..total).collect());
    }

    #[test]
    fn a_table_puts_each_user_in_a_room_of_every_size() {
        let topology = Topology::table(&[(2, 2), (6, 1), (12, 1)]).expect("valid");
        assert_eq!(topology.sizes(), [2, 2, 6, 12]);
        assert_eq!(topology.block(), 12, "lcm of 4, 6 and 12");
        assert_eq!(topology.describe(), "2×2 + 6 + 12");
        assert_eq!(Topology::new(10, 1).describe(), "10");
        let users = 12 * 4;
        let rooms = rooms_of(topology, users);
        assert_eq!(rooms.len() as u64, topology.rooms(users));
        assert_eq!(rooms.len(), 4 * (6 + 6 + 2 + 1));
        for user in 0..users {
            for (layer, &size) in topology.sizes().iter().enumerate() {
                let members: BTreeSet<u32> =
                    topology.members(user, layer as u32, 0..users).collect();
                assert_eq!(members.len(), size as usize);
                assert!(members.contains(&user));
                assert_eq!(members, rooms[&topology.room(user, layer as u32)]);
            }
        }
        assert!(Topology::table(&[]).is_err());
        assert!(Topology::table(&[(2, 0)]).is_err());
        let many = Topology::table(&[(2, 10), (3, 7)]).expect_err("too many");
        assert!(many.contains("at most 16") && many.contains("17"), "{many}");
        let huge = Topology::table(&[(999_983, 1), (999_979, 1)]).expect_err("too big");
        assert!(huge.contains("blocks"), "{huge}");
        assert_eq!(Rooms::Table(topology).topology(99), topology);
        assert_eq!(
            Rooms::Uniform { rooms_per_user: 2 }.topology(5),
            Topology::new(5, 2)
        );
    }
}
