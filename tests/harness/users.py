"""System test users for the dynproxy harness (stdlib only, run as root).

    u = create_user("dpt_ab12", keydir="/tmp/x/keys")   # random password when none given
    u.name, u.password, u.key (private key path), u.pubkey (one authorized_keys line)
    delete_user("dpt_ab12")

Every user gets home /srv/dynproxy/home/<name> (not created by useradd: each backend
bind-mounts its own directory over /srv/dynproxy/home, see backends.py), shell /bin/bash and
the GECOS tag "dynproxy-test" so delete_user never removes an account the harness did not make.
Both calls are idempotent.
"""

import grp
import os
import pwd
import secrets
import signal
import string
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dpenv import HarnessError, pid_alive, run, wait_until  # noqa: E402

HOME_ROOT = "/srv/dynproxy/home"
GECOS_TAG = "dynproxy-test"
_LOCK_RETRIES = 20   # useradd/userdel exit 10 while another process holds /etc/passwd's lock


class User:
    """A created system user and its credentials."""

    def __init__(self, name, password, key, pubkey, uid, gid):
        self.name = name
        self.password = password
        self.key = key            # private key path (None when no keydir was given)
        self.pubkey = pubkey      # "ssh-ed25519 AAAA... comment" or None
        self.uid = uid
        self.gid = gid

    @property
    def home(self):
        return os.path.join(HOME_ROOT, self.name)

    def __repr__(self):
        return "User(%r, uid=%d)" % (self.name, self.uid)


def random_password(length=16):
    """Random letters and digits only: safe to pass around in shells and FTP commands."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(length))


def _getpw(name):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _retry_locked(cmd):
    for _ in range(_LOCK_RETRIES):
        r = run(cmd, check=False, timeout=30)
        if r.returncode != 10:
            return r
        time.sleep(0.1)
    return r


def is_harness_user(name):
    pw = _getpw(name)
    return pw is not None and pw.pw_gecos.split(",")[0] == GECOS_TAG


def set_password(name, password):
    r = run(["chpasswd"], check=False, input="%s:%s\n" % (name, password), timeout=30)
    if r.returncode != 0:
        raise HarnessError("chpasswd for %s failed: %s" % (name, r.stderr.strip()))


def make_keypair(path, comment):
    """ed25519 key pair at path / path.pub (kept when it exists); returns the public line."""
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.exists(path + ".pub"):
            os.unlink(path + ".pub")
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
            timeout=30)
    with open(path + ".pub") as f:
        return f.read().strip()


def create_user(name, password=None, keydir=None):
    """Create (or refresh) system user `name`; returns a User.

    password None: a random one. keydir: where <name>_ed25519{,.pub} is made (kept if present).
    An existing account is reused only when it carries the harness tag.
    """
    if password is None:
        password = random_password()
    pw = _getpw(name)
    if pw is None:
        try:   # a group left behind by a crashed run: reuse it instead of failing
            grp.getgrnam(name)
            group = ["-g", name]
        except KeyError:
            group = ["-U"]
        r = _retry_locked(["useradd", "-M"] + group + ["-d", os.path.join(HOME_ROOT, name),
                           "-s", "/bin/bash", "-c", GECOS_TAG, name])
        if r.returncode != 0 and _getpw(name) is None:
            raise HarnessError("useradd %s failed (exit %d): %s"
                               % (name, r.returncode, r.stderr.strip()))
        pw = _getpw(name)
    elif not is_harness_user(name):
        raise HarnessError("user %s exists and was not made by the dynproxy harness "
                           "(GECOS %r); refusing to touch it" % (name, pw.pw_gecos))
    set_password(name, password)
    # the mount point in the root namespace: stays empty, each backend shadows it
    home = os.path.join(HOME_ROOT, name)
    for d in (os.path.dirname(HOME_ROOT), HOME_ROOT):
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o755)   # o+x whatever the umask was when it was made
    os.makedirs(home, exist_ok=True)
    os.chown(home, pw.pw_uid, pw.pw_gid)
    key = pubkey = None
    if keydir is not None:
        key = os.path.join(os.path.abspath(keydir), name + "_ed25519")
        pubkey = make_keypair(key, "%s@dynproxy-test" % name)
    return User(name, password, key, pubkey, pw.pw_uid, pw.pw_gid)


def _user_pids(uid):
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.stat("/proc/" + d).st_uid == uid:
                pids.append(int(d))
        except OSError:
            pass
    return pids


def delete_user(name, force=False):
    """Remove the account (and its group) if present; kills its leftover processes by pid.

    Refuses accounts without the harness tag unless force. Removes only the empty mount-point
    directory in the root namespace, never backend homes.
    """
    pw = _getpw(name)
    if pw is None:
        _rmdir_mountpoint(name)
        return
    if not force and not is_harness_user(name):
        raise HarnessError("user %s was not made by the dynproxy harness; not deleting" % name)
    if pw.pw_uid != 0:
        pids = _user_pids(pw.pw_uid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: not any(pid_alive(p) for p in pids), 5)
    r = _retry_locked(["userdel", name])
    if r.returncode == 8:   # still "logged in" by a process that raced us
        r = _retry_locked(["userdel", "-f", name])
    if r.returncode != 0 and _getpw(name) is not None:
        raise HarnessError("userdel %s failed (exit %d): %s"
                           % (name, r.returncode, r.stderr.strip()))
    _rmdir_mountpoint(name)


def _rmdir_mountpoint(name):
    try:
        os.rmdir(os.path.join(HOME_ROOT, name))
    except OSError:
        pass


def list_harness_users():
    """Names of all accounts carrying the harness tag (for cleanup of crashed runs)."""
    return [p.pw_name for p in pwd.getpwall() if p.pw_gecos.split(",")[0] == GECOS_TAG]


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "delete":
        for n in sys.argv[2:]:
            delete_user(n)
    elif len(sys.argv) == 2 and sys.argv[1] == "list":
        print("\n".join(list_harness_users()))
    else:
        sys.stderr.write("usage: users.py list | delete NAME...\n")
        sys.exit(2)
