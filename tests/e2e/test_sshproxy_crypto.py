#!/usr/bin/python3
"""e2e.sshproxy_crypto - what a customer's SSH client and an auditor see of sshproxy's
algorithms (libssh 0.12, issue 12). Real PostgreSQL, real OpenSSH backends, real clients.

Sections:
  1 `sshproxy -V` and event=start name libssh (>= 0.12.2) and its patches; OpenSSH 9.2 (Debian 12) negotiates sntrup761x25519 with the proxy (ssh -v 'kex:' lines),
    the same exchange it gets from the backend directly, and logs in
  2 a client on libssh 0.12 (e2e_ssh_probe) negotiates mlkem768x25519-sha256 and logs in;
    session_start names both hops' key exchanges (backend hop: sntrup761 with OpenSSH 9.2)
  3 clients offering only what the defaults leave out are refused with OpenSSH's clean
    error (NIST or finite-field DH key exchange; ecdsa host keys; CTR with a non-EtM MAC),
    and everyone else is still served
  4 configuration: unknown, repeated or empty names in ssh.kex_algorithms / ssh.ciphers /
    ssh.macs / ssh.hostkey_algorithms, OpenSSH's +/-/^ list edits, and host key algorithms
    with no key in ssh.host_keys are refused by `sshproxy -t` with file:line; an operator's
    narrower list is what clients get
  5 ssh-audit (the newest Debian release, deps/ssh-audit): 0 failures and 0 warnings on the
    default configuration
  6 OpenSSH 10.3 (deps/openssh-client): no "not using a post-quantum key exchange" warning
    through the proxy (mlkem768x25519-sha256), and the warning does appear against a proxy
    narrowed to curve25519-sha256 (so the check can fail)
  7 rekeys on both hops (RekeyLimit 1M on the client and in the backend's sshd) during an
    8 MiB echo: the data arrives whole (sha256) and both hops show several key exchanges
"""
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "harness"))

import dpenv  # noqa: E402
from checks import Checks  # noqa: E402
from proxy_env import run_cmd  # noqa: E402
from sshproxy_env import SshProxyEnv  # noqa: E402

check = Checks()
PROBE = os.path.join(os.environ.get("DP_BUILD_DIR", "build"), "tests", "e2e", "e2e_ssh_probe")
SSH_AUDIT_ROOT = os.environ.get("DP_SSH_AUDIT_ROOT", "/opt/dynproxy/ssh-audit")
SSH10 = os.path.join(os.environ.get("DP_OPENSSH_PREFIX", "/opt/dynproxy/openssh"), "bin", "ssh")
PQ_WARNING = "not using a post-quantum key exchange"

NON_PQ_KEX = ("ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521,"
              "diffie-hellman-group14-sha256,diffie-hellman-group16-sha512,"
              "diffie-hellman-group18-sha512,diffie-hellman-group-exchange-sha256")


def kex_lines(stderr):
    """{'algorithm': ..., 'host key algorithm': ...} from `ssh -v` output."""
    out = {}
    for m in re.finditer(r"debug1: kex: (algorithm|host key algorithm): (\S+)", stderr):
        out[m.group(1)] = m.group(2)
    return out


def is_sntrup(name):
    return name in ("sntrup761x25519-sha512@openssh.com", "sntrup761x25519-sha512")


# ---- 1 ------------------------------------------------------------------------------------
def t_openssh(env):
    # what the proxy is built on, named where an operator looks: -V and the start line
    v = run_cmd([env.BINARY, "-V"], timeout=10)
    m = re.search(r"libssh=(\d+)\.(\d+)\.(\d+)\S* libssh_patches=(\S+)", v.out)
    check(m is not None and tuple(int(x) for x in m.group(1, 2, 3)) >= (0, 12, 2)
          and m.group(4) == "pty-modes,break,release-buffers",
          "sshproxy -V names libssh >= 0.12.2 and its patches", v.out)
    starts = [ln for ln in env.log().splitlines() if "event=start" in ln]
    check(bool(starts) and m is not None and m.group(0) in starts[-1],
          "the event=start log line names the same libssh", starts[-1:] or env.log()[-300:])
    u = env.users[0]
    r = env.ssh(u, "echo pq-ok", key=True, loglevel="DEBUG1")
    k = kex_lines(r.err)
    check(r.rc == 0 and r.out.strip() == "pq-ok", "OpenSSH 9.2 logs in through the proxy", r)
    check(is_sntrup(k.get("algorithm")),
          "OpenSSH 9.2 -> proxy negotiates sntrup761x25519-sha512 (post-quantum)", k)
    check(k.get("host key algorithm") == "ssh-ed25519",
          "host key algorithm ssh-ed25519 (no ecdsa offered)", k)
    d = env.direct("web1", u, "echo direct-ok", loglevel="DEBUG1")
    dk = kex_lines(d.err)
    check(d.rc == 0 and dk.get("algorithm") == k.get("algorithm"),
          "the same exchange as a direct login to the backend (%s)" % dk.get("algorithm"), d)


