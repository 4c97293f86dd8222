//! The etcd metadata service against a real etcd server (`etcd` from Debian's etcd-server,
//! started per test on free loopback ports): publish, lookup, remove, the ownership rule,
//! leases, watches, connection strings; and three engine processes over the tcp fabric where
//! one is stopped (its lease expires) and then killed: every request of the survivors to it
//! ends `PeerGone` within the lease TTL plus 1 s, their other transfers go on, and the
//! restarted peer is used again.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::etcd::EtcdServer;
use common::process;
use transport::fabric::tcp::{TcpConfig, TcpFabric};
use transport::metadata::MetadataSpec;
use transport::*;

/// Lease TTL of every engine here (etcd's minimum with default timing is 2 s).
const TTL: Duration = Duration::from_secs(2);

fn desc(name: &str, engine: &str, rev: u64) -> SegmentDescriptor {
    SegmentDescriptor {
        revision: rev,
        name: name.into(),
        fabric: "tcp".into(),
        engine: engine.into(),
        location: Location::Cpu(0),
        access: Access::REMOTE_READ,
        base: 4096,
        len: 10,
        rails: vec![],
        alternates: vec![],
    }
}

fn config(server: &EtcdServer, prefix: &str) -> EtcdConfig {
    let mut c = EtcdConfig::new(vec![server.endpoint.clone()]);
    c.prefix = prefix.into();
    c.lease_ttl = TTL;
    c
}

fn meta(server: &EtcdServer, prefix: &str) -> EtcdMetadata {
    EtcdMetadata::connect(config(server, prefix)).unwrap()
}

/// A watch callback that reports on a channel.
fn notifier() -> (metadata::OnGone, Receiver<Instant>) {
    let (tx, rx) = channel();
    (
        Box::new(move || {
            let _ = tx.send(Instant::now());
        }),
        rx,
    )
}

#[test]
fn publish_lookup_remove_and_the_ownership_rule() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let (m1, m2) = (meta(&server, "/t/"), meta(&server, "/t/"));
    assert_eq!(
        m2.lookup("a/kv"),
        Err(MetadataError::NotFound("a/kv".into()))
    );
    m1.publish(&desc("a/kv", "a", 1)).unwrap();
    assert_eq!(m2.lookup("a/kv").unwrap(), desc("a/kv", "a", 1));
    m1.publish(&desc("a/kv", "a", 2)).unwrap();
    assert_eq!(m2.lookup("a/kv").unwrap().revision, 2);
    // Another engine may not take the name...
    assert_eq!(
        m2.publish(&desc("a/kv", "b", 9)),
        Err(MetadataError::Conflict {
            name: "a/kv".into(),
            owner: "a".into()
        })
    );
    assert_eq!(m2.lookup("a/kv").unwrap().engine, "a");
    // ...but the same engine name from another instance (a restart) takes it over, and the
    // old instance can no longer withdraw it.
    m2.publish(&desc("a/kv", "a", 1)).unwrap();
    assert_eq!(m1.lookup("a/kv").unwrap().revision, 1);
    assert!(!m1.remove("a/kv").unwrap());
    assert!(m1.lookup("a/kv").is_ok());
    assert!(m2.remove("a/kv").unwrap());
    assert!(!m2.remove("a/kv").unwrap());
    assert!(matches!(m1.lookup("a/kv"), Err(MetadataError::NotFound(_))));
    // Prefixes keep deployments apart.
    m1.publish(&desc("x", "a", 1)).unwrap();
    assert!(matches!(
        meta(&server, "/other/").lookup("x"),
        Err(MetadataError::NotFound(_))
    ));
}

#[test]
fn the_lease_keeps_descriptors_and_dropping_withdraws_them() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let (m1, m2) = (meta(&server, "/t/"), meta(&server, "/t/"));
    m1.publish(&desc("a/kv", "a", 1)).unwrap();
    // More than two TTLs: only the keep-alive keeps the key.
    std::thread::sleep(TTL * 2 + TTL / 2);
    assert!(m1.lease_alive());
    assert_eq!(m2.lookup("a/kv").unwrap(), desc("a/kv", "a", 1));
    drop(m1);
    // Revoked on drop: gone at once, not after the TTL.
    assert!(matches!(m2.lookup("a/kv"), Err(MetadataError::NotFound(_))));
}

