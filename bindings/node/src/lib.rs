//! The N-API addon behind the `ratethrottle` npm package.
//!
//! It translates, it never decides: every decision comes from the engine's
//! [`Limiter`]. `index.js` wraps what this module exports in the public
//! classes; nothing here is meant to be called by users directly.
//!
//! Shape of the boundary, chosen for the message path's cost:
//!
//! - `create(options, sharedPath?)` returns a *handle*: a plain object whose
//!   members are native functions bound to one limiter through N-API's
//!   callback data pointer (no `napi_unwrap` per call). Each function, and
//!   the scratch array below, holds one `Rc` of the limiter's state and drops
//!   it in its finalizer, so the state lives exactly as long as anything in
//!   JS can reach it.
//! - A decision is not returned as a JS object (building one through N-API
//!   costs more than the check itself). The native side writes it into a
//!   `Float64Array` of 16 slots shared with JS (an external `ArrayBuffer`
//!   over the state's own memory) and returns nothing; `index.js` reads the
//!   slots and builds the object with a literal. Slots out: 0 code
//!   (`reason | 256` when allowed), 1 retry_after_ms (`Infinity` for
//!   `RETRY_NEVER`), 2 limit, 3 remaining, 4 current, 5 and 6 the connection
//!   handle's low and high 32 bits (0 when no connection was made).
//! - The message path takes its arguments the same way: `index.js` writes
//!   the handle, the size (and the clock) to slots 8 to 11 and calls
//!   `checkMessage()` with no arguments, which saves three N-API argument
//!   reads per message. Every value is checked again here.
//! - Connection handles cross as two `u32`s (an `rt_conn` is a `u64`, more
//!   than a JS number holds exactly); the engine checks every handle, so a
//!   stale or forged one is answered with `connection_not_found`.
//!
//! Every callback runs on the thread of the N-API environment that created
//! it (N-API's rule), so the state needs no synchronisation of its own: the
//! engine's `Limiter` is itself thread-safe, and `close` can only race
//! nothing. Panics are caught at each callback and thrown as JS errors.

#![deny(unsafe_op_in_unsafe_fn)]

