//! Sequences of C ABI calls on one or two limiters, checked against a model.
//!
//! The input is decoded (with `arbitrary`) into a setup and a list of calls:
//! limiters with small capacities (1..=64 clients and connections) and any
//! limits, valid or not, with any `struct_size`; a second limiter that is
//! independent or attached to the first one's region; ids that are empty,
//! `(NULL, 0)`, `(NULL, n > 0)`, longer than `PTRDIFF_MAX`, or bytes from a
//! small pool; sizes from 0 to `UINT64_MAX`; live, closed, forged and zero
//! handles; NULL and foreign limiter pointers; a fake clock that moves
//! forwards, backwards and jumps, and sometimes the real clock.
//!
//! After every call the harness checks what the header promises, and panics
//! (a fuzzer finding) when it does not hold:
//! - statuses and decisions of bad arguments are exactly the documented ones;
//! - a denial carries `retry_after_ms > 0` unless its reason is concurrency,
//!   unknown connection, invalid argument or table full, and a finite
//!   `retry_after_ms` is at most two windows (plus the plain forms' clock margin);
//! - an allowed decision has `retry_after_ms == 0` and reason `RT_OK`, except
//!   in dry-run mode (and fail-open `RT_TABLE_FULL`);
//! - a client never gets more live connections than `max_concurrent_connections`
//!   through `rt_connect`, and concurrency denials happen exactly at the limit;
//! - `rt_limiter_stats` agrees with the model after every call: live
//!   connections, clients, allowed and denied counts by reason, message and
//!   byte totals, the limits in force; `rt_client_connections` too;
//! - every violation record is delivered once, to the ring or to
//!   `violations_dropped`, and to the handle's callback;
//! - `retry_after_ms` is exact: on a copy of the region (caller memory), the
//!   same request is denied at `now + retry - 1` and allowed at `now + retry`;
//! - output buffers are written only within `struct_size` / `cap`, with
//!   snprintf semantics for text;
//! - no panic reaches the boundary (libfuzzer-sys aborts on any panic, so a
//!   caught one is a finding too, not an `RT_STATUS_PANIC`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratethrottle::ffi::*;
use ratethrottle_fuzz::arbitrary::{self, Arbitrary, Unstructured};
use ratethrottle_fuzz::*;
use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicU64, Ordering};

const MAX_OPS: usize = 256;
const MAX_PROBES: u32 = 32;
/// Beyond this many windows between the first write and now, 32-bit window
/// ids may alias (documented); exactness is then not checked.
const ALIAS_WINDOWS: u64 = 1 << 29;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LimSel {
    A,
    B,
    Null,
    Foreign,
}

impl<'a> Arbitrary<'a> for LimSel {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0u8..=15)? {
            0..=8 => LimSel::A,
            9..=13 => LimSel::B,
            14 => LimSel::Null,
            _ => LimSel::Foreign,
        })
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Id {
    Pick(IdPick),
    /// `(NULL, 0)`: the empty id.
    NullEmpty,
    /// `(ptr, 0)`: also the empty id.
    Empty,
    /// `(NULL, n > 0)`: refused.
    NullLen(u64),
    /// A valid pointer with a length above `PTRDIFF_MAX`: refused unread.
    HugeLen(u64),
}

#[derive(Debug, Clone, Copy)]
enum Time {
    Same,
    Fwd(u16),
    Windows(u8),
    FwdBig(u32),
    Back(u16),
    Set(u64),
    /// The plain form: the library's own clock.
    Plain,
}

