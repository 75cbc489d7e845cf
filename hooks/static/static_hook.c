/*
 * static_hook.c - the static routing hook: user -> backend from a libconfig routes file
 * (format: static_routes.c, deploy/examples/routes.conf; operator docs: docs/hooks.md).
 *
 * Params (the daemon's hook.config section):
 *   routes           path of the routes file (required)
 *   reload_check_ms  at most this often a lookup stat()s the file and, when it changed,
 *                    re-reads it (default 1000, 0 = never; 0..3600000)
 *
 * Reload: lookups run on threadpool threads, so the one lookup that finds the check due may do
 * file I/O. It re-reads the file only when stat() says it changed, and swaps tables only when the
 * content did (a content hash), so `touch` flushes nothing. A good new file replaces the table
 * under the rwlock and drops the host's route cache (invalidate_all); a bad one is logged with
 * file:line and the old table stays.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dynproxy_hook.h"
#include "static_routes.h"

#define ROUTES_FILE_MAX (64u << 20) /* refuse absurd files rather than eat memory */
#define RELOAD_CHECK_MAX_MS 3600000L

/* True when the host's struct has `field` (an older host may hand us a shorter struct). */
#define HOST_HAS(h, field) ((h)->struct_size >= offsetof(dph_host, field) + sizeof((h)->field))

/* What stat() said about the file when it was last read. */
typedef struct file_sig {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
} file_sig;

typedef struct static_state {
    const dph_host *host;
    char path[PATH_MAX];
    long reload_ms;

    pthread_rwlock_t lock; /* guards `table` */
    sr_table *table;

    /* Reload check; the fields below are only touched by the thread holding reload_mu. */
    pthread_mutex_t reload_mu;
    _Atomic uint64_t last_check_ms;
    file_sig sig;
    bool sig_racy;      /* mtime too recent to trust: re-read at the next check */
    bool stat_failed;   /* already warned that the file is gone */
    uint64_t seen_hash; /* content hash of the last file read (good or bad) */
} static_state;

