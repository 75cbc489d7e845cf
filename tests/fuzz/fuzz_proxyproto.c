/*
 * fuzz_proxyproto.c - fuzz target for dp_proxy_parse.
 *
 * Built two ways from this one file:
 *   - with clang and -fsanitize=fuzzer (DP_LIBFUZZER defined): a libFuzzer target;
 *   - otherwise: a corpus replayer with its own main(), run by ctest (label "fuzz") so that the
 *     gcc ASan build exercises the same checks on the seed corpus plus deterministic mutations.
 *
 * Beyond "does not crash", the target checks the properties the reader relies on: a complete
 * header never claims more bytes than it was given, every strict prefix of it says "need more",
 * and the verdict on a prefix never contradicts the verdict on a longer buffer.
 */
#include "dp_proxyproto.h"
#include "fuzz_replay.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check_one(const uint8_t *data, size_t size, size_t max_len)
{
    dp_proxy_info info;
    ssize_t rc = dp_proxy_parse(data, size, max_len, &info);
    CHECK(rc == 0 || rc == -EPROTO || rc == -EMSGSIZE || rc > 0);
    if (rc > 0) {
        CHECK((size_t)rc <= size);
        CHECK(info.version == 1 || info.version == 2);
        CHECK(info.version == 1 ? rc <= DP_PROXY_V1_MAX : (size_t)rc <= max_len);
        if (info.local) {
            CHECK(info.src_len == 0 && info.dst_len == 0);
        } else {
            CHECK(info.src.ss_family == info.dst.ss_family);
            CHECK(info.src_len > 0 && info.src_len == info.dst_len);
        }
        /* The header alone parses the same: it does not depend on the bytes after it. */
        dp_proxy_info again;
        CHECK(dp_proxy_parse(data, (size_t)rc, max_len, &again) == rc);
        CHECK(again.version == info.version && again.local == info.local);
        CHECK(again.src_len == info.src_len && again.dst_len == info.dst_len);
        CHECK(memcmp(&again.src, &info.src, info.src_len) == 0);
        CHECK(memcmp(&again.dst, &info.dst, info.dst_len) == 0);
    }

    /* Prefixes: quadratic, so only for inputs of header size. */
    size_t limit = size < 600 ? size : 0;
    for (size_t k = 0; k < limit; k++) {
        ssize_t p = dp_proxy_parse(data, k, max_len, NULL);
        if (rc > 0 && k < (size_t)rc)
            CHECK(p == 0); /* a strict prefix of a header needs more */
        else if (rc > 0)
            CHECK(p == rc); /* from rc on, the same header */
        else if (rc == 0)
            CHECK(p == 0); /* never refuse what later turns out live */
        else
            CHECK(p == 0 || p == rc); /* once refused, for the same reason */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_one(data, size, DP_PROXY_DEFAULT_MAX);
    /* A small cap too, to reach the -EMSGSIZE paths with short inputs. */
    check_one(data, size, size > 0 ? 16 + data[0] % 64 : 16);
    return 0;
}

#ifndef DP_LIBFUZZER

/* Bytes that matter to a header parser: boundaries, digits and separators. */
static const uint8_t interesting[] = {0x00, 0x01, 0x0a, 0x0d, 0x20, 0x21, 0x22, 0x7f,
                                      0x80, 0xff, '0',  '9',  ':',  '.',  'P',  0x11};

/* The v2 length field. */
static size_t special(uint8_t *buf, size_t len, size_t pos, size_t max_input)
{
    (void)pos;
    (void)max_input;
    if (len >= 16) {
        buf[14] = (uint8_t)fuzz_rnd();
        buf[15] = (uint8_t)fuzz_rnd();
    }
    return len;
}

int main(int argc, char **argv)
{
    static const fuzz_replay r = {4096, interesting, sizeof interesting, special};
    return fuzz_replay_main(&r, argc, argv);
}

#endif
