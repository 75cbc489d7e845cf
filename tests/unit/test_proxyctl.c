/* test_proxyctl.c - proxyctl's pure parts (proxyctl_core): argument quoting and request
 * lines, the greeting and status lines, dot-unstuffing and reply assembly, column alignment,
 * exit codes. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dp_test_util.h"
#include "proxyctl_table.h"
#include "proxyctl_wire.h"

static const char *quote(const char *arg, int *rc)
{
    static char buf[256];
    size_t len = 0;
    buf[0] = '\0';
    *rc = ctl_quote_arg(arg, buf, sizeof buf, &len);
    ck_assert_uint_eq(len, strlen(buf));
    return buf;
}

START_TEST(quote_plain_values_unchanged)
{
    int rc;
    ck_assert_str_eq(quote("user=alice", &rc), "user=alice");
    ck_assert_int_eq(rc, 0);
    ck_assert_str_eq(quote("id=0000002a", &rc), "id=0000002a");
    ck_assert_str_eq(quote("timeout=30", &rc), "timeout=30");
    ck_assert_str_eq(quote("x=a=b", &rc), "x=a=b"); /* the key ends at the first '=' */
    ck_assert_str_eq(quote("user=j\xc3\xbcrgen", &rc), "user=j\xc3\xbcrgen");
    ck_assert_int_eq(rc, 0);
}
END_TEST

START_TEST(quote_spaces_quotes_backslashes)
{
    int rc;
    ck_assert_str_eq(quote("message=back in 5 minutes", &rc), "message=\"back in 5 minutes\"");
    ck_assert_int_eq(rc, 0);
    ck_assert_str_eq(quote("message=say \"hi\"", &rc), "message=\"say \\\"hi\\\"\"");
    ck_assert_str_eq(quote("message=a\\b", &rc), "message=\"a\\\\b\"");
    ck_assert_str_eq(quote("message=\"", &rc), "message=\"\\\"\"");
    ck_assert_str_eq(quote("user=", &rc), "user=\"\""); /* empty value: explicit */
    ck_assert_int_eq(rc, 0);
}
END_TEST

START_TEST(quote_refuses_what_cannot_be_sent)
{
    int rc;
    quote("message=two\nlines", &rc); /* would start a second request */
    ck_assert_int_eq(rc, -EINVAL);
    quote("message=tab\there", &rc);
    ck_assert_int_eq(rc, -EINVAL);
    quote("message=del\x7f", &rc);
    ck_assert_int_eq(rc, -EINVAL);
    quote("=value", &rc);
    ck_assert_int_eq(rc, -EINVAL);
    quote("two words=x", &rc);
    ck_assert_int_eq(rc, -EINVAL);
    quote("User=x", &rc); /* the daemon's keys are lower case */
    ck_assert_int_eq(rc, -EINVAL);
    quote("bare word", &rc);
    ck_assert_int_eq(rc, -EINVAL);
    quote("", &rc);
    ck_assert_int_eq(rc, -EINVAL);
    ck_assert_str_eq(quote("flush", &rc), "flush");
    ck_assert_int_eq(rc, 0);
}
END_TEST

START_TEST(quote_too_small_leaves_buffer_intact)
{
    char buf[16] = "kick";
    size_t len = 4;
    ck_assert_int_eq(ctl_quote_arg("message=a much longer text", buf, sizeof buf, &len), -E2BIG);
    ck_assert_uint_eq(len, 4);
    ck_assert_str_eq(buf, "kick");
}
END_TEST

START_TEST(request_lines)
{
    char out[DP_CTL_LINE_MAX];
    const char *bad;
    char *args[] = {"user=alice", "message=moved, sorry"};
    ck_assert_int_eq(ctl_build_request("kick", args, 2, 0, out, sizeof out, &bad), 0);
    ck_assert_str_eq(out, "kick user=alice message=\"moved, sorry\"");
    ck_assert_int_eq(ctl_build_request("sessions", NULL, 0, 1, out, sizeof out, &bad), 0);
    ck_assert_str_eq(out, "sessions format=json");
    char *fmt[] = {"format=json"};
    ck_assert_int_eq(ctl_build_request("stats", fmt, 1, 1, out, sizeof out, &bad), 0);
    ck_assert_str_eq(out, "stats format=json"); /* not twice */
    ck_assert_int_eq(ctl_build_request("cache flush", NULL, 0, 0, out, sizeof out, &bad), 0);
    ck_assert_str_eq(out, "cache flush");
    char *badargs[] = {"user=a", "message=x\ry"};
    ck_assert_int_eq(ctl_build_request("kick", badargs, 2, 0, out, sizeof out, &bad), -EINVAL);
    ck_assert_ptr_eq(bad, badargs[1]);
}
END_TEST

