/*
 * pgsql_hook.c - the PostgreSQL routing hook (pgsql.so): its dph_ops.
 *
 * lookup runs `lookup_query` (a prepared statement; $1 user, $2 client address, $3 'ssh'|'ftp')
 * and turns the first row into a dph_route, reading columns by name; authorized_keys runs
 * `keys_query` and hands over the first column of each row. Connections, deadlines and
 * reconnects are pgsql_pool.c's and pgsql_conn.c's business, NOTIFY is pgsql_listen.c's.
 * Reference: docs/hook-pgsql.md.
 */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgsql_int.h"

/* ---- helpers ---- */

static int64_t call_deadline(int timeout_ms)
{
    return pgh_now_ms() + (timeout_ms > 0 ? timeout_ms : PGH_DEFAULT_CALL_TIMEOUT_MS);
}

/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF). The session's client_encoding is
 * UTF8: a name that is not valid UTF-8 cannot match any row, and sending it would only earn an
 * "invalid byte sequence" error per attempt. */
static int valid_utf8(const unsigned char *s)
{
    while (*s != '\0') {
        unsigned c = *s++;
        int n;
        unsigned min;
        if (c < 0x80)
            continue;
        if (c >= 0xc2 && c <= 0xdf)
            n = 1, min = 0x80;
        else if (c >= 0xe0 && c <= 0xef)
            n = 2, min = 0x800;
        else if (c >= 0xf0 && c <= 0xf4)
            n = 3, min = 0x10000;
        else
            return 0;
        unsigned cp = c & (0x3fu >> n);
        for (int i = 0; i < n; i++) {
            if ((*s & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (*s++ & 0x3fu);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
    }
    return 1;
}

/* $2: the client address as text PostgreSQL's inet accepts, or NULL when unknown. */
static const char *client_ip(const dph_lookup_req *req, char *buf, size_t len)
{
    unsigned char tmp[sizeof(struct in6_addr)];
    if (req->client_ip != NULL && req->client_ip[0] != '\0' &&
        (inet_pton(AF_INET, req->client_ip, tmp) == 1 ||
         inet_pton(AF_INET6, req->client_ip, tmp) == 1))
        return req->client_ip;
    if (req->client != NULL && req->client->sa_family == AF_INET &&
        req->client_len >= (socklen_t)sizeof(struct sockaddr_in))
        return inet_ntop(AF_INET,
                         &((const struct sockaddr_in *)(const void *)req->client)->sin_addr, buf,
                         (socklen_t)len);
    if (req->client != NULL && req->client->sa_family == AF_INET6 &&
        req->client_len >= (socklen_t)sizeof(struct sockaddr_in6))
        return inet_ntop(AF_INET6,
                         &((const struct sockaddr_in6 *)(const void *)req->client)->sin6_addr, buf,
                         (socklen_t)len);
    return NULL;
}

/* Check the request and build the statement parameters. Returns 0, 1 (a user name no row can
 * match: answer "unknown user" without asking), or -EINVAL / -EPROTO. */
static int request_params(const dph_lookup_req *req, const char *vals[3], char *ipbuf, size_t iplen)
{
    if (req == NULL || req->struct_size < sizeof(dph_lookup_req))
        return -EPROTO;
    if (req->proto != DPH_PROTO_SSH && req->proto != DPH_PROTO_FTP)
        return -EINVAL;
    if (req->user == NULL || req->user[0] == '\0' || !valid_utf8((const unsigned char *)req->user))
        return 1;
    vals[0] = req->user;
    vals[1] = client_ip(req, ipbuf, iplen);
    vals[2] = req->proto == DPH_PROTO_FTP ? "ftp" : "ssh";
    return 0;
}

/* ---- result row -> dph_route ---- */

/* Value of column `name` in row 0, or NULL when the column is absent or the value is NULL. */
static const char *col(const PGresult *res, const char *name, int *len)
{
    int f = PQfnumber(res, name);
    if (f < 0 || PQgetisnull(res, 0, f))
        return NULL;
    if (len != NULL)
        *len = PQgetlength(res, 0, f);
    return PQgetvalue(res, 0, f);
}

/* Copy a text column into a fixed route field. A value that does not fit is an error, never
 * truncated: a cut address or host key pin would route to the wrong place or fail obscurely. */
static int copy_col(pgh *h, const char *user, const PGresult *res, const char *name, char *dst,
                    size_t cap)
{
    int len = 0;
    const char *v = col(res, name, &len);
    dst[0] = '\0';
    if (v == NULL)
        return 0;
    if ((size_t)len >= cap) {
        pgh_error(h,
                  "lookup user=%s: column %s is %d bytes, longer than the %zu the route holds; "
                  "answering temporary failure",
                  user, name, len, cap - 1);
        return -1;
    }
    memcpy(dst, v, (size_t)len + 1);
    return 0;
}

static int port_col(pgh *h, const char *user, const PGresult *res, const char *name, uint16_t *out)
{
    const char *v = col(res, name, NULL);
    *out = 0;
    if (v == NULL || v[0] == '\0')
        return 0;
    char *end;
    long p = strtol(v, &end, 10);
    if (*end != '\0' || p < 0 || p > 65535) {
        pgh_error(h,
                  "lookup user=%s: column %s is not a port number (\"%.16s\"); answering "
                  "temporary failure",
                  user, name, v);
        return -1;
    }
    *out = (uint16_t)p;
    return 0;
}

static int auth_col(pgh *h, const char *user, const PGresult *res, dph_auth *out)
{
    const char *v = col(res, "auth", NULL);
    *out = DPH_AUTH_PASSWORD;
    if (v == NULL || v[0] == '\0' || strcmp(v, "password") == 0)
        return 0;
    if (strcmp(v, "proxy-key") == 0) {
        *out = DPH_AUTH_PROXY_KEY;
        return 0;
    }
    if (strcmp(v, "mapped-key") == 0) {
        *out = DPH_AUTH_MAPPED_KEY;
        return 0;
    }
    pgh_error(h,
              "lookup user=%s: column auth is \"%.32s\", not password, proxy-key or mapped-key; "
              "answering temporary failure",
              user, v);
    return -1;
}

static int fill_route(pgh *h, const char *user, const PGresult *res, dph_route *out)
{
    dph_route r;
    memset(&r, 0, sizeof r);
    r.struct_size = out->struct_size;

    int rows = PQntuples(res);
    if (rows == 0) {
        r.status = DPH_ROUTE_UNKNOWN_USER;
        goto done;
    }
    if (rows > 1)
        pgh_debug(h, "lookup user=%s: %d rows, using the first", user, rows);

    const char *status = col(res, "status", NULL);
    if (status == NULL) {
        pgh_error(h, "lookup user=%s: status is NULL; answering temporary failure", user);
        goto tempfail;
    }
    if (copy_col(h, user, res, "backend", r.backend, sizeof r.backend) != 0 ||
        copy_col(h, user, res, "address", r.address, sizeof r.address) != 0 ||
        copy_col(h, user, res, "backend_user", r.backend_user, sizeof r.backend_user) != 0 ||
        copy_col(h, user, res, "key_path", r.key_path, sizeof r.key_path) != 0 ||
        copy_col(h, user, res, "hostkey", r.hostkey_sha256, sizeof r.hostkey_sha256) != 0 ||
        copy_col(h, user, res, "message", r.message, sizeof r.message) != 0 ||
        port_col(h, user, res, "ssh_port", &r.ssh_port) != 0 ||
        port_col(h, user, res, "ftp_port", &r.ftp_port) != 0 ||
        auth_col(h, user, res, &r.auth) != 0)
        goto tempfail;
    if (r.hostkey_sha256[0] != '\0' && strncmp(r.hostkey_sha256, "SHA256:", 7) != 0) {
        pgh_error(h,
                  "lookup user=%s: column hostkey is not a \"SHA256:<base64>\" pin; answering "
                  "temporary failure",
                  user);
        goto tempfail;
    }

    if (strcmp(status, "ok") == 0) {
        if (r.address[0] == '\0') {
            pgh_error(h,
                      "lookup user=%s: status ok but address is empty; answering temporary "
                      "failure",
                      user);
            goto tempfail;
        }
        r.status = DPH_ROUTE_OK;
        r.message[0] = '\0';
    } else if (strcmp(status, "maintenance") == 0) {
        r.status = DPH_ROUTE_MAINTENANCE;
    } else {
        pgh_warn(h,
                 "lookup user=%s: status \"%.32s\" is neither ok nor maintenance; answering "
                 "temporary failure",
                 user, status);
        r.status = DPH_ROUTE_TEMPFAIL; /* keeps the row's message for the client */
    }
    goto done;

tempfail:
    memset(&r, 0, sizeof r);
    r.struct_size = out->struct_size;
    r.status = DPH_ROUTE_TEMPFAIL;
done:
    *out = r;
    return 0;
}

/* ---- ops ---- */

static int pgsql_lookup(void *state, const dph_lookup_req *req, dph_route *route)
{
    pgh *h = state;
    int64_t deadline = call_deadline(req != NULL ? req->timeout_ms : 0);
    const char *vals[3];
    char ip[INET6_ADDRSTRLEN];

    if (route == NULL || route->struct_size < sizeof(dph_route))
        return -EPROTO;
    int rc = request_params(req, vals, ip, sizeof ip);
    if (rc < 0)
        return rc;
    if (rc == 1) {
        route->status = DPH_ROUTE_UNKNOWN_USER;
        return 0;
    }
    PGresult *res;
    rc = pgh_pool_run(h, PGH_LOOKUP, vals, deadline, req->user, &res);
    if (rc != 0)
        return rc;
    fill_route(h, req->user, res, route);
    PQclear(res);
    return 0;
}

static int pgsql_authorized_keys(void *state, const dph_lookup_req *req, dph_key_cb cb,
                                 void *cb_ctx)
{
    pgh *h = state;
    int64_t deadline = call_deadline(req != NULL ? req->timeout_ms : 0);
    const char *vals[3];
    char ip[INET6_ADDRSTRLEN];

    if (h->conf.keys_query[0] == '\0')
        return -ENOTSUP;
    int rc = request_params(req, vals, ip, sizeof ip);
    if (rc < 0)
        return rc;
    if (rc == 1)
        return 0; /* no such user: no keys */
    PGresult *res;
    rc = pgh_pool_run(h, PGH_KEYS, vals, deadline, req->user, &res);
    if (rc != 0)
        return rc;
    int rows = PQntuples(res);
    for (int i = 0; i < rows; i++) {
        if (PQgetisnull(res, i, 0))
            continue;
        const char *key = PQgetvalue(res, i, 0);
        if (key[0] == '\0')
            continue;
        if (strpbrk(key, "\r\n") != NULL) {
            /* One key per line is the contract; never log the key itself. */
            pgh_warn(h, "authorized_keys user=%s: row %d holds a line break; skipped", req->user,
                     i + 1);
            continue;
        }
        if (cb(cb_ctx, key) != 0)
            break;
    }
    PQclear(res);
    return 0;
}

static void pgsql_fini(void *state)
{
    pgh *h = state;
    if (h == NULL)
        return;
    pgh_listen_stop(h);
    pgh_pool_destroy(h);
    pgh_conf_free(&h->conf);
    free(h);
}

/*
 * Keep libpq, and the libraries it pulled in, mapped until the process exits, although the host
 * dlclose()s this hook when a reload replaces it. libpq (gssencmode=prefer, the default) asks
 * GSSAPI for credentials on every dial; without a Kerberos ticket gss_acquire_cred fails and
 * libgssapi_krb5 keeps its error text ("No Kerberos credentials available (default cache:
 * ...)") in a libkrb5support thread-specific block of the dialing thread: the daemon's main
 * thread (init's warm-up dial) or a libuv threadpool thread (lookups), all of which outlive the
 * hook. Unloading libkrb5support deletes its pthread key but frees no live thread's block; when
 * the hook is loaded again, the new key reuses the slot, glibc drops the stale pointer, and the
 * block (48 bytes, plus the message it holds) is lost: one per dialing thread per reload,
 * reported by LeakSanitizer as allocated from "<unknown module>". Nothing in fini can free
 * another thread's block, so its owner has to stay loaded: with libpq pinned, its dependencies
 * stay too (the loader keeps what a resident object needs), the key survives and a reloaded
 * hook finds its blocks again. (OpenSSL, also under libpq, pins itself for the same kind of
 * reason.) This .so itself is still unloaded. Failing to pin only costs that leak: not fatal.
 */
static void pin_libpq(pgh *h)
{
    int (*fn)(void) = PQlibVersion;
    void *addr;
    Dl_info info;
    memcpy(&addr, &fn, sizeof addr); /* function pointer -> object pointer for dladdr */
    if (dladdr(addr, &info) == 0 || info.dli_fname == NULL) {
        pgh_debug(h, "cannot find libpq's file name; it will be unloaded with the hook");
        return;
    }
    /* NOLOAD: only flag the copy already mapped. The handle is never closed on purpose. */
    if (dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE) == NULL)
        pgh_debug(h, "cannot pin %s: %s; it will be unloaded with the hook", info.dli_fname,
                  dlerror());
}

/* err->key must point into `params`: find the entry named `key` (NULL if it was not given). */
static const char *param_key(const dph_param *params, const char *key)
{
    for (const dph_param *p = params; p != NULL && p->key != NULL; p++) {
        if (strcmp(p->key, key) == 0)
            return p->key;
    }
    return NULL;
}

static int pgsql_init(void **state, const dph_host *host, const dph_param *params, dph_error *err)
{
    *state = NULL;
    if (host == NULL ||
        host->struct_size < offsetof(dph_host, invalidate_all) + sizeof(host->invalidate_all) ||
        host->invalidate == NULL || host->invalidate_all == NULL) {
        snprintf(err->msg, sizeof err->msg, "the host does not offer cache invalidation");
        return -EPROTO;
    }
    if (!PQisthreadsafe()) {
        snprintf(err->msg, sizeof err->msg, "libpq was built without thread safety");
        return -ENOTSUP;
    }

    pgh *h = calloc(1, sizeof *h);
    if (h == NULL) {
        snprintf(err->msg, sizeof err->msg, "out of memory");
        return -ENOMEM;
    }
    h->host = host;
    h->listener.wake_fd = -1;
    pin_libpq(h); /* before the first dial (the warm-up below) */
    int rc = pgh_conf_parse(&h->conf, params, err);
    if (rc != 0) {
        free(h);
        return rc;
    }
    /* Shows up in pg_stat_activity unless the conninfo sets application_name itself. */
    snprintf(h->app_name, sizeof h->app_name, "dynproxy-%s", program_invocation_short_name);

    rc = pgh_pool_init(h);
    if (rc != 0) {
        snprintf(err->msg, sizeof err->msg, "out of memory");
        pgh_conf_free(&h->conf);
        free(h);
        return rc;
    }

    /* One connection now: a query the server refuses is a configuration error worth failing
     * the start (or `-t`) for; an unreachable server is not (the cache and retries cope). */
    const char *bad_key = NULL;
    char why[DPH_ERROR_MAX];
    rc = pgh_pool_warmup(h, pgh_now_ms() + h->conf.connect_timeout_ms, why, sizeof why, &bad_key);
    if (rc != 0) {
        const char *k = bad_key != NULL ? param_key(params, bad_key) : NULL;
        err->key = k;
        /* "lookup_query was refused..." -> drop the key name when err->key names it already. */
        const char *msg = why;
        if (k != NULL && strncmp(why, k, strlen(k)) == 0 && why[strlen(k)] == ' ')
            msg = why + strlen(k) + 1;
        /* A long reason may lose its tail here; the full text was logged by the pool. */
        if (snprintf(err->msg, sizeof err->msg, "%s%s", msg,
                     k == NULL && bad_key != NULL ? " (is deploy/sql/schema.sql loaded?)" : "") >=
            (int)sizeof err->msg)
            err->msg[sizeof err->msg - 2] = '.';
        pgsql_fini(h);
        return -EINVAL;
    }

    rc = pgh_listen_start(h);
    if (rc != 0) {
        snprintf(err->msg, sizeof err->msg, "cannot start the LISTEN thread: %s", strerror(-rc));
        pgsql_fini(h);
        return rc;
    }
    pgh_info(h, "PostgreSQL %s, pool_size=%d, notify_channel=%s%s", h->conf.summary,
             h->conf.pool_size,
             h->conf.notify_channel[0] != '\0' ? h->conf.notify_channel : "(none)",
             h->conf.listen_conninfo != NULL ? " (own listen_conninfo)" : "");
    *state = h;
    return 0;
}

static const dph_ops pgsql_ops = {
    .abi_version = DPH_ABI_VERSION,
    .struct_size = sizeof(dph_ops),
    .name = "pgsql",
    .description = "routes from PostgreSQL (prepared queries, pool, LISTEN/NOTIFY invalidation)",
    .init = pgsql_init,
    .fini = pgsql_fini,
    .lookup = pgsql_lookup,
    .authorized_keys = pgsql_authorized_keys,
    .session_start = NULL,
    .session_end = NULL,
};

DPH_EXPORT const dph_ops *dynproxy_hook_entry(uint32_t host_abi_version);

DPH_EXPORT const dph_ops *dynproxy_hook_entry(uint32_t host_abi_version)
{
    if (DPH_ABI_MAJOR_OF(host_abi_version) != DPH_ABI_MAJOR)
        return NULL;
    return &pgsql_ops;
}
