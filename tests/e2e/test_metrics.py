#!/usr/bin/python3
"""e2e.metrics: the Prometheus endpoint (metrics.listen), the control socket's `stats`, and
sd_notify, against sshproxy and ftpproxy doing known work with real clients.

Each daemon runs in its own world (tests/harness/sshproxy_env.py, ftpproxy_env.py: private
PostgreSQL, OpenSSH/vsftpd backends, the pgsql hook) with metrics.listen on a free loopback
port. A section scrapes /metrics before and after known activity, parses both with
prometheus_client's parser (python3-prometheus-client) and checks the differences:

   1 ssh endpoint: 200 with the 0.0.4 content type, every family with its type, build_info,
     404 for /other, 405 for POST
   2 ssh activity: 3 logins with exec (2 password, 1 key), a wrong password, an unknown user:
     sessions_total{ok}=3 {auth_failed}=2, auth failures by method/reason, 5 route lookups,
     4 backend connects (histogram _count), bytes >= what `cat` moved, sessions_active 0
   3 ssh stats: the control socket's `stats` rows equal /metrics; ctl_commands_total counts it
   4 ssh metrics off: an empty metrics.listen opens no port besides `listen`; a metrics port
     in use fails the start with exit status 3 and a message naming metrics.listen
   5 ftp endpoint: build_info{daemon="ftpproxy"}, the families
   6 ftp activity: a login with RETR, STOR and LIST, a plain login, a wrong password:
     sessions_total{ok}=2 {auth_failed}=1, ftp_transfers by direction, 3 backend connects,
     bytes >= the file sizes
   7 ftp sd_notify: READY=1 at start, RELOADING=1 + MONOTONIC_USEC then READY=1 on SIGHUP,
     STOPPING=1 on SIGTERM (a private NOTIFY_SOCKET)

Run by ctest (label e2e) or directly as root:
    PYTHONPATH=tests/harness /usr/bin/python3 tests/e2e/test_metrics.py [section numbers...]
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))
import dpenv  # noqa: E402
from checks import Checks  # noqa: E402
from daemon import Daemon  # noqa: E402
from ftpproxy_env import FtpProxyEnv, close_ftp, data_transfer  # noqa: E402
from proxy_env import run_cmd  # noqa: E402
from sshproxy_env import SshProxyEnv  # noqa: E402

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # reported as a failed check in main()
    text_string_to_metric_families = None

check = Checks()
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FAMILIES = {
    "dynproxy_build_info": "gauge",
    "dynproxy_start_time_seconds": "gauge",
    "dynproxy_sessions_active": "gauge",
    "dynproxy_sessions": "counter",          # the parser drops a counter's _total
    "dynproxy_auth_failures": "counter",
    "dynproxy_route_lookups": "counter",
    "dynproxy_route_lookup_seconds": "histogram",
    "dynproxy_backend_connect_seconds": "histogram",
    "dynproxy_bytes": "counter",
    "dynproxy_ftp_transfers": "counter",
    "dynproxy_ctl_commands": "counter",
}
SESSION_RESULTS = ("ok", "auth_failed", "unavailable", "refused", "kicked", "timeout", "error")
METHODS = ("password", "publickey", "keyboard-interactive")
REASONS = ("wrong_password", "unknown_user", "unlisted_key", "bad_signature", "method_refused",
           "backend_refused")


def note(msg, *args):
    dpenv.log(msg, *args)


# ---- scraping --------------------------------------------------------------------------------
class Scrape:
    """One GET /metrics: status, content type, text, and the samples by (name, labels)."""

    def __init__(self, port):
        self.status, self.ctype, self.text, self.error = None, None, "", None
        self.types = {}
        self.samples = {}
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
                self.status = r.status
                self.ctype = r.headers.get("Content-Type")
                self.text = r.read().decode("utf-8")
        except (OSError, urllib.error.URLError) as e:
            self.error = e
            return
        try:
            for fam in text_string_to_metric_families(self.text):
                self.types[fam.name] = fam.type
                for s in fam.samples:
                    self.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        except Exception as e:  # noqa: BLE001 - a parse error is a failed check
            self.error = "parse: %r" % e

    def get(self, name, **labels):
        """The sample's value (None when absent)."""
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def __repr__(self):
        return "status=%s error=%s text=%r" % (self.status, self.error, self.text[:400])


