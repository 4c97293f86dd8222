//! `compare`: the same sweep over the fast fabric and over tcp, both in loopback in this process, with a
//! table of ratios and a chart.

use crate::bench::{self, Format, Plan};
use crate::cli::{CompareArgs, FabricChoice, Metric};
use crate::record::{Document, Rows};
use crate::runner::Amount;
use crate::select::{self, FabricKind};
use crate::stats::BwUnit;
use anyhow::{bail, Context};
use serde::Serialize;

/// One size of the comparison.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CompareRow {
    /// Message size in bytes.
    pub bytes: u64,
    /// Figure on the fast fabric (average bandwidth, or typical latency in usec).
    pub fast: f64,
    /// Same figure on tcp.
    pub tcp: f64,
    /// How many times better the fast fabric is: fast/tcp for bandwidth, tcp/fast for latency.
    pub speedup: f64,
}

/// The comparison document (`--json`).
#[derive(Clone, Debug, Serialize)]
pub struct CompareDoc {
    /// Schema tag.
    pub schema: &'static str,
    /// Test name.
    pub test: String,
    /// Fast fabric's name.
    pub fast_fabric: String,
    /// The figure compared (`bw_average` or `t_typical_us`).
    pub figure: &'static str,
    /// Its unit.
    pub unit: String,
    /// Rows.
    pub rows: Vec<CompareRow>,
    /// Both full runs.
    pub runs: Vec<Document>,
}

/// Pairs up the two runs size by size.
pub fn ratios(fast: &Document, tcp: &Document) -> Vec<CompareRow> {
    let pairs: Vec<(u64, f64, f64)> = match (&fast.results, &tcp.results) {
        (Rows::Bw(f), Rows::Bw(t)) => f
            .iter()
            .filter_map(|a| {
                t.iter()
                    .find(|b| b.bytes == a.bytes)
                    .map(|b| (a.bytes, a.bw_average, b.bw_average))
            })
            .collect(),
        (Rows::Lat(f), Rows::Lat(t)) => f
            .iter()
            .filter_map(|a| {
                t.iter()
                    .find(|b| b.bytes == a.bytes)
                    .map(|b| (a.bytes, a.t_typical_us, b.t_typical_us))
            })
            .collect(),
        _ => Vec::new(),
    };
    let bw = matches!(fast.results, Rows::Bw(_));
    pairs
        .into_iter()
        .map(|(bytes, f, t)| {
            let speedup = if bw { f / t } else { t / f };
            CompareRow {
                bytes,
                fast: f,
                tcp: t,
                speedup: if speedup.is_finite() { speedup } else { 0.0 },
            }
        })
        .collect()
}

/// Runs the comparison.
pub fn run(args: &CompareArgs) -> anyhow::Result<()> {
    if args.fabric == FabricChoice::Tcp {
        bail!("compare measures a fast fabric against tcp; --fabric tcp leaves nothing to compare (use efa, verbs or sim)");
    }
    let plan = plan(args)?;
    let env = crate::info::environment();
    let fast = select::select(args.fabric, None, true, None, &env)?;
    if fast.fabric == FabricKind::Tcp {
        bail!(
            "no fast fabric available to compare with tcp (built: {:?})",
            env.fabrics_built
        );
    }
    let tcp = select::select(FabricChoice::Tcp, None, true, None, &env)?;
    let test_args = crate::cli::loopback_args();
    let plan = Plan {
        wait: Some(test_args.wait_mode(plan.metric)),
        ..plan
    };
    eprintln!(
        "efa-perf: compare {} on {} ({}) and tcp",
        plan.test_name(),
        fast.fabric,
        fast.reason
    );
    let fast_doc =
        crate::engine::run_selected(&fast, &test_args, &plan).context("fast fabric run")?;
    let tcp_doc = crate::engine::run_selected(&tcp, &test_args, &plan).context("tcp run")?;
    let rows = ratios(&fast_doc, &tcp_doc);
    let (figure, unit_label) = match plan.metric {
        Metric::Bw => ("bw_average", plan.unit.label().to_string()),
        Metric::Lat => ("t_typical_us", "usec".to_string()),
    };
    let doc = CompareDoc {
        schema: "efa-perf.compare.v1",
        test: plan.test_name(),
        fast_fabric: fast.fabric.to_string(),
        figure,
        unit: unit_label,
        rows,
        runs: vec![fast_doc, tcp_doc],
    };
    print_doc(&doc, args)?;
    let runs: Vec<&Document> = doc.runs.iter().collect();
    bench::write_chart(&args.plot, &bench::chart_of(&runs))?;
    eprintln!("chart written to {}", args.plot.display());
    Ok(())
}

