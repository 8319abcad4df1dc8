//! Criterion benchmarks of the engine's hot paths (see BENCHMARKS.md).
//!
//! One criterion group per scenario, each with `Throughput::Elements` and its
//! baseline or peer measured in the same run, so that the ratios DESIGN.md
//! sets as targets come from one run on one machine:
//!
//! | group | measures | baseline / peer |
//! |---|---|---|
//! | `message` | `check_message_at`, `check_message` on a live connection | F0: a size compare and two atomic adds; F1: a 128-bit load + CAS |
//! | `keys_100k` | `check_key_at` cycling over 100k keys | governor keyed `check_key` (same keys), governor direct `check`; floors K0 (`support/floors.rs`): a key check's memory traffic alone, in the engine's table layout and in a dense one |
//! | `connect` | `connect_at` + `disconnect` for a known client | governor keyed `check_key` on one key; floor C0: the synchronisation alone |
//! | `threads_distinct` | 1 vs 2 threads, each on its own client | governor keyed, 1 vs 2 threads on own keys |
//! | `threads_one_key` | 1 vs 2 threads on one key (information) | governor keyed on one key |
//! | `clients_1m` | `check_key_at` on 1M clients drawn at random | governor keyed on the same ids |
//!
//! Every measured loop counts the allowed decisions and asserts after the
//! timed part that all were allowed (a probe also asserts it before timing),
//! so no number here is the cost of a denial. Before the groups run, `main`
//! prints the memory per slot and region sizes (not timed), and the setups
//! print how many ids the client table refused while being filled. After each
//! benchmark a `cpu` line gives the CPU time its measured loops used per
//! operation and CPU time / wall time: on a shared machine criterion's wall
//! times include waiting for a CPU, the CPU time does not.
//!
//! Run: `cargo bench --bench engine` (or `scripts/bench-report.sh`, which
//! also prints the ratios against the targets from this run's estimates).

use criterion::measurement::WallTime;
use criterion::{Bencher, BenchmarkGroup, Criterion, Throughput};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use portable_atomic::AtomicU128;
use ratethrottle::{Conn, Limiter, Limits, MAX_MESSAGES_PER_WINDOW};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

#[path = "support/floors.rs"]
mod floors;
use floors::{ConnFloor, KeyFloor, Layout};

/// Size of every message and key charge in bytes (a small chat message).
const SIZE: u64 = 64;
/// Window of every limiter here: the default, 60 s.
const WINDOW_MS: u32 = 60_000;
/// Where every fake clock starts (any value well past 0).
const NOW0: u64 = 1_000_000_000;
/// Messages per connection per window: the largest the packed word holds.
const MSGS: u32 = MAX_MESSAGES_PER_WINDOW;
/// Bytes per connection per window, well above SIZE * MSGS.
const BYTES: u64 = 1 << 25;
/// A connection checked on the limiter's own clock is replaced after this many
/// messages (outside the timed part), so it never reaches MSGS in a window.
const CHUNK: u64 = 100_000;
/// A governor quota no benchmark here can exhaust (10^9 per second, 1 ns
/// replenish), for the loops that hit one key at full speed.
const GOVERNOR_UNBOUNDED: u32 = 1_000_000_000;
/// Key and client ids: 16 bytes, `client-000000042`, the same bytes for both
/// limiters (governor keys are `[u8; 16]`).
type Id = [u8; 16];

fn id(i: u64) -> Id {
    let mut out = [0u8; 16];
    let s = format!("client-{i:09}");
    out.copy_from_slice(s.as_bytes());
    out
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("non-zero quota")
}

/// One criterion group (a scenario) with its settings; every benchmark in
/// it also tallies the CPU time of its measured loops (see [`Tally`]).
struct Scenario<'a> {
    group: BenchmarkGroup<'a, WallTime>,
    name: &'static str,
}

