/* sshp_auth.c - client authentication: route lookup at the first user name, password
 * passthrough, public keys checked against the hook's authorized keys, maintenance and
 * temporary-failure messages, failure pacing. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dp_log.h"
#include "dp_util.h"
#include "sshp.h"

#define MAX_KEYS 256
#define METHODS (SSH_AUTH_METHOD_PUBLICKEY | SSH_AUTH_METHOD_PASSWORD | SSH_AUTH_METHOD_INTERACTIVE)
#define UNAVAILABLE_MSG "service temporarily unavailable, please try again later"

static void wipe_password(sshp_conn *c)
{
    if (c->auth.password != NULL) {
        explicit_bzero(c->auth.password, strlen(c->auth.password));
        free(c->auth.password);
        c->auth.password = NULL;
    }
}

static void free_keys(sshp_conn *c)
{
    for (size_t i = 0; i < c->auth.nkeys; i++)
        free(c->auth.keys[i]);
    free(c->auth.keys);
    c->auth.keys = NULL;
    c->auth.nkeys = 0;
}

void sshp_auth_cleanup(sshp_conn *c)
{
    if (c->auth.lookup_pending) {
        dp_route_cache_cancel(c->auth.lookup);
        c->auth.lookup_pending = false;
    }
    free(c->auth.lookup);
    c->auth.lookup = NULL;
    if (c->auth.keys_pending) {
        dp_hook_call_cancel(c->auth.keys_call); /* its callback still runs: it checks the state */
    }
    if (c->auth.held != NULL) {
        ssh_message_free(c->auth.held);
        c->auth.held = NULL;
    }
    wipe_password(c);
    free_keys(c);
    if (!c->auth.key_loading) {
        ssh_key_free(c->auth.route_key);
        c->auth.route_key = NULL;
    }
}

/* ---- asynchronous answers ---- */

static void on_route(dp_route_lookup *lk, const dph_route *route, dp_cache_result how)
{
    sshp_conn *c = lk->data;
    c->auth.lookup_pending = false;
    dp_session_set_route(&c->core, route);
    free(c->auth.lookup); /* `route` pointed into it: copied above */
    c->auth.lookup = NULL;
    route = &c->core.route;
    dp_slog_debug(c->core.prefix, "route: status %d backend %s (%s)", route->status, route->backend,
                  how == DP_CACHE_HIT ? "cached" : "hook");
    sshp_conn_pump(c);
}

static void on_keys(void *arg, int status, const char *const *keys, size_t n)
{
    sshp_conn *c = arg;
    c->auth.keys_pending = false;
    c->auth.keys_call = NULL;
    if (c->state == SSHP_CONN_DEAD) { /* teardown cancelled us and waited for this callback */
        dp_session_unref(&c->core);
        return;
    }
    if (status == 0) {
        c->auth.keys = calloc(n ? n : 1, sizeof *c->auth.keys);
        for (size_t i = 0; c->auth.keys != NULL && i < n; i++)
            if ((c->auth.keys[c->auth.nkeys] = strdup(keys[i])) != NULL)
                c->auth.nkeys++;
        sshp_keycache_store(c->core.user, keys, n);
    } else {
        const sshp_conf *cf = sshp_conf_of(c->core.w);
        if (sshp_keycache_get(c->core.user,
                              (uint64_t)cf->common.cache_ttl_ms + cf->common.cache_stale_ms,
                              &c->auth.keys, &c->auth.nkeys) == 0) {
            dp_slog_warn(c->core.prefix,
                         "authorized keys unavailable (%s); using the last known ones",
                         strerror(-status));
        } else {
            dp_slog_warn(c->core.prefix, "authorized keys unavailable: %s", strerror(-status));
            c->auth.keys_failed = true;
        }
    }
    c->auth.keys_known = true;
    sshp_conn_pump(c);
    dp_session_unref(&c->core);
}

