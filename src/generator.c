/*
 * generator.c - dicomsortd@NAME.service drop-ins from NAME.conf
 * (generator.h). Runs once per boot and daemon-reload, as root, before any
 * unit starts: it reads files and writes small ones, nothing else.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dicomsort/config.h"
#include "dicomsort/error.h"
#include "dicomsort/generator.h"

/* Folders the daemon writes: input (removes sources), output (with its
 * state and outboxes), quarantine, processed, hold. */
#define MAX_FOLDERS 8

/*
 * A common parent this broad would open other services' data to the
 * instance: the folders then get an entry each instead.
 */
static const char *const too_broad[] = {
	"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32",
	"/lib64", "/libx32", "/media", "/mnt", "/opt", "/proc", "/root",
	"/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/usr/local", "/var",
	"/var/cache", "/var/lib", "/var/log", "/var/spool", "/var/tmp", NULL,
};

static bool is_too_broad(const char *dir)
{
	for (const char *const *p = too_broad; *p != NULL; p++)
		if (strcmp(*p, dir) == 0)
			return true;
	return false;
}

/*
 * path with "//", "/./" and "/x/../" folded, no trailing "/", as systemd
 * reads it (text only: symlinks are the admin's, systemd follows them).
 * NULL on ENOMEM or a path that is not absolute.
 */
static char *normalize(const char *path)
{
	size_t len = strlen(path);
	char *out;
	size_t o = 0;

	if (path[0] != '/' || (out = malloc(len + 2)) == NULL)
		return NULL;
	for (const char *p = path; *p != '\0';) {
		const char *end;
		size_t n;

		while (*p == '/')
			p++;
		end = strchrnul(p, '/');
		n = (size_t)(end - p);
		if (n == 0 || (n == 1 && p[0] == '.')) {
			/* nothing */
		} else if (n == 2 && p[0] == '.' && p[1] == '.') {
			while (o > 0 && out[o - 1] != '/')
				o--;
			if (o > 0)
				o--;	/* the '/' before it */
		} else {
			out[o++] = '/';
			memcpy(out + o, p, n);
			o += n;
		}
		p = end;
	}
	if (o == 0)
		out[o++] = '/';
	out[o] = '\0';
	return out;
}

/* The longest common folder of a and b, cut in place into a. */
static void common_dir(char *a, const char *b)
{
	size_t i = 0, last = 0;

	while (a[i] != '\0' && a[i] == b[i]) {
		if (a[i] == '/')
			last = i;
		i++;
	}
	/* A whole component matched when both end there or go on with '/'. */
	if ((a[i] == '\0' || a[i] == '/') && (b[i] == '\0' || b[i] == '/'))
		last = i;
	a[last == 0 ? 1 : last] = '\0';
}

static void free_paths(char **paths, int n)
{
	for (int i = 0; i < n; i++)
		free(paths[i]);
}

int generator_rw_paths(const char *const *folders, int n, char **out)
{
	char *parent = NULL;
	int k = 0;

	for (int i = 0; i < n; i++) {
		if ((out[i] = normalize(folders[i])) == NULL) {
			free_paths(out, i);
			return -1;
		}
	}
	if (n > 0 && (parent = strdup(out[0])) == NULL) {
		free_paths(out, n);
		return -1;
	}
	for (int i = 1; i < n; i++)
		common_dir(parent, out[i]);
	if (parent != NULL && !is_too_broad(parent)) {
		free_paths(out, n);
		out[0] = parent;
		return 1;
	}
	free(parent);
	/* Each folder, once; a folder below another listed one is covered. */
	for (int i = 0; i < n; i++) {
		bool covered = false;

		for (int j = 0; j < n && !covered; j++) {
			size_t lj;

			if (j == i || out[j] == NULL)
				continue;
			lj = strlen(out[j]);
			covered = strncmp(out[i], out[j], lj) == 0 &&
				(out[i][lj] == '/' || (out[i][lj] == '\0' && j < i));
		}
		if (covered) {
			free(out[i]);
			out[i] = NULL;
		}
	}
	for (int i = 0; i < n; i++)
		if (out[i] != NULL)
			out[k++] = out[i];
	return k;
}

