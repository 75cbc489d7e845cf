/* test_ftpp_proto.c - ftpp_proto: command lines (with Telnet), replies, data addresses. */
#include "ftpp_proto.h"
#include "dp_test_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

/* A string literal with its length, NULs included. */
#define LIT(s) s, sizeof(s) - 1

/* ---- helpers: the line reader ---- */

#define MAX_LINES 8

typedef struct got_line {
    ftpp_line_status st;
    size_t len;
    char text[FTPP_CMD_MAX + 1];
} got_line;

typedef struct got_lines {
    size_t n;
    got_line l[MAX_LINES];
} got_lines;

/* Feed data[from, to) to the reader, recording each line that ends. */
static void line_feed_range(ftpp_linebuf *lb, const char *data, size_t from, size_t to,
                            got_lines *out)
{
    while (from < to) {
        ftpp_line_status st;
        size_t n = ftpp_line_feed(lb, data + from, to - from, &st);
        ck_assert_uint_le(n, to - from);
        ck_assert_uint_gt(n, 0);
        from += n;
        if (st == FTPP_LINE_NONE) {
            ck_assert_uint_eq(from, to);
            continue;
        }
        ck_assert_uint_lt(out->n, MAX_LINES);
        got_line *g = &out->l[out->n++];
        g->st = st;
        g->len = lb->len;
        ck_assert_uint_le(lb->len, FTPP_CMD_MAX);
        ck_assert_int_eq(lb->line[lb->len], '\0');
        memcpy(g->text, lb->line, lb->len + 1);
    }
}

/* Feed data in pieces cut at cuts[0] < cuts[1] < ... */
static void line_feed_cut(const char *data, size_t len, const size_t *cuts, size_t ncuts,
                          got_lines *out)
{
    ftpp_linebuf lb;
    ftpp_line_init(&lb);
    out->n = 0;
    size_t from = 0;
    for (size_t i = 0; i < ncuts; i++) {
        line_feed_range(&lb, data, from, cuts[i], out);
        from = cuts[i];
    }
    line_feed_range(&lb, data, from, len, out);
}

static void same_lines(const got_lines *a, const got_lines *b, const char *what, size_t at)
{
    ck_assert_msg(a->n == b->n, "%s %zu: %zu lines, not %zu", what, at, b->n, a->n);
    for (size_t i = 0; i < a->n; i++) {
        ck_assert_msg(a->l[i].st == b->l[i].st, "%s %zu: line %zu status", what, at, i);
        ck_assert_msg(a->l[i].len == b->l[i].len, "%s %zu: line %zu len", what, at, i);
        ck_assert_msg(memcmp(a->l[i].text, b->l[i].text, a->l[i].len + 1) == 0,
                      "%s %zu: line %zu text", what, at, i);
    }
}

/* The same lines whatever the cuts: once, at every byte, every pair of cuts, byte by byte. */
static void line_check_splits(const char *data, size_t len, const got_lines *want)
{
    got_lines *got = malloc(sizeof *got);
    ck_assert_ptr_nonnull(got);
    line_feed_cut(data, len, NULL, 0, got);
    same_lines(want, got, "whole", 0);
    for (size_t k = 0; k <= len; k++) {
        line_feed_cut(data, len, &k, 1, got);
        same_lines(want, got, "cut at", k);
    }
    if (len <= 64) {
        for (size_t i = 0; i <= len; i++) {
            for (size_t j = i; j <= len; j++) {
                size_t cuts[2] = {i, j};
                line_feed_cut(data, len, cuts, 2, got);
                same_lines(want, got, "cuts at", i * 1000 + j);
            }
        }
    }
    ftpp_linebuf lb;
    ftpp_line_init(&lb);
    got->n = 0;
    for (size_t k = 0; k < len; k++)
        line_feed_range(&lb, data, k, k + 1, got);
    same_lines(want, got, "byte by byte", 0);
    free(got);
}

/* Expected results: status and text pairs, text NULL for a refused line. */
typedef struct want_line {
    ftpp_line_status st;
    const char *text;
} want_line;

static void line_expect(const char *data, size_t len, const want_line *w, size_t nw)
{
    got_lines *want = calloc(1, sizeof *want);
    ck_assert_ptr_nonnull(want);
    want->n = nw;
    for (size_t i = 0; i < nw; i++) {
        want->l[i].st = w[i].st;
        const char *t = w[i].text != NULL ? w[i].text : "";
        want->l[i].len = strlen(t);
        memcpy(want->l[i].text, t, want->l[i].len + 1);
    }
    line_check_splits(data, len, want);
    free(want);
}

/* ---- the line reader ---- */

START_TEST(line_simple)
{
    ftpp_linebuf lb;
    ftpp_line_init(&lb);
    ftpp_line_status st;
    ck_assert_uint_eq(ftpp_line_feed(&lb, LIT("USER anonymous\r\n"), &st), 16);
    ck_assert_int_eq(st, FTPP_LINE_OK);
    ck_assert_str_eq(lb.line, "USER anonymous");
    ck_assert_uint_eq(lb.len, 14);
    /* Nothing given: nothing consumed, no line. */
    ck_assert_uint_eq(ftpp_line_feed(&lb, NULL, 0, &st), 0);
    ck_assert_int_eq(st, FTPP_LINE_NONE);
    /* A partial line: all consumed, then completed. */
    ck_assert_uint_eq(ftpp_line_feed(&lb, LIT("PAS"), &st), 3);
    ck_assert_int_eq(st, FTPP_LINE_NONE);
    ck_assert_uint_eq(ftpp_line_feed(&lb, LIT("S x\r"), &st), 4);
    ck_assert_int_eq(st, FTPP_LINE_NONE);
    ck_assert_uint_eq(ftpp_line_feed(&lb, LIT("\n"), &st), 1);
    ck_assert_int_eq(st, FTPP_LINE_OK);
    ck_assert_str_eq(lb.line, "PASS x");
    ck_assert_uint_eq(lb.len, 6);

    /* A zeroed reader works as well as an initialised one. */
    ftpp_linebuf z;
    memset(&z, 0, sizeof z);
    ck_assert_uint_eq(ftpp_line_feed(&z, LIT("NOOP\r\n"), &st), 6);
    ck_assert_int_eq(st, FTPP_LINE_OK);
    ck_assert_str_eq(z.line, "NOOP");
}
END_TEST

