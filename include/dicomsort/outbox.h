/*
 * outbox.h - the durable queue of one forwarding destination.
 *
 * Owns: <output>/.dicomsortd-state/outbox/<dest>/ and its rejected/.
 * An entry is a hard link to a stored output file (the same inode: no
 * copy, no second set of bytes to lose), named by the inode and mtime of
 * that file ("<ino>-<sec>.<nsec>.dcm", hex): nothing from the data set or
 * the source's name, so no PHI, and the same output always gets the same
 * name (adding twice is adding once). Beside it, "<entry>.ref" holds the
 * output's path relative to the output folder, for the records only; the
 * entry alone is what is sent. The state folder is on the output's file
 * system, so the link always works; an output on another mount below the
 * output folder is copied in (temp file, fsync, rename).
 *
 * Crash windows (the daemon is SIGKILLed, or the power goes):
 *   - output published, entry not yet made: the output's pending `stored`
 *     marker (records.h) is still there; at start the recovery re-adds the
 *     entry for every marker whose output is there (forward_recovered()).
 *   - entry linked, folder not yet fsynced: same - the marker goes only
 *     after outbox_add() returned, i.e. after the fsync.
 *   - entry sent, peer confirmed, entry not yet removed: it is sent again
 *     at start (at-least-once; the peer is idempotent by SOPInstanceUID,
 *     and the audit shows the resend).
 *   - rejected: the .reason sidecar is written and synced first, then the
 *     entry is renamed into rejected/; a kill between leaves the entry in
 *     the queue (sent again, rejected again) and a stray .reason, which
 *     the next rejection overwrites.
 * The source is disposed of only after outbox_add() returned, so a file
 * is in the input, or in the outbox, or confirmed by the peer.
 * Thread-safe: entries are separate files; one entry is handled by one
 * thread at a time (the forwarder's job).
 */
#ifndef DICOMSORT_OUTBOX_H
#define DICOMSORT_OUTBOX_H

#include <stddef.h>
#include <sys/stat.h>
#include <time.h>

#include "dicomsort/error.h"

#define OUTBOX_DIR "outbox"		/* below RECORDS_STATE_DIR */
#define OUTBOX_REJECTED "rejected"
#define OUTBOX_NAME_MAX 64

struct outbox;

/** The outbox of destination dest below output_dir, made if missing.
 *  -1 ERROR_SETUP (or TRANSIENT for an I/O error). */
int outbox_open(struct outbox **out, const char *output_dir, const char *dest,
		struct error *err);
void outbox_free(struct outbox *ob);

/** The name the output file rel (relative to the output folder) has, or
 *  will have, in any outbox. -1 if it is not there. */
int outbox_name_of(const char *output_dir, const char *rel, char *name,
		   size_t len, struct error *err);

/** Queue output file rel: link (or copy) it in under its name, write its
 *  .ref and fsync the folder: 0. Adding an entry that exists changes
 *  nothing and returns 1. name gets the entry's name. */
int outbox_add(struct outbox *ob, const char *rel, char *name, size_t len,
	       struct error *err);

/** Every entry now in the queue: fn(ctx, name, queued_since) each, where
 *  queued_since is the entry's ctime (when it was linked). Count or -1. */
long outbox_scan(struct outbox *ob, void (*fn)(void *ctx, const char *name,
					       time_t since), void *ctx,
		 struct error *err);

/** The path to read entry name from (for the transport). */
void outbox_path(const struct outbox *ob, const char *name, char *buf,
		 size_t len);

/** The output path an entry stands for, from its .ref ("" if unknown). */
void outbox_ref(const struct outbox *ob, const char *name, char *buf,
		size_t len);

/** The peer confirmed it: the entry and its .ref go. */
int outbox_done(struct outbox *ob, const char *name, struct error *err);

/** The peer refused it: into rejected/ with name.reason holding reason
 *  (escaped as quarantine sidecars are: one line, \\xHH for the rest). */
int outbox_reject(struct outbox *ob, const char *name, const char *reason,
		  struct error *err);

/** Remove each entry of rejected/ refused before limit (its .reason's
 *  mtime; the entry's ctime without one) with its .reason and .ref; fn
 *  gets its name and output path (ref, "" if unknown) first. The number
 *  removed, or -1 with err. */
long outbox_purge_rejected(struct outbox *ob, time_t limit,
			   void (*fn)(void *ctx, const char *name,
				      const char *ref),
			   void *ctx, struct error *err);

#endif
