//! An open device: device, port and GID queries, and the EFA attribute set.

use std::ffi::CStr;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::caps::{EfaCaps, EfaDeviceAttr};
use crate::device::{DeviceInfo, DeviceKind, RawDeviceList};
use crate::error::{Error, Limit, Result};
use crate::gid::{preferred_gid, Gid, GidEntry};
use crate::sysfs;

/// `enum ibv_port_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortState {
    /// No state change.
    Nop,
    /// Link down.
    Down,
    /// Initializing.
    Init,
    /// Armed.
    Armed,
    /// Active: traffic can flow.
    Active,
    /// Active, deferred.
    ActiveDefer,
    /// Anything else.
    Unknown(u32),
}

impl PortState {
    /// Name the raw value.
    pub fn from_raw(v: u32) -> Self {
        match v {
            0 => PortState::Nop,
            1 => PortState::Down,
            2 => PortState::Init,
            3 => PortState::Armed,
            4 => PortState::Active,
            5 => PortState::ActiveDefer,
            o => PortState::Unknown(o),
        }
    }
}

/// `enum ibv_mtu`: a path MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mtu {
    /// 256 bytes.
    Mtu256,
    /// 512 bytes.
    Mtu512,
    /// 1024 bytes.
    Mtu1024,
    /// 2048 bytes.
    Mtu2048,
    /// 4096 bytes.
    Mtu4096,
    /// Anything else.
    Unknown(u32),
}

impl Mtu {
    /// Name the raw `ibv_mtu` value.
    pub fn from_raw(v: u32) -> Self {
        match v {
            1 => Mtu::Mtu256,
            2 => Mtu::Mtu512,
            3 => Mtu::Mtu1024,
            4 => Mtu::Mtu2048,
            5 => Mtu::Mtu4096,
            o => Mtu::Unknown(o),
        }
    }

    /// The raw `ibv_mtu` value.
    pub fn raw(self) -> u32 {
        match self {
            Mtu::Mtu256 => 1,
            Mtu::Mtu512 => 2,
            Mtu::Mtu1024 => 3,
            Mtu::Mtu2048 => 4,
            Mtu::Mtu4096 => 5,
            Mtu::Unknown(o) => o,
        }
    }

    /// The MTU in bytes, 0 when unknown.
    pub fn bytes(self) -> u32 {
        match self {
            Mtu::Unknown(_) => 0,
            m => 128 << m.raw(),
        }
    }
}

/// Link layer of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkLayer {
    /// Unspecified (EFA reports this).
    Unspecified,
    /// InfiniBand.
    Infiniband,
    /// Ethernet (RoCE, Soft-RoCE, iWARP).
    Ethernet,
    /// Anything else.
    Unknown(u8),
}

impl LinkLayer {
    /// Name the raw value.
    pub fn from_raw(v: u8) -> Self {
        match v {
            0 => LinkLayer::Unspecified,
            1 => LinkLayer::Infiniband,
            2 => LinkLayer::Ethernet,
            o => LinkLayer::Unknown(o),
        }
    }
}

/// Port attributes from `ibv_query_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortAttr {
    /// Logical state.
    pub state: PortState,
    /// Largest MTU the port supports.
    pub max_mtu: Mtu,
    /// MTU in use.
    pub active_mtu: Mtu,
    /// GID table length.
    pub gid_tbl_len: u32,
    /// Largest message in bytes (on EFA: the largest SEND).
    pub max_msg_sz: u32,
    /// Port capability flags.
    pub port_cap_flags: u32,
    /// P_Key table length.
    pub pkey_tbl_len: u16,
    /// Base LID (InfiniBand only).
    pub lid: u16,
    /// Link layer.
    pub link_layer: LinkLayer,
    /// Active width code.
    pub active_width: u8,
    /// Active speed code.
    pub active_speed: u8,
}

impl PortAttr {
    fn from_raw(r: &efa_sys::ibv_port_attr) -> Self {
        PortAttr {
            state: PortState::from_raw(r.state),
            max_mtu: Mtu::from_raw(r.max_mtu),
            active_mtu: Mtu::from_raw(r.active_mtu),
            gid_tbl_len: u32::try_from(r.gid_tbl_len).unwrap_or(0),
            max_msg_sz: r.max_msg_sz,
            port_cap_flags: r.port_cap_flags,
            pkey_tbl_len: r.pkey_tbl_len,
            lid: r.lid,
            link_layer: LinkLayer::from_raw(r.link_layer),
            active_width: r.active_width,
            active_speed: r.active_speed,
        }
    }
}

