/* dp_metrics.c - fixed-label counters and histograms in static atomics, their three
 * renderings, and the libmicrohttpd endpoint that serves the Prometheus one. */
#include "dp_metrics.h"

#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "dp_log.h"
#include "dp_util.h"

#ifndef DP_VERSION
#define DP_VERSION "unknown"
#endif

/* A scrape is one small GET: a few connections and a short deadline are plenty, and keep a
 * misbehaving client from holding the endpoint. */
#define HTTP_CONN_LIMIT 16
#define HTTP_PER_IP_LIMIT 8
#define HTTP_TIMEOUT_S 10
#define HTTP_BACKLOG 16
#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

#define N(a) (sizeof(a) / sizeof((a)[0]))

typedef _Atomic uint64_t counter;

static inline void inc(counter *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static inline uint64_t get(counter *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

/* ---- label values (the order of the enums in dp_metrics.h) ---- */

static const char *const sess_results[DP_SESS__COUNT] = {
    "ok", "auth_failed", "unavailable", "refused", "kicked", "timeout", "error"};
static const char *const auth_methods[DP_AUTHM__COUNT] = {"password", "publickey",
                                                          "keyboard-interactive"};
static const char *const auth_reasons[DP_AUTHR__COUNT] = {"wrong_password", "unknown_user",
                                                          "unlisted_key",   "bad_signature",
                                                          "method_refused", "backend_refused"};
static const char *const lookup_results[DP_LOOKUP__COUNT] = {"hit", "miss", "stale", "negative",
                                                             "error"};
static const char *const xfer_dirs[DP_XFER__DIRS] = {"download", "upload", "list"};
static const char *const xfer_results[DP_XFER__RESULTS] = {"ok", "aborted", "failed"};
static const char *const byte_dirs[2] = {"client_to_backend", "backend_to_client"};
/* the control socket's commands (docs/operations.md), then the catch-all */
static const char *const ctl_commands[] = {"help",        "status", "sessions", "kick",
                                           "pause",       "resume", "drain",    "reload",
                                           "cache_flush", "stats",  "other"};
#define CTL_NCMD N(ctl_commands)
static const int ctl_codes[] = {200, 400, 403, 404, 409, 422, 500};
#define CTL_NCODE (N(ctl_codes) + 1) /* + "other" */

/* ---- histograms: per-bucket (not cumulative) counts, cumulated when rendered ---- */

typedef struct hbucket {
    uint64_t le_ns;
    const char *le;
} hbucket;

/* Route lookups: a cache hit takes microseconds, a hook call (PostgreSQL) milliseconds, a
 * timed-out one hook.timeout_ms (2 s by default). */
static const hbucket lookup_buckets[] = {
    {500000ULL, "0.0005"},  {1000000ULL, "0.001"},  {2500000ULL, "0.0025"}, {5000000ULL, "0.005"},
    {10000000ULL, "0.01"},  {25000000ULL, "0.025"}, {50000000ULL, "0.05"},  {100000000ULL, "0.1"},
    {250000000ULL, "0.25"}, {500000000ULL, "0.5"},  {1000000000ULL, "1"},   {2500000000ULL, "2.5"},
    {5000000000ULL, "5"},
};
/* Backend connects: a LAN TCP + SSH handshake is a few ms; connect_timeout_ms is 5 s. */
static const hbucket connect_buckets[] = {
    {1000000ULL, "0.001"},  {2500000ULL, "0.0025"}, {5000000ULL, "0.005"},  {10000000ULL, "0.01"},
    {25000000ULL, "0.025"}, {50000000ULL, "0.05"},  {100000000ULL, "0.1"},  {250000000ULL, "0.25"},
    {500000000ULL, "0.5"},  {1000000000ULL, "1"},   {2500000000ULL, "2.5"}, {5000000000ULL, "5"},
    {10000000000ULL, "10"},
};
#define LOOKUP_NB N(lookup_buckets)
#define CONNECT_NB N(connect_buckets)

typedef struct histo {
    const hbucket *b;
    size_t nb;
    counter *counts; /* nb + 1 (the last is +Inf) */
    counter *sum_ns;
} histo;

/* ---- the registry ---- */

static struct {
    counter opened;
    counter sessions[DP_SESS__COUNT];
    counter auth[DP_AUTHM__COUNT][DP_AUTHR__COUNT];
    counter lookups[DP_LOOKUP__COUNT];
    counter lookup_b[LOOKUP_NB + 1], lookup_sum;
    counter connect_b[CONNECT_NB + 1], connect_sum;
    counter bytes[2];
    counter xfers[DP_XFER__DIRS][DP_XFER__RESULTS];
    counter ctl[CTL_NCMD][CTL_NCODE];
} m;

static const histo lookup_h = {lookup_buckets, LOOKUP_NB, m.lookup_b, &m.lookup_sum};
static const histo connect_h = {connect_buckets, CONNECT_NB, m.connect_b, &m.connect_sum};

static char daemon_name[64] = "dynproxy";
static _Atomic int64_t start_time_ms;

static void observe(const histo *h, uint64_t ns)
{
    size_t i = 0;
    while (i < h->nb && ns > h->b[i].le_ns)
        i++;
    inc(&h->counts[i], 1);
    inc(h->sum_ns, ns);
}

void dp_metrics_init(const char *daemon)
{
    snprintf(daemon_name, sizeof daemon_name, "%s", daemon != NULL ? daemon : "dynproxy");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    atomic_store(&start_time_ms, (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
}

void dp_metrics_session_opened(void)
{
    inc(&m.opened, 1);
}

void dp_metrics_session_closed(dp_sess_result r)
{
    if ((unsigned)r >= DP_SESS__COUNT)
        r = DP_SESS_ERROR;
    inc(&m.sessions[r], 1);
}

void dp_metrics_session_refused(void)
{
    /* counted as opened and closed at once: sessions_active stays opened - closed */
    inc(&m.opened, 1);
    inc(&m.sessions[DP_SESS_REFUSED], 1);
}

uint64_t dp_metrics_sessions_active(void)
{
    /* Closed first: a session closing between the two reads then makes the gauge one too
     * high for this read, never an underflow. */
    uint64_t closed = 0;
    for (size_t i = 0; i < DP_SESS__COUNT; i++)
        closed += get(&m.sessions[i]);
    uint64_t opened = get(&m.opened);
    return opened > closed ? opened - closed : 0;
}

void dp_metrics_auth_failure(dp_auth_method mt, dp_auth_reason r)
{
    if ((unsigned)mt < DP_AUTHM__COUNT && (unsigned)r < DP_AUTHR__COUNT)
        inc(&m.auth[mt][r], 1);
}

void dp_metrics_route_lookup(dp_lookup_result r, uint64_t ns)
{
    if ((unsigned)r >= DP_LOOKUP__COUNT)
        return;
    inc(&m.lookups[r], 1);
    observe(&lookup_h, ns);
}

void dp_metrics_backend_connect(uint64_t ns)
{
    observe(&connect_h, ns);
}

void dp_metrics_bytes(uint64_t client_to_backend, uint64_t backend_to_client)
{
    if (client_to_backend > 0)
        inc(&m.bytes[0], client_to_backend);
    if (backend_to_client > 0)
        inc(&m.bytes[1], backend_to_client);
}

void dp_metrics_ftp_transfer(dp_xfer_dir d, dp_xfer_result r)
{
    if ((unsigned)d < DP_XFER__DIRS && (unsigned)r < DP_XFER__RESULTS)
        inc(&m.xfers[d][r], 1);
}

/* "cache flush" (two words on the wire) is the label "cache_flush". */
static bool same_command(const char *given, const char *name)
{
    for (; *given != '\0' && *name != '\0'; given++, name++)
        if (*given != *name && !(*given == ' ' && *name == '_'))
            return false;
    return *given == *name;
}

void dp_metrics_ctl_command(const char *command, int code)
{
    size_t ci = CTL_NCMD - 1, ki = CTL_NCODE - 1;
    for (size_t i = 0; command != NULL && i + 1 < CTL_NCMD; i++) {
        if (same_command(command, ctl_commands[i])) {
            ci = i;
            break;
        }
    }
    for (size_t i = 0; i < N(ctl_codes); i++) {
        if (ctl_codes[i] == code) {
            ki = i;
            break;
        }
    }
    inc(&m.ctl[ci][ki], 1);
}

void dp_metrics_reset(void)
{
    counter *c = (counter *)&m;
    for (size_t i = 0; i < sizeof m / sizeof(counter); i++)
        atomic_store_explicit(&c[i], 0, memory_order_relaxed);
}

/* ---- rendering ---- */

typedef struct out {
    char *buf;
    size_t len, cap;
    bool oom;
    dp_metrics_format fmt;
    bool first; /* JSON: no comma before the first member */
} out;

static void put(out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(out *o, const char *fmt, ...)
{
    if (o->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->oom = true;
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = o->cap * 2;
        while (cap - o->len <= (size_t)n)
            cap *= 2;
        char *nb = realloc(o->buf, cap);
        if (nb == NULL) {
            o->oom = true;
            return;
        }
        o->buf = nb;
        o->cap = cap;
    }
}

/* A label value: Prometheus escapes \ " and newline (exposition format 0.0.4); the KV form
 * writes it as is (our values are plain words). */
static void put_value(out *o, const char *v)
{
    for (const char *p = v; *p != '\0'; p++) {
        if (o->fmt != DP_METRICS_KV && (*p == '\\' || *p == '"'))
            put(o, "\\%c", *p);
        else if (o->fmt != DP_METRICS_KV && *p == '\n')
            put(o, "\\n");
        else
            put(o, "%c", *p);
    }
}

/* The sample's key: name{k="v",...}. In JSON it is a string, so its quotes and backslashes
 * are escaped once more. */
static void put_key(out *o, const char *name, const char *suffix, const char *const *labels)
{
    bool json = o->fmt == DP_METRICS_JSON;
    put(o, "%s%s", name, suffix);
    if (labels == NULL || labels[0] == NULL)
        return;
    put(o, "{");
    for (size_t i = 0; labels[i] != NULL; i += 2) {
        put(o, "%s%s=%s", i ? "," : "", labels[i], json ? "\\\"" : "\"");
        if (json) {
            /* JSON string inside a JSON string: \" and \\ of the value, escaped again */
            for (const char *p = labels[i + 1]; *p != '\0'; p++) {
                if (*p == '\\' || *p == '"')
                    put(o, "\\\\\\%c", *p);
                else if ((unsigned char)*p < 0x20)
                    put(o, "\\u%04x", (unsigned)(unsigned char)*p);
                else
                    put(o, "%c", *p);
            }
        } else {
            put_value(o, labels[i + 1]);
        }
        put(o, "%s", json ? "\\\"" : "\"");
    }
    put(o, "}");
}

static void sample_begin(out *o, const char *name, const char *suffix, const char *const *labels)
{
    if (o->fmt == DP_METRICS_JSON) {
        put(o, "%s\"", o->first ? "" : ",");
        o->first = false;
        put_key(o, name, suffix, labels);
        put(o, "\":");
    } else {
        put_key(o, name, suffix, labels);
        put(o, "%s", o->fmt == DP_METRICS_KV ? "\t" : " ");
    }
}

static void sample_end(out *o)
{
    if (o->fmt != DP_METRICS_JSON)
        put(o, "\n");
}

static void sample_u64(out *o, const char *name, const char *suffix, const char *const *labels,
                       uint64_t v)
{
    sample_begin(o, name, suffix, labels);
    put(o, "%llu", (unsigned long long)v);
    sample_end(o);
}

static void head(out *o, const char *name, const char *type, const char *help)
{
    if (o->fmt == DP_METRICS_PROMETHEUS)
        put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void render_histo(out *o, const char *name, const histo *h)
{
    uint64_t cum = 0;
    for (size_t i = 0; i <= h->nb; i++) {
        cum += get(&h->counts[i]);
        const char *labels[] = {"le", i < h->nb ? h->b[i].le : "+Inf", NULL};
        sample_u64(o, name, "_bucket", labels, cum);
    }
    uint64_t sum = get(h->sum_ns);
    sample_begin(o, name, "_sum", NULL);
    /* seconds, exactly: integer part and nine decimals of the nanosecond sum */
    put(o, "%llu.%09llu", (unsigned long long)(sum / 1000000000ULL),
        (unsigned long long)(sum % 1000000000ULL));
    sample_end(o);
    sample_u64(o, name, "_count", NULL, cum);
}

static void render(out *o)
{
    const char *name;

    name = "dynproxy_build_info";
    head(o, name, "gauge", "The daemon and its version; always 1.");
    {
        const char *labels[] = {"daemon", daemon_name, "version", DP_VERSION, NULL};
        sample_u64(o, name, "", labels, 1);
    }

    name = "dynproxy_start_time_seconds";
    head(o, name, "gauge", "Start time of the process since the Unix epoch in seconds.");
    {
        int64_t ms = atomic_load(&start_time_ms);
        sample_begin(o, name, "", NULL);
        put(o, "%lld.%03lld", (long long)(ms / 1000), (long long)(ms % 1000));
        sample_end(o);
    }

    name = "dynproxy_sessions_active";
    head(o, name, "gauge", "Client connections open now (logged in or not).");
    sample_u64(o, name, "", NULL, dp_metrics_sessions_active());

    name = "dynproxy_sessions_total";
    head(o, name, "counter", "Client connections ended, by how they ended.");
    for (size_t i = 0; i < DP_SESS__COUNT; i++) {
        const char *labels[] = {"result", sess_results[i], NULL};
        sample_u64(o, name, "", labels, get(&m.sessions[i]));
    }

    name = "dynproxy_auth_failures_total";
    head(o, name, "counter", "Failed authentication attempts, by method and reason.");
    for (size_t i = 0; i < DP_AUTHM__COUNT; i++) {
        for (size_t j = 0; j < DP_AUTHR__COUNT; j++) {
            const char *labels[] = {"method", auth_methods[i], "reason", auth_reasons[j], NULL};
            sample_u64(o, name, "", labels, get(&m.auth[i][j]));
        }
    }

    name = "dynproxy_route_lookups_total";
    head(o, name, "counter", "Route lookups answered, by where the answer came from.");
    for (size_t i = 0; i < DP_LOOKUP__COUNT; i++) {
        const char *labels[] = {"result", lookup_results[i], NULL};
        sample_u64(o, name, "", labels, get(&m.lookups[i]));
    }

    name = "dynproxy_route_lookup_seconds";
    head(o, name, "histogram",
         "Time from a route lookup's start to its answer (cache or hook call).");
    render_histo(o, name, &lookup_h);

    name = "dynproxy_backend_connect_seconds";
    head(o, name, "histogram",
         "Successful backend connects: TCP connect until the SSH handshake is done and the "
         "host key checked (sshproxy) or the 220 greeting was read (ftpproxy).");
    render_histo(o, name, &connect_h);

    name = "dynproxy_bytes_total";
    head(o, name, "counter",
         "Bytes relayed by ended sessions (SSH: channel data; FTP: control and data).");
    for (size_t i = 0; i < 2; i++) {
        const char *labels[] = {"direction", byte_dirs[i], NULL};
        sample_u64(o, name, "", labels, get(&m.bytes[i]));
    }

    name = "dynproxy_ftp_transfers_total";
    head(o, name, "counter", "FTP data transfers, by direction and result.");
    for (size_t i = 0; i < DP_XFER__DIRS; i++) {
        for (size_t j = 0; j < DP_XFER__RESULTS; j++) {
            const char *labels[] = {"direction", xfer_dirs[i], "result", xfer_results[j], NULL};
            sample_u64(o, name, "", labels, get(&m.xfers[i][j]));
        }
    }

    name = "dynproxy_ctl_commands_total";
    head(o, name, "counter",
         "Control socket commands answered, by command and status code (only those seen).");
    for (size_t i = 0; i < CTL_NCMD; i++) {
        for (size_t j = 0; j < CTL_NCODE; j++) {
            uint64_t v = get(&m.ctl[i][j]);
            if (v == 0)
                continue;
            char code[8];
            if (j < N(ctl_codes))
                snprintf(code, sizeof code, "%d", ctl_codes[j]);
            else
                snprintf(code, sizeof code, "other");
            const char *labels[] = {"command", ctl_commands[i], "code", code, NULL};
            sample_u64(o, name, "", labels, v);
        }
    }
}

int dp_metrics_render(dp_metrics_format fmt, char **outp, size_t *lenp)
{
    if (fmt != DP_METRICS_PROMETHEUS && fmt != DP_METRICS_KV && fmt != DP_METRICS_JSON)
        return -EINVAL;
    out o = {.cap = 8192, .fmt = fmt, .first = true};
    o.buf = malloc(o.cap);
    if (o.buf == NULL)
        return -ENOMEM;
    o.buf[0] = '\0';
    if (fmt == DP_METRICS_KV)
        put(&o, "key\tvalue\n");
    else if (fmt == DP_METRICS_JSON)
        put(&o, "{");
    render(&o);
    if (fmt == DP_METRICS_JSON)
        put(&o, "}\n");
    if (o.oom) {
        free(o.buf);
        return -ENOMEM;
    }
    *outp = o.buf;
    if (lenp != NULL)
        *lenp = o.len;
    return 0;
}

/* ---- the HTTP endpoint ---- */

static struct MHD_Daemon *httpd;

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *text)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **state)
{
    (void)cls;
    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)state;
    if (strcmp(url, "/metrics") != 0)
        return reply(conn, MHD_HTTP_NOT_FOUND, "not found; try /metrics\n");
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");
    char *body;
    size_t len;
    if (dp_metrics_render(DP_METRICS_PROMETHEUS, &body, &len) != 0)
        return reply(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (r == NULL) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, CONTENT_TYPE);
    enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return rc;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    dp_log_warn("metrics endpoint: %s", msg);
}

int dp_metrics_http_start(const char *listen_hostport, char *err, size_t errlen)
{
    if (httpd != NULL) {
        snprintf(err, errlen, "the metrics endpoint runs already");
        return -EALREADY;
    }
    struct sockaddr_storage ss;
    socklen_t sl;
    if (listen_hostport == NULL || dp_parse_hostport(listen_hostport, &ss, &sl) != 0) {
        snprintf(err, errlen, "\"%s\" is not ip:port, [ipv6]:port or *:port",
                 listen_hostport != NULL ? listen_hostport : "");
        return -EINVAL;
    }
    /* Our own socket, so a bind failure says why (MHD would only say it failed); "*:port"
     * is [::] with V6ONLY off, both families, like the daemon's listeners. */
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "socket: %s", strerror(e));
        return -e;
    }
    int one = 1, v6only = strncmp(listen_hostport, "*:", 2) != 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if ((ss.ss_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only) != 0) ||
        bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, HTTP_BACKLOG) != 0) {
        int e = errno;
        snprintf(err, errlen, "listen %s: %s", listen_hostport, strerror(e));
        close(fd);
        return -e;
    }
    /* The logger goes first, or MHD warns that earlier options may log to stderr. */
    httpd = MHD_start_daemon(MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                             on_request, NULL, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                             MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd, MHD_OPTION_CONNECTION_LIMIT,
                             (unsigned)HTTP_CONN_LIMIT, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                             (unsigned)HTTP_PER_IP_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT,
                             (unsigned)HTTP_TIMEOUT_S, MHD_OPTION_END);
    if (httpd == NULL) {
        /* MHD closes a listen socket it was given when it fails (a second close here could
         * hit a worker's new socket of the same number); the daemon exits anyway. */
        snprintf(err, errlen, "listen %s: libmicrohttpd could not start", listen_hostport);
        return -EIO;
    }
    return 0;
}

void dp_metrics_http_stop(void)
{
    if (httpd == NULL)
        return;
    MHD_stop_daemon(httpd); /* joins its thread and closes the listening socket */
    httpd = NULL;
}
