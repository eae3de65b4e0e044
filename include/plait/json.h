/*
 * json.h: a small, strict, bounded JSON reader and a safe JSON writer.
 *
 * The reader parses exactly one RFC 8259 value from an untrusted byte span
 * (it need not be NUL-terminated and is never read past len) into a tree of
 * nodes. It is strict: no comments, no trailing commas, no leading zeros, no
 * NaN/Infinity, no single quotes, no control characters or invalid UTF-8 in
 * strings, no lone surrogates, no duplicate object keys, no trailing bytes
 * after the value except whitespace. Every resource it uses is bounded by a
 * plait_json_limits_t (nesting depth, node count, decoded string length).
 *
 * Strings are decoded to UTF-8 and stored NUL-terminated. Because C callers
 * (config keys, tokenizer names, sqlite text) treat strings as C strings, the
 * escape \u0000 is REJECTED (PLAIT_EPROTO): a decoded string never contains
 * a NUL byte, so plait_json_string()'s length always equals strlen().
 *
 * Errors: malformed input gives PLAIT_EPROTO and an exceeded limit gives
 * PLAIT_ETOOBIG; in both cases plait_errmsg() names the byte offset and what
 * was wrong ("json: offset 17: expected ':' after object key"). The detail
 * never contains bytes of the input, since documents may hold private text.
 *
 * Worked example (reading a safetensors-style header):
 *
 *     plait_json_t *root = NULL;
 *     int rc = plait_json_parse(buf, len, &root);
 *     if (rc != 0) return rc;                       // detail in plait_errmsg()
 *     for (size_t i = 0; i < plait_json_len(root); i++) {
 *         const char *name = plait_json_key_at(root, i);
 *         const plait_json_t *t = plait_json_at(root, i);
 *         const plait_json_t *dt = plait_json_get(t, "dtype");
 *         const char *dtype = plait_json_string(dt, NULL);   // NULL if absent or not a string
 *         int64_t off;
 *         if (plait_json_int64(plait_json_at(plait_json_get(t, "data_offsets"), 0), &off) != 0) ...
 *     }
 *     plait_json_free(root);
 *
 * The writer (plait_buf_t and plait_json_escape) builds JSON text such as a
 * CLI's {"epsilon":1.5} or a log sink's one-object-per-line output, escaping
 * strings so the result is always valid JSON.
 *
 * Documents may hold private text, so plait_json_free and plait_buf_free
 * wipe the string memory they release, and plait_buf_t never leaves a stale
 * copy behind when it grows.
 *
 * Thread-safety: parsing is reentrant; a parsed tree is immutable and may be
 * read from several threads at once; a plait_buf_t is used by one thread at a
 * time. Numbers are converted with strtod/snprintf, which use the C locale
 * unless the process calls setlocale(); plait programs never do.
 */
#ifndef PLAIT_JSON_H
#define PLAIT_JSON_H

#include <stdarg.h>
#include <stdbool.h>

#include "plait/plait.h"

/** A parsed JSON value (opaque). Owned by the root returned by plait_json_parse. */
typedef struct plait_json_s plait_json_t;

/** The type of a JSON value. */
typedef enum {
    PLAIT_JSON_NULL = 0,
    PLAIT_JSON_BOOL,
    PLAIT_JSON_NUMBER,
    PLAIT_JSON_STRING,
    PLAIT_JSON_ARRAY,
    PLAIT_JSON_OBJECT
} plait_json_type_t;

/** Hard ceiling for plait_json_limits_t.max_depth: the parser recurses once per level. */
#define PLAIT_JSON_MAX_DEPTH_CEILING 1024

/** Resource limits for one parse. Fill with plait_json_limits_default(). */
typedef struct plait_json_limits_s {
    size_t max_depth;   /* nesting of arrays/objects; 1..PLAIT_JSON_MAX_DEPTH_CEILING (default 64) */
    size_t max_nodes;   /* values of any type in the document, >= 1 (default 1,000,000) */
    size_t max_string;  /* decoded bytes of one string or key, >= 1 (default 16 MiB) */
} plait_json_limits_t;

/**
 * \brief Fill limits with the defaults (depth 64, 1,000,000 nodes, 16 MiB strings).
 * \param limits The struct to fill; must not be NULL.
 */
void plait_json_limits_default(plait_json_limits_t *limits);

/**
 * \brief Check a limits struct.
 * \param limits The limits to check; may be NULL (gives PLAIT_EINVAL).
 * \return 0, or PLAIT_EINVAL (with detail) if a field is out of range.
 */
int plait_json_limits_validate(const plait_json_limits_t *limits);