/// Device attributes from `ibv_query_device_ex`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAttr {
    /// Firmware version text.
    pub fw_ver: String,
    /// Node GUID, host byte order.
    pub node_guid: u64,
    /// PCI vendor id (0x1d0f on EFA).
    pub vendor_id: u32,
    /// Vendor part id (0xefa0, 0xefa1, ... on EFA).
    pub vendor_part_id: u32,
    /// Hardware version.
    pub hw_ver: u32,
    /// Largest registrable region in bytes.
    pub max_mr_size: u64,
    /// Supported page sizes (bit mask).
    pub page_size_cap: u64,
    /// Most queue pairs.
    pub max_qp: u32,
    /// Deepest work queue.
    pub max_qp_wr: u32,
    /// Most SGEs per work request.
    pub max_sge: u32,
    /// Most completion queues.
    pub max_cq: u32,
    /// Deepest completion queue.
    pub max_cqe: u32,
    /// Most memory regions.
    pub max_mr: u32,
    /// Most protection domains.
    pub max_pd: u32,
    /// Most address handles.
    pub max_ah: u32,
    /// Most outstanding RDMA reads as target (RC).
    pub max_qp_rd_atom: u32,
    /// Most outstanding RDMA reads as initiator (RC).
    pub max_qp_init_rd_atom: u32,
    /// Most shared receive queues (0: none).
    pub max_srq: u32,
    /// Deepest shared receive queue.
    pub max_srq_wr: u32,
    /// Most SGEs per shared-receive-queue work request.
    pub max_srq_sge: u32,
    /// `device_cap_flags`.
    pub device_cap_flags: u32,
    /// Number of ports.
    pub phys_port_cnt: u8,
}

fn nonneg(v: libc::c_int) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

impl DeviceAttr {
    /// RDMA READs an RC QP of this device can keep outstanding in both roles: the
    /// `max_rd_atomic` (and `max_dest_rd_atomic`) to give [`RcOptions`](crate::RcOptions), as
    /// perftest's default `out_reads`. At least 1 (a device that reports 0 still serves one),
    /// at most what the attribute's `u8` holds.
    pub fn rc_read_depth(&self) -> u8 {
        self.max_qp_rd_atom
            .min(self.max_qp_init_rd_atom)
            .clamp(1, u8::MAX.into()) as u8
    }

    fn from_raw(r: &efa_sys::ibv_device_attr) -> Self {
        // SAFETY: fw_ver is a fixed array the library NUL-terminates; the copy below bounds it.
        let fw = r
            .fw_ver
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect::<Vec<u8>>();
        DeviceAttr {
            fw_ver: String::from_utf8_lossy(&fw).into_owned(),
            node_guid: u64::from_be(r.node_guid),
            vendor_id: r.vendor_id,
            vendor_part_id: r.vendor_part_id,
            hw_ver: r.hw_ver,
            max_mr_size: r.max_mr_size,
            page_size_cap: r.page_size_cap,
            max_qp: nonneg(r.max_qp),
            max_qp_wr: nonneg(r.max_qp_wr),
            max_sge: nonneg(r.max_sge),
            max_cq: nonneg(r.max_cq),
            max_cqe: nonneg(r.max_cqe),
            max_mr: nonneg(r.max_mr),
            max_pd: nonneg(r.max_pd),
            max_ah: nonneg(r.max_ah),
            max_qp_rd_atom: nonneg(r.max_qp_rd_atom),
            max_qp_init_rd_atom: nonneg(r.max_qp_init_rd_atom),
            max_srq: nonneg(r.max_srq),
            max_srq_wr: nonneg(r.max_srq_wr),
            max_srq_sge: nonneg(r.max_srq_sge),
            device_cap_flags: r.device_cap_flags,
            phys_port_cnt: r.phys_port_cnt,
        }
    }
}

/// An open verbs device (`ibv_context`); closed when the last child and handle are gone.
///
/// Every PD, CQ, QP, MR and AH holds an `Arc<Context>`, so the context outlives them all.
pub struct Context {
    raw: NonNull<efa_sys::ibv_context>,
    verbs: &'static efa_sys::Verbs,
    info: DeviceInfo,
    attr: DeviceAttr,
    efa: Option<EfaDeviceAttr>,
}

