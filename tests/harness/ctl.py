"""Control-socket clients for the e2e tests: the real `proxyctl`, and a raw protocol client
(for what proxyctl never sends: malformed and over-long lines, pipelined requests)."""

import json
import os
import socket
import threading

import dpenv
from proxy_env import BUILD, run_cmd

PROXYCTL = os.path.join(BUILD, "proxyctl", "proxyctl")


def proxyctl(sock, *args, timeout=60, runas=None):
    """`proxyctl -s sock ARGS...` (as user `runas` via runuser when given, from a copy that
    user can reach wherever the clone is); a Result."""
    argv = [PROXYCTL, "-s", sock] + list(args)
    if runas:
        argv = ["runuser", "-u", runas, "--", dpenv.shared_copy(PROXYCTL)] + argv[1:]
    return run_cmd(argv, timeout=timeout)


def sessions(sock, *filters):
    """`proxyctl sessions --json` as a list of dicts (None when the reply is not that)."""
    r = proxyctl(sock, "--json", "sessions", *filters)
    try:
        return json.loads(r.out)["sessions"]
    except (ValueError, KeyError):
        return None


def proxyctl_background(sock, *args, timeout=90):
    """Run proxyctl in a thread (drain answers only at the end); returns (thread, box):
    box["r"] is the Result once the thread ended."""
    box = {}
    t = threading.Thread(target=lambda: box.update(r=proxyctl(sock, *args, timeout=timeout)))
    t.start()
    return t, box


def connect_refused(port, host="127.0.0.1"):
    """True when a TCP connect to host:port is refused (a draining daemon's closed port)."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def proxyctl_missing():
    """None when proxyctl is built, else a one-line reason."""
    return None if os.access(PROXYCTL, os.X_OK) else "proxyctl not built (%s)" % PROXYCTL


class RawCtl:
    """One connection speaking protocol v1 by hand."""

    def __init__(self, path, timeout=10.0):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.f = self.s.makefile("rb")
        self.greeting = self.f.readline().decode("utf-8", "replace").rstrip("\n")

    def send(self, data):
        self.s.sendall(data if isinstance(data, bytes) else data.encode())

    def reply(self):
        """(code, text, [body lines]) of the next reply; (None, '', []) at EOF."""
        status = self.f.readline().decode("utf-8", "replace").rstrip("\n")
        if not status:
            return None, "", []
        code, _, text = status.partition(" ")
        body = []
        while True:
            line = self.f.readline().decode("utf-8", "replace")
            if not line or line == ".\n":
                break
            line = line.rstrip("\n")
            body.append(line[1:] if line.startswith("..") else line)
        return int(code), text, body

    def ask(self, line):
        self.send(line + "\n")
        return self.reply()

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass
