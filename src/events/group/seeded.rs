//! [`NumberMap`]: the hash maps of a group's bookkeeping, whose keys are numbers (key hashes,
//! member numbers, sequences) looked up per event under the hub's lock. They hash with one
//! multiply-and-shift mixer and a seed drawn once per process, instead of std's SipHash: the
//! keys are well spread numbers already, and the seed keeps an outsider who picks event keys
//! from making them collide in a map.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

/// A hash map keyed by a number.
pub(super) type NumberMap<V> = HashMap<u64, V, Seeded>;

/// Builds [`Mixer`]s with this process's seed.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Seeded;

impl BuildHasher for Seeded {
    type Hasher = Mixer;

    fn build_hasher(&self) -> Mixer {
        static SEED: OnceLock<u64> = OnceLock::new();
        Mixer(*SEED.get_or_init(|| fastrand::u64(..)))
    }
}

/// Hashes a `u64` in one step (the seed xored in, then MurmurHash3's 64-bit finalizer); other
/// input a byte at a time.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mixer(u64);

impl Hasher for Mixer {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, value: u64) {
        let mut x = self.0 ^ value;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^= x >> 33;
        self.0 = x;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn numbers_spread_over_the_buckets_and_maps_work() {
        // Small numbers (member numbers, sequences) differ in their high bits once hashed,
        // which a hash table's control bytes use.
        let tops: std::collections::HashSet<u64> =
            (0..64u64).map(|n| Seeded.hash_one(n) >> 57).collect();
        assert!(tops.len() > 32, "{} distinct top bits of 64", tops.len());
        let mut map = NumberMap::default();
        for n in 0..1000u64 {
            map.insert(n * 4096, n);
        }
        assert_eq!(map.len(), 1000);
        assert!((0..1000u64).all(|n| map.get(&(n * 4096)) == Some(&n)));
    }
}
