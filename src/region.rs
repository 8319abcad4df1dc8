//! The flat region: one contiguous block of atomics, with no pointers inside,
//! so it can live on the heap, in caller memory, or in shared memory mapped
//! at different addresses by several processes.
//!
//! ```text
//! +--------+-----------+-----------+-------------+------+--------------+------------+------+
//! | Header | lanes[16] | stripes[16]| shard locks | tags | client slots | conn slots | ring |
//! +--------+-----------+-----------+-------------+------+--------------+------------+------+
//! ```
//!
//! Every part starts on a 64-byte boundary. The header holds the magic, the
//! layout version and hash, the capacities, the secret hash key and the
//! limits (behind a sequence lock, so run-time updates are seen whole).
//! Under `cfg(loom)` the same parts live in boxed arrays, because loom's
//! atomics cannot be placed in raw memory.

use crate::error::Error;
use crate::limits::Limits;
use crate::sync::{spin_wait, AtomicU128, AtomicU32, AtomicU64, AtomicU8, Ordering};

pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"RTHRTL\x00\x01");
/// Bumped whenever the layout or the meaning of any word changes (2: a
/// client's home slots are found by multiplication, not by remainder; 3:
/// owner tokens carry a PID namespace tag, see `clock::process`; 4: a
/// connection slot's state has a busy bit, so that a connect or disconnect
/// cut short by a killed process can be finished, see `conn`).
pub(crate) const LAYOUT_VERSION: u32 = 4;
#[cfg(not(loom))]
pub(crate) const LANES: usize = 16;
#[cfg(not(loom))]
pub(crate) const STRIPES: usize = 16;
#[cfg(not(loom))]
pub(crate) const RING_CAP: usize = 1024;
// loom tracks every atomic it models: keep the fixed parts tiny.
#[cfg(loom)]
pub(crate) const LANES: usize = 2;
#[cfg(loom)]
pub(crate) const STRIPES: usize = 2;
#[cfg(loom)]
pub(crate) const RING_CAP: usize = 2;
/// Slots scanned from each of a client's two homes.
pub(crate) const MAX_PROBE: u32 = 16;
/// Table slots per `max_clients`: with two homes and 16-slot windows this
/// headroom lets `max_clients` ids always find a slot (simulated: no refusal
/// in 200k inserts at full load; 1.25x refused 0.08%).
pub(crate) const SLOTS_PER_CLIENT: u32 = 2;
pub(crate) const ALIGN: usize = 64;

/// The statistics stripe and free-list lane of the calling thread (taken
/// modulo their counts): a hash of its stack address, plus its process id.
/// Threads' stacks lie megabytes apart, so threads running at once mostly
/// write different stripes and lanes instead of bouncing one cache line
/// between their cores (choosing by slot index did: two threads on many
/// clients wrote the same few stripes). The process id is added because
/// forked processes (nginx workers, pre-fork servers) run at the same
/// stack addresses as their parent: by address alone every worker sharing
/// a region wrote the same stripe and lane, and two workers made fewer
/// connects per second together than one alone. Added, not hashed: workers
/// forked in a row have consecutive ids, so up to 16 of them take 16
/// different stripes and lanes (hashed, some pair of 8 workers would share
/// one most of the time). A collision costs only speed; within one thread
/// the hint may change with the stack depth, which is harmless too.
#[cfg(not(loom))]
#[inline(always)]
pub(crate) fn thread_hint() -> usize {
    let marker = 0u8;
    // The token is cached (computed once per process; connects read it anyway).
    hint_of(core::ptr::addr_of!(marker) as usize, crate::clock::process::token())
}

