/* test_fsutil.c - directory creation below a root, temp files, no-clobber
 * publication and the original tool's numbered names. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <dirent.h>
#include <stdbool.h>

#include "dicomsort/fsutil.h"

static char root[256];

static int make_root(void **state)
{
	(void)state;
	snprintf(root, sizeof(root), "/tmp/test_fsutil.XXXXXX");
	return mkdtemp(root) ? 0 : -1;
}

static int drop_root(void **state)
{
	char cmd[PATH_MAX + 16];

	(void)state;
	/* A failed mount test must not leave its mount behind. */
	snprintf(cmd, sizeof(cmd), "%s/mnt", root);
	umount2(cmd, MNT_DETACH);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	return system(cmd) == 0 ? 0 : -1;
}

static void write_file(int dirfd, const char *name, const char *text)
{
	int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

static void numbered_names_follow_splitext(void **state)
{
	char out[PATH_MAX];

	(void)state;
	assert_int_equal(fsutil_numbered_name("img.dcm", 0, out, sizeof(out)), 0);
	assert_string_equal(out, "img.dcm");
	fsutil_numbered_name("img.dcm", 1, out, sizeof(out));
	assert_string_equal(out, "img_1.dcm");
	fsutil_numbered_name("IM0001", 2, out, sizeof(out));
	assert_string_equal(out, "IM0001_2");
	fsutil_numbered_name(".hidden", 1, out, sizeof(out));
	assert_string_equal(out, ".hidden_1");
	fsutil_numbered_name("a.b.c", 3, out, sizeof(out));
	assert_string_equal(out, "a.b_3.c");
}

static void numbered_names_stay_within_name_max(void **state)
{
	char base[256], out[PATH_MAX];

	(void)state;
	memset(base, 'x', 251);
	memcpy(base + 251, ".dcm", 5);
	assert_int_equal(fsutil_numbered_name(base, 12, out, sizeof(out)), 0);
	assert_int_equal(strlen(out), 255);
	assert_string_equal(out + 248, "_12.dcm");
}

/* Issue 12 item 11: a few numbered names, then one from the bytes' hash,
 * all within NAME_MAX. */
static void clash_names_turn_to_the_content_hash(void **state)
{
	char base[256], out[PATH_MAX], hex[17];
	struct error err = ERROR_INIT;
	FILE *f = tmpfile();

	(void)state;
	assert_non_null(f);
	fputs("abc", f);
	fflush(f);
	assert_int_equal(fsutil_hash_fd(fileno(f), hex, &err), 0);
	fclose(f);
	/* SHA-256("abc") = ba7816bf8f01cfea... */
	assert_string_equal(hex, "ba7816bf8f01cfea");
	assert_int_equal(fsutil_clash_name("img.dcm", 1, NULL, out, sizeof(out)), 0);
	assert_string_equal(out, "img_1.dcm");
	assert_int_equal(fsutil_clash_name("img.dcm", FSUTIL_PLAIN_CLASHES, NULL,
					   out, sizeof(out)), -1);
	fsutil_clash_name("img.dcm", FSUTIL_PLAIN_CLASHES, hex, out, sizeof(out));
	assert_string_equal(out, "img_ba7816bf8f01cfea.dcm");
	fsutil_clash_name("img.dcm", FSUTIL_PLAIN_CLASHES + 2, hex, out,
			  sizeof(out));
	assert_string_equal(out, "img_ba7816bf8f01cfea_2.dcm");
	memset(base, 'x', 251);
	memcpy(base + 251, ".dcm", 5);
	assert_int_equal(fsutil_clash_name(base, FSUTIL_PLAIN_CLASHES + 4000000000u,
					   hex, out, sizeof(out)), 0);
	assert_int_equal(strlen(out), 255);
	assert_int_equal(strlen(out) - 227, FSUTIL_CLASH_SUFFIX_MAX);
}

static void mkdirs_creates_and_refuses_dotdot(void **state)
{
	struct error err = ERROR_INIT;
	int rootfd = fsutil_open_dir(root, false, &err);
	int fd;

	(void)state;
	assert_true(rootfd >= 0);
	fd = fsutil_mkdirs_at(rootfd, "a/b/c", &err);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(fsutil_mkdirs_at(rootfd, "a/../../x", &err), -1);
	assert_int_equal(err.kind, ERROR_INPUT);
	close(rootfd);
}

/* Every durability mode makes the same folders and refuses the same
 * paths; only the fsyncs differ. */
static void mkdirs_sync_modes_make_the_same_folders(void **state)
{
	static const enum fsutil_dirs_sync modes[] = {
		FSUTIL_DIRS_SYNC_NEW, FSUTIL_DIRS_SYNC_PATH, FSUTIL_DIRS_DEFER };
	struct error err = ERROR_INIT;
	int rootfd = fsutil_open_dir(root, false, &err);
	char link[PATH_MAX];
	struct stat st;

	(void)state;
	assert_true(rootfd >= 0);
	snprintf(link, sizeof(link), "%s/evil", root);
	assert_int_equal(symlink("/tmp", link), 0);
	for (size_t i = 0; i < sizeof(modes) / sizeof(*modes); i++) {
		char rel[32];
		int fd;

		/* Made (a new branch), then found (the same path again). */
		snprintf(rel, sizeof(rel), "a/m%zu/c", i);
		for (int pass = 0; pass < 2; pass++) {
			fd = fsutil_mkdirs_sync_at(rootfd, rel, modes[i], &err);
			assert_true(fd >= 0);
			assert_int_equal(fstat(fd, &st), 0);
			assert_true(S_ISDIR(st.st_mode));
			close(fd);
		}
		assert_int_equal(fsutil_mkdirs_sync_at(rootfd, "evil/x", modes[i],
						       &err), -1);
		assert_int_equal(err.kind, ERROR_INPUT);
		assert_int_equal(fsutil_mkdirs_sync_at(rootfd, "a/../../x",
						       modes[i], &err), -1);
	}
	close(rootfd);
}

/* An anonymous temp file has the asked mode (less the umask) from the
 * start, and keeps it once published. */
static void anon_tmpfile_gets_its_mode_at_creation(void **state)
{
	struct error err = ERROR_INIT;
	int rootfd = fsutil_open_dir(root, false, &err);
	mode_t old = umask(022);
	char tmp[64];
	struct stat st;
	int fd;

	(void)state;
	assert_true(rootfd >= 0);
	fd = fsutil_anon_tmpfile_mode_at(rootfd, 0640, tmp, sizeof(tmp), &err);
	assert_true(fd >= 0);
	assert_int_equal(tmp[0], '/');	/* O_TMPFILE on this file system */
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0640);
	assert_int_equal(fsutil_publish(rootfd, tmp, "out.dcm", &err), 0);
	close(fd);
	assert_int_equal(fstatat(rootfd, "out.dcm", &st, 0), 0);
	assert_int_equal(st.st_mode & 07777, 0640);
	/* The umask still applies, as for open(). */
	umask(027);
	fd = fsutil_anon_tmpfile_mode_at(rootfd, 0666, tmp, sizeof(tmp), &err);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0640);
	close(fd);
	umask(old);
	close(rootfd);
}

