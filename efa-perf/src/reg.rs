//! `efa-perf reg`: how fast memory is registered, through the engine and with one plain
//! `ibv_reg_mr` of the same memory on the same device.
//!
//! Each page size gets its own memory, touched page by page before anything is timed, so the
//! figures measure registration (pinning and mapping), not the first page faults. The engine's
//! figure is the wall time of [`Engine::register_owned`] (the fabric's registration on each of
//! its rails and the descriptor published); the plain one is `ibv_reg_mr` alone
//! ([`efa::Mr::register_raw`]). Deregistration and the page-size lookup
//! ([`Engine::segment_pages`]) are not timed. One untimed round of each comes first, then the two
//! alternate which goes first. The 4 KiB memory is advised `MADV_NOHUGEPAGE`
//! ([`OwnedMemory::base_pages`]): where transparent hugepages are `always` on (Debian's kernels),
//! plain allocator memory of a GiB would be backed by 2 MiB pages.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use transport::fabric::sim::SimNetwork;
use transport::{
    Access, Backing, Engine, HugePages, LocalRegistry, Location, OwnedMemory, RegistrationReport,
};

use crate::cli::{PageChoice, RegArgs};
use crate::fabrics::{self, Params};
use crate::select::{self, FabricKind};

const GIB: f64 = (1u64 << 30) as f64;
/// The rights the engine asks for (local write is always there), so both registrations do the
/// same work.
const ACCESS: Access = Access::REMOTE_READ_WRITE;

/// Median, min and max of a few figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Median (of an even count: the mean of the middle two).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `v` (at least one figure).
    pub fn of(v: &[f64]) -> Option<Spread> {
        if v.is_empty() {
            return None;
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: s[0],
            max: s[n - 1],
        })
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.2} [{:.2} - {:.2}]", self.median, self.min, self.max)
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
struct Row {
    pages: String,
    engine: Spread,
    plain: Option<Spread>,
    rails: usize,
}

/// A page size label: 4K, 2M, 1G, or bytes.
fn page_label(size: u64) -> String {
    match size {
        s if s >= 1 << 30 && s % (1 << 30) == 0 => format!("{}G", s >> 30),
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{}M", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{}K", s >> 10),
        s => format!("{s}B"),
    }
}

fn gib_per_sec(len: u64, took: Duration) -> f64 {
    len as f64 / GIB / took.as_secs_f64().max(1e-9)
}

/// Writes one byte per 4 KiB page, so every page is present before anything is timed.
fn touch(m: &mut OwnedMemory) {
    for b in m.as_mut_slice().iter_mut().step_by(4096) {
        *b = 1;
    }
}

/// The plain `ibv_reg_mr` on one device.
struct Plain {
    pd: Arc<efa::Pd>,
}

impl Plain {
    fn open(device: &str) -> anyhow::Result<Plain> {
        let ctx = efa::Context::open(device).with_context(|| format!("opening {device}"))?;
        let pd = efa::Pd::new(&ctx).with_context(|| format!("allocating a PD on {device}"))?;
        Ok(Plain { pd })
    }

    /// Registers `m` once; returns the time `ibv_reg_mr` took (deregistration untimed).
    fn time(&self, m: &mut OwnedMemory) -> anyhow::Result<Duration> {
        let access =
            efa::Access::LOCAL_WRITE | efa::Access::REMOTE_READ | efa::Access::REMOTE_WRITE;
        let (ptr, len) = (m.as_mut_slice().as_mut_ptr(), m.len());
        let t = Instant::now();
        // SAFETY: `m` is borrowed mutably for the life of the region, which is dropped
        // (deregistered) before this function returns.
        let mr = unsafe { efa::Mr::register_raw(&self.pd, ptr, len, access) }
            .with_context(|| format!("ibv_reg_mr of {len} bytes"))?;
        let took = t.elapsed();
        drop(mr);
        Ok(took)
    }
}

