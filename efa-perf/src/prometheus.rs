//! `--prometheus ADDR`: the engines' metrics in Prometheus' text format, served over HTTP at
//! `/metrics` by a small listener thread (plain `std::net`, one request per connection).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use transport::metrics::MetricsSnapshot;
use transport::{Engine, FailReason};

/// Samples of one family: labels and value.
type Samples = Vec<(String, f64)>;

/// Most bytes of a request read before answering.
const MAX_REQUEST: usize = 8192;

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes one metric family: its HELP and TYPE lines, then `(labels, value)` samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
}

/// The metrics of `engines` in the text exposition format.
pub fn render(engines: &[(String, MetricsSnapshot)]) -> String {
    let mut out = String::new();
    let per = |f: &dyn Fn(&str, &MetricsSnapshot) -> Samples| -> Samples {
        engines
            .iter()
            .flat_map(|(n, m)| f(&format!("engine=\"{}\"", escape(n)), m))
            .collect()
    };
    let ops = |pick: fn(&transport::metrics::OpMetrics) -> u64| {
        per(&move |e, m| {
            [
                ("READ", &m.read),
                ("WRITE", &m.write),
                ("WRITE_WITH_NOTIFY", &m.write_with_notify),
            ]
            .iter()
            .map(|(op, o)| (format!("{e},op=\"{op}\""), pick(o) as f64))
            .collect()
        })
    };
    let one = |pick: fn(&MetricsSnapshot) -> f64| per(&move |e, m| vec![(e.to_string(), pick(m))]);
    family(
        &mut out,
        "efa_transport_requests_total",
        "counter",
        "Requests posted.",
        &ops(|o| o.submitted),
    );
    family(
        &mut out,
        "efa_transport_bytes_total",
        "counter",
        "Bytes of the requests posted.",
        &ops(|o| o.bytes),
    );
    family(
        &mut out,
        "efa_transport_failed_total",
        "counter",
        "Requests failed.",
        &ops(|o| o.failed),
    );
    family(
        &mut out,
        "efa_transport_completed_total",
        "counter",
        "Requests completed.",
        &one(|m| m.completed as f64),
    );
    family(
        &mut out,
        "efa_transport_late_total",
        "counter",
        "Requests ended after a timeout or cancel.",
        &one(|m| m.late as f64),
    );
    family(
        &mut out,
        "efa_transport_rejected_submits_total",
        "counter",
        "Submit calls refused by validation.",
        &one(|m| m.rejected_submits as f64),
    );
    family(
        &mut out,
        "efa_transport_retries_total",
        "counter",
        "Work requests posted again after a transient failure.",
        &one(|m| m.retries as f64),
    );
    family(
        &mut out,
        "efa_transport_in_flight",
        "gauge",
        "Requests posted and not yet ended.",
        &one(|m| m.in_flight as f64),
    );
    family(
        &mut out,
        "efa_transport_workers",
        "gauge",
        "Live workers.",
        &one(|m| m.workers as f64),
    );
    family(
        &mut out,
        "efa_transport_registrations_total",
        "counter",
        "Segments registered.",
        &one(|m| m.registrations as f64),
    );
    family(
        &mut out,
        "efa_transport_unregistrations_total",
        "counter",
        "Segments unregistered.",
        &one(|m| m.unregistrations as f64),
    );
    family(
        &mut out,
        "efa_transport_registration_seconds_total",
        "counter",
        "Time spent registering memory.",
        &one(|m| m.registration_time.as_secs_f64()),
    );
    family(
        &mut out,
        "efa_transport_registered_bytes_total",
        "counter",
        "Bytes of memory registered.",
        &one(|m| m.registered_bytes as f64),
    );
    let reasons = per(&|e, m| {
        m.failures
            .iter()
            .map(|(r, n): &(FailReason, u64)| (format!("{e},reason=\"{}\"", r.name()), *n as f64))
            .collect()
    });
    family(
        &mut out,
        "efa_transport_failures_total",
        "counter",
        "Failed requests by reason.",
        &reasons,
    );
    let peer =
        |p: &transport::metrics::PeerMetrics| p.peer.map_or("other".to_string(), |p| p.to_string());
    let peers = |pick: fn(&transport::metrics::PeerMetrics) -> u64| {
        per(&move |e, m| {
            m.peers
                .iter()
                .map(|p| (format!("{e},peer=\"{}\"", peer(p)), pick(p) as f64))
                .collect()
        })
    };
    family(
        &mut out,
        "efa_transport_peer_requests_total",
        "counter",
        "Requests posted per peer.",
        &peers(|p| p.submitted),
    );
    family(
        &mut out,
        "efa_transport_peer_bytes_total",
        "counter",
        "Bytes posted per peer.",
        &peers(|p| p.bytes),
    );
    family(
        &mut out,
        "efa_transport_peer_failed_total",
        "counter",
        "Failed requests per peer.",
        &peers(|p| p.failed),
    );
    let rails = |pick: fn(&transport::metrics::RailMetrics) -> u64| {
        per(&move |e, m| {
            m.rails
                .iter()
                .map(|r| (format!("{e},rail=\"{}\"", r.rail), pick(r) as f64))
                .collect()
        })
    };
    family(
        &mut out,
        "efa_transport_rail_work_requests_total",
        "counter",
        "Work requests posted per rail.",
        &rails(|r| r.work_requests),
    );
    family(
        &mut out,
        "efa_transport_rail_bytes_total",
        "counter",
        "Bytes posted per rail.",
        &rails(|r| r.bytes),
    );
    latency(&mut out, engines);
    out
}

