"""End-to-end test of the daemon foundation (common/ + the static hook), through the probe
daemon tests/e2e/e2e_routed.c which runs the same dp_daemon skeleton as sshproxy/ftpproxy:

  - configuration refused by -t and at start-up, with file:line and the key, for a wrong
    type, an unknown key, an out-of-range value, a missing hook file and a hook setting the
    hook itself refuses;
  - IPv4 + IPv6 listeners, several workers sharing them through SO_REUSEPORT;
  - PROXY protocol v1 and v2 honoured from trusted peers only, required from them (garbage
    and silence are refused within the deadline), not honoured from others;
  - routes from the hook with cache hits;
  - SIGHUP reload swapping the hook's routes while an open connection keeps working, and a
    broken reload refused with the old configuration still serving;
  - SIGTERM: graceful stop with open connections, exit status 0;
  - a port already taken: start-up fails with the reason.
"""

import os
import signal
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))
import dpenv  # noqa: E402
from checks import Checks  # noqa: E402
from daemon import Daemon, run_check  # noqa: E402

BUILD = dpenv.BUILD_DIR
PROBE = os.path.join(BUILD, "tests", "e2e", "e2e_routed")
HOOKDIR = os.environ.get("DP_HOOKDIR") or os.path.join(BUILD, "hooks")
STATIC = os.path.join(HOOKDIR, "static.so")

check = Checks()


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def line_of(path, needle):
    """1-based number of the first line of `path` holding `needle`."""
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if needle in line:
                return n
    raise AssertionError("%s not in %s" % (needle, path))


def routes(path, alice_backend):
    return write(path, """
backends = {
  web1 = { address = "127.0.0.1"; ssh_port = 2201; ftp_port = 2101; };
  web2 = { address = "127.0.0.1"; ssh_port = 2202; ftp_port = 2102;
           maintenance = false; };
};
users = {
  alice = { backend = "%s"; };
  bob = { backend = "web2"; };
};
""" % alice_backend)


def config(path, port, routes_path, extra="", hook_path=None, workers=2):
    return write(path, """# probe daemon configuration for test_foundation
log_level = "debug";
workers = %d;
listen = [ "127.0.0.1:%d", "[::1]:%d" ];
shutdown_timeout_ms = 5000;
proxy_protocol = {
  enabled = true;
  trusted = [ "127.0.0.2/32" ];
  timeout_ms = 300;
};
hook = {
  path = "%s";
  cache_ttl_ms = 60000;
  config = { routes = "%s"; reload_check_ms = 0; };
};
%s
""" % (workers, port, port, hook_path or STATIC, routes_path, extra))


class Client:
    """A line client of the probe daemon."""

    def __init__(self, port, host="127.0.0.1", family=socket.AF_INET, source=None, preamble=b""):
        self.s = socket.socket(family, socket.SOCK_STREAM)
        self.s.settimeout(5)
        if source:
            self.s.bind((source, 0))
        self.s.connect((host, port))
        if preamble:
            self.s.sendall(preamble)
        self.f = self.s.makefile("rb")
        self.greeting = self.line()

    def line(self):
        return self.f.readline().decode(errors="replace").strip()

    def ask(self, text):
        self.s.sendall(text.encode() + b"\n")
        return self.line()

    def close(self):
        self.f.close()
        self.s.close()


def proxy_v2(src, dst, sport, dport):
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    addr = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return sig + bytes([0x21, 0x11]) + struct.pack("!H", len(addr)) + addr


def closed_without_greeting(port, source, payload, wait):
    """Connect from `source`, send payload, and tell whether the daemon closed the connection
    without a greeting; returns (closed, seconds until closed)."""
    s = socket.socket()
    s.settimeout(wait)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    t0 = time.monotonic()
    if payload:
        s.sendall(payload)
    try:
        data = s.recv(100)
    except socket.timeout:
        data = None
    except ConnectionResetError:
        data = b""
    took = time.monotonic() - t0
    s.close()
    return data == b"", took


