//! A 128-bit atomic word for x86_64 whose instructions are inlined at every
//! use.
//!
//! portable-atomic's `AtomicU128` (used on other targets, under Miri and
//! under ThreadSanitizer) detects `cmpxchg16b` and AVX at run time unless
//! the whole program is built with those target features, and reaches its
//! instructions through a call on every operation. The engine's hot paths
//! make two to six 128-bit operations each, and that call was a measurable
//! part of them (BENCHMARKS.md, "What changed"). Here:
//!
//! - `compare_exchange` is `lock cmpxchg16b`, inline. Every region is
//!   created or attached through `Region::init` / `Region::attach`, which
//!   refuse to run on a CPU without `cmpxchg16b` ([`AtomicU128::is_lock_free`]),
//!   so no operation on a region word runs without it.
//! - `load` and `store` are one `vmovdqa` when the CPU has AVX: Intel, AMD
//!   and Zhaoxin guarantee that a 16-byte aligned `vmovdqa` is atomic on
//!   CPUs with AVX (portable-atomic, LLVM and Boost rely on the same rule).
//!   Without AVX they are made of `lock cmpxchg16b`, as portable-atomic does.
//!   The choice is read from a static set once per process.
//!
//! The instructions are those of portable-atomic 1.15
//! (`imp/atomic128/x86_64.rs`). x86 is TSO: a plain load is an acquire load
//! and a plain store a release store; a `SeqCst` store adds `mfence`. Every
//! `asm!` block here clobbers memory (no `nomem` / `readonly`), so it is
//! also a compiler barrier.

use core::arch::asm;
use core::arch::x86_64::__m128i;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU8, Ordering};

/// A 16-byte aligned 128-bit word, accessed only atomically.
#[repr(C, align(16))]
pub(crate) struct AtomicU128 {
    v: UnsafeCell<u128>,
}

// SAFETY: every access to `v` after construction is an atomic instruction.
unsafe impl Sync for AtomicU128 {}

/// Whether loads and stores use `vmovdqa`: 0 not yet known, then one of these.
static VECTOR: AtomicU8 = AtomicU8::new(0);
const VECTOR_YES: u8 = 1;
const VECTOR_NO: u8 = 2;

#[cold]
fn detect_vector() -> bool {
    let yes = std::is_x86_feature_detected!("cmpxchg16b") && std::is_x86_feature_detected!("avx");
    VECTOR.store(if yes { VECTOR_YES } else { VECTOR_NO }, Ordering::Relaxed);
    yes
}

/// Whether `vmovdqa` is known to be atomic here: one load and one compare
/// on the hot path; anything else goes to the `*_slow` functions.
#[inline(always)]
fn vector_known() -> bool {
    VECTOR.load(Ordering::Relaxed) == VECTOR_YES
}

/// Whether `vmovdqa` is atomic here, detecting on first use.
fn vector() -> bool {
    match VECTOR.load(Ordering::Relaxed) {
        VECTOR_YES => true,
        VECTOR_NO => false,
        _ => detect_vector(),
    }
}

/// Before detection, or on a CPU without AVX.
#[cold]
#[inline(never)]
fn load_slow(p: *mut u128) -> u128 {
    if vector() {
        // SAFETY: as in `AtomicU128::load`; the CPU has AVX.
        unsafe { load_vmovdqa(p) }
    } else {
        // A CAS of 0 by 0 returns the current value and changes nothing.
        // SAFETY: as in `AtomicU128::load`.
        unsafe { cmpxchg16b(p, 0, 0).0 }
    }
}

/// As `load_slow`, for stores.
#[cold]
#[inline(never)]
fn store_slow(p: *mut u128, val: u128, seq_cst: bool) {
    if vector() {
        // SAFETY: as in `AtomicU128::load`; the CPU has AVX.
        unsafe { store_vmovdqa(p, val, seq_cst) }
        return;
    }
    let mut cur = load_slow(p);
    loop {
        // SAFETY: as in `AtomicU128::load`.
        match unsafe { cmpxchg16b(p, cur, val) } {
            (_, true) => return,
            (now, false) => cur = now,
        }
    }
}

impl AtomicU128 {
    /// Whether this CPU has `cmpxchg16b` (then every operation is lock-free).
    pub(crate) fn is_lock_free() -> bool {
        std::is_x86_feature_detected!("cmpxchg16b")
    }

