/* test_proxy_reader.c - dp_proxy_reader on a real socket pair and a libuv loop. */
#include "dp_proxy_reader.h"
#include "dp_test_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define PAYLOAD "SSH-2.0-x\r\n"
#define V1_HDR "PROXY TCP4 192.0.2.1 198.51.100.22 56324 22\r\n"

/* One test's world: a loop, a socket pair (rfd read by the reader, wfd written by the "peer"),
 * and what the callback saw. */
typedef struct fixture {
    uv_loop_t loop;
    int rfd, wfd;
    dp_proxy_reader *r;
    int calls;
    int status;
    dp_proxy_info info;
    uint64_t started_ns, called_ns;
    int done_calls;
} fixture;

static void fx_init(fixture *fx)
{
    memset(fx, 0, sizeof *fx);
    ck_assert_int_eq(uv_loop_init(&fx->loop), 0);
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    fx->rfd = sv[0];
    fx->wfd = sv[1];
    fx->r = calloc(1, sizeof *fx->r);
    ck_assert_ptr_nonnull(fx->r);
    fx->r->data = fx;
    fx->started_ns = uv_hrtime();
}

/* Everything the reader registered must be closed by now. */
static void fx_fini(fixture *fx)
{
    ck_assert_int_eq(uv_loop_close(&fx->loop), 0);
    if (fx->wfd >= 0)
        close(fx->wfd);
    close(fx->rfd);
}

static void on_header(dp_proxy_reader *r, int status, const dp_proxy_info *info)
{
    fixture *fx = r->data;
    fx->calls++;
    fx->status = status;
    fx->called_ns = uv_hrtime();
    ck_assert_ptr_nonnull(info);
    fx->info = *info;
    /* Documented as safe: the reader is done with its memory. */
    free(r);
    fx->r = NULL;
}

static void on_cancel_done(dp_proxy_reader *r)
{
    fixture *fx = r->data;
    fx->done_calls++;
    free(r);
    fx->r = NULL;
}

static void send_all(int fd, const void *buf, size_t len)
{
    ck_assert_int_eq(send(fd, buf, len, MSG_NOSIGNAL), (ssize_t)len);
}

/* Whatever is still queued on the reader's side of the pair. */
static size_t drain(int fd, char *out, size_t cap)
{
    ssize_t n = recv(fd, out, cap, MSG_DONTWAIT);
    if (n < 0) {
        ck_assert_int_eq(errno, EAGAIN);
        return 0;
    }
    return (size_t)n;
}

static size_t v2_tcp4(uint8_t *out, size_t tlv_bytes)
{
    static const uint8_t sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                    0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
    const uint8_t addr[12] = {192, 0, 2, 1, 198, 51, 100, 22, 0xdc, 0x04, 0x00, 0x16};
    size_t body = 12 + tlv_bytes;
    memcpy(out, sig, 12);
    out[12] = 0x21;
    out[13] = 0x11;
    out[14] = (uint8_t)(body >> 8);
    out[15] = (uint8_t)body;
    memcpy(out + 16, addr, 12);
    if (tlv_bytes > 0) {
        /* One PP2_TYPE_NOOP TLV filling the rest. */
        out[28] = 0x04;
        out[29] = (uint8_t)((tlv_bytes - 3) >> 8);
        out[30] = (uint8_t)(tlv_bytes - 3);
        memset(out + 31, 'n', tlv_bytes - 3);
    }
    return 16 + body;
}

static void check_src(const fixture *fx)
{
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&fx->info.src;
    ck_assert_int_eq(fx->info.src_len, sizeof *sin);
    ck_assert_int_eq(sin->sin_family, AF_INET);
    ck_assert_uint_eq(sin->sin_port, htons(56324));
    ck_assert_uint_eq(sin->sin_addr.s_addr, htonl(0xc0000201));
    const struct sockaddr_in *dst = (const struct sockaddr_in *)&fx->info.dst;
    ck_assert_uint_eq(dst->sin_port, htons(22));
}

