/* sshp_backend.c - the proxy's own SSH session to the user's backend: one non-blocking dial
 * per client connection (reused across the client's auth attempts), handshake, host-key pin
 * check, and the backend-side message queue. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dp_log.h"
#include "dp_util.h"
#include "sshp.h"

/* Ask for the algorithm the pin is usually taken from first (OpenSSH's default order). */
#define BACKEND_HOSTKEYS                                                                           \
    "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-512,"        \
    "rsa-sha2-256"

#define BACKEND_CIPHERS                                                                            \
    "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-ctr,"      \
    "aes256-ctr"

static void be_failed(sshp_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void be_failed(sshp_conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->core.reason, sizeof c->core.reason, fmt, ap);
    va_end(ap);
    dp_slog_error(c->core.prefix, "backend %s: %s", c->core.route.backend, c->core.reason);
    c->backend.state = SSHP_BE_FAILED;
    if (c->backend.timer_open)
        uv_timer_stop(&c->backend.timer);
    sshp_conn_pump(c);
}

/* Two deadlines (the dial's, then this one), each no shorter than what a client connecting
 * directly would wait: after a mass reconnect a backend's accept queue overflows (SYNs
 * retransmitted 1, 3, 7, 15 s later) and sshd re-executes itself and runs a key exchange per
 * connection on busy cores; giving up earlier turns a slow backend into refused customers. */
static void on_be_timer(uv_timer_t *t)
{
    sshp_conn *c = t->data;
    if (c->backend.state == SSHP_BE_HANDSHAKE)
        be_failed(c, "ssh handshake timed out after %d ms",
                  sshp_conf_of(c->core.w)->handshake_timeout_ms);
}

/* ---- SSH handshake ---- */

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -errno : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void start_handshake(sshp_conn *c)
{
    const char *buser = c->core.route.backend_user[0] ? c->core.route.backend_user : c->core.user;
    bool no = false;
    int port = dp_session_backend_port(&c->core);
    c->backend.session = ssh_new();
    if (c->backend.session == NULL) {
        close(c->backend.fd);
        c->backend.fd = -1;
        be_failed(c, "out of memory");
        return;
    }
    ssh_set_blocking(c->backend.session, 0);
    /* No config files, no known_hosts, no home directory lookups: nothing that reads a file
     * or calls getpwuid on the loop. The host key is checked against the route's pin. */
    if (ssh_options_set(c->backend.session, SSH_OPTIONS_FD, &c->backend.fd) != 0 ||
        ssh_options_set(c->backend.session, SSH_OPTIONS_HOST, c->core.route.address) != 0 ||
        ssh_options_set(c->backend.session, SSH_OPTIONS_PORT, &port) != 0 ||
        ssh_options_set(c->backend.session, SSH_OPTIONS_PROCESS_CONFIG, &no) != 0 ||
        ssh_options_set(c->backend.session, SSH_OPTIONS_SSH_DIR, "/nonexistent") != 0 ||
        ssh_options_set(c->backend.session, SSH_OPTIONS_KNOWNHOSTS, "/dev/null") != 0 ||
        ssh_options_set(c->backend.session, SSH_OPTIONS_GLOBAL_KNOWNHOSTS, "/dev/null") != 0 ||
        ssh_options_set(c->backend.session, SSH_OPTIONS_HOSTKEYS, BACKEND_HOSTKEYS) != 0 ||
        ssh_options_set(c->backend.session, SSH_OPTIONS_KEY_EXCHANGE, sshp_backend_kex()) != 0 ||
        ssh_options_set(c->backend.session, SSH_OPTIONS_COMPRESSION, "no") != 0) {
        be_failed(c, "session options: %s", ssh_get_error(c->backend.session));
        return;
    }
    /* Debian's libssh refuses some user names in SSH_OPTIONS_USER (shell metacharacters);
     * the name goes to ssh_userauth_* directly, which does not check it. */
    if (ssh_options_set(c->backend.session, SSH_OPTIONS_USER, buser) != 0)
        /* A user must be set, or libssh looks one up with getpwuid (NSS) on the loop. */
        ssh_options_set(c->backend.session, SSH_OPTIONS_USER, "dynproxy");
    /* Offer the backend the cipher the client chose first: the client picked it for its own
     * reasons (AES-GCM rides AES-NI; chacha20 wins without it), and a relay whose two hops
     * use different ciphers pays for the slower one. */
    const char *cin = ssh_get_cipher_in(c->client.session);
    if (cin != NULL) {
        char list[512];
        snprintf(list, sizeof list, "%s,%s", cin, BACKEND_CIPHERS);
        ssh_options_set(c->backend.session, SSH_OPTIONS_CIPHERS_C_S, list);
        ssh_options_set(c->backend.session, SSH_OPTIONS_CIPHERS_S_C, list);
    }
    c->backend.connect_called = true;
    int rc = ssh_connect(c->backend.session);
    /* libssh 0.10 resets the socket to blocking during connect (socket.c F_SETFL 0). */
    set_nonblock(c->backend.fd);
    if (rc == SSH_ERROR) {
        be_failed(c, "ssh handshake: %s", ssh_get_error(c->backend.session));
        return;
    }
    c->backend.event = ssh_event_new();
    if (c->backend.event == NULL ||
        ssh_event_add_session(c->backend.event, c->backend.session) != SSH_OK) {
        be_failed(c, "ssh_event_add_session failed");
        return;
    }
    c->backend.state = SSHP_BE_HANDSHAKE;
    uv_loop_t *loop = dp_worker_loop(c->core.w);
    if (!c->backend.timer_open) {
        uv_timer_init(loop, &c->backend.timer);
        dp_session_own_handle(&c->core, (uv_handle_t *)&c->backend.timer, &c->backend.timer_open);
    }
    uv_update_time(loop);
    uv_timer_start(&c->backend.timer, on_be_timer,
                   (uint64_t)sshp_conf_of(c->core.w)->handshake_timeout_ms, 0);
    if (rc == SSH_OK)
        sshp_backend_step(c);
}

