//! Which cores a thread runs on: cpu sets in the kernel's cpulist form (`0-3,8`), the NUMA node
//! of an RDMA device and its cores (from sysfs), pinning a thread, and the [`Affinity`] policy a
//! fabric applies to the threads it spawns (the efa target thread, the verbs target and service
//! threads, the tcp listener and, through it, its service threads).
//!
//! By default ([`Affinity::DeviceNuma`]) a fabric's threads run on the cores of the NUMA node its
//! devices sit on, as `numa_node` in the device's sysfs directory says. Where sysfs says nothing
//! (`-1`, no file: a VM without NUMA, soft-efa, tcp, which has no device) they are not pinned.
//! Worker threads belong to the user: [`Engine::local_cpus`](crate::Engine::local_cpus) gives
//! the cores the engine's fabric chose, and [`pin_current_thread`] pins a thread to them.
//!
//! ```
//! use transport::affinity::CpuSet;
//!
//! let set: CpuSet = "0-3,8".parse()?;
//! assert_eq!(set.len(), 5);
//! assert!(set.contains(8) && !set.contains(4));
//! assert_eq!(set.to_string(), "0-3,8");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::thread::JoinHandle;

use crate::OsError;

/// Most cpus a [`CpuSet`] holds: glibc's `CPU_SETSIZE`, the size `sched_setaffinity` takes here.
pub const MAX_CPUS: usize = 1024;

const WORDS: usize = MAX_CPUS / 64;

/// A set of cpu numbers below [`MAX_CPUS`]; parsed from and printed as a Linux cpulist
/// (`0-3,8`, as in sysfs, `taskset -c` and `/proc/self/status`). `Copy`, no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CpuSet {
    bits: [u64; WORDS],
}

impl CpuSet {
    /// The empty set.
    pub const fn new() -> Self {
        CpuSet { bits: [0; WORDS] }
    }

    /// The set of `cpus`.
    ///
    /// # Errors
    ///
    /// [`CpuListError::TooLarge`] names the first cpu at or beyond [`MAX_CPUS`].
    pub fn from_cpus(cpus: impl IntoIterator<Item = usize>) -> Result<Self, CpuListError> {
        let mut set = CpuSet::new();
        for cpu in cpus {
            set.insert(cpu)?;
        }
        Ok(set)
    }

    /// Adds `cpu`.
    ///
    /// # Errors
    ///
    /// [`CpuListError::TooLarge`] when `cpu` is at or beyond [`MAX_CPUS`].
    pub fn insert(&mut self, cpu: usize) -> Result<(), CpuListError> {
        if cpu >= MAX_CPUS {
            return Err(CpuListError::TooLarge {
                list: cpu.to_string(),
                cpu: cpu as u64,
            });
        }
        self.bits[cpu / 64] |= 1 << (cpu % 64);
        Ok(())
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: usize) -> bool {
        cpu < MAX_CPUS && self.bits[cpu / 64] & (1 << (cpu % 64)) != 0
    }

