/*
 * fuzz_ftp.c - fuzz target for ftpp_proto: the command line reader (with its Telnet layer),
 * ftpp_cmd_split, the reply reader, and every data-address parser and formatter.
 *
 * Built two ways from this one file:
 *   - with clang and -fsanitize=fuzzer (DP_LIBFUZZER defined): a libFuzzer target;
 *   - otherwise: a corpus replayer with its own main(), run by ctest (label "fuzz") so that the
 *     gcc ASan build exercises the same checks on the seed corpus plus deterministic mutations.
 *
 * The input is read both as a client's command stream and as a backend's reply stream. Beyond
 * "does not crash", the target checks the properties the daemon relies on: a feed never claims
 * more bytes than it was given and always makes progress; a command line is NUL-terminated,
 * at most FTPP_CMD_MAX bytes, free of CR/LF and control bytes; the lines do not depend on how
 * the stream was cut into pieces (whole, byte by byte, sizes derived from the input); replies
 * follow first/last/code rules; parsed ports are never 0; formatters round-trip through the
 * parsers and refuse a buffer one byte short.
 */
#include "ftpp_proto.h"
#include "fuzz_replay.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* FNV-1a: a digest of everything a reader produced, to compare two ways of feeding it. */
static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

#define FNV_INIT 0xcbf29ce484222325ull

/* How a stream is cut into feeds: 0 whole, 1 byte by byte, 2 sizes from the input's bytes. */
typedef struct cutter {
    int mode;
    uint32_t state;
} cutter;

static size_t next_cut(cutter *c, size_t left)
{
    size_t n = left;
    if (c->mode == 1) {
        n = 1;
    } else if (c->mode == 2) {
        c->state ^= c->state << 13, c->state ^= c->state >> 17, c->state ^= c->state << 5;
        /* Mostly small pieces, now and then a large one. */
        n = 1 + (c->state & 0x0f ? c->state % 16 : c->state % 9000);
    }
    return n < left ? n : left;
}

static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    return memcmp(a, b, sizeof *a) == 0; /* the parsers zero the whole storage first */
}

static uint16_t addr_port(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    CHECK(ss->ss_family == AF_INET6);
    return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
}

/* A formatter's result, full size; then one byte short (-ENOSPC) and `small` bytes. */
typedef int (*fmt_fn)(char *buf, size_t len, const void *ctx);

static int fmt_check(fmt_fn f, const void *ctx, char *buf, size_t len, size_t small)
{
    int n = f(buf, len, ctx);
    CHECK(n > 0 && (size_t)n < len && strlen(buf) == (size_t)n);
    CHECK(n >= 2 && buf[n - 2] == '\r' && buf[n - 1] == '\n');
    char tmp[128];
    CHECK(f(tmp, (size_t)n, ctx) == -ENOSPC && tmp[0] == '\0');
    if (small > (size_t)n + 1)
        small = (size_t)n + 1;
    int m = f(small > 0 ? tmp : NULL, small, ctx);
    CHECK(small <= (size_t)n ? m == -ENOSPC : m == n);
    return n;
}

static int fmt_port(char *buf, size_t len, const void *ctx)
{
    return ftpp_format_port(buf, len, ctx);
}

static int fmt_eprt(char *buf, size_t len, const void *ctx)
{
    return ftpp_format_eprt(buf, len, ctx);
}

typedef struct pasv_ctx {
    const struct sockaddr *addr;
    uint16_t port;
} pasv_ctx;

static int fmt_227(char *buf, size_t len, const void *ctx)
{
    const pasv_ctx *p = ctx;
    return ftpp_format_227(buf, len, p->addr, p->port);
}

static int fmt_229(char *buf, size_t len, const void *ctx)
{
    const pasv_ctx *p = ctx;
    return ftpp_format_229(buf, len, p->port);
}

/* A formatted command, CRLF removed, back through ftpp_cmd_split: its argument. */
static char *cmd_arg(char *buf, int n, const char *verb_want)
{
    buf[n - 2] = '\0';
    char verb[5], *arg;
    CHECK(ftpp_cmd_split(buf, verb, &arg) == 0);
    CHECK(strcmp(verb, verb_want) == 0);
    return arg;
}

