/* dp_ctl.c - control socket server: accept, peer check, line framing, dispatch, replies. */
#include "dp_ctl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "dp_log.h"

/* A closing client's unread replies get this long to leave; then the connection is cut
 * (a peer that never reads must not keep a slot, or the process, alive). */
#define CLOSE_FLUSH_MS 2000

typedef struct ctl_client ctl_client;

struct dp_ctl {
    uv_loop_t *loop;
    dp_ctl_opts o;
    char *path;
    uv_pipe_t listener;
    bool listener_open, closing;
    ctl_client *clients;
    int nclients;
};

struct ctl_client {
    dp_ctl *ctl;
    uv_pipe_t pipe;
    uv_timer_t timer;
    int open_handles;
    bool closing, reading, discarding, in_process;
    bool eof; /* the peer shut its side: answer what is buffered, then close */
    uid_t uid;
    pid_t pid;
    dp_ctl_call *pending; /* at most one request at a time: replies stay in order */
    int writes;           /* uv_write requests in flight */
    char in[DP_CTL_LINE_MAX + 1];
    size_t len;
    ctl_client *prev, *next;
};

struct dp_ctl_call {
    ctl_client *client; /* NULL once the client is gone */
    const char *command;
    bool json;
};

typedef struct ctl_write {
    uv_write_t req;
    ctl_client *client;
    char *data;
} ctl_write;

static void client_read_start(ctl_client *c);
static void client_process(ctl_client *c);

/* ---- client lifetime ---- */

static void client_free_if_done(ctl_client *c)
{
    if (c->open_handles > 0 || c->writes > 0 || c->pending != NULL)
        return;
    dp_ctl *ctl = c->ctl;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        ctl->clients = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    ctl->nclients--;
    free(c);
    if (ctl->closing && !ctl->listener_open && ctl->clients == NULL) {
        free(ctl->path);
        free(ctl);
    }
}

static void client_handle_closed(uv_handle_t *h)
{
    ctl_client *c = h->data;
    c->open_handles--;
    client_free_if_done(c);
}

static void client_close_now(ctl_client *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->pipe))
        uv_close((uv_handle_t *)&c->pipe, client_handle_closed);
    if (!uv_is_closing((uv_handle_t *)&c->timer))
        uv_close((uv_handle_t *)&c->timer, client_handle_closed);
}

static void close_deadline_cb(uv_timer_t *t)
{
    client_close_now(t->data);
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
    ctl_client *c = req->data;
    (void)status;
    free(req);
    client_close_now(c);
}

/* Close once what was written has left (uv_close alone would cancel pending writes). */
static void client_close(ctl_client *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->pending != NULL) {
        c->pending->client = NULL;
        c->pending = NULL;
    }
    uv_read_stop((uv_stream_t *)&c->pipe);
    uv_timer_start(&c->timer, close_deadline_cb, CLOSE_FLUSH_MS, 0);
    uv_shutdown_t *req = malloc(sizeof *req);
    if (req != NULL) {
        req->data = c;
        if (uv_shutdown(req, (uv_stream_t *)&c->pipe, shutdown_cb) == 0)
            return;
        free(req);
    }
    client_close_now(c);
}

/* ---- writing ---- */

static void write_cb(uv_write_t *req, int status)
{
    ctl_write *w = (ctl_write *)req;
    ctl_client *c = w->client;
    c->writes--;
    free(w->data);
    free(w);
    if (status < 0 && !c->closing) {
        dp_log_debug("control client pid=%ld: write: %s", (long)c->pid, uv_strerror(status));
        client_close(c);
    }
    if (!c->closing && c->writes == 0)
        client_process(c); /* requests read while this reply was on its way */
    client_free_if_done(c);
}

/* Takes ownership of buf->data. */
static void client_send(ctl_client *c, dp_ctl_buf *buf)
{
    if (buf->failed || buf->data == NULL) {
        dp_ctl_buf_free(buf);
        dp_log_error("control client pid=%ld: out of memory building a reply", (long)c->pid);
        client_close(c);
        return;
    }
    ctl_write *w = malloc(sizeof *w);
    if (w == NULL) {
        dp_ctl_buf_free(buf);
        client_close(c);
        return;
    }
    w->client = c;
    w->data = buf->data;
    uv_buf_t b = uv_buf_init(buf->data, (unsigned)buf->len);
    *buf = (dp_ctl_buf){0};
    int rc = uv_write(&w->req, (uv_stream_t *)&c->pipe, &b, 1, write_cb);
    if (rc < 0) {
        free(w->data);
        free(w);
        client_close(c);
        return;
    }
    c->writes++;
}

