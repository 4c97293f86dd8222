//! `efa-perf validate`: random READ, WRITE and WRITE_WITH_NOTIFY requests (patterns, offsets,
//! lengths, peers drawn from a seed) from one engine to N target engines, every byte checked on
//! both sides.
//!
//! All engines live in this process, each on its own fabric instance (sim, tcp on loopback, or
//! the verbs/efa device), so the validator reads the targets' memory directly: after each batch
//! it compares the target ranges WRITEs placed and the local ranges READs filled with a shadow
//! copy, and at the end every byte of every segment and each target's notification counts.
//! Requests of one batch never overlap on either side (the fabrics complete them in any order).

use anyhow::{anyhow, bail, Context};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use transport::discovery::{DiscoveryConfig, PeerMetadata};
use transport::fabric::Fabric;
use transport::{
    Access, Engine, EngineConfig, LocalRegistry, Location, Metadata, Opcode, OwnedMemory,
    RemoteSegment, Request, RequestStatus, SegmentId,
};

/// Mismatched bytes reported one by one; the rest are counted.
pub const FIRST_MISMATCHES: usize = 10;
/// Notification tags the validator draws from.
const TAGS: u32 = 8;

/// Where the engines publish and find segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MetadataChoice {
    /// One in-process registry shared by the engines.
    Local,
    /// Peer-to-peer discovery over TCP on loopback: one server per engine, segments opened as
    /// `host:port/name`.
    P2p,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Target engines.
    pub peers: u32,
    /// Requests in all.
    pub ops: u64,
    /// Longest request in bytes.
    pub max_len: u64,
    /// Bytes of each target segment.
    pub segment: u64,
    /// Requests per batch.
    pub batch: u32,
    /// Seed of every random choice.
    pub seed: u64,
    /// Metadata backend.
    pub metadata: MetadataChoice,
    /// Bound on each batch's wait.
    pub timeout: Duration,
    /// Engine settings (slice size).
    pub slice_size: Option<u64>,
    /// Flip one byte of a target after a WRITE lands, before it is checked (proves the check).
    pub corrupt: bool,
}

/// One byte that differs from what it should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Segment name.
    pub segment: String,
    /// Offset in the segment.
    pub offset: u64,
    /// The byte it should hold.
    pub expected: u8,
    /// The byte it holds.
    pub got: u8,
}

/// What a run did and found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The seed (print it to repeat the run).
    pub seed: u64,
    /// Requests by opcode: READ, WRITE, WRITE_WITH_NOTIFY.
    pub ops: [u64; 3],
    /// Bytes the requests moved.
    pub bytes_moved: u64,
    /// Bytes compared with the shadow copies.
    pub bytes_checked: u64,
    /// Notifications sent and counted at the targets.
    pub notifications: (u64, u64),
    /// Requests that did not complete, with their status.
    pub failed: Vec<(u64, RequestStatus)>,
    /// The first mismatched bytes.
    pub mismatches: Vec<Mismatch>,
    /// All mismatched bytes the checks after each batch found.
    pub mismatch_count: u64,
    /// Mismatched bytes in the final pass over every segment (stray writes show only here).
    pub final_mismatch_count: u64,
    /// The byte flipped on purpose (`--inject-corruption`): segment and offset.
    pub corrupted: Option<(String, u64)>,
    /// How long it took.
    pub elapsed: Duration,
}

