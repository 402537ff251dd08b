/*
 * config.h - the daemon's configuration file (libconfig syntax).
 *
 * Owns: reading, validating and defaulting dicomsortd.conf. Every key is
 * checked against the list of known keys: an unknown key or a value of the
 * wrong type or range is an error naming the file and line, so a typo never
 * silently means a default. Relative paths are taken relative to the config
 * file's directory; @include works the same way.
 *
 * The result is plain data owned by struct config (strings strdup'ed), so a
 * reload can parse a fresh one and swap.
 *
 * Top-level keys (stable names, see etc/dicomsortd.conf):
 *   input, output, quarantine      folders (required)
 *   layout, filename               templates (layout.h; filename "" = keep
 *                                  the source name)
 *   profile                        "none" | "seed" | "basic"
 *   correlation_table              path, optional
 *   after_success                  "delete" (default) | "move"
 *   processed                      folder, required when after_success=move
 *   rename_unchanged               after_success=delete: a source that needs
 *                                  no change, on the output's file system,
 *                                  ours, is renamed into place (true)
 *   hold                           folder for files whose PatientID is not
 *                                  in the table yet (deid.unknown_id="hold")
 *   settle_ms                      quiet time before a file is taken (2000)
 *   ignore                         list of globs on the base name
 *                                  (default [".*", "*.part", "*.tmp"])
 *   workers                        threads, 0 = one per core (0)
 *   log_target                     "auto" | "journal" | "stderr" ("auto")
 *   metrics_file                   Prometheus text file, replaced every
 *                                  metrics_interval_s (5); default
 *                                  CONFIG_METRICS_DIR/dicomsortd[-STEM].prom,
 *                                  "" = none (metrics.h)
 *   metrics_interval_s             seconds between writes (5)
 *   study_idle_s                   a study no file arrived for this long is
 *                                  complete: manifest (studies.h); 0 = off
 *   completed                      the manifests' spool folder; default
 *                                  <output>/.dicomsortd-state/completed
 *   status_file                    what `dicomsortd status` reads; default
 *                                  CONFIG_RUN_DIR/STEM.status, "" = none
 *   quarantine                     "folder", or { folder = "...";
 *                                  max_age_days = 0; } (0: kept for ever)
 * Groups:
 *   retry    { parse_attempts = 3; backoff_ms = 1000; backoff_max_ms = 60000; }
 *   rescan   { interval_s = 300; }            0 = off
 *   cleanup  { remove_empty_dirs = true; min_age_s = 60; }
 *   shutdown { timeout_s = 10; }
 *   limits   { max_file_size_mb = 0; }        0 = no limit; a bigger file
 *                                             is rejected (quarantined)
 *   deid     { secret = "file"; retain_uids = false; ... (one boolean per
 *              PS3.15 option, deid.h's names); safe_private = [...];
 *              unlisted = "remove"|"keep";
 *              unknown_id = "keep"|"pseudonymize"|"reject"|"hold";
 *              pseudonym_prefix; patient_name; max_date_shift_days;
 *              allow_burned_in; burned_in_modalities = [...];
 *              burned_in_sop_classes = [...]; }
 * List:
 *   forward = ( { ... }, ... )   destinations every stored file goes on to
 *     (forward.h); one group each:
 *     name                         [A-Za-z0-9._-], unique, required
 *     DICOM (C-STORE):  host, port, called_ae, calling_ae (required);
 *                       tls (false), tls_ca_file, tls_cert_file,
 *                       tls_key_file, tls_verify (true),
 *                       allow_conversion (false)
 *     DICOMweb (STOW-RS): stow_url (http:// or https://, required);
 *                       token_file | basic_auth_file (0600, optional),
 *                       tls_verify (true), tls_ca_file
 *     either:  associations (1), files_per_association (50),
 *              connect_timeout_s (10), acse_timeout_s (30),
 *              dimse_timeout_s (60), timeout_s (300: one STOW request),
 *              retry_min_ms (1000), retry_max_ms (300000)
 */
#ifndef DICOMSORT_CONFIG_H
#define DICOMSORT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "dicomsort/deid.h"
#include "dicomsort/error.h"

#define CONFIG_DEFAULT_PATH "/etc/dicomsortd/dicomsortd.conf"
/* Debian 12 prometheus-node-exporter's textfile collector folder. */
#define CONFIG_METRICS_DIR "/var/lib/prometheus/node-exporter"
/* The unit's RuntimeDirectory=dicomsortd. */
#define CONFIG_RUN_DIR "/run/dicomsortd"

enum after_success {
	AFTER_SUCCESS_DELETE,
	AFTER_SUCCESS_MOVE,
};

enum log_target {
	LOG_TARGET_AUTO,	/* journald when under systemd, else stderr */
	LOG_TARGET_JOURNAL,
	LOG_TARGET_STDERR,
};

