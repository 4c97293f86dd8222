//! Signals to peer processes a test spawned, and waiting for the kernel to show their effect.
#![allow(dead_code)]

use std::io::BufRead;
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

/// This process's stdin, line by line, read on its own thread: how a peer process takes its
/// commands, with `recv_timeout` so it never waits for ever.
pub fn stdin_lines() -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
