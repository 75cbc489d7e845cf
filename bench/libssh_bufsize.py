#!/usr/bin/python3
"""Which MAX_BUF_SIZE for our libssh build? (issue 12, "Throughput")

    /usr/bin/python3 bench/libssh_bufsize.py                       # 4096,16384,65536,262144
    /usr/bin/python3 bench/libssh_bufsize.py --sizes 4096,65536 --quick --json out.json

libssh reads at most MAX_BUF_SIZE bytes from a socket per readable event (include/libssh/
priv.h, 4096 upstream, behind #ifndef). For each size this builds libssh with it
(scripts/build-libssh --max-buf-size N into a private prefix), builds sshproxy against that
build (its own build directory), and runs the stream phase of bench/ssh_bench.py with that
binary. The sizes run one after the other in one invocation, so they share the machine's
state; each stream run interleaves proxy, direct and ProxyJump as ssh_bench.py does.
Reported per size and cipher: proxy and direct MB/s, proxy/direct, proxy CPU s per GiB.
The chosen value goes into deps/libssh/source (LIBSSH_MAX_BUF_SIZE).

Needs root (like ssh_bench.py) and what scripts/deps installs. Builds go under
--workdir (default /var/tmp/dynproxy-bufsize) and are kept for a rerun.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(HERE)


def sh(argv, **kw):
    print("+ " + " ".join(argv), flush=True)
    return subprocess.run(argv, check=True, timeout=1800, **kw)


def build(size, workdir):
    prefix = os.path.join(workdir, "libssh-%d" % size)
    bdir = os.path.join(workdir, "build-%d" % size)
    sh([os.path.join(SOURCE_DIR, "scripts", "build-libssh"), "--max-buf-size", str(size),
        "--prefix", prefix])
    sh(["cmake", "-S", SOURCE_DIR, "-B", bdir, "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
        "-DDP_LIBSSH_PREFIX=" + prefix], stdout=subprocess.DEVNULL)
    sh(["cmake", "--build", bdir, "-j2", "--target", "sshproxy"], stdout=subprocess.DEVNULL)
    return os.path.join(bdir, "sshproxy", "sshproxy")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="4096,16384,65536,262144")
    ap.add_argument("--workdir", default="/var/tmp/dynproxy-bufsize")
    ap.add_argument("--quick", action="store_true", help="256 MiB streams (ssh_bench --quick)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",") if x]
    if os.geteuid() != 0:
        print("libssh_bufsize.py: must run as root", file=sys.stderr)
        return 2
    os.makedirs(args.workdir, exist_ok=True)
    results = {}
    for size in sizes:
        binary = build(size, args.workdir)
        out = os.path.join(args.workdir, "stream-%d.json" % size)
        argv = [sys.executable, os.path.join(HERE, "ssh_bench.py"), "--only", "stream",
                "--repeat", str(args.repeat), "--binary", binary, "--json", out]
        if args.quick:
            argv.append("--quick")
        sh(argv)
        with open(out) as f:
            results[size] = json.load(f)
    lines = ["MAX_BUF_SIZE  cipher                proxy MB/s  direct MB/s    p/d  proxy CPU s/GiB"]
    for size in sizes:
        st = results[size].get("stream", {})
        for cipher, c in st.get("ciphers", {}).items():
            v = c["stream_mbps"]
            p, d = v.get("proxy"), v.get("direct")
            cpu = c.get("proxy_cpu_secs_per_gib")
            lines.append("%12d  %-20s %11s %12s %6s %16s" % (
                size, cipher.split("@")[0], "%.1f" % p if p else "-", "%.1f" % d if d else "-",
                "%.2f" % (p / d) if p and d else "-", "%.2f" % cpu if cpu is not None else "-"))
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"sizes": sizes, "results": results, "table": lines}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
