/*
 * dp_proxyproto.c - PROXY protocol v1/v2 header parser.
 * Spec: https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt (sections 2.1 and 2.2).
 *
 * The parser is incremental in the sense that it may be called again with more bytes: it
 * returns 0 while the bytes seen are a prefix of some valid header, and fails as soon as they
 * cannot be, so that a reader never waits for its deadline on a peer that sent garbage.
 */
#include "dp_proxyproto.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

/* Section 2.2: "\r\n\r\n\0\r\nQUIT\n". */
static const uint8_t v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

#define V1_ADDR4_MAX 15 /* "255.255.255.255" */
#define V1_ADDR6_MAX 45 /* INET6_ADDRSTRLEN - 1: "ffff:...:ffff:255.255.255.255" */
#define V1_PORT_MAX 5   /* "65535" */

#define V2_CMD_LOCAL 0x0
#define V2_CMD_PROXY 0x1
#define V2_AF_UNSPEC 0x0
#define V2_AF_INET 0x1
#define V2_AF_INET6 0x2
#define V2_AF_UNIX 0x3
#define V2_TP_UNSPEC 0x0
#define V2_TP_STREAM 0x1
#define V2_TP_DGRAM 0x2

/* Outcome of matching one piece of a v1 line against the bytes available. */
enum step { STEP_OK, STEP_MORE, STEP_BAD };

typedef struct v1_cursor {
    const uint8_t *buf;
    size_t len; /* bytes available (already capped at DP_PROXY_V1_MAX) */
    size_t pos;
} v1_cursor;

/* Does buf[0..n) match the start of `lit`? STEP_MORE if it is a strict prefix of it. */
static enum step match_literal(v1_cursor *c, const char *lit)
{
    size_t n = strlen(lit);
    for (size_t i = 0; i < n; i++) {
        if (c->pos + i >= c->len)
            return STEP_MORE;
        if (c->buf[c->pos + i] != (uint8_t)lit[i])
            return STEP_BAD;
    }
    c->pos += n;
    return STEP_OK;
}

static bool addr_char_ok(int af, uint8_t ch)
{
    if (ch >= '0' && ch <= '9')
        return true;
    if (ch == '.')
        return true;
    if (af == AF_INET)
        return false;
    return ch == ':' || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

/*
 * Could text[0..n) still grow into an address inet_pton(af) accepts? Rather than re-implement
 * inet_pton's grammar (and risk disagreeing with it), try the few shortest completions that
 * cover every way a partial literal can end: mid-group, after ':' or "::", or inside an
 * embedded/plain dotted quad. A missed completion would only make us wait, never wrongly accept.
 */
static bool addr_prefix_ok(int af, const uint8_t *text, size_t n)
{
    static const char *const tails4[] = {"",     "0",     ".0",     "0.0",
                                         ".0.0", "0.0.0", ".0.0.0", "0.0.0.0"};
    static const char *const tails6[] = {
        "",    "0",    ":",     ":0",     "::",   "0::", "::0",  ".0",
        "0.0", ".0.0", "0.0.0", ".0.0.0", ":0:0", "0:0", ":0::", "::0.0.0.0"};
    const char *const *tails = af == AF_INET ? tails4 : tails6;
    size_t ntails = af == AF_INET ? sizeof tails4 / sizeof *tails4 : sizeof tails6 / sizeof *tails6;
    char cand[64];
    uint8_t out[16];

    if (n > V1_ADDR6_MAX)
        return false;
    for (size_t i = 0; i < ntails; i++) {
        size_t tl = strlen(tails[i]);
        if (n + tl >= sizeof cand)
            continue;
        memcpy(cand, text, n);
        memcpy(cand + n, tails[i], tl + 1);
        if (inet_pton(af, cand, out) == 1)
            return true;
    }
    return false;
}

/* An address field terminated by a single space. */
static enum step parse_v1_addr(v1_cursor *c, int af, void *addr)
{
    size_t max = af == AF_INET ? V1_ADDR4_MAX : V1_ADDR6_MAX;
    size_t start = c->pos;
    size_t i = start;
    for (; i < c->len && c->buf[i] != ' '; i++) {
        if (!addr_char_ok(af, c->buf[i]) || i - start >= max)
            return STEP_BAD;
    }
    size_t n = i - start;
    if (i == c->len)
        return addr_prefix_ok(af, c->buf + start, n) ? STEP_MORE : STEP_BAD;
    if (n == 0) /* two spaces in a row */
        return STEP_BAD;

    char text[V1_ADDR6_MAX + 1];
    memcpy(text, c->buf + start, n);
    text[n] = '\0';
    if (inet_pton(af, text, addr) != 1)
        return STEP_BAD;
    c->pos = i + 1;
    return STEP_OK;
}

/* A port: 0..65535 in plain decimal, no sign, no leading zeros (section 2.1), followed by `term`.
 */
static enum step parse_v1_port(v1_cursor *c, const char *term, uint16_t *port)
{
    size_t start = c->pos;
    size_t i = start;
    unsigned long v = 0;
    for (; i < c->len && c->buf[i] >= '0' && c->buf[i] <= '9'; i++) {
        if (i > start && c->buf[start] == '0')
            return STEP_BAD;
        if (i - start >= V1_PORT_MAX)
            return STEP_BAD;
        v = v * 10 + (unsigned long)(c->buf[i] - '0');
        if (v > 65535)
            return STEP_BAD;
    }
    if (i == c->len)
        return STEP_MORE;
    if (i == start)
        return STEP_BAD;
    c->pos = i;
    enum step st = match_literal(c, term);
    if (st == STEP_OK)
        *port = (uint16_t)v;
    return st;
}

static void fill_sockaddr(int af, struct sockaddr_storage *ss, socklen_t *sl, const void *addr,
                          uint16_t port_host)
{
    memset(ss, 0, sizeof *ss);
    if (af == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port_host);
        memcpy(&sin->sin_addr, addr, 4);
        *sl = sizeof *sin;
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port_host);
        memcpy(&sin6->sin6_addr, addr, 16);
        *sl = sizeof *sin6;
    }
}

