/*
 * deid.h - de-identification profiles applied to one loaded DICOM object.
 *
 * Owns: what each profile changes, the unknown-PatientID policy, pseudonym
 * derivation (replacement UIDs, pseudonymous IDs, date shifts) and the
 * record of what was done. Profiles:
 *   none   only the PatientID table applies, if one is given. (The original
 *          tool also anonymized when given a table alone; dicomsort maps
 *          that case to seed, the daemon's config says what it means.)
 *   seed   the original tool's --anonymize: PatientName -> "ANONYMIZED",
 *          PatientBirthDate emptied, PatientID via the table.
 *   basic  DICOM PS3.15 Annex E Basic Application Level Confidentiality
 *          Profile (Table E.1-1, every row, at every nesting level) with
 *          its options, consistent keyed pseudonyms and the burned-in text
 *          guard. Needs a secret (deid_secret_load()).
 *
 * Pseudonyms are HMAC-SHA-256 with the site secret: the same input always
 * gives the same UID, ID or date shift, across files, runs, restarts and
 * machines that share the secret. The secret never leaves this module.
 * deid_apply() is thread-safe; options and secret are read-only.
 */
#ifndef DICOMSORT_DEID_H
#define DICOMSORT_DEID_H

#include <stdbool.h>

#include "dicomsort/correlation.h"
#include "dicomsort/dicom.h"
#include "dicomsort/error.h"

enum deid_profile {
	DEID_NONE = 0,
	DEID_SEED,
	DEID_BASIC,
};

/* The PS3.15 options, as bits of deid_options.options. */
enum deid_option {
	DEID_RETAIN_SAFE_PRIVATE = 1 << 0,
	DEID_RETAIN_UIDS = 1 << 1,
	DEID_RETAIN_DEVICE_IDENTITY = 1 << 2,
	DEID_RETAIN_INSTITUTION_IDENTITY = 1 << 3,
	DEID_RETAIN_PATIENT_CHARACTERISTICS = 1 << 4,
	DEID_RETAIN_FULL_DATES = 1 << 5,
	DEID_RETAIN_MODIFIED_DATES = 1 << 6,
	DEID_CLEAN_DESCRIPTORS = 1 << 7,
	DEID_CLEAN_STRUCTURED_CONTENT = 1 << 8,
	DEID_CLEAN_GRAPHICS = 1 << 9,
};
#define DEID_OPTION_COUNT 10

/* What happens to a PatientID the correlation table does not map. */
enum deid_unknown_id {
	DEID_UNKNOWN_DEFAULT = 0,	/* keep for none/seed, pseudonymize for basic */
	DEID_UNKNOWN_KEEP,
	DEID_UNKNOWN_PSEUDONYMIZE,
	DEID_UNKNOWN_REJECT,
	DEID_UNKNOWN_HOLD,
};

struct deid_secret;

struct deid_options {
	enum deid_profile profile;
	const struct correlation *table;	/* NULL: no table */
	unsigned options;		/* enum deid_option bits (basic) */
	const struct deid_secret *secret;	/* required for basic */
	enum deid_unknown_id unknown_id;
	const char *pseudonym_prefix;	/* NULL: "ANON" */
	const char *patient_name;	/* NULL: the new PatientID */
	long max_shift_days;		/* modified dates: 1..max days back; 0: 365 */
	const char *const *safe_private;	/* "CREATOR:gggg,xxee" list, NULL-terminated */
	bool allow_burned_in;
	/* basic: attributes no row of Table E.1-1 names are kept as they are
	 * (the table's literal reading) instead of emptied or removed when
	 * they can carry text (deid.unlisted = "keep"). */
	bool keep_unlisted;
	const char *const *burned_in_modalities;	/* NULL: US SC OT XC ES OP */
	const char *const *burned_in_sop_classes;	/* NULL: secondary capture */
};

struct deid_report {
	bool id_unmapped;		/* the table did not map the PatientID */
	char original_id[65];		/* that ID, for the batch's log file only */
	bool hold;			/* unknown ID with the hold policy */
	int shift_days;			/* dates moved back by this many days */
};

/** Parse a profile name ("none", "seed", "basic"). 0 or -1. */
int deid_profile_from_name(const char *name, enum deid_profile *profile);
const char *deid_profile_name(enum deid_profile profile);

/** Option bit from its config/flag name ("retain_uids", ...); 0 if none. */
unsigned deid_option_from_name(const char *name);
/** Name of the i-th option (0 <= i < DEID_OPTION_COUNT). */
const char *deid_option_name(unsigned i);

/** Parse "keep", "pseudonymize", "reject", "hold". 0 or -1. */
int deid_unknown_id_from_name(const char *name, enum deid_unknown_id *policy);

/**
 * Read the site secret from path. The file must be a regular file that
 * only its owner may read (no group/other permission bits) and hold at
 * least 16 bytes (trailing newlines are not part of it). -1 ERROR_SETUP.
 */
int deid_secret_load(struct deid_secret **out, const char *path,
		     struct error *err);
void deid_secret_free(struct deid_secret *secret);

/** Check that opts can work (basic needs a secret, safe private entries
 *  parse, ...). -1 ERROR_SETUP. */
int deid_check_options(const struct deid_options *opts, struct error *err);

/**
 * Apply opts to file. -1 with ERROR_INPUT when the object must not be
 * stored: its PatientID is unknown under the reject policy, or it may carry
 * burned-in text. Messages never contain identifying values. With the hold
 * policy an unknown ID returns 0 with report->hold set: the caller parks
 * the file instead of storing it.
 */
int deid_apply(const struct deid_options *opts, struct dicom_file *file,
	       struct deid_report *report, struct error *err);

#endif
