/*
 * server_secagg.h: the aggregator's side of SecAgg+ (docs/protocol.md §9) for
 * one round, as a small state machine that server_round.c drives on its loop
 * thread. It owns the round's secagg.h objects, the index of every selected
 * device, the adverts, certificates and share ciphertexts it relays, and the
 * masked uploads it reassembles; it never sees an unmasked update.
 *
 * Stages (each ends early once every device still in it has answered):
 *
 *     ADVERTISE --(training started, then all advertised or stage timeout)--> SHARE
 *       (send each advertiser the roster of its advertised neighbours)
 *     SHARE --(all advertisers shared or stage timeout)--> MASKED
 *       (relay to each sharer the ciphertexts addressed to it)
 *     MASKED --(the round core left TRAINING)--> UNMASK
 *       (send each device whose masked input is in the sum its unmask request)
 *     UNMASK --(all answered or stage timeout)--> DONE (the sum) | FAILED
 *
 * A device missing a stage is reported as a dropout through io->dropout (the
 * round core then stops waiting for it). server_round.c hands a masked upload to the
 * round core through io->accept before it enters the library's sum, so the
 * core's accepted count and the unmasked sum always cover the same devices.
 *
 * Logs carry round ids, device ids, indices and counts; never keys, seeds,
 * shares or words.
 */
#ifndef PLAIT_SERVER_SECAGG_H
#define PLAIT_SERVER_SECAGG_H

#include "plait/plait.h"
#include "plait/round.h"
#include "plait/wire.h"

typedef struct plait__sa_s plait__sa_t;

typedef struct {
    void *ud;
    /** Send m to the device's live connection of this round; PLAIT_ENOENT when it has none. */
    int (*send)(void *ud, uint64_t client, const plait_msg_t *m);
    /** The round core takes the device's (masked) update: 0, or its refusal code. */
    int (*accept)(void *ud, uint64_t client);
    /** Report the device as a dropout to the round core. */
    void (*dropout)(void *ud, uint64_t client);
} plait__sa_io_t;

typedef struct {
    const uint8_t *dep; /**< deployment id (the SHA-256 of the CA certificate) */
    size_t dep_len;
    uint64_t round_id;
    uint32_t n;          /**< index slots: the round core's want */
    unsigned quant_bits; /**< b of the task */
    size_t len;          /**< words per update (Task.update_elements) */
    double dropout;      /**< dropout fraction the graph is sized for */
    double corrupt;      /**< colluding fraction the threshold is sized for */
    double sigma;        /**< failure probability 2^-sigma */
    double stage_timeout_s;
    const char *ca_pem;  /**< the deployment CA (adverts' certificates must chain to it) */
    size_t max_chunk_bytes;
} plait__sa_config_t;

typedef enum { PLAIT__SA_RUNNING = 0, PLAIT__SA_DONE = 1, PLAIT__SA_FAILED = 2 } plait__sa_result_t;

/**
 * \brief Start a round's SecAgg+: choose k and t, draw the graph seed, set up
 *        the library's round and server objects.
 * \return 0; PLAIT_EINVAL / PLAIT_ETOOBIG (n, m), PLAIT_ETHRESHOLD (no k, t
 *         meets the bound), PLAIT_ENOMEM, PLAIT_EIO.
 */
int plait__sa_open(plait__sa_t **out, const plait__sa_config_t *cfg, const plait__sa_io_t *io,
                   double now) PLAIT_WUR;
/** \brief Free (wipes). NULL is safe. */
void plait__sa_free(plait__sa_t *sa);

/** \brief Give a newly selected device the next index. \return 0; PLAIT_EBUSY (all n taken). */
int plait__sa_assign(plait__sa_t *sa, uint64_t client, const char *device) PLAIT_WUR;
/** \brief 1 when the device holds an index in this round. */
int plait__sa_has(const plait__sa_t *sa, uint64_t client);
/** \brief Fill t->has_secagg / t->secagg for the device. \return 0; PLAIT_ENOENT. */
int plait__sa_task(const plait__sa_t *sa, uint64_t client, plait_msg_task_t *t) PLAIT_WUR;

/**
 * \brief A SecAgg message from a device of this round.
 * \param fp SHA-256 of the TLS peer's certificate (the advert's certificate must be it).
 * \return 0; an error to send back before closing the connection (detail in
 *         plait_errmsg()): PLAIT_EPROTO (out of order, malformed),
 *         PLAIT_EAUTH (advert does not verify), PLAIT_ESTALE (late).
 */
int plait__sa_on_msg(plait__sa_t *sa, uint64_t client, const uint8_t fp[32], const plait_msg_t *m,
                     double now) PLAIT_WUR;

/** \brief The device's last connection closed (it cannot rejoin a secure round). */
void plait__sa_left(plait__sa_t *sa, uint64_t client);

/** \brief Advance the stages (deadlines, the round core's state). */
void plait__sa_step(plait__sa_t *sa, plait_round_state_t core, double now);

/**
 * \brief 1 when every reveal is in (or its time is up) and the unmasking is due: the caller runs
 *        plait__sa_finish_work(), off the loop thread if it likes, while nothing else touches sa,
 *        then calls plait__sa_step() again, which applies the outcome (DONE, or FAILED with the
 *        devices told).
 */
int plait__sa_finish_due(const plait__sa_t *sa);
/** \brief The unmasking (seconds for a large cohort with dropouts); sends nothing. */
void plait__sa_finish_work(plait__sa_t *sa);

/** \brief RUNNING, DONE (plait__sa_sum() is ready) or FAILED. */
plait__sa_result_t plait__sa_result(const plait__sa_t *sa);
/** \brief The unmasked sum mod 2^m (len words) once DONE; else NULL. */
const uint32_t *plait__sa_sum(const plait__sa_t *sa);
/** \brief Ring width m of the round. */
unsigned plait__sa_bits(const plait__sa_t *sa);

#endif /* PLAIT_SERVER_SECAGG_H */
