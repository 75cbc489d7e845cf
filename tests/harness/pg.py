#!/usr/bin/python3
"""A private PostgreSQL cluster for tests and the demo (stdlib only).

    pg = PgServer("/tmp/x/pg")      # port=None: a free 127.0.0.1 port, kept across restarts
    pg.start()                      # initdb on first use, then start; later: restart same cluster
    pg.load_file("deploy/sql/schema.sql")
    print(pg.psql("SELECT 1"))
    pg.destroy()

CLI: pg.py start|stop|destroy BASEDIR [--port N]
     start prints PGURI=... and PGCONNINFO=... lines (shell-quoted: eval-able).

Layout of BASEDIR: data/ (cluster, owned by `postgres` when run as root), s/ (unix socket),
postgres.log, port (the chosen port, so a restart reuses it).
The server listens on 127.0.0.1 only, trust auth, fsync=off: never use it for real data.
"""

import argparse
import glob
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dpenv import HarnessError, free_port, port_is_free, tail  # noqa: E402

PG_USER = "postgres"
DBNAME = "dynproxy"
START_TIMEOUT = 30   # seconds, pg_ctl -t and our own subprocess bound
STOP_TIMEOUT = 30
PSQL_TIMEOUT = 120


def sql_literal(value):
    """A SQL string literal for value (standard_conforming_strings: double the quotes)."""
    if value is None:
        return "NULL"
    s = str(value)
    if "\0" in s:
        raise ValueError("NUL byte in SQL literal")
    return "'" + s.replace("'", "''") + "'"


def pg_bindir():
    """Highest /usr/lib/postgresql/<ver>/bin that has initdb."""
    cands = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        ver = os.path.basename(os.path.dirname(d))
        if os.path.exists(os.path.join(d, "initdb")) and re.match(r"^\d+(\.\d+)?$", ver):
            cands.append((tuple(int(x) for x in ver.split(".")), d))
    if not cands:
        raise HarnessError("no PostgreSQL server found in /usr/lib/postgresql/*/bin "
                           "(apt-get install postgresql)")
    return max(cands)[1]


