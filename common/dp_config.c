/* dp_config.c - table-driven validation of libconfig files. */
#include "dp_config.h"

#include <errno.h>
#include <libconfig.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PATH_BUF 256

struct dp_conf_src {
    config_t cfg;
    char *file;
};

/* Accumulates "file:line: key: reason" lines into the caller's buffer. */
typedef struct errbuf {
    char *buf;
    size_t len;
    size_t pos;
    int count;
    const char *file;
} errbuf;

static void err_add(errbuf *e, int line, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void err_add(errbuf *e, int line, const char *key, const char *fmt, ...)
{
    e->count++;
    if (e->buf == NULL || e->pos + 1 >= e->len)
        return;
    int n;
    if (line > 0)
        n = snprintf(e->buf + e->pos, e->len - e->pos, "%s%s:%d: %s: ", e->pos ? "\n" : "", e->file,
                     line, key);
    else
        n = snprintf(e->buf + e->pos, e->len - e->pos, "%s%s: %s: ", e->pos ? "\n" : "", e->file,
                     key);
    if (n < 0)
        return;
    e->pos = e->pos + (size_t)n < e->len ? e->pos + (size_t)n : e->len - 1;
    va_list ap;
    va_start(ap, fmt);
    n = vsnprintf(e->buf + e->pos, e->len - e->pos, fmt, ap);
    va_end(ap);
    if (n > 0)
        e->pos = e->pos + (size_t)n < e->len ? e->pos + (size_t)n : e->len - 1;
}

static void *field(void *base, const dp_conf_entry *ent)
{
    return (char *)base + ent->offset;
}

static const void *cfield(const void *base, const dp_conf_entry *ent)
{
    return (const char *)base + ent->offset;
}

static const char *type_name(int libconfig_type)
{
    switch (libconfig_type) {
    case CONFIG_TYPE_GROUP:
        return "a group";
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64:
        return "an integer";
    case CONFIG_TYPE_FLOAT:
        return "a float";
    case CONFIG_TYPE_STRING:
        return "a string";
    case CONFIG_TYPE_BOOL:
        return "a boolean";
    case CONFIG_TYPE_ARRAY:
        return "an array";
    case CONFIG_TYPE_LIST:
        return "a list";
    default:
        return "an unknown type";
    }
}

static const char *want_name(dp_conf_type t)
{
    switch (t) {
    case DP_CONF_BOOL:
        return "a boolean (true or false)";
    case DP_CONF_INT:
        return "an integer";
    case DP_CONF_STRING:
    case DP_CONF_ENUM:
        return "a string";
    case DP_CONF_STRLIST:
        return "an array of strings";
    case DP_CONF_PARAMS:
        return "a group";
    }
    return "?";
}

static void strlist_free(dp_strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static void params_free(dp_conf_params *p)
{
    for (size_t i = 0; i < p->n; i++) {
        free((char *)p->v[i].key);
        free((char *)p->v[i].value);
    }
    free(p->v);
    free(p->lines);
    memset(p, 0, sizeof *p);
}

static void entry_free(void *base, const dp_conf_entry *ent)
{
    void *f = field(base, ent);
    switch (ent->type) {
    case DP_CONF_STRING: {
        char **s = f;
        free(*s);
        *s = NULL;
        break;
    }
    case DP_CONF_STRLIST:
        strlist_free(f);
        break;
    case DP_CONF_PARAMS:
        params_free(f);
        break;
    default:
        break;
    }
}

void dp_conf_free(const dp_conf_table *const *tables, void *base)
{
    for (size_t t = 0; tables[t] != NULL; t++)
        for (size_t i = 0; i < tables[t]->n; i++)
            entry_free(base, &tables[t]->entries[i]);
}

static int enum_index(const dp_conf_entry *ent, const char *s)
{
    for (int i = 0; ent->choices != NULL && ent->choices[i] != NULL; i++)
        if (strcmp(ent->choices[i], s) == 0)
            return i;
    return -1;
}

static void enum_choices_text(const dp_conf_entry *ent, char *buf, size_t len)
{
    size_t pos = 0;
    buf[0] = '\0';
    for (int i = 0; ent->choices != NULL && ent->choices[i] != NULL; i++) {
        int n = snprintf(buf + pos, len - pos, "%s\"%s\"", i ? ", " : "", ent->choices[i]);
        if (n < 0 || (size_t)n >= len - pos)
            break;
        pos += (size_t)n;
    }
}

/* Store a string-form value (default or file) into the field. Returns 0 or -1 with *why. */
static int store_text(void *base, const dp_conf_entry *ent, const char *text, char *why,
                      size_t whylen)
{
    void *f = field(base, ent);
    switch (ent->type) {
    case DP_CONF_BOOL:
        if (strcmp(text, "true") == 0 || strcmp(text, "false") == 0) {
            *(bool *)f = text[0] == 't';
            return 0;
        }
        snprintf(why, whylen, "expected true or false");
        return -1;
    case DP_CONF_INT: {
        char *end;
        errno = 0;
        long long v = strtoll(text, &end, 10);
        if (errno != 0 || end == text || *end != '\0') {
            snprintf(why, whylen, "expected an integer");
            return -1;
        }
        if (v < ent->min || v > ent->max) {
            snprintf(why, whylen, "%lld is out of range [%lld, %lld]", v, ent->min, ent->max);
            return -1;
        }
        *(int *)f = (int)v;
        return 0;
    }
    case DP_CONF_STRING: {
        if (ent->max > 0 && (long long)strlen(text) > ent->max) {
            snprintf(why, whylen, "longer than %lld characters", ent->max);
            return -1;
        }
        if ((long long)strlen(text) < ent->min) {
            if (ent->min == 1)
                snprintf(why, whylen, "must not be empty");
            else
                snprintf(why, whylen, "shorter than %lld characters", ent->min);
            return -1;
        }
        char *dup = strdup(text);
        if (dup == NULL) {
            snprintf(why, whylen, "out of memory");
            return -1;
        }
        char **s = f;
        free(*s);
        *s = dup;
        return 0;
    }
    case DP_CONF_ENUM: {
        int idx = enum_index(ent, text);
        if (idx < 0) {
            char choices[200];
            enum_choices_text(ent, choices, sizeof choices);
            snprintf(why, whylen, "\"%s\" is not one of %s", text, choices);
            return -1;
        }
        *(int *)f = idx;
        return 0;
    }
    case DP_CONF_STRLIST: {
        /* Defaults for lists are comma-separated. */
        dp_strlist *l = f;
        strlist_free(l);
        if (text[0] == '\0')
            return 0;
        char *copy = strdup(text);
        if (copy == NULL)
            return -1;
        char *save = NULL;
        for (char *tok = strtok_r(copy, ",", &save); tok != NULL;
             tok = strtok_r(NULL, ",", &save)) {
            char **nv = realloc(l->v, (l->n + 1) * sizeof *nv);
            if (nv == NULL) {
                free(copy);
                return -1;
            }
            l->v = nv;
            l->v[l->n] = strdup(tok);
            if (l->v[l->n] == NULL) {
                free(copy);
                return -1;
            }
            l->n++;
        }
        free(copy);
        return 0;
    }
    case DP_CONF_PARAMS:
        return 0;
    }
    return -1;
}

static void apply_defaults(const dp_conf_table *const *tables, void *base)
{
    char why[128];
    for (size_t t = 0; tables[t] != NULL; t++) {
        for (size_t i = 0; i < tables[t]->n; i++) {
            const dp_conf_entry *ent = &tables[t]->entries[i];
            entry_free(base, ent);
            if (ent->def != NULL && store_text(base, ent, ent->def, why, sizeof why) != 0) {
                /* A bad default is a programming error; say so loudly. */
                fprintf(stderr, "dp_conf: bad default for %s: %s\n", ent->path, why);
                abort();
            }
        }
    }
}

static const dp_conf_entry *find_entry(const dp_conf_table *const *tables, const char *path)
{
    for (size_t t = 0; tables[t] != NULL; t++)
        for (size_t i = 0; i < tables[t]->n; i++)
            if (strcmp(tables[t]->entries[i].path, path) == 0)
                return &tables[t]->entries[i];
    return NULL;
}

/* Is `path` a group that holds table entries ("hook" for "hook.path")? */
static bool is_group_prefix(const dp_conf_table *const *tables, const char *path)
{
    size_t plen = strlen(path);
    for (size_t t = 0; tables[t] != NULL; t++)
        for (size_t i = 0; i < tables[t]->n; i++) {
            const char *p = tables[t]->entries[i].path;
            if (strncmp(p, path, plen) == 0 && p[plen] == '.')
                return true;
        }
    return false;
}

/* Render a scalar setting as text; returns 0 or -1 for non-scalars. */
static int scalar_text(const config_setting_t *s, char *buf, size_t len)
{
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_INT:
        snprintf(buf, len, "%d", config_setting_get_int(s));
        return 0;
    case CONFIG_TYPE_INT64:
        snprintf(buf, len, "%lld", config_setting_get_int64(s));
        return 0;
    case CONFIG_TYPE_FLOAT:
        snprintf(buf, len, "%g", config_setting_get_float(s));
        return 0;
    case CONFIG_TYPE_BOOL:
        snprintf(buf, len, "%s", config_setting_get_bool(s) ? "true" : "false");
        return 0;
    case CONFIG_TYPE_STRING:
        snprintf(buf, len, "%s", config_setting_get_string(s));
        return 0;
    default:
        return -1;
    }
}

static void load_params(config_setting_t *grp, const char *path, void *base,
                        const dp_conf_entry *ent, errbuf *e)
{
    dp_conf_params *p = field(base, ent);
    params_free(p);
    int n = config_setting_length(grp);
    p->v = calloc((size_t)n + 1, sizeof *p->v);
    p->lines = calloc((size_t)n + 1, sizeof *p->lines);
    if (p->v == NULL || p->lines == NULL) {
        err_add(e, 0, path, "out of memory");
        return;
    }
    for (int i = 0; i < n; i++) {
        config_setting_t *s = config_setting_get_elem(grp, (unsigned)i);
        const char *name = config_setting_name(s);
        int line = (int)config_setting_source_line(s);
        /* Hook values may be long (SQL queries, conninfo): size the buffer for them. */
        char text[8192];
        if (scalar_text(s, text, sizeof text) != 0) {
            err_add(e, line, path, "%s: expected a scalar (string, number or boolean), got %s",
                    name, type_name(config_setting_type(s)));
            continue;
        }
        p->v[p->n].key = strdup(name);
        p->v[p->n].value = strdup(text);
        p->lines[p->n] = line;
        if (p->v[p->n].key == NULL || p->v[p->n].value == NULL) {
            err_add(e, line, path, "out of memory");
            return;
        }
        p->n++;
    }
}

static void load_value(config_setting_t *s, const char *path, void *base, const dp_conf_entry *ent,
                       errbuf *e)
{
    int line = (int)config_setting_source_line(s);
    int ltype = config_setting_type(s);
    char text[4096];
    char why[256];

    switch (ent->type) {
    case DP_CONF_PARAMS:
        if (ltype != CONFIG_TYPE_GROUP) {
            err_add(e, line, path, "expected a group, got %s", type_name(ltype));
            return;
        }
        load_params(s, path, base, ent, e);
        return;
    case DP_CONF_STRLIST: {
        if (ltype != CONFIG_TYPE_ARRAY && ltype != CONFIG_TYPE_LIST) {
            err_add(e, line, path, "expected %s, got %s", want_name(ent->type), type_name(ltype));
            return;
        }
        int n = config_setting_length(s);
        if (ent->max > 0 && n > ent->max) {
            err_add(e, line, path, "%d items, at most %lld allowed", n, ent->max);
            return;
        }
        dp_strlist *l = field(base, ent);
        strlist_free(l);
        l->v = calloc((size_t)n + 1, sizeof *l->v);
        if (l->v == NULL) {
            err_add(e, line, path, "out of memory");
            return;
        }
        for (int i = 0; i < n; i++) {
            config_setting_t *el = config_setting_get_elem(s, (unsigned)i);
            if (config_setting_type(el) != CONFIG_TYPE_STRING) {
                err_add(e, line, path, "item %d: expected a string, got %s", i + 1,
                        type_name(config_setting_type(el)));
                return;
            }
            l->v[l->n] = strdup(config_setting_get_string(el));
            if (l->v[l->n] == NULL)
                return;
            l->n++;
        }
        break;
    }
    case DP_CONF_BOOL:
        if (ltype != CONFIG_TYPE_BOOL) {
            err_add(e, line, path, "expected %s, got %s", want_name(ent->type), type_name(ltype));
            return;
        }
        *(bool *)field(base, ent) = config_setting_get_bool(s) != 0;
        break;
    case DP_CONF_INT:
        if (ltype != CONFIG_TYPE_INT && ltype != CONFIG_TYPE_INT64) {
            err_add(e, line, path, "expected %s, got %s", want_name(ent->type), type_name(ltype));
            return;
        }
        snprintf(text, sizeof text, "%lld", config_setting_get_int64(s));
        if (ltype == CONFIG_TYPE_INT)
            snprintf(text, sizeof text, "%d", config_setting_get_int(s));
        if (store_text(base, ent, text, why, sizeof why) != 0) {
            err_add(e, line, path, "%s", why);
            return;
        }
        break;
    case DP_CONF_STRING:
    case DP_CONF_ENUM:
        if (ltype != CONFIG_TYPE_STRING) {
            err_add(e, line, path, "expected %s, got %s", want_name(ent->type), type_name(ltype));
            return;
        }
        if (store_text(base, ent, config_setting_get_string(s), why, sizeof why) != 0) {
            err_add(e, line, path, "%s", why);
            return;
        }
        break;
    }
    if (ent->check != NULL && ent->check(field(base, ent), why, sizeof why) != 0)
        err_add(e, line, path, "%s", why);
}

/* Walk every setting of a group: known keys are loaded, unknown ones reported. */
static void walk(config_setting_t *grp, const char *prefix, const dp_conf_table *const *tables,
                 void *base, errbuf *e)
{
    int n = config_setting_length(grp);
    for (int i = 0; i < n; i++) {
        config_setting_t *s = config_setting_get_elem(grp, (unsigned)i);
        const char *name = config_setting_name(s);
        char path[PATH_BUF];
        snprintf(path, sizeof path, "%s%s%s", prefix, prefix[0] ? "." : "", name);
        const dp_conf_entry *ent = find_entry(tables, path);
        if (ent != NULL) {
            load_value(s, path, base, ent, e);
        } else if (is_group_prefix(tables, path)) {
            if (config_setting_type(s) != CONFIG_TYPE_GROUP)
                err_add(e, (int)config_setting_source_line(s), path, "expected a group, got %s",
                        type_name(config_setting_type(s)));
            else
                walk(s, path, tables, base, e);
        } else {
            err_add(e, (int)config_setting_source_line(s), path, "unknown key");
        }
    }
}

static void check_required(config_t *cfg, const dp_conf_table *const *tables, errbuf *e)
{
    for (size_t t = 0; tables[t] != NULL; t++)
        for (size_t i = 0; i < tables[t]->n; i++) {
            const dp_conf_entry *ent = &tables[t]->entries[i];
            if ((ent->flags & DP_CONF_REQUIRED) && config_lookup(cfg, ent->path) == NULL)
                err_add(e, 0, ent->path, "required but missing");
        }
}

static int load_common(dp_conf_src *src, int read_rc, const dp_conf_table *const *tables,
                       void *base, char *err, size_t errlen)
{
    errbuf e = {.buf = err, .len = errlen, .file = src->file};
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    apply_defaults(tables, base);
    if (read_rc != CONFIG_TRUE) {
        if (config_error_type(&src->cfg) == CONFIG_ERR_FILE_IO) {
            err_add(&e, 0, "file", "cannot read: %s", strerror(errno ? errno : ENOENT));
            return -ENOENT;
        }
        const char *efile = config_error_file(&src->cfg);
        e.file = efile != NULL ? efile : src->file;
        err_add(&e, config_error_line(&src->cfg), "syntax", "%s", config_error_text(&src->cfg));
        return -EINVAL;
    }
    walk(config_root_setting(&src->cfg), "", tables, base, &e);
    check_required(&src->cfg, tables, &e);
    return e.count == 0 ? 0 : -EINVAL;
}

static dp_conf_src *src_new(const char *name)
{
    dp_conf_src *src = calloc(1, sizeof *src);
    if (src == NULL)
        return NULL;
    src->file = strdup(name);
    if (src->file == NULL) {
        free(src);
        return NULL;
    }
    config_init(&src->cfg);
    /* @include paths resolve against the including file's directory. */
    char *dir = strdup(name);
    if (dir != NULL) {
        char *slash = strrchr(dir, '/');
        if (slash != NULL) {
            *slash = '\0';
            config_set_include_dir(&src->cfg, dir[0] ? dir : "/");
        }
        free(dir);
    }
    return src;
}

static int finish(dp_conf_src *s, int rc, dp_conf_src **src)
{
    if (rc == 0 && src != NULL)
        *src = s;
    else
        dp_conf_src_free(s);
    return rc;
}

int dp_conf_load(const char *file, const dp_conf_table *const *tables, void *base,
                 dp_conf_src **src, char *err, size_t errlen)
{
    dp_conf_src *s = src_new(file);
    if (s == NULL)
        return -ENOMEM;
    errno = 0;
    int rc = config_read_file(&s->cfg, file);
    int saved = errno;
    if (rc != CONFIG_TRUE && config_error_type(&s->cfg) == CONFIG_ERR_FILE_IO)
        errno = access(file, R_OK) == 0 ? saved : errno;
    return finish(s, load_common(s, rc, tables, base, err, errlen), src);
}

int dp_conf_load_string(const char *name, const char *text, const dp_conf_table *const *tables,
                        void *base, dp_conf_src **src, char *err, size_t errlen)
{
    dp_conf_src *s = src_new(name);
    if (s == NULL)
        return -ENOMEM;
    int rc = config_read_string(&s->cfg, text);
    return finish(s, load_common(s, rc, tables, base, err, errlen), src);
}

void dp_conf_src_free(dp_conf_src *src)
{
    if (src == NULL)
        return;
    config_destroy(&src->cfg);
    free(src->file);
    free(src);
}

const char *dp_conf_where(const dp_conf_src *src, const char *path, char *buf, size_t len)
{
    if (src == NULL) {
        snprintf(buf, len, "(defaults)");
        return buf;
    }
    const config_setting_t *s = config_lookup(&src->cfg, path);
    if (s != NULL && config_setting_source_line(s) > 0)
        snprintf(buf, len, "%s:%u", src->file, config_setting_source_line(s));
    else
        snprintf(buf, len, "%s", src->file);
    return buf;
}

static bool strlist_eq(const dp_strlist *a, const dp_strlist *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->v[i], b->v[i]) != 0)
            return false;
    return true;
}

