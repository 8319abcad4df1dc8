//! The engine against a simple sequential model, over random operation
//! sequences and a fake clock (proptest). The model shares no code with the
//! engine: it keeps a count per absolute window in a map and finds
//! `retry_after` by walking forward one millisecond at a time.
#![cfg(not(loom))]

use proptest::prelude::*;
use ratethrottle::{Conn, Decision, Limiter, Limits, Reason, RETRY_NEVER};
use std::collections::HashMap;

#[derive(Default, Clone)]
struct Windows(HashMap<u64, u64>);

impl Windows {
    fn pair(&self, now: u64, w: u64) -> (u64, u64, u64) {
        let id = now / w;
        let prev = if id == 0 { 0 } else { *self.0.get(&(id - 1)).unwrap_or(&0) };
        (prev, *self.0.get(&id).unwrap_or(&0), now % w)
    }
    fn passes(&self, now: u64, w: u64, k: u64, limit: u64) -> bool {
        if limit == 0 {
            return true;
        }
        let (p, c, e) = self.pair(now, w);
        (p as u128) * ((w - e) as u128) + (c as u128 + k as u128) * (w as u128) <= (limit as u128) * (w as u128)
    }
    /// Walks forward until the request passes (no other traffic).
    fn retry(&self, now: u64, w: u64, k: u64, limit: u64) -> u64 {
        if k > limit {
            return RETRY_NEVER;
        }
        (0..=3 * w).find(|t| self.passes(now + t, w, k, limit)).expect("passes within three windows")
    }
    fn add(&mut self, now: u64, w: u64, k: u64) {
        let e = self.0.entry(now / w).or_default();
        *e = e.saturating_add(k);
    }
}

#[derive(Default, Clone)]
struct ClientModel {
    connects: Windows,
    active: u64,
    msgs: Windows,
    bytes: Windows,
}

struct ConnModel {
    /// `None`: allowed untracked (fail open with a full table), so only
    /// the per-connection limits apply to it.
    client: Option<Vec<u8>>,
    msgs: Windows,
    bytes: Windows,
    open: bool,
    total_msgs: u64,
    total_bytes: u64,
}

struct Model {
    l: Limits,
    clients: HashMap<Vec<u8>, ClientModel>,
    conns: Vec<ConnModel>,
}

/// (reason, limit, retry) of each failing check, in check order.
type Fails = Vec<(Reason, u64, u64)>;

impl Model {
    fn w(&self) -> u64 {
        self.l.window_ms as u64
    }

    /// Whether a client or key holds information at `now`: a live
    /// connection, or a count in the current or the previous window. Only
    /// an id that holds none may be refused for want of a table slot.
    fn holds_information(&self, id: &[u8], now: u64) -> bool {
        let w = self.w();
        self.clients.get(id).is_some_and(|c| {
            let counts = |win: &Windows| {
                let (p, c, _) = win.pair(now, w);
                p | c != 0
            };
            c.active != 0 || counts(&c.connects) || counts(&c.msgs) || counts(&c.bytes)
        })
    }

    fn connect(&mut self, id: &[u8], now: u64) -> (bool, Reason, u64) {
        let w = self.w();
        let l = self.l;
        let c = self.clients.entry(id.to_vec()).or_default();
        let mut fails: Fails = vec![];
        if l.max_concurrent_connections != 0 && c.active + 1 > l.max_concurrent_connections as u64 {
            fails.push((Reason::ConcurrentConnections, l.max_concurrent_connections as u64, 0));
        } else if !c.connects.passes(now, w, 1, l.connections_per_window as u64) {
            let r = c.connects.retry(now, w, 1, l.connections_per_window as u64);
            fails.push((Reason::ConnectionRate, l.connections_per_window as u64, r));
        }
        if let Some(f) = fails.first() {
            if !l.dry_run {
                return (false, f.0, f.2);
            }
        }
        c.active += 1;
        c.connects.add(now, w, 1);
        let reason = fails.first().map_or(Reason::Ok, |f| f.0);
        (true, reason, fails.first().map_or(0, |f| f.2))
    }

