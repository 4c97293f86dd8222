//! Engine metrics through the API: counts by opcode, peer and rail, failures by reason,
//! latency, registrations; nothing counted when switched off.

mod common;

use std::time::Duration;

use common::*;
use transport::fabric::sim::{SimConfig, SimFaults};
use transport::*;

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn metrics_count_ops_bytes_rails_peers_and_latency() {
    let c = Cluster::new();
    let sim = SimConfig {
        rails: 2,
        ..SimConfig::default()
    };
    let mut cfg = EngineConfig::new("a");
    cfg.slice_size = Some(4096);
    let (a, _) = c.engine_with(cfg, sim.clone());
    let (b, _) = c.engine("b", sim);
    let src = owned(&a, "a/src", 1 << 16, Access::NONE, |i| i as u8);
    owned(&b, "b/dst", 1 << 16, Access::REMOTE_READ_WRITE, |_| 0);
    let r = a.open_segment("b/dst").unwrap();
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(8).unwrap();
    let reqs = [
        Request::write(src, 0, r, 0, 10_000),
        Request::read(src, 16384, r, 0, 100),
        Request::write(src, 0, r, 20_000, 8).with_op(Opcode::WriteWithNotify(1)),
    ];
    w.submit(batch, &reqs).unwrap();
    assert!(w.wait(batch, WAIT).unwrap().all_completed());
    let m = a.metrics();
    assert!(m.enabled);
    assert_eq!(m.workers, 1);
    assert_eq!((m.write.submitted, m.write.bytes), (1, 10_000));
    assert_eq!((m.read.submitted, m.read.bytes), (1, 100));
    assert_eq!(m.write_with_notify.submitted, 1);
    assert_eq!(
        (m.submitted(), m.bytes(), m.completed, m.failed()),
        (3, 10_108, 3, 0)
    );
    assert_eq!(m.in_flight, 0);
    // 10 000 bytes in 4 KiB slices is 3 work requests, striped over both rails with the rest.
    let wrs: u64 = m.rails.iter().map(|r| r.work_requests).sum();
    assert_eq!(wrs, 5);
    assert_eq!(m.rails.len(), 2);
    assert_eq!(m.rails.iter().map(|r| r.bytes).sum::<u64>(), 10_108);
    assert_eq!(m.peers.len(), 1);
    assert_eq!(m.peers[0].bytes, 10_108);
    // The first submit call is timed (then one in LATENCY_SAMPLE_EVERY).
    assert_eq!(m.latency.count, 3);
    assert!(m.latency.mean().unwrap() > Duration::ZERO);
    assert!(m.latency.quantile(1.0).unwrap() >= m.latency.mean().unwrap());
    assert_eq!(m.registrations, 1);
    assert_eq!(m.registered_bytes, 1 << 16);
    // A refused submit is counted and posts nothing.
    assert!(w
        .submit(batch, &[Request::write(src, 0, r, 1 << 20, 8)])
        .is_err());
    assert_eq!(a.metrics().rejected_submits, 1);
    assert_eq!(a.metrics().submitted(), 3);
    // A dropped worker's counts stay.
    drop(w);
    let m2 = a.metrics();
    assert_eq!((m2.workers, m2.submitted(), m2.completed), (0, 3, 3));
}

#[test]
fn failures_are_counted_by_reason_and_peer() {
    let c = Cluster::new();
    let (a, _) = c.engine("a", SimConfig::default());
    let faulty = SimConfig {
        faults: SimFaults {
            error_rate: 1.0,
            error_reasons: vec![FailReason::RemoteBadAddress],
            ..SimFaults::default()
        },
        ..SimConfig::default()
    };
    let (_b, _) = c.engine("b", SimConfig::default());
    let src = owned(&a, "a/src", 4096, Access::NONE, |_| 1);
    owned(&_b, "b/dst", 4096, Access::REMOTE_WRITE, |_| 0);
    let (a2, _) = c.engine("a2", faulty);
    let src2 = owned(&a2, "a2/src", 4096, Access::NONE, |_| 1);
    let r2 = a2.open_segment("b/dst").unwrap();
    let mut w = a2.worker().unwrap();
    let batch = a2.allocate_batch(4).unwrap();
    w.submit(batch, &[Request::write(src2, 0, r2, 0, 64); 4])
        .unwrap();
    let st = w.wait(batch, WAIT).unwrap();
    assert_eq!(st.failed, 4);
    let m = a2.metrics();
    assert_eq!(m.write.failed, 4);
    assert_eq!(m.failures, vec![(FailReason::RemoteBadAddress, 4)]);
    assert_eq!(m.peers[0].failed, 4);
    assert_eq!(m.in_flight, 0);
    // The healthy engine counted nothing.
    let _ = src;
    assert_eq!(a.metrics().submitted(), 0);
}

#[test]
fn metrics_off_counts_no_requests() {
    let c = Cluster::new();
    let mut cfg = EngineConfig::new("a");
    cfg.metrics = false;
    let (a, _) = c.engine_with(cfg, SimConfig::default());
    let (b, _) = c.engine("b", SimConfig::default());
    let (src, r) = write_path(&a, &b);
    let mut w = a.worker().unwrap();
    let batch = a.allocate_batch(1).unwrap();
    w.submit(batch, &[Request::write(src, 0, r, 0, 64)])
        .unwrap();
    assert!(w.wait(batch, WAIT).unwrap().all_completed());
    let m = a.metrics();
    assert!(!m.enabled);
    assert_eq!((m.submitted(), m.completed, m.latency.count), (0, 0, 0));
    assert_eq!(m.registrations, 1, "registrations are counted either way");
}

#[test]
fn each_registration_reports_its_time_length_rails_and_pages() {
    let c = Cluster::new();
    let sim = SimConfig {
        rails: 2,
        ..SimConfig::default()
    };
    let (a, _) = c.engine("a", sim);
    let small = owned(&a, "a/small", 8192, Access::NONE, |_| 0);
    let report = a.segment_info(small).unwrap().registration;
    assert_eq!(report.len, 8192);
    assert_eq!(report.rails.as_slice(), &[0, 1]);
    // Allocator memory: base pages, unless transparent hugepages are always on.
    if let Some(size) = report.page_size {
        assert!(size >= 4096 && size.is_power_of_two());
    }
    assert!(a.segment_pages(small).unwrap().page_size >= 4096);
    assert!(report.bytes_per_sec() > 0.0);
    // 2 MiB-aligned memory advised for transparent hugepages (or hugetlbfs pages where some
    // are reserved): the report knows hugetlbfs sizes; the kernel is asked about the rest.
    let mut mem = OwnedMemory::huge(4 << 20, HugePages::Any).unwrap();
    mem.as_mut_slice().fill(1);
    let backing = mem.backing();
    let huge = a
        .register_owned("a/huge", mem, Location::Cpu(0), Access::NONE)
        .unwrap();
    let report = a.segment_info(huge).unwrap().registration;
    assert_eq!(report.len, 4 << 20);
    let pages = a.segment_pages(huge).unwrap();
    match backing {
        Backing::Huge(size) => {
            assert_eq!(report.page_size, Some(size));
            assert_eq!(pages.page_size, size);
        }
        _ => {
            assert_eq!(report.page_size, None);
            let seen = pages.effective_page_size();
            assert!(seen == 4096 || seen == pages::SIZE_2M, "{pages:?}");
        }
    }
    let m = a.metrics();
    assert_eq!(m.registrations, 2);
    assert_eq!(m.registered_bytes, 8192 + (4 << 20));
    assert!(m.registration_time >= report.took);
}
