//! Random request sequences against engines on the sim fabric: no panics, and the invariants
//! hold: every submitted request ends in exactly one terminal state, batch counters add up,
//! completed WRITEs and READs moved the right bytes, and validation errors post nothing.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use transport::fabric::sim::{SimConfig, SimFabric, SimFaults, SimNetwork};
use transport::*;

const SEG: u64 = 16 << 10;

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let net = SimNetwork::new();
    let meta = Arc::new(LocalRegistry::new());
    let faults = SimFaults {
        error_rate: (b.u8() % 4) as f64 * 0.1,
        max_delay_steps: (b.u8() % 4) as u32,
        unresp_timeout: Duration::from_micros(20),
        ..SimFaults::default()
    };
    let rails = b.u8() % 3 + 1;
    let sim = SimConfig {
        rails: rails as u16,
        queue_depth: (b.u8() % 8 + 1) as u32,
        // At least 256 B per work request: tiny slices times dead-peer timeouts would only
        // make runs slow, not explore more.
        max_rdma_size: (b.u16() as u64 % SEG) + 256,
        seed: b.u16() as u64,
        faults,
        ..SimConfig::default()
    };
    let mut cfg = EngineConfig::new("a");
    cfg.slice_size = Some(b.u16() as u64 % 8192 + 256);
    let fa = SimFabric::new(&net, sim.clone()).unwrap();
    let a = Engine::new(cfg, fa, meta.clone()).unwrap();
    let fb = SimFabric::new(&net, SimConfig::default()).unwrap();
    let bb = Engine::new(EngineConfig::new("b"), fb.clone(), meta.clone()).unwrap();
    let pattern: Vec<u8> = (0..SEG).map(|i| (i * 31 % 251) as u8).collect();
    let local = a
        .register_owned(
            "a/l",
            OwnedMemory::from_vec(pattern.clone()).unwrap(),
            Location::Cpu(0),
            Access::NONE,
        )
        .unwrap();
    let sink = a
        .register_owned(
            "a/s",
            OwnedMemory::zeroed(SEG as usize, 64).unwrap(),
            Location::Cpu(0),
            Access::NONE,
        )
        .unwrap();
    let access = Access::from_bits(b.u8() % 4).unwrap();
    let target = bb
        .register_owned(
            "b/t",
            OwnedMemory::zeroed(SEG as usize, 64).unwrap(),
            Location::Cpu(0),
            access,
        )
        .unwrap();
    let remote = a.open_segment("b/t").unwrap();
    let mut w = a.worker().unwrap();
    let mut batch = a.allocate_batch(16).unwrap();
    // What the current batch holds, by request index: (is_read, local offset, remote offset, len).
    let mut held: Vec<(bool, u64, u64, u64)> = Vec::new();

    for _ in 0..32 {
        if b.0.is_empty() {
            break;
        }
        match b.u8() % 6 {
            0..=2 => {
                let n = (b.u8() % 6 + 1) as usize;
                let reqs: Vec<Request> = (0..n)
                    .map(|_| {
                        let op = match b.u8() % 3 {
                            0 => Opcode::Read,
                            1 => Opcode::Write,
                            _ => Opcode::WriteWithNotify(b.u16() as u32 % 1100),
                        };
                        // Mostly in range, sometimes not: validation must catch those.
                        let len = b.u16() as u64 % (SEG / 2) + (b.u8() % 8 == 0) as u64 * SEG;
                        let lo = b.u16() as u64 % SEG;
                        let ro = b.u16() as u64 % SEG;
                        // READs land in `sink`; WRITEs come from the never-written `local`.
                        let seg = if op == Opcode::Read { sink } else { local };
                        Request::write(seg, lo, remote, ro, len).with_op(op)
                    })
                    .collect();
                let before = a.batch_status(batch).unwrap();
                match w.submit(batch, &reqs) {
                    Ok(first) => {
                        assert_eq!(first, before.submitted as usize);
                        assert_eq!(first, held.len());
                        for r in &reqs {
                            let LocalAddr::Segment { offset, .. } = r.local else {
                                unreachable!()
                            };
                            held.push((r.op == Opcode::Read, offset, r.remote_offset, r.len));
                        }
                    }
                    Err(_) => {
                        let after = a.batch_status(batch).unwrap();
                        assert_eq!(
                            after.submitted, before.submitted,
                            "a refused submit changed the batch"
                        );
                        assert_eq!(after.in_flight, before.in_flight);
                    }
                }
            }
            3 => {
                let st = w.wait(batch, Duration::from_secs(10)).unwrap();
                assert_eq!(st.pending, 0);
                assert_eq!(
                    st.completed + st.failed + st.timed_out + st.cancelled,
                    st.submitted
                );
                let overlaps = |a0: u64, al: u64, b0: u64, bl: u64| a0 < b0 + bl && b0 < a0 + al;
                for (i, &(read, lo, ro, len)) in held.iter().enumerate() {
                    let status = a.request_status(batch, i).unwrap();
                    assert!(status.is_terminal());
                    if status != RequestStatus::Completed {
                        continue;
                    }
                    // Only requests whose bytes no other request of the batch could touch have
                    // a defined outcome under unordered completion.
                    let alone = held.iter().enumerate().all(|(j, &(r2, lo2, ro2, len2))| {
                        j == i
                            || !((!read || !r2) && overlaps(ro, len, ro2, len2))
                                && !(read && r2 && overlaps(lo, len, lo2, len2))
                    });
                    if !alone {
                        continue;
                    }
                    let mut got = vec![0u8; len as usize];
                    if read {
                        a.read_owned(sink, lo, &mut got).unwrap();
                        let mut src = vec![0u8; len as usize];
                        bb.read_owned(target, ro, &mut src).unwrap();
                        assert_eq!(got, src, "completed READ {i} moved other bytes");
                    } else {
                        bb.read_owned(target, ro, &mut got).unwrap();
                        assert_eq!(
                            &got[..],
                            &pattern[lo as usize..(lo + len) as usize],
                            "completed WRITE {i}"
                        );
                    }
                }
            }
            4 => {
                let st = w.drain(batch, Duration::from_secs(10)).unwrap();
                assert_eq!(st.in_flight, 0);
                batch = a.recycle_batch(batch).unwrap();
                held.clear();
            }
            _ => match b.u8() % 3 {
                0 => fb.set_alive(false),
                1 => fb.set_alive(true),
                _ => {
                    a.cancel(batch).unwrap();
                }
            },
        }
    }
    let st = w.drain(batch, Duration::from_secs(10)).unwrap();
    assert_eq!(st.in_flight, 0);
    assert_eq!(st.pending, 0, "drain leaves nothing pending");
    a.free_batch(batch).unwrap();
    // Nothing is pinned once the batch is drained: every segment can be unregistered.
    let local_back = a.unregister(local).unwrap().unwrap();
    assert_eq!(
        local_back.as_slice(),
        &pattern[..],
        "a source segment was written"
    );
    assert!(a.unregister(sink).is_ok());
    assert!(bb.unregister(target).is_ok());
    drop(w);
});
