#!/usr/bin/python3
"""ftpproxy benchmarks, side by side in one run (the FTP half of the benchmarks issue).

    /usr/bin/python3 bench/ftp_bench.py            # 5 rounds, 1000 idle sessions
    /usr/bin/python3 bench/ftp_bench.py --quick    # 2 rounds, same sizes
    /usr/bin/python3 bench/ftp_bench.py --build-dir build-bench --json out.json

Needs root, vsftpd, PostgreSQL, ProFTPD + mod_proxy unpacked by `scripts/deps --bench`, and
for the ftpproxy column <build-dir>/ftpproxy/ftpproxy and <build-dir>/hooks/pgsql.so; a path
whose server is missing shows "n/a: <why>" and the others are still measured. Stdlib only.
The world is the e2e harness's (tests/harness/ftpproxy_env.py: a private PostgreSQL, backends
web1 and web2 = real vsftpd in their own mount namespaces, test users routed to web1, the
proxy), under one temp dir on tmpfs (--tmpdir, default /dev/shm: no disk in any measurement).
Three ways to reach web1's vsftpd, all on 127.0.0.1:

  direct    straight to web1's vsftpd
  ftpproxy  <build-dir>/ftpproxy/ftpproxy (pgsql hook, the harness's ftp section with higher
            session limits)
  proftpd   ProFTPD 1.3.8 mod_proxy as a reverse proxy (`proftpd -n -c <private config>`),
            ProxyReverseServers = web1, ProxyDataTransferPolicy client (EPSV stays EPSV)

What it measures (every figure per path, with the ratio path/direct):

1. Transfers: RETR of a --retr-size file of random bytes (default 1 GiB, made once in the
   user's home) read into a buffer and dropped, and STOR of a --stor-size file (256 MiB) sent
   with sendfile(2) from tmpfs; the backend writes it to tmpfs and the script deletes it.
   Each transfer is one fresh login, in EPSV and in PASV mode. Paths are interleaved and their
   order rotates every round. Reported: median MB/s (10^6 B/s) from the EPSV/PASV command to
   the 226 ("xfer", what the targets are about) and from connect to 226 ("wall").
2. Logins: connect, 220, USER, 331, PASS, 230, QUIT, 221 in a loop for --login-secs by 1 and
   by 8 concurrent clients (threads); logins/s, median and p90 time of one login. The users'
   passwords are SHA-512 crypt hashes on the backend (--password-hash; Debian's yescrypt
   costs ~12 ms per check and would hide any proxy's share).
3. Idle sessions: on freshly started proxies, --sessions connections, each logged in with
   USER/PASS over a raw socket and then left alone; memory of the server's processes before
   and with all of them open: (with N - with 0) / N. ftpproxy is one process, so that is its
   VmRSS; vsftpd and ProFTPD fork per session, so all their processes are summed, by VmRSS
   (counts shared pages once per process) and by Pss (shares them out: the honest total).

Every socket operation has a timeout and every loop a deadline; every session, process, user
and file the script made is gone at exit. Exit status: 0 when every measurement ran (targets
met or not), 1 when something failed (in the table, the JSON and on stderr), 2 on bad usage or
missing prerequisites.
"""

import argparse
import ctypes
import ftplib
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "harness"))
os.environ.setdefault("DP_SOURCE_DIR", SOURCE_DIR)


def _early_build_dir():
    """--build-dir, read before the harness is imported: it takes the daemon and the hooks
    from DP_BUILD_DIR when its modules load."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--build-dir")
    known, _ = pre.parse_known_args()
    if known.build_dir:
        os.environ["DP_BUILD_DIR"] = os.path.abspath(known.build_dir)


_early_build_dir()
import dpenv  # noqa: E402
from benchlib import (cpu_secs, f1, f2, failure_lines, fmt_size, git_describe,  # noqa: E402
                      machine_info, median, meminfo, parse_size, proc_fields, ratio, run_bench)
from ftpproxy_env import FtpProxyEnv, data_transfer  # noqa: E402
from proxy_env import kill_group, raise_nofile  # noqa: E402

HOST = "127.0.0.1"
PATHS = ("direct", "ftpproxy", "proftpd")
MODES = ("EPSV", "PASV")
OPS = ("RETR", "STOR")
PHASES = ("transfer", "login", "idle")
TARGETS = {"RETR": 0.90, "STOR": 0.85, "logins": 0.90}      # ftpproxy / direct, at least
# what the issue measured for ProFTPD mod_proxy / direct on its 2-core machine
ISSUE_PROFTPD = {"RETR": 0.33, "STOR": 0.29, "logins": 0.23}
OP_TIMEOUT = 30.0                  # seconds per socket operation (connect, one reply, one recv)
MIN_MEM_AVAILABLE_KIB = 2 * 1024 * 1024     # stop opening idle sessions below 2 GiB available
CHECK_SIZE = 16 << 20              # the content check before the measurements
RETR_FILE, CHECK_FILE, STOR_FILE = "bench-retr.dat", "bench-check.dat", "bench-stor.dat"
DEFAULT_PROFTPD_ROOT = os.environ.get("DP_PROFTPD_ROOT") or "/opt/dynproxy/bench-proftpd"


def log(msg, *args):
    dpenv.log(msg, *args)


class BenchError(RuntimeError):
    """One measurement went wrong; the message is the symptom."""


# ---- processes and files ---------------------------------------------------------------------
def process_tree(root):
    """root and all its descendants (pids), from one scan of /proc."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st[st.rfind(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_memory(root):
    """{processes, rss_kib, pss_kib, anon_kib, fds} summed over root's process tree."""
    out = {"processes": 0, "rss_kib": 0, "pss_kib": 0, "anon_kib": 0, "fds": 0}
    names = {"Rss": "rss_kib", "Pss": "pss_kib", "Anonymous": "anon_kib"}
    for pid in process_tree(root):
        try:
            got = proc_fields("/proc/%d/smaps_rollup" % pid, names)
            fds = len(os.listdir("/proc/%d/fd" % pid))
        except OSError:
            continue            # a process that just ended
        for k, v in got.items():
            out[names[k]] += v
        out["fds"] += fds
        out["processes"] += 1
    return out


