"""Shared helpers for the dynproxy test harness (stdlib only).

Free ports, bounded waits for a listening port, temp dirs, logging, file
hashes and log tails. Nothing here starts a server by itself.
"""

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

# The servers and users of a test (postgres, sshd and vsftpd sessions of the test users,
# nobody) read what the harness writes: files it makes must not depend on the caller's umask
# (077 would make every one of them root's alone).
os.umask(0o022)

HARNESS_DIR = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("DP_SOURCE_DIR") or os.path.dirname(os.path.dirname(HARNESS_DIR))
BUILD_DIR = os.environ.get("DP_BUILD_DIR") or os.path.join(SOURCE_DIR, "build")


class HarnessError(RuntimeError):
    """A server or tool of the harness failed; the message says which and why."""


def log(msg, *args):
    """One timestamped line on stderr (stdout stays for test results)."""
    if args:
        msg = msg % args
    sys.stderr.write("[%s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


# ports handed out by free_port()/free_port_range() in this process: never handed out twice,
# so two backends started back to back get different ports and passive ranges
_RESERVED = set()


def port_is_free(port, host="127.0.0.1"):
    """True when nothing listens on host:port and we may bind it.

    SO_REUSEADDR like the servers use, so TIME_WAIT leftovers of earlier runs do not count.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port(host="127.0.0.1"):
    """A port free right now and not yet handed out by this process (racy across processes)."""
    for _ in range(100):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((host, 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port not in _RESERVED:
            _RESERVED.add(port)
            return port
    raise HarnessError("no free port found")


def free_port_range(count, lo=30000, hi=60000, host="127.0.0.1"):
    """First (lo_port, hi_port) of `count` consecutive free, unreserved ports within [lo, hi]."""
    start = lo
    while start + count - 1 <= hi:
        for p in range(start, start + count):
            if p in _RESERVED or not port_is_free(p, host):
                start = p + 1
                break
        else:
            _RESERVED.update(range(start, start + count))
            return (start, start + count - 1)
    raise HarnessError("no %d consecutive free ports in %d-%d" % (count, lo, hi))


def port_accepts(port, host="127.0.0.1", timeout=0.5):
    """True when a TCP connect to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(port, host="127.0.0.1", timeout=10.0, alive=None):
    """Wait until host:port accepts a connection.

    alive: optional callable; when it returns False (server died) stop waiting early.
    Returns True on success, False on timeout or death.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_accepts(port, host):
            return True
        if alive is not None and not alive():
            return False
        time.sleep(0.05)
    return False


def wait_until(pred, timeout=10.0, interval=0.05):
    """Poll pred() until it is truthy or timeout; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def tail(path, lines=30):
    """Last lines of a file as one string ('' when it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def read_text(path):
    """A whole (log) file as text, undecodable bytes replaced; "" when it cannot be read."""
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def sha256_file(path):
    """Hex sha256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def traversable(path):
    """True when every directory from / down to path lets other users through (o+x)."""
    path = os.path.abspath(path)
    while True:
        try:
            if not os.stat(path).st_mode & 0o001:
                return False
        except OSError:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def make_tempdir(prefix="dpt-"):
    """A fresh directory, traversable by other users: under $TMPDIR when every directory
    above it lets them through, else under /tmp (a TMPDIR inside root's 0700 home would lock
    postgres, nobody and the test users out of what the harness puts there)."""
    base = tempfile.gettempdir()
    d = tempfile.mkdtemp(prefix=prefix, dir=base if traversable(base) else "/tmp")
    os.chmod(d, 0o755)
    return d


_SHARED_BINS = {}


def shared_copy(path):
    """A copy of the executable `path` that any user may run, outside the clone (which may
    sit under a 0700 directory such as root's home): made once per process in its own
    0755 directory, removed at exit."""
    if path not in _SHARED_BINS:
        d = make_tempdir("dpt-bin-")
        import atexit
        atexit.register(shutil.rmtree, d, True)
        dst = os.path.join(d, os.path.basename(path))
        shutil.copy2(path, dst)
        os.chmod(dst, 0o755)
        _SHARED_BINS[path] = dst
    return _SHARED_BINS[path]


def rmtree(path):
    """Remove a directory tree, ignoring absence."""
    shutil.rmtree(path, ignore_errors=True)


def run(cmd, check=True, timeout=60, **kw):
    """subprocess.run with text I/O, captured output and a timeout; raises HarnessError."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("text", True)
    try:
        r = subprocess.run(cmd, timeout=timeout, check=False, **kw)
    except subprocess.TimeoutExpired as e:
        raise HarnessError("%s: timed out after %ss" % (" ".join(cmd), timeout)) from e
    except OSError as e:
        raise HarnessError("%s: %s" % (cmd[0], e)) from e
    if check and r.returncode != 0:
        raise HarnessError("%s: exit %d\n%s%s" % (" ".join(cmd), r.returncode,
                                                 r.stdout or "", r.stderr or ""))
    return r


def proc_stat(pid):
    """The fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
    except OSError:
        return None
    return st[st.rfind(")") + 2:].split()


def pid_alive(pid):
    """True when pid exists and is not a zombie."""
    st = proc_stat(pid)
    return st is not None and st[0] != "Z"


def kill_wait(pid, timeout=5.0):
    """SIGTERM pid, wait up to timeout, then SIGKILL. Reaps it if it is our child."""
    def reap():
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return not pid_alive(pid)

    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            reap()
            return
        if wait_until(reap, wait):
            return


# ---- real OpenSSH client helpers -------------------------------------------------------------
_ASKPASS = None


def askpass_script():
    """Path of a tiny SSH_ASKPASS program printing $DP_ASKPASS_PASSWORD (removed at exit)."""
    global _ASKPASS
    if _ASKPASS is None:
        import atexit
        d = tempfile.mkdtemp(prefix="dp-askpass-")
        path = os.path.join(d, "askpass")
        with open(path, "w") as f:
            f.write('#!/bin/sh\nprintf \'%s\\n\' "$DP_ASKPASS_PASSWORD"\n')
        os.chmod(path, 0o700)
        atexit.register(shutil.rmtree, d, True)
        _ASKPASS = path
    return _ASKPASS


def ssh_base_opts(known_hosts=None):
    """Options making `ssh` ignore ~/.ssh/config, agents and the caller's known_hosts."""
    opts = ["-F", "/dev/null",
            "-o", "IdentityAgent=none",
            "-o", "ConnectTimeout=10",
            "-o", "ServerAliveInterval=10",
            "-o", "LogLevel=ERROR"]
    if known_hosts:
        opts += ["-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + known_hosts,
                 "-o", "GlobalKnownHostsFile=/dev/null"]
    else:
        opts += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "GlobalKnownHostsFile=/dev/null"]
    return opts


