/*
 * crashpoint.h: a test hook for crash-consistency tests (issue #11).
 *
 * PLAIT_CRASH_POINT=NAME[:N] in the environment makes the process kill
 * itself with SIGKILL at the N-th (default: first) pass through
 * plait_crash_point(NAME). The variable is read once, at the first pass
 * through any point; unset, empty or malformed, every point is a no-op.
 * It only ever kills the process that reads it. Names in use:
 *   aggstore.commit.begin    round commit, before BEGIN IMMEDIATE
 *   aggstore.commit.version  after the version row is inserted
 *   aggstore.commit.precommit  every row written, before COMMIT
 *   aggstore.commit.done     after COMMIT, before the call returns
 *   server.commit.swap       the service loop, after the store commit,
 *                            before the in-memory global adapter is swapped
 */
#ifndef PLAIT_CRASHPOINT_H
#define PLAIT_CRASHPOINT_H

/* Thread-safe; returns (does nothing) unless this is the configured pass. */
void plait_crash_point(const char *name);

#endif
