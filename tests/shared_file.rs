//! `Limiter::open_file`: processes racing to create-or-attach one file get
//! exactly one creator and one set of limits (M5, M12); an attach frees the
//! connections of a process that died (M2); every bad file or path is
//! refused with a clear error and leaves the file as it was (M4, M6).
//! Children are this test binary run again with `RT_FILE_CHILD` set.
#![cfg(not(loom))]

mod common;

use common::results;
use ratethrottle::{Error, Limiter, Limits, Opened, Reason};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CHILDREN: usize = 4;

/// A path under /dev/shm named for this process and `tag`, removed (with
/// its start marker) when dropped, so a failing test leaves nothing behind.
struct ShmPath(PathBuf);

impl ShmPath {
    fn new(tag: &str) -> ShmPath {
        let p = ShmPath(PathBuf::from(format!("/dev/shm/ratethrottle-file-test-{}-{tag}", std::process::id())));
        p.remove();
        p
    }

    fn start_marker(&self) -> PathBuf {
        self.0.with_extension("go")
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_file(self.start_marker());
    }
}

impl Drop for ShmPath {
    fn drop(&mut self) {
        self.remove();
    }
}

fn limits() -> Limits {
    Limits {
        max_concurrent_connections: 7,
        connections_per_window: 0,
        max_clients: 1024,
        max_connections: 1024,
        ..Limits::default()
    }
}

/// What a child does, selected by RT_FILE_CHILD=<task>:<path>.
fn child(task: &str, path: &Path) {
    match task {
        "race" => {
            // Start together: the parent creates the marker once all are spawned.
            let marker = path.with_extension("go");
            let t0 = Instant::now();
            while !marker.exists() && t0.elapsed() < Duration::from_secs(20) {
                std::hint::spin_loop();
            }
            let (lim, how) = Limiter::open_file(path, Some(&limits())).unwrap();
            let mut conns = 0;
            for _ in 0..2000 {
                if lim.connect_at(b"shared-client", 1000).1.is_some() {
                    conns += 1;
                }
            }
            println!("RESULT {} {conns}", if how == Opened::Created { "created" } else { "attached" });
            // Stay alive (holding the connections) until the parent has every
            // result: an attach after this process died would reap them.
            std::io::Write::flush(&mut std::io::stdout()).unwrap();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        }
        "churn" => {
            // Connect and disconnect one client until killed (SIGKILL lands
            // in the middle of one of them, as in a crashed worker).
            let (lim, _) = Limiter::open_file(path, None).unwrap();
            println!("RESULT churning");
            std::io::Write::flush(&mut std::io::stdout()).unwrap();
            loop {
                if let (_, Some(c)) = lim.connect_at(b"churn-client", 1000) {
                    lim.disconnect(c);
                }
            }
        }
        "create_big" => {
            // Killed by the parent while it formats (262 MB take a while).
            let big = Limits { max_clients: 1 << 20, max_connections: 1 << 16, ..limits() };
            let _ = Limiter::open_file(path, Some(&big)).unwrap();
            println!("RESULT created");
        }
        "hold" => {
            let (lim, _) = Limiter::open_file(path, None).unwrap();
            for _ in 0..3 {
                assert!(lim.connect_at(b"worker-client", 1000).0.allowed);
            }
            println!("RESULT held");
            // Exit without closing them (a crashed worker).
            std::process::exit(0);
        }
        _ => panic!("unknown child task {task}"),
    }
}

fn spawn(task: &str, path: &Path) -> std::process::Child {
    common::spawn("file_child_entry", "RT_FILE_CHILD", &format!("{task}:{}", path.display()))
}

/// The fields of a child's RESULT line, read while the child still runs.
fn result_line(c: &mut std::process::Child) -> Vec<String> {
    use std::io::BufRead;
    let out = std::io::BufReader::new(c.stdout.as_mut().unwrap());
    common::fields(out.lines().map_while(Result::ok)).unwrap_or_else(|| panic!("child ended without a result"))
}

#[test]
fn file_child_entry() {
    if let Ok(spec) = std::env::var("RT_FILE_CHILD") {
        let (task, path) = spec.split_once(':').unwrap();
        child(task, Path::new(path));
    }
}

