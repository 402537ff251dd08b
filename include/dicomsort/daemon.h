/*
 * daemon.h - the daemon loop: event -> ready file -> pipeline -> audit.
 *
 * Owns: the one poll() loop and all mutable daemon state (counters, the
 * current correlation table, the stop flag). Four slots: a signalfd (TERM,
 * INT, HUP), the inotify descriptor (watch.h), a timerfd for debounce
 * deadlines, retries, the watchdog and rescans, and the worker pool's
 * eventfd. Nothing runs in signal context; files are processed on worker
 * threads (pipeline.h), so the loop never blocks on file I/O.
 */
#ifndef DICOMSORT_DAEMON_H
#define DICOMSORT_DAEMON_H

#include "dicomsort/config.h"

/** Everything a start would check (templates, table, secret, options)
 *  without touching the folders. -1 ERROR_SETUP. */
int daemon_check_config(const struct config *cfg, struct error *err);

struct pipeline;
struct deid_secret;

/** The pipeline a start would build from cfg, in dry-run mode (writes
 *  nothing; --check-config --sample). Free both, also after -1. */
int daemon_dry_pipeline(const struct config *cfg, struct pipeline **pipeline,
			struct deid_secret **secret, struct error *err);

/** Run until SIGTERM/SIGINT. Returns the process exit status. */
int daemon_run(const struct config *cfg);

#endif
