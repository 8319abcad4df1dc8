//! `rt_limiter`: the opaque handle, its creation over heap, caller or shared
//! memory, its release, and run-time changes of its limits.
//!
//! A handle is a boxed [`Limiter`] behind a magic word. The magic is checked
//! on every call and overwritten just before the box is freed, so a use after
//! `rt_limiter_free` or a pointer that never was a limiter is refused (as far
//! as reading freed memory allows: ASan and valgrind report such reads).

use super::limits::{read_limits, rt_limits};
use super::{boundary, rt_status, status_boundary, status_of};
use super::{RT_STATUS_INVALID_ARGUMENT, RT_STATUS_NULL_ARGUMENT};
use crate::{Error, Limiter, Opened};
use core::ffi::{c_char, c_void, CStr};
use std::os::unix::ffi::OsStrExt;

/// "rtlimitr": a live handle.
const LIVE: u64 = u64::from_le_bytes(*b"rtlimitr");
/// "rtfreed!": written just before the handle is freed.
const FREED: u64 = u64::from_le_bytes(*b"rtfreed!");

/// A rate limiter (opaque). Create it with `rt_limiter_new`,
/// `rt_limiter_init_in`, `rt_limiter_attach` or `rt_limiter_open_file`;
/// release it with `rt_limiter_free`, exactly once.
///
/// Thread-safety: every function taking an `rt_limiter` may be called from
/// any number of threads at once without locking, except `rt_limiter_free`,
/// which must not race any other call on the same limiter.
pub struct rt_limiter {
    magic: u64,
    inner: Limiter,
}

/// Why a handle was refused: NULL, or not a live limiter.
pub(crate) fn handle_status(lim: *const rt_limiter) -> rt_status {
    if lim.is_null() {
        RT_STATUS_NULL_ARGUMENT
    } else {
        RT_STATUS_INVALID_ARGUMENT
    }
}

/// The limiter behind a handle, or `None` when it is NULL or its magic is
/// not a live limiter's.
///
/// # Safety
/// `lim` must be NULL or a pointer returned by this library that has not
/// been freed (a freed one is caught only while its memory is not reused).
pub(crate) unsafe fn limiter<'a>(lim: *const rt_limiter) -> Option<&'a Limiter> {
    if lim.is_null() {
        return None;
    }
    // SAFETY: non-NULL and, per the caller, a (possibly poisoned) rt_limiter;
    // volatile so that the check is never elided.
    let magic = unsafe { core::ptr::addr_of!((*lim).magic).read_volatile() };
    // SAFETY: the magic says it is live; it stays live until rt_limiter_free,
    // which the caller must not race with this call.
    (magic == LIVE).then(|| unsafe { &(*lim).inner })
}

/// Boxes a limiter into a handle and writes it to `*out`.
///
/// # Safety
/// `out` must be valid for a write of a pointer.
unsafe fn hand_out(inner: Limiter, out: *mut *mut rt_limiter) {
    let handle = Box::into_raw(Box::new(rt_limiter { magic: LIVE, inner }));
    // SAFETY: per the caller.
    unsafe { out.write(handle) };
}

/// Creates a limiter whose state lives on the heap, owned by the limiter.
///
/// Reads only `l->struct_size` bytes of `*l` (see `rt_limits`). On
/// `RT_STATUS_OK`, `*out` is a new limiter that the caller owns and must
/// release with `rt_limiter_free`; on any other status `*out` is not written.
/// Returns `RT_STATUS_NULL_ARGUMENT` (l or out NULL),
/// `RT_STATUS_INVALID_ARGUMENT` (struct_size, reserved; or a CPU without
/// lock-free 128-bit atomics), `RT_STATUS_INVALID_LIMITS`,
/// `RT_STATUS_OUT_OF_MEMORY`. Thread-safe.
///
/// # Safety
/// `l` must be NULL or point to readable memory of `l->struct_size` bytes;
/// `out` must be NULL or valid for a write of a pointer.
#[no_mangle]
pub unsafe extern "C" fn rt_limiter_new(l: *const rt_limits, out: *mut *mut rt_limiter) -> rt_status {
    status_boundary(|| {
        if l.is_null() || out.is_null() {
            return Err(RT_STATUS_NULL_ARGUMENT);
        }
        // SAFETY: forwarded from the caller.
        let limits = unsafe { read_limits(l) }.map_err(|r| r.status)?;
        let inner = Limiter::new(&limits).map_err(|e| status_of(&e))?;
        // SAFETY: out is non-NULL and writable per the caller.
        unsafe { hand_out(inner, out) };
        Ok(())
    })
}