impl Report {
    /// Whether every request completed and every byte and notification matched.
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
            && self.mismatch_count == 0
            && self.final_mismatch_count == 0
            && self.notifications.0 == self.notifications.1
    }

    fn compare(&mut self, segment: &str, base: u64, expected: &[u8], got: &[u8]) {
        self.bytes_checked += expected.len() as u64;
        if expected == got {
            return;
        }
        for (i, (&e, &g)) in expected.iter().zip(got).enumerate() {
            if e != g {
                self.mismatch_count += 1;
                if self.mismatches.len() < FIRST_MISMATCHES {
                    self.mismatches.push(Mismatch {
                        segment: segment.to_string(),
                        offset: base + i as u64,
                        expected: e,
                        got: g,
                    });
                }
            }
        }
    }

    /// The report as text, one fact per line.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let [r, w, n] = self.ops;
        let _ = writeln!(s, "seed: {}", self.seed);
        let _ = writeln!(
            s,
            "ops: READ {r}, WRITE {w}, WRITE_WITH_NOTIFY {n} ({} in {:.2} s)",
            r + w + n,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "bytes moved: {}, bytes checked: {}",
            self.bytes_moved, self.bytes_checked
        );
        let _ = writeln!(
            s,
            "notifications: {} sent, {} counted at the targets",
            self.notifications.0, self.notifications.1
        );
        let _ = writeln!(s, "failed requests: {}", self.failed.len());
        for (i, st) in self.failed.iter().take(FIRST_MISMATCHES) {
            let _ = writeln!(s, "  request {i}: {st:?}");
        }
        let _ = writeln!(
            s,
            "mismatched bytes: {} after their batch, {} in the final pass over every segment",
            self.mismatch_count, self.final_mismatch_count
        );
        for m in &self.mismatches {
            let _ = writeln!(
                s,
                "  mismatch: segment {} offset {:#x}: expected {:#04x}, got {:#04x}",
                m.segment, m.offset, m.expected, m.got
            );
        }
        let all = self.mismatch_count + self.final_mismatch_count;
        if all > self.mismatches.len() as u64 {
            let _ = writeln!(s, "  ... (the first {} shown)", self.mismatches.len());
        }
        s
    }
}

/// SplitMix64: a fixed, tiny generator, so a seed names the same run in every build.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A target engine, its segment as opened by the initiator, and the bytes it should hold.
struct Target {
    engine: Engine,
    name: String,
    segment: SegmentId,
    remote: RemoteSegment,
    shadow: Vec<u8>,
    notified: [u64; TAGS as usize],
}

/// The initiator and its targets.
pub struct Rig {
    initiator: Engine,
    local: SegmentId,
    local_shadow: Vec<u8>,
    targets: Vec<Target>,
    /// Discovery servers (p2p), kept alive for the run.
    _discovery: Vec<Arc<PeerMetadata>>,
}

const LOCAL_NAME: &str = "validate/initiator";

impl Rig {
    /// Engines on `fabrics` (the first is the initiator, one target per other), segments
    /// registered and opened.
    ///
    /// # Errors
    ///
    /// Engine creation, registration, discovery and opening segments, with their cause.
    pub fn new(fabrics: Vec<Arc<dyn Fabric>>, o: &Options, rng_seed: u64) -> anyhow::Result<Rig> {
        if fabrics.len() < 2 || fabrics.len() != o.peers as usize + 1 {
            bail!(
                "validate needs an initiator and {} peers: {} fabric instances given",
                o.peers,
                fabrics.len()
            );
        }
        let registry: Arc<dyn Metadata> = Arc::new(LocalRegistry::new());
        let mut discovery = Vec::new();
        let mut engines = Vec::new();
        for (i, fabric) in fabrics.into_iter().enumerate() {
            let name = format!("validate-{i}");
            let mut cfg = EngineConfig::new(&name);
            cfg.notify_tags = TAGS;
            cfg.slice_size = o.slice_size;
            let meta: Arc<dyn Metadata> = match o.metadata {
                MetadataChoice::Local => registry.clone(),
                MetadataChoice::P2p => {
                    let m = PeerMetadata::bind(DiscoveryConfig {
                        bind: ([127, 0, 0, 1], 0).into(),
                        ..DiscoveryConfig::new(&name)
                    })
                    .with_context(|| format!("starting discovery for {name}"))?;
                    m.attach_fabric(fabric.clone());
                    discovery.push(m.clone());
                    m
                }
            };
            let engine = Engine::new(cfg, fabric, meta)
                .with_context(|| format!("creating engine {name}"))?;
            engines.push(engine);
        }
        let mut rng = Rng(rng_seed);
        let initiator = engines.remove(0);
        let local_len = o.batch as u64 * o.max_len;
        let local = register(
            &initiator,
            LOCAL_NAME,
            vec![0; local_len as usize],
            Access::NONE,
        )?;
        let mut targets = Vec::new();
        for (i, engine) in engines.into_iter().enumerate() {
            let name = format!("validate/peer{}", i + 1);
            let mut shadow = vec![0u8; o.segment as usize];
            rng.fill(&mut shadow);
            let segment = register(&engine, &name, shadow.clone(), Access::REMOTE_READ_WRITE)?;
            let path = match o.metadata {
                MetadataChoice::Local => {
                    // The target side of the handshake discovery does over p2p (fabrics that
                    // answer the initiator, such as efa's two-sided protocol, need it).
                    engine
                        .accept_peer(&initiator.local_addresses())
                        .with_context(|| format!("peer {} accepting the initiator", i + 1))?;
                    name.clone()
                }
                MetadataChoice::P2p => format!("{}/{name}", discovery[i + 1].local_addr()),
            };
            let remote = initiator
                .open_segment(&path)
                .with_context(|| format!("opening {path}"))?;
            targets.push(Target {
                engine,
                name,
                segment,
                remote,
                shadow,
                notified: [0; TAGS as usize],
            });
        }
        Ok(Rig {
            initiator,
            local,
            local_shadow: vec![0; local_len as usize],
            targets,
            _discovery: discovery,
        })
    }

