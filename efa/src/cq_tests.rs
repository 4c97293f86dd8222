//! The poller against a fake extended CQ: pass discipline, field decoding, no allocation.

use super::*;
use crate::alloc_count::allocations;

#[derive(Clone, Copy)]
struct Entry {
    wr_id: u64,
    status: u32,
    opcode: u32,
    vendor_err: u32,
    byte_len: u32,
    imm_be: u32,
    wc_flags: u32,
    qp_num: u32,
    src_qp: u32,
}

#[repr(C)]
struct FakeCq {
    cq: efa_sys::ibv_cq_ex,
    entries: Vec<Entry>,
    head: usize,
    cur: usize,
    in_pass: bool,
    starts: u32,
    nexts: u32,
    ends: u32,
    /// `next_poll` fails once (EINVAL) when it would move to this entry.
    next_error_at: usize,
    /// Calls of the receive-only readers (src_qp, imm, byte_len).
    recv_reads: u32,
    /// Calls of every field reader (`read_*`).
    reads: u32,
}

unsafe fn fake<'a>(cq: *mut efa_sys::ibv_cq_ex) -> &'a mut FakeCq {
    // SAFETY: every fake op receives the `cq` field, the first of a live FakeCq.
    unsafe { &mut *cq.cast::<FakeCq>() }
}

fn load(f: &mut FakeCq) {
    let e = f.entries[f.cur];
    f.cq.wr_id = e.wr_id;
    f.cq.status = e.status;
}

unsafe extern "C" fn start(cq: *mut efa_sys::ibv_cq_ex, _a: *mut efa_sys::ibv_poll_cq_attr) -> i32 {
    // SAFETY: see `fake`.
    let f = unsafe { fake(cq) };
    assert!(!f.in_pass, "start_poll inside a pass");
    if f.head == f.entries.len() {
        return libc::ENOENT;
    }
    f.in_pass = true;
    f.starts += 1;
    f.cur = f.head;
    load(f);
    0
}

unsafe extern "C" fn next(cq: *mut efa_sys::ibv_cq_ex) -> i32 {
    // SAFETY: see `fake`.
    let f = unsafe { fake(cq) };
    assert!(f.in_pass, "next_poll outside a pass");
    f.nexts += 1;
    if f.cur + 1 == f.next_error_at {
        f.next_error_at = usize::MAX;
        return libc::EINVAL;
    }
    if f.cur + 1 == f.entries.len() {
        return libc::ENOENT;
    }
    f.cur += 1;
    load(f);
    0
}

unsafe extern "C" fn end(cq: *mut efa_sys::ibv_cq_ex) {
    // SAFETY: see `fake`.
    let f = unsafe { fake(cq) };
    assert!(f.in_pass, "end_poll outside a pass");
    f.in_pass = false;
    f.ends += 1;
    f.head = f.cur + 1;
}

macro_rules! reader {
    ($name:ident, $field:ident, $ty:ty) => {
        unsafe extern "C" fn $name(cq: *mut efa_sys::ibv_cq_ex) -> $ty {
            // SAFETY: see `fake`.
            let f = unsafe { fake(cq) };
            assert!(f.in_pass, "reader outside a pass");
            f.reads += 1;
            f.entries[f.cur].$field as $ty
        }
    };
}
reader!(r_opcode, opcode, efa_sys::ibv_wc_opcode);
reader!(r_vendor, vendor_err, u32);
macro_rules! recv_reader {
    ($name:ident, $field:ident) => {
        unsafe extern "C" fn $name(cq: *mut efa_sys::ibv_cq_ex) -> u32 {
            // SAFETY: see `fake`.
            let f = unsafe { fake(cq) };
            assert!(f.in_pass, "reader outside a pass");
            f.recv_reads += 1;
            f.reads += 1;
            f.entries[f.cur].$field
        }
    };
}
recv_reader!(r_len, byte_len);
recv_reader!(r_imm, imm_be);
reader!(r_qp, qp_num, u32);
recv_reader!(r_src, src_qp);
reader!(r_flags, wc_flags, u32);

