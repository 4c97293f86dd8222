//! The discovery server under malformed and hostile clients: each is rejected (and counted),
//! and the server keeps answering well-behaved peers meanwhile.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use transport::discovery::wire::{self, Message, PeerHello};
use transport::discovery::{DiscoveryConfig, DiscoveryStats, PeerMetadata};
use transport::fabric::tcp::{TcpConfig, TcpFabric};
use transport::fabric::Fabric;
use transport::*;

fn desc(name: &str) -> SegmentDescriptor {
    SegmentDescriptor {
        revision: 1,
        name: name.into(),
        fabric: "tcp".into(),
        engine: "server".into(),
        location: Location::Cpu(0),
        access: Access::REMOTE_READ,
        base: 4096,
        len: 64,
        rails: vec![RailDescriptor {
            address: vec![1, 2],
            key: vec![3; 8],
        }],
        alternates: vec![],
    }
}

fn server() -> Arc<PeerMetadata> {
    let mut c = DiscoveryConfig::new("server");
    c.frame_timeout = Duration::from_millis(500);
    c.idle_timeout = Duration::from_secs(2);
    c.max_frame = 4096;
    let s = PeerMetadata::bind(c).unwrap();
    s.publish(&desc("seg")).unwrap();
    s
}

fn client() -> Arc<PeerMetadata> {
    PeerMetadata::bind(DiscoveryConfig::new("client")).unwrap()
}

/// Whether the server closed the connection (EOF or reset) within 5 s, after any reply.
fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue,
        }
    }
    false
}

fn hello_frame() -> Vec<u8> {
    wire::encode(&Message::Hello(PeerHello {
        engine: "x".into(),
        fabric: String::new(),
        addresses: vec![],
    }))
    .unwrap()
}

fn good_lookup_works(addr: SocketAddr) {
    let c = client();
    let d = c.fetch(&addr.to_string(), "seg").unwrap();
    assert_eq!(d, desc("seg"));
}

#[test]
fn discovery_rejects_hostile_handshakes_and_keeps_serving() {
    let s = server();
    let addr = s.local_addr();
    good_lookup_works(addr);
    let hello = hello_frame();

    let mut bad_magic = hello.clone();
    bad_magic[..4].copy_from_slice(b"HTTP");
    let mut bad_version = hello.clone();
    bad_version[4] = 9;
    let mut oversized = hello.clone();
    oversized[8..12].copy_from_slice(&(1u32 << 30).to_le_bytes());
    let truncated = hello[..hello.len() - 3].to_vec();
    let mut bad_kind = hello.clone();
    bad_kind[6] = 200;
    let lookup_first = wire::encode(&Message::Lookup("seg".into())).unwrap();
    let mut garbage_body = hello.clone();
    let n = garbage_body.len();
    garbage_body[12..n].fill(0xFF);

    let cases: [(&str, Vec<u8>); 7] = [
        ("bad magic", bad_magic),
        ("wrong version", bad_version),
        ("oversized length", oversized),
        ("truncated", truncated),
        ("unknown kind", bad_kind),
        ("lookup before hello", lookup_first),
        ("garbage body", garbage_body),
    ];
    for (what, bytes) in cases {
        let before = s.stats().rejected;
        let mut sock = TcpStream::connect(addr).unwrap();
        sock.write_all(&bytes).unwrap();
        assert!(closed(&mut sock), "{what}: connection closed");
        // The rejection is counted (the server thread may finish just after the close).
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.stats().rejected == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(s.stats().rejected, before + 1, "{what}: rejected once");
        good_lookup_works(addr);
    }
}

