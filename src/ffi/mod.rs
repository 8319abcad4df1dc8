//! The C ABI: a thin translation of the Rust API into `include/ratethrottle.h`.
//!
//! This module holds no limiting logic. It owns the rules of the boundary:
//!
//! - Every `extern "C"` body runs inside [`boundary`], which catches panics
//!   and turns them into `RT_STATUS_PANIC`, a deny with `RT_INVALID_ARGUMENT`,
//!   or a documented neutral value (0, a static string, no-op). No panic ever
//!   unwinds into C.
//! - Every pointer is checked for NULL before use. Ids are `(pointer, length)`
//!   pairs; `(NULL, 0)` is the empty id and never reaches
//!   `slice::from_raw_parts`. Out-params come last and are written only on
//!   success (except `rt_connect`, whose `*out_conn` is 0 on every denial).
//! - `rt_status` and `rt_reason` are plain `uint32_t` at the ABI: C may pass
//!   any integer, so no value from C is ever transmuted into a Rust enum.
//!   Their numeric values never change.
//! - Input structs carry `struct_size`: only that many bytes are read, and
//!   output structs with a `struct_size` get only that many bytes written.
//!
//! One file per object: `status` (version and strings), `limits`, `limiter`,
//! `conn` (connections), `messages`, `observe` (statistics, connection
//! info, Prometheus text) and `violations` (callback and ring).

#![allow(non_camel_case_types)]

// In the header's order (cbindgen follows these declarations).
mod status;
// Configuration.
mod limits;
// The handle.
mod limiter;
// Connections and messages.
mod conn;
mod messages;
// Observation.
mod observe;
mod violations;

pub use conn::*;
pub use limiter::*;
pub use limits::*;
pub use messages::*;
pub use observe::*;
pub use status::*;
pub use violations::*;

use crate::{Decision, Error, Reason, REASON_COUNT, RETRY_NEVER};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The result of a call that can fail: one of the `RT_STATUS_*` values. A
/// plain `uint32_t`: the values are fixed for ever and new ones are only
/// ever appended. `rt_status_str` names any value, including unknown ones.
pub type rt_status = u32;

// The values of `rt_status` (typed `u32` so that cbindgen emits them first).

/// Success.
pub const RT_STATUS_OK: u32 = 0;
/// A required pointer argument was NULL (or an id was `(NULL, len > 0)`).
pub const RT_STATUS_NULL_ARGUMENT: u32 = 1;
/// An argument is invalid: a bad `struct_size`, misaligned memory, a limiter
/// pointer that is not a live `rt_limiter`, capacities changed at run time.
pub const RT_STATUS_INVALID_ARGUMENT: u32 = 2;
/// A limit is out of range; `rt_limits_error` says which and why.
pub const RT_STATUS_INVALID_LIMITS: u32 = 3;
/// The region could not be allocated.
pub const RT_STATUS_OUT_OF_MEMORY: u32 = 4;
/// The memory given is smaller than `rt_region_size` says it must be.
pub const RT_STATUS_REGION_TOO_SMALL: u32 = 5;
/// The memory does not hold a ready region of this library's layout version
/// (garbage, zeroes, another version, not yet initialised).
pub const RT_STATUS_INCOMPATIBLE_REGION: u32 = 6;
/// The connection handle is unknown, closed, stale or forged.
pub const RT_STATUS_UNKNOWN_CONNECTION: u32 = 7;
/// No slot is free for a new client or connection.
pub const RT_STATUS_TABLE_FULL: u32 = 8;
/// An internal error (a Rust panic) was caught at the boundary. The limiter
/// stays usable; please report it.
pub const RT_STATUS_PANIC: u32 = 9;
/// A system call on a shared region's file failed (`rt_limiter_open_file`);
/// `errno` says why.
pub const RT_STATUS_IO_ERROR: u32 = 10;

/// Why a request was denied (or, in dry-run mode, would have been): one of
/// the `RT_*` reason values (`RT_OK` when allowed). A plain `uint32_t`; the
/// values are fixed for ever. The first limit that fails is reported (see
/// each check function for the order).
pub type rt_reason = u32;

// The values of `rt_reason` (typed `u32` so that cbindgen emits them first).

