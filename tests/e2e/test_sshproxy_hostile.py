#!/usr/bin/python3
"""e2e.sshproxy_hostile: sshproxy against a hostile SSH client, and the defences of the review
fixes (ed08287) proven one by one.

The hostile client is paramiko 2.12 (Debian's python3-paramiko) driven below its API: after
the key exchange (and, where a section needs it, a real public-key login) it writes raw SSH
messages with Transport._send_user_message, several at a time in one TCP write (TCP_CORK),
records the replies in arrival order and, where asked, never answers the proxy's
CHANNEL_CLOSE. Everything else is the real world of tests/harness/sshproxy_env.py:
PostgreSQL, OpenSSH backends web1/web2, the pgsql hook, build/sshproxy/sshproxy, real `ssh`.
Sections, each a list of checks that can fail:

   1 auth-request flood: 200 "none" requests, then 200 mixed password/publickey/"none", in
     one write: at most ssh.max_auth_tries*4+8 = 32 are answered, then DISCONNECT "Too many
     authentication failures" and session_end reason="too many authentication requests";
     while two flooders reconnect and flood in a loop, real `ssh` logins (key, password)
     succeed in < 3x a quiet login + 5 s each, and every flood connection was cut the same way (and logged)
   2 request queues: with the session's backend sshd stopped (SIGSTOP) so nothing drains,
     64 "env" requests (MAX_REQS; 64 KiB values) on one channel all wait, unanswered, while
     another user logs in and another user's session echoes; after SIGCONT each is answered
     once and in request order (docs/sshproxy.md; the names AcceptEnv DP_* refuses fail at
     their places, which makes the order visible). 64 pending and one more ends the
     connection: DISCONNECT "protocol violation", "too many pending channel requests" logged
     (warning and session_end), no reply out of turn; so does a flood of 1000 (62.5 MiB),
     proxy RSS < 32 MiB above its start, and the proxy read no more of it than the design
     bound (session_end client_read). 48 env requests of 192 KiB (over SSHP_HELD_MAX, under
     MAX_REQS) are held back instead: all answered in order after SIGCONT. 1000 window-changes (resize_pty) on a pty session
     behind a pending env request share one slot, before the shell starts and while it runs:
     the connection stays, and after SIGCONT `stty size` in the shell shows the last size
     sent. 200 tcpip-forward requests all wait (MAX_GLOBALS 256) and after SIGCONT all
     succeed, in request order (RFC 4254 section 4: MUST; fixed ports and port 0 mixed: only
     port 0 gets the bound port in its reply), and listen on the backend; 256 pending and one
     more ends the connection the same way ("too many pending global requests"). A real `ssh`
     with 20 -R forwards: the ports it reports as failed are exactly the ones that do not
     listen, and there are none: all 20 listen.
   3 window abuse: a client that keeps sending CHANNEL_DATA past the window (96 MiB offered
     to `sleep 60`) is disconnected after ~16 MiB buffered (HARD_CAP), told "protocol
     violation" (stderr and DISCONNECT), "peer ignores the channel window" logged, proxy
     RSS < 48 MiB above its start; a session opened before still echoes, a login during the
     abuse succeeds in < 3x a quiet login + 5 s
   4 a peer that never answers CHANNEL_CLOSE: after `true` ended on the backend the client
     gets exit status, EOF and CLOSE but never closes; it keeps sending data on the dead
     channel (dropped: RSS < 12 MiB above its start) and another channel of the connection
     still works; at PAIR_CLOSE_WAIT_MS (30 s, compiled in) the connection ends with
     "a peer did not close a channel" (between 29 and 45 s after the CLOSE); so does a
     second such peer that stays silent (the deadline needs no traffic)
   5 more from the review list: keyboard-interactive restarted while the backend's prompt
     is unanswered ends the connection ("keyboard-interactive restarted mid-round"; the
     same round answered properly logs in); extended data from the client is relayed as
     the command's stdin (64 KiB to `wc -c`; 1 MiB data + 6 MiB extended to a command that
     starts reading after 1 s: the backend counts all of it, the window never stays shut),
     and extended data past the window is cut off like section 3; an exec and a signal
     for it sent in one write: the signal reaches the command; env (reply due), exec and
     stdin + EOF in one write: the command gets the variable and every byte (sshd drops
     data for a session with no command yet, so the data must not overtake the exec)

Run by ctest (label e2e) or directly as root:
    PYTHONPATH=tests/harness /usr/bin/python3 tests/e2e/test_sshproxy_hostile.py [1 2 ...]
(from a build directory other than build/: DP_SOURCE_DIR, DP_BUILD_DIR and DP_HOOKDIR as in
tests/e2e/CMakeLists.txt). Section 4 alone takes ~31 s: the deadline is a constant.
"""

import base64
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))
import dpenv  # noqa: E402
from checks import Checks  # noqa: E402
from proxy_env import asan_small_quarantine, kill_group, rss_bound, vm_rss_kib  # noqa: E402
from sshproxy_env import SshProxyEnv  # noqa: E402

try:
    import paramiko  # noqa: E402
    from paramiko.common import (  # noqa: E402
        MSG_CHANNEL_CLOSE, MSG_CHANNEL_EOF, MSG_CHANNEL_FAILURE, MSG_CHANNEL_SUCCESS,
        MSG_REQUEST_FAILURE, MSG_REQUEST_SUCCESS, MSG_SERVICE_ACCEPT, MSG_USERAUTH_BANNER,
        MSG_USERAUTH_FAILURE, MSG_USERAUTH_INFO_REQUEST, MSG_USERAUTH_SUCCESS,
        cMSG_CHANNEL_DATA, cMSG_CHANNEL_EOF, cMSG_CHANNEL_EXTENDED_DATA, cMSG_CHANNEL_REQUEST,
        cMSG_GLOBAL_REQUEST, cMSG_SERVICE_REQUEST, cMSG_USERAUTH_INFO_RESPONSE,
        cMSG_USERAUTH_REQUEST)
    from paramiko.message import Message  # noqa: E402
except ImportError:  # reported as a failed check by main()
    paramiko = None

check = Checks()
KiB = 1 << 10
MiB = 1 << 20

# The proxy's bounds (sshproxy/*.c), with the harness's default ssh.max_auth_tries = 6.
AUTH_BOUND = 6 * 4 + 8        # sshp_auth.c: answered auth requests per connection
MAX_REQS = 64                 # sshp_channel.c: queued requests per channel
MAX_GLOBALS = 256             # sshp_channel.c: queued global requests per connection
HARD_CAP = 16 * MiB           # sshp_channel.c: buffered bytes of a peer ignoring the window
PAIR_CLOSE_WAIT_S = 30        # sshp_channel.c: PAIR_CLOSE_WAIT_MS
CHUNK = 32000                 # CHANNEL_DATA payload (libssh's channel max packet is 32768)
TOO_MANY = "Too many authentication failures"


# ---- the hostile client -----------------------------------------------------------------------

def libssh_read_max():
    """libssh's read size (MAX_BUF_SIZE) in the sshproxy under test, from `sshproxy -V`."""
    out = subprocess.run([SshProxyEnv.BINARY, "-V"], capture_output=True, text=True,
                         timeout=10).stdout
    m = re.search(r"libssh_read_max=(\d+)", out)
    return int(m.group(1)) if m else 4 * KiB

