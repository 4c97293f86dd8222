//! Command line: subcommands and the perftest-compatible options.
//!
//! Flags keep perftest's letters and meanings where they mean something here; the help text of each says
//! what it really does in this tool.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// perftest's default control port.
pub const DEFAULT_PORT: u16 = 18515;

/// Top-level command line.
#[derive(Debug, Parser)]
#[command(
    name = "efa-perf",
    version,
    about = "perftest-style benchmarks for the EFA stack (send/write/read x bandwidth/latency, compare) and device info",
    long_about = "perftest-style benchmarks for the EFA stack.\n\n\
        Run `efa-perf write-bw` on one host (server) and `efa-perf write-bw HOST` on the other (client). \
        With no peer and no RDMA device the test runs both sides in this process over the software SRD \
        model (`sim`), so it works on any machine. Tables use perftest's columns so scripts that parse \
        perftest output parse these too."
)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List RDMA devices (EFA or not), ports, GIDs, EFA capabilities and counters, and the fabric the transport would select.
    Info(InfoArgs),
    /// SEND/RECV bandwidth (perftest ib_send_bw): two-sided SEND on the efa crate's SRD (EFA) or RC
    /// (other verbs devices) queue pairs; over sim and tcp it runs notify-bw and says so.
    SendBw(TestArgs),
    /// SEND/RECV latency, ping-pong (perftest ib_send_lat); over sim and tcp it runs notify-lat and says so.
    SendLat(TestArgs),
    /// WRITE_WITH_NOTIFY bandwidth through the transport engine (the engine's two-sided signal).
    NotifyBw(TestArgs),
    /// WRITE_WITH_NOTIFY latency through the transport engine, ping-pong.
    NotifyLat(TestArgs),
    /// RDMA WRITE bandwidth (perftest ib_write_bw).
    WriteBw(TestArgs),
    /// RDMA WRITE latency (perftest ib_write_lat).
    WriteLat(TestArgs),
    /// RDMA READ bandwidth (perftest ib_read_bw).
    ReadBw(TestArgs),
    /// RDMA READ latency (perftest ib_read_lat).
    ReadLat(TestArgs),
    /// Run the same sweep over the fast fabric (efa, else verbs, else sim) and over tcp; print ratios and draw a chart.
    Compare(CompareArgs),
    /// Memory registration speed (GiB/s): SIZE bytes registered through the engine and with one plain ibv_reg_mr
    /// of the same memory on the same device (the efa crate's Mr), N times each, with 4 KiB pages and, with
    /// --hugepages, 2 MiB pages; median and min-max, and the engine's ratio to the plain call.
    Reg(RegArgs),
    /// Check that every byte arrives: random READ, WRITE and WRITE_WITH_NOTIFY requests (patterns, offsets,
    /// lengths) from one engine to N peer engines in this process, every byte compared on both sides; exits
    /// non-zero on any mismatch or failed request.
    Validate(ValidateArgs),
}

/// Options of `info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Show only this device (default: all).
    #[arg(short = 'd', long = "ib-dev", value_name = "DEV")]
    pub device: Option<String>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub use efa_perf::control::{Metric, Verb};

/// Fabric to run over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FabricChoice {
    /// The best present: efa, else verbs, else sim (in loopback).
    Auto,
    /// AWS EFA, SRD queue pairs.
    Efa,
    /// Any other verbs device (Soft-RoCE, ConnectX), RC queue pairs.
    Verbs,
    /// The software SRD model, in this process only.
    Sim,
    /// Plain TCP sockets.
    Tcp,
}

/// Options shared by the six tests (perftest letters and meanings where they apply).
#[derive(Clone, Debug, Args)]
pub struct TestArgs {
    /// Peer to connect to: makes this side the client. Without it this side is the server (or runs in loopback,
    /// see --loopback).
    #[arg(value_name = "HOST")]
    pub peer: Option<String>,

    /// TCP port the server listens on and the client connects to, for the connection setup (perftest -p).
    #[arg(short = 'p', long = "port", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Address the server listens on for the control connection: 0.0.0.0 (the default) accepts clients on every
    /// interface, as perftest does; give one of this host's addresses (e.g. 127.0.0.1) to accept only there. The
    /// server registers at most 1 GiB for a client and reads control messages of at most 64 KiB.
    #[arg(long, value_name = "IP", default_value = "0.0.0.0")]
    pub bind: std::net::IpAddr,

