//! The raw tests, as perftest runs them: straight on the `efa` crate, with no transport engine
//! between. `send-bw` and `send-lat` always run here (two-sided SEND/RECV, perftest's
//! `ib_send_*`); `write-bw`, `read-bw`, `write-lat` and `read-lat` with `--raw` (perftest's
//! `ib_write_*`, `ib_read_*`). SRD queue pairs on EFA devices (every operation names its peer by
//! address handle, QP number and Q_Key), RC queue pairs on other verbs devices (Soft-RoCE,
//! ConnectX); `-q` queue pairs share one send and one receive CQ polled by one thread.
//!
//! - SEND: each side keeps its receive queues full (receives reposted in batches as they
//!   complete); messages go up to the port's `max_msg_sz`.
//! - WRITE and READ bandwidth: the client keeps `-t` RDMA WRITEs or READs in flight per queue
//!   pair against the server's region (its address and rkey travel in `Qps`); the server posts
//!   nothing (with `-b`, the same against the client's region) and waits for the client's
//!   `Finished`. EFA needs the device's `RDMA_WRITE` / `RDMA_READ` capability; messages go up to
//!   its `max_rdma_size` (RC: the port's `max_msg_sz`).
//! - READ latency: one READ at a time, each timed from post to completion.
//! - WRITE latency: perftest's ping-pong, each side WRITEs into the peer's buffer and polls its own
//!   for the message's last byte; RC only (SRD places bytes in any order).
//!
//! Across processes the queue-pair addresses travel over efa-perf's control connection:
//!
//! ```text
//! client                                   server
//!   Hello {verb, streams, depth, stripe = largest message, raw} ->
//!                                       <-   Qps {max_msg_sz, qps, region}
//!   Qps {max_msg_sz, qps, region}       ->   (address handles, or RC connections)
//!                                       <-   Linked
//!   then per size Run / Go / Finished / Result as the engine's tests, Bye
//! ```
//!
//! Over `sim` and `tcp`, which have no SEND of their own, a SEND test runs the engine's
//! WRITE_WITH_NOTIFY measure instead ([`resolve`]) and the banner names it (`notify_bw`);
//! `--raw` there is refused ([`check_raw`]).

mod client;
mod error;
mod local;
mod plan;
mod pump;
mod server;
mod side;

pub use error::RawError;
pub use server::serve;

use crate::bench::{self, Plan};
use crate::cli::{Metric, TestArgs, Verb};
use crate::loopback::combine;
use crate::measure::StreamResult;
use crate::record::Document;
use crate::runner::{BwMeasurement, Point, Setup};
use crate::select::{FabricKind, Selection};
use anyhow::{anyhow, bail};
use plan::Op;
use pump::BwRun;
use side::{Options, Side};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Whether `verb` over `kind` runs in this module: SEND always on a verbs device, WRITE and
/// READ there with `--raw` (`raw`).
pub fn is_raw(verb: Verb, kind: FabricKind, raw: bool) -> bool {
    matches!(kind, FabricKind::Efa | FabricKind::Verbs)
        && (verb == Verb::Send || (raw && Op::of(verb).is_some()))
}

/// A `--raw` this tool cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RawRefused {
    /// The fabric has no verbs device to post on.
    #[error(
        "--raw runs the test on the efa crate's queue pairs, which the {fabric} fabric does not \
         have: give --fabric efa or verbs on a machine with an RDMA device, or drop --raw"
    )]
    NoDevice {
        /// The fabric chosen.
        fabric: FabricKind,
    },
    /// The engine's own primitive has no verbs-level twin.
    #[error(
        "--raw with notify tests: WRITE_WITH_NOTIFY is the engine's own signal, with no verbs-level \
         equivalent to compare; send-bw and send-lat are the raw two-sided tests"
    )]
    Notify,
}

/// Checks `--raw` (`raw`) against the test's verb and fabric.
pub fn check_raw(raw: bool, verb: Verb, kind: FabricKind) -> Result<(), RawRefused> {
    if !raw {
        return Ok(());
    }
    if verb == Verb::Notify {
        return Err(RawRefused::Notify);
    }
    if !matches!(kind, FabricKind::Efa | FabricKind::Verbs) {
        return Err(RawRefused::NoDevice { fabric: kind });
    }
    Ok(())
}

