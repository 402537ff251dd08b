/* checkconf.c - dicomsortd --check-config; see checkconf.h. */
#include "dicomsort/checkconf.h"

#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <libconfig.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "deid_rules.h"
#include "dicomsort/daemon.h"
#include "dicomsort/dicom.h"
#include "dicomsort/forward.h"
#include "dicomsort/layout.h"
#include "dicomsort/records.h"

enum level { NOTE, WARNING, ERROR };

struct counts {
	int errors, warnings;
};

struct check {
	const struct config *cfg;
	config_t lc;		/* the file again, for each key's file:line */
	bool have_lc;
	const char *user;	/* who the folder checks run as */
	struct counts n;
};

/* One folder the daemon uses, by its key. */
struct folder {
	const char *key;
	const char *path;
	bool usable;		/* exists, is a directory, writable */
};

enum {
	F_INPUT, F_OUTPUT, F_QUARANTINE, F_PROCESSED, F_HOLD,
	F_COMPLETED,		/* the study manifests' spool, when set */
	F_COUNT
};

/* ---- reporting ---- */

/* "FILE:LINE" of key, or "FILE" with "(default)" when the key is absent. */
static void where(struct check *c, const char *key, char *buf, size_t len)
{
	config_setting_t *s = c->have_lc && key ? config_lookup(&c->lc, key) :
			      NULL;

	if (s != NULL && config_setting_source_file(s) != NULL)
		snprintf(buf, len, "%s:%u: %s", config_setting_source_file(s),
			 config_setting_source_line(s), key);
	else if (key != NULL)
		snprintf(buf, len, "%s: %s (default)", c->cfg->path, key);
	else
		snprintf(buf, len, "%s", c->cfg->path);
}

