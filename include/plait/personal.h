/*
 * personal.h: personalization that never serves a device an adapter that
 * does worse than the global one on text it has not trained on.
 *
 * One routine, used by the simulator (sim/sim.c) and the agent:
 *   1. split the device's training text into a training part and a
 *      device-local validation slice: the LAST val_fraction of its tokens
 *      (at least one window of T + 1 tokens when the text has two, never
 *      more than half), deterministic and disjoint (plait_personal_split);
 *   2. fine-tune from the reference adapter (the global adapter; FedSA-LoRA:
 *      the global A with the device's own B) on the training part, with an
 *      optional Ditto proximal term lambda/2 ||w - w_ref||^2 (Li et al. 2021,
 *      plait_train_set_prox), validating every eval_every steps and keeping
 *      the best step (early stopping after `patience` validations without
 *      improvement);
 *   3. choose, on the validation slice, among the reference, the fine-tuned
 *      adapter and the interpolations (1 - a) ref + a personal for a in
 *      {0.25, 0.5, 0.75} (APFL-style mixing, Deng et al. 2020). The
 *      reference is kept unless another candidate is better by more than
 *      min_gain nats per token plus guard_z standard errors of the paired
 *      per-prediction differences (a short validation tail is noisy): the
 *      choice is never worse than the reference on validation.
 *
 *   4. optionally (plait_personal_fit_bias), a personal output bias on top
 *      of the chosen adapter: a vector b of V logits added to the model's
 *      (a FedPer/FedRep-style personal head, the smallest one), fitted on
 *      the training part by full-batch Adam on the mean cross-entropy of
 *      softmax(z + b) plus bias_l2/2 ||b||^2 with the model's logits z
 *      frozen (a convex problem), validated every eval_every steps, the best
 *      step kept, and kept at all only when it beats the chosen adapter on
 *      the validation slice by the same margin (min_gain and the guard). It
 *      corrects what the device writes more or less often than the global
 *      model predicts (its names, its words) and cannot move far from zero
 *      on little text.
 *
 *   5. optionally (plait_personal_fit_knn), a kNN memory of the device's own
 *      text on top (knn.h, kNN-LM): the training part's hidden states and
 *      next tokens; k, tau and lambda chosen on the validation slice, kept
 *      by the same margin, then the validation positions join it.
 *
 * Texts shorter than one window are still evaluated: plait_personal_eval
 * scores a short text as one partial window (every prediction it has).
 *
 * Thread-safety: the functions use only their arguments; one trainer per
 * thread.
 */
#ifndef PLAIT_PERSONAL_H
#define PLAIT_PERSONAL_H

#include "plait/data.h"
#include "plait/knn.h"
#include "plait/lora.h"
#include "plait/train.h"

typedef struct {
    double val_fraction; /**< share of the training tokens held for validation, 0.05..0.5 (default 0.15) */
    int max_steps;       /**< fine-tuning budget in optimizer steps, >= 1 (default 40) */
    int eval_every;      /**< validate every k steps, >= 1 (default 5) */
    int patience;        /**< stop after this many validations without improvement; 0 = never (default 2) */
    double prox_lambda;  /**< Ditto lambda >= 0; 0 = plain fine-tuning (default 0) */
    size_t val_windows;  /**< at most this many validation windows; 0 = all (default 0) */
    double min_gain;     /**< a non-reference choice must beat the reference by more than this (default 0) */
    uint64_t seed;       /**< state of the batch sampler (plait_corpus_sample) */
    /** Polled before every fine-tuning step and validation (NULL: never): nonzero stops the fit
     *  with PLAIT_ECANCELED and the adapter left equal to the reference. */
    int (*stop)(void *ud);
    void *stop_ud;       /**< passed to stop */
    int bias_steps;      /**< output-bias budget in full-batch Adam steps, >= 0; 0 = no bias (default 100) */
    double bias_lr;      /**< its Adam learning rate, > 0 (default 0.05) */
    double bias_l2;      /**< its L2 weight toward 0, >= 0 (default 3e-3) */
    size_t bias_bytes;   /**< memory for the frozen probabilities it fits on (V floats a prediction; the
                              training predictions are thinned evenly to fit), >= 1 MiB (default 32 MiB) */
    size_t knn_bytes;    /**< room for the kNN memory of the training part (knn.h; C + 2 floats an entry, the
                              training positions thinned evenly to fit); 0 = no memory (default 8 MiB) */
    double guard_z;      /**< a fine-tuned or mixed adapter, the bias and the memory are kept only when their
                              validation gain also exceeds guard_z standard errors of the paired differences:
                              the larger of the per-window (T predictions; one window gives no estimate, so
                              nothing is kept) and the per-prediction one. A small validation tail is noisy;
                              0..100, 0 = no guard (default 2) */
} plait_personal_config_t;

