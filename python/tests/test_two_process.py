"""Two processes: the Pythonic API and the Mooncake quick start, over tcp (and efa on
soft-efa, when the test command sets EFA_TRANSPORT_TEST_FABRICS)."""

import time

import numpy as np
import pytest

import efa_transport as et
from efa_transport.mooncake import TransferEngine

from conftest import FABRICS


@pytest.mark.parametrize("fabric", FABRICS)
def test_engine_writes_and_reads_another_process(peer_factory, fabric):
    peer = peer_factory("layer2", fabric)
    (address,) = peer.expect("ready ")
    with et.Engine("client", fabric) as eng:
        assert eng.fabric == fabric
        n = 100_000
        src = np.array([(i * 7 + 1) % 256 for i in range(n)], dtype=np.uint8)
        seg = eng.register("src", src)
        remote = eng.open_segment(f"{address}/kv")
        assert remote.length == 1 << 20
        st = eng.write(seg, 0, remote, 4096, n, notify=7)
        assert st.ok and st.completed == 1
        peer.send(f"check {n}")
        assert peer.expect("checked ") == ["ok"]
        peer.expect("wrote")
        back = bytearray(16)
        dst = eng.register("back", back)
        with eng.batch(4) as b:
            b.submit([et.Request.read(dst, 0, remote, 0, 16)])
            st = b.wait(timeout=30)
            assert st.ok
            assert b.request_status(0).state == "completed"
        assert bytes(back) == b"from-the-peer-16"
        peer.send("done")
        peer.expect("bye")
    assert peer.finish() == 0


@pytest.mark.parametrize("fabric", FABRICS)
def test_a_killed_peer_fails_requests_by_name(peer_factory, fabric):
    peer = peer_factory("layer2", fabric)
    (address,) = peer.expect("ready ")
    with et.Engine("client", fabric) as eng:
        seg = eng.allocate("src", 4096)
        remote = eng.open_segment(f"{address}/kv")
        assert eng.write(seg, 0, remote, 0, 4096).ok
        peer.kill()
        t0 = time.monotonic()
        with pytest.raises(et.TransferFailed) as info:
            for _ in range(1000):
                eng.write(seg, 0, remote, 0, 4096, timeout=20)
        assert info.value.reason in ("UNRESP_REMOTE", "IO", "UNREACH_REMOTE")
        assert time.monotonic() - t0 < 20


@pytest.mark.parametrize("protocol", FABRICS)
def test_mooncake_quick_start(peer_factory, protocol):
    """Server and client exchange a buffer's address; the client writes into it."""
    server = peer_factory("mooncake", protocol)
    port, remote_addr, remote_len = map(int, server.expect("ready "))
    target = f"127.0.0.1:{port}"

    engine = TransferEngine()
    assert engine.initialize("127.0.0.1", "P2PHANDSHAKE", protocol, "") == 0, engine.get_last_error()
    assert engine.get_rpc_port() > 0
    client_buffer = np.ones(1 << 20, dtype=np.uint8)
    buffer_data = client_buffer.ctypes.data
    data = b"Hello, Transfer Engine!" * 100
    client_buffer[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    assert engine.register_memory(buffer_data, client_buffer.nbytes) == 0

    assert engine.get_first_buffer_address(target) == remote_addr
    ret = engine.transfer_sync_write(target, buffer_data, remote_addr + 4096, len(data))
    assert ret == 0, engine.get_last_error()
    server.send(f"check {len(data)}")
    assert server.expect("checked ") == ["ok"]

    # Read the server's first bytes back, into the middle of the client buffer.
    ret = engine.transfer_sync_read(target, buffer_data + 8192, remote_addr, 8)
    assert ret == 0, engine.get_last_error()
    assert bytes(client_buffer[8192:8200]) == b"mooncake"

    # Batches: sync and async, read and write.
    addrs = [buffer_data + i * 1024 for i in range(4)]
    peers = [remote_addr + 65536 + i * 1024 for i in range(4)]
    lengths = [1024] * 4
    assert engine.batch_transfer_sync_write(target, addrs, peers, lengths) == 0
    batch = engine.batch_transfer_async_read(target, [buffer_data + 200_000], [remote_addr + 65536], [4096])
    assert batch > 0
    assert engine.get_batch_transfer_status([batch]) == 0
    assert np.array_equal(client_buffer[200_000:204_096], client_buffer[:4096])
    bid = engine.transfer_submit_write(target, buffer_data, remote_addr + 500_000, 4096)
    assert bid > 0
    for _ in range(10_000):
        status = engine.transfer_check_status(bid)
        if status != 0:
            break
    assert status == 1

    # Outside every published buffer of the peer: refused, not sent.
    assert engine.transfer_sync_write(target, buffer_data, remote_addr + remote_len - 8, 16) < 0
    assert "covers" in engine.get_last_error()
    # A local address that is not registered.
    other = np.zeros(64, dtype=np.uint8)
    assert engine.transfer_sync_write(target, other.ctypes.data, remote_addr, 64) < 0

    server.send("done")
    server.expect("bye")
    assert server.finish() == 0
    assert engine.unregister_memory(buffer_data) == 0
    engine.close()
