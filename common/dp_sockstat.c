/* dp_sockstat.c - TCP socket counters (linux/tcp.h: glibc's struct tcp_info stops short of
 * tcpi_bytes_received, and the two headers cannot be included together). */
#include "dp_sockstat.h"

#include <errno.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#ifndef SOL_TCP
#define SOL_TCP 6
#endif

int dp_sock_bytes_read(int fd, uint64_t *out)
{
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    if (getsockopt(fd, SOL_TCP, TCP_INFO, &ti, &len) != 0)
        return -errno;
    if (len < offsetof(struct tcp_info, tcpi_bytes_received) + sizeof ti.tcpi_bytes_received)
        return -ENOTSUP;
    int queued = 0;
    if (ioctl(fd, SIOCINQ, &queued) != 0)
        return -errno;
    uint64_t rx = ti.tcpi_bytes_received;
    *out = rx > (uint64_t)queued ? rx - (uint64_t)queued : 0;
    return 0;
}