static void mkdirs_never_follows_a_planted_symlink(void **state)
{
	struct error err = ERROR_INIT;
	int rootfd = fsutil_open_dir(root, false, &err);
	char link[PATH_MAX];

	(void)state;
	snprintf(link, sizeof(link), "%s/evil", root);
	assert_int_equal(symlink("/tmp", link), 0);
	assert_int_equal(fsutil_mkdirs_at(rootfd, "evil/x", &err), -1);
	assert_int_equal(err.kind, ERROR_INPUT);
	close(rootfd);
}

static void publish_never_overwrites(void **state)
{
	struct error err = ERROR_INIT;
	int rootfd = fsutil_open_dir(root, false, &err);
	char tmp[64];
	int fd;

	(void)state;
	write_file(rootfd, "final", "old");
	fd = fsutil_tmpfile_at(rootfd, tmp, sizeof(tmp), &err);
	assert_true(fd >= 0);
	assert_memory_equal(tmp, FSUTIL_TMP_PREFIX, strlen(FSUTIL_TMP_PREFIX));
	assert_int_equal(write(fd, "new", 3), 3);
	assert_int_equal(fsutil_publish(rootfd, tmp, "final", &err), 1);
	assert_int_equal(fsutil_publish(rootfd, tmp, "other", &err), 0);
	assert_int_equal(faccessat(rootfd, tmp, F_OK, 0), -1);
	close(fd);
	close(rootfd);
}

static void same_content_compares_bytes(void **state)
{
	struct error err = ERROR_INIT;
	int rootfd = fsutil_open_dir(root, false, &err);
	int a, b, c;

	(void)state;
	write_file(rootfd, "a", "same bytes");
	write_file(rootfd, "b", "same bytes");
	write_file(rootfd, "c", "same bytez");
	a = openat(rootfd, "a", O_RDONLY);
	b = openat(rootfd, "b", O_RDONLY);
	c = openat(rootfd, "c", O_RDONLY);
	assert_int_equal(fsutil_same_content(a, b, &err), 1);
	assert_int_equal(fsutil_same_content(a, c, &err), 0);
	close(a);
	close(b);
	close(c);
	close(rootfd);
}

/* ---- the one safe move ---- */

static char path_buf[PATH_MAX];

static const char *at(const char *rel)
{
	snprintf(path_buf, sizeof(path_buf), "%s/%s", root, rel);
	return path_buf;
}

static void make_dir(const char *rel)
{
	assert_int_equal(mkdir(at(rel), 0755), 0);
}

static void put(const char *rel, const char *text)
{
	write_file(AT_FDCWD, at(rel), text);
}

static bool exists(const char *rel)
{
	struct stat st;

	return lstat(at(rel), &st) == 0;
}

static char *slurp(const char *rel)
{
	static char buf[256];
	int fd = open(at(rel), O_RDONLY);
	ssize_t n;

	assert_true(fd >= 0);
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	assert_true(n >= 0);
	buf[n] = '\0';
	return buf;
}

/* Names in folder rel, with ours (.dicomsort-*) counted apart. */
static int count_entries(const char *rel, int *ours)
{
	DIR *dir = opendir(at(rel));
	struct dirent *de;
	int n = 0;

	assert_non_null(dir);
	*ours = 0;
	while ((de = readdir(dir)) != NULL) {
		if (de->d_name[0] == '.' && (de->d_name[1] == '\0' ||
		    strcmp(de->d_name, "..") == 0))
			continue;
		if (strncmp(de->d_name, FSUTIL_TMP_PREFIX,
			    strlen(FSUTIL_TMP_PREFIX)) == 0)
			(*ours)++;
		else
			n++;
	}
	closedir(dir);
	return n;
}

/* Set by a test for the moves of move_into(): a batch's group commit. */
static bool move_defer;

static int move_into(const char *src_rel, const char *dst_rel,
		     const char *name, struct fsutil_move *mv, struct error *err)
{
	char src[PATH_MAX];
	int rc;

	snprintf(src, sizeof(src), "%s/%s", root, src_rel);
	memset(mv, 0, sizeof(*mv));
	mv->defer_sync = move_defer;
	mv->source = src;
	mv->name = name;
	mv->dest_dirfd = open(at(dst_rel), O_RDONLY | O_DIRECTORY);
	assert_true(mv->dest_dirfd >= 0);
	rc = fsutil_move(mv, err);
	close(mv->dest_dirfd);
	return rc;
}

