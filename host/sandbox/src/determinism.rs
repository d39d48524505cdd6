//! The deterministic parts of the guest's world: clocks and randomness.
//!
//! Every replica must hand a guest the same bytes for the same invocation, so
//! nothing here reads the host's clock or entropy. The wall clock is the
//! consensus time of the invocation; the monotonic clock starts at zero and
//! advances by a fixed step per reading (so `Instant::elapsed` moves forward
//! yet stays reproducible); random bytes come from a blake3 XOF keyed by the
//! invocation's seed.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// How far the monotonic clock advances per reading, in nanoseconds.
pub(crate) const MONOTONIC_STEP_NS: u64 = 1_000;

/// A wall clock frozen at the invocation's consensus time.
pub(crate) struct FixedWallClock {
    pub since_epoch: Duration,
}

impl HostWallClock for FixedWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        self.since_epoch
    }
}

/// A monotonic clock that advances by [`MONOTONIC_STEP_NS`] per reading.
#[derive(Default)]
pub(crate) struct SteppingClock {
    readings: AtomicU64,
}

impl HostMonotonicClock for SteppingClock {
    fn resolution(&self) -> u64 {
        MONOTONIC_STEP_NS
    }

    fn now(&self) -> u64 {
        // Relaxed is enough: a store, and so its clock, is used by one thread.
        let n = self.readings.fetch_add(1, Ordering::Relaxed);
        n.saturating_mul(MONOTONIC_STEP_NS)
    }
}

/// A deterministic random stream: blake3 in XOF mode, keyed by the seed and
/// a purpose string, so `wasi:random/random` and `wasi:random/insecure` draw
/// from unrelated streams.
pub(crate) struct SeededRandom {
    seed: [u8; 32],
    purpose: &'static str,
    /// Derived at the first draw: most tools never draw, and every run
    /// builds two streams (a keyed blake3 each, about a tenth of a
    /// microsecond on the invocation's path).
    reader: Option<blake3::OutputReader>,
}

impl SeededRandom {
    pub fn new(seed: &[u8; 32], purpose: &'static str) -> Self {
        SeededRandom {
            seed: *seed,
            purpose,
            reader: None,
        }
    }

    fn derive(seed: &[u8; 32], purpose: &str) -> blake3::OutputReader {
        let mut hasher = blake3::Hasher::new_keyed(seed);
        hasher.update(b"voidbox random v1\0");
        hasher.update(purpose.as_bytes());
        hasher.finalize_xof()
    }

    fn reader(&mut self) -> &mut blake3::OutputReader {
        let (seed, purpose) = (&self.seed, self.purpose);
        self.reader
            .get_or_insert_with(|| SeededRandom::derive(seed, purpose))
    }

    /// A 128-bit value for `wasi:random/insecure-seed`.
    pub fn seed_u128(seed: &[u8; 32]) -> u128 {
        let mut bytes = [0u8; 16];
        SeededRandom::derive(seed, "insecure-seed").fill(&mut bytes);
        u128::from_le_bytes(bytes)
    }
}

impl rand_core::TryRng for SeededRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.reader().fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.reader().fill(&mut b);
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.reader().fill(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::Rng;

    #[test]
    fn the_stream_is_the_keyed_blake3_xof_of_its_purpose_drawn_lazily() {
        // What guests have seen since the first version: the derivation
        // moved to the first draw, the bytes must not change.
        let seed = [3u8; 32];
        let mut expected = [0u8; 24];
        let mut h = blake3::Hasher::new_keyed(&seed);
        h.update(b"voidbox random v1\0random");
        h.finalize_xof().fill(&mut expected);
        let mut r = SeededRandom::new(&seed, "random");
        assert!(r.reader.is_none(), "nothing derived before the first draw");
        let mut got = [0u8; 24];
        got[..8].copy_from_slice(&r.next_u64().to_le_bytes());
        r.fill_bytes(&mut got[8..]);
        assert_eq!(got, expected);
    }

    #[test]
    fn same_seed_same_stream_and_purposes_differ() {
        let seed = [7u8; 32];
        let mut a = SeededRandom::new(&seed, "random");
        let mut b = SeededRandom::new(&seed, "random");
        let mut c = SeededRandom::new(&seed, "insecure");
        let (x, y, z) = (a.next_u64(), b.next_u64(), c.next_u64());
        assert_eq!(x, y);
        assert_ne!(x, z);
        assert_ne!(
            SeededRandom::seed_u128(&seed),
            SeededRandom::seed_u128(&[8; 32])
        );
    }

    #[test]
    fn monotonic_clock_steps() {
        let clock = SteppingClock::default();
        assert_eq!(clock.now(), 0);
        assert_eq!(clock.now(), MONOTONIC_STEP_NS);
        assert_eq!(clock.now(), 2 * MONOTONIC_STEP_NS);
    }
}