use napi::sys;
use ratethrottle::{Conn, Decision, Limiter, Limits, Opened, Reason, Violation, RETRY_NEVER};
use std::cell::UnsafeCell;
use std::ffi::{c_void, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::ptr;
use std::rc::Rc;

/// Largest integer a JS number holds exactly (`Number.MAX_SAFE_INTEGER`).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// Slots of the scratch array (see the module docs): 0..=6 the decision
/// out, IN_* the message path's arguments in.
const SCRATCH_LEN: usize = 16;
const IN_LO: usize = 8;
const IN_HI: usize = 9;
const IN_SIZE: usize = 10;
const IN_NOW: usize = 11;

/// Ids up to this many bytes are converted on the stack.
const STACK_ID: usize = 256;

/// What one limiter handle owns.
struct State {
    /// `None` after `close()`. In shared mode the limiter owns the mapping
    /// of the file and unmaps it when dropped.
    limiter: UnsafeCell<Option<Limiter>>,
    scratch: UnsafeCell<[f64; SCRATCH_LEN]>,
}

/// An exception to throw instead of returning.
enum Thrown {
    Type(String),
    Range(String),
    Closed,
    Error(String),
    /// A JS exception is already pending (an N-API call threw).
    Pending,
}

type CbResult = Result<sys::napi_value, Thrown>;

/// The arguments of one call.
struct Cx {
    env: sys::napi_env,
    argc: usize,
    argv: [sys::napi_value; 4],
    state: *const State,
}

fn ok(s: sys::napi_status) -> Result<(), Thrown> {
    if s == sys::Status::napi_ok {
        Ok(())
    } else if s == sys::Status::napi_pending_exception {
        Err(Thrown::Pending)
    } else {
        Err(Thrown::Error(format!("N-API call failed (status {s})")))
    }
}

impl Cx {
    fn state(&self) -> &State {
        // SAFETY: the function being called holds an Rc of this state.
        unsafe { &*self.state }
    }

    /// The open limiter, or the "closed" error.
    fn limiter(&self) -> Result<&Limiter, Thrown> {
        // SAFETY: only this thread touches the cell (N-API's threading rule),
        // and no reference into it outlives one callback.
        unsafe { (*self.state().limiter.get()).as_ref() }.ok_or(Thrown::Closed)
    }

    fn arg(&self, i: usize) -> sys::napi_value {
        self.argv[i]
    }

    fn type_of(&self, i: usize) -> Result<sys::napi_valuetype, Thrown> {
        if i >= self.argc {
            return Ok(sys::ValueType::napi_undefined);
        }
        let mut t = 0;
        // SAFETY: a valid env and value of this call.
        ok(unsafe { sys::napi_typeof(self.env, self.arg(i), &mut t) })?;
        Ok(t)
    }

    fn f64(&self, i: usize, what: &str) -> Result<f64, Thrown> {
        let mut v = 0.0;
        // SAFETY: as above; a non-number gives napi_number_expected.
        let s = unsafe { sys::napi_get_value_double(self.env, self.arg(i), &mut v) };
        if s != sys::Status::napi_ok {
            return Err(Thrown::Type(format!("{what} must be a number")));
        }
        Ok(v)
    }

    fn u32(&self, i: usize) -> Result<u32, Thrown> {
        let mut v = 0;
        // SAFETY: as above.
        let s = unsafe { sys::napi_get_value_uint32(self.env, self.arg(i), &mut v) };
        if s != sys::Status::napi_ok {
            return Err(Thrown::Type("connection handle must be a number".into()));
        }
        Ok(v)
    }

    /// A byte count or clock value: a non-negative integer <= 2^53 - 1.
    fn uint(&self, i: usize, what: &str) -> Result<u64, Thrown> {
        let v = self.f64(i, what)?;
        scratch_uint(v, what)
    }

    fn conn(&self, i: usize) -> Result<Option<Conn>, Thrown> {
        let lo = self.u32(i)? as u64;
        let hi = self.u32(i + 1)? as u64;
        Ok(Conn::from_raw(hi << 32 | lo))
    }

    /// A client id or key: a string (its UTF-8 bytes) or a `Uint8Array`
    /// (any bytes). Calls `f` with the bytes; nothing is truncated.
    fn with_id<R>(&self, i: usize, what: &str, f: impl FnOnce(&[u8]) -> R) -> Result<R, Thrown> {
        let env = self.env;
        let v = self.arg(i);
        match self.type_of(i)? {
            sys::ValueType::napi_string => {
                let mut len = 0usize;
                // SAFETY: a NULL buffer asks for the UTF-8 length only.
                ok(unsafe { sys::napi_get_value_string_utf8(env, v, ptr::null_mut(), 0, &mut len) })?;
                let mut stack = [0u8; STACK_ID];
                let mut heap = Vec::new();
                let buf: &mut [u8] = if len < STACK_ID {
                    &mut stack[..len + 1]
                } else {
                    heap.resize(len + 1, 0);
                    &mut heap[..]
                };
                let mut got = 0usize;
                // SAFETY: `buf` has room for `len` bytes and the NUL.
                ok(unsafe { sys::napi_get_value_string_utf8(env, v, buf.as_mut_ptr().cast(), buf.len(), &mut got) })?;
                Ok(f(&buf[..got]))
            }
            sys::ValueType::napi_object => {
                let mut is_ta = false;
                // SAFETY: a valid env and value.
                ok(unsafe { sys::napi_is_typedarray(env, v, &mut is_ta) })?;
                if is_ta {
                    let mut ty = 0;
                    let mut len = 0usize;
                    let mut data: *mut c_void = ptr::null_mut();
                    let mut ab: sys::napi_value = ptr::null_mut();
                    let mut off = 0usize;
                    // SAFETY: out-params are valid locals.
                    ok(unsafe {
                        sys::napi_get_typedarray_info(env, v, &mut ty, &mut len, &mut data, &mut ab, &mut off)
                    })?;
                    if ty == sys::TypedarrayType::uint8_array {
                        if len == 0 && is_detached(env, ab)? {
                            return Err(Thrown::Type(format!("{what} is a Uint8Array over a detached ArrayBuffer")));
                        }
                        let bytes: &[u8] = if len == 0 || data.is_null() {
                            &[]
                        } else {
                            // SAFETY: N-API gives the view's data and length; no JS runs
                            // while the slice is alive, so the buffer cannot change.
                            unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) }
                        };
                        return Ok(f(bytes));
                    }
                }
                Err(Thrown::Type(format!("{what} must be a string, a Buffer or a Uint8Array")))
            }
            _ => Err(Thrown::Type(format!("{what} must be a string, a Buffer or a Uint8Array"))),
        }
    }

    fn scratch(&self) -> &[f64; SCRATCH_LEN] {
        // SAFETY: only this thread touches the scratch; JS does not run
        // while native code does.
        unsafe { &*self.state().scratch.get() }
    }

    /// The message path's arguments from the scratch: handle and size.
    #[inline(always)]
    fn message_args(&self) -> Result<(Option<Conn>, u64), Thrown> {
        let s = self.scratch();
        let (lo, hi) = (s[IN_LO], s[IN_HI]);
        let half = |v: f64| if (0.0..=u32::MAX as f64).contains(&v) { v as i64 as u64 } else { 0 };
        let size = scratch_uint(s[IN_SIZE], "message size")?;
        Ok((Conn::from_raw(half(hi) << 32 | half(lo)), size))
    }

    /// Writes a decision (and a connection handle) to the scratch array.
    #[inline(always)]
    fn put(&self, d: &Decision, conn: Option<Conn>) {
        // SAFETY: only this thread writes the scratch, and JS does not read
        // it while native code runs.
        let s = unsafe { &mut *self.state().scratch.get() };
        // Through i64: one instruction on x86-64, where u64 -> f64 takes
        // several (every value here is below 2^63; counts are far smaller).
        let num = |v: u64| v.min(i64::MAX as u64) as i64 as f64;
        s[0] = ((d.reason as u32) | if d.allowed { 256 } else { 0 }) as f64;
        s[1] = if d.retry_after_ms == RETRY_NEVER { f64::INFINITY } else { num(d.retry_after_ms) };
        s[2] = num(d.limit);
        s[3] = num(d.remaining);
        s[4] = num(d.current);
        let raw = conn.map_or(0, Conn::raw);
        s[5] = num(raw & 0xffff_ffff);
        s[6] = num(raw >> 32);
    }
}