#[test]
fn watches_report_removal_replacement_and_lease_expiry() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let (m1, m2) = (meta(&server, "/t/"), meta(&server, "/t/"));
    let quiet = Duration::from_millis(500);

    // Removed.
    m1.publish(&desc("a/1", "a", 1)).unwrap();
    let (cb, rx) = notifier();
    let _w1 = m2.watch(&desc("a/1", "a", 1), cb).unwrap();
    assert!(rx.recv_timeout(quiet).is_err(), "no event yet");
    // The same descriptor written again is no change.
    m1.publish(&desc("a/1", "a", 1)).unwrap();
    assert!(
        rx.recv_timeout(quiet).is_err(),
        "no event for the same descriptor"
    );
    m1.remove("a/1").unwrap();
    rx.recv_timeout(Duration::from_secs(5))
        .expect("removal seen");

    // Replaced (the owner re-registered or restarted).
    m1.publish(&desc("a/2", "a", 1)).unwrap();
    let (cb, rx) = notifier();
    let _w2 = m2.watch(&desc("a/2", "a", 1), cb).unwrap();
    m1.publish(&desc("a/2", "a", 2)).unwrap();
    rx.recv_timeout(Duration::from_secs(5))
        .expect("replacement seen");

    // Already gone when the watch starts: reported before `watch` returns.
    let (cb, rx) = notifier();
    let _w3 = m2.watch(&desc("a/3", "a", 1), cb).unwrap();
    rx.try_recv().expect("reported at once");
    m1.publish(&desc("a/4", "a", 1)).unwrap();
    let (cb, rx) = notifier();
    let _w4 = m2.watch(&desc("a/4", "a", 7), cb).unwrap();
    rx.try_recv()
        .expect("another revision than the one opened is gone at once");

    // A dropped guard ends the watch.
    let (cb, rx) = notifier();
    drop(m2.watch(&desc("a/4", "a", 1), cb).unwrap());
    m1.remove("a/4").unwrap();
    assert!(
        rx.recv_timeout(quiet).is_err(),
        "no event after the guard dropped"
    );

    // Lease expiry: a descriptor under a lease nobody renews.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bytes = desc("a/5", "a", 1).encode().unwrap();
    let endpoint = server.endpoint.clone();
    rt.block_on(async move {
        let mut c = etcd_client::Client::connect([endpoint], None)
            .await
            .unwrap();
        let lease = c
            .lease_grant(TTL.as_secs() as i64, None)
            .await
            .unwrap()
            .id();
        let opts = etcd_client::PutOptions::new().with_lease(lease);
        c.put("/t/a/5", bytes, Some(opts)).await.unwrap();
    });
    let start = Instant::now();
    let (cb, rx) = notifier();
    let _w5 = m2.watch(&desc("a/5", "a", 1), cb).unwrap();
    let seen = rx
        .recv_timeout(TTL + Duration::from_secs(5))
        .expect("expiry seen");
    let after = seen - start;
    println!("lease expiry seen after {after:?} (TTL {TTL:?})");
    assert!(after <= TTL + Duration::from_secs(1), "{after:?}");
    assert!(matches!(m2.lookup("a/5"), Err(MetadataError::NotFound(_))));

    // A value that is not a descriptor is a typed error naming the segment.
    let endpoint = server.endpoint.clone();
    rt.block_on(async move {
        let mut c = etcd_client::Client::connect([endpoint], None)
            .await
            .unwrap();
        c.put("/t/junk", b"not a descriptor".to_vec(), None)
            .await
            .unwrap();
    });
    match m2.lookup("junk") {
        Err(MetadataError::Corrupt { name, .. }) => assert_eq!(name, "junk"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        m2.publish(&desc("junk", "a", 1)),
        Err(MetadataError::Corrupt { .. })
    ));
}

/// An etcd restart is no peer death: the keep-alive and the watch reconnect, the descriptor
/// stays, no watch fires; the resumed watch still sees a later removal.
#[test]
fn an_etcd_restart_reports_no_peer_gone() {
    let Some(mut server) = EtcdServer::start() else {
        return;
    };
    let (m1, m2) = (meta(&server, "/t/"), meta(&server, "/t/"));
    m1.publish(&desc("a/kv", "a", 1)).unwrap();
    let (cb, rx) = notifier();
    let _w = m2.watch(&desc("a/kv", "a", 1), cb).unwrap();
    server.restart(Duration::from_millis(500));
    // Two TTLs: the lease lives only if the keep-alive reconnected.
    assert!(
        rx.recv_timeout(TTL * 2).is_err(),
        "a restart is no peer death"
    );
    assert!(m1.lease_alive());
    assert_eq!(m2.lookup("a/kv").unwrap(), desc("a/kv", "a", 1));
    m1.remove("a/kv").unwrap();
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the resumed watch sees the removal");
}

