#!/usr/bin/python3
"""e2e.ftpproxy: the FTP reverse proxy against real FTP clients and vsftpd backends.

Private PostgreSQL with the default schema, backends web1 and web2 (vsftpd), the pgsql hook,
build/ftpproxy/ftpproxy, real clients: Python ftplib, curl, lftp (fixture:
tests/harness/ftpproxy_env.py; behaviour: docs/ftpproxy.md). Sections,
each a list of checks that can fail:

   1 greeting and the commands before login (FEAT SYST NOOP HOST OPTS AUTH QUIT, PASS before
     USER 503, others 530)
   2 login: 331 for every user, wrong password and unknown user indistinguishable (text and
     time), a retry on the same connection, max_login_attempts -> 421 + close
   3 routing: logins land on the route's backend; USER after login is refused; a route moved
     in PostgreSQL is followed by the next login without a proxy restart
   4 maintenance -> "421 <message>" + close; off again -> login works
   5 unavailable backends: stopped, silent, PostgreSQL down -> 421 + close within seconds
   6 data: PASV, EPSV, PORT and EPRT each for LIST, NLST, MLSD, RETR, STOR, APPE (ftplib,
     byte-equal to the backend), curl in the four modes, lftp passive and active
   7 20 sequential transfers on one control connection, sha256 each
   8 REST: ftplib REST+RETR, curl -C - download and upload resume
   9 ABOR mid-RETR via ftplib (data connection closed first / still open), then a transfer
  10 STAT during a transfer: answered, the transfer completes
  11 PORT/EPRT to another IP or a port < 1024 refused, malformed 501, EPRT af 3 522,
     EPSV ALL then PORT/PASV/EPRT 503, LPRT/LPSV 502
  12 a passive data connection from another source address (127.0.0.2) is refused while the
     real client completes
  13 over-long and binary-garbage command lines answered, the session survives
  14 logfmt lines: session_start, login, transfer (RETR/STOR/LIST), session_end, login_fail
  15 limits and timeouts (proxy restarted with short values): login timeout, idle timeout,
     a slow transfer outlives the idle timeout, max_sessions_per_ip, masquerade_address,
     SIGTERM with a session open
  16 backend_passive = false (EPRT/PORT toward the backend) under the four client modes
  17 a passive range of 10 ports serves 40 downloads in a row (ports reusable at once)
  18 ftp.data_sndbuf: below 64 KiB refused by the config check; the RETR socket's send
     buffer is the configured size; a value over net.core.wmem_max is capped with one
     warning; sha256 equal either way
  19 (final, implicit) SIGTERM: ftpproxy exits 0

Run by ctest (label e2e) or directly as root:
    PYTHONPATH=tests/harness /usr/bin/python3 tests/e2e/test_ftpproxy.py [section numbers...]
DP_FTPPROXY_SELFTEST=web1 runs the client side against web1's vsftpd (see ftpproxy_env.py).
"""

import ftplib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))
import dpenv  # noqa: E402
from checks import Checks  # noqa: E402
from daemon import run_check  # noqa: E402
from ftpproxy_env import (DEFAULT_FTP_CONF, FTPPROXY, MODES, FtpProxyEnv, close_ftp,  # noqa: E402
                          code, data_transfer, recv_all, reply)

check = Checks()
KiB = 1 << 10
MiB = 1 << 20
LOGIN_INCORRECT = "530 Login incorrect."
CURL_MODE = {"PASV": ["--disable-epsv"], "EPSV": [], "PORT": ["-P", "-", "--disable-eprt"],
             "EPRT": ["-P", "-"]}


def sha(data):
    return hashlib.sha256(data).hexdigest()


def note(msg, *args):
    dpenv.log(msg, *args)


def backend_of(env, user, mode="EPSV"):
    """Log in as user and RETR BACKEND: the backend's name, or what went wrong."""
    try:
        f = env.ftp(user)
    except (OSError, EOFError, ftplib.Error) as e:
        return "login failed: %r" % e
    try:
        x = data_transfer(f, mode, "RETR BACKEND")
        return x.data.decode("latin-1").strip() if x.ok else repr(x)
    finally:
        close_ftp(f)


def drain_until_closed(sock, seconds):
    """Read until EOF or reset: (closed, bytes read, seconds taken)."""
    sock.settimeout(seconds)
    t0 = time.monotonic()
    got = b""
    deadline = t0 + seconds
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            b = sock.recv(65536)
            if not b:
                return True, got, time.monotonic() - t0
            got += b
    except (socket.timeout, TimeoutError):
        return False, got, time.monotonic() - t0
    except OSError:
        return True, got, time.monotonic() - t0
    return False, got, time.monotonic() - t0


def client_addr(f):
    """"ip:port" of our end of a control connection: what the proxy logs as client=."""
    return "%s:%d" % f.sock.getsockname()[:2]


def raw_connect(env, source=None, timeout=10):
    """A plain TCP connection to the proxy: (socket, greeting bytes)."""
    s = socket.create_connection(("127.0.0.1", env.port), timeout=timeout,
                                 source_address=(source, 0) if source else None)
    greet = b""
    try:
        while not greet.endswith(b"\n"):
            b = s.recv(4096)
            if not b:
                break
            greet += b
    except OSError:
        pass
    return s, greet


def try_reply(f, line):
    """reply() that returns the exception text instead of raising."""
    try:
        return reply(f, line)
    except (OSError, EOFError, ftplib.Error, ValueError) as e:
        return "<%s: %r>" % (type(e).__name__, e)


def still_works(f, mode="EPSV"):
    """NOOP and a RETR BACKEND on f: (True, detail) when the session is usable."""
    r = try_reply(f, "NOOP")
    if code(r) != 200:
        return False, "NOOP -> %r" % r
    x = data_transfer(f, mode, "RETR BACKEND")
    return x.ok and x.data.strip() in (b"web1", b"web2"), repr(x)


