//! Reading the kernel's view of RDMA devices from sysfs: driver identity, EFA driver version and
//! hardware counters.
//!
//! Every reader takes the directory to read from, so tests can point it at a tree they build.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Amazon's PCI vendor id, carried by every EFA device.
pub(crate) const AMAZON_VENDOR_ID: u32 = 0x1d0f;

/// Root of the RDMA device class in sysfs.
pub(crate) const INFINIBAND_CLASS: &str = "/sys/class/infiniband";

/// Where the EFA kernel module publishes its version.
pub(crate) const EFA_MODULE_VERSION: &str = "/sys/module/efa/version";

fn sysfs_err(path: &Path, e: &std::io::Error) -> Error {
    Error::Sysfs {
        path: path.display().to_string(),
        errno: e.raw_os_error().unwrap_or(libc::EIO),
    }
}

/// Read a small sysfs file as trimmed text.
pub(crate) fn read_trimmed(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| sysfs_err(path, &e))
}

/// Parse a decimal or `0x`-prefixed hexadecimal number.
pub(crate) fn parse_number(text: &str) -> Option<u64> {
    let t = text.trim();
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    }
}

/// The PCI vendor id of the device behind `ibdev_path` (`device/vendor`), if it has one.
pub(crate) fn vendor_id(ibdev_path: &Path) -> Option<u32> {
    let text = read_trimmed(&ibdev_path.join("device/vendor")).ok()?;
    parse_number(&text).and_then(|v| u32::try_from(v).ok())
}

/// The kernel driver bound to the device behind `ibdev_path` (`device/driver` link target name).
pub(crate) fn driver_name(ibdev_path: &Path) -> Option<String> {
    let target = fs::read_link(ibdev_path.join("device/driver")).ok()?;
    target.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// The EFA kernel driver version, e.g. `"2.10.0g"`; `None` when the module is not loaded.
pub(crate) fn efa_driver_version() -> Option<String> {
    read_trimmed(Path::new(EFA_MODULE_VERSION)).ok()
}

/// Hardware counters of one device: per port 1 and device-wide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HwCounters {
    /// `ports/1/hw_counters/*`, sorted by name.
    pub port: Vec<(String, u64)>,
    /// `hw_counters/*` (device level), sorted by name.
    pub device: Vec<(String, u64)>,
}

