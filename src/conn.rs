//! The connection slab: fixed slots, generation-checked handles, and
//! lock-free free lists.
//!
//! A handle is `(generation << 32) | (index + 1)`, so 0 is never valid. A
//! slot's state word is
//!
//! ```text
//! 63   62         40 39        24 23             0
//! +----+------------+------------+----------------+
//! |live| generation |client epoch| client index   |   (live)
//! | 0  | generation |     0      | next free + 1  |   (free)
//! +----+------------+------------+----------------+
//! ```
//!
//! Closing a connection flips `live` off and bumps the generation with one
//! CAS, so it happens exactly once and every older handle is refused. The
//! traffic word carries the generation's low 8 bits, so a check racing a
//! close cannot charge the slot's next connection.
//!
//! Free slots sit in `LANES` Treiber stacks (slot i in lane i % LANES), each
//! head tagged with a 40-bit counter against ABA; a thread starts at its own
//! lane (`region::thread_hint`), so two threads rarely share one.

use crate::packed::Traffic;
use crate::region::{thread_hint, ConnSlot, Region, LANES};
use crate::sync::Ordering;

const INDEX_BITS: u32 = 24;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
const EPOCH_SHIFT: u32 = 24;
const EPOCH_MASK: u64 = 0xFFFF;
const GEN_SHIFT: u32 = 40;
const GEN_BITS: u32 = 23;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;
const LIVE: u64 = 1 << 63;
/// Client index of a connection admitted untracked (fail-open, table full).
pub(crate) const NO_CLIENT: u32 = INDEX_MASK as u32;

const TAG_BITS: u32 = 40;
const TAG_SHIFT: u32 = INDEX_BITS;

/// A live connection's state, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Live {
    pub index: u32,
    pub generation: u64,
    pub client: u32,
    pub client_epoch: u64,
}

/// Splits a handle into (index, generation); `None` for 0 or out of range.
#[inline(always)]
pub(crate) fn decode(region: &Region, handle: u64) -> Option<(u32, u64)> {
    let idx1 = handle & 0xFFFF_FFFF;
    let generation = handle >> 32;
    if idx1 == 0 || idx1 > region.layout.max_connections as u64 || generation > GEN_MASK {
        return None;
    }
    Some(((idx1 - 1) as u32, generation))
}

#[inline]
pub(crate) fn handle(index: u32, generation: u64) -> u64 {
    (generation << 32) | (index as u64 + 1)
}

#[inline]
fn live_state(generation: u64, client: u32, epoch: u64) -> u64 {
    LIVE | (generation & GEN_MASK) << GEN_SHIFT | (epoch & EPOCH_MASK) << EPOCH_SHIFT | client as u64
}

#[inline]
fn state_generation(s: u64) -> u64 {
    (s >> GEN_SHIFT) & GEN_MASK
}

/// The live connection a handle names, or `None` when it is closed or stale.
#[inline(always)]
pub(crate) fn lookup(region: &Region, handle: u64) -> Option<(Live, &ConnSlot)> {
    let (index, generation) = decode(region, handle)?;
    let slot = region.conn(index);
    // Acquire: pairs with the Release that published the connection's fields.
    let s = slot.state.load(Ordering::Acquire);
    if s & LIVE == 0 || state_generation(s) != generation {
        return None;
    }
    Some((
        Live { index, generation, client: (s & INDEX_MASK) as u32, client_epoch: (s >> EPOCH_SHIFT) & EPOCH_MASK },
        slot,
    ))
}

/// Chains every slot into its lane. Called once while formatting.
pub(crate) fn format_free_lists(region: &Region) {
    let n = region.layout.max_connections;
    for lane in 0..LANES {
        // Slots lane, lane + LANES, ... linked in ascending order.
        let mut head: u64 = 0;
        if (lane as u32) < n {
            let mut i = lane as u64 + ((n as u64 - 1 - lane as u64) / LANES as u64) * LANES as u64;
            loop {
                region.conn(i as u32).state.store(head, Ordering::Relaxed);
                head = i + 1;
                if i < LANES as u64 {
                    break;
                }
                i -= LANES as u64;
            }
        }
        region.lane(lane).store(head, Ordering::Relaxed);
    }
}

#[inline(always)]
fn pop(region: &Region, lane: usize) -> Option<u32> {
    let head = region.lane(lane);
    let mut h = head.load(Ordering::Acquire);
    loop {
        let idx1 = h & INDEX_MASK;
        if idx1 == 0 {
            return None;
        }
        // May read a slot someone else just popped; then the CAS below fails.
        let next = region.conn((idx1 - 1) as u32).state.load(Ordering::Acquire) & INDEX_MASK;
        let tag = (h >> TAG_SHIFT).wrapping_add(1) & ((1 << TAG_BITS) - 1);
        // Acquire on success: we own the slot and must see its last writes.
        match head.compare_exchange_weak(h, tag << TAG_SHIFT | next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some((idx1 - 1) as u32),
            Err(cur) => h = cur,
        }
    }
}