static void report(struct check *c, enum level level, const char *key,
		   const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void report(struct check *c, enum level level, const char *key,
		   const char *fmt, ...)
{
	static const char *const names[] = { "note", "warning", "error" };
	char loc[PATH_MAX + 64], msg[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	where(c, key, loc, sizeof(loc));
	fprintf(stderr, "%s: %s: %s\n", loc, names[level], msg);
	if (level == ERROR)
		c->n.errors++;
	else if (level == WARNING)
		c->n.warnings++;
}

/* ---- the installed unit ---- */

#define UNIT_RW_MAX 64

/* What the unit (with its drop-ins) says that the checks depend on. */
struct unit_info {
	char path[PATH_MAX];	/* "" when no unit is installed */
	char user[64];
	char *rw[UNIT_RW_MAX];	/* ReadWritePaths= entries, prefixes cut */
	size_t nrw;
	bool private_network;	/* PrivateNetwork=yes */
	bool inet;		/* RestrictAddressFamilies= lets AF_INET in */
	bool families_set;	/* ... and that list is restricted at all */
	char allow[1024];	/* IPAddressAllow= entries, space-separated */
};

static void unit_rw_reset(struct unit_info *u)
{
	for (size_t i = 0; i < u->nrw; i++)
		free(u->rw[i]);
	u->nrw = 0;
}

/* One ReadWritePaths= value: a space-separated list; empty resets. The
 * "-" (ignore if missing) and "+" prefixes do not change the mount. */
static void unit_rw_add(struct unit_info *u, char *value)
{
	char *save = NULL;

	if (value[strspn(value, " \t")] == '\0') {
		unit_rw_reset(u);
		return;
	}
	for (char *tok = strtok_r(value, " \t", &save); tok != NULL &&
	     u->nrw < UNIT_RW_MAX; tok = strtok_r(NULL, " \t", &save)) {
		tok += strspn(tok, "-+");
		if (*tok == '/' && (u->rw[u->nrw] = strdup(tok)) != NULL)
			u->nrw++;
	}
}

/* The settings that decide whether forwarding can reach its peers. The
 * lists accumulate over the unit and its drop-ins; an empty assignment
 * resets them. */
static void unit_net(struct unit_info *u, const char *p)
{
	size_t used = strlen(u->allow);

	if (strncmp(p, "PrivateNetwork=", 15) == 0) {
		u->private_network = strcmp(p + 15, "yes") == 0 ||
				     strcmp(p + 15, "true") == 0 ||
				     strcmp(p + 15, "1") == 0;
	} else if (strncmp(p, "RestrictAddressFamilies=", 24) == 0) {
		p += 24;
		u->families_set = *p != '\0';
		if (*p == '\0')
			u->inet = false;
		else if (*p == '~')	/* a deny list: AF_INET unless named */
			u->inet = strstr(p, "AF_INET") == NULL;
		else if (strstr(p, "AF_INET") != NULL)
			u->inet = true;
	} else if (strncmp(p, "IPAddressAllow=", 15) == 0) {
		if (p[15] == '\0')
			u->allow[0] = '\0';
		else if (used + strlen(p + 15) + 2 < sizeof(u->allow))
			snprintf(u->allow + used, sizeof(u->allow) - used, " %s",
				 p + 15);
	}
}

static void unit_read(struct unit_info *u, const char *path)
{
	char *line = NULL;
	size_t cap = 0;
	FILE *f = fopen(path, "re");

	if (f == NULL)
		return;
	while (getline(&line, &cap, f) != -1) {
		char *p = line + strspn(line, " \t");

		p[strcspn(p, "\r\n")] = '\0';
		if (strncmp(p, "User=", 5) == 0 && p[5] != '\0')
			snprintf(u->user, sizeof(u->user), "%s", p + 5);
		else if (strncmp(p, "ReadWritePaths=", 15) == 0)
			unit_rw_add(u, p + 15);
		else
			unit_net(u, p);
	}
	fclose(f);
	free(line);
}

static int conf_name(const struct dirent *e)
{
	size_t n = strlen(e->d_name);

	return n > 5 && strcmp(e->d_name + n - 5, ".conf") == 0;
}

/* Drop-ins apply in the order of their names (systemd.unit(5)). */
static void unit_read_dropins(struct unit_info *u, const char *dir)
{
	struct dirent **names;
	char path[PATH_MAX * 2];
	int n = scandir(dir, &names, conf_name, alphasort);

	for (int i = 0; i < n; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
		unit_read(u, path);
		free(names[i]);
	}
	if (n > 0)
		free(names);
}

/* The installed unit: $DICOMSORTD_CHECK_UNIT (a unit file, with drop-ins
 * in FILE.d/; for tests and staged installs), else the first of
 * CHECKCONF_UNIT_PATHS, with drop-ins from /etc/systemd/system. Without
 * one, the package's default user. */
static void unit_load(struct unit_info *u)
{
	static const char *const paths[] = CHECKCONF_UNIT_PATHS;
	const char *env = getenv("DICOMSORTD_CHECK_UNIT");
	char dropins[PATH_MAX + 8];

	snprintf(u->user, sizeof(u->user), "%s", CHECKCONF_DEFAULT_USER);
	u->path[0] = '\0';
	for (size_t i = 0; env == NULL && i < sizeof(paths) / sizeof(*paths); i++)
		if (access(paths[i], R_OK) == 0) {
			snprintf(u->path, sizeof(u->path), "%s", paths[i]);
			break;
		}
	if (env != NULL && access(env, R_OK) == 0)
		snprintf(u->path, sizeof(u->path), "%s", env);
	if (u->path[0] == '\0')
		return;
	unit_read(u, u->path);
	if (env != NULL)
		snprintf(dropins, sizeof(dropins), "%s.d", env);
	else
		snprintf(dropins, sizeof(dropins), "%s",
			 "/etc/systemd/system/dicomsortd.service.d");
	unit_read_dropins(u, dropins);
}

/* ---- folders, as the service user ---- */

static void owner_text(const struct stat *st, char *buf, size_t len)
{
	struct passwd *pw = getpwuid(st->st_uid);
	struct group *gr = getgrgid(st->st_gid);
	char u[32], g[32];

	snprintf(u, sizeof(u), "%lu", (unsigned long)st->st_uid);
	snprintf(g, sizeof(g), "%lu", (unsigned long)st->st_gid);
	snprintf(buf, len, "mode %04o, owner %s:%s", (unsigned)st->st_mode & 07777,
		 pw ? pw->pw_name : u, gr ? gr->gr_name : g);
}

/* A missing folder other than input is created at start, if its parent
 * lets the service user. */
static void check_missing(struct check *c, const struct folder *f,
			  bool must_exist)
{
	char parent[PATH_MAX], *slash;

	if (must_exist) {
		report(c, ERROR, f->key, "%s does not exist (a typo?); "
		       "dicomsortd never creates its input folder", f->path);
		return;
	}
	snprintf(parent, sizeof(parent), "%s", f->path);
	slash = strrchr(parent, '/');
	if (slash != NULL)
		*(slash == parent ? slash + 1 : slash) = '\0';
	if (access(parent, W_OK | X_OK) == 0)
		report(c, NOTE, f->key, "%s does not exist yet; dicomsortd "
		       "creates it at start (under the shipped unit only "
		       "inside ReadWritePaths=)", f->path);
	else
		report(c, ERROR, f->key, "%s does not exist, and user %s "
		       "cannot create it in %s: %s", f->path, c->user, parent,
		       strerror(errno));
}

/* Create and remove a probe file: the real test of writability (ACLs,
 * read-only mounts, root squash), which access(2) only guesses. */
static int probe_write(const char *dir, char *name, size_t len)
{
	int fd;

	snprintf(name, len, "%s/.dicomsort-check-%ld", dir, (long)getpid());
	fd = open(name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		  0600);
	if (fd == -1)
		return -1;
	close(fd);
	return 0;
}

static void check_folder(struct check *c, struct folder *f, bool must_exist)
{
	char probe[PATH_MAX + 64], owner[128];
	struct stat st;

	f->usable = false;
	if (stat(f->path, &st) == -1) {
		if (errno == ENOENT)
			check_missing(c, f, must_exist);
		else
			report(c, ERROR, f->key, "%s: user %s cannot reach it: "
			       "%s", f->path, c->user, strerror(errno));
		return;
	}
	if (!S_ISDIR(st.st_mode)) {
		report(c, ERROR, f->key, "%s is not a directory", f->path);
		return;
	}
	owner_text(&st, owner, sizeof(owner));
	if (access(f->path, R_OK | X_OK) == -1) {
		report(c, ERROR, f->key, "%s is not readable by user %s (%s)",
		       f->path, c->user, owner);
		return;
	}
	if (probe_write(f->path, probe, sizeof(probe)) == -1) {
		report(c, ERROR, f->key, "%s is not writable by user %s: %s (%s)",
		       f->path, c->user, strerror(errno), owner);
		return;
	}
	unlink(probe);
	f->usable = true;
}

/* systemd's ProtectHome=yes hides these from the service. */
static void check_hidden(struct check *c, const struct folder *f)
{
	static const char *const hidden[] = { "/home", "/root", "/run/user" };

	for (size_t i = 0; i < sizeof(hidden) / sizeof(*hidden); i++) {
		size_t n = strlen(hidden[i]);

		if (strncmp(f->path, hidden[i], n) == 0 &&
		    (f->path[n] == '/' || f->path[n] == '\0'))
			report(c, WARNING, f->key, "%s is below %s, which the "
			       "shipped unit hides (ProtectHome=yes); a drop-in "
			       "needs ProtectHome=read-only and ReadWritePaths=",
			       f->path, hidden[i]);
	}
}

/* Files move from input to these by rename when one file system holds
 * both, else by copy (fsutil's safe move): worth knowing, not an error. */
static void check_rename(struct check *c, const struct folder *from,
			 const struct folder *to)
{
	char src[PATH_MAX + 64], dst[PATH_MAX + 64];

	if (!from->usable || !to->usable || to->path == NULL)
		return;
	if (probe_write(from->path, src, sizeof(src)) == -1)
		return;
	snprintf(dst, sizeof(dst), "%s/%s", to->path, strrchr(src, '/') + 1);
	if (rename(src, dst) == 0) {
		unlink(dst);
		return;
	}
	if (errno == EXDEV)
		report(c, NOTE, to->key, "%s and %s are on different file "
		       "systems or mounts: moves into %s will copy, then remove "
		       "the source", from->path, to->path, to->key);
	else
		report(c, WARNING, to->key, "a rename from %s into %s failed: "
		       "%s", from->path, to->path, strerror(errno));
	unlink(src);
}

static void check_readable(struct check *c, const char *key, const char *path)
{
	int fd;

	if (path == NULL)
		return;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd == -1) {
		report(c, ERROR, key, "%s is not readable by user %s: %s", path,
		       c->user, strerror(errno));
		return;
	}
	close(fd);
}

/*
 * The metrics file's folder (issue 15): missing means no node exporter,
 * and the daemon only warns and keeps sorting, so for the default path
 * these are notes; a metrics_file set on purpose gets warnings.
 */
static void check_metrics(struct check *c)
{
	char dir[PATH_MAX], probe[PATH_MAX + 64], *slash;
	bool chosen = c->have_lc && config_lookup(&c->lc, "metrics_file") != NULL;
	enum level level = chosen ? WARNING : NOTE;
	struct stat st;

	if (c->cfg->metrics_file == NULL)
		return;
	snprintf(dir, sizeof(dir), "%s", c->cfg->metrics_file);
	slash = strrchr(dir, '/');
	if (slash == NULL)
		return;
	*(slash == dir ? slash + 1 : slash) = '\0';
	if (stat(dir, &st) == -1) {
		report(c, level, "metrics_file", "%s does not exist%s: no "
		       "metrics are written until it does (the daemon warns "
		       "and keeps sorting)", dir, chosen ? "" :
		       " (prometheus-node-exporter not installed?)");
	} else if (probe_write(dir, probe, sizeof(probe)) == -1) {
		report(c, level, "metrics_file", "%s is not writable by user "
		       "%s (%s): setfacl -m u:%s:rwx %s, or metrics_file = "
		       "\"\"", dir, c->user, strerror(errno), c->user, dir);
	} else {
		unlink(probe);
	}
}

/* A credential file (token_file, basic_auth_file): as the secret, a
 * regular file nobody else can read, and not empty. */
static void check_credential(struct check *c, const char *dest,
			     const char *what, const char *path)
{
	struct stat st;
	int fd;

	if (path == NULL)
		return;
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd == -1) {
		report(c, ERROR, "forward", "destination %s: %s %s is not "
		       "readable by user %s: %s", dest, what, path, c->user,
		       strerror(errno));
		return;
	}
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode))
		report(c, ERROR, "forward", "destination %s: %s %s is not a "
		       "regular file", dest, what, path);
	else if ((st.st_mode & 077) != 0)
		report(c, ERROR, "forward", "destination %s: %s %s is readable "
		       "by others (mode %04o): chmod 600 it", dest, what, path,
		       (unsigned)st.st_mode & 07777);
	else if (st.st_size == 0)
		report(c, ERROR, "forward", "destination %s: %s %s is empty",
		       dest, what, path);
	close(fd);
}

