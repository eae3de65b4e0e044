/*
 * crashpoint.c: PLAIT_CRASH_POINT (see crashpoint.h), a test hook.
 *
 * Contract: the variable is parsed once (pthread_once); a pass through the
 * configured point is counted atomically, and the N-th raises SIGKILL in
 * this process. Nothing is logged and nothing outside the process is touched.
 */
#include "plait/crashpoint.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static char g_name[64];
static long g_nth;
static atomic_long g_passes;

static void read_env(void)
{
    const char *e = getenv("PLAIT_CRASH_POINT");
    if (!e) return;
    const char *colon = strchr(e, ':');
    size_t len = colon ? (size_t)(colon - e) : strlen(e);
    if (len == 0 || len >= sizeof(g_name)) return;
    long n = 1;
    if (colon) {
        char *end = NULL;
        n = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || *end != '\0' || n < 1) return;
    }
    memcpy(g_name, e, len);
    g_name[len] = '\0';
    g_nth = n;
}

void plait_crash_point(const char *name)
{
    pthread_once(&g_once, read_env);
    if (g_name[0] == '\0' || !name || strcmp(name, g_name) != 0) return;
    if (atomic_fetch_add(&g_passes, 1) + 1 == g_nth) raise(SIGKILL);
}
