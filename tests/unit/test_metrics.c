/* test_metrics.c - the metrics formatter and writer: histogram buckets,
 * label escaping, the state file's round trip, atomic replacement that
 * leaves nothing behind on failure. (The daemon tests parse the real
 * file with promtool and prometheus_client.) */
#include <dirent.h>
#include <errno.h>
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

#include "dicomsort/metrics.h"

static char *format(const struct metrics *m,
		    int (*fn)(const struct metrics *, time_t, FILE *))
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	assert_non_null(f);
	assert_int_equal(fn(m, 1000, f), 0);
	assert_int_equal(fclose(f), 0);
	return text;
}

static void histogram_is_cumulative(void **state)
{
	struct metrics m;
	char *text;

	(void)state;
	metrics_init(&m, "dicomsortd", 100);
	metrics_stored(&m, 10, 0.2, 200);	/* le 0.5 */
	metrics_stored(&m, 20, 4, 300);		/* le 5 */
	metrics_stored(&m, 30, 1e6, 400);	/* +Inf only */
	metrics_stored(&m, 40, -5, 500);	/* clock set back: 0 */
	m.stored = 4;
	text = format(&m, metrics_format_prometheus);
	assert_non_null(strstr(text, "dicomsortd_arrival_to_stored_seconds_bucket"
			       "{config=\"dicomsortd\",le=\"0.5\"} 2\n"));
	assert_non_null(strstr(text, "le=\"3\"} 2\n"));
	assert_non_null(strstr(text, "le=\"5\"} 3\n"));
	assert_non_null(strstr(text, "le=\"86400\"} 3\n"));
	assert_non_null(strstr(text, "le=\"+Inf\"} 4\n"));
	assert_non_null(strstr(text, "_count{config=\"dicomsortd\"} 4\n"));
	assert_non_null(strstr(text, "dicomsortd_stored_bytes_total"
			       "{config=\"dicomsortd\"} 100\n"));
	assert_non_null(strstr(text, "dicomsortd_files_stored_total"
			       "{config=\"dicomsortd\"} 4\n"));
	assert_non_null(strstr(text, "dicomsortd_last_success_timestamp_seconds"
			       "{config=\"dicomsortd\"} 500.000\n"));
	assert_null(strstr(text, "destination"));	/* none yet */
	free(text);
}

static void labels_are_escaped(void **state)
{
	struct metrics m;
	char *text;

	(void)state;
	metrics_init(&m, "a\"b\\c\nd", 1);
	m.ndestinations = 1;
	snprintf(m.destinations[0].name, sizeof(m.destinations[0].name), "pacs");
	m.destinations[0].queued = 7;
	text = format(&m, metrics_format_prometheus);
	assert_non_null(strstr(text, "{config=\"a\\\"b\\\\c\\nd\"} 0\n"));
	assert_non_null(strstr(text, "dicomsortd_destination_queue_files"
			       "{config=\"a\\\"b\\\\c\\nd\",destination=\"pacs\"} 7\n"));
	/* every line ends; no raw newline inside a sample */
	for (char *line = text; *line; line = strchr(line, '\n') + 1)
		assert_true(line[0] == '#' || strncmp(line, "dicomsortd_", 11) == 0);
	free(text);
}

static void errors_repeat_and_roll(void **state)
{
	struct metrics m;

	(void)state;
	metrics_init(&m, "x", 1);
	metrics_error(&m, "disk full", 10);
	metrics_error(&m, "disk full", 20);
	assert_int_equal(m.nerrors, 1);
	assert_int_equal(m.errors[0].count, 2);
	assert_int_equal(m.errors[0].first, 10);
	assert_int_equal(m.errors[0].last, 20);
	for (int i = 0; i < METRICS_ERRORS + 3; i++) {
		char t[32];

		snprintf(t, sizeof(t), "error %d", i);
		metrics_error(&m, t, 30 + i);
	}
	assert_int_equal(m.nerrors, METRICS_ERRORS);
	assert_string_equal(m.errors[0].text, "error 10");	/* newest first */
}

