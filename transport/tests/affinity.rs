//! Fabric threads follow the fabric config's `Affinity`: the tcp fabric's listener and the
//! service threads it starts run on the cpus given, the engine reports them, and a set the kernel
//! refuses fails the fabric by name. (The efa fabric's target thread: `efa_hw`, on soft-efa.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use transport::affinity::{current_thread_cpus, Affinity, AffinityError, CpuSet, MAX_CPUS};
use transport::fabric::tcp::{TcpConfig, TcpFabric};
use transport::fabric::Fabric;
use transport::*;

/// The `Cpus_allowed_list` of each thread of this process called `name`.
fn allowed_lists(name: &str) -> Vec<CpuSet> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .expect("Cpus_allowed_list in status");
        out.push(list.trim().parse().unwrap());
    }
    out
}

/// Waits (bounded) until a thread called `name` shows up and returns the lists seen then.
fn await_threads(name: &str) -> Vec<CpuSet> {
    let start = Instant::now();
    loop {
        let lists = allowed_lists(name);
        if !lists.is_empty() || start.elapsed() > Duration::from_secs(10) {
            return lists;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One cpu of those this thread may use, and whether that is fewer than all of them (so a
/// thread on it differs from an unpinned one).
fn one_cpu() -> (CpuSet, bool) {
    let allowed = current_thread_cpus().unwrap();
    let last = allowed.iter().last().unwrap();
    (CpuSet::from_cpus([last]).unwrap(), allowed.len() > 1)
}

// One test: the thread names are per process, and other tests' fabrics would be counted.
#[test]
fn tcp_threads_run_on_the_cpus_given() {
    let (cpu, distinct) = one_cpu();
    if !distinct {
        eprintln!("note: this thread may use one cpu only; pinning cannot be told from none");
    }
    let fabric = TcpFabric::new(TcpConfig {
        affinity: Affinity::Cpus(cpu),
        ..TcpConfig::default()
    })
    .unwrap();
    assert_eq!(fabric.local_cpus(), Some(cpu));
    let lists = await_threads("tcp-listener");
    assert_eq!(lists, [cpu], "the listener thread is pinned");

    // A peer engine (unpinned) writes into the pinned one: the service thread that serves it is
    // started by the listener and inherits its cpus.
    let meta = Arc::new(LocalRegistry::new());
    let pinned = Engine::new(EngineConfig::new("pinned"), fabric, meta.clone()).unwrap();
    assert_eq!(pinned.local_cpus(), Some(cpu));
    let other = TcpFabric::new(TcpConfig {
        affinity: Affinity::None,
        ..TcpConfig::default()
    })
    .unwrap();
    assert_eq!(other.local_cpus(), None);
    let peer = Engine::new(EngineConfig::new("peer"), other, meta).unwrap();
    let sink = pinned
        .register_owned(
            "pinned/sink",
            OwnedMemory::zeroed(4096, 4096).unwrap(),
            Location::Cpu(0),
            Access::REMOTE_WRITE,
        )
        .unwrap();
    let src = peer
        .register_owned(
            "peer/src",
            OwnedMemory::from_vec(vec![9; 4096]).unwrap(),
            Location::Cpu(0),
            Access::NONE,
        )
        .unwrap();
    let remote = peer.open_segment("pinned/sink").unwrap();
    let mut worker = peer.worker().unwrap();
    let batch = peer.allocate_batch(1).unwrap();
    worker
        .submit(batch, &[Request::write(src, 0, remote, 0, 4096)])
        .unwrap();
    assert!(worker
        .wait(batch, Duration::from_secs(10))
        .unwrap()
        .all_completed());
    let mut out = [0u8; 16];
    pinned.read_owned(sink, 0, &mut out).unwrap();
    assert_eq!(out, [9; 16]);
    let services = await_threads("tcp-service");
    assert!(!services.is_empty(), "a service thread serves the peer");
    assert!(
        services.iter().all(|s| *s == cpu),
        "service threads inherit the listener's cpus: {services:?}"
    );
    drop((worker, batch));

    // The engine pins a worker's thread to its fabric's cpus.
    let seen = std::thread::scope(|s| {
        s.spawn(|| {
            assert_eq!(pinned.pin_current_thread().unwrap(), Some(cpu));
            current_thread_cpus().unwrap()
        })
        .join()
        .unwrap()
    });
    assert_eq!(seen, cpu);
    // With no cpus to follow, the thread is left as it is.
    let before = current_thread_cpus().unwrap();
    assert_eq!(peer.pin_current_thread().unwrap(), None);
    assert_eq!(current_thread_cpus().unwrap(), before);

    // The default policy: tcp has no device, so no NUMA node and no pinning.
    let default = TcpFabric::new(TcpConfig::default()).unwrap();
    assert_eq!(default.local_cpus(), None);

    // A cpu the machine lacks: the fabric is refused, naming the thread and the set.
    let allowed = current_thread_cpus().unwrap();
    let absent = (0..MAX_CPUS).rev().find(|c| !allowed.contains(*c)).unwrap();
    let set = CpuSet::from_cpus([absent]).unwrap();
    let e = TcpFabric::new(TcpConfig {
        affinity: Affinity::Cpus(set),
        ..TcpConfig::default()
    })
    .unwrap_err();
    match &e {
        FabricError::Affinity {
            fabric: "tcp",
            source: AffinityError::Pin { cpus, .. },
            ..
        } => assert_eq!(**cpus, set),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("listener"), "{e}");
    let e = TcpFabric::new(TcpConfig {
        affinity: Affinity::Cpus(CpuSet::new()),
        ..TcpConfig::default()
    })
    .unwrap_err();
    assert!(
        matches!(
            e,
            FabricError::Affinity {
                source: AffinityError::Empty,
                ..
            }
        ),
        "{e:?}"
    );
}
