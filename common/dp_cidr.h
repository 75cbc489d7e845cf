/* dp_cidr.h - IPv4/IPv6 CIDR parsing and matching (trusted PROXY-protocol sources, ACLs). */
#ifndef DP_CIDR_H
#define DP_CIDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct dp_cidr {
    int family;       /* AF_INET or AF_INET6 */
    uint8_t addr[16]; /* network address, host bits cleared */
    unsigned prefix;  /* 0..32 or 0..128 */
} dp_cidr;

/* Parse "10.0.0.0/8", "192.0.2.1" (= /32), "::1", "2001:db8::/32". Host bits set beyond the
 * prefix are refused (-EINVAL), as is any other malformed text. Returns 0 or -EINVAL. */
int dp_cidr_parse(const char *text, dp_cidr *out);

/* Does `sa` (AF_INET or AF_INET6) fall in `c`? An IPv4-mapped IPv6 address (::ffff:a.b.c.d)
 * matches IPv4 CIDRs. */
bool dp_cidr_match(const dp_cidr *c, const struct sockaddr *sa);

/* True if `sa` matches any of the n CIDRs. */
bool dp_cidr_list_match(const dp_cidr *list, size_t n, const struct sockaddr *sa);

/* Format `c` back into text ("10.0.0.0/8"); returns buf. */
const char *dp_cidr_format(const dp_cidr *c, char *buf, size_t len);

#endif
