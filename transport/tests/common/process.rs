//! Signals to peer processes a test spawned, and waiting for the kernel to show their effect.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// Sends `sig` to the child `pid` (spawned by the test and not reaped).
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: `kill` on the pid of a child the test spawned and has not reaped.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// Stops `pid` with SIGSTOP and returns only once the kernel shows it stopped: the signal is
/// asynchronous, and a peer that still runs for a moment could serve the next request.
pub fn stop(pid: u32) {
    signal(pid, libc::SIGSTOP);
    wait_for_state(pid, 'T');
}

/// Waits (bounded) until `/proc/PID/stat` shows the process in `state`.
pub fn wait_for_state(pid: u32, state: char) {
    let path = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(&path).unwrap();
        // The state follows the command name, which is in parentheses and may itself hold spaces.
        let now = stat[stat.rfind(')').unwrap() + 1..]
            .trim_start()
            .chars()
            .next();
        if now == Some(state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} not in state {state} after 10 s: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The lines of `reader` (a child's stdout, this process's stdin), read on their own thread, as
/// a channel: taken with `recv_timeout`, nothing waits for ever.
pub fn lines_of(reader: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// What follows `prefix` on the next line from `lines` that starts with it; other lines are
/// skipped. Panics if none comes within 30 s.
pub fn expect_line(lines: &Receiver<String>, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if l.starts_with(prefix) => return l[prefix.len()..].trim().to_string(),
            Ok(_) => continue,
            Err(e) => panic!("peer said no {prefix:?} in time: {e}"),
        }
    }
}
