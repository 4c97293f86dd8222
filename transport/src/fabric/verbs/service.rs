//! The target side: the connection service (TCP listener thread) and the target thread that
//! owns every passive QP and its CQ per rail, counts notifications and reposts receives.
//!
//! Passive QPs are created on the target thread itself (the service hands it each request over
//! a channel), so their CQs have one owner and are polled without a lock.

use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ::efa::{Cq, QpBuilder, RcOptions, RcQp, WcOpcode, WorkCompletion};

use super::addr::QpAddress;
use super::handshake::{self, Request, Response};
use super::{random_u64, Rail, Shared, VerbsConfig};
use crate::fabric::rdma::backoff::Backoff;
use crate::fabric::rdma::events::{self, Events, WAIT_BOUND};
use crate::fabric::rdma::threads;
use crate::FabricError;

/// One connection request handed from the service to the target thread.
struct Setup {
    request: Request,
    reply: SyncSender<Response>,
}

/// The target thread's resources, created with the fabric.
pub(crate) struct Target {
    cqs: Vec<Cq>,
    /// Passive QPs per rail that the CQ can serve (`cq entries / recv_depth`).
    max_passive: usize,
    /// The completion channels the idle thread blocks on; `None` where a device cannot raise
    /// CQ events or the config turned them off.
    events: Option<Events>,
}

impl Target {
    pub(crate) fn new(rails: &[Rail], config: &VerbsConfig) -> Result<Target, FabricError> {
        let mut cqs = Vec::with_capacity(rails.len());
        let mut events = if config.cq_events {
            Some(
                Events::new(rails.iter().map(|r| &r.ctx))
                    .map_err(|e| FabricError::device("verbs", "target completion channel", e))?,
            )
        } else {
            None
        };
        for (i, r) in rails.iter().enumerate() {
            let max = r.ctx.device_attr().max_cqe;
            let cqe = if max == 0 {
                config.target_cq_depth
            } else {
                config.target_cq_depth.min(max)
            };
            let cq = events::cq_for(|| Cq::builder(&r.ctx, cqe), &mut events, i);
            cqs.push(cq.map_err(|e| {
                FabricError::device(
                    "verbs",
                    format_args!("{} target CQ of {cqe}", r.ctx.name()),
                    e,
                )
            })?);
        }
        let min_cq = cqs.iter().map(|c| c.capacity()).min().unwrap_or(0);
        Ok(Target {
            max_passive: (min_cq / config.recv_depth.max(1)) as usize,
            cqs,
            events,
        })
    }
}

/// Starts the service and target threads.
pub(crate) fn start(
    shared: Arc<Shared>,
    listener: TcpListener,
    target: Target,
    cpus: Option<crate::affinity::CpuSet>,
) -> Result<Vec<JoinHandle<()>>, FabricError> {
    listener
        .set_nonblocking(true)
        .map_err(|e| FabricError::os("verbs", "service socket", e))?;
    let (tx, rx) = mpsc::sync_channel::<Setup>(4);
    let s1 = shared.clone();
    let t1 = crate::affinity::spawn_pinned("verbs-target", cpus, move || {
        TargetThread::new(s1, target).run(rx)
    })
    .map_err(|e| FabricError::affinity("verbs", "the target thread", e))?;
    let stop = shared.stop.clone();
    match crate::affinity::spawn_pinned("verbs-service", cpus, move || serve(shared, listener, tx))
    {
        Ok(t2) => Ok(vec![t1, t2]),
        Err(e) => {
            // The target thread ends once the flag is up.
            stop.store(true, Ordering::SeqCst);
            let _ = t1.join();
            Err(FabricError::affinity("verbs", "the service thread", e))
        }
    }
}

