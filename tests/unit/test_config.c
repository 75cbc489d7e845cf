/* test_config.c - dp_config against the daemons' shared table plus a daemon-specific one:
 * defaults, good files, and every class of refusal with file:line and the key named. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dp_config.h"
#include "dp_daemon.h"
#include "dp_test_util.h"

typedef struct test_conf {
    dp_daemon_conf common;
    char *banner;
    char *motd;
    int max_sessions;
    bool fast;
    dp_strlist names;
} test_conf;

static int check_banner(const void *value, char *err, size_t errlen)
{
    const char *const *s = value;
    if (*s != NULL && strchr(*s, '\n') != NULL) {
        snprintf(err, errlen, "must be a single line");
        return -1;
    }
    return 0;
}

#define OFF(f) offsetof(test_conf, f)
static const dp_conf_entry own_entries[] = {
    DP_CONF_STRING_KEY("test.banner", OFF(banner), "hello", 0, 40, DP_CONF_RELOADABLE, "greeting",
                       .check = check_banner),
    DP_CONF_STRING_KEY("test.motd", OFF(motd), "hi", 1, 40, DP_CONF_RELOADABLE, "never empty"),
    DP_CONF_INT_KEY("test.max_sessions", OFF(max_sessions), "100", 1, 1000, 0, "cap"),
    DP_CONF_BOOL_KEY("test.fast", OFF(fast), "false", DP_CONF_RELOADABLE, "x"),
    DP_CONF_LIST_KEY("test.names", OFF(names), 3, DP_CONF_RELOADABLE, "y", .def = "a,b"),
};
#undef OFF
static const dp_conf_table own_table = {own_entries, sizeof own_entries / sizeof own_entries[0]};
static const dp_conf_table *const tables[] = {&dp_daemon_conf_table, &own_table, NULL};

static char err[4096];
static test_conf conf;

static int load_text(const char *name, const char *text, dp_conf_src **src)
{
    memset(&conf, 0, sizeof conf);
    err[0] = '\0';
    const char *path = dp_test_write_file(name, text);
    return dp_conf_load(path, tables, &conf, src, err, sizeof err);
}

/* The message names the file, the line and the key. */
static void assert_err(const char *file, int line, const char *key, const char *why)
{
    char want[256];
    snprintf(want, sizeof want, "%s:%d: %s: ", file, line, key);
    ck_assert_msg(strstr(err, want) != NULL, "expected \"%s\" in: %s", want, err);
    if (why != NULL)
        ck_assert_msg(strstr(err, why) != NULL, "expected \"%s\" in: %s", why, err);
}

START_TEST(defaults_applied)
{
    ck_assert_int_eq(load_text("min.conf", "listen = [ \"127.0.0.1:2222\" ];\n", NULL), 0);
    ck_assert_int_eq(conf.common.hook_timeout_ms, 2000);
    ck_assert_int_eq(conf.common.log_level, 2); /* info */
    ck_assert_str_eq(conf.common.hook_path, "static.so");
    ck_assert_int_eq(conf.common.proxy_enabled, 0);
    ck_assert_str_eq(conf.banner, "hello");
    ck_assert_int_eq(conf.max_sessions, 100);
    ck_assert_uint_eq(conf.names.n, 2);
    ck_assert_str_eq(conf.names.v[1], "b");
    dp_conf_free(tables, &conf);
    ck_assert_ptr_null(conf.common.hook_path);
}
END_TEST

static const char good[] = "# a complete file\n"
                           "log_level = \"debug\";\n"
                           "workers = 2;\n"
                           "listen = [ \"127.0.0.1:2222\", \"[::1]:2222\" ];\n"
                           "proxy_protocol = {\n"
                           "  enabled = true;\n"
                           "  trusted = [ \"10.0.0.0/8\", \"::1\" ];\n"
                           "};\n"
                           "hook = {\n"
                           "  path = \"/x/pgsql.so\";\n"
                           "  cache_ttl_ms = 1000;\n"
                           "  config = { conninfo = \"host=db\"; pool_size = 4; ssl = true; };\n"
                           "};\n"
                           "test = { banner = \"hi\"; max_sessions = 5; fast = true; "
                           "names = [\"x\"]; };\n";

START_TEST(good_file)
{
    dp_conf_src *src = NULL;
    ck_assert_int_eq(load_text("good.conf", good, &src), 0);
    ck_assert_int_eq(conf.common.log_level, 3);
    ck_assert_int_eq(conf.common.workers, 2);
    ck_assert_uint_eq(conf.common.listen.n, 2);
    ck_assert_str_eq(conf.common.listen.v[1], "[::1]:2222");
    ck_assert_int_eq(conf.common.proxy_enabled, 1);
    ck_assert_uint_eq(conf.common.proxy_trusted.n, 2);
    ck_assert_int_eq(conf.common.cache_ttl_ms, 1000);
    ck_assert_uint_eq(conf.common.hook_params.n, 3);
    ck_assert_str_eq(conf.common.hook_params.v[0].key, "conninfo");
    ck_assert_str_eq(conf.common.hook_params.v[1].value, "4");
    ck_assert_str_eq(conf.common.hook_params.v[2].value, "true");
    ck_assert_ptr_null(conf.common.hook_params.v[3].key); /* terminated for the hook ABI */
    ck_assert_str_eq(conf.banner, "hi");
    ck_assert_int_eq(conf.fast, 1);
    char where[512];
    dp_conf_where(src, "hook.config.conninfo", where, sizeof where);
    ck_assert_ptr_nonnull(strstr(where, "good.conf:12"));
    dp_conf_where(src, "hook.path", where, sizeof where);
    ck_assert_ptr_nonnull(strstr(where, "good.conf:10"));
    dp_conf_src_free(src);
    dp_conf_free(tables, &conf);
}
END_TEST

