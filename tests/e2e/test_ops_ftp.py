#!/usr/bin/python3
"""e2e.ops_ftp: operating ftpproxy through its control socket with the real proxyctl, against
real vsftpd backends and ftplib clients (docs/operations.md).

  1 sessions and kick: `sessions` lists every logged-in session with user and backend;
    `kick user=` and `kick backend=` end exactly the matching sessions, whose clients read
    "421 <message>"; the others keep working; no match -> exit 4.
  2 pause / resume: a connection made while paused gets its greeting only after resume.
  3 reload: a broken config and a missing hook are refused (exit 1, the reason printed),
    the old config keeps serving and no session drops; pgsql -> static hook swap routes new
    logins by the routes file while an older session keeps transferring; and back.
  4 control socket: mode 0600; `nobody` cannot connect, and is refused with 403 even when
    the file is opened up; malformed, over-long and unknown requests get 400 and the
    connection stays usable; pipelined requests are answered in order.
  5 drain with a transfer in flight: new connections refused, the RETR completes with the
    right sha256, proxyctl drain answers and the daemon exits 0 once the session ended.
  6 drain deadline: an idle session is told "421 <message>" at the deadline, and the daemon
    exits 0 on time.
  7 privileges: with user = "nobody" the daemon runs as nobody (every uid and gid), the socket
    belongs to nobody, root's proxyctl works, a login and a RETR work.
  8 cache flush: with a 10-minute route cache and a route changed in PostgreSQL without a
    NOTIFY, logins keep the cached backend until `cache flush user=U`, then follow the new one.

Run by ctest (label e2e) or directly as root:
    PYTHONPATH=tests/harness /usr/bin/python3 tests/e2e/test_ops_ftp.py [1 2 ...]
"""

import ftplib
import hashlib
import json
import os
import pwd
import socket
import stat
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))
import dpenv  # noqa: E402
from checks import Checks  # noqa: E402
from ctl import (RawCtl, connect_refused, proxyctl, proxyctl_background, proxyctl_missing,  # noqa: E402
                 sessions as ctl_sessions)
from ftpproxy_env import FtpProxyEnv, close_ftp  # noqa: E402
from proxy_env import BUILD, PGSQL_HOOK, conf_value  # noqa: E402

check = Checks()
MiB = 1 << 20
STATIC_HOOK = os.path.join(BUILD, "hooks", "static.so")


def sha(data):
    return hashlib.sha256(data).hexdigest()


def ctl(env, *args, **kw):
    return proxyctl(env.ctl_path, *args, **kw)


def noop_ok(f):
    try:
        return f.voidcmd("NOOP").startswith("200")
    except (ftplib.Error, OSError, EOFError):
        return False


def read_421(f, timeout=5.0):
    """The unsolicited line a kicked session is sent (or the error text)."""
    try:
        f.sock.settimeout(timeout)
        return f.getline()
    except (OSError, EOFError) as e:
        return "error: %r" % e



def retr(f, name):
    chunks = []
    f.retrbinary("RETR " + name, chunks.append)
    return b"".join(chunks)


