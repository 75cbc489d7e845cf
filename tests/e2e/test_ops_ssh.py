#!/usr/bin/python3
"""e2e.ops_ssh: operating sshproxy through its control socket with the real proxyctl, against
real OpenSSH backends and clients (docs/operations.md).

  1 sessions and kick: `sessions` lists the open connections with user, backend and state
    "open"; `kick user=` ends exactly that user's two sessions, whose ssh clients exit and
    print the message; `kick backend=` ends the one on that backend; the rest keep running.
  2 reload: a broken config is refused (exit 1, reason) while a running session keeps
    streaming; a good reload keeps it too.
  3 drain with a session in flight: new connections are refused, the session's 16 MiB stream
    arrives whole (sha256), proxyctl drain answers and the daemon exits 0 after it.
  4 drain deadline and SIGTERM: SIGTERM drains with control.drain_timeout_s; a session left at
    the deadline is disconnected with the message and the daemon exits 0 on time.

Run by ctest (label e2e) or directly as root:
    PYTHONPATH=tests/harness /usr/bin/python3 tests/e2e/test_ops_ssh.py [1 2 ...]
"""

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))
import dpenv  # noqa: E402
from checks import Checks  # noqa: E402
from ctl import (connect_refused, proxyctl, proxyctl_background, proxyctl_missing,  # noqa: E402
                 sessions as ctl_sessions)
from sshproxy_env import SshProxyEnv  # noqa: E402

check = Checks()
MiB = 1 << 20


def ctl(env, *args, **kw):
    return proxyctl(env.ctl_path, *args, **kw)



class Bg:
    """A real ssh client running in the background; .finish() -> (rc, stdout bytes, stderr)."""

    def __init__(self, env, user, command):
        argv, e = env.ssh_argv(user, command, key=True, loglevel="INFO")
        self.p = subprocess.Popen(argv, env=e, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, start_new_session=True)
        self.out = {}
        self.t = threading.Thread(target=self._read)
        self.t.start()

    def _read(self):
        o, e = self.p.communicate()
        self.out = {"rc": self.p.returncode, "out": o, "err": e.decode("utf-8", "replace")}

    def running(self):
        return self.p.poll() is None

    def finish(self, timeout=30):
        self.t.join(timeout)
        if self.t.is_alive():
            self.p.kill()
            self.t.join(5)
        return self.out.get("rc"), self.out.get("out", b""), self.out.get("err", "")

    def stop(self):
        """Kill the client if it still runs, and reap it (cleanup)."""
        if self.running():
            self.p.kill()
        self.finish(5)


def wait_sessions(env, n, timeout=15, **match):
    """Wait until `sessions` shows n sessions in state open matching the fields, each with
    output relayed already (its command runs: the session channel is open)."""
    rows = []

    def ready():
        rows[:] = [r for r in ctl_sessions(env.ctl_path) or [] if r["state"] == "open" and
                   r["bytes_out"] > 0 and all(r.get(k) == v for k, v in match.items())]
        return len(rows) >= n
    dpenv.wait_until(ready, timeout)
    return rows


# ---- 1 sessions and kick ---------------------------------------------------------------------------
def t_kick(env):
    u0, u2, u1 = env.users[:3]  # spread_users: u0 and u1 on web1, u2 on web2
    cmd = "echo started; sleep 60"
    a, b = Bg(env, u0, cmd), Bg(env, u0, cmd)
    c, d = Bg(env, u1, cmd), Bg(env, u2, cmd)
    try:
        rows = wait_sessions(env, 4)
        check(len(rows) == 4 and sorted(r["user"] for r in rows) ==
              sorted([u0.name, u0.name, u1.name, u2.name]) and
              all(r["proto"] == "ssh" for r in rows),
              "sessions lists the 4 open ssh sessions", rows)
        check({r["user"]: r["backend"] for r in rows}.get(u2.name) == "web2",
              "sessions shows the backend", rows)
        r = ctl(env, "kick", "user=" + u0.name, "message=account maintenance, back soon")
        check(r.rc == 0 and r.out.count(u0.name) == 2, "kick user=U: exit 0, U's 2 sessions", r)
        ra, rb = a.finish(10), b.finish(10)
        check(ra[0] not in (None, 0) and rb[0] not in (None, 0),
              "both kicked ssh clients exit non-zero", (ra, rb))
        check("account maintenance, back soon" in ra[2] and "account maintenance, back soon"
              in rb[2], "each kicked client prints the message", (ra[2], rb[2]))
        check(c.running() and d.running(), "the other users' sessions keep running")
        r = ctl(env, "kick", "backend=web2", "message=web2 maintenance")
        rd = d.finish(10)
        check(r.rc == 0 and u2.name in r.out and u1.name not in r.out and
              "web2 maintenance" in rd[2] and c.running(),
              "kick backend=web2 ends only the session on web2, which prints the message",
              (r, rd))
        r = ctl(env, "kick", "user=nosuchuser")
        check(r.rc == 4, "kick with no match: exit 4", r)
    finally:
        for p in (a, b, c, d):
            p.stop()


