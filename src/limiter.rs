//! The engine: connect, check_message, check_key, disconnect, and the
//! observation calls, over one region.
//!
//! Every decision reads the limits once (one consistent snapshot), rolls the
//! affected window words to now, decides, and commits with one CAS per word.
//! A denied request changes no counter (only the denial statistics).
//! When a message is limited both per connection and per client, the client
//! word is charged first and refunded if the connection's CAS then finds the
//! connection over its limit (possible only when one connection is checked
//! from two threads at once), so a message is counted against all of its
//! windows or none.

use crate::clock::{self, process};
use crate::conn::{self, NO_CLIENT};
use crate::decision::{Decision, Reason};
use crate::error::Error;
use crate::events::{self, Callbacks, Violation, ViolationCallback};
#[cfg(not(loom))]
use crate::file::Opened;
use crate::limits::Limits;
use crate::memory::Owned;
use crate::packed::{Conns, Traffic, BYTES_MAX, CONN_MAX, MSGS_MAX, TAG_MASK};
use crate::region::{thread_hint, Region, Snapshot};
use crate::stats::{self, ConnectionInfo, Stats};
use crate::sync::{AtomicU128, Ordering};
use crate::table::{self, Found};
use crate::window::{self, apply, step, Divisor, Position, Rolled, RETRY_NEVER};
use core::num::NonZeroU64;

/// Retries of a lookup whose slot was reclaimed under it before giving up
/// with `TableFull` (bounded, so no thread spins for ever: C6).
const MAX_RELOOKUPS: u32 = 64;

/// A connection handle: `(generation << 32) | (index + 1)`, its high half
/// XORed with a salt drawn per region; never 0. A handle of another limiter
/// (another region) is refused as unknown, except about once in 2^32.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conn(NonZeroU64);

impl Conn {
    /// The C ABI's `rt_conn` value.
    pub fn raw(self) -> u64 {
        self.0.get()
    }

    /// A handle from an `rt_conn` value; `None` for 0. Any other value is
    /// accepted here and checked (index, generation) when used.
    pub fn from_raw(v: u64) -> Option<Conn> {
        NonZeroU64::new(v).map(Conn)
    }
}

/// Who frees the region's memory: held only for its `Drop`.
#[allow(dead_code)]
enum Memory {
    Owned(Owned),
    /// A mapping of a region file (`open_file`).
    #[cfg(not(loom))]
    File(Owned, crate::file::FileId),
    Borrowed,
}

impl Drop for Limiter {
    /// A limiter of a region file: when it is this process's last one on
    /// the file, the connections the process still has in the region are
    /// closed, since nothing in it can close them any more (they would hold
    /// their clients' concurrency slots until the process exits and another
    /// one reaps it).
    fn drop(&mut self) {
        #[cfg(not(loom))]
        if let Memory::File(_, id) = self._memory {
            if crate::file::release(id) {
                self.close_own_connections();
            }
        }
    }
}

/// A rate limiter over one region. `Send + Sync`: share it between threads
/// by reference or `Arc`; every method takes `&self`.
///
/// ```
/// use ratethrottle::{Limiter, Limits, Reason};
/// let lim = Limiter::new(&Limits { messages_per_window: 2, ..Limits::default() }).unwrap();
/// let (d, conn) = lim.connect_at(b"203.0.113.7", 0);
/// assert!(d.allowed);
/// let conn = conn.unwrap();
/// assert!(lim.check_message_at(conn, 100, 0).allowed);
/// assert!(lim.check_message_at(conn, 100, 0).allowed);
/// let d = lim.check_message_at(conn, 100, 0);
/// assert_eq!(d.reason, Reason::MessageRate);
/// // Sliding window: the two messages decay through the next window and a
/// // third fits when 2 * (1 - x) + 1 <= 2, half-way in: 60 s + 30 s.
/// assert_eq!(d.retry_after_ms, 90_000);
/// lim.disconnect(conn);
/// ```
pub struct Limiter {
    region: Region,
    _memory: Memory,
    callbacks: Callbacks,
}

// SAFETY: the region is only atomics; the heap memory is owned and freed once.
unsafe impl Send for Limiter {}
// SAFETY: as above; callbacks are Send + Sync.
unsafe impl Sync for Limiter {}

/// One windowed check: a limit, a window pair rolled to now, and a cost.
#[derive(Clone, Copy)]
struct Check {
    reason: Reason,
    limit: u64,
    prev: u64,
    cur: u64,
    cost: u64,
    window: Divisor,
    elapsed_ms: u64,
}

impl Check {
    fn enabled(&self) -> bool {
        self.limit != 0
    }
    #[inline]
    fn passes(&self) -> bool {
        !self.enabled() || window::admits(self.prev, self.cur, self.cost, self.limit, self.window.d, self.elapsed_ms)
    }
    fn retry(&self) -> u64 {
        window::retry_after(self.prev, self.cur, self.cost, self.limit, self.window.d, self.elapsed_ms)
    }
    /// (estimate, remaining) with `charged` added to the current window.
    #[inline]
    fn budget(&self, charged: u64) -> (u64, u64) {
        window::budget(self.prev, self.cur.saturating_add(charged), self.limit, &self.window, self.elapsed_ms)
    }
}

/// The outcome of a list of checks: the first failing one and the wait
/// until all of them pass.
struct Verdict {
    fail: Option<Check>,
    retry_after_ms: u64,
}

#[inline]
fn judge(checks: &[Check]) -> Verdict {
    let mut v = Verdict { fail: None, retry_after_ms: 0 };
    for c in checks.iter().filter(|c| !c.passes()) {
        v.fail.get_or_insert(*c);
        v.retry_after_ms = v.retry_after_ms.max(c.retry());
    }
    v
}

/// A decision of a plain form (one that read the engine's coarse clock): a
/// finite, non-zero wait gets [`clock::wait_margin_ms`], so that a client
/// waiting it on a precise clock is not refused by the clock's lag.
#[inline(always)]
fn on_engine_clock(mut d: Decision) -> Decision {
    if d.retry_after_ms != 0 && d.retry_after_ms != RETRY_NEVER {
        d.retry_after_ms = d.retry_after_ms.saturating_add(clock::wait_margin_ms());
    }
    d
}

/// The decision for a failed check.
fn denial(c: &Check, retry_after_ms: u64) -> Decision {
    let (current, remaining) = c.budget(0);
    Decision { allowed: false, reason: c.reason, retry_after_ms, limit: c.limit, remaining, current }
}

/// The decision for an allowed request: the first enabled limit reports.
fn allowance(checks: &[Check]) -> Decision {
    let mut d = Decision::allow();
    if let Some(c) = checks.iter().find(|c| c.enabled()) {
        d.limit = c.limit;
        (d.current, d.remaining) = c.budget(c.cost);
    }
    d
}

/// A traffic word rolled to now.
#[derive(Clone, Copy)]
struct RolledTraffic {
    msgs: Rolled,
    bytes: Rolled,
}

#[inline(always)]
fn roll_traffic(t: &Traffic, pos: Position) -> RolledTraffic {
    let empty = t.msgs_prev | t.msgs_cur | t.bytes_prev | t.bytes_cur == 0;
    let s = step(t.id, pos, empty);
    RolledTraffic {
        msgs: apply(s, t.id, t.msgs_prev, t.msgs_cur, pos),
        bytes: apply(s, t.id, t.bytes_prev, t.bytes_cur, pos),
    }
}

/// Adds `cost` to a count, saturating at `max`; returns (count, overflow).
#[inline(always)]
fn saturate(cur: u64, cost: u64, max: u64) -> (u64, u64) {
    let sum = cur.saturating_add(cost);
    if sum > max {
        (max, sum - max)
    } else {
        (sum, 0)
    }
}