enum forward_kind {
	FORWARD_DIMSE,
	FORWARD_STOW,
};

#define CONFIG_FORWARD_NAME_MAX 64

/* One destination of `forward`; paths resolved like the others. */
struct config_forward {
	char *name;
	enum forward_kind kind;
	char *host;			/* DIMSE */
	long port;
	char *called_ae, *calling_ae;
	bool tls;
	char *tls_ca_file, *tls_cert_file, *tls_key_file;
	bool tls_verify;		/* both kinds */
	bool allow_conversion;
	char *stow_url;			/* STOW */
	char *token_file, *basic_auth_file;
	long associations;		/* parallel associations/connections */
	long files_per_association;	/* or per STOW request */
	long connect_timeout_s, acse_timeout_s, dimse_timeout_s, timeout_s;
	long retry_min_ms, retry_max_ms;	/* backoff on DELIVERY_RETRY */
};

struct config {
	char *path;			/* the file it was read from */
	char *input;
	char *output;
	char *quarantine;
	long quarantine_max_age_days;	/* 0: no purge */
	char *metrics_file;		/* NULL: none */
	long metrics_interval_s;
	long study_idle_s;		/* 0: no study-complete events */
	char *completed;		/* NULL: the default below output */
	char *status_file;		/* NULL: none */
	char *layout;
	char *filename;			/* NULL: keep the source's name, or
					   {SOPInstanceUID}.dcm when
					   de-identifying; "": always keep */
	enum deid_profile profile;
	char *correlation_table;	/* NULL: none */
	enum after_success after_success;
	char *processed;		/* NULL unless after_success=move */
	bool rename_unchanged;		/* see rename_unchanged above */
	char *hold;			/* NULL unless deid.unknown_id=hold */
	long settle_ms;
	char **ignore;			/* NULL-terminated list of globs */
	long workers;			/* resolved: >= 1 */
	enum log_target log_target;
	struct {
		long parse_attempts;	/* tries before quarantine, >= 1 */
		long backoff_ms;	/* first delay after an output error */
		long backoff_max_ms;
	} retry;
	struct {
		long interval_s;	/* 0 = no periodic rescan */
	} rescan;
	struct {
		bool remove_empty_dirs;
		long min_age_s;		/* leave younger folders alone */
	} cleanup;
	struct {
		long timeout_s;		/* bound on finishing in-flight files */
	} shutdown;
	struct {
		long max_depth;		/* folders deeper below input: not
					 * watched nor scanned, an error */
		long unwatched_rescan_s;	/* rescan interval while folders
					 * are beyond the inotify limit */
	} watch;
	struct {
		long max_file_size_mb;	/* 0: no limit */
	} limits;
	struct {
		char *secret;		/* path of the site secret; NULL: none */
		unsigned options;	/* enum deid_option bits */
		char **safe_private;	/* NULL-terminated, may be NULL */
		enum deid_unknown_id unknown_id;
		char *pseudonym_prefix;	/* NULL: deid's default */
		char *patient_name;	/* NULL: the new PatientID */
		long max_date_shift_days;	/* 0: deid's default */
		bool allow_burned_in;
		bool keep_unlisted;	/* deid.unlisted = "keep" */
		char **burned_in_modalities;	/* NULL: deid's default list */
		char **burned_in_sop_classes;	/* NULL: deid's default list */
	} deid;
	struct config_forward *forward;	/* n_forward destinations */
	size_t n_forward;
};

/**
 * Read and validate path into *cfg (zeroed first). -1 with ERROR_SETUP and
 * "FILE:LINE: message" on any problem; *cfg is then released already.
 */
int config_load(struct config *cfg, const char *path, struct error *err);

/** Free everything config_load() allocated; cfg may be zeroed. */
void config_release(struct config *cfg);

/**
 * The de-identification options cfg asks for, except the table and the
 * secret, which the caller loads (they live longer or shorter than cfg's
 * strings, which *out points into).
 */
void config_deid_options(const struct config *cfg, struct deid_options *out);

/** limits.max_file_size_mb in bytes (0: no limit), for pipeline_options. */
unsigned long long config_max_file_size(const struct config *cfg);

/** The config file's base name without ".conf" ("dicomsortd" for
 *  dicomsortd.conf, "research" for research.conf): names the instance in
 *  metrics labels and the default metrics file. */
void config_stem(const struct config *cfg, char *out, size_t len);

/** The destination named name, or NULL. */
const struct config_forward *config_forward_find(const struct config *cfg,
						 const char *name);

/** Whether base name matches one of cfg->ignore's globs (fnmatch). */
bool config_ignored(const struct config *cfg, const char *base_name);

#endif
