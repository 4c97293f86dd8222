//! Peers the metadata service reports gone ([`Metadata::watch`](crate::Metadata::watch)).
//!
//! Each open remote segment carries a `gone` flag, set once by the watch callback, which also
//! bumps the engine's *gone epoch*. The hot path only reads atomics:
//!
//! - a submit refuses a request to a gone remote ([`TransportError::PeerGone`]);
//! - a wait *sweeps* its batch when the epoch moved since the batch was last swept: every
//!   Pending request whose remote is gone ends `Failed(PeerGone)` at once. Its work requests
//!   may still complete in the fabric later (a reset connection, a fabric timeout); those
//!   completions are absorbed like a cancelled request's, so each request completes exactly
//!   once, and the batch can be freed once they are in (drain first, as after a cancel);
//! - a submit that saw the epoch move while it ran marks its batch for a new sweep, so a
//!   request that passed the flag check just before the flag was set is still caught.
//!
//! A request whose remote segment was closed before the sweep is not swept (its entry, and
//! so its flag, is gone); it ends as its fabric completion says.

use std::sync::atomic::Ordering::*;

use crate::batch::BatchSlot;
use crate::engine::Inner;
use crate::{BatchId, FailReason};

/// The engine's gone epoch, read at the start of a submit.
#[inline]
pub(crate) fn epoch(inner: &Inner) -> u64 {
    inner.gone_epoch.load(SeqCst)
}

/// Marks `slot` for a new sweep if a peer went gone while a submit into it ran.
#[inline]
pub(crate) fn after_submit(inner: &Inner, slot: &BatchSlot, epoch_before: u64) {
    if inner.gone_epoch.load(SeqCst) != epoch_before {
        // No epoch reaches u64::MAX, so the next wait sweeps.
        slot.swept.store(u64::MAX, SeqCst);
    }
}

/// Fails every Pending request of `batch` whose remote segment is gone, unless the batch was
/// swept at the current epoch already; returns how many it failed.
#[inline]
pub(crate) fn sweep(inner: &Inner, slot: &BatchSlot, batch: BatchId) -> u32 {
    let epoch = inner.gone_epoch.load(SeqCst);
    if slot.swept.load(SeqCst) == epoch {
        return 0;
    }
    sweep_now(inner, slot, batch, epoch)
}

#[cold]
fn sweep_now(inner: &Inner, slot: &BatchSlot, batch: BatchId, epoch: u64) -> u32 {
    // Recorded before the scan: a submit that marks the batch after this store is swept again.
    slot.swept.store(epoch, SeqCst);
    let Some(pin) = slot.pin(batch) else {
        return 0;
    };
    let mut failed = 0;
    let submitted = slot.submitted.load(Acquire);
    for req in (0..submitted).filter_map(|i| pin.request(i)) {
        if req.is_pending()
            && remote_gone(
                inner,
                req.remote.load(Relaxed),
                req.remote_generation.load(Relaxed),
            )
            && slot.fail_pending(req, FailReason::PeerGone)
        {
            failed += 1;
        }
    }
    failed
}

/// Whether remote segment `(index, generation)` is open and its owner gone.
fn remote_gone(inner: &Inner, index: u32, generation: u32) -> bool {
    inner
        .remotes
        .pin(index, generation)
        .is_some_and(|entry| entry.gone.load(Acquire))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::fabric::sim::{SimConfig, SimFabric, SimFaults, SimNetwork};
    use crate::{
        Access, Engine, EngineConfig, LocalRegistry, Location, OwnedMemory, RemoteSegment, Request,
        RequestStatus,
    };

    /// Engine `a` with a source segment, and `b/kv` opened from it on a peer that never
    /// answers (for 10 s), so requests to it stay pending.
    fn hung_peer() -> (Engine, Engine, crate::SegmentId, RemoteSegment) {
        let net = SimNetwork::new();
        let meta = Arc::new(LocalRegistry::new());
        let sim = SimConfig {
            faults: SimFaults {
                unresp_timeout: Duration::from_secs(10),
                ..SimFaults::default()
            },
            ..SimConfig::default()
        };
        let a_fabric = SimFabric::new(&net, sim.clone()).unwrap();
        let b_fabric = SimFabric::new(&net, sim).unwrap();
        let a = Engine::new(EngineConfig::new("a"), a_fabric, meta.clone()).unwrap();
        let b = Engine::new(EngineConfig::new("b"), b_fabric.clone(), meta).unwrap();
        let mem = |n| OwnedMemory::zeroed(n, 64).unwrap();
        let src = a
            .register_owned("a/src", mem(4096), Location::Cpu(0), Access::NONE)
            .unwrap();
        let rw = Access::REMOTE_READ_WRITE;
        b.register_owned("b/kv", mem(4096), Location::Cpu(0), rw)
            .unwrap();
        let remote = a.open_segment("b/kv").unwrap();
        b_fabric.set_alive(false);
        (a, b, src, remote)
    }

    /// Marks `remote` gone as its watch would.
    fn mark_gone(a: &Engine, remote: RemoteSegment) {
        let inner = &a.inner;
        let entry = inner.remotes.pin(remote.index, remote.generation).unwrap();
        let gone = crate::engine::on_gone(
            entry.gone.clone(),
            inner.gone_epoch.clone(),
            "b/kv".into(),
            "b".into(),
        );
        drop(entry);
        gone();
    }

    /// The race `after_submit` closes: a request passes the gone check, its peer goes gone and
    /// a sweep of the batch runs before the request is pending, so that sweep misses it. The
    /// submit saw the epoch move and marks the batch, and the next wait catches the request.
    #[test]
    fn a_submit_racing_the_gone_report_is_swept_again() {
        let (a, _b, src, remote) = hung_peer();
        let mut w = a.worker().unwrap();
        let batch = a.allocate_batch(1).unwrap();
        let slot = a.inner.batches.get(batch).unwrap();
        let before = epoch(&a.inner);
        w.submit(batch, &[Request::write(src, 0, remote, 0, 8)])
            .unwrap();
        // What the racing side did meanwhile: the report, and a sweep that found nothing.
        mark_gone(&a, remote);
        slot.swept.store(epoch(&a.inner), SeqCst);
        assert_eq!(
            sweep(&a.inner, slot, batch),
            0,
            "already swept at this epoch"
        );
        // The end of that submit.
        after_submit(&a.inner, slot, before);
        assert_eq!(sweep(&a.inner, slot, batch), 1);
        let st = w.wait(batch, Duration::from_secs(5)).unwrap();
        assert_eq!((st.failed, st.pending), (1, 0));
        assert_eq!(
            a.request_status(batch, 0).unwrap(),
            RequestStatus::Failed(FailReason::PeerGone)
        );
    }

    #[test]
    fn a_submit_without_a_report_leaves_the_sweep_alone() {
        let (a, _b, src, remote) = hung_peer();
        let mut w = a.worker().unwrap();
        let batch = a.allocate_batch(1).unwrap();
        let slot = a.inner.batches.get(batch).unwrap();
        w.submit(batch, &[Request::write(src, 0, remote, 0, 8)])
            .unwrap();
        assert_eq!(slot.swept.load(SeqCst), 0);
        assert_eq!(sweep(&a.inner, slot, batch), 0);
        // A report after the submit is seen by the next sweep through the epoch alone.
        mark_gone(&a, remote);
        assert_eq!(sweep(&a.inner, slot, batch), 1);
        assert_eq!(sweep(&a.inner, slot, batch), 0, "once");
    }
}