# ---- 2 ------------------------------------------------------------------------------------
def probe(env, user, *args, timeout=60):
    argv = [PROBE] + list(args) + ["-u", user.name, "-i", user.key, "-e", "echo probe-ok",
                                   "127.0.0.1", str(env.port)]
    r = run_cmd(argv, timeout=timeout)
    fields = dict(line.split("=", 1) for line in r.out.splitlines() if "=" in line)
    return r, fields


def t_mlkem(env):
    u = env.users[1]
    off = env.log_offset()
    r, f = probe(env, u)
    check(r.rc == 0 and "probe-ok" in r.out and f.get("exit") == "0",
          "a libssh 0.12 client logs in and runs a command", r)
    check(f.get("kex") == "mlkem768x25519-sha256",
          "a client that has it negotiates mlkem768x25519-sha256", f)
    starts = env.events("session_start", after=off, user=u.name)
    s = starts[-1] if starts else {}
    check(s.get("kex") == "mlkem768x25519-sha256",
          "session_start logs kex=mlkem768x25519-sha256 for that client", s.get("_line"))
    # OpenSSH 9.2 backends know sntrup761 but not ML-KEM: the backend hop takes sntrup761
    check(is_sntrup(s.get("backend_kex")),
          "the backend hop negotiates sntrup761x25519 with OpenSSH 9.2 (PQ on both hops)",
          s.get("_line"))
    r, f = probe(env, u, "-k", "sntrup761x25519-sha512")
    check(r.rc == 0 and f.get("kex") == "sntrup761x25519-sha512",
          "the RFC name sntrup761x25519-sha512 is offered too", r)
    r, f = probe(env, u, "-k", "curve25519-sha256")
    check(r.rc == 0 and f.get("kex") == "curve25519-sha256",
          "a client without post-quantum exchanges still gets curve25519-sha256", r)


# ---- 3 ------------------------------------------------------------------------------------
def t_refused(env):
    u = env.users[0]
    cases = [
        ("only NIST-curve and finite-field DH key exchanges",
         ["-o", "KexAlgorithms=" + NON_PQ_KEX], "no matching key exchange method found"),
        ("only ecdsa host keys",
         ["-o", "HostKeyAlgorithms=ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521"],
         "no matching host key type found"),
        ("AES-CTR with only non-EtM MACs",
         ["-o", "Ciphers=aes128-ctr,aes256-ctr", "-o", "MACs=hmac-sha2-256,hmac-sha2-512"],
         "no matching MAC found"),
    ]
    for label, extra, want in cases:
        off = env.log_offset()
        # OpenSSH prints "Unable to negotiate ..." at INFO
        r = env.ssh(u, "true", key=True, extra=extra, timeout=30, loglevel="INFO")
        check(r.rc == 255 and want in r.err,
              "a client offering %s is refused: '%s'" % (label, want), r)
        check(env.wait_log("event=kex_fail", after=off, timeout=10),
              "the proxy logs event=kex_fail with libssh's reason",
              dpenv.tail(env.logfile, 3))
    r = env.ssh(u, "echo still-ok", key=True)
    check(r.rc == 0 and r.out.strip() == "still-ok", "the next client is served", r)


# ---- 4 ------------------------------------------------------------------------------------
def config_check(env, key, value):
    """`sshproxy -t` on the test config with `ssh.<key> = value` added; (rc, output, line)."""
    path = os.path.join(env.tmp, "crypto-check.conf")
    with open(env.config) as f:
        text = f.read()
    # the ssh section is written last but one (tests/harness/proxy_env.py write_config)
    lines = text.splitlines()
    idx = max(i for i, line in enumerate(lines) if line.startswith("ssh = {"))
    lines.insert(idx + 1, "  %s = \"%s\";" % (key, value))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    r = run_cmd([env.BINARY, "-t", "-c", path], timeout=30)
    return r.rc, r.out + r.err, idx + 2


