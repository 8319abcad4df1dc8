//! Violations: the record, the synchronous callback, and the bounded ring in
//! the region that any thread or process can drain.
//!
//! The ring is Vyukov's bounded MPMC queue: each cell has a sequence number;
//! a producer claims a cell by CAS on the tail, writes it, then publishes it
//! by storing the sequence. When it is full the record is dropped and counted
//! (`violations_dropped`); a denial never waits for a reader. A process
//! killed between claiming and publishing a cell stalls the ring at that
//! cell: later records are then dropped and counted, callbacks still run.

use crate::decision::Reason;
use crate::region::{load_id, store_id, Region, RING_CAP};
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use std::sync::atomic::AtomicPtr;
use std::sync::Mutex;

/// One denial (or, in dry-run mode, one would-be denial).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which limit.
    pub reason: Reason,
    /// The first 40 bytes of the client id (or key).
    pub client_id: [u8; 40],
    /// The id's full length (may exceed 40).
    pub client_id_len: u32,
    /// The connection's handle, 0 for connection-level and key checks.
    pub conn: u64,
    /// The limit that was exceeded.
    pub limit: u64,
    /// The estimate that exceeded it.
    pub current: u64,
    /// The request's size (bytes for messages, 1 for connects).
    pub size: u64,
    /// As in the decision.
    pub retry_after_ms: u64,
    /// The limiter clock's ms when it happened.
    pub at_ms: u64,
}

impl Default for Violation {
    fn default() -> Self {
        Violation::empty()
    }
}

impl Violation {
    /// The stored part of the id (at most 40 bytes).
    pub fn client_id(&self) -> &[u8] {
        &self.client_id[..(self.client_id_len as usize).min(40)]
    }

    /// The seed's `type` name for this violation (`message_rate`, ...).
    pub fn violation_type(&self) -> &'static str {
        self.reason.violation_type()
    }

    /// An empty record (reason `Ok`), for output buffers.
    pub fn empty() -> Violation {
        Violation {
            reason: Reason::Ok,
            client_id: [0; 40],
            client_id_len: 0,
            conn: 0,
            limit: 0,
            current: 0,
            size: 0,
            retry_after_ms: 0,
            at_ms: 0,
        }
    }
}

/// A violation callback: runs synchronously on the deciding thread.
pub type ViolationCallback = Box<dyn Fn(&Violation) + Send + Sync + 'static>;

/// The callback of one `Limiter` handle (callbacks are per process, not in
/// the region). Replaced callbacks are kept until the limiter is dropped, so
/// a thread still running the old one never sees it freed.
pub(crate) struct Callbacks {
    current: AtomicPtr<ViolationCallback>,
    // Boxed twice on purpose: `current` points at the inner box's heap slot,
    // which must not move while a thread may still call through it.
    #[allow(clippy::vec_box)]
    retired: Mutex<Vec<Box<ViolationCallback>>>,
}

impl Callbacks {
    pub(crate) fn new() -> Callbacks {
        Callbacks { current: AtomicPtr::new(core::ptr::null_mut()), retired: Mutex::new(Vec::new()) }
    }

    pub(crate) fn set(&self, cb: Option<ViolationCallback>) {
        let new = cb.map_or(core::ptr::null_mut(), |c| Box::into_raw(Box::new(c)));
        // AcqRel: callers that load the new pointer see the boxed closure.
        let old = self.current.swap(new, std::sync::atomic::Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: `old` came from Box::into_raw above and is retired once.
            let b = unsafe { Box::from_raw(old) };
            self.retired.lock().unwrap_or_else(|e| e.into_inner()).push(b);
        }
    }

    #[inline]
    pub(crate) fn call(&self, v: &Violation) {
        let p = self.current.load(std::sync::atomic::Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: non-null pointers here stay valid until drop (retired, never freed early).
            unsafe { (*p)(v) };
        }
    }
}

