//! A region in a shared file (for example under `/dev/shm`), so that several
//! processes (Node cluster workers) enforce one set of limits.
//!
//! Create-or-attach under an exclusive `flock` on the file: the first process
//! finds it empty, sizes it and formats the region (`Limiter::init_in`);
//! every later one finds a file of the right size and attaches (the engine
//! validates magic, layout version and sizes). The lock makes "exactly one
//! formats, nobody attaches a half-formatted region" hold (M5). The file is
//! never resized once it holds a region, and the mapping's size is checked
//! against the file's at attach (M6); truncating it behind the limiter's
//! back is the caller's bug (SIGBUS), as the engine's README says.

use ratethrottle::{Limiter, Limits};
use std::ffi::CString;

/// One `MAP_SHARED` mapping, unmapped on drop (after the limiter over it).
pub(crate) struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping `open` made, once, after
        // the limiter that used it was dropped (see `State`'s field order).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Unlocks and closes a file descriptor on every path out of `open`. The
/// unlock must be explicit: a `flock` belongs to the open file description,
/// which the mapping keeps alive after `close`.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: a descriptor this module opened (unlocking an unlocked one is harmless).
        unsafe {
            libc::flock(self.0, libc::LOCK_UN);
            libc::close(self.0);
        }
    }
}

fn os_error(what: &str, path: &str) -> String {
    format!("ratethrottle: {what} {path}: {}", std::io::Error::last_os_error())
}

/// Creates or attaches the region in the file at `path`. Returns the
/// limiter, its mapping and whether it attached to an existing region (then
/// the region's limits apply, not `limits`; capacities must match).
pub(crate) fn open(path: &[u8], limits: &Limits) -> Result<(Limiter, Mapping, bool), String> {
    let shown = String::from_utf8_lossy(path).into_owned();
    let cpath = CString::new(path).map_err(|_| "ratethrottle: sharedPath contains a NUL byte".to_string())?;
    let len = Limiter::region_size(limits).map_err(|e| format!("ratethrottle: {e}"))?;
    // SAFETY: a NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(cpath.as_ptr(), libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        return Err(os_error("cannot open", &shown));
    }
    let fd = Fd(fd);
    // SAFETY: a valid descriptor. Blocks while another process formats the
    // region (milliseconds); a holder that dies releases the lock.
    if unsafe { libc::flock(fd.0, libc::LOCK_EX) } != 0 {
        return Err(os_error("cannot lock", &shown));
    }
    // SAFETY: a valid descriptor and a zeroed stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd.0, &mut st) } != 0 {
        return Err(os_error("cannot stat", &shown));
    }
    let size = st.st_size as usize;
    let fresh = size == 0;
    if fresh {
        // SAFETY: a valid descriptor we hold the lock on.
        if unsafe { libc::ftruncate(fd.0, len as libc::off_t) } != 0 {
            return Err(os_error("cannot size", &shown));
        }
    } else if size != len {
        return Err(format!(
            "ratethrottle: {shown} holds a region of {size} bytes but these options need {len}: \
             every process must pass the same maxClients and maxConnections (or remove the file)"
        ));
    }
    // SAFETY: mapping `len` bytes of a file that has exactly `len` bytes.
    let p =
        unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.0, 0) };
    if p == libc::MAP_FAILED {
        return Err(os_error("cannot map", &shown));
    }
    let map = Mapping { ptr: p.cast(), len };
    let lim = if fresh {
        // SAFETY: a fresh, page-aligned (so 64-byte aligned) mapping of `len`
        // bytes that outlives the limiter (State drops the limiter first);
        // nobody else uses it: we hold the lock and nobody attached yet.
        unsafe { Limiter::init_in(map.ptr, len, limits) }
    } else {
        // SAFETY: page-aligned mapping of `len` bytes that outlives the limiter.
        unsafe { Limiter::attach(map.ptr, len) }
    }
    .map_err(|e| {
        format!("ratethrottle: cannot use the region in {shown}: {e} (a process may have died while formatting it: remove the file)")
    })?;
    // A worker that starts frees the connections of workers that died.
    lim.reap_dead();
    Ok((lim, map, !fresh))
}