static void start_lookup(sshp_conn *c)
{
    c->auth.lookup = calloc(1, sizeof *c->auth.lookup);
    int rc = c->auth.lookup == NULL ? -ENOMEM : 0;
    if (rc == 0) {
        c->auth.lookup->data = c;
        rc = dp_route_cache_lookup(dp_daemon_worker_cache(c->core.w), c->auth.lookup, c->core.user,
                                   (const struct sockaddr *)&c->core.client, DPH_PROTO_SSH,
                                   on_route);
    }
    if (rc != 0) {
        free(c->auth.lookup);
        c->auth.lookup = NULL;
        memset(&c->core.route, 0, sizeof c->core.route);
        /* an unusable name is just an unknown user; no memory is a failure for now */
        c->core.route.status = rc == -ENOMEM ? DPH_ROUTE_TEMPFAIL : DPH_ROUTE_UNKNOWN_USER;
        c->core.route_known = true;
        return;
    }
    c->auth.lookup_pending = true;
}

static void start_keys(sshp_conn *c)
{
    const sshp_conf *cf = sshp_conf_of(c->core.w);
    dp_hook_req req = {.user = c->core.user,
                       .client = (const struct sockaddr *)&c->core.client,
                       .proto = DPH_PROTO_SSH,
                       .timeout_ms = cf->common.hook_timeout_ms};
    int rc = dp_hook_keys_async(dp_daemon_worker_hook(c->core.w), dp_worker_loop(c->core.w), &req,
                                MAX_KEYS, on_keys, c, &c->auth.keys_call);
    if (rc != 0) {
        c->auth.keys_known = true; /* no keys: public-key logins are refused */
        return;
    }
    c->auth.keys_pending = true;
    dp_session_ref(&c->core); /* until on_keys has run */
}

/* ---- replies ---- */

static void send_banner(sshp_conn *c, const char *text)
{
    char line[DPH_MESSAGE_MAX + 4];
    snprintf(line, sizeof line, "%s\r\n", text);
    ssh_string s = ssh_string_from_char(line);
    if (s != NULL) {
        ssh_send_issue_banner(c->client.session, s);
        ssh_string_free(s);
    }
}

static void reply_failure(sshp_conn *c)
{
    if (c->auth.held == NULL)
        return;
    ssh_message_auth_set_methods(c->auth.held, METHODS);
    ssh_message_reply_default(c->auth.held);
    ssh_message_free(c->auth.held);
    c->auth.held = NULL;
}

static void after_failure(sshp_conn *c)
{
    const sshp_conf *cf = sshp_conf_of(c->core.w);
    if (c->core.auth_failures >= cf->max_auth_tries)
        sshp_conn_fail(c, "too many authentication failures", "Too many authentication failures");
}

static void on_fail_timer(uv_timer_t *t)
{
    sshp_conn *c = t->data;
    c->auth.fail_pending = false;
    reply_failure(c);
    after_failure(c);
    sshp_conn_pump(c);
}

/* dynproxy_auth_failures_total{method} of the attempt held now. */
static void count_auth_failure(const sshp_conn *c, dp_auth_reason r)
{
    static const int methods[] = {[SSHP_AUTH_PASSWORD] = DP_AUTHM_PASSWORD,
                                  [SSHP_AUTH_PUBKEY] = DP_AUTHM_PUBLICKEY,
                                  [SSHP_AUTH_KBDINT] = DP_AUTHM_KBDINT};
    if (c->auth.kind != SSHP_AUTH_NONE_YET)
        dp_metrics_auth_failure((dp_auth_method)methods[c->auth.kind], r);
}

/* Refuse the held attempt. `delay` paces refusals the backend did not already pace, so an
 * unknown user takes as long as a wrong password (same answer, same timing class). `why` is
 * the log's reason, `r` the metric's. */
static void auth_fail(sshp_conn *c, const char *why, dp_auth_reason r, bool delay)
{
    const sshp_conf *cf = sshp_conf_of(c->core.w);
    c->core.auth_failures++;
    wipe_password(c);
    static const char *const kinds[] = {"none", "password", "publickey", "keyboard-interactive"};
    dp_log_event(DP_LOG_INFO, c->core.prefix, "auth_fail", "method=%s reason=%s",
                 kinds[c->auth.kind], why);
    count_auth_failure(c, r);
    if (delay && cf->auth_fail_delay_ms > 0 && c->auth.fail_timer_open) {
        /* +-25 % jitter: a fixed delay would itself tell unknown users apart. */
        uint64_t base = (uint64_t)cf->auth_fail_delay_ms;
        uint64_t ms = base * 3 / 4 + (uint64_t)(random() % (long)(base / 2 + 1));
        c->auth.fail_pending = true;
        uv_timer_start(&c->auth.fail_timer, on_fail_timer, ms, 0);
        return;
    }
    reply_failure(c);
    after_failure(c);
}

