#!/usr/bin/python3
"""e2e.ftpproxy_mlsd: RFC 3659 (MLSD, MLST, OPTS MLST) through ftpproxy against a real
server that implements it.

vsftpd, the backend of the other FTP suites, has no MLSD ("500 Unknown command."), so here a
user is routed to a third backend, py1: pyftpdlib (Debian's python3-pyftpdlib under
/usr/bin/python3, tests/harness/pyftpd_server.py via backends.PyFtpdBackend) on 127.0.0.4, a
route in PostgreSQL like any other. Every answer through the proxy is compared with the same
request made straight to py1, and with what the files on disk are (names, sizes, types, and
modification times set to known values). Sections, each a list of checks that can fail:

  1 the route: the user lands on py1 (RETR BACKEND, event=login backend=py1)
  2 FEAT: before login the proxy's own list (the backend is not known yet); after login the
    backend's reply byte for byte, MLST with its facts included. lftp, which asks FEAT only
    before login, lists with MLSD straight to py1 and (for that reason) with LIST through
    the proxy: both listings complete
  3 MLSD in PASV, EPSV, PORT and EPRT (client side; the proxy's backend leg is EPSV): the
    listing bytes equal py1's, ftplib's FTP.mlsd() entries equal py1's and the files on
    disk; a directory of 1500 entries (about 125 KB of listing) too; one event=transfer
    cmd=MLSD direction=list result=226 per listing, bytes= its size
  4 OPTS MLST (fewer facts) is relayed and MLSD then lists only those facts, as on py1
  5 MLST on the control connection: the multi-line 250 reply relayed byte for byte (a file,
    a name with a space, a UTF-8 name, a directory, the current directory, a missing file)
  6 MLSD refused by the backend (a file, a missing directory): the same 501 in every mode,
    and the session goes on
  7 RETR (sha256), STOR and APPE in the four modes: the new backend kind works end to end,
    and MLST through the proxy shows the uploaded size
  8 backend_passive = false (EPRT toward pyftpdlib, which connects to the proxy) under the
    four client modes: MLSD byte-equal, RETR sha256 equal
  9 pyftpdlib stops cleanly: SIGTERM -> exit status 0, no process of its session left, its
    port free
 10 (final, implicit) SIGTERM: ftpproxy exits 0

Run by ctest (label e2e) or directly as root:
    PYTHONPATH=tests/harness /usr/bin/python3 tests/e2e/test_ftpproxy_mlsd.py [section numbers]
DP_FTPPROXY_SELFTEST=py1 runs the client side straight against py1 (proxy-only checks fail
by design).
"""

import ftplib
import hashlib
import io
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))
import dpenv  # noqa: E402
from checks import Checks  # noqa: E402
from ftpproxy_env import MODES, FtpProxyEnv, close_ftp, code, data_transfer, reply  # noqa: E402

check = Checks()
KiB = 1 << 10
MiB = 1 << 20
PY = "py1"
TREE = "tree"
MANY = TREE + "/many"
NMANY = 1500
T0 = 1000000000            # 2001-09-09 01:46:40 UTC: the first of the set modification times
# name -> size (None: a directory) of what TREE holds
TREE_FILES = {
    "alpha.txt": 1234,
    "empty.bin": 0,
    "big.bin": 1 * MiB + 3,
    "with space.txt": 77,
    "grüße-ü.txt": 321,
    "sub": None,
    "many": None,
}


def sha(data):
    return hashlib.sha256(data).hexdigest()


