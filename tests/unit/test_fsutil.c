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
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(numbered_names_follow_splitext),
		cmocka_unit_test(numbered_names_stay_within_name_max),
		cmocka_unit_test_setup_teardown(mkdirs_creates_and_refuses_dotdot,
						make_root, drop_root),
		cmocka_unit_test_setup_teardown(mkdirs_never_follows_a_planted_symlink,
						make_root, drop_root),
		cmocka_unit_test_setup_teardown(publish_never_overwrites,
						make_root, drop_root),
		cmocka_unit_test_setup_teardown(same_content_compares_bytes,
						make_root, drop_root),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
