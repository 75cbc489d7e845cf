#!/usr/bin/python3
"""e2e.ftpproxy_load: ftpproxy with big files, parallel mirrors and many sessions at once.

  1 100 MiB of random data down and up, each with ftplib (PASV down, EPSV up) and curl
    (PORT down, EPRT up): sha256 equal on both sides, event=transfer accounts every byte.
  2 lftp mirror --parallel=4 of a tree (8 directories, 40 files, empty ones included) from
    web1, then mirror -R --parallel=4 of it back in active mode: every file's sha256 equal.
  3 200 concurrent sessions (4 users on 2 backends): logins 30 ms apart, then all logged in
    at once (a barrier), all with a data connection prepared at once (a second barrier; the
    four modes), each RETRs its user's 1 MiB file and STORs 1 MiB of its own: every checksum
    equal, every session on its user's backend, one session_end line each. The same burst is
    made first straight to the backends' vsftpd: the proxy must do at least as well (what a
    backend overwhelmed by a burst can take is the box's business, not the proxy's; giving
    up on a slow backend earlier than the client would is the proxy's).

Run by ctest (label e2e) or directly as root:
    PYTHONPATH=tests/harness /usr/bin/python3 tests/e2e/test_ftpproxy_load.py [1 2 3]
DP_FTPPROXY_SELFTEST=web1 runs the client side against web1's vsftpd (see ftpproxy_env.py).
"""

import ftplib
import hashlib
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))
import dpenv  # noqa: E402
from checks import Checks  # noqa: E402
from ftpproxy_env import MODES, FtpProxyEnv, close_ftp, data_transfer, reply  # noqa: E402
from proxy_env import raise_nofile  # noqa: E402

check = Checks()
MiB = 1 << 20
BIG = 100 * MiB
SESSIONS = 200
NUSERS = 4
SESSION_BYTES = 1 * MiB
BARRIER_TIMEOUT = 120.0
# Logins start RAMP_S apart: vsftpd listens with a backlog of 32, and a burst of 200 connects
# at the same instant overflows it (with SYN cookies the client then waits for a greeting
# that never comes), for the proxy's backend connections as for direct clients. The sessions
# are still all logged in at the same moment (the first barrier).
RAMP_S = 0.03
CURL_MODE = {"PORT": ["-P", "-", "--disable-eprt"], "EPRT": ["-P", "-"]}


def sha(data):
    return hashlib.sha256(data).hexdigest()


def note(msg, *args):
    dpenv.log(msg, *args)


def rate(nbytes, secs):
    return "%.0f MiB/s" % (nbytes / MiB / secs) if secs > 0 else "-"


# ---- 1 100 MiB each way ---------------------------------------------------------------------------
def t_big(env):
    u = env.users[0]
    off = env.log_offset()
    down = env.put_random("web1", u, "big-down.bin", BIG)
    up = os.urandom(BIG)
    f = env.ftp(u, timeout=60)
    try:
        reply(f, "TYPE I")
        x = data_transfer(f, "PASV", "RETR big-down.bin", timeout=60)
        check(x.ok and sha(x.data) == sha(down), "ftplib PASV RETR of 100 MiB: sha256 equal (%s)"
              % rate(len(x.data), x.secs), x)
        x = data_transfer(f, "EPSV", "STOR big-up.bin", upload=up, timeout=60)
        got = env.get_data("web1", u, "big-up.bin")
        check(x.ok and got is not None and sha(got) == sha(up),
              "ftplib EPSV STOR of 100 MiB: sha256 equal on web1 (%s)" % rate(BIG, x.secs),
              "%s; on web1 %s bytes" % (x, None if got is None else len(got)))
        del got
    finally:
        close_ftp(f)

    local = os.path.join(env.tmp, "big-curl.bin")
    r = env.curl(u, ["-v"] + CURL_MODE["PORT"] + ["-o", local, env.url("big-down.bin")],
                 timeout=120)
    check(r.rc == 0 and "> PORT" in r.err and os.path.exists(local)
          and dpenv.sha256_file(local) == sha(down),
          "curl PORT download of 100 MiB: sha256 equal (%s)" % rate(BIG, r.secs), r)
    with open(local, "wb") as fh:
        fh.write(up)
    r = env.curl(u, ["-v"] + CURL_MODE["EPRT"] + ["-T", local, env.url("big-curl-up.bin")],
                 timeout=120)
    got = env.get_data("web1", u, "big-curl-up.bin")
    check(r.rc == 0 and "> EPRT" in r.err and got is not None and sha(got) == sha(up),
          "curl EPRT upload of 100 MiB: sha256 equal on web1 (%s)" % rate(BIG, r.secs), r)
    os.unlink(local)
    if not env.selftest:
        ev = env.wait_events("transfer", after=off, user=u.name, count=4)
        big = [e for e in ev if e.get("bytes") == str(BIG) and e.get("result") == "226"]
        dirs = sorted(e.get("direction") for e in big)
        check(dirs == ["download", "download", "upload", "upload"],
              "event=transfer bytes=%d result=226 for the 2 downloads and 2 uploads" % BIG,
              [e["_line"] for e in ev])


