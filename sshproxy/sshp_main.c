/* sshp_main.c - sshproxy: configuration table, per-worker libssh state, daemon entry. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dp_log.h"
#include "sshp.h"

static int check_host_keys(const void *value, char *err, size_t errlen)
{
    const dp_strlist *l = value;
    if (l->n == 0) {
        snprintf(err, errlen, "at least one host key file is needed");
        return -1;
    }
    for (size_t i = 0; i < l->n; i++) {
        if (access(l->v[i], R_OK) != 0) {
            snprintf(err, errlen, "%s: %s", l->v[i], strerror(errno));
            return -1;
        }
    }
    return 0;
}

static int check_readable(const void *value, char *err, size_t errlen)
{
    const char *const *s = value;
    if (*s != NULL && (*s)[0] != '\0' && access(*s, R_OK) != 0) {
        snprintf(err, errlen, "%s: %s", *s, strerror(errno));
        return -1;
    }
    return 0;
}

/* Cross-key checks (dp_daemon_def.check), after every key passed its own. */
static int sshp_check(const void *conf, const dp_conf_src *src, char *err, size_t errlen)
{
    char why[512], where[256];
    if (sshp_check_hostkeys_cover(conf, why, sizeof why) != 0) {
        snprintf(err, errlen, "%s: ssh.hostkey_algorithms: %s",
                 dp_conf_where(src, "ssh.hostkey_algorithms", where, sizeof where), why);
        return -1;
    }
    return 0;
}

#define OFF(f) offsetof(sshp_conf, f)
#define R DP_CONF_RELOADABLE
static const dp_conf_entry sshp_entries[] = {
    DP_CONF_LIST_KEY("ssh.host_keys", OFF(host_keys), 8, DP_CONF_REQUIRED,
                     "the proxy's host key files (ed25519, ecdsa, rsa)", .check = check_host_keys),
    DP_CONF_STRING_KEY("ssh.proxy_key", OFF(proxy_key), "", 0, 4096, 0,
                       "private key the proxy logs in to backends with, for public-key clients",
                       .check = check_readable),
    DP_CONF_STRING_KEY(
        "ssh.known_hosts", OFF(known_hosts), "", 0, 4096, R,
        "known_hosts file for backends whose route has no host-key pin; empty = refuse them",
        .check = check_readable),
    DP_CONF_INT_KEY("ssh.login_grace_ms", OFF(login_grace_ms), "120000", 1000, 600000, R,
                    "deadline for handshake and authentication"),
    DP_CONF_INT_KEY("ssh.max_auth_tries", OFF(max_auth_tries), "6", 1, 100, R,
                    "failed authentication attempts before disconnecting"),
    DP_CONF_INT_KEY("ssh.max_startups", OFF(max_startups), "1000", 1, 1000000, R,
                    "concurrent unauthenticated connections, total"),
    DP_CONF_INT_KEY("ssh.max_startups_per_ip", OFF(max_startups_per_ip), "100", 1, 1000000, R,
                    "concurrent unauthenticated connections per client address"),
    DP_CONF_INT_KEY("ssh.connect_timeout_ms", OFF(connect_timeout_ms), "30000", 100, 120000, R,
                    "deadline for the backend's TCP connect (and name lookup)"),
    DP_CONF_INT_KEY(
        "ssh.backend_handshake_timeout_ms", OFF(handshake_timeout_ms), "60000", 1000, 600000, R,
        "deadline for the SSH handshake with the backend (banner, key exchange, host key)"),
    DP_CONF_INT_KEY("ssh.idle_timeout_s", OFF(idle_timeout_s), "0", 0, 604800, R,
                    "close sessions idle this long; 0 = never"),
    DP_CONF_INT_KEY(
        "ssh.channel_buffer", OFF(channel_buffer), "2097152", 1310720, 67108864, R,
        "per channel and direction staging cap, bytes (>= 1.25 MiB: libssh 0.10 window)"),
    DP_CONF_INT_KEY(
        "ssh.auth_fail_delay_ms", OFF(auth_fail_delay_ms), "2000", 0, 30000, R,
        "delay (+-25 %) before refusing an unknown user: a wrong password costs about this much on "
        "the backend (PAM)"),
    DP_CONF_STRING_KEY("ssh.version", OFF(version), "dynproxy", 1, 64, 0,
                       "software version in the SSH banner (SSH-2.0-<this>)"),
    DP_CONF_STRING_KEY("ssh.kex_algorithms", OFF(kex_algorithms), SSHP_DEFAULT_KEX, 0, 4096, 0,
                       "key exchange methods offered to clients, comma-separated, preferred first",
                       .check = sshp_check_kex),
    DP_CONF_STRING_KEY("ssh.ciphers", OFF(ciphers), SSHP_DEFAULT_CIPHERS, 0, 4096, 0,
                       "ciphers offered to clients, comma-separated, preferred first",
                       .check = sshp_check_ciphers),
    DP_CONF_STRING_KEY("ssh.macs", OFF(macs), SSHP_DEFAULT_MACS, 0, 4096, 0,
                       "MACs offered to clients (AEAD ciphers need none), comma-separated",
                       .check = sshp_check_macs),
    DP_CONF_STRING_KEY(
        "ssh.hostkey_algorithms", OFF(hostkey_algorithms), SSHP_DEFAULT_HOSTKEY_ALGOS, 0, 4096, 0,
        "host key signature algorithms offered to clients", .check = sshp_check_hostkey_algos),
};
#undef R
#undef OFF
static const dp_conf_table sshp_table = {sshp_entries,
                                         sizeof sshp_entries / sizeof sshp_entries[0]};

