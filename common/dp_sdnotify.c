/* dp_sdnotify.c - sd_notify(3) wrappers and the periodic STATUS= line. */
#include "dp_sdnotify.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "dp_metrics.h"

static _Atomic(const char *) state_word = "accepting";
static uv_timer_t status_timer;
static bool status_timer_open;
static char last_status[128];

bool dp_sdnotify_enabled(void)
{
    const char *s = getenv("NOTIFY_SOCKET");
    return s != NULL && s[0] != '\0';
}

/* sd_notify returns > 0 when sent, 0 when NOTIFY_SOCKET is unset, < 0 (-errno) on errors. */
static int send_text(const char *text)
{
    if (!dp_sdnotify_enabled())
        return 0;
    int rc = sd_notify(0, text);
    return rc < 0 ? rc : 0;
}

/* "STATUS=" + text on one line: sd_notify's fields are newline-separated. */
static void status_field(char *buf, size_t len, const char *status)
{
    snprintf(buf, len, "STATUS=%s", status);
    for (char *p = buf; *p != '\0'; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
}

/* "<state>=1", followed by a STATUS= line when status is not NULL. */
static int send_state(const char *state, const char *status)
{
    char msg[600];
    int n = snprintf(msg, sizeof msg, "%s=1", state);
    if (status != NULL) {
        char field[512];
        status_field(field, sizeof field, status);
        snprintf(msg + n, sizeof msg - (size_t)n, "\n%s", field);
    }
    return send_text(msg);
}

int dp_sdnotify_ready(const char *status)
{
    return send_state("READY", status);
}

int dp_sdnotify_reloading(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char msg[96];
    snprintf(msg, sizeof msg, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
    return send_text(msg);
}

int dp_sdnotify_stopping(const char *status)
{
    return send_state("STOPPING", status);
}

int dp_sdnotify_status(const char *fmt, ...)
{
    if (!dp_sdnotify_enabled())
        return 0;
    char text[480], field[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    status_field(field, sizeof field, text);
    return send_text(field);
}

void dp_sdnotify_set_state(const char *state)
{
    atomic_store(&state_word, state != NULL ? state : "accepting");
}

static void status_tick(uv_timer_t *t)
{
    (void)t;
    char text[sizeof last_status];
    snprintf(text, sizeof text, "%s, %llu sessions", atomic_load(&state_word),
             (unsigned long long)dp_metrics_sessions_active());
    if (strcmp(text, last_status) == 0)
        return;
    snprintf(last_status, sizeof last_status, "%s", text);
    dp_sdnotify_status("%s", text);
}

int dp_sdnotify_status_timer_start(uv_loop_t *loop, uint64_t every_ms)
{
    if (!dp_sdnotify_enabled() || status_timer_open)
        return 0;
    int rc = uv_timer_init(loop, &status_timer);
    if (rc != 0)
        return rc;
    status_timer_open = true;
    uv_unref((uv_handle_t *)&status_timer);
    return uv_timer_start(&status_timer, status_tick, every_ms, every_ms);
}

void dp_sdnotify_status_timer_stop(void)
{
    if (!status_timer_open)
        return;
    status_timer_open = false;
    uv_close((uv_handle_t *)&status_timer, NULL);
}
