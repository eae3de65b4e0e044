/*
 * log.h: leveled logging with one pluggable sink.
 *
 * PLAIT_LOG(level, fmt, ...) tests the level before it evaluates its
 * arguments, so a disabled DEBUG line costs one comparison. The default sink
 * writes "LEVEL message" lines to stderr; a process (the aggregator, the
 * simulator, a test) may install its own sink to capture or reformat lines,
 * for example as one JSON object per line.
 *
 * What may be logged: round ids, pseudonymous client ids, sizes, counts,
 * durations and plait_err_name(rc). What must never be logged: payload bytes,
 * training text, gradients, keys or mask seeds.
 *
 * Thread-safety: PLAIT_LOG may be called from any thread; each line is
 * emitted with one call to the sink. plait_log_set_* are meant to be called at
 * start-up, before other threads log.
 */
#ifndef PLAIT_LOG_H
#define PLAIT_LOG_H

#include <stdarg.h>

typedef enum {
    PLAIT_LOG_DEBUG = 0,
    PLAIT_LOG_INFO = 1,
    PLAIT_LOG_WARN = 2,
    PLAIT_LOG_ERROR = 3,
    PLAIT_LOG_OFF = 4
} plait_log_level_t;

/** A sink receives one formatted line (no trailing newline). */
typedef void (*plait_log_cb)(plait_log_level_t level, const char *line, void *ud);

extern plait_log_level_t plait__log_level;

#define PLAIT_LOG(level, ...)                                                 \
    do {                                                                      \
        if ((level) >= plait__log_level) plait__log((level), __VA_ARGS__);    \
    } while (0)

void plait__log(plait_log_level_t level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/** \brief Set the lowest level that is emitted (default INFO). */
void plait_log_set_level(plait_log_level_t level);

/** \brief Install a sink; NULL restores the stderr sink. */
void plait_log_set_sink(plait_log_cb cb, void *ud);

/**
 * \brief Route this thread's lines to cb (NULL: back to the process sink) and
 *        return the previous thread sink through prev/prev_ud (for restoring).
 *        The agent uses it so each plait_agent_t logs to its own sink
 *        (plait_agent_config_t.on_log) while it runs on the calling thread.
 */
void plait_log_set_thread_sink(plait_log_cb cb, void *ud, plait_log_cb *prev /* OUT */, void **prev_ud /* OUT */);

/** \brief Parse "debug", "info", "warn", "error" or "off". \return 0 or PLAIT_EINVAL. */
int plait_log_parse_level(const char *s, plait_log_level_t *out /* OUT */);

/** \brief Name of a level ("INFO"). */
const char *plait_log_level_name(plait_log_level_t level);

#endif /* PLAIT_LOG_H */