def write_random_file(path, size, owner=None):
    """size random bytes at path (chowned to owner, a users.User)."""
    with open(path, "wb") as f:
        left = size
        while left:
            left -= f.write(os.urandom(min(left, 4 << 20)))
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)


def read_since(path, off):
    """Text a log file gained past byte offset off."""
    try:
        with open(path, "rb") as f:
            f.seek(off)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def file_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def set_password_hashes(users, method):
    """Store the users' passwords as `method` crypt hashes ("sha512": $6$, 5000 rounds;
    "md5": $1$) with chpasswd -e; "yescrypt" keeps what the harness set (Debian 12's PAM
    default, $y$, about 12 ms of CPU per check on the reference machine)."""
    if method == "yescrypt":
        return
    lib = ctypes.CDLL("libcrypt.so.1")
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt_gensalt.restype = ctypes.c_char_p
    prefix = {"sha512": b"$6$", "md5": b"$1$"}[method]
    lines = []
    for u in users:
        h = lib.crypt(u.password.encode(), lib.crypt_gensalt(prefix, 0, None, 0))
        if not h or not h.startswith(prefix):
            raise dpenv.HarnessError("libcrypt cannot make a %s hash" % method)
        lines.append("%s:%s\n" % (u.name, h.decode()))
    dpenv.run(["chpasswd", "-e"], input="".join(lines), timeout=30)


