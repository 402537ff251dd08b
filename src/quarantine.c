/* quarantine.c - moving bad input aside with a reason; see quarantine.h. */
#include "dicomsort/quarantine.h"

#include <errno.h>
#include <fcntl.h>
#include <fts.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dicomsort/fsutil.h"

#define MAX_NUMBERED_NAMES 10000
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

/* Across file systems: copy the bytes into a temp file of the quarantine
 * and sync it, so the source can go. */
static int copy_into(int dirfd, const char *source, char *tmp, size_t tmplen,
		     struct error *err)
{
	char buf[65536];
	int in, out;
	ssize_t n;

	in = open(source, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (in == -1)
		return error_set(err, ERROR_TRANSIENT, errno, "cannot open source");
	out = fsutil_tmpfile_at(dirfd, tmp, tmplen, err);
	if (out == -1) {
		close(in);
		return -1;
	}
	while ((n = read(in, buf, sizeof(buf))) > 0)
		if (write_all(out, buf, (size_t)n) == -1)
			break;
	if (n != 0 || fsync(out) == -1) {
		error_set(err, ERROR_TRANSIENT, errno, "cannot copy into quarantine");
		unlinkat(dirfd, tmp, 0);
		close(in);
		close(out);
		return -1;
	}
	close(in);
	close(out);
	return 0;
}

/* Give the file (already inside dirfd as tmp, or still at source when
 * tmp is NULL) a free name derived from base. */
static int place(int dirfd, const char *source, const char *tmp,
		 const char *base, char *final, size_t finallen,
		 struct error *err)
{
	for (unsigned n = 0; n < MAX_NUMBERED_NAMES; n++) {
		char sidecar[NAME_MAX + 16];
		int rc;

		if (fsutil_numbered_name(base, n, final, finallen) == -1)
			return error_set(err, ERROR_INPUT, ENAMETOOLONG, "file name");
		snprintf(sidecar, sizeof(sidecar), "%s" REASON_SUFFIX, final);
		if (faccessat(dirfd, sidecar, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
			continue;	/* keep each file next to its own reason */
		if (tmp != NULL)
			rc = fsutil_publish(dirfd, tmp, final, err);
		else if (renameat2(AT_FDCWD, source, dirfd, final,
				   RENAME_NOREPLACE) == 0)
			rc = 0;
		else if (errno == EEXIST)
			rc = 1;
		else
			return error_set(err, ERROR_TRANSIENT, errno,
					 "cannot move into quarantine");
		if (rc != 1)
			return rc;
	}
	return error_set(err, ERROR_TRANSIENT, 0, "too many quarantined files "
			 "of this name");
}

static int write_sidecar(int dirfd, const char *final,
			 const struct quarantine_entry *e, struct error *err)
{
	char tmp[64], name[NAME_MAX + 16], when[64], text[4096];
	time_t now = time(NULL);
	struct tm tm;
	int fd, n;

	gmtime_r(&now, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	n = snprintf(text, sizeof(text),
		     "file: %s\nsource: %s\nreason: %s\nrule: %s\n"
		     "attempts: %u\ntime: %s\nby: dicomsortd %s\n", final,
		     e->source_rel ? e->source_rel : e->source_path, e->reason,
		     e->rule, e->attempts, when, DICOMSORT_VERSION);
	fd = fsutil_tmpfile_at(dirfd, tmp, sizeof(tmp), err);
	if (fd == -1)
		return -1;
	if (write_all(fd, text, (size_t)n) == -1 || fchmod(fd, 0640) == -1 ||
	    fsync(fd) == -1) {
		error_set(err, ERROR_TRANSIENT, errno, "cannot write reason file");
		close(fd);
		unlinkat(dirfd, tmp, 0);
		return -1;
	}
	close(fd);
	snprintf(name, sizeof(name), "%s" REASON_SUFFIX, final);
	/* The name was checked free in place(); a stale one is replaced. */
	if (renameat(dirfd, tmp, dirfd, name) == -1) {
		error_set(err, ERROR_TRANSIENT, errno, "cannot write reason file");
		unlinkat(dirfd, tmp, 0);
		return -1;
	}
	return 0;
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
	char base[NAME_MAX + 1], final[NAME_MAX + 1], tmp[64];
	int dirfd, rc;
	struct stat st;

	while (*rel == '/')
		rel++;
	dirfd = open_subdir(quarantine_fd, rel, base, sizeof(base), err);
	if (dirfd == -1)
		return -1;
	rc = place(dirfd, e->source_path, NULL, base, final, sizeof(final), err);
	if (rc == -1 && err->errnum == EXDEV &&
	    lstat(e->source_path, &st) == 0 && S_ISREG(st.st_mode)) {
		error_clear(err);
		rc = copy_into(dirfd, e->source_path, tmp, sizeof(tmp), err);
		if (rc == 0)
			rc = place(dirfd, NULL, tmp, base, final, sizeof(final), err);
		if (rc == 0 && unlink(e->source_path) == -1)
			rc = error_set(err, ERROR_TRANSIENT, errno,
				       "cannot remove source after copying");
	}
	if (rc == 0)
		rc = write_sidecar(dirfd, final, e, err);
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
	rc = place(dirfd, source_path, NULL, base, final, sizeof(final), err);
	if (rc == 0)
		rc = fsutil_fsync(dirfd, "hold folder", err);
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
	rc = place(dirfd, e->fts_path, NULL, base, final, sizeof(final), err);
	close(dirfd);
	return rc;
}

long hold_release(const char *hold_dir, const char *input_dir, struct error *err)
{
	char *roots[] = { (char *)hold_dir, NULL };
	int input_fd = fsutil_open_dir(input_dir, false, err);
	long moved = 0;
	FTS *fts;
	FTSENT *e;

	if (input_fd == -1)
		return -1;
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
