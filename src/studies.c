/* studies.c - study-complete manifests; see studies.h. */
#include "dicomsort/studies.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dicomsort/dicom.h"
#include "dicomsort/fsutil.h"
#include "dicomsort/log.h"
#include "dicomsort/records.h"

#define STATE_SUFFIX ".state"
#define STATE_MAGIC "dicomsortd-study 1"
#define TMP_PREFIX ".tmp-"

struct study {
	struct study *next;
	char key[72];		/* state file stem */
	char uid[65];		/* as stored */
	int64_t first_us;	/* wall clock of the first file noted */
	int64_t last_ms;	/* wall clock of the latest file noted */
};

struct studies {
	pthread_mutex_t lock;
	char *output;
	int output_fd;
	int state_fd;		/* .../studies */
	int completed_fd;
	int64_t idle_ms;
	struct study *open;
};

static int64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A UID names its state file when it is a plain UID; anything else (a
 * hostile value) by a hash, so no value can make a path. */
static void study_key(const char *uid, char *key, size_t len)
{
	uint64_t h = 1469598103934665603ULL;
	size_t n = strlen(uid);

	if (n > 0 && n <= 64 && strspn(uid, "0123456789.") == n &&
	    uid[0] != '.') {
		snprintf(key, len, "%s", uid);
		return;
	}
	for (const unsigned char *p = (const unsigned char *)uid; *p; p++)
		h = (h ^ *p) * 1099511628211ULL;
	snprintf(key, len, "h%016" PRIx64, h);
}

/* Fields are tab-separated; a tab, newline or backslash in a value is
 * escaped so a line is always one record. */
static void put_field(FILE *f, const char *v)
{
	for (; *v; v++) {
		if (*v == '\t')
			fputs("\\t", f);
		else if (*v == '\n')
			fputs("\\n", f);
		else if (*v == '\\')
			fputs("\\\\", f);
		else if (*v == '\r')
			fputs("\\r", f);
		else
			fputc(*v, f);
	}
}

static void unescape(char *s)
{
	char *w = s;

	for (char *r = s; *r; r++) {
		if (*r == '\\' && r[1] != '\0') {
			r++;
			*w++ = *r == 't' ? '\t' : *r == 'n' ? '\n' :
			       *r == 'r' ? '\r' : *r;
		} else {
			*w++ = *r;
		}
	}
	*w = '\0';
}

static struct study *find_study(struct studies *s, const char *key)
{
	for (struct study *st = s->open; st != NULL; st = st->next)
		if (strcmp(st->key, key) == 0)
			return st;
	return NULL;
}

static struct study *add_study(struct studies *s, const char *key,
			       const char *uid, int64_t first_us)
{
	struct study *st = calloc(1, sizeof(*st));

	if (st == NULL)
		return NULL;
	snprintf(st->key, sizeof(st->key), "%s", key);
	snprintf(st->uid, sizeof(st->uid), "%s", uid);
	st->first_us = first_us;
	st->next = s->open;
	s->open = st;
	return st;
}

/* One line, durable before the caller goes on (its `stored` record). */
static int append_line(struct studies *s, struct study *st, bool fresh,
		       const char *series_uid, const char *number,
		       const char *desc, const char *dest, struct error *err)
{
	char name[NAME_MAX + 1];
	int fd;
	FILE *f;
	int rc = 0;

	snprintf(name, sizeof(name), "%s" STATE_SUFFIX, st->key);
	fd = openat(s->state_fd, name, O_WRONLY | O_APPEND | O_CREAT |
		    O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd == -1)
		return error_set(err, ERROR_TRANSIENT, errno,
				 "study state file");
	f = fdopen(fd, "a");
	if (f == NULL) {
		close(fd);
		return error_set(err, ERROR_TRANSIENT, errno,
				 "study state file");
	}
	if (fresh) {
		fprintf(f, STATE_MAGIC "\t%" PRId64 "\t", st->first_us);
		put_field(f, st->uid);
		fputc('\n', f);
	}
	fputs("I\t", f);
	put_field(f, series_uid);
	fputc('\t', f);
	put_field(f, number);
	fputc('\t', f);
	put_field(f, desc);
	fputc('\t', f);
	put_field(f, dest);
	fputc('\n', f);
	if (fflush(f) == EOF || fdatasync(fileno(f)) == -1)
		rc = error_set(err, ERROR_TRANSIENT, errno,
			       "writing a study state file");
	if (fclose(f) == EOF && rc == 0)
		rc = error_set(err, ERROR_TRANSIENT, errno,
			       "writing a study state file");
	if (rc == 0 && fresh)
		rc = fsutil_fsync(s->state_fd, "study state folder", err);
	return rc;
}

