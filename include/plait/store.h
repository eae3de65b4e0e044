/*
 * store.h: the device store, the user's private interaction data.
 *
 * A store is one sqlite database file holding records: an id (assigned,
 * never reused, even after deletion), a time (unix seconds), a kind (a short
 * tag such as "chat" or "note") and the text (UTF-8). Training reads the
 * records back through a callback; the user can erase them by id or by age.
 * This module is the only owner of sqlite3.h: callers never see sqlite types.
 *
 * Worked example:
 *
 *     plait_store_config_t cfg;
 *     plait_store_config_default(&cfg);
 *     cfg.path = "/data/plait/store.db";
 *     plait_store_t *st = NULL;
 *     int rc = plait_store_open(&st, &cfg);          // creates the file if missing
 *     if (rc != 0) { log plait_err_name(rc), plait_errmsg(); return rc; }
 *     int64_t id;
 *     rc = plait_store_add(st, PLAIT_STORE_TIME_NOW, "chat", text, len, &id);
 *     rc = plait_store_foreach(st, PLAIT_STORE_TRAIN, on_record, &trainer);
 *     rc = plait_store_delete_before(st, now - 30 * 86400, &n);   // erase old data
 *     plait_store_close(st);
 *
 * Held-out split. Each record is in the held-out split or the training split,
 * decided by a hash of its id and a random salt stored in the file when it is
 * created: u = hash(salt, id) in [0, 1), held out iff u < heldout_fraction.
 * So the split of a record never changes while the fraction stays the same
 * (across reopen, deletions of other records, and ingest order), and raising
 * the fraction only moves records from train to held-out, never back. The
 * salt keeps different devices from holding out the same ids.
 *
 * Erasure. The store runs with PRAGMA secure_delete=ON, so sqlite overwrites
 * deleted text with zeros in the database pages, and after every committed
 * deletion it checkpoints the write-ahead log and truncates it
 * (wal_checkpoint(TRUNCATE)), so no copy of a deleted record remains in the
 * database file or its -wal file once plait_store_delete* returns 0 (inside
 * a plait_store_begin transaction: once plait_store_commit returns 0). Not
 * covered: copies the file system or flash translation layer keeps of blocks
 * that sqlite overwrote or truncated, and backups made by others; use
 * full-disk/file-based encryption for those.
 *
 * Untrusted files. A store file may have been damaged or replaced. Opening a
 * file that is not an sqlite database fails with PLAIT_EPROTO; a database that
 * is not a plait store, or one with a newer schema version, fails with
 * PLAIT_EMISMATCH. Every row read back is validated (types, sizes, UTF-8); a
 * bad row gives PLAIT_EPROTO with a detail naming its id.
 *
 * Errors never contain record text. SQLITE_BUSY/LOCKED become PLAIT_EBUSY;
 * other sqlite failures become PLAIT_EIO (PLAIT_ENOMEM, PLAIT_EPROTO for
 * corruption) with sqlite's message and code in the detail.
 *
 * Thread-safety: one store per thread. A store may be handed to another
 * thread, but must not be used by two threads at once; open one store per
 * thread to share a file (sqlite locks between connections; a writer waits
 * up to busy_timeout_ms, then PLAIT_EBUSY).
 */
#ifndef PLAIT_STORE_H
#define PLAIT_STORE_H

#include <stdbool.h>

#include "plait/plait.h"

/** An open store (opaque). */
typedef struct plait_store_s plait_store_t;

/** Pass as the time of plait_store_add to use the current time. */
#define PLAIT_STORE_TIME_NOW ((int64_t)-1)
/** Largest kind tag, in bytes. Kinds are 1..64 printable ASCII bytes (0x20..0x7e). */
#define PLAIT_STORE_MAX_KIND 64
/** Kind used when plait_store_add is given kind NULL. */
#define PLAIT_STORE_DEFAULT_KIND "note"
/** Schema version written by this build; files with a newer one are refused. */
#define PLAIT_STORE_SCHEMA_VERSION 1
/** Hard ceiling for plait_store_config_t.max_text. */
#define PLAIT_STORE_MAX_TEXT_CEILING ((size_t)256 << 20)

