//! The server of a raw test: one client, its runs until it says bye.

use super::plan::Op;
use super::pump::{self, Meet, UNKNOWN};
use super::side::{Options, Side};
use super::{bw_run, options};
use crate::cli::{Metric, TestArgs, Verb};
use crate::cpu;
use crate::runner::Point;
use crate::select::Selection;
use crate::session::Control;
use anyhow::{anyhow, bail, Context as _};
use efa_perf::control::{self, Hello, Msg, StreamSummary};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Serves a raw test of `verb` to the client on `control`, whose hello was `hello`, until it
/// says bye.
pub fn serve(
    control: &mut Control,
    hello: &Hello,
    selection: &Selection,
    args: &TestArgs,
    verb: Verb,
    metric: Metric,
) -> anyhow::Result<()> {
    super::plan::check_shape(hello.streams, hello.depth)?;
    let op = Op::of(verb).ok_or_else(|| anyhow!("{} has no raw test", verb.perftest_name()))?;
    let o = Options {
        cycle_buffer: hello.cycle_buffer,
        ..options(
            selection,
            args,
            op,
            hello.streams,
            hello.stripe,
            hello.depth,
            metric,
        )?
    };
    let mut side = Side::open(&o)?;
    control.send(&Msg::Qps {
        max_msg_sz: side.max_msg_sz,
        qps: side.addresses(),
        region: side.region(),
    })?;
    let peer = control::check_qps(control.recv()?, hello.streams)?;
    side.connect(&peer.qps, peer.region)?;
    control.send(&Msg::Linked)?;
    let timeout = Duration::from_secs(args.timeout);
    loop {
        let Some((size, amount)) = control.next_run(hello.stripe)? else {
            return Ok(());
        };
        let point = crate::session::point(hello, verb, size, amount);
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
/// count arrived. The target of one-way RDMA WRITEs or READs does nothing: it waits for the
/// client's end on the control connection, asleep, as perftest's server does.
fn serve_bw(
    control: &mut Control,
    side: &mut Side,
    p: &Point,
    timeout: Duration,
) -> anyhow::Result<Vec<StreamSummary>> {
    if side.op() != Op::Send && !p.bidirectional {
        return await_client(control);
    }
    let (expect, sent) = (AtomicU64::new(UNKNOWN), AtomicU64::new(UNKNOWN));
    let abort = AtomicBool::new(false);
    let run = bw_run(p, p.bidirectional, timeout);
    let meet = Meet {
        expect: &expect,
        sent: &sent,
        abort: &abort,
        wake: None,
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

/// Starts a run the server takes no part in (one-way RDMA) and waits for the client's end.
fn await_client(control: &mut Control) -> anyhow::Result<Vec<StreamSummary>> {
    control.send(&Msg::Go)?;
    let Msg::Finished { .. } = control.recv()? else {
        bail!("client answered out of turn");
    };
    Ok(Vec::new())
}

/// The server's side of one latency run: answers every ping (a READ test's target does nothing
/// but wait for the client's end).
fn serve_lat(
    control: &mut Control,
    side: &mut Side,
    p: &Point,
    timeout: Duration,
) -> anyhow::Result<Vec<StreamSummary>> {
    match side.op() {
        Op::Read => return await_client(control),
        // Before the go: the client's first ping can come only after it.
        Op::Write => side.clear_landing(p.size)?,
        Op::Send => {}
    }
    let stop = AtomicBool::new(false);
    let (answered, finished) = std::thread::scope(|scope| {
        let h = scope.spawn(|| pump::pong(side, p.size, p.amount, &stop, timeout));
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
