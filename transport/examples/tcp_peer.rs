//! A tcp-fabric engine as a separate process, for multi-process and network-namespace tests and
//! the loopback benchmark.
//!
//! ```text
//! tcp_peer serve --data IP:PORT --discovery IP:PORT [--size BYTES] [--seed N] [--lifetime SECS]
//!                [--stdin]
//!     Registers segment `data` (read-write for peers) filled with pattern(seed), prints
//!     `READY <discovery address>`, then serves until --lifetime passes (or, with --stdin, until
//!     stdin closes). With --stdin it answers `verify OFFSET LEN SEED` lines with `ok` or
//!     `mismatch at N`.
//! tcp_peer run --peer IP:PORT [--total BYTES] [--chunk BYTES] [--seed N] [--timeout SECS]
//!              [--rounds N] [--bind IP]
//!     Opens IP:PORT/data, writes pattern(seed) over the first --total bytes in --chunk
//!     requests, reads it back and compares byte for byte. Exit 0: all verified; 3: bounded
//!     failure (requests failed or timed out; data that did transfer is verified); 4: the peer
//!     could not be opened; 1: corrupted data.
//! tcp_peer bench --peer IP:PORT [--size BYTES] [--seconds S] [--rails N] [--batch N]
//!     1 MiB (--size) WRITEs for S seconds; prints `bench: <GB/s> GB/s`.
//! ```

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::exit;
use std::time::{Duration, Instant};

use transport::discovery::{DiscoveryConfig, PeerMetadata};
use transport::fabric::tcp::{TcpConfig, TcpFabric};
use transport::*;

/// Test data: byte `p` of the stream for `seed` is byte `p % 8` of a hash of `p / 8`. Built a
/// word at a time so it is quick even in debug builds.
fn pattern(seed: u64, off: u64, len: usize) -> Vec<u8> {
    let mix = |w: u64| {
        let mut z = w.wrapping_add(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let skip = (off % 8) as usize;
    let mut v = Vec::with_capacity(len + 16);
    for w in off / 8..(off + len as u64).div_ceil(8) {
        v.extend_from_slice(&mix(w).to_le_bytes());
    }
    v.drain(..skip);
    v.truncate(len);
    v
}

struct Args(HashMap<String, String>);

impl Args {
    fn parse(rest: &[String]) -> Args {
        let mut m = HashMap::new();
        let mut i = 0;
        while i < rest.len() {
            let k = rest[i].trim_start_matches("--").to_string();
            if i + 1 < rest.len() && !rest[i + 1].starts_with("--") {
                m.insert(k, rest[i + 1].clone());
                i += 2;
            } else {
                m.insert(k, String::new());
                i += 1;
            }
        }
        Args(m)
    }
    fn get<T: std::str::FromStr>(&self, k: &str, default: T) -> T {
        match self.0.get(k) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("tcp_peer: bad value {v:?} for --{k}");
                exit(2)
            }),
        }
    }
    fn has(&self, k: &str) -> bool {
        self.0.contains_key(k)
    }
}

/// `e` and its causes (the loader's or the OS's error), `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let causes = std::iter::successors(Some(e), |e| e.source()).map(|e| e.to_string());
    causes.collect::<Vec<_>>().join(": ")
}

fn engine(name: &str, tcp: TcpConfig, disc: SocketAddr) -> (Engine, std::sync::Arc<PeerMetadata>) {
    let fabric = TcpFabric::new(tcp).unwrap_or_else(|e| {
        eprintln!("tcp_peer: {}", chain(&e));
        exit(4)
    });
    let mut dc = DiscoveryConfig::new(name);
    dc.bind = disc;
    let meta = PeerMetadata::bind(dc).unwrap_or_else(|e| {
        eprintln!("tcp_peer: {}", chain(&e));
        exit(4)
    });
    meta.attach_fabric(fabric.clone());
    let mut ec = EngineConfig::new(name);
    ec.slice_size = Some(1 << 20);
    let engine = Engine::new(ec, fabric, meta.clone()).unwrap();
    (engine, meta)
}