def utc(t):
    """An RFC 3659 time-val (UTC, whole seconds)."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(t))


def short(b, n=300):
    return b[:n] + (b"..." if len(b) > n else b"")


# ---- the files on py1 ---------------------------------------------------------------------------
def build_tree(env):
    """Make TREE in the user's home on py1 with known sizes and modification times. Sets
    env.truth {dir: {name: {"type": ..., "size": ..., "modify": ...}}} for TREE and MANY (what
    MLSD must say) and env.contents {relative path: bytes}."""
    u = env.users[0]
    env.contents = {}
    truth = {TREE: {}, MANY: {}}
    root = env.backend_path(PY, u)

    def stamp(rel, t):
        os.utime(os.path.join(root, rel), (t, t))
        return utc(t)

    for i in range(NMANY):
        rel = "%s/f%04d.txt" % (MANY, i)
        data = os.urandom(i % 97)
        env.put_data(PY, u, rel, data)
        truth[MANY]["f%04d.txt" % i] = {"type": "file", "size": str(len(data)),
                                        "modify": stamp(rel, T0 + 61 * i)}
    env.put_data(PY, u, TREE + "/sub/inner.txt", b"inner\n")
    stamp(TREE + "/sub/inner.txt", T0 - 86400)
    for k, (name, size) in enumerate(TREE_FILES.items()):
        rel = "%s/%s" % (TREE, name)
        if size is not None:
            data = os.urandom(size)
            env.put_data(PY, u, rel, data)
            env.contents[rel] = data
        t = T0 + 3600 * 24 * 400 * (k + 1) + k     # distinct days, years and seconds
        truth[TREE][name] = {"type": "file" if size is not None else "dir",
                             "modify": stamp(rel, t)}
        if size is not None:
            truth[TREE][name]["size"] = str(size)
    stamp(TREE, T0 + 7)
    os.makedirs(env.backend_path(PY, u, "up"), exist_ok=True)
    os.chown(env.backend_path(PY, u, "up"), u.uid, u.gid)
    env.truth = truth


def setup(env):
    env.move(env.users[0], PY)      # nothing cached yet: the first login reads the new route
    build_tree(env)


def mlsd_entries(f, path, facts=()):
    """ftplib's FTP.mlsd() as a list, or the error text."""
    try:
        return list(f.mlsd(path, facts=list(facts)))
    except (OSError, EOFError, ftplib.Error) as e:
        return "<%s: %r>" % (type(e).__name__, e)


def truth_mismatch(entries, want):
    """What differs between ftplib mlsd() entries and the expected facts ('' when none)."""
    if isinstance(entries, str):
        return entries
    got = {name: facts for name, facts in entries}
    bad = []
    if sorted(got) != sorted(want):
        bad.append("names: missing %s, extra %s" % (sorted(set(want) - set(got))[:5],
                                                     sorted(set(got) - set(want))[:5]))
    for name, w in want.items():
        g = got.get(name)
        if g is None:
            continue
        diff = {k: (g.get(k), v) for k, v in w.items() if g.get(k) != v}
        if diff:
            bad.append("%s: %s" % (name, diff))
    return "; ".join(bad[:5])


def pair(env, mode=None, encoding="utf-8"):
    """(through the proxy, straight to py1): two logged-in ftplib connections."""
    u = env.users[0]
    p = env.ftp(u, mode=mode, encoding=encoding)
    try:
        d = env.direct(PY, u, mode=mode, encoding=encoding)
    except BaseException:
        close_ftp(p)
        raise
    return p, d


# ---- 1 the route --------------------------------------------------------------------------------
def t_route(env):
    u = env.users[0]
    off = env.log_offset()
    p, d = pair(env, "EPSV")
    try:
        check(d.welcome.startswith("220 %s pyftpdlib " % PY),
              "py1 is pyftpdlib (its own greeting, straight)", d.welcome)
        got = io.BytesIO()
        try:
            r = p.retrbinary("RETR BACKEND", got.write)
        except (OSError, EOFError, ftplib.Error) as e:
            r = repr(e)
        check(code(r) == 226 and got.getvalue() == b"py1\n",
              "through the proxy the user's files are py1's (RETR BACKEND -> py1)",
              "%r %r" % (r, got.getvalue()))
    finally:
        close_ftp(p)
        close_ftp(d)
    if env.selftest:
        check(False, "event=login backend=py1: no proxy log in self-test")
        return
    ev = env.wait_events("login", after=off, user=u.name)
    check(len(ev) == 1 and ev[0].get("backend") == PY, "event=login user backend=py1",
          [e["_line"] for e in ev])


# ---- 2 FEAT -------------------------------------------------------------------------------------
def feat_lines(raw):
    return [ln for ln in raw.decode("utf-8", "replace").split("\r\n") if ln]


def t_feat(env):
    u = env.users[0]
    c = env.raw()
    try:
        pre = c.cmd("FEAT")
    finally:
        c.close()
    lines = feat_lines(pre)
    feats = [ln.strip() for ln in lines[1:-1]]
    ok = lines[0].startswith("211-") and lines[-1].startswith("211 ") and len(lines) > 2
    check(ok and not env.selftest,
          "FEAT before login: 211 multi-line from the proxy itself (the backend is not known "
          "yet): %s%s" % (", ".join(feats), "" if any(f.startswith("MLST") for f in feats)
                          else "; no MLST"), repr(pre))
    p, d = env.raw(user=u), env.raw(PY, user=u)
    try:
        via, direct = p.cmd("FEAT"), d.cmd("FEAT")
    finally:
        p.close()
        d.close()
    mlst = [ln for ln in feat_lines(direct) if ln.startswith(" MLST ")]
    check(len(mlst) == 1 and "type*;" in mlst[0] and "modify*;" in mlst[0],
          "py1 (straight) lists MLST with its facts in FEAT", repr(direct))
    check(via == direct, "FEAT after login through the proxy: py1's reply byte for byte "
          "(%s)" % (mlst[0].strip() if mlst else "no MLST"),
          "proxy %r\npy1   %r" % (via, direct))
    lftp_listing(env)


