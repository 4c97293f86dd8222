//! Frames of the tcp fabric's data connections.
//!
//! # Wire format (version 2)
//!
//! All integers little-endian. A data connection starts with a hello from the initiator and a
//! hello reply from the target, then carries request frames one way and response frames the
//! other, answered in order (one service thread per connection processes them sequentially).
//!
//! ```text
//! hello     magic "ETCH" | version u8 | 0 u8 | rail u16 | instance u64 | 0 u64     (24 bytes)
//! reply     magic "ETCA" | version u8 | status u8 | 0 u16 | instance u64             (16 bytes)
//! request   magic "TQ" | version u8 | op u8 | tag u32 | token u64 | addr u64 | key u64
//!           | len u64 | 0 u64                                                       (48 bytes)
//!           WRITE, WRITE_NOTIFY: followed by `len` payload bytes
//! response  magic "TR" | version u8 | status u8 | 0 u32 | token u64 | len u64       (24 bytes)
//!           READ with status 0: followed by `len` data bytes
//! ```
//!
//! Ops: 1 READ, 2 WRITE, 3 NOTIFY (`tag` counted, no payload), 4 WRITE_NOTIFY (the payload
//! placed, then `tag` counted, then the response; version 2 added it, so a version-1 peer refuses
//! the hello rather than a request).
//!
//! `instance` is the target's random incarnation number, published in its addresses: a hello
//! that names another instance (a stale descriptor of a restarted peer that reuses the port)
//! is refused, so old keys never reach a new process's memory. `status` is 0 for success or a
//! [`FailReason`] code.

use crate::FailReason;

/// Bytes of a request header.
pub(crate) const REQ_LEN: usize = 48;
/// Bytes of a response header.
pub(crate) const RESP_LEN: usize = 24;
/// Bytes of a connection hello.
pub(crate) const HELLO_LEN: usize = 24;
/// Bytes of a hello reply.
pub(crate) const HELLO_REPLY_LEN: usize = 16;
/// Protocol version written and accepted.
pub(crate) const VERSION: u8 = 2;

const REQ_MAGIC: [u8; 2] = *b"TQ";
const RESP_MAGIC: [u8; 2] = *b"TR";
const HELLO_MAGIC: [u8; 4] = *b"ETCH";
const REPLY_MAGIC: [u8; 4] = *b"ETCA";

/// Hello reply status: accepted.
pub(crate) const HELLO_OK: u8 = 0;
/// Hello reply status: the hello named another instance of the target.
pub(crate) const HELLO_WRONG_INSTANCE: u8 = 1;
/// Hello reply status: the rail index is beyond the target's rails.
pub(crate) const HELLO_BAD_RAIL: u8 = 2;
/// Hello reply status: the target is at its connection limit (sent at once, before the
/// hello is read).
pub(crate) const HELLO_BUSY: u8 = 3;

/// What a hello reply status means, for error messages.
pub(crate) fn hello_status_name(status: u8) -> &'static str {
    match status {
        HELLO_OK => "accepted",
        HELLO_WRONG_INSTANCE => {
            "the peer is another instance (restarted since the descriptor was published)"
        }
        HELLO_BAD_RAIL => "the peer has no such rail",
        HELLO_BUSY => "the peer is at its connection limit",
        _ => "unknown status",
    }
}

/// A request opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Op {
    Read = 1,
    Write = 2,
    Notify = 3,
    /// A WRITE whose target counts the tag once the payload is placed, before it responds.
    WriteNotify = 4,
}

impl Op {
    /// Whether the request carries a payload (`len` bytes after the header).
    pub(crate) fn has_payload(self) -> bool {
        matches!(self, Op::Write | Op::WriteNotify)
    }
}

/// A decoded request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request {
    pub op: Op,
    pub tag: u32,
    pub token: u64,
    pub addr: u64,
    pub key: u64,
    pub len: u64,
}

/// A decoded response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Response {
    pub status: u8,
    pub token: u64,
    pub len: u64,
}

/// A malformed frame: the connection that carried it is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("unsupported protocol version {0}")]
    Version(u8),
    #[error("unknown opcode {0}")]
    Op(u8),
    #[error("unknown status {0}")]
    Status(u8),
    #[error("reserved bytes are not zero")]
    Reserved,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl Request {
    pub(crate) fn encode(&self, out: &mut [u8; REQ_LEN]) {
        out[0..2].copy_from_slice(&REQ_MAGIC);
        out[2] = VERSION;
        out[3] = self.op as u8;
        out[4..8].copy_from_slice(&self.tag.to_le_bytes());
        out[8..16].copy_from_slice(&self.token.to_le_bytes());
        out[16..24].copy_from_slice(&self.addr.to_le_bytes());
        out[24..32].copy_from_slice(&self.key.to_le_bytes());
        out[32..40].copy_from_slice(&self.len.to_le_bytes());
        out[40..48].fill(0);
    }

    pub(crate) fn decode(b: &[u8; REQ_LEN]) -> Result<Request, WireError> {
        if b[0..2] != REQ_MAGIC {
            return Err(WireError::BadMagic([b[0], b[1], 0, 0]));
        }
        if b[2] != VERSION {
            return Err(WireError::Version(b[2]));
        }
        let op = match b[3] {
            1 => Op::Read,
            2 => Op::Write,
            3 => Op::Notify,
            4 => Op::WriteNotify,
            other => return Err(WireError::Op(other)),
        };
        if u64_at(b, 40) != 0 {
            return Err(WireError::Reserved);
        }
        Ok(Request {
            op,
            tag: u32_at(b, 4),
            token: u64_at(b, 8),
            addr: u64_at(b, 16),
            key: u64_at(b, 24),
            len: u64_at(b, 32),
        })
    }
}

