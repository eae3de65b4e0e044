/*
 * bench.h (private to bench/): the subcommands of plait-bench and the helpers
 * they share. A subcommand is `int bench_x(int argc, char **argv)` with
 * argv[0] its own name; it returns the exit status (0 ok, 1 failure, 2 usage).
 */
#ifndef PLAIT_BENCH_H
#define PLAIT_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "plait/flags.h"

int bench_agg(int argc, char **argv);
int bench_train(int argc, char **argv);
/* bench_gguf.c: the SmolLM2-135M-shape GGUF rows of `plait-bench train --shape 135M`. */
int bench_train_135m(size_t repeats, const int *threads, int n_threads, size_t steps_opt, size_t warmup_opt);
int bench_secagg(int argc, char **argv);
int bench_serve(int argc, char **argv);
int bench_knn(int argc, char **argv);

/** Monotonic seconds. */
double bench_now(void);
/** Median of n values (sorts v in place). */
double bench_median(double *v, size_t n);
/** Parse a positive integer flag value; prints one line and returns -1 on error. */
int bench_parse_size(const char *cmd, const char *flag, const char *s, size_t max, size_t *out);
/**
 * Parse a subcommand's flags with lib/flags.c (cmd->prog "plait-bench x").
 * Returns -1 to go on, else the exit status: 0 after --help, 2 after printing
 * "plait-bench x: <what was wrong>".
 */
int bench_flags(plait_flags_cmd_t *cmd, int argc, char **argv);
/** The measured work of one run, in a forked child: fills *value, returns 0. */
typedef int (*bench_child_fn)(void *ctx, double *value);
/**
 * Run fn in a forked child so that its peak RSS (wait4 -> ru_maxrss) is its
 * own; return 0 with the child's *value and peak RSS in MiB, or -1.
 */
int bench_fork_measure(bench_child_fn fn, void *ctx, double *value, double *rss_mib);
/** FLOP/s (in GFLOP/s) of independent FMA chains on the kernel path's vectors, on `threads` threads. */
double bench_fma_peak_gflops(int threads);
/** One line describing the machine (CPU model, cores). */
void bench_machine(char *buf, size_t len);

#endif
