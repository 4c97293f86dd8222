//! RC write, read and send between two QPs on one verbs device (Soft-RoCE, ConnectX; not EFA,
//! which has no RC).
//!
//! ```text
//! cargo run -p efa --example rc_loopback -- [DEVICE]     (default: the first non-EFA device)
//! ```
//! Exit status: 0 when every byte checks out, 1 on a failure, 2 when no suitable device exists.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use efa::{Access, Context, Cq, Mr, Pd, QpBuilder, RcQp, RemoteAddr, WorkCompletion};

const LEN: usize = 64 << 10;

struct Side {
    _pd: Arc<Pd>,
    cq: Cq,
    qp: RcQp,
    mr: Mr<'static>,
}

fn side(ctx: &Arc<Context>) -> efa::Result<Side> {
    let pd = Pd::new(ctx)?;
    let cq = Cq::new(ctx, 64)?;
    let qp = QpBuilder::new(&pd, &cq, &cq)
        .max_send_wr(16)
        .max_recv_wr(16)
        .build_rc()?;
    let mr = Mr::alloc(
        &pd,
        LEN,
        Access::LOCAL_WRITE | Access::REMOTE_READ | Access::REMOTE_WRITE,
    )?;
    Ok(Side {
        _pd: pd,
        cq,
        qp,
        mr,
    })
}

fn wait(cq: &mut Cq, n: usize) -> efa::Result<Vec<WorkCompletion>> {
    let mut out = vec![WorkCompletion::default(); n];
    let got = cq.wait_into(&mut out, n, Duration::from_secs(10))?;
    out.truncate(got);
    Ok(out)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn run(name: &str) -> Result<(), String> {
    let ctx_a = Context::open(name).map_err(|e| e.to_string())?;
    let ctx_b = Context::open(name).map_err(|e| e.to_string())?;
    let mut a = side(&ctx_a).map_err(|e| e.to_string())?;
    let mut b = side(&ctx_b).map_err(|e| e.to_string())?;
    println!(
        "device {name}: QPs {} <-> {}, GID {}",
        a.qp.qp_num(),
        b.qp.qp_num(),
        a.qp.gid_entry().gid
    );
    let (ea, eb) = (a.qp.endpoint(), b.qp.endpoint());
    a.qp.connect(&eb).map_err(|e| e.to_string())?;
    b.qp.connect(&ea).map_err(|e| e.to_string())?;

    let (w, r, s) = (pattern(1, 8192), pattern(2, 8192), pattern(3, 512));
    let f = |e: efa::Error| e.to_string();
    a.mr.write_at(0, &w).map_err(f)?;
    a.mr.write_at(16384, &s).map_err(f)?;
    b.mr.write_at(32768, &r).map_err(f)?;
    b.qp.post_recv(9, &[b.mr.sge(49152, 512).map_err(f)?])
        .map_err(f)?;
    let peer = b.mr.remote();
    let at = |off: u64, len: u64| -> efa::Result<RemoteAddr> {
        Ok(RemoteAddr {
            addr: peer.at(off, len)?,
            rkey: peer.rkey,
        })
    };

    let t = Instant::now();
    let mut batch = a.qp.batch().map_err(f)?;
    batch
        .write(1, &[a.mr.sge(0, 8192).map_err(f)?], at(0, 8192).map_err(f)?)
        .map_err(f)?;
    batch
        .read(
            2,
            &[a.mr.sge(8192, 8192).map_err(f)?],
            at(32768, 8192).map_err(f)?,
        )
        .map_err(f)?;
    batch
        .send(3, &[a.mr.sge(16384, 512).map_err(f)?])
        .map_err(f)?;
    batch.commit().map_err(f)?;
    let sends = wait(&mut a.cq, 3).map_err(f)?;
    let recvs = wait(&mut b.cq, 1).map_err(f)?;
    let elapsed = t.elapsed();
    for wc in sends.iter().chain(&recvs) {
        println!(
            "  wr_id {} {:?} {:?} {} bytes",
            wc.wr_id, wc.opcode, wc.status, wc.byte_len
        );
        if !wc.is_success() {
            return Err(format!("completion failed: {wc:?}"));
        }
    }
    if sends.len() != 3 || recvs.len() != 1 {
        return Err(format!(
            "expected 3 send and 1 receive completions, got {} and {}",
            sends.len(),
            recvs.len()
        ));
    }
    let mut got = vec![0; 8192];
    b.mr.read_at(0, &mut got).map_err(f)?;
    if got != w {
        return Err("RDMA write data differs".into());
    }
    a.mr.read_at(8192, &mut got).map_err(f)?;
    if got != r {
        return Err("RDMA read data differs".into());
    }
    let mut got = vec![0; 512];
    b.mr.read_at(49152, &mut got).map_err(f)?;
    if got != s {
        return Err("SEND data differs".into());
    }
    println!("write 8 KiB, read 8 KiB, send 512 B: all bytes match ({elapsed:?})");
    Ok(())
}

/// `e` and its causes (the loader's or the OS's error), `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let causes = std::iter::successors(Some(e), |e| e.source()).map(|e| e.to_string());
    causes.collect::<Vec<_>>().join(": ")
}

fn main() -> ExitCode {
    let name = match std::env::args().nth(1) {
        Some(n) => n,
        None => match efa::devices() {
            Ok(d) => match d.into_iter().find(|d| !d.is_efa()) {
                Some(d) => d.name,
                None => {
                    eprintln!("rc_loopback: no non-EFA verbs device found (EFA has no RC; try Soft-RoCE: rdma link add rxe0 type rxe netdev eth0)");
                    return ExitCode::from(2);
                }
            },
            Err(e) => {
                eprintln!("rc_loopback: cannot list verbs devices: {}", chain(&e));
                return ExitCode::from(2);
            }
        },
    };
    match run(&name) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rc_loopback: {e}");
            ExitCode::FAILURE
        }
    }
}
