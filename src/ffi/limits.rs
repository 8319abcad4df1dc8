//! `rt_limits`: the C form of [`Limits`], read tolerantly by `struct_size`.
//!
//! A caller built against an older header passes a smaller struct: the
//! fields it lacks take the defaults of `rt_limits_default`. A caller built
//! against a newer header passes a larger one: accepted only when every byte
//! this library does not know is zero. No byte past `struct_size` is read.

use super::{boundary, rt_status, status_boundary, write_c_text};
use super::{
    RT_FLAG_DRY_RUN, RT_FLAG_FAIL_OPEN, RT_STATUS_INVALID_ARGUMENT, RT_STATUS_INVALID_LIMITS, RT_STATUS_NULL_ARGUMENT,
};
use crate::Limits;
use core::ffi::c_char;
use core::mem::{offset_of, size_of};

/// The limits of one limiter. Every numeric limit uses 0 for "no limit"
/// (except `window_ms`, `max_clients` and `max_connections`, which must be at
/// least 1). Fill it with `rt_limits_default` and change what you need, or
/// zero it and set `struct_size = sizeof(rt_limits)` and every field.
///
/// Ranges (checked by `rt_limits_validate`, explained by `rt_limits_error`):
/// messages per window 0..=262143, bytes per window 0..=67108863,
/// connections per window and concurrent connections 0..=16777215,
/// `max_clients` and `max_connections` 1..=8388608.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct rt_limits {
    /// sizeof(rt_limits) as the caller's header defines it.
    pub struct_size: u32,
    /// Length of every window in ms; default 60000; 1..=UINT32_MAX.
    pub window_ms: u32,
    /// New connections per client per window; default 60.
    pub connections_per_window: u32,
    /// Live connections per client; default 10.
    pub max_concurrent_connections: u32,
    /// Messages per connection per window; default 1000.
    pub messages_per_window: u32,
    /// Bytes per connection per window; default 0 = off.
    pub bytes_per_window: u64,
    /// Largest single message in bytes; default 65536.
    pub max_message_size: u32,
    /// Messages per client (over all its connections) or per key, per window; default 0 = off.
    pub client_messages_per_window: u32,
    /// Bytes per client or per key, per window; default 0 = off.
    pub client_bytes_per_window: u64,
    /// Client table capacity; default 65536. Fixed at creation.
    pub max_clients: u32,
    /// Connection slab capacity; default 65536. Fixed at creation.
    pub max_connections: u32,
    /// `RT_FLAG_FAIL_OPEN` | `RT_FLAG_DRY_RUN`; default 0. Other bits are refused.
    pub flags: u32,
    /// Must be 0 (`rt_limits_default` sets it). It fills what would be tail
    /// padding, so a field added later can never land in bytes that this
    /// version of the library silently ignores.
    pub reserved: u32,
}

impl From<&Limits> for rt_limits {
    fn from(l: &Limits) -> Self {
        rt_limits {
            struct_size: size_of::<rt_limits>() as u32,
            window_ms: l.window_ms,
            connections_per_window: l.connections_per_window,
            max_concurrent_connections: l.max_concurrent_connections,
            messages_per_window: l.messages_per_window,
            bytes_per_window: l.bytes_per_window,
            max_message_size: l.max_message_size,
            client_messages_per_window: l.client_messages_per_window,
            client_bytes_per_window: l.client_bytes_per_window,
            max_clients: l.max_clients,
            max_connections: l.max_connections,
            flags: (l.fail_open as u32 * RT_FLAG_FAIL_OPEN) | (l.dry_run as u32 * RT_FLAG_DRY_RUN),
            reserved: 0,
        }
    }
}

/// Why an `rt_limits` from C was refused: the status and the message
/// `rt_limits_error` writes.
pub(crate) struct Refusal {
    pub status: rt_status,
    pub message: String,
}

impl Refusal {
    fn new(status: rt_status, message: impl Into<String>) -> Refusal {
        Refusal { status, message: message.into() }
    }
}