/* The fallback for routes without a pin: ssh.known_hosts, read at start. Entries name the
 * backend as "address" (port 22) or "[address]:port", as OpenSSH writes them. */
static int known_host(sshp_conn *c, ssh_key key)
{
    sshp_worker *sw = c->sw;
    char name[DPH_ADDR_MAX + 16];
    int port = dp_session_backend_port(&c->core);
    if (port == 22)
        snprintf(name, sizeof name, "%s", c->core.route.address);
    else
        snprintf(name, sizeof name, "[%s]:%d", c->core.route.address, port);
    for (size_t i = 0; i < sw->nknown; i++)
        if (strcmp(sw->known_names[i], name) == 0 &&
            ssh_key_cmp(sw->known_keys[i], key, SSH_KEY_CMP_PUBLIC) == 0)
            return 0;
    return -1;
}

/* Compare the backend's host key with the route's "SHA256:..." pin. */
static int check_host_key(sshp_conn *c)
{
    ssh_key key = NULL;
    unsigned char *hash = NULL;
    size_t hlen = 0;
    char *fp = NULL;
    int rc = -1;
    if (ssh_get_server_publickey(c->backend.session, &key) == SSH_OK &&
        ssh_get_publickey_hash(key, SSH_PUBLICKEY_HASH_SHA256, &hash, &hlen) == 0 &&
        (fp = ssh_get_fingerprint_hash(SSH_PUBLICKEY_HASH_SHA256, hash, hlen)) != NULL) {
        if (c->core.route.hostkey_sha256[0] == '\0') {
            if (known_host(c, key) == 0) {
                rc = 0;
            } else {
                /* the prefix names the backend */
                dp_log_event(DP_LOG_ERROR, c->core.prefix, "hostkey_unknown",
                             "fingerprint=%s msg=\"route has no host key pin and "
                             "ssh.known_hosts does not list this key; refused\"",
                             fp);
                snprintf(c->core.reason, sizeof c->core.reason,
                         "backend host key not pinned or known");
            }
        } else if (strcmp(fp, c->core.route.hostkey_sha256) != 0) {
            dp_log_event(DP_LOG_ERROR, c->core.prefix, "hostkey_mismatch",
                         "expected=%s got=%s msg=\"host key mismatch: possible "
                         "man-in-the-middle or a reinstalled backend; login refused\"",
                         c->core.route.hostkey_sha256, fp);
            snprintf(c->core.reason, sizeof c->core.reason, "backend host key mismatch");
        } else {
            rc = 0;
        }
    } else {
        snprintf(c->core.reason, sizeof c->core.reason, "cannot read the backend host key");
    }
    ssh_string_free_char(fp);
    ssh_clean_pubkey_hash(&hash);
    ssh_key_free(key);
    return rc;
}

