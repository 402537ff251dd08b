/*
 * backend_diff - the differential test of the two backends of dicom.h
 * (issue 14): for every file named (directories recursively), what the C
 * backend (src/dataset.h) writes must be byte for byte what DCMTK writes
 * for the same object, with the source's preamble and with a zeroed one.
 *
 *   backend_diff [--min-claimed N] PATH...
 *
 * A file the C backend declines is DCMTK's alone and only counted. A file
 * it claims but DCMTK refuses, or writes otherwise, is a failure (listed
 * by path on stderr; test files carry no patient data). So is a file whose
 * visit differs: every element's tag, VR, depth, private creator, keyword
 * and value as UTF-8 (dicom_visit() and dicom_elem_*() against ds_visit()
 * and ds_elem_*()), and so must every top-level value read with
 * dicom_get_string()/dicom_get_raw() and ds_get_string(). Then both
 * backends convert to UTF-8 (or both fail to) and get the same edits (edit_for():
 * removals, new text values, emptied values and sequences, first items
 * kept, zeros in binary values), after which their bytes and a second
 * visit must still agree. Exit 0 when there
 * is none and at least N files were claimed (so a corpus the C backend
 * quietly stopped claiming does not pass as proof).
 *
 * For the file as loaded, dicom_bytes_reusable() and
 * dicom_meta_disagreement() must answer alike on both backends.
 *
 * Last, the whole de-identification: deid_apply() (basic with several
 * options, and seed) through dicom.h with the file held by DCMTK and by the
 * C backend, then dicom_save_fd(): the same result, report and bytes.
 *
 * DCMTK's side runs with DICOMSORT_TEST_BACKEND=dcmtk (test-only, see
 * dicom.cpp): every file parsed by DCMTK, none by the fast path; the C
 * side, through dicom.h, with DICOMSORT_TEST_BACKEND=c.
 */

#include "dataset.h"
#include "dicomsort/deid.h"
#include "dicomsort/dicom.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct counts {
	unsigned long files, claimed, same, failed, elements, edited, deidentified;
};

/* One element as a visit met it, all of it in one string. */
struct trace {
	char **lines;
	size_t count, cap;
};

static void add_line(struct trace *t, uint32_t tag, const char *vr, int depth,
		     const char *creator, const char *keyword, int rc,
		     const char *value)
{
	char *line;

	if (t->count == t->cap) {
		t->cap = t->cap ? 2 * t->cap : 64;
		t->lines = realloc(t->lines, t->cap * sizeof(*t->lines));
		if (t->lines == NULL)
			abort();
	}
	if (asprintf(&line, "(%04x,%04x) %s depth %d creator [%s] keyword [%s] "
		     "value %d [%s]", DCM_GROUP(tag), DCM_ELEMENT(tag), vr, depth,
		     creator, keyword, rc, value ? value : "") == -1)
		abort();
	t->lines[t->count++] = line;
}

static void free_trace(struct trace *t)
{
	for (size_t i = 0; i < t->count; i++)
		free(t->lines[i]);
	free(t->lines);
}

static enum dicom_visit_action dcmtk_line(void *ctx, struct dicom_elem *e)
{
	char keyword[128], *value = NULL;
	int rc = dicom_elem_get_string(e, &value);

	dicom_elem_keyword(e, keyword, sizeof(keyword));
	add_line(ctx, dicom_elem_tag(e), dicom_elem_vr(e), dicom_elem_depth(e),
		 dicom_elem_private_creator(e), keyword, rc, value);
	free(value);
	return DCM_VISIT_KEEP;
}

static int c_line(void *ctx, struct ds_elem *e)
{
	char keyword[128], *value = NULL;
	int rc = ds_elem_get_string(e, &value);

	ds_elem_keyword(e, keyword, sizeof(keyword));
	add_line(ctx, ds_elem_tag(e), ds_elem_vr(e), ds_elem_depth(e),
		 ds_elem_private_creator(e), keyword, rc, value);
	free(value);
	return 0;
}