def msg(ptype, *fields):
    """A raw SSH message: ptype (a paramiko cMSG_* byte), then bool / uint32 / string fields."""
    m = Message()
    m.add_byte(ptype)
    for f in fields:
        if isinstance(f, bool):
            m.add_boolean(f)
        elif isinstance(f, int):
            m.add_int(f)
        else:
            m.add_string(f)
    return m


def _transport_recorder(ptype):
    def handler(self, m):
        self._record(ptype, None, Message(m.asbytes()))
        ah = self.auth_handler  # a paramiko login in progress still gets its replies
        if ah is not None and ptype in ah._handler_table:
            ah._handler_table[ptype](ah, m)
    return handler


def _channel_recorder(ptype, original):
    def handler(chan, m):
        t = chan.transport
        t._record(ptype, chan.chanid, None)
        if ptype == MSG_CHANNEL_CLOSE and chan.chanid in t.no_close:
            return  # never answered: the channel stays half-closed on the proxy
        if ptype in (MSG_CHANNEL_SUCCESS, MSG_CHANNEL_FAILURE) and chan.chanid in t.raw_replies:
            return  # replies to raw requests: paramiko would close the channel on a failure
        original(chan, m)
    return handler


if paramiko is not None:
    class Hostile(paramiko.Transport):
        """paramiko's client transport to the proxy, plus raw sending and an ordered record of
        the replies this suite counts (.inbox: (type, channel id or None, Message or None))."""

        _handler_table = dict(paramiko.Transport._handler_table)
        _channel_handler_table = dict(paramiko.Transport._channel_handler_table)
        for _t in (MSG_SERVICE_ACCEPT, MSG_USERAUTH_FAILURE, MSG_USERAUTH_SUCCESS,
                   MSG_USERAUTH_BANNER, MSG_USERAUTH_INFO_REQUEST, MSG_REQUEST_SUCCESS,
                   MSG_REQUEST_FAILURE):
            _handler_table[_t] = _transport_recorder(_t)
        for _t in (MSG_CHANNEL_SUCCESS, MSG_CHANNEL_FAILURE, MSG_CHANNEL_EOF, MSG_CHANNEL_CLOSE):
            _channel_handler_table[_t] = _channel_recorder(_t, _channel_handler_table[_t])
        del _t

        def __init__(self, port):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            super().__init__(sock)
            self.raw_sock = sock
            self.cond = threading.Condition()
            self.inbox = []
            self.disconnect = None    # the DISCONNECT description, once one came
            self.disconnect_at = None  # and time.monotonic() when it did
            self.ended_at = None      # time.monotonic() when the connection ended
            self.no_close = set()     # channel ids whose CHANNEL_CLOSE is never answered
            self.raw_replies = set()  # channel ids whose request replies are only recorded
            try:
                self.start_client(timeout=10)
            except BaseException:
                self.close()
                raise

        def run(self):
            try:
                super().run()
            finally:
                with self.cond:
                    self.ended_at = time.monotonic()
                    self.cond.notify_all()

        def _record(self, ptype, chanid, m):
            with self.cond:
                self.inbox.append((ptype, chanid, m))
                self.cond.notify_all()

        def _parse_disconnect(self, m):
            m.get_int()
            desc = m.get_text()
            with self.cond:
                self.disconnect, self.disconnect_at = desc, time.monotonic()
                self.cond.notify_all()

        def wait(self, pred, timeout):
            """Poll pred() (under the record lock) until true or timeout; returns its value."""
            deadline = time.monotonic() + timeout
            with self.cond:
                while True:
                    v = pred()
                    left = deadline - time.monotonic()
                    if v or left <= 0:
                        return v
                    self.cond.wait(min(left, 0.05))

        def wait_closed(self, timeout):
            return self.wait(lambda: not self.is_active(), timeout)

        def replies(self, types, chanid=None):
            return [p for p, c, _ in self.inbox if p in types and (chanid is None or c == chanid)]

        def count(self, ptype, chanid=None):
            return len(self.replies((ptype,), chanid))

        def send(self, m):
            """Send one raw message; False once the connection is gone."""
            if not self.is_active():
                return False
            try:
                self._send_user_message(m)
            except (EOFError, OSError, paramiko.SSHException):
                return False
            return self.is_active()

        @contextlib.contextmanager
        def corked(self):
            """What is sent inside goes out in as few TCP segments as the kernel allows."""
            try:
                self.raw_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            except OSError:
                pass
            try:
                yield
            finally:
                try:
                    self.raw_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
                except OSError:
                    pass

        def burst(self, msgs):
            """Send all of msgs in as few TCP segments as the kernel allows."""
            with self.corked():
                for m in msgs:
                    if not self.send(m):
                        return False
                return True

        def userauth_service(self):
            self.send(msg(cMSG_SERVICE_REQUEST, "ssh-userauth"))
            return self.wait(lambda: self.count(MSG_SERVICE_ACCEPT) > 0, 10)

        def login(self, user):
            """A real public-key login through paramiko (the user's own key)."""
            self.auth_publickey(user.name, paramiko.Ed25519Key.from_private_key_file(user.key))
            return self.is_authenticated()


def hostile_login(env, user):
    t = Hostile(env.port)
    if not t.login(user):
        t.close()
        raise RuntimeError("paramiko login of %s through the proxy failed" % user.name)
    return t


class RssPeak:
    """Peak VmRSS of a process, sampled every 20 ms from construction until stop()."""

    def __init__(self, pid):
        self.pid = pid
        self.base = vm_rss_kib(pid) or 0
        self.peak = self.base
        self._halt = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._halt.wait(0.02):
            v = vm_rss_kib(self.pid)
            if v:
                self.peak = max(self.peak, v)

    def stop(self):
        """Growth of the peak over the start, in bytes."""
        self._halt.set()
        self._t.join(5)
        v = vm_rss_kib(self.pid)
        if v:
            self.peak = max(self.peak, v)
        return (self.peak - self.base) * KiB