static void check_forward_files(struct check *c)
{
	for (size_t i = 0; i < c->cfg->n_forward; i++) {
		const struct config_forward *d = &c->cfg->forward[i];

		check_credential(c, d->name, "token_file", d->token_file);
		check_credential(c, d->name, "basic_auth_file",
				 d->basic_auth_file);
		check_credential(c, d->name, "tls_key_file", d->tls_key_file);
		check_readable(c, "forward", d->tls_ca_file);
		check_readable(c, "forward", d->tls_cert_file);
	}
}

static void file_checks(struct check *c, struct folder *f)
{
	for (int i = 0; i < F_COUNT; i++) {
		if (f[i].path == NULL)
			continue;
		check_folder(c, &f[i], i == F_INPUT);
		check_hidden(c, &f[i]);
	}
	check_rename(c, &f[F_INPUT], &f[F_QUARANTINE]);
	check_rename(c, &f[F_INPUT], &f[F_PROCESSED]);
	check_rename(c, &f[F_INPUT], &f[F_HOLD]);
	check_readable(c, "correlation_table", c->cfg->correlation_table);
	check_readable(c, "deid.secret", c->cfg->deid.secret);
	check_metrics(c);
	check_forward_files(c);
}

static int become(const struct passwd *pw)
{
	if (initgroups(pw->pw_name, pw->pw_gid) == -1 ||
	    setgid(pw->pw_gid) == -1 || setuid(pw->pw_uid) == -1)
		return -1;
	return 0;
}

