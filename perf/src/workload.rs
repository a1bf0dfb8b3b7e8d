//! What the load generator sends: record sizes, keys, partitions and value bytes.
//!
//! Every producer draws from its own seeded generator, so a run is repeatable and producers
//! never share state. Value bytes are drawn once from a 64-letter alphabet (about 6 bits of
//! entropy per byte: compressible like text, not like zeros), and each record takes a slice
//! of that pool at a varying offset.

use std::str::FromStr;

use sluice_net::client::partitioner::murmur2;

use crate::stamp::STAMP_BYTES;

/// A small, fast, seeded generator (SplitMix64). Not cryptographic; repeatable per seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Record value sizes: `1024`, `uniform:MIN-MAX` or `exp:MEAN` (exponential, at least the
/// stamp, at most 16 times the mean).
#[derive(Clone, Debug, PartialEq)]
pub enum SizeDist {
    /// Every value has this many bytes.
    Fixed(usize),
    /// Uniform between the bounds, inclusive.
    Uniform {
        /// Smallest size.
        min: usize,
        /// Largest size.
        max: usize,
    },
    /// Exponential with this mean.
    Exponential {
        /// Mean size.
        mean: usize,
    },
}

impl SizeDist {
    /// Draws a size.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        match *self {
            SizeDist::Fixed(size) => size,
            SizeDist::Uniform { min, max } => min + rng.below((max - min + 1) as u64) as usize,
            SizeDist::Exponential { mean } => {
                let draw = -(1.0 - rng.next_f64()).ln() * mean as f64;
                (draw as usize).clamp(STAMP_BYTES, self.max())
            }
        }
    }

    /// The largest size this distribution draws.
    pub fn max(&self) -> usize {
        match *self {
            SizeDist::Fixed(size) => size,
            SizeDist::Uniform { max, .. } => max,
            SizeDist::Exponential { mean } => mean * 16,
        }
    }

    /// The mean size.
    pub fn mean(&self) -> f64 {
        match *self {
            SizeDist::Fixed(size) => size as f64,
            SizeDist::Uniform { min, max } => (min + max) as f64 / 2.0,
            SizeDist::Exponential { mean } => mean as f64,
        }
    }
}

impl FromStr for SizeDist {
    type Err = String;

    fn from_str(text: &str) -> Result<SizeDist, String> {
        let number = |s: &str| {
            parse_bytes(s).and_then(|n| usize::try_from(n).map_err(|_| format!("{s}: too large")))
        };
        let dist = if let Some(range) = text.strip_prefix("uniform:") {
            let (min, max) = range
                .split_once('-')
                .ok_or_else(|| format!("{text}: expected uniform:MIN-MAX"))?;
            let (min, max) = (number(min)?, number(max)?);
            if min > max {
                return Err(format!("{text}: MIN above MAX"));
            }
            SizeDist::Uniform { min, max }
        } else if let Some(mean) = text.strip_prefix("exp:") {
            SizeDist::Exponential {
                mean: number(mean)?,
            }
        } else {
            SizeDist::Fixed(number(text)?)
        };
        let smallest = match dist {
            SizeDist::Fixed(size) => size,
            SizeDist::Uniform { min, .. } => min,
            SizeDist::Exponential { mean } => mean,
        };
        if smallest < STAMP_BYTES {
            return Err(format!(
                "{text}: records must hold the {STAMP_BYTES}-byte send stamp"
            ));
        }
        Ok(dist)
    }
}

/// Record keys: `none` (null keys, sticky partitions), `seq` (a counter), `uniform:N` (one of
/// N keys, uniformly) or `zipf:N:S` (one of N keys, Zipf with exponent S: a few hot keys).
#[derive(Clone, Debug)]
pub enum KeyDist {
    /// Null keys.
    None,
    /// Each record's key is the producer's record counter.
    Sequential,
    /// Uniform over `0..n`.
    Uniform(u64),
    /// Zipf over `0..n`; `cdf[i]` is the probability of a key `<= i`.
    Zipf {
        /// The text it was parsed from (for reports).
        spec: String,
        /// Cumulative distribution.
        cdf: Vec<f64>,
    },
}

/// Zipf tables hold one f64 per key; beyond this a run should use `uniform`.
const ZIPF_KEYS_MAX: u64 = 10_000_000;

impl KeyDist {
    /// Draws the key of record number `index`, as 8 big-endian bytes.
    pub fn sample(&self, rng: &mut Rng, index: u64) -> Option<[u8; 8]> {
        let key = match self {
            KeyDist::None => return None,
            KeyDist::Sequential => index,
            KeyDist::Uniform(n) => rng.below(*n),
            KeyDist::Zipf { cdf, .. } => {
                let draw = rng.next_f64();
                cdf.partition_point(|&p| p < draw) as u64
            }
        };
        Some(key.to_be_bytes())
    }
}

impl std::fmt::Display for KeyDist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyDist::None => f.write_str("none"),
            KeyDist::Sequential => f.write_str("seq"),
            KeyDist::Uniform(n) => write!(f, "uniform:{n}"),
            KeyDist::Zipf { spec, .. } => f.write_str(spec),
        }
    }
}

impl FromStr for KeyDist {
    type Err = String;

