//! Time: a cheap monotonic millisecond clock, and the owning-process token.
//!
//! The clock is `CLOCK_MONOTONIC_COARSE` (read through the vDSO, no system
//! call; resolution one kernel tick, typically 1 to 4 ms, see
//! [`resolution_ms`]). It is system-wide, so processes sharing a region agree
//! on it, and it never follows wall-clock steps. It does not advance while
//! the machine is suspended. Every check also has an `_at(now_ms)` form that
//! takes the caller's clock instead.

/// Milliseconds of the system's coarse monotonic clock.
#[inline]
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1000).wrapping_add(ts.tv_nsec as u64 / 1_000_000)
}

/// What the checks that read [`now_ms`] add to a finite, non-zero
/// `retry_after_ms`: two clock ticks ([`resolution_ms`] twice).
///
/// The coarse clock is the time of the kernel's last tick, so it runs behind
/// real time by up to a tick, and more when a tick comes late (up to 5.5 ms
/// with 4 ms ticks measured on a busy 2-core VM). The engine's wait is exact
/// on its own clock; a client that waits that long on a precise clock could
/// retry while the coarse clock has not yet reached the moment the wait was
/// computed for, and be refused again. Two ticks cover a lag of up to one
/// tick more at the retry than at the denial. The `_at` forms take the
/// caller's clock and add nothing.
pub fn wait_margin_ms() -> u64 {
    use core::sync::atomic::{AtomicU64, Ordering};
    static MARGIN: AtomicU64 = AtomicU64::new(0);
    match MARGIN.load(Ordering::Relaxed) {
        0 => {
            let m = 2 * resolution_ms();
            MARGIN.store(m, Ordering::Relaxed);
            m
        }
        m => m,
    }
}

/// Resolution of [`now_ms`] in ms (rounded up).
pub fn resolution_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: as above.
    unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64 * 1000 + (ts.tv_nsec as u64).div_ceil(1_000_000)).max(1)
}

/// Identifies a process for connection ownership, in one 64-bit word:
///
/// - bits 54..64: a tag of its PID namespace (1 to 1023; 0 when
///   `/proc/self/ns/pid` cannot be read), so that a process in another
///   namespace (a container sharing `/dev/shm` but not its pids) is never
///   judged by a pid that means another process here;
/// - bits 32..54: the pid (Linux pids are below 2^22, `PID_MAX_LIMIT`);
/// - bits 0..32: the low 32 bits of its start time (clock ticks since
///   boot), so that a reused pid is not mistaken for the process that died.
#[cfg(not(loom))]
pub(crate) mod process {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Once;

    static TOKEN: AtomicU64 = AtomicU64::new(0);
    static AT_FORK: Once = Once::new();

    const PID_BITS: u32 = 22;
    const PID_MASK: u64 = (1 << PID_BITS) - 1;
    const TAG_SHIFT: u32 = 32 + PID_BITS;

    /// The pid a token names.
    #[inline]
    pub(crate) fn pid_of(token: u64) -> u32 {
        ((token >> 32) & PID_MASK) as u32
    }

    /// The PID namespace tag of a token (0: unknown).
    fn tag_of(token: u64) -> u64 {
        token >> TAG_SHIFT
    }

    /// This process's PID namespace as a tag from 1 to 1023 (a hash of the
    /// namespace's inode), or 0 when it cannot be read.
    fn namespace_tag() -> u64 {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata("/proc/self/ns/pid") {
            Ok(m) => 1 + ((m.ino() ^ m.dev().rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 1023,
            Err(_) => 0,
        }
    }

    /// A token from its parts (`pid` is cut to 22 bits; Linux's are smaller).
    pub(crate) fn make(tag: u64, pid: u32, start: u32) -> u64 {
        (tag << TAG_SHIFT) | ((pid as u64 & PID_MASK) << 32) | start as u64
    }

    extern "C" fn forget_token() {
        TOKEN.store(0, Ordering::Relaxed);
    }

    /// This process's token, computed once (and again after fork).
    #[inline]
    pub(crate) fn token() -> u64 {
        let t = TOKEN.load(Ordering::Relaxed);
        if t != 0 {
            return t;
        }
        slow_token()
    }

    #[cold]
    fn slow_token() -> u64 {
        AT_FORK.call_once(|| {
            // SAFETY: registering a handler that only stores to an atomic.
            unsafe { libc::pthread_atfork(None, None, Some(forget_token)) };
        });
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() } as u32;
        let t = make(namespace_tag(), pid, start_time(pid).unwrap_or(0));
        TOKEN.store(t, Ordering::Relaxed);
        t
    }

    /// Low 32 bits of a process's start time, from /proc/<pid>/stat field 22;
    /// `Some(None)` for a zombie (it has exited), `None` when there is no entry.
    fn stat(pid: u32) -> Option<Option<u32>> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may contain spaces; fields resume after ')'.
        let rest = s.get(s.rfind(')')? + 2..)?;
        let mut fields = rest.split(' ');
        if fields.next()? == "Z" {
            return Some(None);
        }
        let v: u64 = fields.nth(18)?.parse().ok()?;
        Some(Some(v as u32))
    }

    fn start_time(pid: u32) -> Option<u32> {
        stat(pid).flatten()
    }

    /// Whether the process a token names is still running (a zombie is not).
    /// A process of another PID namespace cannot be looked up from here (its
    /// pid names another process, or none, in ours): it counts as running,
    /// so that nothing it holds is taken from it. Its own namespace's
    /// processes reap it when it dies.
    pub(crate) fn is_alive(token: u64) -> bool {
        let pid = pid_of(token);
        if pid == 0 {
            return true;
        }
        let theirs = tag_of(token);
        if theirs != 0 && theirs != tag_of(self::token()) {
            return true;
        }
        match stat(pid) {
            Some(Some(st)) => (token as u32) == 0 || st == token as u32,
            Some(None) => false,
            None if std::path::Path::new("/proc/self/stat").exists() => false,
            None => {
                // No /proc at all: ask the kernel (EPERM still means it exists).
                // SAFETY: kill with signal 0 only checks for existence.
                let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
                r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
            }
        }
    }
}

#[cfg(loom)]
pub(crate) mod process {
    pub(crate) fn token() -> u64 {
        1 << 32
    }
    pub(crate) fn is_alive(_token: u64) -> bool {
        true
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::process::{is_alive, make, pid_of, token};

    #[test]
    fn a_token_names_one_process_and_its_start_time() {
        // M3: a reused pid must not pass for the process that died.
        let me = token();
        assert_eq!(pid_of(me), std::process::id());
        assert!(is_alive(me));
        assert!(!is_alive(me ^ 1), "same pid, another start time: not the same process");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as u64;
        child.wait().unwrap();
        assert!(!is_alive(make(me >> 54, pid as u32, 1)), "a process that exited");
        assert!(is_alive(0), "no owner recorded");
    }

    #[test]
    fn a_process_of_another_pid_namespace_is_never_judged_dead() {
        let me = token();
        let tag = me >> 54;
        assert!((1..=1023).contains(&tag), "/proc/self/ns/pid gives this process a tag");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!is_alive(make(tag, pid, 1)), "our namespace: an exited process is dead");
        let other = if tag == 1 { 2 } else { 1 };
        assert!(is_alive(make(other, pid, 1)), "another namespace: its pid means nothing here");
        assert!(is_alive(make(other, 1, 1)), "not even our pid 1 (another start time)");
        assert!(!is_alive(make(0, pid, 1)), "an unknown namespace is judged as ours");
    }
}
