/*
 * ingest.h - the pipeline: one source file in, one result out.
 *
 * Owns the order of the steps that make "nothing is lost" true:
 *   open source (O_NOFOLLOW, regular files only) -> parse -> de-identify ->
 *   build the destination from the de-identified values -> write a temp file
 *   in the destination directory -> (fsync) -> publish under a final name
 *   without overwriting -> (fsync directory) -> only then dispose of the
 *   source (delete it or move it to the processed folder).
 * If an identical file already has the name, the result is a duplicate and
 * nothing new is written, so processing the same input twice changes nothing.
 *
 * One struct ingest is shared read-only by all worker threads; ingest_file()
 * is thread-safe. Nothing here logs: the result says what happened.
 */
#ifndef DICOMSORT_INGEST_H
#define DICOMSORT_INGEST_H

#include <limits.h>
#include <stdbool.h>

#include "dicomsort/corrtable.h"
#include "dicomsort/deid.h"
#include "dicomsort/error.h"
#include "dicomsort/layout.h"

enum ingest_sync {
	INGEST_SYNC_EACH,	/* fsync file and directory before disposal */
	INGEST_SYNC_NONE,	/* caller syncs once at the end (plain copy) */
};

enum ingest_disposal {
	INGEST_KEEP_SOURCE,
	INGEST_DELETE_SOURCE,
	INGEST_MOVE_SOURCE,	/* into processed_dir, same relative name */
};

struct ingest_options {
	const char *output_dir;
	const char *dir_template;	/* NULL: LAYOUT_DEFAULT_DIRS */
	const char *name_template;	/* NULL: keep the source's base name */
	struct deid_options deid;
	enum ingest_sync sync;
	enum ingest_disposal disposal;
	const char *processed_dir;	/* for INGEST_MOVE_SOURCE */
	bool dry_run;			/* decide the destination, write nothing */
};

enum ingest_status {
	INGEST_STORED,
	INGEST_DUPLICATE,	/* identical file already at the destination */
	INGEST_REJECTED,	/* bad input: err.kind == ERROR_INPUT */
	INGEST_HELD,		/* PatientID unknown under the hold policy:
				   nothing written, the caller parks it */
	INGEST_FAILED,		/* transient: source kept, retry later */
};

struct ingest_result {
	enum ingest_status status;
	char dest[PATH_MAX + NAME_MAX + 2];	/* relative to output_dir */
	char sop_instance_uid[65];	/* after de-identification */
	bool same_uid_conflict;		/* stored beside a different file of
					   the same name (numbered name) */
	struct deid_report deid;
	struct error err;
};

struct ingest;

/** Check templates and options, open the output root. -1 ERROR_SETUP. */
int ingest_new(struct ingest **out, const struct ingest_options *opts,
	       struct error *err);

void ingest_free(struct ingest *ingest);

/**
 * Swap the correlation table used by later ingest_file() calls (the caller
 * keeps its own reference; ingest takes one). Thread-safe.
 */
void ingest_set_table(struct ingest *ingest, struct corrtable *table);

/**
 * Process the file at source_path (absolute or relative to the CWD);
 * source_rel is its path relative to the input root (for MOVE; may be NULL).
 * Always fills *result; returns 0 for STORED/DUPLICATE/HELD, -1 otherwise.
 */
int ingest_file(struct ingest *ingest, const char *source_path,
		const char *source_rel, struct ingest_result *result);

/** Make everything written so far durable (syncfs of the output). */
int ingest_sync_all(struct ingest *ingest, struct error *err);

#endif
