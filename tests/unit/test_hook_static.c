/* test_hook_static.c - static.so through its ABI: dlopen the built module, init it with params,
 * look users up, list keys, reload the routes file, and check every validation error names the
 * file and the line. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dp_test_hook.h"
#include "dp_test_util.h"
#include "dynproxy_hook.h"

#define HOSTKEY "SHA256:nThbg6kXUpJWGl7E1IGOCspRomTxdCARLviKw6E5SY8"

/* ---- loading ---- */

static void *dl;
static const dph_ops *ops;
static void *state;
static dph_error err;
static dph_param params[4];

static void setup(void)
{
    dp_test_host_reset();
    ops = dp_test_hook_open(DP_BUILD_HOOKDIR "/static.so", &dl);
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

/* init with routes=path and, when reload_ms is non-NULL, reload_check_ms. */
static int init_with(const char *path, const char *reload_ms)
{
    memset(params, 0, sizeof params);
    params[0] = (dph_param){"routes", path};
    if (reload_ms)
        params[1] = (dph_param){"reload_check_ms", reload_ms};
    return ops->init(&state, &dp_test_host, params, &err);
}

static int lookup(const char *user, dph_route *route)
{
    return dp_test_hook_lookup(ops, state, user, DPH_PROTO_SSH, route);
}

static const char *backend_of(const char *user)
{
    return dp_test_hook_backend_of(ops, state, user, DPH_PROTO_SSH);
}

typedef struct keys {
    char v[8][256];
    int n;
    int stop_after;
} keys;

static int key_cb(void *ctx, const char *key)
{
    keys *k = ctx;
    snprintf(k->v[k->n++], sizeof k->v[0], "%s", key);
    return k->stop_after && k->n >= k->stop_after;
}

static int list_keys(const char *user, keys *k)
{
    dph_lookup_req req = {
        .struct_size = sizeof req, .user = user, .proto = DPH_PROTO_SSH, .timeout_ms = 1000};
    return ops->authorized_keys(state, &req, key_cb, k);
}

/* Rewrite the routes file and give it an explicit mtime `age_s` seconds in the past. */
static const char *write_routes(const char *text, int age_s)
{
    const char *path = dp_test_write_file("routes.conf", text);
    struct timespec ts[2];
    clock_gettime(CLOCK_REALTIME, &ts[0]);
    ts[0].tv_sec -= age_s;
    ts[1] = ts[0];
    ck_assert_int_eq(utimensat(AT_FDCWD, path, ts, 0), 0);
    return path;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static const char good[] =
    "# test routes\n"                                                         /* 1 */
    "backends = {\n"                                                          /* 2 */
    "  web1 = { address = \"127.0.0.1\"; ssh_port = 2201; ftp_port = 2101;\n" /* 3 */
    "           hostkey = \"" HOSTKEY "\"; };\n"                              /* 4 */
    "  web2 = { address = \"::1\"; ssh_port = 2202; };\n"                     /* 5 */
    "  old = { address = \"10.0.0.9\"; maintenance = true;\n"                 /* 6 */
    "          message = \"moving to new hardware\"; };\n"                    /* 7 */
    "  quiet = { address = \"10.0.0.8\"; maintenance = true; };\n"            /* 8 */
    "};\n"                                                                    /* 9 */
    "users = {\n"                                                             /* 10 */
    "  alice = { backend = \"web1\"; backend_user = \"u1001\"; auth = \"proxy-key\";\n"
    "            keys = [ \"ssh-ed25519 AAAAC3Nza alice@laptop\",\n"
    "                     \"ssh-rsa AAAAB3Nza alice@desk\" ]; };\n"
    "  bob = { backend = \"web2\"; auth = \"mapped-key\"; key_path = \"/k/bob\"; };\n"
    "  carol = { backend = \"old\"; };\n"
    "  dave = { backend = \"web1\"; enabled = false; keys = [ \"ssh-ed25519 AAAAdave\" ]; };\n"
    "  erin = { backend = \"quiet\"; auth = \"password\"; };\n"
    "};\n";

/* ---- tests ---- */

START_TEST(entry_and_ops)
{
    dph_entry_fn entry = (dph_entry_fn)dlsym(dl, DPH_ENTRY_SYMBOL);
    ck_assert_ptr_null(entry((DPH_ABI_MAJOR + 1) << 16)); /* refuses another major */
    ck_assert_uint_eq(DPH_ABI_MAJOR_OF(ops->abi_version), DPH_ABI_MAJOR);
    ck_assert_uint_eq(ops->struct_size, sizeof(dph_ops));
    ck_assert_str_eq(ops->name, "static");
    ck_assert_ptr_nonnull(ops->init);
    ck_assert_ptr_nonnull(ops->fini);
    ck_assert_ptr_nonnull(ops->lookup);
    ck_assert_ptr_nonnull(ops->authorized_keys);
}
END_TEST

START_TEST(good_file)
{
    dph_route r;
    ck_assert_int_eq(init_with(write_routes(good, 100), NULL), 0);
    ck_assert_int_eq(dp_th.logs[DPH_LOG_INFO], 1); /* "routes loaded ..." */

    ck_assert_int_eq(lookup("alice", &r), 0);
    ck_assert_int_eq(r.status, DPH_ROUTE_OK);
    ck_assert_str_eq(r.backend, "web1");
    ck_assert_str_eq(r.address, "127.0.0.1");
    ck_assert_uint_eq(r.ssh_port, 2201);
    ck_assert_uint_eq(r.ftp_port, 2101);
    ck_assert_str_eq(r.backend_user, "u1001");
    ck_assert_int_eq(r.auth, DPH_AUTH_PROXY_KEY);
    ck_assert_str_eq(r.hostkey_sha256, HOSTKEY);
    ck_assert_str_eq(r.key_path, "");

    ck_assert_int_eq(lookup("bob", &r), 0);
    ck_assert_int_eq(r.status, DPH_ROUTE_OK);
    ck_assert_str_eq(r.address, "::1");
    ck_assert_uint_eq(r.ftp_port, 0); /* absent: the daemon's default */
    ck_assert_str_eq(r.backend_user, "");
    ck_assert_int_eq(r.auth, DPH_AUTH_MAPPED_KEY);
    ck_assert_str_eq(r.key_path, "/k/bob");
    ck_assert_str_eq(r.hostkey_sha256, "");

    ck_assert_int_eq(lookup("carol", &r), 0);
    ck_assert_int_eq(r.status, DPH_ROUTE_MAINTENANCE);
    ck_assert_str_eq(r.message, "moving to new hardware");
    ck_assert_str_eq(r.backend, "old");
    ck_assert_int_eq(r.auth, DPH_AUTH_PASSWORD); /* default */

    ck_assert_int_eq(lookup("erin", &r), 0);
    ck_assert_int_eq(r.status, DPH_ROUTE_MAINTENANCE);
    ck_assert_msg(strstr(r.message, "maintenance") != NULL, "default message: %s", r.message);

    ck_assert_int_eq(lookup("dave", &r), 0); /* enabled = false */
    ck_assert_int_eq(r.status, DPH_ROUTE_UNKNOWN_USER);
    ck_assert_int_eq(lookup("mallory", &r), 0); /* not listed, no default_backend */
    ck_assert_int_eq(r.status, DPH_ROUTE_UNKNOWN_USER);
    ck_assert_int_eq(lookup("Alice", &r), 0); /* names are case-sensitive */
    ck_assert_int_eq(r.status, DPH_ROUTE_UNKNOWN_USER);
}
END_TEST

START_TEST(authorized_keys)
{
    keys k = {0};
    ck_assert_int_eq(init_with(write_routes(good, 100), NULL), 0);
    ck_assert_int_eq(list_keys("alice", &k), 0);
    ck_assert_int_eq(k.n, 2);
    ck_assert_str_eq(k.v[0], "ssh-ed25519 AAAAC3Nza alice@laptop");
    ck_assert_str_eq(k.v[1], "ssh-rsa AAAAB3Nza alice@desk");

    k = (keys){.stop_after = 1}; /* the callback may stop the listing */
    ck_assert_int_eq(list_keys("alice", &k), 0);
    ck_assert_int_eq(k.n, 1);

    k = (keys){0};
    ck_assert_int_eq(list_keys("bob", &k), 0); /* no keys */
    ck_assert_int_eq(k.n, 0);
    ck_assert_int_eq(list_keys("dave", &k), 0); /* disabled: keys withheld */
    ck_assert_int_eq(k.n, 0);
    ck_assert_int_eq(list_keys("nobody", &k), 0);
    ck_assert_int_eq(k.n, 0);
}
END_TEST

START_TEST(default_backend)
{
    dph_route r;
    static const char text[] =
        "backends = { web1 = { address = \"10.0.0.1\"; };\n"
        "             web2 = { address = \"10.0.0.2\"; ssh_port = 22; }; };\n"
        "users = { dave = { backend = \"web1\"; enabled = false; };\n"
        "          alice = { backend = \"web1\"; backend_user = \"a\"; }; };\n"
        "default_backend = \"web2\";\n";
    ck_assert_int_eq(init_with(write_routes(text, 100), NULL), 0);
    ck_assert_int_eq(lookup("someone.else", &r), 0);
    ck_assert_int_eq(r.status, DPH_ROUTE_OK);
    ck_assert_str_eq(r.backend, "web2");
    ck_assert_str_eq(r.address, "10.0.0.2");
    ck_assert_str_eq(r.backend_user, ""); /* as themselves */
    ck_assert_int_eq(r.auth, DPH_AUTH_PASSWORD);
    ck_assert_str_eq(backend_of("alice"), "web1"); /* listed users keep their backend */
    ck_assert_int_eq(lookup("dave", &r), 0);       /* disabled beats the default */
    ck_assert_int_eq(r.status, DPH_ROUTE_UNKNOWN_USER);
}
END_TEST

START_TEST(list_form)
{
    static const char text[] =
        "backends = ( { name = \"web.1\"; address = \"10.0.0.1\"; } );\n"
        "users = (\n"
        "  { name = \"first.last\"; backend = \"web.1\"; },\n"
        "  { name = \"x@example.com\"; backend = \"web.1\"; backend_user = \"x\"; },\n"
        "  { name = \"alice\"; backend = \"web.1\"; keys = ( \"ssh-ed25519 AAAAlist\" ); }\n"
        ");\n";
    dph_route r;
    keys k = {0};
    ck_assert_int_eq(init_with(write_routes(text, 100), NULL), 0);
    ck_assert_str_eq(backend_of("first.last"), "web.1");
    ck_assert_int_eq(lookup("x@example.com", &r), 0);
    ck_assert_int_eq(r.status, DPH_ROUTE_OK);
    ck_assert_str_eq(r.backend_user, "x");
    ck_assert_str_eq(backend_of("alice"), "web.1");
    ck_assert_int_eq(list_keys("alice", &k), 0);
    ck_assert_int_eq(k.n, 1);
    ck_assert_int_eq(lookup("name", &r), 0);
    ck_assert_int_eq(r.status, DPH_ROUTE_UNKNOWN_USER);
}
END_TEST

/* The documented sample must stay valid and mean what its comments say. */
START_TEST(sample_file)
{
    dph_route r;
    keys k = {0};
    ck_assert_int_eq(init_with(DP_SOURCE_DIR "/deploy/examples/routes.conf", NULL), 0);
    ck_assert_int_eq(lookup("bob", &r), 0);
    ck_assert_int_eq(r.status, DPH_ROUTE_OK);
    ck_assert_str_eq(r.backend, "web2");
    ck_assert_uint_eq(r.ssh_port, 2222);
    ck_assert_str_eq(r.backend_user, "u1002");
    ck_assert_int_eq(list_keys("bob", &k), 0);
    ck_assert_int_eq(k.n, 1);
    ck_assert_int_eq(lookup("dave", &r), 0);
    ck_assert_int_eq(r.status, DPH_ROUTE_MAINTENANCE);
    ck_assert_int_eq(lookup("mallory", &r), 0);
    ck_assert_int_eq(r.status, DPH_ROUTE_UNKNOWN_USER);
    ck_assert_str_eq(backend_of("someone"), "web1");
}
END_TEST

/* init must fail with -EINVAL, err.key = the routes param, and err.msg "<path>:<line>: ..."
 * containing `what`. */
static void expect_error(const char *text, int line, const char *what)
{
    char where[600];
    const char *path = write_routes(text, 100);
    ck_assert_int_eq(init_with(path, NULL), -EINVAL);
    ck_assert_ptr_null(state);
    ck_assert_ptr_eq(err.key, params[0].key);
    snprintf(where, sizeof where, "%s:%d: ", path, line);
    ck_assert_msg(strncmp(err.msg, where, strlen(where)) == 0, "want \"%s...\", got \"%s\"", where,
                  err.msg);
    ck_assert_msg(strstr(err.msg, what) != NULL, "want \"%s\" in \"%s\"", what, err.msg);
}

#define B1 "backends = { web1 = { address = \"10.0.0.1\"; }; };\n"

START_TEST(error_syntax)
{
    expect_error(B1 "users = {\n  alice = { backend = ; };\n};\n", 3, "syntax error");
}
END_TEST

START_TEST(error_unknown_key)
{
    expect_error(B1 "users = {\n  bob = { backend = \"web1\"; };\n"
                    "  alice = { backend = \"web1\";\n            backnd = \"x\"; };\n};\n",
                 5, "user \"alice\": unknown key \"backnd\"");
}
END_TEST

START_TEST(error_unknown_top_key)
{
    expect_error(B1 "\nuser = { };\n", 3, "unknown key \"user\"");
}
END_TEST

START_TEST(error_unknown_backend_key)
{
    expect_error("backends = {\n  web1 = { address = \"10.0.0.1\";\n port = 22; };\n};\n", 3,
                 "backend \"web1\": unknown key \"port\"");
}
END_TEST

START_TEST(error_wrong_type)
{
    expect_error("backends = {\n  web1 = { address = \"10.0.0.1\";\n"
                 "           ssh_port = \"22\"; };\n};\n",
                 3, "ssh_port must be an integer");
}
END_TEST

START_TEST(error_wrong_type_bool)
{
    expect_error(B1 "users = {\n  alice = { backend = \"web1\"; enabled = \"yes\"; };\n};\n", 3,
                 "enabled must be true or false");
}
END_TEST

START_TEST(error_wrong_type_section)
{
    expect_error(B1 "\nusers = \"alice\";\n", 3, "users must be a group");
}
END_TEST

START_TEST(error_missing_field)
{
    expect_error(B1 "users = {\n  bob = { backend = \"web1\"; };\n"
                    "  alice = { backend_user = \"a\"; };\n};\n",
                 4, "user \"alice\": missing backend");
}
END_TEST

START_TEST(error_missing_address)
{
    expect_error("backends = {\n\n  web1 = { ssh_port = 22; };\n};\n", 3,
                 "backend \"web1\": missing address");
}
END_TEST

START_TEST(error_missing_backends)
{
    const char *path = write_routes("users = { };\n", 100);
    ck_assert_int_eq(init_with(path, NULL), -EINVAL);
    ck_assert_ptr_eq(err.key, params[0].key);
    ck_assert_msg(strstr(err.msg, path) && strstr(err.msg, "missing backends"), "%s", err.msg);
}
END_TEST

START_TEST(error_unknown_backend)
{
    expect_error(B1 "users = {\n  alice = {\n    backend = \"web9\"; };\n};\n", 4,
                 "backend = \"web9\": unknown backend");
}
END_TEST

START_TEST(error_unknown_default_backend)
{
    expect_error(B1 "\n\ndefault_backend = \"web9\";\n", 4,
                 "default_backend = \"web9\": unknown backend");
}
END_TEST

START_TEST(error_bad_port)
{
    expect_error("backends = {\n  web1 = { address = \"10.0.0.1\";\n"
                 "           ftp_port = 70000; };\n};\n",
                 3, "ftp_port 70000 is not a port");
    expect_error("backends = {\n  web1 = { address = \"10.0.0.1\"; ssh_port = 0; };\n};\n", 2,
                 "ssh_port 0 is not a port");
}
END_TEST

START_TEST(error_bad_auth)
{
    expect_error(B1
                 "users = {\n  alice = { backend = \"web1\";\n    auth = \"publickey\"; };\n};\n",
                 4, "auth must be \"password\", \"proxy-key\" or \"mapped-key\"");
}
END_TEST

START_TEST(error_mapped_key_without_path)
{
    expect_error(B1 "users = {\n  alice = { backend = \"web1\"; auth = \"mapped-key\"; };\n};\n", 3,
                 "auth \"mapped-key\" needs key_path");
}
END_TEST

START_TEST(error_too_long)
{
    char text[2048], longv[300];
    memset(longv, 'a', 256); /* DPH_ADDR_MAX: 255 bytes fit, 256 do not */
    longv[256] = '\0';
    snprintf(text, sizeof text, "backends = {\n  web1 = {\n address = \"%s\"; };\n};\n", longv);
    expect_error(text, 3, "address is too long (256 bytes, at most 255)");

    longv[255] = '\0'; /* exactly the limit: accepted */
    snprintf(text, sizeof text, "backends = { web1 = { address = \"%s\"; }; };\n", longv);
    ck_assert_int_eq(init_with(write_routes(text, 100), NULL), 0);
    ops->fini(state);
    state = NULL;

    longv[128] = '\0'; /* DPH_USER_MAX */
    snprintf(text, sizeof text,
             B1 "users = {\n  alice = { backend = \"web1\";\n"
                "    backend_user = \"%s\"; };\n};\n",
             longv);
    expect_error(text, 4, "backend_user is too long");
    snprintf(text, sizeof text, B1 "users = (\n  { name = \"%s\"; backend = \"web1\"; }\n);\n",
             longv);
    expect_error(text, 3, "is too long");
}
END_TEST

START_TEST(error_bad_hostkey)
{
    expect_error("backends = {\n  web1 = { address = \"10.0.0.1\";\n"
                 "    hostkey = \"MD5:aa:bb\"; };\n};\n",
                 3, "hostkey must look like");
}
END_TEST

START_TEST(error_bad_key)
{
    expect_error(B1 "users = {\n  alice = { backend = \"web1\";\n"
                    "    keys = [ \"ssh-ed25519 AAAA\",\n \"\" ]; };\n};\n",
                 5, "keys[1] is empty");
    expect_error(B1 "users = {\n  alice = { backend = \"web1\";\n"
                    "    keys = [ \"ssh-ed25519 AAAA\\nssh-rsa BBBB\" ]; };\n};\n",
                 4, "line break");
}
END_TEST

START_TEST(error_duplicate)
{
    expect_error(B1 "users = (\n  { name = \"a.b\"; backend = \"web1\"; },\n"
                    "  { name = \"c\"; backend = \"web1\"; },\n"
                    "  { name = \"a.b\"; backend = \"web1\"; }\n);\n",
                 5, "user \"a.b\" is defined twice (also at line 3)");
    expect_error("backends = (\n  { name = \"w\"; address = \"a\"; },\n"
                 "  { name = \"w\"; address = \"b\"; }\n);\n",
                 3, "backend \"w\" is defined twice (also at line 2)");
}
END_TEST

START_TEST(error_space_in_name)
{
    expect_error(B1 "users = (\n  { name = \"a b\"; backend = \"web1\"; }\n);\n", 3,
                 "contains a space");
}
END_TEST

START_TEST(error_include)
{
    char text[600];
    const char *inc = dp_test_write_file("included.conf", "users = { };\n");
    snprintf(text, sizeof text, B1 "@include \"%s\"\n", inc);
    expect_error(text, 2, "@include is not supported");
}
END_TEST

START_TEST(error_missing_file)
{
    ck_assert_int_eq(init_with("/nonexistent/routes.conf", NULL), -ENOENT);
    ck_assert_ptr_eq(err.key, params[0].key);
    ck_assert_msg(strstr(err.msg, "/nonexistent/routes.conf"), "%s", err.msg);
}
END_TEST

START_TEST(bad_params)
{
    const char *path = write_routes(good, 100);
    dph_param p[3] = {{"routes", path}, {"reload_check_ms", "soon"}, {NULL, NULL}};
    ck_assert_int_eq(ops->init(&state, &dp_test_host, p, &err), -EINVAL);
    ck_assert_ptr_eq(err.key, p[1].key);
    ck_assert_ptr_null(state);

    static const char *const bad[] = {"-1", "3600001", "", "10ms", "99999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        p[1].value = bad[i];
        err.key = NULL;
        ck_assert_int_eq(ops->init(&state, &dp_test_host, p, &err), -EINVAL);
        ck_assert_ptr_eq(err.key, p[1].key);
    }
    p[1].value = "3600000";
    ck_assert_int_eq(ops->init(&state, &dp_test_host, p, &err), 0);
    ops->fini(state);
    state = NULL;

    p[1] = (dph_param){"route", path}; /* typo: unknown */
    ck_assert_int_eq(ops->init(&state, &dp_test_host, p, &err), -EINVAL);
    ck_assert_ptr_eq(err.key, p[1].key);
    ck_assert_msg(strstr(err.msg, "unknown parameter"), "%s", err.msg);

    dph_param none[1] = {{NULL, NULL}};
    err.key = "x";
    ck_assert_int_eq(ops->init(&state, &dp_test_host, none, &err), -EINVAL);
    ck_assert_ptr_null(err.key);
    ck_assert_msg(strstr(err.msg, "routes"), "%s", err.msg);
}
END_TEST

static const char v1[] = "backends = { web1 = { address = \"10.0.0.1\"; };\n"
                         "             web2 = { address = \"10.0.0.2\"; }; };\n"
                         "users = { alice = { backend = \"web1\"; };\n"
                         "          bob = { backend = \"web1\"; }; };\n";
/* alice moved to web2: same size as v1. */
static const char v2[] = "backends = { web1 = { address = \"10.0.0.1\"; };\n"
                         "             web2 = { address = \"10.0.0.2\"; }; };\n"
                         "users = { alice = { backend = \"web2\"; };\n"
                         "          bob = { backend = \"web1\"; }; };\n";

START_TEST(reload_on_change)
{
    ck_assert_int_eq(init_with(write_routes(v1, 100), "100"), 0);
    ck_assert_str_eq(backend_of("alice"), "web1");
    write_routes(v2, 50);
    sleep_ms(150);
    ck_assert_str_eq(backend_of("alice"), "web2");
    ck_assert_str_eq(backend_of("bob"), "web1");
    ck_assert_int_eq(dp_test_host_invalidate_all_count(), 1);
    sleep_ms(150); /* nothing changed since: no second reload */
    ck_assert_str_eq(backend_of("alice"), "web2");
    ck_assert_int_eq(dp_test_host_invalidate_all_count(), 1);
    ck_assert_int_eq(dp_th.logs[DPH_LOG_ERROR], 0);
}
END_TEST

START_TEST(reload_waits_for_interval)
{
    ck_assert_int_eq(init_with(write_routes(v1, 100), "60000"), 0);
    write_routes(v2, 50);
    sleep_ms(100);
    ck_assert_str_eq(backend_of("alice"), "web1"); /* next check only after a minute */
    ck_assert_int_eq(dp_test_host_invalidate_all_count(), 0);
}
END_TEST

START_TEST(reload_never)
{
    ck_assert_int_eq(init_with(write_routes(v1, 100), "0"), 0);
    write_routes(v2, 50);
    sleep_ms(50);
    ck_assert_str_eq(backend_of("alice"), "web1");
    ck_assert_int_eq(dp_test_host_invalidate_all_count(), 0);
}
END_TEST

START_TEST(reload_touch_keeps_cache)
{
    ck_assert_int_eq(init_with(write_routes(v1, 100), "50"), 0);
    write_routes(v1, 10); /* same content, new mtime */
    sleep_ms(100);
    ck_assert_str_eq(backend_of("alice"), "web1");
    ck_assert_int_eq(dp_test_host_invalidate_all_count(), 0);
}
END_TEST

/* A rewrite within the same timestamp tick, same size: stat() cannot tell; the hook re-reads
 * files whose mtime is recent. */
START_TEST(reload_same_mtime_and_size)
{
    struct stat sb;
    const char *path = dp_test_write_file("routes.conf", v1);
    ck_assert_int_eq(stat(path, &sb), 0);
    ck_assert_int_eq(init_with(path, "50"), 0);
    ck_assert_str_eq(backend_of("alice"), "web1");
    dp_test_write_file("routes.conf", v2);
    struct timespec ts[2] = {sb.st_atim, sb.st_mtim};
    ck_assert_int_eq(utimensat(AT_FDCWD, path, ts, 0), 0);
    sleep_ms(100);
    ck_assert_str_eq(backend_of("alice"), "web2");
    ck_assert_int_eq(dp_test_host_invalidate_all_count(), 1);
}
END_TEST

START_TEST(reload_failure_keeps_table)
{
    const char *path = write_routes(v1, 100);
    char where[600];
    ck_assert_int_eq(init_with(path, "50"), 0);
    write_routes("backends = { web1 = { address = \"10.0.0.1\"; }; };\n"
                 "users = {\n  alice = { backend = \"web3\"; };\n};\n",
                 0); /* recent mtime: re-read at every check, yet reported once */
    sleep_ms(100);
    ck_assert_str_eq(backend_of("alice"), "web1"); /* old table */
    ck_assert_str_eq(backend_of("bob"), "web1");
    ck_assert_int_eq(dp_test_host_invalidate_all_count(), 0);
    ck_assert_int_eq(dp_th.logs[DPH_LOG_ERROR], 1);
    snprintf(where, sizeof where, "%s:3: ", path);
    ck_assert_msg(strstr(dp_th.errors, where) && strstr(dp_th.errors, "unknown backend"), "%s",
                  dp_th.errors);
    sleep_ms(100); /* the same bad file is reported once */
    ck_assert_str_eq(backend_of("alice"), "web1");
    ck_assert_int_eq(dp_th.logs[DPH_LOG_ERROR], 1);

    write_routes(v2, 40); /* fixed: picked up */
    sleep_ms(100);
    ck_assert_str_eq(backend_of("alice"), "web2");
    ck_assert_int_eq(dp_test_host_invalidate_all_count(), 1);
}
END_TEST

START_TEST(reload_file_removed)
{
    const char *path = write_routes(v1, 100);
    ck_assert_int_eq(init_with(path, "50"), 0);
    ck_assert_int_eq(unlink(path), 0);
    sleep_ms(100);
    ck_assert_str_eq(backend_of("alice"), "web1");
    sleep_ms(100);
    ck_assert_str_eq(backend_of("alice"), "web1");
    ck_assert_int_eq(dp_th.logs[DPH_LOG_WARN], 1); /* warned once */
    write_routes(v2, 40);
    sleep_ms(100);
    ck_assert_str_eq(backend_of("alice"), "web2");
}
END_TEST

static atomic_int stop_threads;

static void *lookup_thread(void *arg)
{
    long bad = 0;
    while (!stop_threads) {
        dph_route r;
        if (lookup("alice", &r) != 0 || r.status != DPH_ROUTE_OK)
            bad++;
        else if (!((strcmp(r.backend, "web1") == 0 && strcmp(r.address, "10.0.0.1") == 0) ||
                   (strcmp(r.backend, "web2") == 0 && strcmp(r.address, "10.0.0.2") == 0)))
            bad++;
    }
    return (void *)bad;
}

START_TEST(concurrent_lookups_during_reloads)
{
    pthread_t t[4];
    ck_assert_int_eq(init_with(write_routes(v1, 100), "1"), 0);
    stop_threads = 0;
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, lookup_thread, NULL), 0);
    for (int i = 0; i < 10; i++) {
        write_routes(i % 2 ? v1 : v2, 90 - i);
        sleep_ms(20);
    }
    stop_threads = 1;
    for (int i = 0; i < 4; i++) {
        void *bad;
        pthread_join(t[i], &bad);
        ck_assert_int_eq((long)bad, 0);
    }
    ck_assert_int_ge(dp_test_host_invalidate_all_count(), 2);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("hook_static");
    TCase *tc = tcase_create("api");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, entry_and_ops);
    tcase_add_test(tc, good_file);
    tcase_add_test(tc, authorized_keys);
    tcase_add_test(tc, default_backend);
    tcase_add_test(tc, list_form);
    tcase_add_test(tc, sample_file);
    tcase_add_test(tc, bad_params);
    suite_add_tcase(s, tc);

    tc = tcase_create("errors");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, error_syntax);
    tcase_add_test(tc, error_unknown_key);
    tcase_add_test(tc, error_unknown_top_key);
    tcase_add_test(tc, error_unknown_backend_key);
    tcase_add_test(tc, error_wrong_type);
    tcase_add_test(tc, error_wrong_type_bool);
    tcase_add_test(tc, error_wrong_type_section);
    tcase_add_test(tc, error_missing_field);
    tcase_add_test(tc, error_missing_address);
    tcase_add_test(tc, error_missing_backends);
    tcase_add_test(tc, error_unknown_backend);
    tcase_add_test(tc, error_unknown_default_backend);
    tcase_add_test(tc, error_bad_port);
    tcase_add_test(tc, error_bad_auth);
    tcase_add_test(tc, error_mapped_key_without_path);
    tcase_add_test(tc, error_too_long);
    tcase_add_test(tc, error_bad_hostkey);
    tcase_add_test(tc, error_bad_key);
    tcase_add_test(tc, error_duplicate);
    tcase_add_test(tc, error_space_in_name);
    tcase_add_test(tc, error_include);
    tcase_add_test(tc, error_missing_file);
    suite_add_tcase(s, tc);

    tc = tcase_create("reload");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, reload_on_change);
    tcase_add_test(tc, reload_waits_for_interval);
    tcase_add_test(tc, reload_never);
    tcase_add_test(tc, reload_touch_keeps_cache);
    tcase_add_test(tc, reload_same_mtime_and_size);
    tcase_add_test(tc, reload_failure_keeps_table);
    tcase_add_test(tc, reload_file_removed);
    tcase_add_test(tc, concurrent_lookups_during_reloads);
    suite_add_tcase(s, tc);
    return dp_test_run_suite(s);
}
