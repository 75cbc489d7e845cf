/* test_metrics.c - dp_metrics: counting, the three renderings, and the HTTP endpoint. */
#include "dp_metrics.h"
#include "dp_test_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <regex.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MS 1000000ULL /* nanoseconds */

static char *render(dp_metrics_format fmt)
{
    char *out = NULL;
    size_t len = 0;
    ck_assert_int_eq(dp_metrics_render(fmt, &out, &len), 0);
    ck_assert_ptr_nonnull(out);
    ck_assert_uint_eq(strlen(out), len);
    return out;
}

/* `line` is one whole line of `text`. */
static bool has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return true;
    return false;
}

#define ck_assert_line(text, line)                                                                 \
    ck_assert_msg(has_line(text, line), "no line \"%s\" in:\n%s", line, text)
#define ck_assert_no_line(text, line)                                                              \
    ck_assert_msg(!has_line(text, line), "unexpected line \"%s\"", line)

/* Some known activity on a fresh registry. */
static void activity(void)
{
    dp_metrics_reset();
    dp_metrics_init("sshproxy");
    for (int i = 0; i < 3; i++)
        dp_metrics_session_opened();
    dp_metrics_session_closed(DP_SESS_OK);
    dp_metrics_session_closed(DP_SESS_OK);
    dp_metrics_session_refused();
    dp_metrics_auth_failure(DP_AUTHM_KBDINT, DP_AUTHR_WRONG_PASSWORD);
    dp_metrics_auth_failure(DP_AUTHM_PASSWORD, DP_AUTHR_UNKNOWN_USER);
    dp_metrics_auth_failure(DP_AUTHM_PASSWORD, DP_AUTHR_UNKNOWN_USER);
    dp_metrics_route_lookup(DP_LOOKUP_HIT, MS / 10 * 3); /* 0.3 ms */
    dp_metrics_route_lookup(DP_LOOKUP_MISS, MS / 10 * 7);
    dp_metrics_route_lookup(DP_LOOKUP_NEGATIVE, 3000 * MS);
    dp_metrics_route_lookup(DP_LOOKUP_ERROR, 7000 * MS); /* past the last bucket */
    dp_metrics_backend_connect(10 * MS);
    dp_metrics_bytes(100, 2000);
    dp_metrics_bytes(5, 0);
    dp_metrics_ftp_transfer(DP_XFER_UPLOAD, DP_XFER_OK);
    dp_metrics_ftp_transfer(DP_XFER_LIST, DP_XFER_ABORTED);
    dp_metrics_ctl_command("stats", 200);
    dp_metrics_ctl_command("cache flush", 200);
    dp_metrics_ctl_command("frobnicate", 400);
    dp_metrics_ctl_command("kick", 418);
}