def machine_busy_secs():
    """CPU seconds all CPUs spent busy since boot (/proc/stat: user, nice, system, irq,
    softirq, steal)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / float(os.sysconf("SC_CLK_TCK"))


# ---- FTP client pieces -----------------------------------------------------------------------
def read_reply(f):
    """One (possibly multi-line, RFC 959 4.2) reply from a control file: (code, text)."""
    line = f.readline(8192)
    if not line:
        raise BenchError("connection closed while waiting for a reply")
    text = line.decode("latin-1").rstrip("\r\n")
    code = text[:3]
    if text[3:4] == "-":
        while True:
            more = f.readline(8192)
            if not more:
                raise BenchError("connection closed inside a multi-line reply")
            more = more.decode("latin-1").rstrip("\r\n")
            text += "\n" + more
            if more[:3] == code and more[3:4] == " ":
                break
    return code, text


def expect(f, code, what):
    got, text = read_reply(f)
    if got != code:
        raise BenchError("%s: expected %s, got %r" % (what, code, text[:200]))
    return text


def login(port, user):
    """A logged-in ftplib.FTP (binary mode) on port."""
    ctl = ftplib.FTP(timeout=OP_TIMEOUT)
    ctl.connect(HOST, port)
    ctl.login(user.name, user.password)
    ctl.voidcmd("TYPE I")
    return ctl


def open_data(ctl, mode):
    """Ask for a passive data connection (EPSV or PASV) and connect to what the reply says."""
    if mode == "EPSV":
        host, port = ftplib.parse229(ctl.sendcmd("EPSV"), ctl.sock.getpeername())
    else:
        host, port = ftplib.parse227(ctl.sendcmd("PASV"))
    return socket.create_connection((host, port), timeout=OP_TIMEOUT)


def recv_all(data, deadline):
    """Read a data connection to EOF into one reused buffer; returns the byte count."""
    buf = bytearray(1 << 20)
    mv = memoryview(buf)
    n = 0
    while True:
        k = data.recv_into(mv)
        if not k:
            return n
        n += k
        if time.monotonic() > deadline:
            raise BenchError("transfer deadline passed after %d bytes" % n)


# ---- the three ways to web1's vsftpd ---------------------------------------------------------
class Server:
    """One path to the backend: where it listens, its processes, its log."""
    name = None
    port = None
    missing = None          # None, or why this path cannot be measured ("n/a: ...")

    def root_pid(self):
        raise NotImplementedError

    def logfiles(self):
        raise NotImplementedError

    def is_problem(self, line):
        raise NotImplementedError

    def log_offsets(self):
        return [file_size(p) for p in self.logfiles()]

    def problems_since(self, offs, limit=40):
        lines = []
        for path, off in zip(self.logfiles(), offs):
            lines += [ln for ln in read_since(path, off).splitlines() if self.is_problem(ln)]
        return lines[-limit:]

    def alive(self):
        pid = self.root_pid()
        return pid is not None and dpenv.pid_alive(pid)

    def restart(self):
        """Start afresh (a clean process for the idle phase)."""

    def ensure(self):
        """None when it runs, else what happened (after trying to start it again)."""
        if self.alive():
            return None
        what = "%s is not running; log tail:\n%s" % (self.name, "\n".join(
            dpenv.tail(p, 15) for p in self.logfiles()))
        try:
            self.restart()
            what += "\n(restarted for the remaining measurements)"
        except dpenv.HarnessError as e:
            what += "\nrestart failed: %s" % e
        return what


class Direct(Server):
    name = "direct"

    def __init__(self, be):
        self.be = be
        self.port = be.ftp_port

    def root_pid(self):
        return self.be.pids().get("vsftpd")

    def logfiles(self):
        return [self.be.vsftpd_log, self.be.vsftpd_out]

    def is_problem(self, line):
        return "FAIL" in line or "OOPS" in line

    def restart(self):
        self.be.start()        # repairs what is not running; no-op otherwise


class ProftpdProxy(Server):
    """ProFTPD + mod_proxy, reverse proxy in front of web1, with a private config."""
    name = "proftpd"

    def __init__(self, root, basedir, backend_port, policy):
        self.policy = policy
        self.binary = os.path.join(root, "usr", "sbin", "proftpd")
        self.moddir = os.path.join(root, "usr", "lib", "proftpd")
        self.dir = basedir
        self.backend_port = backend_port
        self.proc = None
        self.config_lines = None
        self.conf = os.path.join(basedir, "proftpd.conf")
        self.out = os.path.join(basedir, "proftpd.out")
        self.syslog = os.path.join(basedir, "system.log")
        self.proxylog = os.path.join(basedir, "proxy.log")
        for mod in ("mod_proxy.so", "mod_tls.so"):
            if not os.path.isfile(os.path.join(self.moddir, mod)):
                self.missing = ("n/a: %s not found (scripts/deps --bench unpacks ProFTPD there)"
                                % os.path.join(self.moddir, mod))
        if not os.access(self.binary, os.X_OK):
            self.missing = "n/a: %s not found (scripts/deps --bench)" % self.binary

    def version(self):
        r = subprocess.run([self.binary, "-v"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=10)
        return r.stdout.strip()

    def write_config(self):
        os.makedirs(os.path.join(self.dir, "tables"), exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.port = self.port or dpenv.free_port()
        lo, hi = dpenv.free_port_range(100)
        # mod_proxy's reverse mode as its documentation (mod_proxy.html, "Reverse Proxy
        # Configuration") shows it, with the one backend as a static list. Differences from a
        # stock install, each to measure the proxy and not a side feature:
        #  - UseIPv6 off: with it on (the default of Debian's IPv6 build) mod_proxy 0.9.3
        #    creates the backend data socket as IPv6 and connect(2) to the IPv4 backend fails
        #    with EINVAL ("unable to connect to 127.0.0.1#port: Invalid argument", 425).
        #  - mod_tls is loaded (TLSEngine off): Debian's mod_proxy.so takes its OpenSSL
        #    symbols from it ("undefined symbol: OPENSSL_init_ssl" otherwise).
        #  - ProxyReverseConnectPolicy Random (--proftpd-policy): with one backend every policy
        #    picks it, but RoundRobin reads and updates its SQLite table on every connect, and
        #    in a burst (the idle phase opens 50 at once) children find it locked and give up
        #    ("ProxyRetryCount 5 reached with no successful connection": the client sees the
        #    connection closed before any greeting).
        #  - DelayEngine off (mod_delay would pad every login), UseReverseDNS off, WtmpLog off.
        lines = [
            "# written by bench/ftp_bench.py",
            "ServerType standalone",
            'ServerName "bench ProFTPD mod_proxy"',
            "DefaultAddress %s" % HOST,
            "SocketBindTight on",
            "UseIPv6 off",
            "Port %d" % self.port,
            "User nobody",
            "Group nogroup",
            "PidFile %s" % os.path.join(self.dir, "proftpd.pid"),
            "ScoreboardFile %s" % os.path.join(self.dir, "proftpd.scoreboard"),
            "SystemLog %s" % self.syslog,
            "WtmpLog off",
            "UseReverseDNS off",
            "MaxInstances 4000",
            "PassivePorts %d %d" % (lo, hi),
            "TimeoutIdle 3600",
            "TimeoutLogin 300",
            "<IfModule mod_delay.c>",
            "  DelayEngine off",
            "</IfModule>",
            "<IfModule mod_ctrls.c>",
            "  ControlsEngine off",
            "</IfModule>",
            "ModulePath %s" % self.moddir,
            "LoadModule mod_tls.c",
            "LoadModule mod_proxy.c",
            "TLSEngine off",
            "ProxyEngine on",
            "ProxyRole reverse",
            "ProxyTables %s" % os.path.join(self.dir, "tables"),
            "ProxyLog %s" % self.proxylog,
            "ProxyReverseServers ftp://%s:%d" % (HOST, self.backend_port),
            "ProxyReverseConnectPolicy %s" % self.policy,
            "ProxyDataTransferPolicy client",
            "ProxyTLSEngine off",
        ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        return lines

    def start(self):
        if self.config_lines is None:
            self.config_lines = self.write_config()
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen([self.binary, "-n", "-c", self.conf],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         start_new_session=True, cwd="/")
        if not dpenv.wait_port(self.port, timeout=15, alive=lambda: self.proc.poll() is None):
            raise dpenv.HarnessError("proftpd does not accept on %s:%d:\n%s"
                                     % (HOST, self.port, dpenv.tail(self.out, 20)))

    def root_pid(self):
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def logfiles(self):
        return [self.proxylog, self.syslog, self.out]

    def is_problem(self, line):
        low = line.lower()
        return any(w in low for w in ("unable", "error", "fatal", "refused", "failed"))

    def stop(self):
        """SIGTERM the master, then whatever of its tree is left (session children)."""
        if self.proc is None:
            return
        tree = process_tree(self.proc.pid) if self.proc.poll() is None else []
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for pid in tree:
            if dpenv.pid_alive(pid):
                dpenv.kill_wait(pid, 2.0)
        kill_group(self.proc)
        self.proc = None

    def restart(self):
        self.stop()
        self.start()


class FtpProxy(Server):
    """build-dir/ftpproxy/ftpproxy as tests/harness/ftpproxy_env.py runs it (pgsql hook,
    private PostgreSQL, the users routed to web1)."""
    name = "ftpproxy"

    def __init__(self, env, missing):
        self.env = env
        self.missing = missing
        self.port = None if missing else env.port

    def root_pid(self):
        return self.env.proxy_pid if self.env.proxy_alive() else None

    def logfiles(self):
        return [self.env.logfile]

    def is_problem(self, line):
        return any("level=" + lv in line for lv in ("error", "warn", "fatal", "crit"))

    def restart(self):
        self.env.restart_proxy()


# ---- the benchmark ---------------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.args = args
        self.env = None
        self.be = None
        self.users = []
        self.servers = {}        # name -> Server, every path (missing ones included)
        self.failures = []       # {"phase", "what", "symptom", "proxy_log"}
        self.results = {}
        self.stor_src = None
        self.check_down = self.check_up = None

    def paths(self):
        """The paths that can be measured, in PATHS order."""
        return [p for p in self.args.paths if not self.servers[p].missing]

    def fail(self, phase, what, symptom, srv, offs):
        entry = {"phase": phase, "what": what, "symptom": str(symptom).strip()[-2000:],
                 "proxy_log": srv.problems_since(offs)}
        died = srv.ensure()
        if died:
            entry["proxy_died"] = died
        self.failures.append(entry)
        log("FAILURE %s/%s: %s", phase, what, entry["symptom"][-500:])
        for ln in entry["proxy_log"][-10:]:
            log("  %s: %s", srv.name, ln)
        if died:
            log("  %s", died)

    def home(self, user, name=""):
        return os.path.join(self.be.home_dir, user.name, name)

    # ---- setup -------------------------------------------------------------------------
    def setup(self):
        a = self.args
        tempfile.tempdir = a.tmpdir          # the world (backend homes included) on tmpfs
        raise_nofile(4 * a.sessions + 1024)
        self.results["nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        missing = None
        if "ftpproxy" not in a.paths:
            missing = "n/a: not asked for (--paths)"
        elif FtpProxyEnv.missing():
            missing = "n/a: binary missing (%s)" % FtpProxyEnv.BINARY
        if missing:
            # the harness's self-test mode: the same world (PostgreSQL, backends, users),
            # no daemon
            os.environ[FtpProxyEnv.SELFTEST_VAR] = "web1"
        self.env = FtpProxyEnv(nusers=a.users, workers=a.workers, prefix="dpb-ftp-",
                               ftp_conf={"max_sessions_per_ip": a.sessions + 1000,
                                         "max_sessions": a.sessions + 1000,
                                         "idle_timeout_s": 3600,
                                         "data_sndbuf": a.data_sndbuf})
        self.env.__enter__()
        self.be = self.env.backends["web1"]
        self.users = self.env.users
        set_password_hashes(self.users, a.password_hash)
        self.servers["direct"] = Direct(self.be)
        self.servers["ftpproxy"] = FtpProxy(self.env, missing)
        if not missing:
            self.results["ftpproxy_config"] = dpenv.read_text(self.env.config).splitlines()
        u = self.users[0]
        t0 = time.monotonic()
        write_random_file(self.home(u, RETR_FILE), a.retr_size, u)
        self.stor_src = os.path.join(self.env.tmp, "stor.src")
        write_random_file(self.stor_src, a.stor_size)
        self.check_down, self.check_up = os.urandom(CHECK_SIZE), os.urandom(CHECK_SIZE)
        self.env.put_data("web1", u, CHECK_FILE, self.check_down)
        log("data files made in %.1fs: %s %s, %s to STOR (all on %s)", time.monotonic() - t0,
            RETR_FILE, fmt_size(a.retr_size), fmt_size(a.stor_size), a.tmpdir)
        pf = ProftpdProxy(a.proftpd_root, os.path.join(self.env.tmp, "proftpd"),
                          self.be.ftp_port, a.proftpd_policy)
        self.servers["proftpd"] = pf
        if "proftpd" not in a.paths:
            pf.missing = "n/a: not asked for (--paths)"
        if not pf.missing:
            pf.start()
            self.results["proftpd_version"] = pf.version()
            self.results["proftpd_config"] = pf.config_lines
        self.results["ftpproxy_binary"] = os.path.realpath(FtpProxyEnv.BINARY)
        for name in PATHS:
            srv = self.servers[name]
            log("%-8s %s", name, srv.missing or "port %d" % srv.port)
        for name in self.paths():
            self.check_path(self.servers[name])
        self.results["missing"] = {n: s.missing for n, s in self.servers.items() if s.missing}

    def check_path(self, srv):
        """RETR and STOR of a 16 MiB file in every mode, content compared: a path that does not
        move the right bytes is not measured."""
        u = self.users[0]
        for mode in self.args.modes:
            offs = srv.log_offsets()
            try:
                ctl = login(srv.port, u)
                x = data_transfer(ctl, mode, "RETR " + CHECK_FILE)
                if not x.ok or x.data != self.check_down:
                    raise BenchError("%r: content %s" % (x, "differs" if x.ok else "-"))
                x = data_transfer(ctl, mode, "STOR " + STOR_FILE, upload=self.check_up)
                ctl.quit()
                with open(self.home(u, STOR_FILE), "rb") as f:
                    got = f.read()
                os.unlink(self.home(u, STOR_FILE))
                if not x.ok or got != self.check_up:
                    raise BenchError("%r: content on the backend %s"
                                     % (x, "differs" if x.ok else "-"))
            except (OSError, EOFError, ftplib.Error, BenchError) as e:
                self.fail("check", "%s %s" % (srv.name, mode), repr(e), srv, offs)
                srv.missing = "n/a: content check failed (%s)" % e
                return

    def abort_log(self):
        return []

    def teardown(self):
        if "proftpd" in self.servers:
            self.servers["proftpd"].stop()
        if self.env is not None:
            for p in self.env.close():
                log("cleanup: %s", p)

    # ---- 1. transfers ------------------------------------------------------------------
    def transfer_once(self, srv, op, mode):
        """One login + one transfer; returns a dict of figures, or None (failure recorded)."""
        a = self.args
        u = self.users[0]
        size = a.retr_size if op == "RETR" else a.stor_size
        timeout = a.xfer_timeout or max(120.0, size / 4e6)
        offs = srv.log_offsets()
        pid = srv.root_pid() if srv.name == "ftpproxy" else None
        cpu0 = cpu_secs(pid) if pid else None
        t0 = time.monotonic()
        deadline = t0 + timeout
        ctl = None
        try:
            ctl = login(srv.port, u)
            t1 = time.monotonic()
            busy0 = machine_busy_secs()
            data = open_data(ctl, mode)
            if op == "RETR":
                ctl.sendcmd("RETR " + RETR_FILE)
                n = recv_all(data, deadline)
            else:
                ctl.sendcmd("STOR " + STOR_FILE)
                with open(self.stor_src, "rb") as f:
                    n = data.sendfile(f)
            data.close()
            ctl.voidresp()
            t2 = time.monotonic()
            busy = machine_busy_secs() - busy0
            ctl.quit()
            if op == "STOR":
                n = file_size(self.home(u, STOR_FILE))
                os.unlink(self.home(u, STOR_FILE))
            if n != size:
                raise BenchError("%d of %d bytes arrived" % (n, size))
        except (OSError, EOFError, ftplib.Error, BenchError) as e:
            if ctl is not None:
                ctl.close()
            self.fail("transfer", "%s %s %s" % (srv.name, op, mode), repr(e), srv, offs)
            return None
        res = {"xfer_mbps": size / (t2 - t1) / 1e6, "wall_mbps": size / (t2 - t0) / 1e6,
               "login_secs": t1 - t0, "machine_cpu_secs": busy}
        cpu1 = cpu_secs(pid) if pid else None
        if cpu0 is not None and cpu1 is not None:
            res["proxy_cpu_secs"] = cpu1 - cpu0
        if srv.name == "ftpproxy":
            self.check_accounting(srv, op, size, offs)
        return res

    def check_accounting(self, srv, op, size, offs):
        """ftpproxy's event=transfer line must account for the whole file."""
        ev = self.env.wait_events("transfer", after=offs[0], cmd=op, timeout=3.0)
        if not ev or int(ev[-1].get("bytes") or 0) != size:
            self.fail("transfer", "ftpproxy %s accounting" % op,
                      "event=transfer %s" % (ev[-1]["_line"] if ev else "not logged"), srv, offs)

    def bench_transfer(self):
        a = self.args
        paths = self.paths()
        out = {"retr_size": a.retr_size, "stor_size": a.stor_size, "repeat": a.repeat,
               "rows": {}}
        for op in OPS:
            for name in paths:        # warm-up, unmeasured: first touch of tmpfs pages, caches
                self.transfer_once(self.servers[name], op, a.modes[0])
            for mode in a.modes:
                size = a.retr_size if op == "RETR" else a.stor_size
                log("%s %s %s x %d per path, interleaved", op, fmt_size(size), mode, a.repeat)
                runs = {p: [] for p in paths}
                for i in range(a.repeat):
                    k = i % len(paths)
                    for name in paths[k:] + paths[:k]:
                        r = self.transfer_once(self.servers[name], op, mode)
                        if r:
                            runs[name].append(r)
                            log("  round %d %-8s %7.1f MB/s xfer, %7.1f MB/s wall%s", i + 1,
                                name, r["xfer_mbps"], r["wall_mbps"],
                                ", proxy CPU %.2fs" % r["proxy_cpu_secs"]
                                if "proxy_cpu_secs" in r else "")
                row = {"runs": runs}
                for key in ("xfer_mbps", "wall_mbps"):
                    row[key] = {p: median([r[key] for r in runs[p]]) for p in paths}
                    row[key.replace("mbps", "ratio")] = {
                        p: ratio(row[key][p], row[key].get("direct")) for p in paths}
                row["machine_cpu_secs_per_gib"] = {
                    p: median([r["machine_cpu_secs"] * (1 << 30) / size for r in runs[p]])
                    for p in paths}
                cpus = [r["proxy_cpu_secs"] for r in runs.get("ftpproxy", [])
                        if "proxy_cpu_secs" in r]
                row["ftpproxy_cpu_secs_per_gib"] = (median(cpus) * (1 << 30) / size
                                                    if cpus else None)
                out["rows"]["%s %s" % (op, mode)] = row
        self.results["transfer"] = out

    # ---- 2. logins ---------------------------------------------------------------------
    def login_run(self, srv, clients, secs):
        """`clients` threads logging in and out for `secs`; returns figures and errors."""
        stop_at = time.monotonic() + secs
        lat = [[] for _ in range(clients)]
        errors = []

        def worker(k):
            u = self.users[k % len(self.users)]
            while time.monotonic() < stop_at and len(errors) < 20:
                t = time.monotonic()
                ctl = ftplib.FTP(timeout=OP_TIMEOUT)
                try:
                    ctl.connect(HOST, srv.port)
                    ctl.login(u.name, u.password)
                    ctl.quit()
                except (OSError, EOFError, ftplib.Error) as e:
                    errors.append(repr(e))
                    ctl.close()
                    time.sleep(0.05)
                    continue
                lat[k].append(time.monotonic() - t)

        threads = [threading.Thread(target=worker, args=(k,), daemon=True)
                   for k in range(clients)]
        t0 = time.monotonic()
        for th in threads:
            th.start()
        for th in threads:
            th.join(secs + 4 * OP_TIMEOUT)
        elapsed = time.monotonic() - t0
        if any(th.is_alive() for th in threads):
            errors.append("a client thread is still blocked %.0fs after the end" % elapsed)
        done = sorted(x * 1000.0 for xs in lat for x in xs)
        return {"logins": len(done), "secs": elapsed, "per_s": len(done) / elapsed,
                "median_ms": median(done), "errors": errors,
                "p90_ms": done[int(0.9 * (len(done) - 1))] if done else None,
                "max_ms": done[-1] if done else None}

    def bench_login(self):
        a = self.args
        paths = self.paths()
        out = {"secs": a.login_secs, "repeat": a.repeat, "clients": {}}
        for name in paths:                       # warm-up, unmeasured
            self.login_run(self.servers[name], 2, 0.5)
        for clients in a.clients:
            log("logins: %d client(s), %.1fs x %d per path, interleaved", clients, a.login_secs,
                a.repeat)
            runs = {p: [] for p in paths}
            for i in range(a.repeat):
                k = i % len(paths)
                for name in paths[k:] + paths[:k]:
                    srv = self.servers[name]
                    offs = srv.log_offsets()
                    r = self.login_run(srv, clients, a.login_secs)
                    if r["errors"]:
                        self.fail("login", "%s x%d" % (name, clients), "%d errors, first: %s"
                                  % (len(r["errors"]), r["errors"][0]), srv, offs)
                    if r["logins"]:
                        runs[name].append(r)
                    log("  round %d %-8s %7.1f logins/s, ms per login: median %.1f, p90 %.1f, "
                        "max %.1f%s", i + 1, name, r["per_s"], r["median_ms"] or 0,
                        r["p90_ms"] or 0, r["max_ms"] or 0,
                        ", %d errors" % len(r["errors"]) if r["errors"] else "")
            per_s = {p: median([r["per_s"] for r in runs[p]]) for p in paths}
            out["clients"][str(clients)] = {
                "runs": runs, "per_s": per_s,
                "ratio": {p: ratio(per_s[p], per_s.get("direct")) for p in paths},
                "median_ms": {p: median([r["median_ms"] for r in runs[p]]) for p in paths},
                "p90_ms": {p: median([r["p90_ms"] for r in runs[p]]) for p in paths}}
        self.results["login"] = out

    # ---- 3. idle sessions --------------------------------------------------------------
    def open_batch(self, srv, k, first):
        """k logged-in sessions over raw sockets, each step pipelined over the batch."""
        socks = []
        try:
            for i in range(k):
                s = socket.create_connection((HOST, srv.port), timeout=OP_TIMEOUT)
                socks.append((s, s.makefile("rb"), self.users[(first + i) % len(self.users)]))
            for cmd, code in ((None, "220"), ("USER", "331"), ("PASS", "230")):
                for s, f, u in socks:
                    if cmd:
                        arg = u.name if cmd == "USER" else u.password
                        s.sendall(("%s %s\r\n" % (cmd, arg)).encode())
                for s, f, u in socks:
                    expect(f, code, cmd or "greeting")
        except (OSError, BenchError):
            close_sessions(socks)
            raise
        return socks

    def bench_idle(self):
        a = self.args
        out = {"sessions": a.sessions, "batch": a.batch, "paths": {}}
        for name in self.paths():
            srv = self.servers[name]
            srv.restart()           # a fresh process: no allocator state from the phases before
            self.login_run(srv, 1, 0.3)           # warm-up: hook, route cache, PAM
            time.sleep(1.0)
            root = srv.root_pid()
            base = tree_memory(root)
            log("idle %s: pid %d, %d process(es), Rss %d KiB, Pss %d KiB before", name, root,
                base["processes"], base["rss_kib"], base["pss_kib"])
            ent = {"before": base}
            socks = []
            offs = srv.log_offsets()
            t0 = time.monotonic()
            try:
                while len(socks) < a.sessions:
                    avail = meminfo().get("MemAvailable", 1 << 40)
                    if avail < MIN_MEM_AVAILABLE_KIB:
                        ent["stop_reason"] = "MemAvailable %d MiB < 2 GiB" % (avail // 1024)
                        break
                    k = min(a.batch, a.sessions - len(socks))
                    socks += self.open_batch(srv, k, len(socks))
                    if time.monotonic() - t0 > a.idle_open_timeout:
                        ent["stop_reason"] = "opening took over %ds" % a.idle_open_timeout
                        break
                ent["open_secs"] = round(time.monotonic() - t0, 1)
                time.sleep(2.0)
                top = tree_memory(root)
                n = len(socks)
                ent.update(sessions=n, at=top,
                           rss_kib_per_session=(top["rss_kib"] - base["rss_kib"]) / float(n),
                           pss_kib_per_session=(top["pss_kib"] - base["pss_kib"]) / float(n))
                log("idle %s: %d sessions open in %.0fs: %d processes, Rss %d KiB (%.1f KiB per "
                    "session), Pss %d KiB (%.1f KiB per session), %d fds", name, n,
                    ent["open_secs"], top["processes"], top["rss_kib"],
                    ent["rss_kib_per_session"], top["pss_kib"], ent["pss_kib_per_session"],
                    top["fds"])
                if ent.get("stop_reason"):
                    self.fail("idle", name, "stopped at %d sessions: %s"
                              % (n, ent["stop_reason"]), srv, offs)
            except (OSError, BenchError) as e:
                self.fail("idle", "%s session %d" % (name, len(socks) + 1), repr(e), srv, offs)
            finally:
                close_sessions(socks)
            ent["after_close"] = self.settle(root, base["processes"])
            self.settle(self.servers["direct"].root_pid(), 1)   # the backend's sessions end too
            out["paths"][name] = ent
        self.results["idle"] = out

    def settle(self, root, processes):
        """Wait (bounded) until the server is back to its process count; returns its memory."""
        dpenv.wait_until(lambda: len(process_tree(root)) <= processes, 30, 0.5)
        time.sleep(1.0)
        return tree_memory(root)

    # ---- report ------------------------------------------------------------------------
    def report(self):
        R = self.results
        a = self.args
        m = R["machine"]
        paths = list(a.paths)
        lines = ["ftpproxy benchmarks: %d x %s, %s, kernel %s, %s, %s" % (
            m["nproc"], m["cpu_model"], m["mem_total_gib"] and "%.0f GiB" % m["mem_total_gib"],
            m["kernel"], m.get("vsftpd") or "vsftpd ?", R.get("proftpd_version") or "no ProFTPD")]
        src = R.get("source") or {}
        lines.append("source %s%s, ftpproxy workers %d, ftp.data_sndbuf %d, load average at "
                     "start %s" % (src.get("commit", "?"),
                                   " (+ uncommitted changes)" if src.get("dirty") else "",
                                   a.workers, a.data_sndbuf, m.get("loadavg_at_start")))
        for name in paths:
            if self.servers.get(name) and self.servers[name].missing:
                lines.append("%s: %s" % (name, self.servers[name].missing))
        others = [p for p in paths if p != "direct"]
        head = "%-22s" + " %10s" * len(paths) + " %7s" * len(others) + "  %s"

        def row(label, vals, target, fmt=f1):
            rs = [ratio(vals.get(p), vals.get("direct")) for p in others]
            verdict = ""
            if target is not None and "ftpproxy" in vals:
                rf = ratio(vals["ftpproxy"], vals.get("direct"))
                verdict = "-" if rf is None else ("met" if rf >= target else "MISSED")
            cells = [fmt(vals.get(p)) if p in vals else "n/a" for p in paths]
            return head % tuple([label] + cells + [f2(r) for r in rs] + [verdict])

        ratio_names = ["%s/d" % p[0] for p in others]
        if "transfer" in R:
            t = R["transfer"]
            lines += ["", "Transfers, median of %d (MB/s = 10^6 B/s; xfer = EPSV/PASV command to "
                      "226, wall = connect to 226)" % t["repeat"]]
            lines.append(head % tuple(["", *paths, *ratio_names, "target f/d"]))
            for key, rowrow in t["rows"].items():
                op, mode = key.split()
                size = t["retr_size"] if op == "RETR" else t["stor_size"]
                label = "%s %s %s" % (op, fmt_size(size), mode)
                lines.append(row(label, rowrow["xfer_mbps"], TARGETS[op]))
                lines.append(row("  (wall)", rowrow["wall_mbps"], None))
                lines.append(row("  CPU s/GiB, machine", rowrow["machine_cpu_secs_per_gib"],
                                 None, f2))
                if rowrow.get("ftpproxy_cpu_secs_per_gib") is not None:
                    lines.append("%-22s ftpproxy CPU %.2f s per GiB relayed"
                                 % ("", rowrow["ftpproxy_cpu_secs_per_gib"]))
            lines.append("CPU s/GiB, machine: busy time of all CPUs (client, proxy, vsftpd, "
                         "kernel) from EPSV/PASV to 226, per GiB moved")
            lines.append("targets f/d: RETR >= %.2f, STOR >= %.2f; the issue measured ProFTPD "
                         "mod_proxy at p/d %.2f (RETR) and %.2f (STOR)"
                         % (TARGETS["RETR"], TARGETS["STOR"], ISSUE_PROFTPD["RETR"],
                            ISSUE_PROFTPD["STOR"]))
        if "login" in R:
            lg = R["login"]
            lines += ["", "Logins/s (connect, USER, PASS, QUIT), median of %d runs of %.1fs; "
                      "backend password hash %s" % (lg["repeat"], lg["secs"], a.password_hash)]
            lines.append(head % tuple(["", *paths, *ratio_names, "target f/d"]))
            for clients, c in lg["clients"].items():
                lines.append(row("%s client%s" % (clients, "" if clients == "1" else "s"),
                                 c["per_s"], TARGETS["logins"]))
                lines.append(row("  ms/login median", c["median_ms"], None))
                lines.append(row("  ms/login p90", c["p90_ms"], None))
            lines.append("target f/d >= %.2f; the issue measured ProFTPD mod_proxy at p/d %.2f"
                         % (TARGETS["logins"], ISSUE_PROFTPD["logins"]))
        if "idle" in R:
            d = R["idle"]
            lines += ["", "Idle sessions: %d logged in (USER/PASS), nothing else; server "
                      "processes summed (ftpproxy: one process)" % d["sessions"]]
            lines.append("%-10s %9s %11s %11s %12s %12s %6s %6s" % (
                "", "sessions", "Rss KiB", "Pss KiB", "Rss/session", "Pss/session", "procs",
                "fds"))
            for name in paths:
                e = d["paths"].get(name)
                if not e or "at" not in e:
                    lines.append("%-10s %s" % (name, "n/a" if not e else "failed"))
                    continue
                lines.append("%-10s %9s %11d %11d %12.1f %12.1f %6d %6d" % (
                    name, "0", e["before"]["rss_kib"], e["before"]["pss_kib"], 0, 0,
                    e["before"]["processes"], e["before"]["fds"]))
                lines.append("%-10s %9d %11d %11d %12.1f %12.1f %6d %6d" % (
                    "", e["sessions"], e["at"]["rss_kib"], e["at"]["pss_kib"],
                    e["rss_kib_per_session"], e["pss_kib_per_session"], e["at"]["processes"],
                    e["at"]["fds"]))
                ac = e.get("after_close")
                if ac:
                    lines.append("%-10s %9s %11d %11d %12s %12s %6d %6d" % (
                        "", "closed", ac["rss_kib"], ac["pss_kib"], "", "", ac["processes"],
                        ac["fds"]))
        lines += failure_lines(self.failures, "log")
        return "\n".join(lines)


def close_sessions(socks):
    for s, f, _u in socks:
        try:
            f.close()
            s.close()
        except OSError:
            pass
    del socks[:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.path.join(SOURCE_DIR, "build"),
                    help="where ftpproxy/ftpproxy and hooks/pgsql.so are (default build/)")
    ap.add_argument("--proftpd-root", default=DEFAULT_PROFTPD_ROOT,
                    help="where scripts/deps --bench unpacked ProFTPD")
    ap.add_argument("--proftpd-policy", default="Random",
                    help="ProxyReverseConnectPolicy of the ProFTPD path (RoundRobin, the "
                         "default of mod_proxy, drops connections in bursts: see the config)")
    ap.add_argument("--retr-size", default="1GiB")
    ap.add_argument("--stor-size", default="256MiB")
    ap.add_argument("--repeat", type=int, default=5, help="rounds of every measurement")
    ap.add_argument("--quick", action="store_true", help="2 rounds, logins 2s per run")
    ap.add_argument("--modes", default=",".join(MODES), help="EPSV,PASV")
    ap.add_argument("--login-secs", type=float, default=3.0, help="length of one login run")
    ap.add_argument("--clients", default="1,8", help="concurrent login clients per run")
    ap.add_argument("--password-hash", default="sha512", choices=("sha512", "md5", "yescrypt"),
                    help="how the backend stores the test passwords (yescrypt: Debian 12's "
                         "default, ~12 ms per check, hides the proxies' share of a login)")
    ap.add_argument("--sessions", type=int, default=1000, help="idle sessions")
    ap.add_argument("--batch", type=int, default=50, help="idle sessions opened at once")
    ap.add_argument("--idle-open-timeout", type=int, default=240,
                    help="seconds to open the idle sessions (vsftpd ends a session idle 300s)")
    ap.add_argument("--xfer-timeout", type=float, default=0,
                    help="seconds per transfer (default max(120, size / 4 MB/s))")
    ap.add_argument("--workers", type=int, default=2, help="ftpproxy worker threads")
    ap.add_argument("--data-sndbuf", type=int, default=0,
                    help="ftpproxy's ftp.data_sndbuf (0 = its default, kernel autotuning)")
    ap.add_argument("--users", type=int, default=4, help="test accounts (sessions spread)")
    ap.add_argument("--paths", default=",".join(PATHS), help="direct,ftpproxy,proftpd")
    ap.add_argument("--only", default="transfer,login,idle",
                    help="comma list of phases to run: transfer, login, idle")
    ap.add_argument("--tmpdir", default="/dev/shm", help="where the world lives (tmpfs)")
    ap.add_argument("--json", metavar="PATH", help="write every figure and raw run here")
    args = ap.parse_args()
    if args.quick:
        args.repeat = min(args.repeat, 2)
        args.login_secs = min(args.login_secs, 2.0)
    args.build_dir = os.path.abspath(args.build_dir)
    args.retr_size = parse_size(args.retr_size)
    args.stor_size = parse_size(args.stor_size)
    args.modes = [m.upper() for m in args.modes.split(",") if m]
    args.clients = [int(x) for x in args.clients.split(",") if x]
    args.paths = [p for p in PATHS if p in args.paths.split(",")]
    phases = [p for p in args.only.split(",") if p]
    if any(p not in PHASES for p in phases) or args.repeat < 1 \
            or any(m not in MODES for m in args.modes) or "direct" not in args.paths \
            or args.batch < 1 or args.sessions < 1 or not args.clients \
            or min(args.clients) < 1 or args.login_secs <= 0:
        ap.error("bad --only/--repeat/--modes/--paths (direct is the reference, always in)/"
                 "--batch/--sessions/--clients/--login-secs")
    if os.geteuid() != 0:
        print("ftp_bench.py: must run as root (it creates users and backends)", file=sys.stderr)
        return 2
    if not os.access("/usr/sbin/vsftpd", os.X_OK):
        print("ftp_bench.py: /usr/sbin/vsftpd missing (scripts/deps)", file=sys.stderr)
        return 2

    b = Bench(args)
    b.results["machine"] = machine_info(
        {"vsftpd": ["dpkg-query", "-W", "-f=vsftpd ${Version}", "vsftpd"]})
    b.results["args"] = {"retr_size": args.retr_size, "stor_size": args.stor_size,
                         "repeat": args.repeat, "modes": args.modes, "clients": args.clients,
                         "login_secs": args.login_secs, "sessions": args.sessions,
                         "batch": args.batch, "workers": args.workers, "phases": phases,
                         "data_sndbuf": args.data_sndbuf,
                         "password_hash": args.password_hash,
                         "paths": args.paths, "build_dir": args.build_dir}
    b.results["targets"] = TARGETS
    b.results["issue_proftpd_ratios"] = ISSUE_PROFTPD
    b.results["source"] = git_describe(("ftpproxy", "common", "hooks"))
    return run_bench(b, [getattr(b, "bench_" + p) for p in PHASES if p in phases], args.json)


if __name__ == "__main__":
    sys.exit(main())