static void move_renames_without_replacing(void **state)
{
	struct error err = ERROR_INIT;
	struct fsutil_move mv;
	int ours;

	(void)state;
	make_dir("in");
	make_dir("done");
	put("in/a.dcm", "second");
	put("done/a.dcm", "first");
	assert_int_equal(move_into("in/a.dcm", "done", "a.dcm", &mv, &err), 0);
	assert_string_equal(mv.final, "a_1.dcm");
	assert_false(mv.copied);
	assert_false(mv.existed);
	assert_string_equal(slurp("done/a.dcm"), "first");
	assert_string_equal(slurp("done/a_1.dcm"), "second");
	assert_int_equal(count_entries("in", &ours), 0);
	assert_int_equal(ours, 0);
}

static void move_recognises_its_earlier_copy(void **state)
{
	struct error err = ERROR_INIT;
	struct fsutil_move mv;
	int ours;

	(void)state;
	make_dir("in");
	make_dir("done");
	/* A retry after the source could not be removed: the copy is there. */
	put("in/a.dcm", "same bytes");
	put("done/a.dcm", "same bytes");
	assert_int_equal(move_into("in/a.dcm", "done", "a.dcm", &mv, &err), 0);
	assert_true(mv.existed);
	assert_string_equal(mv.final, "a.dcm");
	assert_int_equal(count_entries("done", &ours), 1);
	assert_int_equal(count_entries("in", &ours), 0);
	assert_int_equal(ours, 0);
}

/* What the naming hook of move_tells_each_name() saw. */
struct named {
	char names[4][NAME_MAX + 1];
	struct stat st[4];
	int n;
	int fail_at;		/* the call that fails (-1: none) */
};

static int note_name(void *ctx, const char *name, const struct stat *st,
		     struct error *err)
{
	struct named *seen = ctx;

	assert_true(seen->n < 4);
	snprintf(seen->names[seen->n], sizeof(seen->names[0]), "%s", name);
	seen->st[seen->n] = *st;
	if (seen->n++ == seen->fail_at)
		return error_set(err, ERROR_TRANSIENT, ENOSPC, "no room");
	return 0;
}

/* The naming hook hears each name before the file may take it, with the
 * identity (inode, size, mtime) it will have there; failing, it leaves
 * the source under its own name. */
static void move_tells_each_name(void **state)
{
	struct error err = ERROR_INIT;
	struct named seen = { .fail_at = -1 };
	struct fsutil_move mv;
	struct stat src_st, out_st;
	char src[PATH_MAX];
	int ours;

	(void)state;
	make_dir("in");
	make_dir("done");
	put("in/a.dcm", "second");
	put("done/a.dcm", "first");
	assert_int_equal(stat(at("in/a.dcm"), &src_st), 0);
	snprintf(src, sizeof(src), "%s", at("in/a.dcm"));
	memset(&mv, 0, sizeof(mv));
	mv.source = src;
	mv.name = "a.dcm";
	mv.naming = note_name;
	mv.ctx = &seen;
	mv.dest_dirfd = open(at("done"), O_RDONLY | O_DIRECTORY);
	assert_int_equal(fsutil_move(&mv, &err), 0);
	assert_true(mv.placed);
	assert_int_equal(seen.n, 2);
	assert_string_equal(seen.names[0], "a.dcm");
	assert_string_equal(seen.names[1], "a_1.dcm");
	assert_string_equal(mv.final, "a_1.dcm");
	assert_int_equal(stat(at("done/a_1.dcm"), &out_st), 0);
	assert_true(seen.st[1].st_ino == out_st.st_ino &&
		    seen.st[1].st_ino == src_st.st_ino);
	assert_true(seen.st[1].st_size == out_st.st_size);
	assert_true(seen.st[1].st_mtim.tv_sec == out_st.st_mtim.tv_sec &&
		    seen.st[1].st_mtim.tv_nsec == out_st.st_mtim.tv_nsec);

	/* The hook refuses: nothing placed, the source keeps its name. */
	put("in/b.dcm", "third");
	snprintf(src, sizeof(src), "%s", at("in/b.dcm"));
	seen = (struct named){ .fail_at = 0 };
	mv.name = "b.dcm";
	error_clear(&err);
	assert_int_equal(fsutil_move(&mv, &err), -1);
	close(mv.dest_dirfd);
	assert_false(mv.placed);
	assert_int_equal(mv.side, FSUTIL_SIDE_DEST);
	assert_string_equal(slurp("in/b.dcm"), "third");
	assert_false(exists("done/b.dcm"));
	assert_int_equal(count_entries("in", &ours), 1);
	assert_int_equal(ours, 0);
}

static void move_refuses_a_replaced_source(void **state)
{
	struct error err = ERROR_INIT;
	struct fsutil_move mv = { 0 };
	struct stat read_st;
	char src[PATH_MAX];
	int ours;

	(void)state;
	make_dir("in");
	make_dir("done");
	put("in/a.dcm", "what the pipeline read");
	assert_int_equal(stat(at("in/a.dcm"), &read_st), 0);
	/* The sender re-delivers under the same name. */
	assert_int_equal(unlink(at("in/a.dcm")), 0);
	put("in/a.dcm", "a new delivery");
	snprintf(src, sizeof(src), "%s", at("in/a.dcm"));
	mv.source = src;
	mv.expect = &read_st;
	mv.name = "a.dcm";
	mv.dest_dirfd = open(at("done"), O_RDONLY | O_DIRECTORY);
	assert_int_equal(fsutil_move(&mv, &err), -1);
	close(mv.dest_dirfd);
	assert_int_equal(mv.side, FSUTIL_SIDE_SOURCE);
	assert_string_equal(slurp("in/a.dcm"), "a new delivery");
	assert_int_equal(count_entries("done", &ours), 0);
	/* fsutil_remove() refuses it the same way. */
	assert_int_equal(fsutil_remove(src, &read_st, NULL, &err), -1);
	assert_string_equal(slurp("in/a.dcm"), "a new delivery");
	assert_int_equal(stat(src, &read_st), 0);
	assert_int_equal(fsutil_remove(src, &read_st, NULL, &err), 0);
	assert_false(exists("in/a.dcm"));
	assert_int_equal(count_entries("in", &ours), 0);
	assert_int_equal(ours, 0);
}

