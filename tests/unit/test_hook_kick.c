/* test_hook_kick.c - dp_hook: the ABI 1.1 host->kick reaches the kick subscribers (and only
 * them), DPH_HOST_HAS tells a 1.0 host from a 1.1 one. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "dp_hook.h"
#include "dp_test_util.h"
#include "testhook.h"

#define TESTHOOK DP_TEST_HOOKDIR "/testhook.so"

static const dph_host *testhook_host(void)
{
    void *dl = dlopen(TESTHOOK, RTLD_NOW | RTLD_NOLOAD);
    ck_assert_ptr_nonnull(dl);
    testhook_control *c = dlsym(dl, "testhook_control_block");
    dlclose(dl);
    ck_assert_ptr_nonnull(c);
    return c->host;
}

static dp_hook *load_testhook(void)
{
    char err[512];
    dp_hook *h;
    ck_assert_int_eq(dp_hook_load(&h, TESTHOOK, NULL, err, sizeof err, NULL), 0);
    return h;
}

typedef struct rec {
    int calls;
    char last[64];
} rec;

static void on_event(void *arg, const char *user)
{
    rec *r = arg;
    r->calls++;
    snprintf(r->last, sizeof r->last, "%s", user ? user : "*");
}

START_TEST(kick_reaches_kick_subscribers_only)
{
    dp_hook *h = load_testhook();
    rec kicks1 = {0}, kicks2 = {0}, invals = {0};
    ck_assert_int_eq(dp_hook_subscribe_kick(h, on_event, &kicks1), 0);
    ck_assert_int_eq(dp_hook_subscribe_kick(h, on_event, &kicks2), 0);
    ck_assert_int_eq(dp_hook_subscribe(h, on_event, &invals), 0);

    const dph_host *host = testhook_host();
    ck_assert(DPH_HOST_HAS(host, kick));
    ck_assert_uint_eq(host->abi_version, DPH_ABI_VERSION);
    host->kick(host->ctx, "alice");
    ck_assert_int_eq(kicks1.calls, 1);
    ck_assert_int_eq(kicks2.calls, 1);
    ck_assert_str_eq(kicks1.last, "alice");
    ck_assert_int_eq(invals.calls, 0); /* a kick is not an invalidation */

    host->invalidate(host->ctx, "bob");
    ck_assert_int_eq(kicks1.calls, 1);
    ck_assert_int_eq(invals.calls, 1);

    /* An empty or NULL user is no request at all. */
    host->kick(host->ctx, "");
    host->kick(host->ctx, NULL);
    ck_assert_int_eq(kicks1.calls, 1);

    dp_hook_unsubscribe_kick(h, on_event, &kicks1);
    dp_hook_kick(h, "carol");
    ck_assert_int_eq(kicks1.calls, 1);
    ck_assert_int_eq(kicks2.calls, 2);
    ck_assert_str_eq(kicks2.last, "carol");
    dp_hook_free(h);
}
END_TEST

START_TEST(host_has_tells_abi_1_0)
{
    /* A 1.0 host's struct ends at invalidate_all: kick lies beyond struct_size. */
    dph_host old = {.abi_version = (1u << 16) | 0u,
                    .struct_size = (uint32_t)offsetof(dph_host, kick),
                    .kick = (void (*)(void *, const char *))1};
    ck_assert(!DPH_HOST_HAS(&old, kick));
    dph_host nokick = {.struct_size = sizeof(dph_host)};
    ck_assert(!DPH_HOST_HAS(&nokick, kick));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("hook_kick");
    TCase *tc = tcase_create("kick");
    tcase_add_test(tc, kick_reaches_kick_subscribers_only);
    tcase_add_test(tc, host_has_tells_abi_1_0);
    suite_add_tcase(s, tc);
    return dp_test_run_suite(s);
}