# ---- 1 greeting and the commands before login -------------------------------------------------
def t_prelogin(env):
    if not env.selftest:
        rc, out = run_check(FTPPROXY, env.config)
        check(rc == 0, "ftpproxy -t accepts the test configuration", out)
    f = env.ftp()
    try:
        want = "220 " + env.conf["greeting"]
        check(f.welcome == want, "greeting is %r" % want, repr(f.welcome))
        r = try_reply(f, "FEAT")
        check(r.startswith("211-") and r.splitlines()[-1].startswith("211 ")
              and len(r.splitlines()) >= 2, "FEAT before login: 211 multi-line", repr(r))
        for line, want_code, text in (("SYST", 215, "215 UNIX Type: L8"), ("NOOP", 200, None),
                                      ("HOST ftp.example.com", 220, None),
                                      ("OPTS UTF8 ON", 200, None), ("AUTH TLS", 502, None),
                                      ("PWD", 530, None),
                                      ("LIST", 530, None), ("CWD /", 530, None),
                                      ("RETR BACKEND", 530, None), ("SITE HELP", 530, None)):
            r = try_reply(f, line)
            ok = code(r) == want_code and (text is None or r.strip() == text)
            check(ok, "before login: %s -> %s" % (line, text or want_code), repr(r))
        r = try_reply(f, "QUIT")
        closed, _, _ = drain_until_closed(f.sock, 10)
        check(code(r) == 221 and closed, "QUIT -> 221 and the connection is closed",
              "%r closed=%s" % (r, closed))
    finally:
        close_ftp(f)
    f = env.ftp(timeout=5)
    try:
        r = try_reply(f, "PASS secret")
        n = try_reply(f, "NOOP")
        u = env.users[0]
        r1, r2 = try_reply(f, "USER " + u.name), try_reply(f, "PASS " + u.password)
        check(code(r) == 503 and code(n) == 200 and code(r1) == 331 and code(r2) == 230,
              "before login: PASS before USER -> 503, then NOOP -> 200 and a login works",
              "%r, NOOP %r, USER %r, PASS %r" % (r, n, r1, r2))
    finally:
        close_ftp(f)


# ---- 2 login ------------------------------------------------------------------------------------
def login_fail(env, user, password):
    """USER/PASS on a fresh connection: (USER reply, PASS reply, seconds of PASS, f)."""
    f = env.ftp()
    r1 = try_reply(f, "USER " + user)
    t0 = time.monotonic()
    r2 = try_reply(f, "PASS " + password)
    return r1, r2, time.monotonic() - t0, f


def t_login(env):
    u0 = env.users[0]
    unknown = "dpt_nx" + os.urandom(3).hex()
    prompt = "331 " + env.conf["password_prompt"]
    off = env.log_offset()
    with ThreadPoolExecutor(2) as pool:
        fw = pool.submit(login_fail, env, u0.name, u0.password + "x")
        fu = pool.submit(login_fail, env, unknown, u0.password)
        (w1, w2, wt, wf), (n1, n2, nt, nf) = fw.result(), fu.result()
    clients = [client_addr(wf), client_addr(nf)]
    try:
        check(w1 == prompt and n1 == prompt, "USER -> %r for a known and an unknown user" % prompt,
              "known: %r unknown: %r" % (w1, n1))
        check(w2 == LOGIN_INCORRECT, "wrong password -> %r" % LOGIN_INCORRECT, repr(w2))
        check(n2 == LOGIN_INCORRECT, "unknown user -> %r (same as a wrong password)"
              % LOGIN_INCORRECT, repr(n2))
        lo, hi = sorted((wt, nt))
        check(lo >= 0.5 and hi <= 2 * lo + 3.0,
              "wrong password and unknown user take about as long (%.1fs vs %.1fs)" % (wt, nt))
        for what, f in (("wrong password", wf), ("unknown user", nf)):
            r1 = try_reply(f, "USER " + u0.name)
            r2 = try_reply(f, "PASS " + u0.password)
            ok, detail = still_works(f) if code(r2) == 230 else (False, "")
            check(r1 == prompt and code(r2) == 230 and ok,
                  "after a failed login (%s) the right password logs in on the same connection"
                  % what, "%r %r %s" % (r1, r2, detail))
    finally:
        close_ftp(wf)
        close_ftp(nf)
    if not env.selftest:
        ev = env.wait_events("login_fail", after=off, user=unknown)
        check([e.get("reason") for e in ev] == ["unknown_user"],
              "event=login_fail user=<unknown> reason=unknown_user logged once",
              [e["_line"] for e in ev])
        ev = env.wait_events("login_fail", after=off, user=u0.name, client=clients[0])
        check(len(ev) == 1 and ev[0].get("reason") == "backend",
              "event=login_fail user=<known> reason=backend for the wrong password",
              [e["_line"] for e in ev])
        ev = [e for c in clients for e in env.wait_events("login", after=off, client=c)]
        check(len(ev) == 2 and all(e.get("backend") == "web1" and e.get("sid")
                                   and e.get("user") == u0.name for e in ev),
              "event=login sid user backend=web1 for each successful login",
              [e["_line"] for e in ev])

    # max_login_attempts: the third failed PASS ends the connection with a 421
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(too_many_attempts, env, who, pw)
                for who, pw in ((u0.name, "wrong-" + os.urandom(2).hex()), (unknown, "whatever"))]
        for who, fut in zip(("known user", "unknown user"), runs):
            replies, rest, closed = fut.result()
            fails = [r for r in replies if r == LOGIN_INCORRECT]
            got421 = any(code(r) == 421 for r in replies) or rest.startswith(b"421")
            check(len(fails) in (2, 3) and got421 and closed,
                  "max_login_attempts=3 (%s): 530 twice, then 421 and the connection closed"
                  % who, "replies %r, then %r, closed=%s" % (replies, rest[:200], closed))


def too_many_attempts(env, who, pw):
    """USER/PASS with a wrong password until the connection ends (at most max + 1 rounds):
    (the replies, what came after them, whether the connection was closed)."""
    f = env.ftp()
    replies = []
    try:
        for _ in range(env.conf["max_login_attempts"] + 1):
            for line in ("USER " + who, "PASS " + pw):
                replies.append(try_reply(f, line))
                if replies[-1].startswith("<"):
                    break
            if replies[-1].startswith("<") or code(replies[-1]) == 421:
                break
        closed, rest, _ = drain_until_closed(f.sock, 10)
    finally:
        close_ftp(f)
    return replies, rest, closed


# ---- 3 routing ----------------------------------------------------------------------------------
def t_routing(env):
    u0, u1, u2 = env.users[:3]
    for u, name in ((u0, "web1"), (u2, "web2")):
        got = backend_of(env, u)
        check(got == name, "a user routed to %s lands on %s" % (name, name), got)
    try:
        f = env.ftp(u0)
        try:
            r1, r2 = try_reply(f, "USER " + u2.name), try_reply(f, "PASS " + u2.password)
            x = data_transfer(f, "EPSV", "RETR BACKEND")
        finally:
            close_ftp(f)
        check(code(r1) == 530 and x.ok and x.data.strip() == b"web1",
              "USER after login -> 530: the session stays the routed user's, on web1",
              "USER %r, PASS %r, %s" % (r1, r2, x))
    except (OSError, EOFError, ftplib.Error) as e:
        check(False, "USER after login -> 530", repr(e))
    pid = env.proxy_pid
    first = backend_of(env, u1)
    check(first == "web1", "the mover logs in on web1 before the move", first)
    env.put_data("web2", u1, "only-on-web2.txt", b"web2 file\n")
    env.move(u1, "web2")
    t0 = time.monotonic()
    seen = []
    while True:    # NOTIFY should make the first try land; the cache TTL bounds it anyway
        seen.append(backend_of(env, u1))
        if seen[-1] == "web2" or time.monotonic() - t0 > 20.0:
            break
        time.sleep(0.2)
    check(seen[-1] == "web2" and env.proxy_pid == pid,
          "after dynproxy.move_user the next login lands on web2, no proxy restart",
          "logins saw %s" % seen)
    if len(seen) > 1:
        note("move followed only after %d logins (%.1fs): NOTIFY not used?", len(seen),
             time.monotonic() - t0)
    try:
        f = env.ftp(u1)
        try:
            x = data_transfer(f, "PASV", "NLST")
        finally:
            close_ftp(f)
        check(x.ok and b"only-on-web2.txt" in x.data.split(b"\r\n"),
              "the moved user sees web2's home", x)
    except (OSError, EOFError, ftplib.Error) as e:
        check(False, "the moved user sees web2's home", repr(e))
    env.move(u1, "web1", settle=True)


