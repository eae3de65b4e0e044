/*
 * plait.h: version, the error table, and the per-thread error detail.
 *
 * Every plait function that can fail returns an int: 0 is success, a negative
 * value is one of the PLAIT_E* codes below, a positive value is a count or a
 * number of bytes. One X-macro table generates the enum, plait_strerror() and
 * plait_err_name(), so a code's name and message cannot drift apart.
 *
 * A code says what kind of failure happened; the detail ("model.bin: file is
 * 1000 bytes, header implies 1056540") is kept per thread, as sqlite3_errmsg()
 * keeps it per connection, and read with plait_errmsg(). The detail never
 * holds payload bytes, training text, gradients, keys or seeds.
 *
 * Thread-safety: all functions here may be called from any thread.
 */
#ifndef PLAIT_H
#define PLAIT_H

#include <stddef.h>
#include <stdint.h>

#define PLAIT_VERSION_MAJOR 0
#define PLAIT_VERSION_MINOR 1
#define PLAIT_VERSION_PATCH 0
#define PLAIT_VERSION_STRING "0.1.0"

#define PLAIT_ERR_MAP(XX)                                                     \
    XX(EINVAL, -1, "invalid argument")                                        \
    XX(ENOMEM, -2, "out of memory")                                           \
    XX(EPROTO, -3, "malformed input")                                         \
    XX(ETOOBIG, -4, "exceeds limit")                                          \
    XX(EAUTH, -5, "authentication failed")                                    \
    XX(EAGAIN, -6, "need more")                                               \
    XX(EBUSY, -7, "busy, retry")                                              \
    XX(ESTALE, -8, "wrong round")                                             \
    XX(EIO, -9, "I/O error")                                                  \
    XX(EINTERNAL, -10, "internal error (bug)")                                \
    XX(ENOENT, -11, "not found")                                              \
    XX(EMISMATCH, -12, "does not match")                                      \
    XX(ECANCELED, -13, "canceled")                                            \
    XX(EREFUSED, -14, "refused: unsafe request")                              \
    XX(ETHRESHOLD, -15, "too few participants for the threshold")

typedef enum {
    PLAIT_OK = 0,
#define PLAIT__XX(name, code, msg) PLAIT_##name = (code),
    PLAIT_ERR_MAP(PLAIT__XX)
#undef PLAIT__XX
} plait_errno_t;

/** \brief Human-readable message for a code ("invalid argument"); never NULL. */
const char *plait_strerror(int err);

/** \brief Symbolic name of a code ("PLAIT_EINVAL"); never NULL. */
const char *plait_err_name(int err);

/**
 * \brief Record the detail of the failure about to be returned on this thread.
 * \return err, so that callers can write `return plait_fail(PLAIT_EIO, "...")`.
 */
int plait_fail(int err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/**
 * \brief Detail of the last failure recorded on this thread, or the generic
 *        message of the code when no detail was recorded. Valid until the next
 *        plait call on this thread.
 */
const char *plait_errmsg(void);

/** \brief Forget the detail recorded on this thread. */
void plait_clear_error(void);

/** Always-on assertion for broken invariants (never for untrusted input). */
#define PLAIT_ASSERT(x)                                                       \
    do {                                                                      \
        if (!(x)) plait__assert_fail(#x, __FILE__, __LINE__);                 \
    } while (0)

void plait__assert_fail(const char *expr, const char *file, int line)
#if defined(__GNUC__)
    __attribute__((noreturn))
#endif
    ;

#if defined(__GNUC__)
#define PLAIT_WUR __attribute__((warn_unused_result))
#else
#define PLAIT_WUR
#endif

#endif /* PLAIT_H */