typedef enum {
    PLAIT_PERSONAL_GLOBAL = 0, /**< the reference adapter, unchanged */
    PLAIT_PERSONAL_OWN = 1,    /**< the fine-tuned adapter (best validation step) */
    PLAIT_PERSONAL_MIX = 2     /**< (1 - mix) reference + mix fine-tuned */
} plait_personal_kind_t;

typedef struct plait_personal_result_s {
    plait_personal_kind_t kind;
    double mix;           /**< a of the chosen adapter: 0 reference, 1 fine-tuned */
    double val_global;    /**< validation loss (nats/token) of the reference */
    double val_personal;  /**< of the fine-tuned adapter at its best step (= val_global at step 0) */
    double val_chosen;    /**< of the chosen adapter (<= val_global) */
    int best_step;        /**< the kept step (0: no step helped) */
    int steps;            /**< steps run before stopping */
    size_t val_tokens;    /**< predictions in the validation loss */
    double train_loss;    /**< training loss of the last step run (NAN when none) */
    /* plait_personal_fit_bias (zero until it runs): */
    int bias;             /**< 1: the device serves its output bias on top of the chosen adapter */
    double val_bias;      /**< validation loss with the fitted bias (= val_chosen when none helped) */
    int bias_step;        /**< the kept bias step (0: none) */
    /* plait_personal_fit_knn (zero until it runs): */
    int knn;              /**< 1: the device serves its kNN memory on top of the adapter and bias */
    double val_knn;       /**< validation loss with the memory (= the loss without it when none is kept) */
    size_t knn_entries;   /**< entries in the kept memory */
} plait_personal_result_t;

/** \brief The defaults commented in plait_personal_config_t (seed 0). */
plait_personal_config_t plait_personal_config_default(void);
/** \brief Check ranges. \return 0 or PLAIT_EINVAL naming the field. */
int plait_personal_config_validate(const plait_personal_config_t *cfg);

/** \brief "global", "personal" or "mix". */
const char *plait_personal_kind_name(plait_personal_kind_t k);

/**
 * \brief Split all into train (its first tokens) and val (its last ones):
 *        v = max(ceil(frac n), min(T + 1, n / 2)) tokens validate, the rest
 *        train. Deterministic; the two never share a token position.
 * \param train, val initialized corpora (replaced).
 * \return 0; PLAIT_EINVAL when all has under 4 tokens (too little to
 *         validate) or frac is out of range; PLAIT_ENOMEM.
 */
int plait_personal_split(const plait_corpus_t *all, double frac, int T, plait_corpus_t *train /* OUT */,
                         plait_corpus_t *val /* OUT */) PLAIT_WUR;

/**
 * \brief Repeat c's tokens end to end until it fills one training window of
 *        T + 1 tokens (a text shorter than a window can still train). A
 *        corpus already that long is unchanged. \return 0, PLAIT_EINVAL
 *        (empty corpus), PLAIT_ENOMEM.
 */
int plait_personal_fill(plait_corpus_t *c, int T) PLAIT_WUR;

/**
 * \brief Held-out loss of the trainer's adapter on c: plait_corpus_eval over
 *        at most max_windows windows of the trainer's T when c has one; a
 *        shorter text (2..T tokens) is one partial window of all its
 *        predictions. *n_tokens: the predictions counted.
 * \return 0; PLAIT_EINVAL (fewer than 2 tokens); an evaluation error.
 */
int plait_personal_eval(const plait_corpus_t *c, plait_trainer_t *tr, size_t max_windows, double *loss /* OUT */,
                        size_t *n_tokens /* OUT, may be NULL */) PLAIT_WUR;

/**
 * \brief Per-window held-out losses of the trainer's adapter on c, the
 *        windows of plait_personal_eval (at most max_windows of T, or one
 *        partial window), each its mean loss per token, into
 *        losses[0..*n_windows) (at most cap; the rest are not evaluated).
 *        Two adapters evaluated this way pair window by window: the spread
 *        of the differences gives the noise of a difference of losses.
 * \return 0; PLAIT_EINVAL (fewer than 2 tokens, cap 0); an evaluation error.
 */
int plait_personal_eval_windows(const plait_corpus_t *c, plait_trainer_t *tr, size_t max_windows, double *losses,
                                size_t cap, size_t *n_windows /* OUT */) PLAIT_WUR;

/**
 * \brief Fit and choose (steps 2 and 3 above). tr must be a trainer over
 *        lora; on return lora->params holds the chosen adapter and the
 *        trainer is reset with no proximal term.
 * \param ref   lora->n_params floats: the reference adapter (not modified;
 *              must not alias lora->params).
 * \param train at least one window of T + 1 tokens (see plait_personal_fill).
 * \param val   at least 2 tokens.
 * \return 0; PLAIT_EINVAL (config, corpora); PLAIT_ENOMEM; a training error
 *         (lora then holds the reference).
 */
