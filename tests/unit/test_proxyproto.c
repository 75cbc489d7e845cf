/* test_proxyproto.c - dp_proxy_parse: PROXY protocol v1 and v2 headers. */
#include "dp_proxyproto.h"
#include "dp_test_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

static const uint8_t sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* A v2 header: signature, ver/cmd, fam/transport, big-endian length, then `body`. */
/* The spec's longest v1 line. */
static const char v1_worst[] = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                               "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";

static size_t v2(uint8_t *out, uint8_t vercmd, uint8_t fam, const void *body, size_t body_len)
{
    memcpy(out, sig, 12);
    out[12] = vercmd;
    out[13] = fam;
    out[14] = (uint8_t)(body_len >> 8);
    out[15] = (uint8_t)body_len;
    if (body_len > 0)
        memcpy(out + 16, body, body_len);
    return 16 + body_len;
}

static ssize_t parse_str(const char *s, dp_proxy_info *info)
{
    return dp_proxy_parse((const uint8_t *)s, strlen(s), DP_PROXY_DEFAULT_MAX, info);
}

static void check_v4(const struct sockaddr_storage *ss, socklen_t len, const char *addr,
                     uint16_t port)
{
    const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
    ck_assert_int_eq(len, sizeof(struct sockaddr_in));
    ck_assert_int_eq(sin->sin_family, AF_INET);
    ck_assert_uint_eq(sin->sin_port, htons(port));
    char text[INET_ADDRSTRLEN];
    ck_assert_ptr_nonnull(inet_ntop(AF_INET, &sin->sin_addr, text, sizeof text));
    ck_assert_str_eq(text, addr);
}

static void check_v6(const struct sockaddr_storage *ss, socklen_t len, const char *addr,
                     uint16_t port)
{
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
    ck_assert_int_eq(len, sizeof(struct sockaddr_in6));
    ck_assert_int_eq(sin6->sin6_family, AF_INET6);
    ck_assert_uint_eq(sin6->sin6_port, htons(port));
    char text[INET6_ADDRSTRLEN];
    ck_assert_ptr_nonnull(inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof text));
    ck_assert_str_eq(text, addr);
}

/* Every strict prefix of a valid header is "need more"; the whole of it parses. */
static void check_all_prefixes(const uint8_t *buf, size_t len, size_t max_len)
{
    dp_proxy_info info;
    for (size_t k = 0; k < len; k++)
        ck_assert_msg(dp_proxy_parse(buf, k, max_len, &info) == 0, "prefix %zu of %zu", k, len);
    ck_assert_int_eq(dp_proxy_parse(buf, len, max_len, &info), (ssize_t)len);
}

START_TEST(v1_tcp4)
{
    const char *hdr = "PROXY TCP4 192.0.2.1 198.51.100.22 56324 22\r\n";
    char buf[128];
    snprintf(buf, sizeof buf, "%sSSH-2.0-x\r\n", hdr);
    dp_proxy_info info;
    memset(&info, 0xa5, sizeof info);
    ck_assert_int_eq(parse_str(buf, &info), (ssize_t)strlen(hdr));
    ck_assert_int_eq(info.version, 1);
    ck_assert(!info.local);
    check_v4(&info.src, info.src_len, "192.0.2.1", 56324);
    check_v4(&info.dst, info.dst_len, "198.51.100.22", 22);

    ck_assert_int_eq(parse_str("PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", &info), 44);
    check_v4(&info.src, info.src_len, "0.0.0.0", 0);
    check_v4(&info.dst, info.dst_len, "255.255.255.255", 65535);
}
END_TEST

START_TEST(v1_tcp6)
{
    const char *hdr = "PROXY TCP6 2001:db8::1 2001:DB8:0:0:0:0:0:2 1 65535\r\n";
    dp_proxy_info info;
    ck_assert_int_eq(parse_str(hdr, &info), (ssize_t)strlen(hdr));
    ck_assert_int_eq(info.version, 1);
    ck_assert(!info.local);
    check_v6(&info.src, info.src_len, "2001:db8::1", 1);
    check_v6(&info.dst, info.dst_len, "2001:db8::2", 65535);

    hdr = "PROXY TCP6 ::ffff:192.0.2.1 :: 1024 22\r\n";
    ck_assert_int_eq(parse_str(hdr, &info), (ssize_t)strlen(hdr));
    check_v6(&info.src, info.src_len, "::ffff:192.0.2.1", 1024);
    check_v6(&info.dst, info.dst_len, "::", 22);
}
END_TEST