START_TEST(line_several_in_one_feed)
{
    static const char in[] = "USER a\r\nPASS b\nQUIT\r\nNOO";
    ftpp_linebuf lb;
    ftpp_line_init(&lb);
    ftpp_line_status st;
    size_t off = 0, n;
    n = ftpp_line_feed(&lb, in + off, sizeof in - 1 - off, &st);
    ck_assert_uint_eq(n, 8);
    ck_assert_int_eq(st, FTPP_LINE_OK);
    ck_assert_str_eq(lb.line, "USER a");
    off += n;
    n = ftpp_line_feed(&lb, in + off, sizeof in - 1 - off, &st);
    ck_assert_uint_eq(n, 7);
    ck_assert_int_eq(st, FTPP_LINE_OK);
    ck_assert_str_eq(lb.line, "PASS b");
    off += n;
    n = ftpp_line_feed(&lb, in + off, sizeof in - 1 - off, &st);
    ck_assert_uint_eq(n, 6);
    ck_assert_int_eq(st, FTPP_LINE_OK);
    ck_assert_str_eq(lb.line, "QUIT");
    off += n;
    n = ftpp_line_feed(&lb, in + off, sizeof in - 1 - off, &st);
    ck_assert_uint_eq(n, 3);
    ck_assert_int_eq(st, FTPP_LINE_NONE);
    n = ftpp_line_feed(&lb, LIT("P\r\n"), &st);
    ck_assert_int_eq(st, FTPP_LINE_OK);
    ck_assert_str_eq(lb.line, "NOOP");

    static const want_line w[] = {
        {FTPP_LINE_OK, "USER a"}, {FTPP_LINE_OK, "PASS b"}, {FTPP_LINE_OK, "QUIT"}};
    line_expect(in, sizeof in - 1, w, 3);
}
END_TEST

START_TEST(line_bare_lf_and_empty)
{
    static const want_line w[] = {
        {FTPP_LINE_OK, "NOOP"}, {FTPP_LINE_OK, ""}, {FTPP_LINE_OK, ""}, {FTPP_LINE_OK, "PWD"}};
    line_expect(LIT("NOOP\n\r\n\nPWD\r\n"), w, 4);
}
END_TEST

START_TEST(line_split_everywhere)
{
    /* Telnet sequences, IAC IAC, CR LF and bare LF, each cut at every byte. */
    static const want_line w1[] = {{FTPP_LINE_OK, "USER anonymous"},
                                   {FTPP_LINE_OK, "RETR a\xff"
                                                  "b"},
                                   {FTPP_LINE_OK, "ABOR"},
                                   {FTPP_LINE_OK, "NOOP"}};
    line_expect(LIT("US\xff\xfb\x18"
                    "ER anonymous\r\n"
                    "RETR a\xff\xff"
                    "b\r\n"
                    "\xff\xf4\xff\xf2"
                    "ABOR\r\n"
                    "NO\xff\xf1OP\n"),
                w1, 4);

    static const want_line w2[] = {{FTPP_LINE_BAD, NULL}, {FTPP_LINE_OK, "CWD /"}};
    line_expect(LIT("ST\0R x\r\nCWD /\r\n"), w2, 2);

    /* CR then an IAC sequence then LF: the Telnet command is not part of the line. */
    static const want_line w3[] = {{FTPP_LINE_OK, "PWD"}};
    line_expect(LIT("PWD\r\xff\xf1\n"), w3, 1);
}
END_TEST

START_TEST(line_telnet_iac_iac)
{
    static const want_line w[] = {{FTPP_LINE_OK, "STOR \xff\xff"
                                                 "x\xff"}};
    line_expect(LIT("STOR \xff\xff\xff\xff"
                    "x\xff\xff\r\n"),
                w, 1);
    /* 0xFF is data: it does not make the line bad. */
    ftpp_linebuf lb;
    ftpp_line_init(&lb);
    ftpp_line_status st;
    ftpp_line_feed(&lb, LIT("\xff\xff\r\n"), &st);
    ck_assert_int_eq(st, FTPP_LINE_OK);
    ck_assert_uint_eq(lb.len, 1);
    ck_assert_int_eq((unsigned char)lb.line[0], 0xff);
}
END_TEST

START_TEST(line_telnet_negotiation)
{
    /* WILL, WONT, DO, DONT with their option byte, whatever that byte is (even LF or CR). */
    static const want_line w[] = {{FTPP_LINE_OK, "NOOP"}, {FTPP_LINE_OK, "PWD"}};
    line_expect(LIT("\xff\xfb\x01\xff\xfc\x03NO\xff\xfd\nOP\xff\xfe\r\r\nPWD\r\n"), w, 2);
    /* Every two-byte command from SE (240) to SB (250) is removed. */
    char in[64];
    size_t n = 0;
    for (int c = 240; c <= 250; c++) {
        in[n++] = (char)0xff;
        in[n++] = (char)c;
        if (c == 245)
            memcpy(in + n, "SY", 2), n += 2;
    }
    memcpy(in + n, "ST\r\n", 4);
    n += 4;
    static const want_line w2[] = {{FTPP_LINE_OK, "SYST"}};
    line_expect(in, n, w2, 1);
}
END_TEST

START_TEST(line_abor_urgent)
{
    /* RFC 959 §4.1.3: IAC IP, Synch (IAC DM), ABOR. */
    static const want_line w[] = {{FTPP_LINE_OK, "ABOR"}};
    line_expect(LIT("\xff\xf4\xff\xf2"
                    "ABOR\r\n"),
                w, 1);
    /* The same with the kernel having taken DM out as urgent data: a lone IAC before 'A'. */
    line_expect(LIT("\xff\xf4\xff"
                    "ABOR\r\n"),
                w, 1);
    /* A lone IAC never swallows the end of the line. */
    static const want_line w2[] = {{FTPP_LINE_OK, "ABOR"}, {FTPP_LINE_OK, "NOOP"}};
    line_expect(LIT("ABOR\xff\nNOOP\r\n"), w2, 2);
    static const want_line w3[] = {{FTPP_LINE_OK, "ABOR"}};
    line_expect(LIT("ABOR\xff\r\n"), w3, 1);
}
END_TEST

