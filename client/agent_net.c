/*
 * agent_net.c: the agent's transport: a blocking-style TCP + mutual-TLS
 * connection to the aggregator, wire.h frames over it, and the bounded waits
 * every other agent file uses (plait__agent_conn_*, plait__agent_sleep_ms).
 *
 * Contract:
 *   - Every wait is bounded: poll(2) on the socket and on the agent's wake
 *     pipe with a deadline (connect/handshake, each frame, the caller's
 *     deadline). plait_agent_stop() writes the wake pipe, so a blocked wait
 *     returns PLAIT_ECANCELED at once; a worker's completion byte on the pipe
 *     wakes the wait with PLAIT_EAGAIN.
 *   - Sockets are POSIX and non-blocking; TLS is lib/tls.c driven over memory
 *     buffers; frames are parsed by wire.h within the agent's wire limits (a
 *     frame above max_frame is refused before it is buffered). Pings from the
 *     aggregator are answered and Pongs skipped inside plait__agent_conn_recv.
 *   - The receive buffer (decrypted bytes) is wiped when the connection is
 *     freed. Errors name the step that failed; nothing secret is logged.
 */
#include "agent_int.h"

#include "plait/log.h"
#include "plait/tls.h"
#include "plait/wire.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define IO_CHUNK (16 * 1024)

/* ------------------------------------------------------------- clock, waits */

uint64_t plait__agent_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int plait__agent_stopped(plait_agent_t *a)
{
    return atomic_load(&a->stop) != 0;
}

void plait__agent_drain_wake(plait_agent_t *a)
{
    char buf[64];
    while (read(a->wake[0], buf, sizeof(buf)) > 0) {
    }
}

/*
 * Wait until fd is ready for events, the deadline passes, or the wake pipe
 * fires. \return 1 ready; PLAIT_EAGAIN (deadline or a wake-up: the caller
 * re-checks its state); PLAIT_ECANCELED (stop); PLAIT_EIO (poll failed).
 */
static int wait_fd(plait_agent_t *a, int fd, short events, uint64_t deadline)
{
    for (;;) {
        if (plait__agent_stopped(a)) return plait_fail(PLAIT_ECANCELED, "agent stopped");
        uint64_t now = plait__agent_now_ms();
        if (now >= deadline) return PLAIT_EAGAIN;
        uint64_t left = deadline - now;
        struct pollfd pf[2];
        nfds_t n = 0;
        if (fd >= 0) pf[n++] = (struct pollfd){.fd = fd, .events = events};
        nfds_t wi = n;
        pf[n++] = (struct pollfd){.fd = a->wake[0], .events = POLLIN};
        int r = poll(pf, n, left > 60000 ? 60000 : (int)left);
        if (r < 0) {
            if (errno == EINTR) continue;
            return plait_fail(PLAIT_EIO, "poll: %s", strerror(errno));
        }
        if (r == 0) continue;
        if (pf[wi].revents) {
            plait__agent_drain_wake(a);
            if (plait__agent_stopped(a)) return plait_fail(PLAIT_ECANCELED, "agent stopped");
            if (fd < 0 || !pf[0].revents) return PLAIT_EAGAIN;
        }
        if (fd >= 0 && pf[0].revents) return 1;
    }
}

/* Sleep up to ms, interruptible by stop. \return 0 or PLAIT_ECANCELED. */
int plait__agent_sleep_ms(plait_agent_t *a, uint64_t ms)
{
    uint64_t deadline = plait__agent_now_ms() + ms;
    while (plait__agent_now_ms() < deadline) {
        int rc = wait_fd(a, -1, 0, deadline);
        if (rc != PLAIT_EAGAIN) return rc;
    }
    return 0;
}

/* -------------------------------------------------------------- connection */

void plait__agent_conn_init(plait__agent_conn_t *c, plait_agent_t *a)
{
    memset(c, 0, sizeof(*c));
    c->a = a;
    c->fd = -1;
}

static void conn_free(plait__agent_conn_t *c)
{
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    plait_tls_free(c->tls);
    c->tls = NULL;
    if (c->in) plait_zeroize(c->in, c->in_cap);
    free(c->in);
    c->in = NULL;
    c->in_len = c->in_cap = 0;
}

static int tls_fail(plait__agent_conn_t *c, int rc, const char *what)
{
    const char *why = plait_tls_reason(c->tls);
    return plait_fail(rc, "%s: %s", what, why && *why ? why : plait_strerror(rc));
}

