/* config.c - reading dicomsortd.conf; see config.h. */
#include "dicomsort/config.h"

#include <errno.h>
#include <fnmatch.h>
#include <libconfig.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/*
 * The schema: every key the file may hold, with its type. Validation walks
 * the file against it first, so the readers below can assume the types.
 */
enum key_kind {
	KEY_STRING,
	KEY_INT,
	KEY_BOOL,
	KEY_STRINGS,	/* a list or array of strings */
	KEY_GROUP,
	KEY_STRING_OR_GROUP,	/* a string, or a group of members */
	KEY_GROUPS,	/* a list of groups, each of members */
};

struct key {
	const char *name;
	enum key_kind kind;
	const struct key *members;	/* KEY_GROUP only, NULL-name ended */
};

static const struct key retry_keys[] = {
	{ "parse_attempts", KEY_INT, NULL },
	{ "backoff_ms", KEY_INT, NULL },
	{ "backoff_max_ms", KEY_INT, NULL },
	{ NULL, 0, NULL },
};

static const struct key rescan_keys[] = {
	{ "interval_s", KEY_INT, NULL },
	{ NULL, 0, NULL },
};

static const struct key cleanup_keys[] = {
	{ "remove_empty_dirs", KEY_BOOL, NULL },
	{ "min_age_s", KEY_INT, NULL },
	{ NULL, 0, NULL },
};

static const struct key shutdown_keys[] = {
	{ "timeout_s", KEY_INT, NULL },
	{ NULL, 0, NULL },
};

static const struct key watch_keys[] = {
	{ "max_depth", KEY_INT, NULL },
	{ "unwatched_rescan_s", KEY_INT, NULL },
	{ NULL, 0, NULL },
};

/* quarantine = "folder"; or quarantine = { folder = "..."; max_age_days; } */
static const struct key quarantine_keys[] = {
	{ "folder", KEY_STRING, NULL },
	{ "max_age_days", KEY_INT, NULL },
	{ NULL, 0, NULL },
};

static const struct key limits_keys[] = {
	{ "max_file_size_mb", KEY_INT, NULL },
	{ NULL, 0, NULL },
};

/* The option booleans are checked by name through deid_option_from_name(),
 * so this list holds only the other keys. */
static const struct key deid_keys[] = {
	{ "secret", KEY_STRING, NULL },
	{ "safe_private", KEY_STRINGS, NULL },
	{ "unknown_id", KEY_STRING, NULL },
	{ "pseudonym_prefix", KEY_STRING, NULL },
	{ "patient_name", KEY_STRING, NULL },
	{ "max_date_shift_days", KEY_INT, NULL },
	{ "allow_burned_in", KEY_BOOL, NULL },
	{ "burned_in_modalities", KEY_STRINGS, NULL },
	{ "burned_in_sop_classes", KEY_STRINGS, NULL },
	{ "unlisted", KEY_STRING, NULL },
	{ NULL, 0, NULL },
};

static const struct key forward_keys[] = {
	{ "name", KEY_STRING, NULL },
	{ "host", KEY_STRING, NULL },
	{ "port", KEY_INT, NULL },
	{ "called_ae", KEY_STRING, NULL },
	{ "calling_ae", KEY_STRING, NULL },
	{ "tls", KEY_BOOL, NULL },
	{ "tls_ca_file", KEY_STRING, NULL },
	{ "tls_cert_file", KEY_STRING, NULL },
	{ "tls_key_file", KEY_STRING, NULL },
	{ "tls_verify", KEY_BOOL, NULL },
	{ "allow_conversion", KEY_BOOL, NULL },
	{ "stow_url", KEY_STRING, NULL },
	{ "token_file", KEY_STRING, NULL },
	{ "basic_auth_file", KEY_STRING, NULL },
	{ "associations", KEY_INT, NULL },
	{ "files_per_association", KEY_INT, NULL },
	{ "connect_timeout_s", KEY_INT, NULL },
	{ "acse_timeout_s", KEY_INT, NULL },
	{ "dimse_timeout_s", KEY_INT, NULL },
	{ "timeout_s", KEY_INT, NULL },
	{ "retry_min_ms", KEY_INT, NULL },
	{ "retry_max_ms", KEY_INT, NULL },
	{ NULL, 0, NULL },
};

static const struct key root_keys[] = {
	{ "input", KEY_STRING, NULL },
	{ "output", KEY_STRING, NULL },
	{ "quarantine", KEY_STRING_OR_GROUP, quarantine_keys },
	{ "layout", KEY_STRING, NULL },
	{ "filename", KEY_STRING, NULL },
	{ "profile", KEY_STRING, NULL },
	{ "correlation_table", KEY_STRING, NULL },
	{ "after_success", KEY_STRING, NULL },
	{ "processed", KEY_STRING, NULL },
	{ "rename_unchanged", KEY_BOOL, NULL },
	{ "hold", KEY_STRING, NULL },
	{ "settle_ms", KEY_INT, NULL },
	{ "ignore", KEY_STRINGS, NULL },
	{ "workers", KEY_INT, NULL },
	{ "log_target", KEY_STRING, NULL },
	{ "metrics_file", KEY_STRING, NULL },
	{ "metrics_interval_s", KEY_INT, NULL },
	{ "study_idle_s", KEY_INT, NULL },
	{ "completed", KEY_STRING, NULL },
	{ "status_file", KEY_STRING, NULL },
	{ "retry", KEY_GROUP, retry_keys },
	{ "rescan", KEY_GROUP, rescan_keys },
	{ "cleanup", KEY_GROUP, cleanup_keys },
	{ "shutdown", KEY_GROUP, shutdown_keys },
	{ "watch", KEY_GROUP, watch_keys },
	{ "limits", KEY_GROUP, limits_keys },
	{ "deid", KEY_GROUP, deid_keys },
	{ "forward", KEY_GROUPS, forward_keys },
	{ NULL, 0, NULL },
};