START_TEST(prometheus_samples)
{
    activity();
    char *t = render(DP_METRICS_PROMETHEUS);
    ck_assert_line(t, "# TYPE dynproxy_build_info gauge");
    ck_assert_line(t, "dynproxy_build_info{daemon=\"sshproxy\",version=\"" DP_VERSION "\"} 1");
    ck_assert_line(t,
                   "# HELP dynproxy_sessions_total Client connections ended, by how they ended.");
    ck_assert_line(t, "# TYPE dynproxy_sessions_total counter");
    ck_assert_line(t, "dynproxy_sessions_active 1");
    ck_assert_line(t, "dynproxy_sessions_total{result=\"ok\"} 2");
    ck_assert_line(t, "dynproxy_sessions_total{result=\"refused\"} 1");
    ck_assert_line(t, "dynproxy_sessions_total{result=\"kicked\"} 0");
    ck_assert_line(t, "dynproxy_auth_failures_total{method=\"keyboard-interactive\",reason=\"wrong_"
                      "password\"} 1");
    ck_assert_line(t,
                   "dynproxy_auth_failures_total{method=\"password\",reason=\"unknown_user\"} 2");
    ck_assert_line(t, "dynproxy_route_lookups_total{result=\"negative\"} 1");
    ck_assert_line(t, "dynproxy_route_lookups_total{result=\"stale\"} 0");
    ck_assert_line(t, "dynproxy_bytes_total{direction=\"client_to_backend\"} 105");
    ck_assert_line(t, "dynproxy_bytes_total{direction=\"backend_to_client\"} 2000");
    ck_assert_line(t, "dynproxy_ftp_transfers_total{direction=\"upload\",result=\"ok\"} 1");
    ck_assert_line(t, "dynproxy_ftp_transfers_total{direction=\"list\",result=\"aborted\"} 1");
    ck_assert_line(t, "dynproxy_ftp_transfers_total{direction=\"download\",result=\"failed\"} 0");
    ck_assert_line(t, "dynproxy_ctl_commands_total{command=\"stats\",code=\"200\"} 1");
    ck_assert_line(t, "dynproxy_ctl_commands_total{command=\"cache_flush\",code=\"200\"} 1");
    ck_assert_line(t, "dynproxy_ctl_commands_total{command=\"other\",code=\"400\"} 1");
    ck_assert_line(t, "dynproxy_ctl_commands_total{command=\"kick\",code=\"other\"} 1");
    /* commands never seen are not listed */
    ck_assert_ptr_null(strstr(t, "command=\"help\""));
    free(t);
}
END_TEST

START_TEST(prometheus_histograms)
{
    activity();
    char *t = render(DP_METRICS_PROMETHEUS);
    ck_assert_line(t, "# TYPE dynproxy_route_lookup_seconds histogram");
    /* cumulative buckets: 0.3 ms, 0.7 ms, 3 s, 7 s */
    ck_assert_line(t, "dynproxy_route_lookup_seconds_bucket{le=\"0.0005\"} 1");
    ck_assert_line(t, "dynproxy_route_lookup_seconds_bucket{le=\"0.001\"} 2");
    ck_assert_line(t, "dynproxy_route_lookup_seconds_bucket{le=\"2.5\"} 2");
    ck_assert_line(t, "dynproxy_route_lookup_seconds_bucket{le=\"5\"} 3");
    ck_assert_line(t, "dynproxy_route_lookup_seconds_bucket{le=\"+Inf\"} 4");
    ck_assert_line(t, "dynproxy_route_lookup_seconds_sum 10.001000000");
    ck_assert_line(t, "dynproxy_route_lookup_seconds_count 4");
    /* a value on a bound falls in that bucket (le = less or equal) */
    ck_assert_line(t, "dynproxy_backend_connect_seconds_bucket{le=\"0.005\"} 0");
    ck_assert_line(t, "dynproxy_backend_connect_seconds_bucket{le=\"0.01\"} 1");
    ck_assert_line(t, "dynproxy_backend_connect_seconds_bucket{le=\"10\"} 1");
    ck_assert_line(t, "dynproxy_backend_connect_seconds_bucket{le=\"+Inf\"} 1");
    ck_assert_line(t, "dynproxy_backend_connect_seconds_sum 0.010000000");
    ck_assert_line(t, "dynproxy_backend_connect_seconds_count 1");
    free(t);
}
END_TEST

/* Every line is a comment (# HELP / # TYPE, HELP first, TYPE once per family, before its
 * samples) or a sample "name{labels} value" of the family last typed. */
