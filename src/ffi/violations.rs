//! Violations: the synchronous callback of one handle, and the bounded ring
//! of the region that any thread or process can drain.

use super::limiter::{limiter, rt_limiter};
use super::{boundary, rt_conn, rt_reason};
use crate::Violation;
use core::ffi::c_void;

/// One denial, or one would-be denial in dry-run mode.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct rt_violation {
    /// Which limit.
    pub reason: rt_reason,
    /// The first 40 bytes of the client id or key (not NUL-terminated).
    pub client_id: [u8; 40],
    /// The id's full length (may exceed 40).
    pub client_id_len: u32,
    /// The connection's handle; 0 for connection-level and key checks.
    pub conn: rt_conn,
    /// The limit that was exceeded.
    pub limit: u64,
    /// The estimate that exceeded it.
    pub current: u64,
    /// The request's size: bytes for messages, 1 for connects.
    pub size: u64,
    /// As in the decision.
    pub retry_after_ms: u64,
    /// The limiter clock's ms when it happened (`now_ms` for `_at` calls).
    pub at_ms: u64,
}

impl From<&Violation> for rt_violation {
    fn from(v: &Violation) -> Self {
        rt_violation {
            reason: v.reason as rt_reason,
            client_id: v.client_id,
            client_id_len: v.client_id_len,
            conn: v.conn,
            limit: v.limit,
            current: v.current,
            size: v.size,
            retry_after_ms: v.retry_after_ms,
            at_ms: v.at_ms,
        }
    }
}

/// A violation callback: `v` is valid only during the call (copy what you
/// keep); `user_data` is the pointer given to `rt_set_violation_callback`.
pub type rt_violation_cb = Option<unsafe extern "C" fn(v: *const rt_violation, user_data: *mut c_void)>;

/// The caller's `user_data`, which the caller promises may be used from any
/// thread (see `rt_set_violation_callback`).
struct UserData(*mut c_void);

impl UserData {
    fn get(&self) -> *mut c_void {
        self.0
    }
}

// SAFETY: the C caller guarantees user_data may be used from any thread.
unsafe impl Send for UserData {}
// SAFETY: as above.
unsafe impl Sync for UserData {}

/// Sets the violation callback of this handle; `cb` NULL removes it. The
/// callback runs synchronously on the thread that made the decision, for
/// every denial and every dry-run would-be denial (not for
/// `RT_UNKNOWN_CONNECTION` or `RT_INVALID_ARGUMENT`), in addition to the
/// record put in the ring. Keep it short; it must not unwind or `longjmp`
/// out, and must not call `rt_limiter_free` on this limiter.
///
/// The callback belongs to this handle only: other handles attached to the
/// same region (in this or other processes) have their own. It may run on
/// any thread that calls a check, possibly on several at once, so
/// `user_data` must be safe to use from any thread. A replaced callback may
/// still be running on another thread when this returns, so keep the old
/// `user_data` valid until the checks in flight have returned (or until
/// `rt_limiter_free`); the library never frees `user_data`. `lim` NULL or not
/// a live limiter does nothing. Thread-safe.
///
/// # Safety
/// `lim` must be NULL or a live limiter; `cb` must be NULL or a function
/// callable as described, with `user_data`, from any thread.
#[no_mangle]
pub unsafe extern "C" fn rt_set_violation_callback(lim: *mut rt_limiter, cb: rt_violation_cb, user_data: *mut c_void) {
    boundary(
        || (),
        || {
            // SAFETY: per the caller.
            let Some(inner) = (unsafe { limiter(lim) }) else {
                return;
            };
            inner.set_violation_callback(cb.map(|cb| {
                let user_data = UserData(user_data);
                Box::new(move |v: &Violation| {
                    let v = rt_violation::from(v);
                    // SAFETY: the caller promised cb may be called with
                    // user_data from any thread; v lives during the call.
                    unsafe { cb(&v, user_data.get()) };
                }) as crate::ViolationCallback
            }));
        },
    )
}

/// Records moved per step of `rt_drain_violations` (a stack buffer).
const DRAIN_CHUNK: usize = 32;

/// Moves up to `cap` violation records from the region's ring into
/// `out[0..cap)` and returns how many, oldest first. The ring is shared by
/// every handle and process attached to the region and holds 1024 records;
/// when it is full new records are dropped and counted in
/// `rt_stats.violations_dropped`, and a denial never waits for a reader.
///
/// Returns 0 when `lim` is NULL or not a live limiter, when `cap` is 0, or
/// when `out` is NULL. Thread-safe: several threads may drain at once, each
/// record is taken once.
///
/// # Safety
/// `lim` must be NULL or a live limiter; `out` must be NULL or valid for
/// writes of `cap` records.
#[no_mangle]
pub unsafe extern "C" fn rt_drain_violations(lim: *mut rt_limiter, out: *mut rt_violation, cap: usize) -> usize {
    boundary(
        || 0,
        || {
            // SAFETY: per the caller.
            let Some(inner) = (unsafe { limiter(lim) }) else {
                return 0;
            };
            if out.is_null() {
                return 0;
            }
            let mut chunk = [Violation::empty(); DRAIN_CHUNK];
            let mut n = 0;
            while n < cap {
                let want = (cap - n).min(DRAIN_CHUNK);
                let got = inner.drain_violations(&mut chunk[..want]);
                for v in &chunk[..got] {
                    // SAFETY: n < cap and out holds cap records per the caller.
                    unsafe { out.add(n).write(rt_violation::from(v)) };
                    n += 1;
                }
                if got < want {
                    break;
                }
            }
            n
        },
    )
}