impl<'a> Arbitrary<'a> for Time {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0u8..=39)? {
            0..=11 => Time::Same,
            12..=25 => Time::Fwd(u.int_in_range(0..=u16::MAX)? % 2048),
            26..=32 => Time::Windows(u.arbitrary()?),
            33 => Time::FwdBig(u.arbitrary()?),
            34 | 35 => Time::Back(u.arbitrary()?),
            36 => Time::Set(u.arbitrary()?),
            _ => Time::Plain,
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Handle {
    Live(u8),
    Closed(u8),
    Zero,
    Raw(u64),
    Forged {
        index: u8,
        generation: u8,
    },
    /// A live handle of the other limiter's region.
    Other(u8),
}

impl<'a> Arbitrary<'a> for Handle {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0u8..=15)? {
            0..=9 => Handle::Live(u.arbitrary()?),
            10 | 11 => Handle::Closed(u.arbitrary()?),
            12 => Handle::Zero,
            13 => Handle::Raw(u.arbitrary()?),
            14 => Handle::Forged { index: u.arbitrary()?, generation: u.arbitrary()? },
            _ => Handle::Other(u.arbitrary()?),
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Size {
    Small(u8),
    Mid(u16),
    Big(u32),
    Max,
    Raw(u64),
    NearMessageLimit(i8),
    NearBytesLimit(i8),
}

impl<'a> Arbitrary<'a> for Size {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0u8..=15)? {
            0..=7 => Size::Small(u.arbitrary()?),
            8 | 9 => Size::Mid(u.arbitrary()?),
            10 => Size::Big(u.arbitrary()?),
            11 => Size::Max,
            12 => Size::Raw(u.arbitrary()?),
            13 => Size::NearMessageLimit(u.arbitrary()?),
            _ => Size::NearBytesLimit(u.arbitrary()?),
        })
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum MemKind {
    Exact,
    Larger,
    TooSmall,
    Misaligned,
    Null,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Make {
    New,
    InitIn(MemKind),
    /// B only: attach to A's region (when A is in caller memory).
    Attach(MemKind),
    /// B only: no second limiter.
    Nothing,
}

#[derive(Debug, Clone)]
enum Op {
    Connect { lim: LimSel, id: Id, t: Time, null_out: u8 },
    CheckConnection { lim: LimSel, id: Id, t: Time },
    Register { lim: LimSel, id: Id, null_out: u8 },
    Disconnect { lim: LimSel, h: Handle },
    Message { lim: LimSel, h: Handle, size: Size, t: Time, part: Option<Part> },
    Key { lim: LimSel, key: Id, size: Size, t: Time },
    ClientConnections { lim: LimSel, id: Id },
    Info { lim: LimSel, h: Handle, size: u8, null_out: u8 },
    Stats { lim: LimSel, size: u16, null_out: u8 },
    Prometheus { lim: LimSel, cap: u16, null_buf: u8 },
    Drain { lim: LimSel, cap: u8, null_out: u8 },
    Update { lim: LimSel, null_limits: u8, t: Time },
    Callback { lim: LimSel, on: bool },
    Reap { lim: LimSel },
    Free { b: bool },
    Reattach { b: bool, mem: MemKind },
    Strings { v: u32 },
}

impl<'a> Arbitrary<'a> for Op {
    /// Weighted: the calls that change state come most often.
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let a = |u: &mut Unstructured<'a>| LimSel::arbitrary(u);
        Ok(match u.int_in_range(0u8..=63)? {
            0..=13 => Op::Connect { lim: a(u)?, id: u.arbitrary()?, t: u.arbitrary()?, null_out: u.arbitrary()? },
            14..=29 => Op::Message {
                lim: a(u)?,
                h: u.arbitrary()?,
                size: u.arbitrary()?,
                t: u.arbitrary()?,
                part: u.arbitrary()?,
            },
            30..=37 => Op::Disconnect { lim: a(u)?, h: u.arbitrary()? },
            38..=43 => Op::Key { lim: a(u)?, key: u.arbitrary()?, size: u.arbitrary()?, t: u.arbitrary()? },
            44 | 45 => Op::CheckConnection { lim: a(u)?, id: u.arbitrary()?, t: u.arbitrary()? },
            46 | 47 => Op::Register { lim: a(u)?, id: u.arbitrary()?, null_out: u.arbitrary()? },
            48 => Op::ClientConnections { lim: a(u)?, id: u.arbitrary()? },
            49 => Op::Info { lim: a(u)?, h: u.arbitrary()?, size: u.arbitrary()?, null_out: u.arbitrary()? },
            50 => Op::Stats { lim: a(u)?, size: u.arbitrary()?, null_out: u.arbitrary()? },
            51 => Op::Prometheus { lim: a(u)?, cap: u.arbitrary()?, null_buf: u.arbitrary()? },
            52 | 53 => Op::Drain { lim: a(u)?, cap: u.arbitrary()?, null_out: u.arbitrary()? },
            54 | 55 => Op::Update { lim: a(u)?, null_limits: u.arbitrary()?, t: u.arbitrary()? },
            56 | 57 => Op::Callback { lim: a(u)?, on: u.arbitrary()? },
            58 => Op::Reap { lim: a(u)? },
            59 => Op::Free { b: u.arbitrary()? },
            60 | 61 => Op::Reattach { b: u.arbitrary()?, mem: u.arbitrary()? },
            _ => Op::Strings { v: u.arbitrary()? },
        })
    }
}

/// `Op::Message`'s `part`: None for `rt_check_message`; Some for
/// `rt_check_continuation`, with the bytes of the message before this part
/// (`short`: a message size below the part's, which must be refused).
#[derive(Debug, Clone, Arbitrary)]
struct Part {
    before: Size,
    short: bool,
}

/// Counters the model expects in `rt_stats`.
#[derive(Debug, Default, Clone)]
struct Counts {
    connections_allowed: u64,
    untracked_allowed: u64,
    denied: [u64; RT_REASON_COUNT as usize],
    dry_run_denied: u64,
    total_messages: u64,
    total_bytes: u64,
    keys_allowed: u64,
    /// Violation records produced (ring or dropped).
    records: u64,
    /// Records taken out with rt_drain_violations.
    drained: u64,
}

struct Region {
    /// The caller memory, for regions made with init_in (never freed before
    /// the handles over it).
    mem: Option<Aligned>,
    len: usize,
    /// rt_region_size of its limits.
    total: usize,
    limits: rt_limits,
    /// Live handles and their client (None: untracked, fail-open).
    live: Vec<(u64, Option<Vec<u8>>)>,
    closed: Vec<u64>,
    clients: HashMap<Vec<u8>, u64>,
    c: Counts,
    /// Latest clock any write used, earliest one, and whether exactness
    /// can be checked (no window change since).
    max_now: u64,
    min_now: u64,
    exact: bool,
    /// Windows that passed under earlier window lengths (for the alias bound).
    extra_windows: u64,
}

struct Lim {
    ptr: *mut rt_limiter,
    region: usize,
    cb: Box<AtomicU64>,
    cb_on: bool,
    cb_expected: u64,
}

struct World {
    regions: Vec<Region>,
    lims: [Option<Lim>; 2],
    now: u64,
    foreign: Vec<u64>,
    probes: u32,
}

/// The callback: counts calls and checks the record.
unsafe extern "C" fn on_violation(v: *const rt_violation, user_data: *mut c_void) {
    assert!(!v.is_null() && !user_data.is_null());
    // SAFETY: the library passes a record valid during the call.
    let v = unsafe { &*v };
    assert!((RT_CONNECTION_RATE..=RT_TABLE_FULL).contains(&v.reason), "callback record reason {}", v.reason);
    // SAFETY: user_data is the AtomicU64 of a Lim, alive while the callback is set.
    unsafe { &*(user_data as *const AtomicU64) }.fetch_add(1, Ordering::Relaxed);
}

fn windowed(reason: u32) -> bool {
    matches!(reason, RT_CONNECTION_RATE | RT_MESSAGE_RATE | RT_BANDWIDTH | RT_CLIENT_MESSAGE_RATE | RT_CLIENT_BANDWIDTH)
}

fn deny_invalid(d: &rt_decision) {
    assert_eq!(
        *d,
        rt_decision {
            allowed: false,
            reason: RT_INVALID_ARGUMENT,
            retry_after_ms: 0,
            limit: 0,
            remaining: 0,
            current: 0
        }
    );
}

/// The rules every decision obeys.
fn check_decision(d: &rt_decision, l: &rt_limits) {
    assert!(d.reason < RT_REASON_COUNT, "reason {} out of range", d.reason);
    tally::add(&tally::REASONS[if d.allowed { 11 } else { d.reason as usize }]);
    if d.allowed && d.reason != RT_OK {
        tally::add(&tally::DRY);
    }
    let dry = l.flags & RT_FLAG_DRY_RUN != 0;
    let fail_open = l.flags & RT_FLAG_FAIL_OPEN != 0;
    if d.allowed {
        match d.reason {
            RT_OK => {}
            RT_TABLE_FULL => {
                assert!(fail_open || dry, "allowed with RT_TABLE_FULL without fail-open or dry run: {d:?}")
            }
            r => assert!(dry && r != RT_UNKNOWN_CONNECTION && r != RT_INVALID_ARGUMENT, "allowed with reason: {d:?}"),
        }
        if !dry || d.reason == RT_OK {
            assert_eq!(d.retry_after_ms, 0, "allowed with a retry_after: {d:?}");
        }
    } else {
        assert_ne!(d.reason, RT_OK, "denied with RT_OK: {d:?}");
        match d.reason {
            RT_CONCURRENT_CONNECTIONS | RT_UNKNOWN_CONNECTION | RT_INVALID_ARGUMENT | RT_TABLE_FULL => {
                assert_eq!(d.retry_after_ms, 0, "{d:?}")
            }
            _ => assert!(d.retry_after_ms > 0, "denied without retry_after: {d:?}"),
        }
    }
    if windowed(d.reason) && d.retry_after_ms != RT_RETRY_NEVER {
        // The plain forms add the coarse clock's margin to a wait.
        let margin = ratethrottle::clock::wait_margin_ms();
        assert!(
            d.retry_after_ms <= 2 * l.window_ms as u64 + margin,
            "retry_after {} beyond two windows of {} ms (+ {margin} ms): {d:?}",
            d.retry_after_ms,
            l.window_ms
        );
    }
}

/// An id as (pointer, length) plus its bytes when valid.
struct IdArg {
    ptr: *const u8,
    len: usize,
    bytes: Option<Vec<u8>>,
    /// `(NULL, n > 0)` (as opposed to a length above PTRDIFF_MAX).
    null: bool,
    _keep: Vec<u8>,
}

fn id_arg(id: &Id) -> IdArg {
    match id {
        Id::Pick(p) => {
            let b = p.bytes();
            // A buffer of exactly the id's length: ASan sees any over-read.
            // (An empty Vec's pointer is dangling but not NULL.)
            let keep = b.clone();
            let ptr = keep.as_ptr();
            IdArg { ptr, len: keep.len(), bytes: Some(b), null: false, _keep: keep }
        }
        Id::NullEmpty => IdArg { ptr: null(), len: 0, bytes: Some(Vec::new()), null: false, _keep: Vec::new() },
        Id::Empty => {
            let keep = vec![b'z'; 1];
            IdArg { ptr: keep.as_ptr(), len: 0, bytes: Some(Vec::new()), null: false, _keep: keep }
        }
        Id::NullLen(n) => IdArg { ptr: null(), len: (*n as usize).max(1), bytes: None, null: true, _keep: Vec::new() },
        Id::HugeLen(n) => {
            let keep = vec![b'h'; 8];
            let len = (isize::MAX as usize).saturating_add(1 + (*n as usize) % 1024).max(isize::MAX as usize + 1);
            IdArg { ptr: keep.as_ptr(), len, bytes: None, null: false, _keep: keep }
        }
    }
}

impl World {
    fn lim(&self, s: LimSel) -> (*mut rt_limiter, Option<usize>) {
        match s {
            LimSel::A => self.lims[0].as_ref().map_or((null_mut(), None), |l| (l.ptr, Some(0))),
            LimSel::B => self.lims[1].as_ref().map_or((null_mut(), None), |l| (l.ptr, Some(1))),
            LimSel::Null => (null_mut(), None),
            LimSel::Foreign => (self.foreign.as_ptr() as *mut rt_limiter, None),
        }
    }

    fn region_of(&self, slot: usize) -> usize {
        self.lims[slot].as_ref().expect("live slot").region
    }

