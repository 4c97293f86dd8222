"""The other process of the two-process tests. Talks on stdin/stdout, one line at a time; exits
by itself after 120 s whatever happens."""

import signal
import sys

import numpy as np

signal.alarm(120)


def layer2(fabric):
    import efa_transport as et

    with et.Engine("peer", fabric) as eng:
        buf = bytearray(1 << 20)
        eng.register("kv", buf, access="rw")
        print("ready", eng.address, flush=True)
        # The other side writes a pattern with notification tag 7, then says "check N".
        n = int(sys.stdin.readline().split()[1])
        got = eng.wait_notify(7, 1, timeout=60)
        expect = bytes((i * 7 + 1) % 256 for i in range(n))
        ok = got >= 1 and bytes(buf[4096:4096 + n]) == expect
        print("checked", "ok" if ok else "bad", flush=True)
        # Then it reads back what this side wrote at the start.
        buf[:16] = b"from-the-peer-16"
        print("wrote", flush=True)
        sys.stdin.readline()
    print("bye", flush=True)


def mooncake_server(protocol):
    from efa_transport.mooncake import TransferEngine

    engine = TransferEngine()
    assert engine.initialize("127.0.0.1", "P2PHANDSHAKE", protocol, "") == 0, engine.get_last_error()
    buf = np.zeros(1 << 20, dtype=np.uint8)
    addr = buf.ctypes.data
    assert engine.register_memory(addr, buf.nbytes) == 0, engine.get_last_error()
    buf[:8] = np.frombuffer(b"mooncake", dtype=np.uint8)
    print("ready", engine.get_rpc_port(), addr, buf.nbytes, flush=True)
    n = int(sys.stdin.readline().split()[1])
    expect = np.frombuffer(b"Hello, Transfer Engine!" * (n // 23 + 1), dtype=np.uint8)[:n]
    ok = np.array_equal(buf[4096:4096 + n], expect)
    print("checked", "ok" if ok else "bad", flush=True)
    sys.stdin.readline()
    assert engine.unregister_memory(addr) == 0
    print("bye", flush=True)


if __name__ == "__main__":
    {"layer2": layer2, "mooncake": mooncake_server}[sys.argv[1]](sys.argv[2])