    fn from_str(text: &str) -> Result<KeyDist, String> {
        let count = |s: &str| -> Result<u64, String> {
            let n: u64 = s
                .parse()
                .map_err(|_| format!("{text}: bad key count {s}"))?;
            if n == 0 {
                return Err(format!("{text}: key count must be positive"));
            }
            Ok(n)
        };
        match text {
            "none" => return Ok(KeyDist::None),
            "seq" => return Ok(KeyDist::Sequential),
            _ => {}
        }
        if let Some(n) = text.strip_prefix("uniform:") {
            return Ok(KeyDist::Uniform(count(n)?));
        }
        if let Some(rest) = text.strip_prefix("zipf:") {
            let (n, s) = rest
                .split_once(':')
                .ok_or_else(|| format!("{text}: expected zipf:N:S"))?;
            let n = count(n)?;
            if n > ZIPF_KEYS_MAX {
                return Err(format!("{text}: at most {ZIPF_KEYS_MAX} zipf keys"));
            }
            let s: f64 = s.parse().map_err(|_| format!("{text}: bad exponent {s}"))?;
            let weights: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
            let total: f64 = weights.iter().sum();
            let mut sum = 0.0;
            let cdf = weights
                .iter()
                .map(|w| {
                    sum += w / total;
                    sum
                })
                .collect();
            return Ok(KeyDist::Zipf {
                spec: text.to_owned(),
                cdf,
            });
        }
        Err(format!("{text}: expected none, seq, uniform:N or zipf:N:S"))
    }
}

/// Picks partitions the way Kafka's default partitioner does, identically for both
/// protocols: murmur2 of the key for keyed records, and for null keys one partition until
/// about a batch of bytes went to it, then the next (sticky).
#[derive(Clone, Debug)]
pub struct PartitionChooser {
    partitions: i32,
    sticky: i32,
    sticky_bytes: usize,
    batch_bytes: usize,
}

impl PartitionChooser {
    /// A chooser over `partitions`, starting its sticky partition at `first`.
    pub fn new(partitions: i32, first: i32, batch_bytes: usize) -> PartitionChooser {
        assert!(partitions >= 1, "at least one partition");
        PartitionChooser {
            partitions,
            sticky: first.rem_euclid(partitions),
            sticky_bytes: 0,
            batch_bytes: batch_bytes.max(1),
        }
    }

    /// The partition of a record with this key and value size.
    pub fn choose(&mut self, key: Option<&[u8]>, bytes: usize) -> i32 {
        if let Some(key) = key {
            return (murmur2(key) & 0x7fff_ffff) % self.partitions;
        }
        if self.sticky_bytes >= self.batch_bytes {
            self.sticky = (self.sticky + 1) % self.partitions;
            self.sticky_bytes = 0;
        }
        self.sticky_bytes += bytes;
        self.sticky
    }
}

/// The pool of value bytes records are cut from (the stamp is written over each record's
/// first bytes).
pub fn value_pool(bytes: usize, seed: u64) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = Rng::new(seed);
    (0..bytes)
        .map(|_| ALPHABET[(rng.next_u64() & 63) as usize])
        .collect()
}

/// Parses a byte count with an optional binary suffix: `1024`, `64KiB`, `1MiB`, `4GiB` (also
/// `k`, `m`, `g`).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text}: expected a byte count such as 1024 or 64KiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" | "kb" => 10,
        "m" | "mib" | "mb" => 20,
        "g" | "gib" | "gb" => 30,
        _ => return Err(format!("{text}: unknown unit {unit}")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the distributions parse their documented forms, refuse bad ones, and stay in
    // their bounds. Method: parse and draw many samples with a fixed seed.
    #[test]
    fn distributions_parse_and_stay_in_bounds() {
        assert_eq!("1KiB".parse::<SizeDist>(), Ok(SizeDist::Fixed(1024)));
        assert!("4".parse::<SizeDist>().is_err(), "too small for the stamp");
        assert!("uniform:9-8".parse::<SizeDist>().is_err());
        let uniform: SizeDist = "uniform:100-200".parse().expect("valid");
        let exp: SizeDist = "exp:1000".parse().expect("valid");
        let mut rng = Rng::new(7);
        for _ in 0..10_000 {
            let size = uniform.sample(&mut rng);
            assert!((100..=200).contains(&size), "{size}");
            let size = exp.sample(&mut rng);
            assert!((STAMP_BYTES..=16_000).contains(&size), "{size}");
        }
        let zipf: KeyDist = "zipf:100:1.1".parse().expect("valid");
        let mut hits = [0u32; 100];
        for i in 0..10_000 {
            let key = zipf.sample(&mut rng, i).expect("keyed");
            hits[u64::from_be_bytes(key) as usize] += 1;
        }
        assert!(hits[0] > hits[50] * 10, "key 0 is hot: {hits:?}");
        assert!("zipf:0:1".parse::<KeyDist>().is_err());
        assert!("bogus".parse::<KeyDist>().is_err());
        assert_eq!(parse_bytes("4GiB"), Ok(4 << 30));
        assert!(parse_bytes("4XB").is_err());
    }

    // Goal: null keys stick to a partition for about a batch, then move on; keys hash like
    // Kafka's partitioner. Method: feed records and watch the partitions chosen.
    #[test]
    fn sticky_and_keyed_partitions() {
        let mut chooser = PartitionChooser::new(3, 1, 1000);
        let chosen: Vec<i32> = (0..6).map(|_| chooser.choose(None, 500)).collect();
        assert_eq!(chosen, vec![1, 1, 2, 2, 0, 0]);
        let key = b"customer-7";
        let expected = (murmur2(key) & 0x7fff_ffff) % 3;
        assert_eq!(chooser.choose(Some(key), 10), expected);
    }
}
