/*
 * fuzz_deid.c - the basic profile on one file: what it removes is gone.
 *
 * Input: the bytes of one file. If DCMTK loads it, every text value of
 * the input (any VR that holds text, at any level) is noted, the basic
 * profile is applied (burned-in guard off) and the object written. The
 * invariant (issue 11): no value of a removed or replaced attribute
 * appears anywhere in the output bytes.
 *
 * Only values that can be told apart are checked, so a finding is a leak
 * and never a coincidence: at least 6 bytes of printable ASCII with a
 * letter, found exactly once in the input (its own attribute: a value also
 * elsewhere in the input may legitimately stay there), not kept as an
 * output value (the allowlist, codes, coded strings stay) and no part of
 * what the writer itself adds (the meta header's implementation name).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dicomsort/deid.h"
#include "dicomsort/dicom.h"
#include "fuzz_common.h"

static struct {
	char input[4200];
	char output[4200];
	struct deid_secret *secret;
} g;

struct values {
	char **v;
	size_t n, cap;
};

static void setup(void)
{
	const char *dir = fuzz_scratch_dir();
	struct error err = ERROR_INIT;
	char path[4300];
	static const uint8_t secret[32] = "fuzzing secret, not a real one";

	if (dicom_init(&err) == -1) {
		fprintf(stderr, "fuzz_deid setup: %s\n", err.msg);
		abort();
	}
	snprintf(path, sizeof(path), "%s/deid-secret", dir);
	fuzz_write_file(path, secret, sizeof(secret));
	if (deid_secret_load(&g.secret, path, &err) == -1) {
		fprintf(stderr, "fuzz_deid setup: %s\n", err.msg);
		abort();
	}
	snprintf(g.input, sizeof(g.input), "%s/deid-input.dcm", dir);
	snprintf(g.output, sizeof(g.output), "%s/deid-output.dcm", dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	setup();
	return 0;
}

static bool text_vr(const char *vr)
{
	static const char *const vrs[] = { "AE", "AS", "CS", "DA", "DS", "DT",
					   "IS", "LO", "LT", "PN", "SH", "ST",
					   "TM", "UC", "UI", "UR", "UT" };

	for (size_t i = 0; i < sizeof(vrs) / sizeof(*vrs); i++)
		if (strcmp(vr, vrs[i]) == 0)
			return true;
	return false;
}

static void add_value(struct values *vals, char *v);
static void add_runs(struct values *vals, const char *bytes);

/* The adapter gives UN and OB values as hex ("41\\42"): their bytes,
 * so text hidden in them is checked too. */
static void unhex(char *v)
{
	char *o = v;

	for (const char *p = v; p[0] && p[1]; p += p[2] == '\\' ? 3 : 2) {
		unsigned b;

		if (sscanf(p, "%2x", &b) != 1)
			break;
		*o++ = b ? (char)b : '\x01';	/* a NUL ends no run */
		if (p[2] != '\\')
			break;
	}
	*o = '\0';
}

static enum dicom_visit_action collect(void *ctx, struct dicom_elem *e)
{
	struct values *vals = ctx;
	const char *vr = dicom_elem_vr(e);
	bool hex = strcmp(vr, "UN") == 0 || (strcmp(vr, "OB") == 0 &&
					     dicom_elem_tag(e) != TAG_PixelData);
	char *v = NULL;

	if ((!text_vr(vr) && !hex) || dicom_elem_get_string(e, &v) != 1) {
		free(v);
		return DCM_VISIT_KEEP;
	}
	if (hex) {
		unhex(v);
		add_runs(vals, v);
		free(v);
		return DCM_VISIT_KEEP;
	}
	add_value(vals, v);
	return DCM_VISIT_KEEP;
}

static void add_value(struct values *vals, char *v)
{
	if (vals->n == vals->cap) {
		size_t cap = vals->cap * 2 + 64;
		char **p = realloc(vals->v, cap * sizeof(*p));

		if (p == NULL)
			abort();
		vals->v = p;
		vals->cap = cap;
	}
	vals->v[vals->n++] = v;
}

/* Each run of printable bytes of a binary value: the text of a sequence
 * nobody parsed, say. */
