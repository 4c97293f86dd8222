#!/usr/bin/env python3
"""Summarises the ftrace timelines of vm-trace.sh, one file per tool run.

For each trace: the share of the traced time each thread ran on each CPU; on which CPU and in which
thread rxe's entry points ran; for each side (a thread that rang a doorbell), the time from its
doorbell to the other side's (the half round trip, as the kernel saw it), from its switch-in to its
next doorbell (user space after the scheduler gave it the CPU back) and from its doorbell to its
switch-out (how long the kworker its doorbell woke waited for its CPU), with the share of those
wake-ups that told it to reschedule at once.

    python3 efa-perf/scripts/trace-summary.py /tmp/tr/*.trace

With --windows MS, each trace is also cut into windows of MS milliseconds: per window the half round
trips (doorbell to the peer's doorbell), the share of rxe's work (requester, receiver, completer) that
ran on the CPU of the doorbell before it (the poster's), the scheduler's wake-ups that crossed
CPUs per doorbell, and the time from a doorbell's system call to rxe_post_send (a step: the same
kernel code for every tool, so how fast the emulated CPU runs) with the half round trip in steps;
then the faster and the slower half of the windows side by side, and the run's half round trip in
steps (its latency with the CPU's speed taken out).

    python3 efa-perf/scripts/trace-summary.py --windows 50 /tmp/tr/*.trace
"""
import collections
import re
import statistics
import sys

LINE = re.compile(r"^\s*(?P<comm>.+?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+(?P<flags>\S+)\s+(?P<ts>[\d.]+):\s+(?P<what>.*)$")
SWITCH = re.compile(r"prev_comm=(.+?) prev_pid=(\d+) .*==> next_comm=(.+?) next_pid=(\d+)")
DOORBELL = "ib_uverbs_write"


def events(path):
    for line in open(path, errors="replace"):
        if line.startswith("#"):
            continue
        m = LINE.match(line)
        if m:
            yield m["comm"], m["pid"], int(m["cpu"]), float(m["ts"]), m["what"], m["flags"]


def kind(comm):
    """Groups the kernel's workers: their thread ids change from run to run."""
    for k in ("kworker", "ksoftirqd", "swapper", "<idle>"):
        if comm.startswith(k):
            return k
    return None


def spread(us):
    us = sorted(us)
    if not us:
        return "none"
    q = lambda f: us[min(len(us) - 1, int(f * len(us)))]
    return "median %.0f us (p25 %.0f, p75 %.0f, n=%d)" % (statistics.median(us), q(0.25), q(0.75), len(us))


def summarise(path, evs):
    ran = collections.defaultdict(float)  # (thread, cpu) -> seconds
    work = collections.Counter()  # (function, cpu, thread) -> calls
    on_cpu_since = {}  # cpu -> time of its last switch
    switched_in = {}  # pid -> time it last got a CPU
    doorbells = []  # (time, pid)
    to_doorbell = collections.defaultdict(list)  # pid -> us from switch-in to doorbell
    rang = {}  # pid -> time of its doorbell, until it is switched out
    to_out = collections.defaultdict(list)  # pid -> us from doorbell to switched out
    wakes = collections.Counter()  # (pid, whether the wake-up asked it to reschedule) -> count
    names = {}
    first = last = None
    for comm, pid, cpu, ts, what, flags in evs:
        first = ts if first is None else first
        last = ts
        if what.startswith("sched_switch:"):
            m = SWITCH.search(what)
            if not m:
                continue
            prev = kind(m[1]) or "%s-%s" % (m[1], m[2])
            if cpu in on_cpu_since:
                ran[(prev, cpu)] += ts - on_cpu_since[cpu]
            on_cpu_since[cpu] = ts
            switched_in[m[4]] = ts
            if m[2] in rang:
                to_out[m[2]].append((ts - rang.pop(m[2])) * 1e6)
        elif what.startswith("sched_wakeup:") and pid in rang:
            # A wake-up in the poster's doorbell (rxe's kworker): "N" in the flags, it was told to
            # give the CPU up at once.
            wakes[(pid, "N" in flags)] += 1
        elif what.startswith(DOORBELL):
            names[pid] = comm
            doorbells.append((ts, pid))
            rang[pid] = ts
            if pid in switched_in:
                to_doorbell[pid].append((ts - switched_in.pop(pid)) * 1e6)
        elif not what.startswith("sched_"):
            fn = what.split()[0]
            work[(fn, cpu, kind(comm) or "%s-%s" % (comm, pid))] += 1
    if first is None:
        print("== %s: no events" % path)
        return
    span = last - first
    print("== %s: %.3f s traced" % (path, span))
    print("  who ran (share of the traced time):")
    for (who, cpu), t in sorted(ran.items(), key=lambda x: -x[1])[:10]:
        print("    cpu%d %-28s %5.1f%%" % (cpu, who, 100 * t / span))
    print("  rxe's work by CPU (calls):")
    for fn in ("rxe_requester", "rxe_receiver", "rxe_responder", "rxe_completer", "rxe_cq_post"):
        per = collections.Counter()
        for (f, cpu, who), n in work.items():
            if f == fn:
                per["cpu%d %s" % (cpu, who)] += n
        if per:
            print("    %-14s %s" % (fn, ", ".join("%s %d" % kv for kv in sorted(per.items()))))
    halves = collections.defaultdict(list)
    for (t0, a), (t1, b) in zip(doorbells, doorbells[1:]):
        if a != b:
            halves[a].append((t1 - t0) * 1e6)
    for pid in sorted(halves):
        print("  %s-%s: doorbell to the peer's doorbell %s" % (names[pid], pid, spread(halves[pid])))
        print("  %s-%s: switch-in to its doorbell      %s" % (names[pid], pid, spread(to_doorbell[pid])))
        told = wakes[(pid, True)] + wakes[(pid, False)]
        print("  %s-%s: doorbell to switched out      %s; wake-ups it made told it to reschedule: %.0f%% of %d"
              % (names[pid], pid, spread(to_out[pid]), 100.0 * wakes[(pid, True)] / max(told, 1), told))