/* Header and payload in a single write: the payload must still be queued afterwards. */
static void one_write(const uint8_t *hdr, size_t hlen, int version)
{
    fixture fx;
    fx_init(&fx);
    uint8_t buf[4096];
    memcpy(buf, hdr, hlen);
    memcpy(buf + hlen, PAYLOAD, strlen(PAYLOAD));
    send_all(fx.wfd, buf, hlen + strlen(PAYLOAD));
    ck_assert_int_eq(dp_proxy_reader_start(fx.r, &fx.loop, fx.rfd, 0, 2000, on_header), 0);
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(fx.calls, 1);
    ck_assert_int_eq(fx.status, 0);
    ck_assert_int_eq(fx.info.version, version);
    check_src(&fx);
    char rest[256];
    size_t n = drain(fx.rfd, rest, sizeof rest);
    ck_assert_uint_eq(n, strlen(PAYLOAD));
    ck_assert_mem_eq(rest, PAYLOAD, n);
    fx_fini(&fx);
}

START_TEST(v1_then_payload_one_write)
{
    one_write((const uint8_t *)V1_HDR, strlen(V1_HDR), 1);
}
END_TEST

START_TEST(v2_then_payload_one_write)
{
    uint8_t hdr[1024];
    one_write(hdr, v2_tcp4(hdr, 0), 2);
    one_write(hdr, v2_tcp4(hdr, 900), 2);
}
END_TEST

/* A peer that writes its bytes in pieces, one per timer tick, and may hang up after. */
typedef struct feeder {
    uv_timer_t timer;
    int fd;
    const uint8_t *data;
    const size_t *cuts; /* end offsets of each piece, ascending */
    size_t npieces, next;
    bool hang_up;
} feeder;

static void feed_tick(uv_timer_t *t)
{
    feeder *f = t->data;
    size_t from = f->next == 0 ? 0 : f->cuts[f->next - 1];
    send_all(f->fd, f->data + from, f->cuts[f->next] - from);
    if (++f->next < f->npieces)
        return;
    uv_timer_stop(t);
    uv_close((uv_handle_t *)t, NULL);
    if (f->hang_up) {
        close(f->fd);
        f->fd = -1;
    }
}

static void feed(fixture *fx, feeder *f, const uint8_t *data, const size_t *cuts, size_t n,
                 uint64_t every_ms)
{
    memset(f, 0, sizeof *f);
    f->fd = fx->wfd;
    f->data = data;
    f->cuts = cuts;
    f->npieces = n;
    f->timer.data = f;
    ck_assert_int_eq(uv_timer_init(&fx->loop, &f->timer), 0);
    ck_assert_int_eq(uv_timer_start(&f->timer, feed_tick, every_ms, every_ms), 0);
}

START_TEST(split_in_three_writes)
{
    uint8_t v2buf[256];
    size_t v2len = v2_tcp4(v2buf, 20);
    memcpy(v2buf + v2len, PAYLOAD, strlen(PAYLOAD));
    uint8_t v1buf[256];
    size_t v1len = strlen(V1_HDR);
    memcpy(v1buf, V1_HDR PAYLOAD, v1len + strlen(PAYLOAD));

    /* Cuts inside the signature, inside an address, inside the TLV; the payload rides with the
     * last piece of the header. */
    const size_t v2cuts[] = {7, 22, v2len + strlen(PAYLOAD)};
    const size_t v1cuts[] = {3, 17, v1len + strlen(PAYLOAD)};
    struct {
        const uint8_t *buf;
        const size_t *cuts;
        int version;
    } cases[] = {{v2buf, v2cuts, 2}, {v1buf, v1cuts, 1}};

    for (size_t i = 0; i < 2; i++) {
        fixture fx;
        feeder f;
        fx_init(&fx);
        ck_assert_int_eq(dp_proxy_reader_start(fx.r, &fx.loop, fx.rfd, 1024, 2000, on_header), 0);
        feed(&fx, &f, cases[i].buf, cases[i].cuts, 3, 15);
        uv_run(&fx.loop, UV_RUN_DEFAULT);
        ck_assert_int_eq(fx.calls, 1);
        ck_assert_int_eq(fx.status, 0);
        ck_assert_int_eq(fx.info.version, cases[i].version);
        ck_assert_uint_eq(f.next, 3);
        check_src(&fx);
        char rest[64];
        size_t n = drain(fx.rfd, rest, sizeof rest);
        ck_assert_uint_eq(n, strlen(PAYLOAD));
        ck_assert_mem_eq(rest, PAYLOAD, n);
        fx_fini(&fx);
    }
}
END_TEST

