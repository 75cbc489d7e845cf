#!/usr/bin/python3
"""e2e test of the harness itself: private PostgreSQL, two backends, one system user, real clients.

Proves that what the proxy tests build on really works: each backend's sshd accepts the user's
key, the proxy key and the password and reports its own name; each vsftpd logs the user in and
serves the backend's BACKEND file through its passive port range; the pinned host key equals
what ssh-keyscan sees; homes are separate per backend; stop() leaves nothing running.
Run by ctest (label e2e) or directly as root: PYTHONPATH=tests/harness python3 tests/e2e/test_backends.py
"""

import concurrent.futures
import ftplib
import hashlib
import io
import os
import secrets
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))
import dpenv  # noqa: E402
from backends import Backend, _pids_in_ns  # noqa: E402
from checks import Checks  # noqa: E402
from pg import PgServer, sql_literal  # noqa: E402
from users import create_user, delete_user, make_keypair  # noqa: E402

check = Checks()


def ftp_get(port, user, password, path):
    """Log in with ftplib, RETR path in passive mode; returns (bytes, pasv data port)."""
    f = ftplib.FTP()
    f.connect("127.0.0.1", port, timeout=10)
    try:
        f.login(user, password)
        f.set_pasv(True)
        _, data_port = f.makepasv()
        buf = io.BytesIO()
        f.retrbinary("RETR " + path, buf.write)
        return buf.getvalue(), data_port
    finally:
        try:
            f.quit()
        except (OSError, EOFError, ftplib.Error):
            f.close()


def wrong_ssh(be, user):
    r = dpenv.ssh_run(be.ssh_port, user.name, "true", password=user.password + "x")
    return (r.returncode == 255 and "Permission denied" in r.stderr,
            "%s: ssh with a wrong password is refused" % be.name, r.stdout + r.stderr)


def wrong_ftp(be, user):
    what = "%s: FTP with a wrong password gets 530" % be.name
    f = ftplib.FTP()
    try:
        f.connect("127.0.0.1", be.ftp_port, timeout=10)
        f.login(user.name, "wrong-" + user.password)
        return (False, what, "login succeeded")
    except ftplib.error_perm as e:
        return (str(e).startswith("530"), what, e)
    except (OSError, EOFError, ftplib.Error) as e:
        return (False, what, repr(e))
    finally:
        f.close()


