/*
 * ftpp_proto.c - the FTP control-connection wire formats: the client command line reader and
 * the Telnet layer under it, the backend reply reader, and the data-address parsers and
 * formatters of RFC 959 and RFC 2428. Pure functions: no allocation, no I/O, no logging.
 *
 * Every byte here comes from an unauthenticated client or from a backend. So numbers are
 * bounded as they are read (a digit string of any length saturates, never overflows), every
 * read is checked against the length given or the string's NUL, and the buffers in the
 * readers are never written past their declared size.
 */
#include "ftpp_proto.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

/* Telnet command codes (RFC 854, "TELNET COMMAND STRUCTURE"): 240 (SE) to 255 (IAC). */
#define TN_IAC 255
#define TN_WILL 251 /* WILL, WONT, DO, DONT: 251..254, each followed by one option byte */
#define TN_CMD_MIN 240

/* Telnet reader states (ftpp_linebuf.iac). */
#define IAC_DATA 0
#define IAC_SEEN 1
#define IAC_OPTION 2

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* ASCII only: the C library's toupper() depends on the locale. */
static char ascii_upper(char c)
{
    return c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
}

/*
 * Reads the run of decimal digits at *p (at least one) into *out and moves *p past all of it.
 * The value saturates at max + 1: a run of any length cannot overflow, and the caller refuses
 * anything above max. Leading zeros are allowed (RFC 959 does not forbid them in PORT).
 */
static bool read_num(const char **p, unsigned max, unsigned *out)
{
    const char *s = *p;
    unsigned v = 0;
    if (!is_digit(*s))
        return false;
    for (; is_digit(*s); s++) {
        if (v <= max) /* v <= 65535 here, so v * 10 + 9 fits an unsigned */
            v = v * 10 + (unsigned)(*s - '0');
        if (v > max)
            v = max + 1;
    }
    *p = s;
    *out = v;
    return true;
}

/* ---- client command lines ---- */

void ftpp_line_init(ftpp_linebuf *lb)
{
    memset(lb, 0, sizeof *lb);
}

/* One data byte of the current line (the Telnet layer already removed). */
static void line_put(ftpp_linebuf *lb, uint8_t c)
{
    if (lb->overflow)
        return; /* dropped up to the end of the line */
    /* RFC 959 §4.1.3: a command ends with CRLF. A CR is held at the end of the line and is
     * fine only if LF comes next; followed by anything else it is a stray control byte. */
    if (lb->len > 0 && lb->line[lb->len - 1] == '\r')
        lb->bad = true;
    /* NVT ASCII (RFC 854): no command or argument has a use for control bytes, and a NUL
     * would cut the line short for every C string function after us. TAB is tolerated;
     * bytes >= 0x80 are data (UTF-8 paths, RFC 2640). */
    if (c != '\r' && c != '\t' && (c < 0x20 || c == 0x7f))
        lb->bad = true;
    /* The CR before LF may take the NUL's slot: a line of exactly FTPP_CMD_MAX bytes plus
     * CRLF fits, and the CR is removed at the LF (or anything after it overflows). */
    size_t cap = c == '\r' ? FTPP_CMD_MAX + 1 : FTPP_CMD_MAX;
    if (lb->len >= cap) {
        lb->overflow = true;
        return;
    }
    lb->line[lb->len++] = (char)c;
}

static ftpp_line_status line_end(ftpp_linebuf *lb)
{
    ftpp_line_status st = FTPP_LINE_OK;
    if (lb->overflow)
        st = FTPP_LINE_TOO_LONG;
    else if (lb->bad)
        st = FTPP_LINE_BAD;
    if (st != FTPP_LINE_OK)
        lb->len = 0; /* nothing of a refused line is handed out */
    else if (lb->len > 0 && lb->line[lb->len - 1] == '\r')
        lb->len--;
    lb->line[lb->len] = '\0'; /* len <= FTPP_CMD_MAX here */
    lb->overflow = false;
    lb->bad = false;
    lb->done = true; /* line/len stay valid until the next feed */
    return st;
}