static void send_reply(ctl_client *c, int code, const char *text, const char *body, size_t len)
{
    dp_ctl_buf out = {0};
    dp_ctl_format_reply(&out, code, text, body, len);
    client_send(c, &out);
}

/* ---- requests ---- */

static void timeout_cb(uv_timer_t *t)
{
    ctl_client *c = t->data;
    dp_log_info("control client pid=%ld uid=%ld: idle for %d ms, closing", (long)c->pid,
                (long)c->uid, c->ctl->o.timeout_ms);
    client_close(c);
}

static void arm_timer(ctl_client *c)
{
    if (!c->closing && c->ctl->o.timeout_ms > 0)
        uv_timer_start(&c->timer, timeout_cb, (uint64_t)c->ctl->o.timeout_ms, 0);
}

void dp_ctl_reply(dp_ctl_call *call, int code, const char *text, const char *body, size_t len)
{
    ctl_client *c = call->client;
    const char *command = call->command;
    dp_ctl *ctl = c != NULL ? c->ctl : NULL;
    if (c != NULL && ctl->o.on_reply != NULL)
        ctl->o.on_reply(command, code);
    free(call);
    if (c == NULL)
        return; /* the client left (or the server closed) before the answer */
    c->pending = NULL;
    dp_log_event(code < 400 ? DP_LOG_INFO : DP_LOG_WARN, NULL, "ctl",
                 "command=\"%s\" uid=%ld pid=%ld code=%d", command, (long)c->uid, (long)c->pid,
                 code);
    send_reply(c, code, text, body, len);
    if (c->closing) {
        client_free_if_done(c);
        return;
    }
    arm_timer(c);
    client_process(c); /* lines that arrived while this call was pending */
}

bool dp_ctl_call_json(const dp_ctl_call *call)
{
    return call->json;
}

uid_t dp_ctl_call_uid(const dp_ctl_call *call)
{
    return call->client != NULL ? call->client->uid : (uid_t)-1;
}

static void help_reply(ctl_client *c, const dp_ctl_request *req)
{
    const dp_ctl_opts *o = &c->ctl->o;
    dp_ctl_buf b = {0};
    if (req->json) {
        dp_ctl_buf_puts(&b, "{\"commands\":[");
        for (size_t i = 0; i < o->ncommands; i++) {
            dp_ctl_buf_puts(&b, i ? ",{\"command\":" : "{\"command\":");
            dp_ctl_buf_json_str(&b, o->commands[i].spec->name);
            dp_ctl_buf_puts(&b, ",\"usage\":");
            dp_ctl_buf_json_str(&b, o->commands[i].spec->args);
            dp_ctl_buf_puts(&b, ",\"help\":");
            dp_ctl_buf_json_str(&b, o->commands[i].spec->summary);
            dp_ctl_buf_puts(&b, "}");
        }
        dp_ctl_buf_puts(&b, "]}\n");
    } else {
        dp_ctl_buf_puts(&b, "command\tusage\thelp\n");
        for (size_t i = 0; i < o->ncommands; i++) {
            dp_ctl_buf_cell(&b, o->commands[i].spec->name);
            dp_ctl_buf_puts(&b, "\t");
            dp_ctl_buf_cell(&b, o->commands[i].spec->args);
            dp_ctl_buf_puts(&b, "\t");
            dp_ctl_buf_cell(&b, o->commands[i].spec->summary);
            dp_ctl_buf_puts(&b, "\n");
        }
    }
    if (o->on_reply != NULL)
        o->on_reply("help", b.failed ? 500 : 200);
    send_reply(c, b.failed ? 500 : 200, b.failed ? "out of memory" : "commands", b.data,
               b.failed ? 0 : b.len);
    dp_ctl_buf_free(&b);
}

/* 400 with `why`, and the command's usage when the command is known. */
static void bad_request(ctl_client *c, const char *command, const char *why,
                        const dp_ctl_command *cmd)
{
    char text[512];
    if (cmd != NULL)
        snprintf(text, sizeof text, "%s; usage: %s%s%s", why, cmd->spec->name,
                 cmd->spec->args[0] ? " " : "", cmd->spec->args);
    else
        snprintf(text, sizeof text, "%s", why);
    dp_log_event(DP_LOG_WARN, NULL, "ctl", "command=\"%s\" uid=%ld pid=%ld code=400", command,
                 (long)c->uid, (long)c->pid);
    if (c->ctl->o.on_reply != NULL)
        c->ctl->o.on_reply(command, 400);
    send_reply(c, 400, text, NULL, 0);
}