START_TEST(line_too_long)
{
    enum { BIG = 3 * FTPP_CMD_MAX };
    char *in = malloc(BIG + 64);
    ck_assert_ptr_nonnull(in);
    ftpp_linebuf lb;
    ftpp_line_status st;

    /* Exactly FTPP_CMD_MAX bytes: fine, with CRLF or bare LF. */
    memset(in, 'a', FTPP_CMD_MAX);
    memcpy(in + FTPP_CMD_MAX, "\r\n", 2);
    ftpp_line_init(&lb);
    ck_assert_uint_eq(ftpp_line_feed(&lb, in, FTPP_CMD_MAX + 2, &st), FTPP_CMD_MAX + 2);
    ck_assert_int_eq(st, FTPP_LINE_OK);
    ck_assert_uint_eq(lb.len, FTPP_CMD_MAX);
    ck_assert_uint_eq(strlen(lb.line), FTPP_CMD_MAX);
    in[FTPP_CMD_MAX] = '\n';
    ck_assert_uint_eq(ftpp_line_feed(&lb, in, FTPP_CMD_MAX + 1, &st), FTPP_CMD_MAX + 1);
    ck_assert_int_eq(st, FTPP_LINE_OK);
    ck_assert_uint_eq(lb.len, FTPP_CMD_MAX);

    /* One more byte: too long, with CRLF, with LF, and with a CR inside at the limit. */
    static const char *const tails[] = {"a\r\n", "a\n", "\ra\r\n", "\r\r\n"};
    for (size_t t = 0; t < sizeof tails / sizeof *tails; t++) {
        size_t n = FTPP_CMD_MAX + strlen(tails[t]);
        memset(in, 'a', FTPP_CMD_MAX);
        memcpy(in + FTPP_CMD_MAX, tails[t], strlen(tails[t]));
        memcpy(in + n, "NOOP\r\n", 6);
        ftpp_line_init(&lb);
        ck_assert_uint_eq(ftpp_line_feed(&lb, in, n + 6, &st), n);
        ck_assert_int_eq(st, FTPP_LINE_TOO_LONG);
        ck_assert_uint_eq(lb.len, 0);
        ck_assert_str_eq(lb.line, "");
        /* The next line is fine. */
        ck_assert_uint_eq(ftpp_line_feed(&lb, in + n, 6, &st), 6);
        ck_assert_int_eq(st, FTPP_LINE_OK);
        ck_assert_str_eq(lb.line, "NOOP");
    }

    /* A very long line, with Telnet sequences and NULs inside, fed in odd pieces. */
    for (size_t i = 0; i < BIG; i++)
        in[i] = i % 97 == 0 ? (char)0xff : i % 89 == 0 ? '\0' : 'x';
    memcpy(in + BIG, "\r\nSTAT\r\n", 8);
    static const want_line w[] = {{FTPP_LINE_TOO_LONG, NULL}, {FTPP_LINE_OK, "STAT"}};
    got_lines *want = calloc(1, sizeof *want), *got = calloc(1, sizeof *got);
    ck_assert_ptr_nonnull(want);
    ck_assert_ptr_nonnull(got);
    want->n = 2;
    want->l[0].st = w[0].st;
    want->l[1].st = w[1].st;
    want->l[1].len = 4;
    memcpy(want->l[1].text, "STAT", 5);
    for (size_t step = 1; step < 5000; step = step * 3 + 1) {
        size_t cuts[64], nc = 0;
        for (size_t c = step; c < BIG + 8 && nc < 64; c += step * 7 + 3)
            cuts[nc++] = c;
        line_feed_cut(in, BIG + 8, cuts, nc, got);
        same_lines(want, got, "step", step);
    }
    free(want);
    free(got);
    free(in);
}
END_TEST

START_TEST(line_bad)
{
    static const struct {
        const char *in;
        size_t len;
    } bad[] = {
        {LIT("US\0ER x\r\n")},      {LIT("\0\r\n")},
        {LIT("USER \x01\r\n")},     {LIT("\x1b[A\r\n")},
        {LIT("DELE a\x7f\r\n")},    {LIT("USER a\rPASS b\r\n")},
        {LIT("NOOP\r\r\n")},        {LIT("\rNOOP\r\n")},
        {LIT("RETR \x1f\n")},       {LIT("CWD a\x0b\r\n")},
        {LIT("CWD \r\xff\xffx\n")},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char in[64];
        memcpy(in, bad[i].in, bad[i].len);
        memcpy(in + bad[i].len, "PWD\r\n", 5);
        static const want_line w[] = {{FTPP_LINE_BAD, NULL}, {FTPP_LINE_OK, "PWD"}};
        line_expect(in, bad[i].len + 5, w, 2);
    }
    /* TAB and bytes >= 0x80 (UTF-8 paths) are fine. */
    static const want_line ok[] = {{FTPP_LINE_OK, "STOR a\tb caf\xc3\xa9"}};
    line_expect(LIT("STOR a\tb caf\xc3\xa9\r\n"), ok, 1);
    /* Too long and bad: reported too long. */
    char *in = malloc(FTPP_CMD_MAX + 16);
    ck_assert_ptr_nonnull(in);
    memset(in, 'b', FTPP_CMD_MAX + 10);
    in[3] = '\0';
    in[FTPP_CMD_MAX + 10] = '\n';
    ftpp_linebuf lb;
    ftpp_line_init(&lb);
    ftpp_line_status st;
    ck_assert_uint_eq(ftpp_line_feed(&lb, in, FTPP_CMD_MAX + 11, &st), FTPP_CMD_MAX + 11);
    ck_assert_int_eq(st, FTPP_LINE_TOO_LONG);
    free(in);
}
END_TEST

/* ---- ftpp_cmd_split ---- */