# ---- 1 sessions and kick ---------------------------------------------------------------------------
def t_kick(env):
    u0, u2, u1 = env.users[:3]  # spread_users: u0 and u1 on web1, u2 on web2
    mark = env.log_offset()
    a = env.ftp(u0)
    b = env.ftp(u0)
    c = env.ftp(u1)
    d = env.ftp(u2)
    try:
        rows = ctl_sessions(env.ctl_path)
        check(rows is not None and len(rows) == 4 and
              sorted(r["user"] for r in rows) == sorted([u0.name, u0.name, u1.name, u2.name]) and
              all(r["proto"] == "ftp" and r["state"] == "active" for r in rows),
              "sessions --json lists the 4 logged-in sessions (proto, user, state)", rows)
        by_user = {r["user"]: r["backend"] for r in rows or []}
        check(by_user.get(u0.name) == "web1" and by_user.get(u2.name) == "web2",
              "sessions shows each session's backend", by_user)
        text = ctl(env, "sessions", "user=" + u1.name)
        check(text.rc == 0 and text.out.splitlines()[0].split()[:3] == ["id", "proto", "user"] and
              len(text.out.splitlines()) == 2 and u1.name in text.out,
              "sessions user=U prints a table with a header and U's one session", text)

        r = ctl(env, "kick", "user=" + u0.name, "message=maintenance on your account")
        check(r.rc == 0 and r.out.count(u0.name) == 2, "kick user=U: exit 0, lists U's 2 sessions", r)
        la, lb = read_421(a), read_421(b)
        check(la == "421 maintenance on your account" and lb == la,
              "both kicked clients read '421 <message>'", "%r %r" % (la, lb))
        check(noop_ok(c) and noop_ok(d), "the other users' sessions keep working")

        r = ctl(env, "kick", "backend=web2", "message=web2 goes down")
        check(r.rc == 0 and u2.name in r.out and u1.name not in r.out,
              "kick backend=web2 ends only the session on web2", r)
        check(read_421(d) == "421 web2 goes down" and noop_ok(c),
              "that client reads the message; the web1 session keeps working")
        sid = (ctl_sessions(env.ctl_path, "user=" + u1.name) or [{}])[0].get("id")
        r = ctl(env, "kick", "id=%s" % sid)
        check(sid is not None and r.rc == 0 and read_421(c).startswith("421 "),
              "kick id=ID ends that session", r)
        r = ctl(env, "kick", "user=nosuchuser")
        check(r.rc == 4, "kick with no match: exit 4", r)
        r = ctl(env, "kick")
        check(r.rc == 2 and "user=" in r.err, "kick without a filter: usage error (exit 2)", r)
        dpenv.wait_until(lambda: len([e for e in env.events("session_end", after=mark)
                                      if e.get("reason", "").startswith("kicked")]) >= 4, 5)
        ends = [e for e in env.events("session_end", after=mark) if e.get("reason", "").startswith("kicked")]
        check(len(ends) == 4, "4 session_end lines say reason=kicked: <message>",
              [e.get("reason") for e in ends])
    finally:
        for f in (a, b, c, d):
            close_ftp(f)


# ---- 2 pause / resume -------------------------------------------------------------------------------
def t_pause(env):
    r = ctl(env, "pause")
    check(r.rc == 0, "pause: exit 0", r)
    st = ctl(env, "--json", "status")
    try:
        state = json.loads(st.out)["state"]
    except (ValueError, KeyError):
        state = None
    check(state == "paused", "status says paused", st)
    s = socket.create_connection(("127.0.0.1", env.port), timeout=5)
    s.settimeout(1.0)
    try:
        early = s.recv(100)
    except socket.timeout:
        early = None
    check(early is None, "while paused a new connection gets no greeting", early)
    r = ctl(env, "resume")
    s.settimeout(5.0)
    try:
        late = s.recv(100)
    except OSError as e:
        late = repr(e)
    s.close()
    check(r.rc == 0 and isinstance(late, bytes) and late.startswith(b"220"),
          "after resume it is greeted", late)


