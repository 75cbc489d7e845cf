"""The world of the sshproxy end-to-end tests, as one context manager.

    with SshProxyEnv(nusers=3) as env:
        r = env.ssh(env.users[0], "echo $DYNPROXY_BACKEND", key=True)      # through the proxy
        r.rc, r.out, r.err, r.secs, r.timed_out
        env.move(env.users[0], "web2")
        env.set_maintenance("web2", "back at 14:00")

What it builds (proxy_env.ProxyEnv: PostgreSQL, backends web1/web2, users, the daemon), plus
for SSH:
  - backends that accept the proxy's key pair (keys/proxy_ed25519) for every user;
  - an ed25519 key per user, in their ~/.ssh/authorized_keys on both backends and in
    dynproxy.authorized_keys; one more key pair (keys/unlisted_ed25519) that is nobody's;
  - backends rows with the ed25519 host key pins;
  - the proxy's host keys (ed25519, ecdsa, rsa), a known_hosts file holding them, the
    sshproxy config of /tmp/dp-briefs/sshproxy-contract.md with the pgsql hook, and
    build/sshproxy/sshproxy running under daemon.Daemon.

Every client call is time-bound and returns a Result instead of raising on a timeout, so a
hanging proxy becomes a failed check, never a stuck suite.

Self-check of the client side of the tests: DP_SSHPROXY_SELFTEST=web1 points every "proxy"
call at web1's sshd instead of starting the proxy (routing checks then fail by design; exec,
pty, transfers, git, multiplexing and forwarding must pass, which proves the tests
themselves are right).
"""

import base64
import os
import secrets
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dpenv  # noqa: E402
from pg import sql_literal  # noqa: E402
from proxy_env import BUILD, ProxyEnv, kill_group, run_cmd  # noqa: E402,F401 (kill_group: for bench/ssh_bench.py)
from users import make_keypair  # noqa: E402

SSHPROXY = os.path.join(BUILD, "sshproxy", "sshproxy")

DEFAULT_SSH_CONF = {
    "login_grace_ms": 120000,
    "max_auth_tries": 6,
    "max_startups": 1000,
    "max_startups_per_ip": 100,
    "connect_timeout_ms": 30000,
    "backend_handshake_timeout_ms": 60000,
    "idle_timeout_s": 0,
    "channel_buffer": 2097152,
}


def proxy_missing():
    """None when build/sshproxy/sshproxy exists, else a one-line reason."""
    return SshProxyEnv.missing()