fn serve(a: &Args) {
    let size: usize = a.get("size", 64 << 20);
    let seed: u64 = a.get("seed", 1);
    let tcp = TcpConfig {
        bind: a.get("data", "127.0.0.1:0".parse().unwrap()),
        rails: a.get("rails", 1),
        ..TcpConfig::default()
    };
    let disc = a.get("discovery", "127.0.0.1:0".parse().unwrap());
    let (engine, meta) = engine("peer", tcp, disc);
    let mem = OwnedMemory::from_vec(pattern(seed, 0, size)).unwrap();
    let seg = engine
        .register_owned("data", mem, Location::Cpu(0), Access::REMOTE_READ_WRITE)
        .unwrap();
    println!("READY {}", meta.local_addr());
    std::io::stdout().flush().unwrap();
    let lifetime = Duration::from_secs(a.get("lifetime", 600));
    if !a.has("stdin") {
        std::thread::sleep(lifetime);
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let end = Instant::now() + lifetime;
    while let Ok(line) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        if line.starts_with("verify") && f.len() == 3 {
            let mut got = vec![0u8; f[1] as usize];
            let reply = match engine.read_owned(seg, f[0], &mut got) {
                Err(e) => format!("error {e}"),
                Ok(()) => match got
                    .iter()
                    .zip(pattern(f[2], f[0], got.len()))
                    .position(|(g, w)| *g != w)
                {
                    None => "ok".to_string(),
                    Some(i) => format!("mismatch at {}", f[0] + i as u64),
                },
            };
            println!("{reply}");
        } else {
            println!("error unknown command {line:?}");
        }
        std::io::stdout().flush().unwrap();
    }
}

fn statuses(engine: &Engine, batch: BatchId, n: usize) -> Vec<RequestStatus> {
    (0..n)
        .map(|i| {
            engine
                .request_status(batch, i)
                .unwrap_or(RequestStatus::TimedOut)
        })
        .collect()
}