/* Both backends' visits of the file; false (and the first difference on
 * stderr) when they differ. */
static bool same_visit(const char *path, const unsigned char *bytes, size_t size,
		       struct ds_file *f, struct counts *c)
{
	struct trace a = { 0 }, b = { 0 };
	struct dicom_bytes *mem;
	struct dicom_file *file = NULL;
	struct error err = ERROR_INIT;
	unsigned char *to = dicom_bytes_new(&mem, size);
	bool same = false;

	if (to == NULL)
		abort();
	memcpy(to, bytes, size);
	if (dicom_load_bytes(&file, mem, &err) == 0 &&
	    dicom_visit(file, dcmtk_line, &a, &err) == 0 &&
	    ds_visit(f, c_line, &b) == 0) {
		size_t i = 0;

		while (i < a.count && i < b.count && strcmp(a.lines[i], b.lines[i]) == 0)
			i++;
		same = a.count == b.count && i == a.count;
		if (!same)
			fprintf(stderr, "VISIT DIFFERS %s (element %zu of %zu/%zu)\n"
				"  DCMTK %s\n  C     %s\n", path, i, a.count, b.count,
				i < a.count ? a.lines[i] : "(end)",
				i < b.count ? b.lines[i] : "(end)");
		c->elements += a.count;
	} else {
		fprintf(stderr, "VISIT FAILED %s\n", path);
	}
	dicom_free(file);
	dicom_bytes_free(mem);
	free_trace(&a);
	free_trace(&b);
	return same;
}

static unsigned char *read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	unsigned char *buf = NULL;
	size_t got = 0;

	if (fd == -1)
		return NULL;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 &&
	    (buf = malloc((size_t)st.st_size)) != NULL) {
		while (got < (size_t)st.st_size) {
			ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
			if (n <= 0)
				break;
			got += (size_t)n;
		}
	}
	close(fd);
	if (buf != NULL && got != (size_t)st.st_size) {
		free(buf);
		buf = NULL;
	}
	*len = got;
	return buf;
}

/* The whole content of the memfd fd; NULL on failure. */
static unsigned char *contents(int fd, size_t *len)
{
	off_t end = lseek(fd, 0, SEEK_END);
	unsigned char *buf;

	if (end < 0 || (buf = malloc((size_t)end + 1)) == NULL)
		return NULL;
	if (pread(fd, buf, (size_t)end, 0) != end) {
		free(buf);
		return NULL;
	}
	*len = (size_t)end;
	return buf;
}

/* DCMTK's output for bytes: NULL when DCMTK refuses the file. */
static unsigned char *dcmtk_output(const unsigned char *bytes, size_t size,
				   bool zero, size_t *len)
{
	struct dicom_bytes *mem;
	struct dicom_file *file = NULL;
	struct error err = ERROR_INIT;
	unsigned char *out = NULL, *to = dicom_bytes_new(&mem, size);
	int fd;

	if (to == NULL)
		return NULL;
	memcpy(to, bytes, size);
	if (dicom_load_bytes(&file, mem, &err) == 0 &&
	    (fd = memfd_create("dcmtk", MFD_CLOEXEC)) != -1) {
		if (zero)
			dicom_zero_preamble(file);
		if (dicom_save_fd(file, fd, &err) == 0)
			out = contents(fd, len);
		close(fd);
	}
	dicom_free(file);
	dicom_bytes_free(mem);
	return out;
}

static unsigned char *c_output(const struct ds_file *f, bool zero, size_t *len)
{
	struct error err = ERROR_INIT;
	unsigned char *out = NULL;
	int fd = memfd_create("c", MFD_CLOEXEC);

	if (fd == -1)
		return NULL;
	if (ds_save_fd(f, fd, zero, &err) == 0)
		out = contents(fd, len);
	close(fd);
	return out;
}

/* ---- top-level values: dicom_get_string()/_raw() against ds_get_string() ---- */

struct tags {
	uint32_t tag[4096];
	size_t count;
};

