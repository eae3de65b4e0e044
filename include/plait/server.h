/*
 * server.h: the aggregator service (`plait-aggregator serve`).
 *
 * A server owns one libuv loop on the thread that calls plait_server_run().
 * On that thread live the listening sockets, every connection (a TCP handle
 * plus a TLS session over memory buffers, lib/tls.c), and the round core
 * (round.h). Aggregation, the server optimizer step, serialization of the new
 * adapter and the store commit run on a libuv worker (uv_queue_work); their
 * result is applied back on the loop thread. No thread per connection.
 *
 *     plait_aggcfg_t cfg;  ... load + validate ...
 *     plait_server_t *s;
 *     if ((rc = plait_server_create(&s, "deploy", &cfg)) != 0) die(plait_errmsg());
 *     rc = plait_server_run(s);     // until SIGTERM/SIGINT or plait_server_stop()
 *     plait_server_destroy(s);
 *
 * Deployment directory: ca.crt, server.crt, server.key, revoked.txt (pki.h),
 * plait.db (aggstore.h). uv.h stays inside aggregator/server*.c (STYLE.md §2).
 *
 * Thread-safety: plait_server_stop() may be called from any thread and from a
 * signal handler's thread; everything else from the thread that created the
 * server.
 */
#ifndef PLAIT_SERVER_H
#define PLAIT_SERVER_H

#include "plait/aggcfg.h"
#include "plait/plait.h"

typedef struct plait_server_s plait_server_t;

/**
 * \brief Set up a server: read the deployment's keys and certificates, open
 *        its database (abandoning rounds a crash left open), load the base
 *        model header and the newest global adapter, bind the sockets.
 * \param dir  deployment directory (borrowed).
 * \param cfg  validated configuration (copied).
 * \param out  OUT: owned; free with plait_server_destroy().
 * \return 0; PLAIT_EINVAL (config); PLAIT_ENOENT (a deployment file is
 *         missing); PLAIT_EIO (bind failed, e.g. port in use: detail in
 *         plait_errmsg()); PLAIT_EPROTO (unreadable key, certificate or
 *         database); PLAIT_EMISMATCH (the stored adapter does not fit the
 *         configured LoRA shape); PLAIT_ENOMEM.
 */
int plait_server_create(plait_server_t **out /* OUT */, const char *dir, const plait_aggcfg_t *cfg) PLAIT_WUR;

/** \brief The bound federation port (useful with port = 0). */
int plait_server_port(const plait_server_t *s);
/** \brief The bound metrics port, or 0 when metrics are disabled. */
int plait_server_metrics_port(const plait_server_t *s);

/**
 * \brief Run the loop until stopped (SIGTERM, SIGINT or plait_server_stop()).
 *        Stopping closes the listeners, abandons the open round (the global
 *        adapter stays at its last committed version), waits for a running
 *        commit to finish, closes every connection and handle.
 * \return 0 after a clean shutdown; PLAIT_EINTERNAL if the loop could not be
 *         closed (a handle leaked: a bug).
 */
int plait_server_run(plait_server_t *s) PLAIT_WUR;

/** \brief Ask a running server to shut down gracefully. Any thread. */
void plait_server_stop(plait_server_t *s);

/** \brief Free a server that is not running. NULL is safe. */
void plait_server_destroy(plait_server_t *s);

#endif /* PLAIT_SERVER_H */