    /// Run server and client in this process, over the chosen fabric (automatic when there is no peer and no
    /// RDMA device).
    #[arg(long, conflicts_with = "peer")]
    pub loopback: bool,

    /// Fabric: auto picks efa, else verbs, else sim. Replaces perftest's -c (connection type): efa means SRD,
    /// verbs means RC.
    #[arg(long, value_enum, default_value_t = FabricChoice::Auto)]
    pub fabric: FabricChoice,

    /// perftest's connection type, accepted for scripts: SRD selects --fabric efa, RC selects --fabric verbs;
    /// other types (UC, UD, XRC, DC) are not offered. Prefer --fabric.
    #[arg(short = 'c', long = "connection", value_name = "TYPE", value_parser = parse_connection)]
    pub connection: Option<FabricChoice>,

    /// RDMA device to use, e.g. efa_0 or rxe0 (perftest -d; default: first device of the fabric).
    #[arg(short = 'd', long = "ib-dev", value_name = "DEV")]
    pub device: Option<String>,

    /// Port of the RDMA device (perftest -i; EFA devices have only port 1).
    #[arg(short = 'i', long = "ib-port", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    pub ib_port: u8,

    /// GID index to address the port with (perftest -x; EFA uses index 0, RoCE v2 usually needs the IPv4 GID).
    #[arg(short = 'x', long = "gid-index", value_name = "INDEX")]
    pub gid_index: Option<u32>,

    /// Message size in bytes; K, M, G suffixes are powers of 1024 (perftest -s; default 65536 for bandwidth,
    /// 2 for latency).
    #[arg(short = 's', long = "size", value_name = "BYTES", value_parser = parse_size, conflicts_with = "all")]
    pub size: Option<u64>,

    /// Run all sizes from 2 bytes to 8 MiB in powers of two (perftest -a).
    #[arg(short = 'a', long = "all")]
    pub all: bool,