static int top_tag(void *ctx, struct ds_elem *e)
{
	struct tags *t = ctx;

	if (ds_elem_depth(e) == 0 && t->count < 4096)
		t->tag[t->count++] = ds_elem_tag(e);
	return DS_VISIT_KEEP;
}

static bool same_getters(const char *path, const unsigned char *bytes, size_t size,
			 struct ds_file *f)
{
	static struct tags t;
	struct dicom_bytes *mem;
	struct dicom_file *file = NULL;
	struct error err = ERROR_INIT;
	unsigned char *to = dicom_bytes_new(&mem, size);
	bool same = true;

	if (to == NULL)
		abort();
	memcpy(to, bytes, size);
	t.count = 0;
	/* and some that files rarely have */
	t.tag[t.count++] = DCM_TAG(0x0010, 0x0011);
	t.tag[t.count++] = DCM_TAG(0x0012, 0x0063);
	t.tag[t.count++] = DCM_TAG(0x6000, 0x0102);
	if (dicom_load_bytes(&file, mem, &err) == -1 || ds_visit(f, top_tag, &t) == -1) {
		fprintf(stderr, "GETTERS FAILED %s\n", path);
		same = false;
	}
	for (size_t i = 0; same && i < t.count; i++)
		for (int convert = 0; convert < 2 && same; convert++) {
			char *a = NULL, *b = NULL;
			int ra = convert ? dicom_get_string(file, t.tag[i], &a) :
				 dicom_get_raw(file, t.tag[i], &a);
			int rb = ds_get_string(f, t.tag[i], convert, &b);

			same = ra == rb && (a == NULL) == (b == NULL) &&
			       (a == NULL || strcmp(a, b) == 0);
			if (!same)
				fprintf(stderr, "GETTER DIFFERS %s (%04x,%04x) %s: "
					"DCMTK %d [%s], C %d [%s]\n", path,
					DCM_GROUP(t.tag[i]), DCM_ELEMENT(t.tag[i]),
					convert ? "string" : "raw", ra, a ? a : "",
					rb, b ? b : "");
			free(a);
			free(b);
		}
	dicom_free(file);
	dicom_bytes_free(mem);
	return same;
}

/* ---- the same edits through both backends ---- */

enum edit { KEEP, REMOVE, PUT, EMPTY, FIRST_ITEM };

/* What the edit script does to an element: a function of what both
 * backends agree on (tag, VR, depth, value), so both get the same. */
static enum edit edit_for(uint32_t tag, const char *vr, const char *value,
			  char **put)
{
	uint16_t g = DCM_GROUP(tag), el = DCM_ELEMENT(tag);

	*put = NULL;
	if (g & 1 && el >= 0x1000)
		return REMOVE;
	if (!strcmp(vr, "SQ"))
		return tag % 3 == 0 ? EMPTY : FIRST_ITEM;
	if (!strcmp(vr, "DA") || !strcmp(vr, "TM"))
		return EMPTY;
	if (!strcmp(vr, "PN") || !strcmp(vr, "LO") || !strcmp(vr, "SH")) {
		/* trailing spaces go, an odd length is padded */
		if (asprintf(put, "%s%s  ", tag % 2 ? "X^" : "", value ? value : "") == -1)
			abort();
		return PUT;
	}
	if (!strcmp(vr, "UI")) {	/* white space goes from a UID */
		if (asprintf(put, " %s.9 \t", value ? value : "1") == -1)
			abort();
		return PUT;
	}
	if (!strcmp(vr, "ST") || !strcmp(vr, "LT")) {
		/* longer than 16 bits can say: written as UN */
		size_t n = tag % 2 ? 70001 : 11;

		if ((*put = malloc(n + 1)) == NULL)
			abort();
		memset(*put, 'x', n);
		(*put)[n] = '\0';
		return PUT;
	}
	if (!strcmp(vr, "OB") || !strcmp(vr, "OW") || !strcmp(vr, "UL")) {
		*put = strdup(tag % 2 ? "0" : "0\\0\\0");
		return PUT;
	}
	return KEEP;
}

