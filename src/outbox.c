/* outbox.c - one destination's durable queue of hard links; see outbox.h. */
#include "dicomsort/outbox.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dicomsort/fsutil.h"
#include "dicomsort/quarantine.h"
#include "dicomsort/records.h"

#define REF_SUFFIX ".ref"
#define REASON_SUFFIX ".reason"

/* Paths, not descriptors, as records.c: the output folder may go and come
 * back while we run; each operation opens the folder afresh. */
struct outbox {
	char *output;
	char *dir;		/* <output>/.dicomsortd-state/outbox/<dest> */
	char *rel;		/* the same, relative to output */
};

static int open_outbox(const struct outbox *ob, struct error *err)
{
	int fd = open(ob->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int outfd;

	if (fd != -1 || errno != ENOENT)
		return fd != -1 ? fd : error_set(err, ERROR_TRANSIENT, errno,
						 "cannot open the outbox %s",
						 ob->dir);
	/* Only what is missing is made (see records.c: ProtectSystem). */
	outfd = fsutil_open_dir(ob->output, true, err);
	if (outfd == -1)
		return -1;
	fd = fsutil_mkdirs_at(outfd, ob->rel, err);
	close(outfd);
	return fd;
}

int outbox_open(struct outbox **out, const char *output_dir, const char *dest,
		struct error *err)
{
	struct outbox *ob = calloc(1, sizeof(*ob));
	int fd;

	*out = NULL;
	if (ob == NULL || (ob->output = strdup(output_dir)) == NULL ||
	    asprintf(&ob->rel, RECORDS_STATE_DIR "/" OUTBOX_DIR "/%s",
		     dest) == -1 ||
	    asprintf(&ob->dir, "%s/%s", output_dir, ob->rel) == -1) {
		if (ob != NULL) {
			free(ob->output);
			free(ob->rel);
		}
		free(ob);
		return error_set(err, ERROR_SETUP, ENOMEM, "out of memory");
	}
	fd = open_outbox(ob, err);
	if (fd == -1) {
		outbox_free(ob);
		return -1;
	}
	close(fd);
	*out = ob;
	return 0;
}

void outbox_free(struct outbox *ob)
{
	if (ob == NULL)
		return;
	free(ob->output);
	free(ob->dir);
	free(ob->rel);
	free(ob);
}

static void name_from_stat(const struct stat *st, char *name, size_t len)
{
	snprintf(name, len, "%llx-%llx.%lx.dcm",
		 (unsigned long long)st->st_ino,
		 (unsigned long long)st->st_mtim.tv_sec,
		 (unsigned long)st->st_mtim.tv_nsec);
}

int outbox_name_of(const char *output_dir, const char *rel, char *name,
		   size_t len, struct error *err)
{
	char path[PATH_MAX * 2];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s", output_dir, rel);
	if (lstat(path, &st) == -1)
		return error_set(err, ERROR_TRANSIENT, errno,
				 "cannot queue %s for forwarding", rel);
	if (!S_ISREG(st.st_mode))
		return error_set(err, ERROR_TRANSIENT, 0, "cannot queue %s for "
				 "forwarding: not a regular file", rel);
	name_from_stat(&st, name, len);
	return 0;
}

/* Write text into dirfd as name: temp file, fsync, rename. */
static int write_small(int dirfd, const char *name, const char *text,
		       struct error *err)
{
	char tmp[64];
	size_t n = strlen(text);
	int fd = fsutil_tmpfile_at(dirfd, tmp, sizeof(tmp), err);

	if (fd == -1)
		return -1;
	if (write(fd, text, n) != (ssize_t)n) {
		int e = errno ? errno : ENOSPC;

		close(fd);
		unlinkat(dirfd, tmp, 0);
		return error_set(err, error_kind_for_output_errno(e), e,
				 "cannot write %s", name);
	}
	if (fsutil_fsync(fd, name, err) == -1 ||
	    renameat(dirfd, tmp, dirfd, name) == -1) {
		if (err->kind == ERROR_NONE)
			error_set(err, ERROR_TRANSIENT, errno, "cannot write %s",
				  name);
		close(fd);
		unlinkat(dirfd, tmp, 0);
		return -1;
	}
	close(fd);
	return 0;
}

/* An output on another mount below the output folder cannot be linked:
 * its bytes are copied in, under the name only once complete. */
static int copy_in(int dirfd, const char *path, const char *name,
		   struct error *err)
{
	char tmp[64];
	struct stat st;
	int in = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC), out, rc = -1;

	if (in == -1 || fstat(in, &st) == -1) {
		if (in != -1)
			close(in);
		return error_set(err, ERROR_TRANSIENT, errno, "cannot read %s",
				 path);
	}
	out = fsutil_tmpfile_at(dirfd, tmp, sizeof(tmp), err);
	if (out != -1 && fsutil_copy_fd(in, out, st.st_size, err) == 0 &&
	    fsutil_fsync(out, "outbox entry", err) == 0 &&
	    fsutil_publish(dirfd, tmp, name, err) != -1)
		rc = 0;
	if (out != -1) {
		close(out);
		unlinkat(dirfd, tmp, 0);	/* left only if not published */
	}
	close(in);
	return rc;
}

