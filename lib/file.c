/*
 * file.c: non-blocking, regular-file-only opens of user-named files, whole-
 * file maps, and directory syncs (file.h).
 */
#include "plait/file.h"
#include "plait/crypto.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static const char *kind(mode_t m)
{
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISDIR(m)) return "a directory";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISSOCK(m)) return "a socket";
    return "not a plain file";
}

int plait_file_open(const char *path, const char *label, int *fd_out, struct stat *st_out)
{
    *fd_out = -1;
    if (!path) return plait_fail(PLAIT_EINVAL, "%s: no path given", label ? label : "file");
    const char *l = label ? label : path;
    /* O_NONBLOCK: opening a FIFO for reading otherwise waits for a writer. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT) return plait_fail(PLAIT_ENOENT, "%s: cannot open: %s", l, strerror(e));
        return plait_fail(PLAIT_EIO, "%s: cannot open: %s", l, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return plait_fail(PLAIT_EIO, "%s: cannot stat: %s", l, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return plait_fail(PLAIT_EINVAL, "%s: is %s, not a regular file", l, kind(st.st_mode));
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        int e = errno;
        close(fd);
        return plait_fail(PLAIT_EIO, "%s: fcntl: %s", l, strerror(e));
    }
    if (st_out) *st_out = st;
    *fd_out = fd;
    return 0;
}

int plait_file_fopen(const char *path, const char *label, FILE **out)
{
    *out = NULL;
    int fd;
    int rc = plait_file_open(path, label, &fd, NULL);
    if (rc != 0) return rc;
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        int e = errno;
        close(fd);
        return plait_fail(PLAIT_ENOMEM, "%s: fdopen: %s", label ? label : path, strerror(e));
    }
    *out = f;
    return 0;
}

int plait_file_read(const char *path, const char *label, size_t max, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    int fd;
    struct stat st;
    int rc = plait_file_open(path, label, &fd, &st);
    if (rc != 0) return rc;
    const char *l = label ? label : path;
    uint8_t *b = NULL;
    if (st.st_size < 0 || (uint64_t)st.st_size > (uint64_t)max) {
        rc = plait_fail(PLAIT_ETOOBIG, "%s: %lld bytes, more than the limit of %zu", l, (long long)st.st_size,
                        max);
        goto exit;
    }
    size_t n = (size_t)st.st_size, off = 0;
    if (!(b = malloc(n + 1))) {
        rc = plait_fail(PLAIT_ENOMEM, "%s: %zu bytes", l, n);
        goto exit;
    }
    /* Read one byte past the size fstat gave, to notice a file that grew. */
    for (;;) {
        uint8_t extra;
        ssize_t r = off < n ? read(fd, b + off, n - off) : read(fd, &extra, 1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = plait_fail(PLAIT_EIO, "%s: read failed: %s", l, strerror(errno));
            goto exit;
        }
        if (r == 0) break;
        if (off >= n) {
            rc = plait_fail(PLAIT_EIO, "%s: the file grew while it was read (changed underneath?)", l);
            goto exit;
        }
        off += (size_t)r;
    }
    if (off != n) {
        rc = plait_fail(PLAIT_EIO, "%s: read %zu of %zu bytes: the file shrank while it was read", l, off, n);
        goto exit;
    }
    b[n] = 0;
    *out = b;
    *len = n;
    b = NULL;
    rc = 0;
exit:
    if (b) plait_zeroize(b, (size_t)st.st_size + 1); /* may be a user's private text */
    free(b);
    close(fd);
    return rc;
}

int plait_file_map(const char *path, const char *label, void **map_out, size_t *len_out)
{
    *map_out = NULL;
    *len_out = 0;
    const char *l = label ? label : path;
    int fd;
    struct stat st;
    int rc = plait_file_open(path, label, &fd, &st); /* non-blocking: a FIFO is refused */
    if (rc != 0) return rc == PLAIT_EIO ? rc : plait_fail(PLAIT_EIO, "%s", plait_errmsg());
    if (st.st_size <= 0) {
        close(fd);
        return plait_fail(PLAIT_EIO, "%s: empty file", l);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) return plait_fail(PLAIT_EIO, "%s: mmap failed: %s", l, strerror(e));
    *map_out = map;
    *len_out = (size_t)st.st_size;
    return 0;
}

void plait_file_unmap(void *map, size_t len)
{
    if (map) munmap(map, len);
}

int plait_file_sync_dir(const char *dir, int must_open)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 && !must_open) return 0;
    if (fd < 0 || fsync(fd) != 0) {
        int e = errno;
        if (fd >= 0) close(fd);
        return plait_fail(PLAIT_EIO, "%s: cannot sync the directory: %s", dir, strerror(e));
    }
    close(fd);
    return 0;
}
