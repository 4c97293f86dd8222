//! Transfer requests: what to move between local memory and a remote segment.

use crate::{RemoteSegment, SegmentId};

/// The operation of a transfer request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// Copy from the remote segment into local memory.
    Read,
    /// Copy from local memory into the remote segment.
    Write,
    /// Write, then count one arrival of the tag at the target once all bytes are placed
    /// (see [`Notifications`](crate::Notifications)). On a fabric that carries the tag with
    /// the bytes ([`Capabilities::supports_write_notify`](crate::fabric::Capabilities): `verbs`,
    /// `efa`, `tcp`, `sim`), a request of one slice is one work request (RDMA WRITE with
    /// immediate; on `efa` between devices without RDMA WRITE, the fabric's two-sided protocol
    /// sends the bytes, then the notification; on `tcp` one request whose target counts the tag
    /// once the payload is placed); otherwise, and for several slices, the notification goes out
    /// once every slice has completed.
    WriteWithNotify(u32),
}

impl Opcode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Opcode::Read => "READ",
            Opcode::Write => "WRITE",
            Opcode::WriteWithNotify(_) => "WRITE_WITH_NOTIFY",
        }
    }
}

/// Local memory of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LocalAddr {
    /// An offset inside a registered segment (fast: no search).
    Segment {
        /// The segment.
        segment: SegmentId,
        /// Offset from its start.
        offset: u64,
    },
    /// A raw address, validated by searching the registered segments (linear in their number).
    Raw(u64),
}

/// One transfer request of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Request {
    /// Operation.
    pub op: Opcode,
    /// Local memory.
    pub local: LocalAddr,
    /// Remote segment.
    pub remote: RemoteSegment,
    /// Offset in the remote segment.
    pub remote_offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Request {
    /// A READ of `len` bytes at `remote_offset` of `remote` into `segment` at `offset`.
    pub fn read(
        segment: SegmentId,
        offset: u64,
        remote: RemoteSegment,
        remote_offset: u64,
        len: u64,
    ) -> Self {
        Request {
            op: Opcode::Read,
            local: LocalAddr::Segment { segment, offset },
            remote,
            remote_offset,
            len,
        }
    }

    /// A WRITE of `len` bytes from `segment` at `offset` to `remote` at `remote_offset`.
    pub fn write(
        segment: SegmentId,
        offset: u64,
        remote: RemoteSegment,
        remote_offset: u64,
        len: u64,
    ) -> Self {
        Request {
            op: Opcode::Write,
            local: LocalAddr::Segment { segment, offset },
            remote,
            remote_offset,
            len,
        }
    }

    /// This request with another opcode (e.g. `Opcode::WriteWithNotify(tag)`).
    pub fn with_op(mut self, op: Opcode) -> Self {
        self.op = op;
        self
    }
}