int outbox_add(struct outbox *ob, const char *rel, char *name, size_t len,
	       struct error *err)
{
	char path[PATH_MAX * 2], ref[NAME_MAX + 8], text[PATH_MAX + 2];
	int dirfd, rc = 0;
	bool existed = false;

	if (outbox_name_of(ob->output, rel, name, len, err) == -1)
		return -1;
	snprintf(path, sizeof(path), "%s/%s", ob->output, rel);
	dirfd = open_outbox(ob, err);
	if (dirfd == -1)
		return -1;
	/* The .ref first: an entry is never there without it (a .ref
	 * without its entry is swept at the next start). */
	snprintf(ref, sizeof(ref), "%s" REF_SUFFIX, name);
	snprintf(text, sizeof(text), "%s\n", rel);
	if (write_small(dirfd, ref, text, err) == -1) {
		close(dirfd);
		return -1;
	}
	if (linkat(AT_FDCWD, path, dirfd, name, 0) == -1) {
		if (errno == EEXIST)
			existed = true;
		else if (errno == EXDEV || errno == EPERM || errno == EMLINK)
			rc = copy_in(dirfd, path, name, err);
		else
			rc = error_set(err, error_kind_for_output_errno(errno),
				       errno, "cannot queue %s for forwarding",
				       rel);
	}
	if (rc == 0)
		rc = fsutil_fsync(dirfd, "outbox folder", err);
	close(dirfd);
	return rc == 0 && existed ? 1 : rc;
}

static bool has_suffix(const char *name, const char *suffix)
{
	size_t n = strlen(name), s = strlen(suffix);

	return n > s && strcmp(name + n - s, suffix) == 0;
}

/* What a kill left beside the entries: temp files and a .ref whose
 * entry was never linked. */
static void sweep(int dirfd, const char *name)
{
	char entry[NAME_MAX + 1];
	struct stat st;

	if (strncmp(name, FSUTIL_TMP_PREFIX, strlen(FSUTIL_TMP_PREFIX)) == 0) {
		unlinkat(dirfd, name, 0);
		return;
	}
	if (!has_suffix(name, REF_SUFFIX))
		return;
	snprintf(entry, sizeof(entry), "%.*s",
		 (int)(strlen(name) - strlen(REF_SUFFIX)), name);
	if (fstatat(dirfd, entry, &st, AT_SYMLINK_NOFOLLOW) == -1 &&
	    errno == ENOENT)
		unlinkat(dirfd, name, 0);
}

