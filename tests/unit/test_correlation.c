/* test_correlation.c - the correlation table: the original's format, the
 * stricter rules on top, errors naming file and line, big tables, refs. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "dicomsort/correlation.h"

static char scratch[PATH_MAX];
static char table_path[PATH_MAX + 32];

static int make_scratch(void **state)
{
	const char *env = getenv("DICOMSORT_TEST_TMP");
	char cmd[PATH_MAX + 16];

	(void)state;
	if (env != NULL && *env != '\0') {
		snprintf(cmd, sizeof(cmd), "mkdir -p '%s'", env);
		if (system(cmd) != 0)
			return -1;
		snprintf(scratch, sizeof(scratch), "%s/test_correlation.XXXXXX", env);
	} else {
		snprintf(scratch, sizeof(scratch), "/tmp/test_correlation.XXXXXX");
	}
	if (mkdtemp(scratch) == NULL)
		return -1;
	snprintf(table_path, sizeof(table_path), "%s/ids.txt", scratch);
	return 0;
}

static int drop_scratch(void **state)
{
	char cmd[PATH_MAX + 16];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", scratch);
	return system(cmd) == 0 ? 0 : -1;
}

/* Write len bytes (NULs allowed) as the table file. */
static void write_bytes(const char *text, size_t len)
{
	FILE *f = fopen(table_path, "wb");

	assert_non_null(f);
	assert_int_equal(fwrite(text, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
}

static void write_table(const char *text)
{
	write_bytes(text, strlen(text));
}

static struct correlation *load_ok(const char *text)
{
	struct error err = ERROR_INIT;
	struct correlation *t = NULL;

	write_table(text);
	if (correlation_load(&t, table_path, &err) != 0)
		fail_msg("load failed: %s", err.msg);
	assert_non_null(t);
	return t;
}

/* Loading must fail with ERROR_SETUP and exactly "PATH:" + suffix. */
static void load_fails(const char *text, size_t len, const char *suffix)
{
	struct error err = ERROR_INIT;
	struct correlation *t = NULL;
	char want[PATH_MAX + 256];

	write_bytes(text, len);
	assert_int_equal(correlation_load(&t, table_path, &err), -1);
	assert_null(t);
	assert_int_equal(err.kind, ERROR_SETUP);
	snprintf(want, sizeof(want), "%s:%s", table_path, suffix);
	assert_string_equal(err.msg, want);
}

static void load_fails_str(const char *text, const char *suffix)
{
	load_fails(text, strlen(text), suffix);
}

static void separators_comma_space_tab_and_runs(void **state)
{
	struct correlation *t;

	(void)state;
	t = load_ok("A1,B1\n"
		    "A2 B2\n"
		    "A3\tB3\n"
		    "A4 , \t,  B4\n"
		    "   A5\t\tB5   \n"
		    "A6,B6,,\n"
		    "A7 B7 ,\t\n");
	assert_int_equal(correlation_size(t), 7);
	assert_string_equal(correlation_lookup(t, "A1"), "B1");
	assert_string_equal(correlation_lookup(t, "A2"), "B2");
	assert_string_equal(correlation_lookup(t, "A3"), "B3");
	assert_string_equal(correlation_lookup(t, "A4"), "B4");
	assert_string_equal(correlation_lookup(t, "A5"), "B5");
	assert_string_equal(correlation_lookup(t, "A6"), "B6");
	assert_string_equal(correlation_lookup(t, "A7"), "B7");
	correlation_unref(t);
}

static void lookup_is_exact(void **state)
{
	struct correlation *t;

	(void)state;
	t = load_ok("Pat-01 NEW.01\nM\xc3\xbcller anon_\xe2\x82\xac\n");
	assert_string_equal(correlation_lookup(t, "Pat-01"), "NEW.01");
	assert_string_equal(correlation_lookup(t, "M\xc3\xbcller"),
			    "anon_\xe2\x82\xac");
	assert_null(correlation_lookup(t, "pat-01"));
	assert_null(correlation_lookup(t, "Pat-01 "));
	assert_null(correlation_lookup(t, "Pat-0"));
	assert_null(correlation_lookup(t, "NEW.01"));
	assert_null(correlation_lookup(t, ""));
	assert_null(correlation_lookup(t, NULL));
	correlation_unref(t);
}

static void line_ends_crlf_cr_and_no_final_newline(void **state)
{
	struct correlation *t;

	(void)state;
	t = load_ok("A1,B1\r\nA2,B2\r\n\r\nA3,B3\rA4,B4\nA5 B5");
	assert_int_equal(correlation_size(t), 5);
	assert_string_equal(correlation_lookup(t, "A1"), "B1");
	assert_string_equal(correlation_lookup(t, "A2"), "B2");
	assert_string_equal(correlation_lookup(t, "A3"), "B3");
	assert_string_equal(correlation_lookup(t, "A4"), "B4");
	assert_string_equal(correlation_lookup(t, "A5"), "B5");
	correlation_unref(t);
}

static void line_numbers_count_every_kind_of_line_end(void **state)
{
	(void)state;
	/* Lines: 1 "A,B" 2 "" 3 "C,D" 4 "E" */
	load_fails_str("A,B\r\n\rC,D\nE\r\n",
		   "4: expected two fields (old and new ID), found 1");
}

static void utf8_bom_is_skipped(void **state)
{
	struct correlation *t;

	(void)state;
	t = load_ok("\xef\xbb\xbfOLD1,NEW1\r\nOLD2,NEW2\r\n");
	assert_int_equal(correlation_size(t), 2);
	assert_string_equal(correlation_lookup(t, "OLD1"), "NEW1");
	assert_null(correlation_lookup(t, "\xef\xbb\xbfOLD1"));
	correlation_unref(t);

	/* Only at the very start: elsewhere it is part of an ID. */
	t = load_ok("A,B\n\xef\xbb\xbf" "C,D\n");
	assert_string_equal(correlation_lookup(t, "\xef\xbb\xbf" "C"), "D");
	assert_null(correlation_lookup(t, "C"));
	correlation_unref(t);

	t = load_ok("\xef\xbb\xbf# header comment\nA B\n");
	assert_int_equal(correlation_size(t), 1);
	correlation_unref(t);
}

static void utf16_is_refused_clearly(void **state)
{
	struct error err = ERROR_INIT;
	struct correlation *t = NULL;

	(void)state;
	write_bytes("\xff\xfe" "A\0,\0B\0\n\0", 10);
	assert_int_equal(correlation_load(&t, table_path, &err), -1);
	assert_int_equal(err.kind, ERROR_SETUP);
	assert_non_null(strstr(err.msg, "UTF-16"));
	assert_non_null(strstr(err.msg, table_path));
}

static void comments_and_blank_lines(void **state)
{
	struct correlation *t;

	(void)state;
	t = load_ok("# old new\n"
		    "\n"
		    "   \n"
		    "\t\n"
		    "  # indented comment, with, commas\n"
		    "#no space\n"
		    ",,\n"
		    " , ,\t\n"
		    "A B\n"
		    "\n");
	assert_int_equal(correlation_size(t), 1);
	assert_string_equal(correlation_lookup(t, "A"), "B");
	assert_null(correlation_lookup(t, "#"));
	assert_null(correlation_lookup(t, "old"));
	correlation_unref(t);
}

static void empty_file_is_an_empty_table(void **state)
{
	struct correlation *t;

	(void)state;
	t = load_ok("");
	assert_int_equal(correlation_size(t), 0);
	assert_null(correlation_lookup(t, "A"));
	correlation_unref(t);
}

static void malformed_lines_name_file_and_line(void **state)
{
	(void)state;
	load_fails_str("A,B\n# c\nC\n",
		   "3: expected two fields (old and new ID), found 1");
	load_fails_str("A,B\nC,D,E\n",
		   "2: expected two fields (old and new ID), found 3");
	load_fails_str("A B C D # trailing comment\n",
		   "1: expected two fields (old and new ID), found 7");
	load_fails_str("\n\n\n,A,B\n", "4: line starts with ',': empty old ID");
	load_fails_str(" ,A\n", "1: line starts with ',': empty old ID");
}

static void conflicting_mapping_names_both_lines(void **state)
{
	(void)state;
	load_fails_str("X,Y\nA,B\n\nC,D\nA,Z\n",
		   "5: ID 'A' already mapped to 'B' on line 2");
}

static void identical_pair_twice_is_fine(void **state)
{
	struct correlation *t;

	(void)state;
	t = load_ok("A,B\nC D\nA\tB\nA , B\n");
	assert_int_equal(correlation_size(t), 2);
	assert_string_equal(correlation_lookup(t, "A"), "B");
	assert_string_equal(correlation_lookup(t, "C"), "D");
	correlation_unref(t);
}

static void nul_byte_is_an_error(void **state)
{
	(void)state;
	load_fails("A,B\nC,\0D\nE,F\n", 13, "2: NUL byte: not a text file");
}

static void long_lines_are_not_truncated(void **state)
{
	size_t n = 1 << 20;
	char *text = malloc(2 * n + 8);
	char *old_id = malloc(n + 1), *new_id = malloc(n + 1);
	struct correlation *t;

	(void)state;
	assert_non_null(text);
	assert_non_null(old_id);
	assert_non_null(new_id);
	memset(old_id, 'o', n);
	old_id[n] = '\0';
	memset(new_id, 'n', n);
	new_id[n] = '\0';
	snprintf(text, 2 * n + 8, "%s,%s\nA,B\n", old_id, new_id);
	t = load_ok(text);
	assert_int_equal(correlation_size(t), 2);
	assert_string_equal(correlation_lookup(t, old_id), new_id);
	old_id[n - 1] = '\0';
	assert_null(correlation_lookup(t, old_id));
	assert_string_equal(correlation_lookup(t, "A"), "B");
	correlation_unref(t);

	/* A too long line is still counted, not cut into a valid one. */
	memset(text, 'x', 2 * n);
	text[n] = ' ';
	text[n + 1000] = ',';
	text[2 * n] = '\0';
	load_fails(text, 2 * n, "1: expected two fields (old and new ID), found 3");
	free(text);
	free(old_id);
	free(new_id);
}

/* CPU time of this process, not wall time: on a loaded machine (CI runs
 * ctest -j4 on 2 cores, under ASan) wall time measures the scheduler; a
 * quadratic load still costs minutes of CPU. */
static double now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void big_table_loads_fast(void **state)
{
	enum { LINES = 100000 };
	static const char *const seps[] = { ",", " ", "\t", " ,\t" };
	struct error err = ERROR_INIT;
	struct correlation *t = NULL;
	char id[64], want[64];
	FILE *f = fopen(table_path, "w");
	double t0, elapsed;

	(void)state;
	assert_non_null(f);
	fprintf(f, "# generated\r\n");
	for (int i = 0; i < LINES; i++)
		fprintf(f, "%s%d%s%08d\r\n", i % 2 ? "PAT" : "Pat", i,
			seps[i % 4], i * 7);
	assert_int_equal(fclose(f), 0);

	t0 = now_seconds();
	if (correlation_load(&t, table_path, &err) != 0)
		fail_msg("load failed: %s", err.msg);
	elapsed = now_seconds() - t0;
	/* Generous enough for a sanitizer build on a busy machine; a
	 * quadratic load takes minutes. */
	if (elapsed > 5.0) {
		correlation_unref(t);
		fail_msg("100k lines took %.2f s", elapsed);
	}
	assert_int_equal(correlation_size(t), LINES);

	t0 = now_seconds();
	for (int i = 0; i < LINES; i++) {
		snprintf(id, sizeof(id), "%s%d", i % 2 ? "PAT" : "Pat", i);
		snprintf(want, sizeof(want), "%08d", i * 7);
		assert_string_equal(correlation_lookup(t, id), want);
		snprintf(id, sizeof(id), "NOPE%d", i);
		assert_null(correlation_lookup(t, id));
	}
	elapsed = now_seconds() - t0;
	correlation_unref(t);
	if (elapsed > 5.0)
		fail_msg("200k lookups took %.2f s", elapsed);
}

static void missing_file_is_a_setup_error(void **state)
{
	struct error err = ERROR_INIT;
	struct correlation *t = NULL;
	char path[PATH_MAX + 32], want[PATH_MAX + 128];

	(void)state;
	snprintf(path, sizeof(path), "%s/does-not-exist.csv", scratch);
	assert_int_equal(correlation_load(&t, path, &err), -1);
	assert_null(t);
	assert_int_equal(err.kind, ERROR_SETUP);
	assert_int_equal(err.errnum, ENOENT);
	snprintf(want, sizeof(want), "%s: %s", path, strerror(ENOENT));
	assert_string_equal(err.msg, want);
}

static void directory_is_a_setup_error(void **state)
{
	struct error err = ERROR_INIT;
	struct correlation *t = NULL;

	(void)state;
	assert_int_equal(correlation_load(&t, scratch, &err), -1);
	assert_null(t);
	assert_int_equal(err.kind, ERROR_SETUP);
	assert_int_equal(err.errnum, EISDIR);
	assert_non_null(strstr(err.msg, scratch));
}

static void refs_keep_the_table_alive(void **state)
{
	struct correlation *t;

	(void)state;
	t = load_ok("A B\n");
	assert_ptr_equal(correlation_ref(t), t);
	assert_ptr_equal(correlation_ref(t), t);
	correlation_unref(t);
	correlation_unref(t);
	/* Still ours: the sanitizer build catches a premature free here. */
	assert_string_equal(correlation_lookup(t, "A"), "B");
	assert_int_equal(correlation_size(t), 1);
	correlation_unref(t);
	correlation_unref(NULL);
}

static void *reader(void *arg)
{
	struct correlation *shared = arg;

	for (int i = 0; i < 20000; i++) {
		struct correlation *t = correlation_ref(shared);

		if (strcmp(correlation_lookup(t, "A"), "B") != 0)
			abort();
		correlation_unref(t);
	}
	return NULL;
}

static void refs_and_lookups_from_many_threads(void **state)
{
	pthread_t th[8];
	struct correlation *t;

	(void)state;
	t = load_ok("A B\nC D\n");
	for (size_t i = 0; i < 8; i++)
		assert_int_equal(pthread_create(&th[i], NULL, reader, t), 0);
	for (size_t i = 0; i < 8; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	assert_string_equal(correlation_lookup(t, "C"), "D");
	correlation_unref(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(separators_comma_space_tab_and_runs),
		cmocka_unit_test(lookup_is_exact),
		cmocka_unit_test(line_ends_crlf_cr_and_no_final_newline),
		cmocka_unit_test(line_numbers_count_every_kind_of_line_end),
		cmocka_unit_test(utf8_bom_is_skipped),
		cmocka_unit_test(utf16_is_refused_clearly),
		cmocka_unit_test(comments_and_blank_lines),
		cmocka_unit_test(empty_file_is_an_empty_table),
		cmocka_unit_test(malformed_lines_name_file_and_line),
		cmocka_unit_test(conflicting_mapping_names_both_lines),
		cmocka_unit_test(identical_pair_twice_is_fine),
		cmocka_unit_test(nul_byte_is_an_error),
		cmocka_unit_test(long_lines_are_not_truncated),
		cmocka_unit_test(big_table_loads_fast),
		cmocka_unit_test(missing_file_is_a_setup_error),
		cmocka_unit_test(directory_is_a_setup_error),
		cmocka_unit_test(refs_keep_the_table_alive),
		cmocka_unit_test(refs_and_lookups_from_many_threads),
	};

	return cmocka_run_group_tests(tests, make_scratch, drop_scratch);
}