@contextlib.contextmanager
def kex_narrowed(env, kex):
    """The proxy restarted with ssh.kex_algorithms = kex, then back on its defaults."""
    env.ssh_conf["kex_algorithms"] = kex
    try:
        env.restart_proxy()
        yield
    finally:
        del env.ssh_conf["kex_algorithms"]
        env.restart_proxy()


def t_config(env):
    bad = [
        ("kex_algorithms", "curve25519-sha256,ecdh-sha2-nistp999",
         'unknown algorithm "ecdh-sha2-nistp999"'),
        ("ciphers", "chacha20-poly1305@openssh.com,aes128-cbc-typo",
         'unknown algorithm "aes128-cbc-typo"'),
        ("macs", "hmac-sha2-256-etm@openssh.com,,hmac-sha2-512-etm@openssh.com",
         "empty name"),
        ("hostkey_algorithms", "ssh-ed25519,ssh-ed25519", 'listed twice'),
        ("hostkey_algorithms", "ecdsa-sha2-nistp384", "has a key in ssh.host_keys"),
        ("kex_algorithms", "+ecdh-sha2-nistp256", 'unknown algorithm "+ecdh-sha2-nistp256"'),
    ]
    for key, value, want in bad:
        rc, out, line = config_check(env, key, value)
        where = "crypto-check.conf:%d: ssh.%s:" % (line, key)
        check(rc != 0 and where in out and want in out,
              "sshproxy -t refuses ssh.%s = \"%s\" with %s %s" % (key, value, where, want), out)
    rc, out, _ = config_check(env, "kex_algorithms", "sntrup761x25519-sha512,curve25519-sha256")
    check(rc == 0, "sshproxy -t accepts a narrower valid list", out)
    # A narrower list is what clients get.
    with kex_narrowed(env, "curve25519-sha256"):
        r, f = probe(env, env.users[1])
        check(r.rc == 0 and f.get("kex") == "curve25519-sha256",
              "ssh.kex_algorithms = curve25519-sha256: a client offering mlkem gets curve25519",
              r)


# ---- 5 ------------------------------------------------------------------------------------
def ssh_audit_cmd():
    script = os.path.join(SSH_AUDIT_ROOT, "usr", "bin", "ssh-audit")
    lib = os.path.join(SSH_AUDIT_ROOT, "usr", "lib", "python3", "dist-packages")
    if not os.path.exists(script):
        return None, None
    env = dict(os.environ, PYTHONPATH=lib)
    return ["/usr/bin/python3", script], env


def audit_findings(report):
    """[(severity, section, algorithm, note)] of every fail and warn in ssh-audit's JSON."""
    found = []
    for section in ("kex", "key", "enc", "mac"):
        for entry in report.get(section, []):
            notes = entry.get("notes", {})
            for sev in ("fail", "warn"):
                for note in notes.get(sev, []):
                    found.append((sev, section, entry.get("algorithm"), note))
    for cve in report.get("cves", []):
        found.append(("fail", "cve", cve.get("name"), cve.get("description")))
    return found


def t_audit(env):
    cmd, aenv = ssh_audit_cmd()
    if not check(cmd is not None, "ssh-audit is unpacked in %s (scripts/deps)" % SSH_AUDIT_ROOT):
        return
    ver = subprocess.run(cmd + ["--help"], env=aenv, capture_output=True, text=True, timeout=60)
    m = re.search(r"ssh-audit v([0-9.]+)", ver.stdout + ver.stderr)
    dpenv.log("ssh-audit %s", m.group(1) if m else "?")
    r = subprocess.run(cmd + ["-j", "-p", str(env.port), "127.0.0.1"], env=aenv,
                       capture_output=True, text=True, timeout=120)
    try:
        report = json.loads(r.stdout)
    except ValueError:
        check(False, "ssh-audit prints a JSON report", r.stdout[-500:] + r.stderr[-500:])
        return
    found = audit_findings(report)
    fails = [f for f in found if f[0] == "fail"]
    warns = [f for f in found if f[0] == "warn"]
    kex = [e.get("algorithm") for e in report.get("kex", [])]
    dpenv.log("ssh-audit: kex offered %s", ",".join(kex))
    check(not fails, "ssh-audit %s: 0 failures" % (m.group(1) if m else ""), fails)
    check(not warns, "ssh-audit: 0 warnings", warns)
    check("kex-strict-s-v00@openssh.com" in kex, "strict key exchange is offered", kex)
    check(r.returncode == 0, "ssh-audit exits 0 (no problems)", r.returncode)


