"""The world of the ftpproxy end-to-end tests, as one context manager.

    with FtpProxyEnv(nusers=3) as env:
        f = env.ftp(env.users[0])                      # ftplib, logged in through the proxy
        x = data_transfer(f, "EPSV", "RETR BACKEND")   # x.final, x.data, x.error
        r = env.curl(env.users[0], [env.url("BACKEND")])          # a Result, never hangs
        r = env.lftp(env.users[0], "mirror --parallel=4 tree out")
        env.move(env.users[0], "web2"); env.set_maintenance("web2", "back at 14:00")
        env.events("transfer", after=off, cmd="RETR")

What it builds (proxy_env.ProxyEnv: PostgreSQL with the schema, backends web1/web2 with
vsftpd, users with passwords routed to web1, the pgsql hook), plus for FTP:
  - a passive port range of PASV_PORTS ports for each backend's vsftpd and for the proxy
    (the load test keeps 200 sessions with a data connection open at once);
  - the ftp section of /tmp/dp-briefs/ftpproxy-contract.md (DEFAULT_FTP_CONF, overridable
    with ftp_conf={...}; edit env.conf and call env.restart_proxy() to change it) and
    build/ftpproxy/ftpproxy running under daemon.Daemon;
  - with pyftpd=("py1", ...): more backends served by pyftpdlib (backends.PyFtpdBackend on
    PYFTPD_ADDRESS; RFC 3659 MLSD/MLST, which vsftpd lacks), with the users and a route row.

    f = env.ftp(u, mode="EPRT", encoding="utf-8")  # a ModeFTP: f.mlsd(), f.retrbinary()...
    d = env.direct("py1", u, mode="EPRT")          #   in that data mode, here straight to py1
    c = env.raw(user=u); c.cmd("MLST x")           # RawControl: replies as the exact bytes

Every client call has a timeout: ftplib sockets carry one, lftp and curl run under run_cmd
(killed at the deadline, a Result either way), so a hanging proxy is a failed check.

Self-check of the client side of the tests: DP_FTPPROXY_SELFTEST=web1 points every "proxy"
client at web1's vsftpd instead of starting the proxy (routing and proxy-only checks then fail
by design; transfers in every mode, lftp, curl, REST and ABOR must pass).
"""

import ftplib
import os
import pwd
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dpenv  # noqa: E402
from backends import PyFtpdBackend, pyftpdlib_missing  # noqa: E402
from proxy_env import BUILD, ProxyEnv, run_cmd  # noqa: E402

FTPPROXY = os.path.join(BUILD, "ftpproxy", "ftpproxy")
PASV_PORTS = 300
HOST = "127.0.0.1"
MODES = ("PASV", "EPSV", "PORT", "EPRT")
TIMEOUT = 15.0            # ftplib control and data sockets
PYFTPD_ADDRESS = "127.0.0.4"   # where the pyftpdlib backends listen (FtpProxyEnv(pyftpd=...))

DEFAULT_FTP_CONF = {
    "greeting": "dynproxy-e2e FTP proxy ready",
    "masquerade_address": "",
    "login_timeout_ms": 30000,
    "idle_timeout_s": 900,
    "data_timeout_ms": 30000,
    "connect_timeout_ms": 30000,
    "backend_reply_timeout_ms": 60000,
    "max_sessions": 10000,
    "max_sessions_per_ip": 100,
    "transfer_buffer": 1048576,
    "backend_passive": True,
    "backend_ignore_pasv_address": False,
    # vsftpd answers a wrong password after delay_failed_login (1 s) plus pam_unix's
    # randomised 2 s: 2.5-3.5 s. The proxy's delay for unknown users is tuned to match.
    "auth_fail_delay_ms": 3000,
    "max_login_attempts": 3,
    "password_prompt": "Please specify the password.",
}


def reply(f, line):
    """Send one command line on ftplib connection f; returns the whole reply text, whatever its
    code (ftplib would raise on 4xx/5xx). EOFError/OSError when the connection is gone."""
    f.putcmd(line)
    return f.getmultiline()


def code(text):
    """The reply code of a reply text as an int (0 when there is none)."""
    return int(text[:3]) if text[:3].isdigit() else 0


def recv_all(sock, bufsize=1 << 20):
    """Read until EOF: (the bytes, None) or (what came before the error, the OSError)."""
    chunks = []
    try:
        while True:
            b = sock.recv(bufsize)
            if not b:
                return b"".join(chunks), None
            chunks.append(b)
    except OSError as e:
        return b"".join(chunks), e