/// Reads a caller's `rt_limits` (only `struct_size` bytes of it) into
/// [`Limits`], without validating the ranges.
///
/// # Safety
/// `l` must be NULL or valid for reads of 4 bytes and then of `l->struct_size` bytes.
pub(crate) unsafe fn read_limits(l: *const rt_limits) -> Result<Limits, Refusal> {
    if l.is_null() {
        return Err(Refusal::new(RT_STATUS_NULL_ARGUMENT, "limits pointer is NULL"));
    }
    let base = l.cast::<u8>();
    // SAFETY: l is non-NULL and holds at least its struct_size field.
    let size = unsafe { base.cast::<u32>().read_unaligned() } as usize;
    let ours = size_of::<rt_limits>();
    if size < 8 {
        return Err(Refusal::new(
            RT_STATUS_INVALID_ARGUMENT,
            format!("invalid struct_size: {size} is smaller than 8 (set it to sizeof(rt_limits), {ours} here)"),
        ));
    }
    if size > ours {
        // SAFETY: the caller's struct holds `size` bytes, and ours < size.
        let tail = unsafe { core::slice::from_raw_parts(base.add(ours), size - ours) };
        if tail.iter().any(|&b| b != 0) {
            return Err(Refusal::new(
                RT_STATUS_INVALID_ARGUMENT,
                format!(
                    "invalid struct_size: {size} bytes given, this library knows {ours}, \
                     and the bytes it does not know are not zero (built against a newer header?)"
                ),
            ));
        }
    }
    let mut v = rt_limits::from(&Limits::default());
    macro_rules! take {
        ($($field:ident),*) => {$(
            let at = offset_of!(rt_limits, $field);
            if at + size_of_val(&v.$field) <= size {
                // SAFETY: the field lies within the caller's struct_size bytes.
                v.$field = unsafe { core::ptr::read_unaligned(base.add(at).cast()) };
            }
        )*};
    }
    take!(
        window_ms,
        connections_per_window,
        max_concurrent_connections,
        messages_per_window,
        bytes_per_window,
        max_message_size,
        client_messages_per_window,
        client_bytes_per_window,
        max_clients,
        max_connections,
        flags,
        reserved
    );
    if v.reserved != 0 {
        return Err(Refusal::new(RT_STATUS_INVALID_ARGUMENT, format!("invalid reserved: {} (must be 0)", v.reserved)));
    }
    let known = RT_FLAG_FAIL_OPEN | RT_FLAG_DRY_RUN;
    if v.flags & !known != 0 {
        return Err(Refusal::new(
            RT_STATUS_INVALID_LIMITS,
            format!(
                "invalid flags: unknown bits 0x{:x} (known: RT_FLAG_FAIL_OPEN 0x1, RT_FLAG_DRY_RUN 0x2)",
                v.flags & !known
            ),
        ));
    }
    Ok(Limits {
        window_ms: v.window_ms,
        connections_per_window: v.connections_per_window,
        max_concurrent_connections: v.max_concurrent_connections,
        messages_per_window: v.messages_per_window,
        bytes_per_window: v.bytes_per_window,
        max_message_size: v.max_message_size,
        client_messages_per_window: v.client_messages_per_window,
        client_bytes_per_window: v.client_bytes_per_window,
        max_clients: v.max_clients,
        max_connections: v.max_connections,
        fail_open: v.flags & RT_FLAG_FAIL_OPEN != 0,
        dry_run: v.flags & RT_FLAG_DRY_RUN != 0,
    })
}

/// Reads and validates a caller's `rt_limits`.
///
/// # Safety
/// As for [`read_limits`].
pub(crate) unsafe fn valid_limits(l: *const rt_limits) -> Result<Limits, Refusal> {
    // SAFETY: forwarded from the caller.
    let limits = unsafe { read_limits(l)? };
    limits.validate().map_err(|e| Refusal::new(RT_STATUS_INVALID_LIMITS, e.to_string()))?;
    Ok(limits)
}

/// Writes `limits` to `*out` (NULL does nothing).
///
/// # Safety
/// `out` must be NULL or valid for writes of `sizeof(rt_limits)` bytes.
unsafe fn write_limits(out: *mut rt_limits, limits: fn() -> Limits) {
    boundary(
        || (),
        || {
            if !out.is_null() {
                // SAFETY: non-NULL and writable per the caller.
                unsafe { out.write_unaligned(rt_limits::from(&limits())) };
            }
        },
    )
}