/* Root: the checks run in a child that is the service user, and send
 * their counts back through a pipe. */
static void file_checks_as(struct check *c, struct folder *f, const char *user)
{
	struct passwd *pw = getpwnam(user);
	struct counts got = { 0, 1 };
	int pipefd[2], status;
	pid_t pid;

	if (pw == NULL) {
		report(c, ERROR, NULL, "the service user %s does not exist "
		       "(systemd-sysusers creates it from the package's "
		       "sysusers.d file); folders not checked", user);
		return;
	}
	if (pipe2(pipefd, O_CLOEXEC) == -1) {
		report(c, ERROR, NULL, "pipe: %s", strerror(errno));
		return;
	}
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid == 0) {
		close(pipefd[0]);
		c->n = (struct counts){ 0, 0 };
		if (become(pw) == -1)
			report(c, ERROR, NULL, "cannot switch to user %s: %s",
			       user, strerror(errno));
		else
			file_checks(c, f);
		fflush(stderr);
		if (write(pipefd[1], &c->n, sizeof(c->n)) != sizeof(c->n))
			_exit(1);
		_exit(0);
	}
	close(pipefd[1]);
	if (pid == -1 || read(pipefd[0], &got, sizeof(got)) != sizeof(got))
		got = (struct counts){ 1, 0 };
	close(pipefd[0]);
	if (pid != -1)
		waitpid(pid, &status, 0);
	c->n.errors += got.errors;
	c->n.warnings += got.warnings;
}