static int note(struct studies *s, const char *study_uid,
		const char *series_uid, const char *number, const char *desc,
		const char *dest, struct error *err)
{
	char key[72];
	struct study *st;
	bool fresh = false;
	int rc;

	if (s == NULL || study_uid[0] == '\0')
		return 0;
	study_key(study_uid, key, sizeof(key));
	pthread_mutex_lock(&s->lock);
	st = find_study(s, key);
	if (st == NULL) {
		st = add_study(s, key, study_uid, wall_ms() * 1000);
		fresh = true;
	}
	if (st == NULL) {
		pthread_mutex_unlock(&s->lock);
		return error_set(err, ERROR_TRANSIENT, ENOMEM, "out of memory");
	}
	rc = append_line(s, st, fresh, series_uid, number, desc, dest, err);
	st->last_ms = wall_ms();
	pthread_mutex_unlock(&s->lock);
	return rc;
}

int studies_note(struct studies *s, const struct pipeline_result *res,
		 struct error *err)
{
	return note(s, res->study_uid, res->series_uid, res->series_number,
		    res->series_description, res->dest, err);
}

void studies_recovered(struct studies *s, const char *dest)
{
	struct pipeline_result *res;
	struct dicom_file *file = NULL;
	struct error err = ERROR_INIT;
	char *path = NULL;

	if (s == NULL)
		return;
	res = calloc(1, sizeof(*res));
	if (res == NULL || asprintf(&path, "%s/%s", s->output, dest) == -1) {
		free(res);
		return;
	}
	if (dicom_load(&file, path, &err) == 0) {
		pipeline_result_set_study(res, file);
		snprintf(res->dest, sizeof(res->dest), "%s", dest);
		if (studies_note(s, res, &err) == -1)
			log_msg(LOG_ERR, "%s: cannot note it for its study's "
				"manifest: %s", dest, err.msg);
	}
	dicom_free(file);
	free(path);
	free(res);
}

/* ---- the state files read back ---- */

struct entry {
	char *series_uid, *number, *desc, *dest;
};

struct entries {
	struct entry *e;
	size_t n, cap;
	char uid[65];
	int64_t first_us;
};

static void entry_free(struct entry *e)
{
	free(e->series_uid);
	free(e->number);
	free(e->desc);
	free(e->dest);
}

static void entries_free(struct entries *es)
{
	for (size_t i = 0; i < es->n; i++)
		entry_free(&es->e[i]);
	free(es->e);
}

static int cmp_entries(const void *a, const void *b)
{
	const struct entry *x = a, *y = b;
	int c = strcmp(x->series_uid, y->series_uid);

	return c != 0 ? c : strcmp(x->dest, y->dest);
}

/* Series together, paths in order, each output once (a kill between its
 * note and its record notes it again at start): n log n, for studies of
 * tens of thousands of instances. */
static void sort_unique(struct entries *es)
{
	size_t kept = 0;

	if (es->n == 0)
		return;
	qsort(es->e, es->n, sizeof(*es->e), cmp_entries);
	for (size_t i = 0; i < es->n; i++) {
		if (kept > 0 && strcmp(es->e[kept - 1].dest, es->e[i].dest) == 0
		    && strcmp(es->e[kept - 1].series_uid,
			      es->e[i].series_uid) == 0) {
			entry_free(&es->e[i]);
			continue;
		}
		es->e[kept++] = es->e[i];
	}
	es->n = kept;
}

