/*
 * e2e_routed.c - a probe daemon for the foundation's end-to-end tests. It runs the real
 * dp_daemon skeleton (config, -t, hook, workers, PROXY protocol, route cache, signals) and
 * speaks a tiny line protocol so a test can see what the daemon sees:
 *   WHOAMI              -> "CLIENT <ip:port> WORKER <n> PROXIED <0|1>"
 *   LOOKUP <ssh|ftp> U  -> "ROUTE <status> <backend> <address> <ssh_port> <ftp_port> <how>"
 *   QUIT                -> closes
 * Anything else -> "ERR unknown command". Lines over 512 bytes -> "ERR line too long", close.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dp_daemon.h"
#include "dp_log.h"
#include "dp_util.h"

#define LINE_MAX_LEN 512

typedef struct probe_conf {
    dp_daemon_conf common;
    char *greeting;
} probe_conf;

static const dp_conf_entry probe_entries[] = {
    DP_CONF_STRING_KEY("probe.greeting", offsetof(probe_conf, greeting), "probe ready", 0, 100,
                       DP_CONF_RELOADABLE, "first line sent to clients"),
};
static const dp_conf_table probe_table = {probe_entries, 1};

typedef struct conn {
    uv_tcp_t tcp;
    dp_worker *w;
    dp_conn_info ci;
    char buf[LINE_MAX_LEN + 1];
    size_t have;
    dp_route_lookup lk;
    bool lookup_pending, closing;
    struct conn *prev, *next;
} conn;

typedef struct wdata {
    conn *conns;
} wdata;

static void conn_closed(uv_handle_t *h)
{
    free(h->data);
}

static void conn_close(conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->lookup_pending)
        dp_route_cache_cancel(&c->lk);
    wdata *wd = dp_daemon_worker_data(c->w);
    if (c->prev)
        c->prev->next = c->next;
    else
        wd->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

static void write_done(uv_write_t *req, int status)
{
    (void)status;
    free(req);
}

static void reply(conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply(conn *c, const char *fmt, ...)
{
    uv_write_t *req = malloc(sizeof *req + 1024);
    if (req == NULL)
        return;
    char *text = (char *)(req + 1);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, 1022, fmt, ap);
    va_end(ap);
    if (n < 0 || n > 1021)
        n = 1021;
    text[n++] = '\n';
    uv_buf_t b = uv_buf_init(text, (unsigned)n);
    if (uv_write(req, (uv_stream_t *)&c->tcp, &b, 1, write_done) != 0)
        free(req);
}

static const char *how_name(dp_cache_result how)
{
    static const char *const names[] = {"hit", "miss", "coalesced", "stale", "failed"};
    return names[how];
}

static const char *status_name(dph_route_status s)
{
    static const char *const names[] = {"ok", "unknown", "maintenance", "tempfail"};
    return (unsigned)s < 4 ? names[s] : "?";
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b);
static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b);
static void process_buffer(conn *c);

static void on_route(dp_route_lookup *lk, const dph_route *r, dp_cache_result how)
{
    conn *c = lk->data;
    c->lookup_pending = false;
    reply(c, "ROUTE %s %s %s %u %u %s", status_name(r->status), r->backend[0] ? r->backend : "-",
          r->address[0] ? r->address : "-", r->ssh_port, r->ftp_port, how_name(how));
    process_buffer(c);
}

static void handle_line(conn *c, char *line)
{
    char addr[80];
    if (strcmp(line, "WHOAMI") == 0) {
        reply(c, "CLIENT %s WORKER %d PROXIED %d",
              dp_sockaddr_format((struct sockaddr *)&c->ci.peer, addr, sizeof addr),
              dp_worker_index(c->w), c->ci.proxied);
    } else if (strncmp(line, "LOOKUP ", 7) == 0) {
        char proto[8], user[200];
        if (sscanf(line + 7, "%7s %199s", proto, user) != 2) {
            reply(c, "ERR usage: LOOKUP ssh|ftp USER");
            return;
        }
        c->lk.data = c;
        int rc = dp_route_cache_lookup(
            dp_daemon_worker_cache(c->w), &c->lk, user, (struct sockaddr *)&c->ci.peer,
            strcmp(proto, "ftp") == 0 ? DPH_PROTO_FTP : DPH_PROTO_SSH, on_route);
        if (rc != 0)
            reply(c, "ERR lookup: %s", strerror(-rc));
        else
            c->lookup_pending = true;
    } else if (strcmp(line, "QUIT") == 0) {
        conn_close(c);
    } else {
        reply(c, "ERR unknown command");
    }
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    conn *c = h->data;
    (void)suggested;
    *b = uv_buf_init(c->buf + c->have, (unsigned)(LINE_MAX_LEN - c->have));
}

/* Handle complete lines; stop at a pending lookup so answers keep the order of questions
 * (reading is paused meanwhile: the client's pipelined lines wait in the kernel). */
static void process_buffer(conn *c)
{
    char *start = c->buf, *nl;
    while (!c->closing && !c->lookup_pending &&
           (nl = memchr(start, '\n', c->have - (size_t)(start - c->buf))) != NULL) {
        *nl = '\0';
        if (nl > start && nl[-1] == '\r')
            nl[-1] = '\0';
        handle_line(c, start);
        start = nl + 1;
    }
    if (c->closing)
        return;
    c->have -= (size_t)(start - c->buf);
    memmove(c->buf, start, c->have);
    if (c->have == LINE_MAX_LEN) {
        reply(c, "ERR line too long");
        conn_close(c);
    } else if (c->lookup_pending) {
        uv_read_stop((uv_stream_t *)&c->tcp);
    } else {
        uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
    }
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    conn *c = s->data;
    (void)b;
    if (n < 0) {
        conn_close(c);
        return;
    }
    c->have += (size_t)n;
    process_buffer(c);
}

static int probe_start(dp_worker *w)
{
    wdata *wd = calloc(1, sizeof *wd);
    if (wd == NULL)
        return -ENOMEM;
    dp_daemon_worker_set_data(w, wd);
    return 0;
}

static void probe_accept(dp_worker *w, const dp_conn_info *ci)
{
    conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        close(ci->fd);
        return;
    }
    c->w = w;
    c->ci = *ci;
    uv_tcp_init(dp_worker_loop(w), &c->tcp);
    c->tcp.data = c;
    if (uv_tcp_open(&c->tcp, ci->fd) != 0) {
        close(ci->fd);
        uv_close((uv_handle_t *)&c->tcp, conn_closed);
        return;
    }
    wdata *wd = dp_daemon_worker_data(w);
    c->next = wd->conns;
    if (wd->conns)
        wd->conns->prev = c;
    wd->conns = c;
    const probe_conf *pc = dp_daemon_worker_conf(w);
    reply(c, "%s", pc->greeting);
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
}

static void probe_stop(dp_worker *w)
{
    wdata *wd = dp_daemon_worker_data(w);
    while (wd != NULL && wd->conns != NULL)
        conn_close(wd->conns);
}

static void probe_fini(dp_worker *w)
{
    free(dp_daemon_worker_data(w));
}

static const dp_worker_ops probe_ops = {probe_start, probe_accept, probe_stop, probe_fini};

static const dp_daemon_def probe_def = {
    .name = "e2e_routed",
    .default_config = "/etc/dynproxy/e2e_routed.conf",
    .table = &probe_table,
    .conf_size = sizeof(probe_conf),
    .ops = &probe_ops,
};

int main(int argc, char **argv)
{
    return dp_daemon_main(&probe_def, argc, argv);
}
