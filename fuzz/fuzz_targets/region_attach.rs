//! `rt_limiter_attach` on memory that is not what it claims to be.
//!
//! Two modes, chosen by the input:
//! - raw: the input bytes themselves, copied into 64-aligned memory of
//!   exactly their length, are attached (almost always refused: bad magic);
//! - patched: a valid region is made with `rt_limiter_init_in` (capacities
//!   1..=8), used for a while (live connections, keys, violation records),
//!   then fuzzer-chosen ranges of it, most often in the header, are
//!   overwritten with fuzzer bytes or boundary values, and it is attached.
//!
//! When the attach succeeds, a few operations run through the new handle
//! (and through the handle made before the corruption, whose layout is the
//! validated one): connect, check_message, check_key, stats, connection
//! info, Prometheus text, drain, disconnect, update_limits, reap_dead.
//! They must not crash, read or write outside the region (ASan: the memory
//! is allocated with exactly the region's length), or hang (libFuzzer's
//! `-timeout`). A panic caught at the boundary (`RT_STATUS_PANIC`, a deny
//! with `RT_INVALID_ARGUMENT`) is the documented answer to corrupted memory
//! and is tolerated here, except:
//! - on a region that the input did not change (then it is a finding),
//! - the engine's own out-of-bounds assertion in `Region::at` (a finding).
//!
//! With RT_FUZZ_STATS=1 the distinct tolerated panics are printed once each.
//!
//! Known findings, fixed: attach did not validate `ring_head` and
//! `ring_tail`, and the loops over them, over the ring cells' sequence words
//! and over `limits_writer` were unbounded, so corrupting those words hung
//! the next denial, `rt_drain_violations` or `rt_limiter_update_limits`.
//! Attach now checks the ring's head and tail, and those loops are bounded.
//! The words are fuzzed like any other (RT_FUZZ_KNOWN=0 puts them back after
//! the corruption, as the harness did before the fix); their offsets are
//! checked against the engine once per run (`check_known_offsets`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratethrottle::ffi::*;
use ratethrottle_fuzz::arbitrary::{self, Arbitrary, Unstructured};
use ratethrottle_fuzz::*;
use std::mem::size_of;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

/// Panics are findings while this is set (an unmodified region).
static STRICT: AtomicBool = AtomicBool::new(true);
/// Which handle is running: one attached after the corruption (validated)
/// or the one made before it (whose memory changed under it).
static FRESH_HANDLE: AtomicBool = AtomicBool::new(false);

fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let aborting = std::panic::take_hook(); // libfuzzer-sys's: prints, then aborts
        let seen: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let stats = std::env::var_os("RT_FUZZ_STATS").is_some();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info.to_string();
            let oob = msg.contains("self.layout.total");
            let ours =
                info.location().is_some_and(|l| l.file().contains("fuzz_targets") || l.file().contains("fuzz/src"));
            if STRICT.load(Ordering::Relaxed) || oob || ours {
                aborting(info);
                return;
            }
            if stats {
                let fresh = FRESH_HANDLE.load(Ordering::Relaxed);
                let at = info.location().map(|l| format!("{}:{} {fresh}", l.file(), l.line())).unwrap_or_default();
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                if !seen.contains(&at) {
                    let who =
                        if fresh { "a handle attached after the corruption" } else { "a handle attached before it" };
                    eprintln!("tolerated panic on a corrupted region, through {who}: {msg}");
                    seen.push(at);
                }
            }
        }));
    });
}

#[derive(Arbitrary, Debug)]
enum Warm {
    Connect(u8),
    Message(u8, u16),
    Key(u8, u16),
    Disconnect(u8),
    Drain(u8),
    Tick(u16),
}