/// Adds to a lifetime total, saturating at `u64::MAX` (only a message of an
/// absurd size with no byte limit can get there; then the total pins at the
/// maximum). One `fetch_add`; the fix-up runs only after an overflow.
#[inline]
fn add_saturating(total: &crate::sync::AtomicU64, n: u64) {
    if n != 0 && total.fetch_add(n, Ordering::Relaxed).checked_add(n).is_none() {
        total.store(u64::MAX, Ordering::Relaxed);
    }
}

impl Limiter {
    fn from_region(region: Region, memory: Memory) -> Limiter {
        Limiter { region, _memory: memory, callbacks: Callbacks::new() }
    }

    /// A limiter whose region lives on the heap, owned by it.
    pub fn new(limits: &Limits) -> Result<Limiter, Error> {
        #[cfg(loom)]
        {
            Ok(Limiter::from_region(Region::new_loom(limits)?, Memory::Borrowed))
        }
        #[cfg(not(loom))]
        {
            let size = Region::size_for(limits)?;
            let mem = Owned::new(size, crate::region::ALIGN)?;
            // SAFETY: the memory is ours, aligned, `size` bytes, and lives as
            // long as the limiter (the region field is dropped before it).
            let region = unsafe { Region::init(mem.ptr(), size, limits)? };
            Ok(Limiter::from_region(region, Memory::Owned(mem)))
        }
    }

    /// Bytes a region for these limits needs (for [`Limiter::init_in`] and
    /// shared memory).
    pub fn region_size(limits: &Limits) -> Result<usize, Error> {
        Region::size_for(limits)
    }

    /// Formats a region in caller memory (for example a `MAP_SHARED` mapping)
    /// and returns a limiter over it. The memory is not freed by the limiter.
    ///
    /// # Safety
    /// `mem` must be valid for reads and writes of `len` bytes, aligned to 64
    /// bytes, and outlive every limiter that uses it; nobody may use it while
    /// this runs.
    #[cfg(not(loom))]
    pub unsafe fn init_in(mem: *mut u8, len: usize, limits: &Limits) -> Result<Limiter, Error> {
        // SAFETY: forwarded from the caller.
        let region = unsafe { Region::init(mem, len, limits)? };
        Ok(Limiter::from_region(region, Memory::Borrowed))
    }

    /// Attaches to a region formatted by [`Limiter::init_in`] (in this or
    /// another process). Validates magic, layout version and sizes.
    ///
    /// # Safety
    /// `mem` must be valid for reads and writes of `len` bytes, aligned to 64
    /// bytes, and outlive the limiter.
    #[cfg(not(loom))]
    pub unsafe fn attach(mem: *mut u8, len: usize) -> Result<Limiter, Error> {
        // SAFETY: forwarded from the caller.
        let region = unsafe { Region::attach(mem, len)? };
        Ok(Limiter::from_region(region, Memory::Borrowed))
    }

    /// Creates or attaches a region in the file at `path` (use tmpfs, for
    /// example `/dev/shm/myapp-limits`), mapped `MAP_SHARED`, so that every
    /// process on the host that opens the same path enforces one set of
    /// limits: one client's connections, windows and counters are shared.
    ///
    /// With `Some(limits)` a missing or empty file is created (mode 0600)
    /// and formatted for `limits` ([`Opened::Created`]); a file that holds a
    /// region is attached ([`Opened::Attached`]): its own limits apply, and
    /// `limits` is only validated. With `None` the file must already hold a
    /// region. An exclusive `flock` serialises create against attach. An
    /// attach also frees the connections of processes that died holding
    /// them ([`Limiter::reap_dead`]). A file whose creator was killed while
    /// formatting it (its head says "format begun", no magic yet) is
    /// formatted again by the next create (with `Some(limits)`); an
    /// attach-only open refuses it. A file of zeroes is refused, untouched.
    ///
    /// The limiter unmaps the file when dropped; the file stays (remove it
    /// when no process uses it). When the dropped limiter was this
    /// process's last one on the file, the connections the process still
    /// has open in the region are closed first: nothing could close them
    /// afterwards. Do not truncate it while it is mapped
    /// (SIGBUS). A file that is not a region of this layout version is
    /// refused ([`Error::IncompatibleRegion`], or [`Error::RegionTooSmall`]
    /// when it is shorter than one) and left untouched; a failed system call
    /// gives [`Error::Io`].
    ///
    /// ```
    /// use ratethrottle::{Limiter, Limits, Opened};
    ///
    /// let path = std::env::temp_dir().join(format!("rt-doc-{}", std::process::id()));
    /// let limits = Limits { max_concurrent_connections: 1, max_clients: 64, max_connections: 64, ..Limits::default() };
    /// let (a, how) = Limiter::open_file(&path, Some(&limits))?;
    /// assert_eq!(how, Opened::Created);
    /// let (b, how) = Limiter::open_file(&path, None)?; // another process would do this
    /// assert_eq!(how, Opened::Attached);
    /// let (first, _conn) = a.connect(b"10.0.0.1");
    /// let (second, _) = b.connect(b"10.0.0.1");
    /// assert!(first.allowed && !second.allowed); // one limit over both
    /// # drop((a, b)); std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), ratethrottle::Error>(())
    /// ```
    #[cfg(not(loom))]
    pub fn open_file(path: impl AsRef<std::path::Path>, limits: Option<&Limits>) -> Result<(Limiter, Opened), Error> {
        let create_size = limits.map(Region::size_for).transpose()?;
        let (region, mem, created, id) = crate::file::open(path.as_ref(), create_size, |base, len, created| {
            match limits {
                // SAFETY: a fresh shared mapping of `len` bytes, page
                // aligned; nobody else uses it while the file lock is held.
                Some(l) if created => unsafe { Region::init(base, len, l) },
                // SAFETY: a shared mapping of the whole file; the region
                // validates what it holds. It lives as long as the limiter.
                _ => unsafe { Region::attach(base, len) },
            }
        })?;
        crate::file::hold(id);
        let lim = Limiter::from_region(region, Memory::File(mem, id));
        if created {
            return Ok((lim, Opened::Created));
        }
        lim.reap_dead();
        Ok((lim, Opened::Attached))
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.region.header().limits()
    }

    /// Changes rates, sizes, window and flags at run time; every thread and
    /// every attached process uses them from its next check. Capacities
    /// cannot change. A new `window_ms` starts every window afresh.
    pub fn update_limits(&self, limits: &Limits) -> Result<(), Error> {
        self.update_limits_at(limits, clock::now_ms())
    }

    /// [`Limiter::update_limits`] with the caller's clock (for fake clocks).
    pub fn update_limits_at(&self, limits: &Limits, now_ms: u64) -> Result<(), Error> {
        limits.validate()?;
        let h = self.region.header();
        if limits.max_clients != h.max_clients.load(Ordering::Relaxed)
            || limits.max_connections != h.max_connections.load(Ordering::Relaxed)
        {
            return Err(Error::InvalidArgument("max_clients and max_connections cannot change at run time"));
        }
        if h.write_limits(limits, now_ms) {
            Ok(())
        } else {
            Err(Error::InvalidArgument("another process has been updating the limits for seconds; try again"))
        }
    }

    /// Closes the connections this process opened and has not closed;
    /// returns how many.
    #[cfg(not(loom))]
    fn close_own_connections(&self) -> usize {
        let me = process::token();
        self.close_owned_by(|owner| owner == me)
    }

    /// Frees the connections whose owning process no longer exists; returns
    /// how many. Hosts call it when a worker starts. Also finishes the
    /// connects and disconnects that a process killed in their middle left
    /// half done, so that its clients' live counts and its connection slots
    /// are given back (such a disconnect counts as a freed connection).
    pub fn reap_dead(&self) -> usize {
        let mut verdicts: Vec<(u64, bool)> = Vec::new();
        let mut dead = move |owner: u64| match verdicts.iter().find(|(t, _)| *t == owner) {
            Some((_, alive)) => !*alive,
            None => {
                let alive = process::is_alive(owner);
                verdicts.push((owner, alive));
                !alive
            }
        };
        let reaped = self.close_owned_by(&mut dead);
        let stranded: Vec<_> = conn::stranded(&self.region, process::token(), dead).collect();
        let mut closed = 0;
        for s in stranded {
            match s {
                conn::Stranded::Free(index) => conn::recycle(&self.region, index),
                conn::Stranded::Holding(index, c, closing) => {
                    self.give_back(index, c);
                    closed += closing as usize;
                }
            }
        }
        reaped + closed
    }