def mib(n):
    return "%d KiB" % (n // KiB) if n < MiB else "%.1f MiB" % (n / MiB) if n % MiB else \
        "%d MiB" % (n // MiB)


def login_ok(env, user, **kw):
    """A real `ssh` login through the proxy: (ok, seconds, Result)."""
    r = env.ssh(user, "echo ok", timeout=60, **kw)
    return r.rc == 0 and r.out.strip() == "ok", r.secs, r


_QUIET_LOGIN = []


def login_budget(env):
    """How long a login may take while an attack runs: 3x a login timed on the quiet proxy in
    this run, plus 5 s (what "not starved" means on this machine, whatever its speed)."""
    if not _QUIET_LOGIN:
        ok, secs, r = login_ok(env, env.users[0], key=True)
        _QUIET_LOGIN.append(secs if ok else 5.0)
    return 3 * _QUIET_LOGIN[0] + 5


def backend_sshd_pids(user):
    """The sshd processes running as `user` (its post-login session processes, on any
    backend: the backends share the PID namespace)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/status" % d) as f:
                st = f.read()
        except OSError:
            continue
        name = re.search(r"^Name:\s*(\S+)", st, re.M)
        uid = re.search(r"^Uid:\s*(\d+)\s+(\d+)", st, re.M)
        if name and name.group(1) == "sshd" and uid and int(uid.group(2)) == user.uid:
            pids.append(int(d))
    return pids


def blast(t, chan, total, ext=False):
    """Raw CHANNEL_DATA (or EXTENDED_DATA, stderr) packets on chan, ignoring the window,
    until `total` bytes or the connection ends. Returns the bytes sent."""
    data = b"\xa5" * CHUNK
    sent = 0
    while sent < total:
        if ext:
            m = msg(cMSG_CHANNEL_EXTENDED_DATA, chan.remote_chanid, 1, data)
        else:
            m = msg(cMSG_CHANNEL_DATA, chan.remote_chanid, data)
        if not t.send(m):
            break
        sent += CHUNK
    return sent


def stderr_text(chan):
    """What arrived on chan's stderr so far (never blocks)."""
    out = b""
    while chan.recv_stderr_ready():
        out += chan.recv_stderr(65536)
    return out.decode("utf-8", "replace")


# ---- 1 auth-request flood -----------------------------------------------------------------------
def auth_request(env, name, method):
    if method == "none":
        return msg(cMSG_USERAUTH_REQUEST, name, "ssh-connection", "none")
    if method == "password":
        return msg(cMSG_USERAUTH_REQUEST, name, "ssh-connection", "password", False,
                   "wrong-password")
    typ, blob = env.unlisted_pub.split()[:2]  # a key nobody lists: a probe (no signature)
    return msg(cMSG_USERAUTH_REQUEST, name, "ssh-connection", "publickey", False, typ,
               base64.b64decode(blob))


def flood_once(env, name, methods, n=200):
    """One connection: key exchange, ssh-userauth, then n auth requests in one write.
    Returns {closed, secs, failures, disconnect} or {error}."""
    try:
        t = Hostile(env.port)
    except Exception as e:  # noqa: BLE001 - reported by the caller's checks
        return {"error": "connect/kex: %r" % e}
    try:
        if not t.userauth_service():
            return {"error": "no SERVICE_ACCEPT"}
        msgs = [auth_request(env, name, methods[i % len(methods)]) for i in range(n)]
        t0 = time.monotonic()
        t.burst(msgs)
        closed = t.wait_closed(30)
        return {"closed": closed, "secs": time.monotonic() - t0,
                "failures": t.count(MSG_USERAUTH_FAILURE), "disconnect": t.disconnect}
    finally:
        t.close()


def flood_cut(res):
    """The flood connection ended the way sshp_auth.c intends."""
    return (res.get("closed") and res.get("failures", 99) <= AUTH_BOUND and
            res.get("disconnect") == TOO_MANY and res.get("secs", 99) < 30)


class Flooder(threading.Thread):
    """Floods in a loop, one fresh connection after the other, until stop()."""

    def __init__(self, env, name, methods):
        super().__init__(daemon=True)
        self.env, self.name, self.methods = env, name, methods
        self.results = []
        self._halt = threading.Event()
        self.start()

    def run(self):
        while not self._halt.is_set():
            self.results.append(flood_once(self.env, self.name, self.methods))

    def stop(self):
        self._halt.set()
        self.join(30)
        return self.results


def t_auth_flood(env):
    u0, u1, u2 = env.users[:3]
    mark = env.log_offset()
    res = flood_once(env, u1.name, ["none"])
    check(flood_cut(res), "200 'none' requests in one write: %s answered (at most %d), then "
          "DISCONNECT '%s' (within 5 s)" % (res.get("failures"), AUTH_BOUND, TOO_MANY), res)
    ends = env.wait_events("session_end", after=mark, user=u1.name,
                           reason="too many authentication requests")
    check(len(ends) == 1, "session_end reason=\"too many authentication requests\" is logged",
          ends or dpenv.tail(env.logfile, 10))

    mark = env.log_offset()
    res = flood_once(env, u2.name, ["password", "publickey", "none"])
    check(flood_cut(res), "200 mixed password/publickey/none requests: %s answered (at most "
          "%d), then DISCONNECT '%s'" % (res.get("failures"), AUTH_BOUND, TOO_MANY), res)
    ends = env.wait_events("session_end", after=mark, user=u2.name,
                           reason="too many authentication requests")
    check(len(ends) == 1, "... and logged with the same reason", ends)

    # Sustained: two flooders reconnect and flood while real clients log in.
    budget = login_budget(env)
    mark = env.log_offset()
    floods = [Flooder(env, u1.name, ["none"]),
              Flooder(env, u2.name, ["password", "publickey", "none"])]
    try:
        dpenv.wait_until(lambda: all(len(f.results) >= 2 for f in floods), 20)
        logins = [login_ok(env, u0, key=True), login_ok(env, u0, password=True),
                  login_ok(env, u0, key=True)]
    finally:
        results = [f.stop() for f in floods]
    check(all(ok and secs < budget for ok, secs, _ in logins),
          "3 real ssh logins (key, password, key) during the flood succeed in < %.1f s each "
          "(3x a quiet login + 5 s; %s s)" % (budget, ", ".join("%.2f" % s for _, s, _ in logins)),
          [r for _, _, r in logins])
    allres = results[0] + results[1]
    bad = [r for r in allres if not flood_cut(r)]
    check(all(len(r) >= 2 for r in results) and not bad,
          "every flood connection (%d) was cut the same way" % len(allres), bad[:3])
    n = len(allres)
    ends = env.wait_events("session_end", after=mark, count=n,
                           reason="too many authentication requests")
    check(len(ends) == n, "each of them logged session_end reason=\"too many authentication "
          "requests\" (%d)" % len(ends), "%d flood connections" % n)


# ---- 2 request queues ---------------------------------------------------------------------------
# Which of the MAX_REQS queued env requests use a name AcceptEnv (LANG LC_* DP_*) refuses: their
# FAILUREs, scattered among the SUCCESSes, make the order of the replies visible.
REFUSED = frozenset(i for i in range(MAX_REQS) if (i * 37) % MAX_REQS < 12)
G_FWD = 200  # queued tcpip-forward requests
# Which of them ask for a fixed port (the rest for port 0): RFC 4254 section 7.1 puts the bound
# port in the reply only for port 0, which makes the order of the replies visible.
FIXED = frozenset(i for i in range(G_FWD) if (i * 73) % G_FWD < 67)


def reply_summary(types):
    """'S'/'F' runs of a reply sequence, e.g. 'S3 F1 S60'."""
    out = []
    for p in types:
        c = "S" if p in (MSG_CHANNEL_SUCCESS, MSG_REQUEST_SUCCESS) else "F"
        if out and out[-1][0] == c:
            out[-1][1] += 1
        else:
            out.append([c, 1])
    return " ".join("%s%d" % (c, n) for c, n in out)


def signal_all(pids, sig):
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def stopped(pids):
    signal_all(pids, signal.SIGSTOP)


def resumed(pids):
    signal_all(pids, signal.SIGCONT)


def check_logged_end(env, mark, user, reason):
    """The proxy logged why it ended `user`'s connection: the warning and one session_end."""
    check(env.wait_log("ending the connection: " + reason, after=mark)
          and len(env.wait_events("session_end", after=mark, user=user.name,
                                  reason=reason)) == 1,
          "the log says why: '%s' (warning and session_end)" % reason,
          dpenv.tail(env.logfile, 8))


def session_sshd(user, before):
    """The backend sshd process of the connection `user` just logged in with: the user's sshd
    processes that were not there `before`."""
    return dpenv.wait_until(lambda: sorted(set(backend_sshd_pids(user)) - set(before)), 5) or []


def barrier(t, timeout=10):
    """A keepalive@openssh.com round trip. libssh answers it as it reads it, so once its reply
    is here the proxy has read everything sent before it. True when the reply came."""
    gkinds = (MSG_REQUEST_SUCCESS, MSG_REQUEST_FAILURE)
    with t.cond:
        n = len(t.replies(gkinds))
    t.send(msg(cMSG_GLOBAL_REQUEST, "keepalive@openssh.com", True))
    t.wait(lambda: len(t.replies(gkinds)) > n or not t.is_active(), timeout)
    return len(t.replies(gkinds)) > n


def env_req(chan, name, value):
    return msg(cMSG_CHANNEL_REQUEST, chan.remote_chanid, "env", True, name, value)


def read_until(chan, pattern, timeout=10):
    """Read chan's stdout until `pattern` (bytes regex) matches; (match or None, what came)."""
    buf = b""
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(pattern, buf)
        left = deadline - time.monotonic()
        if m or left <= 0:
            return m, buf
        chan.settimeout(left)
        try:
            data = chan.recv(65536)
        except socket.timeout:
            continue
        if not data:
            return None, buf
        buf += data


def echo(chan, token):
    """Send token to a channel running `cat`; what came back (within 10 s)."""
    chan.sendall(token)
    m, buf = read_until(chan, re.escape(token))
    return buf


def resize_all(chan, sizes):
    """chan.resize_pty to each (cols, rows) in turn; how many were sent before the connection
    ended."""
    n = 0
    for cols, rows in sizes:
        try:
            chan.resize_pty(width=cols, height=rows)
        except (EOFError, OSError, paramiko.SSHException):
            break
        n += 1
    return n


def ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def t_request_queues(env):
    u0, u1, u2 = env.users[:3]
    kinds = (MSG_CHANNEL_SUCCESS, MSG_CHANNEL_FAILURE)
    gkinds = (MSG_REQUEST_SUCCESS, MSG_REQUEST_FAILURE)
    value = "v" * (64 * KiB)
    held = []   # every backend process stopped here: continued whatever happens
    conns = []

    def stop(pids):
        held.extend(pids)
        stopped(pids)

    def connect(user):
        t = hostile_login(env, user)
        conns.append(t)
        return t

    try:
        # another user's session, opened before, must keep working throughout
        other = connect(u1)
        och = other.open_session(timeout=10)
        och.exec_command("cat")
        pings = [echo(och, b"ping1\n")]

        # -- channel requests: MAX_REQS wait, answered in order once the backend resumes
        before = backend_sshd_pids(u2)
        t = connect(u2)
        chan = t.open_session(timeout=10)
        t.raw_replies.add(chan.chanid)
        pids = session_sshd(u2, before)
        check(len(pids) == 1, "the session's backend sshd process is found (%s)" % pids)
        stop(pids)
        rss = RssPeak(env.proxy_pid)
        names = [("NOPE_Q%d" if i in REFUSED else "DP_Q%d") % i for i in range(MAX_REQS)]
        t.burst(env_req(chan, name, value) for name in names)
        synced = barrier(t)
        early = t.replies(kinds, chan.chanid)
        check(synced and t.is_active() and not early,
              "backend stalled: %d env requests (64 KiB values) on one channel all wait "
              "(MAX_REQS): none answered, the connection stays" % MAX_REQS,
              "keepalive answered=%s active=%s early replies %s"
              % (synced, t.is_active(), reply_summary(early)))
        ok, secs, r = login_ok(env, u0, key=True)
        check(ok and secs < login_budget(env), "another user logs in meanwhile (%.2fs < %.1fs)"
              % (secs, login_budget(env)), r)
        pings.append(echo(och, b"ping2\n"))
        check(pings == [b"ping1\n", b"ping2\n"],
              "another user's session opened before still echoes meanwhile", pings)
        resumed(pids)
        t.wait(lambda: len(t.replies(kinds, chan.chanid)) >= MAX_REQS or not t.is_active(), 30)
        # a command on a new channel of the same connection: a late extra reply would be
        # here by then
        c2 = t.open_session(timeout=10)
        c2.settimeout(10)
        c2.exec_command("echo alive")
        out = c2.makefile("rb").read()
        alive = out.strip() == b"alive" and c2.recv_exit_status() == 0
        got = t.replies(kinds, chan.chanid)
        want = [MSG_CHANNEL_FAILURE if i in REFUSED else MSG_CHANNEL_SUCCESS
                for i in range(MAX_REQS)]
        check(got == want,
              "backend resumed: each of the %d requests answered once and in request order "
              "(docs/sshproxy.md; the %d DP_* names succeed, the %d names AcceptEnv refuses "
              "fail at their places: %s)" % (MAX_REQS, MAX_REQS - len(REFUSED), len(REFUSED),
                                             reply_summary(want)),
              "replies in arrival order: %s" % reply_summary(got))
        check(alive, "the connection survived: a new channel runs a command", out)
        dpenv.wait_until(lambda: c2.closed, 5)

        # -- one more than MAX_REQS pending ends the connection
        mark = env.log_offset()
        t.no_close.add(chan.chanid)  # see section 3: paramiko would miss the DISCONNECT
        stop(pids)
        t.burst(env_req(chan, "DP_R%d" % i, value) for i in range(MAX_REQS))
        synced = barrier(t)
        full = synced and t.is_active()
        t.send(env_req(chan, "DP_R%d" % MAX_REQS, "x"))
        closed = t.wait_closed(30)
        late = t.replies(kinds, chan.chanid)[MAX_REQS:]
        check(full and closed and t.disconnect == "protocol violation",
              "%d pending again: the connection stays; one more ends it with DISCONNECT "
              "'protocol violation'" % MAX_REQS,
              "still open with %d pending=%s closed=%s disconnect=%r"
              % (MAX_REQS, full, closed, t.disconnect))
        check(not late, "none of those %d requests got a reply (none out of turn)"
              % (MAX_REQS + 1), reply_summary(late))
        check_logged_end(env, mark, u2, "too many pending channel requests")
        resumed(pids)

        # -- a flood: cut at the 65th pending, the rest never kept
        mark = env.log_offset()
        before = backend_sshd_pids(u2)
        f = connect(u2)
        fch = f.open_session(timeout=10)
        f.raw_replies.add(fch.chanid)
        f.no_close.add(fch.chanid)
        fpids = session_sshd(u2, before)
        stop(fpids)
        n = 1000
        f.burst(env_req(fch, "DP_F%d" % i, value) for i in range(n))
        closed = f.wait_closed(30)
        grown = rss.stop()
        check(closed and f.disconnect == "protocol violation" and
              not f.replies(kinds, fch.chanid) and
              len(env.wait_events("session_end", after=mark, user=u2.name,
                                  reason="too many pending channel requests")) == 1,
              "a flood of %d env requests (%s) on a stalled channel: cut the same way and "
              "logged, no reply" % (n, mib(n * len(value))),
              "closed=%s disconnect=%r replies %s; %s"
              % (closed, f.disconnect, reply_summary(f.replies(kinds, fch.chanid)),
                 dpenv.tail(env.logfile, 6)))
        # The design bound (sshp.h, SSHP_HELD_MAX and its neighbours): the proxy stops taking
        # the client's bytes at the cut. What it read is what the kernel says it read
        # (session_end client_read), whatever the allocator made of it: the 65 requests up
        # to the cut, at most one pump's reads ahead (DOPOLL_BUDGET: 1 MiB, plus message
        # reads of 256 KiB and one read past that) and SSHP_CLOSING_READS (256 KiB) while
        # closing. A read is libssh's MAX_BUF_SIZE, which `sshproxy -V` names.
        read_max = libssh_read_max()
        ends = env.events("session_end", after=mark, user=u2.name,
                          reason="too many pending channel requests")
        read = int(ends[0].get("client_read", -1)) if ends else -1
        design = ((MAX_REQS + 1) * (len(value) + 4 * KiB) + MiB + 256 * KiB + read_max
                  + max(256 * KiB, read_max))
        check(0 < read <= design,
              "the flood was read only up to the cut: client_read=%s of %s sent (design bound "
              "%s)" % (mib(read), mib(n * len(value)), mib(design)),
              [e["_line"] for e in ends])
        bound = rss_bound(env.proxy_pid, 32 * MiB)
        check(grown < bound, "proxy RSS while %s of requests arrived: +%s (< %s)"
              % (mib(n * len(value)), mib(grown), mib(bound)))
        resumed(fpids)
        pings.append(echo(och, b"ping3\n"))
        check(pings[-1] == b"ping3\n",
              "the other user's session still echoes after both connections were cut", pings)

        # -- over SSHP_HELD_MAX (8 MiB of queued request bytes) with fewer than MAX_REQS
        # pending: backpressure, not an error. The proxy stops reading the client until
        # requests complete; none is lost, every one is answered in order.
        before = backend_sshd_pids(u2)
        h = connect(u2)
        hch = h.open_session(timeout=10)
        h.raw_replies.add(hch.chanid)
        hpids = session_sshd(u2, before)
        stop(hpids)
        nbig, big = 48, "b" * (192 * KiB)
        sent = h.burst(env_req(hch, "DP_H%d" % i, big) for i in range(nbig))
        time.sleep(1.0)
        early = h.replies(kinds, hch.chanid)
        alive = h.is_active()
        resumed(hpids)
        h.wait(lambda: len(h.replies(kinds, hch.chanid)) >= nbig or not h.is_active(), 60)
        got = h.replies(kinds, hch.chanid)
        check(sent and alive and not early and got == [MSG_CHANNEL_SUCCESS] * nbig and
              h.is_active() and barrier(h),
              "%d env requests of 192 KiB (%s, over SSHP_HELD_MAX 8 MiB) on a stalled channel: "
              "held back, not cut; after SIGCONT all answered, in order, and the connection "
              "goes on" % (nbig, mib(nbig * len(big))),
              "sent=%s alive=%s early=%s replies %s active=%s"
              % (sent, alive, reply_summary(early), reply_summary(got), h.is_active()))

        # -- window-change: coalesced behind a pending request, the last size wins. Without
        # a request pending each one is forwarded at once (no reply is awaited), so each
        # burst follows an env request the stopped backend cannot answer.
        before = backend_sshd_pids(u2)
        w = connect(u2)
        wch = w.open_session(timeout=10)
        wch.get_pty(term="vt100", width=80, height=24)
        wpids = session_sshd(u2, before)
        stop(wpids)
        w.raw_replies.add(wch.chanid)
        w.no_close.add(wch.chanid)
        base = len(w.replies(kinds, wch.chanid))  # the reply to pty-req
        sizes = [(40 + (i * 7) % 160, 10 + (i * 3) % 60) for i in range(999)] + [(137, 41)]
        # before the shell: env, 500 window-change, env, 500 window-change, shell
        with w.corked():
            w.send(env_req(wch, "DP_W1", "1"))
            resize_all(wch, sizes[:500])
            w.send(env_req(wch, "DP_W2", "2"))
            resize_all(wch, sizes[500:])
            w.send(msg(cMSG_CHANNEL_REQUEST, wch.remote_chanid, "shell", True))
        synced = barrier(w)
        check(synced and w.is_active() and not w.replies(kinds, wch.chanid)[base:],
              "backend stalled: env, 500 window-change, env, 500 window-change, shell on a "
              "pty session (%d requests): the connection stays (window-changes in a row share "
              "one slot), nothing answered yet" % (len(sizes) + 3),
              "keepalive answered=%s active=%s disconnect=%r replies %s"
              % (synced, w.is_active(), w.disconnect,
                 reply_summary(w.replies(kinds, wch.chanid)[base:])))
        resumed(wpids)
        w.wait(lambda: len(w.replies(kinds, wch.chanid)) >= base + 3 or not w.is_active(), 15)
        wgot = w.replies(kinds, wch.chanid)[base:]
        m, buf = None, b""
        if len(wgot) >= 3:  # the shell runs
            wch.sendall(b"echo SIZE=$(stty size)=\n")
            m, buf = read_until(wch, rb"SIZE=(\d+) (\d+)=")
        final = "%d %d" % (sizes[-1][1], sizes[-1][0])
        check(wgot == [MSG_CHANNEL_SUCCESS] * 3 and m is not None and
              m.group(1) + b" " + m.group(2) == final.encode(),
              "backend resumed: both env requests and the shell succeed, and `stty size` in "
              "the shell shows the last size sent (%s)" % final,
              "replies %s; shell output %r" % (reply_summary(wgot), buf[-300:]))
        # the shell running: a terminal dragged while the backend is stalled
        stop(wpids)
        base = len(w.replies(kinds, wch.chanid))
        sizes = [(30 + (i * 11) % 170, 8 + (i * 5) % 70) for i in range(999)] + [(173, 59)]
        with w.corked():
            # refused by sshd once the shell runs, but only after the backend resumes; the
            # second env is answered only once the last window-change went out before it
            # (data is not queued behind requests: the shell's input could overtake it)
            w.send(env_req(wch, "DP_W3", "3"))
            resize_all(wch, sizes)
            w.send(env_req(wch, "DP_W4", "4"))
        synced = barrier(w)
        alive = synced and w.is_active() and not w.replies(kinds, wch.chanid)[base:]
        resumed(wpids)
        w.wait(lambda: len(w.replies(kinds, wch.chanid)) >= base + 2 or not w.is_active(), 15)
        wgot = w.replies(kinds, wch.chanid)[base:]
        m, buf = None, b""
        if wgot:
            wch.sendall(b"echo SIZE=$(stty size)=\n")
            m, buf = read_until(wch, rb"SIZE=(\d+) (\d+)=")
        final = "%d %d" % (sizes[-1][1], sizes[-1][0])
        check(alive and wgot == [MSG_CHANNEL_FAILURE] * 2 and m is not None and
              m.group(1) + b" " + m.group(2) == final.encode(),
              "the same with the shell running (env pending, %d window-change, env): the "
              "connection stays; after SIGCONT both env are answered in turn (refused by "
              "sshd: the session runs) and `stty size` shows the last size (%s)"
              % (len(sizes), final),
              "stayed=%s replies %s; shell output %r" % (alive, reply_summary(wgot), buf[-300:]))
        w.close()

        # -- global requests: queued, answered in order, all made
        before = backend_sshd_pids(u2)
        g = connect(u2)
        gpids = session_sshd(u2, before)
        stop(gpids)
        lo, _ = dpenv.free_port_range(len(FIXED), lo=20000, hi=ephemeral_low() - 1)
        fixed = dict(zip(sorted(FIXED), range(lo, lo + len(FIXED))))
        g.burst(msg(cMSG_GLOBAL_REQUEST, "tcpip-forward", True, "127.0.0.1", fixed.get(i, 0))
                for i in range(G_FWD))
        synced = barrier(g)
        early = g.replies(gkinds)
        check(synced and g.is_active() and len(early) == 1,
              "backend stalled: %d tcpip-forward requests all wait (MAX_GLOBALS %d): none "
              "answered, the connection stays" % (G_FWD, MAX_GLOBALS),
              "keepalive answered=%s active=%s replies %s"
              % (synced, g.is_active(), reply_summary(early)))
        resumed(gpids)
        g.wait(lambda: len(g.replies(gkinds)) >= G_FWD + 1 or not g.is_active(), 30)
        with g.cond:
            rec = [(p, m.asbytes()) for p, _, m in g.inbox if p in gkinds][1:]
        shape = "".join("F" if p != MSG_REQUEST_SUCCESS else "p" if len(b) == 4 else
                        "s" if not b else "?" for p, b in rec)
        want = "".join("s" if i in FIXED else "p" for i in range(G_FWD))
        ports = [fixed[i] for i in sorted(FIXED)] + \
            [Message(b).get_int() for p, b in rec if p == MSG_REQUEST_SUCCESS and len(b) == 4]
        listening = [p for p in ports if p and not dpenv.port_is_free(p)]
        check(shape == want,
              "backend resumed: each of the %d requests answered once, all succeed, in request "
              "order (RFC 4254 section 4: MUST; the bound port comes back exactly for the %d "
              "asking for port 0)" % (G_FWD, G_FWD - len(FIXED)),
              "want %s\n got  %s" % (want, shape))
        check(len(set(listening)) == G_FWD,
              "all %d forwards listen on the backend (%d fixed ports, %d bound by the backend)"
              % (G_FWD, len(FIXED), G_FWD - len(FIXED)),
              "%d distinct ports listen of %d" % (len(set(listening)), len(ports)))
        c3 = g.open_session(timeout=10)
        c3.settimeout(10)
        c3.exec_command("echo alive")
        out = c3.makefile("rb").read()
        check(out.strip() == b"alive" and c3.recv_exit_status() == 0,
              "the connection still runs commands", out)
        g.close()

        # -- one more than MAX_GLOBALS pending ends the connection
        mark = env.log_offset()
        before = backend_sshd_pids(u2)
        h = connect(u2)
        hpids = session_sshd(u2, before)
        stop(hpids)
        h.burst(msg(cMSG_GLOBAL_REQUEST, "tcpip-forward", True, "127.0.0.1", 0)
                for _ in range(MAX_GLOBALS))
        synced = barrier(h)
        full = synced and h.is_active() and len(h.replies(gkinds)) == 1
        h.send(msg(cMSG_GLOBAL_REQUEST, "tcpip-forward", True, "127.0.0.1", 0))
        closed = h.wait_closed(30)
        check(full and closed and h.disconnect == "protocol violation" and
              len(h.replies(gkinds)) == 1,
              "%d tcpip-forward requests pending: the connection stays; one more ends it "
              "with DISCONNECT 'protocol violation', none of them answered"
              % MAX_GLOBALS, "still open with %d pending=%s closed=%s disconnect=%r "
              "replies (the first answers the keepalive) %s"
              % (MAX_GLOBALS, full, closed, h.disconnect, reply_summary(h.replies(gkinds))))
        check_logged_end(env, mark, u2, "too many pending global requests")
    finally:
        resumed(held)
        for c in conns:
            c.close()
    t_many_forwards(env)


def t_many_forwards(env):
    """A legitimate OpenSSH client with 20 -R forwards (all sent at once after login)."""
    u0 = env.users[0]
    ports = [dpenv.free_port() for _ in range(20)]
    extra = []
    for p in ports:
        extra += ["-R", "127.0.0.1:%d:127.0.0.1:9" % p]
    extra += ["-o", "ExitOnForwardFailure=no"]
    argv, e = env.ssh_argv(u0, "sleep 30", key=True, extra=extra, loglevel="DEBUG1")
    errpath = os.path.join(env.tmp, "forwards.err")
    with open(errpath, "wb") as errf:
        p = subprocess.Popen(argv, env=e, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=errf, start_new_session=True)
    try:
        def answers():
            text = dpenv.read_text(errpath)
            ok = re.findall(r"remote forward success for: listen 127\.0\.0\.1:(\d+)", text)
            bad = re.findall(r"remote port forwarding failed for listen port (\d+)", text)
            return (ok, bad) if len(ok) + len(bad) >= len(ports) else None
        got = dpenv.wait_until(answers, 20)
        reported_ok = sorted(int(x) for x in got[0]) if got else None
        reported_bad = sorted(int(x) for x in got[1]) if got else None
        not_listening = sorted(q for q in ports if dpenv.port_is_free(q))
        check(got is not None and reported_bad == not_listening,
              "ssh with 20 -R forwards: the ports it reports as failed are exactly those that "
              "do not listen", "reported failed %s, not listening %s (ports in request order "
              "%s)" % (reported_bad, not_listening, ports))
        check(reported_ok == sorted(ports) and not reported_bad and not not_listening,
              "... and all 20 are made (MAX_GLOBALS %d): reported as made, and they listen"
              % MAX_GLOBALS, "reported made %s, failed %s, not listening %s"
              % (reported_ok, reported_bad, not_listening))
    finally:
        kill_group(p)


# ---- 3 window abuse -----------------------------------------------------------------------------
def t_window(env):
    u0, u1 = env.users[:2]
    mark = env.log_offset()
    good = hostile_login(env, u0)  # an ordinary session opened before the abuse
    gch = good.open_session(timeout=10)
    gch.settimeout(10)
    gch.exec_command("cat")
    t = hostile_login(env, u1)
    try:
        gch.sendall(b"ping1\n")
        first = gch.recv(100)
        chan = t.open_session(timeout=10)
        # paramiko answers a CLOSE from its reading thread, whose write then fails on the reset
        # and ends the thread before it reads the DISCONNECT queued behind the CLOSE
        t.no_close.add(chan.chanid)
        chan.exec_command("sleep 60")  # never reads its stdin: the window closes
        rss = RssPeak(env.proxy_pid)
        box = {}
        side = threading.Thread(target=lambda: box.update(r=login_ok(env, u0, key=True)))
        side.start()
        total = 96 * MiB
        sent = blast(t, chan, total)
        closed = t.wait_closed(30)
        grown = rss.stop()
        side.join(30)
        check(closed and sent < 64 * MiB,
              "a client sending past the window is disconnected before %s of %s is accepted "
              "(sent %s)" % (mib(64 * MiB), mib(total), mib(sent)), "closed=%s" % closed)
        err = stderr_text(chan)
        check(t.disconnect == "protocol violation" and "protocol violation" in err,
              "the client is told why: 'protocol violation' on the channel's stderr and in "
              "the DISCONNECT", "stderr %r, DISCONNECT %r" % (err, t.disconnect))
        check_logged_end(env, mark, u1, "peer ignores the channel window")
        bound = rss_bound(env.proxy_pid, 48 * MiB)
        check(grown < bound, "proxy RSS during the abuse: +%s (< %s; HARD_CAP %s)"
              % (mib(grown), mib(bound), mib(HARD_CAP)))
        ok, secs, r = box.get("r", (False, 0, "no result"))
        check(ok and secs < login_budget(env), "a login during the abuse succeeds (%.2fs < %.1fs)"
              % (secs, login_budget(env)), r)
        gch.sendall(b"ping2\n")
        second = gch.recv(100)
        check(first == b"ping1\n" and second == b"ping2\n",
              "a session opened before the abuse still echoes", (first, second))
    finally:
        t.close()
        good.close()


# ---- 4 a peer that never closes -----------------------------------------------------------------
def half_closed(env, user):
    """A connection whose session channel ran `true` and got the proxy's CLOSE, never
    answered. Returns (transport, channel, CLOSE seen, monotonic time it was seen)."""
    t = hostile_login(env, user)
    chan = t.open_session(timeout=10)
    t.no_close.add(chan.chanid)
    chan.exec_command("true")
    got = t.wait(lambda: t.count(MSG_CHANNEL_CLOSE, chan.chanid) >= 1, 15)
    return t, chan, got, time.monotonic()


def ended_on_time(t, since):
    """(t's connection ended PAIR_CLOSE_WAIT_MS after `since`, give or take, and how many
    seconds after `since` it did)."""
    t.wait(lambda: t.ended_at is not None, max(0.0, since + PAIR_CLOSE_WAIT_S + 20 -
                                                time.monotonic()))
    took = (t.ended_at or time.monotonic()) - since
    return t.ended_at is not None and PAIR_CLOSE_WAIT_S - 1 <= took <= PAIR_CLOSE_WAIT_S + 15, took


def t_no_close(env):
    u1, u2 = env.users[1:3]
    mark = env.log_offset()
    quiet = t = None
    try:
        # the same, but silent afterwards (the deadline needs no traffic: a channel timer)
        quiet, _, quiet_got, quiet_close = half_closed(env, u2)
        t, chan, got, t_close = half_closed(env, u1)
        check(got and t.count(MSG_CHANNEL_EOF, chan.chanid) == 1 and chan.exit_status_ready()
              and chan.recv_exit_status() == 0,
              "`true` ended: exit status 0, EOF and CLOSE reach the client (which never "
              "answers the CLOSE)", t.inbox[-5:])
        # Keep sending on the half-closed channel (the proxy drops it), and use the connection.
        rss = RssPeak(env.proxy_pid)
        data = msg(cMSG_CHANNEL_DATA, chan.remote_chanid, b"z" * CHUNK)
        dripped = 0
        second = None
        while t.is_active() and time.monotonic() - t_close < PAIR_CLOSE_WAIT_S + 20:
            for _ in range(8):
                if t.send(data):
                    dripped += CHUNK
            if second is None and time.monotonic() - t_close > 2:
                c2 = t.open_session(timeout=10)
                c2.settimeout(10)
                c2.exec_command("echo second")
                second = c2.makefile("rb").read()
                second_rc = c2.recv_exit_status()
            t.wait(lambda: not t.is_active(), 0.25)
        grown = rss.stop()
        on_time, took = ended_on_time(t, t_close)
        check(second == b"second\n" and second_rc == 0,
              "meanwhile another channel of the same connection works", second)
        check(on_time and t.disconnect == "protocol violation",
              "the connection ends with DISCONNECT 'protocol violation' %.1f s after the CLOSE "
              "(PAIR_CLOSE_WAIT_MS %d s)" % (took, PAIR_CLOSE_WAIT_S),
              "ended=%s disconnect=%r" % (t.ended_at is not None, t.disconnect))
        check_logged_end(env, mark, u1, "a peer did not close a channel")
        bound = rss_bound(env.proxy_pid, 12 * MiB)
        check(grown < bound and dripped >= 16 * MiB,
              "data sent on the half-closed channel is dropped: %s sent, proxy RSS +%s "
              "(< %s)" % (mib(dripped), mib(grown), mib(bound)))
        on_time, took = ended_on_time(quiet, quiet_close)
        warned = re.search(r"user=%s .*ending the connection: a peer did not close a channel"
                           % re.escape(u2.name), env.log()[mark:])
        check(quiet_got and on_time and warned,
              "a peer that stays silent after not answering is cut off at the deadline too "
              "(no traffic needed): closed %.1f s after its CLOSE, the warning logged" % took,
              "ended=%s; %s" % (quiet.ended_at is not None, dpenv.tail(env.logfile, 6)))
        ends = env.wait_events("session_end", after=mark, user=u2.name)
        check(quiet.disconnect == "protocol violation" and
              [e.get("reason") for e in ends] == ["a peer did not close a channel"],
              "the silent peer is told why as well: DISCONNECT 'protocol violation' (sent at "
              "once, not given up after the 2 s flush bound)", "DISCONNECT %r; session_end %s"
              % (quiet.disconnect, [e["_line"] for e in ends]))
    finally:
        for x in (t, quiet):
            if x is not None:
                x.close()


# ---- 5 more from the review list ----------------------------------------------------------------
def kbdint_request(name):
    return msg(cMSG_USERAUTH_REQUEST, name, "ssh-connection", "keyboard-interactive", "", "")


def info_requests(t):
    """The prompts of each INFO_REQUEST received so far (a list per request)."""
    out = []
    with t.cond:
        msgs = [Message(m.asbytes()) for p, _, m in t.inbox if p == MSG_USERAUTH_INFO_REQUEST]
    for m in msgs:
        m.get_text(), m.get_text(), m.get_text()  # name, instruction, language
        prompts = []
        for _ in range(m.get_int()):
            prompts.append(m.get_text())
            m.get_boolean()  # echo
        out.append(prompts)
    return out


def kbdint_prompt(t, timeout=15):
    """Wait for the relayed INFO_REQUEST; returns its first prompt ("" for none, None if it
    did not come)."""
    if not t.wait(lambda: t.count(MSG_USERAUTH_INFO_REQUEST) >= 1, timeout):
        return None
    prompts = info_requests(t)[0]
    return prompts[0] if prompts else ""


def kbdint_login(t, password, timeout=15):
    """Answer every INFO_REQUEST (PAM's password prompt, then OpenSSH's empty closing round)
    until the login succeeds or fails; True on USERAUTH_SUCCESS."""
    answered = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = len(t.inbox)
        if t.count(MSG_USERAUTH_SUCCESS) or t.count(MSG_USERAUTH_FAILURE):
            break
        reqs = info_requests(t)
        if len(reqs) > answered:
            n = len(reqs[answered])
            t.send(msg(cMSG_USERAUTH_INFO_RESPONSE, n, *([password] * n)))
            answered += 1
        else:
            t.wait(lambda: len(t.inbox) > seen, 0.5)
    return t.count(MSG_USERAUTH_SUCCESS) == 1


def t_review_more(env):
    u0, u1 = env.users[:2]

    # keyboard-interactive restarted mid-round
    mark = env.log_offset()
    t = Hostile(env.port)
    try:
        t.userauth_service()
        t.send(kbdint_request(u1.name))
        prompt = kbdint_prompt(t)
        t.send(kbdint_request(u1.name))  # a new round instead of the answer
        closed = t.wait_closed(30)
        check(prompt is not None and "assword" in prompt and closed and
              t.disconnect == TOO_MANY,
              "keyboard-interactive restarted while the backend's prompt is unanswered: "
              "DISCONNECT '%s'" % TOO_MANY, "prompt=%r closed=%s disconnect=%r"
              % (prompt, closed, t.disconnect))
        check(len(env.wait_events("session_end", after=mark, user=u1.name,
                                  reason="keyboard-interactive restarted mid-round")) == 1,
              "session_end reason=\"keyboard-interactive restarted mid-round\" is logged",
              dpenv.tail(env.logfile, 8))
    finally:
        t.close()
    t = Hostile(env.port)
    try:
        t.userauth_service()
        t.send(kbdint_request(u1.name))
        ok = kbdint_login(t, u1.password)
        check(ok, "the same round answered properly logs in (control)",
              "prompts %s, replies %s" % (info_requests(t), [p for p, _, _ in t.inbox]))
    finally:
        t.close()

    # extended data from the client: relayed as the command's stdin
    t = hostile_login(env, u0)
    try:
        for cmd, data, ext in (("wc -c", 0, 64 * KiB), ("sleep 1; wc -c", MiB, 6 * MiB)):
            chan = t.open_session(timeout=10)
            chan.settimeout(10)
            chan.exec_command(cmd)
            result = "?"
            try:
                chan.sendall(b"d" * data)
                chan.sendall_stderr(b"e" * ext)
                chan.shutdown_write()
                result = chan.makefile("rb").read().strip()
            except socket.timeout:
                result = "timed out after 10 s: the window stayed shut (%d bytes of window " \
                         "left)" % chan.out_window_size
            what = ("%s data + " % mib(data) if data else "") + "%s extended data" % mib(ext)
            check(result == str(data + ext).encode(),
                  "%s (within the window) to `%s`: relayed as stdin, the backend reads all %d "
                  "bytes" % (what, cmd, data + ext), result)
            chan.close()
    finally:
        t.close()

    # a signal in the same read as the exec it is meant for: libssh hands the signal to a
    # callback before the exec message is dispatched, so the proxy queues it behind the exec
    # and sends it once the backend has answered the exec. What happens then is sshd's: it
    # signals with killpg(child pid), and a child that has not yet reached its setsid() (right
    # after sshd's fork, OpenSSH session.c do_exec_no_pty) has no process group yet, so
    # sshd drops the signal and logs "session_signal_req: killpg(PID, 15): No such process".
    # A client connected directly meets the same race, and sooner (it does not wait for the
    # exec's reply). sshd's log tells the two apart: a signal that overtook its exec is
    # refused with "no pid for session"; one that came after it names the child's pid.
    t = hostile_login(env, u0)
    sshd_log = env.backends["web1"].sshd_log
    log_at = os.path.getsize(sshd_log)
    try:
        chan = t.open_session(timeout=10)
        t0 = time.monotonic()
        sent = t.burst([msg(cMSG_CHANNEL_REQUEST, chan.remote_chanid, "exec", True,
                            "exec sleep 5"),
                        msg(cMSG_CHANNEL_REQUEST, chan.remote_chanid, "signal", False, "TERM")])
        ended = chan.status_event.wait(15)
        took = time.monotonic() - t0
        with open(sshd_log, "rb") as fh:
            fh.seek(log_at)
            said = [ln for ln in fh.read().decode("utf-8", "replace").splitlines()
                    if "session_signal_req" in ln]
        killed = sent and ended and chan.exit_status == -1 and took < 5
        lost_by_sshd = any(re.search(r"killpg\(\d+, 15\): No such process", ln) for ln in said)
        overtook = any("no pid for session" in ln for ln in said)
        check(sent and ended and not overtook and (killed or lost_by_sshd),
              "exec `sleep 5` and signal TERM in one write: the signal reaches the backend "
              "after its exec (%s)" % (
                  "the command was killed after %.1f s" % took if killed else
                  "sshd lost it to its own fork/setsid race, as it would for a direct client: "
                  "killpg found no process group yet"),
              "sent=%s ended=%s exit_status=%s after %.1f s; backend sshd: %s"
              % (sent, ended, chan.exit_status, took, said[-6:]))
    finally:
        t.close()

    # data sent right behind its exec, while an env ahead of the exec waits for the backend's
    # reply: sshd drops data for a session that has no command yet, so the proxy must not
    # let the data overtake the exec
    t = hostile_login(env, u0)
    try:
        chan = t.open_session(timeout=10)
        sent = t.burst([env_req(chan, "DP_PIPE", "1"),
                        msg(cMSG_CHANNEL_REQUEST, chan.remote_chanid, "exec", True,
                            "wc -c; echo $DP_PIPE"),
                        msg(cMSG_CHANNEL_DATA, chan.remote_chanid, b"p" * 30000),
                        msg(cMSG_CHANNEL_EOF, chan.remote_chanid)])
        m, buf = read_until(chan, rb"(\d+)\s+(\S+)\s", timeout=10)
        check(sent and m is not None and m.group(1) == b"30000" and m.group(2) == b"1",
              "env (reply due), exec and 30000 bytes of stdin + EOF in one write: the command "
              "gets the variable and all the bytes", buf[-200:])
    finally:
        t.close()

    # extended data past the window: the same cap as section 3
    mark = env.log_offset()
    t = hostile_login(env, u1)
    try:
        chan = t.open_session(timeout=10)
        chan.exec_command("sleep 60")
        sent = blast(t, chan, 96 * MiB, ext=True)
        closed = t.wait_closed(30)
        check(closed and sent < 64 * MiB and
              len(env.wait_events("session_end", after=mark, user=u1.name,
                                  reason="peer ignores the channel window")) == 1,
              "extended data past the window: cut off and logged like data (sent %s)"
              % mib(sent), "closed=%s" % closed)
    finally:
        t.close()
    ok, secs, r = login_ok(env, u0, key=True)
    check(ok, "a normal login afterwards works", r)


TESTS = [
    ("1 auth-request flood", t_auth_flood),
    ("2 request queues", t_request_queues),
    ("3 window abuse", t_window),
    ("4 peer never closes", t_no_close),
    ("5 kbdint restart, extended data", t_review_more),
]


def main(argv):
    if paramiko is None:
        check(False, "python3-paramiko is not installed for %s" % sys.executable)
        return check.finish()
    # paramiko logs the resets this suite provokes; the checks say what matters
    logging.getLogger("paramiko").addHandler(logging.NullHandler())
    logging.getLogger("paramiko").propagate = False
    asan_small_quarantine()
    return SshProxyEnv.run_suite(check, "test_sshproxy_hostile", TESTS, argv, {"nusers": 3})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
