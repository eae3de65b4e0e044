/*
 * wire.h: the plait federation protocol on the wire: frames and messages.
 *
 * A connection (inside mutual TLS, see docs/protocol.md) carries frames
 *
 *     +----------------+---------+------+---------------------------+
 *     | length: u32 BE | version | type | payload (protobuf bytes)   |
 *     +----------------+---------+------+---------------------------+
 *       4 bytes          1 byte    1      length - 2 bytes
 *
 * `length` counts the bytes after itself (version + type + payload), so a
 * whole frame is 4 + length bytes. The payload is one protobuf `Envelope`
 * (proto/plait.proto) whose single set message has the field number `type`.
 * The header alone decides whether a frame is acceptable (its size against
 * the limits, the version, the type), so a hostile peer is refused before a
 * byte of its body is buffered.
 *
 * This header exposes plain C structs only; protobuf-c stays inside
 * proto/ (wire.c and its wire_*.c). Worked example (aggregator side, bytes arriving in `in`):
 *
 *     plait_wire_limits_t lim;
 *     plait_wire_limits_default(&lim);
 *     plait_msg_t m;
 *     size_t used;
 *     int rc = plait_wire_parse(in, in_len, &lim, authed ? 0 : PLAIT_FRAME_PREAUTH, &m, &used);
 *     if (rc == PLAIT_EAGAIN) return read_more();          // partial frame, nothing consumed
 *     if (rc != 0) return drop_client(rc);                  // ETOOBIG, EPROTO, ENOMEM
 *     consume(in, used);
 *     if (m.type == PLAIT_MSG_UPDATE_CHUNK)
 *         agg_take(m.u.update_chunk.words, m.u.update_chunk.n_words);
 *     plait_msg_free(&m);
 *
 * and the reply:
 *
 *     plait_msg_t r;
 *     plait_msg_init(&r, PLAIT_MSG_ACK);
 *     r.u.ack.round_id = round; r.u.ack.kind = PLAIT_ACK_UPDATE; r.u.ack.elements = n;
 *     uint8_t *buf; size_t len;
 *     if ((rc = plait_wire_encode_alloc(&r, &lim, &buf, &len)) == 0) { send(buf, len); free(buf); }
 *
 * Thread-safety: all functions are reentrant; a plait_msg_t is used by one
 * thread at a time.
 */
#ifndef PLAIT_WIRE_H
#define PLAIT_WIRE_H

#include "plait/plait.h"
#include "plait/update.h" /* plait_lora_mode_t (type only) */

/** Protocol (frame) version this build speaks. */
#define PLAIT_WIRE_VERSION 1
/** Bytes before the payload: u32 length, u8 version, u8 type. */
#define PLAIT_FRAME_HEADER 6
/** Length of every SHA-256 field. */
#define PLAIT_WIRE_SHA256_LEN 32
/** Longest Hello.client_version. */
#define PLAIT_WIRE_MAX_CLIENT_VERSION 64
/** Hard ceiling of plait_wire_limits_t.max_string (Error.message). */
#define PLAIT_WIRE_MAX_STRING 256
/** Hard ceiling of plait_wire_limits_t.max_frame (16 MiB). */
#define PLAIT_WIRE_MAX_FRAME_HARD ((size_t)16 << 20)
/** Room for the header and the non-data fields of a chunk: max_frame >= max_chunk_bytes + this. */
#define PLAIT_WIRE_CHUNK_OVERHEAD 256
/** Largest LoRA rank a task may carry (equals PLAIT_LORA_MAX_RANK in lora.h). */
#define PLAIT_WIRE_MAX_RANK 1024
/** Number of LoRA projections (PLAIT_NPROJ in model.h): targets < 1 << this. */
#define PLAIT_WIRE_NPROJ 7

/* Task field bounds (protocol constants, see docs/protocol.md). */
#define PLAIT_WIRE_MAX_LOCAL_STEPS 1000000u
#define PLAIT_WIRE_MAX_BATCH 4096u
#define PLAIT_WIRE_MAX_SEQ_LEN 65536u
/** Largest Task.eval_loss_max (a cross-entropy in nats far above ln of any vocabulary). */
#define PLAIT_WIRE_MAX_EVAL_LOSS 1000.0
/** Words an evaluation task uploads: [min(loss, L) / L, weight]. */
#define PLAIT_WIRE_EVAL_WORDS 2u

/** Task.kind. */
typedef enum {
    PLAIT_TASK_TRAIN = 0,   /**< train and upload the clipped update (absent on the wire) */
    PLAIT_TASK_EVALUATE = 1 /**< evaluate the task's version on held-out data, upload the loss */
} plait_task_kind_t;

