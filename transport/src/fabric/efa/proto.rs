//! The two-sided protocol of the `efa` fabric: READ and WRITE carried over SEND/RECV where a
//! device (or the peer's) lacks RDMA READ or WRITE, as libfabric's EFA provider carries RMA over
//! its two-sided protocols on those generations.
//!
//! # Messages
//!
//! - **Request** (initiator's protocol QP to the target's service QP): a [`Header`] of
//!   [`HEADER_LEN`] bytes, followed for a WRITE by its payload (a second SGE straight from the
//!   initiator's registered memory, no copy). One request moves one *chunk* of at most
//!   `max_msg_sz - HEADER_LEN` bytes; the initiator cuts larger operations into chunks and keeps
//!   as many in flight as its send queue holds (the target's receive queue, with RNR retries,
//!   is the credit).
//! - **Rendezvous request** (a WRITE of at least `EfaConfig::rendezvous_min` bytes where both
//!   devices have RDMA READ; libfabric's "long read"): a header with [`ProtoOp::Pull`] and a
//!   [`Pull`] naming the initiator's memory and rkey. The target checks it like a WRITE, RDMA-READs
//!   the bytes straight into the target range (pinned until the READ completes), then replies.
//!   One round trip and no copies, for up to `max_rdma_size` bytes.
//! - **Reply** (target to the initiator's protocol QP, addressed by the request's source QPN and
//!   the header's GID): a SEND with immediate data `chunk | status` ([`reply_imm`]). A WRITE's
//!   reply carries no data and is sent after the payload is copied into place, so a completion
//!   still means "placed at the destination". A READ's reply carries the chunk's bytes.
//!
//! # What the target enforces
//!
//! One check is the whole decision; it needs no device, so [`TargetModel`] runs it in tests and
//! under the fuzzer: the request's region key must name a live registration of the target (a stale key never matches a reused slot), the
//! range must lie inside it, and the registration must grant the right (REMOTE_WRITE for a
//! WRITE, REMOTE_READ for a READ). Whatever the bytes say, the target writes only inside a
//! registered, remote-writable range, and only the payload's length.

use ::efa::Gid;

use crate::fabric::regions::{Guard, Regions};
use crate::{Access, FailReason};

/// Bytes of a request header.
pub const HEADER_LEN: usize = 48;

const MAGIC: u16 = 0x3245; // "E2"
const VERSION: u8 = 1;

/// What a request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoOp {
    /// Place the payload at `addr`.
    Write,
    /// Send back `len` bytes from `addr`.
    Read,
    /// Rendezvous WRITE (libfabric's "long read"): RDMA-READ `len` bytes from the initiator's
    /// memory named by the payload (a [`Pull`]) into `addr`, then reply.
    Pull,
}

/// Bytes of a [`Pull`] (a [`ProtoOp::Pull`] request's payload).
pub const PULL_LEN: usize = 12;

/// Where a [`ProtoOp::Pull`] reads from: the initiator's memory and its device rkey there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pull {
    /// Initiator address.
    pub addr: u64,
    /// The initiator device's rkey for it.
    pub rkey: u32,
}

impl Pull {
    /// The payload's bytes.
    pub fn encode(&self) -> [u8; PULL_LEN] {
        let mut b = [0u8; PULL_LEN];
        b[..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..].copy_from_slice(&self.rkey.to_le_bytes());
        b
    }

    /// Parses a payload of exactly [`PULL_LEN`] bytes.
    pub fn decode(b: &[u8]) -> Option<Pull> {
        let b: &[u8; PULL_LEN] = b.try_into().ok()?;
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&b[..8]);
        Some(Pull {
            addr: u64::from_le_bytes(addr),
            rkey: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        })
    }
}

/// A request header, as carried in the first bytes of a request message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The operation.
    pub op: ProtoOp,
    /// The initiator's chunk id, returned in the reply's immediate data (low byte zero).
    pub chunk: u32,
    /// Q_Key of the initiator's protocol QP (the reply's destination).
    pub qkey: u32,
    /// Bytes to place (WRITE: the payload's length) or to send back (READ).
    pub len: u32,
    /// The target's region key (the high half of the published remote key).
    pub region: u32,
    /// Target address.
    pub addr: u64,
    /// GID of the initiator's device (the reply's address handle).
    pub gid: Gid,
}