    /// How many cpus the set holds.
    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|w| *w == 0)
    }

    /// The cpus, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_CPUS).filter(|c| self.contains(*c))
    }

    /// The cpus in either set.
    pub fn union(&self, other: &CpuSet) -> CpuSet {
        let mut out = *self;
        for (a, b) in out.bits.iter_mut().zip(other.bits) {
            *a |= b;
        }
        out
    }

    /// The cpus in both sets.
    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        let mut out = *self;
        for (a, b) in out.bits.iter_mut().zip(other.bits) {
            *a &= b;
        }
        out
    }

    /// Parses a cpulist: comma-separated cpus and inclusive ranges (`0-3,8`), blanks around
    /// items allowed; the empty text (a NUMA node without cpus writes one) is the empty set.
    ///
    /// # Errors
    ///
    /// A [`CpuListError`] naming the whole list and the item at fault.
    pub fn parse(list: &str) -> Result<CpuSet, CpuListError> {
        let mut set = CpuSet::new();
        let text = list.trim();
        if text.is_empty() {
            return Ok(set);
        }
        let number = |item: &str, part: &str| -> Result<usize, CpuListError> {
            let cpu: u64 = part
                .trim()
                .parse()
                .map_err(|source| CpuListError::BadItem {
                    list: list.to_owned(),
                    item: item.to_owned(),
                    source,
                })?;
            if cpu >= MAX_CPUS as u64 {
                return Err(CpuListError::TooLarge {
                    list: list.to_owned(),
                    cpu,
                });
            }
            Ok(cpu as usize)
        };
        for item in text.split(',') {
            let (first, last) = match item.split_once('-') {
                Some((a, b)) => (number(item, a)?, number(item, b)?),
                None => {
                    let c = number(item, item)?;
                    (c, c)
                }
            };
            if last < first {
                return Err(CpuListError::Backwards {
                    list: list.to_owned(),
                    item: item.trim().to_owned(),
                });
            }
            for cpu in first..=last {
                set.bits[cpu / 64] |= 1 << (cpu % 64);
            }
        }
        Ok(set)
    }
}

impl FromStr for CpuSet {
    type Err = CpuListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CpuSet::parse(s)
    }
}

impl fmt::Display for CpuSet {
    /// The cpulist form: runs of two or more consecutive cpus as `a-b`, joined by commas; the
    /// empty set prints nothing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut cpus = self.iter().peekable();
        let mut first = true;
        while let Some(start) = cpus.next() {
            let mut end = start;
            while cpus.peek() == Some(&(end + 1)) {
                end += 1;
                cpus.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if end == start {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSet({self})")
    }
}

/// A cpulist that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    /// An item that is neither a cpu number nor a range of two.
    #[error("cpu list {list:?}: {item:?} is not a cpu number or range (e.g. 0-3,8)")]
    BadItem {
        /// The whole list.
        list: String,
        /// The item at fault.
        item: String,
        /// Why its number did not parse.
        #[source]
        source: std::num::ParseIntError,
    },
    /// A range whose end is below its start.
    #[error("cpu list {list:?}: range {item:?} runs backwards")]
    Backwards {
        /// The whole list.
        list: String,
        /// The range.
        item: String,
    },
    /// A cpu number at or beyond [`MAX_CPUS`].
    #[error("cpu list {list:?}: cpu {cpu} is beyond the {MAX_CPUS} cpus a set holds")]
    TooLarge {
        /// The whole list.
        list: String,
        /// The cpu.
        cpu: u64,
    },
}

/// Pinning a thread, or finding the cores of a device, failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AffinityError {
    /// There is no cpu to pin to.
    #[error("cannot pin a thread to an empty cpu set")]
    Empty,
    /// `sched_setaffinity` refused the set (cpus offline, or outside this process's cgroup).
    #[error("cannot pin the thread to cpus {cpus}")]
    Pin {
        /// The set asked for (boxed: a set is 128 bytes).
        cpus: Box<CpuSet>,
        /// The OS error.
        #[source]
        source: OsError,
    },
    /// `sched_getaffinity` failed.
    #[error("cannot read the thread's cpu affinity")]
    Query {
        /// The OS error.
        #[source]
        source: OsError,
    },
    /// A sysfs file that exists could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: OsError,
    },
    /// A `numa_node` file that holds no node number.
    #[error("{path}: {value:?} is not a NUMA node number")]
    BadNode {
        /// The file.
        path: String,
        /// What it holds.
        value: String,
    },
    /// A `cpulist` file that does not parse.
    #[error("{path}: bad cpu list")]
    BadCpuList {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: CpuListError,
    },
    /// The thread could not be started.
    #[error("cannot start thread {name}")]
    Spawn {
        /// The thread's name.
        name: String,
        /// The OS error.
        #[source]
        source: OsError,
    },
}

