//! The tcp fabric's data port under a flood of connections that never say hello: they do not
//! get a thread each, and they are dropped in bounded time. (Alone in its binary: it counts
//! the process's service threads.)

use std::net::TcpStream;
use std::time::{Duration, Instant};

use transport::fabric::tcp::{TcpConfig, TcpFabric};
use transport::fabric::Fabric;

/// Threads of this process named `tcp-service`.
fn service_threads() -> usize {
    let tasks = std::fs::read_dir("/proc/self/task").unwrap();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "tcp-service")
        .count()
}

/// Polls `f` until it holds or 30 s pass; returns whether it held.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn silent_connections_are_capped_and_timed_out() {
    let fabric = TcpFabric::new(TcpConfig::default()).unwrap();
    let addr = fabric.local_addr();
    let silent: Vec<TcpStream> = (0..400)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    assert!(
        eventually(|| fabric.stats().connections >= 400),
        "{:?}",
        fabric.stats()
    );
    let threads = service_threads();
    assert!(
        threads <= 64,
        "{threads} service threads for 400 silent connections"
    );
    // Refused ones were told so at once.
    assert!(fabric.stats().refused > 0, "{:?}", fabric.stats());
    // They are dropped once the greeting time is over, and the port serves again.
    assert!(
        eventually(|| service_threads() == 0),
        "{}",
        service_threads()
    );
    drop(silent);
    let other = TcpFabric::new(TcpConfig::default()).unwrap();
    let peer = other.connect(&fabric.local_addresses());
    assert!(peer.is_ok(), "{peer:?}");

    // A peer refused at the limit is told why.
    let small = TcpFabric::new(TcpConfig {
        max_connections: 4,
        connect_timeout: Duration::from_secs(60),
        ..TcpConfig::default()
    })
    .unwrap();
    let squatter = TcpStream::connect(small.local_addr()).unwrap();
    assert!(eventually(|| small.stats().connections == 1));
    let e = other.connect(&small.local_addresses()).unwrap_err();
    assert!(e.to_string().contains("connection limit"), "{e}");
    drop(squatter);
    assert!(
        eventually(|| other.connect(&small.local_addresses()).is_ok()),
        "{:?}",
        small.stats()
    );
}
