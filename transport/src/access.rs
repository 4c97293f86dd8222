//! What remote peers may do to a segment.

use std::fmt;

/// Remote access rights of a segment. The default is [`Access::NONE`]: least privilege, the
/// segment is usable as a local source or sink only, and peers can neither read nor write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Access(u8);

impl Access {
    /// No remote access.
    pub const NONE: Access = Access(0);
    /// Peers may RDMA-read the segment.
    pub const REMOTE_READ: Access = Access(1);
    /// Peers may RDMA-write the segment.
    pub const REMOTE_WRITE: Access = Access(2);
    /// Peers may read and write the segment.
    pub const REMOTE_READ_WRITE: Access = Access(3);

    /// Whether peers may read.
    pub const fn can_read(self) -> bool {
        self.0 & 1 != 0
    }

    /// Whether peers may write.
    pub const fn can_write(self) -> bool {
        self.0 & 2 != 0
    }

    /// The union of two sets of rights.
    pub const fn union(self, other: Access) -> Access {
        Access(self.0 | other.0)
    }

    /// The wire bits.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Rights from wire bits; `None` when unknown bits are set.
    pub const fn from_bits(bits: u8) -> Option<Access> {
        if bits & !3 == 0 {
            Some(Access(bits))
        } else {
            None
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match (self.can_read(), self.can_write()) {
            (false, false) => "none",
            (true, false) => "read",
            (false, true) => "write",
            (true, true) => "read-write",
        };
        f.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_least_privilege() {
        let a = Access::default();
        assert!(!a.can_read() && !a.can_write());
        assert!(Access::REMOTE_READ.union(Access::REMOTE_WRITE) == Access::REMOTE_READ_WRITE);
        assert_eq!(Access::from_bits(4), None);
        assert_eq!(Access::from_bits(2), Some(Access::REMOTE_WRITE));
    }
}