/* Issue 12 item 2: rewritten in place with the same size and its mtime
 * set back (rsync --inplace -t), then a delete: only ctime tells, and the
 * file is another version - kept, and said to have changed. */
static void remove_keeps_a_same_size_rewrite(void **state)
{
	struct error err = ERROR_INIT;
	struct stat read_st;
	struct timespec times[2];
	char src[PATH_MAX], sha[65];
	struct fsutil_remove_args rm = { 0 };
	int fd, ours;

	(void)state;
	make_dir("in");
	put("in/a.dcm", "version A");
	snprintf(src, sizeof(src), "%s", at("in/a.dcm"));
	assert_int_equal(stat(src, &read_st), 0);
	fd = open(src, O_RDONLY);
	assert_int_equal(fsutil_sha256_fd(fd, sha, &err), 0);
	close(fd);
	usleep(20000);	/* past the file system's timestamp granularity */
	fd = open(src, O_WRONLY);
	assert_int_equal(pwrite(fd, "version B", 9, 0), 9);
	times[0] = read_st.st_atim;
	times[1] = read_st.st_mtim;
	assert_int_equal(futimens(fd, times), 0);
	close(fd);
	rm.source = src;
	rm.expect = &read_st;
	rm.expect_sha256 = sha;
	assert_int_equal(fsutil_remove_checked(&rm, &err), -1);
	assert_true(rm.changed);
	assert_string_equal(slurp("in/a.dcm"), "version B");
	/* The old check (inode, size, mtime) would have passed: */
	assert_int_equal(fsutil_remove(src, &read_st, NULL, &err), -1);
	assert_string_equal(slurp("in/a.dcm"), "version B");
	assert_int_equal(count_entries("in", &ours), 1);
	assert_int_equal(ours, 0);
}

/* A rename (or chmod) moves ctime too: the bytes decide, and the same
 * bytes are the same version. */
static void remove_takes_a_renamed_source_by_its_bytes(void **state)
{
	struct error err = ERROR_INIT;
	struct stat read_st;
	char src[PATH_MAX], from[PATH_MAX], sha[65];
	struct fsutil_remove_args rm = { 0 };
	int fd, ours;

	(void)state;
	make_dir("in");
	put("in/a.dcm", "version A");
	assert_int_equal(stat(at("in/a.dcm"), &read_st), 0);
	fd = open(at("in/a.dcm"), O_RDONLY);
	assert_int_equal(fsutil_sha256_fd(fd, sha, &err), 0);
	close(fd);
	usleep(20000);
	snprintf(from, sizeof(from), "%s", at("in/a.dcm"));
	snprintf(src, sizeof(src), "%s", at("in/b.dcm"));
	assert_int_equal(rename(from, src), 0);
	/* Without the bytes' hash a moved ctime is a change. */
	assert_int_equal(fsutil_remove(src, &read_st, NULL, &err), -1);
	assert_true(exists("in/b.dcm"));
	rm.source = src;
	rm.expect = &read_st;
	rm.expect_sha256 = sha;
	assert_int_equal(fsutil_remove_checked(&rm, &err), 0);
	assert_false(rm.changed);
	assert_int_equal(count_entries("in", &ours), 0);
	assert_int_equal(ours, 0);
}

/* A file someone holds open for writing is not the version read: the
 * lease that tells it is ours to take (we own the file). */
static void remove_keeps_a_file_open_for_writing(void **state)
{
	struct error err = ERROR_INIT;
	struct stat read_st;
	char src[PATH_MAX];
	struct fsutil_remove_args rm = { 0 };
	int writer;

	(void)state;
	make_dir("in");
	put("in/a.dcm", "version A");
	snprintf(src, sizeof(src), "%s", at("in/a.dcm"));
	assert_int_equal(stat(src, &read_st), 0);
	writer = open(src, O_WRONLY);
	assert_true(writer >= 0);
	rm.source = src;
	rm.expect = &read_st;
	assert_int_equal(fsutil_remove_checked(&rm, &err), -1);
	assert_true(rm.changed);
	assert_true(exists("in/a.dcm"));
	close(writer);
	assert_int_equal(fsutil_remove_checked(&rm, &err), 0);
	assert_false(exists("in/a.dcm"));
}

/* The caller's open descriptors of the source and its folder (batch
 * --move): the lease goes on the one read, both stay open and the
 * caller's; the checks are those of a move that opens its own. */
struct held {
	char src[PATH_MAX];
	struct stat st;
	int fd, dirfd, dest;
	struct fsutil_move mv;
};

