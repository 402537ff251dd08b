/* test_part10.c - the byte layer (part10.h): the fast path's index and
 * splicing writer, and the element walker under them, on files built byte
 * by byte: what it vouches for, what it leaves to DCMTK,
 * and that a spliced file is the original with only the edited value
 * changed. Files go below $DICOMSORT_TEST_TMP (or /tmp). */
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
#include <zlib.h>

#include "dicomsort/dicom.h"
#include "part10.h"	/* private to src/ */

#define EXPLICIT_LE "1.2.840.10008.1.2.1"
#define CT_STORAGE "1.2.840.10008.5.1.4.1.1.2"
#define SOP_UID "1.2.3.4"

struct buf {
	unsigned char p[4096];
	size_t len;
};

static void put(struct buf *b, const void *data, size_t len)
{
	assert_true(b->len + len <= sizeof(b->p));
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
	u16(b, v & 0xffff);
	u16(b, v >> 16);
}

/* A tag and a 32-bit length: an implicit VR element's header, or an item
 * or a delimiter (group FFFE). */
static void tag_len(struct buf *b, uint16_t g, uint16_t e, uint32_t len)
{
	u16(b, g);
	u16(b, e);
	u32(b, len);
}

/* An explicit VR header of the long form (OB, SQ, UN...): tag, VR, two
 * reserved bytes, a 32-bit length (0xffffffff: undefined). */
static void long_head(struct buf *b, uint16_t g, uint16_t e, const char *vr,
		      uint32_t len)
{
	u16(b, g);
	u16(b, e);
	put(b, vr, 2);
	u16(b, 0);
	u32(b, len);
}

/* An explicit VR element with a short header; value padded to even. */
static void elem(struct buf *b, uint16_t g, uint16_t e, const char *vr,
		 const char *value)
{
	size_t len = strlen(value);

	u16(b, g);
	u16(b, e);
	put(b, vr, 2);
	u16(b, (uint16_t)(len + (len & 1)));
	put(b, value, len);
	if (len & 1)
		put(b, strcmp(vr, "UI") == 0 ? "\0" : " ", 1);
}

static void preamble_and_meta(struct buf *b, bool group_length, uint32_t wrong)
{
	struct buf meta = { .len = 0 };

	memset(b->p, 0, 128);
	b->len = 128;
	put(b, "DICM", 4);
	elem(&meta, 0x0002, 0x0002, "UI", CT_STORAGE);
	elem(&meta, 0x0002, 0x0003, "UI", SOP_UID);
	elem(&meta, 0x0002, 0x0010, "UI", EXPLICIT_LE);
	if (group_length) {
		u16(b, 0x0002);
		u16(b, 0x0000);
		put(b, "UL", 2);
		u16(b, 4);
		u32(b, wrong ? wrong : (uint32_t)meta.len);
	}
	put(b, meta.p, meta.len);
}

/* A small CT object: SOP UIDs, a sequence of undefined length holding an
 * item of undefined length, the patient, and encapsulated pixel data. */
static void dataset(struct buf *b)
{
	elem(b, 0x0008, 0x0016, "UI", CT_STORAGE);
	elem(b, 0x0008, 0x0018, "UI", SOP_UID);
	long_head(b, 0x0008, 0x1140, "SQ", 0xffffffff);
	tag_len(b, 0xfffe, 0xe000, 0xffffffff);
	elem(b, 0x0008, 0x1155, "UI", "9.8.7");
	tag_len(b, 0xfffe, 0xe00d, 0);
	tag_len(b, 0xfffe, 0xe0dd, 0);
	elem(b, 0x0010, 0x0010, "PN", "Doe^Jane");
	elem(b, 0x0010, 0x0020, "LO", "PAT001");
	elem(b, 0x0010, 0x0030, "DA", "19700101");
	long_head(b, 0x7fe0, 0x0010, "OB", 0xffffffff);
	tag_len(b, 0xfffe, 0xe000, 0);		/* basic offset table, empty */
	tag_len(b, 0xfffe, 0xe000, 4);		/* one fragment */
	put(b, "\1\2\3\4", 4);
	tag_len(b, 0xfffe, 0xe0dd, 0);
}

static bool never_sequence(uint32_t tag)
{
	(void)tag;
	return false;
}

static int index_of(struct buf *b, struct part10 *p)
{
	if (part10_open(p, b->p, b->len) == -1)
		return -1;
	return part10_index(p, false, never_sequence);
}

