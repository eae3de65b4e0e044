/*
 * wire_convert.c: the messages other than SecAgg+ between the plain structs
 * of include/plait/wire.h and the generated protobuf-c structs.
 *
 * Decoding checks presence (a missing required field is "<msg>.<field>:
 * missing") and exact byte lengths (hashes), copies text into NUL-terminated
 * arrays and leaves every range to wire_validate.c; adapter bytes and update
 * words keep pointing into the unpacked Envelope. Encoding fills a
 * plait__wire_pb_t on the caller's stack without allocating. The SecAgg+
 * messages are converted in wire_secagg.c.
 */
#include <stdlib.h>
#include <string.h>

#include "wire_int.h"

/* ---- decode: protobuf-c structs -> plain structs ------------------------- */

static int copy_sha(const ProtobufCBinaryData *b, uint8_t out[PLAIT_WIRE_SHA256_LEN],
                    const char *field)
{
    if (b->len != PLAIT_WIRE_SHA256_LEN)
        return BAD("%s: %zu bytes, want %d", field, b->len, PLAIT_WIRE_SHA256_LEN);
    memcpy(out, b->data, PLAIT_WIRE_SHA256_LEN);
    return 0;
}

/* Copy a bytes field holding text into a NUL-terminated array of cap + 1; an
 * embedded NUL is refused here because the validators stop at the first. */
static int copy_text(const ProtobufCBinaryData *b, char *out, size_t cap, const char *field)
{
    if (b->len > cap) return BAD("%s: %zu bytes above %zu", field, b->len, cap);
    if (b->len && memchr(b->data, 0, b->len)) return BAD("%s: NUL byte", field);
    if (b->len) memcpy(out, b->data, b->len);
    out[b->len] = '\0';
    return 0;
}

static int from_hello(const Plait__Hello *p, plait_msg_hello_t *h)
{
    int rc;
    NEED(p->has_client_version, "hello.client_version");
    if ((rc = copy_text(&p->client_version, h->client_version, PLAIT_WIRE_MAX_CLIENT_VERSION,
                        "hello.client_version")) != 0)
        return rc;
    NEED(p->has_base_model_sha256, "hello.base_model_sha256");
    if ((rc = copy_sha(&p->base_model_sha256, h->base_model_sha256, "hello.base_model_sha256")) !=
        0)
        return rc;
    NEED(p->has_capabilities, "hello.capabilities");
    h->capabilities = p->capabilities;
    h->has_last_round = p->has_last_round_completed ? 1 : 0;
    h->last_round_completed = p->has_last_round_completed ? p->last_round_completed : 0;
    return 0;
}

