/*
 * file.h: opening the files a user names (--model, --text, --adapter,
 * configs, lists) without ever blocking on them.
 *
 * A FIFO, character device or socket given where a file is expected would
 * make a plain open() or read() wait forever for a writer. These helpers
 * open with O_NONBLOCK, fstat the descriptor first and refuse anything that
 * is not a regular file with an error that says what it is ("--text x: is a
 * FIFO, not a regular file"), then clear O_NONBLOCK for the reads.
 *
 * `label` is what error details start with; NULL means the path. Callers
 * whose paths may be private pass a label without the path.
 *
 * Thread-safety: reentrant (errors go to the calling thread's plait_fail).
 */
#ifndef PLAIT_FILE_H
#define PLAIT_FILE_H

#include "plait/plait.h"

#include <stdio.h>
#include <sys/stat.h>

/**
 * \brief Open a regular file read-only (O_CLOEXEC).
 * \param st_out  if not NULL, the descriptor's fstat.
 * \return 0 and *fd_out; PLAIT_ENOENT if missing, PLAIT_EINVAL if not a
 *         regular file, PLAIT_EIO otherwise. Nothing is left open on error.
 */
int plait_file_open(const char *path, const char *label, int *fd_out /* OUT */,
                    struct stat *st_out /* OUT, optional */) PLAIT_WUR;

/** \brief plait_file_open as a stdio stream opened "rb"; same errors. */
int plait_file_fopen(const char *path, const char *label, FILE **out /* OUT */) PLAIT_WUR;

/**
 * \brief Read a whole regular file of at most max bytes into a fresh buffer
 *        (one byte more is allocated and set to NUL). The size is checked
 *        before anything is allocated, and a file that shrinks or grows while
 *        it is read is refused (PLAIT_EIO) rather than returned half-read.
 * \return 0 with *out (free()) and *len; PLAIT_ETOOBIG above max; as
 *         plait_file_open otherwise.
 */
int plait_file_read(const char *path, const char *label, size_t max, uint8_t **out /* OUT */,
                    size_t *len /* OUT */) PLAIT_WUR;

/**
 * \brief Map a whole regular file read-only (MAP_PRIVATE), opened as
 *        plait_file_open does. The mapping stays valid after the descriptor
 *        is closed; the file must not be truncated or rewritten while it is
 *        mapped (a read past a truncated end is SIGBUS).
 * \param label  what error details start with; NULL means the path.
 * \return 0 with *map_out (release with plait_file_unmap) and *len_out > 0;
 *         PLAIT_EIO for a missing, non-regular or empty file or a failed
 *         mmap ("<label>: empty file", "<label>: mmap failed: <reason>").
 *         *map_out is NULL on error.
 */
int plait_file_map(const char *path, const char *label, void **map_out /* OUT */,
                   size_t *len_out /* OUT */) PLAIT_WUR;

/** \brief Release a mapping from plait_file_map; NULL does nothing. */
void plait_file_unmap(void *map, size_t len);

/**
 * \brief Make a directory's entries durable: open it read-only and fsync it.
 *        A rename, create or unlink in a directory survives a crash only once
 *        the directory itself is synced.
 * \param must_open  0: a directory that cannot be opened (no read
 *        permission) is skipped and 0 returned; a failed fsync is still
 *        reported. Non-zero: failing to open it is an error too.
 * \return 0; PLAIT_EIO ("<dir>: cannot sync the directory: <reason>").
 */
int plait_file_sync_dir(const char *dir, int must_open);

#endif /* PLAIT_FILE_H */
