/*
 * population.c: virtual clients from a corpus split by author, each written
 * once into its own device store.
 *
 * Sources:
 *   shakespeare  blank-line blocks (plait_ingest_text); a block's first line
 *                is "NAME:" and the rest is the speech. Names are compared
 *                with runs of blanks collapsed, so the corpus' "LADY  CAPULET"
 *                typo joins "LADY CAPULET". Blocks without a name line are
 *                skipped (counted).
 *   dir          every *.txt file of a folder (sorted by name) is one client;
 *                its blank-line blocks are its records.
 *   jsonl        JSON lines (plait_ingest_jsonl); "user" names the client;
 *                lines without a user are skipped (counted).
 *
 * Split: a client's records are kept in corpus order and its lines counted;
 * the first round(train_fraction · lines) lines train and the rest are held
 * out (a record that straddles the cut is split at the line boundary), as
 * McMahan et al. 2017 split each Shakespeare role 80/20. Clients with fewer
 * than min_lines lines, or with fewer than 4 training or 2 held-out tokens
 * (too little to validate or to predict one token), are left out and
 * counted. The population does not depend on seq_len: a text shorter than a
 * window trains repeated to one window and is evaluated as one partial
 * window (personal.h).
 *
 * Stores: <dir>/c<index>.db, one sqlite device store per client (store.h),
 * records of kind "train" or "heldout" (the store's own hashed split is set
 * to 0: the simulator needs the ordered split above). The corpus is held in
 * memory only while building; afterwards only plait_sim_client_t counts
 * (24 bytes per client) remain. Training text is never logged.
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "plait/crypto.h"
#include "plait/data.h"
#include "plait/file.h"
#include "plait/ingest.h"
#include "plait/rng.h"
#include "plait/sim.h"
#include "plait/store.h"
#include "plait/tok.h"
#include "sim_int.h"

#define MAX_CORPUS_FILE ((size_t)256 << 20)

typedef struct {
    size_t src;      /* author index (the client, after a Dirichlet partition) */
    size_t lab;      /* label index: the author, or (JSONL, population.label "kind") the kind */
    char *text;      /* owned copy */
    size_t len;
    uint32_t lines;
} rec_t;

/* An open-addressing map from author name to index. */
typedef struct {
    char **names;   /* (cap) owned, NULL = empty */
    size_t *idx;
    size_t cap, n;
} namemap_t;

typedef struct {
    const plait_sim_config_t *cfg;
    rec_t *recs;
    size_t n, cap;
    namemap_t map;
    namemap_t kinds; /* JSONL kinds, for population.label "kind" */
    size_t cur_src;  /* dir source: the file being read */
    size_t skipped;
    uint64_t key;    /* FNV-1a of everything the population depends on */
    int rc;
} build_t;

static uint64_t fnv_more(uint64_t h, const void *p, size_t n)
{
    const uint8_t *s = p;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ULL;
    return h;
}

static uint64_t fnv(const char *s, size_t n) { return fnv_more(1469598103934665603ULL, s, n); }

static void map_free(namemap_t *m)
{
    for (size_t i = 0; i < m->cap; i++) free(m->names[i]);
    free(m->names);
    free(m->idx);
    memset(m, 0, sizeof(*m));
}

/* Index of name (len bytes), inserting it as the next index when new; SIZE_MAX on OOM. */
static size_t map_get(namemap_t *m, const char *name, size_t len)
{
    if (2 * (m->n + 1) > m->cap) {
        size_t nc = m->cap ? 2 * m->cap : 64;
        char **nn = calloc(nc, sizeof(char *));
        size_t *ni = calloc(nc, sizeof(size_t));
        if (!nn || !ni) {
            free(nn);
            free(ni);
            return SIZE_MAX;
        }
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->names[i]) continue;
            size_t j = (size_t)fnv(m->names[i], strlen(m->names[i])) & (nc - 1);
            while (nn[j]) j = (j + 1) & (nc - 1);
            nn[j] = m->names[i];
            ni[j] = m->idx[i];
        }
        free(m->names);
        free(m->idx);
        m->names = nn;
        m->idx = ni;
        m->cap = nc;
    }
    size_t j = (size_t)fnv(name, len) & (m->cap - 1);
    while (m->names[j]) {
        if (strlen(m->names[j]) == len && memcmp(m->names[j], name, len) == 0) return m->idx[j];
        j = (j + 1) & (m->cap - 1);
    }
    char *copy = malloc(len + 1);
    if (!copy) return SIZE_MAX;
    memcpy(copy, name, len);
    copy[len] = '\0';
    m->names[j] = copy;
    m->idx[j] = m->n;
    return m->n++;
}