/// Releases a limiter made by `rt_limiter_new`, `rt_limiter_init_in`,
/// `rt_limiter_attach` or `rt_limiter_open_file`: frees the handle, its
/// violation callback, and its heap state (`rt_limiter_new`) or its
/// mapping of the file (`rt_limiter_open_file`; the file stays; when it was
/// this process's last limiter on the file, the connections the process
/// still has open in it are closed first, as nothing could close them
/// afterwards). Memory
/// given to `rt_limiter_init_in` / `rt_limiter_attach` is not freed: the
/// caller owns it, and other handles attached to it keep working.
///
/// NULL is a no-op, and so is a pointer that is not a live limiter. Calling it
/// twice on the same pointer is a use after free (caught by ASan / valgrind,
/// and usually refused by the poisoned magic). Not thread-safe with respect
/// to other calls on the same limiter: no call may run on it during or after
/// this one.
///
/// # Safety
/// `lim` must be NULL or a live limiter from this library, not used by any
/// other thread during or after the call.
#[no_mangle]
pub unsafe extern "C" fn rt_limiter_free(lim: *mut rt_limiter) {
    boundary(
        || (),
        || {
            // SAFETY: per the caller.
            if unsafe { limiter(lim) }.is_none() {
                return;
            }
            // SAFETY: a live handle made by Box::into_raw in hand_out, owned
            // by the caller, freed exactly once here; the poison is volatile
            // so that it is written although the memory is freed next.
            unsafe {
                core::ptr::addr_of_mut!((*lim).magic).write_volatile(FREED);
                drop(Box::from_raw(lim));
            }
        },
    )
}

/// Bytes a region for these limits needs: the size to give
/// `rt_limiter_init_in` (for example a `MAP_SHARED` mapping). It depends only
/// on `max_clients` and `max_connections`.
///
/// Returns 0 when `l` is NULL or invalid (see `rt_limits_validate`). Thread-safe.
///
/// # Safety
/// `l` must be NULL or point to readable memory of `l->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn rt_region_size(l: *const rt_limits) -> usize {
    boundary(
        || 0,
        || {
            // SAFETY: forwarded from the caller.
            match unsafe { read_limits(l) } {
                Ok(limits) => Limiter::region_size(&limits).unwrap_or(0),
                Err(_) => 0,
            }
        },
    )
}

/// Formats a new region in caller memory `mem[0..len)` for the limits `*l`
/// and returns a limiter over it in `*out` (written only on `RT_STATUS_OK`).
///
/// `mem` must be aligned to 64 bytes and at least `rt_region_size(l)` bytes
/// long. It may be a `MAP_SHARED` mapping: other processes (or handles) then
/// use the same limiter through `rt_limiter_attach`. Any previous content is
/// overwritten. The caller keeps ownership of `mem`: it must outlive every
/// limiter over it, and `rt_limiter_free` does not free it.
///
/// Returns `RT_STATUS_NULL_ARGUMENT` (mem, l or out NULL),
/// `RT_STATUS_INVALID_ARGUMENT` (mem not 64-byte aligned, struct_size,
/// reserved, or no lock-free 128-bit atomics), `RT_STATUS_INVALID_LIMITS`,
/// `RT_STATUS_REGION_TOO_SMALL`. Nobody may use `mem` while this runs;
/// otherwise thread-safe.
///
/// # Safety
/// `mem` must be NULL or valid for reads and writes of `len` bytes for as
/// long as any limiter over it lives; `l` must be NULL or point to readable
/// memory of `l->struct_size` bytes; `out` must be NULL or valid for a write
/// of a pointer.
#[no_mangle]
pub unsafe extern "C" fn rt_limiter_init_in(
    mem: *mut c_void,
    len: usize,
    l: *const rt_limits,
    out: *mut *mut rt_limiter,
) -> rt_status {
    status_boundary(|| {
        if mem.is_null() || l.is_null() || out.is_null() {
            return Err(RT_STATUS_NULL_ARGUMENT);
        }
        // SAFETY: forwarded from the caller.
        let limits = unsafe { read_limits(l) }.map_err(|r| r.status)?;
        // SAFETY: mem is valid for len bytes and outlives the limiter
        // per the caller; the engine checks alignment and size.
        let inner = unsafe { Limiter::init_in(mem.cast(), len, &limits) }.map_err(|e| status_of(&e))?;
        // SAFETY: out is non-NULL and writable per the caller.
        unsafe { hand_out(inner, out) };
        Ok(())
    })
}