    /// The initiator first, then the targets.
    pub fn engines(&self) -> Vec<Engine> {
        std::iter::once(self.initiator.clone())
            .chain(self.targets.iter().map(|t| t.engine.clone()))
            .collect()
    }
}

fn register(
    engine: &Engine,
    name: &str,
    bytes: Vec<u8>,
    access: Access,
) -> anyhow::Result<SegmentId> {
    let len = bytes.len();
    let mem = OwnedMemory::from_vec(bytes).map_err(|e| anyhow!("allocating {len} bytes: {e}"))?;
    engine
        .register_owned(name, mem, Location::Cpu(0), access)
        .with_context(|| format!("registering {name} ({len} bytes)"))
}

/// One planned request and what it must leave behind.
struct Planned {
    request: Request,
    target: usize,
    local_off: u64,
    remote_off: u64,
    len: u64,
    write: bool,
}

/// Opcodes the initiator's fabric supports, in the validator's rows.
fn opcodes(engine: &Engine) -> anyhow::Result<Vec<usize>> {
    let caps = engine.capabilities();
    let mut v = Vec::new();
    if caps.supports_read {
        v.push(0);
    }
    if caps.supports_write {
        v.push(1);
        if caps.supports_notify {
            v.push(2);
        }
    }
    if v.is_empty() {
        bail!("the fabric supports neither READ nor WRITE");
    }
    Ok(v)
}

/// Draws the requests of one batch: no two overlap on the initiator (each has its own
/// `max_len` slot) nor on a target.
fn plan(rig: &mut Rig, o: &Options, rng: &mut Rng, n: u32, ops: &[usize]) -> Vec<Planned> {
    let mut out: Vec<Planned> = Vec::with_capacity(n as usize);
    for k in 0..n as u64 {
        let target = rng.below(rig.targets.len() as u64) as usize;
        let row = ops[rng.below(ops.len() as u64) as usize];
        let mut len = 1 + rng.below(o.max_len);
        let local_off = k * o.max_len + rng.below(o.max_len - len + 1);
        let overlaps = |off: u64, len: u64, out: &[Planned]| {
            out.iter().any(|p| {
                p.target == target && off < p.remote_off + p.len && p.remote_off < off + len
            })
        };
        // Draws for a free target range, halving the length every 8 misses in a crowded batch.
        let mut remote_off = None;
        for attempt in 1..=64 {
            let off = rng.below(o.segment - len + 1);
            if !overlaps(off, len, &out) {
                remote_off = Some(off);
                break;
            }
            if attempt % 8 == 0 {
                len = len.div_ceil(2);
            }
        }
        let Some(remote_off) = remote_off else {
            continue;
        };
        let t = &mut rig.targets[target];
        let write = row != 0;
        let request = if write {
            let tag = rng.below(TAGS as u64) as u32;
            let r = Request::write(rig.local, local_off, t.remote, remote_off, len);
            if row == 2 {
                t.notified[tag as usize] += 1;
                r.with_op(Opcode::WriteWithNotify(tag))
            } else {
                r
            }
        } else {
            Request::read(rig.local, local_off, t.remote, remote_off, len)
        };
        let (l, r) = (local_off as usize, remote_off as usize);
        if write {
            rng.fill(&mut rig.local_shadow[l..l + len as usize]);
            t.shadow[r..r + len as usize].copy_from_slice(&rig.local_shadow[l..l + len as usize]);
        } else {
            let src = &t.shadow[r..r + len as usize];
            rig.local_shadow[l..l + len as usize].copy_from_slice(src);
        }
        out.push(Planned {
            request,
            target,
            local_off,
            remote_off,
            len,
            write,
        });
    }
    out
}

