#!/usr/bin/python3
"""unit.config_docs: docs/configuration.md and docs/sshproxy.md against the config tables.

Every key the daemons accept (`sshproxy -K`, `ftpproxy -K`: key, type, default, range, reload
straight from the tables in common/dp_daemon.c and each daemon's *_main.c) must be documented
in a key table of those files, and every key documented there must exist, with the same
default, type, reload flag and bounds (an int's minimum and maximum must both appear in the
range cell). A table without a reload column must sit under text that says "All reloadable",
and then every key in it must be.

    /usr/bin/python3 tests/unit/test_config_docs.py SSHPROXY FTPPROXY SOURCE_DIR
"""
import os
import re
import subprocess
import sys

DOCS = ("docs/configuration.md", "docs/sshproxy.md")


def table_keys(daemons):
    keys = {}
    for d in daemons:
        out = subprocess.run([d, "-K"], capture_output=True, text=True, timeout=30,
                             check=True).stdout
        for line in out.splitlines():
            key, typ, default, rng, reload = line.split("\t")
            keys[key] = {"type": typ, "default": default, "range": rng, "reload": reload}
    return keys


def cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def doc_rows(path):
    """(key, {column: cell}, all_reloadable) for every row of every table whose header starts
    with 'key'; a first cell may name several keys ("`a` / `b`"), other cells then split on
    ' / ' alike."""
    rows = []
    lines = open(path).read().splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("| key |"):
            continue
        head = cells(line)
        before = "\n".join(lines[max(0, i - 6):i])
        all_reloadable = "All reloadable" in before
        for row in lines[i + 2:]:
            if not row.startswith("|"):
                break
            c = dict(zip(head, cells(row)))
            names = re.findall(r"`([a-z_.]+)`", c["key"])
            parts = {k: (v.split(" / ") if len(names) > 1 and " / " in v else [v] * len(names))
                     for k, v in c.items()}
            for n, name in enumerate(names):
                rows.append((name, {k: v[n] for k, v in parts.items()}, all_reloadable, path))
    return rows


def numbers(text):
    text = re.sub(r"10\^(\d+)", lambda m: str(10 ** int(m.group(1))), text)
    return {int(x) for x in re.findall(r"-?\d+", text)}


def main(argv):
    daemons, source = argv[1:3], argv[3]
    keys = table_keys(daemons)
    problems = []
    documented = set()
    for path in DOCS:
        for name, c, all_reloadable, where in doc_rows(os.path.join(source, path)):
            documented.add(name)
            k = keys.get(name)
            if k is None:
                problems.append("%s: %s is documented but no daemon accepts it" % (where, name))
                continue
            default = c.get("default", "").strip("`")
            if not default.startswith("see ") and default != k["default"]:
                problems.append("%s: %s: default %r, the table says %r"
                                % (where, name, default, k["default"]))
            typ = c.get("type")
            if typ is not None and typ != k["type"] and not (typ == "string" and
                                                             k["type"] == "enum"):
                problems.append("%s: %s: type %r, the table says %r" % (where, name, typ,
                                                                         k["type"]))
            reload = c.get("reload", "").rstrip("*")
            if reload and reload != k["reload"]:
                problems.append("%s: %s: reload %r, the table says %r" % (where, name, reload,
                                                                           k["reload"]))
            if "reload" not in c and not all_reloadable:
                problems.append("%s: %s: no reload column and no 'All reloadable'" % (where,
                                                                                    name))
            if "reload" not in c and all_reloadable and k["reload"] != "yes":
                problems.append("%s: %s: under 'All reloadable' but not reloadable" % (where,
                                                                                      name))
            if k["type"] == "int" and "range" in c:
                lo, hi = (int(x) for x in k["range"].split(".."))
                if not {lo, hi} <= numbers(c["range"]):
                    problems.append("%s: %s: range %r, the table says %s"
                                    % (where, name, c["range"], k["range"]))
    if not keys or not documented:
        problems.append("nothing to compare: %d keys from -K, %d documented" % (len(keys),
                                                                            len(documented)))
    for name in sorted(set(keys) - documented):
        problems.append("%s is accepted but documented nowhere in %s" % (name, ", ".join(DOCS)))
    for p in problems:
        print("FAIL - " + p)
    print("%d keys, %d documented, %d problems" % (len(keys), len(documented), len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
