/* dp_test_hook.h - drive a hook .so directly through its ABI, without the daemon's host:
 * a recording dph_host and thin lookup helpers, shared by the hook unit tests. */
#ifndef DP_TEST_HOOK_H
#define DP_TEST_HOOK_H

#include <pthread.h>

#include "dynproxy_hook.h"

/* What the hook called back; guarded by `mu` (hooks call from several threads). */
typedef struct dp_test_host_record {
    pthread_mutex_t mu;
    int logs[4];       /* per dph_log_level */
    char errors[4096]; /* error and warn lines, appended */
    int invalidate_all;
    int invalidate;
} dp_test_host_record;

extern dp_test_host_record dp_th;
extern const dph_host dp_test_host;

/* Zero the record (call in each test's setup). */
void dp_test_host_reset(void);
int dp_test_host_invalidate_all_count(void);

/* dlopen `path`, resolve and call the entry; fails the test on any error. */
const dph_ops *dp_test_hook_open(const char *path, void **dl);

/* ops->lookup for `user` with a zeroed route of the right struct_size. */
int dp_test_hook_lookup(const dph_ops *ops, void *state, const char *user, dph_proto proto,
                        dph_route *route);

/* Backend `user` lands on ("" when the status is not OK). Static buffer. */
const char *dp_test_hook_backend_of(const dph_ops *ops, void *state, const char *user,
                                    dph_proto proto);

#endif
