//! Runs a plan over the transport engine: in this process (loopback), as the client of a server,
//! or as the server.

use crate::bench::{self, Plan};
use crate::cli::{Metric, TestArgs};
use crate::loopback::Loopback;
use crate::measure;
use crate::observe::{Observer, Wanted};
use crate::record::Document;
use crate::remote;
use crate::select::Selection;
use std::net::IpAddr;
use std::time::Duration;

/// Runs a plan on the selected fabric and returns its document: in this process (loopback) or as the
/// client of a server.
pub fn run_selected(
    selection: &Selection,
    args: &TestArgs,
    plan: &Plan,
) -> anyhow::Result<Document> {
    let plan = &Plan {
        verb: crate::raw::resolve(plan.verb, selection.fabric),
        ..plan.clone()
    };
    if crate::raw::is_raw(plan.verb, selection.fabric, args.raw) {
        return crate::raw::run(selection, args, plan);
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
        let p = crate::fabrics::params(
            selection,
            args,
            plan.metric,
            plan.streams,
            IpAddr::from([127, 0, 0, 1]),
        );
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
    let mut observer = Observer::start(Wanted::from_args(
        &args.observe,
        selection,
        args.device.as_deref(),
    ));
    observer.serve(&runner.engines())?;
    let doc = bench::run(runner, plan)?;
    eprint!("{}", observer.finish(&runner.engines()));
    Ok(doc)
}

/// Runs a test from the command line: loopback, client (a peer was given) or server (none was).
pub fn execute(selection: &Selection, args: &TestArgs, plan: &Plan) -> anyhow::Result<()> {
    crate::raw::check_raw(args.raw, plan.verb, selection.fabric)?;
    if !selection.loopback && args.peer.is_none() {
        let verb = crate::raw::resolve(plan.verb, selection.fabric);
        return remote::serve(selection, args, verb, plan.metric);
    }
    run_selected(selection, args, plan).map(|_| ())
}
