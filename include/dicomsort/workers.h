/*
 * workers.h - a fixed pool of threads running jobs for the daemon loop.
 *
 * Owns: the threads, the queue of submitted jobs and the queue of finished
 * ones. The loop submits, and learns of finished jobs by polling
 * workers_fd() (an eventfd) and calling workers_take_done(). Jobs are opaque
 * to the pool: the run function does the work on a worker thread.
 * The loop thread alone calls submit/take/stop.
 */
#ifndef DICOMSORT_WORKERS_H
#define DICOMSORT_WORKERS_H

#include <stddef.h>
#include <stdint.h>

#include "dicomsort/error.h"

struct workers;

/** Runs on a worker thread; job belongs to it until it returns. */
typedef void (*workers_run_fn)(void *ctx, void *job);

int workers_start(struct workers **out, size_t threads, workers_run_fn run,
		  void *ctx, struct error *err);

/** Queue a job. */
void workers_submit(struct workers *pool, void *job);

/** Readable when finished jobs wait. */
int workers_fd(const struct workers *pool);

/** Move up to max finished jobs into jobs; returns how many. */
size_t workers_take_done(struct workers *pool, void **jobs, size_t max);

/** Jobs submitted and not yet taken back (queued + running + done). */
size_t workers_outstanding(const struct workers *pool);
/** Jobs submitted but not started. */
size_t workers_queued(const struct workers *pool);

/**
 * Stop: jobs not started stay queued (workers_free() drops them; the
 * caller still owns the job memory it submitted), running ones are awaited
 * until deadline_ms (CLOCK_MONOTONIC ms). Returns 0 when all threads ended,
 * -1 on timeout (the threads are left running; the process is about to
 * exit, and every step of a running job is crash-safe).
 */
int workers_stop(struct workers *pool, int64_t deadline_ms);

/** Like workers_stop(), but every job queued runs first (work that must
 *  not be left for the next start). */
int workers_finish(struct workers *pool, int64_t deadline_ms);

/** Free the pool after a successful workers_stop(); free_job (may be
 *  NULL) is called for every job still queued or not taken back. */
void workers_free(struct workers *pool, void (*free_job)(void *job));

#endif
