/*
 * log.c: the leveled logger behind PLAIT_LOG.
 *
 * Each line is formatted into a stack buffer and handed to the sink in one
 * call; the stderr sink writes it with one fputs so lines from threads do not
 * interleave. Lines longer than the buffer are truncated, never split.
 */
#include "plait/log.h"
#include "plait/plait.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

plait_log_level_t plait__log_level = PLAIT_LOG_INFO;
static plait_log_cb log_sink;
static void *log_ud;
static _Thread_local plait_log_cb thread_sink; /* wins over log_sink on its thread */
static _Thread_local void *thread_ud;

static const char *level_names[] = {"DEBUG", "INFO", "WARN", "ERROR", "OFF"};

const char *plait_log_level_name(plait_log_level_t level)
{
    if ((int)level < 0 || level > PLAIT_LOG_OFF) return "?";
    return level_names[level];
}

void plait_log_set_level(plait_log_level_t level) { plait__log_level = level; }

void plait_log_set_sink(plait_log_cb cb, void *ud)
{
    log_sink = cb;
    log_ud = ud;
}

void plait_log_set_thread_sink(plait_log_cb cb, void *ud, plait_log_cb *prev, void **prev_ud)
{
    if (prev) *prev = thread_sink;
    if (prev_ud) *prev_ud = thread_ud;
    thread_sink = cb;
    thread_ud = ud;
}

int plait_log_parse_level(const char *s, plait_log_level_t *out)
{
    for (int i = 0; i <= PLAIT_LOG_OFF; i++) {
        if (s && strcasecmp(s, level_names[i]) == 0) {
            *out = (plait_log_level_t)i;
            return 0;
        }
    }
    if (s && strcasecmp(s, "warning") == 0) {
        *out = PLAIT_LOG_WARN;
        return 0;
    }
    return plait_fail(PLAIT_EINVAL, "log level '%s' is not one of debug, info, warn, error, off",
                      s ? s : "(null)");
}

void plait__log(plait_log_level_t level, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (thread_sink) {
        thread_sink(level, line, thread_ud);
        return;
    }
    if (log_sink) {
        log_sink(level, line, log_ud);
        return;
    }
    char out[1100];
    snprintf(out, sizeof(out), "%s %s\n", plait_log_level_name(level), line);
    fputs(out, stderr);
}