impl Header {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        b[2] = VERSION;
        b[3] = match self.op {
            ProtoOp::Write => 1,
            ProtoOp::Read => 2,
            ProtoOp::Pull => 3,
        };
        b[4..8].copy_from_slice(&self.chunk.to_le_bytes());
        b[8..12].copy_from_slice(&self.qkey.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b[16..20].copy_from_slice(&self.region.to_le_bytes());
        b[24..32].copy_from_slice(&self.addr.to_le_bytes());
        b[32..48].copy_from_slice(&self.gid.0);
        b
    }

    /// Parses the first [`HEADER_LEN`] bytes of a message; `None` for anything that is not a
    /// well-formed request of this version (the target cannot even address a reply then).
    pub fn decode(msg: &[u8]) -> Option<Header> {
        let b: &[u8; HEADER_LEN] = msg.get(..HEADER_LEN)?.try_into().ok()?;
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        if u16::from_le_bytes([b[0], b[1]]) != MAGIC || b[2] != VERSION {
            return None;
        }
        let op = match b[3] {
            1 => ProtoOp::Write,
            2 => ProtoOp::Read,
            3 => ProtoOp::Pull,
            _ => return None,
        };
        let chunk = u32_at(4);
        if chunk & 0xff != 0 || u32_at(20) != 0 {
            return None;
        }
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&b[24..32]);
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&b[32..48]);
        Some(Header {
            op,
            chunk,
            qkey: u32_at(8),
            len: u32_at(12),
            region: u32_at(16),
            addr: u64::from_le_bytes(addr),
            gid: Gid(gid),
        })
    }
}

/// Reply statuses, in the low byte of the reply's immediate data.
pub mod status {
    /// Done.
    pub const OK: u8 = 0;
    /// Unknown or stale key, range outside the registration, or a right not granted.
    pub const BAD_ADDRESS: u8 = 1;
    /// The length does not match the message or exceeds what one reply carries.
    pub const BAD_LENGTH: u8 = 2;
    /// The target could not carry the request out (a rendezvous READ it could not post).
    pub const ABORTED: u8 = 3;
}

/// The failure an initiator reports for a reply status (`None`: success).
pub fn reason(status: u8) -> Option<FailReason> {
    match status {
        status::OK => None,
        status::BAD_ADDRESS => Some(FailReason::RemoteBadAddress),
        status::BAD_LENGTH => Some(FailReason::RemoteBadLength),
        _ => Some(FailReason::RemoteAbort),
    }
}

/// A chunk id: `slot` of the initiator's chunk table and its generation (so a late reply for a
/// reused slot is recognised), with a zero low byte for the status.
pub fn chunk_id(slot: u16, generation: u8) -> u32 {
    (u32::from(slot) << 16) | (u32::from(generation) << 8)
}

/// The immediate data of a reply.
pub fn reply_imm(chunk: u32, status: u8) -> u32 {
    (chunk & !0xff) | u32::from(status)
}

/// Splits a reply's immediate data into (slot, generation, status).
pub fn parse_imm(imm: u32) -> (u16, u8, u8) {
    ((imm >> 16) as u16, (imm >> 8) as u8, imm as u8)
}

/// What the target does with a checked request: the range it may touch, pinned (a
/// deregistration waits until the guard drops).
#[derive(Debug)]
pub(crate) struct Placement<'a> {
    /// Start of the range in this process.
    pub addr: u64,
    /// Its length.
    pub len: usize,
    guard: Guard<'a>,
}

impl Placement<'_> {
    /// Keeps the range pinned past this value (while the device reads into it): the caller must
    /// [`Regions::release`] the returned slot. The slot also names the registration.
    pub fn into_pin(self) -> usize {
        self.guard.into_pin()
    }
}

/// What the target accepts in one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Most bytes one reply carries (a READ).
    pub max_reply: usize,
    /// Most bytes one rendezvous WRITE pulls (0: the target does not pull).
    pub max_pull: usize,
}