static void hold(struct held *h, const char *src_rel, const char *name)
{
	snprintf(h->src, sizeof(h->src), "%s", at(src_rel));
	h->fd = open(h->src, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
	assert_true(h->fd >= 0);
	assert_int_equal(fstat(h->fd, &h->st), 0);
	h->dirfd = open(at("in"), O_RDONLY | O_DIRECTORY);
	h->dest = open(at("done"), O_RDONLY | O_DIRECTORY);
	assert_true(h->dirfd >= 0 && h->dest >= 0);
	memset(&h->mv, 0, sizeof(h->mv));
	h->mv.source = h->src;
	h->mv.expect = &h->st;
	h->mv.name = name;
	h->mv.dest_dirfd = h->dest;
	h->mv.defer_sync = true;
	h->mv.source_fd = &h->fd;
	h->mv.source_dirfd = &h->dirfd;
}

static void let_go_of(struct held *h)
{
	/* Still the caller's to close: fsutil_move() closed neither. */
	assert_int_equal(close(h->fd), 0);
	assert_int_equal(close(h->dirfd), 0);
	close(h->dest);
}

static void move_with_the_callers_descriptors(void **state)
{
	struct error err = ERROR_INIT;
	struct held h;
	struct stat st;
	int ours, writer;

	(void)state;
	make_dir("in");
	make_dir("done");
	/* A clash with other bytes: the next name, tried by the rename. */
	put("in/a.dcm", "second");
	put("done/a.dcm", "first");
	hold(&h, "in/a.dcm", "a.dcm");
	h.mv.mode = 0600;
	assert_int_equal(fsutil_move(&h.mv, &err), 0);
	assert_string_equal(h.mv.final, "a_1.dcm");
	assert_false(h.mv.copied || h.mv.existed);
	assert_int_equal(stat(at("done/a_1.dcm"), &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	assert_string_equal(slurp("done/a.dcm"), "first");
	let_go_of(&h);
	/* The same bytes there already: the source goes, nothing twice. */
	put("in/b.dcm", "same");
	put("done/b.dcm", "same");
	hold(&h, "in/b.dcm", "b.dcm");
	assert_int_equal(fsutil_move(&h.mv, &err), 0);
	assert_true(h.mv.existed);
	let_go_of(&h);
	assert_int_equal(count_entries("in", &ours), 0);
	assert_int_equal(ours, 0);
	/* A re-delivery under the name read: not the caller's file. */
	put("in/c.dcm", "read");
	hold(&h, "in/c.dcm", "c.dcm");
	assert_int_equal(unlink(at("in/c.dcm")), 0);
	put("in/c.dcm", "re-delivered");
	assert_int_equal(fsutil_move(&h.mv, &err), -1);
	assert_int_equal(h.mv.side, FSUTIL_SIDE_SOURCE);
	assert_string_equal(slurp("in/c.dcm"), "re-delivered");
	assert_false(exists("done/c.dcm"));
	let_go_of(&h);
	/* Open for writing: no lease on the caller's descriptor either. */
	put("in/d.dcm", "being written");
	hold(&h, "in/d.dcm", "d.dcm");
	writer = open(at("in/d.dcm"), O_WRONLY);
	assert_true(writer >= 0);
	assert_int_equal(fsutil_move(&h.mv, &err), -1);
	assert_true(h.mv.changed);
	assert_string_equal(slurp("in/d.dcm"), "being written");
	close(writer);
	let_go_of(&h);
	assert_int_equal(count_entries("in", &ours), 2);
	assert_int_equal(ours, 0);
	assert_int_equal(count_entries("done", &ours), 3);
	assert_int_equal(ours, 0);
}

/* hold() with the lease taken before the version is fstat'ed, as
 * pipeline's open_source() does for dicomsort --move: 0 when this file
 * system grants none (the test then has nothing to check). */
static int hold_leased(struct held *h, const char *src_rel, const char *name,
		       bool sigio_ignored)
{
	hold(h, src_rel, name);
	if (fsutil_lease(h->fd, sigio_ignored) != 1)
		return 0;
	assert_int_equal(fstat(h->fd, &h->st), 0);
	h->mv.source_leased = true;
	return 1;
}

/* A writer opening rel (appending " more") from a child process; back
 * once its open waits on our lease, which then shows broken. */
static pid_t writer_breaks_the_lease(struct held *h, const char *rel)
{
	char path[PATH_MAX], byte;
	int ready[2];
	pid_t writer;

	snprintf(path, sizeof(path), "%s", at(rel));
	assert_int_equal(pipe(ready), 0);
	writer = fork();
	assert_true(writer >= 0);
	if (writer == 0) {
		int fd;

		/* The lease lives as long as the open file: not ours here. */
		close(h->fd);
		close(ready[0]);
		if (write(ready[1], "x", 1) != 1)
			_exit(2);
		fd = open(path, O_WRONLY | O_APPEND);
		_exit(fd >= 0 && write(fd, " more", 5) == 5 ? 0 : 1);
	}
	close(ready[1]);
	assert_int_equal(read(ready[0], &byte, 1), 1);
	close(ready[0]);
	for (int i = 0; i < 3000 && fcntl(h->fd, F_GETLEASE) == F_RDLCK; i++)
		usleep(10000);
	assert_int_not_equal(fcntl(h->fd, F_GETLEASE), F_RDLCK);
	return writer;
}

/* source_leased: no look at the name before the claim. Still: a file
 * swapped in under the name never reaches the destination (it gets its
 * name back), and a writer opening the source meanwhile keeps it - with
 * the break signalled by SIGURG or, where the process ignores SIGIO, by
 * SIGIO (it must not end us). */
static void move_leased_before_the_read(void **state)
{
	struct error err = ERROR_INIT;
	struct held h;
	int ours, status;
	char other[PATH_MAX];
	pid_t writer;

	(void)state;
	make_dir("in");
	make_dir("done");
	put("in/a.dcm", "read");
	if (!hold_leased(&h, "in/a.dcm", "a.dcm", false)) {
		let_go_of(&h);
		skip();
	}
	assert_int_equal(fsutil_move(&h.mv, &err), 0);
	assert_string_equal(h.mv.final, "a.dcm");
	assert_string_equal(slurp("done/a.dcm"), "read");
	assert_false(exists("in/a.dcm"));
	let_go_of(&h);
	/* A sender renames another file over the name read. */
	put("in/b.dcm", "read");
	put("in/other", "swapped in");
	assert_int_equal(hold_leased(&h, "in/b.dcm", "b.dcm", false), 1);
	snprintf(other, sizeof(other), "%s", at("in/other"));
	assert_int_equal(rename(other, at("in/b.dcm")), 0);
	assert_int_equal(fsutil_move(&h.mv, &err), -1);
	assert_true(h.mv.changed);
	assert_int_equal(h.mv.side, FSUTIL_SIDE_SOURCE);
	assert_string_equal(slurp("in/b.dcm"), "swapped in");
	assert_false(exists("done/b.dcm"));
	let_go_of(&h);
	/* A writer opens it after the lease: its open waits for us; the
	 * move sees the break and keeps the source. */
	for (int ignored = 0; ignored < 2; ignored++) {
		const char *rel = ignored ? "in/d.dcm" : "in/c.dcm";

		if (ignored)
			assert_int_equal(fsutil_ignore_sigio(), 0);
		put(rel, "read");
		assert_int_equal(hold_leased(&h, rel, rel + 3, ignored), 1);
		writer = writer_breaks_the_lease(&h, rel);
		assert_int_equal(fsutil_move(&h.mv, &err), -1);
		assert_true(h.mv.changed);
		let_go_of(&h);
		assert_int_equal(waitpid(writer, &status, 0), writer);
		assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
		assert_string_equal(slurp(rel), "read more");
	}
	assert_false(exists("done/c.dcm") || exists("done/d.dcm"));
	assert_int_equal(count_entries("in", &ours), 3);
	assert_int_equal(ours, 0);
	assert_int_equal(count_entries("done", &ours), 1);
	assert_int_equal(ours, 0);
}

static void move_skips_a_name_with_a_companion(void **state)
{
	struct error err = ERROR_INIT;
	struct fsutil_move mv;
	char src[PATH_MAX];

	(void)state;
	make_dir("in");
	make_dir("q");
	put("in/x.dcm", "bad");
	put("q/x.dcm.reason", "another file's reason");
	snprintf(src, sizeof(src), "%s", at("in/x.dcm"));
	memset(&mv, 0, sizeof(mv));
	mv.source = src;
	mv.name = "x.dcm";
	mv.companion = ".reason";
	mv.dest_dirfd = open(at("q"), O_RDONLY | O_DIRECTORY);
	assert_int_equal(fsutil_move(&mv, &err), 0);
	close(mv.dest_dirfd);
	assert_string_equal(mv.final, "x_1.dcm");
}

static void claims_left_by_a_crash_get_their_names_back(void **state)
{
	struct error err = ERROR_INIT;
	int ours;

	(void)state;
	make_dir("in");
	make_dir("in/sub");
	put("in/" FSUTIL_CLAIM_PREFIX "1f.a.dcm", "claimed");
	put("in/sub/" FSUTIL_CLAIM_PREFIX "20.b.dcm", "claimed too");
	/* Re-delivered meanwhile: the claimed file must not replace it. */
	put("in/sub/b.dcm", "new delivery");
	put("in/" FSUTIL_TMP_PREFIX "0123456789ab.tmp", "not a claim");
	assert_int_equal(fsutil_recover_claims(at("in"), &err), 2);
	assert_string_equal(slurp("in/a.dcm"), "claimed");
	assert_string_equal(slurp("in/sub/b.dcm"), "new delivery");
	assert_string_equal(slurp("in/sub/b_1.dcm"), "claimed too");
	assert_int_equal(count_entries("in", &ours), 2);
	assert_int_equal(ours, 1);
}

/* One claim found by the caller's own walk (dicomsort's collect()):
 * back under its name, numbered if taken, and the caller told which. */
static void one_claim_gets_its_name_back_and_says_which(void **state)
{
	char out[PATH_MAX], want[PATH_MAX];

	(void)state;
	make_dir("in");
	put("in/" FSUTIL_CLAIM_PREFIX "1f.a.dcm", "claimed");
	put("in/" FSUTIL_CLAIM_PREFIX "20.b.dcm", "claimed too");
	put("in/b.dcm", "new delivery");
	put("in/c.dcm", "no claim");
	assert_int_equal(fsutil_recover_claim(at("in/" FSUTIL_CLAIM_PREFIX
						 "1f.a.dcm"), out, sizeof(out)), 1);
	snprintf(want, sizeof(want), "%s", at("in/a.dcm"));
	assert_string_equal(out, want);
	assert_string_equal(slurp("in/a.dcm"), "claimed");
	assert_int_equal(fsutil_recover_claim(at("in/" FSUTIL_CLAIM_PREFIX
						 "20.b.dcm"), out, sizeof(out)), 1);
	snprintf(want, sizeof(want), "%s", at("in/b_1.dcm"));
	assert_string_equal(out, want);
	assert_string_equal(slurp("in/b.dcm"), "new delivery");
	assert_string_equal(slurp("in/b_1.dcm"), "claimed too");
	assert_int_equal(fsutil_recover_claim(at("in/c.dcm"), out,
					      sizeof(out)), 0);
	assert_string_equal(slurp("in/c.dcm"), "no claim");
}

/* Across a mount: the copy, fsynced and linked, then the source goes;
 * mode and mtime are kept, and no temp file is left on either side. */
static void check_copy_across(const char *how)
{
	struct error err = ERROR_INIT;
	struct fsutil_move mv;
	struct stat before, after;
	struct timespec old[2] = { { 1000000, 0 }, { 1000000, 0 } };
	int ours;

	put("in/a.dcm", "original bytes");
	assert_int_equal(chmod(at("in/a.dcm"), 0640), 0);
	assert_int_equal(utimensat(AT_FDCWD, at("in/a.dcm"), old, 0), 0);
	assert_int_equal(stat(at("in/a.dcm"), &before), 0);
	put("mnt/a.dcm", "an earlier, different file");
	assert_int_equal(move_into("in/a.dcm", "mnt", "a.dcm", &mv, &err), 0);
	assert_true(mv.copied);
	assert_string_equal(mv.final, "a_1.dcm");
	assert_string_equal(slurp("mnt/a_1.dcm"), "original bytes");
	assert_string_equal(slurp("mnt/a.dcm"), "an earlier, different file");
	assert_int_equal(stat(at("mnt/a_1.dcm"), &after), 0);
	assert_int_equal(after.st_mode & 07777, 0640);
	assert_int_equal(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
	assert_false(exists("in/a.dcm"));
	assert_int_equal(count_entries("in", &ours), 0);
	assert_int_equal(ours, 0);
	assert_int_equal(count_entries("mnt", &ours), 2);
	assert_int_equal(ours, 0);

	/* A retry whose source came back (a crash before its removal, the
	 * claim renamed back at start) makes no second copy. */
	put("in/a.dcm", "original bytes");
	assert_int_equal(move_into("in/a.dcm", "mnt", "a.dcm", &mv, &err), 0);
	assert_true(mv.existed);
	assert_string_equal(mv.final, "a_1.dcm");
	assert_int_equal(count_entries("mnt", &ours), 2);
	assert_false(exists("in/a.dcm"));
	(void)how;
}

/* in/ and mnt/ under the test root, with mnt/ made a file system of its
 * own (mount(2) with source, type, flags and data as given): a move from
 * in/ into mnt/ cannot be a rename(2). Needs root. */
static void mount_over_mnt(const char *source, const char *type,
			   unsigned long flags, const char *data)
{
	const char *src = source != NULL ? source : at("mnt");

	make_dir("in");
	make_dir("mnt");
	if (mount(src, at("mnt"), type, flags, data) == -1) {
		print_message("cannot mount %s (%s): needs root\n",
			      type != NULL ? type : "a bind mount",
			      strerror(errno));
		fail();
	}
}

static void move_copies_across_a_bind_mount(void **state)
{
	(void)state;
	/* What systemd's ReadWritePaths= does: the same file system, but a
	 * mount of its own, so rename(2) fails with EXDEV. */
	mount_over_mnt(NULL, NULL, MS_BIND, NULL);
	check_copy_across("bind");
	assert_int_equal(umount2(at("mnt"), MNT_DETACH), 0);
}

/* Under a group commit a copy still destroys its source only after the
 * destination is synced: the same outcome, and no claim left. */
static void move_deferred_copies_across_a_bind_mount(void **state)
{
	(void)state;
	mount_over_mnt(NULL, NULL, MS_BIND, NULL);
	move_defer = true;
	check_copy_across("bind, deferred");
	move_defer = false;
	assert_int_equal(umount2(at("mnt"), MNT_DETACH), 0);
}

static void move_copies_into_another_file_system(void **state)
{
	(void)state;
	mount_over_mnt("tmpfs", "tmpfs", 0, "size=1m");
	check_copy_across("tmpfs");
	assert_int_equal(umount2(at("mnt"), MNT_DETACH), 0);
}

/* The per-file string helpers write exactly what snprintf() would, in
 * every buffer size (cut short, NUL-terminated, the rest untouched), and
 * return its length. */
static void string_helpers_write_what_snprintf_writes(void **state)
{
	static const char *const strs[] = { "", "a", "abcdef", "/x/y",
					    "0123456789abcdefghij" };
	static const int fds[] = { 0, 7, 10, 99, 123456, INT_MAX, -1, INT_MIN };
	char want[64], got[64];

	(void)state;
	for (size_t len = 1; len < 40; len++) {
		for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
			for (size_t k = 0; k < sizeof(strs) / sizeof(strs[0]); k++) {
				memset(want, 'x', sizeof(want));
				memset(got, 'x', sizeof(got));
				int w = snprintf(want, len, "%s/%s", strs[i], strs[k]);
				size_t n = fsutil_join_path(got, len, strs[i], strs[k]);
				assert_int_equal(n, (size_t)w);
				assert_memory_equal(got, want, sizeof(want));
			}
			memset(want, 'x', sizeof(want));
			memset(got, 'x', sizeof(got));
			int w = snprintf(want, len, "%s", strs[i]);
			assert_int_equal(fsutil_copy_str(got, len, strs[i]), (size_t)w);
			assert_memory_equal(got, want, sizeof(want));
		}
		for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
			memset(want, 'x', sizeof(want));
			memset(got, 'x', sizeof(got));
			int w = snprintf(want, len, "/proc/self/fd/%d", fds[i]);
			assert_int_equal(fsutil_proc_fd_path(got, len, fds[i]),
					 (size_t)w);
			assert_memory_equal(got, want, sizeof(want));
		}
	}
}

/*
 * A path whose folders all exist is opened in one call (openat2) rather
 * than walked; it must refuse what the walk refuses - a symlink at any
 * depth, "." and ".." - and look the path up afresh each time: a folder
 * renamed or removed after one file never takes the next.
 */
static void mkdirs_existing_path_is_looked_up_afresh(void **state)
{
	static const enum fsutil_dirs_sync modes[] = {
		FSUTIL_DIRS_SYNC_NEW, FSUTIL_DIRS_SYNC_PATH, FSUTIL_DIRS_DEFER };
	struct error err = ERROR_INIT;
	int rootfd = fsutil_open_dir(root, false, &err);
	char from[PATH_MAX], to[PATH_MAX];
	struct stat first, again, moved;
	int fd;

	(void)state;
	assert_true(rootfd >= 0);
	assert_int_equal(mkdirat(rootfd, "elsewhere", 0755), 0);
	assert_int_equal(mkdirat(rootfd, "elsewhere/c", 0755), 0);
	assert_int_equal(mkdirat(rootfd, "p", 0755), 0);
	assert_int_equal(symlinkat("../elsewhere", rootfd, "p/mid"), 0);
	assert_int_equal(symlinkat("elsewhere/c", rootfd, "last"), 0);
	for (size_t i = 0; i < sizeof(modes) / sizeof(*modes); i++) {
		/* A symlink in the middle or at the end of an existing path. */
		assert_int_equal(fsutil_mkdirs_sync_at(rootfd, "p/mid/c",
						       modes[i], &err), -1);
		assert_int_equal(err.kind, ERROR_INPUT);
		assert_int_equal(fsutil_mkdirs_sync_at(rootfd, "last", modes[i],
						       &err), -1);
		assert_int_equal(err.kind, ERROR_INPUT);
		/* "." and ".." even where the path exists and stays inside. */
		assert_int_equal(fsutil_mkdirs_sync_at(rootfd, "elsewhere/./c",
						       modes[i], &err), -1);
		assert_int_equal(err.kind, ERROR_INPUT);
		assert_int_equal(fsutil_mkdirs_sync_at(rootfd,
						       "p/../elsewhere/c",
						       modes[i], &err), -1);
		assert_int_equal(err.kind, ERROR_INPUT);
		/* Names that merely start with dots are folders like others. */
		fd = fsutil_mkdirs_sync_at(rootfd, ".a/..b/...", modes[i], &err);
		assert_true(fd >= 0);
		close(fd);
		fd = fsutil_mkdirs_sync_at(rootfd, "/.a//..b/.../", modes[i],
					   &err);
		assert_true(fd >= 0);
		close(fd);
	}
	/* Found, renamed away, asked for again: a new folder at the path. */
	fd = fsutil_mkdirs_at(rootfd, "P1/D/S", &err);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &first), 0);
	close(fd);
	fd = fsutil_mkdirs_sync_at(rootfd, "P1/D/S", FSUTIL_DIRS_DEFER, &err);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &again), 0);
	close(fd);
	assert_int_equal(again.st_ino, first.st_ino);
	snprintf(from, sizeof(from), "%s/P1/D", root);
	snprintf(to, sizeof(to), "%s/P1/D.renamed", root);
	assert_int_equal(rename(from, to), 0);
	fd = fsutil_mkdirs_sync_at(rootfd, "P1/D/S", FSUTIL_DIRS_DEFER, &err);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &again), 0);
	close(fd);
	assert_int_equal(fstatat(rootfd, "P1/D.renamed/S", &moved, 0), 0);
	assert_int_equal(moved.st_ino, first.st_ino);
	assert_true(again.st_ino != first.st_ino);
	/* Removed: made again. */
	snprintf(from, sizeof(from), "%s/P1/D/S", root);
	assert_int_equal(rmdir(from), 0);
	fd = fsutil_mkdirs_sync_at(rootfd, "P1/D/S", FSUTIL_DIRS_DEFER, &err);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &moved), 0);
	assert_true(moved.st_nlink > 0);
	close(fd);
	close(rootfd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(string_helpers_write_what_snprintf_writes),
		cmocka_unit_test(numbered_names_follow_splitext),
		cmocka_unit_test(numbered_names_stay_within_name_max),
		cmocka_unit_test(clash_names_turn_to_the_content_hash),
		cmocka_unit_test_setup_teardown(mkdirs_creates_and_refuses_dotdot,
						make_root, drop_root),
		cmocka_unit_test_setup_teardown(anon_tmpfile_gets_its_mode_at_creation,
						make_root, drop_root),
		cmocka_unit_test_setup_teardown(mkdirs_never_follows_a_planted_symlink,
						make_root, drop_root),
		cmocka_unit_test_setup_teardown(
			mkdirs_sync_modes_make_the_same_folders,
			make_root, drop_root),
		cmocka_unit_test_setup_teardown(
			mkdirs_existing_path_is_looked_up_afresh,
			make_root, drop_root),
		cmocka_unit_test_setup_teardown(publish_never_overwrites,
						make_root, drop_root),
		cmocka_unit_test_setup_teardown(same_content_compares_bytes,
						make_root, drop_root),
		cmocka_unit_test_setup_teardown(move_renames_without_replacing,
						make_root, drop_root),
		cmocka_unit_test_setup_teardown(move_recognises_its_earlier_copy,
						make_root, drop_root),
		cmocka_unit_test_setup_teardown(remove_keeps_a_same_size_rewrite,
						make_root, drop_root),
		cmocka_unit_test_setup_teardown(
			remove_takes_a_renamed_source_by_its_bytes,
			make_root, drop_root),
		cmocka_unit_test_setup_teardown(
			remove_keeps_a_file_open_for_writing,
			make_root, drop_root),
		cmocka_unit_test_setup_teardown(move_refuses_a_replaced_source,
						make_root, drop_root),
		cmocka_unit_test_setup_teardown(move_tells_each_name,
						make_root, drop_root),
		cmocka_unit_test_setup_teardown(move_skips_a_name_with_a_companion,
						make_root, drop_root),
		cmocka_unit_test_setup_teardown(move_with_the_callers_descriptors,
						make_root, drop_root),
		cmocka_unit_test_setup_teardown(move_leased_before_the_read,
						make_root, drop_root),
		cmocka_unit_test_setup_teardown(
			claims_left_by_a_crash_get_their_names_back,
			make_root, drop_root),
		cmocka_unit_test_setup_teardown(
			one_claim_gets_its_name_back_and_says_which,
			make_root, drop_root),
		cmocka_unit_test_setup_teardown(move_copies_across_a_bind_mount,
						make_root, drop_root),
		cmocka_unit_test_setup_teardown(
			move_deferred_copies_across_a_bind_mount,
			make_root, drop_root),
		cmocka_unit_test_setup_teardown(move_copies_into_another_file_system,
						make_root, drop_root),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