fn fake_cq(entries: Vec<Entry>) -> Box<FakeCq> {
    // SAFETY: a C struct of integers, pointers, pthread objects and nullable fn pointers; an
    // all-zero value is valid for the fields the poller reads.
    let mut cq: efa_sys::ibv_cq_ex = unsafe { std::mem::zeroed() };
    cq.start_poll = Some(start);
    cq.next_poll = Some(next);
    cq.end_poll = Some(end);
    cq.read_opcode = Some(r_opcode);
    cq.read_vendor_err = Some(r_vendor);
    cq.read_byte_len = Some(r_len);
    cq.read_imm_data = Some(r_imm);
    cq.read_qp_num = Some(r_qp);
    cq.read_src_qp = Some(r_src);
    cq.read_wc_flags = Some(r_flags);
    Box::new(FakeCq {
        cq,
        entries,
        head: 0,
        cur: 0,
        in_pass: false,
        starts: 0,
        nexts: 0,
        ends: 0,
        next_error_at: usize::MAX,
        recv_reads: 0,
        reads: 0,
    })
}

fn core(f: &mut FakeCq, is_efa: bool) -> PollCore {
    PollCore {
        raw: RawCq(NonNull::from(&mut f.cq)),
        efa_cq: None,
        sgid: false,
        unsolicited: false,
        is_efa,
        one_per_pass: false,
        deferred: None,
        locked_passes: true,
        in_pass: false,
    }
}

fn entry(wr_id: u64) -> Entry {
    Entry {
        wr_id,
        status: 0,
        opcode: efa_sys::IBV_WC_RECV,
        vendor_err: 0,
        byte_len: wr_id as u32 * 10,
        imm_be: 0,
        wc_flags: 0,
        qp_num: 5,
        src_qp: 6,
    }
}

#[test]
fn lending_poller_decodes_and_ends_each_pass_once() {
    let mut entries: Vec<Entry> = (1..=3).map(entry).collect();
    entries[1].wc_flags = efa_sys::IBV_WC_WITH_IMM;
    entries[1].imm_be = 0xdead_beefu32.to_be();
    entries[2].status = efa_sys::IBV_WC_GENERAL_ERR;
    entries[2].vendor_err = 14;
    let mut f = fake_cq(entries);
    let mut c = core(&mut f, true);
    {
        let mut pass = c.poll().unwrap().expect("completions pending");
        let first = pass.next().unwrap().unwrap();
        assert_eq!(
            (first.wr_id(), first.byte_len(), first.opcode()),
            (1, 10, WcOpcode::Recv)
        );
        assert_eq!(first.imm(), None);
        let second = pass.next().unwrap().unwrap().to_owned();
        assert_eq!(second.imm, Some(0xdead_beef));
        assert_eq!((second.qp_num, second.src_qp), (5, 6));
        let third = pass.next().unwrap().unwrap();
        assert_eq!(third.status(), WcStatus::GeneralErr);
        assert_eq!(third.efa_status(), Some(EfaStatus::UnknownPeer));
        let owned = third.to_owned();
        assert_eq!(
            (owned.opcode, owned.byte_len),
            (None, 0),
            "error completions carry no opcode"
        );
        assert!(pass.next().unwrap().is_none());
        assert!(
            pass.next().unwrap().is_none(),
            "an exhausted pass stays exhausted"
        );
    }
    assert!(
        c.poll().unwrap().is_none(),
        "empty CQ: no pass, no end_poll"
    );
    assert_eq!((f.starts, f.ends), (1, 1));
}

#[test]
fn batch_poll_stops_at_the_slice_and_resumes() {
    let mut f = fake_cq((1..=5).map(entry).collect());
    let mut c = core(&mut f, false);
    let mut out = [WorkCompletion::default(); 3];
    assert_eq!(c.poll_into(&mut out).unwrap(), 3);
    assert_eq!(out.map(|w| w.wr_id), [1, 2, 3]);
    assert_eq!(out[0].efa_status, None, "vendor_err is named only on EFA");
    assert_eq!(c.poll_into(&mut out).unwrap(), 2);
    assert_eq!([out[0].wr_id, out[1].wr_id], [4, 5]);
    assert_eq!(c.poll_into(&mut out).unwrap(), 0);
    assert_eq!(c.poll_into(&mut []).unwrap(), 0);
    assert_eq!((f.starts, f.ends), (2, 2));
}

