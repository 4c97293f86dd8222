//! An emulated EFA device: its UDP socket, its tables (QPs, MRs, address handles), SRD's reliable
//! but unordered delivery, and the progress thread that plays the NIC: it serves remote requests
//! without the program, answers, retransmits and completes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock};
use std::time::{Duration, Instant};

use efa_sys::*;

use crate::config::{Config, DeviceConfig};
use crate::cq::{CqShared, Cqe, QpSlots, Slot};
use crate::gid;
use crate::profile::Profile;
use crate::status::*;
use crate::wire::{self, Header, Op, Packet, Request, MTU};

/// Requests in flight per peer before further ones wait for answers.
const WINDOW: usize = 32;
/// First retransmission timeout; it doubles per retry up to `MAX_RTO`.
const BASE_RTO: Duration = Duration::from_millis(5);
const MAX_RTO: Duration = Duration::from_millis(200);

/// What the device did, for tests and `hw_counters`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Packets sent (first transmissions and retransmissions).
    pub tx_pkts: AtomicU64,
    /// Packets received.
    pub rx_pkts: AtomicU64,
    /// Requests sent again after a timeout.
    pub retransmits: AtomicU64,
    /// Packets dropped by injected loss.
    pub dropped: AtomicU64,
    /// Packets held back and sent after later ones.
    pub reordered: AtomicU64,
    /// Requests received again and answered without executing them twice.
    pub duplicates: AtomicU64,
    /// Sends that met no receive buffer.
    pub rnr: AtomicU64,
    /// Requests failed because the peer stopped answering.
    pub unresp: AtomicU64,
    /// Work requests failed by injected errors.
    pub injected: AtomicU64,
    /// SEND, RDMA WRITE and RDMA READ work requests posted, and receives completed.
    pub send_wrs: AtomicU64,
    /// See `send_wrs`.
    pub write_wrs: AtomicU64,
    /// See `send_wrs`.
    pub read_wrs: AtomicU64,
    /// See `send_wrs`.
    pub recv_wrs: AtomicU64,
    /// Work requests posted with processing hints.
    pub hinted: AtomicU64,
    /// Work requests posted with inline data.
    pub inline: AtomicU64,
}

impl Counters {
    /// Every counter with its name, in a stable order.
    pub fn snapshot(&self) -> [(&'static str, u64); 15] {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("tx_pkts", g(&self.tx_pkts)),
            ("rx_pkts", g(&self.rx_pkts)),
            ("retrans_pkts", g(&self.retransmits)),
            ("dropped_pkts", g(&self.dropped)),
            ("reordered_pkts", g(&self.reordered)),
            ("dup_pkts", g(&self.duplicates)),
            ("rnr_naks", g(&self.rnr)),
            ("unresp_remote", g(&self.unresp)),
            ("injected_errors", g(&self.injected)),
            ("send_wrs", g(&self.send_wrs)),
            ("rdma_write_wrs", g(&self.write_wrs)),
            ("rdma_read_wrs", g(&self.read_wrs)),
            ("recv_wrs", g(&self.recv_wrs)),
            ("hinted_wrs", g(&self.hinted)),
            ("inline_wrs", g(&self.inline)),
        ]
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// SRD or UD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QpKind {
    /// Scalable Reliable Datagram (`IBV_QPT_DRIVER`, `EFADV_QP_DRIVER_TYPE_SRD`).
    Srd,
    /// Unreliable Datagram.
    Ud,
}

/// A posted receive.
#[derive(Debug)]
pub struct RecvWr {
    /// Its id.
    pub wr_id: u64,
    /// Its buffers.
    pub sges: Vec<ibv_sge>,
}

/// The device's view of a QP.
#[derive(Debug)]
pub struct QpEntry {
    /// Protection domain id.
    pub pd: u32,
    /// SRD or UD.
    pub kind: QpKind,
    /// `IBV_QPS_*`.
    pub state: ibv_qp_state,
    /// Q_Key set at INIT.
    pub qkey: u32,
    /// RNR retry count set at RTS (7: retry for ever).
    pub rnr_retry: u8,
    /// Where send completions go.
    pub send_cq: Arc<CqShared>,
    /// Where receive completions go.
    pub recv_cq: Arc<CqShared>,
    /// Posted receives, oldest first.
    pub rq: VecDeque<RecvWr>,
    /// Queue slots in use.
    pub slots: Arc<QpSlots>,
    /// Write-with-immediate consumes no receive buffer.
    pub unsolicited: bool,
    /// Completion counters attached, with their `IBV_QP_ATTACH_COMP_CNTR_OP_*` masks.
    pub counters: Vec<(Arc<crate::cntr::Counter>, u32)>,
}

impl QpEntry {
    /// Delivers a receive completion, counting it on the counters attached for receives.
    fn complete_recv(&self, cqe: Cqe) {
        let ok = cqe.status == OK;
        for (c, mask) in &self.counters {
            if mask & IBV_QP_ATTACH_COMP_CNTR_OP_RECV != 0 {
                c.add(ok);
            }
        }
        self.recv_cq.push(cqe);
    }
}

/// A memory registration.
#[derive(Debug, Clone, Copy)]
pub struct MrEntry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// `IBV_ACCESS_*`.
    pub access: u32,
    /// Protection domain id.
    pub pd: u32,
}

