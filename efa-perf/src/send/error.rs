//! What can go wrong in a SEND test, each with its cause.

use super::plan::TooLarge;
use efa::{EfaStatus, WcStatus};
use std::time::Duration;

/// Why a SEND test failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
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
    /// A message larger than a port's `max_msg_sz`.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// A work request completed in error.
    #[error("a {what} on queue pair {qp} completed with {status:?} (EFA status {efa:?}, vendor_err {vendor_err})")]
    Completion {
        /// `send` or `receive`.
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
    /// A send on a queue pair that has no peer yet.
    #[error("queue pair {0} has no peer address")]
    NotConnected(u32),
    /// Nothing completed for too long.
    #[error(
        "no completion for {timeout:?}: {sent} sends posted, {outstanding} of them outstanding, \
         {received} messages received (of {expect}); raise --timeout if the peer is slow"
    )]
    Stalled {
        /// The bound.
        timeout: Duration,
        /// Sends posted in this run.
        sent: u64,
        /// Sends not yet completed.
        outstanding: u64,
        /// Receives completed in this run.
        received: u64,
        /// Receives awaited (`u64::MAX`: not yet known).
        expect: u64,
    },
    /// The other side of the run gave up.
    #[error("stopped because the other side of the run failed")]
    Aborted,
}

/// Wraps an efa error with what was being done and where.
pub fn verbs<'a>(what: &'static str, device: &'a str) -> impl FnOnce(efa::Error) -> SendError + 'a {
    move |source| SendError::Verbs {
        what,
        device: device.into(),
        source,
    }
}
