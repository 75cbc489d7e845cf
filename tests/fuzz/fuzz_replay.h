/*
 * fuzz_replay.h - the corpus replayer every fuzz target shares when it is not built for
 * libFuzzer: load the seeds (sorted by name), run each, then REPLAY_MUTATIONS deterministic
 * mutations of it (xorshift64*, fixed seed: a failure reproduces on every run), each in an
 * exact-size buffer so ASan sees a read past the end.
 *
 * Also CHECK, and the entry point, for both builds of a target.
 *
 * A target describes what matters to its parser: its bytes of interest and one mutation of
 * its own (a length field, a long run past a line cap, ...).
 */
#ifndef FUZZ_REPLAY_H
#define FUZZ_REPLAY_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* A property every target asserts: print where and abort (libFuzzer and ASan see a crash). */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

typedef struct fuzz_replay {
    size_t max_input;           /* largest input (seeds are cut here) */
    const uint8_t *interesting; /* bytes a mutation may write */
    size_t ninteresting;
    /* The target's own mutation at `pos`; returns the new length (<= max_input). */
    size_t (*special)(uint8_t *buf, size_t len, size_t pos, size_t max_input);
} fuzz_replay;

/* The next pseudo-random number of the shared deterministic sequence. */
uint64_t fuzz_rnd(void);

/* main() of a replayer: argv names corpus directories or files. Returns the exit status. */
int fuzz_replay_main(const fuzz_replay *r, int argc, char **argv);

/* The target's entry point (libFuzzer's signature). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