bool dp_conf_params_equal(const dp_conf_params *a, const dp_conf_params *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->v[i].key, b->v[i].key) != 0 || strcmp(a->v[i].value, b->v[i].value) != 0)
            return false;
    return true;
}

static bool entry_eq(const dp_conf_entry *ent, const void *a, const void *b)
{
    const void *fa = cfield(a, ent), *fb = cfield(b, ent);
    switch (ent->type) {
    case DP_CONF_BOOL:
        return *(const bool *)fa == *(const bool *)fb;
    case DP_CONF_INT:
    case DP_CONF_ENUM:
        return *(const int *)fa == *(const int *)fb;
    case DP_CONF_STRING: {
        const char *sa = *(char *const *)fa, *sb = *(char *const *)fb;
        return (sa == NULL && sb == NULL) || (sa != NULL && sb != NULL && strcmp(sa, sb) == 0);
    }
    case DP_CONF_STRLIST:
        return strlist_eq(fa, fb);
    case DP_CONF_PARAMS:
        return dp_conf_params_equal(fa, fb);
    }
    return false;
}

const char *dp_conf_nonreloadable_change(const dp_conf_table *const *tables, const void *a,
                                         const void *b)
{
    for (size_t t = 0; tables[t] != NULL; t++)
        for (size_t i = 0; i < tables[t]->n; i++) {
            const dp_conf_entry *ent = &tables[t]->entries[i];
            if (!(ent->flags & DP_CONF_RELOADABLE) && !entry_eq(ent, a, b))
                return ent->path;
        }
    return NULL;
}