# ---- 3 reload -----------------------------------------------------------------------------------------
def t_reload(env):
    u0 = env.users[0]
    data = env.put_random("web1", u0, "reload.bin", 2 * MiB)
    env.put_data("web2", u0, "where.txt", b"web2\n")
    env.put_data("web1", u0, "where.txt", b"web1\n")
    old = env.ftp(u0)
    good = open(env.config).read()
    try:
        with open(env.config, "a") as f:
            f.write("this is { not libconfig\n")
        r = ctl(env, "reload")
        check(r.rc == 1 and env.config in r.err, "reload of a broken config: exit 1, the file "
              "and line printed", r)
        with open(env.config, "w") as f:
            f.write(good.replace(PGSQL_HOOK, "/nonexistent/gone.so"))
        r = ctl(env, "reload")
        check(r.rc == 1 and "gone.so" in r.err, "reload naming a missing hook: exit 1, reason "
              "names the hook", r)
        check(noop_ok(old) and sha(retr(old, "reload.bin")) == sha(data),
              "the session opened before both refused reloads still transfers")
        f2 = env.ftp(u0)
        check(retr(f2, "where.txt") == b"web1\n", "new logins still use the old config (pgsql: web1)")
        close_ftp(f2)

        routes = os.path.join(env.tmp, "ops-routes.conf")
        with open(routes, "w") as f:
            f.write('backends = { web2 = { address = "127.0.0.1"; ftp_port = %d; ssh_port = 1; }; };\n'
                    'users = { %s = { backend = "web2"; }; };\n'
                    % (env.backends["web2"].ftp_port, u0.name))
        static_conf = "\n".join(
            '  path = %s;' % conf_value(STATIC_HOOK) if line.startswith("  path = ") else
            '  config = { routes = %s; };' % conf_value(routes)
            if line.startswith("  config = { conninfo") else line
            for line in good.splitlines()) + "\n"
        with open(env.config, "w") as f:
            f.write(static_conf)
        r = ctl(env, "reload")
        check(r.rc == 0 and "static" in r.out + r.err, "reload swapping pgsql -> static: exit 0", r)
        f3 = env.ftp(u0)
        check(retr(f3, "where.txt") == b"web2\n", "a new login follows the static routes (web2)")
        close_ftp(f3)
        check(sha(retr(old, "reload.bin")) == sha(data),
              "the session from before the swap keeps transferring on web1")
        with open(env.config, "w") as f:
            f.write(good)
        r = ctl(env, "reload")
        f4 = env.ftp(u0)
        check(r.rc == 0 and retr(f4, "where.txt") == b"web1\n",
              "reload back to pgsql: new logins on web1 again", r)
        close_ftp(f4)
        check(noop_ok(old), "the old session survived three reloads")
    finally:
        with open(env.config, "w") as f:
            f.write(good)
        close_ftp(old)


# ---- 4 control socket -----------------------------------------------------------------------------------
def t_socket(env):
    st = os.stat(env.ctl_path)
    check(stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600,
          "the control socket is a socket with mode 0600", oct(st.st_mode))
    os.chmod(env.tmp, 0o755)  # let nobody reach the directory; the socket itself stays 0600
    r = ctl(env, "status", runas="nobody")
    check(r.rc == 5, "nobody cannot open the 0600 socket: exit 5", r)
    mark = env.log_offset()
    os.chmod(env.ctl_path, 0o666)
    try:
        r = ctl(env, "status", runas="nobody")
        check(r.rc == 5 and "forbidden" in r.err,
              "with the file opened up, nobody is refused by the peer check (403, exit 5)", r)
        check(env.wait_log("event=ctl_refused uid=%d" % pwd.getpwnam("nobody").pw_uid, after=mark),
              "the refusal is logged with the uid")
    finally:
        os.chmod(env.ctl_path, 0o600)

    c = RawCtl(env.ctl_path)
    try:
        check(c.greeting.startswith("dynproxy-ctl 1 ftpproxy "), "greeting names protocol 1",
              c.greeting)
        code, text, _ = c.ask("\x01\x02 garbage")
        check(code == 400 and "malformed" in text, "a line with control bytes: 400 malformed", text)
        c.send(b"x" * 5000)
        code, text, _ = c.reply()
        check(code == 400 and "too long" in text, "a 5000-byte line: 400 line too long", text)
        c.send(b"yyyy\n")  # the rest of that line is discarded
        code, text, body = c.ask("status")
        check(code == 200 and any(line.startswith("daemon\tftpproxy") for line in body),
              "the connection stays usable afterwards", (code, text, body))
        for bad, what in (('kick user="open', "unterminated quoted value"),
                          ("kick colour=red", "unknown argument"),
                          ("frobnicate", "unknown command"),
                          ("drain timeout=abc", "timeout"),
                          ("kick user=", "need a value"),
                          ('sessions backend=""', "need a value")):
            code, text, _ = c.ask(bad)
            check(code == 400 and what in text, "%r: 400 %s" % (bad, what), text)
        c.send("status\nsessions\nhelp\n")
        replies = [c.reply() for _ in range(3)]
        check([r[0] for r in replies] == [200, 200, 200] and
              replies[2][2][0].startswith("command\t"),
              "three pipelined requests are answered in order", replies)
    finally:
        c.close()
    # A client that sends its request and shuts its side gets the answer, then EOF.
    c = RawCtl(env.ctl_path)
    try:
        c.send("status\n")
        c.s.shutdown(socket.SHUT_WR)
        code, _, body = c.reply()
        rest = c.f.read()
        check(code == 200 and body and rest == b"", "request then half-close: answered, then "
              "closed", (code, body, rest))
    finally:
        c.close()
    # A client that never reads its replies is not read further (replies do not pile up),
    # and the daemon keeps serving others.
    c = RawCtl(env.ctl_path)
    try:
        c.s.setblocking(False)
        sent = 0
        try:
            for _ in range(20000):
                sent += c.s.send(b"help\n")
        except BlockingIOError:
            pass
        r = ctl(env, "status")
        check(r.rc == 0 and sent < 20000 * 5, "a client that never reads is throttled (%d bytes "
              "accepted of %d) and others are served" % (sent, 20000 * 5), r)
    finally:
        c.close()
    r = ctl(env, "help")
    check(r.rc == 0 and "cache flush" in r.out and "drain" in r.out, "proxyctl help lists the "
          "commands", r)
    r = proxyctl(env.ctl_path, "kick", "--help")
    check(r.rc == 0 and "user=" in r.out, "proxyctl kick --help prints the usage", r)


