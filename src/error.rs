//! Errors of the Rust API; each maps to one `rt_status`.

use crate::limits::LimitsError;
use core::fmt;

/// What went wrong when creating, attaching or changing a limiter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// A limit is out of range.
    InvalidLimits(LimitsError),
    /// An argument is invalid (misaligned memory, wrong `struct_size`, ...).
    InvalidArgument(&'static str),
    /// The heap region could not be allocated.
    OutOfMemory,
    /// The memory given is smaller than the region needs.
    RegionTooSmall {
        /// Bytes the region needs (`rt_region_size`).
        needed: usize,
        /// Bytes that were given.
        given: usize,
    },
    /// The memory does not hold a ready region of this layout version.
    IncompatibleRegion(String),
    /// The connection handle is unknown, closed or forged.
    UnknownConnection,
    /// No slot is free for a new client or connection.
    TableFull,
    /// A system call on a shared region's file failed
    /// ([`Limiter::open_file`](crate::Limiter::open_file)).
    Io {
        /// What failed, e.g. "cannot open".
        what: &'static str,
        /// The file.
        path: String,
        /// The OS error number (`errno`).
        errno: i32,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidLimits(e) => e.fmt(f),
            Error::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
            Error::OutOfMemory => f.write_str("out of memory"),
            Error::RegionTooSmall { needed, given } => {
                write!(f, "region too small: {given} bytes given, {needed} needed")
            }
            Error::IncompatibleRegion(why) => write!(f, "incompatible region: {why}"),
            Error::UnknownConnection => f.write_str("unknown connection"),
            Error::TableFull => f.write_str("table full"),
            Error::Io { what, path, errno } => {
                write!(f, "{what} {path}: {}", std::io::Error::from_raw_os_error(*errno))
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<LimitsError> for Error {
    fn from(e: LimitsError) -> Self {
        Error::InvalidLimits(e)
    }
}
