/*
 * pipeline.h - the pipeline: one source file in, one result out.
 *
 * Owns the order of the steps that make "nothing is lost" true:
 *   open source (O_NOFOLLOW, regular files only) -> parse -> de-identify ->
 *   build the destination from the de-identified values -> write a temp file
 *   in the destination directory -> (fsync) -> publish under a final name
 *   without overwriting -> (fsync directory) -> only then dispose of the
 *   source (delete it or move it to the processed folder, both through
 *   fsutil's claim-first safe move). A failed disposal leaves the result
 *   STORED (or DUPLICATE) with dispose_failed set: two facts, and the
 *   disposal alone is retried with pipeline_dispose().
 * Under PIPELINE_SYNC_GROUP the two fsyncs become one syncfs for many files
 * (pipeline_commit()), and the disposal waits for it.
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
#include <sys/stat.h>

#include "dicomsort/correlation.h"
#include "dicomsort/deid.h"
#include "dicomsort/error.h"
#include "dicomsort/layout.h"

struct dicom_file;

enum pipeline_sync {
	PIPELINE_SYNC_EACH,	/* fsync file and directory before disposal */
	PIPELINE_SYNC_NONE,	/* caller syncs once at the end (plain copy) */
	PIPELINE_SYNC_DISPOSAL,	/* fsync file and directory only where a
				   source is then destroyed (a copy, or a
				   duplicate, before the delete); a source
				   renamed into place loses nothing and
				   waits for pipeline_sync_all() (batch
				   --move) */
	PIPELINE_SYNC_GROUP,	/* group commit (the daemon): no fsync per
				   file; run() publishes and leaves the
				   disposal pending (result.dispose_pending)
				   until pipeline_commit() has made this and
				   every earlier output durable, then
				   pipeline_dispose_result() */
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
	bool rename_same_group;		/* rename_unchanged only for a source
					   whose group is the one a file made
					   in the output root gets (its setgid
					   group, or ours): the group decides
					   who may read the output */
	unsigned long long max_file_size;	/* bytes; a larger source is
						   rejected unread. 0: no limit */
	bool hash_source;		/* fill result.source_sha256 */
	bool sigio_ignored;		/* the process ignores SIGIO
					   (fsutil_ignore_sigio()): its read
					   leases need no F_SETSIG */
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
	char sop_instance_uid[65];	/* after de-identification */
	/* The study and series as stored (after de-identification), for
	 * the study-complete manifests (studies.h); "" when absent. */
	char study_uid[65];
	char series_uid[65];
	char series_number[16];
	char series_description[256];
	bool same_uid_conflict;		/* stored beside a different file of
					   the same name (numbered name) */
	const char *warning;		/* NULL, or a constant text (no values)
					   about the stored file: its meta
					   header disagrees with its dataset
					   and was kept as it came */
	struct deid_report deid;
	struct error err;
	bool policy_rejected;		/* REJECTED by the de-identification
					   policy (e.g. burned-in annotation)
					   of a file that parsed: retrying
					   cannot change it */
	bool source_busy;		/* FAILED because a writer had the
					   source open, or wrote it, while it
					   was read: not finished yet, taken
					   again once settled */
	struct stat source_st;		/* the source as read (st_ino 0: not
					   opened); identity for
					   pipeline_dispose() */
	char source_sha256[65];		/* of the source bytes, when
					   opts.hash_source; "" if unread */
	/* PIPELINE_SYNC_GROUP: STORED or DUPLICATE, published but not yet
	 * durable; the source is untouched. pipeline_commit(), then
	 * pipeline_dispose_result(). */
	bool dispose_pending;
	char read_sha256[65];		/* the version read, for that disposal */
	/* STORED by renaming the source itself into place
	 * (rename_unchanged): the source is the output, no byte was
	 * destroyed and nothing is left to dispose of. Under
	 * PIPELINE_SYNC_GROUP it is dispose_pending all the same (durable
	 * only after the next pipeline_commit()), and
	 * pipeline_dispose_result() then has nothing to do. */
	bool renamed;
	/* Disposal of the source is a step of its own: the output may be
	 * STORED (or DUPLICATE) while the source could not be removed. */
	bool dispose_failed;
	bool source_changed;		/* dispose_failed because the source
					   is no longer the version read:
					   it stays, to be processed again */
	struct error dispose_err;
	/* The two long texts last: pipeline_file() zeroes every field
	 * before them and only the first byte of each (8 KiB less to clear
	 * per file). Keep new fields above. */
	char dest[PATH_MAX + NAME_MAX + 2];	/* relative to output_dir */
	char disposed_as[PATH_MAX];	/* MOVE: relative to processed_dir */
};

/*
 * Calls around publication, on the worker thread, for an audit trail that
 * survives SIGKILL: before_publish() runs just before res->dest (relative
 * to output_dir) may appear, with the identity (st_ino, st_size, st_mtim)
 * the published file will have - the daemon notes a pending record there;
 * after_publish() runs once afterwards, published saying whether it did
 * appear (durable: file and folder synced; under PIPELINE_SYNC_GROUP only
 * after the next pipeline_commit()). before_publish() returning
 * -1 (err filled) abandons the publication.
 */