START_TEST(prometheus_syntax)
{
    activity();
    char *t = render(DP_METRICS_PROMETHEUS);
    regex_t sample, help, type;
    ck_assert_int_eq(regcomp(&sample,
                             "^([a-z_]+)(\\{[a-z_]+=\"[^\"]*\"(,[a-z_]+=\"[^\"]*\")*\\})? "
                             "[0-9]+(\\.[0-9]+)?$",
                             REG_EXTENDED),
                     0);
    ck_assert_int_eq(regcomp(&help, "^# HELP ([a-z_]+) [^\n]+$", REG_EXTENDED), 0);
    ck_assert_int_eq(regcomp(&type, "^# TYPE ([a-z_]+) (counter|gauge|histogram)$", REG_EXTENDED),
                     0);
    char family[128] = "", helped[128] = "", kind[16] = "";
    int families = 0, samples = 0;
    ck_assert(t[strlen(t) - 1] == '\n');
    for (char *save = NULL, *line = strtok_r(t, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        regmatch_t m[3];
        if (regexec(&help, line, 3, m, 0) == 0) {
            snprintf(helped, sizeof helped, "%.*s", (int)(m[1].rm_eo - m[1].rm_so),
                     line + m[1].rm_so);
        } else if (regexec(&type, line, 3, m, 0) == 0) {
            snprintf(family, sizeof family, "%.*s", (int)(m[1].rm_eo - m[1].rm_so),
                     line + m[1].rm_so);
            snprintf(kind, sizeof kind, "%.*s", (int)(m[2].rm_eo - m[2].rm_so), line + m[2].rm_so);
            ck_assert_str_eq(family, helped);
            families++;
        } else {
            ck_assert_msg(regexec(&sample, line, 3, m, 0) == 0, "bad line: %s", line);
            char name[128];
            snprintf(name, sizeof name, "%.*s", (int)(m[1].rm_eo - m[1].rm_so), line + m[1].rm_so);
            size_t fl = strlen(family);
            bool ok = strcmp(name, family) == 0 ||
                      (strcmp(kind, "histogram") == 0 && strncmp(name, family, fl) == 0 &&
                       (strcmp(name + fl, "_bucket") == 0 || strcmp(name + fl, "_sum") == 0 ||
                        strcmp(name + fl, "_count") == 0));
            ck_assert_msg(ok, "sample %s outside its family %s", name, family);
            if (strcmp(kind, "counter") == 0)
                ck_assert_msg(strstr(name, "_total") != NULL, "counter %s without _total", name);
            samples++;
        }
    }
    ck_assert_int_eq(families, 11);
    ck_assert_int_gt(samples, 60);
    regfree(&sample);
    regfree(&help);
    regfree(&type);
    free(t);
}
END_TEST

START_TEST(kv_format)
{
    activity();
    char *t = render(DP_METRICS_KV);
    ck_assert(strncmp(t, "key\tvalue\n", 10) == 0);
    ck_assert_line(t, "dynproxy_sessions_total{result=\"ok\"}\t2");
    ck_assert_line(t, "dynproxy_sessions_active\t1");
    ck_assert_line(t, "dynproxy_route_lookup_seconds_bucket{le=\"+Inf\"}\t4");
    ck_assert_ptr_null(strstr(t, "# "));
    /* two columns on every line */
    for (char *save = NULL, *line = strtok_r(t, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        char *tab = strchr(line, '\t');
        ck_assert_msg(tab != NULL && strchr(tab + 1, '\t') == NULL, "line: %s", line);
    }
    free(t);
}
END_TEST

START_TEST(json_format)
{
    activity();
    char *t = render(DP_METRICS_JSON);
    size_t n = strlen(t);
    ck_assert(n > 3 && t[0] == '{' && t[n - 2] == '}' && t[n - 1] == '\n');
    ck_assert_ptr_nonnull(strstr(t, "{\"dynproxy_build_info{daemon=\\\"sshproxy\\\","));
    ck_assert_ptr_nonnull(strstr(t, ",\"dynproxy_sessions_total{result=\\\"ok\\\"}\":2,"));
    ck_assert_ptr_nonnull(strstr(t, ",\"dynproxy_route_lookup_seconds_sum\":10.001000000,"));
    ck_assert_ptr_null(strchr(t, '\t'));
    ck_assert_ptr_null(strstr(t, ",,"));
    ck_assert_ptr_null(strstr(t, ",}"));
    free(t);
}
END_TEST

START_TEST(render_errors)
{
    char *out = (char *)"untouched";
    ck_assert_int_eq(dp_metrics_render((dp_metrics_format)42, &out, NULL), -EINVAL);
    ck_assert_str_eq(out, "untouched");
}
END_TEST

static void *count_thread(void *arg)
{
    (void)arg;
    for (int i = 0; i < 100000; i++) {
        dp_metrics_session_opened();
        dp_metrics_bytes(1, 2);
        dp_metrics_route_lookup(DP_LOOKUP_HIT, 1000);
        dp_metrics_session_closed(DP_SESS_TIMEOUT);
    }
    return NULL;
}

START_TEST(threads_count_exactly)
{
    dp_metrics_reset();
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, count_thread, NULL), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    char *t = render(DP_METRICS_PROMETHEUS);
    ck_assert_line(t, "dynproxy_sessions_total{result=\"timeout\"} 400000");
    ck_assert_line(t, "dynproxy_sessions_active 0");
    ck_assert_line(t, "dynproxy_bytes_total{direction=\"backend_to_client\"} 800000");
    ck_assert_line(t, "dynproxy_route_lookup_seconds_count 400000");
    ck_assert_line(t, "dynproxy_route_lookup_seconds_sum 0.400000000");
    free(t);
}
END_TEST

/* ---- the endpoint ---- */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &al), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* One HTTP/1.0 request; returns the whole response (malloc'd). */
static char *http(int port, const char *request)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(write(fd, request, strlen(request)), (ssize_t)strlen(request));
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    ssize_t n;
    while ((n = read(fd, buf + len, cap - len - 1)) > 0)
        len += (size_t)n;
    buf[len] = '\0';
    close(fd);
    return buf;
}

