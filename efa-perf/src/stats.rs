//! Statistics over measured samples, computed the way perftest computes them so the figures compare.
//!
//! Latency (perftest `print_report_lat`): the samples are sorted, the two largest are dropped as the tail
//! (`LAT_MEASURE_TAIL`), `t_typical` is the median of what is left, `t_max` is the first dropped sample,
//! the percentiles index the sorted array at `ceil(n * p)`. One difference on purpose: perftest truncates
//! each deviation to an integer before squaring; here the standard deviation is exact.
//!
//! Bandwidth (perftest `print_report_bw`): the average is total bytes over total time, the peak is the best
//! rate over any measured window, the message rate is operations per second in millions.

use std::time::Duration;

/// Samples perftest drops from the top of the sorted latencies before computing the figures.
pub const LAT_MEASURE_TAIL: usize = 2;

/// How many of `len` sorted latency samples perftest's figures use: all but the
/// [`LAT_MEASURE_TAIL`] largest, or all when nothing would be left.
pub fn lat_kept(len: usize) -> usize {
    if len > LAT_MEASURE_TAIL {
        len - LAT_MEASURE_TAIL
    } else {
        len
    }
}

/// Latency figures in microseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyStats {
    /// Smallest sample.
    pub min: f64,
    /// Largest sample kept by perftest's rule (the first one past the trimmed range).
    pub max: f64,
    /// Median of the kept samples (perftest's "typical").
    pub typical: f64,
    /// Mean of the kept samples.
    pub avg: f64,
    /// Population standard deviation of the kept samples.
    pub stdev: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
}

/// Why statistics could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StatsError {
    /// No sample at all.
    #[error("no latency samples were measured")]
    Empty,
    /// A sample is NaN or infinite.
    #[error("latency sample {index} is not a finite number ({value})")]
    NotFinite {
        /// Position of the bad sample.
        index: usize,
        /// Its value.
        value: f64,
    },
}

impl LatencyStats {
    /// Computes the figures from samples in microseconds (any order).
    pub fn from_samples(samples: &[f64]) -> Result<Self, StatsError> {
        if samples.is_empty() {
            return Err(StatsError::Empty);
        }
        if let Some((index, &value)) = samples.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(StatsError::NotFinite { index, value });
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let len = sorted.len();
        let kept = lat_kept(len);
        let at = |i: usize| sorted[i.min(len - 1)];
        let typical = if kept % 2 == 0 {
            (sorted[kept / 2] + sorted[kept / 2 - 1]) / 2.0
        } else {
            sorted[kept / 2]
        };
        let avg = sorted[..kept].iter().sum::<f64>() / kept as f64;
        let var = sorted[..kept]
            .iter()
            .map(|x| (x - avg) * (x - avg))
            .sum::<f64>()
            / kept as f64;
        Ok(Self {
            min: sorted[0],
            max: at(kept),
            typical,
            avg,
            stdev: var.sqrt(),
            p99: at((kept as f64 * 0.99).ceil() as usize),
            p99_9: at((kept as f64 * 0.999).ceil() as usize),
        })
    }
}

/// Bandwidth unit, as perftest's `--report_gbits` switches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BwUnit {
    /// 2^20 bytes per second (perftest prints it as MB/sec, newer releases as MiB/sec).
    #[serde(rename = "MB/sec")]
    MebibytesPerSec,
    /// 10^9 bits per second.
    #[serde(rename = "Gb/sec")]
    GigabitsPerSec,
}

impl BwUnit {
    /// Bytes per second in one unit.
    pub fn bytes_per_unit(self) -> f64 {
        match self {
            Self::MebibytesPerSec => 1_048_576.0,
            Self::GigabitsPerSec => 125_000_000.0,
        }
    }

    /// The label inside perftest's column headers.
    pub fn label(self) -> &'static str {
        match self {
            Self::MebibytesPerSec => "MB/sec",
            Self::GigabitsPerSec => "Gb/sec",
        }
    }
}

/// One timed stretch of a bandwidth run: how much completed in how long.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// Bytes moved in the window.
    pub bytes: u64,
    /// Operations completed in the window.
    pub ops: u64,
    /// Time the window took.
    pub elapsed: Duration,
}

/// Bandwidth figures in the chosen unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BandwidthStats {
    /// Best rate over any single window.
    pub peak: f64,
    /// Total bytes over total time.
    pub average: f64,
    /// Millions of operations per second.
    pub msg_rate_mpps: f64,
}

impl BandwidthStats {
    /// Computes the figures from the run's total and its windows (the total is used for the average, the
    /// windows for the peak; with no usable window the peak is the average).
    pub fn compute(total: Window, windows: &[Window], unit: BwUnit) -> Option<Self> {
        let secs = total.elapsed.as_secs_f64();
        if secs <= 0.0 || total.ops == 0 {
            return None;
        }
        let rate = |w: &Window| w.bytes as f64 / w.elapsed.as_secs_f64() / unit.bytes_per_unit();
        let average = rate(&total);
        let peak = windows
            .iter()
            .filter(|w| !w.elapsed.is_zero() && w.ops > 0)
            .map(rate)
            .fold(average, f64::max);
        Some(Self {
            peak,
            average,
            msg_rate_mpps: total.ops as f64 / secs / 1e6,
        })
    }
}

/// A completion seen during a bandwidth run: when (since the run's start) and how much completed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// Time since the run's start.
    pub at: Duration,
    /// Operations completed.
    pub ops: u64,
    /// Bytes they moved.
    pub bytes: u64,
}