class SshProxyEnv(ProxyEnv):
    NAME = "sshproxy"
    BINARY = SSHPROXY
    SELFTEST_VAR = "DP_SSHPROXY_SELFTEST"
    CONF_SECTION = "ssh"
    PORT_COLUMN = "ssh_port"
    DEFAULT_CONF = DEFAULT_SSH_CONF
    PREFIX = "dpt-sshp-"

    def __init__(self, nusers=3, ssh_conf=None, backend_sshd=None, **kw):
        """backend_sshd: {backend name: [more global sshd_config lines]}."""
        super().__init__(nusers, ssh_conf, **kw)
        self.backend_sshd = backend_sshd or {}

    @property
    def ssh_conf(self):
        """The ssh section (the same dict as self.conf; edit it, then restart_proxy())."""
        return self.conf

    # ---- setup hooks ---------------------------------------------------------------------
    def _prepare(self):
        self.keydir = os.path.join(self.tmp, "keys")
        os.makedirs(self.keydir)
        self.proxy_key = os.path.join(self.keydir, "proxy_ed25519")
        self.proxy_authorized_keys = os.path.join(self.tmp, "proxy_authorized_keys")
        with open(self.proxy_authorized_keys, "w") as f:
            f.write(make_keypair(self.proxy_key, "dynproxy-test-proxy") + "\n")
        self.unlisted_key = os.path.join(self.keydir, "unlisted_ed25519")
        self.unlisted_pub = make_keypair(self.unlisted_key, "nobody@dynproxy-test")

        hk = os.path.join(self.tmp, "hostkeys")
        os.makedirs(hk)
        self.host_keys = []
        for kind, extra in (("ed25519", []), ("ecdsa", ["-b", "256"]), ("rsa", ["-b", "3072"])):
            path = os.path.join(hk, "ssh_host_%s_key" % kind)
            dpenv.run(["ssh-keygen", "-q", "-t", kind] + extra +
                      ["-N", "", "-C", "sshproxy-test-%s" % kind, "-f", path], timeout=60)
            self.host_keys.append(path)
        self.host_pubs = {}
        for path in self.host_keys:
            with open(path + ".pub") as f:
                typ, blob = f.read().split()[:2]
            self.host_pubs[typ] = blob

    def _backend_kwargs(self, name):
        return {"proxy_authorized_keys": self.proxy_authorized_keys,
                "sshd_options": self.backend_sshd.get(name, ())}

    def _add_user(self, user):
        for be in self.backends.values():
            be.ensure_user(user, authorized_keys=[user.pubkey])

    def _extra_sql(self):
        return ["INSERT INTO dynproxy.authorized_keys (username, key) VALUES (%s, %s);"
                % (sql_literal(u.name), sql_literal(u.pubkey)) for u in self.users]

    def _section_conf(self):
        ssh = dict(self.conf)
        ssh["host_keys"] = self.host_keys
        ssh["proxy_key"] = self.proxy_key
        return ssh

    def _after_start(self):
        self.known_hosts = os.path.join(self.tmp, "known_hosts")
        if self.selftest:
            be = self.backends[self.selftest]
            pubs = []
            for kind in ("ed25519", "ecdsa", "rsa"):
                with open(be._hostkey(kind) + ".pub") as f:
                    pubs.append(f.read().split()[:2])
        else:
            pubs = list(self.host_pubs.items())
        with open(self.known_hosts, "w") as f:
            for typ, blob in pubs:
                f.write("[127.0.0.1]:%d %s %s\n" % (self.port, typ, blob))

    # ---- clients -------------------------------------------------------------------------
    def base_opts(self, loglevel="ERROR", strict=True):
        """ssh_base_opts with our proxy known_hosts; LogLevel replaced (first -o wins)."""
        opts = dpenv.ssh_base_opts(self.known_hosts if strict else None)
        return ["LogLevel=" + loglevel if o == "LogLevel=ERROR" else o for o in opts]

    def key_opts(self, key):
        return ["-i", key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "PreferredAuthentications=publickey"]

    def ssh_argv(self, user, command=None, key=None, password=None, extra=(), port=None,
                 loglevel="ERROR", strict=True):
        """(argv, env) of a real `ssh` to the proxy (or `port`).

        key=True means the user's own key; password=True the user's own password.
        """
        if key is True:
            key = user.key
        if password is True:
            password = user.password
        if key is None and password is None:
            raise ValueError("ssh_argv needs key= or password=")
        argv, env = dpenv.ssh_cmd(port or self.port, self._name(user), command, key=key,
                                  password=password, extra=extra,
                                  known_hosts=self.known_hosts if strict and not port else None)
        if loglevel != "ERROR":
            argv = ["LogLevel=" + loglevel if a == "LogLevel=ERROR" else a for a in argv]
        return argv, env

    def ssh(self, user, command, key=None, password=None, extra=(), timeout=60, input=None,
            binary=False, env=None, loglevel="ERROR", port=None):
        """`ssh user@proxy command`; returns a Result. env: extra environment for ssh."""
        argv, e = self.ssh_argv(user, command, key, password, extra, port, loglevel)
        if env:
            e.update(env)
        return run_cmd(argv, env=e, input=input, timeout=timeout, binary=binary)

    def direct(self, backend, user, command, timeout=60, input=None, binary=False, extra=(),
               loglevel="ERROR"):
        """`ssh` straight to a backend's sshd with the user's key (no proxy)."""
        be = self.backends[backend] if isinstance(backend, str) else backend
        return self.ssh(user, command, key=user.key, extra=extra, timeout=timeout, input=input,
                        binary=binary, loglevel=loglevel, port=be.ssh_port)

    def ssh_command_string(self, user, key=True, port=None):
        """A shell-quoted `ssh ...` (no destination) for rsync -e and GIT_SSH_COMMAND."""
        if key is True:
            key = user.key
        argv = ["ssh"] + self.base_opts() + self.key_opts(key)
        if port:
            argv += ["-p", str(port)]
        return shlex.join(argv)

    def scp_argv(self, user, key=True):
        """scp/sftp options (no operands): our known_hosts, -P port, the user's key."""
        if key is True:
            key = user.key
        return self.base_opts() + ["-P", str(self.port)] + self.key_opts(key)

    # ---- routes --------------------------------------------------------------------------
    def set_pin(self, backend, pin=None, settle=True):
        """pin None: the backend's real ed25519 pin. "random": a well-formed wrong one."""
        if pin is None:
            pin = self.backends[backend].ssh_hostkey_sha256
        elif pin == "random":
            pin = "SHA256:" + base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        self.pg.psql("UPDATE dynproxy.backends SET hostkey_sha256 = %s WHERE name = %s"
                     % (sql_literal(pin), sql_literal(backend)))
        if settle:
            self.settle()
        return pin