/* "I\tseries\tnumber\tdesc\tdest": one noted output. */
static void parse_entry(struct entries *es, char *line)
{
	char *f[5];
	struct entry *e;

	for (int i = 0; i < 5; i++) {
		f[i] = line;
		line = i < 4 ? strchr(line, '\t') : NULL;
		if (i < 4 && line == NULL)
			return;	/* a torn last line: a kill mid-write */
		if (line != NULL)
			*line++ = '\0';
	}
	for (int i = 1; i < 5; i++)
		unescape(f[i]);
	if (strcmp(f[0], "I") != 0 || f[4][0] == '\0')
		return;
	if (es->n == es->cap) {
		size_t cap = es->cap ? es->cap * 2 : 64;
		struct entry *g = realloc(es->e, cap * sizeof(*g));

		if (g == NULL)
			return;
		es->e = g;
		es->cap = cap;
	}
	e = &es->e[es->n];
	e->series_uid = strdup(f[1]);
	e->number = strdup(f[2]);
	e->desc = strdup(f[3]);
	e->dest = strdup(f[4]);
	if (e->series_uid && e->number && e->desc && e->dest)
		es->n++;
	else
		entry_free(e);
}

static int read_state(struct studies *s, const char *name,
		      struct entries *es)
{
	int fd = openat(s->state_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	bool header = false;
	FILE *f;

	if (fd == -1 || (f = fdopen(fd, "r")) == NULL) {
		if (fd != -1)
			close(fd);
		return -1;
	}
	while ((len = getline(&line, &cap, f)) > 0) {
		if (line[len - 1] != '\n')
			break;	/* torn */
		line[len - 1] = '\0';
		if (!header) {
			char *t = strchr(line, '\t'), *u;

			if (t == NULL || strncmp(line, STATE_MAGIC "\t",
						 strlen(STATE_MAGIC) + 1) != 0)
				break;
			es->first_us = strtoll(t + 1, &u, 10);
			if (*u == '\t') {
				unescape(u + 1);
				snprintf(es->uid, sizeof(es->uid), "%s", u + 1);
			}
			header = true;
			continue;
		}
		parse_entry(es, line);
	}
	free(line);
	fclose(f);
	return header ? 0 : -1;
}

/* ---- manifests ---- */

static void json_str(FILE *f, const char *v)
{
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p);
		else if (*p < 0x20 || *p == 0x7f)
			fprintf(f, "\\u%04x", *p);
		else
			fputc(*p, f);
	}
	fputc('"', f);
}

static void iso_time(int64_t ms, char *buf, size_t len)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;

	char sec[24];

	gmtime_r(&t, &tm);
	strftime(sec, sizeof(sec), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf, len, "%s.%03dZ", sec, (int)(ms % 1000));
}

/* Keep only the outputs still there as regular files. */
static size_t keep_present(struct studies *s, struct entries *es)
{
	size_t kept = 0;
	struct stat st;

	for (size_t i = 0; i < es->n; i++) {
		if (fstatat(s->output_fd, es->e[i].dest, &st,
			    AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode)) {
			es->e[kept++] = es->e[i];
			continue;
		}
		entry_free(&es->e[i]);
	}
	es->n = kept;
	return kept;
}

static size_t series_count(const struct entries *es)
{
	size_t n = 0;

	for (size_t i = 0; i < es->n; i++)
		n += i == 0 || strcmp(es->e[i - 1].series_uid,
				      es->e[i].series_uid) != 0;
	return n;
}

/* The run of es (sorted) that starts at first: one series. Returns the
 * index after it. */
static size_t write_series(FILE *f, const struct entries *es, size_t first)
{
	const struct entry *s0 = &es->e[first];
	size_t count = 0, end = first;
	bool comma = false;

	while (end < es->n && strcmp(es->e[end].series_uid,
				     s0->series_uid) == 0)
		end++;
	count = end - first;
	fputs("    {\n      \"series_instance_uid\": ", f);
	json_str(f, s0->series_uid);
	fputs(",\n      \"series_number\": ", f);
	json_str(f, s0->number);
	fputs(",\n      \"series_description\": ", f);
	json_str(f, s0->desc);
	fprintf(f, ",\n      \"instances\": %zu,\n      \"paths\": [", count);
	for (size_t i = first; i < end; i++) {
		fputs(comma ? ",\n        " : "\n        ", f);
		json_str(f, es->e[i].dest);
		comma = true;
	}
	fputs("\n      ]\n    }", f);
	return end;
}