impl<'a> Scenario<'a> {
    fn new(c: &'a mut Criterion, name: &'static str, measure_s: u64, samples: usize) -> Self {
        let mut group = c.benchmark_group(name);
        group
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(measure_s))
            .sample_size(samples);
        Scenario { group, name }
    }

    /// A benchmark of `threads` operations per iteration (its throughput in
    /// elements); `f` gets the bencher and the tally to pass to `run*`.
    fn bench(&mut self, id: &str, threads: usize, mut f: impl FnMut(&mut Bencher<'_, WallTime>, &Tally)) {
        let tally = Tally::default();
        self.group.throughput(Throughput::Elements(threads as u64));
        self.group.bench_function(id, |b| f(b, &tally));
        tally.print(&format!("{}/{id}", self.name), threads);
    }

    fn finish(self) {
        self.group.finish();
    }
}

/// Runs `iters` operations on this thread, timing only the loop; `op(i)`
/// returns whether its decision was allowed, and every one must be.
#[inline(always)]
fn run(iters: u64, tally: &Tally, mut op: impl FnMut(u64) -> bool) -> Duration {
    let mut allowed = 0u64;
    let cpu0 = thread_cpu_ns();
    let start = Instant::now();
    for i in 0..iters {
        allowed += op(i) as u64;
    }
    let elapsed = start.elapsed();
    tally.add(thread_cpu_ns() - cpu0, elapsed, iters);
    assert_eq!(allowed, iters, "a decision in the measured loop was denied");
    elapsed
}

/// CPU time spent in the measured loops of one benchmark (warm-up included),
/// against their wall time. On a shared machine the wall time includes the
/// time this process waited for a CPU; the CPU time per operation does not,
/// and the CPU / wall ratio tells how many threads really ran at once.
#[derive(Default)]
struct Tally {
    cpu_ns: AtomicU64,
    wall_ns: AtomicU64,
    ops: AtomicU64,
}

impl Tally {
    fn add(&self, cpu_ns: u64, wall: Duration, ops: u64) {
        self.cpu_ns.fetch_add(cpu_ns, Ordering::Relaxed);
        self.wall_ns.fetch_add(wall.as_nanos() as u64, Ordering::Relaxed);
        self.ops.fetch_add(ops, Ordering::Relaxed);
    }

    /// One line per benchmark, parsed by scripts/bench-report.sh.
    fn print(&self, name: &str, threads: usize) {
        let (cpu, wall, ops) = (
            self.cpu_ns.load(Ordering::Relaxed),
            self.wall_ns.load(Ordering::Relaxed),
            self.ops.load(Ordering::Relaxed),
        );
        if ops == 0 {
            return; // filtered out
        }
        println!(
            "cpu {name}: {:.2} ns CPU time per operation; {:.2} of {threads} thread(s) on a CPU (CPU time / wall time)",
            cpu as f64 / ops as f64,
            cpu as f64 / wall.max(1) as f64
        );
    }
}

/// CPU time of the calling thread in ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs `iters` operations on each of `threads` threads started together;
/// returns the time from the first start to the last finish. `make(t)` gives
/// thread `t` its operation; `op(i)` returns whether decision `i` was
/// allowed, and every one must be.
fn run_threads<F: FnMut(u64) -> bool>(
    threads: usize,
    iters: u64,
    tally: &Tally,
    make: impl Fn(usize) -> F + Sync,
) -> Duration {
    let barrier = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (barrier, make) = (&barrier, &make);
                s.spawn(move || {
                    let mut op = make(t);
                    barrier.wait();
                    let cpu0 = thread_cpu_ns();
                    let start = Instant::now();
                    let mut allowed = 0u64;
                    for i in 0..iters {
                        allowed += op(i) as u64;
                    }
                    let end = Instant::now();
                    tally.add(thread_cpu_ns() - cpu0, Duration::ZERO, 0);
                    assert_eq!(allowed, iters, "a decision in the measured loop was denied");
                    (start, end)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("bench thread panicked")).collect()
    });
    let start = spans.iter().map(|s| s.0).min().expect("at least one thread");
    let end = spans.iter().map(|s| s.1).max().expect("at least one thread");
    tally.add(0, end - start, iters * threads as u64);
    end - start
}

/// A fast PRNG (wyrand), the same sequence for both limiters.
struct Rng(u64);

