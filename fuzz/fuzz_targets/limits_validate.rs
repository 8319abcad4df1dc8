//! Any `rt_limits` bytes: `rt_limits_validate`, `rt_limits_error`,
//! `rt_region_size` and `rt_limiter_new` never crash, never read past
//! `struct_size` (the buffer holds exactly that many bytes), and agree with
//! each other and with the ranges the header documents:
//! - validate is OK exactly when the message is "" and the region size > 0;
//! - validate returns what a reference reader built from the header says
//!   (INVALID_ARGUMENT for the struct, INVALID_LIMITS for a value);
//! - the message names a field and obeys snprintf semantics at every `cap`;
//! - rt_limiter_new returns the same status (when the region is small
//!   enough to allocate here) and the limits it reports are the ones read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratethrottle::ffi::*;
use ratethrottle_fuzz::arbitrary::{self, Unstructured};
use ratethrottle_fuzz::*;
use std::mem::size_of;
use std::ptr::{null, null_mut};

/// Largest region rt_limiter_new may allocate here.
const MAX_REGION: usize = 8 << 20;

fn message(l: *const rt_limits, cap: usize) -> (usize, Vec<u8>) {
    let mut buf = vec![0xeeu8; cap];
    let p = if cap == 0 { null_mut() } else { buf.as_mut_ptr() };
    // SAFETY: buf holds cap bytes; l is NULL or holds struct_size bytes.
    let n = unsafe { rt_limits_error(l, p.cast(), cap) };
    (n, buf)
}

fn run(u: &mut Unstructured) -> arbitrary::Result<()> {
    let bytes = if u.int_in_range(0u8..=3)? == 0 {
        // Raw bytes as the struct, struct_size and all (at least 4 bytes,
        // and the size field is made to fit the buffer).
        let raw: Vec<u8> = u.arbitrary()?;
        let mut raw = raw;
        raw.resize(raw.len().max(4), 0);
        let size = (u32::from_ne_bytes(raw[..4].try_into().unwrap()) as usize) % (raw.len() + 1);
        raw.truncate(size.max(4));
        raw[..4].copy_from_slice(&(size as u32).to_ne_bytes());
        raw.into_boxed_slice()
    } else {
        let weight = u.int_in_range(0u8..=16)?;
        LimitsBytes::arbitrary(u, Shape { max_capacity: 1 << 23, invalid_weight: weight, capacities: None })?.buf
    };
    let l = bytes.as_ptr().cast::<rt_limits>();

    // SAFETY: l holds struct_size bytes.
    let status = unsafe { rt_limits_validate(l) };
    let want = reference_status(&bytes);
    assert_eq!(status, want, "rt_limits_validate vs the header's ranges: {:?}", reference_read(&bytes));
    // SAFETY: as above.
    let size = unsafe { rt_region_size(l) };
    assert_eq!(size > 0, status == RT_STATUS_OK, "rt_region_size {size} vs validate {status}");
    if size > 0 {
        assert_eq!(size % 64, 0, "region size is a multiple of the alignment");
    }

    // The message: empty exactly when valid; names a field; snprintf rules.
    let (need, _) = message(l, 0);
    let (n, full) = message(l, need + 1);
    assert_eq!(n, need);
    assert_eq!(full[need], 0);
    let text = std::str::from_utf8(&full[..need]).expect("message is UTF-8");
    assert!(!text.contains('\0'));
    assert_eq!(text.is_empty(), status == RT_STATUS_OK, "message {text:?} vs status {status}");
    if !text.is_empty() {
        assert!(text.starts_with("invalid "), "message {text:?} does not name what is invalid");
    }
    let cap = u.int_in_range(0..=need + 2)?;
    let (n, buf) = message(l, cap);
    assert_eq!(n, need, "length differs with cap {cap}");
    if cap > 0 {
        let k = need.min(cap - 1);
        assert_eq!(&buf[..k], &full[..k]);
        assert_eq!(buf[k], 0, "not NUL-terminated at cap {cap}");
        assert!(buf[k + 1..].iter().all(|&b| b == 0xee), "wrote past the NUL at cap {cap}");
    }

    // rt_limiter_new agrees (when the region is small enough to make here).
    if status != RT_STATUS_OK || size <= MAX_REGION {
        let sentinel = std::ptr::dangling_mut::<rt_limiter>();
        let mut lim = sentinel;
        // SAFETY: l holds struct_size bytes; lim is writable.
        let st = unsafe { rt_limiter_new(l, &mut lim) };
        assert_eq!(st, status, "rt_limiter_new vs rt_limits_validate");
        if st == RT_STATUS_OK {
            let mut s: rt_stats = zeroed();
            s.struct_size = size_of::<rt_stats>() as u32;
            // SAFETY: live limiter.
            assert_eq!(unsafe { rt_limiter_stats(lim, &mut s) }, RT_STATUS_OK);
            let read = reference_read(&bytes).unwrap();
            assert_eq!(s.limits, rt_limits { struct_size: size_of::<rt_limits>() as u32, reserved: 0, ..read });
            // SAFETY: live limiter, freed once.
            unsafe { rt_limiter_free(lim) };
        } else {
            assert_eq!(lim, sentinel, "out written on failure");
        }
    }

    // NULL is refused everywhere, with the documented message.
    // SAFETY: NULL is allowed.
    unsafe {
        assert_eq!(rt_limits_validate(null()), RT_STATUS_NULL_ARGUMENT);
        assert_eq!(rt_region_size(null()), 0);
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
});