static void write_manifest(FILE *f, const struct studies *s,
			   const struct entries *es, int64_t last_ms)
{
	char first[40], last[40], now[40];
	bool comma = false;

	iso_time(es->first_us / 1000, first, sizeof(first));
	iso_time(last_ms, last, sizeof(last));
	iso_time(wall_ms(), now, sizeof(now));
	fputs("{\n  \"study_instance_uid\": ", f);
	json_str(f, es->uid);
	fputs(",\n  \"output\": ", f);
	json_str(f, s->output);
	fprintf(f, ",\n  \"first_arrival\": \"%s\",\n  \"last_arrival\": "
		"\"%s\",\n  \"completed\": \"%s\",\n  \"idle_s\": %" PRId64
		",\n  \"instances\": %zu,\n  \"series\": [\n", first, last,
		now, s->idle_ms / 1000, es->n);
	for (size_t i = 0; i < es->n;) {
		if (comma)
			fputs(",\n", f);
		i = write_series(f, es, i);
		comma = true;
	}
	fputs("\n  ]\n}\n", f);
}

/* temp + fsync + rename without replacing + fsync folder. 1: a manifest
 * of that name is there already (a kill after it, before the state file
 * went). */
static int publish_manifest(struct studies *s, const char *name,
			    const struct entries *es, int64_t last_ms,
			    struct error *err)
{
	char tmp[NAME_MAX + 8];
	int fd, rc;
	FILE *f;

	snprintf(tmp, sizeof(tmp), TMP_PREFIX "%s", name);
	unlinkat(s->completed_fd, tmp, 0);
	fd = openat(s->completed_fd, tmp, O_WRONLY | O_CREAT | O_EXCL |
		    O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd == -1 || (f = fdopen(fd, "w")) == NULL) {
		if (fd != -1)
			close(fd);
		return error_set(err, ERROR_TRANSIENT, errno,
				 "manifest temp file");
	}
	write_manifest(f, s, es, last_ms);
	rc = fflush(f) == EOF || fsync(fileno(f)) == -1 ? -1 : 0;
	if (fclose(f) == EOF)
		rc = -1;
	if (rc == -1) {
		error_set(err, ERROR_TRANSIENT, errno, "writing a manifest");
		unlinkat(s->completed_fd, tmp, 0);
		return -1;
	}
	rc = fsutil_publish(s->completed_fd, tmp, name, err);
	if (rc != 0)
		unlinkat(s->completed_fd, tmp, 0);
	if (rc == 0 && fsutil_fsync(s->completed_fd, "completed folder",
				    err) == -1)
		return -1;
	return rc;
}

static void complete(struct studies *s, struct study *st)
{
	struct entries es = { 0 };
	char state[NAME_MAX + 1], name[NAME_MAX + 1], reason[256];
	struct error err = ERROR_INIT;
	struct audit_record rec = { .event = "study-complete",
				    .priority = LOG_INFO, .reason = reason };
	int rc = 0;

	snprintf(state, sizeof(state), "%s" STATE_SUFFIX, st->key);
	snprintf(es.uid, sizeof(es.uid), "%s", st->uid);
	es.first_us = st->first_us;
	read_state(s, state, &es);
	sort_unique(&es);
	snprintf(name, sizeof(name), "%s-%" PRId64 ".json", st->key,
		 es.first_us);
	if (keep_present(s, &es) > 0)
		rc = publish_manifest(s, name, &es, st->last_ms, &err);
	if (rc == -1) {
		log_msg(LOG_ERR, "study-complete manifest %s: %s (retried)",
			name, err.msg);
		st->last_ms = wall_ms();	/* again after study_idle_s */
		entries_free(&es);
		return;
	}
	if (es.n > 0) {
		snprintf(reason, sizeof(reason), "study %s: %zu instances in "
			 "%zu series", es.uid, es.n, series_count(&es));
		rec.dest = name;
		log_audit(&rec);
	}
	unlinkat(s->state_fd, state, 0);
	fsutil_fsync(s->state_fd, "study state folder", &err);
	entries_free(&es);
}

void studies_complete_due(struct studies *s)
{
	struct study **p;
	int64_t now;

	if (s == NULL)
		return;
	pthread_mutex_lock(&s->lock);
	now = wall_ms();
	p = &s->open;
	while (*p != NULL) {
		struct study *st = *p;

		if (now - st->last_ms < s->idle_ms) {
			p = &st->next;
			continue;
		}
		complete(s, st);
		if (now - st->last_ms < s->idle_ms) {	/* failed: later */
			p = &st->next;
			continue;
		}
		*p = st->next;
		free(st);
	}
	pthread_mutex_unlock(&s->lock);
}