START_TEST(v1_unknown)
{
    dp_proxy_info info;
    ck_assert_int_eq(parse_str("PROXY UNKNOWN\r\nSSH-2.0-x\r\n", &info), 15);
    ck_assert_int_eq(info.version, 1);
    ck_assert(info.local);
    ck_assert_int_eq(info.src_len, 0);
    ck_assert_int_eq(info.dst_len, 0);

    /* The spec's worst case: exactly 107 bytes, everything after UNKNOWN ignored. */
    ck_assert_uint_eq(strlen(v1_worst), 107);
    ck_assert_int_eq(parse_str(v1_worst, &info), 107);
    ck_assert(info.local);

    ck_assert_int_eq(parse_str("PROXY UNKNOWN whatever 1.2.3 x\r\n", &info), 32);
    ck_assert(info.local);
}
END_TEST

START_TEST(v1_ignores_max_len)
{
    /* v1 is capped at 107 whatever max_len says. */
    const char *hdr = "PROXY TCP4 192.0.2.1 198.51.100.22 56324 22\r\n";
    dp_proxy_info info;
    ck_assert_int_eq(dp_proxy_parse((const uint8_t *)hdr, strlen(hdr), 16, &info),
                     (ssize_t)strlen(hdr));
    ck_assert_int_eq(dp_proxy_parse((const uint8_t *)hdr, strlen(hdr), 0, NULL),
                     (ssize_t)strlen(hdr));
}
END_TEST

START_TEST(v2_tcp4)
{
    const uint8_t body[12] = {192, 0, 2, 1, 198, 51, 100, 22, 0xdc, 0x04, 0x00, 0x16};
    uint8_t buf[64];
    size_t n = v2(buf, 0x21, 0x11, body, sizeof body);
    memcpy(buf + n, "SSH-2.0-x\r\n", 11);
    dp_proxy_info info;
    memset(&info, 0xa5, sizeof info);
    ck_assert_int_eq(dp_proxy_parse(buf, n + 11, DP_PROXY_DEFAULT_MAX, &info), 28);
    ck_assert_int_eq(info.version, 2);
    ck_assert(!info.local);
    check_v4(&info.src, info.src_len, "192.0.2.1", 56324);
    check_v4(&info.dst, info.dst_len, "198.51.100.22", 22);
}
END_TEST

START_TEST(v2_tcp6_tlvs)
{
    uint8_t body[36 + 64];
    memset(body, 0, sizeof body);
    body[0] = 0x20, body[1] = 0x01, body[2] = 0x0d, body[3] = 0xb8, body[15] = 1;
    body[16] = 0x20, body[17] = 0x01, body[18] = 0x0d, body[19] = 0xb8, body[31] = 2;
    body[32] = 0x12, body[33] = 0x34, body[34] = 0x00, body[35] = 0x16;
    size_t bl = 36;
    /* PP2_TYPE_ALPN "h2", PP2_TYPE_AUTHORITY "example.org", an empty PP2_TYPE_NOOP. */
    const uint8_t tlvs[] = {0x01, 0x00, 0x02, 'h', '2', 0x02, 0x00, 0x0b, 'e',  'x',  'a',
                            'm',  'p',  'l',  'e', '.', 'o',  'r',  'g',  0x04, 0x00, 0x00};
    memcpy(body + bl, tlvs, sizeof tlvs);
    bl += sizeof tlvs;
    uint8_t buf[256];
    size_t n = v2(buf, 0x21, 0x21, body, bl);
    dp_proxy_info info;
    ck_assert_int_eq(dp_proxy_parse(buf, n, DP_PROXY_DEFAULT_MAX, &info), (ssize_t)n);
    ck_assert_int_eq(info.version, 2);
    ck_assert(!info.local);
    check_v6(&info.src, info.src_len, "2001:db8::1", 0x1234);
    check_v6(&info.dst, info.dst_len, "2001:db8::2", 22);
}
END_TEST

