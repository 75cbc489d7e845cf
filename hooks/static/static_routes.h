/*
 * static_routes.h - the static hook's routing table: parse and validate a routes file
 * (libconfig syntax, see deploy/examples/routes.conf) and look users up in it.
 *
 * A table is immutable once built, so any number of threads may read it at once; the hook
 * (static_hook.c) swaps whole tables under its rwlock when the file changes. No locking and no
 * logging here: errors are returned as text for the caller to report.
 */
#ifndef STATIC_ROUTES_H
#define STATIC_ROUTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dynproxy_hook.h"

/* The longest authorized_keys line accepted (a 16384-bit RSA key is about 2.8 KiB). */
#define SR_KEY_MAX 8192

/* Shown for a backend in maintenance whose `message` is empty. */
#define SR_DEFAULT_MAINTENANCE_MSG "This server is under maintenance, please try again later."

/* Strings point into the table's parsed file and live as long as the table. Every string
 * fits the matching dph_route field (checked when parsing). */
typedef struct sr_backend {
    const char *name;
    const char *address;
    const char *hostkey; /* "" = no pin */
    const char *message; /* never "" when maintenance */
    uint16_t ssh_port;   /* 0 = the daemon's default (22) */
    uint16_t ftp_port;   /* 0 = the daemon's default (21) */
    bool maintenance;
    unsigned line; /* where it was defined, for duplicate reports */
} sr_backend;

typedef struct sr_user {
    const char *name;
    const sr_backend *backend;
    const char *backend_user; /* "" = same as name */
    const char *key_path;     /* "" = none */
    const char **keys;        /* authorized_keys lines */
    size_t nkeys;
    dph_auth auth;
    bool enabled;
    unsigned line; /* where it was defined, for duplicate reports */
} sr_user;

typedef struct sr_table sr_table;

/*
 * Parse `text` (the content of `path`; `path` is only used in messages) into a new table.
 * Returns 0, or -EINVAL with the first problem written into err as "path:line: what",
 * or -ENOMEM.
 */
int sr_table_parse(sr_table **out, const char *path, const char *text, char *err, size_t errlen);

/* NULL is a no-op. */
void sr_table_free(sr_table *t);

/* The user's entry, or NULL when the file does not list `user` (exact, case-sensitive). */
const sr_user *sr_table_find(const sr_table *t, const char *user);

/* The default_backend, or NULL when the file has none. */
const sr_backend *sr_table_default(const sr_table *t);

size_t sr_table_nusers(const sr_table *t);
size_t sr_table_nbackends(const sr_table *t);

#endif
