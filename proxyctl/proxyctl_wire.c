/* proxyctl_wire.c - control protocol v1, client side: greeting, request quoting, reply
 * assembly and exit codes (no I/O). */
#include "proxyctl_wire.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ctl_exit_for_status(int code)
{
    if (code >= 200 && code <= 299)
        return CTL_EXIT_OK;
    switch (code) {
    case 400:
        return CTL_EXIT_USAGE;
    case 403:
        return CTL_EXIT_DENIED;
    case 404:
        return CTL_EXIT_NOTFOUND;
    default:
        return CTL_EXIT_FAILED; /* 409, 422, 500 and anything this version does not know */
    }
}

int ctl_exit_for_errno(int neg_errno)
{
    return neg_errno == -EACCES || neg_errno == -EPERM ? CTL_EXIT_DENIED : CTL_EXIT_UNREACHABLE;
}

/* Copy the next space-separated word of *p into buf (truncated); advances *p. Returns its
 * length before truncation (0 at the end). */
static size_t next_word(const char **p, char *buf, size_t len)
{
    const char *s = *p;
    while (*s == ' ')
        s++;
    const char *e = s;
    while (*e != '\0' && *e != ' ')
        e++;
    if (buf != NULL && len > 0)
        snprintf(buf, len, "%.*s", (int)(e - s), s);
    *p = e;
    return (size_t)(e - s);
}

int ctl_parse_greeting(const char *line, int *proto, char *daemon, size_t daemon_len, char *version,
                       size_t version_len)
{
    char word[32], num[16];
    const char *p = line;
    if (next_word(&p, word, sizeof word) == 0 || strcmp(word, DP_CTL_GREETING_WORD) != 0)
        return -EPROTO;
    size_t n = next_word(&p, num, sizeof num);
    if (n == 0 || n >= sizeof num)
        return -EPROTO;
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)num[i]))
            return -EPROTO;
    int v = atoi(num);
    if (proto != NULL)
        *proto = v;
    next_word(&p, daemon, daemon_len);
    next_word(&p, version, version_len);
    return v == DP_CTL_VERSION ? 0 : -EPROTONOSUPPORT;
}

int ctl_parse_status(const char *line, int *code, const char **text)
{
    if (!isdigit((unsigned char)line[0]) || !isdigit((unsigned char)line[1]) ||
        !isdigit((unsigned char)line[2]) || (line[3] != '\0' && line[3] != ' '))
        return -EPROTO;
    *code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    *text = line[3] == ' ' ? line + 4 : line + 3;
    return 0;
}

static int is_ctl_byte(unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

/* What the daemon accepts in a key (common/dp_ctl_proto.c). */
static int is_key_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

static int append(char *out, size_t outlen, size_t *len, const char *s, size_t n)
{
    if (*len + n + 1 > outlen)
        return -E2BIG;
    memcpy(out + *len, s, n);
    *len += n;
    out[*len] = '\0';
    return 0;
}

int ctl_quote_arg(const char *arg, char *out, size_t outlen, size_t *len)
{
    for (const char *c = arg; *c != '\0'; c++)
        if (is_ctl_byte((unsigned char)*c))
            return -EINVAL; /* the daemon refuses them, and a LF would start a second request */
    const char *eq = strchr(arg, '=');
    if (eq == NULL) {
        if (arg[0] == '\0' || strpbrk(arg, " \"\\") != NULL)
            return -EINVAL;
        return append(out, outlen, len, arg, strlen(arg));
    }
    if (eq == arg)
        return -EINVAL;
    for (const char *c = arg; c < eq; c++)
        if (!is_key_char((unsigned char)*c))
            return -EINVAL;
    const char *val = eq + 1;
    size_t save = *len;
    int rc = append(out, outlen, len, arg, (size_t)(val - arg));
    if (rc == 0 && val[0] != '\0' && strpbrk(val, " \"\\") == NULL)
        rc = append(out, outlen, len, val, strlen(val));
    else if (rc == 0) {
        rc = append(out, outlen, len, "\"", 1);
        for (const char *c = val; rc == 0 && *c != '\0'; c++) {
            if (*c == '"' || *c == '\\')
                rc = append(out, outlen, len, "\\", 1);
            if (rc == 0)
                rc = append(out, outlen, len, c, 1);
        }
        if (rc == 0)
            rc = append(out, outlen, len, "\"", 1);
    }
    if (rc != 0) {
        *len = save;
        out[save] = '\0';
    }
    return rc;
}

int ctl_build_request(const char *command, char *const *args, int nargs, int json, char *out,
                      size_t outlen, const char **bad)
{
    /* The LF that ends the line counts against DP_CTL_LINE_MAX. */
    size_t cap = outlen < DP_CTL_LINE_MAX ? outlen : DP_CTL_LINE_MAX;
    size_t len = 0;
    int has_format = 0;
    if (bad != NULL)
        *bad = NULL;
    if (outlen == 0)
        return -E2BIG;
    out[0] = '\0';
    int rc = append(out, cap, &len, command, strlen(command));
    for (int i = 0; rc == 0 && i < nargs; i++) {
        if (strncmp(args[i], "format=", 7) == 0)
            has_format = 1;
        rc = append(out, cap, &len, " ", 1);
        if (rc == 0)
            rc = ctl_quote_arg(args[i], out, cap, &len);
        if (rc == -EINVAL && bad != NULL)
            *bad = args[i];
    }
    if (rc == 0 && json && !has_format)
        rc = append(out, cap, &len, " format=json", 12);
    return rc;
}

int ctl_unstuff(const char *line, const char **text)
{
    if (line[0] == '.' && line[1] == '\0')
        return 1;
    *text = line[0] == '.' ? line + 1 : line;
    return 0;
}

void ctl_reply_init(ctl_reply *r)
{
    memset(r, 0, sizeof *r);
}

void ctl_reply_clear(ctl_reply *r)
{
    free(r->text);
    free(r->body);
    ctl_reply_init(r);
}

static int body_append(ctl_reply *r, const char *s)
{
    size_t n = strlen(s);
    if (r->body_len + n + 2 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 256;
        while (r->body_len + n + 2 > cap)
            cap *= 2;
        char *nb = realloc(r->body, cap);
        if (nb == NULL)
            return -ENOMEM;
        r->body = nb;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, s, n);
    r->body_len += n;
    r->body[r->body_len++] = '\n';
    r->body[r->body_len] = '\0';
    return 0;
}

int ctl_reply_feed(ctl_reply *r, const char *line)
{
    if (r->done)
        return 1;
    if (!r->have_status) {
        const char *text;
        if (ctl_parse_status(line, &r->code, &text) != 0)
            return -EPROTO;
        r->text = strdup(text);
        if (r->text == NULL)
            return -ENOMEM;
        r->have_status = 1;
        return 0;
    }
    const char *text;
    if (ctl_unstuff(line, &text) == 1) {
        r->done = 1;
        return 1;
    }
    return body_append(r, text);
}