def test_backend(be, other, user, proxy_key, tmp):
    n = be.name
    r = dpenv.ssh_run(be.ssh_port, user.name, "echo $DYNPROXY_BACKEND", key=user.key)
    check(r.returncode == 0 and r.stdout.strip() == n,
          "%s: ssh with the user's key prints DYNPROXY_BACKEND=%s" % (n, n), r.stdout + r.stderr)

    r = dpenv.ssh_run(be.ssh_port, user.name, "echo $DYNPROXY_BACKEND; cat BACKEND; pwd",
                      key=proxy_key)
    check(r.returncode == 0 and r.stdout.split() == [n, n, "/srv/dynproxy/home/" + user.name],
          "%s: ssh with the proxy key logs in as the user, home has BACKEND=%s" % (n, n),
          r.stdout + r.stderr)

    r = dpenv.ssh_run(be.ssh_port, user.name, "echo $DYNPROXY_BACKEND", password=user.password)
    check(r.returncode == 0 and r.stdout.strip() == n,
          "%s: ssh with the password (askpass) prints %s" % (n, n), r.stdout + r.stderr)


    r = dpenv.ssh_run(be.ssh_port, user.name, "echo $DP_TEST", key=user.key,
                      extra=["-o", "SetEnv=DP_TEST=hello"])
    check(r.returncode == 0 and r.stdout.strip() == "hello",
          "%s: AcceptEnv DP_* passes DP_TEST" % n, r.stdout + r.stderr)

    try:
        data, dport = ftp_get(be.ftp_port, user.name, user.password, "BACKEND")
        check(data == (n + "\n").encode(), "%s: FTP login + RETR BACKEND returns %r" % (n, n),
              repr(data))
        lo, hi = be.pasv_range
        check(lo <= dport <= hi, "%s: passive port %d within %d-%d" % (n, dport, lo, hi))
    except (OSError, EOFError, ftplib.Error) as e:
        check(False, "%s: FTP login + RETR BACKEND" % n, repr(e))

    # upload through FTP, read back through ssh: same user, same home, same bytes
    payload = secrets.token_bytes(300000)
    try:
        f = ftplib.FTP()
        f.connect("127.0.0.1", be.ftp_port, timeout=10)
        f.login(user.name, user.password)
        f.storbinary("STOR upload.bin", io.BytesIO(payload))
        f.quit()
        r = dpenv.ssh_run(be.ssh_port, user.name, "sha256sum upload.bin", key=user.key)
        check(r.returncode == 0 and r.stdout.split()[:1] == [hashlib.sha256(payload).hexdigest()],
              "%s: FTP STOR, file seen over ssh with the same sha256" % n, r.stdout + r.stderr)
    except (OSError, EOFError, ftplib.Error) as e:
        check(False, "%s: FTP STOR" % n, repr(e))

    try:
        seen = dpenv.ssh_keyscan_sha256(be.ssh_port)
        check(seen == be.ssh_hostkey_sha256,
              "%s: pinned host key %s equals ssh-keyscan's" % (n, be.ssh_hostkey_sha256), seen)
    except dpenv.HarnessError as e:
        check(False, "%s: ssh-keyscan" % n, e)

    kh = os.path.join(tmp, "known_hosts_" + n)
    with open(kh, "w") as fh:
        fh.write("dp-pin-%s %s\n" % (n, be.ssh_hostkey_pub))
    alias = ["-o", "HostKeyAlgorithms=ssh-ed25519", "-o", "HostKeyAlias=dp-pin-" + n]
    r = dpenv.ssh_run(be.ssh_port, user.name, "true", key=user.key, known_hosts=kh, extra=alias)
    check(r.returncode == 0, "%s: strict host key check against the ed25519 pin passes" % n,
          r.stderr)
    r = dpenv.ssh_run(other.ssh_port, user.name, "true", key=user.key,
                      extra=alias, known_hosts=kh)
    check(r.returncode == 255 and "verification failed" in r.stderr,
          "%s: %s's host key does not match %s's pin" % (n, other.name, n), r.stderr)