static void auth_succeeded(sshp_conn *c)
{
    const sshp_conf *cf = sshp_conf_of(c->core.w);
    wipe_password(c);
    ssh_message_auth_reply_success(c->auth.held, 0);
    ssh_message_free(c->auth.held);
    c->auth.held = NULL;
    c->state = SSHP_CONN_OPEN;
    c->backend.state = SSHP_BE_AUTHED;
    if (c->startup_slot) {
        sshp_startup_release((struct sockaddr *)&c->core.client);
        c->startup_slot = false;
    }
    c->last_activity_ms = dp_now_ms();
    if (cf->idle_timeout_s > 0)
        sshp_conn_arm_timer(c, (uint64_t)cf->idle_timeout_s * 1000);
    else if (c->timer_open)
        uv_timer_stop(&c->timer);
    /* What each hop negotiated: an operator answering "is my session post-quantum?" reads
     * it here (the backend hop is the weaker one when the backend is old). */
    const char *ckex = ssh_get_kex_algo(c->client.session),
               *bkex = ssh_get_kex_algo(c->backend.session);
    const char *ccipher = ssh_get_cipher_in(c->client.session),
               *bcipher = ssh_get_cipher_out(c->backend.session);
    dp_session_log(&c->core, "session_start",
                   "auth=%s kex=%s cipher=%s backend_kex=%s backend_cipher=%s", c->auth.method,
                   ckex != NULL ? ckex : "-", ccipher != NULL ? ccipher : "-",
                   bkex != NULL ? bkex : "-", bcipher != NULL ? bcipher : "-");
    dp_session_logged_in(&c->core);
}

/* ---- public keys ---- */

/* Parse one authorized_keys line ("type base64 [comment]") into a key. Lines with options
 * (from=, command=, expiry-time=, restrict, cert-authority, ...) are refused: the proxy does
 * not enforce them, and silently ignoring a from= would widen the key's reach. */
static ssh_key parse_authorized(sshp_conn *c, const char *line)
{
    char buf[16384];
    snprintf(buf, sizeof buf, "%s", line);
    char *save = NULL;
    char *tok = strtok_r(buf, " \t", &save);
    enum ssh_keytypes_e type = tok != NULL ? ssh_key_type_from_name(tok) : SSH_KEYTYPE_UNKNOWN;
    if (type == SSH_KEYTYPE_UNKNOWN) {
        dp_slog_warn(c->core.prefix,
                     "authorized key of %s skipped: options or unknown key type (%.40s)",
                     c->core.user, tok != NULL ? tok : "");
        return NULL;
    }
    char *b64 = strtok_r(NULL, " \t", &save);
    ssh_key k = NULL;
    if (b64 != NULL && ssh_pki_import_pubkey_base64(b64, type, &k) == SSH_OK)
        return k;
    return NULL;
}

static bool key_listed(sshp_conn *c, ssh_key offered)
{
    for (size_t i = 0; i < c->auth.nkeys; i++) {
        ssh_key k = parse_authorized(c, c->auth.keys[i]);
        bool same = k != NULL && ssh_key_cmp(k, offered, SSH_KEY_CMP_PUBLIC) == 0;
        ssh_key_free(k);
        if (same)
            return true;
    }
    return false;
}

/* ---- messages from the client ---- */

static bool set_user(sshp_conn *c, const char *user)
{
    if (user == NULL)
        return true;
    if (c->core.user[0] != '\0')
        return strcmp(c->core.user, user) == 0; /* like sshd: one user per connection */
    dp_session_set_user(&c->core, user);
    /* Route at the first moment the name is known, while the client is still choosing how
     * to authenticate. */
    start_lookup(c);
    return true;
}

