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
    fn busy_thread_uses_cpu_and_sleeping_thread_does_not() {
        let (c0, t0) = (thread_cpu(), Instant::now());
        let mut x = 0u64;
        while t0.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let spun = percent(thread_cpu() - c0, t0.elapsed());
        assert!(
            spun > 20.0,
            "a spinning thread should show CPU use, got {spun:.1}%"
        );

        let (c0, t0) = (thread_cpu(), Instant::now());
        std::thread::sleep(Duration::from_millis(200));
        let slept = percent(thread_cpu() - c0, t0.elapsed());
        assert!(
            slept < spun,
            "sleeping ({slept:.1}%) should use less CPU than spinning ({spun:.1}%)"
        );
    }
}
