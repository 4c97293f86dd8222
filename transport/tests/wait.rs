//! A waiting thread gives its core back: a `Worker::wait` on a batch that does not complete for
//! 2 s uses under 2% of a core in the adaptive (default) and block modes, and so does a thread
//! waiting 2 s for a notification; measured as the thread's CPU time from `getrusage` (a bound,
//! not a timing assertion).

mod common;
#[path = "common/usage.rs"]
mod usage;

use std::time::{Duration, Instant};

use common::*;
use transport::fabric::sim::{SimConfig, SimFaults};
use transport::*;
use usage::thread_usage;

/// Waits `window` in `mode` on a WRITE to a dead peer (which would fail only after a minute);
/// returns the CPU time the waiting thread used.
fn cpu_of_a_wait(mode: WaitMode, window: Duration) -> Duration {
    let c = Cluster::new();
    let sim = SimConfig {
        faults: SimFaults {
            unresp_timeout: Duration::from_secs(60),
            ..SimFaults::default()
        },
        ..SimConfig::default()
    };
    let (a, _) = c.engine("a", sim.clone());
    let (b, b_fabric) = c.engine("b", sim);
    let (src, remote) = write_path(&a, &b);
    b_fabric.set_alive(false);
    let mut w = a.worker().unwrap();
    w.set_wait_mode(mode);
    assert_eq!(w.wait_mode(), mode);
    let batch = a.allocate_batch(1).unwrap();
    w.submit(batch, &[Request::write(src, 0, remote, 0, 4096)])
        .unwrap();
    let (t0, cpu0) = (Instant::now(), thread_usage().0);
    let st = w.wait(batch, window).unwrap();
    let (elapsed, cpu) = (t0.elapsed(), thread_usage().0 - cpu0);
    assert_eq!(st.timed_out, 1, "{st:?}");
    assert!(elapsed >= window, "returned after {elapsed:?}");
    println!("{mode:?}: {cpu:?} of CPU over {elapsed:?}");
    cpu
}

#[test]
fn a_long_wait_uses_under_two_percent_of_a_core() {
    let window = Duration::from_secs(2);
    for mode in [WaitMode::default(), WaitMode::Block] {
        let cpu = cpu_of_a_wait(mode, window);
        assert!(cpu < window / 50, "{mode:?} used {cpu:?} over {window:?}");
    }
}

#[test]
fn engine_config_sets_the_mode_of_new_workers() {
    let c = Cluster::new();
    let mut cfg = EngineConfig::new("a");
    cfg.wait = WaitMode::Busy;
    let (a, _) = c.engine_with(cfg, SimConfig::default());
    assert_eq!(a.worker().unwrap().wait_mode(), WaitMode::Busy);
    let (b, _) = c.engine("b", SimConfig::default());
    assert_eq!(b.worker().unwrap().wait_mode(), WaitMode::default());
}

/// A thread waiting for a notification that comes 2 s later sleeps meanwhile: under 2% of a
/// core (its thread's CPU time from getrusage, a bound), and its wait ends with the arrival.
#[test]
fn a_notification_wait_sleeps_until_the_arrival() {
    let window = Duration::from_secs(2);
    let c = Cluster::new();
    let (a, _) = c.engine("a", SimConfig::default());
    let (b, _) = c.engine("b", SimConfig::default());
    let (src, remote) = write_path(&a, &b);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let (t0, cpu0) = (Instant::now(), thread_usage().0);
            let seen = b.notifications().wait_for(3, 1, Duration::from_secs(60));
            (seen, t0.elapsed(), thread_usage().0 - cpu0)
        });
        std::thread::sleep(window);
        let mut w = a.worker().unwrap();
        let batch = a.allocate_batch(1).unwrap();
        let write = Request::write(src, 0, remote, 0, 64).with_op(Opcode::WriteWithNotify(3));
        w.submit(batch, &[write]).unwrap();
        assert_eq!(w.wait(batch, Duration::from_secs(10)).unwrap().completed, 1);
        let (seen, elapsed, cpu) = waiter.join().unwrap();
        println!("notification wait: {cpu:?} of CPU over {elapsed:?}");
        assert_eq!(seen.unwrap(), 1);
        assert!(
            elapsed >= window,
            "returned after {elapsed:?}, before the arrival"
        );
        assert!(cpu < window / 50, "used {cpu:?} over {elapsed:?}");
    });
}
