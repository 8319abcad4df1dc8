//! Sliding-window-counter arithmetic: pure integer functions, no atomics.
//!
//! A limited quantity keeps the count of the current fixed window (`cur`) and
//! of the previous one (`prev`). At elapsed time `e` (ms) into the current
//! window of length `W`, a request of cost `k` under limit `L` passes iff
//!
//! ```text
//! prev * (W - e) + (cur + k) * W  <=  L * W
//! ```
//!
//! All products are computed in `u128`, so no input can overflow.
//! Window ids are stored in a packed word truncated to [`ID_BITS`] bits and
//! compared with wrapping subtraction (see [`roll`]).

/// Returned as `retry_after_ms` when a request can never pass (its cost
/// exceeds the limit itself, or its size exceeds `max_message_size`).
pub const RETRY_NEVER: u64 = u64::MAX;

/// Bits of the window id kept in packed words.
pub(crate) const ID_BITS: u32 = 32;
const ID_MASK: u64 = (1u64 << ID_BITS) - 1;
/// A stored id up to this many windows *ahead* of now means the clock went
/// backwards (or another thread read a later clock); beyond it the stored
/// state is taken as expired. 2^22 windows is 70 minutes at W = 1 ms, so a
/// step back of up to an hour is "no time passed" at every window length.
///
/// It is not larger because 32-bit ids wrap: a slot idle for 2^32 - n
/// windows (n <= this) looks n windows ahead. With W = 1 ms that takes 49.7
/// days of idleness, after which such a slot reads as "clock went back" and
/// keeps its old counts for at most n windows (here 70 minutes; with the
/// earlier 2^30 it was 12 days, after 37 days idle).
pub(crate) const BACKWARDS_WINDOWS: u64 = 1 << 22;

/// Division by the window length without a divide instruction: the
/// round-down method of Granlund and Montgomery ("Division by invariant
/// integers using multiplication", 1994, fig. 4.1), exact for every u64
/// numerator. The magic and shift are computed once when limits are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Divisor {
    pub d: u64,
    pub magic: u64,
    pub shift: u32,
}

impl Divisor {
    pub(crate) fn new(d: u64) -> Divisor {
        assert!(d > 0, "division by zero");
        if d == 1 {
            return Divisor { d, magic: 0, shift: 0 };
        }
        // l = ceil(log2 d); magic = floor(2^64 * (2^l - d) / d) + 1 < 2^64.
        let l = 64 - (d - 1).leading_zeros();
        let magic = (((1u128 << 64) * ((1u128 << l) - d as u128)) / d as u128 + 1) as u64;
        Divisor { d, magic, shift: l - 1 }
    }

    #[inline(always)]
    pub(crate) fn div(&self, n: u64) -> u64 {
        if self.d == 1 {
            return n;
        }
        let t = ((self.magic as u128 * n as u128) >> 64) as u64;
        (t + ((n - t) >> 1)) >> self.shift
    }

    /// (n / d, n % d).
    #[inline(always)]
    pub(crate) fn div_rem(&self, n: u64) -> (u64, u64) {
        let q = self.div(n);
        (q, n - q * self.d)
    }
}

/// Where a point in time falls: the window id and the elapsed ms in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    /// `now_ms / W + offset` (wrapping); offset changes when W changes.
    pub id: u64,
    /// `now_ms % W`.
    pub elapsed_ms: u64,
    pub window_ms: u64,
}

impl Position {
    #[cfg(test)]
    pub(crate) fn at(now_ms: u64, window_ms: u64, offset: u64) -> Position {
        Position::with(now_ms, &Divisor::new(window_ms), offset)
    }

    /// Where `now_ms` falls, with the window's precomputed divisor.
    #[inline(always)]
    pub(crate) fn with(now_ms: u64, w: &Divisor, offset: u64) -> Position {
        let (q, r) = w.div_rem(now_ms);
        Position { id: q.wrapping_add(offset) & ID_MASK, elapsed_ms: r, window_ms: w.d }
    }
}

/// How a stored window id relates to now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Same window.
    Same,
    /// The stored window is the previous one: `cur` becomes `prev`.
    Next,
    /// Two or more windows later: both counts are zero.
    Expired,
    /// The stored window lies ahead (clock went backwards, or a thread with a
    /// slightly later clock wrote first): taken as the start of the stored
    /// window, never as a huge elapsed time.
    Behind,
}