static enum dicom_visit_action dcmtk_edit(void *ctx, struct dicom_elem *e)
{
	struct error err = ERROR_INIT;
	char *value = NULL, *put;
	int rc = 0;

	(void)ctx;
	dicom_elem_get_string(e, &value);
	switch (edit_for(dicom_elem_tag(e), dicom_elem_vr(e), value, &put)) {
	case REMOVE:
		free(value);
		return DCM_VISIT_REMOVE;
	case PUT:
		rc = dicom_elem_put_string(e, put, &err);
		break;
	case EMPTY:
		rc = dicom_elem_empty(e, &err);
		break;
	case FIRST_ITEM:
		rc = dicom_elem_keep_first_item(e, &err);
		break;
	case KEEP:
		break;
	}
	if (rc == -1)
		fprintf(stderr, "DCMTK edit failed: %s\n", err.msg);
	free(put);
	free(value);
	return DCM_VISIT_KEEP;
}

static int c_edit(void *ctx, struct ds_elem *e)
{
	struct error err = ERROR_INIT;
	char *value = NULL, *put;
	int rc = 0;

	(void)ctx;
	ds_elem_get_string(e, &value);
	switch (edit_for(ds_elem_tag(e), ds_elem_vr(e), value, &put)) {
	case REMOVE:
		free(value);
		return DS_VISIT_REMOVE;
	case PUT:
		rc = ds_elem_put_string(e, put, &err);
		break;
	case EMPTY:
		rc = ds_elem_empty(e, &err);
		break;
	case FIRST_ITEM:
		rc = ds_elem_keep_first_item(e, &err);
		break;
	case KEEP:
		break;
	}
	if (rc == -1)
		fprintf(stderr, "C edit failed: %s\n", err.msg);
	free(put);
	free(value);
	return DS_VISIT_KEEP;
}

/* Top-level changes after the visit, as the basic profile makes them:
 * new elements in tag order, a value replaced, one emptied, one deleted,
 * the character set changed (values read after it in the new one). */
static const struct top_edit {
	uint32_t tag;
	const char *value;	/* NULL: empty; "" with delete: delete */
	bool delete;
} top_edits[] = {
	{ DCM_TAG(0x0012, 0x0062), "YES", false },
	{ DCM_TAG(0x0012, 0x0063), "DICOMSORTD 1.0 BASIC PROFILE\\RETAIN UIDS", false },
	{ DCM_TAG(0x0028, 0x0303), "MODIFIED", false },
	{ DCM_TAG(0x0010, 0x0020), "PSEUDO-1 ", false },
	{ DCM_TAG(0x0008, 0x0020), NULL, false },
	{ DCM_TAG(0x0008, 0x0090), "", true },
	{ DCM_TAG(0x0008, 0x0005), "ISO_IR 192", false },
};

/* And codes: appended twice (the second time they are there already),
 * one with padding to be read past; a sequence replaced. */
static const struct dicom_code codes[] = {
	{ "113100", "DCM", "Basic Application Confidentiality Profile" },
	{ "113108 ", "DCM", "Retain Patient Characteristics Option" },
	{ "T-D1100", "SRT", "Head" },
};

static bool dcmtk_top_edits(struct dicom_file *file)
{
	struct error err = ERROR_INIT;

	if (dicom_append_code_sequence(file, DCM_TAG(0x0012, 0x0064), codes, 2, &err) == -1 ||
	    dicom_append_code_sequence(file, DCM_TAG(0x0012, 0x0064), codes, 2, &err) == -1 ||
	    dicom_append_code_sequence(file, DCM_TAG(0x0008, 0x2218), codes + 2, 1, &err) == -1 ||
	    dicom_put_code_sequence(file, DCM_TAG(0x0008, 0x1032), codes, 3, &err) == -1)
		return false;

	for (size_t i = 0; i < sizeof(top_edits) / sizeof(*top_edits); i++) {
		const struct top_edit *t = &top_edits[i];
		int rc = t->delete ? dicom_delete(file, t->tag, &err) :
			 t->value ? dicom_put_string(file, t->tag, t->value, &err) :
			 dicom_empty(file, t->tag, &err);
		if (rc == -1)
			return false;
	}
	return true;
}

