/*
 * pipeline.h - the pipeline: one source file in, one result out.
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
 * One struct pipeline is shared read-only by all worker threads; pipeline_file()
 * is thread-safe. Nothing here logs: the result says what happened.
 */
#ifndef DICOMSORT_PIPELINE_H
#define DICOMSORT_PIPELINE_H

#include <limits.h>
#include <stdbool.h>

#include "dicomsort/correlation.h"
#include "dicomsort/deid.h"
#include "dicomsort/error.h"
#include "dicomsort/layout.h"

enum pipeline_sync {
	PIPELINE_SYNC_EACH,	/* fsync file and directory before disposal */
	PIPELINE_SYNC_NONE,	/* caller syncs once at the end (plain copy) */
	PIPELINE_SYNC_DISPOSAL,	/* fsync file and directory only where a
				   source is then destroyed (a copy, or a
				   duplicate, before the delete); a source
				   renamed into place loses nothing and
				   waits for pipeline_sync_all() (batch
				   --move) */
};

enum pipeline_disposal {
	PIPELINE_KEEP_SOURCE,
	PIPELINE_DELETE_SOURCE,
	PIPELINE_MOVE_SOURCE,	/* into processed_dir, same relative name */
};

/* The file name used instead of the source's when de-identifying. */
#define PIPELINE_DEIDENTIFIED_NAME "{SOPInstanceUID}.dcm"

struct pipeline_options {
	const char *output_dir;
	const char *dir_template;	/* NULL: LAYOUT_DEFAULT_DIRS */
	const char *name_template;	/* NULL: keep the source's base name
					   (basic: PIPELINE_DEIDENTIFIED_NAME);
					   "": keep it, whatever the profile */
	struct deid_options deid;
	enum pipeline_sync sync;
	enum pipeline_disposal disposal;
	const char *processed_dir;	/* for PIPELINE_MOVE_SOURCE */
	bool dry_run;			/* decide the destination, write nothing */
	bool rename_unchanged;		/* PIPELINE_DELETE_SOURCE: a source whose
					   bytes are the output (nothing to
					   change), on the output's file system,
					   is renamed into place instead of
					   copied and deleted (keeps its mtime) */
	unsigned long long max_file_size;	/* bytes; a larger source is
						   rejected unread. 0: no limit */
};

enum pipeline_status {
	PIPELINE_STORED,
	PIPELINE_DUPLICATE,	/* identical file already at the destination */
	PIPELINE_REJECTED,	/* bad input: err.kind == ERROR_INPUT */
	PIPELINE_HELD,		/* PatientID unknown under the hold policy:
				   nothing written, the caller parks it */
	PIPELINE_FAILED,		/* transient: source kept, retry later */
};

struct pipeline_result {
	enum pipeline_status status;
	char dest[PATH_MAX + NAME_MAX + 2];	/* relative to output_dir */
	char sop_instance_uid[65];	/* after de-identification */
	bool same_uid_conflict;		/* stored beside a different file of
					   the same name (numbered name) */
	struct deid_report deid;
	struct error err;
};

struct pipeline;

/** Check templates and options, open the output root, and note the umask
 *  that outputs' modes follow (call it before threads create files).
 *  -1 ERROR_SETUP. */
int pipeline_new(struct pipeline **out, const struct pipeline_options *opts,
	       struct error *err);

void pipeline_free(struct pipeline *pipeline);

/**
 * Swap the correlation table used by later pipeline_file() calls (the caller
 * keeps its own reference; pipeline takes one). Thread-safe.
 */
void pipeline_set_table(struct pipeline *pipeline, struct correlation *table);

/**
 * Process the file at source_path (absolute or relative to the CWD);
 * source_rel is its path relative to the input root (for MOVE; may be NULL).
 * Always fills *result; returns 0 for STORED/DUPLICATE/HELD, -1 otherwise.
 */
int pipeline_file(struct pipeline *pipeline, const char *source_path,
		const char *source_rel, struct pipeline_result *result);

/** Make everything written so far durable (syncfs of the output). */
int pipeline_sync_all(struct pipeline *pipeline, struct error *err);

#endif
