//! `ratethrottle._engine`: the engine's Rust API as a Python extension module.
//!
//! This module only translates: Python ints and strings to the engine's
//! `u64` sizes and byte-string ids, decisions back to tuples. Every decision
//! is the engine's. Input rules (pinned by the package's tests):
//! - sizes are `int` (not `bool`): anything else is `TypeError`, a negative
//!   one `ValueError`, one above 2**64-1 `OverflowError`;
//! - ids are `str` (its UTF-8 bytes; a lone surrogate is `ValueError`) or
//!   `bytes`/`bytearray` (as they are); anything else is `TypeError`.
//!
//! The GIL is held during a check: a check takes tens of nanoseconds, less
//! than releasing and taking the GIL back would cost.

use pyo3::exceptions::{PyOSError, PyOverflowError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyInt, PyString, PyTuple};
use ratethrottle::{Conn, Decision, Error, Limiter, Limits, Opened, Reason, Violation, REASON_COUNT, RETRY_NEVER};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// A decision as `(allowed, reason_code, retry_after_ms, limit, remaining, current)`,
/// or `None` for a plain allow (the hot path allocates no tuple).
type DecisionTuple = Option<(bool, u32, u64, u64, u64, u64)>;

fn decision_tuple(d: Decision) -> DecisionTuple {
    if d.allowed && d.reason == Reason::Ok {
        None
    } else {
        Some((d.allowed, d.reason as u32, d.retry_after_ms, d.limit, d.remaining, d.current))
    }
}

fn full_tuple(d: Decision) -> (bool, u32, u64, u64, u64, u64) {
    (d.allowed, d.reason as u32, d.retry_after_ms, d.limit, d.remaining, d.current)
}

/// A size argument: an `int` in 0..=2**64-1, never a `bool` or a float.
fn size_arg(v: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
    if !v.is_instance_of::<PyInt>() || v.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be an int (bytes), not {}",
            v.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
        )));
    }
    match v.extract::<u64>() {
        Ok(n) => Ok(n),
        Err(_) => {
            if v.lt(0)? {
                Err(PyValueError::new_err(format!("{what} must be >= 0, got {v}")))
            } else {
                Err(PyOverflowError::new_err(format!("{what} must be <= 2**64-1, got {v}")))
            }
        }
    }
}

/// An id argument: `str` as UTF-8, `bytes`/`bytearray` as they are.
fn id_arg<'a>(v: &'a Bound<'_, PyAny>, what: &str) -> PyResult<Cow<'a, [u8]>> {
    if let Ok(s) = v.downcast::<PyString>() {
        return match s.to_str() {
            Ok(s) => Ok(Cow::Borrowed(s.as_bytes())),
            Err(_) => Err(PyValueError::new_err(format!(
                "{what} is not encodable as UTF-8 (it holds a lone surrogate); pass bytes instead"
            ))),
        };
    }
    if let Ok(b) = v.downcast::<PyBytes>() {
        return Ok(Cow::Borrowed(b.as_bytes()));
    }
    if let Ok(b) = v.downcast::<PyByteArray>() {
        return Ok(Cow::Owned(b.to_vec()));
    }
    Err(PyTypeError::new_err(format!(
        "{what} must be str or bytes, not {}",
        v.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
    )))
}

fn conn_of(handle: u64) -> Option<Conn> {
    Conn::from_raw(handle)
}

fn violation_tuple<'py>(py: Python<'py>, v: &Violation) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(
        py,
        [
            v.violation_type().into_pyobject(py)?.into_any(),
            PyBytes::new(py, v.client_id()).into_any(),
            v.client_id_len.into_pyobject(py)?.into_any(),
            v.conn.into_pyobject(py)?.into_any(),
            v.limit.into_pyobject(py)?.into_any(),
            v.current.into_pyobject(py)?.into_any(),
            v.size.into_pyobject(py)?.into_any(),
            v.retry_after_ms.into_pyobject(py)?.into_any(),
            v.at_ms.into_pyobject(py)?.into_any(),
            (v.reason as u32).into_pyobject(py)?.into_any(),
        ],
    )
}

