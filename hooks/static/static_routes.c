/*
 * static_routes.c - parse and validate a routes file for the static hook.
 *
 * Validation is strict and happens once per parse, so lookups never meet a bad value: every
 * key is known, typed and bounded by the dph_route field it ends up in, and every problem is
 * reported as "file:line: what" (haproxy style) so the operator can go straight to it.
 *
 * Both `backends` and `users` accept two forms:
 *   users = { alice = { ... }; };               a group: the setting name is the user name
 *   users = ( { name = "first.last"; ... } );   a list of groups with a `name` field
 * because libconfig setting names are limited to [A-Za-z*][-A-Za-z0-9_*]*, and user names with
 * dots or '@' are common.
 */
#include "static_routes.h"

#include <errno.h>
#include <libconfig.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sr_table {
    config_t cfg;         /* owns every string the table points to */
    sr_backend *backends; /* sorted by name */
    size_t nbackends;
    sr_user *users; /* sorted by name */
    size_t nusers;
    const sr_backend *def;
};

typedef struct pctx {
    const char *path;
    char *err;
    size_t errlen;
} pctx;

static const char *const top_keys[] = {"backends", "users", "default_backend", NULL};
static const char *const backend_keys[] = {"address",     "ssh_port", "ftp_port", "hostkey",
                                           "maintenance", "message",  NULL};
static const char *const user_keys[] = {"backend", "backend_user", "auth", "key_path",
                                        "keys",    "enabled",      NULL};