START_TEST(request_length_limit)
{
    char out[2 * DP_CTL_LINE_MAX];
    char *arg = malloc(DP_CTL_LINE_MAX);
    ck_assert_ptr_nonnull(arg);
    /* "kick " + "message=" + value + LF = exactly 4096 bytes: fits. */
    size_t vlen = DP_CTL_LINE_MAX - 1 - strlen("kick message=");
    memcpy(arg, "message=", 8);
    memset(arg + 8, 'x', vlen);
    arg[8 + vlen] = '\0';
    char *args[] = {arg};
    ck_assert_int_eq(ctl_build_request("kick", args, 1, 0, out, sizeof out, NULL), 0);
    ck_assert_uint_eq(strlen(out) + 1, DP_CTL_LINE_MAX);
    arg[8 + vlen] = 'x';
    arg[9 + vlen] = '\0';
    ck_assert_int_eq(ctl_build_request("kick", args, 1, 0, out, sizeof out, NULL), -E2BIG);
    free(arg);
}
END_TEST

START_TEST(greeting)
{
    int proto = -1;
    char daemon[16], version[16];
    ck_assert_int_eq(ctl_parse_greeting("dynproxy-ctl 1 sshproxy 0.1.0", &proto, daemon,
                                        sizeof daemon, version, sizeof version),
                     0);
    ck_assert_int_eq(proto, 1);
    ck_assert_str_eq(daemon, "sshproxy");
    ck_assert_str_eq(version, "0.1.0");
    ck_assert_int_eq(ctl_parse_greeting("dynproxy-ctl 2 ftpproxy 9.0", &proto, daemon,
                                        sizeof daemon, version, sizeof version),
                     -EPROTONOSUPPORT);
    ck_assert_int_eq(proto, 2);
    ck_assert_str_eq(daemon, "ftpproxy");
    ck_assert_int_eq(ctl_parse_greeting("dynproxy-ctl", &proto, NULL, 0, NULL, 0), -EPROTO);
    ck_assert_int_eq(ctl_parse_greeting("dynproxy-ctl x1 a b", &proto, NULL, 0, NULL, 0), -EPROTO);
    ck_assert_int_eq(ctl_parse_greeting("SSH-2.0-OpenSSH_9.2", &proto, NULL, 0, NULL, 0), -EPROTO);
    ck_assert_int_eq(ctl_parse_greeting("403 forbidden", &proto, NULL, 0, NULL, 0), -EPROTO);
    ck_assert_int_eq(ctl_parse_greeting("", &proto, NULL, 0, NULL, 0), -EPROTO);
}
END_TEST

START_TEST(status_lines)
{
    int code;
    const char *text;
    ck_assert_int_eq(ctl_parse_status("200 1 session", &code, &text), 0);
    ck_assert_int_eq(code, 200);
    ck_assert_str_eq(text, "1 session");
    ck_assert_int_eq(ctl_parse_status("404", &code, &text), 0);
    ck_assert_int_eq(code, 404);
    ck_assert_str_eq(text, "");
    ck_assert_int_eq(ctl_parse_status("20 x", &code, &text), -EPROTO);
    ck_assert_int_eq(ctl_parse_status("2000 x", &code, &text), -EPROTO);
    ck_assert_int_eq(ctl_parse_status("ok", &code, &text), -EPROTO);
}
END_TEST

START_TEST(unstuffing)
{
    const char *t;
    ck_assert_int_eq(ctl_unstuff(".", &t), 1);
    ck_assert_int_eq(ctl_unstuff("..", &t), 0);
    ck_assert_str_eq(t, ".");
    ck_assert_int_eq(ctl_unstuff("..hidden", &t), 0);
    ck_assert_str_eq(t, ".hidden");
    ck_assert_int_eq(ctl_unstuff("plain", &t), 0);
    ck_assert_str_eq(t, "plain");
    ck_assert_int_eq(ctl_unstuff("", &t), 0);
    ck_assert_str_eq(t, "");
}
END_TEST