#[test]
fn discovery_slowloris_is_cut_off_while_others_are_served() {
    let s = server();
    let addr = s.local_addr();
    let hello = hello_frame();
    // Trickle a valid hello, one byte every 100 ms: slower than the 500 ms frame deadline.
    let mut slow = TcpStream::connect(addr).unwrap();
    let t0 = Instant::now();
    let mut cut = false;
    for b in &hello {
        if slow.write_all(std::slice::from_ref(b)).is_err() {
            cut = true;
            break;
        }
        // Meanwhile a normal peer is served.
        good_lookup_works(addr);
        std::thread::sleep(Duration::from_millis(100));
        if t0.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    assert!(cut || closed(&mut slow), "the slow client is dropped");
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(s.stats().rejected >= 1);
    // A client that connects and says nothing is dropped after the frame deadline too.
    let mut mute = TcpStream::connect(addr).unwrap();
    assert!(closed(&mut mute));
}

#[test]
fn discovery_handshake_hands_addresses_to_the_fabric() {
    let s = server();
    let fabric = TcpFabric::new(TcpConfig::default()).unwrap();
    s.attach_fabric(fabric.clone());
    let c = client();
    let cf = TcpFabric::new(TcpConfig::default()).unwrap();
    c.attach_fabric(cf.clone());
    let w = c.hello(&s.local_addr().to_string()).unwrap();
    assert_eq!(w.engine, "server");
    assert_eq!(w.fabric, "tcp");
    assert_eq!(w.addresses, fabric.local_addresses());
    // A hello whose addresses the fabric cannot parse is refused by name.
    let mut sock = TcpStream::connect(s.local_addr()).unwrap();
    let bad = wire::encode(&Message::Hello(PeerHello {
        engine: "liar".into(),
        fabric: "tcp".into(),
        addresses: vec![b"not an address".to_vec()],
    }))
    .unwrap();
    sock.write_all(&bad).unwrap();
    let mut hdr = [0u8; wire::HEADER_LEN];
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.read_exact(&mut hdr).unwrap();
    let h = wire::decode_header(&hdr, 1 << 16).unwrap();
    let mut body = vec![0; h.len];
    sock.read_exact(&mut body).unwrap();
    assert!(matches!(
        wire::decode_body(&h, &body).unwrap(),
        Message::Error {
            code: wire::ErrorCode::Refused,
            ..
        }
    ));
    // Another fabric's engine is refused too.
    let mut sock = TcpStream::connect(s.local_addr()).unwrap();
    let other = wire::encode(&Message::Hello(PeerHello {
        engine: "simmer".into(),
        fabric: "sim".into(),
        addresses: vec![vec![0; 9]],
    }))
    .unwrap();
    sock.write_all(&other).unwrap();
    assert!(closed(&mut sock));
    assert!(s.stats().rejected >= 2);
}

#[test]
fn discovery_unreachable_peers_are_reported_not_hung() {
    let c = client();
    // A port nobody listens on (bound, then released).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let t0 = Instant::now();
    match c.lookup(&format!("{dead}/seg")) {
        Err(MetadataError::PeerIo {
            server,
            what: "connect",
            source,
        }) => {
            assert_eq!(server, dead.to_string());
            assert_eq!(
                source.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "{source}"
            );
        }
        other => panic!("expected the connect error as the cause, got {other:?}"),
    }
    c.add_peer(dead.to_string());
    assert!(matches!(
        c.lookup("seg"),
        Err(MetadataError::Unavailable(_))
    ));
    assert!(t0.elapsed() < Duration::from_secs(10));
    let s = server();
    c.add_peer(s.local_addr().to_string());
    assert_eq!(c.lookup("seg").unwrap(), desc("seg"));
    assert!(matches!(c.lookup("nope"), Err(MetadataError::NotFound(_))));
}

/// Sends a hello and reads the welcome: a client that holds a connection slot.
fn greeted_client(addr: SocketAddr) -> TcpStream {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.write_all(&hello_frame()).unwrap();
    let reply = read_message(&mut sock).expect("welcome");
    assert!(matches!(reply, Message::Welcome(_)), "{reply:?}");
    sock
}

/// Waits (up to 10 s) until the server's stats satisfy `done`, and asserts that they do.
fn settle(s: &PeerMetadata, done: impl Fn(DiscoveryStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(s.stats()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(done(s.stats()), "{:?}", s.stats());
}

/// Reads one frame (or `None` when the server closed without one).
fn read_message(sock: &mut TcpStream) -> Option<Message> {
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut hdr = [0u8; wire::HEADER_LEN];
    sock.read_exact(&mut hdr).ok()?;
    let h = wire::decode_header(&hdr, 1 << 16).unwrap();
    let mut body = vec![0; h.len];
    sock.read_exact(&mut body).ok()?;
    Some(wire::decode_body(&h, &body).unwrap())
}

/// Clients that greet and then idle (or look up now and then) hold every connection slot:
/// legitimate lookups still get through, and a client refused for want of a slot is told why
/// in an Error frame.
#[test]
fn discovery_is_not_locked_out_by_clients_holding_every_slot() {
    let mut c = DiscoveryConfig::new("server");
    c.max_connections = 4;
    c.idle_timeout = Duration::from_secs(60);
    c.frame_timeout = Duration::from_secs(60);
    let s = PeerMetadata::bind(c).unwrap();
    s.publish(&desc("seg")).unwrap();
    let addr = s.local_addr();
    let mut squatters: Vec<TcpStream> = (0..4).map(|_| greeted_client(addr)).collect();
    // One squatter looks something up now and then: still idle between frames.
    let lookup = wire::encode(&Message::Lookup("seg".into())).unwrap();
    squatters[0].write_all(&lookup).unwrap();
    assert!(matches!(
        read_message(&mut squatters[0]),
        Some(Message::Found(_))
    ));
    for _ in 0..3 {
        good_lookup_works(addr);
    }
    // The lookups' connections are gone once only squatters are open (the lookups, the newest,
    // took the slots of the oldest idle squatters): from here the server's slots change only
    // by what this test does.
    settle(&s, |st| st.open == 4 - st.evicted && st.idle == st.open);
    // Slots held mid-frame cannot be taken over: the next client is refused, with a reason.
    // Each client is connected once the server has read the previous one's first bytes: until
    // then a connection is idle to the server, and the next could take its slot.
    let busy: Vec<TcpStream> = (1..=4)
        .map(|k| {
            let mut sock = TcpStream::connect(addr).unwrap();
            sock.write_all(&hello_frame()[..3]).unwrap();
            // Read: the `k` busy clients are the open connections that are not idle.
            settle(&s, |st| st.accepted == 4 + 3 + k && st.open - st.idle == k);
            sock
        })
        .collect();
    let st = s.stats();
    assert!(
        st.open == 4 && st.idle == 0 && st.accepted == 4 + 3 + 4,
        "{st:?}"
    );
    let mut refused = TcpStream::connect(addr).unwrap();
    match read_message(&mut refused) {
        Some(Message::Error { code, message }) => {
            assert_eq!(code, wire::ErrorCode::Busy, "{message}");
            assert!(message.contains('4'), "{message}");
        }
        other => panic!("expected an Error frame, got {other:?}"),
    }
    drop(busy);
}

/// However often it looks something up, a connection is closed once its session is over.
#[test]
fn discovery_sessions_end_even_for_busy_clients() {
    let mut c = DiscoveryConfig::new("server");
    c.session_timeout = Duration::from_millis(500);
    let s = PeerMetadata::bind(c).unwrap();
    s.publish(&desc("seg")).unwrap();
    let mut sock = greeted_client(s.local_addr());
    let lookup = wire::encode(&Message::Lookup("seg".into())).unwrap();
    let start = Instant::now();
    let mut answered = 0;
    while start.elapsed() < Duration::from_secs(20) {
        if sock.write_all(&lookup).is_err() {
            break;
        }
        match read_message(&mut sock) {
            Some(Message::Found(_)) => answered += 1,
            _ => break,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(answered >= 1);
    assert!(start.elapsed() < Duration::from_secs(20), "never closed");
}

/// Settings the server cannot work with are refused by name.
#[test]
fn discovery_config_is_checked() {
    type Edit = fn(&mut DiscoveryConfig);
    let cases: [(&str, Edit); 5] = [
        ("frame_timeout", |c| c.frame_timeout = Duration::ZERO),
        ("idle_timeout", |c| c.idle_timeout = Duration::ZERO),
        ("session_timeout", |c| c.session_timeout = Duration::ZERO),
        ("max_connections", |c| c.max_connections = 1 << 40),
        ("max_frame", |c| c.max_frame = usize::MAX),
    ];
    for (field, edit) in cases {
        let mut c = DiscoveryConfig::new("x");
        edit(&mut c);
        match PeerMetadata::bind(c) {
            Err(MetadataError::Config(m)) => assert!(m.contains(field), "{m}"),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn listing_names_ranges_by_prefix_and_stops_at_the_frame_limit() {
    let s = server();
    let mut other = desc("kv/1");
    other.base = 1 << 20;
    other.len = 8192;
    s.publish(&other).unwrap();
    let c = client();
    let addr = s.local_addr().to_string();
    let all = c.list(&addr, "").unwrap();
    let names: Vec<_> = all.segments.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["kv/1", "seg"]);
    assert!(!all.truncated);
    assert_eq!((all.segments[0].base, all.segments[0].len), (1 << 20, 8192));
    let kv = c.list(&addr, "kv/").unwrap();
    assert_eq!(kv.segments.len(), 1);
    assert!(c.list(&addr, "none").unwrap().segments.is_empty());
    assert_eq!(s.local_list("se").len(), 1);
    // The server's frames are 4096 bytes: 300 names of 20 bytes do not all fit.
    for i in 0..300 {
        s.publish(&desc(&format!("many/{i:015}"))).unwrap();
    }
    let many = c.list(&addr, "many/").unwrap();
    assert!(many.truncated);
    assert!(!many.segments.is_empty() && many.segments.len() < 300);
    good_lookup_works(s.local_addr());
}
