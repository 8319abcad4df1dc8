//! loom models of every lock-free protocol of the engine (DESIGN.md,
//! "Concurrency proof"). Each runs the real engine code, compiled with
//! `--cfg loom` so that `src/sync.rs` hands it loom's atomics, on a tiny
//! region (one shard, a few slots) with a manual clock. Each is named for the
//! race it explores; its asserts say what must never happen.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release`
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use ratethrottle::{Limiter, Limits, Reason};

fn tiny(l: Limits) -> Arc<Limiter> {
    Arc::new(Limiter::new(&Limits { max_clients: 2, max_connections: 2, ..l }).unwrap())
}

/// C1: two connects race for the last concurrency slot of one client.
#[test]
fn loom_connects_race_for_the_last_concurrent_slot() {
    loom::model(|| {
        let lim = tiny(Limits { max_concurrent_connections: 1, ..Limits::default() });
        let ts: Vec<_> = (0..2)
            .map(|_| {
                let lim = lim.clone();
                thread::spawn(move || lim.connect_at(b"c", 0).0.allowed)
            })
            .collect();
        let allowed = ts.into_iter().map(|t| t.join().unwrap()).filter(|a| *a).count();
        assert_eq!(allowed, 1, "both connects took the last slot");
        assert_eq!(lim.client_connections(b"c"), 1);
    });
}

/// C1 for the rate window: two connects race for the last connection of the window.
#[test]
fn loom_connects_race_for_the_last_rate_slot() {
    loom::model(|| {
        let lim = tiny(Limits { connections_per_window: 1, max_concurrent_connections: 0, ..Limits::default() });
        let ts: Vec<_> = (0..2)
            .map(|_| {
                let lim = lim.clone();
                thread::spawn(move || lim.connect_at(b"c", 5).0)
            })
            .collect();
        let ds: Vec<_> = ts.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(ds.iter().filter(|d| d.allowed).count(), 1, "the rate limit admitted two");
        assert!(ds.iter().any(|d| d.reason == Reason::ConnectionRate));
    });
}

/// Duplicate-free insert: two threads insert one new id at once; it must
/// land in exactly one slot, holding both connections.
#[test]
fn loom_racing_inserts_of_one_id_share_one_slot() {
    loom::model(|| {
        let lim = tiny(Limits::default());
        let ts: Vec<_> = (0..2)
            .map(|_| {
                let lim = lim.clone();
                thread::spawn(move || lim.connect_at(b"new", 0).0.allowed)
            })
            .collect();
        for t in ts {
            assert!(t.join().unwrap());
        }
        let s = lim.stats();
        assert_eq!(s.tracked_clients, 1, "one id was inserted twice");
        assert_eq!(lim.client_connections(b"new"), 2);
    });
}

/// C2: a window rotation raced by an increment: no increment is lost or
/// counted twice, and the limit holds across the boundary.
#[test]
fn loom_rotation_races_increment() {
    loom::model(|| {
        let w: u64 = 10;
        let lim = tiny(Limits { window_ms: w as u32, messages_per_window: 2, ..Limits::default() });
        let (_, c) = lim.connect_at(b"c", 0);
        let c = c.unwrap();
        assert!(lim.check_message_at(c, 1, 9).allowed);
        let ts: Vec<_> = [9u64, 10]
            .into_iter()
            .map(|now| {
                let lim = lim.clone();
                thread::spawn(move || lim.check_message_at(c, 1, now).allowed)
            })
            .collect();
        let allowed = 1 + ts.into_iter().map(|t| t.join().unwrap()).filter(|a| *a).count() as u64;
        assert_eq!(lim.connection_info(c).unwrap().message_count, allowed, "an increment was lost or doubled");
        // Whatever the order, 2 in window 0 and at most 1 more at t=10 (prev weighs fully).
        assert!(allowed <= 2, "limit exceeded across the boundary: {allowed}");
    });
}

/// All or nothing: two threads check a message on one connection with room
/// for one, whose client also has an aggregate limit. Both may charge the
/// client before one wins the connection; the loser's client charge is
/// refunded, so the client ends with exactly the one message taken.
#[test]
fn loom_message_pair_is_all_or_nothing() {
    loom::model(|| {
        let lim = tiny(Limits {
            window_ms: 1000,
            messages_per_window: 1,
            client_messages_per_window: 5,
            ..Limits::default()
        });
        let (_, c) = lim.connect_at(b"c", 0);
        let c = c.unwrap();
        let ts: Vec<_> = (0..2)
            .map(|_| {
                let lim = lim.clone();
                thread::spawn(move || lim.check_message_at(c, 1, 0).allowed)
            })
            .collect();
        let allowed = ts.into_iter().map(|t| t.join().unwrap()).filter(|a| *a).count() as u64;
        assert_eq!(allowed, 1, "the connection's limit of 1 was not exact");
        assert_eq!(lim.connection_info(c).unwrap().message_count, 1);
        // A key shares the client's word: one more message makes 2 there.
        assert_eq!(lim.check_key_at(b"c", 1, 0).current, 2, "a client charge leaked or was lost");
    });
}

