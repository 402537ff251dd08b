/* test_watch.c - real inotify on real temporary folders: a file is handed
 * out once it was closed (or moved in) and stayed quiet for settle_ms, not
 * before and not twice; temporary names wait; new folders, backlog, queue
 * overflow and rewatch lose nothing; emptied old folders go. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "dicomsort/watch.h"

#define SETTLE_MS 200
/* How long a file that must come may take: generous, for a loaded machine
 * under ASan; waits end as soon as it comes. Only lower bounds on time are
 * asserted (a file handed out too early); an upper bound would assert the
 * scheduler's speed. */
#define WAIT_MS 20000

static const char *const ignore[] = { ".*", "*.part", "*.tmp", NULL };

static char base[PATH_MAX - 64];/* holds root and outside */
static char root[PATH_MAX];	/* the watched folder */
static char outside[PATH_MAX];	/* same file system, not watched */
static struct watch *w;

static int64_t now_ms(void)
{
	return watch_now_ms();
}

static const char *in(const char *dir, const char *rel)
{
	static char buf[4][PATH_MAX];
	static int next;
	char *p = buf[next++ % 4];

	if (snprintf(p, PATH_MAX, "%s/%s", dir, rel) >= PATH_MAX)
		fail_msg("path too long: %s/%s", dir, rel);
	return p;
}

static void write_file(const char *path, const char *text, int flags)
{
	int fd = open(path, O_WRONLY | O_CREAT | flags, 0644);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	assert_int_equal(close(fd), 0);
}

static void make_old(const char *path)
{
	struct timespec times[2] = { { time(NULL) - 3600, 0 },
				     { time(NULL) - 3600, 0 } };

	assert_int_equal(utimensat(AT_FDCWD, path, times, AT_SYMLINK_NOFOLLOW), 0);
}

static void start_watch(void)
{
	struct watch_options opts = { .root = root, .ignore = ignore,
				      .settle_ms = SETTLE_MS };
	struct error err = ERROR_INIT;

	assert_int_equal(watch_new(&w, &opts, &err), 0);
	assert_true(watch_fd(w) >= 0);
}

static int make_dirs(void **state)
{
	const char *tmp = getenv("DICOMSORT_TEST_TMP");

	(void)state;
	if (tmp == NULL)
		tmp = "/tmp";
	mkdir(tmp, 0755);
	snprintf(base, sizeof(base), "%s/test_watch.XXXXXX", tmp);
	if (mkdtemp(base) == NULL)
		return -1;
	snprintf(root, sizeof(root), "%s/in", base);
	snprintf(outside, sizeof(outside), "%s/outside", base);
	if (mkdir(root, 0755) == -1 || mkdir(outside, 0755) == -1)
		return -1;
	w = NULL;
	return 0;
}

static int make_dirs_and_watch(void **state)
{
	if (make_dirs(state) == -1)
		return -1;
	start_watch();
	return 0;
}

static int remove_one(const char *path, const struct stat *st, int type,
		      struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	return type == FTW_DP ? rmdir(path) : unlink(path);
}

static int drop_dirs(void **state)
{
	(void)state;
	watch_free(w);
	w = NULL;
	return nftw(base, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Handle events for ms milliseconds, as the daemon's loop would. The
 * queue is drained at least once, however late we get here: the kernel
 * queued the events of what the test just did before its call returned,
 * and a stall past ms must not leave them unhandled. */
static void pump(int ms)
{
	int64_t end = now_ms() + ms;
	int64_t left;
	struct error err = ERROR_INIT;

	while ((left = end - now_ms()) > 0) {
		struct pollfd pfd = { watch_fd(w), POLLIN, 0 };

		poll(&pfd, 1, (int)left);
		assert_true(watch_handle_events(w, &err) >= 0);
	}
	assert_true(watch_handle_events(w, &err) >= 0);
}

/*
 * The pending files, made pending by what the test finished at since (a
 * close, a scan), are not ready before since + SETTLE_MS: the nearest
 * deadline is at least that far. Asserted through watch_next_ready_ms() without
 * taking the file, so that a stall of the test itself past the deadline
 * (a loaded machine) leaves a bound that is still exact, not a failure.
 */
static void assert_held_since(int64_t since)
{
	int64_t next = watch_next_ready_ms(w);
	int64_t elapsed = now_ms() - since;

	assert_true(next >= 0);
	if (next < SETTLE_MS - elapsed) {
		print_error("due in %lld ms, %lld ms after its last event\n",
			    (long long)next, (long long)elapsed);
		fail();
	}
}

/* Pump until something is ready (or timeout_ms passes); take up to max. */
static size_t wait_ready(char **paths, size_t max, int timeout_ms)
{
	int64_t end = now_ms() + timeout_ms;

	for (;;) {
		struct pollfd pfd = { watch_fd(w), POLLIN, 0 };
		struct error err = ERROR_INIT;
		int64_t left = end - now_ms(), next;
		size_t n;

		assert_true(watch_handle_events(w, &err) >= 0);
		n = watch_take_ready(w, paths, max);
		if (n > 0 || left <= 0)
			return n;
		next = watch_next_ready_ms(w);
		if (next >= 0 && next < left)
			left = next;
		poll(&pfd, 1, (int)left + 1);
	}
}

/* Expect exactly path to be handed out within timeout_ms. */
static void expect_ready(const char *path, int timeout_ms)
{
	char *got[4];
	size_t n = wait_ready(got, 4, timeout_ms);

	assert_int_equal(n, 1);
	assert_string_equal(got[0], path);
	free(got[0]);
}

static void expect_nothing_ready(int ms)
{
	char *got[1];

	pump(ms);
	if (watch_take_ready(w, got, 1) == 1) {
		print_error("unexpectedly ready: %s\n", got[0]);
		free(got[0]);
		fail();
	}
}

/* Take ready paths into names, failing on repeats, until want came (or
 * WAIT_MS passed), then for another SETTLE_MS + 50 ms: what comes then is
 * one too many and counted too. Returns the count. */
static size_t take_all(char **names, size_t max, size_t want)
{
	int64_t end = now_ms() + WAIT_MS;
	size_t total = 0;
	bool extra = false;
	char *got[64];

	for (;;) {
		int64_t left = end - now_ms();
		size_t n;

		if (total >= want && !extra) {
			extra = true;
			end = now_ms() + SETTLE_MS + 50;
			left = SETTLE_MS + 50;
		}
		n = wait_ready(got, 64, left > 0 ? (int)left : 0);
		if (n == 0 && now_ms() >= end)
			return total;
		for (size_t i = 0; i < n; i++) {
			for (size_t j = 0; j < total; j++)
				assert_string_not_equal(names[j], got[i]);
			assert_true(total < max);
			names[total++] = got[i];
		}
	}
}

static bool taken(char **names, size_t n, const char *path)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(names[i], path) == 0)
			return true;
	return false;
}