impl MrEntry {
    fn covers(&self, addr: u64, len: u64) -> bool {
        addr >= self.addr
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= self.addr + self.len)
    }
}

/// Where a work request goes.
#[derive(Debug, Clone, Copy)]
pub struct Dest {
    /// Target GID (from the AH).
    pub gid: [u8; 16],
    /// Target QP number.
    pub qpn: u32,
    /// Target Q_Key.
    pub qkey: u32,
}

/// What a send-queue work request does.
#[derive(Debug, Clone, Copy)]
pub enum WrKind {
    /// SEND, with immediate data if `imm` is set.
    Send { imm: Option<u32> },
    /// RDMA WRITE, with immediate data if `imm` is set.
    Write {
        rkey: u32,
        addr: u64,
        imm: Option<u32>,
    },
    /// RDMA READ.
    Read { rkey: u32, addr: u64 },
}

/// A send-queue work request that passed the provider's checks.
#[derive(Debug, Clone)]
pub struct SendWr {
    /// Its id.
    pub wr_id: u64,
    /// What it does.
    pub kind: WrKind,
    /// Where to.
    pub dest: Dest,
    /// Local buffers.
    pub sges: Vec<ibv_sge>,
    /// Inline data, copied at post time.
    pub inline: Option<Vec<u8>>,
}

/// Data of one request packet not yet sent.
#[derive(Debug)]
enum Source {
    Bytes(Vec<u8>),
    Memory { addr: u64, len: usize },
    Nothing,
}

#[derive(Debug)]
struct Chunk {
    op: u64,
    req: Request,
    src: Source,
    /// READ: where the answer's data goes.
    read_dst: u64,
}

#[derive(Debug)]
struct Inflight {
    op: u64,
    packet: Vec<u8>,
    first_sent: Instant,
    next_at: Instant,
    tries: u32,
    rnr_tries: u32,
    read_dst: u64,
    read_len: usize,
}

#[derive(Debug, Default)]
struct TxLink {
    next_seq: u64,
    inflight: BTreeMap<u64, Inflight>,
    backlog: VecDeque<Chunk>,
}

impl TxLink {
    fn floor(&self) -> u64 {
        self.inflight
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_seq)
    }
}

#[derive(Debug, Default)]
struct RxLink {
    /// Statuses of executed requests, by sequence number (at and above `floor`).
    done: HashMap<u64, u8>,
    /// Every request below this was answered and needs no answer again.
    floor: u64,
}

#[derive(Debug)]
struct PendingOp {
    qpn: u32,
    wr_id: u64,
    opcode: ibv_wc_opcode,
    chunks_left: u32,
    status: u8,
    cq: Arc<CqShared>,
    slots: Arc<QpSlots>,
    rnr_retry: u8,
    /// WRITE with immediate: the notification still to send once the data is placed.
    fin: Option<(SocketAddrV4, Request)>,
    /// Completion counters attached to the QP for this operation's kind.
    counters: Vec<Arc<crate::cntr::Counter>>,
}

/// Mutable state of a device, under one lock.
#[derive(Debug, Default)]
pub struct State {
    /// QPs by number.
    pub qps: HashMap<u32, QpEntry>,
    /// Registrations by key (lkey == rkey).
    pub mrs: HashMap<u32, MrEntry>,
    /// Address handles by destination GID: how many, and the first one's number (what a receive
    /// completion reports as `slid`).
    pub peers: HashMap<[u8; 16], (u32, u16)>,
    /// Id counters.
    pub next_qpn: u32,
    /// See `next_qpn`.
    pub next_key: u32,
    /// See `next_qpn`.
    pub next_pd: u32,
    /// See `next_qpn`.
    pub next_ahn: u16,
    links: HashMap<SocketAddrV4, TxLink>,
    rx: HashMap<(SocketAddrV4, u64), RxLink>,
    ops: HashMap<u64, PendingOp>,
    next_op: u64,
    held: Vec<(Instant, SocketAddrV4, Vec<u8>)>,
    rng: u64,
    scratch: Vec<u8>,
}