/// Connect racing disconnect on one client with one concurrent slot: the
/// count never goes negative or over the limit.
#[test]
fn loom_connect_races_disconnect() {
    loom::model(|| {
        let lim = tiny(Limits { max_concurrent_connections: 1, ..Limits::default() });
        let (_, c) = lim.connect_at(b"c", 0);
        let c = c.unwrap();
        let l2 = lim.clone();
        let t = thread::spawn(move || l2.connect_at(b"c", 0));
        assert!(lim.disconnect(c));
        let (d, h) = t.join().unwrap();
        let live = lim.client_connections(b"c");
        assert_eq!(live, d.allowed as u32, "concurrency count drifted");
        assert!(live <= 1);
        if let Some(h) = h {
            assert!(lim.disconnect(h));
        }
        assert_eq!(lim.client_connections(b"c"), 0);
    });
}

/// C5 / handle generations: a check on a handle races its close and the
/// reuse of its slot; the stale check must never charge the new connection.
#[test]
fn loom_stale_handle_races_slot_reuse() {
    loom::model(|| {
        let lim = Arc::new(Limiter::new(&Limits { max_clients: 2, max_connections: 1, ..Limits::default() }).unwrap());
        let (_, old) = lim.connect_at(b"a", 0);
        let old = old.unwrap();
        let l2 = lim.clone();
        let t = thread::spawn(move || l2.check_message_at(old, 7, 0));
        assert!(lim.disconnect(old));
        let (_, new) = lim.connect_at(b"b", 0);
        let new = new.unwrap();
        let d = t.join().unwrap();
        assert_ne!(old, new, "a slot was reused with the same handle");
        assert!(d.allowed || d.reason == Reason::UnknownConnection);
        let info = lim.connection_info(new).unwrap();
        assert_eq!((info.message_count, info.byte_count), (0, 0), "stale handle charged the new connection");
        assert!(!lim.disconnect(old), "a closed handle closed again");
    });
}

/// Slot reclamation: key "b" needs the only free-able slot, which "a" holds
/// with an expired window, while a check of "a" races it. The two keys never share
/// counts: "b" ends with exactly its own charge.
#[test]
fn loom_reclaim_races_stale_key_holder() {
    loom::model(|| {
        let w: u64 = 10;
        let lim = Arc::new(
            Limiter::new(&Limits {
                window_ms: w as u32,
                client_messages_per_window: 1,
                max_clients: 1,
                max_connections: 1,
                ..Limits::default()
            })
            .unwrap(),
        );
        // The table has two slots per max_client: a live client holds the
        // other one, so "a"'s slot is the only one "b" can reclaim.
        assert!(lim.connect_at(b"z", 0).0.allowed);
        assert!(lim.check_key_at(b"a", 0, 0).allowed);
        assert!(!lim.check_key_at(b"c", 0, 0).allowed, "the table should be full");
        let l2 = lim.clone();
        let ta = thread::spawn(move || l2.check_key_at(b"a", 0, 3 * w));
        let db = lim.check_key_at(b"b", 0, 3 * w);
        let da = ta.join().unwrap();
        assert!(!(da.allowed && db.allowed), "two keys were admitted into one slot");
        if db.allowed {
            // "b" holds exactly its own one message: the next is denied.
            let again = lim.check_key_at(b"b", 0, 3 * w);
            assert_eq!(again.reason, Reason::ClientMessageRate, "b's count is not its own");
        }
        if da.allowed {
            assert_eq!(lim.check_key_at(b"a", 0, 3 * w).reason, Reason::ClientMessageRate);
        }
        assert!(lim.stats().tracked_clients <= 2);
    });
}

/// Run-time limit updates are seen whole: a check never mixes old and new fields.
#[test]
fn loom_limits_update_is_seen_whole() {
    loom::model(|| {
        let lim = tiny(Limits { messages_per_window: 1, max_message_size: 10, ..Limits::default() });
        let (_, c) = lim.connect_at(b"c", 0);
        let c = c.unwrap();
        let l2 = lim.clone();
        let t = thread::spawn(move || {
            l2.update_limits_at(
                &Limits {
                    messages_per_window: 2,
                    max_message_size: 20,
                    max_clients: 2,
                    max_connections: 2,
                    ..Limits::default()
                },
                0,
            )
            .unwrap()
        });
        let l = lim.limits();
        assert!(
            (l.messages_per_window, l.max_message_size) == (1, 10)
                || (l.messages_per_window, l.max_message_size) == (2, 20),
            "torn limits: {l:?}"
        );
        let _ = lim.check_message_at(c, 15, 0);
        t.join().unwrap();
    });
}