enum pipeline_point {
	PIPELINE_AT_PARSED,	/* the snapshot is taken and parsed */
	PIPELINE_AT_DURABLE,	/* the output is durable, the source not
				   yet checked and disposed of (not told
				   under PIPELINE_SYNC_GROUP: the caller
				   disposes after its commit) */
	PIPELINE_AT_CLAIMED,	/* rename_unchanged: the source is claimed
				   (under its private name in its folder),
				   about to be renamed into the output;
				   before_publish() follows */
};

struct pipeline_hooks {
	int (*before_publish)(void *ctx, const struct pipeline_result *res,
			      const struct stat *out_st, struct error *err);
	void (*after_publish)(void *ctx, const struct pipeline_result *res,
			      bool published);
	/* NULL, or told when a file passes each point (test delays). */
	void (*checkpoint)(void *ctx, enum pipeline_point point);
	void *ctx;
	/* NULL, or shown the parsed object just before de-identification
	 * (deidentified false) and just after it (true): a dry run's report
	 * of what the profile changes. Must not change the object. */
	void (*inspect)(void *ctx, struct dicom_file *file, bool deidentified);
	/* NULL, or the version of the source the caller judged finished
	 * (its lstat when the job was dispatched): one that is another
	 * version when opened was written since - a writer that opened it
	 * again - and is left to settle again (result.source_busy). */
	const struct stat *judged;
};

/* The version of a source that was read: its stat (inode, size, mtime,
 * ctime) and the SHA-256 of its bytes ("" if not hashed). */
struct pipeline_read {
	struct stat st;
	char sha256[65];
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

/** pipeline_file() with hooks (may be NULL) around publication. */
int pipeline_file_hooked(struct pipeline *pipeline, const char *source_path,
			 const char *source_rel, const struct pipeline_hooks *hooks,
			 struct pipeline_result *result);

/*
 * pipeline_file() in two halves, for a caller that overlaps its files on
 * two threads (dicomsort --move: one reads, one renames; each half's
 * kernel work takes other locks, bench/PROFILE.md section 15). The
 * first half does everything but the renames of a source renamed into
 * place (rename_unchanged): it opens, leases, reads and parses it,
 * decides where it goes, makes the folders, and stops there with
 * *staged true - the source untouched, still leased, its result not
 * final. Any other file is done whole (*staged false) and its result is
 * final. No hooks.
 */
struct pipeline_staged;

/* Room for one staged file, reused from file to file (NULL: no memory). */
struct pipeline_staged *pipeline_staged_new(void);
void pipeline_staged_free(struct pipeline_staged *staged);

/* *staged: in, stopped before its renames; else done, in is free. */
int pipeline_file_staged(struct pipeline *pipeline, const char *source_path,
			 const char *source_rel, struct pipeline_result *result,
			 struct pipeline_staged *in, bool *staged);

/**
 * The second half of a staged file, on any thread (opening its output
 * folder there): the claim, the checks under the lease, the place - or
 * a copy where the renames cannot be made - with the same result and
 * the paths given to pipeline_file_staged(), which must still be valid.
 * staged is free again after it; returns as pipeline_file().
 */
int pipeline_finish_staged(struct pipeline_staged *staged,
			   struct pipeline_result *result);

/**
 * The study and series of file as stored - study_uid, series_uid,
 * series_number, series_description of res, each "" when absent and cut
 * to fit - for the study-complete manifests (studies.h): filled by
 * pipeline_file() after de-identification, and by a recovery from the
 * stored file itself.
 */
void pipeline_result_set_study(struct pipeline_result *res,
			       struct dicom_file *file);

/**
 * Dispose of a source whose output is stored already (a retry after
 * result.dispose_failed): delete it, or move it to the processed folder
 * (disposed_as gets where), only if it is still the version read (see
 * fsutil_move()); otherwise *changed: keep it and process it again.
 * Never stores anything.
 */
int pipeline_dispose(struct pipeline *pipeline, const char *source_path,
		     const char *source_rel, const struct pipeline_read *read,
		     char *disposed_as, size_t len, bool *changed,
		     struct error *err);

/** Make everything written so far durable (syncfs of the output). */
int pipeline_sync_all(struct pipeline *pipeline, struct error *err);

/**
 * PIPELINE_SYNC_GROUP: make every output published before this call
 * durable - one syncfs(2) of the output's file system, through the root
 * descriptor opened by pipeline_new(), so a write-back error since then
 * is reported here (once: errseq). -1 (ERROR_TRANSIENT): some output of
 * the group may not be on disk; dispose of none of their sources.
 */
int pipeline_commit(struct pipeline *pipeline, struct error *err);

/**
 * After a pipeline_commit() that began after res was published: dispose
 * of its source as run() does without group commit - still only if it is
 * the version read (res->source_changed otherwise) - and fill
 * disposed_as, dispose_failed and dispose_err. Clears dispose_pending.
 */
void pipeline_dispose_result(struct pipeline *pipeline, const char *source_path,
			     const char *source_rel,
			     struct pipeline_result *res);

#endif
