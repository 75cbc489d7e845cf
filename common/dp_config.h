/*
 * dp_config.h - configuration files (libconfig syntax) validated against tables, the way
 * Redis's config.c does it: every key is one table row with its type, bounds, default,
 * reloadable flag and an optional validator. Unknown keys, wrong types and out-of-range values
 * are refused with "file:line: key: reason"; every error in the file is reported, not only
 * the first.
 *
 * A daemon's configuration is one C struct; a table row stores its value at `offset` in it.
 * A daemon passes several tables (the common one from dp_daemon.h plus its own).
 */
#ifndef DP_CONFIG_H
#define DP_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "dynproxy_hook.h"

typedef enum dp_conf_type {
    DP_CONF_BOOL,    /* bool */
    DP_CONF_INT,     /* int, within [min, max] */
    DP_CONF_STRING,  /* char * (heap), length <= max when max > 0 */
    DP_CONF_STRLIST, /* dp_strlist: an array of strings, at most max items when max > 0 */
    DP_CONF_ENUM,    /* int: index into choices */
    DP_CONF_PARAMS,  /* dp_conf_params: a free-form group of scalars handed to a hook */
} dp_conf_type;

#define DP_CONF_RELOADABLE 0x1u /* may change on reload without a restart */
#define DP_CONF_REQUIRED 0x2u   /* must be present in the file */

typedef struct dp_strlist {
    char **v;
    size_t n;
} dp_strlist;

/* Scalar settings of a group, as text, for a hook (dph_param array ends with a NULL key). */
typedef struct dp_conf_params {
    dph_param *v; /* n + 1 entries */
    int *lines;   /* source line of each */
    size_t n;
} dp_conf_params;

typedef struct dp_conf_entry {
    const char *path; /* dotted path: "hook.timeout_ms" */
    dp_conf_type type;
    size_t offset;   /* where the value lives in the config struct */
    const char *def; /* default as text; NULL = zero/NULL/empty */
    long long min;   /* INT: lower bound */
    long long max;   /* INT: upper bound; STRING: max length; STRLIST: max items (0 = none) */
    unsigned flags;  /* DP_CONF_* */
    const char *const *choices; /* ENUM: NULL-terminated names */
    /* Extra check on the stored value (points at the field). Return 0, or -1 with err set. */
    int (*check)(const void *value, char *err, size_t errlen);
    const char *help; /* one line, for docs and -T */
} dp_conf_entry;

/*
 * One row of a table per macro, by type (Redis's createIntConfig style), so a row names what it
 * sets instead of filling ten positional columns. `off` is the field's offsetof in the config
 * struct, `flags` DP_CONF_*; an extra check on the stored value is appended as `.check = fn`.
 *   DP_CONF_INT_KEY("hook.threads", OFF(hook_threads), "8", 1, 128, 0, "threads running ...")
 */
#define DP_CONF_INT_KEY(path_, off_, def_, min_, max_, flags_, help_, ...)                         \
    {                                                                                              \
        .path = (path_), .type = DP_CONF_INT, .offset = (off_), .def = (def_), .min = (min_),      \
        .max = (max_), .flags = (flags_), .help = (help_), __VA_ARGS__                             \
    }
#define DP_CONF_BOOL_KEY(path_, off_, def_, flags_, help_)                                         \
    {                                                                                              \
        .path = (path_), .type = DP_CONF_BOOL, .offset = (off_), .def = (def_), .flags = (flags_), \
        .help = (help_)                                                                            \
    }
/* min_/max_: length bounds (max_ 0: none) */
#define DP_CONF_STRING_KEY(path_, off_, def_, min_, max_, flags_, help_, ...)                      \
    {                                                                                              \
        .path = (path_), .type = DP_CONF_STRING, .offset = (off_), .def = (def_), .min = (min_),   \
        .max = (max_), .flags = (flags_), .help = (help_), __VA_ARGS__                             \
    }
/* max_items_: 0 = no limit; empty by default, or `.def = "a,b"` (comma-separated) appended */
#define DP_CONF_LIST_KEY(path_, off_, max_items_, flags_, help_, ...)                              \
    {                                                                                              \
        .path = (path_), .type = DP_CONF_STRLIST, .offset = (off_), .max = (max_items_),           \
        .flags = (flags_), .help = (help_), __VA_ARGS__                                            \
    }
#define DP_CONF_ENUM_KEY(path_, off_, def_, choices_, flags_, help_)                               \
    {                                                                                              \
        .path = (path_), .type = DP_CONF_ENUM, .offset = (off_), .def = (def_), .flags = (flags_), \
        .choices = (choices_), .help = (help_)                                                     \
    }
#define DP_CONF_PARAMS_KEY(path_, off_, flags_, help_)                                             \
    {                                                                                              \
        .path = (path_), .type = DP_CONF_PARAMS, .offset = (off_), .flags = (flags_),              \
        .help = (help_)                                                                            \
    }

typedef struct dp_conf_table {
    const dp_conf_entry *entries;
    size_t n;
} dp_conf_table;

/* Where values came from: kept for file:line messages after loading (hook errors, reload). */
typedef struct dp_conf_src dp_conf_src;

/*
 * Apply defaults, then read `file` into `base` through the NULL-terminated `tables`.
 * Returns 0, or a negative errno with every problem written into err, one per line
 * (-ENOENT/-EACCES: file unreadable; -EINVAL: syntax or validation errors).
 * On success *src (when non-NULL) receives the source map; free with dp_conf_src_free.
 * On failure `base` holds whatever was parsed: free it with dp_conf_free.
 */
int dp_conf_load(const char *file, const dp_conf_table *const *tables, void *base,
                 dp_conf_src **src, char *err, size_t errlen);

/* Same, from a string (tests); `name` stands for the file name in messages. */
int dp_conf_load_string(const char *name, const char *text, const dp_conf_table *const *tables,
                        void *base, dp_conf_src **src, char *err, size_t errlen);

/* Free heap values (strings, lists, params) of `base`; leaves the struct zeroed. */
void dp_conf_free(const dp_conf_table *const *tables, void *base);

void dp_conf_src_free(dp_conf_src *src);

/* "file:line" of `path` ("hook.config.conninfo" works for params too), or "file" when it is
 * not in the file (a default). Returns buf. */
const char *dp_conf_where(const dp_conf_src *src, const char *path, char *buf, size_t len);

/* First non-reloadable key whose value differs between two loaded configs, or NULL. */
const char *dp_conf_nonreloadable_change(const dp_conf_table *const *tables, const void *a,
                                         const void *b);

bool dp_conf_params_equal(const dp_conf_params *a, const dp_conf_params *b);

/* Write the effective configuration ("key = value;" lines) to fd, for -T. */
void dp_conf_dump(const dp_conf_table *const *tables, const void *base, int fd);

/* Every key of `tables`, one line each, tab-separated: key, type (int, bool, string, string
 * list, enum, group), default (as the file would write it; "(required)" for a required key),
 * range ("min..max" for an int, the choices of an enum, else empty), reload ("yes"/"no").
 * For `-K`, and for the test that holds docs/configuration.md to the tables. */
void dp_conf_keys(const dp_conf_table *const *tables, int fd);

#endif