static const char *const default_ignore[] = { ".*", "*.part", "*.tmp", NULL };

/* "FILE:LINE: " for a setting, falling back to the main file. */
static int setting_error(const struct config *cfg, const config_setting_t *s,
			 struct error *err, const char *fmt, const char *what)
{
	const char *file = config_setting_source_file(s);

	return error_set(err, ERROR_SETUP, 0, "%s:%u: %s%s",
			 file ? file : cfg->path,
			 config_setting_source_line(s), what, fmt);
}

static const char *kind_name(enum key_kind kind)
{
	switch (kind) {
	case KEY_STRING: return "a string";
	case KEY_INT: return "an integer";
	case KEY_BOOL: return "true or false";
	case KEY_STRINGS: return "a list of strings";
	case KEY_GROUP: return "a group { ... }";
	case KEY_STRING_OR_GROUP: return "a string or a group { ... }";
	case KEY_GROUPS: return "a list of groups ( { ... }, ... )";
	}
	return "?";
}

static bool has_kind(const config_setting_t *s, enum key_kind kind)
{
	int type = config_setting_type(s);

	switch (kind) {
	case KEY_STRING: return type == CONFIG_TYPE_STRING;
	case KEY_INT: return type == CONFIG_TYPE_INT || type == CONFIG_TYPE_INT64;
	case KEY_BOOL: return type == CONFIG_TYPE_BOOL;
	case KEY_GROUP: return type == CONFIG_TYPE_GROUP;
	case KEY_STRING_OR_GROUP:
		return type == CONFIG_TYPE_STRING || type == CONFIG_TYPE_GROUP;
	case KEY_GROUPS:
		if (type != CONFIG_TYPE_LIST)
			return false;
		for (int i = 0; i < config_setting_length(s); i++)
			if (config_setting_type(config_setting_get_elem(s, i)) !=
			    CONFIG_TYPE_GROUP)
				return false;
		return true;
	case KEY_STRINGS:
		if (type != CONFIG_TYPE_LIST && type != CONFIG_TYPE_ARRAY)
			return false;
		for (int i = 0; i < config_setting_length(s); i++)
			if (config_setting_type(config_setting_get_elem(s, i)) !=
			    CONFIG_TYPE_STRING)
				return false;
		return true;
	}
	return false;
}

static const struct key *find_key(const struct key *keys, const char *name,
				  bool deid_group)
{
	static const struct key option_key = { "", KEY_BOOL, NULL };

	for (const struct key *k = keys; k->name; k++)
		if (strcmp(k->name, name) == 0)
			return k;
	if (deid_group && deid_option_from_name(name) != 0)
		return &option_key;
	return NULL;
}

static int check_group(const struct config *cfg, const config_setting_t *group,
		       const struct key *keys, struct error *err)
{
	char what[160];

	for (int i = 0; i < config_setting_length(group); i++) {
		const config_setting_t *s = config_setting_get_elem(group, i);
		const char *name = config_setting_name(s);
		const struct key *k = find_key(keys, name, keys == deid_keys);

		if (k == NULL) {
			snprintf(what, sizeof(what), "unknown setting '%s'",
				 name);
			return setting_error(cfg, s, err, "", what);
		}
		if (!has_kind(s, k->kind)) {
			snprintf(what, sizeof(what), "'%s' must be ", name);
			return setting_error(cfg, s, err, kind_name(k->kind),
					     what);
		}
		if ((k->kind == KEY_GROUP || (k->kind == KEY_STRING_OR_GROUP &&
		     config_setting_type(s) == CONFIG_TYPE_GROUP)) &&
		    check_group(cfg, s, k->members, err) == -1)
			return -1;
		for (int j = 0; k->kind == KEY_GROUPS &&
		     j < config_setting_length(s); j++)
			if (check_group(cfg, config_setting_get_elem(s, j),
					k->members, err) == -1)
				return -1;
	}
	return 0;
}

/* Paths in the file are relative to the file's folder, not to whatever
 * the working directory happens to be (systemd starts us in /). */
static char *resolve_path(const char *base_dir, const char *value)
{
	char *path;

	if (value[0] == '/' || base_dir == NULL)
		return strdup(value);
	if (asprintf(&path, "%s/%s", base_dir, value) == -1)
		return NULL;
	return path;
}

static char *dir_of(const char *path)
{
	char *abs = realpath(path, NULL);
	char *slash;

	if (abs == NULL)
		return NULL;
	slash = strrchr(abs, '/');
	if (slash == abs)
		slash[1] = '\0';
	else
		*slash = '\0';
	return abs;
}

struct reader {
	struct config *cfg;
	config_t *lc;
	config_setting_t *scope;	/* a `forward` group, or NULL: root */
	const char *base_dir;
	struct error *err;
	bool out_of_memory;
};

static const config_setting_t *lookup(struct reader *r, const char *path)
{
	if (r->scope != NULL)
		return config_setting_lookup(r->scope, path);
	return config_lookup(r->lc, path);
}

