//! Choosing the fabric: efa when an EFA device is present, else verbs when another RDMA device is, else tcp
//! towards a peer, else the software model in this process.

use crate::cli::FabricChoice;
use std::fmt;

/// A fabric the transport can run over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FabricKind {
    /// EFA, SRD queue pairs.
    Efa,
    /// Other verbs devices, RC queue pairs.
    Verbs,
    /// Software SRD model, one process.
    Sim,
    /// TCP sockets.
    Tcp,
}

impl fmt::Display for FabricKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Efa => "efa",
            Self::Verbs => "verbs",
            Self::Sim => "sim",
            Self::Tcp => "tcp",
        })
    }
}

/// An RDMA device seen on this machine.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SeenDevice {
    /// Kernel name.
    pub name: String,
    /// Whether it is an EFA device.
    pub is_efa: bool,
}

/// What the machine offers.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Environment {
    /// RDMA devices found.
    pub devices: Vec<SeenDevice>,
    /// Fabrics the transport has built in.
    pub fabrics_built: Vec<FabricKind>,
    /// Why no device could be listed (libibverbs missing, ...), when that is the case.
    pub device_error: Option<String>,
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Selection {
    /// Fabric.
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
        let v: Vec<String> = self.fabrics_built.iter().map(|f| f.to_string()).collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    }

    fn pick(
        &self,
        want_efa: bool,
        device: Option<&str>,
    ) -> Result<Option<&SeenDevice>, SelectError> {
        if let Some(name) = device {
            let known = || {
                let names = self.devices.iter().map(|d| d.name.as_str());
                SelectError::UnknownDevice(
                    name.into(),
                    known_devices(names, self.device_error.as_deref()),
                )
            };
            let d = self
                .devices
                .iter()
                .find(|d| d.name == name)
                .ok_or_else(known)?;
            return Ok((d.is_efa == want_efa).then_some(d));
        }
        Ok(self.devices.iter().find(|d| d.is_efa == want_efa))
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
        FabricChoice::Auto => {
            let mut skipped = Vec::new();
            for (fabric, want_efa) in [(FabricKind::Efa, true), (FabricKind::Verbs, false)] {
                if let Some(d) = env.pick(want_efa, device)? {
                    if env.built(fabric) {
                        return Ok(Selection {
                            fabric,
                            device: Some(d.name.clone()),
                            loopback,
                            reason: format!(
                                "auto: {} device {} found",
                                if want_efa { "EFA" } else { "verbs" },
                                d.name
                            ),
                        });
                    }
                    skipped.push(format!(
                        "{} device {} present but no {fabric} fabric in this build",
                        fabric, d.name
                    ));
                }
            }
            let why = if skipped.is_empty() {
                format!("no RDMA device found{detail}")
            } else {
                skipped.join("; ")
            };
            match peer {
                Some(_) if env.built(FabricKind::Tcp) => Ok(Selection {
                    fabric: FabricKind::Tcp,
                    device: None,
                    loopback: false,
                    reason: format!("auto: {why}; tcp to the peer"),
                }),
                None if !loopback && env.built(FabricKind::Sim) => Ok(Selection {
                    fabric: FabricKind::Sim,
                    device: None,
                    loopback: true,
                    reason: format!("auto: {why}; running both sides in this process over the software SRD model (sim)"),
                }),
                None if env.built(FabricKind::Sim) => Ok(Selection {
                    fabric: FabricKind::Sim,
                    device: None,
                    loopback: true,
                    reason: format!("auto: {why}; loopback over the software SRD model (sim)"),
                }),
                _ if env.built(FabricKind::Tcp) => Ok(Selection {
                    fabric: FabricKind::Tcp,
                    device: None,
                    loopback: peer.is_none(),
                    reason: format!("auto: {why}; tcp"),
                }),
                _ => Err(SelectError::NotBuilt(FabricKind::Tcp, env.built_list())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(devs: &[(&str, bool)]) -> Environment {
        Environment {
            devices: devs
                .iter()
                .map(|&(n, e)| SeenDevice {
                    name: n.into(),
                    is_efa: e,
                })
                .collect(),
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