START_TEST(v2_local)
{
    uint8_t buf[64];
    dp_proxy_info info;
    /* LOCAL with AF_UNSPEC and nothing else, as health checks send. */
    size_t n = v2(buf, 0x20, 0x00, NULL, 0);
    memset(&info, 0xa5, sizeof info);
    ck_assert_int_eq(dp_proxy_parse(buf, n, DP_PROXY_DEFAULT_MAX, &info), 16);
    ck_assert_int_eq(info.version, 2);
    ck_assert(info.local);
    ck_assert_int_eq(info.src_len, 0);
    ck_assert_int_eq(info.dst_len, 0);
    /* LOCAL: the block, family included, is discarded (section 2.2), even if short. */
    const uint8_t junk[5] = {1, 2, 3, 4, 5};
    n = v2(buf, 0x20, 0x11, junk, sizeof junk);
    ck_assert_int_eq(dp_proxy_parse(buf, n, DP_PROXY_DEFAULT_MAX, &info), 21);
    ck_assert(info.local);
}
END_TEST

START_TEST(v2_unspec_unix_dgram)
{
    uint8_t buf[512], body[300];
    memset(body, 7, sizeof body);
    dp_proxy_info info;
    /* PROXY over UNSPEC: accepted, real endpoints kept. */
    size_t n = v2(buf, 0x21, 0x00, NULL, 0);
    ck_assert_int_eq(dp_proxy_parse(buf, n, DP_PROXY_DEFAULT_MAX, &info), 16);
    ck_assert(info.local);
    /* UNSPEC with some bytes (could be TLVs): tile them. */
    const uint8_t tlv[] = {0x04, 0x00, 0x01, 0x00};
    n = v2(buf, 0x21, 0x00, tlv, sizeof tlv);
    ck_assert_int_eq(dp_proxy_parse(buf, n, DP_PROXY_DEFAULT_MAX, &info), 20);
    ck_assert(info.local);
    /* UDP4, UDP6, UNIX stream and dgram: valid, no usable TCP address. */
    static const struct {
        uint8_t fam;
        size_t alen;
    } cases[] = {{0x12, 12}, {0x22, 36}, {0x31, 216}, {0x32, 216}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        n = v2(buf, 0x21, cases[i].fam, body, cases[i].alen);
        memset(&info, 0xa5, sizeof info);
        ck_assert_int_eq(dp_proxy_parse(buf, n, DP_PROXY_DEFAULT_MAX, &info), (ssize_t)n);
        ck_assert(info.local);
        ck_assert_int_eq(info.src_len, 0);
    }
}
END_TEST

START_TEST(every_truncation)
{
    static const char *const v1[] = {
        "PROXY TCP4 192.0.2.1 198.51.100.22 56324 22\r\n",
        "PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
        "PROXY TCP6 2001:db8::1 2001:DB8:0:0:0:0:0:2 1 65535\r\n",
        "PROXY TCP6 ::ffff:192.0.2.1 :: 10 0\r\n",
        "PROXY TCP6 0000:0000:0000:0000:0000:0000:1.2.3.4 1:2:3:4:5:6:7:8 1 2\r\n",
        "PROXY UNKNOWN\r\n",
        v1_worst,
    };
    for (size_t i = 0; i < sizeof v1 / sizeof *v1; i++)
        check_all_prefixes((const uint8_t *)v1[i], strlen(v1[i]), DP_PROXY_DEFAULT_MAX);

    uint8_t buf[512], body[300];
    for (size_t i = 0; i < sizeof body; i++)
        body[i] = (uint8_t)(i * 37);
    const uint8_t tlvs[] = {0x01, 0x00, 0x02, 'h', 'x', 0x04, 0x00, 0x00, 0x30, 0x00, 0x01, 0x7};
    uint8_t b2[64];
    memcpy(b2, body, 36);
    memcpy(b2 + 36, tlvs, sizeof tlvs);
    check_all_prefixes(buf, v2(buf, 0x21, 0x11, body, 12), DP_PROXY_DEFAULT_MAX);
    check_all_prefixes(buf, v2(buf, 0x21, 0x21, b2, 36 + sizeof tlvs), DP_PROXY_DEFAULT_MAX);
    check_all_prefixes(buf, v2(buf, 0x20, 0x00, NULL, 0), DP_PROXY_DEFAULT_MAX);
    check_all_prefixes(buf, v2(buf, 0x21, 0x00, NULL, 0), DP_PROXY_DEFAULT_MAX);
    check_all_prefixes(buf, v2(buf, 0x21, 0x31, body, 216), DP_PROXY_DEFAULT_MAX);
    /* A header of exactly max_len is fine. */
    check_all_prefixes(buf, v2(buf, 0x21, 0x11, body, 12), 28);
}
END_TEST