START_TEST(reply_assembly)
{
    ctl_reply r;
    ctl_reply_init(&r);
    ck_assert_int_eq(ctl_reply_feed(&r, "200 2 sessions"), 0);
    ck_assert_int_eq(ctl_reply_feed(&r, "id\tuser"), 0);
    ck_assert_int_eq(ctl_reply_feed(&r, "..dotted\t.x"), 0);
    ck_assert_int_eq(ctl_reply_feed(&r, ""), 0);
    ck_assert_int_eq(ctl_reply_feed(&r, "."), 1);
    ck_assert_int_eq(ctl_reply_feed(&r, "ignored"), 1);
    ck_assert_int_eq(r.code, 200);
    ck_assert_str_eq(r.text, "2 sessions");
    ck_assert_str_eq(r.body, "id\tuser\n.dotted\t.x\n\n");
    ck_assert_uint_eq(r.body_len, strlen(r.body));
    ctl_reply_clear(&r);

    ck_assert_int_eq(ctl_reply_feed(&r, "404 nothing matched"), 0);
    ck_assert_int_eq(ctl_reply_feed(&r, "."), 1);
    ck_assert_ptr_null(r.body);
    ck_assert_uint_eq(r.body_len, 0);
    ctl_reply_clear(&r);

    ck_assert_int_eq(ctl_reply_feed(&r, "dynproxy-ctl 1 x y"), -EPROTO);
    ctl_reply_clear(&r);

    /* A long body grows the buffer. */
    ck_assert_int_eq(ctl_reply_feed(&r, "200 ok"), 0);
    for (int i = 0; i < 1000; i++)
        ck_assert_int_eq(ctl_reply_feed(&r, "0123456789"), 0);
    ck_assert_int_eq(ctl_reply_feed(&r, "."), 1);
    ck_assert_uint_eq(r.body_len, 11000);
    ctl_reply_clear(&r);
}
END_TEST

static void check_table(const char *in, const char *want)
{
    char *got = ctl_table_format(in, strlen(in));
    ck_assert_ptr_nonnull(got);
    ck_assert_str_eq(got, want);
    free(got);
}

START_TEST(table_alignment)
{
    check_table("key\tvalue\nversion\t0.1.0\npid\t42\n", "key      value\n"
                                                         "version  0.1.0\n"
                                                         "pid      42\n");
    check_table("id\tuser\tbackend\n0000002a\tal\tweb1\n1\tbob\tweb22\n",
                "id        user  backend\n"
                "0000002a  al    web1\n"
                "1         bob   web22\n");
    /* No final newline; a short row; an empty last cell leaves no trailing blanks. */
    check_table("a\tb\tc\nxx\nyyy\tz\t", "a    b  c\n"
                                         "xx\n"
                                         "yyy  z\n");
    /* Widths count characters, not UTF-8 bytes. */
    check_table("user\tb\nj\xc3\xbcrgen\tweb1\nal\tweb2\n", "user    b\n"
                                                            "j\xc3\xbcrgen  web1\n"
                                                            "al      web2\n");
    /* A body without TABs passes through. */
    check_table("just text\n\nmore\n", "just text\n\nmore\n");
    check_table("", "");
}
END_TEST

START_TEST(exit_codes)
{
    ck_assert_int_eq(ctl_exit_for_status(200), CTL_EXIT_OK);
    ck_assert_int_eq(ctl_exit_for_status(201), CTL_EXIT_OK);
    ck_assert_int_eq(ctl_exit_for_status(400), CTL_EXIT_USAGE);
    ck_assert_int_eq(ctl_exit_for_status(403), CTL_EXIT_DENIED);
    ck_assert_int_eq(ctl_exit_for_status(404), CTL_EXIT_NOTFOUND);
    ck_assert_int_eq(ctl_exit_for_status(409), CTL_EXIT_FAILED);
    ck_assert_int_eq(ctl_exit_for_status(422), CTL_EXIT_FAILED);
    ck_assert_int_eq(ctl_exit_for_status(500), CTL_EXIT_FAILED);
    ck_assert_int_eq(ctl_exit_for_status(418), CTL_EXIT_FAILED);
    ck_assert_int_eq(ctl_exit_for_errno(-ENOENT), CTL_EXIT_UNREACHABLE);
    ck_assert_int_eq(ctl_exit_for_errno(-ECONNREFUSED), CTL_EXIT_UNREACHABLE);
    ck_assert_int_eq(ctl_exit_for_errno(-ETIMEDOUT), CTL_EXIT_UNREACHABLE);
    ck_assert_int_eq(ctl_exit_for_errno(-ENODATA), CTL_EXIT_UNREACHABLE);
    ck_assert_int_eq(ctl_exit_for_errno(-EACCES), CTL_EXIT_DENIED);
    ck_assert_int_eq(ctl_exit_for_errno(-EPERM), CTL_EXIT_DENIED);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("proxyctl");
    TCase *tq = tcase_create("request");
    tcase_add_test(tq, quote_plain_values_unchanged);
    tcase_add_test(tq, quote_spaces_quotes_backslashes);
    tcase_add_test(tq, quote_refuses_what_cannot_be_sent);
    tcase_add_test(tq, quote_too_small_leaves_buffer_intact);
    tcase_add_test(tq, request_lines);
    tcase_add_test(tq, request_length_limit);
    suite_add_tcase(s, tq);
    TCase *tr = tcase_create("reply");
    tcase_add_test(tr, greeting);
    tcase_add_test(tr, status_lines);
    tcase_add_test(tr, unstuffing);
    tcase_add_test(tr, reply_assembly);
    tcase_add_test(tr, table_alignment);
    tcase_add_test(tr, exit_codes);
    suite_add_tcase(s, tr);
    return dp_test_run_suite(s);
}
