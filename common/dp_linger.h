/* dp_linger.h - close a TCP connection without losing the last thing written to it. */
#ifndef DP_LINGER_H
#define DP_LINGER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* A "lingering close" (as HTTP servers do after an error reply): closing a socket that still
 * has unread input makes the kernel send RST and drop what it had not sent yet, so a peer that
 * keeps sending (a flooder we are cutting off) never reads our last words. This sends FIN after
 * what was written (shutdown SHUT_WR), then reads and discards the peer's input, in place and
 * without keeping it, until the peer closes, `max_bytes` were discarded or `timeout_ms` passed,
 * and closes `fd`. Takes ownership of fd in every case (closed at once if the loop refuses the
 * handles). Runs on `loop`; never blocks it. */
void dp_linger_close(uv_loop_t *loop, int fd, uint64_t timeout_ms, size_t max_bytes);

#endif
