//! `network:` — the link a group's users sit behind: one-way latency with jitter, bandwidth
//! per direction, stalls and handovers, given field by field or as a named preset taken
//! from published figures. What the config says; [`super::shaper`] makes the bytes feel it.

use std::fmt;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::settings::Spread;

/// A weak link, both directions. The latency is one way, added in each direction (so a
/// round trip gains twice it); jitter draws each chunk's delay uniformly within ±`jitter`
/// of it, order kept.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Network {
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Server to user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down: Option<Bandwidth>,
    /// User to server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub up: Option<Bandwidth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stall: Option<Stall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handover: Option<Handover>,
}

/// Now and then nothing moves either way for a while (a radio's retransmissions, a tunnel):
/// every time drawn from `every`, for one drawn from `for`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stall {
    pub every: Spread,
    #[serde(rename = "for")]
    pub lasts: Spread,
}

/// A phone switching networks: every time drawn from `every` the connection vanishes
/// without a close, and the user comes back after `gap` (from the next of its
/// `source_addresses`, when there are several).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handover {
    pub every: Spread,
    #[serde(with = "humantime_serde", default = "default_gap")]
    pub gap: Duration,
}

fn default_gap() -> Duration {
    Duration::from_secs(1)
}

/// A link's rate in bits per second, written `256kbit`, `1mbit`, `1.5mbit`, `1gbit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bandwidth {
    bits_per_second: u64,
}

impl Bandwidth {
    pub fn bytes_per_second(self) -> f64 {
        self.bits_per_second as f64 / 8.0
    }

    /// How long `bytes` take to pass.
    pub fn time_for(self, bytes: usize) -> Duration {
        Duration::from_secs_f64(bytes as f64 / self.bytes_per_second())
    }
}

/// The slowest and fastest links a profile may name.
const SLOWEST: u64 = 1_000;
const FASTEST: u64 = 100_000_000_000;

impl std::str::FromStr for Bandwidth {
    type Err = String;

    fn from_str(text: &str) -> Result<Bandwidth, String> {
        let trimmed = text.trim();
        let units = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)];
        let Some((number, scale)) = units
            .iter()
            .find_map(|(unit, scale)| Some((trimmed.strip_suffix(unit)?, *scale)))
        else {
            return Err(format!(
                "{text:?} is not a bandwidth: write a number of bit, kbit, mbit or gbit (bits per second), e.g. 256kbit"
            ));
        };
        let value: f64 = number
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a bandwidth: {number:?} is not a number"))?;
        let bits = value * scale;
        if !bits.is_finite() || bits < SLOWEST as f64 || bits > FASTEST as f64 {
            return Err(format!("bandwidth {text:?} is outside 1kbit..100gbit"));
        }
        Ok(Bandwidth {
            bits_per_second: bits.round() as u64,
        })
    }
}

impl fmt::Display for Bandwidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.bits_per_second;
        let units = [
            (1_000_000_000, "gbit"),
            (1_000_000, "mbit"),
            (1_000, "kbit"),
        ];
        match units.iter().find(|(scale, _)| bits.is_multiple_of(*scale)) {
            Some((scale, unit)) => write!(f, "{}{unit}", bits / scale),
            None => write!(f, "{bits}bit"),
        }
    }
}

impl Serialize for Bandwidth {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bandwidth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bandwidth, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// The named links, from WebPageTest's connectivity profiles
/// (`www/settings/connectivity.ini.sample` of WPO-Foundation/webpagetest: round trip and
/// rates; our latency is half the round trip, each way) and, for `satellite`, the physics of
/// a geostationary hop (README "Weak networks").
pub const PRESETS: &[(&str, Network)] = &[
    ("3g-slow", preset(200, 400_000, 400_000)),
    ("3g", preset(150, 1_600_000, 768_000)),
    ("4g", preset(85, 9_000_000, 9_000_000)),
    ("lte", preset(35, 12_000_000, 12_000_000)),
    ("satellite", preset(300, 25_000_000, 3_000_000)),
];

const fn preset(latency_ms: u64, down: u64, up: u64) -> Network {
    Network {
        latency: Duration::from_millis(latency_ms),
        jitter: Duration::ZERO,
        down: Some(Bandwidth {
            bits_per_second: down,
        }),
        up: Some(Bandwidth {
            bits_per_second: up,
        }),
        stall: None,
        handover: None,
    }
}

impl Network {
    /// The preset called `name`.
    pub fn preset(name: &str) -> Result<Network, String> {
        PRESETS
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, network)| *network)
            .ok_or_else(|| {
                let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
                format!(
                    "unknown network preset {name:?}; known: {}",
                    names.join(", ")
                )
            })
    }

    /// What is wrong with this profile, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.jitter > self.latency {
            return Some(format!(
                "jitter {} is above latency {}: a chunk cannot arrive before it was sent",
                humantime::format_duration(self.jitter),
                humantime::format_duration(self.latency)
            ));
        }
        let zero = [
            ("stall.every", self.stall.map(|s| s.every)),
            ("stall.for", self.stall.map(|s| s.lasts)),
            ("handover.every", self.handover.map(|h| h.every)),
        ];
        let (name, _) = zero
            .into_iter()
            .find(|(_, spread)| spread.is_some_and(|s| s.mean.is_zero()))?;
        Some(format!("`{name}` must be longer than 0s"))
    }
}

