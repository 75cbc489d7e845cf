/* fuzz_replay.c - the shared corpus replayer (see fuzz_replay.h). */
#include "fuzz_replay.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REPLAY_MAX_SEEDS 64
#define REPLAY_MUTATIONS 1000

typedef struct seed {
    uint8_t *data;
    size_t len;
} seed;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

/* xorshift64*: deterministic, so a failure reproduces on every run. */
uint64_t fuzz_rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static size_t load(const char *path, seed *out, size_t max_input)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return 0;
    uint8_t *buf = malloc(max_input);
    size_t n = buf != NULL ? fread(buf, 1, max_input, f) : 0;
    fclose(f);
    out->data = buf;
    out->len = n;
    return buf != NULL ? 1 : 0;
}

/* One to four mutations: flipped bits, the target's bytes of interest, cut, deleted or
 * duplicated runs, the target's own mutation, a splice with another seed. */
static size_t mutate(const fuzz_replay *r, uint8_t *buf, size_t len, const seed *seeds,
                     size_t nseeds)
{
    int rounds = 1 + (int)(fuzz_rnd() % 4);
    for (int i = 0; i < rounds; i++) {
        size_t pos = len > 0 ? (size_t)(fuzz_rnd() % len) : 0;
        switch (fuzz_rnd() % 7) {
        case 0:
            if (len > 0)
                buf[pos] ^= (uint8_t)(1u << (fuzz_rnd() % 8));
            break;
        case 1:
            if (len > 0)
                buf[pos] = r->interesting[fuzz_rnd() % r->ninteresting];
            break;
        case 2: /* truncate */
            len = pos;
            break;
        case 3: /* delete a run */
            if (len > 0) {
                size_t n = 1 + (size_t)(fuzz_rnd() % 8);
                if (n > len - pos)
                    n = len - pos;
                memmove(buf + pos, buf + pos + n, len - pos - n);
                len -= n;
            }
            break;
        case 4: /* duplicate a run */
            if (len > 0 && len < r->max_input / 2) {
                size_t n = 1 + (size_t)(fuzz_rnd() % 16);
                if (n > len - pos)
                    n = len - pos;
                memmove(buf + pos + n, buf + pos, len - pos);
                len += n;
            }
            break;
        case 5:
            len = r->special(buf, len, pos, r->max_input);
            break;
        case 6: { /* splice: our head, another seed's tail */
            const seed *o = &seeds[fuzz_rnd() % nseeds];
            if (o->len > 0) {
                size_t from = (size_t)(fuzz_rnd() % o->len);
                size_t n = o->len - from;
                if (pos + n > r->max_input)
                    n = r->max_input - pos;
                memcpy(buf + pos, o->data + from, n);
                len = pos + n;
            }
            break;
        }
        }
    }
    return len;
}

int fuzz_replay_main(const fuzz_replay *r, int argc, char **argv)
{
    seed seeds[REPLAY_MAX_SEEDS];
    size_t nseeds = 0;
    for (int a = 1; a < argc; a++) {
        /* Sorted by name: readdir order is not stable, the mutation sequence must be. */
        struct dirent **names;
        int n = scandir(argv[a], &names, NULL, alphasort);
        if (n < 0) {
            if (nseeds < REPLAY_MAX_SEEDS)
                nseeds += load(argv[a], &seeds[nseeds], r->max_input);
            continue;
        }
        for (int i = 0; i < n; i++) {
            char path[4096];
            if (names[i]->d_name[0] != '.' && nseeds < REPLAY_MAX_SEEDS) {
                snprintf(path, sizeof path, "%s/%s", argv[a], names[i]->d_name);
                nseeds += load(path, &seeds[nseeds], r->max_input);
            }
            free(names[i]);
        }
        free(names);
    }
    if (nseeds == 0) {
        fprintf(stderr, "usage: %s corpus-dir-or-file...  (no seeds found)\n", argv[0]);
        return 2;
    }

    uint8_t *buf = malloc(r->max_input);
    if (buf == NULL)
        return 2;
    size_t runs = 0;
    for (size_t s = 0; s < nseeds; s++) {
        LLVMFuzzerTestOneInput(seeds[s].data, seeds[s].len);
        runs++;
        for (int m = 0; m < REPLAY_MUTATIONS; m++) {
            memcpy(buf, seeds[s].data, seeds[s].len);
            size_t len = mutate(r, buf, seeds[s].len, seeds, nseeds);
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
