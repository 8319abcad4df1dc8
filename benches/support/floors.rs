//! Floors: loops that do only what a key check or a connect + disconnect
//! must do at least in the engine's design, measured in the same run as the
//! engine and governor (information rows; see BENCHMARKS.md, "Which targets
//! can be met here"). They keep no limits and make no decisions: each is a
//! lower bound for its operation, not a competitor.

use portable_atomic::AtomicU128;
use siphasher::sip128::SipHasher13;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

/// Huge-page size: areas are aligned to it and advised, as the engine's are.
const HUGE: usize = 2 << 20;
/// Any fixed SipHash key (the engine's is random per region).
const K0: u64 = 0x0706_0504_0302_0100;
const K1: u64 = 0x0f0e_0d0c_0b0a_0908;

/// A zeroed anonymous mapping, 2 MiB aligned, with huge pages advised.
struct Area {
    raw: *mut libc::c_void,
    base: *mut u8,
    len: usize,
}

impl Area {
    fn new(len: usize) -> Area {
        let total = len + HUGE;
        // SAFETY: a fresh private anonymous mapping; checked below.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(raw, libc::MAP_FAILED, "mmap of {total} bytes failed");
        let base = (raw as usize).div_ceil(HUGE) * HUGE;
        // SAFETY: [base, base + len) lies inside the mapping. Advice only.
        unsafe { libc::madvise(base as *mut libc::c_void, len.div_ceil(HUGE) * HUGE, libc::MADV_HUGEPAGE) };
        Area { raw, base: base as *mut u8, len }
    }

    /// The `T` at byte `off`; an atomic or plain integer (zero is valid).
    #[inline(always)]
    fn at<T>(&self, off: usize) -> &T {
        debug_assert!(off + std::mem::size_of::<T>() <= self.len && off % std::mem::align_of::<T>() == 0);
        // SAFETY: in bounds and aligned (callers use multiples of the size),
        // zero-initialised, and T is an integer or atomic type.
        unsafe { &*(self.base.add(off) as *const T) }
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.raw, self.len + HUGE) };
    }
}

fn hash(id: &[u8]) -> u128 {
    SipHasher13::new_with_keys(K0, K1).hash(id).as_u128() | 1
}

fn tag_of(h: u128) -> u8 {
    (h >> 112) as u8 | 0x80
}

/// Where a key's 16-byte id hash and 16-byte traffic word live.
#[derive(Clone, Copy)]
pub enum Layout {
    /// As in the engine: in the key's own 128-byte slot of a table with
    /// two slots per client (key at byte 0, traffic at byte 32).
    Slots128,
    /// The most compact layout with the same two words: 32-byte entries
    /// packed in one array, one per key in an order unrelated to the
    /// lookups, found through a 4-byte index per table slot.
    DenseIndex,
}

/// A key table reduced to a key check's memory traffic: a SipHash-1-3-128
/// of the id, tag bytes, the id hash compared, and one 128-bit load and
/// compare-and-swap of the key's traffic word.
pub struct KeyFloor {
    layout: Layout,
    mask: usize,
    tags: Area,
    slots: Area,
    index: Area,
    entries: Area,
}

impl KeyFloor {
    /// A table of `slots` (a power of two) slots holding `ids`, with the
    /// same hash-chosen homes and linear probing for every layout.
    pub fn new(layout: Layout, slots: usize, ids: &[[u8; 16]]) -> KeyFloor {
        assert!(slots.is_power_of_two() && ids.len() <= slots / 2);
        let f = KeyFloor {
            layout,
            mask: slots - 1,
            tags: Area::new(slots),
            slots: Area::new(slots * 128),
            index: Area::new(slots * 4),
            entries: Area::new(ids.len() * 32),
        };
        // Dense entries in a fixed random order (Fisher-Yates, xorshift).
        let mut order: Vec<usize> = (0..ids.len()).collect();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        for (id, &entry) in ids.iter().zip(&order) {
            let h = hash(id);
            let mut s = f.home(h);
            while f.tags.at::<AtomicU8>(s).load(Ordering::Relaxed) != 0 {
                s = (s + 1) & f.mask;
            }
            f.tags.at::<AtomicU8>(s).store(tag_of(h), Ordering::Relaxed);
            f.index.at::<AtomicU32>(s * 4).store(entry as u32, Ordering::Relaxed);
            f.key(s).store(h, Ordering::Relaxed);
        }
        f
    }