/// Allowed.
pub const RT_OK: u32 = 0;
/// Too many new connections for this client in the window (retry_after set).
pub const RT_CONNECTION_RATE: u32 = 1;
/// Too many live connections for this client (retry_after 0: retry when one closes).
pub const RT_CONCURRENT_CONNECTIONS: u32 = 2;
/// The message is larger than `max_message_size` (retry_after `RT_RETRY_NEVER`).
pub const RT_MESSAGE_TOO_LARGE: u32 = 3;
/// Too many messages on this connection in the window.
pub const RT_MESSAGE_RATE: u32 = 4;
/// Too many bytes on this connection in the window.
pub const RT_BANDWIDTH: u32 = 5;
/// Too many messages for this client or key, over all its connections.
pub const RT_CLIENT_MESSAGE_RATE: u32 = 6;
/// Too many bytes for this client or key, over all its connections.
pub const RT_CLIENT_BANDWIDTH: u32 = 7;
/// No table slot for a new client (or no free connection slot).
pub const RT_TABLE_FULL: u32 = 8;
/// The connection handle is unknown, closed, stale or forged (retry_after 0).
pub const RT_UNKNOWN_CONNECTION: u32 = 9;
/// An argument was invalid: NULL limiter, `(NULL, len > 0)` id, NULL
/// `out_conn`, or an internal error caught at the boundary (retry_after 0).
pub const RT_INVALID_ARGUMENT: u32 = 10;
/// Number of reasons; the length of `rt_stats.denied`.
pub const RT_REASON_COUNT: u32 = 11;

/// A connection handle. 0 is never a valid handle. Handles carry a
/// generation, so a closed, reused or forged handle is detected and answered
/// with `RT_UNKNOWN_CONNECTION`, never undefined behaviour. Each limiter
/// (each region: processes attached to one share it) salts its handles, so
/// a handle of another limiter is refused the same way (a random value
/// passes about once in 2^32).
pub type rt_conn = u64;

/// `retry_after_ms` of a request that can never pass as it is: its cost is
/// larger than the limit itself, or its size is larger than `max_message_size`.
pub const RT_RETRY_NEVER: u64 = u64::MAX;

/// `rt_limits.flags`: when the client table is full, allow the connect
/// untracked (not limited, counted in `rt_stats.untracked_allowed`) instead of
/// denying it with `RT_TABLE_FULL` (the default: fail closed).
pub const RT_FLAG_FAIL_OPEN: u32 = 1;
/// `rt_limits.flags`: decide and report, but allow. A request that would be
/// denied gets `allowed = true` with `reason` set to the would-be denial, is
/// counted in `rt_stats.dry_run_denied`, is reported as a violation, and is
/// counted against its budgets like any allowed request.
pub const RT_FLAG_DRY_RUN: u32 = 2;

/// The answer to a connect or message check, returned by value.
///
/// Rules shared by every check:
/// - A request of cost k (1 for connects and message counts, the size in
///   bytes for bandwidth) under a limit L with window length W passes iff
///   `p*(W-e) + (c+k)*W <= L*W`, where p and c are the counts of the previous
///   and current fixed windows and e the ms elapsed in the current one
///   (windows are aligned to the clock: window id = now_ms / W, e = now_ms % W).
///   Integer arithmetic, exact.
/// - `retry_after_ms` is 0 when allowed; otherwise the smallest whole number of
///   ms after which that inequality holds for the same request with no other
///   traffic; `RT_RETRY_NEVER` when k > L or size > `max_message_size`; 0 for
///   a concurrency denial (retry when a connection closes) and for
///   `RT_UNKNOWN_CONNECTION`, `RT_TABLE_FULL` and `RT_INVALID_ARGUMENT`.
///   That is the wait on the clock the check used. The plain forms add two
///   ticks of their coarse clock to a finite, non-zero wait, because that
///   clock runs behind real time by up to a tick or more: a client that
///   waits `retry_after_ms` on a precise clock then passes. The `_at` forms
///   and violation records (beside their `at_ms`) give the exact wait.
/// - A denied request is not counted against any budget (so `retry_after_ms`
///   stays exact); denials are counted in `rt_stats.denied`.
/// - Dry run (`RT_FLAG_DRY_RUN`): `allowed` is true, `reason` is the would-be
///   denial, and the request is counted like an allowed one.
/// - Time is milliseconds of `CLOCK_MONOTONIC_COARSE` for the plain forms
///   (resolution one kernel tick, typically 1 to 4 ms), or the caller's
///   `now_ms` for the `_at` forms. A `now_ms` earlier than the last one seen is
///   treated as "no time passed", never as a huge elapsed time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct rt_decision {
    /// Whether the request may proceed. Always true in dry-run mode.
    pub allowed: bool,
    /// `RT_OK`, or the first limit that failed (in dry-run mode: would have).
    pub reason: rt_reason,
    /// 0 when allowed; see the rules above.
    pub retry_after_ms: u64,
    /// The limit that decided (0 when none applies).
    pub limit: u64,
    /// Budget left under that limit after this call.
    pub remaining: u64,
    /// The estimate that decided: a count, bytes, or live connections.
    pub current: u64,
}