static int from_task(const Plait__Task *p, plait_msg_task_t *t)
{
    int rc;
    NEED(p->has_round_id, "task.round_id");
    NEED(p->has_adapter_version, "task.adapter_version");
    NEED(p->has_adapter_len, "task.adapter_len");
    NEED(p->has_adapter_sha256, "task.adapter_sha256");
    t->round_id = p->round_id;
    t->adapter_version = p->adapter_version;
    t->adapter_len = p->adapter_len;
    if ((rc = copy_sha(&p->adapter_sha256, t->adapter_sha256, "task.adapter_sha256")) != 0)
        return rc;

    const Plait__LoraConfig *l = p->lora;
    NEED(l, "task.lora");
    NEED(l->has_rank, "task.lora.rank");
    NEED(l->has_alpha, "task.lora.alpha");
    NEED(l->has_targets, "task.lora.targets");
    NEED(l->has_mode, "task.lora.mode");
    NEED(l->has_a_seed, "task.lora.a_seed");
    t->lora.rank = l->rank;
    t->lora.alpha = l->alpha;
    t->lora.targets = l->targets;
    t->lora.mode = (plait_lora_mode_t)l->mode;
    t->lora.a_seed = l->a_seed;

    const Plait__TrainParams *tp = p->train;
    NEED(tp, "task.train");
    NEED(tp->has_local_steps, "task.train.local_steps");
    NEED(tp->has_batch, "task.train.batch");
    NEED(tp->has_seq_len, "task.train.seq_len");
    NEED(tp->has_lr, "task.train.lr");
    t->train.local_steps = tp->local_steps;
    t->train.batch = tp->batch;
    t->train.seq_len = tp->seq_len;
    t->train.lr = tp->lr;
    t->train.prox_mu = tp->has_prox_mu ? tp->prox_mu : 0.0;

    NEED(p->has_clip_norm, "task.clip_norm");
    NEED(p->has_quant_bits, "task.quant_bits");
    NEED(p->has_quant_range, "task.quant_range");
    NEED(p->has_secure_agg, "task.secure_agg");
    t->clip_norm = p->clip_norm;
    t->quant_bits = p->quant_bits;
    t->quant_range = p->quant_range;
    t->secure_agg = p->secure_agg ? 1 : 0;

    const Plait__DpParams *dp = p->dp;
    NEED(dp, "task.dp");
    NEED(dp->has_mode, "task.dp.mode");
    NEED(dp->has_noise_multiplier, "task.dp.noise_multiplier");
    t->dp.mode = (plait_dp_mode_t)dp->mode;
    t->dp.noise_multiplier = dp->noise_multiplier;
    if (dp->has_ddg_var_num) t->dp.ddg_var_num = dp->ddg_var_num;
    if (dp->has_ddg_var_den) t->dp.ddg_var_den = dp->ddg_var_den;

    NEED(p->has_deadline_s, "task.deadline_s");
    NEED(p->has_update_elements, "task.update_elements");
    NEED(p->has_example_cap, "task.example_cap");
    t->deadline_s = p->deadline_s;
    t->update_elements = p->update_elements;
    t->example_cap = p->example_cap;
    t->max_chunk_bytes = p->has_max_chunk_bytes ? p->max_chunk_bytes : 0;
    if (p->has_max_chunk_bytes && p->max_chunk_bytes == 0) return BAD("task.max_chunk_bytes: 0");
    t->clip_bit = p->has_clip_bit && p->clip_bit ? 1 : 0;
    t->packed_update = p->has_packed_update && p->packed_update ? 1 : 0;
    t->kind = p->has_kind ? (plait_task_kind_t)p->kind : PLAIT_TASK_TRAIN;
    if (p->has_eval_loss_max) {
        if (t->kind != PLAIT_TASK_EVALUATE) return BAD("task.eval_loss_max: set in a training task");
        t->eval_loss_max = p->eval_loss_max;
    } else if (t->kind == PLAIT_TASK_EVALUATE) {
        return BAD("task.eval_loss_max: missing");
    }
    if (p->secagg) {
        const Plait__SecAggParams *q = p->secagg;
        NEED(q->has_index, "task.secagg.index");
        NEED(q->has_n, "task.secagg.n");
        NEED(q->has_k, "task.secagg.k");
        NEED(q->has_t, "task.secagg.t");
        NEED(q->has_bits, "task.secagg.bits");
        NEED(q->has_graph_seed, "task.secagg.graph_seed");
        if (q->graph_seed.len != PLAIT_WIRE_SECAGG_SEED_LEN)
            return BAD("task.secagg.graph_seed: %zu bytes, want %d", q->graph_seed.len,
                       PLAIT_WIRE_SECAGG_SEED_LEN);
        t->has_secagg = 1;
        t->secagg.index = q->index;
        t->secagg.n = q->n;
        t->secagg.k = q->k;
        t->secagg.t = q->t;
        t->secagg.bits = q->bits;
        memcpy(t->secagg.graph_seed, q->graph_seed.data, PLAIT_WIRE_SECAGG_SEED_LEN);
    }
    return 0;
}

static int from_cbl(const Plait__ComeBackLater *p, plait_msg_come_back_later_t *c)
{
    NEED(p->has_retry_ms, "come_back_later.retry_ms");
    NEED(p->has_reason, "come_back_later.reason");
    c->retry_ms = p->retry_ms;
    c->reason = (plait_retry_reason_t)p->reason;
    return 0;
}