class PgServer:
    """One private cluster under basedir. See the module docstring."""

    def __init__(self, basedir, port=None):
        self.basedir = os.path.abspath(basedir)
        self.datadir = os.path.join(self.basedir, "data")
        self.socket_dir = os.path.join(self.basedir, "s")
        self.logfile = os.path.join(self.basedir, "postgres.log")
        self._portfile = os.path.join(self.basedir, "port")
        self.bindir = pg_bindir()
        self.port = port if port is not None else self._saved_port()
        self._as_root = os.geteuid() == 0

    # ---- public properties -------------------------------------------------------------
    @property
    def uri(self):
        return "postgresql://%s@127.0.0.1:%d/%s" % (PG_USER, self.port, DBNAME)

    @property
    def conninfo(self):
        return ("host=127.0.0.1 port=%d dbname=%s user=%s connect_timeout=3"
                % (self.port, DBNAME, PG_USER))

    # ---- helpers -----------------------------------------------------------------------
    def _saved_port(self):
        try:
            with open(self._portfile) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def _bin(self, name):
        return os.path.join(self.bindir, name)

    def _as_pg(self, cmd, timeout):
        """Run a server-side tool as the postgres OS user (initdb and postgres refuse root)."""
        if self._as_root:
            cmd = ["runuser", "-u", PG_USER, "--"] + cmd
        try:
            return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=timeout, check=False, cwd="/")
        except subprocess.TimeoutExpired as e:
            raise HarnessError("%s timed out after %ss\n%s" % (" ".join(cmd), timeout,
                                                               tail(self.logfile))) from e

    def _fail(self, what, out=""):
        raise HarnessError("PostgreSQL in %s: %s\n%s\n--- %s (tail) ---\n%s"
                           % (self.basedir, what, out.strip(), self.logfile, tail(self.logfile)))

    def _chown_pg(self, path):
        if self._as_root:
            pw = pwd.getpwnam(PG_USER)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def is_running(self):
        if not os.path.exists(os.path.join(self.datadir, "PG_VERSION")):
            return False
        r = self._as_pg([self._bin("pg_ctl"), "status", "-D", self.datadir], 10)
        return r.returncode == 0

    def _initdb(self):
        os.makedirs(self.basedir, exist_ok=True)
        # postgres must be able to traverse basedir to reach data/ and s/
        os.chmod(self.basedir, 0o755)
        if os.path.exists(self.datadir):
            shutil.rmtree(self.datadir)   # a half-made cluster from an earlier failed initdb
        os.mkdir(self.datadir, 0o700)
        self._chown_pg(self.datadir)
        r = self._as_pg([self._bin("initdb"), "-D", self.datadir, "-U", PG_USER,
                         "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"], 120)
        if r.returncode != 0:
            self._fail("initdb failed", r.stdout)
        with open(os.path.join(self.datadir, "pg_hba.conf"), "w") as f:
            f.write("# written by tests/harness/pg.py: private test cluster, trust everywhere\n"
                    "local all all trust\n"
                    "host all all 127.0.0.1/32 trust\n"
                    "host all all ::1/128 trust\n"
                    "local replication all trust\n"
                    "host replication all 127.0.0.1/32 trust\n")

    def _write_conf(self):
        """(Re)write our settings; postgresql.auto.conf wins over postgresql.conf."""
        os.makedirs(self.socket_dir, exist_ok=True)
        os.chmod(self.socket_dir, 0o755)
        self._chown_pg(self.socket_dir)
        sock = os.path.join(self.socket_dir, ".s.PGSQL.%d" % self.port)
        if len(sock) >= 107:
            raise HarnessError("PostgreSQL socket path too long (%d > 106 chars): %s; "
                               "use a shorter basedir" % (len(sock), sock))
        conf = os.path.join(self.datadir, "postgresql.auto.conf")
        with open(conf, "w") as f:
            f.write("# written by tests/harness/pg.py on every start\n"
                    "listen_addresses = '127.0.0.1'\n"
                    "port = %d\n"
                    "unix_socket_directories = '%s'\n"
                    "fsync = off\n"
                    "synchronous_commit = off\n"
                    "full_page_writes = off\n"
                    "max_connections = 300\n"
                    "shared_buffers = 64MB\n"
                    "log_min_messages = warning\n"
                    "log_line_prefix = '%%m [%%p] '\n"
                    % (self.port, self.socket_dir))
        self._chown_pg(conf)
        with open(self._portfile, "w") as f:
            f.write("%d\n" % self.port)

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self):
        """initdb on first call, else (re)start the same cluster. Returns self."""
        if self.is_running():
            return self
        if self.port is None:
            self.port = free_port()
        elif not port_is_free(self.port):
            raise HarnessError("PostgreSQL in %s: port 127.0.0.1:%d is already in use"
                               % (self.basedir, self.port))
        if not os.path.exists(os.path.join(self.datadir, "PG_VERSION")):
            self._initdb()
        self._write_conf()
        if not os.path.exists(self.logfile):
            open(self.logfile, "a").close()
        self._chown_pg(self.logfile)
        r = self._as_pg([self._bin("pg_ctl"), "start", "-D", self.datadir, "-l", self.logfile,
                         "-w", "-t", str(START_TIMEOUT)], START_TIMEOUT + 10)
        if r.returncode != 0:
            self._fail("pg_ctl start failed", r.stdout)
        exists = self.psql("SELECT 1 FROM pg_database WHERE datname = '%s'" % DBNAME,
                           dbname="postgres").strip()
        if exists != "1":
            self.psql("CREATE DATABASE %s" % DBNAME, dbname="postgres")
        return self

    def stop(self, mode="fast"):
        """Stop the server; a no-op when it is not running (or never existed)."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError("stop mode must be smart, fast or immediate")
        if not self.is_running():
            return
        r = self._as_pg([self._bin("pg_ctl"), "stop", "-D", self.datadir, "-m", mode,
                         "-w", "-t", str(STOP_TIMEOUT)], STOP_TIMEOUT + 10)
        if r.returncode != 0 and mode != "immediate":
            r = self._as_pg([self._bin("pg_ctl"), "stop", "-D", self.datadir, "-m", "immediate",
                             "-w", "-t", "10"], 20)
        if r.returncode != 0 and self.is_running():
            self._fail("pg_ctl stop failed", r.stdout)

    def destroy(self):
        """Stop and remove basedir entirely."""
        if os.path.isdir(self.basedir):
            self.stop("immediate")
        shutil.rmtree(self.basedir, ignore_errors=True)

    # ---- SQL ---------------------------------------------------------------------------
    def _psql_cmd(self, dbname):
        if self.port is None:
            raise HarnessError("PostgreSQL in %s: not started (no port)" % self.basedir)
        return [self._bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At",
                "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, "-d", dbname]

    def _run_psql(self, args, stdin, check, what):
        env = dict(os.environ, PGCONNECT_TIMEOUT="5", PGOPTIONS="-c client_min_messages=warning")
        env.pop("PGPASSWORD", None)
        try:
            r = subprocess.run(args, input=stdin, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env,
                               timeout=PSQL_TIMEOUT, check=False)
        except subprocess.TimeoutExpired as e:
            raise HarnessError("psql timed out after %ss: %s" % (PSQL_TIMEOUT, what)) from e
        if check and r.returncode != 0:
            raise HarnessError("psql failed (exit %d) on %s:\n%s"
                               % (r.returncode, what, r.stderr.strip()))
        return r.stdout

    def psql(self, sql, check=True, dbname=DBNAME):
        """Run SQL (any number of statements, fed on stdin); returns stdout (-At format)."""
        return self._run_psql(self._psql_cmd(dbname) + ["-f", "-"], sql, check,
                              sql if len(sql) < 200 else sql[:200] + "...")

    def load_file(self, path):
        """Run a SQL file; raises HarnessError with psql's message (file:line) on error."""
        return self._run_psql(self._psql_cmd(DBNAME) + ["-f", os.path.abspath(path)],
                              None, True, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description="private PostgreSQL for dynproxy tests")
    ap.add_argument("action", choices=["start", "stop", "destroy"])
    ap.add_argument("basedir")
    ap.add_argument("--port", type=int, default=None)
    a = ap.parse_args(argv)
    pg = PgServer(a.basedir, a.port)
    try:
        if a.action == "start":
            pg.start()
            print("PGURI=%s" % pg.uri)
            print("PGCONNINFO=%s" % shlex.quote(pg.conninfo))
        elif a.action == "stop":
            pg.stop()
        else:
            pg.destroy()
    except HarnessError as e:
        sys.stderr.write("pg.py %s: %s\n" % (a.action, e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
