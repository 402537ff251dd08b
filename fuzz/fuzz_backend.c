/*
 * fuzz_backend.c - the C backend of dicom.h (src/dataset.c) against DCMTK
 * (issue 14): where ds_open() claims a file, DCMTK must load it too and
 * write the same bytes as ds_save_fd(), with the source's preamble and
 * with a zeroed one; and both visits must meet the same elements with the
 * same tag, VR, depth, private creator, keyword and value (as UTF-8); and
 * deid_apply() (basic, then seed) through dicom.h on the file held by
 * DCMTK and by the C backend (DICOMSORT_TEST_BACKEND=c) must give the same
 * result and bytes; and both must answer dicom_bytes_reusable() and
 * dicom_meta_disagreement() alike. A file the C backend declines is DCMTK's alone.
 *
 * DCMTK's side runs with DICOMSORT_TEST_BACKEND=dcmtk (test-only, see
 * dicom.cpp): parsed by DCMTK, never by the fast path.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dataset.h"
#include "dicomsort/deid.h"
#include "dicomsort/dicom.h"
#include "fuzz_common.h"

static _Noreturn void die(const char *what)
{
	fprintf(stderr, "fuzz_backend: %s\n", what);
	abort();
}

static struct deid_secret *secret;

static unsigned char *contents(int fd, size_t *len);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const uint8_t key[32] = "fuzz_backend: not a real secret";
	struct error err = ERROR_INIT;
	char path[4096];

	(void)argc;
	(void)argv;
	if (setenv("DICOMSORT_TEST_BACKEND", "dcmtk", 1) == -1 ||
	    dicom_init(&err) == -1)
		die("setup");
	snprintf(path, sizeof(path), "%s/deid-secret", fuzz_scratch_dir());
	fuzz_write_file(path, key, sizeof(key));
	if (deid_secret_load(&secret, path, &err) == -1)
		die("no secret");
	unlink(path);
	return 0;
}

/* deid_apply() and dicom_save_fd() with the file held by backend: rc,
 * bytes (NULL unless saved). */
static unsigned char *deid_with(const char *backend, const uint8_t *data,
				size_t size, const struct deid_options *o,
				int *rc, size_t *len)
{
	struct dicom_bytes *mem;
	struct dicom_file *file = NULL;
	struct deid_report report;
	struct error err = ERROR_INIT;
	unsigned char *to = dicom_bytes_new(&mem, size), *out = NULL;
	int fd;

	if (to == NULL || setenv("DICOMSORT_TEST_BACKEND", backend, 1) == -1)
		die("setup");
	memcpy(to, data, size);
	*rc = dicom_load_bytes(&file, mem, &err);
	if (*rc == 0)
		*rc = deid_apply(o, file, &report, &err);
	if (*rc == 0 && !report.hold) {
		if ((fd = memfd_create("deid", MFD_CLOEXEC)) == -1)
			die("memfd_create");
		if ((*rc = dicom_save_fd(file, fd, &err)) == 0)
			out = contents(fd, len);
		close(fd);
	}
	dicom_free(file);
	dicom_bytes_free(mem);
	if (setenv("DICOMSORT_TEST_BACKEND", "dcmtk", 1) == -1)
		die("setup");
	return out;
}

static void compare_deid(const uint8_t *data, size_t size)
{
	for (int seed = 0; seed < 2; seed++) {
		struct deid_options o = { .profile = seed ? DEID_SEED : DEID_BASIC,
					  .secret = secret, .allow_burned_in = true };
		size_t a_len = 0, b_len = 0;
		int ra, rb;
		unsigned char *a = deid_with("dcmtk", data, size, &o, &ra, &a_len);
		unsigned char *b = deid_with("c", data, size, &o, &rb, &b_len);

		if (ra != rb)
			die("deid_apply() fails on one backend only");
		if ((a == NULL) != (b == NULL) || a_len != b_len ||
		    (a != NULL && memcmp(a, b, a_len) != 0))
			die("the backends de-identify to different bytes");
		free(a);
		free(b);
	}
}

/* dicom_bytes_reusable() and dicom_meta_disagreement() of the file as
 * loaded by backend; 0 or -1 (load failed). */
static int kept_with(const char *backend, const uint8_t *data, size_t size,
		     bool *reusable, const char **disagreement)
{
	struct dicom_bytes *mem;
	struct dicom_file *file = NULL;
	struct error err = ERROR_INIT;
	unsigned char *to = dicom_bytes_new(&mem, size);
	int rc;

	if (to == NULL || setenv("DICOMSORT_TEST_BACKEND", backend, 1) == -1)
		die("setup");
	memcpy(to, data, size);
	*reusable = false;
	*disagreement = NULL;
	if ((rc = dicom_load_bytes(&file, mem, &err)) == 0) {
		*reusable = dicom_bytes_reusable(file);
		*disagreement = dicom_meta_disagreement(file);
	}
	dicom_free(file);
	dicom_bytes_free(mem);
	if (setenv("DICOMSORT_TEST_BACKEND", "dcmtk", 1) == -1)
		die("setup");
	return rc;
}

static void compare_kept(const uint8_t *data, size_t size)
{
	bool ra, rb;
	const char *da, *db;

	if (kept_with("dcmtk", data, size, &ra, &da) !=
	    kept_with("c", data, size, &rb, &db) || ra != rb || da != db)
		die("the backends disagree on an unchanged file's meta header");
}

