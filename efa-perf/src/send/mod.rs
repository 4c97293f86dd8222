//! `send-bw` and `send-lat` as perftest runs them: two-sided SEND/RECV straight on the `efa`
//! crate, with no transport engine between. SRD queue pairs on EFA devices (every SEND names its
//! peer by address handle, QP number and Q_Key), RC queue pairs on other verbs devices
//! (Soft-RoCE, ConnectX). Each side keeps its receive queues full (receives reposted in batches as
//! they complete), `-q` queue pairs share one send and one receive CQ polled by one thread, and
//! messages go up to the port's `max_msg_sz`.
//!
//! Across processes the queue-pair addresses travel over efa-perf's control connection:
//!
//! ```text
//! client                                   server
//!   Hello {verb: send, streams, depth, stripe = largest message} ->
//!                                       <-   Qps {max_msg_sz, qps}
//!   Qps {max_msg_sz, qps}               ->   (address handles, or RC connections)
//!                                       <-   Linked
//!   then per size Run / Go / Finished / Result as the engine's tests, Bye
//! ```
//!
//! Over `sim` and `tcp`, which have no SEND of their own, the test runs the engine's
//! WRITE_WITH_NOTIFY measure instead ([`resolve`]) and the banner names it (`notify_bw`).

mod error;
mod plan;
mod pump;
mod side;

pub use error::SendError;