#[test]
#[cfg_attr(miri, ignore = "spawns processes and maps files")]
fn processes_racing_to_open_one_file_get_one_creator_and_one_limit() {
    let path = ShmPath::new("race");
    let mut children: Vec<_> = (0..CHILDREN).map(|_| spawn("race", &path.0)).collect();
    std::fs::write(path.start_marker(), b"").unwrap();
    let all: Vec<_> = children.iter_mut().map(result_line).collect();
    for mut c in children {
        drop(c.stdin.take()); // let it exit
        assert!(c.wait().unwrap().success());
    }
    let (mut created, mut conns) = (0, 0u64);
    for r in all {
        eprintln!("child: {} with {} connections", r[0], r[1]);
        created += (r[0] == "created") as u32;
        conns += r[1].parse::<u64>().unwrap();
    }
    assert_eq!(created, 1, "exactly one process formats the region");
    assert_eq!(conns, 7, "the concurrency limit holds exactly across processes");
    let (lim, how) = Limiter::open_file(&path.0, None).unwrap();
    assert_eq!(how, Opened::Attached);
    // The children exited holding their connections: this attach reaped them.
    assert_eq!(lim.client_connections(b"shared-client"), 0);
}

#[test]
#[cfg_attr(miri, ignore = "spawns processes and maps files")]
fn an_attach_frees_the_connections_of_a_dead_process() {
    let path = ShmPath::new("reap");
    let l = Limits { max_concurrent_connections: 3, ..limits() };
    let (lim, how) = Limiter::open_file(&path.0, Some(&l)).unwrap();
    assert_eq!(how, Opened::Created);
    let (_, mine) = lim.connect_at(b"mine", 1000);
    assert_eq!(results(spawn("hold", &path.0)), vec!["held"]);
    assert_eq!(lim.connect_at(b"worker-client", 1001).0.reason, Reason::ConcurrentConnections);
    let (again, how) = Limiter::open_file(&path.0, Some(&limits())).unwrap();
    assert_eq!(how, Opened::Attached);
    assert_eq!(lim.client_connections(b"worker-client"), 0, "reaped by the attach");
    assert!(lim.connection_info(mine.unwrap()).is_some(), "a live process keeps its connections");
    // An attach keeps the region's limits; the ones passed are only validated.
    assert_eq!(again.limits().max_concurrent_connections, 3);
}

/// M1/M2: a worker killed in the middle of a connect or a disconnect must
/// not leave its client's live count raised for ever (each such kill used to
/// leak one, until the client was locked out for good). After every kill
/// and `reap_dead` the count is never above the truth (it may read one low
/// for a kill that lands right after the count changed, which heals when
/// the client's connections close), and the client can always connect again.
#[test]
#[cfg_attr(miri, ignore = "spawns processes and maps files")]
fn workers_killed_mid_connect_or_disconnect_never_lock_a_client_out() {
    let path = ShmPath::new("killed");
    let l = Limits { max_concurrent_connections: 3, max_connections: 256, ..limits() };
    let (lim, _) = Limiter::open_file(&path.0, Some(&l)).unwrap();
    let mine = lim.connect_at(b"churn-client", 1000).1.unwrap();
    for i in 0..60u64 {
        let mut c = spawn("churn", &path.0);
        assert_eq!(result_line(&mut c), vec!["churning"]);
        // Let it churn for 0.2 to 3 ms: kills land all over its loop.
        std::thread::sleep(Duration::from_micros(200 + (i * 7919) % 2800));
        c.kill().unwrap();
        c.wait().unwrap();
        lim.reap_dead();
        let n = lim.client_connections(b"churn-client");
        assert!(n <= 1, "kill {i}: the client counts {n} live connections, but only ours is open");
    }
    assert!(lim.disconnect(mine));
    assert_eq!(lim.client_connections(b"churn-client"), 0);
    for k in 0..3 {
        let (d, c) = lim.connect_at(b"churn-client", 2000);
        assert!(d.allowed && c.is_some(), "connection {k} of 3 refused: {d:?}");
    }
}

