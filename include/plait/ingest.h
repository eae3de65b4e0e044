/*
 * ingest.h: turning the user's files into store records.
 *
 * Two formats, parsed by pure functions that call back once per record, so
 * the same parsers serve `plait-agent ingest` (records go into the store) and
 * the simulator (records are dealt out to virtual users):
 *
 *   TEXT   records are blocks of lines separated by one or more blank lines
 *          (a line holding only spaces, tabs or \r is blank). \r\n line ends
 *          become \n; the block's trailing whitespace is dropped; lines keep
 *          their indentation. Records have no time, kind or user.
 *
 *   JSONL  one JSON object per line (RFC 8259, parsed by plait_json with
 *          depth 16). "text" (string, non-empty) is required; "time" (integer
 *          >= 0, unix seconds), "kind" (string) and "user" (string) are
 *          optional (null counts as absent); other members are ignored. Empty and whitespace-only
 *          lines are skipped; a trailing \r is ignored.
 *
 * Text must be UTF-8 without NUL bytes in both formats. Errors name the
 * 1-based line ("jsonl line 12: \"time\" is not an integer") and never quote
 * the input. Lines are counted by '\n'.
 *
 * Callbacks and errors: records are delivered in file order as they are
 * parsed, so when line k is bad the callback has already seen the records
 * before it. plait_ingest_file wraps everything in one store transaction and
 * rolls back on any error, so a file is ingested entirely or not at all.
 *
 * Thread-safety: the parsers are reentrant; plait_ingest_file uses the store
 * and follows its one-store-per-thread rule.
 */
#ifndef PLAIT_INGEST_H
#define PLAIT_INGEST_H

#include "plait/plait.h"
#include "plait/store.h"

/** Input formats. */
typedef enum {
    PLAIT_INGEST_TEXT = 0,  /* blank-line separated blocks */
    PLAIT_INGEST_JSONL = 1  /* JSON lines */
} plait_ingest_format_t;

/** Default cap on the size of a file plait_ingest_file reads (256 MiB). */
#define PLAIT_INGEST_DEFAULT_MAX_FILE ((size_t)256 << 20)

/**
 * Record callback of the parsers. All pointers are valid only during the call.
 * \param ud The caller's pointer.
 * \param time Unix seconds, or PLAIT_STORE_TIME_NOW when the record has none.
 * \param kind NUL-terminated, or NULL when the record has none (not validated here:
 *             the store checks kinds).
 * \param user NUL-terminated, or NULL when the record has none.
 * \param text UTF-8 without NUL, NUL-terminated, len >= 1 bytes.
 * \param len Bytes of text.
 * \return 0 to continue; a negative PLAIT_E* code to fail (the parser returns
 *         it, adding the line number to plait_errmsg()); a positive value to
 *         stop (the parser returns it unchanged).
 */
typedef int (*plait_ingest_cb)(void *ud, int64_t time, const char *kind, const char *user,
                               const char *text, size_t len);

/**
 * \brief Split text into blank-line separated records.
 * \param buf Input; need not be NUL-terminated; may be NULL only if len is 0.
 * \param len Bytes of input.
 * \param cb Called once per record; must not be NULL.
 * \param ud Passed to cb.
 * \return 0; cb's positive stop value; cb's negative code; PLAIT_EPROTO
 *         (invalid UTF-8 or NUL, detail names the line); PLAIT_ENOMEM;
 *         PLAIT_EINVAL (NULL cb, or NULL buf with len > 0).
 */
int plait_ingest_text(const char *buf, size_t len, plait_ingest_cb cb, void *ud);

/**
 * \brief Parse JSON lines.
 * \param buf Input; need not be NUL-terminated; may be NULL only if len is 0.
 * \param len Bytes of input.
 * \param cb Called once per record; must not be NULL.
 * \param ud Passed to cb.
 * \return 0; cb's positive stop value; cb's negative code; PLAIT_EPROTO
 *         (a line is not valid JSON, not an object, or has a missing or
 *         mistyped field; detail names the line); PLAIT_ETOOBIG (a JSON limit
 *         or an out-of-range integer); PLAIT_ENOMEM; PLAIT_EINVAL.
 */
int plait_ingest_jsonl(const char *buf, size_t len, plait_ingest_cb cb, void *ud);

/**
 * \brief Read a file and add its records to the store in one transaction
 *        (all or nothing). Records without time get the current time; without
 *        kind, PLAIT_STORE_DEFAULT_KIND. "user" is ignored (one device, one user).
 * \param st An open store with no transaction open.
 * \param path File to read; must be a regular file.
 * \param format PLAIT_INGEST_TEXT or PLAIT_INGEST_JSONL.
 * \param max_bytes Largest file accepted, checked before reading; 0 means
 *                  PLAIT_INGEST_DEFAULT_MAX_FILE.
 * \param n_added OUT (may be NULL): records added (0 on failure).
 * \return 0; PLAIT_EINVAL (bad argument, not a regular file, or a record the
 *         store refuses: bad kind, text...); PLAIT_ENOENT (no such file);
 *         PLAIT_ETOOBIG (file larger than max_bytes, or a record longer than
 *         the store's max_text); PLAIT_EPROTO (parse error with line number);
 *         PLAIT_EIO; PLAIT_EBUSY; PLAIT_ENOMEM.
 */
int plait_ingest_file(plait_store_t *st, const char *path, plait_ingest_format_t format,
                      size_t max_bytes, int64_t *n_added /* OUT */) PLAIT_WUR;

#endif /* PLAIT_INGEST_H */