    /// Closes every live connection whose owner token `close` picks;
    /// returns how many this call closed.
    fn close_owned_by(&self, mut close: impl FnMut(u64) -> bool) -> usize {
        let live: Vec<_> = conn::live_connections(&self.region).collect();
        live.into_iter()
            .filter(|(_, l)| close(self.region.conn(l.index).owner.load(Ordering::Relaxed)))
            .filter(|&(handle, _)| self.disconnect_raw(handle))
            .count()
    }

    // ---- connections -------------------------------------------------

    /// Atomically checks and registers a connection of `client`, reading the
    /// limiter's clock. See [`Limiter::connect_at`].
    pub fn connect(&self, client: &[u8]) -> (Decision, Option<Conn>) {
        let (d, c) = self.connect_at(client, clock::now_ms());
        (on_engine_clock(d), c)
    }

    /// Atomically checks table capacity, concurrency and connection rate for
    /// `client`, in that order, and registers the connection when they pass:
    /// two racing connects never both take the last slot. Returns the handle
    /// when allowed (also in dry-run mode, and untracked in fail-open or
    /// dry-run mode when the table is full).
    pub fn connect_at(&self, client: &[u8], now_ms: u64) -> (Decision, Option<Conn>) {
        let h = table::hash(&self.region, client);
        match self.connect_fast(h, now_ms) {
            Some(allowed) => allowed,
            None => self.connect_inner(client, h, now_ms, true),
        }
    }

    /// The common case of a connect (see [`Limiter::traffic_fast`]): a
    /// client already in the table, no dry run, within its limits, a free
    /// connection slot, uncontended. Otherwise `None`, having changed
    /// nothing, and the general path decides.
    #[inline(always)]
    fn connect_fast(&self, h: u128, now_ms: u64) -> Option<(Decision, Option<Conn>)> {
        let r = &self.region;
        let l = r.header().connect_limits()?;
        if l.dry_run {
            return None;
        }
        // The conns word as the lookup read it, between two reads of the
        // key: this client's. If it changed since, the CAS below fails.
        let (found, w) = table::find_with_conns(r, h)?;
        let slot = &r.client(found.index).conns;
        let c = Conns::unpack(w);
        let pos = Position::with(now_ms, &l.window, l.window_offset);
        let rolled = window::roll(c.id, c.prev, c.cur, pos);
        let d = judge_connect(&c, &rolled, &l.window, l.connections_per_window, l.max_concurrent);
        if !d.allowed || d.reason != Reason::Ok {
            return None;
        }
        let token = process::token();
        let index = conn::alloc(r)?;
        conn::prepare(r, index, found.index, found.epoch, pos.id, now_ms, token);
        // AcqRel: as in `admit`.
        if slot.compare_exchange(w, counted_connect(&c, &rolled), Ordering::AcqRel, Ordering::Relaxed).is_err() {
            conn::release(r, index);
            return None;
        }
        let handle = conn::publish(r, index);
        r.count(|s| &s.connections_allowed, 1);
        Some((d, Conn::from_raw(handle)))
    }

    #[inline(never)]
    fn connect_inner(&self, client: &[u8], h: u128, now_ms: u64, enforce: bool) -> (Decision, Option<Conn>) {
        let r = &self.region;
        let snap = r.header().snapshot();
        let pos = Position::with(now_ms, &snap.window, snap.window_offset);
        let token = process::token();
        for _ in 0..MAX_RELOOKUPS {
            let Ok(found) = table::find_or_insert(r, h, client, pos) else {
                return self.table_full(&snap, client, now_ms);
            };
            let Some(index) = conn::alloc(r) else {
                return self.table_full(&snap, client, now_ms);
            };
            conn::prepare(r, index, found.index, found.epoch, pos.id, now_ms, token);
            match self.admit(found, &snap, pos, enforce) {
                Admit::Stale => conn::release(r, index),
                Admit::Denied(d) => {
                    conn::release(r, index);
                    return (self.report(d, client, 0, 1, now_ms), None);
                }
                Admit::Allowed(d) => {
                    let handle = conn::publish(r, index);
                    r.count(|s| &s.connections_allowed, 1);
                    let d = if d.reason != Reason::Ok { self.report(d, client, handle, 1, now_ms) } else { d };
                    return (d, Conn::from_raw(handle));
                }
            }
        }
        self.table_full(&snap, client, now_ms)
    }

    /// Counts one connection on a client's conns word, after checking
    /// concurrency and rate (unless `enforce` is false: the seed's register).
    fn admit(&self, found: Found, snap: &Snapshot, pos: Position, enforce: bool) -> Admit {
        let slot = &self.region.client(found.index).conns;
        let mut w = slot.load(Ordering::Acquire);
        loop {
            let c = Conns::unpack(w);
            if c.epoch != found.epoch {
                return Admit::Stale;
            }
            let r = window::roll(c.id, c.prev, c.cur, pos);
            let mut d = judge_connect(&c, &r, &snap.window, snap.connections_per_window, snap.max_concurrent);
            if !d.allowed && enforce {
                if !snap.dry_run() {
                    return Admit::Denied(d);
                }
                d.allowed = true;
            } else if !d.allowed {
                d = Decision::allow();
            }
            // AcqRel: one CAS decides and counts, so racing connects are
            // serialised on this word (C1).
            match slot.compare_exchange(w, counted_connect(&c, &r), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Admit::Allowed(d),
                Err(cur) => w = cur,
            }
        }
    }

    fn table_full(&self, snap: &Snapshot, client: &[u8], now_ms: u64) -> (Decision, Option<Conn>) {
        let r = &self.region;
        let d = Decision { retry_after_ms: 0, ..Decision::deny(Reason::TableFull) };
        // Dry run allows what it would deny: untracked, as fail open does.
        if snap.fail_open() || snap.dry_run() {
            r.count(|s| &s.untracked_allowed, 1);
            r.count(|s| &s.connections_allowed, 1);
            let pos = Position::with(now_ms, &snap.window, snap.window_offset);
            let token = process::token();
            let handle = conn::alloc(r).map(|i| conn::open(r, i, NO_CLIENT, 0, pos.id, now_ms, token));
            let d = Decision { allowed: true, ..d };
            let d = if snap.fail_open() { d } else { self.report(d, client, handle.unwrap_or(0), 1, now_ms) };
            return (d, handle.and_then(Conn::from_raw));
        }
        (self.report(d, client, 0, 1, now_ms), None)
    }

    /// Closes a connection: frees its concurrency slot. Idempotent; a stale
    /// or forged handle is ignored. Returns whether this call closed it.
    pub fn disconnect(&self, conn: Conn) -> bool {
        self.disconnect_raw(conn.raw())
    }

    pub(crate) fn disconnect_raw(&self, handle: u64) -> bool {
        let Some((index, closed)) = conn::close(&self.region, handle, process::token()) else {
            return false;
        };
        self.give_back(index, closed);
        true
    }

    /// The rest of a close, once connection slot `index` is closing: gives
    /// the client's live count back, adds the connection's totals to the
    /// statistics, and puts the slot back on its free list.
    fn give_back(&self, index: u32, closed: conn::Closed) {
        let r = &self.region;
        if closed.client != NO_CLIENT && closed.client < r.layout.slots() {
            let slot = &r.client(closed.client).conns;
            let mut w = slot.load(Ordering::Acquire);
            loop {
                let mut c = Conns::unpack(w);
                if c.epoch != closed.client_epoch || c.active == 0 {
                    break;
                }
                c.active -= 1;
                // AcqRel: pairs with the connects that read this word.
                match slot.compare_exchange(w, c.pack(), Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => break,
                    Err(cur) => w = cur,
                }
            }
        }
        // At once (see `conn::given_back`).
        conn::given_back(r, index);
        if closed.messages | closed.bytes != 0 {
            let stripe = r.stripe(thread_hint());
            add_saturating(&stripe.closed_messages, closed.messages);
            add_saturating(&stripe.closed_bytes, closed.bytes);
        }
        conn::recycle(r, index);
    }

