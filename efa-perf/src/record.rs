//! Result records and their machine-readable forms (JSON and CSV).
//!
//! The schema is stable: fields are only ever added, never renamed or removed, and `schema` names the version.
//! It is documented in efa-perf's README.

use crate::cli::{Metric, Verb};
use crate::stats::BwUnit;
use serde::{Deserialize, Serialize};

/// Version tag of the JSON document.
pub const SCHEMA: &str = "efa-perf.results.v1";

/// How the test was set up: the banner's facts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    /// Test name, e.g. `write_bw`.
    pub test: String,
    /// Operation measured.
    pub verb: Verb,
    /// Bandwidth or latency.
    pub metric: Metric,
    /// Fabric the transport ran over (`efa`, `verbs`, `sim`, `tcp`).
    pub fabric: String,
    /// Device name (`efa_0`, `rxe0`, `sim`, `tcp`).
    pub device: String,
    /// Transport type as perftest names it (`IB` for verbs devices), or the fabric's own kind.
    pub transport_type: String,
    /// Connection type (`SRD`, `RC`, `stream` for tcp).
    pub connection_type: String,
    /// `loopback`, `server` or `client`.
    pub mode: String,
    /// Why this fabric was chosen.
    pub fabric_reason: String,
    /// Parallel streams (perftest -q).
    pub queue_pairs: u32,
    /// Operations in flight per stream (perftest -t).
    pub tx_depth: u32,
    /// Bytes each stream cycled its bandwidth messages through (`--cycle-buffer`); null: a place
    /// per message in flight.
    #[serde(default)]
    pub cycle_buffer: Option<u64>,
    /// Both directions measured and summed (perftest -b).
    pub bidirectional: bool,
    /// Unit of the bandwidth figures.
    pub bw_unit: BwUnit,
    /// Completions were waited for (`-e`: a completion channel for send tests over efa and verbs, paused
    /// workers and event-driven targets through the engine) rather than busy-polled.
    #[serde(default)]
    pub use_event: bool,
    /// The cpus this process was pinned to (`--cpu`), as a Linux cpu list; null when not pinned.
    #[serde(default)]
    pub cpu_set: Option<String>,
    /// How the engine's workers waited for completions (`busy`, `adaptive (spin N)`, `block`); null
    /// where no engine ran the test (`--raw`).
    #[serde(default)]
    pub worker_wait: Option<String>,
    /// The test ran straight on the efa crate's queue pairs (`--raw`, and SEND tests on efa and
    /// verbs devices), as perftest measures, rather than through the transport engine.
    #[serde(default)]
    pub raw: bool,
}

/// One bandwidth result (one message size).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BwRow {
    /// Message size in bytes.
    pub bytes: u64,
    /// Operations completed (all queue pairs, both directions with -b).
    pub iterations: u64,
    /// Best rate over any measured window, in `bw_unit`.
    pub bw_peak: f64,
    /// Total bytes over total time, in `bw_unit`.
    pub bw_average: f64,
    /// Millions of operations per second.
    pub msg_rate_mpps: f64,
    /// CPU use of the client (or the only measuring side), percent of one core; absent without --cpu-util.
    pub cpu_util_client: Option<f64>,
    /// CPU use of the server side, percent of one core; absent without --cpu-util or when unknown.
    pub cpu_util_server: Option<f64>,
    /// Each core's busy share of the machine over the point (mpstat's figure from /proc/stat,
    /// the whole machine: other work included; cores the kernel charged no tick to over the
    /// point are left out, so a point shorter than a tick has none); absent without --cpu-util.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores_busy: Option<Vec<CoreBusy>>,
}

/// One core's busy share over a point.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct CoreBusy {
    /// The cpu number.
    pub cpu: u32,
    /// Percent of the core's time it was busy (anything but idle and iowait).
    pub busy_pct: f64,
}

