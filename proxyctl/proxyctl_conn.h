/* proxyctl_conn.h - one connection to a daemon's control socket, every wait bounded by an
 * absolute deadline (CLOCK_MONOTONIC milliseconds, ctl_now_ms() based). */
#ifndef PROXYCTL_CONN_H
#define PROXYCTL_CONN_H

#include <stddef.h>
#include <stdint.h>

typedef struct ctl_conn ctl_conn;

int64_t ctl_now_ms(void);

/* Connect to the Unix socket at `path`. Returns 0 with *out, or a negative errno: -ENOENT,
 * -ECONNREFUSED, -EACCES, -ETIMEDOUT (the daemon's backlog stayed full), -ENAMETOOLONG, ... */
int ctl_conn_open(ctl_conn **out, const char *path, int64_t deadline_ms);

/* Read one line; its LF (and a CR before it) removed. Returns 0 with *line (owned by the
 * connection, valid until the next call), -ENODATA at end of stream (a last unterminated line is
 * returned first), -ETIMEDOUT, -ENOMEM, or a read error. Lines have no length limit. */
int ctl_conn_readline(ctl_conn *c, int64_t deadline_ms, char **line);

/* Write all of buf. Returns 0, -ETIMEDOUT, or a write error (-EPIPE when the daemon closed). */
int ctl_conn_write(ctl_conn *c, const char *buf, size_t len, int64_t deadline_ms);

/* NULL is a no-op. */
void ctl_conn_close(ctl_conn *c);

#endif