static bool c_top_edits(struct ds_file *f)
{
	struct error err = ERROR_INIT;

	if (ds_append_code_sequence(f, DCM_TAG(0x0012, 0x0064), codes, 2, &err) == -1 ||
	    ds_append_code_sequence(f, DCM_TAG(0x0012, 0x0064), codes, 2, &err) == -1 ||
	    ds_append_code_sequence(f, DCM_TAG(0x0008, 0x2218), codes + 2, 1, &err) == -1 ||
	    ds_put_code_sequence(f, DCM_TAG(0x0008, 0x1032), codes, 3, &err) == -1)
		return false;

	for (size_t i = 0; i < sizeof(top_edits) / sizeof(*top_edits); i++) {
		const struct top_edit *t = &top_edits[i];
		int rc = t->delete ? ds_delete(f, t->tag) :
			 t->value ? ds_put_string(f, t->tag, t->value, &err) :
			 ds_empty(f, t->tag, &err);
		if (rc == -1)
			return false;
	}
	return true;
}

/* dicom_convert_to_utf8() first, as the basic profile does: both succeed
 * or both fail. */
static bool same_conversion(const char *path, struct dicom_file *file,
			    struct ds_file *f)
{
	struct error a = ERROR_INIT, b = ERROR_INIT;
	int ra = dicom_convert_to_utf8(file, &a), rb = ds_convert_to_utf8(f, &b);

	if (ra != rb)
		fprintf(stderr, "CONVERSION DIFFERS %s: DCMTK %d (%s), C %d (%s)\n",
			path, ra, a.msg, rb, b.msg);
	return ra == rb;
}

/* Both backends edited alike: the same bytes, then the same visit. */
static bool same_edits(const char *path, const unsigned char *bytes, size_t size,
		       struct ds_file *f, struct counts *c)
{
	struct trace a = { 0 }, b = { 0 };
	struct dicom_bytes *mem;
	struct dicom_file *file = NULL;
	struct error err = ERROR_INIT;
	unsigned char *to = dicom_bytes_new(&mem, size), *x = NULL, *y = NULL;
	size_t x_len = 0, y_len = 0;
	bool same = false;
	int fd;

	if (to == NULL)
		abort();
	memcpy(to, bytes, size);
	if (dicom_load_bytes(&file, mem, &err) == 0 &&
	    same_conversion(path, file, f) &&
	    dicom_visit(file, dcmtk_edit, NULL, &err) == 0 &&
	    ds_visit(f, c_edit, NULL) == 0 &&
	    dcmtk_top_edits(file) && c_top_edits(f) &&
	    (fd = memfd_create("dcmtk", MFD_CLOEXEC)) != -1) {
		if (dicom_save_fd(file, fd, &err) == 0)
			x = contents(fd, &x_len);
		close(fd);
		y = c_output(f, false, &y_len);
		same = x != NULL && y != NULL && x_len == y_len &&
		       memcmp(x, y, x_len) == 0;
		if (!same) {
			size_t at = 0;

			while (x && y && at < x_len && at < y_len && x[at] == y[at])
				at++;
			fprintf(stderr, "EDITED DIFFER %s (DCMTK %zu bytes, C %zu; "
				"first difference at %zu)\n", path, x_len, y_len, at);
		}
		if (same && dicom_visit(file, dcmtk_line, &a, &err) == 0 &&
		    ds_visit(f, c_line, &b) == 0) {
			size_t i = 0;

			while (i < a.count && i < b.count &&
			       strcmp(a.lines[i], b.lines[i]) == 0)
				i++;
			same = a.count == b.count && i == a.count;
			if (!same)
				fprintf(stderr, "EDITED VISIT DIFFERS %s (element %zu)\n"
					"  DCMTK %s\n  C     %s\n", path, i,
					i < a.count ? a.lines[i] : "(end)",
					i < b.count ? b.lines[i] : "(end)");
			c->edited += a.count;
		}
	} else {
		fprintf(stderr, "EDITS FAILED %s\n", path);
	}
	dicom_free(file);
	dicom_bytes_free(mem);
	free(x);
	free(y);
	free_trace(&a);
	free_trace(&b);
	return same;
}