# ---- 6 ------------------------------------------------------------------------------------
def ssh10(env, u, command):
    argv, e = env.ssh_argv(u, command, key=True, loglevel="DEBUG1")
    argv = [SSH10] + argv[1:]
    return run_cmd(argv, env=e, timeout=60)


def t_openssh10(env):
    if not check(os.access(SSH10, os.X_OK), "OpenSSH 10 client built in %s (scripts/deps)"
                 % SSH10):
        return
    ver = run_cmd([SSH10, "-V"], timeout=10)
    dpenv.log("client: %s", ver.err.strip())
    u = env.users[0]
    r = ssh10(env, u, "echo ok10")
    k = kex_lines(r.err)
    check(r.rc == 0 and r.out.strip() == "ok10", "%s logs in through the proxy"
          % ver.err.split(",")[0], r)
    check(k.get("algorithm") == "mlkem768x25519-sha256",
          "it negotiates mlkem768x25519-sha256 with the proxy", k)
    check(PQ_WARNING not in r.err, "and prints no post-quantum warning", r.err[-600:])
    # the same check against a proxy offering no post-quantum exchange: the warning is there
    with kex_narrowed(env, "curve25519-sha256"):
        r = ssh10(env, u, "echo ok10")
        check(r.rc == 0 and PQ_WARNING in r.err,
              "control: against ssh.kex_algorithms = curve25519-sha256 it prints the warning",
              r.err[-600:])


# ---- 7 ------------------------------------------------------------------------------------
REKEY_BYTES = 8 << 20
REKEY_BACKEND = "web2"      # its sshd runs with RekeyLimit 1M (main())


def t_rekey(env):
    """Rekeys on both hops during a transfer. libssh patches 0004 and 0006 free key exchange
    state (the sntrup761 keys, the offered algorithm lists) once new keys are in use; a rekey
    must build all of it again."""
    u = env.add_user(backend=REKEY_BACKEND, debug_log=True)   # its sshd logs each key exchange
    data = os.urandom(REKEY_BYTES)
    log = env.backends[REKEY_BACKEND].sshd_log
    before = dpenv.read_text(log)
    off = env.log_offset()
    r = env.ssh(u, "cat", key=True, input=data, binary=True, timeout=120, loglevel="DEBUG1",
                extra=("-o", "RekeyLimit=1M"))
    err = r.err.decode("utf-8", "replace")
    check(r.rc == 0 and hashlib.sha256(r.out).hexdigest() == hashlib.sha256(data).hexdigest(),
          "8 MiB echoed through cat with rekeys on both hops, sha256 equal",
          "exit %s, %d of %d bytes; %s" % (r.rc, len(r.out), len(data), err[-400:]))
    client_kex = err.count("SSH2_MSG_NEWKEYS received")
    check(client_kex >= 4, "the client's hop rekeyed (RekeyLimit=1M on the client)",
          "%d key exchanges in ssh -v" % client_kex)
    backend_kex = dpenv.read_text(log)[len(before):].count("SSH2_MSG_NEWKEYS received")
    check(backend_kex >= 4, "the backend hop rekeyed (RekeyLimit 1M in the backend's sshd)",
          "%d rekeys in the backend's sshd log" % backend_kex)
    env.wait_log(lambda t: env.events("session_end", after=off, user=u.name), after=off,
                 timeout=10)
    ends = env.events("session_end", after=off, user=u.name)
    want = str(REKEY_BYTES)
    check(len(ends) == 1 and ends[0].get("bytes_in") == want and ends[0].get("bytes_out") == want,
          "session_end counts the 8 MiB each way",
          ends[-1].get("_line") if ends else env.log()[-300:])


TESTS = [
    ("1 OpenSSH 9.2", t_openssh),
    ("2 ML-KEM", t_mlkem),
    ("3 refused", t_refused),
    ("4 configuration", t_config),
    ("5 ssh-audit", t_audit),
    ("6 OpenSSH 10", t_openssh10),
    ("7 rekey", t_rekey),
]


def main(argv):
    if not os.access(PROBE, os.X_OK):
        print("e2e_ssh_probe not built: %s" % PROBE)
        return 1
    return SshProxyEnv.run_suite(check, "test_sshproxy_crypto", TESTS, argv,
                                 {"nusers": 2, "backend_sshd": {REKEY_BACKEND: ["RekeyLimit 1M"]}})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
