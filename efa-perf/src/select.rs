//! Choosing the fabric: the transport's policy ([`transport::fabric::auto`]: efa when an EFA
//! device is present, else verbs when another verbs device is, else tcp), with the command
//! line's overrides: `--fabric`, `--device`, and, with no peer, both sides in this process over
//! the software model instead of tcp.

use crate::cli::FabricChoice;
pub use transport::fabric::auto::FabricKind;
use transport::fabric::auto::{self, DeviceProbe, ProbedDevice, Scope};

/// What the machine offers.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    /// RDMA devices found.
    pub probe: DeviceProbe,
    /// Fabrics the transport has built in.
    pub fabrics_built: Vec<FabricKind>,
    /// Why no device could be listed (libibverbs missing, ...), when that is the case.
    pub device_error: Option<String>,
}

/// Writes a [`FabricKind`] by its name (`efa`, `verbs`, `tcp`, `sim`).
fn kind_name<S: serde::Serializer>(kind: &FabricKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(kind.name())
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Selection {
    /// Fabric.
    #[serde(serialize_with = "kind_name")]
    pub fabric: FabricKind,
    /// Device to open, for efa and verbs.
    pub device: Option<String>,
    /// Both sides in this process.
    pub loopback: bool,
    /// Why, in a sentence.
    pub reason: String,
}

/// Why a requested fabric cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectError {
    /// No device of the wanted kind.
    #[error(
        "--fabric {fabric}: no {what} device found{detail}; run `efa-perf info` for what to check"
    )]
    NoDevice {
        /// Requested fabric.
        fabric: FabricKind,
        /// What kind of device.
        what: &'static str,
        /// More detail.
        detail: String,
    },
    /// The transport was built without this fabric.
    #[error("--fabric {0}: the transport has no {0} fabric in this build (built: {1})")]
    NotBuilt(FabricKind, String),
    /// The named device does not exist; the second field says what does (see [`known_devices`]).
    #[error("device '{0}' not found: {1}")]
    UnknownDevice(String, String),
    /// sim cannot reach another process.
    #[error("--fabric sim runs both sides in this process; it cannot reach peer '{0}' (use tcp, efa or verbs)")]
    SimWithPeer(String),
}

/// The devices there are, for a "not found" message: their names, or why there are none.
pub fn known_devices<'a>(names: impl IntoIterator<Item = &'a str>, error: Option<&str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    match (names.is_empty(), error) {
        (false, _) => format!("the devices are {}", names.join(", ")),
        (true, Some(e)) => format!("no RDMA device could be listed ({e})"),
        (true, None) => {
            "this machine has no RDMA device (`efa-perf info` says what to check)".into()
        }
    }
}

impl Environment {
    fn built(&self, f: FabricKind) -> bool {
        self.fabrics_built.contains(&f)
    }

    fn built_list(&self) -> String {
        let v: Vec<&str> = self.fabrics_built.iter().map(|f| f.name()).collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    }

    /// `device`, refused when no device has that name.
    fn named(&self, name: &str) -> Result<&ProbedDevice, SelectError> {
        self.probe
            .devices
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| {
                let names = self.probe.devices.iter().map(|d| d.name.as_str());
                SelectError::UnknownDevice(
                    name.into(),
                    known_devices(names, self.device_error.as_deref()),
                )
            })
    }

    /// The first device of the kind wanted (EFA or not), or `device` when it is of that kind.
    fn pick(
        &self,
        want_efa: bool,
        device: Option<&str>,
    ) -> Result<Option<&ProbedDevice>, SelectError> {
        match device {
            Some(name) => Ok(Some(self.named(name)?).filter(|d| d.is_efa == want_efa)),
            None => Ok(self.probe.devices.iter().find(|d| d.is_efa == want_efa)),
        }
    }
}

/// Decides the fabric for a test.
pub fn select(
    choice: FabricChoice,
    peer: Option<&str>,
    loopback: bool,
    device: Option<&str>,
    env: &Environment,
) -> Result<Selection, SelectError> {
    let detail = env
        .device_error
        .as_ref()
        .map(|e| format!(" ({e})"))
        .unwrap_or_default();
    let explicit = |fabric: FabricKind| -> Result<Selection, SelectError> {
        if !env.built(fabric) {
            return Err(SelectError::NotBuilt(fabric, env.built_list()));
        }
        match fabric {
            FabricKind::Efa | FabricKind::Verbs => {
                let want_efa = fabric == FabricKind::Efa;
                let what = if want_efa { "EFA" } else { "non-EFA verbs" };
                let d = env.pick(want_efa, device)?.ok_or_else(|| SelectError::NoDevice {
                    fabric,
                    what,
                    detail: detail.clone(),
                })?;
                Ok(Selection {
                    fabric,
                    device: Some(d.name.clone()),
                    loopback,
                    reason: format!("requested with --fabric; device {}", d.name),
                })
            }
            FabricKind::Sim => match peer {
                Some(p) => Err(SelectError::SimWithPeer(p.into())),
                None => Ok(Selection {
                    fabric,
                    device: None,
                    loopback: true,
                    reason: "requested with --fabric; the software SRD model runs both sides in this process".into(),
                }),
            },
            FabricKind::Tcp => Ok(Selection {
                fabric,
                device: None,
                loopback,
                reason: "requested with --fabric".into(),
            }),
        }
    };
    match choice {
        FabricChoice::Efa => explicit(FabricKind::Efa),
        FabricChoice::Verbs => explicit(FabricKind::Verbs),
        FabricChoice::Sim => explicit(FabricKind::Sim),
        FabricChoice::Tcp => explicit(FabricKind::Tcp),
        FabricChoice::Auto => auto_select(peer, loopback, device, env, &detail),
    }
}

