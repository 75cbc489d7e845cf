/* test_ctl_proto.c - control protocol v1: request parsing and reply framing. */
#include "dp_ctl_proto.h"
#include "dp_test_util.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static int parse(const char *text, dp_ctl_request *req, const char **why)
{
    static char line[DP_CTL_LINE_MAX];
    snprintf(line, sizeof line, "%s", text);
    *why = NULL;
    return dp_ctl_parse(line, req, why);
}

START_TEST(words_and_args)
{
    dp_ctl_request r;
    const char *why;
    ck_assert_int_eq(parse("  cache   flush\tuser=alice  ", &r, &why), 0);
    ck_assert_uint_eq(r.nwords, 2);
    ck_assert_str_eq(r.words[0], "cache");
    ck_assert_str_eq(r.words[1], "flush");
    ck_assert_uint_eq(r.nargs, 1);
    ck_assert_str_eq(dp_ctl_arg_get(&r, "user"), "alice");
    ck_assert_ptr_null(dp_ctl_arg_get(&r, "backend"));
    ck_assert(!r.json);

    ck_assert_int_eq(parse("sessions backend=web-2 format=json user=a.b@c", &r, &why), 0);
    ck_assert(r.json);
    ck_assert_uint_eq(r.nargs, 2); /* format= is consumed */
    ck_assert_str_eq(dp_ctl_arg_get(&r, "backend"), "web-2");
    ck_assert_str_eq(dp_ctl_arg_get(&r, "user"), "a.b@c");

    ck_assert_int_eq(parse("kick user=x message=a=b", &r, &why), 0);
    ck_assert_str_eq(dp_ctl_arg_get(&r, "message"), "a=b");
    ck_assert_int_eq(parse("kick message=", &r, &why), 0);
    ck_assert_str_eq(dp_ctl_arg_get(&r, "message"), "");
}
END_TEST

START_TEST(quoted_values)
{
    dp_ctl_request r;
    const char *why;
    ck_assert_int_eq(parse("kick user=bob message=\"back in 5 \\\"minutes\\\" \\\\o/\"", &r, &why),
                     0);
    ck_assert_str_eq(dp_ctl_arg_get(&r, "message"), "back in 5 \"minutes\" \\o/");
    ck_assert_int_eq(parse("kick message=\"\" user=u", &r, &why), 0);
    ck_assert_str_eq(dp_ctl_arg_get(&r, "message"), "");
    ck_assert_str_eq(dp_ctl_arg_get(&r, "user"), "u");
    ck_assert_int_eq(parse("kick message=\"tab\tinside\"", &r, &why), 0);
    ck_assert_str_eq(dp_ctl_arg_get(&r, "message"), "tab\tinside");
}
END_TEST

START_TEST(refused)
{
    static const struct {
        const char *line;
        const char *why;
    } cases[] = {
        {"", "empty request"},
        {"   \t ", "empty request"},
        {"kick message=\"open", "unterminated quoted value"},
        {"kick message=\"x\"y", "followed by a blank"},
        {"kick message=\"a\\nb\"", "only \\\" and \\\\"},
        {"kick message=a\"b", "a quote inside"},
        {"kick user=a user=b", "given twice"},
        {"sessions format=xml", "format must be"},
        {"user=x kick", "before the key=value"},
        {"ki/ck", "a word must be"},
        {"a b c d e", "too many words"},
        {"status \x01", "control byte"},
        {"status \x7f", "control byte"},
        {"=x", "a word must be"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dp_ctl_request r;
        const char *why;
        ck_assert_msg(parse(cases[i].line, &r, &why) == -EINVAL, "accepted: %s", cases[i].line);
        ck_assert_msg(why != NULL && strstr(why, cases[i].why) != NULL, "%s: why=%s", cases[i].line,
                      why ? why : "(null)");
    }
    /* 17 arguments: one too many */
    char line[512] = "kick";
    for (int i = 0; i < DP_CTL_ARGS_MAX + 1; i++)
        snprintf(line + strlen(line), sizeof line - strlen(line), " k%d=v", i);
    dp_ctl_request r;
    const char *why;
    ck_assert_int_eq(parse(line, &r, &why), -EINVAL);
    ck_assert_str_eq(why, "too many arguments");
}
END_TEST

START_TEST(reply_framing)
{
    dp_ctl_buf out = {0};
    const char body[] = "key\tvalue\n.hidden\tx\n.\nlast";
    dp_ctl_format_reply(&out, 200, "ok\tfine\nreally", body, strlen(body));
    ck_assert(!out.failed);
    ck_assert_str_eq(out.data, "200 ok fine really\n"
                               "key\tvalue\n"
                               "..hidden\tx\n"
                               "..\n"
                               "last\n"
                               ".\n");
    dp_ctl_buf_free(&out);
    dp_ctl_format_reply(&out, 404, "", NULL, 0);
    ck_assert_str_eq(out.data, "404 -\n.\n");
    dp_ctl_buf_free(&out);
}
END_TEST

START_TEST(json_and_cells)
{
    dp_ctl_buf b = {0};
    dp_ctl_buf_json_str(&b, "a\"b\\c\n\x01\x7f\xc3\xa9");
    ck_assert_str_eq(b.data, "\"a\\\"b\\\\c\\u000a\\u0001\\u007f\xc3\xa9\"");
    dp_ctl_buf_free(&b);
    dp_ctl_buf_cell(&b, "x\ty\r\nz");
    dp_ctl_buf_cell(&b, NULL);
    dp_ctl_buf_cell(&b, "");
    ck_assert_str_eq(b.data, "x y  z--");
    dp_ctl_buf_free(&b);
    /* growth past the first allocation */
    for (int i = 0; i < 1000; i++)
        dp_ctl_buf_printf(&b, "%04d,", i);
    ck_assert_uint_eq(b.len, 5000);
    ck_assert(strncmp(b.data + 4995, "0999,", 5) == 0);
    dp_ctl_buf_free(&b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ctl_proto");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, words_and_args);
    tcase_add_test(tc, quoted_values);
    tcase_add_test(tc, refused);
    tcase_add_test(tc, reply_framing);
    tcase_add_test(tc, json_and_cells);
    suite_add_tcase(s, tc);
    return dp_test_run_suite(s);
}
