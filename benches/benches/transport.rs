//! Transport (sim fabric) benchmarks.
//!
//! - `submit_complete/{8B,64KiB}/{1,32,256}`: one iteration = recycle a batch, submit `n`
//!   WRITEs, wait for all; throughput in elements, so criterion's time / n is ns per op.
//! - `write_1MiB/{sim_write,sim_write_unsliced,memcpy}`: one 1 MiB WRITE through the engine
//!   (default 64 KiB slices, and one 1 MiB slice) beside a plain copy of the same size, all as
//!   bytes/s in one group.
//!
//! Both groups run twice: by wall-clock time, then (`*_cpu`) by the benchmark thread's CPU time,
//! which stays meaningful when other work shares the machine's cores.
//!
//! - `submit_complete/8B_metrics_off/32`: `8B/32` on an engine with `EngineConfig::metrics`
//!   off.
//!
//! Before criterion runs, a probe counts heap allocations per op over a warm steady state
//! (8 B, batch 32) and prints wall and thread-CPU ns per op, then runs 8 B batch-32 rounds
//! with metrics on and off interleaved and prints both figures and their ratio.
//! `TRANSPORT_BENCH_PROBE_ONLY=rounds` stops after the allocation probe, and
//! `TRANSPORT_BENCH_PROBE_METRICS=0` runs that probe without metrics (for instruction counts of
//! both under callgrind).
//!
//! Run: `cargo bench -p efa-benches --bench transport`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkId, Criterion, Throughput};
use efa_benches::thread_cpu;
use transport::fabric::sim::{SimConfig, SimFabric, SimNetwork};
use transport::*;

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator and only bumps an atomic counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SEG: usize = 32 << 20;

struct Setup {
    _net: Arc<SimNetwork>,
    a: Engine,
    _b: Engine,
    src: SegmentId,
    remote: RemoteSegment,
}

fn setup() -> Setup {
    setup_with(DEFAULT_SLICE_SIZE)
}

fn setup_with(slice_size: u64) -> Setup {
    setup_full(slice_size, true)
}

fn setup_full(slice_size: u64, metrics: bool) -> Setup {
    let net = SimNetwork::new();
    let meta = Arc::new(LocalRegistry::new());
    let engine = |name: &str| {
        let fabric = SimFabric::new(&net, SimConfig::default()).unwrap();
        let mut cfg = EngineConfig::new(name);
        cfg.slice_size = Some(slice_size);
        cfg.metrics = metrics;
        Engine::new(cfg, fabric, meta.clone()).unwrap()
    };
    let (a, b) = (engine("a"), engine("b"));
    let src = a
        .register_owned(
            "a/src",
            OwnedMemory::from_vec(vec![0x5A; SEG]).unwrap(),
            Location::Cpu(0),
            Access::NONE,
        )
        .unwrap();
    b.register_owned(
        "b/dst",
        OwnedMemory::from_vec(vec![0; SEG]).unwrap(),
        Location::Cpu(0),
        Access::REMOTE_WRITE,
    )
    .unwrap();
    let remote = a.open_segment("b/dst").unwrap();
    Setup {
        _net: net,
        a,
        _b: b,
        src,
        remote,
    }
}

fn requests(s: &Setup, n: usize, size: u64) -> Vec<Request> {
    (0..n as u64)
        .map(|i| Request::write(s.src, i * size, s.remote, i * size, size))
        .collect()
}

/// One submit-to-complete round; returns the recycled batch handle.
#[inline]
fn round(s: &Setup, w: &mut Worker, batch: BatchId, reqs: &[Request]) -> BatchId {
    let batch = s.a.recycle_batch(batch).unwrap();
    w.submit(batch, reqs).unwrap();
    let st = w.wait(batch, Duration::from_secs(10)).unwrap();
    debug_assert_eq!(st.completed as usize, reqs.len());
    black_box(st);
    batch
}

/// Criterion measurement by thread CPU time: what the benchmarked code costs on the core it
/// runs on, unaffected by time spent descheduled when other work shares the machine.
struct ThreadCpu;

struct NanosFormatter;

impl ValueFormatter for NanosFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (div, unit) = match typical {
            t if t < 1e3 => (1.0, "ns"),
            t if t < 1e6 => (1e3, "µs"),
            t if t < 1e9 => (1e6, "ms"),
            _ => (1e9, "s"),
        };
        values.iter_mut().for_each(|v| *v /= div);
        unit
    }

    fn scale_throughputs(
        &self,
        typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let (per_iter, unit, div) = match *throughput {
            Throughput::Bytes(b) | Throughput::BytesDecimal(b) => {
                (b as f64, "GiB/s (cpu)", (1u64 << 30) as f64)
            }
            Throughput::Elements(e) => (e as f64, "Melem/s (cpu)", 1e6),
        };
        let _ = typical;
        values
            .iter_mut()
            .for_each(|v| *v = per_iter * 1e9 / *v / div);
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &NanosFormatter
    }
}