START_TEST(v1_malformed)
{
    static const char *const bad[] = {
        "PROXZ",                                  /* bad signature */
        "proxy TCP4 192.0.2.1 192.0.2.2 1 2\r\n", /* lowercase */
        "PROXY tcp4 192.0.2.1 192.0.2.2 1 2\r\n",
        "PROXY TCP5 192.0.2.1 192.0.2.2 1 2\r\n",
        "PROXY  TCP4 192.0.2.1 192.0.2.2 1 2\r\n", /* double space */
        "PROXY TCP4  192.0.2.1 192.0.2.2 1 2\r\n",
        "PROXY TCP4 192.0.2.1  192.0.2.2 1 2\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2  1 2\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 1  2\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 1 2 \r\n",
        "PROXY\tTCP4 192.0.2.1 192.0.2.2 1 2\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n", /* bare LF */
        "PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\r",
        "PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2\r\n",
        "PROXY TCP4 256.0.2.1 192.0.2.2 1 2\r\n", /* bad address */
        "PROXY TCP4 192.0.2 192.0.2.2 1 2\r\n",
        "PROXY TCP4 192.0.2.01 192.0.2.2 1 2\r\n",
        "PROXY TCP4 2001:db8::1 192.0.2.2 1 2\r\n", /* wrong family */
        "PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",
        "PROXY TCP6 2001:db8::1 2001:db8:::2 1 2\r\n",
        "PROXY TCP6 2001:db8::1%eth0 2001:db8::2 1 2\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 65536 2\r\n", /* port range and form */
        "PROXY TCP4 192.0.2.1 192.0.2.2 1 65536\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 99999 2\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 022 2\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 00 2\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 +22 2\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 -1 2\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 0x16 2\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 1 2x\r\n",
        "PROXY TCP4 192.0.2.1 192.0.2.2 000001 2\r\n",
        "PROXY UNKNOWN x\ry\r\n",
        "PROXY UNKNOWN x\ny\r\n",
        "GET / HTTP/1.1\r\n",
        "SSH-2.0-OpenSSH_9.2\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        dp_proxy_info info;
        ck_assert_msg(parse_str(bad[i], &info) == -EPROTO, "%zu: '%s' -> %zd", i, bad[i],
                      parse_str(bad[i], &info));
    }
}
END_TEST

