/* test_codestream.c - metadata segments out of JPEG, JPEG-LS and JPEG 2000
 * codestreams built byte by byte (codestream.h): what goes, what stays
 * byte for byte, lengths that are adjusted, and malformed input refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "dicomsort/codestream.h"

struct buf {
	unsigned char p[1024];
	size_t len;
};

static void put(struct buf *b, const void *data, size_t len)
{
	assert_true(b->len + len <= sizeof(b->p));
	memcpy(b->p + b->len, data, len);
	b->len += len;
}

static void marker(struct buf *b, unsigned char m, const char *payload)
{
	size_t n = strlen(payload) + 2;
	unsigned char head[4] = { 0xFF, m, (unsigned char)(n >> 8),
				  (unsigned char)n };

	put(b, head, 4);
	put(b, payload, n - 2);
}

static void raw(struct buf *b, const char *hex_free_bytes, size_t len)
{
	put(b, hex_free_bytes, len);
}

/* SOI [segments] SOS data EOI, with and without the metadata. */
static void jpeg(struct buf *with, struct buf *without)
{
	static const unsigned char soi[] = { 0xFF, 0xD8 };
	static const unsigned char eoi[] = { 0xFF, 0xD9 };
	/* Entropy-coded data with a stuffed FF00 and a restart marker. */
	static const unsigned char data[] = { 0x12, 0xFF, 0x00, 0x34, 0xFF,
					      0xD0, 0x56 };

	put(with, soi, 2);
	put(without, soi, 2);
	marker(with, 0xE0, "JFIF");
	marker(without, 0xE0, "JFIF");
	marker(with, 0xE1, "Exif Owner Secretus");
	marker(with, 0xFE, "comment Secretus");
	marker(with, 0xED, "Photoshop Secretus");
	marker(with, 0xEF, "APP15 Secretus");
	marker(with, 0xEE, "Adobe");
	marker(without, 0xEE, "Adobe");
	marker(with, 0xDB, "QT");
	marker(without, 0xDB, "QT");
	marker(with, 0xDA, "SOS");
	marker(without, 0xDA, "SOS");
	raw(with, (const char *)data, sizeof(data));
	raw(without, (const char *)data, sizeof(data));
	marker(with, 0xFE, "between scans Secretus");	/* progressive */
	marker(with, 0xDA, "SOS2");
	marker(without, 0xDA, "SOS2");
	raw(with, (const char *)data, sizeof(data));
	raw(without, (const char *)data, sizeof(data));
	put(with, eoi, 2);
	put(without, eoi, 2);
	raw(with, "trailing Secretus", 17);
}

static void test_jpeg(void **state)
{
	struct buf with = { .len = 0 }, without = { .len = 0 };
	size_t len;

	(void)state;
	jpeg(&with, &without);
	assert_int_equal(codestream_strip(CODESTREAM_JPEG, with.p, with.len,
					  &len), 6);
	assert_int_equal(len, without.len);
	assert_memory_equal(with.p, without.p, len);
	assert_true(codestream_starts(CODESTREAM_JPEG, without.p, without.len));
}

static void test_jpeg_malformed(void **state)
{
	struct buf b = { .len = 0 };
	static const unsigned char soi[] = { 0xFF, 0xD8 };
	size_t len;

	(void)state;
	put(&b, soi, 2);
	marker(&b, 0xE1, "Exif");
	b.p[5] = 0xF0;	/* a length past the end */
	assert_int_equal(codestream_strip(CODESTREAM_JPEG, b.p, b.len, &len), -1);
	assert_int_equal(codestream_strip(CODESTREAM_JPEG, (unsigned char *)"xx",
					  2, &len), -1);
}