/// A byte count or clock value: a non-negative integer <= 2^53 - 1 (index.js
/// has checked it; this is the boundary's own guard).
#[inline(always)]
fn scratch_uint(v: f64, what: &str) -> Result<u64, Thrown> {
    // NaN fails the range test; the round trip then holds only for
    // integers (and is cheaper than `fract`, a libm call).
    // In range, `as i64` is exact for integers and one instruction.
    if !(0.0..=MAX_SAFE_INTEGER).contains(&v) || (v as i64) as f64 != v {
        return Err(Thrown::Range(format!("{what} must be an integer from 0 to 2^53 - 1, got {}", js_number(v))));
    }
    Ok(v as i64 as u64)
}

/// A number as JS prints it where Rust's `Display` differs (`inf`, `NaN`).
fn js_number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{v}")
    }
}

fn is_detached(env: sys::napi_env, ab: sys::napi_value) -> Result<bool, Thrown> {
    if ab.is_null() {
        return Ok(false);
    }
    let mut d = false;
    // SAFETY: a valid env and ArrayBuffer value.
    ok(unsafe { sys::napi_is_detached_arraybuffer(env, ab, &mut d) })?;
    Ok(d)
}

/// Runs a callback body: reads the arguments, catches panics, throws errors.
///
/// # Safety
/// `env` and `info` are the ones N-API passed to the callback.
#[inline(always)]
unsafe fn run(
    env: sys::napi_env,
    info: sys::napi_callback_info,
    body: impl FnOnce(&Cx) -> CbResult,
) -> sys::napi_value {
    // SAFETY: as this function's contract.
    unsafe { run_with::<4>(env, info, body) }
}

/// [`run`] reading at most `ARGS` arguments (0 for the message path, whose
/// arguments come through the scratch: N-API then fills no argv).
///
/// # Safety
/// As [`run`].
#[inline(always)]
unsafe fn run_with<const ARGS: usize>(
    env: sys::napi_env,
    info: sys::napi_callback_info,
    body: impl FnOnce(&Cx) -> CbResult,
) -> sys::napi_value {
    let mut cx = Cx { env, argc: ARGS, argv: [ptr::null_mut(); 4], state: ptr::null() };
    let mut data: *mut c_void = ptr::null_mut();
    let argv = if ARGS == 0 { ptr::null_mut() } else { cx.argv.as_mut_ptr() };
    // SAFETY: argv has room for ARGS <= 4 values (N-API fills missing ones
    // with undefined), or is NULL when ARGS is 0.
    let s = unsafe { sys::napi_get_cb_info(env, info, &mut cx.argc, argv, ptr::null_mut(), &mut data) };
    if s != sys::Status::napi_ok {
        return ptr::null_mut();
    }
    cx.argc = cx.argc.min(ARGS);
    cx.state = data as *const State;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&cx)));
    let r = match r {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            Err(Thrown::Error(format!("ratethrottle: internal panic: {msg}")))
        }
    };
    match r {
        Ok(v) => v,
        Err(t) => {
            throw(env, t);
            ptr::null_mut()
        }
    }
}

fn throw(env: sys::napi_env, t: Thrown) {
    let cstr = |s: &str| CString::new(s.replace('\0', "\\0")).unwrap_or_default();
    // SAFETY: valid env; the strings outlive the calls.
    unsafe {
        match t {
            Thrown::Type(m) => sys::napi_throw_type_error(env, c"ERR_INVALID_ARG_TYPE".as_ptr(), cstr(&m).as_ptr()),
            Thrown::Range(m) => sys::napi_throw_range_error(env, c"ERR_OUT_OF_RANGE".as_ptr(), cstr(&m).as_ptr()),
            Thrown::Closed => sys::napi_throw_error(
                env,
                c"ERR_RATETHROTTLE_CLOSED".as_ptr(),
                c"ratethrottle: the limiter is closed".as_ptr(),
            ),
            Thrown::Error(m) => sys::napi_throw_error(env, c"ERR_RATETHROTTLE".as_ptr(), cstr(&m).as_ptr()),
            Thrown::Pending => sys::Status::napi_ok,
        };
    }
}

// ---- values -------------------------------------------------------------

fn undefined(env: sys::napi_env) -> CbResult {
    let mut v = ptr::null_mut();
    // SAFETY: valid env and out-param.
    ok(unsafe { sys::napi_get_undefined(env, &mut v) })?;
    Ok(v)
}

fn null(env: sys::napi_env) -> CbResult {
    let mut v = ptr::null_mut();
    // SAFETY: as above.
    ok(unsafe { sys::napi_get_null(env, &mut v) })?;
    Ok(v)
}

fn number(env: sys::napi_env, n: f64) -> CbResult {
    let mut v = ptr::null_mut();
    // SAFETY: as above.
    ok(unsafe { sys::napi_create_double(env, n, &mut v) })?;
    Ok(v)
}