fn alloc_probe() {
    // TRANSPORT_BENCH_PROBE_METRICS=0: the probe's engine without metrics (instruction counts of
    // both under callgrind).
    let metrics = std::env::var("TRANSPORT_BENCH_PROBE_METRICS").map_or(true, |v| v != "0");
    let s = setup_full(DEFAULT_SLICE_SIZE, metrics);
    let mut w = s.a.worker().unwrap();
    let reqs = requests(&s, 32, 8);
    let mut batch = s.a.allocate_batch(32).unwrap();
    let rounds: u64 = std::env::var("TRANSPORT_BENCH_PROBE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    for _ in 0..rounds.min(10_000) {
        batch = round(&s, &mut w, batch, &reqs);
    }
    let ops = (rounds * 32) as f64;
    let before = ALLOCS.load(Ordering::Relaxed);
    let (t, cpu) = (Instant::now(), thread_cpu());
    for _ in 0..rounds {
        batch = round(&s, &mut w, batch, &reqs);
    }
    let wall = t.elapsed().as_nanos() as f64 / ops;
    let cpu = (thread_cpu() - cpu).as_nanos() as f64 / ops;
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    println!(
        "probe (8 B WRITE, batch 32, {ops} ops, one thread): {wall:.1} ns/op wall, {cpu:.1} ns/op thread CPU, \
         {allocs} allocations ({:.4} per op)",
        allocs as f64 / ops
    );
    if std::env::var_os("TRANSPORT_BENCH_PROBE_ONLY").is_some_and(|v| v == "rounds") {
        std::process::exit(0);
    }
    interleaved_metrics();
    interleaved_1mib(DEFAULT_SLICE_SIZE);
    interleaved_1mib(1 << 20);
    if std::env::var_os("TRANSPORT_BENCH_PROBE_ONLY").is_some() {
        std::process::exit(0);
    }
}

/// 8 B batch-32 rounds with metrics on and off, interleaved block by block in one run so load
/// changes hit both alike; prints the median ns per op of each and their ratio.
fn interleaved_metrics() {
    let (on, off) = (
        setup_full(DEFAULT_SLICE_SIZE, true),
        setup_full(DEFAULT_SLICE_SIZE, false),
    );
    let (mut won, mut woff) = (on.a.worker().unwrap(), off.a.worker().unwrap());
    let (ron, roff) = (requests(&on, 32, 8), requests(&off, 32, 8));
    let (mut bon, mut boff) = (
        on.a.allocate_batch(32).unwrap(),
        off.a.allocate_batch(32).unwrap(),
    );
    let blocks: usize = std::env::var("TRANSPORT_BENCH_METRICS_BLOCKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    const ROUNDS: u32 = 200;
    let (mut cpu_on, mut cpu_off, mut wall_on, mut wall_off) = (vec![], vec![], vec![], vec![]);
    for i in 0..blocks + 10 {
        let (t, c) = (Instant::now(), thread_cpu());
        for _ in 0..ROUNDS {
            bon = round(&on, &mut won, bon, &ron);
        }
        let (w1, c1) = (t.elapsed(), thread_cpu() - c);
        let (t, c) = (Instant::now(), thread_cpu());
        for _ in 0..ROUNDS {
            boff = round(&off, &mut woff, boff, &roff);
        }
        let (w2, c2) = (t.elapsed(), thread_cpu() - c);
        if i >= 10 {
            wall_on.push(w1);
            cpu_on.push(c1);
            wall_off.push(w2);
            cpu_off.push(c2);
        }
    }
    let per_op = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_nanos() as f64 / (ROUNDS as f64 * 32.0)
    };
    let (con, coff, won_, woff_) = (
        per_op(&mut cpu_on),
        per_op(&mut cpu_off),
        per_op(&mut wall_on),
        per_op(&mut wall_off),
    );
    let m = on.a.metrics();
    println!(
        "interleaved 8 B batch 32, metrics on/off ({blocks} block pairs of {ROUNDS} rounds, medians): \
         on {con:.1} ns/op CPU / {won_:.1} wall, off {coff:.1} ns/op CPU / {woff_:.1} wall, \
         ratio (on / off) {:.3} CPU, {:.3} wall; {} requests counted, latency p50 <= {:?}",
        con / coff,
        won_ / woff_,
        m.completed,
        m.latency.quantile(0.5).unwrap_or_default()
    );
}

