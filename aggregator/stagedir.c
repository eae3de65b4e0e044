/*
 * stagedir.c: build-then-rename directories for `init` (stagedir.h).
 */
#include "stagedir.h"
#include "plait/file.h"
#include "plait/plait.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Split dir (trailing slashes ignored) into its parent and last component. */
static int split(const char *dir, char *parent, size_t plen, char *name, size_t nlen)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    if (n == 0 || (n == 1 && dir[0] == '/')) return plait_fail(PLAIT_EINVAL, "%s: not a directory name", dir);
    size_t s = n;
    while (s > 0 && dir[s - 1] != '/') s--;
    const char *base = dir + s;
    size_t blen = n - s;
    if ((blen == 1 && base[0] == '.') || (blen == 2 && base[0] == '.' && base[1] == '.'))
        return plait_fail(PLAIT_EINVAL, "%s: name the new directory itself, not . or ..", dir);
    int w1 = s == 0 ? snprintf(parent, plen, ".") : snprintf(parent, plen, "%.*s", (int)(s > 1 ? s - 1 : 1), dir);
    int w2 = snprintf(name, nlen, "%.*s", (int)blen, base);
    if (w1 < 0 || (size_t)w1 >= plen || w2 < 0 || (size_t)w2 >= nlen)
        return plait_fail(PLAIT_EINVAL, "%.64s...: path too long", dir);
    return 0;
}

/* 1 when dir is missing or an empty directory, 0 when it holds something. */
static int vacant(const char *dir)
{
    struct stat st;
    if (stat(dir, &st) != 0) return errno == ENOENT;
    if (!S_ISDIR(st.st_mode)) return 0;
    DIR *d = opendir(dir);
    if (!d) return 0;
    int empty = 1;
    struct dirent *e;
    while (empty && (e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) empty = 0;
    closedir(d);
    return empty;
}

int plait__stage_create(const char *dir, char *tmp, size_t tmp_len)
{
    char parent[4096], name[256];
    if (tmp_len) tmp[0] = '\0';
    int rc = split(dir, parent, sizeof(parent), name, sizeof(name));
    if (rc != 0) return rc;
    if (!vacant(dir))
        return plait_fail(PLAIT_EBUSY, "%s exists and is not an empty directory (an existing deployment is "
                          "never overwritten)", dir);
    int w = snprintf(tmp, tmp_len, "%s/.%s.init-XXXXXX", parent, name);
    if (w < 0 || (size_t)w >= tmp_len) return plait_fail(PLAIT_EINVAL, "%.64s...: path too long", dir);
    if (mkdtemp(tmp) == NULL) {
        int e = errno;
        tmp[0] = '\0';
        return plait_fail(PLAIT_EIO, "%s: cannot create a staging directory there: %s", parent, strerror(e));
    }
    return 0;
}

int plait__stage_commit(const char *tmp, const char *dir)
{
    char parent[4096], name[256];
    int rc = split(dir, parent, sizeof(parent), name, sizeof(name));
    if (rc != 0) return rc;
    /* rename(2) replaces a missing or empty directory atomically and fails
     * on a non-empty one, so a deployment that appeared meanwhile is kept. */
    /* The staged entries must be durable before the name points at them. */
    if ((rc = plait_file_sync_dir(tmp, 1)) != 0) return rc;
    if (rename(tmp, dir) != 0) {
        int e = errno;
        if (e == ENOTEMPTY || e == EEXIST || e == ENOTDIR)
            return plait_fail(PLAIT_EBUSY, "%s exists and is not an empty directory (an existing deployment is "
                              "never overwritten)", dir);
        return plait_fail(PLAIT_EIO, "%s: rename from %s: %s", dir, tmp, strerror(e));
    }
    return plait_file_sync_dir(parent, 1);
}

void plait__stage_discard(const char *tmp)
{
    if (tmp == NULL || tmp[0] == '\0') return;
    DIR *d = opendir(tmp);
    if (d) {
        struct dirent *e;
        char p[4400];
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
            snprintf(p, sizeof(p), "%s/%s", tmp, e->d_name);
            (void)unlink(p);
        }
        closedir(d);
    }
    (void)rmdir(tmp);
}
