//! `info`: what RDMA devices this machine has, what they can do, and which fabric the transport would pick.

use crate::cli::{FabricChoice, InfoArgs};
use crate::devices::{DeviceReport, PortReport};
use crate::select::{self, Environment, Selection};
use serde::Serialize;

/// The whole `info` report.
#[derive(Clone, Debug, Serialize)]
pub struct InfoReport {
    /// Schema tag.
    pub schema: &'static str,
    /// EFA kernel driver version (`/sys/module/efa/version`).
    pub efa_driver_version: Option<String>,
    /// Devices.
    pub devices: Vec<DeviceReport>,
    /// Why no device could be listed, when that is so.
    pub device_error: Option<String>,
    /// Fabrics the transport has built in.
    pub fabrics_built: Vec<String>,
    /// What the transport's selection ([`transport::fabric::auto`]) picks between processes, and
    /// why: the choice `auto` makes towards a peer.
    pub transport_selection: String,
    /// What `auto` picks with no peer.
    pub selection_without_peer: Result<Selection, String>,
    /// What `auto` picks towards a peer.
    pub selection_with_peer: Result<Selection, String>,
    /// What to check when something is missing.
    pub hints: Vec<String>,
}

/// What to check when no EFA device shows up.
pub fn hints(
    report_devices: &[DeviceReport],
    device_error: Option<&str>,
    driver_version: Option<&str>,
) -> Vec<String> {
    let mut h = Vec::new();
    if report_devices.iter().any(|d| d.is_efa) {
        for d in report_devices.iter().filter(|d| d.is_efa) {
            for p in d.ports.iter().filter(|p| p.state != "ACTIVE") {
                h.push(format!(
                    "{} port {} is {}: check the ENI is attached and up",
                    d.name, p.port, p.state
                ));
            }
        }
        h.push("EFA traffic needs a security group that allows all traffic to and from itself (inbound and outbound)".into());
        return h;
    }
    if let Some(e) = device_error {
        h.push(format!("devices could not be listed: {e}"));
    }
    if driver_version.is_none() {
        h.push("EFA kernel driver not loaded: `lsmod | grep efa` shows nothing; install the AWS EFA driver (efa installer) or `modprobe efa`".into());
    }
    h.push("libibverbs and libefa must be installed (Debian: ibverbs-providers, libibverbs1; AWS: the EFA installer); `ibv_devices` should list the device".into());
    h.push("the instance type must support EFA (e.g. c5n.18xlarge, p4d, p5, hpc6a, m6i.metal) and the ENI must be created with interface type 'efa'".into());
    h.push("the security group must allow all traffic to and from itself, or SRD peers cannot reach each other".into());
    if !report_devices.is_empty() {
        h.push("non-EFA verbs devices are used by the verbs fabric (RC)".into());
    }
    h
}

/// The environment the fabric selection sees.
pub fn environment() -> Environment {
    let (probe, device_error) = match crate::devices::probe() {
        Ok(p) => (p, None),
        Err(e) => (Default::default(), Some(e)),
    };
    Environment {
        probe,
        fabrics_built: crate::fabrics::built(),
        device_error,
    }
}

/// The transport's own choice between processes ([`transport::fabric::auto`]), and why: what
/// `auto, towards a peer` runs.
fn transport_selection(env: &Environment) -> String {
    use transport::fabric::auto::{select_among, Scope};
    let s = select_among(&env.probe, Scope::CrossProcess, &env.fabrics_built);
    format!("{} ({})", s.kind, s.reason)
}

fn render(r: &InfoReport) -> String {
    let mut s = String::new();
    let line = crate::report::RESULT_LINE;
    s.push_str(&format!("{line}\n efa-perf info\n{line}\n"));
    s.push_str(&format!(
        " EFA driver version : {}\n",
        r.efa_driver_version
            .as_deref()
            .unwrap_or("(not loaded: /sys/module/efa/version missing)")
    ));
    if r.devices.is_empty() {
        s.push_str(" RDMA devices       : none found\n");
    }
    for d in &r.devices {
        render_device(&mut s, d);
    }
    render_selection(&mut s, r);
    if !r.hints.is_empty() {
        s.push_str(&format!("{line}\n what to check:\n"));
        for h in &r.hints {
            s.push_str(&format!("  - {h}\n"));
        }
    }
    s.push_str(line);
    s.push('\n');
    s
}

