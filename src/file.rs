//! A region in a shared file (for example under `/dev/shm`), so that several
//! processes on one host enforce one set of limits ([`Limiter::open_file`]).
//!
//! Create-or-attach runs under an exclusive `flock` on the file: the first
//! process finds it empty, sizes it and formats the region; every later one
//! finds a file that already holds a region and attaches (the engine
//! validates magic, layout version and sizes). The lock makes "exactly one
//! process formats, nobody attaches a half-formatted region" hold. The lock
//! is released before `open_file` returns: it guards only the opening, not
//! the use. A failed format truncates the file back to empty, so it leaves
//! no half-made region behind; a format whose process was killed does leave
//! one: its first 16 bytes, written before the file is sized, say "format
//! begun" (`region::format_begun`: no magic, our layout version, state
//! initialising). Since the lock proves nobody is still formatting it, the
//! next create starts it again from an empty file (an attach-only open
//! refuses it). A file of zeroes is not taken for one: it is refused and
//! left as it is.
//!
//! The file is never resized once it holds a region. Truncating it while it
//! is mapped makes the next access fault (SIGBUS): that is the caller's bug,
//! as for any shared mapping.
//!
//! [`Limiter::open_file`]: crate::Limiter::open_file

use crate::error::Error;
use crate::memory::Owned;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;

/// A region file's identity (device and inode), whatever path opened it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

/// How many limiters of this process map each region file.
static HANDLES: Mutex<Vec<(FileId, usize)>> = Mutex::new(Vec::new());

/// Counts one more limiter of this process on the file.
pub(crate) fn hold(id: FileId) {
    let mut h = HANDLES.lock().unwrap_or_else(|e| e.into_inner());
    match h.iter_mut().find(|(f, _)| *f == id) {
        Some((_, n)) => *n += 1,
        None => h.push((id, 1)),
    }
}

/// Counts one limiter of this process fewer on the file; true when it was
/// the last one.
pub(crate) fn release(id: FileId) -> bool {
    let mut h = HANDLES.lock().unwrap_or_else(|e| e.into_inner());
    let Some(i) = h.iter().position(|(f, _)| *f == id) else {
        return true;
    };
    h[i].1 -= 1;
    if h[i].1 > 0 {
        return false;
    }
    h.swap_remove(i);
    true
}

/// How [`Limiter::open_file`](crate::Limiter::open_file) found its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// The file was missing or empty: this call formatted a new region with
    /// the limits it was given.
    Created,
    /// The file already held a region: this call attached to it, and the
    /// region's own limits apply (change them with `update_limits`).
    Attached,
}

/// An open, locked descriptor: unlocked and closed on every way out. The
/// unlock must be explicit: a `flock` belongs to the open file description,
/// which a mapping keeps alive after `close`.
struct Locked(libc::c_int);

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: a descriptor this module opened; unlocking and closing it
        // once. Both calls can only fail on a bad descriptor.
        unsafe {
            libc::flock(self.0, libc::LOCK_UN);
            libc::close(self.0);
        }
    }
}

/// Whether the file holds a region whose format its process never finished
/// (its head is [`crate::region::format_begun`]). Read with `pread`, not a
/// mapping, so a file shorter than it claims cannot fault.
fn unfinished(fd: libc::c_int, size: libc::off_t) -> bool {
    let mut head = [0u8; crate::region::HEAD_LEN];
    if size < head.len() as libc::off_t {
        return false;
    }
    // SAFETY: a descriptor we own and a writable buffer of head.len() bytes.
    let n = unsafe { libc::pread(fd, head.as_mut_ptr().cast(), head.len(), 0) };
    n == head.len() as isize && head == crate::region::format_begun()
}

fn io_error(what: &'static str, path: &Path) -> Error {
    Error::Io {
        what,
        path: path.display().to_string(),
        errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
    }
}

/// Opens (creating when `create_size` is given) and locks the file at
/// `path`, sizes it when it is empty, maps it `MAP_SHARED`, and runs `setup`
/// on the mapping with the lock held: `setup(base, len, created)` formats a
/// new region (`created`) or attaches to the one there. Returns what `setup`
/// made, the mapping (unmapped when dropped), `created` and the file's
/// identity.
pub(crate) fn open<T>(
    path: &Path,
    create_size: Option<usize>,
    setup: impl FnOnce(*mut u8, usize, bool) -> Result<T, Error>,
) -> Result<(T, Owned, bool, FileId), Error> {
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidArgument("the path contains a NUL byte"))?;
    let flags = libc::O_RDWR | libc::O_CLOEXEC | if create_size.is_some() { libc::O_CREAT } else { 0 };
    // SAFETY: a NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(cpath.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 {
        return Err(io_error("cannot open", path));
    }
    let fd = Locked(fd);
    // SAFETY: a descriptor we own. Blocks while another process opens.
    if unsafe { libc::flock(fd.0, libc::LOCK_EX) } != 0 {
        return Err(io_error("cannot lock", path));
    }
    // SAFETY: `st` is a plain struct that fstat fills in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a descriptor we own and a writable stat.
    if unsafe { libc::fstat(fd.0, &mut st) } != 0 {
        return Err(io_error("cannot stat", path));
    }
    let mut created = st.st_size == 0;
    if !created && create_size.is_some() && unfinished(fd.0, st.st_size) {
        // A process died formatting it (the lock is ours, so nobody else is
        // formatting it now): start again from an empty file.
        // SAFETY: a descriptor we own, opened for writing.
        if unsafe { libc::ftruncate(fd.0, 0) } != 0 {
            return Err(io_error("cannot size", path));
        }
        created = true;
    }
    let id = FileId { dev: st.st_dev as u64, ino: st.st_ino as u64 };
    let len = if created {
        let Some(size) = create_size else {
            return Err(Error::IncompatibleRegion(format!("{} is empty: no region was created in it", path.display())));
        };
        let Ok(off) = libc::off_t::try_from(size) else {
            return Err(Error::InvalidArgument("region size too large for a file"));
        };
        // The head of a format begun, before the file is sized: a process
        // killed from here on leaves a file the next create formats again.
        let head = crate::region::format_begun();
        // SAFETY: a descriptor we own, opened for writing; a buffer of
        // head.len() bytes.
        if unsafe { libc::pwrite(fd.0, head.as_ptr().cast(), head.len(), 0) } != head.len() as isize {
            return Err(io_error("cannot write", path));
        }
        // SAFETY: a descriptor we own, opened for writing.
        if unsafe { libc::ftruncate(fd.0, off) } != 0 {
            // SAFETY: as above; best effort, leaving the file empty.
            unsafe { libc::ftruncate(fd.0, 0) };
            return Err(io_error("cannot size", path));
        }
        size
    } else {
        usize::try_from(st.st_size).map_err(|_| Error::InvalidArgument("the file is too large to map"))?
    };
    let truncate_back = |e: Error| {
        if created {
            // SAFETY: as above. Best effort: the error being returned says
            // why; a failed truncate leaves a file that attach refuses.
            unsafe { libc::ftruncate(fd.0, 0) };
        }
        e
    };
    // SAFETY: a shared mapping of `len` bytes of a file at least that long;
    // the result is checked.
    let base = unsafe {
        libc::mmap(core::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.0, 0)
    };
    if base == libc::MAP_FAILED {
        return Err(truncate_back(io_error("cannot map", path)));
    }
    let mem = Owned::mapped(base.cast(), len);
    match setup(mem.ptr(), len, created) {
        Ok(v) => Ok((v, mem, created, id)),
        Err(e) => {
            drop(mem);
            Err(truncate_back(e))
        }
    }
}
