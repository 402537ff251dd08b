/* test_dicom.c - the DICOM adapter (dicom.h) on files built byte by byte
 * here: loading with and without preamble, errors as values, strings as
 * UTF-8 from Latin-1 and Japanese ISO 2022, put/empty/delete, visiting
 * nested sequences and private elements, saving in the original transfer
 * syntax. Files go below $DICOMSORT_TEST_TMP (or /tmp). */
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

#include "dicomsort/dicom.h"
#include "dicomsort/pipeline.h"

#define EXPLICIT_LE "1.2.840.10008.1.2.1"
#define IMPLICIT_LE "1.2.840.10008.1.2"
#define CT_STORAGE "1.2.840.10008.5.1.4.1.1.2"
#define SOP_UID "1.2.826.0.1.3680043.10.7613.1.2.3"
#define CREATOR "UNIT TEST CREATOR"
/* Larger than DCMTK's lazy-load threshold (4 KiB): stays on disk until
 * saved, which is the path that re-reads the source. */
#define PIXELS 8192

static char dir[PATH_MAX];

/* ---- building files ---- */

struct buf {
	unsigned char *p;
	size_t len, cap;
};

static void put(struct buf *b, const void *data, size_t len)
{
	if (b->len + len > b->cap) {
		b->cap = (b->len + len) * 2 + 256;
		b->p = realloc(b->p, b->cap);
		assert_non_null(b->p);
	}
	memcpy(b->p + b->len, data, len);
	b->len += len;
}

static void u16(struct buf *b, uint16_t v)
{
	unsigned char x[2] = { v & 0xff, v >> 8 };

	put(b, x, 2);
}

static void u32(struct buf *b, uint32_t v)
{
	unsigned char x[4] = { v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, v >> 24 };

	put(b, x, 4);
}

static int long_vr(const char *vr)
{
	return strstr("OB OW SQ UN UT UC UR", vr) != NULL;
}

/* One element; value padded to even length (NUL for UI/OB/OW, else space).
 * implicit: no VR on the wire. */
static void elem(struct buf *b, int implicit, uint16_t g, uint16_t e,
		 const char *vr, const void *value, size_t len)
{
	size_t padded = len + (len & 1);
	unsigned char pad = strstr("UI OB OW", vr) ? 0 : ' ';

	u16(b, g);
	u16(b, e);
	if (implicit) {
		u32(b, (uint32_t)padded);
	} else if (long_vr(vr)) {
		put(b, vr, 2);
		u16(b, 0);
		u32(b, (uint32_t)padded);
	} else {
		put(b, vr, 2);
		u16(b, (uint16_t)padded);
	}
	put(b, value, len);
	if (len & 1)
		put(b, &pad, 1);
}

static void str(struct buf *b, int implicit, uint16_t g, uint16_t e,
		const char *vr, const char *s)
{
	elem(b, implicit, g, e, vr, s, strlen(s));
}

static void us(struct buf *b, int implicit, uint16_t g, uint16_t e, uint16_t v)
{
	unsigned char x[2] = { v & 0xff, v >> 8 };

	elem(b, implicit, g, e, "US", x, 2);
}

/* Sequences and items of undefined length. */
static void seq_start(struct buf *b, int implicit, uint16_t g, uint16_t e)
{
	u16(b, g);
	u16(b, e);
	if (!implicit) {
		put(b, "SQ", 2);
		u16(b, 0);
	}
	u32(b, 0xffffffffu);
}

static void item_start(struct buf *b)
{
	u16(b, 0xfffe);
	u16(b, 0xe000);
	u32(b, 0xffffffffu);
}

static void item_end(struct buf *b)
{
	u16(b, 0xfffe);
	u16(b, 0xe00d);
	u32(b, 0);
}

static void seq_end(struct buf *b)
{
	u16(b, 0xfffe);
	u16(b, 0xe0dd);
	u32(b, 0);
}

struct spec {
	int part10;		/* preamble + meta header; else a bare dataset */
	int implicit;
	const char *charset;	/* NULL: no SpecificCharacterSet */
	const char *patient_name;	/* raw bytes */
	int with_uids;
	int pixels;		/* PixelData bytes (0: none) */
	int filler;		/* PatientComments (LT) of this many bytes */
	int late_uids;		/* ImageType (CS) this long before the UIDs */
};

