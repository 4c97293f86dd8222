//! Runners over the transport engine, and the device probes behind `info` and the fabric choice.

use crate::bench::{self, Plan};
use crate::cli::TestArgs;
use crate::info::DeviceReport;
use crate::loopback::Loopback;
use crate::measure;
use crate::record::Document;
use crate::remote;
use crate::runner::Setup;
use crate::select::{FabricKind, SeenDevice, Selection};
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use transport::fabric::sim::{SimConfig, SimFabric, SimNetwork};
use transport::fabric::tcp::{TcpConfig, TcpFabric};
use transport::fabric::Fabric;

/// Fabrics the transport offers in this build.
pub fn fabrics_built() -> Vec<FabricKind> {
    vec![FabricKind::Sim, FabricKind::Tcp]
}

/// Server fabric, client fabric, and what the banner says about them.
type FabricPair = (Arc<dyn Fabric>, Arc<dyn Fabric>, Setup);

/// Two fabric instances that reach each other, for a loopback run, and the banner's facts about them.
fn fabric_pair(selection: &Selection, timeout: Duration) -> anyhow::Result<FabricPair> {
    match selection.fabric {
        FabricKind::Sim => {
            let net = SimNetwork::new();
            let a =
                SimFabric::new(&net, SimConfig::default()).context("creating the sim fabric")?;
            let b =
                SimFabric::new(&net, SimConfig::default()).context("creating the sim fabric")?;
            Ok((
                a,
                b,
                Setup {
                    fabric: "sim".into(),
                    device: "sim".into(),
                    transport_type: "sim".into(),
                    connection_type: "SRD".into(),
                    mode: "loopback".into(),
                    reason: selection.reason.clone(),
                },
            ))
        }
        FabricKind::Tcp => {
            // Loopback sockets; one stream per worker and peer, as many workers as streams.
            let config = TcpConfig {
                queue_depth: 128,
                timeout,
                ..TcpConfig::default()
            };
            let a =
                TcpFabric::new(config.clone()).context("creating the tcp fabric (server side)")?;
            let b = TcpFabric::new(config).context("creating the tcp fabric (client side)")?;
            let device = format!("tcp {}", a.local_addr().ip());
            Ok((
                a,
                b,
                Setup {
                    fabric: "tcp".into(),
                    device,
                    transport_type: "tcp".into(),
                    connection_type: "stream".into(),
                    mode: "loopback".into(),
                    reason: selection.reason.clone(),
                },
            ))
        }
        other => anyhow::bail!("fabric {other} is not available in this build"),
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
    }
}

/// Runs a plan on the selected fabric and returns its document: in this process (loopback) or as the
/// client of a server.
pub fn run_selected(
    selection: &Selection,
    args: &TestArgs,
    plan: &Plan,
) -> anyhow::Result<Document> {
    let timeout = Duration::from_secs(args.timeout);
    let max_size = plan.sizes.iter().copied().max().unwrap_or(1);
    let stripe = measure::stripe_len(max_size, plan.depth, plan.streams);
    if selection.loopback {
        let (server, client, setup) = fabric_pair(selection, timeout)?;
        let mut runner = Loopback::new(server, client, setup, stripe, plan.streams, timeout)?;
        return bench::run(&mut runner, plan);
    }
    let mut client = remote::Client::connect(selection, args, plan, stripe)?;
    bench::run(&mut client, plan)
}

/// Runs a test from the command line: loopback, client (a peer was given) or server (none was).
pub fn execute(selection: &Selection, args: &TestArgs, plan: &Plan) -> anyhow::Result<()> {
    if !selection.loopback && args.peer.is_none() {
        return remote::serve(args, plan.verb, plan.metric, &selection.reason);
    }
    run_selected(selection, args, plan).map(|_| ())
}
