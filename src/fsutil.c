/* fsutil.c - directory walking, temp files and publication; see fsutil.h. */
#include "dicomsort/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <limits.h>
#include <unistd.h>

#define COMPARE_CHUNK (64 * 1024)

static int mkdir_p(const char *path)
{
	char buf[PATH_MAX];
	size_t len = strlen(path);

	if (len == 0 || len >= sizeof(buf)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(buf, path, len + 1);
	for (char *p = buf + 1; *p != '\0'; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, 0755) == -1 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	if (mkdir(buf, 0755) == -1 && errno != EEXIST)
		return -1;
	return 0;
}

int fsutil_open_dir(const char *path, bool create, struct error *err)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	/* Create only what is missing: under ProtectSystem=strict even a
	 * mkdir of an existing parent such as /var is a write attempt. */
	if (fd != -1 || errno != ENOENT || !create)
		goto opened;
	if (mkdir_p(path) == -1)
		return error_set(err, ERROR_SETUP, errno, "cannot create %s", path);
	fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
opened:
	if (fd == -1)
		return error_set(err, ERROR_SETUP, errno, "cannot open %s", path);
	return fd;
}

/* One step down: create name in dirfd if needed, then open it as a real
 * directory (O_NOFOLLOW refuses a symlink planted in its place). */
static int step_into(int dirfd, const char *name, struct error *err)
{
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
			O_CLOEXEC);

	/* Most folders exist already: try the open first, mkdir on ENOENT. */
	if (fd != -1 || errno != ENOENT)
		goto opened;
	if (mkdirat(dirfd, name, 0755) == -1 && errno != EEXIST)
		return error_set(err, error_kind_for_output_errno(errno), errno,
				 "cannot create directory %s", name);
	fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
opened:
	if (fd == -1)
		return error_set(err, errno == ENOTDIR || errno == ELOOP ?
				 ERROR_INPUT : ERROR_TRANSIENT, errno,
				 "cannot open directory %s", name);
	return fd;
}

int fsutil_mkdirs_at(int rootfd, const char *relpath, struct error *err)
{
	char buf[PATH_MAX];
	char *save = NULL;
	int fd;

	if (strlen(relpath) >= sizeof(buf))
		return error_set(err, ERROR_INPUT, ENAMETOOLONG, "destination too long");
	snprintf(buf, sizeof(buf), "%s", relpath);
	fd = dup(rootfd);
	if (fd == -1)
		return error_set(err, ERROR_TRANSIENT, errno, "dup");
	for (char *c = strtok_r(buf, "/", &save); c != NULL;
	     c = strtok_r(NULL, "/", &save)) {
		int next;

		if (strcmp(c, ".") == 0 || strcmp(c, "..") == 0) {
			close(fd);
			return error_set(err, ERROR_INPUT, 0,
					 "refusing path component '%s'", c);
		}
		next = step_into(fd, c, err);
		close(fd);
		if (next == -1)
			return -1;
		fd = next;
	}
	return fd;
}

int fsutil_tmpfile_at(int dirfd, char *name, size_t namelen, struct error *err)
{
	for (int attempt = 0; attempt < 100; attempt++) {
		unsigned char rnd[6];
		int fd;

		if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
			return error_set(err, ERROR_TRANSIENT, errno, "getrandom");
		snprintf(name, namelen, FSUTIL_TMP_PREFIX "%02x%02x%02x%02x%02x%02x"
			 FSUTIL_TMP_SUFFIX, rnd[0], rnd[1], rnd[2], rnd[3],
			 rnd[4], rnd[5]);
		fd = openat(dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW |
			    O_CLOEXEC, 0600);
		if (fd != -1)
			return fd;
		if (errno != EEXIST)
			return error_set(err, error_kind_for_output_errno(errno),
					 errno, "cannot create temp file");
	}
	return error_set(err, ERROR_TRANSIENT, EEXIST, "cannot create temp file");
}

static bool anonymous(const char *tmpname)
{
	return tmpname[0] == '/';
}

int fsutil_anon_tmpfile_at(int dirfd, char *name, size_t namelen,
			   struct error *err)
{
	int fd = openat(dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

	if (fd != -1) {
		snprintf(name, namelen, "/proc/self/fd/%d", fd);
		return fd;
	}
	/* EOPNOTSUPP (or EISDIR from old kernels): no O_TMPFILE here. */
	if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
		return error_set(err, error_kind_for_output_errno(errno), errno,
				 "cannot create temp file");
	return fsutil_tmpfile_at(dirfd, name, namelen, err);
}

void fsutil_discard_tmp(int dirfd, const char *name)
{
	if (name[0] != '\0' && !anonymous(name))
		unlinkat(dirfd, name, 0);
}

static ssize_t read_full(int fd, char *buf, size_t len, off_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, buf + done, len - done, off + (off_t)done);

		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			return -1;
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

/* All of buf at off, or -1 with errno (a short write on a full disk is
 * retried, so the error reported is the real one, ENOSPC). */
static int write_full(int fd, const char *buf, size_t len, off_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pwrite(fd, buf + done, len - done, off + (off_t)done);

		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			return -1;
		if (n == 0) {
			errno = EIO;
			return -1;
		}
		done += (size_t)n;
	}
	return 0;
}

/* The bytes [off, len) through user space, for files copy_file_range()
 * cannot join (different file systems, old kernels). */
static int copy_buffered(int in, int out, off_t off, off_t len,
			 struct error *err)
{
	char *buf = malloc(COMPARE_CHUNK);
	int rc = 0;