/* ---- the pipeline's questions about an unchanged file ---- */

struct kept {
	int rc;
	bool reusable;
	const char *disagreement;
};

static struct kept kept_with(const char *backend, const unsigned char *bytes,
			     size_t size)
{
	struct dicom_bytes *mem;
	struct dicom_file *file = NULL;
	struct error err = ERROR_INIT;
	unsigned char *to = dicom_bytes_new(&mem, size);
	struct kept k = { .rc = -1 };

	if (to == NULL || setenv("DICOMSORT_TEST_BACKEND", backend, 1) == -1)
		abort();
	memcpy(to, bytes, size);
	if ((k.rc = dicom_load_bytes(&file, mem, &err)) == 0) {
		k.reusable = dicom_bytes_reusable(file);
		k.disagreement = dicom_meta_disagreement(file);
	}
	dicom_free(file);
	dicom_bytes_free(mem);
	if (setenv("DICOMSORT_TEST_BACKEND", "dcmtk", 1) == -1)
		abort();
	return k;
}

/* dicom_bytes_reusable() and dicom_meta_disagreement() (static strings)
 * for the file as loaded, whichever backend holds it. */
static bool same_kept(const char *path, const unsigned char *bytes, size_t size)
{
	struct kept a = kept_with("dcmtk", bytes, size);
	struct kept b = kept_with("c", bytes, size);

	if (a.rc == b.rc && a.reusable == b.reusable &&
	    a.disagreement == b.disagreement)
		return true;
	fprintf(stderr, "KEPT DIFFERS %s: DCMTK %d reusable %d [%s], C %d "
		"reusable %d [%s]\n", path, a.rc, a.reusable,
		a.disagreement ? a.disagreement : "", b.rc, b.reusable,
		b.disagreement ? b.disagreement : "");
	return false;
}

/* ---- deid_apply() through dicom.h, on either backend ---- */

static struct deid_secret *secret;

static const char *const safe_private[] = { "GENDICOM TEST 1.0:0009,xx01",
					    "BENCH PRIVATE:0029,xx10", NULL };

/* The profiles and options tried on every file. */
static const struct deid_options *profile_options(size_t i)
{
	static struct deid_options o[4];

	for (size_t k = 0; k < 4; k++) {
		memset(&o[k], 0, sizeof(o[k]));
		o[k].profile = DEID_BASIC;
		o[k].secret = secret;
		o[k].allow_burned_in = true;
	}
	o[1].options = DEID_CLEAN_DESCRIPTORS | DEID_RETAIN_MODIFIED_DATES |
		       DEID_RETAIN_PATIENT_CHARACTERISTICS | DEID_CLEAN_STRUCTURED_CONTENT;
	o[2].options = DEID_RETAIN_UIDS | DEID_RETAIN_SAFE_PRIVATE |
		       DEID_RETAIN_DEVICE_IDENTITY | DEID_RETAIN_INSTITUTION_IDENTITY;
	o[2].safe_private = safe_private;
	o[2].keep_unlisted = true;
	o[3].profile = DEID_SEED;
	return i < 4 ? &o[i] : NULL;
}

/* One backend's de-identified file: rc, report, error and bytes. */
struct deid_result {
	int rc;
	struct deid_report report;
	struct error err;
	unsigned char *bytes;
	size_t len;
};

