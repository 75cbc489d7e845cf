"""Backend "servers" for dynproxy tests: one OpenSSH sshd + one vsftpd per backend.

    be = Backend("web1", "/tmp/x/web1")        # ports None: free 127.0.0.1 ports
    be.start()
    be.ensure_user(user, authorized_keys=[user.pubkey])
    be.ssh_port, be.ftp_port, be.pasv_range, be.ssh_hostkey_sha256, be.home_dir
    be.stop()

Each backend lives in its own mount namespace (unshare --mount --propagation private) where
<basedir>/home is bind-mounted over /srv/dynproxy/home, so one system user has a different
home on every backend, like on separate machines. A holder process (`sleep infinity`) keeps the
namespace; sshd and vsftpd enter it with nsenter. They run in their own sessions (setsid), so
they outlive the Python process that started them (the demo relies on that); everything needed
to stop them later is in <basedir>/state.json. stop() kills every process inside the namespace
(found by its /proc/PID/ns/mnt id), so per-connection children and user sessions go too.

PyFtpdBackend is the other kind: FTP only, pyftpdlib (tests/harness/pyftpd_server.py under
/usr/bin/python3) on a loopback address, for what vsftpd does not implement (RFC 3659 MLST and
MLSD). Both kinds have name, address, ftp_port, pasv_range, home_dir, ensure_user(user),
start(), stop() and route_row() (their dynproxy.backends row).
"""

import json
import os
import pwd
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dpenv import (HarnessError, free_port, free_port_range, kill_wait, pid_alive,  # noqa: E402
                   port_accepts, port_is_free, proc_stat, run, tail, wait_port, wait_until)

HOME_MOUNT = "/srv/dynproxy/home"
START_TIMEOUT = 10.0


# Users whose name starts with this get sshd's DEBUG1 log on every backend.
DEBUG_USER_PREFIX = "dpt_dbg"


def _mntns(pid):
    try:
        return os.readlink("/proc/%d/ns/mnt" % pid)
    except OSError:
        return None


def _pids_where(pred):
    """The pids of the running processes for which pred(pid) holds."""
    return [int(d) for d in os.listdir("/proc") if d.isdigit() and pred(int(d))]


def _pids_in_ns(ns):
    return _pids_where(lambda pid: _mntns(pid) == ns)


def _home_with_marker(home_dir, name, backend, pw):
    """<home_dir>/<name> with a BACKEND file naming `backend`, both owned by `pw` (a passwd
    entry) when given. Returns the home directory."""
    home = os.path.join(home_dir, name)
    os.makedirs(home, exist_ok=True)
    os.chmod(home, 0o755)
    marker = os.path.join(home, "BACKEND")
    with open(marker, "w") as f:
        f.write(backend + "\n")
    if pw is not None:
        os.chown(home, pw.pw_uid, pw.pw_gid)
        os.chown(marker, pw.pw_uid, pw.pw_gid)
    return home