START_TEST(cmd_split_valid)
{
    static const struct {
        const char *line, *verb, *arg;
    } cases[] = {
        {"USER anonymous", "USER", "anonymous"},
        {"user Anonymous", "USER", "Anonymous"},
        {"pWd", "PWD", ""},
        {"CWD", "CWD", ""},
        {"CWD  a b ", "CWD", " a b "},
        {"EPSV ", "EPSV", ""},
        {"Xmkd dir", "XMKD", "dir"},
        {"PORT 1,2,3,4,5,6", "PORT", "1,2,3,4,5,6"},
        {"STOR \xff\tx", "STOR", "\xff\tx"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char line[64], verb[5];
        char *arg = NULL;
        strcpy(line, cases[i].line);
        ck_assert_msg(ftpp_cmd_split(line, verb, &arg) == 0, "'%s'", cases[i].line);
        ck_assert_str_eq(verb, cases[i].verb);
        ck_assert_str_eq(arg, cases[i].arg);
        ck_assert(arg >= line && arg <= line + strlen(line));
    }
}
END_TEST

START_TEST(cmd_split_invalid)
{
    static const char *const bad[] = {
        "",       " USER x", "US",       "U",       "USERS x",  "USERS",
        "US3R x", "123",     "USE1",     "USER\tx", "US-R",     "\xffUSER",
        "USER:x", "USER,",   "\xc3\x9c", "PW",      "PASSWORD",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char line[64], verb[5] = "XXXX";
        char *arg = NULL;
        strcpy(line, bad[i]);
        int rc = ftpp_cmd_split(line, verb, &arg);
        ck_assert_msg(rc == -EINVAL, "'%s' -> %d", bad[i], rc);
        ck_assert_str_eq(verb, "");
        ck_assert_ptr_eq(arg, line);
    }
}
END_TEST

/* ---- the reply reader ---- */

#define MAX_REPLIES 16

typedef struct got_reply {
    int code;
    bool first, last, cut;
    size_t len;
    char *text; /* malloc'd copy */
} got_reply;

typedef struct got_replies {
    size_t n;
    got_reply r[MAX_REPLIES];
} got_replies;

static void replies_free(got_replies *g)
{
    for (size_t i = 0; i < g->n; i++)
        free(g->r[i].text);
    g->n = 0;
}

static void reply_feed_range(ftpp_reply_reader *rr, const char *data, size_t from, size_t to,
                             got_replies *out)
{
    while (from < to) {
        ftpp_reply_line rl;
        bool got = true;
        size_t n = ftpp_reply_feed(rr, data + from, to - from, &rl, &got);
        ck_assert_uint_le(n, to - from);
        ck_assert_uint_gt(n, 0);
        from += n;
        if (!got) {
            ck_assert_uint_eq(from, to);
            continue;
        }
        ck_assert_uint_lt(out->n, MAX_REPLIES);
        ck_assert_uint_le(rl.len, FTPP_REPLY_LINE_MAX);
        ck_assert_int_eq(rl.text[rl.len], '\0');
        got_reply *g = &out->r[out->n++];
        g->code = rl.code;
        g->first = rl.first;
        g->last = rl.last;
        g->cut = rl.cut;
        g->len = rl.len;
        g->text = malloc(rl.len + 1);
        ck_assert_ptr_nonnull(g->text);
        memcpy(g->text, rl.text, rl.len + 1);
    }
}

static void reply_feed_cut(const char *data, size_t len, const size_t *cuts, size_t ncuts,
                           got_replies *out)
{
    ftpp_reply_reader *rr = malloc(sizeof *rr);
    ck_assert_ptr_nonnull(rr);
    ftpp_reply_init(rr);
    replies_free(out);
    size_t from = 0;
    for (size_t i = 0; i < ncuts; i++) {
        reply_feed_range(rr, data, from, cuts[i], out);
        from = cuts[i];
    }
    reply_feed_range(rr, data, from, len, out);
    free(rr);
}

typedef struct want_reply {
    const char *text;
    int code;
    bool first, last;
} want_reply;

static void same_replies(const want_reply *w, size_t nw, const got_replies *g, const char *what,
                         size_t at)
{
    ck_assert_msg(g->n == nw, "%s %zu: %zu lines, not %zu", what, at, g->n, nw);
    for (size_t i = 0; i < nw; i++) {
        ck_assert_msg(strcmp(g->r[i].text, w[i].text) == 0, "%s %zu: line %zu '%s' not '%s'", what,
                      at, i, g->r[i].text, w[i].text);
        ck_assert_uint_eq(g->r[i].len, strlen(w[i].text));
        ck_assert_msg(g->r[i].code == w[i].code, "%s %zu: line %zu code %d", what, at, i,
                      g->r[i].code);
        ck_assert_msg(g->r[i].first == w[i].first, "%s %zu: line %zu first", what, at, i);
        ck_assert_msg(g->r[i].last == w[i].last, "%s %zu: line %zu last", what, at, i);
        ck_assert(!g->r[i].cut);
    }
}

/* The same replies whatever the cuts. */
static void reply_expect(const char *data, size_t len, const want_reply *w, size_t nw)
{
    got_replies *g = calloc(1, sizeof *g);
    ck_assert_ptr_nonnull(g);
    reply_feed_cut(data, len, NULL, 0, g);
    same_replies(w, nw, g, "whole", 0);
    for (size_t k = 0; k <= len; k++) {
        reply_feed_cut(data, len, &k, 1, g);
        same_replies(w, nw, g, "cut at", k);
    }
    ftpp_reply_reader *rr = malloc(sizeof *rr);
    ck_assert_ptr_nonnull(rr);
    ftpp_reply_init(rr);
    replies_free(g);
    for (size_t k = 0; k < len; k++)
        reply_feed_range(rr, data, k, k + 1, g);
    same_replies(w, nw, g, "byte by byte", 0);
    replies_free(g);
    free(rr);
    free(g);
}

START_TEST(reply_single)
{
    ftpp_reply_reader rr;
    ftpp_reply_init(&rr);
    ftpp_reply_line rl;
    bool got;
    ck_assert_uint_eq(ftpp_reply_feed(&rr, LIT("220 Welcome\r\n331 x"), &rl, &got), 13);
    ck_assert(got);
    ck_assert_str_eq(rl.text, "220 Welcome");
    ck_assert_uint_eq(rl.len, 11);
    ck_assert_int_eq(rl.code, 220);
    ck_assert(rl.first && rl.last && !rl.cut);
    ck_assert_uint_eq(ftpp_reply_feed(&rr, LIT("331 x"), &rl, &got), 5);
    ck_assert(!got);
    ck_assert_uint_eq(ftpp_reply_feed(&rr, NULL, 0, &rl, &got), 0);
    ck_assert(!got);

    static const want_reply w[] = {
        {"220 Welcome", 220, true, true}, {"200", 200, true, true},   {"331 ", 331, true, true},
        {"599 x", 599, true, true},       {"100 x", 100, true, true}, {"230 ok", 230, true, true},
    };
    reply_expect(LIT("220 Welcome\r\n200\r\n331 \r\n599 x\r\n100 x\r\n230 ok\n"), w, 6);
}
END_TEST

START_TEST(reply_multi)
{
    static const want_reply w[] = {
        {"211-Features:", 211, true, false},
        {" MDTM", 211, false, false},
        {"211-still inside", 211, false, false},
        {"200 other code", 211, false, false},
        {"no code", 211, false, false},
        {"", 211, false, false},
        {"211x", 211, false, false},
        {"2110 x", 211, false, false},
        {"211 End", 211, false, true},
        {"230-a", 230, true, false},
        {"230", 230, false, true},
        {"150 ok", 150, true, true},
    };
    reply_expect(LIT("211-Features:\r\n MDTM\r\n211-still inside\r\n200 other code\r\n"
                     "no code\r\n\r\n211x\r\n2110 x\r\n211 End\r\n230-a\r\n230\r\n150 ok\r\n"),
                 w, 12);
}
END_TEST

START_TEST(reply_code_zero)
{
    /* Outside a multi-line reply, a line with no code is its own reply with code 0. */
    static const want_reply w[] = {
        {"hello", 0, true, true},  {"600 x", 0, true, true},    {"099 x", 0, true, true},
        {"22", 0, true, true},     {"2x0 x", 0, true, true},    {"220x", 0, true, true},
        {"2200 y", 0, true, true}, {"", 0, true, true},         {"\xff\xf4", 0, true, true},
        {"-220 a", 0, true, true}, {"220 ok", 220, true, true},
    };
    reply_expect(LIT("hello\r\n600 x\r\n099 x\r\n22\r\n2x0 x\r\n220x\r\n2200 y\r\n\r\n"
                     "\xff\xf4\r\n-220 a\r\n220 ok\r\n"),
                 w, 11);
}
END_TEST

START_TEST(reply_cut)
{
    enum { BIG = 20000 };
    char *in = malloc(BIG + 64);
    ck_assert_ptr_nonnull(in);
    ftpp_reply_reader *rr = malloc(sizeof *rr);
    ck_assert_ptr_nonnull(rr);
    ftpp_reply_line rl;
    bool got;

    /* Exactly FTPP_REPLY_LINE_MAX bytes plus CRLF: whole. */
    memcpy(in, "250-", 4);
    memset(in + 4, 'r', FTPP_REPLY_LINE_MAX - 4);
    memcpy(in + FTPP_REPLY_LINE_MAX, "\r\n", 2);
    ftpp_reply_init(rr);
    ck_assert_uint_eq(ftpp_reply_feed(rr, in, FTPP_REPLY_LINE_MAX + 2, &rl, &got),
                      FTPP_REPLY_LINE_MAX + 2);
    ck_assert(got && !rl.cut && rl.first && !rl.last);
    ck_assert_uint_eq(rl.len, FTPP_REPLY_LINE_MAX);
    ck_assert_int_eq(rl.code, 250);

    /* Longer lines inside it: cut, still part of the reply; the close still works. */
    static const char *const tails[] = {"r\r\n", "r\n", "\rr\r\n", "\r\r\n"};
    for (size_t t = 0; t < sizeof tails / sizeof *tails; t++) {
        memset(in, 'r', FTPP_REPLY_LINE_MAX);
        size_t n = FTPP_REPLY_LINE_MAX + strlen(tails[t]);
        memcpy(in + FTPP_REPLY_LINE_MAX, tails[t], strlen(tails[t]));
        ck_assert_uint_eq(ftpp_reply_feed(rr, in, n, &rl, &got), n);
        ck_assert(got && rl.cut && !rl.first && !rl.last);
        ck_assert_uint_eq(rl.len, FTPP_REPLY_LINE_MAX);
        ck_assert_uint_eq(strlen(rl.text), FTPP_REPLY_LINE_MAX);
        ck_assert_int_eq(rl.code, 250);
    }
    ck_assert_uint_eq(ftpp_reply_feed(rr, LIT("250 done\r\n"), &rl, &got), 10);
    ck_assert(got && !rl.cut && !rl.first && rl.last);
    ck_assert_str_eq(rl.text, "250 done");

    /* A very long single-line reply, fed in pieces: its code is kept, the next is whole. */
    memcpy(in, "550 ", 4);
    memset(in + 4, 'z', BIG - 4);
    memcpy(in + BIG, "\r\n226 ok\r\n", 10);
    for (size_t step = 1; step < BIG; step = step * 5 + 3) {
        got_replies g;
        memset(&g, 0, sizeof g);
        size_t cuts[64], nc = 0;
        for (size_t c = step; c < BIG + 10 && nc < 64; c += step * 3 + 1)
            cuts[nc++] = c;
        reply_feed_cut(in, BIG + 10, cuts, nc, &g);
        ck_assert_uint_eq(g.n, 2);
        ck_assert(g.r[0].cut && g.r[0].first && g.r[0].last);
        ck_assert_int_eq(g.r[0].code, 550);
        ck_assert_uint_eq(g.r[0].len, FTPP_REPLY_LINE_MAX);
        ck_assert(!g.r[1].cut);
        ck_assert_str_eq(g.r[1].text, "226 ok");
        replies_free(&g);
    }
    free(rr);
    free(in);
}
END_TEST

/* ---- data addresses ---- */

static void check_v4(const struct sockaddr_storage *ss, const char *addr, uint16_t port)
{
    const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
    ck_assert_int_eq(sin->sin_family, AF_INET);
    ck_assert_uint_eq(ntohs(sin->sin_port), port);
    char text[INET_ADDRSTRLEN];
    ck_assert_ptr_nonnull(inet_ntop(AF_INET, &sin->sin_addr, text, sizeof text));
    ck_assert_str_eq(text, addr);
}

static void check_v6(const struct sockaddr_storage *ss, const char *addr, uint16_t port)
{
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
    ck_assert_int_eq(sin6->sin6_family, AF_INET6);
    ck_assert_uint_eq(ntohs(sin6->sin6_port), port);
    ck_assert_uint_eq(sin6->sin6_scope_id, 0);
    ck_assert_uint_eq(sin6->sin6_flowinfo, 0);
    char text[INET6_ADDRSTRLEN];
    ck_assert_ptr_nonnull(inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof text));
    ck_assert_str_eq(text, addr);
}

