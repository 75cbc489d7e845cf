"""Control-socket clients for the e2e tests: the real `proxyctl`, and a raw protocol client
(for what proxyctl never sends: malformed and over-long lines, pipelined requests)."""

import os
import socket

from proxy_env import BUILD, run_cmd

PROXYCTL = os.path.join(BUILD, "proxyctl", "proxyctl")


def proxyctl(sock, *args, timeout=60, runas=None):
    """`proxyctl -s sock ARGS...` (as user `runas` via runuser when given); a Result."""
    argv = [PROXYCTL, "-s", sock] + list(args)
    if runas:
        argv = ["runuser", "-u", runas, "--"] + argv
    return run_cmd(argv, timeout=timeout)


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
