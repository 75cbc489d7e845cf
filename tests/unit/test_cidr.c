/* test_cidr.c - dp_cidr parsing, matching and formatting. */
#include "dp_cidr.h"
#include "dp_test_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

static struct sockaddr_storage sa_of(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (strchr(text, ':') != NULL) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        sin6->sin6_family = AF_INET6;
        ck_assert_int_eq(inet_pton(AF_INET6, text, &sin6->sin6_addr), 1);
    } else {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        sin->sin_family = AF_INET;
        ck_assert_int_eq(inet_pton(AF_INET, text, &sin->sin_addr), 1);
    }
    return ss;
}

static bool match(const char *cidr, const char *addr)
{
    dp_cidr c;
    ck_assert_msg(dp_cidr_parse(cidr, &c) == 0, "parse %s", cidr);
    struct sockaddr_storage ss = sa_of(addr);
    return dp_cidr_match(&c, (const struct sockaddr *)&ss);
}

START_TEST(parse_good)
{
    static const struct {
        const char *text;
        int family;
        unsigned prefix;
        const char *formatted;
    } cases[] = {
        {"10.0.0.0/8", AF_INET, 8, "10.0.0.0/8"},
        {"192.0.2.1", AF_INET, 32, "192.0.2.1/32"},
        {"192.0.2.1/32", AF_INET, 32, "192.0.2.1/32"},
        {"0.0.0.0/0", AF_INET, 0, "0.0.0.0/0"},
        {"172.16.0.0/12", AF_INET, 12, "172.16.0.0/12"},
        {"192.0.2.128/25", AF_INET, 25, "192.0.2.128/25"},
        {"::1", AF_INET6, 128, "::1/128"},
        {"::/0", AF_INET6, 0, "::/0"},
        {"2001:db8::/32", AF_INET6, 32, "2001:db8::/32"},
        {"2001:DB8:0:0:0:0:0:1/128", AF_INET6, 128, "2001:db8::1/128"},
        {"fe80::/10", AF_INET6, 10, "fe80::/10"},
        {"::ffff:10.0.0.0/104", AF_INET6, 104, "::ffff:10.0.0.0/104"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        dp_cidr c;
        memset(&c, 0xa5, sizeof c);
        ck_assert_msg(dp_cidr_parse(cases[i].text, &c) == 0, "%s", cases[i].text);
        ck_assert_int_eq(c.family, cases[i].family);
        ck_assert_uint_eq(c.prefix, cases[i].prefix);
        char buf[64];
        ck_assert_str_eq(dp_cidr_format(&c, buf, sizeof buf), cases[i].formatted);
        /* Formatting round-trips. */
        dp_cidr again;
        ck_assert_int_eq(dp_cidr_parse(buf, &again), 0);
        ck_assert_int_eq(again.family, c.family);
        ck_assert_uint_eq(again.prefix, c.prefix);
        ck_assert_mem_eq(again.addr, c.addr, c.family == AF_INET ? 4 : 16);
    }
}
END_TEST

START_TEST(parse_bad)
{
    static const char *const bad[] = {
        "",
        "/8",
        "10.0.0.0/",
        "10.0.0.0/33",
        "10.0.0.0/-1",
        "10.0.0.0/+8",
        "10.0.0.0/08",
        "10.0.0.0/ 8",
        "10.0.0.0 /8",
        " 10.0.0.0/8",
        "10.0.0.0/8 ",
        "10.0.0.0/8/8",
        "10.0.0.0/8x",
        "10.0.0.1/8",   /* host bits */
        "192.0.2.1/31", /* host bits */
        "1.0.0.0/0",    /* host bits */
        "10.0.0",       /* inet_pton is strict */
        "10.0.0.256",
        "010.0.0.0/8",
        "0x0a.0.0.0/8",
        "10.0.0.0.0",
        "::1/129",
        "::1/127",        /* host bits */
        "2001:db8::1/32", /* host bits */
        "::/1000000000000000000000",
        "fe80::1%eth0",
        "2001:db8:::/48",
        "gggg::/16",
        "localhost",
        "10.0.0.0/8,10.0.0.0/8",
        "1111:2222:3333:4444:5555:6666:7777:8888:9999/128",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        dp_cidr c = {.family = 77};
        ck_assert_msg(dp_cidr_parse(bad[i], &c) == -EINVAL, "accepted '%s'", bad[i]);
        /* A failed parse leaves the output alone. */
        ck_assert_int_eq(c.family, 77);
    }
    ck_assert_int_eq(dp_cidr_parse(NULL, NULL), -EINVAL);
    char longtext[200];
    memset(longtext, '1', sizeof longtext - 1);
    longtext[sizeof longtext - 1] = '\0';
    dp_cidr c;
    ck_assert_int_eq(dp_cidr_parse(longtext, &c), -EINVAL);
}
END_TEST

START_TEST(match_v4)
{
    ck_assert(match("10.0.0.0/8", "10.1.2.3"));
    ck_assert(match("10.0.0.0/8", "10.255.255.255"));
    ck_assert(!match("10.0.0.0/8", "11.0.0.0"));
    ck_assert(!match("10.0.0.0/8", "9.255.255.255"));
    ck_assert(match("192.0.2.128/25", "192.0.2.200"));
    ck_assert(!match("192.0.2.128/25", "192.0.2.127"));
    ck_assert(match("172.16.0.0/12", "172.31.255.1"));
    ck_assert(!match("172.16.0.0/12", "172.32.0.1"));
    /* v4 CIDR never matches a plain (non-mapped) v6 address. */
    ck_assert(!match("0.0.0.0/0", "2001:db8::1"));
    ck_assert(!match("0.0.0.0/0", "::a00:1")); /* IPv4-compatible, not mapped */
}
END_TEST

START_TEST(match_v6)
{
    ck_assert(match("2001:db8::/32", "2001:db8:ffff::1"));
    ck_assert(!match("2001:db8::/32", "2001:db9::1"));
    ck_assert(match("fe80::/10", "febf::1"));
    ck_assert(!match("fe80::/10", "fec0::1"));
    ck_assert(match("::1", "::1"));
    ck_assert(!match("::1", "::2"));
}
END_TEST

START_TEST(match_mapped)
{
    /* A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d. */
    ck_assert(match("10.0.0.0/8", "::ffff:10.9.8.7"));
    ck_assert(!match("10.0.0.0/8", "::ffff:11.9.8.7"));
    ck_assert(match("192.0.2.1", "::ffff:192.0.2.1"));
    ck_assert(!match("192.0.2.1", "::fffe:192.0.2.1"));
    /* A v6 CIDR over the mapped range sees a v4 socket address the same way. */
    ck_assert(match("::ffff:10.0.0.0/104", "10.1.1.1"));
    ck_assert(match("::ffff:10.0.0.0/104", "::ffff:10.1.1.1"));
    ck_assert(!match("::ffff:10.0.0.0/104", "11.1.1.1"));
    ck_assert(!match("2001:db8::/32", "10.1.1.1"));
}
END_TEST

START_TEST(match_edges)
{
    /* /0 matches everything of its family. */
    ck_assert(match("0.0.0.0/0", "0.0.0.0"));
    ck_assert(match("0.0.0.0/0", "255.255.255.255"));
    ck_assert(match("0.0.0.0/0", "::ffff:1.2.3.4"));
    ck_assert(match("::/0", "2001:db8::1"));
    ck_assert(match("::/0", "::"));
    /* /32 and /128 are single hosts. */
    ck_assert(match("192.0.2.7/32", "192.0.2.7"));
    ck_assert(!match("192.0.2.7/32", "192.0.2.6"));
    ck_assert(!match("192.0.2.7/32", "192.0.2.8"));
    ck_assert(match("2001:db8::7/128", "2001:db8::7"));
    ck_assert(!match("2001:db8::7/128", "2001:db8::6"));
    ck_assert(!match("2001:db8::7/128", "2001:db8::7:0"));
    /* Odd prefixes cut inside a byte. */
    ck_assert(match("2001:db8:8000::/33", "2001:db8:ffff::"));
    ck_assert(!match("2001:db8:8000::/33", "2001:db8:7fff::"));

    dp_cidr c;
    ck_assert_int_eq(dp_cidr_parse("10.0.0.0/8", &c), 0);
    struct sockaddr_storage un;
    memset(&un, 0, sizeof un);
    un.ss_family = AF_UNIX;
    ck_assert(!dp_cidr_match(&c, (const struct sockaddr *)&un));
    ck_assert(!dp_cidr_match(&c, NULL));
}
END_TEST

START_TEST(list_match)
{
    const char *texts[] = {"10.0.0.0/8", "2001:db8::/32", "192.0.2.1"};
    dp_cidr list[3];
    for (size_t i = 0; i < 3; i++)
        ck_assert_int_eq(dp_cidr_parse(texts[i], &list[i]), 0);
    struct sockaddr_storage a = sa_of("192.0.2.1"), b = sa_of("2001:db8::5"),
                            c = sa_of("192.0.2.2"), d = sa_of("::ffff:10.0.0.1");
    ck_assert(dp_cidr_list_match(list, 3, (struct sockaddr *)&a));
    ck_assert(dp_cidr_list_match(list, 3, (struct sockaddr *)&b));
    ck_assert(!dp_cidr_list_match(list, 3, (struct sockaddr *)&c));
    ck_assert(dp_cidr_list_match(list, 3, (struct sockaddr *)&d));
    ck_assert(!dp_cidr_list_match(list, 0, (struct sockaddr *)&a));
    ck_assert(!dp_cidr_list_match(list, 2, (struct sockaddr *)&a));
}
END_TEST

START_TEST(format_small_buffer)
{
    dp_cidr c;
    ck_assert_int_eq(dp_cidr_parse("192.0.2.0/24", &c), 0);
    char buf[8];
    memset(buf, 'x', sizeof buf);
    ck_assert_ptr_eq(dp_cidr_format(&c, buf, sizeof buf), buf);
    ck_assert_str_eq(buf, "192.0.2");
    ck_assert_ptr_eq(dp_cidr_format(&c, buf, 0), buf);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("cidr");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, parse_good);
    tcase_add_test(tc, parse_bad);
    tcase_add_test(tc, match_v4);
    tcase_add_test(tc, match_v6);
    tcase_add_test(tc, match_mapped);
    tcase_add_test(tc, match_edges);
    tcase_add_test(tc, list_match);
    tcase_add_test(tc, format_small_buffer);
    suite_add_tcase(s, tc);
    return dp_test_run_suite(s);
}
