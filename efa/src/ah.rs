//! Address handles: how a datagram QP (SRD, UD) names a peer port.

use std::ptr::NonNull;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gid::Gid;
use crate::pd::Pd;

/// Where an address handle points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AhAttr {
    /// The peer port's GID.
    pub gid: Gid,
    /// Local GID index to send from (0 on EFA; the RoCE v2 entry on Soft-RoCE).
    pub sgid_index: u8,
    /// Local port (1).
    pub port: u8,
    /// Hop limit for routed (RoCE v2) traffic.
    pub hop_limit: u8,
}

impl AhAttr {
    /// An AH to `gid` from local GID index `sgid_index` on port 1.
    pub fn new(gid: Gid, sgid_index: u8) -> Self {
        AhAttr {
            gid,
            sgid_index,
            port: 1,
            hop_limit: 64,
        }
    }

    pub(crate) fn to_raw(self) -> efa_sys::ibv_ah_attr {
        // SAFETY: plain C struct; zero is a valid starting point.
        let mut a: efa_sys::ibv_ah_attr = unsafe { std::mem::zeroed() };
        a.is_global = 1;
        a.port_num = self.port;
        a.grh.dgid = self.gid.to_raw();
        a.grh.sgid_index = self.sgid_index;
        a.grh.hop_limit = self.hop_limit;
        a
    }
}

/// An address handle (`ibv_ah`), destroyed on drop.
///
/// On SRD, RDMA to a peer also needs the peer to hold an AH for this side, or the operation
/// fails with [`EfaStatus::UnknownPeer`](crate::EfaStatus::UnknownPeer).
pub struct Ah {
    pd: Arc<Pd>,
    raw: NonNull<efa_sys::ibv_ah>,
    attr: AhAttr,
}

// SAFETY: an ibv_ah is immutable after creation; providers read it when posting.
unsafe impl Send for Ah {}
// SAFETY: as above.
unsafe impl Sync for Ah {}

impl std::fmt::Debug for Ah {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ah").field("attr", &self.attr).finish()
    }
}

impl Ah {
    /// Create an AH on `pd`.
    pub fn new(pd: &Arc<Pd>, attr: AhAttr) -> Result<Arc<Self>> {
        let mut raw_attr = attr.to_raw();
        // SAFETY: the PD is live and the attr initialised; NULL reports failure through errno.
        let raw = unsafe { (pd.context().verbs().ibv_create_ah)(pd.as_raw(), &mut raw_attr) };
        let raw = NonNull::new(raw).ok_or_else(|| {
            Error::verbs_arg(
                "ibv_create_ah",
                crate::error::last_errno(),
                "sgid_index",
                attr.sgid_index.into(),
            )
        })?;
        Ok(Arc::new(Ah {
            pd: Arc::clone(pd),
            raw,
            attr,
        }))
    }

    /// What the AH points at.
    pub fn attr(&self) -> &AhAttr {
        &self.attr
    }

    /// The EFA address handle number (`efadv_query_ah`), as libfabric uses to key peers.
    pub fn efa_ahn(&self) -> Result<u16> {
        self.pd.context().require_efa()?;
        let dv = efa_sys::efadv()?;
        let query = dv.efadv_query_ah.ok_or(Error::Unsupported {
            what: "efadv_query_ah",
            why: "libefa does not export it",
        })?;
        let mut out = efa_sys::efadv_ah_attr::default();
        // SAFETY: the AH is live; `out` is zeroed and its full size passed.
        let rc = unsafe {
            query(
                self.raw.as_ptr(),
                &mut out,
                std::mem::size_of_val(&out) as u32,
            )
        };
        if rc != 0 {
            return Err(Error::verbs("efadv_query_ah", rc));
        }
        Ok(out.ahn)
    }

    /// The raw AH; valid while `self` lives.
    pub fn as_raw(&self) -> *mut efa_sys::ibv_ah {
        self.raw.as_ptr()
    }
}

impl Drop for Ah {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once. Providers copy what they need from the AH at
        // posting time, so in-flight work does not read it after this.
        let rc = unsafe { (self.pd.context().verbs().ibv_destroy_ah)(self.raw.as_ptr()) };
        crate::teardown::check("ibv_destroy_ah", rc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_attr_is_global_on_port_one() {
        let gid: Gid = "fe80::1".parse().unwrap();
        let raw = AhAttr::new(gid, 3).to_raw();
        assert_eq!(raw.is_global, 1);
        assert_eq!(raw.port_num, 1);
        assert_eq!(raw.grh.sgid_index, 3);
        // SAFETY: reading the raw bytes of the union just written.
        assert_eq!(unsafe { raw.grh.dgid.raw }, gid.0);
    }
}