START_TEST(v1_fails_early)
{
    /* Refused as soon as the bytes cannot start a header, without waiting for more. */
    static const struct {
        const char *s;
        ssize_t want;
    } cases[] = {
        {"PROXZ", -EPROTO},
        {"X", -EPROTO},
        {"p", -EPROTO},
        {"PROXY X", -EPROTO},
        {"PROXY TCP7", -EPROTO},
        {"PROXY TCP4 1.2.3.4.", -EPROTO},
        {"PROXY TCP4 1.2.3.456", -EPROTO},
        {"PROXY TCP4 01", -EPROTO},
        {"PROXY TCP4 a", -EPROTO},
        {"PROXY TCP6 1.2", -EPROTO},
        {"PROXY TCP6 12345", -EPROTO},
        {"PROXY TCP6 :::", -EPROTO},
        {"PROXY TCP6 1:2:3:4:5:6:7:8:", -EPROTO},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 65536", -EPROTO},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 01", -EPROTO},
        /* Still live: these must wait, not fail. */
        {"PROXY TCP4 1.2.3.45", 0},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 0", 0},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", 0},
        {"PROXY TCP6 1:2:3:4:5:6:7:8", 0},
        {"PROXY TCP6 ::ffff:1.2.3.", 0},
        {"PROXY UNKNOWN \r", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        ssize_t rc = parse_str(cases[i].s, NULL);
        ck_assert_msg(rc == cases[i].want, "'%s' -> %zd", cases[i].s, rc);
    }
    /* The one byte that kills a valid prefix. */
    ck_assert_int_eq(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 0 1", NULL), 0);
    ck_assert_int_eq(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 0 1 ", NULL), -EPROTO);
    ck_assert_int_eq(parse_str("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", NULL), -EPROTO);
}
END_TEST

/* Every prefix of any valid IPv6 literal must be accepted as "need more": the early refusal of
 * dead addresses must never refuse a live one. Deterministic pseudo-random literals. */
START_TEST(v1_tcp6_live_prefixes)
{
    uint32_t x = 2463534242u;
    int tried = 0;
    for (int it = 0; it < 4000; it++) {
        uint16_t g[8];
        for (int i = 0; i < 8; i++) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            g[i] = (x & 3) == 0 ? 0 : (x & 3) == 1 ? (uint16_t)(x >> 28) : (uint16_t)(x >> 16);
        }
        struct in6_addr a;
        memcpy(&a, g, sizeof a);
        char text[INET6_ADDRSTRLEN + 8];
        if ((x >> 8) % 3 == 0)
            snprintf(text, sizeof text, "%x:%X:%x:%x:%x:%x:%u.%u.%u.%u", g[0], g[1], g[2], g[3],
                     g[4], g[5], g[6] & 0xff, g[6] >> 8, g[7] & 0xff, g[7] >> 8);
        else
            ck_assert_ptr_nonnull(inet_ntop(AF_INET6, &a, text, sizeof text));
        char line[160];
        int n = snprintf(line, sizeof line, "PROXY TCP6 %s ::1 1 2\r\n", text);
        ck_assert_int_eq(parse_str(line, NULL), n);
        for (size_t k = 11; k <= 11 + strlen(text); k++)
            ck_assert_msg(dp_proxy_parse((const uint8_t *)line, k, 1024, NULL) == 0, "'%.*s'",
                          (int)k, line);
        tried++;
    }
    ck_assert_int_eq(tried, 4000);
}
END_TEST

START_TEST(v1_too_long)
{
    dp_proxy_info info;
    char line[256];
    /* No CRLF within 107 bytes: refused with exactly 107 bytes in hand. */
    memset(line, 0, sizeof line);
    strcpy(line, "PROXY UNKNOWN ");
    memset(line + 14, 'a', 93);
    ck_assert_uint_eq(strlen(line), 107);
    ck_assert_int_eq(dp_proxy_parse((const uint8_t *)line, 106, 4096, &info), 0);
    ck_assert_int_eq(dp_proxy_parse((const uint8_t *)line, 107, 4096, &info), -EMSGSIZE);
    /* A 108-byte line, even with its CRLF present. */
    memset(line + 14, 'a', 92);
    strcpy(line + 106, "\r\n");
    ck_assert_int_eq(parse_str(line, &info), -EMSGSIZE);
    /* CR as byte 107: the LF would be byte 108. */
    memset(line + 14, 'a', 92);
    strcpy(line + 106, "\r");
    ck_assert_int_eq(parse_str(line, &info), -EMSGSIZE);
    /* 107 with CRLF is fine. */
    memset(line + 14, 'a', 91);
    strcpy(line + 105, "\r\n");
    ck_assert_int_eq(parse_str(line, &info), 107);
    /* Valid TCP6 fields, too long a line. */
    const char *l6 = "PROXY TCP6 0000:0000:0000:0000:0000:0000:255.255.255.255 "
                     "0000:0000:0000:0000:0000:0000:255.255.255.255 65535 65535\r\n";
    ck_assert_int_eq(parse_str(l6, &info), -EMSGSIZE);
}
END_TEST