/// One emulated device.
#[derive(Debug)]
pub struct Device {
    /// Index in the device list.
    pub index: usize,
    /// Name (`ibv_get_device_name`).
    pub name: String,
    /// Generation.
    pub profile: &'static Profile,
    /// Bound UDP address.
    pub addr: SocketAddrV4,
    /// Port 1's GID (index 0), which encodes `addr`.
    pub gid: [u8; 16],
    /// Node GUID.
    pub guid: u64,
    /// The fake sysfs directory (`ibdev_path`).
    pub sysfs: PathBuf,
    /// What it did.
    pub counters: Counters,
    /// Tables and links.
    pub state: Mutex<State>,
    socket: UdpSocket,
    instance: u64,
    config: &'static Config,
    progress: Once,
}

static CONFIG: OnceLock<Result<Config, String>> = OnceLock::new();
static DEVICES: OnceLock<Result<Vec<Arc<Device>>, String>> = OnceLock::new();

/// The process's configuration, read once.
pub fn config() -> Result<&'static Config, &'static str> {
    CONFIG
        .get_or_init(|| Config::from_env().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| e.as_str())
}

/// The rdma-core release whose provider rules apply (`SOFT_EFA_RDMA_CORE`, 65 = master).
pub fn release() -> u32 {
    config().map_or(65, |c| c.rdma_core)
}

/// The devices of this process, created (sockets bound) on first call.
pub fn devices() -> Result<&'static [Arc<Device>], &'static str> {
    DEVICES
        .get_or_init(|| {
            let config = config().map_err(str::to_owned)?;
            config
                .devices
                .iter()
                .enumerate()
                .map(|(i, d)| Device::new(i, d, config).map(Arc::new))
                .collect()
        })
        .as_deref()
        .map_err(|e| e.as_str())
}

fn random_u64() -> u64 {
    let mut v = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into `v`.
    let n = unsafe { libc::getrandom((&mut v as *mut u64).cast(), 8, 0) };
    if n != 8 {
        v = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
    }
    v | 1
}

impl Device {
    fn new(index: usize, cfg: &DeviceConfig, config: &'static Config) -> Result<Device, String> {
        let socket = UdpSocket::bind(cfg.addr)
            .map_err(|e| format!("soft-efa: device {}: bind {}: {e}", cfg.name, cfg.addr))?;
        grow_buffers(&socket);
        let addr = match socket.local_addr() {
            Ok(std::net::SocketAddr::V4(a)) => a,
            other => {
                return Err(format!(
                    "soft-efa: device {}: local address {other:?}",
                    cfg.name
                ))
            }
        };
        let gid = gid::from_addr(addr);
        let instance = random_u64();
        let sysfs = crate::sysfs::create(&cfg.name, cfg.profile, &gid)
            .map_err(|e| format!("soft-efa: device {}: sysfs tree: {e}", cfg.name))?;
        let seed = if config.faults.seed != 0 {
            config.faults.seed ^ (index as u64 + 1)
        } else {
            instance
        };
        Ok(Device {
            index,
            name: cfg.name.clone(),
            profile: cfg.profile,
            addr,
            gid,
            guid: u64::from_be_bytes(gid[8..].try_into().unwrap()),
            sysfs,
            counters: Counters::default(),
            state: Mutex::new(State {
                next_qpn: 1,
                next_key: 1,
                next_pd: 1,
                next_ahn: 1,
                rng: seed | 1,
                ..State::default()
            }),
            socket,
            instance,
            config,
            progress: Once::new(),
        })
    }

    /// Locks the device's tables.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the progress thread (once).
    pub fn start(self: &Arc<Self>) {
        let dev = self.clone();
        self.progress.call_once(move || {
            std::thread::Builder::new()
                .name(format!("soft-efa {}", dev.name))
                .spawn(move || dev.progress_loop())
                .expect("spawn soft-efa progress thread");
        });
    }

    fn progress_loop(self: Arc<Self>) {
        let _ = self.socket.set_read_timeout(Some(Duration::from_millis(1)));
        let mut buf = vec![0u8; 65536];
        let mut last_counters = Instant::now();
        loop {
            if let Ok((n, std::net::SocketAddr::V4(from))) = self.socket.recv_from(&mut buf) {
                bump(&self.counters.rx_pkts);
                let mut st = self.lock();
                self.receive(&mut st, from, &buf[..n]);
            }
            let now = Instant::now();
            self.tick(&mut self.lock(), now);
            if now.duration_since(last_counters) > Duration::from_millis(200) {
                last_counters = now;
                crate::sysfs::write_counters(&self.sysfs, &self.counters);
            }
        }
    }