/// The latency histogram: cumulative `le` buckets in seconds, then sum and count.
fn latency(out: &mut String, engines: &[(String, MetricsSnapshot)]) {
    let name = "efa_transport_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Submit-to-complete latency of the timed requests."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (engine, m) in engines {
        let e = escape(engine);
        let mut cum = 0;
        for (i, n) in m.latency.buckets.iter().enumerate() {
            cum += n;
            let le = (1u64 << (i + 1)) as f64 / 1e9;
            let _ = writeln!(out, "{name}_bucket{{engine=\"{e}\",le=\"{le}\"}} {cum}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{engine=\"{e}\",le=\"+Inf\"}} {}",
            m.latency.count
        );
        let _ = writeln!(
            out,
            "{name}_sum{{engine=\"{e}\"}} {}",
            m.latency.sum_ns as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count{{engine=\"{e}\"}} {}", m.latency.count);
    }
}

/// Snapshots of `engines`, named.
pub fn snapshots(engines: &[Engine]) -> Vec<(String, MetricsSnapshot)> {
    engines
        .iter()
        .map(|e| (e.name().to_string(), e.metrics()))
        .collect()
}

/// A running `/metrics` listener; stops when dropped.
pub struct Exporter {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Listens on `addr` and serves the metrics of `engines`.
    ///
    /// # Errors
    ///
    /// Binding the address.
    pub fn start(addr: SocketAddr, engines: Vec<Engine>) -> std::io::Result<Exporter> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("efa-perf-prometheus".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::Acquire) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        // A client that misbehaves only loses its own answer.
                        let _ = serve(conn, &engines);
                    }
                }
            })?;
        Ok(Exporter {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one HTTP request: `GET /metrics` with the metrics, anything else with 404.
fn serve(mut conn: TcpStream, engines: &[Engine]) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (status, body) = match (words.next(), words.next()) {
        (Some("GET"), Some("/metrics")) => ("200 OK", render(&snapshots(engines))),
        _ => ("404 Not Found", "only GET /metrics is served\n".to_string()),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use transport::fabric::sim::{SimConfig, SimFabric, SimNetwork};
    use transport::{Access, EngineConfig, LocalRegistry, Location, OwnedMemory, Request};

    /// GET `path`; the status line and the body.
    fn get(addr: SocketAddr, path: &str) -> (String, String) {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        let (head, body) = s.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_string(), body.to_string())
    }

    /// The value of the sample `name{labels}` in a scrape.
    fn sample(body: &str, name_labels: &str) -> Option<f64> {
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name_labels)?.trim().parse().ok())
    }

    #[test]
    fn scrape_over_http_shows_counters_that_move_with_transfers() {
        let net = SimNetwork::new();
        let meta = Arc::new(LocalRegistry::new());
        let engine = |n: &str| {
            let f = SimFabric::new(&net, SimConfig::default()).unwrap();
            Engine::new(EngineConfig::new(n), f, meta.clone()).unwrap()
        };
        let (a, b) = (engine("a"), engine("b"));
        let mem = |n| OwnedMemory::zeroed(n, 64).unwrap();
        let src = a
            .register_owned("a/src", mem(4096), Location::Cpu(0), Access::NONE)
            .unwrap();
        b.register_owned("b/dst", mem(4096), Location::Cpu(0), Access::REMOTE_WRITE)
            .unwrap();
        let r = a.open_segment("b/dst").unwrap();
        let exporter =
            Exporter::start(([127, 0, 0, 1], 0).into(), vec![a.clone(), b.clone()]).unwrap();
        let addr = exporter.local_addr();

        let (status, before) = get(addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        let key = "efa_transport_bytes_total{engine=\"a\",op=\"WRITE\"}";
        assert_eq!(sample(&before, key), Some(0.0));
        // Every sample line parses as `name{labels} value`.
        for l in before.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = l.rsplit_once(' ').unwrap();
            assert!(name.contains('{') && name.ends_with('}'), "{l}");
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }

        let mut w = a.worker().unwrap();
        let batch = a.allocate_batch(4).unwrap();
        w.submit(batch, &[Request::write(src, 0, r, 0, 1000); 4])
            .unwrap();
        assert!(w
            .wait(batch, Duration::from_secs(5))
            .unwrap()
            .all_completed());
        let (_, after) = get(addr, "/metrics");
        assert_eq!(sample(&after, key), Some(4000.0));
        assert_eq!(
            sample(&after, "efa_transport_completed_total{engine=\"a\"}"),
            Some(4.0)
        );
        assert_eq!(
            sample(&after, "efa_transport_latency_seconds_count{engine=\"a\"}"),
            Some(4.0)
        );
        assert_eq!(
            sample(&after, "efa_transport_registrations_total{engine=\"b\"}"),
            Some(1.0)
        );
        assert_eq!(get(addr, "/other").0, "HTTP/1.1 404 Not Found");
        drop(exporter);
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
    }
}
