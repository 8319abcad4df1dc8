//! Observation: statistics, connection info, Prometheus text.
//!
//! Output structs carry `struct_size`, set by the caller: only that many
//! bytes are written (at most this library's size), so a caller built
//! against an older header (smaller struct) or a newer one (larger struct)
//! is served what both know.

use super::limiter::{handle_status, limiter, rt_limiter};
use super::limits::rt_limits;
use super::{boundary, output_size, rt_conn, rt_status, status_boundary, write_c_text, write_sized, RT_REASON_COUNT};
use super::{RT_STATUS_INVALID_ARGUMENT, RT_STATUS_NULL_ARGUMENT, RT_STATUS_UNKNOWN_CONNECTION};
use crate::Conn;
use core::ffi::c_char;
use core::mem::size_of;

/// A snapshot of a limiter's statistics (`rt_limiter_stats`). Counters
/// are totals since the region was created, over every process attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct rt_stats {
    /// Set by the caller to sizeof(rt_stats); set by the library to the
    /// number of bytes it wrote.
    pub struct_size: u32,
    /// Live connections.
    pub active_connections: u64,
    /// Clients with at least one live connection.
    pub unique_clients: u64,
    /// Allowed messages on connections (`rt_check_message`).
    pub total_messages: u64,
    /// Bytes of those messages.
    pub total_bytes: u64,
    /// Connects allowed (including untracked and dry-run ones).
    pub connections_allowed: u64,
    /// Allowed `rt_check_message` plus allowed `rt_check_key` calls.
    pub messages_allowed: u64,
    /// Denials by reason, indexed by `rt_reason` (`denied[RT_OK]` is 0).
    /// Calls refused at the boundary (NULL limiter, bad id, handle 0) are
    /// not counted.
    pub denied: [u64; RT_REASON_COUNT as usize],
    /// Clients and keys holding a table slot.
    pub tracked_clients: u64,
    /// Client table capacity.
    pub max_clients: u64,
    /// Connection slab capacity.
    pub max_connections: u64,
    /// Violation records dropped because the ring (1024 records) was full.
    pub violations_dropped: u64,
    /// Requests a dry-run limiter would have denied.
    pub dry_run_denied: u64,
    /// The limits in force.
    pub limits: rt_limits,
    /// Connects allowed untracked because the table was full (fail-open).
    pub untracked_allowed: u64,
}

/// What is known of one live connection (`rt_limiter_connection_info`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct rt_connection_info {
    /// Set by the caller to sizeof(rt_connection_info); set by the library
    /// to the number of bytes it wrote.
    pub struct_size: u32,
    /// The first 40 bytes of the client id (not NUL-terminated).
    pub client_id: [u8; 40],
    /// The full length of the client id (may exceed 40; 0 for an untracked
    /// fail-open connection).
    pub client_id_len: u32,
    /// The limiter's clock (ms) at connect.
    pub connected_at_ms: u64,
    /// The limiter's clock (ms) at the last allowed message (connect time if none).
    pub last_message_at_ms: u64,
    /// Allowed messages.
    pub message_count: u64,
    /// Bytes of allowed messages.
    pub byte_count: u64,
}

/// Writes a snapshot of the statistics to `*out`. The caller sets
/// `out->struct_size` (to sizeof(rt_stats)); at most that many bytes are
/// written, and `out->struct_size` becomes the number written.
///
/// Returns `RT_STATUS_NULL_ARGUMENT` (lim or out NULL),
/// `RT_STATUS_INVALID_ARGUMENT` (not a live limiter, or struct_size < 8;
/// nothing written). Scans every slot: O(max_clients + max_connections), so
/// call it from a metrics thread, not per message. Thread-safe.
///
/// # Safety
/// `lim` must be NULL or a live limiter; `out` must be NULL or valid for
/// reads and writes of `out->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn rt_limiter_stats(lim: *const rt_limiter, out: *mut rt_stats) -> rt_status {
    status_boundary(|| {
        // SAFETY: per the caller.
        let inner = unsafe { limiter(lim) }.ok_or_else(|| handle_status(lim))?;
        if out.is_null() {
            return Err(RT_STATUS_NULL_ARGUMENT);
        }
        // SAFETY: out is non-NULL and starts with its struct_size.
        let n = unsafe { output_size(out.cast(), size_of::<rt_stats>()) }.ok_or(RT_STATUS_INVALID_ARGUMENT)?;
        let s = inner.stats();
        let stats = rt_stats {
            struct_size: 0,
            active_connections: s.active_connections,
            unique_clients: s.unique_clients,
            total_messages: s.total_messages,
            total_bytes: s.total_bytes,
            connections_allowed: s.connections_allowed,
            messages_allowed: s.messages_allowed,
            denied: s.denied,
            tracked_clients: s.tracked_clients,
            max_clients: s.max_clients,
            max_connections: s.max_connections,
            violations_dropped: s.violations_dropped,
            dry_run_denied: s.dry_run_denied,
            limits: rt_limits::from(&s.limits),
            untracked_allowed: s.untracked_allowed,
        };
        // SAFETY: out holds struct_size >= n bytes; rt_stats starts with a u32.
        unsafe { write_sized(stats, out, n) };
        Ok(())
    })
}

