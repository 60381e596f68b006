//! The node as a real process: with one worker, the thread that serves uses a
//! descriptor table no other thread shares (so the kernel skips a file reference per
//! socket call; `threads.rs` in the node says why), requests are served, and signals
//! still reach it with the log writers started apart.

mod common;

use std::time::{Duration, Instant};

use common::process::NodeProcess;
use common::*;
use strait_chaos::mock::{MockConfig, MockUpstream};

/// Whether two threads share one descriptor table, by `kcmp(KCMP_FILES)`.
fn same_table(a: i32, b: i32) -> bool {
    const KCMP_FILES: libc::c_long = 2;
    // SAFETY: `kcmp` compares two tasks' kernel objects; it reads and writes no memory
    // of this process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            a as libc::c_long,
            b as libc::c_long,
            KCMP_FILES,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    };
    match r {
        0 => true,
        -1 => {
            let e = std::io::Error::last_os_error();
            // A thread that ended between the listing and the call is not sharing.
            if e.raw_os_error() == Some(libc::ESRCH) {
                return false;
            }
            panic!("kcmp(KCMP_FILES) is needed to compare descriptor tables: {e}");
        }
        _ => false,
    }
}

/// The process's threads other than its main one.
fn other_threads(pid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the node's /proc entry")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&tid| tid != pid)
        .collect()
}

#[tokio::test]
async fn the_serving_thread_shares_its_descriptor_table_with_no_other_thread() {
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let upstream_keys = UPSTREAM_KEYS.join(",");
    let access_log = tempfile::NamedTempFile::new().unwrap();
    let access_path = access_log.path().to_str().unwrap().to_string();
    let node = NodeProcess::spawn(
        &[
            "--upstream",
            mock.url(),
            "--workers",
            "1",
            "--access-log-file",
            &access_path,
        ],
        &[
            ("STRAIT_UPSTREAM_KEYS", &upstream_keys),
            ("STRAIT_CLIENT_KEYS", CLIENT_KEY),
        ],
    );
    let pid = node.proc.child.id() as i32;
    let url = format!("{}/v1/messages", node.url());
    for _ in 0..3 {
        let r = post_json(&url, &auth(CLIENT_KEY), &message_body(false)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // The deferral spool's blocking threads share the table while they work (its
    // consumers look at the queue every second) and end 10 ms after: look until a
    // moment with none of them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (others, sharing) = loop {
        let others = other_threads(pid);
        let sharing: Vec<i32> = others
            .iter()
            .copied()
            .filter(|&t| same_table(pid, t))
            .collect();
        if sharing.is_empty() || Instant::now() > deadline {
            break (others, sharing);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let names: Vec<String> = sharing
        .iter()
        .map(|t| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/comm"));
            comm.unwrap_or_default().trim().to_string()
        })
        .collect();
    assert!(
        sharing.is_empty(),
        "for 10 s these threads shared the serving thread's table: {names:?}"
    );
    // The check means something only if the log writers and jemalloc's purger exist.
    assert!(
        others.len() >= 2,
        "{} other threads: expected at least the two log writers",
        others.len()
    );

    // SIGTERM still drains the node: the writers run with signals blocked, so the
    // handler runs on the serving thread, whose table holds tokio's signal pipe.
    node.signal("TERM");
    let (code, log) = node.exited(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("drained"), "{log}");
    let lines = std::fs::read_to_string(access_log.path()).unwrap();
    assert_eq!(lines.lines().count(), 3, "access lines: {lines}");
}
