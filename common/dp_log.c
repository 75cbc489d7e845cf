/* dp_log.c - logfmt lines on one fd, one write(2) per line. */
#include "dp_log.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static const char *log_daemon = "dynproxy";
static int log_fd = 2;
static _Atomic int log_level = DP_LOG_INFO;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void dp_log_init(const char *daemon, int fd)
{
    if (daemon != NULL)
        log_daemon = daemon;
    log_fd = fd;
}

void dp_log_set_level(dp_log_level level)
{
    atomic_store(&log_level, (int)level);
}

dp_log_level dp_log_get_level(void)
{
    return (dp_log_level)atomic_load(&log_level);
}

int dp_log_level_parse(const char *text, dp_log_level *out)
{
    for (size_t i = 0; i < sizeof level_names / sizeof level_names[0]; i++) {
        if (strcasecmp(text, level_names[i]) == 0) {
            *out = (dp_log_level)i;
            return 0;
        }
    }
    return -EINVAL;
}

const char *dp_log_level_name(dp_log_level level)
{
    if ((unsigned)level < sizeof level_names / sizeof level_names[0])
        return level_names[level];
    return "unknown";
}

/* Append an escaped logfmt string value (always quoted) at buf+*pos; never overflows. */
static void append_quoted(char *buf, size_t len, size_t *pos, const char *s)
{
    size_t p = *pos;
    if (p + 1 >= len)
        return;
    buf[p++] = '"';
    for (; *s != '\0' && p + 5 < len; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[p++] = '\\';
            buf[p++] = (char)c;
        } else if (c == '\n') {
            buf[p++] = '\\';
            buf[p++] = 'n';
        } else if (c < 0x20 || c == 0x7f) {
            p += (size_t)snprintf(buf + p, len - p, "\\x%02x", c);
        } else {
            buf[p++] = (char)c;
        }
    }
    if (p + 1 < len)
        buf[p++] = '"';
    buf[p] = '\0';
    *pos = p;
}

const char *dp_logq(char *buf, size_t len, const char *value)
{
    if (len == 0)
        return "";
    if (value == NULL)
        value = "";
    int plain = value[0] != '\0';
    for (const char *s = value; *s != '\0' && plain; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= 0x20 || c == '"' || c == '=' || c == '\\' || c == 0x7f)
            plain = 0;
    }
    if (plain) {
        snprintf(buf, len, "%s", value);
        return buf;
    }
    size_t pos = 0;
    buf[0] = '\0';
    append_quoted(buf, len, &pos, value);
    return buf;
}

static size_t line_head(char *buf, size_t len, dp_log_level level)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(buf, len, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s daemon=%s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, dp_log_level_name(level), log_daemon);
    return n < 0 ? 0 : ((size_t)n < len ? (size_t)n : len - 1);
}

static void append(char *buf, size_t len, size_t *pos, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void append(char *buf, size_t len, size_t *pos, const char *fmt, ...)
{
    if (*pos + 1 >= len)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *pos, len - *pos, fmt, ap);
    va_end(ap);
    if (n > 0)
        *pos = (*pos + (size_t)n < len) ? *pos + (size_t)n : len - 1;
}

static void emit(char *buf, size_t pos)
{
    buf[pos++] = '\n';
    /* A short write to a pipe/journal is not retried: logging must never stall a loop. */
    ssize_t r;
    do {
        r = write(log_fd, buf, pos);
    } while (r < 0 && errno == EINTR);
}

void dp_log_vmsg(dp_log_level level, const char *func, const char *prefix, const char *fmt,
                 va_list ap)
{
    if (!DP_LOG_ENABLED(level))
        return;
    char text[DP_LOG_LINE_MAX / 2];
    vsnprintf(text, sizeof text, fmt, ap);

    char buf[DP_LOG_LINE_MAX];
    size_t len = sizeof buf - 1; /* room for '\n' */
    size_t pos = line_head(buf, len, level);
    if (func != NULL)
        append(buf, len, &pos, " func=%s", func);
    if (prefix != NULL && prefix[0] != '\0')
        append(buf, len, &pos, " %s", prefix);
    append(buf, len, &pos, " msg=");
    append_quoted(buf, len, &pos, text);
    emit(buf, pos);
}

void dp_log_msg(dp_log_level level, const char *func, const char *prefix, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    dp_log_vmsg(level, func, prefix, fmt, ap);
    va_end(ap);
}

void dp_log_event(dp_log_level level, const char *prefix, const char *event, const char *fmt, ...)
{
    if (!DP_LOG_ENABLED(level))
        return;
    char buf[DP_LOG_LINE_MAX];
    size_t len = sizeof buf - 1;
    size_t pos = line_head(buf, len, level);
    append(buf, len, &pos, " event=%s", event);
    if (prefix != NULL && prefix[0] != '\0')
        append(buf, len, &pos, " %s", prefix);
    if (fmt != NULL && fmt[0] != '\0' && pos + 2 < len) {
        buf[pos++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(buf + pos, len - pos, fmt, ap);
        va_end(ap);
        if (n > 0)
            pos = (pos + (size_t)n < len) ? pos + (size_t)n : len - 1;
    }
    emit(buf, pos);
}
