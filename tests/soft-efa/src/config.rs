//! Configuration from the environment, read once per process.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `SOFT_EFA_DEVICES` | `name=profile@ip[:port]`, comma separated | one device `softefa0` |
//! | `SOFT_EFA_PROFILE` | profile of the default device | `newest` |
//! | `SOFT_EFA_ADDR` | `ip[:port]` of the default device | `127.0.0.1` (port chosen by the kernel) |
//! | `SOFT_EFA_FAULTS` | `loss=P,reorder=P,delay_us=N,err=P,seed=N` | none |
//! | `SOFT_EFA_UNRESP_MS` | how long a packet is retried before `UNRESP_REMOTE` | 2000 |
//! | `SOFT_EFA_RNR_DELAY_US` | wait before a send that met no receive buffer is retried | 200 |
//! | `SOFT_EFA_RDMA_CORE` | the rdma-core release whose provider checks to follow (see README); 65 is master | 65 |

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use crate::profile::Profile;

/// One configured device.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Device name (`ibv_get_device_name`).
    pub name: String,
    /// Generation it acts as.
    pub profile: &'static Profile,
    /// UDP address its SRD traffic uses; port 0 lets the kernel choose.
    pub addr: SocketAddrV4,
}

/// Faults injected on every packet a device sends, and on completions.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Probability that a packet is dropped.
    pub loss: f64,
    /// Probability that a packet is held back and sent after later ones.
    pub reorder: f64,
    /// How long a held packet waits at most.
    pub delay: Duration,
    /// Probability that a work request completes with an injected error (`REMOTE_ABORT`).
    pub error: f64,
    /// Seed of the fault schedule.
    pub seed: u64,
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Devices, in `ibv_get_device_list` order.
    pub devices: Vec<DeviceConfig>,
    /// Injected faults.
    pub faults: Faults,
    /// Retry budget of one packet before the peer counts as unresponsive.
    pub unresp: Duration,
    /// Pause before a receiver-not-ready send is retried.
    pub rnr_delay: Duration,
    /// The rdma-core release whose provider behaviour is followed where releases differ.
    pub rdma_core: u32,
}