static int read_string(struct reader *r, const char *path, char **out,
		       bool is_path)
{
	const config_setting_t *s = lookup(r, path);
	const char *value;

	if (s == NULL)
		return 0;
	value = config_setting_get_string(s);
	if (value[0] == '\0' && is_path)
		return setting_error(r->cfg, s, r->err, "",
				     "a folder or file name must not be empty");
	free(*out);
	*out = is_path ? resolve_path(r->base_dir, value) : strdup(value);
	if (*out == NULL)
		r->out_of_memory = true;
	return 0;
}

static int read_long(struct reader *r, const char *path, long *out, long min,
		     long max)
{
	const config_setting_t *s = lookup(r, path);
	long long value;
	char range[96];

	if (s == NULL)
		return 0;
	value = config_setting_get_int64(s);
	if (config_setting_type(s) == CONFIG_TYPE_INT)
		value = config_setting_get_int(s);
	if (value < min || value > max) {
		snprintf(range, sizeof(range), "'%s' must be between %ld and %ld",
			 config_setting_name(s), min, max);
		return setting_error(r->cfg, s, r->err, "", range);
	}
	*out = (long)value;
	return 0;
}

static void read_bool(struct reader *r, const char *path, bool *out)
{
	const config_setting_t *s = lookup(r, path);

	if (s != NULL)
		*out = config_setting_get_bool(s);
}

static void free_strings(char **list)
{
	if (list == NULL)
		return;
	for (char **p = list; *p; p++)
		free(*p);
	free(list);
}

static char **copy_strings(const char *const *src, size_t n)
{
	char **list = calloc(n + 1, sizeof(*list));

	if (list == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		list[i] = strdup(src[i]);
		if (list[i] == NULL) {
			free_strings(list);
			return NULL;
		}
	}
	return list;
}

static int read_strings(struct reader *r, const char *path, char ***out)
{
	const config_setting_t *s = lookup(r, path);
	const char **values;
	int n;

	if (s == NULL)
		return 0;
	n = config_setting_length(s);
	values = calloc((size_t)n + 1, sizeof(*values));
	if (values == NULL) {
		r->out_of_memory = true;
		return 0;
	}
	for (int i = 0; i < n; i++)
		values[i] = config_setting_get_string_elem(s, i);
	free_strings(*out);
	*out = copy_strings(values, (size_t)n);
	if (*out == NULL)
		r->out_of_memory = true;
	free(values);
	return 0;
}

/* A string setting that must be one of a few names. */
static int read_choice(struct reader *r, const char *path,
		       const char *const *names, int *out)
{
	const config_setting_t *s = lookup(r, path);
	char what[160];
	const char *value;

	if (s == NULL)
		return 0;
	value = config_setting_get_string(s);
	for (int i = 0; names[i]; i++) {
		if (strcmp(value, names[i]) == 0) {
			*out = i;
			return 0;
		}
	}
	snprintf(what, sizeof(what), "'%s' is not a valid value for '%s'",
		 value, config_setting_name(s));
	return setting_error(r->cfg, s, r->err, "", what);
}

static int read_required(struct reader *r, const char *key, char **out)
{
	if (read_string(r, key, out, true) == -1)
		return -1;
	if (*out == NULL && !r->out_of_memory)
		return error_set(r->err, ERROR_SETUP, 0,
				 "%s: '%s' is required", r->cfg->path, key);
	return 0;
}

/* The folder, given alone or as quarantine.folder beside its retention. */
static int read_quarantine(struct reader *r)
{
	const config_setting_t *s = lookup(r, "quarantine");

	if (s == NULL || config_setting_type(s) != CONFIG_TYPE_GROUP)
		return read_required(r, "quarantine", &r->cfg->quarantine);
	if (read_required(r, "quarantine.folder", &r->cfg->quarantine) == -1)
		return -1;
	return read_long(r, "quarantine.max_age_days",
			 &r->cfg->quarantine_max_age_days, 0, 36500);
}

/*
 * Node exporter's textfile collector reads every *.prom file of its
 * folder; one file per configuration, so instances never overwrite each
 * other: dicomsortd.conf -> dicomsortd.prom, research.conf ->
 * dicomsortd-research.prom.
 */
static int default_metrics_file(struct config *cfg)
{
	char stem[NAME_MAX + 1];

	config_stem(cfg, stem, sizeof(stem));
	if (strcmp(stem, "dicomsortd") == 0)
		cfg->metrics_file = strdup(CONFIG_METRICS_DIR "/dicomsortd.prom");
	else if (asprintf(&cfg->metrics_file, CONFIG_METRICS_DIR
			  "/dicomsortd-%s.prom", stem) == -1)
		cfg->metrics_file = NULL;
	return cfg->metrics_file != NULL ? 0 : -1;
}

/* The unit's RuntimeDirectory=dicomsortd: one status file per config. */
static int default_status_file(struct config *cfg)
{
	char stem[NAME_MAX + 1];

	config_stem(cfg, stem, sizeof(stem));
	if (asprintf(&cfg->status_file, CONFIG_RUN_DIR "/%s.status", stem) == -1)
		cfg->status_file = NULL;
	return cfg->status_file != NULL ? 0 : -1;
}