long outbox_scan(struct outbox *ob, void (*fn)(void *ctx, const char *name,
					       time_t since), void *ctx,
		 struct error *err)
{
	int fd = open_outbox(ob, err);
	long n = 0;
	DIR *dir;
	struct dirent *de;

	if (fd == -1)
		return -1;
	dir = fdopendir(fd);
	if (dir == NULL) {
		close(fd);
		return error_set(err, ERROR_TRANSIENT, errno, "%s", ob->dir);
	}
	while ((de = readdir(dir)) != NULL) {
		struct stat st;

		if (de->d_name[0] == '.' || has_suffix(de->d_name, REF_SUFFIX) ||
		    has_suffix(de->d_name, REASON_SUFFIX) ||
		    strcmp(de->d_name, OUTBOX_REJECTED) == 0) {
			sweep(dirfd(dir), de->d_name);
			continue;
		}
		if (fstatat(dirfd(dir), de->d_name, &st,
			    AT_SYMLINK_NOFOLLOW) == -1 || !S_ISREG(st.st_mode) ||
		    strlen(de->d_name) >= OUTBOX_NAME_MAX)
			continue;
		fn(ctx, de->d_name, st.st_ctim.tv_sec);
		n++;
	}
	closedir(dir);
	return n;
}

void outbox_path(const struct outbox *ob, const char *name, char *buf,
		 size_t len)
{
	snprintf(buf, len, "%s/%s", ob->dir, name);
}

void outbox_ref(const struct outbox *ob, const char *name, char *buf,
		size_t len)
{
	char path[PATH_MAX + NAME_MAX + 16];
	ssize_t n;
	int fd;

	buf[0] = '\0';
	snprintf(path, sizeof(path), "%s/%s" REF_SUFFIX, ob->dir, name);
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd == -1)
		return;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n <= 0) {
		buf[0] = '\0';
		return;
	}
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
}

int outbox_done(struct outbox *ob, const char *name, struct error *err)
{
	char path[PATH_MAX + NAME_MAX + 16];

	/* No fsync: an unlink a power loss undoes sends it once more. */
	snprintf(path, sizeof(path), "%s/%s", ob->dir, name);
	if (unlink(path) == -1 && errno != ENOENT)
		return error_set(err, ERROR_TRANSIENT, errno,
				 "cannot remove outbox entry %s", name);
	snprintf(path, sizeof(path), "%s/%s" REF_SUFFIX, ob->dir, name);
	unlink(path);
	return 0;
}