START_TEST(byte_by_byte)
{
    uint8_t buf[128];
    size_t hlen = strlen(V1_HDR);
    memcpy(buf, V1_HDR PAYLOAD, hlen + strlen(PAYLOAD));
    size_t cuts[128];
    size_t n = hlen + strlen(PAYLOAD);
    for (size_t i = 0; i < n; i++)
        cuts[i] = i + 1;
    fixture fx;
    feeder f;
    fx_init(&fx);
    ck_assert_int_eq(dp_proxy_reader_start(fx.r, &fx.loop, fx.rfd, 1024, 5000, on_header), 0);
    feed(&fx, &f, buf, cuts, n, 1);
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(fx.calls, 1);
    ck_assert_int_eq(fx.status, 0);
    check_src(&fx);
    /* The header ends before the payload; everything after it is still queued. */
    char rest[64];
    size_t got = drain(fx.rfd, rest, sizeof rest);
    ck_assert_uint_eq(got, n - hlen);
    ck_assert_mem_eq(rest, PAYLOAD, got);
    fx_fini(&fx);
}
END_TEST

static void expect_status(const void *bytes, size_t len, bool hang_up, size_t max_len, int want,
                          uint64_t timeout_ms)
{
    fixture fx;
    fx_init(&fx);
    if (len > 0)
        send_all(fx.wfd, bytes, len);
    if (hang_up) {
        close(fx.wfd);
        fx.wfd = -1;
    }
    ck_assert_int_eq(dp_proxy_reader_start(fx.r, &fx.loop, fx.rfd, max_len, timeout_ms, on_header),
                     0);
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(fx.calls, 1);
    ck_assert_int_eq(fx.status, want);
    /* No usable info on failure. */
    ck_assert_int_eq(fx.info.src_len, 0);
    /* Errors are known without waiting for the deadline (5 s; headroom for a slow box). */
    ck_assert_uint_lt(fx.called_ns - fx.started_ns, 2500 * 1000000ull);
    fx_fini(&fx);
}

START_TEST(garbage_is_eproto)
{
    const char *ssh = "SSH-2.0-OpenSSH_9.2\r\n";
    expect_status(ssh, strlen(ssh), false, 1024, -EPROTO, 5000);
    expect_status("PROXZ", 5, false, 1024, -EPROTO, 5000);
    const char *port = "PROXY TCP4 1.2.3.4 5.6.7.8 65536 ";
    expect_status(port, strlen(port), false, 1024, -EPROTO, 5000);
}
END_TEST

START_TEST(silent_peer_times_out)
{
    fixture fx;
    fx_init(&fx);
    ck_assert_int_eq(dp_proxy_reader_start(fx.r, &fx.loop, fx.rfd, 1024, 100, on_header), 0);
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(fx.calls, 1);
    ck_assert_int_eq(fx.status, -ETIMEDOUT);
    uint64_t ms = (fx.called_ns - fx.started_ns) / 1000000;
    /* "About" the deadline: libuv timers are loop-time based, so a little early is possible. */
    ck_assert_uint_ge(ms, 90);
    ck_assert_uint_lt(ms, 2100); /* late side: a slow, busy machine */
    fx_fini(&fx);
}
END_TEST

START_TEST(slow_partial_header_times_out)
{
    /* A valid prefix, then silence: the deadline still applies. */
    fixture fx;
    fx_init(&fx);
    send_all(fx.wfd, "PROXY TCP4 1.2", 14);
    ck_assert_int_eq(dp_proxy_reader_start(fx.r, &fx.loop, fx.rfd, 1024, 100, on_header), 0);
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(fx.status, -ETIMEDOUT);
    ck_assert_uint_ge((fx.called_ns - fx.started_ns) / 1000000, 90);
    fx_fini(&fx);
}
END_TEST