/// One latency result (one message size), all times in microseconds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LatRow {
    /// Message size in bytes.
    pub bytes: u64,
    /// Operations measured.
    pub iterations: u64,
    /// Smallest latency.
    pub t_min_us: f64,
    /// Largest latency after perftest's tail rule.
    pub t_max_us: f64,
    /// Median latency.
    pub t_typical_us: f64,
    /// Mean latency.
    pub t_avg_us: f64,
    /// Standard deviation.
    pub t_stdev_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p99_9_us: f64,
    /// CPU use of the client, percent of one core; absent without --cpu-util.
    pub cpu_util_client: Option<f64>,
    /// CPU use of the server, percent of one core; absent without --cpu-util or when unknown.
    pub cpu_util_server: Option<f64>,
    /// Each core's busy share of the machine over the point (mpstat's figure from /proc/stat,
    /// the whole machine: other work included; cores the kernel charged no tick to over the
    /// point are left out, so a point shorter than a tick has none); absent without --cpu-util.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores_busy: Option<Vec<CoreBusy>>,
    /// Every sample in the order measured (perftest's tail included), present with -H or -U.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_us: Option<Vec<f64>>,
}

/// Results of a run, bandwidth or latency.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Rows {
    /// Bandwidth rows.
    Bw(Vec<BwRow>),
    /// Latency rows.
    Lat(Vec<LatRow>),
}

/// The JSON document of one run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Document {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Setup.
    #[serde(flatten)]
    pub info: RunInfo,
    /// One entry per message size.
    pub results: Rows,
}

/// CSV header of bandwidth results.
pub const BW_CSV_HEADER: &str = "test,fabric,device,mode,bytes,iterations,bw_peak,bw_average,msg_rate_mpps,bw_unit,queue_pairs,tx_depth,bidirectional,cpu_util_client,cpu_util_server,cycle_buffer,use_event,raw,worker_wait,cpu_set";
/// CSV header of latency results.
pub const LAT_CSV_HEADER: &str = "test,fabric,device,mode,bytes,iterations,t_min_us,t_max_us,t_typical_us,t_avg_us,t_stdev_us,p99_us,p99_9_us,queue_pairs,cpu_util_client,cpu_util_server,use_event,raw,worker_wait,cpu_set";

/// Quotes a CSV field when it needs it.
pub fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_default()
}

/// The setup columns that end every row: what changes a figure beyond size and depth.
fn setup_tail(i: &RunInfo) -> String {
    format!(
        "{},{},{},{}",
        i.use_event,
        i.raw,
        csv_field(i.worker_wait.as_deref().unwrap_or_default()),
        csv_field(i.cpu_set.as_deref().unwrap_or_default())
    )
}

impl Document {
    /// Builds a document.
    pub fn new(info: RunInfo, results: Rows) -> Self {
        Self {
            schema: SCHEMA.into(),
            info,
            results,
        }
    }