fn limits_dict<'py>(py: Python<'py>, l: &Limits) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("window_ms", l.window_ms)?;
    d.set_item("connections_per_window", l.connections_per_window)?;
    d.set_item("max_concurrent_connections", l.max_concurrent_connections)?;
    d.set_item("messages_per_window", l.messages_per_window)?;
    d.set_item("bytes_per_window", l.bytes_per_window)?;
    d.set_item("max_message_size", l.max_message_size)?;
    d.set_item("client_messages_per_window", l.client_messages_per_window)?;
    d.set_item("client_bytes_per_window", l.client_bytes_per_window)?;
    d.set_item("max_clients", l.max_clients)?;
    d.set_item("max_connections", l.max_connections)?;
    d.set_item("fail_open", l.fail_open)?;
    d.set_item("dry_run", l.dry_run)?;
    Ok(d)
}

/// A path argument: `str`, `bytes` or `os.PathLike` (through `os.fspath`);
/// returns the path and what `os.fspath` gave (kept for `Engine.path`).
fn path_arg<'py>(v: &Bound<'py, PyAny>) -> PyResult<(PathBuf, Bound<'py, PyAny>)> {
    let py = v.py();
    if !(v.is_instance_of::<PyString>() || v.is_instance_of::<PyBytes>() || v.hasattr("__fspath__")?) {
        return Err(PyTypeError::new_err(format!(
            "path must be str, bytes or os.PathLike, not {}",
            v.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
        )));
    }
    let p = py.import("os")?.call_method1("fspath", (v,))?;
    let path = if let Ok(b) = p.downcast::<PyBytes>() {
        PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b.as_bytes()))
    } else {
        p.extract::<PathBuf>()?
    };
    Ok((path, p))
}

/// An engine error of `Limiter::open_file` as a Python exception naming the
/// file: `OSError` (its errno subclass: FileNotFoundError, IsADirectoryError,
/// PermissionError, ...) for a failed system call, `ValueError` for invalid
/// limits and for a file that holds no usable region.
fn open_error(e: Error, path: &Path, shown: &Bound<'_, PyAny>) -> PyErr {
    match e {
        Error::Io { what, errno, .. } => {
            let text = std::io::Error::from_raw_os_error(errno).to_string();
            let text = text.split(" (os error").next().unwrap_or(&text).to_string();
            PyOSError::new_err((errno, format!("{what}: {text}"), shown.clone().unbind()))
        }
        Error::InvalidLimits(_) => PyValueError::new_err(e.to_string()),
        Error::IncompatibleRegion(_) | Error::RegionTooSmall { .. } => {
            PyValueError::new_err(format!("cannot use {} as a ratethrottle region: {e}", path.display()))
        }
        Error::InvalidArgument(_) => PyValueError::new_err(format!("{e} (path {path:?})")),
        _ => PyRuntimeError::new_err(format!("{}: {e}", path.display())),
    }
}

/// One engine limiter: its region on the heap (`Engine(...)`), or in a
/// shared file (`Engine(..., path=...)`). Thread-safe.
#[pyclass(frozen, module = "ratethrottle._engine")]
struct Engine {
    lim: Limiter,
    /// `None` on the heap; "created" or "attached" over a file.
    opened: Option<&'static str>,
    /// The file's path as `os.fspath` gave it, or `None`.
    path: Option<Py<PyAny>>,
}

