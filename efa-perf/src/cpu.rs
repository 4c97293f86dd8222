//! CPU accounting: user+system CPU time over wall time, for the whole process or one thread.
//!
//! perftest reports CPU use from /proc/stat (the whole machine); here each side measures its own use, so two
//! sides in one process (loopback) can still be told apart when they run on their own threads.

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

#[cfg(test)]
mod tests {
    use super::*;

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