static uint32_t count_lines(const char *s, size_t n)
{
    uint32_t k = 1;
    for (size_t i = 0; i < n; i++) k += s[i] == '\n';
    return k;
}

static int push(build_t *b, size_t src, const char *text, size_t len)
{
    if (len == 0) return 0;
    if (b->n == b->cap) {
        size_t nc = b->cap ? 2 * b->cap : 1024;
        rec_t *nr = realloc(b->recs, nc * sizeof(rec_t));
        if (!nr) return plait_fail(PLAIT_ENOMEM, "population: records");
        b->recs = nr;
        b->cap = nc;
    }
    char *copy = malloc(len + 1);
    if (!copy) return plait_fail(PLAIT_ENOMEM, "population: record text");
    memcpy(copy, text, len);
    copy[len] = '\0';
    b->recs[b->n++] = (rec_t){src, src, copy, len, count_lines(text, len)};
    return 0;
}

/* Shakespeare: "NAME:\nspeech...". */
static int on_speech(void *ud, int64_t time, const char *kind, const char *user, const char *text, size_t len)
{
    (void)time, (void)kind, (void)user;
    build_t *b = ud;
    const char *nl = memchr(text, '\n', len);
    size_t first = nl ? (size_t)(nl - text) : len;
    while (first > 0 && (text[first - 1] == ' ' || text[first - 1] == '\t' || text[first - 1] == '\r')) first--;
    if (first < 2 || text[first - 1] != ':' || first > 256) {
        b->skipped++;
        return 0;
    }
    /* Normalize the name: collapse runs of blanks. */
    char name[256];
    size_t k = 0;
    for (size_t i = 0; i + 1 < first; i++) {
        char ch = text[i] == '\t' ? ' ' : text[i];
        if (ch == ' ' && (k == 0 || name[k - 1] == ' ')) continue;
        name[k++] = ch;
    }
    while (k > 0 && name[k - 1] == ' ') k--;
    if (k == 0) {
        b->skipped++;
        return 0;
    }
    size_t src = map_get(&b->map, name, k);
    if (src == SIZE_MAX) return plait_fail(PLAIT_ENOMEM, "population: names");
    if (!nl) return 0; /* a name line alone: a speaker with an empty speech */
    const char *body = nl + 1;
    return push(b, src, body, len - (size_t)(body - text));
}

static int on_jsonl(void *ud, int64_t time, const char *kind, const char *user, const char *text, size_t len)
{
    (void)time;
    build_t *b = ud;
    if (!user || !user[0]) {
        b->skipped++;
        return 0;
    }
    size_t src = map_get(&b->map, user, strlen(user));
    if (src == SIZE_MAX) return plait_fail(PLAIT_ENOMEM, "population: users");
    size_t n0 = b->n;
    int rc = push(b, src, text, len);
    if (rc == 0 && b->n > n0 && strcmp(b->cfg->partition_label, "kind") == 0) {
        const char *k = kind ? kind : "";
        size_t lab = map_get(&b->kinds, k, strlen(k));
        if (lab == SIZE_MAX) return plait_fail(PLAIT_ENOMEM, "population: kinds");
        b->recs[b->n - 1].lab = lab;
    }
    return rc;
}

static int on_block(void *ud, int64_t time, const char *kind, const char *user, const char *text, size_t len)
{
    (void)time, (void)kind, (void)user;
    build_t *b = ud;
    return push(b, b->cur_src, text, len);
}

