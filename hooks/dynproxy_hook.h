/*
 * dynproxy_hook.h - the one public ABI between the dynproxy daemons (sshproxy, ftpproxy) and
 * routing hooks.
 *
 * A hook is a shared object that exports one symbol, DPH_ENTRY_SYMBOL, returning a pointer to a
 * static `dph_ops`. The host loads it with dlopen(RTLD_NOW | RTLD_LOCAL) and checks:
 *   - the major version in `ops->abi_version` equals DPH_ABI_MAJOR (else: refused),
 *   - `ops->struct_size` covers at least the fields of ABI 1.0 (else: refused).
 * Structs in this header only ever grow at the end; every struct that crosses the boundary
 * starts with its own size so both sides can tell which fields the other knows
 * (the OpenSSL-provider / Redis-module model).
 *
 * Threading: the host calls init/fini from its main thread, and lookup / authorized_keys /
 * session_* from threadpool threads, concurrently. A hook must be thread-safe for those and
 * must bound every wait it makes by `req->timeout_ms` (the host gives up on the call at that
 * deadline and answers the client "temporarily unavailable", but cannot interrupt the thread).
 *
 * Ownership: nothing is allocated across the boundary. Routes are written into the host's
 * buffer; keys are handed to a host callback one at a time and copied by the host.
 *
 * Secrets: a hook never receives a client password and must never log key material.
 */
#ifndef DYNPROXY_HOOK_H
#define DYNPROXY_HOOK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DPH_ABI_MAJOR 1u
#define DPH_ABI_MINOR 1u /* 1.1: dph_host.kick */
#define DPH_ABI_VERSION ((DPH_ABI_MAJOR << 16) | DPH_ABI_MINOR)
#define DPH_ABI_MAJOR_OF(v) ((uint32_t)(v) >> 16)

#define DPH_ENTRY_SYMBOL "dynproxy_hook_entry"

#if defined(__GNUC__)
#define DPH_EXPORT __attribute__((visibility("default")))
#else
#define DPH_EXPORT
#endif

/* Field capacities, including the terminating NUL. Longer values are refused by the hook. */
#define DPH_NAME_MAX 64
#define DPH_ADDR_MAX 256
#define DPH_USER_MAX 128
#define DPH_PATH_MAX 256
#define DPH_HOSTKEY_MAX 96
#define DPH_MESSAGE_MAX 256
#define DPH_ERROR_MAX 256

typedef enum dph_proto {
    DPH_PROTO_SSH = 1,
    DPH_PROTO_FTP = 2,
} dph_proto;

typedef enum dph_route_status {
    DPH_ROUTE_OK = 0,           /* route usable */
    DPH_ROUTE_UNKNOWN_USER = 1, /* no such user (or disabled): client sees a normal auth failure */
    DPH_ROUTE_MAINTENANCE = 2,  /* backend in maintenance: `message` is shown to the client */
    DPH_ROUTE_TEMPFAIL = 3,     /* lookup failed for now (database down, ...): retry later */
} dph_route_status;

typedef enum dph_auth {
    DPH_AUTH_PASSWORD = 1,   /* pass the client's password through to the backend */
    DPH_AUTH_PROXY_KEY = 2,  /* authenticate with the proxy's own key (key_path or the default) */
    DPH_AUTH_MAPPED_KEY = 3, /* authenticate with a per-user key at key_path */
} dph_auth;

typedef enum dph_log_level {
    DPH_LOG_ERROR = 0,
    DPH_LOG_WARN = 1,
    DPH_LOG_INFO = 2,
    DPH_LOG_DEBUG = 3,
} dph_log_level;

/* Where a user's session goes. The host zeroes it and sets struct_size before each lookup. */
typedef struct dph_route {
    uint32_t struct_size;
    dph_route_status status;
    char backend[DPH_NAME_MAX];           /* backend's name, for logs and proxyctl */
    char address[DPH_ADDR_MAX];           /* numeric IPv4/IPv6 address or host name */
    uint16_t ssh_port;                    /* 0 = 22 */
    uint16_t ftp_port;                    /* 0 = 21 */
    char backend_user[DPH_USER_MAX];      /* empty = same as the client's user name */
    dph_auth auth;                        /* 0 = DPH_AUTH_PASSWORD */
    char key_path[DPH_PATH_MAX];          /* private key file for PROXY_KEY / MAPPED_KEY */
    char hostkey_sha256[DPH_HOSTKEY_MAX]; /* "SHA256:<base64>" pin of the backend host key */
    char message[DPH_MESSAGE_MAX];        /* shown to the client for MAINTENANCE / TEMPFAIL */
} dph_route;

