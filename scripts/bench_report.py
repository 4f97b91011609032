#!/usr/bin/env python3
"""Helpers for scripts/bench.sh: test images, timed tool runs, checking the simulated chip, and
the report (tables, lower bounds, targets, CSV and plot).

Subcommands (bench.sh calls them; nothing here is meant to be run by hand):

  image OUT SIZE SEED [--sparse]       random image (--sparse: 75 % erased value, 0xFF)
  fill OUT SIZE SEED                   random bytes (the W3 firmware and coefficient block)
  unsync STATE                         mark a saved sim chip as a bootloader that awaits its 0x7F
  patch OUT BASE OFFSET SRC            copy BASE to OUT with SRC's bytes at OFFSET (the W3 expect)
  exec OUT LOG PORTFILE -- STEP [:: STEP ...]
                                       run the steps (commands; `@patch FILE OFFSET SRC` patches a
                                       file in-process) one after the other; write the wall time
                                       and the CPU time (user + sys, from wait4) of the tools'
                                       processes to OUT as JSON. `{PORT}` in an argument is
                                       replaced by the contents of PORTFILE.
  record RAW key=value ...             append one run to RAW (CSV), reading the tool's timing
                                       (exec=FILE), the simulator's exit report (sim=FILE) and
                                       checking the chip's flash (state=FILE expect=FILE)
  report RAW OUTDIR [--quick]          print the tables and the target summary; write
                                       OUTDIR/results.csv and OUTDIR/time-vs-size.png
"""

import csv
import json
import math
import os
import random
import shlex
import statistics
import subprocess
import sys
import time

FLASH_BASE = 0x0800_0000
KIB = 1024
MIB = 1024 * 1024

# ---------------------------------------------------------------------------------------------
# Small helpers used by bench.sh
# ---------------------------------------------------------------------------------------------