#[derive(Arbitrary, Debug)]
enum Patch {
    /// Bytes at an offset inside the header.
    Header { at: u16, bytes: Vec<u8> },
    /// A boundary value at an 8-aligned header word.
    HeaderWord { word: u8, value: Word },
    /// Bytes anywhere in the region.
    Anywhere { at: u32, bytes: Vec<u8> },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Word {
    Zero,
    One,
    Max,
    Max32,
    Bit63,
    Pid1,
    Raw(u64),
    Add(i8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Len {
    Exact,
    Shorter(u16),
    Longer(u8),
}

#[derive(Arbitrary, Debug)]
enum Act {
    Connect(u8),
    Message { h: u8, raw: Option<u64>, size: u16 },
    Key(u8, u16),
    Disconnect(u8),
    Stats,
    Info(u8),
    Prometheus,
    Drain(u8),
    Update { window: u16, mpw: u16 },
    Reap,
    Tick(u16),
}

/// Offsets of the known-finding words (see the top of this file), as
/// `region.rs` lays the header out (`repr(C)`).
const LIMITS_WRITER: std::ops::Range<usize> = 64..72;
const RING_HEAD: usize = 272;
const RING_TAIL: usize = 280;
/// The ring is the region's last part: RING_CAP cells of CELL bytes, each
/// starting with its sequence word.
const RING_CAP: usize = 1024;
const CELL: usize = 128;

fn include_known() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("RT_FUZZ_KNOWN").is_none_or(|v| v != "0"))
}

fn word(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
}

/// The byte ranges of the known-finding words in a region of `total` bytes.
fn known_ranges(total: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let ring = total.saturating_sub(RING_CAP * CELL);
    [LIMITS_WRITER, RING_HEAD..RING_TAIL + 8]
        .into_iter()
        .chain((0..RING_CAP).map(move |i| ring + i * CELL..ring + i * CELL + 8))
        .filter(move |r| r.end <= total)
}

/// Checks once that the offsets above are the engine's: a fresh region has
/// an idle writer, head = tail = 0 and cell i's sequence = i; one violation
/// moves the tail to 1 and cell 0's sequence to 1; draining it moves the
/// head to 1 and cell 0's sequence to RING_CAP; an update flips the word
/// after the writer.
fn check_known_offsets() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let fail = |what: &str| -> ! {
            panic!("region layout changed ({what}): update the known-finding offsets in fuzz/fuzz_targets/region_attach.rs")
        };
        let mut l: rt_limits = zeroed();
        // SAFETY: a whole rt_limits.
        unsafe { rt_limits_default(&mut l) };
        (l.max_clients, l.max_connections, l.max_concurrent_connections) = (2, 2, 1);
        // SAFETY: valid limits.
        let total = unsafe { rt_region_size(&l) };
        let mem = Aligned::zeroed(total);
        let mut h = null_mut();
        // SAFETY: aligned memory of total bytes, outliving the handle.
        assert_eq!(unsafe { rt_limiter_init_in(mem.ptr().cast(), total, &l, &mut h) }, RT_STATUS_OK);
        let h = Handle(h);
        let ring = total - RING_CAP * CELL;
        let b = || mem.bytes().to_vec();
        let s = b();
        if word(&s, LIMITS_WRITER.start) != 0 || word(&s, RING_HEAD) != 0 || word(&s, RING_TAIL) != 0 {
            fail("fresh header");
        }
        if (0..RING_CAP).any(|i| word(&s, ring + i * CELL) != i as u64) {
            fail("fresh ring");
        }
        let active = word(&s, LIMITS_WRITER.end);
        let mut c = 0;
        // SAFETY: live handle, valid id and out.
        unsafe {
            rt_connect_at(h.0, b"a".as_ptr(), 1, 0, &mut c);
            rt_connect_at(h.0, b"a".as_ptr(), 1, 0, &mut c); // a concurrency denial: one record
        }
        let s = b();
        if word(&s, RING_TAIL) != 1 || word(&s, RING_HEAD) != 0 || word(&s, ring) != 1 {
            fail("after one violation");
        }
        let mut v = [zeroed::<rt_violation>(); 2];
        // SAFETY: live handle, out holds 2 records.
        assert_eq!(unsafe { rt_drain_violations(h.0, v.as_mut_ptr(), 2) }, 1);
        let s = b();
        if word(&s, RING_HEAD) != 1 || word(&s, ring) != RING_CAP as u64 {
            fail("after a drain");
        }
        // SAFETY: live handle, valid limits.
        assert_eq!(unsafe { rt_limiter_update_limits_at(h.0, &l, 0) }, RT_STATUS_OK);
        let s = b();
        if word(&s, LIMITS_WRITER.end) == active || word(&s, LIMITS_WRITER.start) != 0 {
            fail("after an update");
        }
        drop(h);
    });
}

