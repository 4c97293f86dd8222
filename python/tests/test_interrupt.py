"""Waits release the GIL and stop cleanly on an interrupt sent from another thread."""

import _thread
import threading
import time

import pytest

import efa_transport as et


def interrupt_after(seconds):
    t = threading.Timer(seconds, _thread.interrupt_main)
    t.start()
    return t


def test_notification_wait_is_interrupted():
    eng = et.Engine("wait", "sim")
    try:
        t0 = time.monotonic()
        timer = interrupt_after(0.3)
        with pytest.raises(KeyboardInterrupt):
            eng.wait_notify(5, 1, timeout=30)
        timer.join()
        assert time.monotonic() - t0 < 5
        # The engine is fine afterwards.
        assert eng.wait_notify(5, 0, timeout=0) == 0
    finally:
        eng.close()


def test_batch_wait_is_interrupted_and_the_gil_is_free():
    # Completions held back up to an hour: the batch will not finish by itself.
    a = et.Engine("slow", "sim", sim_max_delay=3600.0)
    b = et.Engine("target", "sim")
    try:
        b.register("kv", bytearray(4096))
        seg = a.register("src", bytearray(4096))
        remote = a.open_segment(f"{b.address}/kv")
        batch = a.batch(8)
        batch.submit([et.Request.write(seg, i * 512, remote, i * 512, 512) for i in range(8)])
        ticks = []
        ticker = threading.Thread(target=lambda: [ticks.append(time.sleep(0.01)) for _ in range(20)])
        ticker.start()
        timer = interrupt_after(0.5)
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            batch.wait(timeout=60)
        timer.join()
        ticker.join()
        assert time.monotonic() - t0 < 5
        assert len(ticks) == 20  # another thread ran Python while the wait held no GIL
        assert batch.status().pending > 0
        assert batch.cancel() > 0
        st = batch.wait(timeout=1, check=False)
        assert st.cancelled > 0 and st.done
        batch.free(drain=0.1)
        # A synchronous transfer interrupted the same way cancels its batch and raises.
        timer = interrupt_after(0.3)
        with pytest.raises(KeyboardInterrupt):
            a.write(seg, 0, remote, 0, 64, timeout=60)
        timer.join()
        # A timeout raises TransferTimeout.
        with pytest.raises(et.TransferTimeout):
            a.write(seg, 0, remote, 0, 64, timeout=0.2)
    finally:
        a.close()
        b.close()


def test_ctrl_c_stops_a_waiting_process():
    """A real SIGINT, as a terminal's Ctrl-C sends it, ends a blocked wait at once."""
    import signal
    import subprocess
    import sys

    code = (
        "import signal\n"
        "signal.alarm(60)\n"
        "import efa_transport as et\n"
        "e = et.Engine('ctrl-c', 'sim')\n"
        "print('ready', flush=True)\n"
        "try:\n"
        "    e.wait_notify(1, 1, timeout=60)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    e.close()\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=10)
        assert "interrupted" in out
        assert p.returncode == 0
        assert time.monotonic() - t0 < 5
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
