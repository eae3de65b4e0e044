/*
 * pki_dir.c: the deployment directory behind `plait-aggregator init`,
 * `enroll` and `revoke` (part of pki.c): files written atomically (secret
 * ones mode 0600), bounded reads, and the CA, server and revocation files.
 */
#include "plait/crypto.h"
#include "plait/pki.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pki_int.h"


/* ---- files and the deployment directory --------------------------------- */

int plait_pki_write_file(const char *path, const char *text, int secret)
{
    if (path == NULL || text == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL argument");
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof(tmp))
        return plait_fail(PLAIT_EINVAL, "pki: path too long");
    (void)unlink(tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, secret ? 0600 : 0644);
    if (fd < 0) return plait_fail(PLAIT_EIO, "%s: %s", tmp, strerror(errno));
    size_t n = strlen(text), off = 0;
    while (off < n) {
        ssize_t w = write(fd, text + off, n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            return plait_fail(PLAIT_EIO, "%s: write: %s", tmp, strerror(e));
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        unlink(tmp);
        return plait_fail(PLAIT_EIO, "%s: fsync/close failed", tmp);
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return plait_fail(PLAIT_EIO, "%s: rename: %s", path, strerror(e));
    }
    return 0;
}

int plait_pki_read_file(const char *path, char **text)
{
    if (path == NULL || text == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL argument");
    *text = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO is refused below, not waited on */
    if (fd < 0)
        return plait_fail(errno == ENOENT ? PLAIT_ENOENT : PLAIT_EIO, "%s: %s", path,
                          strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return plait_fail(PLAIT_EIO, "%s: not a regular file", path);
    }
    if (st.st_size > PKI_FILE_MAX) {
        close(fd);
        return plait_fail(PLAIT_ETOOBIG, "%s: %lld bytes exceeds %d", path, (long long)st.st_size,
                          PKI_FILE_MAX);
    }
    size_t cap = (size_t)st.st_size, n = 0;
    char *buf = malloc(cap + 1);
    if (buf == NULL) {
        close(fd);
        return plait_fail(PLAIT_ENOMEM, "%s: %zu bytes", path, cap + 1);
    }
    while (n < cap) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    if (memchr(buf, 0, n) != NULL) {
        plait_zeroize(buf, n);
        free(buf);
        return plait_fail(PLAIT_EPROTO, "%s: contains NUL bytes", path);
    }
    *text = buf;
    return 0;
}

static int dir_path(char *out, size_t cap, const char *dir, const char *name)
{
    if (snprintf(out, cap, "%s/%s", dir, name) >= (int)cap)
        return plait_fail(PLAIT_EINVAL, "pki: path too long");
    return 0;
}

int plait_pki_init_deployment(const char *dir, const plait_pki_config_t *cfg)
{
    if (dir == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL directory");
    int rc = plait_pki_config_validate(cfg);
    if (rc != 0) return rc;
    char p[4096];
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return plait_fail(PLAIT_EIO, "%s: %s", dir, strerror(errno));
    if ((rc = dir_path(p, sizeof(p), dir, "ca.key")) != 0) return rc;
    if (access(p, F_OK) == 0)
        return plait_fail(PLAIT_EBUSY, "%s: a deployment CA already exists", dir);

    char *ca_crt = NULL, *ca_key = NULL, *srv_crt = NULL, *srv_key = NULL;
    plait_drbg_t d;
    plait_drbg_init(&d);
    static const uint8_t pers[] = "plait-pki-init";
    if ((rc = plait_drbg_seed(&d, pers, sizeof(pers) - 1)) != 0) goto exit;
    if ((rc = plait_pki_ca_create(cfg, &d, &ca_crt, &ca_key)) != 0) goto exit;
    if ((rc = plait_pki_server_issue(cfg, ca_crt, ca_key, &d, &srv_crt, &srv_key)) != 0) goto exit;
    /* Keys first: a crash half-way leaves ca.key, so a retry refuses to mint a
     * second CA over an existing one; the operator removes the directory. */
    if ((rc = dir_path(p, sizeof(p), dir, "ca.key")) != 0 ||
        (rc = plait_pki_write_file(p, ca_key, 1)) != 0)
        goto exit;
    if ((rc = dir_path(p, sizeof(p), dir, "ca.crt")) != 0 ||
        (rc = plait_pki_write_file(p, ca_crt, 0)) != 0)
        goto exit;
    if ((rc = dir_path(p, sizeof(p), dir, "server.key")) != 0 ||
        (rc = plait_pki_write_file(p, srv_key, 1)) != 0)
        goto exit;
    if ((rc = dir_path(p, sizeof(p), dir, "server.crt")) != 0 ||
        (rc = plait_pki_write_file(p, srv_crt, 0)) != 0)
        goto exit;
    if ((rc = dir_path(p, sizeof(p), dir, "revoked.txt")) != 0) goto exit;
    if (access(p, F_OK) != 0)
        rc = plait_pki_write_file(
            p, "# Revoked device certificates: 'serial <hex>' or 'sha256 <hex>' per line.\n", 0);
exit:
    plait_pki_free_pem(ca_crt);
    plait_pki_free_pem(ca_key);
    plait_pki_free_pem(srv_crt);
    plait_pki_free_pem(srv_key);
    plait_drbg_free(&d);
    return rc;
}

static int read_ca(const char *dir, char **crt, char **key)
{
    char p[4096];
    int rc = dir_path(p, sizeof(p), dir, "ca.crt");
    if (rc == 0) rc = plait_pki_read_file(p, crt);
    if (rc == 0) rc = dir_path(p, sizeof(p), dir, "ca.key");
    if (rc == 0) rc = plait_pki_read_file(p, key);
    return rc;
}

int plait_pki_enroll(const char *dir, const plait_pki_config_t *cfg, const char *device_id,
                     char **crt_pem, char **key_pem_out, plait_pki_cert_info_t *info)
{
    if (dir == NULL || crt_pem == NULL || key_pem_out == NULL)
        return plait_fail(PLAIT_EINVAL, "pki: NULL argument");
    *crt_pem = *key_pem_out = NULL;
    char *ca_crt = NULL, *ca_key = NULL;
    int rc = read_ca(dir, &ca_crt, &ca_key);
    if (rc == 0)
        rc = plait_pki_device_issue(cfg, ca_crt, ca_key, device_id, NULL, crt_pem, key_pem_out,
                                    info);
    plait_pki_free_pem(ca_crt);
    plait_pki_free_pem(ca_key);
    return rc;
}

int plait_pki_enroll_csr(const char *dir, const plait_pki_config_t *cfg, const uint8_t *csr,
                         size_t csr_len, const char *device_id, char **crt_pem,
                         plait_pki_cert_info_t *info)
{
    if (dir == NULL || crt_pem == NULL) return plait_fail(PLAIT_EINVAL, "pki: NULL argument");
    *crt_pem = NULL;
    char *ca_crt = NULL, *ca_key = NULL;
    int rc = read_ca(dir, &ca_crt, &ca_key);
    if (rc == 0)
        rc = plait_pki_issue_from_csr(cfg, ca_crt, ca_key, csr, csr_len, device_id, NULL, crt_pem,
                                      info);
    plait_pki_free_pem(ca_crt);
    plait_pki_free_pem(ca_key);
    return rc;
}

int plait_pki_revoke(const char *dir, const char *serial_hex, const uint8_t *fingerprint)
{
    char norm[PLAIT_PKI_SERIAL_HEX_MAX + 1];
    if (dir == NULL || (serial_hex == NULL && fingerprint == NULL))
        return plait_fail(PLAIT_EINVAL, "pki: revoke needs a serial or a fingerprint");
    if (serial_hex != NULL && plait__pki_serial_norm(serial_hex, norm) != 0)
        return plait_fail(PLAIT_EINVAL, "pki: serial must be 1..%d hex digits",
                          PLAIT_PKI_SERIAL_HEX_MAX);
    char p[4096], line[256];
    int rc = dir_path(p, sizeof(p), dir, "revoked.txt");
    if (rc != 0) return rc;
    size_t n = 0;
    if (serial_hex != NULL) n += (size_t)snprintf(line + n, sizeof(line) - n, "serial %s\n", norm);
    if (fingerprint != NULL) {
        char hex[65];
        plait_hex(fingerprint, 32, hex);
        n += (size_t)snprintf(line + n, sizeof(line) - n, "sha256 %s\n", hex);
    }
    int fd = open(p, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return plait_fail(PLAIT_EIO, "%s: %s", p, strerror(errno));
    ssize_t w = write(fd, line, n);
    int ok = w == (ssize_t)n && fsync(fd) == 0;
    if (close(fd) != 0) ok = 0;
    return ok ? 0 : plait_fail(PLAIT_EIO, "%s: append failed", p);
}