def test_config_refusals(tmp, port, routes_path):
    good = config(os.path.join(tmp, "good.conf"), port, routes_path)
    rc, out = run_check(PROBE, good)
    check(rc == 0 and "configuration OK (hook static)" in out, "-t accepts a good file", out)

    cases = [
        ("type.conf", "backlog = \"two\";", "backlog", "expected an integer, got a string"),
        ("unknown.conf", "hook_timeout = 5;", "hook_timeout", "unknown key"),
        ("range.conf", "backlog = 1;", "backlog", "1 is out of range [16, 65535]"),
    ]
    for name, extra, key, why in cases:
        path = config(os.path.join(tmp, name), port, routes_path, extra=extra)
        want = "%s:%d: %s: %s" % (path, line_of(path, extra), key, why)
        rc, out = run_check(PROBE, path)
        check(rc == 1 and want in out, "-t refuses %s with file:line and key" % name, out)
        d = Daemon(PROBE, path, os.path.join(tmp, name + ".log"))
        d.start(expect_ready=False)
        rc2 = d.wait(10)
        check(rc2 == 1 and want in d.log(), "start-up refuses %s" % name, d.log())
        check(not dpenv.port_accepts(port), "nothing listens after a refused start (%s)" % name)

    missing = config(os.path.join(tmp, "missing.conf"), port, routes_path,
                     hook_path=os.path.join(tmp, "no-such-hook.so"))
    want = "%s:%d: hook.path: hook %s: No such file or directory" % (
        missing, line_of(missing, "no-such-hook.so"), os.path.join(tmp, "no-such-hook.so"))
    rc, out = run_check(PROBE, missing)
    check(rc == 1 and want in out, "-t refuses a missing hook file with file:line", out)
    d = Daemon(PROBE, missing, os.path.join(tmp, "missing.log"))
    d.start(expect_ready=False)
    check(d.wait(10) == 1 and want in d.log(), "start-up refuses a missing hook file", d.log())

    # The hook validates its own section; the host names the line of the offending key.
    bad_param = write(os.path.join(tmp, "param.conf"),
                      open(good).read().replace("reload_check_ms = 0;",
                                                "reload_check_ms = 0;\n    colour = \"red\";"))
    rc, out = run_check(PROBE, bad_param)
    check(rc == 1 and ("%s:%d: hook.config.colour:" % (bad_param, line_of(bad_param, "colour")))
          in out,
          "-t refuses a setting the hook rejects, with its line", out)

    bad_routes = write(os.path.join(tmp, "bad-routes.conf"),
                       "backends = { web1 = { address = \"127.0.0.1\"; }; };\n"
                       "users = {\n  carol = { backend = \"nowhere\"; };\n};\n")
    rc, out = run_check(PROBE, config(os.path.join(tmp, "br.conf"), port, bad_routes))
    check(rc == 1 and "bad-routes.conf:3" in out and "nowhere" in out,
          "-t refuses a routes file naming an unknown backend", out)