    /// `msgs` messages (1, or 0 for a continuation) of `size` bytes, in a
    /// message of `message_size` bytes so far.
    fn message(&mut self, conn: usize, msgs: u64, size: u64, message_size: u64, now: u64) -> (bool, Reason, u64) {
        let w = self.w();
        let l = self.l;
        if message_size < size {
            return (false, Reason::InvalidArgument, 0);
        }
        // A continuation's message rates are not judged.
        let rate = |limit: u32| if msgs == 0 { 0 } else { limit as u64 };
        let Some(cm) = self.conns.get(conn).filter(|c| c.open) else {
            return (false, Reason::UnknownConnection, 0);
        };
        let client = cm.client.as_ref().and_then(|id| self.clients.get(id)).cloned().unwrap_or_default();
        let tracked = cm.client.is_some();
        let client_rate = |limit: u32| if tracked { rate(limit) } else { 0 };
        let client_bytes = if tracked { l.client_bytes_per_window } else { 0 };
        let mut fails: Fails = vec![];
        if l.max_message_size != 0 && message_size > l.max_message_size as u64 {
            fails.push((Reason::MessageTooLarge, l.max_message_size as u64, RETRY_NEVER));
            if !l.dry_run {
                return (false, Reason::MessageTooLarge, RETRY_NEVER);
            }
        }
        let checks: [(Reason, &Windows, u64, u64); 4] = [
            (Reason::MessageRate, &cm.msgs, msgs, rate(l.messages_per_window)),
            (Reason::Bandwidth, &cm.bytes, size, l.bytes_per_window),
            (Reason::ClientMessageRate, &client.msgs, msgs, client_rate(l.client_messages_per_window)),
            (Reason::ClientBandwidth, &client.bytes, size, client_bytes),
        ];
        let mut window_fails: Fails = vec![];
        for (reason, win, k, limit) in checks {
            if !win.passes(now, w, k, limit) {
                window_fails.push((reason, limit, win.retry(now, w, k, limit)));
            }
        }
        let retry = window_fails.iter().map(|f| f.2).max().unwrap_or(0);
        if let Some(f) = window_fails.first() {
            fails.push((f.0, f.1, retry));
        }
        if let Some(f) = fails.first() {
            if !l.dry_run {
                return (false, f.0, f.2);
            }
        }
        let cm = &mut self.conns[conn];
        cm.msgs.add(now, w, msgs);
        cm.bytes.add(now, w, size);
        cm.total_msgs += msgs;
        cm.total_bytes = cm.total_bytes.saturating_add(size);
        if let Some(id) =
            cm.client.as_ref().filter(|_| l.client_messages_per_window != 0 || l.client_bytes_per_window != 0)
        {
            let c = self.clients.get_mut(id).unwrap();
            c.msgs.add(now, w, msgs);
            c.bytes.add(now, w, size);
        }
        (true, fails.first().map_or(Reason::Ok, |f| f.0), fails.first().map_or(0, |f| f.2))
    }

    fn key(&mut self, key: &[u8], size: u64, now: u64) -> (bool, Reason, u64) {
        let w = self.w();
        let l = self.l;
        if l.client_messages_per_window == 0 && l.client_bytes_per_window == 0 {
            return (true, Reason::Ok, 0);
        }
        let c = self.clients.entry(key.to_vec()).or_default();
        let checks = [
            (Reason::ClientMessageRate, &c.msgs, 1, l.client_messages_per_window as u64),
            (Reason::ClientBandwidth, &c.bytes, size, l.client_bytes_per_window),
        ];
        let mut fails: Fails = vec![];
        for (reason, win, k, limit) in checks {
            if !win.passes(now, w, k, limit) {
                fails.push((reason, limit, win.retry(now, w, k, limit)));
            }
        }
        let retry = fails.iter().map(|f| f.2).max().unwrap_or(0);
        if let Some(f) = fails.first() {
            if !l.dry_run {
                return (false, f.0, retry);
            }
        }
        c.msgs.add(now, w, 1);
        c.bytes.add(now, w, size);
        (true, fails.first().map_or(Reason::Ok, |f| f.0), if fails.is_empty() { 0 } else { retry })
    }
}

