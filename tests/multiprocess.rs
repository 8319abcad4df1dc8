//! One region in a shared file, used by several processes at once (M12),
//! mapped twice at different addresses (M7), refusing other layouts (M4),
//! reaping the connections of a process that died (M2), and the engine's
//! clock read by two processes in turn (T10). Children are
//! this test binary run again with `RT_CHILD` set, so no process forks a
//! multi-threaded test harness.
#![cfg(not(loom))]

mod common;

use common::results;
use ratethrottle::{Error, Limiter, Limits, Reason};

struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn open(path: &str, len: usize, create: bool) -> Mapping {
        let c = std::ffi::CString::new(path).unwrap();
        let flags = libc::O_RDWR | if create { libc::O_CREAT | libc::O_TRUNC } else { 0 };
        // SAFETY: plain POSIX calls on a path we own; results are checked.
        unsafe {
            let fd = libc::open(c.as_ptr(), flags, 0o600);
            assert!(fd >= 0, "open {path}: {}", std::io::Error::last_os_error());
            if create {
                assert_eq!(libc::ftruncate(fd, len as libc::off_t), 0);
            }
            let p = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0);
            assert_ne!(p, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
            libc::close(fd);
            Mapping { ptr: p.cast(), len }
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `open` mapped, after every user is gone.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Bytes after the region holding the children's start barrier.
const BARRIER: usize = 4096;
const CHILDREN: u32 = 4;

/// A file under /dev/shm named for this process, removed when dropped, so a
/// failing test leaves nothing behind.
struct ShmFile(String);

impl ShmFile {
    fn new(tag: &str) -> ShmFile {
        ShmFile(format!("/dev/shm/ratethrottle-test-{}-{tag}", std::process::id()))
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn limits() -> Limits {
    Limits {
        max_concurrent_connections: 7,
        connections_per_window: 0,
        client_messages_per_window: 1000,
        max_clients: 1024,
        max_connections: 1024,
        ..Limits::default()
    }
}

/// What a child does, selected by RT_CHILD=<task>:<path>.
fn child(task: &str, path: &str) {
    let len = Limiter::region_size(&limits()).unwrap();
    let extra = if task == "clock" { CLOCK_AREA } else { BARRIER };
    let m = Mapping::open(path, len + extra, false);
    // SAFETY: the mapping lives until the end of this function, after `lim`.
    let lim = unsafe { Limiter::attach(m.ptr, len) }.unwrap();
    match task {
        "race" => {
            // Wait until every child is here, so they really race.
            // SAFETY: the barrier word lies in the mapping, past the region.
            let arrived = unsafe { &*(m.ptr.add(len) as *const std::sync::atomic::AtomicU32) };
            arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let t0 = std::time::Instant::now();
            while arrived.load(std::sync::atomic::Ordering::SeqCst) < CHILDREN && t0.elapsed().as_secs() < 20 {
                std::hint::spin_loop();
            }
            // Race the other children: connect one client (kept open) and spend one key.
            let mut conns = 0;
            let mut keys = 0;
            for _ in 0..2000 {
                if lim.connect_at(b"shared-client", 1000).1.is_some() {
                    conns += 1;
                }
                if lim.check_key_at(b"room", 1, 1000).allowed {
                    keys += 1;
                }
            }
            println!("RESULT {conns} {keys}");
        }
        "clock" => {
            // Read the clock on odd turns, the parent on even ones (T10).
            let turns = ClockTurns::at(&m, len);
            for k in (1..2 * CLOCK_ROUNDS).step_by(2) {
                turns.take(k);
            }
            println!("RESULT clock");
        }
        "hold_open" => {
            // Take connections, report, and keep them until stdin closes.
            for _ in 0..3 {
                assert!(lim.connect_at(b"worker-client", 1000).0.allowed);
            }
            println!("RESULT held");
            use std::io::{Read, Write};
            std::io::stdout().flush().unwrap();
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        }
        "hold" => {
            // Take connections and die without closing them.
            for _ in 0..3 {
                assert!(lim.connect_at(b"worker-client", 1000).0.allowed);
            }
            println!("RESULT held");
            std::process::exit(0);
        }
        _ => panic!("unknown child task {task}"),
    }
    drop(lim);
}

/// Clock readings per process in the T10 test.
const CLOCK_ROUNDS: usize = 2000;
/// Bytes after the region for the T10 test: the turn and the readings.
const CLOCK_AREA: usize = 8 * (1 + 2 * CLOCK_ROUNDS);

/// Two processes taking turns at reading the engine's clock, in the
/// mapping past the region: a turn counter, then one reading per turn.
struct ClockTurns<'a> {
    turn: &'a std::sync::atomic::AtomicU64,
    readings: &'a [std::sync::atomic::AtomicU64],
}

impl<'a> ClockTurns<'a> {
    fn at(m: &'a Mapping, len: usize) -> ClockTurns<'a> {
        assert!(len + CLOCK_AREA <= m.len);
        // SAFETY: 8-byte aligned words inside the mapping (the region's size
        // is a multiple of 64), zero-filled by ftruncate, shared by design.
        unsafe {
            let base = m.ptr.add(len) as *const std::sync::atomic::AtomicU64;
            ClockTurns { turn: &*base, readings: std::slice::from_raw_parts(base.add(1), 2 * CLOCK_ROUNDS) }
        }
    }

    /// Waits for turn `k` (at most 20 s), reads the clock into reading `k`,
    /// and passes the turn on.
    fn take(&self, k: usize) {
        use std::sync::atomic::Ordering;
        let t0 = std::time::Instant::now();
        while self.turn.load(Ordering::Acquire) != k as u64 {
            assert!(t0.elapsed().as_secs() < 20, "turn {k} never came");
            std::hint::spin_loop();
        }
        self.readings[k].store(ratethrottle::clock::now_ms(), Ordering::Relaxed);
        self.turn.store(k as u64 + 1, Ordering::Release);
    }
}

fn spawn(task: &str, path: &str) -> std::process::Child {
    common::spawn("child_entry", "RT_CHILD", &format!("{task}:{path}"))
}

#[test]
fn child_entry() {
    if let Ok(spec) = std::env::var("RT_CHILD") {
        let (task, path) = spec.split_once(':').unwrap();
        child(task, path);
    }
}

#[test]
fn processes_sharing_a_region_enforce_one_limit() {
    let file = ShmFile::new("race");
    let path = file.0.clone();
    let len = Limiter::region_size(&limits()).unwrap();
    let m = Mapping::open(&path, len + BARRIER, true);
    // SAFETY: the mapping outlives the limiter (dropped first below).
    let lim = unsafe { Limiter::init_in(m.ptr, len, &limits()) }.unwrap();
    let children: Vec<_> = (0..CHILDREN).map(|_| spawn("race", &path)).collect();
    let (mut conns, mut keys) = (0u64, 0u64);
    for c in children {
        let r = results(c);
        eprintln!("child: {} connections, {} keys", r[0], r[1]);
        conns += r[0].parse::<u64>().unwrap();
        keys += r[1].parse::<u64>().unwrap();
    }
    assert_eq!(conns, 7, "the concurrency limit holds exactly across processes");
    assert_eq!(keys, 1000, "the key limit holds exactly across processes");
    assert_eq!(lim.client_connections(b"shared-client"), 7);
    // The children exited without closing: their connections are reaped.
    assert_eq!(lim.reap_dead(), 7);
    assert_eq!(lim.client_connections(b"shared-client"), 0);
    drop(lim);
    drop(m);
}

#[test]
fn a_dead_workers_connections_are_reaped() {
    let file = ShmFile::new("reap");
    let path = file.0.clone();
    let len = Limiter::region_size(&limits()).unwrap();
    let m = Mapping::open(&path, len + BARRIER, true);
    let l = Limits { max_concurrent_connections: 3, ..limits() };
    // SAFETY: the mapping outlives the limiter.
    let lim = unsafe { Limiter::init_in(m.ptr, len, &l) }.unwrap();
    // Our own connection must survive the reaping.
    let (_, mine) = lim.connect_at(b"mine", 1000);
    assert_eq!(results(spawn("hold", &path)), vec!["held"]);
    assert_eq!(lim.client_connections(b"worker-client"), 3);
    assert_eq!(lim.connect_at(b"worker-client", 1001).0.reason, Reason::ConcurrentConnections);
    assert_eq!(lim.reap_dead(), 3);
    assert_eq!(lim.reap_dead(), 0);
    assert!(lim.connect_at(b"worker-client", 1002).0.allowed, "the client is not locked out");
    assert!(lim.connection_info(mine.unwrap()).is_some());
    drop(lim);
    drop(m);
}

/// A worker in another PID namespace (a container sharing /dev/shm but not
/// the host's pids): its pid names another process here, or none, so it
/// must never be judged dead from here, nor its connections reaped.
#[test]
fn connections_of_a_process_in_another_pid_namespace_are_not_reaped() {
    use std::io::BufRead;
    let permitted = std::process::Command::new("unshare")
        .args(["-p", "-f", "--mount-proc", "true"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !permitted {
        eprintln!("SKIPPED: `unshare -p -f --mount-proc` is not available or not permitted here (needs root or user namespaces)");
        return;
    }
    let file = ShmFile::new("pidns");
    let path = file.0.clone();
    let len = Limiter::region_size(&limits()).unwrap();
    let m = Mapping::open(&path, len + BARRIER, true);
    // SAFETY: the mapping outlives the limiter.
    let lim = unsafe { Limiter::init_in(m.ptr, len, &limits()) }.unwrap();
    let mut child = std::process::Command::new("unshare")
        .args(["-p", "-f", "--mount-proc"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env("RT_CHILD", format!("hold_open:{path}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut held = false;
    for _ in 0..200 {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if common::fields([line.trim_end()]).is_some_and(|f| f == ["held"]) {
            held = true;
            break;
        }
    }
    assert!(held, "the child in its own PID namespace connected");
    assert_eq!(lim.client_connections(b"worker-client"), 3);
    assert_eq!(lim.reap_dead(), 0, "a live process of another namespace is not reaped");
    assert_eq!(lim.client_connections(b"worker-client"), 3);
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    drop(lim);
    drop(m);
}

#[test]
fn one_region_mapped_twice_at_different_addresses() {
    let file = ShmFile::new("twice");
    let path = file.0.clone();
    let len = Limiter::region_size(&limits()).unwrap();
    let a = Mapping::open(&path, len, true);
    let b = Mapping::open(&path, len, false);
    assert_ne!(a.ptr, b.ptr);
    // SAFETY: both mappings outlive the limiters.
    let la = unsafe { Limiter::init_in(a.ptr, a.len, &limits()) }.unwrap();
    // SAFETY: as above.
    let lb = unsafe { Limiter::attach(b.ptr, b.len) }.unwrap();
    let (_, c) = la.connect_at(b"x", 0);
    let c = c.unwrap();
    assert_eq!(lb.client_connections(b"x"), 1);
    assert!(lb.check_message_at(c, 10, 0).allowed, "a handle works through the other view");
    assert!(lb.disconnect(c));
    assert_eq!(la.client_connections(b"x"), 0);
    // Limits updated through one view are used through the other.
    lb.update_limits_at(&Limits { max_concurrent_connections: 1, ..limits() }, 0).unwrap();
    assert!(la.connect_at(b"y", 0).0.allowed);
    assert_eq!(la.connect_at(b"y", 0).0.reason, Reason::ConcurrentConnections);
    drop((la, lb, a, b));
}

#[test]
fn attach_refuses_what_is_not_a_ready_region_of_this_layout() {
    let len = Limiter::region_size(&limits()).unwrap();
    let layout = std::alloc::Layout::from_size_align(len, 64).unwrap();
    // SAFETY: fresh zeroed allocation, freed at the end.
    let mem = unsafe { std::alloc::alloc_zeroed(layout) };
    // SAFETY: mem is valid, aligned, len bytes.
    let zeroed = unsafe { Limiter::attach(mem, len) };
    assert!(matches!(zeroed, Err(Error::IncompatibleRegion(_))), "zeroed memory");
    // SAFETY: as above.
    let lim = unsafe { Limiter::init_in(mem, len, &limits()) }.unwrap();
    drop(lim);
    // SAFETY: as above.
    assert!(matches!(unsafe { Limiter::attach(mem, len - 64) }, Err(Error::RegionTooSmall { .. })));
    // A violation ring whose tail is behind its head (found by fuzzing: it
    // used to hang the next denial) is refused.
    {
        // SAFETY: attached to the region just formatted; detached at once.
        let probe = unsafe { Limiter::attach(mem, len) }.unwrap();
        drop(probe);
        // The ring's head and tail are the header's last two words.
        let tail_at = core::mem::size_of::<u64>() * 35;
        let before: Vec<u8> = (0..512).map(|i| unsafe { *mem.add(i) }).collect();
        let head = u64::from_ne_bytes(before[tail_at - 8..tail_at].try_into().unwrap());
        let tail = u64::from_ne_bytes(before[tail_at..tail_at + 8].try_into().unwrap());
        assert_eq!((head, tail), (0, 0), "the ring words moved: update this test");
        // SAFETY: within the header.
        unsafe { (mem.add(tail_at - 8) as *mut u64).write(5) };
        // SAFETY: as above.
        match unsafe { Limiter::attach(mem, len) } {
            Err(Error::IncompatibleRegion(why)) => assert!(why.contains("ring"), "{why}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        // SAFETY: as above.
        unsafe { (mem.add(tail_at - 8) as *mut u64).write(0) };
    }
    // SAFETY: as above.
    assert!(matches!(unsafe { Limiter::attach(mem.add(8), len - 64) }, Err(Error::InvalidArgument(_))));
    // Another layout version: the error names both versions; nothing is changed.
    // SAFETY: byte 8 is the version field of the header, within the allocation.
    unsafe { *mem.add(8) = 99 };
    let before: Vec<u8> = (0..256).map(|i| unsafe { *mem.add(i) }).collect();
    // SAFETY: as above.
    match unsafe { Limiter::attach(mem, len) } {
        Err(Error::IncompatibleRegion(why)) => {
            assert!(why.contains("version 99") && why.contains("version 4"), "{why}")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    let after: Vec<u8> = (0..256).map(|i| unsafe { *mem.add(i) }).collect();
    assert_eq!(before, after, "a refused region is not modified");
    // Garbage.
    for i in 0..len {
        // SAFETY: within the allocation.
        unsafe { *mem.add(i) = (i as u8).wrapping_mul(31) };
    }
    // SAFETY: as above.
    assert!(matches!(unsafe { Limiter::attach(mem, len) }, Err(Error::IncompatibleRegion(_))));
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(mem, layout) };
}

#[test]
fn two_processes_reading_the_clock_in_turn_never_see_it_go_back() {
    // T10: the engine's timestamps come from one system-wide monotonic
    // clock, so readings taken in turn by two processes never decrease (a
    // per-process clock such as `Instant` would not promise that).
    let f = ShmFile::new("clock");
    let len = Limiter::region_size(&limits()).unwrap();
    let m = Mapping::open(&f.0, len + CLOCK_AREA, true);
    // SAFETY: the mapping outlives `lim`.
    let lim = unsafe { Limiter::init_in(m.ptr, len, &limits()) }.unwrap();
    let child = spawn("clock", &f.0);
    let turns = ClockTurns::at(&m, len);
    for k in (0..2 * CLOCK_ROUNDS).step_by(2) {
        turns.take(k);
    }
    assert_eq!(results(child), ["clock"]);
    let r: Vec<u64> = turns.readings.iter().map(|v| v.load(std::sync::atomic::Ordering::Relaxed)).collect();
    for k in 1..r.len() {
        assert!(r[k] >= r[k - 1], "reading {k} ({}) is before reading {} ({})", r[k], k - 1, r[k - 1]);
    }
    assert!(r[0] > 0);
    drop(lim);
}