static int from_areq(const Plait__AdapterRequest *p, plait_msg_adapter_request_t *r)
{
    NEED(p->has_round_id, "adapter_request.round_id");
    NEED(p->has_version, "adapter_request.version");
    NEED(p->has_offset, "adapter_request.offset");
    r->round_id = p->round_id;
    r->version = p->version;
    r->offset = p->offset;
    r->accept = p->has_accept ? p->accept : 0;
    r->has_base = p->has_base_sha256 ? 1 : 0;
    if (p->has_base_sha256) return copy_sha(&p->base_sha256, r->base_sha256, "adapter_request.base_sha256");
    return 0;
}

static int from_achunk(const Plait__AdapterChunk *p, plait_msg_adapter_chunk_t *c)
{
    NEED(p->has_version, "adapter_chunk.version");
    NEED(p->has_offset, "adapter_chunk.offset");
    NEED(p->has_total_len, "adapter_chunk.total_len");
    NEED(p->has_data, "adapter_chunk.data");
    c->version = p->version;
    c->offset = p->offset;
    c->total_len = p->total_len;
    c->data = p->data.data;
    c->len = p->data.len;
    c->has_sha256 = p->has_sha256 ? 1 : 0;
    c->encoding = p->has_encoding ? (plait_adapter_encoding_t)p->encoding : PLAIT_ADAPTER_FULL;
    if (p->has_sha256) return copy_sha(&p->sha256, c->sha256, "adapter_chunk.sha256");
    return 0;
}

static int from_uchunk(const Plait__UpdateChunk *p, plait_msg_update_chunk_t *c)
{
    NEED(p->has_round_id, "update_chunk.round_id");
    NEED(p->has_chunk_index, "update_chunk.chunk_index");
    NEED(p->has_offset, "update_chunk.offset");
    NEED(p->has_total_elements, "update_chunk.total_elements");
    c->round_id = p->round_id;
    c->chunk_index = p->chunk_index;
    c->offset = p->offset;
    c->total_elements = p->total_elements;
    if (p->n_words > 0 && (p->has_packed || p->has_bits || p->has_count))
        return BAD("update_chunk: both words and packed");
    if (p->n_words > 0) {
        c->words = p->words;
        c->n_words = p->n_words;
        return 0;
    }
    NEED(p->has_packed, "update_chunk.words or update_chunk.packed");
    NEED(p->has_bits, "update_chunk.bits");
    NEED(p->has_count, "update_chunk.count");
    if (p->packed.len == 0 || p->packed.data == NULL) return BAD("update_chunk.packed: empty");
    c->packed = p->packed.data;
    c->packed_len = p->packed.len;
    c->bits = p->bits;
    c->n_words = p->count;
    return 0;
}

static int from_ack(const Plait__Ack *p, plait_msg_ack_t *a)
{
    NEED(p->has_round_id, "ack.round_id");
    NEED(p->has_kind, "ack.kind");
    NEED(p->has_elements, "ack.elements");
    a->round_id = p->round_id;
    a->kind = (plait_ack_kind_t)p->kind;
    a->elements = p->elements;
    return 0;
}

static int from_error(const Plait__Error *p, plait_msg_error_t *e, const plait_wire_limits_t *lim)
{
    NEED(p->has_code, "error.code");
    e->code = p->code;
    if (p->has_message) return copy_text(&p->message, e->message, lim->max_string, "error.message");
    e->message[0] = '\0';
    return 0;
}

static int from_ping(const Plait__Ping *p, plait_msg_ping_t *g, const char *field)
{
    NEED(p->has_nonce, field);
    g->nonce = p->nonce;
    return 0;
}
static int from_decline(const Plait__Decline *p, plait_msg_decline_t *d)
{
    NEED(p->has_round_id, "decline.round_id");
    NEED(p->has_code, "decline.code");
    d->round_id = p->round_id;
    d->code = (plait_decline_code_t)p->code;
    return 0;
}

