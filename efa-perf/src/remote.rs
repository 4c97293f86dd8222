//! Client and server in different processes (or hosts), as perftest runs: the server listens on `-p`, the
//! client connects and drives each measurement.
//!
//! The control connection carries one JSON object per line; the data goes over the transport. Segments are
//! found through the transport's peer-to-peer discovery, each side telling the other its discovery address.
//!
//! ```text
//! client                                  server
//!   Hello {fabric, verb, metric, ...}  ->
//!                                      <-   Ready {discovery, device, ...}
//!   Opened {discovery}                 ->   (opens the client's segment)
//!                                      <-   Linked
//!   per size:  Run {size, amount}      ->   (starts its side: pong thread, reverse streams)
//!                                      <-   Go
//!   (measures)  Finished {ops}         ->   (joins its side, checks SENDs arrived)
//!                                      <-   Result {cpu, streams}
//!   Bye                                ->
//! ```

use crate::cli::{Metric, TestArgs, Verb};
use crate::cpu;
use crate::fabrics::Params;
use crate::loopback::{combine, register, stream_op, CLIENT_SEGMENT, SERVER_SEGMENT};
use crate::measure::{self, Link, StreamOp, StreamResult, TAG_SEND};
use crate::observe::Observer;
use crate::runner::{Amount, BwMeasurement, LatMeasurement, Point, Runner, Setup};
use crate::select::{FabricKind, Selection};
use crate::session::{dial, Control};
use crate::stats::Event;
use anyhow::{anyhow, bail, Context};
use efa_perf::control::{self, Hello, Msg, StreamSummary, SERVER_MAX_LINE};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use transport::discovery::{DiscoveryConfig, PeerMetadata};
use transport::Engine;

impl From<&StreamResult> for StreamSummary {
    fn from(r: &StreamResult) -> Self {
        Self {
            ops: r.ops,
            bytes: r.bytes,
            end_us: r.end.as_micros() as u64,
            events: r
                .events
                .iter()
                .map(|e| (e.at.as_micros() as u64, e.ops, e.bytes))
                .collect(),
        }
    }
}

impl From<StreamSummary> for StreamResult {
    fn from(s: StreamSummary) -> Self {
        Self {
            ops: s.ops,
            bytes: s.bytes,
            end: Duration::from_micros(s.end_us),
            events: s
                .events
                .into_iter()
                .map(|(at, ops, bytes)| Event {
                    at: Duration::from_micros(at),
                    ops,
                    bytes,
                })
                .collect(),
            cpu: Duration::ZERO,
        }
    }
}

/// An engine reachable from another process: fabric bound to the address the peer reaches us on, discovery
/// server beside it.
struct Node {
    engine: Engine,
    meta: Arc<PeerMetadata>,
    setup: Setup,
}

fn make_node(
    kind: FabricKind,
    params: &Params,
    name: &str,
    mode: &str,
    reason: &str,
) -> anyhow::Result<Node> {
    if kind == FabricKind::Sim {
        bail!(
            "the sim fabric lives in one process; it cannot reach another (use tcp, verbs or efa)"
        );
    }
    let (fabric, mut setup) = crate::fabrics::create(kind, params, None)?;
    let meta = PeerMetadata::bind(DiscoveryConfig {
        bind: SocketAddr::new(params.bind_ip, 0),
        ..DiscoveryConfig::new(name)
    })
    .context("starting discovery")?;
    meta.attach_fabric(fabric.clone());
    let engine = Engine::new(
        crate::fabrics::engine_config(name, params),
        fabric,
        meta.clone(),
    )
    .context("creating the engine")?;
    setup.mode = mode.into();
    setup.reason = reason.into();
    Ok(Node {
        engine,
        meta,
        setup,
    })
}

fn parse_fabric(name: &str) -> anyhow::Result<FabricKind> {
    Ok(name.parse::<FabricKind>()?)
}

/// The client's runner.
pub struct Client {
    control: Control,
    link: Link,
    setup: Setup,
    timeout: Duration,
    _node: Node,
}