/// Frees a handle when dropped (also on an early return).
struct Handle(*mut rt_limiter);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: a live handle (or NULL), freed once; declared after the
        // memory under it, so dropped before it.
        unsafe { rt_limiter_free(self.0) };
    }
}

/// The header's size: the bytes before the first other part.
fn header_len(total: usize) -> usize {
    // Header is 64-aligned and the lanes follow it; it is well under 1 KiB.
    total.min(1024)
}

fn run(u: &mut Unstructured, data: &[u8]) -> arbitrary::Result<()> {
    if u.int_in_range(0u8..=7)? == 0 {
        // Raw bytes.
        let rest: &[u8] = u.arbitrary()?;
        let len = rest.len();
        let mut mem = Aligned::with_align(len.max(1), 64);
        mem.bytes_mut()[..len].copy_from_slice(rest);
        STRICT.store(false, Ordering::Relaxed);
        let mut h = null_mut();
        // SAFETY: mem holds len bytes (at least 1) and outlives the handle.
        let st = unsafe { rt_limiter_attach(mem.ptr().cast(), len, &mut h) };
        let h = Handle(h);
        if st == RT_STATUS_OK && !include_known() {
            // A valid header by chance: put the known-finding words in a
            // consistent state (idle writer, empty ring).
            let total = word(mem.bytes(), 16) as usize;
            let ring = total - RING_CAP * CELL;
            let b = mem.bytes_mut();
            for r in known_ranges(total) {
                let v = if r.start >= ring { ((r.start - ring) / CELL) as u64 } else { 0 };
                b[r].copy_from_slice(&v.to_ne_bytes());
            }
        }
        if st == RT_STATUS_OK {
            act(u, h.0, &mut Vec::new(), &mut 0)?;
        } else {
            assert!(matches!(st, RT_STATUS_INCOMPATIBLE_REGION | RT_STATUS_REGION_TOO_SMALL), "raw attach: {st}");
        }
        let _ = data;
        return Ok(());
    }

    // A valid region, used for a while.
    let lb = LimitsBytes::arbitrary(u, Shape { max_capacity: 8, invalid_weight: 0, capacities: None })?;
    // SAFETY: lb holds struct_size bytes.
    let total = unsafe { rt_region_size(lb.ptr()) };
    assert!(total > 0);
    let mut mem = Aligned::zeroed(total);
    let mut orig = null_mut();
    // (Declared after mem: dropped, and so freed, before it.)
    // SAFETY: mem is aligned and holds total bytes; it outlives the handle.
    assert_eq!(unsafe { rt_limiter_init_in(mem.ptr().cast(), total, lb.ptr(), &mut orig) }, RT_STATUS_OK);
    let orig = Handle(orig);
    STRICT.store(true, Ordering::Relaxed);
    let mut handles: Vec<u64> = Vec::new();
    let mut now: u64 = u.arbitrary::<u32>()? as u64;
    let warm: Vec<Warm> = u.arbitrary()?;
    for w in warm.iter().take(64) {
        let orig = orig.0;
        // SAFETY: orig is live; ids and buffers are valid.
        unsafe {
            match *w {
                Warm::Connect(i) => {
                    let id = pool_id(i);
                    let mut c = 0;
                    rt_connect_at(orig, id.as_ptr(), id.len(), now, &mut c);
                    if c != 0 {
                        handles.push(c);
                    }
                }
                Warm::Message(i, size) => {
                    let c = handles.get(i as usize % handles.len().max(1)).copied().unwrap_or(0);
                    rt_check_message_at(orig, c, size as u64, now);
                }
                Warm::Key(i, size) => {
                    let id = pool_id(i);
                    rt_check_key_at(orig, id.as_ptr(), id.len(), size as u64, now);
                }
                Warm::Disconnect(i) => {
                    if !handles.is_empty() {
                        let c = handles.swap_remove(i as usize % handles.len());
                        rt_disconnect(orig, c);
                    }
                }
                Warm::Drain(n) => {
                    let mut out = vec![zeroed::<rt_violation>(); n as usize % 8];
                    rt_drain_violations(orig, out.as_mut_ptr(), out.len());
                }
                Warm::Tick(d) => now += d as u64,
            }
        }
    }

    // Corrupt it.
    let before = mem.bytes().to_vec();
    let patches: Vec<Patch> = u.arbitrary()?;
    let hl = header_len(total);
    for p in patches.iter().take(8) {
        let b = mem.bytes_mut();
        match p {
            Patch::Header { at, bytes } => {
                let at = *at as usize % hl;
                let n = bytes.len().min(hl - at).min(32);
                b[at..at + n].copy_from_slice(&bytes[..n]);
            }
            Patch::HeaderWord { word, value } => {
                let at = (*word as usize * 8) % (hl - 7) / 8 * 8;
                let old = u64::from_ne_bytes(b[at..at + 8].try_into().unwrap());
                let v = match *value {
                    Word::Zero => 0,
                    Word::One => 1,
                    Word::Max => u64::MAX,
                    Word::Max32 => u32::MAX as u64,
                    Word::Bit63 => 1 << 63,
                    Word::Pid1 => 1 << 32,
                    Word::Raw(v) => v,
                    Word::Add(d) => old.wrapping_add_signed(d as i64),
                };
                b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
            }
            Patch::Anywhere { at, bytes } => {
                let at = *at as usize % total;
                let n = bytes.len().min(total - at).min(64);
                b[at..at + n].copy_from_slice(&bytes[..n]);
            }
        }
    }
    if !include_known() {
        let b = mem.bytes_mut();
        for r in known_ranges(total) {
            b[r.clone()].copy_from_slice(&before[r]);
        }
    }
    let changed = mem.bytes() != &before[..];
    STRICT.store(!changed, Ordering::Relaxed);

    let len_kind: Len = u.arbitrary()?;
    let (len, backing) = match len_kind {
        Len::Exact => (total, None),
        Len::Shorter(d) => (total.saturating_sub(1 + d as usize), None),
        Len::Longer(d) => {
            // A longer mapping: copy into a larger buffer.
            let extra = 64 + d as usize;
            let bigger = Aligned::zeroed(total + extra);
            // SAFETY: both hold total bytes at least.
            unsafe { core::ptr::copy_nonoverlapping(mem.ptr(), bigger.ptr(), total) };
            (total + extra, Some(bigger))
        }
    };
    let base = backing.as_ref().map_or(mem.ptr(), |b| b.ptr());
    let mut h = null_mut();
    // SAFETY: base holds len bytes and outlives the handle.
    let st = unsafe { rt_limiter_attach(base.cast(), len, &mut h) };
    let h = Handle(h);
    if !changed {
        let want = if len < total { RT_STATUS_REGION_TOO_SMALL } else { RT_STATUS_OK };
        assert_eq!(st, want, "attach of an unmodified region (len {len} of {total})");
    } else {
        assert!(
            matches!(st, RT_STATUS_OK | RT_STATUS_INCOMPATIBLE_REGION | RT_STATUS_REGION_TOO_SMALL),
            "attach of a corrupted region: status {st}"
        );
    }
    if st == RT_STATUS_OK {
        FRESH_HANDLE.store(true, Ordering::Relaxed);
        let r = act(u, h.0, &mut handles, &mut now);
        FRESH_HANDLE.store(false, Ordering::Relaxed);
        r?;
    }
    drop(h);
    // The handle made before the corruption: its layout is the validated
    // one; the memory under it is not.
    act(u, orig.0, &mut handles, &mut now)?;
    Ok(())
}

