//! I4: the hot path never allocates. A counting global allocator counts the
//! allocations made by this thread while the hot calls run.
#![cfg(not(loom))]

use ratethrottle::{Limiter, Limits};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: forwarded.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: forwarded.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn allocations(f: impl FnOnce()) -> u64 {
    COUNT.with(|c| c.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    COUNT.with(Cell::get)
}

#[test]
fn hot_path_never_allocates() {
    let lim = Limiter::new(&Limits {
        messages_per_window: 100,
        client_messages_per_window: 150,
        bytes_per_window: 1 << 20,
        max_concurrent_connections: 0,
        connections_per_window: 0,
        ..Limits::default()
    })
    .unwrap();
    // Warm up: the client and key exist, the process token is cached.
    let (_, c) = lim.connect_at(b"client", 0);
    assert!(lim.disconnect(c.unwrap()));
    assert!(lim.check_key_at(b"room", 1, 0).allowed);
    let n = allocations(|| {
        for i in 0..1000u64 {
            let (d, c) = lim.connect_at(b"client", i);
            assert!(d.allowed);
            let c = c.unwrap();
            for _ in 0..3 {
                let _ = lim.check_message_at(c, 100, i);
                let _ = lim.check_message(c, 100);
            }
            let _ = lim.check_key_at(b"room", 10, i);
            let _ = lim.check_key(b"room", 10);
            assert!(lim.disconnect(c));
        }
    });
    assert_eq!(n, 0, "the hot path allocated {n} times");
    // Denials (a flood being refused) do not allocate either.
    let (_, c) = lim.connect_at(b"client", 5000);
    let c = c.unwrap();
    let n = allocations(|| {
        for _ in 0..1000 {
            let _ = lim.check_message_at(c, 100, 5000);
            let _ = lim.check_message_at(c, 1 << 30, 5000);
        }
    });
    assert!(!lim.check_message_at(c, 100, 5000).allowed);
    assert_eq!(n, 0, "denials allocated {n} times");
}

#[test]
fn new_ids_and_reclaiming_idle_ones_never_allocate() {
    // B5: an id churn (every connect a new client, old ones reclaimed when
    // idle) inserts and reclaims table slots without allocating.
    let lim = Limiter::new(&Limits {
        window_ms: 10,
        connections_per_window: 5,
        max_clients: 64,
        max_connections: 64,
        ..Limits::default()
    })
    .unwrap();
    let _ = lim.connect_at(b"warm-up", 0);
    let n = allocations(|| {
        for i in 0..5000u64 {
            let id = i.to_le_bytes();
            // 40 ms apart per batch of 50: earlier ids hold nothing any more.
            let (d, c) = lim.connect_at(&id, (i / 50) * 40);
            assert!(d.allowed, "{i}: {d:?}");
            assert!(lim.disconnect(c.unwrap()));
            assert!(lim.check_key_at(&id, 1, (i / 50) * 40).allowed);
        }
    });
    assert_eq!(n, 0, "inserting or reclaiming ids allocated {n} times");
    assert!(lim.stats().unique_clients <= 64);
}
