#!/usr/bin/python3
"""sshproxy benchmarks, side by side in one run (issue 3, "Benchmarks").

    /usr/bin/python3 bench/ssh_bench.py           # 1 GiB x 5, 30 connects, 1000 sessions x 4
    /usr/bin/python3 bench/ssh_bench.py --quick   # 256 MiB streams, same structure
    /usr/bin/python3 bench/ssh_bench.py --json out.json --sessions 500,1000

Needs root, build/sshproxy/sshproxy and the hooks built (cmake --build build --target sshproxy),
and what the e2e harness needs (PostgreSQL, OpenSSH server, vsftpd). Stdlib only. It starts its
own world with tests/harness/sshproxy_env.py (a private PostgreSQL with the pgsql hook, backends
web1 and web2 = real OpenSSH sshd, test users, the proxy) and tears it all down at the end.

What it measures (docs/performance.md has the method and the figures):

1. Stream: `ssh host 'head -c SIZE /dev/zero'`, read by this script from a pipe and thrown
   away, through (a) the proxy, (b) straight to web1's sshd, (c) OpenSSH ProxyJump through
   web2's sshd to web1. Same cipher (-c / Ciphers) on every hop the client controls. Paths are
   interleaved and their order rotates every round, so machine noise hits all of them alike.
   Reported: median MB/s (10^6 bytes/s) from the first to the last byte ("stream"), median
   MB/s over the whole command including login ("wall"), ratios proxy/direct and jump/direct.
2. Connect: `ssh host true` with a key, wall time of the whole command, proxy vs direct,
   each with the client's default key exchange (sntrup761x25519 on both paths since libssh
   0.12) and with KexAlgorithms=curve25519-sha256; the exchange each variant negotiated is
   read from one `ssh -v` per variant and reported.
3. Idle sessions: on a freshly started proxy, N concurrent sessions each running
   `echo ready; exec cat >/dev/null` (an exec channel open, nothing flowing), opened in
   batches; the proxy's VmRSS before and at every level; KiB per session. Then the top level
   is closed and opened again on the same process (--cycles) to show what churn leaves.

Every subprocess and every wait has a deadline; every session and process is ended at exit.
Exit status: 0 when every measurement ran (targets met or not), 1 when something failed
(errors are in the table, the JSON and on stderr), 2 on bad usage or missing prerequisites.
"""

import argparse
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "harness"))
os.environ.setdefault("DP_SOURCE_DIR", SOURCE_DIR)

import dpenv  # noqa: E402
from benchlib import (cpu_secs, f1, f2, failure_lines, fmt_size, git_describe,  # noqa: E402
                      machine_info, median, meminfo, parse_size, proc_status, ratio, run_bench)
from sshproxy_env import SshProxyEnv, kill_group, proxy_missing, run_cmd  # noqa: E402

CIPHERS = ("chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com")
PATHS = ("proxy", "direct", "jump")
# Issue 12 (libssh 0.12), for a 2-core machine: stream >= 0.85 x direct for both ciphers, proxy
# CPU <= 1.0 s per GiB relayed, `ssh true` <= 1.0 x a direct login with the same key exchange,
# idle memory <= 32 KiB per session at 1,000 sessions.
TARGETS = {"stream_ratio_min": 0.85, "cpu_secs_per_gib_max": 1.0, "connect_ratio_max": 1.0,
           "kib_per_session_max": 32.0}
MIN_MEM_AVAILABLE_KIB = 2 * 1024 * 1024     # stop opening sessions below 2 GiB available


def log(msg, *args):
    dpenv.log(msg, *args)


