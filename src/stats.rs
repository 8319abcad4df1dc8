//! Statistics: counters summed from the region's stripes plus a scan of the
//! slots, connection info, and the Prometheus text exposition.
//!
//! Message and byte totals are not counted on the hot path: a connection's
//! lifetime totals are the counts still in its window word plus what left
//! its windows (added when a window rotates out); closed connections add
//! theirs to the stripes. So `total_messages` is exact without an extra
//! atomic add per message. Collecting scans every slot: O(capacity).

use crate::conn;
use crate::decision::{Reason, REASON_COUNT};
use crate::limits::Limits;
use crate::packed::{Conns, Traffic};
use crate::region::{load_id, Region};
use crate::sync::Ordering;
use core::fmt::Write;

/// A snapshot of a limiter's statistics (`rt_stats`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Live connections.
    pub active_connections: u64,
    /// Clients with at least one live connection.
    pub unique_clients: u64,
    /// Allowed messages on connections (`check_message`), lifetime.
    pub total_messages: u64,
    /// Bytes of those messages.
    pub total_bytes: u64,
    /// Connects allowed (including untracked and dry-run ones).
    pub connections_allowed: u64,
    /// Allowed `check_message` plus allowed `check_key` calls.
    pub messages_allowed: u64,
    /// Denials by reason, indexed by `Reason as usize`.
    pub denied: [u64; REASON_COUNT],
    /// Clients and keys holding a table slot.
    pub tracked_clients: u64,
    /// Table capacity.
    pub max_clients: u64,
    /// Connection capacity.
    pub max_connections: u64,
    /// Violation records dropped because the ring was full.
    pub violations_dropped: u64,
    /// Requests a dry-run limiter would have denied.
    pub dry_run_denied: u64,
    /// Connects allowed untracked because the table was full (fail-open).
    pub untracked_allowed: u64,
    /// The limits in force.
    pub limits: Limits,
}

/// What is known of one live connection (`rt_connection_info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// First 40 bytes of the client id.
    pub client_id: [u8; 40],
    /// Full length of the client id (0 for an untracked connection).
    pub client_id_len: u32,
    /// Limiter clock (ms) at connect.
    pub connected_at_ms: u64,
    /// Limiter clock (ms) of the last allowed message (connect time if none).
    pub last_message_at_ms: u64,
    /// Allowed messages.
    pub message_count: u64,
    /// Bytes of allowed messages.
    pub byte_count: u64,
}

impl ConnectionInfo {
    /// The stored part of the client id.
    pub fn client_id(&self) -> &[u8] {
        &self.client_id[..(self.client_id_len as usize).min(40)]
    }
}

pub(crate) fn collect(region: &Region) -> Stats {
    let h = region.header();
    let mut active = 0u64;
    let mut msgs = region.sum_saturating(|s| &s.closed_messages);
    let mut bytes = region.sum_saturating(|s| &s.closed_bytes);
    for (_, live) in conn::live_connections(region) {
        active += 1;
        let slot = region.conn(live.index);
        let t = Traffic::unpack(slot.traffic.load(Ordering::Acquire));
        msgs = msgs.saturating_add(slot.acc_messages.load(Ordering::Relaxed).saturating_add(t.msgs_prev + t.msgs_cur));
        bytes = bytes.saturating_add(slot.acc_bytes.load(Ordering::Relaxed).saturating_add(t.bytes_prev + t.bytes_cur));
    }
    let mut tracked = 0u64;
    let mut unique = 0u64;
    for i in 0..region.layout.slots() {
        let slot = region.client(i);
        let k = slot.key.load(Ordering::Acquire);
        if k != 0 && k >> 127 == 0 {
            tracked += 1;
            if Conns::unpack(slot.conns.load(Ordering::Acquire)).active > 0 {
                unique += 1;
            }
        }
    }
    let mut denied = [0u64; REASON_COUNT];
    for (i, d) in denied.iter_mut().enumerate() {
        *d = region.sum(|s| &s.denied[i]);
    }
    Stats {
        active_connections: active,
        unique_clients: unique,
        total_messages: msgs,
        total_bytes: bytes,
        connections_allowed: region.sum(|s| &s.connections_allowed),
        messages_allowed: msgs.wrapping_add(region.sum(|s| &s.keys_allowed)),
        denied,
        tracked_clients: tracked,
        max_clients: h.max_clients.load(Ordering::Relaxed) as u64,
        max_connections: h.max_connections.load(Ordering::Relaxed) as u64,
        violations_dropped: region.sum(|s| &s.violations_dropped),
        dry_run_denied: region.sum(|s| &s.dry_run_denied),
        untracked_allowed: region.sum(|s| &s.untracked_allowed),
        limits: h.limits(),
    }
}

