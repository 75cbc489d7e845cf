/* dp_sockstat.h - what the kernel says about a TCP socket's traffic. */
#ifndef DP_SOCKSTAT_H
#define DP_SOCKSTAT_H

#include <stdint.h>

/* Bytes the application has read from a connected TCP socket so far: what TCP received
 * (tcpi_bytes_received, RFC 4898) minus what still waits in the receive queue (SIOCINQ). For
 * a peer that floods, this is what the process took in, whatever its allocator did with it.
 * Returns 0 and sets *out, or a negative errno (-ENOTSUP on a kernel older than 4.1). */
int dp_sock_bytes_read(int fd, uint64_t *out);

#endif
