//! The only module that chooses atomic types (the rest of the crate imports them from here).
//!
//! Normal builds use `core` atomics and a 128-bit atomic that is lock-free
//! through `cmpxchg16b`: on x86_64 our own (`atomic128`, instructions inlined
//! at each use), elsewhere and under Miri or ThreadSanitizer
//! `portable_atomic::AtomicU128` (build.rs sets `rt_inline_u128` when the
//! first applies). Under `--cfg loom` every type
//! is loom's, so the loom models in `tests/loom.rs` explore the real engine
//! code. loom has no 128-bit atomic; its stand-in is a loom mutex around a
//! `u128`, which is linearizable and so explores the same interleavings of
//! whole-word operations.

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};

/// A 128-bit atomic word; every packed window state lives in one.
#[cfg(all(not(loom), not(miri), rt_inline_u128))]
pub(crate) use crate::atomic128::AtomicU128;
#[cfg(all(not(loom), any(miri, not(rt_inline_u128))))]
pub(crate) use portable_atomic::AtomicU128;

/// Whether 128-bit atomics are lock-free on this CPU. A lock-based fallback
/// would be per process, so it is wrong in shared memory: regions refuse to
/// be created or attached when this is false.
#[cfg(all(not(loom), not(miri)))]
pub(crate) fn u128_is_lock_free() -> bool {
    AtomicU128::is_lock_free()
}

/// Miri runs portable-atomic's fallback; that is fine there, because Miri
/// runs one process and checks our code for undefined behaviour, not the CPU.
#[cfg(all(not(loom), miri))]
pub(crate) fn u128_is_lock_free() -> bool {
    true
}

#[cfg(loom)]
pub(crate) fn u128_is_lock_free() -> bool {
    true
}

/// Tells the CPU (or loom's scheduler) that this thread is waiting.
#[inline]
pub(crate) fn spin_wait() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}

#[cfg(loom)]
#[derive(Debug)]
pub(crate) struct AtomicU128(loom::sync::Mutex<u128>);

#[cfg(loom)]
impl AtomicU128 {
    pub(crate) fn new(v: u128) -> Self {
        AtomicU128(loom::sync::Mutex::new(v))
    }
    pub(crate) fn load(&self, _o: Ordering) -> u128 {
        *self.0.lock().unwrap()
    }
    pub(crate) fn store(&self, v: u128, _o: Ordering) {
        *self.0.lock().unwrap() = v;
    }
    pub(crate) fn compare_exchange(&self, current: u128, new: u128, _s: Ordering, _f: Ordering) -> Result<u128, u128> {
        let mut g = self.0.lock().unwrap();
        if *g == current {
            *g = new;
            Ok(current)
        } else {
            Err(*g)
        }
    }
}
