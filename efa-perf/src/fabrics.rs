//! Creating fabric instances from the command line's choices.

use crate::cli::{IdleWaitChoice, Metric, TestArgs, TwoSidedChoice};
use crate::runner::Setup;
use crate::select::{FabricKind, Selection};
use anyhow::{bail, Context};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use transport::affinity::Affinity;
use transport::fabric::efa::{EfaConfig, EfaFabric, TwoSided};
use transport::fabric::sim::{SimConfig, SimFabric, SimNetwork};
use transport::fabric::tcp::{TcpConfig, TcpFabric};
use transport::fabric::verbs::{VerbsConfig, VerbsFabric};
use transport::fabric::Fabric;

/// Fabric parameters from the selection and the command line.
pub fn params(
    selection: &Selection,
    args: &TestArgs,
    metric: Metric,
    workers: u32,
    bind_ip: IpAddr,
) -> Params {
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
        // -e: workers block on their endpoints' completion channels where the fabric has them,
        // targets sleep on events; clap keeps it apart from an explicit --wait or --idle-wait.
        cq_events: args.use_event || args.idle_wait == IdleWaitChoice::Events,
        // -e: and they block as soon as they find nothing, as perftest's -e thread does; the
        // application's waits sleep too, so the whole round trip is woken by events.
        idle_spin: args.use_event.then_some(Duration::ZERO),
        completion_counters: args.completion_counters,
        wait: args.wait_mode(metric),
        affinity: args.cpu.map_or(Affinity::default(), Affinity::Cpus),
        metrics: args.observe.stats || args.observe.prometheus.is_some(),
    }
}

/// Fabrics the transport offers in this build.
pub fn built() -> Vec<FabricKind> {
    FabricKind::built().to_vec()
}

/// What a fabric instance needs beyond its kind.
#[derive(Clone, Debug)]
pub struct Params {
    /// Device for efa and verbs.
    pub device: Option<String>,
    /// Port of the device.
    pub ib_port: u8,
    /// GID index (verbs).
    pub gid_index: Option<u32>,
    /// Workers that will use the fabric at once (verbs creates queue pairs per worker slot).
    pub workers: u32,
    /// Dead-peer bound.
    pub timeout: Duration,
    /// Address to bind sockets to (tcp), when it matters.
    pub bind_ip: IpAddr,
    /// Engine slice size, when not the engine's default.
    pub slice_size: Option<u64>,
    /// When the efa fabric carries READ and WRITE over SEND/RECV.
    pub two_sided: TwoSided,
    /// Whether idle target threads block on completion channels (`--idle-wait events`).
    pub cq_events: bool,
    /// How long target threads poll after their last completion before they block (`-e`:
    /// zero); `None` keeps the fabric's default.
    pub idle_spin: Option<Duration>,
    /// Whether the efa fabric polls its CQs behind completion counters
    /// (`--completion-counters`).
    pub completion_counters: bool,
    /// How the engine's workers wait for completions (`--wait`, `-e`).
    pub wait: transport::WaitMode,
    /// Where the fabric's own threads run (`--cpu`, else its device's NUMA node).
    pub affinity: Affinity,
    /// Whether the engines count their operations ([`transport::EngineConfig::metrics`]): only
    /// when `--stats` or `--prometheus` reports them, as perftest counts nothing in its loops.
    pub metrics: bool,
}

/// Engine settings for an engine called `name`.
pub fn engine_config(name: &str, p: &Params) -> transport::EngineConfig {
    let mut c = transport::EngineConfig::new(name);
    c.slice_size = p.slice_size;
    c.wait = p.wait;
    c.metrics = p.metrics;
    c
}

/// One fabric instance and the banner's facts about it.
pub fn create(
    kind: FabricKind,
    p: &Params,
    sim: Option<&Arc<SimNetwork>>,
) -> anyhow::Result<(Arc<dyn Fabric>, Setup)> {
    let setup = |device: String, transport_type: &str, connection_type: &str| Setup {
        fabric: kind.to_string(),
        device,
        transport_type: transport_type.into(),
        connection_type: connection_type.into(),
        mode: String::new(),
        reason: String::new(),
        raw: false,
    };
    Ok(match kind {
        FabricKind::Sim => {
            let net = sim.context("the sim fabric needs a network shared by both sides")?;
            let f = SimFabric::new(net, SimConfig::default()).context("creating the sim fabric")?;
            (f, setup("sim".into(), "sim", "SRD"))
        }
        FabricKind::Tcp => {
            // One stream per worker and peer; dead-peer detection follows --timeout.
            let config = TcpConfig {
                bind: SocketAddr::new(p.bind_ip, 0),
                queue_depth: 128,
                timeout: p.timeout,
                affinity: p.affinity,
                ..TcpConfig::default()
            };
            let f = TcpFabric::new(config).context("creating the tcp fabric")?;
            let device = format!("tcp {}", f.local_addr());
            (f, setup(device, "tcp", "stream"))
        }
        FabricKind::Verbs => {
            let workers = u16::try_from(p.workers.saturating_add(1))
                .unwrap_or(64)
                .min(64);
            let mut config = VerbsConfig {
                devices: p.device.iter().cloned().collect(),
                port: p.ib_port,
                gid_index: p.gid_index,
                max_endpoints: workers.max(2),
                unresponsive_timeout: p.timeout.min(Duration::from_secs(30)),
                cq_events: p.cq_events,
                affinity: p.affinity,
                ..VerbsConfig::default()
            };
            config.idle_spin = p.idle_spin.unwrap_or(config.idle_spin);
            let f = VerbsFabric::new(config).context("creating the verbs fabric")?;
            let device = p
                .device
                .clone()
                .unwrap_or_else(|| "first verbs device".into());
            (f, setup(device, "IB", "RC"))
        }
        FabricKind::Efa => {
            if p.gid_index.is_some_and(|g| g != 0) {
                bail!(
                    "-x {}: EFA devices have one GID (index 0)",
                    p.gid_index.unwrap_or(0)
                );
            }
            let mut config = EfaConfig {
                devices: p.device.iter().cloned().collect(),
                two_sided: p.two_sided,
                cq_events: p.cq_events,
                completion_counters: p.completion_counters,
                affinity: p.affinity,
                ..EfaConfig::default()
            };
            config.idle_spin = p.idle_spin.unwrap_or(config.idle_spin);
            let f = EfaFabric::new(config).context("creating the efa fabric")?;
            let device = p
                .device
                .clone()
                .unwrap_or_else(|| "every EFA device".into());
            let connection = format!("SRD ({})", f.protocols());
            (f, setup(device, "EFA", &connection))
        }
    })
}

/// Server fabric, client fabric, and the banner's facts.
pub type Pair = (Arc<dyn Fabric>, Arc<dyn Fabric>, Setup);

/// Two instances that reach each other, for a run in this process (server first).
pub fn pair(selection: &Selection, p: &Params) -> anyhow::Result<Pair> {
    let net = (selection.fabric == FabricKind::Sim).then(SimNetwork::new);
    let (a, mut setup) = create(selection.fabric, p, net.as_ref())?;
    let (b, _) = create(selection.fabric, p, net.as_ref())?;
    setup.mode = "loopback".into();
    setup.reason = selection.reason.clone();
    Ok((a, b, setup))
}
