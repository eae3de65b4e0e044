/*
 * stagedir.h (private to aggregator/): building a directory atomically.
 *
 * `init` builds a deployment in a staging directory next to its target
 * (same parent, so the same file system) and renames it into place only
 * when every file is written and synced: a failure (full disk, bad model,
 * signal) leaves no half deployment at the target to block a re-run. A
 * process killed outright can leave the hidden staging directory
 * ".NAME.init-XXXXXX" behind; it blocks nothing and may be deleted.
 */
#ifndef PLAIT_AGG_STAGEDIR_H
#define PLAIT_AGG_STAGEDIR_H

#include <stddef.h>

/**
 * \brief Refuse a target that exists and is not an empty directory, then
 *        create an empty 0700 staging directory beside it; its path goes to tmp.
 * \return 0; PLAIT_EBUSY if dir holds something; PLAIT_EIO / PLAIT_EINVAL otherwise.
 */
int plait__stage_create(const char *dir, char *tmp /* OUT */, size_t tmp_len);

/**
 * \brief Rename the staging directory onto dir (which must be missing or an
 *        empty directory) and sync the parent directory.
 * \return 0, or PLAIT_EBUSY / PLAIT_EIO; on error the staging directory is kept.
 */
int plait__stage_commit(const char *tmp, const char *dir);

/** \brief Remove the staging directory and the files in it (flat). NULL or "" is a no-op. */
void plait__stage_discard(const char *tmp);

#endif
