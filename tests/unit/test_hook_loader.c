/* test_hook_loader.c - dp_hook: every load error path, async calls, deadlines, cancel,
 * invalidation fan-out. */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "dp_hook.h"
#include "dp_test_util.h"
#include "dp_util.h"
#include "testhook.h"

#define TESTHOOK DP_TEST_HOOKDIR "/testhook.so"

static char err[1024];
static const char *key;

static int load(dp_hook **h, const char *path, const dph_param *params)
{
    err[0] = '\0';
    return dp_hook_load(h, path, params, err, sizeof err, &key);
}

static testhook_control *control(void)
{
    void *dl = dlopen(TESTHOOK, RTLD_NOW | RTLD_NOLOAD);
    ck_assert_ptr_nonnull(dl);
    testhook_control *c = dlsym(dl, "testhook_control_block");
    dlclose(dl);
    ck_assert_ptr_nonnull(c);
    return c;
}

START_TEST(missing_file)
{
    dp_hook *h = (dp_hook *)1;
    ck_assert_int_eq(load(&h, "/nonexistent/dir/x.so", NULL), -ENOENT);
    ck_assert_ptr_null(h);
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/dir/x.so"));
    ck_assert_ptr_nonnull(strstr(err, "No such file"));
}
END_TEST

START_TEST(bare_name_uses_hookdir)
{
    dp_hook *h;
    ck_assert_int_eq(load(&h, "surely-not-installed.so", NULL), -ENOENT);
    ck_assert_ptr_nonnull(strstr(err, "lib/dynproxy/hooks/surely-not-installed.so"));
}
END_TEST

START_TEST(not_a_shared_object)
{
    dp_hook *h;
    const char *p = dp_test_write_file("fake.so", "this is not an ELF file\n");
    ck_assert_int_eq(load(&h, p, NULL), -ELIBBAD);
    ck_assert_ptr_nonnull(strstr(err, "cannot load"));
}
END_TEST

START_TEST(missing_symbol)
{
    dp_hook *h;
    ck_assert_int_eq(load(&h, DP_TEST_HOOKDIR "/bad_nosym.so", NULL), -ENOSYS);
    ck_assert_ptr_nonnull(strstr(err, "does not export dynproxy_hook_entry"));
}
END_TEST

START_TEST(wrong_abi_major)
{
    dp_hook *h;
    ck_assert_int_eq(load(&h, DP_TEST_HOOKDIR "/bad_abi.so", NULL), -EPROTO);
    ck_assert_ptr_nonnull(strstr(err, "ABI version 2.0"));
}
END_TEST

START_TEST(struct_too_small)
{
    dp_hook *h;
    ck_assert_int_eq(load(&h, DP_TEST_HOOKDIR "/bad_small.so", NULL), -EPROTO);
    ck_assert_ptr_nonnull(strstr(err, "ops struct of 8 bytes"));
}
END_TEST

START_TEST(entry_refuses_host)
{
    dp_hook *h;
    ck_assert_int_eq(load(&h, DP_TEST_HOOKDIR "/bad_null.so", NULL), -EPROTO);
    ck_assert_ptr_nonnull(strstr(err, "refused host ABI"));
}
END_TEST

START_TEST(required_op_missing)
{
    dp_hook *h;
    ck_assert_int_eq(load(&h, DP_TEST_HOOKDIR "/bad_nolookup.so", NULL), -EPROTO);
    ck_assert_ptr_nonnull(strstr(err, "required"));
}
END_TEST

START_TEST(init_refuses_with_key)
{
    dp_hook *h;
    const dph_param params[] = {{"conninfo", "x"}, {"refuse", "conninfo"}, {NULL, NULL}};
    ck_assert_int_eq(load(&h, TESTHOOK, params), -EINVAL);
    ck_assert_ptr_nonnull(key);
    ck_assert_str_eq(key, "conninfo");
    ck_assert_ptr_nonnull(strstr(err, "refused as asked"));
}
END_TEST

/* ---- async calls ---- */

