/* test_config.c - dicomsortd.conf through real libconfig: defaults, every
 * key read, errors that name file and line, relative paths and includes,
 * and the shipped example config. */
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

#include "dicomsort/config.h"

static char dir[PATH_MAX / 2];

static int make_dir(void **state)
{
	const char *base = getenv("DICOMSORT_TEST_TMP");

	(void)state;
	if (base == NULL)
		base = "/tmp";
	mkdir(base, 0700);
	snprintf(dir, sizeof(dir), "%s/config-XXXXXX", base);
	return mkdtemp(dir) ? 0 : -1;
}

static char *write_file(const char *name, const char *text)
{
	static char path[PATH_MAX];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	return path;
}

#define FOLDERS "input = \"/in\"; output = \"/out\"; quarantine = \"/q\";\n"

static void minimal_file_gets_the_documented_defaults(void **state)
{
	struct config cfg;
	struct error err = ERROR_INIT;

	(void)state;
	assert_int_equal(config_load(&cfg, write_file("min.conf", FOLDERS),
				     &err), 0);
	assert_string_equal(cfg.input, "/in");
	assert_string_equal(cfg.layout,
			    "{PatientID}/{StudyDate}/{SeriesNumber}_{SeriesDescription}/");
	assert_null(cfg.filename);
	assert_int_equal(cfg.profile, DEID_NONE);
	assert_int_equal(cfg.after_success, AFTER_SUCCESS_DELETE);
	assert_true(cfg.rename_unchanged);
	assert_int_equal(cfg.settle_ms, 2000);
	assert_true(cfg.workers >= 1);
	assert_int_equal(cfg.retry.parse_attempts, 3);
	assert_int_equal(cfg.rescan.interval_s, 300);
	assert_true(cfg.cleanup.remove_empty_dirs);
	assert_int_equal(cfg.shutdown.timeout_s, 10);
	assert_int_equal(cfg.limits.max_file_size_mb, 0);
	assert_true(config_max_file_size(&cfg) == 0);
	assert_true(config_ignored(&cfg, ".name.XyZ123"));
	assert_true(config_ignored(&cfg, "image.part"));
	assert_true(config_ignored(&cfg, "x.tmp"));
	assert_false(config_ignored(&cfg, "IM0001.dcm"));
	config_release(&cfg);
}

static void every_key_is_read(void **state)
{
	struct config cfg;
	struct error err = ERROR_INIT;
	const char *text = FOLDERS
		"layout = \"{PatientID}/\"; filename = \"{SOPInstanceUID}.dcm\";\n"
		"profile = \"basic\"; correlation_table = \"ids.csv\";\n"
		"after_success = \"move\"; processed = \"done\"; hold = \"/h\";\n"
		"rename_unchanged = false;\n"
		"settle_ms = 500; ignore = [\"*.partial\"]; workers = 3;\n"
		"log_target = \"stderr\";\n"
		"retry = { parse_attempts = 5; backoff_ms = 10; backoff_max_ms = 20; };\n"
		"rescan = { interval_s = 0; };\n"
		"cleanup = { remove_empty_dirs = false; min_age_s = 1; };\n"
		"shutdown = { timeout_s = 4; };\n"
		"limits = { max_file_size_mb = 3000; };\n"
		"deid = { secret = \"/s\"; retain_uids = true; clean_descriptors = true;\n"
		"  unknown_id = \"hold\"; pseudonym_prefix = \"P\"; patient_name = \"X\";\n"
		"  max_date_shift_days = 30; allow_burned_in = true;\n"
		"  safe_private = [\"ACME:0009,xx10\"]; burned_in_modalities = [\"US\"]; };\n";

	(void)state;
	assert_int_equal(config_load(&cfg, write_file("all.conf", text), &err), 0);
	assert_string_equal(cfg.filename, "{SOPInstanceUID}.dcm");
	assert_int_equal(cfg.profile, DEID_BASIC);
	/* relative to the config's folder */
	assert_non_null(strstr(cfg.correlation_table, "/ids.csv"));
	assert_int_equal(cfg.correlation_table[0], '/');
	assert_int_equal(cfg.after_success, AFTER_SUCCESS_MOVE);
	assert_false(cfg.rename_unchanged);
	assert_int_equal(cfg.settle_ms, 500);
	assert_true(config_ignored(&cfg, "a.partial"));
	assert_false(config_ignored(&cfg, ".hidden"));
	assert_int_equal(cfg.workers, 3);
	assert_int_equal(cfg.log_target, LOG_TARGET_STDERR);
	assert_int_equal(cfg.retry.parse_attempts, 5);
	assert_int_equal(cfg.rescan.interval_s, 0);
	assert_false(cfg.cleanup.remove_empty_dirs);
	assert_int_equal(cfg.shutdown.timeout_s, 4);
	assert_int_equal(cfg.limits.max_file_size_mb, 3000);
	/* beyond 32 bits: no overflow */
	assert_true(config_max_file_size(&cfg) == 3000ULL * 1024 * 1024);
	assert_string_equal(cfg.deid.secret, "/s");
	assert_int_equal(cfg.deid.options,
			 DEID_RETAIN_UIDS | DEID_CLEAN_DESCRIPTORS);
	assert_int_equal(cfg.deid.unknown_id, DEID_UNKNOWN_HOLD);
	assert_string_equal(cfg.deid.pseudonym_prefix, "P");
	assert_int_equal(cfg.deid.max_date_shift_days, 30);
	assert_true(cfg.deid.allow_burned_in);
	assert_string_equal(cfg.deid.safe_private[0], "ACME:0009,xx10");
	assert_null(cfg.deid.safe_private[1]);
	assert_string_equal(cfg.deid.burned_in_modalities[0], "US");
	config_release(&cfg);
}

