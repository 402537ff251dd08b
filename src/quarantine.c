/* quarantine.c - moving bad input aside with a reason; see quarantine.h. */
#include "dicomsort/quarantine.h"

#include <errno.h>
#include <fcntl.h>
#include <fts.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dicomsort/fsutil.h"

#define REASON_SUFFIX ".reason"

static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Into dirfd under base, numbered on a clash: fsutil_move(), the one
 * safe move. With an entry, its sidecar is written first, under the name
 * the file is about to take, so a quarantined file never stands without
 * its reason (a kill between the two leaves a reason without a file,
 * which the next attempt writes over). */
static int write_sidecar(int dirfd, const char *final,
			 const struct quarantine_entry *e, struct error *err);

static int sidecar_first(void *ctx, int dirfd, const char *name,
			 struct error *err)
{
	return write_sidecar(dirfd, name, ctx, err);
}

static int place(int dirfd, const char *source, const char *base,
		 const struct quarantine_entry *e, char *final,
		 size_t finallen, struct error *err)
{
	struct fsutil_move mv = { .source = source, .dest_dirfd = dirfd,
				  .name = base };

	if (e != NULL) {
		mv.companion = REASON_SUFFIX;
		mv.before_place = sidecar_first;
		mv.ctx = (void *)e;
	}

	if (fsutil_move(&mv, err) == -1)
		return -1;
	snprintf(final, finallen, "%s", mv.final);
	return 0;
}

void quarantine_sidecar_line(FILE *f, const char *key, const char *value)
{
	fprintf(f, "%s: ", key);
	for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
		switch (*p) {
		case '\n': fputs("\\n", f); break;
		case '\r': fputs("\\r", f); break;
		case '\t': fputs("\\t", f); break;
		case '\\': fputs("\\\\", f); break;
		default:
			if (*p < 0x20 || *p == 0x7f)
				fprintf(f, "\\x%02x", *p);
			else
				fputc(*p, f);
		}
	}
	fputc('\n', f);
}