/// 1 MiB WRITE and memcpy interleaved iteration by iteration, so load changes on a shared
/// machine hit both alike; prints median times and the ratio.
fn interleaved_1mib(slice_size: u64) {
    const MIB: usize = 1 << 20;
    let s = setup_with(slice_size);
    let mut w = s.a.worker().unwrap();
    let reqs = requests(&s, 1, MIB as u64);
    let mut batch = s.a.allocate_batch(1).unwrap();
    let src = vec![0x5Au8; MIB];
    let mut dst = vec![0u8; MIB];
    let iters: usize = std::env::var("TRANSPORT_BENCH_INTERLEAVED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let (mut sim_w, mut sim_c, mut cpy_w, mut cpy_c) = (vec![], vec![], vec![], vec![]);
    for i in 0..iters + 200 {
        let (t, c) = (Instant::now(), thread_cpu());
        batch = round(&s, &mut w, batch, &reqs);
        let (sw, sc) = (t.elapsed(), thread_cpu() - c);
        let (t, c) = (Instant::now(), thread_cpu());
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
        let (cw, cc) = (t.elapsed(), thread_cpu() - c);
        if i >= 200 {
            sim_w.push(sw);
            sim_c.push(sc);
            cpy_w.push(cw);
            cpy_c.push(cc);
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_nanos() as f64
    };
    let (sw, sc, cw, cc) = (
        median(&mut sim_w),
        median(&mut sim_c),
        median(&mut cpy_w),
        median(&mut cpy_c),
    );
    println!(
        "interleaved 1 MiB, {} KiB slices ({iters} pairs, medians): sim_write {:.1} µs wall / {:.1} µs CPU, \
         memcpy {:.1} µs wall / {:.1} µs CPU, ratio (memcpy time / sim time) {:.2} wall, {:.2} CPU",
        slice_size >> 10,
        sw / 1e3,
        sc / 1e3,
        cw / 1e3,
        cc / 1e3,
        cw / sw,
        cc / sc
    );
}

fn submit_complete<M: Measurement>(c: &mut Criterion<M>, group: &str) {
    let s = setup();
    let mut w = s.a.worker().unwrap();
    let mut g = c.benchmark_group(group);
    for (label, size) in [("8B", 8u64), ("64KiB", 64 << 10)] {
        for n in [1usize, 32, 256] {
            let reqs = requests(&s, n, size);
            let mut batch = s.a.allocate_batch(n).unwrap();
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::new(label, n), &n, |b, _| {
                b.iter(|| batch = round(&s, &mut w, batch, &reqs))
            });
            s.a.free_batch(batch).unwrap();
        }
    }
    // The same 8 B batch-32 round on an engine with metrics off, to compare with `8B/32`.
    let off = setup_full(DEFAULT_SLICE_SIZE, false);
    let mut w_off = off.a.worker().unwrap();
    let reqs = requests(&off, 32, 8);
    let mut batch = off.a.allocate_batch(32).unwrap();
    g.throughput(Throughput::Elements(32));
    g.bench_with_input(BenchmarkId::new("8B_metrics_off", 32), &32, |b, _| {
        b.iter(|| batch = round(&off, &mut w_off, batch, &reqs))
    });
    g.finish();
}

fn write_1mib<M: Measurement>(c: &mut Criterion<M>, group: &str) {
    const MIB: usize = 1 << 20;
    // The default 64 KiB slices (16 work requests) and whole-request slices (1 work request).
    let sliced = setup();
    let whole = setup_with(MIB as u64);
    let mut ws = sliced.a.worker().unwrap();
    let mut ww = whole.a.worker().unwrap();
    let (rs, rw) = (
        requests(&sliced, 1, MIB as u64),
        requests(&whole, 1, MIB as u64),
    );
    let mut bs = sliced.a.allocate_batch(1).unwrap();
    let mut bw = whole.a.allocate_batch(1).unwrap();
    let src = vec![0x5Au8; MIB];
    let mut dst = vec![0u8; MIB];
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Bytes(MIB as u64));
    g.bench_function("sim_write", |b| {
        b.iter(|| bs = round(&sliced, &mut ws, bs, &rs))
    });
    g.bench_function("sim_write_unsliced", |b| {
        b.iter(|| bw = round(&whole, &mut ww, bw, &rw))
    });
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        })
    });
    g.finish();
}

fn main() {
    alloc_probe();
    let wall = Criterion::<WallTime>::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut c = wall;
    submit_complete(&mut c, "submit_complete");
    write_1mib(&mut c, "write_1MiB");
    c.final_summary();
    // The same groups by thread CPU time, for figures that hold on a shared machine.
    let mut c = Criterion::default()
        .with_measurement(ThreadCpu)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    submit_complete(&mut c, "submit_complete_cpu");
    write_1mib(&mut c, "write_1MiB_cpu");
    c.final_summary();
}
