//! Generates the C header from `src/ffi` with cbindgen into `OUT_DIR` only
//! (a build script must not write into the source tree). `make header`
//! copies it to `include/ratethrottle.h`; `tests/header.rs` fails when the
//! committed copy differs. A cbindgen failure is a warning, never a failed
//! build: the library itself does not need the header.

use std::path::PathBuf;

fn main() {
    inline_u128_cfg();
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let (Some(crate_dir), Some(out_dir)) = (std::env::var_os("CARGO_MANIFEST_DIR"), std::env::var_os("OUT_DIR")) else {
        println!("cargo:warning=ratethrottle.h not generated: CARGO_MANIFEST_DIR or OUT_DIR is not set");
        return;
    };
    let crate_dir = PathBuf::from(crate_dir);
    let out = PathBuf::from(out_dir).join("ratethrottle.h");
    if let Err(e) = generate(&crate_dir, &out) {
        // Leave no stale header behind for `make header` to copy.
        let _ = std::fs::remove_file(&out);
        println!("cargo:warning=ratethrottle.h not generated: {e}");
    }
}

/// `rt_inline_u128`: the 128-bit atomics of `src/atomic128.rs` (x86_64
/// with SSE, no sanitizer: ThreadSanitizer cannot see inline assembly, so it
/// gets portable-atomic's compiler intrinsics instead).
fn inline_u128_cfg() {
    println!("cargo:rustc-check-cfg=cfg(rt_inline_u128)");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let sse = var("CARGO_CFG_TARGET_FEATURE").split(',').any(|f| f == "sse");
    if var("CARGO_CFG_TARGET_ARCH") == "x86_64" && sse && var("CARGO_CFG_SANITIZE").is_empty() {
        println!("cargo:rustc-cfg=rt_inline_u128");
    }
}

fn generate(crate_dir: &std::path::Path, out: &std::path::Path) -> Result<(), String> {
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .map_err(|e| format!("cannot read cbindgen.toml: {e}"))?;
    let src = crate_dir.join("src").join("ffi").join("mod.rs");
    // cbindgen may panic on input it does not understand: report, never fail.
    let result = std::panic::catch_unwind(|| cbindgen::Builder::new().with_config(config).with_src(&src).generate());
    let bindings = match result {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Err(format!("cbindgen failed: {e}")),
        Err(_) => return Err("cbindgen panicked".to_string()),
    };
    bindings.write_to_file(out);
    if out.exists() {
        Ok(())
    } else {
        Err(format!("cbindgen could not write {}", out.display()))
    }
}
