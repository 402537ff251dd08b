/* fsutil.c - directory walking, temp files and publication; see fsutil.h. */
#include "dicomsort/fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <fts.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <limits.h>
#include <linux/openat2.h>
#include <unistd.h>

#include <openssl/evp.h>

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
static int step_into(int dirfd, const char *name, enum fsutil_dirs_sync how,
		     struct error *err)
{
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
			O_CLOEXEC);

	/* Most folders exist already: try the open first, mkdir on ENOENT. */
	if (fd != -1 || errno != ENOENT)
		goto opened;
	if (mkdirat(dirfd, name, 0755) == 0) {
		/* A new folder is an entry of its parent: durable only once
		 * the parent is synced, or a file published in it could
		 * vanish with it. */
		if (how != FSUTIL_DIRS_DEFER && fsync(dirfd) == -1)
			return error_set(err, ERROR_TRANSIENT, errno,
					 "fsync folder above %s", name);
		how = FSUTIL_DIRS_DEFER;	/* done */
	} else if (errno != EEXIST) {
		return error_set(err, error_kind_for_output_errno(errno), errno,
				 "cannot create directory %s", name);
	}
	fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
opened:
	if (fd == -1)
		return error_set(err, errno == ENOTDIR || errno == ELOOP ?
				 ERROR_INPUT : ERROR_TRANSIENT, errno,
				 "cannot open directory %s", name);
	/* Found, perhaps made by a writer that left its syncing to later. */
	if (how == FSUTIL_DIRS_SYNC_PATH && fsync(dirfd) == -1) {
		close(fd);
		return error_set(err, ERROR_TRANSIENT, errno,
				 "fsync folder above %s", name);
	}
	return fd;
}

int fsutil_mkdirs_at(int rootfd, const char *relpath, struct error *err)
{
	return fsutil_mkdirs_sync_at(rootfd, relpath, FSUTIL_DIRS_SYNC_NEW, err);
}

/* Whether relpath has a "." or ".." component, which the walk refuses. */
static bool has_dot_component(const char *relpath)
{
	for (const char *c = relpath; *c != '\0'; c++) {
		if (*c != '.' || (c != relpath && c[-1] != '/'))
			continue;
		if (c[1] == '\0' || c[1] == '/' ||
		    (c[1] == '.' && (c[2] == '\0' || c[2] == '/')))
			return true;
	}
	return false;
}

/*
 * The whole path in one call, when every folder exists: what the walk
 * below does, one openat(O_NOFOLLOW | O_DIRECTORY) per component, refusing
 * a symlink anywhere (RESOLVE_NO_SYMLINKS) and never leaving rootfd
 * (RESOLVE_BENEATH; "." and ".." are refused before). It is looked up
 * afresh each time, so a folder removed or renamed since the last file is
 * never taken. -1 on any failure (a folder to make, a kernel or seccomp
 * filter without openat2): the walk then does it, and says why it fails.
 */
int fsutil_open_existing_at(int rootfd, const char *relpath)
{
	struct open_how oh = {
		.flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS,
	};

	while (*relpath == '/')
		relpath++;
	if (*relpath == '\0' || has_dot_component(relpath))
		return -1;
	return (int)syscall(SYS_openat2, rootfd, relpath, &oh, sizeof(oh));
}

int fsutil_mkdirs_sync_at(int rootfd, const char *relpath,
			  enum fsutil_dirs_sync how, struct error *err)
{
	char buf[PATH_MAX];
	char *save = NULL;
	int fd;

	if (strlen(relpath) >= sizeof(buf))
		return error_set(err, ERROR_INPUT, ENAMETOOLONG, "destination too long");
	/* SYNC_PATH fsyncs each parent found: only the walk does that. */
	if (how != FSUTIL_DIRS_SYNC_PATH &&
	    (fd = fsutil_open_existing_at(rootfd, relpath)) != -1)
		return fd;
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
		next = step_into(fd, c, how, err);
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
	return fsutil_anon_tmpfile_mode_at(dirfd, 0600, name, namelen, err);
}

