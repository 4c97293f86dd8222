//! `efa-perf`: perftest-style benchmarks and device information for the EFA stack.
//!
//! Exit codes: 0 success (also `info` with no device), 1 runtime failure (the cause chain is printed),
//! 2 bad arguments (clap's convention).

mod bench;
mod cli;
mod compare;
mod cpu;
mod devices;
mod engine;
mod fabrics;
mod hwcounters;
mod info;
mod loopback;
mod measure;
mod observe;
mod progress;
mod prometheus;
mod raw;
mod record;
mod reg;
mod remote;
mod report;
mod runner;
mod select;
mod session;
mod stamp;
mod stats;
mod svg;
mod validate;
mod validate_cmd;

use clap::{CommandFactory, Parser};
use cli::{Cli, Command, Metric, TestArgs, Verb};
use runner::Amount;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("efa-perf: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(1)
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Info(args) => info::run(&args),
        Command::SendBw(a) => test(Verb::Send, Metric::Bw, a),
        Command::SendLat(a) => test(Verb::Send, Metric::Lat, a),
        Command::NotifyBw(a) => test(Verb::Notify, Metric::Bw, a),
        Command::NotifyLat(a) => test(Verb::Notify, Metric::Lat, a),
        Command::WriteBw(a) => test(Verb::Write, Metric::Bw, a),
        Command::WriteLat(a) => test(Verb::Write, Metric::Lat, a),
        Command::ReadBw(a) => test(Verb::Read, Metric::Bw, a),
        Command::ReadLat(a) => test(Verb::Read, Metric::Lat, a),
        Command::Compare(a) => compare::run(&a),
        Command::Validate(a) => validate_cmd::run(&a),
        Command::Reg(a) => reg::run(&a),
    }
}

/// Exits with clap's usage-error code and message.
fn usage_error(kind: clap::error::ErrorKind, message: String) -> ! {
    Cli::command().error(kind, message).exit()
}

/// Checks the options clap cannot check alone.
fn validate(verb: Verb, metric: Metric, a: &TestArgs) {
    use clap::error::ErrorKind;
    if a.rdma_cm {
        usage_error(
            ErrorKind::ArgumentConflict,
            "-R/--rdma_cm (connect with RDMA-CM) is not supported: connection setup is the transport's own \
             descriptor exchange over TCP on -p, which also covers EFA's connectionless SRD, where RDMA-CM does \
             not apply. Drop -R."
                .into(),
        );
    }
    if a.connection.is_some() && a.fabric != cli::FabricChoice::Auto {
        usage_error(
            ErrorKind::ArgumentConflict,
            "give either -c/--connection or --fabric, not both".into(),
        );
    }
    if metric == Metric::Bw && (a.report_histogram || a.report_unsorted) {
        usage_error(
            ErrorKind::ArgumentConflict,
            "-H/--report-histogram and -U/--report-unsorted list latency samples: give them to a latency test"
                .into(),
        );
    }
    if metric == Metric::Lat && a.bidirectional {
        usage_error(
            ErrorKind::ArgumentConflict,
            "-b/--bidirectional applies to bandwidth tests only".into(),
        );
    }
    if metric == Metric::Lat && a.qps > 1 {
        usage_error(
            ErrorKind::ArgumentConflict,
            "-q/--qp applies to bandwidth tests only (as in perftest)".into(),
        );
    }
    if verb == Verb::Read && a.bidirectional {
        // perftest allows it; the engine's READ pulls in one direction per initiator, so say what -b means.
        eprintln!("note: -b with READ: both sides read from each other at once");
    }
}

fn test(verb: Verb, metric: Metric, a: TestArgs) -> anyhow::Result<()> {
    validate(verb, metric, &a);
    if let Some(cpus) = &a.cpu {
        // Before any thread starts: every thread of the run inherits the set, as under taskset.
        transport::affinity::pin_current_thread(cpus)
            .map_err(|e| anyhow::Error::new(e).context(format!("--cpu {cpus}")))?;
    }
    let sizes = if a.all {
        bench::all_sizes()
    } else {
        vec![a.size.unwrap_or(match metric {
            Metric::Bw => 65536,
            Metric::Lat => 2,
        })]
    };
    let amount = match (a.duration, a.iters) {
        (Some(secs), _) => Amount::Duration(Duration::from_secs(secs)),
        (None, Some(n)) => Amount::Iterations(n),
        (None, None) => Amount::Iterations(if verb == Verb::Write && metric == Metric::Bw {
            5000
        } else {
            1000
        }),
    };
    let depth = a.tx_depth.unwrap_or(match metric {
        Metric::Bw => 128,
        Metric::Lat => 1,
    });
    let format = if a.csv {
        bench::Format::Csv
    } else if a.json {
        bench::Format::Json
    } else {
        bench::Format::Table
    };
    let plan = bench::Plan {
        verb,
        metric,
        sizes,
        amount,
        streams: a.qps,
        depth,
        cycle_buffer: a.cycle_buffer,
        bidirectional: a.bidirectional,
        cpu: a.cpu_util,
        unit: if a.report_gbits {
            stats::BwUnit::GigabitsPerSec
        } else {
            stats::BwUnit::MebibytesPerSec
        },
        format,
        plot: a.plot.clone(),
        use_event: a.use_event,
        cpu_set: a.cpu.map(|c| c.to_string()),
        wait: Some(a.wait_mode(metric)),
        samples: report::SampleLists {
            unsorted: a.report_unsorted,
            sorted: a.report_histogram || a.report_unsorted,
        },
    };
    let choice = a.connection.unwrap_or(a.fabric);
    let env = info::environment();
    let selection = select::select(
        choice,
        a.peer.as_deref(),
        a.loopback,
        a.device.as_deref(),
        &env,
    )?;
    eprintln!(
        "efa-perf: fabric {} ({})",
        selection.fabric, selection.reason
    );
    engine::execute(&selection, &a, &plan)
}
