/*
 * proxyctl_wire.h - the client side of the control protocol, version 1 (docs/operations.md,
 * "Protocol, version 1"), as pure functions: no I/O, no globals, so the unit tests drive them
 * directly (tests/unit/test_proxyctl.c).
 *
 *   greeting  "dynproxy-ctl 1 <daemon> <version>"      ctl_parse_greeting
 *   request   "<command> key=value key=\"a b\" ..."      ctl_build_request (quoting)
 *   reply     "<code> <text>", body lines, "."         ctl_reply_feed (dot-unstuffing)
 *   exit code of a status code or a socket error       ctl_exit_for_status / _errno
 */
#ifndef PROXYCTL_WIRE_H
#define PROXYCTL_WIRE_H

#include <stddef.h>

#include "dp_ctl_spec.h" /* DP_CTL_VERSION, DP_CTL_GREETING_WORD, DP_CTL_LINE_MAX */

/* proxyctl's exit codes (docs/operations.md, "proxyctl"). */
enum {
    CTL_EXIT_OK = 0,          /* success */
    CTL_EXIT_FAILED = 1,      /* the daemon or the database refused or failed the command */
    CTL_EXIT_USAGE = 2,       /* usage error, local or 400 */
    CTL_EXIT_UNREACHABLE = 3, /* no socket, refused, timeout, lost connection, no database */
    CTL_EXIT_NOTFOUND = 4,    /* 404: nothing matched */
    CTL_EXIT_DENIED = 5,      /* 403, or the socket is not accessible */
};

/* The exit code for a reply's status code: 2xx 0, 400 2, 403 5, 404 4, anything else 1. */
int ctl_exit_for_status(int code);

/* The exit code for a failure to talk to the daemon at all (a negative errno from connect,
 * read or write): EACCES/EPERM 5, everything else 3. */
int ctl_exit_for_errno(int neg_errno);

/*
 * Parse the greeting line (no line end). Returns 0 for protocol DP_CTL_VERSION and fills
 * daemon / version (truncated to their sizes; either may be NULL); -EPROTONOSUPPORT for a
 * dynproxy-ctl greeting of another protocol version (*proto set); -EPROTO when the line is no
 * greeting at all.
 */
int ctl_parse_greeting(const char *line, int *proto, char *daemon, size_t daemon_len, char *version,
                       size_t version_len);

/* Parse a status line "NNN text" (or just "NNN"). Returns 0 with *code and *text (a pointer
 * into line, "" when absent), or -EPROTO. */
int ctl_parse_status(const char *line, int *code, const char **text);

/*
 * Quote one command-line argument for the wire and append it to out (NUL-terminated, `*len`
 * bytes used so far, updated). `key=value` sends the value double-quoted, with \" and \\
 * escapes, when it is empty or holds a space, a quote or a backslash; a bare word is sent as
 * it is. Returns 0, -EINVAL when the argument cannot be sent (a control byte anywhere, a key
 * that is not [a-z0-9_-]+, a bare word that would need quoting), or -E2BIG when out is
 * too small.
 */
int ctl_quote_arg(const char *arg, char *out, size_t outlen, size_t *len);

/*
 * The request line for `command` (one word, or two for "cache flush") and its arguments,
 * without the line end. `json` adds format=json unless an argument already sets format=.
 * Returns 0; -EINVAL with *bad = the argument that cannot be sent; -E2BIG when the line (with
 * its LF) would exceed DP_CTL_LINE_MAX or outlen.
 */
int ctl_build_request(const char *command, char *const *args, int nargs, int json, char *out,
                      size_t outlen, const char **bad);

/*
 * One received body line (line end removed): returns 1 for the terminator "." (the reply is
 * complete), else 0 with *text = the line with its dot-stuffing undone (a leading '.' dropped).
 */
int ctl_unstuff(const char *line, const char **text);

/* A reply being read: the status line, then the unstuffed body (each line ends in '\n'). */
typedef struct ctl_reply {
    int code;
    char *text; /* status text, owned */
    char *body; /* owned, NUL-terminated; NULL while empty */
    size_t body_len, body_cap;
    int have_status, done;
} ctl_reply;

void ctl_reply_init(ctl_reply *r);
/* Feed the next line (line end removed). Returns 1 when the reply is complete, 0 when more
 * lines are needed, -EPROTO for a bad status line, -ENOMEM. */
int ctl_reply_feed(ctl_reply *r, const char *line);
/* Frees what the reply owns and re-initialises it. */
void ctl_reply_clear(ctl_reply *r);

#endif
