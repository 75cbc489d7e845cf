#!/usr/bin/python3
"""e2e.pgsql_hook: the PostgreSQL routing hook against a real, private PostgreSQL.

Starts PostgreSQL (tests/harness/pg.py), loads deploy/sql/schema.sql twice (idempotence),
seeds the rows below, checks the hook exports only its entry symbol, then runs the C program
build/tests/e2e/e2e_pgsql_hook, which loads build/hooks/pgsql.so through dp_hook_load and
dp_route_cache on a libuv loop, as the daemons do, and checks lookups, keys, NOTIFY
invalidation latency, deadlines, config errors, multi-host conninfo, and a PostgreSQL
stop/start (it runs the stop/start commands we hand it). See docs/hook-pgsql.md.

Output: one line per check, "metric name=value" lines, and finally "N passed, M failed";
exit status 0 only when everything passed.
"""

import os
import subprocess
import sys
import threading

from dpenv import BUILD_DIR, SOURCE_DIR, HarnessError, free_port, log, make_tempdir, rmtree, tail
from checks import Checks
from pg import PgServer

PROGRAM_TIMEOUT = 300  # seconds for the C program, all sections together

# The rows e2e_pgsql_hook.c expects (its "Expected seed" block; keep both in step).
SEED = r"""
INSERT INTO dynproxy.backends (name, address, ssh_port, ftp_port, hostkey_sha256) VALUES
    ('web1', '127.0.0.1', 2201, 2101, 'SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU'),
    ('web2', '127.0.0.2', 2202, 2102, NULL);
INSERT INTO dynproxy.backends (name, address, maintenance, maintenance_message) VALUES
    ('web3', '127.0.0.3', true, 'web3 is being upgraded, back at 14:00'),
    ('longaddr', repeat('a', 300), false, NULL);
INSERT INTO dynproxy.users (username, backend, backend_username, auth, key_path, enabled) VALUES
    ('alice', 'web1', 'alice_b', 'proxy-key', '/etc/dynproxy/keys/alice', true),
    ('bob', 'web1', NULL, 'password', NULL, true),
    ('carol', 'web3', NULL, 'password', NULL, true),
    ('dave', 'web1', NULL, 'password', NULL, false),
    ('erin', 'web2', NULL, 'password', NULL, true),
    ('frank', 'web2', NULL, 'password', NULL, true),
    ('mover', 'web1', NULL, 'password', NULL, true),
    ('sleepy', 'web1', NULL, 'password', NULL, true),
    ('toolong', 'longaddr', NULL, 'password', NULL, true);
INSERT INTO dynproxy.authorized_keys (username, key) VALUES
    ('bob', 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOvHfRlVuJ8B6cU2dQJwGZmX9r4Xq2l7f3a1b2c3d4e5 bob@laptop'),
    ('bob', 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f bob@desk');
"""


def sql_error(pg, sql):
    """The psql error text of a statement expected to fail ('' if it succeeded)."""
    try:
        pg.psql(sql)
    except HarnessError as e:
        return str(e)
    return ""


def check_schema(pg, c):
    schema = os.path.join(SOURCE_DIR, "deploy", "sql", "schema.sql")
    try:
        pg.load_file(schema)
        pg.load_file(schema)
        c(True, "deploy/sql/schema.sql loads twice (idempotent)")
    except HarnessError as e:
        c(False, "deploy/sql/schema.sql loads twice: %s" % e)
        return False
    counts = pg.psql(
        "SELECT (SELECT count(*) FROM pg_tables WHERE schemaname = 'dynproxy'),"
        " (SELECT count(*) FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid"
        "   JOIN pg_namespace n ON n.oid = r.relnamespace"
        "   WHERE n.nspname = 'dynproxy' AND NOT t.tgisinternal),"
        " (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        "   WHERE n.nspname = 'dynproxy')").strip()
    # functions: route, move_user (2 and 3 arguments), the three trigger functions
    c(counts == "3|3|6",
            "schema objects after two loads: tables|triggers|functions = %s (want 3|3|6)" % counts)
    pg.psql(SEED)
    e = sql_error(pg, "SELECT dynproxy.move_user('nobody', 'web1')")
    c('unknown user "nobody"' in e, "move_user names an unknown user")
    e = sql_error(pg, "SELECT dynproxy.move_user('alice', 'web9')")
    c('unknown backend "web9"' in e, "move_user names an unknown backend")
    return True


def check_exports(hook, c):
    try:
        r = subprocess.run(["nm", "-D", "--defined-only", hook], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=30, check=False)
    except OSError as e:
        c(False, "nm %s: %s" % (hook, e))
        return
    syms = sorted(line.split()[-1] for line in r.stdout.splitlines()
                  if len(line.split()) == 3 and line.split()[1] in "TtDdBbRrVvWwi")
    c(r.returncode == 0 and syms == ["dynproxy_hook_entry"],
            "pgsql.so exports only dynproxy_hook_entry (%s)" % ", ".join(syms))


def run_program(prog, args, c):
    """Run the C program, echo its lines, count its ok/FAIL lines into c."""
    log("running %s", " ".join([prog] + args))
    p = subprocess.Popen([prog] + args, stdout=subprocess.PIPE, text=True, bufsize=1)
    timer = threading.Timer(PROGRAM_TIMEOUT, p.kill)
    timer.start()
    summary = None
    try:
        for line in p.stdout:
            line = line.rstrip("\n")
            words = line.split(" ", 2)
            if len(words) == 3 and words[0] in ("ok", "FAIL") and words[1].isdigit():
                c(words[0] == "ok", "[c] " + words[2])
            elif line.endswith(" failed") and " passed, " in line:
                summary = line
            else:
                print(line, flush=True)
        rc = p.wait()
    finally:
        timer.cancel()
    c(rc == 0 and summary is not None,
            "e2e_pgsql_hook exited %d (%s)" % (rc, summary or "no summary line: crashed?"))


def main():
    c = Checks()
    hookdir = os.environ.get("DP_HOOKDIR") or os.path.join(BUILD_DIR, "hooks")
    hook = os.path.join(hookdir, "pgsql.so")
    prog = os.path.join(BUILD_DIR, "tests", "e2e", "e2e_pgsql_hook")
    for path in (hook, prog):
        if not os.path.exists(path):
            print("FAIL 1 %s is not built" % path)
            print("0 passed, 1 failed")
            return 1

    tmp = make_tempdir("dpt-pgsql-")
    pgdir = os.path.join(tmp, "pg")
    pg = PgServer(pgdir)
    ok = False
    try:
        pg.start()
        log("PostgreSQL on port %d", pg.port)
        if check_schema(pg, c):
            check_exports(hook, c)
            harness = os.path.join(SOURCE_DIR, "tests", "harness", "pg.py")
            cmd = "%s %s %%s %s >/dev/null" % (sys.executable, harness, pgdir)
            run_program(prog, ["--conninfo", pg.conninfo, "--dead-port", str(free_port()),
                               "--pg-stop", cmd % "stop", "--pg-start", cmd % "start",
                               "--hook", hook], c)
        ok = not c.failed
    except HarnessError as e:
        c(False, "harness: %s" % e)
    finally:
        if not ok:
            sys.stderr.write("--- %s (tail) ---\n%s\n" % (pg.logfile, tail(pg.logfile, 40)))
        try:
            pg.stop()
        except HarnessError as e:
            sys.stderr.write("stopping PostgreSQL: %s\n" % e)
        pg.destroy()
        rmtree(tmp)

    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