/// Registers `m` through the engine `iters` times (and plainly, when `plain` is given).
fn measure(
    engine: &Engine,
    plain: Option<&Plain>,
    mut m: OwnedMemory,
    iters: u32,
) -> anyhow::Result<(Vec<f64>, Vec<f64>, RegistrationReport, u64)> {
    let len = m.len() as u64;
    let (mut e, mut p) = (Vec::new(), Vec::new());
    let mut last = None;
    // One untimed round of each first (the first registration of memory pays for things no later
    // one does), then the two kinds alternate which goes first, so neither always follows the
    // other's deregistration.
    for i in 0..=iters {
        let timed = i > 0;
        let plain_first = i % 2 == 0;
        if plain_first {
            if let Some(plain) = plain {
                let took = plain.time(&mut m)?;
                if timed {
                    p.push(gib_per_sec(len, took));
                }
            }
        }
        let name = format!("reg/{i}");
        let t = Instant::now();
        let seg = engine
            .register_owned(&name, m, Location::Cpu(0), ACCESS)
            .with_context(|| format!("registering {len} bytes through the engine"))?;
        let took = t.elapsed();
        if timed {
            e.push(gib_per_sec(len, took));
        }
        // Untimed: what backs the memory, as the kernel says (smaps).
        let pages = engine.segment_pages(seg)?.effective_page_size();
        last = Some((engine.segment_info(seg)?.registration, pages));
        m = engine
            .unregister(seg)?
            .context("the engine handed back no memory")?;
        if !plain_first {
            if let Some(plain) = plain {
                p.push(gib_per_sec(len, plain.time(&mut m)?));
            }
        }
    }
    let (report, pages) = last.context("no registration ran")?;
    Ok((e, p, report, pages))
}

/// The 2 MiB memory for `--hugepages`, or why there is none.
fn huge_memory(len: usize) -> Result<(OwnedMemory, &'static str), String> {
    match OwnedMemory::huge(len, HugePages::Size2M) {
        Ok(m) => Ok((m, "")),
        Err(e) => {
            let why = format!(
                "{e}: {}",
                e.source.as_ref().map(|s| s.to_string()).unwrap_or_default()
            );
            match OwnedMemory::huge(len, HugePages::Any) {
                Ok(m) if m.backing() == Backing::Transparent => Ok((m, "(THP)")),
                Ok(m) => Ok((m, "")),
                Err(e2) => Err(format!("{why}; and {e2}")),
            }
        }
    }
}

