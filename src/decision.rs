//! What a check returns: the reason codes and the decision.

use crate::window::RETRY_NEVER;

/// Why a request was denied (or, in dry-run mode, would have been).
/// The numeric values are the C ABI's `rt_reason` and never change.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Allowed.
    Ok = 0,
    /// Too many new connections for this client in the window.
    ConnectionRate = 1,
    /// Too many live connections for this client.
    ConcurrentConnections = 2,
    /// The message is larger than `max_message_size`.
    MessageTooLarge = 3,
    /// Too many messages on this connection in the window.
    MessageRate = 4,
    /// Too many bytes on this connection in the window.
    Bandwidth = 5,
    /// Too many messages for this client or key, over all its connections.
    ClientMessageRate = 6,
    /// Too many bytes for this client or key, over all its connections.
    ClientBandwidth = 7,
    /// No slot for a new client or connection.
    TableFull = 8,
    /// The connection handle is unknown, closed or forged.
    UnknownConnection = 9,
    /// An argument was invalid (for example a NULL id with a non-zero length).
    InvalidArgument = 10,
}

/// Number of [`Reason`] values (`RT_REASON_COUNT`).
pub const REASON_COUNT: usize = 11;

impl Reason {
    /// Every reason, in numeric order.
    pub const ALL: [Reason; REASON_COUNT] = [
        Reason::Ok,
        Reason::ConnectionRate,
        Reason::ConcurrentConnections,
        Reason::MessageTooLarge,
        Reason::MessageRate,
        Reason::Bandwidth,
        Reason::ClientMessageRate,
        Reason::ClientBandwidth,
        Reason::TableFull,
        Reason::UnknownConnection,
        Reason::InvalidArgument,
    ];

    /// The reason for a C value, or `None` when out of range.
    pub fn from_u32(v: u32) -> Option<Reason> {
        Reason::ALL.get(v as usize).copied()
    }

    /// The string a decision reports: the seed's where it has one
    /// (`ok`, `rate_limit_exceeded`, `message_too_large`, `bandwidth_exceeded`,
    /// `connection_not_found`), equally plain names for the rest.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ok => "ok",
            Reason::ConnectionRate => "connection_rate_exceeded",
            Reason::ConcurrentConnections => "too_many_connections",
            Reason::MessageTooLarge => "message_too_large",
            Reason::MessageRate => "rate_limit_exceeded",
            Reason::Bandwidth => "bandwidth_exceeded",
            Reason::ClientMessageRate => "client_rate_limit_exceeded",
            Reason::ClientBandwidth => "client_bandwidth_exceeded",
            Reason::TableFull => "table_full",
            Reason::UnknownConnection => "connection_not_found",
            Reason::InvalidArgument => "invalid_argument",
        }
    }

    /// The seed's violation `type` names: `connection_rate`,
    /// `concurrent_connections`, `message_size`, `message_rate`, `bandwidth`, ...
    pub fn violation_type(self) -> &'static str {
        match self {
            Reason::Ok => "none",
            Reason::ConnectionRate => "connection_rate",
            Reason::ConcurrentConnections => "concurrent_connections",
            Reason::MessageTooLarge => "message_size",
            Reason::MessageRate => "message_rate",
            Reason::Bandwidth => "bandwidth",
            Reason::ClientMessageRate => "client_message_rate",
            Reason::ClientBandwidth => "client_bandwidth",
            Reason::TableFull => "table_full",
            Reason::UnknownConnection => "unknown_connection",
            Reason::InvalidArgument => "invalid_argument",
        }
    }
}

/// The answer to a connect or message check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed. In dry-run mode always true.
    pub allowed: bool,
    /// `Ok`, or the first limit that failed (in dry-run mode: would have failed).
    pub reason: Reason,
    /// 0 when allowed; otherwise the exact ms after which the same request
    /// passes with no other traffic; [`RETRY_NEVER`] when it never can.
    /// A concurrency denial has 0 (retry when a connection closes).
    pub retry_after_ms: u64,
    /// The limit that decided (0 when none applies).
    pub limit: u64,
    /// Budget left under that limit after this call.
    pub remaining: u64,
    /// The estimate that decided: a count, bytes, or live connections.
    pub current: u64,
}

impl Decision {
    pub(crate) const fn allow() -> Decision {
        Decision { allowed: true, reason: Reason::Ok, retry_after_ms: 0, limit: 0, remaining: 0, current: 0 }
    }

    pub(crate) const fn deny(reason: Reason) -> Decision {
        Decision { allowed: false, reason, retry_after_ms: 0, limit: 0, remaining: 0, current: 0 }
    }

    /// True when this request can never pass as it is.
    pub fn never_passes(&self) -> bool {
        self.retry_after_ms == RETRY_NEVER
    }
}