static void free_all(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
}

static void closed_file_waits_for_settle_ms(void **state)
{
	const char *path = in(root, "a.dcm");
	char *got[1];
	int64_t closed;

	(void)state;
	write_file(path, "DICM", O_TRUNC);
	closed = now_ms();
	pump(SETTLE_MS / 2);
	assert_int_equal(watch_pending_count(w), 1);
	assert_held_since(closed);
	assert_int_equal(wait_ready(got, 1, WAIT_MS), 1);
	assert_true(now_ms() - closed >= SETTLE_MS);
	assert_string_equal(got[0], path);
	free(got[0]);
	assert_int_equal(watch_pending_count(w), 0);
	assert_int_equal(watch_in_flight_count(w), 1);
	assert_int_equal(watch_next_ready_ms(w), -1);
	watch_done(w, path);
	assert_int_equal(watch_in_flight_count(w), 0);
	expect_nothing_ready(SETTLE_MS + 50);
}

/* Write, close, reopen, write, close... over 3 x settle_ms, each pause
 * shorter than settle_ms: not handed out before the last close settles. */
static void slow_writer_waits_for_its_last_close(void **state)
{
	const char *path = in(root, "slow.dcm");
	char *got[1];
	int64_t last;

	(void)state;
	write_file(path, "part1", O_TRUNC);
	last = now_ms();
	for (int i = 0; i < 5; i++) {
		pump(SETTLE_MS * 3 / 4);
		assert_int_equal(watch_pending_count(w), 1);
		assert_held_since(last);
		write_file(path, "more", O_APPEND);
		last = now_ms();
	}
	assert_int_equal(wait_ready(got, 1, WAIT_MS), 1);
	assert_true(now_ms() - last >= SETTLE_MS);
	free(got[0]);
}

/* A writer that keeps the file open and pauses longer than settle_ms:
 * its write made the file wait for the close. */
static void open_writer_is_waited_for(void **state)
{
	const char *path = in(root, "open.dcm");
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	int64_t closed;

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "x", 1), 1);
	expect_nothing_ready(SETTLE_MS * 3);
	assert_int_equal(watch_pending_count(w), 1);
	assert_int_equal(write(fd, "y", 1), 1);
	expect_nothing_ready(SETTLE_MS * 2);
	close(fd);
	closed = now_ms();
	expect_ready(path, WAIT_MS);
	assert_true(now_ms() - closed >= SETTLE_MS);
}

static void moved_in_file_is_ready(void **state)
{
	(void)state;
	write_file(in(outside, "m.dcm"), "DICM", O_TRUNC);
	expect_nothing_ready(50);
	assert_int_equal(rename(in(outside, "m.dcm"), in(root, "m.dcm")), 0);
	expect_ready(in(root, "m.dcm"), WAIT_MS);
}

static void temporary_names_wait_until_renamed(void **state)
{
	(void)state;
	write_file(in(root, ".x.part"), "DICM", O_TRUNC);
	write_file(in(root, ".rsync.abc"), "DICM", O_TRUNC);
	write_file(in(root, "y.tmp"), "DICM", O_TRUNC);
	assert_int_equal(mkdir(in(root, ".incoming"), 0755), 0);
	write_file(in(root, ".incoming/s.dcm"), "DICM", O_TRUNC);
	expect_nothing_ready(SETTLE_MS * 2);
	assert_int_equal(watch_pending_count(w), 0);

	assert_int_equal(rename(in(root, ".x.part"), in(root, "x.dcm")), 0);
	expect_ready(in(root, "x.dcm"), WAIT_MS);
	assert_int_equal(rename(in(root, ".rsync.abc"), in(root, "abc.dcm")), 0);
	expect_ready(in(root, "abc.dcm"), WAIT_MS);
	/* A folder renamed to a real name: everything inside counts now. */
	assert_int_equal(rename(in(root, ".incoming"), in(root, "study")), 0);
	expect_ready(in(root, "study/s.dcm"), WAIT_MS);
	expect_nothing_ready(SETTLE_MS + 50);
}

/* Files written right after mkdir race the new folder's watch: the scan
 * that follows the watch must find them. */
