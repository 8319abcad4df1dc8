//! Messages on a connection, and messages against any key (rooms,
//! channels, users).

use super::limiter::{limiter, rt_limiter};
use super::{boundary, id, rt_conn, rt_decision, RT_INVALID_ARGUMENT, RT_UNKNOWN_CONNECTION};
use crate::{Conn, Decision, Limiter};

/// Shared body of the message checks: `check` runs on a live limiter and a
/// non-zero handle, inside the panic boundary.
///
/// # Safety
/// `lim` must be NULL or a live limiter.
unsafe fn on_conn(lim: *mut rt_limiter, conn: rt_conn, check: impl FnOnce(&Limiter, Conn) -> Decision) -> rt_decision {
    boundary(
        || rt_decision::deny(RT_INVALID_ARGUMENT),
        || {
            // SAFETY: per the caller.
            let Some(inner) = (unsafe { limiter(lim) }) else {
                return rt_decision::deny(RT_INVALID_ARGUMENT);
            };
            let Some(conn) = Conn::from_raw(conn) else {
                return rt_decision::deny(RT_UNKNOWN_CONNECTION);
            };
            check(inner, conn).into()
        },
    )
}

/// Shared body of `rt_check_message` and `rt_check_message_at`.
///
/// # Safety
/// `lim` must be NULL or a live limiter.
unsafe fn check_message(lim: *mut rt_limiter, conn: rt_conn, size: u64, now_ms: Option<u64>) -> rt_decision {
    // SAFETY: forwarded from the caller.
    unsafe {
        on_conn(lim, conn, |l, c| match now_ms {
            Some(now_ms) => l.check_message_at(c, size, now_ms),
            None => l.check_message(c, size),
        })
    }
}

/// Checks one message of `size` bytes on connection `conn`, reading
/// `CLOCK_MONOTONIC_COARSE`. When allowed, the message is counted against
/// every limit below; when denied, against none.
///
/// Order of checks (the first that fails is the reason):
/// 1. the handle: 0, closed, stale or forged gives `RT_UNKNOWN_CONNECTION`
///    (retry_after 0);
/// 2. `size > max_message_size` gives `RT_MESSAGE_TOO_LARGE` with
///    retry_after `RT_RETRY_NEVER`;
/// 3. the connection's messages per window (`RT_MESSAGE_RATE`, cost 1);
/// 4. the connection's bytes per window (`RT_BANDWIDTH`, cost `size`:
///    a 10 KB message uses 10 KB of the budget; `RT_RETRY_NEVER` when `size`
///    exceeds the limit itself);
/// 5. the client's messages per window over all its connections
///    (`RT_CLIENT_MESSAGE_RATE`);
/// 6. the client's bytes per window (`RT_CLIENT_BANDWIDTH`).
///
/// Each windowed check passes iff `p*(W-e) + (c+k)*W <= L*W` (see
/// `rt_decision`); when several fail, `retry_after_ms` is the wait until all
/// of them pass. `size` may be any value up to `UINT64_MAX`. In dry-run mode
/// the message is allowed and counted, with the would-be reason.
///
/// `lim` NULL or not a live limiter: a deny with `RT_INVALID_ARGUMENT`.
/// Thread-safe; never allocates or locks.
///
/// # Safety
/// `lim` must be NULL or a live limiter.
#[no_mangle]
pub unsafe extern "C" fn rt_check_message(lim: *mut rt_limiter, conn: rt_conn, size: u64) -> rt_decision {
    // SAFETY: forwarded from the caller.
    unsafe { check_message(lim, conn, size, None) }
}

/// `rt_check_message` with the caller's clock: `now_ms` is any monotonic
/// millisecond count used consistently for one limiter. A `now_ms` earlier
/// than one already seen counts as no time passed.
///
/// # Safety
/// `lim` must be NULL or a live limiter.
#[no_mangle]
pub unsafe extern "C" fn rt_check_message_at(
    lim: *mut rt_limiter,
    conn: rt_conn,
    size: u64,
    now_ms: u64,
) -> rt_decision {
    // SAFETY: forwarded from the caller.
    unsafe { check_message(lim, conn, size, Some(now_ms)) }
}

/// Shared body of `rt_check_continuation` and `rt_check_continuation_at`.
///
/// # Safety
/// `lim` must be NULL or a live limiter.
unsafe fn check_continuation(
    lim: *mut rt_limiter,
    conn: rt_conn,
    size: u64,
    message_size: u64,
    now_ms: Option<u64>,
) -> rt_decision {
    // SAFETY: forwarded from the caller.
    unsafe {
        on_conn(lim, conn, |l, c| match now_ms {
            Some(now_ms) => l.check_continuation_at(c, size, message_size, now_ms),
            None => l.check_continuation(c, size, message_size),
        })
    }
}

