/*
 * forward.h - the forwarder: every stored file on to each destination.
 *
 * Owns: the in-memory queue of each destination over its outbox
 * (outbox.h), the worker threads that send it (delivery.h's transports:
 * `associations` threads per destination, `files_per_association` files
 * per association or request), backoff with jitter on DELIVERY_RETRY, and
 * the `forwarded`, `forward-retry` and `forward-rejected` records.
 * Destinations are independent: each has its own threads, queue and
 * backoff, so one that is down never holds another up. Nothing here runs
 * on the daemon's event loop: forward_queue() only links and fsyncs (on
 * the pipeline's worker thread, where the output became durable), and the
 * network is only touched by the forwarder's own threads.
 *
 * Delivery is at-least-once: an entry leaves the outbox only when the peer
 * confirmed it; after a kill, everything in the outbox is sent again.
 */
#ifndef DICOMSORT_FORWARD_H
#define DICOMSORT_FORWARD_H

#include <stddef.h>
#include <stdint.h>

#include "dicomsort/config.h"
#include "dicomsort/error.h"

struct forward;

/* One destination's figures, for STATUS and --json. */
struct forward_stat {
	const char *name;
	size_t queued;		/* entries in its outbox (incl. in flight) */
	long oldest_s;		/* age of the oldest entry; 0 when empty */
	unsigned long forwarded, rejected, retries;
	int backing_off;	/* 1: the last attempt failed, waiting */
};

/**
 * Open the outbox of each destination of cfg (only the one named only,
 * unless NULL), queue what it holds (a restart resumes), and start the
 * threads. *out is NULL (and 0 returned) when there is no destination.
 * cfg must outlive the forwarder. -1 with err.
 */
int forward_start(struct forward **out, const struct config *cfg,
		  const char *only, struct error *err);

/** Queue output file rel (relative to cfg->output) for every destination:
 *  durable (linked and fsynced) when it returns 0. Thread-safe. */
int forward_queue(struct forward *f, const char *rel, struct error *err);

/** As forward_queue(), for an output found at start whose entry a kill
 *  may have left unmade: nothing is queued twice. */
void forward_recovered(void *f, const char *rel);

/** Total entries still queued over all destinations. */
size_t forward_queued(struct forward *f);

/** Fill up to max stats; returns the number of destinations. */
size_t forward_stats(struct forward *f, struct forward_stat *out, size_t max);

/** "forward pacs 3 queued (oldest 12 s), cloud 0 queued" into buf. */
void forward_status(struct forward *f, char *buf, size_t len);

/** Retention (quarantine.max_age_days): remove what each destination's
 *  peer refused more than days ago from its rejected/, which holds PHI
 *  like the quarantine does; a `purged` record each. */
void forward_purge_rejected(struct forward *f, long days);

/** Stop the threads: each finishes its batch. -1 if some were still busy
 *  at deadline_ms (watch_now_ms() clock): then do not free; the outbox
 *  keeps what they were sending. */
int forward_stop(struct forward *f, int64_t deadline_ms);

/** After forward_stop() returned 0 (or if it never started). */
void forward_free(struct forward *f);

/** --check-config --probe: C-ECHO or HTTP OPTIONS to dest. 0 or -1. */
int forward_probe(const struct config_forward *dest, struct error *err);

#endif
