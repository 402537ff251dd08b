/* records.c - `stored` records that survive SIGKILL; see records.h. */
#include "dicomsort/records.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "dicomsort/fsutil.h"

#define MARKER_MAX 16384
#define MARKER_SUFFIX ".pending"

/* The fields of a marker, in this order, NUL-terminated each: values
 * are file names and DICOM-derived text, which may hold any byte but NUL. */
enum field {
	F_INO, F_SIZE, F_MTIME, F_EVENT, F_SOURCE, F_DEST, F_SOP, F_PROFILE,
	F_TABLE, F_SHA256, F_OWNER, F_COUNT
};

/* Paths, not descriptors: the output folder may be read-only at start,
 * or removed and made again while we run (the pipeline re-creates it);
 * each marker opens its folder afresh, creating it if need be. */
struct records {
	char *output;
	char *state;		/* <output>/.dicomsortd-state/pending */
};

int records_open(struct records **out, const char *output_dir,
		 struct error *err)
{
	struct records *r = calloc(1, sizeof(*r));

	*out = NULL;
	if (r == NULL || (r->output = strdup(output_dir)) == NULL ||
	    asprintf(&r->state, "%s/" RECORDS_STATE_DIR "/pending",
		     output_dir) == -1) {
		if (r != NULL)
			free(r->output);
		free(r);
		return error_set(err, ERROR_SETUP, ENOMEM, "out of memory");
	}
	*out = r;
	return 0;
}

void records_free(struct records *r)
{
	char top[PATH_MAX];

	if (r == NULL)
		return;
	/* Empty at a clean stop: the folders go (fine if not). */
	rmdir(r->state);
	snprintf(top, sizeof(top), "%s/" RECORDS_STATE_DIR, r->output);
	rmdir(top);
	free(r->state);
	free(r->output);
	free(r);
}

/* Below the output folder only what is missing is made: under
 * ProtectSystem=strict even a mkdir of an existing /srv is a write. */
static int open_state(struct records *r, bool create, struct error *err)
{
	int fd = open(r->state, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int outfd;

	if (fd != -1 || errno != ENOENT || !create)
		return fd;
	outfd = fsutil_open_dir(r->output, true, err);
	if (outfd == -1)
		return -1;
	fd = fsutil_mkdirs_at(outfd, RECORDS_STATE_DIR "/pending", err);
	close(outfd);
	return fd;
}

static size_t put(char *buf, size_t used, const char *val)
{
	size_t len = val ? strlen(val) : 0;

	if (used + len + 1 > MARKER_MAX)
		len = used < MARKER_MAX ? MARKER_MAX - used - 1 : 0;
	if (used >= MARKER_MAX)
		return used;
	memcpy(buf + used, val ? val : "", len);
	buf[used + len] = '\0';
	return used + len + 1;
}

int records_note(struct records *r, const char *name,
		 const struct audit_record *rec, const struct stat *out_st,
		 struct error *err)
{
	char num[3][32], *buf = malloc(MARKER_MAX);
	size_t used = 0;
	ssize_t n;
	int dirfd, fd;

	if (buf == NULL)
		return error_set(err, ERROR_TRANSIENT, ENOMEM, "pending record");
	snprintf(num[0], sizeof(num[0]), "%llu", (unsigned long long)out_st->st_ino);
	snprintf(num[1], sizeof(num[1]), "%lld", (long long)out_st->st_size);
	snprintf(num[2], sizeof(num[2]), "%lld.%09ld",
		 (long long)out_st->st_mtim.tv_sec, out_st->st_mtim.tv_nsec);
	used = put(buf, used, num[0]);
	used = put(buf, used, num[1]);
	used = put(buf, used, num[2]);
	used = put(buf, used, rec->event);
	used = put(buf, used, rec->source);
	used = put(buf, used, rec->dest);
	used = put(buf, used, rec->sop_instance_uid);
	used = put(buf, used, rec->profile);
	used = put(buf, used, rec->table_sha256);
	used = put(buf, used, rec->source_sha256);
	used = put(buf, used, rec->source_owner);
	/* No fsync: the threat is a killed process, and the page cache
	 * outlives it. After a power loss journald's own unsynced tail is
	 * as much at risk as this marker. */
	dirfd = open_state(r, true, err);
	fd = dirfd == -1 ? -1 : openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC |
					O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd == -1) {
		free(buf);
		if (dirfd != -1)
			close(dirfd);
		return error_set(err, error_kind_for_output_errno(errno), errno,
				 "cannot write a pending record in %s", r->state);
	}
	n = write(fd, buf, used);
	close(fd);
	free(buf);
	if (n != (ssize_t)used) {
		int e = n == -1 ? errno : ENOSPC;

		unlinkat(dirfd, name, 0);
		close(dirfd);
		return error_set(err, error_kind_for_output_errno(e), e,
				 "cannot write a pending record in %s", r->state);
	}
	close(dirfd);
	return 0;
}