# ---- 2 lftp mirror --parallel=4 ------------------------------------------------------------------
def tree_files(root):
    """{relative path: sha256} of every file under root."""
    out = {}
    for d, _, files in os.walk(root):
        for name in files:
            p = os.path.join(d, name)
            out[os.path.relpath(p, root)] = dpenv.sha256_file(p)
    return out


def t_mirror(env):
    u = env.users[0]
    want = {}
    for i in range(40):
        rel = "tree/d%d/%sf%02d.bin" % (i % 4, "sub/" if i % 3 == 0 else "", i)
        size = 0 if i % 10 == 0 else (i * 197 * 1024) % (3 * MiB)
        data = env.put_random("web1", u, rel, size)
        want[os.path.relpath(rel, "tree")] = sha(data)
    work = os.path.join(env.tmp, "mirror")
    os.makedirs(work)
    off = env.log_offset()
    r = env.lftp(u, "debug 5; mirror --parallel=4 tree got", cwd=work, timeout=300)
    got = tree_files(os.path.join(work, "got"))
    missing = sorted(set(want) - set(got))
    wrong = sorted(k for k in want if k in got and got[k] != want[k])
    check(r.rc == 0 and not missing and not wrong and len(got) == len(want),
          "lftp mirror --parallel=4 (passive) of 40 files: every sha256 equal",
          "%s; missing %s, wrong %s, extra %s" % (r, missing[:5], wrong[:5],
                                                  sorted(set(got) - set(want))[:5]))
    logins = len(env.events("login", after=off, user=u.name))
    if not env.selftest:
        check(logins >= 2, "lftp mirror --parallel=4 opened several sessions (%d logins)" % logins)
    r = env.lftp(u, "debug 5; mirror -R --parallel=4 got tree-up", cwd=work, timeout=300,
                 passive=False)
    back = tree_files(env.backend_path("web1", u, "tree-up"))
    bad = sorted(k for k in want if back.get(k) != want[k])
    check(r.rc == 0 and "---> PORT" in r.err and not bad and len(back) == len(want),
          "lftp mirror -R --parallel=4 (active) back to web1: every sha256 equal",
          "%s; wrong or missing %s, extra %s" % (r, bad[:5], sorted(set(back) - set(want))[:5]))