/// Accepts handshakes one at a time until the fabric stops, asleep in poll(2) between them
/// (the fabric's drop wakes it with a connection: see `Threads::waking`).
fn serve(shared: Arc<Shared>, listener: TcpListener, tx: SyncSender<Setup>) {
    let timeout = shared.config.handshake_timeout;
    while !shared.stop.load(Ordering::Relaxed) {
        if !threads::acceptable(&listener, threads::ACCEPT_WAIT) {
            continue;
        }
        // Non-blocking: a connection that went away between the poll and here is no wait.
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => {
                // Out of descriptors, say: the next poll would report the same at once.
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let _ = handle(stream, &tx, timeout);
    }
}

fn handle(
    mut s: std::net::TcpStream,
    tx: &SyncSender<Setup>,
    timeout: Duration,
) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = handshake::receive(&mut s)?;
    let response = match Request::decode(&body) {
        Err(e) => Response::Refused(e.to_string()),
        Ok(request) => {
            let (reply, answer) = mpsc::sync_channel(1);
            match tx.send(Setup { request, reply }) {
                Err(_) => Response::Refused("target is shutting down".into()),
                Ok(()) => answer
                    .recv_timeout(timeout)
                    .unwrap_or_else(|_| Response::Refused("target thread did not answer".into())),
            }
        }
    };
    handshake::send(&mut s, &response.encode())
}

/// A passive QP and whether its receives are still being reposted.
struct Passive {
    qp: RcQp,
    rail: usize,
    live: bool,
}

struct TargetThread {
    shared: Arc<Shared>,
    target: Target,
    passive: Vec<Passive>,
    per_rail: Vec<usize>,
    scratch: Box<[WorkCompletion]>,
}

impl TargetThread {
    fn new(shared: Arc<Shared>, target: Target) -> Self {
        let rails = shared.rails.len();
        TargetThread {
            shared,
            target,
            passive: Vec::new(),
            per_rail: vec![0; rails],
            scratch: vec![WorkCompletion::default(); 64].into_boxed_slice(),
        }
    }

    fn run(mut self, rx: Receiver<Setup>) {
        let mut backoff = Backoff::new(self.shared.config.idle_spin);
        let mut events = self.target.events.take();
        while !self.shared.stop.load(Ordering::Relaxed) {
            let busy = self.pass(&rx);
            if !backoff.spun(busy) {
                continue;
            }
            let Some(ev) = events.as_mut() else {
                backoff.step(false);
                continue;
            };
            // Idle past the spin window: arm, poll once more (a completion that landed before
            // the arming raises no event), and only then block.
            if events::arm(self.target.cqs.iter_mut()).is_err() {
                events = None;
                continue;
            }
            if self.pass(&rx) {
                backoff.spun(true);
                continue;
            }
            if ev.wait(WAIT_BOUND).is_err() {
                events = None;
            }
        }
    }

    /// Serves pending connection requests and polls every rail once; whether there was work.
    fn pass(&mut self, rx: &Receiver<Setup>) -> bool {
        let mut busy = false;
        while let Ok(setup) = rx.try_recv() {
            let response = match self.setup(&setup.request) {
                Ok(qps) => Response::Accepted(qps),
                Err(e) => Response::Refused(e.to_string()),
            };
            let _ = setup.reply.send(response);
            busy = true;
        }
        for rail in 0..self.target.cqs.len() {
            busy |= self.poll_rail(rail);
        }
        busy
    }