// SAFETY: an ibv_context is safe to use from any thread; libibverbs and the providers serialize
// what needs it. The Rust fields are immutable after open.
unsafe impl Send for Context {}
// SAFETY: as above; every method takes &self and only calls thread-safe verbs.
unsafe impl Sync for Context {}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("name", &self.info.name)
            .field("kind", &self.info.kind)
            .field("efa", &self.efa)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Open the verbs device named `name` (e.g. `rdmap0s6`, `rxe0`).
    ///
    /// On EFA devices the efadv attributes are queried here, so capability checks later cost
    /// nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Library`] when libibverbs cannot be loaded (the loader's error is the cause),
    /// [`Error::NoSuchDevice`] for an unknown name, [`Error::Verbs`] when `ibv_open_device` or a
    /// device query fails (with its errno).
    pub fn open(name: &str) -> Result<Arc<Self>> {
        let v = efa_sys::verbs()?;
        let list = RawDeviceList::get(v)?;
        for dev in list.iter().flat_map(|l| l.iter()) {
            // SAFETY: `dev` is live while `list` is.
            let mut info = unsafe { DeviceInfo::from_raw(v, dev) };
            if info.name != name {
                continue;
            }
            // SAFETY: `dev` is live; a NULL result reports failure through errno.
            let raw = unsafe { (v.ibv_open_device)(dev.as_ptr()) };
            let raw = NonNull::new(raw).ok_or_else(|| Error::last_os("ibv_open_device"))?;
            let mut ctx = Context {
                raw,
                verbs: v,
                info: info.clone(),
                attr: DeviceAttr::from_raw(&zeroed_device_attr()),
                efa: None,
            };
            ctx.attr = ctx.query_device()?;
            ctx.efa = ctx.query_efa()?;
            if ctx.efa.is_some() || ctx.attr.vendor_id == sysfs::AMAZON_VENDOR_ID {
                info.kind = DeviceKind::Efa;
            }
            ctx.info = info;
            return Ok(Arc::new(ctx));
        }
        Err(Error::NoSuchDevice {
            name: name.to_owned(),
        })
    }

    /// Open the first EFA device, if any.
    ///
    /// # Errors
    ///
    /// As [`Context::open`]; [`Error::NoSuchDevice`] when no EFA device is present.
    pub fn open_first_efa() -> Result<Arc<Self>> {
        let first = crate::device::efa_devices()?.into_iter().next();
        match first {
            Some(d) => d.open(),
            None => Err(Error::NoSuchDevice {
                name: "<any EFA device>".to_owned(),
            }),
        }
    }

    fn query_device(&self) -> Result<DeviceAttr> {
        // SAFETY: plain C structs; zero is valid and means "no input flags".
        let input: efa_sys::ibv_query_device_ex_input = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut out: efa_sys::ibv_device_attr_ex = unsafe { std::mem::zeroed() };
        // SAFETY: the context is open; both pointers are valid for the call.
        let rc = unsafe {
            efa_sys::ibv_query_device_ex(self.verbs, self.raw.as_ptr(), &input, &mut out)
        };
        if rc != 0 {
            return Err(Error::verbs("ibv_query_device_ex", rc));
        }
        Ok(DeviceAttr::from_raw(&out.orig_attr))
    }

    fn query_efa(&self) -> Result<Option<EfaDeviceAttr>> {
        let Ok(dv) = efa_sys::efadv() else {
            return Ok(None);
        };
        let mut raw = efa_sys::efadv_device_attr::default();
        // SAFETY: the context is open; `raw` is zeroed and its full size is passed, which every
        // libefa accepts (older ones fill a prefix and zero the rest).
        let rc = unsafe {
            (dv.efadv_query_device)(
                self.raw.as_ptr(),
                &mut raw,
                std::mem::size_of::<efa_sys::efadv_device_attr>() as u32,
            )
        };
        match rc {
            0 => Ok(Some(EfaDeviceAttr::from_raw(&raw))),
            // libefa refuses other devices (EOPNOTSUPP); that only means "not EFA".
            _ if self.info.kind != DeviceKind::Efa => Ok(None),
            e => Err(Error::verbs("efadv_query_device", e)),
        }
    }

    /// What is known about the device.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The device's kernel name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// Whether this is an EFA device.
    pub fn is_efa(&self) -> bool {
        self.info.kind == DeviceKind::Efa
    }

    /// Device attributes, queried at open.
    pub fn device_attr(&self) -> &DeviceAttr {
        &self.attr
    }

    /// The EFA attribute set, queried at open; `None` on other devices.
    pub fn efa_attr(&self) -> Option<&EfaDeviceAttr> {
        self.efa.as_ref()
    }

    /// EFA capability bits; empty on other devices.
    pub fn efa_caps(&self) -> EfaCaps {
        self.efa.map(|a| a.caps).unwrap_or_default()
    }

    /// The send queue depth EFA's provider grants a QP with these attributes
    /// (`efadv_get_max_sq_depth`, rdma-core 63): `Ok(None)` when libefa predates it.
    /// `inline_write` is a QP built with [`QpBuilder::inline_write`](crate::QpBuilder::inline_write).
    pub fn efa_max_sq_depth(
        &self,
        max_send_sge: u32,
        max_inline_data: u32,
        inline_write: bool,
    ) -> Result<Option<u32>> {
        let Some(f) = efa_sys::efadv()
            .ok()
            .and_then(|dv| dv.efadv_get_max_sq_depth)
        else {
            return Ok(None);
        };
        let mut attr = efa_sys::efadv_sq_depth_attr {
            flags: if inline_write {
                efa_sys::EFADV_SQ_DEPTH_ATTR_INLINE_WRITE
            } else {
                0
            },
            max_send_sge,
            max_rdma_sge: 1,
            max_inline_data,
            ..Default::default()
        };
        // SAFETY: the context is open; `attr` is initialised and passed with its size.
        let rc = unsafe {
            f(
                self.as_raw(),
                &mut attr,
                std::mem::size_of_val(&attr) as u32,
            )
        };
        depth("efadv_get_max_sq_depth", rc)
    }

    /// The receive queue depth EFA's provider grants with `max_recv_sge` SGEs per receive
    /// (`efadv_get_max_rq_depth`, rdma-core 63): `Ok(None)` when libefa predates it.
    pub fn efa_max_rq_depth(&self, max_recv_sge: u32) -> Result<Option<u32>> {
        let Some(f) = efa_sys::efadv()
            .ok()
            .and_then(|dv| dv.efadv_get_max_rq_depth)
        else {
            return Ok(None);
        };
        let mut attr = efa_sys::efadv_rq_depth_attr {
            max_recv_sge,
            ..Default::default()
        };
        // SAFETY: as for the send queue.
        let rc = unsafe {
            f(
                self.as_raw(),
                &mut attr,
                std::mem::size_of_val(&attr) as u32,
            )
        };
        depth("efadv_get_max_rq_depth", rc)
    }

    /// The EFA attribute set, or [`Error::NotEfa`].
    pub fn require_efa(&self) -> Result<&EfaDeviceAttr> {
        self.efa.as_ref().ok_or_else(|| Error::NotEfa {
            device: self.info.name.clone(),
        })
    }

    /// Query a port (1-based).
    pub fn query_port(&self, port: u8) -> Result<PortAttr> {
        // SAFETY: plain C struct; zero is valid.
        let mut raw: efa_sys::ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the context is open and `raw` is a full-size ibv_port_attr.
        let rc = unsafe { efa_sys::ibv_query_port(self.verbs, self.raw.as_ptr(), port, &mut raw) };
        if rc != 0 {
            return Err(Error::verbs_arg("ibv_query_port", rc, "port", port.into()));
        }
        Ok(PortAttr::from_raw(&raw))
    }

    /// Read one GID table entry.
    pub fn query_gid(&self, port: u8, index: u32) -> Result<Gid> {
        let idx = libc::c_int::try_from(index)
            .map_err(|_| Error::limit(Limit::GidIndex, index.into(), i32::MAX as u64))?;
        let mut raw = efa_sys::ibv_gid { raw: [0; 16] };
        // SAFETY: the context is open and `raw` is a valid out pointer.
        let rc = unsafe { (self.verbs.ibv_query_gid)(self.raw.as_ptr(), port, idx, &mut raw) };
        if rc != 0 {
            return Err(Error::verbs_arg(
                "ibv_query_gid",
                crate::error::last_errno(),
                "index",
                index.into(),
            ));
        }
        Ok(Gid::from_raw(&raw))
    }

    /// GID table entry `index` of `port`, with its type.
    ///
    /// # Errors
    ///
    /// [`Error::Verbs`] when `ibv_query_gid` fails (with its errno and the index).
    pub fn gid_entry(&self, port: u8, index: u32) -> Result<GidEntry> {
        Ok(GidEntry {
            port,
            index,
            gid: self.query_gid(port, index)?,
            gid_type: sysfs::gid_type(&self.info.ibdev_path, port, index),
        })
    }

    /// The port's GID table; empty slots (zero GIDs or unreadable entries) are left out.
    pub fn gid_table(&self, port: u8) -> Result<Vec<GidEntry>> {
        let len = self.query_port(port)?.gid_tbl_len;
        let mut out = Vec::new();
        for index in 0..len {
            let Ok(gid) = self.query_gid(port, index) else {
                continue;
            };
            if gid.is_zero() {
                continue;
            }
            out.push(GidEntry {
                port,
                index,
                gid,
                gid_type: sysfs::gid_type(&self.info.ibdev_path, port, index),
            });
        }
        Ok(out)
    }

    /// The GID peers should address this port by (RoCE v2 IPv4-mapped first, then RoCE v2, then
    /// the first non-zero entry): on Soft-RoCE the RoCE v2 IPv4 entry, on EFA index 0.
    pub fn preferred_gid(&self, port: u8) -> Result<GidEntry> {
        preferred_gid(&self.gid_table(port)?).ok_or(Error::Invalid {
            what: "GID table (no usable entry) of port",
            value: port.into(),
        })
    }

    /// This device's hardware counters from sysfs.
    pub fn hw_counters(&self) -> Result<sysfs::HwCounters> {
        sysfs::hw_counters(&self.info.ibdev_path)
    }

    /// The device name as libibverbs reports it for the open context.
    pub fn device_name(&self) -> String {
        // SAFETY: the context is open, so its device pointer is live.
        unsafe {
            CStr::from_ptr((self.verbs.ibv_get_device_name)(
                (*self.raw.as_ptr()).device,
            ))
            .to_string_lossy()
            .into_owned()
        }
    }

    /// The raw context, for calls this crate does not wrap. It stays valid while `self` lives.
    pub fn as_raw(&self) -> *mut efa_sys::ibv_context {
        self.raw.as_ptr()
    }

    pub(crate) fn verbs(&self) -> &'static efa_sys::Verbs {
        self.verbs
    }
}

