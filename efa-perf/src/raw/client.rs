//! The client of a raw test: opens its queue pairs, trades addresses (and, for RDMA, regions)
//! with the server over the control connection, and drives each run.

use super::plan::Op;
use super::pump::{self, Meet, UNKNOWN};
use super::side::{Options, Side};
use super::{bw_run, measurement, plan, setup};
use crate::bench::Plan;
use crate::cli::TestArgs;
use crate::cpu;
use crate::measure::StreamResult;
use crate::runner::{BwMeasurement, LatMeasurement, Point, Runner, Setup};
use crate::select::Selection;
use crate::session::{self, Control};
use anyhow::{anyhow, bail};
use efa_perf::control::{self, Msg, StreamSummary};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The client of a server in another process.
pub struct Client {
    control: Control,
    side: Side,
    setup: Setup,
    timeout: Duration,
}

impl Client {
    pub fn connect(
        selection: &Selection,
        args: &TestArgs,
        plan: &Plan,
        o: &Options,
    ) -> anyhow::Result<Self> {
        let mut control = session::dial(args)?;
        let mut side = Side::open(o)?;
        control.send(&session::hello(selection, plan, o.slot, true))?;
        let peer = control::check_qps(control.recv()?, plan.streams)?;
        plan::check_size(
            o.slot,
            peer.max_msg_sz,
            "the server's device",
            o.op,
            side.efa,
        )?;
        control.send(&Msg::Qps {
            max_msg_sz: side.max_msg_sz,
            qps: side.addresses(),
            region: side.region(),
        })?;
        side.connect(&peer.qps, peer.region)?;
        let Msg::Linked = control.recv()? else {
            bail!("server answered out of turn");
        };
        let setup = setup(selection, &side, "client", o.lat);
        Ok(Self {
            control,
            side,
            setup,
            timeout: Duration::from_secs(args.timeout),
        })
    }

    fn start(&mut self, p: &Point) -> anyhow::Result<()> {
        self.control.start_run(p)
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

/// Waits, parked, until the pump publishes its sent count (`Some`) or ends without (`None`): the
/// pump unparks this thread either way, so no second poller competes with it for a core.
fn await_sent(sent: &AtomicU64, done: impl Fn() -> bool) -> Option<u64> {
    loop {
        let n = sent.load(Ordering::Acquire);
        if n != UNKNOWN {
            return Some(n);
        }
        if done() {
            return None;
        }
        // Bounded, so a wake-up lost to a race costs at most this.
        std::thread::park_timeout(Duration::from_millis(10));
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
        let me = std::thread::current();
        let meet = Meet {
            expect: &expect,
            sent: &sent,
            abort: &abort,
            wake: Some(&me),
        };
        let Self { control, side, .. } = self;
        let (mine, theirs) = std::thread::scope(|scope| {
            let h = scope.spawn(|| {
                let r = pump::bandwidth(side, &run, meet);
                me.unpark();
                r
            });
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
        if self.side.op() == Op::Write {
            // Before the run starts: the server's first pong can come only after our first ping.
            self.side.clear_landing(p.size)?;
        }
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
