//! The benchmark driver: runs a sweep of sizes through a [`Runner`], prints perftest-shaped rows as they
//! come, and produces the machine-readable document and the chart.

use crate::cli::{Metric, Verb};
use crate::progress::Progress;
use crate::record::{BwRow, CoreBusy, Document, LatRow, Rows, RunInfo};
use crate::report;
use crate::runner::{Amount, Point, Runner, Setup};
use crate::stats::{BandwidthStats, BwUnit, LatencyStats};
use crate::svg::{Chart, Series};
use anyhow::Context;
use std::io::Write;
use std::path::PathBuf;

/// Where results go on stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// perftest-shaped table (banner included).
    Table,
    /// CSV, banner on stderr.
    Csv,
    /// JSON, banner on stderr.
    Json,
    /// Nothing on stdout, banner on stderr (for callers that print their own summary).
    Quiet,
}

/// A whole test: what to measure and how to report it.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Operation.
    pub verb: Verb,
    /// Bandwidth or latency.
    pub metric: Metric,
    /// Sizes, in order.
    pub sizes: Vec<u64>,
    /// Count or time per size.
    pub amount: Amount,
    /// Parallel streams.
    pub streams: u32,
    /// In flight per stream.
    pub depth: u32,
    /// Bytes a stream cycles its bandwidth messages through (`--cycle-buffer`,
    /// [`cycle_slots`](crate::runner::cycle_slots)); `None`: a place per message in flight.
    pub cycle_buffer: Option<u64>,
    /// Both directions.
    pub bidirectional: bool,
    /// Measure CPU use.
    pub cpu: bool,
    /// Bandwidth unit.
    pub unit: BwUnit,
    /// Output form.
    pub format: Format,
    /// Chart file.
    pub plot: Option<PathBuf>,
    /// Completions waited for rather than busy-polled (`-e`).
    pub use_event: bool,
    /// The cpus the process is pinned to (`--cpu`), for the banner and the document.
    pub cpu_set: Option<String>,
    /// How the engine's workers wait (`--wait`, `-e`), for the banner and the document; `None`
    /// where no engine runs the test (`--raw`).
    pub wait: Option<transport::WaitMode>,
    /// The latency samples listed after each size's figures (`-H`, `-U`).
    pub samples: report::SampleLists,
}

/// Sizes of perftest's -a: 2 bytes to 8 MiB, powers of two.
pub fn all_sizes() -> Vec<u64> {
    (1..=23).map(|e| 1u64 << e).collect()
}

impl Plan {
    /// The test's name (`write_bw`).
    pub fn test_name(&self) -> String {
        let m = match self.metric {
            Metric::Bw => "bw",
            Metric::Lat => "lat",
        };
        format!("{}_{m}", self.verb.name())
    }

    fn latency_iterations(&self, measured: u64) -> u64 {
        match self.amount {
            Amount::Iterations(n) => n,
            Amount::Duration(_) => measured,
        }
    }
}

/// Runs the plan and returns its document (already printed in the chosen format, chart written).
pub fn run(runner: &mut dyn Runner, plan: &Plan) -> anyhow::Result<Document> {
    let info = run_info(runner.setup(), plan);
    let table = plan.format == Format::Table;
    let mut out = std::io::stdout().lock();
    let head = format!(
        "{}{}",
        report::banner(&info),
        report::header(plan.metric, plan.unit, plan.cpu)
    );
    emit(&mut out, table, &head)?;
    let progress = Progress::new(&info.test, plan.sizes.len());
    let mut rows = match plan.metric {
        Metric::Bw => Rows::Bw(Vec::new()),
        Metric::Lat => Rows::Lat(Vec::new()),
    };
    for (i, &size) in plan.sizes.iter().enumerate() {
        progress.step(i, size);
        let line = measure_point(runner, plan, &info.test, size, &mut rows)?;
        progress.clear();
        emit(&mut out, table, &line)?;
        if table {
            out.flush()?;
        }
    }
    drop(progress);
    emit(&mut out, table, report::RESULT_LINE)?;
    let doc = Document::new(info, rows);
    match plan.format {
        Format::Csv => write!(out, "{}", doc.to_csv())?,
        Format::Json => writeln!(out, "{}", doc.to_json())?,
        Format::Table | Format::Quiet => {}
    }
    if let Some(path) = &plan.plot {
        write_chart(path, &chart_of(&[&doc]))?;
        eprintln!("chart written to {}", path.display());
    }
    Ok(doc)
}

/// The run's description for the banner and the document.
fn run_info(setup: Setup, plan: &Plan) -> RunInfo {
    RunInfo {
        test: plan.test_name(),
        verb: plan.verb,
        metric: plan.metric,
        fabric: setup.fabric,
        device: setup.device,
        transport_type: setup.transport_type,
        connection_type: setup.connection_type,
        mode: setup.mode,
        fabric_reason: setup.reason,
        queue_pairs: plan.streams,
        tx_depth: plan.depth,
        cycle_buffer: plan.cycle_buffer,
        bidirectional: plan.bidirectional,
        bw_unit: plan.unit,
        use_event: plan.use_event,
        cpu_set: plan.cpu_set.clone(),
        worker_wait: plan.wait.filter(|_| !setup.raw).map(wait_name),
        raw: setup.raw,
    }
}

/// A wait mode as the banner and the document name it (`--wait`'s words).
fn wait_name(mode: transport::WaitMode) -> String {
    match mode {
        transport::WaitMode::Busy => "busy".into(),
        transport::WaitMode::Adaptive { spin } => format!("adaptive (spin {spin})"),
        transport::WaitMode::Block => "block".into(),
    }
}