/// M1/M5: the process creating a region file is killed while it formats
/// it. The file then holds zeroes or a header without its magic, and no
/// process could ever open it again (every create attached and was refused
/// as "not a region"). Under the file lock nobody else can be formatting
/// it, so the next create starts it again; an attach-only open still
/// refuses it.
#[test]
#[cfg_attr(miri, ignore = "spawns processes and maps files")]
fn a_region_file_whose_creator_was_killed_while_formatting_is_formatted_again() {
    let path = ShmPath::new("killed-creator");
    let mut c = spawn("create_big", &path.0);
    let t0 = Instant::now();
    while std::fs::metadata(&path.0).map_or(0, |m| m.len()) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "the child never sized the file");
        std::hint::spin_loop();
    }
    c.kill().unwrap();
    assert!(!c.wait().unwrap().success(), "the child finished formatting before it was killed");
    let mut head = [0u8; 8];
    std::io::Read::read_exact(&mut std::fs::File::open(&path.0).unwrap(), &mut head).unwrap();
    assert_eq!(head, [0; 8], "killed mid-format: no magic yet");
    assert!(matches!(Limiter::open_file(&path.0, None), Err(Error::IncompatibleRegion(_))));
    let (lim, how) = Limiter::open_file(&path.0, Some(&limits())).unwrap();
    assert_eq!(how, Opened::Created, "formatted again");
    assert_eq!(std::fs::metadata(&path.0).unwrap().len() as usize, Limiter::region_size(&limits()).unwrap());
    assert!(lim.connect_at(b"x", 0).0.allowed);
    drop(lim);
    // A header begun (state "initialising", our version) but never finished.
    let full = Limiter::region_size(&limits()).unwrap();
    let mut begun = vec![0u8; full];
    begun[12] = 1;
    begun[8..12].copy_from_slice(&std::fs::read(&path.0).unwrap()[8..12]);
    std::fs::write(&path.0, &begun).unwrap();
    assert_eq!(Limiter::open_file(&path.0, Some(&limits())).unwrap().1, Opened::Created);
    // A file of zeroes is not a format begun: it is someone else's, refused
    // and left as it is.
    std::fs::write(&path.0, vec![0u8; full]).unwrap();
    assert!(matches!(Limiter::open_file(&path.0, Some(&limits())), Err(Error::IncompatibleRegion(_))));
    assert!(std::fs::read(&path.0).unwrap().iter().all(|&b| b == 0), "a file of zeroes was written to");
}

#[test]
#[cfg_attr(miri, ignore = "maps files")]
fn handles_over_one_file_share_state_and_the_file_outlives_them() {
    let path = ShmPath::new("share");
    let (a, _) = Limiter::open_file(&path.0, Some(&limits())).unwrap();
    let (b, how) = Limiter::open_file(&path.0, None).unwrap();
    assert_eq!(how, Opened::Attached);
    let c = a.connect_at(b"x", 0).1.unwrap();
    assert_eq!(b.client_connections(b"x"), 1);
    assert!(b.check_message_at(c, 10, 0).allowed, "a handle works through the other mapping");
    b.update_limits_at(&Limits { max_concurrent_connections: 1, ..limits() }, 0).unwrap();
    assert_eq!(a.connect_at(b"x", 0).0.reason, Reason::ConcurrentConnections);
    drop((a, b));
    let size = std::fs::metadata(&path.0).unwrap().len();
    assert_eq!(size as usize, Limiter::region_size(&limits()).unwrap());
    let (c, how) = Limiter::open_file(&path.0, None).unwrap();
    assert_eq!(how, Opened::Attached);
    assert_eq!(c.limits().max_concurrent_connections, 1, "the state lives in the file");
    assert_eq!(c.client_connections(b"x"), 0, "the connection left open was closed with the last handle");
}

