/*
 * fuzz_pipeline.c - the DICOM adapter and the whole pipeline on one file.
 *
 * Input: the bytes of one file. It is written to a scratch file and run
 * through pipeline_file() twice: profile "none" with the default layout and
 * the source's name, and profile "basic" (with a correlation table and a
 * secret) with "{SOPInstanceUID}.dcm" names. Each result must be stored,
 * a duplicate or rejected with a reason (never FAILED: the output is
 * fine); a stored file must lie inside the output root, be a regular file
 * and load again with the adapter; no temp file may remain.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dicomsort/correlation.h"
#include "dicomsort/deid.h"
#include "dicomsort/dicom.h"
#include "dicomsort/pipeline.h"
#include "fuzz_common.h"

#define PROFILES 2

static struct {
	char input[4200];
	char out[PROFILES][4200];
	struct pipeline *pipeline[PROFILES];
	struct deid_secret *secret;
	struct correlation *table;
} g;

static void die(const char *what, const struct error *err)
{
	fprintf(stderr, "fuzz_pipeline setup: %s: %s\n", what, err->msg);
	abort();
}

static void setup(void)
{
	const char *dir = fuzz_scratch_dir();
	struct error err = ERROR_INIT;
	char path[4300];
	static const char table[] = "PAT001,NEW001\nPAT002 NEW002\n";
	static const uint8_t secret[32] = "fuzzing secret, not a real one";

	if (dicom_init(&err) == -1)
		die("dicom_init", &err);
	snprintf(path, sizeof(path), "%s/secret", dir);
	fuzz_write_file(path, secret, sizeof(secret));
	if (deid_secret_load(&g.secret, path, &err) == -1)
		die("secret", &err);
	snprintf(path, sizeof(path), "%s/table.csv", dir);
	fuzz_write_file(path, (const uint8_t *)table, sizeof(table) - 1);
	if (correlation_load(&g.table, path, &err) == -1)
		die("table", &err);
	snprintf(path, sizeof(path), "%s/in", dir);
	mkdir(path, 0700);
	snprintf(g.input, sizeof(g.input), "%s/in/input.dcm", dir);
	for (int i = 0; i < PROFILES; i++) {
		struct pipeline_options opts = {
			.sync = PIPELINE_SYNC_NONE,
			.disposal = PIPELINE_KEEP_SOURCE,
		};

		snprintf(g.out[i], sizeof(g.out[i]), "%s/out%d", dir, i);
		opts.output_dir = g.out[i];
		if (i == 0) {
			opts.deid.profile = DEID_NONE;
		} else {
			opts.deid.profile = DEID_BASIC;
			opts.deid.secret = g.secret;
			opts.deid.table = g.table;
			opts.deid.unknown_id = DEID_UNKNOWN_PSEUDONYMIZE;
			opts.name_template = "{SOPInstanceUID}.dcm";
		}
		if (pipeline_new(&g.pipeline[i], &opts, &err) == -1)
			die("pipeline_new", &err);
	}
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	setup();
	return 0;
}

static void check_stored(int i, const struct pipeline_result *res)
{
	char path[4200 + sizeof(res->dest) + 2];
	struct dicom_file *file = NULL;
	struct error err = ERROR_INIT;
	struct stat st;

	if (res->dest[0] == '/' || strstr(res->dest, "/.") ||
	    res->dest[0] == '.') {
		fprintf(stderr, "unsafe destination '%s'\n", res->dest);
		abort();
	}
	snprintf(path, sizeof(path), "%s/%s", g.out[i], res->dest);
	if (lstat(path, &st) == -1 || !S_ISREG(st.st_mode)) {
		fprintf(stderr, "stored file %s missing: %s\n", path,
			strerror(errno));
		abort();
	}
	if (dicom_load(&file, path, &err) == -1) {
		fprintf(stderr, "stored file %s does not load again: %s\n",
			res->dest, err.msg);
		abort();
	}
	dicom_free(file);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (g.pipeline[0] == NULL)
		setup();
	fuzz_write_file(g.input, data, size);
	for (int i = 0; i < PROFILES; i++) {
		struct pipeline_result res;

		pipeline_file(g.pipeline[i], g.input, "input.dcm", &res);
		switch (res.status) {
		case PIPELINE_STORED:
		case PIPELINE_DUPLICATE:
			check_stored(i, &res);
			break;
		case PIPELINE_REJECTED:
			if (res.err.msg[0] == '\0') {
				fprintf(stderr, "rejected without a reason\n");
				abort();
			}
			break;
		case PIPELINE_HELD:
			fprintf(stderr, "held without the hold policy\n");
			abort();
		case PIPELINE_FAILED:
			fprintf(stderr, "profile %d: FAILED on a good output: %s\n",
				i, res.err.msg);
			abort();
		}
		if (fuzz_clear_dir(g.out[i]) != 0) {
			fprintf(stderr, "temp file left in %s\n", g.out[i]);
			abort();
		}
	}
	return 0;
}
