/* test_hook_example.c - example.so through its ABI: params, the stable FNV-1a spread of users
 * over backends, the deny list, and the optional op it leaves out. */
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "dp_test_hook.h"
#include "dp_test_util.h"
#include "dynproxy_hook.h"

#define THREE "web1=127.0.0.1:2201:2101,web2=127.0.0.2:2202:2102,web3=::1:2203:2103"

static void *dl;
static const dph_ops *ops;
static void *state;
static dph_error err;

static void setup(void)
{
    dp_test_host_reset();
    ops = dp_test_hook_open(DP_BUILD_HOOKDIR "/example.so", &dl);
    state = NULL;
    memset(&err, 0, sizeof err);
}

static void teardown(void)
{
    if (state)
        ops->fini(state);
    state = NULL;
    dlclose(dl);
}

static int init_with(const char *backends, const char *deny)
{
    dph_param p[3] = {{"backends", backends}, {deny ? "deny" : NULL, deny}, {NULL, NULL}};
    return ops->init(&state, &dp_test_host, p, &err);
}

static int lookup(const char *user, dph_route *route)
{
    return dp_test_hook_lookup(ops, state, user, DPH_PROTO_FTP, route);
}

static const char *backend_of(const char *user)
{
    return dp_test_hook_backend_of(ops, state, user, DPH_PROTO_FTP);
}

START_TEST(entry_and_ops)
{
    dph_entry_fn entry = (dph_entry_fn)dlsym(dl, DPH_ENTRY_SYMBOL);
    ck_assert_ptr_null(entry((DPH_ABI_MAJOR + 1) << 16));
    ck_assert_uint_eq(DPH_ABI_MAJOR_OF(ops->abi_version), DPH_ABI_MAJOR);
    ck_assert_uint_eq(ops->struct_size, sizeof(dph_ops));
    ck_assert_str_eq(ops->name, "example");
    ck_assert_ptr_nonnull(ops->lookup);
    ck_assert_ptr_null(ops->authorized_keys); /* the optional op it leaves out */
    ck_assert_ptr_null(ops->session_start);
    ck_assert_ptr_null(ops->session_end);
}
END_TEST

START_TEST(route_fields)
{
    dph_route r;
    ck_assert_int_eq(init_with(THREE, NULL), 0);
    ck_assert_int_eq(dp_th.logs[0] + dp_th.logs[1] + dp_th.logs[2] + dp_th.logs[3], 1);
    /* FNV-1a("alice") = 0x872213e7, % 3 = 2: the third backend, an IPv6 address. */
    ck_assert_int_eq(lookup("alice", &r), 0);
    ck_assert_int_eq(r.status, DPH_ROUTE_OK);
    ck_assert_str_eq(r.backend, "web3");
    ck_assert_str_eq(r.address, "::1");
    ck_assert_uint_eq(r.ssh_port, 2203);
    ck_assert_uint_eq(r.ftp_port, 2103);
    ck_assert_str_eq(r.backend_user, "");
    ck_assert_int_eq(r.auth, DPH_AUTH_PASSWORD);
}
END_TEST

START_TEST(hash_is_stable)
{
    /* FNV-1a reference vectors: "a" = 0xe40c292c, "foobar" = 0xbf9cf968; both % 3 = 1. */
    ck_assert_int_eq(init_with(THREE, NULL), 0);
    ck_assert_str_eq(backend_of("a"), "web2");
    ck_assert_str_eq(backend_of("foobar"), "web2");
    char before[64][DPH_NAME_MAX];
    for (int i = 0; i < 64; i++) {
        char user[32];
        snprintf(user, sizeof user, "customer%d", i);
        snprintf(before[i], sizeof before[i], "%s", backend_of(user));
    }
    /* Same list after a restart (fini + init): every user stays where it was. */
    ops->fini(state);
    state = NULL;
    ck_assert_int_eq(init_with(THREE, NULL), 0);
    for (int i = 0; i < 64; i++) {
        char user[32];
        snprintf(user, sizeof user, "customer%d", i);
        ck_assert_str_eq(backend_of(user), before[i]);
    }
}
END_TEST

START_TEST(hash_spreads)
{
    int count[3] = {0};
    ck_assert_int_eq(init_with(THREE, NULL), 0);
    for (int i = 0; i < 3000; i++) {
        char user[32];
        snprintf(user, sizeof user, "user%d", i);
        const char *b = backend_of(user);
        ck_assert_msg(strncmp(b, "web", 3) == 0 && b[3] >= '1' && b[3] <= '3', "%s", b);
        count[b[3] - '1']++;
    }
    for (int i = 0; i < 3; i++)
        ck_assert_msg(count[i] > 850 && count[i] < 1150, "web%d got %d of 3000", i + 1, count[i]);
}
END_TEST