impl Rng {
    #[inline(always)]
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = (self.0 as u128).wrapping_mul((self.0 ^ 0xe703_7ed1_a0b4_28db) as u128);
        let r = ((t >> 64) as u64) ^ (t as u64);
        ((r as u128 * n as u128) >> 64) as u64
    }
}

/// Fills the client table with `n` ids that it accepts (`check_key_at` once
/// each, all allowed) and returns them; prints how many it refused
/// (`TableFull`: every slot of the id's probe window was taken).
fn admitted_ids(lim: &Limiter, n: usize, now_ms: u64, what: &str) -> Vec<Id> {
    let mut ids = Vec::with_capacity(n);
    let mut refused = 0u64;
    let mut i = 0u64;
    while ids.len() < n {
        let k = id(i);
        i += 1;
        let d = lim.check_key_at(&k, SIZE, now_ms);
        if d.allowed {
            ids.push(k);
        } else {
            assert_eq!(d.reason, ratethrottle::Reason::TableFull, "unexpected denial while filling");
            refused += 1;
        }
    }
    let cap = lim.limits().max_clients;
    println!(
        "setup {what}: {n} ids admitted into max_clients = {cap} ({:.1}% full); {refused} of the first {i} ids refused with TableFull",
        100.0 * n as f64 / cap as f64
    );
    ids
}

// ---- memory (printed, not timed) ----------------------------------------

fn region(max_clients: u32, max_connections: u32) -> usize {
    Limiter::region_size(&Limits { max_clients, max_connections, ..Limits::default() }).expect("valid limits")
}

/// Bytes per client and per connection, from the public `region_size`: the
/// growth of the region between 2^19 and 2^20 of each (256 shards either
/// way, so only slots differ).
fn print_memory() {
    let half = 1u32 << 19;
    let client_slot = (region(2 * half, 1) - region(half, 1)) / half as usize;
    let conn_slot = (region(1, 2 * half) - region(1, half)) / half as usize;
    let m = 1u32 << 20;
    let both = region(m, m);
    // Per client, not per slot: the table keeps two 128-byte slots (the
    // size src/region.rs asserts at compile time, target <= 128) and two
    // tag bytes per client of max_clients.
    println!("memory: per client of max_clients (two slots and their tag bytes) = {client_slot} bytes");
    println!("memory: connection slot = {conn_slot} bytes (target <= 64)");
    println!("memory: region_size(max_clients = 2^20, max_connections = 2^20) = {both} bytes ({:.2} MiB)", mb(both));
    println!("memory: region_size(max_clients = 2^20, max_connections = 1) = {} bytes", region(m, 1));
    println!("memory: region_size(max_clients = 1, max_connections = 2^20) = {} bytes", region(1, m));
    println!("memory: region_size(max_clients = 2^21, default connections) = {} bytes", region(2 * m, 65_536));
    println!("memory: region_size(Limits::default()) = {} bytes", region(65_536, 65_536));
    println!("memory: fixed part (header, lanes, stripes, locks, ring) = {} bytes", region(1, 1));
    println!("memory: per client + connection at 2^20 each = {:.1} bytes", both as f64 / m as f64);
}

fn mb(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

// ---- 1, 2: one message check --------------------------------------------

/// F0: what a message check must at least do.
#[repr(C, align(64))]
struct Floor {
    msgs: AtomicU64,
    bytes: AtomicU64,
}

#[inline(always)]
fn floor_check(f: &Floor, size: u64, max_size: u64) -> bool {
    if size > max_size {
        return false;
    }
    f.msgs.fetch_add(1, Ordering::Relaxed);
    f.bytes.fetch_add(size, Ordering::Relaxed);
    true
}

#[repr(C, align(64))]
struct Word(AtomicU128);

#[inline(always)]
fn load_cas128(w: &Word, size: u64) -> bool {
    let cur = w.0.load(Ordering::Acquire);
    // Messages in the high half, bytes in the low half, as one packed word.
    let new = cur.wrapping_add((1u128 << 64) | size as u128);
    w.0.compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire).is_ok()
}