/// Writes what is known of the live connection `conn` to `*out`. The caller
/// sets `out->struct_size` (to sizeof(rt_connection_info)); at most that many
/// bytes are written, and `out->struct_size` becomes the number written.
///
/// Returns `RT_STATUS_UNKNOWN_CONNECTION` for 0 or a closed, stale or forged
/// handle, `RT_STATUS_NULL_ARGUMENT` (lim or out NULL),
/// `RT_STATUS_INVALID_ARGUMENT` (not a live limiter, or struct_size < 8).
/// On any error nothing is written. Thread-safe.
///
/// # Safety
/// `lim` must be NULL or a live limiter; `out` must be NULL or valid for
/// reads and writes of `out->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn rt_limiter_connection_info(
    lim: *const rt_limiter,
    conn: rt_conn,
    out: *mut rt_connection_info,
) -> rt_status {
    status_boundary(|| {
        // SAFETY: per the caller.
        let inner = unsafe { limiter(lim) }.ok_or_else(|| handle_status(lim))?;
        if out.is_null() {
            return Err(RT_STATUS_NULL_ARGUMENT);
        }
        // SAFETY: out is non-NULL and starts with its struct_size.
        let n =
            unsafe { output_size(out.cast(), size_of::<rt_connection_info>()) }.ok_or(RT_STATUS_INVALID_ARGUMENT)?;
        let info = Conn::from_raw(conn).and_then(|c| inner.connection_info(c)).ok_or(RT_STATUS_UNKNOWN_CONNECTION)?;
        let info = rt_connection_info {
            struct_size: 0,
            client_id: info.client_id,
            client_id_len: info.client_id_len,
            connected_at_ms: info.connected_at_ms,
            last_message_at_ms: info.last_message_at_ms,
            message_count: info.message_count,
            byte_count: info.byte_count,
        };
        // SAFETY: out holds struct_size >= n bytes; the struct starts with a u32.
        unsafe { write_sized(info, out, n) };
        Ok(())
    })
}

/// Writes the statistics in the Prometheus text exposition format (0.0.4)
/// to `buf`: gauges and counters named `ratethrottle_*`, among them
/// `ratethrottle_denied_total{reason="..."}` per reason.
///
/// `snprintf` semantics: writes at most `cap - 1` bytes and a NUL, and
/// returns the full length of the text, excluding the NUL; a return value of
/// `cap` or more means it was truncated (call again with a larger buffer).
/// `buf` may be NULL (then `cap` is ignored and nothing is written: a size query).
/// Returns 0 when `lim` is NULL or not a live limiter. Allocates; scans
/// every slot like `rt_limiter_stats`. Thread-safe.
///
/// # Safety
/// `lim` must be NULL or a live limiter; `buf` must be NULL or valid for
/// writes of `cap` bytes.
#[no_mangle]
pub unsafe extern "C" fn rt_stats_prometheus(lim: *const rt_limiter, buf: *mut c_char, cap: usize) -> usize {
    boundary(
        || 0,
        || {
            // SAFETY: per the caller.
            match unsafe { limiter(lim) } {
                // SAFETY: buf is NULL or valid for cap bytes per the caller.
                Some(inner) => unsafe { write_c_text(inner.prometheus().as_bytes(), buf.cast(), cap) },
                None => 0,
            }
        },
    )
}