/// Connections a process leaves open when it drops its limiters of a file
/// would hold their clients' slots until the process exits and another
/// one reaps it: they are closed when the process's last limiter on that
/// file is dropped, not before.
#[test]
#[cfg_attr(miri, ignore = "maps files")]
fn the_last_handle_of_a_process_closes_its_open_connections() {
    let path = ShmPath::new("lastclose");
    let (a, _) = Limiter::open_file(&path.0, Some(&limits())).unwrap();
    let (b, _) = Limiter::open_file(&path.0, None).unwrap();
    assert!(a.connect_at(b"x", 0).1.is_some());
    assert!(b.connect_at(b"x", 0).1.is_some());
    drop(a);
    assert_eq!(b.client_connections(b"x"), 2, "another handle of this process is open: nothing closed");
    drop(b);
    let (c, _) = Limiter::open_file(&path.0, None).unwrap();
    assert_eq!(c.client_connections(b"x"), 0, "both closed with the last handle");
    let kept = c.connect_at(b"x", 0).1.unwrap();
    let other = Limiter::new(&limits()).unwrap();
    drop(other);
    assert_eq!(c.client_connections(b"x"), 1, "a limiter of another region changes nothing here");
    assert!(c.disconnect(kept));
}

#[test]
#[cfg_attr(miri, ignore = "maps files")]
fn bad_files_and_paths_are_refused_and_left_as_they_were() {
    let path = ShmPath::new("bad");
    // Attach only, and no file: the OS error, naming the file.
    match Limiter::open_file(&path.0, None) {
        Err(e @ Error::Io { errno: libc::ENOENT, .. }) => {
            assert!(e.to_string().starts_with("cannot open /dev/shm/"), "{e}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(!path.0.exists(), "attach-only never creates");
    // Invalid limits: refused before the file is touched.
    let bad = Limits { window_ms: 0, ..limits() };
    assert!(matches!(Limiter::open_file(&path.0, Some(&bad)), Err(Error::InvalidLimits(_))));
    assert!(!path.0.exists());
    // An empty file, attach only.
    std::fs::write(&path.0, b"").unwrap();
    match Limiter::open_file(&path.0, None) {
        Err(Error::IncompatibleRegion(why)) => assert!(why.contains("is empty"), "{why}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // A file holding something else, with or without limits: untouched.
    let garbage: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    std::fs::write(&path.0, &garbage).unwrap();
    for l in [None, Some(&limits())] {
        assert!(matches!(Limiter::open_file(&path.0, l), Err(Error::IncompatibleRegion(_))));
        assert_eq!(std::fs::read(&path.0).unwrap(), garbage);
    }
    // A NUL byte in the path, and a directory.
    assert!(matches!(Limiter::open_file("/dev/shm/a\0b", None), Err(Error::InvalidArgument(_))));
    assert!(matches!(Limiter::open_file("/dev/shm", Some(&limits())), Err(Error::Io { errno: libc::EISDIR, .. })));
}

#[test]
#[cfg_attr(miri, ignore = "maps files")]
fn a_region_file_cut_short_is_refused_not_mapped_past_its_end() {
    // M6: a file shrunk while no process had it open. Attach sizes its
    // mapping from the file and checks the region fits before touching any
    // of it, so a cut file is an error (with or without limits: never
    // reformatted), not a SIGBUS, and it is left as it was. (A file shrunk
    // while mapped cannot be refused: Linux seals only memfd files, so the
    // README says not to resize it.)
    let path = ShmPath::new("cut");
    let full = Limiter::region_size(&limits()).unwrap();
    drop(Limiter::open_file(&path.0, Some(&limits())).unwrap());
    let file = std::fs::OpenOptions::new().write(true).open(&path.0).unwrap();
    for len in [full - 1, full / 2, 4096, 100] {
        file.set_len(len as u64).unwrap();
        for l in [None, Some(&limits())] {
            match Limiter::open_file(&path.0, l) {
                // Shorter than the header: the header's size is what it needs.
                Err(Error::RegionTooSmall { needed, given }) => {
                    assert_eq!(given, len);
                    assert!(needed == full || (len < 4096 && needed > len), "needs {needed}");
                }
                other => panic!("{len} bytes: {:?}", other.map(|_| ())),
            }
            assert_eq!(std::fs::metadata(&path.0).unwrap().len(), len as u64, "left as it was");
        }
    }
}
