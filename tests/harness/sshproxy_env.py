"""The world of the sshproxy end-to-end tests, as one context manager.

    with SshProxyEnv(nusers=3) as env:
        r = env.ssh(env.users[0], "echo $DYNPROXY_BACKEND", key=True)      # through the proxy
        r.rc, r.out, r.err, r.secs, r.timed_out
        env.move(env.users[0], "web2")
        env.set_maintenance("web2", "back at 14:00")

What it builds (all under one temp dir, all torn down by __exit__):
  - a private PostgreSQL with deploy/sql/schema.sql;
  - backends web1 and web2 (OpenSSH + vsftpd, tests/harness/backends.py) that accept the
    proxy's key pair (keys/proxy_ed25519) for every user;
  - `nusers` system users dpt_<hex> with a password and an ed25519 key, a home on both
    backends, routed to web1 (dynproxy.users) with their key in dynproxy.authorized_keys;
    one more key pair (keys/unlisted_ed25519) that is nobody's;
  - backends rows with the ed25519 host key pins;
  - the proxy's host keys (ed25519, ecdsa, rsa), a known_hosts file holding them, the
    sshproxy config of /tmp/dp-briefs/sshproxy-contract.md with the pgsql hook, and
    build/sshproxy/sshproxy running under daemon.Daemon.

Every client call is time-bound and returns a Result instead of raising on a timeout, so a
hanging proxy becomes a failed check, never a stuck suite.

Self-check of the client side of the tests: DP_SSHPROXY_SELFTEST=web1 points every "proxy"
call at web1's sshd instead of starting the proxy (routing checks then fail by design; exec,
pty, transfers, git, multiplexing and forwarding must pass, which proves the tests
themselves are right).
"""

import base64
import os
import pwd
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dpenv  # noqa: E402
from backends import Backend  # noqa: E402
from daemon import Daemon  # noqa: E402
from pg import PgServer, sql_literal  # noqa: E402
from users import create_user, delete_user, make_keypair  # noqa: E402

BUILD = dpenv.BUILD_DIR
SSHPROXY = os.path.join(BUILD, "sshproxy", "sshproxy")
HOOKDIR = os.environ.get("DP_HOOKDIR") or os.path.join(BUILD, "hooks")
PGSQL_HOOK = os.path.join(HOOKDIR, "pgsql.so")
SCHEMA = os.path.join(dpenv.SOURCE_DIR, "deploy", "sql", "schema.sql")
BACKENDS = ("web1", "web2")
CACHE_TTL_MS = 1000          # hook.cache_ttl_ms: a changed route is seen within this anyway

DEFAULT_SSH_CONF = {
    "login_grace_ms": 30000,
    "max_auth_tries": 6,
    "max_startups": 1000,
    "max_startups_per_ip": 100,
    "connect_timeout_ms": 5000,
    "idle_timeout_s": 0,
    "channel_buffer": 2097152,
}


def proxy_missing():
    """None when the proxy binary exists, else a one-line reason."""
    if os.path.isfile(SSHPROXY) and os.access(SSHPROXY, os.X_OK):
        return None
    return "build/sshproxy/sshproxy not built (%s missing; cmake --build %s --target sshproxy)" \
        % (SSHPROXY, BUILD)


def preflight(check, name):
    """The checks every sshproxy driver starts with (root, a built proxy). Records one failed
    check and returns False when the suite cannot run."""
    if os.geteuid() != 0:
        check(False, "%s needs root (useradd, mount namespaces)" % name)
        return False
    missing = proxy_missing()
    if missing and not os.environ.get("DP_SSHPROXY_SELFTEST"):
        check(False, missing)
        return False
    return True


def run_suite(check, name, tests, argv, env_kwargs, setup=None, stop_with=None):
    """A whole sshproxy driver: preflight, the environment, setup(env), the sections, then a
    SIGTERM check (when every section ran, or section `stop_with` was asked for), the proxy's
    log tail on failure, cleanup problems and timing. Returns the process exit status."""
    if not preflight(check, name):
        return check.finish()
    only = set(argv)
    t0 = time.monotonic()
    env = SshProxyEnv(**env_kwargs)
    try:
        with env:
            if setup is not None:
                setup(env)
            env.run_sections(tests, only, check)
            if not env.selftest and (not only or (stop_with is not None and stop_with in only)):
                rc, took = env.stop_proxy()
                check(rc == 0, "SIGTERM after the sections: sshproxy exits 0 (took %.1fs)" % took,
                      "exit status %s; %s" % (rc, dpenv.tail(env.logfile, 15)))
            if check.failed and env.logfile and not env.selftest:
                print("--- sshproxy log (tail) ---\n%s" % dpenv.tail(env.logfile, 40))
    except Exception:  # noqa: BLE001 - a harness error is a failed check
        check.harness_error("sshproxy test environment")
        if env.logfile_tail:
            print("--- sshproxy log (tail) ---\n%s" % env.logfile_tail)
    for p in env.cleanup_problems:
        check(False, "cleanup: %s" % p)
    dpenv.log("%s took %.1fs", name, time.monotonic() - t0)
    return check.finish()