fn boolean(env: sys::napi_env, b: bool) -> CbResult {
    let mut v = ptr::null_mut();
    // SAFETY: as above.
    ok(unsafe { sys::napi_get_boolean(env, b, &mut v) })?;
    Ok(v)
}

fn string(env: sys::napi_env, s: &str) -> CbResult {
    let mut v = ptr::null_mut();
    // SAFETY: ptr and length describe valid UTF-8.
    ok(unsafe { sys::napi_create_string_utf8(env, s.as_ptr().cast(), s.len() as isize, &mut v) })?;
    Ok(v)
}

fn buffer(env: sys::napi_env, b: &[u8]) -> CbResult {
    let mut v = ptr::null_mut();
    let mut data = ptr::null_mut();
    // SAFETY: copies `b.len()` bytes from a valid slice.
    ok(unsafe { sys::napi_create_buffer_copy(env, b.len(), b.as_ptr().cast(), &mut data, &mut v) })?;
    Ok(v)
}

fn object(env: sys::napi_env) -> CbResult {
    let mut v = ptr::null_mut();
    // SAFETY: valid env and out-param.
    ok(unsafe { sys::napi_create_object(env, &mut v) })?;
    Ok(v)
}

fn array(env: sys::napi_env, len: usize) -> CbResult {
    let mut v = ptr::null_mut();
    // SAFETY: as above.
    ok(unsafe { sys::napi_create_array_with_length(env, len, &mut v) })?;
    Ok(v)
}

fn set(env: sys::napi_env, obj: sys::napi_value, key: &str, v: sys::napi_value) -> Result<(), Thrown> {
    let k = CString::new(key).expect("keys have no NUL");
    // SAFETY: valid env, object and value.
    ok(unsafe { sys::napi_set_named_property(env, obj, k.as_ptr(), v) })
}

fn set_num(env: sys::napi_env, obj: sys::napi_value, key: &str, n: u64) -> Result<(), Thrown> {
    set(env, obj, key, number(env, n as f64)?)
}

fn get(env: sys::napi_env, obj: sys::napi_value, key: &str) -> CbResult {
    let k = CString::new(key).expect("keys have no NUL");
    let mut v = ptr::null_mut();
    // SAFETY: valid env and object.
    ok(unsafe { sys::napi_get_named_property(env, obj, k.as_ptr(), &mut v) })?;
    Ok(v)
}

// ---- options ------------------------------------------------------------

/// The option names (camelCase, as in JS) and the engine fields they set.
#[derive(Clone, Copy)]
enum Field {
    U32(fn(&mut Limits) -> &mut u32),
    U64(fn(&mut Limits) -> &mut u64),
    Bool(fn(&mut Limits) -> &mut bool),
}

/// (JS name, engine name, field). Order is `rt_limits`'s.
const FIELDS: [(&str, &str, Field); 12] = [
    ("windowMs", "window_ms", Field::U32(|l| &mut l.window_ms)),
    ("connectionsPerWindow", "connections_per_window", Field::U32(|l| &mut l.connections_per_window)),
    ("maxConcurrentConnections", "max_concurrent_connections", Field::U32(|l| &mut l.max_concurrent_connections)),
    ("messagesPerWindow", "messages_per_window", Field::U32(|l| &mut l.messages_per_window)),
    ("bytesPerWindow", "bytes_per_window", Field::U64(|l| &mut l.bytes_per_window)),
    ("maxMessageSize", "max_message_size", Field::U32(|l| &mut l.max_message_size)),
    ("clientMessagesPerWindow", "client_messages_per_window", Field::U32(|l| &mut l.client_messages_per_window)),
    ("clientBytesPerWindow", "client_bytes_per_window", Field::U64(|l| &mut l.client_bytes_per_window)),
    ("maxClients", "max_clients", Field::U32(|l| &mut l.max_clients)),
    ("maxConnections", "max_connections", Field::U32(|l| &mut l.max_connections)),
    ("failOpen", "fail_open", Field::Bool(|l| &mut l.fail_open)),
    ("dryRun", "dry_run", Field::Bool(|l| &mut l.dry_run)),
];

/// Reads the options object over `base`; undefined options keep `base`'s
/// value. Types and integer ranges are checked here; the engine's
/// `validate` then checks each limit's own range.
fn read_limits(env: sys::napi_env, obj: sys::napi_value, base: Limits) -> Result<Limits, Thrown> {
    let mut l = base;
    for (name, _, field) in FIELDS {
        let v = get(env, obj, name)?;
        let mut t = 0;
        // SAFETY: a valid env and value.
        ok(unsafe { sys::napi_typeof(env, v, &mut t) })?;
        if t == sys::ValueType::napi_undefined {
            continue;
        }
        match field {
            Field::Bool(f) => {
                if t != sys::ValueType::napi_boolean {
                    return Err(Thrown::Type(format!("option {name} must be a boolean")));
                }
                let mut b = false;
                // SAFETY: v is a boolean.
                ok(unsafe { sys::napi_get_value_bool(env, v, &mut b) })?;
                *f(&mut l) = b;
            }
            Field::U32(_) | Field::U64(_) => {
                if t != sys::ValueType::napi_number {
                    return Err(Thrown::Type(format!("option {name} must be a number")));
                }
                let mut n = 0.0;
                // SAFETY: v is a number.
                ok(unsafe { sys::napi_get_value_double(env, v, &mut n) })?;
                let max = if let Field::U32(_) = field { u32::MAX as f64 } else { MAX_SAFE_INTEGER };
                if !(0.0..=max).contains(&n) || (n as u64) as f64 != n {
                    let n = js_number(n);
                    return Err(Thrown::Range(format!("option {name} must be an integer from 0 to {max}, got {n}")));
                }
                match field {
                    Field::U32(f) => *f(&mut l) = n as u32,
                    Field::U64(f) => *f(&mut l) = n as u64,
                    Field::Bool(_) => unreachable!(),
                }
            }
        }
    }
    l.validate().map_err(limits_error)?;
    Ok(l)
}

