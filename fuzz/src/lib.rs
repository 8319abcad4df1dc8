//! Helpers shared by the fuzz targets: 64-byte aligned caller memory,
//! `rt_limits` built from fuzzer bytes (any `struct_size`, in a buffer of
//! exactly that many bytes so that ASan sees any read past it), and a
//! reference reader and validator of `rt_limits` written from the header's
//! documentation, not from the engine's code.

use arbitrary::{Arbitrary, Unstructured};
use core::mem::{offset_of, size_of};
use ratethrottle::ffi::*;

/// Memory aligned to 64 bytes (or deliberately misaligned views of it),
/// zeroed, freed on drop.
pub struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    pub fn zeroed(len: usize) -> Aligned {
        Aligned::with_align(len, 64)
    }

    /// `len` zero bytes (exactly: ASan sees an access past them) aligned to `align`.
    pub fn with_align(len: usize, align: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len.max(1), align).expect("layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Aligned { ptr, layout }
    }

    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.layout.size()
    }

    pub fn is_empty(&self) -> bool {
        self.layout.size() == 0
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: ptr holds len initialised bytes, owned by self.
        unsafe { core::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self is unique.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }

    /// A copy of the first `len` bytes in fresh aligned memory.
    ///
    /// # Safety
    /// `src` must be readable for `len` bytes.
    pub unsafe fn copy_of(src: *const u8, len: usize) -> Aligned {
        let a = Aligned::zeroed(len);
        // SAFETY: src is readable for len bytes per the caller; a is fresh.
        unsafe { core::ptr::copy_nonoverlapping(src, a.ptr, len) };
        a
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// Picks a number: mostly small, sometimes a boundary from `special`,
/// sometimes anything.
pub fn pick(u: &mut Unstructured, special: &[u64], raw_max: u64) -> arbitrary::Result<u64> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 => 0,
        1 | 2 => u.int_in_range(1u64..=8)?,
        3 => u.int_in_range(0u64..=1000)?,
        4 | 5 if !special.is_empty() => special[u.choose_index(special.len())?],
        6 => u.int_in_range(0u64..=100_000)?.min(raw_max),
        _ => u.int_in_range(0..=raw_max)?,
    })
}

const MAX_MSGS: u64 = 262_143;
const MAX_BYTES: u64 = 67_108_863;
const MAX_CONNS: u64 = 16_777_215;
const MAX_CAPACITY: u64 = 8_388_608;
const U32: u64 = u32::MAX as u64;

/// The size in bytes of this header's `rt_limits`.
pub const LIMITS_SIZE: usize = size_of::<rt_limits>();

/// An `rt_limits` as a caller might pass it: any field values, any
/// `struct_size` (the buffer holds exactly `max(struct_size, 4)` bytes), a
/// tail of zero or non-zero bytes when it is larger than ours.
#[derive(Debug, Clone)]
pub struct LimitsBytes {
    pub buf: Box<[u8]>,
}

/// How to shape limits from fuzzer bytes.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Largest capacity to pick when valid (keeps regions small).
    pub max_capacity: u32,
    /// Probability weight (out of 16) that some fields or the size may be
    /// invalid (each of them then with probability 1/4).
    pub invalid_weight: u8,
    /// Capacities to use (the region's, for updates), or None to pick.
    pub capacities: Option<(u32, u32)>,
}

