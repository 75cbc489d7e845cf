"""What the benchmarks in bench/ share: sizes, medians and ratios, /proc readers, the machine
and source description, the FAILURES part of the report and the run around the phases
(run_bench).

Stdlib only (plus tests/harness/dpenv.py for its log lines). Nothing here starts a process
except version probes and git.
"""

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time

SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "harness"))
import dpenv  # noqa: E402


def parse_size(s):
    s = s.strip()
    units = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("G", 1 << 30),
             ("M", 1 << 20), ("K", 1 << 10), ("GB", 10 ** 9), ("MB", 10 ** 6), ("KB", 10 ** 3)]
    for suffix, mult in sorted(units, key=lambda u: -len(u[0])):
        if s.endswith(suffix):
            return int(float(s[:-len(suffix)]) * mult)
    return int(s)


def fmt_size(n):
    for unit, mult in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= mult and n % mult == 0:
            return "%d %s" % (n // mult, unit)
    return "%d B" % n


def median(xs):
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return a / b if a is not None and b else None


def f1(v):
    return "-" if v is None else "%.1f" % v


def f2(v):
    return "-" if v is None else "%.2f" % v


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return None


def proc_fields(path, keys=None):
    """{key: first number} of a /proc file of "Key:  value [kB]" lines (only `keys` when
    given); raises OSError when the file cannot be read (the process is gone)."""
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.partition(":")
            if (keys is None or k in keys) and v.split() and v.split()[0].isdigit():
                out[k] = int(v.split()[0])
    return out


def meminfo():
    try:
        return proc_fields("/proc/meminfo")
    except OSError:
        return {}


def machine_info(tools):
    """CPU, memory, kernel, Python and the version line of each tool: tools maps a result key
    to the argv that prints it (e.g. {"openssh": ["ssh", "-V"]})."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = meminfo().get("MemTotal")
    out = {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
           "mem_total_gib": round(mem_kib / 1048576.0, 1) if mem_kib else None,
           "python": platform.python_version(), "loadavg_at_start": loadavg()}
    for key, argv in tools.items():
        try:
            r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               timeout=10)
            out[key] = r.stdout.strip().splitlines()[0] if r.stdout.strip() else None
        except (OSError, subprocess.TimeoutExpired):
            out[key] = None
    return out


def proc_status(pid):
    """{VmRSS, RssAnon, RssFile, VmHWM, Threads} (KiB / count) of pid, plus its fd count."""
    try:
        out = proc_fields("/proc/%d/status" % pid,
                          ("VmRSS", "RssAnon", "RssFile", "VmHWM", "Threads"))
        out["fds"] = len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None
    return out


def cpu_secs(pid):
    """utime+stime of pid in seconds (None when gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
        fields = st[st.rfind(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def git_describe(dirs):
    """Commit of the source tree and whether any of dirs had uncommitted changes."""
    def git(*a):
        try:
            return subprocess.run(["git", "-C", SOURCE_DIR] + list(a), stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", *dirs))}


def failure_lines(failures, who):
    """The FAILURES section of a report: each failure with the last log lines of `who`."""
    if not failures:
        return []
    lines = ["", "FAILURES (%d):" % len(failures)]
    for f in failures:
        lines.append("- %s %s: %s" % (f["phase"], f["what"], f["symptom"][:400]))
        for ln in f.get("proxy_log", [])[-5:]:
            lines.append("    %s: %s" % (who, ln[:300]))
        if f.get("proxy_died"):
            lines.append("    " + f["proxy_died"].replace("\n", "\n    "))
    return lines


def run_bench(b, steps, json_path):
    """Everything around a benchmark's phases: b.setup(), each of steps, b.teardown() (always,
    also after ^C, SIGTERM or an exception), then b.report() on stdout and b.results as JSON
    at json_path. An exception or interruption is one more entry in b.failures, with the log
    lines b.abort_log() returns. Returns the exit status: 1 when b.failures, else 0."""
    def on_term(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, on_term)
    t0 = time.monotonic()
    try:
        b.setup()
        for step in steps:
            step()
    except KeyboardInterrupt as e:
        dpenv.log("interrupted: %s", e)
        b.failures.append({"phase": "run", "what": "interrupted", "symptom": str(e),
                           "proxy_log": []})
    except Exception as e:  # noqa: BLE001 - report, then clean up
        dpenv.log("benchmark aborted: %r", e)
        b.failures.append({"phase": "run", "what": "aborted", "symptom": repr(e),
                           "proxy_log": b.abort_log()})
    finally:
        b.teardown()
    b.results["loadavg_at_end"] = loadavg()
    b.results["elapsed_s"] = round(time.monotonic() - t0, 1)
    b.results["failures"] = b.failures
    print(b.report())
    if json_path:
        with open(json_path, "w") as f:
            json.dump(b.results, f, indent=1, sort_keys=True)
        dpenv.log("wrote %s", json_path)
    return 1 if b.failures else 0
