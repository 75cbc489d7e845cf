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

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

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

#include <dirent.h>

#define REPLAY_MAX_SEEDS 64
#define REPLAY_MAX_INPUT 4096
#define REPLAY_MUTATIONS 1000

typedef struct seed {
    uint8_t *data;
    size_t len;
} seed;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

/* xorshift64*: deterministic, so a failure reproduces on every run. */
static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static size_t load(const char *path, seed *out)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return 0;
    uint8_t *buf = malloc(REPLAY_MAX_INPUT);
    size_t n = buf != NULL ? fread(buf, 1, REPLAY_MAX_INPUT, f) : 0;
    fclose(f);
    out->data = buf;
    out->len = n;
    return buf != NULL ? 1 : 0;
}

/* One mutation of the kinds that matter to a header parser: flipped bits, boundary bytes,
 * digits and separators, cut or duplicated runs, a splice with another seed. */
static size_t mutate(uint8_t *buf, size_t len, const seed *seeds, size_t nseeds)
{
    static const uint8_t interesting[] = {0x00, 0x01, 0x0a, 0x0d, 0x20, 0x21, 0x22, 0x7f,
                                          0x80, 0xff, '0',  '9',  ':',  '.',  'P',  0x11};
    int rounds = 1 + (int)(rnd() % 4);
    for (int i = 0; i < rounds; i++) {
        size_t pos = len > 0 ? (size_t)(rnd() % len) : 0;
        switch (rnd() % 7) {
        case 0:
            if (len > 0)
                buf[pos] ^= (uint8_t)(1u << (rnd() % 8));
            break;
        case 1:
            if (len > 0)
                buf[pos] = interesting[rnd() % sizeof interesting];
            break;
        case 2: /* truncate */
            len = pos;
            break;
        case 3: /* delete a run */
            if (len > 0) {
                size_t n = 1 + (size_t)(rnd() % 8);
                if (n > len - pos)
                    n = len - pos;
                memmove(buf + pos, buf + pos + n, len - pos - n);
                len -= n;
            }
            break;
        case 4: /* duplicate a run */
            if (len > 0 && len < REPLAY_MAX_INPUT / 2) {
                size_t n = 1 + (size_t)(rnd() % 16);
                if (n > len - pos)
                    n = len - pos;
                memmove(buf + pos + n, buf + pos, len - pos);
                len += n;
            }
            break;
        case 5: /* v2 length field */
            if (len >= 16) {
                buf[14] = (uint8_t)rnd();
                buf[15] = (uint8_t)rnd();
            }
            break;
        case 6: { /* splice: our head, another seed's tail */
            const seed *o = &seeds[rnd() % nseeds];
            if (o->len > 0) {
                size_t from = (size_t)(rnd() % o->len);
                size_t n = o->len - from;
                if (pos + n > REPLAY_MAX_INPUT)
                    n = REPLAY_MAX_INPUT - pos;
                memcpy(buf + pos, o->data + from, n);
                len = pos + n;
            }
            break;
        }
        }
    }
    return len;
}

int main(int argc, char **argv)
{
    seed seeds[REPLAY_MAX_SEEDS];
    size_t nseeds = 0;
    for (int a = 1; a < argc; a++) {
        /* Sorted by name: readdir order is not stable, the mutation sequence must be. */
        struct dirent **names;
        int n = scandir(argv[a], &names, NULL, alphasort);
        if (n < 0) {
            if (nseeds < REPLAY_MAX_SEEDS)
                nseeds += load(argv[a], &seeds[nseeds]);
            continue;
        }
        for (int i = 0; i < n; i++) {
            char path[4096];
            if (names[i]->d_name[0] != '.' && nseeds < REPLAY_MAX_SEEDS) {
                snprintf(path, sizeof path, "%s/%s", argv[a], names[i]->d_name);
                nseeds += load(path, &seeds[nseeds]);
            }
            free(names[i]);
        }
        free(names);
    }
    if (nseeds == 0) {
        fprintf(stderr, "usage: %s corpus-dir-or-file...  (no seeds found)\n", argv[0]);
        return 2;
    }

    uint8_t *buf = malloc(REPLAY_MAX_INPUT);
    if (buf == NULL)
        return 2;
    size_t runs = 0;
    for (size_t s = 0; s < nseeds; s++) {
        LLVMFuzzerTestOneInput(seeds[s].data, seeds[s].len);
        runs++;
        for (int m = 0; m < REPLAY_MUTATIONS; m++) {
            memcpy(buf, seeds[s].data, seeds[s].len);
            size_t len = mutate(buf, seeds[s].len, seeds, nseeds);
            /* An exact-size copy so ASan sees any read past the end. */
            uint8_t *exact = malloc(len > 0 ? len : 1);
            if (exact == NULL)
                return 2;
            memcpy(exact, buf, len);
            LLVMFuzzerTestOneInput(exact, len);
            free(exact);
            runs++;
        }
    }
    for (size_t s = 0; s < nseeds; s++)
        free(seeds[s].data);
    free(buf);
    printf("%zu seeds, %zu inputs, no failure\n", nseeds, runs);
    return 0;
}

#endif
