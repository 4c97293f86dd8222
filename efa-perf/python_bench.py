#!/usr/bin/env python3
"""Per-batch cost of the Python package beside the Rust engine, in the same process and run.

Two engines on the sim fabric; the same WRITE batches (batch 1 and batch 32, 64 bytes per
request by default) are run

* by the Rust API (a loop of submit, wait, recycle compiled into the extension and run without
  the GIL: `Engine._rust_loop_ns`), the reference;
* through the Pythonic API (`Engine.write` for batch 1; `Engine.transfer` with a list of 32
  `Request`s, and with the same 32 converted once into a `RequestList`);
* through the Mooncake-compatible API (`transfer_sync_write`, `batch_transfer_sync_write` with
  raw addresses resolved against the peer's published segments).

Prints ns per batch call and per request, the ratio to Rust, and what Python adds per batch
call. Build the extension in release mode first:

    (cd python && maturin develop --release) && python efa-perf/python_bench.py
"""

import argparse
import os
import statistics
import time

# One BLAS thread: numpy's idle BLAS threads would otherwise spin on the second core.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import efa_transport as et
from efa_transport.mooncake import TransferEngine


def per_call_ns(fn, iters):
    t0 = time.perf_counter_ns()
    for _ in range(iters):
        fn()
    return (time.perf_counter_ns() - t0) / iters


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=20000, help="batch calls per measurement")
    ap.add_argument("--rounds", type=int, default=5, help="measurements per case (median kept)")
    ap.add_argument("--length", type=int, default=64, help="bytes per request")
    args = ap.parse_args()
    if args.iters < 1 or args.rounds < 1 or args.length < 1:
        ap.error("--iters, --rounds and --length must be positive")
    n = args.length

    a = et.Engine("bench-a", "sim")
    b = et.Engine("bench-b", "sim")
    target = np.zeros(32 * n, dtype=np.uint8)
    b.register("kv", target)
    src = np.ones(32 * n, dtype=np.uint8)
    seg = a.register("src", src)
    remote = a.open_segment(f"{b.address}/kv")
    reqs32 = [et.Request.write(seg, i * n, remote, i * n, n) for i in range(32)]
    prepared32 = et.RequestList(reqs32)

    server, client = TransferEngine(), TransferEngine()
    for e in (server, client):
        assert e.initialize("127.0.0.1", "P2PHANDSHAKE", "sim", "") == 0, e.get_last_error()
    mc_target = np.zeros(32 * n, dtype=np.uint8)
    mc_src = np.ones(32 * n, dtype=np.uint8)
    assert server.register_memory(mc_target.ctypes.data, mc_target.nbytes) == 0
    assert client.register_memory(mc_src.ctypes.data, mc_src.nbytes) == 0
    peer = f"127.0.0.1:{server.get_rpc_port()}"
    locals32 = [mc_src.ctypes.data + i * n for i in range(32)]
    peers32 = [mc_target.ctypes.data + i * n for i in range(32)]
    lengths32 = [n] * 32
    l0, p0 = locals32[0], peers32[0]

    def mc1():
        if client.transfer_sync_write(peer, l0, p0, n) != 0:
            raise RuntimeError(client.get_last_error())

    def mc32():
        if client.batch_transfer_sync_write(peer, locals32, peers32, lengths32) != 0:
            raise RuntimeError(client.get_last_error())

    cases = {
        (1, "rust"): lambda: a._rust_loop_ns(seg, remote, 1, args.iters, n),
        (32, "rust"): lambda: a._rust_loop_ns(seg, remote, 32, args.iters, n),
        (1, "python"): lambda: per_call_ns(lambda: a.write(seg, 0, remote, 0, n), args.iters),
        (32, "python"): lambda: per_call_ns(lambda: a.transfer(reqs32), args.iters),
        (32, "python-prepared"): lambda: per_call_ns(lambda: a.transfer(prepared32), args.iters),
        (1, "mooncake"): lambda: per_call_ns(mc1, args.iters),
        (32, "mooncake"): lambda: per_call_ns(mc32, args.iters),
    }
    for fn in cases.values():  # warm up: workers, batches, resolution caches
        fn()
    samples = {k: [] for k in cases}
    for _ in range(args.rounds):  # interleaved, so drift hits every case alike
        for k, fn in cases.items():
            samples[k].append(fn())
    med = {k: statistics.median(v) for k, v in samples.items()}

    print(f"sim fabric, WRITE of {n} B per request, {args.iters} batch calls x {args.rounds} rounds (median)")
    print(f"{'batch':>5} {'api':<16} {'ns/call':>9} {'ns/request':>10} {'x rust':>7} {'added us/call':>13}")
    for (batch, api), ns in sorted(med.items()):
        rust = med[(batch, "rust")]
        print(f"{batch:>5} {api:<16} {ns:>9.0f} {ns / batch:>10.1f} {ns / rust:>7.2f} {(ns - rust) / 1000:>13.2f}")
    for e in (client, server):
        e.close()
    a.close()
    b.close()


if __name__ == "__main__":
    main()