#[pymethods]
impl Engine {
    /// Creates a limiter; a limit out of range raises ValueError naming the
    /// engine field and its allowed range.
    ///
    /// Without `path` the region lives on the heap. With `path` (`str`,
    /// `bytes` or `os.PathLike`; use tmpfs such as `/dev/shm`) it lives in
    /// that file, so every process of the host that opens the same path
    /// enforces one set of limits (the engine's `Limiter::open_file`): a
    /// missing or empty file is created (mode 0600) and formatted with the
    /// limits given (`opened == "created"`); a file that already holds a
    /// region is attached (`opened == "attached"`) and the FILE's limits
    /// apply (`limits()` shows them), the ones given are only validated.
    /// With `attach_only=True` the file must already hold a region. An
    /// attach frees the connections of processes that died. The file stays
    /// when the engine is freed: remove it when no process uses it.
    ///
    /// Errors with a path: `TypeError` for a path of another type; `OSError`
    /// with the errno (FileNotFoundError, IsADirectoryError,
    /// PermissionError, ...) naming the path when a system call fails;
    /// `ValueError` for invalid limits (the file is not touched) and for a
    /// file that holds no usable region (it is left as it was). The GIL is
    /// released while the file lock is awaited.
    #[new]
    #[pyo3(signature = (
        window_ms = 60_000, connections_per_window = 60, max_concurrent_connections = 10,
        messages_per_window = 1000, bytes_per_window = 0, max_message_size = 65_536,
        client_messages_per_window = 0, client_bytes_per_window = 0,
        max_clients = 65_536, max_connections = 65_536, fail_open = false, dry_run = false,
        *, path = None, attach_only = false
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        window_ms: u32,
        connections_per_window: u32,
        max_concurrent_connections: u32,
        messages_per_window: u32,
        bytes_per_window: u64,
        max_message_size: u32,
        client_messages_per_window: u32,
        client_bytes_per_window: u64,
        max_clients: u32,
        max_connections: u32,
        fail_open: bool,
        dry_run: bool,
        path: Option<&Bound<'_, PyAny>>,
        attach_only: bool,
    ) -> PyResult<Engine> {
        let shared = path.map(path_arg).transpose()?;
        let limits = Limits {
            window_ms,
            connections_per_window,
            max_concurrent_connections,
            messages_per_window,
            bytes_per_window,
            max_message_size,
            client_messages_per_window,
            client_bytes_per_window,
            max_clients,
            max_connections,
            fail_open,
            dry_run,
        };
        // Refused before any file is touched.
        limits.validate().map_err(|e| PyValueError::new_err(e.to_string()))?;
        let Some((pathbuf, shown)) = shared else {
            if attach_only {
                return Err(PyValueError::new_err("attach_only=True needs a path"));
            }
            let lim = Limiter::new(&limits).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
            return Ok(Engine { lim, opened: None, path: None });
        };
        let given = (!attach_only).then_some(limits);
        let opened = {
            let p = pathbuf.clone();
            py.allow_threads(move || Limiter::open_file(&p, given.as_ref()))
        };
        let (lim, how) = opened.map_err(|e| open_error(e, &pathbuf, &shown))?;
        let opened = match how {
            Opened::Created => "created",
            Opened::Attached => "attached",
        };
        Ok(Engine { lim, opened: Some(opened), path: Some(shown.unbind()) })
    }

    /// How this engine got its region: `None` (on the heap, `Engine(...)`),
    /// `"created"` (this call formatted the file with its limits) or
    /// `"attached"` (the file already held a region: its limits apply).
    #[getter]
    fn opened(&self) -> Option<&'static str> {
        self.opened
    }

    /// The shared file's path (as `os.fspath` gave it), or `None`.
    #[getter]
    fn path(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.path.as_ref().map(|p| p.clone_ref(py))
    }

    /// Frees the connections whose owning process no longer exists (the
    /// engine's `reap_dead`); returns how many. An attach already does it.
    fn reap_dead(&self) -> usize {
        self.lim.reap_dead()
    }

    /// Atomic check + register: `(allowed, reason, retry_after_ms, limit,
    /// remaining, current, handle)`; handle is 0 when denied.
    fn connect(&self, client: &Bound<'_, PyAny>) -> PyResult<(bool, u32, u64, u64, u64, u64, u64)> {
        let id = id_arg(client, "client_id")?;
        let (d, c) = self.lim.connect(&id);
        Ok((d.allowed, d.reason as u32, d.retry_after_ms, d.limit, d.remaining, d.current, c.map_or(0, Conn::raw)))
    }

    /// `connect` at the caller's clock (ms).
    fn connect_at(&self, client: &Bound<'_, PyAny>, now_ms: u64) -> PyResult<(bool, u32, u64, u64, u64, u64, u64)> {
        let id = id_arg(client, "client_id")?;
        let (d, c) = self.lim.connect_at(&id, now_ms);
        Ok((d.allowed, d.reason as u32, d.retry_after_ms, d.limit, d.remaining, d.current, c.map_or(0, Conn::raw)))
    }

    /// Closes a connection; idempotent. Returns whether this call closed it.
    fn disconnect(&self, handle: u64) -> bool {
        conn_of(handle).is_some_and(|c| self.lim.disconnect(c))
    }

    /// The seed's check (racy by design, see the engine docs): a decision tuple.
    fn check_connection(&self, client: &Bound<'_, PyAny>) -> PyResult<(bool, u32, u64, u64, u64, u64)> {
        let id = id_arg(client, "client_id")?;
        Ok(full_tuple(self.lim.check_connection(&id)))
    }

    fn check_connection_at(&self, client: &Bound<'_, PyAny>, now_ms: u64) -> PyResult<(bool, u32, u64, u64, u64, u64)> {
        let id = id_arg(client, "client_id")?;
        Ok(full_tuple(self.lim.check_connection_at(&id, now_ms)))
    }

    /// `check_connection` reduced to its `allowed` (the seed's bool; no tuple).
    fn allows_connection(&self, client: &Bound<'_, PyAny>) -> PyResult<bool> {
        let id = id_arg(client, "client_id")?;
        Ok(self.lim.check_connection(&id).allowed)
    }

    fn allows_connection_at(&self, client: &Bound<'_, PyAny>, now_ms: u64) -> PyResult<bool> {
        let id = id_arg(client, "client_id")?;
        Ok(self.lim.check_connection_at(&id, now_ms).allowed)
    }

    /// The seed's register: counts a connection without checking; returns the handle.
    fn register_connection(&self, client: &Bound<'_, PyAny>) -> PyResult<u64> {
        let id = id_arg(client, "client_id")?;
        self.lim.register_connection(&id).map(Conn::raw).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    fn register_connection_at(&self, client: &Bound<'_, PyAny>, now_ms: u64) -> PyResult<u64> {
        let id = id_arg(client, "client_id")?;
        self.lim.register_connection_at(&id, now_ms).map(Conn::raw).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// Live connections of a client.
    fn client_connections(&self, client: &Bound<'_, PyAny>) -> PyResult<u32> {
        let id = id_arg(client, "client_id")?;
        Ok(self.lim.client_connections(&id))
    }

    /// Checks one message; `None` for a plain allow, else a decision tuple.
    /// Handle 0 (or any stale handle) is answered as unknown by the engine.
    fn check_message(&self, handle: u64, size: &Bound<'_, PyAny>) -> PyResult<DecisionTuple> {
        let size = size_arg(size, "message_size")?;
        Ok(decision_tuple(match conn_of(handle) {
            Some(c) => self.lim.check_message(c, size),
            None => unknown(&self.lim, size),
        }))
    }

    fn check_message_at(&self, handle: u64, size: &Bound<'_, PyAny>, now_ms: u64) -> PyResult<DecisionTuple> {
        let size = size_arg(size, "message_size")?;
        Ok(decision_tuple(match conn_of(handle) {
            Some(c) => self.lim.check_message_at(c, size, now_ms),
            None => unknown(&self.lim, size),
        }))
    }

    /// Checks one message of a key (room, channel, user) against the
    /// per-key limits; `None` for a plain allow, else a decision tuple.
    fn check_key(&self, key: &Bound<'_, PyAny>, size: &Bound<'_, PyAny>) -> PyResult<DecisionTuple> {
        let id = id_arg(key, "key")?;
        let size = size_arg(size, "message_size")?;
        Ok(decision_tuple(self.lim.check_key(&id, size)))
    }

    fn check_key_at(&self, key: &Bound<'_, PyAny>, size: &Bound<'_, PyAny>, now_ms: u64) -> PyResult<DecisionTuple> {
        let id = id_arg(key, "key")?;
        let size = size_arg(size, "message_size")?;
        Ok(decision_tuple(self.lim.check_key_at(&id, size, now_ms)))
    }

    /// `(client_id_prefix, client_id_len, connected_at_ms, last_message_at_ms,
    /// message_count, byte_count)` or `None` when the handle is not live.
    fn connection_info<'py>(&self, py: Python<'py>, handle: u64) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let Some(i) = conn_of(handle).and_then(|c| self.lim.connection_info(c)) else {
            return Ok(None);
        };
        Ok(Some(PyTuple::new(
            py,
            [
                PyBytes::new(py, i.client_id()).into_any(),
                i.client_id_len.into_pyobject(py)?.into_any(),
                i.connected_at_ms.into_pyobject(py)?.into_any(),
                i.last_message_at_ms.into_pyobject(py)?.into_any(),
                i.message_count.into_pyobject(py)?.into_any(),
                i.byte_count.into_pyobject(py)?.into_any(),
            ],
        )?))
    }

    /// The engine's statistics as a dict (`denied` keyed by reason string).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.lim.stats();
        let d = PyDict::new(py);
        d.set_item("active_connections", s.active_connections)?;
        d.set_item("unique_clients", s.unique_clients)?;
        d.set_item("total_messages", s.total_messages)?;
        d.set_item("total_bytes", s.total_bytes)?;
        d.set_item("connections_allowed", s.connections_allowed)?;
        d.set_item("messages_allowed", s.messages_allowed)?;
        let denied = PyDict::new(py);
        for r in Reason::ALL.iter().skip(1) {
            denied.set_item(r.as_str(), s.denied[*r as usize])?;
        }
        d.set_item("denied", denied)?;
        d.set_item("tracked_clients", s.tracked_clients)?;
        d.set_item("max_clients", s.max_clients)?;
        d.set_item("max_connections", s.max_connections)?;
        d.set_item("violations_dropped", s.violations_dropped)?;
        d.set_item("dry_run_denied", s.dry_run_denied)?;
        d.set_item("untracked_allowed", s.untracked_allowed)?;
        d.set_item("limits", limits_dict(py, &s.limits)?)?;
        Ok(d)
    }

    /// The limits in force, as a dict of the engine's field names.
    fn limits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        limits_dict(py, &self.lim.limits())
    }

    /// The statistics in Prometheus text format.
    fn prometheus(&self) -> String {
        self.lim.prometheus()
    }

    /// Sets (or with None removes) the violation callback. It runs
    /// synchronously inside the check that denied, with one tuple:
    /// `(type, client_id_prefix, client_id_len, conn, limit, current, size,
    /// retry_after_ms, at_ms, reason_code)`. An exception it raises is
    /// reported through `sys.unraisablehook`, never lost silently.
    fn set_violation_callback(&self, callback: Option<Py<PyAny>>) {
        match callback {
            None => self.lim.set_violation_callback(None),
            Some(cb) => self.lim.set_violation_callback(Some(Box::new(move |v: &Violation| {
                Python::with_gil(|py| {
                    let r = violation_tuple(py, v).and_then(|t| cb.call1(py, (t,)));
                    if let Err(e) = r {
                        e.write_unraisable(py, Some(cb.bind(py)));
                    }
                })
            }))),
        }
    }

    /// Moves up to `max` violations out of the engine's ring (same tuples as
    /// the callback).
    #[pyo3(signature = (max = 1024))]
    fn drain_violations<'py>(&self, py: Python<'py>, max: usize) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let mut out = vec![Violation::default(); max.min(1 << 16)];
        let n = self.lim.drain_violations(&mut out);
        out[..n].iter().map(|v| violation_tuple(py, v)).collect()
    }

    /// An empty native method: measures the binding's per-call cost.
    fn noop(&self) {}
}