int plait__wire_from_envelope(const Plait__Envelope *env, plait_msg_t *m,
                              const plait_wire_limits_t *lim)
{
    switch (env->msg_case) {
    case PLAIT__ENVELOPE__MSG_HELLO:
        return from_hello(env->hello, &m->u.hello);
    case PLAIT__ENVELOPE__MSG_TASK:
        return from_task(env->task, &m->u.task);
    case PLAIT__ENVELOPE__MSG_COME_BACK_LATER:
        return from_cbl(env->come_back_later, &m->u.come_back_later);
    case PLAIT__ENVELOPE__MSG_ADAPTER_REQUEST:
        return from_areq(env->adapter_request, &m->u.adapter_request);
    case PLAIT__ENVELOPE__MSG_ADAPTER_CHUNK:
        return from_achunk(env->adapter_chunk, &m->u.adapter_chunk);
    case PLAIT__ENVELOPE__MSG_UPDATE_CHUNK:
        return from_uchunk(env->update_chunk, &m->u.update_chunk);
    case PLAIT__ENVELOPE__MSG_ACK:
        return from_ack(env->ack, &m->u.ack);
    case PLAIT__ENVELOPE__MSG_ERROR:
        return from_error(env->error, &m->u.error, lim);
    case PLAIT__ENVELOPE__MSG_PING:
        return from_ping(env->ping, &m->u.ping, "ping.nonce");
    case PLAIT__ENVELOPE__MSG_PONG:
        return from_ping(env->pong, &m->u.ping, "pong.nonce");
    case PLAIT__ENVELOPE__MSG_DECLINE:
        return from_decline(env->decline, &m->u.decline);
    default:
        return plait__wire_from_envelope_secagg(env, m);
    }
}

/* ---- encode: plain structs -> protobuf-c structs ------------------------ */