/* ---- folders: where they lie relative to each other ---- */

static void resolved(const char *path, char *buf)
{
	if (realpath(path, buf) == NULL)
		snprintf(buf, PATH_MAX, "%s", path);
}

static bool inside(const char *a, const char *b)
{
	size_t n = strlen(b);

	if (n == 1 && b[0] == '/')
		return true;
	return strncmp(a, b, n) == 0 && (a[n] == '/' || a[n] == '\0');
}

/*
 * The manifests hold the stored (maybe de-identified) UIDs, so the spool
 * may live in the output, as its default does - but in its state folder:
 * elsewhere it would sit among the sorted files, where the layout may
 * make a folder of the same name.
 */
static void completed_in_output(struct check *c, const struct folder *f,
				const char *real, const char *output)
{
	char state[PATH_MAX + sizeof(RECORDS_STATE_DIR) + 1];

	if (snprintf(state, sizeof(state), "%s/%s", output,
		     RECORDS_STATE_DIR) >= (int)sizeof(state))
		return;
	if (!inside(real, state))
		report(c, WARNING, f->key, "%s is inside output (%s) but not "
		       "in its %s folder: manifests would sit among the sorted "
		       "files", f->path, output, RECORDS_STATE_DIR);
}

/*
 * Nothing may be inside output (quarantine, processed and hold keep
 * originals with PHI, which must not sit among sorted, maybe de-identified
 * files; input would take its own output) nor inside input (the daemon
 * would take its own quarantine), and no two folders may be one.
 */
static void check_nesting(struct check *c, const struct folder *f)
{
	char real[F_COUNT][PATH_MAX];

	for (int i = 0; i < F_COUNT; i++)
		if (f[i].path != NULL)
			resolved(f[i].path, real[i]);
	for (int i = 0; i < F_COUNT; i++) {
		for (int j = 0; j < F_COUNT; j++) {
			if (i == j || f[i].path == NULL || f[j].path == NULL)
				continue;
			if (strcmp(real[i], real[j]) == 0) {
				if (i < j)
					report(c, ERROR, f[j].key, "%s is the "
					       "same folder as %s", f[j].key,
					       f[i].key);
			} else if (i == F_COMPLETED && j == F_OUTPUT &&
				   inside(real[i], real[j])) {
				completed_in_output(c, &f[i], real[i], real[j]);
			} else if ((j == F_OUTPUT || j == F_INPUT) &&
				   inside(real[i], real[j])) {
				report(c, ERROR, f[i].key, "%s (%s) is inside "
				       "%s (%s)%s", f[i].key, real[i], f[j].key,
				       real[j], j == F_OUTPUT && i != F_INPUT ?
				       ": originals with PHI would sit among "
				       "the sorted files" : "");
			}
		}
	}
}

/* The ReadWritePaths= entry that makes path writable: the longest one
 * containing it (nested entries are nested mounts), or -1. */
static int rw_entry(const struct unit_info *u, const char *path)
{
	int best = -1;

	for (size_t i = 0; i < u->nrw; i++)
		if (inside(path, u->rw[i]) &&
		    (best == -1 || strlen(u->rw[i]) > strlen(u->rw[best])))
			best = (int)i;
	return best;
}

/*
 * Under the unit (ProtectSystem=strict) only ReadWritePaths= is writable,
 * and each entry is a bind mount of its own: rename(2) between two entries
 * fails with EXDEV even on one disk, so such moves copy.
 */
static void check_sandbox(struct check *c, const struct folder *f,
			  const struct unit_info *u)
{
	char real[F_COUNT][PATH_MAX];
	int entry[F_COUNT];

	if (u->path[0] == '\0')
		return;
	for (int i = 0; i < F_COUNT; i++) {
		if (f[i].path == NULL)
			continue;
		resolved(f[i].path, real[i]);
		entry[i] = rw_entry(u, real[i]);
		if (entry[i] == -1)
			report(c, WARNING, f[i].key, "%s is not writable under "
			       "the unit: no ReadWritePaths= entry of %s (or its "
			       "drop-ins) covers it; add one with systemctl edit "
			       "dicomsortd", f[i].path, u->path);
	}
	for (int i = F_QUARANTINE; i < F_COUNT; i++) {
		/* Sources move into these; the manifests never do. */
		if (i == F_COMPLETED || f[i].path == NULL || entry[i] == -1 ||
		    entry[F_INPUT] == -1 || entry[i] == entry[F_INPUT])
			continue;
		report(c, NOTE, f[i].key, "under the unit, %s and %s are "
		       "separate ReadWritePaths= mounts (%s, %s): moves into %s "
		       "will copy; one parent entry keeps them renames",
		       f[F_INPUT].path, f[i].path, u->rw[entry[F_INPUT]],
		       u->rw[entry[i]], f[i].key);
	}
}