/** Message types; the value is the frame's type byte and the Envelope field number. */
typedef enum {
    PLAIT_MSG_HELLO = 1,           /**< client → aggregator, first frame */
    PLAIT_MSG_TASK = 2,            /**< aggregator → client: the offer of a round */
    PLAIT_MSG_COME_BACK_LATER = 3, /**< aggregator → client: no task now, retry later */
    PLAIT_MSG_ADAPTER_REQUEST = 4, /**< client → aggregator: send the adapter from an offset */
    PLAIT_MSG_ADAPTER_CHUNK = 5,   /**< aggregator → client: a piece of the adapter */
    PLAIT_MSG_UPDATE_CHUNK = 6,    /**< client → aggregator: a piece of the update */
    PLAIT_MSG_ACK = 7,             /**< aggregator → client: the update was accepted */
    PLAIT_MSG_ERROR = 8,           /**< either way: a failure; the sender then closes */
    PLAIT_MSG_PING = 9,            /**< either way: keepalive */
    PLAIT_MSG_PONG = 10,           /**< answer to a ping, same nonce */
    /* Secure aggregation (SecAgg+), docs/protocol.md §9, in stage order. */
    PLAIT_MSG_SECAGG_ADVERTISE = 11,       /**< client → aggregator: round keys, signed */
    PLAIT_MSG_SECAGG_ROSTER = 12,          /**< aggregator → client: index, graph, neighbours */
    PLAIT_MSG_SECAGG_SHARES = 13,          /**< client → aggregator: encrypted shares */
    PLAIT_MSG_SECAGG_RELAY = 14,           /**< aggregator → client: shares addressed to it */
    PLAIT_MSG_SECAGG_MASKED_INPUT = 15,    /**< client → aggregator: a piece of the masked update */
    PLAIT_MSG_SECAGG_UNMASK_REQUEST = 16,  /**< aggregator → client: survivors and dropouts */
    PLAIT_MSG_SECAGG_UNMASK_RESPONSE = 17, /**< client → aggregator: opened shares */
    PLAIT_MSG_DECLINE = 20         /**< client → aggregator: the device will not do the task */
} plait_msg_type_t;
/** Largest type byte; 18..19 are not defined (yet) and refused like any unknown type. */
#define PLAIT_MSG_TYPE_MAX 20

/** Hello.capabilities bits. Unknown bits are ignored by the receiver. */
#define PLAIT_CAP_SECURE_AGG (1u << 0) /**< can mask its update (pairwise masks) */
#define PLAIT_CAP_LOCAL_DP (1u << 1)   /**< can add local Gaussian noise */
#define PLAIT_CAP_FFA (1u << 2)        /**< can train in FFA-LoRA mode */
#define PLAIT_CAP_FEDIT (1u << 3)      /**< can train in FedIT mode */
#define PLAIT_CAP_FEDSA (1u << 4)      /**< can train in FedSA-LoRA mode */
#define PLAIT_CAP_RESUME (1u << 5)     /**< resumes adapter downloads at an offset */
#define PLAIT_CAP_SECAGG (1u << 6)     /**< speaks SecAgg+ (the SecAgg* messages, §9) */
#define PLAIT_CAP_EVALUATE (1u << 7)   /**< does evaluation tasks (Task.kind = EVALUATE, §10) */

/* Secure aggregation field bounds (protocol constants, docs/protocol.md §9). */
/** X25519 public keys and the graph seed. */
#define PLAIT_WIRE_X25519_LEN 32
#define PLAIT_WIRE_SECAGG_SEED_LEN 32
/** Longest signature over the advertised keys (a DER ECDSA P-256 signature is <= 72). */
#define PLAIT_WIRE_SECAGG_MAX_SIG 128
/** Longest device certificate relayed in a roster (PEM). */
#define PLAIT_WIRE_SECAGG_MAX_CERT 4096
/** Most index slots of one secure round (Task.secagg.n; equals PLAIT_SECAGG_MAX_COHORT). */
#define PLAIT_WIRE_SECAGG_MAX_COHORT 100000u
/** Most neighbours of one member (roster peers, shares per message). */
#define PLAIT_WIRE_SECAGG_MAX_PEERS 1024u
/** Longest share (encrypted or opened). */
#define PLAIT_WIRE_SECAGG_MAX_SHARE 512u
/** Ring Z_{2^m}: m in this range. */
#define PLAIT_WIRE_SECAGG_MIN_BITS 8u
#define PLAIT_WIRE_SECAGG_MAX_BITS 32u

typedef enum {
    PLAIT_DP_NONE = 0,   /**< no differential privacy */
    PLAIT_DP_LOCAL = 1,  /**< the device adds N(0, (z·S)²) to its clipped update */
    PLAIT_DP_CENTRAL = 2, /**< the aggregator adds the noise; devices only clip */
    PLAIT_DP_DISTRIBUTED = 3 /**< each device adds integer N_Z(0, ddg_var_num/ddg_var_den) before masking */
} plait_dp_mode_t;

typedef enum {
    PLAIT_RETRY_NO_ROUND = 0,      /**< no round is selecting devices */
    PLAIT_RETRY_COHORT_FULL = 1,   /**< the round has enough devices */
    PLAIT_RETRY_PACE = 2,          /**< pace steering: took part recently */
    PLAIT_RETRY_BUSY = 3,          /**< the aggregator is overloaded */
    PLAIT_RETRY_SHUTTING_DOWN = 4, /**< the aggregator is stopping */
    PLAIT_RETRY_INCOMPATIBLE = 5,  /**< base model or capabilities do not fit */
    PLAIT_RETRY_ROUND_FAILED = 6,  /**< the device's round ended without a commit */
    PLAIT_RETRY_COMMIT_FAILED = 7, /**< the device's round could not be committed */
    PLAIT_RETRY_SECAGG_CLOSED = 10, /**< secure round: its key exchange is over */
    PLAIT_RETRY_NOT_SAMPLED = 12   /**< Poisson sampling did not pick the device this round */
} plait_retry_reason_t;
#define PLAIT_RETRY_REASON_MAX 7 /* contiguous 0..7; 10 and 12 are checked by name */