    /// The seed's `check_connection`: decides without registering. Racy by
    /// design: use [`Limiter::connect`] to decide and register in one step.
    pub fn check_connection(&self, client: &[u8]) -> Decision {
        on_engine_clock(self.check_connection_at(client, clock::now_ms()))
    }

    /// [`Limiter::check_connection`] with the caller's clock.
    pub fn check_connection_at(&self, client: &[u8], now_ms: u64) -> Decision {
        let r = &self.region;
        let snap = r.header().snapshot();
        let pos = Position::with(now_ms, &snap.window, snap.window_offset);
        let h = table::hash(r, client);
        let c = match table::find(r, h) {
            Some(f) => Conns::unpack(r.client(f.index).conns.load(Ordering::Acquire)),
            None => Conns::default(),
        };
        let roll = window::roll(c.id, c.prev, c.cur, pos);
        let rate = Check {
            reason: Reason::ConnectionRate,
            limit: snap.connections_per_window,
            prev: roll.prev,
            cur: roll.cur,
            cost: 1,
            window: snap.window,
            elapsed_ms: roll.elapsed_ms,
        };
        let mut d = if snap.max_concurrent != 0 && c.active + 1 > snap.max_concurrent {
            Decision {
                allowed: false,
                reason: Reason::ConcurrentConnections,
                retry_after_ms: 0,
                limit: snap.max_concurrent,
                remaining: 0,
                current: c.active,
            }
        } else if !rate.passes() {
            denial(&rate, rate.retry())
        } else {
            return allowance(&[rate]);
        };
        // Dry run: decided, reported and counted as a would-be denial, allowed.
        d.allowed = snap.dry_run();
        self.report(d, client, 0, 1, now_ms)
    }

    /// The seed's `register_connection`: counts a connection without checking
    /// limits (call [`Limiter::check_connection`] first). Racy by design.
    pub fn register_connection(&self, client: &[u8]) -> Result<Conn, Error> {
        self.register_connection_at(client, clock::now_ms())
    }

    /// [`Limiter::register_connection`] with the caller's clock.
    pub fn register_connection_at(&self, client: &[u8], now_ms: u64) -> Result<Conn, Error> {
        match self.connect_inner(client, table::hash(&self.region, client), now_ms, false) {
            (_, Some(c)) => Ok(c),
            (_, None) => Err(Error::TableFull),
        }
    }

    /// Live connections of a client (0 when unknown).
    pub fn client_connections(&self, client: &[u8]) -> u32 {
        let r = &self.region;
        table::find(r, table::hash(r, client))
            .map(|f| Conns::unpack(r.client(f.index).conns.load(Ordering::Acquire)).active as u32)
            .unwrap_or(0)
    }

    // ---- messages ----------------------------------------------------

    /// Checks one message of `size` bytes on a connection, reading the
    /// limiter's clock. See [`Limiter::check_message_at`].
    #[inline]
    pub fn check_message(&self, conn: Conn, size: u64) -> Decision {
        on_engine_clock(self.check_message_at(conn, size, clock::now_ms()))
    }

    /// Checks, in order: the handle, `max_message_size`, the connection's
    /// message rate and bandwidth, the client's message rate and bandwidth.
    /// Allowed messages count against every one of them; denied ones
    /// against none.
    // Inlined into every caller (the C ABI's functions, the bindings'
    // callbacks): the decision then stays in registers on its way out
    // instead of being stored by this function and reloaded by the caller.
    // Measured through Node's native call, six alternations: 39 to 61 ns
    // over an empty N-API call inlined, 49 to 73 ns not (median 13 ns less).
    #[inline(always)]
    pub fn check_message_at(&self, conn: Conn, size: u64, now_ms: u64) -> Decision {
        self.check_traffic(conn, 1, size, size, now_ms)
    }

    /// A later part of a message already allowed by
    /// [`Limiter::check_message`] (a WebSocket continuation frame): `size`
    /// more bytes count against the connection's and the client's byte
    /// budgets, and no new message against their message rates.
    /// `message_size` is the whole message so far, this part included; it
    /// is checked against `max_message_size`. `message_size < size` is
    /// refused with [`Reason::InvalidArgument`].
    ///
    /// ```
    /// use ratethrottle::{Limiter, Limits, Reason};
    /// let lim = Limiter::new(&Limits { max_message_size: 100, messages_per_window: 1, ..Limits::default() })?;
    /// let (d, conn) = lim.connect_at(b"client", 0);
    /// let conn = conn.expect(d.reason.as_str());
    /// assert!(lim.check_message_at(conn, 60, 0).allowed); // the first frame: one message
    /// assert!(lim.check_continuation_at(conn, 30, 90, 0).allowed); // no second message
    /// assert_eq!(lim.check_continuation_at(conn, 30, 120, 0).reason, Reason::MessageTooLarge);
    /// assert_eq!(lim.connection_info(conn).unwrap().message_count, 1);
    /// # Ok::<(), ratethrottle::Error>(())
    /// ```
    pub fn check_continuation(&self, conn: Conn, size: u64, message_size: u64) -> Decision {
        on_engine_clock(self.check_continuation_at(conn, size, message_size, clock::now_ms()))
    }

    /// [`Limiter::check_continuation`] with the caller's clock.
    pub fn check_continuation_at(&self, conn: Conn, size: u64, message_size: u64, now_ms: u64) -> Decision {
        if message_size < size {
            self.region.count(|s| &s.denied[Reason::InvalidArgument as usize], 1);
            return Decision::deny(Reason::InvalidArgument);
        }
        self.check_traffic(conn, 0, size, message_size, now_ms)
    }

    /// The body of both message checks: `msgs` (1 or 0) messages of `size`
    /// bytes, in a message of `message_size` bytes so far.
    #[inline(always)]
    fn check_traffic(&self, conn: Conn, msgs: u64, size: u64, message_size: u64, now_ms: u64) -> Decision {
        match self.traffic_fast(conn, msgs, size, message_size, now_ms) {
            Some(d) => d,
            None => self.traffic_general(conn, msgs, size, message_size, now_ms),
        }
    }

    /// The common case of both message checks, small enough to stay in
    /// registers: a live connection, no dry run, a message within every
    /// limit (the connection's, then its client's aggregate ones if set),
    /// and no other thread writing a word between its load and its CAS.
    /// Anything else returns `None` having changed nothing (a client charge
    /// is refunded), and the general path decides.
    #[inline(always)]
    fn traffic_fast(&self, conn: Conn, msgs: u64, size: u64, message_size: u64, now_ms: u64) -> Option<Decision> {
        let (live, slot) = conn::lookup(&self.region, conn.raw())?;
        let l = self.region.header().message_limits()?;
        if l.dry_run || (l.max_message_size != 0 && message_size > l.max_message_size) {
            return None;
        }
        let pos = Position::with(now_ms, &l.window, l.window_offset);
        let tw = slot.traffic.load(Ordering::Acquire);
        let pair = Pair::conn_limits(l.messages_per_window, l.bytes_per_window, msgs);
        let ready = attempt(tw, live.generation & TAG_MASK, pair, &l.window, pos, size).ok()?;
        if ready.over.is_some() {
            return None;
        }
        if live.client != NO_CLIENT && l.client_limited() {
            // As in the general path: the connection judged first, then the
            // client charged, then the connection; a failure refunds.
            let word = &self.region.client(live.client).traffic;
            let ctw = word.load(Ordering::Acquire);
            let pair = Pair::client_limits(l.client_messages, l.client_bytes, msgs);
            let client = attempt(ctw, live.client_epoch & TAG_MASK, pair, &l.window, pos, size).ok()?;
            if client.over.is_some() {
                return None;
            }
            // AcqRel: as in `charge_word`.
            word.compare_exchange(ctw, client.word, Ordering::AcqRel, Ordering::Relaxed).ok()?;
            if slot.traffic.compare_exchange(tw, ready.word, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                refund(word, &client.charged);
                return None;
            }
        } else {
            // AcqRel: as in `charge_word`.
            slot.traffic.compare_exchange(tw, ready.word, Ordering::AcqRel, Ordering::Relaxed).ok()?;
        }
        add_saturating(&slot.acc_messages, ready.charged.spilled_msgs);
        add_saturating(&slot.acc_bytes, ready.charged.spilled_bytes);
        slot.last_message_at_ms.store(now_ms, Ordering::Relaxed);
        Some(ready.charged.decision)
    }