/* Whether the unit's IPAddressAllow= names host (an address as written
 * in the configuration, alone or with a /prefix) or allows everything. */
static bool allowed(const struct unit_info *u, const char *host)
{
	const char *p = u->allow;
	size_t n = strlen(host);

	while ((p = strstr(p, host)) != NULL) {
		if ((p == u->allow || p[-1] == ' ') &&
		    (p[n] == '\0' || p[n] == ' ' || p[n] == '/'))
			return true;
		p += n;
	}
	return strstr(u->allow, " any") != NULL;
}

static bool is_address(const char *host)
{
	return strspn(host, "0123456789.:abcdefABCDEF") == strlen(host) &&
	       (strchr(host, '.') != NULL || strchr(host, ':') != NULL);
}

/* Forwarding under the installed unit: without the drop-in of
 * forward.conf.example the unit has no network at all. */
static void check_forward_sandbox(struct check *c, const struct unit_info *u)
{
	if (u->path[0] == '\0' || c->cfg->n_forward == 0)
		return;
	if (u->private_network || (u->families_set && !u->inet)) {
		report(c, WARNING, "forward", "the unit %s has no network (%s): "
		       "no destination can be reached; install the drop-in "
		       "/usr/share/doc/dicomsortd/examples/forward.conf.example "
		       "with the peers' addresses in IPAddressAllow=", u->path,
		       u->private_network ? "PrivateNetwork=yes" :
		       "RestrictAddressFamilies= without AF_INET");
		return;
	}
	for (size_t i = 0; i < c->cfg->n_forward; i++) {
		const struct config_forward *d = &c->cfg->forward[i];

		/* Only an address can be compared; a host name or URL is
		 * left to --probe. */
		if (d->kind == FORWARD_DIMSE && is_address(d->host) &&
		    !allowed(u, d->host))
			report(c, WARNING, "forward", "destination %s: %s is not "
			       "in the unit's IPAddressAllow=: the kernel will "
			       "drop its packets", d->name, d->host);
	}
}

/* ---- templates ---- */

/* Which options would keep the value, for the hint. */
static void keeping_options(const struct deid_rule *r, char *buf, size_t len)
{
	size_t used = 0;

	buf[0] = '\0';
	for (unsigned col = 0; col < DEID_COL_COUNT && used < len; col++)
		if (deid_retention(r->option[col]) > 0)
			used += (size_t)snprintf(buf + used, len - used, "%sdeid.%s",
						 used ? " or " : "",
						 deid_option_name(col));
}

/* Basic keeps PatientID and PatientName (as the new ID and name), and
 * replaces UIDs consistently; whatever it removes, empties or replaces by
 * a dummy makes one folder named UNKNOWN (or the dummy) for all files. */
static void check_basic(struct check *c, const char *key, const char *kw,
			uint32_t tag)
{
	const struct deid_rule *r;
	enum deid_action act;
	char keep[256];
	int column;

	if (c->cfg->profile != DEID_BASIC || tag == TAG_PatientID ||
	    tag == TAG_PatientName || (r = deid_rule_for(tag)) == NULL)
		return;
	act = deid_rule_action(r, c->cfg->deid.options, &column);
	if (act == DEID_ACT_K || act == DEID_ACT_C || act == DEID_ACT_U ||
	    act == DEID_ACT_XZU || act == DEID_ACT_NONE)
		return;
	keeping_options(r, keep, sizeof(keep));
	report(c, WARNING, key, "profile basic %s {%s}, so every file gets the "
	       "same value there%s%s", act == DEID_ACT_D ?
	       "replaces by a dummy value" : "empties or removes", kw,
	       keep[0] ? "; keeps it with " : "", keep);
}

