//! The byte encodings of the `verbs` fabric's addresses.
//!
//! - [`RailAddress`]: what an engine publishes per rail in its descriptors (GID, LID, MTU, the
//!   IPv4 address and TCP port of its connection service, and a random instance id that tells
//!   engines apart). RC queue pairs are per peer, so a published address cannot name one; it
//!   names where to ask for one.
//! - [`QpAddress`]: one RC queue pair, as exchanged in the connection handshake (QPN, initial
//!   PSN, GID, LID, MTU and how many RDMA READs it serves at once).
//!
//! The published address also carries how many RDMA READs the rail serves at once, so an
//! initiator never issues more than the target accepts.
//!
//! Both are versioned (magic + version byte) and length-checked; decoding never panics.

use std::net::Ipv4Addr;

use ::efa::{Gid, Mtu};

use crate::fabric::rdma::codec::{self, Reader, Writer};
use crate::FabricError;

const RAIL_MAGIC: &[u8; 2] = b"VB";
const QP_MAGIC: &[u8; 2] = b"VQ";
const VERSION: u8 = 1;

/// Bytes of an encoded [`RailAddress`].
pub const RAIL_ADDRESS_LEN: usize = 39;
/// Bytes of an encoded [`QpAddress`].
pub const QP_ADDRESS_LEN: usize = 31;

/// Largest 24-bit value (QPN, PSN).
const MAX_24: u32 = 0x00ff_ffff;

/// One rail of a `verbs` engine, as published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RailAddress {
    /// The rail's index in the engine.
    pub rail: u16,
    /// Random id of the fabric instance (equal on all its rails).
    pub instance: u64,
    /// The port GID the rail's queue pairs use (RoCE v2 IPv4-mapped where there is one).
    pub gid: Gid,
    /// The port LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// The active MTU.
    pub mtu: Mtu,
    /// RDMA READs the rail's QPs serve at once as responders.
    pub rd_atomic: u8,
    /// IPv4 address of the connection service.
    pub ip: Ipv4Addr,
    /// TCP port of the connection service.
    pub port: u16,
}

fn mtu_from(r: &Reader<'_>, raw: u8) -> Result<Mtu, FabricError> {
    match Mtu::from_raw(raw.into()) {
        Mtu::Unknown(v) => Err(r.error(format!("MTU code {v} is not 1..=5"))),
        m => Ok(m),
    }
}

impl RailAddress {
    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        Writer::with_capacity(RAIL_ADDRESS_LEN)
            .bytes(RAIL_MAGIC)
            .u8(VERSION)
            .u16(self.rail)
            .u64(self.instance)
            .bytes(&self.gid.0)
            .u16(self.lid)
            .u8(self.mtu.raw() as u8)
            .u8(self.rd_atomic)
            .bytes(&self.ip.octets())
            .u16(self.port)
            .finish()
    }

    /// Parses bytes given for rail `rail`.
    pub fn decode(rail: u16, bytes: &[u8]) -> Result<RailAddress, FabricError> {
        let mut r = Reader::new(bytes, rail, "verbs rail address");
        r.header(RAIL_MAGIC, VERSION)?;
        let index = r.u16()?;
        let instance = r.u64()?;
        let gid = Gid(r.array()?);
        let lid = r.u16()?;
        let mtu_raw = r.u8()?;
        let mtu = mtu_from(&r, mtu_raw)?;
        let rd_atomic = r.u8()?;
        let ip = Ipv4Addr::from(r.array::<4>()?);
        let port = r.u16()?;
        if index != rail {
            return Err(r.error(format!("is for rail {index}, listed as rail {rail}")));
        }
        if port == 0 {
            return Err(r.error("connection service port 0".into()));
        }
        r.end()?;
        Ok(RailAddress {
            rail: index,
            instance,
            gid,
            lid,
            mtu,
            rd_atomic,
            ip,
            port,
        })
    }

    /// Parses a whole per-rail address list: rails in order, one instance, one service.
    pub fn decode_all(addrs: &[Vec<u8>]) -> Result<Vec<RailAddress>, FabricError> {
        let list = codec::decode_rails(addrs, RailAddress::decode)?;
        let first = list[0];
        for a in &list[1..] {
            if (a.instance, a.ip, a.port) != (first.instance, first.ip, first.port) {
                return Err(FabricError::BadAddress {
                    rail: a.rail,
                    reason: "rails of different engines in one address list".into(),
                });
            }
        }
        Ok(list)
    }
}

/// One RC queue pair, as exchanged in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QpAddress {
    /// QP number (24 bits).
    pub qpn: u32,
    /// Initial send PSN (24 bits).
    pub psn: u32,
    /// GID of the QP's port.
    pub gid: Gid,
    /// LID of the QP's port (0 on RoCE).
    pub lid: u16,
    /// The port's active MTU.
    pub mtu: Mtu,
    /// RDMA READs this QP serves at once as a responder.
    pub rd_atomic: u8,
}