/// Runs the validation on a rig.
///
/// # Errors
///
/// Only when the run cannot go on (a submit refused, an engine call failing); failed requests
/// and mismatches are in the report.
pub fn run(rig: &mut Rig, o: &Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut report = Report {
        seed: o.seed,
        ..Report::default()
    };
    let mut rng = Rng(o.seed ^ 0x5eed);
    let ops = opcodes(&rig.initiator)?;
    let mut worker = rig.initiator.worker()?;
    let mut batch = rig.initiator.allocate_batch(o.batch as usize)?;
    let mut done = 0u64;
    while done < o.ops {
        let n = (o.ops - done).min(o.batch as u64) as u32;
        let planned = plan(rig, o, &mut rng, n, &ops);
        if planned.is_empty() {
            bail!("no room for a request in the peers' segments: give a larger --segment-size");
        }
        for p in planned.iter().filter(|p| p.write) {
            let l = p.local_off as usize;
            let bytes = &rig.local_shadow[l..l + p.len as usize];
            rig.initiator.write_owned(rig.local, p.local_off, bytes)?;
        }
        let requests: Vec<Request> = planned.iter().map(|p| p.request).collect();
        worker
            .submit(batch, &requests)
            .context("submitting a batch")?;
        let status = worker.wait(batch, o.timeout)?;
        if !status.all_completed() {
            for i in 0..requests.len() {
                let st = rig.initiator.request_status(batch, i)?;
                if st != RequestStatus::Completed {
                    report.failed.push((done + i as u64, st));
                }
            }
            worker.drain(batch, o.timeout)?;
        }
        if report.corrupted.is_none() && o.corrupt {
            report.corrupted = corrupt_one(rig, &planned)?;
        }
        check_batch(rig, &planned, &mut report)?;
        for p in &planned {
            report.ops[match p.request.op {
                Opcode::Read => 0,
                Opcode::Write => 1,
                Opcode::WriteWithNotify(_) => 2,
            }] += 1;
            report.bytes_moved += p.len;
        }
        done += planned.len() as u64;
        batch = rig.initiator.recycle_batch(batch)?;
    }
    check_all(rig, &mut report, o.timeout)?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Flips one byte a WRITE of the batch placed; returns where, if there was such a WRITE.
fn corrupt_one(rig: &Rig, planned: &[Planned]) -> anyhow::Result<Option<(String, u64)>> {
    let Some(p) = planned.iter().find(|p| p.write) else {
        return Ok(None);
    };
    let t = &rig.targets[p.target];
    let mut b = [0u8; 1];
    t.engine.read_owned(t.segment, p.remote_off, &mut b)?;
    t.engine.write_owned(t.segment, p.remote_off, &[!b[0]])?;
    eprintln!(
        "validate: corrupted segment {} offset {:#x} on purpose (--inject-corruption)",
        t.name, p.remote_off
    );
    Ok(Some((t.name.clone(), p.remote_off)))
}

/// Compares what this batch's requests should have left: target ranges of WRITEs, local ranges
/// of READs.
fn check_batch(rig: &Rig, planned: &[Planned], report: &mut Report) -> anyhow::Result<()> {
    let mut got = Vec::new();
    for p in planned {
        got.resize(p.len as usize, 0);
        let (name, expected, base) = if p.write {
            let t = &rig.targets[p.target];
            t.engine.read_owned(t.segment, p.remote_off, &mut got)?;
            let r = p.remote_off as usize;
            (t.name.as_str(), &t.shadow[r..r + got.len()], p.remote_off)
        } else {
            rig.initiator.read_owned(rig.local, p.local_off, &mut got)?;
            let l = p.local_off as usize;
            (LOCAL_NAME, &rig.local_shadow[l..l + got.len()], p.local_off)
        };
        report.compare(name, base, expected, &got);
    }
    Ok(())
}

/// Compares every byte of every segment, and the notification counts (waiting up to `timeout`
/// for notifications still on their way).
fn check_all(rig: &Rig, report: &mut Report, timeout: Duration) -> anyhow::Result<()> {
    let mut whole = Report::default();
    let mut got = vec![0u8; rig.local_shadow.len()];
    rig.initiator.read_owned(rig.local, 0, &mut got)?;
    whole.compare(LOCAL_NAME, 0, &rig.local_shadow, &got);
    for t in &rig.targets {
        got.resize(t.shadow.len(), 0);
        t.engine.read_owned(t.segment, 0, &mut got)?;
        whole.compare(&t.name, 0, &t.shadow, &got);
    }
    report.bytes_checked += whole.bytes_checked;
    report.final_mismatch_count = whole.mismatch_count;
    // The batch checks name the first bad bytes; the final pass adds those it alone found.
    for m in whole.mismatches {
        if report.mismatches.len() < FIRST_MISMATCHES && !report.mismatches.contains(&m) {
            report.mismatches.push(m);
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        let (mut sent, mut seen) = (0, 0);
        for t in &rig.targets {
            for tag in 0..TAGS {
                sent += t.notified[tag as usize];
                seen += t.engine.notifications().count(tag)?;
            }
        }
        report.notifications = (sent, seen);
        if seen >= sent || Instant::now() >= deadline {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use transport::fabric::sim::{SimConfig, SimFabric, SimNetwork};

    fn sim_rig(o: &Options) -> Rig {
        let net = SimNetwork::new();
        let fabrics: Vec<Arc<dyn Fabric>> = (0..=o.peers)
            .map(|_| SimFabric::new(&net, SimConfig::default()).unwrap() as Arc<dyn Fabric>)
            .collect();
        Rig::new(fabrics, o, o.seed).unwrap()
    }

    fn options() -> Options {
        Options {
            peers: 3,
            ops: 400,
            max_len: 10_000,
            segment: 1 << 16,
            batch: 16,
            seed: 42,
            metadata: MetadataChoice::Local,
            timeout: Duration::from_secs(10),
            slice_size: Some(4096),
            corrupt: false,
        }
    }

    #[test]
    fn clean_run_over_sim_checks_every_byte() {
        let o = options();
        let mut rig = sim_rig(&o);
        let r = run(&mut rig, &o).unwrap();
        assert!(r.ok(), "{}", r.render());
        assert_eq!(r.ops.iter().sum::<u64>(), 400);
        assert!(r.ops.iter().all(|&n| n > 50), "{:?}", r.ops);
        // The batch checks plus the final pass over all 3 targets and the local buffer.
        assert!(r.bytes_checked >= r.bytes_moved + 3 * (1 << 16) + 16 * 10_000);
        assert_eq!(r.notifications.0, r.ops[2]);
        let m = rig.initiator.metrics();
        assert_eq!(m.submitted(), 400);
        assert_eq!(m.bytes(), r.bytes_moved);
    }

    #[test]
    fn the_same_seed_draws_the_same_run() {
        let o = Options {
            ops: 100,
            ..options()
        };
        let a = run(&mut sim_rig(&o), &o).unwrap();
        let b = run(&mut sim_rig(&o), &o).unwrap();
        assert_eq!((a.ops, a.bytes_moved), (b.ops, b.bytes_moved));
    }

    #[test]
    fn a_corrupted_target_byte_is_caught_with_its_address() {
        let o = Options {
            corrupt: true,
            ..options()
        };
        let mut rig = sim_rig(&o);
        let r = run(&mut rig, &o).unwrap();
        assert!(!r.ok());
        assert!(r.mismatch_count >= 1, "{}", r.render());
        // The first mismatch is the flipped byte, at its address.
        let (segment, offset) = r.corrupted.clone().unwrap();
        let m = &r.mismatches[0];
        assert_eq!((&m.segment, m.offset), (&segment, offset));
        assert_eq!(m.got, !m.expected);
        assert!(r
            .render()
            .contains(&format!("segment {segment} offset {offset:#x}")));
    }

    #[test]
    fn p2p_metadata_works_too() {
        let o = Options {
            ops: 64,
            metadata: MetadataChoice::P2p,
            ..options()
        };
        let r = run(&mut sim_rig(&o), &o).unwrap();
        assert!(r.ok(), "{}", r.render());
    }
}