# ---- 4 maintenance ------------------------------------------------------------------------------
def t_maintenance(env):
    u2 = env.users[2]
    msg = "dp-maint-%s: web2 is being upgraded, back at 14:00" % os.urandom(3).hex()
    off = env.log_offset()
    env.set_maintenance("web2", msg)
    try:
        f = env.ftp()
        me = client_addr(f)
        try:
            r = try_reply(f, "USER " + u2.name)
            closed, rest, _ = drain_until_closed(f.sock, 10)
        finally:
            close_ftp(f)
        check(r == "421 " + msg and closed and not rest,
              "maintenance: USER -> '421 <route message>' (one line) and the connection closed",
              "%r then %r closed=%s" % (r, rest, closed))
        if not env.selftest:
            check(bool(env.wait_events("session_end", after=off, client=me)),
                  "the refused session still logs session_end", dpenv.tail(env.logfile, 5))
    finally:
        env.set_maintenance("web2", None)
    got = backend_of(env, u2)
    check(got == "web2", "maintenance off: the user logs in on web2 again", got)


# ---- 5 unavailable backends ---------------------------------------------------------------------
def refused_at_user(env, user, what, within):
    """USER on a fresh connection must get a single 421 line and a close within `within` s."""
    t0 = time.monotonic()
    try:
        f = env.ftp(timeout=within + 5)
    except (OSError, EOFError, ftplib.Error) as e:
        check(False, "%s: 421 at USER" % what, "connect: %r" % e)
        return
    try:
        r = try_reply(f, "USER " + env._name(user))
        closed, rest, _ = drain_until_closed(f.sock, 10)
    finally:
        close_ftp(f)
    took = time.monotonic() - t0
    check(code(r) == 421 and "\n" not in r and closed and not rest and took < within,
          "%s: USER -> 421 (one line) and the connection closed in < %d s" % (what, within),
          "%r then %r closed=%s (%.1fs)" % (r, rest, closed, took))


def t_unavailable(env):
    u2 = env.users[2]
    be = env.backends["web2"]
    be.stop()
    silent = None
    try:
        refused_at_user(env, u2, "stopped backend", 10)
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)     # accepts (kernel backlog) but never says a word
        env.set_backend_port("web2", silent.getsockname()[1])
        env.conf["backend_reply_timeout_ms"] = 2000
        env.restart_proxy()
        off = env.log_offset()
        refused_at_user(env, u2, "silent backend (no 220 greeting), backend_reply_timeout_ms="
                        "2000", 2 + 10)
        if not env.selftest:
            ev = env.wait_events("backend_fail", after=off, user=u2.name, count=1)
            check([e.get("reason") for e in ev] == ["backend greeting timeout"],
                  "the log says why: event=backend_fail reason=\"backend greeting timeout\"",
                  [e["_line"] for e in ev])
    finally:
        if silent is not None:
            silent.close()
            env.set_backend_port("web2", None)
        env.conf["backend_reply_timeout_ms"] = DEFAULT_FTP_CONF["backend_reply_timeout_ms"]
        env.restart_proxy()
        be.start()
    got = backend_of(env, u2)
    check(got == "web2", "backend back up: the user logs in on web2 again", got)
    env.pg.stop("fast")
    try:
        time.sleep(1.2)      # past the cache TTL
        refused_at_user(env, "dpt_nx" + os.urandom(3).hex(),
                        "PostgreSQL down, an uncached user", 10)
    finally:
        env.pg.start()


# ---- 6 data connections -------------------------------------------------------------------------
def passive_ok(env, x):
    """The PASV/EPSV reply names the control connection's address and a port of the range."""
    lo, hi = env.pasv_range
    return x.addr is not None and x.addr[0] == "127.0.0.1" and lo <= x.addr[1] <= hi


def t_data(env):
    u = env.users[0]
    tag = os.urandom(3).hex()
    listed = "list-%s.txt" % tag
    content = env.put_random("web1", u, listed, 300 * KiB + 7)
    ldir = "listdir-%s" % tag           # stays as it is: listings compare byte for byte
    for i in range(5):
        env.put_data("web1", u, "%s/f%d-%s.txt" % (ldir, i, tag), os.urandom(i * 1000))
    d = env.direct("web1", u)
    try:
        ref = {}
        for cmd in ("LIST", "NLST"):
            x = data_transfer(d, "PASV", "%s %s" % (cmd, ldir))
            ref[cmd] = x.data if x.ok else None
        ref["MLSD"] = try_reply(d, "MLSD")      # vsftpd 3.0.3 has no MLSD: "500 Unknown command."
    finally:
        close_ftp(d)
    check(ref["LIST"] and ref["NLST"] and ("f4-%s.txt" % tag).encode() in ref["LIST"],
          "reference LIST and NLST straight from web1", ref)
    f = env.ftp(u)
    try:
        check(code(try_reply(f, "TYPE I")) == 200, "TYPE I -> 200")
        for mode in MODES:
            x = data_transfer(f, mode, "LIST " + ldir)
            if mode in ("PASV", "EPSV"):
                check(passive_ok(env, x), "%s names 127.0.0.1 and a port in %s" %
                      (mode, env.pasv_range), x.setup)
            check(x.ok and x.data == ref["LIST"], "%s LIST: 226, byte-equal to web1's" % mode, x)
            x = data_transfer(f, mode, "NLST " + ldir)
            check(x.ok and x.data == ref["NLST"], "%s NLST: 226, byte-equal to web1's" % mode, x)
            x = data_transfer(f, mode, "MLSD")
            same = x.prelim.strip() == ref["MLSD"].strip() if code(ref["MLSD"]) >= 400 \
                else x.ok and listed.encode() in x.data
            ok, detail = still_works(f, mode)
            check(same and ok, "%s MLSD: the backend's answer (%r), the session goes on"
                  % (mode, ref["MLSD"].strip()), "%s / %s" % (x, detail))
            x = data_transfer(f, mode, "RETR " + listed)
            check(x.ok and sha(x.data) == sha(content),
                  "%s RETR: 226, 300 KiB sha256 equal" % mode, x)
            name = "stor-%s-%s.bin" % (mode, tag)
            up1, up2 = os.urandom(200 * KiB + 3), os.urandom(100 * KiB + 1)
            x = data_transfer(f, mode, "STOR " + name, upload=up1)
            got = env.get_data("web1", u, name)
            check(x.ok and got is not None and sha(got) == sha(up1),
                  "%s STOR: 226, the file on web1 has the same sha256" % mode,
                  "%s; on web1: %s bytes" % (x, None if got is None else len(got)))
            x = data_transfer(f, mode, "APPE " + name, upload=up2)
            got = env.get_data("web1", u, name)
            check(x.ok and got is not None and sha(got) == sha(up1 + up2),
                  "%s APPE: 226, the file on web1 is STOR + APPE" % mode,
                  "%s; on web1: %s bytes" % (x, None if got is None else len(got)))
    finally:
        close_ftp(f)
    curl_matrix(env, u, listed, content, ref, ldir, tag)
    lftp_basic(env, u, listed, content, tag)


