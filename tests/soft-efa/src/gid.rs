//! soft-efa GIDs: link-local IPv6 addresses (as EFA's are) that carry the device's UDP address, so
//! an address handle is all a device needs to reach its peer.
//!
//! `fe80::5efa:PPPP:AABB:CCDD` is port `PPPP` at IPv4 address `AA.BB.CC.DD`.

use std::net::{Ipv4Addr, SocketAddrV4};

const PREFIX: [u8; 10] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x5e, 0xfa];

/// The GID of a device bound at `addr`.
pub fn from_addr(addr: SocketAddrV4) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[..10].copy_from_slice(&PREFIX);
    g[10..12].copy_from_slice(&addr.port().to_be_bytes());
    g[12..].copy_from_slice(&addr.ip().octets());
    g
}

/// The UDP address of the device with GID `gid`, if it is a soft-efa GID.
pub fn to_addr(gid: &[u8; 16]) -> Option<SocketAddrV4> {
    if gid[..10] != PREFIX {
        return None;
    }
    let port = u16::from_be_bytes([gid[10], gid[11]]);
    let ip = Ipv4Addr::new(gid[12], gid[13], gid[14], gid[15]);
    (port != 0).then_some(SocketAddrV4::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_carry_the_address() {
        let a: SocketAddrV4 = "10.1.2.3:4567".parse().unwrap();
        let g = from_addr(a);
        assert_eq!(&g[..2], &[0xfe, 0x80]);
        assert_eq!(to_addr(&g), Some(a));
        assert_eq!(to_addr(&[0; 16]), None);
    }
}
