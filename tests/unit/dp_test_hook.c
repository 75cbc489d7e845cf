/* dp_test_hook.c - a recording host and direct-ABI helpers for the hook unit tests. */
#include "dp_test_hook.h"

#include <check.h>
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

dp_test_host_record dp_th = {.mu = PTHREAD_MUTEX_INITIALIZER};

__attribute__((format(printf, 3, 4))) static void rec_log(void *ctx, dph_log_level level,
                                                          const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&dp_th.mu);
    if ((unsigned)level < 4)
        dp_th.logs[level]++;
    if (level <= DPH_LOG_WARN) {
        size_t n = strlen(dp_th.errors);
        snprintf(dp_th.errors + n, sizeof dp_th.errors - n, "%s\n", line);
    }
    pthread_mutex_unlock(&dp_th.mu);
}

static void rec_invalidate(void *ctx, const char *user)
{
    pthread_mutex_lock(&dp_th.mu);
    dp_th.invalidate++;
    pthread_mutex_unlock(&dp_th.mu);
}

static void rec_invalidate_all(void *ctx)
{
    pthread_mutex_lock(&dp_th.mu);
    dp_th.invalidate_all++;
    pthread_mutex_unlock(&dp_th.mu);
}

const dph_host dp_test_host = {
    .abi_version = DPH_ABI_VERSION,
    .struct_size = sizeof(dph_host),
    .log = rec_log,
    .invalidate = rec_invalidate,
    .invalidate_all = rec_invalidate_all,
};

void dp_test_host_reset(void)
{
    pthread_mutex_lock(&dp_th.mu);
    memset(dp_th.logs, 0, sizeof dp_th.logs);
    dp_th.errors[0] = '\0';
    dp_th.invalidate_all = dp_th.invalidate = 0;
    pthread_mutex_unlock(&dp_th.mu);
}

int dp_test_host_invalidate_all_count(void)
{
    pthread_mutex_lock(&dp_th.mu);
    int n = dp_th.invalidate_all;
    pthread_mutex_unlock(&dp_th.mu);
    return n;
}

const dph_ops *dp_test_hook_open(const char *path, void **dl)
{
    *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    ck_assert_msg(*dl != NULL, "dlopen: %s", dlerror());
    dph_entry_fn entry = (dph_entry_fn)dlsym(*dl, DPH_ENTRY_SYMBOL);
    ck_assert_ptr_nonnull(entry);
    const dph_ops *ops = entry(DPH_ABI_VERSION);
    ck_assert_ptr_nonnull(ops);
    return ops;
}

int dp_test_hook_lookup(const dph_ops *ops, void *state, const char *user, dph_proto proto,
                        dph_route *route)
{
    dph_lookup_req req = {.struct_size = sizeof req,
                          .user = user,
                          .client_ip = "192.0.2.1",
                          .proto = proto,
                          .timeout_ms = 1000};
    memset(route, 0, sizeof *route);
    route->struct_size = sizeof *route;
    return ops->lookup(state, &req, route);
}

const char *dp_test_hook_backend_of(const dph_ops *ops, void *state, const char *user,
                                    dph_proto proto)
{
    static dph_route r;
    ck_assert_int_eq(dp_test_hook_lookup(ops, state, user, proto, &r), 0);
    return r.status == DPH_ROUTE_OK ? r.backend : "";
}
