"""Bad input raises a typed exception; nothing crashes the interpreter."""

import ctypes

import numpy as np
import pytest

import efa_transport as et
from efa_transport.mooncake import TransferEngine, TransferOpcode, TransferNotify


@pytest.fixture
def pair():
    a = et.Engine("ba", "sim")
    b = et.Engine("bb", "sim")
    yield a, b
    a.close()
    b.close()


def test_configuration_is_checked():
    with pytest.raises(et.ConfigError):
        et.Engine("x", "carrier-pigeon")
    with pytest.raises(et.ConfigError):
        et.Engine("x", "sim", workers=0)
    with pytest.raises(et.ConfigError):
        et.Engine("x", "sim", metadata="etcd")
    with pytest.raises(et.ConfigError):
        et.Engine("x", "sim", listen="no-such-host.invalid:1")
    with pytest.raises(et.BadName):
        et.Engine("", "sim")
    with pytest.raises(et.ConfigError):
        et.Engine("x", "sim", sim_error_reasons=["NOT_A_REASON"])


def test_buffers_that_cannot_be_registered(pair):
    a, _ = pair
    for bad in [b"read-only bytes", np.zeros(8)[::2], bytearray(), 42, "text"]:
        with pytest.raises(et.BadBuffer):
            a.register("bad", bad)
    ro = np.zeros(16)
    ro.flags.writeable = False
    with pytest.raises(et.BadBuffer):
        a.register("ro", ro)
    with pytest.raises(et.BadName):
        a.register("", bytearray(8))
    with pytest.raises(et.ConfigError):
        a.register("x", bytearray(8), access="rwx")
    with pytest.raises(et.ConfigError):
        a.register("x", bytearray(8), location="tpu:0")
    # Raw pointers: null, unmapped, wrapping, read-only memory are refused.
    for ptr, n in [(0, 8), (8, 8), (2**64 - 8, 16), (0x1000, 4096)]:
        with pytest.raises((et.BadBuffer, OverflowError)):
            a.register_ptr("raw", ptr, n)
    text = ctypes.c_char_p(b"constant").value  # noqa: F841
    with pytest.raises(OverflowError):
        a.register_ptr("neg", -1, 8)
    keep = ctypes.create_string_buffer(256)
    seg = a.register_ptr("raw", ctypes.addressof(keep), 256, owner=keep)
    assert seg.length == 256


def test_requests_out_of_range_and_stale_handles(pair):
    a, b = pair
    b.register("kv", bytearray(4096))
    seg = a.register("src", bytearray(4096))
    remote = a.open_segment(f"{b.address}/kv")
    with pytest.raises(et.ZeroLength):
        a.write(seg, 0, remote, 0, 0)
    with pytest.raises(et.RemoteOutOfRange):
        a.write(seg, 0, remote, 4000, 200)
    with pytest.raises(et.LocalOutOfRange):
        a.write(seg, 4000, remote, 0, 200)
    with pytest.raises(OverflowError):
        a.write(seg, -1, remote, 0, 8)
    with pytest.raises(TypeError):
        a.write(seg, 0, "remote", 0, 8)
    with pytest.raises(TypeError):
        a.transfer([1, 2, 3])
    with pytest.raises(et.SegmentNotFound):
        a.open_segment(f"{b.address}/missing")
    with pytest.raises(et.MetadataError):
        a.open_segment("127.0.0.1:1/nothing-listens")
    with pytest.raises(et.ConfigError):
        a.write(seg, 0, remote, 0, 8, timeout=-1)
    # Handles of one engine mean nothing to another.
    with pytest.raises(et.ForeignHandle):
        b.write(seg, 0, remote, 0, 8)
    seg.unregister()
    with pytest.raises(et.UnknownSegment):
        a.write(seg, 0, remote, 0, 8)
    with pytest.raises(et.UnknownSegment):
        seg.unregister()
    remote.close()
    other = a.register("src2", bytearray(64))
    with pytest.raises(et.UnknownRemote):
        a.write(other, 0, remote, 0, 8)
    with pytest.raises(et.BadTag):
        b.wait_notify(10_000_000, 1, timeout=0)
    with pytest.raises(et.NotOwned):
        other.read(0, 4)
    with pytest.raises(et.BatchFull):
        remote2 = a.open_segment(f"{b.address}/kv")
        a.batch(1).submit([et.Request.write(other, 0, remote2, 0, 8)] * 2)
    with pytest.raises(et.ConfigError):
        a.batch(0)


def test_closed_engine_raises(pair):
    a, b = pair
    b.register("kv", bytearray(64))
    seg = a.register("src", bytearray(64))
    remote = a.open_segment(f"{b.address}/kv")
    batch = a.batch()
    a.close()
    a.close()
    assert a.closed
    for call in [
        lambda: a.write(seg, 0, remote, 0, 8),
        lambda: a.register("again", bytearray(8)),
        lambda: a.open_segment(f"{b.address}/kv"),
        lambda: a.batch(),
        lambda: batch.wait(),
        lambda: seg.unregister(),
        lambda: a.notify_count(0),
    ]:
        with pytest.raises(et.EngineClosed):
            call()