/// The hint of a stack address in a process (a `clock::process` token):
/// the address's hash (0 to 255) plus the pid.
#[cfg(not(loom))]
#[inline(always)]
fn hint_of(stack_addr: usize, process: u64) -> usize {
    let hash = ((stack_addr >> 16) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56;
    (hash + crate::clock::process::pid_of(process) as u64) as usize
}

/// Under loom the hint must be the same in every explored execution (loom
/// refuses a model whose operations change between runs, and its threads'
/// stacks move): every thread starts at stripe and lane 0, the case where
/// threads share them.
#[cfg(loom)]
pub(crate) fn thread_hint() -> usize {
    0
}

const STATE_READY: u32 = 2;
const STATE_INITIALIZING: u32 = 1;

/// Bytes of a region's start that [`format_begun`] gives: the magic, the
/// layout version and the state (the header's first three fields).
pub(crate) const HEAD_LEN: usize = 16;

/// The first bytes of a region whose format has begun: no magic (it is
/// stored last), this layout version, the state "initialising". A region
/// file gets them before it is sized, and [`Region::init`] keeps them while
/// it zeroes the rest, so a process killed at any point of a format leaves
/// them, told apart from a file of zeroes, which is not ours to overwrite.
pub(crate) fn format_begun() -> [u8; HEAD_LEN] {
    let mut head = [0u8; HEAD_LEN];
    head[8..12].copy_from_slice(&LAYOUT_VERSION.to_ne_bytes());
    head[12..16].copy_from_slice(&STATE_INITIALIZING.to_ne_bytes());
    head
}

pub(crate) const FLAG_FAIL_OPEN: u32 = 1;
pub(crate) const FLAG_DRY_RUN: u32 = 2;

/// The region header. Every field is atomic: other processes may read it.
/// The first three fields' offsets are relied on by [`format_begun`].
#[repr(C, align(64))]
pub(crate) struct Header {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub state: AtomicU32,
    pub region_len: AtomicU64,
    pub layout_hash: AtomicU64,
    pub max_clients: AtomicU32,
    pub max_connections: AtomicU32,
    pub shards: AtomicU32,
    pub shard_len: AtomicU32,
    pub hash_k0: AtomicU64,
    pub hash_k1: AtomicU64,
    /// Writers of limits serialise on this word (0, or the writer's process token).
    pub limits_writer: AtomicU64,
    /// `flips << 1 | active set`: which of `limits` readers use.
    pub limits_active: AtomicU64,
    pub limits: [LimitSet; 2],
    pub ring_head: AtomicU64,
    pub ring_tail: AtomicU64,
}

/// One set of limits. Two exist: writers fill the inactive one, then flip.
#[repr(C)]
pub(crate) struct LimitSet {
    pub window_ms: AtomicU64,
    /// `window::Divisor` of `window_ms`, so the hot path never divides.
    pub window_magic: AtomicU64,
    pub window_shift: AtomicU32,
    pub window_offset: AtomicU64,
    pub connections_per_window: AtomicU64,
    pub max_concurrent: AtomicU64,
    pub messages_per_window: AtomicU64,
    pub bytes_per_window: AtomicU64,
    pub max_message_size: AtomicU64,
    pub client_messages: AtomicU64,
    pub client_bytes: AtomicU64,
    pub flags: AtomicU32,
}

impl LimitSet {
    #[inline(always)]
    fn window(&self) -> crate::window::Divisor {
        crate::window::Divisor {
            d: self.window_ms.load(Ordering::Relaxed),
            magic: self.window_magic.load(Ordering::Relaxed),
            shift: self.window_shift.load(Ordering::Relaxed),
        }
    }

    /// Every field (a read of a set that may be flipped meanwhile: see
    /// [`Header::snapshot`]).
    #[inline(always)]
    fn snapshot(&self) -> Snapshot {
        let window = self.window();
        Snapshot {
            window_ms: window.d,
            window,
            window_offset: self.window_offset.load(Ordering::Relaxed),
            connections_per_window: self.connections_per_window.load(Ordering::Relaxed),
            max_concurrent: self.max_concurrent.load(Ordering::Relaxed),
            messages_per_window: self.messages_per_window.load(Ordering::Relaxed),
            bytes_per_window: self.bytes_per_window.load(Ordering::Relaxed),
            max_message_size: self.max_message_size.load(Ordering::Relaxed),
            client_messages: self.client_messages.load(Ordering::Relaxed),
            client_bytes: self.client_bytes.load(Ordering::Relaxed),
            flags: self.flags.load(Ordering::Relaxed),
        }
    }

    /// The fields a connect reads.
    #[inline(always)]
    fn connect_limits(&self) -> ConnectLimits {
        ConnectLimits {
            window: self.window(),
            window_offset: self.window_offset.load(Ordering::Relaxed),
            connections_per_window: self.connections_per_window.load(Ordering::Relaxed),
            max_concurrent: self.max_concurrent.load(Ordering::Relaxed),
            dry_run: self.flags.load(Ordering::Relaxed) & FLAG_DRY_RUN != 0,
        }
    }

    /// The fields a message or key check reads.
    #[inline(always)]
    fn message_limits(&self) -> MessageLimits {
        MessageLimits {
            window: self.window(),
            window_offset: self.window_offset.load(Ordering::Relaxed),
            messages_per_window: self.messages_per_window.load(Ordering::Relaxed),
            bytes_per_window: self.bytes_per_window.load(Ordering::Relaxed),
            max_message_size: self.max_message_size.load(Ordering::Relaxed),
            client_messages: self.client_messages.load(Ordering::Relaxed),
            client_bytes: self.client_bytes.load(Ordering::Relaxed),
            dry_run: self.flags.load(Ordering::Relaxed) & FLAG_DRY_RUN != 0,
        }
    }
}

/// A 64-bit word alone on its cache line (free-list heads, shard locks).
#[repr(C, align(64))]
pub(crate) struct Padded(pub AtomicU64);

/// Statistics counters; each thread adds to its own stripe (`thread_hint`) so
/// that two threads on different clients do not share a line.
#[repr(C, align(64))]
pub(crate) struct Stripe {
    pub connections_allowed: AtomicU64,
    pub keys_allowed: AtomicU64,
    pub denied: [AtomicU64; crate::decision::REASON_COUNT],
    pub dry_run_denied: AtomicU64,
    pub untracked_allowed: AtomicU64,
    pub closed_messages: AtomicU64,
    pub closed_bytes: AtomicU64,
    pub violations_dropped: AtomicU64,
}

/// One client (or key) of the table. 128 bytes.
#[repr(C, align(64))]
pub(crate) struct ClientSlot {
    /// Keyed 127-bit hash of the id; 0 = empty; top bit = insert pending.
    pub key: AtomicU128,
    /// Connection-rate window, live connections, epoch (see `packed`).
    pub conns: AtomicU128,
    /// Aggregate messages and bytes of the client or key (see `packed`).
    pub traffic: AtomicU128,
    pub id_len: AtomicU32,
    pub id: [AtomicU64; 5],
}

/// One connection of the slab. 64 bytes.
#[repr(C, align(64))]
pub(crate) struct ConnSlot {
    /// Messages and bytes per window, tagged with the generation's low bits.
    pub traffic: AtomicU128,
    /// live(1) | generation(23) | client epoch(16) | client index(24);
    /// when free the low 24 bits hold the next free index + 1.
    pub state: AtomicU64,
    /// Token of the owning process (`clock::process`).
    pub owner: AtomicU64,
    pub connected_at_ms: AtomicU64,
    pub last_message_at_ms: AtomicU64,
    /// Messages and bytes that left the windows (lifetime totals).
    pub acc_messages: AtomicU64,
    pub acc_bytes: AtomicU64,
}

/// One violation record of the ring (Vyukov's bounded MPMC queue).
#[repr(C, align(64))]
pub(crate) struct RingCell {
    pub seq: AtomicU64,
    /// reason (low 32 bits) | client_id_len (high 32 bits).
    pub head: AtomicU64,
    pub id: [AtomicU64; 5],
    pub conn: AtomicU64,
    pub limit: AtomicU64,
    pub current: AtomicU64,
    pub size: AtomicU64,
    pub retry_after_ms: AtomicU64,
    pub at_ms: AtomicU64,
}

// DESIGN.md's targets (loom's atomics are larger, so only for real builds).
#[cfg(not(loom))]
const _: () = assert!(core::mem::size_of::<ClientSlot>() <= 128);
#[cfg(not(loom))]
const _: () = assert!(core::mem::size_of::<ConnSlot>() <= 64);

/// Offsets and counts of a region, derived from its two capacities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub max_clients: u32,
    pub max_connections: u32,
    pub shards: u32,
    pub shard_len: u32,
    pub lanes_off: usize,
    pub stripes_off: usize,
    pub locks_off: usize,
    pub tags_off: usize,
    pub clients_off: usize,
    pub conns_off: usize,
    pub ring_off: usize,
    pub total: usize,
}

