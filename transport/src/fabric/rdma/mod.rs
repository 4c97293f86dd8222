//! Pieces shared by the two fabrics over real verbs devices ([`verbs`](super::verbs) and
//! [`efa`](super::efa)): the byte codec of addresses and keys, completion-status mapping,
//! memory registration on every rail, and the polling backoff of target-side threads.

pub(crate) mod backoff;
pub(crate) mod codec;
pub(crate) mod registry;
pub(crate) mod status;
