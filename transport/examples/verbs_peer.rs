//! Two-process (or two-host) transfer over the `verbs` fabric, checked byte for byte.
//!
//! ```text
//! verbs_peer serve DIR [SIZE [linger]]
//!                                register "peer/buf" (first half patterned), publish its
//!                                descriptor to DIR/desc, wait for DIR/done, then check that
//!                                the other side wrote the second half (with `linger`, stay up
//!                                afterwards, up to 10 minutes, as a target to be killed)
//! verbs_peer fetch DIR           open DIR/desc's segment, READ the first half and check it,
//!                                WRITE the second half, then create DIR/done
//! verbs_peer hammer DIR SECS     like fetch, then keep writing until a request fails (the
//!                                peer was killed); exit 0 if it failed with UNRESP_REMOTE,
//!                                FLUSHED or a timeout within SECS after the last success
//! ```
//!
//! DIR is a directory both processes see (the VM harness's job directory across two VMs).
//! Needs a verbs device with an active port and an IPv4-mapped GID (`rxe0` in the VM).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use transport::fabric::verbs::{VerbsConfig, VerbsFabric};
use transport::*;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32) as u8
                ^ seed
        })
        .collect()
}

fn wait_file(p: &Path, limit: Duration) -> Res<()> {
    let t = Instant::now();
    while !p.exists() {
        if t.elapsed() > limit {
            return Err(format!("{} did not appear within {limit:?}", p.display()).into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn engine(name: &str, unresp: Duration) -> Res<(Engine, Arc<LocalRegistry>, String)> {
    let fabric = VerbsFabric::new(VerbsConfig {
        unresponsive_timeout: unresp,
        ..VerbsConfig::default()
    })?;
    let meta = Arc::new(LocalRegistry::new());
    let mut config = EngineConfig::new(name);
    config.slice_size = Some(256 << 10);
    let about = format!("{fabric:?}");
    Ok((Engine::new(config, fabric, meta.clone())?, meta, about))
}

fn serve(dir: &Path, size: usize, linger: bool) -> Res<()> {
    let (e, meta, about) = engine("server", Duration::from_secs(4))?;
    let half = size / 2;
    let mut init = pattern(half, 1);
    init.resize(size, 0);
    let seg = e.register_owned(
        "peer/buf",
        OwnedMemory::from_vec(init)?,
        Location::Cpu(0),
        Access::REMOTE_READ_WRITE,
    )?;
    let desc = meta.lookup("peer/buf")?;
    let tmp = dir.join("desc.tmp");
    std::fs::write(&tmp, desc.encode()?)?;
    std::fs::rename(&tmp, dir.join("desc"))?;
    println!("verbs_peer: serving {size} bytes on {about}");
    wait_file(&dir.join("done"), Duration::from_secs(240))?;
    let mut got = vec![0u8; size - half];
    e.read_owned(seg, half as u64, &mut got)?;
    if got != pattern(size - half, 2) {
        let at = got
            .iter()
            .zip(pattern(size - half, 2))
            .position(|(a, b)| *a != b);
        return Err(format!("second half differs from the pattern at byte {at:?}").into());
    }
    println!(
        "verbs_peer: verified {} bytes written by the peer",
        size - half
    );
    if linger {
        std::fs::write(dir.join("verified"), b"")?;
        std::thread::sleep(Duration::from_secs(600));
    }
    Ok(())
}

fn fetch(dir: &Path, hammer: Option<Duration>) -> Res<()> {
    let (e, meta, _) = engine("client", hammer.unwrap_or(Duration::from_secs(4)))?;
    wait_file(&dir.join("desc"), Duration::from_secs(120))?;
    let desc = SegmentDescriptor::decode(&std::fs::read(dir.join("desc"))?)?;
    let size = desc.len as usize;
    let half = size / 2;
    meta.publish(&desc)?;
    let remote = e.open_segment("peer/buf")?;
    let local = e.register_owned(
        "client/buf",
        OwnedMemory::from_vec(pattern(size, 2))?,
        Location::Cpu(0),
        Access::NONE,
    )?;
    let sink = e.register_owned(
        "client/sink",
        OwnedMemory::zeroed(half, 4096)?,
        Location::Cpu(0),
        Access::NONE,
    )?;
    let mut w = e.worker()?;
    let b = e.allocate_batch(4)?;
    let t = Instant::now();
    w.submit(b, &[Request::read(sink, 0, remote, 0, half as u64)])?;
    let s = w.wait(b, Duration::from_secs(60))?;
    if !s.all_completed() {
        return Err(format!("READ failed: {s:?} {:?}", e.request_status(b, 0)).into());
    }
    let mut got = vec![0u8; half];
    e.read_owned(sink, 0, &mut got)?;
    if got != pattern(half, 1) {
        return Err("first half read back differs from the pattern".into());
    }
    let mut b = e.recycle_batch(b)?;
    w.submit(
        b,
        &[Request::write(
            local,
            0,
            remote,
            half as u64,
            (size - half) as u64,
        )],
    )?;
    let s = w.wait(b, Duration::from_secs(60))?;
    if !s.all_completed() {
        return Err(format!("WRITE failed: {s:?} {:?}", e.request_status(b, 0)).into());
    }
    println!(
        "verbs_peer: read {half} and wrote {} bytes, verified, in {:?}",
        size - half,
        t.elapsed()
    );
    std::fs::write(dir.join("done"), b"")?;
    let Some(limit) = hammer else {
        return Ok(());
    };
    // Keep writing until the peer disappears.
    let mut last_ok = Instant::now();
    let start = Instant::now();
    let mut rounds = 0u64;
    loop {
        b = e.recycle_batch(b)?;
        let b2 = b;
        w.submit(b2, &[Request::write(local, 0, remote, 0, 65536)])?;
        let s = w.wait(b2, limit + Duration::from_secs(10))?;
        rounds += 1;
        if s.all_completed() {
            last_ok = Instant::now();
            if start.elapsed() > Duration::from_secs(240) {
                return Err("peer still answering after 240 s".into());
            }
            continue;
        }
        let st = e.request_status(b2, 0)?;
        let waited = last_ok.elapsed();
        println!("verbs_peer: after {rounds} writes the peer failed: {st:?}, {waited:?} after the last success");
        let typed = matches!(
            st,
            RequestStatus::Failed(FailReason::UnresponsiveRemote | FailReason::Flushed)
                | RequestStatus::TimedOut
        );
        if !typed {
            return Err(format!("unexpected status {st:?}").into());
        }
        if waited > limit + Duration::from_secs(10) {
            return Err(format!("failure took {waited:?}, limit {limit:?}").into());
        }
        return Ok(());
    }
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: verbs_peer serve DIR [SIZE [linger]] | fetch DIR | hammer DIR SECS";
    let dir = PathBuf::from(args.get(2).ok_or(usage)?);
    match args[1].as_str() {
        "serve" => {
            let size = match args.get(3) {
                Some(s) => s.parse()?,
                None => 8 << 20,
            };
            serve(&dir, size, args.get(4).is_some_and(|a| a == "linger"))
        }
        "fetch" => fetch(&dir, None),
        "hammer" => {
            let secs: u64 = args.get(3).ok_or(usage)?.parse()?;
            fetch(&dir, Some(Duration::from_secs(secs)))
        }
        _ => Err(usage.into()),
    }
}
