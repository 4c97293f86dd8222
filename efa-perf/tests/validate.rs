//! `efa-perf validate` on the built binary: clean runs over sim and tcp (both metadata backends)
//! exit 0, a corrupted peer byte and bad options exit non-zero; `--stats` and `--counters` report.

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_efa-perf"))
        .arg("validate")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run efa-perf")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn clean_runs_over_sim_and_tcp_pass() {
    for args in [
        &["--fabric", "sim", "--ops", "500", "--peers", "3"][..],
        &[
            "--fabric", "tcp", "--ops", "500", "--peers", "2", "--seed", "11",
        ],
        &[
            "--fabric",
            "tcp",
            "--ops",
            "200",
            "--metadata",
            "p2p",
            "--max-len",
            "100K",
        ],
    ] {
        let out = run(args);
        let t = text(&out);
        assert!(out.status.success(), "{args:?}: {t}");
        assert!(t.contains("validate: OK"), "{t}");
        assert!(
            t.contains("mismatched bytes: 0 after their batch, 0 in the final pass"),
            "{t}"
        );
        assert!(t.contains("\nops: READ "), "{t}");
    }
}

#[test]
fn the_seed_is_printed_and_repeats_the_run() {
    let a = text(&run(&["--fabric", "sim", "--ops", "100", "--seed", "99"]));
    let b = text(&run(&["--fabric", "sim", "--ops", "100", "--seed", "99"]));
    assert!(a.contains("--seed 99"), "{a}");
    let ops = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("ops:"))
            .unwrap()
            .split(" (")
            .next()
            .unwrap()
            .to_string()
    };
    let moved = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("bytes moved"))
            .unwrap()
            .to_string()
    };
    assert_eq!((ops(&a), moved(&a)), (ops(&b), moved(&b)));
}

#[test]
fn a_corrupted_peer_byte_fails_the_run_and_is_named() {
    for fabric in ["sim", "tcp"] {
        let out = run(&[
            "--fabric",
            fabric,
            "--ops",
            "200",
            "--seed",
            "5",
            "--inject-corruption",
        ]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{t}");
        let flipped = t
            .lines()
            .find_map(|l| l.strip_prefix("validate: corrupted segment "))
            .expect("the corruption is announced")
            .split(" on purpose")
            .next()
            .unwrap()
            .to_string();
        assert!(t.contains(&format!("mismatch: segment {flipped}:")), "{t}");
        assert!(t.contains("validate: FAILED (seed 5)"), "{t}");
    }
}

#[test]
fn stats_and_counters_report_after_the_run() {
    let out = run(&[
        "--fabric",
        "sim",
        "--ops",
        "100",
        "--stats",
        "--counters",
        "--prometheus",
        "127.0.0.1:0",
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("efa-perf: metrics at http://127.0.0.1:"), "{t}");
    assert!(t.contains("stats[validate-0]: requests READ"), "{t}");
    // No RDMA device behind sim: a one-line note, not a failure.
    assert!(t.contains("hw_counters: "), "{t}");
}

#[test]
fn bad_options_are_refused() {
    let out = run(&["--fabric", "sim", "--max-len", "2M", "--segment-size", "1M"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("--max-len 2097152 is larger than --segment-size 1048576"));
    assert_eq!(run(&["--peers", "0"]).status.code(), Some(2));
}