    /// Number of operations per size (perftest -n; at least 5; default 5000 for write bandwidth, else 1000).
    #[arg(short = 'n', long = "iters", value_name = "ITERS", value_parser = clap::value_parser!(u64).range(5..),
          conflicts_with = "duration")]
    pub iters: Option<u64>,

    /// Run each size for this many seconds instead of a fixed count (perftest -D).
    #[arg(short = 'D', long = "duration", value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..3600))]
    pub duration: Option<u64>,

    /// Queue pairs: parallel streams, striped over the fabric's rails (perftest -q).
    #[arg(short = 'q', long = "qp", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub qps: u32,

    /// Measure both directions at once and report their sum (perftest -b).
    #[arg(short = 'b', long = "bidirectional")]
    pub bidirectional: bool,

    /// Operations in flight per queue pair (perftest -t; default 128 for bandwidth, 1 for latency).
    #[arg(short = 't', long = "tx-depth", value_name = "DEPTH", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub tx_depth: Option<u32>,

    /// Bytes each queue pair cycles its bandwidth messages through, as perftest's cycle buffer (one page in
    /// perftest): messages of at most half of it take as many places in turn as fit in it at perftest's
    /// cache-line alignment, larger ones all take the same place, so a run touches the memory perftest's
    /// touches. Default: one place per message in flight (-t places of -s bytes, at most 256 MiB a side,
    /// 16 MiB a queue pair with --raw), the footprint of real transfers; on a device that copies in software
    /// (Soft-RoCE) a footprint larger than the caches lowers the figure. Given by the client; the server
    /// follows it.
    #[arg(long = "cycle-buffer", alias = "cycle_buffer", value_name = "BYTES", value_parser = parse_size)]
    pub cycle_buffer: Option<u64>,

    /// Report bandwidth in Gb/sec (10^9 bits) instead of MB/sec (2^20 bytes), as perftest's --report_gbits.
    #[arg(long = "report_gbits", alias = "report-gbits")]
    pub report_gbits: bool,

    /// Accepted for perftest compatibility: perftest's -F silences its warning about CPU frequency scaling. This
    /// tool turns its cycle-counter stamps into time by the run's own wall time, not by the CPU frequency
    /// /proc/cpuinfo reports, so there is no such check and the flag changes nothing.
    #[arg(short = 'F', long = "CPU-freq")]
    pub cpu_freq: bool,

    /// perftest's -R connects queue pairs through RDMA-CM. Not supported: connection setup here is the
    /// transport's own descriptor exchange over TCP (-p), which also serves EFA's connectionless SRD, where
    /// RDMA-CM does not apply. Giving it is an error.
    #[arg(short = 'R', long = "rdma_cm")]
    pub rdma_cm: bool,

    /// List every latency sample after each size's figures, sorted, with perftest's tail of the two
    /// largest left out (perftest -H); JSON carries them as samples_us, in the order measured.
    #[arg(short = 'H', long = "report-histogram", alias = "report_histogram")]
    pub report_histogram: bool,

    /// List every latency sample in the order measured, then sorted (perftest -U, which implies -H):
    /// how the latency moved over the run.
    #[arg(short = 'U', long = "report-unsorted", alias = "report_unsorted")]
    pub report_unsorted: bool,

    /// Report CPU utilisation of each side (user+system CPU time over wall time, from getrusage).
    #[arg(long = "cpu-util", alias = "cpu_util")]
    pub cpu_util: bool,

    /// Print results as CSV on stdout (schema in the README of efa-perf); banners go to stderr.
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,

    /// Print results as JSON on stdout (schema in the README of efa-perf); banners go to stderr.
    #[arg(long)]
    pub json: bool,

    /// Write an SVG chart to FILE: bandwidth against size, or latency percentiles against size.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,

    /// Seconds to wait for the peer to connect or answer before giving up (at least 1; a value too large for the
    /// clock, such as 18446744073709551615, means no limit).
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,

    /// Largest piece the transport posts as one work request. Default: the engine's, 64 KiB slices
    /// striped over the rails where there are several, and every message whole (as perftest posts it)
    /// where each fabric has one rail.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub slice_size: Option<u64>,

    /// efa fabric: when READ and WRITE travel over SEND/RECV (the two-sided protocol) instead of RDMA:
    /// where this device or the peer's lacks the RDMA operation, never (such operations are refused), or
    /// always (to measure the protocol against RDMA on the same devices). The banner names the path taken.
    #[arg(long = "two-sided", value_enum, default_value_t = TwoSidedChoice::Fallback)]
    pub two_sided: TwoSidedChoice,

    /// efa and verbs fabrics: how an idle target thread waits once its spin window is over: block on
    /// completion channels (where the device can raise CQ events), or sleep in intervals of up to
    /// 500 us and poll again (the behaviour before completion channels, kept for comparison).
    #[arg(long = "idle-wait", value_enum, default_value_t = IdleWaitChoice::Events)]
    pub idle_wait: IdleWaitChoice,

    /// efa fabric: poll each rail's CQ only when its hardware completion counter has moved (rdma-core
    /// master, devices with COMP_CNTR): a poll while transfers are in flight reads host memory instead
    /// of the CQ. Refused where the device or library lacks completion counters.
    #[arg(long = "completion-counters")]
    pub completion_counters: bool,

    /// How the engine's workers wait for completions: poll without pause (as perftest does), spin then
    /// yield then pause (the engine's default), or pause at once (least CPU). A pause blocks on the
    /// endpoint's completion channels where the efa fabric has them (wakes on the completion), else sleeps
    /// (a completion noticed up to 2 ms late, or 1/32 of the time waited in a longer wait). Default: busy
    /// for latency tests, as perftest polls; adaptive for bandwidth tests, the engine's own default (a
    /// worker with a full queue finds completions at every poll and keeps spinning; it stops spinning
    /// only where completions come slower than its spin, as on a software device sharing the CPUs).
    #[arg(long = "wait", value_enum)]
    pub wait: Option<WaitChoice>,

    /// Wait for completions instead of busy polling (perftest -e). send-bw and send-lat over efa or verbs,
    /// and the --raw tests (the efa crate's queue pairs, as perftest): both CQs are created on a completion channel, and a side
    /// that finds them empty arms them, polls once more, then sleeps on the channel (events acknowledged as
    /// read). Tests through the engine (write, read, notify, and send over sim or tcp): -e means --wait
    /// block with --idle-wait events: workers block on their endpoints' completion channels (the efa and verbs fabrics
    /// on devices that raise CQ events; elsewhere they pause between polls, see --wait) and target threads
    /// sleep on theirs. Give -e on both sides, as with perftest.
    #[arg(short = 'e', long = "use_event", alias = "use-event", conflicts_with_all = ["wait", "idle_wait"])]
    pub use_event: bool,

    /// Pin this process to these cpus, a Linux cpu list such as 2 or 0-3,8: the measuring threads (every
    /// thread efa-perf starts inherits the set) and the fabric's own target and service threads
    /// (the fabric's affinity). perftest has no core flag of its own: it is pinned from outside, with
    /// `taskset -c LIST ib_write_bw ...`, which works here too. Without --cpu, measuring threads are not
    /// pinned and the efa and verbs fabrics' threads go on their device's NUMA node when sysfs names one.
    #[arg(long = "cpu", value_name = "LIST", value_parser = parse_cpus)]
    pub cpu: Option<transport::affinity::CpuSet>,

    /// Run the test straight on the efa crate's queue pairs, as perftest measures (verbs level),
    /// instead of through the transport engine: SRD queue pairs on EFA, RC on other verbs devices.
    /// write-bw/read-bw: the client keeps -t RDMA WRITEs/READs in flight per queue pair against the
    /// server's region, the server posts nothing; read-lat: one READ at a time; write-lat: perftest's
    /// ping-pong polling memory (RC only: refused on EFA, whose SRD places bytes out of order). On
    /// EFA, RDMA needs the device's RDMA_WRITE/RDMA_READ capability (refused by name otherwise).
    /// send-bw and send-lat always run this way (accepted, changes nothing). Needs --fabric efa or
    /// verbs; give it on both sides. Compare with the default run to see the engine's own cost.
    #[arg(long)]
    pub raw: bool,

    /// Observability: engine metrics summary, hw_counters deltas, Prometheus listener.
    #[command(flatten)]
    pub observe: ObserveArgs,
}