/* Write "file:line: <fmt>" into p->err; returns -EINVAL so callers can `return fail(...)`. */
__attribute__((format(printf, 3, 4))) static int fail(pctx *p, const config_setting_t *s,
                                                      const char *fmt, ...)
{
    unsigned line = s ? config_setting_source_line(s) : 0;
    int n = line ? snprintf(p->err, p->errlen, "%s:%u: ", p->path, line)
                 : snprintf(p->err, p->errlen, "%s: ", p->path);
    if (n >= 0 && (size_t)n < p->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

static int oom(pctx *p)
{
    snprintf(p->err, p->errlen, "%s: out of memory", p->path);
    return -ENOMEM;
}

/* Names and addresses end up in logs and in the backend's login: no spaces, no control bytes
 * (UTF-8 is fine). Returns NULL when `s` is acceptable. */
static const char *token_problem(const char *s)
{
    if (*s == '\0')
        return "is empty";
    for (const unsigned char *c = (const unsigned char *)s; *c; c++)
        if (*c <= ' ' || *c == 0x7f)
            return "contains a space or control character";
    return NULL;
}

/* libconfig would open an @include'd file by itself, and the reload check only watches the
 * routes file, so changes to an included file would go unnoticed: refuse the directive (found
 * the way libconfig's scanner does, at the start of a line) before parsing. */
static int reject_includes(pctx *p, const char *text)
{
    unsigned line = 1;
    for (const char *s = text; *s; line++) {
        s += strspn(s, " \t");
        if (strncmp(s, "@include", 8) == 0) {
            snprintf(p->err, p->errlen,
                     "%s:%u: @include is not supported in a routes file (the reload check "
                     "watches this file only)",
                     p->path, line);
            return -EINVAL;
        }
        s = strchr(s, '\n');
        if (!s)
            break;
        s++;
    }
    return 0;
}

static int check_known_keys(pctx *p, const config_setting_t *grp, const char *what,
                            const char *const *allowed, int list_form)
{
    for (int i = 0; i < config_setting_length(grp); i++) {
        const config_setting_t *c = config_setting_get_elem(grp, (unsigned)i);
        const char *name = config_setting_name(c);
        if (list_form && strcmp(name, "name") == 0)
            continue;
        const char *const *k = allowed;
        while (*k && strcmp(*k, name) != 0)
            k++;
        if (!*k)
            return fail(p, c, "%s: unknown key \"%s\"", what, name);
    }
    return 0;
}

/* Optional string member `key` (empty when absent) of at most cap-1 bytes. */
static int get_string(pctx *p, const config_setting_t *grp, const char *what, const char *key,
                      size_t cap, const char **out)
{
    const config_setting_t *s = config_setting_get_member(grp, key);
    *out = "";
    if (!s)
        return 0;
    if (config_setting_type(s) != CONFIG_TYPE_STRING)
        return fail(p, s, "%s: %s must be a string", what, key);
    const char *v = config_setting_get_string(s);
    size_t len = strlen(v);
    if (len >= cap)
        return fail(p, s, "%s: %s is too long (%zu bytes, at most %zu)", what, key, len, cap - 1);
    *out = v;
    return 0;
}

/* Required string member that must also be a token (no spaces). */
static int get_token(pctx *p, const config_setting_t *grp, const char *what, const char *key,
                     size_t cap, int required, const char **out)
{
    int r = get_string(p, grp, what, key, cap, out);
    if (r < 0)
        return r;
    const config_setting_t *s = config_setting_get_member(grp, key);
    if (!s)
        return required ? fail(p, grp, "%s: missing %s", what, key) : 0;
    const char *problem = token_problem(*out);
    if (problem && (required || **out))
        return fail(p, s, "%s: %s %s", what, key, problem);
    return 0;
}

static int get_bool(pctx *p, const config_setting_t *grp, const char *what, const char *key,
                    bool def, bool *out)
{
    const config_setting_t *s = config_setting_get_member(grp, key);
    *out = def;
    if (!s)
        return 0;
    if (config_setting_type(s) != CONFIG_TYPE_BOOL)
        return fail(p, s, "%s: %s must be true or false", what, key);
    *out = config_setting_get_bool(s) != 0;
    return 0;
}

/* Optional port: 0 when absent (the daemon then uses 22 / 21). Note: libconfig 1.5 wraps
 * integers beyond 32 bits silently, so only the wrapped value can be checked. */
static int get_port(pctx *p, const config_setting_t *grp, const char *what, const char *key,
                    uint16_t *out)
{
    const config_setting_t *s = config_setting_get_member(grp, key);
    *out = 0;
    if (!s)
        return 0;
    if (config_setting_type(s) != CONFIG_TYPE_INT && config_setting_type(s) != CONFIG_TYPE_INT64)
        return fail(p, s, "%s: %s must be an integer", what, key);
    long long v = config_setting_get_int64(s);
    if (v < 1 || v > 65535)
        return fail(p, s, "%s: %s %lld is not a port (1..65535)", what, key, v);
    *out = (uint16_t)v;
    return 0;
}

/* "SHA256:" + 43 base64 characters without padding, as `ssh-keygen -lf` prints it. */
static int hostkey_ok(const char *v)
{
    if (strncmp(v, "SHA256:", 7) != 0)
        return 0;
    v += 7;
    size_t n = strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/");
    return n == 43 && v[n] == '\0';
}

/* Name of one entry of `section`: the setting name in group form, the `name` field in list
 * form. Checks the name as a token of at most cap-1 bytes. */
static int entry_name(pctx *p, const config_setting_t *section, const config_setting_t *e,
                      const char *kind, size_t cap, const char **name)
{
    const config_setting_t *where = e;
    if (!config_setting_is_group(e))
        return fail(p, e, "%ss: each entry must be a group { ... }", kind);
    if (config_setting_is_group(section)) {
        *name = config_setting_name(e);
    } else {
        where = config_setting_get_member(e, "name");
        if (!where)
            return fail(p, e, "%s entry without a name", kind);
        if (config_setting_type(where) != CONFIG_TYPE_STRING)
            return fail(p, where, "%s name must be a string", kind);
        *name = config_setting_get_string(where);
    }
    const char *problem = token_problem(*name);
    if (problem)
        return fail(p, where, "%s name \"%s\" %s", kind, *name, problem);
    if (strlen(*name) >= cap)
        return fail(p, where, "%s name \"%.32s...\" is too long (at most %zu bytes)", kind, *name,
                    cap - 1);
    return 0;
}

static int check_section(pctx *p, const config_setting_t *s, const char *key)
{
    if (!config_setting_is_group(s) && !config_setting_is_list(s))
        return fail(p, s,
                    "%s must be a group { name = { ... }; } or a list ( { name = \"...\"; "
                    "... } )",
                    key);
    return 0;
}

static int parse_backend(pctx *p, const config_setting_t *section, const config_setting_t *e,
                         sr_backend *b)
{
    char what[DPH_NAME_MAX + 16];
    int r = entry_name(p, section, e, "backend", DPH_NAME_MAX, &b->name);
    if (r < 0)
        return r;
    snprintf(what, sizeof what, "backend \"%s\"", b->name);
    b->line = config_setting_source_line(e);
    if ((r = check_known_keys(p, e, what, backend_keys, config_setting_is_list(section))) < 0 ||
        (r = get_token(p, e, what, "address", DPH_ADDR_MAX, 1, &b->address)) < 0 ||
        (r = get_port(p, e, what, "ssh_port", &b->ssh_port)) < 0 ||
        (r = get_port(p, e, what, "ftp_port", &b->ftp_port)) < 0 ||
        (r = get_string(p, e, what, "hostkey", DPH_HOSTKEY_MAX, &b->hostkey)) < 0 ||
        (r = get_bool(p, e, what, "maintenance", false, &b->maintenance)) < 0 ||
        (r = get_string(p, e, what, "message", DPH_MESSAGE_MAX, &b->message)) < 0)
        return r;
    if (*b->hostkey && !hostkey_ok(b->hostkey))
        return fail(p, config_setting_get_member(e, "hostkey"),
                    "%s: hostkey must look like \"SHA256:\" followed by 43 base64 characters "
                    "(as ssh-keygen -lf prints it)",
                    what);
    if (b->maintenance && *b->message == '\0')
        b->message = SR_DEFAULT_MAINTENANCE_MSG;
    return 0;
}

static int by_backend_name(const void *a, const void *b)
{
    return strcmp(((const sr_backend *)a)->name, ((const sr_backend *)b)->name);
}

static int by_user_name(const void *a, const void *b)
{
    return strcmp(((const sr_user *)a)->name, ((const sr_user *)b)->name);
}

static const sr_backend *find_backend(const sr_table *t, const char *name)
{
    sr_backend key = {.name = name};
    return bsearch(&key, t->backends, t->nbackends, sizeof key, by_backend_name);
}

/* The setting `key` of `grp` names a backend; resolve it. */
static int get_backend_ref(pctx *p, sr_table *t, const config_setting_t *grp, const char *what,
                           const char *key, int required, const sr_backend **out)
{
    const char *name;
    int r = get_token(p, grp, what, key, DPH_NAME_MAX, required, &name);
    if (r < 0)
        return r;
    *out = NULL;
    if (*name && !(*out = find_backend(t, name)))
        return fail(p, config_setting_get_member(grp, key), "%s: %s = \"%s\": unknown backend",
                    what, key, name);
    return 0;
}

static int parse_keys(pctx *p, const config_setting_t *e, const char *what, sr_user *u)
{
    const config_setting_t *s = config_setting_get_member(e, "keys");
    if (!s)
        return 0;
    if (!config_setting_is_array(s) && !config_setting_is_list(s))
        return fail(p, s, "%s: keys must be a list of strings [ \"ssh-ed25519 AAAA...\", ... ]",
                    what);
    size_t n = (size_t)config_setting_length(s);
    if (n == 0)
        return 0;
    if (!(u->keys = calloc(n, sizeof *u->keys)))
        return oom(p);
    for (size_t i = 0; i < n; i++) {
        const config_setting_t *k = config_setting_get_elem(s, (unsigned)i);
        if (config_setting_type(k) != CONFIG_TYPE_STRING)
            return fail(p, k, "%s: keys[%zu] must be a string", what, i);
        const char *v = config_setting_get_string(k);
        size_t len = strlen(v);
        if (len == 0)
            return fail(p, k, "%s: keys[%zu] is empty", what, i);
        if (len >= SR_KEY_MAX)
            return fail(p, k, "%s: keys[%zu] is too long (%zu bytes, at most %d)", what, i, len,
                        SR_KEY_MAX - 1);
        if (strpbrk(v, "\r\n"))
            return fail(p, k, "%s: keys[%zu] contains a line break (one key per string)", what, i);
        u->keys[u->nkeys++] = v;
    }
    return 0;
}

static int parse_auth(pctx *p, const config_setting_t *e, const char *what, sr_user *u)
{
    static const struct {
        const char *name;
        dph_auth auth;
    } modes[] = {{"password", DPH_AUTH_PASSWORD},
                 {"proxy-key", DPH_AUTH_PROXY_KEY},
                 {"mapped-key", DPH_AUTH_MAPPED_KEY}};
    const char *v;
    int r = get_string(p, e, what, "auth", 64, &v);
    u->auth = DPH_AUTH_PASSWORD;
    if (r < 0 || *v == '\0')
        return r;
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
        if (strcmp(v, modes[i].name) == 0) {
            u->auth = modes[i].auth;
            return 0;
        }
    return fail(p, config_setting_get_member(e, "auth"),
                "%s: auth must be \"password\", \"proxy-key\" or \"mapped-key\", not \"%s\"", what,
                v);
}

static int parse_user(pctx *p, sr_table *t, const config_setting_t *section,
                      const config_setting_t *e, sr_user *u)
{
    char what[DPH_USER_MAX + 16];
    int r = entry_name(p, section, e, "user", DPH_USER_MAX, &u->name);
    if (r < 0)
        return r;
    snprintf(what, sizeof what, "user \"%s\"", u->name);
    u->line = config_setting_source_line(e);
    if ((r = check_known_keys(p, e, what, user_keys, config_setting_is_list(section))) < 0 ||
        (r = get_backend_ref(p, t, e, what, "backend", 1, &u->backend)) < 0 ||
        (r = get_token(p, e, what, "backend_user", DPH_USER_MAX, 0, &u->backend_user)) < 0 ||
        (r = parse_auth(p, e, what, u)) < 0 ||
        (r = get_string(p, e, what, "key_path", DPH_PATH_MAX, &u->key_path)) < 0 ||
        (r = parse_keys(p, e, what, u)) < 0 ||
        (r = get_bool(p, e, what, "enabled", true, &u->enabled)) < 0)
        return r;
    if (u->auth == DPH_AUTH_MAPPED_KEY && *u->key_path == '\0')
        return fail(p, e, "%s: auth \"mapped-key\" needs key_path", what);
    return 0;
}

/* Two entries named alike (list form; libconfig itself refuses duplicate group names): point
 * at the later one. */
static int duplicate(pctx *p, const char *kind, const char *name, unsigned la, unsigned lb)
{
    snprintf(p->err, p->errlen, "%s:%u: %s \"%s\" is defined twice (also at line %u)", p->path,
             la > lb ? la : lb, kind, name, la > lb ? lb : la);
    return -EINVAL;
}

int sr_table_parse(sr_table **out, const char *path, const char *text, char *err, size_t errlen)
{
    pctx p = {.path = path, .err = err, .errlen = errlen};
    *out = NULL;
    sr_table *t = calloc(1, sizeof *t);
    if (!t)
        return oom(&p);
    config_init(&t->cfg);
    int r = reject_includes(&p, text);
    if (r < 0)
        goto out;
    if (!config_read_string(&t->cfg, text)) {
        /* Read from a string: config_error_file() is NULL, the file is `path`. */
        snprintf(err, errlen, "%s:%d: %s", path, config_error_line(&t->cfg),
                 config_error_text(&t->cfg));
        r = -EINVAL;
        goto out;
    }
    const config_setting_t *root = config_root_setting(&t->cfg);
    if ((r = check_known_keys(&p, root, "routes file", top_keys, 0)) < 0)
        goto out;

    const config_setting_t *bs = config_setting_get_member(root, "backends");
    if (!bs) {
        r = fail(&p, NULL, "missing backends = { ... };");
        goto out;
    }
    if ((r = check_section(&p, bs, "backends")) < 0)
        goto out;
    size_t n = (size_t)config_setting_length(bs);
    if (n && !(t->backends = calloc(n, sizeof *t->backends))) {
        r = oom(&p);
        goto out;
    }
    t->nbackends = n; /* calloc'd: entries not parsed yet are all zero */
    for (size_t i = 0; i < n; i++)
        if ((r = parse_backend(&p, bs, config_setting_get_elem(bs, (unsigned)i), &t->backends[i])) <
            0)
            goto out;
    qsort(t->backends, t->nbackends, sizeof *t->backends, by_backend_name);
    for (size_t i = 1; i < t->nbackends; i++)
        if (strcmp(t->backends[i - 1].name, t->backends[i].name) == 0) {
            r = duplicate(&p, "backend", t->backends[i].name, t->backends[i - 1].line,
                          t->backends[i].line);
            goto out;
        }

    if ((r = get_backend_ref(&p, t, root, "routes file", "default_backend", 0, &t->def)) < 0)
        goto out;

    const config_setting_t *us = config_setting_get_member(root, "users");
    if (us) {
        if ((r = check_section(&p, us, "users")) < 0)
            goto out;
        n = (size_t)config_setting_length(us);
        if (n && !(t->users = calloc(n, sizeof *t->users))) {
            r = oom(&p);
            goto out;
        }
        t->nusers = n; /* calloc'd: sr_table_free frees whatever was parsed */
        for (size_t i = 0; i < n; i++)
            if ((r = parse_user(&p, t, us, config_setting_get_elem(us, (unsigned)i),
                                &t->users[i])) < 0)
                goto out;
        qsort(t->users, t->nusers, sizeof *t->users, by_user_name);
        for (size_t i = 1; i < t->nusers; i++)
            if (strcmp(t->users[i - 1].name, t->users[i].name) == 0) {
                r = duplicate(&p, "user", t->users[i].name, t->users[i - 1].line, t->users[i].line);
                goto out;
            }
    }
out:
    if (r < 0) {
        sr_table_free(t);
        return r;
    }
    *out = t;
    return 0;
}

void sr_table_free(sr_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nusers; i++)
        free(t->users[i].keys);
    free(t->users);
    free(t->backends);
    config_destroy(&t->cfg);
    free(t);
}

const sr_user *sr_table_find(const sr_table *t, const char *user)
{
    sr_user key = {.name = user};
    return bsearch(&key, t->users, t->nusers, sizeof key, by_user_name);
}

const sr_backend *sr_table_default(const sr_table *t)
{
    return t->def;
}

size_t sr_table_nusers(const sr_table *t)
{
    return t->nusers;
}

size_t sr_table_nbackends(const sr_table *t)
{
    return t->nbackends;
}
