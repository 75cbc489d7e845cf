"""Counting assertions for the e2e drivers: one "ok - ..." / "FAIL - ..." line per check and
a closing "N passed, M failed" line that ctest's log readers recognise."""

import sys
import traceback


class Checks:
    def __init__(self):
        self.passed = 0
        self.failures = []  # what failed, for the closing summary

    @property
    def failed(self):
        return len(self.failures)

    def __call__(self, cond, what, detail=""):
        if cond:
            self.passed += 1
            print("ok - %s" % what)
        else:
            self.failures.append(what)
            print("FAIL - %s%s" % (what, (": " + str(detail).strip()) if detail else ""))
        sys.stdout.flush()
        return cond

    def harness_error(self, what="harness error"):
        """Record the exception being handled as a failed check (never a crash)."""
        self(False, what, traceback.format_exc())

    def finish(self):
        """Print the closing line; returns the process exit status."""
        for what in self.failures:
            print("failed: %s" % what)
        print("%d passed, %d failed" % (self.passed, self.failed))
        sys.stdout.flush()
        return 1 if self.failed or self.passed == 0 else 0