/// The engine's message with the JS option name instead of the C field name.
fn limits_error(e: ratethrottle::LimitsError) -> Thrown {
    let name = FIELDS.iter().find(|f| f.1 == e.field).map_or(e.field, |f| f.0);
    Thrown::Range(format!("option {name}: {}", e.message))
}

fn engine_error(e: ratethrottle::Error) -> Thrown {
    match e {
        ratethrottle::Error::InvalidLimits(l) => limits_error(l),
        e => Thrown::Error(format!("ratethrottle: {e}")),
    }
}

fn limits_object(env: sys::napi_env, l: &Limits) -> CbResult {
    let o = object(env)?;
    let mut l = *l;
    for (name, _, field) in FIELDS {
        let v = match field {
            Field::U32(f) => number(env, *f(&mut l) as f64)?,
            Field::U64(f) => number(env, *f(&mut l) as f64)?,
            Field::Bool(f) => boolean(env, *f(&mut l))?,
        };
        set(env, o, name, v)?;
    }
    Ok(o)
}

// ---- the bound functions --------------------------------------------------

macro_rules! callback {
    ($name:ident, |$cx:ident| $body:expr) => {
        unsafe extern "C" fn $name(env: sys::napi_env, info: sys::napi_callback_info) -> sys::napi_value {
            let body = |$cx: &Cx| -> CbResult { $body };
            // SAFETY: N-API passes this callback's env and info.
            unsafe { run(env, info, body) }
        }
    };
    // A callback that takes no N-API arguments.
    ($name:ident, no_args |$cx:ident| $body:expr) => {
        unsafe extern "C" fn $name(env: sys::napi_env, info: sys::napi_callback_info) -> sys::napi_value {
            let body = |$cx: &Cx| -> CbResult { $body };
            // SAFETY: N-API passes this callback's env and info.
            unsafe { run_with::<0>(env, info, body) }
        }
    };
}

// connect(id, nowMs?) -> undefined; decision and handle in the scratch.
callback!(cb_connect, |cx| {
    let lim = cx.limiter()?;
    let at = if cx.type_of(1)? == sys::ValueType::napi_undefined { None } else { Some(cx.uint(1, "nowMs")?) };
    let (d, c) = cx.with_id(0, "clientId", |id| match at {
        Some(t) => lim.connect_at(id, t),
        None => lim.connect(id),
    })?;
    cx.put(&d, c);
    Ok(ptr::null_mut())
});

// checkMessage(): the message path. Its arguments come through the scratch
// (slots IN_LO, IN_HI, IN_SIZE), which costs less than reading three N-API
// arguments; index.js writes them just before the call.
callback!(
    cb_check_message,
    no_args | cx | {
        let lim = cx.limiter()?;
        let (conn, size) = cx.message_args()?;
        let d = match conn {
            Some(c) => lim.check_message(c, size),
            None => unknown_connection(),
        };
        cx.put(&d, None);
        Ok(ptr::null_mut())
    }
);

// checkMessageAt(): as checkMessage, with the clock in slot IN_NOW.
callback!(
    cb_check_message_at,
    no_args | cx | {
        let lim = cx.limiter()?;
        let (conn, size) = cx.message_args()?;
        let now = scratch_uint(cx.scratch()[IN_NOW], "nowMs")?;
        let d = match conn {
            Some(c) => lim.check_message_at(c, size, now),
            None => unknown_connection(),
        };
        cx.put(&d, None);
        Ok(ptr::null_mut())
    }
);

/// The engine's answer to handle 0, which `Conn` cannot hold.
fn unknown_connection() -> Decision {
    Decision {
        allowed: false,
        reason: Reason::UnknownConnection,
        retry_after_ms: RETRY_NEVER,
        limit: 0,
        remaining: 0,
        current: 0,
    }
}

// disconnect(lo, hi) -> whether this call closed it.
callback!(cb_disconnect, |cx| {
    // Closing a connection of a closed limiter is a no-op (idempotent).
    let Ok(lim) = cx.limiter() else { return boolean(cx.env, false) };
    let closed = cx.conn(0)?.is_some_and(|c| lim.disconnect(c));
    boolean(cx.env, closed)
});