static void indexes_a_plain_file(void **state)
{
	struct buf b;
	struct part10 p;
	const struct part10_elem *e;

	(void)state;
	preamble_and_meta(&b, true, 0);
	dataset(&b);
	assert_int_equal(index_of(&b, &p), 0);
	assert_string_equal(p.syntax, EXPLICIT_LE);
	assert_string_equal(p.media_class, CT_STORAGE);
	assert_string_equal(p.media_instance, SOP_UID);
	assert_int_equal(p.count, 7);	/* nested elements are not indexed */
	e = part10_find(&p, TAG_PatientID);
	assert_non_null(e);
	assert_int_equal(e->len, 6);
	assert_memory_equal(b.p + e->value, "PAT001", 6);
	assert_string_equal(e->vr, "LO");
	assert_true(part10_find(&p, TAG_PixelData)->undefined_length);
	assert_null(part10_find(&p, TAG_StudyDate));
	assert_false(p.group_lengths);
	part10_free(&p);
}

static void leaves_the_rest_to_dcmtk(void **state)
{
	struct buf b, cut;
	struct part10 p;

	(void)state;
	/* A meta group length that disagrees with the meta header. */
	preamble_and_meta(&b, true, 10);
	dataset(&b);
	assert_int_equal(index_of(&b, &p), -1);
	part10_free(&p);
	/* Cut anywhere inside an element: never vouched for. (Cut between
	 * two top-level elements, a file is a shorter whole one, to DCMTK
	 * too.) */
	preamble_and_meta(&b, false, 0);
	dataset(&b);
	struct part10 whole;
	assert_int_equal(index_of(&b, &whole), 0);
	for (size_t len = b.len - 1; len > whole.dataset; len--) {
		bool boundary = false;

		for (size_t i = 0; i < whole.count; i++)
			boundary |= whole.top[i].head == len;
		memcpy(&cut, &b, sizeof(b));
		cut.len = len;
		assert_int_equal(index_of(&cut, &p), boundary ? 0 : -1);
		part10_free(&p);
	}
	part10_free(&whole);
	/* Trailing bytes after the last element. */
	put(&b, "\0\0", 2);
	assert_int_equal(index_of(&b, &p), -1);
	part10_free(&p);
	/* Top-level tags out of order. */
	preamble_and_meta(&b, false, 0);
	elem(&b, 0x0010, 0x0020, "LO", "PAT001");
	elem(&b, 0x0008, 0x0018, "UI", SOP_UID);
	assert_int_equal(index_of(&b, &p), -1);
	part10_free(&p);
	/* No preamble. */
	preamble_and_meta(&b, false, 0);
	memcpy(b.p + 128, "DICX", 4);
	assert_int_equal(part10_open(&p, b.p, b.len), -1);
	/* A VR that is not one. */
	preamble_and_meta(&b, false, 0);
	elem(&b, 0x0008, 0x0018, "ZZ", SOP_UID);
	assert_int_equal(index_of(&b, &p), -1);
	part10_free(&p);
}

static void overlong_media_uid_matches_nothing(void **state)
{
	struct buf b;
	struct part10 p;
	char uid[71];

	(void)state;
	/* 70 characters: cut to 64 it could equal another object's UID. */
	memset(uid, '7', 70);
	uid[0] = '1';
	uid[1] = '.';
	uid[70] = '\0';
	memset(b.p, 0, 128);
	b.len = 128;
	put(&b, "DICM", 4);
	elem(&b, 0x0002, 0x0002, "UI", CT_STORAGE);
	elem(&b, 0x0002, 0x0003, "UI", uid);
	elem(&b, 0x0002, 0x0010, "UI", EXPLICIT_LE);
	assert_int_equal(part10_open(&p, b.p, b.len), 0);
	assert_string_equal(p.media_instance, "");
	assert_string_equal(p.media_class, CT_STORAGE);
	part10_free(&p);
}

static void notes_group_lengths(void **state)
{
	struct buf b;
	struct part10 p;

	(void)state;
	preamble_and_meta(&b, false, 0);
	u16(&b, 0x0008);
	u16(&b, 0x0000);
	put(&b, "UL", 2);
	u16(&b, 4);
	u32(&b, 0);
	dataset(&b);
	assert_int_equal(index_of(&b, &p), 0);
	assert_true(p.group_lengths);
	part10_free(&p);
}