    /// Counts a violation record produced through the limiter in `slot`.
    fn record(&mut self, slot: usize) {
        let r = self.region_of(slot);
        self.regions[r].c.records += 1;
        let l = self.lims[slot].as_mut().unwrap();
        if l.cb_on {
            l.cb_expected += 1;
        }
    }

    /// The clock for a call: `Some(now)` for the `_at` forms.
    fn time(&mut self, t: Time, region: usize) -> Option<u64> {
        let w = self.regions[region].limits.window_ms.max(1) as u64;
        self.now = match t {
            Time::Same => self.now,
            Time::Fwd(d) => self.now.wrapping_add(d as u64),
            Time::Windows(k) => self.now.wrapping_add(w.saturating_mul(k as u64 % 4)),
            Time::FwdBig(d) => self.now.wrapping_add(d as u64),
            Time::Back(d) => self.now.wrapping_sub(d as u64),
            Time::Set(v) => v,
            Time::Plain => return None,
        };
        Some(self.now)
    }

    /// After a write at `now` (None: the real clock) on a region.
    fn wrote(&mut self, region: usize, now: Option<u64>) {
        let r = &mut self.regions[region];
        let now = now.unwrap_or_else(ratethrottle::clock::now_ms);
        r.max_now = r.max_now.max(now);
        r.min_now = r.min_now.min(now);
    }

    /// Whether a retry_after at `now` can be checked exactly on a copy.
    fn exact_at(&self, region: usize, now: Option<u64>, retry: u64) -> Option<u64> {
        let r = &self.regions[region];
        let now = now?;
        let w = r.limits.window_ms as u64;
        (r.mem.is_some()
            && r.exact
            && self.probes < MAX_PROBES
            && retry != RT_RETRY_NEVER
            && retry > 0
            && now >= r.max_now
            && (now.saturating_sub(r.min_now) / w).saturating_add(r.extra_windows) < ALIAS_WINDOWS
            && now.checked_add(retry).is_some())
        .then_some(now)
    }

    /// Runs `f` on a copy of a region (attached through a new handle) at
    /// `now + retry - 1` (must be denied) and `now + retry` (must be allowed).
    fn probe(
        &mut self,
        region: usize,
        now: u64,
        retry: u64,
        what: &str,
        f: &dyn Fn(*mut rt_limiter, u64) -> rt_decision,
    ) {
        self.probes += 1;
        tally::add(&tally::PROBES);
        let r = &self.regions[region];
        let mem = r.mem.as_ref().unwrap();
        // SAFETY: mem holds len bytes.
        let copy = unsafe { Aligned::copy_of(mem.ptr(), r.len) };
        let mut h = null_mut();
        // SAFETY: copy is aligned, holds len bytes, outlives the handle.
        assert_eq!(unsafe { rt_limiter_attach(copy.ptr().cast(), r.len, &mut h) }, RT_STATUS_OK);
        if retry > 1 {
            let d = f(h, now + retry - 1);
            assert!(
                !d.allowed,
                "{what}: allowed at now + retry_after - 1 = {} (retry {retry}): {d:?}",
                now + retry - 1
            );
        }
        let d = f(h, now + retry);
        assert!(
            d.allowed && d.reason == RT_OK,
            "{what}: denied at now + retry_after = {} (retry {retry}): {d:?}",
            now + retry
        );
        // SAFETY: h is a live handle; copy outlives it.
        unsafe { rt_limiter_free(h) };
        drop(copy);
    }

    fn count(&self, region: usize, id: &[u8]) -> u64 {
        self.regions[region].clients.get(id).copied().unwrap_or(0)
    }

    fn pick_handle(&self, h: Handle, region: Option<usize>) -> u64 {
        let r = region.map(|r| &self.regions[r]);
        match h {
            Handle::Live(i) => r.and_then(|r| r.live.get(i as usize % r.live.len().max(1))).map_or(0, |x| x.0),
            Handle::Closed(i) => r.and_then(|r| r.closed.get(i as usize % r.closed.len().max(1))).copied().unwrap_or(0),
            Handle::Zero => 0,
            Handle::Raw(v) => v,
            Handle::Forged { index, generation } => ((generation as u64) << 32) | (index as u64 % 70),
            Handle::Other(i) => {
                let other = self.regions.iter().enumerate().find(|(k, _)| Some(*k) != region).map(|x| x.1);
                other.and_then(|r| r.live.get(i as usize % r.live.len().max(1))).map_or(0, |x| x.0)
            }
        }
    }

    fn size(&self, s: Size, region: Option<usize>) -> u64 {
        let l = region.map(|r| self.regions[r].limits);
        let near = |base: u64, d: i8| base.saturating_add_signed(d as i64);
        match s {
            Size::Small(v) => v as u64,
            Size::Mid(v) => v as u64,
            Size::Big(v) => v as u64,
            Size::Max => u64::MAX,
            Size::Raw(v) => v,
            Size::NearMessageLimit(d) => near(l.map_or(65_536, |l| l.max_message_size as u64), d),
            Size::NearBytesLimit(d) => near(l.map_or(0, |l| l.bytes_per_window), d),
        }
    }