static int read_file(const char *path, char **out, size_t *len)
{
    *out = NULL;
    FILE *f = NULL;
    int frc = plait_file_fopen(path, NULL, &f); /* regular files only: a FIFO is refused, not waited on */
    if (frc != 0) return frc;
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return plait_fail(PLAIT_EIO, "%s: not a regular file", path);
    }
    if ((size_t)sb.st_size > MAX_CORPUS_FILE) {
        fclose(f);
        return plait_fail(PLAIT_ETOOBIG, "%s: larger than %zu bytes", path, MAX_CORPUS_FILE);
    }
    size_t n = (size_t)sb.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        fclose(f);
        return plait_fail(PLAIT_ENOMEM, "%s: buffer", path);
    }
    size_t got = fread(buf, 1, n, f);
    fclose(f);
    if (got != n) {
        free(buf);
        return plait_fail(PLAIT_EIO, "%s: short read", path);
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int read_dir(build_t *b, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return plait_fail(errno == ENOENT ? PLAIT_ENOENT : PLAIT_EIO, "%s: cannot open folder", dir);
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l < 5 || strcmp(e->d_name + l - 4, ".txt") != 0 || e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **nn = realloc(names, cap * sizeof(char *));
            if (!nn) {
                rc = plait_fail(PLAIT_ENOMEM, "population: file list");
                break;
            }
            names = nn;
        }
        if (!(names[n] = strdup(e->d_name))) {
            rc = plait_fail(PLAIT_ENOMEM, "population: file list");
            break;
        }
        n++;
    }
    closedir(d);
    if (rc == 0) qsort(names, n, sizeof(char *), cmp_str);
    for (size_t i = 0; i < n && rc == 0; i++) {
        char path[PLAIT_SIM_PATH_MAX * 2];
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        char *buf;
        size_t len;
        if ((rc = read_file(path, &buf, &len)) != 0) break;
        b->key = fnv_more(b->key, names[i], strlen(names[i]) + 1);
        b->key = fnv_more(b->key, buf, len);
        b->key = fnv_more(b->key, "\0", 1);
        b->cur_src = map_get(&b->map, names[i], strlen(names[i]));
        if (b->cur_src == SIZE_MAX) rc = plait_fail(PLAIT_ENOMEM, "population: names");
        else if ((rc = plait_ingest_text(buf, len, on_block, b)) != 0) rc = plait__sim_wrap(rc, path);
        plait_zeroize(buf, len);
        free(buf);
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    return rc;
}

void plait_sim_pop_store_path(const plait_sim_pop_t *pop, size_t i, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/c%07zu.db", pop->dir, i);
}

void plait_sim_pop_free(plait_sim_pop_t *pop)
{
    if (!pop) return;
    free(pop->clients);
    pop->clients = NULL;
    pop->n = 0;
}

static void remove_store_files(const char *path)
{
    char p[PLAIT_SIM_PATH_MAX * 2];
    unlink(path);
    snprintf(p, sizeof(p), "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof(p), "%s-shm", path);
    unlink(p);
    snprintf(p, sizeof(p), "%s-journal", path);
    unlink(p);
}

/* Remove every client store (c<7 digits>.db and its sqlite companions) in dir, so that a rebuilt
 * population never leaves an older, larger one's stores beside its own. */
static void remove_all_stores(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *nm = e->d_name;
        size_t k = 0;
        if (nm[0] != 'c') continue;
        while (k < 7 && nm[1 + k] >= '0' && nm[1 + k] <= '9') k++;
        if (k != 7 || strncmp(nm + 8, ".db", 3) != 0) continue;
        char p[PLAIT_SIM_PATH_MAX + 300];
        snprintf(p, sizeof(p), "%s/%s", dir, nm);
        unlink(p);
    }
    closedir(d);
}

/* One side of a client: its pieces of records, in order. */
typedef struct {
    const char *text;
    size_t len;
    int heldout;
} piece_t;

/* Token count of a side as plait_corpus_add_text would build it. */
static int side_tokens(const plait_tok_t *tok, const piece_t *pc, size_t n, int heldout, uint32_t *out)
{
    plait_corpus_t c;
    plait_corpus_init(&c);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        if (pc[i].heldout == heldout) rc = plait_corpus_add_text(&c, tok, pc[i].text, pc[i].len);
    *out = c.n > UINT32_MAX ? UINT32_MAX : (uint32_t)c.n;
    plait_corpus_free(&c);
    return rc;
}

static int write_store(const char *path, const piece_t *pc, size_t n)
{
    remove_store_files(path);
    plait_store_config_t sc;
    plait_store_config_default(&sc);
    sc.path = path;
    sc.wal = false;              /* one file per client, no -wal/-shm beside it */
    sc.heldout_fraction = 0.0;   /* the ordered split is in the kind tag */
    sc.max_text = PLAIT_STORE_MAX_TEXT_CEILING;
    plait_store_t *st = NULL;
    int rc = plait_store_open(&st, &sc);
    if (rc != 0) return rc;
    if ((rc = plait_store_begin(st)) == 0) {
        for (size_t i = 0; i < n && rc == 0; i++)
            rc = plait_store_add(st, (int64_t)i, pc[i].heldout ? PLAIT__SIM_KIND_HELDOUT : PLAIT__SIM_KIND_TRAIN,
                                 pc[i].text, pc[i].len, NULL);
        if (rc == 0) rc = plait_store_commit(st);
        else plait_store_rollback(st);
    }
    plait_store_close(st);
    return rc;
}

