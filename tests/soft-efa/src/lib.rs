//! soft-efa: a software EFA device.
//!
//! Built as a shared library that programs load in place of rdma-core's `libibverbs.so.1` and
//! `libefa.so.1` (see the README for how). It shows EFA devices of each hardware generation, with
//! their attributes, limits and checks, and carries SRD between processes over UDP: reliable,
//! deliberately unordered, segmented at an MTU, with EFA's error completions and injected faults.
//! It models behaviour, not timing.

// The C ABI is unsafe by nature: every exported function takes raw pointers from the program.
#![allow(clippy::missing_safety_doc)]

pub mod abi;
pub mod cntr;
pub mod config;
pub mod cq;
pub mod device;
pub mod efadv;
pub mod gid;
pub mod locks;
pub mod profile;
pub mod qp;
pub mod status;
pub mod sysfs;
pub mod verbs;
pub mod wire;