#[test]
fn polling_allocates_nothing() {
    let mut f = fake_cq((0..256).map(entry).collect());
    let mut c = core(&mut f, true);
    let mut out = [WorkCompletion::default(); 64];
    let before = allocations();
    let mut total = 0;
    for _ in 0..4 {
        total += c.poll_into(&mut out).unwrap();
    }
    let mut sum = 0u64;
    while let Some(mut pass) = c.poll().unwrap() {
        while let Some(wc) = pass.next().unwrap() {
            sum += wc.wr_id();
        }
    }
    assert_eq!(allocations() - before, 0);
    assert_eq!(total, 256);
    assert_eq!(sum, 0);
}

#[test]
fn ownership_traits_fit_per_thread_workers() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<Cq>();
    send::<crate::SrdQp>();
    send::<crate::RcQp>();
    send_sync::<crate::Context>();
    send_sync::<crate::Pd>();
    send_sync::<crate::Mr<'static>>();
    send_sync::<crate::Ah>();
    send_sync::<crate::ThreadDomain>();
}

#[test]
fn soft_roce_passes_never_reach_enoent_in_next_poll() {
    let mut f = fake_cq((1..=3).map(entry).collect());
    let mut core = core(&mut f, false);
    core.one_per_pass = true;
    let mut out = [WorkCompletion::default(); 8];
    let n = core.poll_into(&mut out).unwrap();
    let seen: Vec<u64> = out[..n].iter().map(|c| c.wr_id).collect();
    assert_eq!(
        seen,
        [1, 2, 3],
        "one call drains the CQ, one pass per completion"
    );
    assert_eq!(core.poll_into(&mut out).unwrap(), 0);
    // Three passes of one completion each; next_poll never runs, so it never reaches ENOENT.
    assert_eq!((f.starts, f.nexts, f.ends), (3, 0, 3));
}

#[test]
fn a_failing_next_poll_returns_what_was_consumed_and_reports_the_error_next() {
    let mut f = fake_cq((1..=4).map(entry).collect());
    f.next_error_at = 2;
    let mut c = core(&mut f, true);
    let mut out = [WorkCompletion::default(); 4];
    assert_eq!(
        c.poll_into(&mut out).unwrap(),
        2,
        "the two consumed completions come back"
    );
    assert_eq!([out[0].wr_id, out[1].wr_id], [1, 2]);
    let e = c.poll_into(&mut out).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EINVAL), "{e}");
    assert_eq!(c.poll_into(&mut out).unwrap(), 2, "then polling goes on");
    assert_eq!([out[0].wr_id, out[1].wr_id], [3, 4]);
}

#[test]
fn send_completions_read_no_receive_fields() {
    let mut e = entry(0xabcd_0000_0000_0007);
    e.opcode = efa_sys::IBV_WC_SEND;
    e.src_qp = 0xabcd; // EFA's send CQE aliases the request id here
    let mut f = fake_cq(vec![e, entry(8)]);
    let mut c = core(&mut f, true);
    let mut out = [WorkCompletion::default(); 1];
    assert_eq!(c.poll_into(&mut out).unwrap(), 1);
    assert_eq!(
        (out[0].opcode, out[0].src_qp, out[0].byte_len, out[0].imm),
        (Some(WcOpcode::Send), 0, 0, None)
    );
    assert_eq!(
        f.recv_reads, 0,
        "no receive-only reader was called for a send"
    );
    let mut c = core(&mut f, true);
    assert_eq!(c.poll_into(&mut out).unwrap(), 1);
    assert_eq!(
        (out[0].opcode, out[0].src_qp, out[0].byte_len),
        (Some(WcOpcode::Recv), 6, 80)
    );
}

/// Provider calls per CQE (field readers plus `next_poll`) of draining `entries` with `drain`.
fn calls_per_cqe(entries: Vec<Entry>, drain: impl Fn(&mut PollCore) -> usize) -> f64 {
    let n = entries.len();
    let mut f = fake_cq(entries);
    let mut c = core(&mut f, true);
    assert_eq!(drain(&mut c), n);
    f64::from(f.reads + f.nexts) / n as f64
}

