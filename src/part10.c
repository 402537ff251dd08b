/* part10.c - the byte layer: walk the element headers of a Part 10 file
 * (memory or a descriptor, any transfer syntax), index and splice one in
 * memory; see part10.h. */
#include "part10.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>
#include <zlib.h>


#define UNDEFINED PART10_UNDEFINED
#define META_START 132
#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

static uint16_t get16(const unsigned char *b)
{
	return (uint16_t)(b[0] | b[1] << 8);
}

static uint32_t get32(const unsigned char *b)
{
	return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
	       (uint32_t)b[3] << 24;
}

static void put16(unsigned char *b, uint16_t v)
{
	b[0] = (unsigned char)v;
	b[1] = (unsigned char)(v >> 8);
}

static void put32(unsigned char *b, uint32_t v)
{
	put16(b, (uint16_t)v);
	put16(b + 2, (uint16_t)(v >> 16));
}

/* Every VR of PS3.5 (2023), and whether an explicit VR header gives it
 * two reserved bytes and a 32-bit length; indexed by its two letters (a
 * look-up per element: the walker's hottest question). */
enum { VR_UNKNOWN, VR_SHORT, VR_LONG };
#define VR(a, b) [((a) - 'A') * 26 + ((b) - 'A')]
static const unsigned char vr_kinds[26 * 26] = {
	VR('A', 'E') = VR_SHORT, VR('A', 'S') = VR_SHORT, VR('A', 'T') = VR_SHORT,
	VR('C', 'S') = VR_SHORT, VR('D', 'A') = VR_SHORT, VR('D', 'S') = VR_SHORT,
	VR('D', 'T') = VR_SHORT, VR('F', 'D') = VR_SHORT, VR('F', 'L') = VR_SHORT,
	VR('I', 'S') = VR_SHORT, VR('L', 'O') = VR_SHORT, VR('L', 'T') = VR_SHORT,
	VR('P', 'N') = VR_SHORT, VR('S', 'H') = VR_SHORT, VR('S', 'L') = VR_SHORT,
	VR('S', 'S') = VR_SHORT, VR('S', 'T') = VR_SHORT, VR('T', 'M') = VR_SHORT,
	VR('U', 'I') = VR_SHORT, VR('U', 'L') = VR_SHORT, VR('U', 'S') = VR_SHORT,
	VR('O', 'B') = VR_LONG, VR('O', 'D') = VR_LONG, VR('O', 'F') = VR_LONG,
	VR('O', 'L') = VR_LONG, VR('O', 'V') = VR_LONG, VR('O', 'W') = VR_LONG,
	VR('S', 'Q') = VR_LONG, VR('S', 'V') = VR_LONG, VR('U', 'C') = VR_LONG,
	VR('U', 'N') = VR_LONG, VR('U', 'R') = VR_LONG, VR('U', 'T') = VR_LONG,
	VR('U', 'V') = VR_LONG,
};
#undef VR

static bool uppercase_vr(const unsigned char *vr)
{
	return vr[0] >= 'A' && vr[0] <= 'Z' && vr[1] >= 'A' && vr[1] <= 'Z';
}

static int vr_kind(const unsigned char *vr)
{
	if (!uppercase_vr(vr))
		return VR_UNKNOWN;
	return vr_kinds[(vr[0] - 'A') * 26 + (vr[1] - 'A')];
}

static bool known_vr(const unsigned char *vr)
{
	return vr_kind(vr) != VR_UNKNOWN;
}

bool part10_long_vr(const unsigned char *vr)
{
	return vr_kind(vr) == VR_LONG;
}

/* A value padded with NULs or spaces, as a C string; "" when it does not
 * fit (a cut UID could pass for another). */
static void copy_value(char *out, size_t outlen, const unsigned char *v, size_t len)
{
	while (len > 0 && (v[len - 1] == '\0' || v[len - 1] == ' '))
		len--;
	if (len >= outlen)
		len = 0;
	memcpy(out, v, len);
	out[len] = '\0';
}

