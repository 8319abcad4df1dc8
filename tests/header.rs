//! The committed header `include/ratethrottle.h` must be exactly what
//! cbindgen generates from `src/ffi` (build.rs writes it to OUT_DIR).

const GENERATED: &str = include_str!(concat!(env!("OUT_DIR"), "/ratethrottle.h"));
const COMMITTED: &str = include_str!("../include/ratethrottle.h");

#[test]
fn committed_header_is_up_to_date() {
    if GENERATED != COMMITTED {
        let line = GENERATED
            .lines()
            .zip(COMMITTED.lines())
            .position(|(g, c)| g != c)
            .unwrap_or_else(|| GENERATED.lines().count().min(COMMITTED.lines().count()))
            + 1;
        panic!(
            "include/ratethrottle.h is stale: run `make header` (first difference at line {line}; \
             generated: {}/ratethrottle.h)",
            env!("OUT_DIR")
        );
    }
}

#[test]
fn header_has_the_contract() {
    for name in [
        "#ifndef RATETHROTTLE_H",
        "#include <stdbool.h>",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "#define RT_RETRY_NEVER UINT64_MAX",
        "#define RT_FLAG_FAIL_OPEN 1",
        "#define RT_FLAG_DRY_RUN 2",
        "#define RT_REASON_COUNT 11",
        "typedef uint64_t rt_conn;",
        "typedef uint32_t rt_status;",
        "typedef uint32_t rt_reason;",
        "typedef struct rt_limiter rt_limiter;",
        "uint64_t denied[RT_REASON_COUNT];",
        "typedef void (*rt_violation_cb)(const struct rt_violation *v, void *user_data);",
        "const char *rt_version(void);",
        "size_t rt_region_size(const struct rt_limits *l);",
    ] {
        assert!(COMMITTED.contains(name), "include/ratethrottle.h lacks `{name}`");
    }
}
