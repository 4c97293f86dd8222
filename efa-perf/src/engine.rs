//! Runners over the transport engine, and the device probes behind `info` and the fabric choice.

use crate::bench::{self, Plan};
use crate::cli::{IdleWaitChoice, Metric, TestArgs, TwoSidedChoice};
use crate::fabrics::Params;
use crate::info::DeviceReport;
use crate::loopback::Loopback;
use crate::measure;
use crate::observe::Observer;
use crate::record::Document;
use crate::remote;
use crate::select::{FabricKind, SeenDevice, Selection};
use std::net::IpAddr;
use std::time::Duration;
use transport::fabric::efa::TwoSided;

/// Fabrics the transport offers in this build.
pub fn fabrics_built() -> Vec<FabricKind> {
    crate::fabrics::built()
}

/// Fabric parameters from the selection and the command line.
pub fn params(selection: &Selection, args: &TestArgs, workers: u32, bind_ip: IpAddr) -> Params {
    Params {
        device: selection.device.clone().or_else(|| args.device.clone()),
        ib_port: args.ib_port,
        gid_index: args.gid_index,
        workers,
        timeout: Duration::from_secs(args.timeout),
        bind_ip,
        slice_size: args.slice_size,
        two_sided: match args.two_sided {
            TwoSidedChoice::Fallback => TwoSided::Fallback,
            TwoSidedChoice::Never => TwoSided::Never,
            TwoSidedChoice::Always => TwoSided::Always,
        },
        cq_events: args.idle_wait == IdleWaitChoice::Events,
    }
}

/// RDMA devices on this machine, or why they cannot be listed.
pub fn probe_devices() -> Result<Vec<SeenDevice>, String> {
    crate::devices::probe()
}

/// Full descriptions of every device.
pub fn describe_devices() -> Vec<DeviceReport> {
    crate::devices::describe_all()
}

/// The EFA kernel driver's version, when the module is loaded.
pub fn efa_driver_version() -> Option<String> {
    crate::devices::efa_driver_version()
}

/// What the transport's own fabric selection picks between processes, and why.
pub fn transport_selection() -> String {
    use transport::fabric::auto::{select, DeviceProbe, Scope};
    let s = select(&DeviceProbe::system(), Scope::CrossProcess);
    format!("{} ({})", s.kind, s.reason)
}

/// Options for an in-process run with perftest's defaults.
pub fn loopback_args() -> TestArgs {
    TestArgs {
        peer: None,
        port: crate::cli::DEFAULT_PORT,
        bind: std::net::IpAddr::from([0, 0, 0, 0]),
        loopback: true,
        fabric: crate::cli::FabricChoice::Auto,
        connection: None,
        device: None,
        ib_port: 1,
        gid_index: None,
        size: None,
        all: false,
        iters: None,
        duration: None,
        qps: 1,
        bidirectional: false,
        tx_depth: None,
        report_gbits: false,
        cpu_freq: false,
        rdma_cm: false,
        cpu_util: false,
        csv: false,
        json: false,
        plot: None,
        timeout: 60,
        slice_size: None,
        two_sided: TwoSidedChoice::Fallback,
        idle_wait: IdleWaitChoice::Events,
        observe: Default::default(),
    }
}

/// Runs a plan on the selected fabric and returns its document: in this process (loopback) or as the
/// client of a server.
pub fn run_selected(
    selection: &Selection,
    args: &TestArgs,
    plan: &Plan,
) -> anyhow::Result<Document> {
    let plan = &Plan {
        verb: crate::send::resolve(plan.verb, selection.fabric),
        ..plan.clone()
    };
    if crate::send::is_raw(plan.verb, selection.fabric) {
        return crate::send::run(selection, args, plan);
    }
    let timeout = Duration::from_secs(args.timeout);
    let max_size = plan.sizes.iter().copied().max().unwrap_or(1);
    // Latency tests keep a send and a receive slot per side.
    let depth = if plan.metric == Metric::Lat {
        plan.depth.max(2)
    } else {
        plan.depth
    };
    let stripe = measure::stripe_len(max_size, depth, plan.streams);
    if selection.loopback {
        let p = params(selection, args, plan.streams, IpAddr::from([127, 0, 0, 1]));
        let (server, client, setup) = crate::fabrics::pair(selection, &p)?;
        let mut runner = Loopback::new(server, client, setup, stripe, plan.streams, timeout, &p)?;
        return observed(&mut runner, plan, selection, args);
    }
    let mut client = remote::Client::connect(selection, args, plan, stripe)?;
    observed(&mut client, plan, selection, args)
}

/// Runs the plan with what `--stats`, `--counters` and `--prometheus` ask for around it.
fn observed(
    runner: &mut dyn crate::runner::Runner,
    plan: &Plan,
    selection: &Selection,
    args: &TestArgs,
) -> anyhow::Result<Document> {
    let mut observer = Observer::start(observe_wanted(
        &args.observe,
        selection,
        args.device.as_deref(),
    ));
    observer.serve(&runner.engines())?;
    let doc = bench::run(runner, plan)?;
    eprint!("{}", observer.finish(&runner.engines()));
    Ok(doc)
}

/// What the observability options ask for, on the selected device.
pub fn observe_wanted(
    o: &crate::cli::ObserveArgs,
    selection: &Selection,
    device: Option<&str>,
) -> crate::observe::Wanted {
    crate::observe::Wanted {
        stats: o.stats,
        counters: o.counters,
        prometheus: o.prometheus,
        device: selection.device.clone().or(device.map(str::to_string)),
    }
}

/// Runs a test from the command line: loopback, client (a peer was given) or server (none was).
pub fn execute(selection: &Selection, args: &TestArgs, plan: &Plan) -> anyhow::Result<()> {
    if !selection.loopback && args.peer.is_none() {
        let verb = crate::send::resolve(plan.verb, selection.fabric);
        return remote::serve(selection, args, verb, plan.metric);
    }
    run_selected(selection, args, plan).map(|_| ())
}