    fn rand(st: &mut State) -> f64 {
        st.rng ^= st.rng << 13;
        st.rng ^= st.rng >> 7;
        st.rng ^= st.rng << 17;
        (st.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Sends a packet, subject to injected loss and reordering.
    fn transmit(&self, st: &mut State, to: SocketAddrV4, packet: &[u8]) {
        let f = &self.config.faults;
        if f.loss > 0.0 && Self::rand(st) < f.loss {
            bump(&self.counters.dropped);
            return;
        }
        if f.reorder > 0.0 && Self::rand(st) < f.reorder {
            bump(&self.counters.reordered);
            let wait = f.delay.mul_f64(Self::rand(st));
            st.held.push((Instant::now() + wait, to, packet.to_vec()));
            return;
        }
        bump(&self.counters.tx_pkts);
        let _ = self.socket.send_to(packet, to);
    }

    // ---- the initiator's side ----

    /// Posts a checked send-queue work request of QP `qpn`. Errors the device finds (keys,
    /// addresses, peers) come back as error completions, never as a post failure.
    pub fn post_send(&self, st: &mut State, qpn: u32, wr: SendWr) {
        let Some(qp) = st.qps.get(&qpn) else { return };
        let (cq, slots, rnr_retry) = (qp.send_cq.clone(), qp.slots.clone(), qp.rnr_retry);
        let pd = qp.pd;
        let op_bit = match wr.kind {
            WrKind::Send { .. } => IBV_QP_ATTACH_COMP_CNTR_OP_SEND,
            WrKind::Write { .. } => IBV_QP_ATTACH_COMP_CNTR_OP_RDMA_WRITE,
            WrKind::Read { .. } => IBV_QP_ATTACH_COMP_CNTR_OP_RDMA_READ,
        };
        let counters = qp
            .counters
            .iter()
            .filter(|(_, m)| m & op_bit != 0)
            .map(|(c, _)| c.clone())
            .collect();
        slots.sq.fetch_add(1, Ordering::AcqRel);
        let opcode = match wr.kind {
            WrKind::Send { .. } => {
                bump(&self.counters.send_wrs);
                IBV_WC_SEND
            }
            WrKind::Write { .. } => {
                bump(&self.counters.write_wrs);
                IBV_WC_RDMA_WRITE
            }
            // EFA reports a completed RDMA READ as IBV_WC_SEND (the provider never reports
            // IBV_WC_RDMA_READ).
            WrKind::Read { .. } => {
                bump(&self.counters.read_wrs);
                IBV_WC_SEND
            }
        };
        let op_id = st.next_op;
        st.next_op += 1;
        let mut op = PendingOp {
            qpn,
            wr_id: wr.wr_id,
            opcode,
            chunks_left: 0,
            status: OK,
            cq,
            slots,
            rnr_retry,
            fin: None,
            counters,
        };
        let f = &self.config.faults;
        if f.error > 0.0 && Self::rand(st) < f.error {
            bump(&self.counters.injected);
            op.status = REMOTE_ABORT;
            return self.complete(op);
        }
        let Some(to) = gid::to_addr(&wr.dest.gid) else {
            op.status = UNREACH_REMOTE;
            return self.complete(op);
        };
        let chunks = match self.chunks(st, pd, qpn, op_id, &wr) {
            Ok(c) => c,
            Err(s) => {
                op.status = s;
                return self.complete(op);
            }
        };
        if let WrKind::Write { imm: Some(imm), .. } = wr.kind {
            let len = wr.sges.first().map_or(0, |s| s.length);
            op.fin = Some((
                to,
                self.request(Op::WriteImmFin, qpn, &wr.dest, imm, 0, 0, len),
            ));
        }
        op.chunks_left = chunks.len() as u32;
        if chunks.is_empty() {
            // A zero-length RDMA: nothing to move but the notification.
            return self.finish_or_fin(st, op_id, op);
        }
        st.ops.insert(op_id, op);
        st.links.entry(to).or_default().backlog.extend(chunks);
        self.pump(st, to);
    }

    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        op: Op,
        qpn: u32,
        d: &Dest,
        imm: u32,
        rkey: u32,
        addr: u64,
        len: u32,
    ) -> Request {
        Request {
            op,
            src_qpn: qpn,
            dst_qpn: d.qpn,
            qkey: d.qkey,
            imm,
            rkey,
            remote_addr: addr,
            len,
            sgid: self.gid,
        }
    }

    /// Checks the local buffers and cuts the work request into packets.
    fn chunks(
        &self,
        st: &State,
        pd: u32,
        qpn: u32,
        op: u64,
        wr: &SendWr,
    ) -> Result<Vec<Chunk>, u8> {
        let need = match wr.kind {
            WrKind::Read { .. } => IBV_ACCESS_LOCAL_WRITE,
            _ => 0,
        };
        for s in &wr.sges {
            let ok = st.mrs.get(&s.lkey).is_some_and(|m| {
                m.pd == pd && m.access & need == need && m.covers(s.addr, u64::from(s.length))
            });
            if !ok {
                return Err(LOCAL_INVALID_LKEY);
            }
        }
        let len: u64 = match &wr.inline {
            Some(b) => b.len() as u64,
            None => wr.sges.iter().map(|s| u64::from(s.length)).sum(),
        };
        let limit = match wr.kind {
            WrKind::Send { .. } => self.profile.max_msg_sz,
            _ => self.profile.max_rdma_size,
        };
        if len > u64::from(limit) {
            return Err(LOCAL_BAD_LENGTH);
        }
        let d = &wr.dest;
        let mut out = Vec::new();
        match wr.kind {
            WrKind::Send { imm } => {
                let data = match &wr.inline {
                    Some(b) => b.clone(),
                    // SAFETY: each SGE lies inside a live registration (checked above), which the
                    // program keeps mapped until the work request completes.
                    None => wr
                        .sges
                        .iter()
                        .flat_map(|s| unsafe { read_mem(s.addr, s.length as usize) })
                        .copied()
                        .collect(),
                };
                let op_code = if imm.is_some() { Op::SendImm } else { Op::Send };
                let req = self.request(op_code, qpn, d, imm.unwrap_or(0), 0, 0, data.len() as u32);
                out.push(Chunk {
                    op,
                    req,
                    src: Source::Bytes(data),
                    read_dst: 0,
                });
            }
            WrKind::Write { rkey, addr, .. } | WrKind::Read { rkey, addr } => {
                let is_read = matches!(wr.kind, WrKind::Read { .. });
                let (local, len) = match (&wr.inline, wr.sges.first()) {
                    (Some(b), _) => {
                        let r = self.request(Op::Write, qpn, d, 0, rkey, addr, b.len() as u32);
                        if !b.is_empty() {
                            out.push(Chunk {
                                op,
                                req: r,
                                src: Source::Bytes(b.clone()),
                                read_dst: 0,
                            });
                        }
                        return Ok(out);
                    }
                    (None, Some(s)) => (s.addr, s.length as u64),
                    (None, None) => (0, 0),
                };
                let mut off = 0u64;
                while off < len {
                    let n = (len - off).min(MTU as u64);
                    let raddr = addr.wrapping_add(off);
                    if is_read {
                        let req = self.request(Op::Read, qpn, d, 0, rkey, raddr, n as u32);
                        out.push(Chunk {
                            op,
                            req,
                            src: Source::Nothing,
                            read_dst: local + off,
                        });
                    } else {
                        let req = self.request(Op::Write, qpn, d, 0, rkey, raddr, n as u32);
                        let src = Source::Memory {
                            addr: local + off,
                            len: n as usize,
                        };
                        out.push(Chunk {
                            op,
                            req,
                            src,
                            read_dst: 0,
                        });
                    }
                    off += n;
                }
            }
        }
        Ok(out)
    }

    /// Sends what the window allows to `to`.
    fn pump(&self, st: &mut State, to: SocketAddrV4) {
        loop {
            let link = st.links.entry(to).or_default();
            if link.inflight.len() >= WINDOW {
                return;
            }
            let Some(chunk) = link.backlog.pop_front() else {
                return;
            };
            if !st.ops.contains_key(&chunk.op) {
                continue; // its work request already failed or was flushed
            }
            let link = st.links.get_mut(&to).unwrap();
            let seq = link.next_seq;
            let floor = link.floor();
            link.next_seq += 1;
            let h = Header {
                response: false,
                instance: self.instance,
                seq,
                floor,
            };
            let mut packet = std::mem::take(&mut st.scratch);
            match &chunk.src {
                Source::Bytes(b) => wire::encode_request(&mut packet, &h, &chunk.req, b),
                // SAFETY: the range was checked against a live registration at post time; the
                // program keeps it until the work request completes.
                Source::Memory { addr, len } => {
                    wire::encode_request(&mut packet, &h, &chunk.req, unsafe {
                        read_mem(*addr, *len)
                    })
                }
                Source::Nothing => wire::encode_request(&mut packet, &h, &chunk.req, &[]),
            }
            let now = Instant::now();
            self.transmit(st, to, &packet);
            let link = st.links.get_mut(&to).unwrap();
            link.inflight.insert(
                seq,
                Inflight {
                    op: chunk.op,
                    packet,
                    first_sent: now,
                    next_at: now + BASE_RTO,
                    tries: 0,
                    rnr_tries: 0,
                    read_dst: chunk.read_dst,
                    read_len: if chunk.req.op == Op::Read {
                        chunk.req.len as usize
                    } else {
                        0
                    },
                },
            );
        }
    }

    fn on_response(&self, st: &mut State, from: SocketAddrV4, h: &Header, status: u8, data: &[u8]) {
        let Some(link) = st.links.get_mut(&from) else {
            return;
        };
        let Some(mut inf) = link.inflight.remove(&h.seq) else {
            return;
        };
        let Some(op) = st.ops.get_mut(&inf.op) else {
            return self.pump(st, from);
        };
        if status == REMOTE_RNR {
            bump(&self.counters.rnr);
            inf.rnr_tries += 1;
            if op.rnr_retry == 7 || inf.rnr_tries <= u32::from(op.rnr_retry) {
                let now = Instant::now();
                inf.first_sent = now;
                inf.next_at = now + self.config.rnr_delay;
                st.links.get_mut(&from).unwrap().inflight.insert(h.seq, inf);
                return;
            }
        }
        if status == OK && inf.read_len > 0 {
            if data.len() == inf.read_len {
                // SAFETY: the destination was checked against a registration with local write
                // access at post time; the program keeps it until the READ completes.
                unsafe { write_mem(inf.read_dst, data) };
            } else if op.status == OK {
                op.status = REMOTE_BAD_LENGTH;
            }
        }
        if status != OK && op.status == OK {
            op.status = status;
        }
        op.chunks_left -= 1;
        if op.chunks_left == 0 {
            let op = st.ops.remove(&inf.op).unwrap();
            self.finish_or_fin(st, inf.op, op);
        }
        self.pump(st, from);
    }

    /// Completes an operation whose data has all been placed, or first sends its write-with-
    /// immediate notification.
    fn finish_or_fin(&self, st: &mut State, op_id: u64, mut op: PendingOp) {
        match op.fin.take() {
            Some((to, req)) if op.status == OK => {
                op.chunks_left = 1;
                st.ops.insert(op_id, op);
                let chunk = Chunk {
                    op: op_id,
                    req,
                    src: Source::Nothing,
                    read_dst: 0,
                };
                st.links.entry(to).or_default().backlog.push_back(chunk);
                self.pump(st, to);
            }
            _ => self.complete(op),
        }
    }

    fn complete(&self, op: PendingOp) {
        if op.status == UNRESP_REMOTE {
            bump(&self.counters.unresp);
        }
        for c in &op.counters {
            c.add(op.status == OK);
        }
        op.cq.push(Cqe {
            wr_id: op.wr_id,
            status: op.status,
            opcode: op.opcode,
            byte_len: 0,
            imm: None,
            qp_num: op.qpn,
            src_qp: 0,
            sgid: [0; 16],
            unsolicited: false,
            slid: 0,
            slot: Slot::Sq(op.slots),
        });
    }

    /// Retransmits what timed out, fails what ran out of time, releases held packets.
    fn tick(&self, st: &mut State, now: Instant) {
        let due: Vec<(Instant, SocketAddrV4, Vec<u8>)>;
        (due, st.held) = std::mem::take(&mut st.held)
            .into_iter()
            .partition(|(t, _, _)| *t <= now);
        for (_, to, p) in due {
            bump(&self.counters.tx_pkts);
            let _ = self.socket.send_to(&p, to);
        }
        let unresp = self.config.unresp;
        let mut resend = Vec::new();
        let mut dead = Vec::new();
        for (addr, link) in &mut st.links {
            for (seq, inf) in &mut link.inflight {
                if inf.next_at > now {
                    continue;
                }
                if now.duration_since(inf.first_sent) > unresp {
                    dead.push((*addr, *seq));
                    continue;
                }
                inf.tries += 1;
                let rto = BASE_RTO.saturating_mul(1 << inf.tries.min(6)).min(MAX_RTO);
                inf.next_at = now + rto;
                resend.push((*addr, inf.packet.clone()));
            }
        }
        for (to, p) in resend {
            bump(&self.counters.retransmits);
            self.transmit(st, to, &p);
        }
        for (addr, seq) in dead {
            self.fail_link(st, addr, seq);
        }
    }

    /// The peer at `addr` stopped answering `seq`: that request's work request and every other
    /// one waiting on the same peer fail with `UNRESP_REMOTE`.
    fn fail_link(&self, st: &mut State, addr: SocketAddrV4, seq: u64) {
        let Some(link) = st.links.get_mut(&addr) else {
            return;
        };
        if !link.inflight.contains_key(&seq) {
            return;
        }
        let mut ops: Vec<u64> = link.inflight.values().map(|i| i.op).collect();
        ops.extend(link.backlog.iter().map(|c| c.op));
        link.inflight.clear();
        link.backlog.clear();
        ops.sort_unstable();
        ops.dedup();
        for id in ops {
            if let Some(mut op) = st.ops.remove(&id) {
                op.status = UNRESP_REMOTE;
                self.complete(op);
            }
        }
    }

    /// Fails every outstanding send of `qpn` and every posted receive with `FLUSHED` (the QP
    /// moved to the error state).
    pub fn flush_qp(&self, st: &mut State, qpn: u32) {
        let ids: Vec<u64> = st
            .ops
            .iter()
            .filter(|(_, o)| o.qpn == qpn)
            .map(|(k, _)| *k)
            .collect();
        for id in ids {
            let mut op = st.ops.remove(&id).unwrap();
            op.status = FLUSHED;
            self.complete(op);
        }
        if let Some(qp) = st.qps.get_mut(&qpn) {
            let posted: Vec<RecvWr> = qp.rq.drain(..).collect();
            for r in posted {
                qp.complete_recv(Cqe {
                    wr_id: r.wr_id,
                    status: FLUSHED,
                    opcode: IBV_WC_RECV,
                    qp_num: qpn,
                    slot: Slot::Rq(qp.slots.clone()),
                    ..Cqe::default()
                });
            }
        }
    }

    /// Forgets a destroyed QP's outstanding work: no completion will be generated for it.
    pub fn forget_qp(&self, st: &mut State, qpn: u32) {
        st.ops.retain(|_, o| o.qpn != qpn);
        st.qps.remove(&qpn);
    }

    // ---- the target's side ----

    fn receive(&self, st: &mut State, from: SocketAddrV4, buf: &[u8]) {
        match wire::decode(buf) {
            Some(Packet::Response(h, status, data)) => self.on_response(st, from, &h, status, data),
            Some(Packet::Request(h, req, payload)) => self.on_request(st, from, &h, &req, payload),
            None => {}
        }
    }

    fn on_request(
        &self,
        st: &mut State,
        from: SocketAddrV4,
        h: &Header,
        req: &Request,
        payload: &[u8],
    ) {
        let rx = st.rx.entry((from, h.instance)).or_default();
        // Below the highest floor the sender has reported, every request was answered: a copy
        // arriving now (held back, or retransmitted before the answer got through) is stale.
        rx.floor = rx.floor.max(h.floor);
        if h.seq < rx.floor {
            bump(&self.counters.duplicates);
            return;
        }
        if rx.done.len() > 4 * WINDOW {
            let floor = rx.floor;
            rx.done.retain(|seq, _| *seq >= floor);
        }
        let cached = rx.done.get(&h.seq).copied();
        let (status, data) = match cached {
            Some(s) => {
                bump(&self.counters.duplicates);
                // A READ is answered again with fresh data; everything else with its status.
                if req.op == Op::Read && s == OK {
                    self.serve_read(st, req)
                } else {
                    (s, Vec::new())
                }
            }
            None => {
                let (s, data) = match req.op {
                    Op::Send | Op::SendImm => (self.serve_send(st, req, payload), Vec::new()),
                    Op::Write => (self.serve_write(st, req, payload), Vec::new()),
                    Op::WriteImmFin => (self.serve_write_fin(st, req), Vec::new()),
                    Op::Read => self.serve_read(st, req),
                };
                if s != REMOTE_RNR {
                    st.rx
                        .entry((from, h.instance))
                        .or_default()
                        .done
                        .insert(h.seq, s);
                }
                (s, data)
            }
        };
        let rh = Header {
            response: true,
            instance: self.instance,
            seq: h.seq,
            floor: 0,
        };
        let mut packet = std::mem::take(&mut st.scratch);
        wire::encode_response(&mut packet, &rh, status, &data);
        self.transmit(st, from, &packet);
        st.scratch = packet;
    }

    /// The target QP for a request, if it exists and is ready to receive.
    fn target_qp<'a>(st: &'a mut State, req: &Request) -> Result<&'a mut QpEntry, u8> {
        match st.qps.get_mut(&req.dst_qpn) {
            Some(qp) if qp.state == IBV_QPS_RTR || qp.state == IBV_QPS_RTS => Ok(qp),
            _ => Err(REMOTE_BAD_DEST_QPN),
        }
    }

    /// The target registration for an RDMA request, checked as the device does: the initiator
    /// must be a known peer, the key valid in the QP's PD, the access right granted and the range
    /// inside the registration.
    fn rdma_target(st: &mut State, req: &Request, access: u32, len: u64) -> Result<MrEntry, u8> {
        if !st.peers.contains_key(&req.sgid) {
            return Err(REMOTE_UNKNOWN_PEER);
        }
        let pd = Self::target_qp(st, req)?.pd;
        match st.mrs.get(&req.rkey) {
            Some(m)
                if m.pd == pd && m.access & access == access && m.covers(req.remote_addr, len) =>
            {
                Ok(*m)
            }
            _ => Err(REMOTE_BAD_ADDRESS),
        }
    }

    fn serve_write(&self, st: &mut State, req: &Request, payload: &[u8]) -> u8 {
        if payload.len() != req.len as usize {
            return REMOTE_BAD_LENGTH;
        }
        match Self::rdma_target(st, req, IBV_ACCESS_REMOTE_WRITE, payload.len() as u64) {
            Ok(_) => {
                // SAFETY: the range lies inside a live registration with remote write access.
                unsafe { write_mem(req.remote_addr, payload) };
                OK
            }
            Err(s) => s,
        }
    }

    fn serve_read(&self, st: &mut State, req: &Request) -> (u8, Vec<u8>) {
        match Self::rdma_target(st, req, IBV_ACCESS_REMOTE_READ, u64::from(req.len)) {
            // SAFETY: the range lies inside a live registration with remote read access.
            Ok(_) => (
                OK,
                unsafe { read_mem(req.remote_addr, req.len as usize) }.to_vec(),
            ),
            Err(s) => (s, Vec::new()),
        }
    }

    fn ahn_of(peers: &HashMap<[u8; 16], (u32, u16)>, gid: &[u8; 16]) -> u16 {
        peers.get(gid).map_or(0xffff, |p| p.1)
    }

    fn serve_write_fin(&self, st: &mut State, req: &Request) -> u8 {
        let slid = Self::ahn_of(&st.peers, &req.sgid);
        let qp = match Self::target_qp(st, req) {
            Ok(qp) => qp,
            Err(s) => return s,
        };
        let mut cqe = Cqe {
            slid,
            status: OK,
            opcode: IBV_WC_RECV_RDMA_WITH_IMM,
            byte_len: req.len,
            imm: Some(req.imm),
            qp_num: req.dst_qpn,
            src_qp: req.src_qpn,
            sgid: req.sgid,
            ..Cqe::default()
        };
        if qp.unsolicited {
            cqe.unsolicited = true;
        } else {
            let Some(r) = qp.rq.pop_front() else {
                return REMOTE_RNR;
            };
            cqe.wr_id = r.wr_id;
            cqe.slot = Slot::Rq(qp.slots.clone());
        }
        qp.complete_recv(cqe);
        bump(&self.counters.recv_wrs);
        OK
    }

    fn serve_send(&self, st: &mut State, req: &Request, payload: &[u8]) -> u8 {
        let State {
            qps, mrs, peers, ..
        } = st;
        let slid = Self::ahn_of(peers, &req.sgid);
        let qp = match qps.get_mut(&req.dst_qpn) {
            Some(qp) if qp.state == IBV_QPS_RTR || qp.state == IBV_QPS_RTS => qp,
            _ => return REMOTE_BAD_DEST_QPN,
        };
        if qp.qkey != req.qkey {
            // A Q_Key mismatch is dropped by the receiving QP; the device still took the packet.
            return OK;
        }
        let Some(r) = qp.rq.pop_front() else {
            return REMOTE_RNR;
        };
        let mut cqe = Cqe {
            wr_id: r.wr_id,
            status: OK,
            opcode: IBV_WC_RECV,
            byte_len: payload.len() as u32,
            imm: (req.op == Op::SendImm).then_some(req.imm),
            qp_num: req.dst_qpn,
            src_qp: req.src_qpn,
            sgid: req.sgid,
            unsolicited: false,
            slid,
            slot: Slot::Rq(qp.slots.clone()),
        };
        let room: u64 = r.sges.iter().map(|s| u64::from(s.length)).sum();
        let keys_ok = r.sges.iter().all(|s| {
            mrs.get(&s.lkey).is_some_and(|m| {
                m.pd == qp.pd
                    && m.access & IBV_ACCESS_LOCAL_WRITE != 0
                    && m.covers(s.addr, u64::from(s.length))
            })
        });
        let result = if !keys_ok {
            cqe.status = LOCAL_INVALID_LKEY;
            REMOTE_ABORT
        } else if payload.len() as u64 > room {
            cqe.status = LOCAL_BAD_LENGTH;
            REMOTE_BAD_LENGTH
        } else {
            let mut rest = payload;
            for s in &r.sges {
                let n = rest.len().min(s.length as usize);
                // SAFETY: the SGE lies inside a live registration with local write access.
                unsafe { write_mem(s.addr, &rest[..n]) };
                rest = &rest[n..];
            }
            OK
        };
        qp.complete_recv(cqe);
        bump(&self.counters.recv_wrs);
        result
    }
}

/// Borrows `len` bytes of program memory at `addr`.
///
/// # Safety
/// The range must be mapped and readable for the returned lifetime.
unsafe fn read_mem<'a>(addr: u64, len: usize) -> &'a [u8] {
    if len == 0 {
        return &[];
    }
    std::slice::from_raw_parts(addr as usize as *const u8, len)
}

/// Copies `data` into program memory at `addr`.
///
/// # Safety
/// The range must be mapped and writable.
unsafe fn write_mem(addr: u64, data: &[u8]) {
    if !data.is_empty() {
        std::ptr::copy(data.as_ptr(), addr as usize as *mut u8, data.len());
    }
}

fn grow_buffers(socket: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 8 << 20;
    for opt in [
        libc::SO_RCVBUFFORCE,
        libc::SO_SNDBUFFORCE,
        libc::SO_RCVBUF,
        libc::SO_SNDBUF,
    ] {
        // SAFETY: setsockopt reads one c_int from a live local.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
    }
}