static void splices_an_edit(void **state)
{
	char path[PATH_MAX];
	const char *tmp = getenv("DICOMSORT_TEST_TMP");
	struct buf b, want;
	struct part10 p;
	struct error err = ERROR_INIT;
	struct part10_edit edits[2];
	unsigned char got[4096];
	int fd;
	ssize_t n;

	(void)state;
	preamble_and_meta(&b, false, 0);
	dataset(&b);
	assert_int_equal(index_of(&b, &p), 0);
	edits[0] = (struct part10_edit){ part10_find(&p, TAG_PatientName),
					 "ANONYMIZED", 10 };
	edits[1] = (struct part10_edit){ part10_find(&p, TAG_PatientBirthDate),
					 "", 0 };
	snprintf(path, sizeof(path), "%s/part10-splice.dcm", tmp ? tmp : "/tmp");
	mkdir(tmp ? tmp : "/tmp", 0700);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(fd != -1);
	assert_int_equal(part10_write(&p, edits, 2, fd, &err), 0);
	n = pread(fd, got, sizeof(got), 0);
	close(fd);
	unlink(path);
	/* The same file built with the new values. */
	preamble_and_meta(&want, false, 0);
	{
		struct buf ds = { .len = 0 };

		dataset(&ds);
		/* dataset() with the two values replaced, built again. */
		size_t name = (size_t)(part10_find(&p, TAG_PatientName)->head - p.dataset);
		put(&want, ds.p, name);
		elem(&want, 0x0010, 0x0010, "PN", "ANONYMIZED");
		elem(&want, 0x0010, 0x0020, "LO", "PAT001");
		elem(&want, 0x0010, 0x0030, "DA", "");
		size_t after = part10_find(&p, TAG_PixelData)->head - p.dataset;
		put(&want, ds.p + after, ds.len - after);
	}
	assert_int_equal(n, (ssize_t)want.len);
	assert_memory_equal(got, want.p, want.len);
	part10_free(&p);
}

/* ---- the element walker ---- */

/* What a walk met: enough to compare two walks and to name a node. */
struct met {
	uint32_t tag[256];
	enum part10_node node[256];
	unsigned depth[256];
	uint64_t offset[256];
	size_t count;
};

static int meet(void *ctx, const struct part10_header *h)
{
	struct met *m = ctx;

	assert_true(m->count < 256);
	m->tag[m->count] = h->tag;
	m->node[m->count] = h->node;
	m->depth[m->count] = h->depth;
	m->offset[m->count] = h->offset;
	m->count++;
	return 0;
}

static int walk_mem(const struct buf *b, unsigned how, struct met *m)
{
	struct part10_source src = { .bytes = b->p, .size = b->len };

	memset(m, 0, sizeof(*m));
	return part10_walk(&src, 0, how, NULL, meet, m);
}

static void same_met(const struct met *a, const struct met *b)
{
	assert_int_equal(a->count, b->count);
	for (size_t i = 0; i < a->count; i++) {
		assert_int_equal(a->tag[i], b->tag[i]);
		assert_int_equal(a->node[i], b->node[i]);
		assert_int_equal(a->depth[i], b->depth[i]);
		assert_int_equal(a->offset[i], b->offset[i]);
	}
}

/* dataset()'s bytes, deflated as a deflated transfer syntax writes them. */
static void deflate_into(const struct buf *in, struct buf *out)
{
	z_stream z = { 0 };

	assert_int_equal(deflateInit2(&z, 9, Z_DEFLATED, -MAX_WBITS, 8,
				      Z_DEFAULT_STRATEGY), Z_OK);
	z.next_in = (Bytef *)in->p;
	z.avail_in = (uInt)in->len;
	z.next_out = out->p;
	z.avail_out = sizeof(out->p);
	assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
	out->len = z.total_out;
	deflateEnd(&z);
}

