#!/usr/bin/python3
"""e2e.sshproxy: the SSH reverse proxy against real OpenSSH clients and servers.

Private PostgreSQL with the default schema, backends web1 and web2 (OpenSSH), the pgsql hook,
build/sshproxy/sshproxy, real `ssh`, `scp`, `sftp`, `rsync`, `git`, `ssh-agent` clients
(fixture: tests/harness/sshproxy_env.py). Sections, each a list of checks that can fail:

   1 routing: password and key logins land on the route's backend; a route moved in
     PostgreSQL is followed by the next login without a proxy restart
   2 refusals: wrong password, unknown user, unlisted key, disabled user -> "Permission
     denied" (exit 255), wrong password and unknown user indistinguishable to the client
   3 maintenance backend -> the route's message on the client's screen, exit != 0
   4 dead or silent backend -> "temporarily unavailable" within seconds, never a hang
   5 host key pin mismatch -> refused, logged "host key mismatch", no password sent
   6 exec: exit codes, killed by a signal (as direct OpenSSH), stdout/stderr apart, stdin,
     EOF, env
   7 pty (ssh -tt through a real pty): size, resize (TIOCSWINSZ + SIGWINCH), ^C, exit status
   8 scp (SFTP and -O), sftp, rsync: 100 MiB each way, sha256 equal
   9 git push + clone to a bare repository on the backend
  10 ControlMaster with 3 parallel channels; the exit status of a command that closed its
     output before exiting reaches the mux client
  11 -L, -R forwarding and -A agent forwarding
  12 session_start / session_end log lines
  13 PostgreSQL down: cached routes keep working, others get "temporarily unavailable"
  14 SIGTERM: the proxy exits 0 (a drain; nothing is left open)

Run by ctest (label e2e) or directly as root:
    PYTHONPATH=tests/harness /usr/bin/python3 tests/e2e/test_sshproxy.py [section numbers...]
DP_SSHPROXY_SELFTEST=web1 runs the client side against web1's sshd (see sshproxy_env.py).
"""

import fcntl
import hashlib
import os
import pty
import re
import select
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import termios
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))
import dpenv  # noqa: E402
from checks import Checks  # noqa: E402
from daemon import run_check  # noqa: E402
from pg import sql_literal  # noqa: E402
from proxy_env import kill_group, run_cmd  # noqa: E402
from sshproxy_env import DEFAULT_SSH_CONF, SSHPROXY, SshProxyEnv  # noqa: E402
from users import make_keypair  # noqa: E402

check = Checks()
MiB = 1 << 20
BIG = 100 * MiB           # scp/sftp/rsync file size
UNAVAILABLE = "temporarily unavailable"


def sha(data):
    return hashlib.sha256(data).hexdigest()


def note(msg, *args):
    dpenv.log(msg, *args)


def ok_out(r, want):
    return r.rc == 0 and r.out.strip() == want


def normalize(text, user=None):
    """Client output with the per-run parts (user name, ports) replaced."""
    if user:
        text = text.replace(user, "USER")
    return re.sub(r"port \d+", "port N", text).strip()


# ---- 1 routing ------------------------------------------------------------------------------
def t_routing(env):
    u0, u1, u2 = env.users[:3]
    if not env.selftest:
        rc, out = run_check(SSHPROXY, env.config)
        check(rc == 0, "sshproxy -t accepts the test configuration", out)
        r = run_cmd(["ssh-keyscan", "-T", "5", "-t", "ed25519,ecdsa,rsa", "-p", str(env.port),
                     "127.0.0.1"], timeout=20)
        seen = {}
        for line in r.out.splitlines():
            parts = line.split()
            if len(parts) >= 3 and not line.startswith("#"):
                seen[parts[1]] = parts[2]
        for typ, blob in sorted(env.host_pubs.items()):
            if typ.startswith("ecdsa-"):
                # loaded (ssh.host_keys) but not offered: ssh.hostkey_algorithms has no
                # ecdsa by default (ssh-audit fails the NIST curves)
                check(typ not in seen, "proxy does not offer its %s host key by default" % typ,
                      "ssh-keyscan saw %s" % sorted(seen))
                continue
            check(seen.get(typ) == blob, "proxy presents its own %s host key" % typ,
                  "ssh-keyscan saw %s; %s" % (sorted(seen), r))

    r = env.ssh(u0, "echo $DYNPROXY_BACKEND", password=True)
    check(ok_out(r, "web1"), "password login prints DYNPROXY_BACKEND=web1", r)
    for method in ("password", "keyboard-interactive"):
        argv, e = env.ssh_argv(u0, "echo $DYNPROXY_BACKEND", password=True)
        argv = ["PreferredAuthentications=" + method
                if a == "PreferredAuthentications=password,keyboard-interactive" else a
                for a in argv]
        r = run_cmd(argv, env=e, timeout=60)
        check(ok_out(r, "web1"), "%s-only client logs in on web1" % method, r)
    r = env.ssh(u0, "echo $DYNPROXY_BACKEND; cat BACKEND; id -un", key=True)
    check(r.rc == 0 and r.out.split() == ["web1", "web1", u0.name],
          "key login lands on web1 as the same user (proxy key on the backend)", r)
    r = env.ssh(u2, "echo $DYNPROXY_BACKEND", key=True)
    check(ok_out(r, "web2"), "a user routed to web2 lands on web2", r)

    pid = env.proxy_pid
    r = env.ssh(u1, "echo $DYNPROXY_BACKEND", key=True)   # caches web1 in the proxy
    check(ok_out(r, "web1"), "mover logs in on web1 before the move", r)
    env.move(u1, "web2")
    t0 = time.monotonic()
    seen = []
    while True:   # NOTIFY should make the first try land; the cache TTL bounds it anyway
        r = env.ssh(u1, "echo $DYNPROXY_BACKEND", key=True)
        seen.append(r.out.strip() or "rc=%s" % r.rc)
        if r.out.strip() == "web2" or time.monotonic() - t0 > 20.0:
            break
        time.sleep(0.2)
    check(ok_out(r, "web2") and env.proxy_pid == pid,
          "after dynproxy.move_user the next login lands on web2, no proxy restart",
          "logins saw %s; last: %s" % (seen, r))
    if len(seen) > 1:
        note("move followed only after %d logins (%.1fs): NOTIFY not used?", len(seen),
             time.monotonic() - t0)
    r = env.ssh(u1, "echo $DYNPROXY_BACKEND; cat BACKEND", password=True)
    check(r.rc == 0 and r.out.split() == ["web2", "web2"],
          "moved user's password login lands on web2 with web2's home", r)