static void new_folders_are_watched_and_scanned(void **state)
{
	char *names[16];
	size_t n;

	(void)state;
	assert_int_equal(mkdir(in(root, "sub"), 0755), 0);
	write_file(in(root, "sub/a.dcm"), "DICM", O_TRUNC);
	assert_int_equal(mkdir(in(root, "sub2"), 0755), 0);
	assert_int_equal(mkdir(in(root, "sub2/x"), 0755), 0);
	assert_int_equal(mkdir(in(root, "sub2/x/y"), 0755), 0);
	write_file(in(root, "sub2/x/y/b.dcm"), "DICM", O_TRUNC);
	pump(50);
	write_file(in(root, "sub/c.dcm"), "DICM", O_TRUNC);
	assert_int_equal(mkdir(in(root, "sub2/x/y/z"), 0755), 0);
	write_file(in(root, "sub2/x/y/z/d.dcm"), "DICM", O_TRUNC);

	n = take_all(names, 16, 4);
	assert_int_equal(n, 4);
	assert_true(taken(names, n, in(root, "sub/a.dcm")));
	assert_true(taken(names, n, in(root, "sub/c.dcm")));
	assert_true(taken(names, n, in(root, "sub2/x/y/b.dcm")));
	assert_true(taken(names, n, in(root, "sub2/x/y/z/d.dcm")));
	free_all(names, n);
}

/* Symlinks are handed out (the pipeline rejects them); a symlinked folder
 * is not descended into. */
static void backlog_is_found_by_scan(void **state)
{
	struct error err = ERROR_INIT;
	int64_t scanned;
	char *names[16];
	size_t n;

	(void)state;
	assert_int_equal(mkdir(in(root, "p1"), 0755), 0);
	assert_int_equal(mkdir(in(root, "p1/s1"), 0755), 0);
	write_file(in(root, "top.dcm"), "DICM", O_TRUNC);
	write_file(in(root, "p1/s1/i1.dcm"), "DICM", O_TRUNC);
	write_file(in(root, "p1/.hidden"), "DICM", O_TRUNC);
	write_file(in(root, "p1/half.part"), "DICM", O_TRUNC);
	write_file(in(outside, "target.dcm"), "DICM", O_TRUNC);
	assert_int_equal(mkdir(in(outside, "dir"), 0755), 0);
	write_file(in(outside, "dir/inner.dcm"), "DICM", O_TRUNC);
	assert_int_equal(symlink(in(outside, "target.dcm"), in(root, "link.dcm")), 0);
	assert_int_equal(symlink(in(outside, "dir"), in(root, "dirlink")), 0);

	start_watch();
	assert_int_equal(watch_pending_count(w), 0);
	scanned = now_ms();
	assert_int_equal(watch_scan(w, &err), 4);
	assert_int_equal(watch_pending_count(w), 4);
	assert_int_equal(watch_scan(w, &err), 0);
	pump(SETTLE_MS / 2);
	assert_int_equal(watch_pending_count(w), 4);
	assert_held_since(scanned);
	n = take_all(names, 16, 4);
	assert_int_equal(n, 4);
	assert_true(taken(names, n, in(root, "top.dcm")));
	assert_true(taken(names, n, in(root, "p1/s1/i1.dcm")));
	assert_true(taken(names, n, in(root, "link.dcm")));
	assert_true(taken(names, n, in(root, "dirlink")));
	free_all(names, n);
}

static void file_in_flight_is_not_handed_out_twice(void **state)
{
	struct error err = ERROR_INIT;
	const char *path = in(root, "f.dcm");
	int64_t written;

	(void)state;
	write_file(path, "DICM", O_TRUNC);
	expect_ready(path, WAIT_MS);
	assert_int_equal(watch_scan(w, &err), 0);
	expect_nothing_ready(SETTLE_MS * 2);
	assert_int_equal(watch_in_flight_count(w), 1);

	/* Our own reading of it is no write. */
	{
		char buf[8];
		int fd = open(path, O_RDONLY);

		assert_true(read(fd, buf, sizeof(buf)) > 0);
		close(fd);
	}
	pump(50);
	watch_done(w, path);
	assert_int_equal(watch_pending_count(w), 0);
	assert_int_equal(watch_in_flight_count(w), 0);

	/* A write while in flight: pending again once done. */
	assert_int_equal(watch_scan(w, &err), 1);
	expect_ready(path, WAIT_MS);
	write_file(path, "more", O_APPEND);
	written = now_ms();
	expect_nothing_ready(50);
	watch_done(w, path);
	assert_int_equal(watch_pending_count(w), 1);
	expect_ready(path, WAIT_MS);
	assert_true(now_ms() - written >= SETTLE_MS);

	/* Written, then deleted (stored and removed) while in flight. */
	write_file(path, "again", O_APPEND);
	pump(20);
	assert_int_equal(unlink(path), 0);
	pump(20);
	watch_done(w, path);
	assert_int_equal(watch_pending_count(w), 0);
	assert_int_equal(watch_in_flight_count(w), 0);
	expect_nothing_ready(SETTLE_MS + 50);
}

static void retry_offers_again_after_the_delay(void **state)
{
	const char *path = in(root, "r.dcm");
	char *got[1];
	int64_t retried, next;

	(void)state;
	write_file(path, "DICM", O_TRUNC);
	expect_ready(path, WAIT_MS);
	assert_int_equal(watch_attempts(w, path), 0);
	/* Taken before the call: the delay counts from no earlier. */
	retried = now_ms();
	watch_retry(w, path, 400);
	assert_int_equal(watch_attempts(w, path), 1);
	assert_int_equal(watch_in_flight_count(w), 0);
	assert_int_equal(watch_pending_count(w), 1);
	next = watch_next_ready_ms(w);
	assert_true(next >= 400 - (now_ms() - retried));
	/* Not ready yet, unless we were kept from asking for 400 ms. */
	if (watch_take_ready(w, got, 1) == 0)
		expect_ready(path, WAIT_MS);
	else {
		assert_string_equal(got[0], path);
		free(got[0]);
	}
	assert_true(now_ms() - retried >= 400);
	watch_retry(w, path, 0);
	assert_int_equal(watch_attempts(w, path), 2);
	expect_ready(path, 100);
	watch_done(w, path);
	assert_int_equal(watch_attempts(w, path), 0);
}

