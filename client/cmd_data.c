/*
 * cmd_data.c: plait-agent's store commands: ingest (fill the device store
 * from a text or JSON-lines file), info (count its records) and forget
 * (erase records, and what join derived from them).
 */
#include "cmd_int.h"

#include <stdio.h>
#include <stdint.h>
#include <string.h>

#include "plait/client.h"
#include "plait/file.h"
#include "plait/ingest.h"
#include "plait/json.h"

/* --------------------------------------------------------------- ingest */

#define PLAIT_PATH_LABEL_MAX 300

int cmd_ingest(int argc, char **argv)
{
    common_t c;
    common_default(&c);
    const char *jsonl = NULL;
    uint64_t max_bytes = PLAIT_INGEST_DEFAULT_MAX_FILE;
    plait_flag_t flags[] = {
        ROW_DB(c, "the device store (created if missing)"),
        ROW_TEXT(c, "one record per blank-line-separated block"),
        PLAIT_F_STR("jsonl", &jsonl, "FILE",
                    "one JSON object per line: {\"text\": ..., \"time\": unix s, \"kind\": ...}"),
        PLAIT_F_U64("max-bytes", &max_bytes, "N", "refuse files larger than N bytes (default 256 MiB)", 0),
        ROWS_ENGINE_HIDDEN(c),
    };
    static const plait_flag_rule_t rules[] = {{PLAIT_RULE_REQUIRED, {"db"}},
                                              {PLAIT_RULE_ONE_OF, {"text", "jsonl"}}};
    plait_flags_cmd_t cmd = {
        .prog = "plait-agent ingest",
        .about = "Adds records to the device store DB:\n",
        .epilogue = "The file is ingested in one transaction: entirely or not at all.\n",
        .flags = flags, .n_flags = sizeof(flags) / sizeof(flags[0]),
        .rules = rules, .n_rules = sizeof(rules) / sizeof(rules[0]),
    };
    int prc = agent_flags(&cmd, argc, argv);
    if (prc != FLAGS_OK) return prc;
    /* A missing input must not leave an empty store behind. */
    FILE *in = NULL; /* opened without blocking: a FIFO or device is refused, not waited on */
    char label[PLAIT_PATH_LABEL_MAX];
    snprintf(label, sizeof(label), "%s %s", jsonl ? "--jsonl" : "--text", jsonl ? jsonl : c.text);
    int orc = plait_file_fopen(jsonl ? jsonl : c.text, label, &in);
    if (orc != 0)
        return plait_fail(orc, "%s (no store created)", plait_errmsg()), die_run(orc);
    fclose(in);
    plait_store_t *st = NULL;
    int rc = open_store(&st, c.db, 1);
    if (rc != 0) return die_run(rc);
    int64_t added = 0, total = 0, held = 0;
    rc = plait_ingest_file(st, jsonl ? jsonl : c.text, jsonl ? PLAIT_INGEST_JSONL : PLAIT_INGEST_TEXT,
                           (size_t)max_bytes, &added);
    if (rc == 0) rc = plait_store_count(st, &total);
    if (rc == 0) rc = plait_store_count_split(st, PLAIT_STORE_HELDOUT, &held);
    plait_store_close(st);
    if (rc == 0 && added == 0)
        rc = plait_fail(PLAIT_EINVAL, "%s holds no records (empty, or only blank lines): nothing was ingested",
                        jsonl ? jsonl : c.text);
    if (rc != 0) return die_run(rc);
    printf("ingested %lld records into %s (%lld in store, %lld held out for evaluation)\n", (long long)added,
           c.db, (long long)total, (long long)held);
    return 0;
}

/* ----------------------------------------------------------------- info */

