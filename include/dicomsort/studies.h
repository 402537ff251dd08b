/*
 * studies.h - study-complete events: a manifest once a study goes quiet.
 *
 * Owns: the open studies (one append-only state file each in
 * <output>/.dicomsortd-state/studies/), the idle deadlines, and the
 * manifests in the `completed` spool folder (default
 * <output>/.dicomsortd-state/completed/, inside the unit's
 * ReadWritePaths=). Each stored output is noted - a line, fdatasync'ed -
 * as soon as it is durable and before its `stored` record; outputs whose
 * record a SIGKILL left owed are noted at start from the stored file
 * itself (records.h), so the state always covers what was stored. When no
 * file of a study arrived for study_idle_s (wall clock: the state file's
 * mtime counts across restarts), the manifest is written (temp, fsync,
 * rename without replacing, fsync folder), a `study-complete` record is
 * sent, and the state file goes. A kill in between writes no second
 * manifest: its name comes from the state file. Everything in a manifest is
 * as stored (de-identified under a profile): study and series UIDs,
 * series number and description, paths below the output; a noted output
 * that is gone by then is left out.
 * The daemon runs no commands: a systemd path unit (README) acts on the
 * spool. studies_note() is thread-safe; the rest runs on the loop.
 */
#ifndef DICOMSORT_STUDIES_H
#define DICOMSORT_STUDIES_H

#include <stdint.h>

#include "dicomsort/config.h"
#include "dicomsort/error.h"
#include "dicomsort/pipeline.h"

#define STUDIES_STATE_SUBDIR "studies"
#define STUDIES_COMPLETED_SUBDIR "completed"

struct studies;

/** NULL in *out (and 0) when cfg->study_idle_s is 0. Makes the folders,
 *  rebuilds the open studies from their state files. -1 ERROR_SETUP. */
int studies_open(struct studies **out, const struct config *cfg,
		 struct error *err);
void studies_free(struct studies *s);

/** A stored output (res->dest below the output) is durable: note it.
 *  No-op for s NULL or a file without StudyInstanceUID. */
int studies_note(struct studies *s, const struct pipeline_result *res,
		 struct error *err);

/** An output found at start whose record was owed: note it from the
 *  stored file (dest below the output). */
void studies_recovered(struct studies *s, const char *dest);

/** Milliseconds until the next study goes idle; -1 none open. */
int64_t studies_due_in_ms(struct studies *s);

/** Write the manifest of every study idle for study_idle_s. */
void studies_complete_due(struct studies *s);

#endif