int part10_open(struct part10 *p, const unsigned char *bytes, size_t size)
{
	size_t pos = META_START, group_end = 0;
	uint32_t last = 0;
	bool have_syntax = false;

	memset(p, 0, sizeof(*p));
	p->bytes = bytes;
	p->size = size;
	p->file_size = size;
	if (size < META_START || memcmp(bytes + 128, "DICM", 4) != 0)
		return -1;
	while (pos + 8 <= size && get16(bytes + pos) == 0x0002) {
		uint32_t tag = DCM_TAG(0x0002, get16(bytes + pos + 2));
		const unsigned char *vr = bytes + pos + 4;
		size_t header = 8;
		uint32_t len;

		if (tag <= last && pos > META_START)
			return -1;
		last = tag;
		if (!known_vr(vr))
			return -1;
		if (part10_long_vr(vr)) {
			if (pos + 12 > size)
				return -1;
			header = 12;
			len = get32(bytes + pos + 8);
		} else {
			len = get16(bytes + pos + 6);
		}
		if (len == UNDEFINED || len > size - pos - header)
			return -1;
		const unsigned char *value = bytes + pos + header;
		if (tag == DCM_TAG(0x0002, 0x0000)) {
			if (len != 4 || memcmp(vr, "UL", 2) != 0)
				return -1;
			group_end = pos + header + 4 + get32(value);
		} else if (tag == DCM_TAG(0x0002, 0x0002)) {
			copy_value(p->media_class, sizeof(p->media_class), value, len);
		} else if (tag == DCM_TAG(0x0002, 0x0003)) {
			copy_value(p->media_instance, sizeof(p->media_instance),
				   value, len);
		} else if (tag == DCM_TAG(0x0002, 0x0010)) {
			if (len >= sizeof(p->syntax))
				return -1;
			copy_value(p->syntax, sizeof(p->syntax), value, len);
			have_syntax = true;
		}
		pos += header + len;
	}
	/* DCMTK trusts a meta group length over the tags it finds: vouch only
	 * where both agree. */
	if (!have_syntax || (group_end != 0 && group_end != pos))
		return -1;
	p->dataset = pos;
	return 0;
}

/* ---- the dictionary's sequences ---- */

#include "sq_tags.h"

static bool in_range(uint16_t v, uint16_t low, uint16_t high, unsigned parity)
{
	return v >= low && v <= high &&
	       (parity == 0 || (parity == 1) == ((v & 1) == 1));
}

bool part10_dictionary_sequence(uint32_t tag)
{
	size_t lo = 0, hi = sizeof(sq_tags) / sizeof(sq_tags[0]);

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (sq_tags[mid] == tag)
			return true;
		if (sq_tags[mid] < tag)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (size_t i = 0; i < sizeof(sq_ranges) / sizeof(sq_ranges[0]); i++) {
		const struct sq_range *r = &sq_ranges[i];

		if (in_range(DCM_GROUP(tag), r->group_low, r->group_high,
			     r->group_parity) &&
		    in_range(DCM_ELEMENT(tag), r->element_low, r->element_high,
			     r->element_parity))
			return true;
	}
	return false;
}

/* ---- reading a source: memory, or a descriptor through a window ---- */

#define DEFAULT_WINDOW 65536
#define UNKNOWN PART10_SIZE_UNKNOWN

struct reader {
	const unsigned char *bytes;	/* memory source */
	int fd;
	uint64_t size;		/* of the raw source, or UNKNOWN */
	uint64_t raw;		/* raw bytes taken from the source */
	bool seekable;
	bool positional;	/* pread(2) at raw; see part10_source */
	const unsigned char *head;
	size_t held;
	bool direct;		/* memory, not inflating: bytes + pos */
	/* The window: the stream from pos on is buf[lo, hi). */
	unsigned char *buf;
	size_t cap, lo, hi;
	uint64_t pos;		/* stream offset of the next byte */
	uint64_t end;		/* stream offset of its end, or UNKNOWN */
	bool eof;		/* nothing more will come */
	bool failed;		/* read(2) failed or out of memory */
	bool inflating, z_ready;
	z_stream z;
	unsigned char *zin;	/* compressed bytes read from fd */
};

static int reader_init(struct reader *r, const struct part10_source *src)
{
	memset(r, 0, sizeof(*r));
	r->bytes = src->bytes;
	r->fd = src->fd;
	r->size = src->size;
	r->end = src->size;
	r->cap = src->window ? src->window : DEFAULT_WINDOW;
	if (r->cap < PART10_MIN_WINDOW)
		r->cap = PART10_MIN_WINDOW;
	if (r->bytes != NULL) {
		r->direct = true;
		return 0;
	}
	r->positional = src->positional && r->size != UNKNOWN;
	if (r->positional) {
		r->head = src->head;
		r->held = src->head != NULL ? src->held : 0;
		if (r->held > r->size)
			r->held = (size_t)r->size;
	}
	r->seekable = r->positional ||
		      (r->size != UNKNOWN && lseek(r->fd, 0, SEEK_CUR) != -1);
	r->buf = malloc(r->cap);
	return r->buf == NULL ? -1 : 0;
}