START_TEST(wrong_type)
{
    ck_assert_int_eq(
        load_text("type.conf", "listen = [\"127.0.0.1:1\"];\nworkers = \"two\";\n", NULL), -EINVAL);
    assert_err("type.conf", 2, "workers", "expected an integer, got a string");
    dp_conf_free(tables, &conf);
}
END_TEST

START_TEST(wrong_type_bool_and_list)
{
    ck_assert_int_eq(load_text("type2.conf",
                               "listen = \"127.0.0.1:1\";\n"
                               "proxy_protocol = { enabled = 1; };\n",
                               NULL),
                     -EINVAL);
    assert_err("type2.conf", 1, "listen", "expected an array of strings, got a string");
    assert_err("type2.conf", 2, "proxy_protocol.enabled", "expected a boolean");
    dp_conf_free(tables, &conf);
}
END_TEST

START_TEST(unknown_key)
{
    ck_assert_int_eq(load_text("unknown.conf",
                               "listen = [\"127.0.0.1:1\"];\n"
                               "hook = {\n"
                               "  timout_ms = 5;\n"
                               "};\n"
                               "colour = \"blue\";\n",
                               NULL),
                     -EINVAL);
    assert_err("unknown.conf", 3, "hook.timout_ms", "unknown key");
    assert_err("unknown.conf", 5, "colour", "unknown key");
    dp_conf_free(tables, &conf);
}
END_TEST

START_TEST(out_of_range)
{
    ck_assert_int_eq(load_text("range.conf",
                               "listen = [\"127.0.0.1:1\"];\n"
                               "hook = { timeout_ms = 900000; };\n"
                               "test = { max_sessions = 0; };\n",
                               NULL),
                     -EINVAL);
    assert_err("range.conf", 2, "hook.timeout_ms", "900000 is out of range [10, 60000]");
    assert_err("range.conf", 3, "test.max_sessions", "0 is out of range [1, 1000]");
    dp_conf_free(tables, &conf);
}
END_TEST

START_TEST(bad_enum_and_validator)
{
    ck_assert_int_eq(load_text("enum.conf",
                               "listen = [\"127.0.0.1:1\", \"localhost:22\"];\n"
                               "log_level = \"loud\";\n"
                               "proxy_protocol = { trusted = [\"10.0.0.1/8\"]; };\n"
                               "test = { banner = \"two\\nlines\"; };\n",
                               NULL),
                     -EINVAL);
    assert_err("enum.conf", 1, "listen", "\"localhost:22\" is not ip:port");
    assert_err("enum.conf", 2, "log_level", "\"loud\" is not one of");
    assert_err("enum.conf", 3, "proxy_protocol.trusted", "not an address or CIDR");
    assert_err("enum.conf", 4, "test.banner", "single line");
    dp_conf_free(tables, &conf);
}
END_TEST

START_TEST(string_too_long_and_list_too_long)
{
    ck_assert_int_eq(load_text("long.conf",
                               "listen = [\"127.0.0.1:1\"];\n"
                               "test = { banner = \"0123456789012345678901234567890123456789X\";\n"
                               "  names = [\"a\", \"b\", \"c\", \"d\"]; };\n",
                               NULL),
                     -EINVAL);
    assert_err("long.conf", 2, "test.banner", "longer than 40");
    assert_err("long.conf", 3, "test.names", "4 items, at most 3");
    dp_conf_free(tables, &conf);
}
END_TEST

/* A string's minimum length is the table's too: an empty ftp.greeting is refused, not sent. */
START_TEST(string_too_short)
{
    ck_assert_int_eq(load_text("short.conf",
                               "listen = [\"127.0.0.1:1\"];\n"
                               "test = { motd = \"\"; };\n",
                               NULL),
                     -EINVAL);
    assert_err("short.conf", 2, "test.motd", "empty");
    dp_conf_free(tables, &conf);
    ck_assert_int_eq(
        load_text("ok.conf", "listen = [\"127.0.0.1:1\"];\ntest = { motd = \"x\"; };\n", NULL), 0);
    ck_assert_str_eq(conf.motd, "x");
    dp_conf_free(tables, &conf);
}
END_TEST