def main():
    src = os.environ.get("DP_SOURCE_DIR") or dpenv.SOURCE_DIR
    if os.geteuid() != 0:
        print("test_backends needs root (useradd, mount namespaces)")
        print("0 passed, 1 failed")
        return 1
    t0 = time.monotonic()
    tmp = dpenv.make_tempdir("dpt-backends-")
    uname = "dpt_" + secrets.token_hex(4)
    pg = None
    bes = []
    user = None
    try:
        pg = PgServer(os.path.join(tmp, "pg"))
        pg.start()
        check(pg.psql("SELECT 40 + 2").strip() == "42", "PostgreSQL answers on %s" % pg.uri)
        schema = os.path.join(src, "deploy", "sql", "schema.sql")
        have_schema = os.path.exists(schema)
        if have_schema:
            pg.load_file(schema)
            pg.load_file(schema)   # the contract says loading twice is safe
            check(True, "deploy/sql/schema.sql loads twice")
        else:
            print("note: %s missing, schema checks skipped" % schema)

        keys = os.path.join(tmp, "keys")
        proxy_key = os.path.join(keys, "proxy_ed25519")
        with open(os.path.join(tmp, "proxy_authorized_keys"), "w") as f:
            f.write(make_keypair(proxy_key, "dynproxy-test-proxy") + "\n")
        for name in ("web1", "web2"):
            be = Backend(name, os.path.join(tmp, name))
            bes.append(be)
            ts = time.monotonic()
            be.start()
            dpenv.log("backend %s up in %.2fs: ssh %d ftp %d pasv %s", name,
                      time.monotonic() - ts, be.ssh_port, be.ftp_port, be.pasv_range)
        user = create_user(uname, keydir=keys)
        for be in bes:
            be.ensure_user(user, authorized_keys=[user.pubkey])
        check(bes[0].ssh_hostkey_sha256 != bes[1].ssh_hostkey_sha256,
              "the two backends have different host keys")

        # failed logins cost seconds each (PAM failure delay): run them alongside the rest
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            slow = [pool.submit(fn, be, user) for be in bes for fn in (wrong_ssh, wrong_ftp)]
            for be, other in ((bes[0], bes[1]), (bes[1], bes[0])):
                test_backend(be, other, user, proxy_key, tmp)
            for fut in slow:
                check(*fut.result(timeout=60))

        r = dpenv.ssh_run(bes[0].ssh_port, user.name, "echo only-web1 > private.txt", key=user.key)
        r2 = dpenv.ssh_run(bes[1].ssh_port, user.name, "test -e private.txt && echo leaked || echo absent",
                           key=user.key)
        check(r.returncode == 0 and r2.stdout.strip() == "absent",
              "a file written on web1 does not appear in the home on web2", r2.stdout + r2.stderr)

        if have_schema:
            for be in bes:
                pg.psql("INSERT INTO dynproxy.backends(name, address, ssh_port, ftp_port, hostkey_sha256)"
                        " VALUES (%s, '127.0.0.1', %d, %d, %s)"
                        % (sql_literal(be.name), be.ssh_port, be.ftp_port,
                           sql_literal(be.ssh_hostkey_sha256)))
            pg.psql("INSERT INTO dynproxy.users(username, backend) VALUES (%s, 'web1')"
                    % sql_literal(uname))
            row = pg.psql("SELECT status, backend, ssh_port, hostkey FROM dynproxy.route(%s, "
                          "'127.0.0.1', 'ssh')" % sql_literal(uname)).strip()
            check(row == "ok|web1|%d|%s" % (bes[0].ssh_port, bes[0].ssh_hostkey_sha256),
                  "dynproxy.route() returns web1 with its pin", row)
            pg.psql("SELECT dynproxy.move_user(%s, 'web2')" % sql_literal(uname))
            row = pg.psql("SELECT backend, ftp_port FROM dynproxy.route(%s, '127.0.0.1', 'ftp')"
                          % sql_literal(uname)).strip()
            check(row == "web2|%d" % bes[1].ftp_port, "move_user() moves the route to web2", row)

        # stop must leave nothing behind
        for be in bes:
            ns = be._load_state().get("mntns")
            be.stop()
            left = _pids_in_ns(ns) if ns else []
            check(not left and not dpenv.port_accepts(be.ssh_port)
                  and not dpenv.port_accepts(be.ftp_port),
                  "%s: stop() leaves no process and no open port" % be.name, left)
        be = bes[0]
        be.start()
        r = dpenv.ssh_run(be.ssh_port, user.name, "cat BACKEND private.txt", key=user.key)
        check(r.stdout.split() == ["web1", "only-web1"],
              "web1 restarts on the same port with the same home", r.stdout + r.stderr)
        check(dpenv.ssh_keyscan_sha256(be.ssh_port) == be.ssh_hostkey_sha256,
              "web1 keeps its host key across restarts")
        pg.stop()
        pg.stop()
        pg.start()
        check(pg.psql("SELECT 1").strip() == "1", "PostgreSQL restarts on the same port")
    except Exception:   # noqa: BLE001 - any harness error is a failed test, never a crash
        check.harness_error()
    finally:
        for be in bes:
            try:
                be.stop()
            except Exception as e:  # noqa: BLE001
                check(False, "cleanup: stop %s" % be.name, e)
        if user is not None or uname:
            try:
                delete_user(uname)
            except Exception as e:  # noqa: BLE001
                check(False, "cleanup: delete user %s" % uname, e)
        if pg is not None:
            try:
                pg.destroy()
            except Exception as e:  # noqa: BLE001
                check(False, "cleanup: destroy PostgreSQL", e)
        dpenv.rmtree(tmp)
    dpenv.log("test_backends took %.1fs", time.monotonic() - t0)
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