def sparse_layout(size):
    """The non-erased pieces of a W2 image: (offset, length), 25 % of `size` in three pieces, as a
    linked image with gaps looks: code at the start, a section half-way, data at the end."""
    unit = size // 32
    return [(0, 5 * unit), (size // 2, 2 * unit), (size - unit, unit)]


def cmd_image(out, size, seed, sparse=False):
    rng = random.Random(int(seed))
    size = int(size)
    if sparse:
        data = bytearray(b"\xff" * size)
        for off, n in sparse_layout(size):
            data[off:off + n] = rng.randbytes(n)
    else:
        data = rng.randbytes(size)
    with open(out, "wb") as f:
        f.write(data)


def read_state(path):
    """A saved sim chip: (header dict, flash bytes). Format: see src/sim/state.rs."""
    with open(path, "rb") as f:
        data = f.read()
    a = data.index(b"\n")
    b = data.index(b"\n", a + 1)
    header = json.loads(data[a + 1:b])
    flash = data[b + 1:b + 1 + header["flash"]]
    return header, flash, data[:a + 1], data[b:]


def cmd_unsync(path):
    """A chip that has just been reset into its bootloader: the state file says what the chip
    ran when saved; after the in-process preparation that is a synced bootloader."""
    header, _, magic, rest = read_state(path)
    header["running"] = "bootloader"
    header.pop("autobaud", None)
    header["erase_counts"] = [0] * len(header["erase_counts"])
    with open(path, "wb") as f:
        f.write(magic + json.dumps(header, separators=(",", ":")).encode() + rest)


def cmd_patch(out, base, offset, src):
    data = bytearray(open(base, "rb").read())
    patch = open(src, "rb").read()
    offset = int(offset, 0)
    data[offset:offset + len(patch)] = patch
    with open(out, "wb") as f:
        f.write(data)


def cmd_exec(out, log, portfile, argv):
    """Run the steps; time them; sum the CPU time of the tools' processes (wait4's rusage)."""
    port = open(portfile).read().strip()
    steps, cur = [], []
    for a in argv:
        if a == "::":
            steps.append(cur)
            cur = []
        else:
            cur.append(a.replace("{PORT}", port))
    steps.append(cur)
    limit = float(os.environ.get("BENCH_RUN_LIMIT", "3600"))
    cpu = 0.0
    rc = 0
    failed_step = None
    with open(log, "wb") as logf:
        t0 = time.monotonic()
        for step in steps:
            if step[0] == "@patch":
                cmd_patch(step[1], step[1], step[2], step[3])
                continue
            logf.write(("$ " + shlex.join(step) + "\n").encode())
            logf.flush()
            proc = subprocess.Popen(step, stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT)
            deadline = time.monotonic() + limit
            while True:
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    proc.kill()
                    pid, status, ru = os.wait4(proc.pid, 0)
                    logf.write(f"\n(bench: killed after {limit:.0f} s)\n".encode())
                    break
                time.sleep(0.002)
            proc.returncode = os.waitstatus_to_exitcode(status)
            cpu += ru.ru_utime + ru.ru_stime
            if proc.returncode != 0:
                rc = proc.returncode or 1
                failed_step = step
                break
        t1 = time.monotonic()
    with open(out, "w") as f:
        json.dump({"seconds": t1 - t0, "cpu_s": cpu, "rc": rc,
                   "failed": shlex.join(failed_step) if failed_step else None}, f)


# ---------------------------------------------------------------------------------------------
# Recording one run
# ---------------------------------------------------------------------------------------------

RAW_FIELDS = ["workload", "part", "tool", "size", "baud", "run", "seconds", "bytes",
              "round_trips", "cpu_s", "bits_per_char", "flash_s", "rtt_ms", "data_blocks",
              "checksum", "sim", "status"]


def count_data_blocks(path, size, erased=0xFF):
    data = open(path, "rb").read()[:size]
    blank = bytes([erased]) * 256
    return sum(1 for i in range(0, len(data), 256) if data[i:i + 256] != blank[:len(data[i:i + 256])])


def cmd_record(raw, pairs):
    kv = dict(p.split("=", 1) for p in pairs)
    row = {k: kv.get(k, "") for k in RAW_FIELDS}
    status = "ok"
    notes = []
    ex = json.load(open(kv["exec"]))
    row["seconds"] = f"{ex['seconds']:.3f}"
    row["cpu_s"] = f"{ex['cpu_s']:.4f}"
    if ex["rc"] != 0:
        status = "failed"
        notes.append(f"`{ex['failed']}` exited {ex['rc']}; its log: {kv.get('log', '?')}")
    report = None
    try:
        lines = [l for l in open(kv["simreport"]).read().splitlines() if l.startswith("{")]
        report = json.loads(lines[-1])
    except (OSError, IndexError, ValueError) as e:
        status = "failed"
        notes.append(f"no exit report from the simulator ({e})")
    if report is not None:
        row["bytes"] = report["bytes_to_device"] + report["bytes_to_host"]
        row["round_trips"] = report["round_trips"]
        row["flash_s"] = f"{report['flash_time_ms'] / 1000.0:.4f}"
        row["bits_per_char"] = report["line"]["bits_per_char"]
        if report.get("overruns"):
            notes.append(f"{report['overruns']} UART overrun(s) on the simulated chip")
    if status == "ok" and kv.get("expect"):
        _, flash, _, _ = read_state(kv["state"])
        want = open(kv["expect"], "rb").read()
        got = flash[:len(want)]
        if got != want:
            bad = next(i for i in range(len(want)) if got[i] != want[i])
            status = "failed"
            notes.append(f"the chip's flash differs from the image at 0x{FLASH_BASE + bad:08X}")
    if kv.get("image"):
        row["data_blocks"] = count_data_blocks(kv["image"], int(kv["size"]))
    row["status"] = status
    new = not os.path.exists(raw)
    with open(raw, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RAW_FIELDS, lineterminator="\n")
        if new:
            w.writeheader()
        w.writerow(row)
    what = f"{row['workload']} {row['part']} {row['tool']} {fmt_kib(row['size'])} " \
           f"{row['baud']} baud run {row['run']}"
    if status == "ok":
        print(f"  {what}: {float(row['seconds']):.2f} s, {row['bytes']} bytes, "
              f"{row['round_trips']} round trips, CPU {float(row['cpu_s']):.3f} s", flush=True)
    else:
        print(f"  {what}: FAILED: " + "; ".join(notes), flush=True)
    for n in notes if status == "ok" else []:
        print(f"    note: {n}")


# ---------------------------------------------------------------------------------------------
# Lower bounds
# ---------------------------------------------------------------------------------------------
#
# Bytes the protocol must move for a job (AN3155 framing, both directions, ACKs included):
#   connect      0x7F + ACK (2), Get (2 + ACK N ver cmds... ACK: 6 + commands; 11 commands
#                without Get Checksum, 12 with), Get ID (7): 26 or 27 bytes. Get Version and any
#                other reads a tool does at connect are not needed for the job.
#   write n      Write Memory per block of n <= 256: 31 CE / ACK / addr4 X / ACK / N data X / ACK
#                = n + 12 bytes (268 for 256 bytes). Only blocks that hold data are needed:
#                blocks of the erased value are left by the erase.
#   read n       Read Memory per block: 11 EE / ACK / addr4 X / ACK / N ~N / ACK data = n + 12.
#   erase k      Extended Erase of k pages (sectors on F4): 44 BB / ACK / N-1 (2) pages (2k) X /
#                ACK = 2k + 7 per command of at most 511 pages; a whole-flash image: mass erase
#                44 BB / ACK / FF FF 00 / ACK = 7.
#   verify       by read-back of every block written (the erased blocks are covered by the
#                erase, which the bootloader ACKs once done), or, where the bootloader lists Get
#                Checksum (0xA1), one Get Checksum over the image: A1 5E / ACK / addr X / ACK /
#                size X / ACK / poly X / ACK / init X / ACK / ACK crc4 X = 33 bytes.
# Full duplex: a host that sends a command's phases together receives the ACKs of the earlier
# phases while it is still sending (two per Write or Read Memory, one per erase, four per Get
# Checksum); those characters take no time of their own and are subtracted.
# Time bound = (bytes - overlapping ACKs) x bits per character / baud + the part's erase and
# programming time (the least stm32boot or stm32flash needed for the job, as the simulator
# reported it with typical timing; see job_flash), plus, at a round-trip latency, one round trip
# per command that must wait for its answer (a command cannot be sent while the chip programs,
# erases or answers the previous one: links.md §10.2). Connect (0x7F, Get, Get ID) waits too.

SECTORS = {
    # erase units from the start of flash, bytes (src/device/devices.toml)
    "stm32f411": [16 * KIB] * 4 + [64 * KIB] + [128 * KIB] * 3,
    "stm32l476": [2 * KIB] * 512,
}

W3_PAGE = 2048
W3_COEFF = 64


def base_part(label):
    return label.split("+")[0]


def pages_covering(part, start, end):
    off, k = 0, 0
    for s in SECTORS[base_part(part)]:
        if off < end and off + s > start:
            k += 1
        off += s
    return k


def erase_bytes(part, k):
    if k == len(SECTORS[base_part(part)]):
        return 7
    return 2 * k + 7 * math.ceil(k / 511)


def blocks_bytes(n):
    """Read or Write Memory of n contiguous bytes in blocks of at most 256."""
    return n + 12 * math.ceil(n / 256)


def bound_counts(workload, part, size, data_blocks, checksum):
    """(protocol bytes, of them ACKs that can overlap the host's sending, commands that wait for
    their answer) of the job. A host that sends a command's phases together receives the first
    ACKs while it is still sending (the line is full duplex): two per Write or Read Memory, one
    per erase, four per Get Checksum. Those characters cost no time of their own."""
    connect = 27 if checksum else 26
    cmds = 3
    if workload == "w3":
        kept = W3_PAGE - W3_COEFF
        reads = math.ceil(kept / 256)
        writes = W3_PAGE // 256
        b = connect + blocks_bytes(kept) + erase_bytes(part, 1) + blocks_bytes(W3_PAGE)
        ov = 2 * (reads + writes) + 1
        cmds += reads + 1 + writes
        if checksum:
            b += 33
            ov += 4
            cmds += 1
        else:
            b += blocks_bytes(W3_PAGE)
            ov += 2 * (W3_PAGE // 256)
            cmds += W3_PAGE // 256
        return b, ov, cmds
    k = pages_covering(part, 0, size)
    blocks = data_blocks if data_blocks else math.ceil(size / 256)
    erase_cmds = 1 if k == len(SECTORS[base_part(part)]) else math.ceil(k / 511)
    b = connect + erase_bytes(part, k) + blocks * 268
    ov = erase_cmds + 2 * blocks
    cmds += erase_cmds + blocks
    if checksum:
        b += 33
        ov += 4
        cmds += 1
    else:
        b += blocks * 268
        ov += 2 * blocks
        cmds += blocks
    return b, ov, cmds


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

TOOLS = ["stm32boot", "stm32flash", "stm32loader"]
TITLES = {
    "w1": "W1: write + verify of a random image",
    "w2": "W2: write + verify, 75 % of the image erased value (0xFF)",
    "w3": "W3: 64-byte coefficient update inside a 2 KB page that holds firmware",
    "w4": "W4: write + verify at a 150 ms round trip",
    "w5": "W5: host CPU time per MiB, timing off (timing=fast)",
    "scale": "Scaling: W1 at other image sizes and baud rates",
}
HOW = {
    "w1": {
        "stm32boot": "write IMAGE -a 0x08000000 --verify",
        "stm32flash": "-w IMAGE -v -S 0x08000000",
        "stm32loader": "-e -w -v IMAGE (mass erase; whole read-back)",
    },
    "w3": {
        "stm32boot": "write coeff.bin -a ADDR --verify (read page, journal, erase, write, verify)",
        "stm32flash": "-r page.bin -S PAGE:2048, patch 64 bytes, -w page.bin -v -S PAGE",
    },
}


def fmt_kib(size):
    size = int(size)
    if size < KIB:
        return f"{size} B"
    return f"{size // MIB} MiB" if size >= MIB and size % MIB == 0 else f"{size // KIB} KiB"


def part_desc(part):
    if part.endswith("+A1"):
        return (f"{base_part(part)} with its protocol version raised to 3.3 (sim "
                f"`version=0x33`), so Get lists Get Checksum (0xA1): what-if, not a shipping "
                f"bootloader")
    return f"{part} (bootloader protocol V3.1 as shipped: no Get Checksum, verify reads back)"


def link_desc(tool, bits):
    if tool == "stm32loader":
        return f"RFC 2217, 8E1 ({bits} bits)"
    return f"pty, 8N1 ({bits} bits)"


class Group:
    """The runs of one tool in one configuration."""

    def __init__(self, rows):
        self.rows = rows
        ok = [r for r in rows if r["status"] == "ok"]
        self.ok = ok
        self.failed = len(rows) - len(ok)
        r0 = rows[0]
        self.tool = r0["tool"]
        self.bits = int(r0["bits_per_char"]) if r0["bits_per_char"] else (
            11 if self.tool == "stm32loader" else 10)
        self.median = statistics.median(float(r["seconds"]) for r in ok) if ok else None
        self.bytes = int(statistics.median(int(r["bytes"]) for r in ok)) if ok else None
        self.rtt = int(statistics.median(int(r["round_trips"]) for r in ok)) if ok else None
        self.cpu = statistics.median(float(r["cpu_s"]) for r in ok) if ok else None
        self.flash = min(float(r["flash_s"]) for r in ok) if ok else None
        self.spread = (min(float(r["seconds"]) for r in ok), max(float(r["seconds"]) for r in ok)) \
            if ok else None


def job_flash(gs):
    """The job's erase and programming time: the least that stm32boot or stm32flash needed, as
    the simulator reported it (typical datasheet times). Both erase exactly the pages the image
    covers (a mass erase when it covers the whole flash); stm32loader's mass erase wipes the rest
    of the flash too, a different job, so its time does not count."""
    vals = [g.flash for t, g in gs.items() if t != "stm32loader" and g.flash is not None]
    return min(vals) if vals else 0.0


def load_raw(raw):
    with open(raw, newline="") as f:
        return list(csv.DictReader(f))


def config_key(r):
    return (r["workload"], r["part"], int(r["size"]), int(r["baud"]))


def report(raw, outdir, quick=False):
    rows = load_raw(raw)
    os.makedirs(outdir, exist_ok=True)
    configs = {}
    for r in rows:
        configs.setdefault(config_key(r), {}).setdefault(r["tool"], []).append(r)
    summary = []  # (target text, value text, met: True/False/None)
    bounds = {}   # (config key, tool) -> bound seconds

    def bound_for(key, tool_rows, bits, flash_s):
        w, part, size, baud = key
        r0 = tool_rows[0]
        data_blocks = int(r0["data_blocks"]) if r0["data_blocks"] else 0
        checksum = r0["checksum"] == "1"
        b, ov, cmds = bound_counts("w1" if w == "scale" else w, part, size, data_blocks,
                                   checksum)
        rtt = float(r0["rtt_ms"] or 0) / 1000.0
        return b, ov, cmds, (b - ov) * bits / baud + flash_s + cmds * rtt

    order = ["w1", "w2", "w3", "w4", "w5", "scale"]
    keys = sorted(configs, key=lambda k: (order.index(k[0]), k[1], k[3] != 115200, k[2], k[3]))
    groups = {}
    for key in keys:
        tools = configs[key]
        gs = {t: Group(tools[t]) for t in TOOLS if t in tools}
        groups[key] = gs
        flash_s = job_flash(gs)
        for t, g in gs.items():
            if key[0] == "w5":
                continue
            *_, bs = bound_for(key, tools[t], g.bits, flash_s)
            bounds[(key, t)] = bs

    # Tables ------------------------------------------------------------------------------------
    last_w = None
    for key in keys:
        w, part, size, baud = key
        gs = groups[key]
        if w != last_w:
            print()
            print("=" * 100)
            print(TITLES[w])
            print("=" * 100)
            last_w = w
        print()
        rtt_ms = float(next(iter(gs.values())).rows[0]["rtt_ms"] or 0)
        sim = next(iter(gs.values())).rows[0]["sim"]
        print(f"{part_desc(part)}")
        print(f"  {fmt_kib(size)}, {baud} baud, sim `{sim}`"
              + (f", {rtt_ms:.0f} ms round trip" if rtt_ms else ""))
        if w == "w5":
            print(f"  {'tool':<12}{'CPU s':>9}{'runs':>6}{'MiB moved':>11}{'CPU s/MiB':>11}"
                  f"{'CPU s/MiB image':>17}{'wall s':>9}  link")
            for t, g in gs.items():
                if g.median is None:
                    print(f"  {t:<12}{'FAILED':>9}")
                    continue
                mib = g.bytes / MIB
                print(f"  {t:<12}{g.cpu:>9.3f}{len(g.ok):>6}{mib:>11.2f}{g.cpu / mib:>11.3f}"
                      f"{g.cpu / (size / MIB):>17.3f}{g.median:>9.2f}  {link_desc(t, g.bits)}")
            continue
        any_g = next(iter(gs.values()))
        b, ov, cmds, _ = bound_for(key, any_g.rows, 10, 0.0)
        flash_s = job_flash(gs)
        bits_set = sorted({g.bits for g in gs.values()})
        print(f"  lower bound: {b:,} bytes the job needs, {ov:,} of them ACKs that arrive while "
              f"the host still sends: {b - ov:,} character times"
              + (f"; {cmds} commands that wait for their answer" if rtt_ms else ""))
        for bits in bits_set:
            who = ", ".join(t for t, g in gs.items() if g.bits == bits)
            wire = (b - ov) * bits / baud
            extra = f" + {cmds} x {rtt_ms:.0f} ms" if rtt_ms else ""
            print(f"    {b - ov:,} x {bits} bits / {baud} = {wire:.2f} s + flash {flash_s:.2f} s"
                  f"{extra} = {wire + flash_s + cmds * rtt_ms / 1000:.2f} s  ({who})")
        print(f"  {'tool':<12}{'median s':>9}{'runs':>6}{'min-max s':>15}{'x stm32flash':>14}"
              f"{'x bound':>9}{'bytes moved':>13}{'round trips':>13}{'CPU s':>8}  link")
        fl = gs.get("stm32flash")
        for t, g in gs.items():
            if g.median is None:
                print(f"  {t:<12}{'FAILED':>9}{len(g.rows):>6}")
                continue
            ratio = f"{g.median / fl.median:.3f}" if fl and fl.median else "-"
            bs = bounds[(key, t)]
            spread = f"{g.spread[0]:.2f}-{g.spread[1]:.2f}"
            print(f"  {t:<12}{g.median:>9.2f}{len(g.ok):>6}{spread:>15}{ratio:>14}"
                  f"{g.median / bs:>9.3f}{g.bytes:>13,}{g.rtt:>13,}{g.cpu:>8.2f}  "
                  f"{link_desc(t, g.bits)}" + (f"  ({g.failed} FAILED)" if g.failed else ""))

    # Targets -----------------------------------------------------------------------------------
    def g_of(w, part, size=None, baud=115200, tool="stm32boot"):
        for key in keys:
            if key[0] == w and key[1] == part and key[3] == baud and (size is None or key[2] == size):
                return key, groups[key].get(tool)
        return None, None

    def ratio(w, part, size=None, baud=115200):
        key, ours = g_of(w, part, size, baud)
        _, theirs = g_of(w, part, size, baud, "stm32flash")
        if ours is None or theirs is None or ours.median is None or theirs.median is None:
            return None
        return key, ours, theirs, ours.median / theirs.median

    def add(target, value, met):
        summary.append((target, value, met))

    for part in sorted({k[1] for k in keys if k[0] == "w1"}):
        key, ours = g_of("w1", part)
        if ours and ours.median:
            x = ours.median / bounds[(key, "stm32boot")]
            r = ratio("w1", part)
            tail = f"; {r[3]:.2f}x stm32flash (issue: about 0.6x)" if r else ""
            add(f"W1 {part} {fmt_kib(key[2])}: stm32boot <= 1.05x bound",
                f"{x:.3f}x ({ours.median:.1f} s vs {bounds[(key, 'stm32boot')]:.1f} s){tail}",
                x <= 1.05)
    for w, lim, name in (("w2", 0.35, "W2"), ("w3", 0.6, "W3"), ("w4", 0.45, "W4")):
        for part in sorted({k[1] for k in keys if k[0] == w}):
            r = ratio(w, part)
            if r:
                key, ours, theirs, x = r
                add(f"{name} {part} {fmt_kib(key[2])}: stm32boot <= {lim}x stm32flash",
                    f"{x:.3f}x ({ours.median:.2f} s vs {theirs.median:.2f} s)", x <= lim)
    for part in sorted({k[1] for k in keys if k[0] == "w5"}):
        key, ours = g_of("w5", part)
        _, theirs = g_of("w5", part, tool="stm32flash")
        if ours and theirs and ours.cpu is not None and theirs.cpu is not None:
            a = ours.cpu / (ours.bytes / MIB)
            b = theirs.cpu / (theirs.bytes / MIB)
            add(f"W5 {part}: stm32boot CPU per MiB moved <= stm32flash's",
                f"{a * 1000:.1f} ms/MiB vs {b * 1000:.1f} ms/MiB ({a / b:.2f}x)", a <= b)
    # Scaling: every stm32boot point within 1.05x of its bound; linear fit of time vs size.
    scale_part = "stm32l476"
    pts = []
    for key in keys:
        if key[0] in ("w1", "scale") and key[1] == scale_part:
            ours = groups[key].get("stm32boot")
            if ours and ours.median:
                pts.append((key, ours.median, bounds[(key, "stm32boot")]))
    size_pts = sorted({(k[2], t, b) for k, t, b in pts if k[3] == 115200})
    baud_pts = sorted({(k[3], t, b) for k, t, b in pts if k[2] == 256 * KIB})
    if len(size_pts) >= 2:
        xs = [s / MIB for s, _, _ in size_pts]
        ys = [t for _, t, _ in size_pts]
        slope, icpt, r2 = linfit(xs, ys)
        worst = max(t / b for _, t, b in size_pts)
        add(f"Scale {scale_part} 115200 baud, {', '.join(fmt_kib(s) for s, _, _ in size_pts)}: "
            f"linear, stm32boot <= 1.05x bound at every size",
            f"{slope:.1f} s/MiB + {icpt:.2f} s, R^2 = {r2:.5f}; x bound "
            + ", ".join(f"{t / b:.3f}" for _, t, b in size_pts), worst <= 1.05)
    if len(baud_pts) >= 2:
        worst = max(t / b for _, t, b in baud_pts)
        add(f"Scale {scale_part} 256 KiB at {', '.join(str(b) for b, _, _ in baud_pts)} baud: "
            f"stm32boot <= 1.05x bound at every rate",
            "x bound " + ", ".join(f"{t / b:.3f}" for _, t, b in baud_pts), worst <= 1.05)

    print()
    print("=" * 100)
    print("Targets (stm32boot; measured medians)" + (" -- QUICK RUN: small sizes, "
                                                     "not the issue's workloads" if quick else ""))
    print("=" * 100)
    for target, value, met in summary:
        mark = "met" if met else "NOT met"
        print(f"  [{mark:>7}] {target}: {value}")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        print(f"  {len(failed)} run(s) FAILED; see above")

    # CSV ---------------------------------------------------------------------------------------
    out_fields = ["workload", "part", "tool", "size", "baud", "run", "seconds", "bytes",
                  "round_trips", "cpu_s", "bound_s", "bits_per_char", "flash_s", "rtt_ms",
                  "data_blocks", "checksum", "sim", "status"]
    csv_path = os.path.join(outdir, "results.csv")
    with open(csv_path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=out_fields, extrasaction="ignore",
                            lineterminator="\n")
        wr.writeheader()
        for r in rows:
            bs = bounds.get((config_key(r), r["tool"]))
            wr.writerow(dict(r, bound_s=f"{bs:.3f}" if bs is not None else ""))
    print()
    print(f"CSV: {csv_path}")
    png = plot(keys, groups, bounds, outdir, scale_part)
    if png:
        print(f"plot: {png}")
    return 1 if failed else 0


def linfit(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    slope = sxy / sxx
    icpt = my - slope * mx
    ss_res = sum((y - (icpt + slope * x)) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return slope, icpt, 1 - ss_res / ss_tot if ss_tot else 1.0


def plot(keys, groups, bounds, outdir, part):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter
    except ImportError:
        print("matplotlib is missing (python3 -m pip install matplotlib): no plot", file=sys.stderr)
        return None
    w1ish = [k for k in keys if k[0] in ("w1", "scale") and k[1] == part]
    by_size = sorted((k for k in w1ish if k[3] == 115200), key=lambda k: k[2])
    sizes_with_bauds = {}
    for k in w1ish:
        sizes_with_bauds.setdefault(k[2], set()).add(k[3])
    baud_size = max(sizes_with_bauds, key=lambda s: len(sizes_with_bauds[s]), default=None)
    by_baud = sorted((k for k in w1ish if k[2] == baud_size), key=lambda k: k[3])
    if not by_size:
        return None
    panels = 2 if len(by_baud) > 1 else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 5), squeeze=False)
    style = {"stm32boot": ("C0", "o"), "stm32flash": ("C1", "s"), "stm32loader": ("C2", "^")}

    def panel(ax, ks, xof, xlabel, title, xticklabel):
        xs_all = sorted({xof(k) for k in ks})
        for tool in TOOLS:
            pts = sorted((xof(k), groups[k][tool].median) for k in ks
                         if tool in groups[k] and groups[k][tool].median)
            if not pts:
                continue
            c, m = style[tool]
            link = " (RFC 2217, 8E1)" if tool == "stm32loader" else " (pty, 8N1)"
            ax.plot([x for x, _ in pts], [t for _, t in pts], marker=m, color=c,
                    label=tool + link, linestyle="-" if len(pts) > 1 else "none")
            if tool == "stm32boot":
                for x, t in pts:
                    ax.annotate(f"{t:.1f} s", (x, t), textcoords="offset points", xytext=(8, -4),
                                fontsize=8, color=c)
        bpts = sorted((xof(k), bounds[(k, "stm32boot")]) for k in ks if (k, "stm32boot") in bounds)
        if bpts:
            ax.plot([x for x, _ in bpts], [t for _, t in bpts], "k--", linewidth=1,
                    label="lower bound (8N1: wire bytes + flash time)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(xs_all))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([xticklabel(x) for x in xs_all])
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("write + verify time (s)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)

    panel(axes[0][0], by_size, lambda k: k[2], "image size",
          f"W1 (random image, write + verify) on {part}, 115200 baud", fmt_kib)
    # The Get Checksum what-if of the same part, where W1 ran it.
    a1 = sorted((k[2], groups[k]["stm32boot"].median) for k in keys
                if k[0] == "w1" and k[1] == part + "+A1" and k[3] == 115200
                and "stm32boot" in groups[k] and groups[k]["stm32boot"].median)
    if a1:
        axes[0][0].plot([x for x, _ in a1], [t for _, t in a1], marker="o", color="C0",
                        markerfacecolor="none", linestyle="none",
                        label="stm32boot, bootloader with Get Checksum (what-if)")
        axes[0][0].legend(fontsize=8)
    if panels == 2:
        panel(axes[0][1], by_baud, lambda k: k[3], "baud rate",
              f"W1 {fmt_kib(baud_size)} on {part}", str)
    fig.suptitle("stm32boot vs stm32flash 0.7 on the simulator (typical timing); medians",
                 fontsize=11)
    fig.tight_layout()
    path = os.path.join(outdir, "time-vs-size.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv):
    cmd = argv[0]
    if cmd == "image":
        cmd_image(argv[1], argv[2], argv[3], "--sparse" in argv)
    elif cmd == "fill":
        cmd_image(argv[1], argv[2], argv[3])
    elif cmd == "unsync":
        cmd_unsync(argv[1])
    elif cmd == "patch":
        cmd_patch(argv[1], argv[2], argv[3], argv[4])
    elif cmd == "exec":
        i = argv.index("--")
        cmd_exec(argv[1], argv[2], argv[3], argv[i + 1:])
    elif cmd == "record":
        cmd_record(argv[1], argv[2:])
    elif cmd == "report":
        return report(argv[1], argv[2], "--quick" in argv)
    else:
        sys.exit(f"bench_report.py: unknown subcommand {cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