class Result:
    """What one client command did. out/err are str (or bytes with binary=True)."""

    def __init__(self, argv, rc, out, err, secs, timed_out):
        self.argv = argv
        self.rc = rc
        self.out = out
        self.err = err
        self.secs = secs
        self.timed_out = timed_out

    def __repr__(self):
        def short(v):
            if isinstance(v, bytes):
                v = v[:300].decode("utf-8", "replace") + ("..." if len(v) > 300 else "")
            elif len(v) > 600:
                v = v[:600] + "..."
            return v.strip()
        head = "timed out after %.1fs" % self.secs if self.timed_out else \
            "exit %s in %.1fs" % (self.rc, self.secs)
        return "%s; stdout=%r stderr=%r" % (head, short(self.out), short(self.err))

    __str__ = __repr__


def run_cmd(argv, env=None, input=None, timeout=60, binary=False, cwd=None):
    """Run argv in its own session with a deadline; never raises on timeout or exit status."""
    t0 = time.monotonic()
    empty = b"" if binary else ""
    try:
        p = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=not binary, start_new_session=True)
    except OSError as e:
        return Result(argv, None, empty, str(e) if not binary else str(e).encode(),
                      time.monotonic() - t0, False)
    try:
        out, err = p.communicate(input if input is not None else empty, timeout=timeout)
        return Result(argv, p.returncode, out, err, time.monotonic() - t0, False)
    except subprocess.TimeoutExpired:
        kill_group(p)
        out, err = p.communicate()
        return Result(argv, None, out or empty, err or empty, time.monotonic() - t0, True)