static const char digits12[] = "999999999999";

START_TEST(parse_port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0xa5, sizeof ss);
    ck_assert_int_eq(ftpp_parse_port("192,0,2,1,4,1", &ss), 0);
    check_v4(&ss, "192.0.2.1", 1025);
    ck_assert_int_eq(ftpp_parse_port(" 10 , 0,0,1 ,255,255 ", &ss), 0);
    check_v4(&ss, "10.0.0.1", 65535);
    ck_assert_int_eq(ftpp_parse_port("010,0,0,1,0,1", &ss), 0);
    check_v4(&ss, "10.0.0.1", 1);
    ck_assert_int_eq(ftpp_parse_port("0,0,0,0,0,00000000000000000000000000000001", &ss), 0);
    check_v4(&ss, "0.0.0.0", 1);
    ck_assert_int_eq(ftpp_parse_port("255,255,255,255,0,21", &ss), 0);
    check_v4(&ss, "255.255.255.255", 21);

    char big[64];
    snprintf(big, sizeof big, "%s,1,2,3,4,5", digits12);
    char big2[64];
    snprintf(big2, sizeof big2, "1,2,3,4,5,%s", digits12);
    const char *bad[] = {
        "",
        " ",
        "1,2,3,4,5",
        "1,2,3,4,5,6,7",
        "1,2,3,4,5,",
        ",1,2,3,4,5",
        "1,,2,3,4,5,6",
        "256,0,0,1,1,1",
        "1,2,3,4,5,256",
        "1,2,3,4,256,1",
        "1,2,3,4,0,0", /* port 0 */
        "1,2,3,4,00,000",
        big,
        big2,
        "-1,2,3,4,5,6",
        "+1,2,3,4,5,6",
        "1,2,3,4,5,6x",
        "1,2,3,4,5,6\r",
        "1.2.3.4.5.6",
        "1,2,3,4,5,\t6",
        "1,2,3,4,5,0x6",
        "a,b,c,d,e,f",
        "1;2;3;4;5;6",
        "(1,2,3,4,5,6)",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        ck_assert_msg(ftpp_parse_port(bad[i], &ss) == -EINVAL, "'%s'", bad[i]);
}
END_TEST