/** Decline.code: why a device declined a task, from a fixed list (never text). */
typedef enum {
    PLAIT_DECLINE_NOT_ENOUGH_DATA = 1,   /**< too little local data for the task's shape */
    PLAIT_DECLINE_INCOMPATIBLE_TASK = 2, /**< the task does not fit this device */
    PLAIT_DECLINE_POLICY = 3,            /**< a local policy of the device or its user */
    PLAIT_DECLINE_NOT_ELIGIBLE = 4,      /**< busy, on battery, not idle */
    PLAIT_DECLINE_INTERNAL = 5,          /**< a failure on the device */
    PLAIT_DECLINE_ALREADY_DONE = 6,      /**< this device already uploaded for this round */
    PLAIT_DECLINE_DEADLINE = 7           /**< cannot finish before the task's deadline */
} plait_decline_code_t;
#define PLAIT_DECLINE_CODE_MAX 7

/** \brief "not_enough_data", "incompatible_task", ... or "unknown". */
const char *plait_decline_code_name(int code);

typedef enum {
    PLAIT_ACK_UPDATE = 1 /**< the whole update of the round was accepted */
} plait_ack_kind_t;

/**
 * Limits applied to untrusted bytes. Security limits are configuration
 * (STYLE.md §8); both ends use the defaults unless configured otherwise.
 */
typedef struct {
    size_t max_frame;             /**< whole frame, header included (default 1 MiB + 4 KiB;
                                       at least max_chunk_bytes + PLAIT_WIRE_CHUNK_OVERHEAD,
                                       at most PLAIT_WIRE_MAX_FRAME_HARD) */
    size_t max_preauth_frame;     /**< frame limit before the Hello is accepted (default 4 KiB;
                                       64..max_frame) */
    size_t max_chunk_bytes;       /**< AdapterChunk.data bytes and UpdateChunk words·4 per chunk
                                       (default 1 MiB; >= 4) */
    uint64_t max_update_elements; /**< UpdateChunk.total_elements and Task.update_elements
                                       (default 2^26 + 1 words; 2..2^32) */
    uint64_t max_adapter_bytes;   /**< adapter blob size (default 256 MiB; >= 1) */
    size_t max_string;       /**< Error.message bytes (default 256; 1..PLAIT_WIRE_MAX_STRING) */
    uint32_t max_deadline_s; /**< Task.deadline_s (default 7 days; >= 1) */
    uint32_t max_retry_ms;   /**< ComeBackLater.retry_ms (default 24 h; >= 1) */
} plait_wire_limits_t;

/** \brief Fill lim with the defaults commented in plait_wire_limits_t. \param lim not NULL. */
void plait_wire_limits_default(plait_wire_limits_t *lim);

/** \brief Check a limits struct. \return 0 or PLAIT_EINVAL naming the bad field. */
int plait_wire_limits_validate(const plait_wire_limits_t *lim);

/* ---- messages -------------------------------------------------------------- */

typedef struct {
    char client_version[PLAIT_WIRE_MAX_CLIENT_VERSION +
                        1]; /**< 1..64 printable ASCII, NUL-terminated */
    uint8_t base_model_sha256[PLAIT_WIRE_SHA256_LEN];
    uint32_t capabilities;         /**< PLAIT_CAP_* */
    int has_last_round;            /**< 1 if last_round_completed is set */
    uint64_t last_round_completed; /**< last round acknowledged to this device */
} plait_msg_hello_t;

