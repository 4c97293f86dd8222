//! The packets of soft-efa's SRD over UDP.
//!
//! Every request carries a per-link sequence number; the target answers each with a response that
//! echoes it, carries the EFA completion status, and for RDMA READ the data. The initiator owns all
//! retransmission; the target keeps each request's status so a retransmitted request is answered
//! again without being executed twice.

/// First bytes of every packet.
pub const MAGIC: u32 = 0x5346_4541;
/// Bytes of the link header.
pub const HEADER_LEN: usize = 4 + 1 + 8 + 8 + 8;
/// Bytes of a request's fixed part, after the link header.
pub const REQUEST_LEN: usize = 1 + 4 * 5 + 8 + 4 + 16;
/// Payload bytes one packet carries at most: the unit RDMA is segmented into.
pub const MTU: usize = 8192;

/// What a request asks of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Two-sided send into a posted receive buffer.
    Send = 1,
    /// Send with immediate data.
    SendImm = 2,
    /// One segment of an RDMA WRITE.
    Write = 3,
    /// The end of an RDMA WRITE with immediate: consumes a receive buffer (or is unsolicited).
    WriteImmFin = 4,
    /// One segment of an RDMA READ; the data comes back in the response.
    Read = 5,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Send,
            2 => Op::SendImm,
            3 => Op::Write,
            4 => Op::WriteImmFin,
            5 => Op::Read,
            _ => return None,
        })
    }
}

/// The link header of every packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// True for a response.
    pub response: bool,
    /// Random id of the sending device instance (a restarted process is a new peer).
    pub instance: u64,
    /// Sequence number of the request (echoed by its response).
    pub seq: u64,
    /// Every request below this sequence number has its response (the target may forget them).
    pub floor: u64,
}

/// The fixed part of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub op: Op,
    /// Initiator QP.
    pub src_qpn: u32,
    /// Target QP.
    pub dst_qpn: u32,
    /// Q_Key the initiator addressed.
    pub qkey: u32,
    /// Immediate data (network order, as posted).
    pub imm: u32,
    /// Remote key (RDMA).
    pub rkey: u32,
    /// Remote address of this segment (RDMA).
    pub remote_addr: u64,
    /// READ: bytes asked for; WriteImmFin: the whole write's length.
    pub len: u32,
    /// The initiator's GID.
    pub sgid: [u8; 16],
}

/// A decoded packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A request and its payload.
    Request(Header, Request, &'a [u8]),
    /// A response: the EFA status, and the data of a READ.
    Response(Header, u8, &'a [u8]),
}

fn header(out: &mut Vec<u8>, h: &Header) {
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.push(u8::from(h.response));
    out.extend_from_slice(&h.instance.to_le_bytes());
    out.extend_from_slice(&h.seq.to_le_bytes());
    out.extend_from_slice(&h.floor.to_le_bytes());
}

/// Encodes a request into `out` (cleared first).
pub fn encode_request(out: &mut Vec<u8>, h: &Header, r: &Request, payload: &[u8]) {
    out.clear();
    header(out, h);
    out.push(r.op as u8);
    for v in [r.src_qpn, r.dst_qpn, r.qkey, r.imm, r.rkey] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&r.remote_addr.to_le_bytes());
    out.extend_from_slice(&r.len.to_le_bytes());
    out.extend_from_slice(&r.sgid);
    out.extend_from_slice(payload);
}

/// Encodes a response into `out` (cleared first).
pub fn encode_response(out: &mut Vec<u8>, h: &Header, status: u8, data: &[u8]) {
    out.clear();
    header(out, h);
    out.push(status);
    out.extend_from_slice(data);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
}

/// Decodes a packet; `None` for anything malformed (a device drops such packets).
pub fn decode(buf: &[u8]) -> Option<Packet<'_>> {
    let mut r = Reader(buf);
    if r.u32()? != MAGIC {
        return None;
    }
    let response = match r.u8()? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let h = Header {
        response,
        instance: r.u64()?,
        seq: r.u64()?,
        floor: r.u64()?,
    };
    if response {
        let status = r.u8()?;
        return Some(Packet::Response(h, status, r.0));
    }
    let req = Request {
        op: Op::from_u8(r.u8()?)?,
        src_qpn: r.u32()?,
        dst_qpn: r.u32()?,
        qkey: r.u32()?,
        imm: r.u32()?,
        rkey: r.u32()?,
        remote_addr: r.u64()?,
        len: r.u32()?,
        sgid: r.take()?,
    };
    Some(Packet::Request(h, req, r.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip() {
        let h = Header {
            response: false,
            instance: 7,
            seq: 42,
            floor: 40,
        };
        let req = Request {
            op: Op::Write,
            src_qpn: 1,
            dst_qpn: 2,
            qkey: 3,
            imm: 4,
            rkey: 5,
            remote_addr: 6,
            len: 8,
            sgid: [9; 16],
        };
        let mut buf = Vec::new();
        encode_request(&mut buf, &h, &req, b"data");
        assert_eq!(buf.len(), HEADER_LEN + REQUEST_LEN + 4);
        assert_eq!(decode(&buf), Some(Packet::Request(h, req, &b"data"[..])));
        let h = Header {
            response: true,
            ..h
        };
        encode_response(&mut buf, &h, 7, b"xy");
        assert_eq!(decode(&buf), Some(Packet::Response(h, 7, &b"xy"[..])));
    }

    #[test]
    fn malformed_packets_are_refused() {
        let mut buf = Vec::new();
        let h = Header {
            response: false,
            instance: 1,
            seq: 1,
            floor: 0,
        };
        encode_response(&mut buf, &h, 0, &[]);
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut]), None, "cut at {cut}");
        }
        buf[0] ^= 1;
        assert_eq!(decode(&buf), None);
        let mut buf = Vec::new();
        let req = Request {
            op: Op::Send,
            src_qpn: 0,
            dst_qpn: 0,
            qkey: 0,
            imm: 0,
            rkey: 0,
            remote_addr: 0,
            len: 0,
            sgid: [0; 16],
        };
        encode_request(&mut buf, &h, &req, &[]);
        buf[HEADER_LEN] = 99;
        assert_eq!(decode(&buf), None);
    }
}
