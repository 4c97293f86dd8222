//! Device facts for `info` and the fabric choice, read through the `efa` crate (libibverbs, efadv, sysfs).

use efa::{Context, DeviceInfo, DeviceKind, EfaCaps, GidType, LinkLayer, PortState};
use serde::Serialize;
use std::collections::BTreeMap;
use transport::fabric::auto::DeviceProbe;
use transport::fabric::efa::{Path, RailCaps, TwoSided};

/// One port of a device.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PortReport {
    /// Port number (from 1).
    pub port: u8,
    /// State (`ACTIVE`, `DOWN`, ...).
    pub state: String,
    /// Active MTU in bytes.
    pub active_mtu: Option<u32>,
    /// Largest message the port takes (`max_msg_sz`).
    pub max_msg_sz: Option<u64>,
    /// Link layer (`InfiniBand`, `Ethernet`, `Unspecified`).
    pub link_layer: String,
    /// Non-zero GIDs: (index, GID text, type).
    pub gids: Vec<GidReport>,
    /// Port-level hardware counters.
    pub hw_counters: BTreeMap<String, u64>,
}

/// One GID table entry.
#[derive(Clone, Debug, Serialize)]
pub struct GidReport {
    /// Index (perftest -x).
    pub index: u32,
    /// The GID, IPv6 notation.
    pub gid: String,
    /// `IB/RoCE v1`, `RoCE v2`, or unknown.
    pub kind: String,
}

/// EFA direct-verbs capabilities and limits.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EfaReport {
    /// Capability names present (RDMA_READ, RDMA_WRITE, RNR_RETRY, CQ_WITH_SGID, ...).
    pub caps: Vec<String>,
    /// Named limits (max_sq_wr, max_rq_wr, max_sq_sge, max_rq_sge, inline_buf_size, max_rdma_size, ...).
    pub limits: BTreeMap<String, u64>,
    /// How the transport's `efa` fabric carries READ and WRITE from this device to a peer with every
    /// RDMA operation (`rdma`, or `two-sided` over SEND/RECV where the device lacks it).
    pub transport_path: String,
}

/// One device.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeviceReport {
    /// Kernel name.
    pub name: String,
    /// Whether it is EFA.
    pub is_efa: bool,
    /// Kind (`efa`, `soft-roce`, `other`).
    pub kind: String,
    /// Kernel driver bound to it.
    pub driver: Option<String>,
    /// Firmware version.
    pub fw_ver: Option<String>,
    /// Node GUID.
    pub node_guid: Option<String>,
    /// Device limits from `ibv_query_device`.
    pub limits: BTreeMap<String, u64>,
    /// Ports.
    pub ports: Vec<PortReport>,
    /// EFA capabilities, for EFA devices.
    pub efa: Option<EfaReport>,
    /// Device-level hardware counters.
    pub hw_counters: BTreeMap<String, u64>,
    /// What could not be read, if anything.
    pub errors: Vec<String>,
}

/// RDMA devices on this machine, or why they cannot be listed (libibverbs missing, ...).
pub fn probe() -> Result<DeviceProbe, String> {
    DeviceProbe::from_verbs().map_err(|e| {
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            text.push_str(&format!(": {c}"));
            cause = c.source();
        }
        text
    })
}

/// The EFA kernel driver's version, when the module is loaded.
pub fn efa_driver_version() -> Option<String> {
    efa::efa_driver_version()
}

fn state_name(s: PortState) -> String {
    match s {
        PortState::Nop => "NOP".into(),
        PortState::Down => "DOWN".into(),
        PortState::Init => "INIT".into(),
        PortState::Armed => "ARMED".into(),
        PortState::Active => "ACTIVE".into(),
        PortState::ActiveDefer => "ACTIVE_DEFER".into(),
        PortState::Unknown(v) => format!("UNKNOWN({v})"),
    }
}

fn link_name(l: LinkLayer) -> String {
    match l {
        LinkLayer::Unspecified => "Unspecified".into(),
        LinkLayer::Infiniband => "InfiniBand".into(),
        LinkLayer::Ethernet => "Ethernet".into(),
        LinkLayer::Unknown(v) => format!("unknown({v})"),
    }
}

fn gid_kind(t: GidType) -> &'static str {
    match t {
        GidType::IbRoceV1 => "IB/RoCE v1",
        GidType::RoceV2 => "RoCE v2",
        GidType::Unknown => "unknown",
    }
}

/// Names of the capability bits that are set (unknown bits as hex).
pub fn cap_names(caps: EfaCaps) -> Vec<String> {
    let mut v: Vec<String> = caps.iter_names().map(|(n, _)| n.to_string()).collect();
    if caps.unknown_bits() != 0 {
        v.push(format!("unknown({:#x})", caps.unknown_bits()));
    }
    v
}

fn describe(info: &DeviceInfo) -> DeviceReport {
    let mut d = DeviceReport {
        name: info.name.clone(),
        is_efa: info.is_efa(),
        kind: match info.kind {
            DeviceKind::Efa => "efa",
            DeviceKind::SoftRoce => "soft-roce",
            DeviceKind::Other => "other",
        }
        .into(),
        driver: info.driver.clone(),
        node_guid: Some(format!("{:016x}", info.guid)),
        ..Default::default()
    };
    match info.hw_counters() {
        Ok(c) => d.hw_counters = c.device.into_iter().collect(),
        Err(e) => d.errors.push(format!("hw_counters: {e}")),
    }
    let port_counters: BTreeMap<String, u64> = info
        .hw_counters()
        .map(|c| c.port.into_iter().collect())
        .unwrap_or_default();
    let ctx = match Context::open(&info.name) {
        Ok(c) => c,
        Err(e) => {
            d.errors.push(format!("opening the device: {e}"));
            return d;
        }
    };
    fill_from_context(&mut d, &ctx, port_counters);
    d
}