typedef struct {
    uint64_t round_id;        /**< > 0 */
    uint64_t adapter_version; /**< the global adapter the round starts from */
    uint64_t adapter_len;     /**< bytes, 1..max_adapter_bytes */
    uint8_t adapter_sha256[PLAIT_WIRE_SHA256_LEN];
    struct {
        uint32_t rank;          /**< 1..PLAIT_WIRE_MAX_RANK */
        float alpha;            /**< finite, > 0 */
        uint32_t targets;       /**< bit (1 << plait_proj_t); nonzero, < 1 << PLAIT_WIRE_NPROJ */
        plait_lora_mode_t mode; /**< FFA, FedIT or FedSA */
        uint64_t a_seed;        /**< seed of A (plait_lora_init_weights) */
    } lora;
    struct {
        uint32_t local_steps; /**< 1..PLAIT_WIRE_MAX_LOCAL_STEPS */
        uint32_t batch;       /**< 1..PLAIT_WIRE_MAX_BATCH */
        uint32_t seq_len;     /**< 1..PLAIT_WIRE_MAX_SEQ_LEN */
        double lr;            /**< finite, in (0, 1] */
        double prox_mu;       /**< FedProx mu, finite, in [0, 1e4]; 0 (absent on the wire): none */
    } train;
    double clip_norm;    /**< S, finite, > 0 */
    uint32_t quant_bits; /**< PLAIT_QUANT_MIN_BITS..PLAIT_QUANT_MAX_BITS */
    double quant_range;  /**< R, finite, > 0 */
    int secure_agg;      /**< 0 or 1 */
    struct {
        plait_dp_mode_t mode;
        double noise_multiplier; /**< z, finite, >= 0; > 0 for LOCAL and DISTRIBUTED, 0 for NONE */
        uint64_t ddg_var_num;    /**< DISTRIBUTED: per-device variance num/den in steps^2, */
        uint64_t ddg_var_den;    /**< 1..2^40 over 1..2^32 (ddg.h limits); else both 0 */
    } dp;
    uint32_t deadline_s;      /**< seconds from receipt, 1..max_deadline_s */
    uint64_t update_elements; /**< words to upload (span + 1 weight word), 2..max_update_elements */
    uint32_t example_cap;     /**< weight = min(examples, cap) / cap; >= 1 */
    uint32_t max_chunk_bytes; /**< UpdateChunk words·4 the aggregator takes; 0: not sent (the
                                   receiver's own limit applies), else >= 4 */
    int clip_bit;             /**< 0 or 1: append the word "update norm <= clip_norm" (adaptive clipping),
                                   encoded as a weight word; update_elements then counts span + 2 */
    int packed_update;        /**< 0 or 1: the aggregator reads packed UpdateChunks (absent: 0) */
    plait_task_kind_t kind;   /**< TRAIN or EVALUATE */
    double eval_loss_max;     /**< EVALUATE: L, finite, in (0, PLAIT_WIRE_MAX_EVAL_LOSS]; then
                                   update_elements is PLAIT_WIRE_EVAL_WORDS and clip_bit 0. TRAIN: 0 */
    int has_secagg;           /**< set exactly when secure_agg */
    struct {
        uint32_t index;       /**< this device's index, 1..n */
        uint32_t n;           /**< index slots, 2..PLAIT_WIRE_SECAGG_MAX_COHORT */
        uint32_t k;           /**< neighbours per device, 1..n-1 */
        uint32_t t;           /**< threshold, 1..k */
        uint32_t bits;        /**< m, quant_bits..PLAIT_WIRE_SECAGG_MAX_BITS */
        uint8_t graph_seed[PLAIT_WIRE_SECAGG_SEED_LEN];
    } secagg;                 /**< SecAgg+ parameters of a secure round */
} plait_msg_task_t;

typedef struct {
    uint32_t retry_ms; /**< 1..max_retry_ms */
    plait_retry_reason_t reason;
} plait_msg_come_back_later_t;

/** How an adapter transfer is encoded (docs/protocol.md, "Adapter encodings"). */
typedef enum {
    PLAIT_ADAPTER_FULL = 0,   /**< the adapter file itself */
    PLAIT_ADAPTER_DELTA = 1,  /**< a delta (plait/delta.h) from the adapter named by base_sha256 */
    PLAIT_ADAPTER_SEEDED = 2  /**< FFA-LoRA: the B span (float32 LE); A comes from the task's a_seed */
} plait_adapter_encoding_t;
#define PLAIT_ADAPTER_ENCODING_MAX 2

typedef struct {
    uint64_t round_id; /**< > 0 */
    uint64_t version;  /**< Task.adapter_version */
    uint64_t offset;   /**< first byte wanted; < max_adapter_bytes */
    uint32_t accept;   /**< bit (1 << plait_adapter_encoding_t) the device can rebuild besides FULL; 0 unless offset == 0 */
    int has_base;      /**< base_sha256 is set: only with offset 0 and the DELTA bit */
    uint8_t base_sha256[PLAIT_WIRE_SHA256_LEN]; /**< the adapter the device holds */
} plait_msg_adapter_request_t;

typedef struct {
    uint64_t version;
    uint64_t offset;
    uint64_t total_len;  /**< 1..max_adapter_bytes; offset + len <= total_len */
    const uint8_t *data; /**< len bytes; decoded: owned by the plait_msg_t */
    size_t len;          /**< 1..max_chunk_bytes */
    int has_sha256;      /**< set exactly when offset + len == total_len (the last chunk) */
    uint8_t sha256[PLAIT_WIRE_SHA256_LEN]; /**< of the adapter the transfer rebuilds */
    plait_adapter_encoding_t encoding;     /**< FULL (0) unless the device accepted another */
} plait_msg_adapter_chunk_t;

typedef struct {
    uint64_t round_id;       /**< > 0 */
    uint32_t chunk_index;    /**< 0, 1, ...; 0 exactly when offset == 0; <= offset */
    uint64_t offset;         /**< in words */
    uint64_t total_elements; /**< 1..max_update_elements; offset + n_words <= total */
    const uint32_t *words;   /**< words form: n_words words (NULL in the packed form);
                                  decoded: owned by the plait_msg_t */
    size_t n_words;          /**< values in this chunk, either form: words form 1..max_chunk_bytes / 4,
                                  packed form >= 1 (the wire's count) */
    const uint8_t *packed;   /**< packed form: packed_len bytes, n_words values of bits bits
                                  (plait_pack_bits order); NULL in the words form */
    size_t packed_len;       /**< packed form: plait_pack_bits_len(n_words, bits), 1..max_chunk_bytes */
    uint32_t bits;           /**< packed form: 8..32 (the task's quant_bits); 0 in the words form */
} plait_msg_update_chunk_t;