static void walks_each_header_once(void **state)
{
	struct buf ds = { .len = 0 }, z;
	struct met m, inflated;
	static const uint32_t tags[] = {
		TAG_SOPClassUID, TAG_SOPInstanceUID, DCM_TAG(0x0008, 0x1140),
		DCM_TAG(0xfffe, 0xe000), DCM_TAG(0x0008, 0x1155),
		DCM_TAG(0xfffe, 0xe00d), DCM_TAG(0xfffe, 0xe0dd),
		TAG_PatientName, TAG_PatientID, TAG_PatientBirthDate,
		TAG_PixelData, DCM_TAG(0xfffe, 0xe000), DCM_TAG(0xfffe, 0xe000),
		DCM_TAG(0xfffe, 0xe0dd),
	};
	static const enum part10_node nodes[] = {
		PART10_ELEMENT, PART10_ELEMENT, PART10_SEQUENCE, PART10_ITEM,
		PART10_ELEMENT, PART10_ITEM_END, PART10_SEQUENCE_END,
		PART10_ELEMENT, PART10_ELEMENT, PART10_ELEMENT, PART10_FRAGMENTS,
		PART10_FRAGMENT, PART10_FRAGMENT, PART10_SEQUENCE_END,
	};

	(void)state;
	dataset(&ds);
	assert_int_equal(walk_mem(&ds, PART10_STRICT, &m), 0);
	assert_int_equal(m.count, sizeof(tags) / sizeof(tags[0]));
	for (size_t i = 0; i < m.count; i++) {
		assert_int_equal(m.tag[i], tags[i]);
		assert_int_equal(m.node[i], nodes[i]);
	}
	assert_int_equal(m.depth[4], 1);	/* inside the sequence */
	assert_int_equal(m.depth[7], 0);
	/* Deflated: the same headers at the same (inflated) offsets. */
	deflate_into(&ds, &z);
	assert_int_equal(walk_mem(&z, PART10_STRICT | PART10_DEFLATED, &inflated), 0);
	same_met(&m, &inflated);
	/* Cut short: strictly malformed, leniently too (at depth 1). */
	ds.len -= 8;
	assert_int_equal(walk_mem(&ds, PART10_STRICT, &m), PART10_WALK_MALFORMED);
	assert_int_equal(walk_mem(&ds, 0, &m), PART10_WALK_MALFORMED);
}

/* Implicit VR: the dictionary (the generated table) says what is a
 * sequence; big endian: every number swapped. */
static void walks_implicit_and_big_endian(void **state)
{
	struct buf b = { .len = 0 };
	struct met m;
	static const unsigned char big[] = {
		0x00, 0x08, 0x00, 0x60, 'C', 'S', 0x00, 0x02, 'C', 'T',
		0x00, 0x08, 0x11, 0x40, 'S', 'Q', 0, 0, 0x00, 0x00, 0x00, 0x10,
		0xff, 0xfe, 0xe0, 0x00, 0x00, 0x00, 0x00, 0x08,
		0x00, 0x08, 0x11, 0x55, 'U', 'I', 0x00, 0x00,
		0x00, 0x10, 0x00, 0x10, 'P', 'N', 0x00, 0x00,
	};

	(void)state;
	assert_true(part10_dictionary_sequence(DCM_TAG(0x0008, 0x1115)));
	assert_true(part10_dictionary_sequence(DCM_TAG(0x5002, 0x2600)));
	assert_false(part10_dictionary_sequence(DCM_TAG(0x5001, 0x2600)));
	assert_false(part10_dictionary_sequence(TAG_PatientName));
	assert_false(part10_dictionary_sequence(DCM_TAG(0x0029, 0x1010)));
	/* ReferencedSeriesSequence of defined length, an item, a UID. */
	tag_len(&b, 0x0008, 0x1115, 24);
	tag_len(&b, 0xfffe, 0xe000, 16);
	tag_len(&b, 0x0020, 0x000e, 8);
	put(&b, "1.2.3.4", 8);
	tag_len(&b, 0x0010, 0x0010, 0);
	assert_int_equal(walk_mem(&b, PART10_STRICT | PART10_IMPLICIT, &m), 0);
	assert_int_equal(m.count, 4);
	assert_int_equal(m.node[0], PART10_SEQUENCE);
	assert_int_equal(m.node[1], PART10_ITEM);
	assert_int_equal(m.tag[2], TAG_SeriesInstanceUID);
	assert_int_equal(m.depth[2], 1);
	assert_int_equal(m.tag[3], TAG_PatientName);
	assert_int_equal(m.depth[3], 0);

	b.len = 0;
	put(&b, big, sizeof(big));
	assert_int_equal(walk_mem(&b, PART10_STRICT | PART10_BIG, &m), 0);
	assert_int_equal(m.count, 5);
	assert_int_equal(m.tag[0], TAG_Modality);
	assert_int_equal(m.node[1], PART10_SEQUENCE);
	assert_int_equal(m.node[2], PART10_ITEM);
	assert_int_equal(m.tag[3], DCM_TAG(0x0008, 0x1155));
	assert_int_equal(m.tag[4], TAG_PatientName);
	assert_int_equal(m.depth[4], 0);
}

/* A descriptor through the smallest window, seekable or not, meets what
 * memory meets. */
