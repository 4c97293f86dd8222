//! CPU accounting: user+system CPU time over wall time, for the whole process or one thread, and
//! each core's busy share of the machine over a run (mpstat's figure, from /proc/stat).
//!
//! perftest reports CPU use from /proc/stat (the whole machine); here each side measures its own use, so two
//! sides in one process (loopback) can still be told apart when they run on their own threads. The
//! per-core figures show the rest: which cores the run kept busy, the device's kernel work included.

use std::time::Duration;
#[cfg(test)]
use std::time::Instant;

/// What a CPU reading covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every thread of this process.
    Process,
    /// The calling thread only.
    Thread,
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec.max(0) as u64) + Duration::from_micros(tv.tv_usec.max(0) as u64)
}

fn cpu_time(scope: Scope) -> Duration {
    let who = match scope {
        Scope::Process => libc::RUSAGE_SELF,
        Scope::Thread => libc::RUSAGE_THREAD,
    };
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` into the pointer, which points at a zeroed, properly aligned local.
    let rc = unsafe { libc::getrusage(who, usage.as_mut_ptr()) };
    if rc != 0 {
        return Duration::ZERO;
    }
    // SAFETY: the struct was zero-initialised (a valid `rusage`) and getrusage succeeded.
    let usage = unsafe { usage.assume_init() };
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

/// CPU time (user + system) used so far by the calling thread.
pub fn thread_cpu() -> Duration {
    cpu_time(Scope::Thread)
}

/// CPU time (user + system) used so far by the whole process.
pub fn process_cpu() -> Duration {
    cpu_time(Scope::Process)
}

/// CPU time over wall time, in percent of one core.
pub fn percent(cpu: Duration, wall: Duration) -> f64 {
    if wall.is_zero() {
        0.0
    } else {
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
    }
}

/// Each core's busy and total time from /proc/stat, in clock ticks: what mpstat samples.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoreTimes {
    /// `(busy, total)` per core, in the order of /proc/stat's `cpuN` lines (by cpu number).
    cores: Vec<(u32, u64, u64)>,
}

impl CoreTimes {
    /// The machine's cores now; `None` where /proc/stat cannot be read.
    pub fn now() -> Option<Self> {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .map(|t| Self::parse(&t))
    }

    /// The `cpuN` lines of a /proc/stat text: busy is every field but idle and iowait.
    pub fn parse(text: &str) -> Self {
        let cores = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let n: u32 = f.next()?.strip_prefix("cpu")?.parse().ok()?;
                let v: Vec<u64> = f.map_while(|x| x.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal (guest time is inside user).
                let total: u64 = v.iter().take(8).sum();
                let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
                Some((n, total - idle.min(total), total))
            })
            .collect();
        CoreTimes { cores }
    }

    /// Each core's busy share since `before`, in percent, as `(cpu, percent)`; cores without
    /// ticks in between (or missing before) are left out.
    pub fn busy_since(&self, before: &CoreTimes) -> Vec<(u32, f64)> {
        self.cores
            .iter()
            .filter_map(|&(n, busy, total)| {
                let &(_, b0, t0) = before.cores.iter().find(|c| c.0 == n)?;
                let dt = total.checked_sub(t0).filter(|&d| d > 0)?;
                let db = busy.saturating_sub(b0).min(dt);
                Some((n, db as f64 * 100.0 / dt as f64))
            })
            .collect()
    }
}

/// `cpu0 52.1%  cpu1 87.3%`: per-core busy shares for a report line.
pub fn cores_line(cores: &[(u32, f64)]) -> String {
    cores
        .iter()
        .map(|(n, p)| format!("cpu{n} {p:.1}%"))
        .collect::<Vec<_>>()
        .join("  ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT0: &str = "cpu  10 0 10 100 0 0 0 0 0 0\n\
                         cpu0 5 0 5 50 0 0 0 0 0 0\n\
                         cpu1 5 0 5 50 0 0 0 0 0 0\n\
                         intr 12345\nctxt 99\n";
    const STAT1: &str = "cpu  60 0 60 200 0 0 0 0 0 0\n\
                         cpu0 50 0 10 90 10 0 0 0 0 0\n\
                         cpu1 5 0 5 150 0 0 0 0 0 0\n\
                         cpu2 1 0 1 1 0 0 0 0 0 0\n";

    #[test]
    fn per_core_busy_shares_from_proc_stat() {
        let (a, b) = (CoreTimes::parse(STAT0), CoreTimes::parse(STAT1));
        let busy = b.busy_since(&a);
        // cpu0: 50 of 100 ticks busy (iowait counts as idle); cpu1 idle; cpu2 new: left out.
        assert_eq!(busy, [(0, 50.0), (1, 0.0)]);
        assert_eq!(cores_line(&busy), "cpu0 50.0%  cpu1 0.0%");
        assert!(b.busy_since(&b).is_empty(), "no ticks in between");
        assert_eq!(
            CoreTimes::parse("garbage\ncpuX 1 2\n"),
            CoreTimes::default()
        );
    }

    #[test]
    fn this_machine_has_cores_in_proc_stat() {
        let t = CoreTimes::now().expect("/proc/stat");
        assert!(!t.cores.is_empty());
    }

    #[test]
    fn thread_cpu_time_follows_work_not_sleep() {
        // Work until the thread has been charged 50 ms (bounded in wall time for a loaded machine).
        let (c0, t0) = (thread_cpu(), Instant::now());
        let mut x = 0u64;
        while thread_cpu() - c0 < Duration::from_millis(50)
            && t0.elapsed() < Duration::from_secs(30)
        {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(
            thread_cpu() - c0 >= Duration::from_millis(50),
            "thread CPU time never advanced"
        );
        assert!(
            process_cpu() >= thread_cpu(),
            "the process includes this thread"
        );
        let c1 = thread_cpu();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            thread_cpu() - c1 < Duration::from_millis(50),
            "sleeping is not charged as CPU time"
        );
    }

    #[test]
    fn percent_of_one_core() {
        assert_eq!(
            percent(Duration::from_secs(1), Duration::from_secs(2)),
            50.0
        );
        assert_eq!(
            percent(Duration::from_secs(3), Duration::from_secs(1)),
            300.0
        );
        assert_eq!(percent(Duration::from_secs(1), Duration::ZERO), 0.0);
    }
}
