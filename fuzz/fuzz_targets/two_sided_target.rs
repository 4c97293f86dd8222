//! The `efa` fabric's two-sided target (the handler its target thread runs on each request
//! message): hostile headers and payloads against three registrations (read-only, write-only,
//! read-write) with guard gaps around them. Never a panic; a message that is not a request is
//! dropped; a wrong key, an out-of-bounds range, a read-only segment written, a write-only one
//! read, a length that does not match or a pull longer than the target pulls get an error
//! status; a pull changes nothing itself (the device reads into the range); and memory changes
//! only for an accepted WRITE, only inside a remote-writable registration, only in the payload's
//! range (`TargetModel::handle` checks every byte of the arena after each message).
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport::fabric::efa::proto::{Header, ProtoOp, TargetModel, MODEL_REGION, PULL_LEN};

fn u32_at(b: &[u8], i: usize) -> u32 {
    let mut w = [0u8; 4];
    for (k, x) in w.iter_mut().enumerate() {
        *x = b.get(i + k).copied().unwrap_or(0);
    }
    u32::from_le_bytes(w)
}

fuzz_target!(|data: &[u8]| {
    let mut t = TargetModel::new();
    let (&pick, rest) = data.split_first().unwrap_or((&0, &[]));
    if pick & 1 == 0 {
        // Raw bytes: whatever a peer sends.
        let _ = t.handle(rest);
        return;
    }
    // A well-formed header aimed near the registrations: key (one of the three, or any 32 bits),
    // a signed offset from a region's start, a length, then the payload.
    let (keys, base) = t.targets();
    let key = match pick >> 1 & 3 {
        3 => u32_at(rest, 0),
        k => keys[k as usize],
    };
    let region = base + (2 * u64::from(pick >> 3 & 3) + 1) * MODEL_REGION as u64;
    let offset = i64::from(u32_at(rest, 4) as i32) % (2 * MODEL_REGION as i64);
    let len = match pick >> 5 {
        0 => u32_at(rest, 8),
        n => u32_at(rest, 8) % (u32::from(n) * 2048),
    };
    let payload = rest.get(12..).unwrap_or(&[]);
    // A payload of a pull descriptor's length asks for a rendezvous WRITE (the device would read
    // into the range); otherwise a WRITE when the lengths agree or the top bit says so.
    let op = match (
        payload.len() == PULL_LEN,
        pick & 0x80 != 0 || len as usize == payload.len(),
    ) {
        (true, _) => ProtoOp::Pull,
        (false, true) => ProtoOp::Write,
        (false, false) => ProtoOp::Read,
    };
    let write = op != ProtoOp::Read;
    let h = Header {
        op,
        chunk: u32_at(rest, 0) & !0xff,
        qkey: 1,
        len,
        region: key,
        addr: region.wrapping_add_signed(offset),
        gid: transport::fabric::efa::Gid([0; 16]),
    };
    let msg = [&h.encode()[..], if write { payload } else { &[] }].concat();
    let _ = t.handle(&msg);
});