def lftp_cls(env, backend=None):
    """lftp `cls` of TREE through the proxy (or straight to backend): (Result, the names it
    printed, the verbs it sent)."""
    u = env.users[0]
    kw = {}
    if backend is not None:
        be = env.backends[backend]
        kw = {"host": be.address, "port": be.ftp_port}
    r = env.lftp(u, "debug 5; cls -1 " + TREE, timeout=60, settings=["set file:charset utf-8"],
                 **kw)
    names = sorted(n.rstrip("/").rsplit("/", 1)[-1] for n in r.out.split("\n") if n)
    verbs = [ln.split("---> ", 1)[1].split(" ")[0] for ln in r.err.splitlines() if "---> " in ln]
    return r, names, verbs


def lftp_listing(env):
    """A real client decides on MLSD from FEAT: lftp (ftp:use-mlsd on, its default) sends
    FEAT once, before USER. Straight to pyftpdlib it sees MLST and lists with MLSD; through
    the proxy the FEAT before login is the proxy's own list (no MLST: the backend is not
    known yet), so it lists with LIST. Either way the listing must be right."""
    r, names, verbs = lftp_cls(env, PY)
    check(r.rc == 0 and names == sorted(TREE_FILES) and "MLSD" in verbs
          and verbs.index("FEAT") < verbs.index("USER"),
          "lftp straight to py1: FEAT before USER, then cls %s with MLSD" % TREE,
          "%s\nnames %s\nverbs %s" % (r, names, verbs))
    r, names, verbs = lftp_cls(env)
    how = "MLSD" if "MLSD" in verbs else "LIST" if "LIST" in verbs else "?"
    check(r.rc == 0 and names == sorted(TREE_FILES) and how != "?",
          "lftp through the proxy: cls %s lists every entry (with %s%s)"
          % (TREE, how, ": it asked FEAT before login, where the proxy has no MLST"
             if how == "LIST" else ""),
          "%s\nnames %s\nverbs %s" % (r, names, verbs))


# ---- 3 MLSD in the four modes -------------------------------------------------------------------
def t_mlsd(env):
    off = env.log_offset()
    listed = []           # the size of every listing through the proxy that worked
    for mode in MODES:
        p, d = pair(env, mode)
        size = {}
        try:
            for path in (TREE, MANY, ""):
                cmd = ("MLSD " + path).strip()
                x = data_transfer(p, mode, cmd)
                y = data_transfer(d, mode, cmd)
                if x.ok:
                    listed.append(len(x.data))
                    size[path] = len(x.data)
                lines = x.data.split(b"\r\n")
                check(x.ok and y.ok and x.data == y.data and lines[-1] == b"",
                      "%s %s: 226, the listing (%d bytes, %d entries) byte-equal to py1's"
                      % (mode, cmd, len(x.data), len(lines) - 1),
                      "proxy: %s %r\npy1:   %s %r" % (x, short(x.data), y, short(y.data)))
            for path in (TREE, MANY):
                via, direct = mlsd_entries(p, path), mlsd_entries(d, path)
                if not isinstance(via, str) and path in size:
                    listed.append(size[path])     # the same listing again
                bad = truth_mismatch(via, env.truth[path])
                check(via == direct and not bad,
                      "%s ftplib mlsd(%r): %d entries, equal to py1's, names, types, sizes and "
                      "modify times as on disk" % (mode, path, len(env.truth[path])),
                      "%s\nproxy %r\npy1   %r" % (bad, str(via)[:400], str(direct)[:400]))
        finally:
            close_ftp(p)
            close_ftp(d)
    if env.selftest:
        check(False, "event=transfer cmd=MLSD: no proxy log in self-test")
        return
    ev = env.wait_events("transfer", after=off, cmd="MLSD", count=len(listed))
    want = sorted(listed)
    got = sorted(int(e.get("bytes", -1)) for e in ev)
    check(len(ev) == len(listed) and got == want
          and all(e.get("direction") == "list" and e.get("result") == "226"
                  and e.get("backend") == PY and e.get("user") == env.users[0].name
                  for e in ev),
          "one event=transfer cmd=MLSD direction=list result=226 backend=py1 user per "
          "listing (%d), bytes= the listing's size" % len(listed),
          "want bytes %s\n%s" % (want, "\n".join(e["_line"] for e in ev)))