static void add_runs(struct values *vals, const char *bytes)
{
	const char *p = bytes;

	while (*p) {
		size_t n = 0;
		char *run;

		while (p[n] >= 0x20 && p[n] <= 0x7e)
			n++;
		if (n >= 6 && (run = strndup(p, n)) != NULL)
			add_value(vals, run);
		p += n;
		if (*p)
			p++;
	}
}

static void free_values(struct values *vals)
{
	for (size_t i = 0; i < vals->n; i++)
		free(vals->v[i]);
	free(vals->v);
}

static size_t count(const uint8_t *hay, size_t len, const char *needle)
{
	size_t n = 0, nl = strlen(needle);
	const uint8_t *p = hay, *end = hay + len;

	while ((size_t)(end - p) >= nl) {
		const uint8_t *hit = memmem(p, (size_t)(end - p), needle, nl);

		if (hit == NULL)
			break;
		n++;
		p = hit + 1;
	}
	return n;
}

/* A value that only a leak could bring into the output. */
static bool distinctive(const char *v)
{
	static const char *const writer[] = { "OFFIS_DCMTK_367",
					      "1.2.276.0.7230010.3.0.3.6.7" };
	bool letter = false;
	size_t len = strlen(v);

	if (len < 6)
		return false;
	for (const char *p = v; *p; p++) {
		if (*p < 0x20 || *p > 0x7e)
			return false;
		letter |= (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z');
	}
	for (size_t i = 0; i < sizeof(writer) / sizeof(*writer); i++)
		if (strstr(writer[i], v) != NULL)
			return false;
	return letter;
}

static bool kept(const struct values *out, const char *v)
{
	for (size_t i = 0; i < out->n; i++)
		if (strstr(out->v[i], v) != NULL)
			return true;
	return false;
}

static uint8_t *read_all(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL;
	long size;

	if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 ||
	    fseek(f, 0, SEEK_SET) != 0 ||
	    (buf = malloc((size_t)size + 1)) == NULL ||
	    fread(buf, 1, (size_t)size, f) != (size_t)size) {
		fprintf(stderr, "cannot read back %s\n", path);
		abort();
	}
	fclose(f);
	*len = (size_t)size;
	return buf;
}

static void check(const uint8_t *in, size_t in_len, const struct values *before,
		  const struct values *after)
{
	size_t out_len, checked = 0;
	uint8_t *out = read_all(g.output, &out_len);

	for (size_t i = 0; i < before->n; i++) {
		const char *v = before->v[i];

		if (!distinctive(v) || count(in, in_len, v) != 1 || kept(after, v))
			continue;
		checked++;
		if (getenv("FUZZ_DEID_VERBOSE") != NULL)
			fprintf(stderr, "  checking %s\n", v);
		if (count(out, out_len, v) > 0) {
			fprintf(stderr, "removed value '%s' is in the output\n", v);
			abort();
		}
	}
	/* How much the invariant covered, for whoever doubts a quiet run. */
	if (getenv("FUZZ_DEID_VERBOSE") != NULL)
		fprintf(stderr, "fuzz_deid: %zu of %zu values checked\n", checked,
			before->n);
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct deid_options opts = {
		.profile = DEID_BASIC,
		.allow_burned_in = true,
	};
	struct values before = { 0 }, after = { 0 };
	struct dicom_file *file = NULL;
	struct error err = ERROR_INIT;
	struct deid_report report;
	int fd;

	if (g.secret == NULL)
		setup();
	opts.secret = g.secret;
	fuzz_write_file(g.input, data, size);
	if (dicom_load(&file, g.input, &err) == -1)
		return 0;
	if (dicom_visit(file, collect, &before, &err) == 0 &&
	    deid_apply(&opts, file, &report, &err) == 0 && !report.hold &&
	    dicom_visit(file, collect, &after, &err) == 0) {
		fd = open(g.output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd == -1)
			abort();
		if (dicom_save_fd(file, fd, &err) == 0) {
			close(fd);
			check(data, size, &before, &after);
		} else {
			close(fd);
		}
	}
	free_values(&before);
	free_values(&after);
	dicom_free(file);
	return 0;
}