/// Creates or attaches a region in the file at `path` (a NUL-terminated
/// path; use tmpfs, for example `/dev/shm/myapp-limits`), mapped
/// `MAP_SHARED`, so that every process on the host that opens the same path
/// enforces one set of limits. Returns a new handle in `*out` (written only
/// on `RT_STATUS_OK`); `rt_limiter_free` unmaps the file (the file stays).
///
/// With `l` non-NULL a missing or empty file is created (mode 0600) and
/// formatted for `*l`; a file that already holds a region is attached, and
/// the region's own limits apply (`*l` is then only validated; change a
/// live region's limits with `rt_limiter_update_limits`). With `l` NULL the
/// file must already hold a region. `*attached` (when `attached` is not
/// NULL) says which happened. An exclusive `flock` on the file serialises
/// create against attach, so exactly one process formats; an attach also
/// frees the connections of processes that died holding them
/// (`rt_reap_dead`). A failed format leaves the file empty; a format whose
/// process was killed leaves a region begun (its first 16 bytes are written
/// before the file is sized: no magic, state initialising), which the next
/// create (l non-NULL) formats again and an attach-only open refuses; a file
/// of zeroes, or any other non-region file, is refused and left untouched.
///
/// Returns `RT_STATUS_NULL_ARGUMENT` (path or out NULL),
/// `RT_STATUS_INVALID_ARGUMENT` (struct_size, reserved),
/// `RT_STATUS_INVALID_LIMITS`, `RT_STATUS_INCOMPATIBLE_REGION` (the file is
/// empty with l NULL, or holds something that is not a region of this
/// layout version: it is left untouched), `RT_STATUS_REGION_TOO_SMALL`,
/// `RT_STATUS_IO_ERROR` (open, flock, fstat, ftruncate or mmap failed:
/// `errno` is that call's error on return). Do not truncate the file while
/// it is mapped (SIGBUS). Thread-safe.
///
/// # Safety
/// `path` must be NULL or a NUL-terminated string; `l` must be NULL or point
/// to readable memory of `l->struct_size` bytes; `out` must be NULL or valid
/// for a write of a pointer; `attached` must be NULL or valid for a write of
/// a bool.
#[no_mangle]
pub unsafe extern "C" fn rt_limiter_open_file(
    path: *const c_char,
    l: *const rt_limits,
    out: *mut *mut rt_limiter,
    attached: *mut bool,
) -> rt_status {
    status_boundary(|| {
        if path.is_null() || out.is_null() {
            return Err(RT_STATUS_NULL_ARGUMENT);
        }
        let limits = if l.is_null() {
            None
        } else {
            // SAFETY: forwarded from the caller.
            Some(unsafe { read_limits(l) }.map_err(|r| r.status)?)
        };
        // SAFETY: a NUL-terminated string per the caller.
        let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(bytes));
        let (inner, how) = Limiter::open_file(path, limits.as_ref()).map_err(|e| {
            if let Error::Io { errno, .. } = e {
                // SAFETY: errno is this thread's; the C caller reads it.
                unsafe { *libc::__errno_location() = errno };
            }
            status_of(&e)
        })?;
        if !attached.is_null() {
            // SAFETY: non-NULL and writable per the caller.
            unsafe { attached.write(how == Opened::Attached) };
        }
        // SAFETY: out is non-NULL and writable per the caller.
        unsafe { hand_out(inner, out) };
        Ok(())
    })
}