int plait_personal_fit(plait_trainer_t *tr, plait_lora_t *lora, const float *ref, const plait_corpus_t *train,
                       const plait_corpus_t *val, const plait_personal_config_t *cfg,
                       plait_personal_result_t *res /* OUT */) PLAIT_WUR;

/**
 * \brief The output-bias objective on frozen probabilities: with p_i the
 *        model's next-token distribution for prediction i and y_i its target,
 *        J(b) = (1/n) sum_i -log softmax(log p_i + b)[y_i] + l2/2 ||b||^2;
 *        grad (may be NULL) gets dJ/db = (1/n) sum_i (q_i - e_{y_i}) + l2 b,
 *        q_i = softmax(log p_i + b). Sums in double.
 * \param prob (n, V) probabilities (rows of a softmax); y (n) targets < V.
 * \return J, or NAN on bad arguments (n or V 0, a target out of range).
 */
double plait_personal_bias_objective(const float *prob, const int32_t *y, size_t n, size_t V, const float *b,
                                     double l2, float *grad /* OUT (V), may be NULL */);

/**
 * \brief Step 4 above: fit the output bias of the trainer's current adapter
 *        (call after plait_personal_fit, on the same train and val) and keep
 *        it only where it beats res->val_chosen on val by more than
 *        cfg->min_gain plus guard_z standard errors (see guard_z). Fills
 *        res->bias, res->val_bias, res->bias_step. The trainer
 *        ends with no logit bias set.
 * \param bias OUT: V floats (plait_train_vocab_size): the fitted bias, all
 *             zero when none is kept.
 * \return 0 (also with cfg->bias_steps 0: no bias); PLAIT_EINVAL;
 *         PLAIT_ENOMEM; PLAIT_ECANCELED (cfg->stop, polled before every
 *         step); an evaluation error (bias then zero).
 */
int plait_personal_fit_bias(plait_trainer_t *tr, const plait_corpus_t *train, const plait_corpus_t *val,
                            const plait_personal_config_t *cfg, float *bias /* OUT */,
                            plait_personal_result_t *res) PLAIT_WUR;

/**
 * \brief Step 5: a kNN memory of the device's own text (knn.h) on top of
 *        the trainer's current adapter and the served bias (call after
 *        plait_personal_fit_bias, on the same train and val). The memory
 *        holds the training part's positions (at most cfg->knn_bytes);
 *        k, tau and lambda are chosen on val over a grid (k in 4..64, tau
 *        in multiples of the validation queries' mean spread of squared
 *        distances, lambda in 0.05..0.7), and the memory is kept only
 *        where it beats the loss without it (res->val_bias when a bias is
 *        served, else res->val_chosen) by more than cfg->min_gain plus
 *        guard_z standard errors (see guard_z); the validation positions
 *        then join it while it has room. Fills res->knn, res->val_knn,
 *        res->knn_entries. The fit searches the memory for at most 4,096
 *        validation predictions (whole windows, thinned evenly; then
 *        res->val_knn is measured on those), and besides the memory holds
 *        about 520 bytes per such prediction and C floats per validation
 *        position that can join the memory.
 * \param bias V floats of the served bias, or NULL when none is served.
 * \param knn  OUT: the memory (replaced), empty and off when none is kept.
 * \return 0 (also with knn_bytes 0); PLAIT_EINVAL; PLAIT_ENOMEM;
 *         PLAIT_ECANCELED (cfg->stop, polled per window); an evaluation
 *         error. The trainer ends with no logit bias set.
 */
int plait_personal_fit_knn(plait_trainer_t *tr, const plait_corpus_t *train, const plait_corpus_t *val,
                           const plait_personal_config_t *cfg, const float *bias, plait_knn_t *knn /* OUT */,
                           plait_personal_result_t *res) PLAIT_WUR;

/**
 * \brief Held-out loss of the trainer's adapter (and logit bias, if set)
 *        with the kNN memory mixed in, on the windows plait_personal_eval
 *        uses; per-window losses as plait_personal_eval_windows gives them
 *        into losses[0..*n_windows) (at most cap; NULL for none).
 * \return 0; PLAIT_EINVAL (fewer than 2 tokens); an evaluation error.
 */
int plait_personal_eval_knn(const plait_corpus_t *c, plait_trainer_t *tr, const plait_knn_t *knn,
                            size_t max_windows, double *loss /* OUT */, size_t *n_tokens /* OUT, may be NULL */,
                            double *losses /* OUT, may be NULL */, size_t cap, size_t *n_windows /* OUT, may be NULL */) PLAIT_WUR;

#endif /* PLAIT_PERSONAL_H */