#[test]
fn completions_on_demand_read_only_what_is_asked() {
    let sends: Vec<Entry> = (1..=64)
        .map(|i| Entry {
            opcode: efa_sys::IBV_WC_SEND,
            ..entry(i)
        })
        .collect();
    let recvs: Vec<Entry> = (1..=64)
        .map(|i| Entry {
            wc_flags: efa_sys::IBV_WC_WITH_IMM,
            ..entry(i)
        })
        .collect();
    let whole = |c: &mut PollCore| c.poll_into(&mut [WorkCompletion::default(); 64]).unwrap();
    // What a transport needs: the request id, the status and the vendor error.
    let summary = |c: &mut PollCore| {
        let mut sum = 0u64;
        let n = c
            .poll_with(64, |wc| {
                sum += wc.wr_id() + u64::from(wc.status().is_success());
                assert_eq!(wc.efa_status(), Some(EfaStatus::Ok));
            })
            .unwrap();
        assert_eq!(sum, (1..=64).sum::<u64>() + 64);
        n
    };
    let (send_whole, recv_whole) = (
        calls_per_cqe(sends.clone(), whole),
        calls_per_cqe(recvs, whole),
    );
    // Copied out by the caller's reader: wr_id and status only, as a hot loop reads a success.
    let lean = |c: &mut PollCore| {
        let mut out = [WorkCompletion::default(); 64];
        let n = c
            .poll_into_with(&mut out, |wc| WorkCompletion {
                wr_id: wc.wr_id(),
                status: wc.status(),
                ..WorkCompletion::default()
            })
            .unwrap();
        assert!(out
            .iter()
            .zip(1..=64)
            .all(|(w, i)| w.wr_id == i && w.is_success()));
        n
    };
    let send_lean = calls_per_cqe(sends.clone(), lean);
    let send_summary = calls_per_cqe(sends, summary);
    // Copied whole: vendor_err, qp_num, opcode (+ byte_len, wc_flags, imm, src_qp on receives),
    // plus next_poll for all but the first.
    assert_eq!((send_whole * 64.0) as u32, 3 * 64 + 63, "{send_whole}");
    assert_eq!((recv_whole * 64.0) as u32, 7 * 64 + 63, "{recv_whole}");
    // On demand: vendor_err alone (wr_id and status are fields), plus next_poll.
    assert_eq!((send_summary * 64.0) as u32, 64 + 63, "{send_summary}");
    // Into a slice by the caller's reader: no field reader at all, only next_poll.
    assert_eq!((send_lean * 64.0) as u32, 63, "{send_lean}");
    println!(
        "provider calls per CQE: whole copy {send_whole:.2} (send) {recv_whole:.2} (receive), \
         on demand {send_summary:.2}"
    );
}

#[test]
fn a_qp_dropped_inside_a_pass_is_destroyed_after_the_pass_ends() {
    let mut f = fake_cq(vec![entry(1), entry(2)]);
    let mut c = core(&mut f, true);
    let addr = c.as_raw() as usize;
    let events = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let log = std::rc::Rc::clone(&events);
    let n = c
        .poll_with(8, |_| {
            // What `Qp::drop` does inside a pass over its CQ.
            if held::in_pass([addr, addr]) && log.borrow().is_empty() {
                let later = std::rc::Rc::clone(&log);
                held::defer(held::Deferred {
                    cqs: [addr, addr],
                    destroy: Box::new(move || later.borrow_mut().push("destroy")),
                });
                log.borrow_mut().push("dropped");
            }
        })
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(*events.borrow(), ["dropped", "destroy"]);
    assert_eq!((f.starts, f.ends), (1, 1));
    assert!(!held::in_pass([addr, addr]));
}

#[test]
fn a_forgotten_pass_is_ended_before_the_next_one_starts() {
    let mut f = fake_cq(vec![entry(1), entry(2), entry(3)]);
    let mut c = core(&mut f, true);
    let addr = c.as_raw() as usize;
    let p = c.poll().unwrap().unwrap();
    std::mem::forget(p);
    assert!(
        held::in_pass([addr, addr]),
        "the forgotten pass holds the lock"
    );
    // The fake asserts that no pass starts inside another.
    let mut p = c.poll().unwrap().unwrap();
    assert_eq!(p.next().unwrap().unwrap().wr_id(), 2);
    drop(p);
    assert_eq!((f.starts, f.ends), (2, 2));
    assert!(!held::in_pass([addr, addr]));
    // Forgotten again, the pass is ended by the CQ's drop (`end_forgotten`), once.
    std::mem::forget(c.poll().unwrap().unwrap());
    c.end_forgotten();
    c.end_forgotten();
    assert_eq!((f.starts, f.ends), (3, 3));
    assert!(!held::in_pass([addr, addr]));
}