typedef struct {
    uint64_t round_id; /**< > 0 */
    plait_ack_kind_t kind;
    uint64_t elements; /**< words accepted */
} plait_msg_ack_t;

typedef struct {
    int code; /**< a PLAIT_E* code: negative, >= -32768 */
    char message[PLAIT_WIRE_MAX_STRING +
                 1]; /**< 0..max_string bytes, no control characters, NUL-terminated */
} plait_msg_error_t;

typedef struct {
    uint64_t nonce; /**< echoed by the pong */
} plait_msg_ping_t;

/* ---- secure aggregation (§9). Pointers of decoded messages are owned by the
 *      plait_msg_t; arrays of peers and shares are in strictly ascending index. */

typedef struct {
    uint64_t round_id; /**< > 0 */
    uint8_t mask_pk[PLAIT_WIRE_X25519_LEN];
    uint8_t enc_pk[PLAIT_WIRE_X25519_LEN];
    const uint8_t *signature; /**< sig_len bytes */
    size_t sig_len;           /**< 1..PLAIT_WIRE_SECAGG_MAX_SIG */
    const uint8_t *cert;      /**< cert_len bytes: the device's certificate (PEM) */
    size_t cert_len;          /**< 1..PLAIT_WIRE_SECAGG_MAX_CERT */
    int has_b_commit;         /**< optional (advert v2): commitment to the self-mask seed */
    uint8_t b_commit[PLAIT_WIRE_X25519_LEN];
} plait_msg_secagg_advertise_t;

typedef struct {
    uint32_t index;           /**< 1..PLAIT_WIRE_SECAGG_MAX_COHORT */
    const uint8_t *cert;      /**< cert_len bytes (PEM) */
    size_t cert_len;          /**< 1..PLAIT_WIRE_SECAGG_MAX_CERT */
    uint8_t mask_pk[PLAIT_WIRE_X25519_LEN];
    uint8_t enc_pk[PLAIT_WIRE_X25519_LEN];
    const uint8_t *signature; /**< sig_len bytes */
    size_t sig_len;           /**< 1..PLAIT_WIRE_SECAGG_MAX_SIG */
    int has_b_commit;         /**< optional (advert v2) */
    uint8_t b_commit[PLAIT_WIRE_X25519_LEN];
} plait_secagg_peer_t;

typedef struct {
    uint64_t round_id;                /**< > 0 */
    const plait_secagg_peer_t *peers; /**< the receiver's neighbours that advertised */
    size_t n_peers;                   /**< 0..PLAIT_WIRE_SECAGG_MAX_PEERS */
} plait_msg_secagg_roster_t;

typedef struct {
    uint32_t peer;       /**< the other member's index, 1..PLAIT_WIRE_SECAGG_MAX_COHORT */
    const uint8_t *data; /**< len bytes */
    size_t len;          /**< 1..PLAIT_WIRE_SECAGG_MAX_SHARE */
} plait_secagg_share_t;

/** SECAGG_SHARES (peer = recipient, 1.. shares) and SECAGG_RELAY (peer = sender, 0.. shares). */
typedef struct {
    uint64_t round_id; /**< > 0 */
    const plait_secagg_share_t *shares;
    size_t n_shares; /**< <= PLAIT_WIRE_SECAGG_MAX_PEERS */
} plait_msg_secagg_shares_t;

typedef struct {
    uint64_t round_id;       /**< > 0 */
    uint32_t chunk_index;    /**< 0 exactly when offset == 0; <= offset */
    uint64_t offset;         /**< in elements */
    uint64_t total_elements; /**< 1..max_update_elements */
    uint32_t bits;           /**< m */
    uint64_t count;          /**< elements here; a multiple of 8 unless the last chunk */
    const uint8_t *data;     /**< len = ceil(count·bits / 8) bytes, <= max_chunk_bytes */
    size_t len;
} plait_msg_secagg_masked_input_t;

typedef struct {
    uint64_t round_id;          /**< > 0 */
    const uint32_t *survivors;  /**< strictly ascending indices */
    size_t n_survivors;         /**< 1..PLAIT_WIRE_SECAGG_MAX_COHORT */
    const uint32_t *dropouts;   /**< strictly ascending indices (the wire does not check that the
                                     lists are disjoint: the device does, see agent_secagg.c) */
    size_t n_dropouts;          /**< 0..PLAIT_WIRE_SECAGG_MAX_COHORT */
} plait_msg_secagg_unmask_request_t;

typedef struct {
    uint64_t round_id; /**< > 0 */
    const plait_secagg_share_t *seed_shares; /**< peer = survivor */
    size_t n_seed;                           /**< <= PLAIT_WIRE_SECAGG_MAX_PEERS */
    const plait_secagg_share_t *key_shares;  /**< peer = dropout */
    size_t n_key;                            /**< <= PLAIT_WIRE_SECAGG_MAX_PEERS */
} plait_msg_secagg_unmask_response_t;
typedef struct {
    uint64_t round_id;         /**< > 0: the declined Task's */
    plait_decline_code_t code; /**< 1..PLAIT_DECLINE_CODE_MAX */
} plait_msg_decline_t;