void records_done(struct records *r, const char *name)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/%s", r->state, name);
	unlink(path);
}

/* The fields of a marker file; -1 if it is cut short (killed while it
 * was written: nothing was published after it). */
static int read_marker(int state_fd, const char *name, char *buf,
		       const char **f)
{
	int fd = openat(state_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	ssize_t n;
	size_t at = 0;

	if (fd == -1)
		return -1;
	n = read(fd, buf, MARKER_MAX);
	close(fd);
	if (n <= 0)
		return -1;
	for (int i = 0; i < F_COUNT; i++) {
		const char *end;

		if (at >= (size_t)n)
			return -1;
		end = memchr(buf + at, '\0', (size_t)n - at);
		if (end == NULL)
			return -1;
		f[i] = buf + at;
		at = (size_t)(end - buf) + 1;
	}
	return 0;
}

static const char *or_null(const char *s)
{
	return s[0] ? s : NULL;
}

/* Send the record of one marker if its output is there as published. */
static int recover_one(struct records *r, int state_fd, const char *name,
		       char *buf, void (*owed)(void *, const char *), void *ctx)
{
	const char *f[F_COUNT];
	char mtime[48];
	struct stat st;
	struct audit_record rec = { .priority = LOG_INFO, .recovered = 1 };

	char dest[PATH_MAX];

	if (read_marker(state_fd, name, buf, f) == -1)
		return 0;
	snprintf(dest, sizeof(dest), "%s/%s", r->output, f[F_DEST]);
	if (lstat(dest, &st) == -1)
		return 0;
	snprintf(mtime, sizeof(mtime), "%lld.%09ld",
		 (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
	if (strtoull(f[F_INO], NULL, 10) != (unsigned long long)st.st_ino ||
	    strtoll(f[F_SIZE], NULL, 10) != (long long)st.st_size ||
	    strcmp(f[F_MTIME], mtime) != 0)
		return 0;	/* not the file we published: none was */
	rec.event = f[F_EVENT];
	rec.source = or_null(f[F_SOURCE]);
	rec.dest = f[F_DEST];
	rec.sop_instance_uid = or_null(f[F_SOP]);
	rec.profile = or_null(f[F_PROFILE]);
	rec.table_sha256 = or_null(f[F_TABLE]);
	rec.source_sha256 = or_null(f[F_SHA256]);
	rec.source_owner = or_null(f[F_OWNER]);
	rec.reason = "record recovered at start: the daemon was killed "
		     "between storing the file and logging it";
	log_audit(&rec);
	if (owed != NULL)
		owed(ctx, f[F_DEST]);
	return 1;
}

long records_recover(struct records *r)
{
	return records_recover_hooked(r, NULL, NULL);
}

long records_recover_hooked(struct records *r,
			    void (*owed)(void *ctx, const char *dest),
			    void *ctx)
{
	int fd = open_state(r, false, NULL);
	char *buf;
	long sent = 0;
	DIR *dir;
	struct dirent *de;

	if (fd == -1)
		return 0;	/* none: nothing was left */
	buf = malloc(MARKER_MAX + 1);
	dir = fdopendir(fd);
	if (dir == NULL || buf == NULL) {
		if (dir == NULL)
			close(fd);
		else
			closedir(dir);
		free(buf);
		return 0;
	}
	while ((de = readdir(dir)) != NULL) {
		size_t len = strlen(de->d_name), slen = strlen(MARKER_SUFFIX);

		if (len <= slen || strcmp(de->d_name + len - slen, MARKER_SUFFIX))
			continue;
		sent += recover_one(r, dirfd(dir), de->d_name, buf, owed, ctx);
		unlinkat(dirfd(dir), de->d_name, 0);
	}
	closedir(dir);
	free(buf);
	return sent;
}