static void deid_with(const char *backend, const unsigned char *bytes, size_t size,
		      const struct deid_options *o, struct deid_result *r)
{
	struct dicom_bytes *mem;
	struct dicom_file *file = NULL;
	unsigned char *to = dicom_bytes_new(&mem, size);
	int fd;

	memset(r, 0, sizeof(*r));
	if (to == NULL || (backend != NULL ?
			   setenv("DICOMSORT_TEST_BACKEND", backend, 1) :
			   unsetenv("DICOMSORT_TEST_BACKEND")) == -1)
		abort();
	memcpy(to, bytes, size);
	r->rc = dicom_load_bytes(&file, mem, &r->err);
	/* The file must be held by the backend asked for (the C backend
	 * only ever leaves dicom_parsed() false); unset, production's
	 * dispatch: the fast path, then the C backend or DCMTK. */
	if (r->rc == 0 && backend != NULL &&
	    dicom_parsed(file) != (strcmp(backend, "c") != 0)) {
		fprintf(stderr, "backend_diff: not the %s backend\n", backend);
		abort();
	}
	if (r->rc == 0)
		r->rc = deid_apply(o, file, &r->report, &r->err);
	if (r->rc == 0 && !r->report.hold &&
	    (fd = memfd_create("deid", MFD_CLOEXEC)) != -1) {
		if ((r->rc = dicom_save_fd(file, fd, &r->err)) == 0)
			r->bytes = contents(fd, &r->len);
		close(fd);
	}
	dicom_free(file);
	dicom_bytes_free(mem);
	if (setenv("DICOMSORT_TEST_BACKEND", "dcmtk", 1) == -1)
		abort();
}

static bool same_result(const struct deid_result *a, const struct deid_result *b,
			bool bytes)
{
	return a->rc == b->rc && a->report.hold == b->report.hold &&
	       a->report.shift_days == b->report.shift_days &&
	       a->report.id_unmapped == b->report.id_unmapped &&
	       strcmp(a->report.original_id, b->report.original_id) == 0 &&
	       (a->rc == 0 || (a->err.kind == b->err.kind &&
			       strcmp(a->err.msg, b->err.msg) == 0)) &&
	       (!bytes || (a->len == b->len &&
			   (a->len == 0 || memcmp(a->bytes, b->bytes, a->len) == 0)));
}

static void report_deid(const char *path, size_t i, const char *which,
			const struct deid_result *a, const struct deid_result *b)
{
	size_t at = 0;

	while (a->bytes && b->bytes && at < a->len && at < b->len &&
	       a->bytes[at] == b->bytes[at])
		at++;
	fprintf(stderr, "DEID DIFFERS %s (options %zu): DCMTK %d [%s] %zu "
		"bytes, %s %d [%s] %zu bytes, first difference at %zu\n",
		path, i, a->rc, a->rc ? a->err.msg : "", a->len, which, b->rc,
		b->rc ? b->err.msg : "", b->len, at);
}

/* DCMTK's result against the C backend's (held from the load on) and
 * against production's dispatch (the fast path, then the C backend); the
 * latter's bytes but for seed, which the fast path splices by design
 * (the source's meta header kept, nothing re-encoded). */
static bool same_deid(const char *path, const unsigned char *bytes, size_t size,
		      struct counts *c)
{
	const struct deid_options *o;
	bool same = true;

	for (size_t i = 0; same && (o = profile_options(i)) != NULL; i++) {
		struct deid_result a, b, p;

		deid_with("dcmtk", bytes, size, o, &a);
		deid_with("c", bytes, size, o, &b);
		deid_with(NULL, bytes, size, o, &p);
		if (!same_result(&a, &b, true)) {
			report_deid(path, i, "C", &a, &b);
			same = false;
		} else if (!same_result(&a, &p, o->profile != DEID_SEED)) {
			report_deid(path, i, "default", &a, &p);
			same = false;
		}
		if (same && a.rc == 0)
			c->deidentified++;
		free(a.bytes);
		free(b.bytes);
		free(p.bytes);
	}
	return same;
}