impl From<Decision> for rt_decision {
    fn from(d: Decision) -> Self {
        rt_decision {
            allowed: d.allowed,
            reason: d.reason as rt_reason,
            retry_after_ms: d.retry_after_ms,
            limit: d.limit,
            remaining: d.remaining,
            current: d.current,
        }
    }
}

impl rt_decision {
    /// A denial that is not the engine's: a bad argument or a caught panic.
    pub(crate) const fn deny(reason: rt_reason) -> rt_decision {
        rt_decision { allowed: false, reason, retry_after_ms: 0, limit: 0, remaining: 0, current: 0 }
    }
}

// The C values are the engine's, checked at compile time.
const _: () = {
    assert!(RT_REASON_COUNT as usize == REASON_COUNT);
    assert!(RT_RETRY_NEVER == RETRY_NEVER);
    assert!(RT_OK == Reason::Ok as u32);
    assert!(RT_CONNECTION_RATE == Reason::ConnectionRate as u32);
    assert!(RT_CONCURRENT_CONNECTIONS == Reason::ConcurrentConnections as u32);
    assert!(RT_MESSAGE_TOO_LARGE == Reason::MessageTooLarge as u32);
    assert!(RT_MESSAGE_RATE == Reason::MessageRate as u32);
    assert!(RT_BANDWIDTH == Reason::Bandwidth as u32);
    assert!(RT_CLIENT_MESSAGE_RATE == Reason::ClientMessageRate as u32);
    assert!(RT_CLIENT_BANDWIDTH == Reason::ClientBandwidth as u32);
    assert!(RT_TABLE_FULL == Reason::TableFull as u32);
    assert!(RT_UNKNOWN_CONNECTION == Reason::UnknownConnection as u32);
    assert!(RT_INVALID_ARGUMENT == Reason::InvalidArgument as u32);
};

/// The one boundary every `extern "C"` body runs inside: runs `body`, and
/// if it panics returns `on_panic()` instead of unwinding into C.
///
/// With the test-only feature `panic_inject` and `RT_PANIC_INJECT=1` in the
/// environment, `body` is replaced by a panic, so tests can prove that every
/// entry point survives one.
#[inline]
pub(crate) fn boundary<T>(on_panic: impl FnOnce() -> T, body: impl FnOnce() -> T) -> T {
    // AssertUnwindSafe: after a caught panic the limiter is still sound, its
    // state is atomics that every operation leaves consistent at each step.
    match catch_unwind(AssertUnwindSafe(|| {
        inject_panic();
        body()
    })) {
        Ok(v) => v,
        Err(_) => on_panic(),
    }
}

#[cfg(feature = "panic_inject")]
fn inject_panic() {
    if std::env::var_os("RT_PANIC_INJECT").is_some_and(|v| v == "1") {
        panic!("RT_PANIC_INJECT=1: injected panic at the C boundary");
    }
}

#[cfg(not(feature = "panic_inject"))]
#[inline(always)]
fn inject_panic() {}

