/* codestream.c - metadata segments in compressed pixel data; see
 * codestream.h. Each parser copies what it keeps forward in the same
 * buffer (the output never overtakes the input). */
#include "dicomsort/codestream.h"

#include <stdint.h>
#include <string.h>

enum codestream_kind codestream_kind_of(const char *ts)
{
	static const struct {
		const char *uid;
		enum codestream_kind kind;
	} syntaxes[] = {
		{ "1.2.840.10008.1.2.4.50", CODESTREAM_JPEG },
		{ "1.2.840.10008.1.2.4.51", CODESTREAM_JPEG },
		{ "1.2.840.10008.1.2.4.57", CODESTREAM_JPEG },
		{ "1.2.840.10008.1.2.4.70", CODESTREAM_JPEG },
		{ "1.2.840.10008.1.2.4.80", CODESTREAM_JPEG_LS },
		{ "1.2.840.10008.1.2.4.81", CODESTREAM_JPEG_LS },
		{ "1.2.840.10008.1.2.4.90", CODESTREAM_J2K },
		{ "1.2.840.10008.1.2.4.91", CODESTREAM_J2K },
		{ "1.2.840.10008.1.2.4.92", CODESTREAM_J2K },
		{ "1.2.840.10008.1.2.4.93", CODESTREAM_J2K },
		{ "1.2.840.10008.1.2.4.201", CODESTREAM_J2K },
		{ "1.2.840.10008.1.2.4.202", CODESTREAM_J2K },
		{ "1.2.840.10008.1.2.4.203", CODESTREAM_J2K },
	};

	/* The retired JPEG processes 2-29 (.52-.66) are JPEG too. */
	if (strncmp(ts, "1.2.840.10008.1.2.4.", 20) == 0) {
		const char *n = ts + 20;

		if (strlen(n) == 2 && n[0] >= '5' && n[0] <= '6' &&
		    n[1] >= '0' && n[1] <= '9' && strcmp(n, "50") > 0 &&
		    strcmp(n, "66") <= 0)
			return CODESTREAM_JPEG;
	}
	for (size_t i = 0; i < sizeof(syntaxes) / sizeof(*syntaxes); i++)
		if (strcmp(ts, syntaxes[i].uid) == 0)
			return syntaxes[i].kind;
	return CODESTREAM_NONE;
}

static const unsigned char jp2_signature[12] = {
	0x00, 0x00, 0x00, 0x0C, 0x6A, 0x50, 0x20, 0x20, 0x0D, 0x0A, 0x87, 0x0A };

bool codestream_starts(enum codestream_kind kind, const unsigned char *b,
		       size_t len)
{
	if (len < 2)
		return false;
	switch (kind) {
	case CODESTREAM_JPEG:
	case CODESTREAM_JPEG_LS:
		return b[0] == 0xFF && b[1] == 0xD8;
	case CODESTREAM_J2K:
		return (b[0] == 0xFF && b[1] == 0x4F) ||
		       (len >= sizeof(jp2_signature) &&
			memcmp(b, jp2_signature, sizeof(jp2_signature)) == 0);
	case CODESTREAM_NONE:
		break;
	}
	return false;
}

static unsigned be16(const unsigned char *p)
{
	return (unsigned)p[0] << 8 | p[1];
}

static uint32_t be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

static void put_be32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

/* ---- JPEG and JPEG-LS (ISO 10918-1 B.1, ISO 14495-1 C.1) ---- */

static bool jpeg_metadata(unsigned marker)
{
	return (marker >= 0xE1 && marker <= 0xED) || marker == 0xEF ||
	       marker == 0xFE;
}

/* End of the entropy-coded data starting at i: the next marker. In JPEG
 * an FF in the data is followed by 00 (stuffing) or a restart marker; in
 * JPEG-LS by a byte below 0x80 (bit stuffing). */
static size_t entropy_end(const unsigned char *b, size_t len, size_t i, bool ls)
{
	for (; i + 1 < len; i++) {
		unsigned next = b[i + 1];

		if (b[i] != 0xFF)
			continue;
		if (ls ? next >= 0x80 : (next != 0x00 && next != 0xFF &&
					 !(next >= 0xD0 && next <= 0xD7)))
			return i;
	}
	return len;
}

static int strip_jpeg(unsigned char *b, size_t len, bool ls, size_t *out_len)
{
	size_t i = 2, o = 2;
	int removed = 0;

	if (len < 4 || b[0] != 0xFF || b[1] != 0xD8)
		return -1;
	while (i < len) {
		unsigned marker;
		size_t seg;

		if (b[i] != 0xFF)
			return -1;
		if (i + 1 >= len)
			return -1;
		marker = b[i + 1];
		if (marker == 0xFF) {	/* fill byte */
			b[o++] = b[i++];
			continue;
		}
		if (marker == 0xD9) {	/* EOI; what follows is no image */
			b[o++] = b[i++];
			b[o++] = b[i++];
			removed += i < len;
			i = len;
			break;
		}
		if ((marker >= 0xD0 && marker <= 0xD7) || marker == 0x01) {
			b[o++] = b[i++];
			b[o++] = b[i++];
			continue;
		}
		if (i + 4 > len || be16(b + i + 2) < 2)
			return -1;
		seg = 2 + be16(b + i + 2);
		if (seg > len - i)
			return -1;
		if (jpeg_metadata(marker)) {
			removed++;
		} else {
			memmove(b + o, b + i, seg);
			o += seg;
		}
		i += seg;
		if (marker == 0xDA) {	/* SOS: entropy-coded data follows */
			size_t end = entropy_end(b, len, i, ls);

			memmove(b + o, b + i, end - i);
			o += end - i;
			i = end;
		}
	}
	*out_len = o;
	return removed;
}