static void dataset(struct buf *b, const struct spec *s)
{
	int im = s->implicit;

	if (s->charset)
		str(b, im, 0x0008, 0x0005, "CS", s->charset);
	if (s->late_uids > 0) {
		char *v = malloc((size_t)s->late_uids + 1);

		assert_non_null(v);
		for (int i = 0; i < s->late_uids; i++)
			v[i] = i % 8 == 7 ? '\\' : 'A';
		v[s->late_uids - 1] = 'A';
		v[s->late_uids] = '\0';
		str(b, im, 0x0008, 0x0008, "CS", v);
		free(v);
	}
	if (s->with_uids) {
		str(b, im, 0x0008, 0x0016, "UI", CT_STORAGE);
		str(b, im, 0x0008, 0x0018, "UI", SOP_UID);
	}
	str(b, im, 0x0008, 0x0020, "DA", "20240115");
	str(b, im, 0x0008, 0x0060, "CS", "CT");
	str(b, im, 0x0008, 0x103e, "LO", "Ax 5.0mm");
	/* private block in group 0009 */
	str(b, im, 0x0009, 0x0010, "LO", CREATOR);
	str(b, im, 0x0009, 0x1001, "LO", "private value");
	seq_start(b, im, 0x0009, 0x1002);
	item_start(b);
	str(b, im, 0x0009, 0x0010, "LO", CREATOR);
	str(b, im, 0x0009, 0x1001, "LO", "nested private");
	item_end(b);
	seq_end(b);
	str(b, im, 0x0010, 0x0010, "PN", s->patient_name ? s->patient_name :
	    "Doe^John");
	str(b, im, 0x0010, 0x0020, "LO", "PAT0001");
	str(b, im, 0x0010, 0x0030, "DA", "19700101");
	if (s->filler > 0) {
		char *v = malloc((size_t)s->filler + 1);

		assert_non_null(v);
		memset(v, 'x', (size_t)s->filler);
		v[s->filler] = '\0';
		str(b, im, 0x0010, 0x4000, "LT", v);
		free(v);
	}
	str(b, im, 0x0020, 0x0011, "IS", "3");
	str(b, im, 0x0028, 0x0030, "DS", "0.5\\0.25 ");
	us(b, im, 0x0028, 0x0100, 16);
	/* RequestAttributesSequence > item > ScheduledProtocolCodeSequence */
	seq_start(b, im, 0x0040, 0x0275);
	item_start(b);
	seq_start(b, im, 0x0040, 0x0008);
	item_start(b);
	str(b, im, 0x0008, 0x0100, "SH", "P1");
	str(b, im, 0x0008, 0x0102, "SH", "99TEST");
	str(b, im, 0x0008, 0x0104, "LO", "Deep code");
	item_end(b);
	seq_end(b);
	str(b, im, 0x0040, 0x0009, "SH", "SPS1");
	item_end(b);
	seq_end(b);
	if (s->pixels > 0) {
		unsigned char *px = malloc((size_t)s->pixels);

		assert_non_null(px);
		for (int i = 0; i < s->pixels; i++)
			px[i] = (unsigned char)(i * 7 + (i >> 8));
		elem(b, im, 0x7fe0, 0x0010, "OW", px, (size_t)s->pixels);
		free(px);
	}
}

static void build(struct buf *out, const struct spec *s)
{
	struct buf meta = { 0 }, ds = { 0 };
	unsigned char version[2] = { 0, 1 };

	dataset(&ds, s);
	if (s->part10) {
		static const unsigned char zero[128];

		elem(&meta, 0, 0x0002, 0x0001, "OB", version, 2);
		str(&meta, 0, 0x0002, 0x0002, "UI", CT_STORAGE);
		str(&meta, 0, 0x0002, 0x0003, "UI", SOP_UID);
		str(&meta, 0, 0x0002, 0x0010, "UI", s->implicit ? IMPLICIT_LE :
		    EXPLICIT_LE);
		str(&meta, 0, 0x0002, 0x0012, "UI", "1.2.826.0.1.3680043.10.7613.9");
		put(out, zero, sizeof(zero));
		put(out, "DICM", 4);
		{
			unsigned char gl[4] = { meta.len & 0xff, (meta.len >> 8) & 0xff,
						(meta.len >> 16) & 0xff, meta.len >> 24 };
			elem(out, 0, 0x0002, 0x0000, "UL", gl, 4);
		}
		put(out, meta.p, meta.len);
	}
	put(out, ds.p, ds.len);
	free(meta.p);
	free(ds.p);
}

static void write_bytes(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	close(fd);
}

static const char *path_of(const char *name)
{
	static char path[PATH_MAX + 64];

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	return path;
}

/* Writes the file for s and returns its path (static buffer). */
static const char *make(const char *name, const struct spec *s, size_t cut)
{
	struct buf b = { 0 };
	const char *path = path_of(name);

	build(&b, s);
	write_bytes(path, b.p, cut && cut < b.len ? cut : b.len);
	free(b.p);
	return path;
}

static struct dicom_file *load_ok(const char *path)
{
	struct error err = ERROR_INIT;
	struct dicom_file *f = NULL;

	if (dicom_load(&f, path, &err) != 0)
		fail_msg("dicom_load(%s): %s", path, err.msg);
	assert_non_null(f);
	return f;
}

static void assert_string_attr(struct dicom_file *f, uint32_t tag,
			       const char *want)
{
	char *v = NULL;

	assert_int_equal(dicom_get_string(f, tag, &v), 1);
	assert_non_null(v);
	assert_string_equal(v, want);
	free(v);
}

/* ---- fixtures ---- */

