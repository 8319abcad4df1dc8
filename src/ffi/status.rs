//! The version and the names of statuses, reasons and violation types.
//!
//! Every string returned here is static, NUL-terminated, owned by the
//! library and never NULL: the caller must not free or modify it.

use super::RT_STATUS_IO_ERROR;
use super::{boundary, rt_reason, rt_status};
use super::{
    RT_STATUS_INCOMPATIBLE_REGION, RT_STATUS_INVALID_ARGUMENT, RT_STATUS_INVALID_LIMITS, RT_STATUS_NULL_ARGUMENT,
    RT_STATUS_OK, RT_STATUS_OUT_OF_MEMORY, RT_STATUS_PANIC, RT_STATUS_REGION_TOO_SMALL, RT_STATUS_TABLE_FULL,
    RT_STATUS_UNKNOWN_CONNECTION,
};
use crate::Reason;
use core::ffi::{c_char, CStr};
use std::ffi::CString;
use std::sync::OnceLock;

const VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
    Ok(s) => s,
    Err(_) => panic!("the crate version contains a NUL byte"),
};

const UNKNOWN: &CStr = c"unknown";

/// The library version, e.g. "0.1.0".
///
/// Returns a static NUL-terminated string owned by the library (never NULL;
/// do not free it). Thread-safe.
#[no_mangle]
pub extern "C" fn rt_version() -> *const c_char {
    boundary(|| UNKNOWN.as_ptr(), || VERSION.as_ptr())
}

/// A plain phrase for a status, e.g. "ok", "null argument", "region too small".
///
/// Any value is accepted: one this library does not know gives "unknown".
/// Returns a static NUL-terminated string owned by the library (never NULL;
/// do not free it). Thread-safe.
#[no_mangle]
pub extern "C" fn rt_status_str(s: rt_status) -> *const c_char {
    boundary(
        || UNKNOWN.as_ptr(),
        || {
            let text: &CStr = match s {
                RT_STATUS_OK => c"ok",
                RT_STATUS_NULL_ARGUMENT => c"null argument",
                RT_STATUS_INVALID_ARGUMENT => c"invalid argument",
                RT_STATUS_INVALID_LIMITS => c"invalid limits",
                RT_STATUS_OUT_OF_MEMORY => c"out of memory",
                RT_STATUS_REGION_TOO_SMALL => c"region too small",
                RT_STATUS_INCOMPATIBLE_REGION => c"incompatible region",
                RT_STATUS_UNKNOWN_CONNECTION => c"unknown connection",
                RT_STATUS_TABLE_FULL => c"table full",
                RT_STATUS_PANIC => c"internal error (panic)",
                RT_STATUS_IO_ERROR => c"i/o error",
                _ => UNKNOWN,
            };
            text.as_ptr()
        },
    )
}

/// The engine's strings as C strings, made once.
struct Names {
    reasons: Vec<CString>,
    violation_types: Vec<CString>,
}

fn names() -> &'static Names {
    static NAMES: OnceLock<Names> = OnceLock::new();
    NAMES.get_or_init(|| {
        let c = |s: &str| CString::new(s).unwrap_or_default();
        Names {
            reasons: Reason::ALL.iter().map(|r| c(r.as_str())).collect(),
            violation_types: Reason::ALL.iter().map(|r| c(r.violation_type())).collect(),
        }
    })
}

fn name(table: &[CString], r: rt_reason) -> *const c_char {
    Reason::from_u32(r).and_then(|r| table.get(r as usize)).map_or(UNKNOWN.as_ptr(), |s| s.as_ptr())
}

/// The string a decision's reason reports: "ok", "connection_rate_exceeded",
/// "too_many_connections", "message_too_large", "rate_limit_exceeded"
/// (message rate), "bandwidth_exceeded", "client_rate_limit_exceeded",
/// "client_bandwidth_exceeded", "table_full", "connection_not_found",
/// "invalid_argument".
///
/// Any value is accepted: one out of range gives "unknown". Returns a static
/// NUL-terminated string owned by the library (never NULL; do not free it).
/// Thread-safe.
#[no_mangle]
pub extern "C" fn rt_reason_str(r: rt_reason) -> *const c_char {
    boundary(|| UNKNOWN.as_ptr(), || name(&names().reasons, r))
}

/// The violation `type` name of a reason: "none" (RT_OK), "connection_rate",
/// "concurrent_connections", "message_size", "message_rate", "bandwidth",
/// "client_message_rate", "client_bandwidth", "table_full",
/// "unknown_connection", "invalid_argument".
///
/// Any value is accepted: one out of range gives "unknown". Returns a static
/// NUL-terminated string owned by the library (never NULL; do not free it).
/// Thread-safe.
#[no_mangle]
pub extern "C" fn rt_violation_type_str(r: rt_reason) -> *const c_char {
    boundary(|| UNKNOWN.as_ptr(), || name(&names().violation_types, r))
}