START_TEST(parse_eprt)
{
    struct sockaddr_storage ss;
    memset(&ss, 0xa5, sizeof ss);
    ck_assert_int_eq(ftpp_parse_eprt("|1|192.0.2.1|6446|", &ss), 0);
    check_v4(&ss, "192.0.2.1", 6446);
    memset(&ss, 0xa5, sizeof ss);
    ck_assert_int_eq(ftpp_parse_eprt("|2|2001:db8::1|65535|", &ss), 0);
    check_v6(&ss, "2001:db8::1", 65535);
    ck_assert_int_eq(ftpp_parse_eprt("!1!10.0.0.1!1!", &ss), 0);
    check_v4(&ss, "10.0.0.1", 1);
    ck_assert_int_eq(ftpp_parse_eprt("#2#::1#0021#", &ss), 0);
    check_v6(&ss, "::1", 21);
    ck_assert_int_eq(ftpp_parse_eprt("~2~1:2:3:4:5:6:7:8~80~", &ss), 0);
    check_v6(&ss, "1:2:3:4:5:6:7:8", 80);
    ck_assert_int_eq(ftpp_parse_eprt("|2|::ffff:192.0.2.1|5000|", &ss), 0);
    check_v6(&ss, "::ffff:192.0.2.1", 5000);
    ck_assert_int_eq(ftpp_parse_eprt("|2|0000:0000:0000:0000:0000:ffff:255.255.255.255|1|", &ss),
                     0);
    check_v6(&ss, "::ffff:255.255.255.255", 1);
    ck_assert_int_eq(ftpp_parse_eprt("|01|192.0.2.1|6446|", &ss), 0);

    char big[64], bigaf[64];
    snprintf(big, sizeof big, "|1|1.2.3.4|%s|", digits12);
    snprintf(bigaf, sizeof bigaf, "|%s|1.2.3.4|5|", digits12);
    const char *inval[] = {
        "",
        "|",
        "||",
        "1|1.2.3.4|5|",   /* digit delimiter */
        "11111.2.3.4151", /* same */
        " 1 1.2.3.4 5 ",  /* space (32) is not printable here */
        "\x7f"
        "1\x7f"
        "1.2.3.4\x7f"
        "5\x7f",
        "\xff"
        "1\xff"
        "1.2.3.4\xff"
        "5\xff",
        "|1|1.2.3.4|0|",
        "|1|1.2.3.4|00000|",
        "|1|1.2.3.4|65536|",
        big,
        "|1|1.2.3.4|5",
        "|1|1.2.3.4|5||",
        "|1|1.2.3.4|5| ",
        "|1|1.2.3.4||",
        "|1|1.2.3.4|-5|",
        "|1|1.2.3.4|+5|",
        "|1||5|",
        "|1|1.2.3.4",
        "|1|",
        "||1.2.3.4|5|",
        "|x|1.2.3.4|5|",
        "|1x|1.2.3.4|5|",
        "|1|2001:db8::1|5|", /* family mismatch */
        "|2|1.2.3.4|5|",
        "|1|host.example|21|",
        "|1|1.2.3|21|",
        "|1|01.2.3.4|21|",
        "|1| 1.2.3.4|21|",
        "|2|fe80::1%eth0|21|",
        ":2:::1:21:", /* the delimiter inside an IPv6 address */
        ".1.1.2.3.4.5.",
        "|2|0000:0000:0000:0000:0000:0000:0000:0000:0000:0000|21|", /* > INET6_ADDRSTRLEN */
        "|1|1.2.3.4!5!",
    };
    for (size_t i = 0; i < sizeof inval / sizeof *inval; i++)
        ck_assert_msg(ftpp_parse_eprt(inval[i], &ss) == -EINVAL, "'%s' -> %d", inval[i],
                      ftpp_parse_eprt(inval[i], &ss));

    const char *noaf[] = {"|3|1.2.3.4|5|", "|0|1.2.3.4|5|", "|22|::1|5|", bigaf, "|3|x|y|"};
    for (size_t i = 0; i < sizeof noaf / sizeof *noaf; i++)
        ck_assert_msg(ftpp_parse_eprt(noaf[i], &ss) == -EAFNOSUPPORT, "'%s'", noaf[i]);
}
END_TEST