START_TEST(v2_malformed)
{
    uint8_t buf[128], body[64];
    memset(body, 1, sizeof body);
    dp_proxy_info info;
    size_t n;

    /* Bad signature: one wrong byte at each position, refused right there. */
    for (size_t i = 0; i < 12; i++) {
        n = v2(buf, 0x21, 0x11, body, 12);
        buf[i] ^= 0x20;
        ck_assert_int_eq(dp_proxy_parse(buf, i + 1, 1024, &info), -EPROTO);
        ck_assert_int_eq(dp_proxy_parse(buf, n, 1024, &info), -EPROTO);
    }
    /* Bad version: 1 and 3; refused at byte 13. */
    n = v2(buf, 0x11, 0x11, body, 12);
    ck_assert_int_eq(dp_proxy_parse(buf, 13, 1024, &info), -EPROTO);
    n = v2(buf, 0x31, 0x11, body, 12);
    ck_assert_int_eq(dp_proxy_parse(buf, n, 1024, &info), -EPROTO);
    /* Bad command. */
    n = v2(buf, 0x22, 0x11, body, 12);
    ck_assert_int_eq(dp_proxy_parse(buf, 13, 1024, &info), -EPROTO);
    n = v2(buf, 0x2f, 0x11, body, 12);
    ck_assert_int_eq(dp_proxy_parse(buf, n, 1024, &info), -EPROTO);
    /* Family/transport combinations the spec says to reject. */
    static const uint8_t badfam[] = {0x01, 0x02, 0x10, 0x13, 0x20, 0x41, 0x30, 0xf1, 0x1f};
    for (size_t i = 0; i < sizeof badfam; i++) {
        n = v2(buf, 0x21, badfam[i], body, 36);
        ck_assert_int_eq(dp_proxy_parse(buf, 14, 1024, &info), -EPROTO);
        ck_assert_int_eq(dp_proxy_parse(buf, n, 1024, &info), -EPROTO);
    }
    /* Length too short for the family, known from the 16 fixed bytes. */
    n = v2(buf, 0x21, 0x11, body, 11);
    ck_assert_int_eq(dp_proxy_parse(buf, 16, 1024, &info), -EPROTO);
    ck_assert_int_eq(dp_proxy_parse(buf, n, 1024, &info), -EPROTO);
    n = v2(buf, 0x21, 0x21, body, 35);
    ck_assert_int_eq(dp_proxy_parse(buf, n, 1024, &info), -EPROTO);
    n = v2(buf, 0x21, 0x21, body, 12);
    ck_assert_int_eq(dp_proxy_parse(buf, n, 1024, &info), -EPROTO);
    n = v2(buf, 0x21, 0x11, NULL, 0);
    ck_assert_int_eq(dp_proxy_parse(buf, n, 1024, &info), -EPROTO);
    uint8_t big[16 + 215];
    memset(big, 0, sizeof big);
    v2(big, 0x21, 0x31, NULL, 0);
    big[15] = 215; /* AF_UNIX needs 216 */
    ck_assert_int_eq(dp_proxy_parse(big, sizeof big, 1024, &info), -EPROTO);
}
END_TEST

