//! Safe RAII verbs for AWS Elastic Fabric Adapter (EFA), over [`efa_sys`].
//!
//! One module per verbs object, parents held by `Arc` so a child never outlives what it needs:
//!
//! - [`device`]: list devices and tell EFA apart ([`devices`], [`DeviceInfo::open`]).
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

pub mod ah;
pub mod caps;
pub mod channel;
pub mod context;
pub mod counter;
pub mod cq;
pub mod device;
pub mod error;
pub mod gid;
pub mod mr;
pub mod pd;
pub mod qp;
pub mod status;
pub mod sysfs;
mod teardown;

pub use ah::{Ah, AhAttr};
pub use caps::{EfaCaps, EfaDeviceAttr};
pub use channel::{CompChannel, CqEvent};
pub use context::{Context, DeviceAttr, LinkLayer, Mtu, PortAttr, PortState};
pub use counter::{CompCounter, CounterOps};
pub use cq::{Completion, Cq, CqBuilder, Poll, WorkCompletion};
pub use device::{devices, efa_devices, DeviceInfo, DeviceKind};
pub use error::{Error, Limit, Result};
pub use gid::{Gid, GidEntry, GidType};
pub use mr::{Access, EfaMrAttr, Mr, RemoteMr, Sge};
pub use pd::{Pd, ThreadDomain};
pub use qp::{
    Batch, Datagram, Dest, Payload, Qp, QpAddress, QpBuilder, QpCaps, Rc, RcOptions, RcQp,
    RemoteAddr, SendLimits, SendOp, Srd, SrdQp, Transport, TransportKind, Ud, UdQp, GRH_BYTES,
    RECV_CHAIN,
};
pub use status::{EfaStatus, QpState, WcOpcode, WcStatus};
pub use teardown::teardown_errors;

#[cfg(test)]
mod alloc_count;
