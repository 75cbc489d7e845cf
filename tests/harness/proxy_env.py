"""What the e2e worlds of the dynproxy daemons share (sshproxy_env.py, ftpproxy_env.py).

    class XProxyEnv(ProxyEnv):
        NAME, BINARY, SELFTEST_VAR, CONF_SECTION, PORT_COLUMN = ...
    with XProxyEnv(nusers=3, conf={...}) as env:
        env.move(env.users[0], "web2"); env.events("session_end", after=off)

ProxyEnv builds, under one temp dir and torn down by __exit__:
  - a private PostgreSQL with deploy/sql/schema.sql;
  - backends web1 and web2 (OpenSSH + vsftpd, tests/harness/backends.py);
  - `nusers` system users dpt_<hex> with a password (and an ed25519 key when the subclass
    sets self.keydir), a home on both backends, routed to web1 in dynproxy.users;
  - the daemon's config (common keys, the pgsql hook, then the subclass's section) and the
    daemon itself under daemon.Daemon.
Subclasses fill in the protocol: the hooks _prepare, _backend_kwargs, _extra_backends,
_add_user, _extra_sql, _section_conf, _after_start.

Self-check of the client side of the tests: when the environment variable SELFTEST_VAR names
a backend (e.g. DP_FTPPROXY_SELFTEST=web1), no daemon is started and env.port is that
backend's server: routing and proxy-only checks then fail by design, the rest must pass.

Also here: Result/run_cmd (time-bound client commands that never raise), kill_group,
parse_logfmt, vm_rss_kib, conf_value (libconfig literals).
"""

import os
import pwd
import re
import resource
import secrets
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dpenv  # noqa: E402
from backends import Backend  # noqa: E402
from daemon import Daemon  # noqa: E402
from pg import PgServer, sql_literal  # noqa: E402
from users import create_user, delete_user  # noqa: E402

BUILD = dpenv.BUILD_DIR
HOOKDIR = os.environ.get("DP_HOOKDIR") or os.path.join(BUILD, "hooks")
PGSQL_HOOK = os.path.join(HOOKDIR, "pgsql.so")
SCHEMA = os.path.join(dpenv.SOURCE_DIR, "deploy", "sql", "schema.sql")
BACKENDS = ("web1", "web2")
CACHE_TTL_MS = 1000          # hook.cache_ttl_ms: a changed route is seen within this anyway


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


def asan_process(pid):
    """True when pid runs with AddressSanitizer (the ASan suite of scripts/test)."""
    try:
        with open("/proc/%d/maps" % pid) as f:
            return "libasan" in f.read()
    except OSError:
        return False


def rss_bound(pid, bound):
    """`bound` (bytes of RSS growth a check allows) for this process: four times that, plus
    the quarantine asan_small_quarantine() sets, under AddressSanitizer (redzones, shadow
    memory, freed blocks held back; a flood of 62.5 MiB measured +8 MiB in the release build,
    +25..88 MiB under ASan). The release build's run of the same suite holds the real bound."""
    return 4 * bound + ASAN_QUARANTINE_MIB * (1 << 20) if asan_process(pid) else bound


ASAN_QUARANTINE_MIB = 16


def asan_small_quarantine():
    """For suites that bound the daemon's RSS: ASan keeps up to 256 MiB of freed memory in
    its quarantine by default and returns freed pages to the system only when asked, both of
    which would count as the daemon's. Call before starting it."""
    if "ASAN_OPTIONS" in os.environ:
        os.environ["ASAN_OPTIONS"] += (":quarantine_size_mb=%d"
                                       ":allocator_release_to_os_interval_ms=50"
                                       % ASAN_QUARANTINE_MIB)


def raise_nofile(want=8192):
    """Raise this process's open-files limit to min(want, hard) (load tests: many sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, want):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, want), hard))


def conf_value(v):
    """A Python value as a libconfig literal (bool, int, list, else a quoted string)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[ %s ]" % ", ".join(conf_value(x) for x in v)
    return '"%s"' % str(v).replace("\\", "\\\\").replace('"', '\\"')


