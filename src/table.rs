//! The client table: a sharded open-addressing table with bounded probing.
//!
//! A client (or key) is identified by a 127-bit SipHash-1-3 of its id, keyed
//! with the region's random secret, so attacker-chosen ids cannot aim at one
//! shard and two ids never share state (a collision is a 2^-127 event).
//! The hash picks a shard and two home slots in it; a client lives within
//! `probe` (16) slots of one of its homes (wrapping inside the shard), so a
//! lookup reads at most 32 slots. The table has two slots per `max_clients`
//! (see `region::SLOTS_PER_CLIENT`), so `max_clients` ids always fit.
//! Each slot has a one-byte tag (hash bits, high bit set) in a compact array:
//! lookups compare tags first and read a slot only when its tag matches, so a
//! miss costs a few cache lines, not 32 slots.
//!
//! Invariants:
//! - Lookups are lock-free: a slot whose key equals the hash (without the
//!   pending bit) belongs to that client, and the epoch read from its conns
//!   word between two equal key reads is that client's epoch.
//! - Every change of a slot's key (insert, reclaim) happens under its shard's
//!   insert lock, so one id is never inserted twice. The lock is taken only
//!   to add a new client; a holder that dies is detected by its process
//!   token and the lock is broken.
//! - A slot is reclaimed only when it holds no information (no live
//!   connection, every window expired). Reclaiming marks the key pending,
//!   then bumps the epoch in the traffic and conns words with CAS from the
//!   values it judged expired; a racing update makes a CAS fail and the
//!   reclaim is undone. Stale holders of the old epoch then fail their CAS.

use crate::clock::process;
use crate::packed::{Conns, Traffic, EPOCH_MASK, TAG_MASK};
use crate::region::{load_id, store_id, ClientSlot, Region};
use crate::sync::{spin_wait, Ordering};
use crate::window::{roll, Position};

/// Set in a key word while its slot is being (re)claimed.
const PENDING: u128 = 1 << 127;
/// Spins between checks that the lock holder still lives.
const SPINS_PER_CHECK: u32 = 1 << 12;
/// Give up on a lock held by a live process after this many spins (C6).
const MAX_SPINS: u32 = 1 << 24;

/// A client found in the table: its slot and the epoch it was found with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub index: u32,
    pub epoch: u64,
}

/// Why a client could not be placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InsertError {
    /// Every slot of its probe window holds a live client.
    Full,
    /// The shard lock stayed held by a live process for too long.
    Busy,
}

/// The keyed hash of an id: 127 bits, never 0.
pub(crate) fn hash(region: &Region, id: &[u8]) -> u128 {
    let h = region.header();
    let k0 = h.hash_k0.load(Ordering::Relaxed);
    let k1 = h.hash_k1.load(Ordering::Relaxed);
    let v = siphasher::sip128::SipHasher13::new_with_keys(k0, k1).hash(id).as_u128() & !PENDING;
    if v == 0 {
        1
    } else {
        v
    }
}

#[inline]
pub(crate) fn shard_of(region: &Region, h: u128) -> u32 {
    (h as u32) & (region.layout.shards - 1)
}

/// The tag of a hash: 7 bits of it with the high bit set (0 means empty).
#[inline]
fn tag_of(h: u128) -> u8 {
    (h >> 112) as u8 | 0x80
}

/// The first home of a hash in a shard of `len` slots: a hash field scaled to
/// 0..len by a multiply (see `Probe::new`).
#[inline(always)]
fn home1(h: u128, len: u32) -> u32 {
    (((h >> 48) as u64 as u128 * len as u128) >> 64) as u32
}

/// The slots a client may occupy: two windows of `probe` slots from its
/// two homes, visited nearest-first, alternating between the homes.
#[derive(Clone, Copy)]
struct Probe {
    base: u32,
    len: u32,
    homes: [u32; 2],
    n_homes: u32,
    probe: u32,
}

impl Probe {
    #[inline(always)]
    fn new(region: &Region, h: u128) -> Probe {
        let l = region.layout;
        let len = l.shard_len;
        // Two hash fields scaled to 0..len by a multiply (Lemire's
        // reduction: no divide on the lookup path). The product's high part
        // depends on a field's top bits: bits 48..111 and 16..47 are apart
        // from the shard's (the lowest), the tag's (112..119) and bit 127
        // (always 0).
        let home1 = home1(h, len);
        let mut home2 = (((h >> 16) as u32 as u64 * len as u64) >> 32) as u32;
        if home2 == home1 && len > l.probe() {
            // Two different windows (when the shard has room for them).
            home2 = (home1 + l.probe()) % len;
        }
        Probe {
            base: shard_of(region, h) * len,
            len,
            homes: [home1, home2],
            n_homes: if home2 == home1 { 1 } else { 2 },
            probe: l.probe(),
        }
    }

