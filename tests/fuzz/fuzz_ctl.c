/*
 * fuzz_ctl.c - fuzz target for the control protocol (dp_ctl_parse, dp_ctl_format_reply).
 *
 * Built as a libFuzzer target with clang and DP_FUZZ=ON, and always as a corpus replayer run
 * by ctest ("fuzz.ctl"); see fuzz_proxyproto.c. Beyond "does not crash" it checks what the
 * server relies on: a parsed request holds only command words of [a-z0-9_-], keys of the same
 * alphabet, and values free of control bytes other than TAB; and a reply framed around any
 * body reads back (dot-unstuffed, up to the terminator) as exactly that body's lines.
 */
#include "dp_ctl_proto.h"
#include "fuzz_replay.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int word_ok(const char *w)
{
    if (*w == '\0')
        return 0;
    for (; *w != '\0'; w++)
        if (!((*w >= 'a' && *w <= 'z') || (*w >= '0' && *w <= '9') || *w == '_' || *w == '-'))
            return 0;
    return 1;
}

static void check_parse(const uint8_t *data, size_t size)
{
    if (size >= DP_CTL_LINE_MAX)
        return;
    char line[DP_CTL_LINE_MAX];
    memcpy(line, data, size);
    line[size] = '\0';
    dp_ctl_request r;
    const char *why = NULL;
    int rc = dp_ctl_parse(line, &r, &why);
    CHECK(rc == 0 || rc == -EINVAL);
    if (rc != 0) {
        CHECK(why != NULL && *why != '\0');
        return;
    }
    CHECK(r.nwords >= 1 && r.nwords <= DP_CTL_WORDS_MAX && r.nargs <= DP_CTL_ARGS_MAX);
    for (size_t i = 0; i < r.nwords; i++)
        CHECK(word_ok(r.words[i]));
    for (size_t i = 0; i < r.nargs; i++) {
        CHECK(word_ok(r.args[i].key) && strcmp(r.args[i].key, "format") != 0);
        for (const unsigned char *c = (const unsigned char *)r.args[i].value; *c; c++)
            CHECK(*c >= 0x20 ? *c != 0x7f : *c == '\t');
        CHECK(dp_ctl_arg_get(&r, r.args[i].key) == r.args[i].value); /* keys are unique */
    }
}

/* Frame `body` and read it back the way a client does. */
static void check_framing(const uint8_t *data, size_t size)
{
    dp_ctl_buf out = {0};
    dp_ctl_format_reply(&out, 200, "ok", (const char *)data, size);
    CHECK(!out.failed && out.len >= 7 && memcmp(out.data, "200 ok\n", 7) == 0);
    CHECK(out.len >= 2 && memcmp(out.data + out.len - 2, ".\n", 2) == 0);
    /* Read lines after the status line until "."; unstuff; compare with the body's lines. */
    size_t pos = 7, bpos = 0;
    for (;;) {
        char *nl = memchr(out.data + pos, '\n', out.len - pos);
        CHECK(nl != NULL);
        size_t n = (size_t)(nl - (out.data + pos));
        const char *l = out.data + pos;
        pos += n + 1;
        if (n == 1 && l[0] == '.')
            break;
        if (n > 0 && l[0] == '.') {
            CHECK(n >= 2 && l[1] == '.');
            l++;
            n--;
        }
        CHECK(bpos < size || (bpos == size && n == 0));
        const char *bnl = memchr(data + bpos, '\n', size - bpos);
        size_t bn = bnl != NULL ? (size_t)(bnl - ((const char *)data + bpos)) : size - bpos;
        CHECK(bn == n && memcmp(l, data + bpos, n) == 0);
        bpos += bn + 1;
    }
    CHECK(pos == out.len && bpos >= size);
    dp_ctl_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_parse(data, size);
    check_framing(data, size);
    return 0;
}

#ifndef DP_LIBFUZZER

/* Bytes that matter to the request grammar and the framing. */
static const uint8_t interesting[] = {0x00, 0x01, '\t', '\n', '\r', ' ', '"', '\\',
                                      '=',  '.',  'a',  'z',  '0',  '_', '-', 0x7f};

/* A quote or an escape at `pos`: the quoted-value state machine. */
static size_t special(uint8_t *buf, size_t len, size_t pos, size_t max_input)
{
    (void)max_input;
    if (pos < len)
        buf[pos] = (fuzz_rnd() & 1) ? '"' : '\\';
    return len;
}

int main(int argc, char **argv)
{
    static const fuzz_replay r = {DP_CTL_LINE_MAX, interesting, sizeof interesting, special};
    return fuzz_replay_main(&r, argc, argv);
}

#endif
