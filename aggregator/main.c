/*
 * main.c: the plait-aggregator executable. Everything lives in cli.c (the
 * command table, one function per subcommand) so that it can be tested
 * in-process; add new subcommands there. This file only binds the process's
 * streams and exit status.
 */
#include <stdio.h>

#include "cli.h"

int main(int argc, char **argv)
{
    int rc = plait__agg_cli_main(argc, argv, stdout, stderr);
    if (fflush(stdout) != 0 && rc == 0) rc = 1; /* e.g. writing to a closed pipe */
    return rc;
}