def test_running(tmp, port, routes_path, routes2_path):
    conf = config(os.path.join(tmp, "run.conf"), port, routes_path)
    d = Daemon(PROBE, conf, os.path.join(tmp, "run.log")).start()
    try:
        c4 = Client(port)
        check(c4.greeting == "probe ready", "IPv4 listener greets", c4.greeting)
        r = c4.ask("LOOKUP ssh alice")
        check(r == "ROUTE ok web1 127.0.0.1 2201 2101 miss", "first lookup asks the hook", r)
        r = c4.ask("LOOKUP ssh alice")
        check(r.endswith(" hit") and " web1 " in r, "second lookup is a cache hit", r)
        r = c4.ask("LOOKUP ftp mallory")
        check(r.startswith("ROUTE unknown "), "unknown user gets unknown", r)
        c6 = Client(port, host="::1", family=socket.AF_INET6)
        r = c6.ask("WHOAMI")
        check(r.startswith("CLIENT [::1]:") and "PROXIED 0" in r, "IPv6 listener works", r)

        workers = set()
        for _ in range(40):
            c = Client(port)
            workers.add(c.ask("WHOAMI").split()[3])
            c.close()
        check(workers == {"0", "1"}, "connections spread over both workers (SO_REUSEPORT)",
              workers)

        # PROXY protocol from the trusted peer 127.0.0.2
        c = Client(port, source="127.0.0.2",
                   preamble=b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 22\r\n")
        r = c.ask("WHOAMI")
        check(r.startswith("CLIENT 203.0.113.7:40000 ") and r.endswith("PROXIED 1"),
              "PROXY v1 from a trusted peer sets the client address", r)
        c.close()
        c = Client(port, source="127.0.0.2",
                   preamble=proxy_v2("192.0.2.55", "198.51.100.1", 51000, 22) + b"WHOAMI\n")
        r = c.line()
        check(r.startswith("CLIENT 192.0.2.55:51000 "),
              "PROXY v2 from a trusted peer, with data right behind it", r)
        c.close()
        closed, took = closed_without_greeting(port, "127.0.0.2", b"HELLO there\r\n", 3)
        check(closed, "a trusted peer without a header is refused")
        closed, took = closed_without_greeting(port, "127.0.0.2", b"", 10)
        check(closed and 0.25 <= took < 0.3 + 5,
              "a silent trusted peer is dropped at the PROXY deadline (300 ms)", "%.3fs" % took)
        # Untrusted peer: its header is just data, never believed.
        c = Client(port, preamble=b"PROXY TCP4 203.0.113.9 198.51.100.1 1 22\r\n")
        r = c.line()
        check(r == "ERR unknown command", "a PROXY line from an untrusted peer is not honoured",
              r)
        r = c.ask("WHOAMI")
        check(r.startswith("CLIENT 127.0.0.1:") and "PROXIED 0" in r,
              "the untrusted peer keeps its real address", r)
        c.close()

        # Reload: the hook now routes alice to web2; the open connection survives.
        keep = Client(port)
        mark = len(d.log())
        write(conf, open(conf).read().replace(routes_path, routes2_path))
        d.signal(signal.SIGHUP)
        check(d.wait_log("reloaded", 5, after=mark), "SIGHUP reloads", dpenv.tail(d.logfile))
        c = Client(port)
        r = c.ask("LOOKUP ssh alice")
        check(" web2 " in r, "after the reload the new hook instance routes alice to web2", r)
        c.close()
        r = keep.ask("WHOAMI")
        check(r.startswith("CLIENT "), "a connection opened before the reload keeps working", r)

        # Same configuration, edited routes file: SIGHUP alone makes the hook re-read it.
        routes(routes2_path, "web1")
        mark = len(d.log())
        d.signal(signal.SIGHUP)
        check(d.wait_log("routes reloaded", 5, after=mark), "SIGHUP re-reads the routes file",
              dpenv.tail(d.logfile))
        c = Client(port)
        r = c.ask("LOOKUP ssh alice")
        check(" web1 " in r, "the edited route is served right after SIGHUP", r)
        c.close()

        mark = len(d.log())
        good_text = open(conf).read()
        write(conf, good_text + "\ncolour = \"blue\";\n")
        d.signal(signal.SIGHUP)
        check(d.wait_log("reload refused", 5, after=mark) and "colour: unknown key" in d.log()[mark:],
              "a broken reload is refused with the reason", dpenv.tail(d.logfile))
        write(conf, good_text.replace(STATIC, os.path.join(tmp, "gone.so")))
        mark = len(d.log())
        d.signal(signal.SIGHUP)
        check(d.wait_log("reload refused", 5, after=mark) and "gone.so" in d.log()[mark:],
              "a reload naming a missing hook is refused", dpenv.tail(d.logfile))
        c = Client(port)
        r = c.ask("LOOKUP ssh alice")
        check(" web1 " in r, "the running configuration keeps serving after refused reloads", r)
        c.close()

        # Port conflict: a second instance cannot take a port held without SO_REUSEPORT.
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]
        conf2 = config(os.path.join(tmp, "taken.conf"), taken, routes_path)
        d2 = Daemon(PROBE, conf2, os.path.join(tmp, "taken.log"))
        d2.start(expect_ready=False)
        rc = d2.wait(10)
        check(rc == 3 and "Address already in use" in d2.log(),
              "a port in use is reported at start-up", d2.log())
        holder.close()
        keep_open = [keep, c4, c6]
    finally:
        rc, took = d.stop()
    check(rc == 0 and took < 10, "SIGTERM stops gracefully with open connections",
          "rc=%s took=%.2fs" % (rc, took))
    check("event=stop status=0" in d.log(), "the stop is logged")
    for c in keep_open:
        c.close()


def main():
    tmp = dpenv.make_tempdir("dpt-foundation-")
    try:
        port = dpenv.free_port()
        r1 = routes(os.path.join(tmp, "routes1.conf"), "web1")
        r2 = routes(os.path.join(tmp, "routes2.conf"), "web2")
        test_config_refusals(tmp, port, r1)
        test_running(tmp, port, r1, r2)
    except Exception:  # noqa: BLE001 - a harness error is a failed check, never a crash
        check.harness_error()
    finally:
        dpenv.rmtree(tmp)
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