START_TEST(parse_epsv_arg)
{
    ck_assert_int_eq(ftpp_parse_epsv_arg(""), 0);
    ck_assert_int_eq(ftpp_parse_epsv_arg("1"), 1);
    ck_assert_int_eq(ftpp_parse_epsv_arg("2"), 2);
    ck_assert_int_eq(ftpp_parse_epsv_arg("ALL"), 3);
    ck_assert_int_eq(ftpp_parse_epsv_arg("all"), 3);
    ck_assert_int_eq(ftpp_parse_epsv_arg("aLl"), 3);
    const char *bad[] = {"0",  "3", "12",   "01", " 1",   "1 ",     "ALL ", " ALL",
                         "AL", "A", "ALLX", "-1", "\xff", digits12, "1\r"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        ck_assert_msg(ftpp_parse_epsv_arg(bad[i]) == -EINVAL, "'%s'", bad[i]);
}
END_TEST

START_TEST(parse_227)
{
    static const struct {
        const char *text, *addr;
        uint16_t port;
    } good[] = {
        {"Entering Passive Mode (192,0,2,1,4,1).", "192.0.2.1", 1025},
        {"Entering Passive Mode (192,0,2,1,4,1)", "192.0.2.1", 1025},
        {"=192,0,2,1,4,1", "192.0.2.1", 1025},
        {"Entering Passive Mode 10,0,0,1,255,255", "10.0.0.1", 65535},
        {"227 Entering Passive Mode (10,0,0,1,0,21)", "10.0.0.1", 21}, /* with the code */
        {"Mode 2 (10,0,0,1,0,21)", "10.0.0.1", 21},
        {"(1000,10,0,0,1,0,21)", "10.0.0.1", 21},
        {"(10, 0, 0, 1, 0, 21)", "10.0.0.1", 21},
        {"(1,2,3,4,5,6,7,8)", "1.2.3.4", 1286},
        {"x999999999999,1,2,3,4,5,6", "1.2.3.4", 1286},
    };
    struct sockaddr_storage ss;
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        memset(&ss, 0xa5, sizeof ss);
        ck_assert_msg(ftpp_parse_227(good[i].text, &ss) == 0, "'%s'", good[i].text);
        check_v4(&ss, good[i].addr, good[i].port);
    }
    const char *bad[] = {
        "",
        "Entering Passive Mode",
        "Entering Passive Mode (192,0,2,1,4)",
        "(256,0,0,1,4,1)",
        "(1,2,3,4,0,0)", /* port 0 */
        "(999999999999,1,2,3,4,5)",
        "(1,2,3,4,5,999999999999)",
        "(1.2.3.4.5.6)",
        "(1,2,3,4,5,,6)",
        "(-1,-2,-3,-4,-5,-6)",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        ck_assert_msg(ftpp_parse_227(bad[i], &ss) == -EINVAL, "'%s'", bad[i]);
}
END_TEST

START_TEST(parse_229)
{
    static const struct {
        const char *text;
        uint16_t port;
    } good[] = {
        {"Entering Extended Passive Mode (|||6446|)", 6446},
        {"Entering Extended Passive Mode (|||6446|).", 6446},
        {"(!!!1!)", 1},
        {"(|||65535|)", 65535},
        {"(|||000021|)", 21},
        {"Mode (ok) (|||21|)", 21},
        {"((((21()", 21},
        {"()))21))", 21},
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        uint16_t port = 0;
        ck_assert_msg(ftpp_parse_229(good[i].text, &port) == 0, "'%s'", good[i].text);
        ck_assert_uint_eq(port, good[i].port);
    }
    char big[64];
    snprintf(big, sizeof big, "(|||%s|)", digits12);
    const char *bad[] = {
        "",
        "(",
        "(|",
        "(||",
        "(|||",
        "(|||6",
        "(|||6|",
        "(|||0|)",
        "(|||65536|)",
        big,
        "(||6446|)",
        "(|||6446)",
        "(|||6446|",
        "(1116441)",
        "(   6446 )",
        "(|!|6446|)",
        "(|||-1|)",
        "(|||6446!)",
        "|||6446|",
        "(|1|2|3|)",
        "(|||6446 |)",
        "(|||+6446|)",
        "(\x7f\x7f\x7f"
        "1\x7f)",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        uint16_t port = 77;
        ck_assert_msg(ftpp_parse_229(bad[i], &port) == -EINVAL, "'%s'", bad[i]);
        ck_assert_uint_eq(port, 77);
    }
}
END_TEST

/* ---- formatters ---- */

static const struct sockaddr *sa_v4(struct sockaddr_storage *ss, const char *a, uint16_t port)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    memset(ss, 0, sizeof *ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    ck_assert_int_eq(inet_pton(AF_INET, a, &sin->sin_addr), 1);
    return (const struct sockaddr *)ss;
}

static const struct sockaddr *sa_v6(struct sockaddr_storage *ss, const char *a, uint16_t port)
{
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof *ss);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    ck_assert_int_eq(inet_pton(AF_INET6, a, &sin6->sin6_addr), 1);
    return (const struct sockaddr *)ss;
}

/* A formatted command back through ftpp_cmd_split: its argument, CRLF removed. */
static char *cmd_arg(char *buf, int n, const char *verb_want)
{
    ck_assert_int_gt(n, 2);
    ck_assert_int_eq(buf[n - 2], '\r');
    ck_assert_int_eq(buf[n - 1], '\n');
    buf[n - 2] = '\0';
    char verb[5], *arg;
    ck_assert_int_eq(ftpp_cmd_split(buf, verb, &arg), 0);
    ck_assert_str_eq(verb, verb_want);
    return arg;
}

/* The formatter's result is exactly `want`, and its length. */
#define FMT_IS(call, want)                                                                         \
    do {                                                                                           \
        int n_ = (call);                                                                           \
        ck_assert_str_eq(buf, want);                                                               \
        ck_assert_int_eq(n_, (int)strlen(want));                                                   \
    } while (0)

START_TEST(format_exact)
{
    char buf[128];
    struct sockaddr_storage ss;
    FMT_IS(ftpp_format_227(buf, sizeof buf, sa_v4(&ss, "192.0.2.1", 9), 1025),
           "227 Entering Passive Mode (192,0,2,1,4,1).\r\n");
    FMT_IS(ftpp_format_227(buf, sizeof buf, sa_v6(&ss, "::ffff:10.0.0.1", 9), 65535),
           "227 Entering Passive Mode (10,0,0,1,255,255).\r\n");
    FMT_IS(ftpp_format_229(buf, sizeof buf, 6446),
           "229 Entering Extended Passive Mode (|||6446|).\r\n");
    FMT_IS(ftpp_format_229(buf, sizeof buf, 1), "229 Entering Extended Passive Mode (|||1|).\r\n");
    FMT_IS(ftpp_format_port(buf, sizeof buf, sa_v4(&ss, "192.0.2.1", 1025)),
           "PORT 192,0,2,1,4,1\r\n");
    FMT_IS(ftpp_format_port(buf, sizeof buf, sa_v6(&ss, "::ffff:192.0.2.1", 1025)),
           "PORT 192,0,2,1,4,1\r\n");
    FMT_IS(ftpp_format_eprt(buf, sizeof buf, sa_v4(&ss, "192.0.2.1", 6446)),
           "EPRT |1|192.0.2.1|6446|\r\n");
    FMT_IS(ftpp_format_eprt(buf, sizeof buf, sa_v6(&ss, "2001:db8::1", 21)),
           "EPRT |2|2001:db8::1|21|\r\n");
    /* A v4-mapped address is an IPv4 peer. */
    FMT_IS(ftpp_format_eprt(buf, sizeof buf, sa_v6(&ss, "::ffff:192.0.2.1", 21)),
           "EPRT |1|192.0.2.1|21|\r\n");

    /* Families the formatters cannot write. */
    ck_assert_int_eq(ftpp_format_227(buf, sizeof buf, sa_v6(&ss, "2001:db8::1", 1), 1),
                     -EAFNOSUPPORT);
    ck_assert_int_eq(ftpp_format_port(buf, sizeof buf, sa_v6(&ss, "::1", 1)), -EAFNOSUPPORT);
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    const struct sockaddr *su = (const struct sockaddr *)&sun;
    ck_assert_int_eq(ftpp_format_227(buf, sizeof buf, su, 1), -EAFNOSUPPORT);
    ck_assert_int_eq(ftpp_format_port(buf, sizeof buf, su), -EAFNOSUPPORT);
    ck_assert_int_eq(ftpp_format_eprt(buf, sizeof buf, su), -EAFNOSUPPORT);
}
END_TEST