/* What fd holds; aborts on failure. */
static unsigned char *contents(int fd, size_t *len)
{
	off_t end = lseek(fd, 0, SEEK_END);
	unsigned char *buf = NULL;

	if (end < 0 || (buf = malloc((size_t)end + 1)) == NULL ||
	    pread(fd, buf, (size_t)end, 0) != end)
		die("cannot read back an output");
	*len = (size_t)end;
	return buf;
}

static unsigned char *dcmtk_output(const uint8_t *data, size_t size, bool zero,
				   size_t *len)
{
	struct dicom_bytes *mem;
	struct dicom_file *file = NULL;
	struct error err = ERROR_INIT;
	unsigned char *to = dicom_bytes_new(&mem, size), *out;
	int fd;

	if (to == NULL)
		die("out of memory");
	memcpy(to, data, size);
	if (dicom_load_bytes(&file, mem, &err) == -1)
		die("DCMTK refuses a file the C backend claimed");
	if ((fd = memfd_create("dcmtk", MFD_CLOEXEC)) == -1)
		die("memfd_create");
	if (zero)
		dicom_zero_preamble(file);
	if (dicom_save_fd(file, fd, &err) == -1)
		die("DCMTK cannot write a file the C backend claimed");
	out = contents(fd, len);
	close(fd);
	dicom_free(file);
	dicom_bytes_free(mem);
	return out;
}

static unsigned char *c_output(const struct ds_file *f, bool zero, size_t *len)
{
	struct error err = ERROR_INIT;
	unsigned char *out;
	int fd = memfd_create("c", MFD_CLOEXEC);

	if (fd == -1)
		die("memfd_create");
	if (ds_save_fd(f, fd, zero, &err) == -1)
		die("the C backend cannot write a file it claimed");
	out = contents(fd, len);
	close(fd);
	return out;
}

/* A visit, one line per element. */
struct trace {
	char *text;
	size_t len, cap;
};

static void add(struct trace *t, uint32_t tag, const char *vr, int depth,
		const char *creator, const char *keyword, int rc, const char *value)
{
	char head[96];
	int n = snprintf(head, sizeof(head), "%08x %s %d %d ", (unsigned)tag, vr,
			 depth, rc);
	size_t more = (size_t)n + strlen(creator) + strlen(keyword) +
		      (value ? strlen(value) : 0) + 8;	/* 6 brackets, newline, NUL */

	if (t->len + more + 1 > t->cap) {
		t->cap = 2 * (t->len + more + 1);
		if ((t->text = realloc(t->text, t->cap)) == NULL)
			die("out of memory");
	}
	t->len += (size_t)sprintf(t->text + t->len, "%s[%s][%s][%s]\n", head,
				  creator, keyword, value ? value : "");
}

static enum dicom_visit_action dcmtk_line(void *ctx, struct dicom_elem *e)
{
	char keyword[128], *value = NULL;
	int rc = dicom_elem_get_string(e, &value);

	dicom_elem_keyword(e, keyword, sizeof(keyword));
	add(ctx, dicom_elem_tag(e), dicom_elem_vr(e), dicom_elem_depth(e),
	    dicom_elem_private_creator(e), keyword, rc, value);
	free(value);
	return DCM_VISIT_KEEP;
}

static int c_line(void *ctx, struct ds_elem *e)
{
	char keyword[128], *value = NULL;
	int rc = ds_elem_get_string(e, &value);

	ds_elem_keyword(e, keyword, sizeof(keyword));
	add(ctx, ds_elem_tag(e), ds_elem_vr(e), ds_elem_depth(e),
	    ds_elem_private_creator(e), keyword, rc, value);
	free(value);
	return 0;
}

static void compare_visits(const uint8_t *data, size_t size, struct ds_file *f)
{
	struct trace a = { 0 }, b = { 0 };
	struct dicom_bytes *mem;
	struct dicom_file *file = NULL;
	struct error err = ERROR_INIT;
	unsigned char *to = dicom_bytes_new(&mem, size);

	if (to == NULL)
		die("out of memory");
	memcpy(to, data, size);
	if (dicom_load_bytes(&file, mem, &err) == -1 ||
	    dicom_visit(file, dcmtk_line, &a, &err) == -1)
		die("DCMTK cannot visit a file the C backend claimed");
	if (ds_visit(f, c_line, &b) == -1)
		die("the C backend cannot visit a file it claimed");
	if (a.len != b.len || (a.len > 0 && memcmp(a.text, b.text, a.len) != 0)) {
		fprintf(stderr, "DCMTK:\n%.*s\nC:\n%.*s\n", (int)a.len,
			a.text ? a.text : "", (int)b.len, b.text ? b.text : "");
		die("the backends' visits differ");
	}
	free(a.text);
	free(b.text);
	dicom_free(file);
	dicom_bytes_free(mem);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ds_file *f = NULL;
	int rc = ds_open(&f, data, size);

	if (rc == DS_NO_MEMORY)
		die("out of memory");
	if (rc != 0)
		return 0;
	for (int zero = 0; zero < 2; zero++) {
		size_t a_len, b_len;
		unsigned char *a = dcmtk_output(data, size, zero, &a_len);
		unsigned char *b = c_output(f, zero, &b_len);

		if (a_len != b_len || memcmp(a, b, a_len) != 0)
			die("the backends write different bytes");
		free(a);
		free(b);
	}
	compare_visits(data, size, f);
	ds_free(f);
	compare_kept(data, size);
	compare_deid(data, size);
	return 0;
}