size_t ftpp_line_feed(ftpp_linebuf *lb, const char *data, size_t len, ftpp_line_status *status)
{
    if (lb->done) {
        lb->len = 0;
        lb->line[0] = '\0';
        lb->done = false;
    }
    for (size_t i = 0; i < len; i++) {
        uint8_t c = (uint8_t)data[i];
        /* RFC 1123 §4.1.2.12: the control connection is Telnet; the server need not
         * negotiate options but must get the commands out of the stream. */
        if (lb->iac == IAC_OPTION) { /* IAC WILL/WONT/DO/DONT <option>: any byte */
            lb->iac = IAC_DATA;
            continue;
        }
        if (lb->iac == IAC_SEEN) {
            lb->iac = IAC_DATA;
            if (c == TN_IAC) { /* RFC 854: IAC IAC is one data byte 255 */
                line_put(lb, c);
                continue;
            }
            if (c >= TN_WILL) {
                lb->iac = IAC_OPTION;
                continue;
            }
            if (c >= TN_CMD_MIN) /* IP, DM, AYT, NOP, SB, SE, ...: removed */
                continue;
            /* Not a Telnet command: drop the lone IAC and keep c as data. This is what
             * happens to the ABOR sequence of RFC 959 §4.1.3 (IAC IP, then the Synch IAC DM
             * sent as TCP urgent data): without SO_OOBINLINE the kernel takes the urgent
             * byte, DM, out of the stream, and the IAC before it is followed by "ABOR". */
        } else if (c == TN_IAC) {
            lb->iac = IAC_SEEN;
            continue;
        }
        if (c == '\n') { /* bare LF accepted too: clients in the wild send it */
            *status = line_end(lb);
            return i + 1;
        }
        line_put(lb, c);
    }
    *status = FTPP_LINE_NONE;
    return len;
}

int ftpp_cmd_split(char *line, char verb[5], char **arg)
{
    /* RFC 959 §5.3.1: <command> ::= <verb> | <verb> <SP> <argument>; every verb of RFC 959
     * and its extensions (RFC 2389, 2428, 3659) is 3 or 4 letters. At most five bytes read,
     * and none past the NUL. */
    size_t n = 0;
    while (n < 4 && is_alpha(line[n]))
        n++;
    if (n < 3 || (line[n] != '\0' && line[n] != ' ')) {
        verb[0] = '\0';
        *arg = line; /* the whole line, for a log message */
        return -EINVAL;
    }
    for (size_t i = 0; i < n; i++)
        verb[i] = ascii_upper(line[i]);
    verb[n] = '\0';
    *arg = line[n] == ' ' ? line + n + 1 : line + n;
    return 0;
}

/* ---- backend replies ---- */

void ftpp_reply_init(ftpp_reply_reader *rr)
{
    memset(rr, 0, sizeof *rr);
}