static void dispatch(ctl_client *c, char *line)
{
    const dp_ctl_opts *o = &c->ctl->o;
    dp_ctl_request req;
    const char *why;
    if (dp_ctl_parse(line, &req, &why) != 0) {
        bad_request(c, "-", why, NULL);
        return;
    }
    char name[64] = "";
    for (size_t i = 0, pos = 0; i < req.nwords && pos < sizeof name; i++)
        pos += (size_t)snprintf(name + pos, sizeof name - pos, "%s%s", i ? " " : "", req.words[i]);
    if (strcmp(name, dp_ctl_specs[DP_CTL_CMD_HELP].name) == 0) {
        help_reply(c, &req);
        return;
    }
    const dp_ctl_command *cmd = NULL;
    for (size_t i = 0; i < o->ncommands && cmd == NULL; i++)
        if (strcmp(o->commands[i].spec->name, name) == 0)
            cmd = &o->commands[i];
    if (cmd == NULL) {
        char text[128];
        snprintf(text, sizeof text, "unknown command \"%s\" (try: help)", name);
        bad_request(c, "-", text, NULL);
        return;
    }
    for (size_t i = 0; i < req.nargs; i++) {
        bool known = false;
        for (const char *const *k = cmd->spec->keys; k != NULL && *k != NULL && !known; k++)
            known = strcmp(*k, req.args[i].key) == 0;
        if (!known) {
            char text[128];
            snprintf(text, sizeof text, "unknown argument \"%s\"", req.args[i].key);
            bad_request(c, cmd->spec->name, text, cmd);
            return;
        }
    }
    dp_ctl_call *call = malloc(sizeof *call);
    if (call == NULL) {
        send_reply(c, 500, "out of memory", NULL, 0);
        return;
    }
    *call = (dp_ctl_call){.client = c, .command = cmd->spec->name, .json = req.json};
    c->pending = call;
    uv_timer_stop(&c->timer); /* a long command (drain) is not idleness */
    cmd->run(call, &req, o->arg);
}

/* Run every complete line in the buffer, one request at a time. */
static void client_process(ctl_client *c)
{
    if (c->in_process)
        return;
    c->in_process = true;
    /* One reply in flight at a time: a client that does not read stops being read. */
    while (!c->closing && c->pending == NULL && c->writes == 0) {
        char *nl = memchr(c->in, '\n', c->len);
        if (nl == NULL) {
            if (c->len >= DP_CTL_LINE_MAX) {
                /* Over-long: answer once, then skip up to the next newline. */
                if (!c->discarding)
                    bad_request(c, "-", "line too long (limit 4096 bytes)", NULL);
                c->discarding = true;
                c->len = 0;
            }
            break;
        }
        size_t n = (size_t)(nl - c->in);
        if (c->discarding) {
            c->discarding = false;
        } else {
            *nl = '\0';
            size_t len = n;
            if (len > 0 && c->in[len - 1] == '\r')
                c->in[--len] = '\0';
            if (strlen(c->in) != len)
                bad_request(c, "-", "malformed request (NUL byte)", NULL);
            else
                dispatch(c, c->in);
        }
        /* dispatch parsed in place; a command that answers later copied what it keeps. */
        memmove(c->in, nl + 1, c->len - n - 1);
        c->len -= n + 1;
    }
    if (!c->closing && c->pending == NULL && c->writes == 0) {
        if (c->eof)
            client_close(c); /* every complete line is answered */
        else
            client_read_start(c);
    }
    c->in_process = false;
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    ctl_client *c = h->data;
    (void)suggested;
    *buf = uv_buf_init(c->in + c->len, (unsigned)(DP_CTL_LINE_MAX - c->len));
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    ctl_client *c = s->data;
    (void)buf;
    if (nread == UV_ENOBUFS)
        return;
    if (nread == UV_EOF) {
        uv_read_stop(s);
        c->reading = false;
        c->eof = true;
        if (c->pending == NULL)
            client_process(c);
        return;
    }
    if (nread < 0) {
        client_close(c);
        return;
    }
    c->len += (size_t)nread;
    if (c->pending != NULL || c->writes > 0) {
        /* Pipelined requests wait; stop reading once the buffer is full. */
        if (c->len >= DP_CTL_LINE_MAX) {
            uv_read_stop(s);
            c->reading = false;
        }
        return;
    }
    client_process(c);
}

static void client_read_start(ctl_client *c)
{
    if (c->reading || c->closing || c->eof || c->len >= DP_CTL_LINE_MAX)
        return;
    if (uv_read_start((uv_stream_t *)&c->pipe, alloc_cb, read_cb) == 0)
        c->reading = true;
}

/* ---- accepting ---- */