/// Runs `efa-perf reg`.
pub fn run(a: &RegArgs) -> anyhow::Result<()> {
    let len = usize::try_from(a.size).context("--size does not fit this machine's addresses")?;
    if len == 0 {
        bail!("--size 0: nothing to register");
    }
    let env = crate::info::environment();
    let selection = select::select(a.fabric, None, true, a.device.as_deref(), &env)?;
    eprintln!(
        "efa-perf: fabric {} ({})",
        selection.fabric, selection.reason
    );
    let params = Params {
        device: selection.device.clone(),
        ib_port: 1,
        gid_index: None,
        workers: 1,
        timeout: Duration::from_secs(10),
        bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        slice_size: None,
        two_sided: transport::fabric::efa::TwoSided::Fallback,
        cq_events: false,
        idle_spin: None,
        completion_counters: false,
        wait: transport::WaitMode::default(),
        affinity: Default::default(),
        metrics: true,
    };
    let net = (selection.fabric == FabricKind::Sim).then(SimNetwork::new);
    let (fabric, setup) = fabrics::create(selection.fabric, &params, net.as_ref())?;
    let engine = Engine::new(
        fabrics::engine_config("reg", &params),
        fabric,
        Arc::new(LocalRegistry::new()),
    )?;
    let plain = match (selection.fabric, &selection.device) {
        (FabricKind::Efa | FabricKind::Verbs, Some(dev)) => Some(Plain::open(dev)?),
        _ => None,
    };

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let pages = if a.pages.is_empty() {
        let mut v = vec![PageChoice::Base];
        if a.hugepages {
            v.push(PageChoice::Huge2M);
        }
        v
    } else {
        a.pages.clone()
    };
    for choice in pages {
        match choice {
            PageChoice::Base => {
                let mut base = OwnedMemory::base_pages(len)
                    .with_context(|| format!("allocating {len} bytes"))?;
                touch(&mut base);
                let (e, p, report, pages) = measure(&engine, plain.as_ref(), base, a.iters)?;
                rows.push(row(page_label(pages), &e, &p, &report)?);
            }
            PageChoice::Huge2M => match huge_memory(len) {
                Ok((mut m, how)) => {
                    touch(&mut m);
                    let (e, p, report, pages) = measure(&engine, plain.as_ref(), m, a.iters)?;
                    rows.push(row(format!("{}{how}", page_label(pages)), &e, &p, &report)?);
                    if !how.is_empty() {
                        notes.push(
                            "no 2 MiB hugetlbfs pages free: THP is memory advised for transparent \
                             hugepages (reserve pages with `echo N > /proc/sys/vm/nr_hugepages` for hugetlbfs)"
                                .to_string(),
                        );
                    }
                }
                Err(why) => notes.push(format!("2 MiB pages skipped: {why}")),
            },
        }
    }
    if plain.is_none() {
        notes.push(format!(
            "over {} there is no ibv_reg_mr to compare with: the engine's figure alone",
            selection.fabric
        ));
    }
    print!(
        "{}",
        table(
            &setup.device,
            &selection.fabric.to_string(),
            a,
            &rows,
            &notes
        )
    );
    Ok(())
}

fn row(pages: String, e: &[f64], p: &[f64], report: &RegistrationReport) -> anyhow::Result<Row> {
    Ok(Row {
        pages,
        engine: Spread::of(e).context("no engine figure")?,
        plain: Spread::of(p),
        rails: report.rails.len(),
    })
}

fn table(device: &str, fabric: &str, a: &RegArgs, rows: &[Row], notes: &[String]) -> String {
    let line = "-".repeat(100);
    let mut s = String::new();
    let _ = writeln!(s, "{line}");
    let _ = writeln!(
        s,
        "                    Memory registration: the engine against one ibv_reg_mr"
    );
    let _ = writeln!(s, " Fabric          : {fabric} ({device})");
    let _ = writeln!(
        s,
        " Iterations      : {} per row; GiB/s as median [min - max]; ratio = engine / ibv_reg_mr medians",
        a.iters
    );
    let _ = writeln!(s, "{line}");
    let _ = writeln!(
        s,
        " {:<14} {:<9} {:<6} {:<28} {:<28} {:<6}",
        "#bytes", "pages", "rails", "engine GiB/s", "ibv_reg_mr GiB/s", "ratio"
    );
    for r in rows {
        let (plain, ratio) = match r.plain {
            Some(p) => (p.to_string(), format!("{:.2}", r.engine.median / p.median)),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            s,
            " {:<14} {:<9} {:<6} {:<28} {:<28} {:<6}",
            a.size,
            r.pages,
            r.rails,
            r.engine.to_string(),
            plain,
            ratio
        );
    }
    let _ = writeln!(s, "{line}");
    for n in notes {
        let _ = writeln!(s, " note: {n}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_the_middle_and_the_ends() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 4.0]).unwrap().median, 2.5);
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(s.to_string(), "2.00 [1.00 - 3.00]");
    }

    #[test]
    fn page_labels() {
        assert_eq!(page_label(4096), "4K");
        assert_eq!(page_label(2 << 20), "2M");
        assert_eq!(page_label(1 << 30), "1G");
        assert_eq!(page_label(65536), "64K");
        assert_eq!(gib_per_sec(1 << 30, Duration::from_millis(500)), 2.0);
    }
}
