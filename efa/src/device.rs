//! Listing verbs devices and telling EFA devices apart from the rest.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::sysfs;

/// `enum ibv_node_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeType {
    /// InfiniBand channel adapter (also RoCE NICs and Soft-RoCE).
    Ca,
    /// Switch.
    Switch,
    /// Router.
    Router,
    /// iWARP NIC.
    Rnic,
    /// Cisco usNIC.
    Usnic,
    /// Cisco usNIC over UDP.
    UsnicUdp,
    /// Unspecified (EFA reports this).
    Unspecified,
    /// Anything else.
    Unknown(i32),
}

impl NodeType {
    /// Name the raw `ibv_node_type` value.
    pub fn from_raw(v: i32) -> Self {
        match v {
            1 => NodeType::Ca,
            2 => NodeType::Switch,
            3 => NodeType::Router,
            4 => NodeType::Rnic,
            5 => NodeType::Usnic,
            6 => NodeType::UsnicUdp,
            7 => NodeType::Unspecified,
            other => NodeType::Unknown(other),
        }
    }
}

/// `enum ibv_transport_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportType {
    /// InfiniBand transport (also RoCE).
    Ib,
    /// iWARP.
    Iwarp,
    /// usNIC.
    Usnic,
    /// usNIC over UDP.
    UsnicUdp,
    /// Unspecified (EFA reports this).
    Unspecified,
    /// Anything else.
    Unknown(i32),
}

impl TransportType {
    /// Name the raw `ibv_transport_type` value.
    pub fn from_raw(v: i32) -> Self {
        match v {
            0 => TransportType::Ib,
            1 => TransportType::Iwarp,
            2 => TransportType::Usnic,
            3 => TransportType::UsnicUdp,
            4 => TransportType::Unspecified,
            other => TransportType::Unknown(other),
        }
    }
}

/// What kind of device this is, as far as this crate cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// AWS Elastic Fabric Adapter: SRD and UD, no RC.
    Efa,
    /// Soft-RoCE (`rdma_rxe`): RC and UD over an Ethernet interface.
    SoftRoce,
    /// Any other verbs device (ConnectX, iWARP, ...).
    Other,
}

/// Decide the kind of a device from what sysfs and libibverbs say.
///
/// The bound kernel driver is the strongest evidence, then Amazon's PCI vendor id; only when
/// sysfs says nothing does the name decide (`rdmap*` and `efa_*` are EFA, `rxe*` Soft-RoCE).
pub(crate) fn classify(
    name: &str,
    driver: Option<&str>,
    vendor_id: Option<u32>,
    node_type: NodeType,
    soft_roce_parent: bool,
) -> DeviceKind {
    match driver {
        Some("efa") => return DeviceKind::Efa,
        Some(_) => {
            return if vendor_id == Some(sysfs::AMAZON_VENDOR_ID) {
                DeviceKind::Efa
            } else {
                DeviceKind::Other
            }
        }
        None => {}
    }
    if vendor_id == Some(sysfs::AMAZON_VENDOR_ID) {
        return DeviceKind::Efa;
    }
    if vendor_id.is_some() {
        return DeviceKind::Other;
    }
    if soft_roce_parent || name.starts_with("rxe") {
        return DeviceKind::SoftRoce;
    }
    if node_type == NodeType::Unspecified && (name.starts_with("rdmap") || name.starts_with("efa"))
    {
        return DeviceKind::Efa;
    }
    DeviceKind::Other
}

/// What is known about a verbs device before opening it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Kernel name, e.g. `rdmap0s6` or `rxe0`.
    pub name: String,
    /// Node GUID in host byte order.
    pub guid: u64,
    /// Node type.
    pub node_type: NodeType,
    /// Transport type.
    pub transport: TransportType,
    /// The device's sysfs directory (`/sys/class/infiniband/<name>`).
    pub ibdev_path: PathBuf,
    /// PCI vendor id, when the device sits on PCI.
    pub vendor_id: Option<u32>,
    /// The kernel driver bound to the PCI function, if any.
    pub driver: Option<String>,
    /// The kind this crate decided on.
    pub kind: DeviceKind,
}

impl DeviceInfo {
    /// Whether this is an EFA device.
    pub fn is_efa(&self) -> bool {
        self.kind == DeviceKind::Efa
    }

    /// Open the device.
    pub fn open(&self) -> Result<Arc<Context>> {
        Context::open(&self.name)
    }

    /// Read this device's hardware counters from sysfs.
    pub fn hw_counters(&self) -> Result<sysfs::HwCounters> {
        sysfs::hw_counters(&self.ibdev_path)
    }