class Transfer:
    """What one data transfer did (see data_transfer)."""

    def __init__(self, mode, cmd):
        self.mode = mode
        self.cmd = cmd
        self.setup = ""        # the reply to PASV/EPSV/PORT/EPRT
        self.addr = None       # (host, port) the passive reply named
        self.prelim = ""       # the reply to the transfer command (1xx, or its refusal)
        self.final = ""        # the reply after the data connection closed
        self.data = b""
        self.error = None      # what went wrong on our side (timeout, refused connect, ...)
        self.secs = 0.0

    @property
    def ok(self):
        return self.error is None and code(self.final) == 226

    def __repr__(self):
        return ("%s %s: setup=%r prelim=%r final=%r data=%d bytes error=%s (%.1fs)"
                % (self.mode, self.cmd, self.setup.strip(), self.prelim.strip(),
                   self.final.strip(), len(self.data), self.error, self.secs))

    __str__ = __repr__


def open_data(f, mode, x, data_source=None, timeout=TIMEOUT):
    """Prepare a data connection in `mode` on f: for PASV/EPSV a connected socket, for
    PORT/EPRT a listening one. Fills x.setup / x.addr; returns (sock, listening) or
    (None, False) with x.error set."""
    local = f.sock.getsockname()[0]
    if mode in ("PASV", "EPSV"):
        x.setup = reply(f, mode)
        try:
            if mode == "PASV":
                x.addr = ftplib.parse227(x.setup)
            else:
                x.addr = ftplib.parse229(x.setup, f.sock.getpeername())
        except ftplib.Error:
            x.error = "%s refused: %r" % (mode, x.setup.strip())
            return None, False
        try:
            s = socket.create_connection(x.addr, timeout=timeout,
                                         source_address=(data_source or local, 0))
        except OSError as e:
            x.error = "data connect to %s:%d: %s" % (x.addr[0], x.addr[1], e)
            return None, False
        return s, False
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind((local, 0))
    ls.listen(1)
    ls.settimeout(timeout)
    port = ls.getsockname()[1]
    if mode == "PORT":
        x.setup = reply(f, "PORT %s,%d,%d" % (local.replace(".", ","), port >> 8, port & 255))
    else:
        x.setup = reply(f, "EPRT |1|%s|%d|" % (local, port))
    if code(x.setup) != 200:
        ls.close()
        x.error = "%s refused: %r" % (mode, x.setup.strip())
        return None, False
    return ls, True


def data_transfer(f, mode, cmd, upload=None, rest=None, data_source=None, timeout=TIMEOUT,
                  ready=None):
    """One transfer command (LIST, NLST, MLSD, RETR x, STOR x, APPE x) over a fresh data
    connection in `mode` (PASV, EPSV, PORT, EPRT) on logged-in ftplib connection f.
    upload: the bytes to send (STOR/APPE). rest: send REST n first. ready: called once the
    data connection is prepared, before the transfer command (a barrier for load tests).
    Never raises on protocol trouble or timeouts: everything is in the returned Transfer."""
    x = Transfer(mode, cmd)
    t0 = time.monotonic()
    s = None
    try:
        s, listening = open_data(f, mode, x, data_source, timeout)
        if s is None:
            return x
        if ready is not None:
            ready()
        if rest is not None:
            r = reply(f, "REST %d" % rest)
            if code(r) != 350:
                x.error = "REST %d refused: %r" % (rest, r.strip())
                return x
        x.prelim = reply(f, cmd)
        if code(x.prelim) // 100 != 1:
            x.error = "%s refused: %r" % (cmd, x.prelim.strip())
            return x
        if listening:
            conn, _ = s.accept()
            s.close()
            s = conn
            s.settimeout(timeout)
        if upload is not None:
            view = memoryview(upload)
            for i in range(0, len(view), 1 << 20):
                s.sendall(view[i:i + (1 << 20)])
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):      # the server closes its side once it has everything
                pass
        else:
            x.data, err = recv_all(s)
            if err is not None:
                raise err
        s.close()
        s = None
        x.final = f.getmultiline()
    except (OSError, EOFError, ftplib.Error) as e:
        x.error = "%s: %r" % (type(e).__name__, e)
    finally:
        if s is not None:
            s.close()
        x.secs = time.monotonic() - t0
    return x