impl Client {
    /// Connects to the server at `host:port` and sets up both sides.
    pub fn connect(
        selection: &Selection,
        args: &TestArgs,
        plan: &crate::bench::Plan,
        stripe: u64,
    ) -> anyhow::Result<Self> {
        let timeout = Duration::from_secs(args.timeout);
        let mut control = dial(args)?;
        let params = crate::fabrics::params(
            selection,
            args,
            plan.metric,
            plan.streams,
            control.local.ip(),
        );
        let node = make_node(
            selection.fabric,
            &params,
            "efa-perf-client",
            "client",
            &selection.reason,
        )?;
        control.send(&crate::session::hello(selection, plan, stripe, false))?;
        let Msg::Ready {
            discovery, device, ..
        } = control.recv()?
        else {
            bail!("server answered out of turn");
        };
        let local = register(&node.engine, CLIENT_SEGMENT, stripe * plan.streams as u64)?;
        let remote = node
            .engine
            .open_segment(&format!("{discovery}/{SERVER_SEGMENT}"))
            .with_context(|| format!("opening the server's segment at {discovery}"))?;
        control.send(&Msg::Opened {
            discovery: node.meta.local_addr().to_string(),
        })?;
        let Msg::Linked = control.recv()? else {
            bail!("server answered out of turn");
        };
        let mut setup = node.setup.clone();
        setup.device = format!("{} <-> {device}", setup.device);
        Ok(Self {
            control,
            link: Link {
                engine: node.engine.clone(),
                local,
                remote,
                stripe,
            },
            setup,
            timeout,
            _node: node,
        })
    }

    fn start(&mut self, p: &Point) -> anyhow::Result<()> {
        self.control.start_run(p)
    }

    fn finish(&mut self, ops: u64) -> anyhow::Result<(f64, Vec<StreamResult>)> {
        self.control.send(&Msg::Finished { ops })?;
        match self.control.recv()? {
            Msg::Result {
                cpu_percent,
                streams,
            } => Ok((cpu_percent, streams.into_iter().map(Into::into).collect())),
            other => bail!("server answered {other:?} instead of a result"),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.control.send(&Msg::Bye);
    }
}

impl Runner for Client {
    fn setup(&self) -> Setup {
        self.setup.clone()
    }

    fn engines(&self) -> Vec<Engine> {
        vec![self.link.engine.clone()]
    }