    #[inline(always)]
    pub(crate) fn load(&self, _order: Ordering) -> u128 {
        let p = self.v.get();
        if vector_known() {
            // SAFETY: p is 16-byte aligned and valid (regions align their
            // slots), only accessed atomically, and the CPU has AVX. Without
            // AVX, `load_slow` uses cmpxchg16b, which every CPU a region
            // runs on has (module comment).
            unsafe { load_vmovdqa(p) }
        } else {
            load_slow(p)
        }
    }

    #[inline(always)]
    pub(crate) fn store(&self, val: u128, order: Ordering) {
        let p = self.v.get();
        if vector_known() {
            // SAFETY: as in `load`.
            unsafe { store_vmovdqa(p, val, order == Ordering::SeqCst) }
        } else {
            store_slow(p, val, order == Ordering::SeqCst);
        }
    }

    /// `lock cmpxchg16b` is sequentially consistent whatever the orderings.
    #[inline(always)]
    pub(crate) fn compare_exchange(
        &self,
        current: u128,
        new: u128,
        _success: Ordering,
        _failure: Ordering,
    ) -> Result<u128, u128> {
        // SAFETY: as in `load`.
        match unsafe { cmpxchg16b(self.v.get(), current, new) } {
            (prev, true) => Ok(prev),
            (prev, false) => Err(prev),
        }
    }
}

/// # Safety
/// `src` is valid, 16-byte aligned, only accessed atomically; the CPU has AVX.
#[inline(always)]
unsafe fn load_vmovdqa(src: *mut u128) -> u128 {
    let out: __m128i;
    // SAFETY: the caller's contract.
    unsafe {
        asm!(
            "vmovdqa {out}, xmmword ptr [{src}]",
            src = in(reg) src,
            out = out(xmm_reg) out,
            options(nostack, preserves_flags),
        );
        core::mem::transmute::<__m128i, u128>(out)
    }
}

/// # Safety
/// As for [`load_vmovdqa`].
#[inline(always)]
unsafe fn store_vmovdqa(dst: *mut u128, val: u128, seq_cst: bool) {
    // SAFETY: u128 and __m128i have the same size; any bits are valid.
    let val = unsafe { core::mem::transmute::<u128, __m128i>(val) };
    // SAFETY: the caller's contract.
    unsafe {
        if seq_cst {
            // The full barrier after a SeqCst store (rare: reclaim paths).
            asm!(
                "vmovdqa xmmword ptr [{dst}], {val}",
                "mfence",
                dst = in(reg) dst,
                val = in(xmm_reg) val,
                options(nostack, preserves_flags),
            );
        } else {
            asm!(
                "vmovdqa xmmword ptr [{dst}], {val}",
                dst = in(reg) dst,
                val = in(xmm_reg) val,
                options(nostack, preserves_flags),
            );
        }
    }
}