/// A few operations through a handle over (possibly corrupted) memory.
fn act(u: &mut Unstructured, h: *mut rt_limiter, handles: &mut Vec<u64>, now: &mut u64) -> arbitrary::Result<()> {
    let acts: Vec<Act> = u.arbitrary()?;
    for a in acts.iter().take(12) {
        // SAFETY: h is live; every buffer is valid for what it claims.
        unsafe {
            match *a {
                Act::Connect(i) => {
                    let id = pool_id(i);
                    let mut c = 0;
                    let d = rt_connect_at(h, id.as_ptr(), id.len(), *now, &mut c);
                    assert!(d.allowed || c == 0, "*out_conn set on a denial: {d:?}");
                    if c != 0 {
                        handles.push(c);
                    }
                }
                Act::Message { h: i, raw, size } => {
                    let c = raw.unwrap_or_else(|| handles.get(i as usize % handles.len().max(1)).copied().unwrap_or(0));
                    rt_check_message_at(h, c, size as u64, *now);
                }
                Act::Key(i, size) => {
                    let id = pool_id(i);
                    rt_check_key_at(h, id.as_ptr(), id.len(), size as u64, *now);
                }
                Act::Disconnect(i) => {
                    let c = handles.get(i as usize % handles.len().max(1)).copied().unwrap_or(0);
                    rt_disconnect(h, c);
                }
                Act::Stats => {
                    let mut s: rt_stats = zeroed();
                    s.struct_size = size_of::<rt_stats>() as u32;
                    let st = rt_limiter_stats(h, &mut s);
                    assert!(matches!(st, RT_STATUS_OK | RT_STATUS_PANIC), "stats: {st}");
                }
                Act::Info(i) => {
                    let c = handles.get(i as usize % handles.len().max(1)).copied().unwrap_or(0);
                    let mut info: rt_connection_info = zeroed();
                    info.struct_size = size_of::<rt_connection_info>() as u32;
                    rt_limiter_connection_info(h, c, &mut info);
                }
                Act::Prometheus => {
                    let mut buf = vec![0u8; 64];
                    rt_stats_prometheus(h, buf.as_mut_ptr().cast(), buf.len());
                }
                Act::Drain(n) => {
                    let mut out = vec![zeroed::<rt_violation>(); n as usize % 8];
                    let got = rt_drain_violations(h, out.as_mut_ptr(), out.len());
                    assert!(got <= out.len());
                }
                Act::Update { window, mpw } => {
                    // Valid limits with the region's capacities (as stats
                    // report them; a corrupted header may refuse them).
                    let mut s: rt_stats = zeroed();
                    s.struct_size = size_of::<rt_stats>() as u32;
                    if rt_limiter_stats(h, &mut s) == RT_STATUS_OK {
                        let mut l: rt_limits = zeroed();
                        rt_limits_default(&mut l);
                        l.max_clients = s.max_clients as u32;
                        l.max_connections = s.max_connections as u32;
                        l.window_ms = window as u32 + 1;
                        l.messages_per_window = mpw as u32;
                        rt_limiter_update_limits_at(h, &l, *now);
                    }
                }
                Act::Reap => {
                    rt_reap_dead(h);
                }
                Act::Tick(d) => *now += d as u64,
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    install_hook();
    check_known_offsets();
    let mut u = Unstructured::new(data);
    let _ = run(&mut u, data);
    STRICT.store(true, Ordering::Relaxed);
});
