//! Several processes sharing one region: connect + disconnect in 1 process,
//! then in 2 forked processes at once (see BENCHMARKS.md, "Processes").
//!
//! The region lives in anonymous shared memory (`MAP_SHARED`), formatted by
//! this process before it forks, as nginx's master formats a zone before
//! its workers start. Each process connects and disconnects its own 1000
//! clients in turn, with a caller's clock that advances 1 ms every 1000
//! operations, and asserts that every connect was allowed. A process waits
//! at a barrier in the shared memory, so the two start together; each
//! writes its wall time and CPU time back to the shared memory.
//!
//! What it shows: whether processes that share a region get in each other's
//! way. A forked process runs at its parent's stack addresses, so any
//! per-thread choice made from the stack address alone (statistics stripe,
//! free-list lane) would put every worker on the same cache lines.
//!
//! Run: `cargo bench --bench processes` (also part of `make bench`).
//! Prints one line per round and the medians; no criterion.

use ratethrottle::{Limiter, Limits};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

const CLIENTS: usize = 1000;
/// Bytes before the region: the barrier and the per-process results.
const CONTROL: usize = 4096;

struct Control {
    /// Processes that reached the start line.
    ready: AtomicU32,
    /// Set by the parent once every process is ready.
    go: AtomicU32,
    /// Per process: wall ns per op and CPU ns per op, as f64 bits.
    results: [[AtomicU64; 2]; 2],
}

fn cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One process's loop: connect + disconnect over its own clients.
fn work(lim: &Limiter, who: usize, ctl: &Control, ops: u64) {
    let ids: Vec<Vec<u8>> = (0..CLIENTS).map(|i| format!("process-{who}-client-{i}").into_bytes()).collect();
    let t0 = 1_000_000_000u64;
    for id in &ids {
        let (d, c) = lim.connect_at(id, t0);
        assert!(d.allowed, "warm-up connect denied: {d:?}");
        lim.disconnect(c.expect("an allowed connect has a handle"));
    }
    ctl.ready.fetch_add(1, Ordering::AcqRel);
    while ctl.go.load(Ordering::Acquire) == 0 {
        std::hint::spin_loop();
    }
    let (wall, cpu) = (Instant::now(), cpu_ns());
    let mut allowed = 0u64;
    for j in 0..ops {
        let (d, c) = lim.connect_at(&ids[j as usize % CLIENTS], t0 + j / 1000);
        allowed += d.allowed as u64;
        if let Some(c) = c {
            lim.disconnect(c);
        }
    }
    let (wall, cpu) = (wall.elapsed().as_nanos() as f64, (cpu_ns() - cpu) as f64);
    assert_eq!(allowed, ops, "process {who}: some connects were denied");
    ctl.results[who][0].store((wall / ops as f64).to_bits(), Ordering::Release);
    ctl.results[who][1].store((cpu / ops as f64).to_bits(), Ordering::Release);
}

/// Runs `procs` forked processes at once; returns per process (wall, cpu)
/// ns per op, and the wall time from the start signal to the last exit.
fn round(lim: &Limiter, ctl: &Control, procs: usize, ops: u64) -> (Vec<(f64, f64)>, f64) {
    ctl.ready.store(0, Ordering::Release);
    ctl.go.store(0, Ordering::Release);
    let mut pids = Vec::new();
    for who in 0..procs {
        // SAFETY: this bench is single-threaded (harness = false), so the
        // child may run any code; it leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(lim, who, ctl, ops))).is_ok();
            // SAFETY: leaving the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        pids.push(pid);
    }
    while ctl.ready.load(Ordering::Acquire) < procs as u32 {
        std::hint::spin_loop();
    }
    let start = Instant::now();
    ctl.go.store(1, Ordering::Release);
    for pid in pids {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "a process failed (status {status})");
    }
    let elapsed = start.elapsed().as_nanos() as f64;
    let per = (0..procs)
        .map(|w| {
            let f = |k: usize| f64::from_bits(ctl.results[w][k].load(Ordering::Acquire));
            (f(0), f(1))
        })
        .collect();
    (per, elapsed)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench. Without it (`cargo test --benches`),
    // one short round checks that the bench still runs.
    let (ops, rounds) = if std::env::args().any(|a| a == "--bench") { (2_000_000u64, 7) } else { (20_000, 1) };
    let limits = Limits {
        window_ms: 60_000,
        connections_per_window: 16_000_000,
        max_concurrent_connections: 10,
        max_clients: 4096,
        max_connections: 4096,
        ..Limits::default()
    };
    let size = Limiter::region_size(&limits).expect("valid limits");
    let len = CONTROL + size;
    // SAFETY: a fresh anonymous shared mapping, checked below.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
    let mem = mem.cast::<u8>();
    // SAFETY: zeroed shared memory, page aligned, large enough for Control.
    let ctl = unsafe { &*(mem as *const Control) };
    // SAFETY: `size` bytes after CONTROL (page aligned), valid for the whole run.
    let lim = unsafe { Limiter::init_in(mem.add(CONTROL), size, &limits) }.expect("init_in");

    println!("processes: connect_at + disconnect, {ops} per process per round, {rounds} rounds, each process on its own {CLIENTS} clients");
    let (mut one_wall, mut one_cpu, mut two_wall, mut two_cpu, mut scaling) = (vec![], vec![], vec![], vec![], vec![]);
    for r in 0..rounds {
        let (one, t1) = round(&lim, ctl, 1, ops);
        let (two, t2) = round(&lim, ctl, 2, ops);
        // Throughput: operations per wall time from the start signal to the
        // last exit, 2 processes against 1.
        let s = (2.0 * ops as f64 / t2) / (ops as f64 / t1);
        println!(
            "round {r}: 1 process {:.1} ns/op (cpu {:.1}); 2 processes {:.1} and {:.1} ns/op (cpu {:.1} and {:.1}); throughput 2 / 1 = {s:.2}x",
            one[0].0, one[0].1, two[0].0, two[1].0, two[0].1, two[1].1
        );
        one_wall.push(one[0].0);
        one_cpu.push(one[0].1);
        two_wall.extend(two.iter().map(|p| p.0));
        two_cpu.extend(two.iter().map(|p| p.1));
        scaling.push(s);
    }
    println!(
        "median: 1 process {:.1} ns/op (cpu {:.1}); 2 processes {:.1} ns/op each (cpu {:.1}); throughput 2 processes / 1 = {:.2}x",
        median(one_wall),
        median(one_cpu),
        median(two_wall),
        median(two_cpu),
        median(scaling)
    );
    drop(lim);
    // SAFETY: unmapping what was mapped above; no process uses it any more.
    unsafe { libc::munmap(mem.cast(), len) };
}