/* Build client pieces from its records with the line cut; returns the number of pieces. */
static size_t cut_pieces(const rec_t *recs, const size_t *ids, size_t n, double frac, piece_t *pc, uint32_t *tl,
                         uint32_t *hl, uint32_t *tr, uint32_t *hr)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++) total += recs[ids[i]].lines;
    size_t cut = (size_t)floor(frac * (double)total + 0.5), seen = 0, np = 0;
    *tl = *hl = *tr = *hr = 0;
    for (size_t i = 0; i < n; i++) {
        const rec_t *r = &recs[ids[i]];
        if (seen + r->lines <= cut) {
            pc[np++] = (piece_t){r->text, r->len, 0};
        } else if (seen >= cut) {
            pc[np++] = (piece_t){r->text, r->len, 1};
        } else {
            /* Split after (cut - seen) lines. */
            size_t k = cut - seen, pos = 0;
            for (size_t j = 0; j < k; j++) pos = (size_t)((const char *)memchr(r->text + pos, '\n', r->len - pos) - r->text) + 1;
            if (pos > 1) pc[np++] = (piece_t){r->text, pos - 1, 0};
            if (r->len > pos) pc[np++] = (piece_t){r->text + pos, r->len - pos, 1};
        }
        seen += r->lines;
    }
    for (size_t i = 0; i < np; i++) {
        uint32_t l = count_lines(pc[i].text, pc[i].len);
        if (pc[i].heldout) *hl += l, (*hr)++;
        else *tl += l, (*tr)++;
    }
    return np;
}

/* ---- Dirichlet partition (population.partition "dirichlet") -------------------------- */

/* Gamma(a, 1) by Marsaglia and Tsang (2000); a < 1 through Gamma(a + 1) · U^(1/a). */
static double gamma_draw(plait_rng_t *r, double a)
{
    if (a < 1) {
        double u = plait_rng_uniform(r);
        return gamma_draw(r, a + 1) * pow(u > 0 ? u : 1e-300, 1.0 / a);
    }
    double d = a - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x = plait_rng_normal(r), v = 1 + c * x;
        if (v <= 0) continue;
        v = v * v * v;
        double u = plait_rng_uniform(r);
        if (u < 1 - 0.0331 * x * x * x * x || log(u > 0 ? u : 1e-300) < 0.5 * x * x + d * (1 - v + log(v))) return d * v;
    }
}

/* Deal each label's records to n clients by proportions p ~ Dirichlet(alpha) (one draw per label, its
 * records shuffled first), seeded by cfg->seed: rec.src becomes the client. Records keep corpus order within
 * a client (the grouping is stable). */
static int dirichlet_assign(build_t *b, size_t n_labels, size_t n)
{
    size_t *start = calloc(n_labels + 1, sizeof(size_t)), *order = malloc((b->n ? b->n : 1) * sizeof(size_t));
    double *p = malloc(n * sizeof(double));
    size_t *fill = calloc(n_labels ? n_labels : 1, sizeof(size_t));
    int rc = 0;
    if (!start || !order || !p || !fill) rc = plait_fail(PLAIT_ENOMEM, "population: dirichlet partition");
    for (size_t i = 0; rc == 0 && i < b->n; i++) start[b->recs[i].lab + 1]++;
    for (size_t l = 0; rc == 0 && l < n_labels; l++) start[l + 1] += start[l];
    for (size_t i = 0; rc == 0 && i < b->n; i++) order[start[b->recs[i].lab] + fill[b->recs[i].lab]++] = i;
    for (size_t l = 0; rc == 0 && l < n_labels; l++) {
        plait_rng_t r;
        plait_rng_seed_u64(&r, b->cfg->seed, plait__sim_stream(PLAIT__SIM_RNG_PARTITION, 0, l));
        size_t *ids = order + start[l], m = start[l + 1] - start[l];
        for (size_t i = m; i > 1; i--) { /* Fisher-Yates */
            size_t j = (size_t)(plait_rng_uniform(&r) * (double)i);
            if (j >= i) j = i - 1;
            size_t t = ids[i - 1];
            ids[i - 1] = ids[j];
            ids[j] = t;
        }
        double sum = 0;
        for (size_t j = 0; j < n; j++) sum += p[j] = gamma_draw(&r, b->cfg->partition_alpha);
        double cum = 0;
        size_t k = 0;
        for (size_t j = 0; j < n; j++) {
            cum += sum > 0 ? p[j] / sum : 1.0 / (double)n;
            size_t end = j + 1 == n ? m : (size_t)floor(cum * (double)m + 0.5);
            for (; k < end && k < m; k++) b->recs[ids[k]].src = j;
        }
        plait_rng_wipe(&r);
    }
    free(start);
    free(order);
    free(p);
    free(fill);
    return rc;
}