START_TEST(http_endpoint)
{
    activity();
    int port = free_port();
    char addr[32], err[256];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    ck_assert_int_eq(dp_metrics_http_start(addr, err, sizeof err), 0);
    ck_assert_int_eq(dp_metrics_http_start(addr, err, sizeof err), -EALREADY);

    char *r = http(port, "GET /metrics HTTP/1.0\r\n\r\n");
    ck_assert_msg(strncmp(r, "HTTP/1.0 200", 12) == 0 || strncmp(r, "HTTP/1.1 200", 12) == 0, "%s",
                  r);
    ck_assert_ptr_nonnull(strstr(r, "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    ck_assert_ptr_nonnull(strstr(r, "\ndynproxy_sessions_total{result=\"ok\"} 2\n"));
    free(r);
    r = http(port, "GET /other HTTP/1.0\r\n\r\n");
    ck_assert_msg(strstr(r, " 404 ") != NULL, "%s", r);
    free(r);
    r = http(port, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
    ck_assert_msg(strstr(r, " 405 ") != NULL, "%s", r);
    free(r);

    dp_metrics_http_stop();
    dp_metrics_http_stop(); /* idempotent */
    /* the port is free again */
    ck_assert_int_eq(dp_metrics_http_start(addr, err, sizeof err), 0);
    dp_metrics_http_stop();
}
END_TEST

START_TEST(http_errors)
{
    char err[256];
    ck_assert_int_eq(dp_metrics_http_start("localhost:9100", err, sizeof err), -EINVAL);
    ck_assert_ptr_nonnull(strstr(err, "not ip:port"));
    ck_assert_int_eq(dp_metrics_http_start("127.0.0.1", err, sizeof err), -EINVAL);
    int port = free_port();
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(listen(fd, 1), 0);
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    ck_assert_int_eq(dp_metrics_http_start(addr, err, sizeof err), -EADDRINUSE);
    ck_assert_ptr_nonnull(strstr(err, "Address already in use"));
    close(fd);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, prometheus_samples);
    tcase_add_test(tc, prometheus_histograms);
    tcase_add_test(tc, prometheus_syntax);
    tcase_add_test(tc, kv_format);
    tcase_add_test(tc, json_format);
    tcase_add_test(tc, render_errors);
    tcase_add_test(tc, threads_count_exactly);
    tcase_add_test(tc, http_endpoint);
    tcase_add_test(tc, http_errors);
    suite_add_tcase(s, tc);
    return dp_test_run_suite(s);
}