/* SOC SIZ COM | SOT(Psot) COM SOD data | EOC */
static void j2k(struct buf *b, bool comments)
{
	static const unsigned char soc[] = { 0xFF, 0x4F };
	static const unsigned char eoc[] = { 0xFF, 0xD9 };
	static const unsigned char sod_data[] = { 0xFF, 0x93, 0xAA, 0xFF, 0x64,
						  0xBB };	/* FF64 in the bit stream stays */
	unsigned char sot[12] = { 0xFF, 0x90, 0x00, 0x0A, 0, 0, 0, 0, 0, 0, 0, 1 };
	size_t psot = 12 + sizeof(sod_data) + (comments ? 4 + 12 : 0);

	put(b, soc, 2);
	marker(b, 0x51, "SIZ parameters");
	if (comments)
		marker(b, 0x64, "RCSecretus..");
	marker(b, 0x52, "COD");
	sot[6] = (unsigned char)(psot >> 24);
	sot[7] = (unsigned char)(psot >> 16);
	sot[8] = (unsigned char)(psot >> 8);
	sot[9] = (unsigned char)psot;
	put(b, sot, sizeof(sot));
	if (comments)
		marker(b, 0x64, "RCSecretus!!");
	put(b, sod_data, sizeof(sod_data));
	put(b, eoc, 2);
}

static void test_j2k(void **state)
{
	struct buf with = { .len = 0 }, without = { .len = 0 };
	size_t len;

	(void)state;
	j2k(&with, true);
	j2k(&without, false);
	assert_int_equal(codestream_strip(CODESTREAM_J2K, with.p, with.len, &len),
			 2);
	assert_int_equal(len, without.len);
	assert_memory_equal(with.p, without.p, len);	/* Psot adjusted */
}

static void test_jp2_boxes(void **state)
{
	static const unsigned char sig[12] = { 0, 0, 0, 0x0C, 'j', 'P', ' ', ' ',
					       0x0D, 0x0A, 0x87, 0x0A };
	struct buf cs = { .len = 0 }, clean = { .len = 0 };
	struct buf with = { .len = 0 }, without = { .len = 0 };
	unsigned char head[8];
	size_t len;

	(void)state;
	j2k(&cs, true);
	j2k(&clean, false);
	put(&with, sig, 12);
	put(&without, sig, 12);
	memcpy(head, "\x00\x00\x00\x14xml ", 8);
	put(&with, head, 8);
	put(&with, "<o>Secretus</o>\n\n\n\n", 12);
	head[0] = head[1] = head[2] = 0;
	head[3] = (unsigned char)(8 + cs.len);
	memcpy(head + 4, "jp2c", 4);
	put(&with, head, 8);
	put(&with, cs.p, cs.len);
	head[3] = (unsigned char)(8 + clean.len);
	put(&without, head, 8);
	put(&without, clean.p, clean.len);
	assert_int_equal(codestream_strip(CODESTREAM_J2K, with.p, with.len, &len),
			 3);
	assert_int_equal(len, without.len);
	assert_memory_equal(with.p, without.p, len);
}

static void test_kinds(void **state)
{
	(void)state;
	assert_int_equal(codestream_kind_of("1.2.840.10008.1.2.4.50"),
			 CODESTREAM_JPEG);
	assert_int_equal(codestream_kind_of("1.2.840.10008.1.2.4.57"),
			 CODESTREAM_JPEG);
	assert_int_equal(codestream_kind_of("1.2.840.10008.1.2.4.80"),
			 CODESTREAM_JPEG_LS);
	assert_int_equal(codestream_kind_of("1.2.840.10008.1.2.4.91"),
			 CODESTREAM_J2K);
	assert_int_equal(codestream_kind_of("1.2.840.10008.1.2.4.201"),
			 CODESTREAM_J2K);
	assert_int_equal(codestream_kind_of("1.2.840.10008.1.2.5"),
			 CODESTREAM_NONE);
	assert_int_equal(codestream_kind_of("1.2.840.10008.1.2.4.100"),
			 CODESTREAM_NONE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_jpeg),
		cmocka_unit_test(test_jpeg_malformed),
		cmocka_unit_test(test_j2k),
		cmocka_unit_test(test_jp2_boxes),
		cmocka_unit_test(test_kinds),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
