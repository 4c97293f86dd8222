//! What the calling thread used, from `getrusage(RUSAGE_THREAD)`: a bound on a waiting
//! thread's cost, not a timing measure.

use std::time::Duration;

/// The calling thread's CPU time (user and system) and its voluntary context switches (the
/// times it slept).
pub fn thread_usage() -> (Duration, i64) {
    // SAFETY: all-zero is a valid rusage for the call to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid out-pointer; RUSAGE_THREAD is Linux's, for the calling thread.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    let cpu = Duration::from_secs((ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) as u64)
        + Duration::from_micros((ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) as u64);
    (cpu, ru.ru_nvcsw)
}