def delta(after, before, name, **labels):
    a, b = after.get(name, **labels), before.get(name, **labels)
    if a is None or b is None:
        return None
    return a - b


def http_status(port, path, method="GET"):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError as e:
        return repr(e)


def wait_scrape(env, until, timeout=15.0):
    """Scrape until until(scrape) holds (sessions still ending); the last scrape either way."""
    last = [None]

    def probe():
        last[0] = Scrape(env.metrics_port)
        return last[0].error is None and until(last[0])
    dpenv.wait_until(probe, timeout)
    return last[0]


def check_endpoint(env, daemon):
    s = Scrape(env.metrics_port)
    if not check(s.error is None and s.status == 200, "%s: GET /metrics -> 200, parsed" % daemon,
                 s):
        return
    check(s.ctype == CONTENT_TYPE, "%s: Content-Type %s" % (daemon, CONTENT_TYPE), s.ctype)
    wrong = {n: s.types.get(n) for n, t in FAMILIES.items() if s.types.get(n) != t}
    check(not wrong, "%s: all %d families with their types" % (daemon, len(FAMILIES)), wrong)
    for line in ("# HELP dynproxy_sessions_total ", "# TYPE dynproxy_sessions_total counter",
                 "# TYPE dynproxy_route_lookup_seconds histogram"):
        check(line in s.text, "%s: exposition has %r" % (daemon, line))
    check(s.get("dynproxy_build_info", daemon=daemon, version=dpenv_version()) == 1,
          "%s: dynproxy_build_info{daemon=%s} 1" % (daemon, daemon),
          [k for k in s.samples if k[0] == "dynproxy_build_info"])
    started = s.get("dynproxy_start_time_seconds")
    check(started is not None and time.time() - 3600 < started <= time.time() + 1,
          "%s: start_time_seconds is this run's start (%s)" % (daemon, started))
    for r in SESSION_RESULTS:
        check(s.get("dynproxy_sessions_total", result=r) is not None,
              "%s: sessions_total{result=%s} present" % (daemon, r))
    check(s.get("dynproxy_route_lookup_seconds_bucket", le="+Inf") ==
          s.get("dynproxy_route_lookup_seconds_count"),
          "%s: histogram +Inf bucket equals _count" % daemon)
    check(http_status(env.metrics_port, "/other") == 404, "%s: GET /other -> 404" % daemon)
    check(http_status(env.metrics_port, "/") == 404, "%s: GET / -> 404" % daemon)
    check(http_status(env.metrics_port, "/metrics", "POST") == 405,
          "%s: POST /metrics -> 405" % daemon)
    check(http_status(env.metrics_port, "/metrics", "HEAD") == 200,
          "%s: HEAD /metrics -> 200" % daemon)


def dpenv_version():
    """The version the daemons were built with (the project() line of CMakeLists.txt)."""
    with open(os.path.join(dpenv.SOURCE_DIR, "CMakeLists.txt")) as f:
        m = re.search(r"project\(dynproxy VERSION ([0-9.]+)", f.read())
    return m.group(1) if m else "?"


def metrics_conf(port):
    return ['metrics = { listen = "127.0.0.1:%d"; };' % port]


class SshMetricsEnv(SshProxyEnv):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.metrics_port = dpenv.free_port()
        self.extra_conf = metrics_conf(self.metrics_port)


class FtpMetricsEnv(FtpProxyEnv):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.metrics_port = dpenv.free_port()
        self.extra_conf = metrics_conf(self.metrics_port)