/// Limits of the message scenarios: message rate and bandwidth both on (one
/// CAS decides both), client aggregates off, connection limits off (the
/// check_message bench reconnects often on the real clock).
fn message_limits() -> Limits {
    Limits {
        window_ms: WINDOW_MS,
        messages_per_window: MSGS,
        bytes_per_window: BYTES,
        max_message_size: 65_536,
        connections_per_window: 0,
        max_concurrent_connections: 0,
        ..Limits::default()
    }
}

fn connect(lim: &Limiter, client: &[u8], now_ms: u64) -> Conn {
    let (d, conn) = lim.connect_at(client, now_ms);
    assert!(d.allowed, "connect denied: {d:?}");
    conn.expect("allowed connect has a handle")
}

fn bench_message(c: &mut Criterion) {
    let mut g = Scenario::new(c, "message", 5, 60);

    let floor = Box::new(Floor { msgs: AtomicU64::new(0), bytes: AtomicU64::new(0) });
    g.bench("F0", 1, |b, tally| {
        b.iter_custom(|iters| run(iters, tally, |_| floor_check(&floor, black_box(SIZE), black_box(65_536))))
    });

    // F1 (information): the atomic core of the design, one 128-bit load and
    // one 128-bit CAS through portable-atomic, as the engine does them.
    let word = Box::new(Word(AtomicU128::new(0)));
    g.bench("F1_load_cas128", 1, |b, tally| {
        b.iter_custom(|iters| run(iters, tally, |_| load_cas128(&word, black_box(SIZE))))
    });

    let lim = Limiter::new(&message_limits()).expect("limiter");
    // A live connection for the whole bench; the fake clock moves 1 ms per
    // message, so a window holds at most 60_000 of MSGS = 262_143 messages.
    let conn = connect(&lim, b"bench-message-at", NOW0);
    let mut now = NOW0;
    g.bench("check_message_at", 1, |b, tally| {
        b.iter_custom(|iters| {
            assert!(lim.check_message_at(conn, SIZE, now).allowed, "probe denied");
            let t0 = now + 1;
            let el = run(iters, tally, |i| lim.check_message_at(black_box(conn), black_box(SIZE), t0 + i).allowed);
            now = t0 + iters;
            el
        })
    });
    lim.disconnect(conn);

    // The limiter's own clock: real time, so a connection is replaced (outside
    // the timed part) after CHUNK messages to stay under MSGS per window.
    let mut conn = connect(&lim, b"bench-message", ratethrottle::clock::now_ms());
    let mut used = 0u64;
    g.bench("check_message", 1, |b, tally| {
        b.iter_custom(|iters| {
            let mut left = iters;
            let mut total = Duration::ZERO;
            while left > 0 {
                if used >= CHUNK {
                    lim.disconnect(conn);
                    conn = connect(&lim, b"bench-message", ratethrottle::clock::now_ms());
                    used = 0;
                }
                assert!(lim.check_message(conn, SIZE).allowed, "probe denied");
                used += 1;
                let n = left.min(CHUNK - used);
                total += run(n, tally, |_| lim.check_message(black_box(conn), black_box(SIZE)).allowed);
                used += n;
                left -= n;
            }
            total
        })
    });
    lim.disconnect(conn);
    g.finish();
}

// ---- 3: check_key on 100k keys -------------------------------------------

const KEYS: usize = 100_000;

fn key_limits(max_clients: u32) -> Limits {
    Limits {
        window_ms: WINDOW_MS,
        client_messages_per_window: MSGS,
        max_clients,
        max_connections: 1024,
        ..Limits::default()
    }
}

fn governor_keyed(per_minute: u32) -> DefaultKeyedRateLimiter<Id> {
    RateLimiter::keyed(Quota::per_minute(nz(per_minute)))
}