static char *reason_text(const struct outbox *ob, const char *name,
			 const char *reason)
{
	char when[64], ref[PATH_MAX];
	char *text = NULL;
	size_t len = 0;
	time_t now = time(NULL);
	struct tm tm;
	FILE *f = open_memstream(&text, &len);

	if (f == NULL)
		return NULL;
	outbox_ref(ob, name, ref, sizeof(ref));
	gmtime_r(&now, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	quarantine_sidecar_line(f, "file", name);
	quarantine_sidecar_line(f, "output", ref);
	quarantine_sidecar_line(f, "reason", reason);
	fprintf(f, "time: %s\nby: dicomsortd %s\n", when, DICOMSORT_VERSION);
	if (fclose(f) != 0) {
		free(text);
		return NULL;
	}
	return text;
}

int outbox_reject(struct outbox *ob, const char *name, const char *reason,
		  struct error *err)
{
	char side[NAME_MAX + 16], ref[NAME_MAX + 16];
	char *text = reason_text(ob, name, reason);
	int dirfd, rejfd = -1, rc = -1;

	if (text == NULL)
		return error_set(err, ERROR_TRANSIENT, ENOMEM, "reason file");
	dirfd = open_outbox(ob, err);
	if (dirfd != -1)
		rejfd = fsutil_mkdirs_at(dirfd, OUTBOX_REJECTED, err);
	snprintf(side, sizeof(side), "%s" REASON_SUFFIX, name);
	snprintf(ref, sizeof(ref), "%s" REF_SUFFIX, name);
	if (rejfd != -1 && write_small(rejfd, side, text, err) == 0) {
		if (renameat(dirfd, name, rejfd, name) == -1 && errno != ENOENT) {
			error_set(err, ERROR_TRANSIENT, errno,
				  "cannot move %s to rejected/", name);
		} else {
			renameat(dirfd, ref, rejfd, ref);	/* informational */
			if (fsutil_fsync(rejfd, "rejected folder", err) == 0 &&
			    fsutil_fsync(dirfd, "outbox folder", err) == 0)
				rc = 0;
		}
	}
	if (rejfd != -1)
		close(rejfd);
	if (dirfd != -1)
		close(dirfd);
	free(text);
	return rc;
}

/* When name (in rejected/) was refused: its sidecar's mtime, written
 * then; the entry's ctime (its rename) without one. */
static bool rejected_before(int rejfd, const char *name, time_t limit)
{
	char side[NAME_MAX + 16];
	struct stat st;

	snprintf(side, sizeof(side), "%s" REASON_SUFFIX, name);
	if (fstatat(rejfd, side, &st, AT_SYMLINK_NOFOLLOW) == 0)
		return st.st_mtim.tv_sec < limit;
	return fstatat(rejfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	       st.st_ctim.tv_sec < limit;
}

static void read_ref_at(int rejfd, const char *name, char *buf, size_t len)
{
	char ref[NAME_MAX + 16];
	ssize_t n;
	int fd;

	buf[0] = '\0';
	snprintf(ref, sizeof(ref), "%s" REF_SUFFIX, name);
	fd = openat(rejfd, ref, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd == -1)
		return;
	n = read(fd, buf, len - 1);
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
}

long outbox_purge_rejected(struct outbox *ob, time_t limit,
			   void (*fn)(void *ctx, const char *name,
				      const char *ref),
			   void *ctx, struct error *err)
{
	char ref[PATH_MAX], side[NAME_MAX + 16];
	int boxfd = open_outbox(ob, err), rejfd;
	long n = 0;
	struct dirent *de;
	struct stat st;
	DIR *dir;

	if (boxfd == -1)
		return -1;
	rejfd = openat(boxfd, OUTBOX_REJECTED, O_RDONLY | O_DIRECTORY |
		       O_NOFOLLOW | O_CLOEXEC);
	close(boxfd);
	if (rejfd == -1)
		return errno == ENOENT ? 0 : error_set(err, ERROR_TRANSIENT,
						       errno, "%s/" OUTBOX_REJECTED,
						       ob->dir);
	dir = fdopendir(rejfd);
	if (dir == NULL) {
		close(rejfd);
		return error_set(err, ERROR_TRANSIENT, errno, "%s", ob->dir);
	}
	while ((de = readdir(dir)) != NULL) {
		const char *name = de->d_name;

		if (name[0] == '.' || has_suffix(name, REF_SUFFIX) ||
		    has_suffix(name, REASON_SUFFIX) ||
		    fstatat(rejfd, name, &st, AT_SYMLINK_NOFOLLOW) == -1 ||
		    !S_ISREG(st.st_mode) ||
		    !rejected_before(rejfd, name, limit))
			continue;
		read_ref_at(rejfd, name, ref, sizeof(ref));
		fn(ctx, name, ref);
		if (unlinkat(rejfd, name, 0) == -1 && errno != ENOENT) {
			error_set(err, ERROR_TRANSIENT, errno, "cannot remove "
				  "%s/" OUTBOX_REJECTED "/%s", ob->dir, name);
			closedir(dir);
			return -1;
		}
		snprintf(side, sizeof(side), "%s" REASON_SUFFIX, name);
		unlinkat(rejfd, side, 0);
		snprintf(side, sizeof(side), "%s" REF_SUFFIX, name);
		unlinkat(rejfd, side, 0);
		n++;
	}
	closedir(dir);
	return n;
}
