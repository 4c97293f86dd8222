//! The seam between the benchmark driver and whatever moves the bytes.
//!
//! A [`Runner`] measures one point (verb, size, amount, streams) and hands back raw measurements; the driver
//! turns them into statistics, tables, files and charts.

use crate::cli::Verb;
use crate::stats::Window;
use std::time::Duration;

/// How much work one point does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amount {
    /// A fixed number of operations (per direction, all streams together).
    Iterations(u64),
    /// As many operations as fit in this time.
    Duration(Duration),
}

/// One measurement to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    /// Operation.
    pub verb: Verb,
    /// Message size in bytes.
    pub size: u64,
    /// Count or time.
    pub amount: Amount,
    /// Parallel streams.
    pub streams: u32,
    /// Operations in flight per stream.
    pub depth: u32,
    /// Both directions at once (bandwidth only).
    pub bidirectional: bool,
    /// Measure CPU use of each side.
    pub cpu: bool,
}

/// What a bandwidth point measured.
#[derive(Clone, Debug, Default)]
pub struct BwMeasurement {
    /// The whole run.
    pub total: Window,
    /// Shorter stretches of it, for the peak.
    pub windows: Vec<Window>,
    /// CPU use of the initiating side, percent of one core.
    pub cpu_client: Option<f64>,
    /// CPU use of the target side, percent of one core.
    pub cpu_server: Option<f64>,
}

/// What a latency point measured.
#[derive(Clone, Debug, Default)]
pub struct LatMeasurement {
    /// One latency per operation, in microseconds (already halved for ping-pong tests, as perftest does).
    pub samples_us: Vec<f64>,
    /// CPU use of the initiating side, percent of one core.
    pub cpu_client: Option<f64>,
    /// CPU use of the target side, percent of one core.
    pub cpu_server: Option<f64>,
}

/// The facts the banner shows about a runner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setup {
    /// Fabric name.
    pub fabric: String,
    /// Device name.
    pub device: String,
    /// Transport type (perftest's column).
    pub transport_type: String,
    /// Connection type (perftest's column).
    pub connection_type: String,
    /// `loopback`, `server` or `client`.
    pub mode: String,
    /// Why this fabric.
    pub reason: String,
    /// The test ran straight on the efa crate (`--raw`, and SEND tests on verbs devices), not
    /// through the engine.
    pub raw: bool,
}

/// Something that can take measurements.
pub trait Runner {
    /// What it runs over.
    fn setup(&self) -> Setup;
    /// Measures bandwidth at one point.
    fn bandwidth(&mut self, point: &Point) -> anyhow::Result<BwMeasurement>;
    /// Measures latency at one point.
    fn latency(&mut self, point: &Point) -> anyhow::Result<LatMeasurement>;
    /// The transport engines it runs on, for `--stats` and `--prometheus` (none for runners that use the
    /// verbs directly).
    fn engines(&self) -> Vec<transport::Engine> {
        Vec::new()
    }
}