static const char *tmpdir(void)
{
	const char *t = getenv("DICOMSORT_TEST_TMP");

	return t != NULL ? t : "/tmp";
}

static size_t entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	size_t n = 0;

	assert_non_null(d);
	while ((e = readdir(d)) != NULL)
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

static void state_round_trip_and_atomic_write(void **state)
{
	char dir[256], path[400], bad[300];
	struct metrics m, back;
	struct error err = ERROR_INIT;
	struct stat st;
	time_t updated;

	(void)state;
	mkdir(tmpdir(), 0755);
	snprintf(dir, sizeof(dir), "%s/metrics-XXXXXX", tmpdir());
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/status", dir);
	metrics_init(&m, "research", 100);
	m.stored = 5;
	m.bytes = 1ULL << 40;
	m.queued = 3;
	m.oldest_queued_s = 2.5;
	metrics_error(&m, "a\nforged line\\ \x01", 200);
	metrics_error(&m, "second", 300);
	m.ndestinations = 2;
	snprintf(m.destinations[0].name, sizeof(m.destinations[0].name), "pacs");
	m.destinations[0].queued = 0;
	snprintf(m.destinations[1].name, sizeof(m.destinations[1].name),
		 "cloud-1.a_b");
	m.destinations[1].queued = 42;
	m.destinations[1].oldest_age_s = 17;
	assert_int_equal(metrics_write_file(path, 0640, metrics_format_state,
					    &m, 400, &err), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0640);
	assert_int_equal(metrics_read_state(path, &back, &updated, &err), 0);
	assert_int_equal(updated, 400);
	assert_string_equal(back.instance, "research");
	assert_int_equal(back.pid, getpid());
	assert_int_equal(back.stored, 5);
	assert_true(back.bytes == 1ULL << 40);
	assert_int_equal(back.queued, 3);
	assert_int_equal(back.nerrors, 2);
	assert_string_equal(back.errors[0].text, "second");
	assert_string_equal(back.errors[1].text, "a\nforged line\\ \x01");
	assert_int_equal(back.ndestinations, 2);
	assert_string_equal(back.destinations[0].name, "pacs");
	assert_int_equal(back.destinations[0].queued, 0);
	assert_true(back.destinations[0].oldest_age_s == 0);
	assert_string_equal(back.destinations[1].name, "cloud-1.a_b");
	assert_int_equal(back.destinations[1].queued, 42);
	assert_true(back.destinations[1].oldest_age_s == 17);
	assert_int_equal(entries(dir), 1);	/* no temp file left */

	/* A folder that does not exist: an error, nothing made. */
	snprintf(bad, sizeof(bad), "%s/missing/x.prom", dir);
	assert_int_equal(metrics_write_file(bad, 0644, metrics_format_prometheus,
					    &m, 400, &err), -1);
	assert_int_equal(err.errnum, ENOENT);
	/* A name that is a folder: rename fails, the temp goes. */
	snprintf(bad, sizeof(bad), "%s/sub", dir);
	assert_int_equal(mkdir(bad, 0755), 0);
	snprintf(path, sizeof(path), "%s/probe", bad);
	assert_int_equal(mkdir(path, 0755), 0);
	error_clear(&err);
	assert_int_equal(metrics_write_file(bad, 0644, metrics_format_prometheus,
					    &m, 400, &err), -1);
	assert_int_equal(entries(dir), 2);	/* status and sub only */
	rmdir(path);
	rmdir(bad);
	snprintf(path, sizeof(path), "%s/status", dir);
	unlink(path);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(histogram_is_cumulative),
		cmocka_unit_test(labels_are_escaped),
		cmocka_unit_test(errors_repeat_and_roll),
		cmocka_unit_test(state_round_trip_and_atomic_write),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