/* ---- libssh's log goes into ours (its settings are per thread) ---- */

/* libssh's own lines go to debug: its "warnings" are mostly expected events (the empty
 * known_hosts we give it, a client's hostkeys-00 global request), and every real failure is
 * logged by our code with ssh_get_error() and the session prefix. */
static void libssh_log(int priority, const char *function, const char *buffer, void *userdata)
{
    (void)userdata;
    (void)priority;
    dp_log_msg(DP_LOG_DEBUG, function, "lib=libssh", "%s", buffer);
}

/* ---- worker lifecycle ---- */

static int bind_set(ssh_bind b, enum ssh_bind_options_e opt, const void *v, const char *what)
{
    if (ssh_bind_options_set(b, opt, v) != SSH_OK) {
        dp_log_error("ssh_bind option %s: %s", what, ssh_get_error(b));
        return -EINVAL;
    }
    return 0;
}

/* Read ssh.known_hosts once, at start (never on the loop later). Plain host names only:
 * hashed entries (|1|...) cannot be matched against a route address and are skipped. */
static int load_known_hosts(sshp_worker *sw, const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        dp_log_error("ssh.known_hosts %s: %s", path, strerror(errno));
        return -errno;
    }
    char line[16384];
    unsigned lineno = 0, hashed = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        lineno++;
        char *save = NULL;
        char *hosts = strtok_r(line, " \t\r\n", &save);
        if (hosts == NULL || hosts[0] == '#' || hosts[0] == '@')
            continue;
        if (hosts[0] == '|') {
            hashed++;
            continue;
        }
        char *type = strtok_r(NULL, " \t\r\n", &save);
        char *b64 = strtok_r(NULL, " \t\r\n", &save);
        ssh_key key = NULL;
        if (type == NULL || b64 == NULL ||
            ssh_pki_import_pubkey_base64(b64, ssh_key_type_from_name(type), &key) != SSH_OK) {
            dp_log_warn("ssh.known_hosts %s:%u: not a host key line, skipped", path, lineno);
            continue;
        }
        ssh_key_free(key);
        enum ssh_keytypes_e ktype = ssh_key_type_from_name(type);
        char *hsave = NULL;
        for (char *h = strtok_r(hosts, ",", &hsave); h != NULL; h = strtok_r(NULL, ",", &hsave)) {
            ssh_key *nk = realloc(sw->known_keys, (sw->nknown + 1) * sizeof *nk);
            char **nn = realloc(sw->known_names, (sw->nknown + 1) * sizeof *nn);
            if (nk != NULL)
                sw->known_keys = nk;
            if (nn != NULL)
                sw->known_names = nn;
            if (nk == NULL || nn == NULL)
                break;
            /* One key object per name (import again: libssh has no public-key dup). */
            ssh_key k = NULL;
            char *name = strdup(h);
            if (name == NULL || ssh_pki_import_pubkey_base64(b64, ktype, &k) != SSH_OK) {
                free(name);
                break;
            }
            sw->known_names[sw->nknown] = name;
            sw->known_keys[sw->nknown++] = k;
        }
    }
    fclose(f);
    if (dp_worker_index(sw->w) == 0)
        dp_log_info("ssh.known_hosts %s: %zu host entries", path, sw->nknown);
    if (hashed > 0)
        dp_log_warn("ssh.known_hosts %s: %u hashed entries skipped (pin those backends instead)",
                    path, hashed);
    return 0;
}