// checkKey(key, size, nowMs?).
callback!(cb_check_key, |cx| {
    let lim = cx.limiter()?;
    let size = cx.uint(1, "message size")?;
    let at = if cx.type_of(2)? == sys::ValueType::napi_undefined { None } else { Some(cx.uint(2, "nowMs")?) };
    let d = cx.with_id(0, "key", |k| match at {
        Some(t) => lim.check_key_at(k, size, t),
        None => lim.check_key(k, size),
    })?;
    cx.put(&d, None);
    Ok(ptr::null_mut())
});

callback!(cb_client_connections, |cx| {
    let lim = cx.limiter()?;
    let n = cx.with_id(0, "clientId", |id| lim.client_connections(id))?;
    number(cx.env, n as f64)
});

callback!(cb_stats, |cx| {
    let s = cx.limiter()?.stats();
    let env = cx.env;
    let o = object(env)?;
    set_num(env, o, "activeConnections", s.active_connections)?;
    set_num(env, o, "uniqueClients", s.unique_clients)?;
    set_num(env, o, "totalMessages", s.total_messages)?;
    set_num(env, o, "totalBytes", s.total_bytes)?;
    set_num(env, o, "connectionsAllowed", s.connections_allowed)?;
    set_num(env, o, "messagesAllowed", s.messages_allowed)?;
    let denied = object(env)?;
    for r in Reason::ALL.iter().skip(1) {
        set_num(env, denied, r.as_str(), s.denied[*r as usize])?;
    }
    set(env, o, "denied", denied)?;
    set_num(env, o, "trackedClients", s.tracked_clients)?;
    set_num(env, o, "maxClients", s.max_clients)?;
    set_num(env, o, "maxConnections", s.max_connections)?;
    set_num(env, o, "violationsDropped", s.violations_dropped)?;
    set_num(env, o, "dryRunDenied", s.dry_run_denied)?;
    set_num(env, o, "untrackedAllowed", s.untracked_allowed)?;
    set(env, o, "limits", limits_object(env, &s.limits)?)?;
    Ok(o)
});

callback!(cb_connection_info, |cx| {
    let lim = cx.limiter()?;
    let env = cx.env;
    let Some(info) = cx.conn(0)?.and_then(|c| lim.connection_info(c)) else { return null(env) };
    let o = object(env)?;
    set(env, o, "clientId", buffer(env, info.client_id())?)?;
    set_num(env, o, "clientIdLength", info.client_id_len.into())?;
    set_num(env, o, "connectedAtMs", info.connected_at_ms)?;
    set_num(env, o, "lastMessageAtMs", info.last_message_at_ms)?;
    set_num(env, o, "messageCount", info.message_count)?;
    set_num(env, o, "byteCount", info.byte_count)?;
    Ok(o)
});

callback!(cb_prometheus, |cx| string(cx.env, &cx.limiter()?.prometheus()));

// drainViolations(max) -> array of records.
callback!(cb_drain_violations, |cx| {
    let lim = cx.limiter()?;
    let max = (cx.uint(0, "max")? as usize).min(4096);
    let mut out = vec![Violation::empty(); max];
    let n = lim.drain_violations(&mut out);
    let env = cx.env;
    let arr = array(env, n)?;
    for (i, v) in out[..n].iter().enumerate() {
        let o = object(env)?;
        set(env, o, "type", string(env, v.violation_type())?)?;
        set(env, o, "reason", string(env, v.reason.as_str())?)?;
        set(env, o, "clientId", buffer(env, v.client_id())?)?;
        set_num(env, o, "clientIdLength", v.client_id_len.into())?;
        let conn = if v.conn == 0 { null(env)? } else { string(env, &v.conn.to_string())? };
        set(env, o, "connectionId", conn)?;
        set_num(env, o, "limit", v.limit)?;
        set_num(env, o, "current", v.current)?;
        set_num(env, o, "size", v.size)?;
        let retry = if v.retry_after_ms == RETRY_NEVER { f64::INFINITY } else { v.retry_after_ms as f64 };
        set(env, o, "retryAfterMs", number(env, retry)?)?;
        set_num(env, o, "atMs", v.at_ms)?;
        // SAFETY: valid env, array and value.
        ok(unsafe { sys::napi_set_element(env, arr, i as u32, o) })?;
    }
    Ok(arr)
});

callback!(cb_limits, |cx| limits_object(cx.env, &cx.limiter()?.limits()));

// updateLimits(options): the given options over the limits in force.
callback!(cb_update_limits, |cx| {
    let lim = cx.limiter()?;
    if cx.type_of(0)? != sys::ValueType::napi_object {
        return Err(Thrown::Type("options must be an object".into()));
    }
    let now = lim.limits();
    let l = read_limits(cx.env, cx.arg(0), now)?;
    if l.max_clients != now.max_clients || l.max_connections != now.max_connections {
        return Err(Thrown::Range(format!(
            "options maxClients and maxConnections size the tables and cannot change at run time (now {} and {})",
            now.max_clients, now.max_connections
        )));
    }
    lim.update_limits(&l).map_err(engine_error)?;
    undefined(cx.env)
});

callback!(cb_reap_dead, |cx| number(cx.env, cx.limiter()?.reap_dead() as f64));