/// Pins the calling thread to `cpus` (`sched_setaffinity`). Threads it starts afterwards
/// inherit the set.
///
/// # Errors
///
/// [`AffinityError::Empty`] for an empty set; [`AffinityError::Pin`] with the set and the OS
/// error when the kernel refuses it (`EINVAL`: none of the cpus is online and allowed).
pub fn pin_current_thread(cpus: &CpuSet) -> Result<(), AffinityError> {
    if cpus.is_empty() {
        return Err(AffinityError::Empty);
    }
    // SAFETY: cpu_set_t is a plain bit array; zero is the empty set.
    let mut raw: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in cpus.iter() {
        // SAFETY: `cpu` < MAX_CPUS == CPU_SETSIZE, in bounds of `raw`.
        unsafe { libc::CPU_SET(cpu, &mut raw) };
    }
    // SAFETY: pid 0 is the calling thread; `raw` is a live cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw) };
    if rc != 0 {
        return Err(AffinityError::Pin {
            cpus: Box::new(*cpus),
            source: std::io::Error::last_os_error().into(),
        });
    }
    Ok(())
}

/// The cpus the calling thread may run on (`sched_getaffinity`).
///
/// # Errors
///
/// [`AffinityError::Query`] with the OS error.
pub fn current_thread_cpus() -> Result<CpuSet, AffinityError> {
    // SAFETY: cpu_set_t is a plain bit array; zero is the empty set.
    let mut raw: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; `raw` is a live, writable cpu_set_t of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut raw) };
    if rc != 0 {
        return Err(AffinityError::Query {
            source: std::io::Error::last_os_error().into(),
        });
    }
    let mut set = CpuSet::new();
    for cpu in 0..MAX_CPUS {
        // SAFETY: `cpu` < CPU_SETSIZE, in bounds of `raw`.
        if unsafe { libc::CPU_ISSET(cpu, &raw) } {
            set.bits[cpu / 64] |= 1 << (cpu % 64);
        }
    }
    Ok(set)
}

/// Where sysfs is: `/sys`, or a tree a test builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs::system()
    }
}

impl Sysfs {
    /// The kernel's sysfs, `/sys`.
    pub fn system() -> Sysfs {
        Sysfs::at("/sys")
    }

    /// A sysfs tree rooted at `root` (with `class/infiniband/` and `devices/system/node/`).
    pub fn at(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    /// The sysfs directory of RDMA device `name` (`<root>/class/infiniband/<name>`). libibverbs
    /// gives the same path as the device's `ibdev_path`, which fabrics use (a software device
    /// such as soft-efa points it elsewhere).
    pub fn device_dir(&self, name: &str) -> PathBuf {
        self.root.join("class/infiniband").join(name)
    }

    /// The NUMA node of the device whose sysfs directory is `device_dir`
    /// (`device/numa_node`): `None` when the file is absent or says `-1` (no NUMA information).
    ///
    /// # Errors
    ///
    /// [`AffinityError::Read`] when the file exists but cannot be read,
    /// [`AffinityError::BadNode`] when it holds no node number.
    pub fn numa_node(device_dir: &Path) -> Result<Option<u32>, AffinityError> {
        let path = device_dir.join("device/numa_node");
        let Some(text) = read_optional(&path)? else {
            return Ok(None);
        };
        match text.parse::<i64>() {
            Ok(-1) => Ok(None),
            Ok(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| AffinityError::BadNode {
                    path: path.display().to_string(),
                    value: text,
                }),
            Err(_) => Err(AffinityError::BadNode {
                path: path.display().to_string(),
                value: text,
            }),
        }
    }

    /// The cpus of NUMA node `node` (`devices/system/node/node<N>/cpulist`); `None` when the
    /// node is not there.
    ///
    /// # Errors
    ///
    /// [`AffinityError::Read`] when the file exists but cannot be read,
    /// [`AffinityError::BadCpuList`] when it does not parse.
    pub fn node_cpus(&self, node: u32) -> Result<Option<CpuSet>, AffinityError> {
        let path = self
            .root
            .join(format!("devices/system/node/node{node}/cpulist"));
        let Some(text) = read_optional(&path)? else {
            return Ok(None);
        };
        CpuSet::parse(&text)
            .map(Some)
            .map_err(|source| AffinityError::BadCpuList {
                path: path.display().to_string(),
                source,
            })
    }

    /// The cpus of the NUMA node of the device at `device_dir`; `None` without NUMA
    /// information or when the node has no cpus.
    ///
    /// # Errors
    ///
    /// As [`Sysfs::numa_node`] and [`Sysfs::node_cpus`].
    pub fn device_cpus(&self, device_dir: &Path) -> Result<Option<CpuSet>, AffinityError> {
        let Some(node) = Sysfs::numa_node(device_dir)? else {
            return Ok(None);
        };
        Ok(self.node_cpus(node)?.filter(|s| !s.is_empty()))
    }
}

/// A small sysfs file as trimmed text; `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, AffinityError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AffinityError::Read {
            path: path.display().to_string(),
            source: e.into(),
        }),
    }
}