impl LimitsBytes {
    pub fn arbitrary(u: &mut Unstructured, shape: Shape) -> arbitrary::Result<LimitsBytes> {
        let invalid = u.int_in_range(0u8..=15)? < shape.invalid_weight;
        let bad = |u: &mut Unstructured| -> arbitrary::Result<bool> { Ok(invalid && u.int_in_range(0u8..=3)? == 0) };
        let mut l = rt_limits { max_clients: 16, max_connections: 16, ..documented_defaults() };
        // Window: mostly short so that the fake clock crosses many windows.
        l.window_ms = if bad(u)? {
            pick(u, &[0, 1, U32, U32 - 1, 1 << 31], U32)? as u32
        } else {
            match u.int_in_range(0u8..=3)? {
                0 => u.int_in_range(1u32..=10)?,
                1 => u.int_in_range(1u32..=1000)?,
                2 => 60_000,
                _ => u.int_in_range(1..=u32::MAX)?,
            }
        };
        let field = |u: &mut Unstructured, max: u64| -> arbitrary::Result<u64> {
            if bad(u)? {
                pick(u, &[max, max + 1, U32, 0, 1], U32)
            } else {
                Ok(pick(u, &[max, max - 1, 1, 2], max)?.min(max))
            }
        };
        l.connections_per_window = field(u, MAX_CONNS)? as u32;
        l.max_concurrent_connections = field(u, MAX_CONNS)? as u32;
        l.messages_per_window = field(u, MAX_MSGS)? as u32;
        l.bytes_per_window = if bad(u)? {
            pick(u, &[MAX_BYTES + 1, u64::MAX, 1 << 32], u64::MAX)?
        } else {
            pick(u, &[MAX_BYTES, 1, 100, 65_536], MAX_BYTES)?.min(MAX_BYTES)
        };
        l.max_message_size = pick(u, &[0, 1, 65_536, U32, U32 - 1], U32)? as u32;
        l.client_messages_per_window = field(u, MAX_MSGS)? as u32;
        l.client_bytes_per_window = if bad(u)? {
            pick(u, &[MAX_BYTES + 1, u64::MAX], u64::MAX)?
        } else {
            pick(u, &[MAX_BYTES, 1, 100], MAX_BYTES)?.min(MAX_BYTES)
        };
        let cap = |u: &mut Unstructured| -> arbitrary::Result<u32> {
            if bad(u)? && u.arbitrary::<bool>()? {
                Ok(*u.choose(&[0, MAX_CAPACITY as u32 + 1, u32::MAX])?)
            } else {
                u.int_in_range(1..=shape.max_capacity)
            }
        };
        (l.max_clients, l.max_connections) = match shape.capacities {
            Some(c) if !bad(u)? => c,
            _ => (cap(u)?, cap(u)?),
        };
        l.flags = if bad(u)? { u.arbitrary()? } else { u.int_in_range(0..=3)? };
        l.reserved = if bad(u)? && u.arbitrary::<bool>()? { u.int_in_range(1..=u32::MAX)? } else { 0 };

        // struct_size: ours, an older (smaller) header, a newer (larger) one
        // with a zero or non-zero tail, or nonsense.
        let (size, tail_nonzero) = if bad(u)? {
            match u.int_in_range(0u8..=3)? {
                0 => (u.int_in_range(0usize..=7)?, false),
                1 => (u.int_in_range(8usize..=LIMITS_SIZE - 1)?, false),
                2 => (LIMITS_SIZE + u.int_in_range(1usize..=64)?, true),
                _ => (LIMITS_SIZE + u.int_in_range(1usize..=64)?, false),
            }
        } else {
            (LIMITS_SIZE, false)
        };
        l.struct_size = size as u32;
        let mut buf = vec![0u8; size.max(4)].into_boxed_slice();
        let raw = limits_to_bytes(&l);
        let n = size.clamp(4, LIMITS_SIZE);
        buf[..n].copy_from_slice(&raw[..n]);
        buf[..4].copy_from_slice(&(size as u32).to_ne_bytes());
        if tail_nonzero {
            let at = LIMITS_SIZE + u.choose_index(size - LIMITS_SIZE)?;
            buf[at] = u.int_in_range(1..=255)?;
        }
        Ok(LimitsBytes { buf })
    }

    pub fn ptr(&self) -> *const rt_limits {
        self.buf.as_ptr().cast()
    }

