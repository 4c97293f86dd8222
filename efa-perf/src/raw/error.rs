//! What can go wrong in a raw test, each with its cause.

use super::plan::{TooLarge, Unsupported};
use efa::{EfaStatus, WcStatus};
use std::time::Duration;

/// Why a raw test failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RawError {
    /// A verbs call failed.
    #[error("{what} on {device}")]
    Verbs {
        /// What was being done.
        what: &'static str,
        /// The device.
        device: String,
        /// The efa crate's error.
        #[source]
        source: efa::Error,
    },
    /// A message larger than the device's limit for the operation.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// A test the device cannot run as asked.
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
    /// An RDMA test's peer gave no region to reach.
    #[error("the peer gave no memory region for {0}: it runs another test or an older efa-perf")]
    NoRegion(&'static str),
    /// A work request completed in error.
    #[error("a {what} on queue pair {qp} completed with {status:?} (EFA status {efa:?}, vendor_err {vendor_err})")]
    Completion {
        /// `send`, `receive`, `RDMA WRITE` or `RDMA READ`.
        what: &'static str,
        /// Index of the queue pair.
        qp: u32,
        /// The verbs status.
        status: WcStatus,
        /// EFA's status by name, on EFA.
        efa: Option<EfaStatus>,
        /// The raw vendor error.
        vendor_err: u32,
    },
    /// A receive of the wrong length.
    #[error("received a {got}-byte message where {want}-byte messages were sent")]
    Length {
        /// Bytes received.
        got: u32,
        /// Bytes expected.
        want: u64,
    },
    /// An operation on a queue pair that has no peer yet.
    #[error("queue pair {0} has no peer address")]
    NotConnected(u32),
    /// Nothing completed for too long.
    #[error(
        "no completion for {timeout:?}: {sent} operations posted, {outstanding} of them outstanding, \
         {received} messages received (of {expect}); raise --timeout if the peer is slow"
    )]
    Stalled {
        /// The bound.
        timeout: Duration,
        /// Operations (SENDs, WRITEs, READs) posted in this run.
        sent: u64,
        /// Operations not yet completed.
        outstanding: u64,
        /// Receives completed in this run.
        received: u64,
        /// Receives awaited (`u64::MAX`: not yet known).
        expect: u64,
    },
    /// A WRITE ping-pong's next message never landed.
    #[error(
        "no RDMA WRITE landed within {timeout:?} (waiting for sequence byte {want}); raise \
         --timeout if the peer is slow"
    )]
    NoArrival {
        /// The bound.
        timeout: Duration,
        /// The sequence byte awaited.
        want: u8,
    },
    /// The other side of the run gave up.
    #[error("stopped because the other side of the run failed")]
    Aborted,
}

/// Wraps an efa error with what was being done and where.
pub fn verbs<'a>(what: &'static str, device: &'a str) -> impl FnOnce(efa::Error) -> RawError + 'a {
    move |source| RawError::Verbs {
        what,
        device: device.into(),
        source,
    }
}