/* The rest of an "UNKNOWN" line: section 2.1 says the receiver must ignore everything up to the
 * CRLF. A CR must still be followed by LF and a bare LF is not a line end we accept. */
static enum step skip_to_crlf(v1_cursor *c)
{
    for (size_t i = c->pos; i < c->len; i++) {
        if (c->buf[i] == '\n')
            return STEP_BAD;
        if (c->buf[i] == '\r') {
            if (i + 1 == c->len)
                return STEP_MORE;
            if (c->buf[i + 1] != '\n')
                return STEP_BAD;
            c->pos = i + 2;
            return STEP_OK;
        }
    }
    return STEP_MORE;
}

static enum step parse_v1_line(v1_cursor *c, dp_proxy_info *info)
{
    enum step st = match_literal(c, "PROXY ");
    if (st != STEP_OK)
        return st;

    /* Which protocol token: every candidate the available bytes are still a prefix of keeps
     * us waiting, none means garbage. */
    static const struct {
        const char *tok;
        int af;
    } protos[] = {{"TCP4 ", AF_INET}, {"TCP6 ", AF_INET6}, {"UNKNOWN", AF_UNSPEC}};
    int af = -1;
    bool more = false;
    for (size_t i = 0; i < sizeof protos / sizeof *protos; i++) {
        v1_cursor t = *c;
        st = match_literal(&t, protos[i].tok);
        if (st == STEP_OK) {
            *c = t;
            af = protos[i].af;
            break;
        }
        if (st == STEP_MORE)
            more = true;
    }
    if (af < 0)
        return more ? STEP_MORE : STEP_BAD;

    memset(info, 0, sizeof *info);
    info->version = 1;
    if (af == AF_UNSPEC) {
        info->local = true;
        return skip_to_crlf(c);
    }

    uint8_t src[16], dst[16];
    uint16_t sport = 0, dport = 0;
    if ((st = parse_v1_addr(c, af, src)) != STEP_OK)
        return st;
    if ((st = parse_v1_addr(c, af, dst)) != STEP_OK)
        return st;
    if ((st = parse_v1_port(c, " ", &sport)) != STEP_OK)
        return st;
    if ((st = parse_v1_port(c, "\r\n", &dport)) != STEP_OK)
        return st;
    fill_sockaddr(af, &info->src, &info->src_len, src, sport);
    fill_sockaddr(af, &info->dst, &info->dst_len, dst, dport);
    return STEP_OK;
}

static ssize_t parse_v1(const uint8_t *buf, size_t len, dp_proxy_info *out)
{
    /* Section 2.1: a receiver never needs more than 107 bytes to find the CRLF. */
    v1_cursor c = {buf, len < DP_PROXY_V1_MAX ? len : DP_PROXY_V1_MAX, 0};
    dp_proxy_info info;
    switch (parse_v1_line(&c, &info)) {
    case STEP_OK:
        if (out != NULL)
            *out = info;
        return (ssize_t)c.pos;
    case STEP_MORE:
        return len >= DP_PROXY_V1_MAX ? -EMSGSIZE : 0;
    case STEP_BAD:
        break;
    }
    return -EPROTO;
}