    pub fn struct_size(&self) -> usize {
        u32::from_ne_bytes(self.buf[..4].try_into().unwrap()) as usize
    }
}

/// The bytes of an `rt_limits` in this header's layout (padding zero).
pub fn limits_to_bytes(l: &rt_limits) -> [u8; LIMITS_SIZE] {
    let mut b = [0u8; LIMITS_SIZE];
    let mut put32 = |off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    put32(offset_of!(rt_limits, struct_size), l.struct_size);
    put32(offset_of!(rt_limits, window_ms), l.window_ms);
    put32(offset_of!(rt_limits, connections_per_window), l.connections_per_window);
    put32(offset_of!(rt_limits, max_concurrent_connections), l.max_concurrent_connections);
    put32(offset_of!(rt_limits, messages_per_window), l.messages_per_window);
    put32(offset_of!(rt_limits, max_message_size), l.max_message_size);
    put32(offset_of!(rt_limits, client_messages_per_window), l.client_messages_per_window);
    put32(offset_of!(rt_limits, max_clients), l.max_clients);
    put32(offset_of!(rt_limits, max_connections), l.max_connections);
    put32(offset_of!(rt_limits, flags), l.flags);
    put32(offset_of!(rt_limits, reserved), l.reserved);
    let mut put64 = |off: usize, v: u64| b[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    put64(offset_of!(rt_limits, bytes_per_window), l.bytes_per_window);
    put64(offset_of!(rt_limits, client_bytes_per_window), l.client_bytes_per_window);
    b
}

/// The defaults the header documents for `rt_limits_default`.
pub fn documented_defaults() -> rt_limits {
    rt_limits {
        struct_size: LIMITS_SIZE as u32,
        window_ms: 60_000,
        connections_per_window: 60,
        max_concurrent_connections: 10,
        messages_per_window: 1000,
        bytes_per_window: 0,
        max_message_size: 65_536,
        client_messages_per_window: 0,
        client_bytes_per_window: 0,
        max_clients: 65_536,
        max_connections: 65_536,
        flags: 0,
        reserved: 0,
    }
}

/// The limits a caller's bytes mean, per the header: the fields inside
/// `struct_size` as given, the others the defaults. `None` when the struct
/// itself is refused (size below 8, a non-zero unknown tail).
pub fn reference_read(bytes: &[u8]) -> Option<rt_limits> {
    let size = u32::from_ne_bytes(bytes[..4].try_into().unwrap()) as usize;
    if size < 8 {
        return None;
    }
    if size > LIMITS_SIZE && bytes[LIMITS_SIZE..size].iter().any(|&b| b != 0) {
        return None;
    }
    let mut l = documented_defaults();
    let u32_at = |off: usize, dflt: u32| -> u32 {
        if off + 4 <= size {
            u32::from_ne_bytes(bytes[off..off + 4].try_into().unwrap())
        } else {
            dflt
        }
    };
    let u64_at = |off: usize, dflt: u64| -> u64 {
        if off + 8 <= size {
            u64::from_ne_bytes(bytes[off..off + 8].try_into().unwrap())
        } else {
            dflt
        }
    };
    l.window_ms = u32_at(offset_of!(rt_limits, window_ms), l.window_ms);
    l.connections_per_window = u32_at(offset_of!(rt_limits, connections_per_window), l.connections_per_window);
    l.max_concurrent_connections =
        u32_at(offset_of!(rt_limits, max_concurrent_connections), l.max_concurrent_connections);
    l.messages_per_window = u32_at(offset_of!(rt_limits, messages_per_window), l.messages_per_window);
    l.bytes_per_window = u64_at(offset_of!(rt_limits, bytes_per_window), l.bytes_per_window);
    l.max_message_size = u32_at(offset_of!(rt_limits, max_message_size), l.max_message_size);
    l.client_messages_per_window =
        u32_at(offset_of!(rt_limits, client_messages_per_window), l.client_messages_per_window);
    l.client_bytes_per_window = u64_at(offset_of!(rt_limits, client_bytes_per_window), l.client_bytes_per_window);
    l.max_clients = u32_at(offset_of!(rt_limits, max_clients), l.max_clients);
    l.max_connections = u32_at(offset_of!(rt_limits, max_connections), l.max_connections);
    l.flags = u32_at(offset_of!(rt_limits, flags), l.flags);
    l.reserved = u32_at(offset_of!(rt_limits, reserved), l.reserved);
    Some(l)
}

/// The status `rt_limits_validate` must return for these bytes, per the
/// header: INVALID_ARGUMENT for the struct itself (size, tail, reserved),
/// INVALID_LIMITS for unknown flags or a value out of its documented range.
pub fn reference_status(bytes: &[u8]) -> rt_status {
    let Some(l) = reference_read(bytes) else {
        return RT_STATUS_INVALID_ARGUMENT;
    };
    if l.reserved != 0 {
        return RT_STATUS_INVALID_ARGUMENT;
    }
    let ok = l.flags & !(RT_FLAG_FAIL_OPEN | RT_FLAG_DRY_RUN) == 0
        && (1..=U32).contains(&(l.window_ms as u64))
        && l.connections_per_window as u64 <= MAX_CONNS
        && l.max_concurrent_connections as u64 <= MAX_CONNS
        && l.messages_per_window as u64 <= MAX_MSGS
        && l.bytes_per_window <= MAX_BYTES
        && l.client_messages_per_window as u64 <= MAX_MSGS
        && l.client_bytes_per_window <= MAX_BYTES
        && (1..=MAX_CAPACITY).contains(&(l.max_clients as u64))
        && (1..=MAX_CAPACITY).contains(&(l.max_connections as u64));
    if ok {
        RT_STATUS_OK
    } else {
        RT_STATUS_INVALID_LIMITS
    }
}

/// Reads a static C string the library returned (never NULL, bounded).
///
/// # Safety
/// `p` must be NULL (a finding: panics) or a static NUL-terminated string.
pub unsafe fn c_text(p: *const core::ffi::c_char) -> &'static [u8] {
    assert!(!p.is_null(), "the library returned a NULL string");
    // SAFETY: per the caller.
    let s = unsafe { core::ffi::CStr::from_ptr(p) }.to_bytes();
    assert!(s.len() < 256, "implausibly long static string");
    s
}

