//! Safe RAII verbs for AWS Elastic Fabric Adapter (EFA), over [`efa_sys`].
//!
//! One module per verbs object, parents held by `Arc` so a child never outlives what it needs:
//!
//! - [`devices`] and [`DeviceInfo`]: list devices and tell EFA apart ([`DeviceInfo::open`]).
//! - [`Context`]: an open device, its attributes, ports, GID table and, on EFA, the efadv
//!   attribute set ([`EfaDeviceAttr`], [`EfaCaps`]).
//! - [`Pd`] and [`ThreadDomain`]: protection and thread domains.
//! - [`Mr`]: registered memory (owned, borrowed, raw or dma-buf), with [`Sge`]s and [`RemoteMr`].
//! - [`Cq`]: extended completion queue with a lending poller ([`Poll`], [`Completion`]) and a
//!   batch poll into [`WorkCompletion`]s; EFA's vendor error by name ([`EfaStatus`]).
//! - [`CompChannel`]: completion channels, so a thread can sleep until an armed CQ
//!   ([`Cq::req_notify`]) has a completion, with the fd for epoll, mio or tokio.
//! - [`Ah`]: address handles for datagram transports.
//! - [`Qp`]: queue pairs typed by transport ([`SrdQp`], [`UdQp`], [`RcQp`]); posting through a
//!   [`Batch`] guard that checks device limits first and aborts on drop.
//!
//! Posting and polling allocate nothing and take no lock in this crate.
//!
//! Every public type has one path: the crate root (the modules are private).

mod ah;
mod caps;
mod channel;
mod context;
mod counter;
mod cq;
mod device;
mod error;
mod gid;
mod held;
mod mr;
mod pd;
mod qp;
mod srq;
mod status;
mod sysfs;
mod teardown;

pub use ah::{Ah, AhAttr};
pub use caps::{EfaCaps, EfaDeviceAttr};
pub use channel::{CompChannel, CqEvent};
pub use context::{Context, DeviceAttr, LinkLayer, Mtu, PortAttr, PortState};
pub use counter::{CompCounter, CounterOps};
pub use cq::{Completion, Cq, CqBuilder, Poll, WorkCompletion};
pub use device::{
    devices, efa_devices, efa_driver_version, hw_counters, hw_counters_in, DeviceInfo, DeviceKind,
    NodeType, TransportType,
};
pub use error::{Error, Limit, Result};
pub use gid::{Gid, GidEntry, GidType};
pub use mr::{Access, EfaMrAttr, Mr, RemoteMr, Sge};
pub use pd::{Pd, ThreadDomain};
pub use qp::{
    Batch, Datagram, Dest, Payload, Qp, QpAddress, QpBuilder, QpCaps, Rc, RcOptions, RcQp,
    RemoteAddr, SendLimits, SendOp, Srd, SrdQp, Transport, TransportKind, Ud, UdQp, GRH_BYTES,
    MAX_QKEY, RECV_CHAIN,
};
pub use srq::Srq;
pub use status::{EfaStatus, QpState, WcOpcode, WcStatus};
pub use sysfs::HwCounters;
pub use teardown::teardown_errors;

#[cfg(test)]
mod alloc_count;
