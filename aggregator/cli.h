/*
 * cli.h (private to aggregator/): the plait-aggregator command line. main.c
 * only forwards to plait__agg_cli_main() so the dispatcher and every
 * subcommand can be tested in-process with any output streams.
 */
#ifndef PLAIT_AGG_CLI_H
#define PLAIT_AGG_CLI_H

#include <stdio.h>

/**
 * \brief Run `plait-aggregator <command> [flags]`.
 * \param out normal output (results, --help); err: diagnostics, one line each.
 * \return the process exit status: 0 success, 1 failure while running,
 *         2 usage error (unknown command or flag, missing or bad value).
 */
int plait__agg_cli_main(int argc, char **argv, FILE *out, FILE *err);

#endif