/**
 * One message: a tagged union. Initialize with plait_msg_init(), release with
 * plait_msg_free(). A decoded message owns the storage behind its data/words
 * pointers (through priv): do not free it twice through copies, and do not
 * use data/words after plait_msg_free().
 */
typedef struct {
    plait_msg_type_t type;
    union {
        plait_msg_hello_t hello;
        plait_msg_task_t task;
        plait_msg_come_back_later_t come_back_later;
        plait_msg_adapter_request_t adapter_request;
        plait_msg_adapter_chunk_t adapter_chunk;
        plait_msg_update_chunk_t update_chunk;
        plait_msg_ack_t ack;
        plait_msg_error_t error;
        plait_msg_ping_t ping; /**< for PLAIT_MSG_PING and PLAIT_MSG_PONG */
        plait_msg_secagg_advertise_t secagg_advertise;
        plait_msg_secagg_roster_t secagg_roster;
        plait_msg_secagg_shares_t secagg_shares; /**< SECAGG_SHARES and SECAGG_RELAY */
        plait_msg_secagg_masked_input_t secagg_masked_input;
        plait_msg_secagg_unmask_request_t secagg_unmask_request;
        plait_msg_secagg_unmask_response_t secagg_unmask_response;
        plait_msg_decline_t decline;
    } u;
    void *priv; /**< private: the decoder's storage behind data/words; NULL when nothing is owned */
    void *priv_arr; /**< private: decoded arrays of peers / shares (SecAgg messages); or NULL */
} plait_msg_t;

/** \brief Zero m and set its type. Cannot fail. \param m not NULL. */
void plait_msg_init(plait_msg_t *m, plait_msg_type_t type);

/**
 * \brief Release what a decoded message owns (the adapter bytes or update
 *        words) and zero it. NULL, an initialized-only message and a second
 *        call are safe.
 */
void plait_msg_free(plait_msg_t *m);

/** \brief "hello", "task", ... or "unknown". */
const char *plait_msg_type_name(int type);

/**
 * \brief Check a message against the protocol's rules and the limits, as the
 *        decoder does after unpacking (the encoder calls it too, so nothing
 *        is sent that a peer would refuse).
 * \param lim NULL for the defaults.
 * \return 0; PLAIT_EPROTO naming the field in plait_errmsg(); PLAIT_EINVAL
 *         for NULL m, an unknown type or bad limits.
 */
int plait_msg_validate(const plait_msg_t *m, const plait_wire_limits_t *lim);

/* ---- frames ----------------------------------------------------------------- */

/** plait_frame_decode() flag: the peer has not yet sent an accepted Hello. */
#define PLAIT_FRAME_PREAUTH 1u

/** A frame found in a buffer; payload points into that buffer (borrowed). */
typedef struct {
    uint8_t version;
    plait_msg_type_t type;
    const uint8_t *payload;
    size_t payload_len;
    size_t frame_len; /**< whole frame, header included */
} plait_frame_t;

/**
 * \brief Find the first frame in buf[0, len) (incremental: call again with
 *        more bytes after PLAIT_EAGAIN). Reads nothing past buf + len and
 *        allocates nothing.
 *
 * Checks, each as soon as the bytes it needs are there: the declared length
 * (at least 2; the whole frame at most lim->max_frame, or
 * lim->max_preauth_frame with PLAIT_FRAME_PREAUTH), the version byte (==
 * PLAIT_WIRE_VERSION) and the type byte (a defined plait_msg_type_t; only
 * PLAIT_MSG_HELLO with PLAIT_FRAME_PREAUTH).
 *
 * \param buf      bytes received so far; may be NULL when len is 0.
 * \param lim      NULL for the defaults.
 * \param flags    0 or PLAIT_FRAME_PREAUTH.
 * \param frame    OUT, not NULL: on success the frame; on PLAIT_EAGAIN
 *                 frame->frame_len is the whole frame's size once the length
 *                 field is complete (so the caller can reserve it), else 0.
 * \param consumed OUT, not NULL: bytes of the frame on success, 0 otherwise.
 * \return 0; PLAIT_EAGAIN (a valid prefix: read more); PLAIT_ETOOBIG (the
 *         declared length exceeds the limit: decided from the first 4 bytes);
 *         PLAIT_EPROTO (bad length, version or type: drop the connection);
 *         PLAIT_EINVAL (NULL outputs, bad limits or flags).
 */
int plait_frame_decode(const uint8_t *buf, size_t len, const plait_wire_limits_t *lim,
                       unsigned flags, plait_frame_t *frame /* OUT */,
                       size_t *consumed /* OUT */) PLAIT_WUR;