void sshp_backend_step(sshp_conn *c)
{
    if (c->backend.state != SSHP_BE_HANDSHAKE)
        return;
    int rc = ssh_connect(c->backend.session);
    set_nonblock(c->backend.fd);
    if (rc == SSH_AGAIN)
        return;
    if (rc == SSH_ERROR) {
        be_failed(c, "ssh handshake: %s", ssh_get_error(c->backend.session));
        return;
    }
    if (c->backend.timer_open)
        uv_timer_stop(&c->backend.timer);
    if (check_host_key(c) != 0) {
        c->backend.state = SSHP_BE_FAILED;
        return;
    }
    c->backend.state = SSHP_BE_READY;
    dp_metrics_backend_connect(uv_hrtime() - c->backend.dial_ns);
    dp_slog_debug(c->core.prefix, "backend %s ready", c->core.route.backend);
}

/* ---- TCP ---- */

static void dialed(void *arg, const dp_dial_result *r)
{
    sshp_conn *c = arg;
    c->backend.dial = NULL;
    c->backend.dial_ns = r->connect_ns; /* dynproxy_backend_connect_seconds: to SSHP_BE_READY */
    if (r->status != 0) {
        be_failed(c, "%s", r->error);
        return;
    }
    c->backend.fd = r->fd;
    if (sshp_poll_open(c, &c->backend.poll, &c->backend.poll_open, &c->backend.poll_fd,
                       c->backend.fd) != 0) {
        be_failed(c, "poll setup failed");
        return;
    }
    start_handshake(c);
    sshp_conn_pump(c);
}

void sshp_backend_start(sshp_conn *c)
{
    c->backend.state = SSHP_BE_DIALING;
    int rc = dp_session_dial(&c->core, &c->backend.dial,
                             sshp_conf_of(c->core.w)->connect_timeout_ms, dialed, c);
    if (rc != 0)
        be_failed(c, "connect: %s", uv_strerror(rc));
}

void sshp_backend_cleanup(sshp_conn *c)
{
    dp_dial_cancel(c->backend.dial);
    c->backend.dial = NULL;
    sshp_conn_close_handle(c, (uv_handle_t *)&c->backend.timer, &c->backend.timer_open);
    if (c->backend.session != NULL) {
        if (c->backend.event != NULL)
            ssh_event_remove_session(c->backend.event, c->backend.session);
        ssh_free(c->backend.session); /* closes bfd once ssh_connect ran */
        c->backend.session = NULL;
        if (!c->backend.connect_called && c->backend.fd >= 0)
            close(c->backend.fd);
        c->backend.fd = -1;
    } else if (c->backend.fd >= 0) {
        close(c->backend.fd);
        c->backend.fd = -1;
    }
    if (c->backend.event != NULL) {
        ssh_event_free(c->backend.event);
        c->backend.event = NULL;
    }
    sshp_conn_close_handle(c, (uv_handle_t *)&c->backend.poll,
                           &c->backend.poll_open); /* closes its dup */
    c->backend.state = c->backend.state == SSHP_BE_AUTHED ? SSHP_BE_AUTHED : SSHP_BE_FAILED;
}
