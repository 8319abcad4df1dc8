//! C ABI (filled in next).
