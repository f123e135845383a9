//! This instance's part of a sharded fleet: `shard: {index, count}`, `--shard 3/10`, or the
//! ordinal of a StatefulSet pod (`wsfleet-3`).
//!
//! The desired load is always the fleet-wide one (every instance takes the same config and the
//! same API calls); each instance derives its share. Users are split by whole rooms, dealt out
//! round-robin — room *r* belongs to shard *r mod count* — so a room never spans two processes
//! (delivery latency is measured on one clock), user ids, credentials rows and rooms are
//! disjoint across shards, and the shards' users add up to the fleet-wide count exactly. A
//! shard numbers its users densely from 0 (its *local* ids); [`Shard::global`] gives the
//! fleet-wide id a user goes by. The connect rate is split evenly.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most shards one fleet may have.
pub const MAX_SHARDS: u32 = 10_000;

/// Which part of the fleet this instance runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    /// From 0.
    pub index: u32,
    /// Instances in the fleet, 1..=10000.
    pub count: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// Checks index < count <= [`MAX_SHARDS`]; the error says what is wrong.
    pub fn new(index: u32, count: u32) -> Result<Shard, String> {
        if count == 0 || count > MAX_SHARDS {
            return Err(format!(
                "the shard count must be between 1 and {MAX_SHARDS}, got {count}"
            ));
        }
        if index >= count {
            return Err(format!(
                "the shard index must be below the count ({count}), got {index}"
            ));
        }
        Ok(Shard { index, count })
    }

    /// `3/10`: index 3 of 10.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let (index, count) = text
            .split_once('/')
            .ok_or_else(|| format!("expected INDEX/COUNT such as 3/10, got `{text}`"))?;
        let number = |part: &str| {
            part.trim()
                .parse::<u32>()
                .map_err(|_| format!("expected INDEX/COUNT such as 3/10, got `{text}`"))
        };
        Shard::new(number(index)?, number(count)?)
    }

    /// The ordinal of a StatefulSet pod name (`wsfleet-3` -> 3).
    pub fn ordinal_of(pod_name: &str) -> Option<u32> {
        pod_name.rsplit_once('-')?.1.parse().ok()
    }

    pub fn is_sharded(&self) -> bool {
        self.count > 1
    }

    /// This shard's users when the fleet holds `total` in rooms of `room_size`.
    pub fn users(&self, total: u32, room_size: u32) -> u32 {
        let (total, size) = (u64::from(total), u64::from(room_size.max(1)));
        let (index, count) = (u64::from(self.index), u64::from(self.count));
        let rooms = total.div_ceil(size);
        if rooms <= index {
            return 0;
        }
        let mine = (rooms - 1 - index) / count + 1;
        let last = rooms - 1;
        let short = if last % count == index {
            rooms * size - total
        } else {
            0
        };
        u32::try_from(mine * size - short).unwrap_or(u32::MAX)
    }

    /// The fleet-wide id of this shard's user `local` (rooms of `room_size`).
    pub fn global(&self, local: u32, room_size: u32) -> u32 {
        let size = u64::from(room_size.max(1));
        let room = u64::from(local) / size * u64::from(self.count) + u64::from(self.index);
        u32::try_from(room * size + u64::from(local) % size).unwrap_or(u32::MAX)
    }

    /// This shard's part of a fleet-wide rate.
    pub fn rate(&self, total: f64) -> f64 {
        total / f64::from(self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_checks() {
        assert_eq!(
            Shard::parse("3/10"),
            Ok(Shard {
                index: 3,
                count: 10
            })
        );
        assert!(Shard::parse("10/10").is_err());
        assert!(Shard::parse("0/0").is_err());
        assert!(Shard::parse("3").is_err());
        assert_eq!(Shard::ordinal_of("wsfleet-12"), Some(12));
        assert_eq!(Shard::ordinal_of("wsfleet"), None);
    }

    #[test]
    fn rooms_are_dealt_out_whole() {
        // 25 users in rooms of 10 over 2 shards: rooms 0 and 2 (5 users) on 0, room 1 on 1.
        let (a, b) = (Shard::new(0, 2).expect("ok"), Shard::new(1, 2).expect("ok"));
        assert_eq!((a.users(25, 10), b.users(25, 10)), (15, 10));
        let globals: Vec<u32> = (0..15).map(|l| a.global(l, 10)).collect();
        assert_eq!(globals, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 21, 22, 23, 24]);
        assert_eq!(b.global(0, 10), 10);
    }

    proptest! {
        #[test]
        fn shards_add_up_and_are_disjoint(
            total in 0u32..5000,
            room_size in 1u32..50,
            count in 1u32..8,
        ) {
            let shards: Vec<Shard> = (0..count).map(|i| Shard::new(i, count).expect("ok")).collect();
            let sum: u32 = shards.iter().map(|s| s.users(total, room_size)).sum();
            prop_assert_eq!(sum, total);
            let mut seen = vec![false; total as usize];
            for shard in &shards {
                for local in 0..shard.users(total, room_size) {
                    let global = shard.global(local, room_size);
                    prop_assert!(global < total, "{global} of {total}");
                    prop_assert!(!seen[global as usize], "{global} twice");
                    seen[global as usize] = true;
                    // A room's members are all on one shard.
                    prop_assert_eq!((global / room_size) % count, shard.index);
                }
            }
        }
    }
}