/// The status for an engine error.
pub(crate) fn status_of(e: &Error) -> rt_status {
    match e {
        Error::InvalidLimits(_) => RT_STATUS_INVALID_LIMITS,
        Error::InvalidArgument(_) => RT_STATUS_INVALID_ARGUMENT,
        Error::OutOfMemory => RT_STATUS_OUT_OF_MEMORY,
        Error::RegionTooSmall { .. } => RT_STATUS_REGION_TOO_SMALL,
        Error::IncompatibleRegion(_) => RT_STATUS_INCOMPATIBLE_REGION,
        Error::UnknownConnection => RT_STATUS_UNKNOWN_CONNECTION,
        Error::TableFull => RT_STATUS_TABLE_FULL,
        Error::Io { .. } => RT_STATUS_IO_ERROR,
    }
}

/// [`boundary`] for the functions that return a status: `body` returns
/// `Err(status)` on failure, a panic gives `RT_STATUS_PANIC`.
#[inline]
pub(crate) fn status_boundary(body: impl FnOnce() -> Result<(), rt_status>) -> rt_status {
    boundary(
        || RT_STATUS_PANIC,
        || match body() {
            Ok(()) => RT_STATUS_OK,
            Err(s) => s,
        },
    )
}

/// An id (client, key) from C, or `None` for `(NULL, len > 0)` or a length
/// no object can have (> `PTRDIFF_MAX`). `(any, 0)` is the empty id and the
/// pointer is not used.
///
/// # Safety
/// When `len > 0` and `ptr` is not NULL, `ptr` must be valid for reads of
/// `len` bytes that nobody writes during the call.
pub(crate) unsafe fn id<'a>(ptr: *const u8, len: usize) -> Option<&'a [u8]> {
    if len == 0 {
        return Some(&[]);
    }
    if ptr.is_null() || len > isize::MAX as usize {
        return None;
    }
    // SAFETY: non-NULL, length within isize::MAX, readable per the caller.
    Some(unsafe { core::slice::from_raw_parts(ptr, len) })
}

/// Copies `text` into a C buffer with `snprintf` semantics: writes at most
/// `cap - 1` bytes and a NUL (nothing when `buf` is NULL or `cap` is 0) and
/// returns the full length of `text`.
///
/// # Safety
/// When `buf` is not NULL it must be valid for writes of `cap` bytes.
pub(crate) unsafe fn write_c_text(text: &[u8], buf: *mut u8, cap: usize) -> usize {
    if !buf.is_null() && cap > 0 {
        let n = text.len().min(cap - 1);
        // SAFETY: buf holds cap > n bytes per the caller; text is ours and
        // cannot overlap a buffer the caller owns.
        unsafe {
            core::ptr::copy_nonoverlapping(text.as_ptr(), buf, n);
            buf.add(n).write(0);
        }
    }
    text.len()
}

/// Reads the leading `uint32_t struct_size` of an output struct and returns
/// how many bytes of it to write: `min(struct_size, ours)`; `None` when it is
/// smaller than 8 (never a real struct).
///
/// # Safety
/// `out` must be non-NULL and valid for reads of 4 bytes.
pub(crate) unsafe fn output_size(out: *const u32, ours: usize) -> Option<usize> {
    // SAFETY: per the caller; unaligned-safe in case C packed it.
    let size = unsafe { out.read_unaligned() } as usize;
    (size >= 8).then(|| size.min(ours))
}

/// Writes the first `n` bytes of `value` (whose first field is a `uint32_t
/// struct_size`, set here to `n`) to `out`.
///
/// # Safety
/// `out` must be valid for writes of `n` bytes, `n <= size_of::<T>()`, and
/// `T` must be `repr(C)` starting with a `u32`.
pub(crate) unsafe fn write_sized<T>(mut value: T, out: *mut T, n: usize) {
    debug_assert!(n <= core::mem::size_of::<T>() && n >= 4);
    // SAFETY: T starts with a u32 per the caller.
    unsafe { (&mut value as *mut T).cast::<u32>().write(n as u32) };
    // SAFETY: value is a live local of size_of::<T>() >= n bytes; out is
    // valid for n bytes per the caller and cannot overlap a local.
    unsafe { core::ptr::copy_nonoverlapping((&value as *const T).cast::<u8>(), out.cast::<u8>(), n) };
}