#[test]
fn connection_strings_and_unreachable_servers() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let m = discovery::connect(&server.url(), "e").unwrap();
    m.publish(&desc("e/kv", "e", 1)).unwrap();
    assert_eq!(m.lookup("e/kv").unwrap().engine, "e");
    assert_eq!(
        MetadataSpec::parse(&format!("{},127.0.0.1:1", server.url())).unwrap(),
        MetadataSpec::Etcd {
            endpoints: vec![server.endpoint.clone(), "127.0.0.1:1".into()]
        }
    );
    let e = discovery::connect("etcd:/127.0.0.1:2379", "e")
        .err()
        .unwrap();
    assert!(matches!(e, MetadataError::BadSpec { .. }), "{e:?}");
    // Nothing listens on port 1: a typed error within the timeout, not a hang.
    let mut c = EtcdConfig::new(vec!["127.0.0.1:1".into()]);
    c.timeout = Duration::from_millis(500);
    let start = Instant::now();
    let e = EtcdMetadata::connect(c).err().unwrap();
    assert!(
        matches!(
            e,
            MetadataError::Service { .. } | MetadataError::Timeout { .. }
        ),
        "{e:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    let mut c = EtcdConfig::new(vec![server.endpoint.clone()]);
    c.lease_ttl = Duration::from_millis(10);
    assert!(matches!(
        EtcdMetadata::connect(c),
        Err(MetadataError::Config(_))
    ));
}

// ---- three engine processes -------------------------------------------------------------

const ROLE: &str = "TRANSPORT_ETCD_PEER";
const ENDPOINT: &str = "TRANSPORT_ETCD_ENDPOINT";
const KV_LEN: usize = 1 << 20;
const XFER: u64 = 64 << 10;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// One engine: an exposed `kv` segment, a source and a scratch buffer, its opened peers.
struct Node {
    name: String,
    engine: Engine,
    worker: Worker,
    src: SegmentId,
    dst: SegmentId,
    opened: HashMap<String, RemoteSegment>,
}

impl Node {
    fn new(name: &str, endpoint: &str) -> Node {
        let tcp = TcpConfig {
            // Far beyond the lease TTL: a stopped peer's requests can only end PeerGone here.
            timeout: Duration::from_secs(30),
            ..TcpConfig::default()
        };
        let fabric = TcpFabric::new(tcp).unwrap();
        let mut c = EtcdConfig::new(vec![endpoint.to_string()]);
        c.lease_ttl = TTL;
        let meta = Arc::new(EtcdMetadata::connect(c).unwrap());
        let engine = Engine::new(EngineConfig::new(name), fabric, meta).unwrap();
        let kv = OwnedMemory::zeroed(KV_LEN, 4096).unwrap();
        let rw = Access::REMOTE_READ_WRITE;
        engine
            .register_owned(&format!("{name}/kv"), kv, Location::Cpu(0), rw)
            .unwrap();
        let seed = name.as_bytes()[0];
        let src = OwnedMemory::from_vec(pattern(seed, XFER as usize)).unwrap();
        let src = engine
            .register_owned(&format!("{name}/src"), src, Location::Cpu(0), Access::NONE)
            .unwrap();
        let dst = OwnedMemory::zeroed(XFER as usize, 4096).unwrap();
        let dst = engine
            .register_owned(&format!("{name}/dst"), dst, Location::Cpu(0), Access::NONE)
            .unwrap();
        Node {
            name: name.into(),
            worker: engine.worker().unwrap(),
            engine,
            src,
            dst,
            opened: HashMap::new(),
        }
    }

    fn remote(&mut self, peer: &str) -> Result<RemoteSegment, TransportError> {
        if let Some(&r) = self.opened.get(peer) {
            return Ok(r);
        }
        let r = self.engine.open_segment(&format!("{peer}/kv"))?;
        self.opened.insert(peer.into(), r);
        Ok(r)
    }

    /// Forgets the handle of `peer` (a restarted peer is opened anew).
    fn reopen(&mut self, peer: &str) {
        if let Some(r) = self.opened.remove(peer) {
            let _ = self.engine.close_segment(r);
        }
    }