fn bench_keys_100k(c: &mut Criterion) {
    // The fake clock starts at the real one and lags it, so the check_key
    // bench (real clock) on the same keys later finds their windows current.
    let start = ratethrottle::clock::now_ms();
    let lim = Limiter::new(&key_limits(131_072)).expect("limiter");
    let ids = admitted_ids(&lim, KEYS, start, "keys_100k");
    // The same quota as the client limit: MSGS per minute per key.
    let gov = governor_keyed(MSGS);
    for k in &ids {
        assert!(gov.check_key(k).is_ok());
    }
    let direct: DefaultDirectRateLimiter = RateLimiter::direct(Quota::per_second(nz(GOVERNOR_UNBOUNDED)));
    // connect + disconnect over the same 100k ids as known clients, on a
    // limiter of the same size whose connection limits the run never
    // reaches (each id connects once per fake ms; 1_000_000 a window).
    let conn_lim = Limiter::new(&Limits {
        connections_per_window: 1_000_000,
        max_concurrent_connections: 10,
        ..key_limits(131_072)
    })
    .expect("limiter");
    let conn_ids: Vec<Id> = ids
        .iter()
        .filter(|k| {
            let (d, conn) = conn_lim.connect_at(&k[..], start);
            if let Some(conn) = conn {
                conn_lim.disconnect(conn);
            }
            d.allowed
        })
        .copied()
        .collect();
    println!("setup keys_100k: {} of the {KEYS} ids connected as known clients", conn_ids.len());

    let mut g = Scenario::new(c, "keys_100k", 5, 60);
    // The fake clock moves 1 ms per pass over the keys (each key is then hit
    // once per fake ms at most).
    let (mut next, mut now) = (0usize, start);
    g.bench("ratethrottle_check_key_at", 1, |b, tally| {
        b.iter_custom(|iters| {
            assert!(lim.check_key_at(&ids[next], SIZE, now).allowed, "probe denied");
            run(iters, tally, |_| {
                next += 1;
                if next == KEYS {
                    next = 0;
                    now += 1;
                }
                lim.check_key_at(black_box(&ids[next]), black_box(SIZE), now).allowed
            })
        })
    });
    let mut next = 0usize;
    g.bench("ratethrottle_check_key", 1, |b, tally| {
        b.iter_custom(|iters| {
            run(iters, tally, |_| {
                next = if next + 1 == KEYS { 0 } else { next + 1 };
                lim.check_key(black_box(&ids[next]), black_box(SIZE)).allowed
            })
        })
    });
    let mut next = 0usize;
    g.bench("governor_keyed_check_key", 1, |b, tally| {
        b.iter_custom(|iters| {
            run(iters, tally, |_| {
                next = if next + 1 == KEYS { 0 } else { next + 1 };
                gov.check_key(black_box(&ids[next])).is_ok()
            })
        })
    });
    g.bench("governor_direct_check", 1, |b, tally| {
        b.iter_custom(|iters| run(iters, tally, |_| direct.check().is_ok()))
    });
    let (mut next, mut now) = (0usize, start);
    g.bench("ratethrottle_connect_at_disconnect", 1, |b, tally| {
        b.iter_custom(|iters| {
            run(iters, tally, |_| {
                next += 1;
                if next == conn_ids.len() {
                    next = 0;
                    now += 1;
                }
                let (d, conn) = conn_lim.connect_at(black_box(&conn_ids[next]), now);
                if let Some(conn) = conn {
                    conn_lim.disconnect(conn);
                }
                d.allowed
            })
        })
    });
    // Floors (information): a key check's memory traffic alone, on the same
    // keys in the same order, in the engine's table layout (its 2 * 131072
    // slots of 128 bytes) and in the most compact layout of the same words.
    for (name, layout) in [("K0_table_layout", Layout::Slots128), ("K0_dense_index", Layout::DenseIndex)] {
        let floor = KeyFloor::new(layout, 2 * 131_072, &ids);
        let mut next = 0usize;
        g.bench(name, 1, |b, tally| {
            b.iter_custom(|iters| {
                run(iters, tally, |_| {
                    next = if next + 1 == KEYS { 0 } else { next + 1 };
                    floor.check(black_box(&ids[next]))
                })
            })
        });
    }
    g.finish();
}

// ---- 4: connect + disconnect for a known client ---------------------------