/// Checks a request against the target's registrations. `payload` is the message's length
/// after the header. Returns the pinned range, or the status to reply with.
pub(crate) fn check<'a>(
    h: &Header,
    payload: usize,
    limits: Limits,
    regions: &'a Regions,
) -> Result<Placement<'a>, u8> {
    let len = h.len as usize;
    let need = match h.op {
        ProtoOp::Write if payload == len => Access::REMOTE_WRITE,
        ProtoOp::Read if payload == 0 && len <= limits.max_reply => Access::REMOTE_READ,
        ProtoOp::Pull if payload == PULL_LEN && len <= limits.max_pull => Access::REMOTE_WRITE,
        _ => return Err(status::BAD_LENGTH),
    };
    if len == 0 {
        return Err(status::BAD_LENGTH);
    }
    let guard = regions
        .acquire_short(h.region, h.addr, len as u64, need)
        .map_err(|_| status::BAD_ADDRESS)?;
    Ok(Placement {
        addr: h.addr,
        len,
        guard,
    })
}

/// Executes a checked request: a WRITE copies `payload` into the placed range; a READ copies the
/// placed range into `reply`. Returns the reply status and how many bytes the reply carries.
///
/// # Safety
///
/// `placed` must come from [`check`] on registrations whose memory is valid (the
/// [`Fabric::register`](crate::fabric::Fabric::register) contract), and neither `payload` nor
/// `reply` may overlap it.
pub(crate) unsafe fn execute(
    h: &Header,
    placed: &Placement<'_>,
    payload: &[u8],
    reply: &mut [u8],
) -> (u8, usize) {
    let at = placed.addr as usize as *mut u8;
    match h.op {
        ProtoOp::Write if payload.len() == placed.len => {
            // SAFETY: `placed` lies inside a live registration with remote-write rights, pinned
            // while `placed` lives, valid by the caller's contract; no overlap with `payload`.
            unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), at, placed.len) };
            (status::OK, 0)
        }
        ProtoOp::Read if reply.len() >= placed.len => {
            // SAFETY: as above, with remote-read rights; `reply` is long enough and separate.
            unsafe { std::ptr::copy_nonoverlapping(at, reply.as_mut_ptr(), placed.len) };
            (status::OK, placed.len)
        }
        _ => (status::BAD_LENGTH, 0),
    }
}

/// A target's registrations over one arena, and the handler the target thread runs, without a
/// device: for the fuzz target and tests. Three regions: read-only, write-only, read-write.
#[doc(hidden)]
#[derive(Debug)]
pub struct TargetModel {
    regions: Regions,
    arena: Vec<u8>,
    keys: [u32; 3],
}

/// Bytes of each [`TargetModel`] region; the arena has a guard gap before, between and after.
#[doc(hidden)]
pub const MODEL_REGION: usize = 4096;

impl Default for TargetModel {
    fn default() -> Self {
        Self::new()
    }
}

impl TargetModel {
    /// A fresh model: arena filled with a pattern, three regions registered.
    pub fn new() -> TargetModel {
        let arena: Vec<u8> = (0..7 * MODEL_REGION).map(|i| (i * 7 + 3) as u8).collect();
        let regions = Regions::new(4);
        let base = arena.as_ptr() as u64;
        let rights = [
            Access::REMOTE_READ,
            Access::REMOTE_WRITE,
            Access::REMOTE_READ_WRITE,
        ];
        let mut keys = [0; 3];
        for (i, a) in rights.into_iter().enumerate() {
            let at = base + ((2 * i + 1) * MODEL_REGION) as u64;
            let key = regions
                .register(at, MODEL_REGION as u64, a)
                .expect("room for 3");
            keys[i] = Regions::short_key(key);
        }
        TargetModel {
            regions,
            arena,
            keys,
        }
    }

    /// The region keys (read-only, write-only, read-write) and the arena's address, so inputs
    /// can aim at them.
    pub fn targets(&self) -> ([u32; 3], u64) {
        (self.keys, self.arena.as_ptr() as u64)
    }