#[inline(always)]
fn push(region: &Region, index: u32) {
    let lane = index as usize % LANES;
    let head = region.lane(lane);
    let slot = region.conn(index);
    let generation = state_generation(slot.state.load(Ordering::Relaxed));
    let mut h = head.load(Ordering::Acquire);
    loop {
        slot.state.store(generation << GEN_SHIFT | (h & INDEX_MASK), Ordering::Relaxed);
        let tag = (h >> TAG_SHIFT).wrapping_add(1) & ((1 << TAG_BITS) - 1);
        // Release: the next popper sees the slot's state written above.
        match head.compare_exchange_weak(h, tag << TAG_SHIFT | (index as u64 + 1), Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return,
            Err(cur) => h = cur,
        }
    }
}

/// Takes a free slot, starting at the calling thread's lane.
#[inline(always)]
pub(crate) fn alloc(region: &Region) -> Option<u32> {
    let hint = thread_hint();
    (0..LANES).find_map(|i| pop(region, (hint + i) % LANES))
}

/// Returns an allocated (never published) slot.
pub(crate) fn release(region: &Region, index: u32) {
    push(region, index)
}

/// Publishes a connection in slot `index` and returns its handle.
#[inline(always)]
pub(crate) fn open(
    region: &Region,
    index: u32,
    client: u32,
    epoch: u64,
    window_id: u64,
    now_ms: u64,
    owner: u64,
) -> u64 {
    let slot = region.conn(index);
    let generation = state_generation(slot.state.load(Ordering::Relaxed));
    // Release fence before the field stores: a reader of the slot's previous
    // connection (`connection_info`) that loads one of them then sees, after
    // its Acquire fence, that the old connection closed.
    crate::sync::fence(Ordering::Release);
    slot.traffic.store(Traffic::fresh(generation, window_id), Ordering::Relaxed);
    slot.owner.store(owner, Ordering::Relaxed);
    slot.connected_at_ms.store(now_ms, Ordering::Relaxed);
    slot.last_message_at_ms.store(now_ms, Ordering::Relaxed);
    slot.acc_messages.store(0, Ordering::Relaxed);
    slot.acc_bytes.store(0, Ordering::Relaxed);
    // Release: whoever sees the live state sees every field above.
    slot.state.store(live_state(generation, client, epoch), Ordering::Release);
    handle(index, generation)
}

/// What a close leaves behind: the client to release and the lifetime totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Closed {
    pub client: u32,
    pub client_epoch: u64,
    pub messages: u64,
    pub bytes: u64,
}

/// Closes a connection exactly once; `None` when the handle is stale.
/// The caller must then release the client and call [`recycle`].
#[inline(always)]
pub(crate) fn close(region: &Region, handle: u64) -> Option<(u32, Closed)> {
    let (index, generation) = decode(region, handle)?;
    let slot = region.conn(index);
    let mut s = slot.state.load(Ordering::Acquire);
    loop {
        if s & LIVE == 0 || state_generation(s) != generation {
            return None;
        }
        let next_gen = (generation + 1) & GEN_MASK;
        // AcqRel: exactly one closer wins, and it sees the connection's fields.
        match slot.state.compare_exchange(s, next_gen << GEN_SHIFT, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(cur) => s = cur,
        }
    }
    // Retag the traffic word so a check that raced the close fails its CAS,
    // and take the final counts from the word we replaced.
    let mut tw = slot.traffic.load(Ordering::Acquire);
    let fresh = Traffic::fresh(generation + 1, 0);
    loop {
        match slot.traffic.compare_exchange(tw, fresh, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(cur) => tw = cur,
        }
    }
    let t = Traffic::unpack(tw);
    let closed = Closed {
        client: (s & INDEX_MASK) as u32,
        client_epoch: (s >> EPOCH_SHIFT) & EPOCH_MASK,
        messages: slot.acc_messages.load(Ordering::Relaxed).saturating_add(t.msgs_prev + t.msgs_cur),
        bytes: slot.acc_bytes.load(Ordering::Relaxed).saturating_add(t.bytes_prev + t.bytes_cur),
    };
    Some((index, closed))
}

/// Puts a closed slot back on its free list.
#[inline(always)]
pub(crate) fn recycle(region: &Region, index: u32) {
    push(region, index)
}

/// Every live connection: (handle, live state) — for statistics and reaping.
pub(crate) fn live_connections(region: &Region) -> impl Iterator<Item = (u64, Live)> + '_ {
    (0..region.layout.max_connections).filter_map(move |i| {
        let s = region.conn(i).state.load(Ordering::Acquire);
        if s & LIVE == 0 {
            return None;
        }
        let generation = state_generation(s);
        Some((
            handle(i, generation),
            Live {
                index: i,
                generation,
                client: (s & INDEX_MASK) as u32,
                client_epoch: (s >> EPOCH_SHIFT) & EPOCH_MASK,
            },
        ))
    })
}