/// How the engine's workers wait (`--wait`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WaitChoice {
    /// Poll without pause.
    Busy,
    /// Spin, yield, then pause.
    Adaptive,
    /// Pause from the first empty poll.
    Block,
}

impl TestArgs {
    /// The engine workers' wait mode for a test of `metric`: `-e` blocks; else `--wait`, by default
    /// busy for latency and the engine's default for bandwidth (see `--wait`).
    pub fn wait_mode(&self, metric: Metric) -> transport::WaitMode {
        if self.use_event {
            return transport::WaitMode::Block;
        }
        match (self.wait, metric) {
            (Some(w), _) => w.into(),
            (None, Metric::Lat) => transport::WaitMode::Busy,
            (None, Metric::Bw) => transport::WaitMode::default(),
        }
    }
}

impl From<WaitChoice> for transport::WaitMode {
    fn from(c: WaitChoice) -> Self {
        match c {
            WaitChoice::Busy => transport::WaitMode::Busy,
            WaitChoice::Adaptive => transport::WaitMode::default(),
            WaitChoice::Block => transport::WaitMode::Block,
        }
    }
}

/// What to report about the engines and devices around a test.
#[derive(Clone, Debug, Default, Args)]
pub struct ObserveArgs {
    /// After the test, print each engine's metrics (requests and bytes by opcode, failures by reason, per rail
    /// and peer, latency, registrations) on stderr.
    #[arg(long)]
    pub stats: bool,

    /// Print the RDMA devices' hw_counters (sysfs ports/1/hw_counters and hw_counters) that changed during the
    /// test, on stderr; a one-line note where there are none (sim, tcp, devices without counters).
    #[arg(long)]
    pub counters: bool,

    /// Serve the engines' metrics in Prometheus' text format at http://ADDR/metrics while the test runs (e.g.
    /// 127.0.0.1:9464; port 0 picks one and prints it).
    #[arg(long, value_name = "ADDR")]
    pub prometheus: Option<std::net::SocketAddr>,
}