static int read_status_file(struct reader *r)
{
	const config_setting_t *s = lookup(r, "status_file");

	if (s == NULL) {
		if (default_status_file(r->cfg) == -1)
			r->out_of_memory = true;
		return 0;
	}
	if (config_setting_get_string(s)[0] == '\0')
		return 0;	/* "": none */
	return read_string(r, "status_file", &r->cfg->status_file, true);
}

static int read_metrics(struct reader *r)
{
	const config_setting_t *s = lookup(r, "metrics_file");

	if (read_long(r, "metrics_interval_s", &r->cfg->metrics_interval_s,
		      1, 3600) == -1 || read_status_file(r) == -1 ||
	    read_long(r, "study_idle_s", &r->cfg->study_idle_s, 0,
		      7 * 24 * 3600) == -1 ||
	    (lookup(r, "completed") != NULL &&
	     read_string(r, "completed", &r->cfg->completed, true) == -1))
		return -1;
	if (s == NULL) {
		if (default_metrics_file(r->cfg) == -1)
			r->out_of_memory = true;
		return 0;
	}
	if (config_setting_get_string(s)[0] == '\0')
		return 0;	/* "": no metrics file */
	return read_string(r, "metrics_file", &r->cfg->metrics_file, true);
}

static int read_folders(struct reader *r)
{
	struct config *cfg = r->cfg;

	if (read_required(r, "input", &cfg->input) == -1 ||
	    read_required(r, "output", &cfg->output) == -1 ||
	    read_quarantine(r) == -1 ||
	    read_string(r, "processed", &cfg->processed, true) == -1 ||
	    read_string(r, "hold", &cfg->hold, true) == -1 ||
	    read_string(r, "correlation_table", &cfg->correlation_table,
			true) == -1)
		return -1;
	return 0;
}

static int read_processing(struct reader *r)
{
	static const char *const after[] = { "delete", "move", NULL };
	static const char *const targets[] = { "auto", "journal", "stderr",
					       NULL };
	struct config *cfg = r->cfg;
	const config_setting_t *s;
	int after_success = AFTER_SUCCESS_DELETE, target = LOG_TARGET_AUTO;

	if (read_string(r, "layout", &cfg->layout, false) == -1 ||
	    read_string(r, "filename", &cfg->filename, false) == -1 ||
	    read_choice(r, "after_success", after, &after_success) == -1 ||
	    read_choice(r, "log_target", targets, &target) == -1 ||
	    read_long(r, "settle_ms", &cfg->settle_ms, 0, 3600000) == -1 ||
	    read_long(r, "workers", &cfg->workers, 0, 256) == -1 ||
	    read_strings(r, "ignore", &cfg->ignore) == -1)
		return -1;
	cfg->after_success = after_success;
	read_bool(r, "rename_unchanged", &cfg->rename_unchanged);
	cfg->log_target = target;
	s = lookup(r, "profile");
	if (s && deid_profile_from_name(config_setting_get_string(s),
					&cfg->profile) == -1)
		return setting_error(cfg, s, r->err, "",
				     "'profile' must be \"none\", \"seed\" or \"basic\"");
	return 0;
}

static int read_groups(struct reader *r)
{
	struct config *cfg = r->cfg;

	if (read_long(r, "retry.parse_attempts", &cfg->retry.parse_attempts,
		      1, 100) == -1 ||
	    read_long(r, "retry.backoff_ms", &cfg->retry.backoff_ms, 1,
		      3600000) == -1 ||
	    read_long(r, "retry.backoff_max_ms", &cfg->retry.backoff_max_ms,
		      1, 86400000) == -1 ||
	    read_long(r, "rescan.interval_s", &cfg->rescan.interval_s, 0,
		      86400 * 7) == -1 ||
	    read_long(r, "cleanup.min_age_s", &cfg->cleanup.min_age_s, 0,
		      86400 * 365) == -1 ||
	    read_long(r, "shutdown.timeout_s", &cfg->shutdown.timeout_s, 1,
		      3600) == -1 ||
	    /* Deeper than PATH_MAX allows with one-letter names is no
	     * tree a modality makes. */
	    read_long(r, "watch.max_depth", &cfg->watch.max_depth, 1,
		      2048) == -1 ||
	    read_long(r, "watch.unwatched_rescan_s",
		      &cfg->watch.unwatched_rescan_s, 1, 86400) == -1 ||
	    /* 16 TiB: more than any file system the output is likely on. */
	    read_long(r, "limits.max_file_size_mb",
		      &cfg->limits.max_file_size_mb, 0, 16L * 1024 * 1024) == -1)
		return -1;
	read_bool(r, "cleanup.remove_empty_dirs", &cfg->cleanup.remove_empty_dirs);
	return 0;
}