void dp_conf_dump(const dp_conf_table *const *tables, const void *base, int fd)
{
    for (size_t t = 0; tables[t] != NULL; t++)
        for (size_t i = 0; i < tables[t]->n; i++) {
            const dp_conf_entry *ent = &tables[t]->entries[i];
            const void *f = cfield(base, ent);
            switch (ent->type) {
            case DP_CONF_BOOL:
                dprintf(fd, "%s = %s;\n", ent->path, *(const bool *)f ? "true" : "false");
                break;
            case DP_CONF_INT:
                dprintf(fd, "%s = %d;\n", ent->path, *(const int *)f);
                break;
            case DP_CONF_ENUM:
                dprintf(fd, "%s = \"%s\";\n", ent->path, ent->choices[*(const int *)f]);
                break;
            case DP_CONF_STRING: {
                const char *s = *(char *const *)f;
                dprintf(fd, "%s = \"%s\";\n", ent->path, s ? s : "");
                break;
            }
            case DP_CONF_STRLIST: {
                const dp_strlist *l = f;
                dprintf(fd, "%s = [", ent->path);
                for (size_t k = 0; k < l->n; k++)
                    dprintf(fd, "%s\"%s\"", k ? ", " : " ", l->v[k]);
                dprintf(fd, " ];\n");
                break;
            }
            case DP_CONF_PARAMS: {
                /* Values of a hook's group may be secrets (conninfo passwords): keys only. */
                const dp_conf_params *p = f;
                for (size_t k = 0; k < p->n; k++)
                    dprintf(fd, "%s.%s = <set>;\n", ent->path, p->v[k].key);
                break;
            }
            }
        }
}

