#!/usr/bin/env python3
"""Where the emulator spends a guest's time: runs tests/vm/run with the given arguments while `perf`
samples the qemu threads that run the guest CPUs ("CPU n/TCG"), then cuts the samples by the phases
the guest script marks on its console and prints, per phase, the host CPU time per round trip of
the busiest qemu functions (with --hosts 2, host 0's VM).

    python3 efa-perf/scripts/vm-profile.py --out /tmp/prof -- --pin-vcpus --env MARKS=1 \\
        --env TESTS="send_lat write_lat" --timeout 1500 --script efa-perf/scripts/vm-course.sh
    python3 efa-perf/scripts/vm-profile.py --out /tmp/prof --report   # again, from the files

A phase is the console lines `MARK start NAME` .. `MARK end NAME ITERS LOOP_S` (vm-course.sh with
MARKS=1): a tool run whose ping-pong loop took LOOP_S seconds for ITERS round trips. Only the middle
70% of the loop is counted (the run's setup comes before it), located by the loop's length back
from its end. Samples are counted per guest CPU thread (`perf record -e cpu-clock`, so host CPU
time, only while the thread runs) and reported as host microseconds per round trip, both guest CPUs
together, phases of one name averaged.

qemu's own functions are named by its exported symbols; a static function (most of the translated
code's helpers) shows as `NAME+` after the exported symbol before it. In Debian's qemu 7.2,
`curr_cflags+` is helper_lookup_tb_ptr's jump-cache lookup: the cost of every indirect branch (each
`ret`, each call through a pointer) of the guest. `translated` is the guest's code itself.
Needs perf and nm on the host; run as root.
"""
import argparse
import bisect
import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time

QEMU = "/usr/bin/qemu-system-x86_64"
SAMPLE = re.compile(r"^\s*(\d+)\s+([\d.]+):\s+(\d+)\s+([0-9a-f]+)\s+(.*)\((.*)\)\s*$")
MMAP = re.compile(r"\[(0x[0-9a-f]+)\((0x[0-9a-f]+)\) @ (0x[0-9a-f]+) .*\]: r-xp " + re.escape(QEMU) + "$")


def vcpu_threads(deadline):
    """The qemu process of the run and its guest CPU threads, once they exist."""
    while time.monotonic() < deadline:
        pids = subprocess.run(["pgrep", "-f", "qemu-system-x86_64.*-name vm0"], capture_output=True, text=True).stdout.split()
        for pid in pids:
            tids = []
            for t in os.listdir(f"/proc/{pid}/task"):
                try:
                    comm = open(f"/proc/{pid}/task/{t}/comm").read().strip()
                except OSError:
                    continue
                if re.fullmatch(r"CPU \d+/TCG", comm):
                    tids.append(t)
            if tids:
                return pid, tids
        time.sleep(0.2)
    return None, []