/// Options of `validate`.
#[derive(Clone, Debug, Args)]
pub struct ValidateArgs {
    /// Fabric: auto picks efa, else verbs, else sim. Every engine runs in this process (tcp on 127.0.0.1).
    #[arg(long, value_enum, default_value_t = FabricChoice::Auto)]
    pub fabric: FabricChoice,

    /// Where segments are published: one in-process registry, or peer-to-peer discovery over TCP on loopback.
    #[arg(long, value_enum, default_value_t = crate::validate::MetadataChoice::Local)]
    pub metadata: crate::validate::MetadataChoice,

    /// Peer engines the requests go to.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub peers: u32,

    /// Requests in all.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ops: u64,

    /// Longest request in bytes (lengths are drawn from 1 to this); K, M suffixes.
    #[arg(long, default_value = "64K", value_parser = parse_size, value_name = "BYTES")]
    pub max_len: u64,

    /// Bytes of each peer's segment (at least --max-len).
    #[arg(long, default_value = "1M", value_parser = parse_size, value_name = "BYTES")]
    pub segment_size: u64,

    /// Requests per batch (no two of a batch overlap on either side).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub batch: u32,

    /// Seed of every random choice (default: from the clock; printed, to repeat a run).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Seconds to wait for each batch.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..3600))]
    pub timeout: u64,

    /// RDMA device for efa and verbs (default: the first of the fabric).
    #[arg(short = 'd', long = "ib-dev", value_name = "DEV")]
    pub device: Option<String>,

    /// Port of the RDMA device.
    #[arg(short = 'i', long = "ib-port", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    pub ib_port: u8,

    /// GID index (verbs; RoCE v2 usually needs the IPv4 GID).
    #[arg(short = 'x', long = "gid-index", value_name = "INDEX")]
    pub gid_index: Option<u32>,

    /// Largest piece posted as one work request (default: the engine's: 64 KiB over several rails,
    /// whole requests on one).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub slice_size: Option<u64>,

    /// efa fabric: when READ and WRITE travel over SEND/RECV.
    #[arg(long = "two-sided", value_enum, default_value_t = TwoSidedChoice::Fallback)]
    pub two_sided: TwoSidedChoice,

    /// For tests of the validator itself: flip one byte of a peer's segment after the first WRITE lands, before
    /// it is checked. The run must then fail, naming that byte.
    #[arg(long, hide = true)]
    pub inject_corruption: bool,

    /// Observability: engine metrics summary, hw_counters deltas, Prometheus listener.
    #[command(flatten)]
    pub observe: ObserveArgs,
}

/// How an idle target thread waits (`--idle-wait`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IdleWaitChoice {
    /// Block on completion channels.
    Events,
    /// Sleep and poll again.
    Sleep,
}

/// When the efa fabric carries READ and WRITE over SEND/RECV (`--two-sided`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TwoSidedChoice {
    /// Where a device lacks the RDMA operation.
    Fallback,
    /// Never: refuse what the devices lack.
    Never,
    /// Always, even where RDMA would do.
    Always,
}

/// Options of `reg`.
#[derive(Debug, Args)]
pub struct RegArgs {
    /// Bytes to register; K, M, G suffixes are powers of 1024.
    #[arg(short = 's', long = "size", default_value = "1G", value_parser = parse_size, value_name = "BYTES")]
    pub size: u64,
    /// Registrations of each kind per page size (the figures are their median, min and max).
    #[arg(short = 'n', long = "iters", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub iters: u32,
    /// Also run with 2 MiB pages: hugetlbfs pages when some are free (`/proc/sys/vm/nr_hugepages`), else memory
    /// advised for transparent hugepages (said so in the pages column); skipped with a note when neither can be had.
    #[arg(long)]
    pub hugepages: bool,
    /// The page sizes to run, comma separated (default 4k, and 2m with --hugepages): e.g. `--pages 2m` alone
    /// after reserving hugepages, to keep both sizes' memory from being needed at once.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    pub pages: Vec<PageChoice>,
    /// Fabric of the engine: auto picks efa, else verbs, else sim. Over sim and tcp there is no ibv_reg_mr to
    /// compare with: the engine's figure alone is printed.
    #[arg(long, value_enum, default_value_t = FabricChoice::Auto)]
    pub fabric: FabricChoice,
    /// RDMA device for the engine and the plain registration (default: the fabric's first).
    #[arg(short = 'd', long = "ib-dev", value_name = "DEV")]
    pub device: Option<String>,
}

