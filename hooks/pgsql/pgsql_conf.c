/*
 * pgsql_conf.c - the pgsql hook's parameters, as a table (name, type, bounds, default,
 * validator), in the manner of Redis' config.c. Every key is checked: an unknown key, a bad
 * number or a value out of range refuses init with the offending key and a human sentence.
 * docs/hook-pgsql.md documents the same table; keep them together.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgsql_int.h"

#define DEFAULT_LOOKUP_QUERY                                                                       \
    "SELECT status, backend, address, ssh_port, ftp_port, backend_user, auth, key_path, hostkey, " \
    "message FROM dynproxy.route($1, $2::inet, $3)"
#define DEFAULT_KEYS_QUERY                                                                         \
    "SELECT key FROM dynproxy.authorized_keys WHERE username = $1 ORDER BY id"
#define DEFAULT_CHANNEL "dynproxy_route"

/* PostgreSQL truncates identifiers longer than NAMEDATALEN-1 (63) bytes; refuse them instead
 * of LISTENing on a channel the triggers never NOTIFY. */
#define PG_IDENT_MAX 63

typedef enum ptype {
    PT_STR,
    PT_INT,
} ptype;

enum {
    PF_REQUIRED = 1u << 0,
    PF_NONEMPTY = 1u << 1,
};

typedef int (*pcheck_fn)(const char *value, char *msg, size_t len);

typedef struct pdef {
    const char *key;
    ptype type;
    size_t off;       /* into pgh_conf: char * or int */
    int min, max;     /* PT_INT bounds */
    const char *dstr; /* PT_STR default (NULL: none) */
    int dint;         /* PT_INT default */
    unsigned flags;
    pcheck_fn check; /* extra validation of a PT_STR value, or NULL */
} pdef;

static int check_conninfo(const char *value, char *msg, size_t len);
static int check_channel(const char *value, char *msg, size_t len);

static const pdef defs[] = {
    {"conninfo", PT_STR, offsetof(pgh_conf, conninfo), 0, 0, NULL, 0, PF_REQUIRED | PF_NONEMPTY,
     check_conninfo},
    {"listen_conninfo", PT_STR, offsetof(pgh_conf, listen_conninfo), 0, 0, NULL, 0, 0,
     check_conninfo},
    {"lookup_query", PT_STR, offsetof(pgh_conf, lookup_query), 0, 0, DEFAULT_LOOKUP_QUERY, 0,
     PF_NONEMPTY, NULL},
    {"keys_query", PT_STR, offsetof(pgh_conf, keys_query), 0, 0, DEFAULT_KEYS_QUERY, 0, 0, NULL},
    {"notify_channel", PT_STR, offsetof(pgh_conf, notify_channel), 0, 0, DEFAULT_CHANNEL, 0, 0,
     check_channel},
    {"pool_size", PT_INT, offsetof(pgh_conf, pool_size), 1, 64, NULL, 4, 0, NULL},
    {"connect_timeout_ms", PT_INT, offsetof(pgh_conf, connect_timeout_ms), 100, 60000, NULL, 3000,
     0, NULL},
    {"statement_timeout_ms", PT_INT, offsetof(pgh_conf, statement_timeout_ms), 0, 3600000, NULL,
     2000, 0, NULL},
    {"reconnect_min_ms", PT_INT, offsetof(pgh_conf, reconnect_min_ms), 10, 60000, NULL, 100, 0,
     NULL},
    {"reconnect_max_ms", PT_INT, offsetof(pgh_conf, reconnect_max_ms), 10, 600000, NULL, 5000, 0,
     NULL},
};
#define NDEFS (sizeof defs / sizeof defs[0])

static size_t def_index(const char *key)
{
    size_t i = 0;
    while (i < NDEFS && strcmp(defs[i].key, key) != 0)
        i++;
    return i; /* NDEFS: unknown */
}

static void set_err(dph_error *err, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(dph_error *err, const char *key, const char *fmt, ...)
{
    if (err == NULL)
        return;
    err->key = key;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
}

/*
 * libpq's parse errors quote fragments of the input ("invalid percent-encoded token: "%zz"",
 * "missing "=" after "..."): a fragment may be part of a password, so every quoted fragment
 * except "=" is replaced by "...". The message stays useful, the secret stays out of logs.
 */
static void redact_quoted(const char *in, char *out, size_t len)
{
    size_t o = 0;
    for (const char *p = in; *p != '\0' && o + 1 < len; p++) {
        const char *close;
        if (*p == '"' && (close = strchr(p + 1, '"')) != NULL && !(close == p + 2 && p[1] == '=')) {
            int n = snprintf(out + o, len - o, "\"...\"");
            o += (n > 0 && (size_t)n < len - o) ? (size_t)n : len - o - 1;
            p = close;
            continue;
        }
        if (*p == '\n' || *p == '\r')
            continue;
        out[o++] = *p;
    }
    out[o] = '\0';
}

static int check_conninfo(const char *value, char *msg, size_t len)
{
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(value, &perr);
    if (opts == NULL) {
        char clean[DPH_ERROR_MAX];
        redact_quoted(perr != NULL ? perr : "out of memory", clean, sizeof clean);
        snprintf(msg, len, "is not a valid libpq connection string or URI (%s)", clean);
        PQfreemem(perr);
        return -1;
    }
    PQconninfoFree(opts);
    return 0;
}

static int check_channel(const char *value, char *msg, size_t len)
{
    if (strlen(value) > PG_IDENT_MAX) {
        snprintf(msg, len, "must be at most %d bytes (a PostgreSQL identifier)", PG_IDENT_MAX);
        return -1;
    }
    return 0;
}

/* Strict decimal integer: optional '-', digits only, no spaces, no overflow. */
static int parse_int(const char *s, long *out)
{
    if (s == NULL || *s == '\0')
        return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || !(s[0] == '-' || (s[0] >= '0' && s[0] <= '9')))
        return -1;
    *out = v;
    return 0;
}