static int sshp_start(dp_worker *w)
{
    const sshp_conf *cf = sshp_conf_of(w);
    sshp_worker *sw = calloc(1, sizeof *sw);
    if (sw == NULL)
        return -ENOMEM;
    sw->w = w;
    dp_daemon_worker_set_data(w, sw);
    ssh_set_log_callback(libssh_log);
    if (dp_worker_index(w) == 0) {
#ifndef SSHP_HAVE_PTY_MODES
        dp_log_warn("libssh %s lacks deps/libssh/patches/0001: clients' terminal modes are not "
                    "forwarded (backend ptys keep their defaults)",
                    ssh_version(0));
#endif
#ifndef SSHP_HAVE_BREAK
        dp_log_warn("libssh %s lacks deps/libssh/patches/0002: 'break' requests are refused",
                    ssh_version(0));
#endif
#ifndef SSHP_HAVE_RELEASE_BUFFERS
        dp_log_warn("libssh %s lacks deps/libssh/patches/0005: idle sessions keep their largest "
                    "buffers (up to ~2 MiB each after a transfer)",
                    ssh_version(0));
#endif
    }
    ssh_set_log_level(DP_LOG_ENABLED(DP_LOG_DEBUG) ? SSH_LOG_PROTOCOL : SSH_LOG_WARN);

    sw->bind = ssh_bind_new();
    if (sw->bind == NULL)
        return -ENOMEM;
    bool no = false;
    char banner[80];
    snprintf(banner, sizeof banner, "%s", cf->version);
    int rc = bind_set(sw->bind, SSH_BIND_OPTIONS_PROCESS_CONFIG, &no, "process_config");
    for (size_t i = 0; rc == 0 && i < cf->host_keys.n; i++)
        rc = bind_set(sw->bind, SSH_BIND_OPTIONS_HOSTKEY, cf->host_keys.v[i], cf->host_keys.v[i]);
    if (rc == 0)
        rc = bind_set(sw->bind, SSH_BIND_OPTIONS_KEY_EXCHANGE, cf->kex_algorithms, "kex");
    if (rc == 0)
        rc = bind_set(sw->bind, SSH_BIND_OPTIONS_CIPHERS_C_S, cf->ciphers, "ciphers");
    if (rc == 0)
        rc = bind_set(sw->bind, SSH_BIND_OPTIONS_CIPHERS_S_C, cf->ciphers, "ciphers");
    if (rc == 0)
        rc = bind_set(sw->bind, SSH_BIND_OPTIONS_HMAC_C_S, cf->macs, "macs");
    if (rc == 0)
        rc = bind_set(sw->bind, SSH_BIND_OPTIONS_HMAC_S_C, cf->macs, "macs");
    if (rc == 0)
        rc = bind_set(sw->bind, SSH_BIND_OPTIONS_HOSTKEY_ALGORITHMS, cf->hostkey_algorithms,
                      "hostkey algorithms");
    if (rc == 0)
        rc = bind_set(sw->bind, SSH_BIND_OPTIONS_BANNER, banner, "banner");
    if (rc != 0)
        return rc;
    if (cf->known_hosts[0] != '\0' && load_known_hosts(sw, cf->known_hosts) != 0)
        return -EINVAL;
    if (cf->proxy_key[0] != '\0' &&
        ssh_pki_import_privkey_file(cf->proxy_key, NULL, NULL, NULL, &sw->proxy_key) != SSH_OK) {
        dp_log_error("cannot read ssh.proxy_key %s", cf->proxy_key);
        return -EINVAL;
    }
    return 0;
}

static void sshp_accept(dp_worker *w, const dp_conn_info *ci)
{
    sshp_conn_accept(sshp_worker_of(w), ci);
}

static void sshp_fini(dp_worker *w)
{
    sshp_worker *sw = sshp_worker_of(w);
    if (sw == NULL)
        return;
    if (sw->bind != NULL)
        ssh_bind_free(sw->bind);
    ssh_key_free(sw->proxy_key);
    for (size_t i = 0; i < sw->nknown; i++) {
        ssh_key_free(sw->known_keys[i]);
        free(sw->known_names[i]);
    }
    free(sw->known_keys);
    free(sw->known_names);
    free(sw);
}

static const dp_worker_ops sshp_ops = {sshp_start, sshp_accept, NULL, sshp_fini};

/* "libssh=0.12.2/openssl/zlib libssh_patches=pty-modes,break libssh_read_max=65536", for -V
 * and the start log. */
static char build_info[160];

static void describe_build(void)
{
    const char *patches = ""
#ifdef SSHP_HAVE_PTY_MODES
                          ",pty-modes"
#endif
#ifdef SSHP_HAVE_BREAK
                          ",break"
#endif
#ifdef SSHP_HAVE_RELEASE_BUFFERS
                          ",release-buffers"
#endif
        ;
    snprintf(build_info, sizeof build_info, "libssh=%s libssh_patches=%s libssh_read_max=%u",
             ssh_version(0), patches[0] != '\0' ? patches + 1 : "none",
             (unsigned)SSHP_LIBSSH_READ_MAX);
}

static const dp_daemon_def sshp_def = {
    .name = "sshproxy",
    .default_config = "/etc/dynproxy/sshproxy.conf",
    .table = &sshp_table,
    .conf_size = sizeof(sshp_conf),
    .check = sshp_check,
    .ops = &sshp_ops,
    .on_invalidate = sshp_keycache_drop,
    .build_info = build_info,
};

int main(int argc, char **argv)
{
    ssh_init();
    describe_build();
    int rc = dp_daemon_main(&sshp_def, argc, argv);
    ssh_finalize();
    return rc;
}
