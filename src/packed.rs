//! The bit-packed 128-bit words that hold every counter.
//!
//! A *traffic* word holds the message and byte counts of the current and the
//! previous window, the window id, and an 8-bit tag (the connection's
//! generation, or the client slot's epoch) so that a stale holder's CAS fails:
//!
//! ```text
//! 127    120 119          88 87      70 69      52 51        26 25         0
//! +--------+---------------+----------+----------+------------+------------+
//! |  tag   |   window id   | msgs prev| msgs cur | bytes prev | bytes cur  |
//! +--------+---------------+----------+----------+------------+------------+
//! ```
//!
//! A *conns* word holds a client's connection-rate window and live count:
//!
//! ```text
//! 127  120 119    104 103        72 71      48 47      24 23       0
//! +-------+---------+-------------+----------+----------+----------+
//! | flags |  epoch  |  window id  | conn prev| conn cur |  active  |
//! +-------+---------+-------------+----------+----------+----------+
//! ```
//!
//! Counts saturate at their field's maximum instead of wrapping.

pub(crate) const BYTES_BITS: u32 = 26;
pub(crate) const MSGS_BITS: u32 = 18;
pub(crate) const ID_BITS: u32 = crate::window::ID_BITS;
pub(crate) const TAG_BITS: u32 = 8;

const BYTES_CUR_SHIFT: u32 = 0;
const BYTES_PREV_SHIFT: u32 = BYTES_CUR_SHIFT + BYTES_BITS;
const MSGS_CUR_SHIFT: u32 = BYTES_PREV_SHIFT + BYTES_BITS;
const MSGS_PREV_SHIFT: u32 = MSGS_CUR_SHIFT + MSGS_BITS;
const TRAFFIC_ID_SHIFT: u32 = MSGS_PREV_SHIFT + MSGS_BITS;
const TAG_SHIFT: u32 = TRAFFIC_ID_SHIFT + ID_BITS;
const _: () = assert!(TAG_SHIFT + TAG_BITS == 128);

pub(crate) const BYTES_MAX: u64 = (1 << BYTES_BITS) - 1;
pub(crate) const MSGS_MAX: u64 = (1 << MSGS_BITS) - 1;
const ID_MASK: u64 = (1 << ID_BITS) - 1;
pub(crate) const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

#[inline]
fn field(w: u128, shift: u32, max: u64) -> u64 {
    ((w >> shift) as u64) & max
}

/// An unpacked traffic word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Traffic {
    pub tag: u64,
    pub id: u64,
    pub msgs_prev: u64,
    pub msgs_cur: u64,
    pub bytes_prev: u64,
    pub bytes_cur: u64,
}

impl Traffic {
    #[inline(always)]
    pub(crate) fn unpack(w: u128) -> Traffic {
        Traffic {
            tag: field(w, TAG_SHIFT, TAG_MASK),
            id: field(w, TRAFFIC_ID_SHIFT, ID_MASK),
            msgs_prev: field(w, MSGS_PREV_SHIFT, MSGS_MAX),
            msgs_cur: field(w, MSGS_CUR_SHIFT, MSGS_MAX),
            bytes_prev: field(w, BYTES_PREV_SHIFT, BYTES_MAX),
            bytes_cur: field(w, BYTES_CUR_SHIFT, BYTES_MAX),
        }
    }

    /// Packs; every count must already be within its field (callers saturate).
    #[inline(always)]
    pub(crate) fn pack(&self) -> u128 {
        debug_assert!(self.msgs_prev <= MSGS_MAX && self.msgs_cur <= MSGS_MAX);
        debug_assert!(self.bytes_prev <= BYTES_MAX && self.bytes_cur <= BYTES_MAX);
        ((self.tag & TAG_MASK) as u128) << TAG_SHIFT
            | ((self.id & ID_MASK) as u128) << TRAFFIC_ID_SHIFT
            | (self.msgs_prev as u128) << MSGS_PREV_SHIFT
            | (self.msgs_cur as u128) << MSGS_CUR_SHIFT
            | (self.bytes_prev as u128) << BYTES_PREV_SHIFT
            | (self.bytes_cur as u128) << BYTES_CUR_SHIFT
    }

    /// A word with no counts, tagged and placed in window `id`.
    pub(crate) fn fresh(tag: u64, id: u64) -> u128 {
        Traffic { tag, id, ..Traffic::default() }.pack()
    }
}

pub(crate) const CONN_BITS: u32 = 24;
pub(crate) const EPOCH_BITS: u32 = 16;
const ACTIVE_SHIFT: u32 = 0;
const CONN_CUR_SHIFT: u32 = ACTIVE_SHIFT + CONN_BITS;
const CONN_PREV_SHIFT: u32 = CONN_CUR_SHIFT + CONN_BITS;
const CONNS_ID_SHIFT: u32 = CONN_PREV_SHIFT + CONN_BITS;
const EPOCH_SHIFT: u32 = CONNS_ID_SHIFT + ID_BITS;
const _: () = assert!(EPOCH_SHIFT + EPOCH_BITS <= 128);
pub(crate) const CONN_MAX: u64 = (1 << CONN_BITS) - 1;
pub(crate) const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;

/// An unpacked conns word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Conns {
    pub epoch: u64,
    pub id: u64,
    pub prev: u64,
    pub cur: u64,
    pub active: u64,
}

impl Conns {
    #[inline(always)]
    pub(crate) fn unpack(w: u128) -> Conns {
        Conns {
            epoch: field(w, EPOCH_SHIFT, EPOCH_MASK),
            id: field(w, CONNS_ID_SHIFT, ID_MASK),
            prev: field(w, CONN_PREV_SHIFT, CONN_MAX),
            cur: field(w, CONN_CUR_SHIFT, CONN_MAX),
            active: field(w, ACTIVE_SHIFT, CONN_MAX),
        }
    }

    #[inline(always)]
    pub(crate) fn pack(&self) -> u128 {
        debug_assert!(self.prev <= CONN_MAX && self.cur <= CONN_MAX && self.active <= CONN_MAX);
        ((self.epoch & EPOCH_MASK) as u128) << EPOCH_SHIFT
            | ((self.id & ID_MASK) as u128) << CONNS_ID_SHIFT
            | (self.prev as u128) << CONN_PREV_SHIFT
            | (self.cur as u128) << CONN_CUR_SHIFT
            | (self.active as u128) << ACTIVE_SHIFT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_round_trips_at_field_limits() {
        let t =
            Traffic { tag: 255, id: ID_MASK, msgs_prev: MSGS_MAX, msgs_cur: 1, bytes_prev: 2, bytes_cur: BYTES_MAX };
        assert_eq!(Traffic::unpack(t.pack()), t);
        let z = Traffic { tag: 3, id: 7, ..Default::default() };
        assert_eq!(Traffic::unpack(z.pack()), z);
    }

    #[test]
    fn conns_round_trips_at_field_limits() {
        let c = Conns { epoch: EPOCH_MASK, id: ID_MASK, prev: CONN_MAX, cur: 5, active: CONN_MAX };
        assert_eq!(Conns::unpack(c.pack()), c);
    }
}