static void check_keyword(struct check *c, const char *key, const char *kw)
{
	char hint[128], suggestion[160] = "";
	uint32_t tag;
	bool known = dicom_tag_from_keyword(kw, &tag) == 0;

	if (known && DCM_GROUP(tag) % 2 == 0) {
		check_basic(c, key, kw, tag);
		return;
	}
	if (dicom_standard_keyword_nocase(kw, hint, sizeof(hint)) == 0)
		snprintf(suggestion, sizeof(suggestion), "; did you mean {%s}?",
			 hint);
	if (known)
		report(c, ERROR, key, "{%s} is a private dictionary entry "
		       "(%04x,%04x), not a standard DICOM keyword%s", kw,
		       DCM_GROUP(tag), DCM_ELEMENT(tag), suggestion);
	else
		report(c, ERROR, key, "{%s} is not a DICOM keyword%s", kw,
		       suggestion);
}

static void check_template(struct check *c, const char *key, const char *tmpl)
{
	struct error err = ERROR_INIT;
	struct layout *layout;

	if (tmpl == NULL || tmpl[0] == '\0')
		return;
	if (layout_compile(&layout, tmpl, &err) == -1) {
		report(c, ERROR, key, "%s", err.msg);
		return;
	}
	for (size_t i = 0; i < layout_placeholder_count(layout); i++)
		check_keyword(c, key, layout_placeholder(layout, i));
	layout_free(layout);
}

/* ---- the correlation table: two old IDs, one new ID ---- */

struct pair {
	char *old_id, *new_id;
	unsigned line;
};

static int by_new_id(const void *a, const void *b)
{
	const struct pair *x = a, *y = b;
	int d = strcmp(x->new_id, y->new_id);

	return d != 0 ? d : (x->line > y->line) - (x->line < y->line);
}

/* The loader's syntax (correlation.h); lines it refuses are its to report. */
static int split_pair(char *line, unsigned lineno, struct pair *p)
{
	static const char seps[] = ", \t\r\n";
	char *a, *b, *rest;

	if (lineno == 1 && strncmp(line, "\xef\xbb\xbf", 3) == 0)
		line += 3;
	a = line + strspn(line, seps);
	if (*a == '\0' || *a == '#')
		return -1;
	b = a + strcspn(a, seps);
	if (*b == '\0')
		return -1;
	*b++ = '\0';
	b += strspn(b, seps);
	rest = b + strcspn(b, seps);
	if (*rest != '\0') {
		*rest++ = '\0';
		if (rest[strspn(rest, seps)] != '\0')
			return -1;
	}
	if (*b == '\0')
		return -1;
	p->old_id = strdup(a);
	p->new_id = strdup(b);
	p->line = lineno;
	return p->old_id && p->new_id ? 0 : (free(p->old_id), free(p->new_id), -1);
}

/* Old IDs are not named: they identify patients. Line numbers do. */
static void report_collisions(struct check *c, struct pair *v, size_t n)
{
	const char *path = c->cfg->correlation_table;

	qsort(v, n, sizeof(*v), by_new_id);
	for (size_t i = 1; i < n; i++) {
		for (size_t j = i; j-- > 0 && strcmp(v[j].new_id, v[i].new_id) == 0;) {
			if (strcmp(v[j].old_id, v[i].old_id) == 0)
				continue;
			report(c, WARNING, "correlation_table", "%s:%u and %s:%u "
			       "map two different old IDs to one new ID '%s': "
			       "their patients would be merged", path, v[j].line,
			       path, v[i].line, v[i].new_id);
			break;
		}
	}
}

static void check_table(struct check *c)
{
	struct pair *v = NULL, p;
	size_t n = 0, cap = 0, len = 0;
	char *line = NULL;
	unsigned lineno = 0;
	FILE *f;

	if (c->cfg->correlation_table == NULL ||
	    (f = fopen(c->cfg->correlation_table, "re")) == NULL)
		return;		/* unreadable: the start check says so */
	while (getline(&line, &len, f) != -1) {
		if (split_pair(line, ++lineno, &p) == -1)
			continue;
		if (n == cap) {
			struct pair *bigger;

			cap = cap ? cap * 2 : 64;
			bigger = realloc(v, cap * sizeof(*v));
			if (bigger == NULL) {
				free(p.old_id);
				free(p.new_id);
				break;
			}
			v = bigger;
		}
		v[n++] = p;
	}
	fclose(f);
	free(line);
	report_collisions(c, v, n);
	for (size_t i = 0; i < n; i++) {
		free(v[i].old_id);
		free(v[i].new_id);
	}
	free(v);
}

/* ---- all of it ---- */

