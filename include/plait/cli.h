/*
 * cli.h: parsing command-line values with ranges, shared by plait-agent,
 * plait-aggregator, plait-sim and plait-bench.
 *
 * Every parser takes the flag's name so that its error detail names it:
 * "--rank: '0' is outside 1..1024". The whole string must be a number (no
 * trailing bytes, no empty string); out-of-range and non-finite values are
 * rejected. On error the out-parameter is left untouched.
 *
 * Thread-safety: reentrant.
 */
#ifndef PLAIT_CLI_H
#define PLAIT_CLI_H

#include "plait/plait.h"

/** \brief Parse a decimal integer in [lo, hi]. \return 0 or PLAIT_EINVAL. */
int plait_cli_int(const char *flag, const char *s, long long lo, long long hi, long long *out /* OUT */);
/** \brief Parse an unsigned 64-bit integer (decimal or 0x hex). \return 0 or PLAIT_EINVAL. */
int plait_cli_u64(const char *flag, const char *s, uint64_t *out /* OUT */);
/** \brief Parse a finite double in [lo, hi]. \return 0 or PLAIT_EINVAL. */
int plait_cli_double(const char *flag, const char *s, double lo, double hi, double *out /* OUT */);
/**
 * \brief Create folder path and its missing parents (as `mkdir -p`), each with mode.
 * An existing folder is fine. \return 0, PLAIT_EINVAL (empty or too long),
 * or PLAIT_EIO naming the part that could not be created and why
 * ("runs/x: cannot create folder runs: Permission denied").
 */
int plait_cli_mkdirs(const char *what, const char *path, unsigned mode);

#endif /* PLAIT_CLI_H */