START_TEST(peer_closes_mid_header)
{
    expect_status("PROXY TCP4 192.0.2.1 ", 21, true, 1024, -ECONNRESET, 5000);
    expect_status("", 0, true, 1024, -ECONNRESET, 5000);
    uint8_t hdr[64];
    size_t n = v2_tcp4(hdr, 0);
    expect_status(hdr, n - 1, true, 1024, -ECONNRESET, 5000);
}
END_TEST

START_TEST(peer_closes_mid_header_later)
{
    /* Close after a pause, with the reader already holding part of the header. */
    uint8_t hdr[64];
    v2_tcp4(hdr, 0);
    const size_t cuts[] = {10, 20};
    fixture fx;
    feeder f;
    fx_init(&fx);
    ck_assert_int_eq(dp_proxy_reader_start(fx.r, &fx.loop, fx.rfd, 1024, 2000, on_header), 0);
    feed(&fx, &f, hdr, cuts, 2, 10);
    f.hang_up = true;
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(fx.calls, 1);
    ck_assert_int_eq(fx.status, -ECONNRESET);
    fx.wfd = f.fd;
    fx_fini(&fx);
}
END_TEST

START_TEST(oversized_v2)
{
    static uint8_t hdr[8192];
    size_t n = v2_tcp4(hdr, 2000);
    /* The fixed part is enough to know. */
    expect_status(hdr, 16, false, 1024, -EMSGSIZE, 5000);
    expect_status(hdr, n, false, 1024, -EMSGSIZE, 5000);
    /* max_len is capped at the reader's buffer. */
    v2_tcp4(hdr, sizeof((dp_proxy_reader *)NULL)->buf - 28 + 1);
    expect_status(hdr, 16, false, 1u << 20, -EMSGSIZE, 5000);
}
END_TEST

START_TEST(oversized_v1)
{
    char line[200];
    strcpy(line, "PROXY UNKNOWN ");
    memset(line + 14, 'a', 150);
    line[164] = '\0';
    expect_status(line, strlen(line), false, 1024, -EMSGSIZE, 5000);
    /* A small max_len does not shrink v1's 107 bytes. */
    fixture fx;
    fx_init(&fx);
    send_all(fx.wfd, V1_HDR PAYLOAD, strlen(V1_HDR PAYLOAD));
    ck_assert_int_eq(dp_proxy_reader_start(fx.r, &fx.loop, fx.rfd, 20, 2000, on_header), 0);
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(fx.status, 0);
    char rest[64];
    ck_assert_uint_eq(drain(fx.rfd, rest, sizeof rest), strlen(PAYLOAD));
    fx_fini(&fx);
}
END_TEST

START_TEST(cancel_before_data)
{
    fixture fx;
    fx_init(&fx);
    ck_assert_int_eq(dp_proxy_reader_start(fx.r, &fx.loop, fx.rfd, 1024, 100, on_header), 0);
    dp_proxy_reader_cancel(fx.r, on_cancel_done);
    /* Data arriving after cancel is left alone. */
    send_all(fx.wfd, V1_HDR, strlen(V1_HDR));
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(fx.calls, 0);
    ck_assert_int_eq(fx.done_calls, 1);
    ck_assert_ptr_null(fx.r);
    char rest[128];
    ck_assert_uint_eq(drain(fx.rfd, rest, sizeof rest), strlen(V1_HDR));
    fx_fini(&fx);
}
END_TEST

START_TEST(cancel_after_partial_and_null_done)
{
    fixture fx;
    fx_init(&fx);
    dp_proxy_reader on_stack;
    on_stack.data = &fx;
    send_all(fx.wfd, "PROXY TCP4 ", 11);
    ck_assert_int_eq(dp_proxy_reader_start(&on_stack, &fx.loop, fx.rfd, 1024, 2000, on_header), 0);
    uv_run(&fx.loop, UV_RUN_NOWAIT);
    dp_proxy_reader_cancel(&on_stack, NULL);
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(fx.calls, 0);
    ck_assert_int_eq(fx.done_calls, 0);
    free(fx.r);
    fx_fini(&fx);
}
END_TEST