void sshp_auth_message(sshp_conn *c, ssh_message m)
{
    if (ssh_message_type(m) == SSH_REQUEST_SERVICE) {
        ssh_message_service_reply_success(m);
        ssh_message_free(m);
        return;
    }
    /* Requests we answer ourselves ("none", methods not offered, extra ones while one is
     * held) are cheap for the client and would otherwise be unbounded. */
    const sshp_conf *cf = sshp_conf_of(c->core.w);
    if (++c->auth.requests > (unsigned)cf->max_auth_tries * 4 + 8) {
        ssh_message_free(m);
        sshp_conn_fail(c, "too many authentication requests", "Too many authentication failures");
        return;
    }
    if (c->state != SSHP_CONN_AUTH || c->auth.held != NULL) {
        ssh_message_reply_default(m);
        ssh_message_free(m);
        return;
    }
    if (!set_user(c, ssh_message_auth_user(m))) {
        ssh_message_free(m);
        sshp_conn_fail(c, "user name changed during authentication",
                       "Changing the user name is not allowed");
        return;
    }
    switch (ssh_message_subtype(m)) {
    case SSH_AUTH_METHOD_PASSWORD: {
        const char *pw = ssh_message_auth_password(m);
        c->auth.password = strdup(pw != NULL ? pw : "");
        if (c->auth.password == NULL) {
            ssh_message_reply_default(m);
            ssh_message_free(m);
            return;
        }
        c->auth.kind = SSHP_AUTH_PASSWORD;
        c->auth.held = m;
        break;
    }
    case SSH_AUTH_METHOD_INTERACTIVE:
        if (!ssh_message_auth_kbdint_is_response(m) && c->auth.kind == SSHP_AUTH_KBDINT &&
            c->auth.backend_started) {
            /* A new round while the backend's prompts are still unanswered: libssh would send
             * the old prompts' (empty) answers. Not something a real client does. */
            ssh_message_free(m);
            sshp_conn_fail(c, "keyboard-interactive restarted mid-round",
                           "Too many authentication failures");
            return;
        }
        if (ssh_message_auth_kbdint_is_response(m)) {
            bool fake_prompt =
                c->core.route_known && c->core.route.status == DPH_ROUTE_UNKNOWN_USER;
            if (c->auth.kind != SSHP_AUTH_KBDINT || (!c->auth.backend_started && !fake_prompt)) {
                ssh_message_reply_default(m);
                ssh_message_free(m);
                return;
            }
            /* Answers to the backend's prompts we relayed: hand them over. */
            int n = fake_prompt ? 0 : ssh_userauth_kbdint_getnanswers(c->client.session);
            for (int i = 0; i < n; i++)
                ssh_userauth_kbdint_setanswer(
                    c->backend.session, (unsigned)i,
                    ssh_userauth_kbdint_getanswer(c->client.session, (unsigned)i));
        }
        c->auth.kind = SSHP_AUTH_KBDINT;
        c->auth.held = m;
        break;
    case SSH_AUTH_METHOD_PUBLICKEY:
        c->auth.kind = SSHP_AUTH_PUBKEY;
        c->auth.held = m;
        if (!c->auth.keys_known && !c->auth.keys_pending)
            start_keys(c);
        break;
    default:
        /* "none" and methods we do not offer: list ours. */
        ssh_message_auth_set_methods(m, METHODS);
        ssh_message_reply_default(m);
        ssh_message_free(m);
        return;
    }
    sshp_auth_progress(c);
}

/* ---- the held attempt moves on as the route, keys and backend become known ---- */

/* The login cannot go on for the backend's sake (maintenance, lookup or backend failure). */
static void refuse_session(sshp_conn *c, const char *reason, const char *text)
{
    dp_session_end_as(&c->core, DP_SESS_UNAVAILABLE);
    wipe_password(c);
    send_banner(c, text);
    reply_failure(c);
    sshp_conn_fail(c, reason, text);
}

static void key_load_work(uv_work_t *w)
{
    sshp_conn *c = w->data;
    if (ssh_pki_import_privkey_file(c->core.route.key_path, NULL, NULL, NULL, &c->auth.route_key) !=
        SSH_OK)
        c->auth.route_key = NULL;
}

static void key_load_done(uv_work_t *w, int status)
{
    sshp_conn *c = w->data;
    c->auth.key_loading = false;
    c->auth.key_loaded = true;
    if (c->state != SSHP_CONN_DEAD) {
        if (c->auth.route_key == NULL)
            dp_slog_error(c->core.prefix, "cannot read key %s for backend %s",
                          c->core.route.key_path, c->core.route.backend);
        sshp_conn_pump(c);
    }
    dp_session_unref(&c->core); /* the reference of start_key_load */
}

