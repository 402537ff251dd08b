/*
 * dryrun.h - dicomsortd --check-config -c CONF --sample DIR.
 *
 * Owns: the walk of a sample folder and the report of what the daemon
 * would do with each file under CONF: its destination below the output,
 * the quarantine or hold reason, or "ignored" (an ignore glob), and the
 * attributes the profile changes (keyword: old -> new). The decisions are
 * the pipeline's own (pipeline.h with dry_run: layout, correlation,
 * de-identification); this module only walks and prints. Nothing is
 * written anywhere, nothing is logged: the report goes to stdout for the
 * admin at their terminal, and it shows old values (the admin can read
 * the samples already; the journal never sees them).
 * Regular files only, recursively; symlinks are neither followed nor read.
 */
#ifndef DICOMSORT_DRYRUN_H
#define DICOMSORT_DRYRUN_H

#include <stdbool.h>

#include "dicomsort/config.h"

/** Report on every file below sample_dir; json: one JSON document.
 *  0 when every file was decided, 2 on a setup error (config, table,
 *  secret, unreadable sample folder). */
int dryrun_run(const struct config *cfg, const char *sample_dir, bool json);

#endif