static void deleted_pending_file_is_forgotten(void **state)
{
	(void)state;
	write_file(in(root, "gone.dcm"), "DICM", O_TRUNC);
	pump(20);
	assert_int_equal(watch_pending_count(w), 1);
	assert_int_equal(unlink(in(root, "gone.dcm")), 0);
	pump(20);
	assert_int_equal(watch_pending_count(w), 0);
	write_file(in(root, "away.dcm"), "DICM", O_TRUNC);
	pump(20);
	assert_int_equal(rename(in(root, "away.dcm"), in(outside, "away.dcm")), 0);
	expect_nothing_ready(SETTLE_MS + 50);
	assert_int_equal(watch_pending_count(w), 0);
}

/* A hard link brings a file without IN_CLOSE_WRITE: only a scan finds it,
 * which makes it a witness of whether a rescan happened. */
static void rewatch_rescans_and_keeps_watching(void **state)
{
	struct error err = ERROR_INIT;

	(void)state;
	assert_int_equal(mkdir(in(root, "a"), 0755), 0);
	write_file(in(root, "a/f1.dcm"), "DICM", O_TRUNC);
	expect_ready(in(root, "a/f1.dcm"), WAIT_MS);
	watch_done(w, in(root, "a/f1.dcm"));
	assert_int_equal(unlink(in(root, "a/f1.dcm")), 0);

	/* A moved folder: new files in it carry the new path. */
	assert_int_equal(rename(in(root, "a"), in(root, "b")), 0);
	pump(50);
	write_file(in(root, "b/f2.dcm"), "DICM", O_TRUNC);
	expect_ready(in(root, "b/f2.dcm"), WAIT_MS);
	watch_done(w, in(root, "b/f2.dcm"));
	assert_int_equal(unlink(in(root, "b/f2.dcm")), 0);

	write_file(in(outside, "hl.dcm"), "DICM", O_TRUNC);
	assert_int_equal(link(in(outside, "hl.dcm"), in(root, "b/hl.dcm")), 0);
	expect_nothing_ready(SETTLE_MS + 50);
	assert_int_equal(watch_rewatch(w, &err), 1);
	assert_true(watch_fd(w) >= 0);
	expect_ready(in(root, "b/hl.dcm"), WAIT_MS);

	assert_int_equal(mkdir(in(root, "c"), 0755), 0);
	write_file(in(root, "c/f3.dcm"), "DICM", O_TRUNC);
	write_file(in(root, "b/f4.dcm"), "DICM", O_TRUNC);
	{
		char *names[4];
		size_t n = take_all(names, 4, 2);

		assert_int_equal(n, 2);
		assert_true(taken(names, n, in(root, "c/f3.dcm")));
		assert_true(taken(names, n, in(root, "b/f4.dcm")));
		free_all(names, n);
	}
}