# ---- 4 OPTS MLST --------------------------------------------------------------------------------
def t_opts(env):
    facts = ("type", "size", "modify")
    for mode in MODES:
        p, d = pair(env, mode)
        try:
            rp = reply(p, "OPTS MLST type;size;modify;")
            rd = reply(d, "OPTS MLST type;size;modify;")
            check(rp == rd and code(rp) == 200, "%s: OPTS MLST type;size;modify; relayed (%r)"
                  % (mode, rp), "proxy %r py1 %r" % (rp, rd))
            via, direct = mlsd_entries(p, TREE), mlsd_entries(d, TREE)
            bad = truth_mismatch(via, env.truth[TREE])
            only = not isinstance(via, str) and all(set(f) <= set(facts) for _, f in via)
            check(via == direct and only and not bad,
                  "%s: MLSD then lists only type, size and modify, as py1 does" % mode,
                  "%s\nproxy %r\npy1   %r" % (bad, str(via)[:400], str(direct)[:400]))
        finally:
            close_ftp(p)
            close_ftp(d)


# ---- 5 MLST -------------------------------------------------------------------------------------
def parse_mlst(raw):
    """(facts dict, path) of a 250 MLST reply in RFC 3659 §7.2 form, or None."""
    lines = raw.split(b"\r\n")
    if (len(lines) != 4 or lines[3] != b"" or not lines[0].startswith(b"250-")
            or not lines[1].startswith(b" ") or not lines[2].startswith(b"250 ")):
        return None
    factstr, _, path = lines[1][1:].partition(b" ")
    facts = {}
    for fv in factstr.decode("utf-8").rstrip(";").split(";"):
        k, _, v = fv.partition("=")
        facts[k.lower()] = v
    return facts, path.decode("utf-8")


def t_mlst(env):
    u = env.users[0]
    p, d = env.raw(user=u), env.raw(PY, user=u)
    try:
        for name in ("alpha.txt", "with space.txt", "grüße-ü.txt", "sub", None, "missing.txt"):
            arg = "" if name is None else " %s/%s" % (TREE, name)
            cmd = "MLST" + arg
            via, direct = p.cmd(cmd), d.cmd(cmd)
            if name == "missing.txt":
                check(via == direct and via.startswith(b"550 ") and via.count(b"\r\n") == 1,
                      "%s: py1's 550 relayed byte for byte (%r)" % (cmd, via),
                      "proxy %r py1 %r" % (via, direct))
                continue
            parsed = parse_mlst(via)
            if name is None:
                want_path, ok = "/", parsed is not None and parsed[0].get("type") == "dir"
            else:
                want_path = "/%s/%s" % (TREE, name)
                want = env.truth[TREE][name]
                ok = parsed is not None and all(parsed[0].get(k) == v for k, v in want.items())
            check(via == direct and ok and parsed[1] == want_path,
                  "%s: the multi-line 250 (250-, one fact line, 250 End) relayed byte for byte, "
                  "facts as on disk" % cmd, "proxy %r\npy1   %r" % (via, direct))
        r = p.cmd("NOOP")
        check(r.startswith(b"200"), "after the MLSTs the control connection goes on (NOOP)", r)
    finally:
        p.close()
        d.close()


# ---- 6 MLSD refused by the backend --------------------------------------------------------------
def t_refused(env):
    for mode in MODES:
        p, d = pair(env, mode)
        try:
            for arg in (TREE + "/alpha.txt", TREE + "/nothing-here"):
                x = data_transfer(p, mode, "MLSD " + arg)
                y = data_transfer(d, mode, "MLSD " + arg)
                check(code(x.prelim) == 501 and x.prelim == y.prelim and not x.data,
                      "%s MLSD %s: py1's %r relayed, no data" % (mode, arg, y.prelim.strip()),
                      "proxy %s\npy1   %s" % (x, y))
            r = reply(p, "NOOP")
            x = data_transfer(p, mode, "MLSD " + TREE + "/sub")
            check(code(r) == 200 and x.ok and x.data.endswith(b" inner.txt\r\n"),
                  "%s: after the refusals the session goes on (NOOP, MLSD %s/sub)" % (mode, TREE),
                  "NOOP %r, %s" % (r, x))
        finally:
            close_ftp(p)
            close_ftp(d)