    #[inline(always)]
    fn home(&self, h: u128) -> usize {
        (((h >> 48) as u64 as u128 * (self.mask as u128 + 1)) >> 64) as usize
    }

    /// Byte offset of slot `s`'s key in its area (traffic is 16 or 32 after).
    #[inline(always)]
    fn place(&self, s: usize) -> (&Area, usize, usize) {
        match self.layout {
            Layout::Slots128 => (&self.slots, s * 128, 32),
            Layout::DenseIndex => {
                let e = self.index.at::<AtomicU32>(s * 4).load(Ordering::Relaxed) as usize;
                (&self.entries, e * 32, 16)
            }
        }
    }

    fn key(&self, s: usize) -> &AtomicU128 {
        let (area, off, _) = self.place(s);
        area.at(off)
    }

    /// One key check's floor: true when the key was found and its word
    /// updated.
    #[inline(always)]
    pub fn check(&self, id: &[u8]) -> bool {
        let h = hash(id);
        let tag = tag_of(h);
        let mut s = self.home(h);
        loop {
            let t = self.tags.at::<AtomicU8>(s).load(Ordering::Relaxed);
            if t == 0 {
                return false;
            }
            if t == tag {
                let (area, off, traffic) = self.place(s);
                if area.at::<AtomicU128>(off).load(Ordering::Acquire) == h {
                    let w = area.at::<AtomicU128>(off + traffic);
                    let cur = w.load(Ordering::Acquire);
                    return w.compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire).is_ok();
                }
            }
            s = (s + 1) & self.mask;
        }
    }
}

/// A 64-bit word alone on its cache line.
#[repr(C, align(64))]
struct Line64(AtomicU64);

/// A 128-bit word alone on its cache line.
#[repr(C, align(64))]
struct Line128(AtomicU128);

/// The synchronisation a connect + disconnect of a known client needs with
/// the engine's guarantees (atomic connect, exact lifetime totals, stale
/// handles refused), on words of their own lines as in the region: the id's
/// SipHash-1-3-128; a free-list pop; the client's 128-bit connection word
/// counted up with a load + CAS; the connection's state published and one
/// statistics add; the close's CAS of the state; the 128-bit traffic word
/// retagged with a load + CAS (which takes the final counts); the client's
/// word counted down; a free-list push.
pub struct ConnFloor {
    head: Line64,
    conns: Line128,
    state: Line64,
    stat: Line64,
    traffic: Line128,
}

impl ConnFloor {
    pub fn new() -> Box<ConnFloor> {
        Box::new(ConnFloor {
            head: Line64(AtomicU64::new(1)),
            conns: Line128(AtomicU128::new(0)),
            state: Line64(AtomicU64::new(0)),
            stat: Line64(AtomicU64::new(0)),
            traffic: Line128(AtomicU128::new(0)),
        })
    }

    /// One connect + disconnect's floor: true when every CAS succeeded.
    #[inline(always)]
    pub fn connect_disconnect(&self, id: &[u8]) -> bool {
        std::hint::black_box(hash(id));
        let cas64 = |w: &AtomicU64, add: u64| {
            let cur = w.load(Ordering::Acquire);
            w.compare_exchange(cur, cur.wrapping_add(add), Ordering::AcqRel, Ordering::Acquire).is_ok()
        };
        let cas128 = |w: &AtomicU128, add: u128| {
            let cur = w.load(Ordering::Acquire);
            w.compare_exchange(cur, cur.wrapping_add(add), Ordering::AcqRel, Ordering::Acquire).is_ok()
        };
        let mut ok = cas64(&self.head.0, 1 << 24);
        ok &= cas128(&self.conns.0, 1);
        self.state.0.store(1 << 63, Ordering::Release);
        self.stat.0.fetch_add(1, Ordering::Relaxed);
        ok &= cas64(&self.state.0, 1);
        ok &= cas128(&self.traffic.0, 1);
        ok &= cas128(&self.conns.0, u128::MAX);
        ok & cas64(&self.head.0, 1 << 24)
    }
}
