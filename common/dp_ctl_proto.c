/* dp_ctl_proto.c - control protocol v1: request parsing and reply formatting. */
#include "dp_ctl_proto.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

static bool key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

/* Bytes a request may not hold anywhere (quoted or not): controls other than TAB, and DEL. */
static bool bad_byte(unsigned char c)
{
    return (c < 0x20 && c != '\t') || c == 0x7f;
}

/* Read a value at *p: "quoted with \" and \\" or bare up to the next blank. The result is
 * written in place starting at *p; *p moves past the value and its terminator. */
static int take_value(char **p, const char **out, const char **why)
{
    char *r = *p, *w = *p;
    *out = w;
    if (*r != '"') {
        while (*r != '\0' && !is_space(*r)) {
            if (*r == '"') {
                *why = "a quote inside an unquoted value";
                return -EINVAL;
            }
            r++;
        }
        if (*r != '\0')
            *r++ = '\0';
        *p = r;
        return 0;
    }
    r++;
    for (;;) {
        if (*r == '\0') {
            *why = "unterminated quoted value";
            return -EINVAL;
        }
        if (*r == '"')
            break;
        if (*r == '\\') {
            r++;
            if (*r != '"' && *r != '\\') {
                *why = "only \\\" and \\\\ are escapes in a quoted value";
                return -EINVAL;
            }
        }
        *w++ = *r++;
    }
    r++; /* the closing quote */
    if (*r != '\0' && !is_space(*r)) {
        *why = "a quoted value must be followed by a blank";
        return -EINVAL;
    }
    *w = '\0';
    *p = r;
    return 0;
}

int dp_ctl_parse(char *line, dp_ctl_request *req, const char **why)
{
    memset(req, 0, sizeof *req);
    for (const char *c = line; *c != '\0'; c++)
        if (bad_byte((unsigned char)*c)) {
            *why = "malformed request (control byte)";
            return -EINVAL;
        }
    char *p = line;
    for (;;) {
        while (is_space(*p))
            p++;
        if (*p == '\0')
            break;
        char *tok = p;
        while (key_char(*p))
            p++;
        if (*p == '=' && p > tok) {
            *p++ = '\0';
            const char *value;
            if (take_value(&p, &value, why) != 0)
                return -EINVAL;
            if (strcmp(tok, "format") == 0) {
                if (strcmp(value, "json") != 0 && strcmp(value, "text") != 0) {
                    *why = "format must be json or text";
                    return -EINVAL;
                }
                req->json = strcmp(value, "json") == 0;
                continue;
            }
            for (size_t i = 0; i < req->nargs; i++)
                if (strcmp(req->args[i].key, tok) == 0) {
                    *why = "an argument is given twice";
                    return -EINVAL;
                }
            if (req->nargs == DP_CTL_ARGS_MAX) {
                *why = "too many arguments";
                return -EINVAL;
            }
            req->args[req->nargs++] = (dp_ctl_arg){tok, value};
            continue;
        }
        /* A bare word: only before the first argument, letters and digits only. */
        while (*p != '\0' && !is_space(*p))
            p++;
        if (*p != '\0')
            *p++ = '\0';
        for (const char *c = tok; *c != '\0'; c++)
            if (!key_char(*c)) {
                *why = "a word must be letters, digits, '_' or '-' (arguments are key=value)";
                return -EINVAL;
            }
        if (req->nargs > 0) {
            *why = "command words must come before the key=value arguments";
            return -EINVAL;
        }
        if (req->nwords == DP_CTL_WORDS_MAX) {
            *why = "too many words";
            return -EINVAL;
        }
        req->words[req->nwords++] = tok;
    }
    if (req->nwords == 0) {
        *why = "empty request";
        return -EINVAL;
    }
    return 0;
}

const char *dp_ctl_arg_get(const dp_ctl_request *req, const char *key)
{
    for (size_t i = 0; i < req->nargs; i++)
        if (strcmp(req->args[i].key, key) == 0)
            return req->args[i].value;
    return NULL;
}

/* ---- buffers ---- */

void dp_ctl_buf_free(dp_ctl_buf *b)
{
    free(b->data);
    *b = (dp_ctl_buf){0};
}

static bool reserve(dp_ctl_buf *b, size_t more)
{
    if (b->failed)
        return false;
    if (b->len + more + 1 <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *d = realloc(b->data, cap);
    if (d == NULL) {
        b->failed = true;
        return false;
    }
    b->data = d;
    b->cap = cap;
    return true;
}

void dp_ctl_buf_add(dp_ctl_buf *b, const char *s, size_t n)
{
    if (!reserve(b, n))
        return;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void dp_ctl_buf_puts(dp_ctl_buf *b, const char *s)
{
    dp_ctl_buf_add(b, s, strlen(s));
}

void dp_ctl_buf_printf(dp_ctl_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !reserve(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void dp_ctl_buf_json_str(dp_ctl_buf *b, const char *s)
{
    dp_ctl_buf_add(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c != '\0'; c++) {
        if (*c == '"' || *c == '\\') {
            char e[2] = {'\\', (char)*c};
            dp_ctl_buf_add(b, e, 2);
        } else if (*c < 0x20 || *c == 0x7f) {
            dp_ctl_buf_printf(b, "\\u%04x", *c);
        } else {
            dp_ctl_buf_add(b, (const char *)c, 1);
        }
    }
    dp_ctl_buf_add(b, "\"", 1);
}

void dp_ctl_buf_cell(dp_ctl_buf *b, const char *s)
{
    if (s == NULL || s[0] == '\0') {
        dp_ctl_buf_add(b, "-", 1);
        return;
    }
    for (const char *c = s; *c != '\0'; c++)
        dp_ctl_buf_add(b, (*c == '\t' || *c == '\r' || *c == '\n') ? " " : c, 1);
}

void dp_ctl_format_reply(dp_ctl_buf *out, int code, const char *text, const char *body,
                         size_t body_len)
{
    dp_ctl_buf_printf(out, "%03d ", code);
    dp_ctl_buf_cell(out, text);
    dp_ctl_buf_add(out, "\n", 1);
    size_t i = 0;
    while (i < body_len) {
        const char *nl = memchr(body + i, '\n', body_len - i);
        size_t n = nl != NULL ? (size_t)(nl - (body + i)) : body_len - i;
        if (n > 0 && body[i] == '.')
            dp_ctl_buf_add(out, ".", 1);
        dp_ctl_buf_add(out, body + i, n);
        dp_ctl_buf_add(out, "\n", 1);
        i += n + 1;
    }
    dp_ctl_buf_add(out, ".\n", 2);
}