pub(crate) fn connection_info(region: &Region, handle: u64) -> Option<ConnectionInfo> {
    let (live, slot) = conn::lookup(region, handle)?;
    let t = Traffic::unpack(slot.traffic.load(Ordering::Acquire));
    let (client_id, client_id_len) = if live.client == conn::NO_CLIENT {
        ([0; 40], 0)
    } else {
        let c = region.client(live.client);
        load_id(&c.id, &c.id_len)
    };
    let info = ConnectionInfo {
        client_id,
        client_id_len,
        connected_at_ms: slot.connected_at_ms.load(Ordering::Relaxed),
        last_message_at_ms: slot.last_message_at_ms.load(Ordering::Relaxed),
        message_count: slot.acc_messages.load(Ordering::Relaxed).saturating_add(t.msgs_prev + t.msgs_cur),
        byte_count: slot.acc_bytes.load(Ordering::Relaxed).saturating_add(t.bytes_prev + t.bytes_cur),
    };
    // The connection may have closed while we read: then it is unknown.
    // Acquire fence: the loads above happen before this re-check (pairs
    // with the fence in `conn::open`; loom: loom_connection_info_races_slot_reuse).
    crate::sync::fence(Ordering::Acquire);
    conn::lookup(region, handle).map(|_| info)
}

/// Writes the Prometheus text exposition format (version 0.0.4).
pub(crate) fn prometheus(s: &Stats, out: &mut String) {
    let mut m = |name: &str, kind: &str, help: &str, v: u64| {
        let _ = write!(
            out,
            "# HELP ratethrottle_{name} {help}\n# TYPE ratethrottle_{name} {kind}\nratethrottle_{name} {v}\n"
        );
    };
    m("active_connections", "gauge", "Live connections.", s.active_connections);
    m("unique_clients", "gauge", "Clients with at least one live connection.", s.unique_clients);
    m("tracked_clients", "gauge", "Clients and keys holding a table slot.", s.tracked_clients);
    m("max_clients", "gauge", "Client table capacity.", s.max_clients);
    m("max_connections", "gauge", "Connection capacity.", s.max_connections);
    m("messages_total", "counter", "Allowed messages on connections.", s.total_messages);
    m("bytes_total", "counter", "Bytes of allowed messages on connections.", s.total_bytes);
    m("connections_allowed_total", "counter", "Connects allowed.", s.connections_allowed);
    m("messages_allowed_total", "counter", "Allowed message and key checks.", s.messages_allowed);
    m("violations_dropped_total", "counter", "Violation records dropped (ring full).", s.violations_dropped);
    m("dry_run_denied_total", "counter", "Requests a dry run would have denied.", s.dry_run_denied);
    m("untracked_allowed_total", "counter", "Connects allowed untracked (table full, fail-open).", s.untracked_allowed);
    out.push_str(
        "# HELP ratethrottle_denied_total Denied requests by reason.\n# TYPE ratethrottle_denied_total counter\n",
    );
    for r in Reason::ALL.iter().skip(1) {
        let _ = writeln!(out, "ratethrottle_denied_total{{reason=\"{}\"}} {}", r.as_str(), s.denied[*r as usize]);
    }
}