START_TEST(v2_tlv_overrun)
{
    uint8_t body[64], buf[128];
    memset(body, 9, sizeof body);
    dp_proxy_info info;
    /* A TLV claiming 10 bytes where 5 remain. */
    const uint8_t over[] = {0x04, 0x00, 0x0a, 1, 2, 3, 4, 5};
    memcpy(body + 12, over, sizeof over);
    size_t n = v2(buf, 0x21, 0x11, body, 12 + sizeof over);
    ck_assert_int_eq(dp_proxy_parse(buf, n, 1024, &info), -EPROTO);
    /* Known as soon as the TLV's own header is in. */
    ck_assert_int_eq(dp_proxy_parse(buf, 16 + 12 + 2, 1024, &info), 0);
    ck_assert_int_eq(dp_proxy_parse(buf, 16 + 12 + 3, 1024, &info), -EPROTO);
    /* Two stray bytes: not even a TLV header. */
    const uint8_t stray[] = {0x04, 0x00, 0x00, 0x04, 0x00};
    memcpy(body + 12, stray, sizeof stray);
    n = v2(buf, 0x21, 0x11, body, 12 + sizeof stray);
    ck_assert_int_eq(dp_proxy_parse(buf, n, 1024, &info), -EPROTO);
    /* One byte too many in the second TLV. */
    const uint8_t second[] = {0x01, 0x00, 0x01, 'a', 0x02, 0x00, 0x03, 'b', 'c'};
    memcpy(body + 12, second, sizeof second);
    n = v2(buf, 0x21, 0x11, body, 12 + sizeof second);
    ck_assert_int_eq(dp_proxy_parse(buf, n, 1024, &info), -EPROTO);
    /* ... and the same with the right length parses. */
    buf[16 + 12 + 6] = 0x02;
    ck_assert_int_eq(dp_proxy_parse(buf, n, 1024, &info), (ssize_t)n);
}
END_TEST

START_TEST(v2_oversized)
{
    uint8_t buf[16];
    /* 16 + 1009 = 1025 > 1024: refused from the fixed part alone. */
    v2(buf, 0x21, 0x11, NULL, 0);
    buf[14] = 0x03, buf[15] = 0xf1;
    ck_assert_int_eq(dp_proxy_parse(buf, 16, 1024, NULL), -EMSGSIZE);
    ck_assert_int_eq(dp_proxy_parse(buf, 15, 1024, NULL), 0);
    /* 16 + 1008 = 1024 fits: need more. */
    buf[15] = 0xf0;
    ck_assert_int_eq(dp_proxy_parse(buf, 16, 1024, NULL), 0);
    buf[14] = 0xff, buf[15] = 0xff;
    ck_assert_int_eq(dp_proxy_parse(buf, 16, 4096, NULL), -EMSGSIZE);
    /* LOCAL obeys the cap too. */
    v2(buf, 0x20, 0x00, NULL, 0);
    buf[14] = 0x10;
    ck_assert_int_eq(dp_proxy_parse(buf, 16, 1024, NULL), -EMSGSIZE);
    /* A tiny max_len refuses even a minimal header. */
    v2(buf, 0x21, 0x11, NULL, 0);
    buf[15] = 12;
    ck_assert_int_eq(dp_proxy_parse(buf, 16, 27, NULL), -EMSGSIZE);
}
END_TEST

START_TEST(empty_input)
{
    ck_assert_int_eq(dp_proxy_parse((const uint8_t *)"", 0, 1024, NULL), 0);
    ck_assert_int_eq(dp_proxy_parse(NULL, 0, 1024, NULL), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("proxyproto");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, v1_tcp4);
    tcase_add_test(tc, v1_tcp6);
    tcase_add_test(tc, v1_unknown);
    tcase_add_test(tc, v1_ignores_max_len);
    tcase_add_test(tc, v2_tcp4);
    tcase_add_test(tc, v2_tcp6_tlvs);
    tcase_add_test(tc, v2_local);
    tcase_add_test(tc, v2_unspec_unix_dgram);
    tcase_add_test(tc, every_truncation);
    tcase_add_test(tc, v1_malformed);
    tcase_add_test(tc, v1_fails_early);
    tcase_add_test(tc, v1_tcp6_live_prefixes);
    tcase_add_test(tc, v1_too_long);
    tcase_add_test(tc, v2_malformed);
    tcase_add_test(tc, v2_tlv_overrun);
    tcase_add_test(tc, v2_oversized);
    tcase_add_test(tc, empty_input);
    suite_add_tcase(s, tc);
    return dp_test_run_suite(s);
}