impl HwCounters {
    /// Look a counter up by name, port counters first.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.port
            .iter()
            .chain(&self.device)
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

/// Read every counter file in `dir`. A missing directory is an empty set; a file that is not a
/// number is an error naming it; `lifespan` (a setting, not a counter) is skipped.
pub(crate) fn read_counter_dir(dir: &Path) -> Result<Vec<(String, u64)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(sysfs_err(dir, &e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| sysfs_err(dir, &e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "lifespan" {
            continue;
        }
        let path: PathBuf = entry.path();
        let text = read_trimmed(&path)?;
        let value = parse_number(&text).ok_or(Error::Sysfs {
            path: path.display().to_string(),
            errno: 0,
        })?;
        out.push((name, value));
    }
    out.sort();
    Ok(out)
}

/// Read the hardware counters of the device at `ibdev_path` (e.g. `/sys/class/infiniband/rdmap0s6`).
pub(crate) fn hw_counters(ibdev_path: &Path) -> Result<HwCounters> {
    Ok(HwCounters {
        port: read_counter_dir(&ibdev_path.join("ports/1/hw_counters"))?,
        device: read_counter_dir(&ibdev_path.join("hw_counters"))?,
    })
}

/// The hardware counters of the device named `device` in the device class directory `class`
/// (normally [`INFINIBAND_CLASS`]). A name that is not a plain directory entry (empty, `.`,
/// `..`, or with a `/` or NUL) or names no device there is [`Error::NoSuchDevice`], never an
/// empty set read from elsewhere.
pub(crate) fn device_counters(class: &Path, device: &str) -> Result<HwCounters> {
    let plain =
        !device.is_empty() && device != "." && device != ".." && !device.contains(['/', '\0']);
    let dir = class.join(device);
    if !plain || !dir.is_dir() {
        return Err(Error::NoSuchDevice {
            name: device.to_string(),
        });
    }
    hw_counters(&dir)
}

/// The GID type text of `ports/<port>/gid_attrs/types/<index>`.
pub(crate) fn gid_type(ibdev_path: &Path, port: u8, index: u32) -> crate::gid::GidType {
    let path = ibdev_path.join(format!("ports/{port}/gid_attrs/types/{index}"));
    match read_trimmed(&path).as_deref() {
        Ok("RoCE v2") => crate::gid::GidType::RoceV2,
        Ok("IB/RoCE v1") => crate::gid::GidType::IbRoceV1,
        _ => crate::gid::GidType::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("efa-sysfs-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn counters_of_unknown_or_non_plain_device_names_are_refused() {
        let root = scratch("names");
        let class = root.join("class/infiniband");
        fs::create_dir_all(class.join("rxe0/hw_counters")).unwrap();
        fs::write(class.join("rxe0/hw_counters/rx_pkts"), "7\n").unwrap();
        assert_eq!(
            device_counters(&class, "rxe0").unwrap().get("rx_pkts"),
            Some(7)
        );
        for bad in [
            "nope",
            "",
            ".",
            "..",
            "../../../proc/self",
            "rxe0/..",
            "a\0b",
        ] {
            assert!(
                matches!(device_counters(&class, bad), Err(Error::NoSuchDevice { ref name }) if name == bad),
                "{bad:?}"
            );
        }
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn reads_vendor_driver_and_counters() {
        let root = scratch("efa");
        let dev = root.join("class/infiniband/rdmap0s6");
        let pci = root.join("devices/pci0000:00/0000:00:06.0");
        let drv = root.join("bus/pci/drivers/efa");
        fs::create_dir_all(&pci).unwrap();
        fs::create_dir_all(&drv).unwrap();
        fs::create_dir_all(dev.join("ports/1/hw_counters")).unwrap();
        fs::create_dir_all(dev.join("hw_counters")).unwrap();
        std::os::unix::fs::symlink(&pci, dev.join("device")).unwrap();
        std::os::unix::fs::symlink(&drv, pci.join("driver")).unwrap();
        fs::write(pci.join("vendor"), "0x1d0f\n").unwrap();
        fs::write(dev.join("ports/1/hw_counters/rdma_read_bytes"), "4096\n").unwrap();
        fs::write(dev.join("ports/1/hw_counters/lifespan"), "10\n").unwrap();
        fs::write(dev.join("hw_counters/alloc_pd_err"), "3\n").unwrap();

        assert_eq!(vendor_id(&dev), Some(AMAZON_VENDOR_ID));
        assert_eq!(driver_name(&dev).as_deref(), Some("efa"));
        let c = hw_counters(&dev).unwrap();
        assert_eq!(c.port, vec![("rdma_read_bytes".to_owned(), 4096)]);
        assert_eq!(c.get("alloc_pd_err"), Some(3));
        assert_eq!(c.get("lifespan"), None);

        fs::write(dev.join("hw_counters/broken"), "n/a\n").unwrap();
        match hw_counters(&dev) {
            Err(Error::Sysfs { path, errno: 0 }) => assert!(path.ends_with("broken"), "{path}"),
            other => panic!("expected a malformed-file error, got {other:?}"),
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn missing_counter_dirs_are_empty() {
        let root = scratch("rxe");
        assert_eq!(hw_counters(&root).unwrap(), HwCounters::default());
        assert_eq!(vendor_id(&root), None);
        assert_eq!(driver_name(&root), None);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn numbers_parse_in_both_bases() {
        assert_eq!(parse_number("0x1d0f"), Some(0x1d0f));
        assert_eq!(parse_number(" 42\n"), Some(42));
        assert_eq!(parse_number("zz"), None);
    }
}