/* RFC 959 §4.2: a reply code is three digits, the first 1..5. 0 when the line has none. */
static int reply_code(const char *s, size_t n)
{
    if (n < 3 || s[0] < '1' || s[0] > '5' || !is_digit(s[1]) || !is_digit(s[2]))
        return 0;
    return (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
}

static void reply_end(ftpp_reply_reader *rr, ftpp_reply_line *out)
{
    size_t n = rr->len;
    if (rr->overflow) {
        if (n > FTPP_REPLY_LINE_MAX) /* a CR held in the NUL's slot, then more bytes */
            n = FTPP_REPLY_LINE_MAX;
    } else if (n > 0 && rr->line[n - 1] == '\r') {
        n--;
    }
    rr->line[n] = '\0';

    int code = reply_code(rr->line, n);
    /* "ddd" alone is taken as "ddd " (a reply with no text). */
    char sep = n > 3 ? rr->line[3] : ' ';
    out->text = rr->line;
    out->len = n;
    out->cut = rr->overflow;
    if (rr->multi != 0) {
        /* RFC 959 §4.2: only "ddd " with the code of the first line closes a multi-line
         * reply; any other line, even one that starts with a code, is part of it. */
        out->code = rr->multi;
        out->first = false;
        out->last = code == rr->multi && sep == ' ';
        if (out->last)
            rr->multi = 0;
    } else if (code != 0 && (sep == ' ' || sep == '-')) {
        out->code = code;
        out->first = true;
        out->last = sep == ' ';
        if (sep == '-')
            rr->multi = code;
    } else {
        out->code = 0; /* not a reply: the caller decides */
        out->first = true;
        out->last = true;
    }
    /* The text stays in rr->line until the next feed overwrites it. */
    rr->len = 0;
    rr->overflow = false;
}

size_t ftpp_reply_feed(ftpp_reply_reader *rr, const char *data, size_t len, ftpp_reply_line *out,
                       bool *got)
{
    *got = false;
    for (size_t i = 0; i < len; i++) {
        char c = data[i];
        if (c == '\n') {
            reply_end(rr, out);
            *got = true;
            return i + 1;
        }
        /* As for commands, the CR of CRLF may sit in the NUL's slot. */
        size_t cap = c == '\r' ? FTPP_REPLY_LINE_MAX + 1 : FTPP_REPLY_LINE_MAX;
        if (rr->overflow || rr->len >= cap)
            rr->overflow = true;
        else
            rr->line[rr->len++] = c;
    }
    return len;
}

/* ---- data-connection addresses ---- */

/* RFC 2428 §2: the delimiter is printable ASCII (33..126); a digit would be ambiguous. */
static bool delim_ok(char d)
{
    return d >= 33 && d <= 126 && !is_digit(d);
}

/* "n,n,n,n,n,n", each 0..255, optional spaces around each number. *p moves past the last
 * number and the spaces after it. */
static bool read_six(const char **p, uint8_t v[6])
{
    const char *s = *p;
    for (int i = 0; i < 6; i++) {
        unsigned n;
        while (*s == ' ')
            s++;
        if (!read_num(&s, 255, &n) || n > 255)
            return false;
        v[i] = (uint8_t)n;
        while (*s == ' ')
            s++;
        if (i < 5) {
            if (*s != ',')
                return false;
            s++;
        }
    }
    *p = s;
    return true;
}

/* h1..h4 are the address in network order, p1 the port's high byte (RFC 959 §4.1.2). */
static int set_six(const uint8_t v[6], struct sockaddr_storage *out)
{
    uint16_t port = (uint16_t)(v[4] << 8 | v[5]);
    if (port == 0)
        return -EINVAL; /* nothing to connect to */
    struct sockaddr_in *sin = (struct sockaddr_in *)out;
    memset(out, 0, sizeof *out);
    sin->sin_family = AF_INET;
    memcpy(&sin->sin_addr, v, 4);
    sin->sin_port = htons(port);
    return 0;
}

int ftpp_parse_port(const char *arg, struct sockaddr_storage *out)
{
    uint8_t v[6];
    if (!read_six(&arg, v) || *arg != '\0')
        return -EINVAL;
    return set_six(v, out);
}

int ftpp_parse_eprt(const char *arg, struct sockaddr_storage *out)
{
    /* RFC 2428 §2: EPRT<space><d><net-prt><d><net-addr><d><tcp-port><d> */
    char d = arg[0];
    if (!delim_ok(d))
        return -EINVAL;
    const char *s = arg + 1;
    unsigned af;
    if (!read_num(&s, 2, &af) || *s != d)
        return -EINVAL;
    /* Well-formed so far but another protocol: the caller answers 522 (RFC 2428 §2). */
    if (af != 1 && af != 2)
        return -EAFNOSUPPORT;
    s++;

    /* The address, up to the next delimiter; longer than any numeric IPv6 literal is bad. */
    char text[INET6_ADDRSTRLEN];
    size_t n = 0;
    while (s[n] != '\0' && s[n] != d && n < sizeof text - 1)
        n++;
    if (s[n] != d || n == 0)
        return -EINVAL;
    memcpy(text, s, n);
    text[n] = '\0';
    s += n + 1;

    unsigned port;
    if (!read_num(&s, 65535, &port) || port == 0 || port > 65535 || s[0] != d || s[1] != '\0')
        return -EINVAL;

    /* inet_pton takes numeric literals only: no host names (RFC 2428 §2 asks for numbers). */
    memset(out, 0, sizeof *out);
    if (af == 1) {
        struct sockaddr_in *sin = (struct sockaddr_in *)out;
        if (inet_pton(AF_INET, text, &sin->sin_addr) != 1)
            return -EINVAL;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;
        if (inet_pton(AF_INET6, text, &sin6->sin6_addr) != 1)
            return -EINVAL;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
    }
    return 0;
}

int ftpp_parse_epsv_arg(const char *arg)
{
    /* RFC 2428 §3: EPSV<space><net-prt> or EPSV<space>ALL; the verb case rule of RFC 959
     * §5.3 applies to ALL too. */
    if (arg[0] == '\0')
        return 0;
    if ((arg[0] == '1' || arg[0] == '2') && arg[1] == '\0')
        return arg[0] - '0';
    if (ascii_upper(arg[0]) == 'A' && ascii_upper(arg[1]) == 'L' && ascii_upper(arg[2]) == 'L' &&
        arg[3] == '\0')
        return 3;
    return -EINVAL;
}

int ftpp_parse_227(const char *text, struct sockaddr_storage *out)
{
    /* RFC 1123 §4.1.2.6: the format of the 227 text is not specified; scan for the first
     * "h1,h2,h3,h4,p1,p2". Tries start only where a run of digits starts, and a try reads at
     * most six runs, so this is linear in the text. */
    for (const char *s = text; *s != '\0'; s++) {
        if (!is_digit(*s) || (s > text && is_digit(s[-1])))
            continue;
        const char *q = s;
        uint8_t v[6];
        if (read_six(&q, v))
            return set_six(v, out);
    }
    return -EINVAL;
}

int ftpp_parse_229(const char *text, uint16_t *port)
{
    /* RFC 2428 §3: "(<d><d><d><tcp-port><d>)", the three first fields empty. Each read below
     * happens only after the byte before it was found non-NUL. */
    for (const char *s = strchr(text, '('); s != NULL; s = strchr(s + 1, '(')) {
        char d = s[1];
        if (!delim_ok(d) || s[2] != d || s[3] != d)
            continue;
        const char *q = s + 4;
        unsigned p;
        if (!read_num(&q, 65535, &p) || p == 0 || p > 65535 || q[0] != d || q[1] != ')')
            continue;
        *port = (uint16_t)p;
        return 0;
    }
    return -EINVAL;
}

/* snprintf's result as the formatters' contract has it; never leaves a partial line. */
static int fmt_done(char *buf, size_t len, int n)
{
    if (n < 0 || (size_t)n >= len) {
        if (len > 0)
            buf[0] = '\0';
        return -ENOSPC;
    }
    return n;
}

/* The IPv4 address (network order) and port of an AF_INET or v4-mapped AF_INET6 address. */
static bool v4_of(const struct sockaddr *addr, uint8_t a[4], uint16_t *port)
{
    if (addr->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)addr;
        memcpy(a, &sin->sin_addr, 4);
        *port = ntohs(sin->sin_port);
        return true;
    }
    if (addr->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)addr;
        if (!IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr))
            return false;
        memcpy(a, &sin6->sin6_addr.s6_addr[12], 4);
        *port = ntohs(sin6->sin6_port);
        return true;
    }
    return false;
}