/*
 * Instance names systemd keeps as they are in %i and in the unit name: a
 * name with other characters would need systemd-escape, and %i.conf would
 * then name another file. Not "dicomsortd": that configuration is the
 * plain dicomsortd.service's, and an instance of it would share its status
 * and metrics files.
 */
static bool instance_name_ok(const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || n > 200 || name[0] == '.' || strcmp(name, "dicomsortd") == 0)
		return false;
	for (const char *p = name; *p != '\0'; p++)
		if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-' &&
		    *p != '.')
			return false;
	return true;
}

/* A path as one quoted word of a unit file: "\" and '"' escaped, "%"
 * doubled (a specifier otherwise). Control characters: refused. */
static int put_quoted(FILE *f, int i, const char *prefix, const char *path)
{
	for (const char *p = path; *p != '\0'; p++)
		if (iscntrl((unsigned char)*p))
			return -1;
	fprintf(f, "%s\"%s", i > 0 ? " " : "", prefix);
	for (const char *p = path; *p != '\0'; p++) {
		if (*p == '\\' || *p == '"')
			fputc('\\', f);
		if (*p == '%')
			fputc('%', f);
		fputc(*p, f);
	}
	fputc('"', f);
	return 0;
}

/* The folder a file (metrics, status) is replaced in, when it is not one
 * the template opens already; NULL if none or ENOMEM (then no entry). */
static char *extra_dir(const char *file, const char *template_dir)
{
	char *dir, *slash;

	if (file == NULL || (dir = normalize(file)) == NULL)
		return NULL;
	slash = strrchr(dir, '/');
	slash[slash == dir ? 1 : 0] = '\0';
	if (strcmp(dir, template_dir) == 0 || is_too_broad(dir)) {
		free(dir);
		return NULL;
	}
	return dir;
}

static int write_body(FILE *f, const struct config *cfg, char **rw, int n_rw,
		      const char *const *folders, int n)
{
	char *extra[2] = {
		extra_dir(cfg->metrics_file, CONFIG_METRICS_DIR),
		extra_dir(cfg->status_file, CONFIG_RUN_DIR),
	};
	int rc = 0;

	fprintf(f,
"# Generated by dicomsortd-generator from %s\n"
"# at boot or `systemctl daemon-reload`. Do not edit: change the\n"
"# configuration and run `systemctl daemon-reload`, then restart the\n"
"# instance. A file of the same name in /etc/systemd/system/\n"
"# <this unit>.d/ replaces this one.\n"
"#\n"
"# Why as few entries as possible: systemd makes each ReadWritePaths=\n"
"# entry a bind mount of its own, and rename(2) never crosses mounts. With\n"
"# one entry for the folders' common parent, moves between them are one\n"
"# rename; when that parent would be \"/\" or a system folder, each folder\n"
"# gets its own entry and moves between them copy (safely, but slower).\n"
"# \"-\": a missing folder is the daemon's own clear error, not 226/NAMESPACE.\n"
"\n[Unit]\nRequiresMountsFor=", cfg->path);
	for (int i = 0; i < n; i++)
		rc |= put_quoted(f, i, "", folders[i]);
	fputs("\n\n[Service]\nReadWritePaths=", f);
	for (int i = 0; i < n_rw; i++)
		rc |= put_quoted(f, i, "-", rw[i]);
	fputc('\n', f);
	for (int i = 0; i < 2; i++) {
		if (extra[i] == NULL)
			continue;
		fprintf(f, "# The folder %s is replaced in.\nReadWritePaths=",
			i == 0 ? "metrics_file" : "status_file");
		rc |= put_quoted(f, 0, "-", extra[i]);
		fputc('\n', f);
		free(extra[i]);
	}
	return rc;
}

