/*
 * watch.h - noticing finished files in the input tree (inotify + debounce).
 *
 * Owns: the inotify watches (through libinotifytools, whose state is global
 * and single-threaded: call this module from the daemon loop's thread only)
 * and the table of pending files with their debounce deadlines.
 *
 * A file becomes pending when it is closed after writing (IN_CLOSE_WRITE),
 * moved in (IN_MOVED_TO), or found by a scan. It is ready once it has been
 * quiet for settle_ms: any later write (IN_MODIFY) makes it wait for the
 * next close, a change of attributes pushes the deadline back; readers
 * (open, read, close without writing) never delay it. Names matching the
 * ignore globs are never pending (a later rename to a real name is an
 * IN_MOVED_TO and counts). Folders created later are watched and scanned
 * (files created before their watch existed are not missed). On queue
 * overflow, or when a watched folder moves away, everything is re-watched
 * and rescanned.
 *
 * A file handed out by watch_take_ready() is "in flight" until the caller
 * says watch_done() or watch_retry(); scans and events do not hand it out
 * twice meanwhile, but a write during flight is remembered and the file
 * becomes pending again when done.
 *
 * Times are CLOCK_MONOTONIC milliseconds (watch_now_ms()).
 */
#ifndef DICOMSORT_WATCH_H
#define DICOMSORT_WATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dicomsort/error.h"

struct watch;

/* What a walk could not cover; see watch_options.report. */
enum watch_problem {
	WATCH_TOO_DEEP,		/* a folder more than max_depth below root */
	WATCH_TOO_LONG,		/* a folder whose path exceeds PATH_MAX */
};

typedef void watch_report_fn(void *ctx, enum watch_problem what,
			     const char *dir, unsigned depth);

struct watch_options {
	const char *root;		/* the input folder */
	const char *const *ignore;	/* NULL-terminated globs, may be NULL */
	long settle_ms;
	/* Folders more than max_depth levels below root are neither watched
	 * nor scanned: report() is told once per walk that meets one. 0 means
	 * no bound but PATH_MAX. */
	long max_depth;
	watch_report_fn *report;	/* may be NULL */
	void *report_ctx;
	/* deferred: watch_new() watches root only, and every walk of the
	 * tree (the backlog, a new folder's content, a rebuild) advances only
	 * in watch_scan_step() slices, so that the caller's loop stays
	 * responsive. Otherwise each call completes its walk before it
	 * returns. */
	bool deferred;
	/* gather_ms > 0: after each read of the inotify queue, leave it
	 * alone this long so that the next read takes many events (see
	 * watch_poll_fd()); no file is handed out before every event up to
	 * its deadline has been read. An event waits up to gather_ms longer.
	 * 0: read whenever readable. */
	long gather_ms;
	long test_entry_delay_ms;	/* test only: a sleep per entry walked */
};

int64_t watch_now_ms(void);

/** Whether the file rel (relative to the input root) is ignored: its name
 *  or a folder's on the way matches one of globs (NULL-terminated, may be
 *  NULL), or is one of our own temp names. */
bool watch_ignored(const char *const *globs, const char *rel);

/** Initialize inotify and watch root (and, unless deferred, every folder
 *  below it, one at a time: no descriptor is held per level). Does not
 *  scan: call watch_scan() or watch_scan_begin() for the backlog.
 *  -1 ERROR_SETUP. */
int watch_new(struct watch **out, const struct watch_options *opts,
	      struct error *err);

void watch_free(struct watch *watch);

/** The descriptor to poll for readability. It changes after a re-watch
 *  (overflow), so ask again after each watch_handle_events(). */
int watch_fd(const struct watch *watch);

/*
 * With gather_ms, for a poll loop: poll watch_poll_fd() (-1 while events
 * gather: leave it out) with a timeout no longer than
 * watch_poll_timeout_ms() (-1: none needed; 0: look at the queue now),
 * taking the time just before poll(); then tell watch_polled() whether the
 * descriptor was readable (when it was polled at all), and call
 * watch_handle_events() if it was. Without gather_ms, watch_poll_fd() is
 * watch_fd() and the timeout is -1.
 */
int watch_poll_fd(const struct watch *watch, int64_t now);
int watch_poll_timeout_ms(const struct watch *watch, int64_t now);
void watch_polled(struct watch *watch, int64_t before, bool readable);

/** Drain and handle all queued inotify events. Returns the number of files
 *  that became pending, or -1 when the watches had to be rebuilt and that
 *  failed (err filled; the caller retries later with watch_rewatch()). */
int watch_handle_events(struct watch *watch, struct error *err);

/** Make every regular, non-ignored file below root pending (those not
 *  pending or in flight yet). Returns how many were added, or -1. */
long watch_scan(struct watch *watch, struct error *err);

/** Drop all watches, watch root again, then scan. Returns as watch_scan. */
long watch_rewatch(struct watch *watch, struct error *err);

/*
 * The same in slices, for an event loop: watch_scan_begin() starts a full
 * walk (after the one under way, if any); watch_rebuild() drops all watches,
 * watches root again and starts a full walk at once (-1 if root cannot be
 * watched: the walk still runs). Each folder is watched when the walk gets
 * to it, before it is listed. watch_scan_step() walks for a few
 * milliseconds at most and returns the files it added, or -1.
 */
void watch_scan_begin(struct watch *watch);
int watch_rebuild(struct watch *watch, struct error *err);
long watch_scan_step(struct watch *watch, struct error *err);
bool watch_scanning(const struct watch *watch);

/** Folders the last full walk (and new folders since) could not watch:
 *  beyond the inotify watch limit (*errnum ENOSPC) or for another reason
 *  (*errnum). Their files are found only by scans. */
size_t watch_unwatched(const struct watch *watch, int *errnum);

/** Milliseconds until the next pending file is ready: 0 if one is ready
 *  now, -1 if nothing is pending. */
int64_t watch_next_ready_ms(const struct watch *watch);

/**
 * Hand out up to max ready files: paths[i] gets a malloc'd absolute path
 * (caller frees). They are in flight from now on. Returns the count.
 */
size_t watch_take_ready(struct watch *watch, char **paths, size_t max);

/** The in-flight file path is finished (stored, quarantined, vanished). */
void watch_done(struct watch *watch, const char *path);

/** The in-flight file path should be tried again in delay_ms. */
void watch_retry(struct watch *watch, const char *path, long delay_ms);

/** How many times path was given back with watch_retry() since it last
 *  became pending afresh or got new content (a write, a close after
 *  writing, a move in: a file still arriving does not use up its tries);
 *  0 for a new file, or one the watch does not know. The daemon's attempt
 *  number is this plus one. */
unsigned watch_attempts(const struct watch *watch, const char *path);

/** Files pending (not yet ready or waiting for a retry) and in flight. */
size_t watch_pending_count(const struct watch *watch);
size_t watch_in_flight_count(const struct watch *watch);

/** Milliseconds since the oldest file pending or in flight became known
 *  (it stays known across retries), or -1 if there is none. O(n). */
int64_t watch_oldest_ms(const struct watch *watch);

/** Remove empty folders below root (never root) whose mtime is at least
 *  min_age_s old and that hold no pending file. Returns how many. */
size_t watch_remove_empty_dirs(struct watch *watch, long min_age_s);

#endif
