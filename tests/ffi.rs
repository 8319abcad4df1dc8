//! The C ABI called from Rust, so that Miri and ASan can check the shims:
//! NULL for every pointer argument, `(NULL, 0)` and `(NULL, n)` ids,
//! `struct_size` smaller and larger than ours, short buffers, every string.
//! Capacities are tiny so that Miri runs stay short.

use ratethrottle::ffi::*;
use ratethrottle::Reason;
use std::ffi::{c_void, CStr};
use std::mem::{offset_of, size_of, zeroed};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};

fn text(p: *const std::ffi::c_char) -> &'static str {
    assert!(!p.is_null());
    // SAFETY: the library returns static NUL-terminated strings.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap()
}

fn defaults() -> rt_limits {
    // SAFETY: rt_limits is plain integers; all-zero is a valid value.
    let mut l: rt_limits = unsafe { zeroed() };
    // SAFETY: l is a whole rt_limits.
    unsafe { rt_limits_default(&mut l) };
    l
}

fn small() -> rt_limits {
    rt_limits { max_clients: 16, max_connections: 16, ..defaults() }
}

fn new_limiter(l: &rt_limits) -> *mut rt_limiter {
    let mut lim = null_mut();
    // SAFETY: valid pointers.
    assert_eq!(unsafe { rt_limiter_new(l, &mut lim) }, RT_STATUS_OK);
    assert!(!lim.is_null());
    lim
}

fn empty_stats() -> rt_stats {
    // SAFETY: rt_stats is plain integers; all-zero is a valid value.
    let mut s: rt_stats = unsafe { zeroed() };
    s.struct_size = size_of::<rt_stats>() as u32;
    s
}

fn stats(lim: *mut rt_limiter) -> rt_stats {
    let mut s = empty_stats();
    // SAFETY: valid pointers.
    assert_eq!(unsafe { rt_limiter_stats(lim, &mut s) }, RT_STATUS_OK);
    s
}

