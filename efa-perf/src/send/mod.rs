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

mod client;
mod error;
mod local;
mod plan;
mod pump;
mod server;
mod side;

pub use error::SendError;
pub use server::serve;

use crate::bench::{self, Plan};
use crate::cli::{Metric, TestArgs, Verb};
use crate::loopback::combine;
use crate::measure::StreamResult;
use crate::record::Document;
use crate::runner::{BwMeasurement, Point, Setup};
use crate::select::{FabricKind, Selection};
use anyhow::{anyhow, bail};
use pump::BwRun;
use side::{Options, Side};
use std::sync::atomic::{AtomicBool, Ordering};
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
    let (tx_depth, rx_depth, inline) = match metric {
        Metric::Bw => (depth, plan::RX_DEPTH_BW, 0),
        Metric::Lat => (plan::TX_DEPTH_LAT, plan::RX_DEPTH_LAT, plan::INLINE_LAT),
    };
    Ok(Options {
        device,
        port: args.ib_port,
        gid_index,
        qps,
        slot,
        tx_depth,
        rx_depth,
        inline,
        events: args.use_event,
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
        let mut runner = local::Loopback::new(selection, &o, timeout)?;
        return bench::run(&mut runner, &plan);
    }
    let mut client = client::Client::connect(selection, args, &plan, &o)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Format;
    use crate::runner::Amount;
    use crate::stats::BwUnit;

    fn plan(sizes: Vec<u64>) -> Plan {
        Plan {
            verb: Verb::Send,
            metric: Metric::Bw,
            sizes,
            amount: Amount::Iterations(10),
            streams: 1,
            depth: 8,
            bidirectional: false,
            cpu: false,
            unit: BwUnit::MebibytesPerSec,
            format: Format::Quiet,
            plot: None,
            use_event: false,
            cpu_set: None,
        }
    }

    #[test]
    fn send_is_raw_only_on_verbs_devices_and_named_otherwise() {
        assert!(is_raw(Verb::Send, FabricKind::Efa) && is_raw(Verb::Send, FabricKind::Verbs));
        assert!(!is_raw(Verb::Notify, FabricKind::Efa) && !is_raw(Verb::Write, FabricKind::Efa));
        assert_eq!(resolve(Verb::Send, FabricKind::Tcp), Verb::Notify);
        assert_eq!(resolve(Verb::Send, FabricKind::Sim), Verb::Notify);
        assert_eq!(resolve(Verb::Send, FabricKind::Efa), Verb::Send);
        assert_eq!(resolve(Verb::Read, FabricKind::Tcp), Verb::Read);
    }

    #[test]
    fn sizes_fit_max_msg_sz() {
        let swept = fit(&plan(crate::bench::all_sizes()), 8928, "softefa0").unwrap();
        assert_eq!(swept.sizes.last(), Some(&8192));
        assert_eq!(fit(&plan(vec![8928]), 8928, "d").unwrap().sizes, [8928]);
        let e = fit(&plan(vec![8929]), 8928, "softefa0").unwrap_err();
        assert!(matches!(e, SendError::TooLarge(_)), "{e}");
        assert!(fit(&plan(vec![16384, 32768]), 8928, "d").is_err());
    }
}