/// A line of the table: on stdout in table form, else on stderr (stdout carries CSV or JSON).
fn emit(out: &mut impl Write, table: bool, line: &str) -> std::io::Result<()> {
    if table {
        writeln!(out, "{line}")
    } else {
        eprintln!("{line}");
        Ok(())
    }
}

/// Measures one size, appends its row to `rows` and returns the row's table line.
fn measure_point(
    runner: &mut dyn Runner,
    plan: &Plan,
    test: &str,
    size: u64,
    rows: &mut Rows,
) -> anyhow::Result<String> {
    let point = Point {
        verb: plan.verb,
        size,
        amount: plan.amount,
        streams: plan.streams,
        depth: plan.depth,
        cycle_buffer: plan.cycle_buffer,
        bidirectional: plan.bidirectional,
        cpu: plan.cpu,
    };
    let at = || format!("{test} at {size} bytes");
    let cores0 = plan.cpu.then(crate::cpu::CoreTimes::now).flatten();
    let cores = |line: String| -> (String, Option<Vec<CoreBusy>>) {
        let busy = cores0
            .as_ref()
            .zip(crate::cpu::CoreTimes::now())
            .map(|(before, now)| now.busy_since(before));
        // A point shorter than a clock tick charges no core: an empty list, and no line.
        let line = match &busy {
            Some(b) if !b.is_empty() => {
                format!("{line}\n  cores busy: {}", crate::cpu::cores_line(b))
            }
            _ => line,
        };
        let busy = busy.map(|b| {
            b.into_iter()
                .map(|(cpu, busy_pct)| CoreBusy { cpu, busy_pct })
                .collect()
        });
        (line, busy)
    };
    match rows {
        Rows::Bw(bw_rows) => {
            let m = runner.bandwidth(&point).with_context(at)?;
            let s = BandwidthStats::compute(m.total, &m.windows, plan.unit)
                .with_context(|| format!("{}: no operation completed", at()))?;
            let row = BwRow {
                bytes: size,
                iterations: m.total.ops,
                bw_peak: s.peak,
                bw_average: s.average,
                msg_rate_mpps: s.msg_rate_mpps,
                cpu_util_client: m.cpu_client,
                cpu_util_server: m.cpu_server,
                cores_busy: None,
            };
            let (line, busy) = cores(report::bw_row(&row, plan.cpu));
            bw_rows.push(BwRow {
                cores_busy: busy,
                ..row
            });
            Ok(line)
        }
        Rows::Lat(lat_rows) => {
            let m = runner.latency(&point).with_context(at)?;
            let s = LatencyStats::from_samples(&m.samples_us).with_context(at)?;
            let row = LatRow {
                bytes: size,
                iterations: plan.latency_iterations(m.samples_us.len() as u64),
                t_min_us: s.min,
                t_max_us: s.max,
                t_typical_us: s.typical,
                t_avg_us: s.avg,
                t_stdev_us: s.stdev,
                p99_us: s.p99,
                p99_9_us: s.p99_9,
                cpu_util_client: m.cpu_client,
                cpu_util_server: m.cpu_server,
                cores_busy: None,
                samples_us: None,
            };
            let (mut line, busy) = cores(report::lat_row(&row, plan.cpu));
            if plan.samples.any() {
                // As perftest: the lists, then the column header again above the row.
                let lists = report::sample_lists(&m.samples_us, plan.samples);
                let head = report::header(plan.metric, plan.unit, plan.cpu);
                line = format!("{lists}{head}\n{line}");
            }
            lat_rows.push(LatRow {
                cores_busy: busy,
                samples_us: plan.samples.any().then_some(m.samples_us),
                ..row
            });
            Ok(line)
        }
    }
}

/// Picks one figure out of a latency row.
type LatFigure = fn(&LatRow) -> f64;

/// Writes a chart to a file.
pub fn write_chart(path: &std::path::Path, chart: &Chart) -> anyhow::Result<()> {
    std::fs::write(path, chart.to_svg())
        .with_context(|| format!("writing chart {}", path.display()))
}

/// A chart of one or more runs of the same test: bandwidth (average and peak) or latency percentiles
/// against size, one series per figure and fabric.
pub fn chart_of(docs: &[&Document]) -> Chart {
    let Some(first) = docs.first() else {
        return Chart {
            title: "no results".into(),
            y_label: String::new(),
            series: Vec::new(),
        };
    };
    let mut series = Vec::new();
    for doc in docs {
        let fabric = &doc.info.fabric;
        match &doc.results {
            Rows::Bw(rows) => {
                series.push(Series {
                    name: format!("{fabric} average"),
                    points: rows
                        .iter()
                        .map(|r| (r.bytes as f64, r.bw_average))
                        .collect(),
                });
                series.push(Series {
                    name: format!("{fabric} peak"),
                    points: rows.iter().map(|r| (r.bytes as f64, r.bw_peak)).collect(),
                });
            }
            Rows::Lat(rows) => {
                let figs: [(&str, LatFigure); 4] = [
                    ("typical", |r| r.t_typical_us),
                    ("avg", |r| r.t_avg_us),
                    ("99%", |r| r.p99_us),
                    ("99.9%", |r| r.p99_9_us),
                ];
                for (name, f) in figs {
                    series.push(Series {
                        name: format!("{fabric} {name}"),
                        points: rows.iter().map(|r| (r.bytes as f64, f(r))).collect(),
                    });
                }
            }
        }
    }
    let fabrics: Vec<&str> = docs.iter().map(|d| d.info.fabric.as_str()).collect();
    let y_label = match first.info.metric {
        Metric::Bw => format!("bandwidth [{}]", first.info.bw_unit.label()),
        Metric::Lat => "latency [usec]".to_string(),
    };
    Chart {
        title: format!("efa-perf {} ({})", first.info.test, fabrics.join(" vs ")),
        y_label,
        series,
    }
}
