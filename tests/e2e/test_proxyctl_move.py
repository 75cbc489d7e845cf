#!/usr/bin/python3
"""e2e.proxyctl_move: `proxyctl move` against two sshproxy and two ftpproxy instances that
share one PostgreSQL (the pgsql hook, LISTEN/NOTIFY), each with its own control socket.

World: tests/harness/sshproxy_env.py (PostgreSQL with the schema, backends web1 and web2 with
OpenSSH and vsftpd, users routed to web1) runs sshproxy A; this driver adds sshproxy B and
ftpproxy A and B on the same database and backends. Every instance caches routes for 10
minutes here, so a login that follows a move can only land on the new backend because the
NOTIFY reached that instance. Sections:

   1 the four instances answer `proxyctl status` on their sockets and route to web1
   2 `proxyctl move USER web2`: exit 0, "moved USER to web2"; the next SSH and FTP login of
     USER lands on web2 on every instance (no TTL expiry involved); DYNPROXY_DB and the PG*
     variables name the database too
   3 `proxyctl move USER web1 --kick`: USER's open SSH and FTP sessions end on all four
     instances (FTP clients read "421 your account has moved; please reconnect"), another
     user's sessions stay; each instance logs the kick; the next logins land on web1
   4 refusals: unknown user / unknown backend -> exit 1 with PostgreSQL's message; usage
     errors -> exit 2; nothing changed in the database
   5 unreachable database -> exit 3 within the connect timeout, the conninfo's password is
     never printed

Run by ctest (label e2e) or directly as root:
    PYTHONPATH=tests/harness /usr/bin/python3 tests/e2e/test_proxyctl_move.py [sections...]
"""

import ftplib
import os
import select
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))
import dpenv  # noqa: E402
from checks import Checks  # noqa: E402
from ftpproxy_env import FTPPROXY, FtpProxyEnv, close_ftp  # noqa: E402
from pg import sql_literal  # noqa: E402
from proxy_env import BUILD, kill_group, run_cmd  # noqa: E402
from sshproxy_env import SshProxyEnv  # noqa: E402

check = Checks()
PROXYCTL = os.path.join(BUILD, "proxyctl", "proxyctl")
LONG_TTL_MS = 600000          # routes change only through NOTIFY during this test
MOVED = "your account has moved; please reconnect"
NOTIFY_WAIT = 30.0            # seconds a NOTIFY may take to reach every instance
KICK_WAIT = 10.0


def long_ttl(config):
    """Rewrite the hook's cache_ttl_ms in a written config file."""
    with open(config) as f:
        text = f.read()
    if "cache_ttl_ms = 1000;" not in text:
        raise dpenv.HarnessError("%s: no 'cache_ttl_ms = 1000;' to lengthen" % config)
    with open(config, "w") as f:
        f.write(text.replace("cache_ttl_ms = 1000;", "cache_ttl_ms = %d;" % LONG_TTL_MS))


class Instance:
    """One more daemon on the world's database and backends: a view of a ProxyEnv subclass
    that only owns its port, config, log, control socket (and, for FTP, its passive ports and
    client HOME). Its clients (ssh, curl, ftplib) are the env class's own."""

    def __init__(self, world, cls, label):
        v = cls(nusers=0)
        v.tmp = os.path.join(world.tmp, label)
        os.makedirs(v.tmp)
        v.pg, v.backends, v.users = world.pg, world.backends, world.users
        if cls is FtpProxyEnv:
            v._prepare()                       # passive port range, client HOME
        else:                                  # the world's keys and host keys
            for k in ("keydir", "proxy_key", "proxy_authorized_keys", "unlisted_key",
                      "unlisted_pub", "host_keys", "host_pubs"):
                setattr(v, k, getattr(world, k))
        v.port = dpenv.free_port()
        v.config = os.path.join(v.tmp, "%s.conf" % v.NAME)
        v.logfile = os.path.join(v.tmp, "%s.log" % v.NAME)
        v.ctl_path = os.path.join(v.tmp, "ctl.sock")
        v.write_config()
        long_ttl(v.config)
        v.start_proxy()
        if cls is SshProxyEnv:
            v._after_start()                   # known_hosts for this port
        self.env = v
        self.label = label

    def stop(self):
        if self.env.proxy is not None and self.env.proxy.alive():
            return self.env.stop_proxy()
        return None, 0.0