fn round_up(x: usize) -> Option<usize> {
    x.checked_add(ALIGN - 1).map(|v| v & !(ALIGN - 1))
}

impl Layout {
    pub(crate) fn new(max_clients: u32, max_connections: u32) -> Option<Layout> {
        if max_clients == 0 || max_connections == 0 {
            return None;
        }
        // About 256 slots a shard, at most 256 shards, a power of two.
        let want = max_clients.checked_mul(SLOTS_PER_CLIENT)?;
        let shards = (want.div_ceil(256)).clamp(1, 256).next_power_of_two();
        // Every slot index must be below `conn::NO_CLIENT`, the index a
        // connection state gives an untracked connection: at the largest
        // `max_clients` (2^23) this leaves 2^24 - 256 slots, not 2^24.
        let shard_len = want.div_ceil(shards).min(crate::conn::NO_CLIENT / shards);
        let slots = shards as usize * shard_len as usize;
        let sz = core::mem::size_of::<Header>();
        let lanes_off = round_up(sz)?;
        let stripes_off = round_up(lanes_off + LANES * core::mem::size_of::<Padded>())?;
        let locks_off = round_up(stripes_off + STRIPES * core::mem::size_of::<Stripe>())?;
        let tags_off = round_up(locks_off + shards as usize * core::mem::size_of::<Padded>())?;
        let clients_off = round_up(tags_off + slots)?;
        let conns_off = round_up(clients_off.checked_add(slots.checked_mul(core::mem::size_of::<ClientSlot>())?)?)?;
        let ring_off = round_up(
            conns_off.checked_add((max_connections as usize).checked_mul(core::mem::size_of::<ConnSlot>())?)?,
        )?;
        let total = round_up(ring_off.checked_add(RING_CAP * core::mem::size_of::<RingCell>())?)?;
        Some(Layout {
            max_clients,
            max_connections,
            shards,
            shard_len,
            lanes_off,
            stripes_off,
            locks_off,
            tags_off,
            clients_off,
            conns_off,
            ring_off,
            total,
        })
    }

    pub(crate) fn slots(&self) -> u32 {
        self.shards * self.shard_len
    }

    pub(crate) fn probe(&self) -> u32 {
        self.shard_len.min(MAX_PROBE)
    }
}

/// A hash of everything that shapes the layout, so that two builds that
/// disagree on it refuse each other's regions.
pub(crate) fn layout_hash() -> u64 {
    let parts = [
        LAYOUT_VERSION as u64,
        core::mem::size_of::<Header>() as u64,
        core::mem::size_of::<Stripe>() as u64,
        core::mem::size_of::<ClientSlot>() as u64,
        core::mem::size_of::<ConnSlot>() as u64,
        core::mem::size_of::<RingCell>() as u64,
        LANES as u64,
        STRIPES as u64,
        RING_CAP as u64,
        MAX_PROBE as u64,
        crate::packed::MSGS_BITS as u64,
        crate::packed::BYTES_BITS as u64,
        crate::packed::CONN_BITS as u64,
        SLOTS_PER_CLIENT as u64,
    ];
    // FNV-1a over the parts' bytes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The limits as the hot path reads them: one consistent snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub window_ms: u64,
    pub window: crate::window::Divisor,
    pub window_offset: u64,
    pub connections_per_window: u64,
    pub max_concurrent: u64,
    pub messages_per_window: u64,
    pub bytes_per_window: u64,
    pub max_message_size: u64,
    pub client_messages: u64,
    pub client_bytes: u64,
    pub flags: u32,
}

/// The part of a [`Snapshot`] that message and key checks read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MessageLimits {
    pub window: crate::window::Divisor,
    pub window_offset: u64,
    pub messages_per_window: u64,
    pub bytes_per_window: u64,
    pub max_message_size: u64,
    pub client_messages: u64,
    pub client_bytes: u64,
    pub dry_run: bool,
}