    /// Every case of the message checks (see [`Limiter::traffic_fast`]).
    #[inline(never)]
    fn traffic_general(&self, conn: Conn, msgs: u64, size: u64, message_size: u64, now_ms: u64) -> Decision {
        let r = &self.region;
        let Some((live, slot)) = conn::lookup(r, conn.raw()) else {
            r.count(|s| &s.denied[Reason::UnknownConnection as usize], 1);
            return Decision::deny(Reason::UnknownConnection);
        };
        let snap = r.header().snapshot();
        let mut would_deny: Option<Decision> = None;
        if snap.max_message_size != 0 && message_size > snap.max_message_size {
            let d = Decision {
                allowed: false,
                reason: Reason::MessageTooLarge,
                retry_after_ms: RETRY_NEVER,
                limit: snap.max_message_size,
                remaining: 0,
                current: message_size,
            };
            if !snap.dry_run() {
                return self.report_conn(d, &live, size, now_ms);
            }
            would_deny = Some(d);
        }
        let pos = Position::with(now_ms, &snap.window, snap.window_offset);
        let tag = live.generation & TAG_MASK;
        let client = (live.client != NO_CLIENT && snap.client_limited()).then_some(live.client);
        let tw = slot.traffic.load(Ordering::Acquire);
        let mut client_charge = None;
        if let Some(ci) = client {
            // Judge the connection word first, without writing it, so that a
            // message the connection refuses is never charged to the client.
            let t = Traffic::unpack(tw);
            if t.tag != tag {
                return Decision::deny(Reason::UnknownConnection);
            }
            let v = judge(&Pair::conn(&snap, msgs).checks(&snap.window, roll_traffic(&t, pos), size));
            if let Some(fail) = v.fail {
                let retry = v.retry_after_ms.max(self.client_retry(ci, &snap, pos, msgs, size));
                let d = denial(&fail, retry);
                if !snap.dry_run() {
                    return self.report_conn(d, &live, size, now_ms);
                }
                would_deny.get_or_insert(d);
            }
            match self.charge_client(ci, live.client_epoch, &snap, pos, msgs, size) {
                Ok((charge, dry)) => {
                    client_charge = Some(charge);
                    if let Some(d) = dry {
                        would_deny.get_or_insert(d);
                    }
                }
                Err(d) => return self.report_conn(d, &live, size, now_ms),
            }
        }
        match self.charge_conn(slot, tag, &snap, pos, msgs, size, tw) {
            Ok((allowed, dry)) => {
                slot.last_message_at_ms.store(now_ms, Ordering::Relaxed);
                match would_deny.or(dry) {
                    Some(mut d) => {
                        d.allowed = true;
                        self.report_conn(d, &live, size, now_ms)
                    }
                    None => allowed,
                }
            }
            Err(d) => {
                if let (Some(ci), Some(ch)) = (client, client_charge) {
                    refund(&r.client(ci).traffic, &ch);
                }
                self.report_conn(d, &live, size, now_ms)
            }
        }
    }