# ---- 2 reload -----------------------------------------------------------------------------------------
def t_reload(env):
    u0 = env.users[0]
    s = Bg(env, u0, "echo -n x; sleep 2; head -c %d /dev/zero" % (8 * MiB))
    good = open(env.config).read()
    try:
        wait_sessions(env, 1, user=u0.name)
        with open(env.config, "a") as f:
            f.write("ssh = { no closing brace\n")
        r = ctl(env, "reload")
        check(r.rc == 1 and env.config in r.err, "reload of a broken config: exit 1 with the "
              "file and line", r)
        with open(env.config, "w") as f:
            f.write(good)
        r = ctl(env, "reload")
        check(r.rc == 0 and "reloaded" in r.out + r.err, "a good reload: exit 0", r)
        rc, out, err = s.finish(30)
        check(rc == 0 and out == b"x" + b"\0" * (8 * MiB), "the session running across both reloads "
              "delivers its 8 MiB and exits 0", (rc, len(out), err))
        r = env.ssh(u0, "echo again", key=True)
        check(r.rc == 0 and r.out.strip() == "again", "new logins work after the reloads", r)
    finally:
        with open(env.config, "w") as f:
            f.write(good)
        s.stop()


# ---- 3 drain with a session in flight ----------------------------------------------------------------------
def t_drain(env):
    u0 = env.users[0]
    data = os.urandom(16 * MiB)
    path = env.backend_path("web1", u0, "drain.bin")
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o644)
    s = Bg(env, u0, "echo -n x; sleep 3; cat drain.bin")
    mark = env.log_offset()
    try:
        wait_sessions(env, 1, user=u0.name)
        dt, drain = proxyctl_background(env.ctl_path, "drain", "timeout=60")
        time.sleep(0.5)
        check(connect_refused(env.port), "while draining a new connection is refused")
        check(s.running(), "the session is still running when the drain begins")
        rc, out, err = s.finish(60)
        check(rc == 0 and hashlib.sha256(out).hexdigest() ==
              hashlib.sha256(b"x" + data).hexdigest(),
              "the session's 16 MiB arrive whole (sha256) and ssh exits 0",
              "rc=%s %d bytes %s" % (rc, len(out), err))
        dt.join(30)
        prc = env.proxy.wait(10)
        r = drain.get("r")
        check(prc == 0 and r is not None and r.rc == 0 and "drained" in r.out + r.err,
              "proxyctl drain answers after the session ended; the daemon exits 0",
              "rc=%s %r" % (prc, r))
        done = env.events("drain_done", after=mark)
        check(len(done) == 1 and done[0].get("kicked") == "0", "drain_done: nothing kicked", done)
    finally:
        s.stop()
        if not env.proxy_alive():
            env.start_proxy()


# ---- 4 drain deadline (SIGTERM) ---------------------------------------------------------------------------
def t_sigterm(env):
    u0 = env.users[0]
    s = Bg(env, u0, "echo started; sleep 60")
    mark = env.log_offset()
    try:
        wait_sessions(env, 1, user=u0.name)
        t0 = time.monotonic()
        env.proxy.signal(signal.SIGTERM)
        time.sleep(1)
        check(s.running(), "SIGTERM: the session is not cut at once (drain)")
        rc, _, err = s.finish(20)
        prc = env.proxy.wait(20)
        took = time.monotonic() - t0
        check(rc not in (None, 0) and "restarting for maintenance" in err,
              "at the 5 s deadline the client is disconnected with the drain message",
              (rc, err))
        check(prc == 0 and 4.5 < took < 5 + 15, "the daemon exits 0 on time (%.1fs)" % took,
              "rc=%s" % prc)
        check(len(env.events("drain_deadline", after=mark, kicked="1")) == 1,
              "drain_deadline kicked=1 is logged")
    finally:
        s.stop()
        if not env.proxy_alive():
            env.start_proxy()


TESTS = [
    ("1 sessions and kick", t_kick),
    ("2 reload", t_reload),
    ("3 drain", t_drain),
    ("4 sigterm deadline", t_sigterm),
]


def main(argv):
    missing = proxyctl_missing()
    if missing:
        check(False, missing)
        return check.finish()
    return SshProxyEnv.run_suite(check, "test_ops_ssh", TESTS, argv, {"nusers": 3},
                                 setup=SshProxyEnv.spread_users)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