/// An all-zero value of a plain-integer C struct.
pub fn zeroed<T: Copy>() -> T {
    // SAFETY: only used for the library's repr(C) structs of integers,
    // bools and byte arrays, for which all-zero is a valid value.
    unsafe { core::mem::zeroed() }
}

/// Arbitrary, re-exported so targets need only this crate.
pub use arbitrary;

/// A few bytes of fuzzer input as an id.
#[derive(Debug, Clone, Arbitrary)]
pub enum IdPick {
    /// One of a small pool, so the same clients come back.
    Pool(u8),
    /// Any bytes (at most 64).
    Bytes(Vec<u8>),
}

/// The pool: short, empty, embedded NUL, exactly 40 and 41 bytes (the stored
/// prefix), long, non-UTF-8.
pub fn pool_id(i: u8) -> Vec<u8> {
    match i % 10 {
        0 => b"10.0.0.1".to_vec(),
        1 => b"10.0.0.2".to_vec(),
        2 => Vec::new(),
        3 => b"a\0b".to_vec(),
        4 => b"a".to_vec(),
        5 => vec![b'x'; 40],
        6 => vec![b'x'; 41],
        7 => (0..=255u8).collect(),
        8 => vec![0xff, 0xfe, 0x00],
        _ => b"room:lobby".to_vec(),
    }
}

impl IdPick {
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            IdPick::Pool(i) => pool_id(*i),
            IdPick::Bytes(b) => b.iter().copied().take(64).collect(),
        }
    }
}