/* The message must name the file and the line of the offending key. */
static void assert_error(const char *name, const char *text, int line,
			 const char *fragment)
{
	struct config cfg;
	struct error err = ERROR_INIT;
	char where[PATH_MAX + 32];
	char *path = write_file(name, text);

	assert_int_equal(config_load(&cfg, path, &err), -1);
	assert_int_equal(err.kind, ERROR_SETUP);
	if (line > 0) {
		snprintf(where, sizeof(where), "%s:%d: ", path, line);
		if (strstr(err.msg, where) == NULL)
			fail_msg("'%s' lacks '%s'", err.msg, where);
	}
	if (strstr(err.msg, fragment) == NULL)
		fail_msg("'%s' lacks '%s'", err.msg, fragment);
	assert_null(cfg.input);		/* released */
}

static void errors_name_file_and_line(void **state)
{
	(void)state;
	assert_error("typo.conf", FOLDERS "\nsetle_ms = 10;\n", 3,
		     "unknown setting 'setle_ms'");
	assert_error("grouptypo.conf", FOLDERS "retry = {\n parse_atempts = 2; };\n",
		     3, "unknown setting 'parse_atempts'");
	assert_error("type.conf", FOLDERS "settle_ms = \"500\";\n", 2,
		     "must be an integer");
	assert_error("range.conf", FOLDERS "workers = -1;\n", 2,
		     "between 0 and 256");
	assert_error("profile.conf", FOLDERS "profile = \"full\";\n", 2,
		     "'profile' must be");
	assert_error("after.conf", FOLDERS "after_success = \"keep\";\n", 2,
		     "not a valid value");
	assert_error("syntax.conf", FOLDERS "settle_ms = ;\n", 2, "syntax error");
	assert_error("dup.conf", FOLDERS "output = \"/x\";\n", 2, "duplicate");
	assert_error("ignore.conf", FOLDERS "ignore = [1, 2];\n", 2,
		     "list of strings");
	assert_error("unknown_id.conf", FOLDERS "deid = { unknown_id = \"drop\"; };\n",
		     2, "'unknown_id' must be");
	assert_error("deidtypo.conf", FOLDERS "deid = { retain_uid = true; };\n",
		     2, "unknown setting 'retain_uid'");
	assert_error("limit.conf", FOLDERS "limits = { max_file_size_mb = -1; };\n",
		     2, "'max_file_size_mb' must be between 0 and");
	assert_error("limittype.conf", FOLDERS "limits = { max_file_size_mb = \"1G\"; };\n",
		     2, "must be an integer");
	assert_error("limittypo.conf", FOLDERS "limits = { max_file_size = 1; };\n",
		     2, "unknown setting 'max_file_size'");
}