static void on_connection(uv_stream_t *server, int status)
{
    dp_ctl *ctl = server->data;
    if (status < 0) {
        dp_log_error("control socket %s: accept: %s", ctl->path, uv_strerror(status));
        return;
    }
    ctl_client *c = calloc(1, sizeof *c);
    if (c == NULL)
        return;
    c->ctl = ctl;
    uv_pipe_init(ctl->loop, &c->pipe, 0);
    uv_timer_init(ctl->loop, &c->timer);
    c->pipe.data = c->timer.data = c;
    c->open_handles = 2;
    c->next = ctl->clients;
    if (c->next != NULL)
        c->next->prev = c;
    ctl->clients = c;
    ctl->nclients++;
    if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0) {
        client_close_now(c);
        return;
    }
    uv_os_fd_t fd;
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
        dp_log_error("control socket: cannot read the peer's credentials: %s", strerror(errno));
        client_close(c);
        return;
    }
    c->uid = cred.uid;
    c->pid = cred.pid;
    if (cred.uid != 0 && cred.uid != ctl->o.allowed_uid) {
        dp_log_event(DP_LOG_WARN, NULL, "ctl_refused",
                     "uid=%ld pid=%ld reason=\"not root or uid %ld\"", (long)cred.uid,
                     (long)cred.pid, (long)ctl->o.allowed_uid);
        send_reply(c, 403, "forbidden: only root and the daemon's user may use this socket", NULL,
                   0);
        client_close(c);
        return;
    }
    if (ctl->nclients > ctl->o.max_clients) {
        dp_log_warn("control socket: %d connections open, refusing pid=%ld", ctl->nclients - 1,
                    (long)cred.pid);
        send_reply(c, 500, "too many control connections", NULL, 0);
        client_close(c);
        return;
    }
    dp_ctl_buf g = {0};
    dp_ctl_buf_printf(&g, "%s %d %s %s\n", DP_CTL_GREETING_WORD, DP_CTL_VERSION, ctl->o.daemon,
                      ctl->o.version);
    client_send(c, &g);
    arm_timer(c);
    client_read_start(c);
}

/* A socket file at `path`: a live daemon answers a connect (refuse to steal it); anything
 * else that is a socket is a leftover and is removed. */
static int clear_stale(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "control socket %s: exists and is not a socket", path);
        return -EEXIST;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    close(fd);
    if (rc == 0) {
        snprintf(err, errlen, "control socket %s: another process is serving it", path);
        return -EADDRINUSE;
    }
    unlink(path);
    return 0;
}

static void listener_closed(uv_handle_t *h)
{
    dp_ctl *ctl = h->data;
    ctl->listener_open = false;
    if (ctl->clients == NULL) {
        free(ctl->path);
        free(ctl);
    }
}

int dp_ctl_start(dp_ctl **out, uv_loop_t *loop, const dp_ctl_opts *opts, char *err, size_t errlen)
{
    struct sockaddr_un probe;
    if (strlen(opts->path) >= sizeof probe.sun_path) {
        snprintf(err, errlen, "control socket %s: path longer than %zu bytes", opts->path,
                 sizeof probe.sun_path - 1);
        return -ENAMETOOLONG;
    }
    int rc = clear_stale(opts->path, err, errlen);
    if (rc != 0) {
        if (rc != -EEXIST && rc != -EADDRINUSE)
            snprintf(err, errlen, "control socket %s: %s", opts->path, strerror(-rc));
        return rc;
    }
    dp_ctl *ctl = calloc(1, sizeof *ctl);
    if (ctl == NULL || (ctl->path = strdup(opts->path)) == NULL) {
        free(ctl);
        return -ENOMEM;
    }
    ctl->loop = loop;
    ctl->o = *opts;
    uv_pipe_init(loop, &ctl->listener, 0);
    ctl->listener.data = ctl;
    ctl->listener_open = true;
    /* Created 0600 from the start: no window in which another user could connect. */
    mode_t old = umask(0177);
    rc = uv_pipe_bind(&ctl->listener, ctl->path);
    umask(old);
    if (rc == 0 && geteuid() == 0 && chown(ctl->path, opts->owner_uid, opts->owner_gid) != 0)
        rc = -errno;
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&ctl->listener, 16, on_connection);
    if (rc != 0) {
        snprintf(err, errlen, "control socket %s: %s", ctl->path, uv_strerror(rc));
        unlink(ctl->path);
        ctl->clients = NULL;
        uv_close((uv_handle_t *)&ctl->listener, listener_closed);
        return rc;
    }
    *out = ctl;
    return 0;
}

void dp_ctl_close(dp_ctl *ctl)
{
    if (ctl == NULL || ctl->closing)
        return;
    ctl->closing = true;
    unlink(ctl->path);
    for (ctl_client *c = ctl->clients; c != NULL; c = c->next)
        client_close(c);
    /* The listener goes last: its close callback frees the server when no client is left;
     * otherwise the last client's free does (see client_free_if_done). */
    uv_close((uv_handle_t *)&ctl->listener, listener_closed);
}
