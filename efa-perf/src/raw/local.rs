//! Both sides of a raw test in this process, each on its own context of the device, each
//! side's loop on its own thread.

use super::plan::Op;
use super::pump::{self, BwRun, Meet, UNKNOWN};
use super::side::{Options, Side};
use super::{bw_run, measurement, or_abort, setup};
use crate::cpu;
use crate::measure::StreamResult;
use crate::runner::{BwMeasurement, LatMeasurement, Point, Runner, Setup};
use crate::select::Selection;
use anyhow::{anyhow, bail, Context as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Both sides in this process, each on its own device context.
pub struct Loopback {
    client: Side,
    server: Side,
    setup: Setup,
    timeout: Duration,
}

impl Loopback {
    pub fn new(selection: &Selection, o: &Options, timeout: Duration) -> anyhow::Result<Self> {
        let mut client = Side::open(o)?;
        let mut server = Side::open(o)?;
        let (c, s) = (client.addresses(), server.addresses());
        client.connect(&s, server.region())?;
        server.connect(&c, client.region())?;
        let setup = setup(selection, &client, "loopback", o.lat);
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
            wake: None,
        };
        let s_meet = Meet {
            expect: &c_sent,
            sent: &s_sent,
            abort: &abort,
            wake: None,
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
        if self.client.op() == Op::Write {
            self.client.clear_landing(p.size)?;
            self.server.clear_landing(p.size)?;
        }
        let read = self.client.op() == Op::Read;
        let (client, server) = (&mut self.client, &mut self.server);
        let (c, s) = std::thread::scope(|scope| {
            // A READ's target does nothing: no thread answers.
            let h = scope.spawn(|| match read {
                true => Ok(0),
                false => or_abort(&abort, || {
                    pump::pong(server, p.size, p.amount, &stop, timeout)
                }),
            });
            let c = pump::ping(client, p.size, p.amount, timeout, &abort);
            stop.store(true, Ordering::Release);
            (c, h.join())
        });
        let answered = s
            .map_err(|_| anyhow!("the server thread panicked"))?
            .context("server")?;
        let (samples, client_cpu) = c.context("client")?;
        if !read && answered != samples.len() as u64 {
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