/**
 * \brief Parse exactly one JSON value with the default limits.
 * \param buf The document; need not be NUL-terminated; may be NULL only if len is 0.
 * \param len Bytes in buf. Nothing beyond buf[len-1] is read.
 * \param out OUT: on success the root, owned by the caller (free with
 *            plait_json_free); on failure set to NULL. Must not be NULL.
 * \return 0; PLAIT_EPROTO if the document is malformed (including empty input,
 *         a truncated document, trailing garbage, duplicate keys);
 *         PLAIT_ETOOBIG if a limit is exceeded or a number is outside the range
 *         of a double; PLAIT_ENOMEM; PLAIT_EINVAL for a NULL out or buf.
 */
int plait_json_parse(const char *buf, size_t len, plait_json_t **out /* OUT */) PLAIT_WUR;

/**
 * \brief Parse exactly one JSON value with the given limits.
 * \param limits Limits to apply; NULL means the defaults. Must pass
 *               plait_json_limits_validate().
 * \return As plait_json_parse(), plus PLAIT_EINVAL for invalid limits.
 */
int plait_json_parse_ex(const char *buf, size_t len, const plait_json_limits_t *limits,
                        plait_json_t **out /* OUT */) PLAIT_WUR;

/**
 * \brief Free a tree returned by plait_json_parse, wiping its strings. Only
 *        roots may be freed; nodes reached through accessors belong to their root.
 * \param v The root; NULL does nothing.
 */
void plait_json_free(plait_json_t *v);

/**
 * \brief Type of a value.
 * \param v A node; may be NULL.
 * \return The node's type; PLAIT_JSON_NULL for a NULL v (test the pointer
 *         itself to tell "missing" from "null").
 */
plait_json_type_t plait_json_type(const plait_json_t *v);

/**
 * \brief Look up an object member by key (exact byte comparison, O(n)).
 * \param obj An object node; NULL or a non-object gives NULL.
 * \param key NUL-terminated key; must not be NULL.
 * \return The member's value (borrowed from the tree) or NULL if absent.
 */
const plait_json_t *plait_json_get(const plait_json_t *obj, const char *key);

/**
 * \brief Number of elements of an array or members of an object.
 * \param v A node; may be NULL.
 * \return The count; 0 for NULL, a scalar, or an empty array/object.
 */
size_t plait_json_len(const plait_json_t *v);

/**
 * \brief Element i of an array, or the value of member i of an object (document order).
 * \param v An array or object; anything else (or NULL) gives NULL.
 * \param i Index; i >= plait_json_len(v) gives NULL.
 * \return The node, borrowed from the tree, or NULL.
 */
const plait_json_t *plait_json_at(const plait_json_t *v, size_t i);

/**
 * \brief Key of member i of an object, in document order.
 * \param obj An object; anything else gives NULL.
 * \param i Index; out of range gives NULL.
 * \return NUL-terminated UTF-8 key with no embedded NUL, borrowed from the tree.
 */
const char *plait_json_key_at(const plait_json_t *obj, size_t i);

/**
 * \brief Value of a number as a double.
 * \param v A number node.
 * \return The value (always finite), or NaN if v is NULL or not a number.
 */
double plait_json_number(const plait_json_t *v);

/**
 * \brief Value of a number as an exact int64.
 *
 * A number without fraction or exponent ("-42") is converted exactly over the
 * whole int64 range. A number with a fraction or exponent ("1e3", "2.0") is
 * accepted only if its double value is integral and within +-2^53, where
 * doubles are exact.
 *
 * \param v A number node; may be NULL (gives PLAIT_EPROTO).
 * \param out OUT: the value; untouched on failure. Must not be NULL.
 * \return 0; PLAIT_EPROTO if v is not a number or not an integer;
 *         PLAIT_ETOOBIG if it is an integer outside the representable range.
 */
int plait_json_int64(const plait_json_t *v, int64_t *out /* OUT */) PLAIT_WUR;

/**
 * \brief Value of a string.
 * \param v A string node.
 * \param len OUT (may be NULL): the length in bytes, excluding the terminator.
 * \return NUL-terminated UTF-8 without embedded NUL, borrowed from the tree;
 *         NULL if v is NULL or not a string.
 */
const char *plait_json_string(const plait_json_t *v, size_t *len /* OUT */);

/**
 * \brief Value of a boolean.
 * \param v A node; may be NULL (gives PLAIT_EPROTO).
 * \param out OUT: the value; untouched on failure. Must not be NULL.
 * \return 0, or PLAIT_EPROTO if v is not a boolean.
 */
int plait_json_bool(const plait_json_t *v, bool *out /* OUT */) PLAIT_WUR;

/**
 * \brief Check that n bytes are well-formed UTF-8 (RFC 3629: no overlong
 *        forms, no surrogates, nothing above U+10FFFF) and contain no NUL.
 *        The same rules the reader applies to raw string bytes.
 * \param s Bytes; may be NULL only if n is 0.
 * \param n Bytes in s.
 * \param bad OUT (may be NULL): on failure, the offset of the first bad byte.
 * \return true if valid.
 */
bool plait_utf8_valid(const char *s, size_t n, size_t *bad /* OUT */);