fn bench_connect(c: &mut Criterion) {
    // Connection rate and concurrency on; the fake clock moves 1 ms per
    // connect, so a window holds 60_000 connects of the 1_000_000 allowed.
    let limits = Limits {
        window_ms: WINDOW_MS,
        connections_per_window: 1_000_000,
        max_concurrent_connections: 10,
        ..Limits::default()
    };
    let lim = Limiter::new(&limits).expect("limiter");
    let client = id(7);
    let first = connect(&lim, &client, NOW0);
    assert!(lim.disconnect(first));
    let gov: DefaultKeyedRateLimiter<Id> = RateLimiter::keyed(Quota::per_second(nz(GOVERNOR_UNBOUNDED)));
    assert!(gov.check_key(&client).is_ok());

    let mut g = Scenario::new(c, "connect", 5, 60);
    let mut now = NOW0;
    g.bench("ratethrottle_connect_at_disconnect", 1, |b, tally| {
        b.iter_custom(|iters| {
            let t0 = now + 1;
            let el = run(iters, tally, |i| {
                let (d, conn) = lim.connect_at(black_box(&client), t0 + i);
                if let Some(conn) = conn {
                    lim.disconnect(conn);
                }
                d.allowed
            });
            now = t0 + iters;
            el
        })
    });
    g.bench("governor_keyed_check_key_one_key", 1, |b, tally| {
        b.iter_custom(|iters| run(iters, tally, |_| gov.check_key(black_box(&client)).is_ok()))
    });
    // Floor (information): the synchronisation alone (see `ConnFloor`).
    let floor = ConnFloor::new();
    g.bench("C0", 1, |b, tally| {
        b.iter_custom(|iters| run(iters, tally, |_| floor.connect_disconnect(black_box(&client))))
    });
    g.finish();
}

// ---- 5: one thread vs two -------------------------------------------------

fn bench_threads(c: &mut Criterion) {
    // Distinct clients: each thread checks messages on a connection of its own client.
    let lim = Limiter::new(&message_limits()).expect("limiter");
    let clients = [id(100), id(101)];
    let conns = [connect(&lim, &clients[0], NOW0), connect(&lim, &clients[1], NOW0)];
    let gov: DefaultKeyedRateLimiter<Id> = RateLimiter::keyed(Quota::per_second(nz(GOVERNOR_UNBOUNDED)));
    for k in &clients {
        assert!(gov.check_key(k).is_ok());
    }

    let mut g = Scenario::new(c, "threads_distinct", 4, 20);
    // Each thread's fake clock moves 1 ms per message from a base that moves
    // past every earlier sample, so windows never fill.
    let base = AtomicU64::new(NOW0);
    for threads in [1usize, 2] {
        let name = format!("ratethrottle_{threads}_thread{}", plural(threads));
        g.bench(&name, threads, |b, tally| {
            b.iter_custom(|iters| {
                let t0 = base.fetch_add(iters + 1, Ordering::Relaxed) + 1;
                for conn in &conns[..threads] {
                    assert!(lim.check_message_at(*conn, SIZE, t0).allowed, "probe denied");
                }
                run_threads(threads, iters, tally, |t| {
                    let conn = conns[t];
                    let lim = &lim;
                    move |i| lim.check_message_at(black_box(conn), SIZE, t0 + i).allowed
                })
            })
        });
    }
    for threads in [1usize, 2] {
        let name = format!("governor_keyed_{threads}_thread{}", plural(threads));
        g.bench(&name, threads, |b, tally| {
            b.iter_custom(|iters| {
                run_threads(threads, iters, tally, |t| {
                    let (gov, key) = (&gov, &clients[t]);
                    move |_| gov.check_key(black_box(key)).is_ok()
                })
            })
        });
    }
    g.finish();
    for conn in conns {
        lim.disconnect(conn);
    }

    // One key shared by the threads (information: contention on one word).
    // Per-thread fake clocks would drift apart when the scheduler stalls one
    // thread, and the laggard's checks would all land in one window; so the
    // fake clock is real time with 1 fake ms = 1 us (read every 64 checks),
    // and the window is 1000 fake ms = 1 real ms: far fewer than MSGS checks
    // fit in it.
    let lim = Limiter::new(&Limits { window_ms: 1000, ..key_limits(1024) }).expect("limiter");
    let key = id(200);
    let epoch = Instant::now();
    let fake_now = move || NOW0 + epoch.elapsed().as_micros() as u64;
    assert!(lim.check_key_at(&key, SIZE, fake_now()).allowed);
    assert!(gov.check_key(&key).is_ok());
    let mut g = Scenario::new(c, "threads_one_key", 4, 20);
    for threads in [1usize, 2] {
        let name = format!("ratethrottle_{threads}_thread{}", plural(threads));
        g.bench(&name, threads, |b, tally| {
            b.iter_custom(|iters| {
                assert!(lim.check_key_at(&key, SIZE, fake_now()).allowed, "probe denied");
                run_threads(threads, iters, tally, |_| {
                    let (lim, key) = (&lim, &key);
                    let mut now = 0;
                    move |i| {
                        if i % 64 == 0 {
                            now = fake_now();
                        }
                        lim.check_key_at(black_box(key), SIZE, now).allowed
                    }
                })
            })
        });
    }
    for threads in [1usize, 2] {
        let name = format!("governor_keyed_{threads}_thread{}", plural(threads));
        g.bench(&name, threads, |b, tally| {
            b.iter_custom(|iters| {
                run_threads(threads, iters, tally, |_| {
                    let (gov, key) = (&gov, &key);
                    move |_| gov.check_key(black_box(key)).is_ok()
                })
            })
        });
    }
    g.finish();
}