int fsutil_anon_tmpfile_mode_at(int dirfd, mode_t mode, char *name,
				size_t namelen, struct error *err)
{
	/* Nameless, the file is nobody's to open until published: it can
	 * have its final mode from the start (one fchmod less per file). */
	int fd = openat(dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, mode);

	if (fd != -1) {
		fsutil_proc_fd_path(name, namelen, fd);
		return fd;
	}
	/* EOPNOTSUPP (or EISDIR from old kernels): no O_TMPFILE here. */
	if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
		return error_set(err, error_kind_for_output_errno(errno), errno,
				 "cannot create temp file");
	/* A named temp file stays 0600 until it is complete. */
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

/* "<stem><suffix><ext>" within NAME_MAX: the stem is shortened, never
 * the suffix, and never inside a UTF-8 character. */
static int suffixed_name(const char *base, const char *suffix, char *out,
			 size_t len)
{
	size_t stem = stem_length(base);
	const char *ext = base + stem;
	size_t room;
	int w;

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

/* Copies what of s[0..n) fits at out + at (len > at): the end offset. */
static size_t put_bytes(char *out, size_t len, size_t at, const char *s,
			size_t n)
{
	size_t room = len - 1 - at;

	if (n > room)
		n = room;
	memcpy(out + at, s, n);
	return at + n;
}

size_t fsutil_copy_str(char *out, size_t len, const char *s)
{
	size_t n = strlen(s);

	if (len > 0)
		out[put_bytes(out, len, 0, s, n)] = '\0';
	return n;
}

size_t fsutil_proc_fd_path(char *out, size_t len, int fd)
{
	static const char prefix[] = "/proc/self/fd/";
	char digits[16], *d = digits + sizeof(digits);
	unsigned v = fd < 0 ? 0u - (unsigned)fd : (unsigned)fd;
	size_t at, n;

	do {
		*--d = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	if (fd < 0)
		*--d = '-';
	n = (size_t)(digits + sizeof(digits) - d);
	if (len == 0)
		return sizeof(prefix) - 1 + n;
	at = put_bytes(out, len, 0, prefix, sizeof(prefix) - 1);
	out[put_bytes(out, len, at, d, n)] = '\0';
	return sizeof(prefix) - 1 + n;
}

size_t fsutil_join_path(char *out, size_t len, const char *dir,
			const char *name)
{
	size_t d = strlen(dir), n = strlen(name), at;

	if (len == 0)
		return d + 1 + n;
	at = put_bytes(out, len, 0, dir, d);
	at = put_bytes(out, len, at, "/", 1);
	out[put_bytes(out, len, at, name, n)] = '\0';
	return d + 1 + n;
}

int fsutil_numbered_name(const char *base, unsigned n, char *out, size_t len)
{
	char suffix[16];

	if (n == 0)
		return fsutil_copy_str(out, len, base) >= len ? -1 : 0;
	snprintf(suffix, sizeof(suffix), "_%u", n);
	return suffixed_name(base, suffix, out, len);
}

int fsutil_clash_name(const char *base, unsigned n, const char *hash,
		      char *out, size_t len)
{
	char suffix[FSUTIL_CLASH_SUFFIX_MAX + 1];

	if (n < FSUTIL_PLAIN_CLASHES)
		return fsutil_numbered_name(base, n, out, len);
	if (hash == NULL)
		return -1;
	n -= FSUTIL_PLAIN_CLASHES;
	if (n == 0)
		snprintf(suffix, sizeof(suffix), "_%.16s", hash);
	else
		snprintf(suffix, sizeof(suffix), "_%.16s_%u", hash, n);
	return suffixed_name(base, suffix, out, len);
}

/* hex gets the first digits hex digits of the SHA-256 of fd's bytes. */
static int sha256_fd(int fd, char *hex, unsigned digits, struct error *err)
{
	unsigned char buf[65536], md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	off_t off = 0;
	ssize_t n;
	int rc = -1;

	if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(ctx);
		return error_set(err, ERROR_TRANSIENT, ENOMEM, "sha256");
	}
	while ((n = pread(fd, buf, sizeof(buf), off)) != 0) {
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			error_set(err, ERROR_TRANSIENT, errno, "cannot read for a hash");
			goto out;
		}
		EVP_DigestUpdate(ctx, buf, (size_t)n);
		off += n;
	}
	if (EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen * 2 >= digits) {
		for (unsigned i = 0; i < digits / 2; i++)
			snprintf(hex + 2 * i, 3, "%02x", md[i]);
		rc = 0;
	} else {
		error_set(err, ERROR_TRANSIENT, 0, "sha256");
	}
out:
	EVP_MD_CTX_free(ctx);
	return rc;
}

int fsutil_hash_fd(int fd, char *hex, struct error *err)
{
	return sha256_fd(fd, hex, 16, err);
}

int fsutil_sha256_fd(int fd, char *hex, struct error *err)
{
	return sha256_fd(fd, hex, 64, err);
}

/* ---- one safe move ---- */

#define MOVE_MAX_NUMBERED 10000

static int move_fail(struct fsutil_move *mv, enum fsutil_side side,
		     struct error *err, enum error_kind kind, int errnum,
		     const char *what)
{
	mv->side = side;
	return error_set(err, kind, errnum, "%s", what);
}

/* The claim name of a file: private (the .dicomsort- prefix every watch
 * and scan ignores), unique per inode in its folder, and carrying the
 * original name so that a claim left by a crash can be given it back. */
static void claim_name(const char *base, ino_t ino, char *out, size_t len)
{
	char head[64];
	size_t room;

	snprintf(head, sizeof(head), FSUTIL_CLAIM_PREFIX "%llx.",
		 (unsigned long long)ino);
	room = NAME_MAX - strlen(head);
	snprintf(out, len, "%s%.*s", head, (int)room, base);
}

/* The original name a claim name carries, or NULL if it is none. */
static const char *claimed_base(const char *claim)
{
	const char *p = claim + strlen(FSUTIL_CLAIM_PREFIX);

	if (strncmp(claim, FSUTIL_CLAIM_PREFIX, strlen(FSUTIL_CLAIM_PREFIX)) != 0)
		return NULL;
	p += strspn(p, "0123456789abcdef");
	if (*p != '.' || p[1] == '\0')
		return NULL;
	return p + 1;
}

/* renameat2(RENAME_NOREPLACE), or link+unlink where a file system lacks
 * it: never replaces, EEXIST when to is taken. */
static int rename_noreplace(int fromfd, const char *from, int tofd,
			    const char *to)
{
	if (renameat2(fromfd, from, tofd, to, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
		return -1;
	if (linkat(fromfd, from, tofd, to, 0) == -1)
		return -1;
	unlinkat(fromfd, from, 0);
	return 0;
}

/* Give a claimed file its name back (numbered when a sender has
 * re-delivered under it meanwhile); name gets the one it took. */
static int unclaim_as(int dirfd, const char *claim, const char *base,
		      char name[NAME_MAX + 1])
{
	for (unsigned n = 0; n < MOVE_MAX_NUMBERED; n++) {
		if (fsutil_numbered_name(base, n, name, NAME_MAX + 1) == -1)
			return -1;
		if (rename_noreplace(dirfd, claim, dirfd, name) == 0)
			return 0;
		if (errno != EEXIST)
			return -1;
	}
	return -1;
}

static int unclaim(int dirfd, const char *claim, const char *base)
{
	char name[NAME_MAX + 1];

	return unclaim_as(dirfd, claim, base, name);
}

/* Same inode, size and mtime: what a writer can keep (rsync --inplace
 * -t, cp -p set mtime back). */
static bool same_identity(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino &&
	       a->st_size == b->st_size &&
	       a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
	       a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

bool fsutil_same_version(const struct stat *a, const struct stat *b)
{
	return same_identity(a, b) &&
	       a->st_ctim.tv_sec == b->st_ctim.tv_sec &&
	       a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* The base name of path. */
static void path_base(const char *path, char *base, size_t baselen)
{
	const char *slash = strrchr(path, '/');

	snprintf(base, baselen, "%s", slash == NULL ? path : slash + 1);
}

/* Split path into its folder (opened) and base name. */
static int open_parent(const char *path, char *base, size_t baselen)
{
	const char *slash = strrchr(path, '/');
	char dir[PATH_MAX];

	if (slash == NULL) {
		snprintf(dir, sizeof(dir), ".");
		snprintf(base, baselen, "%s", path);
	} else {
		snprintf(dir, sizeof(dir), "%.*s", slash == path ? 1 :
			 (int)(slash - path), path);
		snprintf(base, baselen, "%s", slash + 1);
	}
	return open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

/* The source is not the version that was read: it is processed again,
 * never disposed of. */
static int changed(struct fsutil_move *mv, struct error *err, const char *what)
{
	mv->changed = true;
	return move_fail(mv, FSUTIL_SIDE_SOURCE, err, ERROR_TRANSIENT, 0, what);
}

/*
 * Hold the source still while we check and claim it: a read lease
 * (fcntl(2) F_SETLEASE) is refused while anyone has the file open for
 * writing, and makes a writer opening it meanwhile wait until we let go
 * (its break comes as SIGURG, ignored, not SIGIO, which would end us).
 * Granted only to the owner or with CAP_LEASE: without it (0) the checks
 * still run, with a window of a few system calls for a writer that had
 * the file open already. 1 held, 0 not available, -1 open for writing.
 */
static int hold_source(struct fsutil_move *mv)
{
	struct stat st;

	if (mv->source_fd != NULL) {
		/* The caller's: the regular file it opened and read. */
		mv->lease_fd = *mv->source_fd;
		mv->own_lease = false;
	} else {
		mv->lease_fd = openat(mv->src_dirfd, mv->src_base, O_RDONLY |
				      O_NOFOLLOW | O_NONBLOCK | O_NOCTTY |
				      O_CLOEXEC);
		mv->own_lease = true;
		if (mv->lease_fd == -1)
			return 0;
		if (fstat(mv->lease_fd, &st) == -1 || !S_ISREG(st.st_mode))
			return 0;
	}
	return fsutil_lease(mv->lease_fd, false);
}

int fsutil_lease(int fd, bool sigio_ignored)
{
	if (!sigio_ignored && fcntl(fd, F_SETSIG, SIGURG) == -1)
		return 0;
	if (fcntl(fd, F_SETLEASE, F_RDLCK) == 0)
		return 1;
	return errno == EAGAIN ? -1 : 0;
}

int fsutil_ignore_sigio(void)
{
	struct sigaction sa = { .sa_handler = SIG_IGN };

	sigemptyset(&sa.sa_mask);
	return sigaction(SIGIO, &sa, NULL);
}

/* The lease was broken (a writer is waiting to open the file). */
static bool hold_broken(const struct fsutil_move *mv)
{
	return mv->leased && fcntl(mv->lease_fd, F_GETLEASE) != F_RDLCK;
}

/* Ends the lease on a descriptor of our own by closing it; one on the
 * caller's descriptor ends when the caller closes it. */
static void let_go(struct fsutil_move *mv)
{
	if (mv->lease_fd != -1 && mv->own_lease)
		close(mv->lease_fd);
	mv->lease_fd = -1;
	mv->leased = false;
}

/* 1 when the claimed file's bytes hash to mv->expect_sha256. */
static int content_matches(struct fsutil_move *mv, struct error *err)
{
	char hex[65];
	int fd = mv->lease_fd;
	int rc;

	if (fd == -1)
		fd = openat(mv->src_dirfd, mv->claim, O_RDONLY | O_NOFOLLOW |
			    O_NONBLOCK | O_CLOEXEC);
	if (fd == -1)
		return move_fail(mv, FSUTIL_SIDE_SOURCE, err, ERROR_TRANSIENT,
				 errno, "cannot read the claimed source");
	rc = sha256_fd(fd, hex, 64, err);
	if (fd != mv->lease_fd)
		close(fd);
	if (rc == -1)
		return -1;
	return strcmp(hex, mv->expect_sha256) == 0;
}

/*
 * The claim of a source the caller leased before it fstat'ed expect
 * (source_leased, see fsutil.h): no write reached the inode since expect
 * without breaking the lease, so its version needs no look before the
 * claim, and the name is checked once claimed - whatever the rename took
 * is looked at under its claim name, and anything but expect's inode
 * goes back to its name (or, after a crash, gets it back from
 * fsutil_recover_claims()): it never leaves its folder.
 */
static int claim_leased(struct fsutil_move *mv, struct error *err)
{
	struct stat now;

	mv->lease_fd = *mv->source_fd;
	mv->own_lease = false;
	mv->leased = true;
	claim_name(mv->src_base, mv->expect->st_ino, mv->claim,
		   sizeof(mv->claim));
	if (rename_noreplace(mv->src_dirfd, mv->src_base, mv->src_dirfd,
			     mv->claim) == -1) {
		mv->claim[0] = '\0';
		return move_fail(mv, FSUTIL_SIDE_SOURCE, err, ERROR_TRANSIENT,
				 errno, "cannot claim the source in its folder");
	}
	if (fstatat(mv->src_dirfd, mv->claim, &now, AT_SYMLINK_NOFOLLOW) == -1)
		return move_fail(mv, FSUTIL_SIDE_SOURCE, err, ERROR_TRANSIENT,
				 errno, "source was replaced while it was processed");
	/* Another file under the name read (re-delivered, swapped in):
	 * not ours, and not the version read either. */
	if (!same_identity(&now, mv->expect))
		return changed(mv, err, "source changed after it was read");
	mv->src_st = now;
	return 0;
}

/*
 * Claim mv->source: check it is still the file the caller read, then
 * rename it to its private claim name in its own folder. From here on a
 * sender re-delivering under the original name writes a new file that
 * nothing of ours touches. What was renamed is checked again: a file
 * swapped in between the check and the rename goes back.
 *
 * "The file read" (expect) is its inode, size, mtime and ctime: a writer
 * can set mtime back, never ctime. A ctime that moved while size and mtime
 * did not (a rename, chmod, a same-size rewrite with mtime set back) is
 * the same version only if its bytes still hash to expect_sha256 (checked
 * once claimed); without a hash it is a change. A change is never
 * disposed of: mv->changed, process it again.
 */
static int claim(struct fsutil_move *mv, struct error *err)
{
	struct stat st, now;
	bool check_content = false;
	int held = 0;

	if (mv->source_dirfd != NULL) {
		mv->src_dirfd = *mv->source_dirfd;
		path_base(mv->source, mv->src_base, sizeof(mv->src_base));
	} else {
		mv->src_dirfd = open_parent(mv->source, mv->src_base,
					    sizeof(mv->src_base));
		mv->own_dirfd = true;
	}
	if (mv->src_dirfd == -1)
		return move_fail(mv, FSUTIL_SIDE_SOURCE, err, ERROR_TRANSIENT,
				 errno, "cannot open the source's folder");
	if (mv->source_leased && mv->source_fd != NULL && mv->expect != NULL)
		return claim_leased(mv, err);
	/* Only a regular file is opened for the lease: opening a device a
	 * sender swapped in could have effects of its own. The caller's
	 * descriptor is the regular file it read. */
	if (mv->expect != NULL && S_ISREG(mv->expect->st_mode) &&
	    (mv->source_fd != NULL ||
	     (fstatat(mv->src_dirfd, mv->src_base, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	      S_ISREG(st.st_mode)))) {
		held = hold_source(mv);
		if (held == -1)
			return changed(mv, err, "source is open for writing");
		mv->leased = held == 1;
	}
	if (fstatat(mv->src_dirfd, mv->src_base, &st, AT_SYMLINK_NOFOLLOW) == -1)
		return move_fail(mv, FSUTIL_SIDE_SOURCE, err, ERROR_TRANSIENT,
				 errno, "cannot find the source");
	if (mv->expect != NULL) {
		struct stat lst;

		/* The caller's descriptor is expect's inode; our own is
		 * whatever the name held when it was opened. */
		if (!same_identity(&st, mv->expect) ||
		    (mv->lease_fd != -1 && mv->own_lease &&
		     (fstat(mv->lease_fd, &lst) == -1 ||
		      lst.st_ino != st.st_ino)))
			return changed(mv, err, "source changed after it was read");
		if (!fsutil_same_version(&st, mv->expect)) {
			if (mv->expect_sha256 == NULL)
				return changed(mv, err, "source changed after "
					       "it was read");
			check_content = true;
		}
	}
	claim_name(mv->src_base, st.st_ino, mv->claim, sizeof(mv->claim));
	if (rename_noreplace(mv->src_dirfd, mv->src_base, mv->src_dirfd,
			     mv->claim) == -1) {
		mv->claim[0] = '\0';
		return move_fail(mv, FSUTIL_SIDE_SOURCE, err, ERROR_TRANSIENT,
				 errno, "cannot claim the source in its folder");
	}
	if (fstatat(mv->src_dirfd, mv->claim, &now, AT_SYMLINK_NOFOLLOW) == -1 ||
	    now.st_ino != st.st_ino || now.st_dev != st.st_dev)
		return move_fail(mv, FSUTIL_SIDE_SOURCE, err, ERROR_TRANSIENT, 0,
				 "source was replaced while it was processed");
	/* Once more, claimed: a writer that had it open may have written
	 * between the check and the rename (our rename moved ctime). */
	if (mv->expect != NULL && !same_identity(&now, mv->expect))
		return changed(mv, err, "source changed after it was read");
	if (check_content) {
		int same = content_matches(mv, err);

		if (same == -1)
			return -1;
		if (same == 0)
			return changed(mv, err, "source changed after it was read");
		if (hold_broken(mv))
			return changed(mv, err, "source is being opened for "
				       "writing");
	}
	/* The lease is looked at again right before the source goes or
	 * takes its new name (try_name(), fsutil_remove_checked()). */
	mv->src_st = now;
	return 0;
}

/* 1 when name in dirfd holds what the claimed source holds (bytes of a
 * regular file, or the target of a symlink), 0 if not, -1 on error. */
static int same_as_claim(struct fsutil_move *mv, const char *name,
			 struct error *err)
{
	struct stat st;
	int a, b, same;

	if (fstatat(mv->dest_dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == -1)
		return errno == ENOENT ? 0 :
		       move_fail(mv, FSUTIL_SIDE_DEST, err, ERROR_TRANSIENT, errno,
				 "cannot look at a file in the destination");
	if (S_ISLNK(st.st_mode) && S_ISLNK(mv->src_st.st_mode)) {
		char ta[PATH_MAX], tb[PATH_MAX];
		ssize_t na = readlinkat(mv->dest_dirfd, name, ta, sizeof(ta));
		ssize_t nb = readlinkat(mv->src_dirfd, mv->claim, tb, sizeof(tb));

		return na >= 0 && na == nb && memcmp(ta, tb, (size_t)na) == 0;
	}
	if (!S_ISREG(st.st_mode) || !S_ISREG(mv->src_st.st_mode) ||
	    st.st_size != mv->src_st.st_size)
		return 0;
	a = openat(mv->dest_dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK |
		   O_CLOEXEC);
	if (a == -1)
		return move_fail(mv, FSUTIL_SIDE_DEST, err, ERROR_TRANSIENT, errno,
				 "cannot open a file in the destination");
	b = openat(mv->src_dirfd, mv->claim, O_RDONLY | O_NOFOLLOW | O_NONBLOCK |
		   O_CLOEXEC);
	if (b == -1) {
		close(a);
		return move_fail(mv, FSUTIL_SIDE_SOURCE, err, ERROR_TRANSIENT,
				 errno, "cannot read the claimed source");
	}
	same = fsutil_same_content(a, b, err);
	/* The copy we rely on instead of ours must be durable too (under
	 * defer_sync, finish() syncs its whole file system). */
	if (same == 1 && !mv->defer_sync && fsync(a) == -1)
		same = move_fail(mv, FSUTIL_SIDE_DEST, err, ERROR_TRANSIENT, errno,
				 "fsync of the file in the destination");
	close(a);
	close(b);
	return same;
}

/* Across file systems: the claimed bytes into a temp file of the
 * destination, with the source's mode (or mv->mode) and times, fsynced. */
static int copy_claim(struct fsutil_move *mv, struct error *err)
{
	struct timespec times[2];
	struct stat st;
	int in;

	if (S_ISLNK(mv->src_st.st_mode)) {
		char target[PATH_MAX];
		ssize_t n = readlinkat(mv->src_dirfd, mv->claim, target,
				       sizeof(target) - 1);

		if (n == -1)
			return move_fail(mv, FSUTIL_SIDE_SOURCE, err,
					 ERROR_TRANSIENT, errno, "readlink");
		target[n] = '\0';
		for (int attempt = 0; attempt < 100; attempt++) {
			unsigned char r[6];

			if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r))
				break;
			snprintf(mv->tmp, sizeof(mv->tmp), FSUTIL_TMP_PREFIX
				 "%02x%02x%02x%02x%02x%02x" FSUTIL_TMP_SUFFIX,
				 r[0], r[1], r[2], r[3], r[4], r[5]);
			if (symlinkat(target, mv->dest_dirfd, mv->tmp) == 0)
				return 0;
			if (errno != EEXIST)
				break;
		}
		mv->tmp[0] = '\0';
		return move_fail(mv, FSUTIL_SIDE_DEST, err, ERROR_TRANSIENT, errno,
				 "cannot copy the symlink");
	}
	if (!S_ISREG(mv->src_st.st_mode))
		return move_fail(mv, FSUTIL_SIDE_SOURCE, err, ERROR_INPUT, 0,
				 "not a regular file: cannot copy it across "
				 "file systems");
	in = openat(mv->src_dirfd, mv->claim, O_RDONLY | O_NOFOLLOW | O_NONBLOCK |
		    O_CLOEXEC);
	if (in == -1)
		return move_fail(mv, FSUTIL_SIDE_SOURCE, err, ERROR_TRANSIENT,
				 errno, "cannot read the claimed source");
	if (fstat(in, &st) == -1 || st.st_ino != mv->src_st.st_ino) {
		close(in);
		return move_fail(mv, FSUTIL_SIDE_SOURCE, err, ERROR_TRANSIENT, 0,
				 "source was replaced while it was moved");
	}
	mv->tmp_fd = fsutil_anon_tmpfile_at(mv->dest_dirfd, mv->tmp,
					    sizeof(mv->tmp), err);
	if (mv->tmp_fd == -1) {
		close(in);
		mv->tmp[0] = '\0';
		mv->side = FSUTIL_SIDE_DEST;
		return -1;
	}
	times[0] = st.st_atim;
	times[1] = st.st_mtim;
	if (fsutil_copy_fd(in, mv->tmp_fd, st.st_size, err) == -1 ||
	    fchmod(mv->tmp_fd, mv->mode ? mv->mode : st.st_mode & 07777) == -1 ||
	    futimens(mv->tmp_fd, times) == -1 ||
	    (!mv->defer_sync && fsync(mv->tmp_fd) == -1)) {
		if (err->kind == ERROR_NONE)
			error_set(err, ERROR_TRANSIENT, errno, "cannot copy");
		close(in);
		mv->side = FSUTIL_SIDE_DEST;
		return -1;
	}
	close(in);
	return 0;
}

static void drop_tmp(struct fsutil_move *mv)
{
	if (mv->tmp_fd != -1)
		close(mv->tmp_fd);
	mv->tmp_fd = -1;
	if (mv->tmp[0] != '\0')
		fsutil_discard_tmp(mv->dest_dirfd, mv->tmp);
	mv->tmp[0] = '\0';
}

/* The claimed source is in the destination now (or was there already):
 * its claim name goes, and both folders are made durable - the
 * destination first, so no instant has the file in neither. Under
 * defer_sync a renamed file waits for the caller's syncfs (no byte is
 * at stake); a source that is destroyed (remove_claim: a copy, or an
 * identical file there already) goes only after a syncfs of the
 * destination's file system, whose folders may be unsynced as well. */
static int finish(struct fsutil_move *mv, bool remove_claim, struct error *err)
{
	if (!mv->defer_sync && fsync(mv->dest_dirfd) == -1)
		return move_fail(mv, FSUTIL_SIDE_DEST, err, ERROR_TRANSIENT, errno,
				 "fsync of the destination folder");
	if (mv->defer_sync && remove_claim && syncfs(mv->dest_dirfd) == -1)
		return move_fail(mv, FSUTIL_SIDE_DEST, err, ERROR_TRANSIENT, errno,
				 "syncfs of the destination");
	if (remove_claim && unlinkat(mv->src_dirfd, mv->claim, 0) == -1)
		return move_fail(mv, FSUTIL_SIDE_SOURCE, err, ERROR_TRANSIENT,
				 errno, "cannot remove the source");
	mv->claim[0] = '\0';
	if (!mv->defer_sync && fsync(mv->src_dirfd) == -1)
		return move_fail(mv, FSUTIL_SIDE_SOURCE, err, ERROR_TRANSIENT,
				 errno, "fsync of the source folder");
	return 0;
}

/* One candidate name: 0 done, 1 taken (try the next), -1 error, 2 other
 * file system (copy, then try the same name again). */
static int place_at(struct fsutil_move *mv, const char *cand,
		    struct error *err);

/* cand holds what the claimed source holds: our own earlier copy (a
 * retry, or a crash before the source went), or the same bytes from
 * before - keep one, the source goes. */
static int existed(struct fsutil_move *mv, struct error *err)
{
	mv->existed = true;
	drop_tmp(mv);
	if (hold_broken(mv))
		return changed(mv, err, "source is being opened for writing");
	return finish(mv, true, err);
}

/* Without a sidecar to keep beside it, a name is simply tried: the
 * rename (or link) refuses a taken one, and only then is the file there
 * compared with ours. Saves two look-ups per file. */
static int try_name_plain(struct fsutil_move *mv, const char *cand,
			  struct error *err)
{
	int same, rc;

	if (hold_broken(mv))
		return changed(mv, err, "source is being opened for writing");
	rc = place_at(mv, cand, err);
	if (rc == 0 || rc == -1)
		return rc;
	/* Taken (1), or another file system (2: copy unless it is there). */
	same = same_as_claim(mv, cand, err);
	if (same == -1)
		return -1;
	if (same == 1)
		return existed(mv, err);
	return rc;
}

static int try_name(struct fsutil_move *mv, const char *cand, struct error *err)
{
	char companion[NAME_MAX + 32];
	int same, rc;

	if (mv->companion == NULL && mv->before_place == NULL)
		return try_name_plain(mv, cand, err);
	same = same_as_claim(mv, cand, err);
	if (same == -1)
		return -1;
	if (same == 1)
		return existed(mv, err);
	if (faccessat(mv->dest_dirfd, cand, F_OK, AT_SYMLINK_NOFOLLOW) == 0)
		return 1;
	/* Keep each file next to its own sidecar. One whose file is
	 * missing was left by a kill between the two (before_place writes
	 * the sidecar first): the hook writes over it. */
	if (mv->companion != NULL && mv->before_place == NULL) {
		snprintf(companion, sizeof(companion), "%s%s", cand, mv->companion);
		if (faccessat(mv->dest_dirfd, companion, F_OK,
			      AT_SYMLINK_NOFOLLOW) == 0)
			return 1;
	}
	if (mv->before_place != NULL) {
		rc = mv->before_place(mv->ctx, mv->dest_dirfd, cand, err);
		if (rc == -1)
			mv->side = FSUTIL_SIDE_DEST;
		if (rc != 0)
			return rc;
	}
	if (hold_broken(mv))
		return changed(mv, err, "source is being opened for writing");
	rc = place_at(mv, cand, err);
	if (!mv->placed && mv->before_place != NULL && mv->companion != NULL) {
		snprintf(companion, sizeof(companion), "%s%s", cand, mv->companion);
		unlinkat(mv->dest_dirfd, companion, 0);
	}
	return rc;
}

/* mv->naming, told the name and the identity the file will have. */
static int tell_name(struct fsutil_move *mv, const char *cand,
		     struct error *err)
{
	struct stat st;

	if (mv->naming == NULL)
		return 0;
	if (mv->tmp[0] == '\0')
		st = mv->src_st;
	else if ((mv->tmp_fd != -1 ? fstat(mv->tmp_fd, &st) :
		  fstatat(mv->dest_dirfd, mv->tmp, &st,
			  AT_SYMLINK_NOFOLLOW)) == -1)
		return move_fail(mv, FSUTIL_SIDE_DEST, err, ERROR_TRANSIENT,
				 errno, "fstat of the copy");
	if (mv->naming(mv->ctx, cand, &st, err) == -1) {
		mv->side = FSUTIL_SIDE_DEST;
		return -1;
	}
	return 0;
}

/* Give the claimed source (or its copy) the name cand: see try_name(). */
static int place_at(struct fsutil_move *mv, const char *cand, struct error *err)
{
	if (tell_name(mv, cand, err) == -1)
		return -1;
	if (mv->tmp[0] == '\0') {
		if (rename_noreplace(mv->src_dirfd, mv->claim, mv->dest_dirfd,
				     cand) == 0) {
			mv->placed = true;
			/* Best effort: the file is in place either way, and
			 * a mode we could not set is not worth undoing it. */
			if (mv->mode != 0 && !S_ISLNK(mv->src_st.st_mode) &&
			    (mv->src_st.st_mode & 07777) != mv->mode &&
			    fchmodat(mv->dest_dirfd, cand, mv->mode, 0) == -1)
				mv->mode = 0;
			mv->claim[0] = '\0';
			return finish(mv, false, err);
		}
		if (errno == EEXIST)
			return 1;
		if (errno == EXDEV)
			return 2;
		return move_fail(mv, FSUTIL_SIDE_DEST, err,
				 error_kind_for_output_errno(errno), errno,
				 "cannot move into the destination");
	}
	switch (fsutil_publish(mv->dest_dirfd, mv->tmp, cand, err)) {
	case 0:
		mv->placed = mv->copied = true;
		mv->tmp[0] = '\0';
		drop_tmp(mv);
		return finish(mv, true, err);
	case 1:
		return 1;
	default:
		mv->side = FSUTIL_SIDE_DEST;
		return -1;
	}
}

/* The hash in the claimed source's clash names: of its bytes, or of a
 * symlink's target; other kinds get a fixed one (numbered after it). */
static int claim_hash(struct fsutil_move *mv, char *hex, struct error *err)
{
	char target[PATH_MAX];
	ssize_t n;
	int fd, rc;

	if (S_ISREG(mv->src_st.st_mode)) {
		fd = openat(mv->src_dirfd, mv->claim, O_RDONLY | O_NOFOLLOW |
			    O_NONBLOCK | O_CLOEXEC);
		if (fd == -1)
			return move_fail(mv, FSUTIL_SIDE_SOURCE, err,
					 ERROR_TRANSIENT, errno,
					 "cannot read the claimed source");
		rc = fsutil_hash_fd(fd, hex, err);
		close(fd);
		if (rc == -1)
			mv->side = FSUTIL_SIDE_SOURCE;
		return rc;
	}
	n = S_ISLNK(mv->src_st.st_mode) ?
	    readlinkat(mv->src_dirfd, mv->claim, target, sizeof(target)) : 0;
	if (n < 0)
		n = 0;
	for (unsigned i = 0, h = 2166136261u; i < 8; i++) {
		for (ssize_t j = 0; j < n; j++)
			h = (h ^ (unsigned char)target[j]) * 16777619u;
		h = (h ^ i) * 16777619u;
		snprintf(hex + 2 * i, 3, "%02x", h & 0xff);
	}
	return 0;
}

static int place_claim(struct fsutil_move *mv, struct error *err)
{
	char hash[17] = "";

	for (unsigned n = 0; n < FSUTIL_PLAIN_CLASHES + MOVE_MAX_NUMBERED; n++) {
		int rc;

		if (n == FSUTIL_PLAIN_CLASHES && claim_hash(mv, hash, err) == -1)
			return -1;
		if (fsutil_clash_name(mv->name, n, hash, mv->final,
				      sizeof(mv->final)) == -1)
			return move_fail(mv, FSUTIL_SIDE_DEST, err, ERROR_INPUT,
					 ENAMETOOLONG, "file name");
		rc = try_name(mv, mv->final, err);
		if (rc == 2) {
			if (copy_claim(mv, err) == -1)
				return -1;
			rc = try_name(mv, mv->final, err);
		}
		if (rc != 1)
			return rc;
	}
	return move_fail(mv, FSUTIL_SIDE_DEST, err, ERROR_TRANSIENT, 0,
			 "too many files of this name in the destination");
}

int fsutil_move(struct fsutil_move *mv, struct error *err)
{
	int rc;

	mv->src_dirfd = -1;
	mv->tmp_fd = -1;
	mv->tmp[0] = mv->claim[0] = mv->final[0] = '\0';
	mv->copied = mv->existed = mv->placed = mv->changed = false;
	mv->leased = mv->own_dirfd = mv->own_lease = false;
	mv->lease_fd = -1;
	mv->side = FSUTIL_SIDE_NONE;
	rc = claim(mv, err);
	if (rc == 0)
		rc = place_claim(mv, err);
	drop_tmp(mv);
	/* Failed with the source still claimed: it gets its name back, so a
	 * retry finds it where the sender left it. */
	if (mv->claim[0] != '\0')
		unclaim(mv->src_dirfd, mv->claim, mv->src_base);
	let_go(mv);
	if (mv->src_dirfd != -1 && mv->own_dirfd)
		close(mv->src_dirfd);
	mv->src_dirfd = -1;
	return rc;
}

int fsutil_remove(const char *source, const struct stat *expect,
		  enum fsutil_side *side, struct error *err)
{
	struct fsutil_remove_args args = { .source = source, .expect = expect };
	int rc = fsutil_remove_checked(&args, err);

	if (side != NULL)
		*side = args.side;
	return rc;
}

int fsutil_remove_checked(struct fsutil_remove_args *a, struct error *err)
{
	struct fsutil_move mv = { .source = a->source, .expect = a->expect,
				  .expect_sha256 = a->expect_sha256,
				  .dest_dirfd = -1 };
	int rc;

	mv.src_dirfd = -1;
	mv.lease_fd = -1;
	mv.claim[0] = '\0';
	rc = claim(&mv, err);
	/* Last look before the bytes go: a writer waiting to open it. */
	if (rc == 0 && hold_broken(&mv))
		rc = changed(&mv, err, "source is being opened for writing");
	if (rc == 0 && unlinkat(mv.src_dirfd, mv.claim, 0) == -1)
		rc = move_fail(&mv, FSUTIL_SIDE_SOURCE, err, ERROR_TRANSIENT,
			       errno, "cannot delete the source");
	else if (rc == 0)
		mv.claim[0] = '\0';
	if (mv.claim[0] != '\0')
		unclaim(mv.src_dirfd, mv.claim, mv.src_base);
	let_go(&mv);
	if (mv.src_dirfd != -1 && mv.own_dirfd)
		close(mv.src_dirfd);
	a->side = mv.side;
	a->changed = mv.changed;
	return rc;
}

long fsutil_recover_claims(const char *root, struct error *err)
{
	char *roots[] = { (char *)root, NULL };
	long recovered = 0;
	/* Names are all it needs: no stat of every file (a batch --move
	 * runs this over its whole input first). */
	FTS *fts = fts_open(roots, FTS_PHYSICAL | FTS_NOCHDIR | FTS_NOSTAT, NULL);
	FTSENT *e;

	if (fts == NULL)
		return error_set(err, ERROR_TRANSIENT, errno, "cannot scan %s", root);
	while ((e = fts_read(fts)) != NULL) {
		char ignored[PATH_MAX];

		if (e->fts_info == FTS_D || e->fts_info == FTS_DP ||
		    e->fts_info == FTS_DNR || e->fts_info == FTS_ERR)
			continue;
		if (fsutil_recover_claim(e->fts_path, ignored,
					 sizeof(ignored)) == 1)
			recovered++;
	}
	fts_close(fts);
	return recovered;
}

int fsutil_recover_claim(const char *path, char *out, size_t outlen)
{
	char base[NAME_MAX + 1], claim[NAME_MAX + 1], name[NAME_MAX + 1];
	const char *slash = strrchr(path, '/');
	const char *orig;
	int dirfd, rc;

	orig = claimed_base(slash == NULL ? path : slash + 1);
	if (orig == NULL)
		return 0;
	snprintf(base, sizeof(base), "%s", orig);
	dirfd = open_parent(path, claim, sizeof(claim));
	if (dirfd == -1)
		return -1;
	rc = unclaim_as(dirfd, claim, base, name);
	if (rc == 0) {
		fsync(dirfd);
		snprintf(out, outlen, "%.*s%s", slash == NULL ? 0 :
			 (int)(slash - path + 1), path, name);
	}
	close(dirfd);
	return rc == 0 ? 1 : -1;
}