static void compare(const char *path, struct counts *c)
{
	size_t size, a_len = 0, b_len = 0;
	unsigned char *bytes = read_file(path, &size);
	struct ds_file *f = NULL;

	if (bytes == NULL)
		return;
	c->files++;
	if (ds_open(&f, bytes, size) != 0) {
		free(bytes);
		return;
	}
	c->claimed++;
	bool same = true;
	for (int zero = 0; zero < 2 && same; zero++) {
		unsigned char *a = dcmtk_output(bytes, size, zero, &a_len);
		unsigned char *b = c_output(f, zero, &b_len);

		same = a != NULL && b != NULL && a_len == b_len &&
		       memcmp(a, b, a_len) == 0;
		if (!same) {
			size_t at = 0;

			while (a && b && at < a_len && at < b_len && a[at] == b[at])
				at++;
			fprintf(stderr, "DIFFER %s (%s; DCMTK %zu bytes%s, C %zu; "
				"first difference at %zu)\n", path,
				zero ? "zero preamble" : "source preamble", a_len,
				a ? "" : " REFUSED", b_len, at);
		}
		free(a);
		free(b);
	}
	if (same)
		same = same_visit(path, bytes, size, f, c);
	if (same)
		same = same_getters(path, bytes, size, f);
	if (same)
		same = same_edits(path, bytes, size, f, c);
	if (same)
		same = same_kept(path, bytes, size);
	if (same)
		same = same_deid(path, bytes, size, c);
	if (same)
		c->same++;
	else
		c->failed++;
	ds_free(f);
	free(bytes);
}

static void visit(const char *path, struct counts *c)
{
	struct stat st;
	struct dirent **names;
	int n;

	if (lstat(path, &st) == -1)
		return;
	if (S_ISREG(st.st_mode)) {
		compare(path, c);
		return;
	}
	if (!S_ISDIR(st.st_mode) || (n = scandir(path, &names, NULL, alphasort)) < 0)
		return;
	for (int i = 0; i < n; i++) {
		char *sub;

		if (names[i]->d_name[0] != '.' &&
		    asprintf(&sub, "%s/%s", path, names[i]->d_name) != -1) {
			visit(sub, c);
			free(sub);
		}
		free(names[i]);
	}
	free(names);
}

/* A key for the pseudonyms, in a file of its own for the moment it is read. */
static int load_secret(void)
{
	static const char key[32] = "backend_diff: not a real secret";
	char path[] = "/tmp/backend_diff-secret-XXXXXX";
	struct error err = ERROR_INIT;
	int fd = mkstemp(path), rc;

	if (fd == -1 || write(fd, key, sizeof(key)) != (ssize_t)sizeof(key)) {
		if (fd != -1) {
			close(fd);
			unlink(path);
		}
		fprintf(stderr, "backend_diff: cannot write a secret\n");
		return -1;
	}
	close(fd);
	rc = deid_secret_load(&secret, path, &err);
	unlink(path);
	if (rc == -1)
		fprintf(stderr, "backend_diff: %s\n", err.msg);
	return rc;
}

int main(int argc, char **argv)
{
	struct counts c = { 0 };
	struct error err = ERROR_INIT;
	unsigned long min_claimed = 0;
	int i = 1;

	if (argc > 2 && strcmp(argv[1], "--min-claimed") == 0) {
		min_claimed = strtoul(argv[2], NULL, 10);
		i = 3;
	}
	if (setenv("DICOMSORT_TEST_BACKEND", "dcmtk", 1) == -1 ||
	    dicom_init(&err) == -1) {
		fprintf(stderr, "backend_diff: %s\n", err.msg);
		return 2;
	}
	if (load_secret() == -1)
		return 2;
	for (; i < argc; i++)
		visit(argv[i], &c);
	printf("backend_diff: %lu files, %lu claimed by the C backend, %lu "
	       "identical (%lu elements visited, %lu after edits, %lu "
	       "de-identifications), %lu different\n", c.files, c.claimed,
	       c.same, c.elements, c.edited, c.deidentified, c.failed);
	deid_secret_free(secret);
	if (c.claimed < min_claimed)
		fprintf(stderr, "backend_diff: fewer than %lu files claimed\n",
			min_claimed);
	return c.failed == 0 && c.claimed >= min_claimed ? 0 : 1;
}
