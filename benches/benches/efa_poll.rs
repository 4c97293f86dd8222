//! The efa fabric's CQ polling against its completion-counter gate
//! (`EfaConfig::completion_counters`) and against WRITEs posted without inline data, on the EFA device of this host (soft-efa's newest
//! profile where there is no EFA), the two alternating block by block in one run:
//!
//! - **poll while in flight**: thread CPU per `Worker::progress` call while a 16 MiB WRITE
//!   (256 slices) is in flight in loopback, and how many calls a transfer takes: most polls of
//!   this phase find nothing, which is where the gate replaces a provider CQ poll with a read
//!   of host memory;
//! - **8 B WRITE, batch 32**: thread CPU per request of a whole submit-to-complete round; a
//!   third configuration polls its CQ with inline WRITEs off (`EfaConfig::inline_write`), the
//!   reference of the small WRITEs the fabric posts inline.
//!
//! Prints medians over the blocks and each configuration's ratio to CQ polling. Exits with a
//! note, not a failure, where the device or library has no completion counters.
//!
//! Run: `cargo bench -p efa-benches --features efa --bench efa_poll` under soft-efa:
//! `LD_LIBRARY_PATH=$(tests/soft-efa/run --release --lib-dir) SOFT_EFA_PROFILE=newest`.

use std::sync::Arc;
use std::time::Duration;

use efa_benches::thread_cpu;
use transport::fabric::efa::{EfaConfig, EfaFabric};
use transport::*;

const SEG: usize = 16 << 20;
const WAIT: Duration = Duration::from_secs(60);

/// An initiator engine, its peer, a source segment and the peer's segment, in loopback.
struct Pair {
    a: Engine,
    _b: Engine,
    src: SegmentId,
    dst: RemoteSegment,
}

fn pair(counters: bool, inline: bool) -> Result<Pair, Box<dyn std::error::Error>> {
    let meta = Arc::new(LocalRegistry::new());
    let mk = |name: &str| -> Result<Engine, TransportError> {
        let f = EfaFabric::new(EfaConfig {
            completion_counters: counters,
            inline_write: inline,
            ..EfaConfig::default()
        })?;
        Engine::new(EngineConfig::new(name), f, meta.clone())
    };
    let (a, b) = (mk("a")?, mk("b")?);
    a.accept_peer(&b.local_addresses())?;
    b.accept_peer(&a.local_addresses())?;
    let src = a.register_owned(
        "a/src",
        OwnedMemory::from_vec(vec![0x5a; SEG])?,
        Location::Cpu(0),
        Access::NONE,
    )?;
    b.register_owned(
        "b/dst",
        OwnedMemory::from_vec(vec![0; SEG])?,
        Location::Cpu(0),
        Access::REMOTE_WRITE,
    )?;
    let dst = a.open_segment("b/dst")?;
    Ok(Pair { a, _b: b, src, dst })
}

/// One 16 MiB WRITE polled to completion with `progress`: (thread CPU per call, calls).
fn in_flight(p: &Pair, w: &mut Worker, batch: &mut BatchId) -> (f64, u64) {
    *batch = p.a.recycle_batch(*batch).expect("recycle");
    let batch = *batch;
    let req = [Request::write(p.src, 0, p.dst, 0, SEG as u64)];
    w.submit(batch, &req).expect("submit");
    let (t0, mut calls) = (thread_cpu(), 0u64);
    while !p.a.batch_status(batch).expect("status").is_done() {
        w.progress();
        calls += 1;
    }
    let cpu = thread_cpu() - t0;
    (cpu.as_nanos() as f64 / calls as f64, calls)
}

/// `rounds` rounds of 32 8-byte WRITEs: thread CPU per request.
fn small(p: &Pair, w: &mut Worker, batch: &mut BatchId, rounds: u32) -> f64 {
    let reqs: Vec<Request> = (0..32u64)
        .map(|i| Request::write(p.src, i * 8, p.dst, i * 8, 8))
        .collect();
    let t0 = thread_cpu();
    for _ in 0..rounds {
        *batch = p.a.recycle_batch(*batch).expect("recycle");
        w.submit(*batch, &reqs).expect("submit");
        let st = w.wait(*batch, WAIT).expect("wait");
        assert!(st.all_completed(), "{st:?}");
    }
    (thread_cpu() - t0).as_nanos() as f64 / f64::from(rounds * 32)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The configurations measured, the first the reference of the ratios.
const PATHS: [(&str, bool, bool); 3] = [
    // (name, completion_counters, inline_write)
    ("CQ polling", false, true),
    ("completion counters", true, true),
    ("CQ polling, inline WRITE off", false, false),
];

fn main() {
    let blocks: usize = std::env::var("EFA_POLL_BLOCKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let pairs: Result<Vec<Pair>, _> = PATHS
        .iter()
        .map(|&(_, counters, inline)| pair(counters, inline))
        .collect();
    let pairs = match pairs {
        Ok(p) => p,
        Err(e) => {
            println!("efa_poll: skipped, no EFA device with completion counters here: {e}");
            return;
        }
    };
    let mut workers: Vec<(Worker, BatchId)> = pairs
        .iter()
        .map(|p| (p.a.worker().unwrap(), p.a.allocate_batch(32).unwrap()))
        .collect();
    // [measure][path] -> per-block figures.
    let mut figures = vec![vec![Vec::new(); PATHS.len()]; 3];
    for block in 0..=blocks {
        for (i, p) in pairs.iter().enumerate() {
            let (w, b) = &mut workers[i];
            let (ns, n) = in_flight(p, w, b);
            let per_op = small(p, w, b, 200);
            if block > 0 {
                // Block 0 warms every path up.
                figures[0][i].push(ns);
                figures[1][i].push(n as f64);
                figures[2][i].push(per_op);
            }
        }
    }
    let names = [
        "thread CPU per poll, 16 MiB WRITE in flight (ns)",
        "polls per 16 MiB WRITE",
        "thread CPU per request, 8 B WRITE batch 32 (ns)",
    ];
    print!("| measure (median of {blocks} blocks) |");
    PATHS.iter().for_each(|(n, ..)| print!(" {n} |"));
    println!(" ratios to {} |", PATHS[0].0);
    println!("| --- |{} --- |", " ---: |".repeat(PATHS.len()));
    for (name, per_path) in names.iter().zip(&mut figures) {
        let med: Vec<f64> = per_path.iter_mut().map(|v| median(v)).collect();
        print!("| {name} |");
        med.iter().for_each(|m| print!(" {m:.1} |"));
        let ratios: Vec<String> = med[1..]
            .iter()
            .map(|m| format!("{:.2}", m / med[0]))
            .collect();
        println!(" {} |", ratios.join(" / "));
    }
}