/* ---- manifest: reuse the stores of an identical population ---------------------- */

#define MANIFEST "manifest.txt"
#define MANIFEST_MAGIC "plait-sim-population 1"

/* What the population depends on besides the corpus bytes. */
static uint64_t key_params(uint64_t h, const plait_sim_config_t *cfg, const plait_tok_t *tok)
{
    uint64_t v[] = {(uint64_t)cfg->source, (uint64_t)cfg->min_lines, (uint64_t)cfg->max_clients,
                    (uint64_t)2 /* the population no longer depends on seq_len */, (uint64_t)tok->vocab_size};
    h = fnv_more(h, v, sizeof(v));
    h = fnv_more(h, &cfg->train_fraction, sizeof(double));
    if (strcmp(cfg->partition, "dirichlet") == 0) { /* natural partitions keep their earlier keys */
        uint64_t d[] = {(uint64_t)cfg->partition_clients, cfg->seed, (uint64_t)(cfg->partition_label[0] == 'k')};
        h = fnv_more(h, "dirichlet", 9);
        h = fnv_more(h, d, sizeof(d));
        h = fnv_more(h, &cfg->partition_alpha, sizeof(double));
    }
    for (int i = 0; i < tok->vocab_size; i++) {
        h = fnv_more(h, tok->vocab[i], tok->lens[i]);
        h = fnv_more(h, &tok->scores[i], sizeof(float));
    }
    return h;
}

/* Load counts from a manifest whose key matches and whose stores all exist; 0 on success. */
static int manifest_load(plait_sim_pop_t *pop, uint64_t key)
{
    char path[PLAIT_SIM_PATH_MAX + 32], line[256];
    snprintf(path, sizeof(path), "%s/" MANIFEST, pop->dir);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    unsigned long long k = 0;
    size_t n = 0, ns = 0, a = 0, b = 0, c = 0;
    int ok = fgets(line, sizeof(line), f) && strcmp(line, MANIFEST_MAGIC "\n") == 0 &&
             fscanf(f, "key %llx\nn %zu sources %zu too_few %zu too_small %zu skipped %zu\n", &k, &n, &ns, &a, &b,
                    &c) == 6 &&
             k == key && n > 0 && n <= ns && n <= ((size_t)1 << 26);
    plait_sim_client_t *cl = ok ? calloc(n, sizeof(*cl)) : NULL;
    ok = ok && cl;
    for (size_t i = 0; ok && i < n; i++) {
        plait_sim_client_t *x = &cl[i];
        ok = fscanf(f, "%u %u %u %u %u %u\n", &x->train_lines, &x->heldout_lines, &x->train_records,
                    &x->heldout_records, &x->train_tokens, &x->heldout_tokens) == 6;
        char sp[PLAIT_SIM_PATH_MAX + 32];
        struct stat sb;
        plait_sim_pop_store_path(pop, i, sp, sizeof(sp));
        ok = ok && stat(sp, &sb) == 0 && S_ISREG(sb.st_mode);
    }
    fclose(f);
    if (!ok) {
        free(cl);
        return -1;
    }
    pop->clients = cl;
    pop->n = n;
    pop->n_sources = ns;
    pop->n_too_few = a;
    pop->n_too_small = b;
    pop->n_skipped = c;
    return 0;
}