RXE_WORK = ("rxe_requester", "rxe_receiver", "rxe_responder", "rxe_completer")
WAKE_CPU = re.compile(r"target_cpu=(\d+)")
# Windows with fewer half round trips than this are left out (a trace's last, cut-off window).
MIN_HALVES = 10


def windows(path, evs, ms):
    """Per window of `ms` milliseconds: half round trips, where rxe's work ran, and the wake-ups that
    crossed CPUs (see the header)."""
    wins = collections.defaultdict(
        lambda: {"halves": [], "local": 0, "work": 0, "bells": 0, "cross": 0, "steps": []})
    last_bell = None  # (time, pid, cpu) of the latest doorbell
    ringing = {}  # pid -> time of its doorbell not yet in rxe_post_send
    first = None
    for comm, pid, cpu, ts, what, _ in evs:
        first = ts if first is None else first
        w = wins[int((ts - first) * 1000 // ms)]
        if what.startswith(DOORBELL):
            w["bells"] += 1
            if last_bell and last_bell[1] != pid:
                w["halves"].append((ts - last_bell[0]) * 1e6)
            last_bell = (ts, pid, cpu)
            ringing[pid] = ts
        elif what.startswith("rxe_post_send") and pid in ringing:
            w["steps"].append((ts - ringing.pop(pid)) * 1e6)
        elif what.startswith("sched_wakeup:"):
            m = WAKE_CPU.search(what)
            w["cross"] += bool(m) and int(m[1]) != cpu
        elif last_bell and what.split()[0] in RXE_WORK:
            w["work"] += 1
            w["local"] += cpu == last_bell[2]
    rows = []
    print("== %s: windows of %g ms" % (path, ms))
    for k in sorted(wins):
        w = wins[k]
        if len(w["halves"]) < MIN_HALVES or not w["work"] or not w["steps"]:
            continue
        # A mean: the timestamps have a resolution of 1 us, about a quarter of a step.
        step = statistics.mean(w["steps"])
        half = statistics.median(w["halves"])
        row = (half, 100.0 * w["local"] / w["work"], w["cross"] / w["bells"], step, half / step)
        rows.append(row)
        print("  %7.3f s  %5d halves  median %6.1f us  rxe's work on the poster's cpu %5.1f%%"
              "  cross-cpu wake-ups per doorbell %.2f  doorbell to rxe_post_send %.1f us (%.1f steps a half)"
              % ((k * ms / 1000, len(w["halves"])) + row))
    if len(rows) >= 2:
        rows.sort()
        for name, part in (("faster", rows[: len(rows) // 2]), ("slower", rows[len(rows) // 2 :])):
            print("  %s half of the windows: median %.1f us, rxe's work on the poster's cpu %.1f%%,"
                  " cross-cpu wake-ups per doorbell %.2f, doorbell to rxe_post_send %.1f us"
                  % (name, statistics.median(r[0] for r in part), statistics.mean(r[1] for r in part),
                     statistics.mean(r[2] for r in part), statistics.median(r[3] for r in part)))
        steps = sorted(r[4] for r in rows)
        print("  the half round trip in steps (doorbell to rxe_post_send), by window: median %.1f (%.1f-%.1f)"
              % (statistics.median(steps), steps[0], steps[-1]))

args = sys.argv[1:]
win_ms = None
if args[:1] == ["--windows"]:
    win_ms = float(args[1])
    args = args[2:]
for p in args:
    # Read once; kept in memory only when the windows pass needs it too.
    evs = list(events(p)) if win_ms else events(p)
    summarise(p, evs)
    if win_ms:
        windows(p, evs, win_ms)