/// `lock cmpxchg16b`: stores `new` if the word equals `old`. Returns the
/// previous value and whether it stored.
///
/// # Safety
/// `dst` is valid, 16-byte aligned, only accessed atomically; the CPU has
/// `cmpxchg16b`.
#[inline(always)]
unsafe fn cmpxchg16b(dst: *mut u128, old: u128, new: u128) -> (u128, bool) {
    let (prev_lo, prev_hi): (u64, u64);
    let failed: u8;
    // SAFETY: the caller's contract. rbx is reserved by LLVM, so the low
    // half of `new` travels in r8 and is swapped into rbx around the
    // instruction, as portable-atomic does.
    unsafe {
        asm!(
            "xchg r8, rbx",
            "lock cmpxchg16b xmmword ptr [rsi]",
            "setne cl",
            "mov rbx, r8",
            inout("r8") new as u64 => _,
            in("rcx") (new >> 64) as u64,
            inout("rax") old as u64 => prev_lo,
            inout("rdx") (old >> 64) as u64 => prev_hi,
            // An explicit register: with `in(reg)` LLVM may pick rbx, which
            // the first line overwrites.
            in("rsi") dst,
            lateout("cl") failed,
            options(nostack),
        );
    }
    ((prev_hi as u128) << 64 | prev_lo as u128, failed == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` with loads and stores made of `vmovdqa` (when the CPU has
    /// AVX) and then of `lock cmpxchg16b`. Both are atomic on this CPU, so
    /// tests running meanwhile stay correct.
    fn both_ways(f: impl Fn()) {
        // One test at a time switches the path, so that each really runs both.
        static SWITCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
        let detected = detect_vector();
        f();
        VECTOR.store(VECTOR_NO, Ordering::Relaxed);
        f();
        VECTOR.store(if detected { VECTOR_YES } else { VECTOR_NO }, Ordering::Relaxed);
    }

    const A: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
    const B: u128 = 0xffff_0000_ffff_0000_0000_ffff_0000_ffff;

    #[test]
    fn load_store_and_compare_exchange_keep_both_halves() {
        both_ways(|| {
            let w = AtomicU128 { v: UnsafeCell::new(0) };
            assert_eq!(w.load(Ordering::Acquire), 0);
            w.store(A, Ordering::Release);
            assert_eq!(w.load(Ordering::Acquire), A);
            w.store(B, Ordering::SeqCst);
            assert_eq!(w.load(Ordering::SeqCst), B);
            // A failed CAS stores nothing and returns the current value.
            assert_eq!(w.compare_exchange(A, 1, Ordering::AcqRel, Ordering::Acquire), Err(B));
            assert_eq!(w.load(Ordering::Acquire), B);
            assert_eq!(w.compare_exchange(B, A, Ordering::AcqRel, Ordering::Acquire), Ok(B));
            assert_eq!(w.load(Ordering::Acquire), A);
            // Words that differ in one half only.
            assert_eq!(w.compare_exchange(A ^ 1 << 64, 0, Ordering::AcqRel, Ordering::Acquire), Err(A));
            assert_eq!(w.compare_exchange(A ^ 1, 0, Ordering::AcqRel, Ordering::Acquire), Err(A));
        });
    }

    /// Two threads add to both halves with CAS while a third reads: no
    /// increment is lost and no read sees halves from different writes.
    #[test]
    fn racing_updates_are_neither_lost_nor_torn() {
        both_ways(|| {
            const N: u64 = 20_000;
            let w = AtomicU128 { v: UnsafeCell::new(0) };
            let pair = |x: u64| (x as u128) << 64 | x as u128;
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..N {
                            let mut cur = w.load(Ordering::Acquire);
                            while let Err(now) =
                                w.compare_exchange(cur, pair(cur as u64 + 1), Ordering::AcqRel, Ordering::Acquire)
                            {
                                cur = now;
                            }
                        }
                    });
                }
                s.spawn(|| {
                    for _ in 0..N {
                        let v = w.load(Ordering::Acquire);
                        assert_eq!(v >> 64, v & u64::MAX as u128, "torn read {v:#x}");
                    }
                });
            });
            assert_eq!(w.load(Ordering::Acquire), pair(2 * N));
        });
    }

    /// The engine on both paths (CI machines have AVX, so the cmpxchg16b
    /// loads and stores run only here): 4 threads race for one client's 2
    /// concurrent slots, and the 2 that get one spend the client's budget
    /// of N messages between them: every decision is exact.
    #[test]
    fn the_engine_keeps_its_limits_on_both_paths() {
        both_ways(|| {
            const N: u64 = 1000;
            let l = crate::Limiter::new(&crate::Limits {
                max_concurrent_connections: 2,
                messages_per_window: N as u32,
                client_messages_per_window: N as u32,
                window_ms: 60_000,
                ..crate::Limits::default()
            })
            .unwrap();
            let opened: Vec<(crate::Conn, u64)> = std::thread::scope(|s| {
                let racers: Vec<_> = (0..4)
                    .map(|_| {
                        s.spawn(|| {
                            let c = l.connect_at(b"c", 0).1?;
                            Some((c, (0..N).filter(|_| l.check_message_at(c, 1, 0).allowed).count() as u64))
                        })
                    })
                    .collect();
                racers.into_iter().filter_map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(opened.len(), 2, "exactly the concurrency limit connects");
            assert_eq!(opened.iter().map(|o| o.1).sum::<u64>(), N, "the client's budget, exactly");
            assert_eq!(l.stats().total_messages, N, "nothing lost");
            for (c, _) in opened {
                assert!(l.disconnect(c));
            }
            assert_eq!(l.client_connections(b"c"), 0);
        });
    }
}