static int manifest_save(const plait_sim_pop_t *pop, uint64_t key)
{
    char path[PLAIT_SIM_PATH_MAX + 32], tmp[PLAIT_SIM_PATH_MAX + 48];
    snprintf(path, sizeof(path), "%s/" MANIFEST, pop->dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return plait_fail(PLAIT_EIO, "%s: cannot write", tmp);
    fprintf(f, MANIFEST_MAGIC "\nkey %016llx\nn %zu sources %zu too_few %zu too_small %zu skipped %zu\n",
            (unsigned long long)key, pop->n, pop->n_sources, pop->n_too_few, pop->n_too_small, pop->n_skipped);
    for (size_t i = 0; i < pop->n; i++) {
        const plait_sim_client_t *x = &pop->clients[i];
        fprintf(f, "%u %u %u %u %u %u\n", x->train_lines, x->heldout_lines, x->train_records, x->heldout_records,
                x->train_tokens, x->heldout_tokens);
    }
    int ok = !ferror(f);
    ok &= fclose(f) == 0;
    if (!ok || rename(tmp, path) != 0) return plait_fail(PLAIT_EIO, "%s: write failed", path);
    return 0;
}

int plait_sim_pop_build(plait_sim_pop_t *pop, const plait_sim_config_t *cfg, const plait_tok_t *tok, const char *dir)
{
    memset(pop, 0, sizeof(*pop));
    if (!cfg || !tok || !dir) return plait_fail(PLAIT_EINVAL, "population: NULL argument");
    if (strlen(dir) >= sizeof(pop->dir) - 16) return plait_fail(PLAIT_EINVAL, "population: folder name too long");
    snprintf(pop->dir, sizeof(pop->dir), "%s", dir);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) return plait_fail(PLAIT_EIO, "%s: cannot create folder", dir);
    build_t b;
    memset(&b, 0, sizeof(b));
    b.cfg = cfg;
    b.key = 1469598103934665603ULL;
    int rc = 0, reused = 0;
    char *buf = NULL;
    size_t len = 0;
    if (cfg->source == PLAIT_SIM_SRC_DIR) {
        rc = read_dir(&b, cfg->data);
    } else if ((rc = read_file(cfg->data, &buf, &len)) == 0) {
        /* Check for reusable stores before parsing: a reused population never holds the records. */
        b.key = fnv_more(b.key, buf, len);
        if (manifest_load(pop, key_params(b.key, cfg, tok)) == 0) reused = 1;
        else if (cfg->source == PLAIT_SIM_SRC_SHAKESPEARE) rc = plait_ingest_text(buf, len, on_speech, &b);
        else rc = plait_ingest_jsonl(buf, len, on_jsonl, &b);
        if (rc != 0) rc = plait__sim_wrap(rc, cfg->data);
    }
    if (buf) plait_zeroize(buf, len);
    free(buf);
    size_t n_src = b.map.n;
    if (rc == 0 && strcmp(cfg->partition, "dirichlet") == 0 && n_src > 0) {
        size_t n_labels = strcmp(cfg->partition_label, "kind") == 0 ? b.kinds.n : b.map.n;
        size_t n_clients = cfg->partition_clients ? cfg->partition_clients : n_src;
        /* Reused stores need no dealing; the key below covers the partition's settings. */
        if (!reused && (rc = dirichlet_assign(&b, n_labels, n_clients)) == 0) n_src = n_clients;
        else if (reused) n_src = n_clients;
    }
    size_t *start = NULL, *order = NULL;
    piece_t *pc = NULL;
    uint64_t key = key_params(b.key, cfg, tok);
    if (rc == 0 && !reused && manifest_load(pop, key) == 0) {
        reused = 1; /* the stores of an identical population are there: skip the rest */
    } else if (rc == 0 && !reused) {
        char mp[PLAIT_SIM_PATH_MAX + 32];
        snprintf(mp, sizeof(mp), "%s/" MANIFEST, pop->dir);
        unlink(mp); /* rewriting: the old manifest no longer describes the stores */
        remove_all_stores(pop->dir);
    }
    if (rc == 0 && !reused) {
        /* Group records by author, keeping corpus order (a counting sort). */
        start = calloc(n_src + 1, sizeof(size_t));
        order = malloc((b.n ? b.n : 1) * sizeof(size_t));
        pc = malloc((2 * b.n + 2) * sizeof(piece_t));
        pop->clients = calloc(n_src ? n_src : 1, sizeof(plait_sim_client_t));
        if (!start || !order || !pc || !pop->clients) rc = plait_fail(PLAIT_ENOMEM, "population: grouping");
    }
    if (rc == 0 && !reused) {
        for (size_t i = 0; i < b.n; i++) start[b.recs[i].src + 1]++;
        for (size_t s = 0; s < n_src; s++) start[s + 1] += start[s];
        size_t *fill = calloc(n_src ? n_src : 1, sizeof(size_t));
        if (!fill) rc = plait_fail(PLAIT_ENOMEM, "population: grouping");
        for (size_t i = 0; i < b.n && rc == 0; i++) {
            size_t s = b.recs[i].src;
            order[start[s] + fill[s]++] = i;
        }
        free(fill);
    }
    for (size_t s = 0; s < n_src && rc == 0 && !reused; s++) {
        if (cfg->max_clients && pop->n >= cfg->max_clients) break;
        const size_t *ids = order + start[s];
        size_t nr = start[s + 1] - start[s], lines = 0;
        for (size_t i = 0; i < nr; i++) lines += b.recs[ids[i]].lines;
        if (lines < cfg->min_lines) {
            pop->n_too_few++;
            continue;
        }
        plait_sim_client_t c;
        memset(&c, 0, sizeof(c));
        size_t np = cut_pieces(b.recs, ids, nr, cfg->train_fraction, pc, &c.train_lines, &c.heldout_lines,
                               &c.train_records, &c.heldout_records);
        if ((rc = side_tokens(tok, pc, np, 0, &c.train_tokens)) != 0) break;
        if ((rc = side_tokens(tok, pc, np, 1, &c.heldout_tokens)) != 0) break;
        if (c.train_tokens < PLAIT__SIM_MIN_TRAIN || c.heldout_tokens < PLAIT__SIM_MIN_HELDOUT) {
            pop->n_too_small++;
            continue;
        }
        char path[PLAIT_SIM_PATH_MAX + 32];
        plait_sim_pop_store_path(pop, pop->n, path, sizeof(path));
        if ((rc = write_store(path, pc, np)) != 0) {
            char what[64];
            snprintf(what, sizeof(what), "client %zu store", pop->n);
            rc = plait__sim_wrap(rc, what);
            break;
        }
        pop->clients[pop->n++] = c;
    }
    if (!reused) {
        pop->n_sources = n_src;
        pop->n_skipped = b.skipped;
        if (rc == 0 && pop->n > 0) rc = manifest_save(pop, key);
    }
    for (size_t i = 0; i < b.n; i++) {
        plait_zeroize(b.recs[i].text, b.recs[i].len);
        free(b.recs[i].text);
    }
    free(b.recs);
    map_free(&b.map);
    map_free(&b.kinds);
    free(start);
    free(order);
    free(pc);
    if (rc == 0 && pop->n == 0) rc = plait_fail(PLAIT_EINVAL, "population: no client has %zu lines and enough tokens", cfg->min_lines);
    if (rc != 0) plait_sim_pop_free(pop);
    return rc;
}