/// A page size of `efa-perf reg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PageChoice {
    /// 4 KiB pages from the allocator.
    #[value(name = "4k")]
    Base,
    /// 2 MiB pages: hugetlbfs, else transparent hugepages.
    #[value(name = "2m")]
    Huge2M,
}

/// Options of `compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Operation to compare.
    #[arg(long, value_enum, default_value_t = CompareTest::WriteBw)]
    pub test: CompareTest,
    /// Fast fabric to compare with tcp (default: efa, else verbs, else sim).
    #[arg(long, value_enum, default_value_t = FabricChoice::Auto)]
    pub fabric: FabricChoice,
    /// Message size in bytes (default: sweep 2 B to 8 MiB in powers of two).
    #[arg(short = 's', long = "size", value_name = "BYTES", value_parser = parse_size)]
    pub size: Option<u64>,
    /// Smallest size of the sweep.
    #[arg(long, default_value = "64", value_parser = parse_size, value_name = "BYTES")]
    pub min_size: u64,
    /// Largest size of the sweep.
    #[arg(long, default_value = "8M", value_parser = parse_size, value_name = "BYTES")]
    pub max_size: u64,
    /// Operations per size and fabric.
    #[arg(short = 'n', long = "iters", value_parser = clap::value_parser!(u64).range(5..))]
    pub iters: Option<u64>,
    /// Queue pairs (parallel streams).
    #[arg(short = 'q', long = "qp", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub qps: u32,
    /// Operations in flight per queue pair.
    #[arg(short = 't', long = "tx-depth", value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub tx_depth: Option<u32>,
    /// Report bandwidth in Gb/sec instead of MB/sec.
    #[arg(long = "report_gbits", alias = "report-gbits")]
    pub report_gbits: bool,
    /// Where to write the chart.
    #[arg(long, value_name = "FILE.svg", default_value = "efa-perf-compare.svg")]
    pub plot: PathBuf,
    /// Print the comparison as CSV on stdout.
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    /// Print the comparison as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Tests `compare` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompareTest {
    /// RDMA WRITE bandwidth.
    WriteBw,
    /// RDMA READ bandwidth.
    ReadBw,
    /// SEND bandwidth.
    SendBw,
    /// RDMA WRITE latency.
    WriteLat,
    /// RDMA READ latency.
    ReadLat,
    /// SEND latency.
    SendLat,
}

impl CompareTest {
    /// The verb and metric of the test.
    pub fn split(self) -> (Verb, Metric) {
        match self {
            Self::WriteBw => (Verb::Write, Metric::Bw),
            Self::ReadBw => (Verb::Read, Metric::Bw),
            Self::SendBw => (Verb::Send, Metric::Bw),
            Self::WriteLat => (Verb::Write, Metric::Lat),
            Self::ReadLat => (Verb::Read, Metric::Lat),
            Self::SendLat => (Verb::Send, Metric::Lat),
        }
    }
}

/// Parses a size: a number with an optional K/M/G suffix (powers of 1024), at least 1.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 4096, 64K, 8M)"))?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("size '{text}' is too large"))?;
    if bytes == 0 {
        return Err("size must be at least 1 byte".into());
    }
    if bytes > 1 << 32 {
        return Err(format!(
            "size '{text}' is larger than 4 GiB, the largest message this tool sends"
        ));
    }
    Ok(bytes)
}

/// Parses `--cpu`: a non-empty Linux cpu list.
pub fn parse_cpus(text: &str) -> Result<transport::affinity::CpuSet, String> {
    let set: transport::affinity::CpuSet = text.parse().map_err(|e| format!("{e}"))?;
    if set.is_empty() {
        return Err("the cpu list is empty (give cpus such as 0-3,8)".into());
    }
    Ok(set)
}

