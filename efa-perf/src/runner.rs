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
    /// Bytes a stream cycles its messages through ([`cycle_slots`]); `None`: a place per
    /// message in flight.
    pub cycle_buffer: Option<u64>,
    /// Both directions at once (bandwidth only).
    pub bidirectional: bool,
    /// Measure CPU use of each side.
    pub cpu: bool,
}

/// Alignment of the places in a cycle buffer (perftest aligns them to the cache line).
const CACHE_LINE: u64 = 64;

/// Slots a stream cycles its `size`-byte messages through, out of the `room` it has: all of them
/// without a cycle buffer; with one of `cycle` bytes (`--cycle-buffer`), perftest's rule: messages of
/// at most half of it take as many slots in turn as fit in it at cache-line alignment, larger ones
/// all take the same one. Always at least 1.
pub fn cycle_slots(size: u64, cycle: Option<u64>, room: u64) -> u64 {
    let room = room.max(1);
    let Some(cycle) = cycle else {
        return room;
    };
    let fit = if size.saturating_mul(2) <= cycle {
        cycle / size.max(1).next_multiple_of(CACHE_LINE)
    } else {
        1
    };
    fit.clamp(1, room)
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

#[cfg(test)]
mod tests {
    use super::cycle_slots;

    #[test]
    fn without_a_cycle_buffer_every_slot_is_used() {
        assert_eq!(cycle_slots(4096, None, 128), 128);
        assert_eq!(cycle_slots(1 << 20, None, 0), 1);
    }

    #[test]
    fn a_page_cycle_buffer_follows_perftest() {
        // Half a page or more: one place, whatever the room.
        assert_eq!(cycle_slots(4096, Some(4096), 128), 1);
        assert_eq!(cycle_slots(2048, Some(4096), 128), 2);
        assert_eq!(cycle_slots(2049, Some(4096), 128), 1);
        assert_eq!(cycle_slots(1 << 20, Some(4096), 128), 1);
        // Small messages take cache-line-aligned places: 100 bytes take 128.
        assert_eq!(cycle_slots(100, Some(4096), 128), 32);
        assert_eq!(cycle_slots(2, Some(4096), 128), 64);
        // Never more than the stream's room.
        assert_eq!(cycle_slots(2, Some(4096), 16), 16);
        assert_eq!(cycle_slots(64 << 10, Some(1 << 20), 128), 16);
    }
}
