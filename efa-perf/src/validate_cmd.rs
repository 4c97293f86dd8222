//! The `validate` subcommand: options checked, fabrics created, the run reported.

use crate::cli::loopback_args;
use crate::cli::{FabricChoice, Metric, ValidateArgs};
use crate::fabrics::params;
use crate::observe::{Observer, Wanted};
use crate::select::{self, FabricKind};
use crate::validate::{self, Options, Rig};
use anyhow::{bail, Context};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use transport::fabric::sim::SimNetwork;
use transport::fabric::Fabric;

/// Runs `efa-perf validate`.
///
/// # Errors
///
/// Bad option combinations, setup failures, and a run with any mismatch or failed request.
pub fn run(a: &ValidateArgs) -> anyhow::Result<()> {
    if a.max_len > a.segment_size {
        bail!(
            "--max-len {} is larger than --segment-size {}",
            a.max_len,
            a.segment_size
        );
    }
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let env = crate::info::environment();
    let selection = select::select(a.fabric, None, true, a.device.as_deref(), &env)?;
    let o = Options {
        peers: a.peers,
        ops: a.ops,
        max_len: a.max_len,
        segment: a.segment_size,
        batch: a.batch,
        seed,
        metadata: a.metadata,
        timeout: Duration::from_secs(a.timeout),
        slice_size: a.slice_size,
        corrupt: a.inject_corruption,
    };
    println!(
        "efa-perf validate: fabric {} ({}), metadata {:?}, {} peers, {} ops, lengths 1..={} B, batch {}, seed {seed} \
         (repeat with --seed {seed})",
        selection.fabric, selection.reason, a.metadata, a.peers, a.ops, a.max_len, a.batch
    );
    let fabrics = fabrics(selection.fabric, a)?;
    let mut observer = Observer::start(Wanted::from_args(
        &a.observe,
        &selection,
        a.device.as_deref(),
    ));
    let mut rig = Rig::new(fabrics, &o, seed).context("setting up the engines")?;
    observer.serve(&rig.engines())?;
    let report = validate::run(&mut rig, &o)?;
    print!("{}", report.render());
    print!("{}", observer.finish(&rig.engines()));
    if !report.ok() {
        println!("validate: FAILED (seed {seed})");
        bail!(
            "validation failed: {} failed requests, {} + {} mismatched bytes, {} of {} notifications",
            report.failed.len(),
            report.mismatch_count,
            report.final_mismatch_count,
            report.notifications.1,
            report.notifications.0
        );
    }
    println!("validate: OK");
    Ok(())
}

/// One fabric instance per engine (initiator first), reaching each other.
fn fabrics(kind: FabricKind, a: &ValidateArgs) -> anyhow::Result<Vec<Arc<dyn Fabric>>> {
    let mut args = loopback_args();
    args.fabric = FabricChoice::Auto;
    args.device = a.device.clone();
    args.ib_port = a.ib_port;
    args.gid_index = a.gid_index;
    args.timeout = a.timeout;
    args.slice_size = a.slice_size;
    args.two_sided = a.two_sided;
    let selection = select::Selection {
        fabric: kind,
        device: a.device.clone(),
        loopback: true,
        reason: String::new(),
    };
    // One batch at a time, each waited for: workers poll as in a latency test.
    let p = params(
        &selection,
        &args,
        Metric::Lat,
        1,
        IpAddr::from([127, 0, 0, 1]),
    );
    let net = (kind == FabricKind::Sim).then(SimNetwork::new);
    (0..=a.peers)
        .map(|i| {
            crate::fabrics::create(kind, &p, net.as_ref())
                .map(|(f, _)| f)
                .with_context(|| format!("creating fabric instance {i}"))
        })
        .collect()
}