START_TEST(start_errors)
{
    fixture fx;
    fx_init(&fx);
    ck_assert_int_eq(dp_proxy_reader_start(fx.r, &fx.loop, -1, 1024, 100, on_header), -EINVAL);
    ck_assert_int_eq(dp_proxy_reader_start(fx.r, &fx.loop, fx.rfd, 1024, 100, NULL), -EINVAL);
    ck_assert_int_eq(dp_proxy_reader_start(fx.r, &fx.loop, fx.rfd, 1024, 100, on_header), 0);
    /* The fd is already watched on this loop: refused synchronously, no callback for it. */
    dp_proxy_reader second;
    second.data = &fx;
    ck_assert_int_lt(dp_proxy_reader_start(&second, &fx.loop, fx.rfd, 1024, 100, on_header), 0);
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(fx.calls, 1);
    ck_assert_int_eq(fx.status, -ETIMEDOUT);
    fx_fini(&fx);
}
END_TEST

START_TEST(fd_not_closed)
{
    fixture fx;
    fx_init(&fx);
    send_all(fx.wfd, "junk", 4);
    ck_assert_int_eq(dp_proxy_reader_start(fx.r, &fx.loop, fx.rfd, 1024, 100, on_header), 0);
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(fx.status, -EPROTO);
    /* Still our socket: the peer can still hear from us. */
    ck_assert_int_eq(send(fx.rfd, "x", 1, MSG_NOSIGNAL), 1);
    char c;
    ck_assert_int_eq(recv(fx.wfd, &c, 1, 0), 1);
    fx_fini(&fx);
}
END_TEST

START_TEST(tcp_loopback)
{
    /* Same contract over real TCP, where the header and banner share one segment. */
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(lfd, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sin;
    ck_assert_int_eq(bind(lfd, (struct sockaddr *)&sin, sizeof sin), 0);
    ck_assert_int_eq(listen(lfd, 1), 0);
    ck_assert_int_eq(getsockname(lfd, (struct sockaddr *)&sin, &sl), 0);
    int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_eq(connect(cfd, (struct sockaddr *)&sin, sizeof sin), 0);
    int afd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    ck_assert_int_ge(afd, 0);
    close(lfd);

    fixture fx;
    fx_init(&fx);
    close(fx.rfd);
    close(fx.wfd);
    fx.rfd = afd;
    fx.wfd = cfd;
    uint8_t buf[256];
    size_t n = v2_tcp4(buf, 40);
    memcpy(buf + n, PAYLOAD, strlen(PAYLOAD));
    send_all(cfd, buf, n + strlen(PAYLOAD));
    ck_assert_int_eq(dp_proxy_reader_start(fx.r, &fx.loop, afd, 0, 2000, on_header), 0);
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(fx.status, 0);
    check_src(&fx);
    char rest[64];
    size_t got = drain(afd, rest, sizeof rest);
    ck_assert_uint_eq(got, strlen(PAYLOAD));
    ck_assert_mem_eq(rest, PAYLOAD, got);
    fx_fini(&fx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("proxy_reader");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, v1_then_payload_one_write);
    tcase_add_test(tc, v2_then_payload_one_write);
    tcase_add_test(tc, split_in_three_writes);
    tcase_add_test(tc, byte_by_byte);
    tcase_add_test(tc, garbage_is_eproto);
    tcase_add_test(tc, silent_peer_times_out);
    tcase_add_test(tc, slow_partial_header_times_out);
    tcase_add_test(tc, peer_closes_mid_header);
    tcase_add_test(tc, peer_closes_mid_header_later);
    tcase_add_test(tc, oversized_v2);
    tcase_add_test(tc, oversized_v1);
    tcase_add_test(tc, cancel_before_data);
    tcase_add_test(tc, cancel_after_partial_and_null_done);
    tcase_add_test(tc, start_errors);
    tcase_add_test(tc, fd_not_closed);
    tcase_add_test(tc, tcp_loopback);
    suite_add_tcase(s, tc);
    return dp_test_run_suite(s);
}