static void cross_key_rules(void **state)
{
	(void)state;
	assert_error("noin.conf", "output = \"/o\"; quarantine = \"/q\";\n", 0,
		     "'input' is required");
	assert_error("move.conf", FOLDERS "after_success = \"move\";\n", 0,
		     "needs 'processed'");
	assert_error("hold.conf", FOLDERS "correlation_table = \"ids.csv\";\n"
		     "deid = { unknown_id = \"hold\"; };\n", 0, "needs 'hold'");
	assert_error("holdnotable.conf", FOLDERS "hold = \"/h\";\n"
		     "deid = {\n unknown_id = \"hold\"; };\n", 4,
		     "deid.unknown_id = \"hold\" needs 'correlation_table'");
	assert_error("basic.conf", FOLDERS "profile = \"basic\";\n", 0,
		     "needs deid.secret");
	assert_error("inside.conf", "input = \"/in\"; output = \"/in/sorted\";\n"
		     "quarantine = \"/q\";\n", 0, "must not be inside input");
	assert_error("empty.conf", FOLDERS "processed = \"\";\n", 2,
		     "must not be empty");
}

static void missing_file_is_a_clear_error(void **state)
{
	struct config cfg;
	struct error err = ERROR_INIT;

	(void)state;
	assert_int_equal(config_load(&cfg, "/nonexistent/dicomsortd.conf", &err),
			 -1);
	assert_non_null(strstr(err.msg, "/nonexistent/dicomsortd.conf"));
	assert_non_null(strstr(err.msg, "No such file"));
}

/* @include is resolved next to the config file, whatever the cwd, and an
 * error inside it names the included file. */
static void includes_resolve_next_to_the_file(void **state)
{
	struct config cfg;
	struct error err = ERROR_INIT;
	char cwd[PATH_MAX];
	char *path;

	(void)state;
	assert_non_null(getcwd(cwd, sizeof(cwd)));
	write_file("folders.inc", FOLDERS);
	path = strdup(write_file("inc.conf", "@include \"folders.inc\"\nsettle_ms = 7;\n"));
	assert_int_equal(chdir("/"), 0);
	assert_int_equal(config_load(&cfg, path, &err), 0);
	assert_string_equal(cfg.output, "/out");
	assert_int_equal(cfg.settle_ms, 7);
	config_release(&cfg);

	write_file("bad.inc", "\nbogus = 1;\n");
	write_file("badinc.conf", FOLDERS "@include \"bad.inc\"\n");
	assert_error("badinc.conf", FOLDERS "@include \"bad.inc\"\n", 0,
		     "bad.inc:2: unknown setting 'bogus'");
	assert_int_equal(chdir(cwd), 0);
	free(path);
}

/* libconfig 1.5's scanner exit()s the process when an included file
 * cannot be read: a folder (found by fuzz_config as an @include of a name
 * cut short by a NUL) or a FIFO. These are errors with the file and line. */
static void includes_of_non_files_are_errors(void **state)
{
	static const char nul_name[] = FOLDERS "@include \"\0\0minimal.conf\"\n";
	char fifo[PATH_MAX];

	(void)state;
	assert_error("dot.conf", FOLDERS "\n@include \".\"\n", 3,
		     "@include \".\": not a regular file");
	assert_error("empty.conf", FOLDERS "  @include   \"\"\n", 2,
		     "not a regular file");
	{
		struct config cfg;
		struct error err = ERROR_INIT;
		char *path = write_file("nul.conf", "");
		FILE *f = fopen(path, "w");

		assert_non_null(f);
		fwrite(nul_name, 1, sizeof(nul_name) - 1, f);
		fclose(f);
		assert_int_equal(config_load(&cfg, path, &err), -1);
		if (strstr(err.msg, "not a regular file") == NULL)
			fail_msg("'%s'", err.msg);
	}
	snprintf(fifo, sizeof(fifo), "%s", write_file("fifo.inc", ""));
	unlink(fifo);
	assert_int_equal(mkfifo(fifo, 0600), 0);
	assert_error("fifo.conf", FOLDERS "@include \"fifo.inc\"\n", 2,
		     "not a regular file");
	assert_error("self.conf", FOLDERS "@include \"self.conf\"\n", 0,
		     "nested more than 10 deep");
	unlink(fifo);
}

