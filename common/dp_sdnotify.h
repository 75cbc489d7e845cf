/*
 * dp_sdnotify.h - systemd's notification protocol (sd_notify(3)) for Type=notify units.
 *
 * Every call is a no-op returning 0 when NOTIFY_SOCKET is unset (not started by systemd).
 * Otherwise each sends one datagram and returns 0 or a negative errno; callers may ignore it
 * (systemd missing a message is not a reason to stop serving). Main thread only.
 */
#ifndef DP_SDNOTIFY_H
#define DP_SDNOTIFY_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

/* NOTIFY_SOCKET is set. */
bool dp_sdnotify_enabled(void);

/* READY=1 (start, or the end of a reload), with STATUS=<status> when status is not NULL. */
int dp_sdnotify_ready(const char *status);

/* RELOADING=1 and MONOTONIC_USEC=<now> (systemd 253's Type=notify-reload wants both; older
 * managers ignore the timestamp). Follow it with dp_sdnotify_ready when the reload is done. */
int dp_sdnotify_reloading(void);

/* STOPPING=1, with STATUS=<status> when not NULL (a stop, or a drain that began). */
int dp_sdnotify_stopping(const char *status);

/* STATUS=<formatted text> (one line; newlines become spaces). */
int dp_sdnotify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The state word the periodic status shows ("accepting", "paused", "draining", ...); a
 * string literal (kept by pointer). Any thread. */
void dp_sdnotify_set_state(const char *state);

/* Send "STATUS=<state>, <n> sessions" every `every_ms` on `loop` when it changed (the count
 * is dp_metrics_sessions_active()). The timer does not keep the loop alive. No-op (0) when
 * NOTIFY_SOCKET is unset; else 0 or a negative errno. */
int dp_sdnotify_status_timer_start(uv_loop_t *loop, uint64_t every_ms);
/* Close that timer (before the loop is closed); no-op when it is not running. */
void dp_sdnotify_status_timer_stop(void);

#endif