int64_t studies_due_in_ms(struct studies *s)
{
	int64_t due = -1, now;

	if (s == NULL)
		return -1;
	pthread_mutex_lock(&s->lock);
	now = wall_ms();
	for (struct study *st = s->open; st != NULL; st = st->next) {
		int64_t in = st->last_ms + s->idle_ms - now;

		if (in < 0)
			in = 0;
		if (due < 0 || in < due)
			due = in;
	}
	pthread_mutex_unlock(&s->lock);
	return due;
}

/* ---- start ---- */

static void rebuild(struct studies *s)
{
	DIR *d = fdopendir(dup(s->state_fd));
	struct dirent *de;

	if (d == NULL)
		return;
	rewinddir(d);
	while ((de = readdir(d)) != NULL) {
		size_t n = strlen(de->d_name), sl = strlen(STATE_SUFFIX);
		struct entries es = { 0 };
		struct study *st;
		struct stat sb;
		char key[72];

		if (n <= sl || n - sl >= sizeof(key) ||
		    strcmp(de->d_name + n - sl, STATE_SUFFIX) != 0 ||
		    fstatat(s->state_fd, de->d_name, &sb,
			    AT_SYMLINK_NOFOLLOW) == -1 || !S_ISREG(sb.st_mode))
			continue;
		memcpy(key, de->d_name, n - sl);
		key[n - sl] = '\0';
		if (read_state(s, de->d_name, &es) == -1) {
			entries_free(&es);
			continue;
		}
		st = add_study(s, key, es.uid, es.first_us);
		if (st != NULL)
			st->last_ms = (int64_t)sb.st_mtim.tv_sec * 1000 +
				      sb.st_mtim.tv_nsec / 1000000;
		entries_free(&es);
	}
	closedir(d);
}

/* Temp manifests a kill left behind. */
static void drop_temps(struct studies *s)
{
	DIR *d = fdopendir(dup(s->completed_fd));
	struct dirent *de;

	if (d == NULL)
		return;
	rewinddir(d);
	while ((de = readdir(d)) != NULL)
		if (strncmp(de->d_name, TMP_PREFIX, strlen(TMP_PREFIX)) == 0)
			unlinkat(s->completed_fd, de->d_name, 0);
	closedir(d);
}

int studies_open(struct studies **out, const struct config *cfg,
		 struct error *err)
{
	struct studies *s;
	char *completed = NULL;
	int rc = -1;

	*out = NULL;
	if (cfg->study_idle_s <= 0)
		return 0;
	s = calloc(1, sizeof(*s));
	if (s == NULL)
		return error_set(err, ERROR_SETUP, ENOMEM, "out of memory");
	pthread_mutex_init(&s->lock, NULL);
	s->output_fd = s->state_fd = s->completed_fd = -1;
	s->idle_ms = cfg->study_idle_s * 1000;
	*out = s;
	if ((s->output = strdup(cfg->output)) == NULL)
		return error_set(err, ERROR_SETUP, ENOMEM, "out of memory");
	if (cfg->completed == NULL &&
	    asprintf(&completed, "%s/" RECORDS_STATE_DIR "/"
		     STUDIES_COMPLETED_SUBDIR, cfg->output) == -1)
		return error_set(err, ERROR_SETUP, ENOMEM, "out of memory");
	s->output_fd = fsutil_open_dir(cfg->output, true, err);
	if (s->output_fd == -1)
		goto out;
	s->state_fd = fsutil_mkdirs_at(s->output_fd, RECORDS_STATE_DIR "/"
				       STUDIES_STATE_SUBDIR, err);
	if (s->state_fd == -1)
		goto out;
	s->completed_fd = fsutil_open_dir(completed ? completed :
					  cfg->completed, true, err);
	if (s->completed_fd == -1)
		goto out;
	drop_temps(s);
	rebuild(s);
	rc = 0;
out:
	free(completed);
	if (rc == -1 && err->kind != ERROR_SETUP)
		err->kind = ERROR_SETUP;
	return rc;
}

void studies_free(struct studies *s)
{
	if (s == NULL)
		return;
	while (s->open != NULL) {
		struct study *st = s->open;

		s->open = st->next;
		free(st);
	}
	if (s->output_fd != -1)
		close(s->output_fd);
	if (s->state_fd != -1)
		close(s->state_fd);
	if (s->completed_fd != -1)
		close(s->completed_fd);
	pthread_mutex_destroy(&s->lock);
	free(s->output);
	free(s);
}