static void start_key_load(sshp_conn *c)
{
    c->auth.key_work.data = c;
    if (uv_queue_work(dp_worker_loop(c->core.w), &c->auth.key_work, key_load_work, key_load_done) ==
        0) {
        c->auth.key_loading = true;
        dp_session_ref(&c->core);
    } else
        c->auth.key_loaded = true; /* route_key stays NULL: refused with a log line */
}

static void backend_auth(sshp_conn *c)
{
    const char *buser = c->core.route.backend_user[0] ? c->core.route.backend_user : c->core.user;
    int rc;
    bool key_route =
        c->core.route.auth == DPH_AUTH_MAPPED_KEY || c->core.route.auth == DPH_AUTH_PROXY_KEY;
    if (c->auth.kind == SSHP_AUTH_KBDINT && !key_route) {
        /* Passthrough: the backend's prompts (PAM, OTP) go to the client and back. */
        c->auth.method = "keyboard-interactive";
        /* Called for the client's first request and again once it has answered (the answers
         * are already set on the backend session); libssh sends what is set. */
        rc = ssh_userauth_kbdint(c->backend.session, buser, NULL);
        if (rc == SSH_AUTH_INFO) {
            int n = ssh_userauth_kbdint_getnprompts(c->backend.session);
            const char *prompts[32];
            char echo[32];
            if (n < 0 || n > 32) {
                refuse_session(c, "backend sent too many prompts", UNAVAILABLE_MSG);
                return;
            }
            for (int i = 0; i < n; i++)
                prompts[i] =
                    ssh_userauth_kbdint_getprompt(c->backend.session, (unsigned)i, &echo[i]);
            ssh_message_auth_interactive_request(
                c->auth.held, ssh_userauth_kbdint_getname(c->backend.session),
                ssh_userauth_kbdint_getinstruction(c->backend.session), (unsigned)n, prompts, echo);
            ssh_message_free(c->auth.held);
            c->auth.held = NULL;
            c->auth.backend_started = true; /* the round goes on when the client answers */
            return;
        }
    } else if (c->auth.kind == SSHP_AUTH_PASSWORD && !key_route) {
        c->auth.method = "password";
        rc = ssh_userauth_password(c->backend.session, buser, c->auth.password);
    } else {
        c->auth.method = c->auth.kind == SSHP_AUTH_PUBKEY ? "publickey" : "password";
        if (c->auth.kind == SSHP_AUTH_PASSWORD || c->auth.kind == SSHP_AUTH_KBDINT) {
            /* The route says the backend takes the proxy's key, but the client proved
             * nothing to us: a password we cannot check must not open a key login. */
            auth_fail(c, "password_not_accepted_for_key_route", DP_AUTHR_METHOD_REFUSED, true);
            return;
        }
        ssh_key key = c->sw->proxy_key;
        if (c->core.route.key_path[0] != '\0') {
            /* A per-user (mapped) or per-route key file: read off the loop, once. */
            if (!c->auth.key_loaded) {
                if (!c->auth.key_loading)
                    start_key_load(c);
                return;
            }
            key = c->auth.route_key;
        }
        if (key == NULL) {
            dp_slog_error(c->core.prefix, "no usable key to log in to backend %s (auth %s, key %s)",
                          c->core.route.backend,
                          c->core.route.auth == DPH_AUTH_MAPPED_KEY ? "mapped-key" : "proxy-key",
                          c->core.route.key_path[0] ? c->core.route.key_path
                                                    : "ssh.proxy_key unset");
            refuse_session(c, "no backend key", UNAVAILABLE_MSG);
            return;
        }
        rc = ssh_userauth_publickey(c->backend.session, buser, key);
    }
    c->auth.backend_started = true;
    switch (rc) {
    case SSH_AUTH_AGAIN:
        return; /* the pump calls again; libssh ignores the arguments of a pending call */
    case SSH_AUTH_SUCCESS:
        c->auth.backend_started = false;
        auth_succeeded(c);
        return;
    case SSH_AUTH_DENIED:
    case SSH_AUTH_PARTIAL:
        c->auth.backend_started = false;
        if (c->auth.kind == SSHP_AUTH_PUBKEY) {
            dp_slog_error(c->core.prefix, "backend %s refused the proxy key for %s",
                          c->core.route.backend, buser);
            count_auth_failure(c, DP_AUTHR_BACKEND_REFUSED);
            refuse_session(c, "backend refused the proxy key", UNAVAILABLE_MSG);
        } else {
            /* the backend paced it already */
            auth_fail(c, "wrong_password", DP_AUTHR_WRONG_PASSWORD, false);
        }
        return;
    default:
        c->auth.backend_started = false;
        dp_slog_error(c->core.prefix, "backend %s authentication error: %s", c->core.route.backend,
                      ssh_get_error(c->backend.session));
        refuse_session(c, "backend authentication error", UNAVAILABLE_MSG);
        return;
    }
}