/* Send all pending TLS output before the deadline. */
static int conn_flush(plait__agent_conn_t *c, uint64_t deadline)
{
    const uint8_t *p;
    size_t n;
    while ((n = plait_tls_pending_out(c->tls, &p)) > 0) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            plait_tls_consume_out(c->tls, (size_t)w);
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int rc = wait_fd(c->a, c->fd, POLLOUT, deadline);
            if (rc == PLAIT_EAGAIN && plait__agent_now_ms() >= deadline)
                return plait_fail(PLAIT_EIO, "timed out sending to the aggregator");
            if (rc < 0 && rc != PLAIT_EAGAIN) return rc;
            continue;
        }
        return plait_fail(PLAIT_EIO, "send to the aggregator: %s",
                          w < 0 ? strerror(errno) : "0 bytes");
    }
    return 0;
}

/* Receive ciphertext once. \return 0 (fed), PLAIT_EAGAIN (deadline or wake-up), or an error. */
static int conn_fill(plait__agent_conn_t *c, uint64_t deadline)
{
    int rc = wait_fd(c->a, c->fd, POLLIN, deadline);
    if (rc != 1) return rc;
    uint8_t buf[IO_CHUNK];
    for (;;) {
        ssize_t r = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return PLAIT_EAGAIN;
        if (r == 0) return plait_fail(PLAIT_EIO, "the aggregator closed the connection");
        if (r < 0) return plait_fail(PLAIT_EIO, "recv from the aggregator: %s", strerror(errno));
        return plait_tls_feed(c->tls, buf, (size_t)r);
    }
}

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0 ? -1 : 0;
}

/* TCP connect to host:port (every address getaddrinfo gives, in order) and the TLS handshake. */
int plait__agent_conn_open(plait__agent_conn_t *c)
{
    plait_agent_t *a = c->a;
    uint64_t deadline = plait__agent_now_ms() + a->cfg.connect_timeout_ms;
    char port[16];
    snprintf(port, sizeof(port), "%d", a->cfg.server_port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    /* No AI_ADDRCONFIG: on a loopback-only host it hides 127.0.0.1 for "localhost". An
     * address family the host cannot reach fails fast and the next address is tried. */
    int g = getaddrinfo(a->host, port, &hints, &res);
    if (g != 0) return plait_fail(PLAIT_EIO, "resolve %s: %s", a->host, gai_strerror(g));
    int rc = plait_fail(PLAIT_EIO, "connect %s:%s: no address", a->host, port);
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            rc = plait_fail(PLAIT_EIO, "socket: %s", strerror(errno));
            continue;
        }
        if (set_nonblock(fd) != 0) {
            close(fd);
            rc = plait_fail(PLAIT_EIO, "fcntl: %s", strerror(errno));
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            if (errno != EINPROGRESS) {
                rc = plait_fail(PLAIT_EIO, "connect %s:%s: %s", a->host, port, strerror(errno));
                close(fd);
                continue;
            }
            int w;
            do
                w = wait_fd(a, fd, POLLOUT, deadline);
            while (w == PLAIT_EAGAIN && plait__agent_now_ms() < deadline);
            if (w != 1) {
                close(fd);
                rc = w == PLAIT_ECANCELED
                         ? w
                         : plait_fail(PLAIT_EIO, "connect %s:%s: timed out", a->host, port);
                if (rc == PLAIT_ECANCELED) break;
                continue;
            }
            int err = 0;
            socklen_t el = sizeof(err);
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err != 0) {
                rc = plait_fail(PLAIT_EIO, "connect %s:%s: %s", a->host, port,
                                strerror(err ? err : errno));
                close(fd);
                continue;
            }
        }
        c->fd = fd;
        rc = 0;
        break;
    }
    freeaddrinfo(res);
    if (rc != 0) return rc;
    if ((rc = plait_tls_new(&c->tls, a->tls)) != 0) return rc;
    for (;;) {
        rc = plait_tls_handshake(c->tls);
        int frc = conn_flush(c, deadline); /* also carries our alert after a failure */
        if (rc == 0) return frc;
        if (rc != PLAIT_EAGAIN) return tls_fail(c, rc, "TLS handshake with the aggregator");
        if (frc != 0) return frc;
        int f = conn_fill(c, deadline);
        if (f == PLAIT_EAGAIN) {
            if (plait__agent_now_ms() >= deadline)
                return plait_fail(PLAIT_EIO, "TLS handshake: timed out");
            continue;
        }
        if (f != 0) return f;
    }
}