static void reader_free(struct reader *r)
{
	if (r->z_ready)
		inflateEnd(&r->z);
	free(r->buf);
	free(r->zin);
}

/* Up to want raw bytes from the descriptor into dst: the count, 0 at its
 * end (r->failed when read(2) failed). */
static size_t read_raw(struct reader *r, unsigned char *dst, size_t want)
{
	if (r->size != UNKNOWN && want > r->size - r->raw)
		want = (size_t)(r->size - r->raw);
	if (r->raw < r->held) {
		size_t n = want < r->held - r->raw ? want : (size_t)(r->held - r->raw);

		memcpy(dst, r->head + r->raw, n);
		r->raw += n;
		return n;
	}
	while (want > 0) {
		ssize_t n = r->positional ?
			    pread(r->fd, dst, want, (off_t)r->raw) :
			    read(r->fd, dst, want);

		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			r->failed = true;
		if (n <= 0)
			return 0;
		r->raw += (uint64_t)n;
		return (size_t)n;
	}
	return 0;
}

/* More inflated bytes into buf[hi, cap): false when none come. The
 * deflated stream ends where zlib says (bytes after it are not read), or
 * where it is corrupt: what zlib inflated before the error still counts,
 * however the window cut the output (so every window sees the same). */
static bool inflate_more(struct reader *r)
{
	size_t before = r->hi;

	r->z.next_out = r->buf + r->hi;
	r->z.avail_out = (uInt)(r->cap - r->hi);
	while (r->z.avail_out > 0 && r->hi == before && !r->eof) {
		if (r->z.avail_in == 0) {
			if (r->bytes != NULL) {
				uint64_t left = r->size - r->raw;
				size_t chunk = left > (1u << 30) ? (1u << 30) : (size_t)left;

				r->z.next_in = (Bytef *)(r->bytes + r->raw);
				r->z.avail_in = (uInt)chunk;
				r->raw += chunk;
			} else {
				r->z.next_in = r->zin;
				r->z.avail_in = (uInt)read_raw(r, r->zin, r->cap);
			}
			if (r->z.avail_in == 0) {
				r->eof = true;
				break;
			}
		}
		int rc = inflate(&r->z, Z_NO_FLUSH);

		r->hi = (size_t)(r->z.next_out - r->buf);
		if (rc != Z_OK && !(rc == Z_BUF_ERROR && r->z.avail_in == 0))
			r->eof = true;	/* Z_STREAM_END, or corrupt */
	}
	return r->hi > before;
}

/* More bytes into buf[hi, cap): false when none come. */
static bool fill(struct reader *r)
{
	if (r->eof)
		return false;
	if (r->inflating)
		return inflate_more(r);
	size_t n = read_raw(r, r->buf + r->hi, r->cap - r->hi);

	if (n == 0) {
		r->eof = true;
		return false;
	}
	r->hi += n;
	return true;
}

/* The next n (<= PART10_MIN_WINDOW) bytes of the stream, not taken;
 * *avail says how many there are (fewer at the end). peek() below: memory
 * needs no window. */
static const unsigned char *peek_window(struct reader *r, size_t n, size_t *avail)
{
	if (r->hi - r->lo < n) {
		memmove(r->buf, r->buf + r->lo, r->hi - r->lo);
		r->hi -= r->lo;
		r->lo = 0;
		while (r->hi < n && fill(r))
			;
	}
	*avail = r->hi - r->lo < n ? r->hi - r->lo : n;
	return r->buf + r->lo;
}

static inline const unsigned char *peek(struct reader *r, size_t n, size_t *avail)
{
	if (r->direct) {
		uint64_t left = r->size - r->pos;

		*avail = left < n ? (size_t)left : n;
		return r->bytes + r->pos;
	}
	return peek_window(r, n, avail);
}

/* Take n bytes already peeked. */
static void take(struct reader *r, size_t n)
{
	if (!r->direct)
		r->lo += n;
	r->pos += n;
}