    /// Handles one message as the target thread does. `None`: dropped (not a request). Checks
    /// the handler's promise and panics if it is broken: bytes change only for an accepted
    /// WRITE, only inside a remote-writable region, and only the payload's range.
    pub fn handle(&mut self, msg: &[u8]) -> Option<(u8, usize)> {
        let before = self.arena.clone();
        let h = Header::decode(msg)?;
        let payload = &msg[HEADER_LEN..];
        let mut reply = vec![0u8; 8928];
        let limits = Limits {
            max_reply: reply.len(),
            max_pull: 1 << 20,
        };
        let result = check(&h, payload.len(), limits, &self.regions).map(|placed| {
            if h.op == ProtoOp::Pull {
                // The device reads into the range; the handler itself writes nothing.
                return ((status::OK, 0), placed.addr, placed.len);
            }
            // SAFETY: `placed` comes from `check` over regions inside `self.arena`, alive for
            // this call; `payload` and `reply` are separate allocations.
            let out = unsafe { execute(&h, &placed, payload, &mut reply) };
            (out, placed.addr, placed.len)
        });
        let (status, reply_len) = match result {
            Ok((out, addr, len)) => {
                self.assert_only_changed(&before, h.op, addr, len, out.0);
                out
            }
            Err(s) => {
                assert!(self.arena == before, "a refused request changed memory");
                (s, 0)
            }
        };
        Some((status, reply_len))
    }

