//! A real etcd server for a test: Debian's `etcd-server` (`etcd` on PATH, installed by
//! `tests/setup`), on free loopback ports with its own data directory, killed on drop.
//!
//! Without the binary the tests using it skip with a message, unless `CI` is set: then its
//! absence fails them.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running etcd, killed (and its data directory removed) on drop.
pub struct EtcdServer {
    child: Child,
    dir: PathBuf,
    peer_port: u16,
    /// `127.0.0.1:port` of its client URL.
    pub endpoint: String,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Whether `etcd` can be run; without it, skip (outside CI) or fail (under CI).
fn have_etcd() -> bool {
    let present = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
        assert!(
            !ci,
            "etcd is not installed but CI is set: tests/setup installs it (etcd-server)"
        );
        eprintln!("SKIPPED: no `etcd` binary (apt-get install etcd-server, or run tests/setup)");
    }
    present
}

impl EtcdServer {
    /// Starts a one-member cluster and waits (bounded) until it answers `/health`; `None` when
    /// the binary is absent outside CI.
    pub fn start() -> Option<EtcdServer> {
        if !have_etcd() {
            return None;
        }
        let (client, peer_port) = (free_port(), free_port());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("etcd-test-{}-{client}-{nanos}", std::process::id()));
        let endpoint = format!("127.0.0.1:{client}");
        let child = spawn(&dir, &endpoint, peer_port);
        let server = EtcdServer {
            child,
            dir,
            peer_port,
            endpoint,
        };
        server.await_healthy();
        Some(server)
    }

    /// Kills the server, keeps it down for `down`, and starts it again on the same ports and
    /// data (what clients see of an etcd restart).
    pub fn restart(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = spawn(&self.dir, &self.endpoint, self.peer_port);
        self.await_healthy();
    }

    /// `etcd://` connection string of the server.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoint)
    }

    fn await_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.healthy() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("etcd on {} not healthy within 20 s", self.endpoint);
    }

    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(&self.endpoint) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!("GET /health HTTP/1.0\r\nHost: {}\r\n\r\n", self.endpoint);
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `etcd` serving clients on `endpoint` with its data in `dir`.
fn spawn(dir: &std::path::Path, endpoint: &str, peer_port: u16) -> Child {
    let c = format!("http://{endpoint}");
    let p = format!("http://127.0.0.1:{peer_port}");
    Command::new("etcd")
        .args(["--name", "t", "--data-dir"])
        .arg(dir)
        .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
        .args([
            "--listen-peer-urls",
            &p,
            "--initial-advertise-peer-urls",
            &p,
        ])
        .args(["--initial-cluster", &format!("t={p}")])
        .args(["--logger", "zap", "--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd")
}