/// Compares a stored window id with the position. `empty` (no counts at
/// all) always adopts the current window.
#[inline(always)]
pub(crate) fn step(stored_id: u64, pos: Position, empty: bool) -> Step {
    if empty {
        return Step::Expired;
    }
    match pos.id.wrapping_sub(stored_id) & ID_MASK {
        0 => Step::Same,
        1 => Step::Next,
        d if d <= ID_MASK - BACKWARDS_WINDOWS => Step::Expired,
        _ => Step::Behind,
    }
}

/// A window pair brought up to date for a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rolled {
    pub id: u64,
    pub prev: u64,
    pub cur: u64,
    /// Elapsed ms to use: the position's, or 0 when [`Step::Behind`].
    pub elapsed_ms: u64,
    /// Counts that left both windows in this roll (for lifetime totals).
    pub dropped: u64,
}

/// Applies a [`Step`] to one `(prev, cur)` pair.
#[inline(always)]
pub(crate) fn apply(step: Step, stored_id: u64, prev: u64, cur: u64, pos: Position) -> Rolled {
    match step {
        Step::Same => Rolled { id: pos.id, prev, cur, elapsed_ms: pos.elapsed_ms, dropped: 0 },
        Step::Next => Rolled { id: pos.id, prev: cur, cur: 0, elapsed_ms: pos.elapsed_ms, dropped: prev },
        Step::Expired => Rolled { id: pos.id, prev: 0, cur: 0, elapsed_ms: pos.elapsed_ms, dropped: prev + cur },
        Step::Behind => Rolled { id: stored_id, prev, cur, elapsed_ms: 0, dropped: 0 },
    }
}

/// Brings one stored `(id, prev, cur)` to position `pos`.
#[inline]
pub(crate) fn roll(stored_id: u64, prev: u64, cur: u64, pos: Position) -> Rolled {
    apply(step(stored_id, pos, prev == 0 && cur == 0), stored_id, prev, cur, pos)
}

/// Counts and limits below 2^30 with a window below 2^32 keep every product
/// of the inequality below 2^64 (prev*W < 2^62, (cur+k)*W < 2^63), so u64
/// arithmetic is exact. Real counts are at most 2^26, so this is the path taken.
const FAST_COUNT: u64 = 1 << 30;
const FAST_WINDOW: u64 = 1 << 32;

/// Whether a request of cost `k` passes under `limit`.
#[inline(always)]
pub(crate) fn admits(prev: u64, cur: u64, k: u64, limit: u64, window_ms: u64, elapsed_ms: u64) -> bool {
    if k > limit {
        return false;
    }
    if (prev | cur | limit) < FAST_COUNT && window_ms < FAST_WINDOW {
        // k <= limit < 2^30, so cur + k < 2^31.
        let lhs = prev * (window_ms - elapsed_ms) + (cur + k) * window_ms;
        return lhs <= limit * window_ms;
    }
    let w = window_ms as u128;
    let lhs = prev as u128 * (w - elapsed_ms as u128) + (cur as u128 + k as u128) * w;
    lhs <= limit as u128 * w
}

/// The previous window's weight `prev * (W - e) / W`, as (floor, ceil).
#[inline(always)]
fn weight(prev: u64, window_ms: u64, elapsed_ms: u64) -> (u64, u64) {
    if prev == 0 || elapsed_ms == 0 {
        return (prev, prev);
    }
    let (q, r) = if prev < FAST_WINDOW && window_ms < FAST_WINDOW {
        let n = prev * (window_ms - elapsed_ms);
        (n / window_ms, n % window_ms)
    } else {
        let n = prev as u128 * (window_ms - elapsed_ms) as u128;
        ((n / window_ms as u128) as u64, (n % window_ms as u128) as u64)
    };
    (q, q + (r != 0) as u64)
}

/// The estimate `floor(prev * (W - e) / W) + cur`.
#[cfg(test)]
pub(crate) fn estimate(prev: u64, cur: u64, window_ms: u64, elapsed_ms: u64) -> u64 {
    weight(prev, window_ms, elapsed_ms).0.saturating_add(cur)
}

/// Budget left under `limit`: `floor((L*W - prev*(W-e) - cur*W) / W)`, at least 0.
#[cfg(test)]
pub(crate) fn remaining(prev: u64, cur: u64, limit: u64, window_ms: u64, elapsed_ms: u64) -> u64 {
    // floor(L - c - x) = L - c - ceil(x) for x = prev*(W-e)/W.
    limit.saturating_sub(cur).saturating_sub(weight(prev, window_ms, elapsed_ms).1)
}

