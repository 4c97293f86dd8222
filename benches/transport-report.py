#!/usr/bin/env python3
"""Prints the "transport (sim)" BENCHMARKS.md table from criterion's saved estimates.

Usage: python3 benches/transport-report.py [CRITERION_DIR]
(default: $CARGO_TARGET_DIR/criterion, else target/criterion)
"""
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.environ.get("CARGO_TARGET_DIR", "target"), "criterion")


def est(group, bench):
    path = os.path.join(root, group, *bench.split("/"), "new", "estimates.json")
    with open(path) as f:
        e = json.load(f)
    return e["median"]["point_estimate"]  # ns per iteration


def fmt_ns(ns):
    return f"{ns / 1000:.2f} µs" if ns >= 10_000 else f"{ns:.1f} ns"


print("| benchmark | wall: per op | thread CPU: per op |")
print("| --- | ---: | ---: |")
for label in ["8B", "64KiB"]:
    for n in [1, 32, 256]:
        w = est("submit_complete", f"{label}/{n}") / n
        c = est("submit_complete_cpu", f"{label}/{n}") / n
        print(f"| submit→complete WRITE {label}, batch {n} | {fmt_ns(w)} | {fmt_ns(c)} |")
print()
print("| 1 MiB | wall: time | wall: GiB/s | wall: × memcpy | CPU: time | CPU: GiB/s | CPU: × memcpy |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
mib = 1 << 20
ref_w = est("write_1MiB", "memcpy")
ref_c = est("write_1MiB_cpu", "memcpy")
for name in ["sim_write", "sim_write_unsliced", "memcpy"]:
    w = est("write_1MiB", name)
    c = est("write_1MiB_cpu", name)
    gw = mib / w * 1e9 / (1 << 30)
    gc = mib / c * 1e9 / (1 << 30)
    print(f"| {name} | {fmt_ns(w)} | {gw:.1f} | {ref_w / w:.2f} | {fmt_ns(c)} | {gc:.1f} | {ref_c / c:.2f} |")
