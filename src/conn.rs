//! The connection slab: fixed slots, generation-checked handles, and
//! lock-free free lists.
//!
//! A handle is `(generation << 32) | (index + 1)`, its high half XORed with
//! the region's `handle_salt`, so 0 is never valid. A slot's state word is
//!
//! ```text
//! 63   62   61        40 39        24 23             0
//! +----+----+------------+------------+----------------+
//! |live|busy| generation |client epoch| client index   |   live / closing
//! | 0  |busy| generation |client epoch| client index   |   claimed
//! | 0  | 0  | generation |     0      | next free + 1  |   free
//! +----+----+------------+------------+----------------+
//! ```
//!
//! A slot taken off a free list is *claimed* (busy, with its owner's
//! process token in `owner`) for its client before the client's live count
//! is raised, and made *live* right after; closing makes it *closing* (live
//! and busy: no handle reaches it any more), gives the client's count back,
//! then claims it with no client before it goes back on a free list. So a
//! process killed in the middle of a connect or a disconnect leaves a busy
//! slot naming its owner and its client, and `Limiter::reap_dead` finishes
//! the job ([`stranded`]): a slot claimed for a client, or closing, is taken
//! to hold the client's count and gives it back. A kill between raising the
//! count and the next store is so judged exactly; one just before raising it
//! (or just after giving it back) makes the count read one low until the
//! client's connections close, never high, so no crash locks a client out.
//! Two windows of a few instructions stay unrecoverable: a slot popped from
//! a free list but not yet claimed (while [`prepare`] fills in its fields),
//! or being pushed back; a kill there loses
//! that one connection slot (never a client's count).
//!
//! Closing bumps the generation, so every older handle is refused. The
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
const GEN_BITS: u32 = 22;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;
const LIVE: u64 = 1 << 63;
/// Set while a connect or a disconnect is under way on the slot (see the
/// module docs): with `LIVE` the slot is closing, without it claimed.
const BUSY: u64 = 1 << 62;
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
/// A handle of another region (another limiter) is unsalted with the wrong
/// salt: its generation then has bits above `GEN_MASK` (refused here) or
/// names another generation, except about once in 2^32.
#[inline(always)]
pub(crate) fn decode(region: &Region, handle: u64) -> Option<(u32, u64)> {
    let handle = handle ^ region.handle_salt;
    let idx1 = handle & 0xFFFF_FFFF;
    let generation = handle >> 32;
    if idx1 == 0 || idx1 > region.layout.max_connections as u64 || generation > GEN_MASK {
        return None;
    }
    Some(((idx1 - 1) as u32, generation))
}

/// The handle of connection `index` in its `generation`: never 0 (the low
/// half is the index + 1).
#[inline]
pub(crate) fn handle(region: &Region, index: u32, generation: u64) -> u64 {
    ((generation << 32) | (index as u64 + 1)) ^ region.handle_salt
}

#[inline]
fn state_generation(s: u64) -> u64 {
    (s >> GEN_SHIFT) & GEN_MASK
}

/// Whether a state word is a live connection (not closing, not claimed).
#[inline(always)]
fn is_live(s: u64) -> bool {
    s & (LIVE | BUSY) == LIVE
}