/// The part of a [`Snapshot`] that a connect reads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnectLimits {
    pub window: crate::window::Divisor,
    pub window_offset: u64,
    pub connections_per_window: u64,
    pub max_concurrent: u64,
    pub dry_run: bool,
}

impl MessageLimits {
    pub(crate) fn client_limited(&self) -> bool {
        self.client_messages != 0 || self.client_bytes != 0
    }
}

impl Snapshot {
    pub(crate) fn fail_open(&self) -> bool {
        self.flags & FLAG_FAIL_OPEN != 0
    }
    pub(crate) fn dry_run(&self) -> bool {
        self.flags & FLAG_DRY_RUN != 0
    }
    pub(crate) fn client_limited(&self) -> bool {
        self.client_messages != 0 || self.client_bytes != 0
    }
}

impl Header {
    /// Reads the limits: one consistent set. Writers only ever write the
    /// inactive set and then flip `limits_active`, so a read of the active
    /// set is whole unless a flip happened meanwhile; then it reads again.
    /// A writer that dies mid-update never tears or blocks a read.
    #[inline(always)]
    pub(crate) fn snapshot(&self) -> Snapshot {
        // Acquire: the set's fields were written before the flip we read.
        let mut a = self.limits_active.load(Ordering::Acquire);
        loop {
            if let Some(snap) = self.read_set(a, LimitSet::snapshot) {
                return snap;
            }
            // A flip completed while we read (system-wide progress): again.
            a = self.limits_active.load(Ordering::Relaxed);
            crate::sync::fence(Ordering::Acquire);
        }
    }

    /// The limits of the message and key fast paths, read as [`Header::snapshot`]
    /// reads them, from one set; `None` when a flip happened meanwhile (the
    /// caller then takes the general path, which reads again).
    #[inline(always)]
    pub(crate) fn message_limits(&self) -> Option<MessageLimits> {
        // Acquire: as in `snapshot`.
        self.read_set(self.limits_active.load(Ordering::Acquire), LimitSet::message_limits)
    }

    /// The limits of the connect fast path, read as `message_limits` reads
    /// its own.
    #[inline(always)]
    pub(crate) fn connect_limits(&self) -> Option<ConnectLimits> {
        // Acquire: as in `snapshot`.
        self.read_set(self.limits_active.load(Ordering::Acquire), LimitSet::connect_limits)
    }

    /// Reads set `a & 1` with `read`; `None` when the flip word is no longer
    /// `a` after the read (the read may then be torn).
    #[inline(always)]
    fn read_set<T>(&self, a: u64, read: impl FnOnce(&LimitSet) -> T) -> Option<T> {
        let v = read(&self.limits[(a & 1) as usize]);
        // Acquire fence: the field loads of `read` happen before the re-read.
        crate::sync::fence(Ordering::Acquire);
        (self.limits_active.load(Ordering::Relaxed) == a).then_some(v)
    }

    /// Writes new limits into the inactive set and flips to it. `now_ms`
    /// places the window offset when the window length changes, so that
    /// every stored window is at least two windows old under the new length:
    /// counts measured with the old length are dropped, never misread.
    pub(crate) fn write_limits(&self, l: &Limits, now_ms: u64) -> bool {
        let token = crate::clock::process::token();
        let mut spins: u64 = 0;
        loop {
            // Another live writer for this long (seconds): give up rather than
            // spin for ever (C6); the caller reports it.
            if spins > 1 << 22 {
                return false;
            }
            let cur = self.limits_writer.load(Ordering::Relaxed);
            // Acquire: see the previous writer's sets.
            if cur == 0 && self.limits_writer.compare_exchange(0, token, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                break;
            }
            spins += 1;
            if cur != 0
                && cur != token
                && spins % 4096 == 0
                && !crate::clock::process::is_alive(cur)
                && self.limits_writer.compare_exchange(cur, token, Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                break;
            }
            spin_wait();
        }
        let a = self.limits_active.load(Ordering::Relaxed);
        // Release fence before the field stores: a reader still reading this
        // set (active before the previous flip) that loads one of our new
        // values then sees, after its Acquire fence, that flip, so it reads
        // again instead of taking a torn set (loom:
        // loom_two_limit_updates_race_a_reader).
        crate::sync::fence(Ordering::Release);
        let old = &self.limits[(a & 1) as usize];
        let set = &self.limits[(a & 1 ^ 1) as usize];
        let old_w = old.window_ms.load(Ordering::Relaxed);
        let old_off = old.window_offset.load(Ordering::Relaxed);
        let new_w = l.window_ms as u64;
        let offset = if old_w == new_w || old_w == 0 {
            old_off
        } else {
            let old_id = (now_ms / old_w).wrapping_add(old_off);
            old_id.wrapping_add(2).wrapping_sub(now_ms / new_w)
        };
        set.window_offset.store(offset, Ordering::Relaxed);
        set.window_ms.store(new_w, Ordering::Relaxed);
        let div = crate::window::Divisor::new(new_w);
        set.window_magic.store(div.magic, Ordering::Relaxed);
        set.window_shift.store(div.shift, Ordering::Relaxed);
        set.connections_per_window.store(l.connections_per_window as u64, Ordering::Relaxed);
        set.max_concurrent.store(l.max_concurrent_connections as u64, Ordering::Relaxed);
        set.messages_per_window.store(l.messages_per_window as u64, Ordering::Relaxed);
        set.bytes_per_window.store(l.bytes_per_window, Ordering::Relaxed);
        set.max_message_size.store(l.max_message_size as u64, Ordering::Relaxed);
        set.client_messages.store(l.client_messages_per_window as u64, Ordering::Relaxed);
        set.client_bytes.store(l.client_bytes_per_window, Ordering::Relaxed);
        let flags = (l.fail_open as u32 * FLAG_FAIL_OPEN) | (l.dry_run as u32 * FLAG_DRY_RUN);
        set.flags.store(flags, Ordering::Relaxed);
        // Release: a reader that sees the flip sees every field above.
        self.limits_active.store(((a >> 1) + 1) << 1 | (a & 1 ^ 1), Ordering::Release);
        // Release: the next writer sees both sets as we left them.
        self.limits_writer.store(0, Ordering::Release);
        true
    }

