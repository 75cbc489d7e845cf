#!/usr/bin/python3
"""A pyftpdlib FTP server as a dynproxy test backend (started by backends.PyFtpdBackend).

    /usr/bin/python3 tests/harness/pyftpd_server.py CONFIG.json

Always Debian's /usr/bin/python3: python3-pyftpdlib (1.5.7) is installed for it. pyftpdlib
implements RFC 3659 (MLST, MLSD, OPTS MLST), which vsftpd does not, so listings in machine
format can be tested through ftpproxy against a real server.

CONFIG (JSON):
  name                the backend's name (banner, log lines)
  address, port       where to listen; port 0: the kernel picks one (no free-port race)
  passive_ports       [lo, hi]: the PASV/EPSV port range
  masquerade_address  the address the 227 reply names ("" or absent: the listening address)
  users_file          {"<user>": {"password": ..., "home": ..., "perm": ...}}; read again at
                      each login attempt when it changed, so users added after start-up work
  ready_file          written (atomically) once the server listens: {"pid": ..., "port": ...}
  log_level           "debug" (every command and reply) or "info"
  parent_pid          exit when this process is no longer our parent (no orphan server
                      when the harness is killed before it could stop us)

One process, one thread (pyftpdlib's asynchronous loop): no child per connection. SIGTERM
closes every connection and exits 0.
"""

import json
import logging
import os
import signal
import sys

import pyftpdlib
from pyftpdlib.authorizers import AuthenticationFailed, DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.log import config_logging
from pyftpdlib.servers import FTPServer

FULL_PERM = "elradfmwMT"    # list, cd, read, append, delete, rename, mkdir, write, chmod, mtime


class FileAuthorizer(DummyAuthorizer):
    """DummyAuthorizer whose user table is the JSON users file (reloaded when it changed)."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        self._seen = None
        self._load()

    def _load(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._seen:
            return
        with open(self.path) as f:
            users = json.load(f)
        self.user_table = {}
        for name, u in users.items():
            self.add_user(name, u["password"], u["home"], perm=u.get("perm", FULL_PERM))
        self._seen = key

    def validate_authentication(self, username, password, handler):
        try:
            self._load()
        except (OSError, ValueError) as e:
            raise AuthenticationFailed("users file unreadable: %s" % e)
        super().validate_authentication(username, password, handler)


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: pyftpd_server.py CONFIG.json\n")
        return 2
    with open(argv[1]) as f:
        conf = json.load(f)
    level = logging.DEBUG if conf.get("log_level", "debug") == "debug" else logging.INFO
    config_logging(level=level)

    class Handler(FTPHandler):   # a subclass: the settings stay off pyftpdlib's own class
        pass

    name = conf["name"]
    Handler.authorizer = FileAuthorizer(conf["users_file"])
    Handler.banner = "%s pyftpdlib %s ready" % (name, pyftpdlib.__ver__)
    lo, hi = conf["passive_ports"]
    Handler.passive_ports = list(range(lo, hi + 1))
    Handler.masquerade_address = conf.get("masquerade_address") or None
    Handler.permit_foreign_addresses = False   # data connections from the control peer only
    Handler.permit_privileged_ports = False
    Handler.use_gmt_times = True               # MLSD/MLST "modify" facts in UTC (RFC 3659)
    Handler.timeout = 300

    server = FTPServer((conf["address"], int(conf.get("port", 0))), Handler)
    server.max_cons = 512
    server.max_cons_per_ip = 0
    port = server.socket.getsockname()[1]

    def on_term(signum, frame):
        raise SystemExit(0)    # serve_forever(handle_exit=True) closes everything, returns
    signal.signal(signal.SIGTERM, on_term)

    parent = conf.get("parent_pid")
    if parent:
        # the harness died without stopping us (killed at a ctest timeout): go too
        def orphan_check():
            if os.getppid() != parent:
                logging.getLogger("pyftpdlib").warning("parent %d gone: exiting", parent)
                raise SystemExit(0)
        orphan_check()
        server.ioloop.call_every(0.5, orphan_check)

    tmp = conf["ready_file"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "port": port}, f)
    os.replace(tmp, conf["ready_file"])
    server.serve_forever(handle_exit=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