static char *sidecar_text(const char *final, const struct quarantine_entry *e,
			  size_t *len)
{
	char when[64], *text = NULL;
	time_t now = time(NULL);
	struct tm tm;
	FILE *f = open_memstream(&text, len);

	if (f == NULL)
		return NULL;
	gmtime_r(&now, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	quarantine_sidecar_line(f, "file", final);
	quarantine_sidecar_line(f, "source", e->source_rel ? e->source_rel :
				e->source_path);
	quarantine_sidecar_line(f, "reason", e->reason ? e->reason : "");
	quarantine_sidecar_line(f, "rule", e->rule ? e->rule : "");
	fprintf(f, "attempts: %u\ntime: %s\nby: dicomsortd %s\n", e->attempts,
		when, DICOMSORT_VERSION);
	if (e->st != NULL && e->st->st_ino != 0) {
		char mtime[64];

		gmtime_r(&e->st->st_mtim.tv_sec, &tm);
		strftime(mtime, sizeof(mtime), "%Y-%m-%dT%H:%M:%SZ", &tm);
		fprintf(f, "size: %lld\nmtime: %s\n",
			(long long)e->st->st_size, mtime);
	}
	if (e->sha256 != NULL && e->sha256[0])
		quarantine_sidecar_line(f, "sha256", e->sha256);
	if (e->owner != NULL && e->owner[0])
		quarantine_sidecar_line(f, "owner", e->owner);
	if (fclose(f) != 0) {
		free(text);
		return NULL;
	}
	return text;
}

static int write_sidecar(int dirfd, const char *final,
			 const struct quarantine_entry *e, struct error *err)
{
	char tmp[64], name[NAME_MAX + 16];
	size_t n = 0;
	char *text = sidecar_text(final, e, &n);
	int fd;

	if (text == NULL)
		return error_set(err, ERROR_TRANSIENT, ENOMEM,
				 "cannot write reason file");
	fd = fsutil_tmpfile_at(dirfd, tmp, sizeof(tmp), err);
	if (fd == -1) {
		free(text);
		return -1;
	}
	if (write_all(fd, text, n) == -1 || fchmod(fd, 0640) == -1 ||
	    fsync(fd) == -1) {
		error_set(err, ERROR_TRANSIENT, errno, "cannot write reason file");
		free(text);
		close(fd);
		unlinkat(dirfd, tmp, 0);
		return -1;
	}
	free(text);
	close(fd);
	snprintf(name, sizeof(name), "%s" REASON_SUFFIX, final);
	/* Written just before the file takes the name final, which is
	 * free: a sidecar there is an orphan a kill left, and is replaced. */
	if (renameat(dirfd, tmp, dirfd, name) == -1) {
		error_set(err, ERROR_TRANSIENT, errno, "cannot write reason file");
		unlinkat(dirfd, tmp, 0);
		return -1;
	}
	return 0;
}

/*
 * A quarantine name leaves room for a clash suffix (fsutil_clash_name()) and
 * ".reason" within NAME_MAX. A longer one is cut (on a UTF-8 boundary)
 * and gets a hash of the whole name, so two long names that share their
 * start stay apart; the sidecar's "source:" keeps the full original.
 */
#define QUARANTINE_NAME_MAX \
	(NAME_MAX - FSUTIL_CLASH_SUFFIX_MAX - (sizeof(REASON_SUFFIX) - 1))

static void shorten_name(char *base, size_t baselen)
{
	uint64_t h = 14695981039346656037ULL;	/* FNV-1a */
	size_t len = strlen(base), keep;
	char tail[24];

	if (len <= QUARANTINE_NAME_MAX)
		return;
	for (size_t i = 0; i < len; i++)
		h = (h ^ (unsigned char)base[i]) * 1099511628211ULL;
	snprintf(tail, sizeof(tail), "~%016llx", (unsigned long long)h);
	keep = QUARANTINE_NAME_MAX - strlen(tail);
	while (keep > 0 && ((unsigned char)base[keep] & 0xc0) == 0x80)
		keep--;
	snprintf(base + keep, baselen - keep, "%s", tail);
}

static int open_subdir(int quarantine_fd, const char *rel, char *base,
		       size_t baselen, struct error *err)
{
	char dir[PATH_MAX], tmp[PATH_MAX];

	snprintf(tmp, sizeof(tmp), "%s", rel);
	snprintf(base, baselen, "%s", basename(tmp));
	snprintf(tmp, sizeof(tmp), "%s", rel);
	snprintf(dir, sizeof(dir), "%s", strchr(rel, '/') ? dirname(tmp) : "");
	return fsutil_mkdirs_at(quarantine_fd, dir, err);
}

int quarantine_file(int quarantine_fd, const struct quarantine_entry *e,
		    char *dest, size_t destlen, struct error *err)
{
	const char *rel = e->source_rel ? e->source_rel : e->source_path;
	char base[NAME_MAX + 1], final[NAME_MAX + 1];
	int dirfd, rc;

	while (*rel == '/')
		rel++;
	dirfd = open_subdir(quarantine_fd, rel, base, sizeof(base), err);
	if (dirfd == -1)
		return -1;
	shorten_name(base, sizeof(base));
	rc = place(dirfd, e->source_path, base, e, final, sizeof(final), err);
	if (rc == 0)
		rc = fsutil_fsync(dirfd, "quarantine folder", err);
	close(dirfd);
	if (rc == 0) {
		const char *slash = strrchr(rel, '/');
		snprintf(dest, destlen, "%.*s%s%s", slash ? (int)(slash - rel) : 0,
			 rel, slash ? "/" : "", final);
	}
	return rc;
}

int hold_file(int hold_fd, const char *source_path, const char *source_rel,
	      char *dest, size_t destlen, struct error *err)
{
	const char *rel = source_rel ? source_rel : source_path;
	char base[NAME_MAX + 1], final[NAME_MAX + 1];
	const char *slash;
	int dirfd, rc;

	while (*rel == '/')
		rel++;
	dirfd = open_subdir(hold_fd, rel, base, sizeof(base), err);
	if (dirfd == -1)
		return -1;
	rc = place(dirfd, source_path, base, NULL, final, sizeof(final), err);
	close(dirfd);
	slash = strrchr(rel, '/');
	if (rc == 0)
		snprintf(dest, destlen, "%.*s%s%s", slash ? (int)(slash - rel) : 0,
			 rel, slash ? "/" : "", final);
	return rc;
}

/* Back into the input: the watch sees an IN_MOVED_TO and takes it. */
static int release_one(int input_fd, const FTSENT *e, size_t rootlen,
		       struct error *err)
{
	const char *rel = e->fts_path + rootlen;
	char base[NAME_MAX + 1], final[NAME_MAX + 1];
	int dirfd, rc;

	while (*rel == '/')
		rel++;
	dirfd = open_subdir(input_fd, rel, base, sizeof(base), err);
	if (dirfd == -1)
		return -1;
	rc = place(dirfd, e->fts_path, base, NULL, final, sizeof(final), err);
	close(dirfd);
	return rc;
}

long hold_release(const char *hold_dir, const char *input_dir,
		  hold_stop_fn *stop, void *stop_ctx, struct error *err)
{
	char *roots[] = { (char *)hold_dir, NULL };
	int input_fd = fsutil_open_dir(input_dir, false, err);
	long moved = 0;
	FTS *fts;
	FTSENT *e;

	if (input_fd == -1)
		return -1;
	/* A release cut short by a crash may have left a claimed file. */
	fsutil_recover_claims(hold_dir, err);
	error_clear(err);
	fts = fts_open(roots, FTS_PHYSICAL | FTS_NOCHDIR, NULL);
	if (fts == NULL) {
		close(input_fd);
		return error_set(err, ERROR_TRANSIENT, errno, "%s", hold_dir);
	}
	while ((e = fts_read(fts)) != NULL) {
		if (e->fts_info == FTS_DP && e->fts_level > 0)
			rmdir(e->fts_path);	/* emptied: fine if not */
		if (e->fts_info != FTS_F && e->fts_info != FTS_SL &&
		    e->fts_info != FTS_DEFAULT)
			continue;
		if (strncmp(e->fts_name, FSUTIL_TMP_PREFIX,
			    strlen(FSUTIL_TMP_PREFIX)) == 0)
			continue;	/* ours, half made: swept at start */
		if (stop != NULL && stop(stop_ctx))
			break;
		if (release_one(input_fd, e, strlen(hold_dir), err) == -1) {
			moved = -1;
			break;
		}
		moved++;
	}
	fts_close(fts);
	close(input_fd);
	return moved;
}

/* A temp file of ours: ".dicomsort-<random>.tmp", never a claim. */
static bool stale_temp(const char *name)
{
	size_t len = strlen(name), slen = strlen(FSUTIL_TMP_SUFFIX);

	return strncmp(name, FSUTIL_TMP_PREFIX, strlen(FSUTIL_TMP_PREFIX)) == 0 &&
	       strncmp(name, FSUTIL_CLAIM_PREFIX, strlen(FSUTIL_CLAIM_PREFIX)) != 0 &&
	       len > slen && strcmp(name + len - slen, FSUTIL_TMP_SUFFIX) == 0;
}

long quarantine_sweep(const char *dir, struct error *err)
{
	char *roots[] = { (char *)dir, NULL };
	long removed = 0;
	FTS *fts;
	FTSENT *e;

	/* Claims first: a file claimed on its way out (a release) is the
	 * only copy and gets its name back, never swept. */
	if (fsutil_recover_claims(dir, err) < 0)
		return -1;
	fts = fts_open(roots, FTS_PHYSICAL | FTS_NOCHDIR, NULL);
	if (fts == NULL)
		return error_set(err, ERROR_TRANSIENT, errno, "cannot scan %s", dir);
	while ((e = fts_read(fts)) != NULL) {
		if ((e->fts_info == FTS_F || e->fts_info == FTS_SL) &&
		    stale_temp(e->fts_name) && unlink(e->fts_path) == 0)
			removed++;
	}
	fts_close(fts);
	return removed;
}

/* ---- the admin's side: list, requeue, purge ---- */

void quarantine_unescape(const char *in, char *out, size_t outlen)
{
	size_t o = 0;

	if (outlen == 0)
		return;
	for (const char *p = in; *p && o + 1 < outlen; p++) {
		unsigned v;

		if (*p != '\\' || p[1] == '\0') {
			out[o++] = *p;
			continue;
		}
		switch (*++p) {
		case 'n': out[o++] = '\n'; break;
		case 'r': out[o++] = '\r'; break;
		case 't': out[o++] = '\t'; break;
		case 'x':
			if (sscanf(p + 1, "%2x", &v) == 1 && p[1] && p[2]) {
				out[o++] = (char)v;
				p += 2;
			} else {
				out[o++] = 'x';
			}
			break;
		default: out[o++] = *p; break;
		}
	}
	out[o] = '\0';
}

static void sidecar_field(struct quarantine_item *it, const char *key,
			  const char *value)
{
	struct tm tm;

	if (strcmp(key, "reason") == 0)
		quarantine_unescape(value, it->reason, sizeof(it->reason));
	else if (strcmp(key, "rule") == 0)
		quarantine_unescape(value, it->rule, sizeof(it->rule));
	else if (strcmp(key, "source") == 0)
		quarantine_unescape(value, it->source, sizeof(it->source));
	else if (strcmp(key, "owner") == 0)
		quarantine_unescape(value, it->owner, sizeof(it->owner));
	else if (strcmp(key, "sha256") == 0)
		quarantine_unescape(value, it->sha256, sizeof(it->sha256));
	else if (strcmp(key, "attempts") == 0)
		it->attempts = (unsigned)strtoul(value, NULL, 10);
	else if (strcmp(key, "time") == 0) {
		memset(&tm, 0, sizeof(tm));
		if (strptime(value, "%Y-%m-%dT%H:%M:%SZ", &tm) != NULL)
			it->when = timegm(&tm);
	}
}

/* Never follows a symlink; a sidecar is small: 64 KiB is plenty. */
static void read_sidecar(struct quarantine_item *it)
{
	char path[PATH_MAX + 16], *line = NULL;
	size_t cap = 0, total = 0;
	ssize_t len;
	FILE *f;
	int fd;

	snprintf(path, sizeof(path), "%s" REASON_SUFFIX, it->path);
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	if (fd == -1 || (f = fdopen(fd, "r")) == NULL) {
		if (fd != -1)
			close(fd);
		return;
	}
	it->has_sidecar = true;
	while (total < 65536 && (len = getline(&line, &cap, f)) != -1) {
		char *colon = strstr(line, ": ");

		total += (size_t)len;
		if (len > 0 && line[len - 1] == '\n')
			line[len - 1] = '\0';
		if (colon == NULL)
			continue;
		*colon = '\0';
		sidecar_field(it, line, colon + 2);
	}
	free(line);
	fclose(f);
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* "x.reason" is a file of its own only when "x.reason.reason" says so. */
static bool is_sidecar(const FTSENT *e)
{
	char path[PATH_MAX + 16];
	struct stat st;

	if (!ends_with(e->fts_name, REASON_SUFFIX))
		return false;
	snprintf(path, sizeof(path), "%s" REASON_SUFFIX, e->fts_path);
	return lstat(path, &st) == -1;
}

static int by_name(const FTSENT **a, const FTSENT **b)
{
	return strcmp((*a)->fts_name, (*b)->fts_name);
}

long quarantine_walk(const char *dir, quarantine_visit_fn visit, void *ctx,
		     struct error *err)
{
	char *roots[] = { (char *)dir, NULL };
	size_t rootlen = strlen(dir);
	struct quarantine_item *it = malloc(sizeof(*it));
	long n = 0;
	FTS *fts;
	FTSENT *e;

	if (it == NULL)
		return error_set(err, ERROR_TRANSIENT, ENOMEM, "%s", dir);
	fts = fts_open(roots, FTS_PHYSICAL | FTS_NOCHDIR, by_name);
	if (fts == NULL) {
		free(it);
		return error_set(err, ERROR_TRANSIENT, errno, "cannot scan %s", dir);
	}
	while ((e = fts_read(fts)) != NULL) {
		if ((e->fts_info != FTS_F && e->fts_info != FTS_SL) ||
		    strncmp(e->fts_name, FSUTIL_TMP_PREFIX,
			    strlen(FSUTIL_TMP_PREFIX)) == 0 || is_sidecar(e))
			continue;
		memset(it, 0, sizeof(*it));
		it->path = e->fts_path;
		it->rel = e->fts_path + rootlen;
		while (*it->rel == '/')
			it->rel++;
		it->st = *e->fts_statp;
		it->when = it->st.st_ctim.tv_sec;
		read_sidecar(it);
		n++;
		if (visit(ctx, it, err) == -1) {
			n = -1;
			break;
		}
	}
	fts_close(fts);
	free(it);
	return n;
}

static void remove_sidecar(const char *path)
{
	char sidecar[PATH_MAX + 16];

	snprintf(sidecar, sizeof(sidecar), "%s" REASON_SUFFIX, path);
	unlink(sidecar);
}

int quarantine_requeue(int input_fd, const struct quarantine_item *it,
		       char *dest, size_t destlen, struct error *err)
{
	char base[NAME_MAX + 1], final[NAME_MAX + 1];
	const char *slash = strrchr(it->rel, '/');
	int dirfd, rc;

	dirfd = open_subdir(input_fd, it->rel, base, sizeof(base), err);
	if (dirfd == -1)
		return -1;
	rc = place(dirfd, it->path, base, NULL, final, sizeof(final), err);
	if (rc == 0)
		rc = fsutil_fsync(dirfd, "input folder", err);
	close(dirfd);
	if (rc == -1)
		return -1;
	remove_sidecar(it->path);
	snprintf(dest, destlen, "%.*s%s%s", slash ? (int)(slash - it->rel) : 0,
		 it->rel, slash ? "/" : "", final);
	return 0;
}

int quarantine_purge(const struct quarantine_item *it, struct error *err)
{
	if (unlink(it->path) == -1 && errno != ENOENT)
		return error_set(err, ERROR_TRANSIENT, errno, "cannot remove "
				 "a quarantined file");
	remove_sidecar(it->path);
	return 0;
}

int quarantine_lock(const char *dir, bool wait, struct error *err)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd == -1)
		return error_set(err, ERROR_SETUP, errno, "%s", dir);
	while (flock(fd, LOCK_EX | (wait ? 0 : LOCK_NB)) == -1) {
		if (errno == EINTR)
			continue;
		error_set(err, ERROR_TRANSIENT, errno, "%s is busy (a requeue "
			  "or purge is running)", dir);
		close(fd);
		return -1;
	}
	return fd;
}
