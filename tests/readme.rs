//! The README's C quick start is examples/quickstart.c, verbatim (the C
//! tests compile and run that file), and its sizing table matches the code.
#![cfg(not(loom))]

#[test]
fn readme_quickstart_is_the_tested_file() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let c = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/quickstart.c")).unwrap();
    assert!(readme.contains(&c), "README.md's C quick start differs from examples/quickstart.c");
}

#[test]
fn readme_sizing_table_matches_region_size() {
    use ratethrottle::{Limiter, Limits};
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for (clients, conns, label) in [
        (1024u32, 1024u32, "1024 | 1024"),
        (65536, 65536, "65536 (default) | 65536 (default)"),
        (1 << 20, 65536, "1048576 | 65536"),
        (1 << 20, 1 << 20, "1048576 | 1048576"),
    ] {
        let size = Limiter::region_size(&Limits { max_clients: clients, max_connections: conns, ..Limits::default() })
            .unwrap();
        let row = format!("| {label} | {:.1} MiB |", size as f64 / 1048576.0);
        assert!(readme.contains(&row), "README.md sizing table lacks `{row}`");
    }
}
