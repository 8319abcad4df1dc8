//! ratethrottle: a lock-free WebSocket rate-limiting engine.
//!
//! One [`Limiter`] enforces, per client (any byte string: an IP, a user id,
//! a room) and per connection:
//!
//! | limit | scope | reason when exceeded |
//! |---|---|---|
//! | new connections per window | client | [`Reason::ConnectionRate`] |
//! | live connections | client | [`Reason::ConcurrentConnections`] |
//! | message size | message | [`Reason::MessageTooLarge`] |
//! | messages per window | connection | [`Reason::MessageRate`] |
//! | bytes per window | connection | [`Reason::Bandwidth`] |
//! | messages / bytes per window | client or key | [`Reason::ClientMessageRate`] / [`Reason::ClientBandwidth`] |
//!
//! with sliding-window counters whose arithmetic is exact and integer, in one
//! flat region of atomics that can live on the heap, in caller memory, or in
//! shared memory used by several processes. The hot path (connect for a known
//! client, `check_message`, `check_key`, `disconnect`) never allocates, locks
//! or makes a system call other than reading the clock.
//!
//! ```
//! use ratethrottle::{Limiter, Limits, Reason};
//!
//! let limits = Limits { connections_per_window: 2, window_ms: 1000, ..Limits::default() };
//! let lim = Limiter::new(&limits)?;
//! let (a, _) = lim.connect_at(b"10.0.0.1", 0);
//! let (b, _) = lim.connect_at(b"10.0.0.1", 10);
//! let (c, _) = lim.connect_at(b"10.0.0.1", 20);
//! assert!(a.allowed && b.allowed);
//! assert_eq!(c.reason, Reason::ConnectionRate);
//! // The two connects still weigh on the next window, decaying linearly:
//! // 2 * (1 - x) + 1 <= 2 first holds half-way into it, at 1500 ms.
//! assert_eq!(c.retry_after_ms, 1480);
//! # Ok::<(), ratethrottle::Error>(())
//! ```
//!
//! The C ABI (`include/ratethrottle.h`) is a thin translation of this API;
//! see `docs/IMPLEMENTATION.md` for the layout and the memory-ordering
//! arguments.

#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(all(not(loom), not(miri), rt_inline_u128))]
mod atomic128;
pub mod clock;
mod conn;
mod decision;
mod error;
mod events;
#[cfg(not(loom))]
pub mod ffi;
#[cfg(not(loom))]
mod file;
mod limiter;
mod limits;
mod memory;
mod packed;
mod region;
mod stats;
mod sync;
mod table;
mod window;

pub use decision::{Decision, Reason, REASON_COUNT};
pub use error::Error;
pub use events::{Violation, ViolationCallback};
#[cfg(not(loom))]
pub use file::Opened;
pub use limiter::{Conn, Limiter};
pub use limits::{
    Limits, LimitsError, MAX_BYTES_PER_WINDOW, MAX_CAPACITY, MAX_CONNECTIONS_PER_WINDOW, MAX_MESSAGES_PER_WINDOW,
};
pub use stats::{ConnectionInfo, Stats};
pub use window::RETRY_NEVER;

/// The README's Rust examples run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The crate version (`rt_version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Whether this CPU runs 128-bit atomics lock-free (required for regions).
pub fn atomics_are_lock_free() -> bool {
    sync::u128_is_lock_free()
}
