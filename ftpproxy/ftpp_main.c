/* ftpp_main.c - ftpproxy: configuration table, per-worker state, daemon entry. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dp_log.h"
#include "ftpp.h"

static int check_address(const void *value, char *err, size_t errlen)
{
    const char *const *s = value;
    unsigned char buf[16];
    if (*s == NULL || (*s)[0] == '\0' || inet_pton(AF_INET, *s, buf) == 1 ||
        inet_pton(AF_INET6, *s, buf) == 1)
        return 0;
    snprintf(err, errlen, "\"%s\" is not a numeric IPv4 or IPv6 address", *s);
    return -1;
}

/* Text sent after a reply code: one line, no control bytes (a CR/LF would let the config
 * forge extra replies). */
static int check_reply_text(const void *value, char *err, size_t errlen)
{
    const char *const *s = value;
    for (const char *p = *s; p != NULL && *p != '\0'; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            snprintf(err, errlen, "control characters are not allowed in reply text");
            return -1;
        }
    }
    return 0;
}

/* 0 keeps autotuning; a tiny fixed buffer would throttle every transfer. */
static int check_data_sndbuf(const void *value, char *err, size_t errlen)
{
    int v = *(const int *)value;
    if (v != 0 && v < 65536) {
        snprintf(err, errlen, "0 (kernel autotuning) or at least 65536 bytes");
        return -1;
    }
    return 0;
}

#define OFF(f) offsetof(ftpp_conf, f)
#define R DP_CONF_RELOADABLE
static const dp_conf_entry ftpp_entries[] = {
    DP_CONF_STRING_KEY("ftp.greeting", OFF(greeting), "dynproxy FTP proxy ready", 1, 200, R,
                       "text of the proxy's own 220 greeting", .check = check_reply_text),
    DP_CONF_INT_KEY(
        "ftp.passive_port_min", OFF(passive_port_min), "0", 0, 65535, R,
        "lowest port of the client-facing passive listeners (0 with max 0 = any free port)"),
    DP_CONF_INT_KEY("ftp.passive_port_max", OFF(passive_port_max), "0", 0, 65535, R,
                    "highest port of the client-facing passive listeners"),
    DP_CONF_STRING_KEY(
        "ftp.masquerade_address", OFF(masquerade_address), "", 0, 64, R,
        "address written in 227 replies (NAT, load balancer); empty = the control connection's",
        .check = check_address),
    DP_CONF_INT_KEY("ftp.login_timeout_ms", OFF(login_timeout_ms), "30000", 1000, 600000, R,
                    "from the greeting to a completed login"),
    DP_CONF_INT_KEY("ftp.idle_timeout_s", OFF(idle_timeout_s), "900", 1, 604800, R,
                    "no command and no transfer progress for this long: 421 and close"),
    DP_CONF_INT_KEY("ftp.data_timeout_ms", OFF(data_timeout_ms), "30000", 100, 600000, R,
                    "deadline for a data connection to be accepted or connected"),
    DP_CONF_INT_KEY(
        "ftp.connect_timeout_ms", OFF(connect_timeout_ms), "30000", 100, 120000, R,
        "deadline for the backend's TCP connect (and name lookup); the greeting has its own"),
    DP_CONF_INT_KEY(
        "ftp.backend_reply_timeout_ms", OFF(backend_reply_timeout_ms), "60000", 1000, 600000, R,
        "deadline for each reply the backend owes during login (greeting, USER, PASS, ...)"),
    DP_CONF_INT_KEY("ftp.max_sessions", OFF(max_sessions), "10000", 1, 1000000, R,
                    "concurrent sessions, total"),
    DP_CONF_INT_KEY("ftp.max_sessions_per_ip", OFF(max_sessions_per_ip), "100", 1, 1000000, R,
                    "concurrent sessions per client address"),
    DP_CONF_INT_KEY("ftp.transfer_buffer", OFF(transfer_buffer), "1048576", 65536, 67108864, R,
                    "bytes in flight inside the proxy per transfer (splice pipe size)"),
    DP_CONF_INT_KEY(
        "ftp.data_sndbuf", OFF(data_sndbuf), "0", 0, 67108864, R,
        "SO_SNDBUF of the socket a transfer writes to (0 = kernel autotuning; capped by "
        "net.core.wmem_max)",
        .check = check_data_sndbuf),
    DP_CONF_BOOL_KEY(
        "ftp.backend_passive", OFF(backend_passive), "true", R,
        "passive mode toward backends (EPSV, then PASV); false = active (EPRT, then PORT)"),
    DP_CONF_BOOL_KEY(
        "ftp.backend_ignore_pasv_address", OFF(backend_ignore_pasv_address), "false", R,
        "connect to the backend's control address instead of the one in its 227 (NAT'd backends)"),
    DP_CONF_INT_KEY(
        "ftp.auth_fail_delay_ms", OFF(auth_fail_delay_ms), "3000", 0, 30000, R,
        "delay (+-25 %) before 530 for an unknown user, as a backend delays a wrong password"),
    DP_CONF_INT_KEY("ftp.max_login_attempts", OFF(max_login_attempts), "3", 1, 100, R,
                    "failed logins on one connection before 421 and close"),
    DP_CONF_STRING_KEY("ftp.password_prompt", OFF(password_prompt), "Please specify the password.",
                       1, 200, R, "text of every 331 (one text for known and unknown users alike)",
                       .check = check_reply_text),
};
#undef R
#undef OFF
static const dp_conf_table ftpp_table = {ftpp_entries,
                                         sizeof ftpp_entries / sizeof ftpp_entries[0]};

static int ftpp_check(const void *conf, const dp_conf_src *src, char *err, size_t errlen)
{
    const ftpp_conf *cf = conf;
    char where[256];
    if (cf->passive_port_min > cf->passive_port_max ||
        (cf->passive_port_min == 0) != (cf->passive_port_max == 0)) {
        snprintf(err, errlen, "%s: ftp.passive_port_min/max: need 1 <= min <= max (or both 0)",
                 dp_conf_where(src, "ftp.passive_port_min", where, sizeof where));
        return -1;
    }
    return 0;
}

static int ftpp_start(dp_worker *w)
{
    ftpp_worker *fw = calloc(1, sizeof *fw);
    if (fw == NULL)
        return -ENOMEM;
    fw->w = w;
    dp_daemon_worker_set_data(w, fw);
    return 0;
}

static void ftpp_accept(dp_worker *w, const dp_conn_info *ci)
{
    ftpp_sess_accept(ftpp_worker_of(w), ci);
}

static void ftpp_fini(dp_worker *w)
{
    free(ftpp_worker_of(w));
}

static const dp_worker_ops ftpp_ops = {ftpp_start, ftpp_accept, NULL, ftpp_fini};

static const dp_daemon_def ftpp_def = {
    .name = "ftpproxy",
    .default_config = "/etc/dynproxy/ftpproxy.conf",
    .table = &ftpp_table,
    .conf_size = sizeof(ftpp_conf),
    .check = ftpp_check,
    .ops = &ftpp_ops,
};

int main(int argc, char **argv)
{
    return dp_daemon_main(&ftpp_def, argc, argv);
}
