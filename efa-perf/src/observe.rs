//! What `--stats`, `--counters` and `--prometheus` add around a test: the engines' metrics
//! summary afterwards, the devices' hw_counters deltas, and a `/metrics` listener during the run.

use crate::cli::ObserveArgs;
use crate::hwcounters::{self, Snapshot};
use crate::prometheus::Exporter;
use crate::select::Selection;
use std::fmt::Write as _;
use std::net::SocketAddr;
use transport::metrics::MetricsSnapshot;
use transport::Engine;

/// The options that ask for it.
#[derive(Clone, Debug, Default)]
pub struct Wanted {
    /// Print a metrics summary of each engine afterwards.
    pub stats: bool,
    /// Print the devices' hw_counters deltas.
    pub counters: bool,
    /// Serve `/metrics` here during the run.
    pub prometheus: Option<SocketAddr>,
    /// Only this device's counters.
    pub device: Option<String>,
}

impl Wanted {
    /// What the observability options ask for, on the selected device (or `device`).
    pub fn from_args(o: &ObserveArgs, selection: &Selection, device: Option<&str>) -> Wanted {
        Wanted {
            stats: o.stats,
            counters: o.counters,
            prometheus: o.prometheus,
            device: selection.device.clone().or(device.map(str::to_string)),
        }
    }
}

/// State between the start and the end of a test.
pub struct Observer {
    wanted: Wanted,
    before: Option<Result<Snapshot, String>>,
    exporter: Option<Exporter>,
}

impl Observer {
    /// Reads the counters (if wanted) before the test.
    pub fn start(wanted: Wanted) -> Observer {
        let before = wanted
            .counters
            .then(|| Snapshot::read(wanted.device.as_deref()));
        Observer {
            wanted,
            before,
            exporter: None,
        }
    }

    /// Starts the `/metrics` listener (if wanted) for these engines.
    ///
    /// # Errors
    ///
    /// Binding the listener's address.
    pub fn serve(&mut self, engines: &[Engine]) -> anyhow::Result<()> {
        if let Some(addr) = self.wanted.prometheus {
            let e = Exporter::start(addr, engines.to_vec())
                .map_err(|e| anyhow::anyhow!("--prometheus {addr}: {e}"))?;
            eprintln!("efa-perf: metrics at http://{}/metrics", e.local_addr());
            self.exporter = Some(e);
        }
        Ok(())
    }

    /// What the test did, as text: metrics summaries and counter deltas (empty if nothing was
    /// asked for).
    pub fn finish(self, engines: &[Engine]) -> String {
        let mut s = String::new();
        if self.wanted.stats {
            for e in engines {
                s.push_str(&summary(e.name(), &e.metrics()));
            }
        }
        match self.before {
            None => {}
            Some(Err(why)) => {
                let _ = writeln!(s, "hw_counters: not available ({why})");
            }
            Some(Ok(before)) => {
                // Providers may refresh counters periodically (soft-efa every 200 ms).
                std::thread::sleep(std::time::Duration::from_millis(300));
                match Snapshot::read(self.wanted.device.as_deref()) {
                    Ok(after) => s.push_str(&hwcounters::render(&after.deltas(&before))),
                    Err(why) => {
                        let _ = writeln!(s, "hw_counters: not available after the test ({why})");
                    }
                }
            }
        }
        s
    }
}

/// A few lines summing up one engine's metrics.
pub fn summary(engine: &str, m: &MetricsSnapshot) -> String {
    let mut s = String::new();
    let p = format!("stats[{engine}]:");
    if !m.enabled {
        let _ = writeln!(s, "{p} metrics are off");
        return s;
    }
    let _ = writeln!(
        s,
        "{p} requests READ {} ({} B), WRITE {} ({} B), WRITE_WITH_NOTIFY {} ({} B); completed {}, failed {}, late {}, in flight {}, refused submits {}, retries {}",
        m.read.submitted,
        m.read.bytes,
        m.write.submitted,
        m.write.bytes,
        m.write_with_notify.submitted,
        m.write_with_notify.bytes,
        m.completed,
        m.failed(),
        m.late,
        m.in_flight,
        m.rejected_submits,
        m.retries
    );
    if let (Some(mean), Some(p50), Some(p99)) = (
        m.latency.mean(),
        m.latency.quantile(0.5),
        m.latency.quantile(0.99),
    ) {
        let _ = writeln!(
            s,
            "{p} latency of {} timed requests: mean {mean:?}, p50 <= {p50:?}, p99 <= {p99:?}",
            m.latency.count
        );
    }
    for (r, n) in &m.failures {
        let _ = writeln!(s, "{p} failures {r}: {n}");
    }
    for r in &m.rails {
        let _ = writeln!(
            s,
            "{p} rail {}: {} work requests, {} B",
            r.rail, r.work_requests, r.bytes
        );
    }
    for q in &m.peers {
        let who = q.peer.map_or("others".to_string(), |p| format!("peer {p}"));
        let _ = writeln!(
            s,
            "{p} {who}: {} requests, {} B, {} failed",
            q.submitted, q.bytes, q.failed
        );
    }
    let _ = writeln!(
        s,
        "{p} registrations {} ({} B in {:?}), unregistrations {}",
        m.registrations, m.registered_bytes, m.registration_time, m.unregistrations
    );
    s
}