/* unit_dir/dicomsortd@NAME.service.d/50-folders.conf for cfg. */
static int write_dropin(const char *unit_dir, const char *name,
			const struct config *cfg, struct error *err)
{
	const char *folders[MAX_FOLDERS];
	char *rw[MAX_FOLDERS];
	char dir[4096], file[4200];
	int n = 0, n_rw, rc, failed;
	FILE *f;

	folders[n++] = cfg->input;
	folders[n++] = cfg->output;
	folders[n++] = cfg->quarantine;
	if (cfg->processed != NULL)
		folders[n++] = cfg->processed;
	if (cfg->hold != NULL)
		folders[n++] = cfg->hold;
	/* The manifests' spool (study_idle_s) may sit outside the output. */
	if (cfg->completed != NULL)
		folders[n++] = cfg->completed;
	if ((n_rw = generator_rw_paths(folders, n, rw)) == -1)
		return error_set(err, ERROR_SETUP, ENOMEM, "%s", cfg->path);
	/* A folder that is itself "/" or a system folder: opening it would
	 * hand the instance the whole of it, a typo away from /var/lib. */
	for (int i = 0; i < n_rw; i++) {
		if (is_too_broad(rw[i])) {
			error_set(err, ERROR_SETUP, 0, "%s: the folder %s is a "
				  "system folder; give the instance a folder "
				  "of its own", cfg->path, rw[i]);
			free_paths(rw, n_rw);
			return -1;
		}
	}
	snprintf(dir, sizeof(dir), "%s/dicomsortd@%s.service.d", unit_dir, name);
	snprintf(file, sizeof(file), "%s/" GENERATOR_DROPIN, dir);
	if (mkdir(dir, 0755) == -1 && errno != EEXIST) {
		free_paths(rw, n_rw);
		return error_set(err, ERROR_SETUP, errno, "%s", dir);
	}
	if ((f = fopen(file, "we")) == NULL) {
		free_paths(rw, n_rw);
		return error_set(err, ERROR_SETUP, errno, "%s", file);
	}
	rc = write_body(f, cfg, rw, n_rw, folders, n);
	free_paths(rw, n_rw);
	failed = ferror(f);	/* fclose() runs whatever ferror() says */
	if (fclose(f) != 0)
		failed = 1;
	if (failed || rc != 0) {
		/* No half drop-in: without one the start fails, loudly. */
		int saved = errno;

		unlink(file);
		rmdir(dir);
		return rc != 0 ? error_set(err, ERROR_SETUP, 0, "%s: a folder "
					   "name holds a control character",
					   cfg->path)
			       : error_set(err, ERROR_SETUP, saved, "%s", file);
	}
	return 0;
}

/* NAME of NAME.conf, or NULL when entry is no instance configuration. */
static const char *instance_of(const char *entry, char *name, size_t len)
{
	size_t n = strlen(entry);

	if (n <= 5 || strcmp(entry + n - 5, ".conf") != 0 || n - 5 >= len)
		return NULL;
	memcpy(name, entry, n - 5);
	name[n - 5] = '\0';
	return name;
}

static int one_instance(const char *conf_dir, const char *unit_dir,
			const char *entry, FILE *log)
{
	struct error err = ERROR_INIT;
	struct config cfg;
	char name[256], path[4096];

	if (instance_of(entry, name, sizeof(name)) == NULL ||
	    strcmp(name, "dicomsortd") == 0)
		return 0;
	if (!instance_name_ok(name)) {
		fprintf(log, "dicomsortd-generator: %s/%s: no unit for it: an "
			"instance name may hold only letters, digits, '_', '-' "
			"and '.'\n", conf_dir, entry);
		return 1;
	}
	snprintf(path, sizeof(path), "%s/%s", conf_dir, entry);
	if (config_load(&cfg, path, &err) == -1 ||
	    write_dropin(unit_dir, name, &cfg, &err) == -1) {
		fprintf(log, "dicomsortd-generator: dicomsortd@%s.service gets "
			"no folders: %s\n", name, err.msg);
		config_release(&cfg);
		return 1;
	}
	config_release(&cfg);
	return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

static int is_conf(const struct dirent *d)
{
	return d->d_name[0] != '.';
}

int generator_run(const char *conf_dir, const char *unit_dir, FILE *log)
{
	struct dirent **list;
	int n, bad = 0;

	n = scandir(conf_dir, &list, is_conf, by_name);
	if (n == -1) {
		if (errno == ENOENT)
			return 0;	/* the package is not configured */
		fprintf(log, "dicomsortd-generator: %s: %s\n", conf_dir,
			strerror(errno));
		return 1;
	}
	for (int i = 0; i < n; i++) {
		bad += one_instance(conf_dir, unit_dir, list[i]->d_name, log);
		free(list[i]);
	}
	free(list);
	return bad;
}
