/* test_outbox.c - the forwarding outbox: hard links named by inode,
 * adding twice is adding once, a start sweeps what a kill left, rejected
 * entries keep an escaped reason. */
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

#include "dicomsort/outbox.h"

static char root[256];

static int make_root(void **state)
{
	char path[PATH_MAX];

	(void)state;
	snprintf(root, sizeof(root), "/tmp/test_outbox.XXXXXX");
	if (mkdtemp(root) == NULL)
		return -1;
	snprintf(path, sizeof(path), "%s/PAT", root);
	if (mkdir(path, 0755) == -1)
		return -1;
	snprintf(path, sizeof(path), "%s/PAT/1", root);
	return mkdir(path, 0755);
}

static int drop_root(void **state)
{
	char cmd[PATH_MAX + 16];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	return system(cmd) == 0 ? 0 : -1;
}

static void write_output(const char *rel, const char *text)
{
	char path[PATH_MAX];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", root, rel);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

static void count(void *ctx, const char *name, time_t since)
{
	(void)name;
	assert_true(since > 0);
	(*(int *)ctx)++;
}

/* Whether <root>/<dir><name><suffix> exists. */
static int exists(const char *dir, const char *name, const char *suffix)
{
	char path[PATH_MAX * 2];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s%s%s", root, dir, name, suffix);
	return lstat(path, &st) == 0;
}

#define BOX ".dicomsortd-state/outbox/"

static void add_links_once_and_done_removes(void **state)
{
	struct outbox *ob;
	struct error err = ERROR_INIT;
	char name[OUTBOX_NAME_MAX], again[OUTBOX_NAME_MAX], path[PATH_MAX];
	char ref[PATH_MAX];
	struct stat a, b;
	int n = 0;

	(void)state;
	write_output("PAT/1/img.dcm", "DICM bytes");
	assert_int_equal(outbox_open(&ob, root, "pacs", &err), 0);
	assert_int_equal(outbox_add(ob, "PAT/1/img.dcm", name, sizeof(name),
				    &err), 0);
	/* The name says nothing of the file's path or content. */
	assert_null(strstr(name, "PAT"));
	assert_null(strstr(name, "img"));
	assert_int_equal(outbox_add(ob, "PAT/1/img.dcm", again, sizeof(again),
				    &err), 1);
	assert_string_equal(name, again);
	/* A hard link: the same inode as the output. */
	outbox_path(ob, name, path, sizeof(path));
	assert_int_equal(stat(path, &a), 0);
	snprintf(ref, sizeof(ref), "%s/PAT/1/img.dcm", root);
	assert_int_equal(stat(ref, &b), 0);
	assert_true(a.st_ino == b.st_ino && a.st_nlink == 2);
	outbox_ref(ob, name, ref, sizeof(ref));
	assert_string_equal(ref, "PAT/1/img.dcm");
	assert_int_equal(outbox_scan(ob, count, &n, &err), 1);
	assert_int_equal(n, 1);
	assert_int_equal(outbox_done(ob, name, &err), 0);
	assert_false(exists(BOX "pacs/", name, ""));
	assert_false(exists(BOX "pacs/", name, ".ref"));
	/* The output itself stays. */
	assert_true(exists("", "PAT/1/img.dcm", ""));
	outbox_free(ob);
}

static void scan_sweeps_what_a_kill_left(void **state)
{
	struct outbox *ob;
	struct error err = ERROR_INIT;
	char path[PATH_MAX];
	int n = 0, fd;

	(void)state;
	assert_int_equal(outbox_open(&ob, root, "pacs", &err), 0);
	/* A .ref whose entry was never linked, and a temp file. */
	snprintf(path, sizeof(path), "%s/.dicomsortd-state/outbox/pacs/"
		 "1-2.3.dcm.ref", root);
	fd = open(path, O_WRONLY | O_CREAT, 0644);
	assert_true(fd >= 0);
	close(fd);
	snprintf(path, sizeof(path), "%s/.dicomsortd-state/outbox/pacs/"
		 ".dicomsort-x.tmp", root);
	fd = open(path, O_WRONLY | O_CREAT, 0644);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(outbox_scan(ob, count, &n, &err), 0);
	assert_false(exists(BOX "pacs/", "1-2.3.dcm.ref", ""));
	assert_false(exists(BOX "pacs/", ".dicomsort-x.tmp", ""));
	outbox_free(ob);
}

static void reject_moves_with_an_escaped_reason(void **state)
{
	struct outbox *ob;
	struct error err = ERROR_INIT;
	char name[OUTBOX_NAME_MAX], path[PATH_MAX], text[1024];
	int n = 0, fd;
	ssize_t len;

	(void)state;
	write_output("PAT/1/mr.dcm", "other bytes");
	assert_int_equal(outbox_open(&ob, root, "scp", &err), 0);
	assert_int_equal(outbox_add(ob, "PAT/1/mr.dcm", name, sizeof(name),
				    &err), 0);
	assert_int_equal(outbox_reject(ob, name, "status 0xC000\nfile: forged",
				       &err), 0);
	assert_int_equal(outbox_scan(ob, count, &n, &err), 0);
	assert_true(exists(BOX "scp/rejected/", name, ""));
	snprintf(path, sizeof(path), "%s/.dicomsortd-state/outbox/scp/rejected/"
		 "%s.reason", root, name);
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	len = read(fd, text, sizeof(text) - 1);
	close(fd);
	assert_true(len > 0);
	text[len] = '\0';
	assert_non_null(strstr(text, "reason: status 0xC000\\nfile: forged\n"));
	assert_non_null(strstr(text, "output: PAT/1/mr.dcm\n"));
	/* One "file:" line only: the peer's text cannot forge a key. */
	assert_null(strstr(strstr(text, "file: ") + 1, "\nfile: "));
	outbox_free(ob);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(add_links_once_and_done_removes),
		cmocka_unit_test(scan_sweeps_what_a_kill_left),
		cmocka_unit_test(reject_moves_with_an_escaped_reason),
	};

	return cmocka_run_group_tests(tests, make_root, drop_root);
}