    /// Commits a message to the connection word. `Err` when the connection
    /// is over a limit; in dry-run mode `Ok` carries the would-be denial.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn charge_conn(
        &self,
        slot: &crate::region::ConnSlot,
        tag: u64,
        snap: &Snapshot,
        pos: Position,
        msgs: u64,
        size: u64,
        tw: u128,
    ) -> Result<(Decision, Option<Decision>), Decision> {
        let (c, dry) =
            charge_word(&slot.traffic, tw, tag, Pair::conn(snap, msgs), snap, pos, size, Reason::UnknownConnection)?;
        // Lifetime totals: what left the windows, and what overflowed a field.
        add_saturating(&slot.acc_messages, c.spilled_msgs);
        add_saturating(&slot.acc_bytes, c.spilled_bytes);
        Ok((c.decision, dry))
    }

    /// Commits one message of `size` to a client or key word. `Ok` carries
    /// the charge and, in dry-run mode, the would-be denial; `Err` with
    /// `TableFull` when the slot was reclaimed meanwhile (keys only: the
    /// caller looks again).
    fn charge_client(
        &self,
        index: u32,
        epoch: u64,
        snap: &Snapshot,
        pos: Position,
        msgs: u64,
        size: u64,
    ) -> Result<(Charged, Option<Decision>), Decision> {
        let word = &self.region.client(index).traffic;
        let tw = word.load(Ordering::Acquire);
        charge_word(word, tw, epoch & TAG_MASK, Pair::client(snap, msgs), snap, pos, size, Reason::TableFull)
    }

    /// The wait until a client's windows would take this message.
    fn client_retry(&self, index: u32, snap: &Snapshot, pos: Position, msgs: u64, size: u64) -> u64 {
        let t = Traffic::unpack(self.region.client(index).traffic.load(Ordering::Acquire));
        judge(&Pair::client(snap, msgs).checks(&snap.window, roll_traffic(&t, pos), size)).retry_after_ms
    }

    /// Checks one message of `size` bytes against a key's (room's, channel's,
    /// user's) aggregate limits: `client_messages_per_window` and
    /// `client_bytes_per_window`. Keys share the table with client ids.
    ///
    /// ```
    /// use ratethrottle::{Limiter, Limits, Reason};
    /// let lim = Limiter::new(&Limits { client_messages_per_window: 2, window_ms: 1000, ..Limits::default() })?;
    /// assert!(lim.check_key_at(b"room:lobby", 40, 0).allowed);
    /// assert!(lim.check_key_at(b"room:lobby", 40, 0).allowed);
    /// let d = lim.check_key_at(b"room:lobby", 40, 0);
    /// assert_eq!(d.reason, Reason::ClientMessageRate);
    /// assert!(lim.check_key_at(b"room:other", 40, 0).allowed);
    /// # Ok::<(), ratethrottle::Error>(())
    /// ```
    pub fn check_key(&self, key: &[u8], size: u64) -> Decision {
        on_engine_clock(self.check_key_at(key, size, clock::now_ms()))
    }

    /// [`Limiter::check_key`] with the caller's clock.
    pub fn check_key_at(&self, key: &[u8], size: u64, now_ms: u64) -> Decision {
        let h = table::hash(&self.region, key);
        match self.key_fast(h, size, now_ms) {
            Some(d) => d,
            None => self.key_general(h, key, size, now_ms),
        }
    }

    /// The common case of a key check (see [`Limiter::traffic_fast`]): a
    /// key already in the table, aggregate limits on, no dry run, within
    /// its limits, uncontended. Otherwise `None`, having changed nothing.
    #[inline(always)]
    fn key_fast(&self, h: u128, size: u64, now_ms: u64) -> Option<Decision> {
        let r = &self.region;
        let l = r.header().message_limits()?;
        if l.dry_run || !l.client_limited() {
            return None;
        }
        let found = table::find(r, h)?;
        let pos = Position::with(now_ms, &l.window, l.window_offset);
        let word = &r.client(found.index).traffic;
        let tw = word.load(Ordering::Acquire);
        let pair = Pair::client_limits(l.client_messages, l.client_bytes, 1);
        let ready = attempt(tw, found.epoch & TAG_MASK, pair, &l.window, pos, size).ok()?;
        if ready.over.is_some() {
            return None;
        }
        // AcqRel: as in `charge_word`.
        word.compare_exchange(tw, ready.word, Ordering::AcqRel, Ordering::Relaxed).ok()?;
        r.count(|s| &s.keys_allowed, 1);
        Some(ready.charged.decision)
    }

    /// Every case of a key check, for a key of hash `h`.
    #[inline(never)]
    fn key_general(&self, h: u128, key: &[u8], size: u64, now_ms: u64) -> Decision {
        let r = &self.region;
        let snap = r.header().snapshot();
        if !snap.client_limited() {
            r.count(|s| &s.keys_allowed, 1);
            return Decision::allow();
        }
        let pos = Position::with(now_ms, &snap.window, snap.window_offset);
        for _ in 0..MAX_RELOOKUPS {
            let Ok(found) = table::find_or_insert(r, h, key, pos) else {
                break;
            };
            match self.charge_client(found.index, found.epoch, &snap, pos, 1, size) {
                Ok((charge, dry)) => {
                    r.count(|s| &s.keys_allowed, 1);
                    return match dry {
                        Some(mut d) => {
                            d.allowed = true;
                            self.report(d, key, 0, size, now_ms)
                        }
                        None => charge.decision,
                    };
                }
                Err(d) if d.reason == Reason::TableFull => continue,
                Err(d) => return self.report(d, key, 0, size, now_ms),
            }
        }
        let d = Decision::deny(Reason::TableFull);
        if snap.fail_open() || snap.dry_run() {
            r.count(|s| &s.untracked_allowed, 1);
            let d = Decision { allowed: true, ..d };
            return if snap.fail_open() { d } else { self.report(d, key, 0, size, now_ms) };
        }
        self.report(d, key, 0, size, now_ms)
    }

    // ---- reporting and observation -------------------------------------

    fn report_conn(&self, d: Decision, live: &conn::Live, size: u64, now_ms: u64) -> Decision {
        let (id, len) =
            if live.client == NO_CLIENT { ([0u8; 40], 0) } else { table::client_id(&self.region, live.client) };
        let handle = conn::handle(&self.region, live.index, live.generation);
        self.report_id(d, &id[..(len as usize).min(40)], len, handle, size, now_ms)
    }

    fn report(&self, d: Decision, id: &[u8], conn: u64, size: u64, now_ms: u64) -> Decision {
        self.report_id(d, id, id.len().min(u32::MAX as usize) as u32, conn, size, now_ms)
    }

    /// Counts a denial (or a dry-run would-be denial) and reports it to the
    /// callback and the ring. Returns the decision unchanged.
    fn report_id(&self, d: Decision, id: &[u8], id_len: u32, conn: u64, size: u64, now_ms: u64) -> Decision {
        let r = &self.region;
        if d.allowed {
            r.count(|s| &s.dry_run_denied, 1);
        } else {
            r.count(|s| &s.denied[d.reason as usize], 1);
        }
        if matches!(d.reason, Reason::UnknownConnection | Reason::InvalidArgument | Reason::Ok) {
            return d;
        }
        let mut v = Violation::empty();
        v.reason = d.reason;
        let n = id.len().min(40);
        v.client_id[..n].copy_from_slice(&id[..n]);
        v.client_id_len = id_len;
        v.conn = conn;
        v.limit = d.limit;
        v.current = d.current;
        v.size = size;
        v.retry_after_ms = d.retry_after_ms;
        v.at_ms = now_ms;
        self.callbacks.call(&v);
        events::push(r, &v);
        d
    }

    /// Statistics: counters plus a scan of every slot (O(capacity)).
    pub fn stats(&self) -> Stats {
        stats::collect(&self.region)
    }

    /// What is known of a live connection; `None` when closed or stale.
    pub fn connection_info(&self, conn: Conn) -> Option<ConnectionInfo> {
        stats::connection_info(&self.region, conn.raw())
    }

    /// The statistics in Prometheus text format.
    pub fn prometheus(&self) -> String {
        let mut s = String::new();
        stats::prometheus(&self.stats(), &mut s);
        s
    }

    /// Sets (or with `None` removes) the violation callback of this handle.
    /// It runs synchronously on the deciding thread, for every denial and
    /// every dry-run would-be denial; keep it short.
    ///
    /// ```
    /// use ratethrottle::{Limiter, Limits};
    /// use std::sync::{Arc, Mutex};
    /// let lim = Limiter::new(&Limits { max_message_size: 10, ..Limits::default() })?;
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let s = seen.clone();
    /// lim.set_violation_callback(Some(Box::new(move |v| {
    ///     s.lock().unwrap().push((v.violation_type(), v.client_id().to_vec(), v.size));
    /// })));
    /// let (_, conn) = lim.connect_at(b"10.1.2.3", 0);
    /// assert!(!lim.check_message_at(conn.unwrap(), 100, 0).allowed);
    /// assert_eq!(*seen.lock().unwrap(), vec![("message_size", b"10.1.2.3".to_vec(), 100)]);
    /// // The same record waits in the region's ring for any reader.
    /// let mut out = [ratethrottle::Violation::default(); 8];
    /// assert_eq!(lim.drain_violations(&mut out), 1);
    /// # Ok::<(), ratethrottle::Error>(())
    /// ```
    pub fn set_violation_callback(&self, cb: Option<ViolationCallback>) {
        self.callbacks.set(cb);
    }

    /// Moves up to `out.len()` violations from the region's ring into `out`;
    /// returns how many.
    pub fn drain_violations(&self, out: &mut [Violation]) -> usize {
        let mut n = 0;
        while n < out.len() {
            match events::pop(&self.region) {
                Some(v) => {
                    out[n] = v;
                    n += 1;
                }
                None => break,
            }
        }
        n
    }
}

/// The decision on one more connection of a client whose conns word is
/// `c`, rolled to the current window as `r`: concurrency, then rate (before
/// dry run).
#[inline(always)]
fn judge_connect(c: &Conns, r: &Rolled, window: &Divisor, per_window: u64, max_concurrent: u64) -> Decision {
    let rate = Check {
        reason: Reason::ConnectionRate,
        limit: per_window,
        prev: r.prev,
        cur: r.cur,
        cost: 1,
        window: *window,
        elapsed_ms: r.elapsed_ms,
    };
    if max_concurrent != 0 && c.active + 1 > max_concurrent {
        Decision {
            allowed: false,
            reason: Reason::ConcurrentConnections,
            retry_after_ms: 0,
            limit: max_concurrent,
            remaining: 0,
            current: c.active,
        }
    } else if !rate.passes() {
        denial(&rate, rate.retry())
    } else if max_concurrent != 0 {
        Decision {
            allowed: true,
            reason: Reason::Ok,
            retry_after_ms: 0,
            limit: max_concurrent,
            remaining: max_concurrent - (c.active + 1),
            current: c.active + 1,
        }
    } else {
        allowance(&[rate])
    }
}

/// The conns word `c` (rolled as `r`) with one more connection counted.
#[inline(always)]
fn counted_connect(c: &Conns, r: &Rolled) -> u128 {
    Conns {
        epoch: c.epoch,
        id: r.id,
        prev: r.prev,
        cur: saturate(r.cur, 1, CONN_MAX).0,
        active: (c.active + 1).min(CONN_MAX),
    }
    .pack()
}

enum Admit {
    Allowed(Decision),
    Denied(Decision),
    Stale,
}

/// The two limits of one traffic word: a connection's, or a client's / key's.
#[derive(Clone, Copy)]
struct Pair {
    /// Messages this call adds: 1 for a new message, 0 for a later part of
    /// one (its message rate is then not judged).
    cost: u64,
    messages: u64,
    bytes: u64,
    message_reason: Reason,
    byte_reason: Reason,
}