# ---- 5 drain with a transfer in flight ----------------------------------------------------------------------
def t_drain_transfer(env):
    u1 = env.users[2]  # on web1 (spread_users: every other user on web2)
    mark = env.log_offset()
    data = env.put_random("web1", u1, "drain.bin", 24 * MiB)
    f = env.ftp(u1)
    got = {}

    def slow_retr():
        h = hashlib.sha256()
        n = [0]

        def cb(chunk):
            h.update(chunk)
            n[0] += len(chunk)
            time.sleep(0.001)  # ~3 s for 24 MiB in 8 KiB chunks
        try:
            got["reply"] = f.retrbinary("RETR drain.bin", cb, blocksize=8192)
        except (ftplib.Error, OSError, EOFError) as e:
            got["reply"] = repr(e)
        got["sha"], got["n"] = h.hexdigest(), n[0]

    t = threading.Thread(target=slow_retr)
    t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    dt, drain = proxyctl_background(env.ctl_path, "drain", "timeout=60")
    time.sleep(0.5)
    check(connect_refused(env.port), "while draining a new connection is refused")
    check(t.is_alive(), "the transfer is still running when the drain begins")
    t.join(60)
    check(got.get("sha") == sha(data) and str(got.get("reply", "")).startswith("226"),
          "the RETR in flight completes: 226 and sha256 equal",
          "%s %s bytes" % (got.get("reply"), got.get("n")))
    check(env.proxy.wait(5) is None, "the daemon keeps running while the session is open")
    f.quit()
    dt.join(30)
    rc = env.proxy.wait(10)
    r = drain.get("r")
    check(rc == 0 and r is not None and r.rc == 0 and "drained" in r.out + r.err,
          "after the session ends, proxyctl drain answers (exit 0) and the daemon exits 0",
          "rc=%s proxyctl=%r" % (rc, r))
    done = env.events("drain_done", after=mark)
    check(len(done) == 1 and done[0].get("kicked") == "0",
          "drain_done is logged with nothing kicked")
    dpenv.log("drain took %.1fs", time.monotonic() - t0)
    env.start_proxy()


# ---- 6 drain deadline -------------------------------------------------------------------------------------
def t_drain_deadline(env):
    f = env.ftp(env.users[0])
    t0 = time.monotonic()
    r = ctl(env, "drain", "timeout=1", "message=back in five minutes", timeout=60)
    took = time.monotonic() - t0
    line = read_421(f)
    rc = env.proxy.wait(30)
    check(r.rc == 0 and "drained 1 kicked 1" in r.out + r.err, "drain timeout=1 kicks the idle "
          "session (exit 0, 'drained 1 kicked 1')", r)
    check(line == "421 back in five minutes", "the client reads '421 <message>'", line)
    check(rc == 0 and took < 1 + 10, "the daemon exits 0 on time (%.1fs)" % took, "rc=%s" % rc)
    close_ftp(f)
    env.start_proxy()