/* Every parser on one string, with its invariants and a formatter round trip when it parses. */
static void check_parsers(const char *s, size_t small)
{
    struct sockaddr_storage ss, back;
    char buf[128];
    int rc;

    rc = ftpp_parse_port(s, &ss);
    CHECK(rc == 0 || rc == -EINVAL);
    if (rc == 0) {
        CHECK(ss.ss_family == AF_INET && addr_port(&ss) != 0);
        int n = fmt_check(fmt_port, &ss, buf, sizeof buf, small);
        CHECK(ftpp_parse_port(cmd_arg(buf, n, "PORT"), &back) == 0);
        CHECK(same_addr(&ss, &back));
    }

    rc = ftpp_parse_eprt(s, &ss);
    CHECK(rc == 0 || rc == -EINVAL || rc == -EAFNOSUPPORT);
    if (rc == 0) {
        CHECK(ss.ss_family == AF_INET || ss.ss_family == AF_INET6);
        uint16_t port = addr_port(&ss);
        CHECK(port != 0);
        int n = fmt_check(fmt_eprt, &ss, buf, sizeof buf, small);
        CHECK(ftpp_parse_eprt(cmd_arg(buf, n, "EPRT"), &back) == 0);
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&ss;
        if (ss.ss_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
            /* Announced as the IPv4 peer it is. */
            const struct sockaddr_in *b4 = (const struct sockaddr_in *)&back;
            CHECK(back.ss_family == AF_INET && addr_port(&back) == port);
            CHECK(memcmp(&b4->sin_addr, &sin6->sin6_addr.s6_addr[12], 4) == 0);
        } else {
            CHECK(same_addr(&ss, &back));
        }
    }

    rc = ftpp_parse_epsv_arg(s);
    CHECK(rc == -EINVAL || (rc >= 0 && rc <= 3));

    rc = ftpp_parse_227(s, &ss);
    CHECK(rc == 0 || rc == -EINVAL);
    if (rc == 0) {
        CHECK(ss.ss_family == AF_INET && addr_port(&ss) != 0);
        pasv_ctx p = {(const struct sockaddr *)&ss, addr_port(&ss)};
        fmt_check(fmt_227, &p, buf, sizeof buf, small);
        CHECK(strncmp(buf, "227 ", 4) == 0);
        CHECK(ftpp_parse_227(buf + 4, &back) == 0 && same_addr(&ss, &back));
    }

    uint16_t port = 0;
    rc = ftpp_parse_229(s, &port);
    CHECK(rc == 0 || rc == -EINVAL);
    if (rc == 0) {
        CHECK(port != 0);
        pasv_ctx p = {NULL, port};
        fmt_check(fmt_229, &p, buf, sizeof buf, small);
        uint16_t again = 0;
        CHECK(strncmp(buf, "229 ", 4) == 0);
        CHECK(ftpp_parse_229(buf + 4, &again) == 0 && again == port);
    }
}

static bool is_upper(char c)
{
    return c >= 'A' && c <= 'Z';
}

/* The client stream, cut as `c` says; returns a digest of the lines and their statuses. */
static uint64_t run_lines(const uint8_t *data, size_t size, cutter *c, bool deep, size_t small)
{
    static ftpp_linebuf lb; /* 4 KiB: off the stack of libFuzzer's thread */
    ftpp_line_init(&lb);
    uint64_t h = FNV_INIT;
    size_t off = 0;
    while (off < size) {
        size_t piece = next_cut(c, size - off);
        size_t end = off + piece;
        while (off < end) {
            ftpp_line_status st;
            size_t n = ftpp_line_feed(&lb, (const char *)data + off, end - off, &st);
            CHECK(n > 0 && n <= end - off); /* progress, and nothing past what was given */
            off += n;
            if (st == FTPP_LINE_NONE) {
                CHECK(off == end);
                continue;
            }
            CHECK(st == FTPP_LINE_OK || st == FTPP_LINE_TOO_LONG || st == FTPP_LINE_BAD);
            CHECK(lb.len <= FTPP_CMD_MAX && lb.line[lb.len] == '\0');
            CHECK(strlen(lb.line) == lb.len);
            if (st != FTPP_LINE_OK)
                CHECK(lb.len == 0);
            for (size_t i = 0; i < lb.len; i++) {
                uint8_t b = (uint8_t)lb.line[i];
                CHECK(b == '\t' || (b >= 0x20 && b != 0x7f));
            }
            h = fnv(h, &st, sizeof st);
            h = fnv(h, lb.line, lb.len + 1);
            if (st != FTPP_LINE_OK || !deep)
                continue;

            char verb[5], *arg = NULL;
            int rc = ftpp_cmd_split(lb.line, verb, &arg);
            CHECK(rc == 0 || rc == -EINVAL);
            if (rc == 0) {
                size_t vl = strlen(verb);
                CHECK(vl == 3 || vl == 4);
                for (size_t i = 0; i < vl; i++)
                    CHECK(is_upper(verb[i]));
                CHECK(arg >= lb.line + vl && arg <= lb.line + lb.len);
                check_parsers(arg, small);
            } else {
                CHECK(verb[0] == '\0');
            }
        }
    }
    return h;
}

