//! Choosing a fabric from the devices present: `efa` when an EFA device is there, else `verbs`
//! when another verbs device is, else `tcp` between processes; `sim` for engines that live in
//! one process.
//!
//! The choice is a pure function of a [`DeviceProbe`] (so it is testable without hardware),
//! is logged, and is returned as a [`SelectedFabric`] the caller can show or record.
//!
//! ```
//! use transport::fabric::auto::{select, DeviceProbe, FabricKind, Scope};
//!
//! let probe = DeviceProbe::from_names(["mlx5_0", "efa_0"]);
//! assert_eq!(select(&probe, Scope::CrossProcess).kind, FabricKind::Efa);
//! assert_eq!(select(&DeviceProbe::default(), Scope::CrossProcess).kind, FabricKind::Tcp);
//! ```

use std::fmt;
use std::path::Path;

/// The fabrics an engine can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FabricKind {
    /// AWS EFA (SRD).
    Efa,
    /// A non-EFA verbs device (RC), such as Soft-RoCE or ConnectX.
    Verbs,
    /// Real sockets.
    Tcp,
    /// The in-process model.
    Sim,
}

impl FabricKind {
    /// The fabric's name as written in descriptors.
    pub const fn name(self) -> &'static str {
        match self {
            FabricKind::Efa => "efa",
            FabricKind::Verbs => "verbs",
            FabricKind::Tcp => "tcp",
            FabricKind::Sim => "sim",
        }
    }
}

impl fmt::Display for FabricKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Kind of a probed RDMA device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// An EFA device.
    Efa,
    /// Any other verbs device.
    Verbs,
}

/// One RDMA device found by a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbedDevice {
    /// Device name (`efa_0`, `rxe0`, `mlx5_1`).
    pub name: String,
    /// Its kind.
    pub kind: DeviceKind,
}

/// The devices a probe found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceProbe {
    /// Devices in probe order.
    pub devices: Vec<ProbedDevice>,
}

impl DeviceProbe {
    /// A probe result from device names: names starting with `efa` are EFA devices, the
    /// others generic verbs devices (the naming the kernel drivers use).
    pub fn from_names<I, S>(names: I) -> DeviceProbe
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        DeviceProbe {
            devices: names
                .into_iter()
                .map(|n| {
                    let name = n.into();
                    let kind = if name.starts_with("efa") {
                        DeviceKind::Efa
                    } else {
                        DeviceKind::Verbs
                    };
                    ProbedDevice { name, kind }
                })
                .collect(),
        }
    }

    /// Probes the devices the kernel exposes under `root` (normally `/sys/class/infiniband`):
    /// a device is EFA when its driver is `efa` or its name says so. A missing directory
    /// means no devices.
    pub fn from_sysfs(root: &Path) -> DeviceProbe {
        let Ok(dir) = std::fs::read_dir(root) else {
            return DeviceProbe::default();
        };
        let mut devices: Vec<ProbedDevice> = dir
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let driver = std::fs::read_link(e.path().join("device/driver"))
                    .ok()
                    .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()));
                let efa = driver.as_deref() == Some("efa") || name.starts_with("efa");
                let kind = if efa {
                    DeviceKind::Efa
                } else {
                    DeviceKind::Verbs
                };
                Some(ProbedDevice { name, kind })
            })
            .collect();
        devices.sort_by(|a, b| a.name.cmp(&b.name));
        DeviceProbe { devices }
    }

    /// Probes `/sys/class/infiniband`.
    pub fn system() -> DeviceProbe {
        Self::from_sysfs(Path::new("/sys/class/infiniband"))
    }
}

/// Whether the engines that must talk live in one process or in several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// All engines are in this process: the `sim` model serves.
    InProcess,
    /// Peers are other processes or hosts.
    CrossProcess,
}

/// The outcome of [`select`]: which fabric, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedFabric {
    /// The fabric to use.
    pub kind: FabricKind,
    /// Devices of that kind, in probe order (empty for `tcp` and `sim`).
    pub devices: Vec<String>,
    /// Why, in words (also logged).
    pub reason: String,
}

/// Picks the fabric for `probe` and `scope` and logs the choice.
pub fn select(probe: &DeviceProbe, scope: Scope) -> SelectedFabric {
    let of = |kind: DeviceKind| -> Vec<String> {
        probe
            .devices
            .iter()
            .filter(|d| d.kind == kind)
            .map(|d| d.name.clone())
            .collect()
    };
    let (efa, verbs) = (of(DeviceKind::Efa), of(DeviceKind::Verbs));
    let selected = if scope == Scope::InProcess {
        SelectedFabric {
            kind: FabricKind::Sim,
            devices: Vec::new(),
            reason: "all engines are in one process".into(),
        }
    } else if !efa.is_empty() {
        SelectedFabric {
            kind: FabricKind::Efa,
            reason: format!("EFA device(s) present: {}", efa.join(", ")),
            devices: efa,
        }
    } else if !verbs.is_empty() {
        SelectedFabric {
            kind: FabricKind::Verbs,
            reason: format!(
                "no EFA device; verbs device(s) present: {}",
                verbs.join(", ")
            ),
            devices: verbs,
        }
    } else {
        SelectedFabric {
            kind: FabricKind::Tcp,
            devices: Vec::new(),
            reason: "no RDMA device found".into(),
        }
    };
    log::info!("fabric: selected {} ({})", selected.kind, selected.reason);
    selected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_efa_then_verbs_then_tcp() {
        let s = select(
            &DeviceProbe::from_names(["rxe0", "efa_1", "efa_0"]),
            Scope::CrossProcess,
        );
        assert_eq!(s.kind, FabricKind::Efa);
        assert_eq!(s.devices, ["efa_1", "efa_0"]);
        let s = select(&DeviceProbe::from_names(["rxe0"]), Scope::CrossProcess);
        assert_eq!((s.kind, s.devices.len()), (FabricKind::Verbs, 1));
        let s = select(&DeviceProbe::default(), Scope::CrossProcess);
        assert_eq!(s.kind, FabricKind::Tcp);
        let s = select(&DeviceProbe::from_names(["efa_0"]), Scope::InProcess);
        assert_eq!(s.kind, FabricKind::Sim);
    }

    #[test]
    fn sysfs_probe_reads_driver_links() {
        let root = std::env::temp_dir().join(format!("auto-probe-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("rdmap0s6/device")).unwrap();
        std::fs::create_dir_all(root.join("drivers/efa")).unwrap();
        std::os::unix::fs::symlink(
            root.join("drivers/efa"),
            root.join("rdmap0s6/device/driver"),
        )
        .unwrap();
        std::fs::create_dir_all(root.join("rxe0")).unwrap();
        let probe = DeviceProbe::from_sysfs(&root);
        let kinds: Vec<_> = probe
            .devices
            .iter()
            .filter(|d| d.name != "drivers")
            .map(|d| (d.name.as_str(), d.kind))
            .collect();
        assert_eq!(
            kinds,
            [("rdmap0s6", DeviceKind::Efa), ("rxe0", DeviceKind::Verbs)]
        );
        assert!(DeviceProbe::from_sysfs(&root.join("missing"))
            .devices
            .is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
