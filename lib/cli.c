/*
 * cli.c: strict number parsing for command-line flags (see cli.h).
 */
#include "plait/cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Flag values are echoed in errors, so cap how much of one is shown. */
#define SHOW 40

int plait_cli_int(const char *flag, const char *s, long long lo, long long hi, long long *out)
{
    if (!s || !*s) return plait_fail(PLAIT_EINVAL, "%s: missing value", flag);
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end != '\0' || errno == ERANGE)
        return plait_fail(PLAIT_EINVAL, "%s: '%.*s' is not an integer", flag, SHOW, s);
    if (v < lo || v > hi)
        return plait_fail(PLAIT_EINVAL, "%s: '%.*s' is outside %lld..%lld", flag, SHOW, s, lo, hi);
    *out = v;
    return 0;
}

int plait_cli_u64(const char *flag, const char *s, uint64_t *out)
{
    if (!s || !*s) return plait_fail(PLAIT_EINVAL, "%s: missing value", flag);
    if (*s == '-') return plait_fail(PLAIT_EINVAL, "%s: '%.*s' is negative", flag, SHOW, s);
    /* strtoull skips blanks and accepts a sign after them (" -1" becomes
     * UINT64_MAX), and base 0 reads a leading 0 as octal: take digits only,
     * decimal, or hex after 0x. */
    int hex = s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
    const char *digits = hex ? s + 2 : s;
    int lead = (*digits >= '0' && *digits <= '9') ||
               (hex && ((*digits >= 'a' && *digits <= 'f') || (*digits >= 'A' && *digits <= 'F')));
    if (!lead)
        return plait_fail(PLAIT_EINVAL, "%s: '%.*s' is not an unsigned integer", flag, SHOW, s);
    char *end;
    errno = 0;
    unsigned long long v = strtoull(digits, &end, hex ? 16 : 10);
    if (*end != '\0' || errno == ERANGE)
        return plait_fail(PLAIT_EINVAL, "%s: '%.*s' is not an unsigned integer", flag, SHOW, s);
    *out = (uint64_t)v;
    return 0;
}

int plait_cli_double(const char *flag, const char *s, double lo, double hi, double *out)
{
    if (!s || !*s) return plait_fail(PLAIT_EINVAL, "%s: missing value", flag);
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end != '\0' || errno == ERANGE || !isfinite(v))
        return plait_fail(PLAIT_EINVAL, "%s: '%.*s' is not a finite number", flag, SHOW, s);
    if (v < lo || v > hi)
        return plait_fail(PLAIT_EINVAL, "%s: '%.*s' is outside %g..%g", flag, SHOW, s, lo, hi);
    *out = v;
    return 0;
}

int plait_cli_mkdirs(const char *what, const char *path, unsigned mode)
{
    char buf[4096];
    if (!path || !*path) return plait_fail(PLAIT_EINVAL, "%s: empty folder name", what);
    size_t n = strlen(path);
    if (n >= sizeof(buf)) return plait_fail(PLAIT_EINVAL, "%s: folder name too long", what);
    memcpy(buf, path, n + 1);
    /* Each prefix ending before a '/', then the whole path. */
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0') continue;
        char c = buf[i];
        buf[i] = '\0';
        struct stat sb;
        if (stat(buf, &sb) == 0) {
            if (!S_ISDIR(sb.st_mode)) return plait_fail(PLAIT_EIO, "%s: %s is not a folder", what, buf);
        } else if (mkdir(buf, (mode_t)mode) != 0 && errno != EEXIST) {
            int e = errno;
            return plait_fail(PLAIT_EIO, "%s: cannot create folder %s: %s", what, buf, strerror(e));
        }
        buf[i] = c;
        while (i < n && buf[i + 1] == '/') i++;
    }
    return 0;
}