int cmd_info(int argc, char **argv)
{
    common_t c;
    common_default(&c);
    int json = 0;
    const char *state = NULL;
    plait_flag_t flags[] = {
        ROW_DB(c, "the device store"),
        PLAIT_F_SET("json", &json, 1, "one object {\"records\": N, \"train\": N, \"heldout\": N}"),
        PLAIT_F_STR("state", &state, "DIR",
                    "the agent's state directory: also say which adapter the device serves (global,\n"
                    "personal or a mix) and why (\"serving\" in JSON)"),
        ROWS_ENGINE_HIDDEN(c), ROW_TEXT(c, NULL),
    };
    static const plait_flag_rule_t rules[] = {{PLAIT_RULE_REQUIRED, {"db"}}};
    plait_flags_cmd_t cmd = {
        .prog = "plait-agent info",
        .about = "Prints how many records the store holds, per split.\n",
        .flags = flags, .n_flags = sizeof(flags) / sizeof(flags[0]),
        .rules = rules, .n_rules = 1,
        .extra_args = 1, /* ignored, as they always were */
    };
    int prc = agent_flags(&cmd, argc, argv);
    if (prc != FLAGS_OK) return prc;
    plait_store_t *st = NULL;
    int rc = open_store(&st, c.db, 0);
    int64_t total = 0, train = 0, held = 0;
    if (rc == 0) rc = plait_store_count(st, &total);
    if (rc == 0) rc = plait_store_count_split(st, PLAIT_STORE_TRAIN, &train);
    if (rc == 0) rc = plait_store_count_split(st, PLAIT_STORE_HELDOUT, &held);
    plait_store_close(st);
    if (rc != 0) return die_run(rc);
    char serve_path[4096], why[512] = "";
    int src = state ? plait_agent_serving(state, serve_path, sizeof(serve_path), why, sizeof(why)) : PLAIT_ENOENT;
    if (state && src != 0 && src != PLAIT_ENOENT) return die_run(src);
    if (state && src == PLAIT_ENOENT) snprintf(why, sizeof(why), "none chosen yet (after the first round)");
    if (json) {
        printf("{\"records\": %lld, \"train\": %lld, \"heldout\": %lld", (long long)total, (long long)train,
               (long long)held);
        if (state) {
            plait_buf_t b;
            plait_buf_init(&b, 0);
            if (plait_buf_json_string(&b, why, strlen(why)) == 0) printf(", \"serving\": %s", b.data);
            plait_buf_free(&b);
        }
        printf("}\n");
    } else {
        printf("%s: %lld records (%lld train, %lld held out)\n", c.db, (long long)total, (long long)train,
               (long long)held);
        if (state) printf("serving adapter: %s\n", why);
    }
    return 0;
}

/* --------------------------------------------------------------- forget */

int cmd_forget(int argc, char **argv)
{
    common_t c;
    common_default(&c);
    long long id = 0, before = -1;
    int all = 0;
    const char *state = NULL;
    plait_flag_t flags[] = {
        ROW_DB(c, "the device store"),
        PLAIT_F_LLONG("id", &id, 1, INT64_MAX, "ID", "erase the record with this id", 0),
        PLAIT_F_LLONG("before", &before, 0, INT64_MAX, "UNIX_SECONDS", "erase every record older than this", 0),
        PLAIT_F_SET("all", &all, 1, "erase every record"),
        PLAIT_F_STR("state", &state, "DIR",
                    "the state directory `join` uses with this store: also erase what was\n"
                    "derived from the records there (personal adapter, pending update,\n"
                    "partial download). Stop the agent first."),
        ROWS_ENGINE_HIDDEN(c), ROW_TEXT(c, NULL),
    };
    static const plait_flag_rule_t rules[] = {{PLAIT_RULE_REQUIRED, {"db"}},
                                              {PLAIT_RULE_ONE_OF, {"id", "before", "all"}}};
    plait_flags_cmd_t cmd = {
        .prog = "plait-agent forget",
        .about = "Erases records for good: deleted text is overwritten in the database file.\n",
        .flags = flags, .n_flags = sizeof(flags) / sizeof(flags[0]),
        .rules = rules, .n_rules = sizeof(rules) / sizeof(rules[0]),
        .extra_args = 1, /* ignored, as they always were */
    };
    int prc = agent_flags(&cmd, argc, argv);
    if (prc != FLAGS_OK) return prc;
    plait_store_t *st = NULL;
    int rc = open_store(&st, c.db, 0);
    int64_t n = 0;
    if (rc == 0) {
        if (id > 0) {
            rc = plait_store_delete(st, id);
            n = rc == 0;
        } else {
            rc = plait_store_delete_before(st, all ? INT64_MAX : before, &n);
        }
    }
    if (rc == 0) rc = plait_store_checkpoint(st);
    plait_store_close(st);
    if (rc != 0) return die_run(rc);
    printf("erased %lld records from %s\n", (long long)n, c.db);
    if (!state) {
        printf("no --state given: an agent state directory used with this store still holds its\n"
               "personal adapter, output bias and kNN memory (its text's tokens); run again with\n"
               "--state DIR to erase them\n");
        return 0;
    }
    int removed = 0;
    if ((rc = plait_agent_forget_derived(state, &removed)) != 0) return die_run(rc);
    printf("erased %d derived files from %s\n", removed, state);
    return 0;
}