impl Response {
    pub(crate) fn encode(&self, out: &mut [u8; RESP_LEN]) {
        out[0..2].copy_from_slice(&RESP_MAGIC);
        out[2] = VERSION;
        out[3] = self.status;
        out[4..8].fill(0);
        out[8..16].copy_from_slice(&self.token.to_le_bytes());
        out[16..24].copy_from_slice(&self.len.to_le_bytes());
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Response, WireError> {
        if b.len() < RESP_LEN || b[0..2] != RESP_MAGIC {
            let mut m = [0u8; 4];
            let n = b.len().min(2);
            m[..n].copy_from_slice(&b[..n]);
            return Err(WireError::BadMagic(m));
        }
        if b[2] != VERSION {
            return Err(WireError::Version(b[2]));
        }
        if b[3] != 0 && FailReason::from_code(b[3]).is_none() {
            return Err(WireError::Status(b[3]));
        }
        if u32_at(b, 4) != 0 {
            return Err(WireError::Reserved);
        }
        Ok(Response {
            status: b[3],
            token: u64_at(b, 8),
            len: u64_at(b, 16),
        })
    }

    /// The failure this response reports, if any.
    pub(crate) fn error(&self) -> Option<FailReason> {
        if self.status == 0 {
            None
        } else {
            Some(FailReason::from_code(self.status).unwrap_or(FailReason::Io))
        }
    }
}

/// Status byte for an outcome.
pub(crate) fn status_of(r: Result<(), FailReason>) -> u8 {
    match r {
        Ok(()) => 0,
        Err(e) => e.code(),
    }
}

pub(crate) fn encode_hello(rail: u16, instance: u64) -> [u8; HELLO_LEN] {
    let mut b = [0u8; HELLO_LEN];
    b[0..4].copy_from_slice(&HELLO_MAGIC);
    b[4] = VERSION;
    b[6..8].copy_from_slice(&rail.to_le_bytes());
    b[8..16].copy_from_slice(&instance.to_le_bytes());
    b
}

/// Decodes a hello into `(rail, instance)`.
pub(crate) fn decode_hello(b: &[u8; HELLO_LEN]) -> Result<(u16, u64), WireError> {
    if b[0..4] != HELLO_MAGIC {
        return Err(WireError::BadMagic([b[0], b[1], b[2], b[3]]));
    }
    if b[4] != VERSION {
        return Err(WireError::Version(b[4]));
    }
    if b[5] != 0 || u64_at(b, 16) != 0 {
        return Err(WireError::Reserved);
    }
    Ok((u16::from_le_bytes([b[6], b[7]]), u64_at(b, 8)))
}

pub(crate) fn encode_hello_reply(status: u8, instance: u64) -> [u8; HELLO_REPLY_LEN] {
    let mut b = [0u8; HELLO_REPLY_LEN];
    b[0..4].copy_from_slice(&REPLY_MAGIC);
    b[4] = VERSION;
    b[5] = status;
    b[8..16].copy_from_slice(&instance.to_le_bytes());
    b
}

/// Decodes a hello reply into `(status, instance)`.
pub(crate) fn decode_hello_reply(b: &[u8; HELLO_REPLY_LEN]) -> Result<(u8, u64), WireError> {
    if b[0..4] != REPLY_MAGIC {
        return Err(WireError::BadMagic([b[0], b[1], b[2], b[3]]));
    }
    if b[4] != VERSION {
        return Err(WireError::Version(b[4]));
    }
    Ok((b[5], u64_at(b, 8)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_and_rejections() {
        let r = Request {
            op: Op::Write,
            tag: 7,
            token: 0xdead_beef,
            addr: 0x1000,
            key: 0x30001,
            len: 4096,
        };
        let mut b = [0u8; REQ_LEN];
        r.encode(&mut b);
        assert_eq!(Request::decode(&b), Ok(r));
        let mut bad = b;
        bad[0] = b'X';
        assert!(matches!(Request::decode(&bad), Err(WireError::BadMagic(_))));
        let mut bad = b;
        bad[2] = 1;
        assert_eq!(Request::decode(&bad), Err(WireError::Version(1)));
        let mut wn = b;
        wn[3] = 4;
        assert_eq!(Request::decode(&wn).map(|r| r.op), Ok(Op::WriteNotify));
        let mut bad = b;
        bad[3] = 9;
        assert_eq!(Request::decode(&bad), Err(WireError::Op(9)));
        let mut bad = b;
        bad[47] = 1;
        assert_eq!(Request::decode(&bad), Err(WireError::Reserved));
    }

    #[test]
    fn response_round_trip_and_status() {
        let r = Response {
            status: FailReason::RemoteBadAddress.code(),
            token: 5,
            len: 0,
        };
        let mut b = [0u8; RESP_LEN];
        r.encode(&mut b);
        let d = Response::decode(&b).unwrap();
        assert_eq!(d, r);
        assert_eq!(d.error(), Some(FailReason::RemoteBadAddress));
        b[3] = 99;
        assert_eq!(Response::decode(&b), Err(WireError::Status(99)));
        assert!(Response::decode(&b[..10]).is_err());
    }

    #[test]
    fn hello_round_trip() {
        let h = encode_hello(3, 42);
        assert_eq!(decode_hello(&h), Ok((3, 42)));
        let r = encode_hello_reply(HELLO_WRONG_INSTANCE, 9);
        assert_eq!(decode_hello_reply(&r), Ok((HELLO_WRONG_INSTANCE, 9)));
        let mut bad = h;
        bad[4] = 0;
        assert_eq!(decode_hello(&bad), Err(WireError::Version(0)));
    }
}