impl Pair {
    #[inline(always)]
    fn conn(snap: &Snapshot, cost: u64) -> Pair {
        Pair::conn_limits(snap.messages_per_window, snap.bytes_per_window, cost)
    }

    /// A connection's two limits.
    #[inline(always)]
    fn conn_limits(messages: u64, bytes: u64, cost: u64) -> Pair {
        Pair { cost, messages, bytes, message_reason: Reason::MessageRate, byte_reason: Reason::Bandwidth }
    }

    #[inline(always)]
    fn client(snap: &Snapshot, cost: u64) -> Pair {
        Pair::client_limits(snap.client_messages, snap.client_bytes, cost)
    }

    /// A client's (or key's) two aggregate limits.
    #[inline(always)]
    fn client_limits(messages: u64, bytes: u64, cost: u64) -> Pair {
        Pair { cost, messages, bytes, message_reason: Reason::ClientMessageRate, byte_reason: Reason::ClientBandwidth }
    }

    /// The message limit this call is judged against: none for a later
    /// part of a message.
    #[inline(always)]
    fn message_limit(&self) -> u64 {
        if self.cost == 0 {
            0
        } else {
            self.messages
        }
    }

    /// Both checks, for a message of `size` bytes, in check order.
    fn checks(&self, window: &Divisor, rt: RolledTraffic, size: u64) -> [Check; 2] {
        [
            Check {
                reason: self.message_reason,
                limit: self.message_limit(),
                prev: rt.msgs.prev,
                cur: rt.msgs.cur,
                cost: self.cost,
                window: *window,
                elapsed_ms: rt.msgs.elapsed_ms,
            },
            Check {
                reason: self.byte_reason,
                limit: self.bytes,
                prev: rt.bytes.prev,
                cur: rt.bytes.cur,
                cost: size,
                window: *window,
                elapsed_ms: rt.bytes.elapsed_ms,
            },
        ]
    }

    /// The denial for a word that failed (cold: built only on denial).
    #[cold]
    #[inline(never)]
    fn denial(&self, window: &Divisor, rt: RolledTraffic, size: u64) -> Decision {
        let v = judge(&self.checks(window, rt, size));
        let fail = v.fail.expect("a check failed");
        denial(&fail, v.retry_after_ms)
    }
}

/// What one committed message did to a traffic word.
struct Charged {
    /// The window it was counted in, and what was added to it.
    id: u64,
    msgs: u64,
    bytes: u64,
    /// Counts that left both windows or overflowed a field (for lifetime totals).
    spilled_msgs: u64,
    spilled_bytes: u64,
    /// The allowed decision (the first enabled limit reports its budget).
    decision: Decision,
}

/// One try at charging a traffic word: the word to write and what writing
/// it charges, and whether a limit refuses the message.
struct Ready {
    word: u128,
    charged: Charged,
    /// The windows rolled to now, when a limit refuses the message.
    over: Option<RolledTraffic>,
}

/// Decides one message of `size` bytes against a traffic word's two limits
/// as of the loaded value `tw`, and builds the word that counts it. `Err`
/// when the word's tag is not `tag` (it belongs to someone else now).
#[inline(always)]
fn attempt(tw: u128, tag: u64, pair: Pair, window: &Divisor, pos: Position, size: u64) -> Result<Ready, ()> {
    let t = Traffic::unpack(tw);
    if t.tag != tag {
        return Err(());
    }
    let rt = roll_traffic(&t, pos);
    let (e, w) = (rt.msgs.elapsed_ms, window.d);
    let m_ok = pair.message_limit() == 0 || window::admits(rt.msgs.prev, rt.msgs.cur, 1, pair.messages, w, e);
    let b_ok = pair.bytes == 0 || window::admits(rt.bytes.prev, rt.bytes.cur, size, pair.bytes, w, e);
    let (mc, mo) = saturate(rt.msgs.cur, pair.cost, MSGS_MAX);
    let (bc, bo) = saturate(rt.bytes.cur, size, BYTES_MAX);
    let new = Traffic {
        tag,
        id: rt.msgs.id,
        msgs_prev: rt.msgs.prev,
        msgs_cur: mc,
        bytes_prev: rt.bytes.prev,
        bytes_cur: bc,
    };
    let mut decision = Decision::allow();
    if pair.message_limit() != 0 {
        decision.limit = pair.messages;
        (decision.current, decision.remaining) = window::budget(rt.msgs.prev, mc, pair.messages, window, e);
    } else if pair.bytes != 0 {
        decision.limit = pair.bytes;
        (decision.current, decision.remaining) = window::budget(rt.bytes.prev, bc, pair.bytes, window, e);
    }
    Ok(Ready {
        word: new.pack(),
        charged: Charged {
            id: rt.msgs.id,
            msgs: mc - rt.msgs.cur,
            bytes: bc - rt.bytes.cur,
            spilled_msgs: rt.msgs.dropped + mo,
            spilled_bytes: rt.bytes.dropped.saturating_add(bo),
            decision,
        },
        over: (!(m_ok && b_ok)).then_some(rt),
    })
}

/// Decides one message of `size` bytes against a traffic word's two limits
/// and counts it with one CAS, re-deciding on every retry. `stale` is the
/// reason returned when the word's tag shows it now belongs to someone else.
/// In dry-run mode a refused message is counted and `Ok` carries the
/// would-be denial.
#[allow(clippy::too_many_arguments)]
fn charge_word(
    word: &AtomicU128,
    mut tw: u128,
    tag: u64,
    pair: Pair,
    snap: &Snapshot,
    pos: Position,
    size: u64,
    stale: Reason,
) -> Result<(Charged, Option<Decision>), Decision> {
    loop {
        let ready = attempt(tw, tag, pair, &snap.window, pos, size).map_err(|()| Decision::deny(stale))?;
        let mut dry = None;
        if let Some(rt) = ready.over {
            let d = pair.denial(&snap.window, rt, size);
            if !snap.dry_run() {
                return Err(d);
            }
            dry = Some(d);
        }
        // AcqRel: one CAS decides and counts both limits together.
        match word.compare_exchange(tw, ready.word, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok((ready.charged, dry)),
            Err(cur) => tw = cur,
        }
    }
}

