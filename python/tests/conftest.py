"""Shared helpers: peer processes spoken to line by line, with every wait bounded."""

import os
import queue
import subprocess
import sys
import threading

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "peer.py")

#: Fabrics the two-process tests run over (the test command adds "efa" under soft-efa).
FABRICS = [f for f in os.environ.get("EFA_TRANSPORT_TEST_FABRICS", "tcp").split(",") if f]


class Peer:
    """A peer.py process; lines are read with a timeout so no test can hang."""

    def __init__(self, *args, timeout=60):
        self.proc = subprocess.Popen(
            [sys.executable, PEER, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.timeout = timeout
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, prefix, timeout=None):
        """The next line starting with `prefix`, split on spaces after it."""
        while True:
            try:
                line = self.lines.get(timeout=timeout or self.timeout)
            except queue.Empty:
                raise AssertionError(f"peer said nothing starting with {prefix!r} in time")
            if line is None:
                raise AssertionError(
                    f"peer exited ({self.proc.wait(5)}) before {prefix!r}: {self.proc.stderr.read()}"
                )
            if line.startswith(prefix):
                return line[len(prefix):].split()

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout=None):
        """Waits for the exit; returns the exit code."""
        try:
            return self.proc.wait(timeout or self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError("peer did not exit in time")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def peer_factory():
    peers = []

    def make(*args, **kw):
        p = Peer(*args, **kw)
        peers.append(p)
        return p

    yield make
    for p in peers:
        p.kill()