/// Cuts a run's completion events (from one or many streams, any order) into consecutive windows of at
/// least `min_ops` operations each, for the peak. Merging the streams' timelines first keeps the peak an
/// aggregate rate rather than one stream's burst.
pub fn windows_of(events: &mut [Event], min_ops: u64) -> Vec<Window> {
    events.sort_by_key(|e| e.at);
    let mut out = Vec::new();
    let (mut start, mut ops, mut bytes) = (Duration::ZERO, 0u64, 0u64);
    for e in events.iter() {
        ops += e.ops;
        bytes += e.bytes;
        if ops >= min_ops.max(1) {
            out.push(Window {
                bytes,
                ops,
                elapsed: e.at.saturating_sub(start),
            });
            (start, ops, bytes) = (e.at, 0, 0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn latency_follows_perftest_rules_on_known_samples() {
        // 1..=12 shuffled; the two largest (11, 12) are the tail.
        let samples = [
            7.0, 3.0, 12.0, 1.0, 9.0, 5.0, 11.0, 2.0, 8.0, 4.0, 10.0, 6.0,
        ];
        let s = LatencyStats::from_samples(&samples).unwrap();
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 11.0, "first sample past the trimmed range");
        assert!(
            close(s.typical, 5.5),
            "median of 1..=10 is 5.5, got {}",
            s.typical
        );
        assert!(close(s.avg, 5.5));
        // population stdev of 1..=10 = sqrt(8.25)
        assert!(close(s.stdev, 8.25f64.sqrt()), "stdev {}", s.stdev);
        // ceil(10 * 0.99) = 10 -> sorted[10] = 11
        assert_eq!(s.p99, 11.0);
        assert_eq!(s.p99_9, 11.0);
    }

    #[test]
    fn odd_count_median_is_middle_sample() {
        // 5 samples, 3 kept: 10, 20, 30 -> median 20.
        let s = LatencyStats::from_samples(&[30.0, 10.0, 1000.0, 20.0, 500.0]).unwrap();
        assert_eq!(s.typical, 20.0);
        assert_eq!(s.max, 500.0);
        assert!(close(s.avg, 20.0));
    }

    #[test]
    fn percentiles_on_large_uniform_sample() {
        let samples: Vec<f64> = (1..=10_002).map(f64::from).collect();
        let s = LatencyStats::from_samples(&samples).unwrap();
        // kept = 10000; p99 index ceil(9900) = 9900 -> value 9901; p99.9 index 9990 -> 9991
        assert_eq!(s.p99, 9901.0);
        assert_eq!(s.p99_9, 9991.0);
        assert!(close(s.typical, 5000.5));
    }

    #[test]
    fn tiny_and_bad_inputs() {
        assert_eq!(LatencyStats::from_samples(&[]), Err(StatsError::Empty));
        let one = LatencyStats::from_samples(&[4.0]).unwrap();
        assert_eq!(
            (one.min, one.max, one.typical, one.stdev),
            (4.0, 4.0, 4.0, 0.0)
        );
        assert!(matches!(
            LatencyStats::from_samples(&[1.0, f64::NAN]),
            Err(StatsError::NotFinite { index: 1, .. })
        ));
    }

    #[test]
    fn bandwidth_units_and_peak() {
        let total = Window {
            bytes: 1 << 30,
            ops: 1 << 14,
            elapsed: Duration::from_secs(1),
        };
        let fast = Window {
            bytes: 1 << 20,
            ops: 16,
            elapsed: Duration::from_millis(0),
        };
        let peak = Window {
            bytes: 1 << 20,
            ops: 16,
            elapsed: Duration::from_micros(500),
        };
        let mb = BandwidthStats::compute(total, &[fast, peak], BwUnit::MebibytesPerSec).unwrap();
        assert!(close(mb.average, 1024.0));
        assert!(close(mb.peak, 2000.0), "peak {}", mb.peak);
        assert!(close(mb.msg_rate_mpps, 16384.0 / 1e6));
        let gb = BandwidthStats::compute(total, &[], BwUnit::GigabitsPerSec).unwrap();
        assert!(close(gb.average, (1u64 << 30) as f64 * 8.0 / 1e9));
        assert!(close(gb.peak, gb.average));
        assert!(BandwidthStats::compute(
            Window {
                bytes: 0,
                ops: 0,
                elapsed: Duration::ZERO
            },
            &[],
            BwUnit::GigabitsPerSec
        )
        .is_none());
    }

    #[test]
    fn windows_merge_streams_and_group_by_ops() {
        let ms = Duration::from_millis;
        let mut ev = vec![
            Event {
                at: ms(4),
                ops: 2,
                bytes: 200,
            },
            Event {
                at: ms(1),
                ops: 2,
                bytes: 200,
            },
            Event {
                at: ms(2),
                ops: 2,
                bytes: 200,
            },
            Event {
                at: ms(10),
                ops: 2,
                bytes: 200,
            },
        ];
        let w = windows_of(&mut ev, 4);
        assert_eq!(
            w,
            vec![
                Window {
                    bytes: 400,
                    ops: 4,
                    elapsed: ms(2)
                },
                Window {
                    bytes: 400,
                    ops: 4,
                    elapsed: ms(8)
                },
            ]
        );
        assert_eq!(windows_of(&mut ev, 100), vec![]);
    }
}
