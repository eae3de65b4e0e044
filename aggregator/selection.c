/*
 * selection.c: Poisson sampling of a round's cohort (see selection.h).
 *
 * Invariants: the table holds exactly the devices decided since the last
 * plait_sel_open(), each with its answer; admitted <= decided; the table is
 * at most half full (it doubles before that), so probing always ends.
 *
 * Workload: one hash probe per check-in, one rng draw per first check-in;
 * memory 16 bytes per slot, slots <= 4 x devices decided in the round.
 */
#include "selection.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plait/privacy.h"

typedef struct {
    uint64_t id;  /* 0: empty slot (id 0 is stored in the zero_* fields) */
    uint64_t yes; /* 1 admitted, 0 not */
} slot_t;

struct plait_sel_s {
    slot_t *tab;
    size_t cap, used;   /* cap is a power of two */
    int zero_decided, zero_yes;
    uint64_t round_id;
    double q;
    int open;
    uint64_t decided, admitted;
};

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

int plait_sel_create(plait_sel_t **out)
{
    if (!out) return plait_fail(PLAIT_EINVAL, "selection: NULL out");
    *out = NULL;
    plait_sel_t *s = calloc(1, sizeof(*s));
    if (!s) return plait_fail(PLAIT_ENOMEM, "selection: struct");
    s->cap = 64;
    s->tab = calloc(s->cap, sizeof(slot_t));
    if (!s->tab) {
        free(s);
        return plait_fail(PLAIT_ENOMEM, "selection: table");
    }
    *out = s;
    return 0;
}

void plait_sel_destroy(plait_sel_t *s)
{
    if (!s) return;
    free(s->tab);
    free(s);
}

int plait_sel_open(plait_sel_t *s, uint64_t round_id, double q)
{
    if (!s) return plait_fail(PLAIT_EINVAL, "selection: NULL");
    if (!(q > 0 && q <= 1)) return plait_fail(PLAIT_EINVAL, "selection: sampling rate %g not in (0, 1]", q);
    memset(s->tab, 0, s->cap * sizeof(slot_t));
    s->used = 0;
    s->zero_decided = s->zero_yes = 0;
    s->round_id = round_id;
    s->q = q;
    s->open = 1;
    s->decided = s->admitted = 0;
    return 0;
}

static slot_t *find(slot_t *tab, size_t cap, uint64_t id)
{
    size_t mask = cap - 1, i = (size_t)mix64(id) & mask;
    while (tab[i].id != 0 && tab[i].id != id) i = (i + 1) & mask;
    return &tab[i];
}

static int grow(plait_sel_t *s)
{
    if (s->cap > ((size_t)1 << 40)) return plait_fail(PLAIT_ENOMEM, "selection: table too large");
    size_t ncap = s->cap * 2;
    slot_t *nt = calloc(ncap, sizeof(slot_t));
    if (!nt) return plait_fail(PLAIT_ENOMEM, "selection: table of %zu slots", ncap);
    for (size_t i = 0; i < s->cap; i++)
        if (s->tab[i].id != 0) *find(nt, ncap, s->tab[i].id) = s->tab[i];
    free(s->tab);
    s->tab = nt;
    s->cap = ncap;
    return 0;
}

int plait_sel_decide(plait_sel_t *s, plait_rng_t *rng, uint64_t client, int *admitted, int *first)
{
    if (!s || !rng || !admitted) return plait_fail(PLAIT_EINVAL, "selection: NULL argument");
    if (!s->open) return plait_fail(PLAIT_EINVAL, "selection: no round opened");
    if (first) *first = 0;
    if (client == 0) {
        if (!s->zero_decided) {
            s->zero_decided = 1;
            s->zero_yes = plait_rng_uniform(rng) < s->q;
            s->decided++;
            s->admitted += (uint64_t)s->zero_yes;
            if (first) *first = 1;
        }
        *admitted = s->zero_yes;
        return 0;
    }
    slot_t *e = find(s->tab, s->cap, client);
    if (e->id == 0) {
        if (2 * (s->used + 1) > s->cap) {
            int rc = grow(s);
            if (rc != 0) return rc;
            e = find(s->tab, s->cap, client);
        }
        e->id = client;
        /* uniform is in [0, 1) with 53 bits: P(u < q) = q up to 2^-53. */
        e->yes = plait_rng_uniform(rng) < s->q ? 1 : 0;
        s->used++;
        s->decided++;
        s->admitted += e->yes;
        if (first) *first = 1;
    }
    *admitted = (int)e->yes;
    return 0;
}

double plait_sel_rate(const plait_sel_t *s) { return s ? s->q : 0; }

void plait_sel_counts(const plait_sel_t *s, uint64_t *decided, uint64_t *admitted)
{
    if (decided) *decided = s ? s->decided : 0;
    if (admitted) *admitted = s ? s->admitted : 0;
}

int plait_sel_population(uint64_t configured, uint64_t enrolled, uint64_t *out)
{
    if (!out) return plait_fail(PLAIT_EINVAL, "selection: NULL out");
    if (configured > enrolled)
        return plait_fail(PLAIT_EINVAL,
                          "population: %llu is more than the %llu enrolled, non-revoked devices (a larger population "
                          "would make q, and so the reported epsilon, smaller than what runs; set 0 to use the "
                          "enrolled count)",
                          (unsigned long long)configured, (unsigned long long)enrolled);
    *out = configured ? configured : enrolled;
    return 0;
}

int plait_sel_rate_of(uint64_t target, uint64_t population, double sampling_rate, double *q)
{
    if (!q) return plait_fail(PLAIT_EINVAL, "selection: NULL out");
    if (target == 0) return plait_fail(PLAIT_EINVAL, "selection: target_cohort must be >= 1");
    if (!(sampling_rate >= 0 && sampling_rate <= 1))
        return plait_fail(PLAIT_EINVAL, "sampling_rate: %g not in [0, 1]", sampling_rate);
    if (sampling_rate > 0) *q = sampling_rate;
    else if (population <= target) *q = 1.0;
    else *q = (double)target / (double)population;
    return 0;
}

int plait_sel_worst_epsilon(uint64_t rounds, double z, double delta, double *eps)
{
    if (!eps) return plait_fail(PLAIT_EINVAL, "selection: NULL out");
    if (!(isfinite(z) && z > 0)) return plait_fail(PLAIT_EINVAL, "worst case: noise multiplier %g", z);
    if (!(delta > 0 && delta < 1)) return plait_fail(PLAIT_EINVAL, "worst case: delta %g not in (0, 1)", delta);
    *eps = 0;
    if (rounds == 0) return 0;
    plait_accountant_t acc;
    int rc = plait_accountant_init(&acc, NULL, 0);
    if (rc == 0) rc = plait_accountant_compose(&acc, 1.0, z, rounds);
    if (rc == 0) rc = plait_accountant_epsilon(&acc, delta, PLAIT_EPS_IMPROVED, eps, NULL);
    return rc;
}
