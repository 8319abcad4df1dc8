//! Helpers shared by the multi-process tests: a child is the test binary
//! run again with one test selected and an environment variable naming its
//! task, and it reports one line `RESULT <fields...>` on stdout.

use std::process::{Child, Command, Stdio};

/// Runs this test binary again: only the test `entry`, with `var=spec` in
/// the environment, stdout piped (and stdin, so a child can wait for it to
/// close).
pub fn spawn(entry: &str, var: &str, spec: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", entry, "--nocapture", "--test-threads=1"])
        .env(var, spec)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The fields of a finished child's RESULT line; the child must have succeeded.
pub fn results(c: Child) -> Vec<String> {
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "child failed: {out:?}");
    let s = String::from_utf8_lossy(&out.stdout);
    fields(s.lines()).unwrap_or_else(|| panic!("no result in {s}"))
}

/// The fields of the first RESULT line among `lines`.
pub fn fields<S: AsRef<str>>(lines: impl IntoIterator<Item = S>) -> Option<Vec<String>> {
    lines.into_iter().find_map(|l| {
        let l = l.as_ref();
        l.find("RESULT ").map(|i| l[i..].split(' ').skip(1).map(str::to_owned).collect())
    })
}
