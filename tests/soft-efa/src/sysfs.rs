//! A sysfs-like directory per device, which `ibv_device::ibdev_path` points at: what the kernel's
//! `/sys/class/infiniband/<dev>` shows for EFA (driver `efa`, Amazon's vendor id), plus the
//! device's counters in `ports/1/hw_counters/`, refreshed by the progress thread.
//!
//! It lives under `$SOFT_EFA_SYSFS` if set, else `$TMPDIR/soft-efa-sysfs/<pid>/<device>`, and is
//! removed with the process's other trees on the next start of any soft-efa process.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::device::Counters;
use crate::profile::Profile;

fn root() -> PathBuf {
    std::env::var_os("SOFT_EFA_SYSFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("soft-efa-sysfs"))
}

/// Removes the trees of processes that no longer run.
fn reap_stale(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let pid: Option<i32> = e.file_name().to_str().and_then(|s| s.parse().ok());
        // SAFETY: kill with signal 0 only asks whether the process exists.
        if let Some(pid) = pid.filter(|p| unsafe { libc::kill(*p, 0) } != 0) {
            let _ = pid;
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Creates the tree of one device and returns its path.
pub fn create(name: &str, profile: &Profile, gid: &[u8; 16]) -> io::Result<PathBuf> {
    let root = root();
    reap_stale(&root);
    let dir = root.join(std::process::id().to_string()).join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("device/driver_dir/efa"))?;
    fs::create_dir_all(dir.join("ports/1/hw_counters"))?;
    fs::create_dir_all(dir.join("ports/1/gid_attrs/types"))?;
    fs::create_dir_all(dir.join("hw_counters"))?;
    std::os::unix::fs::symlink("driver_dir/efa", dir.join("device/driver"))?;
    fs::write(dir.join("device/vendor"), "0x1d0f\n")?;
    fs::write(
        dir.join("device/device"),
        format!("{:#06x}\n", profile.vendor_part_id),
    )?;
    fs::write(
        dir.join("node_desc"),
        format!(
            "soft-efa emulated EFA ({}: {})\n",
            profile.name, profile.like
        ),
    )?;
    fs::write(dir.join("node_type"), "6: unspecified\n")?;
    let g: Vec<String> = gid
        .chunks(2)
        .map(|c| format!("{:02x}{:02x}", c[0], c[1]))
        .collect();
    fs::create_dir_all(dir.join("ports/1/gids"))?;
    fs::write(dir.join("ports/1/gids/0"), format!("{}\n", g.join(":")))?;
    write_counters(&dir, &Counters::default());
    Ok(dir)
}

/// Writes the counters into `ports/1/hw_counters/` (best effort: counters are diagnostics).
/// Each file is replaced by a rename, so a reader never sees one half written.
pub fn write_counters(dir: &Path, counters: &Counters) {
    let base = dir.join("ports/1/hw_counters");
    // One temporary file per writing thread (the progress thread and `ibv_close_device`).
    let tmp = dir.join(format!(".counter.{:?}.tmp", std::thread::current().id()));
    for (name, v) in counters.snapshot() {
        if fs::write(&tmp, format!("{v}\n")).is_ok() {
            let _ = fs::rename(&tmp, base.join(name));
        }
    }
}