    /// Creates, connects and arms the passive QPs for one initiator.
    fn setup(&mut self, req: &Request) -> Result<Vec<QpAddress>, FabricError> {
        let rails = self.shared.rails.len();
        if usize::from(req.target_rails) != rails {
            return Err(FabricError::BadAddress {
                rail: 0,
                reason: format!(
                    "initiator expects {} rails here, this engine has {rails}",
                    req.target_rails
                ),
            });
        }
        let per_rail_new = usize::from(req.slots) * req.rails.len();
        if self
            .per_rail
            .iter()
            .any(|&n| n + per_rail_new > self.target.max_passive)
        {
            return Err(FabricError::Exhausted(
                "verbs passive QPs (raise target_cq_depth or lower recv_depth)",
            ));
        }
        let recv_depth = self.shared.config.recv_depth;
        let mut created = Vec::with_capacity(req.qps.len());
        let mut out = Vec::with_capacity(req.qps.len());
        for (i, peer) in req.qps.iter().enumerate() {
            let (_, irail, t) = handshake::qp_rails(i, req.rails.len(), rails);
            let rail = &self.shared.rails[t];
            if peer.mtu != rail.mtu {
                return Err(FabricError::BadAddress {
                    rail: irail as u16,
                    reason: format!(
                        "path MTU mismatch: initiator QP {:#x} runs {:?}, {} runs {:?}",
                        peer.qpn,
                        peer.mtu,
                        rail.ctx.name(),
                        rail.mtu
                    ),
                });
            }
            let psn = (random_u64() & 0x00ff_ffff) as u32;
            let cq = &self.target.cqs[t];
            let io = |what: &str, e: ::efa::Error| {
                FabricError::device(
                    "verbs",
                    format_args!("{} passive QP: {what}", rail.ctx.name()),
                    e,
                )
            };
            let mut qp = QpBuilder::new(&rail.pd, cq, cq)
                .max_send_wr(1)
                .max_recv_wr(recv_depth)
                .max_send_sge(1)
                .max_recv_sge(1)
                .psn(psn)
                .port(self.shared.config.port)
                .gid_index(rail.gid.index)
                .rc_options(RcOptions {
                    timeout: self.shared.ack_timeout,
                    retry_cnt: super::RETRY_CNT,
                    max_rd_atomic: rail.rd_atomic,
                    ..RcOptions::default()
                })
                .build_rc()
                .map_err(|e| io("create", e))?;
            let index = (self.passive.len() + created.len()) as u64;
            for _ in 0..recv_depth {
                qp.post_recv(index, &[])
                    .map_err(|e| io("post receive", e))?;
            }
            qp.connect(&peer.endpoint()).map_err(|e| io("connect", e))?;
            out.push(QpAddress {
                qpn: qp.qp_num(),
                psn,
                gid: rail.gid.gid,
                lid: rail.lid,
                mtu: rail.mtu,
                rd_atomic: rail.rd_atomic,
            });
            created.push(Passive {
                qp,
                rail: t,
                live: true,
            });
        }
        for p in &created {
            self.per_rail[p.rail] += 1;
        }
        self.passive.extend(created);
        Ok(out)
    }

    /// Counts the notifications that arrived on one rail and reposts their receives.
    fn poll_rail(&mut self, rail: usize) -> bool {
        let want = self.scratch.len();
        let mut total = 0;
        // Bounded, so setup requests and other rails get their turn.
        for _ in 0..self.scratch.len() {
            let n = self.poll_chunk(rail, want);
            total += n;
            if n < want {
                break;
            }
        }
        total > 0
    }

    fn poll_chunk(&mut self, rail: usize, want: usize) -> usize {
        let n = match self.target.cqs[rail].poll_into(&mut self.scratch[..want]) {
            Ok(n) => n,
            Err(_) => return 0,
        };
        for wc in &self.scratch[..n] {
            let Some(p) = self.passive.get_mut(wc.wr_id as usize) else {
                continue;
            };
            if !wc.is_success() {
                // A flushed receive: the connection is in error (peer gone or QP torn down).
                p.live = false;
                continue;
            }
            if matches!(wc.opcode, Some(WcOpcode::Recv | WcOpcode::RecvRdmaWithImm)) {
                if let (Some(tag), Some(sink)) = (wc.imm, self.shared.notifications.get()) {
                    sink.record(tag);
                }
                if p.live && p.qp.post_recv(wc.wr_id, &[]).is_err() {
                    p.live = false;
                }
            }
        }
        n
    }
}