void pgh_conf_free(pgh_conf *conf)
{
    if (conf == NULL)
        return;
    for (size_t i = 0; i < NDEFS; i++) {
        if (defs[i].type == PT_STR) {
            char **slot = (char **)((char *)conf + defs[i].off);
            free(*slot);
            *slot = NULL;
        }
    }
}

int pgh_conf_parse(pgh_conf *conf, const dph_param *params, dph_error *err)
{
    const dph_param *given[NDEFS] = {0};

    memset(conf, 0, sizeof *conf);
    for (size_t i = 0; i < NDEFS; i++) {
        if (defs[i].type == PT_INT)
            *(int *)((char *)conf + defs[i].off) = defs[i].dint;
    }

    for (const dph_param *p = params; p != NULL && p->key != NULL; p++) {
        size_t i = def_index(p->key);
        if (i == NDEFS) {
            set_err(err, p->key,
                    "unknown parameter of the pgsql hook (known: conninfo, listen_conninfo, "
                    "lookup_query, keys_query, notify_channel, pool_size, connect_timeout_ms, "
                    "statement_timeout_ms, reconnect_min_ms, reconnect_max_ms)");
            goto invalid;
        }
        if (given[i] != NULL) {
            set_err(err, p->key, "is given twice");
            goto invalid;
        }
        given[i] = p;
        const pdef *d = &defs[i];
        if (p->value == NULL) {
            set_err(err, p->key, "has no value");
            goto invalid;
        }
        if (d->type == PT_INT) {
            long v;
            if (parse_int(p->value, &v) != 0 || v < d->min || v > d->max) {
                set_err(err, p->key, "must be an integer between %d and %d", d->min, d->max);
                goto invalid;
            }
            *(int *)((char *)conf + d->off) = (int)v;
            continue;
        }
        if ((d->flags & PF_NONEMPTY) && p->value[0] == '\0') {
            set_err(err, p->key, "must not be empty");
            goto invalid;
        }
        char msg[DPH_ERROR_MAX];
        if (d->check != NULL && d->check(p->value, msg, sizeof msg) != 0) {
            set_err(err, p->key, "%s", msg);
            goto invalid;
        }
        char **slot = (char **)((char *)conf + d->off);
        *slot = strdup(p->value);
        if (*slot == NULL)
            goto nomem;
    }

    for (size_t i = 0; i < NDEFS; i++) {
        const pdef *d = &defs[i];
        if ((d->flags & PF_REQUIRED) && given[i] == NULL) {
            set_err(err, NULL,
                    "%s is required: the libpq connection string or URI of the routing database "
                    "(e.g. \"host=db1 dbname=dynproxy user=dynproxy\")",
                    d->key);
            goto invalid;
        }
        if (d->type == PT_STR && given[i] == NULL && d->dstr != NULL) {
            char **slot = (char **)((char *)conf + d->off);
            *slot = strdup(d->dstr);
            if (*slot == NULL)
                goto nomem;
        }
    }

    if (conf->reconnect_min_ms > conf->reconnect_max_ms) {
        /* Name the one the operator wrote (max if both were). */
        const dph_param *p = given[def_index("reconnect_max_ms")];
        if (p == NULL)
            p = given[def_index("reconnect_min_ms")];
        set_err(err, p != NULL ? p->key : NULL,
                "reconnect_max_ms (%d) must not be smaller than reconnect_min_ms (%d)",
                conf->reconnect_max_ms, conf->reconnect_min_ms);
        goto invalid;
    }

    pgh_conninfo_summary(conf->conninfo, conf->summary, sizeof conf->summary);
    return 0;

nomem:
    pgh_conf_free(conf);
    set_err(err, NULL, "out of memory");
    return -ENOMEM;
invalid:
    pgh_conf_free(conf);
    return -EINVAL;
}

/* Append " key=value" for the few conninfo fields that are safe and useful in logs. */
void pgh_conninfo_summary(const char *conninfo, char *buf, size_t len)
{
    static const char *const show[] = {"host", "hostaddr", "port", "dbname",
                                       "target_session_attrs"};
    size_t o = 0;
    buf[0] = '\0';
    PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
    if (opts == NULL) {
        snprintf(buf, len, "(unparsable conninfo)");
        return;
    }
    for (size_t i = 0; i < sizeof show / sizeof show[0]; i++) {
        for (PQconninfoOption *o2 = opts; o2->keyword != NULL; o2++) {
            if (strcmp(o2->keyword, show[i]) != 0 || o2->val == NULL || o2->val[0] == '\0')
                continue;
            int n = snprintf(buf + o, len - o, "%s%s=%s", o == 0 ? "" : " ", show[i], o2->val);
            if (n < 0 || (size_t)n >= len - o) {
                o = len - 1;
                break;
            }
            o += (size_t)n;
        }
    }
    if (o == 0)
        snprintf(buf, len, "host=(libpq default)");
    PQconninfoFree(opts);
}