static int read_deid(struct reader *r)
{
	struct config *cfg = r->cfg;
	const config_setting_t *group = lookup(r, "deid");
	const config_setting_t *s;

	if (group == NULL)
		return 0;
	for (int i = 0; i < config_setting_length(group); i++) {
		const config_setting_t *opt = config_setting_get_elem(group, i);
		unsigned bit = deid_option_from_name(config_setting_name(opt));

		if (bit == 0)
			continue;
		if (config_setting_get_bool(opt))
			cfg->deid.options |= bit;
		else
			cfg->deid.options &= ~bit;
	}
	if (read_string(r, "deid.secret", &cfg->deid.secret, true) == -1 ||
	    read_strings(r, "deid.safe_private", &cfg->deid.safe_private) == -1 ||
	    read_string(r, "deid.pseudonym_prefix", &cfg->deid.pseudonym_prefix,
			false) == -1 ||
	    read_string(r, "deid.patient_name", &cfg->deid.patient_name,
			false) == -1 ||
	    read_long(r, "deid.max_date_shift_days",
		      &cfg->deid.max_date_shift_days, 1, 36500) == -1 ||
	    read_strings(r, "deid.burned_in_modalities",
			 &cfg->deid.burned_in_modalities) == -1 ||
	    read_strings(r, "deid.burned_in_sop_classes",
			 &cfg->deid.burned_in_sop_classes) == -1)
		return -1;
	read_bool(r, "deid.allow_burned_in", &cfg->deid.allow_burned_in);
	s = lookup(r, "deid.unlisted");
	if (s && strcmp(config_setting_get_string(s), "keep") == 0)
		cfg->deid.keep_unlisted = true;
	else if (s && strcmp(config_setting_get_string(s), "remove") != 0)
		return setting_error(cfg, s, r->err, "",
				     "'unlisted' must be \"remove\" or \"keep\"");
	s = lookup(r, "deid.unknown_id");
	if (s && deid_unknown_id_from_name(config_setting_get_string(s),
					   &cfg->deid.unknown_id) == -1)
		return setting_error(cfg, s, r->err, "",
				     "'unknown_id' must be \"keep\", \"pseudonymize\", \"reject\" or \"hold\"");
	/* Without a table no PatientID is ever known: every file would
	 * wait in hold for a table that never comes. */
	if (s && cfg->deid.unknown_id == DEID_UNKNOWN_HOLD &&
	    cfg->correlation_table == NULL)
		return setting_error(cfg, s, r->err, "",
				     "deid.unknown_id = \"hold\" needs 'correlation_table' "
				     "(without one every file would be held forever)");
	return 0;
}

/* ---- forward = ( { ... }, ... ) ---- */

/* A destination's name names its outbox folder and appears in records:
 * nothing that could climb out of the folder or need quoting. */
