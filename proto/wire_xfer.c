/*
 * wire_xfer.c: chunked transfers of an update (words, client to aggregator)
 * (words, or packed at the task's quant_bits when the aggregator reads
 * them, client to aggregator) and of an adapter (bytes, aggregator to client): the sender cuts chunks
 * within the limits, the receiver accepts them only in sequence, for the
 * expected round or version and total, and the adapter only with the
 * task's hash in its last chunk.
 */
#include <string.h>

#include "plait/secagg.h"
#include "plait/update.h"
#include "wire_int.h"

/* ---- chunked transfers ---------------------------------------------------- */

void plait_wire_xfer_init(plait_wire_xfer_t *x, uint64_t id, uint64_t total, uint64_t offset)
{
    memset(x, 0, sizeof(*x));
    x->id = id;
    x->total = total;
    x->next = offset;
}

int plait_wire_update_tx_next(plait_wire_xfer_t *x, const plait_wire_limits_t *lim,
                              const uint32_t *words, plait_msg_t *out)
{
    plait_wire_limits_t tmp;
    if (!x || !words || !out) return plait_fail(PLAIT_EINVAL, "update tx: NULL argument");
    if (!(lim = plait__wire_limits_or_default(lim, &tmp))) return PLAIT_EINVAL;
    if (x->total < 1 || x->total > lim->max_update_elements || x->next > x->total)
        return plait_fail(PLAIT_EINVAL, "update tx: total %llu, offset %llu",
                          (unsigned long long)x->total, (unsigned long long)x->next);
    if (x->next == x->total) return 0;
    uint64_t n = x->total - x->next;
    uint64_t cap = lim->max_chunk_bytes / 4;
    if (n > cap) n = cap;
    if (x->index == 0 && n > PLAIT_WIRE_UPDATE_LEAD_WORDS) n = PLAIT_WIRE_UPDATE_LEAD_WORDS;
    plait_msg_init(out, PLAIT_MSG_UPDATE_CHUNK);
    plait_msg_update_chunk_t *c = &out->u.update_chunk;
    c->round_id = x->id;
    c->chunk_index = x->index;
    c->offset = x->next;
    c->total_elements = x->total;
    c->words = words + x->next;
    c->n_words = (size_t)n;
    x->next += n;
    x->index++;
    return 1;
}

int plait_wire_update_tx_next_packed(plait_wire_xfer_t *x, const plait_wire_limits_t *lim,
                                     const uint32_t *words, unsigned bits, uint8_t *buf, size_t cap,
                                     plait_msg_t *out)
{
    plait_wire_limits_t tmp;
    if (!x || !words || !buf || !out) return plait_fail(PLAIT_EINVAL, "update tx: NULL argument");
    if (!(lim = plait__wire_limits_or_default(lim, &tmp))) return PLAIT_EINVAL;
    if (bits < PLAIT_QUANT_MIN_BITS || bits > PLAIT_QUANT_MAX_BITS)
        return plait_fail(PLAIT_EINVAL, "update tx: %u bits", bits);
    if (x->total < 1 || x->total > lim->max_update_elements || x->next > x->total)
        return plait_fail(PLAIT_EINVAL, "update tx: total %llu, offset %llu",
                          (unsigned long long)x->total, (unsigned long long)x->next);
    if (x->next == x->total) return 0;
    uint64_t n = x->total - x->next;
    uint64_t per = (uint64_t)lim->max_chunk_bytes * 8 / bits; /* packs into <= max_chunk_bytes */
    if (n > per) n = per;
    if (x->index == 0 && n > PLAIT_WIRE_UPDATE_LEAD_WORDS) n = PLAIT_WIRE_UPDATE_LEAD_WORDS;
    size_t len = plait_pack_bits_len((size_t)n, bits);
    if (cap < len) return plait_fail(PLAIT_ETOOBIG, "update tx: buffer of %zu bytes, need %zu", cap, len);
    int rc = plait_pack_bits(words + x->next, (size_t)n, bits, buf, cap);
    if (rc != 0) return rc; /* a word at or above 2^bits: not this task's quantization */
    plait_msg_init(out, PLAIT_MSG_UPDATE_CHUNK);
    plait_msg_update_chunk_t *c = &out->u.update_chunk;
    c->round_id = x->id;
    c->chunk_index = x->index;
    c->offset = x->next;
    c->total_elements = x->total;
    c->n_words = (size_t)n;
    c->packed = buf;
    c->packed_len = len;
    c->bits = bits;
    x->next += n;
    x->index++;
    return 1;
}