/// Attaches to a region that `rt_limiter_init_in` formatted in `mem[0..len)`
/// (in this process or another one mapping the same shared memory) and
/// returns a new handle over it in `*out` (written only on `RT_STATUS_OK`).
/// All handles over one region share its limits, counters and violation ring;
/// each handle has its own violation callback.
///
/// Validates the region's magic, layout version, layout hash and sizes:
/// garbage, zeroes or a region of another version give
/// `RT_STATUS_INCOMPATIBLE_REGION`; `len` smaller than the region gives
/// `RT_STATUS_REGION_TOO_SMALL`; mem not 64-byte aligned gives
/// `RT_STATUS_INVALID_ARGUMENT`; NULL mem or out gives
/// `RT_STATUS_NULL_ARGUMENT`. The caller keeps ownership of `mem`, which must
/// outlive the limiter; `rt_limiter_free` does not free it. Thread-safe.
///
/// # Safety
/// `mem` must be NULL or valid for reads and writes of `len` bytes for as
/// long as the limiter lives; `out` must be NULL or valid for a write of a
/// pointer.
#[no_mangle]
pub unsafe extern "C" fn rt_limiter_attach(mem: *mut c_void, len: usize, out: *mut *mut rt_limiter) -> rt_status {
    status_boundary(|| {
        if mem.is_null() || out.is_null() {
            return Err(RT_STATUS_NULL_ARGUMENT);
        }
        // SAFETY: mem is valid for len bytes and outlives the limiter
        // per the caller; the engine validates what it holds.
        let inner = unsafe { Limiter::attach(mem.cast(), len) }.map_err(|e| status_of(&e))?;
        // SAFETY: out is non-NULL and writable per the caller.
        unsafe { hand_out(inner, out) };
        Ok(())
    })
}

/// Changes rates, sizes, window and flags at run time. Every thread and
/// every handle attached to the same region (in any process) uses the new
/// limits from its next check. A new `window_ms` starts every window afresh.
///
/// `max_clients` and `max_connections` cannot change: they must equal the
/// current ones, else `RT_STATUS_INVALID_ARGUMENT`. Also returns
/// `RT_STATUS_NULL_ARGUMENT` (lim or l NULL), `RT_STATUS_INVALID_ARGUMENT`
/// (not a live limiter, struct_size, reserved), `RT_STATUS_INVALID_LIMITS`.
/// On error nothing changes. Reads only `l->struct_size` bytes; fields a
/// smaller struct lacks take the defaults of `rt_limits_default`, not the
/// current values. Thread-safe.
///
/// # Safety
/// `lim` must be NULL or a live limiter; `l` must be NULL or point to
/// readable memory of `l->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn rt_limiter_update_limits(lim: *mut rt_limiter, l: *const rt_limits) -> rt_status {
    status_boundary(|| {
        // SAFETY: per the caller.
        let inner = unsafe { limiter(lim) }.ok_or_else(|| handle_status(lim))?;
        if l.is_null() {
            return Err(RT_STATUS_NULL_ARGUMENT);
        }
        // SAFETY: forwarded from the caller.
        let limits = unsafe { read_limits(l) }.map_err(|r| r.status)?;
        inner.update_limits(&limits).map_err(|e| status_of(&e))
    })
}

/// `rt_limiter_update_limits` with the caller's clock, for hosts that pass
/// their own `now_ms` to the `_at` checks: a changed `window_ms` places the
/// new windows at `now_ms` of that clock. Same statuses and rules.
///
/// # Safety
/// As for `rt_limiter_update_limits`.
#[no_mangle]
pub unsafe extern "C" fn rt_limiter_update_limits_at(
    lim: *mut rt_limiter,
    l: *const rt_limits,
    now_ms: u64,
) -> rt_status {
    status_boundary(|| {
        // SAFETY: per the caller.
        let inner = unsafe { limiter(lim) }.ok_or_else(|| handle_status(lim))?;
        if l.is_null() {
            return Err(RT_STATUS_NULL_ARGUMENT);
        }
        // SAFETY: forwarded from the caller.
        let limits = unsafe { read_limits(l) }.map_err(|r| r.status)?;
        inner.update_limits_at(&limits, now_ms).map_err(|e| status_of(&e))
    })
}

/// Frees the connections whose owning process no longer exists (a crashed
/// worker sharing the region) and returns how many. Also finishes the
/// connects and disconnects such a process was killed in the middle of, so
/// that their clients' live counts are given back (a count may then read one
/// low until that client's connections close, never high). Hosts call it
/// when a worker starts. O(max_connections). Returns 0 when `lim` is NULL
/// or not a live limiter. Thread-safe.
///
/// # Safety
/// `lim` must be NULL or a live limiter.
#[no_mangle]
pub unsafe extern "C" fn rt_reap_dead(lim: *mut rt_limiter) -> usize {
    boundary(
        || 0,
        || {
            // SAFETY: per the caller.
            unsafe { limiter(lim) }.map_or(0, |l| l.reap_dead())
        },
    )
}