    /// The i-th slot to visit, for i in `0..self.count()`.
    #[inline(always)]
    fn slot(&self, i: u32) -> u32 {
        // n_homes is 1 or 2: a shift and a mask, not a divide.
        let (d, which) = (i >> (self.n_homes - 1), i & (self.n_homes - 1));
        let at = self.homes[which as usize] + d;
        self.base + if at >= self.len { at - self.len } else { at }
    }

    #[inline(always)]
    fn count(&self) -> u32 {
        self.probe * self.n_homes
    }
}

fn probe_slots(region: &Region, h: u128) -> impl Iterator<Item = u32> {
    let p = Probe::new(region, h);
    (0..p.count()).map(move |i| p.slot(i))
}

/// The shard and the two home slots (sorted) of a hash: ids that agree on
/// them compete for the same slots.
#[cfg(test)]
pub(crate) fn homes(region: &Region, h: u128) -> (u32, [u32; 2]) {
    let p = Probe::new(region, h);
    let [a, b] = p.homes;
    (p.base, [a.min(b), a.max(b)])
}

/// Every slot a hash may occupy, sorted.
#[cfg(test)]
pub(crate) fn candidates(region: &Region, h: u128) -> Vec<u32> {
    let mut v: Vec<u32> = probe_slots(region, h).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Finds a client without inserting it. Lock-free. May miss a client whose
/// insert is racing this call (its tag not yet visible); the caller's insert
/// path then looks again under the shard lock, without tags.
#[inline(always)]
pub(crate) fn find(region: &Region, h: u128) -> Option<Found> {
    find_with_conns(region, h).map(|(found, _)| found)
}

/// [`find`], also returning the client's conns word as read between the two
/// key reads (the word the returned epoch came from).
#[inline(always)]
pub(crate) fn find_with_conns(region: &Region, h: u128) -> Option<(Found, u128)> {
    // The first slot of the probe order is the first home: where most ids
    // sit while their shard has room. Try it before building the probe.
    let l = region.layout;
    let first = shard_of(region, h) * l.shard_len + home1(h, l.shard_len);
    if let Some(f) = found_at(region, first, h, tag_of(h)) {
        return Some(f);
    }
    find_probing(region, h)
}

/// `find` past the first slot: every slot of the probe order.
#[inline(never)]
fn find_probing(region: &Region, h: u128) -> Option<(Found, u128)> {
    let tag = tag_of(h);
    let p = Probe::new(region, h);
    (1..p.count()).find_map(|k| found_at(region, p.slot(k), h, tag))
}

/// The client of hash `h` and its conns word if slot `i` holds it.
#[inline(always)]
fn found_at(region: &Region, i: u32, h: u128, tag: u8) -> Option<(Found, u128)> {
    if region.tag(i).load(Ordering::Relaxed) != tag {
        return None;
    }
    let slot = region.client(i);
    if slot.key.load(Ordering::Acquire) != h {
        return None;
    }
    // Acquire: a reclaim's epoch bump is ordered after its pending mark, so
    // seeing a new epoch here means the re-read below sees the key change.
    let conns = slot.conns.load(Ordering::Acquire);
    let epoch = Conns::unpack(conns).epoch;
    (slot.key.load(Ordering::Acquire) == h).then_some((Found { index: i, epoch }, conns))
}

/// Whether a slot holds no information at `pos`: no live connection, and no
/// count left in any window.
fn holds_nothing(slot: &ClientSlot, pos: Position) -> Option<(u128, u128)> {
    let cw = slot.conns.load(Ordering::Acquire);
    let c = Conns::unpack(cw);
    if c.active != 0 || (roll(c.id, c.prev, c.cur, pos).prev | roll(c.id, c.prev, c.cur, pos).cur) != 0 {
        return None;
    }
    let tw = slot.traffic.load(Ordering::Acquire);
    let t = Traffic::unpack(tw);
    let m = roll(t.id, t.msgs_prev, t.msgs_cur, pos);
    let b = roll(t.id, t.bytes_prev, t.bytes_cur, pos);
    if m.prev | m.cur | b.prev | b.cur != 0 {
        return None;
    }
    Some((cw, tw))
}

/// Finds a client, inserting it when absent. `pos` is the connection-rate
/// window position (used to judge which slots hold nothing).
pub(crate) fn find_or_insert(region: &Region, h: u128, id: &[u8], pos: Position) -> Result<Found, InsertError> {
    if let Some(f) = find(region, h) {
        return Ok(f);
    }
    let shard = shard_of(region, h);
    let _guard = ShardGuard::lock(region, shard)?;
    // Under the lock no other insert or reclaim runs in this shard; look
    // again, reading every key (a lock-free find may miss a fresh insert).
    for i in probe_slots(region, h) {
        let slot = region.client(i);
        if slot.key.load(Ordering::Acquire) == h {
            let epoch = Conns::unpack(slot.conns.load(Ordering::Acquire)).epoch;
            return Ok(Found { index: i, epoch });
        }
    }
    for i in probe_slots(region, h) {
        let slot = region.client(i);
        if slot.key.load(Ordering::Acquire) == 0 {
            let c = Conns::unpack(slot.conns.load(Ordering::Acquire));
            store_id(&slot.id, &slot.id_len, id);
            region.tag(i).store(tag_of(h), Ordering::Relaxed);
            // Release: lookups that see the key see its id bytes and tag.
            slot.key.store(h, Ordering::Release);
            return Ok(Found { index: i, epoch: c.epoch });
        }
    }
    for i in probe_slots(region, h) {
        if let Some(f) = reclaim(region, i, h, id, pos) {
            return Ok(f);
        }
    }
    Err(InsertError::Full)
}

/// Gives slot `i` to hash `h` if it holds nothing. Caller holds the shard lock.
fn reclaim(region: &Region, i: u32, h: u128, id: &[u8], pos: Position) -> Option<Found> {
    let slot = region.client(i);
    let old_key = slot.key.load(Ordering::Acquire);
    let (cw, tw) = holds_nothing(slot, pos)?;
    // Lookups of the old id now miss and queue behind our lock.
    // SeqCst (here and in the CASes): the pending mark must be visible to any
    // thread whose CAS on conns/traffic comes after ours.
    slot.key.store(h | PENDING, Ordering::SeqCst);
    let c = Conns::unpack(cw);
    let epoch = (c.epoch + 1) & EPOCH_MASK;
    let t = Traffic::unpack(tw);
    let new_t = Traffic::fresh(epoch & TAG_MASK, pos.id);
    if slot.traffic.compare_exchange(tw, new_t, Ordering::SeqCst, Ordering::SeqCst).is_err() {
        // Someone charged the old key after we judged it: give it back.
        slot.key.store(old_key, Ordering::SeqCst);
        return None;
    }
    let new_c = Conns { epoch, id: pos.id, ..Conns::default() }.pack();
    if slot.conns.compare_exchange(cw, new_c, Ordering::SeqCst, Ordering::SeqCst).is_err() {
        // Someone connected to the old key: undo (the traffic word held no
        // counts, so the old tag with no counts is the same state).
        slot.traffic.store(Traffic::fresh(t.tag, t.id), Ordering::SeqCst);
        slot.key.store(old_key, Ordering::SeqCst);
        return None;
    }
    store_id(&slot.id, &slot.id_len, id);
    region.tag(i).store(tag_of(h), Ordering::Relaxed);
    // Release: lookups that see the key see the new epoch, id and tag.
    slot.key.store(h, Ordering::Release);
    Some(Found { index: i, epoch })
}

/// The id of a slot (first 40 bytes) and its full length.
pub(crate) fn client_id(region: &Region, index: u32) -> ([u8; 40], u32) {
    let slot = region.client(index);
    load_id(&slot.id, &slot.id_len)
}

/// Holds a shard's insert lock; releases it on drop (also on unwind).
struct ShardGuard<'a> {
    region: &'a Region,
    shard: u32,
    token: u64,
}