int plait_wire_update_rx_add(plait_wire_xfer_t *x, const plait_msg_update_chunk_t *c, uint32_t *dst)
{
    if (!x || !c || !dst || (!c->words && !c->packed))
        return plait_fail(PLAIT_EINVAL, "update rx: NULL argument");
    if (c->round_id != x->id)
        return plait_fail(PLAIT_ESTALE, "update_chunk.round_id: %llu, the upload is for round %llu",
                          (unsigned long long)c->round_id, (unsigned long long)x->id);
    if (c->total_elements != x->total)
        return plait_fail(PLAIT_EMISMATCH, "update_chunk.total_elements: %llu, the task has %llu",
                          (unsigned long long)c->total_elements, (unsigned long long)x->total);
    if (x->next >= x->total)
        return plait_fail(PLAIT_EMISMATCH, "update_chunk: the upload is already complete");
    if (c->offset != x->next || c->chunk_index != x->index)
        return plait_fail(
            PLAIT_EMISMATCH, "update_chunk: chunk %u at offset %llu, expected chunk %u at %llu",
            c->chunk_index, (unsigned long long)c->offset, x->index, (unsigned long long)x->next);
    if (c->n_words > x->total - c->offset)
        return plait_fail(PLAIT_EMISMATCH, "update_chunk.words: past total_elements");
    if (c->words) {
        memcpy(dst + c->offset, c->words, c->n_words * sizeof(uint32_t));
    } else {
        int rc = plait_unpack_bits(c->packed, c->packed_len, c->n_words, c->bits, dst + c->offset);
        if (rc != 0) return plait_fail(PLAIT_EPROTO, "update_chunk.packed: %s", plait_errmsg());
    }
    x->next += c->n_words;
    x->index++;
    return x->next == x->total ? 1 : 0;
}

int plait_wire_adapter_tx_next(plait_wire_xfer_t *x, const plait_wire_limits_t *lim,
                               const uint8_t *blob, const uint8_t sha256[PLAIT_WIRE_SHA256_LEN],
                               plait_msg_t *out)
{
    plait_wire_limits_t tmp;
    if (!x || !blob || !sha256 || !out)
        return plait_fail(PLAIT_EINVAL, "adapter tx: NULL argument");
    if (!(lim = plait__wire_limits_or_default(lim, &tmp))) return PLAIT_EINVAL;
    if (x->total < 1 || x->total > lim->max_adapter_bytes || x->next > x->total)
        return plait_fail(PLAIT_EINVAL, "adapter tx: total %llu, offset %llu",
                          (unsigned long long)x->total, (unsigned long long)x->next);
    if (x->next == x->total) return 0;
    uint64_t n = x->total - x->next;
    if (n > lim->max_chunk_bytes) n = lim->max_chunk_bytes;
    plait_msg_init(out, PLAIT_MSG_ADAPTER_CHUNK);
    plait_msg_adapter_chunk_t *c = &out->u.adapter_chunk;
    c->version = x->id;
    c->offset = x->next;
    c->total_len = x->total;
    c->data = blob + x->next;
    c->len = (size_t)n;
    x->next += n;
    x->index++;
    if (x->next == x->total) {
        c->has_sha256 = 1;
        memcpy(c->sha256, sha256, PLAIT_WIRE_SHA256_LEN);
    }
    return 1;
}

int plait_wire_adapter_rx_add(plait_wire_xfer_t *x, const plait_msg_adapter_chunk_t *c,
                              const uint8_t expected_sha256[PLAIT_WIRE_SHA256_LEN], uint8_t *dst)
{
    if (!x || !c || !expected_sha256 || !dst || !c->data)
        return plait_fail(PLAIT_EINVAL, "adapter rx: NULL argument");
    if (c->version != x->id)
        return plait_fail(PLAIT_EMISMATCH, "adapter_chunk.version: %llu, requested %llu",
                          (unsigned long long)c->version, (unsigned long long)x->id);
    if (c->total_len != x->total)
        return plait_fail(PLAIT_EMISMATCH, "adapter_chunk.total_len: %llu, the task has %llu",
                          (unsigned long long)c->total_len, (unsigned long long)x->total);
    if (x->next >= x->total)
        return plait_fail(PLAIT_EMISMATCH, "adapter_chunk: the download is already complete");
    if (c->offset != x->next)
        return plait_fail(PLAIT_EMISMATCH, "adapter_chunk.offset: %llu, expected %llu",
                          (unsigned long long)c->offset, (unsigned long long)x->next);
    if (c->len > x->total - c->offset)
        return plait_fail(PLAIT_EMISMATCH, "adapter_chunk.data: past total_len");
    int last = c->len == x->total - c->offset;
    if (last && (!c->has_sha256 || memcmp(c->sha256, expected_sha256, PLAIT_WIRE_SHA256_LEN) != 0))
        return plait_fail(PLAIT_EMISMATCH, "adapter_chunk.sha256: not the task's adapter hash");
    memcpy(dst + c->offset, c->data, c->len);
    x->next += c->len;
    x->index++;
    return last ? 1 : 0;
}