static long read_long(const char *path)
{
	FILE *f = fopen(path, "r");
	long v = -1;

	if (f != NULL) {
		if (fscanf(f, "%ld", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

/* More events than the kernel queues while nobody reads: the overflow
 * event triggers a rebuild, whose scan finds the files whose events were
 * lost. Uses the system's limit as it is; skipped when it is huge. */
static void queue_overflow_loses_nothing(void **state)
{
	long limit = read_long("/proc/sys/fs/inotify/max_queued_events");
	struct error err = ERROR_INIT;
	char **names;
	long nfiles;
	size_t n;

	(void)state;
	if (limit <= 0 || limit > 65536) {
		print_message("max_queued_events=%ld: overflow test skipped\n",
			      limit);
		skip();
	}
	/* IN_CREATE, IN_OPEN, IN_MODIFY, IN_CLOSE_WRITE per file. */
	nfiles = limit / 4 + 1000;
	for (long i = 0; i < nfiles; i++) {
		char name[32];

		snprintf(name, sizeof(name), "o%06ld.dcm", i);
		write_file(in(root, name), "D", O_TRUNC);
	}
	assert_true(watch_handle_events(w, &err) >= 0);
	assert_int_equal(watch_pending_count(w), (size_t)nfiles);
	names = calloc((size_t)nfiles, sizeof(*names));
	n = take_all(names, (size_t)nfiles, (size_t)nfiles);
	assert_int_equal(n, (size_t)nfiles);
	for (size_t i = 0; i < n; i++)
		watch_done(w, names[i]);
	free_all(names, n);
	free(names);
	/* Still watching after the rebuild. */
	write_file(in(root, "after.dcm"), "DICM", O_TRUNC);
	expect_ready(in(root, "after.dcm"), WAIT_MS);
}

static void empty_old_folders_are_removed(void **state)
{
	struct stat st;

	(void)state;
	assert_int_equal(mkdir(in(root, "old1"), 0755), 0);
	assert_int_equal(mkdir(in(root, "old1/old2"), 0755), 0);
	assert_int_equal(mkdir(in(root, "young"), 0755), 0);
	assert_int_equal(mkdir(in(root, "full"), 0755), 0);
	assert_int_equal(mkdir(in(root, "busy"), 0755), 0);
	assert_int_equal(mkdir(in(root, ".staging"), 0755), 0);
	write_file(in(root, "full/keep.dcm"), "DICM", O_TRUNC);
	write_file(in(root, "busy/f.dcm"), "DICM", O_TRUNC);
	{
		char *names[4];
		size_t n = take_all(names, 4, 2);

		assert_int_equal(n, 2);
		free_all(names, n);
	}
	watch_done(w, in(root, "full/keep.dcm"));
	/* In flight and already unlinked: the folder looks empty. */
	assert_int_equal(unlink(in(root, "busy/f.dcm")), 0);
	write_file(in(outside, "hl.dcm"), "DICM", O_TRUNC);
	make_old(in(root, "old1/old2"));
	make_old(in(root, "old1"));
	make_old(in(root, "full"));
	make_old(in(root, "busy"));
	make_old(in(root, ".staging"));
	make_old(root);
	pump(50);

	assert_int_equal(watch_remove_empty_dirs(w, 600), 2);
	assert_int_equal(lstat(in(root, "old1"), &st), -1);
	assert_int_equal(lstat(in(root, "young"), &st), 0);
	assert_int_equal(lstat(in(root, "full"), &st), 0);
	assert_int_equal(lstat(in(root, "busy"), &st), 0);
	assert_int_equal(lstat(in(root, ".staging"), &st), 0);
	assert_int_equal(lstat(root, &st), 0);

	/* Our own rmdir must not cost a rescan: a hard link, which only a
	 * scan would find, stays unnoticed. */
	assert_int_equal(link(in(outside, "hl.dcm"), in(root, "hl.dcm")), 0);
	pump(100);
	assert_int_equal(watch_pending_count(w), 0);

	watch_done(w, in(root, "busy/f.dcm"));
	assert_int_equal(watch_remove_empty_dirs(w, 600), 1);
	assert_int_equal(lstat(in(root, "busy"), &st), -1);
	assert_int_equal(watch_remove_empty_dirs(w, 0), 1);	/* young */
	assert_int_equal(lstat(root, &st), 0);
}

static void burst_of_2000_files_each_ready_once(void **state)
{
	enum { N = 2000 };
	static unsigned char seen[N];
	size_t total = 0;
	int64_t start, created;

	(void)state;
	memset(seen, 0, sizeof(seen));
	start = now_ms();
	for (int i = 0; i < N; i++) {
		char name[32];

		snprintf(name, sizeof(name), "b%04d.dcm", i);
		write_file(in(root, name), "DICM", O_TRUNC);
	}
	created = now_ms();
	while (total < N && now_ms() - created < 3 * WAIT_MS) {
		char *got[64];
		size_t n = wait_ready(got, 64, 1000);

		for (size_t i = 0; i < n; i++) {
			const char *b = strrchr(got[i], '/') + 1;
			int idx = atoi(b + 1);

			assert_true(idx >= 0 && idx < N);
			assert_int_equal(seen[idx], 0);
			seen[idx] = 1;
			watch_done(w, got[i]);
			free(got[i]);
		}
		total += n;
	}
	assert_int_equal(total, N);
	print_message("%d files: created in %lld ms, all ready %lld ms after "
		      "the last close\n", N, (long long)(created - start),
		      (long long)(now_ms() - created));
	expect_nothing_ready(SETTLE_MS + 50);
	assert_int_equal(watch_pending_count(w), 0);
	assert_int_equal(watch_in_flight_count(w), 0);
}

/*
 * Issue 12 item 8: a reader that opens and reads the file every
 * settle_ms / 3 (a virus scanner, a checksum tool) does not keep it from
 * being handed out: only writers may delay a file.
 */
static void frequent_reader_does_not_delay(void **state)
{
	const char *path = in(root, "scanned.dcm");
	int64_t closed, next_read = 0;
	char *got[1];
	size_t n = 0;

	(void)state;
	write_file(path, "DICM", O_TRUNC);
	closed = now_ms();
	while (n == 0 && now_ms() - closed < WAIT_MS) {
		if (now_ms() >= next_read) {
			char buf[8];
			int fd = open(path, O_RDONLY);

			assert_true(fd >= 0);
			assert_true(read(fd, buf, sizeof(buf)) > 0);
			assert_int_equal(close(fd), 0);
			next_read = now_ms() + SETTLE_MS / 3;
		}
		n = wait_ready(got, 1, SETTLE_MS / 6);
	}
	assert_int_equal(n, 1);
	assert_string_equal(got[0], path);
	free(got[0]);
	print_message("read every %d ms, handed out %lld ms after the close\n",
		      SETTLE_MS / 3, (long long)(now_ms() - closed));
}

/*
 * Issue 12 item 6: a folder removed (as the empty-folder cleanup does) and
 * made again under the same name is watched again: libinotifytools keeps
 * the dead watch under the old path, which must not pass for a live one.
 * No rescan runs here, so only inotify can find the files.
 */
static void folder_made_again_is_watched_again(void **state)
{
	char sub[PATH_MAX], deep[PATH_MAX];

	(void)state;
	snprintf(sub, sizeof(sub), "%s", in(root, "sub"));
	snprintf(deep, sizeof(deep), "%s", in(root, "sub/a/b"));
	for (int round = 0; round < 3; round++) {
		char name[32];

		assert_int_equal(mkdir(sub, 0755), 0);
		pump(50);
		snprintf(name, sizeof(name), "sub/f%d.dcm", round);
		write_file(in(root, name), "DICM", O_TRUNC);
		expect_ready(in(root, name), WAIT_MS);
		watch_done(w, in(root, name));
		assert_int_equal(unlink(in(root, name)), 0);
		assert_int_equal(rmdir(sub), 0);
		pump(50);
	}

	/* The cleanup's own rmdir of an emptied tree, then the same tree. */
	assert_int_equal(mkdir(sub, 0755), 0);
	assert_int_equal(mkdir(in(root, "sub/a"), 0755), 0);
	assert_int_equal(mkdir(deep, 0755), 0);
	pump(100);
	make_old(deep);
	make_old(in(root, "sub/a"));
	make_old(sub);
	assert_int_equal(watch_remove_empty_dirs(w, 600), 3);
	pump(100);
	assert_int_equal(mkdir(sub, 0755), 0);
	assert_int_equal(mkdir(in(root, "sub/a"), 0755), 0);
	assert_int_equal(mkdir(deep, 0755), 0);
	pump(100);
	write_file(in(deep, "g.dcm"), "DICM", O_TRUNC);
	expect_ready(in(deep, "g.dcm"), WAIT_MS);
	watch_done(w, in(deep, "g.dcm"));
	expect_nothing_ready(SETTLE_MS + 50);
}

/*
 * Issue 12 item 1: a writer that pauses mid-file (just before the pixel
 * data) far longer than settle_ms, its mtime old, is never taken by a
 * scan or a rebuild while it holds the file open for writing.
 */
static void open_writer_is_not_taken_by_a_scan(void **state)
{
	const char *path = in(root, "paused.dcm");
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	struct error err = ERROR_INIT;

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "header", 6), 6);
	pump(SETTLE_MS * 2);
	make_old(path);
	pump(SETTLE_MS + 50);
	for (int i = 0; i < 3; i++) {
		assert_true(watch_scan(w, &err) >= 0);
		expect_nothing_ready(SETTLE_MS * 2);
	}
	/* A rebuild: events may be lost, the lease still sees the writer. */
	assert_true(watch_rewatch(w, &err) >= 0);
	expect_nothing_ready(SETTLE_MS * 2);
	assert_true(watch_scan(w, &err) >= 0);
	expect_nothing_ready(SETTLE_MS * 2);
	assert_int_equal(write(fd, "pixels", 6), 6);
	assert_int_equal(close(fd), 0);
	expect_ready(path, WAIT_MS);
}

/* A file found by a scan (the backlog at start) while a writer still
 * holds it waits for that writer's close. */
static void open_writer_found_by_scan_waits_for_close(void **state)
{
	const char *path = in(root, "held.dcm");
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	struct error err = ERROR_INIT;

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "header", 6), 6);
	make_old(path);
	start_watch();
	assert_int_equal(watch_scan(w, &err), 1);
	expect_nothing_ready(SETTLE_MS * 3);
	assert_true(watch_scan(w, &err) >= 0);
	expect_nothing_ready(SETTLE_MS * 2);
	assert_int_equal(write(fd, "pixels", 6), 6);
	assert_int_equal(close(fd), 0);
	expect_ready(path, WAIT_MS);
}