def ssh_cmd(port, user, command=None, key=None, password=None, host="127.0.0.1",
            known_hosts=None, extra=()):
    """(argv, env) for a real `ssh` login with a key or a password (askpass, no tty)."""
    argv = ["ssh"] + ssh_base_opts(known_hosts) + ["-p", str(port)]
    env = dict(os.environ)
    if key:
        argv += ["-i", key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                 "-o", "PreferredAuthentications=publickey"]
    elif password is not None:
        argv += ["-o", "PubkeyAuthentication=no", "-o", "NumberOfPasswordPrompts=1",
                 "-o", "PreferredAuthentications=password,keyboard-interactive"]
        env.update(SSH_ASKPASS=askpass_script(), SSH_ASKPASS_REQUIRE="force",
                   DP_ASKPASS_PASSWORD=password, DISPLAY=env.get("DISPLAY", ":0"))
    argv += list(extra) + ["%s@%s" % (user, host)]
    if command is not None:
        argv.append(command)
    return argv, env


def ssh_run(port, user, command, key=None, password=None, host="127.0.0.1", timeout=30,
            known_hosts=None, extra=(), input=None):
    """Run `command` over a real ssh login; returns CompletedProcess (text, captured)."""
    argv, env = ssh_cmd(port, user, command, key, password, host, known_hosts, extra)
    try:
        return subprocess.run(argv, env=env, input=input if input is not None else "",
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=timeout, start_new_session=True, check=False)
    except subprocess.TimeoutExpired as e:
        raise HarnessError("ssh to %s:%s as %s timed out after %ss" % (host, port, user, timeout)) from e


def ssh_keyscan_sha256(port, host="127.0.0.1", keytype="ed25519", timeout=10):
    """"SHA256:..." of the host key a server presents, via ssh-keyscan + ssh-keygen -lf."""
    r = run(["ssh-keyscan", "-T", str(timeout), "-t", keytype, "-p", str(port), host],
            timeout=timeout + 5)
    lines = [ln for ln in r.stdout.splitlines() if ln and not ln.startswith("#")]
    if not lines:
        raise HarnessError("ssh-keyscan %s:%s returned no %s key: %s"
                           % (host, port, keytype, r.stderr.strip()))
    out = run(["ssh-keygen", "-lf", "-"], input=lines[0] + "\n", timeout=10).stdout
    return out.split()[1]