/** Store configuration. Fill with plait_store_config_default(), then set path. */
typedef struct plait_store_config_s {
    /* Database file (borrowed for the call to open). No default: must be set. */
    const char *path;
    /* Create the file (and the schema) if it does not exist (default true). */
    bool create;
    /* How long a write waits for another connection's lock before
     * PLAIT_EBUSY, in milliseconds, 0..600000 (default 5000: the agent and a
     * CLI may briefly share the file). */
    int busy_timeout_ms;
    /* Write-ahead-log journal (default true): readers do not block the
     * writer, and one fsync per checkpoint instead of per commit. false uses
     * a rollback journal (journal_mode=DELETE). */
    bool wal;
    /* PRAGMA synchronous=FULL when true, NORMAL when false (default false).
     * In WAL mode NORMAL never corrupts the database; a power cut may only
     * lose the last transactions committed before it. Losing a few seconds of
     * ingest is acceptable for an interaction log, and NORMAL saves an fsync
     * per commit (battery, flash wear). Deletions are made durable regardless:
     * they are followed by a checkpoint, which syncs the database file. */
    bool sync_full;
    /* Largest record text in bytes, 1..PLAIT_STORE_MAX_TEXT_CEILING (default
     * 1 MiB). Longer text is refused on add (PLAIT_ETOOBIG) and a longer row
     * read back is reported as PLAIT_EPROTO. */
    size_t max_text;
    /* Fraction of records in the held-out split, 0..1 (default 0.1: on-device
     * data is small, so most of it should train, while 10% still gives an
     * evaluation set of some hundreds of records for a typical user). */
    double heldout_fraction;
} plait_store_config_t;

/** Which records an iteration or count covers. */
typedef enum {
    PLAIT_STORE_ALL = 0,
    PLAIT_STORE_TRAIN = 1,
    PLAIT_STORE_HELDOUT = 2
} plait_store_split_t;

/** A record as delivered to a callback. All pointers are valid only during the callback. */
typedef struct plait_store_record_s {
    int64_t id;       /* assigned by the store, > 0, never reused */
    int64_t time;     /* unix seconds, >= 0 */
    const char *kind; /* NUL-terminated, 1..PLAIT_STORE_MAX_KIND printable ASCII bytes */
    const char *text; /* NUL-terminated UTF-8 without embedded NUL, len bytes */
    size_t len;       /* bytes of text, 1..max_text */
    bool heldout;     /* in the held-out split */
} plait_store_record_t;

/**
 * Record callback. Must not call any plait_store_* function on the same store
 * (they return PLAIT_EINVAL if it does). \return 0 to continue; any other
 * value stops the iteration and is returned by the iterating function.
 */
typedef int (*plait_store_record_cb)(void *ud, const plait_store_record_t *rec);

/**
 * \brief Fill cfg with the defaults documented in plait_store_config_t (path NULL).
 * \param cfg The config to fill; must not be NULL.
 */
void plait_store_config_default(plait_store_config_t *cfg);

/**
 * \brief Check a config.
 * \param cfg The config; NULL gives PLAIT_EINVAL.
 * \return 0, or PLAIT_EINVAL with a detail naming the bad field.
 */
int plait_store_config_validate(const plait_store_config_t *cfg);

/**
 * \brief Open (and, if cfg->create, create) a store.
 * \param out OUT: the store, owned by the caller, close with plait_store_close;
 *            set to NULL on failure. Must not be NULL.
 * \param cfg A config that passes plait_store_config_validate; borrowed.
 * \return 0; PLAIT_EINVAL (bad config); PLAIT_ENOENT (file missing and
 *         create is false); PLAIT_EPROTO (not an sqlite database, corrupt, or
 *         a plait store with malformed metadata); PLAIT_EMISMATCH (an sqlite
 *         database that is not a plait store, or a newer schema version);
 *         PLAIT_EBUSY (locked by another connection); PLAIT_EIO; PLAIT_ENOMEM.
 */
int plait_store_open(plait_store_t **out /* OUT */, const plait_store_config_t *cfg) PLAIT_WUR;

/**
 * \brief Close a store. An open transaction is rolled back.
 * \param st The store; NULL does nothing.
 */
void plait_store_close(plait_store_t *st);

/**
 * \brief Add one record.
 * \param st An open store.
 * \param time Unix seconds >= 0, or PLAIT_STORE_TIME_NOW.
 * \param kind 1..PLAIT_STORE_MAX_KIND printable ASCII bytes, NUL-terminated;
 *             NULL means PLAIT_STORE_DEFAULT_KIND.
 * \param text UTF-8 bytes without NUL; need not be NUL-terminated; must not be NULL.
 * \param len Bytes of text, 1..max_text.
 * \param id_out OUT (may be NULL): the new record's id.
 * \return 0; PLAIT_EINVAL (bad time, kind or text: empty, invalid UTF-8 or
 *         NUL, with the offset); PLAIT_ETOOBIG (len > max_text); PLAIT_EBUSY;
 *         PLAIT_EIO; PLAIT_ENOMEM.
 */
int plait_store_add(plait_store_t *st, int64_t time, const char *kind, const char *text, size_t len,
                    int64_t *id_out /* OUT */) PLAIT_WUR;