/// Takes a charge back from the window it landed in (the current one, or
/// the previous one if the window has rotated once since).
fn refund(word: &AtomicU128, ch: &Charged) {
    let mut tw = word.load(Ordering::Acquire);
    loop {
        let mut t = Traffic::unpack(tw);
        if t.id == ch.id {
            t.msgs_cur = t.msgs_cur.saturating_sub(ch.msgs);
            t.bytes_cur = t.bytes_cur.saturating_sub(ch.bytes);
        } else if t.id == (ch.id + 1) & ((1 << crate::packed::ID_BITS) - 1) {
            t.msgs_prev = t.msgs_prev.saturating_sub(ch.msgs);
            t.bytes_prev = t.bytes_prev.saturating_sub(ch.bytes);
        } else {
            return;
        }
        // AcqRel: as for charges.
        match word.compare_exchange(tw, t.pack(), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return,
            Err(cur) => tw = cur,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A token of a process that has exited.
    fn dead_token() -> u64 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as u64;
        child.wait().unwrap();
        pid << 32 | 1
    }

    #[test]
    fn locks_held_by_a_dead_process_are_broken() {
        // M1/C6: a process died holding every shard's insert lock, halfway
        // through an insert (a slot left pending in every shard), and holding
        // the limits writer's lock.
        let l = Limits { max_clients: 64, max_connections: 64, ..Limits::default() };
        let lim = Limiter::new(&l).unwrap();
        let r = &lim.region;
        let dead = dead_token();
        let layout = r.layout;
        for shard in 0..layout.shards {
            r.shard_lock(shard).store(dead, Ordering::Relaxed);
            let first = r.client(shard * layout.shard_len);
            first.key.store(1 << 127 | 12345, Ordering::Relaxed);
            r.tag(shard * layout.shard_len).store(0x80, Ordering::Relaxed);
        }
        r.header().limits_writer.store(dead, Ordering::Relaxed);

        let (d, c) = lim.connect_at(b"newcomer", 0);
        assert!(d.allowed, "{d:?}");
        assert_eq!(lim.client_connections(b"newcomer"), 1);
        let h = table::hash(r, b"newcomer");
        let shard = table::shard_of(r, h);
        assert_eq!(r.shard_lock(shard).load(Ordering::Relaxed), 0, "the broken lock was released");
        let first = r.client(shard * layout.shard_len);
        assert_eq!(first.key.load(Ordering::Relaxed), 0, "the dead holder's pending slot was emptied");
        assert_eq!(Conns::unpack(first.conns.load(Ordering::Relaxed)).epoch, 1, "and its epoch bumped");
        lim.disconnect(c.unwrap());

        lim.update_limits_at(&Limits { messages_per_window: 7, ..l }, 0).unwrap();
        assert_eq!(lim.limits().messages_per_window, 7);
        assert_eq!(r.header().limits_writer.load(Ordering::Relaxed), 0);
    }

    #[test]
    #[cfg_attr(miri, ignore = "spins 2^24 times on a held lock")]
    fn a_lock_held_by_a_live_process_is_waited_for_a_bounded_time() {
        // C6: another live process (pid 1, which never exits) holds every
        // shard's insert lock and never lets go. A new client's connect and
        // a new key's check give up after a bounded spin and are refused
        // with TableFull (fail closed) instead of spinning for ever in the
        // worker; clients already in the table never touch the lock.
        let l = Limits { max_clients: 64, max_connections: 64, client_messages_per_window: 5, ..Limits::default() };
        let lim = Limiter::new(&l).unwrap();
        let r = &lim.region;
        let known = lim.connect_at(b"known", 0).1.unwrap();
        let me = process::token();
        let pid_1 = (me & !(((1u64 << 22) - 1) << 32 | 0xFFFF_FFFF)) | 1 << 32;
        assert_eq!(process::pid_of(pid_1), 1);
        assert!(process::is_alive(pid_1), "pid 1 is taken for dead: the lock would be broken, not waited for");
        for shard in 0..r.layout.shards {
            r.shard_lock(shard).store(pid_1, Ordering::Relaxed);
        }
        let t = std::time::Instant::now();
        let (d, c) = lim.connect_at(b"newcomer", 0);
        assert_eq!((d.allowed, d.reason, c), (false, Reason::TableFull, None));
        assert_eq!(lim.check_key_at(b"room:new", 1, 0).reason, Reason::TableFull);
        assert!(t.elapsed() < std::time::Duration::from_secs(60), "gave up only after {:?}", t.elapsed());
        assert!(lim.check_message_at(known, 1, 0).allowed);
        assert!(lim.connect_at(b"known", 0).0.allowed);
        for shard in 0..r.layout.shards {
            assert_eq!(r.shard_lock(shard).load(Ordering::Relaxed), pid_1, "a live holder's lock is never broken");
            r.shard_lock(shard).store(0, Ordering::Relaxed);
        }
        assert!(lim.connect_at(b"newcomer", 0).0.allowed);
    }

    #[test]
    fn the_hash_secret_is_random_per_region_and_never_shown() {
        // B4 and M8: each region draws its own SipHash key, and no output
        // (statistics, Prometheus text, violation records) carries it.
        assert!(crate::atomics_are_lock_free());
        let l = Limits { messages_per_window: 1, max_clients: 64, max_connections: 64, ..Limits::default() };
        let (a, b) = (Limiter::new(&l).unwrap(), Limiter::new(&l).unwrap());
        let key = |lim: &Limiter| {
            let h = lim.region.header();
            (h.hash_k0.load(Ordering::Relaxed), h.hash_k1.load(Ordering::Relaxed))
        };
        let (k0, k1) = key(&a);
        assert_ne!((k0, k1), (0, 0));
        assert_ne!((k0, k1), key(&b), "two regions, two secrets");
        let c = a.connect_at(b"client", 0).1.unwrap();
        assert!(a.check_message_at(c, 1, 0).allowed);
        assert!(!a.check_message_at(c, 1, 0).allowed);
        let mut v = [Violation::empty(); 4];
        let n = a.drain_violations(&mut v);
        assert_eq!(n, 1);
        let shown = format!("{}\n{:?}\n{:?}\n{:?}", a.prometheus(), a.stats(), v[0], a.connection_info(c));
        for k in [k0, k1] {
            for text in [k.to_string(), format!("{k:x}"), format!("{k:X}"), format!("{k:#x}")] {
                assert!(!shown.contains(&text), "the secret {text} is shown");
            }
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "searches about a million hashes for colliding ids")]
    fn ids_aimed_at_one_probe_chain_fill_only_it() {
        // B3/B9: an attacker who knew the secret (no output shows it: see
        // the test above) picks ids whose hashes share a shard and both home
        // slots. They fill that chain's slots (2 windows of 16) and no more:
        // the next one is TableFull (fail closed), every id placed is still
        // found, and ids elsewhere (in the other shard, or in other slots of
        // the same shard) are still admitted.
        let l = Limits { max_clients: 130, max_connections: 256, ..Limits::default() };
        let lim = Limiter::new(&l).unwrap();
        let r = &lim.region;
        assert_eq!((r.layout.shards, r.layout.probe()), (2, 16));
        let h0 = table::hash(r, b"aim-0");
        let (aim, chain) = (table::homes(r, h0), table::candidates(r, h0));
        // 8 ids in the other shard and 8 in this one, away from the chain.
        let (mut attack, mut other_shard, mut same_shard) = (Vec::new(), Vec::new(), Vec::new());
        let mut i = 0u64;
        while attack.len() < chain.len() + 8 || other_shard.len() < 8 || same_shard.len() < 8 {
            let id = format!("aim-{i}").into_bytes();
            i += 1;
            let h = table::hash(r, &id);
            let homes = table::homes(r, h);
            if homes == aim {
                attack.push(id);
            } else if homes.0 != aim.0 {
                if other_shard.len() < 8 {
                    other_shard.push(id);
                }
            } else if same_shard.len() < 8 && table::candidates(r, h).iter().all(|s| chain.binary_search(s).is_err()) {
                same_shard.push(id);
            }
        }
        let elsewhere = [other_shard, same_shard].concat();

        let mut held = Vec::new();
        for (n, id) in attack.iter().enumerate() {
            let (d, c) = lim.connect_at(id, 0);
            if n < chain.len() {
                assert!(d.allowed, "aimed id {n} of a chain of {} slots: {d:?}", chain.len());
                held.push(c.unwrap());
            } else {
                assert_eq!((d.allowed, d.reason, c), (false, Reason::TableFull, None), "aimed id {n}");
            }
        }
        for id in &elsewhere {
            let (d, c) = lim.connect_at(id, 0);
            assert!(d.allowed, "{d:?}");
            held.push(c.unwrap());
        }
        for id in &attack[..chain.len()] {
            assert_eq!(lim.client_connections(id), 1);
        }
        assert_eq!(lim.stats().tracked_clients, (chain.len() + elsewhere.len()) as u64);
        assert_eq!(lim.stats().denied[Reason::TableFull as usize], 8);

        // With another secret (every region draws its own), the same ids
        // spread over both shards and all fit.
        let fresh = Limiter::new(&l).unwrap();
        let in_first =
            attack.iter().filter(|id| table::homes(&fresh.region, table::hash(&fresh.region, id)).0 == 0).count();
        assert!(in_first > 0 && in_first < attack.len(), "{in_first} of {} in shard 0", attack.len());
        for id in &attack {
            assert!(fresh.connect_at(id, 0).0.allowed);
        }
        for c in held {
            assert!(lim.disconnect(c));
        }
    }
}