void sshp_auth_progress(sshp_conn *c)
{
    if (c->auth.held == NULL || c->auth.fail_pending || c->state != SSHP_CONN_AUTH)
        return;
    if (!c->core.route_known)
        return;
    switch (c->core.route.status) {
    case DPH_ROUTE_UNKNOWN_USER:
        if (c->auth.kind == SSHP_AUTH_KBDINT &&
            !ssh_message_auth_kbdint_is_response(c->auth.held)) {
            /* A real backend would prompt through PAM first: so do we, or the missing prompt
             * would tell unknown users apart. */
            const char *prompt[] = {"Password: "};
            char echo[] = {0};
            ssh_message_auth_interactive_request(c->auth.held, "", "", 1, prompt, echo);
            ssh_message_free(c->auth.held);
            c->auth.held = NULL;
            return;
        }
        /* Paced like what a known user gets for the same method: a wrong password costs
         * PAM's delay on the backend, an unlisted key is refused at once. */
        auth_fail(c, "unknown_user", DP_AUTHR_UNKNOWN_USER, c->auth.kind != SSHP_AUTH_PUBKEY);
        return;
    case DPH_ROUTE_MAINTENANCE:
        dp_slog_info(c->core.prefix, "backend %s in maintenance", c->core.route.backend);
        refuse_session(c, "backend in maintenance",
                       c->core.route.message[0] ? c->core.route.message : "backend in maintenance");
        return;
    case DPH_ROUTE_TEMPFAIL:
        dp_slog_warn(c->core.prefix, "route lookup failed: temporary failure");
        refuse_session(c, "route lookup failed",
                       c->core.route.message[0] ? c->core.route.message : UNAVAILABLE_MSG);
        return;
    case DPH_ROUTE_OK:
        break;
    }
    if (c->auth.kind == SSHP_AUTH_PUBKEY) {
        if (!c->auth.keys_known)
            return;
        if (c->auth.keys_failed) {
            refuse_session(c, "authorized keys unavailable", UNAVAILABLE_MSG);
            return;
        }
        if (!key_listed(c, ssh_message_auth_pubkey(c->auth.held))) {
            auth_fail(c, "key_not_listed", DP_AUTHR_UNLISTED_KEY, false);
            return;
        }
        if (ssh_message_auth_publickey_state(c->auth.held) == SSH_PUBLICKEY_STATE_NONE) {
            /* A probe: yes, this key would do; the client signs next. */
            ssh_message_auth_reply_pk_ok_simple(c->auth.held);
            ssh_message_free(c->auth.held);
            c->auth.held = NULL;
            return;
        }
        if (ssh_message_auth_publickey_state(c->auth.held) != SSH_PUBLICKEY_STATE_VALID) {
            auth_fail(c, "bad_signature", DP_AUTHR_BAD_SIGNATURE, false);
            return;
        }
    }
    switch (c->backend.state) {
    case SSHP_BE_NONE:
        c->backend.state = SSHP_BE_WANTED; /* dialled by this pump (sshp_conn.c) */
        c->pump_again = true;
        return;
    case SSHP_BE_FAILED:
        refuse_session(c, c->core.reason[0] ? c->core.reason : "backend unreachable",
                       UNAVAILABLE_MSG);
        return;
    case SSHP_BE_READY:
        backend_auth(c);
        return;
    default:
        return; /* resolving, connecting, handshaking */
    }
}