/// The live connection a handle names, or `None` when it is closed or stale.
#[inline(always)]
pub(crate) fn lookup(region: &Region, handle: u64) -> Option<(Live, &ConnSlot)> {
    let (index, generation) = decode(region, handle)?;
    let slot = region.conn(index);
    // Acquire: pairs with the Release that published the connection's fields.
    let s = slot.state.load(Ordering::Acquire);
    if !is_live(s) || state_generation(s) != generation {
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

/// Takes a free slot, starting at the calling thread's lane. The caller
/// claims it at once with [`prepare`].
#[inline(always)]
pub(crate) fn alloc(region: &Region) -> Option<u32> {
    let hint = thread_hint();
    (0..LANES).find_map(|i| pop(region, (hint + i) % LANES))
}

/// Marks slot `index` claimed by `owner` for `client` (whose live count the
/// caller is about to raise), so that a survivor can finish the job if the
/// owner dies; see the module docs.
#[inline(always)]
fn claim(region: &Region, index: u32, owner: u64, client: u32, epoch: u64) {
    let slot = region.conn(index);
    let generation = state_generation(slot.state.load(Ordering::Relaxed));
    slot.owner.store(owner, Ordering::Relaxed);
    // Release: whoever sees the claim sees its owner. The client CAS that
    // follows (AcqRel) is ordered after this store.
    slot.state.store(
        BUSY | (generation & GEN_MASK) << GEN_SHIFT | (epoch & EPOCH_MASK) << EPOCH_SHIFT | client as u64,
        Ordering::Release,
    );
}

/// Returns an allocated (never published) slot whose client count, if any,
/// was not raised.
pub(crate) fn release(region: &Region, index: u32) {
    push(region, index)
}

/// Fills in the fields of connection `index`, claimed for `client`, before
/// its client's count is raised ([`publish`] then makes it live).
#[inline(always)]
pub(crate) fn prepare(region: &Region, index: u32, client: u32, epoch: u64, window_id: u64, now_ms: u64, owner: u64) {
    let slot = region.conn(index);
    let generation = state_generation(slot.state.load(Ordering::Relaxed));
    // Release fence before the field stores: a reader of the slot's previous
    // connection (`connection_info`) that loads one of them then sees, after
    // its Acquire fence, that the old connection closed.
    crate::sync::fence(Ordering::Release);
    slot.traffic.store(Traffic::fresh(generation, window_id), Ordering::Relaxed);
    slot.connected_at_ms.store(now_ms, Ordering::Relaxed);
    slot.last_message_at_ms.store(now_ms, Ordering::Relaxed);
    slot.acc_messages.store(0, Ordering::Relaxed);
    slot.acc_bytes.store(0, Ordering::Relaxed);
    claim(region, index, owner, client, epoch);
}

/// Makes the prepared connection `index` live (one store, right after its
/// client's count was raised) and returns its handle.
#[inline(always)]
pub(crate) fn publish(region: &Region, index: u32) -> u64 {
    let slot = region.conn(index);
    let s = slot.state.load(Ordering::Relaxed);
    debug_assert!(s & (LIVE | BUSY) == BUSY);
    // Release: whoever sees the live state sees every field `prepare` wrote.
    slot.state.store(s & !BUSY | LIVE, Ordering::Release);
    handle(region, index, state_generation(s))
}

/// Publishes a connection in slot `index` and returns its handle (for a
/// connection with no client count to raise, or tests).
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
    prepare(region, index, client, epoch, window_id, now_ms, owner);
    publish(region, index)
}

/// What a close leaves behind: the client to release and the lifetime totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Closed {
    pub client: u32,
    pub client_epoch: u64,
    pub messages: u64,
    pub bytes: u64,
}

/// Closes a connection exactly once on behalf of `closer` (a process
/// token); `None` when the handle is stale. The slot is then closing: the
/// caller must give the client's count back, call [`given_back`] at once,
/// then [`recycle`].
#[inline(always)]
pub(crate) fn close(region: &Region, handle: u64, closer: u64) -> Option<(u32, Closed)> {
    let (index, generation) = decode(region, handle)?;
    let slot = region.conn(index);
    let mut s = slot.state.load(Ordering::Acquire);
    let owner = loop {
        if !is_live(s) || state_generation(s) != generation {
            return None;
        }
        // The owner of this live connection (published before its state).
        let owner = slot.owner.load(Ordering::Relaxed);
        // AcqRel: exactly one closer wins, and it sees the connection's fields.
        match slot.state.compare_exchange(s, s | BUSY, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break owner,
            Err(cur) => s = cur,
        }
    };
    // Take the slot over from its owner, unless a reaper already did (it
    // found the owner dead and this closing slot): then the reaper finishes.
    // AcqRel: as in `take_over`.
    if owner != closer && slot.owner.compare_exchange(owner, closer, Ordering::AcqRel, Ordering::Relaxed).is_err() {
        return None;
    }
    Some((index, finish_close(slot, s)))
}