/// Where a fabric runs the threads it spawns (set in its config: `EfaConfig::affinity`,
/// `VerbsConfig::affinity`, `TcpConfig::affinity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Affinity {
    /// Wherever the scheduler puts them (they inherit the affinity of the thread that built the
    /// fabric).
    None,
    /// On the cores of the NUMA node(s) of the fabric's devices, where sysfs tells them and this
    /// thread may use them; else as [`Affinity::None`]. The default.
    #[default]
    DeviceNuma,
    /// On these cores.
    Cpus(CpuSet),
}

impl Affinity {
    /// The cpus this policy picks for threads serving the devices whose sysfs directories are
    /// `device_dirs`, within `allowed` (the cpus the calling thread may use); `None`: do not pin.
    /// For [`Affinity::DeviceNuma`] that is the union of the devices' NUMA nodes' cpus (those
    /// without NUMA information add nothing), cut to `allowed`.
    ///
    /// # Errors
    ///
    /// [`AffinityError::Empty`] for [`Affinity::Cpus`] of an empty set, and the sysfs errors of
    /// [`Sysfs::device_cpus`].
    pub fn resolve<P: AsRef<Path>>(
        &self,
        sysfs: &Sysfs,
        device_dirs: &[P],
        allowed: &CpuSet,
    ) -> Result<Option<CpuSet>, AffinityError> {
        match self {
            Affinity::None => Ok(None),
            Affinity::Cpus(set) if set.is_empty() => Err(AffinityError::Empty),
            Affinity::Cpus(set) => Ok(Some(*set)),
            Affinity::DeviceNuma => {
                let mut cpus = CpuSet::new();
                for dir in device_dirs {
                    if let Some(set) = sysfs.device_cpus(dir.as_ref())? {
                        cpus = cpus.union(&set);
                    }
                }
                let cpus = cpus.intersection(allowed);
                Ok((!cpus.is_empty()).then_some(cpus))
            }
        }
    }

    /// [`Affinity::resolve`] for a fabric's threads on the real sysfs, within this thread's
    /// cpus. The default policy never stops a fabric: a sysfs it cannot read is logged and its
    /// threads are not pinned. An explicit [`Affinity::Cpus`] is returned as given.
    pub(crate) fn for_fabric<P: AsRef<Path>>(
        &self,
        fabric: &'static str,
        device_dirs: &[P],
    ) -> Result<Option<CpuSet>, AffinityError> {
        if let Affinity::DeviceNuma = self {
            let resolved = current_thread_cpus()
                .and_then(|allowed| self.resolve(&Sysfs::system(), device_dirs, &allowed));
            return Ok(match resolved {
                Ok(cpus) => {
                    if let Some(c) = cpus {
                        log::info!(
                            "{fabric} fabric: threads on cpus {c} (NUMA node of its devices)"
                        );
                    }
                    cpus
                }
                Err(e) => {
                    log::warn!("{fabric} fabric: threads not pinned: {e}");
                    None
                }
            });
        }
        self.resolve(&Sysfs::system(), device_dirs, &CpuSet::new())
    }
}

