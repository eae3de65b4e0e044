/*
 * agent_privacy.c: what the device does for its user's privacy outside a
 * round: erasing what was derived from erased records
 * (plait_agent_forget_derived), and making its key where it lives
 * (plait_agent_keygen), both in client.h.
 *
 * Contract: only files the agent itself writes are touched (the names in
 * agent_int.h and the ".NAME.tmp" temporaries of plait__agent_atomic_write);
 * a symlink is unlinked, never followed; a file is overwritten with zeros and
 * fsync'd before it is unlinked, so the bytes do not linger in the file's
 * blocks for a later reader of the same filesystem (flash wear levelling can
 * still keep old copies: full-disk encryption is the answer to that, see
 * docs/privacy.md).
 */
#include "agent_int.h"
#include "plait/file.h"
#include "plait/pki.h"
#include "plait/plait.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int plait__agent_wipe_file(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0)
        return errno == ENOENT ? 1 : plait_fail(PLAIT_EIO, "%s: %s", path, strerror(errno));
    if (S_ISREG(sb.st_mode)) {
        int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) return plait_fail(PLAIT_EIO, "%s: cannot open to erase: %s", path, strerror(errno));
        static const uint8_t zero[4096];
        off_t left = sb.st_size;
        while (left > 0) {
            size_t n = left < (off_t)sizeof(zero) ? (size_t)left : sizeof(zero);
            ssize_t w = write(fd, zero, n);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) {
                int e = errno;
                close(fd);
                return plait_fail(PLAIT_EIO, "%s: cannot overwrite: %s", path, strerror(e));
            }
            left -= w;
        }
        if (fsync(fd) != 0) {
            int e = errno;
            close(fd);
            return plait_fail(PLAIT_EIO, "%s: fsync: %s", path, strerror(e));
        }
        close(fd);
    } else if (!S_ISLNK(sb.st_mode)) {
        return plait_fail(PLAIT_EIO, "%s: not a regular file; not removed", path);
    }
    if (unlink(path) != 0) return plait_fail(PLAIT_EIO, "%s: cannot remove: %s", path, strerror(errno));
    return 0;
}

int plait_agent_forget_derived(const char *state_dir, int *removed)
{
    if (removed) *removed = 0;
    if (!state_dir) return plait_fail(PLAIT_EINVAL, "forget: state_dir is NULL");
    static const char *const names[] = {PERSONAL_FILE,   PENDING_FILE,    PARTIAL_FILE,      SERVE_FILE,
                                         SERVE_FILE_B,    SERVE_INFO_FILE, SERVE_BIAS_FILE,   SERVE_BIAS_FILE_B,
                                         SERVE_KNN_FILE,  SERVE_KNN_FILE_B};
    char path[4096];
    int n_removed = 0;
    DIR *d = opendir(state_dir);
    if (!d) {
        if (errno == ENOENT) return 0;
        return plait_fail(PLAIT_EIO, "%s: %s", state_dir, strerror(errno));
    }
    int rc = 0;
    /* Temporaries: ".NAME.tmp" for each NAME, left by a crash mid-write. */
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (e->d_name[0] != '.' || len < 6 || strcmp(e->d_name + len - 4, ".tmp") != 0) continue;
        int k = snprintf(path, sizeof(path), "%s/%s", state_dir, e->d_name);
        if (k < 0 || (size_t)k >= sizeof(path)) {
            rc = plait_fail(PLAIT_EINVAL, "forget: state path too long");
            break;
        }
        int r = plait__agent_wipe_file(path);
        if (r < 0) rc = r;
        else if (r == 0) n_removed++;
    }
    closedir(d);
    for (size_t i = 0; rc == 0 && i < sizeof(names) / sizeof(names[0]); i++) {
        int k = snprintf(path, sizeof(path), "%s/%s", state_dir, names[i]);
        if (k < 0 || (size_t)k >= sizeof(path)) return plait_fail(PLAIT_EINVAL, "forget: state path too long");
        int r = plait__agent_wipe_file(path);
        if (r < 0) rc = r;
        else if (r == 0) n_removed++;
    }
    if (rc == 0) (void)plait_file_sync_dir(state_dir, 0); /* best effort: the files are already wiped */
    if (removed) *removed = n_removed;
    return rc;
}

int plait_agent_keygen(const char *key_path, const char *csr_path)
{
    if (!key_path || !csr_path) return plait_fail(PLAIT_EINVAL, "keygen: NULL path");
    struct stat sb;
    if (lstat(key_path, &sb) == 0) return plait_fail(PLAIT_EBUSY, "keygen: %s exists; not overwriting a key", key_path);
    char *key = NULL, *csr = NULL;
    int rc = plait_pki_key_generate(NULL, &key);
    if (rc == 0) rc = plait_pki_csr_create("plait-device", NULL, key, NULL, &csr);
    if (rc == 0) rc = plait_pki_write_file(key_path, key, 1);
    if (rc == 0) rc = plait_pki_write_file(csr_path, csr, 0);
    plait_pki_free_pem(key); /* wipes */
    plait_pki_free_pem(csr);
    return rc;
}
