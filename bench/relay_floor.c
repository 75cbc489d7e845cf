/*
 * relay_floor.c - the kernel's share of relaying bytes through one process over loopback TCP,
 * with no protocol and no crypto: what every proxy pays per byte before it does any work of its
 * own (bench/relay_floor.py builds and drives it; docs/performance.md, "The CPU floor").
 *
 *   relay_floor LISTEN_PORT SOURCE_PORT [READ_SIZE]
 *
 * Accepts one connection on 127.0.0.1:LISTEN_PORT, connects to 127.0.0.1:SOURCE_PORT, copies
 * everything the source sends to the accepted connection with blocking recv/send of READ_SIZE
 * bytes (default 65536, sshproxy's libssh read size), and at the source's EOF prints
 * "bytes=N user_s=U sys_s=S" (its own rusage) and exits 0.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static int fail(const char *what)
{
    perror(what);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return fprintf(stderr, "usage: relay_floor LISTEN_PORT SOURCE_PORT [READ_SIZE]\n"), 2;
    size_t read_size = argc > 3 ? (size_t)strtoul(argv[3], NULL, 10) : 65536;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1;
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0)
        return fail("socket");
    a.sin_port = htons((uint16_t)atoi(argv[1]));
    if (bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 1) != 0)
        return fail("bind/listen");
    int client = accept(ls, NULL, NULL);
    if (client < 0)
        return fail("accept");
    int source = socket(AF_INET, SOCK_STREAM, 0);
    a.sin_port = htons((uint16_t)atoi(argv[2]));
    if (source < 0 || connect(source, (struct sockaddr *)&a, sizeof a) != 0)
        return fail("connect");
    char *buf = malloc(read_size);
    if (buf == NULL || read_size == 0)
        return fail("malloc");
    unsigned long long total = 0;
    for (;;) {
        ssize_t n = recv(source, buf, read_size, 0);
        if (n < 0)
            return fail("recv");
        if (n == 0)
            break;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = send(client, buf + off, (size_t)(n - off), 0);
            if (w <= 0)
                return fail("send");
            off += w;
        }
        total += (unsigned long long)n;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("bytes=%llu user_s=%.3f sys_s=%.3f\n", total,
           (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6,
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6);
    return 0;
}