def kill_group(p):
    """SIGKILL a Popen started with start_new_session and everything in its group; reap it."""
    try:
        os.killpg(p.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        pass


def parse_logfmt(line):
    """{key: value} of one logfmt line (values may be "quoted" with \\" escapes)."""
    out = {}
    for m in re.finditer(r'([A-Za-z0-9_.]+)=("(?:[^"\\]|\\.)*"|\S*)', line):
        v = m.group(2)
        if v.startswith('"'):
            v = re.sub(r'\\(.)', r'\1', v[1:-1])
        out[m.group(1)] = v
    return out


def vm_rss_kib(pid):
    """VmRSS of pid in KiB (None when it is gone)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _conf_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[ %s ]" % ", ".join(_conf_value(x) for x in v)
    return '"%s"' % str(v).replace("\\", "\\\\").replace('"', '\\"')


class SshProxyEnv:
    def __init__(self, nusers=3, ssh_conf=None, workers=2, log_level="info", prefix="dpt-sshp-"):
        self.nusers = nusers
        self.ssh_conf = dict(DEFAULT_SSH_CONF)
        self.ssh_conf.update(ssh_conf or {})
        self.workers = workers
        self.log_level = log_level
        self.prefix = prefix
        self.selftest = os.environ.get("DP_SSHPROXY_SELFTEST") or None
        self.tmp = None
        self.pg = None
        self.backends = {}
        self.users = []
        self.proxy = None
        self.port = None
        self.restarts = 0
        self.logfile = None
        self.logfile_tail = ""
        self.cleanup_problems = []

    # ---- setup ---------------------------------------------------------------------------
    def __enter__(self):
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _setup(self):
        t0 = time.monotonic()
        self.tmp = dpenv.make_tempdir(self.prefix)
        self.keydir = os.path.join(self.tmp, "keys")
        os.makedirs(self.keydir)
        self.pg = PgServer(os.path.join(self.tmp, "pg"))
        self.pg.start()
        self.pg.load_file(SCHEMA)

        self.proxy_key = os.path.join(self.keydir, "proxy_ed25519")
        pak = os.path.join(self.tmp, "proxy_authorized_keys")
        with open(pak, "w") as f:
            f.write(make_keypair(self.proxy_key, "dynproxy-test-proxy") + "\n")
        self.unlisted_key = os.path.join(self.keydir, "unlisted_ed25519")
        self.unlisted_pub = make_keypair(self.unlisted_key, "nobody@dynproxy-test")

        for name in BACKENDS:
            self.backends[name] = Backend(name, os.path.join(self.tmp, name),
                                          proxy_authorized_keys=pak).start()
        for _ in range(self.nusers):
            u = create_user("dpt_" + secrets.token_hex(4), keydir=self.keydir)
            self.users.append(u)
            for be in self.backends.values():
                be.ensure_user(u, authorized_keys=[u.pubkey])

        sql = []
        for be in self.backends.values():
            sql.append("INSERT INTO dynproxy.backends (name, address, ssh_port, ftp_port, "
                       "hostkey_sha256) VALUES (%s, '127.0.0.1', %d, %d, %s);"
                       % (sql_literal(be.name), be.ssh_port, be.ftp_port,
                          sql_literal(be.ssh_hostkey_sha256)))
        for u in self.users:
            sql.append("INSERT INTO dynproxy.users (username, backend) VALUES (%s, 'web1');"
                       % sql_literal(u.name))
            sql.append("INSERT INTO dynproxy.authorized_keys (username, key) VALUES (%s, %s);"
                       % (sql_literal(u.name), sql_literal(u.pubkey)))
        self.pg.psql("\n".join(sql))

        hk = os.path.join(self.tmp, "hostkeys")
        os.makedirs(hk)
        self.host_keys = []
        for kind, extra in (("ed25519", []), ("ecdsa", ["-b", "256"]), ("rsa", ["-b", "3072"])):
            path = os.path.join(hk, "ssh_host_%s_key" % kind)
            dpenv.run(["ssh-keygen", "-q", "-t", kind] + extra +
                      ["-N", "", "-C", "sshproxy-test-%s" % kind, "-f", path], timeout=60)
            self.host_keys.append(path)
        self.host_pubs = {}
        for path in self.host_keys:
            with open(path + ".pub") as f:
                typ, blob = f.read().split()[:2]
            self.host_pubs[typ] = blob

        self.port = dpenv.free_port()
        self.config = os.path.join(self.tmp, "sshproxy.conf")
        self.logfile = os.path.join(self.tmp, "sshproxy.log")
        self.write_config()
        self.known_hosts = os.path.join(self.tmp, "known_hosts")
        if self.selftest:
            be = self.backends[self.selftest]
            self.port = be.ssh_port
            pubs = []
            for kind in ("ed25519", "ecdsa", "rsa"):
                with open(be._hostkey(kind) + ".pub") as f:
                    pubs.append(f.read().split()[:2])
            dpenv.log("SELFTEST: 'proxy' calls go straight to %s's sshd on port %d",
                      be.name, be.ssh_port)
        else:
            pubs = list(self.host_pubs.items())
            self.start_proxy()
        with open(self.known_hosts, "w") as f:
            for typ, blob in pubs:
                f.write("[127.0.0.1]:%d %s %s\n" % (self.port, typ, blob))
        dpenv.log("sshproxy env up in %.1fs: %s, proxy port %d, users %s",
                  time.monotonic() - t0, self.tmp, self.port,
                  " ".join(u.name for u in self.users))

    def write_config(self):
        ssh = dict(self.ssh_conf)
        ssh["host_keys"] = self.host_keys
        ssh["proxy_key"] = self.proxy_key
        lines = ["# sshproxy e2e test configuration (tests/harness/sshproxy_env.py)",
                 'log_level = "%s";' % self.log_level,
                 "workers = %d;" % self.workers,
                 'listen = [ "127.0.0.1:%d" ];' % self.port,
                 "shutdown_timeout_ms = 5000;",
                 "hook = {",
                 "  path = %s;" % _conf_value(PGSQL_HOOK),
                 "  cache_ttl_ms = %d;" % CACHE_TTL_MS,
                 "  config = { conninfo = %s; };" % _conf_value(self.pg.conninfo),
                 "};",
                 "ssh = {"]
        for k in sorted(ssh):
            lines.append("  %s = %s;" % (k, _conf_value(ssh[k])))
        lines.append("};")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start_proxy(self, timeout=15.0):
        self.proxy = Daemon(SSHPROXY, self.config, self.logfile).start(timeout=timeout)
        if not dpenv.wait_port(self.port, timeout=timeout, alive=self.proxy.alive):
            raise dpenv.HarnessError("sshproxy does not accept on 127.0.0.1:%d:\n%s"
                                     % (self.port, dpenv.tail(self.logfile)))
        return self.proxy

    def proxy_alive(self):
        return self.selftest is not None or (self.proxy is not None and self.proxy.alive())

    def ensure_proxy(self):
        """Restart the proxy when it died; returns None if it was alive, else what happened."""
        if self.proxy_alive():
            return None
        rc = self.proxy.proc.returncode if self.proxy and self.proxy.proc else None
        what = "sshproxy died (exit status %s); log tail:\n%s" % (rc, dpenv.tail(self.logfile, 25))
        self.restarts += 1
        try:
            self.start_proxy()
            what += "\n(restarted for the remaining tests)"
        except dpenv.HarnessError as e:
            what += "\nrestart failed: %s" % e
        return what

    @property
    def proxy_pid(self):
        return self.proxy.proc.pid if self.proxy and self.proxy.proc else None

    # ---- teardown ------------------------------------------------------------------------
    def stop_proxy(self):
        """SIGTERM the proxy; returns (exit status, seconds) or (None, 0) if none ran."""
        if self.proxy is None:
            return None, 0.0
        return self.proxy.stop()

    def close(self):
        """Tear everything down; returns a list of cleanup problems (strings)."""
        problems = []
        if self.proxy is not None and self.proxy.alive():
            try:
                self.proxy.stop()
            except Exception as e:  # noqa: BLE001
                problems.append("stop sshproxy: %r" % e)
        for be in self.backends.values():
            try:
                be.stop()
            except Exception as e:  # noqa: BLE001
                problems.append("stop %s: %r" % (be.name, e))
        for u in self.users:
            try:
                delete_user(u.name)
            except Exception as e:  # noqa: BLE001
                problems.append("delete user %s: %r" % (u.name, e))
        if self.pg is not None:
            try:
                self.pg.destroy()
            except Exception as e:  # noqa: BLE001
                problems.append("destroy PostgreSQL: %r" % e)
        if self.logfile and os.path.exists(self.logfile):
            self.logfile_tail = dpenv.tail(self.logfile, 40)
        if self.tmp and not os.environ.get("DP_KEEP_TMP"):
            dpenv.rmtree(self.tmp)
        elif self.tmp:
            dpenv.log("DP_KEEP_TMP: kept %s", self.tmp)
        self.backends, self.users, self.pg, self.proxy = {}, [], None, None
        self.cleanup_problems = problems
        return problems

    def run_sections(self, tests, only, check):
        """Run (name, fn) sections in order (only those whose number is in `only`, when given).
        A section that raises is one failed check; a proxy that died is reported and
        restarted so the remaining sections still run."""
        for name, fn in tests:
            if only and name.split()[0] not in only:
                continue
            ts = time.monotonic()
            print("# %s" % name, flush=True)
            try:
                fn(self)
            except Exception:  # noqa: BLE001 - a harness error is a failed check
                check.harness_error("%s: harness error" % name)
            died = self.ensure_proxy()
            if died:
                check(False, "sshproxy still running after section %s" % name, died)
            dpenv.log("section %s took %.1fs", name, time.monotonic() - ts)

    # ---- proxy log -----------------------------------------------------------------------
    def log(self):
        return dpenv.read_text(self.logfile)

    def log_offset(self):
        return len(self.log())

    def wait_log(self, needle, after=0, timeout=5.0):
        """True when needle (a str, or a callable on the new text) shows up past `after`."""
        pred = needle if callable(needle) else (lambda text: needle in text)
        return bool(dpenv.wait_until(lambda: pred(self.log()[after:]), timeout))

    def events(self, event, after=0, **match):
        """Parsed logfmt lines with event=<event> past offset `after` whose fields match."""
        out = []
        for line in self.log()[after:].splitlines():
            if "event=" + event not in line:
                continue
            f = parse_logfmt(line)
            if f.get("event") == event and all(f.get(k) == v for k, v in match.items()):
                f["_line"] = line
                out.append(f)
        return out

    # ---- clients -------------------------------------------------------------------------
    @staticmethod
    def _name(user):
        return user if isinstance(user, str) else user.name

    def base_opts(self, loglevel="ERROR", strict=True):
        """ssh_base_opts with our proxy known_hosts; LogLevel replaced (first -o wins)."""
        opts = dpenv.ssh_base_opts(self.known_hosts if strict else None)
        return ["LogLevel=" + loglevel if o == "LogLevel=ERROR" else o for o in opts]

    def key_opts(self, key):
        return ["-i", key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "PreferredAuthentications=publickey"]

    def ssh_argv(self, user, command=None, key=None, password=None, extra=(), port=None,
                 loglevel="ERROR", strict=True):
        """(argv, env) of a real `ssh` to the proxy (or `port`).

        key=True means the user's own key; password=True the user's own password.
        """
        if key is True:
            key = user.key
        if password is True:
            password = user.password
        if key is None and password is None:
            raise ValueError("ssh_argv needs key= or password=")
        argv, env = dpenv.ssh_cmd(port or self.port, self._name(user), command, key=key,
                                  password=password, extra=extra,
                                  known_hosts=self.known_hosts if strict and not port else None)
        if loglevel != "ERROR":
            argv = ["LogLevel=" + loglevel if a == "LogLevel=ERROR" else a for a in argv]
        return argv, env

    def ssh(self, user, command, key=None, password=None, extra=(), timeout=60, input=None,
            binary=False, env=None, loglevel="ERROR", port=None):
        """`ssh user@proxy command`; returns a Result. env: extra environment for ssh."""
        argv, e = self.ssh_argv(user, command, key, password, extra, port, loglevel)
        if env:
            e.update(env)
        return run_cmd(argv, env=e, input=input, timeout=timeout, binary=binary)

    def direct(self, backend, user, command, timeout=60, input=None, binary=False, extra=(),
               loglevel="ERROR"):
        """`ssh` straight to a backend's sshd with the user's key (no proxy)."""
        be = self.backends[backend] if isinstance(backend, str) else backend
        return self.ssh(user, command, key=user.key, extra=extra, timeout=timeout, input=input,
                        binary=binary, loglevel=loglevel, port=be.ssh_port)

    def ssh_command_string(self, user, key=True, port=None):
        """A shell-quoted `ssh ...` (no destination) for rsync -e and GIT_SSH_COMMAND."""
        if key is True:
            key = user.key
        argv = ["ssh"] + self.base_opts() + self.key_opts(key)
        if port:
            argv += ["-p", str(port)]
        return shlex.join(argv)

    def scp_argv(self, user, key=True):
        """scp/sftp options (no operands): our known_hosts, -P port, the user's key."""
        if key is True:
            key = user.key
        return self.base_opts() + ["-P", str(self.port)] + self.key_opts(key)

    def backend_path(self, backend, user, *rel):
        """Root-namespace path of a file in the user's home on a backend."""
        be = self.backends[backend] if isinstance(backend, str) else backend
        return os.path.join(be.home_dir, self._name(user), *rel)

    def put_backend_file(self, backend, user, rel, src):
        """Copy local file src into the user's home on backend (owned by the user)."""
        dst = self.backend_path(backend, user, rel)
        shutil.copyfile(src, dst)
        pw = pwd.getpwnam(self._name(user))
        os.chown(dst, pw.pw_uid, pw.pw_gid)
        return dst

    # ---- routes --------------------------------------------------------------------------
    def settle(self):
        """Wait out the route cache TTL (NOTIFY normally makes this unnecessary)."""
        time.sleep(CACHE_TTL_MS / 1000.0 + 0.2)

    def move(self, user, backend, settle=False):
        self.pg.psql("SELECT dynproxy.move_user(%s, %s)"
                     % (sql_literal(self._name(user)), sql_literal(backend)))
        if settle:
            self.settle()

    def set_maintenance(self, backend, message, settle=True):
        """message None: maintenance off."""
        self.pg.psql("UPDATE dynproxy.backends SET maintenance = %s, maintenance_message = %s "
                     "WHERE name = %s" % ("false" if message is None else "true",
                                          sql_literal(message), sql_literal(backend)))
        if settle:
            self.settle()

    def set_pin(self, backend, pin=None, settle=True):
        """pin None: the backend's real ed25519 pin. "random": a well-formed wrong one."""
        if pin is None:
            pin = self.backends[backend].ssh_hostkey_sha256
        elif pin == "random":
            pin = "SHA256:" + base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        self.pg.psql("UPDATE dynproxy.backends SET hostkey_sha256 = %s WHERE name = %s"
                     % (sql_literal(pin), sql_literal(backend)))
        if settle:
            self.settle()
        return pin

    def set_backend_port(self, backend, port=None, settle=True):
        """Point a backend row at another ssh port (None: its real one)."""
        if port is None:
            port = self.backends[backend].ssh_port
        self.pg.psql("UPDATE dynproxy.backends SET ssh_port = %d WHERE name = %s"
                     % (port, sql_literal(backend)))
        if settle:
            self.settle()

    def set_enabled(self, user, enabled, settle=True):
        self.pg.psql("UPDATE dynproxy.users SET enabled = %s WHERE username = %s"
                     % ("true" if enabled else "false", sql_literal(self._name(user))))
        if settle:
            self.settle()