# ---- control socket ----------------------------------------------------------------------------
def ctl_ask(path, line, timeout=10.0):
    """(code, [body lines]) of one request on the control socket (protocol v1)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        f = s.makefile("rb")
        f.readline()  # greeting
        s.sendall((line + "\n").encode())
        status = f.readline().decode("utf-8", "replace")
        body = []
        while True:
            ln = f.readline().decode("utf-8", "replace")
            if not ln or ln == ".\n":
                break
            ln = ln.rstrip("\n")
            body.append(ln[1:] if ln.startswith("..") else ln)
        code = int(status.split(" ", 1)[0]) if status[:3].isdigit() else None
        return code, body
    finally:
        s.close()


def listening_ports(pid):
    """TCP ports process `pid` listens on (ss -ltnp)."""
    r = run_cmd(["ss", "-Hltnp"], timeout=10)
    ports = set()
    for line in r.out.splitlines():
        if "pid=%d," % pid in line:
            local = line.split()[3]
            ports.add(int(local.rsplit(":", 1)[1]))
    return ports


# ---- sshproxy ----------------------------------------------------------------------------------
def t_ssh_endpoint(env):
    check_endpoint(env, "sshproxy")


def password_only(env, user, password):
    """ssh with the password method only (one attempt: one auth failure when wrong)."""
    argv, e = env.ssh_argv(user, "true", password=password)
    argv = ["PreferredAuthentications=password" if a.startswith("PreferredAuthentications=")
            else a for a in argv]
    return run_cmd(argv, env=e, timeout=60)


def t_ssh_activity(env):
    u0, u1 = env.users[0], env.users[1]
    before = Scrape(env.metrics_port)
    if not check(before.error is None, "ssh: scrape before the activity", before):
        return
    payload = os.urandom(65536)
    r1 = env.ssh(u0, "echo one", password=True)
    r2 = env.ssh(u1, "cat", password=True, input=payload, binary=True)
    r3 = env.ssh(u0, "echo three", key=True)
    check(r1.rc == 0 and r1.out.strip() == "one", "ssh: password login with exec", r1)
    check(r2.rc == 0 and r2.out == payload, "ssh: password login, 64 KiB through cat", r2)
    check(r3.rc == 0 and r3.out.strip() == "three", "ssh: key login with exec", r3)
    wrong = password_only(env, u0, u0.password + "x")
    check(wrong.rc == 255, "ssh: wrong password refused", wrong)
    unknown = password_only(env, "dpt_nx" + os.urandom(3).hex(), u0.password)
    check(unknown.rc == 255, "ssh: unknown user refused", unknown)

    def settled(s):
        return (s.get("dynproxy_sessions_active") == 0 and
                sum(delta(s, before, "dynproxy_sessions_total", result=r) or 0
                    for r in SESSION_RESULTS) >= 5)
    after = wait_scrape(env, settled)
    if not check(after is not None and after.error is None, "ssh: scrape after", after):
        return
    check(after.get("dynproxy_sessions_active") == 0, "ssh: sessions_active back to 0",
          after.get("dynproxy_sessions_active"))
    want = {"ok": 3, "auth_failed": 2}
    for r in SESSION_RESULTS:
        d = delta(after, before, "dynproxy_sessions_total", result=r)
        check(d == want.get(r, 0), "ssh: sessions_total{result=%s} +%d" % (r, want.get(r, 0)),
              "got +%s" % d)
    want = {("password", "wrong_password"): 1, ("password", "unknown_user"): 1}
    got = {(m, r): delta(after, before, "dynproxy_auth_failures_total", method=m, reason=r)
           for m in METHODS for r in REASONS}
    bad = {k: v for k, v in got.items() if v != want.get(k, 0)}
    check(not bad, "ssh: auth_failures_total +1 password/wrong_password, +1 "
          "password/unknown_user, nothing else", bad)
    lookups = sum(delta(after, before, "dynproxy_route_lookups_total", result=r) or 0
                  for r in ("hit", "miss", "stale", "negative", "error"))
    check(lookups == 5, "ssh: 5 route lookups (one per connection with a user)", lookups)
    check(delta(after, before, "dynproxy_route_lookups_total", result="error") == 0,
          "ssh: no route lookup errors")
    check(delta(after, before, "dynproxy_route_lookup_seconds_count") == 5,
          "ssh: route_lookup_seconds_count +5",
          delta(after, before, "dynproxy_route_lookup_seconds_count"))
    n = delta(after, before, "dynproxy_backend_connect_seconds_count")
    check(n == 4, "ssh: backend_connect_seconds_count +4 (3 logins + the wrong password)", n)
    check(delta(after, before, "dynproxy_backend_connect_seconds_bucket", le="+Inf") == n,
          "ssh: backend connect +Inf bucket = _count")
    s = delta(after, before, "dynproxy_backend_connect_seconds_sum")
    check(s is not None and 0 < s < 4 * 5, "ssh: backend connect time sum plausible (%s s)" % s)
    up = delta(after, before, "dynproxy_bytes_total", direction="client_to_backend")
    down = delta(after, before, "dynproxy_bytes_total", direction="backend_to_client")
    check(up is not None and up >= len(payload), "ssh: bytes client_to_backend >= 64 KiB (%s)" % up)
    check(down is not None and down >= len(payload) + len("one\nthree\n"),
          "ssh: bytes backend_to_client >= 64 KiB + the echoes (%s)" % down)
    check(delta(after, before, "dynproxy_ftp_transfers_total", direction="download",
                result="ok") == 0, "ssh: no ftp transfers counted")


def t_ssh_stats(env):
    try:
        code, body = ctl_ask(env.ctl_path, "stats")
    except OSError as e:
        check(False, "ssh: control socket stats", repr(e))
        return
    scrape = Scrape(env.metrics_port)
    check(code == 200 and body[:1] == ["key\tvalue"], "ssh: stats -> 200 with a key/value header",
          (code, body[:3]))
    rows = dict(line.split("\t", 1) for line in body[1:] if "\t" in line)
    key = 'dynproxy_sessions_total{result="ok"}'
    check(key in rows and float(rows[key]) == scrape.get("dynproxy_sessions_total", result="ok"),
          "ssh: stats and /metrics agree on %s" % key, (rows.get(key), scrape))
    check('dynproxy_route_lookup_seconds_bucket{le="+Inf"}' in rows,
          "ssh: stats lists histogram buckets")
    n = scrape.get("dynproxy_ctl_commands_total", command="stats", code="200")
    check(n is not None and n >= 1, "ssh: ctl_commands_total{command=stats,code=200} counted",
          [k for k in scrape.samples if k[0] == "dynproxy_ctl_commands_total"])
    try:
        code, _ = ctl_ask(env.ctl_path, "no-such-command")
    except OSError as e:
        code = repr(e)
    after = Scrape(env.metrics_port)
    check(code == 400 and after.get("dynproxy_ctl_commands_total", command="other",
                                    code="400") is not None,
          "ssh: an unknown command counts as command=other code=400", code)


def t_ssh_metrics_off(env):
    if env.selftest:
        return
    old = env.metrics_port
    env.extra_conf = []
    env.restart_proxy()
    try:
        ports = listening_ports(env.proxy_pid)
        check(ports == {env.port}, "ssh: metrics.listen empty -> the daemon listens on its "
              "listen port only", ports)
        check(http_status(old, "/metrics") != 200, "ssh: nothing answers on the old metrics port")

        # A metrics port in use is a start failure, exit status 3.
        busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        bport = busy.getsockname()[1]
        env.stop_proxy()
        env.extra_conf = metrics_conf(bport)
        env.write_config()
        off = env.log_offset()
        d = Daemon(env.BINARY, env.config, env.logfile).start(expect_ready=False)
        rc = d.wait(20)
        if rc is None:
            d.stop()
        busy.close()
        text = env.log()[off:]
        check(rc == 3, "ssh: metrics port in use -> exit status 3", "rc=%s" % rc)
        check("metrics.listen" in text and "in use" in text,
              "ssh: the failure names metrics.listen and the reason", dpenv.tail(env.logfile, 5))
    finally:
        env.extra_conf = metrics_conf(old)
        env.restart_proxy()


SSH_TESTS = [
    ("1 ssh endpoint", t_ssh_endpoint),
    ("2 ssh activity", t_ssh_activity),
    ("3 ssh stats", t_ssh_stats),
    ("4 ssh metrics off", t_ssh_metrics_off),
]


# ---- ftpproxy ----------------------------------------------------------------------------------
def t_ftp_endpoint(env):
    check_endpoint(env, "ftpproxy")


def t_ftp_activity(env):
    u0, u1 = env.users[0], env.users[1]
    down = env.put_random("web1", u0, "metrics-down.bin", 300000)
    up = os.urandom(200000)
    before = Scrape(env.metrics_port)
    if not check(before.error is None, "ftp: scrape before the activity", before):
        return
    f = None
    try:
        f = env.ftp(u0)
        x = data_transfer(f, "EPSV", "RETR metrics-down.bin")
        check(x.ok and x.data == down, "ftp: RETR 300000 bytes", x)
        x = data_transfer(f, "PASV", "STOR metrics-up.bin", upload=up)
        check(x.ok and env.get_data("web1", u0, "metrics-up.bin") == up, "ftp: STOR 200000 bytes",
              x)
        x = data_transfer(f, "EPSV", "LIST")
        check(x.ok and b"metrics-down.bin" in x.data, "ftp: LIST", x)
        f.quit()
    except Exception as e:  # noqa: BLE001
        check(False, "ftp: session with transfers", repr(e))
    finally:
        if f is not None:
            close_ftp(f)
    try:
        f = env.ftp(u1)
        f.quit()
        check(True, "ftp: a plain login")
    except Exception as e:  # noqa: BLE001
        check(False, "ftp: a plain login", repr(e))
    try:
        f = env.ftp(u1, password=u1.password + "x")
        close_ftp(f)
        check(False, "ftp: wrong password refused", "logged in")
    except Exception as e:  # noqa: BLE001 - ftplib.error_perm expected
        check("530" in str(e), "ftp: wrong password refused with 530", repr(e))

    def settled(s):
        return (s.get("dynproxy_sessions_active") == 0 and
                sum(delta(s, before, "dynproxy_sessions_total", result=r) or 0
                    for r in SESSION_RESULTS) >= 3)
    after = wait_scrape(env, settled)
    if not check(after is not None and after.error is None, "ftp: scrape after", after):
        return
    check(after.get("dynproxy_sessions_active") == 0, "ftp: sessions_active back to 0")
    want = {"ok": 2, "auth_failed": 1}
    for r in SESSION_RESULTS:
        d = delta(after, before, "dynproxy_sessions_total", result=r)
        check(d == want.get(r, 0), "ftp: sessions_total{result=%s} +%d" % (r, want.get(r, 0)),
              "got +%s" % d)
    got = {(m, r): delta(after, before, "dynproxy_auth_failures_total", method=m, reason=r)
           for m in METHODS for r in REASONS}
    bad = {k: v for k, v in got.items() if v != (1 if k == ("password", "wrong_password") else 0)}
    check(not bad, "ftp: auth_failures_total +1 password/wrong_password, nothing else", bad)
    for d, want_ok in (("download", 1), ("upload", 1), ("list", 1)):
        for r in ("ok", "aborted", "failed"):
            n = delta(after, before, "dynproxy_ftp_transfers_total", direction=d, result=r)
            w = want_ok if r == "ok" else 0
            check(n == w, "ftp: ftp_transfers_total{direction=%s,result=%s} +%d" % (d, r, w),
                  "got +%s" % n)
    n = delta(after, before, "dynproxy_backend_connect_seconds_count")
    check(n == 3, "ftp: backend_connect_seconds_count +3 (one per login attempt)", n)
    lookups = sum(delta(after, before, "dynproxy_route_lookups_total", result=r) or 0
                  for r in ("hit", "miss", "stale", "negative", "error"))
    check(lookups == 3, "ftp: 3 route lookups (one per USER)", lookups)
    check(delta(after, before, "dynproxy_route_lookup_seconds_count") == 3,
          "ftp: route_lookup_seconds_count +3")
    b_up = delta(after, before, "dynproxy_bytes_total", direction="client_to_backend")
    b_down = delta(after, before, "dynproxy_bytes_total", direction="backend_to_client")
    check(b_up is not None and b_up >= len(up), "ftp: bytes client_to_backend >= 200000 (%s)" % b_up)
    check(b_down is not None and b_down >= len(down),
          "ftp: bytes backend_to_client >= 300000 (%s)" % b_down)


def t_ftp_sdnotify(env):
    """The daemon under a private NOTIFY_SOCKET (instead of the harness's Daemon)."""
    if env.selftest:
        return
    env.stop_proxy()
    path = os.path.join(env.tmp, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    msgs = []

    def collect(until, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until():
            try:
                msgs.append(sock.recv(4096).decode())
            except socket.timeout:
                pass
        return until()

    def seen(field, start=0):
        return any(field in m.split("\n") for m in msgs[start:])

    log = open(env.logfile, "ab")
    p = subprocess.Popen([env.BINARY, "-c", env.config], stdin=subprocess.DEVNULL, stdout=log,
                         stderr=log, env=dict(os.environ, NOTIFY_SOCKET=path))
    try:
        check(collect(lambda: seen("READY=1")), "ftp: READY=1 once it accepts", msgs)
        check(dpenv.port_accepts(env.port), "ftp: accepting when READY=1 arrived")
        check(any(m.startswith("READY=1\nSTATUS=") for m in msgs), "ftp: READY=1 with a STATUS=",
              msgs)
        n = len(msgs)
        p.send_signal(signal.SIGHUP)
        check(collect(lambda: seen("READY=1", n + 1) and seen("RELOADING=1", n)),
              "ftp: SIGHUP -> RELOADING=1, then READY=1", msgs[n:])
        rel = [m for m in msgs[n:] if "RELOADING=1" in m.split("\n")]
        check(bool(rel) and re.search(r"(^|\n)MONOTONIC_USEC=\d+($|\n)", rel[0]),
              "ftp: RELOADING=1 carries MONOTONIC_USEC", rel)
        n = len(msgs)
        p.send_signal(signal.SIGTERM)
        check(collect(lambda: seen("STOPPING=1", n)), "ftp: SIGTERM -> STOPPING=1", msgs[n:])
        try:
            rc = p.wait(30)
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 0, "ftp: exits 0 after SIGTERM", rc)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
        log.close()
        sock.close()
        env.start_proxy()


FTP_TESTS = [
    ("5 ftp endpoint", t_ftp_endpoint),
    ("6 ftp activity", t_ftp_activity),
    ("7 ftp sd_notify", t_ftp_sdnotify),
]


def run_world(cls, tests, only, kwargs):
    if only and not any(name.split()[0] in only for name, _ in tests):
        return
    cls.run_world(check, "test_metrics", tests, only, kwargs, always_stop=True)


def main(argv):
    if text_string_to_metric_families is None:
        check(False, "python3-prometheus-client is installed (scripts/deps)")
        return check.finish()
    only = set(argv)
    t0 = time.monotonic()
    run_world(SshMetricsEnv, SSH_TESTS, only, {"nusers": 2})
    run_world(FtpMetricsEnv, FTP_TESTS, only, {"nusers": 2})
    dpenv.log("test_metrics took %.1fs", time.monotonic() - t0)
    return check.finish()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
