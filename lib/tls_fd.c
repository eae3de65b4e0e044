/*
 * tls_fd.c: the blocking helpers of tls.h (plait_tls_fd_*): a session driven
 * over a file descriptor with read(2)/write(2), for owners that prefer
 * blocking sockets (the agent). Only the public session API is used.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "plait/tls.h"
#include "plait/log.h"

/* ---- blocking fd helpers -------------------------------------------------- */

static int flush_fd(plait_tls_t *s, int fd)
{
    const uint8_t *p;
    size_t n;
    while ((n = plait_tls_pending_out(s, &p)) > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0)
            return plait_fail(PLAIT_EIO, "tls: write to fd %d: %s", fd,
                              w < 0 ? strerror(errno) : "0 bytes");
        plait_tls_consume_out(s, (size_t)w);
    }
    return 0;
}

static int fill_fd(plait_tls_t *s, int fd)
{
    uint8_t buf[16 * 1024];
    for (;;) {
        ssize_t r = read(fd, buf, sizeof(buf));
        if (r < 0 && errno == EINTR) continue;
        if (r == 0) return plait_fail(PLAIT_EIO, "tls: connection closed by peer");
        if (r < 0) return plait_fail(PLAIT_EIO, "tls: read from fd %d: %s", fd, strerror(errno));
        return plait_tls_feed(s, buf, (size_t)r);
    }
}

int plait_tls_fd_handshake(plait_tls_t *s, int fd)
{
    for (;;) {
        int rc = plait_tls_handshake(s);
        int frc = s != NULL ? flush_fd(s, fd) : 0; /* also sends the alert after a failure */
        if (rc != PLAIT_EAGAIN) return rc != 0 ? rc : frc;
        if (frc != 0) return frc;
        if ((rc = fill_fd(s, fd)) != 0) return rc;
    }
}

int plait_tls_fd_read(plait_tls_t *s, int fd, uint8_t *buf, size_t cap)
{
    for (;;) {
        int rc = plait_tls_read(s, buf, cap);
        int frc = s != NULL ? flush_fd(s, fd) : 0;
        if (rc != PLAIT_EAGAIN) return rc;
        if (frc != 0) return frc;
        if ((rc = fill_fd(s, fd)) != 0) return rc;
    }
}

int plait_tls_fd_write(plait_tls_t *s, int fd, const uint8_t *buf, size_t len)
{
    size_t off = 0;
    while (off < len) {
        int rc = plait_tls_write(s, buf + off, len - off);
        int frc = s != NULL ? flush_fd(s, fd) : 0;
        if (rc > 0)
            off += (size_t)rc;
        else if (rc == PLAIT_EAGAIN && !plait_tls_established(s)) {
            if (frc == 0) frc = fill_fd(s, fd); /* handshake wants the peer's next flight */
        } else if (rc != PLAIT_EAGAIN)
            return rc;
        if (frc != 0) return frc;
    }
    return 0;
}

int plait_tls_fd_close(plait_tls_t *s, int fd)
{
    int rc = plait_tls_close_notify(s);
    int frc = s != NULL ? flush_fd(s, fd) : 0;
    return rc != 0 ? rc : frc;
}
