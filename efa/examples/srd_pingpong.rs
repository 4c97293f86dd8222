//! SRD ping-pong, RDMA read and RDMA write between two EFA devices (two processes, usually on
//! two instances), exchanging QPN, GID, Q_Key and a region over TCP.
//!
//! ```text
//! server:  cargo run --release -p efa --example srd_pingpong -- server [--port 18515] [--device rdmap0s6]
//! client:  cargo run --release -p efa --example srd_pingpong -- client HOST [--port 18515] [--iters 1000] [--size 64]
//! ```
//! Exit status: 0 on success, 1 on a failure, 3 when this host has no EFA device.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use efa::{
    Access, Ah, AhAttr, Context, Cq, Dest, EfaCaps, Gid, Mr, Pd, QpBuilder, RemoteAddr, RemoteMr,
    SrdQp, WorkCompletion,
};

const NO_EFA: u8 = 3;
const REGION: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(10);

struct Opts {
    server: bool,
    host: String,
    port: u16,
    device: Option<String>,
    iters: u32,
    size: u32,
}

fn parse() -> Result<Opts, String> {
    let mut a = std::env::args().skip(1);
    let mut o = Opts {
        server: false,
        host: String::new(),
        port: 18515,
        device: None,
        iters: 1000,
        size: 64,
    };
    match a.next().as_deref() {
        Some("server") => o.server = true,
        Some("client") => o.host = a.next().ok_or("client needs HOST")?,
        _ => return Err(
            "usage: srd_pingpong server|client HOST [--port P] [--device D] [--iters N] [--size B]"
                .into(),
        ),
    }
    while let Some(flag) = a.next() {
        let v = a.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<u32>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--port" => o.port = num(&v)? as u16,
            "--device" => o.device = Some(v),
            "--iters" => o.iters = num(&v)?,
            "--size" => o.size = num(&v)?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(o)
}

/// GID, QPN, Q_Key, region address, length and key, capability bits: 48 bytes.
fn encode(gid: Gid, qpn: u32, qkey: u32, r: &RemoteMr, caps: EfaCaps) -> [u8; 48] {
    let mut b = [0u8; 48];
    b[..16].copy_from_slice(gid.as_bytes());
    b[16..20].copy_from_slice(&qpn.to_le_bytes());
    b[20..24].copy_from_slice(&qkey.to_le_bytes());
    b[24..32].copy_from_slice(&r.addr.to_le_bytes());
    b[32..40].copy_from_slice(&r.len.to_le_bytes());
    b[40..44].copy_from_slice(&r.rkey.to_le_bytes());
    b[44..48].copy_from_slice(&caps.bits().to_le_bytes());
    b
}

struct Peer {
    gid: Gid,
    qpn: u32,
    qkey: u32,
    region: RemoteMr,
    caps: EfaCaps,
}

fn decode(b: &[u8; 48]) -> Peer {
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let mut gid = [0; 16];
    gid.copy_from_slice(&b[..16]);
    Peer {
        gid: Gid(gid),
        qpn: u32_at(16),
        qkey: u32_at(20),
        region: RemoteMr {
            addr: u64_at(24),
            len: u64_at(32),
            rkey: u32_at(40),
        },
        caps: EfaCaps::from_bits_retain(u32_at(44)),
    }
}

fn wait_one(cq: &mut Cq, what: &str) -> Result<WorkCompletion, String> {
    let mut w = [WorkCompletion::default()];
    match cq.wait_into(&mut w, 1, WAIT).map_err(|e| e.to_string())? {
        1 if w[0].is_success() => Ok(w[0]),
        1 => Err(format!(
            "{what} failed: {:?} (EFA status {:?})",
            w[0].status, w[0].efa_status
        )),
        _ => Err(format!("{what}: no completion within {WAIT:?}")),
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

fn run(o: &Opts, ctx: Arc<Context>) -> Result<(), String> {
    let f = |e: efa::Error| e.to_string();
    let attr = *ctx.require_efa().map_err(f)?;
    let port = ctx.query_port(1).map_err(f)?;
    println!(
        "{}: caps {:?}, max_rdma_size {}, max_msg_sz {}, inline {}",
        ctx.name(),
        attr.caps,
        attr.max_rdma_size,
        port.max_msg_sz,
        attr.max_inline()
    );
    let pd = Pd::new(&ctx).map_err(f)?;
    let mut scq = Cq::new(&ctx, 256).map_err(f)?;
    let mut rcq = Cq::new(&ctx, 256).map_err(f)?;
    let mut qp: SrdQp = QpBuilder::new(&pd, &scq, &rcq)
        .max_send_wr(64)
        .max_recv_wr(64)
        .build_srd()
        .map_err(f)?;
    let mut access = Access::LOCAL_WRITE;
    if attr.caps.contains(EfaCaps::RDMA_READ) {
        access |= Access::REMOTE_READ;
    }
    if attr.caps.contains(EfaCaps::RDMA_WRITE) {
        access |= Access::REMOTE_WRITE;
    }
    let mut mr = Mr::alloc(&pd, REGION, access).map_err(f)?;
    mr.write_at(REGION / 2, &pattern(if o.server { 1 } else { 2 }, 65536))
        .map_err(f)?;

    let mut s = if o.server {
        let l = TcpListener::bind(("0.0.0.0", o.port)).map_err(|e| e.to_string())?;
        println!("waiting for the client on port {}", o.port);
        l.accept().map_err(|e| e.to_string())?.0
    } else {
        TcpStream::connect((o.host.as_str(), o.port)).map_err(|e| e.to_string())?
    };
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let io = |e: std::io::Error| e.to_string();
    let me = qp.endpoint();
    s.write_all(&encode(
        me.gid,
        me.qpn,
        me.qkey_or_psn,
        &mr.remote(),
        attr.caps,
    ))
    .map_err(io)?;
    let mut buf = [0u8; 48];
    s.read_exact(&mut buf).map_err(io)?;
    let peer = decode(&buf);
    // Both sides create an AH for each other: SRD RDMA fails with UNKNOWN_PEER otherwise.
    let ah = Ah::new(&pd, AhAttr::new(peer.gid, 0)).map_err(f)?;
    println!(
        "peer QPN {} GID {} AHN {:?}",
        peer.qpn,
        peer.gid,
        ah.efa_ahn().ok()
    );
    let dest = Dest::new(&ah, peer.qpn, peer.qkey);

    let size = o.size.min(port.max_msg_sz);
    let send_sge = mr.sge(0, size).map_err(f)?;
    let recv_sge = mr.sge(65536, size).map_err(f)?;
    qp.post_recv(0, &[recv_sge]).map_err(f)?;
    s.write_all(b"R").map_err(io)?;
    s.read_exact(&mut buf[..1]).map_err(io)?;
    let t = Instant::now();
    for i in 0..o.iters {
        if !o.server {
            let mut b = qp.batch().map_err(f)?;
            b.send(u64::from(i), &dest, &[send_sge]).map_err(f)?;
            b.commit().map_err(f)?;
            wait_one(&mut scq, "send")?;
        }
        wait_one(&mut rcq, "receive")?;
        qp.post_recv(u64::from(i) + 1, &[recv_sge]).map_err(f)?;
        if o.server {
            let mut b = qp.batch().map_err(f)?;
            b.send(u64::from(i), &dest, &[send_sge]).map_err(f)?;
            b.commit().map_err(f)?;
            wait_one(&mut scq, "send")?;
        }
    }
    if o.iters > 0 {
        let half_rtt = t.elapsed() / (2 * o.iters);
        println!(
            "ping-pong: {} x {size} B, {half_rtt:?} one way on average",
            o.iters
        );
    }

    let mut verdict = true;
    if !o.server {
        let theirs = pattern(1, 65536);
        if attr.caps.contains(EfaCaps::RDMA_READ) && peer.caps.contains(EfaCaps::RDMA_READ) {
            let len = 65536u32.min(attr.max_rdma_size);
            let remote = RemoteAddr {
                addr: peer.region.at(REGION as u64 / 2, len.into()).map_err(f)?,
                rkey: peer.region.rkey,
            };
            let mut b = qp.batch().map_err(f)?;
            b.read(1000, &dest, &[mr.sge(131072, len).map_err(f)?], remote)
                .map_err(f)?;
            b.commit().map_err(f)?;
            wait_one(&mut scq, "RDMA read")?;
            let mut got = vec![0; len as usize];
            mr.read_at(131072, &mut got).map_err(f)?;
            verdict &= got == theirs[..len as usize];
            println!(
                "RDMA read {len} B: {}",
                if got == theirs[..len as usize] {
                    "bytes match"
                } else {
                    "MISMATCH"
                }
            );
        } else {
            println!("RDMA read: skipped (a side lacks the RDMA_READ capability)");
        }
        if attr.caps.contains(EfaCaps::RDMA_WRITE) && peer.caps.contains(EfaCaps::RDMA_WRITE) {
            let len = 65536u32.min(attr.max_rdma_size);
            let remote = RemoteAddr {
                addr: peer.region.at(0, len.into()).map_err(f)?,
                rkey: peer.region.rkey,
            };
            let mut b = qp.batch().map_err(f)?;
            b.write(1001, &dest, &[mr.sge(REGION / 2, len).map_err(f)?], remote)
                .map_err(f)?;
            b.commit().map_err(f)?;
            wait_one(&mut scq, "RDMA write")?;
            println!("RDMA write {len} B: completed");
            s.write_all(b"W").map_err(io)?;
        } else {
            println!("RDMA write: skipped (a side lacks the RDMA_WRITE capability)");
            s.write_all(b"N").map_err(io)?;
        }
        s.read_exact(&mut buf[..1]).map_err(io)?;
        verdict &= buf[0] == b'K';
        println!(
            "server check of the written bytes: {}",
            if buf[0] == b'K' { "match" } else { "MISMATCH" }
        );
    } else {
        s.read_exact(&mut buf[..1]).map_err(io)?;
        let ok = if buf[0] == b'W' {
            let mut got = vec![0; 65536u32.min(attr.max_rdma_size) as usize];
            mr.read_at(0, &mut got).map_err(f)?;
            got == pattern(2, got.len())
        } else {
            true
        };
        s.write_all(if ok { b"K" } else { b"F" }).map_err(io)?;
        verdict &= ok;
    }
    if verdict {
        println!("srd_pingpong: OK");
        Ok(())
    } else {
        Err("data mismatch".into())
    }
}

/// `e` and its causes (the loader's or the OS's error), `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let causes = std::iter::successors(Some(e), |e| e.source()).map(|e| e.to_string());
    causes.collect::<Vec<_>>().join(": ")
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("srd_pingpong: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ctx = match &o.device {
        Some(d) => Context::open(d),
        None => Context::open_first_efa(),
    };
    let ctx = match ctx {
        Ok(c) if c.is_efa() => c,
        Ok(c) => {
            eprintln!("srd_pingpong: {} is not an EFA device; SRD needs EFA (AWS instance with an EFA interface)", c.name());
            return ExitCode::from(NO_EFA);
        }
        Err(e @ (efa::Error::NoSuchDevice { .. } | efa::Error::Library { .. })) => {
            eprintln!(
                "srd_pingpong: no EFA device found ({}); run this on an AWS instance with an EFA interface",
                chain(&e)
            );
            return ExitCode::from(NO_EFA);
        }
        Err(e) => {
            eprintln!("srd_pingpong: {}", chain(&e));
            return ExitCode::FAILURE;
        }
    };
    match run(&o, ctx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("srd_pingpong: {e}");
            ExitCode::FAILURE
        }
    }
}