/* ---- reading a client back ----------------------------------------------- */

typedef struct {
    const plait_tok_t *tok;
    plait_corpus_t *train, *heldout;
} load_t;

static int on_rec(void *ud, const plait_store_record_t *rec)
{
    load_t *l = ud;
    int held = strcmp(rec->kind, PLAIT__SIM_KIND_HELDOUT) == 0;
    plait_corpus_t *c = held ? l->heldout : l->train;
    if (!c) return 0;
    return plait_corpus_add_text(c, l->tok, rec->text, rec->len);
}

int plait__sim_load_client(const plait_sim_pop_t *pop, size_t i, const plait_tok_t *tok, plait_corpus_t *train,
                           plait_corpus_t *heldout)
{
    char path[PLAIT_SIM_PATH_MAX + 32];
    plait_sim_pop_store_path(pop, i, path, sizeof(path));
    plait_store_config_t sc;
    plait_store_config_default(&sc);
    sc.path = path;
    sc.create = false;
    sc.wal = false;
    sc.heldout_fraction = 0.0;
    sc.max_text = PLAIT_STORE_MAX_TEXT_CEILING;
    plait_store_t *st = NULL;
    int rc = plait_store_open(&st, &sc);
    if (rc != 0) return rc;
    load_t l = {tok, train, heldout};
    rc = plait_store_foreach(st, PLAIT_STORE_ALL, on_rec, &l);
    plait_store_close(st);
    return rc;
}