# ---- 2 refusals -----------------------------------------------------------------------------
def t_refusals(env):
    u0, u1 = env.users[0], env.users[1]
    unknown = "dpt_nx" + os.urandom(3).hex()
    off = env.log_offset()
    with ThreadPoolExecutor(4) as pool:
        f_wrong = pool.submit(env.ssh, u0, "true", password=u0.password + "x", loglevel="INFO")
        f_unknown = pool.submit(env.ssh, unknown, "true", password=u0.password, loglevel="INFO")
        f_key = pool.submit(env.ssh, u0, "true", key=env.unlisted_key, loglevel="INFO")
        f_keyother = pool.submit(env.ssh, u0, "true", key=u1.key, loglevel="INFO")
        wrong, unk, key, keyother = (f.result() for f in (f_wrong, f_unknown, f_key, f_keyother))
    for what, r in (("wrong password", wrong), ("unknown user", unk), ("unlisted key", key),
                    ("another user's key", keyother)):
        check(r.rc == 255 and "Permission denied" in r.err,
              "%s -> ssh exit 255, Permission denied" % what, r)
    a, b = normalize(wrong.err, u0.name), normalize(unk.err, unknown)
    check(a == b and wrong.rc == unk.rc,
          "wrong password and unknown user look the same to the client",
          "wrong password: %r / unknown user: %r" % (a, b))
    lo, hi = sorted((wrong.secs, unk.secs))
    check(hi <= 2 * lo + 1.0,
          "wrong password and unknown user take about as long (%.1fs vs %.1fs)"
          % (wrong.secs, unk.secs))
    if not env.selftest:
        for user, why in ((u0.name, "wrong_password"), (unknown, "unknown_user"),
                          (u0.name, "key_not_listed")):
            ok = env.wait_log(lambda t, user=user, why=why: bool(
                [e for e in env.events("auth_fail", after=off, user=user)
                 if e.get("reason") == why]), after=off, timeout=30)
            check(ok, "event=auth_fail user=%s reason=%s logged" % (user, why),
                  "\n".join(e["_line"] for e in env.events("auth_fail", after=off))
                  or "no auth_fail lines")

    env.set_enabled(u1, False)
    try:
        r = env.ssh(u1, "true", password=True, loglevel="INFO")
        check(r.rc == 255 and normalize(r.err, u1.name) == b,
              "a disabled user gets the same Permission denied as an unknown one", r)
    finally:
        env.set_enabled(u1, True)


# ---- 3 maintenance --------------------------------------------------------------------------
def t_maintenance(env):
    u2 = env.users[2]
    msg = "dp-maint-%s: web2 is being upgraded, back at 14:00" % os.urandom(3).hex()
    env.set_maintenance("web2", msg)
    try:
        for how in ("key", "password"):
            kw = {"key": True} if how == "key" else {"password": True}
            r = env.ssh(u2, "echo $DYNPROXY_BACKEND", loglevel="INFO", timeout=30, **kw)
            check(r.rc not in (0, None) and msg in r.err and "web2" not in r.out,
                  "maintenance backend (%s login): the message is shown, exit != 0" % how, r)
    finally:
        env.set_maintenance("web2", None)
    r = env.ssh(u2, "echo $DYNPROXY_BACKEND", key=True)
    check(ok_out(r, "web2"), "maintenance off: the user logs in on web2 again", r)


# ---- 4 dead backend -------------------------------------------------------------------------
def t_dead_backend(env):
    u2 = env.users[2]
    be = env.backends["web2"]
    be.stop()
    silent = None
    try:
        for how in ("key", "password"):
            kw = {"key": True} if how == "key" else {"password": True}
            r = env.ssh(u2, "true", loglevel="INFO", timeout=30, **kw)
            check(r.rc not in (0, None) and UNAVAILABLE in r.err.lower() and r.secs < 25,
                  "stopped backend (%s login): 'temporarily unavailable' in < 25 s (the client gives up at 30)" % how, r)
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)     # accepts (kernel backlog) but never says a word
        env.set_backend_port("web2", silent.getsockname()[1])
        env.ssh_conf["backend_handshake_timeout_ms"] = 2000
        env.restart_proxy()
        off = env.log_offset()
        r = env.ssh(u2, "true", key=True, loglevel="INFO", timeout=30)
        check(r.rc not in (0, None) and UNAVAILABLE in r.err.lower() and r.secs < 25,
              "silent backend (no SSH banner), backend_handshake_timeout_ms=2000: 'temporarily "
              "unavailable' in < 25 s (the client gives up at 30)", r)
        if not env.selftest:
            check(env.wait_log("ssh handshake timed out after 2000 ms", after=off),
                  "the log says why: 'ssh handshake timed out after 2000 ms'",
                  dpenv.tail(env.logfile, 6))
    finally:
        if silent is not None:
            silent.close()
            env.set_backend_port("web2", None)
        env.ssh_conf["backend_handshake_timeout_ms"] = DEFAULT_SSH_CONF[
            "backend_handshake_timeout_ms"]
        env.restart_proxy()
        be.start()
    r = env.ssh(u2, "echo $DYNPROXY_BACKEND", key=True)
    check(ok_out(r, "web2"), "backend back up: the user logs in on web2 again", r)


# ---- 5 host key pin -------------------------------------------------------------------------
def t_hostkey(env):
    u2 = env.users[2]
    be = env.backends["web2"]
    off = env.log_offset()
    sshd_off = len(open(be.sshd_log, errors="replace").read())
    env.set_pin("web2", "random")
    try:
        r = env.ssh(u2, "echo $DYNPROXY_BACKEND", key=True, loglevel="INFO", timeout=30)
        check(r.rc not in (0, None) and "web2" not in r.out and r.secs < 25,
              "pin mismatch (key login): refused", r)
        r = env.ssh(u2, "echo $DYNPROXY_BACKEND", password=True, loglevel="INFO", timeout=30)
        check(r.rc not in (0, None) and "web2" not in r.out and r.secs < 25,
              "pin mismatch (password login): refused", r)
        if not env.selftest:
            check(env.wait_log("host key mismatch", after=off, timeout=30),
                  "proxy log says 'host key mismatch'", dpenv.tail(env.logfile, 10))
        time.sleep(0.5)
        sshd = open(be.sshd_log, errors="replace").read()[sshd_off:]
        auth = [ln for ln in sshd.splitlines()
                if u2.name in ln and re.search(r"(Accepted|Failed) (password|publickey)", ln)]
        check(not auth, "no authentication reaches a backend whose pin does not match",
              "\n".join(auth))
    finally:
        env.set_pin("web2", None)
    r = env.ssh(u2, "echo $DYNPROXY_BACKEND", key=True)
    check(ok_out(r, "web2"), "pin restored: the user logs in on web2 again", r)