class ModeFTP(ftplib.FTP):
    """ftplib.FTP whose own transfer methods (mlsd, retrbinary, storbinary, nlst, ...) open
    their data connection in one chosen mode: set_mode("PASV" | "EPSV" | "PORT" | "EPRT").
    Plain ftplib picks PASV/PORT for IPv4 and EPSV/EPRT only for IPv6, and binds its PORT
    listener on every address; here the listener is on the control connection's local
    address, and the 227 address is used as given (trust_server_pasv_ipv4_address), so a
    wrong address in a reply is a failed transfer, not a silent fix-up."""

    mode = "EPSV"
    trust_server_pasv_ipv4_address = True

    def set_mode(self, mode):
        if mode not in MODES:
            raise ValueError("mode %r not in %s" % (mode, MODES))
        self.mode = mode
        self.passiveserver = mode in ("PASV", "EPSV")

    def makepasv(self):
        if self.mode == "PASV":
            return ftplib.parse227(self.sendcmd("PASV"))
        return ftplib.parse229(self.sendcmd("EPSV"), self.sock.getpeername())

    def makeport(self):
        local = self.sock.getsockname()[0]
        sock = socket.create_server((local, 0), backlog=1)
        port = sock.getsockname()[1]
        try:
            if self.mode == "EPRT":
                self.voidcmd("EPRT |1|%s|%d|" % (local, port))
            else:
                self.voidcmd("PORT %s,%d,%d" % (local.replace(".", ","), port >> 8, port & 255))
        except BaseException:
            sock.close()
            raise
        if self.timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
            sock.settimeout(self.timeout)
        return sock