// close(): drops the limiter (and unmaps shared memory). Idempotent.
callback!(cb_close, |cx| {
    let st = cx.state();
    // SAFETY: only this thread touches the cell, and no reference into it
    // is alive here.
    unsafe { drop((*st.limiter.get()).take()) };
    undefined(cx.env)
});

callback!(cb_closed, |cx| boolean(cx.env, cx.limiter().is_err()));

// isDetached(arrayBuffer) -> bool (Node 20's ArrayBuffer has no `detached`).
callback!(cb_is_detached, |cx| {
    let mut is_ab = false;
    // SAFETY: a valid env and value.
    ok(unsafe { sys::napi_is_arraybuffer(cx.env, cx.arg(0), &mut is_ab) })?;
    boolean(cx.env, is_ab && is_detached(cx.env, cx.arg(0))?)
});

/// The empty N-API call the benchmarks compare against: no arguments read,
/// nothing returned.
unsafe extern "C" fn cb_noop(_env: sys::napi_env, _info: sys::napi_callback_info) -> sys::napi_value {
    ptr::null_mut()
}

// ---- creation -------------------------------------------------------------

unsafe extern "C" fn drop_state(_env: sys::napi_env, _data: *mut c_void, hint: *mut c_void) {
    // SAFETY: `hint` is one Rc::into_raw of a State, released exactly once here.
    drop(unsafe { Rc::from_raw(hint as *const State) });
}

/// A JS function bound to `state`, holding one Rc of it until collected.
fn bound(env: sys::napi_env, name: &str, cb: sys::napi_callback, state: &Rc<State>) -> CbResult {
    let data = Rc::into_raw(state.clone()) as *mut c_void;
    let mut f = ptr::null_mut();
    // SAFETY: valid env; `data` stays valid while the function lives (the
    // finalizer below releases it).
    let s = unsafe { sys::napi_create_function(env, name.as_ptr().cast(), name.len() as isize, cb, data, &mut f) };
    if let Err(e) = ok(s) {
        // SAFETY: the function was not created: release the Rc now.
        drop(unsafe { Rc::from_raw(data as *const State) });
        return Err(e);
    }
    // SAFETY: `f` is a live object; on failure the Rc is released below.
    let s = unsafe { sys::napi_add_finalizer(env, f, data, Some(drop_state), data, ptr::null_mut()) };
    if let Err(e) = ok(s) {
        // SAFETY: as above.
        drop(unsafe { Rc::from_raw(data as *const State) });
        return Err(e);
    }
    Ok(f)
}

/// The decision scratch as a `Float64Array` over the state's own memory.
fn scratch_array(env: sys::napi_env, state: &Rc<State>) -> CbResult {
    let hint = Rc::into_raw(state.clone()) as *mut c_void;
    let mut ab = ptr::null_mut();
    // SAFETY: the memory lives in the Rc allocation, which the buffer's
    // finalizer keeps alive (it releases `hint`).
    let s = unsafe {
        sys::napi_create_external_arraybuffer(
            env,
            state.scratch.get().cast(),
            SCRATCH_LEN * 8,
            Some(drop_state),
            hint,
            &mut ab,
        )
    };
    if let Err(e) = ok(s) {
        // SAFETY: the buffer was not created: release the Rc now.
        drop(unsafe { Rc::from_raw(hint as *const State) });
        return Err(e);
    }
    let mut ta = ptr::null_mut();
    // SAFETY: a valid env and ArrayBuffer of SCRATCH_LEN doubles.
    ok(unsafe { sys::napi_create_typedarray(env, sys::TypedarrayType::float64_array, SCRATCH_LEN, ab, 0, &mut ta) })?;
    Ok(ta)
}

/// Creates or attaches the region in the file at `path` (the engine's
/// `Limiter::open_file`: flock, create or attach, reap dead processes on
/// attach). Returns the limiter and whether it attached to an existing
/// region; then the region's limits apply, and its capacities must be the
/// ones `limits` asks for (every process must agree on the table sizes).
fn open_shared(path: &[u8], limits: &Limits) -> Result<(Limiter, bool), Thrown> {
    let shown = String::from_utf8_lossy(path);
    let (lim, how) = Limiter::open_file(OsStr::from_bytes(path), Some(limits)).map_err(|e| match e {
        // Io names the path, the failed step and the OS error.
        e @ (ratethrottle::Error::InvalidLimits(_) | ratethrottle::Error::Io { .. }) => engine_error(e),
        e @ (ratethrottle::Error::IncompatibleRegion(_) | ratethrottle::Error::RegionTooSmall { .. }) => Thrown::Error(
            format!("ratethrottle: cannot use the region in {shown}: {e} (a process may have died while formatting it: remove the file)"),
        ),
        // A NUL byte in the path (shown escaped), a size too large.
        e => Thrown::Error(format!("ratethrottle: sharedPath {shown:?}: {e}")),
    })?;
    if how == Opened::Created {
        return Ok((lim, false));
    }
    let have = lim.limits();
    if (have.max_clients, have.max_connections) != (limits.max_clients, limits.max_connections) {
        let size = |l: &Limits| Limiter::region_size(l).map_or_else(|e| e.to_string(), |n| n.to_string());
        return Err(Thrown::Error(format!(
            "ratethrottle: {shown} holds a region of {} bytes but these options need {}: it was made for \
             maxClients {} and maxConnections {}, these options ask for {} and {}; every process must pass the \
             same maxClients and maxConnections (or remove the file)",
            size(&have),
            size(limits),
            have.max_clients,
            have.max_connections,
            limits.max_clients,
            limits.max_connections
        )));
    }
    Ok((lim, true))
}

