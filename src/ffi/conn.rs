//! Connections: atomic connect, disconnect, and the seed's racy
//! check + register pair.

use super::limiter::{handle_status, limiter, rt_limiter};
use super::{boundary, id, rt_conn, rt_decision, status_boundary, status_of};
use super::{rt_status, RT_INVALID_ARGUMENT, RT_STATUS_NULL_ARGUMENT};
use crate::Conn;

/// Shared body of `rt_connect` and `rt_connect_at`.
///
/// # Safety
/// As for `rt_connect`.
unsafe fn connect(
    lim: *mut rt_limiter,
    client: *const u8,
    len: usize,
    now_ms: Option<u64>,
    out_conn: *mut rt_conn,
) -> rt_decision {
    let on_panic = || {
        if !out_conn.is_null() {
            // SAFETY: non-NULL and writable per the caller.
            unsafe { out_conn.write(0) };
        }
        rt_decision::deny(RT_INVALID_ARGUMENT)
    };
    boundary(on_panic, || {
        if out_conn.is_null() {
            return rt_decision::deny(RT_INVALID_ARGUMENT);
        }
        // SAFETY: non-NULL and writable per the caller.
        unsafe { out_conn.write(0) };
        // SAFETY: per the caller.
        let (Some(inner), Some(client)) = (unsafe { limiter(lim) }, unsafe { id(client, len) }) else {
            return rt_decision::deny(RT_INVALID_ARGUMENT);
        };
        let (d, conn) = match now_ms {
            Some(now_ms) => inner.connect_at(client, now_ms),
            None => inner.connect(client),
        };
        // SAFETY: as above.
        unsafe { out_conn.write(conn.map_or(0, Conn::raw)) };
        d.into()
    })
}

/// Opens a connection of `client` (any bytes: an IP, a user id, an API key;
/// `(NULL, 0)` is the valid empty id) if the limits allow it: checks, in this
/// order, the client table capacity (`RT_TABLE_FULL`), the client's live
/// connections (`RT_CONCURRENT_CONNECTIONS`, retry_after 0) and its new
/// connections per window (`RT_CONNECTION_RATE`, exact retry_after), and
/// registers the connection, all as one atomic step: two racing connects can
/// never both take the last slot. Reads `CLOCK_MONOTONIC_COARSE`; see
/// `rt_decision` for the window and retry_after rules.
///
/// When allowed, `*out_conn` is the new handle, owned by the caller, who
/// closes it with `rt_disconnect`. When denied, `*out_conn` is 0 and nothing
/// is counted against any budget. With `RT_FLAG_FAIL_OPEN` and a full table
/// the connect is allowed untracked (reason `RT_TABLE_FULL`); if even the
/// connection slab is full, `*out_conn` is then 0. With `RT_FLAG_DRY_RUN` a
/// would-be denial is allowed and registered, with its reason set; a full
/// table is such a denial, allowed untracked as with `RT_FLAG_FAIL_OPEN`.
///
/// `lim` NULL or not a live limiter, `out_conn` NULL, or `(NULL, len > 0)`:
/// a deny with `RT_INVALID_ARGUMENT` that connects nothing (`*out_conn` is 0
/// when `out_conn` is not NULL). Thread-safe.
///
/// # Safety
/// `lim` must be NULL or a live limiter; `client` must be NULL or readable
/// for `len` bytes; `out_conn` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rt_connect(
    lim: *mut rt_limiter,
    client: *const u8,
    len: usize,
    out_conn: *mut rt_conn,
) -> rt_decision {
    // SAFETY: forwarded from the caller.
    unsafe { connect(lim, client, len, None, out_conn) }
}

/// `rt_connect` with the caller's clock: `now_ms` is any monotonic
/// millisecond count (nginx's `ngx_current_msec`, a fake clock in tests),
/// used consistently for one limiter. A `now_ms` earlier than one already
/// seen counts as no time passed.
///
/// # Safety
/// As for `rt_connect`.
#[no_mangle]
pub unsafe extern "C" fn rt_connect_at(
    lim: *mut rt_limiter,
    client: *const u8,
    len: usize,
    now_ms: u64,
    out_conn: *mut rt_conn,
) -> rt_decision {
    // SAFETY: forwarded from the caller.
    unsafe { connect(lim, client, len, Some(now_ms), out_conn) }
}

/// Closes a connection: frees its concurrency slot and its handle. The
/// handle must not be used afterwards (it is then answered with
/// `RT_UNKNOWN_CONNECTION`, even after the slot is reused).
///
/// Idempotent: 0, a closed, stale or forged handle is ignored; `lim` NULL or
/// not a live limiter does nothing. Thread-safe.
///
/// # Safety
/// `lim` must be NULL or a live limiter.
#[no_mangle]
pub unsafe extern "C" fn rt_disconnect(lim: *mut rt_limiter, conn: rt_conn) {
    boundary(
        || (),
        || {
            // SAFETY: per the caller.
            if let (Some(inner), Some(conn)) = (unsafe { limiter(lim) }, Conn::from_raw(conn)) {
                inner.disconnect(conn);
            }
        },
    )
}