/// Maps perftest's connection types onto fabrics.
fn parse_connection(text: &str) -> Result<FabricChoice, String> {
    match text.to_ascii_uppercase().as_str() {
        "SRD" => Ok(FabricChoice::Efa),
        "RC" => Ok(FabricChoice::Verbs),
        "UC" | "UD" | "XRC" | "DC" | "RAWETH" => Err(format!(
            "connection type '{text}' is not offered: use --fabric (SRD = efa, RC = verbs, or sim, tcp)"
        )),
        _ => Err(format!("unknown connection type '{text}' (perftest types here: SRD, RC; prefer --fabric)")),
    }
}

/// Options for an in-process run with perftest's defaults.
pub fn loopback_args() -> TestArgs {
    TestArgs {
        peer: None,
        port: DEFAULT_PORT,
        bind: std::net::IpAddr::from([0, 0, 0, 0]),
        loopback: true,
        fabric: FabricChoice::Auto,
        connection: None,
        device: None,
        ib_port: 1,
        gid_index: None,
        size: None,
        all: false,
        iters: None,
        duration: None,
        qps: 1,
        bidirectional: false,
        tx_depth: None,
        cycle_buffer: None,
        report_gbits: false,
        cpu_freq: false,
        rdma_cm: false,
        report_histogram: false,
        report_unsorted: false,
        cpu_util: false,
        csv: false,
        json: false,
        plot: None,
        timeout: 60,
        slice_size: None,
        two_sided: TwoSidedChoice::Fallback,
        idle_wait: IdleWaitChoice::Events,
        completion_counters: false,
        wait: None,
        use_event: false,
        cpu: None,
        raw: false,
        observe: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_parse_with_suffixes_and_reject_nonsense() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("8m"), Ok(8 << 20));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12x").unwrap_err().contains("12x"));
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn cpu_lists_parse_or_say_why() {
        assert_eq!(
            parse_cpus("0-1,3").map(|s| s.to_string()),
            Ok("0-1,3".into())
        );
        assert!(parse_cpus("").unwrap_err().contains("empty"));
        assert!(parse_cpus("2-x").unwrap_err().contains("2-x"));
        assert!(parse_cpus("4096").unwrap_err().contains("4096"));
    }

    #[test]
    fn use_event_conflicts_with_explicit_wait_modes_only() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        let cli = parse(&["efa-perf", "send-lat", "-e"]).unwrap();
        let Command::SendLat(a) = cli.command else {
            panic!("send-lat")
        };
        assert!(a.use_event);
        assert!(parse(&["efa-perf", "write-bw", "--use_event", "--wait", "busy"]).is_err());
        assert!(parse(&["efa-perf", "write-bw", "-e", "--idle-wait", "sleep"]).is_err());
        assert!(parse(&["efa-perf", "write-bw", "--use-event", "--cpu", "0"]).is_ok());
    }

    #[test]
    fn workers_poll_for_latency_and_wait_adaptively_for_bandwidth_unless_told() {
        use transport::WaitMode;
        let args = |argv: &[&str]| match Cli::try_parse_from(argv.iter().copied()).unwrap().command
        {
            Command::WriteBw(a) | Command::WriteLat(a) => a,
            other => panic!("{other:?}"),
        };
        let plain = args(&["efa-perf", "write-bw"]);
        assert_eq!(plain.wait_mode(Metric::Lat), WaitMode::Busy);
        assert_eq!(plain.wait_mode(Metric::Bw), WaitMode::default());
        assert_ne!(WaitMode::default(), WaitMode::Busy);
        let busy = args(&["efa-perf", "write-bw", "--wait", "busy"]);
        assert_eq!(busy.wait_mode(Metric::Bw), WaitMode::Busy);
        let adaptive = args(&["efa-perf", "write-lat", "--wait", "adaptive"]);
        assert_eq!(adaptive.wait_mode(Metric::Lat), WaitMode::default());
        let events = args(&["efa-perf", "write-lat", "-e"]);
        for metric in [Metric::Lat, Metric::Bw] {
            assert_eq!(events.wait_mode(metric), WaitMode::Block);
        }
    }

    #[test]
    fn connection_types_map_to_fabrics() {
        assert_eq!(parse_connection("srd"), Ok(FabricChoice::Efa));
        assert_eq!(parse_connection("RC"), Ok(FabricChoice::Verbs));
        assert!(parse_connection("UD").unwrap_err().contains("--fabric"));
    }
}