static void one_watch_at_a_time(void **state)
{
	struct watch_options opts = { .root = root, .ignore = ignore,
				      .settle_ms = SETTLE_MS };
	struct error err = ERROR_INIT;
	struct watch *second;
	int fd = watch_fd(w);

	(void)state;
	assert_true((fcntl(fd, F_GETFL) & O_NONBLOCK) != 0);
	assert_true((fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
	assert_int_equal(watch_new(&second, &opts, &err), -1);
	assert_int_equal(err.kind, ERROR_SETUP);
	assert_null(second);
}

static void missing_root_is_a_setup_error(void **state)
{
	struct watch_options opts = { .root = NULL, .ignore = ignore,
				      .settle_ms = SETTLE_MS };
	struct error err = ERROR_INIT;

	(void)state;
	opts.root = in(base, "nonexistent");
	assert_int_equal(watch_new(&w, &opts, &err), -1);
	assert_int_equal(err.kind, ERROR_SETUP);
	assert_int_equal(err.errnum, ENOENT);
	opts.root = "relative/path";
	assert_int_equal(watch_new(&w, &opts, &err), -1);
	/* A failed watch_new leaves room for the next one. */
	start_watch();
}

/* dir/d/d/... (depth levels), each made from its parent's descriptor;
 * the deepest folder's path goes to out (PATH_MAX). */
static void make_chain(const char *dir, int depth, char *out)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY);
	size_t len = strlen(dir);

	assert_true(fd >= 0);
	memcpy(out, dir, len + 1);
	for (int i = 0; i < depth; i++) {
		int next;

		assert_int_equal(mkdirat(fd, "d", 0755), 0);
		next = openat(fd, "d", O_RDONLY | O_DIRECTORY);
		assert_true(next >= 0);
		close(fd);
		fd = next;
		assert_true(len + 3 < PATH_MAX);
		memcpy(out + len, "/d", 3);
		len += 2;
	}
	close(fd);
}

static int open_fds(void)
{
	int n = 0;

	for (int fd = 0; fd < 1024; fd++)
		if (fcntl(fd, F_GETFD) != -1)
			n++;
	return n;
}

/* Issue 12 item 5: a tree 1,100 levels deep, 64 descriptors allowed.
 * libinotifytools' recursive watch (and a recursive scan) hold one per
 * level and fail with EMFILE; the walk holds one at a time: every level
 * is watched, the backlog at the bottom is found, a later file there
 * comes by its event. */
static void deep_tree_needs_no_descriptor_per_level(void **state)
{
	struct watch_options opts = { .root = root, .ignore = ignore,
				      .settle_ms = SETTLE_MS };
	static char bottom[PATH_MAX];
	struct error err = ERROR_INIT;
	struct rlimit old, low;
	char *paths[4];
	int rc;

	(void)state;
	make_chain(root, 1100, bottom);
	write_file(in(bottom, "backlog.dcm"), "x", O_TRUNC);
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
	low = old;
	low.rlim_cur = open_fds() + 48;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
	rc = watch_new(&w, &opts, &err);
	if (rc == 0)
		rc = watch_scan(w, &err) == 1 ? 0 : -1;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
	assert_int_equal(rc, 0);
	assert_int_equal(wait_ready(paths, 4, WAIT_MS), 1);
	assert_string_equal(paths[0], in(bottom, "backlog.dcm"));
	watch_done(w, paths[0]);
	free(paths[0]);
	write_file(in(bottom, "late.dcm"), "y", O_TRUNC);
	expect_ready(in(bottom, "late.dcm"), WAIT_MS);
}