#[derive(Clone, Debug)]
enum Op {
    Connect(u8),
    Disconnect(u8),
    Message(u8, u64),
    /// A continuation: this part's size, and the message's size so far.
    Continuation(u8, u64, u64),
    Key(u8, u64),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..4).prop_map(Op::Connect),
        1 => any::<u8>().prop_map(Op::Disconnect),
        6 => (any::<u8>(), prop_oneof![0u64..64, 0u64..300, Just(u64::MAX)]).prop_map(|(c, s)| Op::Message(c, s)),
        2 => (any::<u8>(), 0u64..300, prop_oneof![5 => 0u64..600, 1 => Just(0u64)])
            .prop_map(|(c, s, more)| Op::Continuation(c, s, if more == 0 { s / 2 } else { s + more })),
        2 => (0u8..6, 0u64..200).prop_map(|(k, s)| Op::Key(k, s)),
        3 => prop_oneof![0u64..5, 0u64..400, 0u64..3000].prop_map(Op::Advance),
    ]
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        prop_oneof![Just(1u32), Just(7), Just(100), Just(1000)],
        0u32..5,
        0u32..4,
        0u32..8,
        prop_oneof![Just(0u64), 1u64..800],
        prop_oneof![Just(0u32), 1u32..300],
        prop_oneof![Just(0u32), 1u32..10],
        prop_oneof![Just(0u64), 1u64..1000],
        any::<bool>(),
    )
        .prop_map(|(w, cpw, conc, mpw, bpw, maxsz, cm, cb, dry)| Limits {
            window_ms: w,
            connections_per_window: cpw,
            max_concurrent_connections: conc,
            messages_per_window: mpw,
            bytes_per_window: bpw,
            max_message_size: maxsz,
            client_messages_per_window: cm,
            client_bytes_per_window: cb,
            max_clients: 64,
            max_connections: 64,
            fail_open: false,
            dry_run: dry,
        })
}

fn key_name(k: u8) -> Vec<u8> {
    // Keys 0..3 coincide with client ids: keys and clients share the table.
    match k {
        0..=3 => vec![b'c', k],
        4 => Vec::new(),
        _ => b"room\0with\xffbytes".to_vec(),
    }
}

fn check(d: Decision, m: (bool, Reason, u64), what: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!((d.allowed, d.reason), (m.0, m.1), "{}: {:?}", what, d);
    if d.reason != Reason::Ok {
        prop_assert_eq!(d.retry_after_ms, m.2, "{}: retry_after of {:?}", what, d);
    } else {
        prop_assert_eq!(d.retry_after_ms, 0, "{}", what);
    }
    Ok(())
}

