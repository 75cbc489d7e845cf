/*
 * dp_proxyproto.h - PROXY protocol v1 (text) and v2 (binary) header parsing, as sent by
 * HAProxy, LVS and cloud load balancers in front of the proxy.
 * Spec: https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt
 *
 * Parsing is a pure function over a byte buffer; dp_proxy_reader.h applies it to a socket
 * without ever consuming a byte past the header (SSH clients send their banner at once).
 */
#ifndef DP_PROXYPROTO_H
#define DP_PROXYPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#define DP_PROXY_V1_MAX 107       /* longest v1 line including CRLF (spec section 2.1) */
#define DP_PROXY_V2_FIXED 16      /* signature + ver/cmd + family + length */
#define DP_PROXY_DEFAULT_MAX 1024 /* default cap on a whole v2 header including TLVs */

typedef struct dp_proxy_info {
    int version; /* 1 or 2 */
    bool local;  /* v2 LOCAL command or v1 "UNKNOWN": keep the socket's real addresses */
    struct sockaddr_storage src; /* original client, valid when !local */
    struct sockaddr_storage dst; /* address the client connected to, valid when !local */
    socklen_t src_len;
    socklen_t dst_len;
} dp_proxy_info;

/*
 * Parse a PROXY header at the start of buf[0..len).
 * Returns the header's length (> 0) when a complete, valid header is there;
 *   0 when the bytes so far are a valid prefix and more are needed;
 *   -EPROTO when the bytes are not a valid header (bad signature, bad syntax, bad address,
 *           ports out of range, unsupported version/command/family);
 *   -EMSGSIZE when the header is (or would be) longer than max_len (v1 is always capped at
 *           DP_PROXY_V1_MAX whatever max_len says).
 * v2 TLVs are skipped (length-checked). v2 families AF_UNIX/UNSPEC and transports other than
 * STREAM are accepted as `local` (no usable address), as the spec says receivers may.
 */
ssize_t dp_proxy_parse(const uint8_t *buf, size_t len, size_t max_len, dp_proxy_info *out);

#endif