/* ---- JPEG 2000 (ISO 15444-1 A.4, A.5; I.4 for JP2 boxes) ---- */

#define J2K_SOC 0x4F
#define J2K_SOT 0x90
#define J2K_SOD 0x93
#define J2K_EOC 0xD9
#define J2K_COM 0x64

/* Marker segments from i up to a marker in stop (SOT or SOD), copied
 * to o without COM. false if malformed. */
static bool j2k_header(unsigned char *b, size_t len, size_t *i, size_t *o,
		       unsigned stop1, unsigned stop2, int *removed)
{
	while (*i + 2 <= len) {
		unsigned marker;
		size_t seg;

		if (b[*i] != 0xFF)
			return false;
		marker = b[*i + 1];
		if (marker == stop1 || marker == stop2)
			return true;
		if (*i + 4 > len || be16(b + *i + 2) < 2)
			return false;
		seg = 2 + be16(b + *i + 2);
		if (seg > len - *i)
			return false;
		if (marker == J2K_COM) {
			(*removed)++;
		} else {
			memmove(b + *o, b + *i, seg);
			*o += seg;
		}
		*i += seg;
	}
	return false;
}

static int strip_j2c(unsigned char *b, size_t len, size_t *out_len)
{
	size_t i = 2, o = 2;
	int removed = 0;

	if (len < 4 || b[0] != 0xFF || b[1] != J2K_SOC)
		return -1;
	if (!j2k_header(b, len, &i, &o, J2K_SOT, J2K_EOC, &removed))
		return -1;
	while (i + 2 <= len && b[i + 1] == J2K_SOT) {
		size_t start = i, out_start = o, end;
		uint32_t psot;

		if (i + 12 > len || be16(b + i + 2) != 10)
			return -1;
		psot = be32(b + i + 6);
		end = psot == 0 ? len - 2 : start + psot;	/* 0: up to EOC */
		if (psot != 0 && (psot < 12 || psot > len - start))
			return -1;
		memmove(b + o, b + i, 12);
		o += 12;
		i += 12;
		if (!j2k_header(b, end, &i, &o, J2K_SOD, J2K_SOD, &removed))
			return -1;
		memmove(b + o, b + i, end - i);	/* SOD and the bit stream */
		o += end - i;
		i = end;
		if (psot != 0)
			put_be32(b + out_start + 6, (uint32_t)(o - out_start));
	}
	if (i + 2 <= len && b[i] == 0xFF && b[i + 1] == J2K_EOC) {
		b[o++] = b[i++];	/* EOC; what follows is no image */
		b[o++] = b[i++];
		removed += i < len;
	} else if (i < len) {
		return -1;
	}
	*out_len = o;
	return removed;
}

/* A JP2 file: its boxes, without 'xml ', 'uuid' and 'uinf'; the
 * codestream box 'jp2c' cleaned like a raw codestream. */
static int strip_jp2(unsigned char *b, size_t len, size_t *out_len)
{
	size_t i = 0, o = 0;
	int removed = 0;

	while (i < len) {
		size_t head = 8, box;
		uint32_t lbox;

		if (len - i < 8)
			return -1;
		lbox = be32(b + i);
		if (lbox == 1) {
			if (len - i < 16 || be32(b + i + 8) != 0)
				return -1;
			box = be32(b + i + 12);
			head = 16;
		} else {
			box = lbox == 0 ? len - i : lbox;
		}
		if (box < head || box > len - i)
			return -1;
		if (memcmp(b + i + 4, "xml ", 4) == 0 ||
		    memcmp(b + i + 4, "uuid", 4) == 0 ||
		    memcmp(b + i + 4, "uinf", 4) == 0) {
			removed++;
		} else if (memcmp(b + i + 4, "jp2c", 4) == 0) {
			size_t inner, out_start = o;
			int r;

			memmove(b + o, b + i, head);
			o += head;
			memmove(b + o, b + i + head, box - head);
			r = strip_j2c(b + o, box - head, &inner);
			if (r < 0)
				return -1;
			removed += r;
			o += inner;
			if (lbox == 1)
				put_be32(b + out_start + 12, (uint32_t)(head + inner));
			else if (lbox != 0)
				put_be32(b + out_start, (uint32_t)(head + inner));
		} else {
			memmove(b + o, b + i, box);
			o += box;
		}
		i += box;
	}
	*out_len = o;
	return removed;
}

int codestream_strip(enum codestream_kind kind, unsigned char *buf, size_t len,
		     size_t *out_len)
{
	*out_len = len;
	switch (kind) {
	case CODESTREAM_JPEG:
		return strip_jpeg(buf, len, false, out_len);
	case CODESTREAM_JPEG_LS:
		return strip_jpeg(buf, len, true, out_len);
	case CODESTREAM_J2K:
		if (len >= sizeof(jp2_signature) &&
		    memcmp(buf, jp2_signature, sizeof(jp2_signature)) == 0)
			return strip_jp2(buf, len, out_len);
		return strip_j2c(buf, len, out_len);
	case CODESTREAM_NONE:
		break;
	}
	return 0;
}
