"""Two engines in one process over the sim fabric: registration of every kind of buffer,
requests, batches, per-request status, notifications, injected failures."""

import mmap

import numpy as np
import pytest

import efa_transport as et


@pytest.fixture
def pair():
    a = et.Engine("a", "sim")
    b = et.Engine("b", "sim")
    yield a, b
    a.close()
    b.close()


def test_bytearray_to_numpy_and_back(pair):
    a, b = pair
    target = np.zeros((64, 64), dtype=np.float32)  # 16 KiB, two dimensions
    b.register("kv", target)
    src = bytearray(b"x" * 16384)
    seg = a.register("src", src)
    remote = a.open_segment(f"{b.address}/kv")
    assert (remote.base, remote.length) == (target.ctypes.data, target.nbytes)
    payload = np.arange(64, dtype=np.float32).tobytes()
    src[:256] = payload
    assert a.write(seg, 0, remote, 0, 256).ok
    assert np.array_equal(target[0], np.arange(64, dtype=np.float32))
    target[1] = 5.0
    assert a.read(seg, 1000, remote, 256, 256).ok
    assert np.frombuffer(bytes(src[1000:1256]), dtype=np.float32).tolist() == [5.0] * 64


def test_memoryview_mmap_and_owned_memory(pair):
    a, b = pair
    region = mmap.mmap(-1, 1 << 16)
    b.register("map", region)
    view = memoryview(bytearray(4096))
    seg = a.register("view", view)
    owned = a.allocate("owned", 4096)
    owned.write(0, b"owned-bytes")
    remote = a.open_segment(f"{b.address}/map")
    assert a.write(owned, 0, remote, 10, 11).ok
    assert region[10:21] == b"owned-bytes"
    region[100:104] = b"mmap"
    assert a.read(seg, 0, remote, 100, 4).ok
    assert bytes(view[:4]) == b"mmap"
    assert a.read(owned, 50, remote, 100, 4).ok
    assert owned.read(50, 4) == b"mmap"
    # While registered the mmap cannot be closed (its memory stays put).
    with pytest.raises(BufferError):
        region.close()
    b.close()
    region.close()


def test_registered_buffer_is_held(pair):
    a, _ = pair
    buf = bytearray(4096)
    seg = a.register("held", buf)
    with pytest.raises(BufferError):
        buf.extend(b"more")  # exported: cannot move
    seg.unregister()
    buf.extend(b"more")
    # Dropping every reference keeps the registration (and the memory) alive.
    a.register("anon", bytearray(4096))
    with pytest.raises(et.DuplicateName):
        a.register("anon", bytearray(16))


def test_batches_status_and_notifications(pair):
    a, b = pair
    target = bytearray(1 << 16)
    b.register("kv", target, access="w")
    src = np.full(1 << 16, 9, dtype=np.uint8)
    seg = a.register("src", src)
    remote = a.open_segment(f"{b.address}/kv")
    reqs = [et.Request.write(seg, i * 1024, remote, i * 1024, 1024, notify=2) for i in range(32)]
    with a.batch(64) as batch:
        assert batch.submit(reqs[:16]) == 0
        assert batch.submit(reqs[16:]) == 16
        st = batch.wait(timeout=10)
        assert (st.submitted, st.completed, st.done, st.ok) == (32, 32, True, True)
        assert len(batch) == 32
        assert all(batch.request_status(i).state == "completed" for i in range(32))
        with pytest.raises(et.NoSuchRequest):
            batch.request_status(32)
    assert b.wait_notify(2, 32, timeout=5) == 32
    assert b.consume_notify(2, 32) == 0
    assert bytes(target[:32768]) == b"\x09" * 32768 and not any(target[32768:])
    st = a.transfer(reqs)
    assert st.completed == 32
    # A write-only segment refuses READs before anything is posted.
    with pytest.raises(et.AccessDenied):
        a.read(seg, 0, remote, 0, 16)


def test_deferred_submit_waits_for_the_doorbell(pair):
    a, b = pair
    target = bytearray(4096)
    b.register("dk", target, access="w")
    seg = a.register("dsrc", bytearray(b"\x07" * 4096))
    remote = a.open_segment(f"{b.address}/dk")
    with a.batch(8) as batch:
        assert batch.submit([et.Request.write(seg, 0, remote, 0, 64)], defer=True) == 0
        # sim moves the bytes when a work request is posted: nothing has landed yet.
        assert not any(target)
        assert batch.post_deferred() == 1
        assert batch.post_deferred() == 0
        assert batch.wait(timeout=5).completed == 1
        assert bytes(target[:64]) == b"\x07" * 64
        assert batch.submit([et.Request.write(seg, 64, remote, 64, 64, notify=3)], defer=True) == 1
        assert batch.discard_deferred() == 1
        st = batch.wait(timeout=5, check=False)
        assert (st.completed, st.failed) == (1, 1)
        assert batch.request_status(1).reason == "FLUSHED"
        assert not any(target[64:128])
    assert b.notify_count(3) == 0


