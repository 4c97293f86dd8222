//! The byte encoding of an `efa` rail address: the GID of the device, the QP number and Q_Key
//! of the engine's service QP on it (the QP every peer's RDMA and notifications address), what
//! RDMA the device can do (so a peer picks RDMA or the two-sided protocol per rail pair), and a
//! random instance id that tells engines apart. Also the fabric's remote keys. Versioned and
//! length-checked; decoding never panics.

use ::efa::Gid;

use crate::fabric::rdma::codec::{self, Reader, Writer};
use crate::FabricError;

const MAGIC: &[u8; 2] = b"EA";
const VERSION: u8 = 2;

/// Bytes of an encoded [`EfaAddress`].
pub const EFA_ADDRESS_LEN: usize = 46;

const KEY_MAGIC: &[u8; 2] = b"EK";
const KEY_VERSION: u8 = 1;

/// The `rdma` bit of a rail that can RDMA READ.
pub const RDMA_READ: u8 = 1;
/// The `rdma` bit of a rail that can RDMA WRITE.
pub const RDMA_WRITE: u8 = 2;

/// One rail of an `efa` engine, as published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EfaAddress {
    /// The rail's index in the engine.
    pub rail: u16,
    /// Random id of the fabric instance (equal on all its rails).
    pub instance: u64,
    /// A stable hash of the engine's name ([`identity`]; 0 when unnamed): the same engine
    /// restarted keeps it, another engine on the same devices has another.
    pub identity: u64,
    /// The device GID.
    pub gid: Gid,
    /// QP number of the service QP (24 bits).
    pub qpn: u32,
    /// Q_Key of the service QP (below `0x8000_0000`).
    pub qkey: u32,
    /// What RDMA the rail's device does: [`RDMA_READ`] | [`RDMA_WRITE`].
    pub rdma: u8,
}

impl EfaAddress {
    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        Writer::with_capacity(EFA_ADDRESS_LEN)
            .bytes(MAGIC)
            .u8(VERSION)
            .u16(self.rail)
            .u64(self.instance)
            .u64(self.identity)
            .bytes(&self.gid.0)
            .u32(self.qpn)
            .u32(self.qkey)
            .u8(self.rdma)
            .finish()
    }

    /// Parses bytes given for rail `rail`.
    pub fn decode(rail: u16, bytes: &[u8]) -> Result<EfaAddress, FabricError> {
        let mut r = Reader::new(bytes, rail, "efa rail address");
        r.header(MAGIC, VERSION)?;
        let index = r.u16()?;
        let instance = r.u64()?;
        let identity = r.u64()?;
        let gid = Gid(r.array()?);
        let qpn = r.u32()?;
        let qkey = r.u32()?;
        let rdma = r.u8()?;
        if index != rail {
            return Err(r.error(format!("is for rail {index}, listed as rail {rail}")));
        }
        if qpn > 0x00ff_ffff {
            return Err(r.error(format!("QPN {qpn:#x} exceeds 24 bits")));
        }
        if qkey > 0x7fff_ffff {
            return Err(r.error(format!("Q_Key {qkey:#x} is privileged (>= 0x80000000)")));
        }
        if rdma & !(RDMA_READ | RDMA_WRITE) != 0 {
            return Err(r.error(format!("unknown RDMA capability bits {rdma:#04x}")));
        }
        r.end()?;
        Ok(EfaAddress {
            rail: index,
            instance,
            identity,
            gid,
            qpn,
            qkey,
            rdma,
        })
    }

    /// Parses a whole per-rail address list: rails in order, one instance.
    pub fn decode_all(addrs: &[Vec<u8>]) -> Result<Vec<EfaAddress>, FabricError> {
        let list = codec::decode_rails(addrs, EfaAddress::decode)?;
        if let Some(a) = list.iter().find(|a| a.instance != list[0].instance) {
            return Err(FabricError::BadAddress {
                rail: a.rail,
                reason: "rails of different engines in one address list".into(),
            });
        }
        Ok(list)
    }
}

