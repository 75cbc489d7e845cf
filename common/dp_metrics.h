/*
 * dp_metrics.h - the process-wide metrics registry and its Prometheus endpoint.
 *
 * Every metric has a fixed label set (the enums below), so a sample is one slot in a static
 * array of _Atomic uint64_t: the counting functions never allocate, never block, never log,
 * and are safe from any thread (relaxed atomics: counters need no ordering between them).
 * Names, types and labels are the table of docs/operations.md ("Metrics").
 *
 * Rendering (dp_metrics_render) allocates; it serves GET /metrics on the endpoint's own
 * thread (libmicrohttpd, dp_metrics_http_start) and the control socket's `stats` command.
 */
#ifndef DP_METRICS_H
#define DP_METRICS_H

#include <stddef.h>
#include <stdint.h>

/* How a session ended (dynproxy_sessions_total{result}). */
typedef enum dp_sess_result {
    DP_SESS_OK,          /* logged in, ended by the client (or the backend) normally */
    DP_SESS_AUTH_FAILED, /* never logged in, and at least one authentication failed */
    DP_SESS_UNAVAILABLE, /* login refused for the backend's sake: maintenance, route lookup
                          * failed, backend unreachable or refusing the proxy */
    DP_SESS_REFUSED,     /* turned away at accept: a connection limit */
    DP_SESS_KICKED,      /* ended by kick, drain or a hook's !kick */
    DP_SESS_TIMEOUT,     /* login grace / login timeout, idle timeout */
    DP_SESS_ERROR,       /* anything else: protocol errors, lost connections, clients that
                          * left before trying to log in */
    DP_SESS__COUNT
} dp_sess_result;

/* dynproxy_auth_failures_total{method} */
typedef enum dp_auth_method {
    DP_AUTHM_PASSWORD,
    DP_AUTHM_PUBLICKEY,
    DP_AUTHM_KBDINT, /* "keyboard-interactive" */
    DP_AUTHM__COUNT
} dp_auth_method;

/* dynproxy_auth_failures_total{reason} */
typedef enum dp_auth_reason {
    DP_AUTHR_WRONG_PASSWORD,  /* the backend refused the password */
    DP_AUTHR_UNKNOWN_USER,    /* the route says no such user (or the backend refused USER) */
    DP_AUTHR_UNLISTED_KEY,    /* the key is not among the user's authorized keys */
    DP_AUTHR_BAD_SIGNATURE,   /* a listed key with a signature that does not verify */
    DP_AUTHR_METHOD_REFUSED,  /* a password for a route that logs in with a key */
    DP_AUTHR_BACKEND_REFUSED, /* the backend refused the proxy's own key */
    DP_AUTHR__COUNT
} dp_auth_reason;

/* dynproxy_route_lookups_total{result} */
typedef enum dp_lookup_result {
    DP_LOOKUP_HIT,      /* a fresh cached route */
    DP_LOOKUP_MISS,     /* answered by a hook call (this lookup's or one it joined) */
    DP_LOOKUP_STALE,    /* the hook failed; an expired route was served */
    DP_LOOKUP_NEGATIVE, /* a cached unknown-user answer */
    DP_LOOKUP_ERROR,    /* the hook failed or timed out and nothing was cached */
    DP_LOOKUP__COUNT
} dp_lookup_result;

/* dynproxy_ftp_transfers_total{direction} */
typedef enum dp_xfer_dir {
    DP_XFER_DOWNLOAD, /* RETR */
    DP_XFER_UPLOAD,   /* STOR, STOU, APPE */
    DP_XFER_LIST,     /* LIST, NLST, MLSD */
    DP_XFER__DIRS
} dp_xfer_dir;

/* dynproxy_ftp_transfers_total{result} */
typedef enum dp_xfer_result {
    DP_XFER_OK,      /* 2xx after every byte was relayed */
    DP_XFER_ABORTED, /* the client's ABOR, or the session ended during the transfer */
    DP_XFER_FAILED,  /* a data connection could not be set up, the relay or the backend failed */
    DP_XFER__RESULTS
} dp_xfer_result;

typedef enum dp_metrics_format {
    DP_METRICS_PROMETHEUS, /* text exposition format 0.0.4, # HELP and # TYPE lines */
    DP_METRICS_KV,         /* "key\tvalue" header, then one "name{labels}\tvalue" line each */
    DP_METRICS_JSON,       /* one object {"name{labels}": value, ...} and a newline */
} dp_metrics_format;

/* Name the daemon (build_info's label; copied) and set the start time. Call once, before any
 * thread counts. Counting before it is harmless (the counts are kept). */
void dp_metrics_init(const char *daemon);

/* A connection was accepted and becomes a session (sessions_active + 1). */
void dp_metrics_session_opened(void);
/* A session opened with dp_metrics_session_opened ended (sessions_active - 1). */
void dp_metrics_session_closed(dp_sess_result r);
/* A connection turned away at accept, never opened: sessions_total{result="refused"} + 1. */
void dp_metrics_session_refused(void);
uint64_t dp_metrics_sessions_active(void);

void dp_metrics_auth_failure(dp_auth_method m, dp_auth_reason r);

/* One route lookup answered after `ns` nanoseconds (uv_hrtime() differences). */
void dp_metrics_route_lookup(dp_lookup_result r, uint64_t ns);

/* One successful backend connect: TCP connect until the SSH handshake is done and the host
 * key checked (sshproxy), or until the 220 greeting was read (ftpproxy). */
void dp_metrics_backend_connect(uint64_t ns);

/* Bytes a session relayed (added at its end, or in steps). */
void dp_metrics_bytes(uint64_t client_to_backend, uint64_t backend_to_client);

void dp_metrics_ftp_transfer(dp_xfer_dir d, dp_xfer_result r);

/* One control command answered with `code`. `command` is the command word ("cache flush" and
 * "cache_flush" are one); names outside help status sessions kick pause resume drain reload
 * cache_flush stats count as "other", codes outside 200 400 403 404 409 422 500 as "other". */
void dp_metrics_ctl_command(const char *command, int code);

/* Render every metric. On success *out is a NUL-terminated malloc'd buffer (free() it) of
 * *len bytes (the NUL not counted). Returns 0, -EINVAL (unknown format) or -ENOMEM. */
int dp_metrics_render(dp_metrics_format fmt, char **out, size_t *len);

/* Zero every counter (tests). Not atomic as a whole: call with nothing else counting. */
void dp_metrics_reset(void);

/* Serve GET /metrics on "ip:port" / "[ipv6]:port" / "*:port" from one libmicrohttpd thread.
 * Returns 0, or a negative errno with a message in err (bad address, bind failure, ...).
 * -EALREADY when it runs already. */
int dp_metrics_http_start(const char *listen_hostport, char *err, size_t errlen);
/* Stop the endpoint and close its socket; no-op when it is not running. */
void dp_metrics_http_stop(void);

#endif