// ---- 6: 1M clients at random ----------------------------------------------

const CLIENTS_1M: usize = 1 << 20;

fn bench_clients_1m(c: &mut Criterion) {
    // 2^20 ids do not all fit a table of 2^20 slots (bounded probing refuses
    // ids whose probe window is full; main prints how many), so the table has
    // 2^21 slots: 256 MiB of client slots.
    let lim = Limiter::new(&key_limits(1 << 21)).expect("limiter");
    let ids = admitted_ids(&lim, CLIENTS_1M, NOW0, "clients_1m");
    let gov = governor_keyed(MSGS);
    for k in &ids {
        assert!(gov.check_key(k).is_ok());
    }

    let mut g = Scenario::new(c, "clients_1m", 5, 40);
    let mut rng = Rng(0x5eed);
    let mut now = NOW0;
    g.bench("ratethrottle_check_key_at", 1, |b, tally| {
        b.iter_custom(|iters| {
            // A fake ms per sample: ids drawn at random are hit a few times
            // each, far below the limit.
            now += 1;
            run(iters, tally, |_| {
                lim.check_key_at(&ids[rng.below(CLIENTS_1M as u64) as usize], black_box(SIZE), now).allowed
            })
        })
    });
    let mut rng = Rng(0x5eed);
    g.bench("governor_keyed_check_key", 1, |b, tally| {
        b.iter_custom(|iters| run(iters, tally, |_| gov.check_key(&ids[rng.below(CLIENTS_1M as u64) as usize]).is_ok()))
    });
    g.finish();
    drop(gov);
    drop(lim);

    // The advertised configuration, 2^20 slots for 2^20 clients, filled as
    // far as it goes (printed, not timed).
    let lim = Limiter::new(&key_limits(1 << 20)).expect("limiter");
    let mut refused = 0u64;
    for i in 0..CLIENTS_1M as u64 {
        refused += !lim.check_key_at(&id(i), SIZE, NOW0).allowed as u64;
    }
    println!("capacity: {CLIENTS_1M} distinct ids into max_clients = 2^20: {refused} refused with TableFull");
}

fn main() {
    print_memory();
    let mut c = Criterion::default().configure_from_args();
    bench_message(&mut c);
    bench_keys_100k(&mut c);
    bench_connect(&mut c);
    bench_threads(&mut c);
    bench_clients_1m(&mut c);
    c.final_summary();
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
