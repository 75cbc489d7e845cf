#!/usr/bin/python3
"""The CPU floor of relaying encrypted bytes on this machine (issue 12, "Throughput").

    /usr/bin/python3 bench/relay_floor.py [--size 2GiB] [--repeat 3] [--read-size 65536]

What a proxy that decrypts and re-encrypts every byte cannot avoid, measured in two parts:

  kernel   bench/relay_floor.c (built here with cc) relays --size bytes from a source to a
           sink over loopback TCP with plain recv/send: its system seconds per GiB
  crypto   `openssl speed -evp` at 32 KiB blocks for aes-128-gcm and chacha20-poly1305:
           seconds per GiB for one decrypt plus one encrypt

The sum is compared with sshproxy's target (proxy CPU <= 1.0 s per GiB relayed,
bench/ssh_bench.py). Loopback only; needs cc and openssl (scripts/deps installs both).
"""
import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from benchlib import median, parse_size  # noqa: E402

GiB = 1 << 30
CHUNK = 1 << 20
CIPHERS = ("aes-128-gcm", "chacha20-poly1305")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def relay_once(binary, size, read_size):
    """(user_s, sys_s) of the relay for `size` bytes source -> relay -> sink."""
    src = socket.socket()
    src.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    src.bind(("127.0.0.1", 0))
    src.listen(1)
    lport = free_port()
    relay = subprocess.Popen([binary, str(lport), str(src.getsockname()[1]), str(read_size)],
                             stdout=subprocess.PIPE, text=True)
    sink = None
    for _ in range(100):                     # the relay listens within milliseconds
        try:
            sink = socket.create_connection(("127.0.0.1", lport), timeout=1)
            break
        except OSError:
            threading.Event().wait(0.02)
    if sink is None:
        relay.kill()
        raise RuntimeError("relay_floor did not listen on %d" % lport)
    sink.settimeout(120)
    src.settimeout(10)
    conn, _ = src.accept()

    def feed():
        block = bytes(CHUNK)
        left = size
        while left > 0:
            conn.sendall(block[:min(CHUNK, left)])
            left -= CHUNK
        conn.close()

    t = threading.Thread(target=feed)
    t.start()
    got = 0
    while True:
        d = sink.recv(CHUNK)
        if not d:
            break
        got += len(d)
    t.join()
    out, _ = relay.communicate(timeout=30)
    sink.close()
    src.close()
    m = re.search(r"bytes=(\d+) user_s=([\d.]+) sys_s=([\d.]+)", out)
    if relay.returncode != 0 or not m or got != size or int(m.group(1)) != size:
        raise RuntimeError("relay failed: rc %s, sink got %d of %d, %r"
                           % (relay.returncode, got, size, out))
    return float(m.group(2)), float(m.group(3))


def crypto_secs_per_gib(cipher):
    """Seconds for one decrypt plus one encrypt of a GiB, from openssl speed (32 KiB blocks)."""
    r = subprocess.run(["openssl", "speed", "-seconds", "2", "-bytes", "32768", "-evp", cipher],
                       capture_output=True, text=True, timeout=60)
    line = [ln for ln in r.stdout.splitlines() if ln.strip()][-1]
    kbytes_per_s = float(line.split()[-1].rstrip("k"))     # in 1000s of bytes per second
    return 2 * GiB / (kbytes_per_s * 1000)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="2GiB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--read-size", type=int, default=65536)
    args = ap.parse_args()
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="dpb-floor-") as tmp:
        binary = os.path.join(tmp, "relay_floor")
        subprocess.run(["cc", "-O2", "-Wall", "-o", binary, os.path.join(HERE, "relay_floor.c")],
                       check=True)
        runs = [relay_once(binary, size, args.read_size) for _ in range(args.repeat)]
    gib = size / GiB
    sys_s = [s / gib for _, s in runs]
    user_s = [u / gib for u, _ in runs]
    print("kernel: plain loopback relay, %s x %d, %d-byte reads: system %.3f s/GiB "
          "(median; runs %s), user %.3f s/GiB"
          % (args.size, args.repeat, args.read_size, median(sys_s),
             " ".join("%.3f" % x for x in sys_s), median(user_s)))
    for c in CIPHERS:
        cs = crypto_secs_per_gib(c)
        print("crypto: %-18s decrypt + encrypt %.3f s/GiB; with the kernel's share %.3f s/GiB "
              "(target <= 1.0)" % (c, cs, cs + median(sys_s)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
