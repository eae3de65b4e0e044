/*
 * agent_records.c: the embedding app's side of the device store
 * (plait_agent_add_record, client.h): one interaction becomes one record of
 * the store the agent trains on, without the plait-agent CLI.
 *
 * The store is opened per call (sqlite serializes writers; the agent opens
 * its own connection for each round, so the two share the file safely), and
 * created on the first record. The text never reaches a log or an error
 * message: failures name the store and what was wrong, never the content.
 */
#include <string.h>

#include "plait/client.h"
#include "plait/store.h"

int plait_agent_add_record(const char *store_path, int64_t time, const char *kind, const char *text, size_t len,
                           int64_t *id_out)
{
    if (id_out) *id_out = 0;
    if (store_path == NULL || store_path[0] == '\0') return plait_fail(PLAIT_EINVAL, "add_record: no store path");
    if (text == NULL || len == 0) return plait_fail(PLAIT_EINVAL, "add_record: empty text");
    plait_store_config_t sc;
    plait_store_config_default(&sc);
    sc.path = store_path;
    sc.create = true; /* an app's first interaction creates its store */
    plait_store_t *st = NULL;
    int rc = plait_store_open(&st, &sc);
    if (rc == 0) rc = plait_store_add(st, time, kind, text, len, id_out);
    plait_store_close(st);
    return rc;
}
