/* dp_util.h - small address and time helpers shared by every module. */
#ifndef DP_UTIL_H
#define DP_UTIL_H

/* A macro's value as a string literal: DP_STR(300) is "300". */
#define DP_STR_(x) #x
#define DP_STR(x) DP_STR_(x)

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* sizeof the concrete sockaddr for its family (0 for unknown families). */
socklen_t dp_sockaddr_len(const struct sockaddr *sa);

/* "192.0.2.1" / "2001:db8::1" (IPv4-mapped IPv6 shown as IPv4). Returns buf ("?" on error). */
const char *dp_sockaddr_ip(const struct sockaddr *sa, char *buf, size_t len);

/* "192.0.2.1:22" / "[2001:db8::1]:22". Returns buf. */
const char *dp_sockaddr_format(const struct sockaddr *sa, char *buf, size_t len);

uint16_t dp_sockaddr_port(const struct sockaddr *sa);

/* Parse a numeric "IPv4:port", "[IPv6]:port" or "*:port" (= all IPv4 and IPv6 addresses,
 * returned as [::] with dual-stack left to the caller). No DNS: names are refused (-EINVAL)
 * so that nothing on a loop thread can block on a resolver. Returns 0 or -EINVAL. */
int dp_parse_hostport(const char *text, struct sockaddr_storage *out, socklen_t *outlen);

/* The outcome of a non-blocking connect whose socket polled writable, or whose poll failed
 * with `poll_status` (< 0): 0 or a negative errno. The socket's own error comes first: libuv
 * reports POLLERR as UV_EBADF, which would hide "Connection refused". */
int dp_sock_connect_result(int fd, int poll_status);

/* Monotonic milliseconds. */
uint64_t dp_now_ms(void);

#endif