    /// WRITEs this node's pattern into `peer`'s segment (at this node's own offset), READs it
    /// back and compares.
    fn xfer(&mut self, peer: &str) -> Result<(), String> {
        let r = self.remote(peer).map_err(|e| e.to_string())?;
        let off = (self.name.as_bytes()[0] as u64 % 8) * XFER;
        for req in [
            Request::write(self.src, 0, r, off, XFER),
            Request::read(self.dst, 0, r, off, XFER),
        ] {
            let b = self.engine.allocate_batch(1).unwrap();
            self.worker.submit(b, &[req]).map_err(|e| e.to_string())?;
            let st = self.worker.wait(b, Duration::from_secs(10)).unwrap();
            if !st.all_completed() {
                let why = self.engine.request_status(b, 0).unwrap();
                return Err(format!("{peer}: {st:?} {why:?}"));
            }
            self.engine.free_batch(b).unwrap();
        }
        let mut got = vec![0u8; XFER as usize];
        self.engine.read_owned(self.dst, 0, &mut got).unwrap();
        let want = pattern(self.name.as_bytes()[0], XFER as usize);
        (got == want)
            .then_some(())
            .ok_or_else(|| format!("{peer}: data differs"))
    }

    /// Submits `n` WRITEs to `peer` and waits (20 s at most); returns the batch, the time the
    /// wait took and each request's status.
    fn stuck(&mut self, peer: &str, n: usize) -> (BatchId, Duration, Vec<RequestStatus>) {
        let r = self.remote(peer).unwrap();
        let b = self.engine.allocate_batch(n).unwrap();
        let reqs: Vec<Request> = (0..n as u64)
            .map(|i| Request::write(self.src, 0, r, i * 4096, 4096))
            .collect();
        let start = Instant::now();
        self.worker.submit(b, &reqs).unwrap();
        self.worker.wait(b, Duration::from_secs(20)).unwrap();
        let took = start.elapsed();
        let st = (0..n)
            .map(|i| self.engine.request_status(b, i).unwrap())
            .collect();
        (b, took, st)
    }
}

/// The peer process: a [`Node`] answering commands on stdin (`xfer P`, `stuck P N`,
/// `reopen P`) until stdin closes or 120 s pass.
#[test]
#[ignore = "peer process body: started by three_engines_and_a_peer_gone"]
fn etcd_peer_main() {
    let (Ok(name), Ok(endpoint)) = (std::env::var(ROLE), std::env::var(ENDPOINT)) else {
        return;
    };
    let mut node = Node::new(&name, &endpoint);
    println!("PEER_READY");
    std::io::stdout().flush().unwrap();
    let rx = process::lines_of(std::io::stdin());
    let end = Instant::now() + Duration::from_secs(120);
    while let Ok(line) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let reply = match w.as_slice() {
            ["xfer", peer] => match node.xfer(peer) {
                Ok(()) => "ok".to_string(),
                Err(e) => format!("err {e}"),
            },
            ["stuck", peer, n] => {
                let (_, took, st) = node.stuck(peer, n.parse().unwrap());
                let gone = st
                    .iter()
                    .filter(|s| **s == RequestStatus::Failed(FailReason::PeerGone))
                    .count();
                format!("{} {gone} {st:?}", took.as_millis())
            }
            ["reopen", peer] => {
                node.reopen(peer);
                "ok".to_string()
            }
            _ => format!("bad command {line:?}"),
        };
        println!("PEER_REPLY {reply}");
        std::io::stdout().flush().unwrap();
    }
}