/// The verb a test runs over `kind`: SEND needs a verbs device, so over `sim` and `tcp` a SEND
/// test measures the engine's WRITE_WITH_NOTIFY, and says so on stderr (the banner and the test
/// name say it too).
pub fn resolve(verb: Verb, kind: FabricKind) -> Verb {
    if verb == Verb::Send && !is_raw(verb, kind, false) {
        eprintln!(
            "efa-perf: the {kind} fabric has no SEND/RECV of its own; measuring the engine's \
             WRITE_WITH_NOTIFY instead (notify_bw / notify_lat); real SEND needs --fabric efa or verbs"
        );
        return Verb::Notify;
    }
    verb
}

/// The side's options from the command line and the test's shape.
#[allow(clippy::too_many_arguments)]
fn options(
    selection: &Selection,
    args: &TestArgs,
    op: Op,
    qps: u32,
    slot: u64,
    depth: u32,
    metric: Metric,
) -> anyhow::Result<Options> {
    let device = selection
        .device
        .clone()
        .or_else(|| args.device.clone())
        .ok_or_else(|| anyhow!("no {} device to run {} on", selection.fabric, op.name()))?;
    let gid_index = match selection.fabric {
        FabricKind::Efa => match args.gid_index {
            Some(g) if g != 0 => bail!("-x {g}: EFA devices have one GID (index 0)"),
            _ => None,
        },
        _ => args.gid_index,
    };
    let (tx_depth, rx_depth, inline) = match metric {
        Metric::Bw => (depth, plan::RX_DEPTH_BW, 0),
        // A READ has no inline form.
        Metric::Lat if op == Op::Read => (plan::TX_DEPTH_LAT, plan::RX_DEPTH_LAT, 0),
        Metric::Lat => (plan::TX_DEPTH_LAT, plan::RX_DEPTH_LAT, plan::INLINE_LAT),
    };
    Ok(Options {
        device,
        op,
        lat: metric == Metric::Lat,
        port: args.ib_port,
        gid_index,
        qps,
        slot,
        tx_depth,
        rx_depth,
        inline,
        events: args.use_event,
        // The client's plan decides it, for both sides: see `run` and `server::serve`.
        cycle_buffer: None,
    })
}

/// The plan's sizes within the device's limit for `op` (`efa`: an EFA device): a sweep (`-a`)
/// drops what is larger and says so; a single size larger than it is refused.
fn fit(plan: &Plan, max: u64, device: &str, op: Op, efa: bool) -> Result<Plan, RawError> {
    let mut plan = plan.clone();
    if let [size] = plan.sizes[..] {
        plan::check_size(size, max, device, op, efa)?;
        return Ok(plan);
    }
    let (kept, dropped) = plan::sweep_within(&plan.sizes, max);
    if let Some(d) = dropped {
        eprintln!(
            "efa-perf: sizes above the {} of {device} ({max} bytes) are left out of the sweep \
             (up to {d} bytes)",
            plan::limit_name(op, efa)
        );
    }
    if kept.is_empty() {
        let size = plan.sizes.iter().copied().min().unwrap_or(0);
        plan::check_size(size, max, device, op, efa)?;
    }
    plan.sizes = kept;
    Ok(plan)
}

/// What a raw test of `op` does, for the banner's fabric-choice line and the document.
fn describe(op: Op, lat: bool, connection_type: &str) -> String {
    let what = match (op, lat) {
        (Op::Send, _) => "two-sided SEND/RECV, receives kept posted",
        (Op::Write, false) => "RDMA WRITEs into the peer's region, the target posts nothing",
        (Op::Read, false) => "RDMA READs from the peer's region, the target posts nothing",
        (Op::Write, true) => "RDMA WRITE ping-pong, each side polling its buffer's last byte",
        (Op::Read, true) => "one RDMA READ at a time, timed post to completion",
    };
    format!("raw: efa crate {connection_type} queue pairs, no engine; {what}")
}

fn setup(selection: &Selection, side: &Side, mode: &str, lat: bool) -> Setup {
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
            "{}; {}",
            selection.reason,
            describe(side.op(), lat, connection_type)
        ),
        raw: true,
    }
}