/// The plan both fabrics run: the sizes asked for, perftest's default counts and depths.
fn plan(args: &CompareArgs) -> anyhow::Result<Plan> {
    if args.min_size > args.max_size {
        bail!(
            "--min-size {} is larger than --max-size {}",
            args.min_size,
            args.max_size
        );
    }
    let (verb, metric) = args.test.split();
    let sizes: Vec<u64> = match args.size {
        Some(s) => vec![s],
        None => bench::all_sizes()
            .into_iter()
            .filter(|s| (args.min_size..=args.max_size).contains(s))
            .collect(),
    };
    if sizes.is_empty() {
        bail!(
            "no power-of-two size between --min-size {} and --max-size {}",
            args.min_size,
            args.max_size
        );
    }
    Ok(Plan {
        verb,
        metric,
        sizes,
        amount: Amount::Iterations(args.iters.unwrap_or(match metric {
            Metric::Bw => 2000,
            Metric::Lat => 1000,
        })),
        streams: args.qps,
        depth: args.tx_depth.unwrap_or(match metric {
            Metric::Bw => 128,
            Metric::Lat => 1,
        }),
        cycle_buffer: None,
        bidirectional: false,
        cpu: false,
        unit: if args.report_gbits {
            BwUnit::GigabitsPerSec
        } else {
            BwUnit::MebibytesPerSec
        },
        format: Format::Quiet,
        plot: None,
        use_event: false,
        cpu_set: None,
        wait: None,
        samples: Default::default(),
    })
}

/// The comparison on stdout: JSON, CSV or the table.
fn print_doc(doc: &CompareDoc, args: &CompareArgs) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(doc)?);
    } else if args.csv {
        let figure = doc.figure;
        println!("bytes,fabric_fast,{figure}_fast,{figure}_tcp,speedup,unit");
        for r in &doc.rows {
            println!(
                "{},{},{:.6},{:.6},{:.4},{}",
                r.bytes, doc.fast_fabric, r.fast, r.tcp, r.speedup, doc.unit
            );
        }
    } else {
        print!("{}", table(doc));
    }
    Ok(())
}

/// The comparison as a text table.
pub fn table(doc: &CompareDoc) -> String {
    let name = match doc.figure {
        "bw_average" => "BW average",
        _ => "t_typical",
    };
    let mut s = format!("{}\n", crate::report::RESULT_LINE);
    s.push_str(&format!(
        " {} : {} vs tcp ({})\n",
        doc.test, doc.fast_fabric, doc.figure
    ));
    s.push_str(&format!("{}\n", crate::report::RESULT_LINE));
    s.push_str(&format!(
        " {:<10} {:>24} {:>24} {:>10}\n",
        "#bytes",
        format!("{} {name}[{}]", doc.fast_fabric, doc.unit),
        format!("tcp {name}[{}]", doc.unit),
        "speedup"
    ));
    for r in &doc.rows {
        s.push_str(&format!(
            " {:<10} {:>24.2} {:>24.2} {:>9.2}x\n",
            r.bytes, r.fast, r.tcp, r.speedup
        ));
    }
    s.push_str(&format!("{}\n", crate::report::RESULT_LINE));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Verb;
    use crate::record::{BwRow, LatRow, RunInfo};

    fn info(metric: Metric) -> RunInfo {
        RunInfo {
            test: "t".into(),
            verb: Verb::Write,
            metric,
            fabric: "f".into(),
            device: "d".into(),
            transport_type: "x".into(),
            connection_type: "SRD".into(),
            mode: "loopback".into(),
            fabric_reason: String::new(),
            queue_pairs: 1,
            tx_depth: 1,
            cycle_buffer: None,
            bidirectional: false,
            bw_unit: BwUnit::MebibytesPerSec,
            use_event: false,
            cpu_set: None,
            worker_wait: None,
            raw: false,
        }
    }

    fn bw(bytes: u64, avg: f64) -> BwRow {
        BwRow {
            bytes,
            iterations: 1,
            bw_peak: avg,
            bw_average: avg,
            msg_rate_mpps: 0.0,
            cpu_util_client: None,
            cpu_util_server: None,
            cores_busy: None,
        }
    }

    #[test]
    fn bandwidth_ratio_is_fast_over_tcp_and_sizes_pair_up() {
        let f = Document::new(info(Metric::Bw), Rows::Bw(vec![bw(2, 10.0), bw(4, 30.0)]));
        let t = Document::new(info(Metric::Bw), Rows::Bw(vec![bw(4, 10.0)]));
        let r = ratios(&f, &t);
        assert_eq!(
            r,
            vec![CompareRow {
                bytes: 4,
                fast: 30.0,
                tcp: 10.0,
                speedup: 3.0
            }]
        );
    }

    #[test]
    fn latency_ratio_is_tcp_over_fast() {
        let lat = |t: f64| LatRow {
            bytes: 8,
            iterations: 1,
            t_min_us: t,
            t_max_us: t,
            t_typical_us: t,
            t_avg_us: t,
            t_stdev_us: 0.0,
            p99_us: t,
            p99_9_us: t,
            cpu_util_client: None,
            cpu_util_server: None,
            cores_busy: None,
            samples_us: None,
        };
        let f = Document::new(info(Metric::Lat), Rows::Lat(vec![lat(2.0)]));
        let t = Document::new(info(Metric::Lat), Rows::Lat(vec![lat(20.0)]));
        assert_eq!(ratios(&f, &t)[0].speedup, 10.0);
        let doc = CompareDoc {
            schema: "s",
            test: "write_lat".into(),
            fast_fabric: "sim".into(),
            figure: "t_typical_us",
            unit: "usec".into(),
            rows: ratios(&f, &t),
            runs: vec![],
        };
        assert!(table(&doc).contains("10.00x"));
    }
}