/**
 * \brief Begin a write transaction, for fast ingest of many records: adds and
 *        deletes until commit or rollback are one atomic, durable unit.
 *        Takes the write lock now (BEGIN IMMEDIATE), so PLAIT_EBUSY comes here
 *        rather than in the middle of the batch.
 * \param st An open store with no transaction open.
 * \return 0; PLAIT_EINVAL (a transaction is already open); PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_store_begin(plait_store_t *st) PLAIT_WUR;

/**
 * \brief Commit the transaction opened by plait_store_begin. If it deleted
 *        records, the log is then checkpointed and truncated as for
 *        plait_store_delete.
 * \param st An open store with a transaction open.
 * \return 0; PLAIT_EINVAL (no transaction); PLAIT_EBUSY (the transaction is
 *         still open: retry commit or roll back); PLAIT_EIO. If deletions
 *         were committed but the checkpoint could not complete, PLAIT_EBUSY
 *         with the transaction closed: see plait_store_checkpoint.
 */
int plait_store_commit(plait_store_t *st) PLAIT_WUR;

/**
 * \brief Roll back the transaction opened by plait_store_begin.
 * \param st An open store.
 * \return 0 (also when no transaction was open); PLAIT_EIO.
 */
int plait_store_rollback(plait_store_t *st);

/**
 * \brief Number of records.
 * \param st An open store.
 * \param out OUT: the count. Must not be NULL.
 * \return 0; PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_store_count(plait_store_t *st, int64_t *out /* OUT */) PLAIT_WUR;

/**
 * \brief Number of records in a split.
 * \param st An open store.
 * \param split PLAIT_STORE_ALL, _TRAIN or _HELDOUT.
 * \param out OUT: the count. Must not be NULL.
 * \return 0; PLAIT_EINVAL (bad split); PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_store_count_split(plait_store_t *st, plait_store_split_t split, int64_t *out /* OUT */) PLAIT_WUR;

/**
 * \brief Call cb for every record of a split, in increasing id order.
 *
 * Rows are validated as they are read: if row k is malformed, the callback
 * has already seen rows before it, and iteration stops with PLAIT_EPROTO.
 *
 * \param st An open store.
 * \param split Which records.
 * \param cb Callback; must not be NULL; must not use st.
 * \param ud Passed to cb.
 * \return 0 after all records; cb's non-zero return value if it stopped the
 *         iteration; PLAIT_EINVAL; PLAIT_EPROTO (malformed row, detail names
 *         its id); PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_store_foreach(plait_store_t *st, plait_store_split_t split, plait_store_record_cb cb,
                        void *ud);

/**
 * \brief Call cb once with record id.
 * \param st An open store.
 * \param id The record's id.
 * \param cb Callback; must not be NULL; must not use st.
 * \param ud Passed to cb.
 * \return cb's return value; PLAIT_ENOENT (no such record: cb not called);
 *         PLAIT_EPROTO (malformed row: cb not called); PLAIT_EBUSY; PLAIT_EIO.
 */
int plait_store_get(plait_store_t *st, int64_t id, plait_store_record_cb cb, void *ud);

/**
 * \brief Erase one record (secure delete, see the file comment).
 * \param st An open store.
 * \param id The record's id.
 * \return 0; PLAIT_ENOENT (no such record); PLAIT_EBUSY (locked; or, when
 *         the deletion committed but the checkpoint could not complete
 *         because another connection is reading, the detail says so: retry
 *         plait_store_checkpoint); PLAIT_EIO.
 */
int plait_store_delete(plait_store_t *st, int64_t id) PLAIT_WUR;

/**
 * \brief Erase every record with time < time (secure delete).
 * \param st An open store.
 * \param time Cut-off in unix seconds; records at exactly this time are kept.
 * \param n_deleted OUT (may be NULL): records erased (set also when the
 *                  result is the post-commit PLAIT_EBUSY of plait_store_delete).
 * \return As plait_store_delete, without PLAIT_ENOENT (erasing nothing is 0).
 */
int plait_store_delete_before(plait_store_t *st, int64_t time, int64_t *n_deleted /* OUT */) PLAIT_WUR;

/**
 * \brief Copy the write-ahead log into the database and truncate it
 *        (a no-op with wal = false). Called by the delete functions; call it
 *        again after they returned PLAIT_EBUSY.
 * \param st An open store with no transaction open.
 * \return 0; PLAIT_EINVAL (transaction open); PLAIT_EBUSY (another
 *         connection is reading); PLAIT_EIO.
 */
int plait_store_checkpoint(plait_store_t *st) PLAIT_WUR;

/**
 * \brief Whether the record with this id is (or would be) in the held-out split
 *        of this store. Pure function of the store's salt, fraction and id.
 * \param st An open store.
 * \param id Any id.
 */
bool plait_store_is_heldout(const plait_store_t *st, int64_t id);

#endif /* PLAIT_STORE_H */