# ---- 6 exec ---------------------------------------------------------------------------------
def t_exec(env):
    u = env.users[0]
    r = env.ssh(u, "exit 0", key=True)
    check(r.rc == 0, "exec 'exit 0' -> 0", r)
    r = env.ssh(u, "exit 7", key=True)
    check(r.rc == 7, "exec 'exit 7' -> 7", r)
    r = env.ssh(u, "exit 7", password=True)
    check(r.rc == 7, "exec 'exit 7' with a password login -> 7", r)

    p = env.ssh(u, "echo before; kill -9 $$; echo after", key=True)
    d = env.direct("web1", u, "echo before; kill -9 $$; echo after")
    check(p.rc == 255 and p.out == "before\n", "exec 'kill -9 $$' -> ssh exits 255", p)
    check(p.rc == d.rc and normalize(p.err) == normalize(d.err) and p.out == d.out,
          "killed remote command: same exit status and output as direct OpenSSH",
          "proxy: %s / direct: %s" % (p, d))
    for sig in ("TERM", "HUP"):
        p = env.ssh(u, "kill -%s $$" % sig, key=True)
        d = env.direct("web1", u, "kill -%s $$" % sig)
        check(p.rc == d.rc and normalize(p.err) == normalize(d.err),
              "remote killed by SIG%s: same outcome as direct OpenSSH" % sig,
              "proxy: %s / direct: %s" % (p, d))

    r = env.ssh(u, "echo out; echo err >&2", key=True)
    check(r.rc == 0 and r.out == "out\n" and r.err == "err\n",
          "stdout and stderr arrive apart", r)
    r = env.ssh(u, "for i in $(seq 1 3000); do echo o$i; echo e$i >&2; done", key=True)
    outs, errs = r.out.split(), r.err.split()
    check(r.rc == 0 and outs == ["o%d" % i for i in range(1, 3001)]
          and errs == ["e%d" % i for i in range(1, 3001)],
          "3000 interleaved stdout/stderr lines each arrive complete, in order, apart",
          "%d stdout lines, %d stderr lines; %s" % (len(outs), len(errs), r))

    data = os.urandom(8 * MiB)
    r = env.ssh(u, "cat", key=True, input=data, binary=True)
    check(r.rc == 0 and len(r.out) == len(data) and r.out == data,
          "stdin passthrough: 8 MiB through 'cat' come back identical",
          "got %d bytes, sha %s want %s; %s" % (len(r.out), sha(r.out), sha(data), r))
    r = env.ssh(u, "sha256sum; echo $?; exit 3", key=True, input=data, binary=True)
    words = r.out.split()
    check(r.rc == 3 and words[:1] == [sha(data).encode()] and words[-1:] == [b"0"],
          "stdin EOF reaches the backend (sha256sum of 8 MiB finishes), then exit 3", r)
    r = env.ssh(u, "head -c 20000000 /dev/urandom > big.out; sha256sum < big.out >&2; "
                "cat big.out; rm -f big.out", key=True, binary=True)
    check(r.rc == 0 and r.err.split()[:1] == [sha(r.out).encode()] and len(r.out) == 20000000,
          "20 MB of stdout arrive intact (sha256 equals the backend's)",
          "got %d bytes; %s" % (len(r.out), r))

    r = env.ssh(u, "echo $LANG", key=True, extra=["-o", "SendEnv=LANG"],
                env={"LANG": "C.UTF-8"})
    check(ok_out(r, "C.UTF-8"), "env: SendEnv=LANG with LANG=C.UTF-8 -> echo $LANG", r)
    r = env.ssh(u, "echo $DP_TEST", key=True, extra=["-o", "SetEnv=DP_TEST=dp-hello-42"])
    check(ok_out(r, "dp-hello-42"), "env: SetEnv=DP_TEST passes (backend AcceptEnv DP_*)", r)
    r = env.ssh(u, "echo \"[$DP_NOPE]\"", key=True, extra=["-o", "SetEnv=DP_NOPE=x"])
    check(ok_out(r, "[x]"), "env: a second SetEnv variable passes too", r)
    r = env.ssh(u, "echo \"[$XX_REFUSED]\"", key=True, extra=["-o", "SetEnv=XX_REFUSED=x"])
    check(ok_out(r, "[]"), "env: a variable the backend does not accept is not set", r)