/// A peer process, killed on drop.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Peer {
    fn spawn(name: &str, endpoint: &str) -> Peer {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args(["--exact", "etcd_peer_main", "--ignored", "--nocapture"])
            .env(ROLE, name)
            .env(ENDPOINT, endpoint)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = process::lines_of(child.stdout.take().unwrap());
        let peer = Peer {
            stdin: child.stdin.take().unwrap(),
            child,
            lines,
        };
        peer.expect("PEER_READY");
        peer
    }

    fn expect(&self, prefix: &str) -> String {
        process::expect_line(&self.lines, prefix)
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn ask(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.expect("PEER_REPLY ")
    }

    fn signal(&self, sig: i32) {
        process::signal(self.child.id(), sig);
    }

    /// SIGSTOP, returning once `/proc` shows the process stopped.
    fn stop(&self) {
        process::stop(self.child.id());
    }

    fn kill9(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every request of both survivors to the stopped peer ends `PeerGone` within TTL + 1 s of
/// the stop.
///
/// Why stop before kill: a `kill -9` closes the peer's sockets, so on tcp the requests in
/// flight to it fail at once with `IO` (connection reset), before any lease could expire. A
/// stopped process keeps its sockets open and answers nothing (a hung node, or one cut off
/// by the network): its requests would wait for the fabric's timeout (set to 30 s here), and
/// its lease stops being renewed. So the requests submitted after the stop can only end by
/// the lease expiring; that is what is asserted, and timed from the stop.
#[test]
fn three_engines_and_a_peer_gone() {
    let Some(server) = EtcdServer::start() else {
        return;
    };
    let ep = server.endpoint.clone();
    let mut a = Node::new("a", &ep);
    let mut b = Peer::spawn("b", &ep);
    let mut c = Peer::spawn("c", &ep);

    // Transfers among all three.
    a.xfer("b").unwrap();
    a.xfer("c").unwrap();
    for (p, peers) in [(&mut b, ["a", "c"]), (&mut c, ["a", "b"])] {
        for peer in peers {
            assert_eq!(p.ask(&format!("xfer {peer}")), "ok");
        }
    }

    // c hangs: both survivors' requests to it end PeerGone once its lease expires.
    c.stop();
    let t0 = Instant::now();
    b.send("stuck c 8");
    let (stuck, took_a, st) = a.stuck("c", 8);
    let seen_a = t0.elapsed();
    assert!(
        st.iter()
            .all(|s| *s == RequestStatus::Failed(FailReason::PeerGone)),
        "{st:?}"
    );
    let reply = b.expect("PEER_REPLY ");
    let seen_b = t0.elapsed();
    let gone_b: usize = reply.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(gone_b, 8, "b: {reply}");
    println!(
        "peer gone: a's 8 requests failed PEER_GONE {seen_a:?} after the stop (wait {took_a:?}), \
         b's {seen_b:?} after (lease TTL {TTL:?})"
    );
    let bound = TTL + Duration::from_secs(1);
    assert!(seen_a <= bound && seen_b <= bound, "{seen_a:?} {seen_b:?}");

    // New requests to it are refused; its name is no longer published.
    let rc = a.remote("c").unwrap();
    let batch = a.engine.allocate_batch(1).unwrap();
    let e = a
        .worker
        .submit(batch, &[Request::write(a.src, 0, rc, 0, 8)])
        .unwrap_err();
    assert!(
        matches!(e, TransportError::PeerGone { index: 0, .. }),
        "{e:?}"
    );
    a.engine.free_batch(batch).unwrap();
    assert!(matches!(
        a.engine.open_segment("c/kv"),
        Err(TransportError::SegmentNotFound(_))
    ));

    // The survivors' other transfers go on.
    a.xfer("b").unwrap();
    assert_eq!(b.ask("xfer a"), "ok");

    // kill -9; the late completions of the failed requests are absorbed: each request ended
    // once, and the batch drains and frees.
    c.kill9();
    let st = a.worker.drain(stuck, Duration::from_secs(20)).unwrap();
    assert_eq!((st.failed, st.completed, st.pending), (8, 0, 0), "{st:?}");
    assert_eq!(st.in_flight, 0, "{st:?}");
    a.engine.free_batch(stuck).unwrap();

    // The restarted c (same name, new process) is used again.
    let mut c = Peer::spawn("c", &ep);
    a.reopen("c");
    a.xfer("c").unwrap();
    assert_eq!(b.ask("reopen c"), "ok");
    assert_eq!(b.ask("xfer c"), "ok");
    assert_eq!(c.ask("xfer a"), "ok");
    assert_eq!(c.ask("xfer b"), "ok");

    // kill -9 without a stop: the fabric sees the connection reset first, so requests end
    // with the fabric's own failure at once (UNRESP_REMOTE on tcp); the lease expiry follows,
    // and from then on new requests are refused as PeerGone, within TTL + 1 s of the kill.
    let t1 = Instant::now();
    c.kill9();
    let (batch, _, st) = a.stuck("c", 8);
    assert!(
        st.iter().all(|s| matches!(s, RequestStatus::Failed(_))),
        "{st:?}"
    );
    a.worker.drain(batch, Duration::from_secs(10)).unwrap();
    a.engine.free_batch(batch).unwrap();
    let refused = loop {
        let batch = a.engine.allocate_batch(1).unwrap();
        let req = Request::write(a.src, 0, a.remote("c").unwrap(), 0, 8);
        let r = a.worker.submit(batch, &[req]);
        a.worker.drain(batch, Duration::from_secs(10)).unwrap();
        a.engine.free_batch(batch).unwrap();
        match r {
            Err(TransportError::PeerGone { .. }) => break t1.elapsed(),
            Ok(_) if t1.elapsed() < TTL * 3 => std::thread::sleep(Duration::from_millis(20)),
            other => panic!("{other:?} {:?} after the kill", t1.elapsed()),
        }
    };
    println!(
        "kill -9: the 8 requests ended {st:?}; new requests refused PEER_GONE {refused:?} after the kill"
    );
    assert!(refused <= bound, "{refused:?}");
}
