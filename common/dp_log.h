/*
 * dp_log.h - logfmt logging: one line per event on stderr (journald adds the timestamp when
 * run by systemd; we add ts= anyway so plain files and tests read the same).
 *
 *   ts=2026-11-25T17:40:00.123Z level=info daemon=sshproxy func=sshp_auth_done sid=7f3a user=alice
 * msg="backend login ok"
 *
 * Every line names the function (`func=`), as OpenSSH's error_f does, and a session's lines carry
 * the session's prefix (`sid=... user=... client=...`), as pgbouncer's slog_* do.
 * Never pass a secret (password, key material, conninfo) to these functions: there is no
 * redaction layer, by design nothing secret reaches the logger in the first place.
 * Thread-safe: a line is formatted into a stack buffer and written with one write(2).
 */
#ifndef DP_LOG_H
#define DP_LOG_H

#include <stdarg.h>
#include <stddef.h>

typedef enum dp_log_level {
    DP_LOG_ERROR = 0,
    DP_LOG_WARN = 1,
    DP_LOG_INFO = 2,
    DP_LOG_DEBUG = 3,
} dp_log_level;

#define DP_LOG_LINE_MAX 2048

/* Set the daemon name written as daemon=... and the output fd (default 2). */
void dp_log_init(const char *daemon, int fd);
void dp_log_set_level(dp_log_level level);
dp_log_level dp_log_get_level(void);

/* "error" / "warn" / "info" / "debug" -> level; returns 0 or -EINVAL. */
int dp_log_level_parse(const char *text, dp_log_level *out);
const char *dp_log_level_name(dp_log_level level);

/* Free text goes into msg="..." (escaped). `prefix` is a ready logfmt fragment or NULL. */
void dp_log_msg(dp_log_level level, const char *func, const char *prefix, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void dp_log_vmsg(dp_log_level level, const char *func, const char *prefix, const char *fmt,
                 va_list ap);

/* An event line: `event=NAME` followed by caller-formatted logfmt pairs (use dp_logq for
 * values that may hold spaces or quotes). */
void dp_log_event(dp_log_level level, const char *prefix, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Quote `value` for logfmt when needed (spaces, '=', quotes, control bytes are escaped).
 * Writes into buf and returns it. Truncates safely. */
const char *dp_logq(char *buf, size_t len, const char *value);

#define DP_LOG_ENABLED(lvl) ((lvl) <= dp_log_get_level())

#define dp_log_error(...) dp_log_msg(DP_LOG_ERROR, __func__, NULL, __VA_ARGS__)
#define dp_log_warn(...) dp_log_msg(DP_LOG_WARN, __func__, NULL, __VA_ARGS__)
#define dp_log_info(...) dp_log_msg(DP_LOG_INFO, __func__, NULL, __VA_ARGS__)
#define dp_log_debug(...)                                                                          \
    do {                                                                                           \
        if (DP_LOG_ENABLED(DP_LOG_DEBUG))                                                          \
            dp_log_msg(DP_LOG_DEBUG, __func__, NULL, __VA_ARGS__);                                 \
    } while (0)

/* Session variants: `p` is the session's logfmt prefix string. */
#define dp_slog_error(p, ...) dp_log_msg(DP_LOG_ERROR, __func__, (p), __VA_ARGS__)
#define dp_slog_warn(p, ...) dp_log_msg(DP_LOG_WARN, __func__, (p), __VA_ARGS__)
#define dp_slog_info(p, ...) dp_log_msg(DP_LOG_INFO, __func__, (p), __VA_ARGS__)
#define dp_slog_debug(p, ...)                                                                      \
    do {                                                                                           \
        if (DP_LOG_ENABLED(DP_LOG_DEBUG))                                                          \
            dp_log_msg(DP_LOG_DEBUG, __func__, (p), __VA_ARGS__);                                  \
    } while (0)

#endif