	if (buf == NULL)
		return error_set(err, ERROR_TRANSIENT, ENOMEM, "copy");
	while (off < len && rc == 0) {
		size_t want = len - off < COMPARE_CHUNK ? (size_t)(len - off) :
			      COMPARE_CHUNK;
		ssize_t n = read_full(in, buf, want, off);

		if (n == -1)
			rc = error_set(err, ERROR_TRANSIENT, errno, "cannot read source");
		else if (n == 0)
			rc = error_set(err, ERROR_TRANSIENT, 0, "source changed "
				       "while it was processed");
		else if (write_full(out, buf, (size_t)n, off) == -1)
			rc = error_set(err, error_kind_for_output_errno(errno),
				       errno, "cannot write");
		else
			off += n;
	}
	free(buf);
	return rc;
}

int fsutil_copy_fd(int in, int out, off_t len, struct error *err)
{
	off_t in_off = 0, out_off = 0;

	while (in_off < len) {
		ssize_t n = copy_file_range(in, &in_off, out, &out_off,
					    (size_t)(len - in_off), 0);

		if (n > 0 || (n == -1 && errno == EINTR))
			continue;
		if (n == 0)
			return error_set(err, ERROR_TRANSIENT, 0, "source changed "
					 "while it was processed");
		if (errno == EXDEV || errno == EINVAL || errno == ENOSYS ||
		    errno == EOPNOTSUPP)
			return copy_buffered(in, out, in_off, len, err);
		return error_set(err, error_kind_for_output_errno(errno), errno,
				 "cannot copy");
	}
	return 0;
}

int fsutil_same_content(int fd_a, int fd_b, struct error *err)
{
	struct stat sa, sb;
	char *a, *b;
	int same = 1;

	if (fstat(fd_a, &sa) == -1 || fstat(fd_b, &sb) == -1)
		return error_set(err, ERROR_TRANSIENT, errno, "fstat");
	if (sa.st_size != sb.st_size)
		return 0;
	a = malloc(COMPARE_CHUNK);
	b = malloc(COMPARE_CHUNK);
	if (a == NULL || b == NULL) {
		free(a);
		free(b);
		return error_set(err, ERROR_TRANSIENT, ENOMEM, "compare");
	}
	for (off_t off = 0; off < sa.st_size && same == 1; off += COMPARE_CHUNK) {
		ssize_t na = read_full(fd_a, a, COMPARE_CHUNK, off);
		ssize_t nb = read_full(fd_b, b, COMPARE_CHUNK, off);

		if (na == -1 || nb == -1)
			same = error_set(err, ERROR_TRANSIENT, errno, "read");
		else if (na != nb || memcmp(a, b, (size_t)na) != 0)
			same = 0;
		else if (na == 0)
			break;
	}
	free(a);
	free(b);
	return same;
}

int fsutil_publish(int dirfd, const char *tmpname, const char *final,
		   struct error *err)
{
	if (anonymous(tmpname)) {
		/* link() never replaces: EEXIST is "final is taken". */
		if (linkat(AT_FDCWD, tmpname, dirfd, final, AT_SYMLINK_FOLLOW) == 0)
			return 0;
		if (errno == EEXIST)
			return 1;
		return error_set(err, error_kind_for_output_errno(errno), errno,
				 "cannot link temp file to %s", final);
	}
	if (renameat2(dirfd, tmpname, dirfd, final, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno == EEXIST)
		return 1;
	if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
		return error_set(err, error_kind_for_output_errno(errno), errno,
				 "cannot rename temp file to %s", final);
	/* No RENAME_NOREPLACE on this file system: link() refuses to replace
	 * too; the temp name goes afterwards. */
	if (linkat(dirfd, tmpname, dirfd, final, 0) == -1) {
		if (errno == EEXIST)
			return 1;
		return error_set(err, error_kind_for_output_errno(errno), errno,
				 "cannot link temp file to %s", final);
	}
	if (unlinkat(dirfd, tmpname, 0) == -1)
		return error_set(err, ERROR_TRANSIENT, errno, "cannot remove %s",
				 tmpname);
	return 0;
}

int fsutil_fsync(int fd, const char *what, struct error *err)
{
	if (fsync(fd) == -1)
		return error_set(err, ERROR_TRANSIENT, errno, "fsync %s", what);
	return 0;
}

/* Python's os.path.splitext: the extension starts at the last dot, unless
 * only dots precede it (".bashrc" has none). */
static size_t stem_length(const char *base)
{
	const char *last = strrchr(base, '.');

	if (last == NULL)
		return strlen(base);
	for (const char *p = base; p < last; p++)
		if (*p != '.')
			return (size_t)(last - base);
	return strlen(base);
}

int fsutil_numbered_name(const char *base, unsigned n, char *out, size_t len)
{
	size_t stem = stem_length(base);
	const char *ext = base + stem;
	char suffix[16];
	size_t room;
	int w;

	if (n == 0) {
		w = snprintf(out, len, "%s", base);
		return w < 0 || (size_t)w >= len ? -1 : 0;
	}
	snprintf(suffix, sizeof(suffix), "_%u", n);
	/* Keep the name within NAME_MAX: shorten the stem, never the number,
	 * and never inside a UTF-8 character. */
	room = NAME_MAX > strlen(suffix) + strlen(ext) ?
	       NAME_MAX - strlen(suffix) - strlen(ext) : 0;
	if (stem > room) {
		stem = room;
		while (stem > 0 && ((unsigned char)base[stem] & 0xc0) == 0x80)
			stem--;
	}
	w = snprintf(out, len, "%.*s%s%s", (int)stem, base, suffix, ext);
	return w < 0 || (size_t)w >= len ? -1 : 0;
}
