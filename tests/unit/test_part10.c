/* test_part10.c - the fast path's index and splicing writer (part10.h) on
 * files built byte by byte: what it vouches for, what it leaves to DCMTK,
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

#include "dicomsort/dicom.h"
#include "dicomsort/part10.h"

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
	u16(b, 0x0008);
	u16(b, 0x1140);
	put(b, "SQ", 2);
	u16(b, 0);
	u32(b, 0xffffffff);
	u16(b, 0xfffe);
	u16(b, 0xe000);
	u32(b, 0xffffffff);
	elem(b, 0x0008, 0x1155, "UI", "9.8.7");
	u16(b, 0xfffe);
	u16(b, 0xe00d);
	u32(b, 0);
	u16(b, 0xfffe);
	u16(b, 0xe0dd);
	u32(b, 0);
	elem(b, 0x0010, 0x0010, "PN", "Doe^Jane");
	elem(b, 0x0010, 0x0020, "LO", "PAT001");
	elem(b, 0x0010, 0x0030, "DA", "19700101");
	u16(b, 0x7fe0);
	u16(b, 0x0010);
	put(b, "OB", 2);
	u16(b, 0);
	u32(b, 0xffffffff);
	u16(b, 0xfffe);		/* basic offset table, empty */
	u16(b, 0xe000);
	u32(b, 0);
	u16(b, 0xfffe);		/* one fragment */
	u16(b, 0xe000);
	u32(b, 4);
	put(b, "\1\2\3\4", 4);
	u16(b, 0xfffe);
	u16(b, 0xe0dd);
	u32(b, 0);
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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(indexes_a_plain_file),
		cmocka_unit_test(leaves_the_rest_to_dcmtk),
		cmocka_unit_test(overlong_media_uid_matches_nothing),
		cmocka_unit_test(notes_group_lengths),
		cmocka_unit_test(splices_an_edit),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