class Backend:
    """One backend: sshd + vsftpd in a private mount namespace under basedir."""

    kind = "vsftpd"
    address = "127.0.0.1"    # where sshd and vsftpd listen (the route's address)

    def __init__(self, name, basedir, ssh_port=None, ftp_port=None, pasv_range=None,
                 proxy_authorized_keys=None, logdir=None, sshd_options=()):
        """sshd_options: more global sshd_config lines (sshd 9.2 applies some, RekeyLimit
        among them, only globally, not in a Match block)."""
        self.name = name
        self.sshd_options = list(sshd_options)
        self.basedir = os.path.abspath(basedir)
        self.home_dir = os.path.join(self.basedir, "home")
        self.logdir = os.path.abspath(logdir) if logdir else self.basedir
        self.proxy_authorized_keys = os.path.abspath(
            proxy_authorized_keys or os.path.join(self.basedir, "..", "proxy_authorized_keys"))
        self._statefile = os.path.join(self.basedir, "state.json")
        st = self._load_state()
        self.ssh_port = ssh_port or st.get("ssh_port")
        self.ftp_port = ftp_port or st.get("ftp_port")
        pr = pasv_range or st.get("pasv_range")
        self.pasv_range = tuple(pr) if pr else None
        self.sshd_log = os.path.join(self.logdir, "%s-sshd.log" % name)
        self.vsftpd_log = os.path.join(self.logdir, "%s-vsftpd.log" % name)
        self.xferlog = os.path.join(self.logdir, "%s-xferlog" % name)
        self.vsftpd_out = os.path.join(self.logdir, "%s-vsftpd.out" % name)
        self.sshd_config = os.path.join(self.basedir, "sshd_config")
        self.vsftpd_conf = os.path.join(self.basedir, "vsftpd.conf")
        self._procs = []

    # ---- state -------------------------------------------------------------------------
    def _load_state(self):
        try:
            with open(self._statefile) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _save_state(self, **kw):
        st = self._load_state()
        st.update(kw)
        tmp = self._statefile + ".tmp"
        with open(tmp, "w") as f:
            json.dump(st, f, indent=1)
        os.replace(tmp, self._statefile)

    def _hostkey(self, kind):
        return os.path.join(self.basedir, "ssh_host_%s_key" % kind)

    @property
    def ssh_hostkey_sha256(self):
        """"SHA256:..." of the ed25519 host key (what a pin in dynproxy.backends holds)."""
        out = run(["ssh-keygen", "-lf", self._hostkey("ed25519") + ".pub"], timeout=10).stdout
        return out.split()[1]

    @property
    def ssh_hostkey_pub(self):
        with open(self._hostkey("ed25519") + ".pub") as f:
            return f.read().strip()

    def pids(self):
        """{'holder': pid, 'sshd': pid, 'vsftpd': pid} of the recorded, still alive processes."""
        st = self._load_state()
        ns = st.get("mntns")
        out = {}
        for k in ("holder", "sshd", "vsftpd"):
            pid = st.get(k)
            if pid and pid_alive(pid) and ns and _mntns(pid) == ns:
                out[k] = pid
        return out

    def is_running(self):
        p = self.pids()
        return (len(p) == 3 and port_accepts(self.ssh_port) and port_accepts(self.ftp_port))

    def route_row(self):
        """{column: value} of this backend's row in dynproxy.backends."""
        return {"name": self.name, "address": self.address, "ssh_port": self.ssh_port,
                "ftp_port": self.ftp_port, "hostkey_sha256": self.ssh_hostkey_sha256}

    # ---- setup -------------------------------------------------------------------------
    def _prepare(self):
        for d in (self.basedir, self.home_dir, self.logdir):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)   # users must traverse to their home and proxy_authorized_keys
        # every directory down to the users' homes: o+x whatever the umask was when it was made
        for d in (os.path.dirname(HOME_MOUNT), HOME_MOUNT, "/run/sshd"):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)
        empty = os.path.join(self.basedir, "empty")
        os.makedirs(empty, exist_ok=True)
        os.chmod(empty, 0o755)
        if os.listdir(empty):
            raise HarnessError("%s must be empty (vsftpd secure_chroot_dir)" % empty)
        if not os.path.exists(self.proxy_authorized_keys):
            os.makedirs(os.path.dirname(self.proxy_authorized_keys), exist_ok=True)
            open(self.proxy_authorized_keys, "a").close()
        os.chmod(self.proxy_authorized_keys, 0o644)
        for kind, extra in (("ed25519", []), ("ecdsa", ["-b", "256"]), ("rsa", ["-b", "2048"])):
            key = self._hostkey(kind)
            if not os.path.exists(key):
                run(["ssh-keygen", "-q", "-t", kind] + extra +
                    ["-N", "", "-C", "%s-hostkey" % self.name, "-f", key], timeout=60)
        if self.ssh_port is None:
            self.ssh_port = free_port()
        if self.ftp_port is None:
            self.ftp_port = free_port()
        if self.pasv_range is None:
            self.pasv_range = free_port_range(50)
        self._save_state(name=self.name, ssh_port=self.ssh_port, ftp_port=self.ftp_port,
                         pasv_range=list(self.pasv_range))
        self._write_sshd_config()
        self._write_vsftpd_conf()

    def _write_sshd_config(self):
        lines = [
            "# generated by tests/harness/backends.py for backend %s" % self.name,
            "ListenAddress 127.0.0.1",
            "Port %d" % self.ssh_port,
            "HostKey %s" % self._hostkey("ed25519"),
            "HostKey %s" % self._hostkey("ecdsa"),
            "HostKey %s" % self._hostkey("rsa"),
            "PidFile %s" % os.path.join(self.basedir, "sshd.pid"),
            "UsePAM yes",
            "PasswordAuthentication yes",
            "KbdInteractiveAuthentication yes",
            "PubkeyAuthentication yes",
            "PermitRootLogin no",
            "AuthorizedKeysFile %s .ssh/authorized_keys" % self.proxy_authorized_keys,
            "SetEnv DYNPROXY_BACKEND=%s" % self.name,
            "AcceptEnv LANG LC_* DP_*",
            "AllowAgentForwarding yes",
            "AllowTcpForwarding yes",
            "X11Forwarding no",
            "PrintMotd no",
            "Subsystem sftp internal-sftp",
            "StrictModes no",
            "MaxStartups 1000:30:2000",
            "MaxSessions 100",
            "MaxAuthTries 10",
            "LoginGraceTime 30",
            "LogLevel VERBOSE",
        ] + self.sshd_options + [
            # sshd logs each channel request it handles only at DEBUG1; users made with
            # ProxyEnv.add_user(debug_log=True) get it (e2e.sshproxy checks break with it).
            "Match User %s*" % DEBUG_USER_PREFIX,
            "    LogLevel DEBUG1",
        ]
        with open(self.sshd_config, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _write_vsftpd_conf(self):
        lo, hi = self.pasv_range
        opts = [
            ("listen", "YES"), ("listen_ipv6", "NO"), ("listen_address", "127.0.0.1"),
            ("listen_port", self.ftp_port), ("background", "NO"),
            ("anonymous_enable", "NO"), ("local_enable", "YES"), ("write_enable", "YES"),
            ("local_umask", "022"),
            ("pasv_enable", "YES"), ("pasv_min_port", lo), ("pasv_max_port", hi),
            ("pasv_address", "127.0.0.1"), ("port_enable", "YES"),
            ("connect_from_port_20", "NO"),
            ("ftpd_banner", "%s FTP ready" % self.name),
            ("seccomp_sandbox", "NO"), ("isolate", "NO"), ("isolate_network", "NO"),
            ("max_clients", 2000), ("max_per_ip", 2000),
            ("xferlog_enable", "YES"), ("xferlog_file", self.xferlog),
            ("vsftpd_log_file", self.vsftpd_log), ("dual_log_enable", "YES"),
            ("log_ftp_protocol", "YES"),
            ("pam_service_name", "vsftpd"),
            ("secure_chroot_dir", os.path.join(self.basedir, "empty")),
            ("use_localtime", "YES"),
        ]
        with open(self.vsftpd_conf, "w") as f:
            f.write("# generated by tests/harness/backends.py for backend %s\n" % self.name)
            for k, v in opts:
                f.write("%s=%s\n" % (k, v))
        os.chmod(self.vsftpd_conf, 0o600)

    def ensure_user(self, user, authorized_keys=None):
        """Give `user` (a users.User or a name) a home on this backend with a BACKEND file.

        authorized_keys: optional list of public key lines written to ~/.ssh/authorized_keys.
        Returns the home directory path as seen from the root namespace.
        """
        name = user if isinstance(user, str) else user.name
        pw = pwd.getpwnam(name)
        home = _home_with_marker(self.home_dir, name, self.name, pw)
        if authorized_keys is not None:
            sshdir = os.path.join(home, ".ssh")
            os.makedirs(sshdir, exist_ok=True)
            os.chown(sshdir, pw.pw_uid, pw.pw_gid)
            os.chmod(sshdir, 0o700)
            ak = os.path.join(sshdir, "authorized_keys")
            with open(ak, "w") as f:
                for k in authorized_keys:
                    f.write(k.strip() + "\n")
            os.chown(ak, pw.pw_uid, pw.pw_gid)
            os.chmod(ak, 0o600)
        return home

    # ---- lifecycle ---------------------------------------------------------------------
    def _spawn(self, cmd, logpath):
        with open(logpath, "ab") as out:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 start_new_session=True, close_fds=True, cwd="/")
        self._procs.append(p)
        return p.pid

    def _fail(self, what, logs):
        msg = ["backend %s: %s" % (self.name, what)]
        for lp in logs:
            msg.append("--- %s (tail) ---\n%s" % (lp, tail(lp, 20)))
        self.stop()
        raise HarnessError("\n".join(msg))

    def start(self):
        """Start (or repair) the backend. No-op when everything already runs. Returns self."""
        if self.ssh_port and self.ftp_port and self.is_running():
            return self
        self.stop()   # half-up: clean leftovers before starting afresh
        self._prepare()
        for what, port in (("ssh", self.ssh_port), ("ftp", self.ftp_port)):
            if not port_is_free(port):
                raise HarnessError("backend %s: %s port 127.0.0.1:%d is already in use"
                                   % (self.name, what, port))
        holder_log = os.path.join(self.logdir, "%s-holder.log" % self.name)
        script = 'set -e; mount --bind "$1" "$2"; exec sleep infinity'
        holder = self._spawn(["unshare", "--mount", "--propagation", "private", "--",
                              "/bin/sh", "-c", script, "dp-backend-" + self.name,
                              self.home_dir, HOME_MOUNT], holder_log)
        rootns = _mntns(os.getpid())

        def ns_ready():
            ns = _mntns(holder)
            if ns is None or ns == rootns:
                return False
            try:
                with open("/proc/%d/mountinfo" % holder) as f:
                    return any(ln.split()[4] == HOME_MOUNT for ln in f)
            except OSError:
                return False

        if not wait_until(ns_ready, START_TIMEOUT):
            self._save_state(holder=holder, mntns=_mntns(holder))
            self._fail("mount namespace holder did not come up", [holder_log])
        ns = _mntns(holder)
        self._save_state(holder=holder, mntns=ns)
        enter = ["nsenter", "--mount=/proc/%d/ns/mnt" % holder, "--"]
        sshd = self._spawn(enter + ["/usr/sbin/sshd", "-D", "-e", "-f", self.sshd_config],
                           self.sshd_log)
        vsftpd = self._spawn(enter + ["/usr/sbin/vsftpd", self.vsftpd_conf], self.vsftpd_out)
        self._save_state(sshd=sshd, vsftpd=vsftpd)
        if not wait_port(self.ssh_port, timeout=START_TIMEOUT, alive=lambda: pid_alive(sshd)):
            self._fail("sshd did not accept on 127.0.0.1:%d within %ss"
                       % (self.ssh_port, START_TIMEOUT), [self.sshd_log])
        if not wait_port(self.ftp_port, timeout=START_TIMEOUT, alive=lambda: pid_alive(vsftpd)):
            self._fail("vsftpd did not accept on 127.0.0.1:%d within %ss"
                       % (self.ftp_port, START_TIMEOUT), [self.vsftpd_out, self.vsftpd_log])
        return self

    def stop(self):
        """Kill every process of this backend (holder, daemons, sessions). Idempotent."""
        st = self._load_state()
        ns = st.get("mntns")
        holder = st.get("holder")
        if ns and ns != _mntns(os.getpid()):
            # daemons first (so they stop accepting), then whatever else lives in the namespace
            order = [st.get("sshd"), st.get("vsftpd")]
            for pid in order:
                if pid and _mntns(pid) == ns:
                    kill_wait(pid, 3.0)
            for _ in range(3):
                left = _pids_in_ns(ns)
                if not left:
                    break
                for pid in left:
                    if pid != holder:
                        kill_wait(pid, 2.0)
                if holder in left:
                    kill_wait(holder, 2.0)
            left = _pids_in_ns(ns)
            if left:
                raise HarnessError("backend %s: processes survive stop: %s" % (self.name, left))
        for p in self._procs:    # reap our children
            try:
                p.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        self._procs = []
        if os.path.exists(self._statefile):
            self._save_state(holder=None, sshd=None, vsftpd=None, mntns=None)
        wait_until(lambda: (not self.ssh_port or port_is_free(self.ssh_port)) and
                   (not self.ftp_port or port_is_free(self.ftp_port)), 5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ---- pyftpdlib: an FTP-only backend with RFC 3659 MLST/MLSD --------------------------------------
PYTHON = "/usr/bin/python3"    # Debian's python3: python3-pyftpdlib is installed for it only
PYFTPD_SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyftpd_server.py")
PYFTPD_PASV_PORTS = 20
PYFTPD_STOP_TIMEOUT = 5.0
PYFTPD_FULL_PERM = "elradfmwMT"


def pyftpdlib_missing():
    """None when /usr/bin/python3 can import pyftpdlib, else a one-line reason."""
    try:
        r = subprocess.run([PYTHON, "-c", "import pyftpdlib.servers"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "%s: %s" % (PYTHON, e)
    if r.returncode != 0:
        return ("%s cannot import pyftpdlib (apt-get install python3-pyftpdlib): %s"
                % (PYTHON, r.stdout.strip().splitlines()[-1:]))
    return None


def _session_of(pid):
    st = proc_stat(pid)
    return int(st[3]) if st is not None else None


def _pids_in_session(sid):
    return _pids_where(lambda pid: _session_of(pid) == sid)


class PyFtpdBackend:
    """An FTP-only backend: pyftpdlib (RFC 3659 MLST, MLSD and OPTS MLST, which vsftpd does
    not implement), one process running tests/harness/pyftpd_server.py under /usr/bin/python3
    on a loopback address, serving <basedir>/home/<user> to the users given to ensure_user
    with their passwords (pyftpdlib's DummyAuthorizer; a wrong password is a 530).

        be = PyFtpdBackend("py1", "/tmp/x/py1", address="127.0.0.4").start()
        be.ensure_user(user)      # a users.User (its .password), or a name and password=...
        be.address, be.ftp_port, be.pasv_range, be.home_dir, be.pid, be.log
        rc = be.stop()            # SIGTERM; 0 when pyftpdlib shut down cleanly

    start() returns once the server listens, or raises HarnessError after START_TIMEOUT with
    the tail of its log. The kernel picks the control port and the server reports it in a
    ready file, so there is no race for a free port with other tests. The process runs in its
    own session (like the vsftpd backends); stop() SIGTERMs it, SIGKILLs it after
    PYFTPD_STOP_TIMEOUT, and raises when anything of its session survives. Should the harness
    die first, the server notices its parent is gone and exits by itself.
    Files: <basedir>/pyftpd.json (config), users.json, ready.json; <logdir>/<name>-pyftpd.log
    (every command and reply at log_level "debug").
    """

    kind = "pyftpdlib"
    ssh_port = None            # FTP only

    def __init__(self, name, basedir, address="127.0.0.1", pasv_range=None, logdir=None,
                 log_level="debug"):
        self.name = name
        self.basedir = os.path.abspath(basedir)
        self.home_dir = os.path.join(self.basedir, "home")
        self.logdir = os.path.abspath(logdir) if logdir else self.basedir
        self.address = address
        self.pasv_range = tuple(pasv_range) if pasv_range else None
        self.log_level = log_level
        self.ftp_port = None
        self.log = os.path.join(self.logdir, "%s-pyftpd.log" % name)
        self.conf_path = os.path.join(self.basedir, "pyftpd.json")
        self.users_file = os.path.join(self.basedir, "users.json")
        self.ready_file = os.path.join(self.basedir, "ready.json")
        self.proc = None
        self.exit_status = None
        self._users = {}

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def is_running(self):
        return (self.pid is not None and self.ftp_port is not None
                and port_accepts(self.ftp_port, self.address))

    def route_row(self):
        """{column: value} of this backend's row in dynproxy.backends (ssh_port: the
        schema's default, hostkey_sha256 NULL: there is no sshd)."""
        return {"name": self.name, "address": self.address, "ftp_port": self.ftp_port}

    def _write_json(self, path, obj):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)    # a new inode: the server's authorizer sees the change

    def ensure_user(self, user, password=None, authorized_keys=None):
        """Give `user` a home with a BACKEND file and a login with its password (password
        overrides user.password; a plain name needs one). authorized_keys is ignored (no
        sshd). Returns the home directory. Works before and after start()."""
        name = user if isinstance(user, str) else user.name
        if password is None:
            password = getattr(user, "password", None)
        if password is None:
            raise HarnessError("backend %s: no password for %s" % (self.name, name))
        try:      # the files belong to the system user when there is one, as on vsftpd
            pw = pwd.getpwnam(name)
        except KeyError:
            pw = None
        home = _home_with_marker(self.home_dir, name, self.name, pw)
        self._users[name] = {"password": password, "home": home, "perm": PYFTPD_FULL_PERM}
        self._write_json(self.users_file, self._users)
        return home

    def _ready(self):
        try:
            with open(self.ready_file) as f:
                st = json.load(f)
        except (OSError, ValueError):
            return None
        return st if self.proc is not None and st.get("pid") == self.proc.pid else None

    def _fail(self, what):
        msg = "backend %s (pyftpdlib): %s\n--- %s (tail) ---\n%s" % (self.name, what, self.log,
                                                                    tail(self.log, 20))
        self.stop()
        raise HarnessError(msg)

    def start(self):
        """Start the server (no-op when it runs). Returns self."""
        if self.is_running():
            return self
        self.stop()
        for d in (self.basedir, self.home_dir, self.logdir):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)
        if self.pasv_range is None:
            self.pasv_range = free_port_range(PYFTPD_PASV_PORTS, host=self.address)
        self._write_json(self.users_file, self._users)
        if os.path.exists(self.ready_file):
            os.unlink(self.ready_file)
        self._write_json(self.conf_path, {
            "name": self.name, "address": self.address, "port": 0,
            "passive_ports": list(self.pasv_range), "masquerade_address": self.address,
            "users_file": self.users_file, "ready_file": self.ready_file,
            "log_level": self.log_level, "parent_pid": os.getpid()})
        self.exit_status = None
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([PYTHON, PYFTPD_SERVER, self.conf_path],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         start_new_session=True, close_fds=True, cwd="/")
        st = wait_until(lambda: self._ready() or self.proc.poll() is not None, START_TIMEOUT)
        if not isinstance(st, dict):
            self._fail("not listening within %ss (exit status %s)"
                       % (START_TIMEOUT, self.proc.poll()))
        self.ftp_port = st["port"]
        if not wait_port(self.ftp_port, self.address, timeout=START_TIMEOUT,
                         alive=lambda: self.pid is not None):
            self._fail("does not accept on %s:%d" % (self.address, self.ftp_port))
        return self

    def stop(self):
        """SIGTERM the server, wait, SIGKILL after PYFTPD_STOP_TIMEOUT; then make sure nothing
        of its session is left. Returns its exit status (None if it never ran). Idempotent."""
        p = self.proc
        if p is None:
            return self.exit_status
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(PYFTPD_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)
        self.exit_status = p.returncode
        self.proc = None
        left = _pids_in_session(p.pid)
        for pid in left:
            kill_wait(pid, 2.0)
        left = [pid for pid in left if pid_alive(pid)]
        if left:
            raise HarnessError("backend %s (pyftpdlib): processes survive stop: %s"
                               % (self.name, left))
        if self.ftp_port:
            wait_until(lambda: port_is_free(self.ftp_port, self.address), 5)
        return self.exit_status

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