static void walks_a_descriptor_like_memory(void **state)
{
	static struct buf b, z;
	struct met m, fd_met;
	char path[PATH_MAX];
	int p[2];

	(void)state;
	b.len = 0;
	elem(&b, 0x0008, 0x0016, "UI", CT_STORAGE);
	/* a long private value to skip */
	long_head(&b, 0x0009, 0x1010, "OB", 3000);
	for (int i = 0; i < 3000; i++)
		put(&b, "x", 1);
	dataset(&b);
	assert_int_equal(walk_mem(&b, 0, &m), 0);
	for (unsigned how = 0; how <= 1; how++) {
		const struct buf *in = &b;
		struct part10_source src = { .size = b.len,
					     .window = PART10_MIN_WINDOW };

		if (how) {
			deflate_into(&b, &z);
			in = &z;
			src.size = z.len;
		}
		snprintf(path, sizeof(path), "%s/walk.bin",
			 getenv("DICOMSORT_TEST_TMP") ? getenv("DICOMSORT_TEST_TMP") :
			 "/tmp");
		mkdir(getenv("DICOMSORT_TEST_TMP") ? getenv("DICOMSORT_TEST_TMP") :
		      "/tmp", 0700);
		src.fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		assert_true(src.fd >= 0);
		assert_int_equal(write(src.fd, in->p, in->len), (ssize_t)in->len);
		assert_int_equal(lseek(src.fd, 0, SEEK_SET), 0);
		memset(&fd_met, 0, sizeof(fd_met));
		assert_int_equal(part10_walk(&src, 0, how ? PART10_DEFLATED : 0,
					     NULL, meet, &fd_met), 0);
		same_met(&m, &fd_met);
		close(src.fd);
		unlink(path);

		assert_int_equal(pipe(p), 0);
		assert_int_equal(write(p[1], in->p, in->len), (ssize_t)in->len);
		close(p[1]);
		src.fd = p[0];
		src.size = PART10_SIZE_UNKNOWN;
		memset(&fd_met, 0, sizeof(fd_met));
		assert_int_equal(part10_walk(&src, 0, PART10_STRICT |
					     (how ? PART10_DEFLATED : 0), NULL,
					     meet, &fd_met), 0);
		same_met(&m, &fd_met);
		close(p[0]);
	}
}

/* depth levels of ReferencedSeriesSequence, each an item of undefined
 * length, in a Part 10 file. */
static void nested(struct buf *b, int depth)
{
	preamble_and_meta(b, false, 0);
	elem(b, 0x0008, 0x0016, "UI", CT_STORAGE);
	for (int i = 0; i < depth; i++) {
		long_head(b, 0x0008, 0x1115, "SQ", 0xffffffff);
		tag_len(b, 0xfffe, 0xe000, 0xffffffff);
	}
	for (int i = 0; i < depth; i++) {
		tag_len(b, 0xfffe, 0xe00d, 0);
		tag_len(b, 0xfffe, 0xe0dd, 0);
	}
}

static enum part10_limit limits_of(const struct buf *b)
{
	struct part10_source src = { .bytes = b->p, .size = b->len };

	return part10_check_limits(&src);
}

static void checks_depth_and_order(void **state)
{
	static struct buf b;

	(void)state;
	b.len = 0;
	nested(&b, DICOM_MAX_DEPTH);
	assert_int_equal(limits_of(&b), PART10_WITHIN_LIMITS);
	b.len = 0;
	nested(&b, DICOM_MAX_DEPTH + 1);
	assert_int_equal(limits_of(&b), PART10_TOO_DEEP);
	/* A bare dataset, each element below the one before it. */
	for (int unordered = DICOM_MAX_UNORDERED; unordered <= DICOM_MAX_UNORDERED + 1;
	     unordered++) {
		b.len = 0;
		elem(&b, 0x0008, 0x2000, "LO", "x");
		for (int i = 0; i < unordered; i++)
			elem(&b, 0x0008, (uint16_t)(0x1000 - i), "LO", "x");
		assert_int_equal(limits_of(&b), unordered > DICOM_MAX_UNORDERED ?
				 PART10_UNORDERED : PART10_WITHIN_LIMITS);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(indexes_a_plain_file),
		cmocka_unit_test(leaves_the_rest_to_dcmtk),
		cmocka_unit_test(overlong_media_uid_matches_nothing),
		cmocka_unit_test(notes_group_lengths),
		cmocka_unit_test(splices_an_edit),
		cmocka_unit_test(walks_each_header_once),
		cmocka_unit_test(walks_implicit_and_big_endian),
		cmocka_unit_test(walks_a_descriptor_like_memory),
		cmocka_unit_test(checks_depth_and_order),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