fn zeroed_device_attr() -> efa_sys::ibv_device_attr {
    // SAFETY: plain C struct of integers and arrays; zero is valid.
    unsafe { std::mem::zeroed() }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: every child holds an Arc<Context>, so none is alive; closed exactly once.
        let rc = unsafe { (self.verbs.ibv_close_device)(self.raw.as_ptr()) };
        crate::teardown::check("ibv_close_device", rc);
    }
}

/// A depth from `efadv_get_max_*_depth`, which return a negative errno on failure;
/// `-EOPNOTSUPP` means the library cannot answer for this device, as if it lacked the call.
fn depth(call: &'static str, rc: i32) -> Result<Option<u32>> {
    if rc == -libc::EOPNOTSUPP {
        return Ok(None);
    }
    if rc < 0 {
        return Err(Error::verbs(call, -rc));
    }
    Ok(Some(rc as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_bytes() {
        assert_eq!(Mtu::from_raw(efa_sys::IBV_MTU_1024).bytes(), 1024);
        assert_eq!(Mtu::from_raw(efa_sys::IBV_MTU_4096).bytes(), 4096);
        assert_eq!(Mtu::from_raw(9).bytes(), 0);
        assert_eq!(Mtu::Mtu256.bytes(), 256);
    }

    #[test]
    fn port_codes() {
        assert_eq!(
            PortState::from_raw(efa_sys::IBV_PORT_ACTIVE),
            PortState::Active
        );
        assert_eq!(
            LinkLayer::from_raw(efa_sys::IBV_LINK_LAYER_ETHERNET as u8),
            LinkLayer::Ethernet
        );
    }

    #[test]
    fn rc_read_depth_is_the_smaller_limit_within_a_u8() {
        // SAFETY: ibv_device_attr is plain old data; all zeroes is a valid value.
        let mut raw: efa_sys::ibv_device_attr = unsafe { std::mem::zeroed() };
        let depth = |raw: &efa_sys::ibv_device_attr| DeviceAttr::from_raw(raw).rc_read_depth();
        assert_eq!(
            depth(&raw),
            1,
            "a device that reports 0 still serves one READ"
        );
        (raw.max_qp_rd_atom, raw.max_qp_init_rd_atom) = (128, 128);
        assert_eq!(depth(&raw), 128, "rxe");
        (raw.max_qp_rd_atom, raw.max_qp_init_rd_atom) = (16, 128);
        assert_eq!(depth(&raw), 16, "the responder's limit");
        (raw.max_qp_rd_atom, raw.max_qp_init_rd_atom) = (4096, 1000);
        assert_eq!(depth(&raw), 255, "clamped to the attribute's u8");
        raw.max_qp_rd_atom = -1;
        assert_eq!(depth(&raw), 1, "a negative count reads as 0");
    }
}