/* Issue 15: metrics_file (default per config, in node exporter's folder)
 * and quarantine as a group with its retention. */
static void metrics_and_quarantine_retention(void **state)
{
	struct config cfg;
	struct error err = ERROR_INIT;

	(void)state;
	assert_int_equal(config_load(&cfg, write_file("dicomsortd.conf", FOLDERS),
				     &err), 0);
	assert_string_equal(cfg.metrics_file, CONFIG_METRICS_DIR "/dicomsortd.prom");
	assert_int_equal(cfg.metrics_interval_s, 5);
	assert_string_equal(cfg.status_file, CONFIG_RUN_DIR "/dicomsortd.status");
	assert_int_equal(cfg.quarantine_max_age_days, 0);
	config_release(&cfg);
	assert_int_equal(config_load(&cfg, write_file("research.conf",
		"input = \"/in\"; output = \"/out\";\n"
		"quarantine = { folder = \"q\"; max_age_days = 30; };\n"
		"metrics_interval_s = 2;\n"), &err), 0);
	assert_string_equal(cfg.metrics_file,
			    CONFIG_METRICS_DIR "/dicomsortd-research.prom");
	assert_int_equal(cfg.quarantine_max_age_days, 30);
	assert_int_equal(cfg.metrics_interval_s, 2);
	assert_string_equal(cfg.status_file, CONFIG_RUN_DIR "/research.status");
	assert_non_null(strstr(cfg.quarantine, "/q"));
	assert_true(cfg.quarantine[0] == '/');	/* next to the file */
	config_release(&cfg);
	assert_int_equal(config_load(&cfg, write_file("off.conf", FOLDERS
		"metrics_file = \"\"; status_file = \"\";\n"), &err), 0);
	assert_null(cfg.metrics_file);
	assert_null(cfg.status_file);
	config_release(&cfg);
	assert_error("qnofolder.conf", "input = \"/in\"; output = \"/out\";\n"
		     "quarantine = { max_age_days = 3; };\n", 0,
		     "'quarantine.folder' is required");
	assert_error("qtypo.conf", "input = \"/in\"; output = \"/out\";\n"
		     "quarantine = { folder = \"/q\"; max_age = 3; };\n", 2,
		     "unknown setting 'max_age'");
	assert_error("qrange.conf", "input = \"/in\"; output = \"/out\";\n"
		     "quarantine = { folder = \"/q\"; max_age_days = -1; };\n", 2,
		     "'max_age_days' must be between 0");
	assert_error("qtype.conf", "input = \"/in\"; output = \"/out\";\n"
		     "quarantine = 3;\n", 2, "a string or a group");
	assert_error("mint.conf", FOLDERS "metrics_interval_s = 0;\n", 2,
		     "'metrics_interval_s' must be between 1");
}

static void shipped_example_config_is_valid(void **state)
{
	struct config cfg;
	struct error err = ERROR_INIT;

	(void)state;
	if (config_load(&cfg, DICOMSORT_SOURCE_DIR "/etc/dicomsortd.conf",
			&err) == -1)
		fail_msg("%s", err.msg);
	assert_string_equal(cfg.input, "/srv/dicom/incoming");
	assert_int_equal(cfg.profile, DEID_NONE);
	config_release(&cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(minimal_file_gets_the_documented_defaults),
		cmocka_unit_test(every_key_is_read),
		cmocka_unit_test(errors_name_file_and_line),
		cmocka_unit_test(cross_key_rules),
		cmocka_unit_test(missing_file_is_a_clear_error),
		cmocka_unit_test(includes_resolve_next_to_the_file),
		cmocka_unit_test(includes_of_non_files_are_errors),
		cmocka_unit_test(metrics_and_quarantine_retention),
		cmocka_unit_test(shipped_example_config_is_valid),
	};

	return cmocka_run_group_tests(tests, make_dir, NULL);
}