/**
 * \brief Unpack and validate the message of a frame.
 *
 * The payload is unpacked with an allocator whose total is capped at a small
 * multiple of the payload size (itself capped by lim->max_frame), then every
 * field is checked: presence, ranges, enum values, SHA-256 lengths, chunk
 * bounds against totals and limits.
 *
 * \param frame from plait_frame_decode() (or built by hand: version, type,
 *              payload, payload_len are read).
 * \param lim   NULL for the defaults.
 * \param msg   OUT, not NULL: on success a message to release with
 *              plait_msg_free() (its data/words point into storage it owns,
 *              not into the frame); on failure zeroed, nothing to free.
 * \return 0; PLAIT_EPROTO (undecodable payload, wrong version, a message
 *         other than the frame's type, or a field out of range: the field is
 *         named in plait_errmsg()); PLAIT_ETOOBIG (payload above the frame
 *         limit, or unpacking would exceed the allocation cap); PLAIT_ENOMEM;
 *         PLAIT_EINVAL (NULL arguments, bad limits).
 */
int plait_wire_decode(const plait_frame_t *frame, const plait_wire_limits_t *lim,
                      plait_msg_t *msg /* OUT */) PLAIT_WUR;

/**
 * \brief plait_frame_decode() then plait_wire_decode(): the first message in buf.
 * \param consumed OUT: the frame's size on success, 0 otherwise.
 * \return as the two functions; PLAIT_EAGAIN means nothing was consumed.
 */
int plait_wire_parse(const uint8_t *buf, size_t len, const plait_wire_limits_t *lim, unsigned flags,
                     plait_msg_t *msg /* OUT */, size_t *consumed /* OUT */) PLAIT_WUR;

/**
 * \brief Size of m's frame, after validating it.
 * \return 0; PLAIT_EPROTO (m fails plait_msg_validate), PLAIT_ETOOBIG (the
 *         frame would exceed lim->max_frame), PLAIT_EINVAL.
 */
int plait_wire_encoded_size(const plait_msg_t *m, const plait_wire_limits_t *lim,
                            size_t *len /* OUT */) PLAIT_WUR;

/**
 * \brief Validate m and write its frame into out[0, cap).
 * \param m   borrowed; its data/words pointers are read only.
 * \param lim NULL for the defaults.
 * \param len OUT: bytes written.
 * \return 0; PLAIT_EPROTO (invalid message), PLAIT_ETOOBIG (frame above
 *         lim->max_frame, or cap too small: nothing written beyond cap),
 *         PLAIT_EINVAL (NULL arguments, bad limits).
 */
int plait_wire_encode(const plait_msg_t *m, const plait_wire_limits_t *lim, uint8_t *out,
                      size_t cap, size_t *len /* OUT */) PLAIT_WUR;

/**
 * \brief plait_wire_encode() into a new buffer.
 * \param out OUT: returns owned, free with free(); NULL on failure.
 * \return as plait_wire_encode(), or PLAIT_ENOMEM.
 */
int plait_wire_encode_alloc(const plait_msg_t *m, const plait_wire_limits_t *lim,
                            uint8_t **out /* OUT */, size_t *len /* OUT */) PLAIT_WUR;

/* ---- chunked transfers ------------------------------------------------------ */

/*
 * The sequencing rules of §6 of docs/protocol.md as small pure state
 * machines, so that the aggregator and the agent split and reassemble
 * uploads and downloads the same way. Worked example (agent, upload):
 *
 *     plait_wire_xfer_t x;
 *     plait_wire_xfer_init(&x, task.round_id, task.update_elements, 0);
 *     plait_msg_t m;
 *     while ((rc = plait_wire_update_tx_next(&x, &lim, words, &m)) == 1)
 *         send_msg(&m);                       // m borrows words; nothing to free
 *
 * and the aggregator, for each UpdateChunk received on that connection:
 *
 *     rc = plait_wire_update_rx_add(&x, &msg.u.update_chunk, dst);
 *     // 1: complete, 0: more to come, < 0: send Error(rc) and drop the upload
 */

/**
 * Words in the first chunk of an upload (at most): a lead chunk that travels
 * in a record of its own, ahead of the full-size ones. An aggregator whose
 * update buffers are all taken holds the upload back at that chunk's header,
 * so what it keeps for a waiting device is this small record, not the first
 * 16 KiB of the update (docs/protocol.md §6). A multiple of 8: packed chunks
 * end on a byte at every width.
 */
#define PLAIT_WIRE_UPDATE_LEAD_WORDS 64

/** Progress of one chunked transfer (a plain value; no resources). */
typedef struct {
    uint64_t id;       /**< round id (update) or adapter version (adapter) */
    uint64_t total;    /**< words (update) or bytes (adapter) */
    uint64_t next;     /**< offset of the next chunk */
    uint32_t index;    /**< index of the next update chunk */
} plait_wire_xfer_t;

/**
 * \brief Start a transfer of total units from offset (0 for updates; the
 *        resume offset of an AdapterRequest for adapters). Cannot fail.
 */
void plait_wire_xfer_init(plait_wire_xfer_t *x, uint64_t id, uint64_t total, uint64_t offset);

/**
 * \brief Fill out with the next UpdateChunk: up to lim->max_chunk_bytes / 4
 *        words of words[0, x->total) from x->next (chunk 0: at most
 *        PLAIT_WIRE_UPDATE_LEAD_WORDS). Advances x.
 * \param words x->total words, borrowed by out until it is encoded.
 * \return 1 (out filled), 0 (the transfer is complete; out untouched),
 *         PLAIT_EINVAL (NULL arguments, bad limits, total
 *         outside 1..lim->max_update_elements, offset past total).
 */
