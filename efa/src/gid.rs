//! Global identifiers (GIDs): 16-byte port addresses.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A 16-byte GID, in network byte order as the device reports it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
#[repr(transparent)]
pub struct Gid(pub [u8; 16]);

impl Gid {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Whether all bytes are zero (an unused table slot).
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// The IPv4 address of an IPv4-mapped GID (`::ffff:a.b.c.d`), as RoCE v2 uses for IPv4.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        Ipv6Addr::from(self.0).to_ipv4_mapped()
    }

    pub(crate) fn from_raw(raw: &efa_sys::ibv_gid) -> Self {
        // SAFETY: every variant of the union covers the same 16 plain bytes.
        Gid(unsafe { raw.raw })
    }

    pub(crate) fn to_raw(self) -> efa_sys::ibv_gid {
        efa_sys::ibv_gid { raw: self.0 }
    }
}

impl From<[u8; 16]> for Gid {
    fn from(b: [u8; 16]) -> Self {
        Gid(b)
    }
}

impl From<Ipv6Addr> for Gid {
    fn from(a: Ipv6Addr) -> Self {
        Gid(a.octets())
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, pair) in self.0.chunks(2).enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{:02x}{:02x}", pair[0], pair[1])?;
        }
        Ok(())
    }
}

impl fmt::Debug for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gid({self})")
    }
}

impl std::str::FromStr for Gid {
    type Err = std::net::AddrParseError;

    /// Parse the colon-separated form [`Display`](fmt::Display) prints (any IPv6 text form).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<Ipv6Addr>().map(Gid::from)
    }
}

/// How a GID is used on the wire (`ports/N/gid_attrs/types/I` in sysfs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GidType {
    /// InfiniBand or RoCE v1 (also what EFA reports).
    IbRoceV1,
    /// RoCE v2 (UDP encapsulated; the one to use on Soft-RoCE).
    RoceV2,
    /// The type could not be read.
    Unknown,
}

/// One entry of a port's GID table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GidEntry {
    /// Port number (1-based).
    pub port: u8,
    /// Index in the table (the `sgid_index` of AHs and RC paths).
    pub index: u32,
    /// The GID.
    pub gid: Gid,
    /// Its wire type.
    pub gid_type: GidType,
}

/// Pick the GID to address a peer with: RoCE v2 IPv4-mapped first, then RoCE v2, then the first
/// non-zero entry (EFA and InfiniBand have one GID at index 0).
pub(crate) fn preferred_gid(table: &[GidEntry]) -> Option<GidEntry> {
    let nonzero = || table.iter().filter(|e| !e.gid.is_zero());
    nonzero()
        .find(|e| e.gid_type == GidType::RoceV2 && e.gid.ipv4().is_some())
        .or_else(|| nonzero().find(|e| e.gid_type == GidType::RoceV2))
        .or_else(|| nonzero().next())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u32, gid: &str, gid_type: GidType) -> GidEntry {
        GidEntry {
            port: 1,
            index,
            gid: gid.parse().unwrap(),
            gid_type,
        }
    }

    #[test]
    fn prefers_roce_v2_ipv4_over_link_local() {
        let table = [
            entry(0, "fe80::5054:ff:fe12:3456", GidType::IbRoceV1),
            entry(1, "fe80::5054:ff:fe12:3456", GidType::RoceV2),
            entry(2, "::ffff:10.0.2.15", GidType::IbRoceV1),
            entry(3, "::ffff:10.0.2.15", GidType::RoceV2),
        ];
        assert_eq!(preferred_gid(&table).unwrap().index, 3);
        assert_eq!(preferred_gid(&table[..2]).unwrap().index, 1);
        assert_eq!(preferred_gid(&table[..1]).unwrap().index, 0);
        assert_eq!(preferred_gid(&[entry(0, "::", GidType::RoceV2)]), None);
    }

    #[test]
    fn display_parse_round_trip() {
        let g: Gid = "fe80::1:2".parse().unwrap();
        assert_eq!(g.to_string(), "fe80:0000:0000:0000:0000:0000:0001:0002");
        assert_eq!(g.to_string().parse::<Gid>().unwrap(), g);
        let v4: Gid = "::ffff:192.168.1.7".parse().unwrap();
        assert_eq!(v4.ipv4(), Some(Ipv4Addr::new(192, 168, 1, 7)));
        assert_eq!(g.ipv4(), None);
    }
}