use crate::bench::{self, Plan};
use crate::cli::{Metric, TestArgs, Verb};
use crate::cpu;
use crate::loopback::combine;
use crate::measure::StreamResult;
use crate::record::Document;
use crate::remote::{self, Control};
use crate::runner::{Amount, BwMeasurement, LatMeasurement, Point, Runner, Setup};
use crate::select::{FabricKind, Selection};
use anyhow::{anyhow, bail, Context as _};
use efa_perf::control::{self, Hello, Msg, RunAmount, Step, StreamSummary, PROTOCOL};
use pump::{BwRun, Meet, UNKNOWN};
use side::{Options, Side};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Whether `verb` over `kind` is a real SEND on a verbs device (this module's test).
pub fn is_raw(verb: Verb, kind: FabricKind) -> bool {
    verb == Verb::Send && matches!(kind, FabricKind::Efa | FabricKind::Verbs)
}

/// The verb a test runs over `kind`: SEND needs a verbs device, so over `sim` and `tcp` a SEND
/// test measures the engine's WRITE_WITH_NOTIFY, and says so on stderr (the banner and the test
/// name say it too).
pub fn resolve(verb: Verb, kind: FabricKind) -> Verb {
    if verb == Verb::Send && !is_raw(verb, kind) {
        eprintln!(
            "efa-perf: the {kind} fabric has no SEND/RECV of its own; measuring the engine's \
             WRITE_WITH_NOTIFY instead (notify_bw / notify_lat); real SEND needs --fabric efa or verbs"
        );
        return Verb::Notify;
    }
    verb
}

/// The side's options from the command line and the test's shape.
fn options(
    selection: &Selection,
    args: &TestArgs,
    qps: u32,
    slot: u64,
    depth: u32,
    metric: Metric,
) -> anyhow::Result<Options> {
    let device = selection
        .device
        .clone()
        .or_else(|| args.device.clone())
        .ok_or_else(|| anyhow!("no {} device to run SEND on", selection.fabric))?;
    let gid_index = match selection.fabric {
        FabricKind::Efa => match args.gid_index {
            Some(g) if g != 0 => bail!("-x {g}: EFA devices have one GID (index 0)"),
            _ => None,
        },
        _ => args.gid_index,
    };
    let (tx_depth, rx_depth) = match metric {
        Metric::Bw => (depth, plan::RX_DEPTH_BW),
        Metric::Lat => (plan::TX_DEPTH_LAT, plan::RX_DEPTH_LAT),
    };
    Ok(Options {
        device,
        port: args.ib_port,
        gid_index,
        qps,
        slot,
        tx_depth,
        rx_depth,
    })
}

/// The plan's sizes within the port's `max_msg_sz`: a sweep (`-a`) drops what is larger and says
/// so; a single size larger than it is refused.
fn fit(plan: &Plan, max: u64, device: &str) -> Result<Plan, SendError> {
    let mut plan = plan.clone();
    if let [size] = plan.sizes[..] {
        plan::check_size(size, max, device)?;
        return Ok(plan);
    }
    let (kept, dropped) = plan::sweep_within(&plan.sizes, max);
    if let Some(d) = dropped {
        eprintln!(
            "efa-perf: sizes above {device}'s max_msg_sz ({max} bytes) are left out of the sweep \
             (up to {d} bytes)"
        );
    }
    if kept.is_empty() {
        let size = plan.sizes.iter().copied().min().unwrap_or(0);
        plan::check_size(size, max, device)?;
    }
    plan.sizes = kept;
    Ok(plan)
}

fn setup(selection: &Selection, side: &Side, mode: &str) -> Setup {
    let (transport_type, connection_type) = if side.efa {
        ("EFA", "SRD")
    } else {
        ("IB", "RC")
    };
    Setup {
        fabric: selection.fabric.to_string(),
        device: side.device.clone(),
        transport_type: transport_type.into(),
        connection_type: connection_type.into(),
        mode: mode.into(),
        reason: format!(
            "{}; two-sided SEND/RECV on the efa crate's {connection_type} queue pairs, receives kept posted",
            selection.reason
        ),
    }
}

/// Runs a SEND plan in this process or as the client of a server, and returns its document.
pub fn run(selection: &Selection, args: &TestArgs, plan: &Plan) -> anyhow::Result<Document> {
    let device = selection
        .device
        .clone()
        .or_else(|| args.device.clone())
        .ok_or_else(|| anyhow!("no {} device to run SEND on", selection.fabric))?;
    let max = side::max_msg_sz(&device, args.ib_port)?;
    let plan = fit(plan, max, &device)?;
    let slot = plan.sizes.iter().copied().max().unwrap_or(1);
    let o = options(selection, args, plan.streams, slot, plan.depth, plan.metric)?;
    let timeout = Duration::from_secs(args.timeout);
    if selection.loopback {
        let mut runner = Loopback::new(selection, &o, timeout)?;
        return bench::run(&mut runner, &plan);
    }
    let mut client = Client::connect(selection, args, &plan, &o)?;
    bench::run(&mut client, &plan)
}

/// Bandwidth figures from the sides' results.
fn measurement(
    p: &Point,
    results: &[StreamResult],
    cpu_client: f64,
    cpu_server: f64,
) -> BwMeasurement {
    let (total, windows) = combine(
        results,
        p.streams * if p.bidirectional { 2 } else { 1 },
        p.depth,
    );
    BwMeasurement {
        total,
        windows,
        cpu_client: p.cpu.then_some(cpu_client),
        cpu_server: p.cpu.then_some(cpu_server),
    }
}

fn bw_run(p: &Point, send: bool, timeout: Duration) -> BwRun {
    BwRun {
        size: p.size,
        amount: p.amount,
        depth: p.depth,
        send,
        start: Instant::now(),
        timeout,
    }
}

/// Runs `f` and raises `abort` when it fails, so the other side of the run stops waiting.
fn or_abort<T>(
    abort: &AtomicBool,
    f: impl FnOnce() -> Result<T, SendError>,
) -> Result<T, SendError> {
    let r = f();
    if r.is_err() {
        abort.store(true, Ordering::Release);
    }
    r
}

/// Both sides in this process, each on its own device context.
struct Loopback {
    client: Side,
    server: Side,
    setup: Setup,
    timeout: Duration,
}

impl Loopback {
    fn new(selection: &Selection, o: &Options, timeout: Duration) -> anyhow::Result<Self> {
        let mut client = Side::open(o)?;
        let mut server = Side::open(o)?;
        let (c, s) = (client.addresses(), server.addresses());
        client.connect(&s)?;
        server.connect(&c)?;
        let setup = setup(selection, &client, "loopback");
        Ok(Self {
            client,
            server,
            setup,
            timeout,
        })
    }
}

impl Runner for Loopback {
    fn setup(&self) -> Setup {
        self.setup.clone()
    }

    fn bandwidth(&mut self, p: &Point) -> anyhow::Result<BwMeasurement> {
        let (wall0, proc0) = (Instant::now(), cpu::process_cpu());
        self.client.begin_run();
        self.server.begin_run();
        let (c_sent, s_sent, none) = (
            AtomicU64::new(UNKNOWN),
            AtomicU64::new(UNKNOWN),
            AtomicU64::new(0),
        );
        let abort = AtomicBool::new(false);
        let c_run = bw_run(p, true, self.timeout);
        let s_run = BwRun {
            send: p.bidirectional,
            ..c_run
        };
        let c_meet = Meet {
            expect: if p.bidirectional { &s_sent } else { &none },
            sent: &c_sent,
            abort: &abort,
        };
        let s_meet = Meet {
            expect: &c_sent,
            sent: &s_sent,
            abort: &abort,
        };
        let (client, server) = (&mut self.client, &mut self.server);
        let (c, s) = std::thread::scope(|scope| {
            let h = scope.spawn(|| or_abort(&abort, || pump::bandwidth(server, &s_run, s_meet)));
            let c = or_abort(&abort, || pump::bandwidth(client, &c_run, c_meet));
            (c, h.join())
        });
        let s = s.map_err(|_| anyhow!("the server thread panicked"))?;
        let (c, s) = (c.context("client")?, s.context("server")?);
        let client_cpu = c.cpu;
        let results: Vec<StreamResult> = if p.bidirectional { vec![c, s] } else { vec![c] };
        let wall = wall0.elapsed();
        let rest = cpu::process_cpu()
            .saturating_sub(proc0)
            .saturating_sub(client_cpu);
        Ok(measurement(
            p,
            &results,
            cpu::percent(client_cpu, wall),
            cpu::percent(rest, wall),
        ))
    }

    fn latency(&mut self, p: &Point) -> anyhow::Result<LatMeasurement> {
        let (wall0, proc0) = (Instant::now(), cpu::process_cpu());
        self.client.begin_run();
        self.server.begin_run();
        let (stop, abort) = (AtomicBool::new(false), AtomicBool::new(false));
        let timeout = self.timeout;
        let (client, server) = (&mut self.client, &mut self.server);
        let (c, s) = std::thread::scope(|scope| {
            let h = scope.spawn(|| or_abort(&abort, || pump::pong(server, p.size, &stop, timeout)));
            let c = pump::ping(client, p.size, p.amount, timeout, &abort);
            stop.store(true, Ordering::Release);
            (c, h.join())
        });
        let answered = s
            .map_err(|_| anyhow!("the server thread panicked"))?
            .context("server")?;
        let (samples, client_cpu) = c.context("client")?;
        if answered != samples.len() as u64 {
            bail!(
                "the server answered {answered} pings, the client counted {}",
                samples.len()
            );
        }
        let wall = wall0.elapsed();
        let rest = cpu::process_cpu()
            .saturating_sub(proc0)
            .saturating_sub(client_cpu);
        Ok(LatMeasurement {
            samples_us: samples,
            cpu_client: p.cpu.then(|| cpu::percent(client_cpu, wall)),
            cpu_server: p.cpu.then(|| cpu::percent(rest, wall)),
        })
    }
}

/// The client of a server in another process.
struct Client {
    control: Control,
    side: Side,
    setup: Setup,
    timeout: Duration,
}

impl Client {
    fn connect(
        selection: &Selection,
        args: &TestArgs,
        plan: &Plan,
        o: &Options,
    ) -> anyhow::Result<Self> {
        let mut control = remote::dial(args)?;
        let mut side = Side::open(o)?;
        control.send(&Msg::Hello {
            protocol: PROTOCOL,
            fabric: selection.fabric.to_string(),
            verb: Verb::Send,
            metric: plan.metric,
            streams: plan.streams,
            depth: plan.depth,
            bidirectional: plan.bidirectional,
            stripe: o.slot,
        })?;
        let (peer_max, peers) = control::check_qps(control.recv()?, plan.streams)?;
        plan::check_size(o.slot, peer_max, "the server's device")?;
        control.send(&Msg::Qps {
            max_msg_sz: side.max_msg_sz,
            qps: side.addresses(),
        })?;
        side.connect(&peers)?;
        let Msg::Linked = control.recv()? else {
            bail!("server answered out of turn");
        };
        let setup = setup(selection, &side, "client");
        Ok(Self {
            control,
            side,
            setup,
            timeout: Duration::from_secs(args.timeout),
        })
    }

    fn start(&mut self, p: &Point) -> anyhow::Result<()> {
        let (iterations, duration_ms) = match p.amount {
            Amount::Iterations(n) => (Some(n), None),
            Amount::Duration(d) => (None, Some(d.as_millis() as u64)),
        };
        self.control.send(&Msg::Run {
            size: p.size,
            iterations,
            duration_ms,
        })?;
        match self.control.recv()? {
            Msg::Go => Ok(()),
            other => bail!("server answered {other:?} instead of go"),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.control.send(&Msg::Bye);
    }
}

/// Tells the server this side is done after `ops` operations; returns its CPU use and streams.
fn finish(control: &mut Control, ops: u64) -> anyhow::Result<(f64, Vec<StreamSummary>)> {
    control.send(&Msg::Finished { ops })?;
    match control.recv()? {
        Msg::Result {
            cpu_percent,
            streams,
        } => Ok((cpu_percent, streams)),
        other => bail!("server answered {other:?} instead of a result"),
    }
}

/// Waits until the pump publishes its sent count, or ends.
fn await_sent(sent: &AtomicU64, done: impl Fn() -> bool) -> Option<u64> {
    let mut spins = 0u32;
    loop {
        let n = sent.load(Ordering::Acquire);
        if n != UNKNOWN {
            return Some(n);
        }
        if done() {
            return None;
        }
        spins = spins.wrapping_add(1);
        crate::measure::relax(spins.max(64));
    }
}

impl Runner for Client {
    fn setup(&self) -> Setup {
        self.setup.clone()
    }

    fn bandwidth(&mut self, p: &Point) -> anyhow::Result<BwMeasurement> {
        self.side.begin_run();
        self.start(p)?;
        let (wall0, cpu0) = (Instant::now(), cpu::process_cpu());
        let sent = AtomicU64::new(UNKNOWN);
        let expect = AtomicU64::new(if p.bidirectional { UNKNOWN } else { 0 });
        let abort = AtomicBool::new(false);
        let run = bw_run(p, true, self.timeout);
        let meet = Meet {
            expect: &expect,
            sent: &sent,
            abort: &abort,
        };
        let Self { control, side, .. } = self;
        let (mine, theirs) = std::thread::scope(|scope| {
            let h = scope.spawn(|| pump::bandwidth(side, &run, meet));
            let theirs = match await_sent(&sent, || h.is_finished()) {
                Some(ops) => finish(control, ops),
                None => finish(control, 0),
            };
            match &theirs {
                Ok((_, streams)) => {
                    expect.store(streams.iter().map(|s| s.ops).sum(), Ordering::Release)
                }
                Err(_) => abort.store(true, Ordering::Release),
            }
            (h.join(), theirs)
        });
        let mine = mine.map_err(|_| anyhow!("the send thread panicked"))??;
        let (cpu_server, streams) = theirs?;
        let cpu_client = cpu::percent(cpu::process_cpu().saturating_sub(cpu0), wall0.elapsed());
        let mut results = vec![mine];
        results.extend(streams.into_iter().map(StreamResult::from));
        Ok(measurement(p, &results, cpu_client, cpu_server))
    }

    fn latency(&mut self, p: &Point) -> anyhow::Result<LatMeasurement> {
        self.side.begin_run();
        self.start(p)?;
        let (wall0, cpu0) = (Instant::now(), cpu::process_cpu());
        let never = AtomicBool::new(false);
        let r = pump::ping(&mut self.side, p.size, p.amount, self.timeout, &never);
        let cpu_client = cpu::percent(cpu::process_cpu().saturating_sub(cpu0), wall0.elapsed());
        let (samples, _) = match r {
            Ok(v) => v,
            Err(e) => {
                let _ = finish(&mut self.control, 0);
                return Err(e.into());
            }
        };
        let (cpu_server, _) = finish(&mut self.control, samples.len() as u64)?;
        Ok(LatMeasurement {
            samples_us: samples,
            cpu_client: p.cpu.then_some(cpu_client),
            cpu_server: p.cpu.then_some(cpu_server),
        })
    }
}

/// Serves a SEND test to the client on `control`, whose hello was `hello`, until it says bye.
pub fn serve(
    control: &mut Control,
    hello: &Hello,
    selection: &Selection,
    args: &TestArgs,
    metric: Metric,
) -> anyhow::Result<()> {
    let o = options(
        selection,
        args,
        hello.streams,
        hello.stripe,
        hello.depth,
        metric,
    )?;
    let mut side = Side::open(&o)?;
    control.send(&Msg::Qps {
        max_msg_sz: side.max_msg_sz,
        qps: side.addresses(),
    })?;
    let (_, peers) = control::check_qps(control.recv()?, hello.streams)?;
    side.connect(&peers)?;
    control.send(&Msg::Linked)?;
    let timeout = Duration::from_secs(args.timeout);
    loop {
        let (size, amount) = match control::check_step(control.recv()?, hello.stripe)? {
            Step::Run {
                size,
                amount: RunAmount::Iterations(n),
            } => (size, Amount::Iterations(n)),
            Step::Run {
                size,
                amount: RunAmount::Millis(ms),
            } => (size, Amount::Duration(Duration::from_millis(ms))),
            Step::Bye => {
                eprintln!("efa-perf: client {} finished", control.peer);
                return Ok(());
            }
        };
        let point = Point {
            verb: Verb::Send,
            size,
            amount,
            streams: hello.streams,
            depth: hello.depth,
            bidirectional: hello.bidirectional,
            cpu: true,
        };
        side.begin_run();
        let (wall0, cpu0) = (Instant::now(), cpu::process_cpu());
        let streams = match metric {
            Metric::Bw => serve_bw(control, &mut side, &point, timeout)?,
            Metric::Lat => serve_lat(control, &mut side, &point, timeout)?,
        };
        let cpu_percent = cpu::percent(cpu::process_cpu().saturating_sub(cpu0), wall0.elapsed());
        control.send(&Msg::Result {
            cpu_percent,
            streams,
        })?;
    }
}

/// The server's side of one bandwidth run: receives (and with `-b` sends) until the client's
/// count arrived.
fn serve_bw(
    control: &mut Control,
    side: &mut Side,
    p: &Point,
    timeout: Duration,
) -> anyhow::Result<Vec<StreamSummary>> {
    let (expect, sent) = (AtomicU64::new(UNKNOWN), AtomicU64::new(UNKNOWN));
    let abort = AtomicBool::new(false);
    let run = bw_run(p, p.bidirectional, timeout);
    let meet = Meet {
        expect: &expect,
        sent: &sent,
        abort: &abort,
    };
    let (r, finished) = std::thread::scope(|scope| {
        let h = scope.spawn(|| pump::bandwidth(side, &run, meet));
        let finished = control.send(&Msg::Go).and_then(|()| control.recv());
        match &finished {
            Ok(Msg::Finished { ops }) => expect.store(*ops, Ordering::Release),
            _ => abort.store(true, Ordering::Release),
        }
        (h.join(), finished)
    });
    let Msg::Finished { .. } = finished? else {
        bail!("client answered out of turn");
    };
    let r = r
        .map_err(|_| anyhow!("the receive thread panicked"))?
        .context("receiving SENDs")?;
    Ok(if p.bidirectional {
        vec![StreamSummary::from(&r)]
    } else {
        Vec::new()
    })
}

/// The server's side of one latency run: answers every ping.
fn serve_lat(
    control: &mut Control,
    side: &mut Side,
    p: &Point,
    timeout: Duration,
) -> anyhow::Result<Vec<StreamSummary>> {
    let stop = AtomicBool::new(false);
    let (answered, finished) = std::thread::scope(|scope| {
        let h = scope.spawn(|| pump::pong(side, p.size, &stop, timeout));
        let finished = control.send(&Msg::Go).and_then(|()| control.recv());
        stop.store(true, Ordering::Release);
        (h.join(), finished)
    });
    let Msg::Finished { ops } = finished? else {
        bail!("client answered out of turn");
    };
    let answered = answered
        .map_err(|_| anyhow!("the pong thread panicked"))?
        .context("answering pings")?;
    if answered != ops {
        bail!("answered {answered} pings, the client counted {ops}");
    }
    Ok(Vec::new())
}
