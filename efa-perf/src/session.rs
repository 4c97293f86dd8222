//! The control connection between an efa-perf client and its server: one JSON object per line
//! (the exchange is drawn in [`remote`](crate::remote)), with a read deadline and a bound on line
//! length. Shared by the engine tests and the SEND tests.

use crate::cli::{TestArgs, Verb};
use crate::runner::{Amount, Point};
use anyhow::{anyhow, bail, Context};
use efa_perf::control::{self, LineError, Msg, RunAmount, Step, CLIENT_MAX_LINE};
use std::io::{BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A line-oriented JSON channel with a read deadline and a bound on line length.
pub(crate) struct Control {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    timeout: Duration,
    max_line: usize,
}

/// The client's first message: the run `plan` over `selection`'s fabric, messages of up to
/// `stripe` bytes, on the efa crate directly (`raw`) or through the engine.
pub(crate) fn hello(
    selection: &crate::select::Selection,
    plan: &crate::bench::Plan,
    stripe: u64,
    raw: bool,
) -> Msg {
    Msg::Hello {
        protocol: control::PROTOCOL,
        fabric: selection.fabric.to_string(),
        verb: plan.verb,
        metric: plan.metric,
        streams: plan.streams,
        depth: plan.depth,
        bidirectional: plan.bidirectional,
        stripe,
        raw,
        cycle_buffer: plan.cycle_buffer,
    }
}

/// The point a server serves: the shape its client's `hello` gave, one run of `size` and `amount`
/// of `verb`.
pub(crate) fn point(hello: &control::Hello, verb: Verb, size: u64, amount: Amount) -> Point {
    Point {
        verb,
        size,
        amount,
        streams: hello.streams,
        depth: hello.depth,
        cycle_buffer: hello.cycle_buffer,
        bidirectional: hello.bidirectional,
        cpu: true,
    }
}

/// Connects to the server named by the command line (`HOST`, `-p`), as its client.
pub(crate) fn dial(args: &TestArgs) -> anyhow::Result<Control> {
    let host = args
        .peer
        .as_deref()
        .ok_or_else(|| anyhow!("no peer given"))?;
    let timeout = Duration::from_secs(args.timeout);
    let target = format!("{host}:{}", args.port);
    let addr = target
        .to_socket_addrs()
        .with_context(|| format!("resolving {target}"))?
        .next()
        .ok_or_else(|| anyhow!("{target} resolves to no address"))?;
    let stream = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(10)))
        .with_context(|| {
            format!(
                "connecting to the efa-perf server at {addr} (is it running with -p {}?)",
                args.port
            )
        })?;
    Control::new(stream, timeout, CLIENT_MAX_LINE)
}

impl Control {
    /// The server's next step from the client: the size and amount of the next run, or `None`
    /// when the client said bye (reported on stderr). `stripe` bounds the size.
    pub(crate) fn next_run(&mut self, stripe: u64) -> anyhow::Result<Option<(u64, Amount)>> {
        Ok(match control::check_step(self.recv()?, stripe)? {
            Step::Run {
                size,
                amount: RunAmount::Iterations(n),
            } => Some((size, Amount::Iterations(n))),
            Step::Run {
                size,
                amount: RunAmount::Millis(ms),
            } => Some((size, Amount::Duration(Duration::from_millis(ms)))),
            Step::Bye => {
                eprintln!("efa-perf: client {} finished", self.peer);
                None
            }
        })
    }

    /// Asks the server to start point `p` and waits for its go.
    pub(crate) fn start_run(&mut self, p: &Point) -> anyhow::Result<()> {
        let (iterations, duration_ms) = match p.amount {
            Amount::Iterations(n) => (Some(n), None),
            Amount::Duration(d) => (None, Some(d.as_millis() as u64)),
        };
        self.send(&Msg::Run {
            size: p.size,
            iterations,
            duration_ms,
        })?;
        match self.recv()? {
            Msg::Go => Ok(()),
            other => bail!("server answered {other:?} instead of go"),
        }
    }

    pub(crate) fn new(
        stream: TcpStream,
        timeout: Duration,
        max_line: usize,
    ) -> anyhow::Result<Self> {
        // A timeout too long for the socket (`--timeout` of centuries) means none.
        let read_timeout = (timeout < Duration::from_secs(1 << 40)).then_some(timeout);
        stream.set_read_timeout(read_timeout)?;
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let local = stream.local_addr()?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            peer,
            local,
            timeout,
            max_line,
        })
    }

    /// Reads one line of at most `max_line` bytes, with errors worded for a person.
    fn read_line(&mut self) -> anyhow::Result<String> {
        control::read_line(&mut self.reader, self.max_line).map_err(|e| match e {
            LineError::Io(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                anyhow!(
                    "no answer from {} within {} s (raise --timeout if the peer is slow)",
                    self.peer,
                    self.timeout.as_secs()
                )
            }
            LineError::Io(e) => {
                anyhow::Error::new(e).context(format!("reading from {}", self.peer))
            }
            LineError::TooLong(_) => anyhow!("{} {e}; closing the connection", self.peer),
            e => anyhow!("{} {e}", self.peer),
        })
    }

    pub(crate) fn send(&mut self, m: &Msg) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(m)?;
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .with_context(|| format!("sending to {}", self.peer))
    }

    pub(crate) fn recv(&mut self) -> anyhow::Result<Msg> {
        let line = self.read_line()?;
        control::parse(&line).map_err(|e| match e {
            control::ControlError::Peer(message) => anyhow!("peer {}: {message}", self.peer),
            e => anyhow::Error::new(e).context(format!("from {}", self.peer)),
        })
    }
}