impl Drop for Callbacks {
    fn drop(&mut self) {
        self.set(None);
    }
}

/// Retries of a ring operation before it gives up: each retry means another
/// thread moved the ring, so running out means a stalled or corrupted ring
/// (a writer killed mid-record); a denial never waits on the ring (C6).
const MAX_RING_RETRIES: u32 = 64;

/// Appends to the ring; false (and counted as dropped) when full or stalled.
pub(crate) fn push(region: &Region, v: &Violation) -> bool {
    let h = region.header();
    let mut pos = h.ring_tail.load(Ordering::Relaxed);
    for _ in 0..MAX_RING_RETRIES {
        let cell = region.ring_cell(pos as usize);
        // Acquire: see the consumer's release of this cell before reusing it.
        let seq = cell.seq.load(Ordering::Acquire);
        let dif = seq.wrapping_sub(pos) as i64;
        if dif == 0 {
            match h.ring_tail.compare_exchange_weak(pos, pos + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    write_cell(cell, v);
                    // Release: a consumer that sees the sequence sees the fields.
                    cell.seq.store(pos + 1, Ordering::Release);
                    return true;
                }
                Err(cur) => pos = cur,
            }
        } else if dif < 0 {
            break;
        } else {
            pos = h.ring_tail.load(Ordering::Relaxed);
        }
    }
    region.count(|s| &s.violations_dropped, 1);
    false
}

fn write_cell(cell: &crate::region::RingCell, v: &Violation) {
    let len = AtomicU32::new(0);
    store_id(&cell.id, &len, v.client_id());
    let id_len = v.client_id_len as u64;
    cell.head.store((v.reason as u64) | id_len << 32, Ordering::Relaxed);
    cell.conn.store(v.conn, Ordering::Relaxed);
    cell.limit.store(v.limit, Ordering::Relaxed);
    cell.current.store(v.current, Ordering::Relaxed);
    cell.size.store(v.size, Ordering::Relaxed);
    cell.retry_after_ms.store(v.retry_after_ms, Ordering::Relaxed);
    cell.at_ms.store(v.at_ms, Ordering::Relaxed);
}

fn read_cell(cell: &crate::region::RingCell) -> Violation {
    let head = cell.head.load(Ordering::Relaxed);
    let len = AtomicU32::new(0);
    let (client_id, _) = load_id(&cell.id, &len);
    Violation {
        reason: Reason::from_u32(head as u32).unwrap_or(Reason::InvalidArgument),
        client_id,
        client_id_len: (head >> 32) as u32,
        conn: cell.conn.load(Ordering::Relaxed),
        limit: cell.limit.load(Ordering::Relaxed),
        current: cell.current.load(Ordering::Relaxed),
        size: cell.size.load(Ordering::Relaxed),
        retry_after_ms: cell.retry_after_ms.load(Ordering::Relaxed),
        at_ms: cell.at_ms.load(Ordering::Relaxed),
    }
}

/// Takes one record from the ring; `None` when empty (or stalled).
pub(crate) fn pop(region: &Region) -> Option<Violation> {
    let h = region.header();
    let head: &AtomicU64 = &h.ring_head;
    let mut pos = head.load(Ordering::Relaxed);
    for _ in 0..MAX_RING_RETRIES {
        let cell = region.ring_cell(pos as usize);
        // Acquire: pairs with the producer's Release of the sequence.
        let seq = cell.seq.load(Ordering::Acquire);
        let dif = seq.wrapping_sub(pos + 1) as i64;
        if dif == 0 {
            match head.compare_exchange_weak(pos, pos + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    let v = read_cell(cell);
                    // Release: the producer that reuses the cell sees our reads done.
                    cell.seq.store(pos + RING_CAP as u64, Ordering::Release);
                    return Some(v);
                }
                Err(cur) => pos = cur,
            }
        } else if dif < 0 {
            return None;
        } else {
            pos = head.load(Ordering::Relaxed);
        }
    }
    None
}