START_TEST(deny_list)
{
    dph_route r;
    ck_assert_int_eq(init_with(THREE, "root,admin,www-data"), 0);
    ck_assert_int_eq(lookup("root", &r), 0);
    ck_assert_int_eq(r.status, DPH_ROUTE_UNKNOWN_USER);
    ck_assert_str_eq(r.address, ""); /* nothing else filled in */
    ck_assert_int_eq(lookup("admin", &r), 0);
    ck_assert_int_eq(r.status, DPH_ROUTE_UNKNOWN_USER);
    ck_assert_int_eq(lookup("www-data", &r), 0);
    ck_assert_int_eq(r.status, DPH_ROUTE_UNKNOWN_USER);
    /* exact names only: no prefixes, suffixes or comma tricks */
    ck_assert_str_ne(backend_of("adm"), "");
    ck_assert_str_ne(backend_of("rootx"), "");
    ck_assert_str_ne(backend_of("data"), "");
    ck_assert_str_ne(backend_of("root,admin"), "");
    ck_assert_str_ne(backend_of("alice"), "");
}
END_TEST

static void expect_bad(const char *backends, const char *deny, const char *bad_key)
{
    dph_param p[4] = {{"backends", backends}, {"deny", deny}, {NULL, NULL}, {NULL, NULL}};
    if (!deny)
        p[1] = (dph_param){NULL, NULL};
    err.key = "unset";
    ck_assert_int_eq(ops->init(&state, &dp_test_host, p, &err), -EINVAL);
    ck_assert_ptr_null(state);
    ck_assert_msg(err.msg[0] != '\0', "no message");
    if (bad_key)
        ck_assert_ptr_eq(err.key, strcmp(bad_key, "deny") == 0 ? p[1].key : p[0].key);
    else
        ck_assert_ptr_null(err.key);
}

START_TEST(bad_backends)
{
    expect_bad("", NULL, "backends");
    expect_bad("web1", NULL, "backends");
    expect_bad("web1=127.0.0.1:2201", NULL, "backends");     /* no ftp port */
    expect_bad("web1=127.0.0.1:0:21", NULL, "backends");     /* port 0 */
    expect_bad("web1=127.0.0.1:22:65536", NULL, "backends"); /* port too big */
    expect_bad("web1=127.0.0.1:22x:21", NULL, "backends");   /* not a number */
    expect_bad("web1=127.0.0.1::21", NULL, "backends");      /* empty port */
    expect_bad("=127.0.0.1:22:21", NULL, "backends");        /* no name */
    expect_bad("web1=:22:21", NULL, "backends");             /* no address */
    expect_bad("web1=a:22:21,web2", NULL, "backends");       /* one good, one bad */
    expect_bad("web1:22:21=a", NULL, "backends");            /* '=' after the ports */
    char many[2048] = "", name[80];
    for (int i = 0; i < 33; i++) { /* at most 32 */
        snprintf(name, sizeof name, "%sw%d=10.0.0.1:22:21", i ? "," : "", i);
        strcat(many, name);
    }
    expect_bad(many, NULL, "backends");
    memset(name, 'n', 64); /* DPH_NAME_MAX: 63 bytes fit */
    strcpy(name + 64, "=a:22:21");
    expect_bad(name, NULL, "backends");
    name[63] = '\0';
    memmove(name + 63, "=a:22:21", 9);
    ck_assert_int_eq(init_with(name, NULL), 0);
}
END_TEST

START_TEST(bad_params)
{
    dph_param none[] = {{NULL, NULL}};
    err.key = "unset";
    ck_assert_int_eq(ops->init(&state, &dp_test_host, none, &err), -EINVAL); /* backends required */
    ck_assert_ptr_null(err.key);

    dph_param typo[] = {{"backends", THREE}, {"denny", "root"}, {NULL, NULL}};
    ck_assert_int_eq(ops->init(&state, &dp_test_host, typo, &err), -EINVAL);
    ck_assert_ptr_eq(err.key, typo[1].key);

    char longdeny[1100];
    memset(longdeny, 'x', sizeof longdeny - 1);
    longdeny[sizeof longdeny - 1] = '\0';
    expect_bad(THREE, longdeny, "deny");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("hook_example");
    TCase *tc = tcase_create("example");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, entry_and_ops);
    tcase_add_test(tc, route_fields);
    tcase_add_test(tc, hash_is_stable);
    tcase_add_test(tc, hash_spreads);
    tcase_add_test(tc, deny_list);
    tcase_add_test(tc, bad_backends);
    tcase_add_test(tc, bad_params);
    suite_add_tcase(s, tc);
    return dp_test_run_suite(s);
}
