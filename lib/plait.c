/*
 * plait.c: the error table and the per-thread failure detail.
 *
 * The detail buffer is thread-local, so concurrent callers (the client's
 * training worker, the aggregator's thread pool) never see each other's
 * messages. It is plain text composed by plait code from sizes, names and
 * codes; callers must not pass secret or private bytes into it.
 */
#include "plait/plait.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>

const char *plait_strerror(int err)
{
    switch (err) {
    case 0: return "success";
#define XX(name, code, msg) case code: return msg;
        PLAIT_ERR_MAP(XX)
#undef XX
    default: return "unknown error";
    }
}

const char *plait_err_name(int err)
{
    switch (err) {
    case 0: return "PLAIT_OK";
#define XX(name, code, msg) case code: return "PLAIT_" #name;
        PLAIT_ERR_MAP(XX)
#undef XX
    default: return "PLAIT_EUNKNOWN";
    }
}

static _Thread_local char err_detail[512];
static _Thread_local int err_code;

int plait_fail(int err, const char *fmt, ...)
{
    /* Format into a scratch buffer first: callers often prefix context to
     * the previous detail (plait_fail(rc, "%s: %s", path, plait_errmsg())),
     * and vsnprintf into the buffer an argument points into is undefined
     * (it printed garbled messages, e.g. serve's on a full disk). */
    char tmp[sizeof(err_detail)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    memcpy(err_detail, tmp, sizeof(err_detail));
    err_code = err;
    return err;
}

const char *plait_errmsg(void)
{
    if (err_detail[0] != '\0') return err_detail;
    return plait_strerror(err_code);
}

void plait_clear_error(void)
{
    err_detail[0] = '\0';
    err_code = 0;
}

void plait__assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "plait: assertion failed: %s (%s:%d)\n", expr, file, line);
    fflush(stderr);
    abort();
}
