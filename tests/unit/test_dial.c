/* test_dial.c - dp_dial against real loopback sockets on a libuv loop: connect, refusal, a
 * name resolved on the threadpool, the deadline (a listener whose accept queue is full drops
 * SYNs), cancel while connecting and while resolving, and nothing left on the loop after. */
#include "dp_dial.h"
#include "dp_test_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct fixture {
    uv_loop_t loop;
    dp_dial *dial;
    int calls;
    dp_dial_result r;
    char error[300];
    uint64_t started_ns, called_ns;
} fixture;

static void fx_init(fixture *fx)
{
    memset(fx, 0, sizeof *fx);
    fx->r.fd = -1;
    ck_assert_int_eq(uv_loop_init(&fx->loop), 0);
    fx->started_ns = uv_hrtime();
}

/* Everything the dialer registered must be closed once the loop ran dry. */
static void fx_fini(fixture *fx)
{
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&fx->loop), 0);
    if (fx->r.fd >= 0)
        close(fx->r.fd);
}

static void on_dialed(void *arg, const dp_dial_result *r)
{
    fixture *fx = arg;
    fx->calls++;
    fx->r = *r;
    fx->called_ns = uv_hrtime();
    snprintf(fx->error, sizeof fx->error, "%s", r->error != NULL ? r->error : "");
    fx->r.error = NULL;
    fx->dial = NULL; /* gone after the callback */
}

static int dial(fixture *fx, const char *address, uint16_t port, int timeout_ms)
{
    dp_dial_opts o = {.address = address, .port = port, .timeout_ms = timeout_ms};
    return dp_dial_start(&fx->dial, &fx->loop, &o, on_dialed, fx);
}

/* A listener on 127.0.0.1 (port chosen by the kernel); backlog 0 for the full-queue tests. */
static int listener(int backlog, uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(listen(fd, backlog), 0);
    socklen_t len = sizeof a;
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

/* Fill the accept queue of a backlog-0 listener: further SYNs are dropped, so a connect
 * neither succeeds nor fails until the client gives up (only a deadline ends it). */
static void fill_queue(uint16_t port, int fds[4])
{
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = htons(port)};
    for (int i = 0; i < 4; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fds[i], 0);
        int rc = connect(fds[i], (struct sockaddr *)&a, sizeof a);
        ck_assert(rc == 0 || errno == EINPROGRESS);
    }
    usleep(100 * 1000); /* the handshakes that can complete, complete */
}

START_TEST(numeric_connects)
{
    fixture fx;
    fx_init(&fx);
    uint16_t port;
    int lfd = listener(16, &port);
    ck_assert_int_eq(dial(&fx, "127.0.0.1", port, 5000), 0);
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(fx.calls, 1);
    ck_assert_int_eq(fx.r.status, 0);
    ck_assert(!fx.r.deadline);
    ck_assert_int_ge(fx.r.fd, 0);
    ck_assert_str_eq(fx.error, "");
    ck_assert_uint_eq(ntohs(((struct sockaddr_in *)&fx.r.peer)->sin_port), port);
    ck_assert_uint_ge(fx.r.connect_ns, fx.started_ns);
    int one = 0;
    socklen_t len = sizeof one;
    ck_assert_int_eq(getsockopt(fx.r.fd, IPPROTO_TCP, TCP_NODELAY, &one, &len), 0);
    ck_assert_int_eq(one, 1);
    int afd = accept(lfd, NULL, NULL);
    ck_assert_int_ge(afd, 0); /* it is a real connection */
    ck_assert_int_eq(send(fx.r.fd, "x", 1, MSG_NOSIGNAL), 1);
    char c;
    ck_assert_int_eq(recv(afd, &c, 1, 0), 1);
    close(afd);
    close(lfd);
    fx_fini(&fx);
}
END_TEST

START_TEST(refused_says_where)
{
    fixture fx;
    fx_init(&fx);
    uint16_t port;
    close(listener(16, &port)); /* nothing listens there now */
    ck_assert_int_eq(dial(&fx, "127.0.0.1", port, 5000), 0);
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(fx.calls, 1);
    ck_assert_int_eq(fx.r.status, -ECONNREFUSED);
    ck_assert(!fx.r.deadline);
    ck_assert_int_eq(fx.r.fd, -1);
    char want[80];
    snprintf(want, sizeof want, "connect 127.0.0.1:%u: Connection refused", port);
    ck_assert_str_eq(fx.error, want);
    fx_fini(&fx);
}
END_TEST