/* One lookup. All pointers are valid for the duration of the call only. */
typedef struct dph_lookup_req {
    uint32_t struct_size;
    const char *user;              /* the name the client logged in with, NUL-terminated */
    const struct sockaddr *client; /* the client's address (PROXY-protocol aware) */
    socklen_t client_len;
    const char *client_ip; /* the same address as text */
    dph_proto proto;
    int timeout_ms; /* the hook must answer within this */
} dph_lookup_req;

/* Session notifications (optional). Called after the fact; return values are ignored. */
typedef struct dph_session {
    uint32_t struct_size;
    const char *id;
    const char *user;
    const char *client_ip;
    const char *backend;
    dph_proto proto;
    int64_t started_unix_ms;
    uint64_t bytes_in;      /* client -> backend */
    uint64_t bytes_out;     /* backend -> client */
    const char *end_reason; /* NULL on start */
} dph_session;

/* Hook configuration: the scalar settings of the daemon's `hook.config` section, as text.
 * Terminated by an entry whose key is NULL. Booleans are "true"/"false". */
typedef struct dph_param {
    const char *key;
    const char *value;
} dph_param;

/* What init reports when it refuses its configuration. `key` is the offending param's key
 * (pointer into the params array) or NULL, so the host can name the file and line. */
typedef struct dph_error {
    const char *key;
    char msg[DPH_ERROR_MAX];
} dph_error;

/* Services the host offers to the hook. All functions are thread-safe and never block. */
typedef struct dph_host {
    uint32_t abi_version;
    uint32_t struct_size;
    void *ctx;
    /* printf-like; one logfmt line, tagged with the hook's name. Never pass secrets. */
    void (*log)(void *ctx, dph_log_level level, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
    /* Drop `user`'s cached route (e.g. on a database NOTIFY). */
    void (*invalidate)(void *ctx, const char *user);
    /* Drop every cached route (e.g. after missing notifications). */
    void (*invalidate_all)(void *ctx);
    /* ABI 1.1: end every session of `user` (e.g. after the account moved). Thread-safe, never
     * blocks (the daemon ends the sessions later, on its own loops). Check DPH_HOST_HAS first:
     * a 1.0 host has no such field. Does not drop the cached route: call invalidate too. */
    void (*kick)(void *ctx, const char *user);
} dph_host;

/* True when `host` (a const dph_host *) is new enough to have `field` and sets it: the way to
 * test for a function added after ABI 1.0, e.g. DPH_HOST_HAS(host, kick). */
#define DPH_HOST_HAS(host, field)                                                                  \
    ((host)->struct_size >= offsetof(dph_host, field) + sizeof((host)->field) &&                   \
     (host)->field != NULL)

/* Called once per authorized key of a user; `key` is one authorized_keys line
 * ("ssh-ed25519 AAAA... comment"). Return 0 to continue, non-zero to stop. */
typedef int (*dph_key_cb)(void *cb_ctx, const char *key);

typedef struct dph_ops {
    uint32_t abi_version; /* DPH_ABI_VERSION the hook was built against */
    uint32_t struct_size; /* sizeof(dph_ops) the hook was built against */
    const char *name;     /* short name for logs, e.g. "pgsql" */
    const char *description;

    /* Parse `params`, open what the hook needs, store its state in *state. The host pointer
     * stays valid until fini. Return 0, or a negative errno with `err` filled in. */
    int (*init)(void **state, const dph_host *host, const dph_param *params, dph_error *err);
    void (*fini)(void *state);

    /* Fill `route` (status included). Return 0 when `route->status` says what happened, or a
     * negative errno when the hook could not answer (treated as DPH_ROUTE_TEMPFAIL). */
    int (*lookup)(void *state, const dph_lookup_req *req, dph_route *route);

    /* Optional (NULL: public-key login is not offered). Emit each authorized key of `user`.
     * Return 0 (also for a user with no keys), or a negative errno on failure. */
    int (*authorized_keys)(void *state, const dph_lookup_req *req, dph_key_cb cb, void *cb_ctx);

    /* Optional notifications. */
    void (*session_start)(void *state, const dph_session *session);
    void (*session_end)(void *state, const dph_session *session);

    /* Optional: re-read external sources (files, remote tables) now. The host calls it from
     * its main thread on a reload (SIGHUP, proxyctl reload) that keeps this hook instance
     * because the hook's settings did not change. Return 0, or a negative errno after logging
     * why (the hook keeps serving what it had). */
    int (*reload)(void *state);
} dph_ops;

/* The smallest ops struct the host accepts for ABI major 1. */
#define DPH_OPS_MIN_SIZE_V1 (offsetof(dph_ops, authorized_keys))

/* The entry point every hook exports. `host_abi_version` lets a hook refuse an older host
 * by returning NULL. */
typedef const dph_ops *(*dph_entry_fn)(uint32_t host_abi_version);

#ifdef __cplusplus
}
#endif
#endif /* DYNPROXY_HOOK_H */