/// One device's section: identity, limits, ports, efadv facts, counters.
fn render_device(s: &mut String, d: &DeviceReport) {
    let line = crate::report::RESULT_LINE;
    s.push_str(&format!(
        "{line}\n device {}  ({}{})\n",
        d.name,
        d.kind,
        if d.is_efa { ", EFA" } else { "" }
    ));
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    s.push_str(&format!("   driver           : {}\n", opt(&d.driver)));
    s.push_str(&format!("   firmware         : {}\n", opt(&d.fw_ver)));
    s.push_str(&format!("   node GUID        : {}\n", opt(&d.node_guid)));
    for (k, v) in &d.limits {
        s.push_str(&format!("   {k:<17}: {v}\n"));
    }
    for p in &d.ports {
        render_port(s, p);
    }
    if let Some(e) = &d.efa {
        s.push_str(&format!(
            "   efadv caps       : {}\n",
            if e.caps.is_empty() {
                "none".into()
            } else {
                e.caps.join(" ")
            }
        ));
        for (k, v) in &e.limits {
            s.push_str(&format!("   {k:<17}: {v}\n"));
        }
        s.push_str(&format!("   transport path   : {}\n", e.transport_path));
    }
    if !d.hw_counters.is_empty() {
        s.push_str("   hw_counters:\n");
        for (k, v) in &d.hw_counters {
            s.push_str(&format!("     {k:<30} {v}\n"));
        }
    }
    for e in &d.errors {
        s.push_str(&format!("   could not read   : {e}\n"));
    }
}

/// One port's line, its GIDs and its counters.
fn render_port(s: &mut String, p: &PortReport) {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mtu = or_dash(p.active_mtu.map(|m| m.to_string()));
    let msg = or_dash(p.max_msg_sz.map(|m| m.to_string()));
    s.push_str(&format!(
        "   port {}           : {}  mtu {}  max_msg_sz {}  link {}\n",
        p.port, p.state, mtu, msg, p.link_layer
    ));
    for g in &p.gids {
        s.push_str(&format!(
            "     GID[{:>3}]       : {}  {}\n",
            g.index, g.gid, g.kind
        ));
    }
    for (k, v) in &p.hw_counters {
        s.push_str(&format!("     {k:<30} {v}\n"));
    }
}

/// The fabrics built and what `auto` picks without and with a peer.
fn render_selection(s: &mut String, r: &InfoReport) {
    let line = crate::report::RESULT_LINE;
    s.push_str(&format!(
        "{line}\n transport fabrics built : {}\n",
        r.fabrics_built.join(", ")
    ));
    let sel = |x: &Result<Selection, String>| match x {
        Ok(s) => format!(
            "{}{} ({})",
            s.fabric,
            if s.loopback { ", loopback" } else { "" },
            s.reason
        ),
        Err(e) => format!("none: {e}"),
    };
    s.push_str(&format!(
        " auto, no peer           : {}\n",
        sel(&r.selection_without_peer)
    ));
    s.push_str(&format!(
        " auto, towards a peer    : {}\n",
        sel(&r.selection_with_peer)
    ));
}

/// Runs `info`.
pub fn run(args: &InfoArgs) -> anyhow::Result<()> {
    let env = environment();
    let mut devices = crate::devices::describe_all();
    if let Some(name) = &args.device {
        devices.retain(|d| &d.name == name);
        if devices.is_empty() {
            let names = env.probe.devices.iter().map(|d| d.name.as_str());
            let known = select::known_devices(names, env.device_error.as_deref());
            anyhow::bail!("device '{name}' not found: {known}");
        }
    }
    let driver = crate::devices::efa_driver_version();
    let report = InfoReport {
        schema: "efa-perf.info.v1",
        hints: hints(&devices, env.device_error.as_deref(), driver.as_deref()),
        efa_driver_version: driver,
        devices,
        device_error: env.device_error.clone(),
        fabrics_built: env.fabrics_built.iter().map(|f| f.to_string()).collect(),
        transport_selection: transport_selection(&env),
        selection_without_peer: select::select(FabricChoice::Auto, None, false, None, &env)
            .map_err(|e| e.to_string()),
        selection_with_peer: select::select(FabricChoice::Auto, Some("PEER"), false, None, &env)
            .map_err(|e| e.to_string()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_without_devices_name_the_usual_suspects() {
        let h = hints(&[], Some("libibverbs.so.1 not found"), None).join("\n");
        for needle in [
            "lsmod | grep efa",
            "libibverbs",
            "libefa",
            "instance type",
            "security group",
            "libibverbs.so.1",
        ] {
            assert!(h.contains(needle), "missing hint about {needle}: {h}");
        }
    }

    #[test]
    fn hints_with_efa_point_at_inactive_ports() {
        let d = DeviceReport {
            name: "efa_0".into(),
            is_efa: true,
            ports: vec![PortReport {
                port: 1,
                state: "DOWN".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let h = hints(&[d], None, Some("2.10.0g")).join("\n");
        assert!(h.contains("efa_0 port 1 is DOWN"), "{h}");
        assert!(!h.contains("lsmod"), "{h}");
    }
}