/// The engine's answer for an unknown handle (handle 0 never exists), so the
/// denial is counted in the engine's statistics like any other.
fn unknown(lim: &Limiter, size: u64) -> Decision {
    // u64::MAX names slot index 2**32-2, past any slab (capacity <= 2**23).
    lim.check_message(Conn::from_raw(u64::MAX).expect("non-zero"), size)
}

/// The engine's monotonic clock in ms (the clock plain checks read).
#[pyfunction]
fn now_ms() -> u64 {
    ratethrottle::clock::now_ms()
}

/// Limits of a named engine preset (`default`, `strict`, `moderate`, `generous`).
#[pyfunction]
fn preset<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
    let l = match name {
        "default" => Limits::default(),
        "strict" => Limits::strict(),
        "moderate" => Limits::moderate(),
        "generous" => Limits::generous(),
        _ => return Err(PyValueError::new_err(format!("unknown preset {name:?}"))),
    };
    limits_dict(py, &l)
}

/// A module-level empty function (the cheapest native call, for the benchmark).
#[pyfunction]
fn noop() {}

#[pymodule]
fn _engine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add_function(wrap_pyfunction!(now_ms, m)?)?;
    m.add_function(wrap_pyfunction!(preset, m)?)?;
    m.add_function(wrap_pyfunction!(noop, m)?)?;
    let reasons: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    let types: Vec<&str> = Reason::ALL.iter().map(|r| r.violation_type()).collect();
    debug_assert_eq!(reasons.len(), REASON_COUNT);
    m.add("REASONS", PyTuple::new(m.py(), reasons)?)?;
    m.add("VIOLATION_TYPES", PyTuple::new(m.py(), types)?)?;
    m.add("RETRY_NEVER", RETRY_NEVER)?;
    m.add("VERSION", ratethrottle::VERSION)?;
    m.add("CLOCK_RESOLUTION_MS", ratethrottle::clock::resolution_ms())?;
    Ok(())
}