    /// Describe a raw device.
    ///
    /// # Safety
    /// `dev` must point to a live `ibv_device` (from a device list not yet freed, or the device
    /// of an open context).
    pub(crate) unsafe fn from_raw(v: &efa_sys::Verbs, dev: NonNull<efa_sys::ibv_device>) -> Self {
        // SAFETY: the caller guarantees `dev` is live; libibverbs returns NUL-terminated names.
        let name = unsafe { CStr::from_ptr((v.ibv_get_device_name)(dev.as_ptr())) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: as above; the GUID is returned in network byte order.
        let guid = u64::from_be(unsafe { (v.ibv_get_device_guid)(dev.as_ptr()) });
        // SAFETY: reading plain fields of a live device.
        let (node_type, transport, ibdev_path) = unsafe {
            let d = dev.as_ref();
            (
                NodeType::from_raw(d.node_type),
                TransportType::from_raw(d.transport_type),
                PathBuf::from(
                    CStr::from_ptr(d.ibdev_path.as_ptr())
                        .to_string_lossy()
                        .into_owned(),
                ),
            )
        };
        let vendor_id = sysfs::vendor_id(&ibdev_path);
        let driver = sysfs::driver_name(&ibdev_path);
        let parent = ibdev_path.join("parent").exists() && driver.is_none();
        let kind = classify(&name, driver.as_deref(), vendor_id, node_type, parent);
        DeviceInfo {
            name,
            guid,
            node_type,
            transport,
            ibdev_path,
            vendor_id,
            driver,
            kind,
        }
    }
}

/// A device list from `ibv_get_device_list`, freed on drop.
pub(crate) struct RawDeviceList {
    verbs: &'static efa_sys::Verbs,
    list: NonNull<*mut efa_sys::ibv_device>,
    len: usize,
}

impl RawDeviceList {
    /// The device list; `None` when the kernel has no RDMA support.
    pub(crate) fn get(verbs: &'static efa_sys::Verbs) -> Result<Option<Self>> {
        let mut n: libc::c_int = 0;
        // SAFETY: `n` is a valid out pointer; a NULL result reports failure through errno.
        let list = unsafe { (verbs.ibv_get_device_list)(&mut n) };
        match NonNull::new(list) {
            Some(list) => Ok(Some(RawDeviceList {
                verbs,
                list,
                len: usize::try_from(n).unwrap_or(0),
            })),
            // A kernel without RDMA support (no uverbs): no devices, not a failure.
            None if crate::error::last_errno() == libc::ENOSYS => Ok(None),
            None => Err(Error::last_os("ibv_get_device_list")),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = NonNull<efa_sys::ibv_device>> + '_ {
        // SAFETY: libibverbs returned `len` valid entries followed by NULL.
        (0..self.len).filter_map(move |i| NonNull::new(unsafe { *self.list.as_ptr().add(i) }))
    }
}

impl Drop for RawDeviceList {
    fn drop(&mut self) {
        // SAFETY: the list came from ibv_get_device_list and is freed once; contexts opened from
        // it hold their own device reference.
        unsafe { (self.verbs.ibv_free_device_list)(self.list.as_ptr()) };
    }
}

/// List every verbs device on this host (empty when the kernel has no RDMA support).
pub fn devices() -> Result<Vec<DeviceInfo>> {
    let v = efa_sys::verbs()?;
    let Some(list) = RawDeviceList::get(v)? else {
        return Ok(Vec::new());
    };
    // SAFETY: every entry is live until `list` drops at the end of this function.
    Ok(list
        .iter()
        .map(|d| unsafe { DeviceInfo::from_raw(v, d) })
        .collect())
}

/// List only EFA devices.
pub fn efa_devices() -> Result<Vec<DeviceInfo>> {
    Ok(devices()?.into_iter().filter(DeviceInfo::is_efa).collect())
}

/// The EFA kernel driver's version, e.g. `"2.10.0g"`; `None` when the module is not loaded.
pub fn efa_driver_version() -> Option<String> {
    sysfs::efa_driver_version()
}

/// Read the hardware counters of a device by name from the standard sysfs location. A name
/// that is no device there (or not a plain name, such as `../x`) is
/// [`Error::NoSuchDevice`].
pub fn hw_counters(device: &str) -> Result<sysfs::HwCounters> {
    sysfs::device_counters(Path::new(sysfs::INFINIBAND_CLASS), device)
}

/// Read the hardware counters under a device's sysfs directory (its
/// [`DeviceInfo::ibdev_path`], or a copy of that layout): `ports/1/hw_counters/*` and
/// `hw_counters/*`.
///
/// # Errors
///
/// A counter file that cannot be read or is not a number, named in the error.
pub fn hw_counters_in(ibdev_path: &Path) -> Result<sysfs::HwCounters> {
    sysfs::hw_counters(ibdev_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_beats_name() {
        let ca = NodeType::Ca;
        assert_eq!(
            classify("mlx5_0", Some("efa"), None, ca, false),
            DeviceKind::Efa
        );
        assert_eq!(
            classify("rdmap0s6", Some("mlx5_core"), Some(0x15b3), ca, false),
            DeviceKind::Other
        );
        assert_eq!(
            classify("x", Some("vfio"), Some(0x1d0f), ca, false),
            DeviceKind::Efa
        );
    }

    #[test]
    fn vendor_then_name() {
        let un = NodeType::Unspecified;
        assert_eq!(
            classify("foo", None, Some(0x1d0f), un, false),
            DeviceKind::Efa
        );
        assert_eq!(
            classify("rdmap3", None, Some(0x8086), un, false),
            DeviceKind::Other
        );
        assert_eq!(classify("rdmap3", None, None, un, false), DeviceKind::Efa);
        assert_eq!(
            classify("rdmap3", None, None, NodeType::Ca, false),
            DeviceKind::Other
        );
        assert_eq!(
            classify("rxe0", None, None, NodeType::Ca, false),
            DeviceKind::SoftRoce
        );
        assert_eq!(
            classify("roce1", None, None, NodeType::Ca, true),
            DeviceKind::SoftRoce
        );
    }

    #[test]
    fn raw_codes_are_named() {
        assert_eq!(
            NodeType::from_raw(efa_sys::IBV_NODE_UNSPECIFIED),
            NodeType::Unspecified
        );
        assert_eq!(NodeType::from_raw(efa_sys::IBV_NODE_CA), NodeType::Ca);
        assert_eq!(
            TransportType::from_raw(efa_sys::IBV_TRANSPORT_UNSPECIFIED),
            TransportType::Unspecified
        );
        assert_eq!(
            TransportType::from_raw(efa_sys::IBV_TRANSPORT_IB),
            TransportType::Ib
        );
        assert_eq!(NodeType::from_raw(-1), NodeType::Unknown(-1));
    }
}