/// Starts a thread called `name` running `f`, pinned to `cpus` first when given. The pinning is
/// done by the new thread and reported back before this returns, so a set the kernel refuses
/// is an error here (and `f` never runs), not a thread silently left unpinned.
///
/// # Errors
///
/// [`AffinityError::Spawn`] when the thread cannot start, [`pin_current_thread`]'s errors when
/// it cannot be pinned.
pub(crate) fn spawn_pinned<F>(
    name: &str,
    cpus: Option<CpuSet>,
    f: F,
) -> Result<JoinHandle<()>, AffinityError>
where
    F: FnOnce() + Send + 'static,
{
    let spawn_err = |e: std::io::Error| AffinityError::Spawn {
        name: name.to_owned(),
        source: e.into(),
    };
    let builder = std::thread::Builder::new().name(name.to_owned());
    let Some(cpus) = cpus else {
        return builder.spawn(f).map_err(spawn_err);
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let handle = builder
        .spawn(move || {
            let pinned = pin_current_thread(&cpus);
            let ok = pinned.is_ok();
            let _ = tx.send(pinned);
            if ok {
                f();
            }
        })
        .map_err(spawn_err)?;
    // The thread sends before anything else; a closed channel means it died first.
    let pinned = rx.recv().unwrap_or(Err(AffinityError::Spawn {
        name: name.to_owned(),
        source: std::io::Error::other("the thread ended before pinning itself").into(),
    }));
    match pinned {
        Ok(()) => Ok(handle),
        Err(e) => {
            let _ = handle.join();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cpulists_parse_and_print_in_kernel_form() {
        for (text, cpus, printed) in [
            ("0", vec![0], "0"),
            ("0-3,8", vec![0, 1, 2, 3, 8], "0-3,8"),
            (" 8, 0-1 \n", vec![0, 1, 8], "0-1,8"),
            ("3-3", vec![3], "3"),
            ("0,1,2,5,6", vec![0, 1, 2, 5, 6], "0-2,5-6"),
            ("1023", vec![1023], "1023"),
            ("", vec![], ""),
            ("\n", vec![], ""),
        ] {
            let set = CpuSet::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(set.iter().collect::<Vec<_>>(), cpus, "{text:?}");
            assert_eq!(set.to_string(), printed, "{text:?}");
        }
    }

    #[test]
    fn bad_cpulists_are_typed_errors_naming_the_value() {
        let e = CpuSet::parse("0-3,x").unwrap_err();
        assert!(
            matches!(&e, CpuListError::BadItem { list, item, .. } if list == "0-3,x" && item == "x"),
            "{e:?}"
        );
        assert!(
            std::error::Error::source(&e).is_some(),
            "the parse error is kept"
        );
        for bad in ["-1", "1-", ",", "0,,1", "0-1-2", "1:2", "0-31:2/4", "abc"] {
            let e = CpuSet::parse(bad).unwrap_err();
            assert!(matches!(e, CpuListError::BadItem { .. }), "{bad:?}: {e:?}");
            assert!(e.to_string().contains(bad), "{bad:?}: {e}");
        }
        let e = CpuSet::parse("5-2").unwrap_err();
        assert!(
            matches!(&e, CpuListError::Backwards { item, .. } if item == "5-2"),
            "{e:?}"
        );
        let e = CpuSet::parse("0,1024").unwrap_err();
        assert!(
            matches!(e, CpuListError::TooLarge { cpu: 1024, .. }),
            "{e:?}"
        );
        let e = CpuSet::parse("99999999999999999999").unwrap_err();
        assert!(matches!(e, CpuListError::BadItem { .. }), "{e:?}");
        assert!(matches!(
            CpuSet::new().insert(MAX_CPUS),
            Err(CpuListError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn any_set_round_trips_through_its_cpulist(cpus in proptest::collection::btree_set(0..MAX_CPUS, 0..64)) {
            let set = CpuSet::from_cpus(cpus.iter().copied()).unwrap();
            prop_assert_eq!(set.len(), cpus.len());
            let text = set.to_string();
            let back = CpuSet::parse(&text).unwrap();
            prop_assert_eq!(back, set);
            prop_assert_eq!(back.iter().collect::<Vec<_>>(), cpus.into_iter().collect::<Vec<_>>());
            // The printed form has no range of one and no two items that could merge.
            for item in text.split(',').filter(|s| !s.is_empty()) {
                if let Some((a, b)) = item.split_once('-') {
                    prop_assert!(a.parse::<usize>().unwrap() < b.parse::<usize>().unwrap());
                }
            }
        }

        #[test]
        fn unions_and_intersections_follow_membership(
            a in proptest::collection::btree_set(0..200usize, 0..20),
            b in proptest::collection::btree_set(0..200usize, 0..20),
        ) {
            let (sa, sb) = (CpuSet::from_cpus(a.iter().copied()).unwrap(), CpuSet::from_cpus(b.iter().copied()).unwrap());
            for c in 0..200 {
                prop_assert_eq!(sa.union(&sb).contains(c), a.contains(&c) || b.contains(&c));
                prop_assert_eq!(sa.intersection(&sb).contains(c), a.contains(&c) && b.contains(&c));
            }
        }

        #[test]
        fn arbitrary_text_never_panics(text in "[0-9,\\- x]{0,16}") {
            let _ = CpuSet::parse(&text);
        }
    }

    /// A sysfs tree in a fresh temporary directory, removed on drop.
    struct FakeSysfs(PathBuf);

    impl FakeSysfs {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("transport-affinity-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            FakeSysfs(dir)
        }

        fn file(&self, path: &str, text: &str) {
            let p = self.0.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }

        fn sysfs(&self) -> Sysfs {
            Sysfs::at(&self.0)
        }
    }

    impl Drop for FakeSysfs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn numa_lookup_reads_the_device_node_and_its_cpus() {
        let t = FakeSysfs::new("numa");
        t.file("class/infiniband/efa_0/device/numa_node", "1\n");
        t.file("class/infiniband/efa_1/device/numa_node", "0\n");
        t.file("class/infiniband/vm_0/device/numa_node", "-1\n");
        t.file("class/infiniband/bad_0/device/numa_node", "one\n");
        t.file("class/infiniband/neg_0/device/numa_node", "-2\n");
        t.file("devices/system/node/node0/cpulist", "0-3\n");
        t.file("devices/system/node/node1/cpulist", "4-7,12\n");
        let s = t.sysfs();
        let dir = |n: &str| s.device_dir(n);
        assert_eq!(Sysfs::numa_node(&dir("efa_0")), Ok(Some(1)));
        assert_eq!(Sysfs::numa_node(&dir("vm_0")), Ok(None), "-1: no NUMA info");
        assert_eq!(Sysfs::numa_node(&dir("absent")), Ok(None), "no file");
        let e = Sysfs::numa_node(&dir("bad_0")).unwrap_err();
        assert!(
            matches!(&e, AffinityError::BadNode { value, path } if value == "one" && path.ends_with("bad_0/device/numa_node")),
            "{e:?}"
        );
        assert!(matches!(
            Sysfs::numa_node(&dir("neg_0")),
            Err(AffinityError::BadNode { .. })
        ));
        assert_eq!(
            s.device_cpus(&dir("efa_0")).unwrap().map(|c| c.to_string()),
            Some("4-7,12".into())
        );
        assert_eq!(s.device_cpus(&dir("vm_0")), Ok(None));

        let all = CpuSet::parse("0-15").unwrap();
        let policy = Affinity::DeviceNuma;
        let one = policy.resolve(&s, &[dir("efa_1")], &all).unwrap();
        assert_eq!(one.map(|c| c.to_string()), Some("0-3".into()));
        let both = policy
            .resolve(&s, &[dir("efa_0"), dir("efa_1"), dir("vm_0")], &all)
            .unwrap();
        assert_eq!(both.map(|c| c.to_string()), Some("0-7,12".into()));
        // Cut to what the thread may use; nothing left means no pinning.
        let allowed = CpuSet::parse("2-5").unwrap();
        let cut = policy.resolve(&s, &[dir("efa_0"), dir("efa_1")], &allowed);
        assert_eq!(cut.unwrap().map(|c| c.to_string()), Some("2-5".into()));
        let none = CpuSet::parse("8-11").unwrap();
        assert_eq!(policy.resolve(&s, &[dir("efa_1")], &none), Ok(None));
        assert_eq!(policy.resolve(&s, &[dir("vm_0")], &all), Ok(None));
        assert_eq!(policy.resolve::<PathBuf>(&s, &[], &all), Ok(None));
        assert!(policy.resolve(&s, &[dir("bad_0")], &all).is_err());
        // A node the tree lacks, or a bad cpulist.
        t.file("class/infiniband/far_0/device/numa_node", "3");
        assert_eq!(policy.resolve(&s, &[dir("far_0")], &all), Ok(None));
        t.file("devices/system/node/node3/cpulist", "0-x");
        let e = policy.resolve(&s, &[dir("far_0")], &all).unwrap_err();
        assert!(
            matches!(&e, AffinityError::BadCpuList { path, .. } if path.ends_with("node3/cpulist")),
            "{e:?}"
        );

        assert_eq!(Affinity::None.resolve(&s, &[dir("efa_0")], &all), Ok(None));
        let two = CpuSet::parse("2").unwrap();
        assert_eq!(
            Affinity::Cpus(two).resolve(&s, &[dir("efa_0")], &all),
            Ok(Some(two))
        );
        assert_eq!(
            Affinity::Cpus(CpuSet::new()).resolve::<PathBuf>(&s, &[], &all),
            Err(AffinityError::Empty)
        );
    }

    #[test]
    fn pinning_the_current_thread_is_read_back() {
        let allowed = current_thread_cpus().unwrap();
        assert!(!allowed.is_empty());
        let last = allowed.iter().last().unwrap();
        let one = CpuSet::from_cpus([last]).unwrap();
        // In a thread of its own, so the test harness's thread keeps its cpus.
        let seen = std::thread::spawn(move || {
            pin_current_thread(&one).unwrap();
            current_thread_cpus().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(seen, one);
        assert_eq!(
            pin_current_thread(&CpuSet::new()),
            Err(AffinityError::Empty)
        );
        // A cpu this machine does not have: refused, with the set and the errno.
        let absent = (0..MAX_CPUS).rev().find(|c| !allowed.contains(*c)).unwrap();
        let set = CpuSet::from_cpus([absent]).unwrap();
        let e = std::thread::spawn(move || pin_current_thread(&set))
            .join()
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&e, AffinityError::Pin { cpus, source } if **cpus == set && source.raw_os_error() == Some(libc::EINVAL)),
            "{e:?}"
        );
    }

    #[test]
    fn spawned_threads_are_pinned_before_they_run_or_refused() {
        let allowed = current_thread_cpus().unwrap();
        let first = CpuSet::from_cpus([allowed.iter().next().unwrap()]).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = spawn_pinned("pinned-test", Some(first), move || {
            tx.send(current_thread_cpus().unwrap()).unwrap();
        })
        .unwrap();
        h.join().unwrap();
        assert_eq!(rx.recv().unwrap(), first);

        let absent = (0..MAX_CPUS).rev().find(|c| !allowed.contains(*c)).unwrap();
        let set = CpuSet::from_cpus([absent]).unwrap();
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = ran.clone();
        let e = spawn_pinned("pinned-test", Some(set), move || {
            r.store(true, std::sync::atomic::Ordering::SeqCst);
        })
        .unwrap_err();
        assert!(matches!(e, AffinityError::Pin { .. }), "{e:?}");
        assert!(
            !ran.load(std::sync::atomic::Ordering::SeqCst),
            "f never ran"
        );
    }
}