static bool good_name(const char *name)
{
	size_t len = strlen(name);

	if (len == 0 || len > CONFIG_FORWARD_NAME_MAX || name[0] == '.')
		return false;
	return strspn(name, "abcdefghijklmnopqrstuvwxyz"
		      "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == len;
}

/* PS3.8 9.3.1.1: an AE title is 1-16 characters of the default
 * repertoire, no backslash or control character, not only spaces. */
static bool good_ae(const char *ae)
{
	size_t len = strlen(ae);

	if (len == 0 || len > 16 || strspn(ae, " ") == len)
		return false;
	for (const char *p = ae; *p; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e ||
		    *p == '\\')
			return false;
	return true;
}

static int dest_error(struct reader *r, const char *key, const char *what)
{
	const config_setting_t *s = config_setting_lookup(r->scope, key);

	return setting_error(r->cfg, s ? s : r->scope, r->err, "", what);
}

static void forward_defaults(struct config_forward *f)
{
	f->tls_verify = true;
	f->associations = 1;
	f->files_per_association = 50;
	f->connect_timeout_s = 10;
	f->acse_timeout_s = 30;
	f->dimse_timeout_s = 60;
	f->timeout_s = 300;
	f->retry_min_ms = 1000;
	f->retry_max_ms = 300000;
}

static int read_dest_values(struct reader *r, struct config_forward *f)
{
	if (read_string(r, "name", &f->name, false) == -1 ||
	    read_string(r, "host", &f->host, false) == -1 ||
	    read_long(r, "port", &f->port, 1, 65535) == -1 ||
	    read_string(r, "called_ae", &f->called_ae, false) == -1 ||
	    read_string(r, "calling_ae", &f->calling_ae, false) == -1 ||
	    read_string(r, "tls_ca_file", &f->tls_ca_file, true) == -1 ||
	    read_string(r, "tls_cert_file", &f->tls_cert_file, true) == -1 ||
	    read_string(r, "tls_key_file", &f->tls_key_file, true) == -1 ||
	    read_string(r, "stow_url", &f->stow_url, false) == -1 ||
	    read_string(r, "token_file", &f->token_file, true) == -1 ||
	    read_string(r, "basic_auth_file", &f->basic_auth_file, true) == -1 ||
	    read_long(r, "associations", &f->associations, 1, 64) == -1 ||
	    read_long(r, "files_per_association", &f->files_per_association,
		      1, 10000) == -1 ||
	    read_long(r, "connect_timeout_s", &f->connect_timeout_s, 1,
		      3600) == -1 ||
	    read_long(r, "acse_timeout_s", &f->acse_timeout_s, 1, 3600) == -1 ||
	    read_long(r, "dimse_timeout_s", &f->dimse_timeout_s, 1, 3600) == -1 ||
	    read_long(r, "timeout_s", &f->timeout_s, 1, 86400) == -1 ||
	    read_long(r, "retry_min_ms", &f->retry_min_ms, 10, 3600000) == -1 ||
	    read_long(r, "retry_max_ms", &f->retry_max_ms, 10, 86400000) == -1)
		return -1;
	read_bool(r, "tls", &f->tls);
	read_bool(r, "tls_verify", &f->tls_verify);
	read_bool(r, "allow_conversion", &f->allow_conversion);
	return 0;
}

/* A DICOM destination needs its address and both AE titles; DICOMweb
 * keys make no sense on it, and the other way round. */
static int check_dimse_dest(struct reader *r, const struct config_forward *f)
{
	static const char *const dimse_only[] = { "token_file",
		"basic_auth_file", NULL };

	for (int i = 0; dimse_only[i]; i++)
		if (config_setting_lookup(r->scope, dimse_only[i]))
			return dest_error(r, dimse_only[i], "only a DICOMweb "
					  "destination (stow_url) takes this");
	if (f->host == NULL || f->host[0] == '\0')
		return dest_error(r, "host", "a DICOM destination needs 'host'");
	if (config_setting_lookup(r->scope, "port") == NULL)
		return dest_error(r, "name", "a DICOM destination needs 'port'");
	if (f->called_ae == NULL || !good_ae(f->called_ae))
		return dest_error(r, "called_ae", "'called_ae' must be an AE "
				  "title: 1-16 printable characters, no '\\'");
	if (f->calling_ae == NULL || !good_ae(f->calling_ae))
		return dest_error(r, "calling_ae", "'calling_ae' must be an AE "
				  "title: 1-16 printable characters, no '\\'");
	if (!f->tls && (f->tls_ca_file || f->tls_cert_file || f->tls_key_file))
		return dest_error(r, f->tls_ca_file ? "tls_ca_file" :
				  f->tls_cert_file ? "tls_cert_file" :
				  "tls_key_file", "TLS files need 'tls = true'");
	if ((f->tls_cert_file == NULL) != (f->tls_key_file == NULL))
		return dest_error(r, f->tls_cert_file ? "tls_cert_file" :
				  "tls_key_file", "'tls_cert_file' and "
				  "'tls_key_file' go together");
	if (f->tls && f->tls_verify && f->tls_ca_file == NULL)
		return dest_error(r, "tls", "'tls_verify' needs 'tls_ca_file' "
				  "(the CA that signed the peer's certificate)");
	return 0;
}

static int check_stow_dest(struct reader *r, const struct config_forward *f)
{
	static const char *const stow_not[] = { "host", "port", "called_ae",
		"calling_ae", "tls", "tls_cert_file", "tls_key_file",
		"allow_conversion", "acse_timeout_s", "dimse_timeout_s", NULL };

	for (int i = 0; stow_not[i]; i++)
		if (config_setting_lookup(r->scope, stow_not[i]))
			return dest_error(r, stow_not[i], "a DICOMweb destination "
					  "(stow_url) does not take this");
	if (strncmp(f->stow_url, "https://", 8) != 0 &&
	    strncmp(f->stow_url, "http://", 7) != 0)
		return dest_error(r, "stow_url", "'stow_url' must start with "
				  "http:// or https://");
	if (strpbrk(f->stow_url, " \t\r\n") != NULL)
		return dest_error(r, "stow_url", "'stow_url' must not hold "
				  "white space");
	if (f->token_file && f->basic_auth_file)
		return dest_error(r, "basic_auth_file", "'token_file' and "
				  "'basic_auth_file' exclude each other");
	return 0;
}

static int read_dest(struct reader *r, struct config_forward *f, size_t index)
{
	forward_defaults(f);
	if (read_dest_values(r, f) == -1)
		return -1;
	if (r->out_of_memory)
		return 0;
	if (f->name == NULL || !good_name(f->name))
		return dest_error(r, "name", "each destination needs a 'name' of "
				  "1-64 letters, digits, '.', '_' or '-', not "
				  "starting with '.'");
	for (size_t i = 0; i < index; i++)
		if (strcmp(r->cfg->forward[i].name, f->name) == 0)
			return dest_error(r, "name", "two destinations have "
					  "this name");
	if (f->retry_max_ms < f->retry_min_ms)
		return dest_error(r, "retry_max_ms", "'retry_max_ms' is less "
				  "than 'retry_min_ms'");
	if ((f->host != NULL) == (f->stow_url != NULL))
		return dest_error(r, "name", "a destination needs either 'host' "
				  "(DICOM) or 'stow_url' (DICOMweb), not both");
	f->kind = f->stow_url ? FORWARD_STOW : FORWARD_DIMSE;
	return f->kind == FORWARD_STOW ? check_stow_dest(r, f) :
	       check_dimse_dest(r, f);
}

static int read_forward(struct reader *r)
{
	config_setting_t *list = config_lookup(r->lc, "forward");
	int n, rc = 0;

	if (list == NULL || (n = config_setting_length(list)) == 0)
		return 0;
	r->cfg->forward = calloc((size_t)n, sizeof(*r->cfg->forward));
	if (r->cfg->forward == NULL) {
		r->out_of_memory = true;
		return 0;
	}
	for (int i = 0; i < n && rc == 0; i++) {
		r->scope = config_setting_get_elem(list, (unsigned)i);
		r->cfg->n_forward = (size_t)i + 1;
		rc = read_dest(r, &r->cfg->forward[i], (size_t)i);
	}
	r->scope = NULL;
	return rc;
}

/* Whether path is dir or below it, by name (the folders may not exist
 * yet, so this cannot resolve symlinks). */
static bool inside(const char *path, const char *dir)
{
	size_t len;

	if (path == NULL || dir == NULL)
		return false;
	len = strlen(dir);
	while (len > 1 && dir[len - 1] == '/')
		len--;
	return strncmp(path, dir, len) == 0 &&
	       (path[len] == '\0' || path[len] == '/');
}

/* Rules that span several keys. */
static int check_consistency(struct config *cfg, struct error *err)
{
	if (cfg->after_success == AFTER_SUCCESS_MOVE && cfg->processed == NULL)
		return error_set(err, ERROR_SETUP, 0,
				 "%s: after_success = \"move\" needs 'processed'",
				 cfg->path);
	if (cfg->deid.unknown_id == DEID_UNKNOWN_HOLD && cfg->hold == NULL)
		return error_set(err, ERROR_SETUP, 0,
				 "%s: deid.unknown_id = \"hold\" needs 'hold'",
				 cfg->path);
	if (cfg->profile == DEID_BASIC && cfg->deid.secret == NULL)
		return error_set(err, ERROR_SETUP, 0,
				 "%s: profile \"basic\" needs deid.secret",
				 cfg->path);
	if (inside(cfg->output, cfg->input) || inside(cfg->quarantine, cfg->input) ||
	    inside(cfg->processed, cfg->input) || inside(cfg->hold, cfg->input))
		return error_set(err, ERROR_SETUP, 0,
				 "%s: output, quarantine, processed and hold must not "
				 "be inside input (they would be taken as new files)",
				 cfg->path);
	if (cfg->retry.backoff_max_ms < cfg->retry.backoff_ms)
		return error_set(err, ERROR_SETUP, 0,
				 "%s: retry.backoff_max_ms is less than retry.backoff_ms",
				 cfg->path);
	return 0;
}

static int set_defaults(struct config *cfg, const char *path)
{
	cfg->path = strdup(path);
	cfg->layout = strdup("{PatientID}/{StudyDate}/{SeriesNumber}_{SeriesDescription}/");
	cfg->ignore = copy_strings(default_ignore, 3);
	cfg->profile = DEID_NONE;
	cfg->after_success = AFTER_SUCCESS_DELETE;
	cfg->rename_unchanged = true;
	cfg->settle_ms = 2000;
	cfg->workers = 0;
	cfg->log_target = LOG_TARGET_AUTO;
	cfg->retry.parse_attempts = 3;
	cfg->retry.backoff_ms = 1000;
	cfg->retry.backoff_max_ms = 60000;
	cfg->rescan.interval_s = 300;
	cfg->cleanup.remove_empty_dirs = true;
	cfg->cleanup.min_age_s = 60;
	cfg->shutdown.timeout_s = 10;
	cfg->watch.max_depth = 64;
	cfg->watch.unwatched_rescan_s = 30;
	cfg->metrics_interval_s = 5;
	return cfg->path && cfg->layout && cfg->ignore ? 0 : -1;
}

/*
 * libconfig 1.5 reads an @include'd file through its flex scanner, which
 * exit()s the process when a read fails: "@include "."" names a folder,
 * fopen() accepts it and read() fails. A FIFO would block it for ever. So
 * every file the configuration includes, at any depth, is looked at first:
 * each must be a regular file (one that does not exist is left to
 * libconfig, which reports it). The directive is found as libconfig's
 * scanner finds it: at the start of a line, the name in double quotes with
 * \\ and \" escapes; a NUL ends the name as it does for libconfig.
 */
#define MAX_INCLUDE_DEPTH 10

static int check_includes(const char *path, const char *base_dir, int depth,
			  struct error *err);

static int check_include_line(const char *path, int line, const char *at,
			      const char *base_dir, int depth, struct error *err)
{
	char name[PATH_MAX], full[PATH_MAX * 2];
	size_t n = 0;
	struct stat st;

	at += strspn(at, " \t");
	if (strncmp(at, "@include", 8) != 0 || (at[8] != ' ' && at[8] != '\t'))
		return 0;
	at += 8;
	at += strspn(at, " \t");
	if (*at++ != '"')
		return 0;
	while (*at != '\0' && *at != '"' && *at != '\n' && n + 1 < sizeof(name)) {
		if (at[0] == '\\' && (at[1] == '\\' || at[1] == '"'))
			at++;
		name[n++] = *at++;
	}
	name[n] = '\0';
	if (name[0] == '/' || base_dir == NULL)
		snprintf(full, sizeof(full), "%s", name);
	else
		snprintf(full, sizeof(full), "%s/%s", base_dir, name);
	if (stat(full, &st) == -1)
		return 0;	/* libconfig says it cannot open it */
	if (!S_ISREG(st.st_mode))
		return error_set(err, ERROR_SETUP, 0, "%s:%d: @include \"%s\": "
				 "not a regular file", path, line, name);
	return check_includes(full, base_dir, depth + 1, err);
}

static int check_includes(const char *path, const char *base_dir, int depth,
			  struct error *err)
{
	FILE *f;
	char *text = NULL;
	size_t cap = 0;
	ssize_t len;
	int line = 0, rc = 0;
	struct stat st;

	if (depth > MAX_INCLUDE_DEPTH)	/* as libconfig, which stops there */
		return error_set(err, ERROR_SETUP, 0, "%s: @include nested more "
				 "than %d deep", path, MAX_INCLUDE_DEPTH);
	if (stat(path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
		return error_set(err, ERROR_SETUP, 0, "%s: not a regular file", path);
	f = fopen(path, "re");
	if (f == NULL)
		return 0;	/* reported by config_read_file() */
	while (rc == 0 && (len = getline(&text, &cap, f)) != -1) {
		line++;
		/* getline() keeps NULs; the scanner's C strings stop there */
		rc = check_include_line(path, line, text, base_dir, depth, err);
	}
	free(text);
	fclose(f);
	return rc;
}

static int parse_file(config_t *lc, struct config *cfg, const char *base_dir,
		      struct error *err)
{
	int saved;

	if (check_includes(cfg->path, base_dir, 0, err) == -1)
		return -1;
	if (base_dir != NULL)	/* libconfig strdup()s it unchecked */
		config_set_include_dir(lc, base_dir);
	errno = 0;
	if (config_read_file(lc, cfg->path) == CONFIG_TRUE)
		return 0;
	saved = errno;
	if (config_error_type(lc) == CONFIG_ERR_FILE_IO)
		return error_set(err, ERROR_SETUP, saved ? saved : EISDIR,
				 "%s: cannot read the configuration", cfg->path);
	return error_set(err, ERROR_SETUP, 0, "%s:%d: %s",
			 config_error_file(lc) ? config_error_file(lc) : cfg->path,
			 config_error_line(lc), config_error_text(lc));
}

static long online_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n > 0 ? n : 1;
}

int config_load(struct config *cfg, const char *path, struct error *err)
{
	struct reader r = { .cfg = cfg, .err = err };
	config_t lc;
	char *base_dir;
	int rc = -1;

	memset(cfg, 0, sizeof(*cfg));
	if (set_defaults(cfg, path) == -1) {
		config_release(cfg);
		return error_set(err, ERROR_SETUP, ENOMEM, "%s", path);
	}
	base_dir = dir_of(path);
	config_init(&lc);
	r.lc = &lc;
	r.base_dir = base_dir;
	if (parse_file(&lc, cfg, base_dir, err) == 0 &&
	    check_group(cfg, config_root_setting(&lc), root_keys, err) == 0 &&
	    read_folders(&r) == 0 && read_processing(&r) == 0 &&
	    read_groups(&r) == 0 && read_deid(&r) == 0 &&
	    read_metrics(&r) == 0 && read_forward(&r) == 0) {
		if (r.out_of_memory)
			error_set(err, ERROR_SETUP, ENOMEM, "%s", path);
		else if (check_consistency(cfg, err) == 0)
			rc = 0;
	}
	config_destroy(&lc);
	free(base_dir);
	if (rc == -1) {
		config_release(cfg);
		return -1;
	}
	if (cfg->workers == 0)
		cfg->workers = online_cpus();
	return 0;
}

void config_release(struct config *cfg)
{
	free(cfg->path);
	free(cfg->input);
	free(cfg->output);
	free(cfg->quarantine);
	free(cfg->metrics_file);
	free(cfg->completed);
	free(cfg->status_file);
	free(cfg->layout);
	free(cfg->filename);
	free(cfg->correlation_table);
	free(cfg->processed);
	free(cfg->hold);
	free_strings(cfg->ignore);
	free(cfg->deid.secret);
	free_strings(cfg->deid.safe_private);
	free(cfg->deid.pseudonym_prefix);
	free(cfg->deid.patient_name);
	free_strings(cfg->deid.burned_in_modalities);
	free_strings(cfg->deid.burned_in_sop_classes);
	for (size_t i = 0; i < cfg->n_forward; i++) {
		struct config_forward *f = &cfg->forward[i];

		free(f->name);
		free(f->host);
		free(f->called_ae);
		free(f->calling_ae);
		free(f->tls_ca_file);
		free(f->tls_cert_file);
		free(f->tls_key_file);
		free(f->stow_url);
		free(f->token_file);
		free(f->basic_auth_file);
	}
	free(cfg->forward);
	memset(cfg, 0, sizeof(*cfg));
}

void config_deid_options(const struct config *cfg, struct deid_options *out)
{
	*out = (struct deid_options){
		.profile = cfg->profile,
		.options = cfg->deid.options,
		.unknown_id = cfg->deid.unknown_id,
		.pseudonym_prefix = cfg->deid.pseudonym_prefix,
		.patient_name = cfg->deid.patient_name,
		.max_shift_days = cfg->deid.max_date_shift_days,
		.safe_private = (const char *const *)cfg->deid.safe_private,
		.allow_burned_in = cfg->deid.allow_burned_in,
		.keep_unlisted = cfg->deid.keep_unlisted,
		.burned_in_modalities =
			(const char *const *)cfg->deid.burned_in_modalities,
		.burned_in_sop_classes =
			(const char *const *)cfg->deid.burned_in_sop_classes,
	};
}

unsigned long long config_max_file_size(const struct config *cfg)
{
	return (unsigned long long)cfg->limits.max_file_size_mb * 1024 * 1024;
}

bool config_ignored(const struct config *cfg, const char *base_name)
{
	if (cfg->ignore == NULL)
		return false;
	for (char **glob = cfg->ignore; *glob; glob++)
		if (fnmatch(*glob, base_name, 0) == 0)
			return true;
	return false;
}

void config_stem(const struct config *cfg, char *out, size_t len)
{
	const char *base = strrchr(cfg->path, '/');
	size_t n;

	base = base != NULL ? base + 1 : cfg->path;
	n = strlen(base);
	if (n > 5 && strcmp(base + n - 5, ".conf") == 0)
		n -= 5;
	if (n == 0)
		base = "dicomsortd", n = strlen(base);
	snprintf(out, len, "%.*s", (int)n, base);
}

const struct config_forward *config_forward_find(const struct config *cfg,
						 const char *name)
{
	for (size_t i = 0; i < cfg->n_forward; i++)
		if (strcmp(cfg->forward[i].name, name) == 0)
			return &cfg->forward[i];
	return NULL;
}
