/*
 * metrics.h - what the daemon has done, for Prometheus and for `status`.
 *
 * Owns: the counters (stored, duplicates, quarantined, held, retries,
 * bytes), the arrival-to-stored latency histogram, the time of the last
 * success, the last errors, and the two files they are published in:
 *   - a Prometheus text-format file (metrics_file), read by node
 *     exporter's textfile collector, so nothing new listens on the
 *     network; mode 0644, since node exporter runs as another user, and
 *     so it holds numbers only, never a file name or an error text;
 *   - a status file (status_file, default /run/dicomsortd/STEM.status in
 *     the unit's RuntimeDirectory=; mode 0640: its errors may name files)
 *     with the same numbers, the daemon's pid and the last errors, which
 *     `dicomsortd status` reads.
 * Both are replaced atomically: a temp file in the same folder, then
 * rename(2), so a reader sees the old file or the new one, never half.
 * Neither is fsynced: they are rewritten every few seconds, and a sync on
 * a busy disk would stall the daemon's loop.
 *
 * A struct metrics is plain data owned by the daemon loop: the loop alone
 * updates it (worker threads' results reach it through the loop), so it
 * needs no lock and no atomics.
 */
#ifndef DICOMSORT_METRICS_H
#define DICOMSORT_METRICS_H

#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <time.h>

#include "dicomsort/error.h"

/* Upper bounds (seconds) of the latency histogram's buckets; +Inf last. */
#define METRICS_LATENCY_BUCKETS 12
#define METRICS_ERRORS 8
#define METRICS_ERROR_MAX 512
/* Forwarding's destinations (issue 15): one entry each, the rest unseen. */
#define METRICS_DESTINATIONS_MAX 16

struct metrics_error {
	time_t first, last;	/* when it was seen first and last */
	unsigned long count;	/* times in a row */
	char text[METRICS_ERROR_MAX];
};

/* A forwarding destination's queue (filled by the forwarder's owner). */
struct metrics_destination {
	char name[72];		/* label value: a configured name (<= 64) */
	unsigned long queued;
	double oldest_age_s;	/* 0 when empty */
};

struct metrics {
	char instance[64];	/* label: the config's stem */
	pid_t pid;
	time_t started;
	unsigned long stored, duplicates, quarantined, held, retries;
	unsigned long long bytes;	/* of stored files' sources */
	unsigned long latency_count[METRICS_LATENCY_BUCKETS + 1];
	double latency_sum;
	time_t last_success;		/* 0: none yet */
	/* Sampled by the loop just before each write. */
	unsigned long queued;
	double oldest_queued_s;
	/* Newest first. */
	struct metrics_error errors[METRICS_ERRORS];
	size_t nerrors;
	struct metrics_destination destinations[METRICS_DESTINATIONS_MAX];
	size_t ndestinations;
};

extern const double metrics_latency_bounds[METRICS_LATENCY_BUCKETS];

void metrics_init(struct metrics *m, const char *instance, time_t now);

/** A file was stored: its size and the seconds since it arrived. */
void metrics_stored(struct metrics *m, unsigned long long bytes,
		    double latency_s, time_t now);

/** An error, for `status`; the same text as the newest counts up. */
void metrics_error(struct metrics *m, const char *text, time_t now);

/** The Prometheus text exposition of m, as of now. */
int metrics_format_prometheus(const struct metrics *m, time_t now, FILE *f);

/** The state file's text: "key value" lines, errors as
 *  "error FIRST LAST COUNT TEXT" with TEXT escaped as in quarantine
 *  sidecars (\n, \\, \xHH); each destination as
 *  "destination QUEUED OLDEST_S NAME", NAME escaped the same way. */
int metrics_format_state(const struct metrics *m, time_t now, FILE *f);

/** Read a state file back (for `status`); -1 if absent or unreadable. */
int metrics_read_state(const char *path, struct metrics *m, time_t *updated,
		       struct error *err);

/**
 * Replace path with what format writes: a temp file ".NAME.XXXXXX" in the
 * same folder (never *.prom, which the collector would read half made),
 * mode, then rename. -1 with err filled; nothing is left behind.
 */
int metrics_write_file(const char *path, mode_t mode,
		       int (*format)(const struct metrics *, time_t, FILE *),
		       const struct metrics *m, time_t now, struct error *err);

#endif