int plait_wire_update_tx_next(plait_wire_xfer_t *x, const plait_wire_limits_t *lim,
                              const uint32_t *words, plait_msg_t *out /* OUT */) PLAIT_WUR;

/**
 * \brief As plait_wire_update_tx_next(), in the packed form (the task said
 *        packed_update): up to lim->max_chunk_bytes * 8 / bits values from
 *        x->next, packed at bits into buf (plait_pack_bits), so each chunk's
 *        bytes stay within lim->max_chunk_bytes.
 * \param bits the task's quant_bits, 8..32; every word must be below 2^bits.
 * \param buf cap bytes (lim->max_chunk_bytes suffices), borrowed by out until it is encoded.
 * \return 1 (out filled), 0 (complete), PLAIT_EINVAL (as tx_next, bad bits, a word
 *         that does not fit in bits), PLAIT_ETOOBIG (cap too small).
 */
int plait_wire_update_tx_next_packed(plait_wire_xfer_t *x, const plait_wire_limits_t *lim,
                                     const uint32_t *words, unsigned bits, uint8_t *buf, size_t cap,
                                     plait_msg_t *out /* OUT */) PLAIT_WUR;

/**
 * \brief Take the next UpdateChunk of an upload (after plait_wire_decode
 *        validated it) and copy its words into dst at its offset (a packed
 *        chunk is unpacked at its bits; the caller checks those are the task's).
 * \param dst x->total words.
 * \return 1 (the upload is complete), 0 (more chunks expected);
 *         PLAIT_ESTALE (another round), PLAIT_EMISMATCH (total_elements is not
 *         the task's, or the chunk is not the next one: offset or index out
 *         of order, duplicate, or after completion). x is unchanged on error.
 */
int plait_wire_update_rx_add(plait_wire_xfer_t *x, const plait_msg_update_chunk_t *c,
                             uint32_t *dst) PLAIT_WUR;

/**
 * \brief Fill out with the next AdapterChunk: up to lim->max_chunk_bytes of
 *        blob[0, x->total) from x->next; the last chunk carries sha256.
 * \param blob x->total bytes, borrowed by out until it is encoded.
 * \return 1 (out filled), 0 (complete), PLAIT_EINVAL.
 */
int plait_wire_adapter_tx_next(plait_wire_xfer_t *x, const plait_wire_limits_t *lim,
                               const uint8_t *blob, const uint8_t sha256[PLAIT_WIRE_SHA256_LEN],
                               plait_msg_t *out /* OUT */) PLAIT_WUR;

/**
 * \brief Take the next AdapterChunk of a download and copy its bytes into dst
 *        at its offset. The last chunk's sha256 must equal expected_sha256
 *        (the Task's); the caller still hashes what it received.
 * \param dst x->total bytes.
 * \return 1 (complete), 0 (more expected); PLAIT_EMISMATCH (another version,
 *         another total, not the next offset, or a hash other than the
 *         task's). x is unchanged on error.
 */
int plait_wire_adapter_rx_add(plait_wire_xfer_t *x, const plait_msg_adapter_chunk_t *c,
                              const uint8_t expected_sha256[PLAIT_WIRE_SHA256_LEN],
                              uint8_t *dst) PLAIT_WUR;

/* ---- masked (secure-aggregation) uploads ----------------------------------- */

/*
 * A masked update of `total` elements of `bits` bits travels packed: element
 * i at bit i·bits of the whole vector, least significant bit first, in
 * ceil(total·bits / 8) bytes. Chunks hold a multiple of 8 elements (the last
 * excepted), so each chunk is a byte-aligned slice of the packed vector.
 */

/** \brief Bytes of a packed vector: ceil(total·bits / 8). */
uint64_t plait_wire_packed_len(uint64_t total, unsigned bits);

/**
 * \brief Fill out with the next SecAggMaskedInput: up to floor(max_chunk_bytes
 *        / bits)·8 elements of the packed vector from x->next. Advances x.
 * \param packed plait_wire_packed_len(x->total, bits) bytes, borrowed by out.
 * \return 1 (out filled), 0 (complete), PLAIT_EINVAL (NULL, bad limits, bits
 *         outside 8..32 or above max_chunk_bytes, total outside
 *         1..max_update_elements).
 */
int plait_wire_masked_tx_next(plait_wire_xfer_t *x, const plait_wire_limits_t *lim,
                              const uint8_t *packed, unsigned bits,
                              plait_msg_t *out /* OUT */) PLAIT_WUR;

/**
 * \brief Take the next SecAggMaskedInput (validated by plait_wire_decode) and
 *        copy its bytes into dst at its place.
 * \param dst plait_wire_packed_len(x->total, bits) bytes.
 * \return 1 (complete), 0 (more expected); PLAIT_ESTALE (another round),
 *         PLAIT_EMISMATCH (another total or bits, not the next chunk, or after
 *         completion). x is unchanged on error.
 */
int plait_wire_masked_rx_add(plait_wire_xfer_t *x, const plait_msg_secagg_masked_input_t *c,
                             unsigned bits, uint8_t *dst) PLAIT_WUR;

#endif /* PLAIT_WIRE_H */