struct reports {
	int too_deep;
	unsigned depth;
	char dir[PATH_MAX];
};

static void count_report(void *ctx, enum watch_problem what, const char *dir,
			 unsigned depth)
{
	struct reports *r = ctx;

	if (what == WATCH_TOO_DEEP) {
		r->too_deep++;
		r->depth = depth;
		snprintf(r->dir, sizeof(r->dir), "%s", dir);
	}
}

/* A folder deeper than max_depth is reported, neither watched nor
 * scanned; the rest is, at start and when a deep branch appears later. */
static void folders_deeper_than_max_depth_are_reported(void **state)
{
	struct reports r = { 0 };
	struct watch_options opts = { .root = root, .ignore = ignore,
				      .settle_ms = SETTLE_MS, .max_depth = 3,
				      .report = count_report,
				      .report_ctx = &r };
	static char bottom[PATH_MAX], level3[PATH_MAX], other[PATH_MAX];
	struct error err = ERROR_INIT;
	char *paths[8];
	size_t n;

	(void)state;
	make_chain(root, 5, bottom);
	memcpy(level3, in(root, "d/d/d"), PATH_MAX);
	write_file(in(level3, "ok.dcm"), "x", O_TRUNC);
	write_file(in(bottom, "deep.dcm"), "x", O_TRUNC);
	assert_int_equal(watch_new(&w, &opts, &err), 0);
	assert_int_equal(r.too_deep, 1);
	assert_int_equal(r.depth, 4);
	assert_string_equal(r.dir, in(level3, "d"));
	assert_int_equal(watch_scan(w, &err), 1);
	assert_int_equal(r.too_deep, 2);	/* once per walk */
	n = wait_ready(paths, 8, WAIT_MS);
	assert_int_equal(n, 1);
	assert_string_equal(paths[0], in(level3, "ok.dcm"));
	watch_done(w, paths[0]);
	free(paths[0]);
	/* At run time: a branch growing past the bound. */
	memcpy(other, in(root, "e"), PATH_MAX);
	assert_int_equal(mkdir(other, 0755), 0);
	pump(100);
	make_chain(other, 4, bottom);
	pump(300);
	assert_true(r.too_deep >= 3);
	write_file(in(level3, "later.dcm"), "y", O_TRUNC);
	expect_ready(in(level3, "later.dcm"), WAIT_MS);
}

/* Deferred: the walk of a 3,000-file backlog advances only in slices of
 * watch_scan_step(), each bounded, and finds every file once. */
/* A watch that gathers events for gather_ms between reads. */
static void start_gathering_watch(long gather_ms)
{
	struct watch_options opts = { .root = root, .ignore = ignore,
				      .settle_ms = SETTLE_MS,
				      .gather_ms = gather_ms };
	struct error err = ERROR_INIT;

	assert_int_equal(watch_new(&w, &opts, &err), 0);
	assert_true(watch_fd(w) >= 0);
}

/* Sleep until the monotonic clock reaches at. */
static void sleep_until(int64_t at)
{
	int64_t left;

	while ((left = at - now_ms()) > 0) {
		struct timespec ts = { left / 1000, (left % 1000) * 1000000L };

		nanosleep(&ts, NULL);
	}
}

/* After a read the descriptor is left out of the poll set for gather_ms,
 * and the loop is told to come back when that ends. */
static void gathering_leaves_the_queue_alone_between_reads(void **state)
{
	struct error err = ERROR_INIT;
	int64_t before, after, now;
	int timeout;

	(void)state;
	start_gathering_watch(100);
	write_file(in(root, "g.dcm"), "DICM", O_TRUNC);
	before = now_ms();
	assert_true(watch_handle_events(w, &err) >= 0);
	after = now_ms();
	assert_int_equal(watch_pending_count(w), 1);
	now = now_ms();
	if (now < before + 100) {	/* not stalled past the pause */
		assert_int_equal(watch_poll_fd(w, now), -1);
		timeout = watch_poll_timeout_ms(w, now);
		assert_true(timeout > 0 && timeout <= 100);
	}
	/* Once the pause is over it is polled again, without a timeout
	 * while nothing is due. */
	now = after + 100;
	assert_int_equal(watch_poll_fd(w, now), watch_fd(w));
	if (watch_next_ready_ms(w) > 100)
		assert_int_equal(watch_poll_timeout_ms(w, now), -1);
	expect_ready(in(root, "g.dcm"), WAIT_MS);
	watch_done(w, in(root, "g.dcm"));
}

/* A file is not handed out on a deadline later than the last look at the
 * queue: a rewrite still queued (the loop was gathering) pushes it back,
 * as it would have without gathering. */