typedef struct result {
    int calls, status;
    dph_route route;
    size_t nkeys;
    char first_key[128];
    uint64_t at_ms;
} result;

static void on_lookup(void *arg, int status, const dph_route *route)
{
    result *r = arg;
    r->calls++;
    r->status = status;
    r->route = *route;
    r->at_ms = dp_now_ms();
}

static void on_keys(void *arg, int status, const char *const *keys, size_t n)
{
    result *r = arg;
    r->calls++;
    r->status = status;
    r->nkeys = n;
    if (n > 0)
        snprintf(r->first_key, sizeof r->first_key, "%s", keys[0]);
}

static dp_hook *load_testhook(void)
{
    dp_hook *h;
    ck_assert_int_eq(load(&h, TESTHOOK, NULL), 0);
    ck_assert_str_eq(dp_hook_name(h), "testhook");
    testhook_control *c = control();
    atomic_store(&c->delay_ms, 0);
    atomic_store(&c->fail, 0);
    return h;
}

START_TEST(lookup_async_ok)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    dp_hook *h = load_testhook();
    result r = {0};
    dp_hook_req req = {.user = "alice", .proto = DPH_PROTO_SSH, .timeout_ms = 2000};
    ck_assert_int_eq(dp_hook_lookup_async(h, &loop, &req, on_lookup, &r, NULL), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(r.calls, 1);
    ck_assert_int_eq(r.status, 0);
    ck_assert_int_eq(r.route.status, DPH_ROUTE_OK);
    ck_assert_str_eq(r.route.backend_user, "alice");
    ck_assert_uint_eq(dp_hook_calls_in_flight(h), 0);

    result k = {0};
    ck_assert_int_eq(dp_hook_keys_async(h, &loop, &req, 2, on_keys, &k, NULL), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(k.status, 0);
    ck_assert_uint_eq(k.nkeys, 2); /* the hook offers 3; max_keys caps */
    ck_assert_str_eq(k.first_key, "ssh-ed25519 AAAAkey0 alice");
    dp_hook_free(h);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

START_TEST(keys_not_supported)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    dp_hook *h;
    ck_assert_int_eq(load(&h, DP_TEST_HOOKDIR "/bad_nokeys.so", NULL), 0);
    result k = {0};
    dp_hook_req req = {.user = "alice", .proto = DPH_PROTO_SSH, .timeout_ms = 100};
    ck_assert_int_eq(dp_hook_keys_async(h, &loop, &req, 8, on_keys, &k, NULL), -ENOTSUP);
    dp_hook_free(h);
    uv_loop_close(&loop);
}
END_TEST

START_TEST(lookup_hook_error_is_tempfail)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    dp_hook *h = load_testhook();
    atomic_store(&control()->fail, 1);
    result r = {0};
    dp_hook_req req = {.user = "alice", .proto = DPH_PROTO_FTP, .timeout_ms = 2000};
    ck_assert_int_eq(dp_hook_lookup_async(h, &loop, &req, on_lookup, &r, NULL), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(r.status, -EIO);
    ck_assert_int_eq(r.route.status, DPH_ROUTE_TEMPFAIL);
    atomic_store(&control()->fail, 0);
    dp_hook_free(h);
    uv_loop_close(&loop);
}
END_TEST

START_TEST(lookup_deadline)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    dp_hook *h = load_testhook();
    atomic_store(&control()->delay_ms, 3000); /* far past the deadline, even on a slow box */
    result r = {0};
    dp_hook_req req = {.user = "slow", .proto = DPH_PROTO_SSH, .timeout_ms = 50};
    uint64_t t0 = dp_now_ms();
    ck_assert_int_eq(dp_hook_lookup_async(h, &loop, &req, on_lookup, &r, NULL), 0);
    uv_run(&loop, UV_RUN_DEFAULT); /* returns once the thread's late answer was discarded */
    ck_assert_int_eq(r.calls, 1);
    ck_assert_int_eq(r.status, -ETIMEDOUT);
    ck_assert_int_eq(r.route.status, DPH_ROUTE_TEMPFAIL);
    uint64_t took = r.at_ms - t0;
    ck_assert_msg(took >= 45 && took < 2000, "deadline answered after %llu ms",
                  (unsigned long long)took);
    ck_assert_uint_eq(dp_hook_calls_in_flight(h), 0);
    atomic_store(&control()->delay_ms, 0);
    dp_hook_free(h);
    uv_loop_close(&loop);
}
END_TEST