class MoveWorld(SshProxyEnv):
    """SshProxyEnv (sshproxy A) plus sshproxy B, ftpproxy A and B."""

    def write_config(self):
        super().write_config()
        long_ttl(self.config)

    def _after_start(self):
        super()._after_start()
        self.extra = []
        self.extra.append(Instance(self, SshProxyEnv, "sshB"))
        self.extra.append(Instance(self, FtpProxyEnv, "ftpA"))
        self.extra.append(Instance(self, FtpProxyEnv, "ftpB"))
        self.ssh_instances = [("sshA", self), ("sshB", self.extra[0].env)]
        self.ftp_instances = [("ftpA", self.extra[1].env), ("ftpB", self.extra[2].env)]

    def all_instances(self):
        return self.ssh_instances + self.ftp_instances

    def close(self):
        mine = []
        for inst in getattr(self, "extra", []):
            try:
                inst.stop()
            except Exception as e:  # noqa: BLE001
                mine.append("stop %s: %r" % (inst.label, e))
        self.extra = []
        self.cleanup_problems = mine + super().close()
        return self.cleanup_problems


# ---- helpers -------------------------------------------------------------------------------
def proxyctl(*args, env=None, timeout=60):
    e = dict(os.environ)
    for k in ("DYNPROXY_DB", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSERVICE"):
        e.pop(k, None)
    e.update(env or {})
    return run_cmd([PROXYCTL] + list(args), env=e, timeout=timeout)


def db_backend(world, user):
    return world.pg.psql("SELECT backend FROM dynproxy.users WHERE username = %s"
                         % sql_literal(user.name)).strip()


def ssh_backend(inst, user):
    r = inst.ssh(user, "echo $DYNPROXY_BACKEND", key=True, timeout=30)
    return r.out.strip() if r.rc == 0 else "error: %s" % r


def ftp_backend(inst, user):
    r = inst.curl(user, [inst.url("BACKEND")], timeout=30)
    return r.out.strip() if r.rc == 0 else "error: %s" % r


def backend_of(name, inst, user):
    return ssh_backend(inst, user) if name.startswith("ssh") else ftp_backend(inst, user)


def lands_on(name, inst, user, want, wait=NOTIFY_WAIT):
    """The backend the user's login reaches, retried for `wait` seconds until it is `want`
    (a NOTIFY is asynchronous: it may arrive a little after the COMMIT)."""
    deadline = time.monotonic() + wait
    while True:
        got = backend_of(name, inst, user)
        if got == want or time.monotonic() >= deadline:
            return got
        time.sleep(0.2)


def sessions_of(inst, user):
    """Rows of `proxyctl sessions user=U` on inst's socket (None when the call failed)."""
    r = proxyctl("-s", inst.ctl_path, "sessions", "user=" + user.name)
    if r.rc != 0:
        return None
    return r.out.splitlines()[1:]


def open_ssh(inst, user):
    """A running `ssh ... sleep 60` through inst (a Popen in its own session)."""
    argv, e = inst.ssh_argv(user, "echo up; sleep 60", key=True)
    p = subprocess.Popen(argv, env=e, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    line = p.stdout.readline() if wait_readable(p.stdout, 20) else ""
    return p, line.strip() == "up"


def wait_readable(f, timeout):
    return bool(select.select([f], [], [], timeout)[0])


def read_421(f, timeout=KICK_WAIT):
    """The unsolicited line a kicked FTP session is sent (or the error)."""
    try:
        f.sock.settimeout(timeout)
        return f.getline()
    except (OSError, EOFError) as e:
        return "error: %r" % e


def noop_ok(f):
    try:
        return f.voidcmd("NOOP").startswith("200")
    except (ftplib.Error, OSError, EOFError):
        return False


# ---- 1 instances ---------------------------------------------------------------------------
def t_instances(world):
    u = world.users[0]
    for name, inst in world.all_instances():
        r = proxyctl("-s", inst.ctl_path, "status")
        check(r.rc == 0 and "state" in r.out and "accepting" in r.out,
              "%s: proxyctl status on its control socket" % name, r)
        check(lands_on(name, inst, u, "web1", wait=0) == "web1",
              "%s: %s logs in on web1 (route cached from now on)" % (name, u.name))


# ---- 2 move ----------------------------------------------------------------------------------
def t_move(world):
    u = world.users[0]
    for name, inst in world.all_instances():       # every cache holds web1 for 10 minutes
        backend_of(name, inst, u)
    r = proxyctl("move", u.name, "web2", "--db", world.pg.conninfo)
    check(r.rc == 0 and r.out.strip() == "moved %s to web2" % u.name,
          "proxyctl move %s web2: exit 0, 'moved %s to web2'" % (u.name, u.name), r)
    check(db_backend(world, u) == "web2", "dynproxy.users says web2")
    for name, inst in world.all_instances():
        got = lands_on(name, inst, u, "web2")
        check(got == "web2", "%s: the next login lands on web2 (NOTIFY, not TTL)" % name, got)

    # The database named by $DYNPROXY_DB, then by libpq's PG* variables.
    r = proxyctl("move", u.name, "web1", env={"DYNPROXY_DB": world.pg.conninfo})
    check(r.rc == 0 and db_backend(world, u) == "web1", "DYNPROXY_DB names the database", r)
    pgenv = {"PGHOST": "127.0.0.1", "PGPORT": str(world.pg.port), "PGUSER": "postgres",
             "PGDATABASE": "dynproxy"}
    r = proxyctl("move", u.name, "web2", env=pgenv)
    check(r.rc == 0 and db_backend(world, u) == "web2", "PG* variables name the database", r)
    for name, inst in world.all_instances():
        got = lands_on(name, inst, u, "web2")
        check(got == "web2", "%s: still web2 after the round trip" % name, got)


# ---- 3 move --kick ---------------------------------------------------------------------------
def t_kick(world):
    u, other = world.users[0], world.users[1]
    offs = {name: inst.log_offset() for name, inst in world.all_instances()}
    opened = []          # (name, kind, handle, is_mover)
    try:
        for name, inst in world.ssh_instances:
            for who in (u, other):
                p, up = open_ssh(inst, who)
                check(up, "%s: ssh session of %s open" % (name, who.name))
                opened.append((name, "ssh", p, who is u))
        for name, inst in world.ftp_instances:
            for who in (u, other):
                f = inst.ftp(who)
                check(noop_ok(f), "%s: FTP session of %s logged in" % (name, who.name))
                opened.append((name, "ftp", f, who is u))
        for name, inst in world.all_instances():
            rows = sessions_of(inst, u)
            check(rows is not None and len(rows) == 1 and u.name in rows[0],
                  "%s: proxyctl sessions user=%s lists its one session" % (name, u.name), rows)

        r = proxyctl("move", u.name, "web1", "--kick", "--db", world.pg.conninfo)
        check(r.rc == 0 and r.out.strip() ==
              "moved %s to web1 (sessions kicked on every instance)" % u.name,
              "proxyctl move %s web1 --kick: exit 0 and says so" % u.name, r)

        for name, kind, h, mover in opened:
            if kind == "ssh":
                try:
                    rc = h.wait(KICK_WAIT) if mover else None
                except subprocess.TimeoutExpired:
                    rc = None
                if mover:
                    check(rc is not None and rc != 0,
                          "%s: the moved user's ssh session ends (exit %s)" % (name, rc))
                else:
                    check(h.poll() is None, "%s: the other user's ssh session stays" % name)
            else:
                if mover:
                    line = read_421(h)
                    check(line == "421 " + MOVED,
                          "%s: the moved user's FTP client reads '421 %s'" % (name, MOVED), line)
                else:
                    check(noop_ok(h), "%s: the other user's FTP session stays" % name)
        for name, inst in world.all_instances():
            ok = inst.wait_log("kick user=%s" % u.name, after=offs[name], timeout=30)
            check(ok, "%s: the pgsql hook logs 'NOTIFY dynproxy_route: kick user=%s'"
                  % (name, u.name))
            ev = inst.wait_events("kick", after=offs[name], reason="moved", user=u.name)
            check(len(ev) == 1 and ev[0].get("sessions") == "1",
                  "%s: event=kick reason=moved sessions=1" % name, [e["_line"] for e in ev])
            rows = sessions_of(inst, u)
            check(rows == [], "%s: no session of %s left" % (name, u.name), rows)
            rows = sessions_of(inst, other)
            check(rows is not None and len(rows) == 1,
                  "%s: %s's session still listed" % (name, other.name), rows)
        for name, inst in world.all_instances():
            got = lands_on(name, inst, u, "web1", wait=0)
            check(got == "web1", "%s: reconnecting after the kick lands on web1" % name, got)
    finally:
        for name, kind, h, mover in opened:
            if kind == "ssh":
                kill_group(h)
            else:
                close_ftp(h)


# ---- 4 refusals ------------------------------------------------------------------------------
def t_refusals(world):
    u = world.users[1]
    before = db_backend(world, u)
    r = proxyctl("move", "dpt_nosuchuser", "web2", "--db", world.pg.conninfo)
    check(r.rc == 1 and r.err.strip() ==
          'proxyctl: dynproxy.move_user: unknown user "dpt_nosuchuser"' and r.out == "",
          "unknown user: exit 1 with PostgreSQL's message only", r)
    r = proxyctl("move", u.name, "web9", "--kick", "--db", world.pg.conninfo)
    check(r.rc == 1 and 'unknown backend "web9"' in r.err, "unknown backend: exit 1", r)
    check(db_backend(world, u) == before, "the refused moves changed nothing")
    # A name that would break a spliced SQL string is just an unknown user.
    r = proxyctl("move", "x'); DROP TABLE dynproxy.users; --", "web2", "--db",
                 world.pg.conninfo)
    check(r.rc == 1 and "unknown user" in r.err and db_backend(world, u) == before,
          "a quote in the user name travels as a parameter", r)
    for argv, what in ((["move", u.name], "BACKEND missing"),
                       (["move", u.name, "web2", "extra"], "one argument too many"),
                       (["move", u.name, "web2", "--frob"], "unknown option"),
                       (["--json", "move", u.name, "web2"], "--json with move")):
        r = proxyctl(*argv)
        check(r.rc == 2 and r.err.startswith("proxyctl: "), "usage error: %s -> exit 2" % what, r)
    r = proxyctl("move", "--help")
    check(r.rc == 0 and "move USER BACKEND" in r.out, "proxyctl move --help", r)


# ---- 5 unreachable database ------------------------------------------------------------------
def t_unreachable(world):
    u = world.users[1]
    port = dpenv.free_port()
    secret = "Sekrit-" + os.urandom(4).hex()
    r = proxyctl("move", u.name, "web2", "--db",
                 "host=127.0.0.1 port=%d dbname=dynproxy user=postgres password=%s"
                 % (port, secret), timeout=30)
    check(r.rc == 3 and r.err.startswith("proxyctl: cannot connect to the database")
          and r.secs < 10, "nothing listening: exit 3 at once", r)
    check(secret not in r.out + r.err, "the password is not printed")
    r = proxyctl("move", u.name, "web2", "--db",
                 "postgresql://postgres:%s@127.0.0.1:%d/dynproxy" % (secret, port), timeout=30)
    check(r.rc == 3 and secret not in r.out + r.err, "URI form: exit 3, no password", r)
    r = proxyctl("move", u.name, "web2", "--db", "host=127.0.0.1 password %s" % secret)
    check(r.rc == 2 and secret not in r.out + r.err,
          "a malformed conninfo: exit 2 without echoing it", r)
    # A server that accepts TCP but never answers: the default connect_timeout (5 s) ends it.
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    try:
        r = proxyctl("move", u.name, "web2", "--db", "host=127.0.0.1 port=%d dbname=x user=y"
                     % ls.getsockname()[1], timeout=30)
        check(r.rc == 3 and 3 < r.secs < 15,
              "a silent server: exit 3 after the default connect_timeout", r)
    finally:
        ls.close()


TESTS = [
    ("1 instances", t_instances),
    ("2 move", t_move),
    ("3 move --kick", t_kick),
    ("4 refusals", t_refusals),
    ("5 unreachable database", t_unreachable),
]


def main(argv):
    if not os.access(PROXYCTL, os.X_OK):
        check(False, "%s not built (cmake --build %s --target proxyctl)" % (PROXYCTL, BUILD))
        return check.finish()
    if not (os.access(FTPPROXY, os.X_OK)):
        check(False, "%s not built" % FTPPROXY)
        return check.finish()
    return MoveWorld.run_suite(check, "test_proxyctl_move", TESTS, argv, {"nusers": 2})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
