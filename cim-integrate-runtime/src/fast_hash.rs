//! A fast, per-map seeded hasher for the in-process hot path (the embedded transport's maps, the
//! in-memory dedup store): a multiply-rotate hash of 8-byte words (rustc's FxHash, with a final
//! rotation and a random seed per map), about ten times cheaper than SipHash for the short keys
//! there (ids, durable names). Not a keyed cryptographic hash: only for maps inside one process,
//! whose keys a remote peer does not pick freely at high rate.

use std::hash::{BuildHasher, Hasher};

const K: u64 = 0xf135_7aea_2e62_a9c5;

/// A [`HashMap`](std::collections::HashMap) with [`FastState`].
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, FastState>;

/// Builds [`FastHasher`]s from a seed drawn once per map.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FastState {
    seed: u64,
}

/// 64 random bits from std's `RandomState`: keys drawn from the operating system once per
/// thread, advanced per call, so each call gives another seed without a system call.
pub(crate) fn random_seed() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64)
}

impl Default for FastState {
    fn default() -> Self {
        // One seed per map.
        Self { seed: random_seed() }
    }
}

impl BuildHasher for FastState {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher { hash: self.seed }
    }
}

/// The hasher of [`FastState`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct FastHasher {
    hash: u64,
}

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash ^ word).wrapping_mul(K).rotate_left(26);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash.wrapping_mul(K).rotate_left(20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_ids_and_names() {
        let mut m: FastMap<String, u32> = FastMap::default();
        for i in 0..10_000u32 {
            m.insert(format!("handler-{i}"), i);
        }
        assert!((0..10_000u32).all(|i| m.get(&format!("handler-{i}")) == Some(&i)));
        let s = FastState::default();
        let (a, b) = (s.hash_one(uuid::Uuid::now_v7()), s.hash_one(uuid::Uuid::now_v7()));
        assert_ne!(a, b);
    }
}