/* The backend stream, cut as `c` says; returns a digest of the reply lines. */
static uint64_t run_replies(const uint8_t *data, size_t size, cutter *c, bool deep, size_t small)
{
    static ftpp_reply_reader rr; /* 8 KiB */
    ftpp_reply_init(&rr);
    uint64_t h = FNV_INIT;
    bool in_reply = false; /* a reply started and has not ended */
    int code = 0;
    size_t off = 0;
    while (off < size) {
        size_t piece = next_cut(c, size - off);
        size_t end = off + piece;
        while (off < end) {
            ftpp_reply_line rl;
            bool got = false;
            size_t n = ftpp_reply_feed(&rr, (const char *)data + off, end - off, &rl, &got);
            CHECK(n > 0 && n <= end - off);
            off += n;
            if (!got) {
                CHECK(off == end);
                continue;
            }
            CHECK(rl.text != NULL && rl.len <= FTPP_REPLY_LINE_MAX && rl.text[rl.len] == '\0');
            CHECK(!rl.cut || rl.len == FTPP_REPLY_LINE_MAX);
            CHECK(rl.code == 0 || (rl.code >= 100 && rl.code <= 599));
            CHECK(rl.first == !in_reply);
            if (in_reply)
                CHECK(rl.code == code); /* every line of a reply carries its code */
            if (rl.code == 0)
                CHECK(rl.first && rl.last);
            if (rl.first && rl.code != 0) {
                CHECK(rl.len >= 3 && rl.text[0] == '0' + rl.code / 100);
                CHECK(rl.len == 3 || rl.text[3] == (rl.last ? ' ' : '-'));
            }
            in_reply = !rl.last;
            code = rl.code;
            uint8_t flags = (uint8_t)(rl.first | rl.last << 1 | rl.cut << 2);
            h = fnv(h, &rl.code, sizeof rl.code);
            h = fnv(h, &flags, 1);
            h = fnv(h, rl.text, rl.len + 1);
            if (deep)
                check_parsers(rl.len >= 4 ? rl.text + 4 : rl.text, small);
        }
    }
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint32_t seed = (uint32_t)fnv(FNV_INIT, data, size) | 1u;
    size_t small = size > 0 ? data[size - 1] % 64 : 0;

    /* Whole, with every parser on every line; then cut two other ways, same digest. */
    cutter whole = {0, 0};
    uint64_t lines = run_lines(data, size, &whole, true, small);
    uint64_t replies = run_replies(data, size, &whole, true, small);
    cutter random = {2, seed};
    CHECK(run_lines(data, size, &random, false, small) == lines);
    random.state = seed;
    CHECK(run_replies(data, size, &random, false, small) == replies);
    if (size <= 4096) { /* byte by byte is slow on the long inputs */
        cutter bytes = {1, 0};
        CHECK(run_lines(data, size, &bytes, false, small) == lines);
        CHECK(run_replies(data, size, &bytes, false, small) == replies);
    }

    /* The parsers on the raw input, as a string. */
    char *s = malloc(size + 1);
    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    check_parsers(s, small);
    free(s);
    return 0;
}

#ifndef DP_LIBFUZZER

/* Bytes that matter to line and address parsers: Telnet codes, CR, LF, NUL, delimiters,
 * digits. */
static const uint8_t interesting[] = {0x00, 0x09, 0x0a, 0x0d, 0x20, 0x7f, 0xff, 0xf4,
                                      0xf2, 0xfb, 0xfd, 0xf0, ',',  '|',  '(',  ')',
                                      '-',  '0',  '1',  '9',  ':',  '.',  '!',  'A'};

/* A long run of one byte: past FTPP_CMD_MAX and FTPP_REPLY_LINE_MAX, or a long digit
 * string. */
static size_t special(uint8_t *buf, size_t len, size_t pos, size_t max_input)
{
    static const size_t sizes[] = {12, 300, FTPP_CMD_MAX, FTPP_REPLY_LINE_MAX};
    size_t n = sizes[fuzz_rnd() % 4] + (size_t)(fuzz_rnd() % 3);
    static const uint8_t fill[] = {'9', '0', 'a', 0xff};
    if (len + n <= max_input) {
        memmove(buf + pos + n, buf + pos, len - pos);
        memset(buf + pos, fill[fuzz_rnd() % sizeof fill], n);
        len += n;
    }
    return len;
}

int main(int argc, char **argv)
{
    static const fuzz_replay r = {16384, interesting, sizeof interesting, special};
    return fuzz_replay_main(&r, argc, argv);
}

#endif