    /// `rt_limiter_stats` agrees with the model, for every live handle.
    fn check_all(&self) {
        for (slot, lim) in self.lims.iter().enumerate() {
            let Some(lim) = lim else { continue };
            let r = &self.regions[lim.region];
            let mut s: rt_stats = zeroed();
            s.struct_size = size_of::<rt_stats>() as u32;
            // SAFETY: live handle, whole struct.
            assert_eq!(unsafe { rt_limiter_stats(lim.ptr, &mut s) }, RT_STATUS_OK);
            assert_eq!(s.struct_size as usize, size_of::<rt_stats>(), "limiter {slot}, stats {s:?}");
            assert_eq!(s.active_connections, r.live.len() as u64, "active_connections: limiter {slot}, stats {s:?}");
            let unique = r.clients.values().filter(|&&n| n > 0).count() as u64;
            assert_eq!(s.unique_clients, unique, "unique_clients: limiter {slot}, stats {s:?}");
            assert!(
                s.tracked_clients >= unique && s.tracked_clients <= 2 * 2 * r.limits.max_clients as u64,
                "limiter {slot}, stats {s:?}"
            );
            assert_eq!(
                s.connections_allowed, r.c.connections_allowed,
                "connections_allowed: limiter {slot}, stats {s:?}"
            );
            assert_eq!(s.untracked_allowed, r.c.untracked_allowed, "untracked_allowed: limiter {slot}, stats {s:?}");
            assert_eq!(s.denied, r.c.denied, "denied: limiter {slot}, stats {s:?}");
            assert_eq!(s.dry_run_denied, r.c.dry_run_denied, "dry_run_denied: limiter {slot}, stats {s:?}");
            assert_eq!(s.total_messages, r.c.total_messages, "total_messages: limiter {slot}, stats {s:?}");
            assert_eq!(s.total_bytes, r.c.total_bytes, "total_bytes: limiter {slot}, stats {s:?}");
            assert_eq!(
                s.messages_allowed,
                r.c.total_messages.wrapping_add(r.c.keys_allowed),
                "messages_allowed: limiter {slot}, stats {s:?}"
            );
            assert!(r.c.drained <= r.c.records, "more records drained than produced: {:?}", r.c);
            assert!(
                s.violations_dropped <= r.c.records - r.c.drained,
                "violations_dropped: limiter {slot}, stats {s:?} {:?}",
                r.c
            );
            assert_eq!(
                (s.max_clients, s.max_connections),
                (r.limits.max_clients as u64, r.limits.max_connections as u64)
            );
            assert_eq!(s.limits, r.limits, "limits in force: limiter {slot}, stats {s:?}");
            assert_eq!(lim.cb.load(Ordering::Relaxed), lim.cb_expected, "callback calls of limiter {slot}");
        }
    }
}

/// Creates a limiter; returns the handle and the region model when made.
fn make(
    u: &mut Unstructured,
    make: Make,
    attach_to: Option<&Region>,
) -> arbitrary::Result<Option<(*mut rt_limiter, Option<Region>)>> {
    let shape = Shape { max_capacity: 64, invalid_weight: 2, capacities: None };
    let lb = LimitsBytes::arbitrary(u, shape)?;
    // SAFETY: lb holds struct_size bytes.
    let valid = unsafe { rt_limits_validate(lb.ptr()) };
    assert_eq!(
        valid,
        reference_status(&lb.buf),
        "rt_limits_validate disagrees with the header: {:?}",
        reference_read(&lb.buf)
    );
    // SAFETY: as above.
    let size = unsafe { rt_region_size(lb.ptr()) };
    assert_eq!(size == 0, valid != RT_STATUS_OK, "rt_region_size {size} vs validate {valid}");
    let limits = reference_read(&lb.buf).map(|l| rt_limits { struct_size: LIMITS_SIZE as u32, reserved: 0, ..l });
    // An older (shorter) struct gets the default capacities (65536): valid,
    // but every stats scan would then read 200k slots. Keep limiters small.
    if valid == RT_STATUS_OK && limits.is_some_and(|l| l.max_clients > 64 || l.max_connections > 64) {
        return Ok(None);
    }
    let sentinel = 0x5a5a_5a5a_5a5a_5a5a_usize as *mut rt_limiter;
    let mut out = sentinel;
    let model = |mem: Option<Aligned>, len: usize| Region {
        mem,
        len,
        total: size,
        limits: limits.unwrap(),
        live: Vec::new(),
        closed: Vec::new(),
        clients: HashMap::new(),
        c: Counts::default(),
        max_now: 0,
        min_now: u64::MAX,
        exact: true,
        extra_windows: 0,
    };
    let mem_len = |kind: MemKind, size: usize| match kind {
        MemKind::Exact | MemKind::Misaligned | MemKind::Null => size.max(64),
        MemKind::Larger => size.max(64) + 4096,
        MemKind::TooSmall => size.saturating_sub(1).max(1),
    };
    match make {
        Make::Nothing => Ok(None),
        Make::New => {
            // SAFETY: valid pointers.
            let st = unsafe { rt_limiter_new(lb.ptr(), &mut out) };
            assert_eq!(st, valid, "rt_limiter_new vs rt_limits_validate");
            if st != RT_STATUS_OK {
                assert_eq!(out, sentinel, "out written on failure");
                return Ok(None);
            }
            Ok(Some((out, Some(model(None, size)))))
        }
        Make::InitIn(kind) => {
            let len = mem_len(kind, size);
            let mem = Aligned::zeroed(len + 64);
            let (p, plen) = match kind {
                MemKind::Null => (null_mut(), len),
                MemKind::Misaligned => (mem.ptr().wrapping_add(8), len),
                MemKind::TooSmall if size == 0 => (mem.ptr(), 64),
                _ => (mem.ptr(), len),
            };
            // SAFETY: p is NULL or valid for plen bytes.
            let st = unsafe { rt_limiter_init_in(p.cast(), plen, lb.ptr(), &mut out) };
            let want = match kind {
                MemKind::Null => RT_STATUS_NULL_ARGUMENT,
                _ if valid != RT_STATUS_OK => valid,
                MemKind::Misaligned => RT_STATUS_INVALID_ARGUMENT,
                MemKind::TooSmall => RT_STATUS_REGION_TOO_SMALL,
                _ => RT_STATUS_OK,
            };
            assert_eq!(st, want, "rt_limiter_init_in({kind:?})");
            if st != RT_STATUS_OK {
                assert_eq!(out, sentinel, "out written on failure");
                return Ok(None);
            }
            Ok(Some((out, Some(model(Some(mem), plen)))))
        }
        Make::Attach(kind) => {
            let Some(a) = attach_to.filter(|a| a.mem.is_some()) else { return Ok(None) };
            let base = a.mem.as_ref().unwrap().ptr();
            let (p, plen) = match kind {
                MemKind::Exact | MemKind::Larger => (base, a.len),
                MemKind::TooSmall => (base, u.int_in_range(0..=a.total - 1)?),
                MemKind::Misaligned => (base.wrapping_add(8), a.len - 64),
                MemKind::Null => (null_mut(), a.len),
            };
            // SAFETY: p is NULL or valid for plen bytes, which outlive the handle.
            let st = unsafe { rt_limiter_attach(p.cast(), plen, &mut out) };
            let want = match kind {
                MemKind::Exact | MemKind::Larger => RT_STATUS_OK,
                MemKind::TooSmall => RT_STATUS_REGION_TOO_SMALL,
                MemKind::Misaligned => RT_STATUS_INVALID_ARGUMENT,
                MemKind::Null => RT_STATUS_NULL_ARGUMENT,
            };
            assert_eq!(st, want, "rt_limiter_attach({kind:?}, len {plen} of {})", a.len);
            if st != RT_STATUS_OK {
                assert_eq!(out, sentinel, "out written on failure");
                return Ok(None);
            }
            Ok(Some((out, None)))
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Handles first: their regions' memory must outlive them.
        for l in self.lims.iter_mut() {
            if let Some(l) = l.take() {
                // SAFETY: live handle, freed once.
                unsafe { rt_limiter_free(l.ptr) };
            }
        }
    }
}

fn new_lim(ptr: *mut rt_limiter, region: usize) -> Lim {
    Lim { ptr, region, cb: Box::new(AtomicU64::new(0)), cb_on: false, cb_expected: 0 }
}

fn run(u: &mut Unstructured) -> arbitrary::Result<()> {
    let mut w = World {
        regions: Vec::new(),
        lims: [None, None],
        now: pick(u, &[0, u64::MAX - 10_000, 1 << 32, 60_000 * (1 << 32) - 5], u64::MAX)?,
        foreign: Vec::new(),
        probes: 0,
    };
    // A foreign pointer: memory that is not an rt_limiter (garbage without
    // the live magic in any word).
    let words = size_of::<rt_limiter>() / 8 + 8;
    let live_magic = u64::from_le_bytes(*b"rtlimitr");
    for _ in 0..words {
        let v: u64 = u.arbitrary()?;
        w.foreign.push(if v == live_magic { v ^ 1 } else { v });
    }

    // Mostly working setups: A in caller memory (so exactness can be
    // probed on copies), B attached to it, independent, or absent.
    let make_a = match u.int_in_range(0u8..=9)? {
        0..=5 => Make::InitIn(MemKind::Exact),
        6 | 7 => Make::New,
        _ => Make::InitIn(u.arbitrary()?),
    };
    let make_b = match u.int_in_range(0u8..=9)? {
        0..=2 => Make::Attach(MemKind::Exact),
        3 | 4 => Make::InitIn(MemKind::Exact),
        5 => Make::New,
        6 | 7 => Make::Nothing,
        _ => u.arbitrary()?,
    };
    if let Some((ptr, Some(region))) = make(u, make_a, None)? {
        w.regions.push(region);
        w.lims[0] = Some(new_lim(ptr, 0));
    }
    let a_region = w.lims[0].as_ref().map(|l| l.region);
    match make(u, make_b, a_region.map(|r| &w.regions[r]))? {
        Some((ptr, Some(region))) => {
            w.regions.push(region);
            w.lims[1] = Some(new_lim(ptr, w.regions.len() - 1));
        }
        Some((ptr, None)) => w.lims[1] = Some(new_lim(ptr, a_region.unwrap())),
        None => {}
    }
    w.check_all();
    tally::add(&tally::LIMITERS[w.lims.iter().filter(|l| l.is_some()).count()]);

    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let op: Op = u.arbitrary()?;
        tally::add(&tally::OPS);
        step(&mut w, u, op)?;
        w.check_all();
    }

    Ok(())
}

fn step(w: &mut World, u: &mut Unstructured, op: Op) -> arbitrary::Result<()> {
    match op {
        Op::Connect { lim, id, t, null_out } => {
            let (p, slot) = w.lim(lim);
            let a = id_arg(&id);
            let region = slot.map(|s| w.region_of(s));
            let now = match region {
                Some(r) => w.time(t, r),
                None => Some(w.now),
            };
            let mut conn: rt_conn = 0xdead_beef;
            let out = if null_out < 8 { null_mut() } else { &mut conn as *mut rt_conn };
            // SAFETY: every pointer is NULL or valid for what it claims.
            let d = unsafe {
                match now {
                    Some(now) => rt_connect_at(p, a.ptr, a.len, now, out),
                    None => rt_connect(p, a.ptr, a.len, out),
                }
            };
            if out.is_null() {
                deny_invalid(&d);
                return Ok(());
            }
            let (Some(slot), Some(bytes)) = (slot, a.bytes.clone()) else {
                deny_invalid(&d);
                assert_eq!(conn, 0, "*out_conn must be 0 when refused");
                return Ok(());
            };
            let r = region.unwrap();
            let l = w.regions[r].limits;
            check_decision(&d, &l);
            let before = w.count(r, &bytes);
            let mc = l.max_concurrent_connections as u64;
            let at_limit = mc != 0 && before >= mc;
            if d.reason != RT_TABLE_FULL {
                assert!(
                    matches!(d.reason, RT_OK | RT_CONCURRENT_CONNECTIONS | RT_CONNECTION_RATE),
                    "connect reason {d:?}"
                );
                assert_eq!(d.reason == RT_CONCURRENT_CONNECTIONS, at_limit, "concurrency {before}/{mc}: {d:?}");
                if d.reason == RT_CONCURRENT_CONNECTIONS {
                    assert_eq!((d.limit, d.current, d.remaining), (mc, before, 0), "{d:?}");
                }
                if d.reason == RT_OK && mc != 0 {
                    assert_eq!((d.limit, d.current, d.remaining), (mc, before + 1, mc - before - 1), "{d:?}");
                }
            }
            if d.allowed {
                w.regions[r].c.connections_allowed += 1;
                if d.reason == RT_TABLE_FULL {
                    w.regions[r].c.untracked_allowed += 1;
                    if l.flags & RT_FLAG_FAIL_OPEN == 0 {
                        // Dry run: allowed untracked, reported as a would-be denial.
                        w.regions[r].c.dry_run_denied += 1;
                        w.record(slot);
                    }
                    if conn != 0 {
                        assert!(!w.regions[r].live.iter().any(|x| x.0 == conn), "handle {conn:#x} handed out twice");
                        w.regions[r].live.push((conn, None));
                    }
                } else {
                    assert_ne!(conn, 0, "allowed connect without a handle: {d:?}");
                    assert!(!w.regions[r].live.iter().any(|x| x.0 == conn), "handle {conn:#x} handed out twice");
                    w.regions[r].live.push((conn, Some(bytes.clone())));
                    *w.regions[r].clients.entry(bytes.clone()).or_default() += 1;
                    if d.reason != RT_OK {
                        w.regions[r].c.dry_run_denied += 1;
                        w.record(slot);
                    }
                }
                w.wrote(r, now);
            } else {
                assert_eq!(conn, 0, "*out_conn must be 0 when denied: {d:?}");
                w.regions[r].c.denied[d.reason as usize] += 1;
                w.record(slot);
                if d.reason == RT_CONNECTION_RATE {
                    if let Some(now) = w.exact_at(r, now, d.retry_after_ms) {
                        let probe = |h: *mut rt_limiter, t: u64| {
                            let mut c = 0;
                            // SAFETY: valid handle and id.
                            unsafe { rt_connect_at(h, a.ptr, a.len, t, &mut c) }
                        };
                        w.probe(r, now, d.retry_after_ms, "connect", &probe);
                    }
                }
            }
        }
        Op::CheckConnection { lim, id, t } => {
            let (p, slot) = w.lim(lim);
            let a = id_arg(&id);
            let region = slot.map(|s| w.region_of(s));
            let now = match region {
                Some(r) => w.time(t, r),
                None => Some(w.now),
            };
            // SAFETY: as above.
            let d = unsafe {
                match now {
                    Some(now) => rt_check_connection_at(p, a.ptr, a.len, now),
                    None => rt_check_connection(p, a.ptr, a.len),
                }
            };
            let (Some(slot), Some(bytes)) = (slot, a.bytes) else {
                deny_invalid(&d);
                return Ok(());
            };
            let r = w.region_of(slot);
            let l = w.regions[r].limits;
            check_decision(&d, &l);
            let mc = l.max_concurrent_connections as u64;
            let before = w.count(r, &bytes);
            assert!(matches!(d.reason, RT_OK | RT_CONCURRENT_CONNECTIONS | RT_CONNECTION_RATE), "{d:?}");
            assert_eq!(d.reason == RT_CONCURRENT_CONNECTIONS, mc != 0 && before >= mc, "{d:?}");
            if d.reason != RT_OK {
                if d.allowed {
                    w.regions[r].c.dry_run_denied += 1;
                } else {
                    w.regions[r].c.denied[d.reason as usize] += 1;
                }
                w.record(slot);
            }
            if !d.allowed && d.reason == RT_CONNECTION_RATE {
                if let Some(now) = w.exact_at(r, now, d.retry_after_ms) {
                    let probe = |h: *mut rt_limiter, t: u64| {
                        // SAFETY: valid handle and id.
                        unsafe { rt_check_connection_at(h, a.ptr, a.len, t) }
                    };
                    w.probe(r, now, d.retry_after_ms, "check_connection", &probe);
                }
            }
        }
        Op::Register { lim, id, null_out } => {
            let (p, slot) = w.lim(lim);
            let a = id_arg(&id);
            let mut conn: rt_conn = 0xdead_beef;
            let out = if null_out < 8 { null_mut() } else { &mut conn as *mut rt_conn };
            let region = slot.map(|s| w.region_of(s));
            let before = region.map(|r| {
                // SAFETY: valid handle; the id is checked by the library.
                (w.count(r, a.bytes.as_deref().unwrap_or(b"")), unsafe { rt_client_connections(p, a.ptr, a.len) })
            });
            // SAFETY: as above.
            let st = unsafe { rt_register_connection(p, a.ptr, a.len, out) };
            let want = match (slot, &a) {
                (None, _) if p.is_null() => RT_STATUS_NULL_ARGUMENT,
                (None, _) => RT_STATUS_INVALID_ARGUMENT,
                _ if out.is_null() || a.null => RT_STATUS_NULL_ARGUMENT,
                (_, IdArg { bytes: None, .. }) => RT_STATUS_INVALID_ARGUMENT,
                _ => st,
            };
            assert_eq!(st, want, "rt_register_connection");
            let (Some(slot), Some(bytes), false) = (slot, a.bytes, out.is_null()) else {
                if !out.is_null() {
                    assert_eq!(conn, 0xdead_beef, "out written on failure");
                }
                return Ok(());
            };
            let r = region.unwrap();
            let fail_open = w.regions[r].limits.flags & RT_FLAG_FAIL_OPEN != 0;
            // Dry run (without fail open) allows a full table untracked too,
            // and reports it as a would-be denial.
            let dry_full = !fail_open && w.regions[r].limits.flags & RT_FLAG_DRY_RUN != 0;
            let (model_before, engine_before) = before.unwrap();
            assert_eq!(model_before, engine_before as u64, "rt_client_connections before register");
            // SAFETY: as above.
            let after = unsafe { rt_client_connections(p, bytes.as_ptr(), bytes.len()) } as u64;
            match st {
                RT_STATUS_OK => {
                    assert_ne!(conn, 0);
                    assert!(!w.regions[r].live.iter().any(|x| x.0 == conn), "handle {conn:#x} handed out twice");
                    w.regions[r].c.connections_allowed += 1;
                    if after == model_before + 1 {
                        w.regions[r].live.push((conn, Some(bytes.clone())));
                        *w.regions[r].clients.entry(bytes).or_default() += 1;
                    } else {
                        assert!(
                            (fail_open || dry_full) && after == model_before,
                            "register: {model_before} -> {after}"
                        );
                        w.regions[r].live.push((conn, None));
                        w.regions[r].c.untracked_allowed += 1;
                        if dry_full {
                            w.regions[r].c.dry_run_denied += 1;
                            w.record(slot);
                        }
                    }
                }
                RT_STATUS_TABLE_FULL => {
                    assert_eq!(conn, 0xdead_beef, "out written on failure");
                    assert_eq!(after, model_before);
                    if fail_open || dry_full {
                        w.regions[r].c.connections_allowed += 1;
                        w.regions[r].c.untracked_allowed += 1;
                        if dry_full {
                            w.regions[r].c.dry_run_denied += 1;
                            w.record(slot);
                        }
                    } else {
                        w.regions[r].c.denied[RT_TABLE_FULL as usize] += 1;
                        w.record(slot);
                    }
                }
                s => panic!("rt_register_connection: status {s}"),
            }
            w.wrote(r, None);
        }
        Op::Disconnect { lim, h } => {
            let (p, slot) = w.lim(lim);
            let region = slot.map(|s| w.region_of(s));
            let h = w.pick_handle(h, region);
            // SAFETY: p is NULL, foreign memory or a live handle.
            unsafe { rt_disconnect(p, h) };
            if let Some(r) = region {
                let reg = &mut w.regions[r];
                if let Some(i) = reg.live.iter().position(|x| x.0 == h) {
                    let (_, client) = reg.live.swap_remove(i);
                    if let Some(c) = client {
                        *reg.clients.get_mut(&c).unwrap() -= 1;
                    }
                    reg.closed.push(h);
                    if reg.closed.len() > 64 {
                        reg.closed.remove(0);
                    }
                }
            }
        }
        Op::Message { lim, h, size, t, part } => {
            let (p, slot) = w.lim(lim);
            let region = slot.map(|s| w.region_of(s));
            let h = w.pick_handle(h, region);
            let size = w.size(size, region);
            // The whole message so far: this part's size for a new message.
            let message_size = match &part {
                None => size,
                Some(Part { short: true, .. }) => size / 2,
                Some(Part { before, .. }) => w.size(before.clone(), region).saturating_add(size),
            };
            let now = match region {
                Some(r) => w.time(t, r),
                None => Some(w.now),
            };
            let check = |lim: *mut rt_limiter, now: Option<u64>| {
                // SAFETY: as above.
                unsafe {
                    match (now, part.is_some()) {
                        (Some(now), false) => rt_check_message_at(lim, h, size, now),
                        (None, false) => rt_check_message(lim, h, size),
                        (Some(now), true) => rt_check_continuation_at(lim, h, size, message_size, now),
                        (None, true) => rt_check_continuation(lim, h, size, message_size),
                    }
                }
            };
            let d = check(p, now);
            let Some(slot) = slot else {
                deny_invalid(&d);
                return Ok(());
            };
            let r = region.unwrap();
            let l = w.regions[r].limits;
            check_decision(&d, &l);
            if message_size < size && h != 0 {
                // Refused before the handle is looked at; counted.
                deny_invalid(&d);
                w.regions[r].c.denied[RT_INVALID_ARGUMENT as usize] += 1;
                return Ok(());
            }
            let live = w.regions[r].live.iter().find(|x| x.0 == h).cloned();
            let Some((_, client)) = live else {
                assert_eq!(
                    d,
                    rt_decision {
                        allowed: false,
                        reason: RT_UNKNOWN_CONNECTION,
                        retry_after_ms: 0,
                        limit: 0,
                        remaining: 0,
                        current: 0
                    },
                    "handle {h:#x} is not live"
                );
                if h != 0 {
                    w.regions[r].c.denied[RT_UNKNOWN_CONNECTION as usize] += 1;
                }
                return Ok(());
            };
            assert!(
                matches!(
                    d.reason,
                    RT_OK
                        | RT_MESSAGE_TOO_LARGE
                        | RT_MESSAGE_RATE
                        | RT_BANDWIDTH
                        | RT_CLIENT_MESSAGE_RATE
                        | RT_CLIENT_BANDWIDTH
                ),
                "message on live handle {h:#x}: {d:?}"
            );
            let mms = l.max_message_size as u64;
            let too_large = mms != 0 && message_size > mms;
            assert_eq!(d.reason == RT_MESSAGE_TOO_LARGE, too_large, "size {message_size} max {mms}: {d:?}");
            if part.is_some() {
                // A later part adds no message: message rates never decide it.
                assert!(!matches!(d.reason, RT_MESSAGE_RATE | RT_CLIENT_MESSAGE_RATE), "continuation: {d:?}");
            }
            if too_large {
                assert_eq!(d.retry_after_ms, RT_RETRY_NEVER, "{d:?}");
            }
            let client_limited = l.client_messages_per_window != 0 || l.client_bytes_per_window != 0;
            if matches!(d.reason, RT_CLIENT_MESSAGE_RATE | RT_CLIENT_BANDWIDTH) {
                assert!(
                    client_limited && client.is_some(),
                    "client reason for an untracked or unlimited client: {d:?}"
                );
            }
            match d.reason {
                RT_MESSAGE_RATE => assert_ne!(l.messages_per_window, 0),
                RT_BANDWIDTH => assert_ne!(l.bytes_per_window, 0),
                RT_CLIENT_MESSAGE_RATE => assert_ne!(l.client_messages_per_window, 0),
                RT_CLIENT_BANDWIDTH => assert_ne!(l.client_bytes_per_window, 0),
                _ => {}
            }
            let bw_never = l.bytes_per_window != 0 && size > l.bytes_per_window;
            let cbw_never = client_limited
                && client.is_some()
                && l.client_bytes_per_window != 0
                && size > l.client_bytes_per_window;
            if !d.allowed {
                assert_eq!(
                    d.retry_after_ms == RT_RETRY_NEVER,
                    too_large || bw_never || cbw_never,
                    "size {size}: {d:?}"
                );
            } else if d.reason == RT_OK {
                assert!(
                    !too_large && !bw_never && !cbw_never,
                    "allowed a message that can never pass: size {size}, {l:?}"
                );
            }
            if d.allowed {
                let c = &mut w.regions[r].c;
                c.total_messages += u64::from(part.is_none());
                c.total_bytes = c.total_bytes.saturating_add(size);
                if d.reason != RT_OK {
                    c.dry_run_denied += 1;
                }
                if d.reason != RT_OK {
                    w.record(slot);
                }
                w.wrote(r, now);
            } else {
                w.regions[r].c.denied[d.reason as usize] += 1;
                w.record(slot);
                if let Some(now) = w.exact_at(r, now, d.retry_after_ms) {
                    let probe = |lim: *mut rt_limiter, t: u64| check(lim, Some(t));
                    w.probe(r, now, d.retry_after_ms, "message", &probe);
                }
            }
        }
        Op::Key { lim, key, size, t } => {
            let (p, slot) = w.lim(lim);
            let a = id_arg(&key);
            let region = slot.map(|s| w.region_of(s));
            let size = w.size(size, region);
            let now = match region {
                Some(r) => w.time(t, r),
                None => Some(w.now),
            };
            // SAFETY: as above.
            let d = unsafe {
                match now {
                    Some(now) => rt_check_key_at(p, a.ptr, a.len, size, now),
                    None => rt_check_key(p, a.ptr, a.len, size),
                }
            };
            let (Some(slot), Some(_)) = (slot, &a.bytes) else {
                deny_invalid(&d);
                return Ok(());
            };
            let r = region.unwrap();
            let l = w.regions[r].limits;
            check_decision(&d, &l);
            let limited = l.client_messages_per_window != 0 || l.client_bytes_per_window != 0;
            assert!(matches!(d.reason, RT_OK | RT_CLIENT_MESSAGE_RATE | RT_CLIENT_BANDWIDTH | RT_TABLE_FULL), "{d:?}");
            if !limited {
                assert_eq!(
                    d,
                    rt_decision { allowed: true, reason: RT_OK, retry_after_ms: 0, limit: 0, remaining: 0, current: 0 }
                );
            }
            let never = l.client_bytes_per_window != 0 && size > l.client_bytes_per_window;
            if !d.allowed && d.reason != RT_TABLE_FULL {
                assert_eq!(d.retry_after_ms == RT_RETRY_NEVER, never, "key size {size}: {d:?}");
            }
            let c = &mut w.regions[r].c;
            let record = match (d.allowed, d.reason) {
                (true, RT_TABLE_FULL) => {
                    c.untracked_allowed += 1;
                    // Dry run without fail open: a would-be denial, reported.
                    let dry_full = l.flags & RT_FLAG_FAIL_OPEN == 0;
                    if dry_full {
                        c.dry_run_denied += 1;
                    }
                    dry_full
                }
                (true, RT_OK) => {
                    c.keys_allowed += 1;
                    false
                }
                (true, _) => {
                    c.keys_allowed += 1;
                    c.dry_run_denied += 1;
                    true
                }
                (false, reason) => {
                    c.denied[reason as usize] += 1;
                    true
                }
            };
            if record {
                w.record(slot);
            }
            if limited && d.reason != RT_TABLE_FULL {
                w.wrote(r, now);
            }
            if !d.allowed && d.reason != RT_TABLE_FULL {
                if let Some(now) = w.exact_at(r, now, d.retry_after_ms) {
                    let probe = |lim: *mut rt_limiter, t: u64| {
                        // SAFETY: valid handle and key.
                        unsafe { rt_check_key_at(lim, a.ptr, a.len, size, t) }
                    };
                    w.probe(r, now, d.retry_after_ms, "key", &probe);
                }
            }
        }
        Op::ClientConnections { lim, id } => {
            let (p, slot) = w.lim(lim);
            let a = id_arg(&id);
            // SAFETY: as above.
            let n = unsafe { rt_client_connections(p, a.ptr, a.len) } as u64;
            let want = match (slot, &a.bytes) {
                (Some(s), Some(b)) => w.count(w.region_of(s), b),
                _ => 0,
            };
            assert_eq!(n, want, "rt_client_connections");
        }
        Op::Info { lim, h, size, null_out } => {
            let (p, slot) = w.lim(lim);
            let region = slot.map(|s| w.region_of(s));
            let h = w.pick_handle(h, region);
            let ours = size_of::<rt_connection_info>();
            let size = if size < 16 { size as usize % 8 } else { (size as usize) % (ours + 24) };
            let mut buf = Aligned::with_align(size.max(4), 8);
            buf.bytes_mut().fill(0xa5);
            buf.bytes_mut()[..4].copy_from_slice(&(size as u32).to_ne_bytes());
            let out = if null_out < 8 { null_mut() } else { buf.ptr().cast::<rt_connection_info>() };
            // SAFETY: out is NULL or holds struct_size bytes.
            let st = unsafe { rt_limiter_connection_info(p, h, out) };
            let live = region.and_then(|r| w.regions[r].live.iter().find(|x| x.0 == h).cloned());
            let want = match slot {
                None if p.is_null() => RT_STATUS_NULL_ARGUMENT,
                None => RT_STATUS_INVALID_ARGUMENT,
                _ if out.is_null() => RT_STATUS_NULL_ARGUMENT,
                _ if size < 8 => RT_STATUS_INVALID_ARGUMENT,
                _ if live.is_none() => RT_STATUS_UNKNOWN_CONNECTION,
                _ => RT_STATUS_OK,
            };
            assert_eq!(st, want, "rt_limiter_connection_info(handle {h:#x}, size {size})");
            let b = buf.bytes();
            if st != RT_STATUS_OK {
                assert!(b[4..].iter().all(|&x| x == 0xa5), "connection_info wrote on failure");
                assert_eq!(u32::from_ne_bytes(b[..4].try_into().unwrap()) as usize, size);
                return Ok(());
            }
            let n = size.min(ours);
            assert_eq!(u32::from_ne_bytes(b[..4].try_into().unwrap()) as usize, n, "struct_size written");
            assert!(b[n..].iter().all(|&x| x == 0xa5), "connection_info wrote past struct_size");
            if n == ours {
                // SAFETY: the whole struct was written.
                let info = unsafe { buf.ptr().cast::<rt_connection_info>().read() };
                match live.unwrap().1 {
                    Some(id) => {
                        assert_eq!(info.client_id_len as usize, id.len());
                        let k = id.len().min(40);
                        assert_eq!(&info.client_id[..k], &id[..k]);
                    }
                    None => assert_eq!(info.client_id_len, 0),
                }
            }
        }
        Op::Stats { lim, size, null_out } => {
            let (p, slot) = w.lim(lim);
            let ours = size_of::<rt_stats>();
            let size = size as usize % (ours + 33);
            let mut buf = Aligned::with_align(size.max(4), 8);
            buf.bytes_mut().fill(0x5a);
            buf.bytes_mut()[..4].copy_from_slice(&(size as u32).to_ne_bytes());
            let out = if null_out < 8 { null_mut() } else { buf.ptr().cast::<rt_stats>() };
            // SAFETY: out is NULL or holds struct_size bytes.
            let st = unsafe { rt_limiter_stats(p, out) };
            let want = match slot {
                None if p.is_null() => RT_STATUS_NULL_ARGUMENT,
                None => RT_STATUS_INVALID_ARGUMENT,
                _ if out.is_null() => RT_STATUS_NULL_ARGUMENT,
                _ if size < 8 => RT_STATUS_INVALID_ARGUMENT,
                _ => RT_STATUS_OK,
            };
            assert_eq!(st, want, "rt_limiter_stats(size {size})");
            let b = buf.bytes();
            if st != RT_STATUS_OK {
                assert!(b[4..].iter().all(|&x| x == 0x5a), "stats wrote on failure");
                return Ok(());
            }
            let n = size.min(ours);
            assert_eq!(u32::from_ne_bytes(b[..4].try_into().unwrap()) as usize, n, "struct_size written");
            assert!(b[n..].iter().all(|&x| x == 0x5a), "stats wrote past struct_size");
            if n >= 16 {
                let active = u64::from_ne_bytes(b[8..16].try_into().unwrap());
                assert_eq!(active, w.regions[w.region_of(slot.unwrap())].live.len() as u64);
            }
        }
        Op::Prometheus { lim, cap, null_buf } => {
            let (p, slot) = w.lim(lim);
            // SAFETY: NULL buf is a size query.
            let need = unsafe { rt_stats_prometheus(p, null_mut(), 12345) };
            if slot.is_none() {
                assert_eq!(need, 0);
            }
            let mut full = vec![0u8; need + 1];
            // SAFETY: full holds need + 1 bytes.
            assert_eq!(unsafe { rt_stats_prometheus(p, full.as_mut_ptr().cast(), full.len()) }, need);
            if let Some(slot) = slot {
                assert_eq!(full[need], 0, "not NUL-terminated");
                let text = std::str::from_utf8(&full[..need]).expect("prometheus text is UTF-8");
                assert!(!text.contains('\0'));
                let r = &w.regions[w.region_of(slot)];
                let line = format!("\nratethrottle_active_connections {}\n", r.live.len());
                assert!(text.contains(&line), "missing {line:?} in {text}");
            }
            let cap = cap as usize % 96;
            let mut buf = vec![0x77u8; cap];
            let bp = if null_buf < 8 || cap == 0 { null_mut() } else { buf.as_mut_ptr() };
            // SAFETY: bp is NULL or holds cap bytes.
            let n = unsafe { rt_stats_prometheus(p, bp.cast(), cap) };
            assert_eq!(n, need, "length differs between calls");
            if !bp.is_null() && slot.is_some() {
                let k = need.min(cap - 1);
                assert_eq!(&buf[..k], &full[..k]);
                assert_eq!(buf[k], 0, "truncated text not NUL-terminated");
                assert!(buf[k + 1..].iter().all(|&x| x == 0x77), "wrote past the NUL");
            } else {
                assert!(buf.iter().all(|&x| x == 0x77));
            }
        }
        Op::Drain { lim, cap, null_out } => {
            let (p, slot) = w.lim(lim);
            let cap = cap as usize % 40;
            let mut canary: rt_violation = zeroed();
            canary.reason = 0xdead;
            canary.at_ms = 0x1234;
            let mut out = vec![canary; cap];
            let op = if null_out < 8 { null_mut() } else { out.as_mut_ptr() };
            // SAFETY: op is NULL or holds cap records.
            let n = unsafe { rt_drain_violations(p, op, cap) };
            if slot.is_none() || op.is_null() || cap == 0 {
                assert_eq!(n, 0);
                assert!(out.iter().all(|v| *v == canary));
                return Ok(());
            }
            assert!(n <= cap);
            for v in &out[..n] {
                assert!((RT_CONNECTION_RATE..=RT_TABLE_FULL).contains(&v.reason), "drained record {v:?}");
            }
            assert!(out[n..].iter().all(|v| *v == canary), "drain wrote past its count");
            let r = w.region_of(slot.unwrap());
            w.regions[r].c.drained += n as u64;
            if n < cap {
                // The ring is empty: every record was drained or dropped.
                let mut s: rt_stats = zeroed();
                s.struct_size = size_of::<rt_stats>() as u32;
                // SAFETY: live handle.
                assert_eq!(unsafe { rt_limiter_stats(p, &mut s) }, RT_STATUS_OK);
                let c = &w.regions[r].c;
                assert_eq!(
                    c.drained + s.violations_dropped,
                    c.records,
                    "violation records lost or duplicated: {c:?}, dropped {}",
                    s.violations_dropped
                );
            }
        }
        Op::Update { lim, null_limits, t } => {
            let (p, slot) = w.lim(lim);
            let region = slot.map(|s| w.region_of(s));
            let now = match region {
                Some(r) => w.time(t, r),
                None => Some(w.now),
            };
            let caps = region.map(|r| (w.regions[r].limits.max_clients, w.regions[r].limits.max_connections));
            let lb = LimitsBytes::arbitrary(
                u,
                Shape { max_capacity: 64, invalid_weight: 2, capacities: caps.or(Some((16, 16))) },
            )?;
            let lp = if null_limits < 8 { null() } else { lb.ptr() };
            // SAFETY: lp is NULL or holds struct_size bytes.
            let st = unsafe {
                match now {
                    Some(now) => rt_limiter_update_limits_at(p, lp, now),
                    None => rt_limiter_update_limits(p, lp),
                }
            };
            let reference = reference_read(&lb.buf);
            let want = match slot {
                None if p.is_null() => RT_STATUS_NULL_ARGUMENT,
                None => RT_STATUS_INVALID_ARGUMENT,
                _ if lp.is_null() => RT_STATUS_NULL_ARGUMENT,
                _ => match reference_status(&lb.buf) {
                    RT_STATUS_OK if reference.map(|l| (l.max_clients, l.max_connections)) != caps => {
                        RT_STATUS_INVALID_ARGUMENT
                    }
                    s => s,
                },
            };
            assert_eq!(st, want, "rt_limiter_update_limits: {reference:?}");
            if st == RT_STATUS_OK {
                let r = region.unwrap();
                let new = rt_limits { struct_size: LIMITS_SIZE as u32, reserved: 0, ..reference.unwrap() };
                let reg = &mut w.regions[r];
                if new.window_ms != reg.limits.window_ms {
                    // Windows restart at `now`: every stored window is then at
                    // least two windows old. Exactness still holds when no
                    // write happened later than `now` (else stored windows
                    // would lie ahead: "no time passed").
                    match now {
                        Some(now) if now >= reg.max_now => {
                            if reg.min_now != u64::MAX {
                                let old = (now - reg.min_now) / reg.limits.window_ms as u64;
                                reg.extra_windows = reg.extra_windows.saturating_add(old).saturating_add(2);
                                reg.min_now = now;
                            }
                            reg.max_now = now;
                        }
                        _ => reg.exact = false,
                    }
                }
                reg.limits = new;
            }
        }
        Op::Callback { lim, on } => {
            let (p, slot) = w.lim(lim);
            let ud = slot.map_or(null_mut(), |s| &*w.lims[s].as_ref().unwrap().cb as *const AtomicU64 as *mut c_void);
            let cb: rt_violation_cb = if on { Some(on_violation) } else { None };
            // SAFETY: the callback and user_data live as long as the handle.
            unsafe { rt_set_violation_callback(p, cb, ud) };
            if let Some(s) = slot {
                w.lims[s].as_mut().unwrap().cb_on = on;
            }
        }
        Op::Reap { lim } => {
            let (p, _) = w.lim(lim);
            // SAFETY: as above.
            assert_eq!(unsafe { rt_reap_dead(p) }, 0, "this process is alive: nothing to reap");
        }
        Op::Free { b } => {
            let s = b as usize;
            if let Some(l) = w.lims[s].take() {
                // SAFETY: a live handle, freed once; never used again.
                unsafe { rt_limiter_free(l.ptr) };
            } else {
                // SAFETY: NULL is a no-op.
                unsafe { rt_limiter_free(null_mut()) };
            }
            // Foreign memory is refused, not freed.
            // SAFETY: not a live limiter: a no-op.
            unsafe { rt_limiter_free(w.foreign.as_mut_ptr().cast()) };
        }
        Op::Reattach { b, mem } => {
            let s = b as usize;
            let Some(r) = w.regions.iter().position(|r| r.mem.is_some()) else { return Ok(()) };
            if let Some((ptr, _)) = make(u, Make::Attach(mem), Some(&w.regions[r]))? {
                if let Some(old) = w.lims[s].take() {
                    // SAFETY: live handle, freed once.
                    unsafe { rt_limiter_free(old.ptr) };
                }
                w.lims[s] = Some(new_lim(ptr, r));
            }
        }
        Op::Strings { v } => {
            let known = unsafe { c_text(rt_status_str(v)) } != b"unknown";
            assert_eq!(known, v <= RT_STATUS_IO_ERROR, "rt_status_str({v})");
            let known = unsafe { c_text(rt_reason_str(v)) } != b"unknown";
            assert_eq!(known, v < RT_REASON_COUNT, "rt_reason_str({v})");
            let known = unsafe { c_text(rt_violation_type_str(v)) } != b"unknown";
            assert_eq!(known, v < RT_REASON_COUNT, "rt_violation_type_str({v})");
            assert_eq!(unsafe { c_text(rt_version()) }, ratethrottle::VERSION.as_bytes());
            let mut l: rt_limits = zeroed();
            // SAFETY: a whole rt_limits.
            unsafe { rt_limits_default(&mut l) };
            assert_eq!(l, documented_defaults());
        }
    }
    Ok(())
}

/// With RT_FUZZ_STATS=1: what the runs exercised, printed every 2000 runs
/// (to see that the harness reaches deep states, not to check anything).
mod tally {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    pub static RUNS: AtomicU64 = AtomicU64::new(0);
    pub static OPS: AtomicU64 = AtomicU64::new(0);
    pub static PROBES: AtomicU64 = AtomicU64::new(0);
    pub static LIMITERS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
    pub static REASONS: [AtomicU64; 12] = [const { AtomicU64::new(0) }; 12];
    pub static DRY: AtomicU64 = AtomicU64::new(0);
    pub fn enabled() -> bool {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| std::env::var_os("RT_FUZZ_STATS").is_some())
    }
    pub fn add(c: &AtomicU64) {
        if enabled() {
            c.fetch_add(1, Relaxed);
        }
    }
    pub fn report() {
        if enabled() && RUNS.fetch_add(1, Relaxed).is_multiple_of(2_000) {
            let r: Vec<u64> = REASONS.iter().map(|c| c.load(Relaxed)).collect();
            let l: Vec<u64> = LIMITERS.iter().map(|c| c.load(Relaxed)).collect();
            eprintln!(
                "tally: runs {} ops {} limiters(0,1,2) {l:?} probes {} dry {} decisions by reason {r:?}",
                RUNS.load(Relaxed),
                OPS.load(Relaxed),
                PROBES.load(Relaxed),
                DRY.load(Relaxed)
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
    tally::report();
});