def record(out, vm_args):
    """Runs the VM, the console stamped with the host's monotonic clock, perf sampling its CPUs."""
    console = open(os.path.join(out, "console.log"), "w")
    vm = subprocess.Popen([os.path.join(repo(), "tests/vm/run"), *vm_args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    perf = []

    def start_perf():
        pid, tids = vcpu_threads(time.monotonic() + 600)
        if pid is None:
            print("vm-profile: no qemu guest CPU threads found", file=sys.stderr)
            return
        perf.append(subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-k", "CLOCK_MONOTONIC", "-t", ",".join(tids), "-o", os.path.join(out, "perf.data")], stdout=subprocess.DEVNULL))

    threading.Thread(target=start_perf, daemon=True).start()
    for line in vm.stdout:
        sys.stdout.write(line)
        console.write(f"{time.monotonic():.6f} {line}")
        console.flush()
    rc = vm.wait()
    for p in perf:
        p.send_signal(signal.SIGINT)
        p.wait()
    return rc


def repo():
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def phases(out):
    """(name, first, last, round trips) of each marked loop, on the host's clock."""
    found, starts = [], {}
    for line in open(os.path.join(out, "console.log")):
        p = line.split()
        if len(p) >= 4 and p[1] == "MARK" and p[2] == "start":
            starts[p[3]] = float(p[0])
        elif len(p) >= 6 and p[1] == "MARK" and p[2] == "end" and p[3] in starts:
            end, iters, loop = float(p[0]), int(p[4]), float(p[5])
            # The loop ends shortly before the run does (teardown): keep its middle 70%.
            found.append((p[3], max(starts[p[3]], end - 0.3 - 0.8 * loop), end - 0.3 - 0.1 * loop, 0.7 * iters))
    return found


def labeller(base):
    """Names a sampled address: qemu's nearest exported symbol below it (qemu's text mapped at
    `base`), or the sample's own."""
    syms = []
    for line in subprocess.run(["nm", "-D", "--defined-only", QEMU], capture_output=True, text=True).stdout.splitlines():
        p = line.split()
        if len(p) == 3 and p[1] in "tTwW":
            syms.append((int(p[0], 16), p[2]))
    syms.sort()
    addrs = [a for a, _ in syms]

    def label(ip, sym, dso):
        name = dso.split("/")[-1]
        if name.startswith("perf-") or name.startswith("[unknown]"):
            return "translated"
        if dso == QEMU and base is not None:
            i = bisect.bisect_right(addrs, ip - base) - 1
            exact = i >= 0 and addrs[i] == ip - base
            return "?" if i < 0 else syms[i][1] + ("" if exact or sym == syms[i][1] else "+")
        if name.startswith("[kernel"):
            return "host kernel"
        return sym if sym != "[unknown]" else name.split(".so")[0]

    return label


def report(out, top):
    # One pass over the recording: the samples, and the mapping of qemu's text among its events.
    text = subprocess.run(["perf", "script", "-i", os.path.join(out, "perf.data"), "--show-mmap-events", "-F", "tid,time,period,ip,sym,dso"], capture_output=True, text=True).stdout
    base, raw = None, []
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            raw.append(m.groups())
            continue
        m = MMAP.search(line)
        if m and base is None and "PERF_RECORD_MMAP" in line:
            base = int(m.group(1), 16) - int(m.group(3), 16)
    label = labeller(base)
    # cpu-clock's period is in nanoseconds of the thread's CPU time.
    samples = sorted((float(t), int(ns) / 1e3, label(int(ip, 16), sym.strip(), dso)) for _, t, ns, ip, sym, dso in raw)
    times = [t for t, _, _ in samples]
    per = collections.defaultdict(collections.Counter)
    runs = collections.Counter()
    for name, a, b, trips in phases(out):
        key = re.sub(r"-\d+$", "", name)
        runs[key] += 1
        for _, us, what in samples[bisect.bisect_left(times, a):bisect.bisect_right(times, b)]:
            per[key][what] += us / trips
    if not per:
        print("no marked phases with samples (MARKS=1 in the guest script?)")
        return
    keys = sorted(per)
    width = max(len(k) for k in keys) + 2
    print("host CPU us per round trip, both guest CPUs, mean of the runs of each phase")
    print(f"{'':34s}" + "".join(f"{k:>{width}s}" for k in keys))
    print(f"{'runs':34s}" + "".join(f"{runs[k]:>{width}d}" for k in keys))
    print(f"{'all':34s}" + "".join(f"{sum(per[k].values()) / runs[k]:>{width}.1f}" for k in keys))
    overall = collections.Counter()
    for k in keys:
        for what, v in per[k].items():
            overall[what] += v / runs[k]
    for what, _ in overall.most_common(top):
        print(f"{what[:34]:34s}" + "".join(f"{per[k][what] / runs[k]:>{width}.1f}" for k in keys))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="directory for console.log and perf.data")
    ap.add_argument("--report", action="store_true", help="only report on an earlier run's files")
    ap.add_argument("--top", type=int, default=15, help="functions to show (default 15)")
    ap.add_argument("vm_args", nargs="*", help="tests/vm/run's arguments, after --")
    args = ap.parse_args()
    rc = 0
    if not args.report:
        os.makedirs(args.out, exist_ok=True)
        rc = record(args.out, args.vm_args)
    report(args.out, args.top)
    sys.exit(rc)


if __name__ == "__main__":
    main()
