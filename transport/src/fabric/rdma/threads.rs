//! The background threads of an RDMA fabric (its target or connection service), stopped and
//! joined when the fabric drops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use ::efa::Context;

use crate::affinity::{Affinity, CpuSet};
use crate::FabricError;

/// The cpus `affinity` puts the threads (`what`) of `fabric` on, from the NUMA node of its
/// rails' devices (`ctxs`) by default.
pub(crate) fn rail_cpus<'a>(
    fabric: &'static str,
    what: &'static str,
    affinity: &Affinity,
    ctxs: impl Iterator<Item = &'a Arc<Context>>,
) -> Result<Option<CpuSet>, FabricError> {
    let dirs: Vec<_> = ctxs.map(|c| c.info().ibdev_path.clone()).collect();
    affinity
        .for_fabric(fabric, &dirs)
        .map_err(|e| FabricError::affinity(fabric, what, e))
}

/// A fabric's threads and the flag they watch. Dropping it raises the flag and joins them: the
/// fabric keeps it as its first field, so the threads end before anything else of the fabric
/// (registrations above all) goes away.
#[derive(Debug)]
pub(crate) struct Threads {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Threads {
    /// Threads `handles`, which end once `stop` is raised.
    pub(crate) fn new(stop: Arc<AtomicBool>, handles: Vec<JoinHandle<()>>) -> Self {
        Threads { stop, handles }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.handles.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_stops_and_joins() {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicBool::new(false));
        let (s, v) = (stop.clone(), seen.clone());
        let t = std::thread::spawn(move || {
            // Bounded: the test fails by timeout rather than hanging.
            for _ in 0..10_000 {
                if s.load(Ordering::SeqCst) {
                    v.store(true, Ordering::SeqCst);
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        });
        drop(Threads::new(stop, vec![t]));
        assert!(
            seen.load(Ordering::SeqCst),
            "the thread saw the flag before the join returned"
        );
    }
}