START_TEST(missing_required)
{
    ck_assert_int_eq(load_text("req.conf", "workers = 1;\n", NULL), -EINVAL);
    ck_assert_msg(strstr(err, "req.conf: listen: required but missing") != NULL, "%s", err);
    dp_conf_free(tables, &conf);
}
END_TEST

START_TEST(hook_params_must_be_scalars)
{
    ck_assert_int_eq(load_text("params.conf",
                               "listen = [\"127.0.0.1:1\"];\n"
                               "hook = { config = {\n"
                               "  nested = { a = 1; };\n"
                               "}; };\n",
                               NULL),
                     -EINVAL);
    assert_err("params.conf", 3, "hook.config", "nested: expected a scalar");
    dp_conf_free(tables, &conf);
}
END_TEST

START_TEST(syntax_error)
{
    ck_assert_int_eq(load_text("syntax.conf", "listen = [\"127.0.0.1:1\"]\nworkers = ;\n", NULL),
                     -EINVAL);
    ck_assert_msg(strstr(err, "syntax.conf:2: syntax: ") != NULL, "%s", err);
    dp_conf_free(tables, &conf);
}
END_TEST

START_TEST(missing_file)
{
    memset(&conf, 0, sizeof conf);
    ck_assert_int_eq(dp_conf_load("/nonexistent/x.conf", tables, &conf, NULL, err, sizeof err),
                     -ENOENT);
    ck_assert_msg(strstr(err, "/nonexistent/x.conf") != NULL, "%s", err);
    dp_conf_free(tables, &conf);
}
END_TEST

START_TEST(all_errors_reported)
{
    ck_assert_int_eq(load_text("many.conf",
                               "listen = [\"127.0.0.1:1\"];\n"
                               "workers = -1;\n"
                               "backlog = \"x\";\n"
                               "nope = 1;\n",
                               NULL),
                     -EINVAL);
    assert_err("many.conf", 2, "workers", NULL);
    assert_err("many.conf", 3, "backlog", NULL);
    assert_err("many.conf", 4, "nope", NULL);
    dp_conf_free(tables, &conf);
}
END_TEST

START_TEST(nonreloadable_change_detected)
{
    test_conf a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    const char *p1 = dp_test_write_file("r1.conf", "listen = [\"127.0.0.1:1\"];\n"
                                                   "test = { banner = \"x\"; };\n");
    const char *p2 = dp_test_write_file("r2.conf", "listen = [\"127.0.0.1:1\"];\n"
                                                   "test = { banner = \"y\"; };\n");
    const char *p3 = dp_test_write_file("r3.conf", "listen = [\"127.0.0.1:2\"];\n");
    ck_assert_int_eq(dp_conf_load(p1, tables, &a, NULL, err, sizeof err), 0);
    ck_assert_int_eq(dp_conf_load(p2, tables, &b, NULL, err, sizeof err), 0);
    ck_assert_ptr_null(dp_conf_nonreloadable_change(tables, &a, &b)); /* banner reloads */
    dp_conf_free(tables, &b);
    ck_assert_int_eq(dp_conf_load(p3, tables, &b, NULL, err, sizeof err), 0);
    ck_assert_str_eq(dp_conf_nonreloadable_change(tables, &a, &b), "listen");
    dp_conf_free(tables, &a);
    dp_conf_free(tables, &b);
}
END_TEST

START_TEST(dump_hides_hook_values)
{
    ck_assert_int_eq(load_text("dump.conf", good, NULL), 0);
    char path[] = "/tmp/dp-dump-XXXXXX";
    int fd = mkstemp(path);
    dp_conf_dump(tables, &conf, fd);
    lseek(fd, 0, SEEK_SET);
    char buf[8192] = {0};
    ck_assert_int_gt(read(fd, buf, sizeof buf - 1), 0);
    close(fd);
    unlink(path);
    ck_assert_ptr_nonnull(strstr(buf, "hook.timeout_ms = 2000;"));
    ck_assert_ptr_nonnull(strstr(buf, "hook.config.conninfo = <set>;"));
    ck_assert_ptr_null(strstr(buf, "host=db")); /* may carry a password */
    dp_conf_free(tables, &conf);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, defaults_applied);
    tcase_add_test(tc, good_file);
    tcase_add_test(tc, wrong_type);
    tcase_add_test(tc, wrong_type_bool_and_list);
    tcase_add_test(tc, unknown_key);
    tcase_add_test(tc, out_of_range);
    tcase_add_test(tc, bad_enum_and_validator);
    tcase_add_test(tc, string_too_long_and_list_too_long);
    tcase_add_test(tc, string_too_short);
    tcase_add_test(tc, missing_required);
    tcase_add_test(tc, hook_params_must_be_scalars);
    tcase_add_test(tc, syntax_error);
    tcase_add_test(tc, missing_file);
    tcase_add_test(tc, all_errors_reported);
    tcase_add_test(tc, nonreloadable_change_detected);
    tcase_add_test(tc, dump_hides_hook_values);
    suite_add_tcase(s, tc);
    return dp_test_run_suite(s);
}