# ---- 7 privileges -------------------------------------------------------------------------------------------
def t_privileges(env):
    nobody = pwd.getpwnam("nobody")
    env.extra_conf.append('user = "nobody";')
    try:
        env.restart_proxy()
        pid = env.proxy_pid
        ids = {}
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Uid", "Gid", "Groups"):
                    ids[k] = v.split()
        check(ids.get("Uid") == [str(nobody.pw_uid)] * 4 and
              ids.get("Gid") == [str(nobody.pw_gid)] * 4 and ids.get("Groups") == [],
              "the daemon runs as nobody (real, effective, saved, fs uid and gid; no groups)", ids)
        check(os.stat(env.ctl_path).st_uid == nobody.pw_uid, "the control socket belongs to nobody")
        r = ctl(env, "--json", "status")
        check(r.rc == 0 and '"user":"nobody"' in r.out, "root's proxyctl is served", r)
        u0 = env.users[0]
        data = env.put_random("web1", u0, "priv.bin", MiB)
        f = env.ftp(u0)
        ok = sha(retr(f, "priv.bin")) == sha(data)
        close_ftp(f)
        check(ok, "a login and a RETR work after the switch")
    finally:
        env.extra_conf.remove('user = "nobody";')
        env.restart_proxy()


# ---- 8 cache flush ---------------------------------------------------------------------------------------
def t_cache_flush(env):
    u0 = env.users[0]  # on web1
    env.put_data("web1", u0, "where.txt", b"web1\n")
    env.put_data("web2", u0, "where.txt", b"web2\n")
    good = open(env.config).read()

    def where():
        f = env.ftp(u0)
        try:
            return retr(f, "where.txt")
        finally:
            close_ftp(f)
    try:
        with open(env.config, "w") as f:
            f.write(good.replace("  cache_ttl_ms = ", "  cache_ttl_ms = 600000; # was ", 1))
        r = ctl(env, "reload")
        # 16 logins: the kernel spreads them over both workers, so each worker's cache
        # holds the route (a worker with an empty cache would ask PostgreSQL afresh).
        seen = [where() for _ in range(16)]
        check(r.rc == 0 and set(seen) == {b"web1\n"},
              "a 10-minute route cache; u0 lands on web1 (16 logins)", (r, seen))
        # Triggers off for this one statement: the route changes and nobody is told.
        env.pg.psql("SET session_replication_role = replica; UPDATE dynproxy.users SET backend "
                    "= 'web2' WHERE username = '%s';" % u0.name)
        seen = [where() for _ in range(8)]
        check(set(seen) == {b"web1\n"}, "with no NOTIFY the cached route is still used "
              "(8 logins)", seen)
        r = ctl(env, "cache", "flush", "user=" + u0.name)
        check(r.rc == 0, "cache flush user=U: exit 0", r)
        seen = [where() for _ in range(8)]
        check(set(seen) == {b"web2\n"}, "after the flush every login follows PostgreSQL "
              "(web2, 8 logins)", seen)
    finally:
        env.move(u0, "web1")
        with open(env.config, "w") as f:
            f.write(good)
        ctl(env, "reload")


TESTS = [
    ("1 sessions and kick", t_kick),
    ("2 pause resume", t_pause),
    ("3 reload", t_reload),
    ("4 control socket", t_socket),
    ("5 drain transfer", t_drain_transfer),
    ("6 drain deadline", t_drain_deadline),
    ("7 privileges", t_privileges),
    ("8 cache flush", t_cache_flush),
]


def main(argv):
    missing = proxyctl_missing()
    if missing:
        check(False, missing)
        return check.finish()
    return FtpProxyEnv.run_suite(check, "test_ops_ftp", TESTS, argv, {"nusers": 3},
                                 setup=FtpProxyEnv.spread_users)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