static void slog(const static_state *st, dph_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void slog(const static_state *st, dph_log_level level, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    if (!st->host || !HOST_HAS(st->host, log) || !st->host->log)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    st->host->log(st->host->ctx, level, "%s", line);
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* FNV-1a, 64 bits: only used to notice that the file's content changed. */
static uint64_t content_hash(const char *s, size_t n)
{
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static void sig_of(const struct stat *sb, file_sig *sig)
{
    sig->dev = sb->st_dev;
    sig->ino = sb->st_ino;
    sig->size = sb->st_size;
    sig->mtime = sb->st_mtim;
}

static bool sig_eq(const file_sig *a, const file_sig *b)
{
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* File timestamps advance in clock ticks, so a rewrite within the tick of our read keeps the
 * same mtime (and often the same size: "web1" -> "web2"). Until the mtime is safely in the past,
 * re-read at each check; the content hash keeps that from swapping anything needlessly. */
static bool sig_is_racy(const file_sig *sig)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return sig->mtime.tv_sec >= now.tv_sec - 2;
}

/* Read the whole file into a NUL-terminated heap buffer; its stat goes to *sig.
 * Returns 0 or a negative errno with err filled in. */
static int read_file(const char *path, char **text, uint64_t *hash, file_sig *sig, char *err,
                     size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int r = 0;
    if (fd < 0 || fstat(fd, &sb) < 0) {
        r = -errno;
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        r = -EINVAL;
        snprintf(err, errlen, "%s: not a regular file", path);
        goto out;
    }
    sig_of(&sb, sig);
    for (;;) {
        if (len + 1 >= cap) {
            size_t ncap = cap ? cap * 2 : (size_t)sb.st_size + 4096;
            char *nbuf;
            if (ncap > ROUTES_FILE_MAX + 1) {
                r = -EFBIG;
                snprintf(err, errlen, "%s: larger than %u bytes", path, ROUTES_FILE_MAX);
                goto out;
            }
            if (!(nbuf = realloc(buf, ncap))) {
                r = -ENOMEM;
                goto fail;
            }
            buf = nbuf;
            cap = ncap;
        }
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            goto fail;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    if (strlen(buf) != len) {
        r = -EINVAL;
        snprintf(err, errlen, "%s: contains a NUL byte (not a text file)", path);
        goto out;
    }
    *hash = content_hash(buf, len);
    *text = buf;
    buf = NULL;
    goto out;
fail:
    snprintf(err, errlen, "cannot read %s: %s", path, strerror(-r));
out:
    if (fd >= 0)
        close(fd);
    free(buf);
    return r;
}

/* Called with reload_mu held. Returns 0 (reloaded or unchanged) or a negative errno. */
static int check_file(static_state *st)
{
    struct stat sb;
    file_sig sig;
    if (stat(st->path, &sb) < 0) {
        if (!st->stat_failed)
            slog(st, DPH_LOG_WARN, "cannot stat routes file %s: %s; keeping the loaded routes",
                 st->path, strerror(errno));
        st->stat_failed = true;
        return -ENOENT;
    }
    st->stat_failed = false;
    sig_of(&sb, &sig);
    if (sig_eq(&sig, &st->sig) && !st->sig_racy)
        return 0;

    char err[DPH_ERROR_MAX], *text = NULL;
    uint64_t hash;
    int r = read_file(st->path, &text, &hash, &sig, err, sizeof err);
    if (r < 0) {
        st->sig = sig; /* report once; retry when the file changes again */
        st->sig_racy = false;
        slog(st, DPH_LOG_ERROR, "routes not reloaded, keeping the loaded ones: %s", err);
        return r;
    }
    st->sig = sig;
    st->sig_racy = sig_is_racy(&sig);
    if (hash == st->seen_hash) { /* touched, or rewritten with the same content */
        free(text);
        return 0;
    }
    st->seen_hash = hash; /* also for a bad file: report it once, not at every check */

    sr_table *t;
    r = sr_table_parse(&t, st->path, text, err, sizeof err);
    free(text);
    if (r < 0) {
        slog(st, DPH_LOG_ERROR, "routes not reloaded, keeping the loaded ones: %s", err);
        return r;
    }
    pthread_rwlock_wrlock(&st->lock);
    sr_table *old = st->table;
    st->table = t;
    pthread_rwlock_unlock(&st->lock);
    sr_table_free(old);
    slog(st, DPH_LOG_INFO, "routes reloaded from %s: %zu users, %zu backends", st->path,
         sr_table_nusers(t), sr_table_nbackends(t));
    if (HOST_HAS(st->host, invalidate_all) && st->host->invalidate_all)
        st->host->invalidate_all(st->host->ctx);
    return 0;
}

/* At most once per reload_ms, one thread (the others don't wait) checks the file. */
static void maybe_reload(static_state *st)
{
    if (st->reload_ms == 0)
        return;
    uint64_t now = mono_ms();
    if (now - atomic_load(&st->last_check_ms) < (uint64_t)st->reload_ms)
        return;
    if (pthread_mutex_trylock(&st->reload_mu) != 0)
        return;
    /* Again under the lock, with a fresh clock: another thread may have just checked. */
    if (mono_ms() - atomic_load(&st->last_check_ms) >= (uint64_t)st->reload_ms) {
        check_file(st);
        atomic_store(&st->last_check_ms, mono_ms());
    }
    pthread_mutex_unlock(&st->reload_mu);
}

/* An explicit reload (SIGHUP): read the file now, even when it looks unchanged; the
 * content hash still spares a table swap when nothing changed. */
static int static_reload(void *state)
{
    static_state *st = state;
    pthread_mutex_lock(&st->reload_mu);
    st->sig_racy = true;
    int r = check_file(st);
    atomic_store(&st->last_check_ms, mono_ms());
    pthread_mutex_unlock(&st->reload_mu);
    return r;
}

static int param_error(dph_error *err, const dph_param *p, int r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int param_error(dph_error *err, const dph_param *p, int r, const char *fmt, ...)
{
    va_list ap;
    err->key = p ? p->key : NULL;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return r;
}

static void static_fini(void *state);

static int static_init(void **state, const dph_host *host, const dph_param *params, dph_error *err)
{
    const dph_param *routes = NULL;
    long reload_ms = 1000;
    *state = NULL;
    for (const dph_param *p = params; p && p->key; p++) {
        if (strcmp(p->key, "routes") == 0) {
            if (!p->value || !*p->value)
                return param_error(err, p, -EINVAL, "must be a file path");
            if (strlen(p->value) >= PATH_MAX)
                return param_error(err, p, -ENAMETOOLONG, "path too long");
            routes = p;
        } else if (strcmp(p->key, "reload_check_ms") == 0) {
            char *end;
            errno = 0;
            reload_ms = p->value ? strtol(p->value, &end, 10) : -1;
            if (!p->value || !*p->value || *end || errno || reload_ms < 0 ||
                reload_ms > RELOAD_CHECK_MAX_MS)
                return param_error(err, p, -EINVAL, "must be an integer in 0..%ld (0 = never)",
                                   RELOAD_CHECK_MAX_MS);
        } else {
            return param_error(err, p, -EINVAL,
                               "unknown parameter (known: routes, reload_check_ms)");
        }
    }
    if (!routes)
        return param_error(err, NULL, -EINVAL, "missing parameter routes (the routes file)");

    static_state *st = calloc(1, sizeof *st);
    if (!st)
        return param_error(err, NULL, -ENOMEM, "out of memory");
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    /* Lookups never stop coming; without writer preference a reload could wait forever. */
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&st->lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    pthread_mutex_init(&st->reload_mu, NULL);
    st->host = host;
    st->reload_ms = reload_ms;
    snprintf(st->path, sizeof st->path, "%s", routes->value);

    char *text = NULL;
    int r = read_file(st->path, &text, &st->seen_hash, &st->sig, err->msg, sizeof err->msg);
    if (r == 0) {
        r = sr_table_parse(&st->table, st->path, text, err->msg, sizeof err->msg);
        free(text);
    }
    if (r < 0) {
        err->key = routes->key; /* the host then also names where `routes` was set */
        static_fini(st);
        return r;
    }
    st->sig_racy = sig_is_racy(&st->sig);
    atomic_store(&st->last_check_ms, mono_ms());
    slog(st, DPH_LOG_INFO, "routes loaded from %s: %zu users, %zu backends", st->path,
         sr_table_nusers(st->table), sr_table_nbackends(st->table));
    *state = st;
    return 0;
}

static void static_fini(void *state)
{
    static_state *st = state;
    if (!st)
        return;
    sr_table_free(st->table);
    pthread_rwlock_destroy(&st->lock);
    pthread_mutex_destroy(&st->reload_mu);
    free(st);
}

static void copy_field(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src ? src : "");
}

static void fill_backend(dph_route *route, const sr_backend *b)
{
    copy_field(route->backend, sizeof route->backend, b->name);
    copy_field(route->address, sizeof route->address, b->address);
    copy_field(route->hostkey_sha256, sizeof route->hostkey_sha256, b->hostkey);
    route->ssh_port = b->ssh_port;
    route->ftp_port = b->ftp_port;
    if (b->maintenance) {
        route->status = DPH_ROUTE_MAINTENANCE;
        copy_field(route->message, sizeof route->message, b->message);
    }
}

static int static_lookup(void *state, const dph_lookup_req *req, dph_route *route)
{
    static_state *st = state;
    if (route->struct_size < sizeof *route)
        return -EINVAL; /* a host older than ABI 1.0's route: cannot happen for major 1 */
    maybe_reload(st);

    pthread_rwlock_rdlock(&st->lock);
    const sr_user *u = sr_table_find(st->table, req->user);
    const sr_backend *def = sr_table_default(st->table);
    route->status = DPH_ROUTE_OK;
    if (u && u->enabled) {
        copy_field(route->backend_user, sizeof route->backend_user, u->backend_user);
        copy_field(route->key_path, sizeof route->key_path, u->key_path);
        route->auth = u->auth;
        fill_backend(route, u->backend);
    } else if (!u && def) {
        route->auth = DPH_AUTH_PASSWORD; /* as themselves, password passthrough */
        fill_backend(route, def);
    } else {
        route->status = DPH_ROUTE_UNKNOWN_USER; /* not listed (no default), or disabled */
    }
    pthread_rwlock_unlock(&st->lock);
    return 0;
}

static int static_authorized_keys(void *state, const dph_lookup_req *req, dph_key_cb cb,
                                  void *cb_ctx)
{
    static_state *st = state;
    maybe_reload(st);

    /* The callback only copies (ABI contract), so holding the read lock across it is fine. */
    pthread_rwlock_rdlock(&st->lock);
    const sr_user *u = sr_table_find(st->table, req->user);
    if (u && u->enabled)
        for (size_t i = 0; i < u->nkeys; i++)
            if (cb(cb_ctx, u->keys[i]) != 0)
                break;
    pthread_rwlock_unlock(&st->lock);
    return 0;
}

static const dph_ops static_ops = {
    .abi_version = DPH_ABI_VERSION,
    .struct_size = sizeof(dph_ops),
    .name = "static",
    .description = "user -> backend from a libconfig routes file, reloaded when it changes",
    .init = static_init,
    .fini = static_fini,
    .lookup = static_lookup,
    .authorized_keys = static_authorized_keys,
    .reload = static_reload,
};

DPH_EXPORT const dph_ops *dynproxy_hook_entry(uint32_t host_abi_version)
{
    if (DPH_ABI_MAJOR_OF(host_abi_version) != DPH_ABI_MAJOR)
        return NULL;
    return &static_ops;
}