static void open_source(struct check *c)
{
	char dir[PATH_MAX], *slash;

	config_init(&c->lc);
	snprintf(dir, sizeof(dir), "%s", c->cfg->path);
	slash = strrchr(dir, '/');
	if (slash != NULL) {
		*(slash == dir ? slash + 1 : slash) = '\0';
		config_set_include_dir(&c->lc, dir);
	}
	c->have_lc = config_read_file(&c->lc, c->cfg->path) == CONFIG_TRUE;
}

int checkconf_run(const struct config *cfg, const char *user)
{
	struct check c = { .cfg = cfg };
	struct error err = ERROR_INIT;
	struct folder f[F_COUNT] = {
		[F_INPUT] = { "input", cfg->input, false },
		[F_OUTPUT] = { "output", cfg->output, false },
		[F_QUARANTINE] = { "quarantine", cfg->quarantine, false },
		[F_PROCESSED] = { "processed", cfg->processed, false },
		[F_HOLD] = { "hold", cfg->hold, false },
		[F_COMPLETED] = { "completed", cfg->study_idle_s > 0 ?
				  cfg->completed : NULL, false },
	};
	struct unit_info unit = { .nrw = 0 };
	const char *service_user;
	char self[64];
	struct passwd *pw;

	open_source(&c);
	if (dicom_init(&err) == -1)
		report(&c, ERROR, NULL, "%s", err.msg);
	check_template(&c, "layout", cfg->layout);
	check_template(&c, "filename", cfg->filename);
	check_table(&c);
	check_nesting(&c, f);
	/* What the start builds (table, secret, templates), unless the
	 * template checks above already said what it would. */
	if (c.n.errors == 0 && daemon_check_config(cfg, &err) == -1)
		report(&c, ERROR, NULL, "%s", err.msg);
	unit_load(&unit);
	check_sandbox(&c, f, &unit);
	check_forward_sandbox(&c, &unit);
	service_user = user ? user : unit.user;
	if (geteuid() == 0 && user == NULL && unit.path[0] == '\0' &&
	    getpwnam(service_user) == NULL) {
		/* No unit, no --user: the default name was a guess (a build
		 * tree, a test); a named user that is missing is an error. */
		report(&c, WARNING, NULL, "no dicomsortd unit is installed and "
		       "there is no user %s: folders checked as root; name the "
		       "service user with --user", service_user);
		c.user = "root";
		file_checks(&c, f);
	} else if (geteuid() == 0) {
		c.user = service_user;
		file_checks_as(&c, f, c.user);
	} else {
		pw = getpwuid(geteuid());
		snprintf(self, sizeof(self), "%s", pw ? pw->pw_name : "?");
		c.user = self;
		if (strcmp(self, service_user) != 0)
			report(&c, NOTE, NULL, "not root: folders checked as "
			       "user %s, not as the service user %s", self,
			       service_user);
		file_checks(&c, f);
	}
	unit_rw_reset(&unit);
	config_destroy(&c.lc);
	if (c.n.errors > 0) {
		printf("%s: %d error%s, %d warning%s\n", cfg->path, c.n.errors,
		       c.n.errors == 1 ? "" : "s", c.n.warnings,
		       c.n.warnings == 1 ? "" : "s");
		return 2;
	}
	if (c.n.warnings > 0)
		printf("%s: configuration is valid, with %d warning%s\n",
		       cfg->path, c.n.warnings, c.n.warnings == 1 ? "" : "s");
	else
		printf("%s: configuration is valid\n", cfg->path);
	return 0;
}

int checkconf_probe(const struct config *cfg)
{
	int failed = 0;

	for (size_t i = 0; i < cfg->n_forward; i++) {
		const struct config_forward *d = &cfg->forward[i];
		struct error err = ERROR_INIT;
		char peer[PATH_MAX];

		if (d->kind == FORWARD_STOW)
			snprintf(peer, sizeof(peer), "HTTP OPTIONS %s", d->stow_url);
		else
			snprintf(peer, sizeof(peer), "C-ECHO %s@%s:%ld%s",
				 d->called_ae, d->host, d->port,
				 d->tls ? " (TLS)" : "");
		if (forward_probe(d, &err) == 0) {
			printf("forward %s: %s: ok\n", d->name, peer);
			continue;
		}
		fprintf(stderr, "%s: forward %s: error: %s: %s\n", cfg->path,
			d->name, peer, err.msg);
		failed++;
	}
	if (cfg->n_forward == 0)
		printf("%s: no destinations to probe\n", cfg->path);
	return failed ? 2 : 0;
}