    fn bandwidth(&mut self, p: &Point) -> anyhow::Result<BwMeasurement> {
        self.start(p)?;
        let (wall0, cpu0) = (Instant::now(), cpu::process_cpu());
        let op = stream_op(p.verb);
        let start = Instant::now();
        let timeout = self.timeout;
        let results = std::thread::scope(|s| {
            let hs: Vec<_> = (0..p.streams)
                .map(|i| {
                    let link = self.link.clone();
                    s.spawn(move || measure::stream(&link, i, op, p, start, timeout))
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().map_err(|_| anyhow!("a stream thread panicked"))?)
                .collect::<anyhow::Result<Vec<_>>>()
        });
        let cpu_client = cpu::percent(cpu::process_cpu().saturating_sub(cpu0), wall0.elapsed());
        let results = match results {
            Ok(r) => r,
            Err(e) => {
                let _ = self.finish(0);
                return Err(e);
            }
        };
        let ops = results.iter().map(|r| r.ops).sum();
        let (cpu_server, server_streams) = self.finish(ops)?;
        if op == StreamOp::Send {
            // Two-sided both ways: the client must have received every SEND of the server's streams.
            let back: u64 = server_streams.iter().map(|r| r.ops).sum();
            if back > 0 {
                measure::await_tag(&self.link.engine, TAG_SEND, back, timeout)
                    .context("receiving SENDs")?;
                self.link.engine.notifications().consume(TAG_SEND, back)?;
            }
        }
        let all: Vec<StreamResult> = results.into_iter().chain(server_streams).collect();
        let (total, windows) = combine(
            &all,
            p.streams * if p.bidirectional { 2 } else { 1 },
            p.depth,
        );
        Ok(BwMeasurement {
            total,
            windows,
            cpu_client: p.cpu.then_some(cpu_client),
            cpu_server: p.cpu.then_some(cpu_server),
        })
    }

    fn latency(&mut self, p: &Point) -> anyhow::Result<LatMeasurement> {
        if p.verb == Verb::Write {
            self.link.reset_rx(p.size)?;
        }
        self.start(p)?;
        let (wall0, cpu0) = (Instant::now(), cpu::process_cpu());
        let r = measure::latency_client(
            &self.link,
            stream_op(p.verb),
            p.size,
            p.amount,
            self.timeout,
        );
        let cpu_client = cpu::percent(cpu::process_cpu().saturating_sub(cpu0), wall0.elapsed());
        let (samples, _) = match r {
            Ok(v) => v,
            Err(e) => {
                let _ = self.finish(0);
                return Err(e);
            }
        };
        let (cpu_server, _) = self.finish(samples.len() as u64)?;
        Ok(LatMeasurement {
            samples_us: samples,
            cpu_client: p.cpu.then_some(cpu_client),
            cpu_server: p.cpu.then_some(cpu_server),
        })
    }
}

/// Runs the server: waits for one client on `-p`, serves its test, and returns when it says goodbye.
pub fn serve(
    selection: &Selection,
    args: &TestArgs,
    verb: Verb,
    metric: Metric,
) -> anyhow::Result<()> {
    let reason = &selection.reason;
    let timeout = Duration::from_secs(args.timeout);
    let at = SocketAddr::new(args.bind, args.port);
    let listener = TcpListener::bind(at).with_context(|| {
        format!("listening on {at} (port in use? choose another with -p; address not local? see --bind)")
    })?;
    eprintln!(
        "efa-perf: server waiting for a client on port {} ({reason}); listening on {at}",
        args.port
    );
    let (stream, from) = listener.accept().context("accepting the client")?;
    eprintln!("efa-perf: client {from} connected");
    let mut control = Control::new(stream, timeout, SERVER_MAX_LINE)?;
    match serve_one(&mut control, selection, args, verb, metric) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = control.send(&Msg::Error {
                message: format!("{e:#}"),
            });
            Err(e)
        }
    }
}

fn serve_one(
    control: &mut Control,
    selection: &Selection,
    args: &TestArgs,
    verb: Verb,
    metric: Metric,
) -> anyhow::Result<()> {
    let hello = control::check_hello(control.recv()?, verb, metric)?;
    let kind = parse_fabric(&hello.fabric)?;
    if kind != selection.fabric {
        bail!(
            "client runs over {kind} but this server over {} (give both sides the same --fabric)",
            selection.fabric
        );
    }
    let raw = crate::raw::is_raw(verb, kind, hello.raw);
    if raw != crate::raw::is_raw(verb, kind, args.raw) {
        bail!(
            "client runs {} {} but this server {} (give both sides the same --raw)",
            verb.name(),
            if raw {
                "with --raw"
            } else {
                "through the engine"
            },
            if raw {
                "through the engine"
            } else {
                "with --raw"
            },
        );
    }
    if raw {
        return crate::raw::serve(control, &hello, selection, args, verb, metric);
    }
    let params = crate::fabrics::params(selection, args, metric, hello.streams, control.local.ip());
    let node = make_node(
        kind,
        &params,
        "efa-perf-server",
        "server",
        &selection.reason,
    )?;
    let side = ServerSide {
        link: link_with_client(control, &node, hello.stripe, hello.streams)?,
        verb,
        metric,
        hello: hello.clone(),
        timeout: Duration::from_secs(args.timeout),
    };
    let engines = [node.engine.clone()];
    let wanted =
        crate::observe::Wanted::from_args(&args.observe, selection, args.device.as_deref());
    let mut observer = Observer::start(wanted);
    observer.serve(&engines)?;
    while let Some((size, amount)) = control.next_run(hello.stripe)? {
        if metric == Metric::Lat && stream_op(verb) == StreamOp::Write {
            side.link.reset_rx(size)?;
        }
        let (wall0, cpu0) = (Instant::now(), cpu::process_cpu());
        let results = side.run(control, size, amount)?;
        let cpu_percent = cpu::percent(cpu::process_cpu().saturating_sub(cpu0), wall0.elapsed());
        control.send(&Msg::Result {
            cpu_percent,
            streams: results.iter().map(StreamSummary::from).collect(),
        })?;
    }
    eprint!("{}", observer.finish(&engines));
    Ok(())
}