def test_failures_raise_the_reason():
    a = et.Engine("fa", "sim", sim_error_rate=1.0, sim_error_reasons=["REMOTE_ABORT"])
    b = et.Engine("fb", "sim")
    try:
        b.register("kv", bytearray(4096))
        seg = a.register("src", bytearray(4096))
        remote = a.open_segment(f"{b.address}/kv")
        with pytest.raises(et.RemoteAbort) as info:
            a.write(seg, 0, remote, 0, 64)
        assert isinstance(info.value, et.TransferFailed)
        assert (info.value.reason, info.value.vendor_err, info.value.index) == ("REMOTE_ABORT", 8, 0)
        assert et.FAILURE_CLASSES["REMOTE_ABORT"] is et.RemoteAbort
        batch = a.batch()
        batch.submit([et.Request.write(seg, 0, remote, 0, 64)])
        st = batch.wait(timeout=5, check=False)
        assert st.failed == 1
        s = batch.request_status(0)
        assert (s.state, s.reason, s.vendor_err) == ("failed", "REMOTE_ABORT", 8)
        batch.free()
        with pytest.raises(et.ConfigError):
            batch.wait()
    finally:
        a.close()
        b.close()


def test_plain_names_through_a_shared_registry():
    a = et.Engine("la", "sim", metadata="local")
    b = et.Engine("lb", "sim", metadata="local")
    try:
        buf = bytearray(128)
        b.register("local/kv", buf)
        seg = a.allocate("local/src", 128)
        seg.write(0, b"z" * 128)
        assert a.write(seg, 0, a.open_segment("local/kv"), 0, 128).ok
        assert buf == b"z" * 128
        assert a.address is None
    finally:
        a.close()
        b.close()


def test_listing_and_first_buffer(pair):
    a, b = pair
    b.register("kv/1", bytearray(64))
    b.register("kv/0", bytearray(32))
    names = [n for n, _, _ in a.list_segments(b.address, "kv/")]
    assert names == ["kv/0", "kv/1"]


def test_threads_share_an_engine(pair):
    import threading

    a, b = pair
    target = bytearray(8 * 4096)
    b.register("kv", target)
    remote = a.open_segment(f"{b.address}/kv")
    errors = []

    def run(k):
        try:
            src = a.register(f"src{k}", bytearray([k + 1]) * 4096)
            for i in range(200):
                a.write(src, 0, remote, k * 4096, 4096, notify=k)
            with a.batch(8) as batch:
                batch.submit([et.Request.write(src, 0, remote, k * 4096, 512)] * 8)
                assert batch.wait(timeout=10).ok
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert all(b.notify_count(k) == 200 for k in range(8))
    assert all(target[k * 4096:(k + 1) * 4096] == bytes([k + 1]) * 4096 for k in range(8))


def test_wait_notify_sleeps_until_the_arrival(pair):
    import threading
    import time

    a, b = pair
    b.register("kv", bytearray(4096))
    remote = a.open_segment(f"{b.address}/kv")
    src = a.register("src", bytearray(4096))
    seen = {}

    def wait():
        # The thread's own CPU time: a bound on what the wait cost, not a timing measure.
        t0, cpu0 = time.monotonic(), time.thread_time()
        seen["count"] = b.wait_notify(5, 1, timeout=30)
        seen["wall"], seen["cpu"] = time.monotonic() - t0, time.thread_time() - cpu0

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(1.0)
    assert a.write(src, 0, remote, 0, 64, notify=5).ok
    waiter.join(30)
    assert seen["count"] == 1
    assert seen["wall"] >= 1.0, seen
    # Asleep until the arrival woke it: under 5% of a core over the second.
    assert seen["cpu"] < 0.05, seen


def test_an_engine_on_two_fabrics_reaches_each_peer_over_one_both_speak():
    both = et.Engine("mx-a", "sim+tcp")
    mixed = et.Engine("mx-b", "sim+tcp")
    tcp_only = et.Engine("mx-c", "tcp")
    try:
        assert both.fabric == "sim+tcp"
        src = both.allocate("mx/src", 64)
        src.write(0, b"m" * 64)
        on_b, on_c = bytearray(64), bytearray(64)
        mixed.register("mx/b", on_b)
        tcp_only.register("mx/c", on_c)
        to_b = both.open_segment(f"{mixed.address}/mx/b")
        to_c = both.open_segment(f"{tcp_only.address}/mx/c")
        assert (to_b.fabric, to_c.fabric) == ("sim", "tcp")
        assert both.write(src, 0, to_b, 0, 64).ok and both.write(src, 0, to_c, 0, 64).ok
        assert on_b == on_c == b"m" * 64
    finally:
        for e in (both, mixed, tcp_only):
            e.close()


def test_unknown_fabric_in_a_list_is_a_config_error():
    with pytest.raises(et.ConfigError, match="fabric \"ib\" in \"sim\\+ib\""):
        et.Engine("mx-bad", "sim+ib")