/* Past n bytes of the stream; false if it ends first. */
static bool skip(struct reader *r, uint64_t n)
{
	if (r->direct) {
		if (n > r->size - r->pos)
			return false;
		r->pos += n;
		return true;
	}
	if (n <= r->hi - r->lo) {
		take(r, (size_t)n);
		return true;
	}
	uint64_t left = n - (r->hi - r->lo);

	r->lo = r->hi = 0;
	if (!r->inflating && r->seekable) {
		if (left > r->size - r->raw || (!r->positional &&
		    lseek(r->fd, (off_t)left, SEEK_CUR) == -1))
			return false;
		r->raw += left;
		r->pos += n;
		return true;
	}
	while (left > 0) {
		if (!fill(r))
			return false;
		if (left < r->hi) {
			r->lo = (size_t)left;
			break;
		}
		left -= r->hi;
		r->hi = 0;
	}
	r->pos += n;
	return true;
}

/* From here on the stream is the inflation of the rest of the source. */
static int start_inflating(struct reader *r)
{
	if (r->buf == NULL && (r->buf = malloc(r->cap)) == NULL)
		return -1;
	if (r->bytes == NULL && (r->zin = malloc(r->cap)) == NULL)
		return -1;
	if (inflateInit2(&r->z, -MAX_WBITS) != Z_OK)
		return -1;
	r->z_ready = true;
	if (r->direct) {
		r->raw = r->pos;
	} else {
		/* Raw bytes already in the window are the stream's start. */
		memcpy(r->zin, r->buf + r->lo, r->hi - r->lo);
		r->z.next_in = r->zin;
		r->z.avail_in = (uInt)(r->hi - r->lo);
	}
	r->direct = false;
	r->inflating = true;
	r->lo = r->hi = 0;
	r->eof = false;
	r->end = UNKNOWN;
	return 0;
}

static uint16_t get16e(const unsigned char *b, bool big)
{
	return big ? (uint16_t)(b[0] << 8 | b[1]) : get16(b);
}