static void unread_rewrite_holds_a_due_file_back(void **state)
{
	struct error err = ERROR_INIT;
	char *got[2];
	int64_t read_at;

	(void)state;
	start_gathering_watch(50);
	write_file(in(root, "r.dcm"), "DICM", O_TRUNC);
	assert_true(watch_handle_events(w, &err) >= 0);
	read_at = now_ms();	/* the deadline is at most this + settle */
	write_file(in(root, "r.dcm"), "DICM again", O_TRUNC);	/* unread */
	sleep_until(read_at + SETTLE_MS + 20);
	assert_int_equal(watch_take_ready(w, got, 2), 0);
	assert_int_equal(watch_poll_timeout_ms(w, now_ms()), 0);	/* look */
	assert_int_equal(watch_poll_fd(w, now_ms()), watch_fd(w));
	/* The look reads the rewrite: a new settle starts from here. */
	read_at = now_ms();
	assert_true(watch_handle_events(w, &err) >= 0);
	assert_held_since(read_at);
	assert_int_equal(watch_take_ready(w, got, 2), 0);
	expect_ready(in(root, "r.dcm"), WAIT_MS);
	watch_done(w, in(root, "r.dcm"));
}

/* A poll that finds the queue empty is a look too: what was due by then
 * goes, without a read. */
static void empty_poll_lets_due_files_go(void **state)
{
	struct error err = ERROR_INIT;
	char *got[2];
	int64_t read_at, before;

	(void)state;
	start_gathering_watch(50);
	write_file(in(root, "e.dcm"), "DICM", O_TRUNC);
	assert_true(watch_handle_events(w, &err) >= 0);
	read_at = now_ms();
	sleep_until(read_at + SETTLE_MS + 20);
	assert_int_equal(watch_take_ready(w, got, 2), 0);
	before = now_ms();
	watch_polled(w, before, true);		/* readable: no look yet */
	assert_int_equal(watch_take_ready(w, got, 2), 0);
	watch_polled(w, before, false);
	assert_int_equal(watch_take_ready(w, got, 2), 1);
	assert_string_equal(got[0], in(root, "e.dcm"));
	free(got[0]);
	watch_done(w, in(root, "e.dcm"));
}

static void deferred_walk_goes_in_slices(void **state)
{
	struct watch_options opts = { .root = root, .ignore = ignore,
				      .settle_ms = SETTLE_MS,
				      .deferred = true };
	struct error err = ERROR_INIT;
	long total = 0, first, steps = 0;
	char name[64];

	(void)state;
	assert_int_equal(mkdir(in(root, "a"), 0755), 0);
	for (int i = 0; i < 3000; i++) {
		snprintf(name, sizeof(name), "a/f%04d.dcm", i);
		write_file(in(root, name), "x", O_TRUNC);
	}
	assert_int_equal(watch_new(&w, &opts, &err), 0);
	assert_false(watch_scanning(w));
	watch_scan_begin(w);
	assert_true(watch_scanning(w));
	first = watch_scan_step(w, &err);
	assert_true(first >= 0 && first < 3000);
	total = first;
	while (watch_scanning(w)) {
		long n = watch_scan_step(w, &err);

		assert_true(n >= 0);
		total += n;
		steps++;
		assert_true(steps < 100000);
	}
	assert_int_equal(total, 3000);
	assert_int_equal(watch_pending_count(w), 3000);
	/* The folder was watched by the walk: a new file comes by event. */
	write_file(in(root, "a/new.dcm"), "y", O_TRUNC);
	pump(200);
	assert_int_equal(watch_pending_count(w), 3001);
}

/* Issue 12 item 2: written while in flight, then its name deleted and
 * linked again (no write event for the new link): the delete must not
 * make the watch forget the write - the version under the name now is
 * pending once the job is done. */
static void write_in_flight_survives_a_delete(void **state)
{
	char path[PATH_MAX], keep[PATH_MAX];

	(void)state;
	snprintf(path, sizeof(path), "%s", in(root, "g.dcm"));
	snprintf(keep, sizeof(keep), "%s", in(root, ".keep"));
	write_file(path, "DICM", O_TRUNC);
	expect_ready(path, WAIT_MS);
	write_file(path, "version B", O_TRUNC);
	pump(20);
	assert_int_equal(link(path, keep), 0);
	assert_int_equal(unlink(path), 0);
	pump(20);
	assert_int_equal(link(keep, path), 0);
	assert_int_equal(unlink(keep), 0);
	pump(20);
	watch_done(w, path);
	assert_int_equal(watch_pending_count(w), 1);
	expect_ready(path, WAIT_MS);
	watch_done(w, path);
}

#define T(f) cmocka_unit_test_setup_teardown(f, make_dirs_and_watch, drop_dirs)
#define T0(f) cmocka_unit_test_setup_teardown(f, make_dirs, drop_dirs)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(closed_file_waits_for_settle_ms),
		T(slow_writer_waits_for_its_last_close),
		T(open_writer_is_waited_for),
		T(moved_in_file_is_ready),
		T(temporary_names_wait_until_renamed),
		T(new_folders_are_watched_and_scanned),
		T0(backlog_is_found_by_scan),
		T(file_in_flight_is_not_handed_out_twice),
		T(write_in_flight_survives_a_delete),
		T(retry_offers_again_after_the_delay),
		T(deleted_pending_file_is_forgotten),
		T(rewatch_rescans_and_keeps_watching),
		T(queue_overflow_loses_nothing),
		T(empty_old_folders_are_removed),
		T(burst_of_2000_files_each_ready_once),
		T(frequent_reader_does_not_delay),
		T(folder_made_again_is_watched_again),
		T(open_writer_is_not_taken_by_a_scan),
		T0(open_writer_found_by_scan_waits_for_close),
		T(one_watch_at_a_time),
		T0(missing_root_is_a_setup_error),
		T0(deep_tree_needs_no_descriptor_per_level),
		T0(folders_deeper_than_max_depth_are_reported),
		T0(deferred_walk_goes_in_slices),
		T0(gathering_leaves_the_queue_alone_between_reads),
		T0(unread_rewrite_holds_a_due_file_back),
		T0(empty_poll_lets_due_files_go),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