// create(options, sharedPath?) -> handle.
unsafe extern "C" fn cb_create(env: sys::napi_env, info: sys::napi_callback_info) -> sys::napi_value {
    // SAFETY: N-API passes this callback's env and info.
    unsafe { run(env, info, create) }
}

fn create(cx: &Cx) -> CbResult {
    let env = cx.env;
    if cx.type_of(0)? != sys::ValueType::napi_object {
        return Err(Thrown::Type("options must be an object".into()));
    }
    let limits = read_limits(env, cx.arg(0), Limits::default())?;
    let (limiter, attached) = match cx.type_of(1)? {
        sys::ValueType::napi_undefined | sys::ValueType::napi_null => {
            (Limiter::new(&limits).map_err(engine_error)?, false)
        }
        sys::ValueType::napi_string => {
            let path = cx.with_id(1, "sharedPath", |p| p.to_vec())?;
            open_shared(&path, &limits)?
        }
        _ => return Err(Thrown::Type("sharedPath must be a string".into())),
    };
    let state =
        Rc::new(State { limiter: UnsafeCell::new(Some(limiter)), scratch: UnsafeCell::new([0.0; SCRATCH_LEN]) });
    let h = object(env)?;
    let fns: [(&str, unsafe extern "C" fn(sys::napi_env, sys::napi_callback_info) -> sys::napi_value); 15] = [
        ("connect", cb_connect),
        ("checkMessage", cb_check_message),
        ("checkMessageAt", cb_check_message_at),
        ("disconnect", cb_disconnect),
        ("checkKey", cb_check_key),
        ("clientConnections", cb_client_connections),
        ("stats", cb_stats),
        ("connectionInfo", cb_connection_info),
        ("prometheus", cb_prometheus),
        ("drainViolations", cb_drain_violations),
        ("limits", cb_limits),
        ("updateLimits", cb_update_limits),
        ("reapDead", cb_reap_dead),
        ("close", cb_close),
        ("closed", cb_closed),
    ];
    for (name, f) in fns {
        set(env, h, name, bound(env, name, Some(f), &state)?)?;
    }
    set(env, h, "scratch", scratch_array(env, &state)?)?;
    set(env, h, "attached", boolean(env, attached)?)?;
    Ok(h)
}

// ---- module-level functions ----------------------------------------------

fn reasons(env: sys::napi_env, name: fn(Reason) -> &'static str) -> CbResult {
    let arr = array(env, Reason::ALL.len())?;
    for (i, r) in Reason::ALL.iter().enumerate() {
        // SAFETY: valid env, array and value.
        ok(unsafe { sys::napi_set_element(env, arr, i as u32, string(env, name(*r))?) })?;
    }
    Ok(arr)
}

fn module(env: sys::napi_env, exports: sys::napi_value) -> Result<(), Thrown> {
    let plain = |name: &str, cb: sys::napi_callback| -> CbResult {
        let mut f = ptr::null_mut();
        // SAFETY: valid env; no callback data.
        ok(unsafe {
            sys::napi_create_function(env, name.as_ptr().cast(), name.len() as isize, cb, ptr::null_mut(), &mut f)
        })?;
        Ok(f)
    };
    set(env, exports, "create", plain("create", Some(cb_create))?)?;
    set(env, exports, "isDetached", plain("isDetached", Some(cb_is_detached))?)?;
    set(env, exports, "noop", plain("noop", Some(cb_noop))?)?;
    set(env, exports, "version", string(env, ratethrottle::VERSION)?)?;
    set(env, exports, "reasons", reasons(env, Reason::as_str)?)?;
    set(env, exports, "violationTypes", reasons(env, Reason::violation_type)?)?;
    set(env, exports, "atomicsLockFree", boolean(env, ratethrottle::atomics_are_lock_free())?)?;
    set(env, exports, "clockResolutionMs", number(env, ratethrottle::clock::resolution_ms() as f64)?)?;
    let presets = object(env)?;
    set(env, presets, "default", limits_object(env, &Limits::default())?)?;
    set(env, presets, "strict", limits_object(env, &Limits::strict())?)?;
    set(env, presets, "moderate", limits_object(env, &Limits::moderate())?)?;
    set(env, presets, "generous", limits_object(env, &Limits::generous())?)?;
    set(env, exports, "presets", presets)?;
    Ok(())
}

#[napi_derive::napi(module_exports)]
pub fn init(env: napi::Env, exports: napi::bindgen_prelude::Object) -> napi::Result<()> {
    use napi::JsValue;
    match module(env.raw(), exports.raw()) {
        Ok(()) => Ok(()),
        Err(Thrown::Type(m) | Thrown::Range(m) | Thrown::Error(m)) => Err(napi::Error::from_reason(m)),
        Err(_) => Err(napi::Error::from_reason("ratethrottle: module init failed")),
    }
}