fn run(a: &Args) {
    let peer: String = a.get("peer", String::new());
    let total: usize = a.get("total", 64 << 20);
    let chunk: usize = a.get("chunk", 1 << 20);
    let seed: u64 = a.get("seed", 7);
    let rounds: u32 = a.get("rounds", 1);
    let timeout = Duration::from_secs(a.get("timeout", 5));
    let bind_ip: std::net::IpAddr = a.get("bind", "127.0.0.1".parse().unwrap());
    let tcp = TcpConfig {
        bind: SocketAddr::new(bind_ip, 0),
        rails: a.get("rails", 2),
        timeout,
        connect_timeout: timeout,
        ..TcpConfig::default()
    };
    let (engine, _meta) = engine("runner", tcp, SocketAddr::new(bind_ip, 0));
    let t0 = Instant::now();
    let remote = match engine.open_segment(&format!("{peer}/data")) {
        Ok(r) => r,
        Err(e) => {
            println!(
                "run: unreachable ({e}) after {:.1}s",
                t0.elapsed().as_secs_f64()
            );
            exit(4)
        }
    };
    let n = total.div_ceil(chunk);
    let src = engine
        .register_owned(
            "src",
            OwnedMemory::from_vec(pattern(seed, 0, total)).unwrap(),
            Location::Cpu(0),
            Access::NONE,
        )
        .unwrap();
    let sink = engine
        .register_owned(
            "sink",
            OwnedMemory::zeroed(total, 4096).unwrap(),
            Location::Cpu(0),
            Access::NONE,
        )
        .unwrap();
    let mut w = engine.worker().unwrap();
    let mut failed = 0usize;
    let mut reasons = std::collections::BTreeMap::new();
    let mut bytes = 0u64;
    for round in 0..rounds {
        let batch = engine.allocate_batch(n).unwrap();
        let reqs: Vec<Request> = (0..n)
            .map(|i| {
                let off = (i * chunk) as u64;
                let len = chunk.min(total - i * chunk) as u64;
                Request::write(src, off, remote, off, len)
            })
            .collect();
        println!("run: writing round {round}");
        std::io::stdout().flush().unwrap();
        w.submit(batch, &reqs).unwrap();
        w.wait(batch, timeout * 4).unwrap();
        let wst = statuses(&engine, batch, n);
        let _ = w.drain(batch, timeout * 2);
        let _ = engine.free_batch(batch);
        // Read back only what was written.
        let ok: Vec<usize> = (0..n)
            .filter(|&i| wst[i] == RequestStatus::Completed)
            .collect();
        let batch = engine.allocate_batch(n).unwrap();
        let reads: Vec<Request> = ok
            .iter()
            .map(|&i| {
                let off = (i * chunk) as u64;
                let len = chunk.min(total - i * chunk) as u64;
                Request::read(sink, off, remote, off, len)
            })
            .collect();
        if !reads.is_empty() {
            w.submit(batch, &reads).unwrap();
            w.wait(batch, timeout * 4).unwrap();
        }
        let rst = statuses(&engine, batch, reads.len());
        let _ = w.drain(batch, timeout * 2);
        let _ = engine.free_batch(batch);
        let mut got = vec![0u8; total];
        engine.read_owned(sink, 0, &mut got).unwrap();
        let want = pattern(seed, 0, total);
        for (k, &i) in ok.iter().enumerate() {
            if rst[k] != RequestStatus::Completed {
                continue;
            }
            let (s, e) = (i * chunk, (i * chunk + chunk).min(total));
            if got[s..e] == want[s..e] {
                bytes += (e - s) as u64;
                continue;
            }
            if let Some(p) = got[s..e].iter().zip(&want[s..e]).position(|(g, w)| g != w) {
                println!("run: CORRUPT at offset {} (round {round})", s + p);
                exit(1);
            }
            bytes += (e - s) as u64;
        }
        for st in wst.iter().chain(rst.iter()) {
            if *st != RequestStatus::Completed {
                failed += 1;
                *reasons.entry(format!("{st:?}")).or_insert(0) += 1;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if failed == 0 {
        println!("run: ok verified={bytes} bytes in {secs:.2}s");
        exit(0)
    }
    println!("run: failed requests={failed} {reasons:?} verified={bytes} bytes in {secs:.2}s");
    exit(3)
}

fn bench(a: &Args) {
    let peer: String = a.get("peer", String::new());
    let size: usize = a.get("size", 1 << 20);
    let per_batch: usize = a.get("batch", 32);
    let seconds: f64 = a.get("seconds", 5.0);
    let tcp = TcpConfig {
        rails: a.get("rails", 1),
        queue_depth: a.get("depth", 64),
        socket_buffer: a.0.get("sockbuf").and_then(|v| v.parse().ok()),
        ..TcpConfig::default()
    };
    let (engine, _meta) = engine("bench", tcp, "127.0.0.1:0".parse().unwrap());
    let remote = engine.open_segment(&format!("{peer}/data")).unwrap();
    let rlen = engine.remote_descriptor(remote).unwrap().len as usize;
    let span = rlen.min(per_batch * size);
    let src = engine
        .register_owned(
            "src",
            OwnedMemory::from_vec(pattern(3, 0, span)).unwrap(),
            Location::Cpu(0),
            Access::NONE,
        )
        .unwrap();
    let reqs: Vec<Request> = (0..span / size)
        .map(|i| {
            Request::write(
                src,
                (i * size) as u64,
                remote,
                (i * size) as u64,
                size as u64,
            )
        })
        .collect();
    let mut w = engine.worker().unwrap();
    let mut batches = [
        engine.allocate_batch(reqs.len()).unwrap(),
        engine.allocate_batch(reqs.len()).unwrap(),
    ];
    // Warm up, then keep two batches in flight so the stream never drains between them.
    w.submit(batches[0], &reqs).unwrap();
    w.wait(batches[0], Duration::from_secs(30)).unwrap();
    batches[0] = engine.recycle_batch(batches[0]).unwrap();
    let t0 = Instant::now();
    let mut bytes = 0u64;
    w.submit(batches[0], &reqs).unwrap();
    let mut k = 0;
    loop {
        let other = 1 - k;
        if t0.elapsed().as_secs_f64() < seconds {
            w.submit(batches[other], &reqs).unwrap();
        }
        let st = w.wait(batches[k], Duration::from_secs(30)).unwrap();
        assert!(st.all_completed(), "bench transfer failed: {st:?}");
        bytes += (reqs.len() * size) as u64;
        batches[k] = engine.recycle_batch(batches[k]).unwrap();
        if engine.batch_status(batches[other]).unwrap().submitted == 0 {
            break;
        }
        k = other;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "bench: {:.3} GB/s ({bytes} bytes in {secs:.2}s, {size}-byte WRITEs)",
        bytes as f64 / secs / 1e9
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let a = Args::parse(args.get(2..).unwrap_or(&[]));
    match args.get(1).map(String::as_str) {
        Some("serve") => serve(&a),
        Some("run") => run(&a),
        Some("bench") => bench(&a),
        _ => {
            eprintln!("usage: tcp_peer serve|run|bench [options] (see the source header)");
            exit(2)
        }
    }
}