def test_mooncake_bad_input_returns_negative():
    engine = TransferEngine()
    # Before initialize.
    assert engine.register_memory(1, 1) < 0
    assert engine.get_rpc_port() == -1
    assert engine.transfer_sync_write("127.0.0.1:1", 1, 1, 1) < 0
    assert engine.initialize("127.0.0.1", "etcd://127.0.0.1:2379", "tcp", "") < 0
    assert "P2PHANDSHAKE" in engine.get_last_error()
    assert engine.initialize("127.0.0.1", "P2PHANDSHAKE", "smoke-signals", "") < 0
    assert engine.initialize("127.0.0.1", "P2PHANDSHAKE", "sim", "") == 0
    assert engine.initialize("127.0.0.1", "P2PHANDSHAKE", "sim", "") < 0
    assert engine.register_memory(0, 64) < 0
    assert engine.register_memory(16, 64) < 0
    buf = np.zeros(4096, dtype=np.uint8)
    assert engine.register_memory(buf.ctypes.data, buf.nbytes) == 0
    assert engine.register_memory(buf.ctypes.data, buf.nbytes) < 0
    assert engine.batch_register_memory([1], [1, 2]) < 0
    assert engine.unregister_memory(buf.ctypes.data + 1) < 0
    assert engine.free_managed_buffer(buf.ctypes.data, 4096) < 0  # not managed
    assert engine.write_bytes_to_buffer(buf.ctypes.data + 4090, b"0123456789", 10) < 0
    assert engine.write_bytes_to_buffer(buf.ctypes.data, b"01", 10) < 0
    with pytest.raises(et.BadBuffer):
        engine.read_bytes_from_buffer(buf.ctypes.data + 4000, 200)
    me = f"127.0.0.1:{engine.get_rpc_port()}"
    assert engine.transfer_sync_write(me, buf.ctypes.data, buf.ctypes.data, 0) < 0
    assert engine.batch_transfer_sync_write(me, [buf.ctypes.data], [], [8]) < 0
    assert engine.batch_transfer_async_write(me, [], [], []) == 0
    assert engine.transfer_check_status(12345) == -1
    assert engine.get_batch_transfer_status([12345]) == -1
    assert engine.transfer_sync(me, buf.ctypes.data, buf.ctypes.data, 8, TransferOpcode.WRITE,
                                TransferNotify("n", "m")) < 0
    assert engine.get_notifies() == []
    assert engine.send_probe("127.0.0.1:1") < 0
    assert engine.send_probe(me) == 0
    with pytest.raises(OverflowError):
        engine.register_memory(-5, 8)
    with pytest.raises(TypeError):
        engine.transfer_sync_write(me, "buffer", 0, 8)
    with pytest.raises(TypeError):
        engine.batch_transfer_sync_write(me, ["buffer"], [0], [8])
    assert engine.transfer_sync_write(me, -1, buf.ctypes.data, 8) < 0
    assert "negative" in engine.get_last_error()
    assert engine.batch_transfer_sync_read(me, [buf.ctypes.data], [buf.ctypes.data], [-8]) < 0
    engine.close()
    assert engine.register_memory(buf.ctypes.data, 64) < 0
    assert "closed" in engine.get_last_error()


def test_mooncake_managed_buffers_and_loopback():
    engine = TransferEngine()
    assert engine.initialize_ext("127.0.0.1", "", "sim", "", "p2p") == 0
    a = engine.allocate_managed_buffer(1 << 16)
    b = engine.allocate_managed_buffer(1 << 16)
    assert a and b
    me = f"127.0.0.1:{engine.get_rpc_port()}"
    assert engine.get_first_buffer_address(me) == a
    assert engine.write_bytes_to_buffer(a, b"Test data for managed buffer", 28) == 0
    assert engine.transfer_sync_write(me, a, b + 100, 28) == 0
    assert engine.read_bytes_from_buffer(b + 100, 28) == b"Test data for managed buffer"
    assert engine.transfer_sync(me, b + 1000, a, 4, TransferOpcode.READ) == 0
    assert engine.read_bytes_from_buffer(b + 1000, 4) == b"Test"
    assert engine.free_managed_buffer(a, 1 << 16) == 0
    assert engine.free_managed_buffer(a, 1 << 16) < 0
    assert engine.free_managed_buffer(b, 12) < 0
    # The freed buffer is no longer a target: resolution refuses it.
    assert engine.transfer_sync_write(me, b, a, 8) < 0
    inner = engine.get_engine()
    assert inner.fabric == "sim"
    assert '"fabric": "sim"' in engine.get_local_topology()
    engine.close()