    /// Renders as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// Renders as CSV with a header line.
    pub fn to_csv(&self) -> String {
        let i = &self.info;
        let lead = format!(
            "{},{},{},{}",
            csv_field(&i.test),
            csv_field(&i.fabric),
            csv_field(&i.device),
            csv_field(&i.mode)
        );
        let tail = setup_tail(i);
        let mut out = String::new();
        match &self.results {
            Rows::Bw(rows) => {
                out.push_str(BW_CSV_HEADER);
                out.push('\n');
                for r in rows {
                    out.push_str(&format!(
                        "{lead},{},{},{:.6},{:.6},{:.6},{},{},{},{},{},{},{},{tail}\n",
                        r.bytes,
                        r.iterations,
                        r.bw_peak,
                        r.bw_average,
                        r.msg_rate_mpps,
                        i.bw_unit.label(),
                        i.queue_pairs,
                        i.tx_depth,
                        i.bidirectional,
                        opt(r.cpu_util_client),
                        opt(r.cpu_util_server),
                        i.cycle_buffer.map(|b| b.to_string()).unwrap_or_default()
                    ));
                }
            }
            Rows::Lat(rows) => {
                out.push_str(LAT_CSV_HEADER);
                out.push('\n');
                for r in rows {
                    out.push_str(&format!(
                        "{lead},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{},{},{},{tail}\n",
                        r.bytes,
                        r.iterations,
                        r.t_min_us,
                        r.t_max_us,
                        r.t_typical_us,
                        r.t_avg_us,
                        r.t_stdev_us,
                        r.p99_us,
                        r.p99_9_us,
                        i.queue_pairs,
                        opt(r.cpu_util_client),
                        opt(r.cpu_util_server)
                    ));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RunInfo {
        RunInfo {
            test: "write_bw".into(),
            verb: Verb::Write,
            metric: Metric::Bw,
            fabric: "sim".into(),
            device: "dev,1".into(),
            transport_type: "sim".into(),
            connection_type: "SRD".into(),
            mode: "loopback".into(),
            fabric_reason: "test".into(),
            queue_pairs: 2,
            tx_depth: 64,
            cycle_buffer: None,
            bidirectional: false,
            bw_unit: BwUnit::GigabitsPerSec,
            use_event: false,
            cpu_set: None,
            worker_wait: None,
            raw: false,
        }
    }

    #[test]
    fn json_round_trips_and_is_flat() {
        let doc = Document::new(
            info(),
            Rows::Bw(vec![BwRow {
                bytes: 4096,
                iterations: 10,
                bw_peak: 2.0,
                bw_average: 1.5,
                msg_rate_mpps: 0.1,
                cpu_util_client: None,
                cpu_util_server: Some(12.5),
                cores_busy: None,
            }]),
        );
        let text = doc.to_json();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["fabric"], "sim");
        assert_eq!(v["bw_unit"], "Gb/sec");
        assert_eq!(v["results"][0]["bytes"], 4096);
        assert!(v["results"][0]["cpu_util_client"].is_null());
        let back: Document = serde_json::from_str(&text).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn csv_has_header_and_quoted_fields() {
        let doc = Document::new(
            info(),
            Rows::Bw(vec![BwRow {
                bytes: 2,
                iterations: 5,
                bw_peak: 1.0,
                bw_average: 1.0,
                msg_rate_mpps: 1.0,
                cpu_util_client: Some(50.0),
                cpu_util_server: None,
                cores_busy: None,
            }]),
        );
        let csv = doc.to_csv();
        let mut lines = csv.lines();
        assert_eq!(lines.next(), Some(BW_CSV_HEADER));
        let row = lines.next().unwrap();
        assert!(
            row.starts_with("write_bw,sim,\"dev,1\",loopback,2,5,"),
            "{row}"
        );
        assert!(
            row.ends_with(",Gb/sec,2,64,false,50.00,,,false,false,,"),
            "{row}"
        );
        assert_eq!(lines.next(), None);
    }

    #[test]
    fn csv_rows_end_with_the_setup_that_moves_a_figure() {
        let setup = RunInfo {
            cycle_buffer: Some(4096),
            use_event: true,
            worker_wait: Some("adaptive (spin 64)".into()),
            cpu_set: Some("0,2-3".into()),
            ..info()
        };
        let bw = BwRow {
            bytes: 4096,
            iterations: 5,
            bw_peak: 1.0,
            bw_average: 1.0,
            msg_rate_mpps: 1.0,
            cpu_util_client: None,
            cpu_util_server: None,
            cores_busy: None,
        };
        let csv = Document::new(setup.clone(), Rows::Bw(vec![bw])).to_csv();
        let row = csv.lines().nth(1).unwrap();
        assert!(
            row.ends_with(",,,4096,true,false,adaptive (spin 64),\"0,2-3\""),
            "{row}"
        );

        let lat = LatRow {
            bytes: 2,
            iterations: 100,
            t_min_us: 1.0,
            t_max_us: 3.0,
            t_typical_us: 2.0,
            t_avg_us: 2.0,
            t_stdev_us: 0.5,
            p99_us: 3.0,
            p99_9_us: 3.0,
            cpu_util_client: Some(99.0),
            cpu_util_server: None,
            cores_busy: None,
            samples_us: None,
        };
        let raw = RunInfo {
            raw: true,
            worker_wait: None,
            ..setup
        };
        let csv = Document::new(raw, Rows::Lat(vec![lat])).to_csv();
        let mut lines = csv.lines();
        let header = lines.next().unwrap();
        let row = lines.next().unwrap();
        assert!(
            header.ends_with(",use_event,raw,worker_wait,cpu_set"),
            "{header}"
        );
        assert!(row.ends_with(",99.00,,true,true,,\"0,2-3\""), "{row}");
    }
}