impl QpAddress {
    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        Writer::with_capacity(QP_ADDRESS_LEN)
            .bytes(QP_MAGIC)
            .u8(VERSION)
            .u32(self.qpn)
            .u32(self.psn)
            .bytes(&self.gid.0)
            .u16(self.lid)
            .u8(self.mtu.raw() as u8)
            .u8(self.rd_atomic)
            .finish()
    }

    /// Parses bytes received for rail `rail`.
    pub fn decode(rail: u16, bytes: &[u8]) -> Result<QpAddress, FabricError> {
        let mut r = Reader::new(bytes, rail, "verbs QP address");
        r.header(QP_MAGIC, VERSION)?;
        let qpn = r.u32()?;
        let psn = r.u32()?;
        let gid = Gid(r.array()?);
        let lid = r.u16()?;
        let mtu_raw = r.u8()?;
        let mtu = mtu_from(&r, mtu_raw)?;
        let rd_atomic = r.u8()?;
        if qpn > MAX_24 || psn > MAX_24 {
            return Err(r.error(format!("QPN {qpn:#x} or PSN {psn:#x} exceeds 24 bits")));
        }
        r.end()?;
        Ok(QpAddress {
            qpn,
            psn,
            gid,
            lid,
            mtu,
            rd_atomic,
        })
    }

    /// The peer as the `efa` crate's RC connect takes it.
    pub(crate) fn endpoint(&self) -> ::efa::QpAddress {
        ::efa::QpAddress {
            gid: self.gid,
            qpn: self.qpn,
            qkey_or_psn: self.psn,
            lid: self.lid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rail(i: u16) -> RailAddress {
        RailAddress {
            rail: i,
            instance: 0x1234_5678_9abc_def0,
            gid: "::ffff:10.11.0.1".parse().unwrap(),
            lid: 0,
            mtu: Mtu::Mtu1024,
            rd_atomic: 16,
            ip: Ipv4Addr::new(10, 11, 0, 1),
            port: 18515,
        }
    }

    fn qp() -> QpAddress {
        QpAddress {
            qpn: 0x11,
            psn: 0xab_cdef,
            gid: "fe80::1".parse().unwrap(),
            lid: 7,
            mtu: Mtu::Mtu4096,
            rd_atomic: 16,
        }
    }

    #[test]
    fn round_trips_with_fixed_lengths() {
        let a = rail(0);
        let b = a.encode();
        assert_eq!(b.len(), RAIL_ADDRESS_LEN);
        assert_eq!(RailAddress::decode(0, &b).unwrap(), a);
        let q = qp();
        let e = q.encode();
        assert_eq!(e.len(), QP_ADDRESS_LEN);
        assert_eq!(QpAddress::decode(0, &e).unwrap(), q);
        assert_eq!(q.endpoint().qkey_or_psn, 0xab_cdef);
    }

    #[test]
    fn rejects_what_it_cannot_trust() {
        let b = rail(1).encode();
        // Listed at the wrong position.
        let e = RailAddress::decode(0, &b).unwrap_err();
        assert!(e.to_string().contains("is for rail 1"), "{e}");
        // Truncated, extended, other version, other magic.
        assert!(RailAddress::decode(1, &b[..b.len() - 1]).is_err());
        let mut long = b.clone();
        long.push(0);
        assert!(RailAddress::decode(1, &long)
            .unwrap_err()
            .to_string()
            .contains("trailing"));
        let mut v = b.clone();
        v[2] = 9;
        assert!(RailAddress::decode(1, &v)
            .unwrap_err()
            .to_string()
            .contains("version 9"));
        assert!(RailAddress::decode(1, &qp().encode()).is_err());
        // A QPN beyond 24 bits.
        let mut q = qp().encode();
        q[6] = 1;
        assert!(QpAddress::decode(0, &q)
            .unwrap_err()
            .to_string()
            .contains("24 bits"));
        // An MTU code outside 1..=5.
        let mut m = qp().encode();
        m[29] = 6;
        assert!(QpAddress::decode(0, &m)
            .unwrap_err()
            .to_string()
            .contains("MTU code 6"));
    }

    #[test]
    fn address_lists_must_be_one_engine() {
        let ok = vec![rail(0).encode(), rail(1).encode()];
        assert_eq!(RailAddress::decode_all(&ok).unwrap().len(), 2);
        let mut other = rail(1);
        other.instance = 1;
        let mixed = vec![rail(0).encode(), other.encode()];
        assert!(RailAddress::decode_all(&mixed).is_err());
        assert!(RailAddress::decode_all(&[]).is_err());
        let swapped = vec![rail(1).encode(), rail(0).encode()];
        assert!(RailAddress::decode_all(&swapped).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), rail in 0u16..4) {
            let _ = RailAddress::decode(rail, &bytes);
            let _ = QpAddress::decode(rail, &bytes);
        }

        #[test]
        fn qp_round_trip(qpn in 0u32..=MAX_24, psn in 0u32..=MAX_24, gid in any::<[u8; 16]>(), lid in any::<u16>(), mtu in 1u32..=5, rd in any::<u8>()) {
            let q = QpAddress { qpn, psn, gid: Gid(gid), lid, mtu: Mtu::from_raw(mtu), rd_atomic: rd };
            prop_assert_eq!(QpAddress::decode(0, &q.encode()).unwrap(), q);
        }
    }
}