static int setup(void **state)
{
	const char *base = getenv("DICOMSORT_TEST_TMP");
	struct error err = ERROR_INIT;

	(void)state;
	if (base == NULL || *base == '\0')
		base = "/tmp";
	mkdir(base, 0755);
	snprintf(dir, sizeof(dir), "%s/test_dicom.XXXXXX", base);
	if (mkdtemp(dir) == NULL)
		return -1;
	return dicom_init(&err);
}

static int teardown(void **state)
{
	char cmd[PATH_MAX + 16];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static const struct spec standard = {
	.part10 = 1, .implicit = 0, .charset = NULL, .patient_name = NULL,
	.with_uids = 1, .pixels = PIXELS,
};

/* ---- loading ---- */

/* A value the fast path cannot give (Latin-1, not plain ASCII) has DCMTK
 * parse the in-memory bytes; they must stay what dicom_file_bytes()
 * gives: a caller copying the file unchanged copies the bytes parsed,
 * never the source's again (issue 12 item 3). */
static void bytes_stay_after_dcmtk_parses_them(void **state)
{
	struct spec s = standard;
	struct buf b = { 0 };
	struct dicom_bytes *bytes = NULL;
	struct dicom_file *f = NULL;
	struct error err = ERROR_INIT;
	const unsigned char *mem;
	unsigned char *dst;
	size_t len = 0;

	(void)state;
	s.charset = "ISO_IR 100";
	s.patient_name = "M\xfcller^J\xfcrgen";
	build(&b, &s);
	dst = dicom_bytes_new(&bytes, b.len);
	assert_non_null(dst);
	memcpy(dst, b.p, b.len);
	if (dicom_load_bytes(&f, bytes, &err) != 0)
		fail_msg("dicom_load_bytes: %s", err.msg);
	assert_string_attr(f, TAG_PatientName, "M\xc3\xbcller^J\xc3\xbcrgen");
	mem = dicom_file_bytes(f, &len);
	assert_non_null(mem);
	assert_int_equal(len, b.len);
	assert_memory_equal(mem, b.p, b.len);
	assert_true(dicom_bytes_reusable(f));
	dicom_free(f);
	dicom_bytes_free(bytes);
	free(b.p);
}

static void loads_part10_with_preamble(void **state)
{
	struct dicom_file *f;

	(void)state;
	f = load_ok(make("part10.dcm", &standard, 0));
	assert_string_equal(dicom_transfer_syntax(f), EXPLICIT_LE);
	assert_string_attr(f, TAG_SOPInstanceUID, SOP_UID);
	assert_string_attr(f, TAG_PatientName, "Doe^John");
	assert_string_attr(f, TAG_SeriesNumber, "3");
	dicom_free(f);
}

static void loads_bare_dataset_without_preamble(void **state)
{
	struct spec s = standard;
	struct dicom_file *f;

	(void)state;
	s.part10 = 0;
	s.implicit = 1;
	f = load_ok(make("bare_implicit", &s, 0));
	assert_string_equal(dicom_transfer_syntax(f), IMPLICIT_LE);
	assert_string_attr(f, TAG_PatientID, "PAT0001");
	assert_string_attr(f, TAG_StudyDate, "20240115");
	dicom_free(f);

	s.implicit = 0;
	f = load_ok(make("bare_explicit", &s, 0));
	assert_string_equal(dicom_transfer_syntax(f), EXPLICIT_LE);
	assert_string_attr(f, TAG_SeriesDescription, "Ax 5.0mm");
	dicom_free(f);
}

static void expect_load_error(const char *path, enum error_kind kind,
			      const char *fragment)
{
	struct error err = ERROR_INIT;
	struct dicom_file *f = (struct dicom_file *)0x1;

	assert_int_equal(dicom_load(&f, path, &err), -1);
	assert_int_equal(err.kind, kind);
	if (strstr(err.msg, fragment) == NULL)
		fail_msg("%s: message '%s' lacks '%s'", path, err.msg, fragment);
	assert_null(strchr(err.msg, '\n'));
}

static void bad_input_is_an_error_value(void **state)
{
	static const char text[] = "PatientID: 1234\nthis is plain text, no DICOM\n";
	struct spec s = standard;
	struct buf b = { 0 };

	(void)state;
	write_bytes(path_of("empty"), "", 0);
	expect_load_error(path_of("empty"), ERROR_INPUT, "empty file");

	write_bytes(path_of("text"), text, sizeof(text) - 1);
	expect_load_error(path_of("text"), ERROR_INPUT, "not a DICOM file");
	write_bytes(path_of("word"), "junk", 4);
	expect_load_error(path_of("word"), ERROR_INPUT, "not a DICOM file");

	/* Parses, but is no DICOM object: no SOP Class/Instance UID. */
	s.part10 = 0;
	s.with_uids = 0;
	s.pixels = 0;
	expect_load_error(make("no_uids", &s, 0), ERROR_INPUT,
			  "no SOPClassUID/SOPInstanceUID");

	expect_load_error(path_of("does-not-exist"), ERROR_TRANSIENT, "cannot read");

	/* Cut inside the meta header, the header of the dataset, and at several
	 * points of the pixel data (lazily loaded, so only the length check
	 * sees it). */
	build(&b, &standard);
	expect_load_error(make("cut_preamble", &standard, 100), ERROR_INPUT,
			  "truncated");
	expect_load_error(make("cut_meta", &standard, 150), ERROR_INPUT,
			  "truncated");
	expect_load_error(make("cut_header", &standard, 400), ERROR_INPUT,
			  "truncated");
	expect_load_error(make("cut_pixels_start", &standard, b.len - PIXELS + 2),
			  ERROR_INPUT, "truncated");
	expect_load_error(make("cut_pixels_mid", &standard, b.len - PIXELS / 2),
			  ERROR_INPUT, "truncated");
	expect_load_error(make("cut_pixels_end", &standard, b.len - 1),
			  ERROR_INPUT, "truncated");
	free(b.p);
}

/* ---- strings ---- */

static void strings_are_utf8(void **state)
{
	struct spec s = standard;
	struct dicom_file *f;
	char *v = NULL;

	(void)state;
	/* ISO_IR 100: "Müller^Jürgen" in Latin-1. */
	s.charset = "ISO_IR 100";
	s.patient_name = "M\xfcller^J\xfcrgen";
	f = load_ok(make("latin1.dcm", &s, 0));
	assert_string_attr(f, TAG_PatientName, "M\xc3\xbcller^J\xc3\xbcrgen");
	assert_int_equal(dicom_get_raw(f, TAG_PatientName, &v), 1);
	assert_string_equal(v, "M\xfcller^J\xfcrgen");
	free(v);
	dicom_free(f);

	/* PS3.5 H.3.1: Yamada^Tarou=山田^太郎=やまだ^たろう in ISO 2022 IR 87,
	 * where every byte is 7-bit (the ESC sequences switch sets). */
	s.charset = "\\ISO 2022 IR 87";
	s.patient_name = "Yamada^Tarou="
		"\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B="
		"\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";
	f = load_ok(make("japanese.dcm", &s, 0));
	assert_string_attr(f, TAG_PatientName, "Yamada^Tarou=山田^太郎=やまだ^たろう");
	dicom_free(f);

	/* ISO_IR 192 is already UTF-8. */
	s.charset = "ISO_IR 192";
	s.patient_name = "\xc3\x98re^Zo\xc3\xab";
	f = load_ok(make("utf8.dcm", &s, 0));
	assert_string_attr(f, TAG_PatientName, "Øre^Zoë");
	dicom_free(f);

	/* Multiple values joined by '\', padding removed; absent is 0. */
	f = load_ok(make("plain.dcm", &standard, 0));
	assert_string_attr(f, DCM_TAG(0x0028, 0x0030), "0.5\\0.25");
	assert_int_equal(dicom_get_string(f, DCM_TAG(0x0008, 0x0080), &v), 0);
	assert_null(v);
	dicom_free(f);
}

static void convert_to_utf8_rewrites_values(void **state)
{
	struct spec s = standard;
	struct error err = ERROR_INIT;
	struct dicom_file *f;
	char *v = NULL;

	(void)state;
	s.charset = "ISO_IR 100";
	s.patient_name = "Ren\xe9^Fran\xe7ois";
	f = load_ok(make("convert.dcm", &s, 0));
	assert_int_equal(dicom_convert_to_utf8(f, &err), 0);
	assert_string_attr(f, TAG_SpecificCharacterSet, "ISO_IR 192");
	assert_int_equal(dicom_get_raw(f, TAG_PatientName, &v), 1);
	assert_string_equal(v, "René^François");
	free(v);
	dicom_free(f);
}

/* ---- changing ---- */

static void put_empty_delete(void **state)
{
	struct error err = ERROR_INIT;
	struct dicom_file *f;
	char *v = NULL;

	(void)state;
	f = load_ok(make("change.dcm", &standard, 0));
	assert_int_equal(dicom_put_string(f, TAG_PatientID, "NEW-ID", &err), 0);
	assert_string_attr(f, TAG_PatientID, "NEW-ID");
	/* Inserted when absent. */
	assert_int_equal(dicom_put_string(f, DCM_TAG(0x0008, 0x0080), "Hospital",
					  &err), 0);
	assert_string_attr(f, DCM_TAG(0x0008, 0x0080), "Hospital");

	assert_int_equal(dicom_empty(f, TAG_PatientBirthDate, &err), 0);
	assert_int_equal(dicom_get_string(f, TAG_PatientBirthDate, &v), 1);
	assert_string_equal(v, "");
	free(v);
	/* Emptying or deleting what is not there is fine. */
	assert_int_equal(dicom_empty(f, DCM_TAG(0x0010, 0x1000), &err), 0);
	assert_int_equal(dicom_delete(f, DCM_TAG(0x0010, 0x1000), &err), 0);

	assert_int_equal(dicom_delete(f, TAG_PatientName, &err), 0);
	assert_int_equal(dicom_get_string(f, TAG_PatientName, &v), 0);
	assert_null(v);
	dicom_free(f);
}

static void keywords_and_tags(void **state)
{
	uint32_t tag = 0;
	char kw[64];

	(void)state;
	assert_int_equal(dicom_tag_from_keyword("SeriesDescription", &tag), 0);
	assert_int_equal(tag, TAG_SeriesDescription);
	assert_int_equal(dicom_tag_from_keyword("NoSuchKeyword", &tag), -1);
	dicom_keyword_from_tag(TAG_PatientID, kw, sizeof(kw));
	assert_string_equal(kw, "PatientID");
	dicom_keyword_from_tag(DCM_TAG(0x0009, 0x1001), kw, sizeof(kw));
	assert_string_equal(kw, "");
}

/* pipeline_result_set_study(): the values the study manifests take from
 * a stored file (pipeline's result and the daemon's recovery alike):
 * "" when absent, whatever the field held, and cut to fit. */
static void result_study_values_as_stored(void **state)
{
	struct error err = ERROR_INIT;
	struct pipeline_result *res = malloc(sizeof(*res));
	struct dicom_file *f;
	char longer[301];

	(void)state;
	assert_non_null(res);
	memset(res, 'x', sizeof(*res));
	f = load_ok(make("study.dcm", &standard, 0));
	pipeline_result_set_study(res, f);
	assert_string_equal(res->study_uid, "");
	assert_string_equal(res->series_uid, "");
	assert_string_equal(res->series_number, "3");
	assert_string_equal(res->series_description, "Ax 5.0mm");

	memset(longer, 'D', sizeof(longer) - 1);
	longer[sizeof(longer) - 1] = '\0';
	assert_int_equal(dicom_put_string(f, TAG_SeriesDescription, longer,
					  &err), 0);
	assert_int_equal(dicom_put_string(f, TAG_StudyInstanceUID, "1.2.3.4",
					  &err), 0);
	assert_int_equal(dicom_delete(f, TAG_SeriesNumber, &err), 0);
	pipeline_result_set_study(res, f);
	assert_string_equal(res->study_uid, "1.2.3.4");
	assert_string_equal(res->series_number, "");
	assert_int_equal(strlen(res->series_description),
			 sizeof(res->series_description) - 1);
	assert_memory_equal(res->series_description, longer,
			    sizeof(res->series_description) - 1);
	dicom_free(f);
	free(res);
}

/* ---- visiting ---- */
/* ---- visiting ---- */

struct seen {
	int count;
	int max_depth;
	int private_with_creator;
	int code_value_depth;
	int nested_private_depth;
	int meta;
	int remove_private;
	int pixel_data;
};

static enum dicom_visit_action visitor(void *ctx, struct dicom_elem *e)
{
	struct seen *s = ctx;
	uint32_t tag = dicom_elem_tag(e);
	char *v = NULL;

	s->count++;
	if (dicom_elem_depth(e) > s->max_depth)
		s->max_depth = dicom_elem_depth(e);
	if (DCM_GROUP(tag) == 0x0002)
		s->meta++;
	if (tag == TAG_PixelData)
		s->pixel_data++;
	if (tag == DCM_TAG(0x0008, 0x0100)) {
		s->code_value_depth = dicom_elem_depth(e);
		assert_string_equal(dicom_elem_vr(e), "SH");
		assert_int_equal(dicom_elem_get_string(e, &v), 1);
		assert_string_equal(v, "P1");
		free(v);
	}
	if (DCM_GROUP(tag) == 0x0009 && DCM_ELEMENT(tag) >= 0x1000) {
		if (strcmp(dicom_elem_private_creator(e), CREATOR) == 0)
			s->private_with_creator++;
		if (tag == DCM_TAG(0x0009, 0x1001) && dicom_elem_depth(e) == 1)
			s->nested_private_depth = 1;
	}
	if (s->remove_private && (DCM_GROUP(tag) & 1))
		return DCM_VISIT_REMOVE;
	return DCM_VISIT_KEEP;
}

static void visit_recurses_into_sequences_and_private(void **state)
{
	struct error err = ERROR_INIT;
	struct seen seen = { 0 };
	struct dicom_file *f;

	(void)state;
	f = load_ok(make("visit.dcm", &standard, 0));
	assert_int_equal(dicom_visit(f, visitor, &seen, &err), 0);
	assert_int_equal(seen.meta, 0);
	assert_int_equal(seen.max_depth, 2);
	assert_int_equal(seen.code_value_depth, 2);
	assert_int_equal(seen.nested_private_depth, 1);
	/* 0009,1001 and 0009,1002 at top, 0009,1001 in the item. */
	assert_int_equal(seen.private_with_creator, 3);
	assert_int_equal(seen.pixel_data, 1);

	/* Removing every private element, at every level. */
	memset(&seen, 0, sizeof(seen));
	seen.remove_private = 1;
	assert_int_equal(dicom_visit(f, visitor, &seen, &err), 0);
	memset(&seen, 0, sizeof(seen));
	assert_int_equal(dicom_visit(f, visitor, &seen, &err), 0);
	assert_int_equal(seen.private_with_creator, 0);
	assert_int_equal(seen.code_value_depth, 2);
	dicom_free(f);
}

/* Reads CodeMeaning (at depth 2) into ctx, a char * left to the caller. */
static enum dicom_visit_action get_meaning(void *ctx, struct dicom_elem *e)
{
	if (dicom_elem_tag(e) == DCM_TAG(0x0008, 0x0104))
		assert_int_equal(dicom_elem_get_string(e, (char **)ctx), 1);
	return DCM_VISIT_KEEP;
}

static enum dicom_visit_action put_deep(void *ctx, struct dicom_elem *e)
{
	struct error err = ERROR_INIT;

	(void)ctx;
	if (dicom_elem_tag(e) == DCM_TAG(0x0008, 0x0104))
		assert_int_equal(dicom_elem_put_string(e, "Changed", &err), 0);
	if (dicom_elem_tag(e) == DCM_TAG(0x0009, 0x1002))
		assert_int_equal(dicom_elem_empty(e, &err), 0);
	return DCM_VISIT_KEEP;
}

/* ---- saving ---- */

static struct dicom_file *save_and_reload(struct dicom_file *f, const char *name)
{
	struct error err = ERROR_INIT;
	const char *path = path_of(name);
	char saved[PATH_MAX + 64];
	int fd;

	snprintf(saved, sizeof(saved), "%s", path);
	fd = open(saved, O_RDWR | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	if (dicom_save_fd(f, fd, &err) != 0)
		fail_msg("dicom_save_fd: %s", err.msg);
	close(fd);
	return load_ok(saved);
}

static void read_file(const char *path, unsigned char **data, size_t *len)
{
	struct stat st;
	int fd = open(path, O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	*len = (size_t)st.st_size;
	*data = malloc(*len + 1);
	assert_non_null(*data);
	assert_int_equal(read(fd, *data, *len), (ssize_t)*len);
	close(fd);
}

/* The pixel bytes of a file we built are its last PIXELS bytes. */
static void assert_same_pixels(const char *a, const char *b)
{
	unsigned char *da, *db;
	size_t la, lb;

	read_file(a, &da, &la);
	read_file(b, &db, &lb);
	assert_true(la >= PIXELS && lb >= PIXELS);
	assert_memory_equal(da + la - PIXELS, db + lb - PIXELS, PIXELS);
	free(da);
	free(db);
}

static void save_keeps_transfer_syntax_and_values(void **state)
{
	struct spec s = standard;
	struct error err = ERROR_INIT;
	struct seen seen = { 0 };
	struct dicom_file *f, *g;
	unsigned char *data;
	size_t len;
	char *v = NULL;

	(void)state;
	for (int implicit = 0; implicit <= 1; implicit++) {
		for (int part10 = 0; part10 <= 1; part10++) {
			char in[64], out[64];

			s.implicit = implicit;
			s.part10 = part10;
			s.charset = "ISO_IR 100";
			s.patient_name = "M\xfcller^J\xfcrgen";
			snprintf(in, sizeof(in), "save_in_%d_%d", implicit, part10);
			snprintf(out, sizeof(out), "save_out_%d_%d", implicit, part10);
			f = load_ok(make(in, &s, 0));
			assert_int_equal(dicom_put_string(f, TAG_PatientID, "SAVED", &err), 0);
			assert_int_equal(dicom_visit(f, put_deep, NULL, &err), 0);
			g = save_and_reload(f, out);
			assert_string_equal(dicom_transfer_syntax(g),
					    implicit ? IMPLICIT_LE : EXPLICIT_LE);
			assert_string_attr(g, TAG_PatientID, "SAVED");
			assert_string_attr(g, TAG_PatientName, "Müller^Jürgen");
			assert_int_equal(dicom_get_raw(g, TAG_PatientName, &v), 1);
			assert_string_equal(v, "M\xfcller^J\xfcrgen");
			free(v);
			assert_string_attr(g, TAG_SOPInstanceUID, SOP_UID);
			assert_int_equal(dicom_visit(g, get_meaning, &v, &err), 0);
			assert_string_equal(v, "Changed");
			free(v);
			memset(&seen, 0, sizeof(seen));
			assert_int_equal(dicom_visit(g, visitor, &seen, &err), 0);
			assert_int_equal(seen.max_depth, 2);
			/* The emptied private sequence is still there, without items. */
			assert_int_equal(seen.private_with_creator, 2);
			assert_int_equal(seen.pixel_data, 1);
			/* Always a Part 10 file, pixel data byte-identical. */
			read_file(path_of(out), &data, &len);
			assert_memory_equal(data + 128, "DICM", 4);
			free(data);
			{
				char a[PATH_MAX + 64];

				snprintf(a, sizeof(a), "%s", path_of(in));
				assert_same_pixels(a, path_of(out));
			}
			dicom_free(g);
			dicom_free(f);
		}
	}
}

static void load_all_reads_lazy_values(void **state)
{
	struct error err = ERROR_INIT;
	struct dicom_file *f;

	(void)state;
	f = load_ok(make("lazy.dcm", &standard, 0));
	assert_int_equal(dicom_load_all(f, &err), 0);
	dicom_free(f);
}

static void save_to_bad_descriptor_fails_transient(void **state)
{
	struct error err = ERROR_INIT;
	struct dicom_file *f;
	int fd;

	(void)state;
	f = load_ok(make("badfd.dcm", &standard, 0));
	fd = open(path_of("badfd.dcm"), O_RDONLY);	/* not writable */
	assert_true(fd >= 0);
	assert_int_equal(dicom_save_fd(f, fd, &err), -1);
	assert_int_equal(err.kind, ERROR_TRANSIENT);
	close(fd);
	dicom_free(f);
}

/* ---- reading only the head (dicom_load_fd_head(), --move) ---- */

/* Pixel data well past the head. */
#define HEAD_PIXELS (3 * DICOM_HEAD_BYTES)

static const struct spec headed = {
	.part10 = 1, .with_uids = 1, .pixels = HEAD_PIXELS,
};

static int load_head(struct dicom_file **f, const char *path, int *fd,
		     struct error *err)
{
	struct stat st;

	*fd = open(path, O_RDONLY);
	assert_true(*fd >= 0);
	assert_int_equal(fstat(*fd, &st), 0);
	return dicom_load_fd_head(f, *fd, (long long)st.st_size, path, err);
}

static void head_load_reads_only_the_head(void **state)
{
	struct error err = ERROR_INIT;
	struct dicom_file *f = NULL;
	size_t len = 0;
	int fd;

	(void)state;
	for (int implicit = 0; implicit <= 1; implicit++) {
		struct spec s = headed;

		s.implicit = implicit;
		if (load_head(&f, make("head.dcm", &s, 0), &fd, &err) != 0)
			fail_msg("dicom_load_fd_head: %s", err.msg);
		assert_false(dicom_parsed(f));
		assert_null(dicom_file_bytes(f, &len));
		assert_non_null(dicom_file_head(f, &len));
		assert_int_equal(len, DICOM_HEAD_BYTES);
		assert_string_attr(f, TAG_SOPInstanceUID, SOP_UID);
		assert_string_attr(f, TAG_SeriesNumber, "3");
		assert_string_attr(f, TAG_PatientID, "PAT0001");
		assert_true(dicom_bytes_reusable(f));
		assert_null(dicom_file_bytes(f, &len));	/* still */
		assert_false(dicom_parsed(f));
		dicom_free(f);
		close(fd);
	}
}

/* A change is written from every byte of the file: the rest is read
 * then, the value spliced into it. */
static void head_load_reads_the_rest_to_save(void **state)
{
	struct error err = ERROR_INIT;
	struct dicom_file *f = NULL, *g;
	char in[PATH_MAX + 64];
	size_t len = 0;
	int fd;

	(void)state;
	snprintf(in, sizeof(in), "%s", make("head_save.dcm", &headed, 0));
	if (load_head(&f, in, &fd, &err) != 0)
		fail_msg("dicom_load_fd_head: %s", err.msg);
	assert_int_equal(dicom_put_string(f, TAG_PatientID, "SAVED", &err), 0);
	g = save_and_reload(f, "head_saved.dcm");
	assert_false(dicom_parsed(f));	/* spliced, not re-encoded */
	assert_non_null(dicom_file_bytes(f, &len));
	assert_string_attr(g, TAG_PatientID, "SAVED");
	assert_string_attr(g, TAG_SOPInstanceUID, SOP_UID);
	assert_same_pixels(in, path_of("head_saved.dcm"));
	{
		struct stat a, b;

		assert_int_equal(stat(in, &a), 0);
		assert_int_equal(stat(path_of("head_saved.dcm"), &b), 0);
		assert_int_equal(b.st_size, a.st_size - 2);	/* PAT0001 */
	}
	dicom_free(g);
	dicom_free(f);
	close(fd);
}

/* A value past the head is read when asked for - the bytes up to its
 * end, not the pixel data - without DCMTK; so are SOP UIDs past it. */
static void head_load_reads_a_value_past_the_head(void **state)
{
	struct spec s = headed;
	struct error err = ERROR_INIT;
	struct dicom_file *f = NULL;
	size_t len = 0, head = 0;
	int fd;

	(void)state;
	s.filler = DICOM_HEAD_BYTES + 100;
	if (load_head(&f, make("head_late.dcm", &s, 0), &fd, &err) != 0)
		fail_msg("dicom_load_fd_head: %s", err.msg);
	assert_null(dicom_file_bytes(f, &len));
	assert_non_null(dicom_file_head(f, &head));
	assert_int_equal(head, DICOM_HEAD_BYTES);
	assert_string_attr(f, TAG_SeriesNumber, "3");
	assert_null(dicom_file_bytes(f, &len));
	assert_non_null(dicom_file_head(f, &head));
	assert_true(head > (size_t)s.filler && head < (size_t)s.filler + 1000);
	assert_false(dicom_parsed(f));
	dicom_free(f);
	close(fd);

	/* The SOP UIDs after the filler: vouched for all the same. */
	s.filler = 0;
	s.charset = "ISO_IR 6";
	s.patient_name = NULL;
	s.late_uids = DICOM_HEAD_BYTES;
	if (load_head(&f, make("head_late_uids.dcm", &s, 0), &fd, &err) != 0)
		fail_msg("dicom_load_fd_head: %s", err.msg);
	assert_false(dicom_parsed(f));
	assert_null(dicom_file_bytes(f, &len));
	assert_string_attr(f, TAG_SOPInstanceUID, SOP_UID);
	dicom_free(f);
	close(fd);
}

/* A head that reads differently when the rest is read was another
 * version of the file: nothing is written from it. */
static void head_load_sees_a_changed_head(void **state)
{
	struct error err = ERROR_INIT;
	struct dicom_file *f = NULL;
	const char *path = make("head_changed.dcm", &headed, 0);
	int fd, out, w;

	(void)state;
	if (load_head(&f, path, &fd, &err) != 0)
		fail_msg("dicom_load_fd_head: %s", err.msg);
	w = open(path, O_WRONLY);
	assert_true(w >= 0);
	assert_int_equal(pwrite(w, "X", 1, 0), 1);	/* the preamble */
	close(w);
	assert_int_equal(dicom_put_string(f, TAG_PatientID, "SAVED", &err), 0);
	out = open(path_of("head_changed_out.dcm"), O_RDWR | O_CREAT | O_TRUNC,
		   0644);
	assert_true(out >= 0);
	assert_int_equal(dicom_save_fd(f, out, &err), -1);
	assert_int_equal(err.kind, ERROR_TRANSIENT);
	assert_non_null(strstr(err.msg, "changed"));
	close(out);
	dicom_free(f);
	close(fd);
}

/* Cut inside its pixel data, a byte short, bytes after its end, an
 * element after the pixel data running past the end: each refused with
 * the reason reading the whole file gives. */
static void head_load_refuses_as_the_whole_file_does(void **state)
{
	struct buf b = { 0 };
	static const unsigned char tail[] = {
		0xfc, 0xff, 0xfc, 0xff, 'O', 'B', 0, 0, 0, 0x10, 0, 0, 0, 0,
	};

	(void)state;
	build(&b, &headed);
	put(&b, tail, sizeof(tail));
	{
		size_t whole = b.len - sizeof(tail);
		size_t lens[] = { DICOM_HEAD_BYTES + 2, whole - HEAD_PIXELS / 2,
				  whole - 1, whole + 3, b.len };

		for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
			struct error e1 = ERROR_INIT, e2 = ERROR_INIT;
			struct dicom_file *f = NULL, *g = NULL;
			const char *path = path_of("head_cut.dcm");
			struct stat st;
			int fd, rc1, rc2;

			write_bytes(path, b.p, lens[i]);
			rc1 = load_head(&f, path, &fd, &e1);
			assert_int_equal(fstat(fd, &st), 0);
			rc2 = dicom_load_fd(&g, fd, (long long)st.st_size, path, &e2);
			assert_int_equal(rc1, -1);
			assert_int_equal(rc2, -1);
			assert_int_equal(e1.kind, ERROR_INPUT);
			assert_int_equal(e1.kind, e2.kind);
			assert_string_equal(e1.msg, e2.msg);
			close(fd);
		}
	}
	free(b.p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(loads_part10_with_preamble),
		cmocka_unit_test(loads_bare_dataset_without_preamble),
		cmocka_unit_test(bad_input_is_an_error_value),
		cmocka_unit_test(bytes_stay_after_dcmtk_parses_them),
		cmocka_unit_test(strings_are_utf8),
		cmocka_unit_test(convert_to_utf8_rewrites_values),
		cmocka_unit_test(put_empty_delete),
		cmocka_unit_test(keywords_and_tags),
		cmocka_unit_test(result_study_values_as_stored),
		cmocka_unit_test(visit_recurses_into_sequences_and_private),
		cmocka_unit_test(save_keeps_transfer_syntax_and_values),
		cmocka_unit_test(load_all_reads_lazy_values),
		cmocka_unit_test(save_to_bad_descriptor_fails_transient),
		cmocka_unit_test(head_load_reads_only_the_head),
		cmocka_unit_test(head_load_reads_the_rest_to_save),
		cmocka_unit_test(head_load_reads_a_value_past_the_head),
		cmocka_unit_test(head_load_sees_a_changed_head),
		cmocka_unit_test(head_load_refuses_as_the_whole_file_does),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