/// Retags the traffic word of a closing slot (state `s`, live) so that a
/// check that raced the close fails its CAS, and takes the final counts from
/// the word it replaced.
fn finish_close(slot: &ConnSlot, s: u64) -> Closed {
    let generation = state_generation(s);
    let mut tw = slot.traffic.load(Ordering::Acquire);
    let fresh = Traffic::fresh(generation + 1, 0);
    loop {
        match slot.traffic.compare_exchange(tw, fresh, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(cur) => tw = cur,
        }
    }
    let t = Traffic::unpack(tw);
    Closed {
        client: (s & INDEX_MASK) as u32,
        client_epoch: (s >> EPOCH_SHIFT) & EPOCH_MASK,
        messages: slot.acc_messages.load(Ordering::Relaxed).saturating_add(t.msgs_prev + t.msgs_cur),
        bytes: slot.acc_bytes.load(Ordering::Relaxed).saturating_add(t.bytes_prev + t.bytes_cur),
    }
}

/// Records that the busy slot `index` (closing, or claimed for a client)
/// gave its client's count back: it becomes claimed with no client and the
/// next generation. Called right after the count was given back: a process
/// killed between the two is taken to still hold the count, so a survivor
/// gives it back again (the count then reads one low, never high: see the
/// module docs).
#[inline(always)]
pub(crate) fn given_back(region: &Region, index: u32) {
    let slot = region.conn(index);
    let s = slot.state.load(Ordering::Relaxed);
    debug_assert!(s & BUSY != 0);
    let next = (state_generation(s) + 1) & GEN_MASK;
    slot.state.store(BUSY | next << GEN_SHIFT | NO_CLIENT as u64, Ordering::Release);
}

/// Puts a closed slot back on its free list.
#[inline(always)]
pub(crate) fn recycle(region: &Region, index: u32) {
    push(region, index)
}

/// A slot left busy by a process that died in the middle of a connect or a
/// disconnect, taken over by a survivor (see [`stranded`]).
pub(crate) enum Stranded {
    /// Claimed with no client: no count is held; recycle it.
    Free(u32),
    /// Claimed for a client (a connect cut short) or closing (a disconnect
    /// cut short): the client's count is taken as held; call [`given_back`],
    /// give the count back, then recycle it. The bool says closing.
    Holding(u32, Closed, bool),
}

/// Takes over every busy slot whose owner `dead` judges dead (a process
/// token), for the caller to finish. A slot is taken by one caller only: the
/// owner word changes hands by CAS, from the dead owner to `me`.
pub(crate) fn stranded<'a>(
    region: &'a Region,
    me: u64,
    mut dead: impl FnMut(u64) -> bool + 'a,
) -> impl Iterator<Item = Stranded> + 'a {
    (0..region.layout.max_connections).filter_map(move |i| {
        let slot = region.conn(i);
        // Acquire: a claim's owner was stored before its state.
        let s = slot.state.load(Ordering::Acquire);
        if s & BUSY == 0 {
            return None;
        }
        let owner = slot.owner.load(Ordering::Acquire);
        if owner == me || !dead(owner) {
            return None;
        }
        // AcqRel: take over from the dead owner (or lose to another
        // survivor, or to a closer of this connection: they finish it).
        slot.owner.compare_exchange(owner, me, Ordering::AcqRel, Ordering::Relaxed).ok()?;
        // Only the owner changes a busy slot, so the state is as read,
        // unless it was not busy for this owner when read (then leave it).
        let now = slot.state.load(Ordering::Acquire);
        if now != s {
            return None;
        }
        let client = (s & INDEX_MASK) as u32;
        Some(if s & LIVE != 0 {
            Stranded::Holding(i, finish_close(slot, s), true)
        } else if client != NO_CLIENT {
            let epoch = (s >> EPOCH_SHIFT) & EPOCH_MASK;
            Stranded::Holding(i, Closed { client, client_epoch: epoch, messages: 0, bytes: 0 }, false)
        } else {
            Stranded::Free(i)
        })
    })
}

/// Every live connection: (handle, live state) — for statistics and reaping.
pub(crate) fn live_connections(region: &Region) -> impl Iterator<Item = (u64, Live)> + '_ {
    (0..region.layout.max_connections).filter_map(move |i| {
        let s = region.conn(i).state.load(Ordering::Acquire);
        if !is_live(s) {
            return None;
        }
        let generation = state_generation(s);
        Some((
            handle(region, i, generation),
            Live {
                index: i,
                generation,
                client: (s & INDEX_MASK) as u32,
                client_epoch: (s >> EPOCH_SHIFT) & EPOCH_MASK,
            },
        ))
    })
}