fn fill_from_context(d: &mut DeviceReport, ctx: &Context, port_counters: BTreeMap<String, u64>) {
    let a = ctx.device_attr();
    d.fw_ver = Some(a.fw_ver.clone()).filter(|s| !s.is_empty());
    for (k, v) in [
        ("vendor_id", a.vendor_id as u64),
        ("vendor_part_id", a.vendor_part_id as u64),
        ("max_qp", a.max_qp as u64),
        ("max_qp_wr", a.max_qp_wr as u64),
        ("max_sge", a.max_sge as u64),
        ("max_cq", a.max_cq as u64),
        ("max_cqe", a.max_cqe as u64),
        ("max_mr", a.max_mr as u64),
        ("max_mr_size", a.max_mr_size),
        ("max_pd", a.max_pd as u64),
        ("max_ah", a.max_ah as u64),
        ("phys_port_cnt", a.phys_port_cnt as u64),
    ] {
        d.limits.insert(k.to_string(), v);
    }
    for port in 1..=a.phys_port_cnt.max(1) {
        let mut p = PortReport {
            port,
            ..Default::default()
        };
        match ctx.query_port(port) {
            Ok(attr) => {
                p.state = state_name(attr.state);
                p.active_mtu = Some(attr.active_mtu.bytes()).filter(|&b| b > 0);
                p.max_msg_sz = Some(attr.max_msg_sz as u64);
                p.link_layer = link_name(attr.link_layer);
            }
            Err(e) => d.errors.push(format!("port {port}: {e}")),
        }
        match ctx.gid_table(port) {
            Ok(t) => {
                p.gids = t
                    .iter()
                    .filter(|g| !g.gid.is_zero())
                    .map(|g| GidReport {
                        index: g.index,
                        gid: g.gid.to_string(),
                        kind: gid_kind(g.gid_type).into(),
                    })
                    .collect()
            }
            Err(e) => d.errors.push(format!("port {port} GIDs: {e}")),
        }
        if port == 1 {
            p.hw_counters = port_counters.clone();
        }
        d.ports.push(p);
    }
    if let Some(e) = ctx.efa_attr() {
        let mut limits = BTreeMap::new();
        for (k, v) in [
            ("max_sq_wr", e.max_sq_wr as u64),
            ("max_rq_wr", e.max_rq_wr as u64),
            ("max_sq_sge", e.max_sq_sge as u64),
            ("max_rq_sge", e.max_rq_sge as u64),
            ("inline_buf_size", e.inline_buf_size as u64),
            ("inline_buf_size_ex", e.inline_buf_size_ex as u64),
            ("max_rdma_size", e.max_rdma_size as u64),
        ] {
            limits.insert(k.to_string(), v);
        }
        d.efa = Some(EfaReport {
            caps: cap_names(e.caps),
            limits,
            transport_path: transport_path(&RailCaps::from_device(ctx.name(), e, 0)),
        });
    } else if d.is_efa {
        d.errors
            .push("efadv_query_device gave nothing (libefa missing or too old?)".into());
    }
}

/// `READ <path>, WRITE <path>` of the `efa` fabric on a device with `caps`, towards a peer that has
/// every RDMA operation.
fn transport_path(caps: &RailCaps) -> String {
    let name = |write: bool| match caps.path_to_full_peer(write, TwoSided::Fallback) {
        Path::Hardware => "rdma",
        Path::TwoSided => "two-sided (SEND/RECV)",
    };
    format!("READ {}, WRITE {}", name(false), name(true))
}

/// Full descriptions of every device (empty when none can be listed).
pub fn describe_all() -> Vec<DeviceReport> {
    efa::devices()
        .map(|l| l.iter().map(describe).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_path_follows_the_rdma_bits() {
        let caps = |read, write| RailCaps {
            device: "d".into(),
            read,
            write,
            max_rdma: 1 << 30,
            max_msg: 8928,
            max_sq_wr: 512,
            rnr_retry: true,
        };
        assert_eq!(transport_path(&caps(true, true)), "READ rdma, WRITE rdma");
        assert_eq!(
            transport_path(&caps(true, false)),
            "READ rdma, WRITE two-sided (SEND/RECV)"
        );
        assert_eq!(
            transport_path(&caps(false, false)),
            "READ two-sided (SEND/RECV), WRITE two-sided (SEND/RECV)"
        );
    }

    #[test]
    fn capability_names_include_unknown_bits() {
        let caps = EfaCaps::RDMA_READ | EfaCaps::RDMA_WRITE | EfaCaps::from_bits_retain(1 << 20);
        let names = cap_names(caps);
        assert!(names.contains(&"RDMA_READ".to_string()), "{names:?}");
        assert!(names.contains(&"RDMA_WRITE".to_string()), "{names:?}");
        assert!(
            names.iter().any(|n| n.starts_with("unknown(0x100000")),
            "{names:?}"
        );
    }

    #[test]
    fn probing_never_panics_and_agrees_with_the_report() {
        // On a machine without libibverbs or devices this is an error or an empty list, never a crash.
        let seen = probe().unwrap_or_default();
        let described = describe_all();
        assert_eq!(seen.devices.len(), described.len());
        for (s, d) in seen.devices.iter().zip(&described) {
            assert_eq!((&s.name, s.is_efa), (&d.name, d.is_efa));
        }
    }
}