START_TEST(ipv6_numeric)
{
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (fd >= 0)
            close(fd);
        return; /* no IPv6 loopback on this machine: nothing to test */
    }
    ck_assert_int_eq(listen(fd, 16), 0);
    socklen_t len = sizeof a;
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    fixture fx;
    fx_init(&fx);
    ck_assert_int_eq(dial(&fx, "::1", ntohs(a.sin6_port), 5000), 0);
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(fx.calls, 1);
    ck_assert_int_eq(fx.r.status, 0);
    ck_assert_int_eq(fx.r.peer.ss_family, AF_INET6);
    close(fd);
    fx_fini(&fx);
}
END_TEST

/* "localhost" is not numeric: it goes through getaddrinfo on the threadpool. Whichever
 * address family it resolves to first, a listener of that family answers. */
START_TEST(name_is_resolved_off_the_loop)
{
    fixture fx;
    fx_init(&fx);
    uint16_t port;
    int lfd = listener(16, &port);
    int l6 = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in6 a6 = {
        .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT, .sin6_port = htons(port)};
    int one = 1;
    if (l6 >= 0)
        setsockopt(l6, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (l6 >= 0 && (bind(l6, (struct sockaddr *)&a6, sizeof a6) != 0 || listen(l6, 16) != 0)) {
        close(l6);
        l6 = -1;
    }
    ck_assert_int_eq(dial(&fx, "localhost", port, 10000), 0);
    ck_assert_int_eq(fx.calls, 0); /* not answered inside the call: resolution is async */
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(fx.calls, 1);
    ck_assert_msg(fx.r.status == 0, "localhost: %s", fx.error);
    close(lfd);
    if (l6 >= 0)
        close(l6);
    fx_fini(&fx);
}
END_TEST

START_TEST(deadline_ends_a_hanging_connect)
{
    fixture fx;
    fx_init(&fx);
    uint16_t port;
    int lfd = listener(0, &port), fds[4];
    fill_queue(port, fds);
    ck_assert_int_eq(dial(&fx, "127.0.0.1", port, 300), 0);
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(fx.calls, 1);
    ck_assert_int_eq(fx.r.status, -ETIMEDOUT);
    ck_assert(fx.r.deadline);
    ck_assert_int_eq(fx.r.fd, -1);
    ck_assert_str_eq(fx.error, "connect timed out after 300 ms");
    uint64_t ms = (fx.called_ns - fx.started_ns) / 1000000;
    ck_assert_msg(ms >= 290, "the deadline fired after %llu ms", (unsigned long long)ms);
    for (int i = 0; i < 4; i++)
        close(fds[i]);
    close(lfd);
    fx_fini(&fx);
}
END_TEST

static void cancel_now(uv_timer_t *t)
{
    fixture *fx = t->data;
    dp_dial_cancel(fx->dial);
    fx->dial = NULL;
    uv_close((uv_handle_t *)t, NULL);
}

START_TEST(cancel_while_connecting)
{
    fixture fx;
    fx_init(&fx);
    uint16_t port;
    int lfd = listener(0, &port), fds[4];
    fill_queue(port, fds);
    ck_assert_int_eq(dial(&fx, "127.0.0.1", port, 10000), 0);
    uv_timer_t t;
    uv_timer_init(&fx.loop, &t);
    t.data = &fx;
    uv_timer_start(&t, cancel_now, 50, 0);
    uv_run(&fx.loop, UV_RUN_DEFAULT); /* ends: the dial closed its handles */
    ck_assert_int_eq(fx.calls, 0);
    uint64_t ms = (uv_hrtime() - fx.started_ns) / 1000000;
    ck_assert_msg(ms < 5000, "the loop ran %llu ms after the cancel", (unsigned long long)ms);
    for (int i = 0; i < 4; i++)
        close(fds[i]);
    close(lfd);
    fx_fini(&fx);
}
END_TEST

START_TEST(cancel_while_resolving)
{
    fixture fx;
    fx_init(&fx);
    ck_assert_int_eq(dial(&fx, "localhost", 9, 10000), 0);
    dp_dial_cancel(fx.dial); /* the lookup may be running: its callback frees the dial */
    fx.dial = NULL;
    dp_dial_cancel(NULL);
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(fx.calls, 0);
    fx_fini(&fx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("dial");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, numeric_connects);
    tcase_add_test(tc, refused_says_where);
    tcase_add_test(tc, ipv6_numeric);
    tcase_add_test(tc, name_is_resolved_off_the_loop);
    tcase_add_test(tc, deadline_ends_a_hanging_connect);
    tcase_add_test(tc, cancel_while_connecting);
    tcase_add_test(tc, cancel_while_resolving);
    suite_add_tcase(s, tc);
    return dp_test_run_suite(s);
}
