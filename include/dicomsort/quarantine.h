/*
 * quarantine.h - setting input aside: bad input with its reason
 * (quarantine), and input that must wait for the correlation table (hold).
 *
 * Owns: moving a rejected source into the quarantine folder (same relative
 * path as in the input, numbered like the sorted tree on a clash) and
 * writing the sidecar "<name>.reason" that says what failed, when, after how
 * many attempts and which rule, and the source's size, SHA-256, owner and
 * mtime. Every sidecar value has its control bytes and backslashes
 * escaped (\n, \r, \t, \\, \xHH), so a name cannot forge a line; a name
 * too long for "<name>_N.reason" is cut and given a hash of the whole
 * name. The original bytes are kept as they were:
 * a rename on the same file system; across file systems a copy that is
 * fsynced before the source is removed. A symlink is moved as the link
 * itself, never followed.
 * Thread-safe: each call works on its own descriptors.
 */
#ifndef DICOMSORT_QUARANTINE_H
#define DICOMSORT_QUARANTINE_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>

#include "dicomsort/error.h"

struct quarantine_entry {
	const char *source_path;	/* where the file is now */
	const char *source_rel;		/* relative to the input root */
	const char *reason;		/* what failed */
	const char *rule;		/* which rule sent it here */
	unsigned attempts;
	const struct stat *st;		/* NULL, or the source as read: its
					   size, owner and mtime go into the
					   sidecar */
	const char *sha256;		/* NULL, or of the source bytes */
	const char *owner;		/* NULL, or "uid(name)" */
};

/**
 * Move the file into the folder open as quarantine_fd and write its
 * sidecar; dest gets the path relative to the quarantine folder.
 */
int quarantine_file(int quarantine_fd, const struct quarantine_entry *entry,
		    char *dest, size_t destlen, struct error *err);

/**
 * Park the file in the hold folder (open as hold_fd) under its relative
 * path, numbered on a clash; dest gets where it went. It comes back with
 * hold_release().
 */
int hold_file(int hold_fd, const char *source_path, const char *source_rel,
	      char *dest, size_t destlen, struct error *err);

/* Asked before each file a release moves: true cuts it short (a SIGTERM
 * must not wait for thousands of moves). */
typedef bool hold_stop_fn(void *ctx);

/**
 * Move every file of the hold folder back into the input folder (same
 * relative path, numbered on a clash), where the watch picks it up again.
 * Returns how many files moved, or -1 (some may have moved). When stop
 * (may be NULL) says so, it returns early: the rest stays held.
 */
long hold_release(const char *hold_dir, const char *input_dir,
		  hold_stop_fn *stop, void *stop_ctx, struct error *err);

/**
 * At start, before files are taken: temp files a crash left in the
 * quarantine or hold folder dir are removed, and claimed files (see
 * fsutil_move()) get their names back. Returns how many temps went.
 */
long quarantine_sweep(const char *dir, struct error *err);

/*
 * The admin's side (dicomsortd quarantine list/requeue, and the daemon's
 * purge under quarantine.max_age_days): every quarantined file with what
 * its sidecar says. Values are unescaped; a missing sidecar leaves them
 * empty and the time is the file's ctime (when it was moved in).
 */
struct quarantine_item {
	const char *path;		/* as walked: below the folder */
	const char *rel;		/* relative to the quarantine folder */
	struct stat st;
	time_t when;			/* quarantined */
	bool has_sidecar;
	unsigned attempts;
	char reason[1024];
	char rule[128];
	char source[PATH_MAX];		/* relative to the input folder */
	char owner[128];
	char sha256[80];
};

/** Called for each item; returning -1 stops the walk (err filled). */
typedef int (*quarantine_visit_fn)(void *ctx, const struct quarantine_item *it,
				   struct error *err);

/** Visit every quarantined file below dir (never a sidecar, a temp file
 *  or a claim), in name order. Returns how many, or -1. */
long quarantine_walk(const char *dir, quarantine_visit_fn visit, void *ctx,
		     struct error *err);

/**
 * Move it back into the input folder (open as input_fd) under its path
 * relative to the quarantine, numbered on a clash, with fsutil_move();
 * only then its sidecar goes. A kill in between leaves the file in the
 * input and an orphan sidecar, never the file in both places or neither.
 * dest gets where it went, relative to the input.
 */
int quarantine_requeue(int input_fd, const struct quarantine_item *it,
		       char *dest, size_t destlen, struct error *err);

/** Delete it, then its sidecar (retention). */
int quarantine_purge(const struct quarantine_item *it, struct error *err);

/**
 * An exclusive lock on the quarantine folder (flock), held by one
 * requeue or purge at a time: they claim files inside the folder and
 * recover others' claims. wait: block until free, else -1 with EWOULDBLOCK.
 * Returns a descriptor to close, or -1.
 */
int quarantine_lock(const char *dir, bool wait, struct error *err);

/** One "key: value" sidecar line, the value's control characters and
 *  backslashes escaped (\n, \r, \t, \\, \xHH): a name can never start
 *  a line of its own and forge a key. Every sidecar (quarantine, the
 *  forwarding outbox's rejected/) is written with it. */
void quarantine_sidecar_line(FILE *f, const char *key, const char *value);

/** Undo the sidecar escaping into out (always terminated). */
void quarantine_unescape(const char *in, char *out, size_t outlen);

#endif