/// Runs a raw plan in this process or as the client of a server, and returns its document.
pub fn run(selection: &Selection, args: &TestArgs, plan: &Plan) -> anyhow::Result<Document> {
    let op = Op::of(plan.verb)
        .ok_or_else(|| anyhow!("{} has no raw test", plan.verb.perftest_name()))?;
    let device = selection
        .device
        .clone()
        .or_else(|| args.device.clone())
        .ok_or_else(|| anyhow!("no {} device to run {} on", selection.fabric, op.name()))?;
    let probe = options(
        selection,
        args,
        op,
        plan.streams,
        1,
        plan.depth,
        plan.metric,
    )?;
    let (max, efa) = side::max_size(&device, args.ib_port, &probe)?;
    let plan = fit(plan, max, &device, op, efa)?;
    let slot = plan.sizes.iter().copied().max().unwrap_or(1);
    let o = Options {
        slot,
        cycle_buffer: plan.cycle_buffer,
        ..probe
    };
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
fn or_abort<T>(abort: &AtomicBool, f: impl FnOnce() -> Result<T, RawError>) -> Result<T, RawError> {
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
            cycle_buffer: None,
            bidirectional: false,
            cpu: false,
            unit: BwUnit::MebibytesPerSec,
            format: Format::Quiet,
            plot: None,
            use_event: false,
            cpu_set: None,
            wait: None,
            samples: Default::default(),
        }
    }

    #[test]
    fn send_is_raw_only_on_verbs_devices_and_named_otherwise() {
        assert!(is_raw(Verb::Send, FabricKind::Efa, false));
        assert!(is_raw(Verb::Send, FabricKind::Verbs, true));
        assert!(!is_raw(Verb::Notify, FabricKind::Efa, true));
        assert!(!is_raw(Verb::Write, FabricKind::Efa, false));
        assert!(is_raw(Verb::Write, FabricKind::Efa, true));
        assert!(is_raw(Verb::Read, FabricKind::Verbs, true));
        assert!(!is_raw(Verb::Read, FabricKind::Tcp, true));
        assert_eq!(resolve(Verb::Send, FabricKind::Tcp), Verb::Notify);
        assert_eq!(resolve(Verb::Send, FabricKind::Sim), Verb::Notify);
        assert_eq!(resolve(Verb::Send, FabricKind::Efa), Verb::Send);
        assert_eq!(resolve(Verb::Read, FabricKind::Tcp), Verb::Read);
    }

    #[test]
    fn sizes_fit_max_msg_sz() {
        fn fit(p: &Plan, max: u64, d: &str) -> Result<Plan, RawError> {
            super::fit(p, max, d, Op::Send, true)
        }
        let swept = fit(&plan(crate::bench::all_sizes()), 8928, "softefa0").unwrap();
        assert_eq!(swept.sizes.last(), Some(&8192));
        assert_eq!(fit(&plan(vec![8928]), 8928, "d").unwrap().sizes, [8928]);
        let e = fit(&plan(vec![8929]), 8928, "softefa0").unwrap_err();
        assert!(matches!(e, RawError::TooLarge(_)), "{e}");
        assert!(fit(&plan(vec![16384, 32768]), 8928, "d").is_err());
    }

    #[test]
    fn raw_is_refused_where_there_is_no_verbs_device_or_no_twin() {
        assert_eq!(check_raw(false, Verb::Notify, FabricKind::Sim), Ok(()));
        assert_eq!(check_raw(true, Verb::Write, FabricKind::Verbs), Ok(()));
        assert_eq!(check_raw(true, Verb::Send, FabricKind::Efa), Ok(()));
        let e = check_raw(true, Verb::Read, FabricKind::Tcp).unwrap_err();
        assert!(e.to_string().contains("tcp fabric"), "{e}");
        assert!(matches!(
            check_raw(true, Verb::Send, FabricKind::Sim),
            Err(RawRefused::NoDevice { .. })
        ));
        assert_eq!(
            check_raw(true, Verb::Notify, FabricKind::Efa),
            Err(RawRefused::Notify)
        );
    }

    #[test]
    fn the_banner_says_raw_and_what_is_posted() {
        let d = describe(Op::Write, false, "SRD");
        assert!(
            d.starts_with("raw: efa crate SRD queue pairs, no engine"),
            "{d}"
        );
        assert!(d.contains("RDMA WRITE"), "{d}");
        assert!(describe(Op::Read, true, "RC").contains("one RDMA READ at a time"));
        assert!(describe(Op::Send, false, "RC").contains("SEND/RECV"));
    }
}