fn run(l: Limits, ops: &[Op], start: u64) -> Result<(), TestCaseError> {
    let lim = Limiter::new(&l).unwrap();
    let mut m = Model { l, clients: HashMap::new(), conns: vec![] };
    let mut handles: Vec<Conn> = vec![];
    let mut now = start;
    let mut untracked = 0u64;
    for (i, op) in ops.iter().enumerate() {
        let what = format!("op {i} {op:?} at {now}");
        match *op {
            Op::Connect(c) => {
                let id = vec![b'c', c];
                let (d, h) = lim.connect_at(&id, now);
                if d.reason == Reason::TableFull {
                    prop_assert!(l.max_clients < 6, "{}: {:?} with a slot for every id", what, d);
                    let open = m.conns.iter().filter(|c| c.open).count();
                    prop_assert!(
                        !m.holds_information(&id, now) || open == l.max_connections as usize,
                        "{}: {:?} for a client that holds information",
                        what,
                        d
                    );
                    // Fail open, and dry run, allow it untracked.
                    let untracked_ok = l.fail_open || l.dry_run;
                    prop_assert_eq!((d.allowed, d.retry_after_ms), (untracked_ok, 0), "{}", what);
                    prop_assert_eq!(h.is_some(), untracked_ok && open < l.max_connections as usize, "{}", what);
                    if untracked_ok {
                        untracked += 1;
                    }
                    if let Some(h) = h {
                        // Untracked: its own limits only, no client's.
                        handles.push(h);
                        m.conns.push(ConnModel {
                            client: None,
                            msgs: Windows::default(),
                            bytes: Windows::default(),
                            open: true,
                            total_msgs: 0,
                            total_bytes: 0,
                        });
                    }
                    continue;
                }
                let md = m.connect(&id, now);
                check(d, md, &what)?;
                prop_assert_eq!(h.is_some(), d.allowed);
                if let Some(h) = h {
                    handles.push(h);
                    m.conns.push(ConnModel {
                        client: Some(id),
                        msgs: Windows::default(),
                        bytes: Windows::default(),
                        open: true,
                        total_msgs: 0,
                        total_bytes: 0,
                    });
                }
            }
            Op::Disconnect(x) => {
                if handles.is_empty() {
                    continue;
                }
                let k = x as usize % handles.len();
                let closed = lim.disconnect(handles[k]);
                prop_assert_eq!(closed, m.conns[k].open, "{}", what);
                if m.conns[k].open {
                    m.conns[k].open = false;
                    if let Some(client) = &m.conns[k].client {
                        m.clients.get_mut(client).unwrap().active -= 1;
                    }
                }
            }
            Op::Message(x, size) => {
                if handles.is_empty() {
                    continue;
                }
                let k = x as usize % handles.len();
                let d = lim.check_message_at(handles[k], size, now);
                check(d, m.message(k, 1, size, size, now), &what)?;
            }
            Op::Continuation(x, size, total) => {
                if handles.is_empty() {
                    continue;
                }
                let k = x as usize % handles.len();
                let d = lim.check_continuation_at(handles[k], size, total, now);
                check(d, m.message(k, 0, size, total, now), &what)?;
            }
            Op::Key(k, size) => {
                let key = key_name(k);
                let d = lim.check_key_at(&key, size, now);
                if d.reason == Reason::TableFull {
                    prop_assert!(l.max_clients < 6, "{}: {:?} with a slot for every id", what, d);
                    prop_assert!(!m.holds_information(&key, now), "{}: {:?} for a key that holds information", what, d);
                    let untracked_ok = l.fail_open || l.dry_run;
                    prop_assert_eq!((d.allowed, d.retry_after_ms), (untracked_ok, 0), "{}", what);
                    if untracked_ok {
                        untracked += 1;
                    }
                    continue;
                }
                check(d, m.key(&key, size, now), &what)?;
            }
            Op::Advance(ms) => now = now.saturating_add(ms),
        }
    }
    let s = lim.stats();
    let open: Vec<&ConnModel> = m.conns.iter().filter(|c| c.open).collect();
    prop_assert_eq!(s.active_connections, open.len() as u64);
    prop_assert_eq!(s.untracked_allowed, untracked);
    prop_assert_eq!(s.total_messages, m.conns.iter().map(|c| c.total_msgs).sum::<u64>());
    prop_assert_eq!(s.total_bytes, m.conns.iter().map(|c| c.total_bytes).fold(0u64, u64::saturating_add));
    for c in 0u8..4 {
        let id = vec![b'c', c];
        let active = m.clients.get(&id).map_or(0, |c| c.active);
        prop_assert_eq!(lim.client_connections(&id) as u64, active);
    }
    for (k, h) in handles.iter().enumerate() {
        let info = lim.connection_info(*h);
        prop_assert_eq!(info.is_some(), m.conns[k].open);
        if let Some(info) = info {
            prop_assert_eq!(info.message_count, m.conns[k].total_msgs);
            prop_assert_eq!(info.byte_count, m.conns[k].total_bytes);
        }
    }
    Ok(())
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=N runs more.
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn engine_matches_the_model(l in limits(), ops in proptest::collection::vec(op(), 1..120), start in prop_oneof![Just(0u64), 0u64..1_000_000, Just(u64::MAX / 2)]) {
        run(l, &ops, start)?;
    }

    /// T4: window ids are 32 bits in the packed words. A trace that starts
    /// shortly before window id 2^32 and runs across it decides exactly
    /// like the model, which keeps absolute (64-bit) window ids.
    #[test]
    fn engine_matches_the_model_across_the_window_id_wrap(l in limits(), ops in proptest::collection::vec(op(), 1..120), before in 0u64..4000) {
        let w = l.window_ms as u64;
        let start = (1u64 << 32) * w - before.min(3 * w);
        run(l, &ops, start)?;
    }

    /// B1/B2/B11 with a table of 1 to 3 clients: more ids and keys than
    /// slots. A `TableFull` denial is only ever given to an id that holds no
    /// information (no live connection, every window expired), and every
    /// other decision is the model's: a client or key that holds
    /// information is never evicted or reset to make room for another.
    /// With fail open (or dry run) the refused id is allowed untracked: its
    /// connection keeps its own limits and no client's, and
    /// `untracked_allowed` counts it.
    #[test]
    fn a_full_table_never_forgets_an_id_that_holds_information(mut l in limits(), max_clients in 1u32..=3, fail_open in any::<bool>(), ops in proptest::collection::vec(op(), 1..160), start in 0u64..1_000_000) {
        l.max_clients = max_clients;
        l.fail_open = fail_open;
        run(l, &ops, start)?;
    }

    /// I2: on any trace, each fixed window admits at most L messages, and any
    /// interval of length W at most 2L (the estimate never undercounts the
    /// current window).
    #[test]
    fn admitted_counts_stay_within_the_sliding_window_bounds(w in 1u32..2000, limit in 1u32..40, gaps in proptest::collection::vec(0u64..400, 1..600)) {
        let l = Limits { window_ms: w, messages_per_window: limit, bytes_per_window: 0, max_message_size: 0, ..Limits::default() };
        let lim = Limiter::new(&l).unwrap();
        let c = lim.connect_at(b"x", 0).1.unwrap();
        let mut now = 0u64;
        let mut admitted = Vec::new();
        for g in gaps {
            // Bursts: most gaps are 0 (many messages at one instant).
            now += g.saturating_sub(300);
            if lim.check_message_at(c, 1, now).allowed {
                admitted.push(now);
            }
        }
        let (w, limit) = (w as u64, limit as usize);
        for (i, &t) in admitted.iter().enumerate() {
            let fixed = admitted.iter().filter(|&&u| u / w == t / w).count();
            prop_assert!(fixed <= limit, "window {}: {} > {}", t / w, fixed, limit);
            let sliding = admitted[i..].iter().take_while(|&&u| u < t + w).count();
            prop_assert!(sliding <= 2 * limit, "[{}, {}): {} > 2 * {}", t, t + w, sliding, limit);
        }
    }

    /// I3/T9: a denied request passes at now + retry_after and not one ms earlier.
    #[test]
    fn retry_after_is_exact(w in 1u32..5000, limit in 1u32..50, burst in 1u32..120, gap in 0u64..20_000, size in 1u64..100) {
        let l = Limits { window_ms: w, messages_per_window: limit, bytes_per_window: 0, max_message_size: 0, ..Limits::default() };
        let lim = Limiter::new(&l).unwrap();
        let (_, c) = lim.connect_at(b"x", 0);
        let c = c.unwrap();
        let mut denied = None;
        for i in 0..burst {
            let now = i as u64 * gap / burst.max(1) as u64;
            let d = lim.check_message_at(c, size, now);
            if !d.allowed { denied = Some((now, d)); break; }
        }
        if let Some((at, d)) = denied {
            prop_assert!(d.retry_after_ms > 0 && d.retry_after_ms <= 2 * w as u64 + 1);
            // A second denial at the same instant changes nothing (denials are not counted).
            prop_assert_eq!(lim.check_message_at(c, size, at).retry_after_ms, d.retry_after_ms);
            prop_assert!(!lim.check_message_at(c, size, at + d.retry_after_ms - 1).allowed);
            prop_assert!(lim.check_message_at(c, size, at + d.retry_after_ms).allowed);
        }
    }
}