# ---- 7 pty ----------------------------------------------------------------------------------
class PtyClient:
    """`ssh -tt` on the slave side of a real pty, driven through the master."""

    def __init__(self, argv, env, rows=24, cols=80):
        self.buf = b""
        self.pos = 0
        pid, fd = pty.fork()
        if pid == 0:   # child: set the size before ssh reads it, then become ssh
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.status = None

    def _read(self, timeout):
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:
            data = b""
        if not data:
            return False
        self.buf += data
        return True

    def send(self, text):
        os.write(self.fd, text.encode())

    def expect(self, regex, timeout=10.0):
        """Match regex (bytes) in output not consumed yet; returns the match or None."""
        rx = re.compile(regex)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.buf, self.pos)
            if m:
                self.pos = m.end()
                return m
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.2)):
                m = rx.search(self.buf, self.pos)
                if m:
                    self.pos = m.end()
                return m

    def resize(self, rows, cols):
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        try:
            os.kill(self.pid, signal.SIGWINCH)
        except ProcessLookupError:
            pass

    def wait(self, timeout=10.0):
        """Exit status of ssh (None on timeout); drains the pty meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, st = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(st)
                return self.status
            self._read(0.1)
        return None

    def tail(self, n=600):
        return self.buf[-n:].decode("utf-8", "replace")

    def close(self):
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
        os.close(self.fd)


def t_pty(env):
    u = env.users[0]
    argv, e = env.ssh_argv(u, None, key=True, extra=["-tt"])
    e["TERM"] = "xterm"
    c = PtyClient(argv, e, 24, 80)
    try:
        c.send("echo READY$((6*7))\n")
        m = c.expect(rb"READY42", 20)
        if not check(m is not None, "ssh -tt: an interactive shell answers through the pty",
                     c.tail()):
            return
        c.send('echo "TTY[$(tty)] TERM[$TERM] SZ[$(stty size)]"\n')
        m = c.expect(rb"TTY\[([^\]]*)\] TERM\[([^\]]*)\] SZ\[(\d+) (\d+)\]", 10)
        check(m is not None and m.group(1).startswith(b"/dev/pts/") and m.group(2) == b"xterm",
              "the remote shell has a pty and TERM=xterm", m.group(0) if m else c.tail())
        check(m is not None and m.group(3, 4) == (b"24", b"80"),
              "initial window size 24x80 reaches the backend", m.group(0) if m else c.tail())
        size = None
        for _ in range(4):
            c.resize(40, 132)
            time.sleep(0.4)
            c.send('echo "SZ[$(stty size)]"\n')
            m = c.expect(rb"SZ\[(\d+) (\d+)\]", 10)
            size = m.group(1, 2) if m else None
            if size == (b"40", b"132"):
                break
        check(size == (b"40", b"132"), "after a resize to 40x132 'stty size' says 40 132",
              "last seen %r; %s" % (size, c.tail()))
        c.send("sleep 30; echo NOT$((1+1))INTERRUPTED\n")
        time.sleep(0.7)
        c.send("\x03")
        time.sleep(0.3)
        c.send("echo AFTER$((3+4))\n")
        m = c.expect(rb"AFTER7", 10)
        check(m is not None and b"NOT2INTERRUPTED" not in c.buf,
              "^C interrupts the remote command", c.tail())
        c.send("exit 3\n")
        st = c.wait(15)
        check(st == 3, "'exit 3' in the pty shell -> ssh exits 3", "status %s; %s"
              % (st, c.tail()))
    finally:
        c.close()


def t_pty_modes(env):
    """The client's terminal modes reach the backend's pty; ~B (break) reaches its sshd."""
    u = env.add_user(debug_log=True)
    argv, e = env.ssh_argv(u, None, key=True, extra=["-tt"])
    e["TERM"] = "xterm"
    # The client's own terminal gets erase ^H and iutf8: a fresh Linux pty on the backend has
    # neither (erase ^?, -iutf8), so seeing them there means the modes were forwarded.
    wrapped = ["/bin/sh", "-c", "stty erase '^H' iutf8 && exec \"$@\"", "sh"] + argv
    c = PtyClient(wrapped, e, 24, 80)
    try:
        c.send("echo READY$((6*7))\n")
        if not check(c.expect(rb"READY42", 20) is not None,
                     "ssh -tt from a terminal with erase ^H and iutf8: the shell answers",
                     c.tail()):
            return
        c.send("echo \"ERASE[$(stty -a | grep -o '; erase = [^;]*')] "
               "UTF8[$(stty -a | grep -o -- '-*iutf8')]\"\n")
        m = c.expect(rb"ERASE\[; erase = ([^\]]*)\] UTF8\[(-*iutf8)\]", 10)
        check(m is not None and m.group(1) == b"^H",
              "the client's erase character (^H) is the backend pty's", m.group(0) if m
              else c.tail())
        check(m is not None and m.group(2) == b"iutf8",
              "the client's iutf8 is set on the backend pty", m.group(0) if m else c.tail())
        # Break: OpenSSH's ~B escape (at the start of a line). A Linux pty ignores a break
        # (no break_ctl), so the proof is sshd's own log of the request on that session.
        log = env.backends["web1"].sshd_log
        before = dpenv.read_text(log)
        c.send("\r~B")
        rx = re.compile(r"session_input_channel_req: session \d+ req break")
        seen = dpenv.wait_until(
            lambda: len(rx.findall(dpenv.read_text(log))) > len(rx.findall(before)), 10)
        check(seen, "~B: the backend's sshd receives a 'break' request on the session",
              dpenv.tail(log, 5))
        c.send("echo AFTER$((3+4))\n")
        check(c.expect(rb"AFTER7", 10) is not None, "the session goes on after the break",
              c.tail())
        c.send("exit\n")
        c.wait(15)
    finally:
        c.close()


# ---- 8 file transfers -----------------------------------------------------------------------
def t_transfers(env):
    u = env.users[0]
    work = os.path.join(env.tmp, "xfer")
    os.makedirs(work, exist_ok=True)
    src = os.path.join(work, "src.bin")
    with open(src, "wb") as f:
        for _ in range(BIG // MiB):
            f.write(os.urandom(MiB))
    want = dpenv.sha256_file(src)
    env.put_backend_file("web1", u, "src.bin", src)
    dest = "%s@127.0.0.1" % u.name
    scp = ["scp", "-q"] + env.scp_argv(u)
    rsync_e = env.ssh_command_string(u, port=env.port)

    def up(label, argv, remote_name, timeout=180, **kw):
        r = run_cmd(argv, timeout=timeout, **kw)
        path = env.backend_path("web1", u, remote_name)
        got = dpenv.sha256_file(path) if os.path.exists(path) else "missing"
        check(r.rc == 0 and got == want, "%s upload of 100 MiB: sha256 equal on the backend"
              % label, "sha %s want %s; %s" % (got, want, r))
        if r.rc == 0:
            note("%s up: %.1f MiB/s", label, BIG / MiB / max(r.secs, 0.001))
        try:
            os.unlink(path)
        except OSError:
            pass

    def down(label, argv, local, timeout=180, **kw):
        r = run_cmd(argv, timeout=timeout, **kw)
        got = dpenv.sha256_file(local) if os.path.exists(local) else "missing"
        check(r.rc == 0 and got == want, "%s download of 100 MiB: sha256 equal locally"
              % label, "sha %s want %s; %s" % (got, want, r))
        if r.rc == 0:
            note("%s down: %.1f MiB/s", label, BIG / MiB / max(r.secs, 0.001))
        try:
            os.unlink(local)
        except OSError:
            pass

    dl = os.path.join(work, "dl.bin")
    up("scp (SFTP mode)", scp + [src, dest + ":up_scp.bin"], "up_scp.bin")
    down("scp (SFTP mode)", scp + [dest + ":src.bin", dl], dl)
    up("scp -O", scp + ["-O", src, dest + ":up_scpO.bin"], "up_scpO.bin")
    down("scp -O", scp + ["-O", dest + ":src.bin", dl], dl)

    batch = os.path.join(work, "sftp.batch")
    with open(batch, "w") as f:
        f.write("put %s up_sftp.bin\n" % src)
    up("sftp put", ["sftp", "-q", "-b", batch] + env.scp_argv(u) + [dest], "up_sftp.bin")
    with open(batch, "w") as f:
        f.write("get src.bin %s\n" % dl)
    down("sftp get", ["sftp", "-q", "-b", batch] + env.scp_argv(u) + [dest], dl)

    up("rsync", ["rsync", "-e", rsync_e, src, dest + ":up_rsync.bin"], "up_rsync.bin")
    down("rsync", ["rsync", "-e", rsync_e, dest + ":src.bin", dl], dl)
    os.unlink(src)
    try:
        os.unlink(env.backend_path("web1", u, "src.bin"))
    except OSError:
        pass


# ---- 9 git ----------------------------------------------------------------------------------
def t_git(env):
    u = env.users[0]
    work = os.path.join(env.tmp, "git")
    home = os.path.join(work, "home")
    os.makedirs(home, exist_ok=True)
    genv = dict(os.environ, HOME=home, GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0",
                GIT_SSH_COMMAND=env.ssh_command_string(u),
                GIT_AUTHOR_NAME="dp test", GIT_AUTHOR_EMAIL="dp@test",
                GIT_COMMITTER_NAME="dp test", GIT_COMMITTER_EMAIL="dp@test")
    remote = "/srv/dynproxy/home/%s/repo.git" % u.name
    r = env.direct("web1", u, "rm -rf repo.git && git init -q --bare -b main repo.git && echo made")
    if not check(ok_out(r, "made"), "bare repository created on web1 (direct ssh)", r):
        return
    url = "ssh://%s@127.0.0.1:%d%s" % (u.name, env.port, remote)

    def git(*args, cwd=None, timeout=60):
        return run_cmd(["git"] + list(args), env=genv, cwd=cwd, timeout=timeout)

    src = os.path.join(work, "src")
    os.makedirs(src)
    payload = os.urandom(2 * MiB)
    with open(os.path.join(src, "blob.bin"), "wb") as f:
        f.write(payload)
    with open(os.path.join(src, "README"), "w") as f:
        f.write("pushed through sshproxy\n")
    for args in (("init", "-q", "-b", "main"), ("add", "."), ("commit", "-q", "-m", "first")):
        r = git(*args, cwd=src)
        if not check(r.rc == 0, "local git %s" % args[0], r):
            return
    head = git("rev-parse", "HEAD", cwd=src).out.strip()
    r = git("push", "-q", url, "HEAD:refs/heads/main", cwd=src, timeout=90)
    check(r.rc == 0, "git push through the proxy", r)
    d = env.direct("web1", u, "git --git-dir=repo.git rev-parse main")
    check(r.rc == 0 and d.out.strip() == head,
          "the bare repository on web1 has the pushed commit", "want %s; %s" % (head, d))

    clone = os.path.join(work, "clone")
    r = git("clone", "-q", url, clone, timeout=90)
    ok = r.rc == 0 and os.path.exists(os.path.join(clone, "blob.bin"))
    got = open(os.path.join(clone, "blob.bin"), "rb").read() if ok else b""
    check(ok and got == payload and git("rev-parse", "HEAD", cwd=clone).out.strip() == head,
          "git clone through the proxy gets the same commit and content", r)
    if ok:
        with open(os.path.join(clone, "second"), "w") as f:
            f.write("second commit\n")
        git("add", "second", cwd=clone)
        git("commit", "-q", "-m", "second", cwd=clone)
        head2 = git("rev-parse", "HEAD", cwd=clone).out.strip()
        r = git("push", "-q", "origin", "main", cwd=clone, timeout=90)
        d = env.direct("web1", u, "git --git-dir=repo.git rev-parse main")
        check(r.rc == 0 and d.out.strip() == head2,
              "a second push from the clone updates the bare repository", "%s / %s" % (r, d))


# ---- 16 known_hosts fallback ------------------------------------------------------------------
def t_known_hosts(env):
    """Routes without a pin: ssh.known_hosts decides; without an entry the login is refused."""
    web1 = env.backends["web1"]
    kh = os.path.join(env.tmp, "backend_known_hosts")
    with open(kh, "w") as f:
        f.write("# web1 only\n[127.0.0.1]:%d %s\n" % (web1.ssh_port, web1.ssh_hostkey_pub))
    env.ssh_conf["known_hosts"] = kh
    env.restart_proxy()
    env.pg.psql("UPDATE dynproxy.backends SET hostkey_sha256 = NULL")
    env.settle()
    try:
        r = env.ssh(env.users[0], "echo $DYNPROXY_BACKEND", key=True)
        check(ok_out(r, "web1"), "unpinned route, backend in ssh.known_hosts: login works", r)
        off = env.log_offset()
        r = env.ssh(env.users[2], "echo $DYNPROXY_BACKEND", key=True, timeout=30)
        check(r.rc not in (0, None) and "web2" not in r.out,
              "unpinned route, backend not in ssh.known_hosts: refused", r)
        check(env.wait_log("event=hostkey_unknown", after=off, timeout=30),
              "the refusal is logged as hostkey_unknown", dpenv.tail(env.logfile, 5))
    finally:
        for name in env.backends:
            env.set_pin(name, None, settle=False)
        env.settle()
        del env.ssh_conf["known_hosts"]
        env.restart_proxy()


# ---- 17 limits ----------------------------------------------------------------------------------
def silent_conn(port):
    """A TCP connection that sends nothing; returns the socket."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s