int plait__wire_to_envelope(const plait_msg_t *m, plait__wire_pb_t *pb)
{
    plait__envelope__init(&pb->env);
    switch (m->type) {
    case PLAIT_MSG_HELLO: {
        const plait_msg_hello_t *h = &m->u.hello;
        plait__hello__init(&pb->hello);
        pb->hello.has_client_version = 1;
        pb->hello.client_version =
            plait__wire_bin(h->client_version, strnlen(h->client_version, sizeof(h->client_version)));
        pb->hello.has_base_model_sha256 = 1;
        pb->hello.base_model_sha256 = plait__wire_bin(h->base_model_sha256, PLAIT_WIRE_SHA256_LEN);
        pb->hello.has_capabilities = 1;
        pb->hello.capabilities = h->capabilities;
        pb->hello.has_last_round_completed = h->has_last_round ? 1 : 0;
        pb->hello.last_round_completed = h->last_round_completed;
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_HELLO;
        pb->env.hello = &pb->hello;
        break;
    }
    case PLAIT_MSG_TASK: {
        const plait_msg_task_t *t = &m->u.task;
        plait__task__init(&pb->task);
        plait__lora_config__init(&pb->lora);
        plait__train_params__init(&pb->train);
        plait__dp_params__init(&pb->dp);
        Plait__Task *p = &pb->task;
        p->has_round_id = p->has_adapter_version = p->has_adapter_len = p->has_adapter_sha256 = 1;
        p->round_id = t->round_id;
        p->adapter_version = t->adapter_version;
        p->adapter_len = t->adapter_len;
        p->adapter_sha256 = plait__wire_bin(t->adapter_sha256, PLAIT_WIRE_SHA256_LEN);
        pb->lora.has_rank = pb->lora.has_alpha = pb->lora.has_targets = pb->lora.has_mode =
            pb->lora.has_a_seed = 1;
        pb->lora.rank = t->lora.rank;
        pb->lora.alpha = t->lora.alpha;
        pb->lora.targets = t->lora.targets;
        pb->lora.mode = (Plait__LoraMode)t->lora.mode;
        pb->lora.a_seed = t->lora.a_seed;
        p->lora = &pb->lora;
        pb->train.has_local_steps = pb->train.has_batch = pb->train.has_seq_len = pb->train.has_lr =
            1;
        pb->train.local_steps = t->train.local_steps;
        pb->train.batch = t->train.batch;
        pb->train.seq_len = t->train.seq_len;
        pb->train.lr = t->train.lr;
        pb->train.has_prox_mu = t->train.prox_mu != 0.0; /* absent when off: older devices see the same task */
        pb->train.prox_mu = t->train.prox_mu;
        p->train = &pb->train;
        p->has_clip_norm = p->has_quant_bits = p->has_quant_range = p->has_secure_agg = 1;
        p->clip_norm = t->clip_norm;
        p->quant_bits = t->quant_bits;
        p->quant_range = t->quant_range;
        p->secure_agg = t->secure_agg ? 1 : 0;
        pb->dp.has_mode = pb->dp.has_noise_multiplier = 1;
        pb->dp.mode = (Plait__DpMode)t->dp.mode;
        pb->dp.noise_multiplier = t->dp.noise_multiplier;
        if (t->dp.mode == PLAIT_DP_DISTRIBUTED) {
            pb->dp.has_ddg_var_num = pb->dp.has_ddg_var_den = 1;
            pb->dp.ddg_var_num = t->dp.ddg_var_num;
            pb->dp.ddg_var_den = t->dp.ddg_var_den;
        }
        p->dp = &pb->dp;
        p->has_deadline_s = p->has_update_elements = p->has_example_cap = 1;
        p->deadline_s = t->deadline_s;
        p->update_elements = t->update_elements;
        p->example_cap = t->example_cap;
        p->has_max_chunk_bytes = t->max_chunk_bytes != 0;
        p->max_chunk_bytes = t->max_chunk_bytes;
        if (t->packed_update) { /* absent when off: older devices see the same task */
            p->has_packed_update = 1;
            p->packed_update = 1;
        }
        if (t->clip_bit) {
            p->has_clip_bit = 1;
            p->clip_bit = 1;
        }
        if (t->kind != PLAIT_TASK_TRAIN) { /* absent means TRAIN: old devices see the same bytes */
            p->has_kind = p->has_eval_loss_max = 1;
            p->kind = (Plait__TaskKind)t->kind;
            p->eval_loss_max = t->eval_loss_max;
        }
        if (t->has_secagg) {
            Plait__SecAggParams *q = &pb->sa_params;
            plait__sec_agg_params__init(q);
            q->has_index = q->has_n = q->has_k = q->has_t = q->has_bits = q->has_graph_seed = 1;
            q->index = t->secagg.index;
            q->n = t->secagg.n;
            q->k = t->secagg.k;
            q->t = t->secagg.t;
            q->bits = t->secagg.bits;
            q->graph_seed = plait__wire_bin(t->secagg.graph_seed, PLAIT_WIRE_SECAGG_SEED_LEN);
            p->secagg = q;
        }
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_TASK;
        pb->env.task = p;
        break;
    }
    case PLAIT_MSG_COME_BACK_LATER:
        plait__come_back_later__init(&pb->cbl);
        pb->cbl.has_retry_ms = pb->cbl.has_reason = 1;
        pb->cbl.retry_ms = m->u.come_back_later.retry_ms;
        pb->cbl.reason = (Plait__RetryReason)m->u.come_back_later.reason;
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_COME_BACK_LATER;
        pb->env.come_back_later = &pb->cbl;
        break;
    case PLAIT_MSG_ADAPTER_REQUEST:
        plait__adapter_request__init(&pb->areq);
        pb->areq.has_round_id = pb->areq.has_version = pb->areq.has_offset = 1;
        pb->areq.round_id = m->u.adapter_request.round_id;
        pb->areq.version = m->u.adapter_request.version;
        pb->areq.offset = m->u.adapter_request.offset;
        pb->areq.has_accept = m->u.adapter_request.accept != 0;
        pb->areq.accept = m->u.adapter_request.accept;
        pb->areq.has_base_sha256 = m->u.adapter_request.has_base ? 1 : 0;
        if (m->u.adapter_request.has_base)
            pb->areq.base_sha256 = plait__wire_bin(m->u.adapter_request.base_sha256, PLAIT_WIRE_SHA256_LEN);
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_ADAPTER_REQUEST;
        pb->env.adapter_request = &pb->areq;
        break;
    case PLAIT_MSG_ADAPTER_CHUNK: {
        const plait_msg_adapter_chunk_t *c = &m->u.adapter_chunk;
        plait__adapter_chunk__init(&pb->achunk);
        pb->achunk.has_version = pb->achunk.has_offset = pb->achunk.has_total_len =
            pb->achunk.has_data = 1;
        pb->achunk.version = c->version;
        pb->achunk.offset = c->offset;
        pb->achunk.total_len = c->total_len;
        pb->achunk.data = plait__wire_bin(c->data, c->len);
        pb->achunk.has_sha256 = c->has_sha256 ? 1 : 0;
        if (c->has_sha256) pb->achunk.sha256 = plait__wire_bin(c->sha256, PLAIT_WIRE_SHA256_LEN);
        pb->achunk.has_encoding = c->encoding != PLAIT_ADAPTER_FULL;
        pb->achunk.encoding = (Plait__AdapterEncoding)c->encoding;
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_ADAPTER_CHUNK;
        pb->env.adapter_chunk = &pb->achunk;
        break;
    }
    case PLAIT_MSG_UPDATE_CHUNK: {
        const plait_msg_update_chunk_t *c = &m->u.update_chunk;
        plait__update_chunk__init(&pb->uchunk);
        pb->uchunk.has_round_id = pb->uchunk.has_chunk_index = pb->uchunk.has_offset = 1;
        pb->uchunk.has_total_elements = 1;
        pb->uchunk.round_id = c->round_id;
        pb->uchunk.chunk_index = c->chunk_index;
        pb->uchunk.offset = c->offset;
        pb->uchunk.total_elements = c->total_elements;
        if (c->packed) {
            pb->uchunk.has_packed = pb->uchunk.has_bits = pb->uchunk.has_count = 1;
            pb->uchunk.packed = plait__wire_bin(c->packed, c->packed_len);
            pb->uchunk.bits = c->bits;
            pb->uchunk.count = (uint32_t)c->n_words;
        } else {
            pb->uchunk.n_words = c->n_words;
            pb->uchunk.words = (uint32_t *)(uintptr_t)c->words;
        }
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_UPDATE_CHUNK;
        pb->env.update_chunk = &pb->uchunk;
        break;
    }
    case PLAIT_MSG_ACK:
        plait__ack__init(&pb->ack);
        pb->ack.has_round_id = pb->ack.has_kind = pb->ack.has_elements = 1;
        pb->ack.round_id = m->u.ack.round_id;
        pb->ack.kind = (Plait__AckKind)m->u.ack.kind;
        pb->ack.elements = m->u.ack.elements;
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_ACK;
        pb->env.ack = &pb->ack;
        break;
    case PLAIT_MSG_ERROR: {
        const plait_msg_error_t *e = &m->u.error;
        size_t n = strnlen(e->message, sizeof(e->message));
        plait__error__init(&pb->error);
        pb->error.has_code = 1;
        pb->error.code = e->code;
        pb->error.has_message = n > 0;
        pb->error.message = plait__wire_bin(e->message, n);
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_ERROR;
        pb->env.error = &pb->error;
        break;
    }
    case PLAIT_MSG_PING:
    case PLAIT_MSG_PONG:
        plait__ping__init(&pb->ping);
        pb->ping.has_nonce = 1;
        pb->ping.nonce = m->u.ping.nonce;
        if (m->type == PLAIT_MSG_PING) {
            pb->env.msg_case = PLAIT__ENVELOPE__MSG_PING;
            pb->env.ping = &pb->ping;
        } else {
            pb->env.msg_case = PLAIT__ENVELOPE__MSG_PONG;
            pb->env.pong = &pb->ping;
        }
        break;
    case PLAIT_MSG_DECLINE:
        plait__decline__init(&pb->decline);
        pb->decline.has_round_id = pb->decline.has_code = 1;
        pb->decline.round_id = m->u.decline.round_id;
        pb->decline.code = (Plait__DeclineCode)m->u.decline.code;
        pb->env.msg_case = PLAIT__ENVELOPE__MSG_DECLINE;
        pb->env.decline = &pb->decline;
        break;
    default:
        return plait__wire_to_envelope_secagg(m, pb);
    }
    return 0;
}