START_TEST(lookup_cancel)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    dp_hook *h = load_testhook();
    atomic_store(&control()->delay_ms, 100);
    result r = {0};
    dp_hook_call *call = NULL;
    dp_hook_req req = {.user = "bob", .proto = DPH_PROTO_SSH, .timeout_ms = 2000};
    ck_assert_int_eq(dp_hook_lookup_async(h, &loop, &req, on_lookup, &r, &call), 0);
    dp_hook_call_cancel(call);
    ck_assert_int_eq(r.calls, 0); /* never synchronously */
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(r.calls, 1);
    ck_assert_int_eq(r.status, -ECANCELED);
    atomic_store(&control()->delay_ms, 0);
    dp_hook_free(h);
    uv_loop_close(&loop);
}
END_TEST

START_TEST(bad_user_refused)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    dp_hook *h = load_testhook();
    result r = {0};
    char longname[300];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    dp_hook_req req = {.user = "", .proto = DPH_PROTO_SSH, .timeout_ms = 100};
    ck_assert_int_eq(dp_hook_lookup_async(h, &loop, &req, on_lookup, &r, NULL), -EINVAL);
    req.user = longname;
    ck_assert_int_eq(dp_hook_lookup_async(h, &loop, &req, on_lookup, &r, NULL), -ENAMETOOLONG);
    ck_assert_int_eq(r.calls, 0);
    dp_hook_free(h);
    uv_loop_close(&loop);
}
END_TEST

static int inv_count;
static char inv_last[64];
static void on_invalidate(void *arg, const char *user)
{
    (void)arg;
    inv_count++;
    snprintf(inv_last, sizeof inv_last, "%s", user ? user : "*");
}

START_TEST(invalidate_reaches_subscribers)
{
    dp_hook *h = load_testhook();
    ck_assert_int_eq(dp_hook_subscribe(h, on_invalidate, NULL), 0);
    const dph_host *host = control()->host;
    host->invalidate(host->ctx, "carol");
    ck_assert_int_eq(inv_count, 1);
    ck_assert_str_eq(inv_last, "carol");
    host->invalidate_all(host->ctx);
    ck_assert_int_eq(inv_count, 2);
    ck_assert_str_eq(inv_last, "*");
    dp_hook_unsubscribe(h, on_invalidate, NULL);
    host->invalidate(host->ctx, "dave");
    ck_assert_int_eq(inv_count, 2);
    dp_hook_free(h);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("hook_loader");
    TCase *tc = tcase_create("load");
    tcase_add_test(tc, missing_file);
    tcase_add_test(tc, bare_name_uses_hookdir);
    tcase_add_test(tc, not_a_shared_object);
    tcase_add_test(tc, missing_symbol);
    tcase_add_test(tc, wrong_abi_major);
    tcase_add_test(tc, struct_too_small);
    tcase_add_test(tc, entry_refuses_host);
    tcase_add_test(tc, required_op_missing);
    tcase_add_test(tc, init_refuses_with_key);
    suite_add_tcase(s, tc);
    TCase *ta = tcase_create("async");
    tcase_add_test(ta, lookup_async_ok);
    tcase_add_test(ta, keys_not_supported);
    tcase_add_test(ta, lookup_hook_error_is_tempfail);
    tcase_add_test(ta, lookup_deadline);
    tcase_add_test(ta, lookup_cancel);
    tcase_add_test(ta, bad_user_refused);
    tcase_add_test(ta, invalidate_reaches_subscribers);
    suite_add_tcase(s, ta);
    return dp_test_run_suite(s);
}
