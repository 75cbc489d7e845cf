"""A dynproxy daemon under test: start with a config, wait until it is ready (its
`event=start` log line), signal it, stop it and check how it exited, read its log."""

import os
import signal
import subprocess
import time

import dpenv


class Daemon:
    def __init__(self, binary, config, logfile):
        self.binary = binary
        self.config = config
        self.logfile = logfile
        self.proc = None

    def start(self, timeout=10.0, expect_ready=True):
        self._log = open(self.logfile, "ab")
        at = os.path.getsize(self.logfile)  # a restart appends: only this run's lines count
        self.proc = subprocess.Popen([self.binary, "-c", self.config], stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log)
        if expect_ready and not dpenv.wait_until(lambda: b"event=start" in self._log_bytes(at)
                                                 or self.proc.poll() is not None, timeout):
            raise dpenv.HarnessError("%s did not start in %ss:\n%s"
                                     % (self.binary, timeout, dpenv.tail(self.logfile)))
        if expect_ready and self.proc.poll() is not None:
            raise dpenv.HarnessError("%s exited with %s:\n%s"
                                     % (self.binary, self.proc.returncode,
                                        dpenv.tail(self.logfile)))
        return self

    def log(self):
        return dpenv.read_text(self.logfile)

    def _log_bytes(self, at):
        with open(self.logfile, "rb") as f:
            f.seek(at)
            return f.read()

    def wait_log(self, needle, timeout=30.0, after=0):
        """Wait until `needle` appears in the log past offset `after`; returns True/False."""
        return dpenv.wait_until(lambda: needle in self.log()[after:], timeout)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=15.0):
        """Wait for the process to end; returns its exit status (None on timeout)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=60.0):
        """SIGTERM and wait; returns (exit status, seconds taken). Kills it after timeout."""
        if self.proc is None or self.proc.poll() is not None:
            return (self.proc.returncode if self.proc else None, 0.0)
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.wait(timeout)
        took = time.monotonic() - t0
        if rc is None:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()
        return rc, took

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


def run_check(binary, config, timeout=10):
    """`binary -t -c config`: returns (exit status, stdout + stderr)."""
    r = subprocess.run([binary, "-t", "-c", config], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=timeout,
                       env=dict(os.environ))
    return r.returncode, r.stdout