/* ------------------------------------------------------------------------ */
/* Writer                                                                    */
/* ------------------------------------------------------------------------ */

/**
 * \brief Escape n bytes of UTF-8 as the inside of a JSON string (no quotes),
 *        snprintf-style.
 *
 * '"', '\\' and control characters are escaped (\n, \t, ... or \u00XX);
 * everything else is copied. Invalid UTF-8 sequences are replaced with U+FFFD
 * so the output is always valid JSON. An embedded NUL is written as \u0000,
 * which is valid JSON but which plait_json_parse deliberately rejects.
 *
 * \param s Input bytes; may be NULL only if n is 0.
 * \param n Bytes in s.
 * \param out Output buffer; may be NULL only if cap is 0.
 * \param cap Size of out in bytes.
 * \return The length of the full escaped text, excluding the NUL terminator.
 *         If it is < cap, out holds the text NUL-terminated; otherwise out
 *         holds "" (when cap > 0) and the caller should retry with a buffer of
 *         at least return + 1 bytes.
 */
size_t plait_json_escape(const char *s, size_t n, char *out, size_t cap);

/**
 * A growable text buffer (value type: init / free). Errors are sticky: after
 * an append fails (out of memory or over max), every later append does
 * nothing and returns the same code, so a caller can build a whole line and
 * check plait_buf_status() once at the end. data is always NUL-terminated
 * once anything was appended (it is NULL before).
 */
typedef struct plait_buf_s {
    char *data;  /* NUL-terminated text, owned; NULL until the first append */
    size_t len;  /* bytes of text, excluding the terminator */
    size_t cap;  /* allocated bytes */
    size_t max;  /* maximum len; appending beyond it gives PLAIT_ETOOBIG */
    int err;     /* first error, or 0 */
} plait_buf_t;

/**
 * \brief Initialize an empty buffer. Cannot fail; makes plait_buf_free safe.
 * \param b The buffer; must not be NULL.
 * \param max Largest text length allowed; 0 means SIZE_MAX / 2.
 */
void plait_buf_init(plait_buf_t *b, size_t max);

/**
 * \brief Wipe and release the buffer's memory and return it to the initialized, empty state.
 * \param b The buffer; NULL does nothing; may be called twice.
 */
void plait_buf_free(plait_buf_t *b);

/**
 * \brief Forget the text and any sticky error but keep the allocation.
 * \param b An initialized buffer; must not be NULL.
 */
void plait_buf_reset(plait_buf_t *b);

/**
 * \brief The sticky status.
 * \param b An initialized buffer; must not be NULL.
 * \return 0, PLAIT_ENOMEM or PLAIT_ETOOBIG.
 */
int plait_buf_status(const plait_buf_t *b);

/**
 * \brief Append n raw bytes (no escaping).
 * \param b An initialized buffer; must not be NULL.
 * \param s Bytes; may be NULL only if n is 0.
 * \return 0, PLAIT_ENOMEM or PLAIT_ETOOBIG (sticky).
 */
int plait_buf_append(plait_buf_t *b, const char *s, size_t n);

/**
 * \brief Append printf-formatted text. Nothing is escaped: never format
 *        untrusted text with %s here, use plait_buf_json_string.
 * \param b An initialized buffer; must not be NULL.
 * \param fmt printf format; must not be NULL.
 * \return 0, PLAIT_ENOMEM, PLAIT_ETOOBIG (sticky) or PLAIT_EINVAL on a
 *         formatting error (not sticky, nothing appended).
 */
int plait_buf_printf(plait_buf_t *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/**
 * \brief As plait_buf_printf, with a va_list.
 * \param b An initialized buffer; must not be NULL.
 * \param fmt printf format; must not be NULL.
 * \param ap Arguments; consumed.
 * \return As plait_buf_printf.
 */
int plait_buf_vprintf(plait_buf_t *b, const char *fmt, va_list ap)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 0)))
#endif
    ;

/**
 * \brief Append s as a quoted, escaped JSON string ("..."), per plait_json_escape.
 * \param b An initialized buffer; must not be NULL.
 * \param s Bytes; may be NULL only if n is 0.
 * \param n Bytes in s.
 * \return 0, PLAIT_ENOMEM or PLAIT_ETOOBIG (sticky).
 */
int plait_buf_json_string(plait_buf_t *b, const char *s, size_t n);

/**
 * \brief Append a number so that parsing it gives back the same double
 *        (%.17g; integral values within +-2^53 are written without exponent).
 * \param b An initialized buffer; must not be NULL.
 * \param x The value.
 * \return 0, PLAIT_ENOMEM, PLAIT_ETOOBIG (sticky), or PLAIT_EINVAL if x is
 *         NaN or infinite (JSON cannot represent them; nothing is appended and
 *         the buffer's status is unchanged).
 */
int plait_buf_json_number(plait_buf_t *b, double x);

#endif /* PLAIT_JSON_H */