impl<'a> ShardGuard<'a> {
    fn lock(region: &'a Region, shard: u32) -> Result<ShardGuard<'a>, InsertError> {
        let lock = region.shard_lock(shard);
        let token = process::token();
        let mut spins: u32 = 0;
        loop {
            let cur = lock.load(Ordering::Relaxed);
            if cur == 0 {
                // Acquire: see the slots as the previous holder left them.
                if lock.compare_exchange(0, token, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    return Ok(ShardGuard { region, shard, token });
                }
            } else if spins % SPINS_PER_CHECK == SPINS_PER_CHECK - 1
                && cur != token
                && !process::is_alive(cur)
                && lock.compare_exchange(cur, token, Ordering::Acquire, Ordering::Relaxed).is_ok()
            {
                let g = ShardGuard { region, shard, token };
                g.recover();
                return Ok(g);
            }
            spins += 1;
            if spins >= MAX_SPINS {
                return Err(InsertError::Busy);
            }
            spin_wait();
        }
    }

    /// After breaking a dead holder's lock: a slot it left pending holds no
    /// known client; empty it and bump its epoch so stale holders fail.
    fn recover(&self) {
        let l = self.region.layout;
        for i in self.shard * l.shard_len..(self.shard + 1) * l.shard_len {
            let slot = self.region.client(i);
            if slot.key.load(Ordering::Acquire) & PENDING == 0 {
                continue;
            }
            let c = Conns::unpack(slot.conns.load(Ordering::Acquire));
            let epoch = (c.epoch + 1) & EPOCH_MASK;
            slot.traffic.store(Traffic::fresh(epoch & TAG_MASK, 0), Ordering::SeqCst);
            slot.conns.store(Conns { epoch, ..Conns::default() }.pack(), Ordering::SeqCst);
            slot.key.store(0, Ordering::SeqCst);
            self.region.tag(i).store(0, Ordering::Relaxed);
        }
    }
}

impl Drop for ShardGuard<'_> {
    fn drop(&mut self) {
        // Release: the next holder sees every slot change made under the lock.
        let _ =
            self.region.shard_lock(self.shard).compare_exchange(self.token, 0, Ordering::Release, Ordering::Relaxed);
    }
}