/// The fields of a profile as written: any may be left out, and `preset:` fills what is.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    preset: Option<String>,
    #[serde(default, with = "humantime_serde::option")]
    latency: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    jitter: Option<Duration>,
    down: Option<Bandwidth>,
    up: Option<Bandwidth>,
    stall: Option<Stall>,
    handover: Option<Handover>,
}

impl Written {
    fn resolve(self) -> Result<Network, String> {
        let base = match &self.preset {
            Some(name) => Network::preset(name)?,
            None => Network {
                latency: Duration::ZERO,
                jitter: Duration::ZERO,
                down: None,
                up: None,
                stall: None,
                handover: None,
            },
        };
        Ok(Network {
            latency: self.latency.unwrap_or(base.latency),
            jitter: self.jitter.unwrap_or(base.jitter),
            down: self.down.or(base.down),
            up: self.up.or(base.up),
            stall: self.stall.or(base.stall),
            handover: self.handover.or(base.handover),
        })
    }
}

/// `network: 3g`, or `network: {preset: 3g, jitter: 30ms}`, or the fields alone.
impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Network, D::Error> {
        struct Profile;

        impl<'de> Visitor<'de> for Profile {
            type Value = Network;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a preset name or {latency, jitter, down, up, stall, handover}")
            }

            fn visit_str<E: de::Error>(self, name: &str) -> Result<Network, E> {
                Network::preset(name).map_err(E::custom)
            }

            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Network, M::Error> {
                let written = Written::deserialize(de::value::MapAccessDeserializer::new(map))?;
                written.resolve().map_err(de::Error::custom)
            }
        }

        d.deserialize_any(Profile)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Network, String> {
        serde_norway::from_str(text).map_err(|err| err.to_string())
    }

    #[test]
    fn bandwidths_are_bits_per_second_with_a_unit() {
        let rate: Bandwidth = "1mbit".parse().expect("valid");
        assert_eq!(rate.bytes_per_second(), 125_000.0);
        assert_eq!(rate.time_for(100_000), Duration::from_millis(800));
        assert_eq!(
            "1.5mbit".parse::<Bandwidth>().expect("valid").to_string(),
            "1500kbit"
        );
        assert_eq!(
            "256kbit".parse::<Bandwidth>().expect("valid").to_string(),
            "256kbit"
        );
        for wrong in ["1mbps", "fast", "0kbit", "-3mbit", "1000gbit", "kbit"] {
            let err = wrong.parse::<Bandwidth>().expect_err(wrong);
            assert!(err.contains(wrong), "{err}");
        }
    }

    #[test]
    fn a_profile_is_a_preset_its_fields_or_both() {
        let three_g = parse("3g").expect("preset");
        assert_eq!(three_g.latency, Duration::from_millis(150));
        assert_eq!(
            three_g.up.map(|u| u.to_string()).as_deref(),
            Some("768kbit")
        );
        let jittery = parse("{preset: 3g, jitter: 30ms}").expect("preset and a field");
        assert_eq!(
            (jittery.latency, jittery.jitter),
            (three_g.latency, Duration::from_millis(30))
        );
        let own = parse("{latency: 50ms, down: 1mbit, stall: {every: 30s, for: 2s}}").expect("own");
        assert_eq!((own.latency, own.up), (Duration::from_millis(50), None));
        assert_eq!(
            own.stall.map(|s| s.lasts.mean),
            Some(Duration::from_secs(2))
        );
        let handover = parse("{handover: {every: 1m}}").expect("handover");
        assert_eq!(
            handover.handover.map(|h| h.gap),
            Some(Duration::from_secs(1))
        );
        // What is written out reads back the same.
        let again = parse(&serde_norway::to_string(&own).expect("serialize")).expect("again");
        assert_eq!(again, own);
    }

    #[test]
    fn a_wrong_profile_says_what_is_wrong() {
        assert!(parse("5g").expect_err("unknown").contains("known: 3g-slow"));
        assert!(
            parse("{latency: 50ms, speed: 1mbit}")
                .expect_err("field")
                .contains("speed")
        );
        assert!(parse("{down: 1mbps}").expect_err("unit").contains("1mbps"));
        let jitter = parse("{latency: 10ms, jitter: 20ms}").expect("parses");
        assert!(jitter.problem().expect("refused").contains("jitter"));
        let stall = parse("{stall: {every: 0s, for: 1s}}").expect("parses");
        assert!(stall.problem().expect("refused").contains("stall.every"));
        assert_eq!(parse("lte").expect("preset").problem(), None);
    }
}