/// Fills `*out` with the defaults (the seed's): 60000 ms windows,
/// 60 connections per window, 10 concurrent connections, 1000 messages per
/// window, bandwidth off, 65536-byte messages, client limits off, 65536
/// clients and connections, no flags; `struct_size = sizeof(rt_limits)`.
///
/// `out` must point to a whole `rt_limits` of this header; NULL does
/// nothing. Thread-safe.
///
/// # Safety
/// `out` must be NULL or valid for writes of `sizeof(rt_limits)` bytes.
#[no_mangle]
pub unsafe extern "C" fn rt_limits_default(out: *mut rt_limits) {
    // SAFETY: forwarded from the caller.
    unsafe { write_limits(out, Limits::default) }
}

/// Fills `*out` with the strict preset (public APIs): the defaults with
/// 5 connections per window, 2 concurrent, 50 messages and 102400 bytes per
/// window, 1024-byte messages. NULL does nothing. Thread-safe.
///
/// # Safety
/// `out` must be NULL or valid for writes of `sizeof(rt_limits)` bytes.
#[no_mangle]
pub unsafe extern "C" fn rt_limits_strict(out: *mut rt_limits) {
    // SAFETY: forwarded from the caller.
    unsafe { write_limits(out, Limits::strict) }
}

/// Fills `*out` with the moderate preset (chat): the defaults with
/// 10 connections per window, 5 concurrent, 100 messages and 1048576 bytes
/// per window, 10240-byte messages. NULL does nothing. Thread-safe.
///
/// # Safety
/// `out` must be NULL or valid for writes of `sizeof(rt_limits)` bytes.
#[no_mangle]
pub unsafe extern "C" fn rt_limits_moderate(out: *mut rt_limits) {
    // SAFETY: forwarded from the caller.
    unsafe { write_limits(out, Limits::moderate) }
}

/// Fills `*out` with the generous preset (internal tools): the defaults
/// with 50 connections per window, 20 concurrent, 1000 messages and
/// 10485760 bytes per window, 65536-byte messages. NULL does nothing.
/// Thread-safe.
///
/// # Safety
/// `out` must be NULL or valid for writes of `sizeof(rt_limits)` bytes.
#[no_mangle]
pub unsafe extern "C" fn rt_limits_generous(out: *mut rt_limits) {
    // SAFETY: forwarded from the caller.
    unsafe { write_limits(out, Limits::generous) }
}

/// Checks every field of `*l` (reading only `l->struct_size` bytes).
///
/// Returns `RT_STATUS_OK`; `RT_STATUS_INVALID_LIMITS` when a limit is out of
/// range or `flags` has unknown bits; `RT_STATUS_INVALID_ARGUMENT` when
/// `struct_size` is below 8, or larger than this library's `rt_limits` with
/// non-zero bytes beyond it, or `reserved` is not 0; `RT_STATUS_NULL_ARGUMENT`
/// when `l` is NULL. `rt_limits_error` gives the message. Thread-safe.
///
/// # Safety
/// `l` must be NULL or point to readable memory of `l->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn rt_limits_validate(l: *const rt_limits) -> rt_status {
    status_boundary(|| {
        // SAFETY: forwarded from the caller.
        unsafe { valid_limits(l) }.map(|_| ()).map_err(|r| r.status)
    })
}

/// Explains what is wrong with `*l`: writes a NUL-terminated message naming
/// the bad field and its allowed range (for example "invalid window_ms: 0 is
/// out of range 1..=4294967295"), or "" when `*l` is valid, and returns the
/// message's full length, excluding the NUL.
///
/// `snprintf` semantics: at most `cap - 1` bytes and a NUL are written, so a
/// return value >= `cap` means the message was truncated. `buf` may be NULL
/// (then `cap` is ignored and nothing is written: a size query). `l` may be
/// NULL (the message says so). Thread-safe.
///
/// # Safety
/// `l` must be NULL or point to readable memory of `l->struct_size` bytes;
/// `buf` must be NULL or valid for writes of `cap` bytes.
#[no_mangle]
pub unsafe extern "C" fn rt_limits_error(l: *const rt_limits, buf: *mut c_char, cap: usize) -> usize {
    boundary(
        || 0,
        || {
            // SAFETY: forwarded from the caller.
            let message = match unsafe { valid_limits(l) } {
                Ok(_) => String::new(),
                Err(r) => r.message,
            };
            // SAFETY: buf is NULL or valid for cap bytes per the caller.
            unsafe { write_c_text(message.as_bytes(), buf.cast(), cap) }
        },
    )
}