class Bench:
    def __init__(self, args):
        self.args = args
        self.env = None
        self.user = None
        self.failures = []      # {"phase", "what", "symptom", "proxy_log"}
        self.results = {}
        self.tmp = None
        self.jump_cfg = {}

    # ---- helpers -----------------------------------------------------------------------
    def proxy_log_since(self, off, only_problems=True, limit=40):
        lines = self.env.log()[off:].splitlines()
        if only_problems:
            lines = [ln for ln in lines if "level=error" in ln or "level=warn" in ln
                     or "level=fatal" in ln or "level=crit" in ln]
        return lines[-limit:]

    def fail(self, phase, what, symptom, log_off):
        entry = {"phase": phase, "what": what, "symptom": symptom.strip()[-2000:],
                 "proxy_log": self.proxy_log_since(log_off)}
        died = self.env.ensure_proxy()
        if died:
            entry["proxy_died"] = died
        self.failures.append(entry)
        log("FAILURE %s/%s: %s", phase, what, entry["symptom"][-500:])
        for ln in entry["proxy_log"][-10:]:
            log("  proxy: %s", ln)
        if died:
            log("  %s", died)

    def no_alive_interval(self, argv):
        """Keepalives off (dpenv's base options set ServerAliveInterval=10)."""
        return ["ServerAliveInterval=0" if a == "ServerAliveInterval=10" else a for a in argv]

    def argv_for(self, path, command, cipher=None, kex=None):
        u = self.user
        extra = []
        if cipher:
            extra += ["-c", cipher]
        if kex:
            extra += ["-o", "KexAlgorithms=" + kex]
        if path == "proxy":
            return self.env.ssh_argv(u, command, key=True, extra=extra)
        if path == "direct":
            return self.env.ssh_argv(u, command, key=True, extra=extra,
                                     port=self.env.backends["web1"].ssh_port)
        if path == "jump":
            cfg = self.jump_config(cipher)
            argv = ["ssh", "-F", cfg, "-J", "bench-jump", "-p",
                    str(self.env.backends["web1"].ssh_port), "%s@127.0.0.1" % u.name, command]
            return argv, dict(os.environ)
        raise ValueError(path)

    def jump_config(self, cipher):
        """An ssh_config for ProxyJump: -F is handed on to the jump ssh, so both hops
        (client->web2 and the inner client->web1 tunnelled through it) use `cipher`."""
        if cipher in self.jump_cfg:
            return self.jump_cfg[cipher]
        path = os.path.join(self.tmp, "ssh_config.jump.%d" % len(self.jump_cfg))
        lines = ["Host bench-jump",
                 "  HostName 127.0.0.1",
                 "  Port %d" % self.env.backends["web2"].ssh_port,
                 "  User %s" % self.user.name,
                 "Host *",
                 "  IdentityFile %s" % self.user.key,
                 "  IdentitiesOnly yes",
                 "  IdentityAgent none",
                 "  BatchMode yes",
                 "  PreferredAuthentications publickey",
                 "  StrictHostKeyChecking no",
                 "  UserKnownHostsFile /dev/null",
                 "  GlobalKnownHostsFile /dev/null",
                 "  ConnectTimeout 10",
                 "  ServerAliveInterval 10",
                 "  LogLevel ERROR"]
        if cipher:
            lines.append("  Ciphers %s" % cipher)
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.jump_cfg[cipher] = path
        return path

    # ---- setup -------------------------------------------------------------------------
    def setup(self):
        self.tmp = tempfile.mkdtemp(prefix="dpb-ssh-")
        # nusers: idle sessions are spread over a few accounts, like real customers
        self.env = SshProxyEnv(nusers=self.args.users, prefix="dpb-sshp-",
                               workers=self.args.workers,
                               ssh_conf={"max_startups": 1000, "max_startups_per_ip": 100})
        self.env.__enter__()
        self.user = self.env.users[0]
        log("proxy pid %d port %d, web1 sshd %d, web2 sshd %d", self.env.proxy_pid,
            self.env.port, self.env.backends["web1"].ssh_port,
            self.env.backends["web2"].ssh_port)
        # sanity: every path reaches web1
        for path in PATHS:
            argv, e = self.argv_for(path, "echo $DYNPROXY_BACKEND", CIPHERS[0])
            r = run_cmd(argv, env=e, timeout=30)
            if r.rc != 0 or r.out.strip() != "web1":
                raise dpenv.HarnessError("path %s does not reach web1: %s" % (path, r))
        self.results["proxy_binary"] = os.path.realpath(os.path.join(dpenv.BUILD_DIR, "sshproxy",
                                                                     "sshproxy"))

    def abort_log(self):
        return self.proxy_log_since(0) if self.env and self.env.logfile else []

    def teardown(self):
        self.results.pop("_idle_base_fds", None)
        if self.env is not None and self.env.logfile:
            self.results["proxy_log_problems"] = self.proxy_log_since(0, limit=200)
            self.results["proxy_restarts"] = self.env.restarts
        if self.env is not None:
            problems = self.env.close()
            for p in problems:
                log("cleanup: %s", p)
        if self.tmp:
            dpenv.rmtree(self.tmp)

    # ---- 1. stream ---------------------------------------------------------------------
    def stream_once(self, path, cipher, size):
        """One transfer; returns a dict (stream/wall MB/s, proxy CPU) or None on failure.

        The client's stdout goes straight to /dev/null (no reader in this process competing
        for the 2 cores). The remote command first writes a marker to stderr, which travels
        on the same channel just ahead of the data; "stream" is size / (client exit - marker
        arrival), "wall" is size / (client exit - spawn)."""
        argv, e = self.argv_for(path, "echo dp-bench-start >&2; exec head -c %d /dev/zero"
                                % size, cipher)
        timeout = self.args.stream_timeout or max(120.0, size / 4e6)
        log_off = self.env.log_offset()
        pid = self.env.proxy_pid
        cpu0 = cpu_secs(pid) if path == "proxy" else None
        t0 = time.monotonic()
        p = subprocess.Popen(argv, env=e, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True)
        fd = p.stderr.fileno()
        err = b""
        t_mark = None
        deadline = t0 + timeout
        symptom = None
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                symptom = "timed out after %.0fs" % timeout
                break
            if not poller.poll(min(left, 1.0) * 1000):
                continue
            data = os.read(fd, 65536)
            if not data:
                break
            err += data
            if t_mark is None and b"dp-bench-start\n" in err:
                t_mark = time.monotonic()
                err = err.replace(b"dp-bench-start\n", b"", 1)
        if symptom is None:
            try:
                p.wait(max(5.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                symptom = "ssh did not exit after closing stderr"
        t_end = time.monotonic()
        if symptom:
            kill_group(p)
        p.stderr.close()
        err = err.decode("utf-8", "replace")
        if symptom is None and (p.returncode != 0 or t_mark is None):
            symptom = "exit %s%s" % (p.returncode, "" if t_mark else ", no start marker")
        if symptom:
            self.fail("stream", "%s %s" % (path, cipher), symptom + "; stderr: " + err, log_off)
            return None
        if err.strip():
            log("  %s %s stderr: %s", path, cipher, err.strip()[:300])
        cpu1 = cpu_secs(pid) if path == "proxy" else None
        if path == "proxy":
            self.check_proxy_bytes(log_off, size, cipher)
        res = {"wall_mbps": size / (t_end - t0) / 1e6, "secs": t_end - t0,
               "stream_mbps": size / max(t_end - t_mark, 1e-9) / 1e6,
               "setup_secs": t_mark - t0}
        if cpu0 is not None and cpu1 is not None:
            res["proxy_cpu_secs"] = cpu1 - cpu0
        return res

    def verify_path(self, path, cipher, size):
        argv, e = self.argv_for(path, "head -c %d /dev/zero" % size, cipher)
        off = self.env.log_offset()
        r = run_cmd(argv, env=e, timeout=120, binary=True)
        if r.rc != 0 or r.timed_out or r.out != bytes(size):
            self.fail("stream", "%s %s check" % (path, cipher),
                      "%d of %d zero bytes received; %s" % (len(r.out), size, r), off)

    def check_proxy_bytes(self, log_off, size, cipher):
        """The proxy's session_end line must account for the whole stream."""
        ev = []
        dpenv.wait_until(lambda: ev.extend(self.env.events("session_end", after=log_off))
                         or ev, 3.0)
        if not ev:
            self.fail("stream", "proxy %s" % cipher, "no event=session_end logged", log_off)
            return
        got = max(int(ev[-1].get("bytes_out") or 0), int(ev[-1].get("bytes_in") or 0))
        if got < size:
            self.fail("stream", "proxy %s" % cipher, "session_end accounts for %d of %d bytes: %s"
                      % (got, size, ev[-1]["_line"]), log_off)

    def bench_stream(self):
        size = self.args.size
        n = self.args.repeat
        out = {"size": size, "repeat": n, "ciphers": {}}
        for cipher in self.args.ciphers:
            log("stream %s: %s x %d per path, interleaved", cipher, fmt_size(size), n)
            # one unmeasured warm-up per path that also checks the bytes arrive, all of them
            for path in PATHS:
                self.verify_path(path, cipher, min(size, 64 << 20))
            runs = {p: [] for p in PATHS}
            for i in range(n):
                order = PATHS[i % 3:] + PATHS[:i % 3]
                for path in order:
                    r = self.stream_once(path, cipher, size)
                    if r:
                        runs[path].append(r)
                        log("  round %d %-6s %7.1f MB/s stream, %7.1f MB/s wall%s", i + 1, path,
                            r["stream_mbps"], r["wall_mbps"],
                            ", proxy CPU %.2fs" % r["proxy_cpu_secs"]
                            if "proxy_cpu_secs" in r else "")
            c = {"runs": runs}
            for key in ("stream_mbps", "wall_mbps"):
                med = {p: median([r[key] for r in runs[p]]) for p in PATHS}
                c[key] = med
            c["ratio_proxy_direct"] = ratio(c["stream_mbps"]["proxy"], c["stream_mbps"]["direct"])
            c["ratio_jump_direct"] = ratio(c["stream_mbps"]["jump"], c["stream_mbps"]["direct"])
            c["wall_ratio_proxy_direct"] = ratio(c["wall_mbps"]["proxy"], c["wall_mbps"]["direct"])
            c["wall_ratio_jump_direct"] = ratio(c["wall_mbps"]["jump"], c["wall_mbps"]["direct"])
            cpus = [r["proxy_cpu_secs"] for r in runs["proxy"] if "proxy_cpu_secs" in r]
            c["proxy_cpu_secs_per_gib"] = (median(cpus) * (1 << 30) / size) if cpus else None
            out["ciphers"][cipher] = c
        self.results["stream"] = out

    # ---- 2. connect --------------------------------------------------------------------
    def bench_connect(self):
        n = self.args.connect_repeat
        variants = [("proxy", "proxy", None), ("direct", "direct", None),
                    ("proxy_curve25519", "proxy", "curve25519-sha256"),
                    ("direct_curve25519", "direct", "curve25519-sha256")]
        negotiated = {}
        for name, path, kex in variants:          # warm-up, unmeasured
            for i in range(3):
                argv, e = self.argv_for(path, "true", kex=kex)
                if i == 0:
                    argv = ["LogLevel=DEBUG1" if a == "LogLevel=ERROR" else a for a in argv]
                r = run_cmd(argv, env=e, timeout=30)
                if i == 0:
                    m = re.search(r"kex: algorithm: (\S+)", r.err)
                    negotiated[name] = m.group(1) if m else None
        runs = {name: [] for name, _, _ in variants}
        log("connect: `ssh host true` x %d per variant, interleaved", n)
        for i in range(n):
            order = variants[i % len(variants):] + variants[:i % len(variants)]
            for name, path, kex in order:
                argv, e = self.argv_for(path, "true", kex=kex)
                off = self.env.log_offset()
                r = run_cmd(argv, env=e, timeout=30)
                if r.rc != 0 or r.timed_out:
                    self.fail("connect", name, str(r), off)
                    continue
                runs[name].append(r.secs * 1000.0)
        med = {k: median(v) for k, v in runs.items()}
        self.results["connect"] = {
            "repeat": n, "runs_ms": runs, "median_ms": med, "kex": negotiated,
            "ratio_proxy_direct": ratio(med["proxy"], med["direct"]),
            "ratio_proxy_direct_curve25519": ratio(med["proxy_curve25519"],
                                                   med["direct_curve25519"])}
        log("connect: negotiated %s", negotiated)
        log("connect medians: %s", ", ".join("%s %.1f ms" % (k, v) for k, v in med.items()
                                              if v is not None))

    # ---- 3. idle sessions --------------------------------------------------------------
    def bench_idle(self):
        levels = sorted(set(self.args.sessions))
        # a fresh proxy: the stream phase left its allocator warm (freed 2 MiB channel buffers
        # would be reused by the new sessions and hide their cost)
        self.env.stop_proxy()
        self.env.start_proxy()
        pid = self.env.proxy_pid
        for u in self.env.users:                  # warm-up: hook, PG pool, route cache, threads
            argv, e = self.env.ssh_argv(u, "true", key=True)
            run_cmd(argv, env=e, timeout=30)
        time.sleep(1.0)
        base = proc_status(pid)
        self.results["_idle_base_fds"] = base["fds"]
        out = {"batch": self.args.batch, "command": "echo ready; exec cat >/dev/null",
               "baseline": base, "levels": [], "reached": 0}
        log("idle sessions: proxy pid %d baseline VmRSS %d KiB, RssAnon %d KiB, %d fds",
            pid, base["VmRSS"], base["RssAnon"], base["fds"])
        errlog = open(os.path.join(self.tmp, "idle-ssh.err"), "ab")
        try:
            levels_out, stop_reason, after = self.idle_cycle(levels, pid, base, errlog)
            out.update(levels=levels_out, stop_reason=stop_reason, after_close=after,
                       reached=levels_out[-1]["sessions"] if levels_out else 0)
            # cycles 2..N: the same number again on the same process. Freed session memory
            # the allocator kept is reused (RSS flat from cycle to cycle); memory that grows
            # by about the same amount every cycle is a leak.
            out["cycles"] = []
            for cyc in range(2, self.args.cycles + 1):
                if not (out["reached"] and not stop_reason and self.env.proxy_alive()
                        and self.env.proxy_pid == pid):
                    break
                log("idle sessions: cycle %d, %d sessions on the same proxy", cyc, out["reached"])
                lv, stop_reason, aft = self.idle_cycle([out["reached"]], pid, base, errlog)
                out["cycles"].append({"cycle": cyc, "levels": lv, "stop_reason": stop_reason,
                                      "after_close": aft})
        finally:
            errlog.close()
        self.results["idle"] = out

    def idle_cycle(self, levels, pid, base, errlog):
        """Open sessions up to every level in turn, measure the proxy at each, close all."""
        sessions = []          # (Popen, stdout fd)
        out = []
        stop_reason = None
        t_start = time.monotonic()
        after = None
        try:
            for level in levels:
                while len(sessions) < level and stop_reason is None:
                    avail = meminfo().get("MemAvailable", 1 << 40)
                    if avail < MIN_MEM_AVAILABLE_KIB:
                        stop_reason = "MemAvailable %d MiB < 2 GiB" % (avail // 1024)
                        break
                    k = min(self.args.batch, level - len(sessions))
                    stop_reason = self.open_batch(sessions, k, errlog)
                if stop_reason:
                    log("idle sessions: stopped at %d: %s", len(sessions), stop_reason)
                    break
                time.sleep(2.0)               # let the last handshakes' garbage settle
                alive = sum(1 for p, _ in sessions if p.poll() is None)
                st = proc_status(pid)
                if st is None:
                    stop_reason = "proxy gone"
                    break
                ent = {"sessions": len(sessions), "alive_clients": alive, "status": st,
                       "mem_available_mib": meminfo().get("MemAvailable", 0) // 1024,
                       "open_secs": round(time.monotonic() - t_start, 1),
                       "kib_per_session": (st["VmRSS"] - base["VmRSS"]) / float(len(sessions)),
                       "anon_kib_per_session":
                           (st["RssAnon"] - base["RssAnon"]) / float(len(sessions))}
                if out:
                    prev = out[-1]
                    d = len(sessions) - prev["sessions"]
                    ent["marginal_kib_per_session"] = \
                        (st["VmRSS"] - prev["status"]["VmRSS"]) / float(d) if d else None
                out.append(ent)
                log("idle sessions: %d open (%d clients alive) in %.0fs: VmRSS %d KiB "
                    "(+%.1f KiB/session over baseline), RssAnon %d KiB, %d fds, %d threads, "
                    "MemAvailable %d MiB", len(sessions), alive, ent["open_secs"], st["VmRSS"],
                    ent["kib_per_session"], st["RssAnon"], st["fds"], st["Threads"],
                    ent["mem_available_mib"])
        finally:
            after = self.close_sessions(sessions, pid)
        return out, stop_reason, after

    def open_batch(self, sessions, k, errlog):
        """Start k idle sessions and wait until each printed "ready". Returns None or why not."""
        users = self.env.users
        new = []
        log_off = self.env.log_offset()
        for i in range(k):
            u = users[(len(sessions) + i) % len(users)]
            argv, e = self.env.ssh_argv(u, "echo ready; exec cat >/dev/null", key=True)
            argv = self.no_alive_interval(argv)
            p = subprocess.Popen(argv, env=e, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=errlog, start_new_session=True)
            new.append(p)
            sessions.append((p, p.stdout.fileno()))
        waiting = {p.stdout.fileno(): (p, b"") for p in new}
        poller = select.poll()
        for fd in waiting:
            poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        deadline = time.monotonic() + self.args.batch_timeout
        bad = []
        while waiting and time.monotonic() < deadline:
            for fd, _ev in poller.poll(500):
                p, got = waiting[fd]
                data = os.read(fd, 64)
                if not data:
                    bad.append((p, "ssh exited (status %s) before the session was ready"
                                % p.poll()))
                    poller.unregister(fd)
                    del waiting[fd]
                    continue
                got += data
                if b"ready\n" in got:
                    poller.unregister(fd)
                    del waiting[fd]
                else:
                    waiting[fd] = (p, got)
        for fd, (p, _) in waiting.items():
            bad.append((p, "not ready after %ss" % self.args.batch_timeout))
        if bad:
            time.sleep(0.2)
            errlog.flush()
            try:
                with open(errlog.name, errors="replace") as f:
                    errtail = f.read()[-1500:]
            except OSError:
                errtail = ""
            self.fail("idle", "session %d..%d" % (len(sessions) - k + 1, len(sessions)),
                      "%d of %d sessions failed: %s; ssh stderr tail: %s"
                      % (len(bad), k, bad[0][1], errtail), log_off)
            return "%d sessions of a batch failed" % len(bad)
        if not self.env.proxy_alive():
            return "proxy died"
        return None

    def close_sessions(self, sessions, pid):
        """End every idle session (EOF first, then signals); returns the proxy after that."""
        if not sessions:
            return None
        log("idle sessions: closing %d", len(sessions))
        t0 = time.monotonic()
        for p, _ in sessions:                      # graceful: EOF -> cat exits -> ssh exits
            try:
                p.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(p.poll() is None for p, _ in sessions):
            time.sleep(0.2)
        graceful = sum(1 for p, _ in sessions if p.returncode == 0)
        for p, _ in sessions:
            if p.poll() is None:
                kill_group(p)
            try:
                p.stdout.close()
            except OSError:
                pass
        secs = time.monotonic() - t0
        # wait (bounded) for the proxy to drop them all (back near its baseline fd count)
        limit = (self.results.get("_idle_base_fds") or 50) + 10
        dpenv.wait_until(lambda: (proc_status(pid) or {"fds": 0})["fds"] <= limit, 30, 0.5)
        time.sleep(1.0)
        st = proc_status(pid)
        log("idle sessions: closed in %.1fs (%d ended cleanly); proxy now VmRSS %s KiB, %s fds",
            secs, graceful, st and st["VmRSS"], st and st["fds"])
        return {"status": st, "close_secs": round(secs, 1), "graceful": graceful}

    # ---- which cipher does the proxy use toward the backend? ------------------------------
    def check_backend_hop(self):
        """Raise web1's sshd to LogLevel DEBUG1 (SIGHUP: it re-executes itself) and read which
        cipher each proxied login negotiated on the proxy->backend hop. Runs last, so the
        extra logging never touches a measurement."""
        be = self.env.backends["web1"]
        with open(be.sshd_config) as f:
            conf = f.read()
        with open(be.sshd_config, "w") as f:
            f.write(conf.replace("LogLevel VERBOSE", "LogLevel DEBUG1"))
        os.kill(be.pids()["sshd"], signal.SIGHUP)
        time.sleep(1.0)
        dpenv.wait_port(be.ssh_port, timeout=10)
        out = {}
        for cipher in self.args.ciphers:
            off = os.path.getsize(be.sshd_log)
            argv, e = self.argv_for("proxy", "true", cipher)
            run_cmd(argv, env=e, timeout=30)
            time.sleep(0.3)
            with open(be.sshd_log, errors="replace") as f:
                f.seek(off)
                text = f.read()
            got = [ln.split("cipher:", 1)[1].split()[0] for ln in text.splitlines()
                   if "kex: server->client cipher:" in ln]
            out[cipher] = got[0] if got else None
        self.results["backend_hop_cipher"] = out
        log("proxy->backend hop cipher per client cipher: %s", out)

    # ---- report ------------------------------------------------------------------------
    def report(self):
        R = self.results
        lines = []
        m = R["machine"]
        lines.append("sshproxy benchmarks: %d x %s, %s, kernel %s, %s"
                     % (m["nproc"], m["cpu_model"], m["mem_total_gib"] and
                        "%.0f GiB" % m["mem_total_gib"], m["kernel"], m["openssh"]))
        src = R.get("source") or {}
        lines.append(R.get("proxy_build", ""))
        lines.append("source %s%s, proxy workers %d, load average at start %s" % (
            src.get("commit", "?"), " (+ uncommitted changes)" if src.get("dirty")
            else "", R["args"]["workers"], m.get("loadavg_at_start")))
        if "stream" in R:
            s = R["stream"]
            lines.append("")
            lines.append("Stream %s backend -> client, median of %d (MB/s = 10^6 B/s; "
                         "stream = first to last byte, wall = whole ssh command)"
                         % (fmt_size(s["size"]), s["repeat"]))
            lines.append("%-30s %9s %9s %9s %8s %8s  %s" % ("cipher", "proxy", "direct", "jump",
                                                           "p/d", "j/d", "target p/d>=%.2f"
                                                           % TARGETS["stream_ratio_min"]))
            for cipher, c in s["ciphers"].items():
                for key, tag in (("stream_mbps", ""), ("wall_mbps", " (wall)")):
                    v = c[key]
                    rp = ratio(v["proxy"], v["direct"])
                    rj = ratio(v["jump"], v["direct"])
                    ok = "" if tag else ("met" if rp is not None and
                                         rp >= TARGETS["stream_ratio_min"] else "MISSED")
                    lines.append("%-30s %9s %9s %9s %8s %8s  %s"
                                 % (cipher.split("@")[0] + tag, f1(v["proxy"]), f1(v["direct"]),
                                    f1(v["jump"]), f2(rp), f2(rj), ok))
                if c.get("proxy_cpu_secs_per_gib") is not None:
                    cpu = c["proxy_cpu_secs_per_gib"]
                    lines.append("%-30s proxy CPU %.2f s per GiB relayed (target <= %.1f: %s)"
                                 % ("", cpu, TARGETS["cpu_secs_per_gib_max"],
                                    "met" if cpu <= TARGETS["cpu_secs_per_gib_max"]
                                    else "MISSED"))
        if R.get("backend_hop_cipher"):
            lines.append("proxy->backend hop cipher (chosen by the proxy, not the client): %s"
                         % ", ".join("client %s -> %s" % (k.split("@")[0], (v or "?").split("@")[0])
                                     for k, v in R["backend_hop_cipher"].items()))
        if "connect" in R:
            c = R["connect"]
            md = c["median_ms"]
            lines.append("")
            lines.append("Connect `ssh host true`, median of %d (ms)" % c["repeat"])
            lines.append("%-30s %9s %9s %8s  %s" % ("key exchange (negotiated)", "proxy",
                                                    "direct", "p/d", "target p/d<=%.2f"
                                                    % TARGETS["connect_ratio_max"]))
            kx = c.get("kex", {})
            for label, pk, dk, rk in (("client default", "proxy", "direct", "ratio_proxy_direct"),
                                      ("curve25519-sha256", "proxy_curve25519",
                                       "direct_curve25519", "ratio_proxy_direct_curve25519")):
                rp = c[rk]
                same = kx.get(pk) == kx.get(dk)
                lines.append("%-30s %9s %9s %8s  %s"
                             % ("%s (%s)" % (label, (kx.get(pk) or "?").split("@")[0]
                                             + ("" if same else " vs %s" % kx.get(dk))),
                                f1(md[pk]), f1(md[dk]), f2(rp),
                                "met" if rp is not None and rp <= TARGETS["connect_ratio_max"]
                                else "MISSED"))
        if "idle" in R:
            d = R["idle"]
            lines.append("")
            lines.append("Idle sessions (exec channel open, no data) on a fresh proxy; baseline "
                         "VmRSS %d KiB" % d["baseline"]["VmRSS"])
            lines.append("%9s %11s %14s %14s %14s %6s  %s" % ("sessions", "VmRSS KiB",
                                                             "KiB/session", "marginal KiB",
                                                             "anon KiB/sess", "fds",
                                                             "target <=%.0f KiB"
                                                             % TARGETS["kib_per_session_max"]))
            for ent in d["levels"]:
                k = ent["kib_per_session"]
                lines.append("%9d %11d %14.1f %14s %14.1f %6d  %s"
                             % (ent["sessions"], ent["status"]["VmRSS"], k,
                                f1(ent.get("marginal_kib_per_session")),
                                ent["anon_kib_per_session"], ent["status"]["fds"],
                                "met" if k <= TARGETS["kib_per_session_max"] else "MISSED"))
            if d.get("stop_reason"):
                lines.append("stopped early: %s" % d["stop_reason"])
            ac = d.get("after_close")
            if ac and ac.get("status"):
                lines.append("after closing all: VmRSS %d KiB, %d fds (%d of %d ended cleanly)"
                             % (ac["status"]["VmRSS"], ac["status"]["fds"], ac["graceful"],
                                d["reached"] or max([e["sessions"] for e in d["levels"]] or [0])))
            prev = d["levels"][-1]["status"]["VmRSS"] if d["levels"] else None
            for c in d.get("cycles", []):
                if not c["levels"] or prev is None:
                    continue
                ent = c["levels"][-1]
                k = ent["kib_per_session"]
                lines.append("cycle %d (%d sessions again, same proxy): VmRSS %d KiB = %.1f KiB "
                             "per session over baseline (%s), %+.1f vs the previous cycle%s" % (
                                 c["cycle"], ent["sessions"], ent["status"]["VmRSS"], k,
                                 "met" if k <= TARGETS["kib_per_session_max"] else "MISSED",
                                 (ent["status"]["VmRSS"] - prev) / float(ent["sessions"]),
                                 "; after closing: VmRSS %d KiB, %d fds"
                                 % (c["after_close"]["status"]["VmRSS"],
                                    c["after_close"]["status"]["fds"])
                                 if c.get("after_close") and c["after_close"].get("status")
                                 else ""))
                prev = ent["status"]["VmRSS"]
        lines += failure_lines(self.failures, "proxy")
        return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1GiB", help="bytes per stream (1GiB, 256MiB, ...)")
    ap.add_argument("--quick", action="store_true", help="256 MiB streams")
    ap.add_argument("--repeat", type=int, default=5, help="stream runs per path and cipher")
    ap.add_argument("--ciphers", default=",".join(CIPHERS))
    ap.add_argument("--connect-repeat", type=int, default=30)
    ap.add_argument("--sessions", default="500,1000",
                    help="idle session levels, cumulative (e.g. 500,1000)")
    ap.add_argument("--batch", type=int, default=25, help="idle sessions opened at once")
    ap.add_argument("--cycles", type=int, default=4,
                    help="idle phase: open and close the top level this many times on the same "
                         "proxy (>= 2 tells allocator retention from a leak)")
    ap.add_argument("--batch-timeout", type=float, default=60.0)
    ap.add_argument("--stream-timeout", type=float, default=0,
                    help="seconds per transfer (default max(120, size / 4 MB/s))")
    ap.add_argument("--workers", type=int, default=2, help="proxy worker threads (loops)")
    ap.add_argument("--users", type=int, default=4, help="test accounts (idle sessions spread)")
    ap.add_argument("--only", default="stream,connect,idle",
                    help="comma list of phases to run: stream, connect, idle")
    ap.add_argument("--json", metavar="PATH", help="write every figure and raw run here")
    ap.add_argument("--binary", metavar="PATH",
                    help="the sshproxy to measure (default build/sshproxy/sshproxy); "
                         "bench/libssh_bufsize.py passes builds on other libssh builds")
    args = ap.parse_args()
    args.size = parse_size("256MiB" if args.quick else args.size)
    args.ciphers = [c for c in args.ciphers.split(",") if c]
    args.sessions = [int(x) for x in args.sessions.split(",") if x]
    phases = [p for p in args.only.split(",") if p]
    if any(p not in ("stream", "connect", "idle") for p in phases) or args.repeat < 1 \
            or args.connect_repeat < 1 or args.batch < 1 or args.batch > 90:
        ap.error("bad --only/--repeat/--connect-repeat/--batch (batch 1..90: the proxy "
                 "admits 100 unauthenticated connections per source IP)")
    if os.geteuid() != 0:
        print("ssh_bench.py: must run as root (it creates users and backends)", file=sys.stderr)
        return 2
    if args.binary:
        SshProxyEnv.BINARY = os.path.abspath(args.binary)
    why = proxy_missing()
    if why:
        print("ssh_bench.py: " + why, file=sys.stderr)
        return 2

    b = Bench(args)
    b.results["machine"] = machine_info({"openssh": ["ssh", "-V"]})
    b.results["args"] = {"size": args.size, "repeat": args.repeat, "ciphers": args.ciphers,
                         "connect_repeat": args.connect_repeat, "sessions": args.sessions,
                         "batch": args.batch, "phases": phases, "workers": args.workers,
                         "cycles": args.cycles}
    b.results["targets"] = TARGETS
    b.results["source"] = git_describe(("sshproxy", "common", "hooks"))
    b.results["proxy_build"] = subprocess.run([SshProxyEnv.BINARY, "-V"], capture_output=True,
                                              text=True, timeout=10).stdout.strip()
    steps = [getattr(b, "bench_" + p) for p in ("stream", "connect", "idle") if p in phases]
    return run_bench(b, steps + [b.check_backend_hop], args.json)


if __name__ == "__main__":
    sys.exit(main())
