//! The engine's behaviour tests and the Rust-side ABI tests, compiled here so
//! that Miri checks them for undefined behaviour without building the main
//! crate's dev-dependencies. The files are the same ones `cargo test` runs.
#![allow(clippy::all)]

#[cfg(test)]
#[path = "../../engine.rs"]
mod engine;

#[cfg(test)]
#[path = "../../ffi.rs"]
mod ffi;