/// A configuration value that does not parse, with the variable and the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The environment variable.
    pub var: &'static str,
    /// What is wrong, with the offending text.
    pub what: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "soft-efa: {}: {}", self.var, self.what)
    }
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get` (tests pass a map).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let devices = match get("SOFT_EFA_DEVICES") {
            Some(list) => parse_devices(&list)?,
            None => vec![default_device(&get)?],
        };
        Ok(Config {
            devices,
            faults: match get("SOFT_EFA_FAULTS") {
                Some(text) => parse_faults(&text)?,
                None => Faults::default(),
            },
            unresp: Duration::from_millis(number(&get, "SOFT_EFA_UNRESP_MS", 2000)?),
            rnr_delay: Duration::from_micros(number(&get, "SOFT_EFA_RNR_DELAY_US", 200)?),
            rdma_core: match number(&get, "SOFT_EFA_RDMA_CORE", 65)? {
                v @ 44..=65 => v as u32,
                v => {
                    return Err(ConfigError {
                        var: "SOFT_EFA_RDMA_CORE",
                        what: format!("{v} is not a release soft-efa follows (44 to 65, master)"),
                    })
                }
            },
        })
    }
}

fn number(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u64,
) -> Result<u64, ConfigError> {
    match get(var) {
        None => Ok(default),
        Some(t) => t.trim().parse().map_err(|_| ConfigError {
            var,
            what: format!("{t:?} is not a whole number"),
        }),
    }
}

fn default_device(get: &impl Fn(&str) -> Option<String>) -> Result<DeviceConfig, ConfigError> {
    let profile = match get("SOFT_EFA_PROFILE") {
        Some(p) => profile(&p, "SOFT_EFA_PROFILE")?,
        None => Profile::newest(),
    };
    let addr = match get("SOFT_EFA_ADDR") {
        Some(a) => addr(&a, "SOFT_EFA_ADDR")?,
        None => SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
    };
    Ok(DeviceConfig {
        name: "softefa0".into(),
        profile,
        addr,
    })
}

fn profile(name: &str, var: &'static str) -> Result<&'static Profile, ConfigError> {
    Profile::by_name(name.trim()).ok_or_else(|| ConfigError {
        var,
        what: format!(
            "unknown profile {name:?} (known: {})",
            crate::profile::PROFILES.map(|p| p.name).join(", ")
        ),
    })
}

fn addr(text: &str, var: &'static str) -> Result<SocketAddrV4, ConfigError> {
    let text = text.trim();
    if let Ok(a) = text.parse::<SocketAddrV4>() {
        return Ok(a);
    }
    text.parse::<Ipv4Addr>()
        .map(|ip| SocketAddrV4::new(ip, 0))
        .map_err(|_| ConfigError {
            var,
            what: format!("{text:?} is not an IPv4 address with an optional port"),
        })
}

fn parse_devices(list: &str) -> Result<Vec<DeviceConfig>, ConfigError> {
    const VAR: &str = "SOFT_EFA_DEVICES";
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || ConfigError {
            var: VAR,
            what: format!("{item:?} is not name=profile@ip[:port]"),
        };
        let (name, rest) = item.split_once('=').ok_or_else(bad)?;
        let (prof, address) = rest.split_once('@').ok_or_else(bad)?;
        if name.is_empty()
            || name.len() >= 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(ConfigError {
                var: VAR,
                what: format!("device name {name:?} must be 1 to 63 letters, digits or '_'"),
            });
        }
        if out.iter().any(|d: &DeviceConfig| d.name == name) {
            return Err(ConfigError {
                var: VAR,
                what: format!("device name {name:?} appears twice"),
            });
        }
        out.push(DeviceConfig {
            name: name.into(),
            profile: profile(prof, VAR)?,
            addr: addr(address, VAR)?,
        });
    }
    Ok(out)
}

fn parse_faults(text: &str) -> Result<Faults, ConfigError> {
    const VAR: &str = "SOFT_EFA_FAULTS";
    let mut f = Faults::default();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = item.split_once('=').ok_or_else(|| ConfigError {
            var: VAR,
            what: format!("{item:?} is not key=value"),
        })?;
        let bad = |what: &str| ConfigError {
            var: VAR,
            what: format!("{k}={v:?}: {what}"),
        };
        let prob = || match v.parse::<f64>() {
            Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
            _ => Err(bad("not a probability between 0 and 1")),
        };
        match k {
            "loss" => f.loss = prob()?,
            "reorder" => f.reorder = prob()?,
            "err" => f.error = prob()?,
            "delay_us" => {
                f.delay = Duration::from_micros(v.parse().map_err(|_| bad("not microseconds"))?)
            }
            "seed" => f.seed = v.parse().map_err(|_| bad("not a whole number"))?,
            _ => {
                return Err(bad(
                    "unknown key (known: loss, reorder, delay_us, err, seed)",
                ))
            }
        }
    }
    if f.reorder > 0.0 && f.delay.is_zero() {
        f.delay = Duration::from_millis(2);
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn default_is_one_newest_device_on_loopback() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.devices.len(), 1);
        assert_eq!(c.devices[0].profile, Profile::newest());
        assert_eq!(c.devices[0].addr, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.faults, Faults::default());
    }

    #[test]
    fn devices_and_faults_parse() {
        let c = cfg(&[
            (
                "SOFT_EFA_DEVICES",
                "rdmap0=send@10.0.0.1:5000, rdmap1=efa2@10.0.0.1",
            ),
            ("SOFT_EFA_FAULTS", "loss=0.05,reorder=0.1,seed=9"),
        ])
        .unwrap();
        assert_eq!(c.devices[0].profile.name, "send");
        assert_eq!(c.devices[0].addr.port(), 5000);
        assert_eq!(c.devices[1].profile.name, "write");
        assert_eq!((c.faults.loss, c.faults.seed), (0.05, 9));
        assert_eq!(c.faults.delay, Duration::from_millis(2));
    }

    #[test]
    fn bad_values_name_the_variable_and_text() {
        let e = cfg(&[("SOFT_EFA_PROFILE", "efa9")]).unwrap_err();
        assert_eq!(e.var, "SOFT_EFA_PROFILE");
        assert!(e.what.contains("efa9"), "{e}");
        let e = cfg(&[("SOFT_EFA_FAULTS", "loss=2")]).unwrap_err();
        assert!(e.what.contains("loss"), "{e}");
        assert!(cfg(&[("SOFT_EFA_DEVICES", "a=send@x")]).is_err());
        assert!(cfg(&[("SOFT_EFA_DEVICES", "a=send@1.2.3.4,a=read@1.2.3.4")]).is_err());
        assert!(cfg(&[("SOFT_EFA_UNRESP_MS", "-1")]).is_err());
        assert!(cfg(&[("SOFT_EFA_RDMA_CORE", "30")]).is_err());
        assert_eq!(cfg(&[("SOFT_EFA_RDMA_CORE", "59")]).unwrap().rdma_core, 59);
        assert_eq!(cfg(&[]).unwrap().rdma_core, 65);
    }
}