    fn assert_only_changed(&self, before: &[u8], op: ProtoOp, addr: u64, len: usize, st: u8) {
        let base = self.arena.as_ptr() as u64;
        let writable = [MODEL_REGION * 3, MODEL_REGION * 5];
        for (i, (&b, &a)) in before.iter().zip(&self.arena).enumerate() {
            if a == b {
                continue;
            }
            let at = base + i as u64;
            let region = writable.iter().any(|&w| (w..w + MODEL_REGION).contains(&i));
            let range = (addr..addr + len as u64).contains(&at);
            assert!(
                op == ProtoOp::Write && st == status::OK && region && range,
                "byte {i} of the arena changed outside an accepted WRITE's range"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(op: ProtoOp, len: u32, region: u32, addr: u64) -> Header {
        Header {
            op,
            chunk: chunk_id(7, 3),
            qkey: 0x0efa_0001,
            len,
            region,
            addr,
            gid: Gid([9; 16]),
        }
    }

    #[test]
    fn pull_round_trips() {
        let p = Pull {
            addr: 0x7f00_1234_5678,
            rkey: 0xabcd,
        };
        assert_eq!(Pull::decode(&p.encode()), Some(p));
        assert_eq!(Pull::decode(&p.encode()[..PULL_LEN - 1]), None);
    }

    #[test]
    fn header_round_trips_and_rejects_garbage() {
        let h = header(ProtoOp::Read, 4096, 0x0001_0002, 0xdead_beef_0000);
        assert_eq!(Header::decode(&h.encode()), Some(h));
        let mut b = h.encode();
        b[3] = 9;
        assert_eq!(Header::decode(&b), None, "unknown op");
        let mut b = h.encode();
        b[4] = 1;
        assert_eq!(Header::decode(&b), None, "status bits set in the chunk id");
        assert_eq!(Header::decode(&h.encode()[..HEADER_LEN - 1]), None);
        assert_eq!(Header::decode(&[0u8; HEADER_LEN]), None);
    }

    #[test]
    fn imm_packs_slot_generation_and_status() {
        let c = chunk_id(0xfffe, 0xab);
        assert_eq!(
            parse_imm(reply_imm(c, status::BAD_LENGTH)),
            (0xfffe, 0xab, 2)
        );
        assert_eq!(reason(status::OK), None);
        assert_eq!(
            reason(status::BAD_ADDRESS),
            Some(FailReason::RemoteBadAddress)
        );
        assert_eq!(reason(77), Some(FailReason::RemoteAbort));
    }

    #[test]
    fn model_target_handles_and_refuses() {
        let mut t = TargetModel::new();
        let ([ro, wo, rw], base) = t.targets();
        let region = |i: u64| base + (2 * i + 1) * MODEL_REGION as u64;
        let msg = |h: Header, payload: &[u8]| [&h.encode()[..], payload].concat();
        let w = header(ProtoOp::Write, 4, wo, region(1) + 10);
        assert_eq!(t.handle(&msg(w, b"abcd")), Some((status::OK, 0)));
        let w = header(ProtoOp::Write, 4, ro, region(0));
        assert_eq!(t.handle(&msg(w, b"abcd")), Some((status::BAD_ADDRESS, 0)));
        let r = header(ProtoOp::Read, 100, rw, region(2));
        assert_eq!(t.handle(&msg(r, &[])), Some((status::OK, 100)));
        let r = header(ProtoOp::Read, 100, wo, region(1));
        assert_eq!(t.handle(&msg(r, &[])), Some((status::BAD_ADDRESS, 0)));
        assert_eq!(t.handle(b"not a request"), None);
    }

    #[test]
    fn target_checks_key_bounds_rights_and_lengths() {
        let t = Regions::new(4);
        let mut mem = vec![0u8; 256];
        let base = mem.as_mut_ptr() as u64;
        let w_key = t.register(base, 256, Access::REMOTE_WRITE).unwrap();
        let w = Regions::short_key(w_key);
        let r = Regions::short_key(t.register(base, 256, Access::REMOTE_READ).unwrap());
        let lim = Limits {
            max_reply: 8000,
            max_pull: 1 << 20,
        };
        let ok = check(&header(ProtoOp::Write, 16, w, base + 240), 16, lim, &t).unwrap();
        assert_eq!((ok.addr, ok.len), (base + 240, 16));
        drop(ok);
        let bad = |h: Header, payload: usize| check(&h, payload, lim, &t).map(|_| ()).unwrap_err();
        assert_eq!(
            bad(header(ProtoOp::Write, 17, w, base + 240), 17),
            status::BAD_ADDRESS
        );
        assert_eq!(
            bad(header(ProtoOp::Write, 16, r, base), 16),
            status::BAD_ADDRESS
        );
        assert_eq!(
            bad(header(ProtoOp::Write, 16, w, base), 15),
            status::BAD_LENGTH
        );
        assert_eq!(
            bad(header(ProtoOp::Write, 0, w, base), 0),
            status::BAD_LENGTH
        );
        assert_eq!(
            bad(header(ProtoOp::Write, 8, w ^ 1, base), 8),
            status::BAD_ADDRESS
        );
        assert_eq!(
            bad(header(ProtoOp::Read, 8, w, base), 0),
            status::BAD_ADDRESS
        );
        assert_eq!(
            bad(header(ProtoOp::Read, 8, r, base), 8),
            status::BAD_LENGTH
        );
        assert_eq!(
            bad(header(ProtoOp::Read, 9000, r, base), 0),
            status::BAD_LENGTH
        );
        assert_eq!(
            bad(header(ProtoOp::Read, 8, r, u64::MAX - 3), 0),
            status::BAD_ADDRESS
        );
        assert!(check(&header(ProtoOp::Read, 256, r, base), 0, lim, &t).is_ok());
        // A rendezvous WRITE: the pull descriptor is the whole payload; the target's range and
        // rights are checked as for a WRITE, and the length against what the target pulls.
        let pinned = check(&header(ProtoOp::Pull, 256, w, base), PULL_LEN, lim, &t).unwrap();
        t.release(pinned.into_pin());
        assert_eq!(
            bad(header(ProtoOp::Pull, 256, r, base), PULL_LEN),
            status::BAD_ADDRESS
        );
        assert_eq!(
            bad(header(ProtoOp::Pull, 256, w, base), PULL_LEN - 1),
            status::BAD_LENGTH
        );
        assert_eq!(
            bad(header(ProtoOp::Pull, 300, w, base), PULL_LEN),
            status::BAD_ADDRESS
        );
        let no_pull = Limits { max_pull: 0, ..lim };
        let refused = check(&header(ProtoOp::Pull, 8, w, base), PULL_LEN, no_pull, &t);
        assert_eq!(refused.map(|_| ()).unwrap_err(), status::BAD_LENGTH);
        assert!(
            t.deregister(w_key),
            "the released pin lets deregistration finish"
        );
    }
}