/// Estimate and remaining budget together, from one division.
#[inline]
pub(crate) fn estimate_and_remaining(prev: u64, cur: u64, limit: u64, window_ms: u64, elapsed_ms: u64) -> (u64, u64) {
    let (lo, hi) = weight(prev, window_ms, elapsed_ms);
    (lo.saturating_add(cur), limit.saturating_sub(cur).saturating_sub(hi))
}

/// [`estimate_and_remaining`] with the window's divisor: no divide instruction.
#[inline(always)]
pub(crate) fn budget(prev: u64, cur: u64, limit: u64, w: &Divisor, elapsed_ms: u64) -> (u64, u64) {
    if prev == 0 || elapsed_ms == 0 || prev >= FAST_WINDOW {
        return estimate_and_remaining(prev, cur, limit, w.d, elapsed_ms);
    }
    // prev < 2^32 and W - e < 2^32: the product fits in u64.
    let (q, r) = w.div_rem(prev * (w.d - elapsed_ms));
    let hi = q + (r != 0) as u64;
    (q.saturating_add(cur), limit.saturating_sub(cur).saturating_sub(hi))
}

/// The smallest whole number of ms after which the same request passes,
/// assuming no other traffic; 0 when it passes now; [`RETRY_NEVER`] when
/// `k > limit`.
pub(crate) fn retry_after(prev: u64, cur: u64, k: u64, limit: u64, window_ms: u64, elapsed_ms: u64) -> u64 {
    if admits(prev, cur, k, limit, window_ms, elapsed_ms) {
        return 0;
    }
    if k > limit {
        return RETRY_NEVER;
    }
    let w = window_ms as u128;
    let (p, c, k, l, e) = (prev as u128, cur as u128, k as u128, limit as u128, elapsed_ms as u128);
    if c + k <= l {
        // Passes later in this window (or exactly at its end) once
        // p * (W - e') <= (L - c - k) * W, i.e. e' >= W - floor((L-c-k)W / p).
        // p > 0 here, or the request would pass now.
        let q = ((l - c - k) * w) / p;
        (w - q - e) as u64
    } else {
        // Needs the next window, where prev' = c and cur' = 0:
        // c * (W - e'') <= (L - k) * W, so e'' >= W - floor((L-k)W / c).
        let q = ((l - k) * w) / c; // c > 0 because c + k > L >= k
        let e2 = w.saturating_sub(q);
        (w - e + e2) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_retry(prev: u64, cur: u64, k: u64, limit: u64, w: u64, e: u64) -> u64 {
        // Walk forward ms by ms with the same rules.
        if k > limit {
            return RETRY_NEVER;
        }
        for t in 0..=(3 * w) {
            let (p, c, el) = if e + t < w {
                (prev, cur, e + t)
            } else if e + t < 2 * w {
                (cur, 0, e + t - w)
            } else {
                (0, 0, e + t - 2 * w)
            };
            if admits(p, c, k, limit, w, el) {
                return t;
            }
        }
        panic!("never passed");
    }

    #[test]
    fn a_window_far_ahead_is_expired_not_behind() {
        let stored = 123_456_789;
        let at = |id: u64| Position { id: id & ID_MASK, elapsed_ms: 0, window_ms: 1 };
        assert_eq!(step(stored, at(stored - 1), false), Step::Behind);
        assert_eq!(step(stored, at(stored - BACKWARDS_WINDOWS), false), Step::Behind);
        assert_eq!(step(stored, at(stored - BACKWARDS_WINDOWS - 1), false), Step::Expired);
        // A slot idle for 2^32 - 2^29 windows (37 days at W = 1 ms) was read
        // as 2^29 windows ahead ("the clock went back") while the band was 2^30.
        assert_eq!(step(stored, at(stored + (1 << 32) - (1 << 29)), false), Step::Expired);
    }

    #[test]
    fn retry_after_matches_a_walk_over_every_ms() {
        for w in [1u64, 2, 7, 10, 100] {
            for limit in [1u64, 2, 5, 9] {
                for prev in 0..=limit {
                    for cur in 0..=limit {
                        for k in 1..=limit + 1 {
                            for e in 0..w {
                                assert_eq!(
                                    retry_after(prev, cur, k, limit, w, e),
                                    naive_retry(prev, cur, k, limit, w, e),
                                    "w={w} l={limit} p={prev} c={cur} k={k} e={e}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn divisor_matches_division() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut ds: Vec<u64> = (1..=1100).collect();
        ds.extend([60_000, 86_400_000, (1 << 31) - 1, 1 << 31, u32::MAX as u64, (1 << 40) + 7, u64::MAX / 3, u64::MAX]);
        for _ in 0..200 {
            ds.push(next() >> (next() % 64));
        }
        for &d in ds.iter().filter(|d| **d > 0) {
            let div = Divisor::new(d);
            let mut ns = vec![0, 1, d - 1, d, d.wrapping_add(1), u64::MAX, u64::MAX - 1, u64::MAX / d * d];
            for _ in 0..200 {
                ns.push(next() >> (next() % 64));
            }
            for n in ns {
                assert_eq!(div.div_rem(n), (n / d, n % d), "{n} / {d}");
            }
        }
    }

    #[test]
    fn fast_forms_equal_the_u128_definitions() {
        let w128 = |p: u64, c: u64, l: u64, w: u64, e: u64| {
            let (p, c, l, w, e) = (p as u128, c as u128, l as u128, w as u128, e as u128);
            let used = p * (w - e) + c * w;
            let est = p * (w - e) / w + c;
            let rem = if used >= l * w { 0 } else { (l * w - used) / w };
            (est.min(u64::MAX as u128) as u64, rem as u64)
        };
        let vals = [0u64, 1, 2, 3, 999, 1 << 18, (1 << 26) - 1, (1 << 32) - 1, 1 << 32, u64::MAX / 3];
        for &p in &vals {
            for &c in &vals {
                for &l in &vals {
                    for &w in &[1u64, 7, 1000, 60_000, u32::MAX as u64] {
                        for e in [0, w / 3, w - 1] {
                            assert_eq!(
                                estimate_and_remaining(p, c, l, w, e),
                                w128(p, c, l, w, e),
                                "p={p} c={c} l={l} w={w} e={e}"
                            );
                            assert_eq!(estimate(p, c, w, e), w128(p, c, l, w, e).0);
                            assert_eq!(remaining(p, c, l, w, e), w128(p, c, l, w, e).1);
                            for k in [0u64, 1, 5, l, l.saturating_add(1)] {
                                let (pp, cc, kk, ll, ww, ee) =
                                    (p as u128, c as u128, k as u128, l as u128, w as u128, e as u128);
                                let def = pp * (ww - ee) + (cc + kk) * ww <= ll * ww;
                                assert_eq!(admits(p, c, k, l, w, e), def, "p={p} c={c} k={k} l={l} w={w} e={e}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn boundary_ms_belongs_to_the_old_window() {
        // T6: the last ms of window k is still window k.
        let w = 1000;
        assert_eq!(Position::at(1999, w, 0).id, 1);
        assert_eq!(Position::at(1999, w, 0).elapsed_ms, 999);
        assert_eq!(Position::at(2000, w, 0).id, 2);
        assert_eq!(Position::at(2000, w, 0).elapsed_ms, 0);
    }

    #[test]
    fn roll_rules() {
        let w = 10;
        let at = |now| Position::at(now, w, 0);
        assert_eq!(roll(3, 4, 5, at(35)).cur, 5);
        let r = roll(3, 4, 5, at(45));
        assert_eq!((r.prev, r.cur, r.dropped), (5, 0, 4));
        let r = roll(3, 4, 5, at(55));
        assert_eq!((r.prev, r.cur, r.dropped), (0, 0, 9));
        // Backwards by an hour: no time passed, elapsed 0 in the stored window.
        let r = roll(360_003, 4, 5, at(35));
        assert_eq!((r.id, r.prev, r.cur, r.elapsed_ms), (360_003, 4, 5, 0));
        // An hour at W = 1 ms (3.6M windows) is still within the band.
        let r = roll(3_600_003, 4, 5, Position::at(3, 1, 0));
        assert_eq!((r.id, r.prev, r.cur, r.elapsed_ms), (3_600_003, 4, 5, 0));
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        // T7/T2: maximal products and u64::MAX now.
        let w = u32::MAX as u64;
        assert!(!admits(u64::MAX, u64::MAX, u64::MAX, u64::MAX - 1, w, 0));
        assert_eq!(estimate(u64::MAX, u64::MAX, w, 0), u64::MAX);
        let p = Position::at(u64::MAX, w, u64::MAX);
        assert!(p.elapsed_ms < w);
        assert_eq!(retry_after(0, 0, 2, 1, w, 5), RETRY_NEVER);
    }
}
