//! Configuration: the limits of one limiter, their validation and presets.
//!
//! Every numeric limit uses 0 for "no limit". Ranges follow from the packed
//! words that hold the counters (see `docs/IMPLEMENTATION.md`); a value that
//! does not fit is refused here with a message naming the field, never
//! silently wrapped.

use core::fmt;

/// Largest `messages_per_window` / `client_messages_per_window` (18-bit counts).
pub const MAX_MESSAGES_PER_WINDOW: u32 = (1 << 18) - 1;
/// Largest `bytes_per_window` / `client_bytes_per_window` (26-bit counts).
pub const MAX_BYTES_PER_WINDOW: u64 = (1 << 26) - 1;
/// Largest `connections_per_window` and `max_concurrent_connections` (24-bit counts).
pub const MAX_CONNECTIONS_PER_WINDOW: u32 = (1 << 24) - 1;
/// Largest `max_clients` and `max_connections`.
pub const MAX_CAPACITY: u32 = 1 << 23;

/// The limits of one limiter. Field meanings match `rt_limits` in the C header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Length of every window in ms (default 60000). 1 ..= u32::MAX.
    pub window_ms: u32,
    /// New connections per client per window (default 60; 0 = no limit).
    pub connections_per_window: u32,
    /// Live connections per client (default 10; 0 = no limit).
    pub max_concurrent_connections: u32,
    /// Messages per connection per window (default 1000; 0 = no limit).
    pub messages_per_window: u32,
    /// Bytes per connection per window (default 0 = no limit).
    pub bytes_per_window: u64,
    /// Largest single message in bytes (default 65536; 0 = no limit).
    pub max_message_size: u32,
    /// Messages per client (over all its connections) or per key, per window (default 0).
    pub client_messages_per_window: u32,
    /// Bytes per client or per key, per window (default 0).
    pub client_bytes_per_window: u64,
    /// Client table capacity in slots (default 65536). Fixed at creation.
    pub max_clients: u32,
    /// Connection slab capacity (default 65536). Fixed at creation.
    pub max_connections: u32,
    /// When the client table is full: allow the connect untracked instead of
    /// denying it with `TableFull` (`RT_FLAG_FAIL_OPEN`).
    pub fail_open: bool,
    /// Decide and report, but allow (`RT_FLAG_DRY_RUN`).
    pub dry_run: bool,
}

impl Default for Limits {
    /// The seed's defaults: 60 connections/min, 10 concurrent, 1000 messages/min,
    /// bandwidth off, 64 KiB messages, 65536 clients and connections.
    fn default() -> Self {
        Limits {
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
            fail_open: false,
            dry_run: false,
        }
    }
}

/// A limit that is out of range: which field, and what it allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsError {
    /// The field's name, as in `rt_limits`.
    pub field: &'static str,
    /// What was wrong and the allowed range.
    pub message: String,
}

impl fmt::Display for LimitsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.field, self.message)
    }
}

impl std::error::Error for LimitsError {}

fn check(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), LimitsError> {
    if value < min || value > max {
        let zero = if min == 0 { " (0 = no limit)" } else { "" };
        return Err(LimitsError { field, message: format!("{value} is out of range {min}..={max}{zero}") });
    }
    Ok(())
}

impl Limits {
    /// Strict limits for APIs (the seed's "Strict" example): 5 connections/min,
    /// 2 concurrent, 50 messages/min, 100 KB/min, 1 KiB messages.
    pub fn strict() -> Self {
        Limits {
            connections_per_window: 5,
            messages_per_window: 50,
            bytes_per_window: 102_400,
            max_concurrent_connections: 2,
            max_message_size: 1024,
            ..Limits::default()
        }
    }

    /// Moderate limits for chat (the seed's "Moderate" example): 10 connections/min,
    /// 5 concurrent, 100 messages/min, 1 MiB/min, 10 KiB messages.
    pub fn moderate() -> Self {
        Limits {
            connections_per_window: 10,
            messages_per_window: 100,
            bytes_per_window: 1_048_576,
            max_concurrent_connections: 5,
            max_message_size: 10_240,
            ..Limits::default()
        }
    }

    /// Generous limits for internal tools (the seed's "Generous" example):
    /// 50 connections/min, 20 concurrent, 1000 messages/min, 10 MiB/min, 64 KiB messages.
    pub fn generous() -> Self {
        Limits {
            connections_per_window: 50,
            messages_per_window: 1000,
            bytes_per_window: 10_485_760,
            max_concurrent_connections: 20,
            max_message_size: 65_536,
            ..Limits::default()
        }
    }

    /// Checks every field; the error names the first bad one and its range.
    ///
    /// ```
    /// use ratethrottle::Limits;
    /// let bad = Limits { messages_per_window: 1 << 20, ..Limits::default() };
    /// let err = bad.validate().unwrap_err();
    /// assert_eq!(err.field, "messages_per_window");
    /// assert!(err.to_string().contains("0..=262143"));
    /// ```
    pub fn validate(&self) -> Result<(), LimitsError> {
        check("window_ms", self.window_ms.into(), 1, u32::MAX.into())?;
        check("connections_per_window", self.connections_per_window.into(), 0, MAX_CONNECTIONS_PER_WINDOW.into())?;
        check(
            "max_concurrent_connections",
            self.max_concurrent_connections.into(),
            0,
            MAX_CONNECTIONS_PER_WINDOW.into(),
        )?;
        check("messages_per_window", self.messages_per_window.into(), 0, MAX_MESSAGES_PER_WINDOW.into())?;
        check("bytes_per_window", self.bytes_per_window, 0, MAX_BYTES_PER_WINDOW)?;
        check("client_messages_per_window", self.client_messages_per_window.into(), 0, MAX_MESSAGES_PER_WINDOW.into())?;
        check("client_bytes_per_window", self.client_bytes_per_window, 0, MAX_BYTES_PER_WINDOW)?;
        check("max_clients", self.max_clients.into(), 1, MAX_CAPACITY.into())?;
        check("max_connections", self.max_connections.into(), 1, MAX_CAPACITY.into())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_presets_are_valid() {
        for l in [Limits::default(), Limits::strict(), Limits::moderate(), Limits::generous()] {
            l.validate().unwrap();
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases: [(Limits, &str); 8] = [
            (Limits { window_ms: 0, ..Default::default() }, "window_ms"),
            (Limits { connections_per_window: 1 << 24, ..Default::default() }, "connections_per_window"),
            (Limits { max_concurrent_connections: u32::MAX, ..Default::default() }, "max_concurrent_connections"),
            (Limits { bytes_per_window: 1 << 26, ..Default::default() }, "bytes_per_window"),
            (Limits { client_messages_per_window: 1 << 18, ..Default::default() }, "client_messages_per_window"),
            (Limits { client_bytes_per_window: u64::MAX, ..Default::default() }, "client_bytes_per_window"),
            (Limits { max_clients: 0, ..Default::default() }, "max_clients"),
            (Limits { max_connections: (1 << 23) + 1, ..Default::default() }, "max_connections"),
        ];
        for (l, field) in cases {
            let e = l.validate().unwrap_err();
            assert_eq!(e.field, field);
            assert!(e.to_string().starts_with(&format!("invalid {field}: ")), "{e}");
        }
    }
}