fn limits_error(l: *const rt_limits) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf holds 256 bytes; l is NULL or valid per the callers.
    let n = unsafe { rt_limits_error(l, buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n < buf.len());
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

/// Memory aligned to 64 bytes, freed on drop.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn zeroed(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 64).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Aligned { ptr, layout }
    }
    fn mem(&self) -> *mut c_void {
        self.ptr.cast()
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

#[test]
fn version_and_every_string() {
    assert_eq!(text(rt_version()), ratethrottle::VERSION);
    let statuses: Vec<&str> = (0..=RT_STATUS_IO_ERROR).map(|s| text(rt_status_str(s))).collect();
    assert_eq!(statuses[RT_STATUS_OK as usize], "ok");
    assert_eq!(statuses[RT_STATUS_PANIC as usize], "internal error (panic)");
    assert_eq!(statuses[RT_STATUS_IO_ERROR as usize], "i/o error");
    for (i, s) in statuses.iter().enumerate() {
        assert_ne!(*s, "unknown", "status {i}");
        assert!(!statuses[..i].contains(s), "duplicate phrase {s}");
    }
    for s in [RT_STATUS_IO_ERROR + 1, 99, u32::MAX] {
        assert_eq!(text(rt_status_str(s)), "unknown");
    }
    for r in Reason::ALL {
        assert_eq!(text(rt_reason_str(r as u32)), r.as_str());
        assert_eq!(text(rt_violation_type_str(r as u32)), r.violation_type());
    }
    assert_eq!(text(rt_reason_str(RT_OK)), "ok");
    assert_eq!(text(rt_reason_str(RT_MESSAGE_RATE)), "rate_limit_exceeded");
    assert_eq!(text(rt_reason_str(RT_UNKNOWN_CONNECTION)), "connection_not_found");
    assert_eq!(text(rt_violation_type_str(RT_MESSAGE_TOO_LARGE)), "message_size");
    for r in [RT_REASON_COUNT, 99, u32::MAX] {
        assert_eq!(text(rt_reason_str(r)), "unknown");
        assert_eq!(text(rt_violation_type_str(r)), "unknown");
    }
}

#[test]
fn defaults_are_the_seeds() {
    let l = defaults();
    assert_eq!(l.struct_size as usize, size_of::<rt_limits>());
    assert_eq!(
        (l.window_ms, l.connections_per_window, l.max_concurrent_connections, l.messages_per_window),
        (60_000, 60, 10, 1000)
    );
    assert_eq!((l.bytes_per_window, l.max_message_size), (0, 65_536));
    assert_eq!((l.client_messages_per_window, l.client_bytes_per_window), (0, 0));
    assert_eq!((l.max_clients, l.max_connections, l.flags, l.reserved), (65_536, 65_536, 0, 0));
    // SAFETY: valid pointer.
    assert_eq!(unsafe { rt_limits_validate(&l) }, RT_STATUS_OK);
    assert_eq!(limits_error(&l), "");
    // SAFETY: valid pointer.
    assert!(unsafe { rt_region_size(&l) } > 0);
    // SAFETY: NULL is allowed.
    unsafe { rt_limits_default(null_mut()) };
}

#[test]
fn presets_are_the_engine_presets() {
    type Fill = unsafe extern "C" fn(*mut rt_limits);
    let presets: [(Fill, ratethrottle::Limits); 3] = [
        (rt_limits_strict, ratethrottle::Limits::strict()),
        (rt_limits_moderate, ratethrottle::Limits::moderate()),
        (rt_limits_generous, ratethrottle::Limits::generous()),
    ];
    for (fill, want) in presets {
        // SAFETY: an all-zero rt_limits is a valid value.
        let mut l: rt_limits = unsafe { zeroed() };
        // SAFETY: valid pointer; then NULL, which is allowed.
        unsafe { fill(&mut l) };
        unsafe { fill(null_mut()) };
        assert_eq!(l.struct_size as usize, size_of::<rt_limits>());
        assert_eq!(
            (l.connections_per_window, l.max_concurrent_connections, l.messages_per_window),
            (want.connections_per_window, want.max_concurrent_connections, want.messages_per_window)
        );
        assert_eq!((l.bytes_per_window, l.max_message_size), (want.bytes_per_window, want.max_message_size));
        assert_eq!((l.window_ms, l.max_clients, l.flags), (60_000, 65_536, 0));
        // SAFETY: valid pointer.
        assert_eq!(unsafe { rt_limits_validate(&l) }, RT_STATUS_OK);
    }
}

#[test]
fn null_limits_everywhere() {
    let sentinel = std::ptr::NonNull::<rt_limiter>::dangling().as_ptr();
    let mut lim = sentinel;
    let mem = Aligned::zeroed(4096);
    // SAFETY: NULL pointers are allowed; out is valid.
    unsafe {
        assert_eq!(rt_limits_validate(null()), RT_STATUS_NULL_ARGUMENT);
        assert_eq!(rt_region_size(null()), 0);
        assert_eq!(rt_limiter_new(null(), &mut lim), RT_STATUS_NULL_ARGUMENT);
        assert_eq!(rt_limiter_new(&small(), null_mut()), RT_STATUS_NULL_ARGUMENT);
        assert_eq!(rt_limiter_init_in(mem.mem(), 4096, null(), &mut lim), RT_STATUS_NULL_ARGUMENT);
        assert_eq!(rt_limiter_init_in(null_mut(), 4096, &small(), &mut lim), RT_STATUS_NULL_ARGUMENT);
        assert_eq!(rt_limiter_init_in(mem.mem(), 4096, &small(), null_mut()), RT_STATUS_NULL_ARGUMENT);
        assert_eq!(rt_limiter_attach(null_mut(), 4096, &mut lim), RT_STATUS_NULL_ARGUMENT);
        assert_eq!(rt_limiter_attach(mem.mem(), 4096, null_mut()), RT_STATUS_NULL_ARGUMENT);
    }
    assert_eq!(lim, sentinel, "out-params are written only on success");
    assert_eq!(limits_error(null()), "limits pointer is NULL");
}

#[test]
fn null_limiter_everywhere() {
    let lim: *mut rt_limiter = null_mut();
    let l = small();
    let mut conn: rt_conn = 12345;
    let mut s = empty_stats();
    // SAFETY: rt_connection_info is plain integers.
    let mut info: rt_connection_info = unsafe { zeroed() };
    info.struct_size = size_of::<rt_connection_info>() as u32;
    let mut buf = [7u8; 16];
    // SAFETY: rt_violation is plain integers.
    let mut v: [rt_violation; 2] = unsafe { zeroed() };
    let invalid = |d: rt_decision| !d.allowed && d.reason == RT_INVALID_ARGUMENT;
    // SAFETY: every pointer is NULL or valid.
    unsafe {
        rt_limiter_free(lim);
        assert_eq!(rt_limiter_update_limits(lim, &l), RT_STATUS_NULL_ARGUMENT);
        assert_eq!(rt_reap_dead(lim), 0);
        assert!(invalid(rt_connect(lim, b"a".as_ptr(), 1, &mut conn)));
        assert_eq!(conn, 0, "*out_conn is 0 when denied");
        conn = 12345;
        assert!(invalid(rt_connect_at(lim, b"a".as_ptr(), 1, 0, &mut conn)));
        assert_eq!(conn, 0);
        rt_disconnect(lim, 5);
        assert!(invalid(rt_check_connection(lim, b"a".as_ptr(), 1)));
        conn = 12345;
        assert_eq!(rt_register_connection(lim, b"a".as_ptr(), 1, &mut conn), RT_STATUS_NULL_ARGUMENT);
        assert_eq!(conn, 12345);
        assert_eq!(rt_client_connections(lim, b"a".as_ptr(), 1), 0);
        assert!(invalid(rt_check_message(lim, 1, 1)));
        assert!(invalid(rt_check_message_at(lim, 1, 1, 0)));
        assert!(invalid(rt_check_key(lim, b"k".as_ptr(), 1, 1)));
        assert!(invalid(rt_check_key_at(lim, b"k".as_ptr(), 1, 1, 0)));
        assert_eq!(rt_limiter_stats(lim, &mut s), RT_STATUS_NULL_ARGUMENT);
        assert_eq!(rt_limiter_connection_info(lim, 1, &mut info), RT_STATUS_NULL_ARGUMENT);
        assert_eq!(rt_stats_prometheus(lim, buf.as_mut_ptr().cast(), buf.len()), 0);
        assert_eq!(buf, [7u8; 16]);
        rt_set_violation_callback(lim, Some(count_violation), null_mut());
        assert_eq!(rt_drain_violations(lim, v.as_mut_ptr(), 2), 0);
    }
    assert_eq!(s.active_connections, 0);
}

#[test]
fn null_other_arguments() {
    let lim = new_limiter(&small());
    let invalid = |d: rt_decision| !d.allowed && d.reason == RT_INVALID_ARGUMENT;
    // SAFETY: every pointer is NULL or valid.
    unsafe {
        assert_eq!(rt_limiter_update_limits(lim, null()), RT_STATUS_NULL_ARGUMENT);
        assert!(invalid(rt_connect(lim, b"a".as_ptr(), 1, null_mut())));
        assert!(invalid(rt_connect_at(lim, b"a".as_ptr(), 1, 0, null_mut())));
        assert_eq!(rt_client_connections(lim, b"a".as_ptr(), 1), 0, "a NULL out_conn connects nothing");
        assert_eq!(rt_register_connection(lim, b"a".as_ptr(), 1, null_mut()), RT_STATUS_NULL_ARGUMENT);
        assert_eq!(rt_limiter_stats(lim, null_mut()), RT_STATUS_NULL_ARGUMENT);
        assert_eq!(rt_limiter_connection_info(lim, 1, null_mut()), RT_STATUS_NULL_ARGUMENT);
        assert_eq!(rt_drain_violations(lim, null_mut(), 5), 0);
        assert_eq!(rt_drain_violations(lim, null_mut(), 0), 0);
        rt_set_violation_callback(lim, None, null_mut());
        let needed = rt_stats_prometheus(lim, null_mut(), 100);
        assert!(needed > 0, "a NULL buffer is a size query");
        assert_eq!(stats(lim).active_connections, 0);
        rt_limiter_free(lim);
    }
}

#[test]
fn ids_null_empty_and_long() {
    let lim = new_limiter(&small());
    let mut conn: rt_conn = 0;
    // SAFETY: every pointer is NULL or valid for its length.
    unsafe {
        // (NULL, 0) is the empty id, the same client as (ptr, 0).
        let d = rt_connect_at(lim, null(), 0, 0, &mut conn);
        assert!(d.allowed, "{d:?}");
        assert_ne!(conn, 0);
        assert_eq!(rt_client_connections(lim, b"x".as_ptr(), 0), 1);
        assert_eq!(rt_client_connections(lim, null(), 0), 1);
        assert!(rt_check_connection(lim, null(), 0).allowed);
        assert!(rt_check_key_at(lim, null(), 0, 10, 0).allowed);
        let mut c2: rt_conn = 0;
        assert_eq!(rt_register_connection(lim, null(), 0, &mut c2), RT_STATUS_OK);
        assert_eq!(rt_client_connections(lim, null(), 0), 2);
        rt_disconnect(lim, c2);

        // (NULL, 5): refused before any byte is read.
        let mut c3: rt_conn = 99;
        let d = rt_connect_at(lim, null(), 5, 0, &mut c3);
        assert!(!d.allowed && d.reason == RT_INVALID_ARGUMENT, "{d:?}");
        assert_eq!(c3, 0);
        let d = rt_check_connection(lim, null(), 5);
        assert!(!d.allowed && d.reason == RT_INVALID_ARGUMENT);
        let d = rt_check_key(lim, null(), 5, 1);
        assert!(!d.allowed && d.reason == RT_INVALID_ARGUMENT);
        assert_eq!(rt_client_connections(lim, null(), 5), 0);
        c3 = 99;
        assert_eq!(rt_register_connection(lim, null(), 5, &mut c3), RT_STATUS_NULL_ARGUMENT);
        assert_eq!(c3, 99);

        // A length no object can have: refused, the pointer is never read.
        let huge = isize::MAX as usize + 1;
        let d = rt_connect(lim, b"a".as_ptr(), huge, &mut c3);
        assert!(!d.allowed && d.reason == RT_INVALID_ARGUMENT);
        assert_eq!(rt_register_connection(lim, b"a".as_ptr(), usize::MAX, &mut c3), RT_STATUS_INVALID_ARGUMENT);
        assert_eq!(rt_client_connections(lim, b"a".as_ptr(), usize::MAX), 0);

        // Embedded NUL: "a\0b" and "a" are different clients.
        assert!(rt_connect_at(lim, b"a\0b".as_ptr(), 3, 0, &mut c3).allowed);
        assert_eq!(rt_client_connections(lim, b"a".as_ptr(), 1), 0);
        assert_eq!(rt_client_connections(lim, b"a\0b".as_ptr(), 3), 1);

        rt_disconnect(lim, conn);
        rt_disconnect(lim, conn);
        assert_eq!(rt_client_connections(lim, null(), 0), 0);
        rt_limiter_free(lim);
    }
}

/// An `rt_limits` from an older header that ends after messages_per_window,
/// with garbage after it.
fn older_limits() -> rt_limits {
    let mut l = small();
    l.messages_per_window = 5;
    l.bytes_per_window = u64::MAX;
    l.max_clients = 0;
    l.flags = 0xFFFF;
    l.reserved = 7;
    l.struct_size = offset_of!(rt_limits, bytes_per_window) as u32;
    l
}

/// The fields an older struct lacks take the defaults, including the
/// default capacities (65536: too slow for Miri).
#[test]
#[cfg_attr(miri, ignore)]
fn older_header_takes_the_defaults() {
    let l = older_limits();
    let lim = new_limiter(&l);
    let s = stats(lim);
    assert_eq!(s.limits.messages_per_window, 5);
    assert_eq!(s.limits.bytes_per_window, 0, "missing fields take the defaults");
    assert_eq!(s.limits.max_clients, 65_536);
    assert_eq!(s.limits.flags, 0);
    // SAFETY: a live limiter, freed once.
    unsafe { rt_limiter_free(lim) };
}

#[test]
fn struct_size_smaller_larger_and_bad() {
    // Smaller: an older header that ends after messages_per_window. The
    // bytes past struct_size hold garbage that must not be read.
    let l = older_limits();
    // SAFETY: valid pointer, struct_size within the struct.
    unsafe {
        assert_eq!(rt_limits_validate(&l), RT_STATUS_OK, "{}", limits_error(&l));
        assert_eq!(rt_region_size(&l), rt_region_size(&defaults()), "default capacities");
    }
    // The smallest accepted: struct_size and window_ms.
    let mut l = small();
    l.window_ms = 1000;
    l.connections_per_window = u32::MAX;
    l.struct_size = 8;
    // SAFETY: valid pointer.
    assert_eq!(unsafe { rt_limits_validate(&l) }, RT_STATUS_OK);
    for bad in [0u32, 4, 7] {
        l.struct_size = bad;
        // SAFETY: valid pointer.
        assert_eq!(unsafe { rt_limits_validate(&l) }, RT_STATUS_INVALID_ARGUMENT);
        assert!(limits_error(&l).contains("struct_size"), "{}", limits_error(&l));
        let mut lim = null_mut();
        // SAFETY: valid pointers.
        assert_eq!(unsafe { rt_limiter_new(&l, &mut lim) }, RT_STATUS_INVALID_ARGUMENT);
        assert!(lim.is_null());
        // SAFETY: valid pointer.
        assert_eq!(unsafe { rt_region_size(&l) }, 0);
    }

    // Larger: a newer header. A zero tail is accepted, a non-zero one is not.
    #[repr(C)]
    struct Newer {
        l: rt_limits,
        extra: [u64; 3],
    }
    let mut n = Newer { l: small(), extra: [0; 3] };
    n.l.struct_size = size_of::<Newer>() as u32;
    let p = &n as *const Newer as *const rt_limits;
    // SAFETY: p points to struct_size readable bytes.
    unsafe {
        assert_eq!(rt_limits_validate(p), RT_STATUS_OK);
        // Not `&*p`: a reference to an rt_limits would cover only its own
        // bytes, and the library reads the whole struct_size.
        let mut lim = null_mut();
        assert_eq!(rt_limiter_new(p, &mut lim), RT_STATUS_OK);
        rt_limiter_free(lim);
    }
    n.extra[2] = 1 << 40;
    let p = &n as *const Newer as *const rt_limits;
    // SAFETY: as above.
    unsafe {
        assert_eq!(rt_limits_validate(p), RT_STATUS_INVALID_ARGUMENT);
        let mut lim = null_mut();
        assert_eq!(rt_limiter_new(p, &mut lim), RT_STATUS_INVALID_ARGUMENT);
        assert!(lim.is_null());
    }
    assert!(limits_error(p).contains("newer header"), "{}", limits_error(p));

    // reserved and unknown flags.
    let l = rt_limits { reserved: 1, ..small() };
    // SAFETY: valid pointer.
    assert_eq!(unsafe { rt_limits_validate(&l) }, RT_STATUS_INVALID_ARGUMENT);
    assert!(limits_error(&l).contains("reserved"));
    let l = rt_limits { flags: RT_FLAG_FAIL_OPEN | RT_FLAG_DRY_RUN | 4, ..small() };
    // SAFETY: valid pointer.
    assert_eq!(unsafe { rt_limits_validate(&l) }, RT_STATUS_INVALID_LIMITS);
    assert!(limits_error(&l).contains("flags"), "{}", limits_error(&l));
    let l = rt_limits { flags: RT_FLAG_FAIL_OPEN | RT_FLAG_DRY_RUN, ..small() };
    // SAFETY: valid pointer.
    assert_eq!(unsafe { rt_limits_validate(&l) }, RT_STATUS_OK);
}

#[test]
fn out_of_range_limits_are_named() {
    let cases = [
        (rt_limits { window_ms: 0, ..small() }, "invalid window_ms: 0 is out of range 1..=4294967295"),
        (rt_limits { messages_per_window: 1 << 18, ..small() }, "invalid messages_per_window"),
        (rt_limits { bytes_per_window: 1 << 26, ..small() }, "invalid bytes_per_window"),
        (rt_limits { max_clients: 0, ..small() }, "invalid max_clients"),
    ];
    for (l, message) in cases {
        // SAFETY: valid pointer.
        assert_eq!(unsafe { rt_limits_validate(&l) }, RT_STATUS_INVALID_LIMITS);
        assert!(limits_error(&l).starts_with(message), "{}", limits_error(&l));
        let mut lim = null_mut();
        // SAFETY: valid pointers.
        assert_eq!(unsafe { rt_limiter_new(&l, &mut lim) }, RT_STATUS_INVALID_LIMITS);
        assert!(lim.is_null());
        // SAFETY: valid pointer.
        assert_eq!(unsafe { rt_region_size(&l) }, 0);
    }
}

#[test]
fn limits_error_truncates_like_snprintf() {
    let l = rt_limits { window_ms: 0, ..small() };
    let full = limits_error(&l);
    let n = full.len();
    let mut buf = [0xAAu8; 8];
    // SAFETY: buf holds 8 bytes; cap never exceeds it.
    unsafe {
        assert_eq!(rt_limits_error(&l, buf.as_mut_ptr().cast(), 0), n);
        assert_eq!(buf, [0xAA; 8], "cap 0 writes nothing");
        assert_eq!(rt_limits_error(&l, null_mut(), 0), n);
        assert_eq!(rt_limits_error(&l, null_mut(), 100), n, "NULL buf is a size query");
        assert_eq!(rt_limits_error(&l, buf.as_mut_ptr().cast(), 1), n);
        assert_eq!(buf[0], 0, "cap 1 writes only the NUL");
        assert_eq!(buf[1], 0xAA);
        assert_eq!(rt_limits_error(&l, buf.as_mut_ptr().cast(), 8), n);
        assert_eq!(&buf[..7], &full.as_bytes()[..7]);
        assert_eq!(buf[7], 0);
    }
    let ok = small();
    let mut one = [0xAAu8; 1];
    // SAFETY: one byte.
    assert_eq!(unsafe { rt_limits_error(&ok, one.as_mut_ptr().cast(), 1) }, 0);
    assert_eq!(one[0], 0);
}

#[test]
fn foreign_and_freed_limiters_are_refused() {
    // Memory that never held a limiter: its magic is wrong.
    let fake = vec![0u64; size_of::<rt_limiter>().div_ceil(8) + 1];
    let lim = fake.as_ptr() as *mut rt_limiter;
    let mut conn = 5;
    // SAFETY: lim points to readable memory of the handle's size.
    unsafe {
        let d = rt_connect(lim, b"a".as_ptr(), 1, &mut conn);
        assert!(!d.allowed && d.reason == RT_INVALID_ARGUMENT);
        assert_eq!(conn, 0);
        assert_eq!(rt_limiter_update_limits(lim, &small()), RT_STATUS_INVALID_ARGUMENT);
        let mut s = empty_stats();
        assert_eq!(rt_limiter_stats(lim, &mut s), RT_STATUS_INVALID_ARGUMENT);
        let mut c = 0;
        assert_eq!(rt_register_connection(lim, b"a".as_ptr(), 1, &mut c), RT_STATUS_INVALID_ARGUMENT);
        rt_limiter_free(lim);
    }
    assert!(fake.iter().all(|&w| w == 0), "a foreign pointer is never written");
}

#[test]
fn connect_message_disconnect() {
    let l = rt_limits { messages_per_window: 2, window_ms: 1000, ..small() };
    let lim = new_limiter(&l);
    let mut conn = 0;
    // SAFETY: valid pointers.
    unsafe {
        assert!(rt_connect_at(lim, b"10.0.0.1".as_ptr(), 8, 0, &mut conn).allowed);
        assert!(rt_check_message_at(lim, conn, 10, 0).allowed);
        assert!(rt_check_message_at(lim, conn, 10, 0).allowed);
        let d = rt_check_message_at(lim, conn, 10, 0);
        assert_eq!((d.allowed, d.reason, d.retry_after_ms, d.limit), (false, RT_MESSAGE_RATE, 1500, 2));
        let d = rt_check_message_at(lim, conn, 1 << 20, 0);
        assert_eq!((d.reason, d.retry_after_ms), (RT_MESSAGE_TOO_LARGE, RT_RETRY_NEVER));
        let d = rt_check_message_at(lim, 0, 1, 0);
        assert_eq!((d.allowed, d.reason), (false, RT_UNKNOWN_CONNECTION));
        let d = rt_check_message(lim, conn ^ (1 << 40), 1);
        assert_eq!((d.allowed, d.reason), (false, RT_UNKNOWN_CONNECTION));

        // SAFETY: rt_connection_info is plain integers.
        let mut info: rt_connection_info = zeroed();
        info.struct_size = size_of::<rt_connection_info>() as u32;
        assert_eq!(rt_limiter_connection_info(lim, conn, &mut info), RT_STATUS_OK);
        assert_eq!(&info.client_id[..8], b"10.0.0.1");
        assert_eq!((info.client_id_len, info.message_count, info.byte_count), (8, 2, 20));
        assert_eq!(info.struct_size as usize, size_of::<rt_connection_info>());
        info.struct_size = 4;
        assert_eq!(rt_limiter_connection_info(lim, conn, &mut info), RT_STATUS_INVALID_ARGUMENT);
        info.struct_size = size_of::<rt_connection_info>() as u32;
        assert_eq!(rt_limiter_connection_info(lim, 0, &mut info), RT_STATUS_UNKNOWN_CONNECTION);

        rt_disconnect(lim, conn);
        rt_disconnect(lim, conn);
        rt_disconnect(lim, 0);
        rt_disconnect(lim, u64::MAX);
        assert_eq!(rt_limiter_connection_info(lim, conn, &mut info), RT_STATUS_UNKNOWN_CONNECTION);
        let d = rt_check_message_at(lim, conn, 1, 0);
        assert_eq!(d.reason, RT_UNKNOWN_CONNECTION);
        assert_eq!(rt_reap_dead(lim), 0);
        rt_limiter_free(lim);
    }
}

#[test]
fn stats_struct_size_rules() {
    let lim = new_limiter(&small());
    // SAFETY: every pointer is valid for the struct_size it carries.
    unsafe {
        let mut s = empty_stats();
        s.struct_size = 4;
        s.active_connections = 77;
        assert_eq!(rt_limiter_stats(lim, &mut s), RT_STATUS_INVALID_ARGUMENT);
        assert_eq!((s.struct_size, s.active_connections), (4, 77), "nothing written");

        // Smaller: an older header that ends before `denied`.
        let mut s = empty_stats();
        s.struct_size = offset_of!(rt_stats, denied) as u32;
        s.denied[0] = 77;
        s.max_clients = 77;
        assert_eq!(rt_limiter_stats(lim, &mut s), RT_STATUS_OK);
        assert_eq!(s.struct_size as usize, offset_of!(rt_stats, denied));
        assert_eq!((s.denied[0], s.max_clients), (77, 77), "nothing past struct_size is written");

        // Larger: a newer header; the tail we do not know is left alone.
        #[repr(C)]
        struct Newer {
            s: rt_stats,
            extra: [u64; 2],
        }
        let mut n = Newer { s: empty_stats(), extra: [0xDEAD, 0xBEEF] };
        n.s.struct_size = size_of::<Newer>() as u32;
        assert_eq!(rt_limiter_stats(lim, &mut n as *mut Newer as *mut rt_stats), RT_STATUS_OK);
        assert_eq!(n.s.struct_size as usize, size_of::<rt_stats>());
        assert_eq!(n.extra, [0xDEAD, 0xBEEF]);
        assert_eq!((n.s.max_clients, n.s.max_connections), (16, 16));
        assert_eq!(n.s.limits, small());
        rt_limiter_free(lim);
    }
}

static CALLS: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn count_violation(v: *const rt_violation, user_data: *mut c_void) {
    CALLS.fetch_add(1, Ordering::Relaxed);
    if !user_data.is_null() {
        // SAFETY: the test passes a pointer to an AtomicUsize and a live record.
        unsafe {
            let seen = &*(user_data as *const AtomicUsize);
            seen.fetch_add((*v).reason as usize, Ordering::Relaxed);
        }
    }
}

#[test]
fn callback_ring_and_prometheus() {
    let l = rt_limits { connections_per_window: 1, ..small() };
    let lim = new_limiter(&l);
    let seen = AtomicUsize::new(0);
    let mut conn = 0;
    // SAFETY: valid pointers; `seen` outlives the limiter.
    unsafe {
        rt_set_violation_callback(lim, Some(count_violation), &seen as *const AtomicUsize as *mut c_void);
        assert!(rt_connect_at(lim, b"c".as_ptr(), 1, 0, &mut conn).allowed);
        let d = rt_connect_at(lim, b"c".as_ptr(), 1, 0, &mut conn);
        assert_eq!((d.allowed, d.reason), (false, RT_CONNECTION_RATE));
        assert_eq!(conn, 0);
        assert_eq!(seen.load(Ordering::Relaxed), RT_CONNECTION_RATE as usize);
        rt_set_violation_callback(lim, None, null_mut());
        let d = rt_connect_at(lim, b"c".as_ptr(), 1, 0, &mut conn);
        assert_eq!(d.reason, RT_CONNECTION_RATE);
        assert_eq!(seen.load(Ordering::Relaxed), RT_CONNECTION_RATE as usize, "removed");

        // SAFETY: rt_violation is plain integers.
        let mut v: [rt_violation; 4] = zeroed();
        assert_eq!(rt_drain_violations(lim, v.as_mut_ptr(), 0), 0);
        assert_eq!(rt_drain_violations(lim, v.as_mut_ptr(), 1), 1);
        assert_eq!(rt_drain_violations(lim, v.as_mut_ptr().add(1), 3), 1);
        assert_eq!(rt_drain_violations(lim, v.as_mut_ptr(), 4), 0);
        assert_eq!((v[0].reason, v[0].client_id_len, v[0].client_id[0], v[0].conn), (RT_CONNECTION_RATE, 1, b'c', 0));
        assert_eq!(v[1].reason, RT_CONNECTION_RATE);

        let s = stats(lim);
        assert_eq!(s.denied[RT_CONNECTION_RATE as usize], 2);
        assert_eq!((s.active_connections, s.unique_clients, s.connections_allowed), (1, 1, 1));

        let needed = rt_stats_prometheus(lim, null_mut(), 0);
        let mut buf = vec![0xAAu8; needed + 1];
        assert_eq!(rt_stats_prometheus(lim, buf.as_mut_ptr().cast(), 1), needed);
        assert_eq!(buf[0], 0);
        assert_eq!(rt_stats_prometheus(lim, buf.as_mut_ptr().cast(), 10), needed);
        assert_eq!(buf[9], 0);
        assert_eq!(rt_stats_prometheus(lim, buf.as_mut_ptr().cast(), buf.len()), needed);
        assert_eq!(buf[needed], 0);
        let text = std::str::from_utf8(&buf[..needed]).unwrap();
        assert!(text.contains("ratethrottle_denied_total{reason=\"connection_rate_exceeded\"} 2"), "{text}");
        rt_limiter_free(lim);
    }
    assert!(CALLS.load(Ordering::Relaxed) >= 1);
}

#[test]
fn caller_memory_init_attach_and_errors() {
    let l = small();
    // SAFETY: valid pointer.
    let size = unsafe { rt_region_size(&l) };
    assert!(size > 0);
    let mem = Aligned::zeroed(size + 64);
    let (mut a, mut b) = (null_mut(), null_mut());
    // SAFETY: mem is valid for size + 64 bytes and outlives both handles.
    unsafe {
        // Zeroed memory is not a region.
        assert_eq!(rt_limiter_attach(mem.mem(), size, &mut b), RT_STATUS_INCOMPATIBLE_REGION);
        assert!(b.is_null());
        assert_eq!(rt_limiter_init_in(mem.mem(), size - 1, &l, &mut a), RT_STATUS_REGION_TOO_SMALL);
        assert_eq!(rt_limiter_init_in(mem.ptr.add(8).cast(), size, &l, &mut a), RT_STATUS_INVALID_ARGUMENT);
        assert!(a.is_null());
        assert_eq!(rt_limiter_init_in(mem.mem(), size, &l, &mut a), RT_STATUS_OK);
        assert_eq!(rt_limiter_attach(mem.mem(), size - 1, &mut b), RT_STATUS_REGION_TOO_SMALL);
        assert_eq!(rt_limiter_attach(mem.ptr.add(8).cast(), size, &mut b), RT_STATUS_INVALID_ARGUMENT);
        assert_eq!(rt_limiter_attach(mem.mem(), size, &mut b), RT_STATUS_OK);
        let mut conn = 0;
        assert!(rt_connect_at(a, b"x".as_ptr(), 1, 0, &mut conn).allowed);
        assert_eq!(rt_client_connections(b, b"x".as_ptr(), 1), 1);
        let newer = rt_limits { max_message_size: 10, ..l };
        assert_eq!(rt_limiter_update_limits(b, &newer), RT_STATUS_OK);
        assert_eq!(rt_check_message_at(a, conn, 11, 0).reason, RT_MESSAGE_TOO_LARGE);
        let capacity = rt_limits { max_clients: 32, ..l };
        assert_eq!(rt_limiter_update_limits(b, &capacity), RT_STATUS_INVALID_ARGUMENT);
        rt_limiter_free(a);
        assert!(rt_check_message_at(b, conn, 5, 0).allowed, "freeing a handle leaves the memory alone");
        rt_limiter_free(b);
    }
    // Garbage is not a region either.
    let junk = Aligned::zeroed(size);
    // SAFETY: junk is valid for size bytes.
    unsafe {
        for i in 0..size {
            *junk.ptr.add(i) = (i as u8).wrapping_mul(31).wrapping_add(7);
        }
        let mut c = null_mut();
        assert_eq!(rt_limiter_attach(junk.mem(), size, &mut c), RT_STATUS_INCOMPATIBLE_REGION);
        assert!(c.is_null());
    }
}

#[test]
fn ranges_in_the_rt_limits_doc_are_the_engines() {
    // The doc comment of rt_limits (and so the header) states these numbers.
    let doc = "update the ranges in the doc comment of rt_limits (src/ffi/limits.rs)";
    assert_eq!(ratethrottle::MAX_MESSAGES_PER_WINDOW, 262_143, "{doc}");
    assert_eq!(ratethrottle::MAX_BYTES_PER_WINDOW, 67_108_863, "{doc}");
    assert_eq!(ratethrottle::MAX_CONNECTIONS_PER_WINDOW, 16_777_215, "{doc}");
    assert_eq!(ratethrottle::MAX_CAPACITY, 8_388_608, "{doc}");
}

/// The `_at` forms of check_connection and update_limits use the caller's clock.
#[test]
fn caller_clock_forms() {
    let mut l = small();
    l.window_ms = 1000;
    l.connections_per_window = 1;
    l.max_concurrent_connections = 0;
    let lim = new_limiter(&l);
    let ip = b"198.51.100.1";
    let mut conn: rt_conn = 0;
    // SAFETY: a live limiter, a readable id, a writable out-param.
    let d = unsafe { rt_connect_at(lim, ip.as_ptr(), ip.len(), 5_000, &mut conn) };
    assert!(d.allowed);
    // SAFETY: as above.
    let d = unsafe { rt_check_connection_at(lim, ip.as_ptr(), ip.len(), 5_100) };
    assert_eq!((d.allowed, d.reason, d.retry_after_ms), (false, Reason::ConnectionRate as u32, 1_900));
    // SAFETY: as above; NULL id with a length is refused.
    let d = unsafe { rt_check_connection_at(lim, null(), 3, 5_100) };
    assert_eq!(d.reason, Reason::InvalidArgument as u32);
    // A new window length placed at the caller's clock starts windows afresh.
    l.window_ms = 500;
    // SAFETY: a live limiter and valid limits.
    assert_eq!(unsafe { rt_limiter_update_limits_at(lim, &l, 5_100) }, RT_STATUS_OK);
    // SAFETY: as above.
    let d = unsafe { rt_check_connection_at(lim, ip.as_ptr(), ip.len(), 5_100) };
    assert!(d.allowed, "{:?}", d.reason);
    // SAFETY: NULL limits.
    assert_eq!(unsafe { rt_limiter_update_limits_at(lim, null(), 0) }, RT_STATUS_NULL_ARGUMENT);
    // SAFETY: freed once.
    unsafe { rt_limiter_free(lim) };
}