int plait__agent_conn_send(plait__agent_conn_t *c, const plait_msg_t *m)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = plait_wire_encode_alloc(m, &c->a->lim, &buf, &len);
    if (rc != 0)
        return plait_fail(rc, "encode %s: %s", plait_msg_type_name(m->type), plait_errmsg());
    uint64_t deadline = plait__agent_now_ms() + c->a->cfg.io_timeout_ms;
    size_t off = 0;
    while (off < len) {
        int w = plait_tls_write(c->tls, buf + off, len - off);
        if (w > 0)
            off += (size_t)w;
        else if (w != PLAIT_EAGAIN) {
            rc = tls_fail(c, w, "TLS write");
            break;
        }
        if ((rc = conn_flush(c, deadline)) != 0) break;
    }
    if (rc == 0) rc = conn_flush(c, deadline);
    free(buf);
    return rc;
}

/*
 * Next message from the aggregator, answering Pings and skipping Pongs.
 * \return 0 (msg to free), PLAIT_EAGAIN (deadline passed or a wake-up: no
 * message), or an error.
 */
int plait__agent_conn_recv(plait__agent_conn_t *c, uint64_t deadline, plait_msg_t *msg)
{
    plait_agent_t *a = c->a;
    for (;;) {
        if (c->in_len > 0) {
            size_t used = 0;
            int rc = plait_wire_parse(c->in, c->in_len, &a->lim, 0, msg, &used);
            if (rc == 0) {
                memmove(c->in, c->in + used, c->in_len - used);
                c->in_len -= used;
                if (msg->type == PLAIT_MSG_PING) {
                    plait_msg_t pong;
                    plait_msg_init(&pong, PLAIT_MSG_PONG);
                    pong.u.ping.nonce = msg->u.ping.nonce;
                    plait_msg_free(msg);
                    if ((rc = plait__agent_conn_send(c, &pong)) != 0) return rc;
                    continue;
                }
                if (msg->type == PLAIT_MSG_PONG) {
                    plait_msg_free(msg);
                    continue;
                }
                return 0;
            }
            if (rc != PLAIT_EAGAIN)
                return plait_fail(rc, "from the aggregator: %s", plait_errmsg());
        }
        /* Make room for one more TLS record; frames are bounded by max_frame. */
        if (c->in_cap - c->in_len < IO_CHUNK) {
            size_t ncap = c->in_cap ? c->in_cap * 2 : 64 * 1024;
            if (ncap > c->a->lim.max_frame + 2 * IO_CHUNK)
                ncap = c->a->lim.max_frame + 2 * IO_CHUNK;
            if (ncap - c->in_len < IO_CHUNK)
                return plait_fail(PLAIT_EPROTO, "aggregator frame exceeds the limit");
            uint8_t *n = realloc(c->in, ncap);
            if (!n) return plait_fail(PLAIT_ENOMEM, "receive buffer");
            c->in = n;
            c->in_cap = ncap;
        }
        int r = plait_tls_read(c->tls, c->in + c->in_len, c->in_cap - c->in_len);
        if (r > 0) {
            c->in_len += (size_t)r;
            continue;
        }
        if (r == 0) return plait_fail(PLAIT_EIO, "the aggregator closed the session");
        if (r != PLAIT_EAGAIN) return tls_fail(c, r, "TLS read");
        int rc = conn_flush(c, plait__agent_now_ms() + a->cfg.io_timeout_ms);
        if (rc != 0) return rc;
        rc = conn_fill(c, deadline);
        if (rc != 0) return rc; /* PLAIT_EAGAIN included */
    }
}

/* Wait for the next message until the deadline. \return 0, or an error (timeout: PLAIT_EIO). */
int plait__agent_conn_expect(plait__agent_conn_t *c, uint64_t deadline, plait_msg_t *msg,
                             const char *what)
{
    for (;;) {
        int rc = plait__agent_conn_recv(c, deadline, msg);
        if (rc != PLAIT_EAGAIN) return rc;
        if (plait__agent_now_ms() >= deadline)
            return plait_fail(PLAIT_EIO, "timed out waiting for %s", what);
    }
}

void plait__agent_conn_close(plait__agent_conn_t *c)
{
    if (c->tls && c->fd >= 0 && plait_tls_established(c->tls)) {
        if (plait_tls_close_notify(c->tls) == 0) (void)conn_flush(c, plait__agent_now_ms() + 1000);
    }
    conn_free(c);
}

/* Send an Error and let the caller close. Failures to send are not reported: we are leaving anyway.
 */
void plait__agent_send_error(plait__agent_conn_t *c, int code, const char *text)
{
    plait_msg_t m;
    plait_msg_init(&m, PLAIT_MSG_ERROR);
    m.u.error.code = code;
    snprintf(m.u.error.message, sizeof(m.u.error.message), "%s", text);
    int rc = plait__agent_conn_send(c, &m);
    (void)rc;
}