/// Checks a later part of a message that `rt_check_message` already
/// allowed on `conn` (a WebSocket continuation frame), reading
/// `CLOCK_MONOTONIC_COARSE`. `size` is this part's bytes; `message_size` is
/// the whole message so far, this part included. When allowed, the `size`
/// bytes count against the connection's and the client's byte budgets and
/// no new message counts against their message rates; when denied, nothing
/// is counted.
///
/// Order of checks: the handle (`RT_UNKNOWN_CONNECTION`);
/// `message_size < size` (`RT_INVALID_ARGUMENT`); `message_size >
/// max_message_size` (`RT_MESSAGE_TOO_LARGE`, retry_after `RT_RETRY_NEVER`);
/// the connection's bytes per window (`RT_BANDWIDTH`); the client's bytes
/// per window (`RT_CLIENT_BANDWIDTH`). Dry-run mode as for
/// `rt_check_message`.
///
/// `lim` NULL or not a live limiter: a deny with `RT_INVALID_ARGUMENT`.
/// Thread-safe; never allocates or locks.
///
/// # Safety
/// `lim` must be NULL or a live limiter.
#[no_mangle]
pub unsafe extern "C" fn rt_check_continuation(
    lim: *mut rt_limiter,
    conn: rt_conn,
    size: u64,
    message_size: u64,
) -> rt_decision {
    // SAFETY: forwarded from the caller.
    unsafe { check_continuation(lim, conn, size, message_size, None) }
}

/// `rt_check_continuation` with the caller's clock (see
/// `rt_check_message_at`).
///
/// # Safety
/// `lim` must be NULL or a live limiter.
#[no_mangle]
pub unsafe extern "C" fn rt_check_continuation_at(
    lim: *mut rt_limiter,
    conn: rt_conn,
    size: u64,
    message_size: u64,
    now_ms: u64,
) -> rt_decision {
    // SAFETY: forwarded from the caller.
    unsafe { check_continuation(lim, conn, size, message_size, Some(now_ms)) }
}

/// Shared body of `rt_check_key` and `rt_check_key_at`.
///
/// # Safety
/// As for `rt_check_key`.
unsafe fn check_key(lim: *mut rt_limiter, key: *const u8, len: usize, size: u64, now_ms: Option<u64>) -> rt_decision {
    boundary(
        || rt_decision::deny(RT_INVALID_ARGUMENT),
        || {
            // SAFETY: per the caller.
            let (Some(inner), Some(key)) = (unsafe { limiter(lim) }, unsafe { id(key, len) }) else {
                return rt_decision::deny(RT_INVALID_ARGUMENT);
            };
            match now_ms {
                Some(now_ms) => inner.check_key_at(key, size, now_ms),
                None => inner.check_key(key, size),
            }
            .into()
        },
    )
}

/// Checks one message of `size` bytes against a key's aggregate limits
/// (a room, a channel, a user: any bytes; `(NULL, 0)` is the empty key),
/// reading `CLOCK_MONOTONIC_COARSE`. Order: `client_messages_per_window`
/// (`RT_CLIENT_MESSAGE_RATE`), then `client_bytes_per_window`
/// (`RT_CLIENT_BANDWIDTH`); when both are 0 every call is allowed. A key
/// that finds no table slot gives `RT_TABLE_FULL` (allowed untracked with
/// `RT_FLAG_FAIL_OPEN`, and with `RT_FLAG_DRY_RUN` as a would-be denial).
/// Keys and client ids share one table and one set of
/// counters: prefix keys that could collide with client ids (e.g. "room:").
/// Window and retry_after rules as in `rt_decision`.
///
/// `lim` NULL or not a live limiter, or `(NULL, len > 0)`: a deny with
/// `RT_INVALID_ARGUMENT`. Thread-safe.
///
/// # Safety
/// `lim` must be NULL or a live limiter; `key` must be NULL or readable for
/// `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn rt_check_key(lim: *mut rt_limiter, key: *const u8, len: usize, size: u64) -> rt_decision {
    // SAFETY: forwarded from the caller.
    unsafe { check_key(lim, key, len, size, None) }
}

/// `rt_check_key` with the caller's clock (see `rt_check_message_at`).
///
/// # Safety
/// As for `rt_check_key`.
#[no_mangle]
pub unsafe extern "C" fn rt_check_key_at(
    lim: *mut rt_limiter,
    key: *const u8,
    len: usize,
    size: u64,
    now_ms: u64,
) -> rt_decision {
    // SAFETY: forwarded from the caller.
    unsafe { check_key(lim, key, len, size, Some(now_ms)) }
}