int ftpp_format_227(char *buf, size_t len, const struct sockaddr *addr, uint16_t port)
{
    uint8_t a[4];
    uint16_t unused;
    if (!v4_of(addr, a, &unused))
        return -EAFNOSUPPORT;
    /* RFC 959 §4.2.2 gives the text; the parentheses are what most clients look for. */
    int n = snprintf(buf, len, "227 Entering Passive Mode (%u,%u,%u,%u,%u,%u).\r\n", a[0], a[1],
                     a[2], a[3], (unsigned)(port >> 8), (unsigned)(port & 0xff));
    return fmt_done(buf, len, n);
}

int ftpp_format_229(char *buf, size_t len, uint16_t port)
{
    /* RFC 2428 §3, with the recommended delimiter '|'. */
    int n = snprintf(buf, len, "229 Entering Extended Passive Mode (|||%u|).\r\n", (unsigned)port);
    return fmt_done(buf, len, n);
}

int ftpp_format_port(char *buf, size_t len, const struct sockaddr *addr)
{
    uint8_t a[4];
    uint16_t port;
    if (!v4_of(addr, a, &port))
        return -EAFNOSUPPORT;
    int n = snprintf(buf, len, "PORT %u,%u,%u,%u,%u,%u\r\n", a[0], a[1], a[2], a[3],
                     (unsigned)(port >> 8), (unsigned)(port & 0xff));
    return fmt_done(buf, len, n);
}

int ftpp_format_eprt(char *buf, size_t len, const struct sockaddr *addr)
{
    char text[INET6_ADDRSTRLEN];
    uint8_t a[4];
    uint16_t port;
    int af;
    /* A v4-mapped address is an IPv4 peer: the backend connects to it over IPv4, so it is
     * announced as af 1 (RFC 2428 §2). */
    if (v4_of(addr, a, &port)) {
        af = 1;
        if (inet_ntop(AF_INET, a, text, sizeof text) == NULL)
            return -EAFNOSUPPORT;
    } else if (addr->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)addr;
        af = 2;
        port = ntohs(sin6->sin6_port);
        if (inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof text) == NULL)
            return -EAFNOSUPPORT;
    } else {
        return -EAFNOSUPPORT;
    }
    int n = snprintf(buf, len, "EPRT |%d|%s|%u|\r\n", af, text, (unsigned)port);
    return fmt_done(buf, len, n);
}