static uint32_t get32e(const unsigned char *b, bool big)
{
	return big ? (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 |
		     (uint32_t)b[2] << 8 | b[3] : get32(b);
}

/* ---- walking the dataset ---- */

#define OPEN_END UINT64_MAX

enum container_kind { SEQUENCE, ITEM, FRAGMENTS };

struct container {
	uint64_t end;		/* OPEN_END: undefined length */
	enum container_kind kind;
	bool implicit, big;	/* encoding of what it holds */
	uint32_t last;		/* an item's: tag of its last element */
};

struct walker {
	struct reader *r;
	bool strict;
	part10_is_sequence_fn is_sequence;
	part10_walk_fn fn;
	void *ctx;
	struct container stack[2 * DICOM_MAX_DEPTH + 4];
	size_t n;
	unsigned depth;		/* open sequences and pixel data */
	uint32_t top_last;
};

/* Where the innermost container of defined length ends, else the stream. */
static uint64_t bound(const struct walker *w)
{
	for (size_t i = w->n; i > 0; i--)
		if (w->stack[i - 1].end != OPEN_END)
			return w->stack[i - 1].end;
	return w->r->end;
}

static int push(struct walker *w, uint64_t end, enum container_kind kind,
		bool implicit, bool big)
{
	if (w->n == sizeof(w->stack) / sizeof(w->stack[0]))
		return PART10_WALK_TOO_DEEP;
	if (w->strict && end != OPEN_END && end > bound(w))
		return PART10_WALK_MALFORMED;
	w->stack[w->n++] = (struct container){ end, kind, implicit, big, 0 };
	if (kind != ITEM)
		w->depth++;
	return 0;
}

static void pop(struct walker *w)
{
	if (w->stack[--w->n].kind != ITEM)
		w->depth--;
}

static int stream_error(const struct walker *w)
{
	return w->r->failed ? PART10_WALK_FAILED : PART10_WALK_MALFORMED;
}

/* An item or delimiter header, 8 bytes at b (peeked, not taken). */
static int item_tag(struct walker *w, const unsigned char *b, bool big)
{
	struct container *c = w->n ? &w->stack[w->n - 1] : NULL;
	struct part10_header h = { .tag = DCM_TAG(0xfffe, get16e(b + 2, big)),
				   .len = get32e(b + 4, big), .offset = w->r->pos,
				   .header_len = 8, .depth = w->depth };
	int rc;

	switch (DCM_ELEMENT(h.tag)) {
	case 0xe000:
		if (c == NULL || c->kind == ITEM)
			return PART10_WALK_MALFORMED;
		take(w->r, 8);
		if (c->kind == FRAGMENTS) {
			if (h.len == PART10_UNDEFINED ||
			    (w->strict && h.len > bound(w) - w->r->pos))
				return PART10_WALK_MALFORMED;
			h.node = PART10_FRAGMENT;
			if ((rc = w->fn(w->ctx, &h)) != 0)
				return rc;
			return skip(w->r, h.len) ? 0 : stream_error(w);
		}
		h.node = PART10_ITEM;
		if ((rc = w->fn(w->ctx, &h)) != 0)
			return rc;
		return push(w, h.len == PART10_UNDEFINED ? OPEN_END : w->r->pos + h.len,
			    ITEM, c->implicit, c->big);
	case 0xe00d:
	case 0xe0dd:
		h.node = DCM_ELEMENT(h.tag) == 0xe00d ? PART10_ITEM_END :
			 PART10_SEQUENCE_END;
		if (c == NULL || (c->kind == ITEM) != (h.node == PART10_ITEM_END) ||
		    (w->strict && (c->end != OPEN_END || h.len != 0)))
			return PART10_WALK_MALFORMED;
		take(w->r, 8);
		if ((rc = w->fn(w->ctx, &h)) != 0)
			return rc;
		pop(w);
		return 0;
	}
	return PART10_WALK_MALFORMED;
}

/* The element whose header starts at the stream's position: past it, or
 * into it when it holds items. */
static int element(struct walker *w, uint64_t limit, bool implicit, bool big)
{
	struct reader *r = w->r;
	struct container *c = w->n ? &w->stack[w->n - 1] : NULL;
	size_t avail;
	const unsigned char *b = peek(r, 8, &avail);
	struct part10_header h = { .offset = r->pos, .header_len = 8,
				   .depth = w->depth };
	bool un = false, sequence;
	int rc;

	if (avail < 8)
		return stream_error(w);
	if (get16e(b, big) == 0xfffe)
		return item_tag(w, b, big);
	if (c != NULL && c->kind != ITEM && w->strict)
		return PART10_WALK_MALFORMED;	/* a sequence holds items only */
	h.tag = DCM_TAG(get16e(b, big), get16e(b + 2, big));
	if (implicit) {
		h.len = get32e(b + 4, big);
		sequence = h.len == PART10_UNDEFINED || w->is_sequence(h.tag);
	} else {
		int kind = vr_kind(b + 4);

		if (w->strict ? kind == VR_UNKNOWN : !uppercase_vr(b + 4))
			return PART10_WALK_MALFORMED;
		memcpy(h.vr, b + 4, 2);
		un = h.vr[0] == 'U' && h.vr[1] == 'N';
		if (kind == VR_LONG) {
			if (w->strict && limit != UNKNOWN && limit - r->pos < 12)
				return PART10_WALK_MALFORMED;
			b = peek(r, 12, &avail);
			if (avail < 12)
				return stream_error(w);
			h.header_len = 12;
			h.len = get32e(b + 8, big);
		} else {
			h.len = get16e(b + 6, big);
		}
		sequence = (h.vr[0] == 'S' && h.vr[1] == 'Q') ||
			   (un && h.len == PART10_UNDEFINED);
	}
	take(r, h.header_len);
	if (w->strict && h.len != PART10_UNDEFINED && limit != UNKNOWN &&
	    h.len > limit - r->pos)
		return PART10_WALK_MALFORMED;
	/* Encapsulated pixel data; strictly only where the VR does not
	 * already make it a sequence (the index then refuses its items). */
	if (h.len == PART10_UNDEFINED && h.tag == TAG_PixelData &&
	    (!sequence || !w->strict))
		h.node = PART10_FRAGMENTS;
	else if (sequence || (h.len == PART10_UNDEFINED && !w->strict))
		h.node = PART10_SEQUENCE;
	else if (h.len == PART10_UNDEFINED)
		return PART10_WALK_MALFORMED;
	else
		h.node = PART10_ELEMENT;
	if (c == NULL || c->kind == ITEM) {
		uint32_t *last = c ? &c->last : &w->top_last;

		h.in_item = true;
		h.prev = *last;
		*last = h.tag;
	}
	if ((rc = w->fn(w->ctx, &h)) != 0)
		return rc;
	if (h.node == PART10_ELEMENT)
		return skip(r, h.len) ? 0 : stream_error(w);
	/* UN of undefined length holds implicit VR little endian items. */
	return push(w, h.len == PART10_UNDEFINED ? OPEN_END : r->pos + h.len,
		    h.node == PART10_FRAGMENTS ? FRAGMENTS : SEQUENCE,
		    implicit || un, big && !un);
}

static int walk(struct walker *w, bool implicit, bool big)
{
	struct reader *r = w->r;

	for (;;) {
		/* Close the defined-length containers that end here (or, in
		 * a lenient walk, before). */
		while (w->n > 0 && w->stack[w->n - 1].end != OPEN_END &&
		       r->pos >= w->stack[w->n - 1].end)
			pop(w);
		uint64_t limit = bound(w);
		size_t avail;

		if (w->strict && limit != UNKNOWN) {
			if (r->pos == limit && w->n == 0)
				return 0;
			if (limit - r->pos < 8)
				return PART10_WALK_MALFORMED;
		} else {
			peek(r, 8, &avail);
			if (avail == 0 && !r->failed)
				return w->n == 0 ? 0 : PART10_WALK_MALFORMED;
		}
		const struct container *c = w->n ? &w->stack[w->n - 1] : NULL;
		int rc = element(w, limit, c ? c->implicit : implicit,
				 c ? c->big : big);

		if (rc != 0)
			return rc;
	}
}

int part10_walk(const struct part10_source *src, uint64_t start, unsigned how,
		part10_is_sequence_fn is_sequence, part10_walk_fn fn, void *ctx)
{
	struct reader r;
	struct walker w = { .r = &r, .strict = (how & PART10_STRICT) != 0,
			    .is_sequence = is_sequence ? is_sequence :
					   part10_dictionary_sequence,
			    .fn = fn, .ctx = ctx };
	int rc;

	if (reader_init(&r, src) == -1) {
		reader_free(&r);
		return PART10_WALK_FAILED;
	}
	if (!skip(&r, start))
		rc = stream_error(&w);
	else if ((how & PART10_DEFLATED) && start_inflating(&r) == -1)
		rc = PART10_WALK_FAILED;
	else
		rc = walk(&w, (how & PART10_IMPLICIT) != 0, (how & PART10_BIG) != 0);
	reader_free(&r);
	return rc;
}

/* ---- a whole file, as leniently as DCMTK reads it ---- */

#define UID_IMPLICIT_LE "1.2.840.10008.1.2"
#define UID_EXPLICIT_BE "1.2.840.10008.1.2.2"
#define UID_DEFLATED_LE "1.2.840.10008.1.2.1.99"

/* The transfer syntax UID (into syntax, 256 bytes) of a meta header at the
 * stream's position; leaves the stream just after the meta header. */
static bool lenient_meta(struct reader *r, char *syntax)
{
	for (;;) {
		size_t avail, header = 8;
		const unsigned char *b = peek(r, 12, &avail);
		uint32_t len;

		if (avail < 8)
			return false;
		if (get16(b) != 0x0002)
			return true;
		uint16_t element = get16(b + 2);

		if (part10_long_vr(b + 4)) {
			if (avail < 12)
				return false;
			header = 12;
			len = get32(b + 8);
		} else {
			len = get16(b + 6);
		}
		take(r, header);
		if (element == 0x0010 && len < 256) {
			b = peek(r, len, &avail);
			if (avail < len)
				return false;
			size_t used = len;

			while (used > 0 && (b[used - 1] == '\0' || b[used - 1] == ' '))
				used--;
			/* A NUL inside names no syntax (DCMTK compares all). */
			if (memchr(b, '\0', used) == NULL)
				copy_value(syntax, 256, b, len);
			else
				syntax[0] = '\0';
			take(r, len);
		} else if (len == PART10_UNDEFINED || !skip(r, len)) {
			return false;
		}
	}
}

int part10_walk_file(const struct part10_source *src, part10_walk_fn fn, void *ctx)
{
	struct reader r;
	struct walker w = { .r = &r, .is_sequence = part10_dictionary_sequence,
			    .fn = fn, .ctx = ctx };
	char syntax[256] = "";
	bool implicit = false, big = false;
	size_t got;
	const unsigned char *head;
	int rc = PART10_WALK_MALFORMED;

	if (reader_init(&r, src) == -1) {
		rc = PART10_WALK_FAILED;
		goto done;
	}
	head = peek(&r, 132, &got);
	if (got == 132 && memcmp(head + 128, "DICM", 4) == 0) {
		take(&r, 132);
		if (!lenient_meta(&r, syntax))
			goto done;
	} else if (got >= 8 && head[0] == 0x02 && head[1] == 0x00) {
		if (!lenient_meta(&r, syntax))
			goto done;
	} else if (got >= 8) {
		/* A bare dataset: its first header says how it is written. */
		implicit = !uppercase_vr(head + 4);
		big = head[0] == 0x00 && head[1] != 0x00;
	} else {
		goto done;
	}
	if (strcmp(syntax, UID_IMPLICIT_LE) == 0) {
		implicit = true;
	} else if (strcmp(syntax, UID_EXPLICIT_BE) == 0) {
		big = true;
	} else if (strcmp(syntax, UID_DEFLATED_LE) == 0 &&
		   start_inflating(&r) == -1) {
		rc = PART10_WALK_FAILED;
		goto done;
	}
	rc = walk(&w, implicit, big);
done:
	if (r.failed && rc == PART10_WALK_MALFORMED)
		rc = PART10_WALK_FAILED;
	reader_free(&r);
	return rc;
}

/* ---- the limits checked before DCMTK parses ---- */

/*
 * DCMTK reads sequences recursively, several stack frames per level, and a
 * level costs a file only 20 bytes: 10,000 nested sequences in a 200 KB file
 * overflow a thread's stack. And it finds an element's place walking back
 * from its item's end, so a file of n elements in reverse order costs
 * n^2 / 2 steps (120,000 elements, 1.2 MB: 93 s). Real objects nest a
 * handful of levels and have a few elements out of order at most.
 */
struct limits {
	unsigned long unordered;
};

static int count_limits(void *ctx, const struct part10_header *h)
{
	struct limits *l = ctx;

	if (h->node > PART10_FRAGMENTS)
		return 0;
	if (h->in_item && h->tag < h->prev && ++l->unordered > DICOM_MAX_UNORDERED)
		return 1 + PART10_UNORDERED;
	if (h->node != PART10_ELEMENT && h->depth + 1 > DICOM_MAX_DEPTH)
		return 1 + PART10_TOO_DEEP;
	return 0;
}

enum part10_limit part10_check_limits(const struct part10_source *src)
{
	struct limits l = { 0 };
	int rc = part10_walk_file(src, count_limits, &l);

	if (rc == PART10_WALK_TOO_DEEP)
		return PART10_TOO_DEEP;
	if (rc > 0)
		return (enum part10_limit)(rc - 1);
	return PART10_WITHIN_LIMITS;	/* whatever it cannot follow,
					   DCMTK decides on */
}

/* ---- the index: a strict walk that records the top level ---- */

struct indexing {
	struct part10 *p;
	size_t cap;		/* of p->top */
};

static int note_top(void *ctx, const struct part10_header *h)
{
	struct indexing *x = ctx;
	struct part10 *p = x->p;

	if (h->depth > 0 || h->node > PART10_FRAGMENTS)
		return 0;
	if ((p->count > 0 && h->tag <= h->prev) || DCM_GROUP(h->tag) == 0x0002)
		return 1;
	if (DCM_ELEMENT(h->tag) == 0x0000)
		p->group_lengths = true;
	if (p->count == x->cap) {
		size_t cap = x->cap ? x->cap * 2 : 64;
		struct part10_elem *grown = realloc(p->top, cap * sizeof(*grown));

		if (grown == NULL)
			return 1;
		p->top = grown;
		x->cap = cap;
	}
	struct part10_elem *e = &p->top[p->count++];
	bool undefined = h->len == PART10_UNDEFINED;

	e->tag = h->tag;
	memcpy(e->vr, h->vr, 3);
	e->head = (size_t)h->offset;
	e->value = (size_t)h->offset + h->header_len;
	e->len = undefined ? 0 : h->len;
	e->undefined_length = undefined;
	return 0;
}

static int index_source(struct part10 *p, const struct part10_source *src,
			bool implicit, part10_is_sequence_fn is_sequence)
{
	struct indexing x = { .p = p };

	p->implicit = implicit;
	p->file_size = src->size;
	if (part10_walk(src, p->dataset, PART10_STRICT |
			(implicit ? PART10_IMPLICIT : 0), is_sequence,
			note_top, &x) == 0)
		return 0;
	free(p->top);
	p->top = NULL;
	p->count = 0;
	return -1;
}

int part10_index(struct part10 *p, bool implicit, part10_is_sequence_fn is_sequence)
{
	struct part10_source src = { .bytes = p->bytes, .size = p->size };

	return index_source(p, &src, implicit, is_sequence);
}

/* The window is small: past the head it is read only around element
 * headers (the pixel data's, then nothing when its value ends the file),
 * and each pread(2) of it copies that much. */
#define HEAD_WINDOW 4096

int part10_index_fd(struct part10 *p, int fd, uint64_t size, bool implicit,
		    part10_is_sequence_fn is_sequence)
{
	struct part10_source src = { .fd = fd, .size = size,
				     .window = HEAD_WINDOW, .positional = true,
				     .head = p->bytes, .held = p->size };

	if (size < p->size)
		return -1;
	return index_source(p, &src, implicit, is_sequence);
}

const struct part10_elem *part10_find(const struct part10 *p, uint32_t tag)
{
	size_t lo = 0, hi = p->count;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (p->top[mid].tag == tag)
			return &p->top[mid];
		if (p->top[mid].tag < tag)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* ---- writing ---- */

static int write_all(int fd, struct iovec *iov, int count, struct error *err)
{
	while (count > 0) {
		ssize_t n = writev(fd, iov, count > IOV_MAX ? IOV_MAX : count);

		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			return error_set(err, error_kind_for_output_errno(errno),
					 errno, "cannot write DICOM file");
		while (count > 0 && (size_t)n >= iov->iov_len) {
			n -= (ssize_t)iov->iov_len;
			iov++;
			count--;
		}
		if (count > 0) {
			iov->iov_base = (char *)iov->iov_base + n;
			iov->iov_len -= (size_t)n;
		}
	}
	return 0;
}

/* The header of e for a value of len bytes, into out (12 bytes at most). */
static size_t encode_header(const struct part10 *p, const struct part10_elem *e,
			    uint32_t len, unsigned char *out)
{
	put16(out, DCM_GROUP(e->tag));
	put16(out + 2, DCM_ELEMENT(e->tag));
	if (p->implicit) {
		put32(out + 4, len);
		return 8;
	}
	memcpy(out + 4, e->vr, 2);
	if (part10_long_vr((const unsigned char *)e->vr)) {
		put16(out + 6, 0);
		put32(out + 8, len);
		return 12;
	}
	put16(out + 6, (uint16_t)len);
	return 8;
}

int part10_write(const struct part10 *p, const struct part10_edit *edits,
		 size_t count, int fd, struct error *err)
{
	struct iovec *iov = calloc(3 * count + 1, sizeof(*iov));
	unsigned char (*headers)[12] = calloc(count + 1, sizeof(*headers));
	size_t from = 0;
	int n = 0, rc;

	/* Only the head in memory: the rest would be missing. */
	if (p->file_size != p->size) {
		free(iov);
		free(headers);
		return error_set(err, ERROR_INPUT, 0, "cannot write DICOM file "
				 "(only its head was read)");
	}
	if (iov == NULL || headers == NULL) {
		free(iov);
		free(headers);
		return error_set(err, ERROR_TRANSIENT, ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < count; i++) {
		const struct part10_elem *e = edits[i].elem;

		iov[n++] = (struct iovec){ (void *)(p->bytes + from), e->head - from };
		iov[n++] = (struct iovec){ headers[i],
			encode_header(p, e, (uint32_t)edits[i].len, headers[i]) };
		iov[n++] = (struct iovec){ (void *)edits[i].value, edits[i].len };
		from = e->value + e->len;
	}
	iov[n++] = (struct iovec){ (void *)(p->bytes + from), p->size - from };
	rc = write_all(fd, iov, n, err);
	free(iov);
	free(headers);
	return rc;
}

void part10_free(struct part10 *p)
{
	free(p->top);
	p->top = NULL;
	p->count = 0;
}
