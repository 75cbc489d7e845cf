/* dp_cidr.c - IPv4/IPv6 CIDR parsing and matching. */
#include "dp_cidr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

/* Longest text we accept: a full IPv6 literal (INET6_ADDRSTRLEN includes the NUL) plus "/128". */
#define CIDR_TEXT_MAX (INET6_ADDRSTRLEN + 4)

/* The ::ffff:0:0/96 prefix of IPv4-mapped IPv6 addresses (RFC 4291 section 2.5.5.2). */
static const uint8_t v4mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* Strict decimal prefix length: digits only, no sign, no leading zero except "0" itself, so that
 * a typo such as "/08" or "/ 8" in an ACL is an error rather than a silent reinterpretation. */
static int parse_prefix(const char *s, unsigned max, unsigned *out)
{
    if (*s == '\0' || (s[0] == '0' && s[1] != '\0'))
        return -EINVAL;
    unsigned v = 0;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9')
            return -EINVAL;
        v = v * 10 + (unsigned)(*s - '0');
        if (v > max)
            return -EINVAL;
    }
    *out = v;
    return 0;
}

/* Compare the first `prefix` bits of a and b. */
static bool prefix_equal(const uint8_t *a, const uint8_t *b, unsigned prefix)
{
    unsigned full = prefix / 8;
    unsigned rest = prefix % 8;
    if (memcmp(a, b, full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return ((a[full] ^ b[full]) & mask) == 0;
}

/* True if any bit past `prefix` is set in the `bytes`-long address. */
static bool host_bits_set(const uint8_t *addr, size_t bytes, unsigned prefix)
{
    for (size_t i = 0; i < bytes; i++) {
        unsigned first_bit = (unsigned)i * 8;
        uint8_t host_mask;
        if (first_bit + 8 <= prefix)
            host_mask = 0;
        else if (first_bit >= prefix)
            host_mask = 0xff;
        else
            host_mask = (uint8_t)(0xff >> (prefix - first_bit));
        if (addr[i] & host_mask)
            return true;
    }
    return false;
}

int dp_cidr_parse(const char *text, dp_cidr *out)
{
    if (text == NULL || out == NULL)
        return -EINVAL;
    size_t n = strlen(text);
    if (n == 0 || n >= CIDR_TEXT_MAX)
        return -EINVAL;

    char addr[CIDR_TEXT_MAX];
    memcpy(addr, text, n + 1);
    char *slash = strchr(addr, '/');
    if (slash != NULL)
        *slash = '\0';

    dp_cidr c;
    memset(&c, 0, sizeof c);
    /* The family is chosen by the text, not by trial: a ':' can only be IPv6. inet_pton is strict
     * (no "10.1", no octal, no spaces, no zone ids), which is what an ACL wants. */
    c.family = strchr(addr, ':') != NULL ? AF_INET6 : AF_INET;
    if (inet_pton(c.family, addr, c.addr) != 1)
        return -EINVAL;

    unsigned max = c.family == AF_INET ? 32 : 128;
    c.prefix = max;
    if (slash != NULL && parse_prefix(slash + 1, max, &c.prefix) < 0)
        return -EINVAL;
    /* "10.0.0.1/8" is almost always a mistake for either /32 or 10.0.0.0/8; refuse rather than
     * guess which. */
    if (host_bits_set(c.addr, max / 8, c.prefix))
        return -EINVAL;

    *out = c;
    return 0;
}

bool dp_cidr_match(const dp_cidr *c, const struct sockaddr *sa)
{
    if (c == NULL || sa == NULL)
        return false;

    uint8_t v6[16];
    const uint8_t *v4 = NULL;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        v4 = (const uint8_t *)&sin->sin_addr;
        /* Also seen as ::ffff:a.b.c.d so that a v6 CIDR gives the same answer whether the
         * listener is a v4 socket or a dual-stack v6 socket. */
        memcpy(v6, v4mapped_prefix, sizeof v4mapped_prefix);
        memcpy(v6 + 12, v4, 4);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        memcpy(v6, &sin6->sin6_addr, 16);
        /* A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; they must match the
         * IPv4 CIDRs an operator wrote for them. */
        if (memcmp(v6, v4mapped_prefix, sizeof v4mapped_prefix) == 0)
            v4 = v6 + 12;
    } else {
        return false;
    }

    if (c->family == AF_INET)
        return v4 != NULL && c->prefix <= 32 && prefix_equal(c->addr, v4, c->prefix);
    if (c->family == AF_INET6)
        return c->prefix <= 128 && prefix_equal(c->addr, v6, c->prefix);
    return false;
}

bool dp_cidr_list_match(const dp_cidr *list, size_t n, const struct sockaddr *sa)
{
    for (size_t i = 0; i < n; i++)
        if (dp_cidr_match(&list[i], sa))
            return true;
    return false;
}

const char *dp_cidr_format(const dp_cidr *c, char *buf, size_t len)
{
    if (buf == NULL || len == 0)
        return buf;
    char addr[INET6_ADDRSTRLEN];
    if (c == NULL || (c->family != AF_INET && c->family != AF_INET6) ||
        inet_ntop(c->family, c->addr, addr, sizeof addr) == NULL) {
        snprintf(buf, len, "?");
        return buf;
    }
    snprintf(buf, len, "%s/%u", addr, c->prefix);
    return buf;
}