def curl_matrix(env, u, listed, content, ref, ldir, tag):
    local = os.path.join(env.tmp, "curl-%s.bin" % tag)
    up = os.path.join(env.tmp, "curl-up-%s.bin" % tag)
    up_data = os.urandom(256 * KiB + 5)
    more = os.urandom(64 * KiB)
    with open(up, "wb") as fh:
        fh.write(up_data)
    for mode in MODES:
        opts = ["-v"] + CURL_MODE[mode]
        saw = lambda r, m=mode: ("> %s" % m).encode() in r.err   # noqa: E731 - curl -v trace
        if os.path.exists(local):
            os.unlink(local)
        r = env.curl(u, opts + ["-o", local, env.url(listed)], binary=True)
        got = dpenv.sha256_file(local) if os.path.exists(local) else None
        check(r.rc == 0 and saw(r) and got == sha(content),
              "curl %s download: sha256 equal" % mode, r)
        r = env.curl(u, opts + [env.url(ldir + "/")], binary=True)
        check(r.rc == 0 and saw(r) and r.out.split(b"\n") == ref["LIST"].split(b"\r\n"),
              "curl %s LIST: equal to web1's (curl ends lines with LF)" % mode, r)
        r = env.curl(u, opts + ["-l", env.url(ldir + "/")], binary=True)
        names = [n.rsplit(b"/", 1)[-1] for n in ref["NLST"].split()]
        check(r.rc == 0 and saw(r) and r.out.split() == names,
              "curl %s NLST: the names web1 lists" % mode, r)
        name = "curl-%s-%s.bin" % (mode, tag)
        r = env.curl(u, opts + ["-T", up, env.url(name)], binary=True)
        got = env.get_data("web1", u, name)
        check(r.rc == 0 and saw(r) and got is not None and sha(got) == sha(up_data),
              "curl %s upload (STOR): sha256 equal on web1" % mode, r)
        with open(local, "wb") as fh:
            fh.write(more)
        r = env.curl(u, opts + ["--append", "-T", local, env.url(name)], binary=True)
        got = env.get_data("web1", u, name)
        check(r.rc == 0 and b"> APPE" in r.err and got is not None
              and sha(got) == sha(up_data + more),
              "curl %s --append (APPE): web1 has upload + append" % mode, r)


def lftp_basic(env, u, listed, content, tag):
    work = os.path.join(env.tmp, "lftp-%s" % tag)
    os.makedirs(work)
    up_data = os.urandom(512 * KiB + 9)
    with open(os.path.join(work, "up.bin"), "wb") as fh:
        fh.write(up_data)
    for passive, epsv in ((True, False), (True, True), (False, False)):
        how = "EPSV" if epsv else ("PASV" if passive else "PORT")
        name = "lftp-%s-%s.bin" % (how, tag)
        got_path = os.path.join(work, "got-%s.bin" % how)
        r = env.lftp(u, "debug 5; get %s -o %s; put up.bin -o %s; cls -1"
                     % (listed, got_path, name), passive=passive, cwd=work,
                     settings=["set ftp:prefer-epsv %s" % ("yes" if epsv else "no")])
        got = env.get_data("web1", u, name)
        ok = (r.rc == 0 and os.path.exists(got_path)
              and dpenv.sha256_file(got_path) == sha(content)
              and got is not None and sha(got) == sha(up_data) and listed in r.out.split())
        check(ok and ("---> %s" % how) in r.err,
              "lftp (%s): get, put, cls; sha256 equal both ways" % how,
              "%s; got %s" % (r, None if got is None else len(got)))