/* Size of the address block for a v2 family (section 2.2, "struct proxy_hdr_v2" addr union). */
static size_t v2_addr_len(unsigned fam)
{
    switch (fam) {
    case V2_AF_INET:
        return 12;
    case V2_AF_INET6:
        return 36;
    case V2_AF_UNIX:
        return 216;
    default:
        return 0;
    }
}

static ssize_t parse_v2(const uint8_t *buf, size_t len, size_t max_len, dp_proxy_info *out)
{
    size_t sig = len < sizeof v2_sig ? len : sizeof v2_sig;
    if (memcmp(buf, v2_sig, sig) != 0)
        return -EPROTO;
    if (len <= 12)
        return 0;

    unsigned ver = buf[12] >> 4, cmd = buf[12] & 0x0f;
    if (ver != 2 || (cmd != V2_CMD_LOCAL && cmd != V2_CMD_PROXY))
        return -EPROTO;
    if (len <= 13)
        return 0;

    unsigned fam = buf[13] >> 4, tp = buf[13] & 0x0f;
    /* Only 0x00, 0x11, 0x12, 0x21, 0x22, 0x31 and 0x32 exist; receivers must reject the rest.
     * With LOCAL the family "is ignored" (section 2.2), so it is not checked there. */
    bool fam_ok =
        (fam == V2_AF_UNSPEC && tp == V2_TP_UNSPEC) ||
        (fam >= V2_AF_INET && fam <= V2_AF_UNIX && (tp == V2_TP_STREAM || tp == V2_TP_DGRAM));
    if (cmd == V2_CMD_PROXY && !fam_ok)
        return -EPROTO;
    if (len < DP_PROXY_V2_FIXED)
        return 0;

    size_t body = ((size_t)buf[14] << 8) | buf[15];
    size_t total = DP_PROXY_V2_FIXED + body;
    if (total > max_len)
        return -EMSGSIZE;

    /* LOCAL: "discard the protocol block including the family", so neither the address block
     * nor TLVs are looked at. */
    size_t alen = cmd == V2_CMD_PROXY ? v2_addr_len(fam) : body;
    if (body < alen)
        return -EPROTO;

    /* TLVs (type, 16-bit length, value) must tile the rest exactly; check every TLV header that
     * has arrived so an overrun fails without waiting for bytes that would never be enough. */
    size_t end = total;
    size_t avail = len < end ? len : end;
    size_t pos = DP_PROXY_V2_FIXED + alen;
    while (pos < end) {
        if (end - pos < 3)
            return -EPROTO;
        if (pos + 3 > avail)
            break;
        size_t tlen = ((size_t)buf[pos + 1] << 8) | buf[pos + 2];
        if (tlen > end - pos - 3)
            return -EPROTO;
        pos += 3 + tlen;
    }
    if (len < total)
        return 0;

    if (out != NULL) {
        memset(out, 0, sizeof *out);
        out->version = 2;
        const uint8_t *a = buf + DP_PROXY_V2_FIXED;
        if (cmd == V2_CMD_PROXY && fam == V2_AF_INET && tp == V2_TP_STREAM) {
            /* Ports are big-endian on the wire, as in sin_port. */
            fill_sockaddr(AF_INET, &out->src, &out->src_len, a, (uint16_t)(a[8] << 8 | a[9]));
            fill_sockaddr(AF_INET, &out->dst, &out->dst_len, a + 4, (uint16_t)(a[10] << 8 | a[11]));
        } else if (cmd == V2_CMD_PROXY && fam == V2_AF_INET6 && tp == V2_TP_STREAM) {
            fill_sockaddr(AF_INET6, &out->src, &out->src_len, a, (uint16_t)(a[32] << 8 | a[33]));
            fill_sockaddr(AF_INET6, &out->dst, &out->dst_len, a + 16,
                          (uint16_t)(a[34] << 8 | a[35]));
        } else {
            /* LOCAL, UNSPEC, AF_UNIX or datagram: nothing we can use as a TCP peer address, so
             * the caller keeps the socket's own endpoints (the spec lets receivers do this). */
            out->local = true;
        }
    }
    return (ssize_t)total;
}

ssize_t dp_proxy_parse(const uint8_t *buf, size_t len, size_t max_len, dp_proxy_info *out)
{
    if (len == 0)
        return 0;
    if (buf == NULL)
        return -EPROTO;
    if (buf[0] == 'P')
        return parse_v1(buf, len, out);
    if (buf[0] == v2_sig[0])
        return parse_v2(buf, len, max_len, out);
    return -EPROTO;
}