# ---- 3 200 concurrent sessions --------------------------------------------------------------------
def session(env, i, user, down_sha, logged_in, prepared, clients, direct):
    """One of the concurrent sessions, through the proxy or (direct) straight to the user's
    backend; returns None or what went wrong, and adds its client address to `clients`.
    Every session passes both barriers (a failed one too), so one failure never stalls the
    others."""
    mode = MODES[(i // NUSERS) % 4]
    waited = {"prepared": False}

    def ready():
        waited["prepared"] = True
        prepared.wait()

    f = None
    try:
        time.sleep(i * RAMP_S)
        try:
            if direct:
                f = env.direct(env.route_of[user.name], user, timeout=60)
            else:
                f = env.ftp(user, timeout=60)
        except (OSError, EOFError, ftplib.Error) as e:
            return "session %d: login: %r" % (i, e)
        finally:
            logged_in.wait()
        clients.add("%s:%d" % f.sock.getsockname()[:2])
        reply(f, "TYPE I")
        x = data_transfer(f, mode, "RETR conc-down.bin", timeout=60, ready=ready)
        if not x.ok or sha(x.data) != down_sha:
            return "session %d %s RETR: %s" % (i, mode, x)
        up = os.urandom(SESSION_BYTES)
        x = data_transfer(f, mode, "STOR conc-up-%03d.bin" % i, upload=up, timeout=60)
        if not x.ok:
            return "session %d %s STOR: %s" % (i, mode, x)
        be = env.route_of[user.name]
        got = env.get_data(be, user, "conc-up-%03d.bin" % i)
        if got is None or sha(got) != sha(up):
            return "session %d: the STORed file on %s differs (%s bytes)" % (
                i, be, None if got is None else len(got))
        x = data_transfer(f, mode, "RETR BACKEND", timeout=60)
        if x.data.strip() != be.encode():
            return "session %d: on the wrong backend: %s" % (i, x)
        reply(f, "QUIT")
        return None
    except threading.BrokenBarrierError:
        return "session %d: barrier broken (others did not get there within %ds)" % (
            i, BARRIER_TIMEOUT)
    except (OSError, EOFError, ftplib.Error) as e:
        return "session %d %s: %r" % (i, mode, e)
    finally:
        if f is not None:
            close_ftp(f)
        if not waited["prepared"]:
            try:
                prepared.wait()
            except threading.BrokenBarrierError:
                pass


def burst(env, users, down, direct):
    """SESSIONS sessions as described at the top; (list of failures, client addresses,
    seconds)."""
    logged_in = threading.Barrier(SESSIONS, timeout=BARRIER_TIMEOUT)
    prepared = threading.Barrier(SESSIONS, timeout=BARRIER_TIMEOUT)
    clients = set()
    t0 = time.monotonic()
    with ThreadPoolExecutor(SESSIONS) as pool:
        futs = [pool.submit(session, env, i, users[i % NUSERS], down[users[i % NUSERS].name],
                            logged_in, prepared, clients, direct) for i in range(SESSIONS)]
        bad = [r for r in (fut.result() for fut in futs) if r]
    return bad, clients, time.monotonic() - t0


def t_concurrent(env):
    users = env.users[:NUSERS]
    down = {}
    for u in users:
        down[u.name] = sha(env.put_random(env.route_of[u.name], u, "conc-down.bin",
                                          SESSION_BYTES))
    # the yardstick: the same burst, same ramp, straight to the backends, in this run
    dbad, _, dtook = burst(env, users, down, direct=True)
    note("direct: %d of %d sessions completed in %.1fs%s", SESSIONS - len(dbad), SESSIONS,
         dtook, "".join("\n  " + b for b in dbad[:8]))
    off = env.log_offset()
    bad, clients, took = burst(env, users, down, direct=False)
    check(len(bad) <= len(dbad),
          "%d concurrent sessions (all logged in at once, all data connections prepared at "
          "once, 4 modes): RETR 1 MiB + STOR 1 MiB each, every sha256 equal, the right "
          "backend; through the proxy at least as many complete as straight to the backends "
          "in the same run (proxy %d in %.1fs, direct %d in %.1fs)"
          % (SESSIONS, SESSIONS - len(bad), took, SESSIONS - len(dbad), dtook),
          "\n".join(bad[:8]))
    if not env.selftest and not bad:
        ends = [e for e in env.wait_events("session_end", after=off, count=SESSIONS,
                                           timeout=15) if e.get("client") in clients]
        full = [e for e in ends if int(e.get("bytes_in", "0") or 0) >= SESSION_BYTES
                and int(e.get("bytes_out", "0") or 0) >= SESSION_BYTES]
        check(len(clients) == SESSIONS and len(ends) == SESSIONS and len(full) == SESSIONS,
              "one session_end line per session, each with >= 1 MiB each way",
              "%d sessions, %d session_end lines, %d with full byte counts"
              % (len(clients), len(ends), len(full)))
    note("%d sessions x 2 MiB in %.1fs", SESSIONS, took)


TESTS = [
    ("1 100 MiB", t_big),
    ("2 lftp mirror", t_mirror),
    ("3 concurrent sessions", t_concurrent),
]


def main(argv):
    raise_nofile(8192)
    return FtpProxyEnv.run_suite(check, "test_ftpproxy_load", TESTS, argv,
                                 {"nusers": NUSERS, "ftp_conf": {"max_sessions_per_ip": 1000}},
                                 setup=FtpProxyEnv.spread_users)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