class RawControl:
    r"""A control connection that keeps every byte: replies come back as the exact bytes the
    server (or the proxy) sent, CRLFs and all (ftplib rewrites line ends).

        c = RawControl(host, port); c.greeting; c.login(user, password)
        c.cmd(b"MLST x") -> b"250-...\r\n ...\r\n250 End MLST.\r\n"
    """

    def __init__(self, host, port, timeout=TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.greeting = self.read_reply()

    def read_reply(self):
        """One whole reply (RFC 959 §4.2: a multi-line one ends at "<same code> "): bytes."""
        out = b""
        code3 = None
        while True:
            while b"\r\n" not in self.buf:
                b = self.sock.recv(65536)
                if not b:
                    raise EOFError("connection closed after %r" % (out + self.buf))
                self.buf += b
            line, self.buf = self.buf.split(b"\r\n", 1)
            out += line + b"\r\n"
            if code3 is None:
                code3 = line[:3]
                if line[3:4] != b"-":
                    return out
            elif line[:3] == code3 and line[3:4] == b" ":
                return out

    def cmd(self, line):
        """Send one command (str or bytes, no CRLF); its reply's bytes."""
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.sock.sendall(line + b"\r\n")
        return self.read_reply()

    def login(self, user, password):
        """USER/PASS; the PASS reply's bytes."""
        self.cmd("USER " + user)
        return self.cmd("PASS " + password)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class FtpProxyEnv(ProxyEnv):
    NAME = "ftpproxy"
    BINARY = FTPPROXY
    SELFTEST_VAR = "DP_FTPPROXY_SELFTEST"
    CONF_SECTION = "ftp"
    PORT_COLUMN = "ftp_port"
    DEFAULT_CONF = DEFAULT_FTP_CONF
    PREFIX = "dpt-ftpp-"

    def __init__(self, nusers=3, ftp_conf=None, pyftpd=(), **kw):
        """ftp_conf: keys of the ftp section over DEFAULT_FTP_CONF (then env.conf).
        pyftpd: names of extra backends served by pyftpdlib (backends.PyFtpdBackend, on
        PYFTPD_ADDRESS) beside web1/web2: every user gets a home and a login there, and each
        has a dynproxy.backends row (env.move(user, name) routes a user to it)."""
        super().__init__(nusers, ftp_conf, **kw)
        self.pyftpd = tuple(pyftpd)

    @classmethod
    def preflight_pyftpd(cls, check, name):
        """preflight() plus a working pyftpdlib for /usr/bin/python3."""
        if not cls.preflight(check, name):
            return False
        missing = pyftpdlib_missing()
        if missing:
            check(False, missing)
            return False
        return True

    # ---- setup hooks ---------------------------------------------------------------------
    def _prepare(self):
        if "passive_port_min" not in self.conf:
            lo, hi = dpenv.free_port_range(PASV_PORTS)
            self.conf.update(passive_port_min=lo, passive_port_max=hi)
        self.home = os.path.join(self.tmp, "clienthome")   # HOME of lftp and curl
        os.makedirs(self.home)

    def _backend_kwargs(self, name):
        return {"pasv_range": dpenv.free_port_range(PASV_PORTS)}

    def _extra_backends(self):
        return [PyFtpdBackend(name, os.path.join(self.tmp, name), address=PYFTPD_ADDRESS)
                for name in self.pyftpd]

    @property
    def host(self):
        """Where the "proxy" listens (the self-test backend's address in self-test)."""
        if self.selftest:
            return self.backends[self.selftest].address
        return HOST

    @property
    def pasv_range(self):
        """(lo, hi) of the passive ports the "proxy" hands out (a backend's in self-test)."""
        if self.selftest:
            return self.backends[self.selftest].pasv_range
        return (self.conf["passive_port_min"], self.conf["passive_port_max"])

    # ---- clients -------------------------------------------------------------------------
    def ftp(self, user=None, password=None, source=None, port=None, timeout=TIMEOUT,
            host=None, mode=None, encoding="latin-1"):
        """An ftplib.FTP connected to the proxy (or `host`:`port`), from address `source` when
        given, logged in when `user` is given (password None: the user's own). mode: a
        ModeFTP whose own transfers use that mode (PASV, EPSV, PORT, EPRT). Raises ftplib
        errors and OSError like ftplib does; every socket has `timeout`."""
        cls = ftplib.FTP if mode is None else ModeFTP
        f = cls(encoding=encoding, timeout=timeout,
                source_address=(source, 0) if source else None)
        if mode is not None:
            f.set_mode(mode)
        try:
            f.connect(host or (self.host if port is None else HOST), port or self.port,
                      timeout=timeout)
            if user is not None:
                f.login(self._name(user), user.password if password is None else password)
        except BaseException:
            close_ftp(f)
            raise
        return f

    def direct(self, backend, user=None, password=None, timeout=TIMEOUT, **kw):
        """ftplib straight to a backend's FTP server (no proxy); kw as for ftp()."""
        be = self.backends[backend]
        return self.ftp(user, password, port=be.ftp_port, timeout=timeout,
                        host=be.address, **kw)

    def raw(self, backend=None, user=None, timeout=TIMEOUT):
        """A RawControl to the proxy (or straight to `backend`), logged in when user is
        given (raises ftplib.error_perm when that fails)."""
        if backend is None:
            c = RawControl(self.host, self.port, timeout)
        else:
            be = self.backends[backend]
            c = RawControl(be.address, be.ftp_port, timeout)
        if user is not None:
            r = c.login(self._name(user), user.password)
            if not r.startswith(b"230"):
                c.close()
                raise ftplib.error_perm(r.decode("latin-1").strip())
        return c

    def url(self, path="", port=None):
        """ftp://127.0.0.1:<proxy port>/<path> (path relative to the login directory)."""
        return "ftp://%s:%d/%s" % (HOST, port or self.port, path)

    def client_env(self):
        return dict(os.environ, HOME=self.home, LC_ALL="C")

    def curl(self, user, args, password=None, timeout=60, binary=False):
        """Real `curl` with the user's credentials; args hold the URL(s) and options."""
        pw = user.password if password is None else password
        argv = ["curl", "-sS", "--connect-timeout", "10", "--max-time", str(max(5, timeout - 5)),
                "-u", "%s:%s" % (self._name(user), pw)] + list(args)
        return run_cmd(argv, env=self.client_env(), timeout=timeout, binary=binary)

    def lftp(self, user, script, password=None, passive=True, timeout=120, cwd=None,
             port=None, settings=(), host=None):
        """Real `lftp -c` logged in as user (at the proxy, or host:port); script: the commands
        after `open`. Retries and reconnects are capped so a failure ends quickly; returns a
        Result."""
        pw = user.password if password is None else password
        sets = ["set cmd:fail-exit yes", "set ftp:ssl-allow no",
                "set ftp:passive-mode %s" % ("on" if passive else "off"),
                "set net:timeout 10", "set net:max-retries 2",
                "set net:reconnect-interval-base 1", "set net:reconnect-interval-max 2",
                "set net:persist-retries 0", "set xfer:clobber on"] + list(settings)
        cmds = "; ".join(sets + ["open -u %s,%s -p %d %s" % (self._name(user), pw,
                                                               port or self.port,
                                                               host or HOST),
                                 script])
        return run_cmd(["lftp", "-c", cmds], env=self.client_env(), timeout=timeout, cwd=cwd)

    # ---- files on the backends -----------------------------------------------------------
    def put_data(self, backend, user, rel, data):
        """Write bytes into the user's home on a backend (owned by the user); returns path."""
        path = self.backend_path(backend, user, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        pw = pwd.getpwnam(self._name(user))
        d = path
        while d != self.backend_path(backend, user):
            os.chown(d, pw.pw_uid, pw.pw_gid)
            d = os.path.dirname(d)
        return path

    def put_random(self, backend, user, rel, size):
        """put_data of `size` random bytes; returns the bytes."""
        data = os.urandom(size)
        self.put_data(backend, user, rel, data)
        return data

    def get_data(self, backend, user, rel):
        """The bytes of a file in the user's home on a backend (None when absent)."""
        try:
            with open(self.backend_path(backend, user, rel), "rb") as f:
                return f.read()
        except OSError:
            return None


def close_ftp(f):
    """Close an ftplib connection without raising (QUIT is not sent)."""
    try:
        f.close()
    except OSError:
        pass