# ---- 7 twenty transfers on one control connection ------------------------------------------------
def t_sequential(env):
    u = env.users[0]
    off = env.log_offset()
    f = env.ftp(u)
    me = client_addr(f)
    bad = []
    try:
        reply(f, "TYPE I")
        for i in range(20):
            mode = MODES[i % 4]
            name = "seq-%02d.bin" % (i // 2)
            if i % 2 == 0:
                data = os.urandom((i * 37 * KiB) % (700 * KiB))   # the first one is empty
                x = data_transfer(f, mode, "STOR " + name, upload=data)
                got = env.get_data("web1", u, name)
                if not x.ok or got is None or sha(got) != sha(data):
                    bad.append("%d %s: %s on web1 %s" % (i, mode, x, None if got is None
                                                        else len(got)))
            else:
                x = data_transfer(f, mode, "RETR " + name)
                if not x.ok or sha(x.data) != sha(data):
                    bad.append("%d %s: %s" % (i, mode, x))
        ok, detail = still_works(f)
    finally:
        close_ftp(f)
    check(not bad, "20 transfers (10 STOR + 10 RETR, all four modes, one empty file) on one "
          "control connection: sha256 equal each", "\n".join(bad))
    check(ok, "the control connection still works after 20 transfers", detail)
    if not env.selftest:
        ends = env.wait_events("session_end", after=off, client=me)
        sid = ends[0].get("sid") if ends else None
        xs = [e for e in env.events("transfer", after=off, sid=sid)
              if e.get("cmd") in ("STOR", "RETR")] if sid else []
        check(len(xs) == 21 and all(e.get("result") == "226" for e in xs),
              "21 event=transfer lines (20 + the check's RETR) with result=226 for the session",
              "%d lines: %s" % (len(xs), [e["_line"] for e in xs][:3]))


# ---- 8 REST -------------------------------------------------------------------------------------
def t_rest(env):
    u = env.users[0]
    data = env.put_random("web1", u, "rest.bin", MiB + 123)
    f = env.ftp(u)
    try:
        reply(f, "TYPE I")
        for mode in ("PASV", "PORT"):
            x = data_transfer(f, mode, "RETR rest.bin", rest=300001)
            check(x.ok and x.data == data[300001:],
                  "ftplib %s REST 300001 + RETR: the rest of the file, byte-equal" % mode, x)
    finally:
        close_ftp(f)
    local = os.path.join(env.tmp, "rest-local.bin")
    with open(local, "wb") as fh:
        fh.write(data[:400000])
    r = env.curl(u, ["-v", "-C", "-", "-o", local, env.url("rest.bin")])
    check(r.rc == 0 and "> REST 400000" in r.err and dpenv.sha256_file(local) == sha(data),
          "curl -C - download resumes at 400000 (REST), the whole file sha256 equal", r)
    up = os.path.join(env.tmp, "rest-up.bin")
    with open(up, "wb") as fh:
        fh.write(data)
    env.put_data("web1", u, "rest-up.bin", data[:500000])
    r = env.curl(u, ["-v", "-C", "-", "-T", up, env.url("rest-up.bin")])
    got = env.get_data("web1", u, "rest-up.bin")
    check(r.rc == 0 and "> APPE" in r.err and got is not None and sha(got) == sha(data),
          "curl -C - upload resumes (SIZE + APPE), the whole file sha256 equal on web1",
          "%s; on web1 %s bytes" % (r, None if got is None else len(got)))


# ---- 9 ABOR -------------------------------------------------------------------------------------
def t_abor(env):
    u = env.users[0]
    big = env.put_random("web1", u, "abor.bin", 64 * MiB)
    for close_first, what in ((True, "data connection closed first (as lftp and curl do)"),
                              (False, "data connection still open (abort() inside a "
                                      "retrbinary callback)")):
        f = env.ftp(u)
        try:
            reply(f, "TYPE I")
            conn = f.transfercmd("RETR abor.bin")
            got = conn.recv(64 * KiB)
            t0 = time.monotonic()
            if close_first:
                conn.close()
            try:
                first = f.abort()       # ABOR with MSG_OOB, like ftplib always sends it
            except (OSError, EOFError, ftplib.Error) as e:
                first = "<%s: %r>" % (type(e).__name__, e)
            second = ""
            if code(first) == 426:
                try:
                    second = f.getmultiline()
                except (OSError, EOFError) as e:
                    second = "<%s: %r>" % (type(e).__name__, e)
            took = time.monotonic() - t0
            conn.close()
            check(len(got) > 0 and code(first) == 426 and code(second) in (225, 226)
                  and took < 15,
                  "ABOR mid-RETR, %s: 426 for the transfer, then 225/226 for ABOR" % what,
                  "read %d bytes; %r then %r (%.1fs)" % (len(got), first, second, took))
            f.sock.settimeout(15)
            x = data_transfer(f, "EPSV", "RETR abor.bin") if code(second) in (225, 226) \
                else None
            check(x is not None and x.ok and sha(x.data) == sha(big),
                  "after ABOR (%s) a further 64 MiB RETR on the same session: sha256 equal"
                  % ("closed first" if close_first else "open"), x)
        except (OSError, EOFError, ftplib.Error) as e:
            check(False, "ABOR mid-RETR, %s" % what, repr(e))
        finally:
            close_ftp(f)


# ---- 10 STAT during a transfer ------------------------------------------------------------------
def t_stat(env):
    u = env.users[0]
    big = env.put_random("web1", u, "stat.bin", 32 * MiB)
    f = env.ftp(u)
    try:
        reply(f, "TYPE I")
        conn = f.transfercmd("RETR stat.bin")
        head = conn.recv(64 * KiB)
        f.sock.settimeout(5)
        try:
            st = reply(f, "STAT")
        except (OSError, EOFError) as e:
            st = "<%s: %r>" % (type(e).__name__, e)
        check(code(st) == 213, "STAT during a RETR is answered with 213 at once", repr(st))
        conn.settimeout(15)
        rest, err = recv_all(conn)
        if err is not None:
            note("STAT: data read: %r", err)
        conn.close()
        f.sock.settimeout(15)
        try:
            final = f.getmultiline()
        except (OSError, EOFError) as e:
            final = "<%s: %r>" % (type(e).__name__, e)
        data = head + rest
        check(code(final) == 226 and sha(data) == sha(big),
              "the transfer continues after STAT: 226, 32 MiB sha256 equal",
              "%r, %d bytes" % (final, len(data)))
        ok, detail = still_works(f)
        check(ok, "the session works after STAT during a transfer", detail)
    finally:
        close_ftp(f)


# ---- 11 PORT/EPRT refusals and unsupported commands ----------------------------------------------
def t_port_rules(env):
    u = env.users[0]
    f = env.ftp(u)
    try:
        for line, want in (("PORT 10,1,2,3,200,10", "500 Illegal PORT command."),
                           ("PORT 127,0,0,2,200,10", "500 Illegal PORT command."),
                           ("PORT 127,0,0,1,0,21", "500 Illegal PORT command."),
                           ("PORT 127,0,0,1,3,255", "500 Illegal PORT command."),
                           ("EPRT |1|10.1.2.3|5000|", 500),
                           ("EPRT |1|127.0.0.1|21|", 500),
                           ("PORT 1,2,3", 501), ("PORT 127,0,0,1,300,1", 501),
                           ("EPRT garbage", 501), ("EPRT |1|127.0.0.1|0|", 501),
                           ("EPRT |3|127.0.0.1|5000|", 522),
                           ("LPRT 4,4,127,0,0,1,2,200,10", 502), ("LPSV", 502)):
            r = try_reply(f, line)
            ok = r.strip() == want if isinstance(want, str) else code(r) == want
            check(ok, "%s -> %s" % (line, want), repr(r))
        ok, detail = still_works(f, "PORT")
        check(ok, "the session works after the refused PORT/EPRT (an allowed PORT transfers)",
              detail)
        r = try_reply(f, "EPSV ALL")
        check(code(r) == 200, "EPSV ALL -> 200", repr(r))
        for line in ("PORT 127,0,0,1,200,10", "PASV", "EPRT |1|127.0.0.1|51210|"):
            r = try_reply(f, line)
            check(code(r) == 503, "after EPSV ALL: %s -> 503" % line.split()[0], repr(r))
        x = data_transfer(f, "EPSV", "RETR BACKEND")
        check(x.ok and x.data.strip() == b"web1", "after EPSV ALL: EPSV still transfers", x)
    finally:
        close_ftp(f)


# ---- 12 a foreign passive data connection ---------------------------------------------------------
def t_foreign_data(env):
    u = env.users[0]
    data = env.put_random("web1", u, "foreign.bin", 2 * MiB)
    off = env.log_offset()
    for mode in ("PASV", "EPSV"):
        f = env.ftp(u)
        rogue = None
        try:
            reply(f, "TYPE I")
            setup = reply(f, mode)
            addr = ftplib.parse227(setup) if mode == "PASV" else \
                ftplib.parse229(setup, f.sock.getpeername())
            rogue = socket.create_connection(addr, timeout=5, source_address=("127.0.0.2", 0))
            time.sleep(0.3)
            real = socket.create_connection(addr, timeout=15, source_address=("127.0.0.1", 0))
            prelim = reply(f, "RETR foreign.bin")
            got, err = recv_all(real)
            if err is not None:
                note("foreign: real data read: %r", err)
            real.close()
            final = f.getmultiline() if code(prelim) // 100 == 1 else prelim
            closed, rogue_got, _ = drain_until_closed(rogue, 10)
            check(code(final) == 226 and sha(got) == sha(data),
                  "%s: the real client's RETR completes (sha256 equal) although a connection "
                  "from 127.0.0.2 came first" % mode, "%r %r, %d bytes" % (prelim, final, len(got)))
            check(closed and not rogue_got,
                  "%s: the connection from 127.0.0.2 is closed and gets no data" % mode,
                  "closed=%s, got %d bytes" % (closed, len(rogue_got)))
        except (OSError, EOFError, ftplib.Error) as e:
            check(False, "%s: foreign data connection test" % mode, repr(e))
        finally:
            if rogue is not None:
                rogue.close()
            close_ftp(f)
    if not env.selftest:
        ev = env.wait_events("data_refused", after=off, count=2)
        check(len(ev) == 2 and all(e.get("peer", "").startswith("127.0.0.2")
                                   and e.get("expected", "").startswith("127.0.0.1")
                                   and e.get("sid") for e in ev),
              "two event=data_refused lines, peer=127.0.0.2 expected=127.0.0.1",
              [e["_line"] for e in ev])


# ---- 13 hostile command lines -------------------------------------------------------------------
def hostile(env, user, chunks, want, what):
    """On a fresh connection (logged in when user): send the raw chunks (a pause between
    them), expect one reply matching `want` (a code or the exact text), then NOOP -> 200 and,
    logged in, a transfer."""
    try:
        f = env.ftp(user)
    except (OSError, EOFError, ftplib.Error) as e:
        check(False, what, "login: %r" % e)
        return
    try:
        try:
            for i, c in enumerate(chunks):
                if i:
                    time.sleep(0.05)
                f.sock.sendall(c)
            r = f.getmultiline()
        except (OSError, EOFError, ftplib.Error) as e:
            r = "<%s: %r>" % (type(e).__name__, e)
        ok = r == want if isinstance(want, str) else code(r) == want
        n = try_reply(f, "NOOP")
        works, detail = still_works(f) if user is not None else (True, "")
        check(ok and code(n) == 200 and works, "%s -> %s, then the session goes on" % (what, want),
              "%r, NOOP %r %s" % (r, n, detail))
    finally:
        close_ftp(f)


def t_hostile(env):
    u = env.users[0]
    too_long = "500 Command line too long."
    long_line = b"NOOP " + b"A" * 5000 + b"\r\n"
    garbage = b"\x00\x01\x02GARB\x07\x1b[2J\xfe\x80\r\n"
    for who, label in ((None, "before login"), (u, "after login")):
        hostile(env, who, [long_line], too_long, "%s: a 5000-byte line" % label)
        hostile(env, who, [garbage], 500, "%s: NUL and control bytes" % label)
    hostile(env, u, [b"X" * 100000 + b"\r\n"], too_long, "a 100000-byte line")
    hostile(env, u, [b"NOOP " + b"B" * 3000, b"C" * 3000 + b"\r\n"], too_long,
            "a 6000-byte line in two writes")
    hostile(env, u, [b"NO\x00OP\r\n"], 500, "a NUL inside the verb")
    hostile(env, u, [bytes(range(1, 32)).replace(b"\n", b"").replace(b"\r", b"") + b"\r\n"],
            500, "every control byte")
    hostile(env, u, [b"\xff\xf4\xff\xf2NOOP\r\n"], 200, "Telnet IAC IP IAC DM, then NOOP")
    hostile(env, u, [b"NO", b"OP", b"\r", b"\n"], 200,
            "NOOP in four writes (split inside the verb and between CR and LF)")


# ---- 14 log lines -------------------------------------------------------------------------------
def t_log(env):
    if env.selftest:
        check(False, "log lines: no proxy log in self-test")
        return
    u = env.users[0]
    down = os.urandom(777 * KiB)
    up = os.urandom(555 * KiB)
    env.put_data("web1", u, "log-down.bin", down)
    off = env.log_offset()
    t0 = time.monotonic()
    f = env.ftp(u)
    me = client_addr(f)
    try:
        reply(f, "TYPE I")
        a = data_transfer(f, "PASV", "RETR log-down.bin")
        b = data_transfer(f, "EPRT", "STOR log-up.bin", upload=up)
        c = data_transfer(f, "EPSV", "LIST")
        time.sleep(0.5)
        reply(f, "QUIT")
    finally:
        close_ftp(f)
    check(a.ok and b.ok and c.ok, "the logged session's transfers work", "%s\n%s\n%s" % (a, b, c))
    ends = env.wait_events("session_end", after=off, client=me)
    check(len(ends) == 1, "one session_end line for the session", [e["_line"] for e in ends])
    if not ends:
        return
    e = ends[0]
    sid = e.get("sid")
    line = e["_line"]
    starts = env.events("session_start", after=off, sid=sid)
    check(len(starts) == 1 and starts[0].get("client") == me,
          "session_start sid=<same> client=<the client's address:port>",
          [s["_line"] for s in starts])
    logins = env.events("login", after=off, sid=sid)
    check(len(logins) == 1 and logins[0].get("user") == u.name
          and logins[0].get("backend") == "web1", "login sid user backend=web1",
          [s["_line"] for s in logins])
    xs = {x.get("cmd"): x for x in env.events("transfer", after=off, sid=sid)}
    want = (("RETR", "download", "log-down.bin", len(down)),
            ("STOR", "upload", "log-up.bin", len(up)), ("LIST", "list", None, None))
    for cmd, direction, name, size in want:
        x = xs.get(cmd, {})
        ok = (x.get("user") == u.name and x.get("backend") == "web1"
              and x.get("direction") == direction and x.get("result") == "226"
              and x.get("duration_ms", "").isdigit()
              and (name is None or x.get("file", "").endswith(name))
              and (size is None or x.get("bytes") == str(size)))
        check(ok, "event=transfer cmd=%s direction=%s%s%s result=226 user backend duration_ms"
              % (cmd, direction, " file=..%s" % name if name else "",
                 " bytes=%d" % size if size else ""), x.get("_line", "no line"))

    def num(k):
        try:
            return int(e.get(k, ""))
        except ValueError:
            return -1
    took_ms = (time.monotonic() - t0) * 1000
    check(e.get("user") == u.name and e.get("backend") == "web1" and bool(e.get("reason")),
          "session_end user backend=web1 client reason", line)
    check(num("bytes_out") >= len(down) and num("bytes_in") >= len(up),
          "session_end bytes_out >= the RETR size, bytes_in >= the STOR size", line)
    check(500 <= num("duration_ms") <= took_ms + 1000, "session_end duration_ms plausible "
          "(>= 500, <= %.0f)" % (took_ms + 1000), line)


# ---- 15 limits and timeouts --------------------------------------------------------------------
def slow_backend_is_not_a_slow_client(env, u):
    """login_timeout_ms counts the client's time only: with the user's vsftpd stopped
    (SIGSTOP: the kernel still completes the TCP connect, the greeting waits) for twice the
    login timeout, USER is answered 331 once vsftpd runs again, and the login completes."""
    be = env.backends[backend_of(env, u)]
    pid = be.pids().get("vsftpd")
    hold_s = 2 * env.conf["login_timeout_ms"] / 1000.0
    os.kill(pid, signal.SIGSTOP)
    try:
        s, _ = raw_connect(env, timeout=hold_s + 20)
        s.sendall(b"USER %s\r\n" % u.name.encode())
        time.sleep(hold_s)
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        rf = s.makefile("rb")
        r1 = rf.readline()
        s.sendall(b"PASS %s\r\n" % u.password.encode())
        r2 = rf.readline()
        rf.close()
    finally:
        s.close()
    check(r1.startswith(b"331 ") and r2.startswith(b"230 "),
          "login_timeout_ms=%d with the backend's vsftpd stopped for %.0f s: the wait for the "
          "backend does not count against the client (331, then 230)"
          % (env.conf["login_timeout_ms"], hold_s), "%r then %r" % (r1, r2))


def t_limits(env):
    u = env.users[0]
    saved = dict(env.conf)
    env.conf.update({"login_timeout_ms": 1500, "idle_timeout_s": 2, "max_sessions_per_ip": 2,
                         "masquerade_address": "127.0.0.3"})
    env.restart_proxy()
    try:
        off = env.log_offset()
        s, greet = raw_connect(env)
        s.sendall(b"USER %s\r\n" % u.name.encode())
        closed, got, took = drain_until_closed(s, 10)
        s.close()
        check(closed and b"\r\n421 " in b"\r\n" + got and 1.0 <= took <= 1.5 + 5,
              "login_timeout_ms=1500: no PASS -> 421 and closed after ~1.5 s",
              "%r closed=%s after %.1fs" % (got, closed, took))
        if not env.selftest:
            slow_backend_is_not_a_slow_client(env, u)

        f = env.ftp(u)
        try:
            x = data_transfer(f, "PASV", "LIST")
            check(x.setup.startswith("227 ") and "(127,0,0,3," in x.setup,
                  "masquerade_address=127.0.0.3: the 227 names 127,0,0,3", x.setup)
            t0 = time.monotonic()
            closed, got, took = drain_until_closed(f.sock, 10)
            check(closed and got.startswith(b"421") and 1.5 <= took <= 2 + 5,
                  "idle_timeout_s=2: a silent logged-in session gets 421 and is closed on time",
                  "%r closed=%s after %.1fs" % (got, closed, time.monotonic() - t0))
        finally:
            close_ftp(f)

        slow_transfer_outlives_idle(env, u)

        # A session's per-address slot is released when the proxy ends it (right after its
        # session_end line), which can come after our close returned: wait for every session
        # this section opened to have ended, or the two below may find a slot still held.
        dpenv.wait_until(lambda: len(env.events("session_end", after=off))
                         >= len(env.events("session_start", after=off)), 10)
        a, b = env.ftp(), env.ftp()
        try:
            s, greet = raw_connect(env)
            closed, rest, _ = drain_until_closed(s, 10)
            s.close()
            check(greet.startswith(b"421 ") and closed,
                  "max_sessions_per_ip=2: a third connection gets 421 and is closed",
                  "%r %r closed=%s" % (greet, rest, closed))
        finally:
            close_ftp(a)
            close_ftp(b)
        ev = env.wait_events("refused", after=off)
        check(len(ev) >= 1 and ev[0].get("client", "").startswith("127.0.0.1")
              and bool(ev[0].get("reason")), "event=refused client reason logged",
              [e["_line"] for e in ev])
        time.sleep(0.3)
        got = backend_of(env, u)
        check(got == "web1", "the slots are released: a login works again", got)

        # SIGTERM with a logged-in session open: a drain whose 5 s deadline (the harness's
        # control.drain_timeout_s) kicks the session
        off = env.log_offset()
        f = env.ftp(u)
        me = client_addr(f)
        try:
            rc, took = env.stop_proxy()
            closed, got, _ = drain_until_closed(f.sock, 10)
        finally:
            close_ftp(f)
        check(rc == 0 and took < 5 + 10, "SIGTERM with a session open: ftpproxy drains, kicks "
              "it at the deadline and exits 0", "rc=%s after %.1fs" % (rc, took))
        check(closed, "SIGTERM: the client's control connection is closed", repr(got))
        ends = env.events("session_end", after=off, client=me)
        check(len(ends) == 1, "SIGTERM: the open session logs its session_end",
              dpenv.tail(env.logfile, 5))
    finally:
        env.conf.clear()
        env.conf.update(saved)
        env.restart_proxy()


def slow_transfer_outlives_idle(env, u):
    """idle_timeout_s=2 counts commands, not bytes: a 3.5 s transfer must not be cut."""
    data = env.put_random("web1", u, "slow.bin", 16 * MiB)
    f = env.ftp(u)
    try:
        reply(f, "TYPE I")
        conn = f.transfercmd("RETR slow.bin")
        conn.settimeout(10)
        chunks, total, t0 = [], 0, time.monotonic()
        try:
            while True:
                b = conn.recv(256 * KiB)
                if not b:
                    break
                chunks.append(b)
                total += len(b)
                # pace: the whole file in about 3.5 s
                ahead = total / len(data) * 3.5 - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        except OSError as e:
            note("slow transfer: %r", e)
        conn.close()
        took = time.monotonic() - t0
        try:
            final = f.getmultiline()
        except (OSError, EOFError) as e:
            final = repr(e)
        check(code(final) == 226 and sha(b"".join(chunks)) == sha(data) and took >= 3.0,
              "idle_timeout_s=2: a 3.5 s transfer is not cut (sha256 equal, 226)",
              "%r, %d bytes in %.1fs" % (final, total, took))
    except (OSError, EOFError, ftplib.Error) as e:
        check(False, "idle_timeout_s=2: a 3.5 s transfer is not cut", repr(e))
    finally:
        close_ftp(f)


# ---- 16 backend_passive = false ------------------------------------------------------------------
def t_backend_active(env):
    """The backend leg in active mode (EPRT/PORT toward vsftpd, the proxy accepts), under all
    four client modes."""
    u = env.users[0]
    env.conf["backend_passive"] = False
    env.restart_proxy()
    try:
        data = env.put_random("web1", u, "bactive.bin", 3 * MiB + 11)
        f = env.ftp(u)
        try:
            reply(f, "TYPE I")
            for mode in MODES:
                x = data_transfer(f, mode, "RETR bactive.bin")
                check(x.ok and sha(x.data) == sha(data),
                      "backend_passive=false, client %s: RETR 3 MiB sha256 equal" % mode, x)
                up = os.urandom(2 * MiB + 5)
                name = "bactive-up-%s.bin" % mode
                x = data_transfer(f, mode, "STOR " + name, upload=up)
                got = env.get_data("web1", u, name)
                check(x.ok and got is not None and sha(got) == sha(up),
                      "backend_passive=false, client %s: STOR 2 MiB sha256 equal on web1" % mode,
                      "%s; on web1 %s bytes" % (x, None if got is None else len(got)))
                x = data_transfer(f, mode, "NLST")
                check(x.ok and name.encode() in x.data.split(b"\r\n"),
                      "backend_passive=false, client %s: NLST lists the upload" % mode, x)
        finally:
            close_ftp(f)
    finally:
        env.conf["backend_passive"] = True
        env.restart_proxy()


# ---- 17 passive port reuse ---------------------------------------------------------------------
REUSE_PORTS = 10


def t_passive_reuse(env):
    """A passive port is free again as soon as its transfer is over, although the proxy
    closed the data connection first (TIME_WAIT on the port): 4x the range in one session,
    like vsftpd, which binds its passive listeners with SO_REUSEADDR. Without it each port
    serves one transfer a minute."""
    u = env.users[0]
    saved = dict(env.conf)
    lo = env.conf["passive_port_min"]
    env.conf.update(passive_port_max=lo + REUSE_PORTS - 1)
    env.restart_proxy()
    try:
        data = env.put_random("web1", u, "reuse.bin", 64 * KiB)
        f = env.ftp(u)
        bad = []
        try:
            reply(f, "TYPE I")
            for i in range(4 * REUSE_PORTS):
                x = data_transfer(f, ("PASV", "EPSV")[i % 2], "RETR reuse.bin")
                if not x.ok or sha(x.data) != sha(data):
                    bad.append("%d: %s" % (i, x))
        finally:
            close_ftp(f)
        check(not bad, "passive range of %d ports: %d downloads in a row, each sha256 equal "
              "(%d failed)" % (REUSE_PORTS, 4 * REUSE_PORTS, len(bad)), "\n".join(bad[:3]))
    finally:
        env.conf.clear()
        env.conf.update(saved)
        env.restart_proxy()


# ---- 18 ftp.data_sndbuf -------------------------------------------------------------------------
def sndbufs_toward(conn):
    """The send buffer sizes (skmem tb) of this host's TCP sockets at the other end of `conn`
    (both ports: a peer port alone can match an unrelated connection to a listener that
    happens to have the same number)."""
    local, peer = conn.getsockname(), conn.getpeername()
    out = subprocess.run(["ss", "-tmnH", "src", "%s:%d" % peer[:2], "dst", "%s:%d" % local[:2]],
                         stdout=subprocess.PIPE, text=True, timeout=10).stdout
    return [int(t) for t in re.findall(r"\btb(\d+)", out)]


def t_data_sndbuf(env):
    """ftp.data_sndbuf: the RETR socket toward the client gets exactly that send buffer (the
    kernel doubles it), a value over net.core.wmem_max is capped with one warning, and the
    bytes are right either way."""
    u = env.users[0]
    saved = dict(env.conf)
    wmem_max = int(dpenv.read_text("/proc/sys/net/core/wmem_max"))
    data = env.put_random("web1", u, "sndbuf.bin", 8 * MiB + 3)
    try:
        env.conf["data_sndbuf"] = 4096
        env.write_config()
        rc, out = run_check(FTPPROXY, env.config)
        check(rc != 0 and "ftp.data_sndbuf: 0 (kernel autotuning) or at least 65536 bytes" in out,
              "data_sndbuf = 4096 is refused by the config check, with the reason", out)
        want = min(262144, wmem_max)
        env.conf["data_sndbuf"] = want
        env.restart_proxy()
        f = env.ftp(u)
        try:
            reply(f, "TYPE I")
            f.set_pasv(True)
            conn = f.transfercmd("RETR sndbuf.bin")
            # Not reading yet: the proxy's socket toward us fills and stays open.
            seen = dpenv.wait_until(lambda: sndbufs_toward(conn), 5) or []
            got = bytearray()
            while True:
                b = conn.recv(1 << 20)
                if not b:
                    break
                got += b
            conn.close()
            r = f.voidresp()
            check(seen == [2 * want], "data_sndbuf = %d: the proxy's RETR socket toward the client "
                  "has a %d-byte send buffer (ss: %s)" % (want, 2 * want, seen))
            check(r.startswith("226") and sha(bytes(got)) == sha(data),
                  "data_sndbuf = %d: RETR 8 MiB sha256 equal, 226" % want, r)
        finally:
            close_ftp(f)

        over = min(2 * wmem_max, 67108864)
        if over > wmem_max:
            env.conf["data_sndbuf"] = over
            env.restart_proxy()
            at = env.log_offset()
            f = env.ftp(u)
            try:
                reply(f, "TYPE I")
                for mode in ("EPSV", "PASV"):
                    x = data_transfer(f, mode, "RETR sndbuf.bin")
                    check(x.ok and sha(x.data) == sha(data),
                          "data_sndbuf = %d (over wmem_max %d), %s: RETR sha256 equal"
                          % (over, wmem_max, mode), x)
            finally:
                close_ftp(f)
            text = env.log()[at:]
            check(text.count("is capped to %d by net.core.wmem_max" % wmem_max) == 1,
                  "a value over net.core.wmem_max is reported once: "
                  "'ftp.data_sndbuf %d is capped to %d'" % (over, wmem_max),
                  [ln for ln in text.splitlines() if "data_sndbuf" in ln])
    finally:
        env.conf.clear()
        env.conf.update(saved)
        env.restart_proxy()


TESTS = [
    ("1 pre-login", t_prelogin),
    ("2 login", t_login),
    ("3 routing", t_routing),
    ("4 maintenance", t_maintenance),
    ("5 unavailable backends", t_unavailable),
    ("6 data connections", t_data),
    ("7 sequential transfers", t_sequential),
    ("8 REST", t_rest),
    ("9 ABOR", t_abor),
    ("10 STAT", t_stat),
    ("11 PORT rules", t_port_rules),
    ("12 foreign data connection", t_foreign_data),
    ("13 hostile lines", t_hostile),
    ("14 log lines", t_log),
    ("15 limits", t_limits),
    ("16 backend active", t_backend_active),
    ("17 passive port reuse", t_passive_reuse),
    ("18 data_sndbuf", t_data_sndbuf),
]


def main(argv):
    return FtpProxyEnv.run_suite(check, "test_ftpproxy", TESTS, argv, {"nusers": 3},
                                 setup=lambda env: env.move(env.users[2], "web2", settle=True),
                                 stop_with="18")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
