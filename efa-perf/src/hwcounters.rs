//! `--counters`: the RDMA devices' `hw_counters` (sysfs `ports/1/hw_counters/*` and
//! `hw_counters/*`) read before and after a test; the counters that moved are printed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Counter values by device and counter name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot(pub BTreeMap<(String, String), u64>);

impl Snapshot {
    /// Adds the counters of the device `name` whose sysfs directory is `dir`.
    ///
    /// # Errors
    ///
    /// A counter file that cannot be read or is not a number (named in the error).
    pub fn add_device(&mut self, name: &str, dir: &Path) -> Result<(), efa::Error> {
        let c = efa::hw_counters_in(dir)?;
        for (counter, v) in c.port.into_iter().chain(c.device) {
            self.0.insert((name.to_string(), counter), v);
        }
        Ok(())
    }

    /// The counters of every RDMA device (or only `device`); `Err` says why there are none to
    /// read (no libibverbs, no device, a device without counters).
    pub fn read(device: Option<&str>) -> Result<Snapshot, String> {
        let devices = efa::devices().map_err(|e| format!("cannot list RDMA devices: {e}"))?;
        let mut s = Snapshot::default();
        let mut seen = false;
        for d in devices
            .iter()
            .filter(|d| device.map_or(true, |n| n == d.name))
        {
            seen = true;
            s.add_device(&d.name, &d.ibdev_path)
                .map_err(|e| format!("reading the hw_counters of {}: {e}", d.name))?;
        }
        if !seen {
            return Err(match device {
                Some(n) => format!("no RDMA device named {n}"),
                None => "no RDMA device".into(),
            });
        }
        if s.0.is_empty() {
            return Err("the device exposes no hw_counters in sysfs".into());
        }
        Ok(s)
    }

    /// The counters that grew from `before` to `self`, with their increase.
    pub fn deltas(&self, before: &Snapshot) -> Vec<(String, String, u64)> {
        self.0
            .iter()
            .filter_map(|((dev, name), &v)| {
                let old = before
                    .0
                    .get(&(dev.clone(), name.clone()))
                    .copied()
                    .unwrap_or(0);
                (v > old).then(|| (dev.clone(), name.clone(), v - old))
            })
            .collect()
    }
}

/// The deltas as text: one `hw_counters: DEV NAME +DELTA` line each, or a line saying none moved.
pub fn render(deltas: &[(String, String, u64)]) -> String {
    if deltas.is_empty() {
        return "hw_counters: no counter changed during the test\n".into();
    }
    let mut s = String::new();
    for (dev, name, d) in deltas {
        let _ = writeln!(s, "hw_counters: {dev} {name} +{d}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn deltas_of_a_sysfs_tree_name_the_counters_that_moved() {
        let dir = std::env::temp_dir().join(format!("efa-perf-hwc-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("ports/1/hw_counters")).unwrap();
        fs::create_dir_all(dir.join("hw_counters")).unwrap();
        let set = |name: &str, v: u64| {
            fs::write(dir.join("ports/1/hw_counters").join(name), format!("{v}\n")).unwrap()
        };
        set("rdma_write_bytes", 100);
        set("send_bytes", 7);
        set("lifespan", 12);
        fs::write(dir.join("hw_counters/alloc_pd_err"), "0\n").unwrap();
        let mut before = Snapshot::default();
        before.add_device("efa_0", &dir).unwrap();
        set("rdma_write_bytes", 4196);
        let mut after = Snapshot::default();
        after.add_device("efa_0", &dir).unwrap();
        let d = after.deltas(&before);
        assert_eq!(d, vec![("efa_0".into(), "rdma_write_bytes".into(), 4096)]);
        assert_eq!(render(&d), "hw_counters: efa_0 rdma_write_bytes +4096\n");
        assert!(render(&[]).contains("no counter changed"));
        fs::write(dir.join("ports/1/hw_counters/send_bytes"), "oops\n").unwrap();
        assert!(Snapshot::default().add_device("efa_0", &dir).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