class ProxyEnv:
    """See the module docstring. Subclasses set the class attributes and override hooks."""

    NAME = "proxy"          # the daemon's name in messages and file names
    BINARY = None           # path of the daemon
    SELFTEST_VAR = None     # environment variable naming the backend that stands in for it
    CONF_SECTION = None     # the protocol section of the config ("ssh", "ftp")
    PORT_COLUMN = None      # dynproxy.backends column and Backend attribute of its port
    DEFAULT_CONF = {}       # the protocol section's defaults
    PREFIX = "dpt-proxy-"   # of the temp dir

    def __init__(self, nusers=3, conf=None, workers=2, log_level="info", prefix=None,
                 hook_timeout_ms=None):
        """conf: protocol section keys over DEFAULT_CONF (env.conf; edit it, then
        restart_proxy()). hook_timeout_ms: hook.timeout_ms (None: the daemon's default)."""
        self.nusers = nusers
        self.hook_timeout_ms = hook_timeout_ms
        self.conf = dict(self.DEFAULT_CONF)
        self.conf.update(conf or {})
        self.workers = workers
        self.log_level = log_level
        self.prefix = prefix or self.PREFIX
        self.selftest = os.environ.get(self.SELFTEST_VAR) or None if self.SELFTEST_VAR else None
        self.tmp = None
        self.keydir = None       # set by a subclass that wants an ed25519 key per user
        self.pg = None
        self.backends = {}
        self.users = []
        self.proxy = None
        self.port = None
        self.restarts = 0
        self.config = None
        self.logfile = None
        self.ctl_path = None
        self.logfile_tail = ""
        self.cleanup_problems = []
        self.extra_conf = []     # more top-level config lines (e.g. 'metrics = { ... };')

    # ---- the driver around the sections --------------------------------------------------
    @classmethod
    def missing(cls):
        """None when the daemon binary exists, else a one-line reason."""
        if os.path.isfile(cls.BINARY) and os.access(cls.BINARY, os.X_OK):
            return None
        return "build/%s/%s not built (%s missing; cmake --build %s --target %s)" \
            % (cls.NAME, cls.NAME, cls.BINARY, BUILD, cls.NAME)

    @classmethod
    def preflight(cls, check, name):
        """The checks every driver starts with (root, a built daemon). Records one failed
        check and returns False when the suite cannot run."""
        if os.geteuid() != 0:
            check(False, "%s needs root (useradd, mount namespaces)" % name)
            return False
        missing = cls.missing()
        if missing and not os.environ.get(cls.SELFTEST_VAR):
            check(False, missing)
            return False
        return True

    @classmethod
    def run_world(cls, check, name, tests, only, env_kwargs, setup=None, stop_with=None,
                  always_stop=False):
        """One environment: preflight, setup(env), the sections in `only` (all when empty),
        then a SIGTERM check (when every section ran, section `stop_with` was asked for, or
        always_stop), the daemon's log tail on failure, and cleanup problems."""
        if not cls.preflight(check, name):
            return
        env = cls(**env_kwargs)
        try:
            with env:
                if setup is not None:
                    setup(env)
                env.run_sections(tests, only, check)
                stop = always_stop or not only or (stop_with is not None and stop_with in only)
                if not env.selftest and stop:
                    rc, took = env.stop_proxy()
                    check(rc == 0, "SIGTERM after the sections: %s exits 0 (took %.1fs)"
                          % (cls.NAME, took), "exit status %s; %s" % (rc, dpenv.tail(env.logfile, 15)))
                if check.failed and env.logfile and not env.selftest:
                    print("--- %s log (tail) ---\n%s" % (cls.NAME, dpenv.tail(env.logfile, 40)))
        except Exception:  # noqa: BLE001 - a harness error is a failed check
            check.harness_error("%s test environment" % cls.NAME)
            if env.logfile_tail:
                print("--- %s log (tail) ---\n%s" % (cls.NAME, env.logfile_tail))
        for p in env.cleanup_problems:
            check(False, "cleanup: %s" % p)

    @classmethod
    def run_suite(cls, check, name, tests, argv, env_kwargs, setup=None, stop_with=None):
        """A whole driver: run_world over the sections named in argv, timing, and the exit
        status."""
        t0 = time.monotonic()
        cls.run_world(check, name, tests, set(argv), env_kwargs, setup, stop_with)
        dpenv.log("%s took %.1fs", name, time.monotonic() - t0)
        return check.finish()

    def run_sections(self, tests, only, check):
        """Run (name, fn) sections in order (only those whose number is in `only`, when given).
        A section that raises is one failed check; a daemon that died is reported and
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
                check(False, "%s still running after section %s" % (self.NAME, name), died)
            dpenv.log("section %s took %.1fs", name, time.monotonic() - ts)

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

    def _prepare(self):
        """Hook: before the backends start (keys and files the backends need)."""

    def _backend_kwargs(self, name):
        """Hook: extra Backend() arguments for backend `name`."""
        return {}

    def _extra_backends(self):
        """Hook: more backends (objects like backends.Backend, not started yet) beside
        BACKENDS; they get the users and a dynproxy.backends row like the others."""
        return []

    def _add_user(self, user):
        """Hook: give a new user what it needs on every backend."""
        for be in self.backends.values():
            be.ensure_user(user)

    def _extra_sql(self):
        """Hook: more SQL statements after the backends and users rows."""
        return []

    def _section_conf(self):
        """Hook: {key: value} of the protocol section of the config."""
        return dict(self.conf)

    def _after_start(self):
        """Hook: after the daemon runs (or, in self-test, after env.port points at a backend)."""

    def _setup(self):
        t0 = time.monotonic()
        self.tmp = dpenv.make_tempdir(self.prefix)
        self.pg = PgServer(os.path.join(self.tmp, "pg"))
        self.pg.start()
        self.pg.load_file(SCHEMA)
        self._prepare()
        for name in BACKENDS:
            self.backends[name] = Backend(name, os.path.join(self.tmp, name),
                                          **self._backend_kwargs(name)).start()
        for be in self._extra_backends():
            self.backends[be.name] = be      # before start(): close() stops it either way
            be.start()
        for _ in range(self.nusers):
            u = create_user("dpt_" + secrets.token_hex(4), keydir=self.keydir)
            self.users.append(u)
            self._add_user(u)

        sql = []
        for be in self.backends.values():
            row = be.route_row()
            sql.append("INSERT INTO dynproxy.backends (%s) VALUES (%s);"
                       % (", ".join(row), ", ".join(str(v) if isinstance(v, int) else
                                                    sql_literal(v) for v in row.values())))
        for u in self.users:
            sql.append("INSERT INTO dynproxy.users (username, backend) VALUES (%s, 'web1');"
                       % sql_literal(u.name))
        self.pg.psql("\n".join(sql + self._extra_sql()))

        self.port = dpenv.free_port()
        self.config = os.path.join(self.tmp, "%s.conf" % self.NAME)
        self.logfile = os.path.join(self.tmp, "%s.log" % self.NAME)
        self.ctl_path = os.path.join(self.tmp, "%s.sock" % self.NAME)
        self.write_config()
        if self.selftest:
            be = self.backends[self.selftest]
            self.port = getattr(be, self.PORT_COLUMN)
            dpenv.log("SELFTEST: 'proxy' calls go straight to %s's server on port %d",
                      be.name, self.port)
        else:
            self.start_proxy()
        self._after_start()
        dpenv.log("%s env up in %.1fs: %s, proxy port %d, users %s", self.NAME,
                  time.monotonic() - t0, self.tmp, self.port,
                  " ".join(u.name for u in self.users))

    def add_user(self, backend="web1", debug_log=False):
        """One more user, routed to `backend`, while the env runs. debug_log: a name the
        backends' sshd logs at DEBUG1 (backends.DEBUG_USER_PREFIX)."""
        from backends import DEBUG_USER_PREFIX
        prefix = DEBUG_USER_PREFIX if debug_log else "dpt_"
        u = create_user(prefix + secrets.token_hex(3 if debug_log else 4), keydir=self.keydir)
        self.users.append(u)
        self._add_user(u)
        sql = ["INSERT INTO dynproxy.users (username, backend) VALUES (%s, %s);"
               % (sql_literal(u.name), sql_literal(backend))]
        extra = [q for q in self._extra_sql() if sql_literal(u.name) in q]
        self.pg.psql("\n".join(sql + extra))
        return u

    def write_config(self):
        lines = ["# %s e2e test configuration (tests/harness/%s_env.py)" % (self.NAME, self.NAME),
                 'log_level = "%s";' % self.log_level,
                 "workers = %d;" % self.workers,
                 'listen = [ "127.0.0.1:%d" ];' % self.port,
                 "shutdown_timeout_ms = 5000;",
                 # SIGTERM drains: sessions a test left open are kicked after 5 s, not 300
                 "control = { socket = %s; drain_timeout_s = 5; };" % conf_value(self.ctl_path),
                 "hook = {",
                 "  path = %s;" % conf_value(PGSQL_HOOK),
                 "  cache_ttl_ms = %d;" % CACHE_TTL_MS,
                 ] + (["  timeout_ms = %d;" % self.hook_timeout_ms]
                      if self.hook_timeout_ms else []) + [
                 "  config = { conninfo = %s; };" % conf_value(self.pg.conninfo),
                 "};",
                 "%s = {" % self.CONF_SECTION]
        section = self._section_conf()
        for k in sorted(section):
            lines.append("  %s = %s;" % (k, conf_value(section[k])))
        lines.append("};")
        lines.extend(self.extra_conf)
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start_proxy(self, timeout=15.0):
        # event=start (Daemon.start waits for it) comes after every worker listens. No probe
        # connection: the daemon would count it as a client (a max_startups_per_ip slot held
        # until it notices the close), which races the limits tests.
        self.proxy = Daemon(self.BINARY, self.config, self.logfile).start(timeout=timeout)
        return self.proxy

    def restart_proxy(self):
        """Stop the daemon, rewrite the config from self.conf, start it again (no-op in
        self-test)."""
        if self.selftest:
            return
        self.stop_proxy()
        self.write_config()
        self.start_proxy()

    def proxy_alive(self):
        return self.selftest is not None or (self.proxy is not None and self.proxy.alive())

    def ensure_proxy(self):
        """Restart the daemon when it died; returns None if it was alive, else what happened."""
        if self.proxy_alive():
            return None
        rc = self.proxy.proc.returncode if self.proxy and self.proxy.proc else None
        what = "%s died (exit status %s); log tail:\n%s" % (self.NAME, rc,
                                                             dpenv.tail(self.logfile, 25))
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
        """SIGTERM the daemon; returns (exit status, seconds) or (None, 0) if none ran."""
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
                problems.append("stop %s: %r" % (self.NAME, e))
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

    # ---- daemon log ----------------------------------------------------------------------
    def log(self):
        return dpenv.read_text(self.logfile)

    def log_offset(self):
        return len(self.log())

    def wait_log(self, needle, after=0, timeout=30.0):
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

    def wait_events(self, event, after=0, count=1, timeout=30.0, **match):
        """events(...) once at least `count` of them are there, or what there is at timeout."""
        dpenv.wait_until(lambda: len(self.events(event, after, **match)) >= count, timeout)
        return self.events(event, after, **match)

    # ---- backends and users --------------------------------------------------------------
    @staticmethod
    def _name(user):
        return user if isinstance(user, str) else user.name

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

    def spread_users(self):
        """Every other user on web2, so load crosses both backends; self.route_of maps user
        names to their backend."""
        self.route_of = {}
        for i, u in enumerate(self.users):
            self.route_of[u.name] = "web1" if i % 2 == 0 else "web2"
            if self.route_of[u.name] != "web1":
                self.move(u, self.route_of[u.name])
        self.settle()

    def set_maintenance(self, backend, message, settle=True):
        """message None: maintenance off."""
        self.pg.psql("UPDATE dynproxy.backends SET maintenance = %s, maintenance_message = %s "
                     "WHERE name = %s" % ("false" if message is None else "true",
                                          sql_literal(message), sql_literal(backend)))
        if settle:
            self.settle()

    def set_backend_port(self, backend, port=None, settle=True):
        """Point a backend row at another port of this protocol (None: its real one)."""
        if port is None:
            port = getattr(self.backends[backend], self.PORT_COLUMN)
        self.pg.psql("UPDATE dynproxy.backends SET %s = %d WHERE name = %s"
                     % (self.PORT_COLUMN, port, sql_literal(backend)))
        if settle:
            self.settle()

    def set_enabled(self, user, enabled, settle=True):
        self.pg.psql("UPDATE dynproxy.users SET enabled = %s WHERE username = %s"
                     % ("true" if enabled else "false", sql_literal(self._name(user))))
        if settle:
            self.settle()
