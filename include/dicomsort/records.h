/*
 * records.h - `stored` audit records that survive SIGKILL.
 *
 * Owns: the pending-record markers in <output>/.dicomsortd-state/pending/
 * (entries of an append-only log per process, <pid>-<n>.log; marker files
 * *.pending of earlier versions are still recovered).
 * The output folder is the one place the daemon always writes (the unit's
 * ReadWritePaths= must include it), so the markers need no path of their
 * own. Just before an output is published, a marker notes its destination,
 * the identity its file will have (inode, size, mtime) and the fields of
 * its `stored` record; once that record is sent the marker goes. A kill
 * in between leaves the marker, and at the next start records_recover()
 * sends the record (with DICOMSORTD_RECOVERED=1) for each marker whose
 * output is there with that identity, and drops the others (nothing was
 * published; the source is still in the input and is done again). So the
 * number of `stored` records equals the number of outputs.
 * Thread-safe: markers are separate files named by the caller.
 */
#ifndef DICOMSORT_RECORDS_H
#define DICOMSORT_RECORDS_H

#include <sys/stat.h>

#include "dicomsort/error.h"
#include "dicomsort/log.h"

#define RECORDS_STATE_DIR ".dicomsortd-state"

struct records;

/** Markers for the output folder output_dir; their folder is made at the
 *  first marker (the output may be read-only, or go and come back, while
 *  we run). -1 ERROR_SETUP. */
int records_open(struct records **out, const char *output_dir,
		 struct error *err);
void records_free(struct records *r);

/** Note a marker: rec (its dest relative to the output folder) is owed
 *  once a file with out_st's identity is at rec->dest. marker (len
 *  bytes, "" at first) gets its name; one noted already is dropped
 *  first (another name is being tried). Thread-safe. */
int records_note(struct records *r, char *marker, size_t len,
		 const struct audit_record *rec, const struct stat *out_st,
		 struct error *err);

/** The record was sent, or nothing was published: drop the marker (if
 *  any: "" is none) and empty marker. Thread-safe. */
void records_done(struct records *r, char *marker);

/** At start, before any file is taken: send what a kill left owed and
 *  remove every marker. Returns how many records were sent. */
long records_recover(struct records *r);

/** records_recover(), and owed(ctx, dest) for each output found there as
 *  published (its forwarding entries may be owed too: forward.h). */
long records_recover_hooked(struct records *r,
			    void (*owed)(void *ctx, const char *dest),
			    void *ctx);

#endif
