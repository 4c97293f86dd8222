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

impl std::str::FromStr for FabricKind {
    type Err = UnknownFabric;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        FabricKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| UnknownFabric(name.to_owned()))
    }
}

/// A fabric name that is none of [`FabricKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown fabric {0:?} (expected efa, verbs, tcp or sim)")]
pub struct UnknownFabric(pub String);

impl FabricKind {
    /// Every fabric, in the order [`select`] prefers them between processes.
    pub const ALL: [FabricKind; 4] = [
        FabricKind::Efa,
        FabricKind::Verbs,
        FabricKind::Tcp,
        FabricKind::Sim,
    ];

    /// The fabrics this build of the crate has: `efa` and `verbs` need the `rdma` feature.
    pub fn built() -> &'static [FabricKind] {
        if cfg!(feature = "rdma") {
            &FabricKind::ALL
        } else {
            &[FabricKind::Tcp, FabricKind::Sim]
        }
    }
}

/// One RDMA device found by a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbedDevice {
    /// Device name (`efa_0`, `rxe0`, `mlx5_1`).
    pub name: String,
    /// Whether it is an EFA device (any other is a generic verbs device); the `efa` crate's
    /// `DeviceKind` tells more where the `rdma` feature is on.
    pub is_efa: bool,
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
                    let is_efa = name.starts_with("efa");
                    ProbedDevice { name, is_efa }
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
                let is_efa = driver.as_deref() == Some("efa") || name.starts_with("efa");
                Some(ProbedDevice { name, is_efa })
            })
            .collect();
        devices.sort_by(|a, b| a.name.cmp(&b.name));
        DeviceProbe { devices }
    }

    /// The devices libibverbs lists, told apart as the `efa` crate does (driver, vendor id,
    /// efadv).
    ///
    /// # Errors
    ///
    /// The [`efa::Error`] when the devices cannot be listed (libibverbs missing).
    #[cfg(feature = "rdma")]
    pub fn from_verbs() -> Result<DeviceProbe, ::efa::Error> {
        let devices = ::efa::devices()?
            .into_iter()
            .map(|d| ProbedDevice {
                is_efa: d.is_efa(),
                name: d.name,
            })
            .collect();
        Ok(DeviceProbe { devices })
    }

    /// The devices of this machine: as libibverbs lists them where the `rdma` feature is on and
    /// the library loads (`from_verbs`), else from `/sys/class/infiniband`.
    pub fn system() -> DeviceProbe {
        #[cfg(feature = "rdma")]
        if let Ok(probe) = Self::from_verbs() {
            return probe;
        }
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

/// Picks the fabric for `probe` and `scope` among the fabrics of this build
/// ([`FabricKind::built`]) and logs the choice.
pub fn select(probe: &DeviceProbe, scope: Scope) -> SelectedFabric {
    select_among(probe, scope, FabricKind::built())
}

/// [`select`] among the fabrics `built`: `sim` in one process; else `efa` with an EFA device,
/// else `verbs` with another verbs device, else `tcp`. A device whose fabric is not built is
/// passed over and named in the reason.
pub fn select_among(probe: &DeviceProbe, scope: Scope, built: &[FabricKind]) -> SelectedFabric {
    let selected = if scope == Scope::InProcess {
        SelectedFabric {
            kind: FabricKind::Sim,
            devices: Vec::new(),
            reason: "all engines are in one process".into(),
        }
    } else {
        cross_process(probe, built)
    };
    log::info!("fabric: selected {} ({})", selected.kind, selected.reason);
    selected
}

fn cross_process(probe: &DeviceProbe, built: &[FabricKind]) -> SelectedFabric {
    let of = |efa: bool| -> Vec<String> {
        probe
            .devices
            .iter()
            .filter(|d| d.is_efa == efa)
            .map(|d| d.name.clone())
            .collect()
    };
    let mut passed_over = Vec::new();
    for (kind, efa, what) in [
        (FabricKind::Efa, true, "EFA"),
        (FabricKind::Verbs, false, "verbs"),
    ] {
        let devices = of(efa);
        if devices.is_empty() {
            continue;
        }
        if built.contains(&kind) {
            let mut reason = passed_over.join("; ");
            if !reason.is_empty() {
                reason.push_str("; ");
            }
            reason.push_str(&format!("{what} device(s) present: {}", devices.join(", ")));
            return SelectedFabric {
                kind,
                reason,
                devices,
            };
        }
        passed_over.push(format!(
            "{what} device(s) {} present but no {kind} fabric in this build",
            devices.join(", ")
        ));
    }
    SelectedFabric {
        kind: FabricKind::Tcp,
        devices: Vec::new(),
        reason: if passed_over.is_empty() {
            "no RDMA device found".into()
        } else {
            passed_over.join("; ")
        },
    }
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
    fn devices_of_fabrics_not_built_are_passed_over_and_named() {
        let probe = DeviceProbe::from_names(["efa_0", "rxe0"]);
        let built = [FabricKind::Tcp, FabricKind::Sim];
        let s = select_among(&probe, Scope::CrossProcess, &built);
        assert_eq!(s.kind, FabricKind::Tcp);
        assert!(
            s.reason.contains("efa_0") && s.reason.contains("rxe0"),
            "{}",
            s.reason
        );
        let s = select_among(&probe, Scope::CrossProcess, &[FabricKind::Verbs]);
        assert_eq!(
            (s.kind, s.devices.as_slice()),
            (FabricKind::Verbs, &["rxe0".to_owned()][..])
        );
        assert!(s.reason.contains("efa_0"), "{}", s.reason);
    }

    #[test]
    fn names_parse_back_to_kinds() {
        for k in FabricKind::ALL {
            assert_eq!(k.name().parse::<FabricKind>(), Ok(k));
        }
        assert_eq!(
            "rdma".parse::<FabricKind>(),
            Err(UnknownFabric("rdma".into()))
        );
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
            .map(|d| (d.name.as_str(), d.is_efa))
            .collect();
        assert_eq!(kinds, [("rdmap0s6", true), ("rxe0", false)]);
        assert!(DeviceProbe::from_sysfs(&root.join("missing"))
            .devices
            .is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