    pub(crate) fn limits(&self) -> Limits {
        let s = self.snapshot();
        Limits {
            window_ms: s.window_ms as u32,
            connections_per_window: s.connections_per_window as u32,
            max_concurrent_connections: s.max_concurrent as u32,
            messages_per_window: s.messages_per_window as u32,
            bytes_per_window: s.bytes_per_window,
            max_message_size: s.max_message_size as u32,
            client_messages_per_window: s.client_messages as u32,
            client_bytes_per_window: s.client_bytes,
            max_clients: self.max_clients.load(Ordering::Relaxed),
            max_connections: self.max_connections.load(Ordering::Relaxed),
            fail_open: s.fail_open(),
            dry_run: s.dry_run(),
        }
    }
}

/// Random 128-bit key for the table's hash, from the kernel.
fn random_key() -> (u64, u64) {
    #[cfg(loom)]
    let buf = *b"loom-fixed-key!!";
    #[cfg(not(loom))]
    let buf = {
        let mut buf = [0u8; 16];
        // SAFETY: buf is valid for 16 writable bytes.
        let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n != 16 {
            // No getrandom: mix the clock and an address (weaker, still per region).
            let t = crate::clock::now_ms() ^ (&buf as *const _ as u64).rotate_left(17);
            buf[..8].copy_from_slice(&t.to_le_bytes());
            buf[8..].copy_from_slice(&t.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
        }
        buf
    };
    let k0 = u64::from_le_bytes(buf[..8].try_into().unwrap_or_default());
    let k1 = u64::from_le_bytes(buf[8..].try_into().unwrap_or_default());
    (k0, k1)
}

/// A view of one region. Owns nothing: `Limiter` decides who frees it.
pub(crate) struct Region {
    #[cfg(not(loom))]
    base: core::ptr::NonNull<u8>,
    #[cfg(loom)]
    parts: Box<LoomParts>,
    pub layout: Layout,
    /// XORed into every connection handle this region gives out (bits 32 to
    /// 63 only, so a handle's low half, the slot, stays non-zero): a handle
    /// of another region decodes to a generation that almost never matches
    /// (see `conn::decode`). Drawn from the region's hash key, the same in
    /// every process attached.
    pub handle_salt: u64,
}

// SAFETY: a region holds only atomics; every access goes through them.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

#[cfg(loom)]
struct LoomParts {
    header: Header,
    lanes: Vec<Padded>,
    stripes: Vec<Stripe>,
    locks: Vec<Padded>,
    tags: Vec<AtomicU8>,
    clients: Vec<ClientSlot>,
    conns: Vec<ConnSlot>,
    ring: Vec<RingCell>,
}

#[cfg(not(loom))]
fn check_lock_free() -> Result<(), Error> {
    if crate::sync::u128_is_lock_free() {
        Ok(())
    } else {
        Err(Error::InvalidArgument("this CPU has no lock-free 128-bit compare-and-swap (cmpxchg16b)"))
    }
}

impl Region {
    /// Bytes a region for these limits needs.
    pub(crate) fn size_for(l: &Limits) -> Result<usize, Error> {
        l.validate()?;
        Layout::new(l.max_clients, l.max_connections)
            .map(|x| x.total)
            .ok_or(Error::InvalidArgument("capacities overflow the address space"))
    }

    /// Formats a region in `base[..len]`, which must be zeroed or writable garbage.
    ///
    /// # Safety
    /// `base` must be valid for reads and writes of `len` bytes for as long
    /// as any `Region` made from it is used, aligned to 64 bytes, and not
    /// used by anyone else while this runs.
    #[cfg(not(loom))]
    pub(crate) unsafe fn init(base: *mut u8, len: usize, l: &Limits) -> Result<Region, Error> {
        check_lock_free()?;
        l.validate()?;
        let layout =
            Layout::new(l.max_clients, l.max_connections).ok_or(Error::InvalidArgument("capacities overflow"))?;
        if base.is_null() {
            return Err(Error::InvalidArgument("memory is NULL"));
        }
        if base as usize % ALIGN != 0 {
            return Err(Error::InvalidArgument("memory must be aligned to 64 bytes"));
        }
        if len < layout.total {
            return Err(Error::RegionTooSmall { needed: layout.total, given: len });
        }
        // SAFETY: the caller guarantees base[..len] is ours to write (len >=
        // total > HEAD_LEN); zero bytes are a valid value of every atomic in
        // the region. The head first, so that a process killed while the
        // rest is zeroed (long, for a large region) leaves `format_begun`.
        unsafe {
            core::ptr::copy_nonoverlapping(format_begun().as_ptr(), base, HEAD_LEN);
            core::ptr::write_bytes(base.add(HEAD_LEN), 0, layout.total - HEAD_LEN);
        }
        let mut region = Region {
            base: core::ptr::NonNull::new(base).ok_or(Error::InvalidArgument("memory is NULL"))?,
            layout,
            handle_salt: 0,
        };
        region.format(l);
        region.handle_salt = region.draw_handle_salt();
        Ok(region)
    }

    #[cfg(loom)]
    pub(crate) fn new_loom(l: &Limits) -> Result<Region, Error> {
        l.validate()?;
        let layout = Layout::new(l.max_clients, l.max_connections).ok_or(Error::InvalidArgument("capacities"))?;
        let parts = Box::new(LoomParts {
            header: Header::zeroed(),
            lanes: (0..LANES).map(|_| Padded(AtomicU64::new(0))).collect(),
            stripes: (0..STRIPES).map(|_| Stripe::zeroed()).collect(),
            locks: (0..layout.shards).map(|_| Padded(AtomicU64::new(0))).collect(),
            tags: (0..layout.slots()).map(|_| AtomicU8::new(0)).collect(),
            clients: (0..layout.slots()).map(|_| ClientSlot::zeroed()).collect(),
            conns: (0..layout.max_connections).map(|_| ConnSlot::zeroed()).collect(),
            ring: (0..RING_CAP).map(|_| RingCell::zeroed()).collect(),
        });
        let mut region = Region { parts, layout, handle_salt: 0 };
        region.format(l);
        region.handle_salt = region.draw_handle_salt();
        Ok(region)
    }

    fn format(&self, l: &Limits) {
        let h = self.header();
        h.state.store(STATE_INITIALIZING, Ordering::Relaxed);
        h.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        h.region_len.store(self.layout.total as u64, Ordering::Relaxed);
        h.layout_hash.store(layout_hash(), Ordering::Relaxed);
        h.max_clients.store(l.max_clients, Ordering::Relaxed);
        h.max_connections.store(l.max_connections, Ordering::Relaxed);
        h.shards.store(self.layout.shards, Ordering::Relaxed);
        h.shard_len.store(self.layout.shard_len, Ordering::Relaxed);
        let (k0, k1) = random_key();
        h.hash_k0.store(k0, Ordering::Relaxed);
        h.hash_k1.store(k1, Ordering::Relaxed);
        // Nobody else can hold the writer word of a region being formatted.
        let written = h.write_limits(l, 0);
        debug_assert!(written);
        crate::conn::format_free_lists(self);
        for i in 0..RING_CAP {
            self.ring_cell(i).seq.store(i as u64, Ordering::Relaxed);
        }
        h.magic.store(MAGIC, Ordering::Relaxed);
        // Release: a process that reads READY sees the whole formatted region.
        h.state.store(STATE_READY, Ordering::Release);
    }

    /// Validates and adopts a region another `Region::init` formatted.
    ///
    /// # Safety
    /// As for [`Region::init`], except that the memory is shared, not formatted.
    #[cfg(not(loom))]
    pub(crate) unsafe fn attach(base: *mut u8, len: usize) -> Result<Region, Error> {
        check_lock_free()?;
        if base.is_null() {
            return Err(Error::InvalidArgument("memory is NULL"));
        }
        if base as usize % ALIGN != 0 {
            return Err(Error::InvalidArgument("memory must be aligned to 64 bytes"));
        }
        if len < core::mem::size_of::<Header>() {
            return Err(Error::RegionTooSmall { needed: core::mem::size_of::<Header>(), given: len });
        }
        // SAFETY: base is aligned and holds at least a header's bytes, and
        // any bytes are a valid value of the header's atomics.
        let h = unsafe { &*(base as *const Header) };
        // Acquire: pairs with the Release store of READY in `format`.
        let state = h.state.load(Ordering::Acquire);
        let magic = h.magic.load(Ordering::Relaxed);
        if magic != MAGIC {
            return Err(Error::IncompatibleRegion("no ratethrottle region here (bad magic)".into()));
        }
        let version = h.version.load(Ordering::Relaxed);
        if version != LAYOUT_VERSION {
            return Err(Error::IncompatibleRegion(format!(
                "region layout version {version}, this library reads version {LAYOUT_VERSION}"
            )));
        }
        if h.layout_hash.load(Ordering::Relaxed) != layout_hash() {
            return Err(Error::IncompatibleRegion("region was made by a build with another layout".into()));
        }
        if state != STATE_READY {
            return Err(Error::IncompatibleRegion("region is not initialised (yet)".into()));
        }
        let mc = h.max_clients.load(Ordering::Relaxed);
        let mx = h.max_connections.load(Ordering::Relaxed);
        let cap = 1..=crate::limits::MAX_CAPACITY;
        let limits_ok = cap.contains(&mc) && cap.contains(&mx);
        let layout = Layout::new(mc, mx)
            .filter(|_| limits_ok)
            .ok_or_else(|| Error::IncompatibleRegion(format!("corrupt capacities {mc} clients / {mx} connections")))?;
        let recorded = h.region_len.load(Ordering::Relaxed);
        if recorded != layout.total as u64
            || h.shards.load(Ordering::Relaxed) != layout.shards
            || h.shard_len.load(Ordering::Relaxed) != layout.shard_len
        {
            return Err(Error::IncompatibleRegion("region header disagrees with its capacities".into()));
        }
        if len < layout.total {
            return Err(Error::RegionTooSmall { needed: layout.total, given: len });
        }
        let (head, tail) = (h.ring_head.load(Ordering::Relaxed), h.ring_tail.load(Ordering::Relaxed));
        if tail < head || tail - head > RING_CAP as u64 {
            return Err(Error::IncompatibleRegion("corrupt violation ring".into()));
        }
        let snap = h.snapshot();
        let w = snap.window_ms;
        if w == 0 || w > u32::MAX as u64 || snap.window != crate::window::Divisor::new(w) {
            return Err(Error::IncompatibleRegion("corrupt window length".into()));
        }
        let mut region = Region {
            base: core::ptr::NonNull::new(base).ok_or(Error::InvalidArgument("memory is NULL"))?,
            layout,
            handle_salt: 0,
        };
        region.handle_salt = region.draw_handle_salt();
        Ok(region)
    }

    /// The region's handle salt: a keyed hash (the region's secret hash key)
    /// of a fixed text, so that handles never show the key.
    fn draw_handle_salt(&self) -> u64 {
        (crate::table::hash(self, b"ratethrottle: connection handles") as u64) & 0xFFFF_FFFF_0000_0000
    }

    #[cfg(not(loom))]
    #[inline]
    fn at<T>(&self, off: usize) -> &T {
        debug_assert!(off + core::mem::size_of::<T>() <= self.layout.total);
        // SAFETY: `off` comes from `layout` and is within the region (checked
        // at init/attach), aligned (every part is 64-aligned and T's size is
        // a multiple of its alignment), and all bytes are valid atomics.
        unsafe { &*(self.base.as_ptr().add(off) as *const T) }
    }

    #[inline]
    pub(crate) fn header(&self) -> &Header {
        #[cfg(not(loom))]
        return self.at(0);
        #[cfg(loom)]
        return &self.parts.header;
    }

    #[inline]
    pub(crate) fn lane(&self, i: usize) -> &AtomicU64 {
        debug_assert!(i < LANES);
        #[cfg(not(loom))]
        return &self.at::<Padded>(self.layout.lanes_off + i * core::mem::size_of::<Padded>()).0;
        #[cfg(loom)]
        return &self.parts.lanes[i].0;
    }

    #[inline]
    pub(crate) fn stripe(&self, i: usize) -> &Stripe {
        let i = i % STRIPES;
        #[cfg(not(loom))]
        return self.at(self.layout.stripes_off + i * core::mem::size_of::<Stripe>());
        #[cfg(loom)]
        return &self.parts.stripes[i];
    }

    #[inline]
    pub(crate) fn shard_lock(&self, shard: u32) -> &AtomicU64 {
        assert!(shard < self.layout.shards);
        #[cfg(not(loom))]
        return &self.at::<Padded>(self.layout.locks_off + shard as usize * core::mem::size_of::<Padded>()).0;
        #[cfg(loom)]
        return &self.parts.locks[shard as usize].0;
    }

    /// The one-byte hash tag of client slot `i` (0 = empty).
    #[inline]
    pub(crate) fn tag(&self, i: u32) -> &AtomicU8 {
        assert!(i < self.layout.slots());
        #[cfg(not(loom))]
        return self.at(self.layout.tags_off + i as usize);
        #[cfg(loom)]
        return &self.parts.tags[i as usize];
    }

    #[inline]
    pub(crate) fn client(&self, i: u32) -> &ClientSlot {
        assert!(i < self.layout.slots());
        #[cfg(not(loom))]
        return self.at(self.layout.clients_off + i as usize * core::mem::size_of::<ClientSlot>());
        #[cfg(loom)]
        return &self.parts.clients[i as usize];
    }

    #[inline(always)]
    pub(crate) fn conn(&self, i: u32) -> &ConnSlot {
        assert!(i < self.layout.max_connections);
        #[cfg(not(loom))]
        return self.at(self.layout.conns_off + i as usize * core::mem::size_of::<ConnSlot>());
        #[cfg(loom)]
        return &self.parts.conns[i as usize];
    }

    #[inline]
    pub(crate) fn ring_cell(&self, i: usize) -> &RingCell {
        let i = i % RING_CAP;
        #[cfg(not(loom))]
        return self.at(self.layout.ring_off + i * core::mem::size_of::<RingCell>());
        #[cfg(loom)]
        return &self.parts.ring[i];
    }

    /// Adds to a statistics counter, in the calling thread's stripe.
    #[inline]
    pub(crate) fn count(&self, f: impl FnOnce(&Stripe) -> &AtomicU64, n: u64) {
        f(self.stripe(thread_hint())).fetch_add(n, Ordering::Relaxed);
    }

    /// Sums a striped counter, saturating (lifetime byte totals can be huge).
    pub(crate) fn sum_saturating(&self, f: impl Fn(&Stripe) -> &AtomicU64) -> u64 {
        (0..STRIPES).map(|i| f(self.stripe(i)).load(Ordering::Relaxed)).fold(0u64, u64::saturating_add)
    }

    /// Sums a striped counter.
    pub(crate) fn sum(&self, f: impl Fn(&Stripe) -> &AtomicU64) -> u64 {
        (0..STRIPES).map(|i| f(self.stripe(i)).load(Ordering::Relaxed)).fold(0u64, u64::wrapping_add)
    }
}

#[cfg(loom)]
impl Header {
    fn zeroed() -> Header {
        let z = || AtomicU64::new(0);
        let z32 = || AtomicU32::new(0);
        Header {
            magic: z(),
            version: z32(),
            state: z32(),
            region_len: z(),
            layout_hash: z(),
            max_clients: z32(),
            max_connections: z32(),
            shards: z32(),
            shard_len: z32(),
            hash_k0: z(),
            hash_k1: z(),
            limits_writer: z(),
            limits_active: z(),
            limits: [LimitSet::zeroed(), LimitSet::zeroed()],
            ring_head: z(),
            ring_tail: z(),
        }
    }
}

#[cfg(loom)]
impl LimitSet {
    fn zeroed() -> LimitSet {
        let z = || AtomicU64::new(0);
        LimitSet {
            window_ms: z(),
            window_magic: z(),
            window_shift: AtomicU32::new(0),
            window_offset: z(),
            connections_per_window: z(),
            max_concurrent: z(),
            messages_per_window: z(),
            bytes_per_window: z(),
            max_message_size: z(),
            client_messages: z(),
            client_bytes: z(),
            flags: AtomicU32::new(0),
        }
    }
}

#[cfg(loom)]
impl Stripe {
    fn zeroed() -> Stripe {
        let z = || AtomicU64::new(0);
        Stripe {
            connections_allowed: z(),
            keys_allowed: z(),
            denied: core::array::from_fn(|_| z()),
            dry_run_denied: z(),
            untracked_allowed: z(),
            closed_messages: z(),
            closed_bytes: z(),
            violations_dropped: z(),
        }
    }
}

#[cfg(loom)]
impl ClientSlot {
    fn zeroed() -> ClientSlot {
        ClientSlot {
            key: AtomicU128::new(0),
            conns: AtomicU128::new(0),
            traffic: AtomicU128::new(0),
            id_len: AtomicU32::new(0),
            id: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

#[cfg(loom)]
impl ConnSlot {
    fn zeroed() -> ConnSlot {
        let z = || AtomicU64::new(0);
        ConnSlot {
            traffic: AtomicU128::new(0),
            state: z(),
            owner: z(),
            connected_at_ms: z(),
            last_message_at_ms: z(),
            acc_messages: z(),
            acc_bytes: z(),
        }
    }
}

#[cfg(loom)]
impl RingCell {
    fn zeroed() -> RingCell {
        let z = || AtomicU64::new(0);
        RingCell {
            seq: z(),
            head: z(),
            id: core::array::from_fn(|_| z()),
            conn: z(),
            limit: z(),
            current: z(),
            size: z(),
            retry_after_ms: z(),
            at_ms: z(),
        }
    }
}

/// Copies up to 40 bytes of an id into five atomic words.
pub(crate) fn store_id(words: &[AtomicU64; 5], len: &AtomicU32, id: &[u8]) {
    let mut buf = [0u8; 40];
    let n = id.len().min(40);
    buf[..n].copy_from_slice(&id[..n]);
    for (i, w) in words.iter().enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[i * 8..i * 8 + 8]);
        w.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
    len.store(id.len().min(u32::MAX as usize) as u32, Ordering::Relaxed);
}

/// Reads an id stored by [`store_id`]: the first 40 bytes and the full length.
pub(crate) fn load_id(words: &[AtomicU64; 5], len: &AtomicU32) -> ([u8; 40], u32) {
    let mut buf = [0u8; 40];
    for (i, w) in words.iter().enumerate() {
        buf[i * 8..i * 8 + 8].copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
    }
    (buf, len.load(Ordering::Relaxed))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A client in slot `NO_CLIENT` would pass for an untracked connection's
    /// (no client limits, and its live count never given back on close).
    #[test]
    fn every_client_slot_index_is_below_the_untracked_marker() {
        for max_clients in [
            1,
            1000,
            65_536,
            crate::limits::MAX_CAPACITY / 2,
            crate::limits::MAX_CAPACITY - 1,
            crate::limits::MAX_CAPACITY,
        ] {
            let l = Layout::new(max_clients, 1).unwrap();
            assert!(l.slots() <= crate::conn::NO_CLIENT, "{max_clients} clients: {} slots", l.slots());
            assert!(
                l.slots() >= max_clients * SLOTS_PER_CLIENT - l.shards,
                "{max_clients} clients: {} slots",
                l.slots()
            );
        }
    }

    /// Forked workers (nginx, pre-fork servers) run at their parent's stack
    /// addresses, so the process must move their hint; otherwise every
    /// worker sharing a region writes one stripe and one free-list lane.
    #[test]
    fn processes_at_one_stack_address_spread_over_lanes() {
        let stack = 0x7ffc_1234_5678_usize;
        // The low 32 bits of a start time, the same for all.
        let start = 0x0001_2345_u64;
        // Forked in a row: consecutive pids, every one on its own lane (up to 16).
        let by_pid: HashSet<usize> = (4000..4016_u64).map(|pid| hint_of(stack, pid << 32 | start) % LANES).collect();
        assert_eq!(by_pid.len(), 16, "16 processes on {} lanes: {by_pid:?}", by_pid.len());
        let by_pid: HashSet<usize> = (4000..4016_u64).map(|pid| hint_of(stack, pid << 32 | start) % STRIPES).collect();
        assert_eq!(by_pid.len(), 16, "16 processes on {} stripes: {by_pid:?}", by_pid.len());
        // Threads of one process: stacks some megabytes apart.
        let by_stack: HashSet<usize> =
            (0..8).map(|i| hint_of(stack + i * (8 << 20), 4000 << 32 | start) % STRIPES).collect();
        assert!(by_stack.len() >= 5, "8 threads on {} stripes: {by_stack:?}", by_stack.len());
    }
}