static const char *const conf_type_names[] = {
    [DP_CONF_BOOL] = "bool",           [DP_CONF_INT] = "int",   [DP_CONF_STRING] = "string",
    [DP_CONF_STRLIST] = "string list", [DP_CONF_ENUM] = "enum", [DP_CONF_PARAMS] = "group",
};

/* A list's default ("a,b") as the file writes it: ["a", "b"]. */
static void print_list_default(int fd, const char *def)
{
    dprintf(fd, "[");
    for (const char *p = def; p != NULL && *p != '\0';) {
        size_t n = strcspn(p, ",");
        dprintf(fd, "%s\"%.*s\"", p == def ? "" : ", ", (int)n, p);
        p += n + (p[n] == ',');
    }
    dprintf(fd, "]");
}

void dp_conf_keys(const dp_conf_table *const *tables, int fd)
{
    for (size_t t = 0; tables[t] != NULL; t++)
        for (size_t i = 0; i < tables[t]->n; i++) {
            const dp_conf_entry *ent = &tables[t]->entries[i];
            dprintf(fd, "%s\t%s\t", ent->path, conf_type_names[ent->type]);
            if (ent->flags & DP_CONF_REQUIRED)
                dprintf(fd, "(required)");
            else if (ent->type == DP_CONF_STRING)
                dprintf(fd, "\"%s\"", ent->def != NULL ? ent->def : "");
            else if (ent->type == DP_CONF_ENUM)
                dprintf(fd, "\"%s\"",
                        ent->def != NULL       ? ent->def
                        : ent->choices != NULL ? ent->choices[0]
                                               : "");
            else if (ent->type == DP_CONF_STRLIST)
                print_list_default(fd, ent->def);
            else if (ent->type == DP_CONF_PARAMS)
                dprintf(fd, "{}");
            else
                dprintf(fd, "%s",
                        ent->def != NULL ? ent->def : (ent->type == DP_CONF_BOOL ? "false" : "0"));
            dprintf(fd, "\t");
            if (ent->type == DP_CONF_INT)
                dprintf(fd, "%lld..%lld", ent->min, ent->max);
            for (size_t k = 0;
                 ent->type == DP_CONF_ENUM && ent->choices != NULL && ent->choices[k] != NULL; k++)
                dprintf(fd, "%s%s", k ? ", " : "", ent->choices[k]);
            dprintf(fd, "\t%s\n", (ent->flags & DP_CONF_RELOADABLE) ? "yes" : "no");
        }
}
