/*
 * example_hook.c - the smallest complete dynproxy routing hook; copy it to start your own
 * (hooks/example/README.md shows how to build, configure and test it).
 *
 * It spreads users over N backends by a stable hash of the user name, so a user always lands
 * on the same backend while the list stays the same. Params (the daemon's hook.config):
 *   backends = "web1=127.0.0.1:2201:2101,web2=127.0.0.1:2202:2102"  (name=address:ssh:ftp)
 *   deny     = "root,admin"   optional: these users get UNKNOWN_USER
 *
 * What every hook must do is listed in README.md ("The rules"); the comments below point at
 * where this file does it.
 */
#define _POSIX_C_SOURCE 200809L /* strdup, strtok_r under -std=c11 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dynproxy_hook.h"

#define MAX_BACKENDS 32

typedef struct backend {
    char name[DPH_NAME_MAX];
    char address[DPH_ADDR_MAX];
    uint16_t ssh_port, ftp_port;
} backend;

typedef struct state {
    backend b[MAX_BACKENDS];
    size_t n;
    char deny[1024]; /* ",root,admin," : commas on both ends make the search exact */
} state;

/* Refuse a param: name it in err->key so the daemon can point at its file:line. */
static int bad(dph_error *err, const dph_param *p, const char *msg)
{
    err->key = p ? p->key : NULL;
    snprintf(err->msg, sizeof err->msg, "%s", msg);
    return -EINVAL;
}

/* "2201" -> 2201; 0 when it is not a port. */
static uint16_t port(const char *s)
{
    char *end;
    long v = strtol(s, &end, 10);
    return *s && !*end && v >= 1 && v <= 65535 ? (uint16_t)v : 0;
}

/* One "name=address:ssh:ftp" item. The ports are taken from the right, so an IPv6 address
 * ("::1") keeps its colons. Returns 0 or -1. */
static int parse_backend(char *item, backend *b)
{
    char *eq = strchr(item, '='), *ftp = strrchr(item, ':');
    if (!eq || !ftp || ftp < eq)
        return -1;
    *ftp++ = '\0';
    char *ssh = strrchr(eq, ':');
    if (!ssh)
        return -1;
    *eq = *ssh++ = '\0';
    const char *addr = eq + 1;
    /* Every string must fit its dph_route field (NUL included): refuse, never truncate. */
    if (!*item || strlen(item) >= sizeof b->name || !*addr || strlen(addr) >= sizeof b->address)
        return -1;
    strcpy(b->name, item);
    strcpy(b->address, addr);
    b->ssh_port = port(ssh);
    b->ftp_port = port(ftp);
    return b->ssh_port && b->ftp_port ? 0 : -1;
}

static int ex_init(void **out, const dph_host *host, const dph_param *params, dph_error *err)
{
    const dph_param *backends = NULL, *deny = NULL;
    for (const dph_param *p = params; p && p->key; p++) {
        if (strcmp(p->key, "backends") == 0)
            backends = p;
        else if (strcmp(p->key, "deny") == 0)
            deny = p;
        else
            return bad(err, p, "unknown parameter (known: backends, deny)");
    }
    if (!backends || !backends->value)
        return bad(err, NULL, "missing parameter backends (\"name=address:ssh:ftp,...\")");

    state *st = calloc(1, sizeof *st);
    char *list = strdup(backends->value), *save = NULL;
    const char *why = NULL;
    if (!st || !list) {
        free(st);
        free(list);
        return -ENOMEM;
    }
    for (char *item = strtok_r(list, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        if (st->n == MAX_BACKENDS || parse_backend(item, &st->b[st->n]) < 0) {
            why = "expected name=address:ssh_port:ftp_port,... (at most 32, ports 1..65535)";
            break;
        }
        st->n++;
    }
    free(list);
    if (!why && st->n == 0)
        why = "no backend given";
    if (why) {
        free(st);
        return bad(err, backends, why);
    }
    if (deny && snprintf(st->deny, sizeof st->deny, ",%s,", deny->value) >= (int)sizeof st->deny) {
        free(st);
        return bad(err, deny, "list too long");
    }
    host->log(host->ctx, DPH_LOG_INFO, "example hook ready with %zu backends", st->n);
    *out = st;
    return 0;
}

static void ex_fini(void *st)
{
    free(st); /* nothing else to release: no threads, no connections */
}

/* FNV-1a (32 bits): simple, fast and stable across versions and machines. */
static uint32_t fnv1a(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static int ex_lookup(void *opaque, const dph_lookup_req *req, dph_route *route)
{
    const state *st = opaque;
    char needle[DPH_USER_MAX + 2];
    /* Lookups run on many threads at once: `st` is read-only after init, so no lock. The host
     * zeroed `route` and set its struct_size: only write fields it has. Nothing here blocks,
     * so req->timeout_ms needs no care; a hook that does I/O bounds every wait by it. */
    if (route->struct_size < sizeof *route)
        return -EINVAL;
    /* Exact match of ",user," in ",root,admin,". A name with a comma can't be in the list. */
    int n = snprintf(needle, sizeof needle, ",%s,", req->user);
    if (n < (int)sizeof needle && !strchr(req->user, ',') && strstr(st->deny, needle)) {
        route->status = DPH_ROUTE_UNKNOWN_USER; /* the client sees an ordinary login failure */
        return 0;
    }
    const backend *b = &st->b[fnv1a(req->user) % st->n];
    route->status = DPH_ROUTE_OK;
    snprintf(route->backend, sizeof route->backend, "%s", b->name);
    snprintf(route->address, sizeof route->address, "%s", b->address);
    route->ssh_port = b->ssh_port;
    route->ftp_port = b->ftp_port;
    route->auth = DPH_AUTH_PASSWORD; /* backend_user left empty: same name as the client's */
    return 0;
}

static const dph_ops ex_ops = {
    .abi_version = DPH_ABI_VERSION,
    .struct_size = sizeof(dph_ops), /* lets the host know which fields we have */
    .name = "example",
    .description = "hash users over a fixed list of backends",
    .init = ex_init,
    .fini = ex_fini,
    .lookup = ex_lookup,
    .authorized_keys = NULL, /* optional op left out: no public-key logins */
};

/* The one exported symbol. Refuse a host of another major ABI version. */
DPH_EXPORT const dph_ops *dynproxy_hook_entry(uint32_t host_abi_version)
{
    return DPH_ABI_MAJOR_OF(host_abi_version) == DPH_ABI_MAJOR ? &ex_ops : NULL;
}