/// The [`EfaAddress::identity`] of an engine named `name`: 64-bit FNV-1a, the same in every
/// process and build, never 0.
pub fn identity(name: &str) -> u64 {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    h.max(1)
}

/// The published remote key of one rail: the device's rkey (RDMA) and the fabric's region key
/// (the two-sided protocol, checked by the target's CPU).
pub(crate) fn encode_key(rkey: u32, region: u32) -> Vec<u8> {
    Writer::with_capacity(11)
        .bytes(KEY_MAGIC)
        .u8(KEY_VERSION)
        .u32(rkey)
        .u32(region)
        .finish()
}

/// Decodes [`encode_key`]'s bytes into the work-request form `region << 32 | rkey`.
pub(crate) fn decode_key(rail: u16, key: &[u8]) -> Result<u64, FabricError> {
    let mut r = Reader::new(key, rail, "efa remote key");
    let parsed = (|| {
        r.header(KEY_MAGIC, KEY_VERSION)?;
        let rkey = r.u32()?;
        let region = r.u32()?;
        r.end()?;
        Ok::<_, FabricError>((u64::from(region) << 32) | u64::from(rkey))
    })();
    parsed.map_err(|_| FabricError::BadKey { rail })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(rail: u16) -> EfaAddress {
        EfaAddress {
            rail,
            instance: 7,
            identity: identity("kv-0"),
            gid: "fe80::4a:1dff:fe2b:3c4d".parse().unwrap(),
            qpn: 0x1234,
            qkey: 0x1111_1111,
            rdma: RDMA_READ,
        }
    }

    #[test]
    fn round_trip_and_fixed_length() {
        let b = addr(0).encode();
        assert_eq!(b.len(), EFA_ADDRESS_LEN);
        assert_eq!(EfaAddress::decode(0, &b).unwrap(), addr(0));
        let list = vec![addr(0).encode(), addr(1).encode()];
        assert_eq!(EfaAddress::decode_all(&list).unwrap()[1], addr(1));
    }

    #[test]
    fn rejects_bad_fields_by_name() {
        let mut q = addr(0);
        q.qkey = 0x8000_0000;
        let e = EfaAddress::decode(0, &q.encode()).unwrap_err().to_string();
        assert!(e.contains("privileged"), "{e}");
        let mut n = addr(0);
        n.qpn = 1 << 24;
        assert!(EfaAddress::decode(0, &n.encode()).is_err());
        let mut c = addr(0);
        c.rdma = 4;
        let e = EfaAddress::decode(0, &c.encode()).unwrap_err().to_string();
        assert!(e.contains("capability bits 0x04"), "{e}");
        assert!(EfaAddress::decode(1, &addr(0).encode()).is_err());
        let b = addr(0).encode();
        assert!(EfaAddress::decode(0, &b[..20]).is_err());
        let mut other = addr(1);
        other.instance = 8;
        assert!(EfaAddress::decode_all(&[addr(0).encode(), other.encode()]).is_err());
        // A verbs or sim address is refused, not misread.
        assert!(EfaAddress::decode(0, b"SIM\0\0\0\0\0\0").is_err());
    }

    #[test]
    fn identity_is_stable_and_tells_names_apart() {
        // FNV-1a's published test vector for "a".
        assert_eq!(identity("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(identity("kv-0"), identity("kv-0"));
        assert_ne!(identity("kv-0"), identity("kv-1"));
        assert_ne!(identity(""), 0);
    }

    #[test]
    fn keys_carry_rkey_and_region() {
        let k = encode_key(0xdead_beef, 0x0003_0002);
        assert_eq!(decode_key(1, &k).unwrap(), 0x0003_0002_dead_beef);
        assert!(decode_key(1, &k[..10]).is_err());
        assert!(decode_key(1, &[k.clone(), vec![0]].concat()).is_err());
        assert!(decode_key(1, &crate::fabric::rdma::codec::encode_rkey(5)).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = EfaAddress::decode(0, &bytes);
        }
    }
}