# ---- 7 RETR, STOR, APPE -------------------------------------------------------------------------
def t_transfers(env):
    u = env.users[0]
    big = env.contents[TREE + "/big.bin"]
    p = env.ftp(u, encoding="utf-8", mode="EPSV")
    c = env.raw(user=u)
    try:
        p.voidcmd("TYPE I")
        for mode in MODES:
            p.set_mode(mode)
            got = io.BytesIO()
            try:
                r = p.retrbinary("RETR %s/big.bin" % TREE, got.write)
            except (OSError, EOFError, ftplib.Error) as e:
                r = repr(e)
            check(code(r) == 226 and sha(got.getvalue()) == sha(big),
                  "%s RETR 1 MiB from py1: 226, sha256 equal" % mode,
                  "%r, %d bytes" % (r, len(got.getvalue())))
            name = "up/up-%s.bin" % mode
            up1, up2 = os.urandom(256 * KiB + 1), os.urandom(10 * KiB + 3)
            try:
                r1 = p.storbinary("STOR " + name, io.BytesIO(up1))
                r2 = p.storbinary("APPE " + name, io.BytesIO(up2))
            except (OSError, EOFError, ftplib.Error) as e:
                r1 = r2 = repr(e)
            on_disk = env.get_data(PY, u, name)
            check(code(r1) == 226 and code(r2) == 226 and on_disk is not None
                  and sha(on_disk) == sha(up1 + up2),
                  "%s STOR + APPE to py1: 226 each, the file on py1 is both, sha256 equal" % mode,
                  "%r %r, on py1 %s bytes" % (r1, r2, None if on_disk is None else len(on_disk)))
            m = parse_mlst(c.cmd("MLST " + name))
            check(m is not None and m[0].get("size") == str(len(up1 + up2))
                  and m[0].get("type") == "file",
                  "%s: MLST %s through the proxy shows the uploaded size" % (mode, name), m)
    finally:
        close_ftp(p)
        c.close()


# ---- 8 backend_passive = false ------------------------------------------------------------------
def t_backend_active(env):
    """The proxy's leg toward py1 in active mode (EPRT to pyftpdlib, which connects back to
    the proxy), under the four client modes."""
    env.conf["backend_passive"] = False
    env.restart_proxy()
    try:
        for mode in MODES:
            p, d = pair(env, mode)
            try:
                for path in (TREE, MANY):
                    x = data_transfer(p, mode, "MLSD " + path)
                    y = data_transfer(d, mode, "MLSD " + path)
                    check(x.ok and y.ok and x.data == y.data,
                          "backend_passive=false, client %s: MLSD %s byte-equal to py1's (%d "
                          "bytes)" % (mode, path, len(x.data)), "proxy: %s\npy1:   %s" % (x, y))
                reply(p, "TYPE I")
                x = data_transfer(p, mode, "RETR %s/big.bin" % TREE)
                check(x.ok and sha(x.data) == sha(env.contents[TREE + "/big.bin"]),
                      "backend_passive=false, client %s: RETR 1 MiB sha256 equal" % mode, x)
            finally:
                close_ftp(p)
                close_ftp(d)
    finally:
        env.conf["backend_passive"] = True
        env.restart_proxy()


# ---- 9 pyftpdlib stops cleanly ------------------------------------------------------------------
def t_stop(env):
    be = env.backends[PY]
    pid, port = be.pid, be.ftp_port
    try:
        rc = be.stop()
    except dpenv.HarnessError as e:
        rc = repr(e)
    gone = not dpenv.pid_alive(pid) if pid else False
    check(rc == 0 and gone and dpenv.port_is_free(port, be.address),
          "pyftpdlib: SIGTERM -> exit status 0, no process left, %s:%d free"
          % (be.address, port), "rc=%r gone=%s log:\n%s" % (rc, gone, dpenv.tail(be.log, 5)))


TESTS = [
    ("1 route", t_route),
    ("2 FEAT", t_feat),
    ("3 MLSD", t_mlsd),
    ("4 OPTS MLST", t_opts),
    ("5 MLST", t_mlst),
    ("6 MLSD refused", t_refused),
    ("7 RETR STOR APPE", t_transfers),
    ("8 backend active", t_backend_active),
    ("9 pyftpdlib stop", t_stop),
]


def main(argv):
    t0 = time.monotonic()
    if FtpProxyEnv.preflight_pyftpd(check, "test_ftpproxy_mlsd"):
        FtpProxyEnv.run_world(check, "test_ftpproxy_mlsd", TESTS, set(argv),
                              {"nusers": 1, "pyftpd": (PY,)}, setup=setup, stop_with="10")
    dpenv.log("test_ftpproxy_mlsd took %.1fs", time.monotonic() - t0)
    return check.finish()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
