//! efa-perf's control protocol as its server meets it: arbitrary bytes from a client, read as
//! bounded lines and run through the server's sequence (hello, a SEND test's queue-pair
//! addresses, then runs until bye). Never a panic; no line longer than the limit is accepted;
//! whatever is accepted is within the server's bounds (memory, message size, queue pairs); and
//! every message that decodes re-encodes to one that decodes to the same text (floats to within
//! a few ulps).
#![no_main]

use std::io::{BufReader, Cursor};

use efa_perf::control::{self, LineError, Metric, Msg, Step, Verb, SERVER_MAX_MEMORY};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the server's test and a small line limit (so long lines are reached).
    let (&pick, rest) = data.split_first().unwrap_or((&0, &[]));
    let verb = [Verb::Send, Verb::Write, Verb::Read, Verb::Notify][pick as usize % 4];
    let metric = [Metric::Bw, Metric::Lat][(pick as usize / 3) % 2];
    let max_line = 16 + (pick as usize >> 3) * 64;
    // A tiny buffer, so lines straddle refills as they do on a socket.
    let mut reader = BufReader::with_capacity(7, Cursor::new(rest));
    let mut stripe = None;
    let mut streams = 1;
    // Bounded: each turn consumes at least one byte or ends the loop.
    for _ in 0..=rest.len() {
        let line = match control::read_line(&mut reader, max_line) {
            Ok(line) => line,
            Err(LineError::Closed | LineError::Truncated) => break,
            Err(LineError::TooLong(n)) => {
                assert_eq!(n, max_line);
                break;
            }
            Err(LineError::NotUtf8) => break,
            Err(LineError::Io(e)) => panic!("a cursor read failed: {e}"),
            Err(e) => panic!("an error the target does not know: {e}"),
        };
        assert!(line.len() <= max_line && line.ends_with('\n'));
        let msg = match control::parse(&line) {
            Ok(m) => m,
            Err(_) => break,
        };
        round_trip(&msg);
        match stripe {
            None => match control::check_hello(msg, verb, metric) {
                Ok(h) => {
                    assert!(h.stripe >= 1 && h.streams >= 1);
                    assert!(h.stripe * h.streams as u64 <= SERVER_MAX_MEMORY);
                    stripe = Some(h.stripe);
                    streams = h.streams;
                }
                Err(_) => break,
            },
            // A SEND test's queue-pair addresses: one per stream, 24-bit QP numbers.
            Some(_) if matches!(msg, Msg::Qps { .. }) => match control::check_qps(msg, streams) {
                Ok(peer) => {
                    assert!(peer.max_msg_sz >= 1 && peer.qps.len() == streams as usize);
                    assert!(peer.qps.iter().all(|q| q.qpn <= 0x00ff_ffff));
                    assert!(peer.region.map_or(true, |r| r.len >= 1 && r.addr.checked_add(r.len).is_some()));
                }
                Err(_) => break,
            },
            Some(s) => match control::check_step(msg, s) {
                Ok(Step::Run { size, .. }) => assert!(size >= 1 && size <= s),
                Ok(Step::Bye) | Err(_) => break,
            },
        }
    }
    // Whole input as one message, unbounded by lines.
    if let Ok(text) = std::str::from_utf8(rest) {
        if let Ok(msg) = control::parse(text) {
            round_trip(&msg);
        }
    }
});

/// Encoding a decoded message and decoding it again changes nothing, but for the last bits of a
/// float: serde_json's default float parser (without its `float_roundtrip` feature) may land an
/// ulp or so off on long literals such as `555555555555515555512.5`, which a CPU percentage
/// does not care about (found by this target; `seeds/perf_control/float_ulp`).
fn round_trip(msg: &Msg) {
    let once = serde_json::to_string(msg).expect("a decoded message encodes");
    let again: Msg = serde_json::from_str(&once).expect("an encoded message decodes");
    match (msg, &again) {
        (
            Msg::Result {
                cpu_percent: a,
                streams: sa,
            },
            Msg::Result {
                cpu_percent: b,
                streams: sb,
            },
        ) => {
            assert!(
                (a - b).abs() <= a.abs().max(b.abs()) * 8.0 * f64::EPSILON,
                "cpu_percent {a} came back as {b}"
            );
            assert_eq!(
                serde_json::to_string(sa).unwrap(),
                serde_json::to_string(sb).unwrap()
            );
        }
        _ => assert_eq!(serde_json::to_string(&again).unwrap(), once),
    }
}