/// The transport's choice between processes (restricted to `device` when one is named); where
/// it falls back to tcp without a peer, both sides run in this process over sim instead.
fn auto_select(
    peer: Option<&str>,
    loopback: bool,
    device: Option<&str>,
    env: &Environment,
    detail: &str,
) -> Result<Selection, SelectError> {
    let probe = match device {
        Some(name) => DeviceProbe {
            devices: vec![env.named(name)?.clone()],
        },
        None => env.probe.clone(),
    };
    let chosen = auto::select_among(&probe, Scope::CrossProcess, &env.fabrics_built);
    if let Some(d) = chosen.devices.first() {
        return Ok(Selection {
            fabric: chosen.kind,
            device: Some(d.clone()),
            loopback,
            reason: format!("auto: {}", chosen.reason),
        });
    }
    let why = format!("{}{detail}", chosen.reason);
    let (fabric, loopback, how) = match peer {
        Some(_) => (FabricKind::Tcp, false, "tcp to the peer"),
        None if !loopback => (
            FabricKind::Sim,
            true,
            "running both sides in this process over the software SRD model (sim)",
        ),
        None => (
            FabricKind::Sim,
            true,
            "loopback over the software SRD model (sim)",
        ),
    };
    let (fabric, loopback, how) = if env.built(fabric) {
        (fabric, loopback, how)
    } else {
        (FabricKind::Tcp, peer.is_none(), "tcp")
    };
    if !env.built(fabric) {
        return Err(SelectError::NotBuilt(fabric, env.built_list()));
    }
    Ok(Selection {
        fabric,
        device: None,
        loopback,
        reason: format!("auto: {why}; {how}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(devs: &[(&str, bool)]) -> Environment {
        Environment {
            probe: DeviceProbe {
                devices: devs
                    .iter()
                    .map(|&(n, e)| ProbedDevice {
                        name: n.into(),
                        is_efa: e,
                    })
                    .collect(),
            },
            fabrics_built: vec![
                FabricKind::Efa,
                FabricKind::Verbs,
                FabricKind::Sim,
                FabricKind::Tcp,
            ],
            device_error: None,
        }
    }

    #[test]
    fn auto_prefers_efa_then_verbs_then_sim_or_tcp() {
        let e = env(&[("rxe0", false), ("efa_0", true)]);
        let s = select(FabricChoice::Auto, None, false, None, &e).unwrap();
        assert_eq!(
            (s.fabric, s.device.as_deref(), s.loopback),
            (FabricKind::Efa, Some("efa_0"), false)
        );
        let s = select(
            FabricChoice::Auto,
            Some("h"),
            false,
            None,
            &env(&[("rxe0", false)]),
        )
        .unwrap();
        assert_eq!(s.fabric, FabricKind::Verbs);
        let s = select(FabricChoice::Auto, None, false, None, &env(&[])).unwrap();
        assert_eq!((s.fabric, s.loopback), (FabricKind::Sim, true));
        assert!(s.reason.contains("no RDMA device"), "{}", s.reason);
        let s = select(FabricChoice::Auto, Some("h"), false, None, &env(&[])).unwrap();
        assert_eq!((s.fabric, s.loopback), (FabricKind::Tcp, false));
    }

    #[test]
    fn device_present_but_fabric_not_built_falls_back_and_says_so() {
        let mut e = env(&[("efa_0", true)]);
        e.fabrics_built = vec![FabricKind::Sim, FabricKind::Tcp];
        let s = select(FabricChoice::Auto, None, false, None, &e).unwrap();
        assert_eq!(s.fabric, FabricKind::Sim);
        assert!(s.reason.contains("efa_0"), "{}", s.reason);
        assert_eq!(
            select(FabricChoice::Efa, None, false, None, &e).unwrap_err(),
            SelectError::NotBuilt(FabricKind::Efa, "sim, tcp".into())
        );
    }

    #[test]
    fn explicit_choices_are_checked() {
        let e = env(&[("rxe0", false)]);
        assert!(matches!(
            select(FabricChoice::Efa, None, false, None, &e),
            Err(SelectError::NoDevice { .. })
        ));
        assert!(matches!(
            select(FabricChoice::Verbs, None, false, Some("mlx5_0"), &e),
            Err(SelectError::UnknownDevice(..))
        ));
        assert!(matches!(
            select(FabricChoice::Sim, Some("h"), false, None, &e),
            Err(SelectError::SimWithPeer(_))
        ));
        let s = select(FabricChoice::Tcp, None, true, None, &e).unwrap();
        assert_eq!((s.fabric, s.loopback), (FabricKind::Tcp, true));
    }
}