/// The seed's `check_connection`: decides whether `client` may connect now
/// (concurrency, then connection rate; same decision as `rt_connect`)
/// without registering anything. Racy by design: another thread may take
/// the slot before `rt_register_connection`. Prefer `rt_connect`, which
/// decides and registers in one atomic step. Reads `CLOCK_MONOTONIC_COARSE`.
///
/// `lim` NULL or not a live limiter, or `(NULL, len > 0)`: a deny with
/// `RT_INVALID_ARGUMENT`. `(NULL, 0)` is the empty id. Thread-safe.
///
/// # Safety
/// `lim` must be NULL or a live limiter; `client` must be NULL or readable
/// for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn rt_check_connection(lim: *mut rt_limiter, client: *const u8, len: usize) -> rt_decision {
    boundary(
        || rt_decision::deny(RT_INVALID_ARGUMENT),
        || {
            // SAFETY: per the caller.
            match (unsafe { limiter(lim) }, unsafe { id(client, len) }) {
                (Some(inner), Some(client)) => inner.check_connection(client).into(),
                _ => rt_decision::deny(RT_INVALID_ARGUMENT),
            }
        },
    )
}

/// `rt_check_connection` with the caller's clock (see `rt_connect_at`).
///
/// # Safety
/// As for `rt_check_connection`.
#[no_mangle]
pub unsafe extern "C" fn rt_check_connection_at(
    lim: *mut rt_limiter,
    client: *const u8,
    len: usize,
    now_ms: u64,
) -> rt_decision {
    boundary(
        || rt_decision::deny(RT_INVALID_ARGUMENT),
        || {
            // SAFETY: per the caller.
            match (unsafe { limiter(lim) }, unsafe { id(client, len) }) {
                (Some(inner), Some(client)) => inner.check_connection_at(client, now_ms).into(),
                _ => rt_decision::deny(RT_INVALID_ARGUMENT),
            }
        },
    )
}

/// The seed's `register_connection`: counts a connection of `client`
/// without checking the limits (call `rt_check_connection` first; racy by
/// design, prefer `rt_connect`). On `RT_STATUS_OK`, `*out_conn` is the new
/// handle, owned by the caller, who closes it with `rt_disconnect`; on any
/// other status it is not written.
///
/// Returns `RT_STATUS_TABLE_FULL` when no client or connection slot is free
/// (fail-open still registers an untracked connection if the slab has room),
/// `RT_STATUS_NULL_ARGUMENT` (lim or out_conn NULL, or `(NULL, len > 0)`),
/// `RT_STATUS_INVALID_ARGUMENT` (not a live limiter, or len > PTRDIFF_MAX).
/// Thread-safe.
///
/// # Safety
/// `lim` must be NULL or a live limiter; `client` must be NULL or readable
/// for `len` bytes; `out_conn` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rt_register_connection(
    lim: *mut rt_limiter,
    client: *const u8,
    len: usize,
    out_conn: *mut rt_conn,
) -> rt_status {
    status_boundary(|| {
        // SAFETY: per the caller.
        let inner = unsafe { limiter(lim) }.ok_or_else(|| handle_status(lim))?;
        if out_conn.is_null() || (client.is_null() && len > 0) {
            return Err(RT_STATUS_NULL_ARGUMENT);
        }
        // SAFETY: per the caller.
        let client = unsafe { id(client, len) }.ok_or(super::RT_STATUS_INVALID_ARGUMENT)?;
        let conn = inner.register_connection(client).map_err(|e| status_of(&e))?;
        // SAFETY: non-NULL and writable per the caller.
        unsafe { out_conn.write(conn.raw()) };
        Ok(())
    })
}

/// Live connections of `client` (0 when it is unknown). `(NULL, 0)` is the
/// empty id; `lim` NULL or not a live limiter, or `(NULL, len > 0)`, give 0.
/// Thread-safe.
///
/// # Safety
/// `lim` must be NULL or a live limiter; `client` must be NULL or readable
/// for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn rt_client_connections(lim: *const rt_limiter, client: *const u8, len: usize) -> u32 {
    boundary(
        || 0,
        || {
            // SAFETY: per the caller.
            match (unsafe { limiter(lim) }, unsafe { id(client, len) }) {
                (Some(inner), Some(client)) => inner.client_connections(client),
                _ => 0,
            }
        },
    )
}
