/*
 * dp_ctl_proto.h - the control socket's wire format, version 1 (docs/operations.md): request
 * lines parsed into command words and key=value arguments, and reply bodies (text rows or
 * JSON) built into a growable buffer. Pure functions: no I/O, unit-tested and fuzzed.
 */
#ifndef DP_CTL_PROTO_H
#define DP_CTL_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dp_ctl_spec.h" /* DP_CTL_VERSION, DP_CTL_LINE_MAX */

#define DP_CTL_WORDS_MAX 4
#define DP_CTL_ARGS_MAX 16

typedef struct dp_ctl_arg {
    const char *key;
    const char *value;
} dp_ctl_arg;

/* One parsed request. Strings point into the line, which the parser rewrites in place. */
typedef struct dp_ctl_request {
    const char *words[DP_CTL_WORDS_MAX]; /* bare words: the command ("cache", "flush") */
    size_t nwords;
    dp_ctl_arg args[DP_CTL_ARGS_MAX]; /* key=value, in order, format= removed */
    size_t nargs;
    bool json; /* format=json */
} dp_ctl_request;

/* Parse one request line (no line terminator; NUL-terminated, modified in place).
 * Returns 0, or -EINVAL with *why set to a static explanation. */
int dp_ctl_parse(char *line, dp_ctl_request *req, const char **why);

/* The value of `key`, or NULL. */
const char *dp_ctl_arg_get(const dp_ctl_request *req, const char *key);

/* ---- reply bodies ---- */

typedef struct dp_ctl_buf {
    char *data;
    size_t len, cap;
    bool failed; /* an allocation failed: the content is incomplete */
} dp_ctl_buf;

void dp_ctl_buf_free(dp_ctl_buf *b);
void dp_ctl_buf_add(dp_ctl_buf *b, const char *s, size_t n);
void dp_ctl_buf_puts(dp_ctl_buf *b, const char *s);
void dp_ctl_buf_printf(dp_ctl_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A JSON string literal, quotes included, control bytes and non-ASCII-safe escaping. */
void dp_ctl_buf_json_str(dp_ctl_buf *b, const char *s);
/* A text-table cell: TAB, CR and LF become spaces; an empty value becomes "-". */
void dp_ctl_buf_cell(dp_ctl_buf *b, const char *s);

/* Append a whole reply to `out`: "CODE TEXT\n", the body's lines dot-stuffed, then ".\n".
 * The body may be empty or lack its final newline. */
void dp_ctl_format_reply(dp_ctl_buf *out, int code, const char *text, const char *body,
                         size_t body_len);

#endif
