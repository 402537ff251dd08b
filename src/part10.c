/* part10.c - index and splice a Part 10 file in memory; see part10.h. */
#include "dicomsort/part10.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "dicomsort/dicom.h"

#define UNDEFINED 0xffffffffu
#define OPEN_END SIZE_MAX
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

/* Every VR of PS3.5 (2023); anything else is not vouched for. */
static bool known_vr(const unsigned char *vr)
{
	static const char vrs[] = "AEASATCSDADSDTFDFLISLOLTOBODOFOLOVOWPNSHSLSQSS"
				  "STSVTMUCUIULUNURUSUTUV";

	for (size_t i = 0; i + 1 < sizeof(vrs); i += 2)
		if (vr[0] == vrs[i] && vr[1] == vrs[i + 1])
			return true;
	return false;
}

bool part10_long_vr(const unsigned char *vr)
{
	static const char vrs[] = "OBODOFOLOVOWSQUCURUTUNSVUV";

	for (size_t i = 0; i + 1 < sizeof(vrs); i += 2)
		if (vr[0] == vrs[i] && vr[1] == vrs[i + 1])
			return true;
	return false;
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

/* ---- the dataset ---- */

enum container_kind { SEQUENCE, ITEM, FRAGMENTS };

struct container {
	size_t end;		/* OPEN_END: undefined length */
	enum container_kind kind;
	bool implicit;		/* encoding of what it holds */
};

struct walk {
	struct part10 *p;
	part10_is_sequence_fn is_sequence;
	struct container stack[2 * DICOM_MAX_DEPTH + 4];
	size_t depth;
	size_t cap;		/* of p->top */
	uint32_t last_top;
};

static size_t bound(const struct walk *w)
{
	for (size_t i = w->depth; i > 0; i--)
		if (w->stack[i - 1].end != OPEN_END)
			return w->stack[i - 1].end;
	return w->p->size;
}

static int push(struct walk *w, size_t end, enum container_kind kind, bool implicit)
{
	if (w->depth == sizeof(w->stack) / sizeof(w->stack[0]))
		return -1;	/* DCMTK's depth check will refuse it */
	if (end != OPEN_END && end > bound(w))
		return -1;
	w->stack[w->depth++] = (struct container){ end, kind, implicit };
	return 0;
}

static int note_top(struct walk *w, uint32_t tag, const char *vr, size_t head,
		    size_t value, uint32_t len, bool undefined)
{
	struct part10 *p = w->p;

	if ((p->count > 0 && tag <= w->last_top) || DCM_GROUP(tag) == 0x0002)
		return -1;
	w->last_top = tag;
	if (DCM_ELEMENT(tag) == 0x0000)
		p->group_lengths = true;
	if (p->count == w->cap) {
		size_t cap = w->cap ? w->cap * 2 : 64;
		struct part10_elem *grown = realloc(p->top, cap * sizeof(*grown));

		if (grown == NULL)
			return -1;
		p->top = grown;
		w->cap = cap;
	}
	struct part10_elem *e = &p->top[p->count++];
	e->tag = tag;
	memcpy(e->vr, vr, 3);
	e->head = head;
	e->value = value;
	e->len = len;
	e->undefined_length = undefined;
	return 0;
}

/* An item or delimiter tag at pos, with length len. */
static int item_tag(struct walk *w, uint16_t element, uint32_t len, size_t *pos)
{
	struct container *c = w->depth ? &w->stack[w->depth - 1] : NULL;

	*pos += 8;
	switch (element) {
	case 0xe000:
		if (c == NULL || c->kind == ITEM)
			return -1;
		if (c->kind == FRAGMENTS) {
			if (len == UNDEFINED || len > bound(w) - *pos)
				return -1;
			*pos += len;
			return 0;
		}
		return push(w, len == UNDEFINED ? OPEN_END : *pos + len, ITEM,
			    c->implicit);
	case 0xe00d:
		if (c == NULL || c->kind != ITEM || c->end != OPEN_END || len != 0)
			return -1;
		w->depth--;
		return 0;
	case 0xe0dd:
		if (c == NULL || c->kind == ITEM || c->end != OPEN_END || len != 0)
			return -1;
		w->depth--;
		return 0;
	}
	return -1;
}

/* The element whose header starts at *pos; advances past it (or into it). */
static int element(struct walk *w, size_t *pos)
{
	const unsigned char *b = w->p->bytes + *pos;
	size_t limit = bound(w), header = 8, start = *pos;
	bool implicit = w->depth ? w->stack[w->depth - 1].implicit : w->p->implicit;
	uint16_t group = get16(b);
	uint32_t tag = DCM_TAG(group, get16(b + 2)), len;
	char vr[3] = "";
	bool sequence;

	if (group == 0xfffe)
		return item_tag(w, DCM_ELEMENT(tag), get32(b + 4), pos);
	if (w->depth > 0 && w->stack[w->depth - 1].kind != ITEM)
		return -1;	/* a sequence holds items only */
	if (implicit) {
		len = get32(b + 4);
		sequence = len == UNDEFINED || w->is_sequence(tag);
	} else {
		if (!known_vr(b + 4))
			return -1;
		memcpy(vr, b + 4, 2);
		if (part10_long_vr(b + 4)) {
			if (limit - *pos < 12)
				return -1;
			header = 12;
			len = get32(b + 8);
		} else {
			len = get16(b + 6);
		}
		sequence = strcmp(vr, "SQ") == 0 ||
			   (strcmp(vr, "UN") == 0 && len == UNDEFINED);
	}
	*pos += header;
	if (len != UNDEFINED && len > limit - *pos)
		return -1;
	if (w->depth == 0 &&
	    note_top(w, tag, vr, start, *pos, len == UNDEFINED ? 0 : len,
		     len == UNDEFINED) == -1)
		return -1;
	if (sequence)	/* UN of undefined length holds implicit VR items */
		return push(w, len == UNDEFINED ? OPEN_END : *pos + len, SEQUENCE,
			    implicit || strcmp(vr, "UN") == 0);
	if (len == UNDEFINED) {
		if (tag != TAG_PixelData)
			return -1;
		return push(w, OPEN_END, FRAGMENTS, implicit);
	}
	*pos += len;
	return 0;
}

int part10_index(struct part10 *p, bool implicit, part10_is_sequence_fn is_sequence)
{
	struct walk w = { .p = p, .is_sequence = is_sequence };
	size_t pos = p->dataset;

	p->implicit = implicit;
	for (;;) {
		/* Close the defined-length containers that end here. */
		while (w.depth > 0 && w.stack[w.depth - 1].end == pos)
			w.depth--;
		if (pos == bound(&w) && w.depth == 0)
			return 0;
		if (bound(&w) - pos < 8 || element(&w, &pos) == -1)
			break;
	}
	free(p->top);
	p->top = NULL;
	p->count = 0;
	return -1;
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