/// Registers the server's segment, tells the client where to find it and opens the client's.
fn link_with_client(
    control: &mut Control,
    node: &Node,
    stripe: u64,
    streams: u32,
) -> anyhow::Result<Link> {
    let local = register(&node.engine, SERVER_SEGMENT, stripe * streams as u64)?;
    control.send(&Msg::Ready {
        discovery: node.meta.local_addr().to_string(),
        device: node.setup.device.clone(),
        transport_type: node.setup.transport_type.clone(),
        connection_type: node.setup.connection_type.clone(),
    })?;
    let Msg::Opened { discovery } = control.recv()? else {
        bail!("client answered out of turn");
    };
    let remote = node
        .engine
        .open_segment(&format!("{discovery}/{CLIENT_SEGMENT}"))
        .with_context(|| format!("opening the client's segment at {discovery}"))?;
    control.send(&Msg::Linked)?;
    Ok(Link {
        engine: node.engine.clone(),
        local,
        remote,
        stripe,
    })
}

/// The server's half of every point of a run.
struct ServerSide {
    link: Link,
    verb: Verb,
    metric: Metric,
    /// The client's hello: the shape of every point.
    hello: Hello,
    timeout: Duration,
}

impl ServerSide {
    /// One point: starts the server's side (reverse streams, the pong thread), lets the client
    /// go, and joins it all when the client has finished; checks that every ping was answered
    /// and every SEND arrived.
    fn run(
        &self,
        control: &mut Control,
        size: u64,
        amount: Amount,
    ) -> anyhow::Result<Vec<StreamResult>> {
        let (link, op, timeout) = (&self.link, stream_op(self.verb), self.timeout);
        let point = crate::session::point(&self.hello, self.verb, size, amount);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let mut hs = Vec::new();
            if self.metric == Metric::Bw && point.bidirectional {
                let start = Instant::now();
                for i in 0..point.streams {
                    let (link, point) = (link.clone(), &point);
                    hs.push(s.spawn(move || measure::stream(&link, i, op, point, start, timeout)));
                }
            }
            let stop = &stop;
            let pong = (self.metric == Metric::Lat && op != StreamOp::Read).then(|| {
                let link = link.clone();
                s.spawn(move || measure::latency_server(&link, op, size, stop, timeout))
            });
            control.send(&Msg::Go)?;
            let finished = control.recv();
            stop.store(true, Ordering::Release);
            let Msg::Finished { ops } = finished? else {
                bail!("client answered out of turn");
            };
            if let Some(h) = pong {
                let (answered, _) = h.join().map_err(|_| anyhow!("pong thread panicked"))??;
                if answered != ops {
                    bail!("answered {answered} pings, the client counted {ops}");
                }
            }
            let out = hs
                .into_iter()
                .map(|h| h.join().map_err(|_| anyhow!("a stream thread panicked"))?)
                .collect::<anyhow::Result<Vec<_>>>()?;
            if self.metric == Metric::Bw && op == StreamOp::Send && ops > 0 {
                measure::await_tag(&link.engine, TAG_SEND, ops, timeout)
                    .context("receiving SENDs")?;
                link.engine.notifications().consume(TAG_SEND, ops)?;
            }
            Ok(out)
        })
    }
}