START_TEST(format_round_trip)
{
    uint32_t x = 2463534242u;
    for (int it = 0; it < 2000; it++) {
        uint8_t a[16];
        for (int i = 0; i < 16; i++) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            a[i] = (uint8_t)(x >> 8);
        }
        uint16_t port = (uint16_t)(it < 3 ? (it == 0 ? 1 : it == 1 ? 65535 : 21) : x >> 16);
        if (port == 0)
            port = 1;
        char buf[128], text[INET6_ADDRSTRLEN];
        struct sockaddr_storage ss, back;
        int n;

        ck_assert_ptr_nonnull(inet_ntop(AF_INET, a, text, sizeof text));
        const struct sockaddr *v4 = sa_v4(&ss, text, port);

        n = ftpp_format_227(buf, sizeof buf, v4, port);
        ck_assert_int_gt(n, 0);
        ck_assert_uint_eq(strlen(buf), (size_t)n);
        ck_assert_int_eq(ftpp_parse_227(buf + 4, &back), 0);
        check_v4(&back, text, port);

        uint16_t p = 0;
        n = ftpp_format_229(buf, sizeof buf, port);
        ck_assert_int_gt(n, 0);
        ck_assert_int_eq(ftpp_parse_229(buf + 4, &p), 0);
        ck_assert_uint_eq(p, port);

        n = ftpp_format_port(buf, sizeof buf, v4);
        ck_assert_int_eq(ftpp_parse_port(cmd_arg(buf, n, "PORT"), &back), 0);
        check_v4(&back, text, port);

        n = ftpp_format_eprt(buf, sizeof buf, v4);
        ck_assert_int_eq(ftpp_parse_eprt(cmd_arg(buf, n, "EPRT"), &back), 0);
        check_v4(&back, text, port);

        ck_assert_ptr_nonnull(inet_ntop(AF_INET6, a, text, sizeof text));
        const struct sockaddr *v6 = sa_v6(&ss, text, port);
        n = ftpp_format_eprt(buf, sizeof buf, v6);
        ck_assert_int_eq(ftpp_parse_eprt(cmd_arg(buf, n, "EPRT"), &back), 0);
        if (IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)a))
            ck_assert_int_eq(back.ss_family, AF_INET);
        else
            check_v6(&back, text, port);
    }
}
END_TEST

START_TEST(format_enospc)
{
    char buf[128];
    struct sockaddr_storage s4, s6;
    const struct sockaddr *v4 = sa_v4(&s4, "255.255.255.255", 65535);
    const struct sockaddr *v6 = sa_v6(&s6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535);
    for (int f = 0; f < 5; f++) {
        int full;
        switch (f) {
        case 0:
            full = ftpp_format_227(buf, sizeof buf, v4, 65535);
            break;
        case 1:
            full = ftpp_format_229(buf, sizeof buf, 65535);
            break;
        case 2:
            full = ftpp_format_port(buf, sizeof buf, v4);
            break;
        case 3:
            full = ftpp_format_eprt(buf, sizeof buf, v4);
            break;
        default:
            full = ftpp_format_eprt(buf, sizeof buf, v6);
            break;
        }
        ck_assert_int_gt(full, 0);
        char want[128];
        memcpy(want, buf, (size_t)full + 1);
        /* Every size up to the full line and its NUL: -ENOSPC and an empty buffer. */
        for (size_t len = 0; len <= (size_t)full + 1; len++) {
            char small[128];
            memset(small, 'q', sizeof small);
            int n;
            switch (f) {
            case 0:
                n = ftpp_format_227(len > 0 ? small : NULL, len, v4, 65535);
                break;
            case 1:
                n = ftpp_format_229(len > 0 ? small : NULL, len, 65535);
                break;
            case 2:
                n = ftpp_format_port(len > 0 ? small : NULL, len, v4);
                break;
            case 3:
                n = ftpp_format_eprt(len > 0 ? small : NULL, len, v4);
                break;
            default:
                n = ftpp_format_eprt(len > 0 ? small : NULL, len, v6);
                break;
            }
            if (len <= (size_t)full) {
                ck_assert_msg(n == -ENOSPC, "format %d len %zu -> %d", f, len, n);
                if (len > 0)
                    ck_assert_int_eq(small[0], '\0');
                ck_assert_int_eq(small[len], 'q'); /* nothing written past len */
            } else {
                ck_assert_int_eq(n, full);
                ck_assert_str_eq(small, want);
            }
        }
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ftpp_proto");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, line_simple);
    tcase_add_test(tc, line_several_in_one_feed);
    tcase_add_test(tc, line_bare_lf_and_empty);
    tcase_add_test(tc, line_split_everywhere);
    tcase_add_test(tc, line_telnet_iac_iac);
    tcase_add_test(tc, line_telnet_negotiation);
    tcase_add_test(tc, line_abor_urgent);
    tcase_add_test(tc, line_too_long);
    tcase_add_test(tc, line_bad);
    tcase_add_test(tc, cmd_split_valid);
    tcase_add_test(tc, cmd_split_invalid);
    tcase_add_test(tc, reply_single);
    tcase_add_test(tc, reply_multi);
    tcase_add_test(tc, reply_code_zero);
    tcase_add_test(tc, reply_cut);
    tcase_add_test(tc, parse_port);
    tcase_add_test(tc, parse_eprt);
    tcase_add_test(tc, parse_epsv_arg);
    tcase_add_test(tc, parse_227);
    tcase_add_test(tc, parse_229);
    tcase_add_test(tc, format_exact);
    tcase_add_test(tc, format_round_trip);
    tcase_add_test(tc, format_enospc);
    suite_add_tcase(s, tc);
    return dp_test_run_suite(s);
}