def closed_within(s, seconds):
    """Read until EOF; True if the peer closed within `seconds` (banner bytes are fine)."""
    s.settimeout(seconds)
    t0 = time.monotonic()
    try:
        while True:
            if not s.recv(4096):
                return True, time.monotonic() - t0
    except (socket.timeout, TimeoutError):
        return False, time.monotonic() - t0
    except OSError:
        return True, time.monotonic() - t0


def t_limits(env):
    saved = dict(env.ssh_conf)
    env.ssh_conf.update({"max_startups_per_ip": 2, "login_grace_ms": 1500,
                         "idle_timeout_s": 2, "max_auth_tries": 2})
    env.restart_proxy()
    try:
        a, b = silent_conn(env.port), silent_conn(env.port)
        time.sleep(0.3)
        c = silent_conn(env.port)
        closed, took = closed_within(c, 10.0)
        # at once: well before login_grace_ms (1.5 s) would have ended it anyway
        check(closed and took < 1.0, "max_startups_per_ip=2: a third unauthenticated "
              "connection from the same address is dropped at once", "%.2fs" % took)
        closed, took = closed_within(a, 10.0)
        check(closed and 1.0 <= took + 0.3 <= 1.5 + 5,
              "login_grace_ms=1500: a silent client is disconnected on time", "%.2fs" % took)
        b.close()
        c.close()
        r = env.ssh(env.users[0], "echo $DYNPROXY_BACKEND", key=True)
        check(ok_out(r, "web1"), "slots are released: a normal login works again", r)
        t0 = time.monotonic()
        r = env.ssh(env.users[0], "sleep 30; echo done", key=True, loglevel="INFO", timeout=60)
        took = time.monotonic() - t0
        check(r.rc != 0 and "done" not in r.out and took < 20,
              "idle_timeout_s=2: a silent session is closed with the reason",
              "%s (%.1fs)" % (r, took))
        # Two wrong passwords cost ~4 s of backend PAM delay: more than the short grace above.
        env.ssh_conf["login_grace_ms"] = 30000
        env.restart_proxy()
        argv, e = env.ssh_argv(env.users[0], "true", password="wrong", loglevel="INFO")
        argv = [a if a != "NumberOfPasswordPrompts=1" else "NumberOfPasswordPrompts=5"
                for a in argv]
        argv = [a if not a.startswith("PreferredAuthentications=") else
                "PreferredAuthentications=password" for a in argv]
        r = run_cmd(argv, env=e, timeout=60)
        check(r.rc == 255 and "Too many authentication failures" in r.err,
              "max_auth_tries=2: the second wrong password ends the connection with the reason",
              r)
        # SIGINT with a session open: the session ends at once with the reason, the proxy
        # exits 0 (SIGTERM drains instead: e2e.ops_ssh).
        off = env.log_offset()
        argv, e = env.ssh_argv(env.users[0], "echo running; sleep 30", key=True, loglevel="INFO")
        p = subprocess.Popen(argv, env=e, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
        try:
            # Stop only once the command runs (not merely once the login is done: a channel
            # still opening would be refused, which is a different, also correct, outcome).
            ready, _, _ = select.select([p.stdout], [], [], 15)
            started = bool(ready) and p.stdout.readline().strip() == b"running"
            started = started and env.wait_log("event=session_start", after=off, timeout=30)
            t0 = time.monotonic()
            env.proxy.signal(signal.SIGINT)
            rc = env.proxy.wait(20)
            took = time.monotonic() - t0
            out, err = p.communicate(timeout=10)
            # at once: far from the 30 s the session would run (a drain would wait for it)
            check(started and rc == 0 and took < 15,
                  "SIGINT with a session open: sshproxy exits 0 at once", "rc=%s %.1fs" % (rc, took))
            check(b"proxy shutting down" in err, "the client is told 'proxy shutting down'",
                  err[-300:])
        finally:
            kill_group(p)
    finally:
        env.ssh_conf.clear()
        env.ssh_conf.update(saved)
        env.restart_proxy()


# ---- 18 authorized_keys options --------------------------------------------------------------
def t_key_options(env):
    """A key listed with options (from=, command=, ...) is refused: the proxy does not enforce
    them, and ignoring a from= would let the key in from anywhere."""
    u = env.users[0]
    key = os.path.join(env.tmp, "restricted_ed25519")
    pub = make_keypair(key, "restricted").strip()
    env.pg.psql("INSERT INTO dynproxy.authorized_keys (username, key) VALUES (%s, %s)"
                % (sql_literal(u.name), sql_literal('from="192.0.2.1" ' + pub)))
    try:
        r = env.ssh(u, "echo $DYNPROXY_BACKEND", key=key, timeout=30)
        check(r.rc == 255 and "Permission denied" in r.err,
              "a key listed with a from= option is refused", r)
        r = env.ssh(u, "echo $DYNPROXY_BACKEND", key=True)
        check(ok_out(r, "web1"), "the user's plain key still works", r)
    finally:
        env.pg.psql("DELETE FROM dynproxy.authorized_keys WHERE key LIKE 'from=%'")


# ---- 15 PuTTY (plink, psftp) ------------------------------------------------------------------
def putty_hostkeys(env):
    """-hostkey arguments pinning every proxy host key by its SHA256 fingerprint."""
    args = []
    for path in env.host_keys:
        fp = dpenv.run(["ssh-keygen", "-l", "-f", path + ".pub"], timeout=10).stdout.split()[1]
        args += ["-hostkey", fp]
    return args


def t_putty(env):
    u = env.users[0]
    base = ["-batch", "-P", str(env.port)] + putty_hostkeys(env)
    r = run_cmd(["plink", "-ssh"] + base + ["-pw", u.password, "%s@127.0.0.1" % u.name,
                                            "echo $DYNPROXY_BACKEND; exit 5"], timeout=30)
    check(r.rc == 5 and r.out.strip() == "web1",
          "plink with a password reaches web1 and returns the exit status", r)
    ppk = os.path.join(env.tmp, "%s.ppk" % u.name)
    dpenv.run(["puttygen", u.key, "-O", "private", "-o", ppk], timeout=30)
    r = run_cmd(["plink", "-ssh"] + base + ["-i", ppk, "%s@127.0.0.1" % u.name,
                                            "echo $DYNPROXY_BACKEND"], timeout=30)
    check(r.rc == 0 and r.out.strip() == "web1", "plink with a key (ppk) reaches web1", r)
    src = os.path.join(env.tmp, "putty-src.bin")
    back = os.path.join(env.tmp, "putty-back.bin")
    with open(src, "wb") as f:
        f.write(os.urandom(10 * 1024 * 1024))
    script = os.path.join(env.tmp, "psftp.batch")
    with open(script, "w") as f:
        f.write("put %s putty.bin\nget putty.bin %s\nquit\n" % (src, back))
    r = run_cmd(["psftp"] + base + ["-pw", u.password, "-b", script, "%s@127.0.0.1" % u.name],
                timeout=60)
    same = os.path.exists(back) and dpenv.sha256_file(src) == dpenv.sha256_file(back)
    remote = env.backend_path("web1", u, "putty.bin")
    same_remote = os.path.exists(remote) and dpenv.sha256_file(remote) == dpenv.sha256_file(src)
    check(r.rc == 0 and same and same_remote,
          "psftp put + get of 10 MiB through the proxy, sha256 equal on both ends", r)


# ---- 10 ControlMaster -----------------------------------------------------------------------
def t_controlmaster(env):
    u = env.users[0]
    sock = os.path.join(env.tmp, "cm.sock")
    argv, e = env.ssh_argv(u, None, key=True, extra=["-M", "-S", sock, "-N",
                                                     "-o", "ControlPersist=no"])
    master = subprocess.Popen(argv, env=e, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)
    try:
        def mux(cmd, **kw):
            return env.ssh(u, cmd, key=True, extra=["-S", sock, "-o", "ControlMaster=no"], **kw)

        up = dpenv.wait_until(lambda: master.poll() is not None or (
            os.path.exists(sock) and mux("true", timeout=10).rc == 0), 20)
        if not check(up and master.poll() is None, "ControlMaster connection up",
                     "master exit %s" % master.poll()):
            return
        datas = [os.urandom(4 * MiB) for _ in range(3)]
        # each command says when it started and ended (backend clock): in parallel means
        # every one started before any ended, whatever the machine's speed
        with ThreadPoolExecutor(3) as pool:
            futs = [pool.submit(mux, "date +%s.%N; sleep 2; sha256sum; echo $DYNPROXY_BACKEND; "
                                "date +%s.%N", input=d, binary=True, timeout=60) for d in datas]
            res = [f.result() for f in futs]
        spans = []
        for i, (r, d) in enumerate(zip(res, datas)):
            words = r.out.split()
            check(r.rc == 0 and len(words) == 5 and words[1:4] == [sha(d).encode(), b"-", b"web1"],
                  "multiplexed channel %d: 4 MiB stdin checksum and backend right" % (i + 1), r)
            if len(words) == 5:
                spans.append((float(words[0]), float(words[4])))
        check(len(spans) == 3 and max(a for a, _ in spans) < min(b for _, b in spans),
              "the 3 channels ran in parallel (each started before any ended)", spans)
        r = mux("echo still-here")
        check(ok_out(r, "still-here"), "the master connection still serves a 4th channel", r)
        # The mux master sends CLOSE as soon as EOF went both ways; the exit status comes a
        # second later, when the command exits (sshd holds its CLOSE until then, so must we).
        r = mux("exec >&- 2>&-; sleep 1; exit 3", timeout=20)
        check(r.rc == 3, "a multiplexed command that closes its output 1 s before it exits "
              "still reports its status (3, not 255)", r)
        r = run_cmd(["ssh", "-S", sock, "-O", "exit", "%s@127.0.0.1" % u.name], timeout=10)
        try:
            master.wait(10)
        except subprocess.TimeoutExpired:
            pass
        check(master.poll() is not None, "ssh -O exit ends the master", r)
    finally:
        if master.poll() is None:
            kill_group(master)


# ---- 11 forwarding --------------------------------------------------------------------------
class _Echo(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(30)
        try:
            while True:
                data = self.request.recv(65536)
                if not data:
                    break
                self.request.sendall(data)
        except OSError:
            pass


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def echo_roundtrip(port, nbytes=2 * MiB, timeout=20):
    """Send nbytes to 127.0.0.1:port, half-close, read the echo; returns (ok, detail)."""
    data = os.urandom(nbytes)
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError as e:
        return False, "connect: %r" % e
    err = []

    def writer():
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            err.append(e)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    got = bytearray()
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except OSError as e:
        err.append(e)
    finally:
        s.close()
    t.join(5)
    ok = bytes(got) == data and not err
    return ok, "sent %d, got back %d bytes (sha equal: %s), errors %r" % (
        len(data), len(got), sha(bytes(got)) == sha(data), err)


def listening(port):
    """True when something listens on 127.0.0.1:port (from /proc/net/tcp, no connection)."""
    want = "0100007F:%04X" % port
    try:
        with open("/proc/net/tcp") as f:
            return any(ln.split()[1] == want and ln.split()[3] == "0A"
                       for ln in list(f)[1:])
    except OSError:
        return False


def forward_session(env, u, spec, ready_port, label):
    """Run `ssh -N <spec>` through the proxy, wait for ready_port, echo data through it."""
    argv, e = env.ssh_argv(u, None, key=True, extra=["-N", "-o", "ExitOnForwardFailure=yes"]
                           + spec)
    p = subprocess.Popen(argv, env=e, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        # Connect as soon as the port listens: the first forwarded channel may reach the proxy
        # in the same poll as the backend's reply to tcpip-forward, and must still pass.
        up = dpenv.wait_until(lambda: p.poll() is not None or listening(ready_port), 15) \
            and p.poll() is None
        if not check(up, "%s: forwarded port 127.0.0.1:%d listens" % (label, ready_port),
                     "ssh exit %s" % p.poll()):
            return
        ok, detail = echo_roundtrip(ready_port)
        check(ok, "%s: 2 MiB echoed through the forward, EOF both ways" % label, detail)
        ok, detail = echo_roundtrip(ready_port, 1000)
        check(ok, "%s: a second connection over the same session works" % label, detail)
    finally:
        kill_group(p)
        if p.poll() is not None and p.stderr:
            err = p.stderr.read().decode("utf-8", "replace").strip()
            if err:
                note("%s ssh stderr: %s", label, err[:400])


def t_forwarding(env):
    u = env.users[0]
    srv = EchoServer(("127.0.0.1", 0), _Echo)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    echo = srv.server_address[1]
    try:
        lport = dpenv.free_port()
        forward_session(env, u, ["-L", "127.0.0.1:%d:127.0.0.1:%d" % (lport, echo)], lport,
                        "-L local forwarding")
        rport = dpenv.free_port()
        forward_session(env, u, ["-R", "127.0.0.1:%d:127.0.0.1:%d" % (rport, echo)], rport,
                        "-R remote forwarding")
    finally:
        srv.shutdown()
        srv.server_close()

    agent_sock = os.path.join(env.tmp, "agent.sock")
    akey = os.path.join(env.keydir, "agent_ed25519")
    make_keypair(akey, "agent@dynproxy-test")
    fp = dpenv.run(["ssh-keygen", "-lf", akey + ".pub"], timeout=10).stdout.split()[1]
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", agent_sock], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        dpenv.wait_until(lambda: os.path.exists(agent_sock), 5)
        aenv = dict(os.environ, SSH_AUTH_SOCK=agent_sock)
        r = run_cmd(["ssh-add", "-q", akey], env=aenv, timeout=10)
        if not check(r.rc == 0, "private ssh-agent holds the test key", r):
            return
        label = "-A agent forwarding"
        # -A with SSH_AUTH_SOCK (OpenSSH 9.2 ignores ForwardAgent=<path> here), so the
        # harness's IdentityAgent=none must go; IdentitiesOnly keeps the agent out of auth
        argv, e = env.ssh_argv(u, "ssh-add -l", key=True, extra=["-A"])
        i = argv.index("IdentityAgent=none")
        del argv[i - 1:i + 1]
        e["SSH_AUTH_SOCK"] = agent_sock
        r = run_cmd(argv, env=e, timeout=30)
        check(r.rc == 0 and fp in r.out, "%s: 'ssh-add -l' on the backend lists %s"
              % (label, fp), r)
        env.put_backend_file("web1", u, "agent.pub", akey + ".pub")
        argv[-1] = ("echo signed-data | ssh-keygen -q -Y sign -n dp-test -f agent.pub "
                    "| head -1; rm -f agent.pub")
        r = run_cmd(argv, env=e, timeout=30)
        check(r.rc == 0 and r.out.strip() == "-----BEGIN SSH SIGNATURE-----",
              "%s: the backend signs with the client's agent (ssh-keygen -Y sign)" % label, r)
    finally:
        kill_group(agent)


# ---- 12 session log lines -------------------------------------------------------------------
def t_session_log(env):
    if env.selftest:
        return
    u = env.users[0]
    off = env.log_offset()
    r = env.ssh(u, "cat > /dev/null; sleep 1; head -c 1000000 /dev/zero", key=True,
                input=b"x" * 500000, binary=True)
    check(r.rc == 0 and len(r.out) == 1000000, "logged session: 500 kB up, 1 MB down", r)
    env.wait_log(lambda t: env.events("session_end", after=off, user=u.name), after=off,
                 timeout=5)
    ends = env.events("session_end", after=off, user=u.name)
    starts = env.events("session_start", after=off, user=u.name)
    if not check(len(ends) == 1, "one event=session_end line for the session",
                 env.log()[off:][-2000:] or "nothing logged"):
        return
    e = ends[0]
    line = e["_line"]

    def num(k):
        try:
            return int(e.get(k, ""))
        except ValueError:
            return -1

    check(len(starts) == 1 and starts[0].get("sid") == e.get("sid") and e.get("sid"),
          "event=session_start with the same sid", "\n".join(s["_line"] for s in starts))
    check(e.get("backend") == "web1", "session_end backend=web1", line)
    check(e.get("auth") == "publickey", "session_end auth=publickey", line)
    check(re.match(r"^127\.0\.0\.1:\d+$", e.get("client", "")) is not None,
          "session_end client=127.0.0.1:<port>", line)
    check(num("bytes_in") >= 500000, "session_end bytes_in >= 500000 (client to backend)", line)
    check(num("bytes_out") >= 1000000, "session_end bytes_out >= 1000000 (backend to client)",
          line)
    check(1000 <= num("duration_ms") < 30000, "session_end duration_ms >= 1000", line)
    check(bool(e.get("reason")), "session_end has a reason", line)

    off = env.log_offset()
    r = env.ssh(u, "true", password=True)
    env.wait_log(lambda t: env.events("session_end", after=off, user=u.name), after=off,
                 timeout=5)
    ends = env.events("session_end", after=off, user=u.name)
    check(r.rc == 0 and len(ends) == 1 and ends[0].get("auth") == "password",
          "a password session logs auth=password", "%s; %s" % (r, [x["_line"] for x in ends]))


# ---- 13 PostgreSQL down ---------------------------------------------------------------------
def t_db_down(env):
    u = env.users[0]
    for kw in ({"key": True}, {"password": True}):    # route and keys fresh in the cache
        r = env.ssh(u, "echo $DYNPROXY_BACKEND", **kw)
        check(ok_out(r, "web1"), "login before PostgreSQL stops (%s)" % list(kw)[0], r)
    env.pg.stop("fast")
    try:
        time.sleep(1.2)      # the route's TTL ends: what follows is served stale
        r = env.ssh(u, "echo $DYNPROXY_BACKEND", password=True, timeout=30)
        check(ok_out(r, "web1") and r.secs < 25,
              "PostgreSQL down: a cached route still logs in with a password (stale)", r)
        r = env.ssh(u, "echo $DYNPROXY_BACKEND", key=True, timeout=30)
        check(ok_out(r, "web1") and r.secs < 25,
              "PostgreSQL down: a user who was working logs in with a key too (docs/hooks.md "
              "stale-if-error: 'customers who were working keep working')", r)
        nobody = "dpt_nx" + os.urandom(3).hex()
        r = env.ssh(nobody, "true", password="whatever1", loglevel="INFO", timeout=30)
        check(r.rc not in (0, None) and UNAVAILABLE in r.err.lower() and r.secs < 25,
              "PostgreSQL down: an uncached user gets 'temporarily unavailable' in < 25 s (the client gives up at 30)", r)
    finally:
        env.pg.start()


TESTS = [
    ("1 routing", t_routing),
    ("2 refusals", t_refusals),
    ("3 maintenance", t_maintenance),
    ("4 dead backend", t_dead_backend),
    ("5 host key pin", t_hostkey),
    ("6 exec", t_exec),
    ("7 pty", t_pty),
    ("7a pty modes and break", t_pty_modes),
    ("8 transfers", t_transfers),
    ("9 git", t_git),
    ("10 ControlMaster", t_controlmaster),
    ("11 forwarding", t_forwarding),
    ("12 session log", t_session_log),
    ("13 PostgreSQL down", t_db_down),
    ("15 PuTTY", t_putty),
    ("16 known_hosts", t_known_hosts),
    ("17 limits", t_limits),
    ("18 key options", t_key_options),
]


def main(argv):
    return SshProxyEnv.run_suite(check, "test_sshproxy", TESTS, argv, {"nusers": 3},
                                 setup=lambda env: env.move(env.users[2], "web2", settle=True),
                                 stop_with="14")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
